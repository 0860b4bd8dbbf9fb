//! The nginx upstream file: the single place that says which color is live.
//!
//! fieldtrack owns the file entirely (docs/operations.md, "The nginx side"). The port in it
//! is the truth about what receives traffic, so reading it back
//! ([`crate::nginx_conf::upstream::parse_port`]) must accept the operator's hand-written
//! placeholder as well as what [`crate::nginx_conf::upstream::render`] writes. Changing it
//! ([`Proxy::switch`]) is the one moment production can break, so every step is guarded: the
//! file is replaced atomically, `test_command` must accept it before nginx is reloaded, and any
//! failure puts the previous bytes back exactly.
//!
//! The file is read and written like fieldtrack's state files (see `crate::state::file`):
//! never through a symlink. One at the upstream file's name is refused with a message, not
//! followed and not replaced: replacing an operator's link would leave nginx reading the
//! link's stale target if that is the name it includes, and fieldtrack would then remove
//! the container nginx still points at.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::command::{display_command, output_tail};
use crate::model::proxy::{Proxy, ProxyError};
use crate::nginx_conf::upstream::{
    parse_servers, parse_weighted, preview_name, render_preview, render_servers, render_weighted,
};
use crate::secrets::redact::Redactor;
use crate::state::atomic::{fsync_dir, parent_dir, write_atomic_with, Mode, WriteOptions};
use crate::state::file::read_capped;

/// How long `test_command` or `reload_command` may run before it is killed.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How the upstream file is replaced: atomically, keeping the mode and owner an operator
/// gave it (a new one is 0644: nginx's workers may read it), never through a symlink.
const WRITE: WriteOptions = WriteOptions {
    mode: Mode::Keep { new: 0o644 },
    refuse_symlink: true,
};

/// A few lines; anything this large is not an upstream file fieldtrack wrote.
const READ_CAP: u64 = 1 << 20;

/// nginx, driven through its upstream file and two operator-configured commands.
#[derive(Debug)]
pub struct Nginx {
    upstream_file: PathBuf,
    upstream_name: String,
    test_command: Vec<String>,
    reload_command: Vec<String>,
    command_timeout: Duration,
    /// Serialises switches made through this value: two interleaved switches could each
    /// restore the other's file.
    switching: tokio::sync::Mutex<()>,
    /// `keepalive N;` in the upstream block (0: none).
    keepalive: u32,
    /// Servers on any address are the app's (Swarm nodes), not only those on loopback.
    remote_servers: bool,
    /// nginx's master pid file.
    pid_file: Option<PathBuf>,
    /// Worker pids of configurations replaced by our reloads, until they exit.
    retiring: std::sync::Mutex<Vec<Worker>>,
    /// Cleans the commands' output of the env file's values before it goes into an error.
    redactor: Redactor,
    /// Every file written holds the `{upstream_name}_preview` block too
    /// (`rollout.promotion = "manual"`).
    preview: bool,
}

impl Nginx {
    /// An nginx whose commands may run for [`DEFAULT_COMMAND_TIMEOUT`].
    pub fn new(
        upstream_file: PathBuf,
        upstream_name: String,
        test_command: Vec<String>,
        reload_command: Vec<String>,
    ) -> Self {
        Nginx {
            upstream_file,
            upstream_name,
            test_command,
            reload_command,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            switching: tokio::sync::Mutex::new(()),
            keepalive: 0,
            remote_servers: false,
            pid_file: None,
            retiring: std::sync::Mutex::new(Vec::new()),
            redactor: Redactor::default(),
            preview: false,
        }
    }

    /// Writes the `{upstream_name}_preview` block in every file (`rollout.promotion =
    /// "manual"`): naming the live servers, unless a preview names the candidate there.
    pub fn with_preview(mut self, preview: bool) -> Self {
        self.preview = preview;
        self
    }

    /// `text` (the main block), followed by the preview block naming `servers` when
    /// previews are on.
    fn with_preview_block(
        &self,
        mut text: String,
        servers: &[SocketAddr],
        comment: &str,
    ) -> String {
        if self.preview {
            text.push_str(&render_preview(
                &self.upstream_name,
                servers,
                &format!("no preview runs, the live {comment}"),
                self.keepalive,
            ));
        }
        text
    }

    /// Sets what the commands' output is cleaned of (the env file's values).
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Sets the idle connections to the app each worker keeps (`keepalive N;`, 0: none).
    pub fn with_keepalive(mut self, keepalive: u32) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Counts servers on any address as the app's: nginx in front of Swarm nodes.
    pub fn with_remote_servers(mut self, remote: bool) -> Self {
        self.remote_servers = remote;
        self
    }

    /// Sets nginx's master pid file, so the drain can wait for the old workers.
    pub fn with_pid_file(mut self, pid_file: PathBuf) -> Self {
        self.pid_file = Some(pid_file);
        self
    }

    /// The master's worker processes now (empty when the pid file cannot be read).
    fn workers(&self) -> Vec<Worker> {
        let Some(master) = self
            .pid_file
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(ProcStat::read)
            .filter(|stat| stat.parent == master && stat.state != 'Z')
            .map(|stat| stat.worker)
            .collect()
    }

    /// Whether every worker the master has now is one it had before our reloads.
    fn no_new_workers(&self) -> bool {
        let now = self.workers();
        let Ok(retiring) = self.retiring.lock() else {
            return false;
        };
        !now.is_empty() && now.iter().all(|pid| retiring.contains(pid))
    }

    /// Whether the master started workers not in `before` (the workers it had before the
    /// reload), waiting up to [`RELOAD_TAKEN`]. True when there is nothing to look at (no
    /// readable pid file, a master without workers): then the reload command's word is all
    /// there is.
    async fn new_workers_since(&self, before: &[Worker]) -> bool {
        if before.is_empty() {
            return true;
        }
        let started = std::time::Instant::now();
        loop {
            let now = self.workers();
            if now.is_empty() || now.iter().any(|w| !before.contains(w)) {
                return true;
            }
            if started.elapsed() >= RELOAD_TAKEN {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets how long `test_command` or `reload_command` may run before it is killed.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The upstream file this nginx is driven through.
    pub fn upstream_file(&self) -> &Path {
        &self.upstream_file
    }

    /// The name of the upstream block in the file.
    pub fn upstream_name(&self) -> &str {
        &self.upstream_name
    }

    /// The file's exact bytes, None when it does not exist.
    fn read_bytes(&self) -> Result<Option<Vec<u8>>, ProxyError> {
        read_capped(&self.upstream_file, READ_CAP).map_err(|source| ProxyError::Read {
            path: self.upstream_file.clone(),
            source,
        })
    }

    /// Puts `previous` back exactly, or removes the file when there was none.
    ///
    /// When this fails the file holds content nginx may reject, which outweighs the error
    /// that led here: that one is logged and the restore error returned.
    fn restore(&self, previous: Option<&[u8]>, cause: &ProxyError) -> Result<(), ProxyError> {
        let result = match previous {
            Some(bytes) => write_atomic_with(&self.upstream_file, bytes, WRITE).map_err(|source| {
                ProxyError::Write {
                    action: "restore",
                    path: self.upstream_file.clone(),
                    source,
                }
            }),
            None => match fs::remove_file(&self.upstream_file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ProxyError::Write {
                    action: "remove",
                    path: self.upstream_file.clone(),
                    source: e,
                }),
                _ => {
                    fsync_dir(parent_dir(&self.upstream_file)).map_err(|source| ProxyError::Write {
                        action: "remove",
                        path: self.upstream_file.clone(),
                        source,
                    })
                }
            },
        };
        if let Err(e) = &result {
            tracing::error!(
                file = %self.upstream_file.display(),
                error = %e,
                cause = %cause,
                "could not restore the nginx upstream file after a failed switch"
            );
        }
        result
    }

    /// Writes `text` (naming `port` first), tests, reloads: see [`Proxy::switch`].
    async fn switch_locked(&self, text: String, port: u16) -> Result<(), ProxyError> {
        let previous = self.read_bytes()?;
        write_atomic_with(&self.upstream_file, text.as_bytes(), WRITE).map_err(|source| {
            ProxyError::Write {
                action: "write",
                path: self.upstream_file.clone(),
                source,
            }
        })?;
        crate::test_pause_point("reload").await;

        if let Err(e) = run_command(
            &self.test_command,
            self.command_timeout,
            Step::Test,
            &self.redactor,
        )
        .await
        {
            self.restore(previous.as_deref(), &e)?;
            return Err(e);
        }

        let workers = self.workers();
        if let Err(e) = run_command(
            &self.reload_command,
            self.command_timeout,
            Step::Reload,
            &self.redactor,
        )
        .await
        {
            self.restore(previous.as_deref(), &e)?;
            // The reload may have half happened (a reload that timed out may still have taken
            // effect); a second one brings nginx back in line with the restored file if it
            // can. If it cannot, which file nginx runs is unknown.
            if let Err(again) = run_command(
                &self.reload_command,
                self.command_timeout,
                Step::Reload,
                &self.redactor,
            )
            .await
            {
                tracing::warn!(
                    error = %again,
                    "reload after restoring the nginx upstream file failed as well"
                );
                return Err(ProxyError::Unsettled {
                    port,
                    cause: Box::new(e),
                    again: Box::new(again),
                });
            }
            return Err(e);
        }
        // A switch counts once nginx serves the new file: its master started new workers.
        // Until then its old workers, on the old file, get every request.
        if !self.new_workers_since(&workers).await {
            let e = ProxyError::ReloadNotTaken {
                command: display_command(&self.reload_command),
                pid_file: self
                    .pid_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                waited: RELOAD_TAKEN,
            };
            tracing::error!(error = %e, "nginx did not take the reload");
            self.restore(previous.as_deref(), &e)?;
            // If the pid file names another nginx, the one reloaded may run the new file:
            // one more reload brings it back to the restored one.
            if let Err(again) = run_command(
                &self.reload_command,
                self.command_timeout,
                Step::Reload,
                &self.redactor,
            )
            .await
            {
                return Err(ProxyError::Unsettled {
                    port,
                    cause: Box::new(e),
                    again: Box::new(again),
                });
            }
            return Err(e);
        }
        if let Ok(mut retiring) = self.retiring.lock() {
            retiring.extend(workers);
        }
        tracing::info!(
            file = %self.upstream_file.display(),
            port,
            "nginx upstream switched and reloaded"
        );
        Ok(())
    }
}

impl Proxy for Nginx {
    fn read(&self) -> Result<Option<String>, ProxyError> {
        Ok(self
            .read_bytes()?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn served_ports(&self, servers: &[SocketAddr]) -> Vec<u16> {
        if !self.remote_servers {
            return servers
                .iter()
                .filter(|s| s.ip() == Ipv4Addr::LOCALHOST || s.ip() == Ipv6Addr::LOCALHOST)
                .map(|s| s.port())
                .collect();
        }
        let mut ports: Vec<u16> = Vec::new();
        for port in servers.iter().map(|s| s.port()) {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }

    fn upstream_weighted(&self) -> Result<Vec<(SocketAddr, u32)>, ProxyError> {
        Ok(self
            .read()?
            .map(|text| parse_weighted(&text, &self.upstream_name))
            .unwrap_or_default())
    }

    fn preview_servers(&self) -> Result<Vec<SocketAddr>, ProxyError> {
        Ok(self
            .read()?
            .map(|text| parse_servers(&text, &preview_name(&self.upstream_name)))
            .unwrap_or_default())
    }

    async fn switch_to(&self, servers: &[SocketAddr], comment: &str) -> Result<(), ProxyError> {
        let text = render_servers(&self.upstream_name, servers, comment, self.keepalive);
        let text = self.with_preview_block(text, servers, comment);
        let port = servers.first().map_or(0, |s| s.port());
        let _guard = self.switching.lock().await;
        self.switch_locked(text, port).await
    }

    async fn switch_weighted(
        &self,
        servers: &[(SocketAddr, u32)],
        comment: &str,
    ) -> Result<(), ProxyError> {
        let text = render_weighted(&self.upstream_name, servers, comment, self.keepalive);
        let addrs: Vec<SocketAddr> = servers.iter().map(|(a, _)| *a).collect();
        let text = self.with_preview_block(text, &addrs, comment);
        let port = servers.first().map_or(0, |(s, _)| s.port());
        let _guard = self.switching.lock().await;
        self.switch_locked(text, port).await
    }

    async fn switch_preview(
        &self,
        live: &[SocketAddr],
        live_comment: &str,
        preview: &[SocketAddr],
        preview_comment: &str,
    ) -> Result<(), ProxyError> {
        let mut text = render_servers(&self.upstream_name, live, live_comment, self.keepalive);
        text.push_str(&render_preview(
            &self.upstream_name,
            preview,
            preview_comment,
            self.keepalive,
        ));
        let port = live.first().map_or(0, |s| s.port());
        let _guard = self.switching.lock().await;
        self.switch_locked(text, port).await
    }

    async fn wait_retired(&self, limit: Duration) -> bool {
        let started = std::time::Instant::now();
        // Whether the master was seen to start new workers: scanning /proc for them once is
        // enough, the 10 ms polls below only look at the retiring pids.
        let mut reloaded = false;
        loop {
            let left = match self.retiring.lock() {
                Ok(mut retiring) => {
                    retiring.retain(Worker::alive);
                    retiring.len()
                }
                Err(_) => 0,
            };
            if left == 0 {
                tracing::debug!(waited = ?started.elapsed(), "old nginx workers gone");
                return true;
            }
            if started.elapsed() >= limit {
                tracing::warn!(left, "old nginx workers still running after {limit:?}");
                return false;
            }
            if !reloaded && started.elapsed() >= NO_NEW_WORKERS {
                if self.no_new_workers() {
                    // The reload did not reach this master: waiting on it would only delay.
                    tracing::warn!(
                        pid_file = ?self.pid_file,
                        "the nginx master in nginx.pid_file started no new workers after the reload; \
                         is it the nginx that nginx.reload_command reloads? Not waiting for its workers"
                    );
                    if let Ok(mut retiring) = self.retiring.lock() {
                        retiring.clear();
                    }
                    return false;
                }
                reloaded = true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long after a reload the master must have started new workers before the drain
/// stops waiting for the old ones (nginx starts them within milliseconds).
const NO_NEW_WORKERS: Duration = Duration::from_secs(3);

/// How long after a reload command that exited 0 the master may take to start its new
/// workers before the reload counts as not taken (nginx starts them within milliseconds;
/// the rest is room for a loaded machine).
const RELOAD_TAKEN: Duration = Duration::from_secs(5);

/// A process, told apart from a later one given the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Worker {
    pid: i32,
    started: u64,
}

impl Worker {
    /// Whether it still runs (a zombie does not).
    fn alive(&self) -> bool {
        ProcStat::read(self.pid).is_some_and(|stat| stat.worker == *self && stat.state != 'Z')
    }
}

/// The fields of `/proc/PID/stat` the drain needs.
struct ProcStat {
    worker: Worker,
    state: char,
    parent: i32,
}

impl ProcStat {
    fn read(pid: i32) -> Option<ProcStat> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ProcStat::parse(pid, &text)
    }

    /// `pid (comm) state ppid ... starttime ...`: the comm may hold spaces and parentheses,
    /// so fields are counted from the last `)`. starttime is field 22, the 20th after it.
    fn parse(pid: i32, text: &str) -> Option<ProcStat> {
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        Some(ProcStat {
            worker: Worker {
                pid,
                started: fields.get(19)?.parse().ok()?,
            },
            state: fields.first()?.chars().next()?,
            parent: fields.get(1)?.parse().ok()?,
        })
    }
}

/// Which command is running, to pick the error for a non-zero exit.
#[derive(Clone, Copy)]
enum Step {
    Test,
    Reload,
}

/// Runs `argv` without a shell, stdin closed, killed after `timeout`. A non-zero exit
/// becomes the `step`'s error with the exit status and the tail of its output, redacted.
async fn run_command(
    argv: &[String],
    timeout: Duration,
    step: Step,
    redactor: &Redactor,
) -> Result<(), ProxyError> {
    let command = display_command(argv);
    let Some((program, args)) = argv.split_first() else {
        return Err(ProxyError::Spawn {
            command,
            source: io::Error::new(io::ErrorKind::InvalidInput, "the command is empty"),
        });
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProxyError::Spawn {
            command: command.clone(),
            source,
        })?;
    // On timeout the output future, and with it the child, is dropped: kill_on_drop kills it.
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(ProxyError::Spawn { command, source }),
        Err(_) => return Err(ProxyError::CommandTimeout { command, timeout }),
    };
    if output.status.success() {
        return Ok(());
    }
    let output = describe_failure(output.status, &output.stderr, &output.stdout, redactor);
    Err(match step {
        Step::Test => ProxyError::TestFailed { command, output },
        Step::Reload => ProxyError::ReloadFailed { command, output },
    })
}

/// The exit status and the last lines of stdout then stderr, for an error message (nginx
/// says what is wrong on stderr).
fn describe_failure(
    status: std::process::ExitStatus,
    stderr: &[u8],
    stdout: &[u8],
    redactor: &Redactor,
) -> String {
    match output_tail(stdout, stderr, redactor) {
        tail if tail.is_empty() => format!("{status}, no output"),
        tail => format!("{status}\n{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx_conf::upstream::render;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt as _;

    const NAME: &str = "fieldtrack_api";

    fn nginx(dir: &Path, test: &[&str], reload: &[&str]) -> Nginx {
        Nginx::new(
            dir.join("upstream.conf"),
            NAME.to_string(),
            test.iter().map(|s| s.to_string()).collect(),
            reload.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn proc_stat_fields_count_from_the_last_parenthesis() {
        let text = "4242 (nginx: wor) ker) S 4200 4200 4200 0 -1 4194624 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615";
        let stat = ProcStat::parse(4242, text).expect("parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.parent, 4200);
        assert_eq!(
            stat.worker,
            Worker {
                pid: 4242,
                started: 987654
            }
        );
        assert!(ProcStat::parse(1, "1 (init) S").is_none());
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcStat::read(std::process::id() as i32).expect("own stat");
        assert!(me.worker.alive());
        let reused = Worker {
            started: me.worker.started + 1,
            ..me.worker
        };
        assert!(
            !reused.alive(),
            "a pid given to a later process is not the worker"
        );
    }

    #[tokio::test]
    async fn switch_writes_the_file_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let proxy = nginx(dir.path(), &["true"], &["touch", marker.to_str().unwrap()]);
        assert_eq!(proxy.read().unwrap(), None);
        assert_eq!(proxy.live_port().unwrap(), None);

        proxy.switch(3002, "green api:a4f91c2").await.unwrap();
        assert_eq!(
            proxy.read().unwrap().unwrap(),
            render(NAME, 3002, "green api:a4f91c2", 0)
        );
        assert_eq!(proxy.live_port().unwrap(), Some(3002));
        assert!(marker.exists());
        let mode = fs::metadata(proxy.upstream_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[tokio::test]
    async fn on_swarm_a_canary_steps_weights_name_every_node_and_read_back_as_two_ports() {
        // Three stable tasks and one canary task, on their nodes' addresses.
        let dir = tempfile::tempdir().unwrap();
        let proxy = nginx(dir.path(), &["true"], &["true"]).with_remote_servers(true);
        let node = |k: u8, port| SocketAddr::from(([10, 0, 0, k], port));
        let weights = crate::plan::canary_weights::shared(
            10,
            &[node(1, 3001), node(2, 3001), node(3, 3001)],
            &[node(2, 3002)],
        );
        proxy.switch_weighted(&weights, "canary 10%").await.unwrap();
        let text = proxy.read().unwrap().unwrap();
        for line in [
            "server 10.0.0.1:3001 weight=3;",
            "server 10.0.0.2:3001 weight=3;",
            "server 10.0.0.3:3001 weight=3;",
            "server 10.0.0.2:3002 weight=1;",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert_eq!(proxy.upstream_servers().unwrap().len(), 4);
        // What observe and plan read: the stable port first, then the canary's, once each.
        assert_eq!(proxy.upstream_ports().unwrap(), vec![3001, 3002]);
        assert_eq!(proxy.live_port().unwrap(), Some(3001));
    }

    #[tokio::test]
    async fn switch_to_the_same_port_still_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let proxy = nginx(dir.path(), &["true"], &["touch", marker.to_str().unwrap()]);
        proxy.switch(3001, "blue api:1").await.unwrap();
        fs::remove_file(&marker).unwrap();
        proxy.switch(3001, "blue api:1").await.unwrap();
        assert!(
            marker.exists(),
            "an identical switch must reload to repair drift"
        );
    }

    #[tokio::test]
    async fn switch_keeps_existing_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = nginx(dir.path(), &["true"], &["true"]);
        fs::write(proxy.upstream_file(), "placeholder").unwrap();
        fs::set_permissions(proxy.upstream_file(), Permissions::from_mode(0o640)).unwrap();
        proxy.switch(3001, "blue").await.unwrap();
        let mode = fs::metadata(proxy.upstream_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[tokio::test]
    async fn failed_test_restores_previous_bytes_and_never_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let proxy = nginx(dir.path(), &["false"], &["touch", marker.to_str().unwrap()]);
        // Odd content on purpose: not UTF-8, CRLF, tabs, no trailing newline.
        let previous: &[u8] = b"upstream fieldtrack_api {\r\n\tserver 127.0.0.1:3001;\xff\r\n}  ";
        fs::write(proxy.upstream_file(), previous).unwrap();

        let err = proxy.switch(3002, "green").await.unwrap_err();
        assert!(matches!(err, ProxyError::TestFailed { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("`false`"), "{err}");
        assert!(err.to_string().contains("exit status: 1"), "{err}");
        assert_eq!(fs::read(proxy.upstream_file()).unwrap(), previous);
        assert!(!marker.exists(), "reload ran after a failed test");
    }

    #[tokio::test]
    async fn failed_test_without_previous_file_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let proxy = nginx(dir.path(), &["false"], &["touch", marker.to_str().unwrap()]);
        let err = proxy.switch(3002, "green").await.unwrap_err();
        assert!(matches!(err, ProxyError::TestFailed { .. }), "{err:?}");
        assert!(!proxy.upstream_file().exists());
        assert!(!marker.exists());
        // Only the test's temp file would be left otherwise.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn env_values_in_a_commands_output_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let script = "printf 'nginx: [emerg] unknown directive \"hunter2-%s\"\\n' xyz >&2; exit 1";
        let proxy = nginx(dir.path(), &["sh", "-c", script], &["true"])
            .with_redactor(Redactor::new(&["SECRET_TOKEN=hunter2-xyz"]));
        let err = proxy.switch(3002, "green").await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.ends_with("unknown directive \"[redacted]\""), "{msg}");
        assert!(!format!("{err:?}").contains("hunter2-xyz"), "{err:?}");
    }

    #[tokio::test]
    async fn test_output_tail_is_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let script =
            "for i in $(seq 1 30); do echo line$i; done; echo 'nginx: [emerg] bad' >&2; exit 3";
        let proxy = nginx(dir.path(), &["sh", "-c", script], &["true"]);
        let err = proxy.switch(3002, "green").await.unwrap_err();
        let ProxyError::TestFailed { command, output } = &err else {
            panic!("{err:?}");
        };
        assert!(command.starts_with("sh -c \"for i"), "{command}");
        assert!(output.starts_with("exit status: 3\n"), "{output}");
        assert!(output.contains("nginx: [emerg] bad"), "{output}");
        assert!(
            output.contains("line30") && !output.contains("line10\n"),
            "{output}"
        );
        assert_eq!(
            output.lines().count(),
            1 + crate::apply::command::OUTPUT_TAIL_LINES
        );
    }

    #[tokio::test]
    async fn failed_reload_restores_previous_file_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        // Fails the first time only.
        let marker = dir.path().join("reloaded-once");
        let script = format!(
            "if [ -e {m} ]; then exit 0; fi; touch {m}; exit 1",
            m = marker.display()
        );
        let proxy = nginx(dir.path(), &["true"], &["sh", "-c", &script]);
        let previous = render(NAME, 3001, "blue api:old", 0);
        fs::write(proxy.upstream_file(), &previous).unwrap();
        let err = proxy.switch(3002, "green api:new").await.unwrap_err();
        assert!(matches!(err, ProxyError::ReloadFailed { .. }), "{err:?}");
        assert!(!err.leaves_nginx_unsettled(), "{err}");
        assert_eq!(fs::read_to_string(proxy.upstream_file()).unwrap(), previous);
        assert_eq!(proxy.live_port().unwrap(), Some(3001));
    }

    #[tokio::test]
    async fn failed_reload_whose_second_reload_fails_too_leaves_nginx_unsettled() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = nginx(dir.path(), &["true"], &["false"]);
        let previous = render(NAME, 3001, "blue api:old", 0);
        fs::write(proxy.upstream_file(), &previous).unwrap();
        let err = proxy.switch(3002, "green api:new").await.unwrap_err();
        assert!(
            matches!(err, ProxyError::Unsettled { port: 3002, .. }),
            "{err:?}"
        );
        assert!(err.leaves_nginx_unsettled());
        assert!(
            err.to_string()
                .contains("may still send traffic to port 3002"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(proxy.upstream_file()).unwrap(), previous);
    }

    #[tokio::test]
    async fn missing_command_restores_and_is_not_transient() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = nginx(dir.path(), &["/nonexistent/nginx", "-t"], &["true"]);
        fs::write(proxy.upstream_file(), "old").unwrap();
        let err = proxy.switch(3002, "green").await.unwrap_err();
        assert!(matches!(err, ProxyError::Spawn { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert_eq!(fs::read(proxy.upstream_file()).unwrap(), b"old");
    }

    #[tokio::test]
    async fn hanging_test_is_killed_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = nginx(dir.path(), &["sleep", "30"], &["true"])
            .with_command_timeout(Duration::from_millis(200));
        fs::write(proxy.upstream_file(), "old").unwrap();
        let started = std::time::Instant::now();
        let err = proxy.switch(3002, "green").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, ProxyError::CommandTimeout { .. }), "{err:?}");
        assert!(err.is_transient());
        assert_eq!(fs::read(proxy.upstream_file()).unwrap(), b"old");
    }

    #[tokio::test]
    async fn an_upstream_file_that_is_a_symlink_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.conf");
        let before = render(NAME, 3001, "blue", 0);
        fs::write(&real, &before).unwrap();
        let reloaded = dir.path().join("reloaded");
        let reload = format!("touch {}", reloaded.display());
        let proxy = nginx(dir.path(), &["true"], &["sh", "-c", &reload]);
        std::os::unix::fs::symlink(&real, proxy.upstream_file()).unwrap();

        let read = proxy.live_port().unwrap_err().to_string();
        let switched = proxy.switch(3002, "green").await.unwrap_err().to_string();

        for msg in [read, switched] {
            assert!(
                msg.contains("is a symlink") && msg.contains("real.conf"),
                "{msg}"
            );
        }
        assert!(fs::symlink_metadata(proxy.upstream_file())
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), before);
        assert!(!reloaded.exists(), "nginx was reloaded");
    }

    /// Runs the real `nginx -t` against a config in a temp dir that includes the upstream
    /// file. Required in CI; elsewhere skipped with a notice when nginx is not installed.
    #[tokio::test]
    async fn real_nginx_test_accepts_rendered_file_and_rejects_wrong_name() {
        let nginx_bin = Path::new("/usr/sbin/nginx");
        if !nginx_bin.exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("nginx is required in CI but /usr/sbin/nginx does not exist");
            }
            eprintln!("notice: /usr/sbin/nginx not installed, skipping the real nginx -t test");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let upstream = d.join("upstream.conf");
        let conf = d.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "pid {pid};\n\
                 events {{}}\n\
                 http {{\n\
                 \x20   include {upstream};\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:1;\n\
                 \x20       location / {{ proxy_pass http://{NAME}; }}\n\
                 \x20   }}\n\
                 }}\n",
                pid = d.join("nginx.pid").display(),
                upstream = upstream.display(),
            ),
        )
        .unwrap();
        let test: Vec<String> = [
            nginx_bin.to_str().unwrap(),
            "-p",
            d.to_str().unwrap(),
            "-c",
            conf.to_str().unwrap(),
            "-e",
            d.join("error.log").to_str().unwrap(),
            "-t",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();

        let good = Nginx::new(
            upstream.clone(),
            NAME.into(),
            test.clone(),
            vec!["true".into()],
        );
        good.switch(3001, "blue api:a4f91c2").await.unwrap();
        let accepted = fs::read(&upstream).unwrap();
        assert_eq!(
            accepted,
            render(NAME, 3001, "blue api:a4f91c2", 0).as_bytes()
        );

        let marker = d.join("reloaded");
        let wrong = Nginx::new(
            upstream.clone(),
            "not_the_proxy_pass".into(),
            test,
            vec!["touch".into(), marker.to_str().unwrap().into()],
        );
        let err = wrong.switch(3002, "green api:b8c4d2e").await.unwrap_err();
        let ProxyError::TestFailed { output, .. } = &err else {
            panic!("expected nginx -t to fail: {err:?}");
        };
        assert!(output.contains("emerg"), "{output}");
        assert_eq!(fs::read(&upstream).unwrap(), accepted);
        assert!(!marker.exists(), "reload ran after nginx -t failed");
    }
}
