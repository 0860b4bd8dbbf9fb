//! A webhook receiver on loopback, so that a test sees what fieldtrack notified: the body of
//! every POST, as JSON, and the head it came with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// The part of the webhook URL that plays the token: it must never be printed.
pub const SECRET_PATH: &str = "/hook/T000/secret";

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
struct Request {
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request (head, then a `Content-Length` body).
fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Request { head, body })
}

/// A webhook receiver on loopback that answers 200 and keeps every request.
pub struct Webhook {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Ok(request) = read_request(&stream) else {
                        return;
                    };
                    kept.lock().unwrap().push(request);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Webhook { addr, requests }
    }

    /// The URL to configure as `notify.webhook` (plain HTTP: `notify.allow_http` too).
    pub fn url(&self) -> String {
        format!("http://{}{SECRET_PATH}", self.addr)
    }

    /// Every body received so far, as JSON.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                    panic!(
                        "the webhook body is JSON ({e}): {}",
                        String::from_utf8_lossy(&r.body)
                    )
                })
            })
            .collect()
    }

    /// The first notification with `event`, waiting for it.
    #[track_caller]
    pub fn wait_for_event(&self, event: &str) -> serde_json::Value {
        let caller = std::panic::Location::caller();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events();
            if let Some(e) = events.iter().find(|e| e["event"] == event) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{caller}: no {event:?} notification within {PATIENCE:?}; got {events:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every request was a JSON POST to the configured path.
    pub fn assert_requests_were_json_posts(&self) {
        for r in self.requests.lock().unwrap().iter() {
            assert!(
                r.head
                    .starts_with(&format!("POST {SECRET_PATH} HTTP/1.1\r\n")),
                "{}",
                r.head
            );
            assert!(
                r.head
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{}",
                r.head
            );
        }
    }
}
