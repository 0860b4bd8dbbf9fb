//! [`Docker`]: one local engine runs each color as one container, published on 127.0.0.1.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HostConfig,
    HostConfigLogConfig, Mount as BollardMount, MountType, NetworkConnectRequest, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

pub mod client;
pub mod credentials;
pub mod registry;
pub mod resources;

use crate::config::DockerConfig;
use crate::model::runtime::{
    ContainerSpec, Endpoints, ImageInfo, LocalImage, Runtime, RuntimeError, LABEL_APP, LABEL_COLOR,
    LABEL_DESIRED, LABEL_GENERATION, LABEL_IMAGE,
};
use crate::model::settings::{MountKind, LABEL_SETTINGS};
use crate::model::{Instance, InstanceState};
use client::{classify, connect_client, not_found};
use registry::{login_for, pull_error, split_reference};

/// The Docker engine.
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
    host: String,
}

impl Docker {
    /// Connects to `host` (`unix:///…`, `tcp://…`, `http://…`, no TLS) and negotiates the
    /// API version.
    pub async fn connect(host: &str) -> Result<Docker, RuntimeError> {
        Docker::connect_with(&DockerConfig {
            host: host.to_string(),
            tls: None,
        })
        .await
    }

    /// Connects to `docker.host` (with TLS when the config gives certificates) and negotiates
    /// the API version.
    pub async fn connect_with(docker: &DockerConfig) -> Result<Docker, RuntimeError> {
        Ok(Docker {
            client: connect_client(docker).await?,
            host: docker.host.clone(),
        })
    }

    /// The connected client, for a [`super::Swarm`] over the same engine.
    pub(crate) fn client(&self) -> bollard::Docker {
        self.client.clone()
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.client.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    fn classify(&self, action: impl Into<String>, source: bollard::errors::Error) -> RuntimeError {
        classify(&self.host, action, source)
    }

    /// Removes a container `run` just created (ours, by id) that cannot run: nothing
    /// half-made is left behind. A failure here only leaves what the next pass removes.
    async fn remove_created(&self, id: &str) {
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = self.client.remove_container(id, Some(remove)).await;
    }
}

/// The create request for `spec`, and the networks to connect before the start (the
/// engine attaches a container to one network at creation).
///
/// The port is published on 127.0.0.1 whatever the networks: on a user network too, the
/// host port stays loopback's, so nginx reaches it and nothing else does. The operator's
/// labels go under fieldtrack's own, which always win.
fn create_body(spec: &ContainerSpec) -> (ContainerCreateBody, Vec<String>) {
    let settings = &spec.settings;
    let port_key = format!("{}/tcp", spec.container_port);
    let mut labels: HashMap<String, String> = settings
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(spec.labels.clone());
    let (first, later) = match settings.networks.split_first() {
        Some((first, later)) => (Some(first.clone()), later.to_vec()),
        None => (None, Vec::new()),
    };
    let log_config =
        (settings.log_driver.is_some() || !settings.log_options.is_empty()).then(|| {
            HostConfigLogConfig {
                typ: settings.log_driver.clone(),
                config: (!settings.log_options.is_empty()).then(|| {
                    settings
                        .log_options
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }),
            }
        });
    let mounts: Vec<BollardMount> = settings
        .volumes
        .iter()
        .map(|m| BollardMount {
            typ: Some(match m.kind {
                MountKind::Volume => MountType::VOLUME,
                MountKind::Bind => MountType::BIND,
            }),
            source: Some(m.source.clone()),
            target: Some(m.target.clone()),
            read_only: m.read_only.then_some(true),
            ..Default::default()
        })
        .collect();
    let tmpfs: HashMap<String, String> = settings
        .tmpfs
        .iter()
        .map(|t| match t.split_once(':') {
            Some((target, options)) => (target.to_string(), options.to_string()),
            None => (t.clone(), String::new()),
        })
        .collect();
    let host_config = HostConfig {
        port_bindings: Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_string()),
                host_port: Some(spec.host_port.to_string()),
            }]),
        )])),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        network_mode: first.clone(),
        mounts: (!mounts.is_empty()).then_some(mounts),
        memory: settings.memory.and_then(|m| i64::try_from(m).ok()),
        nano_cpus: settings.nano_cpus.and_then(|n| i64::try_from(n).ok()),
        extra_hosts: (!settings.extra_hosts.is_empty()).then(|| settings.extra_hosts.clone()),
        log_config,
        init: settings.init.then_some(true),
        readonly_rootfs: settings.read_only.then_some(true),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        labels: Some(labels),
        env: Some(spec.env.clone()),
        exposed_ports: Some(vec![port_key]),
        cmd: settings.command.clone(),
        entrypoint: settings.entrypoint.clone(),
        user: settings.user.clone(),
        stop_signal: settings.stop_signal.clone(),
        host_config: Some(host_config),
        networking_config: first.map(|network| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, EndpointSettings::default())])),
        }),
        ..Default::default()
    };
    (body, later)
}

/// The `[container]` key an engine's refusal to create or start `spec` is about, when its
/// message names one: a missing network, a bind mount's missing host path.
fn refused_setting(spec: &ContainerSpec, error: &bollard::errors::Error) -> Option<RuntimeError> {
    let bollard::errors::Error::DockerResponseServerError {
        status_code: 400..=499,
        message,
    } = error
    else {
        return None;
    };
    let settings = &spec.settings;
    let key = if let Some(network) = settings
        .networks
        .iter()
        .find(|n| message.contains(&format!("network {n}")))
    {
        format!("container.networks ({network:?})")
    } else if let Some(mount) = settings
        .volumes
        .iter()
        .find(|m| message.contains(&m.source) || message.contains(&m.target))
    {
        format!("container.volumes ({:?})", mount.short())
    } else if message.contains("network") && !settings.networks.is_empty() {
        "container.networks".to_string()
    } else {
        return None;
    };
    Some(RuntimeError::SettingRefused {
        name: spec.name.clone(),
        key,
        message: message.clone(),
    })
}

fn state_of(status: Option<ContainerStateStatusEnum>, exit_code: Option<i64>) -> InstanceState {
    match status {
        Some(ContainerStateStatusEnum::RUNNING) => InstanceState::Running,
        Some(ContainerStateStatusEnum::CREATED) => InstanceState::Created,
        Some(ContainerStateStatusEnum::RESTARTING) => InstanceState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            InstanceState::Exited {
                code: exit_code.unwrap_or(-1),
            }
        }
        Some(other) => InstanceState::Other(other.to_string()),
        None => InstanceState::Other("unknown".to_string()),
    }
}

/// Whether a port published on `ip` answers on loopback: published there, or on every address.
fn reaches_loopback(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => ip.is_empty(),
    }
}

impl Runtime for Docker {
    async fn containers(&self, app: &str) -> Result<Vec<Instance>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_APP}={app}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let listed = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| self.classify(format!("list containers of {app}"), e))?;
        let mut containers = Vec::with_capacity(listed.len());
        for summary in listed {
            let labels = summary.labels.unwrap_or_default();
            let name = summary
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let id = summary.id.unwrap_or_default();
            // The list has no exit code; inspect for it. A container removed meanwhile is skipped.
            let state = match self.state(&id).await? {
                Some(state) => state,
                None => continue,
            };
            let mut ports: Vec<u16> = summary
                .ports
                .unwrap_or_default()
                .iter()
                .filter(|p| p.ip.as_deref().is_none_or(reaches_loopback))
                .filter_map(|p| p.public_port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            containers.push(Instance {
                id,
                name,
                endpoints: ports
                    .iter()
                    .map(|p| std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), *p))
                    .collect(),
                drift: None,
                replicas: Vec::new(),
                color: labels.get(LABEL_COLOR).and_then(|c| c.parse().ok()),
                image: labels.get(LABEL_IMAGE).cloned().unwrap_or_default(),
                desired: labels.get(LABEL_DESIRED).cloned(),
                generation: labels.get(LABEL_GENERATION).cloned(),
                settings: labels.get(LABEL_SETTINGS).cloned(),
                state,
                ports,
            });
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        match self.client.inspect_image(reference).await {
            Ok(image) => Ok(Some(ImageInfo {
                id: image.id.unwrap_or_default(),
                repo_digests: image.repo_digests.unwrap_or_default(),
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(self.classify(format!("inspect image {reference}"), e)),
        }
    }

    async fn pull(&self, reference: &str) -> Result<(), RuntimeError> {
        let (repo, tag) = split_reference(reference);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repo)
            .tag(tag)
            .build();
        let login = login_for(reference).await;
        let mut stream = self
            .client
            .create_image(Some(options), None, login.credentials());
        while let Some(item) = stream.next().await {
            let message = match item {
                Ok(info) => match info.error_detail.and_then(|d| d.message) {
                    Some(message) => message,
                    None => continue,
                },
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => message,
                Err(bollard::errors::Error::DockerStreamError { error }) => error,
                Err(e) => return Err(self.classify(format!("pull {reference}"), e)),
            };
            return Err(pull_error(reference, &login, message));
        }
        Ok(())
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let (body, later_networks) = create_body(spec);
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = match self.client.create_container(Some(options), body).await {
            Ok(created) => created,
            // Someone else's container holds the name: never ours to remove.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                return Err(RuntimeError::NameTaken {
                    name: spec.name.clone(),
                })
            }
            Err(e) => {
                return Err(refused_setting(spec, &e).unwrap_or_else(|| {
                    self.classify(format!("create container {}", spec.name), e)
                }))
            }
        };
        for network in later_networks {
            let request = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: None,
            };
            if let Err(e) = self.client.connect_network(&network, request).await {
                self.remove_created(&created.id).await;
                return Err(match e {
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 400..=499,
                        message,
                    } => RuntimeError::SettingRefused {
                        name: spec.name.clone(),
                        key: format!("container.networks ({network:?})"),
                        message,
                    },
                    e => self.classify(format!("connect {} to network {network}", spec.name), e),
                });
            }
        }
        let started = self
            .client
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await;
        if let Err(e) = started {
            self.remove_created(&created.id).await;
            return Err(refused_setting(spec, &e)
                .unwrap_or_else(|| self.classify(format!("start container {}", spec.name), e)));
        }
        Ok(())
    }

    async fn endpoints(&self, _name: &str, port: u16) -> Result<Endpoints, RuntimeError> {
        Ok(Endpoints::loopback(port))
    }

    async fn state(&self, name: &str) -> Result<Option<InstanceState>, RuntimeError> {
        match self
            .client
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(inspect) => {
                let state = inspect.state.unwrap_or_default();
                Ok(Some(state_of(state.status, state.exit_code)))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(self.classify(format!("inspect container {name}"), e)),
        }
    }

    async fn logs(&self, name: &str, lines: usize) -> Result<String, RuntimeError> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.client.logs(name, Some(options));
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => text.push_str(&chunk.to_string()),
                Err(e) if not_found(&e) => break,
                Err(e) => return Err(self.classify(format!("read logs of {name}"), e)),
            }
        }
        Ok(text)
    }

    async fn images(&self, repository: &str) -> Result<Vec<LocalImage>, RuntimeError> {
        let filters = HashMap::from([("reference", vec![repository.to_string()])]);
        let options = ListImagesOptionsBuilder::new().filters(&filters).build();
        let listed = self
            .client
            .list_images(Some(options))
            .await
            .map_err(|e| self.classify(format!("list images of {repository}"), e))?;
        // The reference filter also matches by name pattern; keep exact repository matches.
        let ours = |name: &String| {
            name.strip_prefix(repository)
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
        };
        Ok(listed
            .into_iter()
            .map(|image| LocalImage {
                id: image.id,
                tags: image.repo_tags.into_iter().filter(ours).collect(),
                digests: image.repo_digests.into_iter().filter(ours).collect(),
            })
            .filter(|image| !image.tags.is_empty() || !image.digests.is_empty())
            .collect())
    }

    async fn remove_image(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .client
            .remove_image(
                id,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(self.classify(format!("remove image {id}"), e)),
        }
    }

    async fn registry_digest(&self, reference: &str) -> Option<String> {
        match self
            .client
            .inspect_registry_image(reference, login_for(reference).await.credentials())
            .await
        {
            Ok(inspect) => inspect.descriptor.digest,
            Err(e) => {
                tracing::debug!(%reference, error = %e, "cannot ask the registry for the digest");
                None
            }
        }
    }

    async fn remove(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let stop = StopContainerOptionsBuilder::new().t(secs).build();
        match self.client.stop_container(name, Some(stop)).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => return Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(self.classify(format!("stop container {name}"), e)),
        }
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.client.remove_container(name, Some(remove)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            // 409: removal already in progress.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(self.classify(format!("remove container {name}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::settings::{Mount, Settings};
    use std::collections::BTreeMap;

    fn spec(settings: Settings) -> ContainerSpec {
        ContainerSpec {
            name: "api-green".into(),
            image: "registry/api:v2".into(),
            labels: HashMap::from([
                ("fieldtrack.app".to_string(), "api".to_string()),
                ("fieldtrack.settings".to_string(), settings.to_label()),
            ]),
            host_port: 3002,
            container_port: 8080,
            env: vec!["A=1".into()],
            stop_grace: Duration::from_secs(10),
            settings,
        }
    }

    #[test]
    fn no_settings_is_the_container_of_before() {
        let (body, later) = create_body(&spec(Settings::default()));
        let host = body.host_config.clone().unwrap();
        assert!(later.is_empty());
        assert_eq!(body.cmd, None);
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.user, None);
        assert_eq!(body.networking_config, None);
        assert_eq!(host.network_mode, None);
        assert_eq!(host.mounts, None);
        assert_eq!(host.memory, None);
        assert_eq!(host.init, None);
        assert_eq!(host.tmpfs, None);
        assert_eq!(host.log_config, None);
        let binding = &host.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("3002"));
    }

    #[test]
    fn every_setting_lands_in_the_create_body() {
        let settings = Settings {
            command: Some(vec!["serve".into(), "--fast".into()]),
            entrypoint: Some(vec![]),
            networks: vec!["front".into(), "back".into(), "db".into()],
            volumes: vec![
                Mount {
                    kind: MountKind::Volume,
                    source: "uploads".into(),
                    target: "/app/uploads".into(),
                    read_only: false,
                },
                Mount {
                    kind: MountKind::Bind,
                    source: "/srv/api/sock".into(),
                    target: "/run/api".into(),
                    read_only: true,
                },
            ],
            memory: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            extra_hosts: vec!["host.docker.internal:host-gateway".into()],
            labels: BTreeMap::from([
                ("team".to_string(), "api".to_string()),
                // Refused at load; if one got here, fieldtrack's own still wins.
                ("fieldtrack.app".to_string(), "other".to_string()),
            ]),
            user: Some("1000:1000".into()),
            log_driver: Some("json-file".into()),
            log_options: BTreeMap::from([("max-size".to_string(), "10m".to_string())]),
            stop_signal: Some("SIGQUIT".into()),
            init: true,
            read_only: true,
            tmpfs: vec!["/tmp".into(), "/run/app:size=64m".into()],
            ..Settings::default()
        };
        let (body, later) = create_body(&spec(settings));
        let host = body.host_config.clone().unwrap();
        assert_eq!(
            body.cmd,
            Some(vec!["serve".to_string(), "--fast".to_string()])
        );
        assert_eq!(body.entrypoint, Some(vec![]));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGQUIT"));
        let labels = body.labels.unwrap();
        assert_eq!(labels["team"], "api");
        assert_eq!(labels["fieldtrack.app"], "api");
        assert!(labels.contains_key("fieldtrack.settings"));
        assert_eq!(host.network_mode.as_deref(), Some("front"));
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(endpoints.keys().collect::<Vec<_>>(), vec!["front"]);
        assert_eq!(later, vec!["back".to_string(), "db".to_string()]);
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].source.as_deref(), Some("uploads"));
        assert_eq!(mounts[0].read_only, None);
        assert_eq!(mounts[1].typ, Some(MountType::BIND));
        assert_eq!(mounts[1].target.as_deref(), Some("/run/api"));
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(
            host.extra_hosts,
            Some(vec!["host.docker.internal:host-gateway".to_string()])
        );
        let log = host.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.unwrap()["max-size"], "10m");
        assert_eq!(host.init, Some(true));
        assert_eq!(host.readonly_rootfs, Some(true));
        let tmpfs = host.tmpfs.unwrap();
        assert_eq!(tmpfs["/tmp"], "");
        assert_eq!(tmpfs["/run/app"], "size=64m");
        // On a user network too, the port is loopback's alone.
        let binding = &host.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn an_engine_refusal_names_the_setting_it_is_about() {
        let spec = spec(Settings {
            networks: vec!["app".into()],
            volumes: vec![Mount {
                kind: MountKind::Bind,
                source: "/srv/missing".into(),
                target: "/data".into(),
                read_only: false,
            }],
            ..Settings::default()
        });
        let refusal = |status_code: u16, message: &str| {
            refused_setting(
                &spec,
                &bollard::errors::Error::DockerResponseServerError {
                    status_code,
                    message: message.into(),
                },
            )
            .map(|e| e.to_string())
        };
        let network = refusal(404, "network app not found").unwrap();
        assert!(
            network.contains("container.networks (\"app\")"),
            "{network}"
        );
        assert!(network.contains("api-green"), "{network}");
        let mount = refusal(
            400,
            "invalid mount config for type \"bind\": bind source path does not exist: /srv/missing",
        )
        .unwrap();
        assert!(
            mount.contains("container.volumes (\"/srv/missing:/data\")"),
            "{mount}"
        );
        assert_eq!(refusal(404, "No such image: registry/api:v2"), None);
        assert_eq!(refusal(500, "network app not found"), None);
    }
}
