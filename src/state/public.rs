//! What the deploy group may read: `public_dir/status.json`.
//!
//! CI's user may write the desired file and nothing else; to learn what became of it, it reads
//! this file, which whoever reconciles (the daemon, or root's command in-process) writes
//! after every status write. It is root's, 0640 in a folder that `fieldtrack init` gives the
//! deploy group (2750, setgid), so the group reads it and nobody but root can forge it.
//!
//! It holds what CI needs and nothing secret: the status with its message cut before any
//! container log line or hook output, the history with who deployed what and when, the
//! recent generations' outcomes, and which daemon writes it (its pid and the inode of the
//! reconcile lock it holds, so a reader can tell from `/proc/locks` whether it still runs).
//! No env value, no container output, no hook output, no notification setting: those stay
//! in `state_dir` (0700).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{write_atomic_with, WriteOptions};
use super::audit::{AttemptOutcome, AuditRecord};
use super::file::read_capped;
use super::status::Status;
use crate::state::audit::{AUTO_ROLLBACK_NOTE_PREFIX, ROLLBACK_NOTE_PREFIX};

/// Name of the published status inside `public_dir`.
pub const PUBLIC_STATUS_FILE: &str = "status.json";

/// The published file: readable by the folder's group, written by root alone.
const MODE: u32 = 0o640;
/// The folder when fieldtrack has to make it (init makes it 2750 with the deploy group).
const DIR_MODE: u32 = 0o750;
/// Far more than the file ever holds.
const READ_CAP: u64 = 1 << 20;
/// How many generations' outcomes are kept.
const OUTCOMES: usize = 10;

/// What can go wrong with the published status.
#[derive(Debug, thiserror::Error)]
pub enum PublicError {
    /// The published status could not be read (missing folder, no permission).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The published status is not what fieldtrack writes.
    #[error("{} is corrupt: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The folder is not one root alone may write.
    #[error("refusing to publish into {}: {why}", dir.display())]
    UnsafeDir { dir: PathBuf, why: String },
    /// The published status could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The daemon that writes the file: enough for a reader without privileges to tell whether
/// it still runs ([`DaemonId::is_running`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonId {
    pub pid: u32,
    /// The inode of the reconcile lock file the daemon holds.
    pub lock_inode: u64,
    /// RFC 3339 UTC: when it started.
    pub since: String,
}

impl DaemonId {
    /// Whether that process still holds its flock on that lock file: `/proc/locks` lists
    /// every lock of the machine for anyone to read, so no access to `state_dir` is needed,
    /// and a pid reused by another process holds no lock on that inode.
    pub fn is_running(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        super::lock::holds_lock_inode(pid, self.lock_inode)
    }
}

/// One history entry with what the audit log knows of it: `fieldtrack history --json`'s
/// shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// 1 for the current deployment.
    pub n: usize,
    pub image: String,
    pub current: bool,
    /// RFC 3339 UTC of its last successful deployment, when the audit log has it.
    pub deployed_at: Option<String>,
    pub digest: Option<String>,
    pub by: Option<String>,
    pub note: Option<String>,
    /// ci, cli, rollback or auto-rollback.
    pub trigger: Option<String>,
    /// Someone, or fieldtrack itself, rolled back from this version.
    pub rolled_back_from: bool,
}

/// How one generation's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub generation: String,
    pub image: String,
    pub outcome: AttemptOutcome,
    /// RFC 3339 UTC, when the attempt ended.
    pub at: String,
    pub by: Option<String>,
    /// Why it did not succeed, without container or hook output.
    pub message: Option<String>,
}

/// The content of `public_dir/status.json`: the status's fields at the top level (as in
/// `status.json`), and beside them the daemon, the history and the outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    #[serde(flatten)]
    pub status: Status,
    /// The daemon writing it; null when a command in-process wrote it last.
    pub daemon: Option<DaemonId>,
    pub history: Vec<HistoryEntry>,
    /// The latest first.
    pub outcomes: Vec<Outcome>,
}

impl Published {
    /// What the group may read of `status`, `history` (the history file's entries) and the
    /// audit log's `records`.
    pub fn new(
        status: &Status,
        daemon: Option<DaemonId>,
        history: &[String],
        records: &[AuditRecord],
    ) -> Published {
        let mut status = status.clone();
        status.message = status.message.as_deref().map(without_output);
        let outcomes = records
            .iter()
            .rev()
            .filter(|r| r.is_deploy())
            .take(OUTCOMES)
            .map(|r| Outcome {
                generation: r.generation.clone(),
                image: r.image.clone(),
                outcome: r.outcome,
                at: r.time.clone(),
                by: r.by.clone(),
                message: r.message.as_deref().map(without_output),
            })
            .collect();
        Published {
            status,
            daemon,
            history: history_entries(history, records),
            outcomes,
        }
    }

    /// Reads `public_dir/status.json`; None when nothing was published yet.
    pub fn load(public_dir: &Path) -> Result<Option<Published>, PublicError> {
        let path = public_dir.join(PUBLIC_STATUS_FILE);
        let bytes = match read_capped(&path, READ_CAP) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(source) => return Err(PublicError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| PublicError::Parse { path, source })
    }

    /// Writes it atomically into `public_dir` (made 0750 when missing), 0640, never through
    /// a symlink; refuses a folder that someone else than root (or this user) may write.
    pub fn save(&self, public_dir: &Path) -> Result<(), PublicError> {
        prepare_public_dir(public_dir)?;
        let path = public_dir.join(PUBLIC_STATUS_FILE);
        let mut json = serde_json::to_vec_pretty(self).expect("plain data serializes");
        json.push(b'\n');
        write_atomic_with(&path, &json, WriteOptions::state(MODE))
            .map_err(|source| PublicError::Write { path, source })
    }
}

/// Makes `dir` when missing; refuses a symlink, something else than a folder, a folder of
/// another user than root or this one, or one its group or others may write (they could
/// replace the file CI trusts).
fn prepare_public_dir(dir: &Path) -> Result<(), PublicError> {
    let unsafe_dir = |why: String| PublicError::UnsafeDir {
        dir: dir.to_path_buf(),
        why,
    };
    if let Err(e) = fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
    {
        return Err(unsafe_dir(e.to_string()));
    }
    let folder = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| unsafe_dir(format!("not a folder one may open without a symlink ({e})")))?;
    let meta = folder.metadata().map_err(|e| unsafe_dir(e.to_string()))?;
    let user = super::file::effective_uid();
    if meta.uid() != 0 && meta.uid() != user {
        return Err(unsafe_dir(format!("it is owned by uid {}", meta.uid())));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its group or others may write it (mode {mode:04o}); run `chmod go-w {}`",
            dir.display()
        )));
    }
    Ok(())
}

/// `message` without what a container or a hook printed: the text from the first log line
/// (`Last log lines:`) or from a failed hook's output on is replaced by a pointer to root's
/// status, which has it.
pub fn without_output(message: &str) -> String {
    const ELSEWHERE: &str = "(output left out: `sudo fieldtrack status` shows it)";
    if let Some(at) = message.find("Last log lines:") {
        return format!("{}{ELSEWHERE}", &message[..at]);
    }
    // A failed hook: "{name} hook `{command}` failed ({status}): {output}".
    if let Some(hook) = message.find(" hook `") {
        if let Some(failed) = message[hook..].find("` failed (") {
            let from = hook + failed;
            if let Some(end) = message[from..].find("): ") {
                let cut = from + end + 3;
                return format!("{}{ELSEWHERE}", &message[..cut]);
            }
        }
    }
    message.to_string()
}

/// The history's entries, newest first, each with its last successful deployment as the
/// audit log has it: what `fieldtrack history` shows.
pub fn history_entries(history: &[String], records: &[AuditRecord]) -> Vec<HistoryEntry> {
    let last_success = |image: &str| -> Option<&AuditRecord> {
        records
            .iter()
            .rev()
            .find(|r| r.is_deploy() && r.image == image && r.outcome == AttemptOutcome::Succeeded)
    };
    // Versions someone rolled back from (the rollback command's note names them), or that
    // fieldtrack itself rolled back after they failed past the health gate.
    let rolled_back_from = |image: &str| -> bool {
        records.iter().filter(|r| r.is_deploy()).any(|r| {
            (r.outcome == AttemptOutcome::RolledBack && r.image == image)
                || (r.outcome == AttemptOutcome::Succeeded
                    && r.previous.as_deref() == Some(image)
                    && r.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with(ROLLBACK_NOTE_PREFIX)))
        })
    };
    history
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let r = last_success(image);
            HistoryEntry {
                n: i + 1,
                image: image.clone(),
                current: i == 0,
                deployed_at: r.map(|r| r.time.clone()),
                digest: r.and_then(|r| r.digest.clone()),
                by: r.and_then(|r| r.by.clone()),
                note: r.and_then(|r| r.note.clone()),
                trigger: r.map(|r| trigger_of(r).to_string()),
                rolled_back_from: rolled_back_from(image),
            }
        })
        .collect()
}

/// What brought a deployment about, in the operator's words: ci, cli, rollback or
/// auto-rollback.
fn trigger_of(r: &AuditRecord) -> &'static str {
    let note = r.note.as_deref().unwrap_or_default();
    if r.by.as_deref() == Some("fieldtrack") && note.starts_with(AUTO_ROLLBACK_NOTE_PREFIX) {
        "auto-rollback"
    } else if note.starts_with(ROLLBACK_NOTE_PREFIX) {
        "rollback"
    } else if r.by.as_deref() == Some("ci") {
        "ci"
    } else {
        "cli"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status::Phase;

    #[test]
    fn container_log_lines_and_hook_output_are_left_out() {
        let unhealthy = "candidate api-blue (v2) did not become healthy within 60s (last probe: 500); production untouched. Last log lines:\nDATABASE_URL=postgres://secret\npanic";
        let public = without_output(unhealthy);
        assert!(public.starts_with("candidate api-blue (v2) did not become healthy"));
        assert!(
            !public.contains("secret") && !public.contains("panic"),
            "{public}"
        );
        let hook = "pre_switch hook `/usr/local/bin/migrate` failed (exit status: 3): token=abc123";
        let public = without_output(hook);
        assert!(
            public
                .starts_with("pre_switch hook `/usr/local/bin/migrate` failed (exit status: 3): "),
            "{public}"
        );
        assert!(!public.contains("abc123"), "{public}");
        assert_eq!(without_output("nginx -t failed"), "nginx -t failed");
    }

    #[test]
    fn published_status_round_trips_with_the_status_fields_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public");
        let mut status = Status::new(Phase::Failed);
        status.desired = Some("v2".into());
        status.generation = Some("g2".into());
        status.message = Some("x. Last log lines:\nsecret".into());
        let published = Published::new(&status, None, &["v1".to_string()], &[]);
        published.save(&public).unwrap();
        let text = fs::read_to_string(public.join(PUBLIC_STATUS_FILE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["phase"], "failed");
        assert_eq!(value["generation"], "g2");
        assert_eq!(value["history"][0]["image"], "v1");
        assert!(!text.contains("secret"), "{text}");
        let mode = fs::metadata(public.join(PUBLIC_STATUS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(Published::load(&public).unwrap(), Some(published));
    }

    #[test]
    fn a_folder_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public");
        fs::create_dir(&public).unwrap();
        fs::set_permissions(&public, fs::Permissions::from_mode(0o2770)).unwrap();
        let published = Published::new(&Status::new(Phase::Converged), None, &[], &[]);
        let err = published.save(&public).unwrap_err();
        assert!(err.to_string().contains("may write it"), "{err}");
    }
}
