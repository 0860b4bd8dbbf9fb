//! `rollout.keep_previous`: after a deployment the previous color keeps running out of nginx
//! until its window ends, so a rollback inside the window is a pure nginx switch (the same
//! container, nothing created or started); after the window the next pass removes it and a
//! rollback starts a new container. The window lives in status.json and survives a kill -9 of
//! the daemon. Against the real Docker engine (its event stream is the witness) and nginx,
//! through the `fieldtrack` binary.

use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use fieldtrack_testbed::Site;

/// v1 then v2 deployed with `keep_previous`: the v1 container's name and id.
fn v2_over_warm_v1(site: &mut Site, keep: &str) -> (String, String) {
    site.set("rollout.keep_previous", &toml_str(keep));
    deploy_ok(site, "v1");
    let v1 = container_name(site, live_color(site));
    let v1_id = container_id(site, &v1);
    deploy_ok(site, "v2");
    (v1, v1_id)
}

/// status.json's `warm`, checked to name `container` (by name and engine id) running `tag`.
#[track_caller]
fn assert_warm(site: &Site, tag: &str, container: &str, id: &str) -> serde_json::Value {
    let status = status(site);
    let warm = &status["warm"];
    assert_eq!(warm["image"], tag, "{status:#}");
    assert_eq!(warm["container"], container, "{status:#}");
    assert_eq!(warm["color"], color_of(container), "{status:#}");
    assert_eq!(warm["id"], id, "{status:#}");
    warm.clone()
}

/// The end of a warm window, from status.json's `warm.until`.
fn until_of(warm: &serde_json::Value) -> SystemTime {
    let until = warm["until"].as_str().expect("until is a string");
    humantime::parse_rfc3339(until).expect("until is RFC 3339")
}

#[test]
fn without_keep_previous_the_old_color_is_removed_as_before() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");

    assert_eq!(
        site.containers(),
        vec![container_name(&site, live_color(&site))]
    );
    assert!(status(&site)["warm"].is_null(), "{:#}", status(&site));
    assert_converged(&site, "v2");
}

#[test]
fn the_old_color_keeps_running_out_of_nginx_and_a_rollback_inside_the_window_is_a_switch() {
    let mut site = Site::new();
    let (v1, v1_id) = v2_over_warm_v1(&mut site, "15m");
    let v2 = container_name(&site, live_color(&site));
    let v2_id = container_id(&site, &v2);

    // v1 still runs, nginx sends everything to v2.
    assert_eq!(site.containers(), sorted(vec![v1.clone(), v2.clone()]));
    assert_eq!(container_id(&site, &v1), v1_id, "the same v1 container");
    assert_eq!(upstream_port(&site), port_of(&site, &v2));
    for _ in 0..10 {
        assert_eq!(served(&site).as_deref(), Some("v2"));
    }
    assert_converged(&site, "v2");
    let warm = assert_warm(&site, "v1", &v1, &v1_id);
    let left = until_of(&warm)
        .duration_since(SystemTime::now())
        .expect("the window runs");
    assert!(left <= Duration::from_secs(15 * 60) && left > Duration::from_secs(14 * 60));
    // `status` says so.
    let shown = ft(&site, &["status"]);
    shown.expect_code(0);
    let line = shown
        .stdout
        .lines()
        .find(|l| l.starts_with("Previous"))
        .unwrap_or_else(|| panic!("a Previous line:\n{}", shown.stdout));
    assert!(line.contains("v1 warm until "), "{line}");
    assert!(line.contains(&v1), "{line}");
    // A resync in the window keeps it.
    ft(&site, &["reconcile"]).expect_code(0);
    assert_eq!(container_id(&site, &v1), v1_id);

    // The rollback: a switch to the container that runs, no drain to wait for.
    site.set("rollout.drain", "\"0s\"");
    let since = unix_now();
    let started = Instant::now();
    let run = ft(&site, &["rollback", "--yes"]);
    let took = started.elapsed();
    let until = unix_now();

    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(live_color(&site), color_of(&v1));
    assert_eq!(
        container_id(&site, &v1),
        v1_id,
        "the v1 container serves again"
    );
    let created = container_events(&site, &since, &until, &["create", "start"]);
    assert!(
        created.is_empty(),
        "no container was created or started: {created:?}"
    );
    assert!(took < Duration::from_secs(10), "the rollback took {took:?}");
    eprintln!("rollback inside the window: {took:?}");
    // v2 is kept warm in its turn.
    assert_eq!(site.containers(), sorted(vec![v1.clone(), v2.clone()]));
    assert_warm(&site, "v2", &v2, &v2_id);
    assert_eq!(history(&site), "v1\nv2\n");
    assert_converged(&site, "v1");
}

#[test]
fn after_the_window_the_next_pass_removes_the_old_color_and_a_rollback_starts_a_new_one() {
    let mut site = Site::new();
    let (v1, v1_id) = v2_over_warm_v1(&mut site, "3s");
    let warm = assert_warm(&site, "v1", &v1, &v1_id);
    let end = until_of(&warm);
    while SystemTime::now() <= end {
        std::thread::sleep(Duration::from_millis(200));
    }

    ft(&site, &["reconcile"]).expect_code(0);

    assert_eq!(
        site.containers(),
        vec![container_name(&site, live_color(&site))]
    );
    assert!(status(&site)["warm"].is_null(), "{:#}", status(&site));
    assert_converged(&site, "v2");
    let shown = ft(&site, &["status"]);
    assert!(!shown.stdout.contains("Previous"), "{}", shown.stdout);

    // A rollback now is a cold start: a new container for v1.
    let since = unix_now();
    let run = ft(&site, &["rollback", "--yes"]);
    let until = unix_now();
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    let created = container_events(&site, &since, &until, &["create"]);
    assert_eq!(created, [format!("create {v1}")]);
    assert_ne!(container_id(&site, &v1), v1_id);
}

#[test]
fn a_daemon_killed_in_the_window_and_restarted_keeps_it_then_removes_the_old_color_after_it() {
    let mut site = Site::new();
    site.set("rollout.resync", "\"1s\"");
    let (v1, v1_id) = v2_over_warm_v1(&mut site, "20s");
    let warm = assert_warm(&site, "v1", &v1, &v1_id);
    let end = until_of(&warm);

    // A daemon runs its passes, dies by kill -9, another one takes over.
    let first = Spawned::start(&site, &["daemon"], None);
    let first_pid = first.child.id();
    wait_for(PATIENCE, "a pass by the first daemon", || {
        (status(&site)["pid"] == first_pid).then_some(())
    });
    first.kill();
    let second = Spawned::start(&site, &["daemon"], None);
    let second_pid = second.child.id();
    let resyncs = || {
        let s = status(&site);
        (s["pid"] == second_pid).then(|| s["updated_at"].as_str().unwrap_or_default().to_string())
    };
    let seen = wait_for(PATIENCE, "a pass by the restarted daemon", resyncs);
    wait_for(PATIENCE, "a resync by the restarted daemon", || {
        resyncs().filter(|at| *at != seen)
    });
    assert!(
        SystemTime::now() < end,
        "the machine is too slow for this test: the window ended before the check"
    );

    assert_eq!(
        container_id(&site, &v1),
        v1_id,
        "v1 kept by the restarted daemon"
    );
    let kept = assert_warm(&site, "v1", &v1, &v1_id);
    assert_eq!(kept["until"], warm["until"], "the same window");
    assert_eq!(served(&site).as_deref(), Some("v2"));

    // The window ends: the daemon's next resync removes v1.
    wait_for(
        Duration::from_secs(60),
        "v1 removed after its window",
        || (!site.containers().contains(&v1)).then_some(()),
    );
    let removed_after = SystemTime::now()
        .duration_since(end)
        .expect("removed after the window ended, not before");
    eprintln!("v1 removed {removed_after:?} after its window ended (resync 1s)");
    wait_for(PATIENCE, "status.json without a warm color", || {
        status(&site)["warm"].is_null().then_some(())
    });
    assert_eq!(served(&site).as_deref(), Some("v2"));
    second.kill();
}
