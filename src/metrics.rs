//! Prometheus metrics: whether production is converged, what is live, and how deployments
//! go, for an operator's dashboards and alerts.
//!
//! Off unless `[metrics] listen` is set, and then served on that address only (loopback by
//! default): the daemon opens no other port (docs/operations.md, the metrics section). The reconciler records into
//! one shared [`Metrics`]; [`serve`] answers `GET /metrics` with [`Metrics::render`] in the
//! text exposition format. The HTTP side is a few lines of hand-written HTTP/1.1 rather than
//! a server framework: one path, one method, and a connection closed after every answer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::state::audit::AttemptOutcome;
use crate::state::status::{CanaryProgress, WindowFigures};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The one path served.
pub const PATH: &str = "/metrics";

/// Longest request head read; a scraper's is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How long a client may take to send its request head, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections handled at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// Outcomes counted from zero, so that `rate()` and alerts see them before the first one.
const OUTCOMES: [AttemptOutcome; 4] = AttemptOutcome::ALL;

/// Reconcile error kinds counted from zero.
const ERROR_KINDS: [&str; 2] = ["transient", "permanent"];

/// Why the metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound (in use, not a local address, no permission).
    #[error("failed to listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What is live, for `fieldtrack_live_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    color: String,
    image: String,
    digest: String,
}

/// The daemon's metrics. Shared as `Arc<Metrics>` between the reconciler, which records,
/// and [`serve`], which renders.
#[derive(Debug)]
pub struct Metrics {
    converged: AtomicBool,
    live: Mutex<Option<Live>>,
    deployments: Mutex<BTreeMap<String, u64>>,
    /// The last deployment's duration in seconds; `None` before the first.
    last_duration: Mutex<Option<f64>>,
    health_probe_failures: AtomicU64,
    reconcile_errors: Mutex<BTreeMap<String, u64>>,
    /// The canary step running now; None when none runs.
    canary: Mutex<Option<CanaryProgress>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Nothing converged, nothing live, every counter at zero.
    pub fn new() -> Metrics {
        let zeros = |keys: &[&str]| keys.iter().map(|k| (k.to_string(), 0)).collect();
        Metrics {
            converged: AtomicBool::new(false),
            live: Mutex::new(None),
            deployments: Mutex::new(zeros(&OUTCOMES.map(AttemptOutcome::as_str))),
            last_duration: Mutex::new(None),
            health_probe_failures: AtomicU64::new(0),
            reconcile_errors: Mutex::new(zeros(&ERROR_KINDS)),
            canary: Mutex::new(None),
        }
    }

    /// Whether the real world matches the desired state (`phase` is `converged`).
    pub fn set_converged(&self, converged: bool) {
        self.converged.store(converged, Ordering::Relaxed);
    }

    /// What receives traffic now.
    pub fn set_live(&self, color: &str, image: &str, digest: Option<&str>) {
        *lock(&self.live) = Some(Live {
            color: color.to_owned(),
            image: image.to_owned(),
            digest: digest.unwrap_or_default().to_owned(),
        });
    }

    /// Nothing is live.
    pub fn clear_live(&self) {
        *lock(&self.live) = None;
    }

    /// A deployment attempt ended with `outcome` after `duration`.
    pub fn deployment(&self, outcome: AttemptOutcome, duration: Duration) {
        *lock(&self.deployments)
            .entry(outcome.as_str().to_owned())
            .or_default() += 1;
        *lock(&self.last_duration) = Some(duration.as_secs_f64());
    }

    /// A health probe of a candidate or of the new color during the drain failed.
    pub fn health_probe_failed(&self) {
        self.health_probe_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The canary step running now and its window's figures; None: no canary runs.
    pub fn set_canary(&self, canary: Option<&CanaryProgress>) {
        *lock(&self.canary) = canary.cloned();
    }

    /// A reconcile pass ended in an error of `kind` (`transient` or `permanent`).
    pub fn reconcile_error(&self, kind: &str) {
        *lock(&self.reconcile_errors)
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    /// Everything in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();

        header(
            &mut out,
            "fieldtrack_converged",
            "gauge",
            "Whether the live deployment matches the desired state (1) or not (0).",
        );
        let converged = u8::from(self.converged.load(Ordering::Relaxed));
        let _ = writeln!(out, "fieldtrack_converged {converged}");

        header(
            &mut out,
            "fieldtrack_live_info",
            "gauge",
            "The color and image receiving traffic; absent when nothing is live.",
        );
        if let Some(live) = lock(&self.live).as_ref() {
            let _ = writeln!(
                out,
                "fieldtrack_live_info{{color=\"{}\",image=\"{}\",digest=\"{}\"}} 1",
                escape_label(&live.color),
                escape_label(&live.image),
                escape_label(&live.digest),
            );
        }

        header(
            &mut out,
            "fieldtrack_deployments_total",
            "counter",
            "Deployment attempts by outcome.",
        );
        for (outcome, count) in lock(&self.deployments).iter() {
            let _ = writeln!(
                out,
                "fieldtrack_deployments_total{{outcome=\"{}\"}} {count}",
                escape_label(outcome)
            );
        }

        header(
            &mut out,
            "fieldtrack_last_deployment_duration_seconds",
            "gauge",
            "How long the last deployment attempt took, whatever its outcome.",
        );
        if let Some(seconds) = *lock(&self.last_duration) {
            let _ = writeln!(out, "fieldtrack_last_deployment_duration_seconds {seconds}");
        }

        header(
            &mut out,
            "fieldtrack_health_probe_failures_total",
            "counter",
            "Failed health probes of a candidate or of the new color during the drain.",
        );
        let failures = self.health_probe_failures.load(Ordering::Relaxed);
        let _ = writeln!(out, "fieldtrack_health_probe_failures_total {failures}");

        header(
            &mut out,
            "fieldtrack_reconcile_errors_total",
            "counter",
            "Reconcile passes that ended in an error, by kind (transient or permanent).",
        );
        for (kind, count) in lock(&self.reconcile_errors).iter() {
            let _ = writeln!(
                out,
                "fieldtrack_reconcile_errors_total{{kind=\"{}\"}} {count}",
                escape_label(kind)
            );
        }

        self.render_canary(&mut out);
        out
    }

    /// The canary's gauges: weight and step are 0 when none runs; the window's figures are
    /// present only while one runs.
    fn render_canary(&self, out: &mut String) {
        let canary = lock(&self.canary);
        let c = canary.as_ref();
        header(
            out,
            "fieldtrack_canary_weight",
            "gauge",
            "The canary's share of the traffic in percent; 0 when no canary runs.",
        );
        let _ = writeln!(
            out,
            "fieldtrack_canary_weight {}",
            c.map_or(0, |c| c.weight)
        );
        header(
            out,
            "fieldtrack_canary_step",
            "gauge",
            "The canary step running (1-based); 0 when no canary runs.",
        );
        let _ = writeln!(out, "fieldtrack_canary_step {}", c.map_or(0, |c| c.step));
        // The window's figures, per side, present only while a canary runs.
        type Figure = fn(&WindowFigures) -> Option<String>;
        let figures: [(&str, &str, Figure); 3] = [
            (
                "fieldtrack_canary_requests",
                "Requests in the running canary step's window, by side (stable or canary).",
                |f| Some(f.requests.to_string()),
            ),
            (
                "fieldtrack_canary_errors",
                "Requests answered 5xx or not at all in the running canary step's window, by side.",
                |f| Some(f.errors.to_string()),
            ),
            (
                "fieldtrack_canary_p95_seconds",
                "The 95th percentile of request_time in the running canary step's window, by side.",
                |f| f.p95_ms.map(|ms| (ms as f64 / 1000.0).to_string()),
            ),
        ];
        for (name, help, value) in figures {
            header(out, name, "gauge", help);
            let sides = c.map(|c| [("stable", &c.stable), ("canary", &c.canary)]);
            for (side, f) in sides.into_iter().flatten() {
                if let Some(v) = value(f) {
                    let _ = writeln!(out, "{name}{{side=\"{side}\"}} {v}");
                }
            }
        }
    }
}

/// The lock, also after a panic elsewhere while holding it: every value here is valid at
/// any instant, so a poisoned one is still right to read and update.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the exposition format wants it: backslash, double quote and newline
/// escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Binds `listen` and serves [`PATH`] from `metrics` in a background task until the
/// returned handle is aborted (or the runtime stops).
pub async fn serve(
    metrics: Arc<Metrics>,
    listen: SocketAddr,
) -> Result<JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(listen = %listen, "serving metrics on http://{listen}{PATH}");
    Ok(serve_on(metrics, listener))
}

/// [`serve`] on a listener already bound, e.g. to port 0 to learn the port first.
pub fn serve_on(metrics: Arc<Metrics>, listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // pause instead of spinning, then go on.
                    tracing::warn!(error = %err, "metrics: failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(err) = answer(&metrics, stream).await {
                    tracing::debug!(error = %err, "metrics: connection ended early");
                }
            });
        }
    })
}

/// Reads one request head and writes the answer; the connection is closed after it.
async fn answer(metrics: &Metrics, mut stream: TcpStream) -> io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = match head {
        None => response("400 Bad Request", "bad request\n"),
        Some(head) => match request_line(&head) {
            Some(("GET", PATH)) => response("200 OK", &metrics.render()),
            Some(("HEAD", PATH)) => {
                let mut r = response("200 OK", &metrics.render());
                if let Some(end) = r.find("\r\n\r\n") {
                    r.truncate(end + 4);
                }
                r
            }
            Some(_) => response("404 Not Found", "not found\n"),
            None => response("400 Bad Request", "bad request\n"),
        },
    };
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(IO_TIMEOUT, write)
        .await
        .unwrap_or(Ok(()))
}

/// The request head up to its blank line; `None` when the client closed first or the
/// head is larger than [`MAX_HEAD_BYTES`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n").or_else(|| find(&head, b"\n\n")) {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The method and the path (without its query) of an HTTP/1.x request line.
fn request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

fn response(status: &str, body: &str) -> String {
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn a_fresh_daemon_renders_zeros() {
        let text = Metrics::new().render();
        assert_eq!(
            lines(&text),
            [
                "fieldtrack_converged 0",
                "fieldtrack_deployments_total{outcome=\"cancelled\"} 0",
                "fieldtrack_deployments_total{outcome=\"failed\"} 0",
                "fieldtrack_deployments_total{outcome=\"rolled_back\"} 0",
                "fieldtrack_deployments_total{outcome=\"succeeded\"} 0",
                "fieldtrack_health_probe_failures_total 0",
                "fieldtrack_reconcile_errors_total{kind=\"permanent\"} 0",
                "fieldtrack_reconcile_errors_total{kind=\"transient\"} 0",
                "fieldtrack_canary_weight 0",
                "fieldtrack_canary_step 0",
            ]
        );
        for (name, kind) in [
            ("fieldtrack_converged", "gauge"),
            ("fieldtrack_live_info", "gauge"),
            ("fieldtrack_deployments_total", "counter"),
            ("fieldtrack_last_deployment_duration_seconds", "gauge"),
            ("fieldtrack_health_probe_failures_total", "counter"),
            ("fieldtrack_reconcile_errors_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("\n# TYPE {name} {kind}\n"))
                    || text.starts_with(&format!("# HELP {name} ")),
                "{name}: {text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_running_canary_exports_its_step_weight_and_window_by_side() {
        use crate::state::status::WindowFigures;
        let m = Metrics::new();
        let side = |requests, errors, p95_ms| WindowFigures {
            requests,
            errors,
            failed_tries: errors,
            p50_ms: Some(1),
            p95_ms,
        };
        m.set_canary(Some(&CanaryProgress {
            image: "v2".into(),
            color: "green".into(),
            container: "api-green".into(),
            stable_color: "blue".into(),
            stable_image: Some("v1".into()),
            step: 2,
            steps: 3,
            weight: 25,
            step_started: "2026-12-01T20:00:00Z".into(),
            step_ends: None,
            stable: side(900, 0, Some(12)),
            canary: side(300, 3, None),
            judgement: "within bounds".into(),
        }));
        let text = m.render();
        for line in [
            "fieldtrack_canary_weight 25",
            "fieldtrack_canary_step 2",
            "fieldtrack_canary_requests{side=\"stable\"} 900",
            "fieldtrack_canary_requests{side=\"canary\"} 300",
            "fieldtrack_canary_errors{side=\"canary\"} 3",
            "fieldtrack_canary_p95_seconds{side=\"stable\"} 0.012",
        ] {
            assert!(lines(&text).contains(&line), "{line}: {text}");
        }
        assert!(!text.contains("fieldtrack_canary_p95_seconds{side=\"canary\"}"));
        m.set_canary(None);
        assert!(lines(&m.render()).contains(&"fieldtrack_canary_weight 0"));
        assert!(!m.render().contains("fieldtrack_canary_requests{"));
    }

    #[test]
    fn render_reflects_what_was_recorded() {
        let m = Metrics::new();
        m.set_converged(true);
        m.set_live("green", "v2", Some("sha256:abc"));
        m.deployment(AttemptOutcome::Succeeded, Duration::from_millis(1500));
        m.deployment(AttemptOutcome::Succeeded, Duration::from_secs(2));
        m.deployment(AttemptOutcome::Failed, Duration::from_millis(250));
        m.health_probe_failed();
        m.health_probe_failed();
        m.health_probe_failed();
        m.reconcile_error("transient");
        let text = m.render();
        assert_eq!(
            lines(&text),
            [
                "fieldtrack_converged 1",
                "fieldtrack_live_info{color=\"green\",image=\"v2\",digest=\"sha256:abc\"} 1",
                "fieldtrack_deployments_total{outcome=\"cancelled\"} 0",
                "fieldtrack_deployments_total{outcome=\"failed\"} 1",
                "fieldtrack_deployments_total{outcome=\"rolled_back\"} 0",
                "fieldtrack_deployments_total{outcome=\"succeeded\"} 2",
                "fieldtrack_last_deployment_duration_seconds 0.25",
                "fieldtrack_health_probe_failures_total 3",
                "fieldtrack_reconcile_errors_total{kind=\"permanent\"} 0",
                "fieldtrack_reconcile_errors_total{kind=\"transient\"} 1",
                "fieldtrack_canary_weight 0",
                "fieldtrack_canary_step 0",
            ]
        );

        m.clear_live();
        m.set_converged(false);
        m.deployment(AttemptOutcome::RolledBack, Duration::from_secs(3));
        let text = m.render();
        assert!(!text.contains("fieldtrack_live_info{"), "{text}");
        assert!(text.contains("\nfieldtrack_converged 0\n"), "{text}");
        assert!(text.contains("\nfieldtrack_last_deployment_duration_seconds 3\n"));
        assert!(text.contains("\nfieldtrack_deployments_total{outcome=\"rolled_back\"} 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.set_live("blue", "we\"ird\\tag\nx", None);
        let text = m.render();
        assert!(
            text.contains(
                "\nfieldtrack_live_info{color=\"blue\",image=\"we\\\"ird\\\\tag\\nx\",digest=\"\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn exposition_format_headers_come_once_before_samples() {
        let text = Metrics::new().render();
        let mut seen = std::collections::HashSet::new();
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_string()), "TYPE {name} twice");
                current = Some(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(name), current.as_deref(), "{line}");
            }
        }
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    async fn get_async(addr: SocketAddr, request: &'static str) -> String {
        tokio::task::spawn_blocking(move || get(addr, request))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_and_404_otherwise() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_converged(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_on(metrics.clone(), listener);

        let answer = get_async(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert_eq!(body, metrics.render());
        assert!(body.contains("\nfieldtrack_converged 1\n"));

        let answer = get_async(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let answer = get_async(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let answer = get_async(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let answer = get_async(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\n"));
        let answer = get_async(addr, "nonsense\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );

        server.abort();
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_on(Arc::new(Metrics::new()), listener);
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Past the limit but all of it read by the server, so that closing does not
            // reset the connection under the answer.
            let mut big = "GET /metrics HTTP/1.1\r\nX: ".to_string();
            big.push_str(&"a".repeat(9000 - big.len()));
            stream.write_all(big.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await
        .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(Arc::new(Metrics::new()), addr).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("failed to listen for metrics on {addr}: ")),
            "{msg}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn serve_binds_the_configured_address() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = serve(Arc::new(Metrics::new()), addr).await.unwrap();
        let answer = get_async(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        server.abort();
    }
}
