//! The registry HTTP client: every request goes through [`Client::send`] (credentials,
//! token, renewal on 401) inside [`RetryPolicy::run`] (backoff on transient failures).
//!
//! Push uses blob HEAD / mount / upload and manifest HEAD / PUT; pulling adds GET on the
//! same path ([`Client::get_manifest`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{self, Read},
    path::Path,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};
use ureq::{SendBody, http};

use crate::{
    image::layer,
    registry::{
        challenge::{self, Bearer, Challenge},
        credentials::{Credentials, Secret},
        error::Error,
        reference::{Registry, Scheme, percent_encode, resolve_location, with_query},
        retry::{RetryPolicy, parse_retry_after},
    },
};

/// Manifest types accepted on GET and HEAD. Leaving one out makes distribution and GHCR
/// answer 404 for a manifest of that type.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and error bodies are small; blob downloads will stream instead.
const MAX_BODY: u64 = 8 << 20;

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
    pub(crate) digest: &'a str,
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
    pub(crate) digest: String,
}

/// One registry, one set of credentials; shared by the upload threads.
pub(crate) struct Client {
    registry: Registry,
    credentials: Option<Credentials>,
    options: ClientOptions,
    agent: ureq::Agent,
    auth: Mutex<AuthState>,
    retries: AtomicU64,
    warnings: Mutex<BTreeSet<String>>,
    /// Everything to mask in error text: the password, its Basic form, issued tokens.
    /// Its own lock: errors are built while `auth` is held.
    secrets: Mutex<Vec<String>>,
}

#[derive(Default)]
struct AuthState {
    /// `None` until `GET /v2/` was asked; then the challenge it returned, if any.
    challenge: Option<Option<Challenge>>,
    tokens: Vec<Token>,
}

struct Token {
    scopes: Scopes,
    value: Secret,
    renew_after: Instant,
}

/// Resource scopes (`repository:NAME`) and the actions wanted on each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scopes(BTreeMap<String, BTreeSet<String>>);

impl Scopes {
    pub(crate) fn repository(name: &str, actions: &[&str]) -> Scopes {
        let mut scopes = Scopes::default();
        scopes.add(&format!("repository:{name}:{}", actions.join(",")));
        scopes
    }

    /// Adds `type:name:actions`. The name may hold a `:` (a registry port), so the type
    /// ends at the first colon and the actions start after the last one.
    pub(crate) fn add(&mut self, scope: &str) {
        let Some((resource, actions)) = scope.rsplit_once(':') else {
            return;
        };
        if !resource.contains(':') {
            return;
        }
        self.0.entry(resource.to_owned()).or_default().extend(
            actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
        );
    }

    pub(crate) fn merge(&mut self, other: &Scopes) {
        for (resource, actions) in &other.0 {
            self.0
                .entry(resource.clone())
                .or_default()
                .extend(actions.iter().cloned());
        }
    }

    pub(crate) fn covers(&self, other: &Scopes) -> bool {
        other.0.iter().all(|(resource, actions)| {
            self.0
                .get(resource)
                .is_some_and(|have| actions.is_subset(have))
        })
    }

    /// `repository:NAME:pull,push` strings, one per resource (sent as repeated `scope=`).
    pub(crate) fn to_params(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(resource, actions)| {
                let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
                format!("{resource}:{}", actions.join(","))
            })
            .collect()
    }
}

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File {
        path: &'a Path,
        size: u64,
        progress: &'a AtomicU64,
    },
}

struct Request<'a> {
    method: &'static str,
    url: String,
    scopes: Scopes,
    headers: Vec<(&'static str, String)>,
    body: Body<'a>,
    action: &'a str,
    /// Largest response body read; blob downloads raise it to the blob's size.
    max_body: u64,
}

impl<'a> Request<'a> {
    fn new(method: &'static str, url: String, scopes: Scopes, action: &'a str) -> Request<'a> {
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

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Request<'a> {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: Body<'a>) -> Request<'a> {
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

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", layer::hex(&Sha256::digest(bytes)))
}

impl Client {
    pub(crate) fn new(
        registry: Registry,
        credentials: Option<Credentials>,
        options: ClientOptions,
    ) -> Client {
        let secrets = credentials
            .iter()
            .flat_map(|creds| {
                let basic = creds.basic_header();
                [
                    creds.secret.expose().to_owned(),
                    basic.expose().trim_start_matches("Basic ").to_owned(),
                ]
            })
            .collect();
        let timeout = Some(options.timeout);
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
        Client {
            registry,
            credentials,
            options,
            agent,
            auth: Mutex::new(AuthState::default()),
            retries: AtomicU64::new(0),
            warnings: Mutex::new(BTreeSet::new()),
            secrets: Mutex::new(secrets),
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Retries so far (each transient failure that was tried again).
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn access(&self, repository: &str) -> Scopes {
        if self.options.write {
            Scopes::repository(repository, &["pull", "push"])
        } else {
            Scopes::repository(repository, &["pull"])
        }
    }

    fn retry<T>(&self, op: impl FnMut(u32) -> Result<T, Error>) -> Result<T, Error> {
        self.options.retry.run(&self.retries, op)
    }

    /// `HEAD` a blob: present or not.
    pub(crate) fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, Error> {
        let action = format!("checking blob {digest} in {}/{repository}", self.registry);
        self.retry(|_| {
            let url = self.registry.blob_url(repository, digest);
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
        digest: &str,
        from: &str,
    ) -> Result<Mount, Error> {
        let action = format!(
            "mounting blob {digest} from {from} into {}/{repository}",
            self.registry
        );
        let mut scopes = self.access(repository);
        scopes.merge(&Scopes::repository(from, &["pull"]));
        let url = self.registry.uploads_url(repository, Some((digest, from)));
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
            self.registry
        );
        let mut session = session;
        self.retry(|_| {
            let location = match session.take() {
                Some(location) => location,
                None => self.start_upload(repository, &action)?,
            };
            let url = with_query(&location, "digest", blob.digest);
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
        let url = self.registry.uploads_url(repository, None);
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

    fn check_digest(&self, res: &Response, expected: &str, action: &str) -> Result<(), Error> {
        match res.header("docker-content-digest") {
            Some(got) if got != expected => Err(Error::rejected(
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
    ) -> Result<Option<String>, Error> {
        let action = format!(
            "checking manifest {}/{repository}:{reference}",
            self.registry
        );
        let res = self.retry(|_| {
            let url = self.registry.manifest_url(repository, reference);
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
        match res.header("docker-content-digest") {
            Some(digest) => Ok(Some(digest.to_owned())),
            // Older registries may omit the header: hash the body instead.
            None => Ok(self
                .get_manifest(repository, reference)?
                .map(|manifest| manifest.digest)),
        }
    }

    /// `GET` a blob of known size, checking its digest; base images are pulled this way.
    pub(crate) fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, Error> {
        let action = format!("fetching blob {digest} from {}/{repository}", self.registry);
        self.retry(|_| {
            let url = self.registry.blob_url(repository, digest);
            let mut req = Request::new("GET", url, self.access(repository), &action);
            req.max_body = size.max(1);
            let res = self.send(&req)?;
            if res.status != 200 {
                return Err(self.fail(&action, repository, &res));
            }
            let got = sha256_digest(&res.body);
            if got != digest {
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
            self.registry
        );
        self.retry(|_| {
            let url = self.registry.manifest_url(repository, reference);
            let req = Request::new("GET", url, self.access(repository), &action)
                .header("Accept", MANIFEST_ACCEPT);
            let res = self.send(&req)?;
            match res.status {
                200 => (),
                404 => return Ok(None),
                _ => return Err(self.fail(&action, repository, &res)),
            }
            let digest = sha256_digest(&res.body);
            if reference.starts_with("sha256:") && digest != reference {
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
    ) -> Result<String, Error> {
        let digest = sha256_digest(bytes);
        let action = format!(
            "pushing manifest {digest} as {}/{repository}:{reference}",
            self.registry
        );
        self.retry(|_| {
            let url = self.registry.manifest_url(repository, reference);
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

    /// One request with credentials; on 401 the token (or challenge) is renewed and the
    /// request sent once more.
    fn send(&self, req: &Request<'_>) -> Result<Response, Error> {
        let authorization = self.authorization(&req.scopes, req.action)?;
        let res = self.send_once(req, authorization.as_ref())?;
        if res.status != 401 || !self.registry.owns(&req.url) {
            return Ok(res);
        }
        let challenge = challenge::pick(&res.all("www-authenticate"))
            .map_err(|err| Error::rejected(req.action.to_owned(), err))?;
        let Some(renewed) = self.reauthorize(
            &req.scopes,
            challenge.as_ref(),
            authorization.is_some(),
            req.action,
        )?
        else {
            return Err(self.unauthorized(req, &res, challenge.as_ref()));
        };
        let res = self.send_once(req, Some(&renewed))?;
        if res.status == 401 {
            let again = challenge::pick(&res.all("www-authenticate")).ok().flatten();
            return Err(self.unauthorized(req, &res, again.as_ref().or(challenge.as_ref())));
        }
        Ok(res)
    }

    /// The `Authorization` header for `scopes`: none, Basic, or a cached or new token.
    fn authorization(&self, scopes: &Scopes, action: &str) -> Result<Option<Secret>, Error> {
        let mut state = lock(&self.auth);
        let challenge = match &state.challenge {
            Some(challenge) => challenge.clone(),
            None => {
                let challenge = self.ping(action)?;
                state.challenge = Some(challenge.clone());
                challenge
            }
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(Credentials::basic_header)),
            Some(Challenge::Bearer(bearer)) => {
                let now = Instant::now();
                state.tokens.retain(|token| token.renew_after > now);
                if let Some(token) = state.tokens.iter().find(|t| t.scopes.covers(scopes)) {
                    return Ok(Some(bearer_header(&token.value)));
                }
                let token = self.fetch_token(&bearer, scopes, action)?;
                let header = bearer_header(&token.value);
                state.tokens.push(token);
                Ok(Some(header))
            }
        }
    }

    /// After a 401: a fresh token for the scopes the registry asked for (merged with ours),
    /// or Basic credentials if they were not sent yet. `None`: nothing left to try.
    fn reauthorize(
        &self,
        scopes: &Scopes,
        challenge: Option<&Challenge>,
        sent_credentials: bool,
        action: &str,
    ) -> Result<Option<Secret>, Error> {
        let mut state = lock(&self.auth);
        // gcr.io has answered 401 without a challenge: fall back to the ping's.
        let challenge = match challenge {
            Some(challenge) => challenge.clone(),
            None => match state.challenge.clone().flatten() {
                Some(challenge) => challenge,
                None => return Ok(None),
            },
        };
        match &challenge {
            Challenge::Basic => {
                state.challenge = Some(Some(Challenge::Basic));
                if sent_credentials {
                    return Ok(None);
                }
                Ok(self.credentials.as_ref().map(Credentials::basic_header))
            }
            Challenge::Bearer(bearer) => {
                let mut wanted = scopes.clone();
                for scope in &bearer.scopes {
                    wanted.add(scope);
                }
                // The token just sent was refused: never hand it out again.
                state.tokens.retain(|token| !token.scopes.covers(scopes));
                state.challenge = Some(Some(challenge.clone()));
                let token = self.fetch_token(bearer, &wanted, action)?;
                let header = bearer_header(&token.value);
                state.tokens.push(token);
                Ok(Some(header))
            }
        }
    }

    /// `GET /v2/`: which auth scheme the registry wants.
    fn ping(&self, action: &str) -> Result<Option<Challenge>, Error> {
        let url = format!("{}/v2/", self.registry.base_url());
        let action = format!("{action}: probing {url}");
        let res = self.send_once(&Request::new("GET", url, Scopes::default(), &action), None)?;
        match res.status {
            200 => Ok(None),
            401 => match challenge::pick(&res.all("www-authenticate")) {
                Ok(Some(challenge)) => Ok(Some(challenge)),
                Ok(None) => Err(Error::rejected(
                    action,
                    "401 without a Basic or Bearer `WWW-Authenticate` challenge".to_owned(),
                )),
                Err(err) => Err(Error::rejected(action, err)),
            },
            404 => Err(Error::rejected(
                action,
                format!(
                    "404: {} does not serve the registry API at /v2/",
                    self.registry
                ),
            )),
            status => Err(self.redacted(Error::from_response(action, status, &res.body))),
        }
    }

    /// Exchanges the credentials (or nothing, anonymously) for a token at the realm.
    fn fetch_token(&self, bearer: &Bearer, scopes: &Scopes, action: &str) -> Result<Token, Error> {
        let realm = &bearer.realm;
        let action = format!("{action}: fetching a token from {realm}");
        // Credentials only travel encrypted, unless the registry itself is plain HTTP
        // (loopback or `--insecure-registry`), where the test token servers live.
        let allowed = realm.starts_with("https://")
            || (realm.starts_with("http://") && self.registry.scheme == Scheme::Http);
        if !allowed {
            return Err(Error::rejected(
                action,
                format!("refusing a token realm that is not https: `{realm}`"),
            ));
        }
        let mut url = realm.clone();
        if let Some(service) = &bearer.service {
            url = with_query(&url, "service", service);
        }
        for scope in scopes.to_params() {
            url = with_query(&url, "scope", &scope);
        }
        let creds = self.credentials.as_ref();
        let res = match creds {
            Some(creds) if creds.identity_token => {
                // `docker login` refresh tokens go through the OAuth2 form instead.
                let mut form = format!(
                    "grant_type=refresh_token&client_id=timemanager-xtask&refresh_token={}&scope={}",
                    percent_encode(creds.secret.expose()),
                    percent_encode(&scopes.to_params().join(" "))
                );
                if let Some(service) = &bearer.service {
                    form += &format!("&service={}", percent_encode(service));
                }
                let req = Request::new("POST", realm.clone(), Scopes::default(), &action)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(Body::Bytes(form.as_bytes()));
                self.send_raw(&req, None)?
            }
            _ => {
                if let Some(creds) = creds {
                    url = with_query(&url, "account", &creds.username);
                }
                let basic = creds.map(Credentials::basic_header);
                let req = Request::new("GET", url, Scopes::default(), &action);
                self.send_raw(&req, basic.as_ref())?
            }
        };
        match res.status {
            200 => (),
            401 | 403 => {
                let hint = match creds {
                    Some(creds) => format!(
                        "the token server rejected the credentials of user `{}` (from {}): check the password or token",
                        creds.username, creds.source
                    ),
                    None => self.no_credentials_hint(),
                };
                let err = Error::from_response(action, res.status, &res.body);
                return Err(self
                    .redacted(match err {
                        Error::Denied(f) => Error::Unauthorized(f),
                        other => other,
                    })
                    .with_hint(hint));
            }
            status => return Err(self.redacted(Error::from_response(action, status, &res.body))),
        }
        let json: serde_json::Value = serde_json::from_slice(&res.body).map_err(|_| {
            Error::rejected(action.clone(), "the token response is not JSON".to_owned())
        })?;
        let value = ["token", "access_token"]
            .iter()
            .find_map(|key| json[key].as_str().filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                Error::rejected(
                    action.clone(),
                    "the token response has no `token`".to_owned(),
                )
            })?;
        {
            let mut secrets = lock(&self.secrets);
            // Credentials first, then the most recent tokens: bounded for long-lived clients.
            if secrets.len() > 64 {
                secrets.remove(2);
            }
            secrets.push(value.to_owned());
        }
        // Tokens without `expires_in` (GHCR) last 60 s; renew 10 s early.
        let lifetime = json["expires_in"].as_u64().unwrap_or(60).max(60);
        Ok(Token {
            scopes: scopes.clone(),
            value: Secret::new(value),
            renew_after: Instant::now() + Duration::from_secs(lifetime - 10),
        })
    }

    fn no_credentials_hint(&self) -> String {
        let ghcr = if self.registry.is_ghcr() {
            " (or GHCR_TOKEN for ghcr.io)"
        } else {
            ""
        };
        format!(
            "no credentials found for {host}: set REGISTRY_USERNAME and REGISTRY_PASSWORD{ghcr}, or run `docker login {host}`",
            host = self.registry
        )
    }

    /// The error for a request still refused after renewal, with what to do about it.
    fn unauthorized(
        &self,
        req: &Request<'_>,
        res: &Response,
        challenge: Option<&Challenge>,
    ) -> Error {
        let err = self.redacted(Error::from_response(req.action.to_owned(), 401, &res.body));
        let failure = match err {
            Error::Unauthorized(failure) => failure,
            other => return other,
        };
        let repository = req
            .scopes
            .0
            .keys()
            .next()
            .map(|r| r.trim_start_matches("repository:").to_owned())
            .unwrap_or_default();
        match (challenge, &self.credentials) {
            (Some(Challenge::Bearer(bearer)), _)
                if bearer.error.as_deref() == Some("insufficient_scope") =>
            {
                let mut failure = failure;
                failure.detail = Some("the token lacks access (insufficient_scope)".to_owned());
                Error::Denied(failure).with_hint(self.denied_hint(&repository))
            }
            (Some(Challenge::Bearer(bearer)), _) if bearer.error.as_deref() == Some("invalid_token") => {
                Error::Unauthorized(failure).with_hint(format!(
                    "the registry refused a freshly issued token from {} (invalid_token): it expired on arrival (clock skew between token server and registry?) or is signed by a key the registry does not trust",
                    bearer.realm
                ))
            }
            (_, None) => Error::Unauthorized(failure).with_hint(self.no_credentials_hint()),
            (_, Some(creds)) => Error::Unauthorized(failure).with_hint(format!(
                "the registry rejected the credentials of user `{}` (from {}): check the password or token",
                creds.username, creds.source
            )),
        }
    }

    fn denied_hint(&self, repository: &str) -> String {
        if self.registry.is_ghcr() {
            format!(
                "on ghcr.io this means the token lacks `write:packages` (a workflow needs `permissions: packages: write`) or the package `{repository}` is not linked to this repository: GitHub links it through the `org.opencontainers.image.source` label the build sets; for a package created earlier, grant the repository write access in the package's settings (Manage Actions access)"
            )
        } else {
            let who = self
                .credentials
                .as_ref()
                .map_or("anonymous access".to_owned(), |c| {
                    format!("user `{}` (from {})", c.username, c.source)
                });
            format!("{who} may not push to `{repository}` on {}", self.registry)
        }
    }

    /// An unexpected response as an error, with hints for the common cases.
    fn fail(&self, action: &str, repository: &str, res: &Response) -> Error {
        let mut err = self.redacted(Error::from_response(
            action.to_owned(),
            res.status,
            &res.body,
        ));
        if let Some(wait) = res
            .header("retry-after")
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
        {
            err.failure_mut().retry_after = Some(wait);
        }
        let hint = if matches!(err, Error::Denied(_)) {
            Some(self.denied_hint(repository))
        } else if err.has_code("DIGEST_INVALID") {
            Some(
                "the blob on disk does not match its digest: run `cargo xtask build` again"
                    .to_owned(),
            )
        } else if err.has_code("MANIFEST_BLOB_UNKNOWN") {
            Some("a blob the manifest references is missing from the registry (deleted during the push?): push again".to_owned())
        } else if err.has_code("MANIFEST_INVALID") {
            Some("the registry refused the manifest that `cargo xtask build` wrote; its error says why".to_owned())
        } else if err.has_code("NAME_UNKNOWN") {
            Some(format!(
                "repository `{repository}` does not exist on {}: check `--namespace`",
                self.registry
            ))
        } else if err.has_code("NAME_INVALID") {
            Some("the registry refused the repository name: check `--namespace`".to_owned())
        } else {
            None
        };
        match hint {
            Some(hint) => err.with_hint(hint),
            None => err,
        }
    }

    /// Masks the password and tokens wherever a server echoed them into an error.
    fn redacted(&self, mut err: Error) -> Error {
        let secrets = lock(&self.secrets);
        let failure = err.failure_mut();
        let mask = |text: &mut String| {
            for secret in secrets.iter().filter(|s| s.len() >= 4) {
                if text.contains(secret.as_str()) {
                    *text = text.replace(secret.as_str(), "<redacted>");
                }
            }
        };
        if let Some(detail) = &mut failure.detail {
            mask(detail);
        }
        for error in &mut failure.errors {
            mask(&mut error.message);
        }
        err
    }

    /// Sends with `Authorization` only to the registry's own host.
    fn send_once(
        &self,
        req: &Request<'_>,
        authorization: Option<&Secret>,
    ) -> Result<Response, Error> {
        let authorization = authorization.filter(|_| self.registry.owns(&req.url));
        self.send_raw(req, authorization)
    }

    fn send_raw(
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

fn bearer_header(token: &Secret) -> Secret {
    Secret::new(format!("Bearer {}", token.expose()))
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

pub(crate) fn human_bytes(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1} kB", n as f64 / 1e3)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_merge_and_cover_as_sets() {
        let mut push = Scopes::repository("o/r/frontend", &["push", "pull"]);
        assert_eq!(push.to_params(), ["repository:o/r/frontend:pull,push"]);
        let pull = Scopes::repository("o/r/frontend", &["pull"]);
        assert!(push.covers(&pull));
        assert!(!pull.covers(&push));
        // The action order in a challenge is not stable (distribution builds it from a map).
        let mut from_challenge = Scopes::default();
        from_challenge.add("repository:o/r/frontend:push,pull");
        assert_eq!(from_challenge, push);
        push.add("repository:127.0.0.1:5000/o/r/backend:pull");
        assert_eq!(
            push.to_params(),
            [
                "repository:127.0.0.1:5000/o/r/backend:pull",
                "repository:o/r/frontend:pull,push"
            ]
        );
        assert!(!from_challenge.covers(&push));
        from_challenge.merge(&push);
        assert!(from_challenge.covers(&push));
        let mut ignored = Scopes::default();
        ignored.add("nonsense");
        assert_eq!(ignored, Scopes::default());
    }

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
                let mut reader = io::BufReader::new(stream.try_clone().unwrap());
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
                .blob_exists("a/b", &format!("sha256:{}", "0".repeat(64)))
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
        let client = Client::new(
            Registry::parse("ghcr.io", &[]).unwrap(),
            Some(Credentials::new(
                "octocat",
                "ghp_x",
                "GHCR_TOKEN (user GITHUB_ACTOR)",
            )),
            ClientOptions::default(),
        );
        let hint = client.denied_hint("owner/repo/backend");
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

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(3_813_699), "3.8 MB");
        assert_eq!(human_bytes(108_431), "108.4 kB");
    }
}
