//! `fieldtrack.toml`: how this server runs the app.
//!
//! Two layers, as in ripgrep: `raw` is a serde mirror of the file that only parses, and
//! [`Config`] is the validated value the rest of the program uses. Once a `Config` exists,
//! every duration is a `Duration`, every path is absolute, every name fits where it is
//! used (container names, nginx, Docker references), so no other module re-checks them.
//! Errors name the file, the dotted key and the bad value.

mod container;
mod raw;
mod rules;
pub mod safety;
pub mod swarm_settings;
mod toml_error;

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::image::{check_repository, ImageRef};
use crate::model::probe::Expect;
use crate::model::settings::{Probe, Settings};
use crate::model::Color;
use raw::{RawConfig, RawDuration};

pub use rules::NOTIFY_EVENTS;
pub use rules::{parse_duration, DurationError, MAX_DURATION};
pub use safety::{check_file_safety, SafetyError};
pub use toml_error::TomlErrorDetail;

/// The config file's name, looked for in the current folder.
pub const FILE_NAME: &str = "fieldtrack.toml";
/// Where the config is when nothing else says.
pub const DEFAULT_PATH: &str = "/etc/fieldtrack/fieldtrack.toml";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "FIELDTRACK_CONFIG";
/// The environment variable giving the default `docker.host`.
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";
/// `docker.host` when neither the file nor `$DOCKER_HOST` sets it.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The most idle upstream connections per nginx worker `nginx.upstream_keepalive` allows.
const MAX_KEEPALIVE: u32 = 10_000;
/// `swarm.replicas` at most: more tasks than any one-app cluster fieldtrack aims at has nodes.
const MAX_REPLICAS: u64 = 1_000;

/// Why the config could not be loaded. Messages start with the config file's path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, too large, not UTF-8).
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The config or its env file failed a file-safety check (world-writable, symlink out of
    /// its folder, or someone other than root and this user may change it).
    #[error(transparent)]
    Unsafe(SafetyError),
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{path}: {detail}")]
    Toml {
        path: PathBuf,
        detail: TomlErrorDetail,
    },
    /// A key without a default is missing.
    #[error("{path}: {key}: missing; it is required and has no default")]
    Missing { path: PathBuf, key: &'static str },
    /// A duration is not a number with a unit, or is longer than a week.
    #[error("{path}: {key}: invalid duration {value:?}: {source}")]
    Duration {
        path: PathBuf,
        key: String,
        value: String,
        #[source]
        source: DurationError,
    },
    /// A value has the right type but breaks a rule; `value` is already quoted as needed.
    #[error("{path}: {key}: invalid value {value}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
}

/// The name [`Config::load`] and [`Config::parse`] are documented with.
pub type Error = ConfigError;

/// The validated config. All paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The config file itself, absolute.
    pub path: PathBuf,
    /// Names the containers (`{app}-blue`, `{app}-green`) and labels them.
    pub app: String,
    /// The repository a bare tag in the desired file belongs to.
    pub repository: String,
    /// Further repositories the desired file may name in a full reference.
    pub allowed_repositories: Vec<String>,
    pub desired_file: PathBuf,
    pub history_file: PathBuf,
    /// At least 1.
    pub history_limit: usize,
    /// Status, audit log, locks.
    pub state_dir: PathBuf,
    /// What the deploy group may read (root's, 0640 in a folder the group may enter): the
    /// status without container or hook output, the history, each generation's outcome and
    /// which daemon runs. Default: `state_dir` with `-public` appended.
    pub public_dir: PathBuf,
    pub container: ContainerConfig,
    pub health: HealthConfig,
    pub nginx: NginxConfig,
    pub rollout: RolloutConfig,
    pub docker: DockerConfig,
    /// `[runtime] kind`: which engine runs the colors.
    pub runtime: RuntimeKind,
    /// `[swarm]`: only read when `runtime` is [`RuntimeKind::Swarm`].
    pub swarm: SwarmConfig,
    pub hooks: HooksConfig,
    pub notify: NotifyConfig,
    pub metrics: MetricsConfig,
    /// `[canary]`; None: blue/green.
    pub canary: Option<CanaryConfig>,
}

/// `[container]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The port the app listens on inside the container.
    pub port: u16,
    /// Published on 127.0.0.1 for the blue container; never equal to `green_port`.
    pub blue_port: u16,
    pub green_port: u16,
    /// Passed to the container when it exists; a missing file means no env file.
    pub env_file: PathBuf,
    /// SIGTERM grace before SIGKILL; may be zero.
    pub stop_timeout: Duration,
    /// Everything else about how the container runs (networks, volumes, limits ...).
    pub settings: Settings,
}

/// `[health]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Starts with '/', printable ASCII, no spaces.
    pub path: String,
    /// Longest gap between two probes; not zero.
    pub interval: Duration,
    /// At least 1.
    pub attempts: u32,
    /// One probe; not zero.
    pub timeout: Duration,
    /// The Host header of every probe (a host name, optionally `:port`); None: the address
    /// probed, `127.0.0.1:{port}` or a Swarm task's `NODE:PORT`.
    pub host: Option<String>,
    /// Further headers of every probe, sorted by name, no two names alike in any case;
    /// never `Host` (that is `host`).
    pub headers: Vec<(String, String)>,
    /// The status codes that count as healthy; any 2xx by default.
    pub expect: Expect,
}

impl HealthConfig {
    /// How long a new container gets to become healthy: `attempts` x `interval`, at most
    /// [`MAX_DURATION`] (the config refuses more).
    pub fn deadline(&self) -> Duration {
        self.interval
            .checked_mul(self.attempts)
            .unwrap_or(MAX_DURATION)
            .min(MAX_DURATION)
    }
}

/// `[nginx]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    pub upstream_file: PathBuf,
    /// `[A-Za-z0-9_]+`
    pub upstream_name: String,
    /// Argument array, never run through a shell; the program is not empty.
    pub test_command: Vec<String>,
    pub reload_command: Vec<String>,
    /// nginx's master pid file: the drain waits for the workers of the previous
    /// configuration to exit before the old color stops.
    pub pid_file: PathBuf,
    /// Idle connections to the app each nginx worker keeps open (`keepalive N;` in the
    /// upstream block); 0: none.
    pub upstream_keepalive: u32,
    /// nginx's access log in fieldtrack's JSON `log_format`, which a canary is judged from;
    /// None: no canary can run.
    pub access_log: Option<PathBuf>,
}

/// `[canary]`: progressive delivery. Without it a deployment is blue/green.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryConfig {
    /// Weights strictly rising, each between 1 and 99; the last step is followed by 100%.
    pub steps: Vec<CanaryStep>,
    /// A step fails when the canary's share of requests answered 5xx or not at all is above
    /// this, and above the stable color's own in the same window.
    pub max_error_rate: Ratio,
    /// A step passes only after this many requests reached the canary.
    pub min_requests: u64,
    /// A step fails when the canary's p95 `request_time` over the stable color's is above
    /// this.
    pub max_latency_ratio: Ratio,
}

/// One canary step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryStep {
    /// The canary's share of the traffic, in percent.
    pub weight: u32,
    pub pause: Pause,
}

/// How long a canary step lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// At least this long (and until `min_requests` reached the canary).
    For(Duration),
    /// Until `fieldtrack promote`.
    Manual,
}

/// A finite, non-negative number from the config (validated, so never NaN: equality is
/// total).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(pub f64);

impl Eq for Ratio {}

/// `[rollout]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutConfig {
    /// How long the old color keeps running after the switch; may be zero.
    pub drain: Duration,
    pub auto_rollback: bool,
    /// Period of the full reconcile; not zero.
    pub resync: Duration,
    /// Keep the images of replaced versions (so a rollback needs no pull).
    pub keep_images: bool,
    /// How long the old color keeps running out of nginx after a deployment, so that a
    /// rollback inside that window is a pure nginx switch; zero: removed at once (cleanup).
    pub keep_previous: Duration,
    /// Whether a new image goes live after its health gate (`auto`) or waits in a preview
    /// for `fieldtrack promote` (`manual`).
    pub promotion: Promotion,
}

/// `[rollout] promotion`: what follows a new image's health gate when a color is live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Promotion {
    /// Switched at once (or through `[canary]` steps): the behaviour before previews.
    #[default]
    Auto,
    /// Kept out of production, reachable through the upstream file's
    /// `{upstream_name}_preview` block, until `fieldtrack promote` (see docs/preview.md).
    Manual,
}

impl Promotion {
    /// The name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Promotion::Auto => "auto",
            Promotion::Manual => "manual",
        }
    }
}

/// `[docker]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Docker endpoint, e.g. `unix:///var/run/docker.sock`.
    pub host: String,
    /// Client certificates for a `tcp://` endpoint; None: plain unix socket or HTTP.
    pub tls: Option<DockerTls>,
}

/// `[docker] tls_ca`, `tls_cert`, `tls_key`: PEM files, all three or none, as `docker
/// --tlsverify` takes them. The engine's certificate must be signed by `ca` and name the
/// host of `docker.host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[runtime] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// One local engine: each color is one container published on 127.0.0.1.
    #[default]
    Docker,
    /// Docker Swarm: each color is a service whose tasks publish the color's port in host
    /// mode on the nodes that run them; `docker.host` is a manager.
    Swarm,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Swarm => "swarm",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[swarm]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Tasks per color, at least 1 (default 1).
    pub replicas: u64,
    /// Placement constraints, passed to Swarm as written (`node.labels.web==true`).
    pub constraints: Vec<String>,
    /// Always 1: a task publishes the color's port on its node's own address, and a node
    /// can bind a port once.
    pub max_replicas_per_node: u64,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            replicas: 1,
            constraints: Vec::new(),
            max_replicas_per_node: 1,
        }
    }
}

/// `[hooks]`: argument arrays; an empty one means no hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HooksConfig {
    pub pre_switch: Vec<String>,
    pub post_deploy: Vec<String>,
    /// `hooks.hook_timeout`; not zero.
    pub timeout: Duration,
}

/// `[notify]`
#[derive(Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// `https://` URL (`http://` with `allow_http`), parsed once: it is what reqwest is
    /// given, so the host shown is the host connected to. It usually carries a token:
    /// print [`NotifyConfig::webhook_redacted`].
    pub webhook: Option<url::Url>,
    /// `notify.allow_http`: an `http://` webhook was accepted (default false).
    pub allow_http: bool,
    /// Not zero. Bounds one webhook POST and one email delivery alike.
    pub timeout: Duration,
    /// `[notify.email]`; None: no email.
    pub email: Option<EmailConfig>,
}

impl NotifyConfig {
    /// The webhook as it may appear in logs: scheme and host only.
    pub fn webhook_redacted(&self) -> Option<String> {
        self.webhook.as_ref().map(rules::redact_url)
    }
}

/// Redacts the webhook so that `{:?}` of a whole [`Config`] is safe to log.
impl fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("webhook", &self.webhook_redacted())
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .field("email", &self.email)
            .finish()
    }
}

/// `[notify.email]`: where and to whom notifications are mailed. Holds no secret: the
/// password is read from its source when the mailer is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailConfig {
    /// A host name or IP address.
    pub host: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: u16,
    pub security: EmailSecurity,
    /// A PEM file of CA certificates trusted besides the public ones (a relay with a
    /// certificate of its own CA). Passes [`safety::check_trusted`].
    pub tls_ca: Option<PathBuf>,
    /// SMTP AUTH; None: the server is not asked to authenticate us.
    pub auth: Option<EmailAuth>,
    pub from: lettre::message::Mailbox,
    /// At least one.
    pub to: Vec<lettre::message::Mailbox>,
    /// Which events are mailed, by the names in [`rules::NOTIFY_EVENTS`]; None: every one
    /// but `canary_step`.
    pub events: Option<Vec<String>>,
}

impl EmailConfig {
    /// The SMTP password file and CA file pass [`safety::check_trusted`]: whoever could
    /// change the one could read mail credentials elsewhere, the other decides which server
    /// is believed. The error names the key.
    fn check_files(&self, config: &Path) -> Result<(), ConfigError> {
        let files = [
            ("notify.email.tls_ca", self.tls_ca.as_ref()),
            (
                "notify.email.password_file",
                match &self.auth {
                    Some(EmailAuth {
                        password: PasswordSource::File(file),
                        ..
                    }) => Some(file),
                    _ => None,
                },
            ),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            safety::check_trusted(file).map_err(|e| ConfigError::Invalid {
                path: config.to_path_buf(),
                key: key.to_owned(),
                value: quote(&file.display().to_string()),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// `notify.email.security`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailSecurity {
    /// Plain connection upgraded by STARTTLS, which the server must offer (port 587).
    StartTls,
    /// TLS from the first byte, "SMTPS" (port 465).
    Tls,
    /// No encryption: only allowed to a loopback host.
    None,
}

impl EmailSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailSecurity::StartTls => "starttls",
            EmailSecurity::Tls => "tls",
            EmailSecurity::None => "none",
        }
    }
}

/// `notify.email.user` and where its password is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAuth {
    pub user: String,
    pub password: PasswordSource,
}

/// Where the SMTP password is read from, when the mailer is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password_file`: its content, without the final line break. Passes
    /// [`safety::check_trusted`].
    File(PathBuf),
    /// `password_env`: the value of this environment variable of the process.
    Env(String),
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where to serve metrics; `None` opens no port.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Which config file to use: `--config`, else `$FIELDTRACK_CONFIG`, else
    /// `./fieldtrack.toml` if it exists, else `/etc/fieldtrack/fieldtrack.toml`. Whichever
    /// it is, [`Config::load`] then refuses it unless only root (or this user) can change it:
    /// a `./fieldtrack.toml` planted in a shared folder is an error, never used.
    pub fn locate(cli: Option<&Path>) -> PathBuf {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let env = std::env::var_os(CONFIG_ENV);
        Config::locate_with(cli, env.as_deref(), &cwd)
    }

    /// [`Config::locate`] with the environment passed in. A relative path is taken
    /// relative to `cwd`; an empty `$FIELDTRACK_CONFIG` counts as unset.
    pub fn locate_with(cli: Option<&Path>, env: Option<&OsStr>, cwd: &Path) -> PathBuf {
        if let Some(cli) = cli {
            return cwd.join(cli);
        }
        if let Some(env) = env.filter(|e| !e.is_empty()) {
            return cwd.join(env);
        }
        let local = cwd.join(FILE_NAME);
        if local.exists() {
            return local;
        }
        PathBuf::from(DEFAULT_PATH)
    }

    /// Reads, safety-checks, parses and validates the config at `path`. `docker.host`
    /// defaults to `$DOCKER_HOST` from this process's environment.
    ///
    /// The config and the env file it names (when that exists) must pass
    /// [`safety::check_trusted`]: whoever could change them could run anything as the user
    /// running fieldtrack. This is also what makes `./fieldtrack.toml` in the current folder
    /// safe to pick up: one planted in a shared folder or another user's clone is refused.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let path = absolute(path);
        let refused = |err| match err {
            SafetyError::Inspect { path, source } => ConfigError::Read { path, source },
            other => ConfigError::Unsafe(other),
        };
        check_file_safety(&path).map_err(refused)?;
        safety::check_trusted(&path).map_err(refused)?;
        let text = safety::read_small_file(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let docker_host = std::env::var(DOCKER_HOST_ENV).ok();
        let cfg = Config::parse(&text, &path, docker_host.as_deref())?;
        // A missing env file is no env (the key is optional); it is checked again when read.
        if cfg.container.env_file.symlink_metadata().is_ok() {
            safety::check_trusted(&cfg.container.env_file).map_err(ConfigError::Unsafe)?;
        }
        // The Docker TLS files decide which engine fieldtrack obeys and with whose key.
        if let Some(tls) = &cfg.docker.tls {
            for file in [&tls.ca, &tls.cert, &tls.key] {
                safety::check_trusted(file).map_err(ConfigError::Unsafe)?;
            }
        }
        if let Some(email) = &cfg.notify.email {
            email.check_files(&cfg.path)?;
        }
        Ok(cfg)
    }

    /// Parses and validates `text`, the content of the config file at `path`. Relative
    /// paths in it are resolved against `path`'s folder. `docker_host_env` is the value of
    /// `$DOCKER_HOST` (passed in so that tests do not depend on the environment).
    pub fn parse(
        text: &str,
        path: &Path,
        docker_host_env: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let path = absolute(path);
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Toml {
            path: path.clone(),
            detail: TomlErrorDetail::new(text, &err),
        })?;
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let ctx = Ctx {
            path: &path,
            dir: &dir,
        };
        ctx.build(raw, docker_host_env)
    }

    /// The host port a color is published on.
    pub fn port(&self, color: Color) -> u16 {
        match color {
            Color::Blue => self.container.blue_port,
            Color::Green => self.container.green_port,
        }
    }

    /// `{app}-{color}`, e.g. `api-green`.
    pub fn container_name(&self, color: Color) -> String {
        format!("{}-{}", self.app, color)
    }

    /// The color published on `port`, if any: how the nginx upstream file tells what is
    /// live.
    pub fn color_of_port(&self, port: u16) -> Option<Color> {
        Color::ALL.into_iter().find(|&c| self.port(c) == port)
    }

    /// The full reference to pull and run for `image`.
    pub fn image_reference(&self, image: &ImageRef) -> String {
        image.reference(&self.repository)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What every validation step needs to build its error.
struct Ctx<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn build(&self, raw: RawConfig, docker_host_env: Option<&str>) -> Result<Config, ConfigError> {
        let app = raw.app.unwrap_or_else(|| "api".to_owned());
        rules::check_app(&app).map_err(|r| self.invalid("app", quote(&app), r))?;
        let (repository, allowed_repositories) =
            self.repositories(raw.repository, raw.allowed_repositories)?;
        let desired_file = self.path_or("desired_file", raw.desired_file, "desired.toml")?;
        let history_file = self.path_or("history_file", raw.history_file, ".deploy_history")?;
        let history_limit = self.history_limit(raw.history_limit)?;
        let (state_dir, public_dir) = self.state_dirs(raw.state_dir, raw.public_dir)?;
        let mut container = self.container(raw.container.unwrap_or_default())?;
        let health = self.health(raw.health.unwrap_or_default())?;
        container.settings.health =
            Probe::new(health.host.as_deref(), &health.headers, &health.expect);
        let nginx = self.nginx(raw.nginx.unwrap_or_default(), &app)?;
        let rollout = self.rollout(raw.rollout.unwrap_or_default())?;
        let docker = self.docker(raw.docker.unwrap_or_default(), docker_host_env)?;
        let runtime = self.runtime(raw.runtime.unwrap_or_default())?;
        swarm_settings::check(self, &container.settings, runtime)?;
        let swarm = self.swarm(raw.swarm, runtime)?;
        let hooks = self.hooks(raw.hooks.unwrap_or_default())?;
        let notify = self.notify(raw.notify.unwrap_or_default())?;
        let metrics = self.metrics(raw.metrics.unwrap_or_default())?;
        // Last: whether a canary can run at all depends on the nginx section.
        let canary = raw.canary.map(|c| self.canary(c, &nginx)).transpose()?;
        if canary.is_some() && rollout.promotion == Promotion::Manual {
            // A preview keeps the candidate out of production and a canary gives it a share
            // of it: together one of them would have to be ignored.
            return Err(self.invalid(
                "rollout.promotion",
                quote("manual"),
                "cannot be used with [canary]: a canary gives the new image a share of production, a preview none; remove [canary] or set rollout.promotion = \"auto\" (a manual canary step is `pause = \"manual\"`)".into(),
            ));
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            app,
            repository,
            allowed_repositories,
            desired_file,
            history_file,
            history_limit,
            state_dir,
            public_dir,
            container,
            health,
            nginx,
            rollout,
            docker,
            runtime,
            swarm,
            hooks,
            notify,
            metrics,
            canary,
        })
    }

    /// `repository` (required) and `allowed_repositories`.
    fn repositories(
        &self,
        repository: Option<String>,
        allowed: Option<Vec<String>>,
    ) -> Result<(String, Vec<String>), ConfigError> {
        let repository = repository.ok_or_else(|| ConfigError::Missing {
            path: self.path.to_path_buf(),
            key: "repository",
        })?;
        check_repository(&repository)
            .map_err(|r| self.invalid("repository", quote(&repository), r))?;
        let allowed = allowed.unwrap_or_default();
        for (i, repo) in allowed.iter().enumerate() {
            check_repository(repo)
                .map_err(|r| self.invalid(format!("allowed_repositories[{i}]"), quote(repo), r))?;
        }
        Ok((repository, allowed))
    }

    fn history_limit(&self, limit: Option<i64>) -> Result<usize, ConfigError> {
        match limit {
            None => Ok(5),
            Some(n) => usize::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                self.invalid("history_limit", n.to_string(), "must be at least 1".into())
            }),
        }
    }

    /// `state_dir` and `public_dir`, which defaults to `{state_dir}-public`.
    fn state_dirs(
        &self,
        state_dir: Option<String>,
        public_dir: Option<String>,
    ) -> Result<(PathBuf, PathBuf), ConfigError> {
        let state_dir = self.path_or("state_dir", state_dir, ".fieldtrack")?;
        let public_dir = match public_dir {
            Some(dir) => self.path_or("public_dir", Some(dir), "")?,
            None => {
                let mut dir = state_dir.clone().into_os_string();
                dir.push("-public");
                PathBuf::from(dir)
            }
        };
        if public_dir == state_dir {
            return Err(self.invalid(
                "public_dir",
                quote(&public_dir.display().to_string()),
                "must not be state_dir, which stays root's alone".into(),
            ));
        }
        Ok((state_dir, public_dir))
    }

    /// `[health]`
    fn health(&self, h: raw::RawHealth) -> Result<HealthConfig, ConfigError> {
        let health_path = h.path.unwrap_or_else(|| "/health".to_owned());
        rules::check_health_path(&health_path)
            .map_err(|r| self.invalid("health.path", quote(&health_path), r))?;
        let health = HealthConfig {
            path: health_path,
            interval: self.duration("health.interval", h.interval, "3s", Zero::Refused)?,
            attempts: match h.attempts {
                None => 20,
                Some(n) => u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                    self.invalid(
                        "health.attempts",
                        n.to_string(),
                        format!("must be between 1 and {}", u32::MAX),
                    )
                })?,
            },
            timeout: self.duration("health.timeout", h.timeout, "2s", Zero::Refused)?,
            host: h
                .host
                .map(|host| {
                    rules::check_health_host(&host)
                        .map_err(|r| self.invalid("health.host", quote(&host), r))
                        .map(|()| host)
                })
                .transpose()?,
            headers: self.health_headers(h.headers.unwrap_or_default())?,
            expect: self.health_expect(h.expect)?,
        };
        // The deadline is a product: each factor in range does not make it so.
        let deadline = health.interval.checked_mul(health.attempts);
        if deadline.is_none_or(|d| rules::check_duration(d).is_err()) {
            return Err(self.invalid(
                "health.attempts",
                health.attempts.to_string(),
                format!(
                    "the deadline health.attempts x health.interval ({}) is {}",
                    humantime::format_duration(health.interval),
                    DurationError::TooLong
                ),
            ));
        }
        Ok(health)
    }

    /// `health.headers`: each name and value as HTTP allows, no name twice in another case.
    fn health_headers(
        &self,
        headers: std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut checked: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            let key = format!("health.headers.{name}");
            rules::check_header_name(&name).map_err(|r| self.invalid(&key, quote(&name), r))?;
            // A header may carry a token: what is wrong is said, the value never shown.
            rules::check_header_value(&value).map_err(|r| {
                self.invalid(&key, "(not shown: a header may carry a token)".into(), r)
            })?;
            if let Some((other, _)) = checked.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                return Err(self.invalid(
                    &key,
                    quote(&name),
                    format!("names the same header as {other:?}: header names ignore case"),
                ));
            }
            checked.push((name, value));
        }
        Ok(checked)
    }

    /// `health.expect`: a list of codes (`200`), ranges (`"300-399"`) and classes (`"2xx"`).
    fn health_expect(&self, expect: Option<Vec<raw::RawStatus>>) -> Result<Expect, ConfigError> {
        let Some(items) = expect else {
            return Ok(Expect::any_2xx());
        };
        let mut ranges = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = format!("health.expect[{i}]");
            let range = match item {
                raw::RawStatus::Code(code) => u16::try_from(*code)
                    .ok()
                    .map(|c| c..=c)
                    .filter(|range| rules::check_status_range(range).is_ok())
                    .ok_or_else(|| {
                        self.invalid(&key, code.to_string(), "must be between 100 and 599".into())
                    })?,
                raw::RawStatus::Text(text) => {
                    rules::parse_status(text).map_err(|r| self.invalid(&key, quote(text), r))?
                }
            };
            ranges.push(range);
        }
        Expect::new(ranges).ok_or_else(|| {
            self.invalid(
                "health.expect",
                "[]".into(),
                "must name at least one status code; leave it out for any 2xx".into(),
            )
        })
    }

    /// `[nginx]`, whose defaults are named after `app`.
    fn nginx(&self, n: raw::RawNginx, app: &str) -> Result<NginxConfig, ConfigError> {
        let upstream_name = n
            .upstream_name
            .unwrap_or_else(|| rules::default_upstream_name(app));
        rules::check_upstream_name(&upstream_name)
            .map_err(|r| self.invalid("nginx.upstream_name", quote(&upstream_name), r))?;
        Ok(NginxConfig {
            upstream_file: self.path_or(
                "nginx.upstream_file",
                n.upstream_file,
                &format!("/etc/nginx/conf.d/fieldtrack-{app}.conf"),
            )?,
            upstream_name,
            test_command: self.command("nginx.test_command", n.test_command, &["nginx", "-t"])?,
            reload_command: self.command(
                "nginx.reload_command",
                n.reload_command,
                &["nginx", "-s", "reload"],
            )?,
            pid_file: self.path_or("nginx.pid_file", n.pid_file, "/run/nginx.pid")?,
            upstream_keepalive: match n.upstream_keepalive {
                None => 0,
                Some(k) => u32::try_from(k)
                    .ok()
                    .filter(|&k| k <= MAX_KEEPALIVE)
                    .ok_or_else(|| {
                        self.invalid(
                            "nginx.upstream_keepalive",
                            k.to_string(),
                            format!("must be between 0 (off) and {MAX_KEEPALIVE}"),
                        )
                    })?,
            },
            access_log: n
                .access_log
                .map(|p| self.path_or("nginx.access_log", Some(p), ""))
                .transpose()?,
        })
    }

    /// `[rollout]`
    fn rollout(&self, r: raw::RawRollout) -> Result<RolloutConfig, ConfigError> {
        Ok(RolloutConfig {
            drain: self.duration("rollout.drain", r.drain, "5s", Zero::Allowed)?,
            auto_rollback: r.auto_rollback.unwrap_or(true),
            resync: self.duration("rollout.resync", r.resync, "30s", Zero::Refused)?,
            keep_images: r.keep_images.unwrap_or(true),
            keep_previous: self.duration(
                "rollout.keep_previous",
                r.keep_previous,
                "0s",
                Zero::Allowed,
            )?,
            promotion: match r.promotion.as_deref() {
                None | Some("auto") => Promotion::Auto,
                Some("manual") => Promotion::Manual,
                Some(other) => {
                    return Err(self.invalid(
                        "rollout.promotion",
                        quote(other),
                        "must be \"auto\" or \"manual\"".into(),
                    ))
                }
            },
        })
    }

    /// `[docker]`: the host (else `$DOCKER_HOST`, else the local socket) and its TLS files.
    fn docker(
        &self,
        d: raw::RawDocker,
        docker_host_env: Option<&str>,
    ) -> Result<DockerConfig, ConfigError> {
        let (host, host_key) = match (d.host, docker_host_env.filter(|h| !h.is_empty())) {
            (Some(host), _) => (host, "docker.host"),
            (None, Some(env)) => (env.to_owned(), "docker.host (from $DOCKER_HOST)"),
            (None, None) => (DEFAULT_DOCKER_HOST.to_owned(), "docker.host"),
        };
        rules::check_docker_host(&host).map_err(|r| self.invalid(host_key, quote(&host), r))?;
        let tls = match (d.tls_ca, d.tls_cert, d.tls_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => {
                if !host.starts_with("tcp://") && !host.starts_with("https://") {
                    return Err(self.invalid(
                        "docker.tls_ca",
                        quote(&ca),
                        format!("TLS needs a tcp:// docker.host, not {}", quote(&host)),
                    ));
                }
                Some(DockerTls {
                    ca: self.path_or("docker.tls_ca", Some(ca), "")?,
                    cert: self.path_or("docker.tls_cert", Some(cert), "")?,
                    key: self.path_or("docker.tls_key", Some(key), "")?,
                })
            }
            (ca, cert, key) => {
                let missing = [("tls_ca", &ca), ("tls_cert", &cert), ("tls_key", &key)]
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| format!("docker.{k}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(self.invalid(
                    "docker",
                    "(tls)".into(),
                    format!("tls_ca, tls_cert and tls_key go together: {missing} missing"),
                ));
            }
        };
        if tls.is_none() && !d.allow_plain_tcp.unwrap_or(false) {
            rules::check_plain_docker_host(&host)
                .map_err(|r| self.invalid(host_key, quote(&host), r))?;
        }
        Ok(DockerConfig { host, tls })
    }

    /// `[runtime] kind`
    fn runtime(&self, r: raw::RawRuntime) -> Result<RuntimeKind, ConfigError> {
        match r.kind.as_deref() {
            None | Some("docker") => Ok(RuntimeKind::Docker),
            Some("swarm") => Ok(RuntimeKind::Swarm),
            Some(other) => Err(self.invalid(
                "runtime.kind",
                quote(other),
                "must be \"docker\" or \"swarm\"".into(),
            )),
        }
    }

    /// `[swarm]`, read only when the runtime is Swarm.
    fn swarm(
        &self,
        swarm: Option<raw::RawSwarm>,
        runtime: RuntimeKind,
    ) -> Result<SwarmConfig, ConfigError> {
        let w = match swarm {
            None => return Ok(SwarmConfig::default()),
            Some(_) if runtime != RuntimeKind::Swarm => {
                return Err(self.invalid(
                    "swarm",
                    "(section)".into(),
                    "[swarm] is only read with [runtime] kind = \"swarm\": set it, or remove the section".into(),
                ))
            }
            Some(w) => w,
        };
        let replicas = match w.replicas {
            None => 1,
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_REPLICAS).contains(n))
                .ok_or_else(|| {
                    self.invalid(
                        "swarm.replicas",
                        n.to_string(),
                        format!("must be between 1 and {MAX_REPLICAS}"),
                    )
                })?,
        };
        let constraints = w.constraints.unwrap_or_default();
        for (i, c) in constraints.iter().enumerate() {
            rules::check_constraint(c)
                .map_err(|r| self.invalid(format!("swarm.constraints[{i}]"), quote(c), r))?;
        }
        if let Some(n) = w.max_replicas_per_node.filter(|&n| n != 1) {
            return Err(self.invalid(
                "swarm.max_replicas_per_node",
                n.to_string(),
                "must be 1: each task publishes the color's port on its node, and a node can bind a port once".into(),
            ));
        }
        Ok(SwarmConfig {
            replicas,
            constraints,
            max_replicas_per_node: 1,
        })
    }

    /// `[hooks]`
    fn hooks(&self, k: raw::RawHooks) -> Result<HooksConfig, ConfigError> {
        Ok(HooksConfig {
            pre_switch: self.hook("hooks.pre_switch", k.pre_switch)?,
            post_deploy: self.hook("hooks.post_deploy", k.post_deploy)?,
            timeout: self.duration("hooks.hook_timeout", k.hook_timeout, "60s", Zero::Refused)?,
        })
    }

    /// `[notify]`: the webhook (its URL never in a message) and `[notify.email]`.
    fn notify(&self, t: raw::RawNotify) -> Result<NotifyConfig, ConfigError> {
        let allow_http = t.allow_http.unwrap_or(false);
        let webhook = match &t.webhook {
            None => None,
            Some(url) => Some(rules::check_webhook(url, allow_http).map_err(|r| {
                self.invalid(
                    "notify.webhook",
                    "(not shown: it may hold a token)".into(),
                    r,
                )
            })?),
        };
        Ok(NotifyConfig {
            webhook,
            allow_http,
            timeout: self.duration("notify.timeout", t.timeout, "5s", Zero::Refused)?,
            email: t.email.map(|e| self.email(e)).transpose()?,
        })
    }

    /// `[metrics]`
    fn metrics(&self, m: raw::RawMetrics) -> Result<MetricsConfig, ConfigError> {
        let listen = match m.listen {
            None => None,
            Some(v) => Some(
                rules::parse_listen(&v)
                    .map_err(|r| self.invalid("metrics.listen", quote(&v), r))?,
            ),
        };
        Ok(MetricsConfig { listen })
    }

    /// `[canary]`: it needs nginx's access log to judge from. It runs on either runtime: on
    /// Swarm the steps weight each color's replicas ([`crate::plan::canary_weights`]).
    fn canary(&self, c: raw::RawCanary, nginx: &NginxConfig) -> Result<CanaryConfig, ConfigError> {
        if nginx.access_log.is_none() {
            return Err(self.invalid(
                "nginx.access_log",
                "(not set)".into(),
                "a canary is judged from nginx's access log: set nginx.access_log to the file `access_log PATH fieldtrack;` writes (fieldtrack init's snippet declares the format)".into(),
            ));
        }
        let raw_steps = c.steps.unwrap_or_default();
        if raw_steps.is_empty() {
            return Err(self.invalid(
                "canary.steps",
                "[]".into(),
                "needs at least one step, e.g. [{ weight = 10, pause = \"2m\" }]".into(),
            ));
        }
        let mut steps = Vec::with_capacity(raw_steps.len());
        let mut last = 0;
        for (i, step) in raw_steps.into_iter().enumerate() {
            let key = format!("canary.steps[{i}]");
            let weight = u32::try_from(step.weight)
                .ok()
                .filter(|w| (1..=99).contains(w) && *w > last)
                .ok_or_else(|| {
                    self.invalid(
                        format!("{key}.weight"),
                        step.weight.to_string(),
                        format!("must be between 1 and 99 and above the step before ({last})"),
                    )
                })?;
            last = weight;
            let pause = if step.pause == "manual" {
                Pause::Manual
            } else {
                Pause::For(self.duration(
                    &format!("{key}.pause"),
                    Some(RawDuration(step.pause)),
                    "0s",
                    Zero::Refused,
                )?)
            };
            steps.push(CanaryStep { weight, pause });
        }
        let ratio = |key: &str, value: Option<f64>, default: f64, range: (f64, f64)| {
            let v = value.unwrap_or(default);
            if v.is_finite() && v >= range.0 && v <= range.1 {
                Ok(Ratio(v))
            } else {
                Err(self.invalid(
                    key,
                    v.to_string(),
                    format!("must be between {} and {}", range.0, range.1),
                ))
            }
        };
        Ok(CanaryConfig {
            steps,
            max_error_rate: ratio("canary.max_error_rate", c.max_error_rate, 0.01, (0.0, 1.0))?,
            min_requests: match c.min_requests {
                None => 100,
                Some(n) => u64::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                    self.invalid(
                        "canary.min_requests",
                        n.to_string(),
                        "must be at least 1".into(),
                    )
                })?,
            },
            max_latency_ratio: ratio(
                "canary.max_latency_ratio",
                c.max_latency_ratio,
                2.0,
                (1.0, 1000.0),
            )?,
        })
    }

    fn invalid(&self, key: impl Into<String>, value: String, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            value,
            reason,
        }
    }

    fn path_or(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        let value = value.as_deref().unwrap_or(default);
        rules::resolve_path(value, self.dir).map_err(|r| self.invalid(key, quote(value), r))
    }

    fn port(&self, key: &str, value: Option<i64>, default: u16) -> Result<u16, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => rules::check_port(v).map_err(|r| self.invalid(key, v.to_string(), r)),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<RawDuration>,
        default: &str,
        zero: Zero,
    ) -> Result<Duration, ConfigError> {
        let value = value.map_or_else(|| default.to_owned(), |v| v.0);
        let duration = rules::parse_duration(&value).map_err(|source| ConfigError::Duration {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            value: value.clone(),
            source,
        })?;
        if duration.is_zero() && zero == Zero::Refused {
            return Err(self.invalid(key, quote(&value), "must be greater than zero".into()));
        }
        Ok(duration)
    }

    fn command(
        &self,
        key: &str,
        value: Option<Vec<String>>,
        default: &[&str],
    ) -> Result<Vec<String>, ConfigError> {
        let argv = value.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        rules::check_command(&argv, self.dir).map_err(|r| self.invalid(key, format!("{argv:?}"), r))
    }

    fn hook(&self, key: &str, value: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
        let argv = value.unwrap_or_default();
        rules::check_hook(&argv, self.dir).map_err(|r| self.invalid(key, format!("{argv:?}"), r))
    }

    /// `[notify.email]`
    fn email(&self, e: raw::RawEmail) -> Result<EmailConfig, ConfigError> {
        let host = e.host.ok_or_else(|| self.missing("notify.email.host"))?;
        rules::check_smtp_host(&host)
            .map_err(|r| self.invalid("notify.email.host", quote(&host), r))?;
        let security = self.email_security(e.security.as_deref(), &host)?;
        let default_port = match security {
            EmailSecurity::StartTls => 587,
            EmailSecurity::Tls => 465,
            EmailSecurity::None => 25,
        };
        let port = self.port("notify.email.port", e.port, default_port)?;
        let tls_ca = match e.tls_ca {
            None => None,
            Some(_) if security == EmailSecurity::None => {
                return Err(self.invalid(
                    "notify.email.tls_ca",
                    "(set)".into(),
                    "is only read with security = \"starttls\" or \"tls\"".into(),
                ))
            }
            Some(ca) => Some(self.path_or("notify.email.tls_ca", Some(ca), "")?),
        };
        let auth = self.email_auth(e.user, e.password_file, e.password_env)?;
        let from = e.from.ok_or_else(|| self.missing("notify.email.from"))?;
        let from = rules::parse_mailbox(&from)
            .map_err(|r| self.invalid("notify.email.from", quote(&from), r))?;
        let to = self.email_recipients(e.to)?;
        if let Some(events) = &e.events {
            self.email_events(events)?;
        }
        Ok(EmailConfig {
            host,
            port,
            security,
            tls_ca,
            auth,
            from,
            to,
            events: e.events,
        })
    }

    /// `notify.email.security` (default `starttls`), for mail to `host`.
    fn email_security(
        &self,
        security: Option<&str>,
        host: &str,
    ) -> Result<EmailSecurity, ConfigError> {
        let security = match security {
            None | Some("starttls") => EmailSecurity::StartTls,
            Some("tls") => EmailSecurity::Tls,
            Some("none") => EmailSecurity::None,
            Some(other) => {
                return Err(self.invalid(
                    "notify.email.security",
                    quote(other),
                    "must be \"starttls\", \"tls\" or \"none\"".into(),
                ))
            }
        };
        // Without TLS the password and the message cross the network in clear, readable
        // and replayable by anyone on the way; over loopback nothing is on the way.
        if security == EmailSecurity::None && !rules::is_loopback_host(host) {
            return Err(self.invalid(
                "notify.email.security",
                quote("none"),
                format!(
                    "sends the password and the message in clear, so it is only allowed to a loopback host (127.0.0.1, ::1, localhost), not {}: use \"starttls\" or \"tls\"",
                    quote(host)
                ),
            ));
        }
        Ok(security)
    }

    /// `notify.email.user` and where its password comes from: both or neither.
    fn email_auth(
        &self,
        user: Option<String>,
        password_file: Option<String>,
        password_env: Option<String>,
    ) -> Result<Option<EmailAuth>, ConfigError> {
        let password = match (password_file, password_env) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "notify.email.password_env",
                    "(set)".into(),
                    "set password_file or password_env, not both".into(),
                ))
            }
            (Some(file), None) => Some(PasswordSource::File(self.path_or(
                "notify.email.password_file",
                Some(file),
                "",
            )?)),
            (None, Some(name)) => {
                rules::check_env_name(&name)
                    .map_err(|r| self.invalid("notify.email.password_env", quote(&name), r))?;
                Some(PasswordSource::Env(name))
            }
            (None, None) => None,
        };
        match (user, password) {
            (None, None) => Ok(None),
            (Some(user), Some(password)) => {
                if user.is_empty() || user.chars().any(|c| c.is_control()) {
                    return Err(self.invalid(
                        "notify.email.user",
                        quote(&user),
                        "must be non-empty, without control characters".into(),
                    ));
                }
                Ok(Some(EmailAuth { user, password }))
            }
            (Some(user), None) => Err(self.invalid(
                "notify.email.user",
                quote(&user),
                "needs password_file or password_env (the password is never written in the config)"
                    .into(),
            )),
            (None, Some(_)) => Err(self.invalid(
                "notify.email.user",
                "(missing)".into(),
                "a password (password_file or password_env) needs a user".into(),
            )),
        }
    }

    /// `notify.email.to`: at least one mailbox.
    fn email_recipients(
        &self,
        to: Option<Vec<String>>,
    ) -> Result<Vec<lettre::message::Mailbox>, ConfigError> {
        let to = to.ok_or_else(|| self.missing("notify.email.to"))?;
        if to.is_empty() {
            return Err(self.invalid(
                "notify.email.to",
                "[]".into(),
                "must name at least one address".into(),
            ));
        }
        to.iter()
            .enumerate()
            .map(|(i, addr)| {
                rules::parse_mailbox(addr)
                    .map_err(|r| self.invalid(format!("notify.email.to[{i}]"), quote(addr), r))
            })
            .collect()
    }

    /// `notify.email.events`, when set: at least one, each a known event.
    fn email_events(&self, events: &[String]) -> Result<(), ConfigError> {
        if events.is_empty() {
            return Err(self.invalid(
                "notify.email.events",
                "[]".into(),
                "must name at least one event (remove [notify.email] for no email)".into(),
            ));
        }
        for (i, event) in events.iter().enumerate() {
            if !rules::NOTIFY_EVENTS.contains(&event.as_str()) {
                return Err(self.invalid(
                    format!("notify.email.events[{i}]"),
                    quote(event),
                    format!("must be one of {}", rules::NOTIFY_EVENTS.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn missing(&self, key: &'static str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            key,
        }
    }
}

/// Whether a duration key accepts zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

fn quote(value: &str) -> String {
    format!("{value:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "/etc/fieldtrack/fieldtrack.toml";
    const MINIMAL: &str = "repository = \"ghcr.io/fieldtrack-tech/api\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(FILE), None)
    }

    fn with(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!("{MINIMAL}{extra}"))
    }

    /// The one-line message a user sees (its sources are part of it, as STYLE.md asks).
    fn message(err: &dyn std::error::Error) -> String {
        err.to_string()
    }

    fn err_of(extra: &str) -> String {
        message(&with(extra).expect_err(extra))
    }

    #[test]
    fn the_real_app_example_of_the_operations_runbook_loads() {
        let doc = include_str!("../../docs/operations.md");
        let section = &doc[doc.find("## A real app").expect("the section")..];
        let start = section.find("```toml\n").expect("its config") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").unwrap()];
        let cfg = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let s = &cfg.container.settings;
        assert_eq!(s.networks, ["backend"]);
        assert_eq!(s.memory, Some(768 << 20));
        assert_eq!(s.nano_cpus, Some(1_500_000_000));
        assert_eq!(cfg.health.host.as_deref(), Some("api.acme.com"));
    }

    #[test]
    fn only_repository_gives_every_default() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.path, PathBuf::from(FILE));
        assert_eq!(cfg.app, "api");
        assert_eq!(cfg.repository, "ghcr.io/fieldtrack-tech/api");
        assert!(cfg.allowed_repositories.is_empty());
        assert_eq!(
            cfg.desired_file,
            PathBuf::from("/etc/fieldtrack/desired.toml")
        );
        assert_eq!(
            cfg.history_file,
            PathBuf::from("/etc/fieldtrack/.deploy_history")
        );
        assert_eq!(cfg.history_limit, 5);
        assert_eq!(cfg.state_dir, PathBuf::from("/etc/fieldtrack/.fieldtrack"));
        assert_eq!(
            cfg.container,
            ContainerConfig {
                port: 8080,
                blue_port: 3001,
                green_port: 3002,
                env_file: PathBuf::from("/etc/fieldtrack/.env"),
                stop_timeout: Duration::from_secs(10),
                settings: Settings::default(),
            }
        );
        assert_eq!(
            cfg.health,
            HealthConfig {
                path: "/health".into(),
                interval: Duration::from_secs(3),
                attempts: 20,
                timeout: Duration::from_secs(2),
                host: None,
                headers: Vec::new(),
                expect: Expect::any_2xx(),
            }
        );
        assert_eq!(cfg.health.deadline(), Duration::from_secs(60));
        assert_eq!(
            cfg.nginx,
            NginxConfig {
                upstream_file: PathBuf::from("/etc/nginx/conf.d/fieldtrack-api.conf"),
                upstream_name: "fieldtrack_api".into(),
                test_command: vec!["nginx".into(), "-t".into()],
                reload_command: vec!["nginx".into(), "-s".into(), "reload".into()],
                pid_file: PathBuf::from("/run/nginx.pid"),
                upstream_keepalive: 0,
                access_log: None,
            }
        );
        assert_eq!(
            cfg.rollout,
            RolloutConfig {
                drain: Duration::from_secs(5),
                auto_rollback: true,
                resync: Duration::from_secs(30),
                keep_images: true,
                keep_previous: Duration::ZERO,
                promotion: Promotion::Auto,
            }
        );
        assert_eq!(cfg.docker.host, "unix:///var/run/docker.sock");
        assert_eq!(
            cfg.hooks,
            HooksConfig {
                pre_switch: vec![],
                post_deploy: vec![],
                timeout: Duration::from_secs(60),
            }
        );
        assert_eq!(
            cfg.notify,
            NotifyConfig {
                webhook: None,
                allow_http: false,
                timeout: Duration::from_secs(5),
                email: None,
            }
        );
        assert_eq!(cfg.metrics.listen, None);
    }

    #[test]
    fn the_contract_example_parses_to_the_defaults() {
        let text = r#"
app = "api"
repository = "ghcr.io/fieldtrack-tech/api"
desired_file = "desired.toml"
history_file = ".deploy_history"
history_limit = 5
state_dir = ".fieldtrack"

[container]
port = 8080
blue_port = 3001
green_port = 3002
env_file = ".env"
stop_timeout = "10s"

[health]
path = "/health"
interval = "3s"
attempts = 20
timeout = "2s"

[nginx]
upstream_file = "/etc/nginx/conf.d/fieldtrack-api.conf"
upstream_name = "fieldtrack_api"
test_command = ["nginx", "-t"]
reload_command = ["nginx", "-s", "reload"]

[rollout]
drain = "5s"
auto_rollback = true
resync = "30s"

[docker]
host = "unix:///var/run/docker.sock"
"#;
        assert_eq!(parse(text).unwrap(), parse(MINIMAL).unwrap());
    }

    #[test]
    fn every_key_set() {
        let text = r#"
app = "shop.web-2"
repository = "127.0.0.1:5000/team/shop"
allowed_repositories = ["ghcr.io/team/shop", "docker.io/library/nginx"]
desired_file = "state/desired.toml"
history_file = "/var/lib/shop/history"
history_limit = 10
state_dir = "/var/lib/shop/state"

[container]
port = 80
blue_port = 4001
green_port = 4002
env_file = "../secrets/shop.env"
stop_timeout = "0s"

[health]
path = "/healthz?deep=1"
interval = "500ms"
attempts = 3
timeout = "250ms"

[nginx]
upstream_file = "nginx/upstream.conf"
upstream_name = "Shop_1"
test_command = ["/usr/sbin/nginx", "-t", "-q"]
reload_command = ["systemctl", "reload", "nginx"]

[rollout]
drain = "0s"
auto_rollback = false
resync = "2m"
keep_images = false
keep_previous = "15m"

[docker]
host = "tcp://10.0.0.5:2376"
allow_plain_tcp = true

[hooks]
pre_switch = ["./hooks/smoke", "--quick"]
post_deploy = ["/usr/local/bin/announce"]
hook_timeout = "90s"

[notify]
webhook = "https://hooks.example.com/services/T0/B0/SECRET"
timeout = "1s"

[metrics]
listen = "9187"
"#;
        let cfg = Config::parse(
            text,
            Path::new("/srv/shop/fieldtrack.toml"),
            Some("unix:///ignored"),
        )
        .unwrap();
        assert_eq!(cfg.app, "shop.web-2");
        assert_eq!(cfg.repository, "127.0.0.1:5000/team/shop");
        assert_eq!(
            cfg.allowed_repositories,
            vec!["ghcr.io/team/shop", "docker.io/library/nginx"]
        );
        assert_eq!(
            cfg.desired_file,
            PathBuf::from("/srv/shop/state/desired.toml")
        );
        assert_eq!(cfg.history_file, PathBuf::from("/var/lib/shop/history"));
        assert_eq!(cfg.history_limit, 10);
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/shop/state"));
        assert_eq!(cfg.container.port, 80);
        assert_eq!(cfg.container.blue_port, 4001);
        assert_eq!(cfg.container.green_port, 4002);
        assert_eq!(
            cfg.container.env_file,
            PathBuf::from("/srv/shop/../secrets/shop.env")
        );
        assert_eq!(cfg.container.stop_timeout, Duration::ZERO);
        assert_eq!(cfg.health.path, "/healthz?deep=1");
        assert_eq!(cfg.health.interval, Duration::from_millis(500));
        assert_eq!(cfg.health.attempts, 3);
        assert_eq!(cfg.health.timeout, Duration::from_millis(250));
        assert_eq!(cfg.health.deadline(), Duration::from_millis(1500));
        assert_eq!(
            cfg.nginx.upstream_file,
            PathBuf::from("/srv/shop/nginx/upstream.conf")
        );
        assert_eq!(cfg.nginx.upstream_name, "Shop_1");
        assert_eq!(cfg.nginx.test_command, vec!["/usr/sbin/nginx", "-t", "-q"]);
        assert_eq!(
            cfg.nginx.reload_command,
            vec!["systemctl", "reload", "nginx"]
        );
        assert_eq!(cfg.rollout.drain, Duration::ZERO);
        assert!(!cfg.rollout.auto_rollback);
        assert_eq!(cfg.rollout.resync, Duration::from_secs(120));
        assert!(!cfg.rollout.keep_images);
        assert_eq!(cfg.rollout.keep_previous, Duration::from_secs(15 * 60));
        assert_eq!(cfg.docker.host, "tcp://10.0.0.5:2376");
        assert_eq!(
            cfg.hooks.pre_switch,
            vec!["/srv/shop/hooks/smoke", "--quick"]
        );
        assert_eq!(cfg.hooks.post_deploy, vec!["/usr/local/bin/announce"]);
        assert_eq!(cfg.hooks.timeout, Duration::from_secs(90));
        assert_eq!(
            cfg.notify.webhook.as_ref().map(url::Url::as_str),
            Some("https://hooks.example.com/services/T0/B0/SECRET")
        );
        assert_eq!(cfg.notify.timeout, Duration::from_secs(1));
        assert_eq!(cfg.metrics.listen, Some("127.0.0.1:9187".parse().unwrap()));
    }

    #[test]
    fn relative_paths_follow_the_config_folder_not_the_cwd() {
        let cfg = Config::parse(
            "repository = \"r\"\ndesired_file = \"./d/desired.toml\"\nstate_dir = \"s\"\n[nginx]\nupstream_file = \"up.conf\"\n",
            Path::new("/opt/app/conf/fieldtrack.toml"),
            None,
        )
        .unwrap();
        assert_eq!(
            cfg.desired_file,
            PathBuf::from("/opt/app/conf/d/desired.toml")
        );
        assert_eq!(cfg.state_dir, PathBuf::from("/opt/app/conf/s"));
        assert_eq!(
            cfg.history_file,
            PathBuf::from("/opt/app/conf/.deploy_history")
        );
        assert_eq!(cfg.container.env_file, PathBuf::from("/opt/app/conf/.env"));
        assert_eq!(
            cfg.nginx.upstream_file,
            PathBuf::from("/opt/app/conf/up.conf")
        );
    }

    #[test]
    fn a_relative_config_path_is_made_absolute_against_the_cwd() {
        let cfg = Config::parse(MINIMAL, Path::new("conf/fieldtrack.toml"), None).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(cfg.path, cwd.join("conf/fieldtrack.toml"));
        assert_eq!(cfg.desired_file, cwd.join("conf/desired.toml"));
        assert!(cfg.path.is_absolute());
    }

    #[test]
    fn app_names_the_nginx_defaults() {
        let cfg = with("app = \"web\"\n").unwrap();
        assert_eq!(cfg.nginx.upstream_name, "fieldtrack_web");
        assert_eq!(
            cfg.nginx.upstream_file,
            PathBuf::from("/etc/nginx/conf.d/fieldtrack-web.conf")
        );
        let cfg = with("app = \"my-app.v2\"\n").unwrap();
        assert_eq!(cfg.nginx.upstream_name, "fieldtrack_my_app_v2");
        assert_eq!(
            cfg.nginx.upstream_file,
            PathBuf::from("/etc/nginx/conf.d/fieldtrack-my-app.v2.conf")
        );
    }

    #[test]
    fn unknown_top_level_key_names_file_and_key() {
        let msg = err_of("colour = \"blue\"\n");
        assert!(msg.starts_with(FILE), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn unknown_key_in_a_section_names_file_and_dotted_key() {
        let msg = err_of("[health]\npath = \"/\"\nintervall = \"3s\"\n");
        assert!(
            msg.starts_with(&format!(
                "{FILE}: health.intervall: unknown field `intervall`"
            )),
            "{msg}"
        );
        for section in [
            "container",
            "health",
            "nginx",
            "rollout",
            "docker",
            "hooks",
            "notify",
            "metrics",
        ] {
            let msg = err_of(&format!("[{section}]\nbogus = 1\n"));
            assert!(msg.contains(&format!("{section}.bogus")), "{msg}");
            assert!(msg.starts_with(FILE), "{msg}");
        }
    }

    #[test]
    fn unknown_section_is_refused() {
        let msg = err_of("[healthcheck]\npath = \"/\"\n");
        assert!(msg.contains("unknown field `healthcheck`"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let msg = err_of("[container]\nport = \"8080\"\n");
        assert!(msg.contains("container.port: invalid type"), "{msg}");
        let msg = err_of("[rollout]\nauto_rollback = \"yes\"\n");
        assert!(msg.contains("rollout.auto_rollback"), "{msg}");
        let msg = err_of("[nginx]\ntest_command = \"nginx -t\"\n");
        assert!(msg.contains("nginx.test_command"), "{msg}");
    }

    #[test]
    fn toml_syntax_error_names_the_file() {
        let err = parse("repository = \"r\n").unwrap_err();
        assert!(matches!(err, ConfigError::Toml { .. }), "{err:?}");
        assert!(message(&err).starts_with(FILE));
    }

    #[test]
    fn missing_repository_says_so_by_name() {
        for text in ["", "app = \"api\"\n"] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Missing {
                        key: "repository",
                        ..
                    }
                ),
                "{err:?}"
            );
            let msg = message(&err);
            assert!(
                msg.starts_with(&format!("{FILE}: repository: missing")),
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_durations() {
        for (value, reason) in [
            ("3", "time unit needed"),
            ("3 parsecs", "unknown time unit"),
            ("", "value was empty"),
            ("-1s", ""),
        ] {
            let msg = err_of(&format!("[health]\ninterval = {value:?}\n"));
            let expected = format!("{FILE}: health.interval: invalid duration {value:?}: ");
            assert!(msg.starts_with(&expected), "{msg}");
            assert!(msg.contains(reason), "{msg}");
        }
        let msg = err_of("[health]\ninterval = 3\n");
        assert!(msg.contains("health.interval"), "{msg}");
        assert!(msg.contains("a duration string with a unit"), "{msg}");
    }

    /// Every duration key of the config, by section.
    const DURATION_KEYS: [(&str, &str); 8] = [
        ("container", "stop_timeout"),
        ("health", "interval"),
        ("health", "timeout"),
        ("rollout", "drain"),
        ("rollout", "resync"),
        ("hooks", "hook_timeout"),
        ("notify", "timeout"),
        ("rollout", "keep_previous"),
    ];

    #[test]
    fn every_duration_key_is_checked() {
        for (section, key) in DURATION_KEYS {
            let msg = err_of(&format!("[{section}]\n{key} = \"soon\"\n"));
            assert!(
                msg.contains(&format!("{section}.{key}: invalid duration \"soon\"")),
                "{msg}"
            );
        }
    }

    #[test]
    fn zero_durations() {
        for (section, key) in [
            ("health", "interval"),
            ("health", "timeout"),
            ("rollout", "resync"),
            ("hooks", "hook_timeout"),
            ("notify", "timeout"),
        ] {
            let msg = err_of(&format!("[{section}]\n{key} = \"0s\"\n"));
            assert!(
                msg.contains(&format!(
                    "{section}.{key}: invalid value \"0s\": must be greater than zero"
                )),
                "{msg}"
            );
        }
        let cfg = with("[container]\nstop_timeout = \"0s\"\n[rollout]\ndrain = \"0ms\"\n").unwrap();
        assert_eq!(cfg.container.stop_timeout, Duration::ZERO);
        assert_eq!(cfg.rollout.drain, Duration::ZERO);
    }

    #[test]
    fn attempts_and_history_limit() {
        for bad in ["0", "-1", "4294967296"] {
            let msg = err_of(&format!("[health]\nattempts = {bad}\n"));
            assert!(
                msg.contains(&format!("health.attempts: invalid value {bad}")),
                "{msg}"
            );
        }
        assert_eq!(with("[health]\nattempts = 1\n").unwrap().health.attempts, 1);
        for bad in ["0", "-3"] {
            let msg = err_of(&format!("history_limit = {bad}\n"));
            assert!(
                msg.contains(&format!(
                    "history_limit: invalid value {bad}: must be at least 1"
                )),
                "{msg}"
            );
        }
        assert_eq!(with("history_limit = 1\n").unwrap().history_limit, 1);
        for bad in ["-1", "10001"] {
            let msg = err_of(&format!("[nginx]\nupstream_keepalive = {bad}\n"));
            assert!(
                msg.contains(&format!("nginx.upstream_keepalive: invalid value {bad}")),
                "{msg}"
            );
        }
        let cfg = with("[nginx]\nupstream_keepalive = 16\n").unwrap();
        assert_eq!(cfg.nginx.upstream_keepalive, 16);
    }

    #[test]
    fn durations_are_at_most_seven_days() {
        for (section, key) in DURATION_KEYS {
            for bad in ["99999999999d", "8d", "7days 1ms", "1w 1s"] {
                let msg = err_of(&format!("[{section}]\n{key} = {bad:?}\n"));
                assert!(
                    msg.contains(&format!(
                        "{section}.{key}: invalid duration {bad:?}: longer than 7days"
                    )),
                    "{msg}"
                );
            }
            // One attempt, or the health deadline would be 20 x 7 days.
            let one = if section == "health" {
                ""
            } else {
                "[health]\n"
            };
            let cfg = with(&format!("[{section}]\n{key} = \"7d\"\n{one}attempts = 1\n")).unwrap();
            assert_eq!(
                format!("{cfg:?}").matches("604800s").count(),
                1,
                "{section}.{key}"
            );
        }
    }

    #[test]
    fn the_health_deadline_is_at_most_seven_days_and_names_attempts() {
        for text in [
            "[health]\ninterval = \"7d\"\nattempts = 4294967295\n",
            "[health]\ninterval = \"7d\"\nattempts = 2\n",
            "[health]\ninterval = \"1h\"\nattempts = 169\n",
        ] {
            let msg = err_of(text);
            assert!(msg.contains("health.attempts: invalid value"), "{msg}");
            assert!(msg.contains("longer than 7days"), "{msg}");
        }
        let cfg = with("[health]\ninterval = \"1h\"\nattempts = 168\n").unwrap();
        assert_eq!(cfg.health.deadline(), Duration::from_secs(7 * 24 * 3600));
        let cfg = with("[health]\ninterval = \"1ms\"\nattempts = 604800000\n").unwrap();
        assert_eq!(cfg.health.deadline(), MAX_DURATION);
    }

    #[test]
    fn app_rule() {
        for bad in ["Api", "-api", "my app", "api;rm", "", &"a".repeat(64)] {
            let msg = err_of(&format!("app = {bad:?}\n"));
            assert!(
                msg.contains(&format!("app: invalid value {bad:?}")),
                "{msg}"
            );
        }
        assert_eq!(with("app = \"a0_.-\"\n").unwrap().app, "a0_.-");
    }

    #[test]
    fn repository_rule() {
        for (bad, why) in [
            ("ghcr.io/Fieldtrack/api", "lowercase"),
            ("ghcr.io/fieldtrack/api:v1", "tag"),
            ("ghcr.io/fieldtrack/api@sha256:00", "digest"),
            ("", "empty"),
            ("a b", "contains"),
        ] {
            let msg = message(&parse(&format!("repository = {bad:?}\n")).unwrap_err());
            assert!(
                msg.starts_with(&format!("{FILE}: repository: invalid value {bad:?}")),
                "{msg}"
            );
            assert!(msg.contains(why), "{msg}");
        }
        assert_eq!(
            parse("repository = \"localhost:5000/app\"\n")
                .unwrap()
                .repository,
            "localhost:5000/app"
        );
    }

    #[test]
    fn allowed_repositories_are_validated() {
        let msg = err_of("allowed_repositories = [\"ok/repo\", \"Bad/Repo\"]\n");
        assert!(
            msg.contains("allowed_repositories[1]: invalid value \"Bad/Repo\""),
            "{msg}"
        );
    }

    #[test]
    fn ports() {
        for (key, value) in [("port", "0"), ("blue_port", "65536"), ("green_port", "-1")] {
            let msg = err_of(&format!("[container]\n{key} = {value}\n"));
            assert!(
                msg.contains(&format!(
                    "container.{key}: invalid value {value}: must be between 1 and 65535"
                )),
                "{msg}"
            );
        }
        let msg = err_of("[container]\nblue_port = 3001\ngreen_port = 3001\n");
        assert!(
            msg.contains("container.green_port: invalid value 3001: must differ"),
            "{msg}"
        );
        let cfg = with("[container]\nport = 65535\nblue_port = 1\ngreen_port = 3001\n").unwrap();
        assert_eq!((cfg.container.port, cfg.container.blue_port), (65535, 1));
    }

    #[test]
    fn upstream_name_rule() {
        for bad in ["fieldtrack-api", "", "a b", "x;"] {
            let msg = err_of(&format!("[nginx]\nupstream_name = {bad:?}\n"));
            assert!(
                msg.contains(&format!("nginx.upstream_name: invalid value {bad:?}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn commands_must_name_a_program() {
        for key in ["test_command", "reload_command"] {
            for bad in ["[]", "[\"\"]", "[\"\", \"-t\"]"] {
                let msg = err_of(&format!("[nginx]\n{key} = {bad}\n"));
                assert!(
                    msg.contains(&format!("nginx.{key}: invalid value")),
                    "{msg}"
                );
            }
        }
        let cfg = with("[nginx]\ntest_command = [\"bin/check\", \"--strict\"]\n").unwrap();
        assert_eq!(
            cfg.nginx.test_command,
            vec!["/etc/fieldtrack/bin/check", "--strict"]
        );
    }

    #[test]
    fn hooks() {
        let cfg =
            with("[hooks]\npre_switch = []\npost_deploy = [\"notify-send\", \"done\"]\n").unwrap();
        assert!(cfg.hooks.pre_switch.is_empty());
        assert_eq!(cfg.hooks.post_deploy, vec!["notify-send", "done"]);
        let msg = err_of("[hooks]\npre_switch = [\"\"]\n");
        assert!(
            msg.contains("hooks.pre_switch: invalid value [\"\"]"),
            "{msg}"
        );
        let msg = err_of("[hooks]\npost_deploy = \"./x.sh\"\n");
        assert!(msg.contains("hooks.post_deploy"), "{msg}");
    }

    #[test]
    fn health_path_rule() {
        for bad in ["health", "/a b", "/a\nb", "", "/é"] {
            let msg = err_of(&format!("[health]\npath = {bad:?}\n"));
            assert!(
                msg.contains(&format!("health.path: invalid value {bad:?}")),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn health_host_headers_and_expect_are_read() {
        let cfg = with(
            "[health]\nhost = \"api.example.com:8443\"\n\
             headers = { X-Probe = \"fieldtrack\", Accept = \"application/json\" }\n\
             expect = [200, 204, \"300-399\", \"4xx\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.health.host.as_deref(), Some("api.example.com:8443"));
        assert_eq!(
            cfg.health.headers,
            [
                ("Accept".to_string(), "application/json".to_string()),
                ("X-Probe".to_string(), "fieldtrack".to_string())
            ]
        );
        assert_eq!(cfg.health.expect.to_string(), "200, 204, 3xx, 4xx");
        // The probe is part of what a container runs with: a change of it is drift.
        let probe = &cfg.container.settings.health;
        assert_eq!(probe.host.as_deref(), Some("api.example.com:8443"));
        assert_eq!(probe.expect.as_deref(), Some("200, 204, 3xx, 4xx"));
        assert_eq!(
            probe.headers.keys().collect::<Vec<_>>(),
            ["Accept", "X-Probe"]
        );
        assert_eq!(
            with("").unwrap().container.settings,
            Settings::default(),
            "the default probe is no drift for containers started before it"
        );
        for host in [
            "localhost",
            "api.example.test",
            "10.0.0.1:80",
            "[::1]:8080",
            "x_y.z.",
        ] {
            let cfg = with(&format!("[health]\nhost = {host:?}\n")).expect(host);
            assert_eq!(cfg.health.host.as_deref(), Some(host));
        }
        let single = with("[health]\nexpect = [\"403\"]\n")
            .unwrap()
            .health
            .expect;
        assert!(single.contains(403) && !single.contains(200));
    }

    #[test]
    fn health_host_must_be_a_host_name() {
        for (bad, why) in [
            ("", "must not be empty"),
            ("https://api.example.com", "without a scheme"),
            ("api.example.com/health", "without a path"),
            ("api example.com", "whitespace"),
            ("user@api.example.com", "without a user"),
            ("::1", "in []"),
            ("[::1", "must end with ']'"),
            ("api.example.com:0", "is not a port"),
            ("api.example.com:99999", "is not a port"),
            ("api.example.com:", "is not a port"),
            ("api..example.com", "dot-separated labels"),
            ("api.exämple.com", "dot-separated labels"),
        ] {
            let msg = err_of(&format!("[health]\nhost = {bad:?}\n"));
            assert!(
                msg.contains(&format!("health.host: invalid value {bad:?}")) && msg.contains(why),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn health_headers_must_be_http_headers_and_never_host() {
        let msg = err_of("[health]\nheaders = { Host = \"api.example.com\" }\n");
        assert!(
            msg.contains("health.headers.Host: invalid value \"Host\""),
            "{msg}"
        );
        assert!(msg.contains("set with health.host"), "{msg}");
        let msg = err_of("[health]\nheaders = { host = \"x\" }\n");
        assert!(msg.contains("health.host"), "{msg}");
        for name in ["X Probe", "X-Prøbe", "", "X:Y"] {
            let msg = err_of(&format!("[health]\nheaders = {{ {name:?} = \"1\" }}\n"));
            assert!(
                msg.contains(&format!("health.headers.{name}: invalid value {name:?}"))
                    && msg.contains("must be an HTTP header name"),
                "{name:?}: {msg}"
            );
        }
        let msg = err_of("[health]\nheaders = { Content-Length = \"5\" }\n");
        assert!(msg.contains("health.headers.Content-Length"), "{msg}");
        // A header may carry a token: its value is never quoted, only what is wrong in it.
        for value in [
            "Bearer s3cret\nX-Evil: 1",
            "Bearer s3cret\r",
            " s3cret",
            "s3cret\t",
        ] {
            let msg = err_of(&format!("[health]\nheaders = {{ X-Probe = {value:?} }}\n"));
            assert!(
                msg.contains("health.headers.X-Probe: invalid value (not shown"),
                "{value:?}: {msg}"
            );
            assert!(!msg.contains("s3cret"), "{value:?}: {msg}");
        }
        let msg = err_of("[health]\nheaders = { X-Probe = \"é\" }\n");
        assert!(msg.contains("must be visible ASCII"), "{msg}");
        let msg = err_of("[health]\nheaders = { X-Probe = \"a\", x-probe = \"b\" }\n");
        assert!(msg.contains("header names ignore case"), "{msg}");
        let msg = err_of("[health]\nheaders = { X-Probe = 1 }\n");
        assert!(msg.contains("expected a string (line 3"), "{msg}");
    }

    #[test]
    fn health_expect_holds_codes_from_100_to_599() {
        for (bad, key, why) in [
            (
                "[99]",
                "health.expect[0]: invalid value 99",
                "between 100 and 599",
            ),
            (
                "[200, 600]",
                "health.expect[1]: invalid value 600",
                "between 100 and 599",
            ),
            (
                "[-1]",
                "health.expect[0]: invalid value -1",
                "between 100 and 599",
            ),
            (
                "[\"399-300\"]",
                "health.expect[0]: invalid value \"399-300\"",
                "lower code",
            ),
            ("[\"200-600\"]", "health.expect[0]", "between 100 and 599"),
            ("[\"6xx\"]", "health.expect[0]", "between 100 and 599"),
            ("[\"0xx\"]", "health.expect[0]", "between 100 and 599"),
            ("[\"2x\"]", "health.expect[0]", "a class (\"2xx\")"),
            ("[\"ok\"]", "health.expect[0]", "a class (\"2xx\")"),
            ("[]", "health.expect: invalid value []", "at least one"),
        ] {
            let msg = err_of(&format!("[health]\nexpect = {bad}\n"));
            assert!(msg.contains(key) && msg.contains(why), "{bad}: {msg}");
        }
        let msg = err_of("[health]\nexpect = 200\n");
        assert!(msg.contains("health.expect"), "{msg}");
        let msg = err_of("[health]\nexpect = [true]\n");
        assert!(msg.contains("a status code"), "{msg}");
    }

    #[test]
    fn paths_must_not_be_empty() {
        for key in ["desired_file", "history_file", "state_dir"] {
            let msg = err_of(&format!("{key} = \"\"\n"));
            assert!(
                msg.contains(&format!("{key}: invalid value \"\": must not be empty")),
                "{msg}"
            );
        }
        let msg = err_of("[container]\nenv_file = \"\"\n");
        assert!(msg.contains("container.env_file"), "{msg}");
    }

    #[test]
    fn promotion_is_auto_or_manual_and_manual_refuses_a_canary_naming_both_keys() {
        assert_eq!(parse(MINIMAL).unwrap().rollout.promotion, Promotion::Auto);
        let cfg = with("[rollout]\npromotion = \"manual\"\n").unwrap();
        assert_eq!(cfg.rollout.promotion, Promotion::Manual);
        let msg = err_of("[rollout]\npromotion = \"by-hand\"\n");
        assert!(
            msg.contains(
                "rollout.promotion: invalid value \"by-hand\": must be \"auto\" or \"manual\""
            ),
            "{msg}"
        );
        let msg = err_of(
            "[rollout]\npromotion = \"manual\"\n[nginx]\naccess_log = \"/var/log/a.log\"\n[canary]\nsteps = [{ weight = 10, pause = \"1m\" }]\n",
        );
        assert!(
            msg.contains("rollout.promotion") && msg.contains("[canary]"),
            "{msg}"
        );
    }

    #[test]
    fn canary_steps_rise_need_the_access_log_and_sane_bounds() {
        assert_eq!(parse(MINIMAL).unwrap().canary, None);
        let log = "[nginx]\naccess_log = \"/var/log/nginx/api.json.log\"\n";
        let cfg = with(&format!(
            "{log}[canary]\nsteps = [{{ weight = 10, pause = \"2m\" }}, {{ weight = 50, pause = \"manual\" }}]\n"
        ))
        .unwrap();
        let canary = cfg.canary.expect("canary");
        assert_eq!(
            canary.steps,
            vec![
                CanaryStep {
                    weight: 10,
                    pause: Pause::For(Duration::from_secs(120))
                },
                CanaryStep {
                    weight: 50,
                    pause: Pause::Manual
                },
            ]
        );
        assert_eq!(canary.max_error_rate, Ratio(0.01));
        assert_eq!(canary.min_requests, 100);
        assert_eq!(canary.max_latency_ratio, Ratio(2.0));
        assert_eq!(
            cfg.nginx.access_log.as_deref(),
            Some(Path::new("/var/log/nginx/api.json.log"))
        );

        let step = |steps: &str| format!("{log}[canary]\nsteps = {steps}\n");
        let msg = err_of("[canary]\nsteps = [{ weight = 10, pause = \"1m\" }]\n");
        assert!(msg.contains("nginx.access_log"), "{msg}");
        let msg = err_of(&step("[]"));
        assert!(msg.contains("canary.steps"), "{msg}");
        let msg = err_of(&step(
            "[{ weight = 50, pause = \"1m\" }, { weight = 10, pause = \"1m\" }]",
        ));
        assert!(msg.contains("canary.steps[1].weight"), "{msg}");
        let msg = err_of(&step("[{ weight = 100, pause = \"1m\" }]"));
        assert!(msg.contains("canary.steps[0].weight"), "{msg}");
        let msg = err_of(&step("[{ weight = 10, pause = \"soon\" }]"));
        assert!(msg.contains("canary.steps[0].pause"), "{msg}");
        let msg = err_of(&format!(
            "{}max_error_rate = 1.5\n",
            step("[{ weight = 10, pause = \"1m\" }]")
        ));
        assert!(msg.contains("canary.max_error_rate"), "{msg}");
        let msg = err_of(&format!(
            "{}max_latency_ratio = 0.5\n",
            step("[{ weight = 10, pause = \"1m\" }]")
        ));
        assert!(msg.contains("canary.max_latency_ratio"), "{msg}");
        // On Swarm too: the steps weight each color's replicas in the same upstream file.
        let cfg = with(&format!(
            "{}[runtime]\nkind = \"swarm\"\n[swarm]\nreplicas = 3\n",
            step("[{ weight = 10, pause = \"1m\" }]")
        ))
        .unwrap();
        assert_eq!(cfg.runtime, RuntimeKind::Swarm);
        assert_eq!(cfg.canary.expect("canary on swarm").steps.len(), 1);
    }

    #[test]
    fn swarm_keys_need_the_swarm_runtime_and_sane_values() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.runtime, RuntimeKind::Docker);
        assert_eq!(cfg.swarm, SwarmConfig::default());
        let cfg = with(
            "[runtime]\nkind = \"swarm\"\n[swarm]\nreplicas = 3\nconstraints = [\"node.labels.web==true\"]\nmax_replicas_per_node = 1\n",
        )
        .unwrap();
        assert_eq!(cfg.runtime, RuntimeKind::Swarm);
        assert_eq!(cfg.swarm.replicas, 3);
        assert_eq!(cfg.swarm.constraints, vec!["node.labels.web==true"]);

        let msg = err_of("[runtime]\nkind = \"kubernetes\"\n");
        assert!(
            msg.contains("runtime.kind") && msg.contains("kubernetes"),
            "{msg}"
        );
        let msg = err_of("[swarm]\nreplicas = 3\n");
        assert!(msg.contains("kind = \"swarm\""), "{msg}");
        let swarm = "[runtime]\nkind = \"swarm\"\n[swarm]\n";
        let msg = err_of(&format!("{swarm}replicas = 0\n"));
        assert!(msg.contains("swarm.replicas"), "{msg}");
        let msg = err_of(&format!("{swarm}max_replicas_per_node = 2\n"));
        assert!(msg.contains("a node can bind a port once"), "{msg}");
        let msg = err_of(&format!("{swarm}constraints = [\"web\"]\n"));
        assert!(msg.contains("swarm.constraints[0]"), "{msg}");
    }

    #[test]
    fn docker_tls_takes_three_files_and_a_tcp_host() {
        let cfg = with(
            "[docker]\nhost = \"tcp://10.0.0.11:2376\"\ntls_ca = \"tls/ca.pem\"\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n",
        )
        .unwrap();
        let tls = cfg.docker.tls.expect("tls");
        assert!(
            tls.key.is_absolute() && tls.key.ends_with("tls/key.pem"),
            "{tls:?}"
        );
        let msg = err_of("[docker]\nhost = \"tcp://10.0.0.11:2376\"\ntls_ca = \"ca.pem\"\n");
        assert!(
            msg.contains("docker.tls_cert, docker.tls_key missing"),
            "{msg}"
        );
        let msg = err_of(
            "[docker]\nhost = \"unix:///run/docker.sock\"\ntls_ca = \"a\"\ntls_cert = \"b\"\ntls_key = \"c\"\n",
        );
        assert!(msg.contains("TLS needs a tcp:// docker.host"), "{msg}");
    }

    #[test]
    fn docker_host_default_env_and_file() {
        let cfg = Config::parse(MINIMAL, Path::new(FILE), Some("tcp://127.0.0.1:2375")).unwrap();
        assert_eq!(cfg.docker.host, "tcp://127.0.0.1:2375");
        let cfg = Config::parse(MINIMAL, Path::new(FILE), Some("")).unwrap();
        assert_eq!(cfg.docker.host, DEFAULT_DOCKER_HOST);
        let text = format!("{MINIMAL}[docker]\nhost = \"unix:///run/docker.sock\"\n");
        let cfg = Config::parse(&text, Path::new(FILE), Some("tcp://10.1.1.1:2375")).unwrap();
        assert_eq!(cfg.docker.host, "unix:///run/docker.sock");
        let err = Config::parse(MINIMAL, Path::new(FILE), Some("not a host")).unwrap_err();
        let msg = message(&err);
        assert!(
            msg.contains("docker.host (from $DOCKER_HOST): invalid value \"not a host\""),
            "{msg}"
        );
        let msg = err_of("[docker]\nhost = \"/var/run/docker.sock\"\n");
        assert!(msg.contains("docker.host: invalid value"), "{msg}");
    }

    #[test]
    fn webhook_is_checked_and_never_shown() {
        for bad in [
            "hooks.example.com/SECRET",
            "ftp://x/SECRET",
            "https://",
            "https://x/SEC RET",
            "https://hooks.exa\nmple.com/SECRET",
            "https://hooks.example.com:99999/SECRET",
            "https://exa mple.com/SECRET",
            "https:///SECRET",
            "https://xn--/SECRET",
            "file:///etc/SECRET",
        ] {
            let err = with(&format!("[notify]\nwebhook = {bad:?}\n")).unwrap_err();
            let msg = message(&err);
            assert!(
                msg.contains("notify.webhook: invalid value (not shown"),
                "{msg}"
            );
            assert!(!msg.contains("SECRET") && !msg.contains("SEC RET"), "{msg}");
        }
        let cfg =
            with("[notify]\nwebhook = \"https://hooks.example.com/services/SECRET\"\n").unwrap();
        assert_eq!(
            cfg.notify.webhook_redacted().as_deref(),
            Some("https://hooks.example.com/…")
        );
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("hooks.example.com"), "{debug}");
    }

    /// Webhook URLs whose host a hand-made parser gets wrong: the host shown is the one the
    /// URL parser (and so reqwest) finds. `\` is `/` to the URL standard, so what follows an
    /// `@` after it is path: such URLs are refused, as is anything but `scheme://host`.
    #[test]
    fn the_webhook_host_shown_is_the_one_connected_to() {
        for url in [
            r"https://hooks.example.com\x@evil.com/T0/SECRET",
            r"https://evil.com\@hooks.example.com/T0/SECRET",
            "https:///hooks.example.com/SECRET",
            "https:/hooks.example.com/SECRET",
        ] {
            let msg = err_of(&format!("[notify]\nwebhook = {url:?}\n"));
            assert!(
                msg.contains("notify.webhook: invalid value (not shown"),
                "{msg}"
            );
            assert!(!msg.contains("SECRET"), "{msg}");
        }
        for (url, shown) in [
            (
                "https://hooks.example.com:SECRET@evil.com/T0",
                "https://evil.com/…",
            ),
            (
                "https://user:SECRET@hooks.example.com/",
                "https://hooks.example.com/…",
            ),
            (
                "https://hooks.example.com#@evil.com/SECRET",
                "https://hooks.example.com/…",
            ),
            (
                "https://hooks.example.com?@evil.com/SECRET",
                "https://hooks.example.com/…",
            ),
            (
                "https://HOOKS.Example.COM:8443/SECRET",
                "https://hooks.example.com:8443/…",
            ),
            (
                "https://hooks.example.com:443/SECRET",
                "https://hooks.example.com/…",
            ),
            (
                "https://bücher.example/SECRET",
                "https://xn--bcher-kva.example/…",
            ),
            ("https://[::1]:8443/SECRET", "https://[::1]:8443/…"),
        ] {
            let cfg = with(&format!("[notify]\nwebhook = {url:?}\n"))
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                cfg.notify.webhook_redacted().as_deref(),
                Some(shown),
                "{url}"
            );
            let debug = format!("{cfg:?}");
            assert!(!debug.contains("SECRET"), "{debug}");
        }
    }

    /// A `tcp://` (or `http://`) engine without TLS gets every env-file value and registry
    /// credential in clear: refused, naming the key that allows it, unless it is loopback.
    #[test]
    fn a_docker_host_over_plain_tcp_is_refused_unless_loopback_or_allowed() {
        for host in [
            "tcp://10.0.0.5:2375",
            "http://10.0.0.5:2375",
            "tcp://engine.example.com:2375",
        ] {
            let msg = err_of(&format!("[docker]\nhost = \"{host}\"\n"));
            assert!(msg.contains("docker.host: invalid value"), "{msg}");
            assert!(msg.contains("docker.allow_plain_tcp = true"), "{msg}");
            assert!(msg.contains("registry credentials"), "{msg}");
        }
        let err = Config::parse(MINIMAL, Path::new(FILE), Some("tcp://10.1.1.1:2375")).unwrap_err();
        let msg = message(&err);
        assert!(msg.contains("docker.host (from $DOCKER_HOST)"), "{msg}");
        assert!(msg.contains("docker.allow_plain_tcp = true"), "{msg}");
        // $DOCKER_HOST with the key in the file: allowed.
        let text = format!("{MINIMAL}[docker]\nallow_plain_tcp = true\n");
        let cfg = Config::parse(&text, Path::new(FILE), Some("tcp://10.1.1.1:2375")).unwrap();
        assert_eq!(cfg.docker.host, "tcp://10.1.1.1:2375");
        for ok in [
            "[docker]\nhost = \"tcp://127.0.0.1:2375\"\n",
            "[docker]\nhost = \"tcp://[::1]:2375\"\n",
            "[docker]\nhost = \"tcp://localhost:2375\"\n",
            "[docker]\nhost = \"tcp://10.0.0.5:2375\"\nallow_plain_tcp = true\n",
            "[docker]\nhost = \"tcp://10.0.0.11:2376\"\ntls_ca = \"a\"\ntls_cert = \"b\"\ntls_key = \"c\"\n",
            "[docker]\nhost = \"unix:///run/docker.sock\"\n",
        ] {
            with(ok).unwrap_or_else(|e| panic!("{ok}: {}", message(&e)));
        }
    }

    /// Loopback is not the network: an `http://` receiver on this machine needs no
    /// `allow_http`, as plain SMTP to loopback needs no TLS.
    #[test]
    fn a_webhook_over_http_to_loopback_needs_no_allow_http() {
        for url in [
            "http://127.0.0.1:8080/SECRET",
            "http://[::1]:8080/x",
            "http://localhost/x",
        ] {
            let cfg = with(&format!("[notify]\nwebhook = \"{url}\"\n"))
                .unwrap_or_else(|e| panic!("{url}: {}", message(&e)));
            assert!(cfg.notify.webhook.is_some());
        }
        let msg = err_of("[notify]\nwebhook = \"http://10.0.0.9/SECRET\"\n");
        assert!(msg.contains("allow_http = true"), "{msg}");
    }

    #[test]
    fn a_webhook_over_http_needs_allow_http() {
        let msg = err_of("[notify]\nwebhook = \"http://hooks.example.com/SECRET\"\n");
        assert!(
            msg.contains("notify.webhook: invalid value (not shown"),
            "{msg}"
        );
        assert!(msg.contains("allow_http = true"), "{msg}");
        assert!(!msg.contains("SECRET"), "{msg}");
        let cfg = with("[notify]\nwebhook = \"http://127.0.0.1:8080/SECRET\"\nallow_http = true\n")
            .unwrap();
        assert_eq!(
            cfg.notify.webhook_redacted().as_deref(),
            Some("http://127.0.0.1:8080/…")
        );
        // allow_http allows http, nothing else.
        let msg = err_of("[notify]\nwebhook = \"ftp://x/SECRET\"\nallow_http = true\n");
        assert!(msg.contains("https://"), "{msg}");
    }

    #[test]
    fn metrics_listen() {
        let cfg = with("[metrics]\nlisten = \"127.0.0.1:9187\"\n").unwrap();
        assert_eq!(cfg.metrics.listen, Some("127.0.0.1:9187".parse().unwrap()));
        let cfg = with("[metrics]\nlisten = \"[::1]:9187\"\n").unwrap();
        assert_eq!(cfg.metrics.listen, Some("[::1]:9187".parse().unwrap()));
        for bad in ["localhost:9187", "0", "127.0.0.1"] {
            let msg = err_of(&format!("[metrics]\nlisten = {bad:?}\n"));
            assert!(
                msg.contains(&format!("metrics.listen: invalid value {bad:?}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn ports_names_and_colors() {
        let cfg = with("app = \"web\"\n").unwrap();
        assert_eq!(cfg.port(Color::Blue), 3001);
        assert_eq!(cfg.port(Color::Green), 3002);
        assert_eq!(cfg.container_name(Color::Blue), "web-blue");
        assert_eq!(cfg.container_name(Color::Green), "web-green");
        assert_eq!(cfg.color_of_port(3001), Some(Color::Blue));
        assert_eq!(cfg.color_of_port(3002), Some(Color::Green));
        assert_eq!(cfg.color_of_port(8080), None);
    }

    #[test]
    fn image_reference_uses_the_repository() {
        let cfg = parse(MINIMAL).unwrap();
        let image = ImageRef::parse("a4f91c2", &cfg.repository, &cfg.allowed_repositories).unwrap();
        assert_eq!(
            cfg.image_reference(&image),
            "ghcr.io/fieldtrack-tech/api:a4f91c2"
        );
    }

    #[test]
    fn locate_order() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        let cli = Path::new("/x/cli.toml");
        let env = OsStr::new("/x/env.toml");
        assert_eq!(Config::locate_with(Some(cli), Some(env), cwd), cli);
        assert_eq!(
            Config::locate_with(None, Some(env), cwd),
            Path::new("/x/env.toml")
        );
        assert_eq!(
            Config::locate_with(Some(Path::new("rel.toml")), None, cwd),
            cwd.join("rel.toml")
        );
        assert_eq!(
            Config::locate_with(None, None, cwd),
            Path::new(DEFAULT_PATH)
        );
        assert_eq!(
            Config::locate_with(None, Some(OsStr::new("")), cwd),
            Path::new(DEFAULT_PATH)
        );
        fs::write(cwd.join(FILE_NAME), MINIMAL).unwrap();
        assert_eq!(Config::locate_with(None, None, cwd), cwd.join(FILE_NAME));
        assert_eq!(
            Config::locate_with(None, Some(env), cwd),
            Path::new("/x/env.toml")
        );
    }

    #[test]
    fn load_reads_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        fs::write(&file, MINIMAL).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = Config::load(&file).unwrap();
        assert_eq!(cfg.path, file);
        assert_eq!(cfg.desired_file, dir.path().join("desired.toml"));
    }

    #[test]
    fn load_refuses_unsafe_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let err = Config::load(&file).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        let msg = message(&err);
        assert!(
            msg.contains("cannot read config file") && msg.contains(&file.display().to_string()),
            "{msg}"
        );

        fs::write(&file, MINIMAL).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        let err = Config::load(&file).unwrap_err();
        assert!(
            matches!(err, ConfigError::Unsafe(SafetyError::WorldWritable { .. })),
            "{err:?}"
        );
        assert!(message(&err).contains("world-writable"));

        let outside = tempfile::tempdir().unwrap();
        let real = outside.path().join("real.toml");
        fs::write(&real, MINIMAL).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Config::load(&link).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Unsafe(SafetyError::SymlinkOutsideFolder { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn errors_are_one_line_that_also_keep_their_source() {
        let err = with("[health]\ninterval = \"3 parsecs\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{FILE}: health.interval: invalid duration \"3 parsecs\": unknown time unit \
                 \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, \
                 months, years (and few variations)"
            )
        );
        assert!(err.source().is_some());
        for text in [
            "colour = 1\n",
            "[health]\npath = \"/a\\nb\"\n",
            "[container]\nport = [\n1,\n]\n",
        ] {
            let msg = err_of(text);
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}

#[cfg(test)]
mod email_tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "/etc/fieldtrack/fieldtrack.toml";
    const BASE: &str = "repository = \"ghcr.io/fieldtrack-tech/api\"\n[notify.email]\n";
    const ADDRS: &str = "from = \"fieldtrack <deploys@example.com>\"\nto = [\"ops@example.com\"]\n";

    fn email(extra: &str) -> Result<Option<EmailConfig>, ConfigError> {
        Config::parse(&format!("{BASE}{extra}"), Path::new(FILE), None).map(|c| c.notify.email)
    }

    fn err_of(extra: &str) -> String {
        email(extra).expect_err(extra).to_string()
    }

    #[test]
    fn the_least_email_section_defaults_to_starttls_on_587_and_every_event() {
        let e = email(&format!("host = \"smtp.example.com\"\n{ADDRS}"))
            .unwrap()
            .unwrap();
        assert_eq!(e.host, "smtp.example.com");
        assert_eq!(e.security, EmailSecurity::StartTls);
        assert_eq!(e.port, 587);
        assert_eq!(e.auth, None);
        assert_eq!(e.tls_ca, None);
        assert_eq!(e.events, None);
        assert_eq!(e.from.name.as_deref(), Some("fieldtrack"));
        assert_eq!(e.to.len(), 1);
        let plain = Config::parse(BASE.split('[').next().unwrap(), Path::new(FILE), None);
        assert_eq!(plain.unwrap().notify.email, None);
    }

    #[test]
    fn every_email_key_set() {
        let e = email(
            "host = \"127.0.0.1\"\nport = 2525\nsecurity = \"none\"\nuser = \"deploy\"\n\
             password_env = \"SMTP_PASSWORD\"\nfrom = \"a@example.com\"\n\
             to = [\"b@example.com\", \"C <c@example.com>\"]\nevents = [\"failed\", \"auto_rollback\"]\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.port, 2525);
        assert_eq!(e.security, EmailSecurity::None);
        assert_eq!(
            e.auth,
            Some(EmailAuth {
                user: "deploy".into(),
                password: PasswordSource::Env("SMTP_PASSWORD".into()),
            })
        );
        assert_eq!(e.to.len(), 2);
        assert_eq!(
            e.events,
            Some(vec!["failed".to_string(), "auto_rollback".to_string()])
        );

        let e = email(&format!(
            "host = \"smtp.example.com\"\nsecurity = \"tls\"\ntls_ca = \"ca.pem\"\nuser = \"u\"\n\
             password_file = \"smtp.password\"\n{ADDRS}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(e.port, 465);
        assert_eq!(e.tls_ca, Some(PathBuf::from("/etc/fieldtrack/ca.pem")));
        assert_eq!(
            e.auth.unwrap().password,
            PasswordSource::File(PathBuf::from("/etc/fieldtrack/smtp.password"))
        );
        let e = email(&format!("host = \"::1\"\nsecurity = \"none\"\n{ADDRS}"))
            .unwrap()
            .unwrap();
        assert_eq!(e.port, 25);
    }

    #[test]
    fn plain_smtp_only_to_a_loopback_host() {
        let msg = err_of(&format!(
            "host = \"smtp.example.com\"\nsecurity = \"none\"\n{ADDRS}"
        ));
        assert!(
            msg.contains("notify.email.security: invalid value \"none\"")
                && msg.contains("only allowed to a loopback host")
                && msg.contains("\"smtp.example.com\""),
            "{msg}"
        );
        for host in ["localhost", "127.0.0.1", "::1"] {
            email(&format!("host = {host:?}\nsecurity = \"none\"\n{ADDRS}")).expect(host);
        }
    }

    #[test]
    fn email_errors_name_the_key() {
        let host = "host = \"smtp.example.com\"\n";
        for (extra, key) in [
            (ADDRS.to_string(), "notify.email.host: missing"),
            (format!("host = \"smtp://x\"\n{ADDRS}"), "notify.email.host: invalid value"),
            (format!("{host}security = \"ssl\"\n{ADDRS}"), "notify.email.security: invalid value \"ssl\""),
            (format!("{host}port = 0\n{ADDRS}"), "notify.email.port: invalid value 0"),
            (format!("{host}to = [\"a@example.com\"]\n"), "notify.email.from: missing"),
            (format!("{host}from = \"a@example.com\"\n"), "notify.email.to: missing"),
            (format!("{host}from = \"nobody\"\nto = [\"a@example.com\"]\n"), "notify.email.from: invalid value \"nobody\""),
            (format!("{host}from = \"a@example.com\"\nto = []\n"), "notify.email.to: invalid value []"),
            (format!("{host}from = \"a@example.com\"\nto = [\"a@example.com\", \"b@\"]\n"), "notify.email.to[1]: invalid value \"b@\""),
            (format!("{host}{ADDRS}events = [\"succeeded\", \"deployed\"]\n"), "notify.email.events[1]: invalid value \"deployed\": must be one of succeeded, failed, rolled_back, auto_rollback, canary_step"),
            (format!("{host}{ADDRS}events = []\n"), "notify.email.events: invalid value []"),
            (format!("{host}{ADDRS}user = \"u\"\n"), "notify.email.user: invalid value \"u\": needs password_file or password_env"),
            (format!("{host}{ADDRS}password_env = \"P\"\n"), "notify.email.user: invalid value (missing)"),
            (format!("{host}{ADDRS}user = \"u\"\npassword_env = \"P\"\npassword_file = \"f\"\n"), "notify.email.password_env: invalid value (set): set password_file or password_env, not both"),
            (format!("{host}{ADDRS}user = \"u\"\npassword_env = \"SMTP-PASSWORD\"\n"), "notify.email.password_env: invalid value \"SMTP-PASSWORD\""),
            (format!("host = \"127.0.0.1\"\nsecurity = \"none\"\ntls_ca = \"ca.pem\"\n{ADDRS}"), "notify.email.tls_ca: invalid value (set)"),
            (format!("{host}{ADDRS}password = \"x\"\n"), "unknown field `password`"),
        ] {
            let msg = err_of(&extra);
            assert!(msg.contains(key), "{extra}\n=> {msg}");
        }
    }

    #[test]
    fn load_refuses_a_password_file_others_may_write_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.path().join(FILE_NAME);
        fs::write(
            &file,
            format!("{BASE}host = \"smtp.example.com\"\nuser = \"u\"\npassword_file = \"smtp.password\"\n{ADDRS}"),
        )
        .unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();

        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("notify.email.password_file") && err.contains("smtp.password"),
            "a missing password file: {err}"
        );

        let password = dir.path().join("smtp.password");
        fs::write(&password, "s3cret\n").unwrap();
        fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
        Config::load(&file).unwrap();

        fs::set_permissions(&password, fs::Permissions::from_mode(0o620)).unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("notify.email.password_file: invalid value")
                && err.contains("smtp.password"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
}
