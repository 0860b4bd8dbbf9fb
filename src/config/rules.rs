//! Single-value rules of the config, each a pure function returning the reason a value is
//! refused. [`super::Config::parse`] adds the file and the key to make the error.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Longest `app`: it becomes part of container names (`{app}-green`), and 63 keeps it a
/// valid DNS label too.
pub const MAX_APP_LEN: usize = 63;

/// `[a-z0-9][a-z0-9_.-]{0,62}`: safe inside a container name and a label value.
pub fn check_app(app: &str) -> Result<(), String> {
    const RULE: &str =
        "must be 1 to 63 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit";
    let mut chars = app.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && app.len() <= MAX_APP_LEN {
        Ok(())
    } else {
        Err(RULE.into())
    }
}

/// `[A-Za-z0-9_]+`: an nginx upstream name fieldtrack writes unquoted.
pub fn check_upstream_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("must be one or more of A-Z, a-z, 0-9, '_'".into())
    }
}

/// The default upstream name for `app`: `fieldtrack_{app}` with every character nginx
/// would not accept in a bare name ('.', '-') turned into '_'.
pub fn default_upstream_name(app: &str) -> String {
    let app: String = app
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("fieldtrack_{app}")
}

/// An HTTP path sent as-is in the probe's request line: '/' first, printable ASCII only.
pub fn check_health_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain whitespace or control characters (found {c:?})"
        ));
    }
    if !path.is_ascii() {
        return Err("must be ASCII (percent-encode other characters)".into());
    }
    Ok(())
}

/// `health.host`: the Host header of every probe, a name as a browser would send it: a DNS
/// name, an IPv4 address or a bracketed IPv6 one, and optionally `:port`. No scheme, path or
/// user: those are not part of a Host header.
pub fn check_health_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("must not be empty; leave it out to send the container's address".into());
    }
    if host.contains("://") {
        return Err(
            "must be a host name without a scheme (api.example.com, not https://...)".into(),
        );
    }
    if let Some(c) = host.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain whitespace or control characters (found {c:?})"
        ));
    }
    if host.contains('/') {
        return Err("must be a host name without a path (health.path is the path)".into());
    }
    if host.contains('@') {
        return Err("must be a host name without a user".into());
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address must end with ']'")?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{ip:?} inside [] is not an IPv6 address"));
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err("only :port may follow an IPv6 address in []".into()),
            },
        }
    } else {
        match host.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err("an IPv6 address must be written in [] (as [::1]:8080)".into())
            }
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(
                "must be a host name of letters, digits, '-' and '_' in dot-separated labels, \
                 optionally with :port"
                    .into(),
            );
        }
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) || port.starts_with('+') {
            return Err(format!("{port:?} after ':' is not a port (1 to 65535)"));
        }
    }
    Ok(())
}

/// A header name of `health.headers`: an HTTP token (RFC 9110, 5.1). `Host` has a key of its
/// own, and the headers that frame a request are fieldtrack's to send.
pub fn check_header_name(name: &str) -> Result<(), String> {
    const TCHAR: &str = "!#$%&'*+-.^_`|~";
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || TCHAR.contains(c))
    {
        return Err(format!(
            "must be an HTTP header name: letters, digits and any of {TCHAR}"
        ));
    }
    if name.eq_ignore_ascii_case("host") {
        return Err("the Host header is set with health.host, not in health.headers".into());
    }
    for framing in ["content-length", "transfer-encoding", "connection"] {
        if name.eq_ignore_ascii_case(framing) {
            return Err("is set by fieldtrack for each probe, not in health.headers".into());
        }
    }
    Ok(())
}

/// A header value of `health.headers`: visible ASCII, spaces and tabs, none of them at
/// either end (RFC 9110, 5.5); no line break could smuggle another header in.
pub fn check_header_value(value: &str) -> Result<(), String> {
    if let Some(c) = value
        .chars()
        .find(|&c| !(c == ' ' || c == '\t' || c.is_ascii_graphic()))
    {
        return Err(format!(
            "must be visible ASCII, spaces and tabs (found {c:?})"
        ));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err("must not start or end with a space or tab".into());
    }
    Ok(())
}

/// One of `health.expect` written as a string: a code (`"204"`), a range (`"300-399"`) or a
/// class (`"2xx"`). Whether the codes exist is for [`check_status_range`].
pub fn parse_status(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    const SHAPES: &str = "must be a code (200), a range (\"300-399\") or a class (\"2xx\")";
    let code = |s: &str| -> Result<u16, String> {
        if s.len() == 3 && s.chars().all(|c| c.is_ascii_digit()) {
            s.parse().map_err(|_| SHAPES.to_string())
        } else {
            Err(SHAPES.to_string())
        }
    };
    let range = if let Some(class) = text.strip_suffix("xx").or(text.strip_suffix("XX")) {
        match class.parse::<u16>() {
            Ok(n) if class.len() == 1 => n * 100..=n * 100 + 99,
            _ => return Err(SHAPES.into()),
        }
    } else if let Some((start, end)) = text.split_once('-') {
        code(start.trim())?..=code(end.trim())?
    } else {
        let c = code(text.trim())?;
        c..=c
    };
    check_status_range(&range)?;
    Ok(range)
}

/// Codes of `health.expect` exist in HTTP (100 to 599) and a range runs upward.
pub fn check_status_range(range: &std::ops::RangeInclusive<u16>) -> Result<(), String> {
    use crate::model::probe::STATUS_CODES;
    if !STATUS_CODES.contains(range.start()) || !STATUS_CODES.contains(range.end()) {
        return Err(format!(
            "must be between {} and {}",
            STATUS_CODES.start(),
            STATUS_CODES.end()
        ));
    }
    if range.start() > range.end() {
        return Err("a range must run from the lower code to the higher".into());
    }
    Ok(())
}

/// The longest duration the config or a flag may give: a week. Anything longer is a typo
/// ("99999999999d"), and the bound keeps every sum of durations (a deadline, a timeout)
/// far from overflowing an `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Why a duration was refused.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    /// Not a number with a unit.
    #[error(transparent)]
    Syntax(#[from] humantime::DurationError),
    /// Longer than [`MAX_DURATION`].
    #[error(
        "longer than {}, the longest allowed",
        humantime::format_duration(MAX_DURATION)
    )]
    TooLong,
}

/// Parses a humantime duration ("500ms", "3s", "2m") of at most [`MAX_DURATION`].
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let duration = humantime::parse_duration(value)?;
    check_duration(duration)?;
    Ok(duration)
}

/// Refuses a duration longer than [`MAX_DURATION`].
pub fn check_duration(duration: Duration) -> Result<(), DurationError> {
    if duration > MAX_DURATION {
        return Err(DurationError::TooLong);
    }
    Ok(())
}

/// A path from the config, made absolute against the config file's folder. `.` components
/// are dropped; `..` is kept, since it may cross a symlink.
pub fn resolve_path(value: &str, config_dir: &Path) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    let joined = config_dir.join(value);
    let mut clean = PathBuf::new();
    for component in joined.components() {
        if component != Component::CurDir {
            clean.push(component);
        }
    }
    Ok(clean)
}

/// A command as an argument array: a non-empty program and no NUL anywhere. A program
/// given as a relative path with a '/' (`scripts/smoke.sh`) is resolved against the
/// config's folder like every other path in the file; a bare name (`nginx`) is left for the
/// `PATH` lookup.
pub fn check_command(argv: &[String], config_dir: &Path) -> Result<Vec<String>, String> {
    let Some(program) = argv.first() else {
        return Err("must name a program: an empty array runs nothing".into());
    };
    if program.is_empty() {
        return Err("the program (first element) must not be empty".into());
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err("must not contain a NUL character".into());
    }
    let mut out = argv.to_vec();
    if program.contains('/') && !program.starts_with('/') {
        out[0] = resolve_path(program, config_dir)?
            .to_string_lossy()
            .into_owned();
    }
    Ok(out)
}

/// A hook: like [`check_command`], but an empty array means "no hook".
pub fn check_hook(argv: &[String], config_dir: &Path) -> Result<Vec<String>, String> {
    if argv.is_empty() {
        Ok(Vec::new())
    } else {
        check_command(argv, config_dir)
    }
}

/// `scheme://rest`, printable ASCII without spaces. Which schemes work is up to the Docker
/// client; this only catches values that cannot be an endpoint at all.
pub fn check_docker_host(host: &str) -> Result<(), String> {
    let Some((scheme, rest)) = host.split_once("://") else {
        return Err("must look like unix:///var/run/docker.sock or tcp://host:2376".into());
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '+');
    if !scheme_ok || rest.is_empty() {
        return Err("must look like unix:///var/run/docker.sock or tcp://host:2376".into());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(())
}

/// A Swarm placement constraint, passed to Swarm as written: `node.labels.web==true`,
/// `node.role!=manager`. Only its shape is checked here; Swarm refuses what it does not know
/// when the service is created, and that error names it.
pub fn check_constraint(constraint: &str) -> Result<(), String> {
    if constraint.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    if !constraint.contains("==") && !constraint.contains("!=") {
        return Err("must look like node.labels.web==true or node.role!=manager".into());
    }
    Ok(())
}

/// The webhook URL, parsed by the `url` crate, the same parser reqwest uses to decide where
/// to connect, so that the host fieldtrack shows ([`redact_url`]) is exactly the host it
/// sends to. (A hand-made split got `https://evil.com\@hooks.example.com/` wrong: to the URL
/// standard `\` is `/`, so the host is evil.com, not what follows the `@`. A backslash in a
/// webhook URL can only mislead, so it is refused outright.)
///
/// `https://` only, or `http://` to loopback ([`is_loopback_host`]) or when `allow_http`
/// (a receiver on a private network): the payload names images and failures, and the URL
/// carries a token. The reason never repeats the URL.
pub fn check_webhook(value: &str, allow_http: bool) -> Result<url::Url, String> {
    // The URL standard silently drops tabs and newlines inside a URL; refuse them instead.
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    // The parser reads `\` as `/` and forgives missing or extra slashes after the scheme
    // (`https:/host`, `https:///host`): refused, so that the host is where it seems to be.
    if value.contains('\\') {
        return Err(r"must not contain '\' (URL parsers read it as '/')".into());
    }
    if !value
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'))
    {
        return Err("must name a host right after the scheme and its //".into());
    }
    let url = url::Url::parse(value).map_err(|e| format!("is not a valid URL: {e}"))?;
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("must name a host after the scheme".into());
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_http || is_loopback_host(host) => {}
        "http" => {
            return Err(
                "must start with https:// (set allow_http = true in [notify] for a receiver \
                 on a trusted network)"
                    .into(),
            )
        }
        _ => return Err("must start with https://".into()),
    }
    Ok(url)
}

/// The part of a URL that is safe to print: scheme, host and a port other than the
/// scheme's default, without user info, path or query (where tokens live).
/// `https://hooks.example.com/services/T0/B0/XYZ` gives `https://hooks.example.com/…`.
pub fn redact_url(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

/// `ip:port`, or a bare port meaning loopback (`9187` is `127.0.0.1:9187`): the daemon
/// opens no public port unless told to.
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    let addr = if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
        let port: u16 = value
            .parse()
            .map_err(|_| "port must be between 1 and 65535".to_string())?;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        value.parse::<SocketAddr>().map_err(|_| {
            "must be an address and port like \"127.0.0.1:9187\" or \"[::1]:9187\", or a bare port"
                .to_string()
        })?
    };
    if addr.port() == 0 {
        return Err("port must be between 1 and 65535".into());
    }
    Ok(addr)
}

/// A TCP port, 1..=65535.
pub fn check_port(value: i64) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| "must be between 1 and 65535".into())
}

/// The events a notification can be about, as the webhook's `event` field names them:
/// what `notify.email.events` may list.
pub const NOTIFY_EVENTS: &[&str] = &[
    "succeeded",
    "failed",
    "rolled_back",
    "auto_rollback",
    "canary_step",
];

/// An SMTP server's host: a DNS name or an IP address, without scheme or port (the port
/// has its own key).
pub fn check_smtp_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(
            "must be a host name or an IP address, without scheme or port (the port is notify.email.port)"
                .into(),
        );
    }
    Ok(())
}

/// Whether `host` names this machine over loopback: `localhost`, 127.0.0.0/8 or `::1`
/// (bracketed too, as a URL writes it). The one rule for every transport without TLS
/// (SMTP, a webhook over `http://`, a Docker engine over plain TCP): over loopback nothing
/// on the way could read what is sent, so only there is clear text allowed by default.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A `docker.host` reached without TLS: a `tcp://` or `http://` endpoint must be on
/// loopback. Every container's env-file values and the registry credentials of each pull
/// travel to the engine, so over the network they would cross in clear. Called only when
/// neither TLS nor `docker.allow_plain_tcp` is set; a `unix://` socket never leaves the
/// machine.
pub fn check_plain_docker_host(host: &str) -> Result<(), String> {
    let Some((scheme, _)) = host.split_once("://") else {
        return Ok(());
    };
    if scheme != "tcp" && scheme != "http" {
        return Ok(());
    }
    // An endpoint the URL parser cannot read has no host to call loopback: refused too.
    let loopback = url::Url::parse(host)
        .ok()
        .and_then(|u| u.host_str().map(is_loopback_host))
        .unwrap_or(false);
    if loopback {
        return Ok(());
    }
    Err(
        "is plain TCP without TLS to another machine: env-file values and registry \
         credentials would travel in clear. Use TLS (docker.tls_ca, docker.tls_cert, \
         docker.tls_key), a loopback address or a unix:// socket, or set \
         docker.allow_plain_tcp = true if the network between is trusted"
            .into(),
    )
}

/// An environment variable name, `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(
            "must be an environment variable name: A-Z, a-z, 0-9, '_', not starting with a digit"
                .into(),
        );
    }
    Ok(())
}

/// A mail address as `ops@example.com` or `Deploys <ops@example.com>`.
pub fn parse_mailbox(value: &str) -> Result<lettre::message::Mailbox, String> {
    if value.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    value.parse().map_err(|e| {
        format!("is not a mail address like ops@example.com or \"Deploys <ops@example.com>\": {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn app_names() {
        for ok in ["api", "a", "0", "my-app", "my_app.v2", &"a".repeat(63)] {
            check_app(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "Api",
            "-api",
            "_api",
            ".api",
            "my app",
            "api/x",
            "api;x",
            "é",
            "a\n",
            &"a".repeat(64),
        ] {
            assert!(check_app(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_names() {
        for ok in ["fieldtrack_api", "A", "_", "x1_Y2"] {
            check_upstream_name(ok).unwrap();
        }
        for bad in ["", "a-b", "a.b", "a b", "a;", "a{"] {
            assert!(check_upstream_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_upstream_name("api"), "fieldtrack_api");
        assert_eq!(default_upstream_name("my-app.v2"), "fieldtrack_my_app_v2");
        check_upstream_name(&default_upstream_name("my-app.v2")).unwrap();
    }

    #[test]
    fn health_paths() {
        for ok in ["/", "/health", "/healthz?full=1", "/a%20b"] {
            check_health_path(ok).unwrap();
        }
        for bad in [
            "",
            "health",
            "/a b",
            "/a\tb",
            "/a\r\nHost: x",
            "/\0",
            "/é",
            "/a\u{a0}",
        ] {
            assert!(check_health_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["3", "3 parsecs", "", "-1s", "s", "1.5.5s"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse_duration("7d").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("1w").unwrap(), MAX_DURATION);
        for bad in ["7d 1ns", "8d", "99999999999d", "18446744073709551615s"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::TooLong)),
                "{bad:?}"
            );
        }
        // Beyond u64 seconds: humantime's own overflow error, refused all the same.
        assert!(parse_duration("584942417355y").is_err());
        assert_eq!(
            DurationError::TooLong.to_string(),
            "longer than 7days, the longest allowed"
        );
    }

    #[test]
    fn paths_resolve_against_the_config_folder() {
        let dir = Path::new("/etc/fieldtrack");
        assert_eq!(
            resolve_path("desired.toml", dir).unwrap(),
            PathBuf::from("/etc/fieldtrack/desired.toml")
        );
        assert_eq!(
            resolve_path("./state/./x", dir).unwrap(),
            PathBuf::from("/etc/fieldtrack/state/x")
        );
        assert_eq!(
            resolve_path("../shared/.env", dir).unwrap(),
            PathBuf::from("/etc/fieldtrack/../shared/.env")
        );
        assert_eq!(
            resolve_path("/srv/app/desired.toml", dir).unwrap(),
            PathBuf::from("/srv/app/desired.toml")
        );
        assert!(resolve_path("", dir).is_err());
        assert!(resolve_path("a\0b", dir).is_err());
    }

    #[test]
    fn commands() {
        let dir = Path::new("/etc/fieldtrack");
        assert_eq!(
            check_command(&argv(&["nginx", "-t"]), dir).unwrap(),
            argv(&["nginx", "-t"])
        );
        assert_eq!(
            check_command(&argv(&["/usr/sbin/nginx", "-s", "reload"]), dir).unwrap(),
            argv(&["/usr/sbin/nginx", "-s", "reload"])
        );
        assert_eq!(
            check_command(&argv(&["./scripts/smoke.sh", "a b"]), dir).unwrap(),
            argv(&["/etc/fieldtrack/scripts/smoke.sh", "a b"])
        );
        // An empty argument after the program is legitimate.
        check_command(&argv(&["echo", ""]), dir).unwrap();
        assert!(check_command(&[], dir).is_err());
        assert!(check_command(&argv(&[""]), dir).is_err());
        assert!(check_command(&argv(&["", "-t"]), dir).is_err());
        assert!(check_command(&argv(&["nginx", "-\0t"]), dir).is_err());
        assert_eq!(check_hook(&[], dir).unwrap(), Vec::<String>::new());
        assert!(check_hook(&argv(&[""]), dir).is_err());
    }

    #[test]
    fn docker_hosts() {
        for ok in [
            "unix:///var/run/docker.sock",
            "tcp://10.0.0.2:2376",
            "ssh://deploy@host",
            "http://localhost:2375",
        ] {
            check_docker_host(ok).unwrap();
        }
        for bad in [
            "",
            "/var/run/docker.sock",
            "unix://",
            "://x",
            "tcp://a b",
            "TCP://x",
        ] {
            assert!(check_docker_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn webhooks() {
        for ok in [
            "https://hooks.example.com/services/T0/B0/XYZ",
            "https://user:pass@example.com",
            "https://[::1]:8443/x",
        ] {
            check_webhook(ok, false).unwrap();
        }
        check_webhook("http://10.0.0.9:9000/hook", true).unwrap();
        // Loopback is not the network: no allow_http needed there.
        check_webhook("http://127.0.0.1:9000/hook", false).unwrap();
        for (bad, allow_http) in [
            ("", false),
            ("hooks.example.com/x", false),
            ("ftp://example.com", true),
            ("file:///etc/passwd", true),
            ("https://", false),
            ("https:///path", false),
            ("https://:443/x", false),
            ("https://a b/", false),
            ("https://x/\n", false),
            ("https://hooks.exa\tmple.com/", false),
            ("http://10.0.0.9:9000/hook", false),
            ("https://example.com:65536/", false),
            ("https://exa%20mple.com/", false),
            (r"https://hooks.example.com\x@evil.com/", false),
            (r"https://evil.com\@hooks.example.com/", false),
            ("https:/hooks.example.com/", false),
            ("https:hooks.example.com/", false),
        ] {
            let reason = check_webhook(bad, allow_http).expect_err(bad);
            assert!(bad.is_empty() || !reason.contains(bad), "{reason}");
        }
        let reason = check_webhook("http://hooks.example.com/x", false).unwrap_err();
        assert!(reason.contains("allow_http = true"), "{reason}");
    }

    #[test]
    fn redaction_keeps_only_scheme_host_and_port() {
        let redact = |url: &str| redact_url(&url::Url::parse(url).unwrap());
        assert_eq!(
            redact("https://hooks.example.com/services/T0/B0/SECRET"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact("https://user:SECRET@example.com:8443/x?token=SECRET"),
            "https://example.com:8443/…"
        );
        assert_eq!(
            redact("https://example.com?token=SECRET"),
            "https://example.com/…"
        );
        // The host reqwest connects to, whatever the text around it suggests.
        assert_eq!(
            redact(r"https://evil.example\@hooks.example.com/SECRET"),
            "https://evil.example/…"
        );
        assert_eq!(
            redact("https://hooks.example.com@evil.example/SECRET"),
            "https://evil.example/…"
        );
        assert_eq!(
            redact("https://ÉXAMPLE.com/x"),
            "https://xn--xample-9ua.com/…"
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1:9187").unwrap(),
            "127.0.0.1:9187".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_listen("9187").unwrap(),
            "127.0.0.1:9187".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9187").unwrap(),
            "[::1]:9187".parse::<SocketAddr>().unwrap()
        );
        parse_listen("0.0.0.0:9187").unwrap();
        for bad in [
            "",
            "0",
            "70000",
            "localhost:9187",
            "127.0.0.1",
            "127.0.0.1:0",
            ":9187",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(check_port(1), Ok(1));
        assert_eq!(check_port(65535), Ok(65535));
        for bad in [0, -1, 65536, i64::MAX, i64::MIN] {
            assert!(check_port(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod email_tests {
    use super::*;

    #[test]
    fn smtp_hosts() {
        for ok in [
            "smtp.example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "mail-1.example",
        ] {
            check_smtp_host(ok).expect(ok);
        }
        for bad in [
            "",
            "smtp://mail.example.com",
            "mail.example.com:587",
            "mail example.com",
            "-mail.example.com",
            "mail..example.com",
            "[::1]",
        ] {
            assert!(check_smtp_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for yes in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(yes), "{yes}");
        }
        for no in [
            "10.0.0.1",
            "smtp.example.com",
            "localhost.example.com",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(no), "{no}");
        }
    }

    #[test]
    fn plain_docker_hosts_only_on_loopback() {
        for ok in [
            "unix:///var/run/docker.sock",
            "tcp://127.0.0.1:2375",
            "tcp://[::1]:2375",
            "http://localhost:2375",
            "ssh://deploy@engine",
        ] {
            check_plain_docker_host(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "tcp://10.0.0.5:2375",
            "tcp://0.0.0.0:2375",
            "http://engine.example.com:2375",
            "tcp://127.0.0.1.example.com:2375",
        ] {
            let reason = check_plain_docker_host(bad).expect_err(bad);
            assert!(reason.contains("docker.allow_plain_tcp = true"), "{reason}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["SMTP_PASSWORD", "_x", "a1"] {
            check_env_name(ok).expect(ok);
        }
        for bad in ["", "1A", "SMTP-PASSWORD", "A B", "$X"] {
            assert!(check_env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mailboxes() {
        assert_eq!(
            parse_mailbox("ops@example.com").unwrap().email.to_string(),
            "ops@example.com"
        );
        let named = parse_mailbox("Deploys <ops@example.com>").unwrap();
        assert_eq!(named.name.as_deref(), Some("Deploys"));
        for bad in ["", "ops", "ops@", "a@b.c\r\nBcc: x@y.z", "<>"] {
            assert!(parse_mailbox(bad).is_err(), "{bad:?}");
        }
    }
}
