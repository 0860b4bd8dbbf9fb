//! `fieldtrack promote` and `fieldtrack abort`: an operator's say over a running canary.
//!
//! Both act only while a canary step runs: someone holds the reconcile lock (the daemon or a
//! `deploy`) and the status shows the step. `promote` leaves a request beside the desired
//! file, naming the generation and the step, that the step loop takes within a second. `abort` is a rollback to the stable image: the
//! desired file is rewritten, and the running canary, seeing a newer generation, sends every
//! request back to the stable color and removes the candidate.

use clap::Args;

use super::deploy::{submit, Submission};
use super::view::{self, Daemon, View};
use super::CliError;
use crate::config::Config;
use crate::desired::promote::{request_path, PromoteRequest};
use crate::desired::{Desired, ImageRef};
use crate::state::audit::ABORT_NOTE_PREFIX;
use crate::state::status::{CanaryProgress, Phase, Status, Step};

#[derive(Debug, Args)]
pub struct AbortArgs {
    /// Why, kept in the audit log with the desired state.
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub submit: Submission,
}

/// Ends the running step now: the next step begins, or after the last one the full switch.
/// The request names the generation and the step seen running; the step loop takes it
/// within a second, and drops it when that step has ended meanwhile.
pub async fn promote(cfg: &Config) -> Result<u8, CliError> {
    let (status, canary) = running(cfg)?;
    let generation = status.generation.unwrap_or_default();
    let file = request_path(&cfg.desired_file);
    let request = PromoteRequest {
        generation: generation.clone(),
        step: canary.step,
    };
    let sent = std::time::SystemTime::now();
    request.write(&file).map_err(|e| {
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
    // The request is taken (or dropped) at the loop's next tick.
    let deadline = std::time::Instant::now() + PROMOTE_TAKEN;
    while file.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if file.exists() {
        return Err(CliError::Failed(format!(
            "the canary did not take the promote request {} within {}s; see fieldtrack status",
            file.display(),
            PROMOTE_TAKEN.as_secs()
        )));
    }
    // A step that began (whole seconds) before the request was sent ended by itself: the
    // loop dropped the request, which was not for it.
    let now = View::status_now(cfg, view::door(cfg)).and_then(|s| s.canary);
    if let Some(now) = now.filter(|c| c.step > canary.step) {
        let began = humantime::parse_rfc3339(&now.step_started).ok();
        if began.is_some_and(|b| b + std::time::Duration::from_secs(1) <= sent) {
            eprintln!(
                "note: step {} had already ended by itself; the request was dropped and step {} of {} goes on",
                canary.step, now.step, now.steps
            );
        }
    }
    Ok(0)
}

/// How long `promote` waits for the step loop to take its request.
const PROMOTE_TAKEN: std::time::Duration = std::time::Duration::from_secs(15);

/// Back to the stable image: the desired file says so (as a rollback does), and the
/// canary running ends on seeing it.
pub async fn abort(cfg: Config, args: AbortArgs) -> Result<u8, CliError> {
    let view = View::read(&cfg)?;
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
    let desired =
        Desired::new(image, Some(&note), Some(&by), false).pinned(view.recorded_digest(&stable));
    eprintln!(
        "abort: the canary of {} stops; every request goes back to {stable} on {}",
        canary.image, canary.stable_color
    );
    submit(cfg, &desired, args.submit.no_wait, args.submit.timeout).await
}

/// The status and the canary step, when one runs now.
fn running(cfg: &Config) -> Result<(Status, CanaryProgress), CliError> {
    let none = || CliError::Failed("no canary is running".to_string());
    let view = View::read(cfg)?;
    if view.daemon == Daemon::NotRunning {
        return Err(none());
    }
    let status = view.status.ok_or_else(none)?;
    if status.phase != Phase::Progressing || status.step != Some(Step::Canary) {
        return Err(none());
    }
    let canary = status.canary.clone().ok_or_else(none)?;
    Ok((status, canary))
}
