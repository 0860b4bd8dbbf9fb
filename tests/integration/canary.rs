//! Canary steps against the real Docker engine, registry and nginx, driven through the
//! `fieldtrack` binary: nginx shares the traffic by weight step by step while a load
//! generator keeps asking it, a canary answering errors or slowly is called off at its first
//! step with only the canary's answers failing, `promote` and `abort` move or end a running
//! canary, and a rotated log, a newer desired file and a SIGKILL inside a step all end in one
//! color served. What the load generator got, what nginx serves, what runs in Docker and the
//! files fieldtrack owns are the observations.

use std::fs::{self, OpenOptions};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::canary::*;
use crate::common::*;
use fieldtrack_testbed::Site;

/// Load on nginx: enough clients that a 10% step gets hundreds of requests in seconds,
/// with a short gap so that the shared machine keeps some breath.
const THREADS: usize = 4;
const GAP: Duration = Duration::from_millis(2);

/// A site serving v1 whose `[canary]` has `steps`.
fn site_on_v1(steps: &str, min_requests: u64, max_latency_ratio: f64) -> Site {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    set_canary(&mut site, steps, min_requests, max_latency_ratio);
    site
}

/// The desired file, parsed.
fn desired_toml(site: &Site) -> toml::Table {
    let text = desired(site).expect("the desired file exists");
    text.parse()
        .unwrap_or_else(|e| panic!("the desired file is TOML ({e}):\n{text}"))
}

/// The upstream file names one server, the stable or the new color alone, with no weight.
#[track_caller]
fn one_server(site: &Site, container: &str) {
    let lines = servers(site);
    assert_eq!(
        lines,
        vec![format!("server 127.0.0.1:{};", port_of(site, container))],
        "the upstream file names {container} alone:\n{}",
        upstream(site)
    );
}

/// Waits until status.json (which a daemon just started may not have written yet) says
/// converged on `tag`.
#[track_caller]
fn converged_on(site: &Site, tag: &str) {
    let path = site.state_dir.join("status.json");
    wait_for(PATIENCE, &format!("status.json converged on {tag}"), || {
        let s: serde_json::Value = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        (s["phase"] == "converged" && s["desired"] == tag).then_some(())
    });
}

/// A status.json `canary`'s window figures, both sides, for failure messages.
fn window(canary: &serde_json::Value) -> String {
    format!("canary {}; stable {}", canary["canary"], canary["stable"])
}

#[test]
fn each_step_sends_its_weight_to_the_canary_then_the_canary_takes_all_traffic() {
    // The latency bound is wide here: the two versions are the same program, and p95s of a
    // millisecond or two (nginx logs whole milliseconds) would make a ratio of 2 noise.
    let site = site_on_v1(
        r#"[{ weight = 10, pause = "5s" }, { weight = 50, pause = "5s" }]"#,
        20,
        50.0,
    );
    let stable = container_name(&site, live_color(&site));
    let watch = watch_canary(&site);
    let load = Load::start(&site, "/version", THREADS, GAP);

    let run = ft(&site, &["deploy", "v2"]);
    let deployed = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let answers = load.stop();
    let seen = watch.stop();

    run.expect_code(0);
    // Each step's window: from when status.json first showed it (a tick after nginx took its
    // weights) for 3 s, well inside its 5 s pause, so no request of the step before or after
    // is counted. nginx's weighted round robin is exact per worker (the site runs one): the
    // tolerance of 5 points only covers requests that straddle a reload.
    for (step, weight) in [(1, 10), (2, 50)] {
        let from = first_seen(&seen, step)
            .unwrap_or_else(|| panic!("status.json never showed step {step}: {seen:?}"));
        let to = from + Duration::from_secs(3);
        let window: Vec<&Answer> = answers.iter().filter(|a| a.within(from, to)).collect();
        let (v1, v2) = (count(&window, "v1"), count(&window, "v2"));
        assert_eq!(
            v1 + v2,
            window.len(),
            "every request of step {step} answered by v1 or v2: {window:?}"
        );
        assert!(
            window.len() >= 200,
            "step {step}: only {} requests in its window, too few to judge a share",
            window.len()
        );
        let share = v2 as f64 * 100.0 / window.len() as f64;
        eprintln!(
            "step {step} ({weight}%): v2 answered {v2} of {} requests ({share:.1}%)",
            window.len()
        );
        assert!(
            (share - weight as f64).abs() <= 5.0,
            "step {step}: v2 answered {share:.1}% of {} requests, not {weight}% ± 5",
            window.len()
        );
        let shown = &seen
            .iter()
            .find(|(_, c)| c["step"] == step)
            .expect("seen above")
            .1;
        assert_eq!(shown["weight"], weight, "{shown:#}");
        assert_eq!(shown["steps"], 2, "{shown:#}");
        assert_eq!(shown["image"], "v2", "{shown:#}");
    }
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "no request failed through the steps and the switch: {failed:?}"
    );
    let after: Vec<&Answer> = answers.iter().filter(|a| a.sent >= deployed).collect();
    assert!(!after.is_empty());
    assert_eq!(
        count(&after, "v2"),
        after.len(),
        "after the last step v2 alone answers"
    );

    let live = container_name(&site, live_color(&site));
    assert_ne!(live, stable);
    one_server(&site, &live);
    assert_eq!(site.containers(), vec![live]);
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
    assert!(status(&site)["canary"].is_null());
    let steps = audit_of(&site, "canary_step");
    assert_eq!(steps.len(), 2, "one audit record a step: {steps:#?}");
    for record in &steps {
        assert_eq!(record["outcome"], "succeeded", "{record:#}");
    }
}

#[test]
fn a_canary_answering_errors_is_called_off_at_step_1_and_only_the_canary_ever_failed() {
    let site = site_on_v1(
        r#"[{ weight = 10, pause = "20s" }, { weight = 50, pause = "20s" }]"#,
        30,
        50.0,
    );
    let stable = container_name(&site, live_color(&site));
    let load = Load::start(&site, "/", THREADS, GAP);

    let run = ft(&site, &["deploy", "err5"]);
    let ended = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let answers = load.stop();

    run.expect_code(1)
        .says(&["err5 failed after the switch", "canary step 1 of 2 (10%)"]);
    let desired = desired_toml(&site);
    assert_eq!(desired["image"].as_str(), Some("v1"), "{desired}");
    let note = desired["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("auto-rollback: ") && note.contains("canary step 1"),
        "the note names the step: {desired}"
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    one_server(&site, &stable);
    assert_eq!(site.containers(), vec![stable], "the candidate is removed");
    assert_eq!(history(&site), "v1\n");
    assert!(status(&site)["canary"].is_null());

    // Every failure the clients saw is err5's own 500: none of the stable color, no request
    // lost in the switches (no 502, no connection error).
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(!failed.is_empty(), "err5 answered some requests with 500");
    for a in &failed {
        assert_eq!(
            (a.status, a.body.as_str()),
            (500, "error from err5"),
            "{a:?}"
        );
    }
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(
        count(&ok, "v1") + count(&ok, "err5"),
        ok.len(),
        "v1 or err5 answered"
    );
    let after: Vec<&Answer> = answers.iter().filter(|a| a.sent >= ended).collect();
    assert!(!after.is_empty());
    assert_eq!(count(&after, "v1"), after.len(), "then v1 alone");

    let steps = audit_of(&site, "canary_step");
    assert_eq!(steps.len(), 1, "step 2 never ran: {steps:#?}");
    assert_eq!(steps[0]["outcome"], "rolled_back", "{:#}", steps[0]);
    let attempt = audit_of(&site, "deploy").pop().expect("a deploy record");
    assert_eq!(attempt["image"], "err5", "{attempt:#}");
    assert_eq!(attempt["outcome"], "rolled_back", "{attempt:#}");
}

#[test]
fn a_slow_canary_is_called_off_by_the_latency_bound() {
    let site = site_on_v1(r#"[{ weight = 50, pause = "20s" }]"#, 30, 2.0);
    let stable = container_name(&site, live_color(&site));
    // lag answers in 300 ms: more clients, or 30 canary requests take long.
    let load = Load::start(&site, "/", 8, GAP);

    let run = ft(&site, &["deploy", "lag"]);
    let answers = load.stop();

    run.expect_code(1)
        .says(&["canary step 1 of 1 (50%)", "p95 latency"]);
    let desired = desired_toml(&site);
    assert_eq!(desired["image"].as_str(), Some("v1"), "{desired}");
    let note = desired["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("auto-rollback: ") && note.contains("p95"),
        "the note names the p95: {desired}"
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    one_server(&site, &stable);
    assert_eq!(site.containers(), vec![stable]);
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "lag is slow, not failing: {failed:?}");
    let steps = audit_of(&site, "canary_step");
    assert_eq!(steps.len(), 1, "{steps:#?}");
    let message = steps[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("p95 latency") && message.contains("bound 2.0"),
        "{message}"
    );
}

#[test]
fn promote_ends_each_manual_step_and_abort_sends_everything_back_to_stable() {
    let site = site_on_v1(
        r#"[{ weight = 10, pause = "manual" }, { weight = 50, pause = "manual" }]"#,
        1000,
        50.0,
    );
    ft(&site, &["promote"])
        .expect_code(1)
        .says(&["no canary is running"]);
    ft(&site, &["abort"])
        .expect_code(1)
        .says(&["no canary is running"]);

    // promote, twice: v2 takes all traffic.
    let deploy = Spawned::start(&site, &["deploy", "v2"], None);
    let canary = wait_canary(&site, 1, 0);
    assert_eq!(canary["weight"], 10, "{canary:#}");
    assert!(canary["step_ends"].is_null(), "a manual step: {canary:#}");
    let weights = servers(&site);
    assert!(
        weights.len() == 2 && weights.iter().all(|l| l.contains(" weight=")),
        "{weights:?}"
    );
    let promoted = ft(&site, &["promote"]);
    promoted.expect_code(0);
    assert!(
        promoted
            .stdout
            .contains("promote: step 1 of 2 (10%) of v2 ends now"),
        "{promoted:?}"
    );
    let canary = wait_canary(&site, 2, 0);
    assert_eq!(canary["weight"], 50, "{canary:#}");
    assert!(
        // 50% with one server a side: weights 50 and 50, reduced by their gcd.
        servers(&site).iter().all(|l| l.ends_with(" weight=1;")),
        "{}",
        upstream(&site)
    );
    ft(&site, &["promote"]).expect_code(0);
    let (code, stderr) = deploy.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(served(&site).as_deref(), Some("v2"));
    let v2 = container_name(&site, live_color(&site));
    one_server(&site, &v2);
    assert_eq!(site.containers(), vec![v2.clone()]);
    assert_eq!(history(&site), "v2\nv1\n");

    // abort: v2, the stable color now, alone again; v3's candidate removed.
    let deploy = Spawned::start(&site, &["deploy", "v3"], None);
    let canary = wait_canary(&site, 1, 0);
    assert_eq!(canary["image"], "v3", "{canary:#}");
    let aborted = ft(&site, &["abort", "--note", "looks wrong"]);
    aborted.expect_code(0);
    let (code, stderr) = deploy.finish();
    assert_eq!(code, 1, "the v3 deploy was superseded: {stderr}");
    assert!(
        stderr.contains("cancelled by a newer desired generation"),
        "{stderr}"
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));
    one_server(&site, &v2);
    assert_eq!(site.containers(), vec![v2]);
    let desired = desired_toml(&site);
    assert_eq!(desired["image"].as_str(), Some("v2"), "{desired}");
    let note = desired["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("abort: ") && note.contains("v3") && note.ends_with("looks wrong"),
        "{desired}"
    );
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
    assert!(status(&site)["canary"].is_null());
    ft(&site, &["promote"])
        .expect_code(1)
        .says(&["no canary is running"]);
}

/// A step whose access log is rotated by `rotate` while it runs counts every request
/// logged after, exactly once, and passes on them.
fn a_step_counts_requests_across(rotate: impl FnOnce(&Site)) {
    // Nothing but the test's own clients goes through nginx (health probes go to the
    // containers), so the step's window must hold exactly the requests they sent.
    let min_requests = 60;
    let site = site_on_v1(r#"[{ weight = 10, pause = "2s" }]"#, min_requests, 50.0);
    let deploy = Spawned::start(&site, &["deploy", "v2"], None);
    wait_canary(&site, 1, 0);
    let load = Load::start(&site, "/version", 1, Duration::from_millis(10));
    wait_canary(&site, 1, 3);
    let sent_before = load.stop().len() as u64;
    let total = |canary: &serde_json::Value| {
        canary["stable"]["requests"].as_u64().unwrap_or_default()
            + canary["canary"]["requests"].as_u64().unwrap_or_default()
    };
    let before = wait_for(PATIENCE, "the step to count what was sent", || {
        let canary = status(&site)["canary"].clone();
        (total(&canary) >= sent_before).then_some(canary)
    });
    assert_eq!(total(&before), sent_before, "{}", window(&before));
    // 200 more (20 of them the canary's, by the weights) leave the step short of its
    // min_requests: it runs on while the test counts.
    let batch = 200;
    let canary_before = before["canary"]["requests"].as_u64().unwrap_or_default();
    assert!(
        canary_before + batch / 10 < min_requests,
        "the step has too many requests already: {}",
        window(&before)
    );

    rotate(&site);
    for _ in 0..batch {
        let (code, _) = site.get("/version").expect("nginx answers");
        assert_eq!(code, 200);
    }
    let after = wait_for(
        PATIENCE,
        "the step to count the requests after the rotation",
        || {
            let canary = status(&site)["canary"].clone();
            (total(&canary) >= sent_before + batch).then_some(canary)
        },
    );
    // One more tick: nothing is counted twice.
    thread::sleep(Duration::from_millis(1500));
    let settled = status(&site)["canary"].clone();
    assert_eq!(
        total(&settled),
        sent_before + batch,
        "each request counted once: {} then {}",
        window(&after),
        window(&settled)
    );
    let load = Load::start(&site, "/version", 1, Duration::from_millis(10));
    let (code, stderr) = deploy.finish();
    load.stop();

    assert_eq!(code, 0, "the step passed on the rotated log: {stderr}");
    assert_eq!(served(&site).as_deref(), Some("v2"));
    let steps = audit_of(&site, "canary_step");
    assert_eq!(steps.len(), 1, "{steps:#?}");
    assert_eq!(steps[0]["outcome"], "succeeded", "{:#}", steps[0]);
}

#[test]
fn a_log_moved_away_and_reopened_mid_step_keeps_feeding_the_step() {
    a_step_counts_requests_across(|site| {
        // logrotate's default: move the file, then tell nginx to open its logs again.
        let log = site.access_log();
        fs::rename(&log, log.with_extension("log.1")).expect("the log is moved");
        signal(nginx_master(site), libc::SIGUSR1);
        wait_for(PATIENCE, "nginx to open a new access log", || {
            log.exists().then_some(())
        });
    });
}

#[test]
fn a_log_truncated_in_place_mid_step_keeps_feeding_the_step() {
    a_step_counts_requests_across(|site| {
        // logrotate's copytruncate: nginx keeps its descriptor and appends from 0.
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(site.access_log())
            .expect("the log is truncated");
    });
}

#[test]
fn a_newer_desired_file_mid_canary_sends_traffic_back_to_stable_then_deploys_the_newer() {
    let mut site = Site::new();
    site.set("rollout.resync", "\"1h\"");
    set_canary(
        &mut site,
        r#"[{ weight = 10, pause = "manual" }]"#,
        1000,
        50.0,
    );
    write_desired(&site, "image = \"v1\"\n");
    let mut daemon = Spawned::start(&site, &["daemon"], None);
    daemon.wait_for_line("daemon started");
    converged_on(&site, "v1");
    let stable = container_name(&site, live_color(&site));
    let stable_port = port_of(&site, &stable);

    write_desired(&site, "image = \"v2\"\n");
    let v2 = wait_canary(&site, 1, 0);
    assert_eq!(v2["image"], "v2", "{v2:#}");
    let v2_id = container_id(&site, v2["container"].as_str().expect("a container"));
    let watch = watch_servers(&site);

    write_desired(&site, "image = \"v3\"\n");
    let v3 = wait_for(PATIENCE, "v3's canary step", || {
        let canary = status(&site)["canary"].clone();
        (canary["image"] == "v3" && canary["step"] == 1).then_some(canary)
    });
    let upstreams = watch.stop();

    // Between v2's weights and v3's, nginx named the stable color alone.
    let alone = vec![format!("server 127.0.0.1:{stable_port};")];
    let back = upstreams
        .iter()
        .position(|(_, s)| *s == alone)
        .unwrap_or_else(|| panic!("nginx never went back to {stable} alone: {upstreams:?}"));
    assert!(
        upstreams[..back]
            .iter()
            .all(|(_, s)| s.len() == 2
                && s[0] == format!("server 127.0.0.1:{stable_port} weight=9;")),
        "v2's weights before: {upstreams:?}"
    );
    assert_eq!(
        upstreams.last().map(|(_, s)| s.len()),
        Some(2),
        "v3's weights after: {upstreams:?}"
    );
    let v3_name = v3["container"].as_str().expect("a container").to_string();
    assert_ne!(
        container_id(&site, &v3_name),
        v2_id,
        "v3 runs in a new container"
    );
    assert_eq!(sorted(site.containers()), sorted(vec![stable, v3_name]));
    let v2_attempt = audit_of(&site, "deploy")
        .into_iter()
        .find(|r| r["image"] == "v2")
        .expect("v2's attempt is in the audit log");
    assert_eq!(v2_attempt["outcome"], "cancelled", "{v2_attempt:#}");

    ft(&site, &["promote"]).expect_code(0);
    converged_on(&site, "v3");
    assert_eq!(served(&site).as_deref(), Some("v3"));
    assert_eq!(history(&site), "v3\nv1\n", "v2 never converged");
    signal(daemon.child.id() as i32, libc::SIGTERM);
    let (code, log) = daemon.finish();
    assert_eq!(code, 0, "{log}");
}

/// The daemon killed inside v2's step, the desired file then rewritten to `then_desired`
/// (or left on v2), and one `fieldtrack reconcile`: one color served, the desired one.
fn a_daemon_killed_inside_a_step(then_desired: Option<&str>) {
    let mut site = Site::new();
    site.set("rollout.resync", "\"1h\"");
    // 3 s: the step is still running a second after status.json shows it, when the kill
    // comes.
    set_canary(&mut site, r#"[{ weight = 10, pause = "3s" }]"#, 5, 50.0);
    write_desired(&site, "image = \"v1\"\n");
    let mut daemon = Spawned::start(&site, &["daemon"], None);
    daemon.wait_for_line("daemon started");
    converged_on(&site, "v1");
    let stable = container_name(&site, live_color(&site));
    let stable_id = container_id(&site, &stable);
    let load = Load::start(&site, "/version", 2, Duration::from_millis(5));

    write_desired(&site, "image = \"v2\"\n");
    wait_canary(&site, 1, 0);
    daemon.kill();
    let left = servers(&site);
    assert!(
        left.len() == 2 && left.iter().all(|l| l.contains(" weight=")),
        "killed inside the step, nginx shares the traffic: {left:?}"
    );
    if let Some(tag) = then_desired {
        write_desired(&site, &format!("image = \"{tag}\"\n"));
    }
    let expected = then_desired.unwrap_or("v2");

    let run = ft(&site, &["reconcile"]);
    let settled = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let answers = load.stop();

    run.expect_code(0);
    let live = container_name(&site, live_color(&site));
    one_server(&site, &live);
    assert!(!upstream(&site).contains("weight="), "{}", upstream(&site));
    assert_eq!(served(&site).as_deref(), Some(expected));
    assert_eq!(site.containers(), vec![live.clone()]);
    let steps = audit_of(&site, "canary_step");
    if expected == "v1" {
        assert_eq!(container_id(&site, &live), stable_id, "v1 kept serving");
        assert!(steps.is_empty(), "no step ran to its end: {steps:#?}");
    } else {
        assert_eq!(steps.len(), 1, "the step ran again, to its end: {steps:#?}");
        assert_eq!(steps[0]["outcome"], "succeeded", "{:#}", steps[0]);
    }
    assert_converged(&site, expected);
    assert!(status(&site)["canary"].is_null());
    let after: Vec<&Answer> = answers.iter().filter(|a| a.sent >= settled).collect();
    assert!(!after.is_empty());
    assert_eq!(
        count(&after, expected),
        after.len(),
        "{expected} alone answers"
    );
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "no request failed through the kill and the reconcile: {failed:?}"
    );
}

#[test]
fn a_daemon_killed_inside_a_step_then_a_reconcile_runs_the_canary_again_to_its_end() {
    a_daemon_killed_inside_a_step(None);
}

#[test]
fn a_daemon_killed_inside_a_step_then_a_rollback_reconciled_leaves_the_stable_color_alone() {
    a_daemon_killed_inside_a_step(Some("v1"));
}

#[test]
fn status_shows_the_running_step_its_window_and_its_judgement() {
    let site = site_on_v1(r#"[{ weight = 10, pause = "manual" }]"#, 1000, 50.0);
    let stable_color = live_color(&site);
    let deploy = Spawned::start(&site, &["deploy", "v2"], None);
    let load = Load::start(&site, "/version", 2, Duration::from_millis(5));
    wait_canary(&site, 1, 5);

    let shown = ft(&site, &["status"]);
    let json = ft(&site, &["status", "--json"]);
    load.stop();
    shown.expect_code(0);
    json.expect_code(0);
    eprintln!("--- fieldtrack status during a canary\n{}", shown.stdout);

    let lines: Vec<&str> = shown.stdout.lines().collect();
    let line = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", shown.stdout))
            .to_string()
    };
    let canary_line = line("Canary    :");
    for part in [
        "v2",
        "step 1 of 1: 10% of the traffic",
        "keeps 90%",
        "waiting for fieldtrack promote",
    ] {
        assert!(canary_line.contains(part), "{part:?} in {canary_line}");
    }
    let window_line = line("Window    :");
    assert!(
        window_line.contains("canary ") && window_line.contains("; stable "),
        "{window_line}"
    );
    let judgement = line("Judgement :");
    assert!(
        judgement.contains("of the 1000 canary requests a step needs"),
        "{judgement}"
    );

    let status: serde_json::Value =
        serde_json::from_str(&json.stdout).expect("status --json is JSON");
    assert_eq!(status["step"], "canary", "{status:#}");
    let canary = &status["canary"];
    assert_eq!(canary["image"], "v2", "{canary:#}");
    assert_eq!(canary["step"], 1, "{canary:#}");
    assert_eq!(canary["steps"], 1, "{canary:#}");
    assert_eq!(canary["weight"], 10, "{canary:#}");
    assert_eq!(canary["stable_color"], stable_color, "{canary:#}");
    assert!(canary["step_ends"].is_null(), "{canary:#}");
    assert!(
        canary["canary"]["requests"].as_u64() >= Some(5),
        "{canary:#}"
    );
    assert!(
        canary["stable"]["requests"].as_u64() > Some(0),
        "{canary:#}"
    );
    assert!(canary["judgement"].is_string(), "{canary:#}");

    ft(&site, &["promote"]).expect_code(0);
    let (code, stderr) = deploy.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(served(&site).as_deref(), Some("v2"));
}

#[test]
fn under_the_daemon_a_rollback_mid_canary_goes_to_the_stable_image_and_a_failed_step_says_so() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");
    site.set("rollout.resync", "\"1h\"");
    set_canary(
        &mut site,
        r#"[{ weight = 10, pause = "manual" }]"#,
        20,
        50.0,
    );
    let mut daemon = Spawned::start(&site, &["daemon"], None);
    daemon.wait_for_line("daemon started");
    converged_on(&site, "v2");

    // A canary of v3 runs: `rollback` goes back to what serves (v2), not one further (v1).
    write_desired(&site, "image = \"v3\"\n");
    wait_canary(&site, 1, 0);
    let rollback = ft(&site, &["rollback", "--yes"]);
    rollback.expect_code(0).says(&["rolling back to v2"]);
    assert!(
        rollback.stdout.contains("Current deployment : v3")
            && rollback.stdout.contains("Previous deployment: v2"),
        "{}",
        rollback.stdout
    );
    converged_on(&site, "v2");
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(site.containers().len(), 1, "v3's candidate is gone");

    // A deploy that follows the daemon to a failed step says why, not "superseded".
    let load = Load::start(&site, "/", THREADS, GAP);
    let run = ft(&site, &["deploy", "err5"]);
    load.stop();
    run.expect_code(1).says(&[
        "err5 failed after the switch and the desired file was rolled back to v2",
        "canary step 1 of 1 (10%)",
    ]);
    converged_on(&site, "v2");
    daemon.kill();
}

#[test]
fn under_the_daemon_a_failed_canary_is_reported_with_its_auto_rollback_as_soon_as_it_failed() {
    let mut site = site_on_v1(r#"[{ weight = 10, pause = "manual" }]"#, 20, 50.0);
    site.set("rollout.resync", "\"1h\"");
    // The daemon stops right after it recorded a failed pass: the deploy that follows it
    // sees the failed status and never a next pass (the window in which it used to report
    // the failure without the auto-rollback).
    let mut daemon = Spawned::start(&site, &["daemon"], Some("failed"));
    // Holding the lock: the deploy follows the daemon, it does not converge in-process.
    daemon.wait_for_line("daemon started");
    converged_on(&site, "v1");

    let load = Load::start(&site, "/", THREADS, GAP);
    let run = ft(&site, &["deploy", "err5"]);
    load.stop();

    run.expect_code(1).says(&[
        "err5 failed after the switch and the desired file was rolled back to v1",
        "canary step 1 of 1 (10%)",
    ]);
    let status = status(&site);
    assert_eq!(status["phase"], "failed", "{status:#}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("the desired file was rolled back to v1")),
        "the status says so too: {status:#}"
    );
    daemon.kill();
}
