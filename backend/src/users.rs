//! Users: `POST /users`, `GET /users`, `GET /users/{id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};
use time::OffsetDateTime;

use crate::AppState;
use crate::error::{AppError, unique_violation};
use crate::extract::{ApiJson, ApiQuery, UserId, short_quote};

const USERNAME_MIN: usize = 3;
const USERNAME_MAX: usize = 32;
const EMAIL_MAX: usize = 254;
const LIST_DEFAULT_LIMIT: i64 = 100;
const LIST_MAX_LIMIT: i64 = 1000;

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub email: String,
}

impl NewUser {
    /// Trims surrounding whitespace and checks both fields.
    fn validate(self) -> Result<Self, AppError> {
        let username = self.username.trim().to_owned();
        let email = self.email.trim().to_owned();

        let len = username.chars().count();
        if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
            return Err(AppError::unprocessable(format!(
                "username must be {USERNAME_MIN} to {USERNAME_MAX} characters long"
            )));
        }
        if !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(AppError::unprocessable(
                "username may only contain letters, digits, '_', '-' and '.'",
            ));
        }
        if !is_plausible_email(&email) {
            return Err(AppError::unprocessable(format!(
                "email must be an address like name@example.com, got {}",
                short_quote(&email)
            )));
        }
        Ok(Self { username, email })
    }
}

/// Deliberately loose: one '@', a non-empty local part, a dotted domain, no spaces.
/// Real verification is sending a mail, which is out of scope.
fn is_plausible_email(email: &str) -> bool {
    if email.len() > EMAIL_MAX || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

/// `POST /users` → 201 with the created user.
pub async fn create_user(
    State(state): State<AppState>,
    ApiJson(new_user): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), AppError> {
    let new_user = new_user.validate()?;
    let result = sqlx::query_as::<_, User>(
        "INSERT INTO users (username, email) VALUES ($1, $2)
         RETURNING id, username, email, created_at",
    )
    .bind(&new_user.username)
    .bind(&new_user.email)
    .fetch_one(&state.pool)
    .await;

    match result {
        Ok(user) => Ok((StatusCode::CREATED, Json(user))),
        Err(err) => Err(match unique_violation(&err) {
            // Constraint names come from the migrations.
            Some("users_username_key") => AppError::conflict("username is already taken"),
            Some("users_email_key") => AppError::conflict("email is already registered"),
            _ => err.into(),
        }),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    limit: Option<String>,
    offset: Option<String>,
}

/// `GET /users?limit=&offset=` → users ordered by id (default limit 100, max 1000).
pub async fn list_users(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<User>>, AppError> {
    let limit = match params.limit.as_deref() {
        None => LIST_DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=LIST_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(AppError::bad_request(format!(
                    "limit must be an integer from 1 to {LIST_MAX_LIMIT}, got {}",
                    short_quote(raw)
                )));
            }
        },
    };
    let offset = match params.offset.as_deref() {
        None => 0,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(AppError::bad_request(format!(
                    "offset must be a non-negative integer, got {}",
                    short_quote(raw)
                )));
            }
        },
    };
    let users = sqlx::query_as::<_, User>(
        "SELECT id, username, email, created_at FROM users ORDER BY id LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(users))
}

/// `GET /users/{id}` → the user, or 404.
pub async fn get_user(
    State(state): State<AppState>,
    UserId(id): UserId,
) -> Result<Json<User>, AppError> {
    sqlx::query_as::<_, User>("SELECT id, username, email, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .map(Json)
        .ok_or_else(|| user_not_found(id))
}

/// 404 unless the user exists; used by the clock endpoints.
pub(crate) async fn ensure_user_exists(pool: &PgPool, id: i64) -> Result<(), AppError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?;
    if exists {
        Ok(())
    } else {
        Err(user_not_found(id))
    }
}

pub(crate) fn user_not_found(id: i64) -> AppError {
    AppError::not_found(format!("user {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_plausibility() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org"] {
            assert!(is_plausible_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@b@c.co", "a b@c.co", "a@.co", "a@co.",
        ] {
            assert!(!is_plausible_email(bad), "{bad}");
        }
    }
}
