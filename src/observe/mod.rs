//! Observing the real world, afresh on every pass: the app's containers, the port the nginx
//! upstream file points at, the history file and the last status. Nothing is remembered
//! between passes, so a restarted process finds the same truth as the one that died.

pub mod access_log;
pub mod canary_window;

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::config::Config;
use crate::desired::promote::{self, PromoteRequest};
use crate::model::proxy::{Proxy, ProxyError};
use crate::model::runtime::{Runtime, RuntimeError};
use crate::model::settings::{Settings, LABEL_SETTINGS};
use crate::model::{Color, Instance};
use crate::state::history::{self, HistoryError};
use crate::state::journal::{Journal, JournalError};
use crate::state::status::{CanaryMark, PreviewMark, SwitchMark, Warm};
use access_log::Figures;

/// What is, as opposed to what should be ([`crate::desired::Desired`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Every container labelled for the app, running or not.
    pub containers: Vec<Instance>,
    /// Every loopback port the upstream file names, in the order written: what nginx may
    /// send traffic to on its next reload, whatever the config's color ports say. On Swarm,
    /// the ports of every server line, whatever its address.
    pub upstream_ports: Vec<u16>,
    /// Every `ADDRESS:PORT` server of the upstream file, in the order written.
    pub upstream_servers: Vec<SocketAddr>,
    /// The same servers with their weights (a canary step shares traffic by weight).
    pub upstream_weights: Vec<(SocketAddr, u32)>,
    /// The history file, newest first.
    pub history: Vec<String>,
    /// The generation whose attempt failed last (from the journal): not retried until the
    /// desired file changes or a retry is asked for by hand.
    pub failed_generation: Option<String>,
    /// The generation an operator asked to retry by hand (from the journal).
    pub retry_asked: Option<String>,
    /// A switch of the upstream file that nginx was not seen to settle on (a process died
    /// inside it): nginx may still run the file from before.
    pub switching: Option<SwitchMark>,
    /// The previous color kept running out of nginx, as the journal records it: the plan
    /// keeps that container only while the window runs at `now`.
    pub warm: Option<Warm>,
    /// Where a canary stands, as the journal records it.
    pub canary: Option<CanaryMark>,
    /// A `fieldtrack promote` request waiting beside the desired file (read, not taken).
    pub promote: Option<PromoteRequest>,
    /// What real traffic got from each side of the running canary step, since this process
    /// began watching it (see [`CanaryWindow`]); None outside a canary.
    pub window: Option<CanaryWindow>,
    /// Where a preview stands, as the journal records it.
    pub preview: Option<PreviewMark>,
    /// Every `ADDRESS:PORT` server of the upstream file's `{upstream_name}_preview` block.
    pub preview_servers: Vec<SocketAddr>,
    /// The previewed candidate's health probes that failed in a row, counted by this
    /// process since it began watching the preview; None outside a preview.
    pub preview_probes: Option<ProbeCount>,
    /// When this was observed: what the warm window is judged against, so that the plan
    /// stays a pure function.
    pub now: SystemTime,
}

/// A previewed candidate's health probes that failed in a row, and the last one's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeCount {
    /// The generation previewed.
    pub generation: String,
    pub failures: u32,
    /// The last failed probe's outcome, in plain words.
    pub last: Option<String>,
}

/// A canary step's window as observed so far: each side's figures read from nginx's access
/// log, and the canary's health probes that failed in a row. Counted in memory from the
/// moment a process began watching the step: after a restart the counts start again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CanaryWindow {
    /// The generation and step watched.
    pub generation: String,
    pub step: usize,
    pub stable: Figures,
    pub canary: Figures,
    pub probe_failures: u32,
    /// The last failed probe's outcome, in plain words.
    pub last_probe: Option<String>,
}

impl Observed {
    /// The port the upstream file sends traffic to (its first server); None when the file is
    /// missing or holds no loopback server line.
    pub fn upstream_port(&self) -> Option<u16> {
        self.upstream_ports.first().copied()
    }

    /// The color the upstream file points at, if its port is one of the app's color ports.
    pub fn upstream_color(&self, cfg: &Config) -> Option<Color> {
        self.upstream_port()
            .and_then(|port| cfg.color_of_port(port))
    }

    /// The container of a color, by its name and label.
    pub fn container(&self, cfg: &Config, color: Color) -> Option<&Instance> {
        let name = cfg.container_name(color);
        self.containers
            .iter()
            .find(|c| c.name == name && c.color == Some(color))
    }

    /// What is live: the running container of the color the upstream file points at. An
    /// upstream file that points at no running container of the app means nothing is live.
    ///
    /// The container must publish that port: one started before the config's ports changed
    /// (and a SIGHUP) is not live under the new ones, though it may still serve: the plan
    /// keeps whatever publishes a port of `upstream_ports`.
    pub fn live(&self, cfg: &Config) -> Option<&Instance> {
        let color = self.upstream_color(cfg)?;
        let port = self.upstream_port()?;
        self.container(cfg, color)
            .filter(|c| c.state.is_running() && c.ports.contains(&port))
    }
}

/// Why a container no longer runs as the config says: the settings in its label are not
/// `[container]`'s. Judged here, for every runtime alike, so that the plan replaces it
/// blue/green like an outdated image. A container without the label ran before settings
/// existed, with none: an upgrade of fieldtrack alone redeploys nothing.
pub fn settings_drift(cfg: &Config, container: &Instance) -> Option<String> {
    match Settings::from_label(container.settings.as_deref()) {
        Ok(was) => {
            let changes = cfg.container.settings.changes(&was);
            (!changes.is_empty()).then(|| {
                format!(
                    "its settings differ from the config: {}",
                    changes.join(", ")
                )
            })
        }
        Err(text) => Some(format!(
            "its {LABEL_SETTINGS} label cannot be read ({text:?}), so its settings are unknown"
        )),
    }
}

/// Errors while observing; all of them leave the world untouched.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The container runtime could not be asked.
    #[error("cannot list the app's containers: {0}")]
    Runtime(#[from] RuntimeError),
    /// The upstream file could not be read.
    #[error("cannot read the nginx upstream file: {0}")]
    Proxy(#[from] ProxyError),
    /// The history file could not be read.
    #[error("cannot read the history: {0}")]
    History(#[from] HistoryError),
    /// The journal (or, before there is one, status.json) could not be read.
    #[error("cannot read what the passes before recorded: {0}")]
    Journal(#[from] JournalError),
}

impl ObserveError {
    pub fn is_transient(&self) -> bool {
        match self {
            ObserveError::Runtime(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Observes everything the plan needs.
pub async fn observe<R: Runtime, P: Proxy>(
    cfg: &Config,
    runtime: &R,
    proxy: &P,
) -> Result<Observed, ObserveError> {
    let mut containers = runtime.containers(&cfg.app).await?;
    for c in &mut containers {
        if c.drift.is_none() {
            c.drift = settings_drift(cfg, c);
        }
    }
    // One read of the file: the ports are those of its servers that are the app's.
    let upstream_weights = proxy.upstream_weighted()?;
    let upstream_servers: Vec<SocketAddr> = upstream_weights.iter().map(|(a, _)| *a).collect();
    let upstream_ports = proxy.served_ports(&upstream_servers);
    let preview_servers = proxy.preview_servers()?;
    let history = history::read(&cfg.history_file)?;
    let journal = Journal::load(&cfg.state_dir)?;
    Ok(Observed {
        containers,
        upstream_ports,
        upstream_servers,
        upstream_weights,
        history,
        switching: journal.switching,
        warm: journal.warm,
        failed_generation: journal.failed_generation,
        retry_asked: journal.retry_asked,
        promote: (journal.canary.is_some() || journal.preview.is_some())
            .then(|| PromoteRequest::peek(&promote::request_path(&cfg.desired_file)))
            .flatten(),
        canary: journal.canary,
        window: None,
        preview: journal.preview,
        preview_servers,
        preview_probes: None,
        now: SystemTime::now(),
    })
}
