//! Deciding what to do: a pure function from what should be ([`Desired`]) and what is
//! ([`Observed`]) to a [`Plan`]. No I/O here, so every combination is unit-tested; applying
//! the plan is the only part that touches Docker and nginx.

pub mod canary;
pub mod canary_weights;
pub mod preview;

use std::fmt;

use crate::config::{Config, RuntimeKind};
use crate::desired::Desired;
use crate::model::Color;
use crate::model::Instance;
use crate::observe::Observed;

/// The overall verdict of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// fieldtrack cannot tell which container nginx sends traffic to, so it changes nothing
    /// (removing the wrong one would take production down). `reason` says what to check.
    Unclear { reason: String },
}

/// One step of a plan, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove a container that has no place in the desired world.
    Remove { name: String, reason: String },
    /// Start the desired image as a candidate in the rollout's color, gate it on health,
    /// switch nginx to it, drain and remove `old`, record the history.
    Deploy(Rollout),
    /// The desired image already runs in the rollout's color, not live (for example the
    /// previous color still draining): gate it on health and switch to it; no container is
    /// started.
    Switch(Rollout),
    /// Make nginx load the upstream file that points at the live `color` again, before
    /// anything else changes: a pass may have died between writing the file and reloading.
    ///
    /// `port` is where that color runs now: the file's port for the live color, or the port
    /// the color before an unsettled switch publishes, which may not be the config's port
    /// any more (ports changed since it started).
    Reassert { color: Color, port: u16 },
    /// Wait `rollout.drain`, then until nginx's workers of earlier configurations have
    /// exited: after a [`Action::Reassert`], before the first removal, since a pass may have
    /// died between a switch and its drain and those workers may still send requests to
    /// what is removed next.
    Drain,
    /// The desired image is live but the history does not start with it (a pass died
    /// between the switch and the history write): prepend it.
    RecordHistory { image: String },
    /// On Swarm: the live color's running replicas are not the servers the upstream file
    /// names (a node died or was drained, a task moved): probe them and point nginx at
    /// those that answer.
    Refresh { color: Color },
    /// A canary of the desired generation runs (the journal says where it stands): this
    /// pass's decision about it ([`canary::decide`]).
    Canary(canary::CanaryAction),
    /// A preview of the desired generation awaits promotion (the journal says so): this
    /// pass's decision about it ([`preview::decide`]).
    Preview(preview::PreviewAction),
}

/// Where traffic moves in a [`Action::Deploy`] or [`Action::Switch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The color that gets the traffic.
    pub color: Color,
    /// The image as written in the desired file.
    pub image: String,
    /// The full pullable reference.
    pub reference: String,
    /// The other color's container, retired after the drain.
    pub old: Option<String>,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let then_retire = |f: &mut fmt::Formatter<'_>, old: &Option<String>| match old {
            Some(old) => write!(f, ", then drain and remove {old}"),
            None => Ok(()),
        };
        match self {
            Action::Remove { name, reason } => write!(f, "remove container {name} ({reason})"),
            Action::Deploy(Rollout {
                color, image, old, ..
            }) => {
                write!(f, "deploy {image} as {color}, switch nginx to {color}")?;
                then_retire(f, old)
            }
            Action::Switch(Rollout {
                color, image, old, ..
            }) => {
                write!(
                    f,
                    "switch nginx to {color} (already running {image}), no new container"
                )?;
                then_retire(f, old)
            }
            Action::Reassert { color, port } => {
                write!(
                    f,
                    "reload nginx with the upstream file pointing at {color} (port {port})"
                )
            }
            Action::Drain => write!(
                f,
                "drain: wait rollout.drain and for nginx's old workers before removing"
            ),
            Action::RecordHistory { image } => {
                write!(f, "record {image} at the head of the history")
            }
            Action::Refresh { color } => write!(
                f,
                "point nginx at the {color} replicas that run now, each once it answers its probe"
            ),
            Action::Canary(canary) => canary.fmt(f),
            Action::Preview(preview) => preview.fmt(f),
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

    /// The color traffic moves to, when the plan switches (a canary's promotion included).
    pub fn target(&self) -> Option<(Color, &str)> {
        self.actions.iter().find_map(|a| match a {
            Action::Deploy(r) | Action::Switch(r) => Some((r.color, r.image.as_str())),
            Action::Canary(canary::CanaryAction {
                rollout: r,
                decision: canary::Decision::Promote { .. },
                ..
            }) => Some((r.color, r.image.as_str())),
            Action::Preview(preview::PreviewAction {
                rollout: r,
                decision: preview::Decision::Promote,
                ..
            }) => Some((r.color, r.image.as_str())),
            _ => None,
        })
    }
}

/// Decides what to do from what should be and what is, nothing about why the pass runs. A
/// generation that already failed waits, unless an operator asked to retry it by hand (the
/// journal says so, as it says it failed).
pub fn plan(cfg: &Config, desired: &Desired, observed: &Observed) -> Plan {
    let reference = desired.reference(cfg);
    let image = desired.image.as_written().to_string();
    let live = observed.live(cfg);
    let desired_is_live = live.is_some_and(|c| c.drift.is_none() && runs(c, &reference, &image));

    if desired.paused {
        return Plan::of(Verdict::Paused);
    }
    // Live or not: a failed generation may be live only because there was nothing to switch
    // back to, and the history must never gain a failed image.
    let generation = Some(desired.generation.as_str());
    if observed.failed_generation.as_deref() == generation
        && observed.retry_asked.as_deref() != generation
    {
        return Plan::of(Verdict::AlreadyFailed);
    }
    if let Some(canary) = canary::decide(cfg, desired, observed) {
        return Plan {
            verdict: Verdict::Converge,
            actions: vec![Action::Canary(canary)],
        };
    }
    if let Some(preview) = preview::decide(cfg, desired, observed) {
        return Plan {
            verdict: Verdict::Converge,
            actions: vec![Action::Preview(preview)],
        };
    }
    let served = match served_now(cfg, observed, live) {
        Ok(served) => served,
        Err(unclear) => return Plan::of(unclear),
    };
    let (mut actions, after_switch) = strays(cfg, observed, served);
    if let Some(live) = live.filter(|_| desired_is_live) {
        return repair_live(cfg, observed, live, image, actions);
    }

    let color = match candidate_color(cfg, observed, served, &reference, &image) {
        Ok(color) => color,
        Err(unclear) => return Plan::of(unclear),
    };
    let old = observed
        .container(cfg, color.other())
        .map(|c| c.name.clone());
    let reusable = runs_desired(cfg, observed, color, &reference, &image).is_some();
    let mut stale_running = false;
    if !reusable {
        if let Some(stale) = observed.container(cfg, color) {
            stale_running = stale.state.is_running();
            actions.push(Action::Remove {
                name: stale.name.clone(),
                reason: format!("stale {color} container ({}, {})", stale.image, stale.state),
            });
        }
    }
    if let Some((live_color, port)) = settle_first(cfg, observed, live, served, stale_running) {
        let mut head = vec![Action::Reassert {
            color: live_color,
            port,
        }];
        if actions.iter().any(|a| matches!(a, Action::Remove { .. })) {
            head.push(Action::Drain);
        }
        actions.splice(0..0, head);
    }
    let rollout = Rollout {
        color,
        image,
        reference,
        old,
    };
    actions.push(if reusable {
        Action::Switch(rollout)
    } else {
        Action::Deploy(rollout)
    });
    actions.extend(after_switch);
    Plan {
        verdict: Verdict::Converge,
        actions,
    }
}

/// The one container nginx may be sending traffic to, if any; more than one is
/// [`Verdict::Unclear`]. Whatever the upstream file on disk points at may be serving: it is
/// never removed before a switch away from it.
///
/// A process that died inside a switch (or a switch that failed half-way) leaves nginx
/// running either file: when the file's own color is live, the pass reloads nginx with it
/// before anything else; when it is not, what the file before pointed at is kept too.
///
/// A canary step left behind (a process died inside it): the file shares traffic between
/// the live (stable) color, named first, and the canary. Which one serves is known: both.
/// The canary's container is not "another served container" but a candidate nginx still
/// sends some requests to: the pass reasserts the stable color and drains before it is
/// removed or switched to again. The same when the process died in the switch that ends a
/// canary (to the canary alone, or back to the stable color) before the file was rewritten:
/// that switch's mark is not a canary's, but it comes from both ports.
fn served_now<'o>(
    cfg: &Config,
    observed: &'o Observed,
    live: Option<&Instance>,
) -> Result<Option<&'o Instance>, Verdict> {
    let unsettled_from: &[u16] = match (&observed.switching, live) {
        (Some(mark), None) => &mark.from,
        _ => &[],
    };
    let canary_port = match (
        &observed.switching,
        live,
        observed.upstream_ports.as_slice(),
    ) {
        (Some(mark), Some(_), &[stable, second])
            if (mark.canary && second == mark.to)
                || (!mark.canary && mark.from.contains(&stable) && mark.from.contains(&second)) =>
        {
            Some(second)
        }
        _ => None,
    };
    let served: Vec<&Instance> = observed
        .containers
        .iter()
        .filter(|c| {
            c.state.is_running()
                && c.ports.iter().any(|p| {
                    Some(*p) != canary_port
                        && (observed.upstream_ports.contains(p) || unsettled_from.contains(p))
                })
        })
        .collect();
    if served.len() > 1 {
        let names: Vec<&str> = served.iter().map(|c| c.name.as_str()).collect();
        return Err(Verdict::Unclear {
            reason: format!(
                "the nginx upstream file {} points at more than one container of {} ({}): \
                 fieldtrack cannot tell which one serves, so it removes nothing; leave one \
                 server line in the file, then run `fieldtrack reconcile`",
                cfg.nginx.upstream_file.display(),
                cfg.app,
                names.join(", ")
            ),
        });
    }
    Ok(served.first().copied())
}

/// A container of the app by its color's name and label (not a stray of the app's label).
fn is_color_container(cfg: &Config, c: &Instance) -> bool {
    c.color
        .is_some_and(|color| c.name == cfg.container_name(color))
}

/// The removals of containers labelled for the app that are none of its colors: now, or
/// (the one that may serve) only after the switch away from it.
fn strays(
    cfg: &Config,
    observed: &Observed,
    served: Option<&Instance>,
) -> (Vec<Action>, Vec<Action>) {
    let (mut now, mut after_switch) = (Vec::new(), Vec::new());
    for c in observed
        .containers
        .iter()
        .filter(|c| !is_color_container(cfg, c))
    {
        let remove = Action::Remove {
            name: c.name.clone(),
            reason: "labelled for the app but not one of its color containers".to_string(),
        };
        if served.is_some_and(|s| s.id == c.id) {
            after_switch.push(remove);
        } else {
            now.push(remove);
        }
    }
    (now, after_switch)
}

/// The desired image is live: what is left to do around it (other colors removed but the
/// one kept warm, the history, a switch nginx was not seen to settle on, Swarm's servers),
/// or nothing.
fn repair_live(
    cfg: &Config,
    observed: &Observed,
    live: &Instance,
    image: String,
    mut actions: Vec<Action>,
) -> Plan {
    // `live` is the one container served (it publishes the upstream's port), so nothing
    // removed here is. The previous color stays while its warm window runs.
    let warm = kept_warm(cfg, observed);
    for c in observed.containers.iter().filter(|c| {
        is_color_container(cfg, c) && c.name != live.name && warm.is_none_or(|w| w.id != c.id)
    }) {
        let reason = match &observed.warm {
            Some(w) if w.id == c.id => format!("no longer kept warm (until {})", w.until),
            _ => format!("not live ({}, {})", c.image, c.state),
        };
        actions.push(Action::Remove {
            name: c.name.clone(),
            reason,
        });
    }
    if observed.history.first() != Some(&image) {
        actions.push(Action::RecordHistory { image });
    }
    let refresh = cfg.runtime == RuntimeKind::Swarm && {
        let mut written = observed.upstream_servers.clone();
        written.sort();
        written.dedup();
        written != live.endpoints
    };
    // A switch nginx was not seen to settle on: reloading the file is still to do. So is
    // a preview block that does not name the live color (a preview ended, or promotion
    // just became manual).
    if actions.is_empty() && observed.switching.is_none() && !preview::block_stale(cfg, observed) {
        return match (refresh, live.color) {
            (true, Some(color)) => Plan {
                verdict: Verdict::Converge,
                actions: vec![Action::Refresh { color }],
            },
            _ => Plan::of(Verdict::InSync),
        };
    }
    if let Some(color) = live.color {
        // The removals come first: they wait for the drain after the reload.
        if matches!(actions.first(), Some(Action::Remove { .. })) {
            actions.insert(0, Action::Drain);
        }
        let port = observed.upstream_port().unwrap_or(cfg.port(color));
        actions.insert(0, Action::Reassert { color, port });
        if refresh {
            actions.push(Action::Refresh { color });
        }
    }
    Plan {
        verdict: Verdict::Converge,
        actions,
    }
}

/// The running, unchanged container of `color` that runs the desired image, if any.
pub(crate) fn runs_desired<'o>(
    cfg: &Config,
    observed: &'o Observed,
    color: Color,
    reference: &str,
    image: &str,
) -> Option<&'o Instance> {
    observed
        .container(cfg, color)
        .filter(|c| c.state.is_running() && c.drift.is_none() && runs(c, reference, image))
}

/// The color the candidate goes into: the one that does not serve. That is the one of the
/// container the upstream file points at (its published port, even when the config's ports
/// changed since), else the one the upstream port names; when neither tells, a color already
/// running the desired image, else blue. The candidate needs a color name and a color port
/// that the served container does not hold, so that it never needs the served one gone
/// first: a served container holding both is [`Verdict::Unclear`].
fn candidate_color(
    cfg: &Config,
    observed: &Observed,
    served: Option<&Instance>,
    reference: &str,
    image: &str,
) -> Result<Color, Verdict> {
    let holds = |c: &Instance, color: Color| {
        c.name == cfg.container_name(color) || c.ports.contains(&cfg.port(color))
    };
    let served_color = match served {
        Some(c) => match (holds(c, Color::Blue), holds(c, Color::Green)) {
            (true, true) => {
                return Err(Verdict::Unclear {
                    reason: format!(
                        "{} serves (the nginx upstream file {} points at it) and holds the name \
                         or the port of both colors: no candidate can start beside it, and \
                         fieldtrack removes nothing that serves; check container.blue_port and \
                         green_port against `docker ps`",
                        c.name,
                        cfg.nginx.upstream_file.display()
                    ),
                })
            }
            (true, false) => Some(Color::Blue),
            (false, true) => Some(Color::Green),
            (false, false) => c.color,
        },
        None => None,
    };
    Ok(match served_color.or(observed.upstream_color(cfg)) {
        Some(from) => from.other(),
        None if runs_desired(cfg, observed, Color::Green, reference, image).is_some() => {
            Color::Green
        }
        None => Color::Blue,
    })
}

/// The color (and port) nginx is settled on before anything else, if it must be: the live
/// color when a stale container still runs (it may get requests from nginx's workers of an
/// earlier configuration, a drain cut short) or a switch was left unsettled; then the drain,
/// before anything is removed. If nginx cannot reload, nothing is removed.
///
/// With the file's own color not live, nginx is settled back onto the color that ran before
/// the unsettled switch, when it still runs: it is what nginx may serve now. Its port is the
/// one it publishes and nginx had, which need not be the config's. A canary left behind whose
/// stable color is gone leaves the canary: nginx sent it its share, and it answered its gate.
/// Nothing of that runs either: nginx is settled on the file, which points where nothing runs
/// (production is down already), so that no candidate gets requests before its gate.
fn settle_first(
    cfg: &Config,
    observed: &Observed,
    live: Option<&Instance>,
    served: Option<&Instance>,
    stale_running: bool,
) -> Option<(Color, u16)> {
    let fallback = match (&observed.switching, live) {
        (Some(mark), None) => served.filter(|c| is_color_container(cfg, c)).and_then(|c| {
            let port = c
                .ports
                .iter()
                .copied()
                .find(|p| mark.from.contains(p) || (mark.canary && *p == mark.to))?;
            Some((c.color?, port))
        }),
        _ => None,
    };
    let down = match (&observed.switching, live, fallback) {
        (Some(_), None, None) => observed.upstream_color(cfg).zip(observed.upstream_port()),
        _ => None,
    };
    live.and_then(|l| l.color)
        .filter(|_| stale_running || observed.switching.is_some())
        .zip(observed.upstream_port())
        .or(fallback)
        .or(down)
}

/// The container kept warm (`rollout.keep_previous`): the one status.json's
/// [`crate::state::status::Warm`] names, by name and engine id, of its color, running and
/// unchanged, that nginx does not point at (neither the upstream file, nor the file before a
/// switch nginx was not seen to settle on), while its window runs at `observed.now`. A
/// window ending further ahead than `keep_previous` from now (the config was shortened
/// since, the clock went back) is over: nothing is kept longer than the config says, and
/// with `keep_previous = 0` nothing is kept.
pub fn kept_warm<'o>(cfg: &Config, observed: &'o Observed) -> Option<&'o Instance> {
    let keep = cfg.rollout.keep_previous;
    let mark = observed.warm.as_ref().filter(|_| !keep.is_zero())?;
    let left = mark.until_time()?.duration_since(observed.now).ok()?;
    if left.is_zero() || left > keep {
        return None;
    }
    let nginx_ports: Vec<u16> = observed
        .upstream_ports
        .iter()
        .chain(observed.switching.iter().flat_map(|m| m.from.iter()))
        .chain(observed.switching.iter().map(|m| &m.to))
        .copied()
        .collect();
    observed.containers.iter().find(|c| {
        c.id == mark.id
            && c.name == mark.container
            && c.color
                .is_some_and(|color| c.name == cfg.container_name(color) && color == mark.color)
            && c.state.is_running()
            && c.drift.is_none()
            && !c.ports.iter().any(|p| nginx_ports.contains(p))
    })
}

/// Does a container run this image? Its label holds the full reference it was started
/// from, pinned to a digest or not. Two digests must agree; without two, the names decide
/// (a rollback pins the digest recorded for that same tag's deployment).
fn runs(c: &Instance, reference: &str, written: &str) -> bool {
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
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::model::InstanceState;
    use crate::state::status::{SwitchMark, Warm};

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

    /// A color container; a running one publishes its color's port, as fieldtrack starts it.
    fn container(color: Color, tag: &str, state: InstanceState) -> Instance {
        let ports = match state {
            InstanceState::Running => vec![cfg().port(color)],
            _ => Vec::new(),
        };
        Instance {
            id: format!("id-{color}"),
            name: format!("api-{color}"),
            color: Some(color),
            image: format!("{REPO}:{tag}"),
            desired: Some(tag.to_string()),
            generation: None,
            state,
            endpoints: loopback(&ports),
            ports,
            drift: None,
            settings: None,
            replicas: Vec::new(),
        }
    }

    fn loopback(ports: &[u16]) -> Vec<std::net::SocketAddr> {
        ports
            .iter()
            .map(|p| std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), *p))
            .collect()
    }

    fn running(color: Color, tag: &str) -> Instance {
        container(color, tag, InstanceState::Running)
    }

    fn observed(containers: Vec<Instance>, port: Option<u16>, history: &[&str]) -> Observed {
        Observed {
            containers,
            upstream_ports: port.into_iter().collect(),
            upstream_servers: loopback(&port.into_iter().collect::<Vec<_>>()),
            history: history.iter().map(|s| s.to_string()).collect(),
            failed_generation: None,
            retry_asked: None,
            switching: None,
            warm: None,
            canary: None,
            promote: None,
            window: None,
            upstream_weights: Vec::new(),
            preview: None,
            preview_servers: Vec::new(),
            preview_probes: None,
            now: now(),
        }
    }

    /// The time the tests observe at: a fixed instant, so windows are exact.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn deploy(color: Color, tag: &str, old: Option<&str>) -> Action {
        Action::Deploy(Rollout {
            color,
            image: tag.to_string(),
            reference: format!("{REPO}:{tag}"),
            old: old.map(str::to_string),
        })
    }

    const BLUE: Option<u16> = Some(3001);
    const GREEN: Option<u16> = Some(3002);

    #[test]
    fn nothing_live_deploys_into_blue() {
        let p = plan(&cfg(), &desired("v1"), &observed(vec![], None, &[]));
        assert_eq!(p.verdict, Verdict::Converge);
        assert_eq!(p.actions, vec![deploy(Color::Blue, "v1", None)]);
    }

    #[test]
    fn placeholder_upstream_pointing_at_blue_with_nothing_running_deploys_into_green() {
        let p = plan(&cfg(), &desired("v1"), &observed(vec![], BLUE, &[]));
        assert_eq!(p.actions, vec![deploy(Color::Green, "v1", None)]);
    }

    #[test]
    fn upstream_pointing_at_a_foreign_port_means_nothing_is_live() {
        let o = observed(vec![running(Color::Green, "v1")], Some(8080), &["v1"]);
        let p = plan(&cfg(), &desired("v1"), &o);
        // Green already runs v1 but is not live: it is health-gated and switched to.
        assert_eq!(
            p.actions,
            vec![Action::Switch(Rollout {
                color: Color::Green,
                image: "v1".into(),
                reference: format!("{REPO}:v1"),
                old: None,
            })]
        );
        assert_eq!(p.target(), Some((Color::Green, "v1")));
    }

    #[test]
    fn upstream_pointing_at_a_foreign_port_retires_a_container_of_another_image() {
        let o = observed(vec![running(Color::Blue, "v1")], Some(8080), &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert!(matches!(&p.actions[0], Action::Remove { name, .. } if name == "api-blue"));
        assert_eq!(p.actions[1], deploy(Color::Blue, "v2", None));
    }

    #[test]
    fn blue_live_deploys_into_green_and_retires_blue() {
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(
            p.actions,
            vec![deploy(Color::Green, "v2", Some("api-blue"))]
        );
    }

    #[test]
    fn green_live_deploys_into_blue_and_retires_green() {
        let o = observed(vec![running(Color::Green, "v1")], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(
            p.actions,
            vec![deploy(Color::Blue, "v2", Some("api-green"))]
        );
    }

    #[test]
    fn desired_equal_to_live_is_in_sync() {
        let o = observed(vec![running(Color::Green, "v2")], GREEN, &["v2", "v1"]);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(p, Plan::of(Verdict::InSync));
    }

    #[test]
    fn desired_live_but_missing_from_history_head_is_recorded() {
        let o = observed(vec![running(Color::Green, "v2")], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(p.verdict, Verdict::Converge);
        assert_eq!(
            p.actions,
            vec![
                Action::Reassert {
                    color: Color::Green,
                    port: 3002
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
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(
            p.actions[0],
            Action::Reassert {
                color: Color::Green,
                port: 3002
            }
        );
        // A pass died between the switch and the drain: the old color waits for it.
        assert_eq!(p.actions[1], Action::Drain);
        assert_eq!(p.actions.len(), 3);
        assert!(matches!(&p.actions[2], Action::Remove { name, .. } if name == "api-blue"));
    }

    #[test]
    fn stray_candidate_left_by_a_dead_attempt_is_removed_before_deploying() {
        let o = observed(
            vec![
                running(Color::Blue, "v1"),
                container(Color::Green, "v2", InstanceState::Created),
            ],
            BLUE,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v3"), &o);
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
        let p = plan(&cfg(), &desired("v1"), &o);
        assert_eq!(p.actions.len(), 3);
        assert_eq!(p.actions[1], Action::Drain);
        assert!(matches!(&p.actions[2], Action::Remove { name, .. } if name == "api-green"));
    }

    #[test]
    fn running_candidate_with_the_desired_image_is_switched_to_without_a_new_container() {
        // The instant rollback: blue (v1) still runs while green (v2) is live.
        let o = observed(
            vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
            GREEN,
            &["v2", "v1"],
        );
        let p = plan(&cfg(), &desired("v1"), &o);
        assert_eq!(
            p.actions,
            vec![Action::Switch(Rollout {
                color: Color::Blue,
                image: "v1".into(),
                reference: format!("{REPO}:v1"),
                old: Some("api-green".into()),
            })]
        );
    }

    #[test]
    fn live_container_stopped_means_nothing_live_and_a_fresh_deploy() {
        let o = observed(
            vec![container(
                Color::Blue,
                "v1",
                InstanceState::Exited { code: 137 },
            )],
            BLUE,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v1"), &o);
        assert_eq!(
            p.actions,
            vec![deploy(Color::Green, "v1", Some("api-blue"))]
        );
    }

    #[test]
    fn live_container_gone_means_a_fresh_deploy() {
        let o = observed(vec![], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v1"), &o);
        assert_eq!(p.actions, vec![deploy(Color::Blue, "v1", None)]);
    }

    #[test]
    fn upstream_file_pointing_at_nothing_running_redeploys() {
        let o = observed(vec![running(Color::Blue, "v1")], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v1"), &o);
        // Blue runs v1 but traffic goes to green, where nothing runs: switch back to blue.
        assert_eq!(
            p.actions,
            vec![Action::Switch(Rollout {
                color: Color::Blue,
                image: "v1".into(),
                reference: format!("{REPO}:v1"),
                old: None,
            })]
        );
    }

    #[test]
    fn paused_changes_nothing() {
        let mut d = desired("v2");
        d.paused = true;
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        assert_eq!(plan(&cfg(), &d, &o), Plan::of(Verdict::Paused));
        assert_eq!(
            plan(&cfg(), &d, &asked_by_hand(o, &d)),
            Plan::of(Verdict::Paused)
        );
    }

    #[test]
    fn generation_that_already_failed_waits_unless_asked_by_hand() {
        let d = desired("v2");
        let mut o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        o.failed_generation = Some(d.generation.clone());
        assert_eq!(plan(&cfg(), &d, &o), Plan::of(Verdict::AlreadyFailed));
        assert_eq!(
            plan(&cfg(), &d, &asked_by_hand(o.clone(), &d)).actions,
            vec![deploy(Color::Green, "v2", Some("api-blue"))]
        );
        // A retry asked for another generation retries nothing of this one.
        let mut other = o;
        other.retry_asked = Some("0000000000000000".into());
        assert_eq!(plan(&cfg(), &d, &other), Plan::of(Verdict::AlreadyFailed));
    }

    /// `o` with the journal's record of a retry of `d` asked by hand.
    fn asked_by_hand(o: Observed, d: &Desired) -> Observed {
        Observed {
            retry_asked: Some(d.generation.clone()),
            ..o
        }
    }

    #[test]
    fn a_failed_older_generation_does_not_block_a_new_one() {
        let mut o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        o.failed_generation = Some("0000000000000000".into());
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(p.verdict, Verdict::Converge);
    }

    #[test]
    fn failed_generation_that_stayed_live_is_not_recorded_in_the_history() {
        // A first deployment that failed in the drain had no old color to go back to.
        let d = desired("v1");
        let mut o = observed(vec![running(Color::Blue, "v1")], BLUE, &[]);
        o.failed_generation = Some(d.generation.clone());
        assert_eq!(plan(&cfg(), &d, &o), Plan::of(Verdict::AlreadyFailed));
    }

    #[test]
    fn unlabelled_or_misnamed_app_containers_are_removed() {
        let mut odd = running(Color::Blue, "v1");
        odd.name = "api-blue-old".into();
        odd.id = "id-odd".into();
        odd.ports = vec![];
        let mut unlabelled = running(Color::Green, "v1");
        unlabelled.color = None;
        let o = observed(
            vec![running(Color::Blue, "v1"), odd, unlabelled],
            BLUE,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v1"), &o);
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
        assert_eq!(plan(&cfg(), &desired("v1"), &o).verdict, Verdict::InSync);
        // The other way round: a pinned desired state and a container started by tag.
        let d = desired("v1").pinned(Some(digest.clone()));
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        assert_eq!(plan(&cfg(), &d, &o).verdict, Verdict::InSync);
        // Two digests that differ are two images.
        let other = format!("sha256:{}", "cd".repeat(32));
        let d = desired("v1").pinned(Some(other));
        let o = observed(vec![pinned], BLUE, &["v1"]);
        assert_eq!(plan(&cfg(), &d, &o).verdict, Verdict::Converge);
    }

    #[test]
    fn a_full_reference_matches_the_label_of_the_same_image() {
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &[]);
        let p = plan(&cfg(), &desired(&format!("{REPO}:v1")), &o);
        assert_eq!(
            p.actions[1..],
            [Action::RecordHistory {
                image: format!("{REPO}:v1")
            }]
        );
    }

    fn cfg_with_ports(blue: u16, green: u16) -> Config {
        Config::parse(
            &format!(
                "repository = \"{REPO}\"\n[container]\nblue_port = {blue}\ngreen_port = {green}\n"
            ),
            Path::new("/srv/api/fieldtrack.toml"),
            None,
        )
        .unwrap()
    }

    fn removed_before_any_switch(p: &Plan) -> Vec<&str> {
        p.actions
            .iter()
            .take_while(|a| matches!(a, Action::Remove { .. }))
            .filter_map(|a| match a {
                Action::Remove { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_serving_container_started_on_ports_the_config_no_longer_names_is_not_removed() {
        // Blue was started on 3001 and the upstream file still points there; then the ports
        // moved to 4001/4002 and the config was reloaded. Blue still serves.
        let cfg = cfg_with_ports(4001, 4002);
        let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
        let p = plan(&cfg, &desired("v2"), &o);
        assert_eq!(removed_before_any_switch(&p), Vec::<&str>::new(), "{p:?}");
        assert_eq!(
            p.actions,
            vec![deploy(Color::Green, "v2", Some("api-blue"))]
        );
        // The same image: redeployed on the new port into the other color, blue retired
        // only after the switch.
        let p = plan(&cfg, &desired("v1"), &o);
        assert_eq!(
            p.actions,
            vec![deploy(Color::Green, "v1", Some("api-blue"))]
        );
    }

    #[test]
    fn a_misnamed_container_the_upstream_points_at_is_removed_only_after_the_switch() {
        let mut odd = running(Color::Blue, "v1");
        odd.name = "api-old".into();
        odd.id = "id-odd".into();
        odd.ports = vec![8080];
        let o = observed(vec![odd], Some(8080), &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(p.actions[0], deploy(Color::Green, "v2", None));
        assert!(matches!(&p.actions[1], Action::Remove { name, .. } if name == "api-old"));
    }

    #[test]
    fn an_upstream_pointing_at_two_containers_changes_nothing_and_says_what_to_check() {
        let o = Observed {
            upstream_ports: vec![3001, 3002],
            ..observed(
                vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
                BLUE,
                &["v1"],
            )
        };
        let p = plan(&cfg(), &desired("v3"), &o);
        assert!(p.actions.is_empty());
        let Verdict::Unclear { reason } = p.verdict else {
            panic!("{p:?}")
        };
        assert!(reason.contains("api-blue, api-green"), "{reason}");
        assert!(reason.contains("fieldtrack reconcile"), "{reason}");
        assert!(reason.contains("removes nothing"), "{reason}");
    }

    #[test]
    fn a_container_on_the_upstream_port_that_does_not_publish_it_is_not_live() {
        // Blue runs, but on another port than the upstream names (ports swapped in the
        // config): it is not live, and the one that does publish the port is kept.
        let cfg = cfg_with_ports(3002, 3001);
        let mut green = running(Color::Green, "v1");
        green.ports = vec![3002];
        let mut blue = running(Color::Blue, "v1");
        blue.ports = vec![3001];
        let o = observed(vec![blue, green], Some(3002), &["v1"]);
        let p = plan(&cfg, &desired("v1"), &o);
        assert_ne!(p.verdict, Verdict::InSync);
        let removed = removed_before_any_switch(&p);
        assert!(!removed.contains(&"api-green"), "{p:?}");
    }

    #[test]
    fn a_running_stale_container_is_removed_only_after_nginx_reloaded_the_live_color() {
        // v3 arrives while v2 (green, live) drains over v1 (blue): blue may still hold
        // requests from nginx's workers of before v2's switch.
        let o = observed(
            vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
            GREEN,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v3"), &o);
        assert_eq!(p.actions.len(), 4, "{p:?}");
        assert_eq!(
            p.actions[0],
            Action::Reassert {
                color: Color::Green,
                port: 3002
            }
        );
        assert_eq!(p.actions[1], Action::Drain);
        assert!(matches!(&p.actions[2], Action::Remove { name, .. } if name == "api-blue"));
        assert_eq!(p.actions[3], deploy(Color::Blue, "v3", Some("api-green")));
    }

    #[test]
    fn a_reload_with_nothing_to_remove_needs_no_drain() {
        let o = observed(vec![running(Color::Green, "v2")], GREEN, &["v1"]);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert!(!p.actions.contains(&Action::Drain), "{p:?}");
        // Nor does a stale candidate that does not run: nginx never sent it requests.
        let o = observed(
            vec![
                running(Color::Green, "v2"),
                container(Color::Blue, "v1", InstanceState::Exited { code: 0 }),
            ],
            GREEN,
            &["v2"],
        );
        let p = plan(&cfg(), &desired("v3"), &o);
        assert!(!p.actions.contains(&Action::Drain), "{p:?}");
    }

    #[test]
    fn the_drain_after_a_reload_comes_once_before_the_first_removal() {
        // Desired live on green, blue and a misnamed container left over.
        let mut odd = container(Color::Blue, "v0", InstanceState::Exited { code: 0 });
        odd.name = "api-old".into();
        odd.id = "id-odd".into();
        let o = observed(
            vec![running(Color::Blue, "v1"), running(Color::Green, "v2"), odd],
            GREEN,
            &["v1"],
        );
        let p = plan(&cfg(), &desired("v2"), &o);
        let kinds: Vec<String> = p
            .actions
            .iter()
            .map(|a| {
                a.to_string()
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            ["reload", "drain:", "remove", "remove", "record"],
            "{p:?}"
        );
    }

    fn with_mark(mut o: Observed, from: &[u16]) -> Observed {
        o.switching = Some(SwitchMark {
            from: from.to_vec(),
            to: o.upstream_port().expect("the file names a port"),
            canary: false,
        });
        o
    }

    #[test]
    fn a_switch_left_unsettled_is_reloaded_before_the_pass_calls_itself_in_sync() {
        // The file says green (v2, running): a process died before nginx reloaded it.
        let o = with_mark(
            observed(vec![running(Color::Green, "v2")], GREEN, &["v2"]),
            &[3001],
        );
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(p.verdict, Verdict::Converge);
        assert_eq!(
            p.actions,
            vec![Action::Reassert {
                color: Color::Green,
                port: 3002
            }]
        );
        // And before a deployment starts anything.
        let p = plan(&cfg(), &desired("v3"), &o);
        assert_eq!(
            p.actions[0],
            Action::Reassert {
                color: Color::Green,
                port: 3002
            }
        );
    }

    #[test]
    fn nginx_goes_back_to_the_port_the_color_before_publishes_not_the_configured_one() {
        // Found by the property test: green runs v1 on 4002, a port the config no longer
        // names, and a misnamed container runs on 3002, the config's green port. The file
        // says 3001 (nothing runs there); an unsettled switch left `from: [4002]`. Settling
        // nginx "on green" by the config's port would point it at the misnamed container,
        // removed right after: production down.
        let mut green = running(Color::Green, "v1");
        green.ports = vec![4002];
        green.endpoints = loopback(&[4002]);
        let mut misnamed = running(Color::Blue, "v1");
        misnamed.id = "id-old".into();
        misnamed.name = "api-blue-old".into();
        misnamed.ports = vec![3002];
        misnamed.endpoints = loopback(&[3002]);
        let o = with_mark(observed(vec![green, misnamed], BLUE, &["v1"]), &[4002]);
        let p = plan(&cfg(), &desired("v1"), &o);
        let reasserted = p.actions.iter().find_map(|a| match a {
            Action::Reassert { port, .. } => Some(*port),
            _ => None,
        });
        assert_eq!(reasserted, Some(4002), "{p:?}");
    }

    /// The property tests' switch mark, from an arbitrary `mark` (its ports) and the file's
    /// ports. A process died inside a switch: the file names `to`, nginx may still
    /// run the file before, which named `from`. Or a canary step: the file names the stable
    /// port, then the canary's (an empty `from` stands for it).
    fn arbitrary_mark(mark: Option<Vec<u16>>, upstream_ports: &[u16]) -> Option<SwitchMark> {
        match (mark, upstream_ports) {
            (Some(from), &[stable, canary]) if from.is_empty() => Some(SwitchMark {
                from: vec![stable],
                to: canary,
                canary: true,
            }),
            (Some(from), &[to, ..]) => Some(SwitchMark {
                from,
                to,
                canary: false,
            }),
            _ => None,
        }
    }

    /// A canary step left behind by a process that died: blue (v1) stable, green (v2) the
    /// canary, the file naming both with the canary mark.
    fn canary_left_behind() -> Observed {
        let mut o = observed(
            vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
            BLUE,
            &["v1"],
        );
        o.upstream_ports = vec![3001, 3002];
        o.upstream_servers = loopback(&[3001, 3002]);
        o.switching = Some(SwitchMark {
            from: vec![3001],
            to: 3002,
            canary: true,
        });
        o
    }

    #[test]
    fn a_canary_left_behind_is_settled_on_the_stable_color_then_run_again() {
        let p = plan(&cfg(), &desired("v2"), &canary_left_behind());
        assert_eq!(p.verdict, Verdict::Converge, "{p:?}");
        assert_eq!(
            p.actions[0],
            Action::Reassert {
                color: Color::Blue,
                port: 3001
            },
            "{p:?}"
        );
        assert!(
            matches!(p.actions.last(), Some(Action::Switch(r)) if r.color == Color::Green),
            "the canary's container is gated and switched to again, not started anew: {p:?}"
        );
        assert!(removed_before_any_switch(&p).is_empty(), "{p:?}");
    }

    #[test]
    fn a_process_dead_in_the_switch_that_ends_a_canary_leaves_a_canary_to_settle() {
        // The promotion's mark (from both ports, to the canary's) is in status.json, the file
        // still names both colors by weight: it is a canary left behind, not two served
        // containers (the seeded simulation found this: "points at more than one container").
        for to in [3002, 3001] {
            let mut o = canary_left_behind();
            o.switching = Some(SwitchMark {
                from: vec![3001, 3002],
                to,
                canary: false,
            });
            let p = plan(&cfg(), &desired("v2"), &o);
            assert_eq!(p.verdict, Verdict::Converge, "to {to}: {p:?}");
            assert_eq!(
                p.actions[0],
                Action::Reassert {
                    color: Color::Blue,
                    port: 3001
                },
                "to {to}: {p:?}"
            );
            assert!(removed_before_any_switch(&p).is_empty(), "to {to}: {p:?}");
        }
    }

    #[test]
    fn a_canary_left_behind_whose_stable_color_exited_keeps_nginx_on_the_canary_alone() {
        // The seeded simulation found this: nginx was settled on the dead stable port and a
        // new container started there, getting requests before its health check.
        let mut o = canary_left_behind();
        o.containers[0].state = InstanceState::Exited { code: 1 };
        let p = plan(&cfg(), &desired("v3"), &o);
        assert_eq!(
            p.actions.first(),
            Some(&Action::Reassert {
                color: Color::Green,
                port: 3002
            }),
            "{p:?}"
        );
        assert!(
            matches!(p.actions.last(), Some(Action::Deploy(r)) if r.color == Color::Blue),
            "{p:?}"
        );
    }

    #[test]
    fn an_aborted_canary_left_behind_is_removed_only_after_nginx_is_back_on_stable_and_drained() {
        let p = plan(&cfg(), &desired("v1"), &canary_left_behind());
        assert_eq!(
            p.actions,
            vec![
                Action::Reassert {
                    color: Color::Blue,
                    port: 3001
                },
                Action::Drain,
                Action::Remove {
                    name: "api-green".into(),
                    reason: "not live (ghcr.io/fieldtrack-tech/api:v2, running)".into()
                },
            ]
        );
    }

    fn swarm_cfg() -> Config {
        Config::parse(
            &format!(
                "repository = \"{REPO}\"\n[runtime]\nkind = \"swarm\"\n[swarm]\nreplicas = 3\n"
            ),
            Path::new("/srv/api/fieldtrack.toml"),
            None,
        )
        .unwrap()
    }

    /// The canary step left behind on Swarm: blue's three tasks (v1, stable) and green's
    /// `canary_tasks` (v2) on their nodes, the file naming them all by weight, as the nginx
    /// adapter reads it with remote servers: the stable port, then the canary's, once each.
    fn swarm_canary_left_behind(canary_tasks: u8) -> Observed {
        let node = |k: u8, port| std::net::SocketAddr::from(([10, 0, 0, k], port));
        let mut blue = running(Color::Blue, "v1");
        blue.endpoints = (1..=3).map(|k| node(k, 3001)).collect();
        let mut green = running(Color::Green, "v2");
        green.endpoints = (1..=canary_tasks).map(|k| node(k, 3002)).collect();
        let mut o = canary_left_behind();
        o.upstream_servers = [blue.endpoints.clone(), green.endpoints.clone()].concat();
        o.containers = vec![blue, green];
        o
    }

    #[test]
    fn on_swarm_a_canary_left_behind_with_several_servers_a_color_is_settled_on_the_stable_color() {
        for canary_tasks in [1, 3] {
            let o = swarm_canary_left_behind(canary_tasks);
            let p = plan(&swarm_cfg(), &desired("v2"), &o);
            assert_eq!(p.verdict, Verdict::Converge, "{p:?}");
            assert_eq!(
                p.actions[0],
                Action::Reassert {
                    color: Color::Blue,
                    port: 3001
                },
                "{p:?}"
            );
            assert!(
                matches!(p.actions.last(), Some(Action::Switch(r)) if r.color == Color::Green),
                "the canary's service is gated and switched to again: {p:?}"
            );
            assert!(removed_before_any_switch(&p).is_empty(), "{p:?}");

            // Aborted: back on the stable replicas, drained, then the canary removed.
            let p = plan(&swarm_cfg(), &desired("v1"), &o);
            assert_eq!(p.verdict, Verdict::Converge, "{p:?}");
            assert_eq!(
                p.actions[..3],
                [
                    Action::Reassert {
                        color: Color::Blue,
                        port: 3001
                    },
                    Action::Drain,
                    Action::Remove {
                        name: "api-green".into(),
                        reason: "not live (ghcr.io/fieldtrack-tech/api:v2, running)".into()
                    },
                ],
                "{p:?}"
            );
        }
    }

    #[test]
    fn when_the_unsettled_file_points_where_nothing_runs_nginx_goes_back_to_the_color_before() {
        // The file says green, whose container exited; nginx may still send traffic to blue.
        let o = with_mark(
            observed(
                vec![
                    running(Color::Blue, "v1"),
                    container(Color::Green, "v2", InstanceState::Exited { code: 1 }),
                ],
                GREEN,
                &["v1"],
            ),
            &[3001],
        );
        let p = plan(&cfg(), &desired("v2"), &o);
        assert_eq!(
            p.actions[0],
            Action::Reassert {
                color: Color::Blue,
                port: 3001
            }
        );
        assert!(
            !removed_before_any_switch(&p).contains(&"api-blue"),
            "{p:?}"
        );
        assert!(matches!(
            p.actions.last(),
            Some(Action::Deploy(Rollout { color: Color::Green, old: Some(old), .. })) if old == "api-blue"
        ));
    }

    #[test]
    fn when_nothing_runs_after_an_unsettled_switch_nginx_settles_on_the_file_before_a_candidate_starts(
    ) {
        let o = with_mark(
            observed(
                vec![container(
                    Color::Blue,
                    "v1",
                    InstanceState::Exited { code: 1 },
                )],
                GREEN,
                &["v1"],
            ),
            &[3001],
        );
        let p = plan(&cfg(), &desired("v3"), &o);
        // nginx then points at green's port, and the candidate starts in blue, out of its way.
        assert_eq!(
            p.actions[0],
            Action::Reassert {
                color: Color::Green,
                port: 3002
            }
        );
        assert!(matches!(
            p.actions.last(),
            Some(Action::Deploy(Rollout {
                color: Color::Blue,
                ..
            }))
        ));
    }

    /// A config with `rollout.keep_previous` set.
    fn keeping(keep: Duration) -> Config {
        let mut cfg = cfg();
        cfg.rollout.keep_previous = keep;
        cfg
    }

    const WINDOW: Duration = Duration::from_secs(15 * 60);

    /// status.json's record of `c` kept warm until `now() + left` (`left` may be negative).
    fn warm_mark(c: &Instance, left: i64) -> Warm {
        let until = if left >= 0 {
            now() + Duration::from_secs(left.unsigned_abs())
        } else {
            now() - Duration::from_secs(left.unsigned_abs())
        };
        Warm {
            // A container of no color has no mark of its own: any color misses it.
            color: c.color.unwrap_or(Color::Blue),
            image: c.desired.clone().unwrap_or_default(),
            container: c.name.clone(),
            id: c.id.clone(),
            until: humantime::format_rfc3339_seconds(until).to_string(),
        }
    }

    /// v2 live in green, v1 still running in blue, recorded warm with `left` seconds to go.
    fn v1_warm_under_v2(left: i64) -> Observed {
        let blue = running(Color::Blue, "v1");
        let mut o = observed(
            vec![blue.clone(), running(Color::Green, "v2")],
            GREEN,
            &["v2", "v1"],
        );
        o.warm = Some(warm_mark(&blue, left));
        o
    }

    #[test]
    fn the_previous_color_is_kept_while_its_warm_window_runs() {
        let o = v1_warm_under_v2(600);
        assert_eq!(
            kept_warm(&keeping(WINDOW), &o).map(|c| c.name.as_str()),
            Some("api-blue")
        );
        assert_eq!(
            plan(&keeping(WINDOW), &desired("v2"), &o),
            Plan::of(Verdict::InSync)
        );
    }

    #[test]
    fn the_previous_color_is_removed_at_the_first_pass_after_its_window() {
        for left in [0, -1, -3600] {
            let o = v1_warm_under_v2(left);
            assert_eq!(kept_warm(&keeping(WINDOW), &o), None, "{left}");
            let p = plan(&keeping(WINDOW), &desired("v2"), &o);
            assert_eq!(
                p.actions[..2],
                [
                    Action::Reassert {
                        color: Color::Green,
                        port: 3002
                    },
                    Action::Drain
                ]
            );
            assert!(
                matches!(&p.actions[2], Action::Remove { name, reason } if name == "api-blue" && reason.contains("no longer kept warm")),
                "{p:?}"
            );
        }
    }

    #[test]
    fn without_keep_previous_a_recorded_window_keeps_nothing() {
        let o = v1_warm_under_v2(600);
        assert_eq!(kept_warm(&cfg(), &o), None);
        let p = plan(&cfg(), &desired("v2"), &o);
        assert!(
            p.actions
                .iter()
                .any(|a| matches!(a, Action::Remove { name, .. } if name == "api-blue")),
            "{p:?}"
        );
    }

    #[test]
    fn a_window_longer_than_keep_previous_allows_is_over() {
        // The config was shortened since, or the clock went back: never kept longer than
        // the config says.
        let o = v1_warm_under_v2(2 * 3600);
        assert_eq!(kept_warm(&keeping(WINDOW), &o), None);
        assert_eq!(
            kept_warm(&keeping(Duration::from_secs(3 * 3600)), &o).map(|c| c.name.as_str()),
            Some("api-blue")
        );
    }

    #[test]
    fn a_new_container_of_the_same_name_is_not_the_one_kept_warm() {
        let mut o = v1_warm_under_v2(600);
        o.containers[0].id = "id-recreated".into();
        assert_eq!(kept_warm(&keeping(WINDOW), &o), None);
        // Nor one that stopped, or that changed color.
        let mut o = v1_warm_under_v2(600);
        o.containers[0] = container(Color::Blue, "v1", InstanceState::Exited { code: 0 });
        assert_eq!(kept_warm(&keeping(WINDOW), &o), None);
        let mut o = v1_warm_under_v2(600);
        o.warm.as_mut().unwrap().color = Color::Green;
        assert_eq!(kept_warm(&keeping(WINDOW), &o), None);
    }

    #[test]
    fn a_warm_record_naming_what_nginx_points_at_keeps_nothing_warm() {
        // A rollback switched to blue and the process died before the record changed.
        let mut o = v1_warm_under_v2(600);
        o.upstream_ports = vec![3001];
        assert_eq!(kept_warm(&keeping(WINDOW), &o), None);
        // Or nginx may still run the file before an unsettled switch, which named blue.
        let o = with_mark(v1_warm_under_v2(600), &[3001]);
        assert_eq!(kept_warm(&keeping(WINDOW), &o), None);
    }

    #[test]
    fn a_rollback_inside_the_window_is_a_switch_to_the_warm_container() {
        let o = v1_warm_under_v2(600);
        let p = plan(&keeping(WINDOW), &desired("v1"), &o);
        assert_eq!(
            p.actions,
            vec![Action::Switch(Rollout {
                color: Color::Blue,
                image: "v1".into(),
                reference: format!("{REPO}:v1"),
                old: Some("api-green".into()),
            })]
        );
    }

    #[test]
    fn a_new_image_replaces_the_warm_container_in_its_color() {
        // Two colors only: v3 goes where v1 was kept, after nginx reloaded and drained.
        let o = v1_warm_under_v2(600);
        let p = plan(&keeping(WINDOW), &desired("v3"), &o);
        assert_eq!(
            p.actions[..2],
            [
                Action::Reassert {
                    color: Color::Green,
                    port: 3002
                },
                Action::Drain
            ]
        );
        assert!(matches!(&p.actions[2], Action::Remove { name, .. } if name == "api-blue"));
        assert_eq!(p.actions[3], deploy(Color::Blue, "v3", Some("api-green")));
    }

    mod never_removes_what_serves {
        //! Property: over arbitrary observed worlds, desired images and upstream files, no
        //! plan removes a container the upstream file points at before a switch away from it.
        use super::*;
        use proptest::prelude::*;

        const PORTS: [u16; 5] = [3001, 3002, 4001, 4002, 8080];
        const NAMES: [&str; 4] = ["api-blue", "api-green", "api-blue-old", "api-x"];
        const TAGS: [&str; 3] = ["v1", "v2", "v3"];

        fn arb_container(i: usize) -> impl Strategy<Value = Instance> {
            (
                0..NAMES.len(),
                prop_oneof![
                    Just(None),
                    Just(Some(Color::Blue)),
                    Just(Some(Color::Green))
                ],
                0..TAGS.len(),
                0..4usize,
                proptest::option::of(0..PORTS.len()),
            )
                .prop_map(move |(name, color, tag, state, port)| {
                    let state = match state {
                        0 => InstanceState::Created,
                        1 => InstanceState::Exited { code: 1 },
                        _ => InstanceState::Running,
                    };
                    let ports = match (&state, port) {
                        (InstanceState::Running, Some(p)) => vec![PORTS[p]],
                        _ => vec![],
                    };
                    Instance {
                        id: format!("id-{i}"),
                        name: NAMES[name].to_string(),
                        color,
                        image: format!("{REPO}:{}", TAGS[tag]),
                        desired: Some(TAGS[tag].to_string()),
                        generation: None,
                        state,
                        endpoints: loopback(&ports),
                        ports,
                        drift: None,
                        settings: None,
                        replicas: Vec::new(),
                    }
                })
        }

        /// A world the engine could hold: names unique, a host port published once.
        fn arb_world() -> impl Strategy<Value = (Config, Observed, Desired)> {
            (
                prop::collection::vec((0..4usize).prop_flat_map(arb_container), 0..5),
                prop::collection::vec(0..PORTS.len(), 0..3),
                0..TAGS.len(),
                prop::collection::vec(0..TAGS.len(), 0..4),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(prop::collection::vec(0..PORTS.len(), 0..2)),
                (
                    any::<bool>(),
                    proptest::option::of((0..4usize, 0..WARM_LEFT.len(), 0..6usize)),
                ),
            )
                .prop_map(
                    |(containers, upstream, tag, history, moved, failed, by_hand, mark, warm)| {
                        let mut cfg = if moved {
                            cfg_with_ports(4001, 4002)
                        } else {
                            cfg()
                        };
                        let (keep, warm) = warm;
                        if keep {
                            cfg.rollout.keep_previous = WINDOW;
                        }
                        let mut seen_names = Vec::new();
                        let mut seen_ports = Vec::new();
                        let mut kept = Vec::new();
                        for (i, mut c) in containers.into_iter().enumerate() {
                            if seen_names.contains(&c.name) {
                                continue;
                            }
                            c.id = format!("id-{i}");
                            c.ports.retain(|p| !seen_ports.contains(p));
                            seen_names.push(c.name.clone());
                            seen_ports.extend(c.ports.iter().copied());
                            kept.push(c);
                        }
                        let upstream_ports: Vec<u16> =
                            upstream.into_iter().map(|i| PORTS[i]).collect();
                        let d = desired(TAGS[tag]);
                        let switching = arbitrary_mark(
                            mark.map(|m| m.into_iter().map(|i| PORTS[i]).collect()),
                            &upstream_ports,
                        );
                        let o = Observed {
                            containers: kept,
                            upstream_servers: loopback(&upstream_ports),
                            upstream_ports,
                            history: history.into_iter().map(|i| TAGS[i].to_string()).collect(),
                            failed_generation: failed.then(|| d.generation.clone()),
                            retry_asked: by_hand.then(|| d.generation.clone()),
                            switching,
                            warm: None,
                            canary: None,
                            promote: None,
                            window: None,
                            upstream_weights: Vec::new(),
                            preview: None,
                            preview_servers: Vec::new(),
                            preview_probes: None,
                            now: now(),
                        };
                        // status.json's warm record: of a container of the world or of one
                        // gone, its window running, over, or longer than the config allows.
                        let warm = warm.map(|(i, left, color)| {
                            // Mostly a running container, the kind a window keeps.
                            let running_ones: Vec<&Instance> = o
                                .containers
                                .iter()
                                .filter(|c| c.state.is_running())
                                .collect();
                            let pick = match i {
                                0 => o.containers.first(),
                                3 => None,
                                _ => running_ones.get(i % running_ones.len().max(1)).copied(),
                            };
                            let mut w = match pick {
                                Some(c) => warm_mark(c, WARM_LEFT[left]),
                                None => warm_mark(&running(Color::Blue, "v1"), WARM_LEFT[left]),
                            };
                            // Mostly the container's own color.
                            match color {
                                4 => w.color = Color::Blue,
                                5 => w.color = Color::Green,
                                _ => {}
                            }
                            w
                        });
                        let o = Observed { warm, ..o };
                        (cfg, o, d)
                    },
                )
        }

        /// Walks the plan, keeping the upstream file as each switching action leaves it, and
        /// whether nginx reloaded since the last drain (its old workers may still send
        /// requests to what is removed then).
        fn check(cfg: &Config, o: &Observed, p: &Plan) -> Result<(), TestCaseError> {
            // Until a reload settles it, nginx may run the file or, after a switch that did
            // not settle, the file before it.
            let mut upstream = o.upstream_ports.clone();
            if let Some(mark) = &o.switching {
                upstream.extend(mark.from.iter().copied());
            }
            let mut undrained_reload = false;
            let serves = |name: &str, upstream: &[u16]| {
                o.containers.iter().any(|c| {
                    c.name == name
                        && c.state.is_running()
                        && c.ports.iter().any(|p| upstream.contains(p))
                })
            };
            for action in &p.actions {
                match action {
                    Action::Remove { name, .. } => {
                        prop_assert!(
                            !serves(name, &upstream),
                            "removes {name}, which {upstream:?} points at: {p:?}"
                        );
                        prop_assert!(
                            !undrained_reload,
                            "removes {name} after a reload without a drain: {p:?}"
                        );
                    }
                    Action::Reassert { port, .. } => {
                        upstream = vec![*port];
                        undrained_reload = true;
                    }
                    Action::Refresh { .. } => prop_assert!(false, "refreshes on docker: {p:?}"),
                    Action::Canary(_) => prop_assert!(false, "a canary without its mark: {p:?}"),
                    Action::Preview(_) => prop_assert!(false, "a preview without its mark: {p:?}"),
                    Action::Drain => {
                        prop_assert!(undrained_reload, "drains without a reload: {p:?}");
                        undrained_reload = false;
                    }
                    Action::Deploy(Rollout { color, old, .. })
                    | Action::Switch(Rollout { color, old, .. }) => {
                        let port = cfg.port(*color);
                        // The candidate publishes `port`; a running container holding it
                        // already makes the start fail before anything is removed.
                        let taken = o.containers.iter().any(|c| {
                            c.state.is_running()
                                && c.ports.contains(&port)
                                && c.name != cfg.container_name(*color)
                        });
                        upstream = vec![port];
                        // The attempt drains after its own switch.
                        undrained_reload = false;
                        if let (Some(old), false) = (old, taken) {
                            prop_assert!(
                                !serves(old, &upstream),
                                "retires {old} after switching to {port}, which it publishes"
                            );
                        }
                    }
                    Action::RecordHistory { .. } => {}
                }
            }
            Ok(())
        }

        /// Seconds left in a drawn warm window: over, ending now, running, longer than
        /// `WINDOW`.
        const WARM_LEFT: [i64; 7] = [-60, 0, 60, 600, 600, 600, 7200];

        /// A container kept warm is one status.json records, running, that nginx points at
        /// neither through the upstream file nor through the file before an unsettled
        /// switch, while its window runs and no longer than `keep_previous`. When the
        /// desired image is live, every color container but the live one is removed, unless
        /// it is that one.
        fn check_warm(cfg: &Config, o: &Observed, p: &Plan) -> Result<(), TestCaseError> {
            let kept = kept_warm(cfg, o);
            if let Some(c) = kept {
                let mark = o.warm.as_ref().expect("kept from a record");
                let until = mark.until_time().expect("a readable end");
                prop_assert!(!cfg.rollout.keep_previous.is_zero());
                prop_assert!(o.now < until && until <= o.now + cfg.rollout.keep_previous);
                prop_assert!(c.id == mark.id && c.state.is_running());
                let mut nginx = o.upstream_ports.clone();
                if let Some(m) = &o.switching {
                    nginx.extend(m.from.iter().copied());
                    nginx.push(m.to);
                }
                prop_assert!(
                    !c.ports.iter().any(|p| nginx.contains(p)),
                    "keeps {} warm, which nginx may send traffic to: {o:?}",
                    c.name
                );
            }
            let settled = matches!(p.verdict, Verdict::InSync | Verdict::Converge);
            if settled && p.target().is_none() {
                let live = o.live(cfg).map(|c| c.id.as_str());
                for c in o.containers.iter().filter(|c| {
                    c.color
                        .is_some_and(|color| c.name == cfg.container_name(color))
                }) {
                    let removed = p
                        .actions
                        .iter()
                        .any(|a| matches!(a, Action::Remove { name, .. } if *name == c.name));
                    let warm = kept.is_some_and(|k| k.id == c.id);
                    prop_assert!(
                        removed != (Some(c.id.as_str()) == live || warm),
                        "{} (live {:?}, warm {warm}) removed: {removed}: {p:?}",
                        c.name,
                        live
                    );
                }
            }
            Ok(())
        }

        /// A world of the two color containers as fieldtrack starts them (each there or not,
        /// running or not, any image, mostly on its own color's port), any upstream file
        /// and unsettled switch, and a warm record of one of them (or of one gone): the
        /// worlds a warm window lives in, drawn often enough to keep containers warm.
        fn arb_warm_world() -> impl Strategy<Value = (Config, Observed, Desired)> {
            let color_container = |color: Color| {
                proptest::option::of((0..TAGS.len(), 0..4usize, 0..4usize)).prop_map(move |c| {
                    c.map(|(tag, state, port)| {
                        let state = match state {
                            0 => InstanceState::Exited { code: 0 },
                            _ => InstanceState::Running,
                        };
                        let mut c = container(color, TAGS[tag], state);
                        // Now and then on a port the config does not name.
                        if port == 0 && c.state.is_running() {
                            c.ports = vec![PORTS[4]];
                            c.endpoints = loopback(&c.ports);
                        }
                        c
                    })
                })
            };
            (
                color_container(Color::Blue),
                color_container(Color::Green),
                prop_oneof![
                    Just(vec![0]),
                    Just(vec![1]),
                    prop::collection::vec(0..PORTS.len(), 0..3)
                ],
                (0..TAGS.len(), any::<bool>()),
                prop::collection::vec(0..TAGS.len(), 0..3),
                0..4usize,
                proptest::option::of(prop::collection::vec(0..PORTS.len(), 0..2)),
                (0..3usize, 0..WARM_LEFT.len(), 0..4usize),
            )
                .prop_map(
                    |(
                        blue,
                        green,
                        upstream,
                        (tag, live_tag),
                        history,
                        keep,
                        mark,
                        (of, left, recreated),
                    )| {
                        let mut cfg = cfg();
                        if keep > 0 {
                            cfg.rollout.keep_previous = WINDOW;
                        }
                        let containers: Vec<Instance> =
                            [blue, green].into_iter().flatten().collect();
                        let upstream_ports: Vec<u16> =
                            upstream.into_iter().map(|i| PORTS[i]).collect();
                        let switching = arbitrary_mark(
                            mark.map(|m| m.into_iter().map(|i| PORTS[i]).collect()),
                            &upstream_ports,
                        );
                        let warm = match containers.get(of) {
                            Some(c) => {
                                let mut w = warm_mark(c, WARM_LEFT[left]);
                                if recreated == 0 {
                                    w.id = "id-gone".into();
                                }
                                Some(w)
                            }
                            None => None,
                        };
                        // Half the time, the image the upstream's container runs.
                        let served_tag = containers
                            .iter()
                            .find(|c| c.ports.iter().any(|p| upstream_ports.first() == Some(p)))
                            .and_then(|c| c.desired.clone());
                        let d = match served_tag.filter(|_| live_tag) {
                            Some(tag) => desired(&tag),
                            None => desired(TAGS[tag]),
                        };
                        let o = Observed {
                            containers,
                            upstream_servers: loopback(&upstream_ports),
                            upstream_ports,
                            history: history.into_iter().map(|i| TAGS[i].to_string()).collect(),
                            failed_generation: None,
                            retry_asked: None,
                            switching,
                            warm,
                            canary: None,
                            promote: None,
                            window: None,
                            upstream_weights: Vec::new(),
                            preview: None,
                            preview_servers: Vec::new(),
                            preview_probes: None,
                            now: now(),
                        };
                        (cfg, o, d)
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]
            #[test]
            fn no_plan_removes_what_nginx_points_at_before_switching_away(
                (cfg, o, d) in arb_world()
            ) {
                let p = plan(&cfg, &d, &o);
                check(&cfg, &o, &p)?;
            }

            #[test]
            fn a_warm_container_is_kept_only_while_its_window_runs_and_never_served(
                (cfg, o, d) in prop_oneof![arb_world(), arb_warm_world()]
            ) {
                let p = plan(&cfg, &d, &o);
                check_warm(&cfg, &o, &p)?;
                check(&cfg, &o, &p)?;
            }
        }
    }

    // A running canary, decided pass by pass (`canary::decide`): blue (v1) stable, green (v2)
    // the canary, two steps of a minute, the journal's mark at `step`.

    mod canary_decisions {
        use super::*;
        use crate::config::{CanaryConfig, CanaryStep, Pause, Ratio};
        use crate::desired::promote::PromoteRequest;
        use crate::observe::access_log::{parse_line, tally, Figures};
        use crate::observe::CanaryWindow;
        use crate::plan::canary::{decide, Decision, Passed};
        use crate::state::status::CanaryMark;

        fn canary_cfg() -> Config {
            let mut cfg = cfg();
            cfg.nginx.access_log = Some("/var/log/nginx/api.log".into());
            cfg.canary = Some(CanaryConfig {
                steps: vec![
                    CanaryStep {
                        weight: 10,
                        pause: Pause::For(Duration::from_secs(60)),
                    },
                    CanaryStep {
                        weight: 50,
                        pause: Pause::For(Duration::from_secs(60)),
                    },
                ],
                max_error_rate: Ratio(0.01),
                min_requests: 5,
                max_latency_ratio: Ratio(2.0),
            });
            cfg
        }

        /// `n` requests to `port`, `errors` of them answered 500.
        fn figures(port: u16, n: u64, errors: u64) -> Figures {
            let lines: Vec<_> = (0..n)
                .map(|i| {
                    let status = if i < errors { 500 } else { 200 };
                    parse_line(&format!(
                        "{{\"upstream_addr\":\"127.0.0.1:{port}\",\"status\":\"{status}\",\"upstream_status\":\"{status}\",\"request_time\":\"0.002\"}}"
                    ))
                    .unwrap()
                })
                .collect();
            let mut all = std::collections::HashMap::new();
            tally(&mut all, &lines, |a| Some(a.port()));
            all.remove(&port).unwrap_or_default()
        }

        /// The canary at `step`, begun `spent` ago, nginx on `share` percent to green, and a
        /// healthy window of `requests` canary requests.
        fn at(step: usize, spent: Duration, share: u32, requests: u64) -> (Desired, Observed) {
            let d = desired("v2");
            let mut o = observed(
                vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
                BLUE,
                &["v1"],
            );
            let (blue, green) = (loopback(&[3001])[0], loopback(&[3002])[0]);
            o.upstream_ports = vec![3001, 3002];
            o.upstream_servers = vec![blue, green];
            o.upstream_weights = vec![(blue, 100 - share), (green, share)];
            let began = humantime::format_rfc3339_millis(o.now - spent).to_string();
            o.canary = Some(CanaryMark {
                generation: d.generation.clone(),
                image: "v2".into(),
                color: Color::Green,
                stable: Color::Blue,
                step,
                step_started: began.clone(),
                started: began,
                aborting: None,
            });
            o.window = Some(CanaryWindow {
                generation: d.generation.clone(),
                step,
                stable: figures(3001, 10 * requests, 0),
                canary: figures(3002, requests, 0),
                probe_failures: 0,
                last_probe: None,
            });
            (d, o)
        }

        fn decision(d: &Desired, o: &Observed) -> Option<Decision> {
            let action = decide(&canary_cfg(), d, o)?;
            assert_eq!(action.rollout.color, Color::Green);
            assert_eq!(action.stable, Color::Blue);
            assert_eq!(action.rollout.old.as_deref(), Some("api-blue"));
            Some(action.decision)
        }

        const MINUTE: Duration = Duration::from_secs(60);

        #[test]
        fn a_step_stays_until_its_pause_is_over_with_enough_requests_then_the_next_begins() {
            let (d, o) = at(1, MINUTE / 2, 10, 50);
            assert!(matches!(
                decision(&d, &o),
                Some(Decision::Stay {
                    step: 1,
                    ignored: None
                })
            ));
            // Its minute spent, but too few requests: it waits for them.
            let (d, o) = at(1, MINUTE, 10, 3);
            assert!(matches!(
                decision(&d, &o),
                Some(Decision::Stay { step: 1, .. })
            ));
            let (d, o) = at(1, MINUTE, 10, 50);
            assert_eq!(
                decision(&d, &o),
                Some(Decision::Enter {
                    step: 2,
                    again: false,
                    passed: Some(Passed {
                        step: 1,
                        promoted: false
                    })
                })
            );
            let (d, o) = at(2, MINUTE, 50, 50);
            assert_eq!(
                decision(&d, &o),
                Some(Decision::Promote {
                    passed: Some(Passed {
                        step: 2,
                        promoted: false
                    })
                })
            );
        }

        #[test]
        fn the_time_spent_is_the_journals_whatever_process_counted_the_window() {
            // A restarted process: nothing counted yet, but step 2 began 50 s ago.
            let (d, mut o) = at(2, Duration::from_secs(50), 50, 0);
            o.window = None;
            assert!(matches!(
                decision(&d, &o),
                Some(Decision::Stay { step: 2, .. })
            ));
        }

        #[test]
        fn a_promote_ends_only_the_step_it_names() {
            let (d, mut o) = at(2, Duration::ZERO, 50, 0);
            let stale = PromoteRequest {
                generation: d.generation.clone(),
                step: 1,
            };
            o.promote = Some(stale.clone());
            assert_eq!(
                decision(&d, &o),
                Some(Decision::Stay {
                    step: 2,
                    ignored: Some(stale)
                })
            );
            o.promote = Some(PromoteRequest {
                generation: "another".into(),
                step: 2,
            });
            assert!(matches!(
                decision(&d, &o),
                Some(Decision::Stay {
                    ignored: Some(_),
                    ..
                })
            ));
            o.promote = Some(PromoteRequest {
                generation: d.generation.clone(),
                step: 2,
            });
            assert_eq!(
                decision(&d, &o),
                Some(Decision::Promote {
                    passed: Some(Passed {
                        step: 2,
                        promoted: true
                    })
                })
            );
        }

        #[test]
        fn weights_that_are_not_the_steps_put_nginx_on_them_again_without_a_new_start() {
            // The journal says step 2, the file still shares 10%: the switch to it died.
            let (d, o) = at(2, Duration::from_secs(5), 10, 0);
            assert_eq!(
                decision(&d, &o),
                Some(Decision::Enter {
                    step: 2,
                    again: true,
                    passed: None
                })
            );
        }

        #[test]
        fn a_failing_window_failed_probes_an_exited_canary_or_an_abort_under_way_abort() {
            let (d, mut o) = at(1, Duration::ZERO, 10, 0);
            if let Some(w) = o.window.as_mut() {
                w.canary = figures(3002, 10, 3);
            }
            assert!(
                matches!(decision(&d, &o), Some(Decision::Abort { reason }) if reason.starts_with("canary step 1 of 2 (10%): the canary answered 3 of 10"))
            );

            let (d, mut o) = at(1, Duration::ZERO, 10, 0);
            if let Some(w) = o.window.as_mut() {
                w.probe_failures = 3;
                w.last_probe = Some("HTTP 500".into());
            }
            assert!(
                matches!(decision(&d, &o), Some(Decision::Abort { reason }) if reason.contains("3 failed health probes in a row, last: HTTP 500"))
            );

            let (d, mut o) = at(1, Duration::ZERO, 10, 0);
            o.containers[1].state = InstanceState::Exited { code: 137 };
            assert!(
                matches!(decision(&d, &o), Some(Decision::Abort { reason }) if reason.contains("the container exited"))
            );

            // An abort the process died in: finished, even with nginx on the stable alone.
            let (d, mut o) = at(1, Duration::ZERO, 10, 0);
            o.upstream_ports = vec![3001];
            o.upstream_weights.truncate(1);
            if let Some(m) = o.canary.as_mut() {
                m.aborting = Some("canary step 1 of 2 (10%): bad".into());
            }
            assert!(
                matches!(decision(&d, &o), Some(Decision::Abort { reason }) if reason.ends_with("bad"))
            );
        }

        #[test]
        fn a_canary_of_another_generation_or_without_its_stable_color_goes_the_blue_green_way() {
            let (_, o) = at(1, Duration::ZERO, 10, 0);
            assert_eq!(decide(&canary_cfg(), &desired("v3"), &o), None);
            let p = plan(&canary_cfg(), &desired("v3"), &o);
            assert!(
                !p.actions.iter().any(|a| matches!(a, Action::Canary(_))),
                "{p:?}"
            );
            let (d, mut o) = at(1, Duration::ZERO, 10, 0);
            o.containers[0].state = InstanceState::Exited { code: 1 };
            assert_eq!(decide(&canary_cfg(), &d, &o), None);
        }

        #[test]
        fn the_plan_of_a_running_canary_is_its_decision_alone() {
            let (d, o) = at(1, MINUTE / 2, 10, 50);
            let p = plan(&canary_cfg(), &d, &o);
            assert_eq!(p.verdict, Verdict::Converge);
            assert!(matches!(p.actions.as_slice(), [Action::Canary(_)]), "{p:?}");
            assert_eq!(p.target(), None, "staying moves no traffic");
            assert_eq!(
                p.actions[0].to_string(),
                "canary v2 (green): watch step 1 on"
            );
        }
    }

    // A preview (`rollout.promotion = "manual"`), decided pass by pass
    // (`preview::decide`): blue (v1) live, green (v2) previewed, the journal's mark.
    mod preview_decisions {
        use super::*;
        use crate::config::Promotion;
        use crate::desired::promote::PromoteRequest;
        use crate::observe::ProbeCount;
        use crate::plan::preview::{decide, opens, Decision, PREVIEW_STEP};
        use crate::state::status::PreviewMark;

        fn manual() -> Config {
            let mut cfg = cfg();
            cfg.rollout.promotion = Promotion::Manual;
            cfg
        }

        /// v2 previewed in green: production's block on blue, the preview block on green.
        fn previewing() -> (Desired, Observed) {
            let d = desired("v2");
            let mut o = observed(
                vec![running(Color::Blue, "v1"), running(Color::Green, "v2")],
                BLUE,
                &["v1"],
            );
            o.preview_servers = loopback(&[3002]);
            o.preview = Some(PreviewMark {
                generation: d.generation.clone(),
                image: "v2".into(),
                color: Color::Green,
                stable: Color::Blue,
                since: "2026-12-07T18:30:00Z".into(),
                promoting: false,
                failing: None,
            });
            (d, o)
        }

        fn decision(cfg: &Config, d: &Desired, o: &Observed) -> Option<Decision> {
            let action = decide(cfg, d, o)?;
            assert_eq!(action.rollout.color, Color::Green);
            assert_eq!(action.stable, Color::Blue);
            assert_eq!(action.rollout.old.as_deref(), Some("api-blue"));
            assert_eq!(action.upstream, "fieldtrack_api_preview");
            Some(action.decision)
        }

        #[test]
        fn a_new_image_opens_a_preview_only_with_manual_promotion_a_live_color_and_no_history() {
            let o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
            let p = plan(&manual(), &desired("v2"), &o);
            let Some(Action::Deploy(rollout)) = p.actions.last() else {
                panic!("{p:?}")
            };
            assert!(opens(&manual(), &o, rollout));
            assert!(!opens(&cfg(), &o, rollout), "auto promotion switches");
            let back = Rollout {
                image: "v0".into(),
                ..rollout.clone()
            };
            let o_back = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1", "v0"]);
            assert!(
                !opens(&manual(), &o_back, &back),
                "a rollback goes back at once"
            );
            let first = observed(vec![], None, &[]);
            assert!(
                !opens(&manual(), &first, rollout),
                "nothing live: nothing to keep"
            );
        }

        #[test]
        fn a_preview_awaits_until_promoted_and_a_promote_of_another_generation_is_dropped() {
            let (d, mut o) = previewing();
            assert_eq!(
                decision(&manual(), &d, &o),
                Some(Decision::Await { ignored: None })
            );
            let stale = PromoteRequest {
                generation: "someone-else".into(),
                step: PREVIEW_STEP,
            };
            o.promote = Some(stale.clone());
            assert_eq!(
                decision(&manual(), &d, &o),
                Some(Decision::Await {
                    ignored: Some(stale)
                })
            );
            o.promote = Some(PromoteRequest {
                generation: d.generation.clone(),
                step: PREVIEW_STEP,
            });
            assert_eq!(decision(&manual(), &d, &o), Some(Decision::Promote));
            let p = plan(&manual(), &d, &o);
            assert_eq!(p.target(), Some((Color::Green, "v2")));
        }

        #[test]
        fn a_promotion_under_way_or_a_failure_under_way_is_finished() {
            let (d, mut o) = previewing();
            o.preview.as_mut().unwrap().promoting = true;
            assert_eq!(decision(&manual(), &d, &o), Some(Decision::Promote));
            o.preview.as_mut().unwrap().failing = Some("the container exited".into());
            assert!(matches!(
                decision(&manual(), &d, &o),
                Some(Decision::Fail { .. })
            ));
        }

        #[test]
        fn an_exited_candidate_or_three_failed_probes_end_the_preview() {
            let (d, mut o) = previewing();
            o.containers[1] = container(Color::Green, "v2", InstanceState::Exited { code: 1 });
            let Some(Decision::Fail { reason }) = decision(&manual(), &d, &o) else {
                panic!()
            };
            assert!(reason.contains("the container"), "{reason}");

            let (d, mut o) = previewing();
            let probes = |failures| ProbeCount {
                generation: d.generation.clone(),
                failures,
                last: Some("HTTP 500".into()),
            };
            o.preview_probes = Some(probes(2));
            assert_eq!(
                decision(&manual(), &d, &o),
                Some(Decision::Await { ignored: None })
            );
            o.preview_probes = Some(probes(3));
            let Some(Decision::Fail { reason }) = decision(&manual(), &d, &o) else {
                panic!()
            };
            assert!(
                reason.contains("3 failed health probes in a row, last: HTTP 500"),
                "{reason}"
            );
        }

        #[test]
        fn a_file_without_the_preview_s_shape_is_put_back_after_a_restart() {
            // A restart found the preview block on blue (the switch to it never settled),
            // none at all, or nginx not seen to settle on it.
            let (d, mut o) = previewing();
            o.preview_servers = loopback(&[3001]);
            assert_eq!(decision(&manual(), &d, &o), Some(Decision::Reopen));
            o.preview_servers = Vec::new();
            assert_eq!(decision(&manual(), &d, &o), Some(Decision::Reopen));
            let (d, mut o) = previewing();
            o.switching = Some(crate::state::status::SwitchMark {
                from: vec![3001],
                to: 3001,
                canary: false,
            });
            assert_eq!(decision(&manual(), &d, &o), Some(Decision::Reopen));
        }

        #[test]
        fn a_newer_generation_an_abort_or_a_gone_live_color_leave_the_preview_to_blue_green() {
            let (_, o) = previewing();
            // v3 replaces it: nginx reasserted on blue (the preview block with it), drained,
            // the v2 candidate removed, v3 deployed into green.
            let p = plan(&manual(), &desired("v3"), &o);
            assert!(
                matches!(
                    p.actions.first(),
                    Some(Action::Reassert {
                        color: Color::Blue,
                        ..
                    })
                ),
                "{p:?}"
            );
            assert!(p.actions.contains(&Action::Drain), "{p:?}");
            assert!(
                matches!(p.actions.last(), Some(Action::Deploy(r)) if r.image == "v3"),
                "{p:?}"
            );
            // The abort: v1 desired, live: the preview block back on blue before the removal.
            let p = plan(&manual(), &desired("v1"), &o);
            assert!(
                matches!(
                    p.actions.first(),
                    Some(Action::Reassert {
                        color: Color::Blue,
                        ..
                    })
                ),
                "{p:?}"
            );
            assert!(
                matches!(p.actions.last(), Some(Action::Remove { name, .. }) if name == "api-green"),
                "{p:?}"
            );
            // Auto promotion now: no preview decision, the running candidate is switched to.
            let (d, o) = previewing();
            assert_eq!(decide(&cfg(), &d, &o), None);
            // Blue is gone: production is down already, the candidate takes it through its
            // gate.
            let (d, mut o) = previewing();
            o.containers[0] = container(Color::Blue, "v1", InstanceState::Exited { code: 0 });
            assert_eq!(decide(&manual(), &d, &o), None);
        }

        #[test]
        fn with_manual_promotion_a_preview_block_that_does_not_name_production_is_reasserted() {
            let mut o = observed(vec![running(Color::Blue, "v1")], BLUE, &["v1"]);
            // Promotion just became manual: the file has no preview block yet.
            let p = plan(&manual(), &desired("v1"), &o);
            assert_eq!(
                p.actions,
                vec![Action::Reassert {
                    color: Color::Blue,
                    port: 3001
                }]
            );
            assert_eq!(plan(&cfg(), &desired("v1"), &o).verdict, Verdict::InSync);
            o.preview_servers = loopback(&[3001]);
            assert_eq!(plan(&manual(), &desired("v1"), &o).verdict, Verdict::InSync);
        }

        #[test]
        fn each_decision_reads_as_the_plan_prints_it() {
            let (d, o) = previewing();
            let action = decide(&manual(), &d, &o).unwrap();
            assert_eq!(
                action.to_string(),
                "preview v2 (green): await promotion (production stays on blue; upstream fieldtrack_api_preview)"
            );
        }
    }
}
