//! Health probes: the gate between starting a candidate and sending it traffic.
//!
//! Traffic only moves to a container that answered `health.path` with a status of
//! `health.expect` (any 2xx by default) through its published port, and during the drain
//! and a canary's steps the new color keeps being probed. One [`HttpProber`], built from
//! `[health]`, makes every probe (the gate, the drain, canary steps, each Swarm task), so
//! they all send the same Host and headers and judge alike. The probe sits behind a trait
//! so the health gate and drain logic can be tested with fakes; the HTTP prober itself is
//! tested against a real socket.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, HOST};

use crate::config::HealthConfig;
use crate::model::probe::{Expect, ProbeOutcome, Prober};

/// The gap between probes while a candidate is young: a loopback probe costs next to
/// nothing, and this is how late at most a candidate is noticed once it is up.
const FAST_GAP: Duration = Duration::from_millis(100);
/// How long probes come every [`FAST_GAP`]; most apps are up by then. After it, gaps double
/// up to the interval.
const FAST_PHASE: Duration = Duration::from_secs(5);

/// Errors of setting up health probes.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The HTTP client for probes could not be built.
    #[error("failed to build the health probe http client: {source}")]
    Client {
        #[source]
        source: reqwest::Error,
    },
    /// A header of `health.host` or `health.headers` is not one HTTP can send (the config
    /// refuses these first; this only guards the conversion).
    #[error("health probe header {name:?} cannot be sent: {reason}")]
    Header { name: String, reason: String },
}

/// Probes `GET http://{addr}{path}` (`127.0.0.1:PORT` for a local container) with the Host
/// and headers of `[health]`, and judges the answer by `health.expect`.
#[derive(Debug, Clone)]
pub struct HttpProber {
    client: reqwest::Client,
    path: String,
    headers: HeaderMap,
    expect: Expect,
}

impl HttpProber {
    /// The prober of `health`: its path (a missing leading `/` is added), Host, headers and
    /// expected codes; every probe, connecting included, gives up after `health.timeout`.
    pub fn new(health: &HealthConfig) -> Result<Self, HealthError> {
        let timeout = health.timeout;
        let client = reqwest::Client::builder()
            // The container is on loopback; an operator's HTTP_PROXY must not intercept it.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A fresh connection per probe: a kept-alive one could outlive the container
            // or hide that it stopped accepting connections.
            .pool_max_idle_per_host(0)
            // Only the container's own answer counts; a redirect is an answer (healthy when
            // `expect` names it), not a pointer to follow somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "fieldtrack/",
                env!("CARGO_PKG_VERSION"),
                " health probe"
            ))
            .build()
            .map_err(|source| HealthError::Client { source })?;
        let path = if health.path.starts_with('/') {
            health.path.clone()
        } else {
            format!("/{}", health.path)
        };
        let mut headers = HeaderMap::new();
        let value = |name: &str, value: &str| {
            HeaderValue::from_str(value).map_err(|e| HealthError::Header {
                name: name.to_string(),
                reason: e.to_string(),
            })
        };
        for (name, v) in &health.headers {
            let header =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| HealthError::Header {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            headers.insert(header, value(name, v)?);
        }
        // Set on the request, the client sends this Host instead of the address's.
        if let Some(host) = &health.host {
            headers.insert(HOST, value("Host", host)?);
        }
        Ok(HttpProber {
            client,
            path,
            headers,
            expect: health.expect.clone(),
        })
    }

    /// The path probed.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Prober for HttpProber {
    async fn probe_at(&self, addr: SocketAddr) -> ProbeOutcome {
        let url = format!("http://{addr}{}", self.path);
        let request = self.client.get(&url).headers(self.headers.clone());
        match request.send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                if self.expect.contains(code) {
                    ProbeOutcome::Healthy(code)
                } else {
                    ProbeOutcome::Unhealthy(code)
                }
            }
            Err(e) => ProbeOutcome::Unreachable(unreachable_reason(&e)),
        }
    }
}

/// A short, plain reason for a probe that got no answer; the full chain goes to the log.
fn unreachable_reason(error: &reqwest::Error) -> String {
    tracing::debug!(error = ?error, "health probe got no answer");
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut innermost = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let reason = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused",
                std::io::ErrorKind::ConnectionReset => "connection reset",
                std::io::ErrorKind::ConnectionAborted => "connection aborted",
                std::io::ErrorKind::TimedOut => "timed out",
                std::io::ErrorKind::UnexpectedEof => "connection closed",
                _ => "",
            };
            if !reason.is_empty() {
                return reason.to_string();
            }
        }
        innermost = Some(e);
        source = e.source();
    }
    let reason = innermost.map_or_else(|| error.to_string(), |e| e.to_string());
    let mut reason: String = reason.chars().take(120).collect();
    if error.is_connect() && !reason.contains("connect") {
        reason = format!("connection failed: {reason}");
    }
    reason
}

/// The gaps between probes: 0 before the first (so it happens at once), then 100 ms for the
/// first 5 s, then doubling, capped at `interval`. A candidate that is up within 5 s is
/// noticed within 100 ms, and a slow one is probed no more often than every `interval` in
/// the end. Endless: the caller's deadline (attempts x interval) ends the loop. An interval
/// shorter than 100 ms gives gaps of exactly `interval`.
pub fn probe_delays(interval: Duration) -> impl Iterator<Item = Duration> {
    let fast = FAST_GAP.min(interval);
    let fast_probes = (FAST_PHASE.as_nanos() / fast.as_nanos().max(1)) as usize;
    let slow_first = fast.checked_mul(2).map_or(interval, |g| g.min(interval));
    std::iter::once(Duration::ZERO)
        .chain(std::iter::repeat_n(fast, fast_probes))
        .chain(std::iter::successors(Some(slow_first), move |gap| {
            Some(
                gap.checked_mul(2)
                    .map_or(interval, |next| next.min(interval)),
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `[health]` as the config's defaults give it, with `path` and `timeout`.
    fn health(path: &str, timeout: Duration) -> HealthConfig {
        HealthConfig {
            path: path.to_string(),
            interval: Duration::from_secs(3),
            attempts: 20,
            timeout,
            host: None,
            headers: Vec::new(),
            expect: Expect::any_2xx(),
        }
    }

    #[test]
    fn delays_start_at_once_and_grow_to_the_interval() {
        let delays: Vec<Duration> = probe_delays(Duration::from_secs(3)).take(57).collect();
        assert_eq!(delays[0], ms(0));
        assert!(delays[1..51].iter().all(|d| *d == ms(100)));
        assert_eq!(delays[51..57], [200, 400, 800, 1600, 3000, 3000].map(ms));
    }

    #[test]
    fn delays_with_a_short_interval_never_exceed_it() {
        let delays: Vec<Duration> = probe_delays(ms(50)).take(4).collect();
        assert_eq!(delays, [0, 50, 50, 50].map(ms));
        let huge: Vec<Duration> = probe_delays(Duration::MAX).skip(120).take(2).collect();
        assert_eq!(huge, [Duration::MAX, Duration::MAX]);
    }

    /// Serves every connection with `response` after reading the request head; None accepts
    /// connections and never answers.
    fn serve(response: Option<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                match response {
                    Some(response) => {
                        let _ = stream.write_all(response.as_bytes());
                    }
                    None => held.push(stream),
                }
            }
        });
        port
    }

    /// Answers every connection with `status` and sends the request head of each, lowercased,
    /// to the receiver.
    fn serve_recording(status: &'static str) -> (u16, std::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (port, received)
    }

    /// The values of header `name` (lowercase) in a lowercased request head.
    fn header_values(head: &str, name: &str) -> Vec<String> {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    #[tokio::test]
    async fn probe_sends_the_health_host_and_headers() {
        let (port, heads) = serve_recording("200 OK");
        let mut cfg = health("/health", Duration::from_secs(2));
        cfg.host = Some("api.example.test".into());
        cfg.headers = vec![
            ("X-Forwarded-Proto".into(), "https".into()),
            ("X-Probe".into(), "fieldtrack health".into()),
        ];
        let prober = HttpProber::new(&cfg).unwrap();

        assert_eq!(prober.probe(port).await, ProbeOutcome::Healthy(200));

        let head = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(head.starts_with("get /health http/1.1\r\n"), "{head}");
        assert_eq!(header_values(&head, "host"), ["api.example.test"], "{head}");
        assert_eq!(
            header_values(&head, "x-forwarded-proto"),
            ["https"],
            "{head}"
        );
        assert_eq!(
            header_values(&head, "x-probe"),
            ["fieldtrack health"],
            "{head}"
        );
    }

    #[tokio::test]
    async fn without_health_host_the_host_is_the_address_probed() {
        let (port, heads) = serve_recording("200 OK");
        let prober = HttpProber::new(&health("/health", Duration::from_secs(2))).unwrap();

        assert_eq!(prober.probe(port).await, ProbeOutcome::Healthy(200));

        let head = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            header_values(&head, "host"),
            [format!("127.0.0.1:{port}")],
            "{head}"
        );
    }

    #[tokio::test]
    async fn expect_decides_which_answers_are_healthy() {
        let (forbidden, _) = serve_recording("403 Forbidden");
        let (ok, _) = serve_recording("200 OK");
        let (found, _) = serve_recording("302 Found");
        let mut cfg = health("/health", Duration::from_secs(2));
        cfg.expect = Expect::new(vec![403..=403]).unwrap();
        let only_403 = HttpProber::new(&cfg).unwrap();
        cfg.expect = Expect::new(vec![200..=200, 300..=399]).unwrap();
        let ok_or_3xx = HttpProber::new(&cfg).unwrap();
        let default = HttpProber::new(&health("/health", Duration::from_secs(2))).unwrap();

        assert_eq!(only_403.probe(forbidden).await, ProbeOutcome::Healthy(403));
        assert_eq!(only_403.probe(ok).await, ProbeOutcome::Unhealthy(200));
        assert_eq!(ok_or_3xx.probe(found).await, ProbeOutcome::Healthy(302));
        assert_eq!(ok_or_3xx.probe(ok).await, ProbeOutcome::Healthy(200));
        assert_eq!(
            ok_or_3xx.probe(forbidden).await,
            ProbeOutcome::Unhealthy(403)
        );
        assert_eq!(default.probe(forbidden).await, ProbeOutcome::Unhealthy(403));
        assert_eq!(default.probe(found).await, ProbeOutcome::Unhealthy(302));
    }

    #[tokio::test]
    async fn answer_200_is_healthy() {
        let port = serve(Some(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ));
        let prober = HttpProber::new(&health("health", Duration::from_secs(2))).unwrap();
        assert_eq!(prober.path(), "/health");
        assert_eq!(prober.probe(port).await, ProbeOutcome::Healthy(200));
        // A second probe opens a new connection and passes as well.
        assert_eq!(prober.probe(port).await, ProbeOutcome::Healthy(200));
    }

    #[tokio::test]
    async fn answer_500_is_unhealthy() {
        let port = serve(Some(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ));
        let prober = HttpProber::new(&health("/health", Duration::from_secs(2))).unwrap();
        assert_eq!(prober.probe(port).await, ProbeOutcome::Unhealthy(500));
    }

    #[tokio::test]
    async fn redirect_is_unhealthy_and_not_followed() {
        let port = serve(Some(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
        ));
        let prober = HttpProber::new(&health("/health", Duration::from_secs(2))).unwrap();
        assert_eq!(prober.probe(port).await, ProbeOutcome::Unhealthy(302));
    }

    #[tokio::test]
    async fn silent_server_is_unreachable_within_the_timeout() {
        let port = serve(None);
        let prober = HttpProber::new(&health("/health", ms(300))).unwrap();
        let started = Instant::now();
        let outcome = prober.probe(port).await;
        assert_eq!(outcome, ProbeOutcome::Unreachable("timed out".into()));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let prober = HttpProber::new(&health("/health", Duration::from_secs(2))).unwrap();
        assert_eq!(
            prober.probe(port).await,
            ProbeOutcome::Unreachable("connection refused".into())
        );
    }

    #[tokio::test]
    async fn connection_closed_without_answer_is_unreachable() {
        let port = serve(Some(""));
        let prober = HttpProber::new(&health("/health", Duration::from_secs(2))).unwrap();
        let outcome = prober.probe(port).await;
        assert!(
            matches!(outcome, ProbeOutcome::Unreachable(_)),
            "{outcome:?}"
        );
    }
}
