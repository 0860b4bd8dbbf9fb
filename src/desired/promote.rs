//! `fieldtrack promote`'s request: a small file beside the desired file, in the one folder
//! the deploy group may write, naming the generation and the canary step it ends.
//!
//! The daemon takes a request only for the step it names: a promote sent as step k ends by
//! itself reaches the daemon during step k+1 and is dropped (and logged), so it never ends
//! a step it was not meant for, a manual one included.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::safety::read_safe_file;

/// Name of the request beside the desired file.
pub const PROMOTE_REQUEST: &str = ".fieldtrack-promote";

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The desired generation whose canary it promotes.
    pub generation: String,
    /// The step (1-based) it ends.
    pub step: usize,
}

/// Where the request for the desired file at `desired_file` goes.
pub fn request_path(desired_file: &Path) -> PathBuf {
    crate::state::atomic::parent_dir(desired_file).join(PROMOTE_REQUEST)
}

impl PromoteRequest {
    /// The file's text.
    pub fn render(&self) -> String {
        toml::to_string(self).expect("two plain fields serialize")
    }

    /// Writes the request atomically at `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::state::atomic::write_atomic(path, self.render().as_bytes())
    }

    /// The request at `path`, read and left where it is; None when there is none or it is not
    /// one (junk, a FIFO, a link out of the folder).
    pub fn peek(path: &Path) -> Option<PromoteRequest> {
        let text = read_safe_file(path).ok()?;
        toml::from_str(&text).ok()
    }

    /// Removes the request at `path` (taken, or dropped); a request already gone is fine.
    pub fn remove(path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "cannot remove the promote request")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_as_written_junk_is_none_and_removing_twice_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let path = request_path(&dir.path().join("desired.toml"));
        assert_eq!(PromoteRequest::peek(&path), None);
        let request = PromoteRequest {
            generation: "g1".into(),
            step: 2,
        };
        request.write(&path).unwrap();
        assert_eq!(PromoteRequest::peek(&path), Some(request.clone()));
        assert_eq!(PromoteRequest::peek(&path), Some(request), "peek leaves it");
        PromoteRequest::remove(&path);
        assert!(!path.exists());
        PromoteRequest::remove(&path);
        std::fs::write(&path, "g1\n").unwrap();
        assert_eq!(PromoteRequest::peek(&path), None);
    }
}
