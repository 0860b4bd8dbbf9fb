//! Email notifications, through the `fieldtrack` binary against the real Docker engine and
//! nginx, and a real SMTP server on loopback (Debian's aiosmtpd, see testbed/src/smtp.rs):
//! one message per attempt naming the event, image, previous image, who and the note; the
//! `events` filter; AUTH with a password file, refused with a wrong password that is never
//! printed; STARTTLS and TLS against the test's own CA; and an SMTP server that is down or
//! never answers never delays or fails a deployment.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;
use fieldtrack_testbed::{Mail, Site, SmtpOptions, SmtpServer, SmtpTls};

const USER: &str = "deploy";
const PASSWORD: &str = "smtp-pa55-word";

/// Points the site's `[notify.email]` at 127.0.0.1:`port`, from and to fixed addresses.
fn email_to(site: &mut Site, port: u16, security: &str) {
    site.set("notify.email.host", "\"127.0.0.1\"");
    site.set("notify.email.port", &port.to_string());
    site.set("notify.email.security", &toml_str(security));
    site.set("notify.email.from", "\"fieldtrack <deploys@example.com>\"");
    site.set(
        "notify.email.to",
        &toml_array(&["ops@example.com", "Dev <dev@example.com>"]),
    );
}

/// Logs in as [`USER`] with `password`, kept in a 0600 file beside the config.
fn login(site: &mut Site, password: &str) {
    let file = site.dir.join("smtp.password");
    fs::write(&file, format!("{password}\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    site.set("notify.email.user", &toml_str(USER));
    site.set("notify.email.password_file", &toml_str("smtp.password"));
}

fn smtp(site: &Site, name: &str, options: SmtpOptions) -> SmtpServer {
    SmtpServer::start(&site.dir.join(name), options).expect("the SMTP server starts")
}

fn with_auth() -> SmtpOptions {
    SmtpOptions {
        auth: Some((USER.into(), PASSWORD.into())),
        ..SmtpOptions::default()
    }
}

/// Waits until the server holds `n` messages; returns them.
#[track_caller]
fn wait_for_mails(server: &SmtpServer, n: usize) -> Vec<Mail> {
    wait_for(
        PATIENCE,
        &format!("{n} message(s) at the SMTP server"),
        || {
            let mails = server.messages().expect("the Maildir reads");
            (mails.len() >= n).then_some(mails)
        },
    )
}

/// A body line `field: value`, as the message writes them.
#[track_caller]
fn assert_field(mail: &Mail, field: &str, value: &str) {
    let found = mail.body.lines().any(|line| {
        line.strip_prefix(&format!("{field}:"))
            .is_some_and(|v| v.trim() == value)
    });
    assert!(found, "{field}: {value} missing in\n{}", mail.body);
}

#[test]
fn email_tells_of_success_and_failure_with_image_previous_by_and_note() {
    let mut site = Site::new();
    fast_health(&mut site);
    let server = smtp(&site, "smtp", with_auth());
    email_to(&mut site, server.port, "none");
    login(&mut site, PASSWORD);

    let first = ft(&site, &["deploy", "v1"]);
    first.expect_code(0);
    let run = ft(
        &site,
        &["deploy", "v2", "--by", "alice", "--note", "hotfix login"],
    );
    run.expect_code(0);
    let mails = wait_for_mails(&server, 2);
    let mail = &mails[1];
    assert!(
        mail.subject.contains("deployed v2") && mail.subject.contains(&site.app),
        "{mail:?}"
    );
    assert_eq!(mail.from, "fieldtrack <deploys@example.com>");
    assert_eq!(mail.to, ["ops@example.com", "dev@example.com"]);
    assert_field(mail, "event", "succeeded");
    assert_field(mail, "app", &site.app);
    assert_field(mail, "image", "v2");
    assert_field(mail, "previous", "v1");
    assert_field(mail, "by", "alice");
    assert_field(mail, "note", "hotfix login");
    assert_field(mail, "color", live_color(&site));
    assert_field(mail, "digest", status(&site)["digest"].as_str().unwrap());
    assert_field(&mails[0], "previous", "(none)");

    let failed = ft(&site, &["deploy", "unhealthy", "--by", "bob"]);
    failed.expect_code(1);
    let mails = wait_for_mails(&server, 3);
    let mail = &mails[2];
    assert!(
        mail.subject.contains("deploy of unhealthy failed"),
        "{mail:?}"
    );
    assert_field(mail, "event", "failed");
    assert_field(mail, "image", "unhealthy");
    assert_field(mail, "previous", "v2");
    assert_field(mail, "by", "bob");
    assert!(
        mail.body.contains("message:\n") && mail.body.contains("did not become healthy"),
        "{}",
        mail.body
    );

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.messages().unwrap().len(),
        3,
        "one message per attempt"
    );
    for run in [&first, &run, &failed] {
        assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
    }
}

#[test]
fn events_failed_only_mails_nothing_on_success() {
    let mut site = Site::new();
    fast_health(&mut site);
    let server = smtp(&site, "smtp", SmtpOptions::default());
    email_to(&mut site, server.port, "none");
    site.set("notify.email.events", &toml_array(&["failed"]));

    deploy_ok(&site, "v1");
    ft(&site, &["deploy", "unhealthy"]).expect_code(1);

    // The success came first: had it been mailed, it would be there before the failure.
    let mails = wait_for_mails(&server, 1);
    assert_field(&mails[0], "event", "failed");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.messages().unwrap().len(), 1, "{mails:?}");
}

#[test]
fn a_wrong_password_is_refused_by_the_server_and_never_printed() {
    let mut site = Site::new();
    let server = smtp(&site, "smtp", with_auth());
    email_to(&mut site, server.port, "none");
    let wrong = "not-the-pa55-word";
    login(&mut site, wrong);

    let run = ft(&site, &["deploy", "v1"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("email notification failed"))
        .unwrap_or_else(|| panic!("a warning about the email:\n{}", run.stderr));
    assert!(warning.contains("535"), "the server's refusal: {warning}");
    assert!(!run.stderr.contains(wrong), "{}", run.stderr);
    assert!(server.messages().unwrap().is_empty());
}

#[test]
fn starttls_and_tls_with_auth_deliver_to_a_server_of_our_own_ca() {
    for (tls, security) in [(SmtpTls::StartTls, "starttls"), (SmtpTls::Implicit, "tls")] {
        let mut site = Site::new();
        let server = smtp(&site, security, SmtpOptions { tls, ..with_auth() });
        email_to(&mut site, server.port, security);
        login(&mut site, PASSWORD);

        // Without our CA the server's certificate is not believed: nothing is sent.
        let run = ft(&site, &["deploy", "v1"]);
        run.expect_code(0);
        assert!(
            run.stderr.contains("email notification failed"),
            "{security}: {}",
            run.stderr
        );
        assert!(server.messages().unwrap().is_empty(), "{security}");

        let ca = site.dir.join("smtp-ca.pem");
        fs::copy(server.ca.as_ref().unwrap(), &ca).unwrap();
        fs::set_permissions(&ca, fs::Permissions::from_mode(0o644)).unwrap();
        site.set("notify.email.tls_ca", &toml_str("smtp-ca.pem"));
        let run = ft(&site, &["deploy", "v2", "--note", "over tls"]);
        run.expect_code(0);
        assert!(
            !run.stderr.contains("WARN"),
            "{security}: {}\n{}",
            run.stderr,
            server.log()
        );
        let mails = wait_for_mails(&server, 1);
        assert_field(&mails[0], "image", "v2");
        assert_field(&mails[0], "note", "over tls");
        assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
    }
}

#[test]
fn an_smtp_server_down_or_silent_never_delays_or_fails_the_deploy() {
    let mut site = Site::new();

    // Nothing listens: refused at once, the deploy goes on.
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    email_to(&mut site, refused, "none");
    let run = ft(&site, &["deploy", "v1"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert!(
        run.stderr.contains("email notification failed"),
        "{}",
        run.stderr
    );

    // A server that accepts the connection and never says a word, with a delivery deadline
    // far longer than a deploy: the deploy finishes while the server still hangs.
    let silent = Silent::start();
    email_to(&mut site, silent.addr.port(), "none");
    site.set("notify.timeout", "\"10m\"");
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(silent.connections(), 1, "the email was attempted");
    // The delivery was still waiting on the server when the deploy ended.
    assert!(
        run.stderr.contains("notification not delivered within 1s"),
        "{}",
        run.stderr
    );
}

#[test]
fn plain_smtp_to_another_host_is_refused_naming_the_key() {
    let mut site = Site::new();
    site.set("notify.email.host", "\"smtp.example.com\"");
    site.set("notify.email.security", "\"none\"");
    site.set("notify.email.from", "\"a@example.com\"");
    site.set("notify.email.to", &toml_array(&["b@example.com"]));
    ft(&site, &["deploy", "v1"])
        .expect_code(2)
        .says(&["notify.email.security", "only allowed to a loopback host"]);
    assert_eq!(served(&site), None);
}
