//! `fieldtrack daemon` against the real Docker engine, registry and nginx, driven as the
//! real binary in a child process: the desired file written every way CI, editors and
//! operators write it, drift made by hand, signals, systemd notifications, and the CLI
//! talking to a running daemon. What nginx serves, what runs in Docker and the bytes of the
//! files are the observations; the daemon's log is read only where the behaviour is a log.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use fieldtrack_testbed::{procfs, Bed, Site};

#[test]
fn scp_style_write_in_place_is_never_acted_on_half_written_then_converges() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");
    let attempts_before = audit(&site).len();

    let seen = while_watching_status(&site, || {
        // What scp does: truncate the file in place, then write it in chunks.
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&site.desired_file)
            .expect("the desired file opens for writing");
        file.write_all(b"image = \"v").unwrap();
        file.flush().unwrap();
        thread::sleep(Duration::from_millis(400));
        file.write_all(b"2\"\n").unwrap();
        drop(file);
        daemon.wait_converged(&site, "v2");
    });

    for (phase, desired) in &seen {
        assert!(
            phase == "converged" || phase == "progressing",
            "status said {phase} for {desired} while the file was being written: {seen:?}"
        );
        assert!(
            desired == "v1" || desired == "v2",
            "status named {desired} while the file was being written: {seen:?}"
        );
    }
    let new = &audit(&site)[attempts_before..];
    assert_eq!(
        outcomes(new),
        vec![("v2".to_string(), "succeeded".to_string())],
        "one attempt, at v2: {new:#?}"
    );
    assert!(
        !daemon.log().contains("desired file unusable"),
        "the half-written file was reported:\n{}",
        daemon.log()
    );
    assert_eq!(history(&site), "v2\nv1\n");
}

#[test]
fn mv_of_a_temp_file_over_the_desired_file_converges() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");

    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_converged(&site, "v2");
    // Again: a watch on the replaced file would have gone deaf now.
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v3"));
    daemon.wait_converged(&site, "v3");

    assert_eq!(history(&site), "v3\nv2\nv1\n");
}

#[test]
fn editor_saves_converge_without_an_invalid_moment() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");

    let seen = while_watching_status(&site, || {
        // Write the buffer to a swap file beside it, rename it over the original.
        write_by_mv(&site, ".desired.toml.swp", &desired_text("v2"));
        daemon.wait_converged(&site, "v2");

        // vim's way: move the original aside as a backup, write a new file, drop the backup.
        let backup = site.dir.join("desired.toml~");
        fs::rename(&site.desired_file, &backup).unwrap();
        // As on a slow disk: the file is missing for a moment.
        thread::sleep(Duration::from_millis(50));
        write_new(&site.desired_file, desired_text("v3"));
        fs::remove_file(&backup).unwrap();
        daemon.wait_converged(&site, "v3");
    });

    assert!(
        seen.iter().all(|(phase, _)| phase != "invalid"),
        "an editor save was reported invalid: {seen:?}"
    );
    assert_eq!(history(&site), "v3\nv2\nv1\n");
}

#[test]
fn deleted_then_recreated_desired_file_converges_and_production_keeps_serving_meanwhile() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);

    fs::remove_file(&site.desired_file).unwrap();
    // Without a desired file nothing may be torn down: watch production for a while.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(
            served(&site).as_deref(),
            Some("v1"),
            "{}",
            daemon.report(&site)
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(container_id(&site, &live), id);
    assert_eq!(site.containers(), vec![live]);

    write_new(&site.desired_file, desired_text("v2"));

    daemon.wait_converged(&site, "v2");
    assert_eq!(history(&site), "v2\nv1\n");
}

#[test]
fn own_writes_cause_no_event_loop_when_idle() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"30s\"");
    own_writes_cause_no_loop(&site);
}

#[test]
fn state_folder_shared_with_the_desired_file_causes_no_event_loop() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"30s\"");
    // status.json, audit.jsonl, the lock and their temp files in the watched folder itself.
    site.set("state_dir", "\".\"");
    site.state_dir = site.dir.clone();
    own_writes_cause_no_loop(&site);
}

fn own_writes_cause_no_loop(site: &Site) {
    let daemon = Daemon::on(site, "v1");
    daemon.wait_log_count("pass done", 1);
    let files = [
        site.state_dir.join("status.json"),
        site.state_dir.join("audit.jsonl"),
        site.history_file.clone(),
        site.upstream_file.clone(),
        site.desired_file.clone(),
    ];
    let snapshot = || {
        files
            .iter()
            .map(|f| (mtime(f), bytes(f)))
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let log_before = daemon.log();
    let cpu_before = cpu_ticks(daemon.pid());
    // Reads are not logged: count them in the kernel (a read that wakes the watcher that
    // triggers the read loops silently).
    let opens = OpenCounter::watch(&site.desired_file);

    thread::sleep(Duration::from_secs(3));

    let desired_opens = opens.count();
    let after = snapshot();
    for (i, file) in files.iter().enumerate() {
        assert!(
            before[i] == after[i],
            "{} changed while idle\n{}",
            file.display(),
            daemon.report(site)
        );
    }
    let log = daemon.log();
    assert_eq!(
        log, log_before,
        "the idle daemon logged more (its own writes woke it up?)"
    );
    assert_eq!(
        log.matches("new desired generation").count(),
        1,
        "one generation was written, read once:\n{log}"
    );
    assert_eq!(
        desired_opens, 0,
        "the idle daemon kept reading the desired file"
    );
    // A polling loop would burn a core; the idle daemon must not.
    let used = cpu_ticks(daemon.pid()) - cpu_before;
    assert!(used < 30, "the idle daemon used {used} CPU ticks in 3 s");
}

#[test]
fn invalid_desired_file_is_reported_and_the_last_good_version_keeps_serving() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);
    let upstream_before = upstream(&site);

    write_by_mv(&site, "desired.toml.tmp", "image = \"bad tag;\"\n");

    daemon.wait_until(&site, "status says invalid", || {
        status_opt(&site).is_some_and(|s| s["phase"] == "invalid")
    });
    let status = status(&site);
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"bad tag;\""),
        "the message names the value: {status:#}"
    );
    // Production is not touched.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(served(&site).as_deref(), Some("v1"));
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(container_id(&site, &live), id);
    assert_eq!(site.containers(), vec![live.clone()]);
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), "v1\n");
    assert_eq!(status["live"]["container"], live.as_str(), "{status:#}");

    // The same good file as before, so the same generation: the report must clear.
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v1"));
    daemon.wait_converged(&site, "v1");
    assert_eq!(container_id(&site, &live), id, "no redeploy of what runs");

    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_converged(&site, "v2");
    assert_eq!(history(&site), "v2\nv1\n");
}

#[test]
fn invalid_desired_file_stays_reported_while_resyncs_repair_toward_the_last_good() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"1s\"");
    let daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);

    write_by_mv(&site, "desired.toml.tmp", "image = \"bad tag;\"\n");
    daemon.wait_until(&site, "status says invalid", || {
        status_opt(&site).is_some_and(|s| s["phase"] == "invalid")
    });

    // Resyncs go by: none may paper over the report with its own verdict.
    let stays_invalid = |site: &Site, how_long: Duration| {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let status = status(site);
            assert_eq!(
                status["phase"],
                "invalid",
                "the bad file stays reported\n{}",
                daemon.report(site)
            );
            assert!(
                status["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("bad tag;")),
                "{status:#}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    stays_invalid(&site, Duration::from_secs(3));
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(container_id(&site, &live), id);

    // The last good desired state stays in force: drift is still repaired.
    docker(&site, &["rm", "-f", &live]);
    daemon.wait_until(&site, "the repair attempt done", || {
        audit(&site)
            .iter()
            .any(|r| r["trigger"] == "resync" && r["outcome"] == "succeeded")
    });
    // The repair's pass ends after its audit line (or has ended already): wait for the
    // next "pass done".
    let passes = daemon.log().matches("pass done").count();
    daemon.wait_log_count("pass done", passes + 1);
    stays_invalid(&site, Duration::from_secs(2));
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(site.containers().len(), 1);
    assert_ne!(container_ids(&site), vec![id]);
    let status = status(&site);
    assert_eq!(
        status["live"]["container"],
        container_name(&site, live_color(&site)).as_str(),
        "the report keeps what is live up to date: {status:#}"
    );
}

#[test]
fn live_container_removed_by_hand_is_redeployed_on_resync() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"1s\"");
    let daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);

    docker(&site, &["rm", "-f", &live]);

    daemon.wait_until(&site, "v1 served again from a new container", || {
        converged_on(&site, "v1")
            && site.containers().len() == 1
            && container_ids(&site) != vec![id.clone()]
    });
    assert_converged(&site, "v1");
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn live_container_stopped_by_hand_is_replaced_on_resync() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"1s\"");
    let daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));

    docker(&site, &["stop", "-t", "1", &live]);

    daemon.wait_until(&site, "v1 served from the other color", || {
        converged_on(&site, "v1") && site.containers().len() == 1
    });
    assert_ne!(container_name(&site, live_color(&site)), live);
    assert_converged(&site, "v1");
}

#[test]
fn upstream_file_edited_by_hand_is_restored_on_resync() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"1s\"");
    let daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);
    let upstream_before = upstream(&site);
    let other_port = match live_color(&site) {
        "blue" => site.green_port,
        _ => site.blue_port,
    };

    // Someone points nginx at the idle color's port (where nothing listens) and reloads it.
    let live_port = upstream_port(&site);
    fs::write(
        &site.upstream_file,
        upstream_before.replace(
            &format!("127.0.0.1:{live_port};"),
            &format!("127.0.0.1:{other_port};"),
        ),
    )
    .unwrap();
    reload_nginx(&site);

    daemon.wait_until(&site, "the upstream file restored and v1 served", || {
        bytes(&site.upstream_file).as_deref() == Some(upstream_before.as_bytes())
            && served(&site).as_deref() == Some("v1")
            && status_opt(&site).is_some_and(|s| s["phase"] == "converged")
    });
    // Restoring is a switch back to what runs: no container was started or removed.
    assert_eq!(container_id(&site, &live), id);
    assert_eq!(site.containers(), vec![live]);
    assert_converged(&site, "v1");
}

#[test]
fn stray_container_labelled_for_the_app_is_removed_on_resync() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"1s\"");
    let daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);
    let stray = format!("{}-stray", site.app);

    docker(
        &site,
        &[
            "run",
            "-d",
            "--label",
            &format!("fieldtrack.app={}", site.app),
            "--name",
            &stray,
            &site.image("v1"),
        ],
    );
    assert!(site.containers().contains(&stray));

    daemon.wait_until(&site, "the stray container removed", || {
        site.containers() == vec![live.clone()]
    });
    assert_eq!(container_id(&site, &live), id);
    assert_eq!(served(&site).as_deref(), Some("v1"));
}

#[test]
fn new_generation_during_the_health_gate_cancels_the_attempt_before_the_switch() {
    let mut site = quiet_site();
    // `slow` listens after five seconds: well inside this deadline.
    site.set("health.attempts", "30");
    site.set("health.interval", "\"1s\"");
    let daemon = Daemon::on(&site, "v1");

    let served_seen = while_watching_served(&site, || {
        write_by_mv(&site, "desired.toml.tmp", &desired_text("slow"));
        daemon.wait_step(&site, "slow", "health");
        thread::sleep(Duration::from_millis(1500));

        let written = Instant::now();
        write_by_mv(&site, "desired.toml.tmp", &desired_text("v3"));
        daemon.wait_converged(&site, "v3");
        eprintln!("v3 converged {:?} after it was written", written.elapsed());
    });

    assert!(
        !served_seen.contains("slow"),
        "nginx served the cancelled candidate: {served_seen:?}"
    );
    assert_eq!(
        site.containers(),
        vec![container_name(&site, live_color(&site))],
        "no slow container is left"
    );
    let audit = audit(&site);
    assert!(
        audit
            .iter()
            .any(|r| r["image"] == "slow" && r["outcome"] == "cancelled"),
        "the slow attempt is audited as cancelled: {audit:#?}"
    );
    assert!(
        !audit
            .iter()
            .any(|r| r["image"] == "slow" && r["outcome"] == "succeeded"),
        "{audit:#?}"
    );
    assert_eq!(history(&site), "v3\nv1\n");
}

#[test]
fn rollback_during_the_drain_switches_back_to_the_still_running_old_color() {
    let mut site = quiet_site();
    // v1 goes live before the long drain is configured: a first deployment drains too.
    deploy_ok(&site, "v1");
    let (daemon, v1_name, v1_id) = v2_draining_over_v1(&mut site);
    // nginx's old workers may answer a moment longer after the reload.
    daemon.wait_until(&site, "v2 served", || {
        served(&site).as_deref() == Some("v2")
    });
    let v2_name = container_name(&site, live_color(&site));

    let written = Instant::now();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v1"));

    // Back on v1 well before v2's own drain would have ended.
    daemon.wait_within(
        &site,
        Duration::from_secs(15),
        "traffic back on the old color",
        // The upstream file first: nginx's workers of the configuration before v2 may
        // still answer v1 for a moment after v2's reload.
        || live_color(&site) == color_of(&v1_name) && served(&site).as_deref() == Some("v1"),
    );
    eprintln!(
        "v1 served again {:?} after it was written",
        written.elapsed()
    );
    assert_eq!(live_color(&site), color_of(&v1_name));
    assert_eq!(
        container_id(&site, &v1_name),
        v1_id,
        "the rollback reused the running container"
    );

    daemon.wait_until(&site, "v2's container removed after the drain", || {
        site.containers() == vec![v1_name.clone()]
    });
    daemon.wait_converged(&site, "v1");
    assert_eq!(container_id(&site, &v1_name), v1_id, "no new container");
    assert!(!site.containers().contains(&v2_name));
    // v2 served: it is recorded when v1 takes over from it, below the rollback's v1.
    assert_eq!(history(&site), "v1\nv2\n");
    let audit = audit(&site);
    assert!(
        !audit
            .iter()
            .any(|r| r["image"] == "v2" && r["outcome"] == "succeeded"),
        "{audit:#?}"
    );
}

#[test]
fn rollback_command_during_the_drain_goes_back_to_the_image_still_running() {
    let mut site = quiet_site();
    deploy_ok(&site, "v3");
    deploy_ok(&site, "v1");
    let (daemon, v1_name, v1_id) = v2_draining_over_v1(&mut site);

    // v2 serves but is recorded only after its drain: the history still says v1, v3.
    let run = ft(&site, &["rollback", "--yes"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("Current deployment : v2")
            && run.stdout.contains("Previous deployment: v1"),
        "the screen counts the draining v2 as current:\n{}",
        run.stdout
    );
    let written = desired(&site).expect("the desired file exists");
    assert!(
        written.contains("image = \"v1\"") && written.contains("rollback from v2 to v1"),
        "{written}"
    );
    daemon.wait_converged(&site, "v1");
    assert_eq!(
        container_id(&site, &v1_name),
        v1_id,
        "the rollback switched back to the running v1"
    );
    // v2 served before the rollback took over from it: recorded below it.
    assert_eq!(history(&site), "v1\nv2\nv3\n");
}

#[test]
fn an_image_that_served_is_recorded_when_a_newer_generation_cuts_its_drain_short() {
    // CI merging twice within seconds: v3 arrives while v2, live, drains over v1.
    let mut site = quiet_site();
    deploy_ok(&site, "v1");
    let (daemon, _, _) = v2_draining_over_v1(&mut site);

    write_by_mv(&site, "desired.toml.tmp", &desired_text("v3"));
    daemon.wait_converged(&site, "v3");

    assert_eq!(history(&site), "v3\nv2\nv1\n");
    let audit = audit(&site);
    let v2 = audit
        .iter()
        .find(|r| r["image"] == "v2")
        .expect("v2's attempt is audited");
    assert_eq!(v2["outcome"], "cancelled", "{v2:#}");
    assert!(
        v2["message"]
            .as_str()
            .is_some_and(|m| m.contains("drain of v2 was cut short")),
        "{v2:#}"
    );
    let v3 = audit.last().expect("v3's attempt is audited");
    assert_eq!(
        (&v3["image"], &v3["previous"]),
        (&"v3".into(), &"v2".into())
    );

    let run = ft(&site, &["rollback", "--yes"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("Previous deployment: v2"),
        "the screen offers v2:\n{}",
        run.stdout
    );
    daemon.wait_converged(&site, "v2");
    assert_eq!(history(&site), "v2\nv3\nv1\n");
}

#[test]
fn deploy_and_rollback_stop_waiting_at_their_timeout_while_the_daemon_goes_on() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");
    // `slow` listens only after 5 s.
    let run = ft(&site, &["deploy", "slow", "--timeout", "1s"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("gave up waiting after 1s for slow"),
        "{}",
        run.stderr
    );
    daemon.wait_converged(&site, "slow");
    ft(&site, &["deploy", "v1"]).expect_code(0);
    daemon.wait_converged(&site, "v1");

    let run = ft(&site, &["rollback", "--yes", "--timeout", "1s"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("gave up waiting after 1s for slow"),
        "{}",
        run.stderr
    );
    // The rollback pins slow's recorded digest: the history says when it is done.
    daemon.wait_until(&site, "the rollback to slow recorded", || {
        history(&site) == "slow\nv1\n"
    });
    assert_eq!(served(&site).as_deref(), Some("slow"));
}

#[test]
fn sigterm_during_the_health_gate_removes_the_candidate_and_exits_0() {
    let mut site = quiet_site();
    site.set("health.attempts", "30");
    site.set("health.interval", "\"1s\"");
    let mut daemon = Daemon::on(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);
    let upstream_before = bytes(&site.upstream_file);

    write_by_mv(&site, "desired.toml.tmp", &desired_text("slow"));
    daemon.wait_step(&site, "slow", "health");
    daemon.signal(libc::SIGTERM);

    let status = daemon.wait_exit(&site, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_eq!(
        site.containers(),
        vec![live.clone()],
        "the candidate is gone"
    );
    assert_eq!(container_id(&site, &live), id);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert!(
        bytes(&site.upstream_file) == upstream_before,
        "upstream file unchanged"
    );
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn second_sigterm_while_stopping_forces_exit_130() {
    let mut site = quiet_site();
    // A pre-switch hook is not interrupted: the first SIGTERM waits for it to end.
    site.set("hooks.pre_switch", "[\"sleep\", \"30\"]");
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v1"));
    let mut daemon = Daemon::start(&site, &[]);
    daemon.wait_log("running hook");

    daemon.signal(libc::SIGTERM);
    daemon.wait_log("stop signal");
    assert!(daemon.running(), "the first SIGTERM waits for a safe point");
    daemon.signal(libc::SIGTERM);

    let status = daemon.wait_exit(&site, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", daemon.log());
}

#[test]
fn sighup_reloads_the_config_and_a_shorter_resync_takes_effect() {
    let mut site = quiet_site();
    // The quiet site's resync is an hour: only the reloaded one can repair below.
    let daemon = Daemon::on(&site, "v1");
    let passes = daemon.log().matches("pass done").count();

    site.set("rollout.resync", "\"1s\"");
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("config reloaded");
    daemon.wait_log_count("pass done", passes + 1);
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);

    docker(&site, &["rm", "-f", &live]);

    daemon.wait_within(
        &site,
        Duration::from_secs(30),
        "repaired by the new resync",
        || {
            converged_on(&site, "v1")
                && site.containers().len() == 1
                && container_ids(&site) != vec![id.clone()]
        },
    );
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_old_one_and_keeps_deploying() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");

    let mut config = fs::read_to_string(&site.config_path).unwrap();
    config.insert_str(0, "no_such_key = 1\n");
    fs::write(&site.config_path, config).unwrap();
    daemon.signal(libc::SIGHUP);

    let line = daemon.wait_log("keeping the old one");
    assert!(
        line.contains("no_such_key"),
        "the log names the key: {line}"
    );
    assert!(daemon.running());
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_converged(&site, "v2");
}

#[test]
fn sighup_moving_the_state_folder_is_refused_and_the_daemon_keeps_its_lock_and_state() {
    let mut site = quiet_site();
    let daemon = Daemon::on(&site, "v1");
    let old_state = site.state_dir.clone();
    let moved = site.dir.join("moved-state");

    site.set("state_dir", &toml_str(&moved.display().to_string()));
    daemon.signal(libc::SIGHUP);

    // The lock and the status writer stay where the daemon took them: a reload that moved
    // them would leave the lock behind, and a command on the new config would find its
    // lock free and reconcile beside the daemon.
    let line = daemon.wait_log("keeping the old one");
    assert!(
        line.contains("state_dir") && line.contains("restart"),
        "the log names the key and the fix: {line}"
    );
    assert!(daemon.running());
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_until(
        &site,
        "v2 converged in the state folder the daemon holds",
        || {
            fs::read_to_string(old_state.join("status.json"))
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .is_some_and(|s| s["phase"] == "converged" && s["desired"] == "v2")
        },
    );
    assert!(
        !moved.join("status.json").exists(),
        "nothing is written in the folder the refused config named"
    );
}

#[test]
fn failed_generation_is_not_retried_until_reconcile_asks_the_daemon() {
    let mut site = quiet_site();
    site.set("rollout.resync", "\"1s\"");
    fast_health(&mut site);
    let daemon = Daemon::on(&site, "v1");

    write_by_mv(&site, "desired.toml.tmp", &desired_text("unhealthy"));
    daemon.wait_until(&site, "the unhealthy generation failed", || {
        status_opt(&site).is_some_and(|s| s["phase"] == "failed" && s["desired"] == "unhealthy")
    });
    // Several resyncs go by: none may try the failed generation again.
    thread::sleep(Duration::from_secs(4));
    let failed = |site: &Site| {
        audit(site)
            .into_iter()
            .filter(|r| r["image"] == "unhealthy")
            .collect::<Vec<_>>()
    };
    let attempts = failed(&site);
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(served(&site).as_deref(), Some("v1"));

    let run = ft(&site, &["reconcile"]);

    run.expect_code(1);
    assert!(
        run.stderr
            .contains(&format!("asked the daemon (pid {})", daemon.pid())),
        "{}",
        run.stderr
    );
    // `reconcile` reports the outcome of the pass it asked for, so that pass is over.
    let attempts = failed(&site);
    assert_eq!(
        attempts.len(),
        2,
        "a second attempt, by hand: {attempts:#?}"
    );
    assert_eq!(attempts[1]["outcome"], "failed");
    assert_eq!(attempts[1]["trigger"], "by-hand");
    assert_eq!(served(&site).as_deref(), Some("v1"));
}

#[test]
fn reconcile_reports_the_pass_it_asked_for_not_the_one_running_when_it_asked() {
    let mut site = quiet_site();
    fast_health(&mut site);
    let daemon = Daemon::on(&site, "v1");
    write_by_mv(&site, "desired.toml.tmp", &desired_text("unhealthy"));
    daemon.wait_step(&site, "unhealthy", "health");
    let attempts = |site: &Site| {
        audit(site)
            .iter()
            .filter(|r| r["image"] == "unhealthy")
            .count()
    };

    // Asked while the first attempt is in its health gate: that attempt's failure is not
    // the answer; the pass by hand that follows it (a second attempt) is.
    ft(&site, &["reconcile"]).expect_code(1);
    assert_eq!(attempts(&site), 2, "{:#?}", audit(&site));
    ft(&site, &["reconcile"]).expect_code(1);
    assert_eq!(attempts(&site), 3, "{:#?}", audit(&site));

    let log: serde_json::Value = serde_json::from_slice(
        &fs::read(site.state_dir.join("by-hand.json")).expect("by-hand.json exists"),
    )
    .expect("by-hand.json is JSON");
    assert_eq!(log["started"], 2);
    assert_eq!(log["finished"], 2);
    assert_eq!(log["outcome"]["phase"], "failed");
    assert_eq!(log["outcome"]["desired"], "unhealthy");
    assert_eq!(served(&site).as_deref(), Some("v1"));
}

#[test]
fn deploy_follows_the_daemon_and_exits_0_on_success() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");

    // ready1s listens after a second: long enough for a health step to be seen.
    let run = ft(&site, &["deploy", "ready1s"]);

    run.expect_code(0);
    assert!(
        run.stderr
            .contains(&format!("the daemon (daemon pid {}", daemon.pid())),
        "deploy says the daemon converges it:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("progressing: health")),
        "progress lines:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("converged: ready1s live on ")),
        "{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("ready1s"));
    assert_converged(&site, "ready1s");
}

#[test]
fn deploy_follows_the_daemon_and_exits_1_on_an_unhealthy_image() {
    let mut site = quiet_site();
    fast_health(&mut site);
    let _daemon = Daemon::on(&site, "v1");

    let run = ft(&site, &["deploy", "unhealthy"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("did not become healthy"),
        "{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn deploy_following_the_daemon_exits_1_when_superseded() {
    let mut site = quiet_site();
    site.set("health.attempts", "30");
    site.set("health.interval", "\"1s\"");
    let daemon = Daemon::on(&site, "v1");

    let mut deploy = Spawned::start(&site, &["deploy", "slow"], None);
    deploy.wait_for_line("following its progress");
    daemon.wait_step(&site, "slow", "health");
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v3"));

    let line = deploy.wait_for_line("superseded");
    let code = deploy.child.wait().expect("deploy is reaped").code();
    assert_eq!(code, Some(1), "{line}");
    daemon.wait_converged(&site, "v3");
}

#[test]
fn json_logs_are_one_object_a_line_and_attempt_lines_carry_generation_and_image() {
    let mut site = quiet_site();
    fast_health(&mut site);
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v1"));
    let mut daemon = Daemon::start(&site, &["--log-format", "json"]);
    daemon.wait_converged(&site, "v1");
    let mut images = std::collections::BTreeMap::new();
    images.insert(status(&site)["generation"].to_string(), "v1");
    // A failed attempt too: its outcome is a line of the attempt as well.
    write_by_mv(&site, "desired.toml.tmp", &desired_text("unhealthy"));
    daemon.wait_until(&site, "the unhealthy attempt failed", || {
        status_opt(&site).is_some_and(|s| s["phase"] == "failed")
    });
    images.insert(status(&site)["generation"].to_string(), "unhealthy");
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit(&site, Duration::from_secs(10));

    let log = daemon.log();
    let mut attempt_lines = 0;
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value.is_object(), "{line}");
        // A key of the event itself or of a span it is in.
        let find = |key: &str| {
            let spans = value["spans"].as_array().into_iter().flatten().rev();
            [&value["fields"], &value["span"]]
                .into_iter()
                .chain(spans)
                .map(|v| &v[key])
                .find(|v| !v.is_null())
                .cloned()
        };
        let message = value["fields"]["message"].as_str().unwrap_or_default();
        let of_attempt = [
            "step",
            "applying",
            "candidate healthy",
            "candidate not healthy yet",
            "nginx switched",
        ]
        .contains(&message)
            || message.starts_with("attempt")
            || message.starts_with("pass");
        let Some(generation) = find("generation") else {
            assert!(
                !of_attempt,
                "a line of an attempt without its generation: {line}"
            );
            continue;
        };
        attempt_lines += usize::from(of_attempt);
        let image = images
            .get(&generation.to_string())
            .unwrap_or_else(|| panic!("an unknown generation: {line}"));
        assert_eq!(
            find("image"),
            Some(serde_json::json!(image)),
            "a line naming generation {generation} names its image: {line}"
        );
    }
    assert!(
        attempt_lines >= 10,
        "the attempts logged their steps:\n{log}"
    );
}

#[test]
fn systemd_gets_ready_after_the_first_observation_then_watchdog_pings() {
    let site = quiet_site();
    let socket_path = site.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("the notify socket binds");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v1"));
    // systemd sets WATCHDOG_PID to the service's pid; a shell that execs keeps its pid.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_fieldtrack"))
        .arg("--config")
        .arg(&site.config_path)
        .arg("daemon")
        .current_dir(&site.dir)
        .env_remove("FIELDTRACK_CONFIG")
        .env_remove("FIELDTRACK_TEST_PAUSE_AT")
        .env_remove("FIELDTRACK_LOG")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "300000");
    let daemon = Daemon::spawn(&site, cmd);

    // Everything the daemon tells systemd while it makes its first deployment.
    let stop = AtomicBool::new(false);
    let messages = thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut messages = Vec::new();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let observed = daemon.log().contains("first observation");
                    messages.push((Instant::now(), text, observed));
                }
            }
            messages
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            daemon.wait_converged(&site, "v1");
            thread::sleep(Duration::from_secs(1));
        }));
        stop.store(true, Ordering::Relaxed);
        let messages = receiver.join().expect("the receiver ends");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        messages
    });

    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    let ready = messages
        .iter()
        .position(|(_, text, _)| has(text, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {messages:?}\n{}", daemon.report(&site)));
    assert!(
        messages[ready].2,
        "READY=1 came before the first observation was logged"
    );
    let pings: Vec<Instant> = messages[ready..]
        .iter()
        .filter(|(_, text, _)| has(text, "WATCHDOG=1"))
        .map(|(at, _, _)| *at)
        .collect();
    assert!(pings.len() >= 5, "WATCHDOG=1 keeps coming: {messages:?}");
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!("{} watchdog pings, longest gap {longest:?}", pings.len());
    // The watchdog period itself: a longer silence gets the service killed by systemd.
    assert!(
        longest < Duration::from_micros(300_000),
        "a {longest:?} gap between watchdog pings during a deployment"
    );
}

#[test]
fn env_file_secret_reaches_the_container_but_no_log_or_state_file() {
    secret_reaches_the_container_only(None);
}

#[test]
fn env_file_secret_stays_out_of_the_debug_log_too() {
    secret_reaches_the_container_only(Some("debug"));
}

/// Deploys with a secret in the env file (and fails an attempt, whose error quotes the
/// candidate's logs), the daemon logging at `level` (FIELDTRACK_LOG) or its default.
fn secret_reaches_the_container_only(level: Option<&str>) {
    let mut site = quiet_site();
    fast_health(&mut site);
    site.set("container.env_file", "\"app.env\"");
    write_new(
        &site.dir.join("app.env"),
        "# the app's secrets\nSECRET_TOKEN=hunter2-abc\n",
    );
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v1"));
    let mut cmd = command(&site, &["daemon"]);
    if let Some(level) = level {
        cmd.env("FIELDTRACK_LOG", level);
    }
    let mut daemon = Daemon::spawn(&site, cmd);
    daemon.wait_converged(&site, "v1");
    // A failing attempt too: its error quotes the candidate's logs.
    write_by_mv(&site, "desired.toml.tmp", &desired_text("crash"));
    daemon.wait_until(&site, "the crash attempt failed", || {
        status_opt(&site).is_some_and(|s| s["phase"] == "failed")
    });

    let live = container_name(&site, live_color(&site));
    let env = docker(
        &site,
        &["inspect", "--format", "{{json .Config.Env}}", &live],
    );
    assert!(env.contains("\"SECRET_TOKEN=hunter2-abc\""), "{env}");
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit(&site, Duration::from_secs(10));

    let log = daemon.log();
    assert!(log.contains("pass done"), "the daemon logged:\n{log}");
    let mut places = vec![(PathBuf::from("daemon stderr"), log)];
    for file in fs::read_dir(&site.state_dir).unwrap().flatten() {
        places.push((
            file.path(),
            fs::read_to_string(file.path()).unwrap_or_default(),
        ));
    }
    places.push((site.history_file.clone(), history(&site)));
    for (place, text) in places {
        assert!(
            !text.contains("hunter2-abc"),
            "the secret is in {}:\n{text}",
            place.display()
        );
    }
}

#[test]
fn second_daemon_on_the_same_state_folder_refuses_to_start() {
    let site = quiet_site();
    let first = Daemon::on(&site, "v1");

    let mut second = command(&site, &["daemon"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    if second.try_wait().unwrap().is_none() {
        let _ = second.kill();
        let _ = second.wait();
        panic!("the second daemon did not refuse to start");
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("daemon pid {}", first.pid())),
        "the message names the first daemon: {stderr}"
    );
    assert!(first.running());
    assert_converged(&site, "v1");
}

// ---------------------------------------------------------------------------------------
// Helpers of this file.

/// With v1 deployed: a 20 s drain, a daemon on v1, then v2 written and draining (v1 still
/// running). The daemon, v1's container name and id.
fn v2_draining_over_v1(site: &mut Site) -> (Daemon, String, String) {
    site.set("rollout.drain", "\"20s\"");
    let daemon = Daemon::start(site, &[]);
    daemon.wait_converged(site, "v1");
    let v1_name = container_name(site, live_color(site));
    let v1_id = container_id(site, &v1_name);
    write_by_mv(site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_step(site, "v2", "draining");
    (daemon, v1_name, v1_id)
}

/// (image, outcome) of audit records.
fn outcomes(records: &[serde_json::Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["image"].as_str().unwrap_or_default().to_string(),
                r["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Runs `work` while a thread records every (phase, desired) status.json shows.
fn while_watching_status(site: &Site, work: impl FnOnce()) -> BTreeSet<(String, String)> {
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(status) = status_opt(site) {
                    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
                    seen.insert((text(&status["phase"]), text(&status["desired"])));
                }
                thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        stop.store(true, Ordering::Relaxed);
        let seen = watcher.join().expect("the status watcher ends");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        seen
    })
}

/// Runs `work` while a thread records every answer nginx gives on `/version`.
fn while_watching_served(site: &Site, work: impl FnOnce()) -> BTreeSet<String> {
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                seen.insert(served(site).unwrap_or_else(|| "(no answer)".into()));
                thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        stop.store(true, Ordering::Relaxed);
        let seen = watcher.join().expect("the nginx watcher ends");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        seen
    })
}

/// Runs docker on the bed's engine; must succeed; returns stdout.
#[track_caller]
fn docker(site: &Site, args: &[&str]) -> String {
    let out = site.docker().args(args).output().expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of the site's containers, sorted.
fn container_ids(site: &Site) -> Vec<String> {
    let mut ids: Vec<String> = site
        .containers()
        .iter()
        .map(|name| container_id(site, name))
        .collect();
    ids.sort();
    ids
}

/// `nginx -s reload` on the site's nginx, as an operator would after editing its config.
fn reload_nginx(site: &Site) {
    let prefix = site.dir.join("nginx");
    let status = Command::new(&Bed::shared().nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .args(["-s", "reload"])
        .status()
        .expect("nginx runs");
    assert!(status.success(), "nginx -s reload");
}

/// Counts the opens of one file, whoever opens it (inotify `IN_OPEN`).
struct OpenCounter {
    inotify: File,
}

impl OpenCounter {
    fn watch(path: &Path) -> OpenCounter {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
            .map(File::from)
            .unwrap_or_else(|e| panic!("inotify_init1: {}", std::io::Error::from(e)));
        if let Err(e) = inotify::add_watch(&inotify, path, WatchFlags::OPEN) {
            panic!("inotify_add_watch: {}", std::io::Error::from(e));
        }
        OpenCounter { inotify }
    }

    /// Opens since the last call.
    fn count(&self) -> usize {
        let mut opens = 0;
        let mut buf = [0u8; 4096];
        // Each event: wd i32, mask u32, cookie u32, len u32, then `len` bytes of name.
        while let Ok(n) = (&self.inotify).read(&mut buf) {
            let mut at = 0;
            while at + 16 <= n {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                opens += usize::from(mask & libc::IN_OPEN != 0);
                at += 16 + len;
            }
        }
        opens
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    procfs::Stat::of(pid)
        .expect("the process exists")
        .cpu_ticks()
}
