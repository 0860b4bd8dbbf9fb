//! `fieldtrack promote` and `fieldtrack abort`: an operator's say over a running canary, or
//! over a preview awaiting promotion (`rollout.promotion = "manual"`, see docs/preview.md).
//!
//! A preview's promote is the same request (its one step is 1), followed as a deployment:
//! the command waits until the generation converged (0) or failed (1). With no daemon it
//! runs the pass itself, under the reconcile lock. A preview's abort is the canary's: the
//! desired file back to the live image.
//!
//! Both act only while a canary step runs: someone holds the reconcile lock (the daemon or a
//! `deploy`) and the status shows the step. `promote` leaves a request beside the desired
//! file, naming the generation and the step, that the step loop takes within a second. `abort` is a rollback to the stable image: the
//! desired file is rewritten, and the running canary, seeing a newer generation, sends every
//! request back to the stable color and removes the candidate.

use clap::Args;

use super::deploy::{submit, submit_with, Submission, Wait};
use super::view::{self, Daemon, View};
use super::CliError;
use crate::config::Config;
use crate::desired::promote::{request_path, PromoteRequest};
use crate::desired::{Desired, ImageRef};
use crate::plan::preview::PREVIEW_STEP;
use crate::state::audit::ABORT_NOTE_PREFIX;
use crate::state::status::{CanaryProgress, Phase, PreviewProgress, Status, Step};

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
    if let Some((status, preview)) = previewing(cfg)? {
        return promote_preview(cfg.clone(), status, preview).await;
    }
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
    if let Some((_, preview)) = previewing(&cfg)? {
        return abort_preview(cfg, view, preview, args).await;
    }
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

/// The status and the preview, when one awaits promotion now (a daemon need not run: a
/// `deploy` in-process leaves its preview up when it returns).
fn previewing(cfg: &Config) -> Result<Option<(Status, PreviewProgress)>, CliError> {
    let view = View::read(cfg)?;
    let Some(status) = view.status else {
        return Ok(None);
    };
    if status.phase != Phase::Progressing || status.step != Some(Step::Preview) {
        return Ok(None);
    }
    Ok(status.preview.clone().map(|p| (status, p)))
}

/// Promotes the preview: the request (generation, step 1) written beside the desired file,
/// then the deployment followed (or run in-process when no daemon runs) to its end.
async fn promote_preview(
    cfg: Config,
    status: Status,
    preview: PreviewProgress,
) -> Result<u8, CliError> {
    let desired = Desired::load(&cfg.desired_file, &cfg).map_err(CliError::Desired)?;
    let generation = status.generation.unwrap_or_default();
    if desired.generation != generation {
        return Err(CliError::Failed(format!(
            "the desired file no longer names the previewed generation {generation}: nothing to promote"
        )));
    }
    let request = PromoteRequest {
        generation,
        step: PREVIEW_STEP,
    };
    let write = |cfg: &Config| {
        let file = request_path(&cfg.desired_file);
        request.write(&file).map_err(|e| {
            CliError::Failed(format!(
                "cannot write the promote request {}: {e}",
                file.display()
            ))
        })?;
        eprintln!(
            "promote: the preview of {} on {} goes live; production switches from {}",
            preview.image, preview.color, preview.stable_color
        );
        Ok(())
    };
    submit_with(cfg, &desired, false, None, Wait::PastPreview, write).await
}

/// Back to the live image: the desired file says so, and the preview, seeing a newer
/// generation, is removed.
async fn abort_preview(
    cfg: Config,
    view: View,
    preview: PreviewProgress,
    args: AbortArgs,
) -> Result<u8, CliError> {
    let stable = preview.stable_image.clone().ok_or_else(|| {
        CliError::Failed(
            "the preview does not say which image is live: use fieldtrack rollback".to_string(),
        )
    })?;
    let image = ImageRef::parse(&stable, &cfg.repository, &cfg.allowed_repositories)
        .map_err(|e| CliError::Failed(format!("the live image {stable}: {e}")))?;
    let by = args.submit.by();
    let why = args
        .note
        .as_deref()
        .map(|n| format!(": {n}"))
        .unwrap_or_default();
    let note = format!(
        "{ABORT_NOTE_PREFIX}preview of {} removed before its promotion, production stays on {stable}{why}",
        preview.image
    );
    let desired =
        Desired::new(image, Some(&note), Some(&by), false).pinned(view.recorded_digest(&stable));
    eprintln!(
        "abort: the preview of {} on {} is removed; production stays on {stable} ({})",
        preview.image, preview.color, preview.stable_color
    );
    submit(cfg, &desired, args.submit.no_wait, args.submit.timeout).await
}
