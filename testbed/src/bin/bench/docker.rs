//! The Docker Engine API on the bed's unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use fieldtrack_testbed::{util, Bed};

use crate::Result;

/// One request to the Docker Engine API on the bed's unix socket; checks the status.
pub fn docker_api(bed: &Bed, method: &str, path: &str, body: &str, want: u16) -> Result<String> {
    let socket = bed
        .docker_host
        .strip_prefix("unix://")
        .ok_or_else(|| format!("DOCKER_HOST {} is not a unix socket", bed.docker_host))?;
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != want {
        return Err(format!(
            "docker {method} {path}: {}",
            util::last_lines(&text, 3)
        ));
    }
    Ok(text)
}
