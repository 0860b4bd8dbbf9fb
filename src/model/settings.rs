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
use sha2::{Digest, Sha256};

use crate::model::probe::Expect;

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
    /// The probe of `[health]` the container was gated with. Not a container setting, but a
    /// change of it is a new deployment all the same: the live container never answered the
    /// new probe.
    #[serde(skip_serializing_if = "Probe::is_default")]
    pub health: Probe,
}

/// What of `[health]` decides whether a container is healthy beyond its path: `host`,
/// `headers` and `expect`. Header values are kept as a digest (`sha256:` and 12 hex digits),
/// never in clear: a label is read by whoever may inspect the container, and a header may
/// carry a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Header name to the digest of its value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `health.expect` as the config writes it (`200, 300-399`); None for the default, any 2xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

impl Probe {
    pub fn new(host: Option<&str>, headers: &[(String, String)], expect: &Expect) -> Probe {
        Probe {
            host: host.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(name, value)| (name.clone(), digest(value)))
                .collect(),
            expect: (*expect != Expect::default()).then(|| expect.to_string()),
        }
    }

    fn is_default(&self) -> bool {
        *self == Probe::default()
    }
}

fn digest(value: &str) -> String {
    let hash = Sha256::digest(value.as_bytes());
    let hex: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
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
    /// per key as the config names it: `container.memory: 256 MiB -> 512 MiB`,
    /// `health.host: (unset) -> "api.example.com"`. Empty when they are the same.
    pub fn changes(&self, was: &Settings) -> Vec<String> {
        let (now, was) = (as_map(self), as_map(was));
        let keys: std::collections::BTreeSet<&String> = now.keys().chain(was.keys()).collect();
        keys.into_iter()
            .filter(|key| now.get(*key) != was.get(*key))
            .map(|key| {
                let show = |v: Option<&serde_json::Value>| match v {
                    None => "(unset)".to_string(),
                    Some(v) => shown(key, v),
                };
                format!(
                    "{}: {} -> {}",
                    full_key(key),
                    show(was.get(key)),
                    show(now.get(key))
                )
            })
            .collect()
    }

    /// Each container key that is set, as the config names it: `memory = 512 MiB`,
    /// `networks = ["backend"]`. Empty for a container that runs as the image says. The probe
    /// is left out: it is `[health]`'s.
    pub fn describe(&self) -> Vec<String> {
        as_map(self)
            .iter()
            .filter(|(key, _)| !key.starts_with("health."))
            .map(|(key, value)| format!("{} = {}", config_key(key), shown(key, value)))
            .collect()
    }
}

/// The config's full name of a label's key: `container.cpus`, `health.host`.
fn full_key(key: &str) -> String {
    if key.starts_with("health.") {
        key.to_owned()
    } else {
        format!("container.{}", config_key(key))
    }
}

/// The config's name of a label's key within `[container]`.
fn config_key(key: &str) -> &str {
    match key {
        "nano_cpus" => "cpus",
        key => key,
    }
}

/// A label's value as an operator reads it: bytes and billionths of a CPU in their units,
/// mounts in Compose's short form.
fn shown(key: &str, value: &serde_json::Value) -> String {
    match (key, value.as_u64()) {
        ("memory", Some(bytes)) => bytes_shown(bytes),
        ("nano_cpus", Some(nano)) => (nano as f64 / 1e9).to_string(),
        _ => match serde_json::from_value::<Vec<Mount>>(value.clone()) {
            Ok(mounts) if key == "volumes" => {
                let short: Vec<String> = mounts.iter().map(Mount::short).collect();
                format!("{short:?}")
            }
            _ => value.to_string(),
        },
    }
}

/// `536870912` as `512 MiB`; a size that is no whole number of a unit stays in bytes.
pub fn bytes_shown(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(size, _)| bytes >= *size && bytes.is_multiple_of(*size))
        .map(|(size, unit)| format!("{} {unit}", bytes / size))
        .unwrap_or_else(|| format!("{bytes} bytes"))
}

/// The label's keys, the probe's spelled out as `health.host`, `health.headers`, ...
fn as_map(settings: &Settings) -> serde_json::Map<String, serde_json::Value> {
    let mut map = match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    if let Some(serde_json::Value::Object(probe)) = map.remove("health") {
        for (key, value) in probe {
            map.insert(format!("health.{key}"), value);
        }
    }
    map
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
                "container.memory: 256 MiB -> 512 MiB".to_string(),
            ]
        );
        assert!(now.changes(&now).is_empty());
    }

    #[test]
    fn described_in_the_config_s_words_and_units() {
        let settings = Settings {
            memory: Some(1 << 30),
            nano_cpus: Some(1_500_000_000),
            volumes: vec![Mount {
                kind: MountKind::Bind,
                source: "/srv/uploads".into(),
                target: "/app/uploads".into(),
                read_only: true,
            }],
            ..Settings::default()
        };
        assert_eq!(
            settings.describe(),
            vec![
                "memory = 1 GiB".to_string(),
                "cpus = 1.5".to_string(),
                r#"volumes = ["/srv/uploads:/app/uploads:ro"]"#.to_string(),
            ]
        );
        assert!(Settings::default().describe().is_empty());
        assert_eq!(bytes_shown(100), "100 bytes");
        assert_eq!(bytes_shown(64 << 20), "64 MiB");
    }

    #[test]
    fn a_changed_probe_is_named_with_health_s_keys_and_no_header_value_in_clear() {
        let was = Settings::default();
        let headers = [("X-Token".to_string(), "s3cret".to_string())];
        let expect = Expect::new(vec![200..=200, 403..=403]).unwrap();
        let now = Settings {
            health: Probe::new(Some("api.example.com"), &headers, &expect),
            ..Settings::default()
        };
        let changes = now.changes(&was);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(changes[0], r#"health.expect: (unset) -> "200, 403""#);
        assert!(changes[1].starts_with(r#"health.headers: (unset) -> {"X-Token":"sha256:"#));
        assert_eq!(changes[2], r#"health.host: (unset) -> "api.example.com""#);
        assert!(!now.to_label().contains("s3cret"));
        let label = now.to_label();
        assert_eq!(Settings::from_label(Some(&label)), Ok(now.clone()));
        assert!(now.describe().is_empty(), "the probe is [health]'s");
        // The default probe is no key at all: containers started before it compare equal.
        let default = Probe::new(None, &[], &Expect::default());
        assert_eq!(default, Probe::default());
        let other = [("X-Token".to_string(), "other".to_string())];
        assert_ne!(
            Probe::new(None, &headers, &expect),
            Probe::new(None, &other, &expect)
        );
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
