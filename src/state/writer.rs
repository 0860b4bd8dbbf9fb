//! The one writer of `status.json`, of the journal ([`crate::state::journal`]) and of what
//! it publishes for the deploy group ([`crate::state::public`]) after every write.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::audit::AuditRecord;
use super::journal::Journal;
use super::public::{DaemonId, HistoryEntry, Published};
use super::status::{Phase, Status, StatusError};

/// The one writer of `status.json`, and of what it publishes for the deploy group.
///
/// Every status write of a process goes through one of these (a daemon builds one for its
/// whole life and hands it to every pass), under one lock, starting from the status it wrote
/// last: a change made beside a pass (the daemon marking the desired file invalid) is made
/// to what the pass wrote, so neither loses the other's fields (a switch mark, a failed
/// generation).
#[derive(Debug)]
pub struct StatusWriter {
    path: PathBuf,
    /// The state folder, where the journal is written.
    state_dir: PathBuf,
    public: Option<PublicTarget>,
    daemon: Mutex<Option<DaemonId>>,
    /// The status written last (None until one is, or read from disk).
    last: Mutex<Option<Status>>,
    /// The history and outcomes published last, and the files' identities they came from:
    /// read again only when either file changed.
    published: Mutex<Option<PublishedCache>>,
}

/// Where and from what the published status is made.
#[derive(Debug, Clone)]
struct PublicTarget {
    dir: PathBuf,
    history_file: PathBuf,
    audit_file: PathBuf,
}

/// What was published last: the files it came from, the history entries, the deployments'
/// audit records the outcomes are made of.
type PublishedCache = (FilesSeen, Vec<HistoryEntry>, Vec<AuditRecord>);

/// (length, modification time, inode) of the history file and the audit log.
type FilesSeen = [Option<(u64, i64, i64, u64)>; 2];

fn seen(path: &Path) -> Option<(u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

impl StatusWriter {
    /// Writes `state_dir/status.json` only (a test's, or a command's that publishes nothing).
    pub fn private(state_dir: &Path) -> StatusWriter {
        StatusWriter {
            path: state_dir.join(super::STATUS_FILE),
            state_dir: state_dir.to_path_buf(),
            public: None,
            daemon: Mutex::new(None),
            last: Mutex::new(None),
            published: Mutex::new(None),
        }
    }

    /// Writes `state_dir/status.json` and publishes into `public_dir` after each write.
    pub fn new(state_dir: &Path, public_dir: &Path, history_file: &Path) -> StatusWriter {
        StatusWriter {
            public: Some(PublicTarget {
                dir: public_dir.to_path_buf(),
                history_file: history_file.to_path_buf(),
                audit_file: state_dir.join(super::AUDIT_FILE),
            }),
            ..StatusWriter::private(state_dir)
        }
    }

    /// The daemon that writes from now on, as the published status names it.
    pub fn set_daemon(&self, daemon: Option<DaemonId>) {
        *self.daemon.lock().unwrap_or_else(|e| e.into_inner()) = daemon;
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The status written last: by this writer, else as on disk (None when there is none
    /// or it is unreadable).
    pub fn last(&self) -> Option<Status> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(status) => Some(status.clone()),
            None => Status::load(&self.path).ok().flatten(),
        }
    }

    /// Writes the journal's part of `status`, then `status` ([`Status::save`]), then
    /// publishes it.
    pub fn save(&self, status: &mut Status) -> Result<(), StatusError> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.write_journal(status)?;
        status.save(&self.path)?;
        *last = Some(status.clone());
        self.publish(status);
        Ok(())
    }

    /// Changes the status written last (or on disk, or a new one in `phase`) with `f` and
    /// writes it, all under the writer's lock.
    pub fn update(&self, phase: Phase, f: impl FnOnce(&mut Status)) -> Result<(), StatusError> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut status = match &*last {
            Some(status) => status.clone(),
            None => Status::load(&self.path)
                .ok()
                .flatten()
                .unwrap_or_else(|| Status::new(phase)),
        };
        f(&mut status);
        self.write_journal(&status)?;
        status.save(&self.path)?;
        *last = Some(status.clone());
        self.publish(&status);
        Ok(())
    }

    /// The journal first: what the next pass decides on must not lag behind the report.
    fn write_journal(&self, status: &Status) -> Result<(), StatusError> {
        let path = self.state_dir.join(super::journal::JOURNAL_FILE);
        Journal::of(status)
            .save(&self.state_dir)
            .map_err(|source| StatusError::WriteJournal { path, source })
    }

    /// Publishes `status` for the deploy group; a failure is logged, never fatal: the
    /// published file is a report of the report.
    fn publish(&self, status: &Status) {
        let Some(target) = &self.public else {
            return;
        };
        let files = [seen(&target.history_file), seen(&target.audit_file)];
        let mut cache = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().map(|(f, _, _)| f) != Some(&files) {
            let history = super::history::read(&target.history_file).unwrap_or_default();
            let records = super::audit::read(&target.audit_file).unwrap_or_default();
            let entries = super::public::history_entries(&history, &records);
            // The outcomes need only the last deployments' records.
            let deploys: Vec<AuditRecord> = records
                .into_iter()
                .rev()
                .filter(|r| r.is_deploy())
                .take(16)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            *cache = Some((files, entries, deploys));
        }
        let (_, entries, records) = cache.as_ref().expect("just filled");
        let daemon = self
            .daemon
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut published = Published::new(status, daemon, &[], records);
        published.history = entries.clone();
        if let Err(e) = published.save(&target.dir) {
            tracing::warn!(error = %e, "cannot publish the status for the deploy group");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status::SwitchMark;

    /// The daemon marks the desired file invalid while a pass writes its switch marks: the
    /// marks on disk never go back, whichever writes when (the daemon's read-modify-write
    /// from the file used to put an older status back).
    #[test]
    fn a_change_beside_a_pass_never_puts_an_older_status_back() {
        let dir = tempfile::tempdir().unwrap();
        let writer = std::sync::Arc::new(StatusWriter::private(dir.path()));
        let path = writer.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pass = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for to in 1..=400u16 {
                    let mut status = Status::new(Phase::Progressing);
                    status.switching = Some(SwitchMark {
                        from: vec![3001],
                        to,
                        canary: false,
                    });
                    writer.save(&mut status).unwrap();
                }
            })
        };
        let daemon = {
            let (writer, stop) = (writer.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    writer
                        .update(Phase::Invalid, |s| s.message = Some("bad file".into()))
                        .unwrap();
                }
            })
        };
        let mut seen = 0;
        while !pass.is_finished() {
            if let Ok(Some(status)) = Status::load(&path) {
                let to = status.switching.map_or(0, |m| m.to);
                assert!(to >= seen, "the switch mark went back from {seen} to {to}");
                seen = to;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pass.join().unwrap();
        daemon.join().unwrap();
        let last = Status::load(&path).unwrap().unwrap();
        assert_eq!(last.switching.map(|m| m.to), Some(400));
    }
}
