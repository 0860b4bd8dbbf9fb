//! The load generator: threads sending raw HTTP/1.1 `GET /version` through nginx until
//! stopped, every outcome counted (sections c, e3 and f).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How the load generator's clients use connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Conn {
    /// A new connection per request (`Connection: close`).
    Close,
    /// One persistent connection per thread, reopened when nginx closes it.
    KeepAlive,
}

impl Conn {
    pub fn name(self) -> &'static str {
        match self {
            Conn::Close => "new connection per request",
            Conn::KeepAlive => "keep-alive",
        }
    }
}

/// What the load generator saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub requests: u64,
    ok: u64,
    /// Failure kind ("HTTP 502", "connect: refused", ...) -> count.
    failures: BTreeMap<String, u64>,
    /// Requests whose reused keep-alive connection was closed by nginx before any byte of
    /// the answer, then sent again once on a new connection (RFC 9112, 9.3.1).
    pub retried: u64,
    /// Answers that carried `Connection: close` (nginx's old workers say so while exiting).
    pub closed_by_header: u64,
    latencies_us: Vec<u32>,
    /// (seconds since the load started, kind) of the first failures, for the diagnosis.
    pub first_failures: Vec<(f64, String)>,
    /// Every answer that named the app's tag (its `X-Testapp-Tag` header), by tag: (seconds
    /// since the load started when the request went out, answered 2xx). Section f counts
    /// what each image answered from it.
    pub by_tag: BTreeMap<String, Vec<(f32, bool)>>,
}

impl LoadStats {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn merge(&mut self, other: LoadStats) {
        self.requests += other.requests;
        self.ok += other.ok;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.retried += other.retried;
        self.closed_by_header += other.closed_by_header;
        self.latencies_us.extend(other.latencies_us);
        self.first_failures.extend(other.first_failures);
        self.first_failures.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.first_failures.truncate(20);
        for (tag, answers) in other.by_tag {
            self.by_tag.entry(tag).or_default().extend(answers);
        }
    }

    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// The "keep-alive closes retried" cell: only keep-alive clients retry.
    pub fn retried_cell(&self, conn: Conn) -> String {
        match conn {
            Conn::KeepAlive => self.retried.to_string(),
            Conn::Close => "-".into(),
        }
    }

    pub fn failure_text(&self) -> String {
        if self.failures.is_empty() {
            return "0".into();
        }
        let kinds: Vec<String> = self
            .failures
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!("**{}** ({})", self.failed(), kinds.join(", "))
    }
}

/// Threads sending GET /version through nginx until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<LoadStats>>,
    /// The instant the threads' times count from.
    pub t0: Instant,
}

impl Load {
    pub fn start(addr: SocketAddr, conn: Conn, threads: usize, gap: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || load_thread(addr, conn, gap, &stop, t0))
            })
            .collect();
        Load { stop, threads, t0 }
    }

    pub fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadStats::default();
        for t in self.threads {
            if let Ok(stats) = t.join() {
                all.merge(stats);
            }
        }
        all
    }
}

/// One client: requests back to back (with `gap` between them), every outcome counted.
fn load_thread(
    addr: SocketAddr,
    conn: Conn,
    gap: Duration,
    stop: &AtomicBool,
    t0: Instant,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut kept: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let sent_at = t0.elapsed().as_secs_f32();
        let reused = kept.is_some();
        let mut outcome = request(addr, conn, &mut kept);
        if let Err(Failure::BeforeAnswer(_)) = &outcome {
            if reused {
                // The server closed a kept-alive connection as the request went out: what
                // browsers, curl and Go's net/http send a GET again on a new one.
                stats.retried += 1;
                kept = None;
                outcome = request(addr, conn, &mut kept);
            }
        }
        stats.requests += 1;
        match outcome {
            Ok(answer) => {
                if answer.close {
                    stats.closed_by_header += 1;
                }
                if let Some(tag) = answer.tag {
                    let ok = (200..300).contains(&answer.status);
                    stats.by_tag.entry(tag).or_default().push((sent_at, ok));
                }
                if (200..300).contains(&answer.status) {
                    stats.ok += 1;
                    let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    stats.latencies_us.push(us);
                } else {
                    stats.fail(t0, format!("HTTP {}", answer.status));
                }
            }
            Err(f) => {
                kept = None;
                stats.fail(t0, f.kind());
            }
        }
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
    stats
}

impl LoadStats {
    fn fail(&mut self, t0: Instant, kind: String) {
        if self.first_failures.len() < 20 {
            self.first_failures
                .push((t0.elapsed().as_secs_f64(), kind.clone()));
        }
        *self.failures.entry(kind).or_default() += 1;
    }
}

struct Answer {
    status: u16,
    close: bool,
    /// The test app's `X-Testapp-Tag` header: which image answered (None: nginx did).
    tag: Option<String>,
}

enum Failure {
    Connect(std::io::Error),
    /// Nothing of an answer arrived (write failed, EOF or reset before the status line).
    BeforeAnswer(String),
    /// The answer started but broke off.
    MidAnswer(String),
}

impl Failure {
    fn kind(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {}", io_kind(e)),
            Failure::BeforeAnswer(e) => format!("closed before the answer: {e}"),
            Failure::MidAnswer(e) => format!("answer broken off: {e}"),
        }
    }
}

pub fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        std::io::ErrorKind::UnexpectedEof => "eof".into(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
        std::io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => e.to_string(),
    }
}

/// One GET on the kept connection (or a new one); keeps the connection when it may be reused.
fn request(
    addr: SocketAddr,
    conn: Conn,
    kept: &mut Option<BufReader<TcpStream>>,
) -> std::result::Result<Answer, Failure> {
    let mut reader = match kept.take() {
        Some(r) => r,
        None => {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(Failure::Connect)?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.set_nodelay(true);
            BufReader::new(s)
        }
    };
    let req: &[u8] = match conn {
        Conn::Close => b"GET /version HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
        Conn::KeepAlive => b"GET /version HTTP/1.1\r\nHost: bench\r\n\r\n",
    };
    reader
        .get_mut()
        .write_all(req)
        .map_err(|e| Failure::BeforeAnswer(io_kind(&e)))?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err(Failure::BeforeAnswer("eof".into())),
        Ok(_) => {}
        Err(e) => return Err(Failure::BeforeAnswer(io_kind(&e))),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::MidAnswer(format!("not HTTP: {:?}", line.trim())))?;
    let mut length: Option<usize> = None;
    let mut close = false;
    let mut tag = None;
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) => return Err(Failure::MidAnswer("eof in the headers".into())),
            Ok(_) => {}
            Err(e) => return Err(Failure::MidAnswer(io_kind(&e))),
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let (name, value) = (
            name.trim().to_ascii_lowercase(),
            value.trim().to_ascii_lowercase(),
        );
        if name == "content-length" {
            length = value.parse().ok();
        } else if name == "connection" && value == "close" {
            close = true;
        } else if name == "x-testapp-tag" {
            tag = Some(value);
        }
    }
    match length {
        Some(n) => {
            let mut body = vec![0u8; n];
            reader
                .read_exact(&mut body)
                .map_err(|e| Failure::MidAnswer(io_kind(&e)))?;
        }
        None => {
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .map_err(|e| Failure::MidAnswer(io_kind(&e)))?;
            close = true;
        }
    }
    if conn == Conn::KeepAlive && !close {
        *kept = Some(reader);
    }
    Ok(Answer { status, close, tag })
}
