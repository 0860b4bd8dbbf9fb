//! The serde mirror of `fieldtrack.toml`: it only parses.
//!
//! Every key is optional here so that a missing key and a defaulted key look the same;
//! defaults, ranges and cross-field rules are applied once, in [`super::Config::parse`].
//! Numbers are read as `i64` rather than `u16`/`u32` so that an out-of-range port or a
//! negative count reaches validation, which names the key, instead of failing inside serde
//! with a generic "expected u16".

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub app: Option<String>,
    pub repository: Option<String>,
    pub allowed_repositories: Option<Vec<String>>,
    pub desired_file: Option<String>,
    pub history_file: Option<String>,
    pub history_limit: Option<i64>,
    pub state_dir: Option<String>,
    pub public_dir: Option<String>,
    pub container: Option<RawContainer>,
    pub health: Option<RawHealth>,
    pub nginx: Option<RawNginx>,
    pub rollout: Option<RawRollout>,
    pub docker: Option<RawDocker>,
    pub runtime: Option<RawRuntime>,
    pub swarm: Option<RawSwarm>,
    pub hooks: Option<RawHooks>,
    pub notify: Option<RawNotify>,
    pub metrics: Option<RawMetrics>,
    pub canary: Option<RawCanary>,
}

/// `[canary]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub steps: Option<Vec<RawCanaryStep>>,
    pub max_error_rate: Option<f64>,
    pub min_requests: Option<i64>,
    pub max_latency_ratio: Option<f64>,
}

/// One of `canary.steps`: `{ weight = 10, pause = "2m" }` (`pause = "manual"` waits for
/// `fieldtrack promote`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanaryStep {
    pub weight: i64,
    pub pause: String,
}

/// `[container]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainer {
    pub port: Option<i64>,
    pub blue_port: Option<i64>,
    pub green_port: Option<i64>,
    pub env_file: Option<String>,
    pub stop_timeout: Option<RawDuration>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
    pub allow_host_mounts: Option<bool>,
    pub memory: Option<RawScalar>,
    pub cpus: Option<RawScalar>,
    pub extra_hosts: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub user: Option<String>,
    pub log_driver: Option<String>,
    pub log_options: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<RawScalar>,
    pub init: Option<bool>,
    pub read_only: Option<bool>,
    pub tmpfs: Option<Vec<String>>,
}

/// `[health]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<RawDuration>,
    pub attempts: Option<i64>,
    pub timeout: Option<RawDuration>,
    pub host: Option<String>,
    /// Header name -> value; sorted by name, so duplicates in another case are found.
    pub headers: Option<BTreeMap<String, String>>,
    pub expect: Option<Vec<RawStatus>>,
}

/// One of `health.expect`, as written: a code (`200`) or a string (`"300-399"`, `"2xx"`).
/// Its own type so that a wrong type says what is expected rather than "data did not match
/// any variant".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;

        impl Visitor<'_> for StatusVisitor {
            type Value = RawStatus;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code (200) or a range of them (\"300-399\", \"2xx\")")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(StatusVisitor)
    }
}

/// `[nginx]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNginx {
    pub upstream_file: Option<String>,
    pub upstream_name: Option<String>,
    pub test_command: Option<Vec<String>>,
    pub reload_command: Option<Vec<String>>,
    pub pid_file: Option<String>,
    pub upstream_keepalive: Option<i64>,
    pub access_log: Option<String>,
}

/// `[rollout]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub drain: Option<RawDuration>,
    pub auto_rollback: Option<bool>,
    pub resync: Option<RawDuration>,
    pub keep_images: Option<bool>,
    pub keep_previous: Option<RawDuration>,
    pub promotion: Option<String>,
}

/// `[docker]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocker {
    pub host: Option<String>,
    pub allow_plain_tcp: Option<bool>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

/// `[runtime]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub kind: Option<String>,
}

/// `[swarm]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwarm {
    pub replicas: Option<i64>,
    pub constraints: Option<Vec<String>>,
    pub max_replicas_per_node: Option<i64>,
}

/// `[hooks]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub pre_switch: Option<Vec<String>>,
    pub post_deploy: Option<Vec<String>>,
    pub hook_timeout: Option<RawDuration>,
}

/// `[notify]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub webhook: Option<String>,
    pub allow_http: Option<bool>,
    pub timeout: Option<RawDuration>,
    pub email: Option<RawEmail>,
}

/// `[notify.email]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    pub host: Option<String>,
    pub port: Option<i64>,
    pub security: Option<String>,
    pub tls_ca: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub events: Option<Vec<String>>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

/// A duration exactly as written. Its own type only so that `interval = 3` (a bare number)
/// is reported as "expected a duration string with a unit" rather than "expected a string".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDuration(pub String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, like \"3s\" or \"500ms\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A number or a string, as Compose takes `mem_limit = 536870912` or `"512m"`, `cpus = 1.5`
/// or `"1.5"`, `stop_signal = "SIGQUIT"` or `3`. Validation reads it per key.
#[derive(Debug, Clone, PartialEq)]
pub enum RawScalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for RawScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawScalar::Int(n) => write!(f, "{n}"),
            RawScalar::Float(x) => write!(f, "{x}"),
            RawScalar::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = RawScalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawScalar, E> {
                Ok(RawScalar::Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawScalar, E> {
                Ok(i64::try_from(v).map_or(RawScalar::Float(v as f64), RawScalar::Int))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawScalar, E> {
                Ok(RawScalar::Float(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawScalar, E> {
                Ok(RawScalar::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_none() {
        let raw: RawConfig = toml::from_str("").expect("empty parses");
        assert!(raw.app.is_none());
        assert!(raw.repository.is_none());
        assert!(raw.container.is_none());
    }

    #[test]
    fn duration_is_kept_verbatim() {
        let raw: RawConfig = toml::from_str("[health]\ninterval = \"3 parsecs\"\n").unwrap();
        let interval = raw.health.unwrap().interval.unwrap();
        assert_eq!(interval, RawDuration("3 parsecs".into()));
    }

    #[test]
    fn duration_as_number_says_a_unit_is_needed() {
        let err = toml::from_str::<RawConfig>("[health]\ninterval = 3\n").unwrap_err();
        assert!(
            err.message().contains("a duration string with a unit"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn every_table_denies_unknown_fields() {
        for section in [
            "container",
            "health",
            "nginx",
            "rollout",
            "docker",
            "hooks",
            "notify",
            "notify.email",
            "metrics",
        ] {
            let text = format!("[{section}]\nbogus = 1\n");
            let err = toml::from_str::<RawConfig>(&text).unwrap_err();
            assert!(
                err.message().contains("unknown field `bogus`"),
                "{section}: {}",
                err.message()
            );
        }
        let err = toml::from_str::<RawConfig>("bogus = 1\n").unwrap_err();
        assert!(err.message().contains("unknown field `bogus`"));
    }

    #[test]
    fn out_of_range_numbers_reach_validation() {
        let raw: RawConfig = toml::from_str("[container]\nport = 70000\n").unwrap();
        assert_eq!(raw.container.unwrap().port, Some(70000));
    }
}
