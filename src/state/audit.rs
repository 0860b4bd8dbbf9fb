//! `audit.jsonl` in `state_dir`: every deployment attempt and its outcome, one JSON object a
//! line, for `history` and for operators asking who deployed what and when.
//!
//! The log is only ever appended to, never rewritten, so it survives anything the reconciler
//! does. Each record goes out in one `write` on an `O_APPEND` descriptor and is fsynced; a
//! crash can at worst tear the last line, which [`read`] skips and [`append`] terminates
//! before adding the next record.
//!
//! The log is opened without following a symlink and must be a regular file (see
//! [`super::file`]). It grows without bound, so only its last 16 MiB are read: thousands of
//! attempts, far more than the history ever names.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{fsync_dir, parent_dir};
use super::file::{open_regular, prepare_state_dir, read_tail, tighten};

/// How the rollback command's note starts: `rollback from X to Y`.
pub const ROLLBACK_NOTE_PREFIX: &str = "rollback from ";

/// How the note of an automatic rollback (written by fieldtrack itself) starts.
pub const AUTO_ROLLBACK_NOTE_PREFIX: &str = "auto-rollback: ";

/// How the note of `fieldtrack abort` (back to the stable color from a canary) starts.
pub const ABORT_NOTE_PREFIX: &str = "abort: ";

/// Mode of the audit log: it holds container log tails, for root and the admin group.
const MODE: u32 = 0o640;

/// How much of the log's end is read.
const READ_CAP: u64 = 16 << 20;

/// What can go wrong with the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit log could not be opened, appended to or flushed.
    #[error("failed to append to audit log {}: {source}", path.display())]
    Append {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record could not be turned into JSON.
    #[error("failed to serialize a record for audit log {}: {source}", path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The audit log exists but could not be read.
    #[error("failed to read audit log {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a pass ran: a tracing field and the audit log's `trigger`, never a reason for the pass
/// to act differently (whether it retries a failed generation is the separate `by_hand`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// The daemon started.
    Start,
    /// The desired file changed (or a cancelled attempt's generation is due again).
    File,
    /// The resync timer (`rollout.resync`).
    Resync,
    /// The backoff after a transient error ran out.
    Retry,
    /// SIGHUP reloaded the config.
    Reload,
    /// `fieldtrack reconcile` asked the daemon (SIGUSR1).
    ByHand,
    /// `fieldtrack reconcile` run in-process.
    Cli,
    /// `fieldtrack deploy` or `rollback` run in-process.
    Deploy,
    /// The next look at a running canary step (a tick after the pass before).
    Canary,
    /// The next look at a preview awaiting promotion (a tick after the pass before).
    Preview,
    /// A line written by a fieldtrack that knows a trigger this one does not (or none): read,
    /// never written.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Trigger {
    /// The name in logs and in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::File => "file",
            Trigger::Resync => "resync",
            Trigger::Retry => "retry",
            Trigger::Reload => "reload",
            Trigger::ByHand => "by-hand",
            Trigger::Cli => "cli",
            Trigger::Deploy => "deploy",
            Trigger::Canary => "canary",
            Trigger::Preview => "preview",
            Trigger::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a deployment attempt ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The new image is live, the old color retired, the history records it.
    Succeeded,
    /// The attempt stopped before its end; production as the error says.
    Failed,
    /// A newer generation or a stop signal ended it at a safe point.
    Cancelled,
    /// The new color failed during the drain and traffic went back to the old one.
    RolledBack,
    /// A line written by a fieldtrack that knows an outcome this one does not (or none):
    /// read, never written.
    #[default]
    #[serde(other)]
    Unknown,
}

impl AttemptOutcome {
    /// Every outcome an attempt can have (not [`AttemptOutcome::Unknown`]).
    pub const ALL: [AttemptOutcome; 4] = [
        AttemptOutcome::Succeeded,
        AttemptOutcome::Failed,
        AttemptOutcome::Cancelled,
        AttemptOutcome::RolledBack,
    ];

    /// The name in the audit log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::RolledBack => "rolled_back",
            AttemptOutcome::Unknown => "unknown",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One deployment attempt and its outcome: one line of the audit log.
///
/// Fields missing from a line (written by an older or newer fieldtrack) read as their
/// defaults, and unknown ones are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditRecord {
    /// RFC 3339 UTC, when the attempt ended.
    pub time: String,
    /// What happened: `deploy`.
    pub event: String,
    /// `succeeded`, `failed`, `cancelled` or `rolled_back`.
    pub outcome: AttemptOutcome,
    /// The image as written in the desired file.
    pub image: String,
    /// The full pullable reference.
    pub reference: String,
    /// Registry digest of the image when known.
    pub digest: Option<String>,
    /// The image that was live before the attempt.
    pub previous: Option<String>,
    /// Why the reconcile ran (file change, resync, CLI, ...); informational only.
    pub trigger: Trigger,
    /// Who asked, from the desired file.
    pub by: Option<String>,
    /// Free text from the desired file.
    pub note: Option<String>,
    /// The desired generation the attempt was for.
    pub generation: String,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// The error, in plain words, when the attempt did not succeed.
    pub message: Option<String>,
    /// The color the attempt deployed to.
    pub color: Option<String>,
}

/// `event` of a deployment attempt's record.
pub const DEPLOY_EVENT: &str = "deploy";
/// `event` of a canary step's record: its outcome is the step's (`succeeded` when it passed,
/// `rolled_back` when it failed); the attempt has its own `deploy` record.
pub const CANARY_STEP_EVENT: &str = "canary_step";

impl AuditRecord {
    /// A deployment attempt's record (not a canary step's): what "the last successful
    /// deployment of an image" is looked up among.
    pub fn is_deploy(&self) -> bool {
        self.event == DEPLOY_EVENT
    }
}

/// The audit log as read, with the number of lines that were not records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditLog {
    /// The records, oldest first.
    pub records: Vec<AuditRecord>,
    /// Non-blank lines that did not parse, such as a line torn by a crash.
    pub skipped: usize,
}

/// Appends `record` as one line and fsyncs it, creating the log (and its folder) when missing.
pub fn append(path: &Path, record: &AuditRecord) -> Result<(), AuditError> {
    let append_error = |source| AuditError::Append {
        path: path.to_path_buf(),
        source,
    };
    let mut line = serde_json::to_string(record).map_err(|source| AuditError::Serialize {
        path: path.to_path_buf(),
        source,
    })?;
    line.push('\n');

    let dir = parent_dir(path);
    prepare_state_dir(dir).map_err(append_error)?;
    let created = std::fs::symlink_metadata(path).is_err();
    // Readable too, to look at the last byte.
    let mut file = open_regular(
        path,
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(MODE),
    )
    .map_err(append_error)?;
    tighten(&file, MODE).map_err(append_error)?;

    // A crash mid-append can leave a last line without its newline; glued to it, this record
    // would be unreadable too.
    if !ends_with_newline(&file).map_err(append_error)? {
        line.insert(0, '\n');
    }
    let len = file.metadata().map_err(append_error)?.len();
    if let Err(e) = file.write_all(line.as_bytes()) {
        // A full disk may have taken part of the line: cut it off, the log keeps whole lines.
        let _ = file.set_len(len);
        return Err(append_error(e));
    }
    file.sync_data().map_err(append_error)?;
    if created {
        fsync_dir(dir).map_err(append_error)?;
    }
    Ok(())
}

/// The records of the log, oldest first; a missing log has none. Lines that do not parse are
/// skipped with a warning.
pub fn read(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let log = read_log(path)?;
    if log.skipped > 0 {
        tracing::warn!(
            path = %path.display(),
            skipped = log.skipped,
            "skipped unreadable lines in audit log"
        );
    }
    Ok(log.records)
}

/// Like [`read`], but reports how many lines were skipped instead of logging it.
pub fn read_log(path: &Path) -> Result<AuditLog, AuditError> {
    let (bytes, cut) = match read_tail(path, READ_CAP) {
        Ok(Some(tail)) => tail,
        Ok(None) => return Ok(AuditLog::default()),
        Err(source) => {
            return Err(AuditError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    // A tail starts inside some record: that part line is not a torn one, just cut.
    let lines = match (cut, bytes.iter().position(|&b| b == b'\n')) {
        (true, Some(end)) => &bytes[end + 1..],
        (true, None) => &[][..],
        (false, _) => &bytes[..],
    };
    // Parsed line by line from bytes: a line torn inside a UTF-8 sequence spoils only itself.
    let mut log = AuditLog::default();
    for line in lines.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(record) => log.records.push(record),
            Err(_) => log.skipped += 1,
        }
    }
    Ok(log)
}

/// Whether the file is empty or its last byte is a newline.
fn ends_with_newline(file: &File) -> io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{link_to_victim, mkfifo, within_5s, VICTIM};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn record(image: &str, outcome: AttemptOutcome) -> AuditRecord {
        AuditRecord {
            time: "2026-11-26T12:00:00Z".to_string(),
            event: "deploy".to_string(),
            outcome,
            image: image.to_string(),
            reference: format!("ghcr.io/fieldtrack-tech/api:{image}"),
            digest: Some("sha256:0123".to_string()),
            previous: Some("a4f91c2".to_string()),
            trigger: Trigger::File,
            by: Some("ci".to_string()),
            note: Some("hotfix login\nsecond line".to_string()),
            generation: "g1".to_string(),
            duration_ms: 12_345,
            message: None,
            color: Some("green".to_string()),
        }
    }

    #[test]
    fn read_missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("audit.jsonl")).unwrap().is_empty());
    }

    #[test]
    fn append_writes_one_line_per_record_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".fieldtrack/audit.jsonl");
        let first = record("b8c4d2e", AttemptOutcome::Succeeded);
        let second = record("c5f7a1b", AttemptOutcome::Failed);

        append(&path, &first).unwrap();
        append(&path, &second).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with('\n'));
        assert_eq!(read(&path).unwrap(), vec![first, second]);
    }

    #[test]
    fn append_never_rewrites_earlier_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        append(&path, &record("a", AttemptOutcome::Succeeded)).unwrap();
        let before = fs::read(&path).unwrap();

        append(&path, &record("b", AttemptOutcome::Succeeded)).unwrap();

        assert!(fs::read(&path).unwrap().starts_with(&before));
    }

    #[test]
    fn triggers_and_outcomes_are_written_as_they_always_were() {
        let triggers = [
            (Trigger::Start, "start"),
            (Trigger::File, "file"),
            (Trigger::Resync, "resync"),
            (Trigger::Retry, "retry"),
            (Trigger::Reload, "reload"),
            (Trigger::ByHand, "by-hand"),
            (Trigger::Cli, "cli"),
            (Trigger::Deploy, "deploy"),
        ];
        for (trigger, name) in triggers {
            assert_eq!(serde_json::to_value(trigger).unwrap(), name);
            assert_eq!(trigger.to_string(), name);
            assert_eq!(
                serde_json::from_value::<Trigger>(name.into()).unwrap(),
                trigger
            );
        }
        let outcomes = ["succeeded", "failed", "cancelled", "rolled_back"];
        for (outcome, name) in AttemptOutcome::ALL.into_iter().zip(outcomes) {
            assert_eq!(serde_json::to_value(outcome).unwrap(), name);
            assert_eq!(outcome.to_string(), name);
            assert_eq!(
                serde_json::from_value::<AttemptOutcome>(name.into()).unwrap(),
                outcome
            );
        }
    }

    #[test]
    fn a_trigger_or_outcome_this_version_does_not_know_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut line = serde_json::to_value(record("a", AttemptOutcome::Succeeded)).unwrap();
        line["trigger"] = "cron".into();
        line["outcome"] = "paused".into();
        fs::write(&path, format!("{line}\n{{\"image\":\"b\"}}\n")).unwrap();
        let log = read_log(&path).unwrap();
        assert_eq!(log.skipped, 0);
        assert_eq!(log.records[0].trigger, Trigger::Unknown);
        assert_eq!(log.records[0].outcome, AttemptOutcome::Unknown);
        assert_eq!(log.records[0].digest.as_deref(), Some("sha256:0123"));
        assert_eq!(log.records[1].outcome, AttemptOutcome::Unknown);
    }

    #[test]
    fn json_fields_are_snake_case_with_nulls() {
        let value = serde_json::to_value(AuditRecord::default()).unwrap();
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        for key in [
            "time",
            "event",
            "outcome",
            "image",
            "reference",
            "digest",
            "previous",
            "trigger",
            "by",
            "note",
            "generation",
            "duration_ms",
            "message",
            "color",
        ] {
            assert!(keys.contains(&key.to_string()), "{key} missing: {keys:?}");
        }
        assert!(value["digest"].is_null());
    }

    #[test]
    fn read_skips_and_counts_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        append(&path, &record("a", AttemptOutcome::Succeeded)).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"time\":\"2026-11-26T12:0").unwrap();

        let log = read_log(&path).unwrap();

        assert_eq!(log.records, vec![record("a", AttemptOutcome::Succeeded)]);
        assert_eq!(log.skipped, 1);
        assert_eq!(read(&path).unwrap().len(), 1);
    }

    #[test]
    fn append_after_a_torn_line_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        append(&path, &record("a", AttemptOutcome::Succeeded)).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"time\":\"2026-").unwrap();

        append(&path, &record("b", AttemptOutcome::Failed)).unwrap();

        let log = read_log(&path).unwrap();
        assert_eq!(
            log.records,
            vec![
                record("a", AttemptOutcome::Succeeded),
                record("b", AttemptOutcome::Failed)
            ]
        );
        assert_eq!(log.skipped, 1);
    }

    #[test]
    fn read_ignores_blank_lines_and_tolerates_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let line = serde_json::to_string(&record("a", AttemptOutcome::Succeeded)).unwrap();
        let mut bytes = b"\n  \n".to_vec();
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\n{\"image\":\"\xff\xfe\n");
        fs::write(&path, bytes).unwrap();

        let log = read_log(&path).unwrap();

        assert_eq!(log.records, vec![record("a", AttemptOutcome::Succeeded)]);
        assert_eq!(log.skipped, 1);
    }

    #[test]
    fn read_accepts_records_with_missing_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        fs::write(&path, "{\"image\":\"a4f91c2\",\"extra\":1}\n").unwrap();

        let records = read(&path).unwrap();

        assert_eq!(
            records,
            vec![AuditRecord {
                image: "a4f91c2".to_string(),
                ..AuditRecord::default()
            }]
        );
    }

    #[test]
    fn read_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        fs::create_dir(&path).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("audit.jsonl"), "{err}");
    }

    #[test]
    fn append_through_a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let victim = dir.path().join("victim");
        link_to_victim(&path, &victim);

        let err = append(&path, &record("a", AttemptOutcome::Succeeded)).unwrap_err();

        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM);
    }

    #[test]
    fn read_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let victim = dir.path().join("victim.jsonl");
        fs::write(
            &victim,
            serde_json::to_string(&record("a", AttemptOutcome::Succeeded)).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();

        let err = read_log(&path).unwrap_err();

        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn read_and_append_of_a_fifo_do_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        mkfifo(&path);

        let read_path = path.clone();
        let read = within_5s("reading an audit.jsonl that is a FIFO", move || {
            read_log(&read_path).map_err(|e| e.to_string())
        });
        let appended = within_5s("appending to an audit.jsonl that is a FIFO", move || {
            append(&path, &record("a", AttemptOutcome::Succeeded)).map_err(|e| e.to_string())
        });

        assert!(read.unwrap_err().contains("not a regular file"));
        assert!(appended.unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn a_log_larger_than_the_cap_is_read_from_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let line = serde_json::to_string(&record("old", AttemptOutcome::Succeeded)).unwrap() + "\n";
        let old = line.repeat(READ_CAP as usize / line.len() + 1);
        fs::write(&path, old).unwrap();
        append(&path, &record("newest", AttemptOutcome::Succeeded)).unwrap();

        let log = read_log(&path).unwrap();

        assert_eq!(log.records.last().unwrap().image, "newest");
        assert_eq!(log.skipped, 0, "the cut first line is not a torn line");
        assert!(log.records.len() < READ_CAP as usize / line.len() + 2);
    }

    #[test]
    fn appended_log_is_0640_and_a_looser_one_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;

        append(&path, &record("a", AttemptOutcome::Succeeded)).unwrap();
        assert_eq!(mode(&path), 0o640);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        append(&path, &record("b", AttemptOutcome::Succeeded)).unwrap();
        assert_eq!(mode(&path), 0o640);
    }
}
