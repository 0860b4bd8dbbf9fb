//! Pulling from a registry: which registry a reference names, the login the Docker config
//! holds for it, and what a failed pull means for the operator (log in, fix the name, or
//! wait: retried). Shared by both runtimes; the engine does the pulling.

use std::time::Duration;

use super::credentials::{self, Login};
use crate::model::runtime::RuntimeError;

/// The registry part of a reference, as the Docker config keys its credentials.
pub(crate) fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "https://index.docker.io/v1/".to_string(),
    }
}

/// The registry as messages and `docker login` name it: `docker.io` for Docker Hub.
pub(crate) fn registry_shown(reference: &str) -> String {
    match registry_of(reference) {
        server if server.starts_with("https://") => "docker.io".to_string(),
        server => server,
    }
}

/// Credentials for the registry of `reference` from the Docker config. A lookup that fails
/// (a broken helper, an unreadable config) is logged, without any secret or helper output,
/// and the pull goes anonymous, since public images need none; the pull's error then says
/// why there were no credentials.
pub(crate) async fn login_for(reference: &str) -> Login {
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
pub(crate) fn split_reference(reference: &str) -> (&str, &str) {
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

/// Sorts a pull failure by what the operator must do: log in (no credentials, or refused
/// ones), fix the image name, or wait for the registry (retried); anything else waits for a
/// new desired state too. `login` is what was sent, which tells "wants a login" apart from
/// "refused the login".
pub(crate) fn pull_error(reference: &str, login: &Login, message: String) -> RuntimeError {
    // The reference's own words (a repository named `denied`) must not steer the sort.
    let lower = message
        .to_lowercase()
        .replace(&reference.to_lowercase(), "");
    let has = |phrases: &[&str]| phrases.iter().any(|p| lower.contains(p));
    let (reference, registry) = (reference.to_string(), registry_shown(reference));
    // First: a 429 or 5xx says nothing about the image or the login, whatever words follow.
    if registry_busy(&lower) {
        return RuntimeError::RegistryBusy {
            reference,
            registry,
            retry_after: retry_after_in(&lower),
            message,
        };
    }
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

/// Whether the engine's (lowercased) words for a failed pull carry a registry's 429 or
/// 5xx: the status as the engine quotes it (`received unexpected HTTP status: 503 ...`,
/// `error parsing HTTP 429 response body`, after blob retries too), or the registry's own
/// `toomanyrequests` error code.
fn registry_busy(lower: &str) -> bool {
    if lower.contains("toomanyrequests") || lower.contains("too many requests") {
        return true;
    }
    ["http status: ", "error parsing http "].iter().any(|lead| {
        lower.match_indices(lead).any(|(i, _)| {
            let rest = &lower[i + lead.len()..];
            let digits = rest
                .get(..3)
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
            matches!(digits, Some("429" | "500" | "502" | "503" | "504"))
        })
    })
}

/// A retry-after the registry named in its message (GHCR: `toomanyrequests: retry-after:
/// 190.13µs, allowed: 44000/minute`), as a Go duration or whole seconds.
fn retry_after_in(lower: &str) -> Option<Duration> {
    let i = lower.find("retry-after:")?;
    let rest = lower[i + "retry-after:".len()..].trim_start();
    let word = rest
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .next()?;
    go_duration(word)
}

/// `1m30.5s`, `190.13µs`, `7` (seconds): what Go's `time.Duration` prints, or an HTTP
/// `Retry-After` in seconds.
fn go_duration(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_the_registry_wrote_it() {
        for (text, want) in [
            (
                "toomanyrequests: retry-after: 190.13µs, allowed: 44000/minute",
                Some(Duration::from_nanos(190_130)),
            ),
            (
                "toomanyrequests: retry-after: 1m30.5s, allowed: 1/minute",
                Some(Duration::from_millis(90_500)),
            ),
            (
                "toomanyrequests: retry-after: 7",
                Some(Duration::from_secs(7)),
            ),
            ("toomanyrequests: retry later", None),
            ("toomanyrequests: retry-after: soon", None),
        ] {
            assert_eq!(retry_after_in(text), want, "{text}");
        }
    }

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

    /// A registry that answers 5xx or 429 (a rate limit) has the image, or may: retried
    /// with backoff. The engine's words (dockerd 20.10 to 27, through a front answering
    /// each status on manifests and blobs); GHCR's rate limit names its retry-after.
    #[test]
    fn a_busy_registry_is_transient_and_a_missing_image_or_login_stays_permanent() {
        let r = "127.0.0.1:5000/fieldtrack-test/app:v1";
        for message in [
            "received unexpected HTTP status: 503 Service Unavailable",
            "received unexpected HTTP status: 500 Internal Server Error",
            "received unexpected HTTP status: 502 Bad Gateway",
            "received unexpected HTTP status: 504 Gateway Timeout",
            "download failed after attempts=6: received unexpected HTTP status: 503 Service Unavailable",
            "toomanyrequests: retry later",
            "toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
            "toomanyrequests: retry-after: 190.13µs, allowed: 44000/minute",
            "error parsing HTTP 429 response body: unexpected end of JSON input: \"\"",
        ] {
            for login in [anonymous(), logged_in()] {
                let err = pull_error(r, &login, message.into());
                assert!(err.is_transient(), "{message}: {err:?}");
            }
        }
        for (message, login) in [
            ("manifest unknown", logged_in()),
            (
                "error parsing HTTP 404 response body: invalid character 'u' looking for beginning of value: \"upstream trouble\"",
                anonymous(),
            ),
            ("unauthorized: authentication required", anonymous()),
            ("unauthorized: authentication required", logged_in()),
            // A status in the reference or a 4xx that is no rate limit is no busy registry.
            ("received unexpected HTTP status: 403 Forbidden", logged_in()),
        ] {
            let err = pull_error(r, &login, message.into());
            assert!(!err.is_transient(), "{message}: {err:?}");
        }
        let busy = pull_error(
            "127.0.0.1:5000/app503:v1",
            &anonymous(),
            "manifest for 127.0.0.1:5000/app503:v1 not found: manifest unknown".into(),
        );
        assert!(!busy.is_transient(), "{busy:?}");
    }

    #[test]
    fn docker_hub_is_named_as_docker_login_takes_it() {
        assert_eq!(registry_shown("library/nginx:1"), "docker.io");
        assert_eq!(registry_shown("ghcr.io/x/api:v1"), "ghcr.io");
    }
}
