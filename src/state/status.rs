//! `status.json` in `state_dir`: what the last reconcile saw and did, for `status`, `deploy`
//! (which waits on it) and operators.
//!
//! It is a report, not a source of truth: a restarted daemon observes the real world afresh,
//! and what a pass must know of the passes before it (the failed generation, a switch mark,
//! the warm window, a retry asked by hand) it reads from the journal
//! ([`crate::state::journal`]), which the same writer writes beside this file. The report
//! shows those fields too, for operators; nothing reads them back from here.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{parent_dir, write_atomic_with, WriteOptions};
use super::file::{prepare_state_dir, read_capped};
use super::now_rfc3339;
use crate::model::{Color, Replica};

/// Mode of the status file: it holds container log tails, for root and the admin group.
const MODE: u32 = 0o640;

/// Far more than any status fieldtrack writes (a few log tails of a few KiB).
const READ_CAP: u64 = 1 << 20;

/// What can go wrong with the status file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The status file exists but could not be read.
    #[error("failed to read status file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The status file is not valid status JSON.
    #[error("status file {} is corrupt: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The status could not be turned into JSON.
    #[error("failed to serialize status for {}: {source}", path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The status file could not be written; the previous one is still in place.
    #[error("failed to write status file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The journal written before the status (see [`crate::state::journal`]) could not be
    /// written; the previous journal and status are still in place.
    #[error("failed to write the journal {}: {source}", path.display())]
    WriteJournal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the reconciler stands with the desired generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The real world matches the desired file.
    Converged,
    /// An attempt is under way; `step` says where.
    Progressing,
    /// The last attempt at this generation failed; it waits for the desired file to change.
    Failed,
    /// The desired file says `paused = true`: observe and report, change nothing.
    Paused,
    /// The desired file cannot be acted on; `message` says why.
    Invalid,
}

impl Phase {
    /// The name used in `status.json` and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Converged => "converged",
            Phase::Progressing => "progressing",
            Phase::Failed => "failed",
            Phase::Paused => "paused",
            Phase::Invalid => "invalid",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The step of an attempt in progress, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Pulling the desired image.
    Pulling,
    /// Starting the candidate container in the idle color.
    Starting,
    /// Waiting for the candidate to pass the health gate.
    Health,
    /// Pointing nginx at the candidate and reloading it.
    Switching,
    /// The old color still runs while the new one keeps being probed.
    Draining,
    /// Stopping and removing the old color.
    Cleanup,
    /// Canary steps: nginx shares traffic by weight between the stable color and the
    /// candidate, judged from the access log (see [`CanaryProgress`]).
    Canary,
    /// A preview (`rollout.promotion = "manual"`): the candidate passed its gate and is
    /// reachable through the `_preview` upstream block only, until `fieldtrack promote`.
    Preview,
}

impl Step {
    /// The name used in `status.json` and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pulling => "pulling",
            Step::Starting => "starting",
            Step::Health => "health",
            Step::Switching => "switching",
            Step::Draining => "draining",
            Step::Cleanup => "cleanup",
            Step::Canary => "canary",
            Step::Preview => "preview",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The color nginx sends traffic to, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// `blue` or `green`.
    pub color: String,
    /// The image the live container runs.
    pub image: String,
    /// The live container's name.
    pub container: String,
    /// The port on 127.0.0.1 the upstream file points at.
    pub port: u16,
}

/// Progress of the health gate while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthProgress {
    /// Whether the candidate has answered with a code of `health.expect` (any 2xx by default).
    pub passed: bool,
    /// Probes sent so far.
    pub probes: u32,
    /// How long the candidate has in all to become healthy.
    pub deadline_secs: u64,
}

/// A switch of the upstream file that nginx has not been seen to settle on: written before the
/// file changes, cleared once nginx reloaded the file (or the previous file was put back and
/// reloaded). Still there at the next pass, it says a process died inside a switch (or left
/// nginx unsettled): nginx may run the file from before (`from`) or the new one (`to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchMark {
    /// The ports the upstream file named before the switch.
    pub from: Vec<u16>,
    /// The port switched to.
    pub to: u16,
    /// A canary step: the file shares traffic by weight between the stable color (`from`,
    /// written first) and the canary (`to`), on purpose. Kept for the whole canary: nginx
    /// runs both until the canary is promoted (a switch to `to` alone) or aborted (to
    /// `from` alone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canary: bool,
}

/// Where a canary stands, recorded before nginx is switched to a step's weights and read by
/// every pass: the plan decides each pass's canary action from it ([`crate::plan::canary`]),
/// so that a process killed inside a step resumes that step, with the time already spent in
/// it, and never goes back one. Written by the pass that enters a step, a promotion or an
/// abort; dropped when the canary ends (or a newer generation is desired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryMark {
    /// The desired generation on trial, and its image as written in the desired file.
    pub generation: String,
    pub image: String,
    /// The canary's color, and the stable (live) color that keeps the rest of the traffic.
    pub color: Color,
    pub stable: Color,
    /// The step nginx is switched to (1-based): its weights are the file's, or, while the
    /// switch to it was not seen to settle, those of the step before. Past the last step:
    /// every request goes to the canary (the promotion is under way).
    pub step: usize,
    /// RFC 3339 UTC: when the step began. A step lasts its pause from here, whatever
    /// restarts came between.
    pub step_started: String,
    /// RFC 3339 UTC: when the canary began (step 1): the deployment's duration runs from here.
    pub started: String,
    /// Set once the canary failed, with why: nginx goes back to the stable color alone and
    /// the candidate is removed, by this pass or, if it dies first, the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborting: Option<String>,
}

impl CanaryMark {
    /// When the step began; None when the record is unreadable (it is then judged begun now).
    pub fn step_started_time(&self) -> Option<std::time::SystemTime> {
        humantime::parse_rfc3339(&self.step_started).ok()
    }
}

/// Where a preview stands (`rollout.promotion = "manual"`), recorded before nginx's
/// `_preview` block is pointed at the candidate and read by every pass: the plan decides
/// from it ([`crate::plan::preview`]), so a restarted process finds the preview where it was
/// and puts the upstream file back on its shape if it is not. Dropped when the preview ends
/// (promoted, failed) or a newer generation is desired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewMark {
    /// The desired generation previewed, and its image as written in the desired file.
    pub generation: String,
    pub image: String,
    /// The candidate's color, and the live (stable) color production stays on.
    pub color: Color,
    pub stable: Color,
    /// RFC 3339 UTC: when the candidate passed its gate and the preview opened.
    pub since: String,
    /// Set once `fieldtrack promote` was taken: the switch is under way, a process that dies
    /// inside it leaves the next pass to finish it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoting: bool,
    /// Set once the candidate failed, with why: the preview block goes back to the live
    /// color and the candidate is removed, by this pass or, if it dies first, the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
}

impl PreviewMark {
    /// When the preview opened; None when the record is unreadable.
    pub fn since_time(&self) -> Option<std::time::SystemTime> {
        humantime::parse_rfc3339(&self.since).ok()
    }
}

/// A preview awaiting promotion, as status.json (and the deploy group's copy) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewProgress {
    /// The image previewed, as written in the desired file.
    pub image: String,
    /// The candidate's color and container.
    pub color: String,
    pub container: String,
    /// The live color production stays on, and its image as the history writes it: what
    /// `fieldtrack abort` goes back to.
    pub stable_color: String,
    pub stable_image: Option<String>,
    /// RFC 3339 UTC: when the preview opened.
    pub since: String,
    /// The upstream block it is reachable through: `{upstream_name}_preview`.
    pub upstream: String,
    /// Health probes of the candidate failed in a row so far (3 end the preview).
    #[serde(default)]
    pub probe_failures: u32,
}

/// The previous color kept running out of nginx after a deployment (`rollout.keep_previous`),
/// so that a rollback to it is a pure nginx switch. Kept here, not in a container label, as
/// it is written after the container started and must survive the process: the next pass
/// keeps that container (the same `id`, still running, not served) until `until`, then
/// removes it. Without this record (status.json lost, or written by an older version) the
/// container is removed at the next pass like any other that is not live: the safe side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warm {
    /// `blue` or `green`.
    pub color: Color,
    /// The image it runs, as the history writes it.
    pub image: String,
    /// Its name (the service on Swarm).
    pub container: String,
    /// The engine's id of that container (or service): a new one of the same name is not it.
    pub id: String,
    /// RFC 3339 UTC: when the window ends.
    pub until: String,
}

impl Warm {
    /// When the window ends; None when `until` is not RFC 3339 (then no window runs).
    pub fn until_time(&self) -> Option<std::time::SystemTime> {
        humantime::parse_rfc3339(&self.until).ok()
    }
}

/// A canary step in progress: who gets what share, and what the step's window says so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryProgress {
    /// The image on trial, as written in the desired file.
    pub image: String,
    /// The candidate's color and container.
    pub color: String,
    pub container: String,
    /// The color that keeps the rest of the traffic (the live one), and its image as the
    /// history writes it: what `fieldtrack abort` goes back to.
    pub stable_color: String,
    pub stable_image: Option<String>,
    /// 1-based, of `steps`.
    pub step: usize,
    pub steps: usize,
    /// The canary's share of the traffic, percent.
    pub weight: u32,
    /// RFC 3339 UTC: when nginx was switched to this step's weights.
    pub step_started: String,
    /// RFC 3339 UTC: the step's pause ends (it passes then if enough requests were judged);
    /// null for a manual step, which waits for `fieldtrack promote`.
    pub step_ends: Option<String>,
    /// The step's window so far, from nginx's access log.
    pub stable: WindowFigures,
    pub canary: WindowFigures,
    /// The judgement of the window so far, in plain words.
    pub judgement: String,
}

/// One side's figures in a canary step's window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowFigures {
    /// Requests nginx answered with this side's response.
    pub requests: u64,
    /// Of those, answered 5xx or not at all.
    pub errors: u64,
    /// Tries at this side that failed, nginx's retries elsewhere included.
    pub failed_tries: u64,
    /// Request time quantiles, milliseconds (nginx's resolution); null without requests.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
}

/// The replicas of one color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorReplicas {
    pub color: String,
    pub service: String,
    pub replicas: Vec<Replica>,
}

/// The content of `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The image as written in the desired file.
    pub desired: Option<String>,
    /// Changes whenever the desired file's content changes.
    pub generation: Option<String>,
    /// Where the reconciler stands with `generation`.
    pub phase: Phase,
    /// Set while `phase` is `progressing`.
    pub step: Option<Step>,
    /// What nginx sends traffic to, or null when nothing is live.
    pub live: Option<Live>,
    /// The last error, in plain words.
    pub message: Option<String>,
    /// RFC 3339 UTC; set by [`Status::save`].
    #[serde(default)]
    pub updated_at: String,
    /// RFC 3339 UTC: when `phase` last changed; kept by [`Status::save`] while it does not.
    #[serde(default)]
    pub since: String,
    /// The generation whose attempt failed; not retried until the desired file changes.
    pub failed_generation: Option<String>,
    /// An operator asked to retry this generation by hand (`fieldtrack reconcile`): the
    /// next pass attempts it though it failed before. Cleared once attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_asked: Option<String>,
    /// Registry digest of the live image when known.
    pub digest: Option<String>,
    /// Progress of the health gate while it runs.
    pub health: Option<HealthProgress>,
    /// The process that wrote the file; set by [`Status::save`].
    pub pid: Option<u32>,
    /// A switch nginx has not been seen to settle on (see [`SwitchMark`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switching: Option<SwitchMark>,
    /// On Docker Swarm: each color's tasks per node, as observed by the last pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ColorReplicas>,
    /// The previous color kept running out of nginx, and until when (see [`Warm`]); null
    /// when none is.
    #[serde(default)]
    pub warm: Option<Warm>,
    /// The canary step running now, with its window's figures; null when none runs.
    #[serde(default)]
    pub canary: Option<CanaryProgress>,
    /// Where the canary stands (see [`CanaryMark`]); kept in the journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_mark: Option<CanaryMark>,
    /// The preview awaiting promotion; null when none runs.
    #[serde(default)]
    pub preview: Option<PreviewProgress>,
    /// Where the preview stands (see [`PreviewMark`]); kept in the journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_mark: Option<PreviewMark>,
}

impl Status {
    /// A status in `phase` with nothing else known yet.
    pub fn new(phase: Phase) -> Status {
        Status {
            desired: None,
            generation: None,
            phase,
            step: None,
            live: None,
            message: None,
            updated_at: String::new(),
            since: String::new(),
            failed_generation: None,
            retry_asked: None,
            digest: None,
            health: None,
            pid: None,
            switching: None,
            replicas: Vec::new(),
            warm: None,
            canary: None,
            canary_mark: None,
            preview: None,
            preview_mark: None,
        }
    }

    /// Reads the status file; `None` when there is none yet. A symlink, a file that is not
    /// regular, or one larger than 1 MiB is an error.
    pub fn load(path: &Path) -> Result<Option<Status>, StatusError> {
        let text = match read_capped(path, READ_CAP) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(StatusError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| StatusError::Parse {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Marks the status file `invalid` with `message`, keeping what else it says (what is
    /// live, the last generation): the desired file is unusable, nothing was changed.
    pub fn mark_invalid(path: &Path, message: &str) -> Result<(), StatusError> {
        let mut status = Status::load(path)
            .ok()
            .flatten()
            .unwrap_or_else(|| Status::new(Phase::Invalid));
        status.phase = Phase::Invalid;
        status.step = None;
        status.message = Some(message.to_string());
        status.save(path)
    }

    /// Writes the status atomically as pretty JSON (0640, never through a symlink, in a
    /// state folder checked by [`prepare_state_dir`]), stamping `updated_at` and `pid`.
    ///
    /// `since` is taken from the file on disk while the phase stays the same there, so a
    /// status built afresh on every pass still says how long the phase has lasted; it becomes
    /// now when the phase changed, or when neither the file nor `self` has one.
    pub fn save(&mut self, path: &Path) -> Result<(), StatusError> {
        let now = now_rfc3339();
        // An unreadable or corrupt previous file only means the phase is taken as changed;
        // the write below replaces it.
        match Status::load(path).ok().flatten() {
            Some(previous) if previous.phase == self.phase && !previous.since.is_empty() => {
                self.since = previous.since;
            }
            Some(_) => self.since = now.clone(),
            None if self.since.is_empty() => self.since = now.clone(),
            None => {}
        }
        self.updated_at = now;
        self.pid = Some(std::process::id());

        let mut json =
            serde_json::to_string_pretty(self).map_err(|source| StatusError::Serialize {
                path: path.to_path_buf(),
                source,
            })?;
        json.push('\n');
        prepare_state_dir(parent_dir(path))
            .and_then(|()| write_atomic_with(path, json.as_bytes(), WriteOptions::state(MODE)))
            .map_err(|source| StatusError::Write {
                path: path.to_path_buf(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{link_to_victim, mkfifo, within_5s, VICTIM};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn converged() -> Status {
        Status {
            desired: Some("a4f91c2".to_string()),
            generation: Some("g1".to_string()),
            live: Some(Live {
                color: "green".to_string(),
                image: "ghcr.io/fieldtrack-tech/api:a4f91c2".to_string(),
                container: "api-green".to_string(),
                port: 3002,
            }),
            digest: Some("sha256:0123".to_string()),
            ..Status::new(Phase::Converged)
        }
    }

    #[test]
    fn load_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Status::load(&dir.path().join("status.json")).unwrap(), None);
    }

    #[test]
    fn load_corrupt_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        fs::write(&path, "{\"phase\": \"conv").unwrap();
        let err = Status::load(&path).unwrap_err();
        assert!(matches!(err, StatusError::Parse { .. }));
        assert!(err.to_string().contains("status.json"), "{err}");
    }

    #[test]
    fn save_then_load_round_trips_and_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".fieldtrack/status.json");
        let mut status = converged();

        status.save(&path).unwrap();

        assert!(!status.updated_at.is_empty());
        assert_eq!(status.since, status.updated_at);
        assert_eq!(status.pid, Some(std::process::id()));
        assert_eq!(Status::load(&path).unwrap(), Some(status));
    }

    #[test]
    fn json_shape_is_snake_case_lowercase_with_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut status = Status {
            step: Some(Step::Health),
            health: Some(HealthProgress {
                passed: false,
                probes: 3,
                deadline_secs: 60,
            }),
            ..Status::new(Phase::Progressing)
        };
        status.save(&path).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"), "{text:?}");
        assert!(text.contains("\n  \"phase\""), "not pretty: {text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["phase"], "progressing");
        assert_eq!(value["step"], "health");
        assert_eq!(value["health"]["probes"], 3);
        assert_eq!(value["health"]["deadline_secs"], 60);
        for key in [
            "desired",
            "generation",
            "live",
            "message",
            "failed_generation",
            "digest",
            "warm",
        ] {
            assert!(value[key].is_null(), "{key} should be null: {text}");
            assert!(
                value.as_object().unwrap().contains_key(key),
                "{key} missing"
            );
        }
    }

    #[test]
    fn live_serializes_its_four_fields() {
        let value = serde_json::to_value(converged()).unwrap();
        assert_eq!(
            value["live"],
            serde_json::json!({
                "color": "green",
                "image": "ghcr.io/fieldtrack-tech/api:a4f91c2",
                "container": "api-green",
                "port": 3002,
            })
        );
    }

    #[test]
    fn a_warm_previous_color_round_trips_and_its_end_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let warm = Warm {
            color: crate::model::Color::Blue,
            image: "v2".into(),
            container: "api-blue".into(),
            id: "0123abcd".into(),
            until: "2026-11-26T14:05:00Z".into(),
        };
        let mut status = Status {
            warm: Some(warm.clone()),
            ..converged()
        };
        status.save(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["warm"]["until"], "2026-11-26T14:05:00Z");
        assert_eq!(value["warm"]["id"], "0123abcd");
        assert_eq!(
            Status::load(&path).unwrap().unwrap().warm,
            Some(warm.clone())
        );
        assert_eq!(
            warm.until_time(),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_701_900))
        );
        let unreadable = Warm {
            until: "at five".into(),
            ..warm
        };
        assert_eq!(unreadable.until_time(), None);
    }

    #[test]
    fn every_phase_and_step_has_its_lowercase_name() {
        for phase in [
            Phase::Converged,
            Phase::Progressing,
            Phase::Failed,
            Phase::Paused,
            Phase::Invalid,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
        for step in [
            Step::Pulling,
            Step::Starting,
            Step::Health,
            Step::Switching,
            Step::Draining,
            Step::Cleanup,
        ] {
            assert_eq!(serde_json::to_value(step).unwrap(), step.as_str());
        }
    }

    #[test]
    fn since_is_kept_while_the_phase_stays_and_reset_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let earlier = "2020-01-01T00:00:00Z".to_string();

        let mut first = Status {
            since: earlier.clone(),
            ..converged()
        };
        first.save(&path).unwrap();
        assert_eq!(first.since, earlier, "no file yet: a given since is kept");

        // A status built afresh with the same phase keeps the file's since.
        let mut again = converged();
        again.save(&path).unwrap();
        assert_eq!(again.since, earlier);
        assert_ne!(again.updated_at, earlier);

        // A phase change starts a new since, even when the caller carried an old one.
        let mut progressing = Status {
            step: Some(Step::Pulling),
            since: earlier.clone(),
            ..Status::new(Phase::Progressing)
        };
        progressing.save(&path).unwrap();
        assert_ne!(progressing.since, earlier);
        assert_eq!(progressing.since, progressing.updated_at);
    }

    #[test]
    fn save_over_a_corrupt_file_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        fs::write(&path, "garbage").unwrap();
        let mut status = converged();
        status.save(&path).unwrap();
        assert_eq!(Status::load(&path).unwrap(), Some(status));
    }

    #[test]
    fn load_accepts_a_file_without_optional_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        fs::write(&path, "{\"phase\": \"paused\"}\n").unwrap();
        let status = Status::load(&path).unwrap().unwrap();
        assert_eq!(status, Status::new(Phase::Paused));
    }

    #[test]
    fn save_through_a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let victim = dir.path().join("victim");
        link_to_victim(&path, &victim);

        let err = converged().save(&path).unwrap_err();

        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM);
        assert!(fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn load_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let victim = dir.path().join("victim.json");
        fs::write(&victim, "{\"phase\": \"paused\"}\n").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();

        let err = Status::load(&path).unwrap_err();

        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn load_of_a_link_to_dev_zero_ends_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();

        let result = within_5s("loading a status.json linked to /dev/zero", move || {
            Status::load(&path).map_err(|e| e.to_string())
        });

        assert!(result.is_err(), "{result:?}");
    }

    #[test]
    fn load_of_a_fifo_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        mkfifo(&path);

        let result = within_5s("loading a status.json that is a FIFO", move || {
            Status::load(&path).map_err(|e| e.to_string())
        });

        let err = result.unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn load_of_an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut json = String::from("{\"phase\": \"paused\", \"message\": \"");
        json.push_str(&"x".repeat(2 << 20));
        json.push_str("\"}\n");
        fs::write(&path, json).unwrap();

        let err = Status::load(&path).map(|_| ()).unwrap_err();

        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn saved_status_is_0640_in_a_0700_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join(".fieldtrack");
        let path = state_dir.join("status.json");

        converged().save(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o640);
        assert_eq!(mode(&state_dir), 0o700);

        // An older, looser file is tightened on the next write.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        converged().save(&path).unwrap();
        assert_eq!(mode(&path), 0o640);
    }
}
