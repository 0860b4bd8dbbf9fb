//! What the canary tests drive and watch: a load generator that keeps asking the site's
//! nginx and records who answered (the body is the version), status.json's `canary` seen
//! while the steps run, and the `[canary]` section of a site's config.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fieldtrack_testbed::util::http_get;
use fieldtrack_testbed::{in_netns, Site};

use super::{send_signal, status, wait_for, PATIENCE};

/// One request of the load generator, as its client saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When the request was sent.
    pub sent: Instant,
    /// When its answer was read whole (or the request failed).
    pub done: Instant,
    /// The HTTP status; 0 when no answer came (refused, reset, timed out).
    pub status: u16,
    /// The body, trimmed (the version for `/version` and `/`), or the error.
    pub body: String,
}

impl Answer {
    /// Sent at or after `from` and answered before `to`.
    pub fn within(&self, from: Instant, to: Instant) -> bool {
        self.sent >= from && self.done <= to
    }
}

/// Threads asking nginx `path` in a loop, each with a fresh connection per request (so a
/// reload's new workers and weights apply to the next request), `gap` apart.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Answer>>>,
}

impl Load {
    /// Starts `threads` clients of the site's nginx.
    pub fn start(site: &Site, path: &str, threads: usize, gap: Duration) -> Load {
        Load::start_at(site.nginx_addr(), None, path, threads, gap)
    }

    /// Starts `threads` clients of the nginx at `addr`, each inside the network namespace
    /// `netns` when given (a Swarm site's nginx listens in the edge namespace).
    pub fn start_at(
        addr: SocketAddr,
        netns: Option<PathBuf>,
        path: &str,
        threads: usize,
        gap: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let path = path.to_string();
                let netns = netns.clone();
                thread::spawn(move || match netns {
                    None => client(addr, &path, gap, &stop),
                    Some(netns) => in_netns(&netns, || client(addr, &path, gap, &stop))
                        .unwrap_or_else(|e| panic!("cannot enter {}: {e}", netns.display())),
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients; every answer they got, in the order sent.
    pub fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        let mut answers: Vec<Answer> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("a load thread does not panic"))
            .collect();
        answers.sort_by_key(|a| a.sent);
        answers
    }
}

fn client(addr: SocketAddr, path: &str, gap: Duration, stop: &AtomicBool) -> Vec<Answer> {
    let mut answers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let (status, body) = match http_get(addr, path, Duration::from_secs(5)) {
            Ok((status, body)) => (status, body.trim().to_string()),
            Err(e) => (0, e.to_string()),
        };
        answers.push(Answer {
            sent,
            done: Instant::now(),
            status,
            body,
        });
        thread::sleep(gap);
    }
    answers
}

/// How many answers came with `body` (the version that answered).
pub fn count(answers: &[&Answer], body: &str) -> usize {
    answers.iter().filter(|a| a.body == body).count()
}

/// Something sampled every 20 ms while a test runs (status.json's `canary`, the upstream
/// file's servers): each value that differs from the one before, with when it was first seen.
pub struct Watch<T> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, T)>>,
}

impl<T: PartialEq + Send + 'static> Watch<T> {
    /// Samples `look` (None: nothing to see this time) until stopped.
    pub fn start(mut look: impl FnMut() -> Option<T> + Send + 'static) -> Watch<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut seen: Vec<(Instant, T)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if let Some(value) = look() {
                        if seen.last().map(|(_, v)| v) != Some(&value) {
                            seen.push((now, value));
                        }
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                seen
            })
        };
        Watch { stop, thread }
    }

    /// Stops watching; each value seen, with when it was first seen.
    pub fn stop(self) -> Vec<(Instant, T)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watch does not panic")
    }
}

/// Watches status.json's `canary` (null when none runs).
pub fn watch_canary(site: &Site) -> Watch<serde_json::Value> {
    let path = site.state_dir.join("status.json");
    Watch::start(move || {
        let bytes = fs::read(&path).ok()?;
        let status: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        Some(status["canary"].clone())
    })
}

/// Watches the upstream file's `server` lines.
pub fn watch_servers(site: &Site) -> Watch<Vec<String>> {
    let path = site.upstream_file.clone();
    Watch::start(move || Some(server_lines(&fs::read_to_string(&path).ok()?)))
}

/// When status.json first showed canary step `step` (1-based), if it did.
pub fn first_seen(seen: &[(Instant, serde_json::Value)], step: u64) -> Option<Instant> {
    seen.iter()
        .find(|(_, c)| c["step"].as_u64() == Some(step))
        .map(|(at, _)| *at)
}

/// Sets `[canary]`: `steps` as TOML (an array of inline tables), `min_requests`, and the
/// latency bound.
pub fn set_canary(site: &mut Site, steps: &str, min_requests: u64, max_latency_ratio: f64) {
    site.set("canary.steps", steps);
    site.set("canary.min_requests", &min_requests.to_string());
    site.set(
        "canary.max_latency_ratio",
        &format!("{max_latency_ratio:?}"),
    );
}

/// Waits until status.json shows canary step `step` whose window holds at least
/// `canary_requests` requests of the canary; that `canary`.
#[track_caller]
pub fn wait_canary(site: &Site, step: u64, canary_requests: u64) -> serde_json::Value {
    wait_for(
        PATIENCE,
        &format!("canary step {step} with {canary_requests} canary requests in status.json"),
        || {
            let canary = status(site)["canary"].clone();
            (canary["step"].as_u64() == Some(step)
                && canary["canary"]["requests"].as_u64() >= Some(canary_requests))
            .then_some(canary)
        },
    )
}

/// The `server` lines of the upstream file.
pub fn servers(site: &Site) -> Vec<String> {
    server_lines(&super::upstream(site))
}

/// The `server` lines of an upstream file's text, trimmed.
pub fn server_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .map(str::to_string)
        .collect()
}

/// The pid of the site's nginx master.
pub fn nginx_master(site: &Site) -> i32 {
    fs::read_to_string(site.dir.join("nginx/nginx.pid"))
        .expect("nginx.pid exists")
        .trim()
        .parse()
        .expect("nginx.pid holds a pid")
}

/// Sends `signal` to `pid`.
pub fn signal(pid: i32, signal: i32) {
    let sent = send_signal(pid, signal);
    assert!(
        sent.is_ok(),
        "signal {signal} to {pid}: {}",
        sent.unwrap_err()
    );
}

/// Writes the desired file as CI's scp-then-mv would: a temp file renamed over it.
pub fn write_desired(site: &Site, text: &str) {
    let tmp = site.dir.join("desired.toml.tmp");
    fs::write(&tmp, text).expect("the temp desired file is written");
    fs::rename(&tmp, &site.desired_file).expect("the desired file is replaced");
}
