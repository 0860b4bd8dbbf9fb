//! Canary steps, one decision per pass: between the health gate and the full switch, nginx
//! shares the traffic by weight between the stable (live) color and the candidate, step by
//! step, and each step is judged from what real requests got, read from nginx's access log.
//!
//! Where the canary stands is recorded state: the journal's
//! [`CanaryMark`](crate::state::status::CanaryMark) names the generation, the step and when it
//! began, written before nginx is switched to the step's weights. Each pass's plan decides
//! from it, the upstream file and the step's window ([`crate::plan::canary::decide`]); this
//! module carries the decision out and returns, and the loop looks again at the next tick. A
//! process killed inside a step leaves the mark: the next one goes on with that step, from
//! when it began.
//!
//! A step lasts its `pause` and until `min_requests` reached the canary (a manual step until
//! `fieldtrack promote`). It fails on the judgement (error rate, latency), on three failed
//! health probes of the canary in a row, or on the canary's container exiting: nginx goes
//! back to the stable color alone, the candidate is removed, and the attempt ends as a
//! failure after the switch, so the desired file is rewritten like any auto-rollback. A newer
//! desired generation (an `abort` is one) leaves the canary behind: its pass settles nginx on
//! the stable color and removes the candidate, as for any canary left behind.
//!
//! Throughout, the journal's [`SwitchMark`](crate::state::status::SwitchMark) says nginx names
//! both colors on purpose.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::{describe, Attempt, Ran};
use crate::config::Pause;
use crate::desired::promote::{request_path, PromoteRequest};
use crate::model::probe::Prober;
use crate::model::proxy::Proxy;
use crate::model::runtime::{Endpoints, Runtime};
use crate::model::Color;
use crate::notifications::{Event, Notification};
use crate::observe::CanaryWindow;
use crate::plan::canary::{judge, plain, CanaryAction, Decision, Judgement, Passed};
use crate::plan::canary_weights;
use crate::reconcile::{Progress, ReconcileError};
use crate::state::audit::{self, AttemptOutcome, AuditRecord};
use crate::state::status::{CanaryMark, CanaryProgress, Step, WindowFigures};

/// How often a running step is looked at, at most (`health.interval` when shorter): the log
/// read, the canary probed, a promotion or a newer desired file seen.
pub const TICK: Duration = Duration::from_secs(1);

impl<'a, R: Runtime, P: Proxy, H: Prober> Attempt<'a, R, P, H> {
    /// The stable color when this attempt begins canary steps: `[canary]` is configured, the
    /// old color is live and runs, and the image is new here. One that served before (the
    /// history names it: a rollback, an abort, an auto-rollback, or an operator's edit going
    /// back) is switched to at once, whatever the note says.
    pub(super) async fn canary_stable(&self) -> Result<Option<Color>, ReconcileError> {
        let cfg = &self.ctx().cfg;
        if cfg.canary.is_none() || cfg.nginx.access_log.is_none() || self.served_before {
            return Ok(None);
        }
        self.live_old_color().await
    }

    /// The candidate passed its gate: step 1 begins on `canary`, the servers that passed it.
    pub(super) async fn begin_canary(
        &self,
        name: &str,
        canary: &[SocketAddr],
        stable: Color,
    ) -> Result<Ran, ReconcileError> {
        self.pass.step(Step::Canary).await?;
        let now = rfc3339(SystemTime::now());
        let mark = CanaryMark {
            generation: self.desired.generation.clone(),
            image: self.image.to_string(),
            color: self.color,
            stable,
            step: 1,
            step_started: now.clone(),
            started: now,
            aborting: None,
        };
        self.enter(name, canary, mark, false).await
    }

    /// Carries out the plan's decision on the running canary.
    pub(super) async fn canary_decision(
        &self,
        action: &CanaryAction,
        digest: &mut Option<String>,
    ) -> Result<Ran, ReconcileError> {
        let (ctx, observed) = (self.ctx(), self.observed);
        let cfg = &ctx.cfg;
        let Some(mark) = observed.canary.clone() else {
            return Ok(Ran::InCanary { step: 0 });
        };
        let window = observed.window.as_ref();
        let name = cfg.container_name(self.color);
        match &action.decision {
            Decision::Stay { ignored, .. } => {
                self.stay(&name, &mark, ignored.as_ref(), window).await?;
                Ok(Ran::InCanary { step: mark.step })
            }
            Decision::Enter {
                step,
                again,
                passed,
            } => {
                if let Some(passed) = passed {
                    self.step_passed(&mark, passed, window);
                }
                let step_started = match again {
                    true => mark.step_started.clone(),
                    false => rfc3339(SystemTime::now()),
                };
                let next = CanaryMark {
                    step: *step,
                    step_started,
                    ..mark
                };
                let canary = self.canary_servers(&name).await?;
                self.enter(&name, &canary, next, *again).await
            }
            Decision::Promote { passed } => {
                if let Some(passed) = passed {
                    self.step_passed(&mark, passed, window);
                }
                let steps = cfg.canary.as_ref().map_or(0, |c| c.steps.len());
                // Recorded first: a process that dies inside the switch leaves the next
                // pass to finish the promotion, never to run the steps again.
                let promoting = CanaryMark {
                    step: steps + 1,
                    ..mark
                };
                self.pass.set_status(|s| s.canary_mark = Some(promoting))?;
                *digest = self.image_digest().await;
                let servers = self.canary_servers(&name).await?;
                let port = cfg.port(self.color);
                let hook = self.hook_context(port);
                self.switch_and_finish(&name, port, &servers, &hook).await?;
                Ok(Ran::Switched)
            }
            Decision::Abort { reason } => self.abort(&name, &mark, reason).await,
        }
    }

    /// nginx to `mark`'s step, recorded in the journal first. `again`: the step goes on (the
    /// file did not show its weights), it does not begin.
    async fn enter(
        &self,
        name: &str,
        canary: &[SocketAddr],
        mark: CanaryMark,
        again: bool,
    ) -> Result<Ran, ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let Some(canary_cfg) = &cfg.canary else {
            return Ok(Ran::InCanary { step: mark.step });
        };
        let steps = canary_cfg.steps.len();
        let weight = canary_cfg.steps[mark.step.clamp(1, steps) - 1].weight;
        pass.set_status(|s| s.canary_mark = Some(mark.clone()))?;
        if let Some(refused) = self.switch_to_step(name, &mark, canary, weight).await? {
            return self.abort(name, &mark, &refused).await;
        }
        if !again {
            ctx.canary_watch.begin(cfg, &mark);
            tracing::info!(step = mark.step, steps, weight, "canary step begins");
            pass.emit(Progress::CanaryStep {
                step: mark.step,
                steps,
                weight,
            });
        } else {
            tracing::info!(
                step = mark.step,
                weight,
                "nginx back on the canary step's weights"
            );
        }
        self.show_progress(name, &mark, &CanaryWindow::default())?;
        Ok(Ran::InCanary { step: mark.step })
    }

    /// One look at the running step: a promote request that is not for it dropped, the
    /// canary probed once (the next pass judges the count), the status updated.
    async fn stay(
        &self,
        name: &str,
        mark: &CanaryMark,
        ignored: Option<&PromoteRequest>,
        window: Option<&CanaryWindow>,
    ) -> Result<(), ReconcileError> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        if let Some(request) = ignored {
            PromoteRequest::remove(&request_path(&cfg.desired_file));
            tracing::warn!(
                generation = %request.generation,
                asked_step = request.step,
                step = mark.step,
                "promote request ignored: it names another generation or a step that has already ended"
            );
        }
        let canary = self.canary_servers(name).await?;
        let failed = ctx
            .probe_each(&canary)
            .await
            .into_iter()
            .map(|(_, o)| o)
            .find(|o| !o.is_healthy());
        let failures = ctx.canary_watch.probed(mark, failed.as_ref().map(describe));
        if let Some(outcome) = &failed {
            ctx.metrics.health_probe_failed();
            tracing::warn!(failures, outcome = %describe(outcome), "canary probe failed");
        }
        let empty = CanaryWindow::default();
        self.show_progress(name, mark, window.unwrap_or(&empty))
    }

    /// The step ended well: its line in the audit log, a promote request taken.
    fn step_passed(&self, mark: &CanaryMark, passed: &Passed, window: Option<&CanaryWindow>) {
        let cfg = &self.ctx().cfg;
        let empty = CanaryWindow::default();
        let window = window.unwrap_or(&empty);
        let how = if passed.promoted {
            PromoteRequest::remove(&request_path(&cfg.desired_file));
            tracing::info!(step = passed.step, "promoted by hand");
            "promoted by hand"
        } else {
            "passed"
        };
        let figures = format!(
            "canary {}; stable {}",
            plain(&window.canary),
            plain(&window.stable)
        );
        tracing::info!(step = passed.step, %figures, "canary step {how}");
        self.record_step(
            AttemptOutcome::Succeeded,
            format!("{} {how}: {figures}", self.summary(passed.step)),
            step_age(mark),
        );
    }

    /// The canary failed: recorded in the journal first (a process that dies on the way back
    /// leaves the next pass to finish it), then nginx back on the stable color alone and the
    /// candidate removed; a failure after the switch.
    async fn abort(
        &self,
        name: &str,
        mark: &CanaryMark,
        reason: &str,
    ) -> Result<Ran, ReconcileError> {
        if mark.aborting.is_none() {
            let aborting = CanaryMark {
                aborting: Some(reason.to_string()),
                ..mark.clone()
            };
            self.pass.set_status(|s| s.canary_mark = Some(aborting))?;
            self.record_step(
                AttemptOutcome::RolledBack,
                reason.to_string(),
                step_age(mark),
            );
        }
        tracing::warn!(%reason, "canary failed, back to the stable color");
        self.back_to_stable(name, mark.stable).await?;
        Err(ReconcileError::FailedAfterSwitch {
            image: self.image.to_string(),
            reason: reason.to_string(),
            back_to: Some(mark.stable.to_string()),
            rolled_back_to: None,
        })
    }

    /// `canary step 2 of 3 (30%)`.
    fn summary(&self, step: usize) -> String {
        let Some(canary) = &self.ctx().cfg.canary else {
            return format!("canary step {step}");
        };
        let steps = canary.steps.len();
        let weight = canary.steps[step.clamp(1, steps) - 1].weight;
        format!("canary step {step} of {steps} ({weight}%)")
    }

    /// No canary runs any more: the journal, status.json and the metrics stop showing one.
    pub(super) fn forget_canary(&self) {
        let ctx = self.ctx();
        ctx.metrics.set_canary(None);
        ctx.canary_watch.forget();
        if let Err(e) = self.pass.set_status(|s| {
            s.canary = None;
            s.canary_mark = None;
        }) {
            tracing::warn!(error = %e, "cannot update the status");
        }
    }

    /// Where the stable color is served: the file's servers on its port, else on loopback.
    pub(super) fn stable_servers(&self, stable: Color) -> Vec<SocketAddr> {
        let port = self.ctx().cfg.port(stable);
        let written: Vec<SocketAddr> = self
            .observed
            .upstream_servers
            .iter()
            .filter(|s| s.port() == port)
            .copied()
            .collect();
        if written.is_empty() {
            Endpoints::loopback(port).addrs
        } else {
            written
        }
    }

    /// Where the canary answers: on one engine its port on loopback, on Swarm its tasks.
    pub(super) async fn canary_servers(
        &self,
        name: &str,
    ) -> Result<Vec<SocketAddr>, ReconcileError> {
        let ctx = self.ctx();
        let port = ctx.cfg.port(self.color);
        if ctx.cfg.runtime == crate::config::RuntimeKind::Docker {
            return Ok(Endpoints::loopback(port).addrs);
        }
        Ok(ctx.runtime.endpoints(name, port).await?.addrs)
    }

    /// nginx switched to the step's weights. Some(why) when nginx refused them (it runs what
    /// it ran before: the stable color alone, or the step before); an error when it may run
    /// them half-way (the next pass settles it on the stable color).
    async fn switch_to_step(
        &self,
        name: &str,
        mark: &CanaryMark,
        canary: &[SocketAddr],
        weight: u32,
    ) -> Result<Option<String>, ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        // Each server weighted so that the canary's share is the step's whatever the number
        // of replicas on each side (Swarm).
        let stable = self.stable_servers(mark.stable);
        let weights = canary_weights::shared(weight, &stable, canary);
        let (stable_weights, canary_weights) = weights.split_at(stable.len());
        let comment = format!(
            "canary {weight}% {}, stable {}",
            ctx.live_comment(self.color, self.image),
            ctx.live_comment(mark.stable, self.previous.as_deref().unwrap_or("previous")),
        );
        match pass
            .switch_canary(stable_weights, canary_weights, &comment)
            .await
        {
            Ok(()) => Ok(None),
            Err(e) => match self.kept_if_unsettled(name, &e) {
                Some(kept) => Err(kept),
                None => Ok(Some(format!(
                    "{}: nginx refused the step's weights: {e}",
                    self.summary(mark.step)
                ))),
            },
        }
    }

    /// What status.json and the metrics show of the step so far.
    fn show_progress(
        &self,
        name: &str,
        mark: &CanaryMark,
        window: &CanaryWindow,
    ) -> Result<(), ReconcileError> {
        let ctx = self.ctx();
        let Some(canary_cfg) = &ctx.cfg.canary else {
            return Ok(());
        };
        let steps = canary_cfg.steps.len();
        let step = &canary_cfg.steps[mark.step.clamp(1, steps) - 1];
        let step_ends = match (step.pause, mark.step_started_time()) {
            (Pause::For(d), Some(started)) => Some(rfc3339(started + d)),
            _ => None,
        };
        let judgement: Judgement = judge(canary_cfg, &window.stable, &window.canary);
        let progress = CanaryProgress {
            image: self.image.to_string(),
            color: self.color.to_string(),
            container: name.to_string(),
            stable_color: mark.stable.to_string(),
            stable_image: self.previous.clone(),
            step: mark.step,
            steps,
            weight: step.weight,
            step_started: mark.step_started.clone(),
            step_ends,
            stable: figures_of(&window.stable),
            canary: figures_of(&window.canary),
            judgement: judgement.to_string(),
        };
        ctx.metrics.set_canary(Some(&progress));
        self.pass.set_status(|s| {
            s.phase = crate::state::status::Phase::Progressing;
            s.step = Some(Step::Canary);
            s.canary = Some(progress);
        })
    }

    /// nginx back on the stable color alone, its old workers gone, the candidate removed.
    async fn back_to_stable(&self, name: &str, stable: Color) -> Result<(), ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let port = cfg.port(stable);
        let back_image = self.previous.as_deref().unwrap_or("previous");
        let result = pass
            .switch_nginx(
                port,
                &self.stable_servers(stable),
                &ctx.live_comment(stable, back_image),
            )
            .await;
        if let Err(e) = result {
            if let Some(kept) = self.kept_if_unsettled(name, &e) {
                return Err(kept);
            }
            // nginx runs the file before: `retire` removes the candidate only if that file
            // does not name it.
            self.remove_candidate(name).await;
            return Err(e);
        }
        // `retire` waits for nginx's workers that still send it canary requests.
        self.remove_candidate(name).await;
        self.forget_canary();
        Ok(())
    }

    /// The step's line in the audit log, and its notification (event `canary_step`).
    fn record_step(&self, outcome: AttemptOutcome, message: String, took: Duration) {
        let ctx = self.ctx();
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let record = AuditRecord {
            time: crate::state::now_rfc3339(),
            event: audit::CANARY_STEP_EVENT.into(),
            outcome,
            image: self.image.to_string(),
            reference: self.reference.to_string(),
            digest: None,
            previous: self.previous.clone(),
            trigger: self.pass.trigger,
            by: self.desired.by.clone(),
            note: self.desired.note.clone(),
            generation: self.desired.generation.clone(),
            duration_ms,
            message: Some(message.clone()),
            color: Some(self.color.to_string()),
        };
        if let Err(e) = audit::append(&ctx.audit_file(), &record) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
        if let Some(notifier) = &ctx.notifier {
            notifier.send(Notification {
                previous: self.previous.clone(),
                color: Some(self.color),
                message: Some(message),
                by: self.desired.by.clone(),
                note: self.desired.note.clone(),
                generation: Some(self.desired.generation.clone()),
                duration_ms: Some(duration_ms),
                ..Notification::new(Event::CanaryStep, ctx.cfg.app.clone(), self.image)
            });
        }
    }
}

/// How long the step of `mark` has run.
fn step_age(mark: &CanaryMark) -> Duration {
    mark.step_started_time()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

/// RFC 3339 UTC, to the millisecond: how the journal and status.json write a step's times.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A side's figures as status.json shows them.
fn figures_of(f: &crate::observe::access_log::Figures) -> WindowFigures {
    let ms = |q| f.quantile(q).map(|s| (s * 1000.0).round() as u64);
    WindowFigures {
        requests: f.requests,
        errors: f.errors,
        failed_tries: f.failed_tries,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
    }
}
