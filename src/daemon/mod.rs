//! `fieldtrack daemon`: the long-running reconciler.
//!
//! One consumer loop owns all decisions; the sources ([`sources`]) only feed it events. A
//! desired file renamed into place or closed by its writer is read at once; any other change
//! is debounced on the trailing edge, then the whole file is read again. A file that does not parse may be half-written (scp writes in place), so it is
//! read once more after the writer has been quiet before it is reported `invalid`; the last
//! good desired state stays in force meanwhile. A new generation cancels a running attempt
//! at its next safe point (before the switch), then runs. The resync timer runs the same
//! full pass, which is what repairs drift.
//!
//! Passes run in a task beside the loop, so signals and file events are handled while a
//! pass works. The loop pings the systemd watchdog itself: if the loop hangs, systemd
//! restarts the daemon, and the restarted one finds the same truth (nothing is kept only in
//! memory).

pub mod sources;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::apply::health::HealthError;
use crate::apply::runtime::{Docker, RuntimeError};
use crate::config::{Config, ConfigError};
use crate::desired::{Desired, DesiredError, DesiredErrorKind};
use crate::metrics::Metrics;
use crate::plan::{plan, Verdict};
use crate::reconcile::{
    error_policy, Backoff, LiveContext, Pass, PassOutcome, ReconcileError, Requeue, Trigger,
};
use crate::state::by_hand::{ByHand, BY_HAND_FILE};
use crate::state::lock::{self, LockError};
use crate::state::status::Status;
use crate::state::STATUS_FILE;
use sources::{Event, SourceError};

/// Quiet time after the last file event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Quiet time before a file that did not parse is read again and, if still bad, reported.
const PARSE_QUIET: Duration = Duration::from_secs(1);
/// How long a starting daemon waits for the lock of a previous daemon (which may be exiting)
/// before it refuses to run beside it.
const PREVIOUS_DAEMON_WAIT: Duration = Duration::from_secs(5);
/// Transient errors are retried after 1 s, doubling up to 5 min, without end.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 2);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config could not be loaded at start.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The reconcile lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Another daemon already runs for this state folder.
    #[error("another daemon already reconciles this app: {0}")]
    AlreadyRunning(String),
    /// An event source could not be set up.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The health prober could not be built.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// The metrics endpoint could not be served.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// A pass running beside the loop.
struct Running {
    handle: JoinHandle<Result<PassOutcome, ReconcileError>>,
    cancel: CancellationToken,
    desired: Desired,
    /// The number of this by-hand pass in `by-hand.json`, when it is one.
    by_hand: Option<u64>,
}

/// The loop's state. Everything here can be lost without harm: a restarted daemon rebuilds
/// it from the files and the real world.
struct Daemon {
    config_path: PathBuf,
    cfg: Config,
    docker: Option<Docker>,
    /// What the passes share, built from `cfg` and `docker`; dropped when either changes.
    context: Option<Arc<LiveContext>>,
    /// The last desired state that parsed and validated; stays in force while the file is bad.
    desired: Option<Desired>,
    running: Option<Running>,
    /// A pass is wanted as soon as the running one ends (new generation, resync).
    pass_wanted: Option<Trigger>,
    /// `fieldtrack reconcile` asked (SIGUSR1) and no by-hand pass has started since: the
    /// next pass to start is one, whatever else asked for it (a retry after an error too).
    by_hand_pending: bool,
    /// When to read the desired file (trailing-edge debounce).
    read_at: Option<Instant>,
    /// The last read did not parse: read once more after quiet before reporting it.
    parse_retry: bool,
    /// When to retry after a transient error.
    retry_at: Option<Instant>,
    backoff: Backoff,
    stopping: bool,
    ready_sent: bool,
    /// Shared by every pass and the metrics endpoint.
    metrics: Arc<Metrics>,
    /// Why the desired file's last read was unusable. While set, status.json keeps saying
    /// `invalid`, also after the passes that go on toward the last good desired state; the
    /// next good read clears it and asks for a pass, even with the same generation as
    /// before, so the status tells the truth again.
    invalid: Option<String>,
}

/// Runs the daemon until a stop signal; Ok(exit code).
pub async fn run(config_path: PathBuf, cfg: Config) -> Result<u8, DaemonError> {
    let _lock = match lock::try_acquire(&cfg.state_dir, "daemon") {
        Ok(lock) => lock,
        // A daemon on its way out (killed, and its supervisor restarting us at once) can
        // still hold the lock for a moment: give it a few seconds before calling it a
        // second daemon.
        Err(LockError::Held { holder }) if holder.starts_with("daemon") => {
            tracing::info!(%holder, "waiting up to 5s for the previous daemon's lock");
            match lock::acquire_waiting(&cfg.state_dir, "daemon", PREVIOUS_DAEMON_WAIT).await {
                Ok(lock) => lock,
                Err(LockError::Held { holder }) => return Err(DaemonError::AlreadyRunning(holder)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(LockError::Held { holder }) => {
            tracing::info!(%holder, "waiting for the reconcile lock");
            lock::acquire_waiting(&cfg.state_dir, "daemon", Duration::from_secs(3600)).await?
        }
        Err(e) => return Err(e.into()),
    };

    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let mut watcher = sources::watch_desired(&cfg.desired_file, tx.clone())?;
    let mut resync = sources::resync_timer(cfg.rollout.resync, tx.clone());
    let _signals = sources::signals(tx.clone())?;
    let mut watchdog = watchdog_interval();
    let metrics = Arc::new(Metrics::new());
    let _metrics_server = match cfg.metrics.listen {
        Some(listen) => {
            let server = crate::metrics::serve(metrics.clone(), listen).await?;
            tracing::info!(%listen, "metrics served on http://{listen}/metrics");
            Some(server)
        }
        None => None,
    };
    tracing::info!(
        desired_file = %cfg.desired_file.display(),
        resync = %humantime::format_duration(cfg.rollout.resync),
        "daemon started"
    );

    let mut d = Daemon {
        config_path,
        cfg,
        docker: None,
        context: None,
        desired: None,
        running: None,
        pass_wanted: Some(Trigger::Start),
        by_hand_pending: false,
        read_at: Some(Instant::now()),
        parse_retry: false,
        retry_at: None,
        backoff: BACKOFF,
        stopping: false,
        ready_sent: false,
        metrics,
        invalid: None,
    };

    loop {
        if d.stopping && d.running.is_none() {
            tracing::info!("stopped");
            return Ok(0);
        }
        if d.running.is_none() && !d.stopping && d.read_at.is_none() {
            if let Some(trigger) = d.pass_wanted.take() {
                d.start_pass(trigger).await;
            }
        }
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::DesiredChanged) => {
                    let quiet = if d.parse_retry { PARSE_QUIET } else { DEBOUNCE };
                    d.read_at = Some(Instant::now() + quiet);
                }
                Some(Event::DesiredReplaced) => d.read_at = Some(Instant::now()),
                Some(Event::Resync) => {
                    d.read_at.get_or_insert(Instant::now());
                    d.pass_wanted.get_or_insert(Trigger::Resync);
                }
                Some(Event::Stop) => {
                    if d.stopping {
                        tracing::warn!("second stop signal: exiting at once");
                        return Ok(130);
                    }
                    tracing::info!("stop signal: finishing at the next safe point");
                    d.stopping = true;
                    if let Some(running) = &d.running {
                        running.cancel.cancel();
                    }
                }
                Some(Event::ByHand) => {
                    tracing::info!("reconcile asked for by hand");
                    d.read_at.get_or_insert(Instant::now());
                    d.pass_wanted = Some(Trigger::ByHand);
                    d.by_hand_pending = true;
                }
                Some(Event::Reload) => {
                    if let Some(new_desired_file) = d.reload_config() {
                        match sources::watch_desired(&new_desired_file, tx.clone()) {
                            Ok(w) => watcher = w,
                            Err(e) => tracing::error!(error = %e, "keeping the old watcher"),
                        }
                    }
                    resync.abort();
                    resync = sources::resync_timer(d.cfg.rollout.resync, tx.clone());
                }
                None => return Ok(0),
            },
            _ = sleep_until(d.read_at.unwrap_or(far)), if d.read_at.is_some() => {
                d.read_at = None;
                d.read_desired();
            }
            _ = sleep_until(d.retry_at.unwrap_or(far)), if d.retry_at.is_some() => {
                d.retry_at = None;
                d.pass_wanted.get_or_insert(Trigger::Retry);
            }
            result = async { (&mut d.running.as_mut().expect("guarded").handle).await }, if d.running.is_some() => {
                let running = d.running.take().expect("guarded");
                d.finish_pass(running, result);
            }
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
        // The watcher must live as long as the loop.
        let _ = &watcher;
    }
}

impl Daemon {
    /// Reads the desired file; a new generation cancels the running attempt and asks for a pass.
    fn read_desired(&mut self) {
        match Desired::load(&self.cfg.desired_file, &self.cfg) {
            Ok(desired) => {
                self.parse_retry = false;
                let changed =
                    self.desired.as_ref().map(|d| &d.generation) != Some(&desired.generation);
                let was_invalid = self.invalid.take().is_some();
                if !changed && was_invalid {
                    self.pass_wanted.get_or_insert(Trigger::File);
                }
                if changed {
                    tracing::info!(generation = %desired.generation, image = %desired.image, "new desired generation");
                    if let Some(running) = &self.running {
                        if running.desired.generation != desired.generation {
                            running.cancel.cancel();
                        }
                    }
                    self.desired = Some(desired);
                    self.retry_at = None;
                    self.backoff.reset();
                    self.pass_wanted = Some(Trigger::File);
                }
            }
            Err(e) if e.kind() == DesiredErrorKind::Parse && !self.parse_retry => {
                // Maybe half-written: look again once the writer has been quiet.
                tracing::debug!(error = %e, "desired file does not parse yet; reading again after quiet");
                self.parse_retry = true;
                self.read_at = Some(Instant::now() + PARSE_QUIET);
            }
            Err(e) => {
                self.parse_retry = false;
                self.report_invalid(&e);
            }
        }
    }

    /// Status `invalid` with the reason; the last good desired state stays in force.
    fn report_invalid(&mut self, e: &DesiredError) {
        let kept = match &self.desired {
            Some(d) => format!(
                "; still converging toward {} (generation {})",
                d.image, d.generation
            ),
            None => String::new(),
        };
        tracing::error!(error = %e, "desired file unusable{kept}");
        let message = format!("{e}{kept}");
        self.write_invalid_status(&message);
        self.invalid = Some(message);
    }

    /// `phase: invalid` with `message`, keeping the rest of the last status.
    fn write_invalid_status(&self, message: &str) {
        let path = self.cfg.state_dir.join(STATUS_FILE);
        if let Err(e) = Status::mark_invalid(&path, message) {
            tracing::error!(error = %e, "cannot write the status");
        }
    }

    /// Spawns a pass toward the last good desired state.
    async fn start_pass(&mut self, trigger: Trigger) {
        let trigger = if self.by_hand_pending {
            Trigger::ByHand
        } else {
            trigger
        };
        let Some(desired) = self.desired.clone() else {
            if !self.ready_sent {
                self.ready();
            }
            return;
        };
        let Some(ctx) = self.context().await else {
            return;
        };
        if !self.ready_sent {
            // READY=1 after the first observation of the world.
            match ctx.observe().await {
                Ok(observed) => {
                    let live = observed.live(&ctx.cfg).map(|c| c.name.clone());
                    tracing::info!(live = ?live, history = ?observed.history, "first observation");
                }
                Err(e) => tracing::warn!(error = %e, "first observation failed"),
            }
            self.ready();
        }
        let by_hand = trigger == Trigger::ByHand;
        let number = by_hand.then(|| self.by_hand_started());
        let cancel = CancellationToken::new();
        let pass_cancel = cancel.clone();
        let pass_desired = desired.clone();
        let file_unusable = self.invalid.is_some();
        let handle = tokio::spawn(async move {
            if file_unusable {
                if let Some(outcome) = nothing_to_repair(&ctx, &pass_desired, by_hand).await {
                    return Ok(outcome);
                }
            }
            let pass = Pass::new(&ctx, trigger).with_cancel(pass_cancel);
            let result = pass.reconcile(&pass_desired, by_hand).await;
            if let Err(e) = &result {
                // The pass records the failure itself: it knows the status.
                let _ = pass.record_failure(&pass_desired, e);
            }
            result
        });
        self.running = Some(Running {
            handle,
            cancel,
            desired,
            by_hand: number,
        });
    }

    /// The context of the next pass: the one built before, unless the config or the engine
    /// changed since. None when the engine cannot be reached (a retry is scheduled) or the
    /// health prober cannot be built.
    async fn context(&mut self) -> Option<Arc<LiveContext>> {
        if let Some(ctx) = &self.context {
            return Some(ctx.clone());
        }
        let docker = match self.docker.clone() {
            Some(docker) => docker,
            None => match Docker::connect(&self.cfg.docker.host).await {
                Ok(docker) => {
                    tracing::info!(api = %docker.api_version(), "connected to the docker engine");
                    self.docker = Some(docker.clone());
                    docker
                }
                Err(e) => {
                    self.metrics.reconcile_error("transient");
                    self.requeue(&ReconcileError::Runtime(e));
                    return None;
                }
            },
        };
        match LiveContext::live(self.cfg.clone(), docker) {
            Ok(ctx) => {
                let ctx = Arc::new(ctx.with_metrics(self.metrics.clone()));
                self.context = Some(ctx.clone());
                Some(ctx)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot build the health prober");
                None
            }
        }
    }

    /// Counts a by-hand pass as started in `by-hand.json`; its number.
    fn by_hand_started(&mut self) -> u64 {
        self.by_hand_pending = false;
        let path = self.cfg.state_dir.join(BY_HAND_FILE);
        let mut log = ByHand::load(&path);
        log.started = log.started.max(log.finished) + 1;
        if let Err(e) = log.save(&path) {
            tracing::error!(error = %e, path = %path.display(), "cannot write");
        }
        log.started
    }

    /// Records by-hand pass `number` as finished, with the status it left.
    fn by_hand_finished(&self, number: u64) {
        let path = self.cfg.state_dir.join(BY_HAND_FILE);
        let mut log = ByHand::load(&path);
        log.finished = number;
        log.outcome = Status::load(&self.cfg.state_dir.join(STATUS_FILE))
            .ok()
            .flatten();
        if let Err(e) = log.save(&path) {
            tracing::error!(error = %e, path = %path.display(), "cannot write");
        }
    }

    fn ready(&mut self) {
        self.ready_sent = true;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }

    /// Applies the error policy to a finished pass.
    fn finish_pass(
        &mut self,
        running: Running,
        result: Result<Result<PassOutcome, ReconcileError>, tokio::task::JoinError>,
    ) {
        // A pass that repaired drift toward the last good desired state wrote its own
        // status; the desired file is still unusable, and that is what it must keep saying.
        if let Some(message) = &self.invalid {
            self.write_invalid_status(message);
        }
        // Every line about the pass's outcome names its generation and image.
        let desired = &running.desired;
        let _span =
            tracing::info_span!("pass", generation = %desired.generation, image = %desired.image)
                .entered();
        match result {
            Ok(Ok(outcome)) => {
                tracing::info!(?outcome, "pass done");
                self.backoff.reset();
            }
            Ok(Err(e)) if e.is_cancellation() => {
                tracing::info!("attempt cancelled");
                self.pass_wanted.get_or_insert(Trigger::File);
            }
            Ok(Err(e)) => self.requeue(&e),
            Err(e) => {
                let delay = self.backoff.next_delay();
                tracing::error!(error = %e, retry_in = ?delay, "pass panicked; retrying");
                self.retry_at = Some(Instant::now() + delay);
            }
        }
        if let Some(number) = running.by_hand {
            self.by_hand_finished(number);
        }
    }

    /// Applies the error policy: a transient error comes back after the delay it returns,
    /// a permanent one waits for the desired file to change.
    fn requeue(&mut self, e: &ReconcileError) {
        match error_policy(e, &mut self.backoff) {
            Requeue::After(delay) => {
                tracing::warn!(error = %e, retry_in = ?delay, "transient error");
                if matches!(e, ReconcileError::Runtime(RuntimeError::Unreachable { .. })) {
                    self.docker = None;
                    self.context = None;
                }
                self.retry_at = Some(Instant::now() + delay);
            }
            Requeue::AwaitChange => {
                tracing::error!(error = %e, "attempt failed; waiting for the desired file to change");
            }
        }
    }

    /// SIGHUP: a new valid config replaces the old one for the next passes; an invalid one
    /// is logged and the old one kept. Returns the new desired file path when it moved.
    fn reload_config(&mut self) -> Option<PathBuf> {
        match Config::load(&self.config_path) {
            Ok(cfg) => {
                tracing::info!(config = %self.config_path.display(), "config reloaded");
                let moved =
                    (cfg.desired_file != self.cfg.desired_file).then(|| cfg.desired_file.clone());
                if cfg.docker.host != self.cfg.docker.host {
                    self.docker = None;
                }
                self.context = None;
                self.cfg = cfg;
                self.read_at = Some(Instant::now());
                self.pass_wanted.get_or_insert(Trigger::Reload);
                moved
            }
            Err(e) => {
                tracing::error!(error = %e, "new config is invalid; keeping the old one");
                None
            }
        }
    }
}

/// While the desired file is unusable, status.json says `invalid`: a pass with nothing to
/// repair must not overwrite that with its own verdict, so it is skipped. Returns the
/// outcome it would have had, or None when there is drift to repair (or the world could
/// not be observed, which the pass reports itself).
async fn nothing_to_repair(
    ctx: &LiveContext,
    desired: &Desired,
    by_hand: bool,
) -> Option<PassOutcome> {
    let observed = ctx.observe().await.ok()?;
    match plan(&ctx.cfg, desired, &observed, by_hand).verdict {
        Verdict::Converge | Verdict::Unclear { .. } => None,
        Verdict::InSync => Some(PassOutcome::Converged),
        Verdict::Paused => Some(PassOutcome::Paused),
        Verdict::AlreadyFailed => Some(PassOutcome::AlreadyFailed { message: None }),
    }
}

/// Half the systemd watchdog period, when the watchdog is on.
fn watchdog_interval() -> Option<tokio::time::Interval> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    Some(tokio::time::interval(period))
}
