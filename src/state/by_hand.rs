//! `by-hand.json`: how the daemon answers `fieldtrack reconcile`.
//!
//! The command signals the daemon (SIGUSR1) and must report the outcome of a pass that
//! started after it asked, not of a resync that happened to write `status.json` meanwhile.
//! So the daemon counts its by-hand passes here: `started` when one begins, then
//! `finished` (the same number) with the status it ended on. The command reads `started`
//! before it signals and waits for a larger `finished`.
//!
//! Written whole and atomically by the daemon only; a missing or unreadable file reads as
//! "no by-hand pass yet".

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use super::status::Status;

/// Name of the file inside `state_dir`.
pub const BY_HAND_FILE: &str = "by-hand.json";

/// The daemon's by-hand passes: how many began, how many ended, and how the last one ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ByHand {
    pub started: u64,
    pub finished: u64,
    /// `status.json` as the last finished by-hand pass left it.
    pub outcome: Option<Status>,
}

impl ByHand {
    /// The file's content; the default when it is missing or unreadable.
    pub fn load(path: &Path) -> ByHand {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        json.push('\n');
        write_atomic(path, json.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status::Phase;

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
}
