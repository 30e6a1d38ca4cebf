//! A fault-injecting HTTP proxy for the test registry: forwards each request unless its
//! schedule says to answer an error status, a 429, reset the connection or stall.

use std::{
    io::{BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use serde_json::json;

use crate::harness::http::{Head, read_head};

/// One scheduled fault: the first `times` requests matching `method` and `path` get `kind`.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub(crate) method: &'static str,
    /// A substring of the request target, e.g. `/blobs/uploads/` or `/manifests/`.
    pub(crate) path: &'static str,
    pub(crate) kind: FaultKind,
    /// `None`: every matching request, forever.
    pub(crate) times: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum FaultKind {
    /// Answer this status with a distribution-style JSON error, after reading the body.
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooManyRequests { retry_after_secs: u64 },
    /// Read part of the body, then close with unread data, which resets the connection.
    ResetMidBody,
    /// Read the body, then say nothing for this long and close.
    Slow(Duration),
}

/// An HTTP proxy on loopback that forwards to the registry (keeping `Host`, so absolute
/// `Location`s point back at the proxy) unless the schedule says to fail the request.
/// One request per connection; threads end with their connection (30 s socket timeouts).
pub(crate) struct FaultProxy {
    pub(crate) addr: SocketAddr,
    state: Arc<ProxyState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct ProxyState {
    upstream: SocketAddr,
    schedule: Mutex<Vec<Fault>>,
    injected: AtomicUsize,
    active: AtomicUsize,
}

/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 32;

impl FaultProxy {
    pub(crate) fn start(upstream: SocketAddr, schedule: Vec<Fault>) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            upstream,
            schedule: Mutex::new(schedule),
            injected: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    while state.active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    state.active.fetch_add(1, Ordering::Relaxed);
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = proxy_one(&state, stream);
                        state.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            })
        };
        Ok(FaultProxy {
            addr,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    pub(crate) fn set_schedule(&self, schedule: Vec<Fault>) {
        *self
            .state
            .schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = schedule;
    }

    /// Faults injected so far.
    pub(crate) fn injected(&self) -> usize {
        self.state.injected.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl ProxyState {
    fn take_fault(&self, head: &Head) -> Option<FaultKind> {
        let mut schedule = self
            .schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fault = schedule.iter_mut().find(|f| {
            f.method == head.method && head.target.contains(f.path) && f.times != Some(0)
        })?;
        if let Some(n) = &mut fault.times {
            *n -= 1;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(fault.kind)
    }
}

fn proxy_one(state: &ProxyState, client: TcpStream) -> anyhow::Result<()> {
    let timeout = Some(Duration::from_secs(30));
    client.set_read_timeout(timeout)?;
    client.set_write_timeout(timeout)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let head = read_head(&mut reader)?;
    if head.header("transfer-encoding").is_some() {
        return respond(
            &mut client,
            501,
            "",
            "UNSUPPORTED",
            "the test proxy needs Content-Length",
        );
    }
    let length = head.content_length();
    match state.take_fault(&head) {
        Some(FaultKind::Status(status)) => {
            drain(&mut reader, length)?;
            let code = if status >= 500 {
                "UNAVAILABLE"
            } else {
                "UNKNOWN"
            };
            respond(&mut client, status, "", code, "injected fault")
        }
        Some(FaultKind::TooManyRequests { retry_after_secs }) => {
            drain(&mut reader, length)?;
            let extra = format!("Retry-After: {retry_after_secs}\r\n");
            respond(
                &mut client,
                429,
                &extra,
                "TOOMANYREQUESTS",
                "injected fault",
            )
        }
        Some(FaultKind::ResetMidBody) => {
            // Leave unread data in the socket: closing it then sends a reset.
            let part = (length / 2).clamp(1, 64 * 1024);
            let mut buf = vec![0; usize::try_from(part).unwrap_or(1)];
            let _ = reader.read_exact(&mut buf);
            drop(reader);
            drop(client);
            Ok(())
        }
        Some(FaultKind::Slow(pause)) => {
            drain(&mut reader, length)?;
            std::thread::sleep(pause);
            let _ = client.shutdown(Shutdown::Both);
            Ok(())
        }
        None => forward(state, &head, &mut reader, &mut client, length),
    }
}

fn drain(reader: &mut impl Read, length: u64) -> anyhow::Result<()> {
    std::io::copy(&mut reader.take(length), &mut std::io::sink())?;
    Ok(())
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    extra_headers: &str,
    code: &str,
    message: &str,
) -> anyhow::Result<()> {
    let body = json!({"errors": [{"code": code, "message": message}]}).to_string();
    write!(
        stream,
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn forward(
    state: &ProxyState,
    head: &Head,
    reader: &mut BufReader<TcpStream>,
    client: &mut TcpStream,
    length: u64,
) -> anyhow::Result<()> {
    let mut upstream = TcpStream::connect(state.upstream).context("connecting to the registry")?;
    upstream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = String::new();
    for line in head
        .raw_lines
        .iter()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
    {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes())?;
    std::io::copy(&mut reader.take(length), &mut upstream)?;
    std::io::copy(&mut upstream, client)?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
