//! The daemon's event sources: the desired file's watcher, the requeue timer and the
//! signals. Each is a small worker of the same shape ([`Source`]): it follows the
//! [`Settings`] the loop gives it, sends [`Event`]s into one bounded channel and its
//! errors into another, and never does the work itself. One consumer, the daemon's loop,
//! decides.
//!
//! Reconciling is level-triggered, so an event dropped because the channel is full is
//! harmless: the next one (or the next pass the error policy requeued) brings the loop to the same state of the
//! world. Signals and requeues are the exception: nothing else would bring them again, so
//! they wait for room instead.

mod desired_file;
mod requeue;
mod signals;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;

/// Something the daemon loop reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The desired file (or its folder, after an overflow) changed.
    DesiredChanged,
    /// A complete desired file is in place: renamed over the old one (an atomic write, `mv`)
    /// or closed by its writer. Read at once: there is nothing to wait for.
    DesiredReplaced,
    /// The next pass the error policy asked for at `due` (a retry after a transient error,
    /// or the resync after a pass that ended) is due. One cancelled or rescheduled since is
    /// stale.
    Requeue { due: Instant },
    /// SIGTERM or SIGINT: stop at a safe point (a second one forces the exit).
    Stop,
    /// SIGHUP: reload the config.
    Reload,
    /// SIGUSR1: `fieldtrack reconcile` asks for a pass by hand (it retries a failed
    /// generation).
    ByHand,
}

/// Errors of the sources: setting one up (the daemon then does not start), or one it met
/// while running (sent on the errors channel; the source goes on).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file watcher could not watch the desired file's folder (at start, or after a
    /// reload moved the desired file: the previous watch then stays).
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// The file watcher reported an error while watching: a change may have gone unseen.
    #[error("the file watcher failed: {0}")]
    Watcher(#[source] notify::Error),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// What the sources follow, each the part it needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config, sent again on every reload (SIGHUP), valid or not.
    pub config: watch::Receiver<Config>,
    /// When the next pass is due (the error policy's requeue); None when none is scheduled.
    pub requeue_at: watch::Receiver<Option<Instant>>,
}

/// A source set up and ready to run. It runs until the daemon drops it.
pub type Worker = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The shape of every source: set up with the settings, its errors' channel and the events'
/// channel, or fail (at start, which stops the daemon before it does anything).
pub type Source =
    fn(Settings, mpsc::Sender<SourceError>, mpsc::Sender<Event>) -> Result<Worker, SourceError>;

/// Every source the daemon has.
const SOURCES: [Source; 3] = [desired_file::worker, requeue::worker, signals::worker];

/// Sets every source up and spawns it into one set; dropping the set stops them all.
pub fn spawn(
    settings: &Settings,
    errors: &mpsc::Sender<SourceError>,
    events: &mpsc::Sender<Event>,
) -> Result<JoinSet<()>, SourceError> {
    let mut workers = JoinSet::new();
    for source in SOURCES {
        workers.spawn(source(settings.clone(), errors.clone(), events.clone())?);
    }
    Ok(workers)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    /// One source at work, and the loop's ends of its channels.
    struct Harness {
        config: watch::Sender<Config>,
        requeue_at: watch::Sender<Option<Instant>>,
        errors: mpsc::Receiver<SourceError>,
        events: mpsc::Receiver<Event>,
        _worker: JoinSet<()>,
    }

    impl Harness {
        fn start(source: Source, cfg: Config) -> Result<Harness, SourceError> {
            let (config, config_rx) = watch::channel(cfg);
            let (requeue_at, requeue_rx) = watch::channel(None);
            let (errors_tx, errors) = mpsc::channel(ERRORS);
            let (events_tx, events) = mpsc::channel(EVENTS);
            let settings = Settings {
                config: config_rx,
                requeue_at: requeue_rx,
            };
            let mut worker = JoinSet::new();
            worker.spawn(source(settings, errors_tx, events_tx)?);
            Ok(Harness {
                config,
                requeue_at,
                errors,
                events,
                _worker: worker,
            })
        }

        async fn event_within(&mut self, limit: Duration) -> Option<Event> {
            timeout(limit, self.events.recv()).await.ok().flatten()
        }

        /// The events that come until `quiet` passes without one.
        async fn events_until_quiet(&mut self, quiet: Duration) -> Vec<Event> {
            let mut seen = Vec::new();
            while let Some(event) = self.event_within(quiet).await {
                seen.push(event);
            }
            seen
        }

        fn reload(&self, change: impl FnOnce(&mut Config)) {
            self.config.send_modify(change);
        }
    }

    const EVENTS: usize = 64;
    const ERRORS: usize = 16;
    const QUIET: Duration = Duration::from_millis(200);
    const LIMIT: Duration = Duration::from_secs(5);

    fn cfg(desired_file: &Path, resync: Duration) -> Config {
        let mut cfg = Config::parse(
            "repository = \"ghcr.io/fieldtrack-tech/api\"\n",
            Path::new("/srv/api/fieldtrack.toml"),
            None,
        )
        .unwrap();
        cfg.desired_file = desired_file.to_path_buf();
        cfg.rollout.resync = resync;
        cfg
    }

    fn hour_cfg() -> Config {
        cfg(
            Path::new("/srv/api/desired.toml"),
            Duration::from_secs(3600),
        )
    }

    #[tokio::test]
    async fn requeue_is_sent_once_when_due_with_the_time_it_was_due() {
        let mut harness = Harness::start(requeue::worker, hour_cfg()).unwrap();
        let due = Instant::now() + Duration::from_millis(30);
        harness.requeue_at.send_replace(Some(due));

        assert_eq!(
            harness.event_within(LIMIT).await,
            Some(Event::Requeue { due })
        );
        assert_eq!(harness.events_until_quiet(QUIET).await, vec![]);
    }

    #[tokio::test]
    async fn requeue_cancelled_or_rescheduled_before_it_is_due_is_not_sent() {
        let mut harness = Harness::start(requeue::worker, hour_cfg()).unwrap();
        harness
            .requeue_at
            .send_replace(Some(Instant::now() + Duration::from_millis(30)));
        harness.requeue_at.send_replace(None);
        assert_eq!(harness.events_until_quiet(QUIET).await, vec![]);

        harness
            .requeue_at
            .send_replace(Some(Instant::now() + Duration::from_millis(30)));
        let later = Instant::now() + Duration::from_millis(80);
        harness.requeue_at.send_replace(Some(later));
        assert_eq!(
            harness.events_until_quiet(QUIET).await,
            vec![Event::Requeue { due: later }]
        );
    }

    /// Writes `path` until the watcher says so, since a watch set up after a reload is in
    /// place only some time after the reload.
    async fn write_until_seen(harness: &mut Harness, path: &Path) -> Event {
        for _ in 0..25 {
            fs::write(path, "image = \"v1\"\n").unwrap();
            if let Some(event) = harness.event_within(QUIET).await {
                return event;
            }
        }
        panic!("no event for {}", path.display());
    }

    #[tokio::test]
    async fn watcher_sees_only_the_desired_file_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let desired_file = dir.path().join("desired.toml");
        let mut harness = Harness::start(
            desired_file::worker,
            cfg(&desired_file, Duration::from_secs(3600)),
        )
        .unwrap();

        fs::write(dir.path().join("status.json"), "{}").unwrap();
        assert_eq!(harness.events_until_quiet(QUIET).await, vec![]);

        let first = write_until_seen(&mut harness, &desired_file).await;
        assert!(
            matches!(first, Event::DesiredChanged | Event::DesiredReplaced),
            "{first:?}"
        );
        let rest = harness.events_until_quiet(QUIET).await;
        assert!(
            rest.contains(&Event::DesiredReplaced),
            "closed by its writer: {rest:?}"
        );

        let temp = dir.path().join("desired.toml.tmp");
        fs::write(&temp, "image = \"v2\"\n").unwrap();
        harness.events_until_quiet(QUIET).await;
        fs::rename(&temp, &desired_file).unwrap();
        assert_eq!(
            harness.event_within(LIMIT).await,
            Some(Event::DesiredReplaced),
            "renamed into place"
        );
    }

    #[tokio::test]
    async fn watcher_follows_a_desired_file_moved_by_a_reload_and_keeps_the_old_watch_when_it_cannot(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        fs::create_dir_all(&old).unwrap();
        fs::create_dir_all(&new).unwrap();
        let mut harness = Harness::start(
            desired_file::worker,
            cfg(&old.join("desired.toml"), Duration::from_secs(3600)),
        )
        .unwrap();

        harness.reload(|cfg| cfg.desired_file = new.join("desired.toml"));
        write_until_seen(&mut harness, &new.join("desired.toml")).await;

        let missing = dir.path().join("missing");
        harness.reload(|cfg| cfg.desired_file = missing.join("desired.toml"));
        let error = timeout(LIMIT, harness.errors.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&error, SourceError::Watch { path, .. } if path == &missing),
            "{error:?}"
        );
        harness.events_until_quiet(QUIET).await;
        write_until_seen(&mut harness, &new.join("desired.toml")).await;
    }

    #[tokio::test]
    async fn watcher_that_cannot_watch_at_start_fails_its_setup() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let result = Harness::start(
            desired_file::worker,
            cfg(&missing.join("desired.toml"), Duration::from_secs(3600)),
        );
        assert!(
            matches!(&result, Err(SourceError::Watch { path, .. }) if path == &missing),
            "{:?}",
            result.err()
        );
    }
}
