//! `[container]` settings on Swarm: what a service spec cannot carry is refused at load,
//! naming the key, instead of being dropped by the engine or failing only at deploy time.
//!
//! `crate::apply::swarm` maps the rest onto the service. What holds on Swarm and not on one
//! server, and is accepted (the operator's docs say so):
//! - `extra_hosts` with `host-gateway`: swarmkit's executor hands `ContainerSpec.Hosts` to
//!   the node's engine as the container's `ExtraHosts`, and the engine resolves
//!   `host-gateway` there (measured on 20.10, API 1.41: the node's docker0 address). It
//!   names the node the task runs on, not the host fieldtrack runs on.
//! - a bind mount (`/srv/api/sock:/run/api`) reads the path on the node that runs the task:
//!   it must exist on every node that may. Accepted, because shared storage mounted at the
//!   same path everywhere is common, and a node without it fails safely: Swarm rejects the
//!   task ("bind source path does not exist"), and the attempt fails at once quoting it,
//!   before any switch.
//! - a named volume is one volume per node, created by the node's local driver.
//!
//! Whether a network of `networks` is swarm-scoped (overlay) is known only to the manager:
//! `crate::apply::swarm` checks it before it creates or updates a service.

use crate::config::{quote, ConfigError, Ctx, RuntimeKind};
use crate::model::settings::Settings;

/// Networks every engine has, local to its node: no task of a service reaches another node
/// through them, and `host` would bypass the color's published port.
const NODE_LOCAL_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

/// Why a setting cannot be carried out by a Swarm service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwarmSettingError {
    /// `entrypoint = []`: Swarm replaces the image's ENTRYPOINT only with a non-empty
    /// `ContainerSpec.Command`; an empty one leaves the image's in place.
    #[error("an empty entrypoint has no meaning on Swarm, which keeps the image's ENTRYPOINT when a service gives none: name the program to run instead")]
    EmptyEntrypoint,
    /// A node-local network (`bridge`, `host`, `none`).
    #[error("{network:?} is local to each node and no Swarm service joins it: name a swarm-scoped network, created on a manager with `docker network create --driver overlay --attachable NAME`")]
    NodeLocalNetwork { network: String },
    /// `log_options` without `log_driver`: a service's `LogDriver` names both.
    #[error("on Swarm log options need a log_driver too: a service's LogDriver names the driver its options are for")]
    LogOptionsWithoutDriver,
    /// A tmpfs option Swarm's `TmpfsOptions` has no field for (it has `SizeBytes` and
    /// `Mode` up to API 1.45).
    #[error(
        "option {option:?} has no meaning on Swarm, whose tmpfs mounts take only size= and mode="
    )]
    TmpfsOption { option: String },
    /// `size=` that is not a byte count.
    #[error("size {size:?} is not a size in bytes with an optional k, m or g (a share of memory such as 50% has no meaning on Swarm)")]
    TmpfsSize { size: String },
    /// `mode=` that is not an octal mode.
    #[error("mode {mode:?} is not an octal file mode such as 1777")]
    TmpfsMode { mode: String },
}

/// A `tmpfs` entry as a Swarm mount takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmTmpfs {
    pub target: String,
    pub size_bytes: Option<i64>,
    /// The permission bits (`mode=1777` is 0o1777).
    pub mode: Option<i64>,
}

/// Reads one `tmpfs` entry, `target` or `target:options` (Compose's short form).
pub fn tmpfs(entry: &str) -> Result<SwarmTmpfs, SwarmSettingError> {
    let (target, options) = entry.split_once(':').unwrap_or((entry, ""));
    let mut tmpfs = SwarmTmpfs {
        target: target.to_string(),
        size_bytes: None,
        mode: None,
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("size", size)) => {
                tmpfs.size_bytes = Some(
                    size_in_bytes(size)
                        .ok_or_else(|| SwarmSettingError::TmpfsSize { size: size.into() })?,
                );
            }
            Some(("mode", mode)) => {
                tmpfs.mode = Some(
                    i64::from_str_radix(mode, 8)
                        .ok()
                        .filter(|m| (0..=0o7777).contains(m))
                        .ok_or_else(|| SwarmSettingError::TmpfsMode { mode: mode.into() })?,
                );
            }
            // A tmpfs is read-write unless told otherwise: nothing to carry.
            None if option == "rw" => {}
            _ => {
                return Err(SwarmSettingError::TmpfsOption {
                    option: option.to_string(),
                })
            }
        }
    }
    Ok(tmpfs)
}

/// `64m` is 67108864: Docker's units, powers of 1024.
fn size_in_bytes(size: &str) -> Option<i64> {
    let lower = size.to_ascii_lowercase();
    let (digits, shift) = match lower.as_bytes().last()? {
        b'k' => (&lower[..lower.len() - 1], 10),
        b'm' => (&lower[..lower.len() - 1], 20),
        b'g' => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok()?.checked_mul(1 << shift)
}

/// The first setting a Swarm service cannot carry, as (key, value, why).
fn refusal(settings: &Settings) -> Option<(String, String, SwarmSettingError)> {
    if settings.entrypoint.as_ref().is_some_and(Vec::is_empty) {
        return Some((
            "container.entrypoint".into(),
            "[]".into(),
            SwarmSettingError::EmptyEntrypoint,
        ));
    }
    for (i, network) in settings.networks.iter().enumerate() {
        if NODE_LOCAL_NETWORKS.contains(&network.as_str()) {
            return Some((
                format!("container.networks[{i}]"),
                quote(network),
                SwarmSettingError::NodeLocalNetwork {
                    network: network.clone(),
                },
            ));
        }
    }
    if settings.log_driver.is_none() && !settings.log_options.is_empty() {
        return Some((
            "container.log_options".into(),
            "(table)".into(),
            SwarmSettingError::LogOptionsWithoutDriver,
        ));
    }
    for (i, entry) in settings.tmpfs.iter().enumerate() {
        if let Err(e) = tmpfs(entry) {
            return Some((format!("container.tmpfs[{i}]"), quote(entry), e));
        }
    }
    None
}

/// Refuses, on Swarm, the first setting of `[container]` a service cannot carry.
pub(super) fn check(
    ctx: &Ctx<'_>,
    settings: &Settings,
    runtime: RuntimeKind,
) -> Result<(), ConfigError> {
    if runtime != RuntimeKind::Swarm {
        return Ok(());
    }
    match refusal(settings) {
        None => Ok(()),
        Some((key, value, why)) => Err(ctx.invalid(key, value, why.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::model::settings::{Mount, MountKind};

    fn ctx() -> Ctx<'static> {
        Ctx {
            path: Path::new("/etc/fieldtrack/fieldtrack.toml"),
            dir: Path::new("/etc/fieldtrack"),
        }
    }

    fn refused(settings: &Settings) -> String {
        check(&ctx(), settings, RuntimeKind::Swarm)
            .expect_err("refused on Swarm")
            .to_string()
    }

    /// Everything a service can carry passes, bind mounts and host-gateway included.
    #[test]
    fn settings_a_service_carries_are_accepted_on_swarm() {
        let settings = Settings {
            command: Some(vec!["bin/rails".into(), "server".into()]),
            entrypoint: Some(vec!["/docker-entrypoint".into()]),
            networks: vec!["backend".into()],
            volumes: vec![Mount {
                kind: MountKind::Bind,
                source: "/srv/api/sock".into(),
                target: "/run/api".into(),
                read_only: true,
            }],
            memory: Some(64 << 20),
            nano_cpus: Some(1_500_000_000),
            extra_hosts: vec!["host.docker.internal:host-gateway".into()],
            labels: BTreeMap::from([("team".into(), "api".into())]),
            user: Some("1000:1000".into()),
            log_driver: Some("json-file".into()),
            log_options: BTreeMap::from([("max-size".into(), "10m".into())]),
            stop_signal: Some("SIGQUIT".into()),
            init: true,
            read_only: true,
            tmpfs: vec![
                "/tmp".into(),
                "/run:size=64m,mode=1777".into(),
                "/x:rw".into(),
            ],
            ..Settings::default()
        };
        check(&ctx(), &settings, RuntimeKind::Swarm).expect("accepted on Swarm");
    }

    #[test]
    fn what_a_service_cannot_carry_is_refused_naming_the_key() {
        let cases = [
            (
                Settings {
                    entrypoint: Some(Vec::new()),
                    ..Settings::default()
                },
                "container.entrypoint: invalid value []: an empty entrypoint has no meaning on Swarm",
            ),
            (
                Settings {
                    networks: vec!["backend".into(), "bridge".into()],
                    ..Settings::default()
                },
                "container.networks[1]: invalid value \"bridge\": \"bridge\" is local to each node",
            ),
            (
                Settings {
                    log_options: BTreeMap::from([("max-size".into(), "10m".into())]),
                    ..Settings::default()
                },
                "container.log_options: invalid value (table): on Swarm log options need a log_driver",
            ),
            (
                Settings {
                    tmpfs: vec!["/tmp".into(), "/run:size=64m,noexec".into()],
                    ..Settings::default()
                },
                "container.tmpfs[1]: invalid value \"/run:size=64m,noexec\": option \"noexec\" has no meaning on Swarm",
            ),
            (
                Settings {
                    tmpfs: vec!["/run:size=50%".into()],
                    ..Settings::default()
                },
                "container.tmpfs[0]: invalid value \"/run:size=50%\": size \"50%\" is not a size",
            ),
            (
                Settings {
                    tmpfs: vec!["/run:mode=999".into()],
                    ..Settings::default()
                },
                "container.tmpfs[0]: invalid value \"/run:mode=999\": mode \"999\" is not an octal",
            ),
        ];
        for (settings, expected) in cases {
            let error = refused(&settings);
            assert!(
                error.starts_with(&format!("/etc/fieldtrack/fieldtrack.toml: {expected}")),
                "{error}"
            );
        }
    }

    /// Through the whole load: `Ctx::build` checks the settings once it knows the runtime.
    #[test]
    fn a_swarm_config_is_refused_at_load_naming_the_key() {
        let config = |runtime: &str, container: &str| {
            let text = format!(
                "repository = \"ghcr.io/fieldtrack-tech/api\"\n[runtime]\nkind = \"{runtime}\"\n[container]\n{container}"
            );
            Config::parse(&text, Path::new("/srv/api/fieldtrack.toml"), None)
        };
        let error = config("swarm", "networks = [\"bridge\"]\n")
            .expect_err("refused on Swarm")
            .to_string();
        assert!(
            error.starts_with(
                "/srv/api/fieldtrack.toml: container.networks[0]: invalid value \"bridge\": \"bridge\" is local to each node"
            ),
            "{error}"
        );
        config("docker", "networks = [\"bridge\"]\n").expect("Docker's own rules");
        let loaded = config(
            "swarm",
            "networks = [\"backend\"]\nmemory = \"64m\"\nextra_hosts = [\"db:host-gateway\"]\n",
        )
        .expect("a service carries these");
        assert_eq!(loaded.container.settings.memory, Some(64 << 20));
    }

    /// On one server the engine's own rules apply: nothing here is refused.
    #[test]
    fn nothing_is_refused_for_docker() {
        let settings = Settings {
            entrypoint: Some(Vec::new()),
            networks: vec!["bridge".into()],
            tmpfs: vec!["/run:noexec".into()],
            ..Settings::default()
        };
        check(&ctx(), &settings, RuntimeKind::Docker).expect("accepted on Docker");
    }

    #[test]
    fn tmpfs_entries_read_as_swarm_mounts() {
        assert_eq!(
            tmpfs("/tmp"),
            Ok(SwarmTmpfs {
                target: "/tmp".into(),
                size_bytes: None,
                mode: None
            })
        );
        assert_eq!(
            tmpfs("/run:size=64m,mode=1777"),
            Ok(SwarmTmpfs {
                target: "/run".into(),
                size_bytes: Some(64 << 20),
                mode: Some(0o1777)
            })
        );
        for (size, bytes) in [("100", 100), ("2k", 2048), ("1G", 1 << 30), ("3M", 3 << 20)] {
            assert_eq!(
                tmpfs(&format!("/t:size={size}")).map(|t| t.size_bytes),
                Ok(Some(bytes)),
                "{size}"
            );
        }
        for size in ["", "m", "1.5m", "-1", "1t", "99999999999999999999"] {
            assert_eq!(
                tmpfs(&format!("/t:size={size}")),
                Err(SwarmSettingError::TmpfsSize { size: size.into() }),
                "{size}"
            );
        }
    }
}
