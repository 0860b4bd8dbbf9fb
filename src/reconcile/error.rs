//! What can go wrong in a pass, and what kind of retry each deserves.

use std::time::Duration;

use super::backoff::Backoff;
use crate::model::proxy::ProxyError;
use crate::model::runtime::RuntimeError;
use crate::observe::ObserveError;
use crate::secrets::env_file::EnvFileError;
use crate::state::audit::AuditError;
use crate::state::history::HistoryError;
use crate::state::status::StatusError;

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The world could not be observed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// The image could not be pulled.
    #[error("failed to pull {reference}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: RuntimeError,
    },
    /// The container runtime failed otherwise.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The candidate exited during the health gate.
    #[error("candidate {container} ({image}) {state} before becoming healthy; production untouched. Last log lines:\n{logs}")]
    CandidateExited {
        container: String,
        image: String,
        state: String,
        logs: String,
    },
    /// A previewed candidate failed while it awaited promotion (failed probes in a row, or
    /// its container exiting): it was removed, and production, never switched to it, is
    /// untouched.
    #[error("the preview of {image} ended: {reason}; production untouched")]
    PreviewFailed { image: String, reason: String },
    /// The candidate never answered its health check with a code of `health.expect` in time;
    /// `last` is the last probe's outcome, with a hint at `health.host` when the app seems to
    /// refuse the probe's Host.
    #[error("candidate {container} ({image}) did not become healthy within {deadline:?} (last probe: {last}); production untouched. Last log lines:\n{logs}")]
    Unhealthy {
        container: String,
        image: String,
        deadline: Duration,
        last: String,
        logs: String,
    },
    /// The new color failed during the drain window; traffic went back to the old color
    /// when one was still running (`back_to`), else it stayed on the new one; with
    /// `rollout.auto_rollback` the desired file was rewritten to `rolled_back_to`.
    #[error("{image} failed after the switch ({reason}); {}{}", match back_to {
        Some(color) => format!("traffic is back on {color}"),
        None => "no previous color was running, so traffic stays on it".to_string(),
    }, match rolled_back_to {
        Some(previous) => format!(" and the desired file was rolled back to {previous}"),
        None => String::new(),
    })]
    FailedAfterSwitch {
        image: String,
        reason: String,
        back_to: Option<String>,
        rolled_back_to: Option<String>,
    },
    /// The pre_switch hook failed: the attempt stops before any switch.
    #[error(transparent)]
    Hook(#[from] crate::apply::hooks::HookError),
    /// nginx could not be switched (test or reload failed); the upstream file was restored.
    #[error(transparent)]
    Switch(#[from] ProxyError),
    /// The env file could not be read.
    #[error(transparent)]
    EnvFile(#[from] EnvFileError),
    /// The history file could not be read or written.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// status.json could not be written.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// audit.jsonl could not be appended to.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A newer desired generation (or a stop signal) cancelled the attempt: before the switch
    /// its candidate is removed; during the drain both colors are left running.
    #[error("attempt cancelled by a newer desired generation or a stop signal")]
    Cancelled,
    /// A newer desired generation (or a stop signal) arrived during the drain: the new color
    /// stays live, the old one keeps running until the next pass retires it.
    #[error("the drain of {image} was cut short by a newer desired generation or a stop signal: {image} is live, {old} keeps running until the next pass retires it")]
    DrainCutShort { image: String, old: String },
    /// fieldtrack cannot tell which container nginx sends traffic to: nothing was changed.
    #[error("{reason}")]
    Unclear { reason: String },
    /// A container that nginx may send traffic to was about to be removed: it was kept, and
    /// the pass stopped.
    #[error("{container} was kept running: {reason}; fieldtrack removed nothing. Check the nginx upstream file {upstream_file} and `nginx -t`, reload nginx, then run `fieldtrack reconcile`")]
    StillServed {
        container: String,
        reason: String,
        upstream_file: std::path::PathBuf,
    },
    /// The new image serves, but a state file (history, status) could not be read or
    /// written after the switch (a full disk, an I/O error): no verdict on the image, which
    /// stays live. The next pass records it once the disk takes it.
    #[error("{image} is live, but recording it failed: {source}; the next pass records it")]
    Unrecorded {
        image: String,
        #[source]
        source: Box<ReconcileError>,
    },
    /// The pass panicked (a bug): whatever it was doing stopped there; the next pass
    /// observes the world again after the backoff's delay.
    #[error("the pass stopped on an internal error (a bug; please report it): {message}")]
    Panicked { message: String },
    /// None of the live color's running replicas answered its probe: nginx is left as it
    /// was, and the next resync looks again.
    #[error("no replica of {service} answers its health probe ({running} running): the nginx upstream file was left as it is; check `docker service ps {service}` and the app's logs")]
    NoReplicaAnswers { service: String, running: usize },
}

impl ReconcileError {
    /// Worth retrying with backoff, as opposed to waiting for the desired file to change.
    pub fn is_transient(&self) -> bool {
        match self {
            ReconcileError::Observe(e) => e.is_transient(),
            ReconcileError::Pull { source, .. } | ReconcileError::Runtime(source) => {
                source.is_transient()
            }
            ReconcileError::Switch(e) => e.is_transient(),
            ReconcileError::NoReplicaAnswers { .. }
            | ReconcileError::Unrecorded { .. }
            | ReconcileError::Panicked { .. } => true,
            _ => false,
        }
    }

    /// How long the other side asked to be left alone before a retry, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::Pull { source, .. } | ReconcileError::Runtime(source) => {
                source.retry_after()
            }
            _ => None,
        }
    }

    /// This error as it counts once `image` serves (after the switch): a state file that
    /// could not be read or written is [`ReconcileError::Unrecorded`], transient; anything
    /// else is unchanged.
    pub fn after_switch(self, image: &str) -> ReconcileError {
        let io = matches!(
            &self,
            ReconcileError::History(HistoryError::Read { .. } | HistoryError::Write { .. })
                | ReconcileError::Status(
                    StatusError::Read { .. }
                        | StatusError::Write { .. }
                        | StatusError::WriteJournal { .. }
                )
        );
        if !io {
            return self;
        }
        ReconcileError::Unrecorded {
            image: image.to_string(),
            source: Box::new(self),
        }
    }

    /// Superseded or stopped, not failed: the generation stays eligible.
    pub fn is_cancellation(&self) -> bool {
        matches!(
            self,
            ReconcileError::Cancelled | ReconcileError::DrainCutShort { .. }
        )
    }

    /// Nothing was attempted because the world needs an operator first (which container
    /// serves is unknown): not a verdict on the desired generation, which stays eligible.
    pub fn is_blocked(&self) -> bool {
        matches!(self, ReconcileError::Unclear { .. })
    }
}

/// The longest a registry's retry-after is waited: a rate limit naming hours is more likely
/// a broken answer than a plan, and the operator sees the error meanwhile anyway.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// What the loop does after a pass: the error policy's whole answer, which the daemon (and
/// the command's in-process retries) only carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterPass {
    /// When the next pass comes.
    pub requeue: Requeue,
    /// The desired generation failed on its own merits: later passes leave it alone until
    /// the desired file names a new one or an operator asks for a retry by hand.
    pub mark_failed: bool,
    /// The engine could not be reached: the next pass connects anew.
    pub reconnect: bool,
    /// A success ends the streak of transient errors: the next one waits the backoff's first
    /// delay again. An error leaves the backoff where it was.
    pub reset_backoff: bool,
}

/// When the next pass comes after this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// As soon as the loop is free: the pass was superseded or stopped, not finished.
    Now,
    /// After the backoff's next delay, or after what the other side asked when longer (up
    /// to [`RETRY_AFTER_MAX`]).
    Backoff { at_least: Option<Duration> },
    /// After the resync period: nothing to retry sooner (a success, or an error only a
    /// change cures). The resync looks at the world again and repairs drift.
    Resync,
}

impl AfterPass {
    /// After a pass that succeeded: look again after the resync period.
    pub const fn resync() -> AfterPass {
        AfterPass {
            requeue: Requeue::Resync,
            mark_failed: false,
            reconnect: false,
            reset_backoff: true,
        }
    }

    /// How long to wait before the next pass, taking the backoff's next delay when the
    /// requeue is one (and resetting it after a success).
    pub fn delay(&self, backoff: &mut Backoff, resync: Duration) -> Duration {
        if self.reset_backoff {
            backoff.reset();
        }
        match self.requeue {
            Requeue::Now => Duration::ZERO,
            Requeue::Backoff { at_least } => {
                let delay = backoff.next_delay();
                match at_least {
                    Some(asked) => delay.max(asked.min(RETRY_AFTER_MAX)),
                    None => delay,
                }
            }
            Requeue::Resync => resync,
        }
    }
}

/// What the policy answers to an error that fails the generation on its own merits (an
/// unhealthy image, a missing one, a login to fix): marked, nothing sooner than the resync.
#[cfg(test)]
pub(crate) const GENERATION_FAILED: AfterPass = AfterPass {
    requeue: Requeue::Resync,
    mark_failed: true,
    reconnect: false,
    reset_backoff: false,
};

/// The error policy, pure: transient errors come back after the backoff (or the registry's
/// retry-after); a cancelled pass comes back at once; anything else waits for the resync,
/// and marks the generation failed unless the world, not the generation, is at fault (which
/// container serves is unclear). An unreachable engine is connected anew.
pub fn error_policy(error: &ReconcileError) -> AfterPass {
    let reconnect = matches!(
        error,
        ReconcileError::Runtime(RuntimeError::Unreachable { .. })
    );
    let (requeue, mark_failed) = if error.is_cancellation() {
        (Requeue::Now, false)
    } else if error.is_transient() {
        (
            Requeue::Backoff {
                at_least: error.retry_after(),
            },
            false,
        )
    } else {
        (Requeue::Resync, !error.is_blocked())
    };
    AfterPass {
        requeue,
        mark_failed,
        reconnect,
        reset_backoff: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(4), 2)
    }

    /// The resync period these tests pass: far from every backoff delay.
    const RESYNC: Duration = Duration::from_secs(3600);

    #[test]
    fn a_success_resets_the_backoff_and_looks_again_after_the_resync() {
        let mut b = backoff();
        b.next_delay();
        b.next_delay();
        assert_eq!(AfterPass::resync().delay(&mut b, RESYNC), RESYNC);
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn an_unreachable_engine_reconnects_a_cancelled_pass_comes_back_at_once_a_panic_backs_off() {
        let unreachable = error_policy(&ReconcileError::Runtime(RuntimeError::Unreachable {
            host: "unix:///run/docker.sock".into(),
            source: bollard::errors::Error::RequestTimeoutError,
        }));
        assert!(unreachable.reconnect && !unreachable.mark_failed);
        assert_eq!(unreachable.requeue, Requeue::Backoff { at_least: None });
        let cancelled = error_policy(&ReconcileError::Cancelled);
        assert_eq!(cancelled.requeue, Requeue::Now);
        assert!(!cancelled.mark_failed && !cancelled.reconnect);
        let panicked = error_policy(&ReconcileError::Panicked {
            message: "index out of bounds".into(),
        });
        assert_eq!(panicked.requeue, Requeue::Backoff { at_least: None });
        assert!(!panicked.mark_failed);
        // Which container serves is unclear: the world's fault, not the generation's.
        let unclear = error_policy(&ReconcileError::Unclear {
            reason: "two colors run and the upstream file names neither".into(),
        });
        assert_eq!(unclear.requeue, Requeue::Resync);
        assert!(!unclear.mark_failed);
    }

    #[test]
    fn unreachable_engine_requeues_and_an_unhealthy_image_waits() {
        let mut b = backoff();
        let unhealthy = ReconcileError::Unhealthy {
            container: "api-green".into(),
            image: "v2".into(),
            deadline: Duration::from_secs(60),
            last: "500".into(),
            logs: String::new(),
        };
        assert_eq!(error_policy(&unhealthy), GENERATION_FAILED);
        let missing = ReconcileError::Pull {
            reference: "r:v".into(),
            source: RuntimeError::ImageNotFound {
                reference: "r:v".into(),
                registry: "r".into(),
                message: "manifest unknown".into(),
            },
        };
        assert_eq!(error_policy(&missing), GENERATION_FAILED);
        // A login to give (or to fix) waits for the operator, as a missing image does.
        for source in [
            RuntimeError::LoginRequired {
                registry: "r".into(),
                why: "none for r in /root/.docker/config.json".into(),
                message: "no basic auth credentials".into(),
            },
            RuntimeError::CredentialsRefused {
                registry: "r".into(),
                from: "/root/.docker/config.json".into(),
                message: "unauthorized: authentication required".into(),
            },
        ] {
            let login = ReconcileError::Pull {
                reference: "r:v".into(),
                source,
            };
            assert_eq!(error_policy(&login), GENERATION_FAILED, "{login}");
        }
        let down = ReconcileError::Pull {
            reference: "r:v".into(),
            source: RuntimeError::RegistryUnreachable {
                reference: "r:v".into(),
                message: "connection refused".into(),
            },
        };
        // Waiting for a change leaves the backoff as it was; each requeue takes its next delay.
        for e in [&unhealthy, &missing] {
            assert_eq!(error_policy(e).delay(&mut b, RESYNC), RESYNC);
        }
        for secs in [1, 2, 4, 4] {
            assert_eq!(
                error_policy(&down).delay(&mut b, RESYNC),
                Duration::from_secs(secs)
            );
        }
    }
    /// A registry's 503 or 429 is retried with the backoff; a retry-after the registry
    /// named (GHCR's rate limit, passed on in the engine's message) is waited at least.
    #[test]
    fn a_busy_registry_requeues_and_its_retry_after_is_honoured() {
        use crate::apply::docker::credentials::Login;
        let pull = |message: &str| ReconcileError::Pull {
            reference: "r:v".into(),
            source: crate::apply::docker::registry::pull_error(
                "ghcr.io/x/api:v2",
                &Login::Missing { why: "none".into() },
                message.into(),
            ),
        };
        let mut b = backoff();
        let unavailable = pull("received unexpected HTTP status: 503 Service Unavailable");
        assert_eq!(
            error_policy(&unavailable).delay(&mut b, RESYNC),
            Duration::from_secs(1)
        );
        let limited = pull("toomanyrequests: retry-after: 10.5s, allowed: 44000/minute");
        assert_eq!(
            error_policy(&limited).delay(&mut b, RESYNC),
            Duration::from_millis(10_500)
        );
        // Never shorter than the backoff, nor absurdly long.
        let soon = pull("toomanyrequests: retry-after: 190.13µs, allowed: 44000/minute");
        assert_eq!(
            error_policy(&soon).delay(&mut b, RESYNC),
            Duration::from_secs(4)
        );
        let absurd = pull("toomanyrequests: retry-after: 9000h, allowed: 1/year");
        assert_eq!(error_policy(&absurd).delay(&mut b, RESYNC), RETRY_AFTER_MAX);
    }
}
