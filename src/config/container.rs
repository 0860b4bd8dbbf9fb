//! `[container]`: the ports, the env file and the [`Settings`] a color's container runs with.
//!
//! The settings take Compose's names and shapes (`volumes = ["data:/data:ro"]`,
//! `memory = "512m"`, `cpus = 1.5`, ...) so that a team moving from a Compose file writes
//! what it knows. Each is checked here, once, against the engine's own rules, so that a
//! typo is an error at load naming the key (`container.volumes[1]`) rather than a failed
//! deployment: a container the engine refuses would only be found out at the next deploy.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use super::raw::{RawContainer, RawScalar};
use super::{quote, ConfigError, ContainerConfig, Ctx, Zero};
use crate::model::settings::{Mount, MountKind, Probe, Settings};

/// Docker's floor for a memory limit (`Minimum memory limit allowed is 6MB`).
const MIN_MEMORY: u64 = 6 << 20;
/// Docker's floor for `--cpus`, and a ceiling no single host reaches.
const CPUS: (f64, f64) = (0.01, 1024.0);
/// Bind mounts of these give the container the engine itself, or the whole host: refused
/// unless `container.allow_host_mounts = true`.
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];
/// The signals `stop_signal` may name (Linux's, as Docker parses them).
const SIGNALS: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

impl Ctx<'_> {
    /// `[container]`
    pub(super) fn container(&self, c: RawContainer) -> Result<ContainerConfig, ConfigError> {
        let container = ContainerConfig {
            port: self.port("container.port", c.port, 8080)?,
            blue_port: self.port("container.blue_port", c.blue_port, 3001)?,
            green_port: self.port("container.green_port", c.green_port, 3002)?,
            env_file: self.path_or("container.env_file", c.env_file.clone(), ".env")?,
            stop_timeout: self.duration(
                "container.stop_timeout",
                c.stop_timeout.clone(),
                "10s",
                Zero::Allowed,
            )?,
            settings: self.settings(c)?,
        };
        if container.blue_port == container.green_port {
            return Err(self.invalid(
                "container.green_port",
                container.green_port.to_string(),
                "must differ from container.blue_port".into(),
            ));
        }
        Ok(container)
    }

    /// Everything of `[container]` beyond the ports, the env file and the stop timeout.
    fn settings(&self, c: RawContainer) -> Result<Settings, ConfigError> {
        let allow_host_mounts = c.allow_host_mounts.unwrap_or(false);
        let volumes = self.volumes(c.volumes.unwrap_or_default(), allow_host_mounts)?;
        let tmpfs = self.tmpfs(c.tmpfs.unwrap_or_default(), &volumes)?;
        Ok(Settings {
            command: self.argv("container.command", c.command, false)?,
            entrypoint: self.argv("container.entrypoint", c.entrypoint, true)?,
            networks: self.networks(c.networks.unwrap_or_default())?,
            volumes,
            memory: c.memory.map(|m| self.memory(m)).transpose()?,
            nano_cpus: c.cpus.map(|n| self.cpus(n)).transpose()?,
            extra_hosts: self.extra_hosts(c.extra_hosts.unwrap_or_default())?,
            labels: self.labels(c.labels.unwrap_or_default())?,
            user: c.user.map(|u| self.user(u)).transpose()?,
            log_driver: c.log_driver.map(|d| self.log_driver(d)).transpose()?,
            log_options: self.log_options(c.log_options.unwrap_or_default())?,
            stop_signal: c.stop_signal.map(|s| self.stop_signal(s)).transpose()?,
            init: c.init.unwrap_or(false),
            read_only: c.read_only.unwrap_or(false),
            tmpfs,
            // `[health]`'s, filled in once it is read.
            health: Probe::default(),
        })
    }

    /// `command` and `entrypoint`: argument arrays, never a shell line. An empty
    /// `entrypoint` clears the image's; an empty `command` would mean nothing, so it is left
    /// out instead.
    fn argv(
        &self,
        key: &str,
        value: Option<Vec<String>>,
        empty_clears: bool,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(argv) = value else { return Ok(None) };
        if argv.is_empty() && !empty_clears {
            return Err(self.invalid(
                key,
                "[]".into(),
                "must name at least the program; leave the key out to keep the image's CMD".into(),
            ));
        }
        if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
            return Err(self.invalid(
                format!("{key}[{i}]"),
                quote(&argv[i]),
                "must not contain a NUL character".into(),
            ));
        }
        if argv.first().is_some_and(String::is_empty) {
            return Err(self.invalid(
                format!("{key}[0]"),
                "\"\"".into(),
                "must name a program (an empty entrypoint list clears the image's)".into(),
            ));
        }
        Ok(Some(argv))
    }

    /// `networks`: existing networks by name, each once. The port is published on the
    /// host, which `host` and `none` cannot do.
    fn networks(&self, networks: Vec<String>) -> Result<Vec<String>, ConfigError> {
        let mut seen = HashSet::new();
        for (i, name) in networks.iter().enumerate() {
            let key = format!("container.networks[{i}]");
            if name == "host" || name == "none" {
                return Err(self.invalid(
                    key,
                    quote(name),
                    "the host and none networks cannot publish the app's port on 127.0.0.1; \
                     name a bridge or user-defined network"
                        .into(),
                ));
            }
            if !is_docker_name(name, 1) {
                return Err(self.invalid(
                    key,
                    quote(name),
                    "must be a Docker network name: letters, digits, '_', '.', '-', starting \
                     with a letter or digit"
                        .into(),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(self.invalid(key, quote(name), "is listed twice".into()));
            }
        }
        Ok(networks)
    }

    /// `volumes`: Compose's short form `source:target[:ro|:rw]`.
    fn volumes(&self, volumes: Vec<String>, allow_host: bool) -> Result<Vec<Mount>, ConfigError> {
        let mut mounts: Vec<Mount> = Vec::with_capacity(volumes.len());
        for (i, text) in volumes.iter().enumerate() {
            let key = format!("container.volumes[{i}]");
            let mount =
                parse_volume(text, self.dir).map_err(|r| self.invalid(&key, quote(text), r))?;
            if mount.kind == MountKind::Bind && !allow_host {
                if let Some(why) = host_mount(Path::new(&mount.source)) {
                    return Err(self.invalid(
                        key,
                        quote(text),
                        format!(
                            "a bind mount of {why} gives the container control of this host; \
                             set container.allow_host_mounts = true if you mean it"
                        ),
                    ));
                }
            }
            if mounts.iter().any(|m| m.target == mount.target) {
                return Err(self.invalid(
                    key,
                    quote(text),
                    format!("{} is already mounted by another volume", mount.target),
                ));
            }
            mounts.push(mount);
        }
        Ok(mounts)
    }

    /// `tmpfs`: `target[:options]`, on a target no volume mounts.
    fn tmpfs(&self, tmpfs: Vec<String>, volumes: &[Mount]) -> Result<Vec<String>, ConfigError> {
        let mut targets: Vec<String> = Vec::new();
        for (i, text) in tmpfs.iter().enumerate() {
            let key = format!("container.tmpfs[{i}]");
            let (target, options) = match text.split_once(':') {
                Some((target, options)) => (target, Some(options)),
                None => (text.as_str(), None),
            };
            let target = container_path(target).map_err(|r| self.invalid(&key, quote(text), r))?;
            if let Some(options) = options {
                let bad = |o: &str| {
                    o.is_empty()
                        || !o
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "=_-+.".contains(c))
                };
                if options.split(',').any(bad) {
                    return Err(self.invalid(
                        key,
                        quote(text),
                        "options must be a comma-separated list like size=64m,mode=1777".into(),
                    ));
                }
            }
            if targets.contains(&target) || volumes.iter().any(|m| m.target == target) {
                return Err(self.invalid(key, quote(text), format!("{target} is already mounted")));
            }
            targets.push(target);
        }
        Ok(tmpfs)
    }

    /// `memory`: bytes, or a number with Compose's unit (`b`, `k`, `m`, `g`).
    fn memory(&self, value: RawScalar) -> Result<u64, ConfigError> {
        let reason = || {
            "must be a size like \"512m\" or \"1g\" (units b, k, m, g) or a number of bytes, \
             at least 6m (Docker's floor)"
                .to_string()
        };
        let bytes = match &value {
            RawScalar::Int(n) => u64::try_from(*n).ok(),
            RawScalar::Float(_) => None,
            RawScalar::Text(text) => parse_size(text),
        };
        match bytes {
            Some(bytes) if bytes >= MIN_MEMORY && i64::try_from(bytes).is_ok() => Ok(bytes),
            _ => Err(self.invalid("container.memory", value.to_string(), reason())),
        }
    }

    /// `cpus`: a share of CPUs (`1.5`), kept as Docker's billionths.
    fn cpus(&self, value: RawScalar) -> Result<u64, ConfigError> {
        let cpus = match &value {
            RawScalar::Int(n) => Some(*n as f64),
            RawScalar::Float(x) => Some(*x),
            RawScalar::Text(text) => text.trim().parse::<f64>().ok(),
        };
        match cpus {
            Some(cpus) if cpus.is_finite() && (CPUS.0..=CPUS.1).contains(&cpus) => {
                Ok((cpus * 1e9).round() as u64)
            }
            _ => Err(self.invalid(
                "container.cpus",
                value.to_string(),
                format!(
                    "must be a number of CPUs like 1.5 or \"0.5\", from {} to {}",
                    CPUS.0, CPUS.1
                ),
            )),
        }
    }

    /// `extra_hosts`: `name:address`, the address an IP or `host-gateway`.
    fn extra_hosts(&self, hosts: Vec<String>) -> Result<Vec<String>, ConfigError> {
        for (i, entry) in hosts.iter().enumerate() {
            // An IPv6 address holds colons: the name ends at the first one.
            let ok = entry.split_once(':').is_some_and(|(name, address)| {
                is_host_name(name)
                    && (address == "host-gateway" || address.parse::<IpAddr>().is_ok())
            });
            if !ok {
                return Err(self.invalid(
                    format!("container.extra_hosts[{i}]"),
                    quote(entry),
                    "must be name:address, the address an IP or host-gateway \
                     (host.docker.internal:host-gateway)"
                        .into(),
                ));
            }
        }
        Ok(hosts)
    }

    /// `labels`: the operator's own; fieldtrack's are what it finds its containers by.
    fn labels(
        &self,
        labels: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        for (name, value) in &labels {
            let key = format!("container.labels.{name}");
            if name.to_ascii_lowercase().starts_with("fieldtrack.") {
                return Err(self.invalid(
                    key,
                    quote(value),
                    "fieldtrack.* labels are fieldtrack's own (it finds and judges its \
                     containers by them); pick another prefix"
                        .into(),
                ));
            }
            if name.is_empty() || name.contains(['\0', '=']) || value.contains('\0') {
                return Err(self.invalid(
                    key,
                    quote(value),
                    "a label needs a name without '=' and no NUL character".into(),
                ));
            }
        }
        Ok(labels)
    }

    /// `user`: `name`, `uid`, `name:group` or `uid:gid`.
    fn user(&self, user: String) -> Result<String, ConfigError> {
        let part = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        let ok = match user.split_once(':') {
            Some((name, group)) => part(name) && part(group),
            None => part(&user),
        };
        if ok {
            Ok(user)
        } else {
            Err(self.invalid(
                "container.user",
                quote(&user),
                "must be user, uid, user:group or uid:gid (\"1000:1000\")".into(),
            ))
        }
    }

    /// `log_driver`: a built-in driver or a plugin (`vendor/driver:tag`).
    fn log_driver(&self, driver: String) -> Result<String, ConfigError> {
        let ok = driver.starts_with(|c: char| c.is_ascii_alphanumeric())
            && driver
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-/:".contains(c));
        if ok {
            Ok(driver)
        } else {
            Err(self.invalid(
                "container.log_driver",
                quote(&driver),
                "must be a log driver's name, like json-file, local, journald or syslog".into(),
            ))
        }
    }

    fn log_options(
        &self,
        options: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        for (name, value) in &options {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !value.contains('\0');
            if !ok {
                return Err(self.invalid(
                    format!("container.log_options.{name}"),
                    quote(value),
                    "an option is a name (letters, digits, '_', '.', '-') and a string value, \
                     like max-size = \"10m\""
                        .into(),
                ));
            }
        }
        Ok(options)
    }

    /// `stop_signal`: a signal's name (`SIGQUIT`, `QUIT`, `SIGRTMIN+3`) or number.
    fn stop_signal(&self, value: RawScalar) -> Result<String, ConfigError> {
        let signal = match &value {
            RawScalar::Int(n) => (1..=64).contains(n).then(|| n.to_string()),
            RawScalar::Float(_) => None,
            RawScalar::Text(text) => parse_signal(text),
        };
        signal.ok_or_else(|| {
            self.invalid(
                "container.stop_signal",
                value.to_string(),
                "must be a signal like SIGTERM, SIGQUIT, SIGINT or SIGUSR1, or its number \
                 (1 to 64)"
                    .into(),
            )
        })
    }
}

/// Docker's name rule for networks and volumes: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at least
/// `min` characters, at most 255.
fn is_docker_name(name: &str, min: usize) -> bool {
    (min..=255).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A host name for `/etc/hosts`: labels of letters, digits and '-', joined by dots.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// One of `volumes`. A source starting with `/` or `.` is a host path (relative to the
/// config's folder, as every path in the file is); anything else names a volume.
fn parse_volume(text: &str, config_dir: &Path) -> Result<Mount, String> {
    let shape = "must be source:target[:ro|:rw], the source a volume name or a host path \
                 starting with / or . (\"uploads:/app/uploads\", \"./sock:/run/api:ro\")";
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        [_, _, mode] => return Err(format!("{shape}; {mode:?} is neither ro nor rw")),
        _ => return Err(shape.to_string()),
    };
    let target = container_path(target)?;
    let (kind, source) = if source.starts_with('/') || source.starts_with('.') {
        if source.contains('\0') {
            return Err("the host path must not contain a NUL character".into());
        }
        let path = normalize(&config_dir.join(source));
        (MountKind::Bind, path.display().to_string())
    } else if is_docker_name(source, 2) {
        (MountKind::Volume, source.to_string())
    } else {
        return Err(format!(
            "{shape}; a volume name is letters, digits, '_', '.', '-' (at least two, \
             starting with a letter or digit)"
        ));
    };
    Ok(Mount {
        kind,
        source,
        target,
        read_only,
    })
}

/// An absolute path inside the container, not `/` itself, without a trailing slash.
fn container_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "the target {path:?} must be an absolute path in the container"
        ));
    }
    let clean = normalize(Path::new(path));
    if clean == Path::new("/") {
        return Err("the target must not be the container's root /".into());
    }
    if path.contains(['\0', ',']) {
        return Err("the target must not contain a NUL character or a comma".into());
    }
    Ok(clean.display().to_string())
}

/// `path` with `.` and `..` resolved by their names alone (the host's symlinks are not
/// followed: the mount is made on the host the engine runs on).
fn normalize(path: &Path) -> PathBuf {
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                clean.pop();
            }
            Component::Normal(part) => clean.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    clean
}

/// Why a bind mount source hands the host over: the Docker socket, or a folder holding it
/// (`/` included). None for any other path.
fn host_mount(source: &Path) -> Option<String> {
    if source == Path::new("/") {
        return Some("/ (the host's whole file system)".into());
    }
    if source
        .file_name()
        .is_some_and(|name| name.to_string_lossy().ends_with("docker.sock"))
    {
        return Some(format!("{} (the Docker socket)", source.display()));
    }
    DOCKER_SOCKETS
        .iter()
        .any(|socket| Path::new(socket).starts_with(source))
        .then(|| format!("{} (it holds the Docker socket)", source.display()))
}

/// `512m`, `1g`, `1.5g`, `300000k`, `64mb`, `1024` (bytes): Compose's units, base 1024.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let digits = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let factor: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(factor);
    }
    let bytes = number.parse::<f64>().ok()? * factor as f64;
    (bytes.is_finite() && bytes < i64::MAX as f64).then(|| bytes.round() as u64)
}

/// A signal as Docker takes it, with its `SIG` prefix: `QUIT` is `SIGQUIT`; numbers stay
/// numbers.
fn parse_signal(text: &str) -> Option<String> {
    if let Ok(n) = text.parse::<u32>() {
        return (1..=64).contains(&n).then(|| n.to_string());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if SIGNALS.contains(&name.as_str()) {
        return Some(name);
    }
    // Real-time signals: SIGRTMIN+n, SIGRTMAX-n within the 32 of them.
    let offset = |rest: &str| rest.parse::<u32>().is_ok_and(|n| n <= 30);
    let realtime = match (name.strip_prefix("SIGRTMIN"), name.strip_prefix("SIGRTMAX")) {
        (Some(""), _) | (_, Some("")) => true,
        (Some(rest), _) => rest.strip_prefix('+').is_some_and(offset),
        (_, Some(rest)) => rest.strip_prefix('-').is_some_and(offset),
        _ => false,
    };
    realtime.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const MINIMAL: &str = "repository = \"ghcr.io/fieldtrack-tech/api\"\n[container]\n";

    fn settings(extra: &str) -> Settings {
        let text = format!("{MINIMAL}{extra}");
        Config::parse(&text, Path::new("/srv/api/fieldtrack.toml"), None)
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
            .container
            .settings
    }

    fn err(extra: &str) -> String {
        let text = format!("{MINIMAL}{extra}");
        Config::parse(&text, Path::new("/srv/api/fieldtrack.toml"), None)
            .expect_err(extra)
            .to_string()
    }

    /// The error names `key` and says what is allowed (`hint`).
    fn refused(extra: &str, key: &str, hint: &str) {
        let msg = err(extra);
        assert!(msg.contains(&format!("{key}: ")), "{extra}: {msg}");
        assert!(msg.contains(hint), "{extra}: {msg}");
    }

    #[test]
    fn no_settings_are_the_defaults() {
        assert_eq!(settings(""), Settings::default());
    }

    #[test]
    fn command_and_entrypoint() {
        let s = settings(
            "command = [\"bin/rails\", \"server\"]\nentrypoint = [\"/docker-entrypoint\"]\n",
        );
        assert_eq!(s.command, Some(vec!["bin/rails".into(), "server".into()]));
        assert_eq!(s.entrypoint, Some(vec!["/docker-entrypoint".into()]));
        assert_eq!(settings("entrypoint = []\n").entrypoint, Some(vec![]));
        refused(
            "command = []\n",
            "container.command",
            "must name at least the program",
        );
        refused(
            "command = [\"\", \"x\"]\n",
            "container.command[0]",
            "must name a program",
        );
        refused(
            "entrypoint = [\"a\\u0000\"]\n",
            "container.entrypoint[0]",
            "NUL",
        );
        refused(
            "command = \"bin/rails server\"\n",
            "container.command",
            "invalid type",
        );
    }

    #[test]
    fn networks() {
        assert_eq!(
            settings("networks = [\"backend\", \"db_net.1\"]\n").networks,
            vec!["backend".to_string(), "db_net.1".to_string()]
        );
        refused(
            "networks = [\"host\"]\n",
            "container.networks[0]",
            "cannot publish",
        );
        refused(
            "networks = [\"a\", \"none\"]\n",
            "container.networks[1]",
            "cannot publish",
        );
        refused(
            "networks = [\"\"]\n",
            "container.networks[0]",
            "Docker network name",
        );
        refused(
            "networks = [\"-x\"]\n",
            "container.networks[0]",
            "Docker network name",
        );
        refused(
            "networks = [\"a b\"]\n",
            "container.networks[0]",
            "Docker network name",
        );
        refused(
            "networks = [\"app\", \"app\"]\n",
            "container.networks[1]",
            "listed twice",
        );
    }

    #[test]
    fn volumes_named_and_bound() {
        let s = settings(
            "volumes = [\"uploads:/app/uploads\", \"./sock:/run/api:ro\", \"/srv/x/:/x/:rw\"]\n",
        );
        assert_eq!(
            s.volumes,
            vec![
                Mount {
                    kind: MountKind::Volume,
                    source: "uploads".into(),
                    target: "/app/uploads".into(),
                    read_only: false,
                },
                Mount {
                    kind: MountKind::Bind,
                    source: "/srv/api/sock".into(),
                    target: "/run/api".into(),
                    read_only: true,
                },
                Mount {
                    kind: MountKind::Bind,
                    source: "/srv/x".into(),
                    target: "/x".into(),
                    read_only: false,
                },
            ]
        );
        assert_eq!(
            settings("volumes = [\"../data:/data\"]\n").volumes[0].source,
            "/srv/data"
        );
        refused(
            "volumes = [\"uploads\"]\n",
            "container.volumes[0]",
            "source:target",
        );
        refused(
            "volumes = [\"a:b:c:d\"]\n",
            "container.volumes[0]",
            "source:target",
        );
        refused(
            "volumes = [\"data:/data:rx\"]\n",
            "container.volumes[0]",
            "neither ro nor rw",
        );
        refused(
            "volumes = [\"data:data\"]\n",
            "container.volumes[0]",
            "absolute path",
        );
        refused(
            "volumes = [\"data:/\"]\n",
            "container.volumes[0]",
            "container's root",
        );
        refused(
            "volumes = [\"x:/data\"]\n",
            "container.volumes[0]",
            "volume name",
        );
        refused(
            "volumes = [\"my vol:/data\"]\n",
            "container.volumes[0]",
            "volume name",
        );
        refused(
            "volumes = [\"aa:/data\", \"./b:/data/\"]\n",
            "container.volumes[1]",
            "/data is already mounted",
        );
    }

    #[test]
    fn host_mounts_need_allow_host_mounts() {
        for source in [
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/home/me/.docker/desktop/docker.sock",
            "/",
            "/srv/..",
            "/var/run",
            "/run/",
        ] {
            let extra = format!("volumes = [\"data:/data\", \"{source}:/sock\"]\n");
            refused(
                &extra,
                "container.volumes[1]",
                "set container.allow_host_mounts = true if you mean it",
            );
            let allowed = settings(&format!("allow_host_mounts = true\n{extra}"));
            assert_eq!(allowed.volumes.len(), 2, "{source}");
        }
        // A named volume called like the socket is no host path.
        assert_eq!(
            settings("volumes = [\"docker.sock:/s\"]\n").volumes.len(),
            1
        );
        assert_eq!(
            settings("volumes = [\"/run/api:/run/api\"]\n")
                .volumes
                .len(),
            1
        );
    }

    #[test]
    fn memory_in_compose_units() {
        for (written, bytes) in [
            ("\"512m\"", 512u64 << 20),
            ("\"1g\"", 1 << 30),
            ("\"1G\"", 1 << 30),
            ("\"1.5g\"", 3 << 29),
            ("\"64mb\"", 64 << 20),
            ("\"7000k\"", 7000 << 10),
            ("\"6291456b\"", 6 << 20),
            ("6291456", 6 << 20),
        ] {
            assert_eq!(
                settings(&format!("memory = {written}\n")).memory,
                Some(bytes),
                "{written}"
            );
        }
        for bad in [
            "\"5m\"", "\"512\"", "\"512x\"", "\"m\"", "\"-1g\"", "1.5", "\"1.g\"", "0",
        ] {
            refused(
                &format!("memory = {bad}\n"),
                "container.memory",
                "at least 6m",
            );
        }
    }

    #[test]
    fn cpus_as_nano_cpus() {
        assert_eq!(settings("cpus = 1.5\n").nano_cpus, Some(1_500_000_000));
        assert_eq!(settings("cpus = \"0.5\"\n").nano_cpus, Some(500_000_000));
        assert_eq!(settings("cpus = 2\n").nano_cpus, Some(2_000_000_000));
        for bad in ["0", "-1", "0.001", "\"many\"", "nan", "inf", "2000"] {
            refused(
                &format!("cpus = {bad}\n"),
                "container.cpus",
                "number of CPUs",
            );
        }
    }

    #[test]
    fn extra_hosts() {
        let s = settings(
            "extra_hosts = [\"host.docker.internal:host-gateway\", \"db:10.0.0.5\", \"v6:::1\"]\n",
        );
        assert_eq!(s.extra_hosts.len(), 3);
        for bad in [
            "db",
            "db:",
            ":10.0.0.5",
            "db:somewhere",
            "a b:1.2.3.4",
            "db=10.0.0.5",
        ] {
            refused(
                &format!("extra_hosts = [\"{bad}\"]\n"),
                "container.extra_hosts[0]",
                "host-gateway",
            );
        }
    }

    #[test]
    fn labels_never_fieldtracks_own() {
        let s = settings("labels = { team = \"api\", \"com.example.tier\" = \"web\" }\n");
        assert_eq!(s.labels.get("team").map(String::as_str), Some("api"));
        refused(
            "labels = { \"fieldtrack.app\" = \"other\" }\n",
            "container.labels.fieldtrack.app",
            "fieldtrack's own",
        );
        refused(
            "labels = { \"FieldTrack.color\" = \"blue\" }\n",
            "container.labels.FieldTrack.color",
            "fieldtrack's own",
        );
        refused(
            "labels = { \"\" = \"x\" }\n",
            "container.labels.",
            "needs a name",
        );
    }

    #[test]
    fn user_log_and_stop_signal() {
        let s = settings(
            "user = \"1000:1000\"\nlog_driver = \"json-file\"\n\
             log_options = { max-size = \"10m\", max-file = \"3\" }\nstop_signal = \"SIGQUIT\"\n",
        );
        assert_eq!(s.user.as_deref(), Some("1000:1000"));
        assert_eq!(s.log_driver.as_deref(), Some("json-file"));
        assert_eq!(s.log_options.len(), 2);
        assert_eq!(s.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(settings("user = \"app\"\n").user.as_deref(), Some("app"));
        assert_eq!(
            settings("stop_signal = \"usr1\"\n").stop_signal.as_deref(),
            Some("SIGUSR1")
        );
        assert_eq!(
            settings("stop_signal = 3\n").stop_signal.as_deref(),
            Some("3")
        );
        assert_eq!(
            settings("stop_signal = \"SIGRTMIN+3\"\n")
                .stop_signal
                .as_deref(),
            Some("SIGRTMIN+3")
        );
        for bad in ["\"\"", "\"a:b:c\"", "\"me you\"", "\":1000\""] {
            refused(&format!("user = {bad}\n"), "container.user", "uid:gid");
        }
        refused("log_driver = \"\"\n", "container.log_driver", "json-file");
        refused(
            "log_driver = \"a b\"\n",
            "container.log_driver",
            "json-file",
        );
        refused(
            "log_options = { \"max size\" = \"1\" }\n",
            "container.log_options.max size",
            "max-size",
        );
        for bad in ["\"SIGFOO\"", "\"\"", "0", "65", "1.5", "\"SIGRTMIN+40\""] {
            refused(
                &format!("stop_signal = {bad}\n"),
                "container.stop_signal",
                "SIGQUIT",
            );
        }
    }

    #[test]
    fn init_read_only_and_tmpfs() {
        let s = settings(
            "init = true\nread_only = true\ntmpfs = [\"/tmp\", \"/run/app:size=64m,mode=1777\"]\n",
        );
        assert!(s.init && s.read_only);
        assert_eq!(
            s.tmpfs,
            vec![
                "/tmp".to_string(),
                "/run/app:size=64m,mode=1777".to_string()
            ]
        );
        refused("init = \"yes\"\n", "container.init", "invalid type");
        refused("tmpfs = [\"tmp\"]\n", "container.tmpfs[0]", "absolute path");
        refused(
            "tmpfs = [\"/tmp:\"]\n",
            "container.tmpfs[0]",
            "comma-separated",
        );
        refused(
            "tmpfs = [\"/tmp:size=1m mode=1\"]\n",
            "container.tmpfs[0]",
            "comma-separated",
        );
        refused(
            "tmpfs = [\"/tmp\", \"/tmp/\"]\n",
            "container.tmpfs[1]",
            "already mounted",
        );
        refused(
            "volumes = [\"data:/data\"]\ntmpfs = [\"/data\"]\n",
            "container.tmpfs[0]",
            "already mounted",
        );
    }

    #[test]
    fn the_commented_settings_of_the_shipped_example_load() {
        let example = include_str!("../../fieldtrack.toml.example");
        let section = example
            .split("\n[")
            .find(|s| s.starts_with("container]"))
            .expect("a [container] section");
        let keys: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .collect();
        assert!(keys.len() >= 16, "{keys:?}");
        let s = settings(&(keys.join("\n") + "\n"));
        assert_eq!(s.networks, vec!["app".to_string()]);
        assert_eq!(s.memory, Some(512 << 20));
        assert!(s.init && s.read_only);
    }

    #[test]
    fn the_contract_example_loads() {
        let s = settings(
            r#"command = ["bin/rails", "server"]
entrypoint = ["/docker-entrypoint"]
networks = ["app"]
volumes = ["uploads:/app/uploads", "/srv/api/sock:/run/api:ro"]
memory = "512m"
cpus = 1.5
extra_hosts = ["host.docker.internal:host-gateway"]
labels = { team = "api" }
user = "1000:1000"
log_driver = "json-file"
log_options = { max-size = "10m" }
stop_signal = "SIGQUIT"
init = true
read_only = true
tmpfs = ["/tmp"]
"#,
        );
        assert_eq!(s.memory, Some(512 << 20));
        assert_eq!(s.nano_cpus, Some(1_500_000_000));
        assert_eq!(s.volumes.len(), 2);
    }
}
