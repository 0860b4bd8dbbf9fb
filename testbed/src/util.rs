//! Small process, port and HTTP helpers, std only so the bed builds in seconds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A bed error: plain words saying what failed and where to look.
#[derive(Debug)]
pub struct BedError(pub String);

impl std::fmt::Display for BedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BedError {}

pub type Result<T> = std::result::Result<T, BedError>;

pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(BedError(msg.into()))
}

/// Runs a command to completion; on failure the error holds its stderr (or stdout).
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BedError(format!("cannot run {shown}: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    err(format!(
        "{shown} failed ({}): {}",
        out.status,
        last_lines(&text, 20)
    ))
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn tail_file(path: &Path, n: usize) -> String {
    std::fs::read_to_string(path)
        .map(|t| last_lines(&t, n))
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Is a program on PATH?
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs `f` once when the process exits (atexit(3)): how a test binary cleans up what its
/// tests share, since the harness exits without dropping statics. Here, because the
/// fieldtrack package's own tests may hold no unsafe code.
pub fn at_exit(f: extern "C" fn()) {
    // SAFETY: registering a plain extern "C" function; it runs once at exit.
    unsafe { libc::atexit(f) };
}

pub fn pid_alive(pid: i32) -> bool {
    // kill(pid, 0) probes without signalling; a zombie still answers it, /proc tells it apart.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && crate::procfs::runs(pid)
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `signal` to `pid` and waits up to `grace` for it to go; then SIGKILL.
pub fn stop_pid(pid: i32, signal: i32, grace: Duration) {
    if !pid_alive(pid) {
        return;
    }
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Free loopback ports, below the kernel's ephemeral range and distinct within this process.
///
/// A port is free when we look and is taken by its user (Docker's proxy, nginx) moments
/// later. A port of the ephemeral range can be taken between the two by any outgoing
/// connection (a probe, a load generator): CI saw `bind: address already in use` for a
/// container's host port that way. Below the range only a listener takes a port, and each
/// one is tried with a bind first.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let top = ephemeral_low().max(LOWEST + 1_000);
    let span = top - LOWEST;
    // Another process choosing at the same time starts elsewhere in the span.
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(0, seed % span + 1, Ordering::SeqCst, Ordering::SeqCst);
    let mut held = Vec::with_capacity(n);
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = u16::try_from(LOWEST + offset).expect("below the ephemeral range");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < n {
        return err(format!(
            "cannot find {n} free loopback ports between {LOWEST} and {top}"
        ));
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| BedError(format!("cannot read a bound port: {e}")))
        })
        .collect()
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .min(u32::from(u16::MAX))
}

/// A minimal HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    http_get_auth(addr, path, None, timeout)
}

/// [`http_get`] with HTTP basic auth when `login` holds a user and password.
pub fn http_get_auth(
    addr: SocketAddr,
    path: &str,
    login: Option<(&str, &str)>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let authorization = login
        .map(|(user, password)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64(format!("{user}:{password}").as_bytes())
            )
        })
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: fieldtrack-testbed\r\n{authorization}\r\n"
    )?;
    // No half-close after the request: nginx takes it for a client gone away (499).
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Standard base64 with padding (HTTP basic auth, Docker config `auth` entries).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Polls `probe` every 100 ms until it gives a value, None once `limit` passed. The one
/// polling loop of the bed and the tests: every wait there is this one with a name.
pub fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `probe` every 100 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut probe: impl FnMut() -> bool) -> bool {
    poll(limit, || probe().then_some(())).is_some()
}

/// FNV-1a, to fingerprint the test app's sources; collisions only cost a rebuild.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
