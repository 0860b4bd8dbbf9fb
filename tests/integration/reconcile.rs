//! The reconciler against the real Docker engine, registry and nginx, driven through the
//! `fieldtrack` binary: what nginx serves, what runs in Docker and the bytes of the files
//! fieldtrack owns are the observations; nothing here trusts the binary's own word.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use fieldtrack_testbed::{Bed, Site};

#[test]
fn first_deploy_serves_the_image_from_one_container_and_records_it() {
    let site = Site::new();

    ft(&site, &["deploy", "v1"]).expect_code(0);

    assert_eq!(served(&site).as_deref(), Some("v1"));
    let color = live_color(&site);
    assert_eq!(site.containers(), vec![container_name(&site, color)]);
    assert_eq!(history(&site), "v1\n");
    assert_converged(&site, "v1");
    let upstream = upstream(&site);
    assert!(
        upstream.starts_with(&format!(
            "# managed by fieldtrack: do not edit (live: {color} {}:v1)\n",
            site.app
        )),
        "{upstream}"
    );
}

#[test]
fn second_deploy_switches_color_and_leaves_no_old_container() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let first = live_color(&site);

    ft(&site, &["deploy", "v2"]).expect_code(0);

    assert_eq!(served(&site).as_deref(), Some("v2"));
    let second = live_color(&site);
    assert_ne!(first, second, "the new image went into the idle color");
    assert_eq!(site.containers(), vec![container_name(&site, second)]);
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
}

#[test]
fn history_keeps_five_distinct_images_newest_first() {
    let site = Site::new();
    for tag in ["v1", "v2", "v3", "v4", "v5", "v6"] {
        deploy_ok(&site, tag);
    }
    assert_eq!(history(&site), "v6\nv5\nv4\nv3\nv2\n");

    // Redeploying what is live changes nothing, not even the container.
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);
    let upstream_before = upstream(&site);
    ft(&site, &["deploy", "v6"]).expect_code(0);
    assert_eq!(
        container_id(&site, &live),
        id,
        "the live container was kept"
    );
    assert_eq!(site.containers(), vec![live]);
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), "v6\nv5\nv4\nv3\nv2\n");
    assert_converged(&site, "v6");

    // An image from the history moves to the front instead of appearing twice.
    deploy_ok(&site, "v3");
    assert_eq!(history(&site), "v3\nv6\nv5\nv4\nv2\n");
    assert_converged(&site, "v3");
}

#[test]
fn unhealthy_image_fails_and_leaves_production_untouched() {
    let mut site = Site::new();
    fast_health(&mut site);
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let candidate = container_name(&site, idle_color(&site));
    let (upstream_before, history_before) = (upstream(&site), history(&site));

    let run = ft(&site, &["deploy", "unhealthy"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "candidate {candidate} (unhealthy) did not become healthy"
        )),
        "stderr names the unhealthy candidate:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live]);
    let status = status(&site);
    assert_eq!(status["phase"], "failed", "{status:#}");
    assert_eq!(status["live"]["image"], site.image("v1"), "{status:#}");
}

#[test]
fn crashing_image_fails_at_once_with_its_own_error_line() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let (upstream_before, history_before) = (upstream(&site), history(&site));

    let run = ft(&site, &["deploy", "crash"]);

    run.expect_code(1);
    // The crash image exits at once: the health gate must notice the exit, not sit out its
    // ten-second deadline.
    assert!(
        run.duration < Duration::from_secs(8),
        "deploy of a crashing image took {:?}",
        run.duration
    );
    assert!(
        run.stderr.contains("simulated crash on startup"),
        "the app's stderr line is quoted:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live]);
}

#[test]
fn image_slower_than_the_health_deadline_fails_cleanly() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    // A two-second deadline for an app that listens after five.
    site.set("health.interval", "\"1s\"");
    site.set("health.attempts", "2");
    let live = container_name(&site, live_color(&site));
    let (upstream_before, history_before) = (upstream(&site), history(&site));

    let run = ft(&site, &["deploy", "slow"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("did not become healthy"),
        "{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live]);
}

#[test]
fn tag_missing_from_the_registry_fails_and_leaves_production_untouched() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let (upstream_before, history_before) = (upstream(&site), history(&site));

    let run = ft(&site, &["deploy", "no-such-tag-xyz"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "image {} was not found",
            site.image("no-such-tag-xyz")
        )),
        "stderr says the image was not found:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live]);
}

#[test]
fn invalid_tag_is_refused_with_exit_2_and_changes_nothing() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);
    let status_file = site.state_dir.join("status.json");
    let desired_before = desired(&site).expect("deploy wrote the desired file");
    let (upstream_before, history_before) = (upstream(&site), history(&site));
    let status_before = bytes(&status_file);

    for bad in ["v1;rm -rf /", "$(reboot)", ""] {
        let run = ft(&site, &["deploy", bad]);

        run.expect_code(2);
        assert!(
            run.stderr.contains(&format!("invalid image {bad:?}")),
            "the error names the value {bad:?}:\n{}",
            run.stderr
        );
        assert_eq!(desired(&site).as_ref(), Some(&desired_before), "{bad:?}");
        assert_eq!(upstream(&site), upstream_before, "{bad:?}");
        assert_eq!(history(&site), history_before, "{bad:?}");
        assert!(
            bytes(&status_file) == status_before,
            "{bad:?} rewrote status.json"
        );
    }
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(site.containers(), vec![live.clone()]);
    assert_eq!(container_id(&site, &live), id);
}

#[test]
fn failing_nginx_test_restores_the_upstream_file_and_never_reloads() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let (upstream_before, history_before) = (upstream(&site), history(&site));

    // `nginx -t` runs on a copy of the site's config with one broken directive; the running
    // nginx keeps a valid config, so a reload would show (new workers, new version served).
    let prefix = site.dir.join("nginx");
    let broken = prefix.join("broken.conf");
    let conf = fs::read_to_string(prefix.join("nginx.conf")).unwrap();
    fs::write(&broken, format!("{conf}this_is_not_a_directive;\n")).unwrap();
    let nginx = Bed::shared().nginx.display().to_string();
    let test_command = [
        nginx.as_str(),
        "-p",
        &prefix.display().to_string(),
        "-c",
        &broken.display().to_string(),
        "-e",
        &prefix.join("logs/error.log").display().to_string(),
        "-t",
        "-q",
    ]
    .map(|a| format!("{a:?}"))
    .join(", ");
    site.set("nginx.test_command", &format!("[{test_command}]"));
    let workers = nginx_workers(&site);
    assert!(!workers.is_empty(), "nginx has workers");

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("nginx test command"),
        "stderr says the test failed:\n{}",
        run.stderr
    );
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(nginx_workers(&site), workers, "nginx was not reloaded");
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live]);
}

/// Deploys v1, then kills `deploy v2` with SIGKILL where it pauses at `point`; a plain
/// `reconcile` must then converge on v2 without help.
fn killed_deploy_converges_on_reconcile(point: &str) {
    let site = Site::new();
    deploy_ok(&site, "v1");

    let mut deploy = Spawned::start(&site, &["deploy", "v2"], Some(point));
    deploy.wait_for_line(&format!("fieldtrack: test pause at {point}"));
    deploy.kill();

    // The kill left an attempt half done: v2 not yet recorded, the status mid-step.
    assert_eq!(history(&site), "v1\n");
    let status = status(&site);
    assert_eq!(status["phase"], "progressing", "{status:#}");
    let step = if point == "recording" {
        "cleanup"
    } else {
        point
    };
    assert_eq!(status["step"], step, "{status:#}");

    ft(&site, &["reconcile"]).expect_code(0);

    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(
        site.containers(),
        vec![container_name(&site, live_color(&site))]
    );
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
}

macro_rules! killed_at {
    ($($name:ident => $point:literal,)*) => {$(
        #[test]
        fn $name() {
            killed_deploy_converges_on_reconcile($point);
        }
    )*};
}

killed_at! {
    deploy_killed_while_pulling_converges_on_reconcile => "pulling",
    deploy_killed_while_starting_converges_on_reconcile => "starting",
    deploy_killed_during_health_gate_converges_on_reconcile => "health",
    deploy_killed_while_switching_converges_on_reconcile => "switching",
    deploy_killed_while_draining_converges_on_reconcile => "draining",
    deploy_killed_during_cleanup_converges_on_reconcile => "cleanup",
    deploy_killed_before_recording_converges_on_reconcile => "recording",
}

#[test]
fn second_reconciler_waits_for_the_lock_and_names_its_holder() {
    let site = Site::new();
    let mut deploy = Spawned::start(&site, &["deploy", "v1"], Some("health"));
    deploy.wait_for_line("fieldtrack: test pause at health");

    let mut reconcile = Spawned::start(&site, &["reconcile"], None);
    let line = reconcile.wait_for_line("waiting for the reconcile lock, held by");

    assert!(
        line.contains(&format!("fieldtrack deploy pid {}", deploy.child.id())),
        "the holder is named: {line}"
    );
    assert!(
        matches!(reconcile.child.try_wait(), Ok(None)),
        "the second reconciler waits instead of giving up"
    );
    reconcile.kill();
    deploy.kill();
}

#[test]
fn a_reconcile_that_waited_for_the_lock_converges_the_desired_file_as_it_is_then() {
    let site = Site::new();
    let mut deploy = Spawned::start(&site, &["deploy", "v1"], Some("health"));
    deploy.wait_for_line("fieldtrack: test pause at health");
    let mut reconcile = Spawned::start(&site, &["reconcile"], None);
    reconcile.wait_for_line("waiting for the reconcile lock, held by");

    // The desired file changes while the reconcile waits; then the lock is freed.
    ft(&site, &["deploy", "v2", "--no-wait"]).expect_code(0);
    deploy.kill();

    let (code, stderr) = reconcile.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(served(&site).as_deref(), Some("v2"), "{stderr}");
    assert_eq!(history(&site), "v2\n");
    assert_converged(&site, "v2");
}

#[test]
fn status_and_history_json_agree_with_the_files() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");

    let run = ft(&site, &["status", "--json"]);
    run.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("status is JSON");
    let file = status(&site);
    for key in ["desired", "generation", "phase", "live", "message"] {
        assert_eq!(shown[key], file[key], "status --json {key} vs status.json");
    }
    assert_converged(&site, "v2");
    assert_eq!(shown["upstream_port"], upstream_port(&site));
    let desired = desired(&site).expect("deploy wrote the desired file");
    assert!(
        desired.contains("image = \"v2\""),
        "desired file:\n{desired}"
    );
    assert_eq!(shown["desired"], "v2");
    let history = history(&site);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines, ["v2", "v1"]);
    assert_eq!(shown["history"], serde_json::json!(lines));

    let run = ft(&site, &["history", "--json"]);
    run.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("history is JSON");
    let entries = shown.as_array().expect("a list");
    let images: Vec<&str> = entries
        .iter()
        .map(|e| e["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, lines);
    let audit = audit(&site);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry["n"], i + 1);
        assert_eq!(entry["current"], i == 0);
        let deployed = audit
            .iter()
            .rev()
            .find(|r| r["image"] == entry["image"] && r["outcome"] == "succeeded")
            .unwrap_or_else(|| panic!("the audit log has {entry}"));
        assert_eq!(entry["deployed_at"], deployed["time"], "{entry:#}");
        assert_eq!(entry["digest"], deployed["digest"], "{entry:#}");
    }
    assert_eq!(
        entries[0]["digest"], file["digest"],
        "the live image's digest"
    );
    assert!(
        file["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{file:#}"
    );
}

#[test]
fn a_foreign_container_holding_a_color_name_is_never_removed() {
    // An old deploy script's container, unlabelled, holds the name of the idle color.
    let site = Site::new();
    deploy_ok(&site, "v1");
    let idle = if live_color(&site) == "blue" {
        "green"
    } else {
        "blue"
    };
    let foreign = container_name(&site, idle);
    let image = Bed::shared().image("v9");
    let out = site
        .docker()
        .args(["run", "-d", "--name", &foreign, &image])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let foreign_id = container_id(&site, &foreign);

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("not managed by fieldtrack"),
        "{}",
        run.stderr
    );
    assert_eq!(container_id(&site, &foreign), foreign_id, "left alone");
    assert_eq!(served(&site).as_deref(), Some("v1"), "production untouched");
    assert_eq!(history(&site), "v1\n");
    let _ = site.docker().args(["rm", "-f", &foreign]).output();
}

#[test]
fn the_drain_lasts_until_nginx_workers_of_the_old_configuration_have_exited() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let v1 = container_name(&site, live_color(&site));
    let before = nginx_workers(&site);
    let mut held = HeldRequest::start(&site);

    let deploy = Spawned::start(&site, &["deploy", "v2"], None);
    wait_until(PATIENCE, "nginx reloaded", || {
        nginx_workers(&site).iter().any(|p| !before.contains(p))
    });
    wait_until(PATIENCE, "v2 served", || {
        served(&site).as_deref() == Some("v2")
    });
    // Well past the 1 s drain: the old worker still holds its request.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        site.containers().contains(&v1),
        "v1 was removed while nginx's old worker still held a request for it"
    );

    let answer = held.finish();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("v1\n"),
        "the held request was answered by v1:\n{answer}"
    );
    let (code, stderr) = deploy.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        site.containers(),
        vec![container_name(&site, live_color(&site))],
        "v1 removed once the old worker was gone"
    );
    assert!(nginx_workers(&site).iter().all(|p| !before.contains(p)));
    assert_converged(&site, "v2");
}

#[test]
fn a_reload_the_running_nginx_did_not_take_fails_the_switch_and_keeps_the_old_color() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let v1 = container_name(&site, live_color(&site));
    // nginx's config gains a listen on a port someone else holds: `nginx -t` accepts it
    // (it binds nothing), the running master cannot bind it, so it keeps its old
    // configuration and its old workers after the reload, which still exits 0.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let conf = site.dir.join("nginx/nginx.conf");
    let listen = format!("listen {};", site.nginx_addr());
    let text = fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&listen), "{text}");
    let text = text.replacen(
        &listen,
        &format!("{listen}\n        listen 127.0.0.1:{busy_port};"),
        1,
    );
    fs::write(&conf, text).unwrap();
    let upstream_before = upstream(&site);
    let workers = nginx_workers(&site);

    let run = ft(&site, &["deploy", "v2"]);

    let error_log = fs::read_to_string(site.dir.join("nginx/logs/error.log")).unwrap();
    assert!(
        error_log.contains(&format!("bind() to 127.0.0.1:{busy_port} failed")),
        "nginx's error log says it kept its old configuration:\n{error_log}"
    );
    run.expect_code(1)
        .says(&["started no new workers", "previous upstream file restored"]);
    assert_eq!(nginx_workers(&site), workers, "nginx kept its old workers");
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    assert_eq!(
        site.containers(),
        vec![v1],
        "v2's candidate removed, v1 kept"
    );
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), "v1\n");
    drop(busy);
}

#[test]
fn a_pid_file_of_another_nginx_fails_the_switch_saying_so_and_keeps_the_old_color() {
    let mut site = Site::new();
    let other = Site::new();
    deploy_ok(&site, "v1");
    let v1 = container_name(&site, live_color(&site));
    // nginx is never seen taking the reload: the master in the pid file is not the one
    // `reload_command` reloads, so nothing says the switch happened.
    site.set(
        "nginx.pid_file",
        &format!("\"{}\"", other.dir.join("nginx/nginx.pid").display()),
    );
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(1).says(&[
        "started no new workers",
        "nginx.pid_file names another nginx",
    ]);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(site.containers(), vec![v1], "v2's candidate removed");
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn upstream_keepalive_is_written_into_the_block_and_nginx_takes_it() {
    let mut site = Site::new();
    site.set("nginx.upstream_keepalive", "16");
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");
    assert!(
        upstream(&site).contains("    keepalive 16;\n"),
        "{}",
        upstream(&site)
    );
    assert_converged(&site, "v2");
    for _ in 0..20 {
        assert_eq!(served(&site).as_deref(), Some("v2"));
    }
}

#[test]
fn the_new_color_is_probed_while_the_drain_waits_for_old_workers() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let v1_color = live_color(&site);
    let mut held = HeldRequest::start(&site);

    // flaky answers its health check with 500 from 3 s after its start: after the 1 s drain,
    // while the old worker still holds its request.
    let deploy = Spawned::start(&site, &["deploy", "flaky"], None);
    wait_until(PATIENCE, "flaky served", || {
        served(&site).as_deref() == Some("flaky")
    });
    // The upstream file first: the reload and nginx's new worker come a moment later.
    wait_until(PATIENCE, "traffic switched back to v1", || {
        live_color(&site) == v1_color && served(&site).as_deref() == Some("v1")
    });

    let answer = held.finish();
    assert!(answer.ends_with("v1\n"), "{answer}");
    let (code, stderr) = deploy.finish();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("failed probes in a row"), "{stderr}");
    assert_eq!(
        site.containers(),
        vec![container_name(&site, v1_color)],
        "flaky removed"
    );
}

/// A request nginx's worker has begun to read: the worker keeps it across a reload and
/// finishes it with the configuration it had (so a worker of the old configuration stays).
struct HeldRequest(TcpStream);

impl HeldRequest {
    /// Sends half a request and waits until the site's one worker has accepted it.
    fn start(site: &Site) -> HeldRequest {
        let workers = nginx_workers(site);
        let [worker] = workers[..] else {
            panic!("the site's nginx runs one worker: {workers:?}");
        };
        let open_files = || fs::read_dir(format!("/proc/{worker}/fd")).map_or(0, |d| d.count());
        let files = open_files();
        let mut held = TcpStream::connect(site.nginx_addr()).expect("nginx listens");
        held.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a read timeout is set");
        write!(held, "GET /version HTTP/1.1\r\nHost: held\r\n").expect("half a request is sent");
        wait_until(PATIENCE, "the worker accepted the held connection", || {
            open_files() > files
        });
        HeldRequest(held)
    }

    /// Completes the request; the whole answer.
    fn finish(&mut self) -> String {
        write!(self.0, "Connection: close\r\n\r\n").expect("the request is completed");
        let mut answer = String::new();
        self.0
            .read_to_string(&mut answer)
            .expect("the old worker answers");
        answer
    }
}
