//! One reconcile pass: observe, plan, apply.
//!
//! A pass does not care why it runs (file event, timer, restart, command): it observes
//! everything afresh, plans with the pure [`crate::plan::plan`], then carries the plan out
//! step by step, writing `status.json` after every step. The trigger only shows in logs and
//! in the audit log.
//!
//! What lasts (the config, the runtime, the proxy, the prober, the webhook, the metrics) is a
//! [`Context`], built once; what belongs to one run (its trigger, its cancellation, the status
//! it writes) is a [`Pass`] over it.
//!
//! Production is never left pointing at an unhealthy or missing container: traffic moves only
//! after the candidate answered its health check through its published port, a failed
//! attempt removes its candidate and leaves the upstream file and the history as they were,
//! and the history is written only after a full success.

mod attempt;
#[cfg(test)]
mod attempt_tests;
mod backoff;
mod error;
#[cfg(test)]
mod fakes;
mod progress;
#[cfg(test)]
mod simulation;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use crate::state::audit::Trigger;
pub use backoff::Backoff;
pub use error::{error_policy, AfterPass, ReconcileError, Requeue};
pub use progress::{Progress, ProgressSink};

use crate::apply::engine::Engine;
use crate::apply::http_probe::{HealthError, HttpProber};
use crate::apply::nginx::Nginx;
use crate::config::{Config, RuntimeKind};
use crate::desired::Desired;
use crate::metrics::Metrics;
use crate::model::probe::Prober;
use crate::model::proxy::{Proxy, ProxyError};
use crate::model::runtime::{Runtime, RuntimeError};
use crate::notifications::Notifier;
use crate::observe::canary_window::Watcher;
use crate::observe::{observe, ObserveError, Observed};
use crate::plan::{kept_warm, plan, Action, Plan, Verdict};
use crate::secrets::redact::Redactor;
use crate::state::status::{Live, Phase, Status, StatusError, Step, SwitchMark, Warm};
use crate::state::writer::StatusWriter;
use crate::state::{self, history};
use attempt::Ran;

/// A pass run in-process retries transient errors after 1 s, doubling up to 30 s.
const IN_PROCESS_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 2);

/// The context on the real Docker engine (or Swarm manager) and nginx.
pub type LiveContext = Context<Engine, Nginx, HttpProber>;

/// Why a live context could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The Docker engine could not be reached.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The health prober could not be built.
    #[error(transparent)]
    Health(#[from] HealthError),
}

/// The engine may be restarting: a command tries three more times, after 500 ms, 1 s and 2 s.
const CONNECT_TRIES: usize = 3;
const CONNECT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(2), 2);

impl LiveContext {
    /// Connects to the engine at `docker.host` (retrying a few times: it may be restarting)
    /// and assembles the context: what a command runs its passes with.
    pub async fn connect(cfg: Config) -> Result<Self, ContextError> {
        let mut backoff = CONNECT_BACKOFF;
        for _ in 0..CONNECT_TRIES {
            match Engine::connect(&cfg).await {
                Ok(engine) => return Ok(LiveContext::live(cfg, engine)?),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "docker engine unreachable, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let engine = Engine::connect(&cfg).await?;
        Ok(LiveContext::live(cfg, engine)?)
    }

    /// Assembles the context for `cfg` on a connected engine, with the webhook it names.
    pub fn live(cfg: Config, engine: Engine) -> Result<Self, HealthError> {
        let nginx = Nginx::new(
            cfg.nginx.upstream_file.clone(),
            cfg.nginx.upstream_name.clone(),
            cfg.nginx.test_command.clone(),
            cfg.nginx.reload_command.clone(),
        )
        .with_pid_file(cfg.nginx.pid_file.clone())
        .with_keepalive(cfg.nginx.upstream_keepalive)
        .with_remote_servers(cfg.runtime == RuntimeKind::Swarm)
        .with_preview(cfg.rollout.promotion == crate::config::Promotion::Manual)
        .with_redactor(Redactor::from_env_file(&cfg.container.env_file));
        let prober = HttpProber::new(&cfg.health)?;
        let notifier = Notifier::new(&cfg.notify);
        Ok(Context {
            notifier,
            ..Context::new(cfg, engine, nginx, prober)
        })
    }
}

/// What the registry says `reference`'s tag points at now, asked through the engine at
/// `docker.host` (no retry: a rollback only wants to warn when the tag moved); None when
/// either cannot be asked.
pub async fn registry_digest(cfg: &Config, reference: &str) -> Option<String> {
    let engine = Engine::connect(cfg).await.ok()?;
    engine.registry_digest(reference).await
}

/// Each color's replicas (Swarm tasks), for the status; empty on a single engine, whose
/// containers have none.
fn replicas_of(observed: &Observed) -> Vec<crate::state::status::ColorReplicas> {
    observed
        .containers
        .iter()
        .filter(|c| !c.replicas.is_empty())
        .map(|c| crate::state::status::ColorReplicas {
            color: c
                .color
                .map_or_else(|| "unknown".to_string(), |c| c.to_string()),
            service: c.name.clone(),
            replicas: c.replicas.clone(),
        })
        .collect()
}

/// status.json's record of the warm previous color, while the plan keeps that container
/// ([`kept_warm`]); None once it would be removed, so the status never shows a window that
/// is over.
fn warm_of(cfg: &Config, observed: &Observed) -> Option<Warm> {
    kept_warm(cfg, observed).and(observed.warm.clone())
}

/// How a pass ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassOutcome {
    /// The desired image is live and nothing else of the app runs.
    Converged,
    /// The desired file is paused: nothing was changed.
    Paused,
    /// This generation failed before and is not retried until the desired file changes.
    AlreadyFailed { message: Option<String> },
    /// A canary of the desired generation runs, at `step`: the next pass comes after
    /// `look_again` (or at once on an event) and judges it again.
    Canary { step: usize, look_again: Duration },
    /// A preview of the desired generation awaits `fieldtrack promote`: the next pass comes
    /// after `look_again` (or at once on an event), probes the candidate and looks for the
    /// promotion. A command that deploys returns here: the preview is up.
    Preview { look_again: Duration },
}

/// What every pass works with, built once: the config, one implementation of each external
/// system, the webhook and the metrics. A daemon shares it (in an `Arc`) between its passes
/// until the config is reloaded or the engine is reconnected.
pub struct Context<R, P, H> {
    pub cfg: Config,
    pub runtime: R,
    pub proxy: P,
    pub prober: H,
    /// Webhook notifications, fire-and-forget; None when no webhook is configured.
    pub notifier: Option<Notifier>,
    /// Shared with the metrics endpoint (and across a daemon's passes).
    pub metrics: Arc<Metrics>,
    /// The one writer of status.json (and of what the deploy group reads), shared across a
    /// daemon's passes and with the daemon itself.
    pub status: Arc<StatusWriter>,
    /// The running canary step's window, counted across the passes of this context.
    pub(crate) canary_watch: Watcher,
    /// The previewed candidate's probes that failed in a row, counted across the passes of
    /// this context.
    pub(crate) preview_watch: Mutex<Option<crate::observe::ProbeCount>>,
}

/// One run of observe, plan, apply, and what belongs to it alone: why it runs, the token
/// that cancels it, and the status it writes.
pub struct Pass<'c, R, P, H> {
    ctx: &'c Context<R, P, H>,
    /// Why the pass runs: informational only (logs, the audit log).
    trigger: Trigger,
    /// Cancels the running attempt at its next safe point (never between the upstream write
    /// and the nginx reload).
    cancel: CancellationToken,
    status: Mutex<Status>,
    /// Who watches the pass (the CLI), if anyone.
    progress: Option<ProgressSink>,
}

impl<R: Runtime, P: Proxy, H: Prober> Context<R, P, H> {
    /// One probe of each of `addrs`, all at once, each with its outcome.
    pub(crate) async fn probe_each(
        &self,
        addrs: &[std::net::SocketAddr],
    ) -> Vec<(std::net::SocketAddr, crate::model::probe::ProbeOutcome)> {
        let outcomes =
            futures_util::future::join_all(addrs.iter().map(|a| self.prober.probe_at(*a))).await;
        addrs.iter().copied().zip(outcomes).collect()
    }

    /// The upstream file's text as on disk now (None when there is none): what `plan` diffs.
    pub fn upstream_text(&self) -> Result<Option<String>, crate::model::proxy::ProxyError> {
        self.proxy.read()
    }

    /// A context without webhook, with metrics of its own.
    pub fn new(cfg: Config, runtime: R, proxy: P, prober: H) -> Self {
        Context {
            runtime,
            proxy,
            prober,
            notifier: None,
            metrics: Arc::new(Metrics::new()),
            status: Arc::new(StatusWriter::new(
                &cfg.state_dir,
                &cfg.public_dir,
                &cfg.history_file,
            )),
            canary_watch: Watcher::default(),
            preview_watch: Mutex::new(None),
            cfg,
        }
    }

    /// Writes the status through `status` (a daemon's, which it keeps for its whole life).
    pub fn with_status_writer(self, status: Arc<StatusWriter>) -> Self {
        Context { status, ..self }
    }

    /// Records into `metrics` (a daemon's, which its endpoint serves).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Context { metrics, ..self }
    }

    /// Records in the journal that an operator asked to retry `desired`'s generation by hand
    /// (`fieldtrack reconcile`, a deploy): the next pass attempts it though it failed before.
    pub fn ask_retry(&self, desired: &Desired) -> Result<(), StatusError> {
        self.status.update(Phase::Progressing, |s| {
            s.retry_asked = Some(desired.generation.clone());
        })
    }

    /// The outcome a pass toward `desired` would have without changing anything (in sync,
    /// paused, already failed); None when there is drift to repair, or the world could not
    /// be observed (which a pass then reports itself). A daemon whose desired file is
    /// unusable asks this first, so that a pass with nothing to do leaves the status alone.
    pub async fn nothing_to_repair(&self, desired: &Desired) -> Option<PassOutcome> {
        let observed = self.observe().await.ok()?;
        match plan(&self.cfg, desired, &observed).verdict {
            Verdict::Converge | Verdict::Unclear { .. } => None,
            Verdict::InSync => Some(PassOutcome::Converged),
            Verdict::Paused => Some(PassOutcome::Paused),
            Verdict::AlreadyFailed => Some(PassOutcome::AlreadyFailed { message: None }),
        }
    }

    /// The world as it is now.
    pub async fn observe(&self) -> Result<Observed, ObserveError> {
        observe(&self.cfg, &self.runtime, &self.proxy).await
    }

    /// Image retention: removes local images of `repository` that no history entry names,
    /// keeping every entry's image (by tag, or by the digest recorded for it) so a rollback
    /// never needs the registry. Failures are logged: retention never fails a deployment.
    async fn retain_images(&self) {
        let cfg = &self.cfg;
        let history = match history::read(&cfg.history_file) {
            Ok(history) => history,
            Err(e) => {
                tracing::warn!(error = %e, "image retention skipped");
                return;
            }
        };
        let audit = state::audit::read(&self.audit_file()).unwrap_or_default();
        let mut keep: Vec<String> = Vec::new();
        for entry in &history {
            if let Ok(image) =
                crate::desired::ImageRef::parse(entry, &cfg.repository, &cfg.allowed_repositories)
            {
                keep.push(cfg.image_reference(&image));
            }
            for record in audit.iter().filter(|r| &r.image == entry) {
                keep.push(record.reference.clone());
                if let Some(digest) = &record.digest {
                    keep.push(format!("{}@{digest}", cfg.repository));
                }
            }
        }
        let images = match self.runtime.images(&cfg.repository).await {
            Ok(images) => images,
            Err(e) => {
                tracing::warn!(error = %e, "image retention skipped");
                return;
            }
        };
        let digest_of = |name: &String| name.rsplit_once('@').map(|(_, d)| d.to_string());
        let keep_digests: Vec<String> = keep.iter().filter_map(digest_of).collect();
        for image in images {
            let named = image.tags.iter().any(|t| keep.contains(t));
            let pinned = image
                .digests
                .iter()
                .filter_map(digest_of)
                .any(|d| keep_digests.contains(&d));
            if named || pinned {
                continue;
            }
            // By this repository's names, not by id: an id with a name elsewhere (another
            // repository) cannot be removed unforced, and that other name is not ours to drop.
            for name in image.tags.iter().chain(&image.digests) {
                match self.runtime.remove_image(name).await {
                    Ok(()) => {
                        tracing::info!(image = %name, "removed an image no history entry names")
                    }
                    Err(e) => tracing::debug!(image = %name, error = %e, "image kept"),
                }
            }
        }
    }

    /// Stops and removes a container of the app, unless the upstream file, as written on disk
    /// now, points at it: that one may serve, and is kept (the pass stops, saying what to
    /// check) until nginx was switched away from it. A running one goes once nginx's old
    /// workers are gone. The plan never asks for such a removal;
    /// this is the last look before it happens, for a world that changed since.
    pub(crate) async fn retire(
        &self,
        name: &str,
        stop_timeout: Duration,
    ) -> Result<(), ReconcileError> {
        let still_served = |reason: String| ReconcileError::StillServed {
            container: name.to_string(),
            reason,
            upstream_file: self.cfg.nginx.upstream_file.clone(),
        };
        let upstream = self.proxy.upstream_ports().map_err(|e| {
            still_served(format!(
                "fieldtrack cannot tell whether nginx sends it traffic ({e})"
            ))
        })?;
        let containers = self.runtime.containers(&self.cfg.app).await?;
        let served = containers.iter().find(|c| {
            c.name == name && c.state.is_running() && c.ports.iter().any(|p| upstream.contains(p))
        });
        if let Some(c) = served {
            return Err(still_served(format!(
                "the nginx upstream file points at it (port {})",
                c.ports
                    .iter()
                    .find(|p| upstream.contains(p))
                    .map_or(0, |p| *p)
            )));
        }
        // nginx's workers of a configuration before an earlier switch (a drain a newer
        // generation cut short) may still send a running container requests: it goes once
        // they are gone.
        if containers
            .iter()
            .any(|c| c.name == name && c.state.is_running())
        {
            self.proxy.wait_retired(attempt::OLD_WORKERS_LIMIT).await;
        }
        self.runtime.remove(name, stop_timeout).await?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn status_file(&self) -> std::path::PathBuf {
        self.status.path().to_path_buf()
    }

    pub(crate) fn audit_file(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join(state::AUDIT_FILE)
    }

    /// `green api:a4f91c2`, the upstream file's comment.
    pub(crate) fn live_comment(&self, color: crate::model::Color, image: &str) -> String {
        format!("{color} {}:{image}", self.cfg.app)
    }

    fn live_of(&self, c: &crate::model::Instance) -> Live {
        let color = c.color.unwrap_or(crate::model::Color::Blue);
        Live {
            color: color.to_string(),
            image: c.image.clone(),
            container: c.name.clone(),
            port: self.cfg.port(color),
        }
    }

    /// What a [`Action::Reassert`] of `color` on `port` writes: the servers of the file that
    /// are on that port (nginx is reloaded with what it already names), else where the color
    /// answers.
    async fn reasserted_servers(
        &self,
        observed: &Observed,
        color: crate::model::Color,
        port: u16,
    ) -> Result<Vec<std::net::SocketAddr>, ReconcileError> {
        if self.cfg.runtime == RuntimeKind::Docker {
            return Ok(crate::model::runtime::Endpoints::loopback(port).addrs);
        }
        let written: Vec<std::net::SocketAddr> = observed
            .upstream_servers
            .iter()
            .filter(|s| s.port() == port)
            .copied()
            .collect();
        if !written.is_empty() {
            return Ok(written);
        }
        let endpoints = self
            .runtime
            .endpoints(&self.cfg.container_name(color), port)
            .await?;
        Ok(endpoints.addrs)
    }

    /// What is live now, observed afresh, and the previous color kept warm, if one is.
    async fn observed_live(&self) -> Result<(Option<Live>, Option<Warm>), ReconcileError> {
        let observed = self.observe().await?;
        let live = observed.live(&self.cfg).map(|c| self.live_of(c));
        Ok((live, warm_of(&self.cfg, &observed)))
    }
}

impl<'c, R: Runtime, P: Proxy, H: Prober> Pass<'c, R, P, H> {
    /// A pass over `ctx`, for `trigger`.
    pub fn new(ctx: &'c Context<R, P, H>, trigger: Trigger) -> Self {
        Pass {
            ctx,
            trigger,
            cancel: CancellationToken::new(),
            status: Mutex::new(Status::new(Phase::Progressing)),
            progress: None,
        }
    }

    /// Cancelled by `cancel` (whoever keeps a clone of it: the daemon, on a newer generation
    /// or a stop signal).
    pub fn with_cancel(self, cancel: CancellationToken) -> Self {
        Pass { cancel, ..self }
    }

    /// Tells `sink` the pass's progress (steps, health probes, the switch) as it happens.
    pub fn with_progress(self, sink: ProgressSink) -> Self {
        Pass {
            progress: Some(sink),
            ..self
        }
    }

    pub(crate) fn emit(&self, progress: Progress) {
        if let Some(sink) = &self.progress {
            sink(progress);
        }
    }

    /// One full pass: observe, plan, apply. A generation that failed before is attempted
    /// again only when an operator asked for it ([`Context::ask_retry`]).
    #[tracing::instrument(name = "reconcile", skip_all, fields(trigger = %self.trigger, generation = %desired.generation, image = %desired.image))]
    pub async fn reconcile(&self, desired: &Desired) -> Result<PassOutcome, ReconcileError> {
        let ctx = self.ctx;
        self.unobserved(desired);
        let mut observed = ctx.observe().await?;
        observed.window = observed
            .canary
            .as_ref()
            .filter(|m| m.generation == desired.generation)
            .map(|m| ctx.canary_watch.window(&ctx.cfg, m));
        observed.preview_probes = ctx
            .preview_watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|p| p.generation == desired.generation);
        let plan = plan(&ctx.cfg, desired, &observed);
        self.begin(desired, &observed)?;
        self.left_behind(desired, &observed);
        let outcome = self.decide(desired, &observed, &plan).await?;
        if observed.retry_asked.is_some() {
            // The retry asked by hand has been made (a failure marks the generation and
            // clears it too, in `record_failure`).
            self.set_status(|s| s.retry_asked = None)?;
        }
        Ok(outcome)
    }

    /// Carries out the plan's verdict.
    async fn decide(
        &self,
        desired: &Desired,
        observed: &Observed,
        plan: &Plan,
    ) -> Result<PassOutcome, ReconcileError> {
        let ctx = self.ctx;
        match &plan.verdict {
            Verdict::Paused => {
                self.set_status(|s| {
                    s.phase = Phase::Paused;
                    s.message = Some("paused by the desired file: nothing is changed".into());
                })?;
                Ok(PassOutcome::Paused)
            }
            Verdict::AlreadyFailed => {
                let previous = ctx.status.last();
                let message = previous.and_then(|s| s.message);
                self.set_status(|s| {
                    s.phase = Phase::Failed;
                    s.failed_generation = Some(desired.generation.clone());
                    s.message = message.clone();
                })?;
                Ok(PassOutcome::AlreadyFailed { message })
            }
            Verdict::InSync => {
                self.set_status(|s| {
                    s.phase = Phase::Converged;
                    s.message = None;
                    s.canary = None;
                    s.canary_mark = None;
                    s.preview = None;
                    s.preview_mark = None;
                })?;
                self.publish_live();
                Ok(PassOutcome::Converged)
            }
            Verdict::Unclear { reason } => Err(ReconcileError::Unclear {
                reason: reason.clone(),
            }),
            Verdict::Converge => self.apply(desired, observed, plan).await,
        }
    }

    /// Carries out the plan's actions in order; every decision is the plan's.
    async fn apply(
        &self,
        desired: &Desired,
        observed: &Observed,
        plan: &Plan,
    ) -> Result<PassOutcome, ReconcileError> {
        let ctx = self.ctx;
        let cfg = &ctx.cfg;
        for action in &plan.actions {
            // A canary step watched on comes every second: not a line of the log each time.
            let watching = matches!(
                action,
                Action::Canary(crate::plan::canary::CanaryAction {
                    decision: crate::plan::canary::Decision::Stay { .. },
                    ..
                }) | Action::Preview(crate::plan::preview::PreviewAction {
                    decision: crate::plan::preview::Decision::Await { .. },
                    ..
                })
            );
            if watching {
                tracing::debug!(%action, "applying");
            } else {
                tracing::info!(%action, "applying");
            }
            match action {
                Action::Remove { name, reason } => {
                    tracing::info!(container = %name, %reason, "removing container");
                    ctx.retire(name, cfg.container.stop_timeout).await?;
                    self.set_status(|s| s.warm = s.warm.take().filter(|w| w.container != *name))?;
                }
                Action::Reassert { color, port } => {
                    // A pass may have died between writing the upstream file and reloading
                    // nginx: make nginx load the file before anything it might still send
                    // traffic to is removed.
                    let comment = ctx.live_comment(*color, desired.image.as_written());
                    let servers = ctx.reasserted_servers(observed, *color, *port).await?;
                    self.switch_nginx(*port, &servers, &comment).await?;
                }
                Action::Refresh { color } => self.refresh(desired, *color).await?,
                Action::Drain => {
                    // A pass died between the switch and the drain: the old color may still
                    // hold requests nginx's old workers sent it.
                    tracing::info!(drain = ?cfg.rollout.drain, "draining before removing the old color");
                    tokio::time::sleep(cfg.rollout.drain).await;
                    ctx.proxy.wait_retired(attempt::OLD_WORKERS_LIMIT).await;
                }
                Action::RecordHistory { image } => {
                    history::record(&cfg.history_file, image, cfg.history_limit)
                        .map_err(|e| ReconcileError::from(e).after_switch(image))?;
                }
                Action::Deploy(rollout) | Action::Switch(rollout) => {
                    let start = matches!(action, Action::Deploy(_));
                    let ran = self
                        .attempt(desired, observed, rollout, start, None, None)
                        .await?;
                    if let Some(outcome) = self.runs_on(ran) {
                        return Ok(outcome);
                    }
                }
                Action::Canary(canary) => {
                    let ran = self
                        .attempt(
                            desired,
                            observed,
                            &canary.rollout,
                            false,
                            Some(canary),
                            None,
                        )
                        .await?;
                    if let Some(outcome) = self.runs_on(ran) {
                        return Ok(outcome);
                    }
                }
                Action::Preview(preview) => {
                    let ran = self
                        .attempt(
                            desired,
                            observed,
                            &preview.rollout,
                            false,
                            None,
                            Some(preview),
                        )
                        .await?;
                    if let Some(outcome) = self.runs_on(ran) {
                        return Ok(outcome);
                    }
                }
            }
        }
        if plan.target().is_some() && cfg.rollout.keep_images {
            ctx.retain_images().await;
        }
        let (live, warm) = ctx.observed_live().await?;
        // The desired image serves by now: a status it cannot write is no verdict on it.
        self.set_status(|s| {
            s.phase = Phase::Converged;
            s.step = None;
            s.health = None;
            s.message = None;
            s.failed_generation = None;
            s.live = live.clone();
            s.warm = warm;
            s.canary = None;
            s.canary_mark = None;
            s.preview = None;
            s.preview_mark = None;
        })
        .map_err(|e| e.after_switch(desired.image.as_written()))?;
        self.publish_live();
        Ok(PassOutcome::Converged)
    }

    /// A canary runs on, or a preview awaits its promotion: the pass ends here, and the
    /// next one comes after a tick. None when the attempt switched.
    fn runs_on(&self, ran: Ran) -> Option<PassOutcome> {
        let look_again = self.ctx.cfg.health.interval.min(attempt::CANARY_TICK);
        match ran {
            Ran::Switched => None,
            Ran::InCanary { step } => Some(PassOutcome::Canary { step, look_again }),
            Ran::InPreview => Some(PassOutcome::Preview { look_again }),
        }
    }

    /// Points nginx at the replicas of the live `color` that answer their probe now: one
    /// that appeared (Swarm placed a task on another node) enters the upstream only after it
    /// answered; one that is gone (its node died or was drained) leaves it. When none answers
    /// the file is left as it is: nginx's own retries may still find one.
    async fn refresh(
        &self,
        desired: &Desired,
        color: crate::model::Color,
    ) -> Result<(), ReconcileError> {
        let ctx = self.ctx;
        let cfg = &ctx.cfg;
        let port = cfg.port(color);
        let name = cfg.container_name(color);
        let endpoints = ctx.runtime.endpoints(&name, port).await?;
        let mut answering = Vec::new();
        for (addr, outcome) in ctx.probe_each(&endpoints.addrs).await {
            if outcome.is_healthy() {
                answering.push(addr);
            } else {
                tracing::warn!(%addr, ?outcome, "replica does not answer its probe: kept out of nginx");
            }
        }
        let mut written = ctx.proxy.upstream_servers().unwrap_or_default();
        written.sort();
        if answering.is_empty() {
            return Err(ReconcileError::NoReplicaAnswers {
                service: name,
                running: endpoints.addrs.len(),
            });
        }
        if answering == written {
            return Ok(());
        }
        tracing::info!(
            before = ?written,
            after = ?answering,
            "the live color's replicas changed: nginx follows"
        );
        let comment = ctx.live_comment(color, desired.image.as_written());
        self.switch_nginx(port, &answering, &comment).await
    }

    /// Mirrors the status into the metrics.
    fn publish_live(&self) {
        let metrics = &self.ctx.metrics;
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        metrics.set_converged(status.phase == Phase::Converged);
        match &status.live {
            Some(live) => metrics.set_live(&live.color, &live.image, status.digest.as_deref()),
            None => metrics.clear_live(),
        }
    }

    /// Until the pass has observed the world, the status is the last one written with this
    /// desired state: a failure to observe (the engine unreachable) must not report the
    /// live color, the digest or the desired image as gone.
    fn unobserved(&self, desired: &Desired) {
        let previous = self.ctx.status.last();
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        *status = previous.unwrap_or_else(|| Status::new(Phase::Progressing));
        status.desired = Some(desired.image.as_written().to_string());
        status.generation = Some(desired.generation.clone());
        status.step = None;
        status.health = None;
    }

    /// Starts the status of a pass from what was observed.
    fn begin(&self, desired: &Desired, observed: &Observed) -> Result<(), ReconcileError> {
        let ctx = self.ctx;
        let live = observed.live(&ctx.cfg).map(|c| ctx.live_of(c));
        let previous = ctx.status.last();
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        *status = Status::new(Phase::Progressing);
        status.desired = Some(desired.image.as_written().to_string());
        status.generation = Some(desired.generation.clone());
        status.live = live;
        status.failed_generation = observed.failed_generation.clone();
        // A retry asked for another generation is no retry of this one.
        status.retry_asked = observed
            .retry_asked
            .clone()
            .filter(|g| *g == desired.generation);
        status.digest = previous.as_ref().and_then(|p| p.digest.clone());
        status.switching = observed.switching.clone();
        status.replicas = replicas_of(observed);
        status.warm = warm_of(&ctx.cfg, observed);
        // A canary of another generation is left behind: this pass settles nginx on its
        // stable color and removes it ([`Pass::left_behind`]).
        status.canary_mark = observed
            .canary
            .clone()
            .filter(|m| m.generation == desired.generation);
        status.preview_mark = observed
            .preview
            .clone()
            .filter(|m| m.generation == desired.generation);
        status.canary = previous
            .as_ref()
            .and_then(|p| p.canary.clone())
            .filter(|_| status.canary_mark.is_some());
        status.preview = previous
            .and_then(|p| p.preview)
            .filter(|_| status.preview_mark.is_some());
        Ok(())
    }

    /// A canary of another generation than `desired` was running: it is called off (this
    /// pass's plan settles nginx on the stable color, then removes the candidate). Its
    /// deployment's line in the audit log says so, once: the journal forgets it with this
    /// pass's first write.
    fn left_behind(&self, desired: &Desired, observed: &Observed) {
        let ctx = self.ctx;
        self.preview_left_behind(desired, observed);
        let Some(mark) = observed
            .canary
            .as_ref()
            .filter(|m| m.generation != desired.generation)
        else {
            return;
        };
        tracing::warn!(image = %mark.image, step = mark.step, "canary called off by a newer desired generation, back to the stable color");
        ctx.metrics.set_canary(None);
        ctx.canary_watch.forget();
        let record = state::audit::AuditRecord {
            time: state::now_rfc3339(),
            event: state::audit::DEPLOY_EVENT.into(),
            outcome: state::audit::AttemptOutcome::Cancelled,
            image: mark.image.clone(),
            // What the candidate runs, as every other record of the log names it.
            reference: observed
                .container(&ctx.cfg, mark.color)
                .map(|c| c.image.clone())
                .unwrap_or_else(|| mark.image.clone()),
            digest: None,
            previous: observed.history.first().cloned(),
            trigger: self.trigger,
            by: None,
            note: None,
            generation: mark.generation.clone(),
            duration_ms: 0,
            message: Some(format!(
                "the canary was called off at step {} by a newer desired generation ({})",
                mark.step, desired.generation
            )),
            color: Some(mark.color.to_string()),
        };
        if let Err(e) = state::audit::append(&ctx.audit_file(), &record) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }

    /// A preview of another generation than `desired` was awaiting promotion: it is called
    /// off (`fieldtrack abort`, or a newer desired state; this pass's plan puts the preview
    /// block back on the live color, then removes the candidate). Its deployment's line in
    /// the audit log says so, once: the journal forgets it with this pass's first write.
    fn preview_left_behind(&self, desired: &Desired, observed: &Observed) {
        let ctx = self.ctx;
        let Some(mark) = observed
            .preview
            .as_ref()
            .filter(|m| m.generation != desired.generation)
        else {
            return;
        };
        tracing::warn!(image = %mark.image, "preview called off by a newer desired generation");
        *ctx.preview_watch.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let record = state::audit::AuditRecord {
            time: state::now_rfc3339(),
            event: state::audit::DEPLOY_EVENT.into(),
            outcome: state::audit::AttemptOutcome::Cancelled,
            image: mark.image.clone(),
            reference: mark.image.clone(),
            digest: None,
            previous: observed.history.first().cloned(),
            trigger: self.trigger,
            by: None,
            note: None,
            generation: mark.generation.clone(),
            duration_ms: 0,
            message: Some(format!(
                "the preview was called off before its promotion by a newer desired generation ({})",
                desired.generation
            )),
            color: Some(mark.color.to_string()),
        };
        if let Err(e) = state::audit::append(&ctx.audit_file(), &record) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }

    /// Points nginx at `port` ([`Proxy::switch`]) with a [`SwitchMark`] in status.json for as
    /// long as nginx may run either file: a process that dies inside the switch leaves the
    /// mark to the next pass, which then reloads nginx with the file before anything else, or
    /// keeps what the file before pointed at when the file's own color does not run. The mark
    /// also stays when the switch failed half-way ([`ProxyError::leaves_nginx_unsettled`]).
    pub(crate) async fn switch_nginx(
        &self,
        port: u16,
        servers: &[std::net::SocketAddr],
        comment: &str,
    ) -> Result<(), ReconcileError> {
        let proxy = &self.ctx.proxy;
        self.marked_switch(port, || proxy.switch_to(servers, comment))
            .await
    }

    /// Runs `switch` (a write, test and reload of the upstream file whose production block
    /// ends on `port`) inside a [`SwitchMark`], as [`Pass::switch_nginx`] says; also the
    /// preview's way to nginx.
    pub(crate) async fn marked_switch<F>(
        &self,
        port: u16,
        switch: impl FnOnce() -> F,
    ) -> Result<(), ReconcileError>
    where
        F: std::future::Future<Output = Result<(), ProxyError>>,
    {
        let ctx = self.ctx;
        let mut from = ctx.proxy.upstream_ports().unwrap_or_default();
        let mut earlier = None;
        self.set_status(|s| {
            // A mark left by a pass before: nginx may still run any of its files.
            earlier = s.switching.take();
            if let Some(earlier) = &earlier {
                from.extend(earlier.from.iter().copied());
                from.push(earlier.to);
            }
            from.sort_unstable();
            from.dedup();
            s.switching = Some(SwitchMark {
                from,
                to: port,
                canary: false,
            });
        })?;
        let result = switch().await;
        let settled = match &result {
            Ok(()) => true,
            Err(e) => !e.leaves_nginx_unsettled(),
        };
        if settled {
            // Reloaded: nginx runs the file. Refused before any reload (or reloaded with the
            // file put back): nginx runs what it ran before, as uncertain as it was then.
            let after = if result.is_ok() { None } else { earlier };
            let written = self.set_status(|s| s.switching = after);
            match written {
                // The switch is done: a mark left on disk only makes the next pass reload
                // nginx with the same file once more, and the next write drops it.
                Err(e) if result.is_ok() => {
                    tracing::warn!(error = %e, "cannot clear the switch mark in the status")
                }
                written => written?,
            }
        }
        result.map_err(ReconcileError::Switch)
    }

    /// A canary step: shares traffic by weight between the stable color (`stable`, written
    /// first) and the canary (`canary`), with a canary [`SwitchMark`] in status.json that
    /// stays for as long as the file names both: a process that dies inside the canary
    /// leaves the next pass to settle nginx on the stable color before anything else
    /// ([`crate::plan::plan`]). The promotion (a switch to the canary alone) or the abort
    /// (to the stable color alone) goes through [`Pass::switch_nginx`], which clears it.
    pub(crate) async fn switch_canary(
        &self,
        stable: &[(std::net::SocketAddr, u32)],
        canary: &[(std::net::SocketAddr, u32)],
        comment: &str,
    ) -> Result<(), ReconcileError> {
        let ctx = self.ctx;
        let (Some((stable_addr, _)), Some((canary_addr, _))) = (stable.first(), canary.first())
        else {
            return Ok(());
        };
        let mut earlier = None;
        self.set_status(|s| {
            earlier = s.switching.take();
            s.switching = Some(SwitchMark {
                from: vec![stable_addr.port()],
                to: canary_addr.port(),
                canary: true,
            });
        })?;
        let servers: Vec<(std::net::SocketAddr, u32)> =
            stable.iter().chain(canary).copied().collect();
        let result = ctx.proxy.switch_weighted(&servers, comment).await;
        if let Err(e) = &result {
            if !e.leaves_nginx_unsettled() {
                // nginx runs what it ran before, as uncertain as it was then.
                self.set_status(|s| s.switching = earlier)?;
            }
        }
        result.map_err(ReconcileError::Switch)
    }

    /// Whether the desired file names another generation than `desired` now; a file that
    /// cannot be read right now (half-written) is no reason to stop.
    fn superseded(&self, desired: &Desired) -> bool {
        let cfg = &self.ctx.cfg;
        matches!(Desired::load(&cfg.desired_file, cfg), Ok(now) if now.generation != desired.generation)
    }

    /// Updates the in-memory status and writes status.json.
    pub(crate) fn set_status(&self, f: impl FnOnce(&mut Status)) -> Result<(), ReconcileError> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut status);
        if status.phase != Phase::Progressing {
            status.step = None;
        }
        self.ctx.status.save(&mut status)?;
        Ok(())
    }

    /// Marks a step of an attempt, then honours cancellation and the test pause hook.
    pub(crate) async fn step(&self, step: Step) -> Result<(), ReconcileError> {
        self.set_status(|s| {
            s.phase = Phase::Progressing;
            s.step = Some(step);
        })?;
        tracing::info!(step = step.as_str(), "step");
        self.emit(Progress::Step(step));
        crate::test_pause_point(step.as_str()).await;
        Ok(())
    }

    /// Records a failed attempt in status.json; the generation is marked failed when the
    /// error policy's `action` says so.
    pub fn record_failure(
        &self,
        desired: &Desired,
        error: &ReconcileError,
        action: &AfterPass,
    ) -> Result<(), ReconcileError> {
        if error.is_cancellation() {
            // Superseded or stopped, not failed: the generation stays eligible.
            return self.set_status(|s| {
                s.phase = Phase::Progressing;
                s.step = None;
                s.health = None;
                s.message = Some(format!("{error}"));
            });
        }
        let permanent = !error.is_transient();
        let marks_generation = action.mark_failed;
        let metrics = &self.ctx.metrics;
        metrics.reconcile_error(if permanent { "permanent" } else { "transient" });
        metrics.set_converged(false);
        self.set_status(|s| {
            s.phase = Phase::Failed;
            s.health = None;
            s.message = Some(format!("{error}"));
            if marks_generation {
                s.failed_generation = Some(desired.generation.clone());
                s.retry_asked = None;
            }
        })
    }

    /// Passes with retries: transient errors (Docker or the registry unreachable) are retried
    /// after the error policy's delay, up to `attempts` passes in all; anything else returns
    /// at once.
    pub async fn reconcile_with_retries(
        &self,
        desired: &Desired,
        attempts: u32,
    ) -> Result<PassOutcome, ReconcileError> {
        let mut backoff = IN_PROCESS_BACKOFF;
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let e = match self.reconcile(desired).await {
                // The preview is up: what a command waits for. The promotion is the
                // operator's (`fieldtrack promote`), whenever that comes.
                Ok(outcome @ PassOutcome::Preview { .. }) => return Ok(outcome),
                Ok(PassOutcome::Canary { look_again, .. }) => {
                    // The canary runs on: the next pass judges it again, after a tick,
                    // unless the desired file names another generation now (CI, an
                    // operator, `fieldtrack abort`): the newer state wins, and its pass
                    // (a daemon's, or the command that wrote it) calls this canary off.
                    if self.superseded(desired) {
                        return Err(ReconcileError::Cancelled);
                    }
                    tries = 0;
                    backoff.reset();
                    tokio::select! {
                        _ = tokio::time::sleep(look_again) => {}
                        _ = self.cancel.cancelled() => return Err(ReconcileError::Cancelled),
                    }
                    continue;
                }
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            let action = error_policy(&e);
            match action.requeue {
                Requeue::Backoff { .. } if tries < attempts && !self.cancel.is_cancelled() => {
                    let delay = action.delay(&mut backoff, Duration::ZERO);
                    tracing::warn!(error = %e, retry_in = ?delay, "transient error, retrying");
                    let _ = self.set_status(|s| {
                        s.phase = Phase::Progressing;
                        s.message = Some(format!("retrying in {}s: {e}", delay.as_secs()));
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => return Err(ReconcileError::Cancelled),
                    }
                }
                _ => {
                    // The caller reports the error itself; this line is for the debug log only.
                    tracing::debug!(error = %e, elapsed = ?started.elapsed(), "reconcile failed");
                    let _ = self.record_failure(desired, &e, &action);
                    return Err(e);
                }
            }
        }
    }
}
