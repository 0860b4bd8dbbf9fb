//! Beyond the seed (issue 6) against the real Docker engine, registry and nginx, driven
//! through the `fieldtrack` binary: the watch after the switch and the automatic rollback,
//! the pure nginx switch back to a color still running, digest pinning, image retention,
//! hooks, webhook notifications and metrics. As in the other real-engine tests, what nginx
//! serves, what runs in Docker, what a loopback receiver got and the files fieldtrack owns
//! are the observations; nothing here trusts the binary's own word.

// Not every helper of the harness is used in this file.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use fieldtrack_testbed::{Bed, Site};

/// How long a test waits for something that should happen "soon" (a webhook POST, a
/// metric, a step in status.json). Generous: the engine may be busy with other tests.
const PATIENCE: Duration = Duration::from_secs(60);

/// The part of the webhook URL that plays the token: it must never be printed.
const SECRET_PATH: &str = "/hook/T000/secret";

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

#[test]
fn deploying_the_image_still_running_in_the_idle_color_is_a_pure_nginx_switch() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let v1 = container_name(&site, live_color(&site));
    let v1_id = container_id(&site, &v1);
    let v2 = container_name(&site, idle_color(&site));

    // `deploy v2` killed in the middle of its drain: v2 takes the traffic, v1 still runs.
    site.set("rollout.drain", "\"30s\"");
    let since = unix_now();
    let deploy = Spawned::start(&site, &["deploy", "v2"], None);
    wait_for(PATIENCE, "status.json at step draining", || {
        (status(&site)["step"] == "draining").then_some(())
    });
    deploy.kill();
    // The events query sees a container being created (else its silence below proves nothing).
    assert_eq!(
        container_events(&site, &since, &unix_now(), &["create"]),
        [format!("create {v2}")]
    );
    // `nginx -s reload` returns before the new workers take over.
    wait_for(PATIENCE, "nginx to serve v2", || {
        (served(&site).as_deref() == Some("v2")).then_some(())
    });
    assert_eq!(site.containers(), sorted(vec![v1.clone(), v2.clone()]));
    site.set("rollout.drain", "\"1s\"");

    let since = unix_now();
    let run = ft(&site, &["deploy", "v1"]);
    let until = unix_now();

    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(live_color(&site), color_of(&v1));
    assert_eq!(
        container_id(&site, &v1),
        v1_id,
        "the v1 container is the same"
    );
    assert_eq!(
        site.containers(),
        vec![v1.clone()],
        "v2's container was removed"
    );
    let created = container_events(&site, &since, &until, &["create", "start"]);
    assert!(
        created.is_empty(),
        "no container was created or started: {created:?}"
    );
    // v2 served until v1 took over from it: recorded below v1.
    assert_eq!(history(&site), "v1\nv2\n");
    assert_converged(&site, "v1");
}

#[test]
fn digests_in_status_audit_and_history_are_the_registry_digests() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");
    let digest = |tag: &str| {
        let digest = repo_digest(&site, &site.image(tag), &site.repository);
        assert!(is_digest(&digest), "{tag}: {digest}");
        digest
    };
    let (v1, v2) = (digest("v1"), digest("v2"));
    assert_ne!(v1, v2);

    let status = status(&site);
    assert_eq!(status["digest"], v2.as_str(), "{status:#}");

    let audit = audit(&site);
    for (tag, digest) in [("v1", &v1), ("v2", &v2)] {
        let record = audit
            .iter()
            .find(|r| r["image"] == tag && r["outcome"] == "succeeded")
            .unwrap_or_else(|| panic!("the audit log records {tag}: {audit:#?}"));
        assert_eq!(record["digest"], digest.as_str(), "{record:#}");
    }

    let run = ft(&site, &["history", "--json"]);
    run.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("history is JSON");
    let digests: Vec<(&str, &str)> = shown
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            (
                e["image"].as_str().unwrap_or_default(),
                e["digest"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(digests, [("v2", v2.as_str()), ("v1", v1.as_str())]);
}

#[test]
fn retention_keeps_exactly_the_images_of_the_history() {
    let mut site = Site::new();
    let repo = OwnRepository::push(&site, "retain", &TAGS);
    site.set("repository", &toml_str(&repo.name));
    site.repository = repo.name.clone();
    site.set("rollout.keep_images", "true");
    site.set("history_limit", "3");

    for tag in &TAGS[..5] {
        deploy_ok(&site, tag);
    }

    assert_eq!(history(&site), "v5\nv4\nv3\n");
    assert_eq!(
        repo.local_tags(&site),
        ["v3", "v4", "v5"],
        "the local images of {} are the history's",
        repo.name
    );
    assert_converged(&site, "v5");
}

#[test]
fn without_keep_images_no_image_is_removed() {
    let mut site = Site::new();
    let repo = OwnRepository::push(&site, "keep", &TAGS[..5]);
    site.set("repository", &toml_str(&repo.name));
    site.set("rollout.keep_images", "false");
    site.set("history_limit", "3");

    for tag in &TAGS[..5] {
        deploy_ok(&site, tag);
    }

    assert_eq!(history(&site), "v5\nv4\nv3\n");
    assert_eq!(repo.local_tags(&site), ["v1", "v2", "v3", "v4", "v5"]);
}

#[test]
fn failing_pre_switch_hook_keeps_production_and_sees_the_deployment() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let (candidate_color, candidate_port) = idle(&site);
    let (upstream_before, history_before) = (upstream(&site), history(&site));
    let hook = HookScript::new(&site, "pre_switch", 1);
    site.set("hooks.pre_switch", &hook.argv());

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("pre_switch hook"),
        "stderr names the hook:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live], "the candidate was removed");
    let env = hook.env();
    assert_eq!(env.get("FIELDTRACK_IMAGE").map(String::as_str), Some("v2"));
    assert_eq!(
        env.get("FIELDTRACK_PREVIOUS").map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        env.get("FIELDTRACK_COLOR").map(String::as_str),
        Some(candidate_color)
    );
    assert_eq!(
        env.get("FIELDTRACK_PORT"),
        Some(&candidate_port.to_string())
    );
    assert_eq!(status(&site)["phase"], "failed");
}

#[test]
fn passing_pre_switch_hook_runs_before_the_switch_with_the_deployment_in_its_env() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let (candidate_color, candidate_port) = idle(&site);
    let upstream_before = upstream(&site);
    let hook = HookScript::new(&site, "pre_switch", 0);
    site.set("hooks.pre_switch", &hook.argv());

    deploy_ok(&site, "v2");

    assert_eq!(
        hook.upstream_seen(),
        upstream_before,
        "nginx still pointed at the old color while the hook ran"
    );
    let env = hook.env();
    assert_eq!(env.get("FIELDTRACK_IMAGE").map(String::as_str), Some("v2"));
    assert_eq!(
        env.get("FIELDTRACK_PREVIOUS").map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        env.get("FIELDTRACK_COLOR").map(String::as_str),
        Some(candidate_color)
    );
    assert_eq!(
        env.get("FIELDTRACK_PORT"),
        Some(&candidate_port.to_string())
    );
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
}

#[test]
fn failing_post_deploy_hook_is_only_reported() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let hook = HookScript::new(&site, "post_deploy", 1);
    site.set("hooks.post_deploy", &hook.argv());

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(0);
    assert!(
        run.stderr.contains("post_deploy hook failed"),
        "the failure is reported:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
    let env = hook.env();
    assert_eq!(env.get("FIELDTRACK_IMAGE").map(String::as_str), Some("v2"));
    assert_eq!(
        env.get("FIELDTRACK_PREVIOUS").map(String::as_str),
        Some("v1")
    );
    // After a full success: the old color was already gone when it ran.
    assert_eq!(
        hook.upstream_seen(),
        upstream(&site),
        "post_deploy ran after the switch"
    );
}

#[test]
fn pre_switch_hook_slower_than_its_timeout_is_killed_and_fails_the_attempt() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let (upstream_before, history_before) = (upstream(&site), history(&site));
    let pid_file = site.dir.join("hung-hook.pid");
    let script = site.dir.join("hung-hook.sh");
    fs::write(
        &script,
        format!("echo $$ > '{}'\nexec sleep 300\n", pid_file.display()),
    )
    .unwrap();
    site.set(
        "hooks.pre_switch",
        &toml_array(&["sh", &script.display().to_string()]),
    );
    site.set("hooks.hook_timeout", "\"2s\"");

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("pre_switch hook") && run.stderr.contains("timed out"),
        "stderr says the hook timed out:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live]);
    let pid: i32 = fs::read_to_string(&pid_file)
        .expect("the hook ran")
        .trim()
        .parse()
        .expect("a pid");
    wait_for(PATIENCE, "the hung hook to be gone", || {
        (!process_alive(pid)).then_some(())
    });
}

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

    let silent = SilentWebhook::start();
    site.set("notify.webhook", &toml_str(&silent.url()));
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

#[test]
fn metrics_change_as_deployments_succeed_and_fail() {
    let mut site = Site::new();
    fast_health(&mut site);
    let listen = free_loopback_addr();
    site.set("metrics.listen", &toml_str(&listen.to_string()));
    let daemon = Spawned::start(&site, &["daemon"], None);
    let before = wait_for(PATIENCE, "the metrics endpoint", || scrape(listen));
    assert_eq!(
        metric(&before, "fieldtrack_converged"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        metric(
            &before,
            "fieldtrack_deployments_total{outcome=\"succeeded\"}"
        ),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        listening_sockets(daemon.child.id()),
        [listen.to_string()],
        "the metrics address is the daemon's only listening socket"
    );

    let run = ft(&site, &["deploy", "v1"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("the daemon"),
        "the daemon converged it:\n{}",
        run.stderr
    );
    let color = live_color(&site);
    let digest = repo_digest(&site, &site.image("v1"), &site.repository);
    let after_ok = wait_for(PATIENCE, "converged and live in the metrics", || {
        scrape(listen).filter(|m| metric(m, "fieldtrack_converged") == Some(1.0))
    });
    let expected_live = format!(
        "fieldtrack_live_info{{color=\"{color}\",image=\"{}\",digest=\"{digest}\"}} 1",
        site.image("v1")
    );
    assert!(
        after_ok.lines().any(|l| l == expected_live),
        "{expected_live} in:\n{after_ok}"
    );
    assert_eq!(
        metric(
            &after_ok,
            "fieldtrack_deployments_total{outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{after_ok}"
    );
    assert_eq!(
        metric(
            &after_ok,
            "fieldtrack_deployments_total{outcome=\"failed\"}"
        ),
        Some(0.0),
        "{after_ok}"
    );
    assert!(
        metric(&after_ok, "fieldtrack_last_deployment_duration_seconds").is_some_and(|s| s > 0.0),
        "{after_ok}"
    );

    ft(&site, &["deploy", "unhealthy"]).expect_code(1);

    let after_failure = wait_for(PATIENCE, "the failure in the metrics", || {
        scrape(listen)
            .filter(|m| metric(m, "fieldtrack_deployments_total{outcome=\"failed\"}") == Some(1.0))
    });
    assert_eq!(
        metric(&after_failure, "fieldtrack_converged"),
        Some(0.0),
        "{after_failure}"
    );
    assert_eq!(
        metric(
            &after_failure,
            "fieldtrack_deployments_total{outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{after_failure}"
    );
    assert!(
        metric(&after_failure, "fieldtrack_health_probe_failures_total").is_some_and(|n| n > 0.0),
        "{after_failure}"
    );
    assert_eq!(
        metric(
            &after_failure,
            "fieldtrack_reconcile_errors_total{kind=\"permanent\"}"
        ),
        Some(1.0),
        "{after_failure}"
    );
    assert!(
        after_failure.lines().any(|l| l == expected_live),
        "v1 is still what is live:\n{after_failure}"
    );
    drop(daemon);
}

#[test]
fn metrics_count_a_rollback_during_the_drain_and_the_daemon_converges_on_the_previous_image() {
    let mut site = Site::new();
    let listen = free_loopback_addr();
    site.set("metrics.listen", &toml_str(&listen.to_string()));
    site.set("rollout.drain", "\"6s\"");
    let _daemon = Spawned::start(&site, &["daemon"], None);
    wait_for(PATIENCE, "the metrics endpoint", || scrape(listen));
    ft(&site, &["deploy", "v1"]).expect_code(0);
    let failures_before = wait_for(PATIENCE, "v1 counted", || {
        scrape(listen)
            .filter(|m| {
                metric(m, "fieldtrack_deployments_total{outcome=\"succeeded\"}") == Some(1.0)
            })
            .and_then(|m| metric(&m, "fieldtrack_health_probe_failures_total"))
    });

    ft(&site, &["deploy", "flaky"]).expect_code(1);

    // The rewritten desired file names v1 again, which the daemon converges on.
    let after = wait_for(PATIENCE, "the rollback counted and v1 converged", || {
        scrape(listen).filter(|m| {
            metric(m, "fieldtrack_deployments_total{outcome=\"rolled_back\"}") == Some(1.0)
                && metric(m, "fieldtrack_converged") == Some(1.0)
        })
    });
    assert!(
        metric(&after, "fieldtrack_health_probe_failures_total")
            .is_some_and(|n| n >= failures_before + 3.0),
        "the three failed probes of the drain are counted ({failures_before} before):\n{after}"
    );
    let color = live_color(&site);
    let live = format!(
        "fieldtrack_live_info{{color=\"{color}\",image=\"{}\",",
        site.image("v1")
    );
    assert!(
        after.lines().any(|l| l.starts_with(&live)),
        "{live} in:\n{after}"
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    wait_for(PATIENCE, "status.json converged on v1", || {
        let status = status(&site);
        (status["phase"] == "converged" && status["desired"] == "v1").then_some(())
    });
    assert_converged(&site, "v1");
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn daemon_without_metrics_opens_no_network_port() {
    let site = Site::new();
    let mut daemon = Spawned::start(&site, &["daemon"], None);
    daemon.wait_for_line("daemon started");

    let run = ft(&site, &["deploy", "v1"]);

    run.expect_code(0);
    assert!(
        run.stderr.contains("the daemon"),
        "the daemon converged it:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert!(
        matches!(daemon.child.try_wait(), Ok(None)),
        "the daemon still runs"
    );
    assert_eq!(
        listening_sockets(daemon.child.id()),
        Vec::<String>::new(),
        "the daemon listens nowhere"
    );
}

// ---------------------------------------------------------------------------------------
// Helpers of this file.

/// The bed's healthy tags, in deploy order.
const TAGS: [&str; 7] = ["v1", "v2", "v3", "v4", "v5", "v6", "v7"];

/// Polls `f` every 100 ms until it gives a value; panics naming `what` after `within`.
#[track_caller]
fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TOML basic string (JSON's escaping is valid TOML for these values).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A TOML array of strings.
fn toml_array(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
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

/// `blue` or `green`, from a container name.
fn color_of(container: &str) -> &'static str {
    if container.ends_with("-blue") {
        "blue"
    } else {
        "green"
    }
}

/// The published port of a color container, by its name.
fn port_of(site: &Site, container: &str) -> u16 {
    match color_of(container) {
        "blue" => site.blue_port,
        _ => site.green_port,
    }
}

/// The idle color and its port: where the next candidate goes.
fn idle(site: &Site) -> (&'static str, u16) {
    let color = idle_color(site);
    (color, port_of(site, &container_name(site, color)))
}

fn unix_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// The engine's container events of the site's app between two `unix_now` times, as
/// `action name` lines, filtered to `actions`.
fn container_events(site: &Site, since: &str, until: &str, actions: &[&str]) -> Vec<String> {
    let out = site
        .docker()
        .args(["events", "--since", since, "--until", until])
        .args(["--filter", "type=container"])
        .args(["--filter", &format!("label=fieldtrack.app={}", site.app)])
        .args(["--format", "{{.Action}} {{.Actor.Attributes.name}}"])
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| actions.iter().any(|a| l.split(' ').next() == Some(a)))
        .map(str::to_string)
        .collect()
}

/// `sha256:` and 64 lowercase hex digits.
fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    })
}

/// The digest `docker image inspect` reports for `image` in `repository`.
fn repo_digest(site: &Site, image: &str, repository: &str) -> String {
    let out = site
        .docker()
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            image,
        ])
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker image inspect {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digests: Vec<String> =
        serde_json::from_slice(&out.stdout).expect("RepoDigests is a JSON list");
    digests
        .iter()
        .find_map(|d| d.strip_prefix(&format!("{repository}@")))
        .unwrap_or_else(|| panic!("no digest of {repository} for {image}: {digests:?}"))
        .to_string()
}

/// A repository of the test's own in the bed's registry; its local images are removed when
/// it is dropped (the registry keeps the repository: tags are cheap, blobs are shared).
struct OwnRepository {
    name: String,
}

impl OwnRepository {
    /// Copies `tags` of the bed's images into `fieldtrack-test/{prefix}-{app}`.
    fn push(site: &Site, prefix: &str, tags: &[&str]) -> OwnRepository {
        let name = format!("{prefix}-{}", site.app);
        let mut repository = String::new();
        for tag in tags {
            repository = Bed::shared()
                .push_to_repository(tag, &name, tag)
                .unwrap_or_else(|e| panic!("cannot push {tag} to {name}: {e}"));
        }
        let repo = OwnRepository { name: repository };
        assert_eq!(
            repo.local_tags(site),
            Vec::<String>::new(),
            "nothing of the new repository is local yet"
        );
        repo
    }

    /// Tags of the repository's local images, sorted (`<none>` for an untagged one).
    fn local_tags(&self, site: &Site) -> Vec<String> {
        let out = site
            .docker()
            .args(["images", &self.name, "--format", "{{.Tag}}"])
            .output()
            .expect("docker runs");
        assert!(
            out.status.success(),
            "docker images: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        tags.sort();
        tags
    }
}

impl Drop for OwnRepository {
    fn drop(&mut self) {
        let bed = Bed::shared();
        let listed = bed
            .docker()
            .args(["images", &self.name, "--format", "{{.Repository}}:{{.Tag}}"])
            .output();
        if let Ok(out) = listed {
            let refs: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.ends_with(":<none>"))
                .map(str::to_string)
                .collect();
            if !refs.is_empty() {
                let _ = bed.docker().arg("rmi").args(&refs).output();
            }
        }
    }
}

/// A hook script in the site folder: dumps its environment and the upstream file as it
/// was when the hook ran, then exits with `code`. Run as `sh SCRIPT` (an argument array).
struct HookScript {
    script: PathBuf,
    env_file: PathBuf,
    upstream_file: PathBuf,
}

impl HookScript {
    fn new(site: &Site, name: &str, code: i32) -> HookScript {
        let script = site.dir.join(format!("{name}.sh"));
        let env_file = site.dir.join(format!("{name}.env"));
        let upstream_file = site.dir.join(format!("{name}.upstream"));
        fs::write(
            &script,
            format!(
                "env > '{}'\ncat '{}' > '{}'\necho '{name} hook says no' >&2\nexit {code}\n",
                env_file.display(),
                site.upstream_file.display(),
                upstream_file.display(),
            ),
        )
        .unwrap();
        HookScript {
            script,
            env_file,
            upstream_file,
        }
    }

    /// The TOML array to configure.
    fn argv(&self) -> String {
        toml_array(&["sh", &self.script.display().to_string()])
    }

    /// The environment the hook saw.
    fn env(&self) -> BTreeMap<String, String> {
        let text = fs::read_to_string(&self.env_file)
            .unwrap_or_else(|e| panic!("the hook ran ({}: {e})", self.env_file.display()));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The upstream file as the hook saw it.
    fn upstream_seen(&self) -> String {
        fs::read_to_string(&self.upstream_file).expect("the hook ran")
    }
}

/// Whether `pid` runs (a zombie counts as gone).
fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
struct Request {
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request (head, then a `Content-Length` body).
fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Request { head, body })
}

/// A webhook receiver on loopback that answers 200 and keeps every request.
struct Webhook {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Ok(request) = read_request(&stream) else {
                        return;
                    };
                    kept.lock().unwrap().push(request);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Webhook { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}{SECRET_PATH}", self.addr)
    }

    /// Every body received so far, as JSON.
    fn events(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                    panic!(
                        "the webhook body is JSON ({e}): {}",
                        String::from_utf8_lossy(&r.body)
                    )
                })
            })
            .collect()
    }

    /// The first notification with `event`, waiting for it.
    #[track_caller]
    fn wait_for_event(&self, event: &str) -> serde_json::Value {
        let caller = std::panic::Location::caller();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events();
            if let Some(e) = events.iter().find(|e| e["event"] == event) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{caller}: no {event:?} notification within {PATIENCE:?}; got {events:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every request was a JSON POST to the configured path.
    fn assert_requests_were_json_posts(&self) {
        for r in self.requests.lock().unwrap().iter() {
            assert!(
                r.head
                    .starts_with(&format!("POST {SECRET_PATH} HTTP/1.1\r\n")),
                "{}",
                r.head
            );
            assert!(
                r.head
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{}",
                r.head
            );
        }
    }
}

/// A webhook that accepts connections and never answers.
struct SilentWebhook {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentWebhook {
    fn start() -> SilentWebhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
        SilentWebhook { addr, accepted }
    }

    fn url(&self) -> String {
        format!("http://{}{SECRET_PATH}", self.addr)
    }

    fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

/// A loopback address with a port free right now.
fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().unwrap()
}

/// GET /metrics on a raw connection; the body on a 200, None otherwise.
fn scrape(addr: SocketAddr) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200 ").then(|| body.to_string())
}

/// The value of the sample named exactly `series` (name with its labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a sample value"))
}

/// The TCP sockets `pid` listens on, as `ip:port` (IPv6 as the kernel's hex), from the
/// socket inodes among its file descriptors and the kernel's tables.
fn listening_sockets(pid: u32) -> Vec<String> {
    let fd_dir = format!("/proc/{pid}/fd");
    let inodes: HashSet<String> = fs::read_dir(&fd_dir)
        .unwrap_or_else(|e| panic!("{fd_dir}: {e}"))
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = Path::new("/proc")
            .join(pid.to_string())
            .join("net")
            .join(table);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            let (ip, port) = local.split_once(':').expect("ip:port");
            let port = u16::from_str_radix(port, 16).expect("a hex port");
            let ip = match u32::from_str_radix(ip, 16) {
                Ok(v4) if ip.len() == 8 => std::net::Ipv4Addr::from(v4.to_le_bytes()).to_string(),
                _ => format!("[{ip}]"),
            };
            listening.push(format!("{ip}:{port}"));
        }
    }
    listening.sort();
    listening
}
