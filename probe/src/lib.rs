//! Dependency-free HTTP/1.1 health probe behind the `healthcheck` subcommand of the Time Manager binaries (their images have no shell or curl).

use std::error::Error;
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Overall budget for one probe: connect, send the request and read the status line.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Longest status line accepted before giving up on a misbehaving peer.
const MAX_STATUS_LINE: usize = 1024;

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// The budget given to [`probe`] ran out before a status line arrived.
    Timeout(Duration),
    /// Connecting, writing or reading failed.
    Io(io::Error),
    /// The peer closed the connection without answering.
    Closed,
    /// The peer did not answer with an HTTP/1.x status line.
    Malformed(String),
    /// The server answered with a status other than 200.
    Status(u16),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(budget) if budget.subsec_nanos() == 0 => {
                write!(f, "no answer within {} s", budget.as_secs())
            }
            Self::Timeout(budget) => write!(f, "no answer within {} ms", budget.as_millis()),
            Self::Io(err) => write!(f, "{err}"),
            Self::Closed => f.write_str("connection closed before a response"),
            Self::Malformed(line) => write!(f, "not an HTTP/1.x status line: {line:?}"),
            Self::Status(code) => write!(f, "status {code}"),
        }
    }
}

impl Error for ProbeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Io(err) => Some(err),
            _ => None,
        }
    }
}

/// Sends `GET /health` to `addr` and succeeds only on a `200` status line within `timeout`,
/// one deadline covering connect, write and read.
///
/// # Errors
/// See [`ProbeError`].
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    let line = read_status_line(addr, timeout)?;
    match parse_status_line(&line) {
        Some(200) => Ok(()),
        Some(code) => Err(ProbeError::Status(code)),
        None => Err(ProbeError::Malformed(line)),
    }
}

/// The `healthcheck` subcommand, following Docker's HEALTHCHECK contract: probes
/// `http://{addr}/health` within [`TIMEOUT`] and exits 0 if it answered 200, 1 otherwise,
/// including when `target` is the reason the binary's configuration gives no address
/// (2 is reserved by Docker, so never used).
pub fn run_healthcheck<E: fmt::Display>(target: Result<SocketAddr, E>) -> ExitCode {
    let addr = match target {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("unhealthy: {err}");
            return ExitCode::FAILURE;
        }
    };
    match probe(addr, TIMEOUT) {
        Ok(()) => {
            println!("healthy: http://{addr}/health answered 200");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("unhealthy: http://{addr}/health: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Connects, sends the request and returns the first response line (without its CRLF).
fn read_status_line(addr: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    let deadline = Instant::now() + timeout;
    // A zero socket timeout is an error (or "block forever"): stop once the deadline passes.
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(ProbeError::Timeout(timeout))
    };
    let io_error = |err: io::Error| match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeError::Timeout(timeout),
        _ => ProbeError::Io(err),
    };

    let mut stream = TcpStream::connect_timeout(&addr, remaining()?).map_err(io_error)?;
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(io_error)?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: timemanager-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io_error)?;

    // Only the status line matters; stop reading once it is complete.
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
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(io_error)?;
        match stream.read(&mut chunk).map_err(io_error)? {
            0 if received.is_empty() => return Err(ProbeError::Closed),
            0 => break received.len(),
            read => received.extend_from_slice(&chunk[..read]),
        }
    };
    Ok(String::from_utf8_lossy(&received[..line_end]).into_owned())
}

/// Extracts the status code from `HTTP/1.x NNN Reason` (the reason phrase is optional).
fn parse_status_line(line: &str) -> Option<u16> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.split_once(' ').map_or(rest, |(code, _reason)| code);
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line("HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status_line("HTTP/1.1 200 "), Some(200));
        assert_eq!(parse_status_line("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line("HTTP/1.1 +20 OK"), None);
        assert_eq!(parse_status_line("HTTP/1.1 2é0 OK"), None);
        assert_eq!(parse_status_line("HTTP/2 200"), None);
        assert_eq!(parse_status_line("http/1.1 200 OK"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn errors_read_as_one_line() {
        assert_eq!(
            ProbeError::Timeout(TIMEOUT).to_string(),
            "no answer within 3 s"
        );
        assert_eq!(
            ProbeError::Timeout(Duration::from_millis(300)).to_string(),
            "no answer within 300 ms"
        );
        assert_eq!(ProbeError::Status(503).to_string(), "status 503");
        assert_eq!(
            ProbeError::Malformed("hello".to_owned()).to_string(),
            "not an HTTP/1.x status line: \"hello\""
        );
        assert_eq!(
            ProbeError::Closed.to_string(),
            "connection closed before a response"
        );
        let io = ProbeError::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(io.to_string(), "refused");
        assert!(io.source().is_some());
    }

    /// Serves one canned reply on a loopback port; the receiver yields the request it read.
    fn one_shot_server(reply: &'static [u8]) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, requests) = mpsc::channel();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0_u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => request.extend_from_slice(&buf[..read]),
                }
            }
            let _ = sender.send(String::from_utf8_lossy(&request).into_owned());
            let _ = conn.write_all(reply);
        });
        (addr, requests)
    }

    #[test]
    fn healthy_on_200_with_a_well_formed_request() {
        let (addr, requests) = one_shot_server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        probe(addr, TIMEOUT).unwrap();
        let request = requests.recv().unwrap();
        assert!(
            request.starts_with("GET /health HTTP/1.1\r\n"),
            "{request:?}"
        );
        assert!(
            request.contains(&format!("\r\nHost: {addr}\r\n")),
            "{request:?}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request:?}");
    }

    #[test]
    fn unhealthy_answers() {
        let (unavailable, _) = one_shot_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let result = probe(unavailable, TIMEOUT);
        assert!(matches!(result, Err(ProbeError::Status(503))), "{result:?}");

        let (garbage, _) = one_shot_server(b"hello\n");
        let result = probe(garbage, TIMEOUT);
        assert!(
            matches!(result, Err(ProbeError::Malformed(_))),
            "{result:?}"
        );

        let (silent_close, _) = one_shot_server(b"");
        let result = probe(silent_close, TIMEOUT);
        assert!(matches!(result, Err(ProbeError::Closed)), "{result:?}");

        let (endless, _) = one_shot_server(&[b'x'; 4 * MAX_STATUS_LINE]);
        let result = probe(endless, TIMEOUT);
        assert!(
            matches!(&result, Err(ProbeError::Malformed(line)) if line.len() == MAX_STATUS_LINE),
            "{result:?}"
        );
    }

    #[test]
    fn status_line_cut_short_by_close_still_counts() {
        let (addr, _) = one_shot_server(b"HTTP/1.0 200 OK");
        probe(addr, TIMEOUT).unwrap();
    }

    #[test]
    fn nothing_listening_is_an_io_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let result = probe(addr, TIMEOUT);
        assert!(matches!(result, Err(ProbeError::Io(_))), "{result:?}");
    }

    #[test]
    fn probe_times_out_on_silent_peer() {
        // Accepts connections (kernel backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let budget = Duration::from_millis(300);
        let started = Instant::now();
        let result = probe(listener.local_addr().unwrap(), budget);
        let waited = started.elapsed();
        assert!(
            matches!(result, Err(ProbeError::Timeout(reported)) if reported == budget),
            "{result:?}"
        );
        // The whole budget is spent, but no more than it (give or take a slow machine).
        assert!(waited >= budget - Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn subcommand_exit_codes() {
        let (healthy, _) = one_shot_server(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(run_healthcheck(Ok::<_, String>(healthy)), ExitCode::SUCCESS);

        let (unavailable, _) = one_shot_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(
            run_healthcheck(Ok::<_, String>(unavailable)),
            ExitCode::FAILURE
        );

        assert_eq!(
            run_healthcheck(Err::<SocketAddr, _>("APP_PORT must be a port number")),
            ExitCode::FAILURE
        );
    }
}
