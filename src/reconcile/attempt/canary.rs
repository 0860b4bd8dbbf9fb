//! Canary steps: between the health gate and the full switch, nginx shares the traffic by
//! weight between the stable (live) color and the candidate, step by step, and each step is
//! judged from what real requests got, read from nginx's access log as it grows
//! ([`crate::plan::canary::judge`]).
//!
//! A step lasts its `pause` and until `min_requests` reached the canary (a manual step until
//! `fieldtrack promote`). A step fails on the judgement (error rate, latency), on three
//! failed health probes of the canary in a row, or on the canary's container exiting: nginx
//! goes back to the stable color alone, the candidate is removed, and the attempt ends as a
//! failure after the switch, so the desired file is rewritten like any auto-rollback. A new
//! desired generation (an `abort` is one) or a stop ends it the same way, as a cancellation.
//!
//! Throughout, status.json's [`SwitchMark`](crate::state::status::SwitchMark) says nginx
//! names both colors on purpose: a process killed inside a step leaves the next pass to put
//! nginx back on the stable color before anything else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{describe, Attempt};
use crate::config::{CanaryConfig, Pause, RuntimeKind};
use crate::desired::promote::{PromoteRequest, Verdict as PromoteVerdict};
use crate::desired::Desired;
use crate::model::probe::{ProbeOutcome, Prober};
use crate::model::proxy::Proxy;
use crate::model::runtime::{Endpoints, Runtime};
use crate::model::Color;
use crate::model::InstanceState;
use crate::notifications::{Event, Notification};
use crate::observe::access_log::{tally, Figures, Tail};
use crate::plan::canary::{judge, Judgement};
use crate::plan::canary_weights;
use crate::reconcile::{Progress, ReconcileError};
use crate::state::audit::{self, AttemptOutcome, AuditRecord};
use crate::state::status::{CanaryProgress, Step, WindowFigures};

/// Consecutive failed health probes of the canary that fail its step.
const PROBE_FAILURES: u32 = 3;
/// How often a step reads the log, probes the canary, and looks for a newer desired file and
/// a promotion, at most (`health.interval` when shorter).
const TICK: Duration = Duration::from_secs(1);

/// The two sides of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Stable,
    Canary,
}

/// How a step ended, when it did not pass.
enum StepEnd {
    /// The canary failed it, for this reason.
    Failed(String),
    /// A newer desired generation, or a stop: the canary is called off.
    Cancelled,
}

impl<'a, R: Runtime, P: Proxy, H: Prober> Attempt<'a, R, P, H> {
    /// The stable color when this attempt runs canary steps: `[canary]` is configured, the
    /// old color is live and runs, and the desired file is not a rollback (a rollback goes
    /// back to what served, at once).
    pub(super) async fn canary_stable(&self) -> Result<Option<Color>, ReconcileError> {
        let ctx = self.ctx();
        let cfg = &ctx.cfg;
        if cfg.canary.is_none() || self.desired.goes_back() {
            return Ok(None);
        }
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

    /// Runs every step. Ok once the last one passed: the caller then switches nginx to the
    /// canary alone, drains and cleans up as for blue/green. On a failure or a cancellation
    /// nginx is back on the stable color alone and the candidate removed.
    pub(super) async fn canary(
        &self,
        name: &str,
        canary: &[SocketAddr],
        stable: Color,
    ) -> Result<(), ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let Some(canary_cfg) = &cfg.canary else {
            return Ok(());
        };
        let Some(log) = cfg.nginx.access_log.clone() else {
            return Ok(());
        };
        pass.step(Step::Canary).await?;
        let written = match ctx.proxy.upstream_servers() {
            Ok(written) => written,
            // Nothing switched yet: the candidate is this function's to remove.
            Err(e) => {
                self.remove_candidate(name).await;
                return Err(ReconcileError::Switch(e));
            }
        };
        let (stable_servers, canary) = sides(cfg.runtime, &written, cfg.port(stable), canary);
        let canary = canary.as_slice();
        let steps = canary_cfg.steps.len();
        for (i, step) in canary_cfg.steps.iter().enumerate() {
            let at = StepAt {
                cfg: canary_cfg,
                log: log.clone(),
                index: i + 1,
                steps,
                weight: step.weight,
                pause: step.pause,
                stable,
                stable_servers: &stable_servers,
                canary,
            };
            let started = Instant::now();
            let (end, stable_figures, canary_figures) = match self.canary_step(name, &at).await {
                Ok(step) => step,
                // nginx may run these weights: the next pass settles it (the mark says so).
                Err(e @ ReconcileError::StillServed { .. }) => {
                    self.forget_canary();
                    return Err(e);
                }
                // The engine, the status file or the log failed under the step: every
                // request back to the stable color before the error is reported.
                Err(e) => {
                    tracing::error!(error = %e, "canary step failed, back to the stable color");
                    if let Err(back) = self.back_to_stable(name, stable, &stable_servers).await {
                        tracing::error!(error = %back, "cannot go back to the stable color; the next pass will");
                    }
                    return Err(e);
                }
            };
            let summary = format!("canary step {} of {} ({}%)", at.index, at.steps, at.weight);
            let figures = format!(
                "canary {}; stable {}",
                plain(&canary_figures),
                plain(&stable_figures)
            );
            match end {
                None => {
                    tracing::info!(step = at.index, weight = at.weight, %figures, "canary step passed");
                    self.record_step(
                        AttemptOutcome::Succeeded,
                        format!("{summary} passed: {figures}"),
                        started.elapsed(),
                    );
                }
                Some(StepEnd::Failed(why)) => {
                    let reason = format!("{summary}: {why} ({figures})");
                    tracing::warn!(%reason, "canary failed, back to the stable color");
                    self.record_step(
                        AttemptOutcome::RolledBack,
                        reason.clone(),
                        started.elapsed(),
                    );
                    self.back_to_stable(name, stable, &stable_servers).await?;
                    return Err(ReconcileError::FailedAfterSwitch {
                        image: self.image.to_string(),
                        reason,
                        back_to: Some(stable.to_string()),
                        rolled_back_to: None,
                    });
                }
                Some(StepEnd::Cancelled) => {
                    tracing::warn!(
                        step = at.index,
                        "canary called off, back to the stable color"
                    );
                    self.back_to_stable(name, stable, &stable_servers).await?;
                    return Err(ReconcileError::Cancelled);
                }
            }
        }
        self.forget_canary();
        Ok(())
    }

    /// No canary step runs any more: status.json and the metrics stop showing one.
    fn forget_canary(&self) {
        self.ctx().metrics.set_canary(None);
        if let Err(e) = self.pass.set_status(|s| s.canary = None) {
            tracing::warn!(error = %e, "cannot update the status");
        }
    }

    /// One step: nginx switched to its weights, then its window watched until it passes
    /// (None), fails or is called off. Returns the window's figures too.
    async fn canary_step(
        &self,
        name: &str,
        at: &StepAt<'_>,
    ) -> Result<(Option<StepEnd>, Figures, Figures), ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        if let Some(refused) = self.switch_to_step(name, at).await? {
            let empty = Figures::default();
            return Ok((Some(refused), empty.clone(), empty));
        }
        crate::test_pause_point("canary-step").await;
        // The window starts at the switch: what nginx logged before is not this step's.
        let mut tail = Tail::from_end(&at.log);
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let ends = match at.pause {
            Pause::For(d) => Some(d),
            Pause::Manual => None,
        };
        let promote_file = crate::desired::promote::request_path(&cfg.desired_file);
        let runtime = cfg.runtime;
        let side_of = |a: SocketAddr| side_of(runtime, a, at.stable_servers, at.canary);
        let mut figures: HashMap<Side, Figures> = HashMap::new();
        let mut probe_failures = 0u32;
        let tick = cfg.health.interval.min(TICK);
        loop {
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(tick) => false,
                _ = pass.cancel.cancelled() => true,
            };
            let get = |f: &HashMap<Side, Figures>, side| f.get(&side).cloned().unwrap_or_default();
            let done = |end, f: &HashMap<Side, Figures>| {
                Ok((end, get(f, Side::Stable), get(f, Side::Canary)))
            };
            if cancelled || self.superseded() {
                return done(Some(StepEnd::Cancelled), &figures);
            }
            match tail.read_new() {
                Ok(requests) => tally(&mut figures, &requests, side_of),
                Err(e) => tracing::warn!(error = %e, "cannot read the access log this time"),
            }
            let (stable_now, canary_now) =
                (get(&figures, Side::Stable), get(&figures, Side::Canary));
            if let Some(failed) = self.canary_unwell(name, at, &mut probe_failures).await? {
                return done(Some(failed), &figures);
            }
            let judgement = judge(at.cfg, &stable_now, &canary_now);
            let step_ends = ends.map(|d| started_wall + d);
            let progress = self.progress(
                name,
                at,
                started_wall,
                step_ends,
                &stable_now,
                &canary_now,
                &judgement,
            );
            ctx.metrics.set_canary(Some(&progress));
            pass.set_status(|s| s.canary = Some(progress))?;
            if let Judgement::Failed(why) = judgement {
                return done(Some(StepEnd::Failed(why)), &figures);
            }
            if self.promoted(&promote_file, at.index) {
                tracing::info!(step = at.index, "promoted by hand");
                return done(None, &figures);
            }
            let paused_enough = ends.is_some_and(|d| started.elapsed() >= d);
            if paused_enough && judgement == Judgement::Healthy {
                return done(None, &figures);
            }
        }
    }

    /// nginx switched to the step's weights. Some(end) when nginx refused them (it runs what
    /// it ran before: the stable color alone, or the step before); an error when it may run
    /// them half-way (the next pass settles it on the stable color).
    async fn switch_to_step(
        &self,
        name: &str,
        at: &StepAt<'_>,
    ) -> Result<Option<StepEnd>, ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let weights = canary_weights::shared(at.weight, at.stable_servers, at.canary);
        let (stable_weights, canary_weights) = weights.split_at(at.stable_servers.len());
        let comment = format!(
            "canary {}% {}, stable {}",
            at.weight,
            ctx.live_comment(self.color, self.image),
            ctx.live_comment(at.stable, self.previous.as_deref().unwrap_or("previous")),
        );
        if let Err(e) = pass
            .switch_canary(stable_weights, canary_weights, &comment)
            .await
        {
            if let Some(kept) = self.kept_if_unsettled(name, &e) {
                return Err(kept);
            }
            return Ok(Some(StepEnd::Failed(format!(
                "nginx refused the step's weights: {e}"
            ))));
        }
        pass.emit(Progress::CanaryStep {
            step: at.index,
            steps: at.steps,
            weight: at.weight,
        });
        Ok(None)
    }

    /// The canary's container and health, as during the drain: Some(end) when it stopped
    /// running or failed `PROBE_FAILURES` probes in a row.
    async fn canary_unwell(
        &self,
        name: &str,
        at: &StepAt<'_>,
        probe_failures: &mut u32,
    ) -> Result<Option<StepEnd>, ReconcileError> {
        let ctx = self.ctx();
        match ctx.runtime.state(name).await? {
            Some(InstanceState::Running) => {}
            other => {
                return Ok(Some(StepEnd::Failed(format!(
                    "the container {}",
                    other.map_or("disappeared".to_string(), |s| s.to_string())
                ))))
            }
        }
        let outcome = ctx
            .probe_each(at.canary)
            .await
            .into_iter()
            .map(|(_, o)| o)
            .find(|o| !o.is_healthy())
            .unwrap_or(ProbeOutcome::Healthy(200));
        if outcome.is_healthy() {
            *probe_failures = 0;
            return Ok(None);
        }
        *probe_failures += 1;
        ctx.metrics.health_probe_failed();
        tracing::warn!(failures = *probe_failures, outcome = %describe(&outcome), "canary probe failed");
        Ok((*probe_failures >= PROBE_FAILURES).then(|| {
            StepEnd::Failed(format!(
                "{PROBE_FAILURES} failed health probes in a row, last: {}",
                describe(&outcome)
            ))
        }))
    }

    /// What status.json and the metrics show of the step so far.
    #[allow(clippy::too_many_arguments)]
    fn progress(
        &self,
        name: &str,
        at: &StepAt<'_>,
        started: SystemTime,
        ends: Option<SystemTime>,
        stable: &Figures,
        canary: &Figures,
        judgement: &Judgement,
    ) -> CanaryProgress {
        CanaryProgress {
            image: self.image.to_string(),
            color: self.color.to_string(),
            container: name.to_string(),
            stable_color: at.stable.to_string(),
            stable_image: self.previous.clone(),
            step: at.index,
            steps: at.steps,
            weight: at.weight,
            step_started: humantime::format_rfc3339_seconds(started).to_string(),
            step_ends: ends.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            stable: window(stable),
            canary: window(canary),
            judgement: judgement.to_string(),
        }
    }

    /// A desired file that names another generation now (CI, an operator, `fieldtrack
    /// abort`): the canary is called off, the newer state wins. A file that cannot be read
    /// right now (half-written) is not a reason.
    fn superseded(&self) -> bool {
        let cfg = &self.ctx().cfg;
        matches!(Desired::load(&cfg.desired_file, cfg), Ok(now) if now.generation != self.desired.generation)
    }

    /// Whether `fieldtrack promote` asked this generation's step `step` to end; the request is
    /// consumed. One for another generation, or for a step that has already ended (sent as
    /// it ended by itself), is dropped: it never ends a step it was not meant for.
    fn promoted(&self, file: &std::path::Path, step: usize) -> bool {
        match PromoteRequest::take(file, &self.desired.generation, step) {
            PromoteVerdict::Promote => true,
            PromoteVerdict::None => false,
            PromoteVerdict::Ignored(request) => {
                tracing::warn!(
                    generation = %request.generation,
                    asked_step = request.step,
                    step,
                    "promote request ignored: it names another generation or a step that has already ended"
                );
                false
            }
        }
    }

    /// nginx back on the stable color alone (`servers`, as the step had them), its old workers
    /// gone, the candidate removed.
    async fn back_to_stable(
        &self,
        name: &str,
        stable: Color,
        servers: &[SocketAddr],
    ) -> Result<(), ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let port = cfg.port(stable);
        let back_image = self.previous.as_deref().unwrap_or("previous");
        let result = pass
            .switch_nginx(port, servers, &ctx.live_comment(stable, back_image))
            .await;
        self.forget_canary();
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

/// What one step works with.
struct StepAt<'s> {
    cfg: &'s CanaryConfig,
    log: PathBuf,
    /// 1-based.
    index: usize,
    steps: usize,
    weight: u32,
    pause: Pause,
    stable: Color,
    stable_servers: &'s [SocketAddr],
    canary: &'s [SocketAddr],
}

/// The servers of each side of a step: the stable color's, then the canary's. On one server
/// the stable color is its container on `127.0.0.1:stable_port`. On Swarm it is its replicas
/// as the upstream file names them now (`written`, the servers on `stable_port`): the tasks
/// nginx sends traffic to, which need not be every task that runs. The canary's are the
/// candidate's endpoints that passed the health gate.
fn sides(
    runtime: RuntimeKind,
    written: &[SocketAddr],
    stable_port: u16,
    canary: &[SocketAddr],
) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let stable = match runtime {
        RuntimeKind::Docker => Endpoints::loopback(stable_port).addrs,
        RuntimeKind::Swarm => written
            .iter()
            .filter(|s| s.port() == stable_port)
            .copied()
            .collect(),
    };
    (stable, canary.to_vec())
}

/// The side an access log line's `upstream_addr` went to, told by its port: the colors have
/// different ports. On one server only a loopback address is the app's (another upstream of
/// the same nginx may use the same port elsewhere); on Swarm the servers are the nodes'
/// addresses, whatever they are.
fn side_of(
    runtime: RuntimeKind,
    addr: SocketAddr,
    stable: &[SocketAddr],
    canary: &[SocketAddr],
) -> Option<Side> {
    if runtime == RuntimeKind::Docker && !addr.ip().is_loopback() {
        return None;
    }
    let on = |servers: &[SocketAddr]| servers.iter().any(|s| s.port() == addr.port());
    if on(stable) {
        Some(Side::Stable)
    } else if on(canary) {
        Some(Side::Canary)
    } else {
        None
    }
}

/// A side's figures as status.json shows them.
fn window(f: &Figures) -> WindowFigures {
    let ms = |q| f.quantile(q).map(|s| (s * 1000.0).round() as u64);
    WindowFigures {
        requests: f.requests,
        errors: f.errors,
        failed_tries: f.failed_tries,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
    }
}

/// `120 requests, 2 failed, p95 14 ms`.
pub fn plain(f: &Figures) -> String {
    let (failed, _) = f.failures();
    match f.quantile(0.95) {
        Some(p95) => format!(
            "{} requests, {failed} failed, p95 {:.0} ms",
            f.requests,
            p95 * 1000.0
        ),
        None => format!("{} requests, {failed} failed", f.requests),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn node(k: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, k)), port)
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    #[test]
    fn on_swarm_the_stable_side_is_the_stable_colors_servers_in_the_upstream_file() {
        // Two of the stable color's three tasks are in the file (the third's node left it);
        // a stray line of another port is no stable server.
        let written = [node(1, 3001), node(3, 3001), node(2, 4000)];
        let canary = [node(1, 3002), node(2, 3002)];
        let (stable, canary_side) = sides(RuntimeKind::Swarm, &written, 3001, &canary);
        assert_eq!(stable, vec![node(1, 3001), node(3, 3001)]);
        assert_eq!(canary_side, canary.to_vec());
    }

    #[test]
    fn on_one_server_the_stable_side_is_its_container_on_loopback() {
        let (stable, canary) = sides(RuntimeKind::Docker, &[local(3001)], 3001, &[local(3002)]);
        assert_eq!((stable, canary), (vec![local(3001)], vec![local(3002)]));
    }

    #[test]
    fn a_log_lines_side_is_told_by_its_port_on_swarm_whatever_the_node() {
        let (stable, canary) = ([node(1, 3001), node(2, 3001)], [node(3, 3002)]);
        let side = |a| side_of(RuntimeKind::Swarm, a, &stable, &canary);
        assert_eq!(side(node(2, 3001)), Some(Side::Stable));
        assert_eq!(side(node(3, 3002)), Some(Side::Canary));
        // A task that moved to another node is still its color's.
        assert_eq!(side(node(9, 3002)), Some(Side::Canary));
        assert_eq!(side(node(1, 8080)), None);
    }

    #[test]
    fn on_one_server_only_loopback_lines_count() {
        let (stable, canary) = ([local(3001)], [local(3002)]);
        let side = |a| side_of(RuntimeKind::Docker, a, &stable, &canary);
        assert_eq!(side(local(3001)), Some(Side::Stable));
        assert_eq!(side(local(3002)), Some(Side::Canary));
        // Another upstream of the same nginx, elsewhere, on the same port.
        assert_eq!(side(node(7, 3002)), None);
    }
}
