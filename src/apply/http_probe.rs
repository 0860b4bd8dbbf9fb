//! Health probes: the gate between starting a candidate and sending it traffic.
//!
//! Traffic only moves to a container that answered `health.path` with 2xx through its
//! published port, and during the drain the new color keeps being probed. The probe sits
//! behind a trait so the health gate and drain logic can be tested with fakes; the HTTP
//! prober itself is tested against a real socket.

use std::net::SocketAddr;
use std::time::Duration;

use crate::model::probe::{ProbeOutcome, Prober};

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
}

/// Probes `GET http://{addr}{path}` (`127.0.0.1:PORT` for a local container).
#[derive(Debug, Clone)]
pub struct HttpProber {
    client: reqwest::Client,
    path: String,
}

impl HttpProber {
    /// A prober for `path` (a missing leading `/` is added) whose every probe, connecting
    /// included, gives up after `timeout`.
    pub fn new(path: &str, timeout: Duration) -> Result<Self, HealthError> {
        let client = reqwest::Client::builder()
            // The container is on loopback; an operator's HTTP_PROXY must not intercept it.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A fresh connection per probe: a kept-alive one could outlive the container
            // or hide that it stopped accepting connections.
            .pool_max_idle_per_host(0)
            // Only the container's own 2xx counts; a redirect is an answer, not a pointer
            // to follow somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "fieldtrack/",
                env!("CARGO_PKG_VERSION"),
                " health probe"
            ))
            .build()
            .map_err(|source| HealthError::Client { source })?;
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Ok(HttpProber { client, path })
    }

    /// The path probed.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Prober for HttpProber {
    async fn probe_at(&self, addr: SocketAddr) -> ProbeOutcome {
        let url = format!("http://{addr}{}", self.path);
        match self.client.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                ProbeOutcome::Healthy(response.status().as_u16())
            }
            Ok(response) => ProbeOutcome::Unhealthy(response.status().as_u16()),
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

    #[tokio::test]
    async fn answer_200_is_healthy() {
        let port = serve(Some(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ));
        let prober = HttpProber::new("health", Duration::from_secs(2)).unwrap();
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
        let prober = HttpProber::new("/health", Duration::from_secs(2)).unwrap();
        assert_eq!(prober.probe(port).await, ProbeOutcome::Unhealthy(500));
    }

    #[tokio::test]
    async fn redirect_is_unhealthy_and_not_followed() {
        let port = serve(Some(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
        ));
        let prober = HttpProber::new("/health", Duration::from_secs(2)).unwrap();
        assert_eq!(prober.probe(port).await, ProbeOutcome::Unhealthy(302));
    }

    #[tokio::test]
    async fn silent_server_is_unreachable_within_the_timeout() {
        let port = serve(None);
        let prober = HttpProber::new("/health", ms(300)).unwrap();
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
        let prober = HttpProber::new("/health", Duration::from_secs(2)).unwrap();
        assert_eq!(
            prober.probe(port).await,
            ProbeOutcome::Unreachable("connection refused".into())
        );
    }

    #[tokio::test]
    async fn connection_closed_without_answer_is_unreachable() {
        let port = serve(Some(""));
        let prober = HttpProber::new("/health", Duration::from_secs(2)).unwrap();
        let outcome = prober.probe(port).await;
        assert!(
            matches!(outcome, ProbeOutcome::Unreachable(_)),
            "{outcome:?}"
        );
    }
}
