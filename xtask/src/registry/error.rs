//! Registry errors: a kind callers branch on, and one line that names the request, the
//! registry's error code and message, and the likely fix.

use std::{fmt, time::Duration};

use crate::registry::{
    challenge::Challenge, credentials::Credentials, reference::Registry, retry::parse_retry_after,
    transport::Response,
};

/// What went wrong, by what the caller can do about it.
#[derive(Debug)]
pub(crate) enum Error {
    /// 401: credentials missing or rejected, or a token the registry will not take.
    Unauthorized(Box<Failure>),
    /// 403, or a token that lacks the needed scope: valid identity, no permission.
    Denied(Box<Failure>),
    /// 404 for something that had to exist.
    NotFound(Box<Failure>),
    /// Worth retrying: connection failure, timeout, 408, 429, 5xx, a lost upload session.
    Transient(Box<Failure>),
    /// Anything else the registry refused, or an answer that breaks the protocol.
    Rejected(Box<Failure>),
}

/// The facts behind an [`Error`]. Never holds credentials, tokens or request headers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Failure {
    /// The request, with what it was for: `PUT manifest ghcr.io/o/r/backend:abc1234`.
    pub(crate) action: String,
    pub(crate) status: Option<u16>,
    /// The `errors` of a JSON error body.
    pub(crate) errors: Vec<ApiError>,
    /// A transport error, or the start of a body that is not a JSON error document.
    pub(crate) detail: Option<String>,
    /// The likely fix.
    pub(crate) hint: Option<String>,
    /// From `Retry-After` (or GHCR's `retry-after:` message), for the backoff.
    pub(crate) retry_after: Option<Duration>,
    /// Attempts made and time spent, once retrying stopped.
    pub(crate) gave_up: Option<(u32, Duration)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) code: String,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn failure(&self) -> &Failure {
        match self {
            Error::Unauthorized(f)
            | Error::Denied(f)
            | Error::NotFound(f)
            | Error::Transient(f)
            | Error::Rejected(f) => f,
        }
    }

    pub(crate) fn failure_mut(&mut self) -> &mut Failure {
        match self {
            Error::Unauthorized(f)
            | Error::Denied(f)
            | Error::NotFound(f)
            | Error::Transient(f)
            | Error::Rejected(f) => f,
        }
    }

    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Error::Transient(_))
    }

    /// Whether the registry's error body carries `code`.
    pub(crate) fn has_code(&self, code: &str) -> bool {
        self.failure().errors.iter().any(|e| e.code == code)
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.failure_mut().hint = Some(hint.into());
        self
    }

    /// A network-level failure: nothing came back, so trying again may work.
    pub(crate) fn transport(action: String, detail: String) -> Error {
        Error::Transient(Box::new(Failure {
            action,
            detail: Some(detail),
            ..Failure::default()
        }))
    }

    /// A protocol violation or local problem that no retry fixes.
    pub(crate) fn rejected(action: String, detail: String) -> Error {
        Error::Rejected(Box::new(Failure {
            action,
            detail: Some(detail),
            ..Failure::default()
        }))
    }

    /// Classifies an unexpected response by status and error codes.
    pub(crate) fn from_response(action: String, status: u16, body: &[u8]) -> Error {
        let (errors, detail) = parse_body(body);
        let retry_after = errors.iter().find_map(|e| ghcr_retry_after(&e.message));
        let failure = Box::new(Failure {
            action,
            status: Some(status),
            errors,
            detail,
            retry_after,
            ..Failure::default()
        });
        let code_is = |codes: &[&str]| {
            failure
                .errors
                .iter()
                .any(|e| codes.contains(&e.code.as_str()))
        };
        let mentions_rate_limit = failure
            .errors
            .iter()
            .map(|e| e.message.as_str())
            .chain(failure.detail.as_deref())
            .any(|text| text.to_ascii_lowercase().contains("rate limit"));
        match status {
            408 | 429 | 500 | 502 | 503 | 504 => Error::Transient(failure),
            // GitHub's secondary rate limit answers 403.
            403 if mentions_rate_limit => Error::Transient(failure),
            _ if code_is(&[
                "TOOMANYREQUESTS",
                "UNAVAILABLE",
                // The upload session is gone: a retry starts a fresh one.
                "BLOB_UPLOAD_UNKNOWN",
                "BLOB_UPLOAD_INVALID",
            ]) =>
            {
                Error::Transient(failure)
            }
            401 => Error::Unauthorized(failure),
            403 => Error::Denied(failure),
            404 => Error::NotFound(failure),
            _ => Error::Rejected(failure),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failure = self.failure();
        write!(f, "{}", failure.action)?;
        if let Some(status) = failure.status {
            write!(f, ": {status} {}", reason(status))?;
        }
        for error in &failure.errors {
            write!(f, ": {}", error.code)?;
            if !error.message.is_empty() {
                write!(f, " ({})", error.message)?;
            }
        }
        if let Some(detail) = &failure.detail {
            write!(f, ": {detail}")?;
        }
        if let Some((attempts, elapsed)) = failure.gave_up {
            write!(
                f,
                " (gave up after {attempts} attempts in {:.1} s)",
                elapsed.as_secs_f64()
            )?;
        }
        if let Some(hint) = &failure.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Reads `{"errors":[{"code","message","detail"}]}`; anything else becomes a short excerpt.
/// Token servers answer `{"details": "..."}` (Docker Hub) or plain text.
pub(crate) fn parse_body(body: &[u8]) -> (Vec<ApiError>, Option<String>) {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(errors) = json["errors"].as_array() {
            let errors = errors
                .iter()
                .map(|e| {
                    // `detail` is any JSON; distribution puts the reason there.
                    let detail = match &e["detail"] {
                        serde_json::Value::Null => String::new(),
                        serde_json::Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    let message = e["message"].as_str().unwrap_or_default();
                    let text = match (message.is_empty(), detail.is_empty()) {
                        (_, true) => message.to_owned(),
                        (true, false) => detail,
                        (false, false) => format!("{message}: {detail}"),
                    };
                    ApiError {
                        code: e["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
                        message: one_line(&text, 300),
                    }
                })
                .collect();
            return (errors, None);
        }
        for key in ["details", "detail", "message", "error"] {
            if let Some(text) = json[key].as_str() {
                return (Vec::new(), Some(one_line(text, 300)));
            }
        }
    }
    let text = one_line(&String::from_utf8_lossy(body), 200);
    (Vec::new(), (!text.is_empty()).then_some(text))
}

fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        return joined;
    }
    let cut: String = joined.chars().take(max).collect();
    format!("{cut}…")
}

/// GHCR puts its hint in the message: `retry-after: 10.305464ms, allowed: 2000/minute`.
fn ghcr_retry_after(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let rest = &lower[lower.find("retry-after:")? + "retry-after:".len()..];
    let value = rest.trim_start().split([',', ' ']).next()?;
    parse_go_duration(value)
}

/// `1.5s`, `10.3ms`, `880µs`, `2m`: the forms Go's `time.Duration` prints.
pub(crate) fn parse_go_duration(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ns" => number / 1e9,
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// What to set when the registry wants credentials and there are none.
pub(crate) fn no_credentials_hint(registry: &Registry) -> String {
    let ghcr = if registry.is_ghcr() {
        " (or GHCR_TOKEN for ghcr.io)"
    } else {
        ""
    };
    format!(
        "no credentials found for {host}: set REGISTRY_USERNAME and REGISTRY_PASSWORD{ghcr}, or run `docker login {host}`",
        host = registry
    )
}

/// The error for a request still refused after renewal (`err`, already redacted), with
/// what to do about it.
pub(crate) fn unauthorized(
    err: Error,
    registry: &Registry,
    credentials: Option<&Credentials>,
    repository: &str,
    challenge: Option<&Challenge>,
) -> Error {
    let failure = match err {
        Error::Unauthorized(failure) => failure,
        other => return other,
    };
    match (challenge, credentials) {
        (Some(Challenge::Bearer(bearer)), _)
            if bearer.error.as_deref() == Some("insufficient_scope") =>
        {
            let mut failure = failure;
            failure.detail = Some("the token lacks access (insufficient_scope)".to_owned());
            Error::Denied(failure).with_hint(denied_hint(registry, credentials, repository))
        }
        (Some(Challenge::Bearer(bearer)), _) if bearer.error.as_deref() == Some("invalid_token") => {
            Error::Unauthorized(failure).with_hint(format!(
                "the registry refused a freshly issued token from {} (invalid_token): it expired on arrival (clock skew between token server and registry?) or is signed by a key the registry does not trust",
                bearer.realm
            ))
        }
        (_, None) => Error::Unauthorized(failure).with_hint(no_credentials_hint(registry)),
        (_, Some(creds)) => Error::Unauthorized(failure).with_hint(format!(
            "the registry rejected the credentials of user `{}` (from {}): check the password or token",
            creds.username, creds.source
        )),
    }
}

/// Why a push may be refused, and where to grant the permission.
pub(crate) fn denied_hint(
    registry: &Registry,
    credentials: Option<&Credentials>,
    repository: &str,
) -> String {
    if registry.is_ghcr() {
        format!(
            "on ghcr.io this means the token lacks `write:packages` (a workflow needs `permissions: packages: write`) or the package `{repository}` is not linked to this repository: GitHub links it through the `org.opencontainers.image.source` label the build sets; for a package created earlier, grant the repository write access in the package's settings (Manage Actions access)"
        )
    } else {
        let who = credentials.map_or("anonymous access".to_owned(), |c| {
            format!("user `{}` (from {})", c.username, c.source)
        });
        format!("{who} may not push to `{repository}` on {registry}")
    }
}

/// An unexpected response (`err`, already built from it and redacted) with its
/// `Retry-After` and hints for the common cases.
pub(crate) fn with_hints(
    mut err: Error,
    res: &Response,
    registry: &Registry,
    credentials: Option<&Credentials>,
    repository: &str,
) -> Error {
    if let Some(wait) = res
        .header("retry-after")
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
    {
        err.failure_mut().retry_after = Some(wait);
    }
    let hint = if matches!(err, Error::Denied(_)) {
        Some(denied_hint(registry, credentials, repository))
    } else if err.has_code("DIGEST_INVALID") {
        Some("the blob on disk does not match its digest: run `cargo xtask build` again".to_owned())
    } else if err.has_code("MANIFEST_BLOB_UNKNOWN") {
        Some("a blob the manifest references is missing from the registry (deleted during the push?): push again".to_owned())
    } else if err.has_code("MANIFEST_INVALID") {
        Some(
            "the registry refused the manifest that `cargo xtask build` wrote; its error says why"
                .to_owned(),
        )
    } else if err.has_code("NAME_UNKNOWN") {
        Some(format!(
            "repository `{repository}` does not exist on {registry}: check `--namespace`"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghcr_denied_on_manifest_put_reads_as_one_line_with_its_fix() {
        let err = Error::from_response(
            "PUT manifest ghcr.io/o/r/backend:abc1234".to_owned(),
            403,
            br#"{"errors":[{"code":"DENIED","message":"permission_denied: write_package"}]}"#,
        )
        .with_hint("the token lacks `write:packages`");
        assert!(matches!(err, Error::Denied(_)));
        assert_eq!(
            err.to_string(),
            "PUT manifest ghcr.io/o/r/backend:abc1234: 403 Forbidden: DENIED (permission_denied: write_package); the token lacks `write:packages`"
        );
    }

    #[test]
    fn plain_text_bodies_and_gave_up_retries() {
        let mut err = Error::from_response(
            "PUT blob sha256:ab… to 127.0.0.1:5000/x".to_owned(),
            503,
            b"upstream\n  unavailable\n",
        );
        assert!(err.is_transient());
        err.failure_mut().gave_up = Some((5, Duration::from_millis(3210)));
        assert_eq!(
            err.to_string(),
            "PUT blob sha256:ab… to 127.0.0.1:5000/x: 503 Service Unavailable: upstream unavailable (gave up after 5 attempts in 3.2 s)"
        );
    }

    #[test]
    fn error_details_of_any_json_shape_are_shown() {
        let err = Error::from_response(
            "PUT manifest".to_owned(),
            400,
            br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"json: cannot unmarshal number"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":{"Digest":"sha256:ab"}},{"code":"DENIED","detail":null}]}"#,
        );
        assert_eq!(
            err.to_string(),
            r#"PUT manifest: 400 Bad Request: MANIFEST_INVALID (manifest invalid: json: cannot unmarshal number): MANIFEST_BLOB_UNKNOWN (blob unknown to registry: {"Digest":"sha256:ab"}): DENIED"#
        );
    }

    #[test]
    fn classification_by_status_and_code() {
        let kind =
            |status, body: &str| match Error::from_response(String::new(), status, body.as_bytes())
            {
                Error::Unauthorized(_) => "unauthorized",
                Error::Denied(_) => "denied",
                Error::NotFound(_) => "not found",
                Error::Transient(_) => "transient",
                Error::Rejected(_) => "rejected",
            };
        assert_eq!(kind(401, ""), "unauthorized");
        assert_eq!(kind(403, ""), "denied");
        assert_eq!(
            kind(
                403,
                r#"{"message":"You have exceeded a secondary rate limit"}"#
            ),
            "transient"
        );
        assert_eq!(
            kind(404, r#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}"#),
            "transient"
        );
        assert_eq!(
            kind(404, r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#),
            "not found"
        );
        assert_eq!(
            kind(400, r#"{"errors":[{"code":"MANIFEST_INVALID"}]}"#),
            "rejected"
        );
        assert_eq!(kind(429, ""), "transient");
        assert_eq!(kind(501, ""), "rejected");
    }

    #[test]
    fn ghcr_rate_limit_hint_in_the_message() {
        let err = Error::from_response(
            String::new(),
            429,
            br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"retry-after: 10.305464ms, allowed: 2000/minute"}]}"#,
        );
        let wait = err.failure().retry_after.unwrap();
        assert!(wait > Duration::from_millis(10) && wait < Duration::from_millis(11));
        assert_eq!(
            parse_go_duration("880.092µs"),
            Some(Duration::from_nanos(880_092))
        );
        assert_eq!(parse_go_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_go_duration("soon"), None);
    }
}
