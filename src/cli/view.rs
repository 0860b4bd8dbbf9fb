//! What a command can see of the state folder, and through which door.
//!
//! Root (or whoever runs the daemon) reads `state_dir` itself. A member of the deploy group
//! may not enter it (0700): it reads what whoever reconciles publishes in `public_dir`
//! ([`crate::state::public`]), the same status without container or hook output, the same
//! history. Every read-only command and every command that follows a deployment goes
//! through a [`View`], so both users see the same screens and get the same exit codes.

use std::path::Path;

use super::CliError;
use crate::config::Config;
use crate::state::audit;
use crate::state::history;
use crate::state::lock;
use crate::state::public::{history_entries, HistoryEntry, Published};
use crate::state::status::Status;
use crate::state::{AUDIT_FILE, STATUS_FILE};

/// Where a command reads the state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// `state_dir` itself.
    Private,
    /// `public_dir`, as published for the deploy group.
    Published,
}

/// Who follows the desired file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Daemon {
    /// A daemon runs and holds the reconcile lock.
    Running { pid: Option<u32> },
    /// Another command holds the lock (a deployment in-process).
    Busy { holder: String },
    /// Nobody: nothing converges the desired file until a daemon starts.
    NotRunning,
}

/// What a command sees of the state.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub door: Door,
    /// The last status written; None before the first pass.
    pub status: Option<Status>,
    /// The history, newest first, with what the audit log knows of each entry.
    pub history: Vec<HistoryEntry>,
    pub daemon: Daemon,
}

impl View {
    /// Reads the state through the door this user has: `state_dir` when it may enter it
    /// (or it does not exist yet), else what is published for the deploy group.
    pub fn read(cfg: &Config) -> Result<View, CliError> {
        match door(cfg) {
            Door::Private => View::private(cfg),
            Door::Published => View::published(cfg),
        }
    }

    fn private(cfg: &Config) -> Result<View, CliError> {
        let status = Status::load(&cfg.state_dir.join(STATUS_FILE))
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let entries =
            history::read(&cfg.history_file).map_err(|e| CliError::Failed(e.to_string()))?;
        let records = audit::read(&cfg.state_dir.join(AUDIT_FILE)).unwrap_or_default();
        let daemon = match lock::is_held(&cfg.state_dir) {
            None => Daemon::NotRunning,
            Some(holder) if holder.starts_with("daemon") => Daemon::Running {
                pid: lock::daemon_pid(&holder).and_then(|p| u32::try_from(p).ok()),
            },
            Some(holder) => Daemon::Busy { holder },
        };
        Ok(View {
            door: Door::Private,
            status,
            history: history_entries(&entries, &records),
            daemon,
        })
    }

    fn published(cfg: &Config) -> Result<View, CliError> {
        let published = Published::load(&cfg.public_dir)
            .map_err(|e| CliError::Invalid(no_view(cfg, &e.to_string())))?
            .ok_or_else(|| {
                CliError::Invalid(no_view(
                    cfg,
                    &format!("nothing is published in {} yet", cfg.public_dir.display()),
                ))
            })?;
        let daemon = match &published.daemon {
            Some(id) if id.is_running() => Daemon::Running { pid: Some(id.pid) },
            _ => Daemon::NotRunning,
        };
        Ok(View {
            door: Door::Published,
            status: Some(published.status),
            history: published.history,
            daemon,
        })
    }

    /// The history's images, newest first.
    pub fn images(&self) -> Vec<String> {
        self.history.iter().map(|e| e.image.clone()).collect()
    }

    /// The digest the last successful deployment of `image` ran, when recorded.
    pub fn recorded_digest(&self, image: &str) -> Option<String> {
        self.history
            .iter()
            .find(|e| e.image == image)
            .and_then(|e| e.digest.clone())
    }

    /// The status as it is now, read again through the same door.
    pub fn status_now(cfg: &Config, door: Door) -> Option<Status> {
        match door {
            Door::Private => Status::load(&cfg.state_dir.join(STATUS_FILE))
                .ok()
                .flatten(),
            Door::Published => Published::load(&cfg.public_dir)
                .ok()
                .flatten()
                .map(|p| p.status),
        }
    }

    /// Whether the daemon still runs, looked at again through the same door.
    pub fn daemon_runs_now(cfg: &Config, door: Door) -> bool {
        match door {
            Door::Private => lock::is_held(&cfg.state_dir).is_some_and(|h| h.starts_with("daemon")),
            Door::Published => Published::load(&cfg.public_dir)
                .ok()
                .flatten()
                .and_then(|p| p.daemon)
                .is_some_and(|id| id.is_running()),
        }
    }
}

/// The door this user has: `state_dir` unless it may not look into it.
pub(crate) fn door(cfg: &Config) -> Door {
    if denied(&cfg.state_dir.join(STATUS_FILE)) || denied(&cfg.history_file) {
        Door::Published
    } else {
        Door::Private
    }
}

/// Opened as every state file is (no symlink followed, no FIFO waited on), so that asking
/// never blocks. Only the kernel's "permission denied" counts: a file refused for what it
/// is (a symlink, a FIFO) is the reader's to report.
fn denied(path: &Path) -> bool {
    match crate::state::file::open_regular(path, std::fs::OpenOptions::new().read(true)) {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::EACCES),
    }
}

/// Why a user who may not read `state_dir` cannot follow the state either, and the fix.
fn no_view(cfg: &Config, why: &str) -> String {
    format!(
        "cannot read the state in {} (it is root's), nor what fieldtrack publishes for the \
         deploy group: {why}. The deploy group reads {}: root runs `fieldtrack init` (or \
         `install -d -m 2750 -g fieldtrack-deploy {}`) and starts the daemon (`systemctl \
         start fieldtrack`); nothing was changed",
        cfg.state_dir.display(),
        cfg.public_dir.display(),
        cfg.public_dir.display()
    )
}
