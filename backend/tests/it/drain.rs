//! Drain on SIGTERM: `/health` answers 503 while everything else is still served, then
//! idle keep-alive connections are closed and the binary exits 0 in bounded time. The
//! in-flight request that outlives the drain is in `binary.rs` (the SIGTERM test).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::pg::{TestDb, wait_until};
use crate::support::{App, Backend, get, http_get};

#[tokio::test]
async fn health_answers_503_draining_once_the_drain_started() {
    let db = TestDb::migrated().await;
    let state = timemanager_backend::AppState::new(db.pool.clone());
    let drain = state.drain.clone();
    let app = App::from(timemanager_backend::app(state));
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);

    drain.start();
    let reply = get(&app, "/health").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert!(reply.content_type.starts_with("application/json"));
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "status": "draining",
            "version": env!("CARGO_PKG_VERSION"),
            "revision": timemanager_backend::REVISION,
        })
    );
    // Answered, not refused: this one asks for a session.
    assert_eq!(get(&app, "/users").await.status, StatusCode::UNAUTHORIZED);
}

/// Reads one response from `stream` (which stays open): status and body.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap();
        assert_eq!(n, 1, "connection closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(str::to_owned)
        })
        .map_or(0, |value| value.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// `GET path` on `stream`, keeping the connection alive.
fn get_on(stream: &mut TcpStream, path: &str) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    read_response(stream)
}

/// `GET path` on a connection of its own.
fn get_on_new_connection(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
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

async fn start_healthy(db: &TestDb, env: &[(&str, &str)]) -> Backend {
    let backend = Backend::start(&db.url, env).await;
    let client = reqwest::Client::new();
    let health = format!("{}/health", backend.base_url());
    wait_until("backend healthy", Duration::from_secs(20), || async {
        http_get(&client, &health)
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    backend
}

/// Polls `/health` on new connections until it answers 503, returning the body.
async fn wait_draining(port: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get_on_new_connection(port, "/health");
        if status == 503 {
            return serde_json::from_str(&body).unwrap();
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "/health never answered 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the port refuses connections; those accepted meanwhile are dropped.
async fn wait_refused(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => return,
            // A connect that raced the listener's close sits in the backlog and is reset.
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
            Err(err) => panic!("unexpected connect error: {err}"),
            Ok(_) => assert!(Instant::now() < deadline, "still accepting connections"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn drains_then_closes_idle_keep_alive_connections_and_exits_0() {
    const DRAIN: Duration = Duration::from_secs(2);
    let db = TestDb::empty().await;
    let mut backend = start_healthy(&db, &[("SHUTDOWN_DRAIN_SECONDS", "2")]).await;
    let port = backend.port;

    // A keep-alive connection that served a request, and one that never sent anything.
    let mut used = TcpStream::connect(("127.0.0.1", port)).unwrap();
    used.set_read_timeout(Some(DRAIN + Duration::from_secs(5)))
        .unwrap();
    assert_eq!(get_on(&mut used, "/users").0, 401); // answered (sign-in required), not refused
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fresh
        .set_read_timeout(Some(DRAIN + Duration::from_secs(5)))
        .unwrap();

    // Taken before the signal is sent, so durations measured from it are upper bounds.
    let signalled = Instant::now();
    backend.terminate();
    let body = wait_draining(port).await;
    assert_eq!(body["status"], "draining", "{body}");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"), "{body}");

    // Everything else is still served, on new connections and on kept-alive ones.
    assert_eq!(get_on_new_connection(port, "/users").0, 401); // answered (sign-in required), not refused
    assert_eq!(get_on_new_connection(port, "/health").0, 503);
    assert_eq!(get_on(&mut used, "/users").0, 401); // answered (sign-in required), not refused
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
    wait_refused(port).await;

    let status = backend.wait_exit(Duration::from_secs(10)).await;
    let exited_after = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", backend.stdout());
    assert!(
        exited_after < DRAIN + Duration::from_secs(3),
        "exit took {exited_after:?}"
    );
    let stdout = backend.stdout();
    for message in [
        "signal received",
        "shutdown requested",
        "drain over",
        "shutdown complete",
    ] {
        assert!(stdout.contains(message), "no {message:?} in:\n{stdout}");
    }
}

#[tokio::test]
async fn a_second_signal_ends_the_default_drain_at_once() {
    let db = TestDb::empty().await;
    // No SHUTDOWN_DRAIN_SECONDS: the production default (12 s).
    let mut backend = start_healthy(&db, &[]).await;
    // Taken before the signal is sent, so durations measured from it are upper bounds.
    let signalled = Instant::now();
    backend.terminate();
    wait_draining(backend.port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get_on_new_connection(backend.port, "/health").0, 503);

    let sh = Shell::new().unwrap();
    let pid = backend.child.id().to_string();
    cmd!(sh, "kill -INT {pid}").quiet().run().unwrap();
    let status = backend.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", backend.stdout());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?}: the second signal did not end the drain",
        signalled.elapsed()
    );
    assert!(
        backend
            .stdout()
            .contains("second signal: ending the drain early"),
        "{}",
        backend.stdout()
    );
}
