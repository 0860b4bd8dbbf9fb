//! The app the test bed deploys. One static binary; each image bakes its tag into
//! `TESTAPP_TAG` at build time, and the tag fixes the behaviour:
//!
//! | tag         | behaviour                                              |
//! | ----------- | ------------------------------------------------------ |
//! | `v1`..`v9`  | healthy                                                |
//! | `unhealthy` | `/health` answers 500                                  |
//! | `crash`     | prints a line to stderr and exits at once (status 3)   |
//! | `slow`      | listens only after 5 s                                 |
//! | `flaky`     | healthy, then `/health` answers 500 after 3 s          |
//! | `ready1s`   | listens after 1 s, like a typical app                  |
//! | `err5`      | healthy; every 5th request to any other path: 500      |
//! | `lag`       | healthy; every other path answers after 300 ms         |
//!
//! Routes: `/health`, `/version` (the tag), `/` (the tag too, so nginx tests read it).
//! `err5` counts its requests (all but `/health`) on one counter shared by every connection,
//! so exactly one in five answers `500 error from err5` whatever the concurrency: a canary
//! test knows its error rate (20%) without sampling noise. `lag`'s `/health` stays fast, so
//! only real traffic, judged by latency, can tell it apart.
//!
//! Three environment variables (from the env file) make any tag behave like a real app:
//! - `REQUIRE_HOST=api.example.test`: `/health` answers 403 unless the request's Host header
//!   is that name (as Rails' `config.hosts` and Django's `ALLOWED_HOSTS` do);
//! - `NEEDS=db:5432`: `/health` answers 503 unless a TCP connection to that address opens
//!   within a second (an app that needs its database, reached by name on a Docker network);
//! - `DATA_FILE=/data/visits`: `/data` answers the file's content (404 while it is missing),
//!   `/data/append` first appends the tag and a newline to it (state that must outlive a
//!   container, on a volume).
//!
//! SIGTERM ends it at once: PID 1 in a container gets no default signal handling.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Healthy,
    Unhealthy,
    Crash,
    Slow,
    Flaky,
    Ready1s,
    Err5,
    Lag,
}

/// What the environment asks of every tag (see the module's doc).
#[derive(Clone, Default)]
struct Needs {
    host: Option<String>,
    reach: Option<String>,
    data_file: Option<String>,
}

impl Needs {
    fn from_env() -> Needs {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Needs {
            host: var("REQUIRE_HOST"),
            reach: var("NEEDS"),
            data_file: var("DATA_FILE"),
        }
    }

    /// Why `/health` must fail now, if it must.
    fn unmet(&self, host: Option<&str>) -> Option<(&'static str, String)> {
        if let Some(want) = &self.host {
            // Header lines are read lowercased; host names compare so anyway.
            if host != Some(want.to_ascii_lowercase().as_str()) {
                let got = host.unwrap_or("(none)");
                return Some(("403 Forbidden", format!("blocked host: {got}\n")));
            }
        }
        if let Some(addr) = &self.reach {
            let reached = addr.to_socket_addrs().ok().and_then(|mut addrs| {
                addrs.find(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
            });
            if reached.is_none() {
                return Some(("503 Service Unavailable", format!("cannot reach {addr}\n")));
            }
        }
        None
    }

    /// `/data` and `/data/append`.
    fn data(&self, tag: &str, append: bool) -> (&'static str, String) {
        let Some(file) = &self.data_file else {
            return ("404 Not Found", "no DATA_FILE\n".to_string());
        };
        if append {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file);
            if let Err(e) = opened.and_then(|mut f| writeln!(f, "{tag}")) {
                return ("500 Internal Server Error", format!("{file}: {e}\n"));
            }
        }
        match std::fs::read_to_string(file) {
            Ok(text) => ("200 OK", text),
            Err(e) => ("404 Not Found", format!("{file}: {e}\n")),
        }
    }
}

/// Requests `err5` answered so far, `/health` not counted.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Counts one request of `err5`; true for the 5th, 10th, ...
fn fifth_request() -> bool {
    (REQUESTS.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(5)
}

fn mode_of(tag: &str) -> Mode {
    match tag {
        "unhealthy" => Mode::Unhealthy,
        "crash" => Mode::Crash,
        "slow" => Mode::Slow,
        "flaky" => Mode::Flaky,
        "ready1s" => Mode::Ready1s,
        "err5" => Mode::Err5,
        "lag" => Mode::Lag,
        _ => Mode::Healthy,
    }
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // Only async-signal-safe calls here.
    unsafe { libc::_exit(0) };
}

fn main() {
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_sigterm as *const () as libc::sighandler_t);
    }
    let tag = std::env::var("TESTAPP_TAG").unwrap_or_else(|_| "dev".to_string());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let mode = mode_of(&tag);
    println!("testapp {tag} starting");

    match mode {
        Mode::Crash => {
            eprintln!("testapp {tag}: fatal: simulated crash on startup");
            std::process::exit(3);
        }
        Mode::Slow => std::thread::sleep(Duration::from_secs(5)),
        Mode::Ready1s => std::thread::sleep(Duration::from_secs(1)),
        _ => {}
    }

    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testapp {tag}: cannot listen on port {port}: {e}");
            std::process::exit(2);
        }
    };
    println!("testapp {tag} listening on {port}");
    let started = Instant::now();
    let needs = Needs::from_env();
    for stream in listener.incoming().flatten() {
        let (tag, needs) = (tag.clone(), needs.clone());
        std::thread::spawn(move || serve(stream, &tag, mode, started, &needs));
    }
}

fn serve(stream: TcpStream, tag: &str, mode: Mode, started: Instant, needs: &Needs) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut stream = stream;
    // Keep-alive loop: nginx and probes may reuse the connection.
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = false;
        let mut host = None;
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = header.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if h == "connection: close" {
                close = true;
            }
            if let Some(value) = h.strip_prefix("host:") {
                host = Some(value.trim().to_string());
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let path = path.split('?').next().unwrap_or("/");
        let unmet = match path {
            "/health" => needs.unmet(host.as_deref()),
            _ => None,
        };
        let (status, body) = match path {
            _ if unmet.is_some() => unmet.unwrap_or_default(),
            "/data" => needs.data(tag, false),
            "/data/append" => needs.data(tag, true),
            "/health" => {
                let sick = mode == Mode::Unhealthy
                    || (mode == Mode::Flaky && started.elapsed() >= Duration::from_secs(3));
                if sick {
                    ("500 Internal Server Error", "unhealthy\n".to_string())
                } else {
                    ("200 OK", "ok\n".to_string())
                }
            }
            _ if mode == Mode::Err5 && fifth_request() => {
                ("500 Internal Server Error", "error from err5\n".to_string())
            }
            _ => {
                if mode == Mode::Lag {
                    std::thread::sleep(Duration::from_millis(300));
                }
                match path {
                    "/version" | "/" => ("200 OK", format!("{tag}\n")),
                    _ => ("404 Not Found", "not found\n".to_string()),
                }
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Testapp-Tag: {tag}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
