//! Judging one canary step from what real traffic got, pure: the figures of the stable color
//! and of the canary in the step's window ([`Figures`], read from nginx's access log) and the
//! `[canary]` bounds give a [`Judgement`]. The step loop acts on it; nothing here reads a file.

use std::fmt;

use crate::config::CanaryConfig;
use crate::observe::access_log::Figures;

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
