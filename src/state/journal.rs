//! `journal.json` in `state_dir`: what a pass must know of the passes before it that the world
//! itself does not show. The failed generation (not retried until the desired file changes or
//! an operator asks), a retry asked by hand, a switch nginx was not seen to settle on, the
//! previous color kept warm and until when.
//!
//! `observe` reads it and `plan` decides on it; `status.json` is the report and shows the same
//! fields for operators, but nothing reads them back from there. Both files are written by the
//! one [`StatusWriter`](super::writer::StatusWriter), the journal first: a pass keeps these
//! fields in the status it works on, and the journal is that status's part that must survive.
//!
//! An upgrade keeps what the release before knew: without a journal (a state folder written
//! by 0.1.0, which kept these fields in status.json only), they are read from status.json.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{write_atomic_with, WriteOptions};
use super::file::{prepare_state_dir, read_capped};
use super::status::{CanaryMark, PreviewMark, Status, StatusError, SwitchMark, Warm};

/// Name of the file inside `state_dir`.
pub const JOURNAL_FILE: &str = "journal.json";

/// Like status.json: the admin group's commands (`plan`, `status`) read it.
const MODE: u32 = 0o640;

/// Far more than the file ever holds.
const READ_CAP: u64 = 1 << 20;

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal exists but could not be read (or is a symlink, not a regular file, too
    /// large).
    #[error("failed to read the journal {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The journal is not valid journal JSON.
    #[error("the journal {} is corrupt: {source}; move it away and the next pass starts from status.json", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// No journal, and the status.json it is upgraded from could not be read.
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// The content of `journal.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The generation whose attempt failed: not retried until the desired file changes, or
    /// an operator asks for it by hand.
    #[serde(default)]
    pub failed_generation: Option<String>,
    /// The generation an operator asked to retry by hand; the next pass attempts it once.
    #[serde(default)]
    pub retry_asked: Option<String>,
    /// A switch of the upstream file nginx was not seen to settle on.
    #[serde(default)]
    pub switching: Option<SwitchMark>,
    /// The previous color kept running out of nginx, and until when.
    #[serde(default)]
    pub warm: Option<Warm>,
    /// Where a canary stands: its generation, step and when the step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryMark>,
    /// Where a preview stands: its generation, colors and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewMark>,
}

impl Journal {
    /// The part of `status` the journal keeps.
    pub fn of(status: &Status) -> Journal {
        Journal {
            failed_generation: status.failed_generation.clone(),
            retry_asked: status.retry_asked.clone(),
            switching: status.switching.clone(),
            warm: status.warm.clone(),
            canary: status.canary_mark.clone(),
            preview: status.preview_mark.clone(),
        }
    }

    /// Puts the journal's fields into `status` (one read from disk, which may be older).
    pub fn apply_to(&self, status: &mut Status) {
        status.failed_generation = self.failed_generation.clone();
        status.retry_asked = self.retry_asked.clone();
        status.switching = self.switching.clone();
        status.warm = self.warm.clone();
        status.canary_mark = self.canary.clone();
        status.preview_mark = self.preview.clone();
    }

    /// The journal of `state_dir`; without one, what status.json of the release before
    /// holds (an upgrade); empty when neither exists.
    pub fn load(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join(JOURNAL_FILE);
        match read_capped(&path, READ_CAP) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|source| JournalError::Parse { path, source }),
            Ok(None) => {
                let status = Status::load(&state_dir.join(super::STATUS_FILE))?;
                Ok(status.as_ref().map(Journal::of).unwrap_or_default())
            }
            Err(source) => Err(JournalError::Read { path, source }),
        }
    }

    /// Writes `state_dir/journal.json` whole and atomically (never through a symlink).
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        let mut json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        json.push('\n');
        prepare_state_dir(state_dir)?;
        write_atomic_with(
            &state_dir.join(JOURNAL_FILE),
            json.as_bytes(),
            WriteOptions::state(MODE),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Color;
    use crate::state::status::Phase;

    /// A state folder as release 0.1.0 left it, copied from tests/fixtures/state-0.1.0.
    fn fixture(name: &str) -> tempfile::TempDir {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/state-0.1.0")
            .join(name);
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    }

    #[test]
    fn an_upgrade_reads_what_release_0_1_0_kept_in_status_json() {
        let failed = Journal::load(fixture("failed-generation").path()).unwrap();
        assert_eq!(
            failed.failed_generation.as_deref(),
            Some("d52a7f255b3745a7")
        );
        assert_eq!(failed.retry_asked, None);

        let switch = Journal::load(fixture("switch-mark").path()).unwrap();
        assert_eq!(
            switch.switching,
            Some(SwitchMark {
                from: vec![3001],
                to: 3002,
                canary: false
            })
        );

        let warm = Journal::load(fixture("warm-window").path()).unwrap();
        let warm = warm.warm.expect("the warm window");
        assert_eq!((warm.color, warm.id.as_str()), (Color::Blue, "WARM_ID"));
        assert!(warm.until_time().is_some());

        let canary = Journal::load(fixture("canary-mark").path()).unwrap();
        assert!(canary.switching.is_some_and(|m| m.canary && m.to == 3002));
    }

    #[test]
    fn the_journal_once_written_is_what_is_read_whatever_status_json_says() {
        let dir = fixture("failed-generation");
        let journal = Journal {
            failed_generation: None,
            retry_asked: None,
            switching: Some(SwitchMark {
                from: vec![3002],
                to: 3001,
                canary: false,
            }),
            warm: None,
            canary: None,
            preview: None,
        };
        journal.save(dir.path()).unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), journal);
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert!(text.contains("\"to\": 3001"), "{text}");
    }

    #[test]
    fn an_empty_state_folder_has_an_empty_journal_and_a_corrupt_one_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), Journal::default());
        std::fs::write(dir.path().join(JOURNAL_FILE), "{ not json").unwrap();
        let e = Journal::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("journal.json"), "{e}");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn the_journal_is_the_part_of_the_status_that_survives() {
        let mut status = Status::new(Phase::Failed);
        status.failed_generation = Some("g1".into());
        status.retry_asked = Some("g1".into());
        status.message = Some("a report only".into());
        let journal = Journal::of(&status);
        let mut fresh = Status::new(Phase::Converged);
        journal.apply_to(&mut fresh);
        assert_eq!(fresh.failed_generation.as_deref(), Some("g1"));
        assert_eq!(fresh.retry_asked.as_deref(), Some("g1"));
        assert_eq!(fresh.message, None);
    }
}
