//! Registry credentials, found where `docker login` leaves them: `$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json` of the user running fieldtrack (`auths`, `credHelpers`,
//! `credsStore`).
//!
//! Credential helpers (`docker-credential-NAME get`) are run here rather than by the
//! docker_credential crate: its error for a failed helper carries the helper's stdout and
//! stderr, which may hold a secret, and not its exit code. Here a failed helper is known by
//! its name and exit code only; its output is read to parse credentials and never kept.
//! The crate still reads the `auths` entries (its key normalisation is Docker's).

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::auth::DockerCredentials;

/// How long a credential helper may take (one waiting on a locked keyring would otherwise
/// hold the pull forever).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a Docker helper prints, on stdout, when it simply holds nothing for the registry.
/// Docker treats it as "no credentials", not as a failure; so does fieldtrack.
const HELPER_HAS_NONE: &str = "credentials not found in native keychain";

/// Where credentials are looked for: the Docker config folder and the PATH helpers are
/// searched on. [`Source::from_env`] in production; tests give their own.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The folder holding `config.json`; None when neither `$DOCKER_CONFIG` nor `$HOME` is set.
    pub config_dir: Option<PathBuf>,
    /// PATH to find `docker-credential-*` on; None inherits fieldtrack's.
    pub path: Option<OsString>,
}

impl Source {
    /// `$DOCKER_CONFIG`, else `$HOME/.docker`, as the docker CLI reads it.
    pub fn from_env() -> Source {
        let config_dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker")));
        Source {
            config_dir,
            path: None,
        }
    }

    /// `…/config.json`, for messages.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config_dir.as_ref().map(|d| d.join("config.json"))
    }

    /// The config file as messages show it.
    pub fn shown(&self) -> String {
        match self.config_file() {
            Some(file) => file.display().to_string(),
            None => "no Docker config ($DOCKER_CONFIG and $HOME unset)".to_string(),
        }
    }
}

/// What the Docker config holds for one registry.
#[derive(Debug, Clone)]
pub enum Login {
    /// Credentials to send, and where they were found (for messages; never the secret).
    Found {
        credentials: DockerCredentials,
        /// e.g. `/root/.docker/config.json` or `credential helper docker-credential-pass`.
        from: String,
    },
    /// Nothing for this registry: pulls are anonymous. `why` says where fieldtrack looked.
    Missing { why: String },
}

impl Login {
    /// The credentials to send, None for an anonymous pull.
    pub fn credentials(&self) -> Option<DockerCredentials> {
        match self {
            Login::Found { credentials, .. } => Some(credentials.clone()),
            Login::Missing { .. } => None,
        }
    }
}

/// Errors of finding credentials. None holds a credential helper's output, nor a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// `config.json` exists but cannot be read or is not JSON.
    #[error("cannot read {file}: {reason}")]
    Config { file: String, reason: String },
    /// The entry for the registry cannot be decoded (bad base64, auth and user disagree).
    #[error("the credentials for {registry} in {file} cannot be used: {reason}")]
    Invalid {
        registry: String,
        file: String,
        reason: String,
    },
    /// A helper name that is not a plain name (it would run a path).
    #[error("credential helper name {name:?} for {registry} in {file} is not a plain name")]
    HelperName {
        name: String,
        registry: String,
        file: String,
    },
    /// The helper could not be started (not installed?).
    #[error("cannot run credential helper {helper} for {registry}: {reason}")]
    HelperNotRun {
        helper: String,
        registry: String,
        reason: String,
    },
    /// The helper exited non-zero. Its output is not kept: it may hold a secret.
    #[error("credential helper {helper} failed for {registry} ({exit}); its output is not shown, as it may hold secrets")]
    HelperFailed {
        helper: String,
        registry: String,
        /// `exit code 3`, or `killed by signal 9`.
        exit: String,
    },
    /// The helper ran longer than [`HELPER_TIMEOUT`] and was killed.
    #[error("credential helper {helper} for {registry} did not answer within {}s and was killed", HELPER_TIMEOUT.as_secs())]
    HelperTimedOut { helper: String, registry: String },
    /// The helper succeeded but did not print `{"Username": …, "Secret": …}`.
    #[error("credential helper {helper} for {registry} answered something other than credentials")]
    HelperMalformed { helper: String, registry: String },
}

/// Credentials for `registry` (as [`super::registry::registry_of`] names it), in
/// Docker's order: `credHelpers` for the registry, then `auths`, then `credsStore`.
pub async fn lookup(registry: &str, source: &Source) -> Result<Login, CredentialError> {
    let Some(file) = source.config_file() else {
        return Ok(Login::Missing {
            why: source.shown(),
        });
    };
    let shown = file.display().to_string();
    let text = match std::fs::read(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Login::Missing {
                why: format!("{shown} does not exist"),
            })
        }
        Err(e) => {
            return Err(CredentialError::Config {
                file: shown,
                reason: e.to_string(),
            })
        }
    };
    // serde_json's errors name a line and column, never the text.
    let config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| CredentialError::Config {
            file: shown.clone(),
            reason: format!("not JSON ({e})"),
        })?;
    let Some(object) = config.as_object() else {
        return Err(CredentialError::Config {
            file: shown,
            reason: "not a JSON object".to_string(),
        });
    };
    let helper_named = |key: &str| -> Option<String> {
        let value = match key {
            "credHelpers" => object.get(key)?.get(registry)?,
            _ => object.get(key)?,
        };
        value.as_str().filter(|s| !s.is_empty()).map(str::to_string)
    };
    if let Some(name) = helper_named("credHelpers") {
        return from_helper(&name, registry, &shown, source).await;
    }

    // The crate reads `auths`; it is given the config without helpers, so it never runs one.
    let mut auths_only = object.clone();
    auths_only.remove("credsStore");
    auths_only.remove("credHelpers");
    let bytes = serde_json::to_vec(&auths_only).unwrap_or_default();
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let credentials = match docker_credential::get_credential_from_reader(&bytes[..], registry) {
        Ok(DockerCredential::UsernamePassword(username, password)) => DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        },
        Ok(DockerCredential::IdentityToken(token)) => DockerCredentials {
            identitytoken: Some(token),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        },
        Err(E::NoCredentialConfigured) => {
            return match helper_named("credsStore") {
                Some(name) => from_helper(&name, registry, &shown, source).await,
                None => Ok(Login::Missing {
                    why: format!("none for {registry} in {shown}"),
                }),
            };
        }
        // The crate's messages for these are fixed words, without the entry's content.
        Err(e) => {
            return Err(CredentialError::Invalid {
                registry: registry.to_string(),
                file: shown,
                reason: e.to_string(),
            })
        }
    };
    Ok(Login::Found {
        credentials,
        from: shown,
    })
}

/// The helper's answer to `get`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// Runs `docker-credential-NAME get` with the registry on stdin, as the docker CLI does.
async fn from_helper(
    name: &str,
    registry: &str,
    file: &str,
    source: &Source,
) -> Result<Login, CredentialError> {
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(CredentialError::HelperName {
            name: name.to_string(),
            registry: registry.to_string(),
            file: file.to_string(),
        });
    }
    let helper = format!("docker-credential-{name}");
    let not_run = |e: std::io::Error| CredentialError::HelperNotRun {
        helper: helper.clone(),
        registry: registry.to_string(),
        reason: e.to_string(),
    };
    // The registry goes into a pipe that is filled and closed before the helper starts: a
    // helper that exits without reading then cannot make our write raise SIGPIPE (which the
    // CLI leaves at its default, so it would die). A registry name is far below the pipe's
    // buffer, so the write never blocks.
    let (stdin, mut feed) = std::io::pipe().map_err(not_run)?;
    feed.write_all(registry.as_bytes()).map_err(not_run)?;
    drop(feed);
    let mut command = tokio::process::Command::new(&helper);
    command
        .arg("get")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = &source.path {
        command.env("PATH", path);
    }
    let child = command.spawn().map_err(not_run)?;
    let output = match tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return Err(CredentialError::HelperNotRun {
                helper,
                registry: registry.to_string(),
                reason: e.to_string(),
            })
        }
        // Dropping the child (kill_on_drop) kills it.
        Err(_) => {
            return Err(CredentialError::HelperTimedOut {
                helper,
                registry: registry.to_string(),
            })
        }
    };
    if !output.status.success() {
        // Compared, never shown: the one answer that means "nothing stored", not a failure.
        if String::from_utf8_lossy(&output.stdout).trim() == HELPER_HAS_NONE {
            return Ok(Login::Missing {
                why: format!("{helper} (named in {file}) holds none for {registry}"),
            });
        }
        return Err(CredentialError::HelperFailed {
            helper,
            registry: registry.to_string(),
            exit: describe_exit(output.status),
        });
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&output.stdout).map_err(|_| CredentialError::HelperMalformed {
            helper: helper.clone(),
            registry: registry.to_string(),
        })?;
    let mut credentials = DockerCredentials {
        serveraddress: Some(registry.to_string()),
        ..Default::default()
    };
    if answer.username == "<token>" {
        credentials.identitytoken = Some(answer.secret);
    } else {
        credentials.username = Some(answer.username);
        credentials.password = Some(answer.secret);
    }
    Ok(Login::Found {
        credentials,
        from: format!("credential helper {helper}"),
    })
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown exit status".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "hunter2-in-the-output";

    /// `lookup`, again while the helper written a moment ago cannot be run yet: a test running
    /// beside this one may fork while the script's write handle is open, and until that child
    /// execs, the kernel refuses to run the script ("Text file busy").
    async fn lookup_settled(registry: &str, source: &Source) -> Result<Login, CredentialError> {
        for _ in 0..50 {
            match lookup(registry, source).await {
                Err(CredentialError::HelperNotRun { reason, .. })
                    if reason.contains("Text file busy") =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
        lookup(registry, source).await
    }

    /// A folder with `bin/docker-credential-NAME` (the given shell body) and `config.json`.
    fn fixture(helper: &str, body: &str, config: &str) -> (tempfile::TempDir, Source) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let program = bin.join(format!("docker-credential-{helper}"));
        std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let source = Source {
            config_dir: Some(dir.path().to_path_buf()),
            path: Some(bin.into_os_string()),
        };
        (dir, source)
    }

    #[tokio::test]
    async fn a_failed_helper_is_named_with_its_exit_code_never_its_output() {
        let body = format!(
            "echo '{{\"Username\":\"u\",\"Secret\":\"{SECRET}\"}}'\necho {SECRET} >&2\nexit 3"
        );
        for config in [
            r#"{"credsStore": "xyz"}"#,
            r#"{"credHelpers": {"127.0.0.1:5000": "xyz"}}"#,
        ] {
            let (_dir, source) = fixture("xyz", &body, config);
            let err = lookup_settled("127.0.0.1:5000", &source).await.unwrap_err();
            let (text, debug) = (err.to_string(), format!("{err:?}"));
            assert!(text.contains("docker-credential-xyz"), "{text}");
            assert!(text.contains("exit code 3"), "{text}");
            assert!(text.contains("127.0.0.1:5000"), "{text}");
            assert!(!text.contains(SECRET) && !debug.contains(SECRET), "{debug}");
        }
    }

    #[tokio::test]
    async fn a_helper_gets_the_registry_on_stdin_and_its_answer_is_used() {
        let body = r#"read registry; [ "$1" = get ] || exit 9
echo "{\"ServerURL\":\"$registry\",\"Username\":\"ci\",\"Secret\":\"pw-for-$registry\"}""#;
        let (_dir, source) = fixture("ok", body, r#"{"credsStore": "ok"}"#);
        let Login::Found { credentials, from } = lookup_settled("ghcr.io", &source).await.unwrap()
        else {
            panic!("credentials expected");
        };
        assert_eq!(credentials.username.as_deref(), Some("ci"));
        assert_eq!(credentials.password.as_deref(), Some("pw-for-ghcr.io"));
        assert_eq!(from, "credential helper docker-credential-ok");
    }

    #[tokio::test]
    async fn a_helper_holding_nothing_means_anonymous_not_failed() {
        let body = format!("echo '{HELPER_HAS_NONE}'\nexit 1");
        let (_dir, source) = fixture("empty", &body, r#"{"credsStore": "empty"}"#);
        let login = lookup_settled("ghcr.io", &source).await.unwrap();
        assert!(matches!(login, Login::Missing { .. }), "{login:?}");
    }

    #[tokio::test]
    async fn auths_come_before_the_store_and_a_missing_helper_is_an_error() {
        // base64("ci:s3cr3t")
        let config =
            r#"{"credsStore": "none-such", "auths": {"127.0.0.1:5000": {"auth": "Y2k6czNjcjN0"}}}"#;
        let (_dir, source) = fixture("unused", "exit 0", config);
        let login = lookup_settled("127.0.0.1:5000", &source).await.unwrap();
        assert_eq!(
            login.credentials().and_then(|c| c.password).as_deref(),
            Some("s3cr3t")
        );
        let err = lookup_settled("ghcr.io", &source).await.unwrap_err();
        assert!(matches!(err, CredentialError::HelperNotRun { .. }), "{err}");
    }

    #[tokio::test]
    async fn no_config_file_or_no_entry_is_anonymous_and_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source {
            config_dir: Some(dir.path().to_path_buf()),
            path: None,
        };
        let Login::Missing { why } = lookup_settled("ghcr.io", &source).await.unwrap() else {
            panic!("no credentials expected");
        };
        assert!(why.ends_with("config.json does not exist"), "{why}");
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let Login::Missing { why } = lookup_settled("ghcr.io", &source).await.unwrap() else {
            panic!("no credentials expected");
        };
        assert!(why.starts_with("none for ghcr.io in "), "{why}");
        std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
        let err = lookup_settled("ghcr.io", &source).await.unwrap_err();
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }

    #[tokio::test]
    async fn a_helper_name_with_a_path_is_refused_unrun() {
        let (_dir, source) = fixture("x", "exit 0", r#"{"credsStore": "../../tmp/x"}"#);
        let err = lookup_settled("ghcr.io", &source).await.unwrap_err();
        assert!(matches!(err, CredentialError::HelperName { .. }), "{err}");
    }
}
