//! The preview (`[rollout] promotion = "manual"`), one decision per pass: between the
//! health gate and the switch, the candidate is reachable through the upstream file's
//! `{upstream_name}_preview` block only, while production's block keeps the live color
//! alone, until `fieldtrack promote`.
//!
//! Where the preview stands is recorded state: the journal's
//! [`PreviewMark`](crate::state::status::PreviewMark) names the generation, the colors and
//! since when, written before nginx is given the preview block. Each pass's plan decides from
//! it, the upstream file and the candidate's probes ([`crate::plan::preview::decide`]); this
//! module carries the decision out and returns, and the loop looks again at the next tick. A
//! process killed anywhere in it leaves the mark: the next one finds the preview where it was.
//!
//! The candidate keeps being probed: three failed probes in a row, or its container exiting,
//! end the preview as a failed deployment (production was never switched, so there is
//! nothing to roll back). A newer desired generation (an `abort` is one) leaves the preview
//! behind: its pass puts the preview block back on the live color and removes the candidate.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::{describe, Attempt, Ran};
use crate::config::Promotion;
use crate::desired::promote::{request_path, PromoteRequest};
use crate::model::probe::Prober;
use crate::model::proxy::Proxy;
use crate::model::runtime::Runtime;
use crate::model::Color;
use crate::nginx_conf::upstream::preview_name;
use crate::observe::ProbeCount;
use crate::plan::preview::{Decision, PreviewAction};
use crate::reconcile::ReconcileError;
use crate::state::status::{Phase, PreviewMark, PreviewProgress, Step};

impl<'a, R: Runtime, P: Proxy, H: Prober> Attempt<'a, R, P, H> {
    /// The live color when this attempt opens a preview: promotion is manual, the old color
    /// is live and runs, and the image is new here. One that served before (the history
    /// names it: a rollback, an abort) is switched to at once.
    pub(super) async fn preview_stable(&self) -> Result<Option<Color>, ReconcileError> {
        let cfg = &self.ctx().cfg;
        if cfg.rollout.promotion != Promotion::Manual || self.served_before {
            return Ok(None);
        }
        self.live_old_color().await
    }

    /// The candidate passed its gate: the preview opens on `candidate`, the servers that
    /// passed it, recorded in the journal first.
    pub(super) async fn open_preview(
        &self,
        name: &str,
        candidate: &[SocketAddr],
        stable: Color,
    ) -> Result<Ran, ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        pass.step(Step::Preview).await?;
        let mark = PreviewMark {
            generation: self.desired.generation.clone(),
            image: self.image.to_string(),
            color: self.color,
            stable,
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            promoting: false,
            failing: None,
        };
        pass.set_status(|s| s.preview_mark = Some(mark.clone()))?;
        *ctx.preview_watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(ProbeCount {
            generation: mark.generation.clone(),
            ..ProbeCount::default()
        });
        if let Err(e) = self.switch_to_preview(&mark, candidate).await {
            let reason = format!("nginx refused the preview block: {e}");
            return self.fail_preview(name, &mark, &reason).await;
        }
        tracing::info!(color = %self.color, image = %self.image, "preview open: awaiting promotion");
        self.show_preview(name, &mark, 0)?;
        Ok(Ran::InPreview)
    }

    /// Carries out the plan's decision on the preview awaiting promotion.
    pub(super) async fn preview_decision(
        &self,
        action: &PreviewAction,
        digest: &mut Option<String>,
    ) -> Result<Ran, ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        let Some(mark) = self.observed.preview.clone() else {
            return Ok(Ran::InPreview);
        };
        let name = cfg.container_name(self.color);
        match &action.decision {
            Decision::Await { ignored } => {
                if let Some(request) = ignored {
                    PromoteRequest::remove(&request_path(&cfg.desired_file));
                    tracing::warn!(
                        generation = %request.generation,
                        "promote request ignored: it names another generation than the preview's"
                    );
                }
                let failures = self.probe_preview(&name, &mark).await?;
                self.show_preview(&name, &mark, failures)?;
                Ok(Ran::InPreview)
            }
            Decision::Reopen => {
                let candidate = self.canary_servers(&name).await?;
                tracing::info!(color = %self.color, "nginx back on the preview's shape");
                if let Err(e) = self.switch_to_preview(&mark, &candidate).await {
                    let reason = format!("nginx refused the preview block: {e}");
                    return self.fail_preview(&name, &mark, &reason).await;
                }
                self.show_preview(&name, &mark, 0)?;
                Ok(Ran::InPreview)
            }
            Decision::Promote => {
                // Recorded first: a process that dies inside the switch leaves the next pass
                // to finish the promotion, never to await it again.
                let promoting = PreviewMark {
                    promoting: true,
                    ..mark
                };
                pass.set_status(|s| s.preview_mark = Some(promoting))?;
                PromoteRequest::remove(&request_path(&cfg.desired_file));
                tracing::info!(color = %self.color, image = %self.image, "preview promoted by hand");
                *digest = self.image_digest().await;
                let servers = self.canary_servers(&name).await?;
                let port = cfg.port(self.color);
                let hook = self.hook_context(port);
                self.switch_and_finish(&name, port, &servers, &hook).await?;
                Ok(Ran::Switched)
            }
            Decision::Fail { reason } => self.fail_preview(&name, &mark, reason).await,
        }
    }

    /// One probe of the candidate's servers; the failures in a row so far.
    async fn probe_preview(&self, name: &str, mark: &PreviewMark) -> Result<u32, ReconcileError> {
        let ctx = self.ctx();
        let servers = self.canary_servers(name).await?;
        let failed = if servers.is_empty() {
            Some("no replica runs".to_string())
        } else {
            ctx.probe_each(&servers)
                .await
                .into_iter()
                .map(|(_, o)| o)
                .find(|o| !o.is_healthy())
                .map(|o| describe(&o))
        };
        let mut watch = ctx.preview_watch.lock().unwrap_or_else(|e| e.into_inner());
        let count = watch
            .take()
            .filter(|p| p.generation == mark.generation)
            .unwrap_or_else(|| ProbeCount {
                generation: mark.generation.clone(),
                ..ProbeCount::default()
            });
        let count = match failed {
            Some(outcome) => {
                ctx.metrics.health_probe_failed();
                tracing::warn!(failures = count.failures + 1, %outcome, "preview probe failed");
                ProbeCount {
                    failures: count.failures + 1,
                    last: Some(outcome),
                    ..count
                }
            }
            None => ProbeCount {
                failures: 0,
                last: None,
                ..count
            },
        };
        let failures = count.failures;
        *watch = Some(count);
        Ok(failures)
    }

    /// The candidate failed: recorded in the journal first (a process that dies on the way
    /// leaves the next pass to finish it), then the preview block back on the live color and
    /// the candidate removed; a failed deployment, production untouched.
    async fn fail_preview(
        &self,
        name: &str,
        mark: &PreviewMark,
        reason: &str,
    ) -> Result<Ran, ReconcileError> {
        let (pass, ctx) = (self.pass, self.ctx());
        let cfg = &ctx.cfg;
        if mark.failing.is_none() {
            let failing = PreviewMark {
                failing: Some(reason.to_string()),
                ..mark.clone()
            };
            pass.set_status(|s| s.preview_mark = Some(failing))?;
        }
        tracing::warn!(%reason, "preview failed: the candidate is removed, production stays");
        let port = cfg.port(mark.stable);
        let back_image = self.previous.as_deref().unwrap_or("previous");
        pass.switch_nginx(
            port,
            &self.stable_servers(mark.stable),
            &ctx.live_comment(mark.stable, back_image),
        )
        .await?;
        self.remove_candidate(name).await;
        self.forget_preview();
        Err(ReconcileError::PreviewFailed {
            image: self.image.to_string(),
            reason: reason.to_string(),
        })
    }

    /// Production's block on the live color alone, the preview block on `candidate`: written,
    /// tested and reloaded with a switch mark in the journal until nginx took it, so a
    /// process that dies inside leaves the next pass to write it again.
    async fn switch_to_preview(
        &self,
        mark: &PreviewMark,
        candidate: &[SocketAddr],
    ) -> Result<(), ReconcileError> {
        let ctx = self.ctx();
        let back_image = self.previous.as_deref().unwrap_or("previous");
        let stable = self.stable_servers(mark.stable);
        let (stable_comment, preview_comment) = (
            ctx.live_comment(mark.stable, back_image),
            format!("preview {}", ctx.live_comment(self.color, self.image)),
        );
        self.pass
            .marked_switch(ctx.cfg.port(mark.stable), || {
                ctx.proxy
                    .switch_preview(&stable, &stable_comment, candidate, &preview_comment)
            })
            .await?;
        // nginx's reload returns while its old workers still take new connections, whose
        // preview block names the live color: the preview is open once they are gone.
        ctx.proxy.wait_retired(super::OLD_WORKERS_LIMIT).await;
        Ok(())
    }

    /// What status.json shows of the preview.
    fn show_preview(
        &self,
        name: &str,
        mark: &PreviewMark,
        probe_failures: u32,
    ) -> Result<(), ReconcileError> {
        let cfg = &self.ctx().cfg;
        let progress = PreviewProgress {
            image: self.image.to_string(),
            color: self.color.to_string(),
            container: name.to_string(),
            stable_color: mark.stable.to_string(),
            stable_image: self.previous.clone(),
            since: mark.since.clone(),
            upstream: preview_name(&cfg.nginx.upstream_name),
            probe_failures,
        };
        self.pass.set_status(|s| {
            s.phase = Phase::Progressing;
            s.step = Some(Step::Preview);
            s.message = None;
            s.preview = Some(progress);
        })
    }

    /// No preview runs any more: the journal and status.json stop showing one.
    pub(super) fn forget_preview(&self) {
        let ctx = self.ctx();
        *ctx.preview_watch.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(e) = self.pass.set_status(|s| {
            s.preview = None;
            s.preview_mark = None;
        }) {
            tracing::warn!(error = %e, "cannot update the status");
        }
    }
}
