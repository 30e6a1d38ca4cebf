//! The compiled binary: configuration errors, healthcheck subcommand, database
//! outages, graceful shutdown and trace export.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use xshell::{Shell, cmd};

use crate::pg::{Cluster, TestDb, free_port, wait_until};
use crate::support::{BIN, Backend, http_get, http_session};

/// A short drain, so tests that stop the server do not wait the production default.
pub const SHORT_DRAIN: (&str, &str) = ("SHUTDOWN_DRAIN_SECONDS", "0.3");

/// Runs the binary with exactly `env` and returns (exit code, stdout, stderr).
async fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut backend = Backend::spawn(env, &[]);
    let status = backend.wait_exit(Duration::from_secs(10)).await;
    (status.code(), backend.stdout(), backend.stderr())
}

#[tokio::test]
async fn config_errors_exit_2_with_one_line_naming_the_variable() {
    let (code, stdout, stderr) = run_to_exit(&[
        ("APP_PORT", "abc"),
        ("DATABASE_URL", "postgres://u:pw@127.0.0.1/db"),
    ])
    .await;
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "error: APP_PORT must be a port number (1-65535), got \"abc\"\n"
    );
    assert_eq!(stdout, "");

    let (code, _, stderr) = run_to_exit(&[("APP_PORT", "8080")]).await;
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: DATABASE_URL is required"),
        "{stderr}"
    );

    let (code, _, stderr) = run_to_exit(&[("DATABASE_URL", "mysql://app:TopSecret42@db/tm")]).await;
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL") && !stderr.contains("TopSecret42"),
        "{stderr}"
    );

    let (code, _, stderr) = run_to_exit(&[
        ("DATABASE_URL", "postgres://u@h/db"),
        ("CORS_ALLOWED_ORIGINS", "example.com"),
    ])
    .await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("error: CORS_ALLOWED_ORIGINS entry \"example.com\""),
        "{stderr}"
    );

    let (code, _, stderr) = run_to_exit(&[
        ("DATABASE_URL", "postgres://u@h/db"),
        ("SHUTDOWN_DRAIN_SECONDS", "12s"),
    ])
    .await;
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "error: SHUTDOWN_DRAIN_SECONDS must be a number of seconds from 0 to 300 such as 12 or 0.5, got \"12s\"\n"
    );

    let sh = Shell::new().unwrap();
    let output = cmd!(sh, "{BIN} --bogus")
        .quiet()
        .ignore_status()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn healthcheck_subcommand_reflects_server_health() {
    let sh = Shell::new().unwrap();
    let healthcheck = |port: u16| {
        let port = port.to_string();
        // No DATABASE_URL: the probe must not need it.
        cmd!(sh, "{BIN} healthcheck")
            .env_remove("DATABASE_URL")
            .env("APP_PORT", port)
            .quiet()
            .ignore_status()
            .output()
            .unwrap()
    };

    let nobody = healthcheck(free_port());
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("unhealthy"));

    let db = TestDb::empty().await;
    let backend = Backend::start(&db.url, &[]).await;
    let client = reqwest::Client::new();
    let health = format!("{}/health", backend.base_url());
    wait_until("backend healthy", Duration::from_secs(20), || async {
        http_get(&client, &health)
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    let up = healthcheck(backend.port);
    assert_eq!(
        up.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
}

#[tokio::test]
async fn backend_reports_503_while_postgres_is_down_and_recovers_without_restart() {
    // A private cluster: this test stops and restarts it.
    let cluster = Arc::new(Cluster::start());
    let db = TestDb::on_cluster(cluster.clone()).await;
    let mut backend = Backend::start(&db.url, &[SHORT_DRAIN]).await;
    let client = reqwest::Client::new();
    let health = format!("{}/health", backend.base_url());

    let status_is = |wanted: u16| {
        let client = &client;
        let health = &health;
        move || async move {
            http_get(client, health)
                .await
                .is_some_and(|(status, body)| {
                    status == wanted && body["version"] == env!("CARGO_PKG_VERSION")
                })
        }
    };
    wait_until("health 200", Duration::from_secs(20), status_is(200)).await;

    cluster.stop();
    wait_until(
        "health 503 with postgres stopped",
        Duration::from_secs(20),
        status_is(503),
    )
    .await;
    let (_, body) = http_get(&client, &health).await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["database"], "unavailable");

    cluster.restart();
    wait_until(
        "health 200 after postgres restart",
        Duration::from_secs(20),
        status_is(200),
    )
    .await;

    // Real requests work again too, on the same process.
    let [(_, cookie), _] = http_session(&db, "root").await;
    let users = client
        .get(format!("{}/users", backend.base_url()))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    assert!(
        matches!(backend.child.try_wait(), Ok(None)),
        "backend must not have restarted"
    );

    backend.terminate();
    assert!(backend.wait_exit(Duration::from_secs(15)).await.success());
}

/// The request is held open (its body half sent) through the whole drain, so this is
/// also "a request longer than the drain period still finishes".
#[tokio::test]
async fn sigterm_finishes_in_flight_request_refuses_new_connections_and_exits_0() {
    let db = TestDb::empty().await;
    // Trust authentication ignores the password, so a throwaway cluster accepts this
    // URL; the point is to see that the password never reaches the logs.
    let url = db.url.replacen(
        "postgres://postgres@",
        "postgres://postgres:Pa55-never-logged@",
        1,
    );
    let mut backend = Backend::start(&url, &[SHORT_DRAIN]).await;
    let client = reqwest::Client::new();
    let health = format!("{}/health", backend.base_url());
    wait_until("backend healthy", Duration::from_secs(20), || async {
        http_get(&client, &health)
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;

    let [(_, cookie), (_, csrf)] = http_session(&db, "root").await;
    let body = br#"{"username":"judy","email":"judy@example.com"}"#;
    let (first, rest) = body.split_at(10);
    let mut stream = TcpStream::connect(("127.0.0.1", backend.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // `Expect: 100-continue` makes the server say when the handler starts reading the
    // body, so SIGTERM provably arrives while the request is in flight.
    write!(
        stream,
        "POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(first).unwrap();
    stream.flush().unwrap();

    // Taken before the signal is sent, so durations measured from it are upper bounds.
    let signalled = Instant::now();
    backend.terminate();
    let deadline = signalled + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", backend.port)) {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // A connect that raced the listener's close sits in the backlog and is reset:
            // not accepted either, so look again until the port refuses outright.
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("unexpected connect error: {err}"),
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting connections after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Connections are accepted for the whole drain period, refused only after it.
    assert!(
        signalled.elapsed() >= Duration::from_millis(300),
        "refused connections {:?} after SIGTERM, before the drain was over",
        signalled.elapsed()
    );
    assert!(
        matches!(backend.child.try_wait(), Ok(None)),
        "exited before finishing the request"
    );

    stream.write_all(rest).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 201 Created\r\n"),
        "{response}"
    );
    let json: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["user"]["username"], "judy");

    let status = backend.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", backend.stdout());

    // One JSON access-log line per request, with the agreed fields.
    let stdout = backend.stdout();
    let access = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "request" && line["route"] == "/users")
        .unwrap_or_else(|| panic!("no access log line for POST /users in:\n{stdout}"));
    assert_eq!(access["method"], "POST");
    assert_eq!(access["status"], 201);
    assert!(access["latency_ms"].as_f64().is_some(), "{access}");
    assert!(stdout.contains("shutdown complete"), "{stdout}");
    assert!(
        !stdout.contains("Pa55-never-logged"),
        "database password leaked into logs"
    );
    assert!(
        stdout.contains(":***@"),
        "expected the redacted URL in the start-up log"
    );
}

/// Minimal OTLP/HTTP receiver: returns the request head and body of the first POST.
async fn receive_one_export(listener: tokio::net::TcpListener) -> (String, Vec<u8>) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "collector connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        assert!(buf.len() < 64 * 1024, "oversized request head");
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("export without content-length");
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "collector connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    socket
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    (head, buf[head_end..head_end + length].to_vec())
}

#[tokio::test]
async fn traces_are_exported_over_otlp_http_and_join_incoming_traces() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = tokio::spawn(receive_one_export(listener));

    let db = TestDb::empty().await;
    let mut backend = Backend::start(
        &db.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "tm-otel-test"),
            SHORT_DRAIN,
        ],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let [(_, cookie), _] = http_session(&db, "root").await;
    let response = reqwest::Client::new()
        .get(format!("{}/users/abc", backend.base_url()))
        .header("cookie", cookie)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Shutdown flushes the batch exporter.
    backend.terminate();
    assert!(
        backend.wait_exit(Duration::from_secs(15)).await.success(),
        "{}",
        backend.stdout()
    );

    let (head, body) = tokio::time::timeout(Duration::from_secs(10), collector)
        .await
        .expect("no trace export received")
        .unwrap();
    assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"tm-otel-test"),
        "service name missing from the export"
    );
    assert!(
        contains(b"GET /users/{id}"),
        "span name missing from the export"
    );
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        contains(&trace_bytes),
        "span did not join the incoming trace"
    );
}

#[tokio::test]
async fn waits_for_an_unreachable_database_and_still_honours_sigterm() {
    let url = format!(
        "postgres://nobody:Hidden-pw-1@127.0.0.1:{}/none",
        free_port()
    );
    let mut backend = Backend::spawn(
        &[
            ("DATABASE_URL", &url),
            ("APP_PORT", &free_port().to_string()),
        ],
        &[],
    );
    let stdout_has = |backend: &Backend, needle: &str| backend.stdout().contains(needle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stdout_has(&backend, "database not reachable yet") {
        assert!(
            Instant::now() < deadline,
            "no retry logged:\n{}",
            backend.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    backend.terminate();
    let status = backend.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", backend.stdout());
    let stdout = backend.stdout();
    assert!(
        stdout.contains("Connection refused"),
        "the real cause is logged:\n{stdout}"
    );
    assert!(
        !stdout.contains("Hidden-pw-1"),
        "password leaked:\n{stdout}"
    );
}
