//! The daemon's event sources. Each is a small worker with the same shape: it feeds one
//! bounded channel and never does the work itself. Reconciling is level-triggered, so an
//! event dropped because the channel is full is harmless: the next one (or the resync
//! timer) brings the loop to the same state of the world.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use notify::{RecursiveMode, Watcher};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::mpsc;

/// Something the daemon loop reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The desired file (or its folder, after an overflow) changed.
    DesiredChanged,
    /// A complete desired file is in place: renamed over the old one (an atomic write, `mv`)
    /// or closed by its writer. Read at once: there is nothing to wait for.
    DesiredReplaced,
    /// Time for a periodic full reconcile.
    Resync,
    /// SIGTERM or SIGINT: stop at a safe point (a second one forces the exit).
    Stop,
    /// SIGHUP: reload the config.
    Reload,
    /// SIGUSR1: `fieldtrack reconcile` asks for a pass by hand (it retries a failed
    /// generation).
    ByHand,
}

/// Errors setting a source up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file watcher could not watch the desired file's folder.
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Watches the desired file's parent folder (not the file: editors and `mv` replace the
/// file, and a watch on a replaced inode goes deaf). Every path of every event is checked
/// against the file name, since a rename carries the temp name first; an overflow (rescan)
/// counts as a change. The callback only `try_send`s.
pub fn watch_desired(
    desired_file: &Path,
    tx: mpsc::Sender<Event>,
) -> Result<notify::RecommendedWatcher, SourceError> {
    let folder = desired_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = desired_file.file_name().map(|n| n.to_os_string());
    let watch_error = |source| SourceError::Watch {
        path: folder.clone(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
        let is_ours = |p: &PathBuf| p.file_name().map(|n| n.to_os_string()) == name;
        let sent = match &event {
            Ok(event) => match event.kind {
                // Written and closed, or renamed into place: complete.
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                    if event.paths.last().is_some_and(is_ours) =>
                {
                    Some(Event::DesiredReplaced)
                }
                // Opening and reading the file (ours included) changes nothing.
                _ if event.kind.is_access() => None,
                _ if event.need_rescan() || event.paths.iter().any(is_ours) => {
                    Some(Event::DesiredChanged)
                }
                _ => None,
            },
            // An error from the watcher may hide a change: look again.
            Err(_) => Some(Event::DesiredChanged),
        };
        if let Some(event) = sent {
            let _ = tx.try_send(event);
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    Ok(watcher)
}

/// Sends [`Event::Resync`] every `period`.
pub fn resync_timer(period: Duration, tx: mpsc::Sender<Event>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let _ = tx.try_send(Event::Resync);
        }
    })
}

/// Turns SIGTERM/SIGINT into [`Event::Stop`], SIGHUP into [`Event::Reload`] and SIGUSR1
/// into [`Event::ByHand`]. Signals are
/// urgent: they wait for room in the channel instead of being dropped.
pub fn signals(tx: mpsc::Sender<Event>) -> Result<tokio::task::JoinHandle<()>, SourceError> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(SourceError::Signals)?;
    Ok(tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            let event = match signal {
                SIGHUP => Event::Reload,
                SIGUSR1 => Event::ByHand,
                _ => Event::Stop,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }))
}
