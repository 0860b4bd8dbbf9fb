//! Timing a command: from its start until the site's nginx serves the target version, polled
//! on a fresh connection every [`POLL`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use fieldtrack_testbed::Site;

use crate::tools::wait_child;
use crate::Result;

/// How often the served version is polled while a command runs.
pub const POLL: Duration = Duration::from_millis(10);
/// The longest any single timed command may take before the run is called failed.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// How long a timed command took: until nginx served the target, and until it exited.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub served: Duration,
    pub exited: Duration,
}

/// Starts `cmd`, polls `/version` through the site's nginx every 10 ms on a fresh connection
/// until it answers `target`, then waits for the command to end (it must succeed).
pub fn timed(site: &Site, target: &str, mut cmd: Command, what: &str) -> Result<Timed> {
    let addr = site.nginx_addr();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut exited_ok_at: Option<Instant> = None;
    let served = loop {
        if version(addr).as_deref() == Some(target) {
            break start.elapsed();
        }
        if exited_ok_at.is_none() {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                if !status.success() {
                    return Err(format!(
                        "{what} failed ({status}) before nginx served {target}; see {}",
                        site.dir.join("bench.log").display()
                    ));
                }
                exited_ok_at = Some(Instant::now());
            }
        }
        if exited_ok_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10))
            || start.elapsed() > COMMAND_LIMIT
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: nginx never served {target}"));
        }
        thread::sleep(POLL);
    };
    let status = wait_child(&mut child, COMMAND_LIMIT, what)?;
    if !status.success() {
        return Err(format!(
            "{what} failed ({status}) after nginx served {target}"
        ));
    }
    Ok(Timed {
        served,
        exited: start.elapsed(),
    })
}

/// Waits until nginx serves `tag`, then until its old workers are surely gone.
pub fn settle(site: &Site, tag: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while version(site.nginx_addr()).as_deref() != Some(tag) {
        if Instant::now() > deadline {
            return Err(format!("site {} never served {tag}", site.app));
        }
        thread::sleep(POLL);
    }
    thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// What nginx serves on `/version`, on a fresh connection; None on anything but a 200.
pub fn version(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    Some(body.trim().to_string())
}

/// The site's live tag through nginx, or an error naming the site.
pub fn served(site: &Site) -> Result<String> {
    version(site.nginx_addr()).ok_or_else(|| format!("site {} serves nothing", site.app))
}
