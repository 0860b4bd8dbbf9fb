//! Webhook notifications, through the `fieldtrack` binary against the real Docker engine and
//! nginx, with a receiver on loopback: one JSON POST per attempt, success and failure, with a
//! Slack-compatible text; a webhook that never answers never delays a deploy; and the
//! webhook's URL, a secret, is never printed.

use std::time::Duration;

use crate::common::webhook::{Webhook, SECRET_PATH};
use crate::common::*;
use fieldtrack_testbed::Site;

#[test]
fn webhook_hears_of_success_and_failure() {
    let mut site = Site::new();
    fast_health(&mut site);
    let webhook = Webhook::start();
    site.set("notify.webhook", &toml_str(&webhook.url()));
    site.set("notify.allow_http", "true");

    let ok = ft(&site, &["deploy", "v1"]);
    ok.expect_code(0);
    let color = live_color(&site);

    let event = webhook.wait_for_event("succeeded");
    assert_eq!(event["image"], "v1", "{event:#}");
    assert_eq!(event["color"], color, "{event:#}");
    assert_eq!(event["app"], site.app.as_str(), "{event:#}");
    assert_eq!(event["digest"], status(&site)["digest"], "{event:#}");
    let text = event["text"].as_str().unwrap_or_default();
    assert!(text.contains("v1"), "{event:#}");

    let failed = ft(&site, &["deploy", "unhealthy"]);
    failed.expect_code(1);

    let event = webhook.wait_for_event("failed");
    assert_eq!(event["image"], "unhealthy", "{event:#}");
    assert_eq!(event["previous"], "v1", "{event:#}");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(message.contains("did not become healthy"), "{event:#}");
    let text = event["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("unhealthy") && text.contains("failed"),
        "{event:#}"
    );
    assert_eq!(webhook.events().len(), 2, "one POST per attempt");
    webhook.assert_requests_were_json_posts();
    for run in [&ok, &failed] {
        assert!(!run.stderr.contains(SECRET_PATH), "{}", run.stderr);
    }
}

#[test]
fn webhook_that_never_answers_never_delays_the_deploy_and_its_secret_stays_hidden() {
    let mut site = Site::new();
    // Both images local and both colors used once, so the two timed deploys do the same work.
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");

    let baseline = ft(&site, &["deploy", "v1"]);
    baseline.expect_code(0);
    let without = baseline.duration;

    let silent = Silent::start();
    let url = format!("http://{}{SECRET_PATH}", silent.addr);
    site.set("notify.webhook", &toml_str(&url));
    site.set("notify.allow_http", "true");
    site.set("notify.timeout", "\"5s\"");
    let run = ft(&site, &["deploy", "v2"]);
    let with = run.duration;

    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert!(silent.connections() > 0, "the webhook was called");
    assert!(
        with < without + Duration::from_millis(2500),
        "a webhook that never answers delayed the deploy: {with:?} with it, {without:?} without\n{}",
        run.stderr
    );
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("webhook"))
        .unwrap_or_else(|| panic!("a warning about the webhook:\n{}", run.stderr));
    assert!(!warning.contains(SECRET_PATH), "{warning}");
    assert!(
        !run.stderr.contains(SECRET_PATH) && !run.stderr.contains("secret"),
        "{}",
        run.stderr
    );
}
