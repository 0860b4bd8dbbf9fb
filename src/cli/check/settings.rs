//! `fieldtrack check` on `[container]`'s settings: what is in force, and the networks and
//! volumes it names that the engine does not have. Looked up first ([`lookup`]), then judged
//! by a pure function ([`judge`]).

use std::path::Path;

use super::{Finding, Level};
use crate::apply::docker::resources::NetworkInfo;
use crate::apply::docker::Docker;
use crate::config::{Config, RuntimeKind};
use crate::model::settings::{MountKind, Settings};

/// What the engine said about each network and named volume the settings name; `Err` holds
/// why it could not be asked.
#[derive(Debug, Default)]
pub struct Found {
    pub networks: Vec<(String, Result<Option<NetworkInfo>, String>)>,
    pub volumes: Vec<(String, Result<bool, String>)>,
}

/// Asks the engine about every network and named volume of `settings`.
pub async fn lookup(docker: &Docker, settings: &Settings) -> Found {
    let mut found = Found::default();
    for name in &settings.networks {
        let network = docker.network(name).await.map_err(|e| e.to_string());
        found.networks.push((name.clone(), network));
    }
    for mount in settings
        .volumes
        .iter()
        .filter(|m| m.kind == MountKind::Volume)
    {
        let exists = docker
            .volume_exists(&mount.source)
            .await
            .map_err(|e| e.to_string());
        found.volumes.push((mount.source.clone(), exists));
    }
    found
}

/// One finding for the settings in force, then one per network, named volume and bind mount
/// source: OK when it is there, a warning (the deploy would fail, or start on an empty volume)
/// when not. `found` is None when the engine could not be reached.
pub fn judge(cfg: &Config, found: Option<&Found>) -> Vec<Finding> {
    let settings = &cfg.container.settings;
    let described = settings.describe();
    let mut out = vec![Finding::new(
        Level::Ok,
        "container",
        if described.is_empty() {
            "runs as the image says: its own command, the default bridge network, no volumes, no memory or CPU limit".to_string()
        } else {
            format!("settings in force: {}", described.join(", "))
        },
    )];
    let swarm = cfg.runtime == RuntimeKind::Swarm;
    let Some(found) = found else {
        return out;
    };
    let host = &cfg.docker.host;
    for (name, network) in &found.networks {
        out.push(match network {
            Ok(None) => Finding::new(
                Level::Warn,
                "network",
                format!(
                    "{name} (container.networks) does not exist on the engine at {host}: the next deploy fails to start its container. Create it (`docker network create {}{name}`) or fix the name",
                    if swarm { "--driver overlay --attachable " } else { "" }
                ),
            ),
            Ok(Some(info)) if swarm && info.scope != "swarm" => Finding::new(
                Level::Warn,
                "network",
                format!(
                    "{name} (container.networks) is a {} network of scope {}: a Swarm service joins only swarm-scoped ones (`docker network create --driver overlay --attachable {name}`)",
                    info.driver, info.scope
                ),
            ),
            Ok(Some(info)) => Finding::new(
                Level::Ok,
                "network",
                format!("{name}: {} ({})", info.driver, info.scope),
            ),
            Err(e) => Finding::new(Level::Warn, "network", format!("{name}: cannot ask the engine: {e}")),
        });
    }
    for (name, exists) in &found.volumes {
        out.push(match exists {
            Ok(true) => Finding::new(Level::Ok, "volume", format!("{name} exists")),
            Ok(false) if swarm => Finding::new(
                Level::Warn,
                "volume",
                format!("{name} (container.volumes) does not exist on the manager at {host}; each node creates its own, empty, where a task first runs: a database's volume belongs to a pinned service, not a replicated one"),
            ),
            Ok(false) => Finding::new(
                Level::Warn,
                "volume",
                format!("{name} (container.volumes) does not exist on the engine at {host}: Docker creates it empty on the next deploy. If it should hold data already (uploads, a database's), the name is wrong"),
            ),
            Err(e) => Finding::new(Level::Warn, "volume", format!("{name}: cannot ask the engine: {e}")),
        });
    }
    if !swarm {
        for mount in settings
            .volumes
            .iter()
            .filter(|m| m.kind == MountKind::Bind)
        {
            if !Path::new(&mount.source).exists() {
                out.push(Finding::new(
                    Level::Warn,
                    "volume",
                    format!(
                        "bind mount source {} (container.volumes) does not exist on this host: the next deploy fails to start its container. Create it, owned by the app's user",
                        mount.source
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::settings::Mount;

    fn config(runtime: &str, settings: Settings) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fieldtrack.toml");
        let swarm = if runtime == "swarm" {
            "[runtime]\nkind = \"swarm\"\n"
        } else {
            ""
        };
        std::fs::write(&path, format!("repository = \"ghcr.io/acme/api\"\n{swarm}")).unwrap();
        let mut cfg = Config::load(&path).unwrap();
        cfg.container.settings = settings;
        cfg
    }

    fn mount(kind: MountKind, source: &str) -> Mount {
        Mount {
            kind,
            source: source.into(),
            target: "/data".into(),
            read_only: false,
        }
    }

    #[test]
    fn no_settings_say_the_container_runs_as_the_image_says() {
        let findings = judge(&config("docker", Settings::default()), None);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].level, Level::Ok);
        assert!(findings[0].message.contains("runs as the image says"));
    }

    #[test]
    fn a_missing_network_volume_or_bind_source_is_a_warning_naming_it() {
        let settings = Settings {
            networks: vec!["backend".into(), "gone".into()],
            volumes: vec![
                mount(MountKind::Volume, "pgdata"),
                mount(MountKind::Bind, "/nonexistent/uploads"),
            ],
            memory: Some(512 << 20),
            ..Settings::default()
        };
        let cfg = config("docker", settings);
        let bridge = NetworkInfo {
            driver: "bridge".into(),
            scope: "local".into(),
        };
        let found = Found {
            networks: vec![
                ("backend".into(), Ok(Some(bridge))),
                ("gone".into(), Ok(None)),
            ],
            volumes: vec![("pgdata".into(), Ok(false))],
        };
        let findings = judge(&cfg, Some(&found));
        let lines: Vec<String> = findings
            .iter()
            .map(|f| format!("{} {} {}", f.level, f.subject, f.message))
            .collect();
        assert!(lines[0].contains("memory = 512 MiB"), "{lines:#?}");
        assert!(
            lines[1].starts_with("OK network backend: bridge (local)"),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with("WARN network gone (container.networks) does not exist"),
            "{lines:#?}"
        );
        assert!(
            lines[3].starts_with("WARN volume pgdata (container.volumes) does not exist"),
            "{lines:#?}"
        );
        assert!(
            lines[4].starts_with("WARN volume bind mount source /nonexistent/uploads"),
            "{lines:#?}"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn on_swarm_a_local_network_is_a_warning() {
        let cfg = config(
            "swarm",
            Settings {
                networks: vec!["backend".into()],
                ..Settings::default()
            },
        );
        let found = Found {
            networks: vec![(
                "backend".into(),
                Ok(Some(NetworkInfo {
                    driver: "bridge".into(),
                    scope: "local".into(),
                })),
            )],
            volumes: vec![],
        };
        let findings = judge(&cfg, Some(&found));
        assert_eq!(findings[1].level, Level::Warn);
        assert!(
            findings[1].message.contains("--driver overlay"),
            "{findings:#?}"
        );
    }
}
