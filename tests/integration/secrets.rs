//! Secrets and text (issue 11) against the real Docker engine and nginx, driven through the
//! `fieldtrack` binary: values of the env file never reach status.json, audit.jsonl, the
//! webhook or the terminal, whatever a container or a hook prints; and what a container
//! prints reaches the terminal without its escape sequences.
//!
//! The crashing container is the ordinary test app given a `PORT` it cannot listen on: it
//! then prints the value and exits, which is exactly a container printing its environment.
//! Redaction works on values, whatever their key, so the value plays the secret.

use std::fs;

use crate::common::webhook::Webhook;
use crate::common::*;
use fieldtrack_testbed::Site;

/// The secret of the env file: it must never appear anywhere fieldtrack writes or prints.
const SECRET: &str = "hunter2-xyz";
/// What fieldtrack writes in its place.
const REDACTED: &str = "[redacted]";

#[test]
fn env_values_printed_by_a_crashing_container_are_redacted_everywhere() {
    let mut site = Site::new();
    fast_health(&mut site);
    let webhook = Webhook::start();
    site.set("notify.webhook", &toml_str(&webhook.url()));
    site.set("notify.allow_http", "true");
    // The test app prints the port it cannot listen on, and exits 2.
    fs::write(
        site.dir.join(".env"),
        format!("SECRET_TOKEN={SECRET}\nPORT={SECRET}\n"),
    )
    .unwrap();

    let run = ft(&site, &["deploy", "v1"]);

    run.expect_code(1);
    assert_redacted("the deploy's stderr", &run.stderr);
    let status_text = fs::read_to_string(site.state_dir.join("status.json")).unwrap();
    assert_redacted("status.json", &status_text);
    let message = status(&site)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&format!("cannot listen on port {REDACTED}")),
        "the log tail is there, redacted: {message}"
    );
    let audit_text = fs::read_to_string(site.state_dir.join("audit.jsonl")).unwrap();
    assert_redacted("audit.jsonl", &audit_text);
    let shown = ft(&site, &["status"]);
    assert_redacted("fieldtrack status", &shown.stdout);
    let shown = ft(&site, &["status", "--json"]);
    assert_redacted("fieldtrack status --json", &shown.stdout);
    let event = webhook.wait_for_event("failed");
    assert_redacted("the webhook's message", &event.to_string());
}

#[test]
fn env_values_printed_by_hooks_are_redacted_everywhere() {
    let mut site = Site::new();
    let env = site.dir.join(".env");
    fs::write(&env, format!("SECRET_TOKEN={SECRET}\n")).unwrap();
    let env = env.display().to_string();
    // Hooks do not get the env file; this one reads it, as a careless smoke test might.
    let leaky = |code: u8| {
        toml_array(&[
            "sh",
            "-c",
            &format!("cat \"$1\"; echo \"token: $(cut -d= -f2 \"$1\")\"; exit {code}"),
            "sh",
            &env,
        ])
    };
    site.set("hooks.post_deploy", &leaky(3));

    let run = ft(&site, &["deploy", "v1"]);

    run.expect_code(0);
    assert!(
        run.stderr.contains("post_deploy hook"),
        "the failed post_deploy hook is reported:\n{}",
        run.stderr
    );
    assert_redacted("the deploy's stderr (post_deploy)", &run.stderr);

    site.set("hooks.post_deploy", "[]");
    site.set("hooks.pre_switch", &leaky(4));
    let webhook = Webhook::start();
    site.set("notify.webhook", &toml_str(&webhook.url()));
    site.set("notify.allow_http", "true");

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_redacted("the deploy's stderr (pre_switch)", &run.stderr);
    let message = status(&site)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&format!("SECRET_TOKEN={REDACTED}"))
            && message.contains(&format!("token: {REDACTED}")),
        "the hook's output is there, redacted: {message}"
    );
    let status_text = fs::read_to_string(site.state_dir.join("status.json")).unwrap();
    assert_redacted("status.json", &status_text);
    let audit_text = fs::read_to_string(site.state_dir.join("audit.jsonl")).unwrap();
    assert_redacted("audit.jsonl", &audit_text);
    assert_redacted("fieldtrack status", &ft(&site, &["status"]).stdout);
    let event = webhook.wait_for_event("failed");
    assert_redacted("the webhook's message", &event.to_string());
}

#[test]
fn escape_sequences_in_container_output_never_reach_the_terminal() {
    let mut site = Site::new();
    fast_health(&mut site);
    // Values shorter than 4 characters are not redacted, so the container prints them as
    // they are: "testapp ESC]0 starting", then "... cannot listen on port ;x BEL ...".
    fs::write(site.dir.join(".env"), "TESTAPP_TAG=\x1b]0\nPORT=;x\x07\n").unwrap();

    let run = ft(&site, &["deploy", "v1"]);

    run.expect_code(1);
    let status_text = fs::read_to_string(site.state_dir.join("status.json")).unwrap();
    assert!(
        status_text.contains("\\u001b]0"),
        "status.json keeps the raw output (JSON-escaped): {status_text}"
    );
    assert_printable("the deploy's stderr", &run.stderr);
    assert!(
        run.stderr.contains("cannot listen on port") || run.stderr.contains("testapp"),
        "the log tail is shown:\n{}",
        run.stderr
    );
    let shown = ft(&site, &["status"]);
    shown.expect_code(0);
    assert_printable("fieldtrack status", &shown.stdout);

    // A message holding a whole title-setting sequence and a color.
    let path = site.state_dir.join("status.json");
    let mut crafted = status(&site);
    crafted["message"] =
        "before\x1b]0;pwned\x07\x1b[31mred\x1b[0m\r\nafter\tend\x7f\u{9b}2J".into();
    fs::write(&path, serde_json::to_vec(&crafted).unwrap()).unwrap();
    let shown = ft(&site, &["status"]);
    shown.expect_code(0);
    assert_printable("fieldtrack status", &shown.stdout);
    assert!(
        shown.stdout.contains("Message   : beforered\nafter\tend"),
        "text kept, sequences gone:\n{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains("pwned"), "{}", shown.stdout);
}

#[test]
fn deploy_refuses_bidi_controls_and_line_separators_in_note_and_by() {
    let site = Site::new();
    for args in [
        ["--note", "fix \u{202e}nigol"],
        ["--note", "a\u{2028}b"],
        ["--by", "ci\u{2066}"],
        ["--by", "a\u{2029}b"],
    ] {
        let run = ft(&site, &["deploy", "v1", args[0], args[1], "--no-wait"]);
        run.expect_code(2);
        assert!(
            run.stderr.contains(args[0]),
            "names the flag: {}",
            run.stderr
        );
        assert_printable("the error", &run.stderr);
        assert_eq!(desired(&site), None, "nothing written");
    }
}

/// `text` names the redaction and never the secret.
#[track_caller]
fn assert_redacted(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} holds the secret:\n{text}");
    assert!(text.contains(REDACTED), "{what} says {REDACTED}:\n{text}");
}

/// `text` holds no control character but newline and tab, and no C1 control either.
#[track_caller]
fn assert_printable(what: &str, text: &str) {
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        panic!("{what} holds the control character {c:?}:\n{text:?}");
    }
}
