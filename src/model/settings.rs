//! [`Settings`]: how a color's container runs, beyond its image, its port and its env file.
//! They come from `[container]` (`crate::config`), the runtimes map them onto a container
//! (`crate::apply::docker`) or a service (`crate::apply::swarm`), and each container carries
//! them in its [`LABEL_SETTINGS`] label, so that a change in the config is seen as drift and
//! named key by key ([`Settings::changes`]).
//!
//! The names and shapes are Compose's where they fit (`command`, `entrypoint`, `networks`,
//! `volumes`, `extra_hosts`, `labels`, `user`, `stop_signal`, `init`, `read_only`, `tmpfs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label holding a container's [`Settings`], as compact JSON.
pub const LABEL_SETTINGS: &str = "fieldtrack.settings";

/// How a color's container runs. `Default` is a container as fieldtrack ran it before these
/// settings existed: a container without the label compares equal to an empty `[container]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Replaces the image's `CMD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's `ENTRYPOINT`; an empty list clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Existing networks the container joins, by name. The first is where it is attached at
    /// creation; the others are connected before it starts. Empty: the default bridge.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Mount>,
    /// Memory limit in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU limit in billionths of a CPU (`cpus = 1.5` is 1_500_000_000), Docker's `NanoCpus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    /// `name:address` entries for `/etc/hosts`; the address may be `host-gateway`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// The operator's labels; never a `fieldtrack.` one (refused at load).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `user`, `user:group`, `uid` or `uid:gid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub log_options: BTreeMap<String, String>,
    /// The signal that stops the container (`SIGTERM` when unset), e.g. `SIGQUIT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Runs an init process as PID 1 (Docker's `--init`).
    #[serde(skip_serializing_if = "is_false")]
    pub init: bool,
    /// Mounts the container's root file system read-only.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `target` or `target:options` (`/tmp:size=64m,mode=1777`), Compose's short form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// One of `volumes`: a named volume or a bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// The volume's name, or the host path of a bind mount (absolute once loaded).
    pub source: String,
    /// The absolute path inside the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Volume,
    Bind,
}

impl Mount {
    /// Compose's short form, `source:target[:ro]`.
    pub fn short(&self) -> String {
        let ro = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{ro}", self.source, self.target)
    }
}

impl Settings {
    /// The label's value: compact JSON, keys in a fixed order, empty keys left out.
    pub fn to_label(&self) -> String {
        serde_json::to_string(self).expect("settings serialize to JSON")
    }

    /// A container's settings from its label; a container without one ran with none. A label
    /// fieldtrack cannot read (written by hand, say) is `Err` with the label's text, which
    /// the caller treats as drift.
    pub fn from_label(label: Option<&str>) -> Result<Settings, String> {
        match label {
            None => Ok(Settings::default()),
            Some(text) => serde_json::from_str(text).map_err(|_| text.to_string()),
        }
    }

    /// What differs from `was` (a container's settings) to `self` (the config's), one entry
    /// per key: `container.memory: 268435456 -> 536870912`. Empty when they are the same.
    pub fn changes(&self, was: &Settings) -> Vec<String> {
        let (now, was) = (as_map(self), as_map(was));
        let keys: std::collections::BTreeSet<&String> = now.keys().chain(was.keys()).collect();
        keys.into_iter()
            .filter(|key| now.get(*key) != was.get(*key))
            .map(|key| {
                // The label keeps Docker's nano CPUs; the operator wrote `cpus`.
                let cpus = key.as_str() == "nano_cpus";
                let show = |v: Option<&serde_json::Value>| match v {
                    None => "(unset)".to_string(),
                    Some(v) => match v.as_u64().filter(|_| cpus) {
                        Some(nano) => (nano as f64 / 1e9).to_string(),
                        None => v.to_string(),
                    },
                };
                let name = if cpus { "cpus" } else { key.as_str() };
                format!(
                    "container.{name}: {} -> {}",
                    show(was.get(key)),
                    show(now.get(key))
                )
            })
            .collect()
    }
}

fn as_map(settings: &Settings) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_settings_is_an_empty_label_and_a_missing_label_is_no_settings() {
        assert_eq!(Settings::default().to_label(), "{}");
        assert_eq!(Settings::from_label(None), Ok(Settings::default()));
        assert_eq!(Settings::from_label(Some("{}")), Ok(Settings::default()));
    }

    #[test]
    fn settings_go_through_their_label_unchanged() {
        let settings = Settings {
            command: Some(vec!["bin/rails".into(), "server".into()]),
            networks: vec!["backend".into()],
            volumes: vec![Mount {
                kind: MountKind::Volume,
                source: "uploads".into(),
                target: "/app/uploads".into(),
                read_only: false,
            }],
            memory: Some(512 << 20),
            labels: BTreeMap::from([("team".into(), "web".into())]),
            init: true,
            ..Settings::default()
        };
        let label = settings.to_label();
        assert_eq!(Settings::from_label(Some(&label)), Ok(settings));
    }

    #[test]
    fn changes_name_each_key_that_differs() {
        let was = Settings {
            memory: Some(256 << 20),
            user: Some("app".into()),
            ..Settings::default()
        };
        let now = Settings {
            memory: Some(512 << 20),
            user: Some("app".into()),
            init: true,
            ..Settings::default()
        };
        assert_eq!(
            now.changes(&was),
            vec![
                "container.init: (unset) -> true".to_string(),
                "container.memory: 268435456 -> 536870912".to_string(),
            ]
        );
        assert!(now.changes(&now).is_empty());
    }

    #[test]
    fn a_cpu_limit_is_shown_as_the_cpus_written() {
        let was = Settings {
            nano_cpus: Some(1_500_000_000),
            ..Settings::default()
        };
        let now = Settings {
            nano_cpus: Some(500_000_000),
            ..Settings::default()
        };
        assert_eq!(
            now.changes(&was),
            vec!["container.cpus: 1.5 -> 0.5".to_string()]
        );
        assert_eq!(
            Settings::default().changes(&was),
            vec!["container.cpus: 1.5 -> (unset)".to_string()]
        );
    }

    #[test]
    fn an_unreadable_label_is_an_error_holding_its_text() {
        assert_eq!(
            Settings::from_label(Some("not json")),
            Err("not json".to_string())
        );
    }
}
