//! A preview before the switch (`[rollout] promotion = "manual"`), against the real Docker
//! engine, registry and nginx, driven through the `fieldtrack` binary under a daemon. The
//! site's nginx has a second server, on a port of its own, proxying to the upstream file's
//! `{upstream_name}_preview` block, as `fieldtrack init`'s snippet shows: while v2 awaits
//! promotion, production (the main port) keeps answering v1 under load and the preview port
//! answers v2; a daemon restarted finds the preview where it was; `fieldtrack promote`
//! switches with zero failed requests; `fieldtrack abort` of the next one removes it and
//! the preview port answers the live version again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::canary::{Answer, Load};
use crate::common::daemon::{Daemon, DAEMON_WAIT};
use crate::common::*;
use fieldtrack_testbed::Site;

const THREADS: usize = 2;
const GAP: Duration = Duration::from_millis(5);

/// What nginx at `addr` answers on `/version`, None on anything but a 200 (as
/// [`served`] does for the main port).
fn version_at(addr: SocketAddr) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET /version HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let ok = head.lines().next()?.split_whitespace().nth(1) == Some("200");
    ok.then(|| body.trim().to_string())
}

/// What the preview server answers on `/version`.
fn previewed(site: &Site) -> Option<String> {
    version_at(site.preview_addr().expect("a site with a preview server"))
}

/// A site whose promotion is manual, with nginx's preview server, resyncing only long
/// after the test (what acts is a file event, a tick of the preview, a command).
fn preview_site() -> Site {
    let mut site = Site::with_preview();
    site.set("rollout.resync", "\"1h\"");
    site
}

/// Waits until status.json, written by the daemon `pid` (any, when None), shows TAG's
/// preview awaiting promotion: that `preview`.
#[track_caller]
fn wait_preview(site: &Site, daemon: &Daemon, tag: &str, pid: Option<i32>) -> serde_json::Value {
    wait_for_or(
        DAEMON_WAIT,
        &format!("the preview of {tag} in status.json"),
        || {
            let s = status_opt(site)?;
            let by = pid.is_none_or(|p| s["pid"].as_i64() == Some(i64::from(p)));
            (by && s["step"] == "preview" && s["preview"]["image"] == tag)
                .then(|| s["preview"].clone())
        },
        || daemon.report(site),
    )
}

/// For `hold`, production answers `live` and the preview server `preview`, every time.
#[track_caller]
fn both_hold(site: &Site, daemon: &Daemon, live: &str, preview: &str, hold: Duration) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        assert_eq!(
            served(site).as_deref(),
            Some(live),
            "{}",
            daemon.report(site)
        );
        assert_eq!(
            previewed(site).as_deref(),
            Some(preview),
            "{}",
            daemon.report(site)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Answers that were not a 200 of a version.
fn failed(answers: &[Answer]) -> Vec<&Answer> {
    answers.iter().filter(|a| a.status != 200).collect()
}

#[test]
fn a_preview_serves_beside_production_survives_a_restart_is_promoted_without_a_failed_request_and_an_abort_removes_the_next(
) {
    let site = preview_site();
    let daemon = Daemon::on(&site, "v1");
    // No preview runs: the preview block names production.
    daemon.wait_until(&site, "the preview server to answer v1", || {
        previewed(&site).as_deref() == Some("v1")
    });
    let load = Load::start(&site, "/version", THREADS, GAP);

    // deploy, submitted to the daemon, returns once the preview is up.
    let deploy = ft(&site, &["deploy", "v2"]);
    deploy
        .expect_code(0)
        .says(&["awaits promotion", "fieldtrack promote", "fieldtrack abort"]);
    let preview = wait_preview(&site, &daemon, "v2", None);
    assert_eq!(
        preview["upstream"],
        format!("{}_preview", site.upstream_name),
        "{preview:#}"
    );
    let stable = live_color(&site);
    assert_eq!(preview["stable_color"], stable, "{preview:#}");
    both_hold(&site, &daemon, "v1", "v2", Duration::from_secs(3));
    let shown = ft(&site, &["status"]);
    shown.expect_code(0);
    assert!(
        shown.stdout.contains("v2 on ")
            && shown.stdout.contains("awaits promotion since")
            && shown.stdout.contains(&format!(
                "reachable through upstream {}_preview",
                site.upstream_name
            )),
        "{}",
        shown.stdout
    );
    assert_eq!(history(&site), "v1\n");

    // A daemon killed and started again finds the preview where it was.
    daemon.kill();
    let daemon = Daemon::start(&site, &[]);
    let resumed = wait_preview(&site, &daemon, "v2", Some(daemon.pid()));
    assert_eq!(resumed["since"], preview["since"], "{resumed:#}");
    both_hold(&site, &daemon, "v1", "v2", Duration::from_secs(2));
    assert_eq!(site.containers().len(), 2, "{}", daemon.report(&site));

    // promote: production switches to v2, followed to its end.
    let promoted = ft(&site, &["promote"]);
    promoted.expect_code(0).says(&["goes live"]);
    daemon.wait_converged(&site, "v2");
    thread::sleep(Duration::from_millis(500));
    let answers = load.stop();
    assert!(
        failed(&answers).is_empty(),
        "zero failed requests through production: {:?}",
        failed(&answers).iter().take(5).collect::<Vec<_>>()
    );
    let first_v2 = answers
        .iter()
        .position(|a| a.body == "v2")
        .expect("v2 answered after the promote");
    // nginx's old workers may still answer a request or two with v1 while the reload
    // settles; a second after the first v2, production answers v2 alone.
    let settled = answers[first_v2].sent + Duration::from_secs(1);
    let late_v1 = answers
        .iter()
        .filter(|a| a.sent >= settled && a.body != "v2")
        .count();
    assert_eq!(late_v1, 0, "once promoted, production answers v2 alone");
    assert!(answers[..first_v2].iter().all(|a| a.body == "v1"));
    eprintln!(
        "preview then promote under load: {} requests, {} failed, {} answered v1, {} v2",
        answers.len(),
        failed(&answers).len(),
        first_v2,
        answers.len() - first_v2
    );
    assert_eq!(history(&site), "v2\nv1\n");
    assert_eq!(previewed(&site).as_deref(), Some("v2"));
    assert!(status(&site)["preview"].is_null());

    // v3 previewed, then aborted: removed, production still v2, the preview server too.
    ft(&site, &["deploy", "v3"]).expect_code(0);
    wait_preview(&site, &daemon, "v3", None);
    both_hold(&site, &daemon, "v2", "v3", Duration::from_secs(1));
    ft(&site, &["abort", "--note", "not today"])
        .expect_code(0)
        .says(&["preview of v3"]);
    daemon.wait_converged(&site, "v2");
    daemon.wait_until(&site, "the preview server to answer v2", || {
        previewed(&site).as_deref() == Some("v2")
    });
    assert_eq!(history(&site), "v2\nv1\n");
    assert!(
        audit_of(&site, "deploy")
            .iter()
            .any(|r| r["image"] == "v3" && r["outcome"] == "cancelled"),
        "{}",
        daemon.report(&site)
    );
    ft(&site, &["promote"]).expect_code(1);
}

#[test]
fn without_a_daemon_deploy_returns_with_the_preview_up_plan_shows_it_and_promote_runs_the_switch_itself(
) {
    let site = preview_site();
    deploy_ok(&site, "v1");

    let deploy = ft(&site, &["deploy", "v2"]);
    deploy.expect_code(0).says(&["awaits promotion"]);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(previewed(&site).as_deref(), Some("v2"));
    let plan = ft(&site, &["plan"]);
    assert!(
        plan.stdout.contains("preview v2 (") && plan.stdout.contains("await promotion"),
        "{}",
        plan.stdout
    );
    let shown = ft(&site, &["status"]);
    assert!(
        shown.stdout.contains("awaits promotion since")
            && shown.stdout.contains("no daemon probes it"),
        "{}",
        shown.stdout
    );

    ft(&site, &["promote"]).expect_code(0);

    assert_converged(&site, "v2");
    assert_eq!(previewed(&site).as_deref(), Some("v2"));
    assert_eq!(history(&site), "v2\nv1\n");
    assert_eq!(site.containers().len(), 1);
}
