//! nginx's access log as the canary's judge: what real traffic got from each color.
//!
//! fieldtrack reads the log nginx already writes, as it grows, in the JSON `log_format` that
//! `fieldtrack init` puts into its nginx snippet ([`LOG_FORMAT`]). A line counts when it is a
//! JSON object with at least the string keys `upstream_addr`, `status`, `upstream_status`
//! and `request_time` (nginx's `$upstream_addr` etc., written with `escape=json`); other keys
//! are ignored, other lines skipped and counted.
//!
//! [`Tail`] follows the file across rotation: a file replaced (another inode) is read from
//! its start, and so is a file truncated below what was read; a log that does not exist yet
//! is simply nothing new. Each read is capped, so a huge backlog cannot stall a pass.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `log_format` fieldtrack's nginx snippet declares, and `access_log PATH fieldtrack;`
/// uses.
pub const LOG_FORMAT: &str = r#"log_format fieldtrack escape=json '{"time":"$time_iso8601","upstream_addr":"$upstream_addr","status":"$status","upstream_status":"$upstream_status","request_time":"$request_time","upstream_response_time":"$upstream_response_time"}';"#;

/// At most this much of the log is read per call: the rest waits for the next one.
const READ_CAP: u64 = 64 * 1024 * 1024;

/// Errors of reading the access log.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The log exists but cannot be read.
    #[error("cannot read the nginx access log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One request as nginx logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Every upstream nginx tried for it, in order (`$upstream_addr` lists them, `, `
    /// between tries and ` : ` between upstream groups).
    pub tries: Vec<Try>,
    /// What the client got.
    pub status: u16,
    /// Seconds, as `$request_time`.
    pub request_time: f64,
}

/// nginx's status for a request its client closed before the answer was sent.
const CLIENT_CLOSED: u16 = 499;

impl Request {
    /// The client gave up (499) while nginx still waited for this try's upstream: the
    /// upstream never got to answer, so the try says nothing about the server, good or bad.
    fn abandoned(&self, attempt: &Try) -> bool {
        self.status == CLIENT_CLOSED && attempt.status.is_none()
    }
}

/// One attempt of nginx at one upstream server.
#[derive(Debug, Clone, PartialEq)]
pub struct Try {
    pub addr: SocketAddr,
    /// The upstream's status; None when nginx got no answer (refused, reset, timed out).
    pub status: Option<u16>,
}

impl Try {
    /// The server failed this try: no answer, or a 5xx.
    pub fn failed(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }
}

#[derive(Deserialize)]
struct Line {
    upstream_addr: String,
    status: String,
    upstream_status: String,
    request_time: String,
}

/// Parses one log line; None for a line that is not a request in fieldtrack's format (or a
/// request nginx answered itself, with no upstream).
pub fn parse_line(line: &str) -> Option<Request> {
    let line: Line = serde_json::from_str(line).ok()?;
    let split = |s: &str| -> Vec<String> {
        s.split([',', ':'])
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    // `$upstream_addr` separates tries with ", " and groups with " : ", but an address has
    // its own colon: rebuild `host:port` pairs by splitting on ", " and " : " only.
    let addrs: Vec<SocketAddr> = line
        .upstream_addr
        .split(", ")
        .flat_map(|part| part.split(" : "))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let statuses: Vec<Option<u16>> = split(&line.upstream_status)
        .iter()
        .map(|s| s.parse().ok())
        .collect();
    if addrs.is_empty() {
        return None;
    }
    let tries = addrs
        .into_iter()
        .enumerate()
        .map(|(i, addr)| Try {
            addr,
            status: statuses.get(i).copied().flatten(),
        })
        .collect();
    Some(Request {
        tries,
        status: line.status.parse().ok()?,
        request_time: line.request_time.parse().ok()?,
    })
}

/// Follows the access log from where it was when the tail started.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// The file read last (device, inode) and how far.
    at: Option<(u64, u64)>,
    offset: u64,
    /// A line cut by the end of the last read, completed by the next one.
    partial: Vec<u8>,
    /// The file's first bytes as read: a file truncated and written again past where the
    /// tail was (copytruncate, then a burst) keeps its inode and grows, but not these.
    head: Vec<u8>,
    /// Lines that were not requests in fieldtrack's format, since the start.
    pub skipped: u64,
}

impl Tail {
    /// A tail that starts at the log's current end: what nginx logged before is not this
    /// canary's business. A log that does not exist yet starts empty.
    pub fn from_end(path: &Path) -> Tail {
        let opened = open_log(path).and_then(|file| Ok((file.metadata()?, first_bytes(&file)?)));
        let (at, offset, head) = match opened {
            Ok((m, head)) => (Some((m.dev(), m.ino())), m.len(), head),
            Err(_) => (None, 0, Vec::new()),
        };
        Tail {
            path: path.to_path_buf(),
            at,
            offset,
            partial: Vec::new(),
            head,
            skipped: 0,
        }
    }

    /// The requests logged since the last call. A rotated log (the file replaced, or
    /// truncated below what was read) is read from its start; a missing one is nothing yet.
    pub fn read_new(&mut self) -> Result<Vec<Request>, AccessLogError> {
        let read_error = |source| AccessLogError::Read {
            path: self.path.clone(),
            source,
        };
        let mut file = match open_log(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_error(e)),
        };
        let meta = file.metadata().map_err(read_error)?;
        let id = (meta.dev(), meta.ino());
        let head_now = first_bytes(&file).map_err(read_error)?;
        let rewritten = !self.head.is_empty() && !head_now.starts_with(&self.head);
        if self.at != Some(id) || meta.len() < self.offset || rewritten {
            // Rotated: a new file (or the same one emptied and written again) starts at 0.
            self.at = Some(id);
            self.offset = 0;
            self.partial.clear();
        }
        self.head = head_now;
        file.seek(SeekFrom::Start(self.offset))
            .map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(READ_CAP)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        self.offset += bytes.len() as u64;
        let mut text = std::mem::take(&mut self.partial);
        text.extend_from_slice(&bytes);
        let complete = match text.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None => 0,
        };
        self.partial = text.split_off(complete);
        if self.partial.len() > MAX_LINE {
            // No line of nginx's is this long: not a log (a file of zeros, junk). Dropped,
            // so that what is kept between reads stays bounded.
            self.partial.clear();
            self.skipped += 1;
        }
        let mut requests = Vec::new();
        for line in String::from_utf8_lossy(&text).lines() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Some(request) => requests.push(request),
                None => self.skipped += 1,
            }
        }
        Ok(requests)
    }
}

/// The longest line kept while waiting for its end: nginx's lines in fieldtrack's format
/// are a few hundred bytes, a few KiB with a long list of upstream tries.
const MAX_LINE: usize = 64 * 1024;

/// Opens the log without following a symlink at its name and without blocking (a FIFO put
/// at the path opens at once), and only when it is a regular file: a FIFO or a device such
/// as /dev/zero is refused, never read.
fn open_log(path: &Path) -> io::Result<File> {
    crate::state::file::open_regular(path, std::fs::OpenOptions::new().read(true))
}

/// How many first bytes of the log tell one file's content from another's.
const HEAD_BYTES: u64 = 256;

/// The first [`HEAD_BYTES`] of the open file (fewer when it is shorter), read where they
/// are whatever the file's offset: the same file as its metadata, not whatever the path
/// names a moment later.
fn first_bytes(file: &File) -> io::Result<Vec<u8>> {
    let mut head = vec![0; HEAD_BYTES as usize];
    let mut len = 0;
    while len < head.len() {
        match file.read_at(&mut head[len..], len as u64)? {
            0 => break,
            n => len += n,
        }
    }
    head.truncate(len);
    Ok(head)
}

/// What one side of a canary (the stable color or the canary) got in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Requests whose last try went to this side.
    pub requests: u64,
    /// Of those, answered 5xx or not at all by this side.
    pub errors: u64,
    /// Tries at this side (a request nginx retried elsewhere has one here and one there).
    pub tries: u64,
    /// Tries at this side that failed, including those nginx then retried elsewhere.
    pub failed_tries: u64,
    /// `request_time` of this side's requests, seconds.
    latencies: Vec<f64>,
}

impl Figures {
    /// Share of this side's requests that failed; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// What this side failed, counting a try that nginx then retried elsewhere against it:
    /// the failures and the tries (or the errors and requests, when more).
    pub fn failures(&self) -> (u64, u64) {
        (
            self.failed_tries.max(self.errors),
            self.tries.max(self.requests),
        )
    }

    /// [`Figures::failures`] as a share; 0 without tries.
    pub fn failure_rate(&self) -> f64 {
        match self.failures() {
            (_, 0) => 0.0,
            (failed, tries) => failed as f64 / tries as f64,
        }
    }

    /// The `q` quantile (0.5, 0.95) of the latencies, None without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}

/// Adds `requests` to per-side figures, the side of a server given by `side_of` (None: a
/// server of neither side, not counted).
pub fn tally<K: Eq + std::hash::Hash + Copy>(
    figures: &mut HashMap<K, Figures>,
    requests: &[Request],
    side_of: impl Fn(SocketAddr) -> Option<K>,
) {
    for request in requests {
        for attempt in &request.tries {
            if request.abandoned(attempt) {
                continue;
            }
            if let Some(side) = side_of(attempt.addr) {
                let f = figures.entry(side).or_default();
                f.tries += 1;
                if attempt.failed() {
                    f.failed_tries += 1;
                }
            }
        }
        let Some(last) = request.tries.last() else {
            continue;
        };
        // Judged by what the upstream answered: with no answer before the client left, it
        // is no request of that side either (nor its latency, the client's patience).
        if request.abandoned(last) {
            continue;
        }
        let Some(side) = side_of(last.addr) else {
            continue;
        };
        let f = figures.entry(side).or_default();
        f.requests += 1;
        if last.failed() || request.status >= 500 {
            f.errors += 1;
        }
        f.latencies.push(request.request_time);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn line(addr: &str, status: u16, upstream: &str, time: f64) -> String {
        format!(
            "{{\"time\":\"2026-12-01T20:00:00+00:00\",\"upstream_addr\":\"{addr}\",\"status\":\"{status}\",\"upstream_status\":\"{upstream}\",\"request_time\":\"{time:.3}\",\"upstream_response_time\":\"0.001\"}}\n"
        )
    }

    #[test]
    fn a_line_with_retries_names_every_try() {
        let r = parse_line(&line(
            "127.0.0.1:3102, 127.0.0.1:3101",
            200,
            "502, 200",
            0.004,
        ))
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.tries.len(), 2);
        assert!(r.tries[0].failed());
        assert!(!r.tries[1].failed());
        let refused = parse_line(&line("10.0.0.12:3101", 502, "-", 2.0)).unwrap();
        assert_eq!(refused.tries[0].status, None);
        assert!(refused.tries[0].failed());
    }

    #[test]
    fn other_lines_are_skipped() {
        for text in [
            "127.0.0.1 - - [01/Dec/2026] \"GET / HTTP/1.1\" 200 2",
            "{\"status\":\"200\"}",
            // nginx answered itself: no upstream.
            &line("", 404, "", 0.0),
            "not json at all",
        ] {
            assert_eq!(parse_line(text), None, "{text}");
        }
    }

    #[test]
    fn figures_per_side_count_errors_failed_tries_and_quantiles() {
        let requests: Vec<Request> = [
            line("127.0.0.1:3101", 200, "200", 0.010),
            line("127.0.0.1:3102", 200, "200", 0.020),
            line("127.0.0.1:3102", 500, "500", 0.030),
            line("127.0.0.1:3102, 127.0.0.1:3101", 200, "502, 200", 0.040),
        ]
        .iter()
        .filter_map(|l| parse_line(l))
        .collect();
        let mut figures = HashMap::new();
        tally(&mut figures, &requests, |a| Some(a.port()));
        let stable = &figures[&3101];
        let canary = &figures[&3102];
        assert_eq!((stable.requests, stable.errors), (2, 0));
        assert_eq!(
            (canary.requests, canary.errors, canary.failed_tries),
            (2, 1, 2)
        );
        assert_eq!(canary.error_rate(), 0.5);
        assert_eq!(stable.quantile(0.5), Some(0.010));
        assert_eq!(stable.quantile(0.95), Some(0.040));
    }

    #[test]
    fn a_try_the_client_gave_up_on_counts_for_neither_side_but_a_failed_try_before_it_does() {
        let requests: Vec<Request> = [
            line("127.0.0.1:3102", 499, "-", 0.500),
            line("127.0.0.1:3102, 127.0.0.1:3101", 499, "502, -", 0.700),
            // The upstream answered before the client left: judged by that answer.
            line("127.0.0.1:3102", 499, "500", 0.300),
        ]
        .iter()
        .filter_map(|l| parse_line(l))
        .collect();
        let mut figures = HashMap::new();
        tally(&mut figures, &requests, |a| Some(a.port()));
        let canary = &figures[&3102];
        assert_eq!(
            (
                canary.requests,
                canary.errors,
                canary.tries,
                canary.failed_tries
            ),
            (1, 1, 2, 2)
        );
        assert!(!figures.contains_key(&3101), "{:?}", figures.get(&3101));
    }

    #[test]
    fn the_tail_follows_growth_partial_lines_rotation_and_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut tail = Tail::from_end(&path);
        assert_eq!(tail.read_new().unwrap(), Vec::new(), "no log yet");

        let mut log = File::create(&path).unwrap();
        let first = line("127.0.0.1:3101", 200, "200", 0.001);
        log.write_all(first.as_bytes()).unwrap();
        // Half a line: completed by the next write.
        let second = line("127.0.0.1:3102", 200, "200", 0.002);
        let (a, b) = second.split_at(20);
        log.write_all(a.as_bytes()).unwrap();
        assert_eq!(tail.read_new().unwrap().len(), 1);
        log.write_all(b.as_bytes()).unwrap();
        log.write_all(b"garbage\n").unwrap();
        let got = tail.read_new().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tries[0].addr.port(), 3102);
        assert_eq!(tail.skipped, 1);

        // Rotation by rename and a new file: read from its start.
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        let mut log = File::create(&path).unwrap();
        log.write_all(line("127.0.0.1:3101", 503, "503", 0.003).as_bytes())
            .unwrap();
        let got = tail.read_new().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status, 503);

        // Rotation by truncation (copytruncate): read from the start again.
        log.set_len(0).unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        log.write_all(line("127.0.0.1:3102", 200, "200", 0.004).as_bytes())
            .unwrap();
        let got = tail.read_new().unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].tries[0].addr.port(), 3102);
    }

    #[test]
    fn a_fifo_or_dev_zero_at_the_log_path_is_refused_without_blocking() {
        use crate::state::test_support::{mkfifo, within_5s};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        mkfifo(&path);
        let fifo = path.clone();
        let result = within_5s("a tail of a FIFO", move || {
            let mut tail = Tail::from_end(&fifo);
            tail.read_new().map_err(|e| e.to_string())
        });
        assert!(result.unwrap_err().contains("FIFO"));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let zero = path.clone();
        let result = within_5s("a tail of /dev/zero", move || {
            let mut tail = Tail::from_end(&zero);
            tail.read_new().map_err(|e| e.to_string())
        });
        assert!(result.is_err(), "{result:?}");
    }

    #[test]
    fn what_is_kept_of_a_line_without_end_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "").unwrap();
        let mut tail = Tail::from_end(&path);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for _ in 0..4 {
            file.write_all(&vec![b'x'; 1 << 20]).unwrap();
            tail.read_new().unwrap();
            assert!(tail.partial.len() <= MAX_LINE, "{}", tail.partial.len());
        }
        file.write_all(format!("\n{}\n", line("127.0.0.1:3001", 200, "200", 0.001)).as_bytes())
            .unwrap();
        assert_eq!(tail.read_new().unwrap().len(), 1);
    }

    #[test]
    fn a_tail_starts_at_the_end_of_what_was_logged_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, line("127.0.0.1:3101", 200, "200", 0.001)).unwrap();
        let mut tail = Tail::from_end(&path);
        assert_eq!(tail.read_new().unwrap(), Vec::new());
    }
}
