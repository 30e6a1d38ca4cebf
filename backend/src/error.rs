//! API error type: every failure becomes a JSON `{"error": "..."}` response.

use std::fmt::Write as _;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error returned by a handler or extractor.
#[derive(Debug)]
pub enum AppError {
    /// The request is malformed (bad path/query parameter, unparsable JSON).
    BadRequest(String),
    /// The addressed resource does not exist.
    NotFound(String),
    /// The request conflicts with the current state (duplicate, already clocked in).
    Conflict(String),
    /// The request is well-formed but a field value is not acceptable.
    Unprocessable(String),
    /// Any other client error with a specific status (413, 415, ...).
    Status(StatusCode, String),
    /// A server-side failure. Logged in full, reported to the client as "internal error".
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::Unprocessable(message.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Status(status, _) => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        Self::Internal(Box::new(err))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match self {
            Self::BadRequest(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::Unprocessable(m)
            | Self::Status(_, m) => m,
            Self::Internal(err) => {
                // Details (SQL errors, constraint names, hosts) stay in the logs.
                tracing::error!(error = %error_chain(err.as_ref()), "internal error");
                "internal error".to_owned()
            }
        };
        json_error(status, &message)
    }
}

/// Builds the uniform error body.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Formats an error and all its sources as `outer: inner: innermost`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let _ = write!(out, ": {inner}");
        source = inner.source();
    }
    out
}

/// The name of the violated constraint if `err` is a unique violation.
pub fn unique_violation(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
}

/// True if `err` is a foreign-key violation (the referenced row does not exist).
pub fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}
