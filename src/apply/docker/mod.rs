//! [`Docker`]: one local engine runs each color as one container, published on 127.0.0.1.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
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
use crate::model::settings::LABEL_SETTINGS;
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
        let port_key = format!("{}/tcp", spec.container_port);
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
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            labels: Some(spec.labels.clone()),
            env: Some(spec.env.clone()),
            exposed_ports: Some(vec![port_key]),
            host_config: Some(host_config),
            ..Default::default()
        };
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
            Err(e) => return Err(self.classify(format!("create container {}", spec.name), e)),
        };
        let started = self
            .client
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await;
        if let Err(e) = started {
            // The container is ours (just created, by id): leave nothing half-made behind.
            let remove = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = self
                .client
                .remove_container(&created.id, Some(remove))
                .await;
            return Err(self.classify(format!("start container {}", spec.name), e));
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
