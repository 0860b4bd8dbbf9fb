//! The ground floor: the words every other part of fieldtrack speaks, and the traits of the
//! outside systems it drives. [`Color`], the slot an app runs in; [`Instance`], one color as
//! the runtime reports it (a local container, or a Swarm service and its tasks); the
//! [`runtime::Runtime`], [`proxy::Proxy`] and [`probe::Prober`] traits with what they are
//! asked and what they answer.
//!
//! Architecture invariant: this module imports nothing of the crate outside itself. observe,
//! plan, reconcile and the adapters in `apply` stand on it; it stands on nothing.

pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod settings;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two slots the app runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    /// Both colors, blue first.
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The other color: where a candidate goes while this one is live.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// `"blue"` or `"green"`, as in container names and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is neither `blue` nor `green`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown color {0:?}: expected \"blue\" or \"green\"")]
pub struct ParseColorError(pub String);

impl FromStr for Color {
    type Err = ParseColorError;

    fn from_str(s: &str) -> Result<Color, ParseColorError> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(ParseColorError(other.to_owned())),
        }
    }
}

/// The state of a container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    Created,
    Running,
    Restarting,
    Exited { code: i64 },
    Other(String),
}

impl InstanceState {
    pub fn is_running(&self) -> bool {
        matches!(self, InstanceState::Running)
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceState::Created => f.write_str("created"),
            InstanceState::Running => f.write_str("running"),
            InstanceState::Restarting => f.write_str("restarting"),
            InstanceState::Exited { code } => write!(f, "exited with code {code}"),
            InstanceState::Other(s) => f.write_str(s),
        }
    }
}

/// One container of the app, as observed: what any runtime backend reports, in the words
/// the plan uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    /// From the `fieldtrack.color` label; None when the label is missing or unknown.
    pub color: Option<Color>,
    /// From the `fieldtrack.image` label (the full reference it was started from).
    pub image: String,
    /// From the `fieldtrack.desired` label: the image as the desired file wrote it (what the
    /// history records); None on containers started before the label existed.
    pub desired: Option<String>,
    /// From the `fieldtrack.generation` label: the desired generation that started it.
    pub generation: Option<String>,
    pub state: InstanceState,
    /// Host ports it publishes (on loopback or all addresses): what an upstream `server
    /// 127.0.0.1:PORT;` line reaches. The engine reports them for running containers only.
    /// On Swarm: the port the service publishes on its nodes, while a task of it runs.
    pub ports: Vec<u16>,
    /// Where it answers now, one address per running replica: `127.0.0.1:PORT` for a local
    /// container; each running task's node address and the published port on Swarm.
    pub endpoints: Vec<SocketAddr>,
    /// Why it is no longer what fieldtrack started (a Swarm service edited by hand, or whose
    /// replicas differ from the config): it is replaced blue/green like an outdated image.
    pub drift: Option<String>,
    /// From the `fieldtrack.settings` label: the [`settings::Settings`] it was started with,
    /// as JSON; None on containers started before the label existed.
    pub settings: Option<String>,
    /// The replicas (Swarm tasks) per node, for the status; empty for a local container.
    pub replicas: Vec<Replica>,
}

/// One replica of a color on Docker Swarm (a task), as observed and as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The node's hostname.
    pub node: String,
    /// `NODE_ADDRESS:PORT` where it answers, when the node's address is known.
    pub address: Option<String>,
    /// The task's state as Swarm reports it (`running`, `starting`, `failed`, ...), with
    /// "(node down)" when its node is not ready.
    pub state: String,
    /// Swarm's error for a task that failed or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[test]
    fn colors() {
        assert_eq!(Color::Blue.other(), Color::Green);
        assert_eq!(Color::Green.other(), Color::Blue);
        assert_eq!(Color::Blue.as_str(), "blue");
        assert_eq!(Color::Green.to_string(), "green");
        assert_eq!("blue".parse::<Color>(), Ok(Color::Blue));
        assert_eq!("green".parse::<Color>(), Ok(Color::Green));
        assert!("Blue".parse::<Color>().is_err());
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Live {
            color: Color,
        }
        let text = toml::to_string(&Live {
            color: Color::Green,
        })
        .unwrap();
        assert_eq!(text, "color = \"green\"\n");
        assert_eq!(
            toml::from_str::<Live>("color = \"blue\"").unwrap(),
            Live { color: Color::Blue }
        );
        assert!(toml::from_str::<Live>("color = \"red\"").is_err());
    }
}
