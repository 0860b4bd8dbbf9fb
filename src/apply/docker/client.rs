//! The Docker Engine API client both runtimes ([`super::Docker`] and
//! [`crate::apply::swarm::Swarm`]) talk through: connecting to `docker.host`, and sorting the
//! engine's errors into "unreachable, retry" and "the engine answered".
//!
//! The API version is negotiated with the engine rather than pinned: Debian's engine speaks
//! 1.41 while production hosts run newer ones.

use crate::config::DockerConfig;
use crate::model::runtime::{causes, RuntimeError};

/// Whether the engine answered that the object does not exist.
pub(crate) fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
/// Connects to `docker.host` (`unix:///…`, `tcp://…` with or without TLS, `http://…`) and
/// negotiates the API version.
pub(crate) async fn connect_client(docker: &DockerConfig) -> Result<bollard::Docker, RuntimeError> {
    let host = &docker.host;
    let unreachable = |source| classify_on(host, docker.tls.is_some(), "connect", source);
    let client = match &docker.tls {
        None => bollard::Docker::connect_with_host(host).map_err(unreachable)?,
        Some(tls) => bollard::Docker::connect_with_ssl(
            host,
            &tls.key,
            &tls.cert,
            &tls.ca,
            CONNECT_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(unreachable)?,
    };
    client.negotiate_version().await.map_err(unreachable)
}

/// bollard's request timeout, as its plain connections have it.
const CONNECT_TIMEOUT_SECS: u64 = 120;

/// Whether a transport failure is a TLS handshake refused for its certificates. With TLS
/// 1.3 the engine checks the client's certificate after the client thinks the handshake is
/// done: a refusal then reads as a connection closed before the first answer.
fn tls_refused(error: &bollard::errors::Error, tls: bool) -> Option<String> {
    let text = causes(error);
    let lower = text.to_lowercase();
    let words: &[&str] = if tls {
        &[
            "certificate",
            "alert",
            "handshake",
            "connection closed before message completed",
        ]
    } else {
        &["certificate", "alert", "handshake"]
    };
    words.iter().any(|w| lower.contains(w)).then_some(text)
}

/// Sorts an engine error: a failed transport (connection refused, socket gone, the engine
/// hanging up, a timeout) is [`RuntimeError::Unreachable`], retried; anything else is an
/// answer of the engine.
pub(crate) fn classify(
    host: &str,
    action: impl Into<String>,
    source: bollard::errors::Error,
) -> RuntimeError {
    classify_on(host, false, action, source)
}

/// [`classify`], knowing whether the connection is TLS.
fn classify_on(
    host: &str,
    tls: bool,
    action: impl Into<String>,
    source: bollard::errors::Error,
) -> RuntimeError {
    use bollard::errors::Error as E;
    match source {
        // HyperLegacyError is how the client reports a failed transport: connection
        // refused, socket gone, the engine hanging up.
        E::IOError { .. }
        | E::HyperResponseError { .. }
        | E::HyperLegacyError { .. }
        | E::RequestTimeoutError
        | E::SocketNotFoundError(_) => match tls_refused(&source, tls) {
            Some(detail) => RuntimeError::Tls {
                host: host.to_string(),
                detail,
            },
            None => RuntimeError::Unreachable {
                host: host.to_string(),
                source,
            },
        },
        source => RuntimeError::Api {
            action: action.into(),
            source,
        },
    }
}
