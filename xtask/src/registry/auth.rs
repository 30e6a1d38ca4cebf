//! The auth layer: which scheme the registry wants (ping), Basic or a Bearer token per
//! set of scopes, reused until it expires and renewed once on 401, and the masking of
//! every credential and token in error text.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::registry::{
    challenge::{self, Bearer, Challenge},
    credentials::{Credentials, Redactor, Secret},
    error::{self, Error},
    reference::{Scheme, percent_encode, with_query},
    transport::{Body, Request, Response, Transport, lock},
};

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

/// Credentials and what they were exchanged for; shared by the upload threads.
pub(super) struct Auth {
    credentials: Option<Credentials>,
    state: Mutex<AuthState>,
    /// Everything to mask in error text: the password, its Basic form, issued tokens.
    /// Its own lock: errors are built while `state` is held.
    redactor: Mutex<Redactor>,
}

impl Auth {
    pub(super) fn new(credentials: Option<Credentials>) -> Auth {
        let mut redactor = Redactor::default();
        if let Some(creds) = &credentials {
            redactor.add(&creds.secret);
            let basic = creds.basic_header();
            redactor.add(&Secret::new(basic.expose().trim_start_matches("Basic ")));
        }
        Auth {
            credentials,
            state: Mutex::new(AuthState::default()),
            redactor: Mutex::new(redactor),
        }
    }

    pub(super) fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// One request with credentials; on 401 the token (or challenge) is renewed and the
    /// request sent once more.
    pub(super) fn send(&self, transport: &Transport, req: &Request<'_>) -> Result<Response, Error> {
        let authorization = self.authorization(transport, &req.scopes, req.action)?;
        let res = transport.send(req, authorization.as_ref())?;
        if res.status != 401 || !transport.registry().owns(&req.url) {
            return Ok(res);
        }
        let challenge = challenge::pick(&res.all("www-authenticate"))
            .map_err(|err| Error::rejected(req.action.to_owned(), err))?;
        let Some(renewed) = self.reauthorize(
            transport,
            &req.scopes,
            challenge.as_ref(),
            authorization.is_some(),
            req.action,
        )?
        else {
            return Err(self.unauthorized(transport, req, &res, challenge.as_ref()));
        };
        let res = transport.send(req, Some(&renewed))?;
        if res.status == 401 {
            let again = challenge::pick(&res.all("www-authenticate")).ok().flatten();
            return Err(self.unauthorized(
                transport,
                req,
                &res,
                again.as_ref().or(challenge.as_ref()),
            ));
        }
        Ok(res)
    }

    /// The `Authorization` header for `scopes`: none, Basic, or a cached or new token.
    fn authorization(
        &self,
        transport: &Transport,
        scopes: &Scopes,
        action: &str,
    ) -> Result<Option<Secret>, Error> {
        let mut state = lock(&self.state);
        let challenge = match &state.challenge {
            Some(challenge) => challenge.clone(),
            None => {
                let challenge = self.ping(transport, action)?;
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
                let token = self.fetch_token(transport, &bearer, scopes, action)?;
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
        transport: &Transport,
        scopes: &Scopes,
        challenge: Option<&Challenge>,
        sent_credentials: bool,
        action: &str,
    ) -> Result<Option<Secret>, Error> {
        let mut state = lock(&self.state);
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
                let token = self.fetch_token(transport, bearer, &wanted, action)?;
                let header = bearer_header(&token.value);
                state.tokens.push(token);
                Ok(Some(header))
            }
        }
    }

    /// `GET /v2/`: which auth scheme the registry wants.
    fn ping(&self, transport: &Transport, action: &str) -> Result<Option<Challenge>, Error> {
        let registry = transport.registry();
        let url = format!("{}/v2/", registry.base_url());
        let action = format!("{action}: probing {url}");
        let res = transport.send(&Request::new("GET", url, Scopes::default(), &action), None)?;
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
                format!("404: {registry} does not serve the registry API at /v2/"),
            )),
            status => Err(self.redacted(Error::from_response(action, status, &res.body))),
        }
    }

    /// Exchanges the credentials (or nothing, anonymously) for a token at the realm.
    fn fetch_token(
        &self,
        transport: &Transport,
        bearer: &Bearer,
        scopes: &Scopes,
        action: &str,
    ) -> Result<Token, Error> {
        let registry = transport.registry();
        let realm = &bearer.realm;
        let action = format!("{action}: fetching a token from {realm}");
        // Credentials only travel encrypted, unless the registry itself is plain HTTP
        // (loopback or `--insecure-registry`), where the test token servers live.
        let allowed = realm.starts_with("https://")
            || (realm.starts_with("http://") && registry.scheme == Scheme::Http);
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
                transport.send_anywhere(&req, None)?
            }
            _ => {
                if let Some(creds) = creds {
                    url = with_query(&url, "account", &creds.username);
                }
                let basic = creds.map(Credentials::basic_header);
                let req = Request::new("GET", url, Scopes::default(), &action);
                transport.send_anywhere(&req, basic.as_ref())?
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
                    None => error::no_credentials_hint(registry),
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
        lock(&self.redactor).add(&Secret::new(value));
        // Tokens without `expires_in` (GHCR) last 60 s; renew 10 s early.
        let lifetime = json["expires_in"].as_u64().unwrap_or(60).max(60);
        Ok(Token {
            scopes: scopes.clone(),
            value: Secret::new(value),
            renew_after: Instant::now() + Duration::from_secs(lifetime - 10),
        })
    }

    /// Masks the password and tokens wherever a server echoed them into an error.
    pub(super) fn redacted(&self, mut err: Error) -> Error {
        let redactor = lock(&self.redactor);
        let failure = err.failure_mut();
        let mask = |text: &mut String| *text = redactor.redact(text);
        if let Some(detail) = &mut failure.detail {
            mask(detail);
        }
        for error in &mut failure.errors {
            mask(&mut error.message);
        }
        err
    }

    /// The error for a request still refused after renewal, with what to do about it.
    fn unauthorized(
        &self,
        transport: &Transport,
        req: &Request<'_>,
        res: &Response,
        challenge: Option<&Challenge>,
    ) -> Error {
        let err = self.redacted(Error::from_response(req.action.to_owned(), 401, &res.body));
        let repository = req
            .scopes
            .0
            .keys()
            .next()
            .map(|r| r.trim_start_matches("repository:").to_owned())
            .unwrap_or_default();
        error::unauthorized(
            err,
            transport.registry(),
            self.credentials(),
            &repository,
            challenge,
        )
    }
}

fn bearer_header(token: &Secret) -> Secret {
    Secret::new(format!("Bearer {}", token.expose()))
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
}
