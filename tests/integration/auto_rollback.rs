//! The watch after the switch and the automatic rollback, against the real Docker engine,
//! registry and nginx, driven through the `fieldtrack` binary: a new color that fails its
//! probes during the drain sends traffic back to the previous one, which kept running; with
//! `rollout.auto_rollback` the desired file is rewritten to the previous image (and a webhook
//! hears of it), without it the desired file keeps the bad image, and a desired file written
//! during the attempt always wins. What nginx serves, what runs in Docker, what a loopback
//! receiver got and the files fieldtrack owns are the observations.

use std::fs;

use crate::common::webhook::{Webhook, SECRET_PATH};
use crate::common::*;
use fieldtrack_testbed::Site;

#[test]
fn new_color_failing_during_the_drain_goes_back_and_rewrites_the_desired_file() {
    let mut site = Site::new();
    let webhook = Webhook::start();
    site.set("notify.webhook", &toml_str(&webhook.url()));
    site.set("notify.allow_http", "true");
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let live_id = container_id(&site, &live);
    let upstream_before = upstream(&site);
    // flaky passes the health gate, then answers 500 three seconds after it started: inside
    // the drain, which must notice and send traffic back.
    site.set("rollout.drain", "\"6s\"");

    let run = ft(&site, &["deploy", "flaky"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("flaky failed after the switch"),
        "stderr says the new color failed after the switch:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream_port(&site), port_of(&site, &live));
    assert_eq!(
        upstream(&site),
        upstream_before,
        "the upstream file is as it was"
    );
    assert_eq!(site.containers(), vec![live.clone()], "flaky was removed");
    assert_eq!(container_id(&site, &live), live_id, "v1 kept running");
    assert_eq!(history(&site), "v1\n", "the history never gains flaky");

    let desired = desired_toml(&site);
    assert_eq!(desired["image"].as_str(), Some("v1"), "{desired}");
    assert_eq!(desired["by"].as_str(), Some("fieldtrack"), "{desired}");
    let note = desired["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("flaky") && note.contains("failed probes"),
        "the note names the failure: {desired}"
    );

    let attempt = last_audit(&site);
    assert_eq!(attempt["image"], "flaky", "{attempt:#}");
    assert_eq!(attempt["outcome"], "rolled_back", "{attempt:#}");
    assert_eq!(attempt["previous"], "v1", "{attempt:#}");

    let event = webhook.wait_for_event("auto_rollback");
    assert_eq!(event["image"], "flaky", "{event:#}");
    assert_eq!(event["previous"], "v1", "{event:#}");
    assert_eq!(event["app"], site.app.as_str(), "{event:#}");
    let text = event["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("flaky") && text.contains("v1"),
        "a Slack-compatible text naming both images: {event:#}"
    );
    webhook.assert_requests_were_json_posts();
    assert!(!run.stderr.contains(SECRET_PATH), "{}", run.stderr);
}

#[test]
fn without_auto_rollback_traffic_goes_back_but_the_desired_file_keeps_the_bad_image() {
    let mut site = Site::new();
    site.set("rollout.auto_rollback", "false");
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    site.set("rollout.drain", "\"6s\"");

    let run = ft(&site, &["deploy", "flaky"]);

    run.expect_code(1);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream_port(&site), port_of(&site, &live));
    assert_eq!(site.containers(), vec![live], "flaky was removed");
    assert_eq!(history(&site), "v1\n");
    let desired = desired_toml(&site);
    assert_eq!(desired["image"].as_str(), Some("flaky"), "{desired}");
    assert_ne!(desired["by"].as_str(), Some("fieldtrack"), "{desired}");
    assert_eq!(last_audit(&site)["outcome"], "rolled_back");
}

#[test]
fn auto_rollback_never_overwrites_a_desired_file_written_during_the_attempt() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    site.set("rollout.drain", "\"6s\"");
    let mut deploy = Spawned::start(&site, &["deploy", "flaky"], None);
    wait_for(PATIENCE, "status.json at step draining", || {
        (status(&site)["step"] == "draining").then_some(())
    });

    // CI asks for v2 while flaky drains; flaky then fails and traffic goes back to v1.
    let newer = "image = \"v2\"\nby = \"ci\"\n";
    fs::write(&site.desired_file, newer).unwrap();
    let exit = wait_for(PATIENCE, "the deploy to end", || {
        deploy
            .child
            .try_wait()
            .expect("the deploy can be waited for")
    });

    assert_eq!(exit.code(), Some(1), "the flaky attempt failed");
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(history(&site), "v1\n");
    assert_eq!(last_audit(&site)["outcome"], "rolled_back");
    assert_eq!(
        desired(&site).as_deref(),
        Some(newer),
        "the newer desired state wins over the auto-rollback"
    );
}

/// The desired file, parsed.
fn desired_toml(site: &Site) -> toml::Table {
    let text = desired(site).expect("the desired file exists");
    text.parse()
        .unwrap_or_else(|e| panic!("the desired file is TOML ({e}):\n{text}"))
}

/// The audit log's last record.
fn last_audit(site: &Site) -> serde_json::Value {
    audit(site).pop().expect("the audit log has a record")
}
