//! The preview (`[rollout] promotion = "manual"`), decided pass by pass, pure: where the
//! journal says the preview stands (its [`PreviewMark`]: generation, colors, since when),
//! what the upstream file's two blocks name, the candidate's probes that failed in a row and
//! a promote request waiting give one [`Decision`]: await, put the file back on the
//! preview's shape, promote (the switch of a deployment) or end it as a failure. The pass
//! carries it out and the loop judges again at the next tick: nothing of the preview lives
//! only in a process's memory but the count of failed probes.
//!
//! [`opens`] says whether a deployment the plan starts opens a preview after its gate.

use std::fmt;

use super::{runs_desired, Rollout};
use crate::config::{Config, Promotion};
use crate::desired::promote::PromoteRequest;
use crate::desired::Desired;
use crate::model::Color;
use crate::nginx_conf::upstream::preview_name;
use crate::observe::Observed;

pub use super::canary::PROBE_FAILURES;

/// The step a promote request names to promote a preview: it has one.
pub const PREVIEW_STEP: usize = 1;

/// What a pass does about the preview of the desired generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep awaiting the promotion: the candidate is probed once. A promote request for
    /// another generation (`ignored`) is dropped, and said so.
    Await { ignored: Option<PromoteRequest> },
    /// The upstream file does not have the preview's shape (production's block on the live
    /// color alone, the preview block on the candidate): a process died inside the switch
    /// to it, or someone rewrote the file. It is written again; the preview goes on from
    /// when it opened.
    Reopen,
    /// `fieldtrack promote` (or a promotion under way): production switches to the
    /// candidate, then the drain and the live color's removal, as any deployment.
    Promote,
    /// The candidate failed, for `reason`: the preview block back on the live color, the
    /// candidate removed, the deployment a failure (production was never switched).
    Fail { reason: String },
}

/// A preview's action for one pass: the candidate (`rollout.color`) and the live color
/// production stays on (`stable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewAction {
    pub rollout: Rollout,
    pub stable: Color,
    /// `{upstream_name}_preview`.
    pub upstream: String,
    pub decision: Decision,
}

impl fmt::Display for PreviewAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (color, stable) = (self.rollout.color, self.stable);
        let image = &self.rollout.image;
        match &self.decision {
            Decision::Await { .. } => write!(
                f,
                "preview {image} ({color}): await promotion (production stays on {stable}; upstream {})",
                self.upstream
            ),
            Decision::Reopen => write!(
                f,
                "preview {image} ({color}): put the upstream file back on the preview (production on {stable}, upstream {} on {color})",
                self.upstream
            ),
            Decision::Promote => write!(
                f,
                "promote the preview {image} ({color}): switch nginx to {color}, then drain and remove the {stable} color"
            ),
            Decision::Fail { reason } => write!(
                f,
                "end the preview {image} ({reason}): remove the {color} candidate, production stays on {stable}"
            ),
        }
    }
}

/// Whether the deployment `rollout` opens a preview once its candidate passed the gate:
/// promotion is manual, a color other than the candidate's is live, and the image is new
/// here (one the history names goes back at once, as for the canary: a rollback, an abort).
pub fn opens(cfg: &Config, observed: &Observed, rollout: &Rollout) -> bool {
    cfg.rollout.promotion == Promotion::Manual
        && !observed.history.contains(&rollout.image)
        && observed
            .live(cfg)
            .and_then(|c| c.color)
            .is_some_and(|live| live != rollout.color)
}

/// The preview's action when the journal records a preview of the desired generation that
/// can go on: promotion is manual, the live color still runs and production's block names
/// it. None otherwise: the plan goes the blue/green way (a newer generation removes the
/// candidate, nginx first; a live color gone leaves the candidate to take the traffic
/// through its gate, since production is down already).
pub fn decide(cfg: &Config, desired: &Desired, observed: &Observed) -> Option<PreviewAction> {
    if cfg.rollout.promotion != Promotion::Manual {
        return None;
    }
    let mark = observed
        .preview
        .as_ref()
        .filter(|m| m.generation == desired.generation)?;
    let stable = observed
        .container(cfg, mark.stable)
        .filter(|c| c.state.is_running())?;
    if observed.upstream_port() != Some(cfg.port(mark.stable)) {
        return None;
    }
    let rollout = Rollout {
        color: mark.color,
        image: desired.image.as_written().to_string(),
        reference: desired.reference(cfg),
        old: Some(stable.name.clone()),
    };
    let action = |decision| {
        Some(PreviewAction {
            rollout: rollout.clone(),
            stable: mark.stable,
            upstream: preview_name(&cfg.nginx.upstream_name),
            decision,
        })
    };
    if let Some(reason) = &mark.failing {
        return action(Decision::Fail {
            reason: reason.clone(),
        });
    }
    if mark.promoting {
        return action(Decision::Promote);
    }
    if runs_desired(
        cfg,
        observed,
        mark.color,
        &rollout.reference,
        &rollout.image,
    )
    .is_none()
    {
        let state = observed
            .container(cfg, mark.color)
            .map_or("disappeared".to_string(), |c| c.state.to_string());
        return action(Decision::Fail {
            reason: format!("the container {state}"),
        });
    }
    let probes = observed
        .preview_probes
        .as_ref()
        .filter(|p| p.generation == mark.generation);
    if let Some(p) = probes.filter(|p| p.failures >= PROBE_FAILURES) {
        let last = p.last.as_deref().unwrap_or("none");
        return action(Decision::Fail {
            reason: format!("{PROBE_FAILURES} failed health probes in a row, last: {last}"),
        });
    }
    let promote = observed.promote.clone();
    if promote
        .as_ref()
        .is_some_and(|r| r.generation == mark.generation && r.step == PREVIEW_STEP)
    {
        return action(Decision::Promote);
    }
    let candidate_port = cfg.port(mark.color);
    let shaped = observed
        .preview_servers
        .iter()
        .any(|s| s.port() == candidate_port)
        && observed
            .preview_servers
            .iter()
            .all(|s| s.port() == candidate_port)
        && !observed.upstream_ports.contains(&candidate_port);
    // A switch to the preview's shape nginx was not seen to settle on: nginx may not serve
    // the preview block yet, so the file is written and reloaded again.
    if !shaped || observed.switching.is_some() {
        return action(Decision::Reopen);
    }
    action(Decision::Await { ignored: promote })
}

/// With `promotion = "manual"` and no preview running, the preview block must name what
/// production's block names (the operator's preview server proxies to it): true when the
/// file's preview block names something else, or is missing.
pub fn block_stale(cfg: &Config, observed: &Observed) -> bool {
    if cfg.rollout.promotion != Promotion::Manual {
        return false;
    }
    sorted(&observed.preview_servers) != sorted(&observed.upstream_servers)
}

/// `servers` in order, once each.
fn sorted<T: Ord + Clone>(servers: &[T]) -> Vec<T> {
    let mut servers = servers.to_vec();
    servers.sort();
    servers.dedup();
    servers
}
