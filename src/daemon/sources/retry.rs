//! The retry timer.

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::{Event, Settings, SourceError, Worker};

/// Sends [`Event::Retry`] when the retry the loop scheduled (after a transient error) is
/// due, once per schedule. A retry is not dropped when the channel is full: nothing else
/// would bring it again.
pub fn worker(
    settings: Settings,
    _errors: mpsc::Sender<SourceError>,
    events: mpsc::Sender<Event>,
) -> Result<Worker, SourceError> {
    let mut retry_at = settings.retry_at;
    Ok(Box::pin(async move {
        loop {
            let scheduled = *retry_at.borrow_and_update();
            if let Some(due) = scheduled {
                tokio::select! {
                    _ = sleep_until(due) => {
                        if events.send(Event::Retry { due }).await.is_err() {
                            return;
                        }
                    }
                    changed = retry_at.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                }
            }
            if retry_at.changed().await.is_err() {
                return;
            }
        }
    }))
}
