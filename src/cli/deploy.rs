//! `fieldtrack deploy IMAGE`: validate, write the desired file atomically, then wait for that
//! generation to converge, reconciling in-process when no daemon does.

use std::time::{Duration, Instant};

use clap::Args;

use super::progress::{End, Follower, Shown, TICK};
use super::reconcile::{converge, take_lock};
use super::view::{Daemon, Door, View};
use super::CliError;
use crate::config::{Config, MAX_DURATION};
use crate::desired::{
    check_text, Desired, DesiredErrorKind, ImageRef, BY_MAX_CHARS, NOTE_MAX_CHARS,
};
use crate::reconcile::Trigger;
use crate::state::lock::{self, LockError, ReconcileLock};
use crate::state::status::{Phase, Step};

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A tag of the configured repository, or a full reference (repo:tag, repo@sha256:...).
    pub image: String,
    /// Free text kept in the audit log.
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub submit: Submission,
}

/// Who writes the desired file, and how long the command waits for it: the flags of every
/// command that writes one (`deploy`, `rollback`, `abort`).
#[derive(Debug, Args)]
pub struct Submission {
    /// Who asks (default: $USER, or "ci" when $CI is set).
    #[arg(long)]
    pub by: Option<String>,
    /// Write the desired file and return without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this long (e.g. "10m"); the deployment itself goes on.
    /// At most 7 days.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub timeout: Option<Duration>,
}

impl Submission {
    /// `--by`, else $USER (or "ci" under CI).
    pub fn by(&self) -> String {
        self.by.clone().unwrap_or_else(default_by)
    }
}

pub async fn run(cfg: Config, args: DeployArgs) -> Result<u8, CliError> {
    let image = ImageRef::parse(&args.image, &cfg.repository, &cfg.allowed_repositories)
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    if let Some(note) = &args.note {
        check_text(note, NOTE_MAX_CHARS).map_err(|e| CliError::Invalid(format!("--note: {e}")))?;
    }
    let by = args.submit.by();
    check_text(&by, BY_MAX_CHARS).map_err(|e| CliError::Invalid(format!("--by: {e}")))?;
    let desired = Desired::new(image, args.note.as_deref(), Some(&by), false);
    submit(cfg, &desired, args.submit.no_wait, args.submit.timeout).await
}

/// Who converges what this command writes, decided before anything is written: a command
/// that could not follow its result must not leave a desired file behind it.
enum Route {
    /// Nobody holds the lock: this process converges, under the lock it now holds.
    InProcess(ReconcileLock),
    /// A daemon converges; this process follows what it writes through `door`.
    Follow { door: Door, daemon: String },
    /// Another command converges something now: this one waits for the lock, then
    /// converges (unless superseded meanwhile).
    AfterLock,
}

/// Writes `desired`, then (unless `no_wait`) waits for its generation: reconciling in-process
/// when nobody holds the lock, following the daemon's status when it does. A member of the
/// deploy group, who may not enter `state_dir`, follows what the daemon publishes, and is
/// refused (exit 2, nothing written) when no daemon runs or nothing is published.
pub(crate) async fn submit(
    cfg: Config,
    desired: &Desired,
    no_wait: bool,
    timeout: Option<Duration>,
) -> Result<u8, CliError> {
    let write = |cfg: &Config| {
        write_desired(cfg, desired)?;
        eprintln!(
            "desired: {} (generation {}) written to {}",
            desired.image,
            desired.generation,
            cfg.desired_file.display()
        );
        Ok(())
    };
    submit_with(cfg, desired, no_wait, timeout, Wait::Outcome, write).await
}

/// What a command that submitted something waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The generation's outcome, or its preview being up (`rollout.promotion = "manual"`).
    Outcome,
    /// The generation's outcome past its preview: `fieldtrack promote`.
    PastPreview,
}

/// As [`submit`], with `write` in place of the desired file's write: decided first who
/// converges, then `write`, then (unless `no_wait`) the wait for `desired`'s generation.
pub(crate) async fn submit_with(
    cfg: Config,
    desired: &Desired,
    no_wait: bool,
    timeout: Option<Duration>,
    wait: Wait,
    write: impl FnOnce(&Config) -> Result<(), CliError>,
) -> Result<u8, CliError> {
    let route = route(&cfg)?;
    write(&cfg)?;
    if no_wait {
        return Ok(0);
    }

    let timeout = timeout.unwrap_or_else(|| default_timeout(&cfg));
    match route {
        Route::InProcess(_lock) => converge_unless_superseded(cfg, desired).await,
        Route::Follow { door, daemon } => {
            eprintln!(
                "the daemon ({}) converges it; following its progress",
                super::terminal::printable(&daemon)
            );
            follow(&cfg, desired, timeout, door, wait).await
        }
        Route::AfterLock => {
            let _lock = take_lock(&cfg, "fieldtrack deploy", timeout).await?;
            converge_unless_superseded(cfg, desired).await
        }
    }
}

fn route(cfg: &Config) -> Result<Route, CliError> {
    match lock::try_acquire(&cfg.state_dir, "fieldtrack deploy") {
        Ok(lock) => Ok(Route::InProcess(lock)),
        Err(LockError::Held { holder }) if holder.starts_with("daemon") => Ok(Route::Follow {
            door: Door::Private,
            daemon: holder,
        }),
        Err(LockError::Held { .. }) => Ok(Route::AfterLock),
        Err(e) if denied(&e) => {
            // A member of the deploy group: it acts only through the desired file, and
            // learns the result from what the daemon publishes.
            let view = View::read(cfg)?;
            match view.daemon {
                Daemon::Running { pid } => Ok(Route::Follow {
                    door: view.door,
                    daemon: pid.map_or("daemon".to_string(), |p| format!("daemon pid {p}")),
                }),
                _ => Err(CliError::Invalid(format!(
                    "no fieldtrack daemon is running, so nothing would converge {} and this \
                     command could not follow it: nothing was written. Ask root to start it \
                     (`systemctl start fieldtrack`, or `fieldtrack daemon`)",
                    cfg.desired_file.display()
                ))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The lock could not be taken because this user may not enter `state_dir`.
fn denied(e: &LockError) -> bool {
    matches!(e, LockError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Under the lock: a desired state written since ours is its writer's to converge. Acting
/// on ours would leave production on something the desired file no longer names (with
/// concurrent deploys, whoever took the lock last would win, not whoever wrote last).
async fn converge_unless_superseded(cfg: Config, desired: &Desired) -> Result<u8, CliError> {
    if superseded(&cfg, desired) {
        return Err(superseded_error(desired));
    }
    converge(cfg, desired, Trigger::Deploy).await
}

fn superseded_error(desired: &Desired) -> CliError {
    CliError::Failed(format!(
        "{} (generation {}) was superseded: the desired file now says something else",
        desired.image, desired.generation
    ))
}

/// Writes the desired file atomically, refusing an unsafe one in place.
pub(crate) fn write_desired(cfg: &Config, desired: &Desired) -> Result<(), CliError> {
    desired
        .write(&cfg.desired_file)
        .map_err(|e| match e.kind() {
            DesiredErrorKind::Unsafe => CliError::Desired(e),
            _ => CliError::Failed(e.to_string()),
        })
}

pub(crate) fn default_by() -> String {
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        return "ci".to_string();
    }
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// Long enough for a pull, the whole health gate and the drain. Each term is at most a
/// week (the config's bound), so the sum cannot overflow; saturating all the same.
fn default_timeout(cfg: &Config) -> Duration {
    // Canary steps last their pauses (and a manual one until promoted: a day, then the
    // command stops waiting while the canary goes on).
    let canary = cfg
        .canary
        .iter()
        .flat_map(|c| &c.steps)
        .fold(Duration::ZERO, |sum, step| match step.pause {
            crate::config::Pause::For(d) => sum.saturating_add(d),
            crate::config::Pause::Manual => sum.saturating_add(Duration::from_secs(86_400)),
        });
    cfg.health
        .deadline()
        .saturating_add(canary)
        .saturating_add(cfg.rollout.drain)
        .saturating_add(cfg.container.stop_timeout)
        .saturating_add(Duration::from_secs(300))
}

/// How long a follower waits for a daemon that stopped to come back (systemd restarts a
/// crashed one within seconds) before it says so.
const DAEMON_GONE: Duration = Duration::from_secs(30);

/// Follows the status (through `door`) until our generation converged (0) or failed (1),
/// showing its progress as a pass in this process would.
async fn follow(
    cfg: &Config,
    desired: &Desired,
    timeout: Duration,
    door: Door,
    wait: Wait,
) -> Result<u8, CliError> {
    let start = Instant::now();
    // `timeout` is at most a few weeks (flag or config bound): no overflow in practice, and
    // a far deadline is what an unrepresentable one would mean anyway.
    let deadline = start.checked_add(timeout).unwrap_or(start + MAX_DURATION);
    let shown = Shown::stderr();
    let mut follower = Follower::default();
    let mut seen_running = Instant::now();
    while Instant::now() < deadline {
        if let Some(status) = View::status_now(cfg, door) {
            if status.generation.as_deref() != Some(desired.generation.as_str())
                && superseded(cfg, desired)
            {
                shown.abandon();
                return Err(rolled_back(cfg, desired).unwrap_or_else(|| superseded_error(desired)));
            }
            if status.generation.as_deref() == Some(desired.generation.as_str()) {
                for event in follower.events(&status) {
                    shown.event(&event);
                }
                match status.phase {
                    Phase::Converged => {
                        shown.end(&End::Converged {
                            image: desired.image.to_string(),
                            live: status.live,
                        });
                        return Ok(0);
                    }
                    Phase::Failed | Phase::Invalid => {
                        shown.end(&End::Failed);
                        // An auto-rollback rewrites the desired file before the failure is
                        // published: say so, whether or not the next pass began yet.
                        return Err(rolled_back(cfg, desired).unwrap_or_else(|| {
                            CliError::Failed(status.message.unwrap_or_else(|| {
                                format!("deployment of {} failed", desired.image)
                            }))
                        }));
                    }
                    Phase::Paused => {
                        shown.end(&End::Paused);
                        return Ok(0);
                    }
                    Phase::Progressing => {
                        // A preview is up: what deploy waits for with promotion manual.
                        if let Some(preview) = status
                            .preview
                            .filter(|_| status.step == Some(Step::Preview) && wait == Wait::Outcome)
                        {
                            shown.end(&End::Preview(preview));
                            return Ok(0);
                        }
                    }
                }
            }
        }
        if View::daemon_runs_now(cfg, door) {
            seen_running = Instant::now();
        } else if seen_running.elapsed() > DAEMON_GONE {
            shown.abandon();
            return Err(CliError::Failed(format!(
                "the daemon stopped before {} (generation {}) converged, and none has started \
                 since; the desired file still names it, so it converges when a daemon runs \
                 again (`systemctl start fieldtrack`)",
                desired.image, desired.generation
            )));
        }
        tokio::time::sleep(TICK).await;
        shown.tick();
    }
    shown.abandon();
    Err(CliError::Failed(format!(
        "gave up waiting after {} for {} to converge; it may still be in progress (see fieldtrack status)",
        humantime::format_duration(timeout),
        desired.image
    )))
}

/// The desired file no longer holds our generation (someone wrote a newer one).
/// The daemon's auto-rollback of `desired` (the desired file rewritten by fieldtrack after
/// the image failed past the health gate: in the drain, or at a canary step), as the error
/// to report: the note says why.
fn rolled_back(cfg: &Config, desired: &Desired) -> Option<CliError> {
    let now = Desired::load(&cfg.desired_file, cfg).ok()?;
    let note = now.note.as_deref()?;
    let ours = format!(
        "{}{} failed after the switch: ",
        crate::state::audit::AUTO_ROLLBACK_NOTE_PREFIX,
        desired.image.as_written()
    );
    let why = note.strip_prefix(&ours)?;
    Some(CliError::Failed(format!(
        "{} failed after the switch and the desired file was rolled back to {}: {why}",
        desired.image.as_written(),
        now.image.as_written()
    )))
}

fn superseded(cfg: &Config, desired: &Desired) -> bool {
    match Desired::load(&cfg.desired_file, cfg) {
        Ok(now) => now.generation != desired.generation,
        // Unreadable or half-written right now: not proof of anything yet.
        Err(_) => false,
    }
}
