//! The files fieldtrack owns: history, status, audit log, the reconcile lock, the daemon's
//! answers to `fieldtrack reconcile`, the atomic write they share, and the safe way to open
//! them (never through a symlink, only regular files, reads capped: see [`file`]).
//!
//! Everything a restarted daemon needs to know lives in these files or in the real world,
//! never only in memory, so each module here is careful about what a crash at any instant
//! leaves behind.

pub mod atomic;
pub mod audit;
pub mod by_hand;
pub mod file;
pub mod history;
pub mod journal;
pub mod lock;
pub mod public;
pub mod status;
pub mod writer;

use std::time::SystemTime;

/// Name of the status file inside `state_dir`.
pub const STATUS_FILE: &str = "status.json";

/// Name of the audit log inside `state_dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";

pub use lock::LOCK_FILE;

/// The current time as RFC 3339 UTC with whole seconds, e.g. `2026-11-26T12:00:00Z`: the one
/// timestamp format of every state file.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What the state files' tests share: hostile things to put where a state file belongs.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A victim's content: what a symlinked state file must never change.
    pub const VICTIM: &str = "root:x:0:0:victim line that must survive\n";

    /// Writes a victim file at `victim` and a symlink to it at `link`.
    pub fn link_to_victim(link: &Path, victim: &Path) {
        std::fs::write(victim, VICTIM).unwrap();
        std::os::unix::fs::symlink(victim, link).unwrap();
    }

    /// Makes a FIFO at `path`: opening it for reading blocks until a writer comes.
    pub fn mkfifo(path: &Path) {
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .expect("mkfifo");
    }

    /// Runs `f` on a thread; panics when it has not returned within 5 s (a FIFO read that
    /// blocks, a /dev/zero read that never ends). The stuck thread is left behind.
    #[track_caller]
    pub fn within_5s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(value) => value,
            Err(_) => panic!("{what} did not return within 5 s (hung)"),
        }
    }
}
