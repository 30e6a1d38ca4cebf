//! `timemanager-backend healthcheck`: a dependency-free HTTP probe for container health checks.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Total time allowed for connect, request and status line.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes `http://127.0.0.1:$APP_PORT/health`; `Ok` only for a 200 answer.
/// Deliberately ignores DATABASE_URL and every other server setting.
pub fn probe_from_env() -> Result<(), String> {
    let port = match std::env::var("APP_PORT") {
        Ok(raw) if !raw.trim().is_empty() => {
            crate::config::parse_port(&raw).map_err(|problem| format!("APP_PORT {problem}"))?
        }
        _ => 8080,
    };
    probe(port, PROBE_TIMEOUT)
}

/// Sends `GET /health` over plain HTTP/1.1 and checks the status line.
pub fn probe(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let status_line =
        request_status_line(addr, deadline).map_err(|err| format!("{addr}: {err}"))?;
    let mut parts = status_line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => Ok(()),
        _ => Err(format!("{addr}: unhealthy response {status_line:?}")),
    }
}

fn request_status_line(addr: SocketAddr, deadline: Instant) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, remaining(deadline)?)?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: timemanager-healthcheck\r\nConnection: close\r\n\r\n",
    )?;

    // Only the status line matters; stop reading once it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        if buf.len() > 8 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "status line too long",
            ));
        }
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Time left before `deadline`; an error once it has passed (a zero socket timeout
/// would mean "block forever").
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    } else {
        Ok(left)
    }
}
