//! The protocol operations of the distribution API, each a named step: blob HEAD, mount,
//! upload and GET; manifest HEAD, GET and PUT. Every request goes through the auth layer
//! (`auth.rs`: credentials, token, renewal on 401) inside the transport's retry loop
//! (`transport.rs`: backoff on transient failures).

use std::{path::Path, sync::atomic::AtomicU64, time::Duration};

use crate::{
    digest::Digest,
    registry::{
        auth::{Auth, Scopes},
        credentials::Credentials,
        error::{self, Error},
        reference::{Registry, resolve_location, with_query},
        retry::RetryPolicy,
        transport::{Body, Request, Response, Transport},
    },
    steps::human_bytes,
};

/// Manifest types accepted on GET and HEAD. Leaving one out makes distribution and GHCR
/// answer 404 for a manifest of that type.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientOptions {
    /// Ask tokens for `pull,push` (push) rather than `pull` (read-only checks).
    pub(crate) write: bool,
    /// Bound on connecting, on each read and write, and on waiting for a response.
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            write: true,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// A blob to upload: its digest, size, and bytes in memory or in a file streamed from disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobUpload<'a> {
    pub(crate) digest: &'a Digest,
    pub(crate) size: u64,
    pub(crate) source: BlobSource<'a>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// The answer to a cross-repository mount request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Mount {
    Mounted,
    /// The registry opened an upload session instead; upload into it.
    Session(String),
}

/// A manifest as the registry stores it.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub(crate) media_type: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) digest: Digest,
}

/// One registry, one set of credentials; shared by the upload threads.
pub(crate) struct Client {
    transport: Transport,
    auth: Auth,
    options: ClientOptions,
}

impl Client {
    pub(crate) fn new(
        registry: Registry,
        credentials: Option<Credentials>,
        options: ClientOptions,
    ) -> Client {
        Client {
            transport: Transport::new(registry, options.timeout, options.retry),
            auth: Auth::new(credentials),
            options,
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        self.transport.registry()
    }

    /// Retries so far (each transient failure that was tried again).
    pub(crate) fn retries(&self) -> u64 {
        self.transport.retries()
    }

    fn access(&self, repository: &str) -> Scopes {
        if self.options.write {
            Scopes::repository(repository, &["pull", "push"])
        } else {
            Scopes::repository(repository, &["pull"])
        }
    }

    fn retry<T>(&self, op: impl FnMut(u32) -> Result<T, Error>) -> Result<T, Error> {
        self.transport.retry(op)
    }

    /// One request with credentials (renewed once on 401).
    fn send(&self, req: &Request<'_>) -> Result<Response, Error> {
        self.auth.send(&self.transport, req)
    }

    /// An unexpected response as an error, with hints for the common cases.
    fn fail(&self, action: &str, repository: &str, res: &Response) -> Error {
        let err = self.auth.redacted(Error::from_response(
            action.to_owned(),
            res.status,
            &res.body,
        ));
        error::with_hints(
            err,
            res,
            self.registry(),
            self.auth.credentials(),
            repository,
        )
    }

    /// `HEAD` a blob: present or not.
    pub(crate) fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<bool, Error> {
        let action = format!("checking blob {digest} in {}/{repository}", self.registry());
        self.retry(|_| {
            let url = self.registry().blob_url(repository, digest.as_str());
            let res = self.send(&Request::new("HEAD", url, self.access(repository), &action))?;
            match res.status {
                200 => Ok(true),
                404 => Ok(false),
                _ => Err(self.fail(&action, repository, &res)),
            }
        })
    }

    /// Asks the registry to link a blob it holds in `from` into `repository`. Not retried:
    /// on any error the caller uploads instead.
    pub(crate) fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount, Error> {
        let action = format!(
            "mounting blob {digest} from {from} into {}/{repository}",
            self.registry()
        );
        let mut scopes = self.access(repository);
        scopes.merge(&Scopes::repository(from, &["pull"]));
        let url = self
            .registry()
            .uploads_url(repository, Some((digest.as_str(), from)));
        let res = self.send(&Request::new("POST", url.clone(), scopes, &action))?;
        match res.status {
            201 => Ok(Mount::Mounted),
            202 => Ok(Mount::Session(self.location(&url, &res, &action)?)),
            _ => Err(self.fail(&action, repository, &res)),
        }
    }

    /// Uploads a blob in one request: POST opens a session, one PUT `?digest=` sends the
    /// whole body (streamed from disk) and commits it. GHCR refuses chunked PATCHes over
    /// 4 MiB, and a session is never reused after a failure: each retry opens a new one.
    /// `session` is an already open session (from a mount that fell back) for the first
    /// attempt. `progress` counts bytes sent.
    pub(crate) fn upload_blob(
        &self,
        repository: &str,
        blob: BlobUpload<'_>,
        session: Option<String>,
        progress: &AtomicU64,
    ) -> Result<(), Error> {
        let action = format!(
            "uploading blob {} ({}) to {}/{repository}",
            blob.digest,
            human_bytes(blob.size),
            self.registry()
        );
        let mut session = session;
        self.retry(|_| {
            let location = match session.take() {
                Some(location) => location,
                None => self.start_upload(repository, &action)?,
            };
            let url = with_query(&location, "digest", blob.digest.as_str());
            let body = match blob.source {
                BlobSource::Bytes(bytes) => Body::Bytes(bytes),
                BlobSource::File(path) => Body::File {
                    path,
                    size: blob.size,
                    progress,
                },
            };
            let req = Request::new("PUT", url, self.access(repository), &action)
                .header("Content-Type", "application/octet-stream")
                .body(body);
            let res = self.send(&req)?;
            match res.status {
                201 | 204 => self.check_digest(&res, blob.digest, &action),
                _ => Err(self.fail(&action, repository, &res)),
            }
        })
    }

    fn start_upload(&self, repository: &str, action: &str) -> Result<String, Error> {
        let url = self.registry().uploads_url(repository, None);
        let res = self.send(&Request::new(
            "POST",
            url.clone(),
            self.access(repository),
            action,
        ))?;
        match res.status {
            202 => self.location(&url, &res, action),
            _ => Err(self.fail(action, repository, &res)),
        }
    }

    fn location(&self, request_url: &str, res: &Response, action: &str) -> Result<String, Error> {
        let location = res.header("location").ok_or_else(|| {
            Error::rejected(
                action.to_owned(),
                format!("{} without a `Location` header", res.status),
            )
        })?;
        resolve_location(request_url, location)
            .map_err(|err| Error::rejected(action.to_owned(), err.to_string()))
    }

    fn check_digest(&self, res: &Response, expected: &Digest, action: &str) -> Result<(), Error> {
        match res.header("docker-content-digest") {
            Some(got) if *expected != got => Err(Error::rejected(
                action.to_owned(),
                format!("the registry stored digest {got}, expected {expected}"),
            )),
            _ => Ok(()),
        }
    }

    /// The digest a tag or digest resolves to, from `HEAD`; `None` when absent.
    pub(crate) fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>, Error> {
        let action = format!(
            "checking manifest {}/{repository}:{reference}",
            self.registry()
        );
        let res = self.retry(|_| {
            let url = self.registry().manifest_url(repository, reference);
            let req = Request::new("HEAD", url, self.access(repository), &action)
                .header("Accept", MANIFEST_ACCEPT);
            let res = self.send(&req)?;
            match res.status {
                200 | 404 => Ok(res),
                _ => Err(self.fail(&action, repository, &res)),
            }
        })?;
        if res.status == 404 {
            return Ok(None);
        }
        match res.header("docker-content-digest").map(Digest::parse) {
            Some(Ok(digest)) => Ok(Some(digest)),
            // Older registries may omit the header, and a digest of another algorithm
            // cannot be compared with ours: hash the body instead.
            _ => Ok(self
                .get_manifest(repository, reference)?
                .map(|manifest| manifest.digest)),
        }
    }

    /// `GET` a blob of known size, checking its digest; base images are pulled this way.
    pub(crate) fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, Error> {
        let action = format!(
            "fetching blob {digest} from {}/{repository}",
            self.registry()
        );
        self.retry(|_| {
            let url = self.registry().blob_url(repository, digest.as_str());
            let mut req = Request::new("GET", url, self.access(repository), &action);
            req.max_body = size.max(1);
            let res = self.send(&req)?;
            if res.status != 200 {
                return Err(self.fail(&action, repository, &res));
            }
            let got = Digest::of(&res.body);
            if got != *digest {
                return Err(Error::rejected(
                    action.clone(),
                    format!("the registry sent a blob with digest {got}"),
                ));
            }
            Ok(res.body)
        })
    }

    /// `GET` a manifest by tag or digest; `None` when absent. The digest is computed from
    /// the bytes (tag responses' `Docker-Content-Digest` is not trusted) and checked when
    /// `reference` is a digest.
    pub(crate) fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, Error> {
        let action = format!(
            "fetching manifest {}/{repository}:{reference}",
            self.registry()
        );
        self.retry(|_| {
            let url = self.registry().manifest_url(repository, reference);
            let req = Request::new("GET", url, self.access(repository), &action)
                .header("Accept", MANIFEST_ACCEPT);
            let res = self.send(&req)?;
            match res.status {
                200 => (),
                404 => return Ok(None),
                _ => return Err(self.fail(&action, repository, &res)),
            }
            let digest = Digest::of(&res.body);
            if Digest::parse(reference).is_ok() && digest != reference {
                return Err(Error::rejected(
                    action.clone(),
                    format!("the registry sent a manifest with digest {digest}"),
                ));
            }
            let media_type = res
                .header("content-type")
                .map(|t| t.split(';').next().unwrap_or(t).trim().to_owned())
                .unwrap_or_default();
            Ok(Some(Manifest {
                media_type,
                bytes: res.body,
                digest,
            }))
        })
    }

    /// `PUT` a manifest under a tag (or its digest) with its exact bytes; returns the digest
    /// after checking the registry's `Docker-Content-Digest` against it.
    pub(crate) fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, Error> {
        let digest = Digest::of(bytes);
        let action = format!(
            "pushing manifest {digest} as {}/{repository}:{reference}",
            self.registry()
        );
        self.retry(|_| {
            let url = self.registry().manifest_url(repository, reference);
            let req = Request::new("PUT", url, self.access(repository), &action)
                .header("Content-Type", media_type)
                .body(Body::Bytes(bytes));
            let res = self.send(&req)?;
            match res.status {
                200..=202 => self.check_digest(&res, &digest, &action),
                _ => Err(self.fail(&action, repository, &res)),
            }
        })?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canned registry on loopback: each request gets the first route whose path prefix
    /// matches, as `(status, headers, body)`; `{addr}` in a header becomes the server's.
    type Route = (
        &'static str,
        u16,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );

    fn canned(routes: Vec<Route>) -> std::net::SocketAddr {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let path = request_line.split(' ').nth(1).unwrap_or_default();
                let (_, status, headers, body) = routes
                    .iter()
                    .find(|(prefix, ..)| path.starts_with(prefix))
                    .unwrap();
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    head += &format!("{name}: {}\r\n", value.replace("{addr}", &addr.to_string()));
                }
                let _ = write!(stream, "{head}\r\n{body}");
            }
        });
        addr
    }

    fn run_with_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the client hung (a lock taken twice?)")
    }

    fn fast_options() -> ClientOptions {
        ClientOptions {
            write: true,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_attempts: 2,
                initial_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
                max_elapsed: Duration::from_secs(5),
            },
        }
    }

    /// Regression: a token server refusing the password made the client build its error
    /// (masking secrets) under the auth lock it already held, and hang forever.
    #[test]
    fn wrong_password_at_the_token_server_is_an_error_not_a_deadlock() {
        let addr = canned(vec![
            (
                "/v2/",
                401,
                vec![(
                    "WWW-Authenticate",
                    r#"Bearer realm="http://{addr}/token",service="t""#,
                )],
                "",
            ),
            (
                "/token",
                401,
                vec![],
                r#"{"details":"bad password p4ssw0rd-secret"}"#,
            ),
        ]);
        let err = run_with_deadline(move || {
            let registry = Registry::parse(&addr.to_string(), &[]).unwrap();
            let creds = Credentials::new("alice", "p4ssw0rd-secret", "the test");
            Client::new(registry, Some(creds), fast_options())
                .blob_exists("a/b", &Digest::of(b""))
                .unwrap_err()
        });
        assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message
                .contains("token server rejected the credentials of user `alice` (from the test)"),
            "{message}"
        );
        assert!(!message.contains("p4ssw0rd-secret"), "{message}");
        assert!(message.contains("<redacted>"), "{message}");
    }

    /// GHCR answers a push with 403 DENIED when the token may not write: the error says why.
    #[test]
    fn ghcr_style_denied_names_the_package_and_the_fix() {
        let addr = canned(vec![
            (
                "/v2/a/b/manifests/",
                403,
                vec![("Content-Type", "application/json")],
                r#"{"errors":[{"code":"DENIED","message":"permission_denied: write_package"}]}"#,
            ),
            ("/v2/", 200, vec![], "{}"),
        ]);
        let err = run_with_deadline(move || {
            let registry = Registry::parse(&addr.to_string(), &[]).unwrap();
            Client::new(registry, None, fast_options())
                .put_manifest(
                    "a/b",
                    "latest",
                    "application/vnd.oci.image.manifest.v1+json",
                    b"{}",
                )
                .unwrap_err()
        });
        assert!(matches!(err, Error::Denied(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(": 403 Forbidden: DENIED (permission_denied: write_package); anonymous access may not push to `a/b`"), "{message}");
    }

    #[test]
    fn ghcr_denied_hint_names_write_packages_and_the_source_label() {
        let hint = error::denied_hint(
            &Registry::parse("ghcr.io", &[]).unwrap(),
            Some(&Credentials::new(
                "octocat",
                "ghp_x",
                "GHCR_TOKEN (user GITHUB_ACTOR)",
            )),
            "owner/repo/backend",
        );
        for needle in [
            "`write:packages`",
            "`permissions: packages: write`",
            "`owner/repo/backend`",
            "`org.opencontainers.image.source`",
        ] {
            assert!(hint.contains(needle), "{needle} missing: {hint}");
        }
        assert!(!hint.contains("ghp_x"));
    }
}
