//! The desired file's watcher.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Event, Settings, SourceError, Worker};

/// Watches the folder of the config's desired file, and the new one's after a reload moved
/// it; a folder that cannot be watched then is reported and the previous watch kept.
pub fn worker(
    settings: Settings,
    errors: mpsc::Sender<SourceError>,
    events: mpsc::Sender<Event>,
) -> Result<Worker, SourceError> {
    let mut config = settings.config;
    let mut watched = config.borrow_and_update().desired_file.clone();
    let mut watcher = watch(&watched, errors.clone(), events.clone())?;
    Ok(Box::pin(async move {
        while config.changed().await.is_ok() {
            let wanted = config.borrow_and_update().desired_file.clone();
            if wanted == watched {
                continue;
            }
            match watch(&wanted, errors.clone(), events.clone()) {
                Ok(new) => {
                    watcher = new;
                    watched = wanted;
                }
                Err(e) => {
                    let _ = errors.try_send(e);
                }
            }
        }
        // The watch lasts as long as the worker.
        drop(watcher);
    }))
}

/// Watches the desired file's parent folder (not the file: editors and `mv` replace the
/// file, and a watch on a replaced inode goes deaf). Every path of every event is checked
/// against the file name, since a rename carries the temp name first; an overflow (rescan)
/// counts as a change. The callback never blocks: it only `try_send`s, events and errors
/// each on their own channel.
fn watch(
    desired_file: &Path,
    errors: mpsc::Sender<SourceError>,
    events: mpsc::Sender<Event>,
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
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                let _ = errors.try_send(SourceError::Watcher(e));
                return;
            }
        };
        let is_ours = |p: &PathBuf| p.file_name().map(|n| n.to_os_string()) == name;
        let sent = match event.kind {
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
        };
        if let Some(event) = sent {
            let _ = events.try_send(event);
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    Ok(watcher)
}
