//! The container runtime as the reconciler sees it: the [`Runtime`] trait, what it is asked
//! to start ([`ContainerSpec`]) and what it answers. Its implementations over the Docker
//! Engine API live in `crate::apply::docker` and `crate::apply::swarm`;
//! `crate::apply::engine` is whichever of them the config names.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::settings::Settings;
use super::{Instance, InstanceState};

/// Label naming the app a container belongs to.
pub const LABEL_APP: &str = "fieldtrack.app";
/// Label naming the color (`blue` / `green`).
pub const LABEL_COLOR: &str = "fieldtrack.color";
/// Label holding the full reference the container runs (`repo:tag`, `repo@sha256:…`).
pub const LABEL_IMAGE: &str = "fieldtrack.image";
/// Label holding the image exactly as the desired file wrote it (what the history records).
pub const LABEL_DESIRED: &str = "fieldtrack.desired";
/// Label holding the desired generation that started the container.
pub const LABEL_GENERATION: &str = "fieldtrack.generation";

/// What the runtime needs to start one color.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// `{app}-{color}`.
    pub name: String,
    /// Full pullable reference to run.
    pub image: String,
    pub labels: HashMap<String, String>,
    /// Published on 127.0.0.1 only.
    pub host_port: u16,
    /// The port the app listens on inside the container.
    pub container_port: u16,
    /// `KEY=value` pairs (from the env file). Never logged.
    pub env: Vec<String>,
    /// SIGTERM grace before SIGKILL, for a runtime that fixes it when it starts a color.
    pub stop_grace: Duration,
    /// Networks, volumes, limits ...; also in `labels` under [`super::settings::LABEL_SETTINGS`].
    pub settings: Settings,
}

/// Where a color answers: one address per replica that runs now, and how many it should
/// have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// `127.0.0.1:PORT` for a local container; a node's address and the published port for
    /// each running task of a Swarm service. Sorted.
    pub addrs: Vec<SocketAddr>,
    pub wanted: usize,
}

impl Endpoints {
    /// The one local container published on `127.0.0.1:port`.
    pub fn loopback(port: u16) -> Endpoints {
        Endpoints {
            addrs: vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)],
            wanted: 1,
        }
    }
}

/// A local image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    /// `repo@sha256:…` digests the image is known under in registries.
    pub repo_digests: Vec<String>,
}

/// A local image of a repository, for image retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub id: String,
    /// `repo:tag` names.
    pub tags: Vec<String>,
    /// `repo@sha256:…` names.
    pub digests: Vec<String>,
}

/// Errors of the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine does not answer (socket missing, connection refused, timeout).
    #[error("docker engine at {host} is unreachable: {}", causes(source))]
    Unreachable {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The TLS handshake with a `tcp://` engine failed: a certificate the other side does
    /// not accept. Retrying does not help.
    #[error("the TLS handshake with the docker engine at {host} failed ({detail}): check docker.tls_ca, tls_cert and tls_key against the engine's --tlscacert, --tlscert and --tlskey, and that its certificate names the address in docker.host")]
    Tls { host: String, detail: String },
    /// The registry has no such image: no such tag or repository (manifest unknown).
    #[error("image {reference} was not found in registry {registry} (no such tag or repository): {message}")]
    ImageNotFound {
        reference: String,
        registry: String,
        message: String,
    },
    /// The registry wants a login and fieldtrack had no credentials to give it.
    #[error("registry {registry} wants a login, and fieldtrack has no credentials for it ({why}): run `docker login {registry}` as the user that runs fieldtrack (root for the systemd unit), or set DOCKER_CONFIG for the unit to a folder whose config.json holds them. The registry said: {message}")]
    LoginRequired {
        registry: String,
        /// Where fieldtrack looked, or why the lookup failed.
        why: String,
        message: String,
    },
    /// The registry refused the credentials fieldtrack sent (wrong user or password, an
    /// expired token, or a user without pull access).
    #[error("registry {registry} refused the credentials fieldtrack sent (from {from}): check the user and password (or token) and that it may pull this repository, then run `docker login {registry}` again as the user that runs fieldtrack (root for the systemd unit), or set DOCKER_CONFIG for the unit to the right config. The registry said: {message}")]
    CredentialsRefused {
        registry: String,
        /// Where the credentials came from (a file or a credential helper).
        from: String,
        message: String,
    },
    /// The registry could not be reached while pulling.
    #[error("registry for {reference} is unreachable: {message}")]
    RegistryUnreachable { reference: String, message: String },
    /// The registry answered 5xx or 429 (a rate limit): it is failing or busy now, and
    /// the image may well be there. Retried with backoff, waiting at least `retry_after`
    /// when the registry named one (the engine passes it on only inside its message).
    #[error("registry {registry} is failing or busy for {reference} (retried): {message}")]
    RegistryBusy {
        reference: String,
        registry: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Any other refusal of the registry or the engine to pull.
    #[error("pulling {reference} from registry {registry} failed: {message}")]
    PullFailed {
        reference: String,
        registry: String,
        message: String,
    },
    /// A container that fieldtrack does not manage (no labels for the app) holds the name of
    /// the color to start; it is left alone.
    #[error("a container named {name} exists but is not managed by fieldtrack (no fieldtrack.app label); it was left alone: remove or rename it (docker rm -f {name}) once nothing depends on it, then deploy again")]
    NameTaken { name: String },
    /// Tasks of a Swarm service that is to be updated still run on reachable nodes: they
    /// hold the port the new tasks need.
    #[error("tasks of service {service} still run after their stop grace period and a minute more, holding its port: {tasks}; check `docker service ps {service}` and the nodes' engines")]
    TasksLinger { service: String, tasks: String },
    /// The engine refused one of the `[container]` settings (a network that does not exist,
    /// a bind mount whose host path is missing): a change of the config cures it, not a
    /// retry.
    #[error("the docker engine refused {key} for container {name}: {message}; fix {key} in the config or create what it names")]
    SettingRefused {
        name: String,
        /// The config key, with the value when one is at fault: `container.networks ("app")`.
        key: String,
        message: String,
    },
    /// Any other answer of the engine.
    #[error("failed to {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl RuntimeError {
    /// Worth retrying with backoff (the engine or registry may come back), as opposed to
    /// waiting for a new desired state.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RuntimeError::Unreachable { .. }
                | RuntimeError::RegistryUnreachable { .. }
                | RuntimeError::RegistryBusy { .. }
                | RuntimeError::TasksLinger { .. }
        )
    }

    /// How long the registry asked to be left alone, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RuntimeError::RegistryBusy { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The container runtime as the reconciler sees it.
pub trait Runtime: Send + Sync {
    /// Every container labelled `fieldtrack.app={app}`, running or not.
    fn containers(
        &self,
        app: &str,
    ) -> impl Future<Output = Result<Vec<Instance>, RuntimeError>> + Send;
    /// The local image, None when it is not present.
    fn image(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<ImageInfo>, RuntimeError>> + Send;
    /// Pulls an image from its registry, with the credentials of the Docker config.
    fn pull(&self, reference: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates and starts a container. A container of that name that already exists is an
    /// error ([`RuntimeError::NameTaken`]), never removed; one created here that fails to
    /// start is removed here.
    fn run(&self, spec: &ContainerSpec) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Where the color of container `name` (which publishes `port`) answers now.
    fn endpoints(
        &self,
        name: &str,
        port: u16,
    ) -> impl Future<Output = Result<Endpoints, RuntimeError>> + Send;
    /// The state of a container, None when it does not exist.
    fn state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<InstanceState>, RuntimeError>> + Send;
    /// The last `lines` lines of a container's stdout and stderr.
    fn logs(
        &self,
        name: &str,
        lines: usize,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// The local images of `repository`.
    fn images(
        &self,
        repository: &str,
    ) -> impl Future<Output = Result<Vec<LocalImage>, RuntimeError>> + Send;
    /// Removes a local image name (or id); not forced, so an image in use stays.
    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The digest a reference resolves to in its registry now, None when it cannot be asked.
    fn registry_digest(&self, reference: &str) -> impl Future<Output = Option<String>> + Send;
    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes a container; a missing one is fine.
    fn remove(
        &self,
        name: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

/// An error and its causes, one after the other: the transport's own words (a refused
/// connection, a TLS alert) are at the end of the chain.
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}
