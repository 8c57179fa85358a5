//! A minimal HTTP/1.0 GET over TCP or the daemon's Unix socket (tests read `/metrics`,
//! `/healthz`, `/readyz` and Prometheus' query API with it).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The status and body of `GET path`.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn exchange(mut stream: impl Read + Write, host: &str, path: &str) -> std::io::Result<Answer> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Answer {
        status,
        body: body.to_owned(),
    })
}

pub fn get_tcp(address: &str, path: &str) -> std::io::Result<Answer> {
    let stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(stream, address, path)
}

pub fn get_unix(socket: &Path, path: &str) -> std::io::Result<Answer> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(stream, "localhost", path)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
