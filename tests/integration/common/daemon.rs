//! `fieldtrack daemon` run by a test: started on a site, its stderr in a file the test reads
//! at any time (a log line may come long after the line before it), waited on with
//! deadlines that say what they waited for and show the daemon's log and the site's state,
//! and killed when the test ends, also when it fails.
//!
//! A command the test follows line by line as it runs (`deploy`, a daemon whose lines are
//! read in order) is a [`super::Spawned`] instead.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fieldtrack_testbed::{procfs, util, Site};

use super::{
    assert_converged, command, container_name, converged_on, desired_text, live_color, send_signal,
    served, status_opt, wait_for_or, write_by_mv,
};

/// How long the daemon gets for anything it must do (pull, start, health gate, drain), also
/// with the engine cut and back, on a machine busy with other tests.
pub const DAEMON_WAIT: Duration = Duration::from_secs(90);

/// A running `fieldtrack daemon`, its stderr going to a file in the site folder. Dropping it
/// SIGKILLs the process, so a failed test leaves nothing running.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Writes `image = "TAG"`, starts the daemon and waits until TAG is served.
    #[track_caller]
    pub fn on(site: &Site, tag: &str) -> Daemon {
        write_by_mv(site, "desired.toml.tmp", &desired_text(tag));
        let daemon = Daemon::start(site, &[]);
        daemon.wait_converged(site, tag);
        daemon
    }

    /// `fieldtrack --config SITE daemon EXTRA...`.
    pub fn start(site: &Site, extra: &[&str]) -> Daemon {
        let mut args = vec!["daemon"];
        args.extend_from_slice(extra);
        Daemon::spawn(site, command(site, &args))
    }

    /// `fieldtrack --config SITE daemon` that stops for good at `point`
    /// (`FIELDTRACK_TEST_PAUSE_AT`), for a test to kill it there.
    pub fn paused_at(site: &Site, point: &str) -> Daemon {
        let mut cmd = command(site, &["daemon"]);
        cmd.env("FIELDTRACK_TEST_PAUSE_AT", point);
        Daemon::spawn(site, cmd)
    }

    /// Starts `cmd` (a daemon command made by the harness, with the test's own environment).
    pub fn spawn(site: &Site, mut cmd: Command) -> Daemon {
        // One counter for the whole test binary: two daemons of one site never share a log.
        static N: AtomicU32 = AtomicU32::new(0);
        let log = site
            .dir
            .join(format!("daemon-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let stderr = File::create(&log).expect("the daemon log is created");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the daemon starts");
        Daemon {
            child,
            log,
            exit: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Not exited; an exited daemon not reaped yet (a zombie) does not run.
    pub fn running(&self) -> bool {
        procfs::runs(self.pid())
    }

    #[track_caller]
    pub fn signal(&self, signal: i32) {
        let sent = send_signal(self.pid(), signal);
        assert!(
            sent.is_ok(),
            "signal {signal} to the daemon: {}",
            sent.unwrap_err()
        );
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.exit = Some(self.child.wait().expect("the killed daemon is reaped"));
    }

    /// Waits for the daemon to exit within `limit`.
    #[track_caller]
    pub fn wait_exit(&mut self, site: &Site, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        let exited = util::poll(limit, || {
            child.try_wait().expect("the daemon can be waited on")
        });
        match exited {
            Some(status) => {
                self.exit = Some(status);
                status
            }
            None => panic!(
                "the daemon did not exit within {limit:?}\n{}",
                self.report(site)
            ),
        }
    }

    /// Waits for a log line containing `needle`, returns it.
    #[track_caller]
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_count(needle, 1);
        self.log()
            .lines()
            .find(|l| l.contains(needle))
            .expect("found above")
            .to_string()
    }

    /// Waits for `count` log lines containing `needle`; fails at once when the daemon
    /// exited without writing them.
    #[track_caller]
    pub fn wait_log_count(&self, needle: &str, count: usize) {
        let what = format!("{count} log lines with {needle:?}");
        let mut exited = false;
        wait_for_or(
            DAEMON_WAIT,
            &what,
            || {
                // Read after the exit is seen: its last lines are in the file by then.
                exited = exited || !self.running();
                let found = self.log().lines().filter(|l| l.contains(needle)).count();
                assert!(
                    found >= count || !exited,
                    "the daemon exited before {what}:\n{}",
                    self.log()
                );
                (found >= count).then_some(())
            },
            || self.log(),
        );
    }

    /// Polls `ok` until it holds, for up to [`DAEMON_WAIT`]; returns how long it took.
    #[track_caller]
    pub fn wait_until(&self, site: &Site, what: &str, ok: impl FnMut() -> bool) -> Duration {
        self.wait_within(site, DAEMON_WAIT, what, ok)
    }

    /// Polls `ok` until it holds, for up to `limit`; returns how long it took.
    #[track_caller]
    pub fn wait_within(
        &self,
        site: &Site,
        limit: Duration,
        what: &str,
        mut ok: impl FnMut() -> bool,
    ) -> Duration {
        let started = Instant::now();
        wait_for_or(limit, what, || ok().then_some(()), || self.report(site));
        started.elapsed()
    }

    /// Waits until status.json and nginx say TAG converged, then checks the whole picture.
    #[track_caller]
    pub fn wait_converged(&self, site: &Site, tag: &str) {
        self.wait_until(site, &format!("converged on {tag}"), || {
            converged_on(site, tag)
        });
        assert_converged(site, tag);
        assert_eq!(
            site.containers(),
            vec![container_name(site, live_color(site))],
            "nothing else of the app runs\n{}",
            self.report(site)
        );
    }

    /// Waits until status.json says the attempt at TAG is at `step`.
    #[track_caller]
    pub fn wait_step(&self, site: &Site, tag: &str, step: &str) {
        self.wait_until(site, &format!("{tag} at step {step}"), || {
            status_opt(site).is_some_and(|s| s["desired"] == tag && s["step"] == step)
        });
    }

    /// Everything a failure message needs.
    pub fn report(&self, site: &Site) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "--- status.json\n{}\n--- audit.jsonl\n{}\n--- containers {:?}\n--- upstream\n{}--- served {:?}\n--- daemon log (last 60 lines)\n{tail}",
            site.read(&site.state_dir.join("status.json")),
            site.read(&site.state_dir.join("audit.jsonl")),
            site.containers(),
            site.read(&site.upstream_file),
            served(site),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A test that failed outside the waits above (which show the log) still shows it.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- daemon log (last 60 lines)\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}
