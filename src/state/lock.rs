//! The reconcile lock, `state_dir/reconcile.lock`: two reconcilers (the daemon, a
//! `reconcile` or `deploy` run by hand) must never act on Docker and nginx at once.
//!
//! It is an `flock` on the file, so the kernel releases it when the holder dies, even by
//! kill -9: there is no stale lock to clean up. The file itself is never deleted (a process
//! locking a deleted file and another locking its replacement would both "hold" the lock);
//! while held it names its holder so that the one turned away can say who is in the way.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::now_rfc3339;

/// Name of the lock file inside `state_dir`.
pub const LOCK_FILE: &str = "reconcile.lock";

/// How often [`acquire_waiting`] tries again.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// What a held lock says when its holder has not written its name yet.
const UNKNOWN_HOLDER: &str = "another process";

/// What can go wrong taking the reconcile lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another reconciler holds the lock.
    #[error("another reconciler holds the reconcile lock: {holder}")]
    Held { holder: String },
    /// The lock file or its folder could not be created, opened, locked or written.
    #[error("failed to lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The held reconcile lock; released when dropped.
#[derive(Debug)]
pub struct ReconcileLock {
    file: File,
    path: PathBuf,
    holder: String,
}

impl ReconcileLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The holder line written into the lock file, without its newline.
    pub fn holder(&self) -> &str {
        &self.holder
    }
}

impl Drop for ReconcileLock {
    fn drop(&mut self) {
        // Clear the name first so the file never names a holder that is gone; closing the
        // file would release the lock anyway, unlocking explicitly also covers a duplicated
        // descriptor.
        let _ = self.file.set_len(0);
        // SAFETY: the descriptor is owned by `self.file` and open for the whole call.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Takes the reconcile lock without waiting, creating `state_dir` (0o755) when missing.
///
/// `holder` says who takes it ("daemon", "deploy"); the lock file then reads, e.g.,
/// `daemon pid 1234 since 2026-11-26T12:00:00Z`. Fails with [`LockError::Held`], naming the
/// holder, when another reconciler has it.
pub fn try_acquire(state_dir: &Path, holder: &str) -> Result<ReconcileLock, LockError> {
    let path = state_dir.join(LOCK_FILE);
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(state_dir)
        .map_err(io_error)?;
    // No truncation on open: the file belongs to the current holder until we have the lock.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(io_error)?;

    if !try_flock(&file, libc::LOCK_EX).map_err(io_error)? {
        return Err(LockError::Held {
            holder: read_holder(&file),
        });
    }

    let holder = format!(
        "{holder} pid {} since {}",
        std::process::id(),
        now_rfc3339()
    );
    // From here on `lock` owns the descriptor, so an error below still releases the lock.
    let lock = ReconcileLock {
        file,
        path: path.clone(),
        holder,
    };
    lock.file.set_len(0).map_err(io_error)?;
    lock.file
        .write_all_at(format!("{}\n", lock.holder).as_bytes(), 0)
        .map_err(io_error)?;
    Ok(lock)
}

/// Takes the reconcile lock, trying again every 200 ms for up to `wait`; then fails with
/// [`LockError::Held`] as [`try_acquire`] does.
pub async fn acquire_waiting(
    state_dir: &Path,
    holder: &str,
    wait: Duration,
) -> Result<ReconcileLock, LockError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match try_acquire(state_dir, holder) {
            Err(LockError::Held { holder: current }) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(LockError::Held { holder: current });
                }
                tokio::time::sleep(RETRY_INTERVAL.min(deadline - now)).await;
            }
            done => return done,
        }
    }
}

/// Who holds the reconcile lock, or `None` when nobody does (or there is no lock file yet).
///
/// A probe for `status` and `deploy` (is a daemon running?): it creates nothing, and takes a
/// shared lock for an instant so that probes never block one another. A `try_acquire` racing
/// with the probe can be turned away for that instant; callers that need the lock use
/// [`acquire_waiting`].
pub fn is_held(state_dir: &Path) -> Option<String> {
    let file = File::open(state_dir.join(LOCK_FILE)).ok()?;
    match try_flock(&file, libc::LOCK_SH) {
        Ok(true) => {
            // SAFETY: the descriptor is owned by `file` and open for the whole call.
            unsafe {
                libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            }
            None
        }
        Ok(false) => Some(read_holder(&file)),
        Err(_) => None,
    }
}

/// `flock(operation | LOCK_NB)`: `Ok(false)` when someone else holds a conflicting lock.
fn try_flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: the descriptor is owned by `file` and open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// The holder line of a lock file; a generic description when it is empty or unreadable
/// (the holder is between locking and writing its name).
fn read_holder(file: &File) -> String {
    let mut text = String::new();
    let mut reader = file;
    match reader.read_to_string(&mut text) {
        Ok(_) if !text.trim().is_empty() => text.trim().to_string(),
        _ => UNKNOWN_HOLDER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn lock_text(state_dir: &Path) -> String {
        fs::read_to_string(state_dir.join(LOCK_FILE)).unwrap()
    }

    #[test]
    fn acquire_creates_state_dir_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join(".fieldtrack");

        let lock = try_acquire(&state_dir, "daemon").unwrap();

        let mode = fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o755, 0, "state_dir mode {mode:o}");
        assert_eq!(mode & 0o700, 0o700, "state_dir mode {mode:o}");
        let text = lock_text(&state_dir);
        assert_eq!(text, format!("{}\n", lock.holder()));
        let prefix = format!("daemon pid {} since ", std::process::id());
        assert!(text.starts_with(&prefix), "{text:?}");
        assert!(text.trim_end().ends_with('Z'), "{text:?}");
        assert_eq!(text.lines().count(), 1);
        assert_eq!(lock.path(), state_dir.join(LOCK_FILE));
    }

    #[test]
    fn second_acquire_is_refused_naming_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_acquire(dir.path(), "daemon").unwrap();

        let err = try_acquire(dir.path(), "deploy").unwrap_err();

        match &err {
            LockError::Held { holder } => assert_eq!(holder, first.holder()),
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(err.to_string().contains("daemon pid"), "{err}");
        // The refused attempt left the holder's line alone.
        assert_eq!(lock_text(dir.path()), format!("{}\n", first.holder()));
    }

    #[test]
    fn dropping_the_lock_lets_the_next_one_in_and_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_acquire(dir.path(), "daemon").unwrap();
        drop(first);

        assert!(dir.path().join(LOCK_FILE).exists());
        assert_eq!(lock_text(dir.path()), "");
        let second = try_acquire(dir.path(), "reconcile").unwrap();
        assert!(lock_text(dir.path()).starts_with("reconcile pid "));
        drop(second);
    }

    #[test]
    fn a_longer_previous_holder_line_is_fully_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LOCK_FILE),
            "a very long stale line from a holder killed with -9\nand more\n",
        )
        .unwrap();

        let lock = try_acquire(dir.path(), "daemon").unwrap();

        assert_eq!(lock_text(dir.path()), format!("{}\n", lock.holder()));
    }

    #[test]
    fn is_held_reports_the_holder_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join(".fieldtrack");
        assert_eq!(is_held(&state_dir), None);
        assert!(!state_dir.exists());

        let lock = try_acquire(&state_dir, "daemon").unwrap();
        assert_eq!(is_held(&state_dir).as_deref(), Some(lock.holder()));
        // The probe released what it took: the holder keeps its lock, others still cannot.
        assert!(matches!(
            try_acquire(&state_dir, "deploy"),
            Err(LockError::Held { .. })
        ));

        drop(lock);
        assert_eq!(is_held(&state_dir), None);
        // And a probe on a free lock does not keep it.
        try_acquire(&state_dir, "deploy").unwrap();
    }

    #[test]
    fn acquire_error_names_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("not-a-folder");
        fs::write(&state_dir, "").unwrap();

        let err = try_acquire(&state_dir, "daemon").unwrap_err();

        assert!(matches!(err, LockError::Io { .. }));
        assert!(err.to_string().contains("reconcile.lock"), "{err}");
    }

    #[tokio::test]
    async fn acquire_waiting_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let _held = try_acquire(dir.path(), "daemon").unwrap();
        let started = std::time::Instant::now();

        let err = acquire_waiting(dir.path(), "deploy", Duration::from_millis(300))
            .await
            .unwrap_err();

        assert!(matches!(err, LockError::Held { ref holder } if holder.starts_with("daemon")));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test]
    async fn acquire_waiting_gets_the_lock_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = try_acquire(dir.path(), "daemon").unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });

        let lock = acquire_waiting(dir.path(), "deploy", Duration::from_secs(5))
            .await
            .unwrap();

        assert!(lock.holder().starts_with("deploy pid "));
        releaser.join().unwrap();
    }

    #[tokio::test]
    async fn acquire_waiting_with_zero_wait_tries_once() {
        let dir = tempfile::tempdir().unwrap();
        let lock = acquire_waiting(dir.path(), "reconcile", Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(
            acquire_waiting(dir.path(), "deploy", Duration::ZERO).await,
            Err(LockError::Held { .. })
        ));
        drop(lock);
    }
}
