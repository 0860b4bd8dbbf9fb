//! The reverse proxy in front of the colors as the reconciler sees it: the [`Proxy`] trait
//! and its errors. nginx, its implementation, lives in `crate::apply::nginx`.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Errors of reading or switching the nginx upstream file.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream file exists but could not be read.
    #[error("failed to read nginx upstream file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the upstream file, or putting its previous content back, failed.
    #[error("failed to {action} nginx upstream file {path}: {source}")]
    Write {
        /// What was being done: "write", "restore" or "remove".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `test_command` rejected the new file; the previous file was restored and nginx was not
    /// reloaded.
    #[error("nginx test command `{command}` failed, previous upstream file restored: {output}")]
    TestFailed { command: String, output: String },
    /// `reload_command` failed; the previous file was restored and reloaded again best-effort.
    #[error("nginx reload command `{command}` failed, previous upstream file restored: {output}")]
    ReloadFailed { command: String, output: String },
    /// A command ran longer than the configured timeout and was killed; the previous file
    /// was restored.
    #[error("command `{command}` timed out after {timeout:?} and was killed, previous upstream file restored")]
    CommandTimeout { command: String, timeout: Duration },
    /// The reload failed, and so did the reload after the previous file was put back: nginx
    /// may run either file.
    #[error("{cause}; reloading the restored upstream file failed as well ({again}), so nginx may still send traffic to port {port}")]
    Unsettled {
        port: u16,
        #[source]
        cause: Box<ProxyError>,
        again: Box<ProxyError>,
    },
    /// `reload_command` exited 0 but the nginx master in `nginx.pid_file` started no new
    /// workers: it kept its old configuration (one it cannot apply while it runs, such as a
    /// `listen` it cannot bind, which `nginx -t` does not try), or the pid file names
    /// another nginx. The previous file was restored and reloaded again.
    #[error("nginx reload command `{command}` exited 0 but the nginx master ({pid_file}) started no new workers within {waited:?}: it kept its old configuration (see nginx's error log), or nginx.pid_file names another nginx; previous upstream file restored")]
    ReloadNotTaken {
        command: String,
        pid_file: String,
        waited: Duration,
    },
    /// A command could not be started (not installed, not executable, no resources); the
    /// previous file was restored.
    #[error("failed to start command `{command}`, previous upstream file restored: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
}

impl ProxyError {
    /// Whether retrying the same switch later, unchanged, may succeed.
    ///
    /// Almost nothing here heals by itself: a file that cannot be read or written, a config
    /// nginx rejects, a reload that fails or a command that is not installed all need an
    /// operator. The exceptions are a command that timed out (a loaded machine, a slow
    /// resolver during `nginx -t`) and a spawn that failed for lack of resources (EAGAIN,
    /// ENOMEM): in both the previous file is back in place, so a retry with backoff is safe.
    pub fn is_transient(&self) -> bool {
        match self {
            ProxyError::CommandTimeout { .. } => true,
            ProxyError::Spawn { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::ENOMEM)
            ),
            ProxyError::Read { .. }
            | ProxyError::Write { .. }
            | ProxyError::Unsettled { .. }
            | ProxyError::TestFailed { .. }
            | ProxyError::ReloadFailed { .. }
            | ProxyError::ReloadNotTaken { .. } => false,
        }
    }
}

impl ProxyError {
    /// Whether nginx may send traffic to the port switched to, now or at its next reload:
    /// the upstream file could not be put back, or nginx could not be reloaded with it.
    /// Anything that port reaches must then be kept.
    pub fn leaves_nginx_unsettled(&self) -> bool {
        match self {
            ProxyError::Unsettled { .. } => true,
            ProxyError::Write { action, .. } => *action != "write",
            _ => false,
        }
    }
}

/// The reverse proxy in front of the colors, behind a trait so the decision logic can be
/// tested with fakes.
pub trait Proxy: Send + Sync {
    /// The current upstream file text, None when the file does not exist.
    fn read(&self) -> Result<Option<String>, ProxyError>;

    /// The port traffic goes to now, from the file. None when there is no file, or no
    /// `upstream` block of the configured name with a loopback server in it.
    fn live_port(&self) -> Result<Option<u16>, ProxyError> {
        Ok(self.upstream_ports()?.first().copied())
    }

    /// Every `ADDRESS:PORT` server of the file as written on disk now, with its weight (see
    /// [`crate::nginx_conf::upstream::parse_weighted`]); empty when there is no file.
    fn upstream_weighted(&self) -> Result<Vec<(SocketAddr, u32)>, ProxyError>;

    /// Every `ADDRESS:PORT` server of the file's `{upstream_name}_preview` block as written
    /// on disk now (`rollout.promotion = "manual"`); empty when there is none.
    fn preview_servers(&self) -> Result<Vec<SocketAddr>, ProxyError> {
        Ok(Vec::new())
    }

    /// Every `ADDRESS:PORT` server of the file as written on disk now (see
    /// [`crate::nginx_conf::upstream::parse_servers`]); empty when there is no file.
    fn upstream_servers(&self) -> Result<Vec<SocketAddr>, ProxyError> {
        Ok(self
            .upstream_weighted()?
            .into_iter()
            .map(|(addr, _)| addr)
            .collect())
    }

    /// The ports of `servers` that are the app's: those on loopback (a local container's,
    /// in the order written), or, for a proxy in front of Swarm nodes, every one, once.
    fn served_ports(&self, servers: &[SocketAddr]) -> Vec<u16> {
        servers
            .iter()
            .filter(|s| s.ip() == Ipv4Addr::LOCALHOST || s.ip() == Ipv6Addr::LOCALHOST)
            .map(|s| s.port())
            .collect()
    }

    /// Every port of the app the file, as written on disk now, sends traffic to
    /// ([`Proxy::served_ports`] of its servers); empty when there is no file.
    fn upstream_ports(&self) -> Result<Vec<u16>, ProxyError> {
        Ok(self.served_ports(&self.upstream_servers()?))
    }

    /// Points traffic at `port`: writes the file atomically, runs `test_command`, then
    /// `reload_command`.
    ///
    /// When the test fails (or cannot run) the previous bytes are restored exactly, or the
    /// file is removed if there was none, and nginx is never reloaded. When the reload fails
    /// the previous file is restored and reloaded again best-effort.
    ///
    /// A switch to the port already in the file, even with identical content, still writes,
    /// tests and reloads: nginx's memory may have drifted from the file (a reload that never
    /// happened, an operator's manual edit since reverted), and reloading is how a reconcile
    /// repairs that.
    fn switch(
        &self,
        port: u16,
        comment: &str,
    ) -> impl Future<Output = Result<(), ProxyError>> + Send {
        let servers = [SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)];
        async move { self.switch_to(&servers, comment).await }
    }

    /// As [`Proxy::switch`], to every one of `servers` (not empty; all on the same port: a
    /// Swarm color's tasks on their nodes).
    fn switch_to(
        &self,
        servers: &[SocketAddr],
        comment: &str,
    ) -> impl Future<Output = Result<(), ProxyError>> + Send;

    /// As [`Proxy::switch`], sharing the traffic by weight between `servers` (a canary step:
    /// the stable color first, then the canary; see [`crate::nginx_conf::upstream::render_weighted`]).
    fn switch_weighted(
        &self,
        servers: &[(SocketAddr, u32)],
        comment: &str,
    ) -> impl Future<Output = Result<(), ProxyError>> + Send;

    /// As [`Proxy::switch`], for a preview: the main block names `live` (production stays
    /// where it is) and the `{upstream_name}_preview` block names `preview`, the candidate.
    fn switch_preview(
        &self,
        live: &[SocketAddr],
        live_comment: &str,
        preview: &[SocketAddr],
        preview_comment: &str,
    ) -> impl Future<Output = Result<(), ProxyError>> + Send;

    /// Waits (at most `limit`) until the proxy processes that served the configuration
    /// before the last switches are gone: until then they may still send requests to the
    /// color switched away from. True when they are gone (or there were none to wait for).
    fn wait_retired(&self, limit: Duration) -> impl Future<Output = bool> + Send {
        let _ = limit;
        async { true }
    }
}
