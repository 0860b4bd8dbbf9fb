//! The harness of the integration tests: run the `fieldtrack` binary (against a test bed
//! [`Site`], or in a folder of its own for the tests that need no bed), and read back what it
//! left in the world (the state files, nginx, Docker, a webhook receiver), so that each test
//! reads as a story.

pub mod canary;
pub mod daemon;
pub mod swarm;
pub mod tmpfs;
pub mod webhook;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fieldtrack_testbed::{procfs, util, Site};

pub use daemon::Daemon;

/// How long a spawned command may take to reach the line a test waits for.
pub const LINE_WAIT: Duration = Duration::from_secs(60);

/// How long a test waits for something that should happen "soon" (a webhook POST, a
/// metric, a step in status.json). Generous: the engine may be busy with other tests.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A finished run of the binary.
#[derive(Debug)]
pub struct Run {
    /// The exit code; -1 when a signal ended the process.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

impl Run {
    /// Runs `cmd` to completion and keeps what it printed.
    pub fn of(cmd: &mut Command) -> Run {
        let started = Instant::now();
        let out = cmd.output().expect("the fieldtrack binary runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            duration: started.elapsed(),
        }
    }

    /// Panics with the run's output unless it exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics unless stderr holds every one of `parts`.
    #[track_caller]
    pub fn says(&self, parts: &[&str]) -> &Run {
        for part in parts {
            assert!(
                self.stderr.contains(part),
                "stderr lacks {part:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// The binary run in `cwd`, with nothing inherited that could steer it; arguments to add.
pub fn fieldtrack_in(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldtrack"));
    cmd.current_dir(cwd)
        .env_remove("FIELDTRACK_CONFIG")
        .env_remove("FIELDTRACK_TEST_PAUSE_AT")
        .env_remove("FIELDTRACK_LOG")
        .stdin(Stdio::null());
    cmd
}

/// The binary aimed at the site's config, with nothing inherited that could steer it.
pub fn command(site: &Site, args: &[&str]) -> Command {
    let mut cmd = fieldtrack_in(&site.dir);
    cmd.arg("--config").arg(&site.config_path).args(args);
    cmd
}

/// Runs `fieldtrack --config <site> ARGS...` to completion.
pub fn ft(site: &Site, args: &[&str]) -> Run {
    Run::of(&mut command(site, args))
}

/// What the site's nginx answers on `/version` (the live app's tag), None on anything but a
/// 200.
///
/// Not `Site::served_version`: the bed's GET half-closes its socket after the request, and
/// nginx takes that for a client that went away (499, empty answer) when it proxies.
pub fn served(site: &Site) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&site.nginx_addr(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET /version HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        site.nginx_addr()
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let ok = head.lines().next()?.split_whitespace().nth(1) == Some("200");
    ok.then(|| body.trim().to_string())
}

/// `deploy TAG`, which must succeed, and nginx must then serve TAG.
#[track_caller]
pub fn deploy_ok(site: &Site, tag: &str) {
    let run = ft(site, &["deploy", tag]);
    run.expect_code(0);
    assert_eq!(
        served(site).as_deref(),
        Some(tag),
        "nginx serves {tag} after:\n{}",
        run.stderr
    );
}

/// Health gate settings that make a failing candidate fail in about ten seconds, while a
/// healthy one (half a second to answer here) has twenty times what it needs on a loaded
/// machine. A test waits for what it expects; how fast it comes is the bench's business.
pub fn fast_health(site: &mut Site) {
    site.set("health.interval", "\"1s\"");
    site.set("health.attempts", "10");
}

/// A file's bytes, None when it does not exist.
pub fn bytes(path: &Path) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// The history file as text, "" when missing.
pub fn history(site: &Site) -> String {
    String::from_utf8(bytes(&site.history_file).unwrap_or_default()).expect("history is UTF-8")
}

/// The nginx upstream file's text (compared byte for byte, shown readably on failure).
pub fn upstream(site: &Site) -> String {
    let bytes = bytes(&site.upstream_file).expect("the upstream file exists");
    String::from_utf8(bytes).expect("the upstream file is UTF-8")
}

/// The port the upstream file sends traffic to (`server 127.0.0.1:PORT;`), in production's
/// block: the first (a preview block may follow it).
pub fn upstream_port(site: &Site) -> u16 {
    let text = upstream(site);
    let ports: Vec<u16> = text
        .lines()
        .take_while(|l| l.trim() != "}")
        .filter_map(|l| l.trim().strip_prefix("server 127.0.0.1:"))
        .map(|rest| rest.trim_end_matches(';').parse().expect("a port"))
        .collect();
    assert_eq!(
        ports.len(),
        1,
        "one server line in the upstream file:\n{text}"
    );
    ports[0]
}

/// The color the upstream file points at.
pub fn live_color(site: &Site) -> &'static str {
    match upstream_port(site) {
        p if p == site.blue_port => "blue",
        p if p == site.green_port => "green",
        p => panic!("upstream points at {p}, neither blue nor green"),
    }
}

/// The color nginx does not point at.
pub fn idle_color(site: &Site) -> &'static str {
    match live_color(site) {
        "blue" => "green",
        _ => "blue",
    }
}

/// `{app}-{color}`.
pub fn container_name(site: &Site, color: &str) -> String {
    format!("{}-{color}", site.app)
}

/// The engine's id of a container, by name.
pub fn container_id(site: &Site, name: &str) -> String {
    let out = site
        .docker()
        .args(["inspect", "--format", "{{.Id}}", name])
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker inspect {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// status.json as JSON.
pub fn status(site: &Site) -> serde_json::Value {
    let path = site.state_dir.join("status.json");
    let text = bytes(&path).unwrap_or_else(|| panic!("{} exists", path.display()));
    serde_json::from_slice(&text).expect("status.json is JSON")
}

/// audit.jsonl, one JSON value a line.
pub fn audit(site: &Site) -> Vec<serde_json::Value> {
    let path = site.state_dir.join("audit.jsonl");
    let text = String::from_utf8(bytes(&path).unwrap_or_default()).expect("audit is UTF-8");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("each audit line is JSON"))
        .collect()
}

/// The audit log's records of one event (`deploy`, `canary_step`).
pub fn audit_of(site: &Site, event: &str) -> Vec<serde_json::Value> {
    audit(site)
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

/// The desired file's text, None when missing.
pub fn desired(site: &Site) -> Option<String> {
    bytes(&site.desired_file).map(|b| String::from_utf8(b).expect("the desired file is UTF-8"))
}

/// status.json, None while missing or unreadable (a daemon just started has not written it).
pub fn status_opt(site: &Site) -> Option<serde_json::Value> {
    let text = fs::read(site.state_dir.join("status.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// status.json says TAG converged and nginx serves it.
pub fn converged_on(site: &Site, tag: &str) -> bool {
    status_opt(site).is_some_and(|s| s["phase"] == "converged" && s["desired"] == tag)
        && served(site).as_deref() == Some(tag)
}

/// A site whose daemon resyncs only long after the test is over, so that a file event, a
/// signal or a retry is what made it act (a resync re-reads the desired file and would
/// mask a deaf watcher). Tests of drift repair set a short `rollout.resync` themselves.
pub fn quiet_site() -> Site {
    let mut site = Site::new();
    site.set("rollout.resync", "\"1h\"");
    site
}

/// A desired file naming TAG.
pub fn desired_text(tag: &str) -> String {
    format!("image = \"{tag}\"\n")
}

/// Writes a new file (0644, whatever the umask) in one go.
pub fn write_new(path: &Path, content: impl AsRef<[u8]>) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.write_all(content.as_ref()).unwrap();
}

/// What CI does: write a temp file beside the desired file, `mv` it over.
pub fn write_by_mv(site: &Site, temp_name: &str, text: &str) {
    let temp = site.dir.join(temp_name);
    write_new(&temp, text);
    fs::rename(&temp, &site.desired_file).unwrap();
}

/// What production is, for a test that must leave it alone: what nginx serves, the app's
/// containers by engine id (a container replaced under the same name is a change), the
/// upstream file and the history. Text, so that a failure shows a readable diff.
#[derive(Debug, PartialEq, Eq)]
pub struct Production {
    pub served: Option<String>,
    pub containers: Vec<(String, String)>,
    pub upstream: String,
    pub history: Option<String>,
}

impl Production {
    pub fn of(site: &Site) -> Production {
        Production {
            served: served(site),
            containers: site
                .containers()
                .into_iter()
                .map(|name| {
                    let id = container_id(site, &name);
                    (name, id)
                })
                .collect(),
            upstream: upstream(site),
            history: bytes(&site.history_file).map(|b| String::from_utf8_lossy(&b).into_owned()),
        }
    }

    #[track_caller]
    pub fn assert_same(&self, site: &Site) {
        assert_eq!(&Production::of(site), self, "production changed");
    }

    /// [`Production::assert_same`], with the daemon's report when it changed.
    #[track_caller]
    pub fn assert_unchanged(&self, site: &Site, daemon: &Daemon) {
        let now = Production::of(site);
        assert!(
            &now == self,
            "production changed:\n{now:#?}\nwas:\n{self:#?}\n{}",
            daemon.report(site)
        );
    }
}

/// Checks status.json says converged on `tag`, live where the upstream file points.
#[track_caller]
pub fn assert_converged(site: &Site, tag: &str) {
    let status = status(site);
    assert_eq!(status["phase"], "converged", "{status:#}");
    assert_eq!(status["desired"], tag, "{status:#}");
    let live = &status["live"];
    let color = live_color(site);
    assert_eq!(live["color"], color, "{status:#}");
    assert_eq!(live["port"], upstream_port(site), "{status:#}");
    assert_eq!(live["image"], site.image(tag), "{status:#}");
    assert_eq!(live["container"], container_name(site, color), "{status:#}");
}

/// The pids of the site's nginx workers: a reload replaces them all.
pub fn nginx_workers(site: &Site) -> Vec<i32> {
    let pid_file = site.dir.join("nginx/nginx.pid");
    let master: i32 = fs::read_to_string(&pid_file)
        .expect("nginx.pid exists")
        .trim()
        .parse()
        .expect("nginx.pid holds a pid");
    procfs::children(master)
}

/// The tests' one wait: polls `f` (every 100 ms, `util::poll`) until it gives a value;
/// panics naming `what` after `within`, followed by what `context` tells (a daemon's log,
/// status.json), which is only computed then.
#[track_caller]
pub fn wait_for_or<T>(
    within: Duration,
    what: &str,
    f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    match util::poll(within, f) {
        Some(value) => value,
        None => panic!("gave up waiting for {what} after {within:?}\n{}", context()),
    }
}

/// [`wait_for_or`] with nothing more to tell.
#[track_caller]
pub fn wait_for<T>(within: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or(within, what, f, String::new)
}

/// [`wait_for`] a condition.
#[track_caller]
pub fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(within, what, || condition().then_some(()))
}

/// A TOML basic string (JSON's escaping is valid TOML for these values).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A TOML array of strings.
pub fn toml_array(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The names, sorted.
pub fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// `blue` or `green`, from a container name.
pub fn color_of(container: &str) -> &'static str {
    if container.ends_with("-blue") {
        "blue"
    } else {
        "green"
    }
}

/// The published port of a color container, by its name.
pub fn port_of(site: &Site, container: &str) -> u16 {
    match color_of(container) {
        "blue" => site.blue_port,
        _ => site.green_port,
    }
}

/// The digest `docker image inspect` reports for `image` in `repository`.
pub fn repo_digest(site: &Site, image: &str, repository: &str) -> String {
    let out = site
        .docker()
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            image,
        ])
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker image inspect {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digests: Vec<String> =
        serde_json::from_slice(&out.stdout).expect("RepoDigests is a JSON list");
    digests
        .iter()
        .find_map(|d| d.strip_prefix(&format!("{repository}@")))
        .unwrap_or_else(|| panic!("no digest of {repository} for {image}: {digests:?}"))
        .to_string()
}

/// Now, as `docker events --since` takes it (seconds and nanoseconds since the epoch).
pub fn unix_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// The engine's container events of the site's app between two `unix_now` times, as
/// `action name` lines, filtered to `actions`.
pub fn container_events(site: &Site, since: &str, until: &str, actions: &[&str]) -> Vec<String> {
    let out = site
        .docker()
        .args(["events", "--since", since, "--until", until])
        .args(["--filter", "type=container"])
        .args(["--filter", &format!("label=fieldtrack.app={}", site.app)])
        .args(["--format", "{{.Action}} {{.Actor.Attributes.name}}"])
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| actions.iter().any(|a| l.split(' ').next() == Some(a)))
        .map(str::to_string)
        .collect()
}

/// A loopback server that accepts connections and never answers, not even a greeting: a
/// webhook or an SMTP server that hangs.
pub struct Silent {
    pub addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
        Silent { addr, accepted }
    }

    /// How many connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

/// A spawned run whose stderr lines arrive through a channel.
pub struct Spawned {
    pub child: Child,
    lines: Receiver<String>,
    /// Every stderr line seen so far, for failure messages.
    seen: Vec<String>,
}

impl Spawned {
    /// Starts `fieldtrack ARGS...`, with `FIELDTRACK_TEST_PAUSE_AT=point` when given.
    pub fn start(site: &Site, args: &[&str], pause_at: Option<&str>) -> Spawned {
        let mut cmd = command(site, args);
        if let Some(point) = pause_at {
            cmd.env("FIELDTRACK_TEST_PAUSE_AT", point);
        }
        Spawned::of(cmd)
    }

    /// Starts `cmd` (a fieldtrack command made by a harness), its stderr read line by line.
    pub fn of(mut cmd: Command) -> Spawned {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the fieldtrack binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle` and returns it; panics with everything
    /// seen when the process ends or [`LINE_WAIT`] passes first.
    #[track_caller]
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no stderr line with {needle:?} within {LINE_WAIT:?}; stderr so far:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "the process ended ({status:?}) before a stderr line with {needle:?}; stderr:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for the process to end; its exit code and its whole stderr.
    pub fn finish(mut self) -> (i32, String) {
        let status = self.child.wait().expect("the process is reaped");
        self.seen.extend(self.lines.iter());
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().expect("the killed process is reaped");
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // A failed test must not leave the process behind, blocked at its pause point.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` (a libc constant) to `pid`, through rustix: the package forbids unsafe
/// code, its tests included.
pub fn send_signal(pid: i32, signal: i32) -> std::io::Result<()> {
    if pid <= 0 {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let pid = rustix::process::Pid::from_raw(pid).ok_or(std::io::ErrorKind::InvalidInput)?;
    let signal =
        rustix::process::Signal::from_named_raw(signal).ok_or(std::io::ErrorKind::InvalidInput)?;
    Ok(rustix::process::kill_process(pid, signal)?)
}
