//! `fieldtrack reconcile`: one full pass in this process, under the reconcile lock.

use std::time::Duration;

use super::CliError;
use crate::config::Config;
use crate::desired::Desired;
use crate::reconcile::Outcome;
use crate::state::lock::{self, LockError, ReconcileLock};
use crate::state::status::{Phase, Status};
use crate::state::STATUS_FILE;

/// Transient errors (engine or registry unreachable) are retried this many times in all.
pub(crate) const TRIES: u32 = 5;

pub async fn run(cfg: Config) -> Result<u8, CliError> {
    let desired = load_desired(&cfg)?;
    let _lock = take_lock(&cfg, "fieldtrack reconcile", Duration::from_secs(600)).await?;
    converge(cfg, &desired, "cli").await
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
    let path = cfg.state_dir.join(STATUS_FILE);
    let mut status = Status::load(&path)
        .ok()
        .flatten()
        .unwrap_or_else(|| Status::new(Phase::Invalid));
    status.phase = Phase::Invalid;
    status.step = None;
    status.message = Some(message.to_string());
    if let Err(e) = status.save(&path) {
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
    trigger: &str,
) -> Result<u8, CliError> {
    let rc = super::reconciler(cfg, trigger).await?;
    let result = rc.reconcile_with_retries(desired, true, TRIES).await;
    if let Some(notifier) = &rc.notifier {
        // This process exits next: give the webhook a moment, never more.
        notifier.flush(Duration::from_secs(5)).await;
    }
    match result? {
        Outcome::Converged => {
            let status = Status::load(&rc.cfg.state_dir.join(STATUS_FILE))
                .ok()
                .flatten();
            match status.and_then(|s| s.live) {
                Some(live) => eprintln!(
                    "converged: {} live on {} ({}, 127.0.0.1:{})",
                    desired.image, live.color, live.container, live.port
                ),
                None => eprintln!("converged: {}", desired.image),
            }
            Ok(0)
        }
        Outcome::Paused => {
            eprintln!("paused: the desired file says paused = true; nothing was changed");
            Ok(0)
        }
        Outcome::AlreadyFailed { message } => Err(CliError::Failed(format!(
            "generation {} already failed: {}",
            desired.generation,
            message.unwrap_or_default()
        ))),
    }
}
