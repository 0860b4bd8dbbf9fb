//! `by-hand.json`: how the daemon answers `fieldtrack reconcile`.
//!
//! The command signals the daemon (SIGUSR1) and must report the outcome of a pass that
//! started after it asked, not of a resync that happened to write `status.json` meanwhile.
//! So the daemon counts its by-hand passes here: `started` when one begins, then
//! `finished` (the same number) with the status it ended on. The command reads `started`
//! before it signals and waits for a larger `finished`.
//!
//! Written whole and atomically by the daemon only (0600, never through a symlink); a
//! missing or unreadable file reads as "no by-hand pass yet".

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic::{parent_dir, write_atomic_with, WriteOptions};
use super::file::{prepare_state_dir, read_capped};
use super::status::Status;

/// Name of the file inside `state_dir`.
pub const BY_HAND_FILE: &str = "by-hand.json";

/// Only the daemon and root's `fieldtrack reconcile` read it.
const MODE: u32 = 0o600;

/// Far more than the file ever holds (two counters and one status).
const READ_CAP: u64 = 1 << 20;

/// The daemon's by-hand passes: how many began, how many ended, and how the last one ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ByHand {
    pub started: u64,
    pub finished: u64,
    /// `status.json` as the last finished by-hand pass left it.
    pub outcome: Option<Status>,
}

impl ByHand {
    /// The file's content; the default when it is missing or unreadable (also a symlink, a
    /// FIFO or an oversized file, which are never followed or read whole).
    pub fn load(path: &Path) -> ByHand {
        read_capped(path, READ_CAP)
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        json.push('\n');
        prepare_state_dir(parent_dir(path))?;
        write_atomic_with(path, json.as_bytes(), WriteOptions::state(MODE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status::Phase;
    use crate::state::test_support::{link_to_victim, mkfifo, within_5s, VICTIM};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_or_corrupt_reads_as_none_yet_and_a_save_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BY_HAND_FILE);
        assert_eq!(ByHand::load(&path), ByHand::default());
        std::fs::write(&path, b"{\"started\": ").unwrap();
        assert_eq!(ByHand::load(&path), ByHand::default());
        let written = ByHand {
            started: 3,
            finished: 2,
            outcome: Some(Status::new(Phase::Converged)),
        };
        written.save(&path).unwrap();
        assert_eq!(ByHand::load(&path), written);
    }

    #[test]
    fn save_through_a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BY_HAND_FILE);
        let victim = dir.path().join("victim");
        link_to_victim(&path, &victim);

        let err = ByHand::default().save(&path).unwrap_err();

        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), VICTIM);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn load_of_a_fifo_does_not_hang_and_reads_as_none_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BY_HAND_FILE);
        mkfifo(&path);

        let loaded = within_5s("loading a by-hand.json that is a FIFO", move || {
            ByHand::load(&path)
        });

        assert_eq!(loaded, ByHand::default());
    }

    #[test]
    fn saved_file_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BY_HAND_FILE);
        ByHand::default().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }
}
