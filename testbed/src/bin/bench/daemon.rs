//! The fieldtrack daemon on a site: started, followed through status.json until it
//! converged, and stopped with SIGTERM.

use std::fs;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use fieldtrack_testbed::Site;

use crate::timing::{version, COMMAND_LIMIT, POLL};
use crate::tools::{wait_child, Tools};
use crate::Result;

/// A running `fieldtrack daemon`, stopped when dropped.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    pub fn start(tools: &Tools, site: &Site) -> Result<Daemon> {
        let child = tools
            .ft(site, &["daemon"])
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        let daemon = Daemon { child: Some(child) };
        let lock = site.state_dir.join("reconcile.lock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&lock).is_ok_and(|t| t.starts_with("daemon")) {
            if Instant::now() > deadline {
                return Err("the daemon did not take the reconcile lock".into());
            }
            thread::sleep(POLL);
        }
        Ok(daemon)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn wait_converged(&self, site: &Site, tag: &str) -> Result<()> {
        let deadline = Instant::now() + COMMAND_LIMIT;
        loop {
            let (text, status) = Status::read(site);
            if status.desired.as_deref() == Some(tag)
                && status.phase.as_deref() == Some("converged")
                && version(site.nginx_addr()).as_deref() == Some(tag)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the daemon did not converge to {tag}: {text}"));
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        sigterm(&child);
        wait_child(&mut child, Duration::from_secs(60), "the daemon").map(|_| ())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(&child);
            if wait_child(&mut child, Duration::from_secs(30), "the daemon").is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Asks the daemon to stop at its next safe point; one already gone needs nothing.
fn sigterm(child: &Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::TERM,
    );
}

/// The fields of a site's status.json the bench waits on (docs/status-json.md).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Status {
    pub desired: Option<String>,
    pub phase: Option<String>,
    pub step: Option<String>,
}

impl Status {
    /// The site's status.json now, and what it says; a file missing or not (yet) readable
    /// says nothing, and the next poll reads it again.
    pub fn read(site: &Site) -> (String, Status) {
        let text = fs::read_to_string(site.state_dir.join("status.json")).unwrap_or_default();
        let status = serde_json::from_str(&text).unwrap_or_default();
        (text, status)
    }
}
