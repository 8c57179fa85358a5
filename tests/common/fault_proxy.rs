//! A fault-injecting TCP proxy for HTTP/1.1, placed between dataref and Azurite.
//!
//! Faults are queued and consumed one per request (requests are delimited by parsing headers
//! and `Content-Length`; HTTP/1.1 clients do not pipeline, so a request starts only after the
//! previous response ended). A fault can:
//! - answer `503` itself (optionally with `Retry-After`) and close the connection;
//! - let the response through for N bytes, then reset the connection (RST);
//! - let the response through for N bytes, then close cleanly (a truncated body);
//! - stall the response for a while before its first byte;
//! - invert one byte of the response body: corruption in transit that TCP's checksum missed,
//!   which only an end-to-end check catches.
//!
//! It also records the request line of every request it forwarded, and can hold requests of
//! one kind forever after letting a number of them through (a service that stopped answering
//! at a known point).
//!
//! The proxy runs on its own thread and runtime, so it outlives any test's runtime.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub enum Fault {
    /// An error answer of the proxy's own: `code` is 500 or 503.
    Status {
        code: u16,
        retry_after_seconds: Option<u32>,
    },
    ResetAfter(usize),
    TruncateAfter(usize),
    Stall(Duration),
    /// Inverts byte N of the response body.
    FlipBodyByte(usize),
}

/// Which requests a queued fault may hit.
#[derive(Debug, Clone)]
pub struct Rule {
    /// e.g. "GET" or "PUT"; `None` = any.
    pub method: Option<&'static str>,
    /// Only requests with a `Range`/`x-ms-range` header.
    pub ranged_only: bool,
    pub fault: Fault,
}

/// Lets `pass` more requests that `matches` through, then holds every later one.
struct Hold {
    matches: fn(&str) -> bool,
    pass: usize,
}

#[derive(Default)]
struct State {
    rules: VecDeque<Rule>,
    fired: Vec<Fault>,
    /// Request lines (`PUT /account/container/blob?comp=block&... HTTP/1.1`) forwarded so far.
    forwarded: Vec<String>,
    hold: Option<Hold>,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        let port = super::net::listen(move |client| {
            let state = shared.clone();
            async move {
                if let Ok(server) = TcpStream::connect(upstream).await {
                    relay(client, server, state).await;
                }
            }
        });
        Self { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, super::azurite::ACCOUNT)
    }

    pub fn push(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push_back(rule);
    }

    /// Faults that have hit a request so far.
    pub fn fired(&self) -> Vec<Fault> {
        self.state.lock().unwrap().fired.clone()
    }

    pub fn pending(&self) -> usize {
        self.state.lock().unwrap().rules.len()
    }

    /// Request lines forwarded to the service so far.
    pub fn forwarded(&self) -> Vec<String> {
        self.state.lock().unwrap().forwarded.clone()
    }

    /// Forwards the next `pass` requests whose request line `matches`, and never any later one.
    pub fn hold_after(&self, pass: usize, matches: fn(&str) -> bool) {
        self.state.lock().unwrap().hold = Some(Hold { matches, pass });
    }
}

/// What the response side must do with the current response.
#[derive(Debug, Clone)]
enum Action {
    Pass,
    Reset(usize),
    Truncate(usize),
    Stall(Duration),
    /// Inverts body byte N once the head has passed.
    Flip(usize),
    /// Inverts the Nth byte still to come (the head has passed).
    FlipBody(usize),
}

async fn relay(client: TcpStream, server: TcpStream, state: Arc<Mutex<State>>) {
    let (mut client_read, client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let action = Arc::new(Mutex::new(Action::Pass));
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));

    // Set when the response side cut the connection: the request side must let go of the
    // socket too, or the RST/FIN never reaches the client.
    let cut = Arc::new(tokio::sync::Notify::new());
    let response = {
        let action = action.clone();
        let client_write = client_write.clone();
        let cut = cut.clone();
        tokio::spawn(async move { respond(server_read, client_write, action, cut).await })
    };

    // Request side: parse request boundaries and assign faults.
    let mut buf: Vec<u8> = Vec::new();
    let mut body_left = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    'outer: loop {
        let read = tokio::select! {
            read = client_read.read(&mut chunk) => read,
            _ = cut.notified() => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if body_left > 0 {
                let take = body_left.min(buf.len());
                if take == 0 {
                    break;
                }
                if server_write.write_all(&buf[..take]).await.is_err() {
                    break 'outer;
                }
                buf.drain(..take);
                body_left -= take;
                continue;
            }
            let Some(end) = find(&buf, b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let method = head.split(' ').next().unwrap_or("").to_owned();
            let lower = head.to_ascii_lowercase();
            let ranged = lower.contains("\r\nrange:") || lower.contains("\r\nx-ms-range:");
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let fault = {
                let mut state = state.lock().unwrap();
                let index = state.rules.iter().position(|r| {
                    r.method.is_none_or(|m| m == method) && (!r.ranged_only || ranged)
                });
                let fault = index.and_then(|i| state.rules.remove(i)).map(|r| r.fault);
                if let Some(f) = &fault {
                    state.fired.push(f.clone());
                }
                fault
            };
            match fault {
                Some(Fault::Status {
                    code,
                    retry_after_seconds,
                }) => {
                    let retry = retry_after_seconds
                        .map(|s| format!("Retry-After: {s}\r\n"))
                        .unwrap_or_default();
                    let reason = match code {
                        500 => "Internal Server Error",
                        503 => "Service Unavailable",
                        _ => "Error",
                    };
                    let reply = format!(
                        "HTTP/1.1 {code} {reason}\r\n{retry}Content-Length: 0\r\n\
                         Connection: close\r\n\r\n"
                    );
                    let _ = client_write.lock().await.write_all(reply.as_bytes()).await;
                    let _ = client_write.lock().await.shutdown().await;
                    break 'outer;
                }
                other => {
                    *action.lock().unwrap() = match other {
                        Some(Fault::ResetAfter(n)) => Action::Reset(n),
                        Some(Fault::TruncateAfter(n)) => Action::Truncate(n),
                        Some(Fault::Stall(d)) => Action::Stall(d),
                        Some(Fault::FlipBodyByte(n)) => Action::Flip(n),
                        _ => Action::Pass,
                    };
                }
            }
            let request_line = head.lines().next().unwrap_or("").to_owned();
            let held = {
                let mut state = state.lock().unwrap();
                let held = match &mut state.hold {
                    Some(hold) if (hold.matches)(&request_line) => {
                        let held = hold.pass == 0;
                        hold.pass = hold.pass.saturating_sub(1);
                        held
                    }
                    _ => false,
                };
                if !held {
                    state.forwarded.push(request_line);
                }
                held
            };
            if held {
                std::future::pending::<()>().await;
            }
            if server_write.write_all(&buf[..end + 4]).await.is_err() {
                break 'outer;
            }
            buf.drain(..end + 4);
            body_left = length;
        }
    }
    let _ = server_write.shutdown().await;
    response.abort();
    // Dropping the read half last closes the socket (with RST when linger is zero).
    drop(client_read);
}

async fn respond(
    mut server_read: tokio::net::tcp::OwnedReadHalf,
    client_write: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    action: Arc<Mutex<Action>>,
    cut: Arc<tokio::sync::Notify>,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match server_read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let current = std::mem::replace(&mut *action.lock().unwrap(), Action::Pass);
        // Where the body's byte to invert is in this read, if it is; else what to wait for.
        let flip = match current {
            Action::Flip(at) => match find(&chunk[..n], b"\r\n\r\n") {
                Some(end) => Some(end + 4 + at),
                None => {
                    *action.lock().unwrap() = Action::Flip(at);
                    None
                }
            },
            Action::FlipBody(at) => Some(at),
            _ => None,
        };
        if let Some(at) = flip {
            match at < n {
                true => chunk[at] ^= 0xff,
                false => *action.lock().unwrap() = Action::FlipBody(at - n),
            }
        }
        let mut data = &chunk[..n];
        match current {
            Action::Pass | Action::Flip(_) | Action::FlipBody(_) => {}
            Action::Stall(d) => tokio::time::sleep(d).await,
            Action::Reset(limit) | Action::Truncate(limit) if limit < n => {
                data = &data[..limit];
                let mut writer = client_write.lock().await;
                let _ = writer.write_all(data).await;
                if matches!(current, Action::Reset(_)) {
                    // Abort with RST rather than FIN.
                    let _ = writer.as_ref().set_zero_linger();
                } else {
                    let _ = writer.shutdown().await;
                }
                cut.notify_one();
                return;
            }
            Action::Reset(limit) => *action.lock().unwrap() = Action::Reset(limit - n),
            Action::Truncate(limit) => *action.lock().unwrap() = Action::Truncate(limit - n),
        }
        if client_write.lock().await.write_all(data).await.is_err() {
            break;
        }
    }
    let _ = client_write.lock().await.shutdown().await;
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A rule for the next ranged GET (a body read).
pub fn ranged_get(fault: Fault) -> Rule {
    Rule {
        method: Some("GET"),
        ranged_only: true,
        fault,
    }
}
