//! The container runtime: the [`Runtime`] trait the reconciler drives, and [`Docker`], its
//! implementation over the Docker Engine API (bollard).
//!
//! The API version is negotiated with the engine rather than pinned: Debian's engine speaks
//! 1.41 while production hosts run newer ones.

use std::collections::HashMap;
use std::future::Future;
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

use crate::apply::credentials::{self, Login};
use crate::observe::{Container, ContainerState};

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
}

/// Whether a port published on `ip` answers on loopback: published there, or on every address.
fn reaches_loopback(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => ip.is_empty(),
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
    #[error("docker engine at {host} is unreachable: {source}")]
    Unreachable {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
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
            RuntimeError::Unreachable { .. } | RuntimeError::RegistryUnreachable { .. }
        )
    }
}

/// The container runtime as the reconciler sees it.
pub trait Runtime: Send + Sync {
    /// Every container labelled `fieldtrack.app={app}`, running or not.
    fn containers(
        &self,
        app: &str,
    ) -> impl Future<Output = Result<Vec<Container>, RuntimeError>> + Send;
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
    /// The state of a container, None when it does not exist.
    fn state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ContainerState>, RuntimeError>> + Send;
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

/// The Docker engine.
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
    host: String,
}

impl Docker {
    /// Connects to `host` (`unix:///…`, `tcp://…`, `http://…`) and negotiates the API version.
    pub async fn connect(host: &str) -> Result<Docker, RuntimeError> {
        let unreachable = |source| RuntimeError::Unreachable {
            host: host.to_string(),
            source,
        };
        let client = bollard::Docker::connect_with_host(host).map_err(unreachable)?;
        let client = client.negotiate_version().await.map_err(unreachable)?;
        Ok(Docker {
            client,
            host: host.to_string(),
        })
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.client.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    fn classify(&self, action: impl Into<String>, source: bollard::errors::Error) -> RuntimeError {
        use bollard::errors::Error as E;
        match source {
            // HyperLegacyError is how the client reports a failed transport: connection
            // refused, socket gone, the engine hanging up.
            E::IOError { .. }
            | E::HyperResponseError { .. }
            | E::HyperLegacyError { .. }
            | E::RequestTimeoutError
            | E::SocketNotFoundError(_) => RuntimeError::Unreachable {
                host: self.host.clone(),
                source,
            },
            source => RuntimeError::Api {
                action: action.into(),
                source,
            },
        }
    }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn state_of(status: Option<ContainerStateStatusEnum>, exit_code: Option<i64>) -> ContainerState {
    match status {
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            ContainerState::Exited {
                code: exit_code.unwrap_or(-1),
            }
        }
        Some(other) => ContainerState::Other(other.to_string()),
        None => ContainerState::Other("unknown".to_string()),
    }
}

/// The registry part of a reference, as the Docker config keys its credentials.
pub(crate) fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "https://index.docker.io/v1/".to_string(),
    }
}

/// The registry as messages and `docker login` name it: `docker.io` for Docker Hub.
fn registry_shown(reference: &str) -> String {
    match registry_of(reference) {
        server if server.starts_with("https://") => "docker.io".to_string(),
        server => server,
    }
}

/// Credentials for the registry of `reference` from the Docker config. A lookup that fails
/// (a broken helper, an unreadable config) is logged, without any secret or helper output,
/// and the pull goes anonymous, since public images need none; the pull's error then says
/// why there were no credentials.
async fn login_for(reference: &str) -> Login {
    let server = registry_of(reference);
    match credentials::lookup(&server, &credentials::Source::from_env()).await {
        Ok(login) => login,
        Err(e) => {
            tracing::warn!(registry = %server, error = %e, "cannot read registry credentials; pulling anonymously");
            Login::Missing { why: e.to_string() }
        }
    }
}

/// Splits `repo:tag` / `repo@digest` into what the create-image API takes.
fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((repo, digest)) = reference.split_once('@') {
        // A tag before the digest is ignored by the engine when a digest is given.
        let repo = match repo.rfind(':') {
            Some(i) if !repo[i..].contains('/') => &repo[..i],
            _ => repo,
        };
        return (repo, digest);
    }
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    }
}

impl Runtime for Docker {
    async fn containers(&self, app: &str) -> Result<Vec<Container>, RuntimeError> {
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
            containers.push(Container {
                id,
                name,
                color: labels.get(LABEL_COLOR).and_then(|c| c.parse().ok()),
                image: labels.get(LABEL_IMAGE).cloned().unwrap_or_default(),
                desired: labels.get(LABEL_DESIRED).cloned(),
                generation: labels.get(LABEL_GENERATION).cloned(),
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

    async fn state(&self, name: &str) -> Result<Option<ContainerState>, RuntimeError> {
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

/// Sorts a pull failure by what the operator must do: log in (no credentials, or refused
/// ones), fix the image name, or wait for the registry (retried); anything else waits for a
/// new desired state too. `login` is what was sent, which tells "wants a login" apart from
/// "refused the login".
fn pull_error(reference: &str, login: &Login, message: String) -> RuntimeError {
    // The reference's own words (a repository named `denied`) must not steer the sort.
    let lower = message
        .to_lowercase()
        .replace(&reference.to_lowercase(), "");
    let has = |phrases: &[&str]| phrases.iter().any(|p| lower.contains(p));
    let (reference, registry) = (reference.to_string(), registry_shown(reference));
    // Docker Hub answers a missing repository as it answers a private one ("pull access
    // denied ... may require 'docker login'"): without credentials that is a login to give.
    if has(&[
        "no basic auth credentials",
        "unauthorized",
        "authentication required",
        "denied",
        "docker login",
    ]) {
        return match login {
            Login::Found { from, .. } => RuntimeError::CredentialsRefused {
                registry,
                from: from.clone(),
                message,
            },
            Login::Missing { why } => RuntimeError::LoginRequired {
                registry,
                why: why.clone(),
                message,
            },
        };
    }
    if has(&[
        "not found",
        "manifest unknown",
        "name unknown",
        "does not exist",
    ]) {
        RuntimeError::ImageNotFound {
            reference,
            registry,
            message,
        }
    } else if has(&[
        "connection refused",
        "connection reset",
        "no such host",
        "no route to host",
        "network is unreachable",
        "timeout",
        "dial tcp",
        "tls handshake",
    ]) {
        RuntimeError::RegistryUnreachable { reference, message }
    } else {
        RuntimeError::PullFailed {
            reference,
            registry,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reference_handles_registry_ports_and_digests() {
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app:v1"),
            ("127.0.0.1:5000/team/app", "v1")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app", "latest")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            split_reference(&format!("ghcr.io/x/api@{digest}")),
            ("ghcr.io/x/api", digest.as_str())
        );
        assert_eq!(
            split_reference(&format!("ghcr.io/x/api:v1@{digest}")),
            ("ghcr.io/x/api", digest.as_str())
        );
    }

    #[test]
    fn registry_of_names_the_credentials_key() {
        assert_eq!(
            registry_of("ghcr.io/fieldtrack-tech/api:a4f91c2"),
            "ghcr.io"
        );
        assert_eq!(registry_of("127.0.0.1:5000/app:v1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app:v1"), "localhost");
        assert_eq!(
            registry_of("library/nginx:1"),
            "https://index.docker.io/v1/"
        );
    }

    fn anonymous() -> Login {
        Login::Missing {
            why: "none for 127.0.0.1:5056 in /root/.docker/config.json".into(),
        }
    }

    fn logged_in() -> Login {
        Login::Found {
            credentials: bollard::auth::DockerCredentials::default(),
            from: "/root/.docker/config.json".into(),
        }
    }

    #[test]
    fn pull_errors_are_sorted_by_retry_worth() {
        let r = "127.0.0.1:5056/private/app:v1";
        let missing = pull_error(
            r,
            &logged_in(),
            format!("manifest for {r} not found: manifest unknown: manifest unknown"),
        );
        assert!(
            matches!(missing, RuntimeError::ImageNotFound { .. }),
            "{missing}"
        );
        assert!(!missing.is_transient());
        let down = pull_error(
            r,
            &anonymous(),
            "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
                .into(),
        );
        assert!(
            matches!(down, RuntimeError::RegistryUnreachable { .. }),
            "{down}"
        );
        assert!(down.is_transient());
        let odd = pull_error(r, &anonymous(), "something else entirely".into());
        assert!(matches!(odd, RuntimeError::PullFailed { .. }), "{odd}");
        assert!(!odd.is_transient());
    }

    /// The engine's words (20.10) for a registry with htpasswd auth.
    #[test]
    fn a_registry_wanting_a_login_is_not_a_missing_image() {
        let r = "127.0.0.1:5056/private/app:v1";
        for message in [
            "Head \"http://127.0.0.1:5056/v2/private/app/manifests/v1\": no basic auth credentials",
            "error pulling image configuration: download failed after attempts=1: no basic auth credentials",
            "pull access denied for private/app, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
        ] {
            let err = pull_error(r, &anonymous(), message.into());
            assert!(matches!(err, RuntimeError::LoginRequired { .. }), "{err}");
            assert!(!err.is_transient());
            let text = err.to_string();
            assert!(
                text.starts_with("registry 127.0.0.1:5056 wants a login"),
                "{text}"
            );
            assert!(text.contains("docker login 127.0.0.1:5056"), "{text}");
            assert!(text.contains("DOCKER_CONFIG"), "{text}");
            assert!(text.contains("none for 127.0.0.1:5056 in"), "{text}");
        }
        let refused = pull_error(
            r,
            &logged_in(),
            "unauthorized: authentication required".into(),
        );
        assert!(
            matches!(refused, RuntimeError::CredentialsRefused { .. }),
            "{refused}"
        );
        assert!(!refused.is_transient());
        assert!(refused
            .to_string()
            .starts_with("registry 127.0.0.1:5056 refused the credentials fieldtrack sent (from /root/.docker/config.json)"));
    }

    #[test]
    fn words_of_the_reference_do_not_steer_the_sort() {
        let r = "127.0.0.1:5000/denied/app:v1";
        let err = pull_error(
            r,
            &anonymous(),
            format!("manifest for {r} not found: manifest unknown"),
        );
        assert!(matches!(err, RuntimeError::ImageNotFound { .. }), "{err}");
    }

    #[test]
    fn docker_hub_is_named_as_docker_login_takes_it() {
        assert_eq!(registry_shown("library/nginx:1"), "docker.io");
        assert_eq!(registry_shown("ghcr.io/x/api:v1"), "ghcr.io");
    }
}
