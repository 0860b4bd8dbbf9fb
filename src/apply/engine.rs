//! The runtime `[runtime] kind` names: [`Docker`], one local engine, or [`Swarm`], a Swarm
//! manager, both over the Docker Engine API (bollard). The reconciler holds an [`Engine`]
//! and drives it through the [`Runtime`] trait.

use std::time::Duration;

use crate::apply::docker::Docker;
use crate::apply::swarm::Swarm;
use crate::config::{Config, RuntimeKind};
use crate::model::runtime::{
    ContainerSpec, Endpoints, ImageInfo, LocalImage, Runtime, RuntimeError,
};
use crate::model::{Instance, InstanceState};

/// The runtime `[runtime] kind` names.
#[derive(Debug, Clone)]
pub enum Engine {
    Docker(Docker),
    Swarm(Swarm),
}

impl Engine {
    /// Connects to the engine (or manager) of `cfg`.
    pub async fn connect(cfg: &Config) -> Result<Engine, RuntimeError> {
        let docker = Docker::connect_with(&cfg.docker).await?;
        Ok(match cfg.runtime {
            RuntimeKind::Docker => Engine::Docker(docker),
            RuntimeKind::Swarm => Engine::Swarm(Swarm::new(
                docker.client(),
                cfg.docker.host.clone(),
                cfg.swarm.clone(),
            )),
        })
    }
}

/// Every call goes to the engine in use.
macro_rules! delegate {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Engine::Docker(d) => d.$method($($arg),*).await,
            Engine::Swarm(s) => s.$method($($arg),*).await,
        }
    };
}

impl Runtime for Engine {
    async fn containers(&self, app: &str) -> Result<Vec<Instance>, RuntimeError> {
        delegate!(self.containers(app))
    }
    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        delegate!(self.image(reference))
    }
    async fn pull(&self, reference: &str) -> Result<(), RuntimeError> {
        delegate!(self.pull(reference))
    }
    async fn run(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        delegate!(self.run(spec))
    }
    async fn endpoints(&self, name: &str, port: u16) -> Result<Endpoints, RuntimeError> {
        delegate!(self.endpoints(name, port))
    }
    async fn state(&self, name: &str) -> Result<Option<InstanceState>, RuntimeError> {
        delegate!(self.state(name))
    }
    async fn logs(&self, name: &str, lines: usize) -> Result<String, RuntimeError> {
        delegate!(self.logs(name, lines))
    }
    async fn images(&self, repository: &str) -> Result<Vec<LocalImage>, RuntimeError> {
        delegate!(self.images(repository))
    }
    async fn remove_image(&self, id: &str) -> Result<(), RuntimeError> {
        delegate!(self.remove_image(id))
    }
    async fn registry_digest(&self, reference: &str) -> Option<String> {
        delegate!(self.registry_digest(reference))
    }
    async fn remove(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        delegate!(self.remove(name, grace))
    }
}
