//! What a pass tells whoever watches it while it runs: the CLI renders it on the operator's
//! terminal. A pass without a sink (the daemon's) emits nothing; status.json and the logs
//! say the same for those.

use crate::state::status::Step;

/// One thing that happened during a pass, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A step of an attempt began.
    Step(Step),
    /// The candidate answered a health probe (`passed`: with a code of `health.expect`) or did not.
    Health { probes: u32, passed: bool },
    /// nginx now sends traffic to the candidate's color.
    Switched { color: String, port: u16 },
    /// nginx now shares the traffic for a canary step: `weight` percent to the candidate.
    CanaryStep {
        step: usize,
        steps: usize,
        weight: u32,
    },
}

/// Receives a pass's progress; called on the pass's own task, so it must not block.
pub type ProgressSink = Box<dyn Fn(Progress) + Send + Sync>;
