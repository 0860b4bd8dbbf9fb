//! The reconcile lock, `state_dir/reconcile.lock`: two reconcilers (the daemon, a
//! `reconcile` or `deploy` run by hand) must never act on Docker and nginx at once.
//!
//! It is an `flock` on the file (std's `File::try_lock`), so the kernel releases it when the
//! holder dies, even by kill -9: there is no stale lock to clean up. The file itself is never
//! deleted (a process locking a deleted file and another locking its replacement would both
//! "hold" the lock); while held it names its holder so that the one turned away can say who
//! is in the way. It is opened like every state file: never through a symlink, only a
//! regular file (see [`super::file`]), 0600.
//!
//! The holder line is only a name: anyone who could write the file could write any pid in
//! it. So before `fieldtrack reconcile` signals "the daemon", [`check_daemon`] makes sure
//! the pid is a fieldtrack process that really holds the lock.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{open_regular, prepare_state_dir, tighten};
use super::now_rfc3339;

/// Name of the lock file inside `state_dir`.
pub const LOCK_FILE: &str = "reconcile.lock";

/// Mode of the lock file: nobody but its owner needs it.
const MODE: u32 = 0o600;

/// How often [`acquire_waiting`] tries again.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// What a held lock says when its holder has not written its name yet.
const UNKNOWN_HOLDER: &str = "another process";

/// More than any holder line.
const HOLDER_CAP: u64 = 4096;

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
    /// The lock file names a pid as the daemon that is not a fieldtrack process holding the
    /// lock, so it is not signalled.
    #[error("the reconcile lock {} names pid {pid} as the daemon, but {why}; not signalling it", path.display())]
    NotTheDaemon {
        path: PathBuf,
        pid: i32,
        why: String,
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

    /// The lock file's inode: with the pid, what tells from `/proc/locks` that this lock
    /// is still held ([`holds_lock_inode`]).
    pub fn inode(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.ino())
    }
}

impl Drop for ReconcileLock {
    fn drop(&mut self) {
        // Clear the name first so the file never names a holder that is gone; closing the
        // file would release the lock anyway, unlocking explicitly also covers a duplicated
        // descriptor.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Takes the reconcile lock without waiting, creating `state_dir` (0700) when missing.
///
/// `holder` says who takes it ("daemon", "deploy"); the lock file then reads, e.g.,
/// `daemon pid 1234 since 2026-11-26T12:00:00Z`. Fails with [`LockError::Held`], naming the
/// holder, when another reconciler has it, and with [`LockError::Io`] when the state folder
/// or the lock file is unsafe (a symlink, another user's folder, not a regular file).
pub fn try_acquire(state_dir: &Path, holder: &str) -> Result<ReconcileLock, LockError> {
    let path = state_dir.join(LOCK_FILE);
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    prepare_state_dir(state_dir).map_err(io_error)?;
    // No truncation on open: the file belongs to the current holder until we have the lock.
    let file = open_regular(
        &path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(MODE),
    )
    .map_err(io_error)?;

    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                holder: read_holder(&file),
            })
        }
        Err(TryLockError::Error(e)) => return Err(io_error(e)),
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
    tighten(&lock.file, MODE).map_err(io_error)?;
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

/// Who holds the reconcile lock, or `None` when nobody does (or there is no lock file yet,
/// or it is unsafe: a symlink or not a regular file).
///
/// A probe for `status` and `deploy` (is a daemon running?): it creates nothing, and takes a
/// shared lock for an instant so that probes never block one another. A `try_acquire` racing
/// with the probe can be turned away for that instant; callers that need the lock use
/// [`acquire_waiting`].
pub fn is_held(state_dir: &Path) -> Option<String> {
    let file = open_regular(&state_dir.join(LOCK_FILE), OpenOptions::new().read(true)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(TryLockError::WouldBlock) => Some(read_holder(&file)),
        Err(TryLockError::Error(_)) => None,
    }
}

/// The pid of a daemon, from a holder line `daemon pid N since …`.
pub fn daemon_pid(holder: &str) -> Option<i32> {
    holder
        .strip_prefix("daemon pid ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Checks that `pid`, named by the lock file in `state_dir` as the daemon, may be sent a
/// signal meant for the daemon: a pid above 1 (0 and -1 would signal a whole process group
/// or every process), a fieldtrack process, and one that holds the lock on that very file.
pub fn check_daemon(state_dir: &Path, pid: i32) -> Result<(), LockError> {
    let path = state_dir.join(LOCK_FILE);
    let refuse = |why: String| LockError::NotTheDaemon {
        path: path.clone(),
        pid,
        why,
    };
    if pid <= 1 {
        return Err(refuse("that is no daemon's pid".to_string()));
    }
    is_fieldtrack(pid).map_err(refuse)?;
    let file =
        open_regular(&path, OpenOptions::new().read(true)).map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
    let inode = file
        .metadata()
        .map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?
        .ino();
    if !holds_flock(pid, inode) {
        return Err(refuse("that process does not hold the lock".to_string()));
    }
    Ok(())
}

/// Whether `pid` runs this same binary, or one named fieldtrack (the daemon may run the
/// binary a package upgrade has since replaced; its exe then reads "… (deleted)").
fn is_fieldtrack(pid: i32) -> Result<(), String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe"));
    if let (Ok(exe), Ok(own)) = (&exe, fs::read_link("/proc/self/exe")) {
        if *exe == own {
            return Ok(());
        }
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) if comm.trim_end() == "fieldtrack" => Ok(()),
        Ok(comm) => Err(format!(
            "that process is {:?}, not fieldtrack",
            match &exe {
                Ok(exe) => exe.display().to_string(),
                Err(_) => comm.trim_end().to_string(),
            }
        )),
        Err(_) => Err("there is no such process".to_string()),
    }
}

/// Whether `pid` holds an flock on the file with `inode`, as `/proc/locks` (readable by
/// anyone) says: how a user who may not enter `state_dir` tells that the daemon runs.
pub fn holds_lock_inode(pid: i32, inode: u64) -> bool {
    holds_flock(pid, inode)
}

/// Whether `/proc/locks` lists an flock held (not waited for) by `pid` on inode `inode`.
fn holds_flock(pid: i32, inode: u64) -> bool {
    let Ok(locks) = fs::read_to_string("/proc/locks") else {
        return false;
    };
    holds_flock_in(&locks, pid, inode)
}

/// [`holds_flock`] on the text of `/proc/locks`, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 1234 fe:00:10010853 0 EOF`; a waiter's has `->` after the
/// number. The device is not compared: some file systems (overlayfs) report another one in
/// `/proc/locks` than `stat` does.
fn holds_flock_in(locks: &str, pid: i32, inode: u64) -> bool {
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields.get(4).and_then(|p| p.parse::<i32>().ok()) == Some(pid)
            && fields
                .get(5)
                .and_then(|dev_ino| dev_ino.rsplit(':').next())
                .and_then(|ino| ino.parse::<u64>().ok())
                == Some(inode)
    })
}

/// The holder line of a lock file; a generic description when it is empty or unreadable
/// (the holder is between locking and writing its name).
fn read_holder(file: &File) -> String {
    let mut bytes = Vec::new();
    match file.take(HOLDER_CAP).read_to_end(&mut bytes) {
        Ok(_) if !String::from_utf8_lossy(&bytes).trim().is_empty() => {
            String::from_utf8_lossy(&bytes).trim().to_string()
        }
        _ => UNKNOWN_HOLDER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{link_to_victim, mkfifo, within_5s, VICTIM};
    use std::fs;
    use std::os::unix::fs::MetadataExt;
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

    #[test]
    fn lock_file_through_a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        link_to_victim(&dir.path().join(LOCK_FILE), &victim);

        let err = try_acquire(dir.path(), "daemon").unwrap_err();

        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM);
        // The probe neither follows it.
        assert_eq!(is_held(dir.path()), None);
    }

    #[test]
    fn lock_file_that_is_a_fifo_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        mkfifo(&dir.path().join(LOCK_FILE));

        let state_dir = dir.path().to_path_buf();
        let held = within_5s("probing a lock file that is a FIFO", move || {
            is_held(&state_dir)
        });
        let state_dir = dir.path().to_path_buf();
        let taken = within_5s("locking a lock file that is a FIFO", move || {
            try_acquire(&state_dir, "daemon")
                .map(|_| ())
                .map_err(|e| e.to_string())
        });

        assert_eq!(held, None);
        assert!(taken.unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn lock_file_is_0600_and_the_state_dir_0700() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let lock = try_acquire(&state_dir, "daemon").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(lock.path()), 0o600);
        assert_eq!(mode(&state_dir), 0o700);
        drop(lock);

        // Older, looser ones are tightened.
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(state_dir.join(LOCK_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let lock = try_acquire(&state_dir, "daemon").unwrap();
        assert_eq!(mode(lock.path()), 0o600);
        assert_eq!(mode(&state_dir), 0o700);
    }

    #[test]
    fn a_state_dir_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let state_dir = dir.path().join("state");
        std::os::unix::fs::symlink(&real, &state_dir).unwrap();

        let err = try_acquire(&state_dir, "daemon").unwrap_err();

        let msg = err.to_string();
        assert!(msg.contains("symlink") && msg.contains("state"), "{msg}");
        assert!(!real.join(LOCK_FILE).exists());
    }

    #[test]
    fn a_state_dir_owned_by_someone_else_is_refused() {
        // The tests run as root (docs/testing.md), which can give a folder away.
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        std::os::unix::fs::chown(&state_dir, Some(65534), Some(65534)).unwrap();

        let err = try_acquire(&state_dir, "daemon").unwrap_err();

        let msg = err.to_string();
        assert!(msg.contains("owned by uid 65534"), "{msg}");
        assert!(!state_dir.join(LOCK_FILE).exists());
        assert_eq!(fs::metadata(&state_dir).unwrap().uid(), 65534);
    }

    #[test]
    fn daemon_pid_reads_the_holder_line() {
        assert_eq!(
            daemon_pid("daemon pid 1234 since 2026-11-26T12:00:00Z"),
            Some(1234)
        );
        assert_eq!(daemon_pid("daemon pid -1 since x"), Some(-1));
        assert_eq!(daemon_pid("fieldtrack deploy pid 1234 since x"), None);
        assert_eq!(daemon_pid("daemon pid many since x"), None);
    }

    #[test]
    fn proc_locks_lines_are_matched_by_pid_and_inode_and_waiters_skipped() {
        let locks = "1: FLOCK  ADVISORY  WRITE 1234 fe:00:777 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 99 fe:00:777 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 55 00:1a:888 0 EOF\n";
        assert!(holds_flock_in(locks, 1234, 777));
        assert!(!holds_flock_in(locks, 1234, 778));
        assert!(!holds_flock_in(locks, 99, 777), "a waiter holds nothing");
        assert!(!holds_flock_in(locks, 55, 888), "a POSIX lock is not ours");
    }

    #[test]
    fn check_daemon_accepts_only_a_fieldtrack_process_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        for pid in [-1, 0, 1] {
            let err = check_daemon(dir.path(), pid).unwrap_err();
            assert!(err.to_string().contains("not signalling"), "{err}");
        }

        // This test binary runs the same exe as itself: a fieldtrack process, but not yet
        // holding the lock.
        fs::write(dir.path().join(LOCK_FILE), "").unwrap();
        let err = check_daemon(dir.path(), me).unwrap_err();
        assert!(err.to_string().contains("does not hold the lock"), "{err}");

        let lock = try_acquire(dir.path(), "daemon").unwrap();
        check_daemon(dir.path(), me).unwrap();

        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let err = check_daemon(dir.path(), sleeper.id() as i32).unwrap_err();
        assert!(err.to_string().contains("sleep"), "{err}");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        drop(lock);
    }
}
