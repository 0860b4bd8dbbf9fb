//! The resync timer.

use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::{Event, Settings, SourceError, Worker};

/// Sends [`Event::Resync`] every `rollout.resync`, the period starting again on every reload.
pub fn worker(
    settings: Settings,
    _errors: mpsc::Sender<SourceError>,
    events: mpsc::Sender<Event>,
) -> Result<Worker, SourceError> {
    let mut config = settings.config;
    Ok(Box::pin(async move {
        loop {
            let period = config.borrow_and_update().rollout.resync;
            let mut ticks = interval_at(Instant::now() + period, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        let _ = events.try_send(Event::Resync);
                    }
                    changed = config.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return,
                    },
                }
            }
        }
    }))
}
