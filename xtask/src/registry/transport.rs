//! The transport layer: one HTTP request and its response, byte counting for progress,
//! the retry loop around whole operations, and ureq failures as registry errors.
//!
//! Nothing here knows about credentials beyond sending the header it is given: the auth
//! layer (`auth.rs`) decides what that header is.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, Read},
    path::Path,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ureq::{SendBody, http};

use crate::registry::{
    auth::Scopes, credentials::Secret, error::Error, reference::Registry, retry::RetryPolicy,
};

/// Manifests and error bodies are small; blob downloads raise the limit to the blob's size.
const MAX_BODY: u64 = 8 << 20;

pub(super) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File {
        path: &'a Path,
        size: u64,
        progress: &'a AtomicU64,
    },
}

pub(super) struct Request<'a> {
    pub(super) method: &'static str,
    pub(super) url: String,
    pub(super) scopes: Scopes,
    headers: Vec<(&'static str, String)>,
    body: Body<'a>,
    pub(super) action: &'a str,
    /// Largest response body read; blob downloads raise it to the blob's size.
    pub(super) max_body: u64,
}

impl<'a> Request<'a> {
    pub(super) fn new(
        method: &'static str,
        url: String,
        scopes: Scopes,
        action: &'a str,
    ) -> Request<'a> {
        Request {
            method,
            url,
            scopes,
            headers: Vec::new(),
            body: Body::Empty,
            action,
            max_body: MAX_BODY,
        }
    }

    pub(super) fn header(mut self, name: &'static str, value: impl Into<String>) -> Request<'a> {
        self.headers.push((name, value.into()));
        self
    }

    pub(super) fn body(mut self, body: Body<'a>) -> Request<'a> {
        self.body = body;
        self
    }
}

pub(crate) struct Response {
    pub(crate) status: u16,
    headers: http::HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(super) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The HTTP side of one registry: an agent, the retry policy and what it counted.
pub(super) struct Transport {
    registry: Registry,
    agent: ureq::Agent,
    retry: RetryPolicy,
    retries: AtomicU64,
    warnings: Mutex<BTreeSet<String>>,
}

impl Transport {
    pub(super) fn new(registry: Registry, timeout: Duration, retry: RetryPolicy) -> Transport {
        let timeout = Some(timeout);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(concat!("timemanager-xtask/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(timeout)
            .timeout_recv_response(timeout)
            .timeout_per_read(timeout)
            .timeout_per_write(timeout)
            // Redirects matter for blob downloads; ureq drops `Authorization` on them.
            .max_redirects(5)
            .build()
            .into();
        Transport {
            registry,
            agent,
            retry,
            retries: AtomicU64::new(0),
            warnings: Mutex::new(BTreeSet::new()),
        }
    }

    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Retries so far (each transient failure that was tried again).
    pub(super) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs one whole operation under the retry policy (backoff on transient errors).
    pub(super) fn retry<T>(&self, op: impl FnMut(u32) -> Result<T, Error>) -> Result<T, Error> {
        self.retry.run(&self.retries, op)
    }

    /// Sends with `Authorization` only to the registry's own host.
    pub(super) fn send(
        &self,
        req: &Request<'_>,
        authorization: Option<&Secret>,
    ) -> Result<Response, Error> {
        let authorization = authorization.filter(|_| self.registry.owns(&req.url));
        self.send_anywhere(req, authorization)
    }

    /// Sends to any host (a token realm): the caller decides whether `authorization` may go there.
    pub(super) fn send_anywhere(
        &self,
        req: &Request<'_>,
        authorization: Option<&Secret>,
    ) -> Result<Response, Error> {
        let action = req.action;
        let mut builder = http::Request::builder()
            .method(req.method)
            .uri(&req.url)
            .header("Docker-Distribution-API-Version", "registry/2.0");
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        if let Some(authorization) = authorization {
            builder = builder.header("Authorization", authorization.expose());
        }
        let has_body = matches!(req.method, "POST" | "PUT" | "PATCH");
        let sent_here = AtomicU64::new(0);
        let build_error = |err: http::Error| {
            Error::rejected(action.to_owned(), format!("building the request: {err}"))
        };
        let result = match req.body {
            Body::Empty => {
                if has_body {
                    builder = builder.header("Content-Length", "0");
                }
                self.agent
                    .run(builder.body(SendBody::none()).map_err(build_error)?)
            }
            Body::Bytes(bytes) => {
                let mut reader = io::Cursor::new(bytes);
                let builder = builder.header("Content-Length", bytes.len().to_string());
                self.agent.run(
                    builder
                        .body(SendBody::from_reader(&mut reader))
                        .map_err(build_error)?,
                )
            }
            Body::File {
                path,
                size,
                progress,
            } => {
                let file = File::open(path).map_err(|err| {
                    Error::rejected(
                        action.to_owned(),
                        format!("opening `{}`: {err}", path.display()),
                    )
                })?;
                let on_disk = file.metadata().map(|m| m.len()).unwrap_or_default();
                if on_disk != size {
                    return Err(Error::rejected(
                        action.to_owned(),
                        format!(
                            "`{}` holds {on_disk} bytes, the manifest says {size}: run `cargo xtask build` again",
                            path.display()
                        ),
                    ));
                }
                let mut reader = Counting {
                    inner: file,
                    total: progress,
                    mine: &sent_here,
                };
                let builder = builder.header("Content-Length", size.to_string());
                self.agent.run(
                    builder
                        .body(SendBody::from_reader(&mut reader))
                        .map_err(build_error)?,
                )
            }
        };
        let uncount = || {
            if let Body::File { progress, .. } = req.body {
                progress.fetch_sub(sent_here.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        };
        let mut res = match result {
            Ok(res) => res,
            Err(err) => {
                uncount();
                return Err(transport_error(action, &self.registry, err));
            }
        };
        let status = res.status().as_u16();
        if !(200..300).contains(&status) {
            uncount();
        }
        let headers = res.headers().clone();
        let body = if req.method == "HEAD" {
            Vec::new()
        } else {
            res.body_mut()
                .with_config()
                .limit(req.max_body)
                .read_to_vec()
                .map_err(|err| {
                    Error::transport(action.to_owned(), format!("reading the response: {err}"))
                })?
        };
        let res = Response {
            status,
            headers,
            body,
        };
        self.report_warnings(&res);
        Ok(res)
    }

    /// `Warning: 299 - "text"` headers are shown once each, never acted on.
    fn report_warnings(&self, res: &Response) {
        for warning in res.all("warning") {
            let Some(text) = warning.strip_prefix("299 ") else {
                continue;
            };
            let text = text.trim_start_matches("- ").trim_matches('"').to_owned();
            if lock(&self.warnings).insert(text.clone()) {
                eprintln!("warning: {} says: {text}", self.registry);
            }
        }
    }
}

/// Counts bytes as ureq reads the body, for progress and for `bytes_uploaded`.
struct Counting<'a> {
    inner: File,
    total: &'a AtomicU64,
    mine: &'a AtomicU64,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        self.mine.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn transport_error(action: &str, registry: &Registry, err: ureq::Error) -> Error {
    let action = action.to_owned();
    match err {
        ureq::Error::Timeout(which) => Error::transport(action, format!("timed out ({which})")),
        ureq::Error::Io(err) => Error::transport(action, err.to_string()),
        ureq::Error::ConnectionFailed => Error::transport(action, "connection failed".to_owned()),
        ureq::Error::Protocol(err) => {
            Error::transport(action, format!("HTTP protocol error: {err}"))
        }
        ureq::Error::BodyStalled => Error::transport(action, "body stalled".to_owned()),
        ureq::Error::HostNotFound => Error::rejected(action, "host not found".to_owned())
            .with_hint(format!("check `--registry {registry}`")),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => {
            Error::rejected(action, format!("TLS: {err}")).with_hint(format!(
                "if {registry} speaks plain HTTP, pass `--insecure-registry {registry}`"
            ))
        }
        other => Error::rejected(action, other.to_string()),
    }
}
