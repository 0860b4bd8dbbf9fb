//! Deciding what to do: a pure function from what should be ([`Desired`]) and what is
//! ([`Observed`]) to a [`Plan`]. No I/O here, so every combination is unit-tested; applying
//! the plan is the only part that touches Docker and nginx.

use std::fmt;

use crate::apply::runtime::Container;
use crate::config::{Color, Config};
use crate::desired::Desired;
use crate::observe::Observed;

/// The overall verdict of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The desired image is live, nothing else of the app runs, history records it.
    InSync,
    /// Actions are needed.
    Converge,
    /// The desired file says `paused = true`: observe and report, change nothing.
    Paused,
    /// This generation already failed; it is not retried until the desired file changes or
    /// a reconcile is asked for by hand.
    AlreadyFailed,
}

/// One step of a plan, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove a container that has no place in the desired world.
    Remove { name: String, reason: String },
    /// Start the desired image as a candidate in `color`, gate it on health, switch nginx to
    /// it, drain and remove `old`, record the history.
    Deploy {
        color: Color,
        image: String,
        reference: String,
        old: Option<String>,
    },
    /// The desired image already runs in `color`, not live (for example the previous color
    /// still draining): gate it on health and switch to it; no container is started.
    Switch {
        color: Color,
        image: String,
        reference: String,
        old: Option<String>,
    },
    /// Make nginx load the upstream file that points at the live `color` again, before
    /// anything else changes: a pass may have died between writing the file and reloading.
    Reassert { color: Color },
    /// The desired image is live but the history does not start with it (a pass died
    /// between the switch and the history write): prepend it.
    RecordHistory { image: String },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Remove { name, reason } => write!(f, "remove container {name} ({reason})"),
            Action::Deploy {
                color, image, old, ..
            } => {
                write!(f, "deploy {image} as {color}, switch nginx to {color}")?;
                match old {
                    Some(old) => write!(f, ", then drain and remove {old}"),
                    None => Ok(()),
                }
            }
            Action::Switch {
                color, image, old, ..
            } => {
                write!(
                    f,
                    "switch nginx to {color} (already running {image}), no new container"
                )?;
                match old {
                    Some(old) => write!(f, ", then drain and remove {old}"),
                    None => Ok(()),
                }
            }
            Action::Reassert { color } => {
                write!(f, "reload nginx with the upstream file pointing at {color}")
            }
            Action::RecordHistory { image } => {
                write!(f, "record {image} at the head of the history")
            }
        }
    }
}

/// What a pass will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub verdict: Verdict,
    pub actions: Vec<Action>,
}

impl Plan {
    fn of(verdict: Verdict) -> Plan {
        Plan {
            verdict,
            actions: Vec::new(),
        }
    }

    /// The color traffic moves to, when the plan switches.
    pub fn target(&self) -> Option<(Color, &str)> {
        self.actions.iter().find_map(|a| match a {
            Action::Deploy { color, image, .. } | Action::Switch { color, image, .. } => {
                Some((*color, image.as_str()))
            }
            _ => None,
        })
    }
}

/// Decides what to do. `by_hand` is true for a reconcile or deploy an operator asked for:
/// it retries a generation that already failed.
pub fn plan(cfg: &Config, desired: &Desired, observed: &Observed, by_hand: bool) -> Plan {
    let reference = desired.reference(cfg);
    let image = desired.image.as_written().to_string();
    let live = observed.live(cfg);
    let desired_is_live = live.is_some_and(|c| runs(c, &reference, &image));

    if desired.paused {
        return Plan::of(Verdict::Paused);
    }
    // Live or not: a failed generation may be live only because there was nothing to switch
    // back to, and the history must never gain a failed image.
    if !by_hand && observed.failed_generation.as_deref() == Some(desired.generation.as_str()) {
        return Plan::of(Verdict::AlreadyFailed);
    }

    let mut actions = Vec::new();
    let is_color_container = |c: &Container| {
        c.color
            .is_some_and(|color| c.name == cfg.container_name(color))
    };
    for c in observed
        .containers
        .iter()
        .filter(|c| !is_color_container(c))
    {
        actions.push(Action::Remove {
            name: c.name.clone(),
            reason: "labelled for the app but not one of its color containers".to_string(),
        });
    }

    if let Some(live) = live.filter(|_| desired_is_live) {
        for c in observed
            .containers
            .iter()
            .filter(|c| is_color_container(c) && c.name != live.name)
        {
            actions.push(Action::Remove {
                name: c.name.clone(),
                reason: format!("not live ({}, {})", c.image, c.state),
            });
        }
        if observed.history.first() != Some(&image) {
            actions.push(Action::RecordHistory { image });
        }
        if actions.is_empty() {
            return Plan::of(Verdict::InSync);
        }
        if let Some(color) = live.color {
            actions.insert(0, Action::Reassert { color });
        }
        return Plan {
            verdict: Verdict::Converge,
            actions,
        };
    }

    // The candidate goes into the color the upstream file does not point at; when it points
    // at neither, into a color already running the desired image, else blue.
    let runs_desired = |color: Color| {
        observed
            .container(cfg, color)
            .filter(|c| c.state.is_running() && runs(c, &reference, &image))
    };
    let color = match observed.upstream_color(cfg) {
        Some(from) => from.other(),
        None if runs_desired(Color::Green).is_some() => Color::Green,
        None => Color::Blue,
    };
    let old = observed
        .container(cfg, color.other())
        .map(|c| c.name.clone());
    let reusable = runs_desired(color);
    match reusable {
        Some(_) => actions.push(Action::Switch {
            color,
            image,
            reference,
            old,
        }),
        None => {
            if let Some(stale) = observed.container(cfg, color) {
                actions.push(Action::Remove {
                    name: stale.name.clone(),
                    reason: format!("stale {color} container ({}, {})", stale.image, stale.state),
                });
            }
            actions.push(Action::Deploy {
                color,
                image,
                reference,
                old,
            });
        }
    }
    Plan {
        verdict: Verdict::Converge,
        actions,
    }
}

/// Does a container run this image? Its label holds the full reference it was started
/// from, pinned to a digest or not. Two digests must agree; without two, the names decide
/// (a rollback pins the digest recorded for that same tag's deployment).
fn runs(c: &Container, reference: &str, written: &str) -> bool {
    if c.image == reference || c.image == written {
        return true;
    }
    let split = |r: &'_ str| -> (String, Option<String>) {
        match r.split_once('@') {
            Some((name, digest)) => (name.to_string(), Some(digest.to_string())),
            None => (r.to_string(), None),
        }
    };
    let (have_name, have_digest) = split(&c.image);
    let (want_name, want_digest) = split(reference);
    match (have_digest, want_digest) {
        (Some(have), Some(want)) => have == want,
        _ => have_name == want_name,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::apply::runtime::ContainerState;

    const REPO: &str = "ghcr.io/fieldtrack-tech/api";

    fn cfg() -> Config {
        Config::parse(
            &format!("repository = \"{REPO}\"\n"),
            Path::new("/srv/api/fieldtrack.toml"),
            None,
        )
        .unwrap()
    }

    fn desired(image: &str) -> Desired {
        Desired::parse(
            &format!("image = \"{image}\"\n"),
            Path::new("/srv/api/desired.toml"),
            &cfg(),
        )
        .unwrap()
    }

    fn container(color: Color, tag: &str, state: ContainerState) -> Container {
        Container {
            id: format!("id-{color}"),
            name: format!("api-{color}"),
            color: Some(color),
            image: format!("{REPO}:{tag}"),
            state,
        }
    }

    fn running(color: Color, tag: &str) -> Container {
        container(color, tag, ContainerState::Running)
    }

    fn observed(containers: Vec<Container>, port: Option<u16>, history: &[&str]) -> Observed {
        Observed {
            containers,
            upstream_port: port,
            history: history.iter().map(|s| s.to_string()).collect(),
            failed_generation: None,
        }
    }

    fn deploy(color: Color, tag: &str, old: Option<&str>) -> Action {
        Action::Deploy {
            color,
            image: tag.to_string(),
            reference: format!("{REPO}:{tag}"),
            old: old.map(str::to_string),
        }
    }

    const BLUE: Option<u16> = Some(3001);
    const GREEN: Option<u16> = Some(3002);

    #[test]
    fn nothing_live_deploys_into_blue() {
        let p = plan(&cfg(), &desired("v1"), &observed(vec![], None, &[]), false);
        assert_eq!(p.verdict, Verdict::Converge);
        assert_eq!(p.actions, vec![deploy(Color::Blue, "v1", None)]);
    }

    #[test]
    fn placeholder_upstream_pointing_at_blue_with_nothing_running_deploys_into_green() {
        let p = plan(&cfg(), &desired("v1"), &observed(vec![], BLUE, &[]), false);
        assert_eq!(p.actions, vec![deploy(Color::Green, "v1", None)]);
    }

    #[test]
    fn upstream_pointing_at_a_foreign_port_means_nothing_is_live() {
        let o = observed(vec![running(Color::Green, "v1")], Some(8080), &["v1"]);
        let p = plan(&cfg(), &desired("v1"), &o, false);
        // Green already runs v1 but is not live: it is health-gated and switched to.
        assert_eq!(
            p.actions,
            vec![Action::Switch {
                color: Color::Green,
                image: "v1".into(),
                reference: format!("{REPO}:v1"),
                old: None,
            }]
        );
        assert_eq!(p.target(), Some((Color::Green, "v1")));
    }

    #[test]
    fn upstream_pointing_at_a_foreign_port_retires_a_container_of_another_image() {
        let o = observed(vec![running(Color::Blue, "v1")], Some(8080), &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o, false);
        assert!(matches!(&p.actions[0], Action::Remove { name, .. } if name == "api-blue"));
        assert_eq!(p.actions[1], deploy(Color::Blue, "v2", None));
    }

    #[test]
    fn blue_live_deploys_into_green_and_retires_blue() {
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o, false);
        assert_eq!(
            p.actions,
            vec![deploy(Color::Green, "v2", Some("api-blue"))]
        );
    }

    #[test]
    fn green_live_deploys_into_blue_and_retires_green() {
        let o = observed(vec![running(Color::Green, "v1")], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o, false);
        assert_eq!(
            p.actions,
            vec![deploy(Color::Blue, "v2", Some("api-green"))]
        );
    }

    #[test]
    fn desired_equal_to_live_is_in_sync() {
        let o = observed(vec![running(Color::Green, "v2")], GREEN, &["v2", "v1"]);
        let p = plan(&cfg(), &desired("v2"), &o, false);
        assert_eq!(p, Plan::of(Verdict::InSync));
    }

    #[test]
    fn desired_live_but_missing_from_history_head_is_recorded() {
        let o = observed(vec![running(Color::Green, "v2")], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o, false);
        assert_eq!(p.verdict, Verdict::Converge);
        assert_eq!(
            p.actions,
            vec![
                Action::Reassert {
                    color: Color::Green
                },
                Action::RecordHistory { image: "v2".into() }
            ]
        );
    }

    #[test]
    fn desired_live_with_the_old_color_still_running_removes_the_old_color() {
        let o = observed(
            vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
            GREEN,
            &["v2", "v1"],
        );
        let p = plan(&cfg(), &desired("v2"), &o, false);
        assert_eq!(
            p.actions[0],
            Action::Reassert {
                color: Color::Green
            }
        );
        assert_eq!(p.actions.len(), 2);
        assert!(matches!(&p.actions[1], Action::Remove { name, .. } if name == "api-blue"));
    }

    #[test]
    fn stray_candidate_left_by_a_dead_attempt_is_removed_before_deploying() {
        let o = observed(
            vec![
                running(Color::Blue, "v1"),
                container(Color::Green, "v2", ContainerState::Created),
            ],
            BLUE,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v3"), &o, false);
        assert!(matches!(&p.actions[0], Action::Remove { name, .. } if name == "api-green"));
        assert_eq!(p.actions[1], deploy(Color::Green, "v3", Some("api-blue")));
    }

    #[test]
    fn stray_candidate_of_another_image_is_removed_when_desired_is_live() {
        let o = observed(
            vec![running(Color::Blue, "v1"), running(Color::Green, "v9")],
            BLUE,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v1"), &o, false);
        assert_eq!(p.actions.len(), 2);
        assert!(matches!(&p.actions[1], Action::Remove { name, .. } if name == "api-green"));
    }

    #[test]
    fn running_candidate_with_the_desired_image_is_switched_to_without_a_new_container() {
        // The instant rollback: blue (v1) still runs while green (v2) is live.
        let o = observed(
            vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
            GREEN,
            &["v2", "v1"],
        );
        let p = plan(&cfg(), &desired("v1"), &o, false);
        assert_eq!(
            p.actions,
            vec![Action::Switch {
                color: Color::Blue,
                image: "v1".into(),
                reference: format!("{REPO}:v1"),
                old: Some("api-green".into()),
            }]
        );
    }

    #[test]
    fn live_container_stopped_means_nothing_live_and_a_fresh_deploy() {
        let o = observed(
            vec![container(
                Color::Blue,
                "v1",
                ContainerState::Exited { code: 137 },
            )],
            BLUE,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v1"), &o, false);
        assert_eq!(
            p.actions,
            vec![deploy(Color::Green, "v1", Some("api-blue"))]
        );
    }

    #[test]
    fn live_container_gone_means_a_fresh_deploy() {
        let o = observed(vec![], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v1"), &o, false);
        assert_eq!(p.actions, vec![deploy(Color::Blue, "v1", None)]);
    }

    #[test]
    fn upstream_file_pointing_at_nothing_running_redeploys() {
        let o = observed(vec![running(Color::Blue, "v1")], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v1"), &o, false);
        // Blue runs v1 but traffic goes to green, where nothing runs: switch back to blue.
        assert_eq!(
            p.actions,
            vec![Action::Switch {
                color: Color::Blue,
                image: "v1".into(),
                reference: format!("{REPO}:v1"),
                old: None,
            }]
        );
    }

    #[test]
    fn paused_changes_nothing() {
        let mut d = desired("v2");
        d.paused = true;
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        assert_eq!(plan(&cfg(), &d, &o, false), Plan::of(Verdict::Paused));
        assert_eq!(plan(&cfg(), &d, &o, true), Plan::of(Verdict::Paused));
    }

    #[test]
    fn generation_that_already_failed_waits_unless_asked_by_hand() {
        let d = desired("v2");
        let mut o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        o.failed_generation = Some(d.generation.clone());
        assert_eq!(
            plan(&cfg(), &d, &o, false),
            Plan::of(Verdict::AlreadyFailed)
        );
        assert_eq!(
            plan(&cfg(), &d, &o, true).actions,
            vec![deploy(Color::Green, "v2", Some("api-blue"))]
        );
    }

    #[test]
    fn a_failed_older_generation_does_not_block_a_new_one() {
        let mut o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        o.failed_generation = Some("0000000000000000".into());
        let p = plan(&cfg(), &desired("v2"), &o, false);
        assert_eq!(p.verdict, Verdict::Converge);
    }

    #[test]
    fn failed_generation_that_stayed_live_is_not_recorded_in_the_history() {
        // A first deployment that failed in the drain had no old color to go back to.
        let d = desired("v1");
        let mut o = observed(vec![running(Color::Blue, "v1")], BLUE, &[]);
        o.failed_generation = Some(d.generation.clone());
        assert_eq!(
            plan(&cfg(), &d, &o, false),
            Plan::of(Verdict::AlreadyFailed)
        );
    }

    #[test]
    fn unlabelled_or_misnamed_app_containers_are_removed() {
        let mut odd = running(Color::Blue, "v1");
        odd.name = "api-blue-old".into();
        let mut unlabelled = running(Color::Green, "v1");
        unlabelled.color = None;
        let o = observed(
            vec![running(Color::Blue, "v1"), odd, unlabelled],
            BLUE,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v1"), &o, false);
        let removed: Vec<&str> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(removed, vec!["api-blue-old", "api-green"]);
    }

    #[test]
    fn a_container_a_pinned_rollback_started_runs_its_tag() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let mut pinned = running(Color::Blue, "v1");
        pinned.image = format!("{REPO}:v1@{digest}");
        let o = observed(vec![pinned.clone()], BLUE, &["v1"]);
        assert_eq!(
            plan(&cfg(), &desired("v1"), &o, false).verdict,
            Verdict::InSync
        );
        // The other way round: a pinned desired state and a container started by tag.
        let d = desired("v1").pinned(Some(digest.clone()));
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        assert_eq!(plan(&cfg(), &d, &o, false).verdict, Verdict::InSync);
        // Two digests that differ are two images.
        let other = format!("sha256:{}", "cd".repeat(32));
        let d = desired("v1").pinned(Some(other));
        let o = observed(vec![pinned], BLUE, &["v1"]);
        assert_eq!(plan(&cfg(), &d, &o, false).verdict, Verdict::Converge);
    }

    #[test]
    fn a_full_reference_matches_the_label_of_the_same_image() {
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &[]);
        let p = plan(&cfg(), &desired(&format!("{REPO}:v1")), &o, false);
        assert_eq!(
            p.actions[1..],
            [Action::RecordHistory {
                image: format!("{REPO}:v1")
            }]
        );
    }
}
