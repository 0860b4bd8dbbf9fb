//! `fieldtrack check`: is this server ready to deploy? One line per property, each `OK`,
//! `WARN` or `FAIL` with what to do about it, so a newcomer fixes the setup before the first
//! deployment fails for a reason nobody saw coming.
//!
//! Every check runs even when an earlier one failed (all but those that need a valid
//! config): one run lists everything to fix. Nothing is changed anywhere.
//!
//! With `[canary]` a deployment is judged from nginx's access log, so check also reads
//! nginx's config for what the judge needs (fieldtrack's `log_format` with the keys it reads,
//! and an `access_log` writing `nginx.access_log` with it): without them a canary step would
//! see no requests and wait forever, or judge lines it cannot read.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

mod settings;

use super::CliError;
use crate::apply::docker::registry::registry_of;
use crate::apply::docker::Docker;
use crate::apply::http_probe::HttpProber;
use crate::apply::nginx::DEFAULT_COMMAND_TIMEOUT;
use crate::apply::swarm::Swarm;
use crate::config::{Config, RuntimeKind};
use crate::desired::{Desired, DesiredError};
use crate::model::probe::{host_hint, ProbeOutcome, Prober as _};
use crate::model::runtime::Runtime as _;
use crate::model::Color;
use crate::model::Instance;
use crate::nginx_conf::dump::Dump;
use crate::observe::access_log::LOG_FORMAT;

/// How long the engine gets to answer before it counts as unreachable.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of an access log line the canary reads, each the string of nginx's variable of
/// the same name.
const LOG_KEYS: &[&str] = &["upstream_addr", "status", "upstream_status", "request_time"];

/// How serious one finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// What was checked: `config`, `docker`, `nginx`, `port blue`...
    pub subject: String,
    /// What was found and, unless OK, what to do.
    pub message: String,
}

impl Finding {
    fn new(level: Level, subject: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level,
            subject: subject.into(),
            message: message.into(),
        }
    }
}

/// Runs every check against the config at `path`, prints the report: exit 0 when nothing
/// failed (warnings allowed), 1 otherwise.
pub async fn run(path: &Path) -> Result<u8, CliError> {
    let findings = check(path).await;
    for f in &findings {
        println!("{:<4}  {:<11} {}", f.level, f.subject, f.message);
    }
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    let failed = count(Level::Fail);
    println!(
        "\n{} ok, {} warning(s), {} failed",
        count(Level::Ok),
        count(Level::Warn),
        failed
    );
    Ok(u8::from(failed > 0))
}

/// Every finding, in a fixed order.
pub async fn check(path: &Path) -> Vec<Finding> {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            return vec![Finding::new(
                Level::Fail,
                "config",
                format!(
                    "{e}. Fix it (`fieldtrack init` writes a commented one; the keys are in \
                     fieldtrack.toml.example); nothing else can be checked until it loads"
                ),
            )]
        }
    };
    let mut out = vec![config_finding(&cfg)];
    out.push(desired_finding(&cfg));
    out.push(layout_finding(&cfg));
    out.extend(folder_findings(&cfg));
    let docker = match tokio::time::timeout(DOCKER_TIMEOUT, Docker::connect_with(&cfg.docker)).await
    {
        Ok(Ok(docker)) => {
            out.push(Finding::new(
                Level::Ok,
                "docker",
                format!(
                    "engine at {} answers (API {})",
                    cfg.docker.host,
                    docker.api_version()
                ),
            ));
            Some(docker)
        }
        Ok(Err(e)) => {
            out.push(docker_unreachable(&cfg, &e.to_string()));
            None
        }
        Err(_) => {
            out.push(docker_unreachable(
                &cfg,
                &format!("no answer within {}s", DOCKER_TIMEOUT.as_secs()),
            ));
            None
        }
    };
    out.push(credentials_finding(&cfg.repository).await);
    out.push(upstream_file_finding(&cfg));
    if let (Some(_), Some(log)) = (&cfg.canary, &cfg.nginx.access_log) {
        out.push(log_file_finding(log));
    }
    out.extend(nginx_findings(&cfg).await);
    out.push(pid_file_finding(&cfg));
    let found = match &docker {
        Some(docker) => Some(settings::lookup(docker, &cfg.container.settings).await),
        None => None,
    };
    out.extend(settings::judge(&cfg, found.as_ref()));
    if cfg.runtime == RuntimeKind::Swarm {
        // The color ports are the nodes', not this host's: nothing to look at here.
        if let Some(docker) = &docker {
            let swarm = Swarm::new(docker.client(), cfg.docker.host.clone(), cfg.swarm.clone());
            out.push(match swarm.describe_nodes().await {
                Ok(nodes) => Finding::new(Level::Ok, "swarm", nodes),
                Err(e) => Finding::new(
                    Level::Fail,
                    "swarm",
                    format!(
                        "[runtime] kind = \"swarm\", but the engine at {} cannot list the swarm's nodes ({e}): point docker.host at a manager (`docker node ls` works there)",
                        cfg.docker.host
                    ),
                ),
            });
        }
        return out;
    }
    let containers = match &docker {
        Some(docker) => docker.containers(&cfg.app).await.ok(),
        None => None,
    };
    for color in Color::ALL {
        out.push(port_finding(&cfg, color, containers.as_deref()));
    }
    out.push(health_finding(&cfg, containers.as_deref()).await);
    out
}

fn config_finding(cfg: &Config) -> Finding {
    let registry = registry_of(&cfg.repository);
    if registry == crate::cli::init::PLACEHOLDER_REGISTRY {
        return Finding::new(
            Level::Fail,
            "config",
            format!(
                "{}: repository {:?} is the placeholder `fieldtrack init` wrote; set it to \
                 your image repository (e.g. ghcr.io/acme/{})",
                cfg.path.display(),
                cfg.repository,
                cfg.app
            ),
        );
    }
    Finding::new(
        Level::Ok,
        "config",
        format!(
            "{} is valid: app {}, repository {}, containers {}-blue/{}-green",
            cfg.path.display(),
            cfg.app,
            cfg.repository,
            cfg.app,
            cfg.app
        ),
    )
}

fn desired_finding(cfg: &Config) -> Finding {
    let path = cfg.desired_file.display();
    match Desired::load(&cfg.desired_file, cfg) {
        Ok(d) if d.paused => Finding::new(
            Level::Warn,
            "desired",
            format!(
                "{path}: image {} but paused = true: fieldtrack observes and changes nothing; \
                 remove the line to resume",
                d.image
            ),
        ),
        Ok(d) => Finding::new(
            Level::Ok,
            "desired",
            format!("{path}: image {} ({})", d.image, cfg.image_reference(&d.image)),
        ),
        Err(DesiredError::MissingImage { .. }) => Finding::new(
            Level::Warn,
            "desired",
            format!(
                "{path} names no image yet: nothing runs until `fieldtrack deploy TAG` writes one"
            ),
        ),
        Err(DesiredError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Finding::new(
                Level::Warn,
                "desired",
                format!(
                    "{path} does not exist yet: nothing runs until `fieldtrack deploy TAG` writes it"
                ),
            )
        }
        Err(e) => Finding::new(
            Level::Fail,
            "desired",
            format!("{e}. Fix the file (rules: desired.toml.example) or `fieldtrack deploy TAG` to replace it"),
        ),
    }
}

/// The desired file's folder is the one CI's user may write, and whoever may write a folder
/// may rename, and so replace, anything in it: nothing else fieldtrack reads or runs
/// belongs there.
fn layout_finding(cfg: &Config) -> Finding {
    let folder = parent(&cfg.desired_file);
    let mut others: Vec<(&str, &Path)> = vec![
        ("the config", &cfg.path),
        ("the env file", &cfg.container.env_file),
        ("the history", &cfg.history_file),
        ("state_dir", &cfg.state_dir),
        ("the upstream file", &cfg.nginx.upstream_file),
    ];
    let commands = [
        ("nginx.test_command", &cfg.nginx.test_command),
        ("nginx.reload_command", &cfg.nginx.reload_command),
        ("hooks.pre_switch", &cfg.hooks.pre_switch),
        ("hooks.post_deploy", &cfg.hooks.post_deploy),
    ];
    for (key, argv) in &commands {
        // A bare name is looked up in PATH; only a path can point into the folder.
        if let Some(program) = argv.first().filter(|p| p.contains('/')) {
            others.push((key, Path::new(program)));
        }
    }
    let inside: Vec<String> = others
        .iter()
        .filter(|(_, path)| is_within(path, &folder))
        .map(|(what, path)| format!("{what} ({})", path.display()))
        .collect();
    if inside.is_empty() {
        return Finding::new(
            Level::Ok,
            "layout",
            format!(
                "the desired file's folder {} holds nothing else fieldtrack uses",
                folder.display()
            ),
        );
    }
    Finding::new(
        Level::Warn,
        "layout",
        format!(
            "the desired file's folder {} also holds {}: whoever may write the desired file \
             (CI's user) could replace those by a rename. Give the desired file a folder of its \
             own, e.g. desired_file = \"desired/desired.toml\" (as `fieldtrack init` writes; \
             docs/ci.md)",
            folder.display(),
            inside.join(", ")
        ),
    )
}

/// `path` is `folder` or below it, as written or with symlinks resolved.
fn is_within(path: &Path, folder: &Path) -> bool {
    if path.starts_with(folder) {
        return true;
    }
    // A path that does not exist yet counts by its nearest existing ancestor.
    let resolve = |p: &Path| {
        p.ancestors().find_map(|a| {
            let real = std::fs::canonicalize(a).ok()?;
            Some(real.join(p.strip_prefix(a).ok()?))
        })
    };
    match (resolve(path), std::fs::canonicalize(folder)) {
        (Some(path), Ok(folder)) => path.starts_with(folder),
        _ => false,
    }
}

/// fieldtrack replaces its files by writing a temp file beside them and renaming it, so it
/// needs to write their folders.
fn folder_findings(cfg: &Config) -> Vec<Finding> {
    let mut folders: Vec<(&str, PathBuf)> = vec![
        ("desired file", parent(&cfg.desired_file)),
        ("history file", parent(&cfg.history_file)),
        ("state_dir", cfg.state_dir.clone()),
        ("upstream file", parent(&cfg.nginx.upstream_file)),
    ];
    folders.dedup_by(|a, b| a.1 == b.1);
    let mut problems = Vec::new();
    for (what, folder) in &folders {
        // A missing folder is created on first use: its nearest existing ancestor counts.
        let existing = folder.ancestors().find(|p| p.exists()).unwrap_or(folder);
        if !writable(existing) {
            problems.push(format!("{} (for the {what})", existing.display()));
        }
    }
    if problems.is_empty() {
        return vec![Finding::new(
            Level::Ok,
            "files",
            "this user can write the folders of the desired file, history, state_dir and upstream file",
        )];
    }
    let uid = rustix::process::getuid().as_raw();
    vec![Finding::new(
        Level::Fail,
        "files",
        format!(
            "this user (uid {uid}) cannot write {}: run check as the user that runs fieldtrack, \
             or give that user the folder",
            problems.join(", ")
        ),
    )]
}

fn parent(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

fn writable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}

fn docker_unreachable(cfg: &Config, reason: &str) -> Finding {
    Finding::new(
        Level::Fail,
        "docker",
        format!(
            "engine at {} is unreachable: {reason}. Start it (systemctl start docker), or set \
             docker.host / $DOCKER_HOST to where it listens",
            cfg.docker.host
        ),
    )
}

/// Whether the Docker config has credentials for the repository's registry. Never prints
/// them, nor a credential helper's output (it may hold one).
async fn credentials_finding(repository: &str) -> Finding {
    use crate::apply::docker::credentials::{self, CredentialError, Login};
    let registry = registry_of(repository);
    let source = credentials::Source::from_env();
    match credentials::lookup(&registry, &source).await {
        Ok(Login::Found { credentials, from }) => {
            let kind = if credentials.identitytoken.is_some() {
                "identity token"
            } else {
                "user and password"
            };
            Finding::new(
                Level::Ok,
                "registry",
                format!("credentials for {registry} found in {from} ({kind})"),
            )
        }
        Ok(Login::Missing { why }) => Finding::new(
            Level::Warn,
            "registry",
            format!(
                "no credentials for {registry} ({why}): pulls are anonymous. Fine for a public \
                 repository; for a private one run `docker login {registry}` as the user that \
                 runs fieldtrack (or set DOCKER_CONFIG)"
            ),
        ),
        Err(e @ CredentialError::Config { .. }) => Finding::new(
            Level::Fail,
            "registry",
            format!("{e}: fieldtrack would pull {registry} anonymously. Fix or remove the file"),
        ),
        Err(e @ CredentialError::Invalid { .. }) => Finding::new(
            Level::Fail,
            "registry",
            format!("{e}: run `docker login {registry}` again as the user that runs fieldtrack"),
        ),
        Err(e) => Finding::new(
            Level::Fail,
            "registry",
            format!(
                "{e} (named in {}): install or fix the helper, or remove it from the file",
                source.shown()
            ),
        ),
    }
}

/// The upstream file exists and holds the configured block: nginx refuses to start
/// without it, and its port is what says which color is live.
fn upstream_file_finding(cfg: &Config) -> Finding {
    let path = &cfg.nginx.upstream_file;
    let name = &cfg.nginx.upstream_name;
    let placeholder = format!(
        "create it with a placeholder block (`fieldtrack init` does; or see docs/operations.md, \
         \"The nginx side\"): upstream {name} {{ server 127.0.0.1:{}; }}",
        cfg.container.blue_port
    );
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::new(
            Level::Fail,
            "upstream",
            format!(
                "{} does not exist, so nginx cannot include it: {placeholder}",
                path.display()
            ),
        ),
        Err(e) => Finding::new(
            Level::Fail,
            "upstream",
            format!("cannot read {}: {e}", path.display()),
        ),
        Ok(text) => match crate::nginx_conf::upstream::parse_port(&text, name) {
            Some(port) => {
                let color = cfg
                    .color_of_port(port)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "neither color: nothing is live".into());
                Finding::new(
                    Level::Ok,
                    "upstream",
                    format!(
                        "{}: upstream {name} -> 127.0.0.1:{port} ({color})",
                        path.display()
                    ),
                )
            }
            None => Finding::new(
                Level::Fail,
                "upstream",
                format!(
                    "{} has no `upstream {name}` block with a 127.0.0.1 server; {placeholder}",
                    path.display()
                ),
            ),
        },
    }
}

/// nginx's configuration, as `test_command -T` dumps it, includes the upstream file and
/// proxies to its upstream.
/// Whether `nginx.pid_file` names a running process: the drain waits for its old workers.
fn pid_file_finding(cfg: &Config) -> Finding {
    let path = &cfg.nginx.pid_file;
    let pid = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => Finding::new(
            Level::Ok,
            "pid file",
            format!(
                "nginx master {pid} (from {}): a drain lasts until its old workers exit",
                path.display()
            ),
        ),
        _ => Finding::new(
            Level::Warn,
            "pid file",
            format!(
                "{} names no running nginx: after a switch the drain cannot wait for nginx's \
                 old workers, which may send the old color requests a moment longer. Set \
                 nginx.pid_file to the `pid` of nginx.conf",
                path.display()
            ),
        ),
    }
}

async fn nginx_findings(cfg: &Config) -> Vec<Finding> {
    let test = &cfg.nginx.test_command;
    let program = Path::new(&test[0]).file_name().and_then(|n| n.to_str());
    if program != Some("nginx") {
        return vec![Finding::new(
            Level::Warn,
            "nginx",
            format!(
                "cannot tell whether nginx includes {}: test_command `{}` is not nginx itself. \
                 Check by hand: nginx -T | grep {}",
                cfg.nginx.upstream_file.display(),
                test.join(" "),
                cfg.nginx.upstream_name
            ),
        )];
    }
    let mut argv = test.clone();
    argv.push("-T".into());
    let shown = argv.join(" ");
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(DEFAULT_COMMAND_TIMEOUT, command.output()).await {
        Err(_) => {
            return vec![Finding::new(
                Level::Fail,
                "nginx",
                format!(
                    "`{shown}` did not finish within {}s",
                    DEFAULT_COMMAND_TIMEOUT.as_secs()
                ),
            )]
        }
        Ok(Err(e)) => {
            return vec![Finding::new(
                Level::Fail,
                "nginx",
                format!(
                    "cannot run `{shown}`: {e}. Install nginx, or set nginx.test_command and \
                     nginx.reload_command"
                ),
            )]
        }
        Ok(Ok(out)) => out,
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return vec![Finding::new(
            Level::Fail,
            "nginx",
            format!(
                "`{shown}` failed ({}): {}. Fix nginx's config (or run check as root); every \
                 deployment runs the test command and stops when it fails",
                out.status,
                tail.join(" | ")
            ),
        )];
    }
    let dump = Dump::parse(&String::from_utf8_lossy(&out.stdout));
    let mut findings = judge_dump(&dump, &cfg.nginx.upstream_file, &cfg.nginx.upstream_name);
    findings.push(shutdown_finding(&dump));
    if let (Some(_), Some(log)) = (&cfg.canary, &cfg.nginx.access_log) {
        findings.extend(judge_access_log(&dump, log));
    }
    findings
}

/// nginx can write `nginx.access_log` (its folder exists: nginx creates the file, not the
/// folder) and fieldtrack can read it.
fn log_file_finding(log: &Path) -> Finding {
    let folder = parent(log);
    if !folder.is_dir() {
        return Finding::new(
            Level::Fail,
            "log file",
            format!(
                "the folder of nginx.access_log {} does not exist: nginx cannot write the log a \
                 canary is judged from. Create it, or set nginx.access_log to a file in an \
                 existing folder (e.g. /var/log/nginx/)",
                log.display()
            ),
        );
    }
    match std::fs::File::open(log) {
        Ok(_) => Finding::new(
            Level::Ok,
            "log file",
            format!("{} is readable", log.display()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::new(
            Level::Ok,
            "log file",
            format!(
                "{} does not exist yet; nginx creates it in {} once its config logs there",
                log.display(),
                folder.display()
            ),
        ),
        Err(e) => Finding::new(
            Level::Fail,
            "log file",
            format!(
                "cannot read nginx.access_log {}: {e}. Run check as the user that runs \
                 fieldtrack, or let that user read it",
                log.display()
            ),
        ),
    }
}

/// What a `nginx -T` dump says about the access log a canary is judged from: fieldtrack's
/// `log_format` with the keys it reads (`log format`), and `access_log ACCESS_LOG fieldtrack`
/// (`access log`).
pub fn judge_access_log(dump: &Dump, access_log: &Path) -> Vec<Finding> {
    vec![
        log_format_finding(dump),
        access_log_finding(dump, access_log),
    ]
}

fn log_format_finding(dump: &Dump) -> Finding {
    let Some(format) = dump.log_format("fieldtrack") else {
        return Finding::new(
            Level::Fail,
            "log format",
            format!(
                "nginx's config declares no `log_format fieldtrack`, which a canary is judged \
                 from. Add in http {{ }}, before the servers (fieldtrack init's \
                 nginx/fieldtrack-log-format.conf holds it): {LOG_FORMAT}"
            ),
        );
    };
    let missing: Vec<&str> = LOG_KEYS
        .iter()
        .copied()
        .filter(|key| !format.writes_string(key))
        .collect();
    if !missing.is_empty() {
        return Finding::new(
            Level::Fail,
            "log format",
            format!(
                "`log_format fieldtrack` lacks {}: fieldtrack reads every line as a JSON object \
                 with the string keys {} (`\"status\":\"$status\"`). Make it: {LOG_FORMAT}",
                missing
                    .iter()
                    .map(|k| format!("\"{k}\":\"${k}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                LOG_KEYS.join(", ")
            ),
        );
    }
    if !format.escape_json {
        return Finding::new(
            Level::Warn,
            "log format",
            format!(
                "`log_format fieldtrack` has no escape=json: a value holding a quote is not \
                 escaped for JSON and its line is skipped. Make it: {LOG_FORMAT}"
            ),
        );
    }
    Finding::new(
        Level::Ok,
        "log format",
        format!("log_format fieldtrack writes {}", LOG_KEYS.join(", ")),
    )
}

fn access_log_finding(dump: &Dump, access_log: &Path) -> Finding {
    let wanted = std::fs::canonicalize(parent(access_log))
        .ok()
        .zip(access_log.file_name())
        .map(|(folder, name)| folder.join(name));
    let same = |path: &str| {
        let path = Path::new(path);
        path == access_log
            || (wanted.is_some()
                && std::fs::canonicalize(parent(path))
                    .ok()
                    .zip(path.file_name())
                    .map(|(folder, name)| folder.join(name))
                    == wanted)
    };
    let formats: Vec<&str> = dump
        .access_logs()
        .filter(|log| same(log.path))
        .map(|log| log.format)
        .collect();
    let line = format!("access_log {} fieldtrack;", access_log.display());
    if formats.contains(&"fieldtrack") {
        return Finding::new(
            Level::Ok,
            "access log",
            format!(
                "nginx logs to {} in fieldtrack's format",
                access_log.display()
            ),
        );
    }
    if let Some(other) = formats.first() {
        return Finding::new(
            Level::Fail,
            "access log",
            format!(
                "nginx logs to {} in the format {other}, which fieldtrack cannot read: make it \
                 `{line}`",
                access_log.display()
            ),
        );
    }
    Finding::new(
        Level::Fail,
        "access log",
        format!(
            "no `{line}` in nginx's config: nothing writes the log a canary is judged from. \
             Add it to the location proxying to the app (fieldtrack init's location snippet has \
             it), then nginx -t && systemctl reload nginx"
        ),
    )
}

/// Whether nginx bounds the life of its old workers after a reload: the drain waits for
/// them, so without `worker_shutdown_timeout` one long connection holds it up to 60 s.
fn shutdown_finding(dump: &Dump) -> Finding {
    match dump.worker_shutdown_timeout() {
        Some(timeout) => Finding::new(
            Level::Ok,
            "old workers",
            format!(
                "old workers exit at the latest {timeout} after a reload (worker_shutdown_timeout)"
            ),
        ),
        None => Finding::new(
            Level::Warn,
            "old workers",
            "no worker_shutdown_timeout: after a reload an old worker lives as long as its \
             longest connection (a websocket: forever), and each drain waits for it up to 60 s. \
             Set `worker_shutdown_timeout 30s;` in the main context of nginx.conf",
        ),
    }
}

/// What a `nginx -T` dump says about the upstream file and the site proxying to it.
pub fn judge_dump(dump: &Dump, upstream_file: &Path, upstream_name: &str) -> Vec<Finding> {
    let wanted = std::fs::canonicalize(upstream_file).unwrap_or(upstream_file.to_path_buf());
    if dump.files.is_empty() {
        return vec![Finding::new(
            Level::Warn,
            "nginx",
            format!(
                "cannot tell whether nginx includes {}: its `-T` output lists no files",
                upstream_file.display()
            ),
        )];
    }
    let same = |p: &PathBuf| {
        *p == upstream_file || std::fs::canonicalize(p).ok().as_ref() == Some(&wanted)
    };
    let mut out = Vec::new();
    if dump.files.iter().any(same) {
        out.push(Finding::new(
            Level::Ok,
            "nginx",
            format!("nginx's config includes {}", upstream_file.display()),
        ));
    } else {
        out.push(Finding::new(
            Level::Fail,
            "nginx",
            format!(
                "nginx's config does not include {}: add `include {};` inside http {{ }} \
                 (e.g. in /etc/nginx/conf.d/), then nginx -t && systemctl reload nginx",
                upstream_file.display(),
                upstream_file.display()
            ),
        ));
    }
    let proxied = dump.proxies_to(upstream_name);
    if proxied {
        out.push(Finding::new(
            Level::Ok,
            "site",
            format!("a location proxies to http://{upstream_name}"),
        ));
    } else {
        out.push(Finding::new(
            Level::Warn,
            "site",
            format!(
                "no `proxy_pass http://{upstream_name};` in nginx's config: no site sends traffic \
                 to the app yet (see the location snippet `fieldtrack init` wrote)"
            ),
        ));
    }
    out
}

/// A color's port must be free for its container, or already published by it.
fn port_finding(cfg: &Config, color: Color, containers: Option<&[Instance]>) -> Finding {
    let port = cfg.port(color);
    let subject = format!("port {color}");
    let key = format!("container.{color}_port");
    let ours = containers.and_then(|cs| {
        cs.iter()
            .find(|c| c.color == Some(color) && c.state.is_running())
    });
    if let Some(c) = ours {
        return Finding::new(
            Level::Ok,
            subject,
            format!(
                "127.0.0.1:{port} is ours: published by {} ({})",
                c.name, c.image
            ),
        );
    }
    match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Finding::new(Level::Ok, subject, format!("127.0.0.1:{port} is free")),
        Err(e) => {
            let unknown = if containers.is_none() {
                " (Docker is unreachable, so whether a container of the app holds it is unknown)"
            } else {
                ""
            };
            Finding::new(
                Level::Fail,
                subject,
                format!(
                    "127.0.0.1:{port} is taken by something that is not {}-{color}{unknown}: {e}. \
                     Find it first (`ss -ltnp 'sport = :{port}'`, `docker ps`): if it is the app \
                     run by an old deploy script, it may be serving production right now, so \
                     follow docs/migrating.md instead of stopping it; otherwise stop it or \
                     choose another {key}",
                    cfg.app
                ),
            )
        }
    }
}

/// The probe in force, tried once on the live container when one runs: an app that refuses
/// it now (most often the Host `127.0.0.1:PORT`) would fail the next deployment's gate.
async fn health_finding(cfg: &Config, containers: Option<&[Instance]>) -> Finding {
    let live = std::fs::read_to_string(&cfg.nginx.upstream_file)
        .ok()
        .and_then(|text| crate::nginx_conf::upstream::parse_port(&text, &cfg.nginx.upstream_name))
        .and_then(|port| {
            containers?
                .iter()
                .find(|c| c.state.is_running() && c.ports.contains(&port))
                .map(|c| (c.name.clone(), port))
        });
    let probed = match (live, HttpProber::new(&cfg.health)) {
        (Some((name, port)), Ok(prober)) => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            Some((name, addr, prober.probe_at(addr).await))
        }
        (_, Err(e)) => return Finding::new(Level::Fail, "health", e.to_string()),
        (None, _) => None,
    };
    judge_health(&cfg.health, probed)
}

/// [`health_finding`]'s verdict on what the live container (`name` at `addr`) answered,
/// None when nothing is live to ask.
fn judge_health(
    health: &crate::config::HealthConfig,
    probed: Option<(String, SocketAddr, ProbeOutcome)>,
) -> Finding {
    let host = match &health.host {
        Some(host) => format!("Host {host}"),
        None => "Host the address probed (no health.host)".to_string(),
    };
    let headers = match health.headers.len() {
        0 => String::new(),
        _ => {
            let names: Vec<&str> = health.headers.iter().map(|(n, _)| n.as_str()).collect();
            format!(", headers {}", names.join(", "))
        }
    };
    let probe = format!(
        "GET {} with {host}{headers}, healthy on {}",
        health.path, health.expect
    );
    let Some((name, addr, outcome)) = probed else {
        return Finding::new(
            Level::Ok,
            "health",
            format!("{probe}; nothing live to probe"),
        );
    };
    match &outcome {
        ProbeOutcome::Healthy(code) => Finding::new(
            Level::Ok,
            "health",
            format!("{probe}: live {name} answers HTTP {code}"),
        ),
        ProbeOutcome::Unhealthy(_) | ProbeOutcome::Unreachable(_) => {
            let answer = match &outcome {
                ProbeOutcome::Unreachable(reason) => format!("nothing ({reason})"),
                ProbeOutcome::Unhealthy(code) | ProbeOutcome::Healthy(code) => {
                    format!("HTTP {code}")
                }
            };
            let why = host_hint(&outcome, addr, health.host.as_deref()).unwrap_or_else(|| {
                "check health.path, health.expect and the app's logs".to_string()
            });
            Finding::new(
                Level::Warn,
                "health",
                format!(
                    "{probe}: live {name} on {addr} answered {answer}, so the next \
                     deployment's health gate would fail the same way; {why}"
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(files: &[&str], body: &str) -> String {
        let mut text = String::from("nginx: the configuration file /x/nginx.conf syntax is ok\n");
        for f in files {
            text.push_str(&format!("# configuration file {f}:\n{body}\n"));
        }
        text
    }

    fn health() -> crate::config::HealthConfig {
        Config::parse(
            "repository = \"r/a\"\n",
            Path::new("/x/fieldtrack.toml"),
            None,
        )
        .unwrap()
        .health
    }

    #[test]
    fn the_health_finding_shows_the_probe_and_hints_at_health_host_on_a_refused_host() {
        let addr: SocketAddr = "127.0.0.1:3001".parse().unwrap();
        let live = |outcome| Some(("api-blue".to_string(), addr, outcome));
        let mut health = health();

        let f = judge_health(&health, None);
        assert_eq!(f.level, Level::Ok);
        assert_eq!(
            f.message,
            "GET /health with Host the address probed (no health.host), healthy on 2xx; \
             nothing live to probe"
        );
        let f = judge_health(&health, live(ProbeOutcome::Healthy(204)));
        assert_eq!(f.level, Level::Ok);
        assert!(
            f.message.ends_with(": live api-blue answers HTTP 204"),
            "{f:?}"
        );

        let f = judge_health(&health, live(ProbeOutcome::Unhealthy(403)));
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.message.contains("on 127.0.0.1:3001 answered HTTP 403"),
            "{f:?}"
        );
        assert!(
            f.message.contains("may refuse the Host 127.0.0.1:3001"),
            "{f:?}"
        );
        assert!(f.message.contains("set health.host"), "{f:?}");

        health.host = Some("api.example.com".into());
        health.headers = vec![("X-Probe".into(), "1".into())];
        let f = judge_health(&health, live(ProbeOutcome::Unhealthy(403)));
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.message.starts_with(
                "GET /health with Host api.example.com, headers X-Probe, healthy on 2xx: "
            ),
            "{f:?}"
        );
        assert!(!f.message.contains("set health.host"), "{f:?}");
        assert!(
            f.message.contains("check health.path, health.expect"),
            "{f:?}"
        );
        let f = judge_health(&health, live(ProbeOutcome::Unreachable("timed out".into())));
        assert!(f.message.contains("answered nothing (timed out)"), "{f:?}");
    }

    #[test]
    fn a_dump_that_includes_the_upstream_file_and_proxies_to_it_is_ok() {
        let d = dump(
            &["/x/nginx.conf", "/x/up.conf"],
            "location / {\n    proxy_pass http://fieldtrack_api;\n}",
        );
        let f = judge_dump(&Dump::parse(&d), Path::new("/x/up.conf"), "fieldtrack_api");
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.level == Level::Ok), "{f:?}");
    }

    #[test]
    fn a_dump_without_the_upstream_file_fails_naming_the_include_to_add() {
        let d = dump(&["/x/nginx.conf"], "proxy_pass http://fieldtrack_api/;");
        let f = judge_dump(&Dump::parse(&d), Path::new("/x/up.conf"), "fieldtrack_api");
        assert_eq!(f[0].level, Level::Fail);
        assert!(
            f[0].message.contains("include /x/up.conf;"),
            "{}",
            f[0].message
        );
        assert_eq!(f[1].level, Level::Ok);
    }

    #[test]
    fn a_site_proxying_elsewhere_or_in_a_comment_only_is_a_warning() {
        let d = dump(
            &["/x/up.conf"],
            "# proxy_pass http://fieldtrack_api;\nproxy_pass http://fieldtrack_api2;",
        );
        let f = judge_dump(&Dump::parse(&d), Path::new("/x/up.conf"), "fieldtrack_api");
        assert_eq!(f[1].level, Level::Warn, "{f:?}");
    }

    /// A location written on one line, or its target quoted, proxies all the same: the
    /// dump is read as nginx reads it, not line by line.
    #[test]
    fn a_site_proxying_on_one_line_or_quoted_is_ok() {
        for body in [
            "location / { proxy_pass http://fieldtrack_api; }",
            "location / {\n    proxy_pass \"http://fieldtrack_api\";\n}",
        ] {
            let d = dump(&["/x/up.conf"], body);
            let f = judge_dump(&Dump::parse(&d), Path::new("/x/up.conf"), "fieldtrack_api");
            assert_eq!(f[1].level, Level::Ok, "{body}: {f:?}");
        }
    }

    #[test]
    fn a_dump_listing_no_files_cannot_tell() {
        let f = judge_dump(&Dump::parse(""), Path::new("/x/up.conf"), "fieldtrack_api");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, Level::Warn);
    }

    #[test]
    fn the_upstream_file_through_a_symlink_counts_as_included() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("api-upstream.conf");
        std::fs::write(
            &real,
            "upstream fieldtrack_api { server 127.0.0.1:3001; }\n",
        )
        .unwrap();
        let link = dir.path().join("conf.d-fieldtrack-api.conf");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let d = dump(&[link.to_str().unwrap()], "");
        let f = judge_dump(&Dump::parse(&d), &real, "fieldtrack_api");
        assert_eq!(f[0].level, Level::Ok, "{f:?}");
    }

    #[test]
    fn worker_shutdown_timeout_is_found_outside_comments_only() {
        let set = shutdown_finding(&Dump::parse(
            "# configuration file /etc/nginx/nginx.conf:\nworker_shutdown_timeout 30s;\n",
        ));
        assert_eq!(set.level, Level::Ok);
        assert!(set.message.contains("30s"), "{}", set.message);
        let commented =
            shutdown_finding(&Dump::parse("# worker_shutdown_timeout 30s;\nevents {}\n"));
        assert_eq!(commented.level, Level::Warn);
        assert!(commented.message.contains("worker_shutdown_timeout 30s;"));
    }

    fn config_in(dir: &Path, extra: &str) -> Config {
        let text = format!("repository = \"ghcr.io/acme/api\"\n{extra}");
        Config::parse(&text, &dir.join("fieldtrack.toml"), None).unwrap()
    }

    #[test]
    fn a_desired_file_beside_the_config_is_a_layout_warning() {
        let dir = tempfile::tempdir().unwrap();
        // The defaults: everything in the config's folder.
        let f = layout_finding(&config_in(dir.path(), ""));
        assert_eq!(f.level, Level::Warn, "{f:?}");
        for what in [
            "the config (",
            "the env file (",
            "the history (",
            "state_dir (",
        ] {
            assert!(f.message.contains(what), "{what}: {}", f.message);
        }
        assert!(f.message.contains("desired/desired.toml"), "{}", f.message);
        // State below the desired folder, or a hook program in it, counts too.
        let f = layout_finding(&config_in(
            dir.path(),
            "desired_file = \"d/desired.toml\"\nstate_dir = \"d/state\"\nhistory_file = \"h\"\n\
             [container]\nenv_file = \"e/.env\"\n[hooks]\npre_switch = [\"d/smoke.sh\"]\n",
        ));
        assert_eq!(f.level, Level::Warn, "{f:?}");
        assert!(f.message.contains("state_dir ("), "{}", f.message);
        assert!(f.message.contains("hooks.pre_switch ("), "{}", f.message);
        assert!(!f.message.contains("the config ("), "{}", f.message);
    }

    #[test]
    fn a_desired_file_in_a_folder_of_its_own_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_in(
            dir.path(),
            "desired_file = \"desired/desired.toml\"\nstate_dir = \"state\"\n\
             history_file = \"state/.deploy_history\"\n[nginx]\nupstream_file = \"nginx/up.conf\"\n",
        );
        let f = layout_finding(&cfg);
        assert_eq!(f.level, Level::Ok, "{f:?}");
        // A folder reached through a symlink is the same folder.
        std::fs::create_dir(dir.path().join("desired")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("desired"), dir.path().join("alias")).unwrap();
        let cfg = config_in(
            dir.path(),
            "desired_file = \"desired/desired.toml\"\nstate_dir = \"alias/state\"\n",
        );
        let f = layout_finding(&cfg);
        assert_eq!(f.level, Level::Warn, "{f:?}");
        assert!(f.message.contains("state_dir ("), "{}", f.message);
    }

    /// A dump as `nginx -T` prints it: the format in one file, `body` in the site's.
    fn log_dump(format: &str, body: &str) -> String {
        format!(
            "# configuration file /etc/nginx/nginx.conf:\nhttp {{\n    include /etc/nginx/conf.d/*.conf;\n}}\n\n\
             # configuration file /etc/nginx/conf.d/fieldtrack-log-format.conf:\n{format}\n\n\
             # configuration file /etc/nginx/sites-enabled/api:\nserver {{\n    location / {{\n        \
             proxy_pass http://fieldtrack_api;\n        {body}\n    }}\n}}\n"
        )
    }

    fn levels(findings: &[Finding]) -> Vec<(Level, &str)> {
        findings
            .iter()
            .map(|f| (f.level, f.subject.as_str()))
            .collect()
    }

    const LOG: &str = "/var/log/nginx/fieldtrack-api.access.log";

    #[test]
    fn the_format_init_writes_and_its_access_log_are_ok() {
        let d = log_dump(
            LOG_FORMAT,
            &format!("access_log {LOG} fieldtrack;\n        access_log /var/log/nginx/access.log;"),
        );
        let f = judge_access_log(&Dump::parse(&d), Path::new(LOG));
        assert_eq!(
            levels(&f),
            [(Level::Ok, "log format"), (Level::Ok, "access log")],
            "{f:?}"
        );
        // The snippet init writes, comments and all, reads the same.
        let init = crate::cli::init::plan(
            Path::new("/etc/fieldtrack/api.toml"),
            &crate::cli::init::Choices {
                repository: Some("ghcr.io/acme/api".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let snippets: String = init.files[3..].iter().map(|f| f.text.clone()).collect();
        let f = judge_access_log(&Dump::parse(&snippets), Path::new(LOG));
        assert_eq!(
            levels(&f),
            [(Level::Ok, "log format"), (Level::Ok, "access log")],
            "{f:?}\n{snippets}"
        );
    }

    #[test]
    fn a_dump_without_the_format_fails_quoting_the_line_to_add() {
        let d = log_dump("", &format!("access_log {LOG} fieldtrack;"));
        let f = judge_access_log(&Dump::parse(&d), Path::new(LOG));
        assert_eq!(f[0].level, Level::Fail, "{f:?}");
        assert!(f[0].message.contains(LOG_FORMAT), "{}", f[0].message);
        // In a comment only: not declared either.
        let d = log_dump(&format!("# {LOG_FORMAT}"), "");
        let f = judge_access_log(&Dump::parse(&d), Path::new(LOG));
        assert_eq!(f[0].level, Level::Fail, "{f:?}");
    }

    #[test]
    fn a_format_lacking_a_key_or_writing_it_as_a_number_fails_naming_it() {
        // `status` unquoted: a number in JSON, which fieldtrack does not read.
        let numeric = LOG_FORMAT.replace("\"status\":\"$status\"", "\"status\":$status");
        let f = judge_access_log(&Dump::parse(&log_dump(&numeric, "")), Path::new(LOG));
        assert_eq!(f[0].level, Level::Fail, "{f:?}");
        assert!(
            f[0].message.contains("lacks \"status\":\"$status\""),
            "{}",
            f[0].message
        );
        assert!(
            !f[0].message.contains("lacks \"upstream_status"),
            "{}",
            f[0].message
        );
        let without = LOG_FORMAT.replace("\"request_time\":\"$request_time\",", "");
        let f = judge_access_log(&Dump::parse(&log_dump(&without, "")), Path::new(LOG));
        assert_eq!(f[0].level, Level::Fail, "{f:?}");
        assert!(f[0].message.contains("request_time"), "{}", f[0].message);
        // Another format's keys do not count.
        let other = LOG_FORMAT.replace("log_format fieldtrack", "log_format mine");
        let f = judge_access_log(&Dump::parse(&log_dump(&other, "")), Path::new(LOG));
        assert_eq!(f[0].level, Level::Fail, "{f:?}");
    }

    #[test]
    fn a_format_split_over_lines_with_blanks_reads_as_one() {
        let split = "log_format  fieldtrack  escape=json\n    '{ \"upstream_addr\": \"$upstream_addr\", '\n                         '\"status\" : \"${status}\", \"upstream_status\":\"$upstream_status\",'\n                         '\"request_time\":\"$request_time\" }';";
        let f = judge_access_log(&Dump::parse(&log_dump(split, "")), Path::new(LOG));
        assert_eq!(f[0].level, Level::Ok, "{f:?}");
        let unescaped = split.replace(" escape=json", "");
        let f = judge_access_log(&Dump::parse(&log_dump(&unescaped, "")), Path::new(LOG));
        assert_eq!(f[0].level, Level::Warn, "{f:?}");
        assert!(f[0].message.contains("escape=json"), "{}", f[0].message);
    }

    #[test]
    fn the_access_log_must_be_nginx_access_log_in_fieldtracks_format() {
        // Missing, commented out, another file, another format.
        for body in [
            String::new(),
            format!("# access_log {LOG} fieldtrack;"),
            "access_log /var/log/nginx/other.log fieldtrack;".to_string(),
            format!("access_log {LOG};"),
            format!("access_log {LOG} combined;"),
        ] {
            let f = judge_access_log(&Dump::parse(&log_dump(LOG_FORMAT, &body)), Path::new(LOG));
            assert_eq!(f[1].level, Level::Fail, "{body}: {f:?}");
            assert!(
                f[1].message
                    .contains(&format!("access_log {LOG} fieldtrack;")),
                "{}",
                f[1].message
            );
        }
        // Parameters after the format, quotes and a buffer are fine.
        let body = format!("access_log \"{LOG}\" fieldtrack buffer=32k flush=1s;");
        let f = judge_access_log(&Dump::parse(&log_dump(LOG_FORMAT, &body)), Path::new(LOG));
        assert_eq!(f[1].level, Level::Ok, "{f:?}");
    }

    #[test]
    fn the_access_log_through_a_symlinked_folder_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("logs"), dir.path().join("alias")).unwrap();
        let real = dir.path().join("logs/api.log");
        let body = format!(
            "access_log {}/alias/api.log fieldtrack;",
            dir.path().display()
        );
        let f = judge_access_log(&Dump::parse(&log_dump(LOG_FORMAT, &body)), &real);
        assert_eq!(f[1].level, Level::Ok, "{f:?}");
    }

    #[test]
    fn a_missing_log_folder_fails_and_a_log_not_written_yet_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-folder/api.log");
        let f = log_file_finding(&missing);
        assert_eq!(f.level, Level::Fail, "{f:?}");
        assert!(f.message.contains("does not exist"), "{}", f.message);
        let later = dir.path().join("api.log");
        assert_eq!(log_file_finding(&later).level, Level::Ok);
        std::fs::write(&later, "").unwrap();
        assert_eq!(log_file_finding(&later).level, Level::Ok);
    }

    #[test]
    fn levels_print_in_a_fixed_width() {
        assert_eq!(format!("{:<4}|", Level::Ok), "OK  |");
        assert_eq!(format!("{:<4}|", Level::Fail), "FAIL|");
    }
}
