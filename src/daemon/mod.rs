//! `fieldtrack daemon`: the long-running reconciler.
//!
//! One consumer loop owns all decisions; the sources ([`sources`]: the file watcher, the
//! requeue timer, the signals) only feed it events, and their errors on a channel
//! of their own. A desired file renamed into place or closed by its writer is read at once;
//! any other change is debounced on the trailing edge, then the whole file is read again. A
//! file that does not parse may be half-written (scp writes in place), so it is read once
//! more after the writer has been quiet before it is reported `invalid`; the last good
//! desired state stays in force meanwhile. A new generation cancels a running attempt at its
//! next safe point (before the switch), then runs. Every pass ends in the error policy's
//! [`AfterPass`](crate::reconcile::AfterPass), which the loop carries out: when the next pass
//! comes (a retry after the backoff, the resync after a pass that ended, at once after a
//! cancel), whether the engine is connected anew. The resync runs the same full pass, which
//! is what repairs drift; a loop left with nothing scheduled schedules one, so there is
//! always a next look at the world.
//!
//! Passes run in a task beside the loop, so signals and file events are handled while a
//! pass works. The loop pings the systemd watchdog itself (not a source: if the loop hangs,
//! the pings stop and systemd restarts the daemon), and the restarted one finds the same
//! truth (nothing is kept only in memory).

pub mod sources;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::apply::engine::Engine;
use crate::apply::http_probe::HealthError;
use crate::config::{Config, ConfigError};
use crate::desired::{Desired, DesiredError, DesiredErrorKind};
use crate::metrics::Metrics;
use crate::reconcile::{
    error_policy, AfterPass, Backoff, LiveContext, Pass, PassOutcome, ReconcileError, Requeue,
    Trigger,
};
use crate::state::by_hand::{ByHand, BY_HAND_FILE};
use crate::state::lock::{self, LockError, ReconcileLock};
use crate::state::public::DaemonId;
use crate::state::status::{Phase, Status};
use crate::state::writer::StatusWriter;
use crate::state::STATUS_FILE;
use sources::{Event, Settings, SourceError};

/// Quiet time after the last file event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Quiet time before a file that did not parse is read again and, if still bad, reported.
const PARSE_QUIET: Duration = Duration::from_secs(1);
/// How long a starting daemon waits for the lock of a previous daemon (which may be exiting)
/// before it refuses to run beside it.
const PREVIOUS_DAEMON_WAIT: Duration = Duration::from_secs(5);
/// Transient errors are retried after 1 s, doubling up to 5 min, without end.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 2);
/// Room for events not yet handled; beyond it, file events are dropped (harmless:
/// reconciling is level-triggered).
const EVENTS: usize = 64;
/// Room for source errors not yet logged.
const ERRORS: usize = 16;

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
    /// An event source stopped (it panicked): the daemon would go deaf, so it exits and its
    /// supervisor starts it again.
    #[error("an event source stopped: {0}")]
    SourceStopped(String),
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
    /// The config as the sources follow it, sent again on every reload.
    sources_config: watch::Sender<Config>,
    docker: Option<Engine>,
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
    /// When the next pass is due, as the requeue timer follows it.
    requeue_at: watch::Sender<Option<Instant>>,
    /// Why that pass runs: a retry after an error, or the resync.
    requeue_trigger: Trigger,
    backoff: Backoff,
    stopping: bool,
    ready_sent: bool,
    /// Shared by every pass and the metrics endpoint.
    metrics: Arc<Metrics>,
    /// The one writer of status.json for the daemon's whole life, handed to every pass.
    status: Arc<StatusWriter>,
    /// Why the desired file's last read was unusable. While set, status.json keeps saying
    /// `invalid`, also after the passes that go on toward the last good desired state; the
    /// next good read clears it and asks for a pass, even with the same generation as
    /// before, so the status tells the truth again.
    invalid: Option<String>,
}

/// Runs the daemon until a stop signal; Ok(exit code).
pub async fn run(config_path: PathBuf, cfg: Config) -> Result<u8, DaemonError> {
    let lock = take_lock(&cfg.state_dir).await?;
    let status = Arc::new(StatusWriter::new(
        &cfg.state_dir,
        &cfg.public_dir,
        &cfg.history_file,
    ));
    // The deploy group tells from these whether a daemon follows the desired file.
    status.set_daemon(lock.inode().map(|lock_inode| DaemonId {
        pid: std::process::id(),
        lock_inode,
        since: crate::state::now_rfc3339(),
    }));
    let (events_tx, mut events) = mpsc::channel(EVENTS);
    let (errors_tx, mut errors) = mpsc::channel(ERRORS);
    let (config_tx, config) = watch::channel(cfg.clone());
    let (requeue_tx, requeue_at) = watch::channel(None);
    let settings = Settings { config, requeue_at };
    let mut workers = sources::spawn(&settings, &errors_tx, &events_tx)?;
    drop((events_tx, errors_tx));
    let mut watchdog = watchdog_interval();
    let metrics = Arc::new(Metrics::new());
    let _metrics_server = serve_metrics(&cfg, &metrics).await?;
    tracing::info!(
        desired_file = %cfg.desired_file.display(),
        resync = %humantime::format_duration(cfg.rollout.resync),
        "daemon started"
    );
    let mut d = Daemon::new(config_path, cfg, config_tx, requeue_tx, metrics, status);
    d.publish_start();

    loop {
        if d.stopping && d.running.is_none() {
            tracing::info!("stopped");
            return Ok(0);
        }
        d.start_wanted_pass().await;
        d.keep_a_next_look();
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            Some(event) = events.recv() => {
                if let ControlFlow::Break(code) = d.handle_event(event) {
                    return Ok(code);
                }
            }
            Some(error) = errors.recv() => d.handle_error(error),
            _ = sleep_until(d.read_at.unwrap_or(far)), if d.read_at.is_some() => {
                d.read_at = None;
                d.read_desired();
            }
            result = async { (&mut d.running.as_mut().expect("guarded").handle).await }, if d.running.is_some() => {
                let running = d.running.take().expect("guarded");
                d.finish_pass(running, result);
            }
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            Some(stopped) = workers.join_next() => return Err(source_stopped(stopped)),
        }
    }
}

/// The reconcile lock, held as `daemon` for the daemon's whole life.
async fn take_lock(state_dir: &Path) -> Result<ReconcileLock, DaemonError> {
    match lock::try_acquire(state_dir, "daemon") {
        Ok(lock) => Ok(lock),
        // A daemon on its way out (killed, and its supervisor restarting us at once) can
        // still hold the lock for a moment: give it a few seconds before calling it a
        // second daemon.
        Err(LockError::Held { holder }) if holder.starts_with("daemon") => {
            tracing::info!(%holder, "waiting up to 5s for the previous daemon's lock");
            match lock::acquire_waiting(state_dir, "daemon", PREVIOUS_DAEMON_WAIT).await {
                Ok(lock) => Ok(lock),
                Err(LockError::Held { holder }) => Err(DaemonError::AlreadyRunning(holder)),
                Err(e) => Err(e.into()),
            }
        }
        Err(LockError::Held { holder }) => {
            tracing::info!(%holder, "waiting for the reconcile lock");
            Ok(lock::acquire_waiting(state_dir, "daemon", Duration::from_secs(3600)).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Serves `metrics` on `metrics.listen`, when set.
async fn serve_metrics(
    cfg: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<JoinHandle<()>>, DaemonError> {
    let Some(listen) = cfg.metrics.listen else {
        return Ok(None);
    };
    let server = crate::metrics::serve(metrics.clone(), listen).await?;
    tracing::info!(%listen, "metrics served on http://{listen}/metrics");
    Ok(Some(server))
}

/// A source's worker ended: they run for the daemon's whole life, so it panicked.
fn source_stopped(ended: Result<(), tokio::task::JoinError>) -> DaemonError {
    DaemonError::SourceStopped(match ended {
        Ok(()) => "it returned".to_string(),
        Err(e) => e.to_string(),
    })
}

impl Daemon {
    fn new(
        config_path: PathBuf,
        cfg: Config,
        sources_config: watch::Sender<Config>,
        requeue_at: watch::Sender<Option<Instant>>,
        metrics: Arc<Metrics>,
        status: Arc<StatusWriter>,
    ) -> Daemon {
        Daemon {
            config_path,
            cfg,
            sources_config,
            docker: None,
            context: None,
            desired: None,
            running: None,
            pass_wanted: Some(Trigger::Start),
            by_hand_pending: false,
            read_at: Some(Instant::now()),
            parse_retry: false,
            requeue_at,
            requeue_trigger: Trigger::Resync,
            backoff: BACKOFF,
            stopping: false,
            ready_sent: false,
            metrics,
            status,
            invalid: None,
        }
    }

    /// Publishes the last status again with this daemon's identity, so the deploy group
    /// sees a daemon at once, before the first pass writes.
    fn publish_start(&self) {
        if let Some(mut last) = self.status.last() {
            if let Err(e) = self.status.save(&mut last) {
                tracing::warn!(error = %e, "cannot write the status");
            }
        }
    }

    /// Reacts to one event from the sources; Break(exit code) when the daemon must exit now.
    fn handle_event(&mut self, event: Event) -> ControlFlow<u8> {
        match event {
            Event::DesiredChanged => self.read_after_quiet(),
            Event::DesiredReplaced => self.read_at = Some(Instant::now()),
            Event::Requeue { due } => {
                // A requeue cancelled (a new generation) or rescheduled since it fell due is
                // stale.
                if *self.requeue_at.borrow() == Some(due) {
                    self.requeue_at.send_replace(None);
                    if self.requeue_trigger == Trigger::Resync {
                        // The resync reads the whole desired file again too: a change the
                        // watcher missed is seen there.
                        self.read_at.get_or_insert(Instant::now());
                    }
                    self.pass_wanted.get_or_insert(self.requeue_trigger);
                }
            }
            Event::Stop => {
                if self.stopping {
                    tracing::warn!("second stop signal: exiting at once");
                    return ControlFlow::Break(130);
                }
                tracing::info!("stop signal: finishing at the next safe point");
                self.stopping = true;
                if let Some(running) = &self.running {
                    running.cancel.cancel();
                }
            }
            Event::ByHand => {
                tracing::info!("reconcile asked for by hand");
                self.read_at.get_or_insert(Instant::now());
                self.pass_wanted = Some(Trigger::ByHand);
                self.by_hand_pending = true;
            }
            Event::Reload => {
                self.reload_config();
                // Valid or not, the sources get it again: the resync period starts anew,
                // and the watcher follows a desired file that moved.
                self.sources_config.send_replace(self.cfg.clone());
            }
        }
        ControlFlow::Continue(())
    }

    /// Logs an error a source met while running.
    fn handle_error(&mut self, e: SourceError) {
        match e {
            SourceError::Watcher(_) => {
                // The change it may hide is seen by reading the whole file again.
                tracing::warn!(error = %e, "reading the desired file again");
                self.read_after_quiet();
            }
            SourceError::Watch { .. } => tracing::error!(error = %e, "keeping the old watcher"),
            SourceError::Signals(_) => tracing::error!(error = %e, "event source error"),
        }
    }

    /// Reads the desired file once the writer has been quiet (longer after a read that did
    /// not parse).
    fn read_after_quiet(&mut self) {
        let quiet = if self.parse_retry {
            PARSE_QUIET
        } else {
            DEBOUNCE
        };
        self.read_at = Some(Instant::now() + quiet);
    }

    /// Starts the pass wanted, unless one runs, the daemon stops or a read is due first.
    async fn start_wanted_pass(&mut self) {
        if self.running.is_some() || self.stopping || self.read_at.is_some() {
            return;
        }
        if let Some(trigger) = self.pass_wanted.take() {
            self.start_pass(trigger).await;
        }
    }

    /// The next pass, for `trigger`, after `delay`; replaces the one scheduled before.
    fn requeue_after(&mut self, delay: Duration, trigger: Trigger) {
        self.requeue_trigger = trigger;
        self.requeue_at.send_replace(Some(Instant::now() + delay));
    }

    /// Schedules the resync when nothing else will bring a pass: no pass runs or is wanted,
    /// no read is due, no requeue is scheduled (no desired file yet, one that stayed
    /// invalid, a context that could not be built). Level-triggered: the world is always
    /// looked at again.
    fn keep_a_next_look(&mut self) {
        let idle = self.running.is_none()
            && self.pass_wanted.is_none()
            && self.read_at.is_none()
            && self.requeue_at.borrow().is_none();
        if idle && !self.stopping {
            self.requeue_after(self.cfg.rollout.resync, Trigger::Resync);
        }
    }

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
                    self.requeue_at.send_replace(None);
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
        // Through the one writer, onto what the running pass wrote last: neither loses the
        // other's fields.
        let marked = self.status.update(Phase::Invalid, |s| {
            s.phase = Phase::Invalid;
            s.step = None;
            s.message = Some(message.to_string());
        });
        if let Err(e) = marked {
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
        if by_hand {
            // The retry is recorded state, like the failure it retries: the plan reads it
            // from the journal, not from why the pass runs.
            if let Err(e) = ctx.ask_retry(&desired) {
                tracing::error!(error = %e, "cannot record the retry asked by hand");
            }
        }
        let cancel = CancellationToken::new();
        let pass_cancel = cancel.clone();
        let pass_desired = desired.clone();
        let file_unusable = self.invalid.is_some();
        let handle = tokio::spawn(async move {
            if file_unusable {
                // status.json says `invalid`: a pass with nothing to repair must not
                // overwrite that with its own verdict.
                if let Some(outcome) = ctx.nothing_to_repair(&pass_desired).await {
                    return Ok(outcome);
                }
            }
            let pass = Pass::new(&ctx, trigger).with_cancel(pass_cancel);
            let result = pass.reconcile(&pass_desired).await;
            if let Err(e) = &result {
                // The pass records the failure itself: it knows the status.
                let _ = pass.record_failure(&pass_desired, e, &error_policy(e));
                // A test holds the daemon here: whoever follows sees the failed status
                // before any next pass.
                crate::test_pause_point("failed").await;
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
            None => match Engine::connect(&self.cfg).await {
                Ok(docker) => {
                    tracing::info!(runtime = %self.cfg.runtime, "connected to the docker engine");
                    self.docker = Some(docker.clone());
                    docker
                }
                Err(e) => {
                    self.metrics.reconcile_error("transient");
                    let e = ReconcileError::Runtime(e);
                    self.carry_out(error_policy(&e), Some(&e));
                    return None;
                }
            },
        };
        match LiveContext::live(self.cfg.clone(), docker) {
            Ok(ctx) => {
                let ctx = Arc::new(
                    ctx.with_metrics(self.metrics.clone())
                        .with_status_writer(self.status.clone()),
                );
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
        let failure = match result {
            Ok(Ok(PassOutcome::Canary { step, look_again })) => {
                // Not done: the canary's next look comes after a tick (an event sooner).
                tracing::debug!(step, ?look_again, "canary step runs on");
                self.backoff.reset();
                self.requeue_after(look_again, Trigger::Canary);
                if let Some(number) = running.by_hand {
                    self.by_hand_finished(number);
                }
                return;
            }
            Ok(Ok(PassOutcome::Preview { look_again })) => {
                // Awaiting the promotion: the candidate is probed and the promote request
                // looked for at every tick (an event sooner).
                tracing::debug!(?look_again, "preview awaits promotion");
                self.backoff.reset();
                self.requeue_after(look_again, Trigger::Preview);
                if let Some(number) = running.by_hand {
                    self.by_hand_finished(number);
                }
                return;
            }
            Ok(Ok(outcome)) => {
                tracing::info!(?outcome, "pass done");
                None
            }
            Ok(Err(e)) => Some(e),
            Err(e) => {
                // A bug, not a verdict: the pass could not record it, so the loop does, and
                // the policy retries it like any transient error.
                let e = ReconcileError::Panicked {
                    message: e.to_string(),
                };
                let recorded = self.status.update(Phase::Failed, |s| {
                    s.phase = Phase::Failed;
                    s.step = None;
                    s.health = None;
                    s.message = Some(e.to_string());
                });
                if let Err(e) = recorded {
                    tracing::error!(error = %e, "cannot write the status");
                }
                Some(e)
            }
        };
        match &failure {
            Some(e) => self.carry_out(error_policy(e), Some(e)),
            None => self.carry_out(AfterPass::resync(), None),
        }
        if let Some(number) = running.by_hand {
            self.by_hand_finished(number);
        }
    }

    /// Does what the error policy said about `error` (None after a pass that succeeded):
    /// logs it with what comes next, connects anew when asked, and schedules the next pass
    /// (at once after a cancel, else after the action's delay).
    fn carry_out(&mut self, action: AfterPass, error: Option<&ReconcileError>) {
        let delay = action.delay(&mut self.backoff, self.cfg.rollout.resync);
        if let Some(e) = error {
            log_failure(e, &action, delay);
        }
        if action.reconnect {
            self.docker = None;
            self.context = None;
        }
        match action.requeue {
            Requeue::Now => {
                self.pass_wanted.get_or_insert(Trigger::File);
            }
            Requeue::Backoff { .. } => self.requeue_after(delay, Trigger::Retry),
            Requeue::Resync => self.requeue_after(delay, Trigger::Resync),
        }
    }

    /// SIGHUP: a new valid config replaces the old one for the next passes; an invalid one
    /// is logged and the old one kept.
    fn reload_config(&mut self) {
        match Config::load(&self.config_path) {
            Ok(cfg) if !held_for_life(&self.cfg, &cfg).is_empty() => {
                tracing::error!(
                    keys = %held_for_life(&self.cfg, &cfg).join(", "),
                    "new config moves what this daemon holds for its whole life (the reconcile \
                     lock and status in state_dir, what it publishes in public_dir); keeping the \
                     old one: restart the daemon to move them (systemctl restart fieldtrack)"
                );
            }
            Ok(cfg) => {
                tracing::info!(config = %self.config_path.display(), "config reloaded");
                if cfg.docker != self.cfg.docker
                    || cfg.runtime != self.cfg.runtime
                    || cfg.swarm != self.cfg.swarm
                {
                    self.docker = None;
                }
                self.context = None;
                self.cfg = cfg;
                self.read_at = Some(Instant::now());
                self.pass_wanted.get_or_insert(Trigger::Reload);
            }
            Err(e) => {
                tracing::error!(error = %e, "new config is invalid; keeping the old one");
            }
        }
    }
}

/// One line for a failed pass, saying what comes next.
fn log_failure(e: &ReconcileError, action: &AfterPass, delay: Duration) {
    match action.requeue {
        Requeue::Now => tracing::info!("attempt cancelled"),
        Requeue::Backoff { .. } => tracing::warn!(error = %e, retry_in = ?delay, "transient error"),
        Requeue::Resync if action.mark_failed => {
            tracing::error!(error = %e, "attempt failed; waiting for the desired file to change")
        }
        Requeue::Resync => {
            tracing::error!(error = %e, "attempt failed; looking again at the resync")
        }
    }
}

/// The settings of `new` that differ from `old` and that a running daemon cannot take:
/// it holds the reconcile lock in `state_dir` from start to exit, and one status writer
/// (status.json there, its copy in `public_dir`). Taking a moved `state_dir` would leave
/// the lock behind, and a command on the new config would reconcile beside the daemon.
fn held_for_life(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("state_dir", old.state_dir != new.state_dir),
        ("public_dir", old.public_dir != new.public_dir),
    ]
    .into_iter()
    .filter_map(|(key, moved)| moved.then_some(key))
    .collect()
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A daemon that has started its first pass: nothing is wanted.
    fn daemon() -> Daemon {
        let cfg = Config::parse(
            "repository = \"ghcr.io/fieldtrack-tech/api\"\n",
            Path::new("/srv/api/fieldtrack.toml"),
            None,
        )
        .unwrap();
        let (config_tx, _) = watch::channel(cfg.clone());
        let (requeue_tx, _) = watch::channel(None);
        let metrics = Arc::new(Metrics::new());
        let status = Arc::new(StatusWriter::private(&cfg.state_dir));
        let mut d = Daemon::new(
            cfg.path.clone(),
            cfg,
            config_tx,
            requeue_tx,
            metrics,
            status,
        );
        d.pass_wanted = None;
        d.read_at = None;
        d
    }

    #[test]
    fn a_retry_asks_for_a_pass_only_when_it_is_the_one_scheduled() {
        let mut d = daemon();
        d.requeue_after(Duration::from_secs(1), Trigger::Retry);
        let due = d.requeue_at.borrow().expect("scheduled");

        let stale = Event::Requeue {
            due: due - Duration::from_millis(1),
        };
        assert!(d.handle_event(stale).is_continue());
        assert_eq!(d.pass_wanted, None, "a retry rescheduled since is stale");

        assert!(d.handle_event(Event::Requeue { due }).is_continue());
        assert_eq!(d.pass_wanted, Some(Trigger::Retry));
        assert_eq!(*d.requeue_at.borrow(), None, "a retry runs once");

        d.pass_wanted = None;
        let _ = d.handle_event(Event::Requeue { due });
        assert_eq!(d.pass_wanted, None, "a retry that ran is stale");
    }

    #[test]
    fn a_pass_that_ended_well_brings_the_next_look_after_the_resync_period() {
        let mut d = daemon();
        let before = Instant::now();
        d.carry_out(AfterPass::resync(), None);
        let due = d.requeue_at.borrow().expect("the resync is scheduled");
        assert!(due >= before + d.cfg.rollout.resync);
        assert!(d.handle_event(Event::Requeue { due }).is_continue());
        assert_eq!(d.pass_wanted, Some(Trigger::Resync));
        assert!(
            d.read_at.is_some(),
            "the resync reads the desired file again"
        );
    }

    #[test]
    fn a_transient_error_comes_back_after_the_backoff_and_an_unreachable_engine_reconnects() {
        let mut d = daemon();
        let e = ReconcileError::Runtime(crate::model::runtime::RuntimeError::Unreachable {
            host: "unix:///run/docker.sock".into(),
            source: bollard::errors::Error::RequestTimeoutError,
        });
        let before = Instant::now();
        d.carry_out(error_policy(&e), Some(&e));
        let due = d.requeue_at.borrow().expect("a retry is scheduled");
        assert!(due >= before + Duration::from_secs(1) && due < before + Duration::from_secs(60));
        assert!(d.handle_event(Event::Requeue { due }).is_continue());
        assert_eq!(d.pass_wanted, Some(Trigger::Retry));
        assert_eq!(d.read_at, None, "a retry does not read the file again");
    }

    #[test]
    fn a_loop_with_nothing_scheduled_schedules_the_resync() {
        // No desired file yet (or one that stayed invalid): no pass ran to requeue one.
        let mut d = daemon();
        d.keep_a_next_look();
        assert!(
            d.requeue_at.borrow().is_some(),
            "there is always a next look"
        );
        let scheduled = *d.requeue_at.borrow();
        d.keep_a_next_look();
        assert_eq!(
            *d.requeue_at.borrow(),
            scheduled,
            "one already scheduled stays"
        );
    }

    #[tokio::test]
    async fn a_pass_that_panicked_is_reported_and_retried_after_the_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = daemon();
        d.cfg.state_dir = dir.path().to_path_buf();
        d.status = Arc::new(StatusWriter::private(dir.path()));
        let panicked = tokio::spawn(async {
            panic!("index out of bounds");
        })
        .await
        .unwrap_err();
        let running = Running {
            handle: tokio::spawn(async { Ok(PassOutcome::Converged) }),
            cancel: CancellationToken::new(),
            desired: Desired::parse("image = \"v2\"\n", Path::new("desired.toml"), &d.cfg).unwrap(),
            by_hand: None,
        };
        let before = Instant::now();
        d.finish_pass(running, Err(panicked));

        let status = Status::load(&dir.path().join(STATUS_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(status.phase, Phase::Failed);
        let message = status.message.unwrap();
        assert!(
            message.contains("internal error") && message.contains("panicked"),
            "{message}"
        );
        assert_eq!(
            status.failed_generation, None,
            "a bug is no verdict on the generation"
        );
        let due = d.requeue_at.borrow().expect("a retry is scheduled");
        assert!(
            due < before + Duration::from_secs(60),
            "after the backoff, not the resync"
        );
        assert_eq!(d.requeue_trigger, Trigger::Retry);
    }

    #[test]
    fn a_watcher_error_reads_the_desired_file_again_after_the_debounce() {
        let mut d = daemon();
        let before = Instant::now();
        d.handle_error(SourceError::Watcher(notify::Error::generic("queue lost")));
        let read_at = d.read_at.expect("a read is due");
        assert!(read_at >= before + DEBOUNCE, "debounced like a change");
        assert_eq!(
            d.pass_wanted, None,
            "the read decides whether a pass is wanted"
        );
    }

    #[test]
    fn the_second_stop_signal_exits_at_once_with_130() {
        let mut d = daemon();
        assert!(d.handle_event(Event::Stop).is_continue());
        assert!(d.stopping);
        assert_eq!(d.handle_event(Event::Stop), ControlFlow::Break(130));
    }
}
