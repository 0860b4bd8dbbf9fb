//! The signals.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::mpsc;

use super::{Event, Settings, SourceError, Worker};

/// Turns SIGTERM/SIGINT into [`Event::Stop`], SIGHUP into [`Event::Reload`] and SIGUSR1
/// into [`Event::ByHand`]. Signals are urgent: they wait for room in the channel instead of
/// being dropped. Handlers that cannot be installed stop the daemon before it starts: one
/// that could not hear SIGTERM could not stop at a safe point.
pub fn worker(
    _settings: Settings,
    _errors: mpsc::Sender<SourceError>,
    events: mpsc::Sender<Event>,
) -> Result<Worker, SourceError> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(SourceError::Signals)?;
    Ok(Box::pin(async move {
        while let Some(signal) = signals.next().await {
            let event = match signal {
                SIGHUP => Event::Reload,
                SIGUSR1 => Event::ByHand,
                _ => Event::Stop,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }))
}
