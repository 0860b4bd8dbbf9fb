//! The Docker engine, through bollard as fieldtrack itself talks to it (connect, then
//! negotiate the API version): the test images pulled once, and the containers of the app's
//! own ready time (section b). The bench is threads, not tasks: every call blocks on a
//! runtime of the engine's own.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use futures_util::StreamExt;
use tokio::runtime::Runtime;

/// What went wrong talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The runtime the calls block on could not be built.
    #[error("cannot start the docker client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The engine did not answer, or no API version could be agreed with it.
    #[error("cannot connect to the docker engine at {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine refused or failed a call.
    #[error("docker {action}: {source}")]
    Call {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// A pull's progress ended in an error (the registry's words).
    #[error("docker pull {image}: {message}")]
    Pull { image: String, message: String },
}

/// A connected client of one engine.
pub struct Engine {
    runtime: Runtime,
    client: bollard::Docker,
}

impl Engine {
    /// Connects to `host` (`unix:///…` or `tcp://…`) and negotiates the API version, so that
    /// no timed call pays for either.
    pub fn connect(host: &str) -> Result<Engine, DockerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DockerError::Runtime)?;
        let client = runtime
            .block_on(async {
                bollard::Docker::connect_with_host(host)?
                    .negotiate_version()
                    .await
            })
            .map_err(|source| DockerError::Connect {
                host: host.to_string(),
                source,
            })?;
        Ok(Engine { runtime, client })
    }

    /// Pulls `image` (`repository:tag`), as `docker pull` does.
    pub fn pull(&self, image: &str) -> Result<(), DockerError> {
        let (repository, tag) = match image.rsplit_once(':') {
            // A colon after the last slash separates the tag; one before it is a registry's port.
            Some((repository, tag)) if !tag.contains('/') => (repository, tag),
            _ => (image, "latest"),
        };
        let options = CreateImageOptionsBuilder::new()
            .from_image(repository)
            .tag(tag)
            .build();
        self.runtime.block_on(async {
            let mut progress = self.client.create_image(Some(options), None, None);
            while let Some(item) = progress.next().await {
                let info = item.map_err(|source| DockerError::Call {
                    action: format!("pull {image}"),
                    source,
                })?;
                if let Some(message) = info.error_detail.and_then(|d| d.message) {
                    return Err(DockerError::Pull {
                        image: image.to_string(),
                        message,
                    });
                }
            }
            Ok(())
        })
    }

    /// Creates and starts container `name` from `image`, its `container_port` published on
    /// 127.0.0.1:`host_port`, with `labels`.
    pub fn run(
        &self,
        name: &str,
        image: &str,
        container_port: u16,
        host_port: u16,
        labels: &[(&str, &str)],
    ) -> Result<(), DockerError> {
        let port_key = format!("{container_port}/tcp");
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            exposed_ports: Some(vec![port_key.clone()]),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    port_key,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_string()),
                        host_port: Some(host_port.to_string()),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        self.runtime.block_on(async {
            self.client
                .create_container(Some(options), body)
                .await
                .map_err(|source| DockerError::Call {
                    action: format!("create container {name}"),
                    source,
                })?;
            self.client
                .start_container(name, None::<StartContainerOptions>)
                .await
                .map_err(|source| DockerError::Call {
                    action: format!("start container {name}"),
                    source,
                })
        })
    }

    /// Removes container `name`, running or not.
    pub fn remove(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        self.runtime
            .block_on(self.client.remove_container(name, Some(options)))
            .map_err(|source| DockerError::Call {
                action: format!("remove container {name}"),
                source,
            })
    }
}
