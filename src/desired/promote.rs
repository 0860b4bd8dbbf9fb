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

/// What the running canary makes of the request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No request (or one that is not a request: junk, a FIFO, a link out of the folder).
    None,
    /// For this generation and this step: the step ends now.
    Promote,
    /// For another generation or another step: dropped.
    Ignored(PromoteRequest),
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
    /// one (junk, a FIFO, a link out of the folder: [`PromoteRequest::take`] drops those).
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

    /// Reads the request at `path` and removes it whatever it holds (a request is taken
    /// once); judged against the canary of `generation` at `step`.
    pub fn take(path: &Path, generation: &str, step: usize) -> Verdict {
        let text = match read_safe_file(path) {
            Ok(text) => Some(text),
            Err(crate::config::SafetyError::Inspect { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Verdict::None
            }
            Err(_) => None,
        };
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(error = %e, file = %path.display(), "cannot remove the promote request");
        }
        let Some(request) = text.and_then(|t| toml::from_str::<PromoteRequest>(&t).ok()) else {
            tracing::warn!(file = %path.display(), "dropped a promote request that is not one");
            return Verdict::None;
        };
        if request.generation == generation && request.step == step {
            Verdict::Promote
        } else {
            Verdict::Ignored(request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_ends_only_the_step_it_names_and_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = request_path(&dir.path().join("desired.toml"));
        let ask = |step| {
            PromoteRequest {
                generation: "g1".into(),
                step,
            }
            .write(&path)
            .unwrap()
        };
        assert_eq!(PromoteRequest::take(&path, "g1", 1), Verdict::None);
        ask(1);
        assert_eq!(PromoteRequest::take(&path, "g1", 1), Verdict::Promote);
        assert!(!path.exists());
        // Sent while step 1 ran, read once step 2 had begun: step 2 stays.
        ask(1);
        assert!(matches!(
            PromoteRequest::take(&path, "g1", 2),
            Verdict::Ignored(PromoteRequest { step: 1, .. })
        ));
        ask(2);
        assert!(matches!(
            PromoteRequest::take(&path, "g2", 2),
            Verdict::Ignored(_)
        ));
        std::fs::write(&path, "g1\n").unwrap();
        assert_eq!(PromoteRequest::take(&path, "g1", 1), Verdict::None);
        assert!(!path.exists());
    }
}
