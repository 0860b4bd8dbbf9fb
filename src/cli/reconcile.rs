//! `fieldtrack reconcile`: one full pass in this process, under the reconcile lock.

use std::time::Duration;

use super::progress::{End, Follower, Shown, TICK};
use super::CliError;
use crate::config::Config;
use crate::desired::Desired;
use crate::reconcile::{Pass, PassOutcome, ReconcileError, Trigger};
use crate::state::by_hand::{ByHand, BY_HAND_FILE};
use crate::state::lock::{self, LockError, ReconcileLock};
use crate::state::status::{Phase, Status};
use crate::state::STATUS_FILE;

/// Transient errors (engine or registry unreachable) are retried this many times in all.
pub(crate) const TRIES: u32 = 5;

pub async fn run(cfg: Config) -> Result<u8, CliError> {
    let desired = load_desired(&cfg)?;
    let _lock = match lock::try_acquire(&cfg.state_dir, "fieldtrack reconcile") {
        Ok(lock) => lock,
        Err(LockError::Held { holder }) => match lock::daemon_pid(&holder) {
            Some(pid) => {
                // The holder line is only text: signal nothing it names before checking
                // that it is a fieldtrack process that really holds the lock.
                lock::check_daemon(&cfg.state_dir, pid)?;
                return ask_daemon(&cfg, &desired, pid).await;
            }
            None => take_lock(&cfg, "fieldtrack reconcile", Duration::from_secs(600)).await?,
        },
        Err(e) => return Err(e.into()),
    };
    // What was read before the lock may be stale by now (the lock's holder, or a deploy
    // that wrote after us, may have changed it): the pass acts on the file as it is under
    // the lock.
    let desired = load_desired(&cfg)?;
    converge(cfg, &desired, Trigger::Cli).await
}

/// The daemon holds the lock: ask it for a pass by hand (SIGUSR1) and report that pass's
/// outcome, which it records in `by-hand.json` (a resync's status write meanwhile is not it).
async fn ask_daemon(cfg: &Config, desired: &Desired, pid: i32) -> Result<u8, CliError> {
    let path = cfg.state_dir.join(BY_HAND_FILE);
    let asked = ByHand::load(&path).started;
    // `pid` passed `lock::check_daemon`: above 1, a fieldtrack process holding the lock.
    let daemon = rustix::process::Pid::from_raw(pid);
    let signalled = daemon.map_or(Err(rustix::io::Errno::SRCH), |daemon| {
        rustix::process::kill_process(daemon, rustix::process::Signal::USR1)
    });
    if let Err(e) = signalled {
        return Err(CliError::Failed(format!(
            "cannot signal the daemon (pid {pid}): {}",
            std::io::Error::from(e)
        )));
    }
    eprintln!("asked the daemon (pid {pid}) for a reconcile by hand; waiting for its outcome");
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let shown = Shown::stderr();
    let mut follower = Follower::default();
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(TICK).await;
        let log = ByHand::load(&path);
        if log.finished <= asked {
            // Signal 0 only checks that the process exists.
            if daemon.is_none_or(|daemon| rustix::process::test_kill_process(daemon).is_err()) {
                shown.abandon();
                return Err(CliError::Failed(format!(
                    "the daemon (pid {pid}) exited before its pass ended; see fieldtrack status"
                )));
            }
            if let Ok(Some(status)) = Status::load(&cfg.state_dir.join(STATUS_FILE)) {
                for event in follower.events(&status) {
                    shown.event(&event);
                }
            }
            shown.tick();
            continue;
        }
        let Some(status) = log.outcome else {
            shown.abandon();
            return Err(CliError::Failed(
                "the daemon's pass ended without a status; see fieldtrack status".into(),
            ));
        };
        let result = match status.phase {
            Phase::Converged => {
                shown.end(&End::Converged {
                    image: status.desired.clone().unwrap_or_default(),
                    live: status.live.clone(),
                });
                Ok(0)
            }
            Phase::Paused => {
                shown.end(&End::Paused);
                Ok(0)
            }
            Phase::Failed | Phase::Invalid => {
                shown.end(&End::Failed);
                Err(CliError::Failed(
                    status.message.clone().unwrap_or_else(|| "failed".into()),
                ))
            }
            Phase::Progressing => {
                shown.abandon();
                Err(CliError::Failed(format!(
                    "the pass was cancelled before it ended ({}); see fieldtrack status",
                    status
                        .message
                        .as_deref()
                        .unwrap_or("a newer desired state or a stop")
                )))
            }
        };
        if status.generation.as_deref() != Some(desired.generation.as_str()) {
            eprintln!(
                "note: the desired file changed meanwhile; the pass reconciled {}",
                super::terminal::printable(
                    status.desired.as_deref().unwrap_or("another generation")
                )
            );
        }
        return result;
    }
    shown.abandon();
    Err(CliError::Failed(
        "gave up waiting for the daemon's pass after 15 minutes".into(),
    ))
}

/// Loads the desired file; an unusable one is reported in status.json as `invalid`.
pub(crate) fn load_desired(cfg: &Config) -> Result<Desired, CliError> {
    Desired::load(&cfg.desired_file, cfg).map_err(|e| {
        mark_invalid(cfg, &e.to_string());
        CliError::Desired(e)
    })
}

/// Writes `phase: invalid` with the reason, keeping the rest of the last status.
pub(crate) fn mark_invalid(cfg: &Config, message: &str) {
    if let Err(e) = Status::mark_invalid(&cfg.state_dir.join(STATUS_FILE), message) {
        tracing::error!(error = %e, "cannot write the status");
    }
}

/// Takes the reconcile lock, waiting up to `wait` and saying who holds it meanwhile.
pub(crate) async fn take_lock(
    cfg: &Config,
    holder: &str,
    wait: Duration,
) -> Result<ReconcileLock, CliError> {
    match lock::try_acquire(&cfg.state_dir, holder) {
        Ok(lock) => Ok(lock),
        Err(LockError::Held { holder: other }) => {
            eprintln!("waiting for the reconcile lock, held by {other}");
            Ok(lock::acquire_waiting(&cfg.state_dir, holder, wait).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// One pass by hand (a failed generation is retried), with bounded retries.
pub(crate) async fn converge(
    cfg: Config,
    desired: &Desired,
    trigger: Trigger,
) -> Result<u8, CliError> {
    let shown = Shown::stderr();
    let ctx = match super::context(cfg).await {
        Ok(ctx) => ctx,
        Err(e) => {
            shown.end(&End::Failed);
            return Err(e);
        }
    };
    // Run by hand: a generation that failed before is attempted again.
    if let Err(e) = ctx.ask_retry(desired) {
        shown.end(&End::Failed);
        return Err(CliError::Failed(e.to_string()));
    }
    let pass = Pass::new(&ctx, trigger).with_progress(shown.sink());
    let result = shown
        .during(pass.reconcile_with_retries(desired, TRIES))
        .await;
    if let Some(notifier) = &ctx.notifier {
        // This process exits next: give the webhook and email a moment, never more, since
        // a server that is down or slow must not delay a deployment.
        if !notifier.flush(Duration::from_secs(1)).await {
            tracing::warn!(
                to = %notifier.targets(),
                "notification not delivered within 1s; dropped"
            );
        }
    }
    if let Err(ReconcileError::FailedAfterSwitch {
        back_to: Some(_),
        rolled_back_to: Some(previous),
        ..
    }) = &result
    {
        // This command's auto-rollback rewrote the desired file: one more pass makes the
        // status say what runs now (no daemon is here to notice the file). Only while the
        // file still says what it wrote: a desired state someone else wrote meanwhile is
        // theirs.
        if let Ok(now) = Desired::load(&ctx.cfg.desired_file, &ctx.cfg) {
            if now.generation != desired.generation && now.image.as_written() == previous {
                let _ = pass.reconcile(&now).await;
            }
        }
    }
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            shown.end(&End::Failed);
            return Err(e.into());
        }
    };
    match outcome {
        PassOutcome::Converged => {
            let status = Status::load(&ctx.cfg.state_dir.join(STATUS_FILE))
                .ok()
                .flatten();
            shown.end(&End::Converged {
                image: desired.image.to_string(),
                live: status.and_then(|s| s.live),
            });
            Ok(0)
        }
        PassOutcome::Paused => {
            shown.end(&End::Paused);
            Ok(0)
        }
        PassOutcome::Preview { .. } => {
            // The preview is up: what the command waited for. The promotion is the
            // operator's: `fieldtrack promote`.
            let status = Status::load(&ctx.cfg.state_dir.join(STATUS_FILE))
                .ok()
                .flatten();
            match status.and_then(|s| s.preview) {
                Some(preview) => shown.end(&End::Preview(preview)),
                None => {
                    shown.abandon();
                    eprintln!(
                        "preview: {} awaits promotion (fieldtrack promote, fieldtrack abort)",
                        desired.image
                    );
                }
            }
            Ok(0)
        }
        // The in-process retries run the canary to its end: not an outcome they return.
        PassOutcome::Canary { step, .. } => Err(CliError::Failed(format!(
            "the canary of {} stopped at step {step} before its end; see fieldtrack status",
            desired.image
        ))),
        PassOutcome::AlreadyFailed { message } => {
            shown.end(&End::Failed);
            Err(CliError::Failed(format!(
                "generation {} already failed: {}",
                desired.generation,
                message.unwrap_or_default()
            )))
        }
    }
}
