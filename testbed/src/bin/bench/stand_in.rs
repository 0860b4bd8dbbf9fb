//! The HTTP server of the nginx lab: stand-in apps run by the bench itself, so that the
//! moment the old one stops can be chosen to the millisecond.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::Result;

/// A stand-in for a container: answers `/version` with its name and `/slow` after 2 s;
/// `stop` closes the port and cuts every open connection, as a container's exit does.
pub struct FakeApp {
    pub name: &'static str,
    pub port: u16,
    running: Arc<AtomicBool>,
    /// Open connections by number; each serving thread removes its own when it ends.
    conns: Arc<Mutex<BTreeMap<u64, TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl FakeApp {
    pub fn new(name: &'static str, port: u16) -> FakeApp {
        FakeApp {
            name,
            port,
            running: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(BTreeMap::new())),
            accept: None,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("port {}: {e}", self.port))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.running.store(true, Ordering::SeqCst);
        let (running, conns, name) = (
            Arc::clone(&self.running),
            Arc::clone(&self.conns),
            self.name,
        );
        self.accept = Some(thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = n as u64;
                if let Ok(clone) = stream.try_clone() {
                    conns.lock().unwrap().insert(id, clone);
                }
                let conns = Arc::clone(&conns);
                thread::spawn(move || {
                    fake_serve(stream, name);
                    conns.lock().unwrap().remove(&id);
                });
            }
        }));
        Ok(())
    }

    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.running.store(false, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = accept.join();
        for c in std::mem::take(&mut *self.conns.lock().unwrap()).into_values() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FakeApp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fake_serve(stream: TcpStream, name: &str) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let mut request = String::new();
        match reader.read_line(&mut request) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = false;
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
            close |= h == "connection: close";
        }
        if request.split_whitespace().nth(1) == Some("/slow") {
            thread::sleep(Duration::from_secs(2));
        }
        let body = format!("{name}\n");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(answer.as_bytes()).is_err() || close {
            return;
        }
    }
}
