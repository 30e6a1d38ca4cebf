//! A Docker-style token server for the test registry, on loopback.
//!
//! It signs RS256 JWTs with `openssl dgst` and sends the self-signed certificate in `x5c`,
//! which distribution checks against its `rootcertbundle`.

use std::{
    io::{BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use serde_json::json;
use xshell::{Shell, cmd};

use crate::{
    digest::base64,
    harness::http::{Head, read_head},
};

/// The token server's `service` (JWT `aud`) and `issuer` (JWT `iss`).
const SERVICE: &str = "test-registry";
const ISSUER: &str = "test-token-issuer";

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
    pub(crate) fn start(
        sh: &Shell,
        dir: &Path,
        user: &str,
        password: &str,
    ) -> anyhow::Result<TokenServer> {
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

    /// The `auth:` section of a distribution config that trusts this server's tokens.
    pub(crate) fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: \"{}\"\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: \"{}\"\n",
            self.realm(),
            self.cert.display()
        )
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
