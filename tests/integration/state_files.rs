//! The state folder against hostile or unlucky content, through the real binary: a state file
//! that is a symlink or a FIFO, a lock file naming a pid that is not a fieldtrack daemon, and
//! a daemon started while the previous one still holds the lock on its way out.
//!
//! None of this needs the test bed: every command here stops, or is stopped, before it would
//! reach Docker, whose host points at a socket that does not exist.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// What a symlinked state file must never change.
const VICTIM: &str = "root:x:0:0:victim line that must survive\n";

/// A config, a desired file and a state folder in a temp folder of their own.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    state_dir: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let config = root.join("fieldtrack.toml");
        fs::write(
            &config,
            format!(
                "app = \"statefiles\"\n\
                 repository = \"127.0.0.1:1/statefiles\"\n\
                 [nginx]\n\
                 upstream_file = \"{}\"\n\
                 [docker]\n\
                 host = \"unix://{}\"\n",
                root.join("upstream.conf").display(),
                root.join("no-docker.sock").display(),
            ),
        )
        .unwrap();
        fs::write(root.join("desired.toml"), "image = \"v1\"\n").unwrap();
        let state_dir = root.join(".fieldtrack");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&state_dir)
            .unwrap();
        Fixture {
            _dir: dir,
            root,
            config,
            state_dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = common::fieldtrack_in(&self.root);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("DOCKER_HOST")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A process group of its own: a signal meant for "the daemon" that went to group
            // 0 instead reaches this run only, never the test harness.
            .process_group(0);
        cmd
    }

    /// Runs the binary; the exit code (-1: ended by a signal) and stderr. Killed after
    /// `limit`, which fails the test.
    #[track_caller]
    fn run(&self, args: &[&str], limit: Duration) -> (i32, String) {
        let child = self.command(args).spawn().expect("the binary starts");
        let (code, stderr) = finish_within(child, limit)
            .unwrap_or_else(|| panic!("fieldtrack {args:?} did not end within {limit:?}"));
        (code, stderr)
    }

    fn lock_path(&self) -> PathBuf {
        self.state_dir.join("reconcile.lock")
    }

    /// Takes the reconcile lock from this test process and writes `line` into it as its
    /// holder line. Held until the file is dropped.
    fn hold_lock(&self, line: &str) -> File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())
            .unwrap();
        file.try_lock().expect("the lock is free");
        rewrite(&file, line);
        file
    }
}

/// Replaces the content of an open lock file with `line`.
fn rewrite(file: &File, line: &str) {
    file.set_len(0).unwrap();
    file.write_all_at(format!("{line}\n").as_bytes(), 0)
        .unwrap();
}

/// Waits for `child` up to `limit`; its exit code and stderr, or None (then it is killed).
fn finish_within(mut child: Child, limit: Duration) -> Option<(i32, String)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return Some((
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mkfifo(path: &Path) {
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
}

#[test]
fn reconcile_with_a_symlinked_lock_file_leaves_its_target_alone() {
    let fx = Fixture::new();
    let victim = fx.root.join("victim");
    fs::write(&victim, VICTIM).unwrap();
    std::os::unix::fs::symlink(&victim, fx.lock_path()).unwrap();

    let (code, stderr) = fx.run(&["reconcile"], Duration::from_secs(30));

    assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("reconcile.lock") && stderr.contains("symlink"),
        "{stderr}"
    );
}

#[test]
fn status_refuses_a_status_file_that_is_a_symlink_or_a_fifo() {
    let fx = Fixture::new();
    let status = fx.state_dir.join("status.json");
    let victim = fx.root.join("victim.json");
    fs::write(&victim, "{\"phase\": \"paused\"}\n").unwrap();
    std::os::unix::fs::symlink(&victim, &status).unwrap();

    let (code, stderr) = fx.run(&["status"], Duration::from_secs(10));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("status.json") && stderr.contains("symlink"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "{\"phase\": \"paused\"}\n"
    );

    fs::remove_file(&status).unwrap();
    mkfifo(&status);
    let (code, stderr) = fx.run(&["status"], Duration::from_secs(10));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("status.json") && stderr.contains("not a regular file"),
        "{stderr}"
    );
}

#[test]
fn reconcile_signals_no_lock_holder_that_is_not_a_fieldtrack_daemon() {
    let fx = Fixture::new();
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let lock = fx.hold_lock("another process");

    // The sleeper first: run against the old code, the cases that would signal pid 1 or
    // every process (-1) are never reached.
    for pid in [sleeper.id() as i32, 0, 1, -1] {
        rewrite(
            &lock,
            &format!("daemon pid {pid} since 2026-01-01T00:00:00Z"),
        );

        let child = fx.command(&["reconcile"]).spawn().unwrap();
        let ended = finish_within(child, Duration::from_secs(20));

        assert!(
            sleeper.try_wait().unwrap().is_none(),
            "pid {pid}: the sleep process was signalled"
        );
        let (code, stderr) = ended.expect("fieldtrack reconcile ends");
        assert_eq!(code, 1, "pid {pid}: {stderr}");
        assert!(
            stderr.contains(&format!("pid {pid}")) && stderr.contains("not signalling"),
            "pid {pid}: {stderr}"
        );
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn daemon_started_while_the_old_one_exits_waits_for_its_lock() {
    let fx = Fixture::new();
    // The previous daemon is gone (no such pid) but its lock is not released yet, as while
    // the kernel tears down a process killed with -9.
    let lock = fx.hold_lock("daemon pid 2147483000 since 2026-01-01T00:00:00Z");
    let mut daemon = fx.command(&["daemon"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(lock);

    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let text = fs::read_to_string(fx.lock_path()).unwrap_or_default();
        if text.starts_with(&format!("daemon pid {} ", daemon.id())) {
            break true;
        }
        if daemon.try_wait().unwrap().is_some() || Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let still_running = daemon.try_wait().unwrap().is_none();
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        taken && still_running,
        "the daemon did not take the lock:\n{stderr}"
    );
}

#[test]
fn daemon_beside_a_daemon_that_keeps_its_lock_gives_up_after_5s() {
    let fx = Fixture::new();
    let _lock = fx.hold_lock("daemon pid 2147483000 since 2026-01-01T00:00:00Z");
    let started = Instant::now();

    let (code, stderr) = fx.run(&["daemon"], Duration::from_secs(30));

    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("another daemon already reconciles this app"),
        "{stderr}"
    );
    assert!(started.elapsed() >= Duration::from_millis(4500));
}
