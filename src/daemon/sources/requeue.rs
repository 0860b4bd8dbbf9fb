//! The requeue timer: the next pass the error policy asked for.

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::{Event, Settings, SourceError, Worker};

/// Sends [`Event::Requeue`] when the next pass the loop scheduled (a retry after a
/// transient error, the resync after a pass) is due, once per schedule. It is not dropped
/// when the channel is full: nothing else would bring it again.
pub fn worker(
    settings: Settings,
    _errors: mpsc::Sender<SourceError>,
    events: mpsc::Sender<Event>,
) -> Result<Worker, SourceError> {
    let mut requeue_at = settings.requeue_at;
    Ok(Box::pin(async move {
        loop {
            let scheduled = *requeue_at.borrow_and_update();
            if let Some(due) = scheduled {
                tokio::select! {
                    _ = sleep_until(due) => {
                        if events.send(Event::Requeue { due }).await.is_err() {
                            return;
                        }
                    }
                    changed = requeue_at.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                }
            }
            if requeue_at.changed().await.is_err() {
                return;
            }
        }
    }))
}
