//! One deployment attempt: candidate up, health gate, switch, drain, retire the old color,
//! record. Each step writes status.json first. Until the switch, any failure removes the
//! candidate and leaves production exactly as it was.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::{Context, Pass, Progress, ReconcileError};
use crate::apply::hooks::{run_hook, HookContext, POST_DEPLOY, PRE_SWITCH};
use crate::apply::http_probe::probe_delays;
use crate::desired::{Desired, ImageRef};
use crate::model::probe::{host_hint, ProbeOutcome, Prober};
use crate::model::proxy::Proxy;
use crate::model::runtime::{
    ContainerSpec, Runtime, LABEL_APP, LABEL_COLOR, LABEL_DESIRED, LABEL_GENERATION, LABEL_IMAGE,
};
use crate::model::settings::LABEL_SETTINGS;
use crate::model::Color;
use crate::model::InstanceState;
use crate::notifications::{Event, Notification};
use crate::observe::Observed;
use crate::plan::canary::CanaryAction;
use crate::plan::preview::PreviewAction;
use crate::plan::Rollout;
use crate::secrets::env_file;
use crate::secrets::redact::Redactor;
use crate::state::audit::AUTO_ROLLBACK_NOTE_PREFIX;
use crate::state::audit::{self, AttemptOutcome, AuditRecord};
use crate::state::history;
use crate::state::status::{HealthProgress, Live, Step, Warm};

mod canary;
mod preview;

pub(super) use canary::TICK as CANARY_TICK;

/// Consecutive failed probes during the drain that send traffic back to the old color.
const DRAIN_FAILURES: u32 = 3;
/// The longest the drain waits for nginx's old workers beyond `rollout.drain`.
pub(crate) const OLD_WORKERS_LIMIT: Duration = Duration::from_secs(60);
/// Log lines of a failed candidate quoted in the error.
const LOG_LINES: usize = 20;

/// What one attempt works with: the pass it belongs to, where traffic moves, and what it
/// moves away from.
struct Attempt<'a, R, P, H> {
    pass: &'a Pass<'a, R, P, H>,
    desired: &'a Desired,
    color: Color,
    /// As written in the desired file.
    image: &'a str,
    reference: &'a str,
    /// The old color's container, retired after the drain.
    old: Option<&'a str>,
    /// What traffic goes back to when the new color fails: the live image when one is live,
    /// else the history's head.
    previous: Option<String>,
    /// The live image when the history does not start with it (its own drain was cut short
    /// by this generation): it served, so it is recorded once traffic has left it.
    unrecorded_live: Option<String>,
    /// Deploy starts a candidate; Switch reuses the one running.
    start: bool,
    /// What this attempt goes from.
    observed: &'a Observed,
    /// The image served before (the history names it): it goes back, at once, never
    /// through canary steps.
    served_before: bool,
    /// The plan's decision on a running canary, when that is what this pass carries out.
    canary: Option<&'a CanaryAction>,
    /// The plan's decision on a preview awaiting promotion, when that is what this pass
    /// carries out.
    preview: Option<&'a PreviewAction>,
}

/// How an attempt that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
    /// nginx serves the new image alone, the old color retired (or kept warm).
    Switched,
    /// A canary runs, at this step: the loop looks again at the next tick.
    InCanary { step: usize },
    /// A preview awaits `fieldtrack promote`: the loop looks again at the next tick.
    InPreview,
}

impl<R: Runtime, P: Proxy, H: Prober> Pass<'_, R, P, H> {
    /// Runs a Deploy (`start`: a new candidate) or Switch (the one running) action, or a
    /// canary's decision (`canary`); audits the outcome once the deployment ended (not while
    /// a canary runs on).
    pub(super) async fn attempt(
        &self,
        desired: &Desired,
        observed: &Observed,
        rollout: &Rollout,
        start: bool,
        canary: Option<&CanaryAction>,
        preview: Option<&PreviewAction>,
    ) -> Result<Ran, ReconcileError> {
        let ctx = self.ctx;
        let live = observed.live(&ctx.cfg).map(|c| {
            let image = served_image(&ctx.cfg, c, observed.history.first());
            // A generation that failed and stayed live (nothing to go back to) never enters
            // the history.
            let failed = c.generation.is_some() && c.generation == observed.failed_generation;
            (image, failed)
        });
        let unrecorded_live = live
            .clone()
            .filter(|(image, failed)| !failed && observed.history.first() != Some(image))
            .map(|(image, _)| image);
        let at = Attempt {
            pass: self,
            desired,
            color: rollout.color,
            image: &rollout.image,
            reference: &rollout.reference,
            old: rollout.old.as_deref(),
            previous: live
                .map(|(image, _)| image)
                .or_else(|| observed.history.first().cloned()),
            unrecorded_live,
            start,
            observed,
            served_before: observed.history.contains(&rollout.image),
            canary,
            preview,
        };
        let started = Instant::now();
        let mut digest = None;
        let mut result = at.run(&mut digest).await;
        if let Ok(ran @ (Ran::InCanary { .. } | Ran::InPreview)) = &result {
            return Ok(*ran);
        }
        // A canary's deployment began with its step 1, a preview's when it opened, passes
        // ago.
        let began = observed
            .canary
            .as_ref()
            .filter(|m| canary.is_some() && m.generation == desired.generation)
            .and_then(|m| humantime::parse_rfc3339(&m.started).ok())
            .or_else(|| {
                observed
                    .preview
                    .as_ref()
                    .filter(|m| preview.is_some() && m.generation == desired.generation)
                    .and_then(|m| m.since_time())
            })
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
        if let Err(ReconcileError::FailedAfterSwitch {
            back_to: Some(_),
            reason,
            rolled_back_to,
            ..
        }) = &mut result
        {
            // Before anything reports the failure (audit, webhook, status.json): whoever
            // reads it then finds the desired file already rewritten, and the report says so.
            if ctx.cfg.rollout.auto_rollback {
                *rolled_back_to = at.auto_rollback(reason);
            }
        }
        let took = began.unwrap_or_else(|| started.elapsed());
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let record = AuditRecord {
            time: crate::state::now_rfc3339(),
            event: audit::DEPLOY_EVENT.into(),
            outcome: match &result {
                Ok(_) => AttemptOutcome::Succeeded,
                Err(e) if e.is_cancellation() => AttemptOutcome::Cancelled,
                Err(ReconcileError::FailedAfterSwitch { .. }) => AttemptOutcome::RolledBack,
                Err(_) => AttemptOutcome::Failed,
            },
            image: rollout.image.clone(),
            reference: rollout.reference.clone(),
            digest: digest.clone(),
            previous: at.previous.clone(),
            trigger: self.trigger,
            by: desired.by.clone(),
            note: desired.note.clone(),
            generation: desired.generation.clone(),
            duration_ms,
            message: result.as_ref().err().map(|e| e.to_string()),
            color: Some(rollout.color.to_string()),
        };
        // Every attempt gets its line, a transient failure too (its retry gets another).
        if let Err(e) = audit::append(&ctx.audit_file(), &record) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
        if !matches!(&result, Err(e) if e.is_transient()) {
            ctx.metrics.deployment(record.outcome, took);
            at.notify(&result, &digest, duration_ms);
        }
        match &result {
            Ok(_) => self
                .set_status(|s| s.digest = digest)
                .map_err(|e| e.after_switch(&rollout.image))?,
            // The image serves: its digest is what status.json reports, once it can write.
            Err(ReconcileError::Unrecorded { .. }) => {
                let _ = self.set_status(|s| s.digest = digest);
            }
            Err(_) => {}
        }
        result
    }
}

impl<'a, R: Runtime, P: Proxy, H: Prober> Attempt<'a, R, P, H> {
    /// The color of this attempt's old container when it runs and nginx serves it: the
    /// production a canary or a preview keeps while the candidate waits. None when there is
    /// no such color (a first deploy, production down, or another color served).
    async fn live_old_color(&self) -> Result<Option<Color>, ReconcileError> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        let Some(old) = self.old else {
            return Ok(None);
        };
        let Some(color) = Color::ALL
            .into_iter()
            .find(|c| cfg.container_name(*c) == old && *c != self.color)
        else {
            return Ok(None);
        };
        let running = matches!(ctx.runtime.state(old).await?, Some(InstanceState::Running));
        let served = ctx
            .proxy
            .upstream_ports()
            .map_err(ReconcileError::Switch)?
            .first()
            == Some(&cfg.port(color));
        Ok((running && served).then_some(color))
    }

    fn ctx(&self) -> &'a Context<R, P, H> {
        self.pass.ctx
    }

    fn cancelled(&self) -> bool {
        self.pass.cancel.is_cancelled()
    }

    /// After traffic went back to the old color: rewrite the desired file to the previous
    /// image, so the desired state says what runs and the bad image is not tried again.
    /// The image written, None when the file was left as it is.
    fn auto_rollback(&self, reason: &str) -> Option<String> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        let Some(previous) = self.previous.as_deref() else {
            tracing::warn!("no previous image in the history: the desired file is left as it is");
            return None;
        };
        // The same image, redeployed for settings changed in the config: the desired file
        // already names what the old color runs, and rewriting it (a new generation) would
        // only deploy the same settings again. The failed generation waits for a change.
        if previous == self.image {
            tracing::warn!(
                image = %self.image,
                "the previous image is this one (its [container] settings changed): the desired file is left as it is"
            );
            return None;
        }
        // Someone (CI, an operator) wrote a newer desired state during the attempt: it wins.
        match Desired::load(&cfg.desired_file, cfg) {
            Ok(now) if now.generation == self.desired.generation => {}
            _ => {
                tracing::warn!(
                    "the desired file changed during the attempt: left as it is, no auto-rollback"
                );
                return None;
            }
        }
        let image = match ImageRef::parse(previous, &cfg.repository, &cfg.allowed_repositories) {
            Ok(image) => image,
            Err(e) => {
                tracing::error!(error = %e, "the history's head is not a valid image: no auto-rollback");
                return None;
            }
        };
        let note = format!(
            "{AUTO_ROLLBACK_NOTE_PREFIX}{} failed after the switch: {reason}",
            self.image
        );
        // Pinned like any rollback: what comes back is what ran, even if the tag moved since.
        let recorded = audit::read(&ctx.audit_file()).ok().and_then(|records| {
            records
                .into_iter()
                .rev()
                .find(|r| {
                    r.is_deploy() && r.image == previous && r.outcome == AttemptOutcome::Succeeded
                })
                .and_then(|r| r.digest)
        });
        let rollback = Desired::new(image, Some(&note), Some("fieldtrack"), false).pinned(recorded);
        match rollback.write(&cfg.desired_file) {
            Ok(()) => {
                tracing::warn!(
                    image = %previous,
                    generation = %rollback.generation,
                    "auto-rollback: desired file rewritten to the previous image"
                );
                Some(previous.to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, "auto-rollback: cannot rewrite the desired file");
                None
            }
        }
    }

    /// The steps, from the pull to the post_deploy hook. Before the switch a failure has one
    /// cleanup, the candidate's removal (a canary that ended badly removes its own, once
    /// nginx is back on the stable color).
    async fn run(&self, digest: &mut Option<String>) -> Result<Ran, ReconcileError> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        let name = cfg.container_name(self.color);
        let port = cfg.port(self.color);
        if let Some(action) = self.canary {
            return self.canary_decision(action, digest).await;
        }
        if let Some(action) = self.preview {
            return self.preview_decision(action, digest).await;
        }

        if self.start {
            self.start_candidate(&name, port, digest).await?;
        } else {
            *digest = self.image_digest().await;
        }
        let hook = self.hook_context(port);
        let (servers, stable) = match self.ready_to_switch(&name, port, &hook).await {
            Ok(ready) => ready,
            Err(e) => {
                self.remove_candidate(&name).await;
                return Err(e);
            }
        };
        if let Some(stable) = stable {
            // The steps run pass by pass from here (the journal says where they stand).
            return self.begin_canary(&name, &servers, stable).await;
        }
        match self.preview_stable().await {
            // The promotion is the operator's, pass by pass from here (the journal says so).
            Ok(Some(stable)) => return self.open_preview(&name, &servers, stable).await,
            Ok(None) => {}
            Err(e) => {
                self.remove_candidate(&name).await;
                return Err(e);
            }
        }
        self.switch_and_finish(&name, port, &servers, &hook).await?;
        Ok(Ran::Switched)
    }

    /// The switch to `servers` of the candidate `name` on `port`, then the drain, the old
    /// color's retirement and the history, up to the post_deploy hook.
    async fn switch_and_finish(
        &self,
        name: &str,
        port: u16,
        servers: &[SocketAddr],
        hook: &HookContext,
    ) -> Result<(), ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let (color, image) = (self.color, self.image);
        let name = name.to_string();
        pass.step(Step::Switching).await?;
        // From here on the switch runs to its end: a cancellation is only honoured before it.
        if let Err(e) = pass
            .switch_nginx(port, servers, &ctx.live_comment(color, image))
            .await
        {
            if let Some(kept) = self.kept_if_unsettled(&name, &e) {
                tracing::error!(error = %e, container = %name, "switch failed half-way; the candidate is kept");
                return Err(kept);
            }
            self.remove_candidate(&name).await;
            return Err(e);
        }
        tracing::info!(%color, port, "nginx switched");
        if self.canary.is_some() {
            self.forget_canary();
        }
        if self.preview.is_some() || self.observed.preview.is_some() {
            self.forget_preview();
        }
        self.now_serving();
        pass.emit(Progress::Switched {
            color: color.to_string(),
            port,
        });
        self.after_the_switch(&name, port, hook)
            .await
            .map_err(|e| e.after_switch(image))
    }

    /// Pulls the image unless the engine has it, then starts the candidate `name` on `port`.
    /// Nothing to clean up on failure: no candidate exists before `run`, which cleans up
    /// after itself (and removing by name could hit a container that is not ours).
    async fn start_candidate(
        &self,
        name: &str,
        port: u16,
        digest: &mut Option<String>,
    ) -> Result<(), ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let (color, image, reference) = (self.color, self.image, self.reference);
        pass.step(Step::Pulling).await?;
        let local = ctx.runtime.image(reference).await?;
        if local.is_none() {
            tracing::info!(%reference, "pulling");
            ctx.runtime
                .pull(reference)
                .await
                .map_err(|source| ReconcileError::Pull {
                    reference: reference.to_string(),
                    source,
                })?;
        }
        *digest = self.image_digest().await;
        if self.cancelled() {
            return Err(ReconcileError::Cancelled);
        }

        pass.step(Step::Starting).await?;
        let env = env_file::read(&cfg.container.env_file)?;
        let labels = HashMap::from([
            (LABEL_APP.to_string(), cfg.app.clone()),
            (LABEL_COLOR.to_string(), color.to_string()),
            (LABEL_IMAGE.to_string(), reference.to_string()),
            (LABEL_DESIRED.to_string(), image.to_string()),
            (
                LABEL_GENERATION.to_string(),
                self.desired.generation.clone(),
            ),
            (
                LABEL_SETTINGS.to_string(),
                cfg.container.settings.to_label(),
            ),
        ]);
        let spec = ContainerSpec {
            name: name.to_string(),
            image: reference.to_string(),
            labels,
            host_port: port,
            container_port: cfg.container.port,
            env,
            stop_grace: cfg.container.stop_timeout,
            settings: cfg.container.settings.clone(),
        };
        ctx.runtime.run(&spec).await?;
        Ok(())
    }

    /// From the candidate running to the moment nginx may be switched to it: the health
    /// gate, the pre_switch hook, a cancellation between them, and whether a canary runs
    /// first (the stable color it shares traffic with). The servers that passed the gate.
    /// On error the caller removes the candidate.
    async fn ready_to_switch(
        &self,
        name: &str,
        port: u16,
        hook: &HookContext,
    ) -> Result<(Vec<SocketAddr>, Option<Color>), ReconcileError> {
        let (pass, cfg) = (self.pass, &self.ctx().cfg);
        pass.step(Step::Health).await?;
        let servers = self.health_gate(name, port).await?;
        self.cancel_point()?;
        // A cancellation while the hook runs kills it (dropping its future does) and stops
        // here: nothing switches to an image whose generation is no longer wanted.
        tokio::select! {
            r = run_hook(PRE_SWITCH, &cfg.hooks.pre_switch, hook, cfg.hooks.timeout) => r?,
            _ = pass.cancel.cancelled() => {}
        };
        self.cancel_point()?;
        let stable = self.canary_stable().await?;
        Ok((servers, stable))
    }

    /// The image serves: whatever an earlier attempt said (a pass by hand retries a failed
    /// generation), its generation has not failed, and the retry asked is made. Left
    /// marked, a transient error from here on (a history the disk does not take) would make
    /// every later pass answer AlreadyFailed, and the live image would never be recorded.
    fn now_serving(&self) {
        let generation = &self.desired.generation;
        let unmarked = self.pass.set_status(|s| {
            if s.failed_generation.as_ref() == Some(generation) {
                s.failed_generation = None;
            }
            s.retry_asked = None;
        });
        if let Err(e) = unmarked {
            tracing::warn!(error = %e, "cannot clear the failed mark of the generation now live");
        }
    }

    /// From the switch to the post_deploy hook: the new image serves from here on, so a
    /// state file it cannot write is no verdict on it ([`ReconcileError::after_switch`]).
    async fn after_the_switch(
        &self,
        name: &str,
        port: u16,
        hook: &HookContext,
    ) -> Result<(), ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let (color, image, reference) = (self.color, self.image, self.reference);
        if let Some(served) = &self.unrecorded_live {
            // Traffic left an image that served: it is a version to roll back to.
            history::record(&cfg.history_file, served, cfg.history_limit)?;
            tracing::info!(image = %served, "recorded the image switched away from");
        }
        pass.set_status(|s| {
            s.health = None;
            // A rollback to the warm color: it serves now, it is no longer kept warm.
            s.warm = s.warm.take().filter(|w| w.container != name);
            s.live = Some(Live {
                color: color.to_string(),
                image: reference.to_string(),
                container: name.to_string(),
                port,
            });
        })?;

        pass.step(Step::Draining).await?;
        self.drain(name, port).await?;

        pass.step(Step::Cleanup).await?;
        if let Some(old) = self.old {
            if !self.keep_warm(old).await? {
                ctx.retire(old, cfg.container.stop_timeout).await?;
            }
        }
        crate::test_pause_point("recording").await;
        history::record(&cfg.history_file, image, cfg.history_limit)?;
        // Reported only: the deployment is done whatever the hook says.
        if let Err(e) = run_hook(POST_DEPLOY, &cfg.hooks.post_deploy, hook, cfg.hooks.timeout).await
        {
            tracing::warn!(error = %e, "post_deploy hook failed");
        }
        Ok(())
    }

    /// With `rollout.keep_previous`, keeps the old color running (out of nginx, drained)
    /// instead of retiring it, and records the window in status.json ([`Warm`]): the next
    /// passes keep that same container until the window ends, then remove it. False when
    /// there is no window or the old color does not run: it is retired as usual.
    async fn keep_warm(&self, old: &str) -> Result<bool, ReconcileError> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        let keep = cfg.rollout.keep_previous;
        if keep.is_zero() {
            return Ok(false);
        }
        let containers = ctx.runtime.containers(&cfg.app).await?;
        let Some((c, color)) = containers
            .iter()
            .filter(|c| c.name == old && c.state.is_running())
            .find_map(|c| Some((c, c.color?)))
        else {
            return Ok(false);
        };
        let until = SystemTime::now() + keep;
        let warm = Warm {
            color,
            image: served_image(cfg, c, None),
            container: c.name.clone(),
            id: c.id.clone(),
            until: humantime::format_rfc3339_seconds(until).to_string(),
        };
        tracing::info!(container = %old, image = %warm.image, until = %warm.until, "keeping the previous color warm");
        self.pass.set_status(|s| s.warm = Some(warm))?;
        Ok(true)
    }

    fn hook_context(&self, port: u16) -> HookContext {
        let cfg = &self.ctx().cfg;
        HookContext {
            app: cfg.app.clone(),
            image: self.image.to_string(),
            reference: self.reference.to_string(),
            previous: self.previous.clone(),
            color: self.color,
            port,
            redactor: Redactor::from_env_file(&cfg.container.env_file),
        }
    }

    /// Tells the webhook how the attempt ended (fire-and-forget: never delays the
    /// deployment).
    fn notify(
        &self,
        result: &Result<Ran, ReconcileError>,
        digest: &Option<String>,
        duration_ms: u64,
    ) {
        let ctx = self.ctx();
        let Some(notifier) = &ctx.notifier else {
            return;
        };
        let event = match result {
            Ok(_) if self.served_before => Event::RolledBack,
            Ok(_) => Event::Succeeded,
            Err(e) if e.is_cancellation() => return,
            Err(ReconcileError::FailedAfterSwitch {
                back_to: Some(_), ..
            }) if ctx.cfg.rollout.auto_rollback => Event::AutoRollback,
            Err(_) => Event::Failed,
        };
        notifier.send(Notification {
            previous: self.previous.clone(),
            color: Some(self.color),
            digest: digest.clone(),
            message: result.as_ref().err().map(|e| e.to_string()),
            by: self.desired.by.clone(),
            note: self.desired.note.clone(),
            generation: Some(self.desired.generation.clone()),
            duration_ms: Some(duration_ms),
            ..Notification::new(event, ctx.cfg.app.clone(), self.image)
        });
    }

    /// Probes the candidate until it answers a code of `health.expect` (any 2xx by default):
    /// the first probe right away, gaps growing to `health.interval`, deadline `attempts x
    /// interval`. The container's state is checked every 250 ms, so one that exits fails the
    /// attempt at once, with its last log lines. A refused Host (400/403/421 without
    /// `health.host`) is named in the error as the likely cause.
    ///
    /// A color of several replicas (Swarm tasks) passes once as many as it wants run and each
    /// of them answered healthy; a replica that passed is not probed again. Returns where they
    /// answer, which is what nginx is pointed at.
    async fn health_gate(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let deadline_len = cfg.health.deadline();
        let deadline = Instant::now() + deadline_len;
        let mut probes = 0u32;
        let mut last = String::from("none yet");
        let mut healthy: Vec<SocketAddr> = Vec::new();
        for gap in probe_delays(cfg.health.interval) {
            let wake = Instant::now() + gap;
            loop {
                self.exited_check(name).await?;
                if self.cancelled() {
                    return Err(ReconcileError::Cancelled);
                }
                let now = Instant::now();
                if now >= wake {
                    break;
                }
                tokio::time::sleep((wake - now).min(Duration::from_millis(250))).await;
            }
            probes += 1;
            let endpoints = ctx.runtime.endpoints(name, port).await?;
            // A replica that went away (its node died) no longer counts.
            healthy.retain(|a| endpoints.addrs.contains(a));
            let unproven: Vec<SocketAddr> = endpoints
                .addrs
                .iter()
                .filter(|a| !healthy.contains(a))
                .copied()
                .collect();
            let mut failed = None;
            for (addr, outcome) in ctx.probe_each(&unproven).await {
                match outcome {
                    ProbeOutcome::Healthy(_) => healthy.push(addr),
                    outcome => failed = Some((addr, outcome)),
                }
            }
            let running_enough = endpoints.addrs.len() >= endpoints.wanted.max(1);
            let passed = failed.is_none() && running_enough;
            pass.set_status(|s| {
                s.health = Some(HealthProgress {
                    passed,
                    probes,
                    deadline_secs: deadline_len.as_secs(),
                })
            })?;
            pass.emit(Progress::Health { probes, passed });
            if passed {
                tracing::info!(probes, replicas = healthy.len(), "candidate healthy");
                healthy.sort();
                return Ok(healthy);
            }
            last = match &failed {
                Some((addr, outcome)) => {
                    let mut last = describe(outcome);
                    if endpoints.wanted > 1 {
                        last = format!("{addr}: {last}");
                    }
                    if let Some(hint) = host_hint(outcome, *addr, cfg.health.host.as_deref()) {
                        last = format!("{last}; {hint}");
                    }
                    last
                }
                None => format!(
                    "{} of {} replicas running",
                    endpoints.addrs.len(),
                    endpoints.wanted
                ),
            };
            if failed.is_some() {
                ctx.metrics.health_probe_failed();
            }
            tracing::info!(probes, outcome = %last, "candidate not healthy yet");
            if Instant::now() >= deadline {
                break;
            }
        }
        // A last look: an exit explains more than a timeout.
        self.exited_check(name).await?;
        Err(ReconcileError::Unhealthy {
            container: name.to_string(),
            image: self.image.to_string(),
            deadline: deadline_len,
            last,
            logs: self.last_logs(name).await,
        })
    }

    async fn exited_check(&self, name: &str) -> Result<(), ReconcileError> {
        let state = self.ctx().runtime.state(name).await?;
        match state {
            Some(InstanceState::Running) | Some(InstanceState::Created) => Ok(()),
            other => Err(ReconcileError::CandidateExited {
                container: name.to_string(),
                image: self.image.to_string(),
                state: other.map_or("disappeared".to_string(), |s| s.to_string()),
                logs: self.last_logs(name).await,
            }),
        }
    }

    /// The drain window: the old color keeps running, the new one keeps being probed. Three
    /// failed probes in a row, or the new container exiting, send traffic back to the old
    /// color. It ends when `rollout.drain` has passed and nginx's workers of the previous
    /// configuration have exited (until then they may still send the old color requests:
    /// for about 100 ms after any reload, and as long as a request they took lasts), at most
    /// [`OLD_WORKERS_LIMIT`] after `rollout.drain`. A cancellation ends it early, leaving
    /// both colors running.
    async fn drain(&self, name: &str, port: u16) -> Result<(), ReconcileError> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        let end = Instant::now() + cfg.rollout.drain;
        let gap = cfg.health.interval.min(Duration::from_secs(1));
        let mut failures = 0u32;
        let retired = ctx
            .proxy
            .wait_retired(cfg.rollout.drain.saturating_add(OLD_WORKERS_LIMIT));
        tokio::pin!(retired);
        let mut workers_gone = false;
        loop {
            let now = Instant::now();
            if now >= end && workers_gone {
                return Ok(());
            }
            let wait = if now < end { gap.min(end - now) } else { gap };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut retired, if !workers_gone => {
                    workers_gone = true;
                    continue;
                }
                // A newer generation (or a stop) ends the drain: the new color stays live and
                // the old one keeps running, so a rollback to it is a pure nginx switch, and a
                // restarted daemon finishes the job. The history is not written: no full
                // success.
                _ = self.pass.cancel.cancelled() => return Err(match self.old {
                    Some(old) => ReconcileError::DrainCutShort {
                        image: self.image.to_string(),
                        old: old.to_string(),
                    },
                    None => ReconcileError::Cancelled,
                }),
            }
            let reason = match ctx.runtime.state(name).await? {
                Some(InstanceState::Running) => match self.probe_all(name, port).await? {
                    ProbeOutcome::Healthy(_) => {
                        failures = 0;
                        continue;
                    }
                    outcome => {
                        failures += 1;
                        ctx.metrics.health_probe_failed();
                        tracing::warn!(failures, outcome = %describe(&outcome), "probe failed during the drain");
                        if failures < DRAIN_FAILURES {
                            continue;
                        }
                        format!(
                            "{DRAIN_FAILURES} failed probes in a row, last: {}",
                            describe(&outcome)
                        )
                    }
                },
                other => format!(
                    "the container {}",
                    other.map_or("disappeared".to_string(), |s| s.to_string())
                ),
            };
            return self.switch_back(name, reason).await;
        }
    }

    /// One probe of every running replica of the color: the first failure, else healthy.
    /// No replica running is a failure too.
    async fn probe_all(&self, name: &str, port: u16) -> Result<ProbeOutcome, ReconcileError> {
        let ctx = self.ctx();
        let endpoints = ctx.runtime.endpoints(name, port).await?;
        if endpoints.addrs.is_empty() {
            return Ok(ProbeOutcome::Unreachable("no replica runs".to_string()));
        }
        let several = endpoints.addrs.len() > 1;
        Ok(ctx
            .probe_each(&endpoints.addrs)
            .await
            .into_iter()
            .find(|(_, o)| !o.is_healthy())
            .map(|(addr, outcome)| match outcome {
                ProbeOutcome::Unreachable(why) if several => {
                    ProbeOutcome::Unreachable(format!("{addr}: {why}"))
                }
                outcome => outcome,
            })
            .unwrap_or(ProbeOutcome::Healthy(200)))
    }

    /// Sends traffic back to the old color after a failure during the drain.
    async fn switch_back(&self, name: &str, reason: String) -> Result<(), ReconcileError> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        let old_color = Color::ALL
            .into_iter()
            .find(|c| Some(cfg.container_name(*c).as_str()) == self.old);
        let old_running = match self.old {
            Some(old) => matches!(ctx.runtime.state(old).await?, Some(InstanceState::Running)),
            None => false,
        };
        let Some(back) = old_color.filter(|_| old_running) else {
            // Nothing to go back to: the new color is all there is, so it keeps the traffic.
            tracing::error!(%reason, "new color failed during the drain and no old color runs");
            return Err(ReconcileError::FailedAfterSwitch {
                image: self.image.to_string(),
                reason,
                back_to: None,
                rolled_back_to: None,
            });
        };
        tracing::warn!(%reason, back_to = %back, "new color failed during the drain, switching back");
        let back_image = self.previous.as_deref().unwrap_or("previous");
        let back_port = cfg.port(back);
        let mut servers = ctx
            .runtime
            .endpoints(&cfg.container_name(back), back_port)
            .await?
            .addrs;
        if servers.is_empty() {
            servers = crate::model::runtime::Endpoints::loopback(back_port).addrs;
        }
        self.pass
            .switch_nginx(back_port, &servers, &ctx.live_comment(back, back_image))
            .await?;
        self.remove_candidate(name).await;
        let back_reference = self
            .previous
            .as_deref()
            .and_then(|p| ImageRef::parse(p, &cfg.repository, &cfg.allowed_repositories).ok())
            .map(|i| cfg.image_reference(&i))
            .unwrap_or_default();
        let written = self.pass.set_status(|s| {
            s.live = Some(Live {
                color: back.to_string(),
                image: back_reference,
                container: cfg.container_name(back),
                port: cfg.port(back),
            })
        });
        if let Err(e) = written {
            // Traffic is back on the old color whatever status.json says: the failure is
            // the new image's, and the next status write says what is live.
            tracing::error!(error = %e, "cannot write the status after switching back");
        }
        Err(ReconcileError::FailedAfterSwitch {
            image: self.image.to_string(),
            reason,
            back_to: Some(back.to_string()),
            rolled_back_to: None,
        })
    }

    /// A switch that failed half-way ([`ProxyError::leaves_nginx_unsettled`]): nginx may send
    /// traffic to the candidate `name` (or will at its next reload), so it stays, and the
    /// next pass settles nginx first (the mark in status.json says so). The error to return
    /// then; None for any other error.
    ///
    /// [`ProxyError::leaves_nginx_unsettled`]: crate::model::proxy::ProxyError::leaves_nginx_unsettled
    fn kept_if_unsettled(&self, name: &str, e: &ReconcileError) -> Option<ReconcileError> {
        match e {
            ReconcileError::Switch(e) if e.leaves_nginx_unsettled() => {
                Some(ReconcileError::StillServed {
                    container: name.to_string(),
                    reason: e.to_string(),
                    upstream_file: self.ctx().cfg.nginx.upstream_file.clone(),
                })
            }
            _ => None,
        }
    }

    /// Cancelled (a newer generation, a stop signal): stop here.
    fn cancel_point(&self) -> Result<(), ReconcileError> {
        if self.cancelled() {
            return Err(ReconcileError::Cancelled);
        }
        Ok(())
    }

    /// Removes a failed candidate; a failure here is logged (the next pass removes it). A
    /// Switch's candidate may be the color kept warm: status.json stops naming it.
    async fn remove_candidate(&self, name: &str) {
        if let Err(e) = self.ctx().retire(name, Duration::from_secs(1)).await {
            tracing::error!(container = %name, error = %e, "cannot remove the candidate; the next pass will");
            return;
        }
        let unwarm = self
            .pass
            .set_status(|s| s.warm = s.warm.take().filter(|w| w.container != name));
        if let Err(e) = unwarm {
            tracing::warn!(error = %e, "cannot update the status");
        }
    }

    /// The registry digest of the local image (`sha256:…`), when the engine knows one.
    async fn image_digest(&self) -> Option<String> {
        let reference = self.reference;
        let info = self.ctx().runtime.image(reference).await.ok().flatten()?;
        let repository = reference
            .split_once('@')
            .map(|(r, _)| r)
            .unwrap_or(reference);
        let repository = match repository.rfind(':') {
            Some(i) if !repository[i..].contains('/') => &repository[..i],
            _ => repository,
        };
        info.repo_digests
            .iter()
            .find_map(|d| d.strip_prefix(repository)?.strip_prefix('@'))
            .map(str::to_string)
    }

    /// The candidate's last log lines, for the error message (and so status.json, the audit
    /// log, the webhook): the env file's values redacted, since an app may print its own.
    async fn last_logs(&self, name: &str) -> String {
        let ctx = self.ctx();
        let logs = match ctx.runtime.logs(name, LOG_LINES).await {
            Ok(logs) if logs.trim().is_empty() => "(no output)".to_string(),
            Ok(logs) => logs.trim_end().to_string(),
            Err(e) => format!("(cannot read the logs: {e})"),
        };
        Redactor::from_env_file(&ctx.cfg.container.env_file).redact(&logs)
    }
}

/// The image a served container runs, as the history writes it: its `fieldtrack.desired`
/// label; for a container started before that label, the history's head when that names the
/// same image, else the full reference it runs.
fn served_image(
    cfg: &crate::config::Config,
    c: &crate::model::Instance,
    head: Option<&String>,
) -> String {
    if let Some(desired) = &c.desired {
        return desired.clone();
    }
    let head_reference = head.and_then(|h| {
        ImageRef::parse(h, &cfg.repository, &cfg.allowed_repositories)
            .ok()
            .map(|i| cfg.image_reference(&i))
    });
    match (head, head_reference) {
        (Some(head), Some(r)) if c.image == r || c.image.starts_with(&format!("{r}@")) => {
            head.clone()
        }
        _ => c.image.clone(),
    }
}

fn describe(outcome: &ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Healthy(code) => format!("HTTP {code}"),
        ProbeOutcome::Unhealthy(code) => format!("HTTP {code}"),
        ProbeOutcome::Unreachable(reason) => reason.clone(),
    }
}
