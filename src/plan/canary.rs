//! The canary, decided pass by pass, pure: where the journal says the canary stands (its
//! [`CanaryMark`]: generation, step, when the step began), what nginx's upstream file shares
//! by weight, the step's window of real traffic ([`Figures`] read from nginx's access log, the
//! canary's probes) and a promote request waiting give one [`Decision`]: stay, enter the next
//! step (or enter the same one again, when the file does not show its weights), promote (every
//! request to the canary) or abort. The pass carries it out and the loop judges again at the
//! next tick: nothing of the canary lives only in a process's memory but the window's counts.
//!
//! [`judge`] judges a window against the `[canary]` bounds.

use std::fmt;
use std::time::Duration;

use super::{runs_desired, Rollout};
use crate::config::{CanaryConfig, Config, Pause};
use crate::desired::promote::PromoteRequest;
use crate::desired::Desired;
use crate::model::Color;
use crate::observe::access_log::Figures;
use crate::observe::{CanaryWindow, Observed};
use crate::state::status::CanaryMark;

/// Consecutive failed health probes of the canary that fail its step.
pub const PROBE_FAILURES: u32 = 3;

/// What a pass does about the canary of the desired generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep watching `step`: it has not passed yet. A promote request for another
    /// generation or step (`ignored`) is dropped, and said so.
    Stay {
        step: usize,
        ignored: Option<PromoteRequest>,
    },
    /// nginx to `step`'s weights: the step begins now, after `passed` ended the one before;
    /// or (`again`) the file does not show the weights of the step the journal records (a
    /// process died inside the switch to it), which goes on from when it began.
    Enter {
        step: usize,
        again: bool,
        passed: Option<Passed>,
    },
    /// The last step passed (or the promotion was under way): every request to the canary,
    /// then the drain and the stable color's removal, as for blue/green.
    Promote { passed: Option<Passed> },
    /// The canary failed, for `reason`: nginx back to the stable color alone, the candidate
    /// removed, the deployment a failure after the switch.
    Abort { reason: String },
}

/// How a step ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub step: usize,
    /// Ended by `fieldtrack promote` (the request is taken), not by its pause.
    pub promoted: bool,
}

/// A canary's action for one pass, with where traffic moves: the canary's color takes it
/// from `stable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryAction {
    pub rollout: Rollout,
    pub stable: Color,
    pub decision: Decision,
}

impl fmt::Display for CanaryAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (color, stable) = (self.rollout.color, self.stable);
        let image = &self.rollout.image;
        let passed = |f: &mut fmt::Formatter<'_>, passed: &Option<Passed>| match passed {
            Some(Passed {
                step,
                promoted: true,
            }) => write!(f, "canary step {step} promoted by hand; "),
            Some(Passed { step, .. }) => write!(f, "canary step {step} passed; "),
            None => Ok(()),
        };
        match &self.decision {
            Decision::Stay { step, .. } => {
                write!(f, "canary {image} ({color}): watch step {step} on")
            }
            Decision::Enter {
                step, again: true, ..
            } => write!(
                f,
                "canary {image} ({color}): put nginx on step {step}'s weights again, the step goes on"
            ),
            Decision::Enter {
                step,
                passed: done,
                ..
            } => {
                passed(f, done)?;
                write!(f, "canary {image} ({color}): step {step} begins")
            }
            Decision::Promote { passed: done } => {
                passed(f, done)?;
                write!(
                    f,
                    "every request to the canary {image} ({color}), then drain and remove the {stable} color"
                )
            }
            Decision::Abort { reason } => write!(
                f,
                "abort the canary {image} ({reason}): nginx back to {stable} alone, remove the {color} candidate"
            ),
        }
    }
}

/// The canary's action when the journal records a canary of the desired generation that can
/// go on: its container runs the desired image (else it is aborted), the stable color still
/// runs and nginx's file names it first. None otherwise: the plan goes the blue/green way
/// (a newer generation settles nginx on the stable color first and removes the canary; a
/// stable color gone leaves the canary to take the traffic through its gate).
pub fn decide(cfg: &Config, desired: &Desired, observed: &Observed) -> Option<CanaryAction> {
    let canary_cfg = cfg.canary.as_ref()?;
    let mark = observed
        .canary
        .as_ref()
        .filter(|m| m.generation == desired.generation)?;
    let stable = observed
        .container(cfg, mark.stable)
        .filter(|c| c.state.is_running())?;
    if observed.upstream_port() != Some(cfg.port(mark.stable)) {
        return None;
    }
    let reference = desired.reference(cfg);
    let image = desired.image.as_written().to_string();
    let rollout = Rollout {
        color: mark.color,
        image: image.clone(),
        reference: reference.clone(),
        old: Some(stable.name.clone()),
    };
    let action = |decision| CanaryAction {
        rollout: rollout.clone(),
        stable: mark.stable,
        decision,
    };
    if let Some(reason) = &mark.aborting {
        return Some(action(Decision::Abort {
            reason: reason.clone(),
        }));
    }
    let steps = canary_cfg.steps.len();
    let at = |step: usize| {
        let s = &canary_cfg.steps[step.min(steps) - 1];
        format!("canary step {step} of {steps} ({}%)", s.weight)
    };
    if runs_desired(cfg, observed, mark.color, &reference, &image).is_none() {
        let state = observed
            .container(cfg, mark.color)
            .map_or("disappeared".to_string(), |c| c.state.to_string());
        return Some(action(Decision::Abort {
            reason: format!("{}: the container {state}", at(mark.step)),
        }));
    }
    if mark.step > steps {
        return Some(action(Decision::Promote { passed: None }));
    }
    Some(action(step_decision(cfg, canary_cfg, mark, observed, &at)))
}

/// Within a step that can go on: what its window, its time and a promote request say.
fn step_decision(
    cfg: &Config,
    canary_cfg: &CanaryConfig,
    mark: &CanaryMark,
    observed: &Observed,
    at: &dyn Fn(usize) -> String,
) -> Decision {
    let step = mark.step.max(1);
    let weight = canary_cfg.steps[step - 1].weight;
    let weights: Vec<(u16, u32)> = observed
        .upstream_weights
        .iter()
        .map(|(addr, w)| (addr.port(), *w))
        .collect();
    if canary_share(&weights, cfg.port(mark.color)) != Some(weight) {
        return Decision::Enter {
            step,
            again: true,
            passed: None,
        };
    }
    let empty = CanaryWindow::default();
    let window = observed
        .window
        .as_ref()
        .filter(|w| w.generation == mark.generation && w.step == step)
        .unwrap_or(&empty);
    let figures = format!(
        "canary {}; stable {}",
        plain(&window.canary),
        plain(&window.stable)
    );
    if window.probe_failures >= PROBE_FAILURES {
        let last = window.last_probe.as_deref().unwrap_or("none");
        return Decision::Abort {
            reason: format!(
                "{}: {PROBE_FAILURES} failed health probes in a row, last: {last} ({figures})",
                at(step)
            ),
        };
    }
    let judgement = judge(canary_cfg, &window.stable, &window.canary);
    if let Judgement::Failed(why) = &judgement {
        return Decision::Abort {
            reason: format!("{}: {why} ({figures})", at(step)),
        };
    }
    let promote = observed.promote.clone();
    let promoted = promote
        .as_ref()
        .is_some_and(|r| r.generation == mark.generation && r.step == step);
    let spent = mark
        .step_started_time()
        .and_then(|t| observed.now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO);
    let paused_enough = match canary_cfg.steps[step - 1].pause {
        Pause::For(d) => spent >= d,
        Pause::Manual => false,
    };
    let passed_by_time = paused_enough && judgement == Judgement::Healthy;
    if !(promoted || passed_by_time) {
        return Decision::Stay {
            step,
            ignored: promote,
        };
    }
    let passed = Some(Passed { step, promoted });
    if step < canary_cfg.steps.len() {
        Decision::Enter {
            step: step + 1,
            again: false,
            passed,
        }
    } else {
        Decision::Promote { passed }
    }
}

/// The canary's share of the traffic, in percent, of servers (by port) weighted as nginx
/// reads them: the canary's servers are those on `canary_port`. None when the file names no
/// canary server, or the share is no whole percent (no step's weights).
pub fn canary_share(servers: &[(u16, u32)], canary_port: u16) -> Option<u32> {
    let total: u64 = servers.iter().map(|(_, w)| u64::from(*w)).sum();
    let canary: u64 = servers
        .iter()
        .filter(|(port, _)| *port == canary_port)
        .map(|(_, w)| u64::from(*w))
        .sum();
    if total == 0 || canary == 0 || !(canary * 100).is_multiple_of(total) {
        return None;
    }
    u32::try_from(canary * 100 / total).ok()
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

/// How much slower than the stable color's p95 the canary's may be, whatever the ratio.
pub const LATENCY_SLACK: f64 = 0.020;

/// What a step's window says so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Not enough canary requests yet to say anything (`min_requests`).
    TooFewRequests { have: u64, need: u64 },
    /// Within every bound so far.
    Healthy,
    /// Out of a bound: the canary is aborted, with the reason in plain words.
    Failed(String),
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Judgement::TooFewRequests { have, need } => {
                write!(f, "{have} of the {need} canary requests a step needs")
            }
            Judgement::Healthy => f.write_str("within bounds"),
            Judgement::Failed(why) => f.write_str(why),
        }
    }
}

/// Judges a window. The error rate fails the canary only when it is above
/// `max_error_rate` and above the stable color's own in the same window: an outage of
/// something both colors use is not the canary's fault. The latency bound compares p95s,
/// once both sides have requests, and only after `min_requests`.
///
/// Errors are judged early: before `min_requests`, the canary fails once its errors alone
/// exceed the bound's share of `min_requests` (2 errors with 100 needed at 1%). So a canary
/// answering 5xx to everything fails after a handful of requests, not after a hundred; the
/// price is that a window that would later have grown large enough to dilute those errors
/// never gets to.
pub fn judge(cfg: &CanaryConfig, stable: &Figures, canary: &Figures) -> Judgement {
    let (failed, tries) = canary.failures();
    let rate = canary.failure_rate();
    let bound = cfg.max_error_rate.0;
    let enough = canary.requests >= cfg.min_requests;
    // Before min_requests: the failures over the requests the step needs.
    let certain_rate = if enough {
        rate
    } else {
        failed as f64 / cfg.min_requests.max(tries) as f64
    };
    if certain_rate > bound && rate > stable.failure_rate() {
        let (stable_failed, stable_tries) = stable.failures();
        return Judgement::Failed(format!(
            "the canary answered {failed} of {tries} requests with 5xx or not at all ({:.1}%, bound {:.1}%; the stable color {stable_failed} of {stable_tries}, {:.1}%)",
            rate * 100.0,
            bound * 100.0,
            stable.failure_rate() * 100.0,
        ));
    }
    if !enough {
        return Judgement::TooFewRequests {
            have: canary.requests,
            need: cfg.min_requests,
        };
    }
    if let (Some(c), Some(s)) = (canary.quantile(0.95), stable.quantile(0.95)) {
        // A stable p95 of 0 (nginx rounds to the millisecond) compares with 1 ms.
        let ratio = c / s.max(0.001);
        // Within LATENCY_SLACK of the stable color the canary is never too slow: at a few
        // milliseconds, a ratio is noise (3 ms against 1 ms is 3 times).
        if ratio > cfg.max_latency_ratio.0 && c - s > LATENCY_SLACK {
            return Judgement::Failed(format!(
                "the canary's p95 latency is {:.0} ms, {ratio:.1} times the stable color's {:.0} ms (bound {:.1})",
                c * 1000.0,
                s * 1000.0,
                cfg.max_latency_ratio.0
            ));
        }
    }
    Judgement::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CanaryStep, Pause, Ratio};
    use crate::observe::access_log::{parse_line, tally, Request};
    use std::collections::HashMap;
    use std::time::Duration;

    fn cfg() -> CanaryConfig {
        CanaryConfig {
            steps: vec![CanaryStep {
                weight: 10,
                pause: Pause::For(Duration::from_secs(60)),
            }],
            max_error_rate: Ratio(0.01),
            min_requests: 100,
            max_latency_ratio: Ratio(2.0),
        }
    }

    /// `n` requests to `port`, `errors` of them answered 500, each taking `secs`.
    fn requests(port: u16, n: u64, errors: u64, secs: f64) -> Vec<Request> {
        (0..n)
            .map(|i| {
                let status = if i < errors { 500 } else { 200 };
                parse_line(&format!(
                    "{{\"upstream_addr\":\"127.0.0.1:{port}\",\"status\":\"{status}\",\"upstream_status\":\"{status}\",\"request_time\":\"{secs}\"}}"
                ))
                .unwrap()
            })
            .collect()
    }

    fn figures(stable: Vec<Request>, canary: Vec<Request>) -> (Figures, Figures) {
        let mut all = HashMap::new();
        tally(&mut all, &[stable, canary].concat(), |a| Some(a.port()));
        (
            all.remove(&3001).unwrap_or_default(),
            all.remove(&3002).unwrap_or_default(),
        )
    }

    #[test]
    fn a_healthy_canary_passes_once_it_had_enough_requests() {
        let (s, c) = figures(requests(3001, 900, 0, 0.01), requests(3002, 50, 0, 0.01));
        assert_eq!(
            judge(&cfg(), &s, &c),
            Judgement::TooFewRequests {
                have: 50,
                need: 100
            }
        );
        let (s, c) = figures(requests(3001, 900, 0, 0.01), requests(3002, 100, 0, 0.012));
        assert_eq!(judge(&cfg(), &s, &c), Judgement::Healthy);
    }

    #[test]
    fn one_error_in_five_fails_at_once_naming_the_figures() {
        // 20% after 10 requests already puts the rate over 1% of min_requests for good.
        let (s, c) = figures(requests(3001, 90, 0, 0.01), requests(3002, 10, 2, 0.01));
        match judge(&cfg(), &s, &c) {
            Judgement::Failed(why) => {
                assert!(why.contains("2 of 10 requests"), "{why}");
                assert!(why.contains("bound 1.0%"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_outage_of_both_colors_is_not_the_canarys_fault() {
        let (s, c) = figures(
            requests(3001, 900, 450, 0.01),
            requests(3002, 100, 50, 0.01),
        );
        assert_eq!(judge(&cfg(), &s, &c), Judgement::Healthy);
    }

    #[test]
    fn a_slow_canary_fails_the_latency_bound_only_after_enough_requests() {
        let (s, c) = figures(requests(3001, 900, 0, 0.010), requests(3002, 99, 0, 0.200));
        assert!(matches!(
            judge(&cfg(), &s, &c),
            Judgement::TooFewRequests { .. }
        ));
        let (s, c) = figures(requests(3001, 900, 0, 0.010), requests(3002, 100, 0, 0.200));
        match judge(&cfg(), &s, &c) {
            Judgement::Failed(why) => assert!(why.contains("p95 latency is 200 ms"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_few_milliseconds_slower_is_not_too_slow_whatever_the_ratio() {
        // 3 ms against 1 ms is 3 times the stable p95, within the slack of 20 ms.
        let (s, c) = figures(requests(3001, 900, 0, 0.001), requests(3002, 200, 0, 0.003));
        assert_eq!(judge(&cfg(), &s, &c), Judgement::Healthy);
        // 30 ms against 1 ms is beyond it.
        let (s, c) = figures(requests(3001, 900, 0, 0.001), requests(3002, 200, 0, 0.030));
        assert!(matches!(judge(&cfg(), &s, &c), Judgement::Failed(_)));
    }

    #[test]
    fn requests_the_client_gave_up_on_are_no_failure_of_the_canary() {
        // Two of the first ten canary requests were abandoned by their clients (nginx's 499)
        // before the canary answered: no upstream status, nothing to judge it by.
        let mut canary = requests(3002, 8, 0, 0.01);
        for _ in 0..2 {
            let gave_up = parse_line(
                "{\"upstream_addr\":\"127.0.0.1:3002\",\"status\":\"499\",\"upstream_status\":\"-\",\"request_time\":\"0.500\"}",
            )
            .unwrap();
            canary.insert(3, gave_up);
        }
        let (s, c) = figures(requests(3001, 90, 0, 0.01), canary);
        assert_eq!(
            judge(&cfg(), &s, &c),
            Judgement::TooFewRequests { have: 8, need: 100 }
        );
        assert_eq!(c.failures(), (0, 8));
    }

    #[test]
    fn a_single_error_below_the_bound_does_not_fail() {
        let (s, c) = figures(requests(3001, 900, 0, 0.01), requests(3002, 200, 1, 0.01));
        assert_eq!(judge(&cfg(), &s, &c), Judgement::Healthy);
    }
}
