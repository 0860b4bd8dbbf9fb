//! Fault injection against the real Docker engine, registry and nginx, driven through the
//! `fieldtrack` binary: the daemon SIGKILLed at every step of an attempt, the engine and
//! the registry unreachable, a full disk, the desired file deleted under a running daemon,
//! concurrent deploys and hostile input. The shared engine and registry are never stopped:
//! the site reaches them through forwarding proxies of this file, which a test cuts and
//! re-opens. What nginx serves, what runs in Docker and the bytes of the files are the
//! observations.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::tmpfs::Tmpfs;
use crate::common::*;
use fieldtrack_testbed::util::{fnv1a, FNV_OFFSET};
use fieldtrack_testbed::{Bed, Site};

// ---------------------------------------------------------------------------------------
// SIGKILL of the daemon at each step of an attempt.

#[test]
fn sigkill_after_the_pull_then_restart_converges() {
    sigkill_at(
        "starting",
        AtKill {
            served: "v1",
            candidate: false,
            old: true,
            upstream_on_candidate: false,
        },
    );
}

#[test]
fn sigkill_after_the_candidate_started_then_restart_converges() {
    sigkill_at(
        "health",
        AtKill {
            served: "v1",
            candidate: true,
            old: true,
            upstream_on_candidate: false,
        },
    );
}

#[test]
fn sigkill_after_the_upstream_write_before_the_reload_then_restart_converges() {
    // The file already points at the candidate, but nginx was neither tested nor reloaded:
    // it still serves v1. The restarted daemon must make nginx load the file.
    sigkill_at(
        "reload",
        AtKill {
            served: "v1",
            candidate: true,
            old: true,
            upstream_on_candidate: true,
        },
    );
}

#[test]
fn sigkill_after_the_reload_before_the_drain_then_restart_converges() {
    sigkill_at(
        "draining",
        AtKill {
            served: "v2",
            candidate: true,
            old: true,
            upstream_on_candidate: true,
        },
    );
}

#[test]
fn sigkill_during_the_cleanup_then_restart_converges() {
    sigkill_at(
        "cleanup",
        AtKill {
            served: "v2",
            candidate: true,
            old: true,
            upstream_on_candidate: true,
        },
    );
}

#[test]
fn sigkill_before_the_history_write_then_restart_converges() {
    sigkill_at(
        "recording",
        AtKill {
            served: "v2",
            candidate: true,
            old: false,
            upstream_on_candidate: true,
        },
    );
}

#[test]
fn sigkill_during_the_health_gate_after_a_failed_probe_then_restart_converges() {
    // No pause point here: the daemon is killed while it probes for real. `slow` listens
    // after five seconds, so its first probes fail and leave time to kill after one.
    let site = quiet_site();
    deploy_ok(&site, "v1");
    let old = container_name(&site, live_color(&site));
    let candidate = container_name(&site, idle_color(&site));
    let daemon = Daemon::start(&site, &[]);
    daemon.wait_converged(&site, "v1");
    let upstream_before = upstream(&site);

    write_by_mv(&site, "desired.toml.tmp", &desired_text("slow"));
    daemon.wait_until(&site, "a failed probe of the slow candidate", || {
        status_opt(&site).is_some_and(|s| {
            s["desired"] == "slow"
                && s["step"] == "health"
                && s["health"]["probes"].as_u64() >= Some(1)
                && s["health"]["passed"] == false
        })
    });
    daemon.kill();

    assert_eq!(served(&site).as_deref(), Some("v1"), "killed in the gate");
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(site.containers(), sorted(vec![old, candidate]));
    assert_eq!(history(&site), "v1\n");

    let daemon = Daemon::start(&site, &[]);
    daemon.wait_converged(&site, "slow");
    assert_serving_from_a_running_container(&site, "slow");
    assert_history_valid(&site, &["slow", "v1"]);
}

/// What the world must look like at the instant the daemon is killed.
struct AtKill {
    /// What nginx serves.
    served: &'static str,
    /// The candidate container exists (running).
    candidate: bool,
    /// The old color's container still exists (running).
    old: bool,
    /// The upstream file already points at the candidate's color.
    upstream_on_candidate: bool,
}

/// v1 converged, a daemon told to pause at `point`, desired v2: the daemon pauses there, is
/// SIGKILLed, and a daemon started without the pause converges on v2 by itself.
fn sigkill_at(point: &str, at: AtKill) {
    let site = quiet_site();
    deploy_ok(&site, "v1");
    let old = container_name(&site, live_color(&site));
    let new_color = idle_color(&site);
    let candidate = container_name(&site, new_color);
    let new_port = if new_color == "blue" {
        site.blue_port
    } else {
        site.green_port
    };
    let daemon = Daemon::paused_at(&site, point);
    daemon.wait_converged(&site, "v1");

    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_log(&format!("fieldtrack: test pause at {point}"));
    // The reload is asynchronous in nginx: its new workers may take a moment.
    daemon.wait_until(&site, &format!("nginx serves {}", at.served), || {
        served(&site).as_deref() == Some(at.served)
    });
    let mut expected = Vec::new();
    if at.old {
        expected.push(old.clone());
    }
    if at.candidate {
        expected.push(candidate.clone());
    }
    assert_eq!(
        site.containers(),
        sorted(expected),
        "containers at {point}\n{}",
        daemon.report(&site)
    );
    assert_eq!(
        upstream_port(&site) == new_port,
        at.upstream_on_candidate,
        "upstream file at {point}:\n{}",
        upstream(&site)
    );
    assert_eq!(
        history(&site),
        "v1\n",
        "no history line before a full success"
    );
    let candidate_id = at.candidate.then(|| container_id(&site, &candidate));
    daemon.kill();

    let daemon = Daemon::start(&site, &[]);
    daemon.wait_converged(&site, "v2");
    assert_serving_from_a_running_container(&site, "v2");
    assert_eq!(
        live_color(&site),
        new_color,
        "v2 went live in its candidate color"
    );
    if let Some(id) = candidate_id {
        assert_eq!(
            container_id(&site, &candidate),
            id,
            "the candidate that ran was kept, no other one started"
        );
    }
    assert_history_valid(&site, &["v2", "v1"]);
    // A converged daemon stays converged: nothing is redone on the next event.
    let id = container_id(&site, &candidate);
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    thread::sleep(Duration::from_millis(1500));
    daemon.wait_converged(&site, "v2");
    assert_eq!(container_id(&site, &candidate), id);
    assert_history_valid(&site, &["v2", "v1"]);
}

// ---------------------------------------------------------------------------------------
// The Docker engine unreachable.

#[test]
fn engine_gone_during_an_attempt_is_reported_retried_with_backoff_and_converges_once_back() {
    // Closed listener, live connections cut: what a stopped dockerd leaves behind (a socket
    // file nobody listens on). Connects are refused by the kernel, so the retries are
    // counted in the daemon's log.
    let (site, mut proxy, daemon) = engine_behind_a_proxy();
    let before = Production::of(&site);

    proxy.cut();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_until(&site, "status says the engine is unreachable", || {
        status_opt(&site).is_some_and(|s| names_the_engine_unreachable(&s))
    });
    let retries_before = daemon.log().matches("transient error").count();
    let window = Duration::from_secs(10);
    let until = Instant::now() + window;
    while Instant::now() < until {
        before.assert_unchanged(&site, &daemon);
        thread::sleep(Duration::from_millis(200));
    }
    let retries = daemon.log().matches("transient error").count() - retries_before;
    eprintln!("{retries} retries in {window:?} with the engine gone");
    assert!(
        (1..=8).contains(&retries),
        "{retries} retries in {window:?}: expected a few, with backoff\n{}",
        daemon.report(&site)
    );
    let status = status(&site);
    assert!(names_the_engine_unreachable(&status), "{status:#}");
    assert_unobserved_status_keeps_the_last_truth(&site, &status);
    assert_eq!(history(&site), "v1\n");

    proxy.reopen();
    daemon.wait_converged(&site, "v2");
    assert_serving_from_a_running_container(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

#[test]
fn engine_hanging_up_on_every_connection_is_retried_with_backoff_not_in_a_busy_loop() {
    // While cut, the socket path answers every connect by hanging up at once, so the
    // attempts to reach the engine can be counted on the proxy itself.
    let (site, mut proxy, daemon) = engine_behind_a_proxy();
    let before = Production::of(&site);

    proxy.cut_hanging_up();
    let accepted_before = proxy.accepted();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    let window = Duration::from_secs(10);
    let until = Instant::now() + window;
    while Instant::now() < until {
        before.assert_unchanged(&site, &daemon);
        thread::sleep(Duration::from_millis(200));
    }
    let attempts = proxy.accepted() - accepted_before;
    eprintln!("{attempts} connection attempts in {window:?} with the engine hanging up");
    assert!(
        (1..=30).contains(&attempts),
        "{attempts} connection attempts to the engine in {window:?}: expected a few, with \
         backoff\n{}",
        daemon.report(&site)
    );
    let status = status(&site);
    assert!(names_the_engine_unreachable(&status), "{status:#}");
    assert_unobserved_status_keeps_the_last_truth(&site, &status);
    assert_eq!(history(&site), "v1\n");

    proxy.reopen();
    daemon.wait_converged(&site, "v2");
    assert_serving_from_a_running_container(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

/// A site whose `docker.host` is a proxy to the bed's engine, and its daemon converged on v1.
fn engine_behind_a_proxy() -> (Site, Proxy, Daemon) {
    let mut site = quiet_site();
    let engine = Bed::shared()
        .docker_host
        .strip_prefix("unix://")
        .unwrap_or_else(|| panic!("the bed's engine is on a unix socket"))
        .to_string();
    let path = site.dir.join("engine.sock");
    let proxy = Proxy::start(
        Endpoint::Unix(path.clone()),
        Endpoint::Unix(PathBuf::from(engine)),
    );
    site.set("docker.host", &format!("\"unix://{}\"", path.display()));
    let daemon = Daemon::on(&site, "v1");
    (site, proxy, daemon)
}

/// While the engine cannot be asked, the status still names the desired generation and the
/// live color last observed, and does not mark the generation failed.
#[track_caller]
fn assert_unobserved_status_keeps_the_last_truth(site: &Site, status: &serde_json::Value) {
    let generation = generation_of(&bytes(&site.desired_file).unwrap());
    assert_eq!(status["generation"], generation.as_str(), "{status:#}");
    assert_eq!(status["live"]["image"], site.image("v1"), "{status:#}");
    assert!(status["failed_generation"].is_null(), "{status:#}");
}

fn names_the_engine_unreachable(status: &serde_json::Value) -> bool {
    let message = status["message"].as_str().unwrap_or_default();
    status["desired"] == "v2"
        && message.contains("docker engine at unix://")
        && message.contains("is unreachable")
}

// ---------------------------------------------------------------------------------------
// The registry unreachable.

#[test]
fn registry_down_during_a_pull_is_reported_retried_with_backoff_and_converges_once_back() {
    let bed = Bed::shared();
    let mut site = quiet_site();
    let port = free_port();
    let registry: SocketAddr = bed.registry.parse().expect("the registry is ip:port");
    let mut proxy = Proxy::start(
        Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
        Endpoint::Tcp(registry),
    );
    // A repository reachable only through the proxy: pulling from it needs the proxy.
    let repository = format!("127.0.0.1:{port}/fieldtrack-test/{}", site.app);
    let _images = LocalTags::push(&site, &repository, &["v1", "v2"]);
    site.set("repository", &format!("\"{repository}\""));
    site.repository = repository.clone();
    let daemon = Daemon::on(&site, "v1");
    let before = Production::of(&site);
    let attempts_before = audit(&site).len();

    proxy.cut();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_until(&site, "status says the registry is unreachable", || {
        status_opt(&site).is_some_and(|s| {
            let message = s["message"].as_str().unwrap_or_default();
            s["desired"] == "v2"
                && message.contains(&format!("registry for {repository}:v2 is unreachable"))
        })
    });
    let window = Duration::from_secs(10);
    let until = Instant::now() + window;
    while Instant::now() < until {
        before.assert_unchanged(&site, &daemon);
        thread::sleep(Duration::from_millis(200));
    }
    // Every attempt is audited, a transient failure too.
    let attempts = audit(&site)[attempts_before..].to_vec();
    eprintln!(
        "{} pull attempts in about {window:?} with the registry down",
        attempts.len()
    );
    assert!(
        (2..=8).contains(&attempts.len()),
        "{} attempts: expected a few, with backoff\n{}",
        attempts.len(),
        daemon.report(&site)
    );
    for record in &attempts {
        assert_eq!(record["image"], "v2", "{record:#}");
        assert_eq!(record["outcome"], "failed", "{record:#}");
        assert!(
            record["message"]
                .as_str()
                .is_some_and(|m| m.contains("is unreachable")),
            "{record:#}"
        );
    }
    let status = status(&site);
    assert_eq!(status["live"]["image"], site.image("v1"), "{status:#}");
    assert!(
        status["failed_generation"].is_null(),
        "a transient error does not mark the generation failed: {status:#}"
    );

    proxy.reopen();
    daemon.wait_converged(&site, "v2");
    assert_serving_from_a_running_container(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

/// A registry that answers 503 (up, but failing) is retried with backoff like one that is
/// down: the generation is not marked failed, and once the registry answers again the
/// deployment converges without a change to the desired file.
#[test]
fn registry_answering_503_is_retried_with_backoff_and_converges_once_it_answers() {
    let bed = Bed::shared();
    let mut site = quiet_site();
    let port = free_port();
    let registry: SocketAddr = bed.registry.parse().expect("the registry is ip:port");
    let mut proxy = Proxy::start(
        Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
        Endpoint::Tcp(registry),
    );
    let repository = format!("127.0.0.1:{port}/fieldtrack-test/{}", site.app);
    let _images = LocalTags::push(&site, &repository, &["v1", "v2"]);
    site.set("repository", &format!("\"{repository}\""));
    site.repository = repository.clone();
    let daemon = Daemon::on(&site, "v1");
    let before = Production::of(&site);
    let attempts_before = audit(&site).len();

    proxy.cut_answering_503();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_until(&site, "status names the registry's 503", || {
        status_opt(&site).is_some_and(|s| {
            let message = s["message"].as_str().unwrap_or_default();
            s["desired"] == "v2" && message.contains("503 Service Unavailable")
        })
    });
    let first = status(&site);
    assert!(
        first["failed_generation"].is_null(),
        "a registry's 503 does not mark the generation failed: {first:#}"
    );
    // Another attempt after the first: retried, not waiting for a change.
    daemon.wait_until(&site, "a second pull attempt", || {
        audit(&site).len() >= attempts_before + 2
    });
    before.assert_unchanged(&site, &daemon);
    let status = status(&site);
    assert!(status["failed_generation"].is_null(), "{status:#}");
    assert_eq!(status["live"]["image"], site.image("v1"), "{status:#}");

    proxy.reopen();
    daemon.wait_converged(&site, "v2");
    assert_serving_from_a_running_container(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

// ---------------------------------------------------------------------------------------
// A full disk.

#[test]
fn full_state_folder_refuses_the_deploy_at_the_lock_and_keeps_every_file_intact() {
    let Some((site, disk)) = site_with_state_on_a_tmpfs() else {
        return;
    };
    deploy_ok(&site, "v1");
    let files = StateFiles::of(&site);

    let filler = disk.fill();
    let run = ft(&site, &["deploy", "v2"]);

    // `deploy` takes the lock before it writes the desired file (not on the full disk): it
    // cannot write its name into the lock file and stops there, before writing anything.
    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "failed to lock {}: No space left on device",
            site.state_dir.join("reconcile.lock").display()
        )),
        "a clear error names the file and the full disk:\n{}",
        run.stderr
    );
    files.assert_intact(&site, &filler);
    assert_eq!(
        desired_image(&site).as_deref(),
        Some("v1"),
        "a deploy that failed is not left in the desired file"
    );

    // Space back: the same deploy goes through.
    fs::remove_file(&filler).unwrap();
    deploy_ok(&site, "v2");
    assert_converged(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

#[test]
fn full_state_folder_under_the_daemon_fails_the_pass_before_any_change() {
    let Some((site, disk)) = site_with_state_on_a_tmpfs() else {
        return;
    };
    // The daemon took the lock (and wrote its name in it) while there was room.
    let daemon = Daemon::on(&site, "v1");
    // Blank lines, which readers skip, so that the next record cannot fit in the log's last
    // page: its append must fail part way.
    let audit_file = site.state_dir.join("audit.jsonl");
    let len = fs::metadata(&audit_file).unwrap().len() as usize;
    let mut log = OpenOptions::new().append(true).open(&audit_file).unwrap();
    log.write_all(&vec![b'\n'; 4096 - 64 - len % 4096]).unwrap();
    drop(log);
    let files = StateFiles::of(&site);

    let filler = disk.fill();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));

    // Observed: the pass's first state write fails (the journal, written before each
    // status), before anything is touched; the daemon says so in its log (the status cannot
    // say it) and waits for a change or a request.
    let error = format!(
        "failed to write the journal {}: No space left on device",
        site.state_dir.join("journal.json").display()
    );
    daemon.wait_until(&site, "the daemon logs the failed status write", || {
        daemon.log().contains(&error)
    });
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        files.assert_intact(&site, &filler);
        thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.running(), "the daemon keeps running");

    // Space back: a reconcile asked for by hand converges.
    fs::remove_file(&filler).unwrap();
    ft(&site, &["reconcile"]).expect_code(0);
    daemon.wait_converged(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

/// A site whose state folder and history file live on a 64 KiB tmpfs.
fn site_with_state_on_a_tmpfs() -> Option<(Site, Tmpfs)> {
    let mut site = quiet_site();
    let dir = site.dir.join("state");
    let disk = Tmpfs::mount(&dir, "64k")?;
    site.set("state_dir", "\"state\"");
    site.set("history_file", "\"state/.deploy_history\"");
    site.state_dir = dir.clone();
    site.history_file = dir.join(".deploy_history");
    Some((site, disk))
}

/// Production and the bytes of every file in the state folder, to check a failure changed
/// none of them.
struct StateFiles {
    production: Production,
    files: Vec<(String, Option<Vec<u8>>)>,
}

impl StateFiles {
    fn of(site: &Site) -> StateFiles {
        let files = entries(&site.state_dir)
            .into_iter()
            .map(|name| {
                let content = bytes(&site.state_dir.join(&name));
                (name, content)
            })
            .collect();
        StateFiles {
            production: Production::of(site),
            files,
        }
    }

    /// Nothing changed but the filler, and no temp file was left behind. The audit log may
    /// only have gained whole lines, each a JSON object.
    #[track_caller]
    fn assert_intact(&self, site: &Site, filler: &Path) {
        self.production.assert_same(site);
        let mut now = StateFiles::of(site).files;
        now.retain(|(name, _)| site.state_dir.join(name) != filler);
        for ((name, before), (now_name, after)) in self.files.iter().zip(&now) {
            assert_eq!(name, now_name);
            if name == "audit.jsonl" {
                let (before, after) = (before.as_deref().unwrap(), after.as_deref().unwrap());
                assert!(after.starts_with(before), "the audit log was rewritten");
                let added = String::from_utf8_lossy(&after[before.len()..]).into_owned();
                assert!(
                    added.is_empty() || added.ends_with('\n'),
                    "a torn line in the audit log: {added:?}"
                );
                for line in added.lines() {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("a torn audit line ({e}): {line:?}"));
                }
                continue;
            }
            assert!(
                before == after,
                "{name} changed:\n{}\nwas:\n{}",
                String::from_utf8_lossy(after.as_deref().unwrap_or_default()),
                String::from_utf8_lossy(before.as_deref().unwrap_or_default())
            );
        }
        assert_eq!(
            now.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            self.files.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "the same files, no temp file left behind"
        );
        let status = status(site);
        assert_eq!(status["phase"], "converged", "{status:#}");
        assert_eq!(status["desired"], "v1", "{status:#}");
    }
}

#[test]
fn full_disk_at_the_history_write_keeps_the_old_history_and_reports_the_switch() {
    let mut site = Site::new();
    let dir = site.dir.join("history");
    let Some(disk) = Tmpfs::mount(&dir, "16k") else {
        return;
    };
    site.set("history_file", "\"history/.deploy_history\"");
    site.history_file = dir.join(".deploy_history");
    deploy_ok(&site, "v1");
    let old = container_name(&site, live_color(&site));
    let new = container_name(&site, idle_color(&site));
    let history_before = bytes(&site.history_file).expect("the history file");

    let filler = disk.fill();
    let run = ft(&site, &["deploy", "v2"]);

    // Observed: the attempt runs to its end (switch, drain, old color removed) and only the
    // history write fails. Production is consistently switched: nginx, the status and
    // Docker all say v2; the history is the old one, byte for byte.
    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "failed to write history file {}",
            site.history_file.display()
        )) && run.stderr.contains("No space left on device"),
        "a clear error names the file and the full disk:\n{}",
        run.stderr
    );
    assert!(bytes(&site.history_file).as_ref() == Some(&history_before));
    assert_eq!(
        entries(&dir),
        BTreeSet::from([".deploy_history".to_string(), "filler".to_string()]),
        "no temp file left behind"
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(site.containers(), vec![new.clone()]);
    assert_ne!(old, new);
    assert_serving_from_a_running_container(&site, "v2");
    let status = status(&site);
    assert_eq!(status["phase"], "failed", "{status:#}");
    assert_eq!(status["desired"], "v2", "{status:#}");
    assert_eq!(status["live"]["image"], site.image("v2"), "{status:#}");
    assert_eq!(status["live"]["container"], new.as_str(), "{status:#}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("No space left on device")),
        "{status:#}"
    );

    // Space back: a reconcile by hand records what is live, nothing is redeployed.
    fs::remove_file(&filler).unwrap();
    let id = container_id(&site, &new);
    ft(&site, &["reconcile"]).expect_code(0);
    assert_converged(&site, "v2");
    assert_eq!(container_id(&site, &new), id);
    assert_history_valid(&site, &["v2", "v1"]);
}

#[test]
fn a_disk_full_after_the_switch_under_the_daemon_leaves_the_image_live_and_records_it_later() {
    let mut site = quiet_site();
    let dir = site.dir.join("history");
    let Some(disk) = Tmpfs::mount(&dir, "16k") else {
        return;
    };
    site.set("history_file", "\"history/.deploy_history\"");
    site.history_file = dir.join(".deploy_history");
    let daemon = Daemon::on(&site, "v1");
    let new = container_name(&site, idle_color(&site));

    // The disk holding the history fills up; the daemon then switches to v2 and cannot
    // write the history after the switch.
    let filler = disk.fill();
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_until(&site, "the history write fails after the switch", || {
        status_opt(&site).is_some_and(|s| {
            s["message"]
                .as_str()
                .is_some_and(|m| m.contains("No space left on device"))
        })
    });

    // The image serves and its generation is not marked failed.
    assert_eq!(served(&site).as_deref(), Some("v2"));
    let status = status(&site);
    assert!(status["failed_generation"].is_null(), "{status:#}");
    assert_eq!(status["live"]["container"], new.as_str(), "{status:#}");

    // Space back: the daemon's own retry records v2, with no request and no redeploy.
    let id = container_id(&site, &new);
    fs::remove_file(&filler).unwrap();
    daemon.wait_until(&site, "the daemon records v2 in the history", || {
        history(&site) == "v2\nv1\n"
    });
    daemon.wait_converged(&site, "v2");
    assert_eq!(container_id(&site, &new), id);
    assert_history_valid(&site, &["v2", "v1"]);
    drop(daemon);
    drop(disk);
}

// ---------------------------------------------------------------------------------------
// The desired file deleted under a running daemon.

#[test]
fn desired_file_deleted_under_the_daemon_is_reported_missing_and_production_is_unchanged() {
    let site = quiet_site();
    let daemon = Daemon::on(&site, "v1");
    let before = Production::of(&site);

    fs::remove_file(&site.desired_file).unwrap();

    daemon.wait_until(&site, "status says invalid", || {
        status_opt(&site).is_some_and(|s| s["phase"] == "invalid")
    });
    let status = status(&site);
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&site.desired_file.display().to_string())
            && (message.contains("No such file or directory") || message.contains("missing")),
        "the message names the file and says it is missing: {status:#}"
    );
    assert_eq!(status["live"]["image"], site.image("v1"), "{status:#}");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        before.assert_unchanged(&site, &daemon);
        thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.running(), "the daemon keeps running");

    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_converged(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

// ---------------------------------------------------------------------------------------
// Concurrent deploys.

#[test]
fn ten_concurrent_deploys_end_with_one_winner_and_a_consistent_world() {
    let site = Site::new();
    let tags = [
        "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "ready1s",
    ];
    let children: Vec<(&str, Child)> = tags
        .iter()
        .map(|tag| {
            let child = command(&site, &["deploy", tag])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("deploy starts");
            (*tag, child)
        })
        .collect();
    let runs: Vec<(&str, Run)> = children
        .into_iter()
        .map(|(tag, child)| (tag, finish(child, Duration::from_secs(600))))
        .collect();
    let shown: String = runs
        .iter()
        .inspect(|(tag, run)| eprintln!("deploy {tag}: exit {}", run.code))
        .map(|(tag, run)| format!("--- deploy {tag}: exit {}\n{}", run.code, run.stderr))
        .collect();

    for (tag, run) in &runs {
        assert!(
            run.code == 0 || run.code == 1,
            "deploy {tag} ended with {}\n{shown}",
            run.code
        );
    }
    let winner = desired_image(&site).expect("the desired file names an image");
    let generation = generation_of(&bytes(&site.desired_file).unwrap());
    let (_, winner_run) = runs
        .iter()
        .find(|(tag, _)| *tag == winner)
        .unwrap_or_else(|| panic!("the desired file names {winner}, no deploy asked for it"));
    assert_eq!(
        winner_run.code, 0,
        "the deploy whose generation won succeeds\n{shown}"
    );
    assert!(
        winner_run
            .stderr
            .contains(&format!("(generation {generation})")),
        "the desired file holds the winner's own generation\n{shown}"
    );
    for (tag, run) in runs.iter().filter(|(tag, _)| *tag != winner) {
        if run.code == 1 {
            assert!(
                run.stderr.contains("superseded"),
                "deploy {tag} failed for another reason than being superseded\n{shown}"
            );
        }
    }
    assert_eq!(served(&site).as_deref(), Some(winner.as_str()), "{shown}");
    assert_converged(&site, &winner);
    let status = status(&site);
    assert_eq!(
        status["generation"],
        generation.as_str(),
        "{status:#}\n{shown}"
    );
    assert_serving_from_a_running_container(&site, &winner);
    assert_eq!(
        site.containers(),
        vec![container_name(&site, live_color(&site))],
        "no container besides the live one\n{shown}"
    );
    let history = history(&site);
    assert_eq!(
        history.lines().next(),
        Some(winner.as_str()),
        "the history starts with the winner\n{shown}"
    );
    assert_history_lines_valid(&history, 5);
    // Every deploy that said it converged did, in turn: the history names exactly those.
    let succeeded: BTreeSet<&str> = runs
        .iter()
        .filter(|(_, run)| run.code == 0)
        .map(|(tag, _)| *tag)
        .collect();
    let recorded: BTreeSet<&str> = history.lines().collect();
    if succeeded.len() <= 5 {
        assert_eq!(recorded, succeeded, "{history}\n{shown}");
    } else {
        assert!(recorded.is_subset(&succeeded), "{history}\n{shown}");
    }
}

// ---------------------------------------------------------------------------------------
// Hostile input.

#[test]
fn desired_file_of_10_mb_is_refused_and_nothing_changes() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let mut huge = desired_text("v2").into_bytes();
    huge.extend(std::iter::repeat_n(b'#', 10 * 1024 * 1024));
    hostile_desired_file(&site, &huge, &["larger than"]);
}

#[test]
fn desired_file_of_binary_junk_is_refused_and_nothing_changes() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    // Random bytes with NULs, and 0xff (never valid UTF-8) at both ends.
    let mut junk = vec![0xff, 0x00];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        junk.push((x >> 24) as u8);
    }
    junk.extend_from_slice(&[0x00, 0xff]);
    hostile_desired_file(&site, &junk, &["not valid UTF-8"]);
    // NULs in otherwise valid UTF-8.
    hostile_desired_file(
        &site,
        b"image = \"v2\0\"\n\0\0\0",
        &["desired.toml", "not valid TOML", "line 1, column 12"],
    );
}

#[test]
fn desired_file_in_a_symlink_loop_is_refused_and_nothing_changes() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let before = Production::of(&site);
    let loop_link = site.dir.join("loop");
    fs::remove_file(&site.desired_file).unwrap();
    symlink("loop", &site.desired_file).unwrap();
    symlink("desired.toml", &loop_link).unwrap();

    // Observed: `reconcile` reads the file, which is invalid input (2); `deploy` cannot
    // inspect the file it is to replace, an operation that failed (1). Neither writes.
    for (args, code) in [(&["reconcile"][..], 2), (&["deploy", "v2"][..], 1)] {
        let run = ft(&site, args);
        eprintln!(
            "{args:?} with a symlink loop: exit {}\n{}",
            run.code, run.stderr
        );
        run.expect_code(code);
        assert!(
            run.stderr.contains("desired.toml")
                && run.stderr.contains("Too many levels of symbolic links"),
            "{args:?}: the error names the file and the loop:\n{}",
            run.stderr
        );
        before.assert_same(&site);
        assert!(
            fs::symlink_metadata(&site.desired_file).is_ok_and(|m| m.file_type().is_symlink()),
            "{args:?} replaced the symlink"
        );
    }
}

#[test]
fn tags_with_shell_metacharacters_are_refused_and_run_nothing() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let before = Production::of(&site);
    let marker = site.dir.join("pwned");
    let m = marker.display().to_string();
    let tags = [
        format!("v1;touch {m}"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("v1 && touch {m}"),
        format!("v1|touch {m}"),
        format!("v1\ntouch {m}"),
        "v1'\"".to_string(),
        "../../v1".to_string(),
    ];
    for tag in &tags {
        let run = ft(&site, &["deploy", tag]);
        run.expect_code(2);
        let quoted = format!("{tag:?}");
        assert!(
            run.stderr.contains(tag.as_str()) || run.stderr.contains(&quoted),
            "the error names the value {quoted}:\n{}",
            run.stderr
        );
        before.assert_same(&site);
        assert!(!marker.exists(), "{tag:?} ran a command");

        // The same value written into the desired file by hand.
        let text = format!("image = {}\n", toml_string(tag));
        hostile_desired_file(&site, text.as_bytes(), &["image"]);
        assert!(!marker.exists(), "{tag:?} ran a command");
    }
}

#[test]
fn config_whose_two_ports_collide_is_refused_and_nothing_changes() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let before = Production::of(&site);

    site.set("container.green_port", &site.blue_port.to_string());
    for args in [&["deploy", "v2"][..], &["reconcile"][..], &["daemon"][..]] {
        let run = ft(&site, args);
        run.expect_code(2);
        assert!(
            run.stderr.contains(&format!(
                "container.green_port: invalid value {}: must differ from container.blue_port",
                site.blue_port
            )),
            "{args:?}: the error names the key, the value and the rule:\n{}",
            run.stderr
        );
        before.assert_same(&site);
    }
}

#[test]
fn port_of_the_idle_color_in_use_by_another_process_fails_the_deploy_clearly() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    // The first deployment went to green (the operator's placeholder points at blue): the
    // next candidate goes to blue.
    assert_eq!(live_color(&site), "green");
    let squatter =
        TcpListener::bind(("127.0.0.1", site.blue_port)).expect("the blue port is free to take");
    let before = Production::of(&site);

    let run = ft(&site, &["deploy", "v2"]);

    // Observed: `deploy` has no port check of its own; the engine refuses to publish the
    // port when the candidate starts, and the attempt fails with the engine's words.
    eprintln!("deploy with the blue port taken:\n{}", run.stderr);
    run.expect_code(1);
    let port = site.blue_port.to_string();
    assert!(
        run.stderr.contains(&format!("{}-blue", site.app))
            && run.stderr.contains(&port)
            && (run.stderr.contains("address already in use")
                || run.stderr.contains("port is already allocated")),
        "a clear error names the container and the port in use:\n{}",
        run.stderr
    );
    before.assert_same(&site);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    // `check` names the culprit before any deploy is tried.
    let check = ft(&site, &["check"]);
    assert!(
        check.stdout.contains(&format!("127.0.0.1:{port} is taken"))
            || check.stderr.contains(&format!("127.0.0.1:{port} is taken")),
        "check says the port is taken:\n{}\n{}",
        check.stdout,
        check.stderr
    );
    drop(squatter);

    deploy_ok(&site, "v2");
    assert_history_valid(&site, &["v2", "v1"]);
}

/// Writes `content` as the desired file: `reconcile` refuses it with exit 2 and an error
/// containing every one of `words`, and nothing changes. The good file is put back after.
#[track_caller]
fn hostile_desired_file(site: &Site, content: &[u8], words: &[&str]) {
    let before = Production::of(site);
    let good = bytes(&site.desired_file);
    let temp = site.dir.join("desired.toml.tmp");
    write_new(&temp, content);
    fs::rename(&temp, &site.desired_file).unwrap();

    let run = ft(site, &["reconcile"]);

    eprintln!("reconcile with a hostile desired file:\n{}", run.stderr);
    run.expect_code(2);
    for word in words {
        assert!(
            run.stderr.contains(word),
            "the error says {word:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr.len() < 4096,
        "the error is short, not an echo of the file: {} bytes",
        run.stderr.len()
    );
    before.assert_same(site);
    assert!(
        bytes(&site.desired_file).as_deref() == Some(content),
        "the desired file was rewritten"
    );
    let status = status(site);
    assert_eq!(status["phase"], "invalid", "{status:#}");
    match good {
        Some(good) => {
            write_new(&temp, &good);
            fs::rename(&temp, &site.desired_file).unwrap();
        }
        None => fs::remove_file(&site.desired_file).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Helpers of this file.

/// nginx serves TAG from the container the upstream file points at, which is running.
#[track_caller]
fn assert_serving_from_a_running_container(site: &Site, tag: &str) {
    assert_eq!(served(site).as_deref(), Some(tag));
    let name = container_name(site, live_color(site));
    let out = site
        .docker()
        .args([
            "inspect",
            "--format",
            "{{.State.Running}} {{index .Config.Labels \"fieldtrack.image\"}}",
            &name,
        ])
        .output()
        .expect("docker runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("true {}", site.image(tag)),
        "{name} runs {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The history is valid and starts with `head`, in that order.
#[track_caller]
fn assert_history_valid(site: &Site, head: &[&str]) {
    let text = history(site);
    assert_history_lines_valid(&text, 5);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.starts_with(head),
        "history starts with {head:?}:\n{text}"
    );
}

/// Distinct non-empty lines without spaces, at most `limit`, a newline after the last.
#[track_caller]
fn assert_history_lines_valid(text: &str, limit: usize) {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "history ends with a newline: {text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() <= limit, "at most {limit} lines: {text:?}");
    assert!(
        lines
            .iter()
            .all(|l| !l.is_empty() && !l.contains(char::is_whitespace)),
        "one image a line: {text:?}"
    );
    let distinct: BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(distinct.len(), lines.len(), "distinct lines: {text:?}");
}

/// The `image` the desired file names, None when it names none.
fn desired_image(site: &Site) -> Option<String> {
    desired(site)?.lines().find_map(|line| {
        let value = line.strip_prefix("image = \"")?;
        Some(value.strip_suffix('"')?.to_string())
    })
}

/// The generation of a desired file's bytes, as fieldtrack computes it (FNV-1a, 64 bits).
fn generation_of(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(FNV_OFFSET, bytes))
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The names in a folder.
fn entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn free_port() -> u16 {
    fieldtrack_testbed::util::free_ports(1).expect("a free port")[0]
}

/// Waits for a spawned run to end within `limit` (killing it after), with its output.
#[track_caller]
fn finish(mut child: Child, limit: Duration) -> Run {
    let started = Instant::now();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited on") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a run did not end within {limit:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        duration: started.elapsed(),
    }
}

/// Tags of the bed's images copied into another repository (through whatever address it
/// names); the local tags are removed again at once, so that a deploy must pull, and once
/// more when dropped (a deployment pulls them back).
struct LocalTags {
    site_docker: Vec<String>,
    docker_host: String,
}

impl LocalTags {
    fn push(site: &Site, repository: &str, tags: &[&str]) -> LocalTags {
        let docker = |args: &[&str]| {
            let out = site.docker().args(args).output().expect("docker runs");
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mut names = Vec::new();
        for tag in tags {
            let (from, to) = (site.image(tag), format!("{repository}:{tag}"));
            docker(&["pull", "-q", &from]);
            docker(&["tag", &from, &to]);
            docker(&["push", "-q", &to]);
            docker(&["rmi", &to]);
            names.push(to);
        }
        LocalTags {
            site_docker: names,
            docker_host: Bed::shared().docker_host.clone(),
        }
    }
}

impl Drop for LocalTags {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", &self.docker_host)
            .arg("rmi")
            .args(&self.site_docker)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Where a proxy listens or forwards to.
#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// What a proxy does with the connections it accepts.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Forward,
    /// Close each one at once, unanswered: an engine that cannot be talked to, whose
    /// connection attempts can still be counted (a refused connect never reaches us).
    HangUp,
    /// Answer every HTTP request `503 Service Unavailable` with a `Retry-After`: a
    /// registry that is up but failing.
    Unavailable,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Endpoint {
    fn bind(&self) -> Listener {
        match self {
            Endpoint::Unix(path) => {
                // A closed listener leaves its socket file behind, as a stopped dockerd does.
                let _ = fs::remove_file(path);
                Listener::Unix(UnixListener::bind(path).expect("the proxy socket binds"))
            }
            Endpoint::Tcp(addr) => {
                Listener::Tcp(TcpListener::bind(addr).expect("the proxy port binds"))
            }
        }
    }

    fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Endpoint::Tcp(addr) => TcpStream::connect(addr).map(Stream::Tcp),
        }
    }
}

impl Listener {
    fn set_nonblocking(&self) {
        match self {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
        .expect("the listener goes non-blocking");
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        }
    }
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
        }
    }

    fn blocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(false),
            Stream::Tcp(s) => s.set_nonblocking(false),
        }
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A forwarding proxy: each connection accepted on `listen` is joined to a new connection
/// to `target` by two threads copying both ways. `cut` closes the listener and every live
/// connection; `reopen` listens again on the same address.
struct Proxy {
    listen: Endpoint,
    target: Endpoint,
    /// Connections accepted so far, in every mode.
    accepted: Arc<AtomicUsize>,
    /// Both ends of every forwarded connection, to shut them down on a cut.
    live: Arc<Mutex<Vec<Stream>>>,
    /// The running accept loop: its stop flag and thread.
    acceptor: Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>,
}

impl Proxy {
    fn start(listen: Endpoint, target: Endpoint) -> Proxy {
        let mut proxy = Proxy {
            listen,
            target,
            accepted: Arc::new(AtomicUsize::new(0)),
            live: Arc::new(Mutex::new(Vec::new())),
            acceptor: None,
        };
        proxy.serve(Mode::Forward);
        proxy
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every live connection.
    fn cut(&mut self) {
        if let Some((stop, thread)) = self.acceptor.take() {
            stop.store(true, Ordering::SeqCst);
            thread.join().expect("the accept loop ends");
        }
        for stream in self.live.lock().unwrap().drain(..) {
            stream.shutdown(Shutdown::Both);
        }
    }

    /// Cuts, then hangs up on every new connection (counted) until [`Proxy::reopen`].
    fn cut_hanging_up(&mut self) {
        self.cut();
        self.serve(Mode::HangUp);
    }

    /// Cuts, then answers every request 503 until [`Proxy::reopen`].
    fn cut_answering_503(&mut self) {
        self.cut();
        self.serve(Mode::Unavailable);
    }

    /// Forwards again, on the same address.
    fn reopen(&mut self) {
        self.cut();
        self.serve(Mode::Forward);
    }

    fn serve(&mut self, mode: Mode) {
        let listener = self.listen.bind();
        listener.set_nonblocking();
        let stop = Arc::new(AtomicBool::new(false));
        let (accepted, live, target) = (
            self.accepted.clone(),
            self.live.clone(),
            self.target.clone(),
        );
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            // The listener is dropped (closed) when this loop ends.
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(client) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        match mode {
                            Mode::Forward => forward(client, &target, &live),
                            Mode::Unavailable => answer_unavailable(client),
                            Mode::HangUp => {}
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.acceptor = Some((stop, thread));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        if let Endpoint::Unix(path) = &self.listen {
            let _ = fs::remove_file(path);
        }
    }
}

/// Joins `client` to a new connection to `target`; a target that cannot be reached closes
/// the client.
fn forward(client: Stream, target: &Endpoint, live: &Mutex<Vec<Stream>>) {
    let Ok(server) = target.connect() else {
        return;
    };
    let clones = (|| {
        client.blocking()?;
        Ok::<_, io::Error>((
            client.try_clone()?,
            server.try_clone()?,
            client.try_clone()?,
            server.try_clone()?,
        ))
    })();
    let Ok((client_in, server_in, client_kept, server_kept)) = clones else {
        return;
    };
    live.lock().unwrap().extend([client_kept, server_kept]);
    pump(client_in, server);
    pump(server_in, client);
}

/// Answers each request on `client` 503 on a thread, until the client closes.
fn answer_unavailable(mut client: Stream) {
    thread::spawn(move || {
        if client.blocking().is_err() {
            return;
        }
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = client.read(&mut buf) {
            request.extend_from_slice(&buf[..n]);
            // Requests without a body (GET, HEAD: what a pull sends) end at a blank line.
            while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                request.drain(..end + 4);
                let body = "registry unavailable";
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
                     Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
}

/// Copies `from` into `to` on a thread, then half-closes `to`.
fn pump(mut from: Stream, mut to: Stream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        to.shutdown(Shutdown::Write);
    });
}
