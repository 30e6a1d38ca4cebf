//! Dependency-free HTTP/1.1 probe behind the `healthcheck` subcommand (the image has no curl).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Overall budget for one probe: connect, send, and read the status line.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Longest status line accepted before giving up on a misbehaving peer.
const MAX_STATUS_LINE: usize = 1024;

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// The deadline passed before a status line arrived.
    Timeout,
    /// Connecting, writing or reading failed.
    Io(io::Error),
    /// The peer did not answer with an HTTP/1.x status line.
    Malformed(String),
    /// The server answered with a status other than 200.
    Status(u16),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => write!(f, "no answer within {} s", TIMEOUT.as_secs()),
            Self::Io(err) => write!(f, "{err}"),
            Self::Malformed(line) => write!(f, "not an HTTP/1.x status line: {line:?}"),
            Self::Status(code) => write!(f, "status {code}"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<io::Error> for ProbeError {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::Timeout,
            _ => Self::Io(err),
        }
    }
}

/// Sends `GET /health` to `addr` and succeeds only on a `200` status within `timeout`.
///
/// # Errors
/// See [`ProbeError`].
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(ProbeError::Timeout)
    };

    let mut stream = TcpStream::connect_timeout(&addr, remaining()?)?;
    stream.set_write_timeout(Some(remaining()?))?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;

    let mut received = Vec::with_capacity(128);
    let mut chunk = [0_u8; 256];
    let line_end = loop {
        if let Some(end) = received.windows(2).position(|pair| pair == b"\r\n") {
            break end;
        }
        if received.len() > MAX_STATUS_LINE {
            return Err(ProbeError::Malformed(
                String::from_utf8_lossy(&received[..MAX_STATUS_LINE]).into_owned(),
            ));
        }
        stream.set_read_timeout(Some(remaining()?))?;
        match stream.read(&mut chunk)? {
            0 => break received.len(),
            read => received.extend_from_slice(&chunk[..read]),
        }
    };
    let line = String::from_utf8_lossy(&received[..line_end]);
    match parse_status_line(&line) {
        Some(200) => Ok(()),
        Some(code) => Err(ProbeError::Status(code)),
        None => Err(ProbeError::Malformed(line.into_owned())),
    }
}

/// Extracts the status code from `HTTP/1.x NNN Reason`.
fn parse_status_line(line: &str) -> Option<u16> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || (rest.len() > 3 && !rest[3..].starts_with(' '))
    {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line("HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status_line("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line("HTTP/2 200"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(""), None);
    }

    /// Serves one canned reply on a loopback port and returns its address.
    fn one_shot_server(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0_u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(reply);
        });
        addr
    }

    #[test]
    fn probe_outcomes() {
        let ok = one_shot_server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        probe(ok, TIMEOUT).unwrap();

        let unavailable = one_shot_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert!(matches!(
            probe(unavailable, TIMEOUT),
            Err(ProbeError::Status(503))
        ));

        let garbage = one_shot_server(b"hello\n");
        assert!(matches!(
            probe(garbage, TIMEOUT),
            Err(ProbeError::Malformed(_))
        ));
    }

    #[test]
    fn probe_times_out_on_silent_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let result = probe(addr, Duration::from_millis(300));
        assert!(matches!(result, Err(ProbeError::Timeout)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
