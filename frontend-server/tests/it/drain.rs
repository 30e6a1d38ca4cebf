//! Drain on SIGTERM, against the binary: `/health` answers 503 while everything else is
//! still served, a download longer than the drain finishes, idle keep-alive connections
//! are closed, and the process exits 0 in bounded time.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use xshell::Shell;

use crate::binary::{Server, WAIT, wait_bounded};
use crate::fixture::{INDEX_HTML, Site};

/// Reads one response from `stream` (which stays open): status and body.
fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let (status, length) = read_head(stream);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, body)
}

/// Reads a response head: status and `Content-Length`.
fn read_head(stream: &mut TcpStream) -> (u16, usize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap();
        assert_eq!(n, 1, "connection closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|value| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    (status, length)
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// `GET path` on `stream`, keeping the connection alive.
fn get_on(stream: &mut TcpStream, path: &str) -> (u16, Vec<u8>) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    read_response(stream)
}

/// `GET path` on a connection of its own.
fn get_on_new_connection(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut stream = connect(port);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut stream)
}

/// Blocks until the server closes `stream` (EOF or reset), failing on any data.
fn wait_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("unexpected data on an idle connection: {:?}", &buf[..n]),
        Err(err) => panic!("idle connection not closed: {err}"),
    }
}

/// Polls `/health` on new connections until it answers 503, returning the body.
fn wait_draining(port: u16) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get_on_new_connection(port, "/health");
        if status == 503 {
            return body;
        }
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(Instant::now() < deadline, "/health never answered 503");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the port refuses connections; those accepted meanwhile are dropped.
fn wait_refused(port: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => return,
            // A connect that raced the listener's close sits in the backlog and is reset.
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
            Err(err) => panic!("unexpected connect error: {err}"),
            Ok(_) => assert!(Instant::now() < deadline, "still accepting connections"),
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drains_then_closes_idle_keep_alive_connections_and_exits_0() {
    const DRAIN: Duration = Duration::from_secs(2);
    let sh = Shell::new().unwrap();
    let site = Site::new();
    let mut server = Server::start_with(&sh, &site, &[("SHUTDOWN_DRAIN_SECONDS", "2")]);
    let port = server.port;

    // A keep-alive connection that served a request, and one that never sent anything.
    let mut used = connect(port);
    assert_eq!(get_on(&mut used, "/").0, 200);
    let mut fresh = connect(port);

    // Taken before the signal is sent, so durations measured from it are upper bounds.
    let signalled = Instant::now();
    server.signal(&sh, "TERM");
    assert_eq!(wait_draining(port), br#"{"status":"draining"}"#);

    // Everything else is still served, on new connections and on kept-alive ones.
    let (status, body) = get_on_new_connection(port, "/some/route");
    assert_eq!((status, body.as_slice()), (200, INDEX_HTML.as_bytes()));
    assert_eq!(get_on_new_connection(port, "/health").0, 503);
    assert_eq!(get_on(&mut used, "/").0, 200);
    assert!(
        signalled.elapsed() < DRAIN,
        "the checks above took longer than the drain ({:?}); they prove nothing",
        signalled.elapsed()
    );

    // After the drain both idle connections are closed by the server, promptly (not
    // after the 8 s grace for in-flight requests).
    wait_closed(&mut used);
    let closed_after = signalled.elapsed();
    wait_closed(&mut fresh);
    assert!(
        (DRAIN..DRAIN + Duration::from_millis(1500)).contains(&closed_after),
        "idle connection closed {closed_after:?} after SIGTERM, drain is {DRAIN:?}"
    );
    // The listener closes concurrently with the connections, so poll a little.
    wait_refused(port);

    let status = wait_bounded(&mut server.child, WAIT);
    let exited_after = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        exited_after < DRAIN + Duration::from_secs(3),
        "exit took {exited_after:?}"
    );
    server.log_line(|line| line["message"] == "drain over: refusing new connections, finishing in-flight requests, closing idle connections");
}

#[test]
fn a_download_longer_than_the_drain_still_finishes() {
    // Far more than loopback socket buffers hold, so the response is still being sent
    // while the client does not read.
    const SIZE: usize = 32 << 20;
    let sh = Shell::new().unwrap();
    let site = Site::new();
    let content: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    std::fs::write(site.path().join("assets/big-abc123.bin"), &content).unwrap();
    let mut server = Server::start_with(&sh, &site, &[("SHUTDOWN_DRAIN_SECONDS", "0.5")]);

    let mut download = connect(server.port);
    write!(
        download,
        "GET /assets/big-abc123.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let (status, length) = read_head(&mut download);
    assert_eq!((status, length), (200, SIZE));
    let mut received = vec![0u8; 64 << 10];
    download.read_exact(&mut received).unwrap();

    let signalled = Instant::now();
    server.signal(&sh, "TERM");
    wait_refused(server.port);
    assert!(
        signalled.elapsed() >= Duration::from_millis(500),
        "refused connections {:?} after SIGTERM, before the drain was over",
        signalled.elapsed()
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a download in flight"
    );

    // The client reads the rest only now; the server then closes the connection.
    let mut rest = Vec::new();
    download.read_to_end(&mut rest).unwrap();
    received.extend_from_slice(&rest);
    assert_eq!(received.len(), SIZE);
    assert!(received == content, "download corrupted");

    let status = wait_bounded(&mut server.child, WAIT);
    assert!(status.success(), "{status}");
}

#[test]
fn a_second_signal_ends_the_default_drain_at_once() {
    let sh = Shell::new().unwrap();
    let site = Site::new();
    // No SHUTDOWN_DRAIN_SECONDS: the production default (12 s).
    let mut server = Server::start_with(&sh, &site, &[]);
    let signalled = Instant::now();
    server.signal(&sh, "TERM");
    wait_draining(server.port);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(get_on_new_connection(server.port, "/health").0, 503);

    server.signal(&sh, "INT");
    let status = wait_bounded(&mut server.child, WAIT);
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?}: the second signal did not end the drain",
        signalled.elapsed()
    );
    server.log_line(|line| line["message"] == "second signal: ending the drain early");
}
