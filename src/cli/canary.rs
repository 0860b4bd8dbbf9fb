//! `fieldtrack promote` and `fieldtrack abort`: an operator's say over a running canary.
//!
//! Both act only while a canary step runs: someone holds the reconcile lock (the daemon or a
//! `deploy`) and status.json shows the step. `promote` leaves a request in the state folder
//! that the step loop takes within a second. `abort` is a rollback to the stable image: the
//! desired file is rewritten, and the running canary, seeing a newer generation, sends every
//! request back to the stable color and removes the candidate.

use clap::Args;

use super::deploy::{submit, Submission};
use super::CliError;
use crate::config::Config;
use crate::desired::{Desired, ImageRef, ABORT_NOTE_PREFIX};
use crate::state::atomic::write_atomic;
use crate::state::lock::{self, LockError};
use crate::state::status::{CanaryProgress, Phase, Status, Step};
use crate::state::{PROMOTE_FILE, STATUS_FILE};

#[derive(Debug, Args)]
pub struct AbortArgs {
    /// Why, kept in the audit log with the desired state.
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub submit: Submission,
}

/// Ends the running step now: the next step begins, or after the last one the full switch.
pub fn promote(cfg: &Config) -> Result<u8, CliError> {
    let (status, canary) = running(cfg)?;
    let generation = status.generation.unwrap_or_default();
    let file = cfg.state_dir.join(PROMOTE_FILE);
    write_atomic(&file, format!("{generation}\n").as_bytes()).map_err(|e| {
        CliError::Failed(format!(
            "cannot write the promote request {}: {e}",
            file.display()
        ))
    })?;
    let next = if canary.step < canary.steps {
        format!("step {} begins", canary.step + 1)
    } else {
        "nginx switches to it alone".to_string()
    };
    println!(
        "promote: step {} of {} ({}%) of {} ends now; {next}",
        canary.step, canary.steps, canary.weight, canary.image
    );
    Ok(0)
}

/// Back to the stable image: the desired file says so (as a rollback does), and the
/// canary running ends on seeing it.
pub async fn abort(cfg: Config, args: AbortArgs) -> Result<u8, CliError> {
    let (_, canary) = running(&cfg)?;
    let stable = canary.stable_image.clone().ok_or_else(|| {
        CliError::Failed(
            "the running canary does not say which image is stable: use fieldtrack rollback"
                .to_string(),
        )
    })?;
    let image = ImageRef::parse(&stable, &cfg.repository, &cfg.allowed_repositories)
        .map_err(|e| CliError::Failed(format!("the stable image {stable}: {e}")))?;
    let by = args.submit.by();
    let why = args
        .note
        .as_deref()
        .map(|n| format!(": {n}"))
        .unwrap_or_default();
    let note = format!(
        "{ABORT_NOTE_PREFIX}canary of {} stopped at step {} of {} ({}%), back to {stable}{why}",
        canary.image, canary.step, canary.steps, canary.weight
    );
    // Pinned like a rollback: what comes back is what serves now, even if the tag moved.
    let desired = Desired::new(image, Some(&note), Some(&by), false)
        .pinned(super::rollback::recorded_digest(&cfg, &stable));
    eprintln!(
        "abort: the canary of {} stops; every request goes back to {stable} on {}",
        canary.image, canary.stable_color
    );
    submit(cfg, &desired, args.submit.no_wait, args.submit.timeout).await
}

/// The status and the canary step, when one runs now.
fn running(cfg: &Config) -> Result<(Status, CanaryProgress), CliError> {
    let none = || CliError::Failed("no canary is running".to_string());
    // Nobody holds the lock: nothing runs, whatever status.json says (its writer may have
    // been killed).
    match lock::try_acquire(&cfg.state_dir, "fieldtrack promote") {
        Ok(_lock) => return Err(none()),
        Err(LockError::Held { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let status = Status::load(&cfg.state_dir.join(STATUS_FILE))
        .map_err(|e| CliError::Failed(e.to_string()))?
        .ok_or_else(none)?;
    if status.phase != Phase::Progressing || status.step != Some(Step::Canary) {
        return Err(none());
    }
    let canary = status.canary.clone().ok_or_else(none)?;
    Ok((status, canary))
}
