//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a loopback
//! port, with no auth, htpasswd Basic auth, or token auth against a token server run here;
//! and a fault-injecting proxy to put in front of it.
//!
//! The token server signs RS256 JWTs with `openssl dgst` and sends the self-signed
//! certificate in `x5c`, which distribution checks against its `rootcertbundle`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::json;
use xshell::{Shell, cmd};

use crate::{
    digest::base64,
    harness::{daemon::Daemon, http, postgres::free_port},
    provision::{self, Need},
    registry::Credentials,
};

pub(crate) const DOCKER_REGISTRY: Need = Need {
    program: "docker-registry",
    package: "docker-registry",
};
pub(crate) const HTPASSWD: Need = Need {
    program: "htpasswd",
    package: "apache2-utils",
};
pub(crate) const OPENSSL: Need = Need {
    program: "openssl",
    package: "openssl",
};

/// The token server's `service` (JWT `aud`) and `issuer` (JWT `iss`).
const SERVICE: &str = "test-registry";
const ISSUER: &str = "test-token-issuer";

/// How clients authenticate to the registry.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// Anyone may push. This one also answers with relative `Location` headers.
    None,
    /// Basic auth from an htpasswd file (bcrypt).
    Htpasswd { user: String, password: String },
    /// Bearer tokens from [`TokenServer`], which knows one user.
    Token { user: String, password: String },
}

/// A running registry; dropping it stops it (and its token server) and deletes its data.
pub(crate) struct Registry {
    pub(crate) addr: SocketAddr,
    /// The user and password of [`Auth`], if any.
    pub(crate) credentials: Option<Credentials>,
    pub(crate) token_server: Option<TokenServer>,
    daemon: Option<Daemon>,
    dir: PathBuf,
}

impl Registry {
    pub(crate) fn start(sh: &Shell, auth: Auth) -> anyhow::Result<Registry> {
        let mut needs = vec![DOCKER_REGISTRY];
        match auth {
            Auth::None => (),
            Auth::Htpasswd { .. } => needs.push(HTPASSWD),
            Auth::Token { .. } => needs.push(OPENSSL),
        }
        provision::ensure(sh, &needs)?;
        let program =
            provision::find_program("docker-registry").context("docker-registry not found")?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "timemanager-registry-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut registry = Registry {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            credentials: None,
            token_server: None,
            daemon: None,
            dir: dir.clone(),
        };
        let (auth_config, relative_urls) = match &auth {
            Auth::None => (String::new(), true),
            Auth::Htpasswd { user, password } => {
                let file = dir.join("htpasswd");
                // `-i`: the password comes on stdin, never in argv.
                cmd!(sh, "htpasswd -B -i -c {file} {user}")
                    .stdin(password)
                    .quiet()
                    .secret()
                    .ignore_stderr()
                    .run()
                    .context("htpasswd")?;
                registry.credentials = Some(Credentials::new(user, password, "test registry"));
                (
                    format!(
                        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: \"{}\"\n",
                        file.display()
                    ),
                    false,
                )
            }
            Auth::Token { user, password } => {
                let server = TokenServer::start(sh, &dir, user, password)?;
                let config = format!(
                    "auth:\n  token:\n    realm: \"{}\"\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: \"{}\"\n",
                    server.realm(),
                    server.cert.display()
                );
                registry.token_server = Some(server);
                registry.credentials = Some(Credentials::new(user, password, "test registry"));
                (config, false)
            }
        };
        let config = format!(
            concat!(
                "version: 0.1\n",
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n",
                "storage:\n  filesystem:\n    rootdirectory: \"{data}\"\n  delete:\n    enabled: true\n",
                "  maintenance:\n    uploadpurging:\n      enabled: false\n",
                "http:\n  addr: {addr}\n  secret: fixed-test-secret\n  relativeurls: {relative}\n",
                "{auth}",
            ),
            data = dir.join("data").display(),
            addr = registry.addr,
            relative = relative_urls,
            auth = auth_config,
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let args = ["serve".to_owned(), config_path.display().to_string()];
        registry.daemon = Some(Daemon::start(sh, &dir, "registry", &program, &args)?);
        registry.wait_ready()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`: what `--registry` takes.
    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/v2/", self.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http::get(&url, &[]) {
                Ok(res) if matches!(res.status, 200 | 401) => return Ok(()),
                _ if Instant::now() > deadline => {
                    let log = self
                        .daemon
                        .as_ref()
                        .map(Daemon::log_tail)
                        .unwrap_or_default();
                    bail!("docker-registry did not answer {url} within 30 s; its log ends:\n{log}");
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Writes `<dir>/config.json` in docker's format holding this registry's credentials,
    /// for `skopeo --authfile` and `docker --config`: the password never goes in argv.
    pub(crate) fn write_docker_config(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("config.json");
        let auths = match &self.credentials {
            Some(creds) => {
                let pair = format!("{}:{}", creds.username, creds.secret.expose());
                json!({ self.host(): { "auth": base64::encode(pair.as_bytes()) } })
            }
            None => json!({}),
        };
        write_private(&path, json!({ "auths": auths }).to_string().as_bytes())?;
        Ok(path)
    }

    /// The end of the registry's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.token_server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing `{}`", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

/// A Docker-style token server on loopback: `GET /token?service=&scope=&account=` with
/// optional Basic auth, answering `{"token", "access_token", "expires_in", "issued_at"}`.
/// Its one user gets `pull,push` on every repository except those under `unknown/`;
/// anonymous callers get `pull` only; a wrong password gets 401.
pub(crate) struct TokenServer {
    pub(crate) addr: SocketAddr,
    /// The self-signed certificate the registry trusts (`rootcertbundle`).
    pub(crate) cert: PathBuf,
    state: Arc<TokenState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct TokenState {
    user: String,
    password: String,
    key: PathBuf,
    /// base64 DER of the certificate, sent as the JWT's `x5c`.
    x5c: String,
    requests: AtomicUsize,
    /// Tokens still to issue already expired (`usize::MAX`: always).
    expired: AtomicUsize,
}

impl TokenServer {
    fn start(sh: &Shell, dir: &Path, user: &str, password: &str) -> anyhow::Result<TokenServer> {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        let der = dir.join("token.der");
        let subject = format!("/CN={ISSUER}");
        cmd!(
            sh,
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj {subject} -keyout {key} -out {cert}"
        )
        .quiet()
        .ignore_stderr()
        .run()
        .context("generating the token signing key")?;
        cmd!(sh, "openssl x509 -in {cert} -outform DER -out {der}")
            .quiet()
            .run()?;
        let state = Arc::new(TokenState {
            user: user.to_owned(),
            password: password.to_owned(),
            key,
            x5c: base64::encode(&std::fs::read(&der)?),
            requests: AtomicUsize::new(0),
            expired: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the token server")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(sh) = Shell::new() else { return };
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve_token(&sh, &state, stream);
                    }
                }
            })
        };
        Ok(TokenServer {
            addr,
            cert,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Token requests answered so far (tokens are meant to be reused until they expire).
    pub(crate) fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// The next `n` tokens are issued expired an hour ago (`usize::MAX`: all of them).
    pub(crate) fn issue_expired(&self, n: usize) {
        self.state.expired.store(n, Ordering::Relaxed);
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_token(sh: &Shell, state: &TokenState, mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = read_head(&mut BufReader::new(stream.try_clone()?))?;
    state.requests.fetch_add(1, Ordering::Relaxed);
    let (status, body) = match token_response(sh, state, &head) {
        Ok(body) => (200, body),
        Err(TokenRefusal::BadCredentials) => (
            401,
            json!({"details": "invalid username or password"}).to_string(),
        ),
        Err(TokenRefusal::Broken(err)) => (500, json!({"details": err.to_string()}).to_string()),
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Internal Server Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

enum TokenRefusal {
    BadCredentials,
    Broken(anyhow::Error),
}

impl From<anyhow::Error> for TokenRefusal {
    fn from(err: anyhow::Error) -> TokenRefusal {
        TokenRefusal::Broken(err)
    }
}

fn token_response(sh: &Shell, state: &TokenState, head: &Head) -> Result<String, TokenRefusal> {
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let subject = match head.header("authorization") {
        None => None,
        Some(value) => {
            let decoded = value
                .strip_prefix("Basic ")
                .and_then(base64::decode)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(TokenRefusal::BadCredentials)?;
            match decoded.split_once(':') {
                Some((user, password)) if user == state.user && password == state.password => {
                    Some(user.to_owned())
                }
                _ => return Err(TokenRefusal::BadCredentials),
            }
        }
    };
    let mut access = Vec::new();
    for (_, scope) in params.iter().filter(|(k, _)| k == "scope") {
        for one in scope.split_whitespace() {
            let (Some((kind, rest)), Some((_, actions))) =
                (one.split_once(':'), one.rsplit_once(':'))
            else {
                continue;
            };
            let name = &rest[..rest.len() - actions.len() - 1];
            let allowed: &[&str] = match (&subject, name.starts_with("unknown/")) {
                (_, true) => &[],
                (Some(_), false) => &["pull", "push"],
                (None, false) => &["pull"],
            };
            let granted: Vec<&str> = actions.split(',').filter(|a| allowed.contains(a)).collect();
            access.push(json!({"type": kind, "name": name, "actions": granted}));
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let expired = state
        .expired
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
            0 => None,
            usize::MAX => Some(usize::MAX),
            n => Some(n - 1),
        })
        .is_ok();
    let issued = if expired { now - 7200 } else { now - 5 };
    let expires = if expired { now - 3600 } else { now + 300 };
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [state.x5c]});
    let claims = json!({
        "iss": ISSUER,
        "sub": subject.unwrap_or_default(),
        // A string: distribution 2.8 rejects an array here.
        "aud": SERVICE,
        "exp": expires,
        "nbf": issued,
        "iat": issued,
        "jti": format!("{}-{}", std::process::id(), state.requests.load(Ordering::Relaxed)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        base64::encode_url(header.to_string().as_bytes()),
        base64::encode_url(claims.to_string().as_bytes())
    );
    let key = &state.key;
    let output = cmd!(sh, "openssl dgst -sha256 -sign {key}")
        .stdin(signing_input.as_bytes())
        .quiet()
        .output()
        .context("signing a token")?;
    let token = format!("{signing_input}.{}", base64::encode_url(&output.stdout));
    Ok(json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": crate::project::rfc3339(issued),
    })
    .to_string())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let escaped = match bytes[idx..] {
            [b'%', hi, lo, ..] => hex(hi).zip(hex(lo)).map(|(hi, lo)| (hi * 16 + lo) as u8),
            _ => None,
        };
        match (escaped, bytes[idx]) {
            (Some(byte), _) => {
                out.push(byte);
                idx += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                idx += 1;
            }
            (None, byte) => {
                out.push(byte);
                idx += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request line and headers.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// The bytes as received, to forward unchanged but for `Connection`.
    raw_lines: Vec<String>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn read_head(reader: &mut impl BufRead) -> anyhow::Result<Head> {
    let mut raw_lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 || total > 64 * 1024 {
            bail!("connection closed or header too large");
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        raw_lines.push(line);
    }
    let mut request_line = raw_lines
        .first()
        .map(|l| l.split(' '))
        .into_iter()
        .flatten();
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers = raw_lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Head {
        method,
        target,
        headers,
        raw_lines,
    })
}

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

/// The parsed query of a token request, for the tests below.
#[cfg(test)]
fn query_params(target: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut params = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (k, v) in target
        .split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        params
            .entry(percent_decode(k))
            .or_default()
            .push(percent_decode(v));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_of_token_requests() {
        let params = query_params(
            "/token?service=test-registry&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=repository:c:pull&account=ci",
        );
        assert_eq!(
            params["scope"],
            ["repository:a/b:pull,push", "repository:c:pull"]
        );
        assert_eq!(params["account"], ["ci"]);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
