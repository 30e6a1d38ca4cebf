//! Tests of the compiled binary: start-up errors, `healthcheck`, request logs and signals.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use xshell::{Cmd, Shell, cmd};

use crate::fixture::Site;

const BIN: &str = env!("CARGO_BIN_EXE_timemanager-frontend-server");
/// Upper bound for any single wait (start-up, exit, a log line).
pub const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);
/// A short drain, so tests that stop the server do not wait the production default.
pub const SHORT_DRAIN: (&str, &str) = ("SHUTDOWN_DRAIN_SECONDS", "0.3");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with a clean environment (no inherited `RUST_LOG` etc.) plus `vars`.
fn binary<'a>(sh: &'a Shell, args: &[&str], vars: &[(&str, &str)]) -> Cmd<'a> {
    let mut command = cmd!(sh, "{BIN} {args...}").env_clear().quiet();
    for (name, value) in vars {
        command = command.env(name, value);
    }
    command
}

/// Waits for `child` to exit, killing it and failing after `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {timeout:?}");
        }
        thread::sleep(POLL);
    }
}

/// Runs `command` to completion (bounded) and captures its output.
fn run_bounded(command: Cmd<'_>) -> Output {
    let mut command = Command::from(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(&mut child, WAIT);
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `timemanager-frontend-server healthcheck` against `port`; returns its exit code.
fn healthcheck(sh: &Shell, port: u16) -> (i32, String) {
    let output = run_bounded(binary(
        sh,
        &["healthcheck"],
        &[("APP_PORT", &port.to_string())],
    ));
    (output.status.code().unwrap(), stderr(&output))
}

/// A running server on a free loopback port, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    stdout: Receiver<String>,
}

impl Server {
    /// Starts with [`SHORT_DRAIN`].
    pub fn start(sh: &Shell, site: &Site) -> Self {
        Self::start_with(sh, site, &[SHORT_DRAIN])
    }

    /// Starts with `extra` variables on top of the site, address and log level.
    pub fn start_with(sh: &Shell, site: &Site, extra: &[(&str, &str)]) -> Self {
        // A free port can be taken by someone else before the server binds it: retry.
        for _ in 0..3 {
            let port = free_port();
            let port_text = port.to_string();
            let mut vars = vec![
                ("STATIC_DIR", site.path().to_str().unwrap()),
                ("APP_HOST", "127.0.0.1"),
                ("APP_PORT", &port_text),
                ("RUST_LOG", "info"),
            ];
            vars.extend_from_slice(extra);
            let mut child = Command::from(binary(sh, &[], &vars))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (tx, stdout) = mpsc::channel();
            let pipe = child.stdout.take().unwrap();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    if tx.send(line.unwrap()).is_err() {
                        break;
                    }
                }
            });
            let mut server = Self {
                child,
                port,
                stdout,
            };
            if server.wait_until_listening() {
                return server;
            }
        }
        panic!("server failed to start three times");
    }

    /// `true` once the port accepts connections, `false` if the process exited first.
    fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                eprintln!("server exited during start-up ({status}): {err}");
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            thread::sleep(POLL);
        }
        panic!("server not listening within {WAIT:?}");
    }

    pub fn signal(&self, sh: &Shell, signal: &str) {
        let pid = self.child.id().to_string();
        cmd!(sh, "kill -{signal} {pid}").quiet().run().unwrap();
    }

    /// Next JSON log line satisfying `accept`, waiting at most `WAIT`.
    pub fn log_line(&self, accept: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|err| panic!("no matching log line within {WAIT:?}: {err}"));
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line}"));
            if accept(&value) {
                return value;
            }
        }
    }

    fn get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_logs_json_and_exits_0_on_sigterm() {
    let sh = Shell::new().unwrap();
    let site = Site::new();
    let mut server = Server::start(&sh, &site);

    let listening = server.log_line(|line| line["message"] == "listening");
    assert_eq!(listening["level"], "INFO");

    assert_eq!(healthcheck(&sh, server.port).0, 0);

    let response = server.get("/some/route?token=secret");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("<title>Time Manager</title>"),
        "{response}"
    );

    let log = server.log_line(|line| line["message"] == "request" && line["path"] == "/some/route");
    assert_eq!(log["method"], "GET");
    assert_eq!(log["status"], 200);
    assert!(log["latency_ms"].as_f64().unwrap() >= 0.0, "{log}");
    assert!(log["timestamp"].is_string(), "{log}");
    assert!(
        !log.to_string().contains("secret"),
        "query string must not be logged: {log}"
    );

    server.signal(&sh, "TERM");
    let status = wait_bounded(&mut server.child, WAIT);
    assert!(status.success(), "{status}");
    server.log_line(|line| line["signal"] == "SIGTERM");
}

#[test]
fn exits_0_on_sigint() {
    let sh = Shell::new().unwrap();
    let site = Site::new();
    let mut server = Server::start(&sh, &site);
    server.signal(&sh, "INT");
    let status = wait_bounded(&mut server.child, WAIT);
    assert!(status.success(), "{status}");
}

#[test]
fn healthcheck_fails_when_index_html_disappears() {
    let sh = Shell::new().unwrap();
    let site = Site::new();
    let server = Server::start(&sh, &site);
    std::fs::remove_file(site.index_html()).unwrap();
    let (code, message) = healthcheck(&sh, server.port);
    assert_eq!(code, 1);
    assert!(message.contains("503"), "{message}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let sh = Shell::new().unwrap();
    let (code, message) = healthcheck(&sh, free_port());
    assert_eq!(code, 1);
    assert!(message.starts_with("unhealthy:"), "{message}");
}

#[test]
fn healthcheck_gives_up_after_3_seconds_on_a_silent_peer() {
    let sh = Shell::new().unwrap();
    // Accepts connections (kernel backlog) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = Instant::now();
    let (code, message) = healthcheck(&sh, port);
    let elapsed = started.elapsed();
    assert_eq!(code, 1);
    assert!(message.contains("no answer within 3 s"), "{message}");
    assert!(
        (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&elapsed),
        "{elapsed:?}"
    );
    drop(listener);
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let sh = Shell::new().unwrap();
    let site = Site::new();
    let static_dir = site.path().to_str().unwrap();
    for (var, value) in [
        ("APP_PORT", "abc"),
        ("APP_PORT", "70000"),
        ("APP_PORT", "0"),
        ("APP_HOST", "not-an-ip"),
        ("RUST_LOG", "info,frontend=loud"),
        ("SHUTDOWN_DRAIN_SECONDS", "12s"),
    ] {
        let output = run_bounded(binary(
            &sh,
            &[],
            &[("STATIC_DIR", static_dir), (var, value)],
        ));
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {message}");
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains(&format!("invalid {var}=")), "{message}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn missing_index_html_exits_1_naming_the_path() {
    let sh = Shell::new().unwrap();
    let site = Site::new();
    let empty = site.scratch().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = site.scratch().join("does-not-exist");
    for dir in [&empty, &missing] {
        let vars = [
            ("STATIC_DIR", dir.to_str().unwrap()),
            ("APP_PORT", &free_port().to_string()),
        ];
        let output = run_bounded(binary(&sh, &[], &vars));
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{message}");
        let index = Path::new(dir).join("index.html");
        assert!(message.contains(index.to_str().unwrap()), "{message}");
    }
}

#[test]
fn unknown_argument_exits_2_with_usage() {
    let sh = Shell::new().unwrap();
    let output = run_bounded(binary(&sh, &["serve-everything"], &[]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).starts_with("usage:"), "{}", stderr(&output));
}
