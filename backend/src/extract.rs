//! Request extractors whose rejections are JSON `AppError`s instead of axum's plain text.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// `axum::Json` with JSON error bodies.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::JsonDataError(err) => {
            // e.g. "missing field `email`" or "username: invalid type: integer `5`, ..."
            AppError::unprocessable(format!("invalid request body: {}", innermost(&err)))
        }
        JsonRejection::JsonSyntaxError(err) => AppError::bad_request(format!(
            "request body is not valid JSON: {}",
            innermost(&err)
        )),
        JsonRejection::MissingJsonContentType(_) => AppError::Status(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request body must be JSON (Content-Type: application/json)".to_owned(),
        ),
        other => AppError::Status(other.status(), other.body_text()),
    }
}

/// `axum::extract::Query` with JSON error bodies.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => Err(AppError::bad_request(
                format!("invalid query string: {}", innermost(&err)),
            )),
            Err(other) => Err(AppError::Status(other.status(), other.body_text())),
        }
    }
}

/// The `{id}` path segment of `/users/{id}/...`, validated as a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserId(pub i64);

impl<S> FromRequestParts<S> for UserId
where
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Extract as text first so the error can name the parameter and quote the value.
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                AppError::bad_request(format!("invalid path: {}", rejection.body_text()))
            })?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self(id)),
            _ => Err(AppError::bad_request(format!(
                "id must be a positive integer, got {}",
                short_quote(&raw)
            ))),
        }
    }
}

/// The most specific message in an error's source chain: axum's wrappers only add
/// "Failed to deserialize..." prefixes, the innermost serde message names the field.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Quotes client input for an error message without echoing unbounded data back.
pub fn short_quote(value: &str) -> String {
    const MAX_CHARS: usize = 40;
    if value.chars().count() > MAX_CHARS {
        let head: String = value.chars().take(MAX_CHARS).collect();
        format!("{head:?}...")
    } else {
        format!("{value:?}")
    }
}
