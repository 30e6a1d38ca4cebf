//! Users: `POST /users` and `PUT /users/{id}/account` and `POST /users/{id}/password`
//! (admins), `GET /users` (whom the viewer may see), `GET /users/{id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::{self, Role, Viewer, password, session};
use crate::error::{AppError, is_foreign_key_violation, unique_violation};
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
    #[sqlx(try_from = "String")]
    pub role: RoleColumn,
    pub team_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `accounts.role` as read through `COALESCE` (an account-less user is an employee).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RoleColumn(pub Role);

impl From<String> for RoleColumn {
    fn from(raw: String) -> Self {
        Self(Role::parse(&raw))
    }
}

/// Columns of [`User`], over `users u LEFT JOIN accounts a`.
const USER_SELECT: &str = "SELECT u.id, u.username, u.email, COALESCE(a.role, 'employee') AS role,
        a.team_id, u.created_at
 FROM users u LEFT JOIN accounts a ON a.user_id = u.id";

/// One user, whoever asks.
pub async fn fetch_user(pool: &PgPool, id: i64) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(&format!("{USER_SELECT} WHERE u.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    #[serde(default = "default_role")]
    pub role: Role,
    #[serde(default)]
    pub team_id: Option<i64>,
}

fn default_role() -> Role {
    Role::Employee
}

impl NewUser {
    /// Trims surrounding whitespace and checks both fields.
    pub(crate) fn validate(self) -> Result<Self, AppError> {
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
        Ok(Self {
            username,
            email,
            ..self
        })
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

/// The answer to `POST /users` and `POST /users/{id}/password`: the password is shown
/// this once and must be replaced at the first sign-in.
#[derive(Debug, Serialize)]
pub struct Created {
    pub user: User,
    pub initial_password: String,
}

/// `POST /users` (admin) → 201 with the user and a one-time password.
pub async fn create_user(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiJson(new_user): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<Created>), AppError> {
    viewer.require_admin()?;
    let new_user = new_user.validate()?;
    let initial_password = password::one_time();
    let hash = auth::hash_password(&state.auth, initial_password.clone()).await?;
    let mut tx = state.pool.begin().await?;
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO users (username, email) VALUES ($1, $2) RETURNING id",
    )
    .bind(&new_user.username)
    .bind(&new_user.email)
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok(id) => id,
        Err(err) => {
            return Err(match unique_violation(&err) {
                // Constraint names come from the migrations.
                Some("users_username_key") => AppError::conflict("username is already taken"),
                Some("users_email_key") => AppError::conflict("email is already registered"),
                _ => err.into(),
            });
        }
    };
    sqlx::query(
        "INSERT INTO accounts (user_id, role, team_id, password_hash, must_change_password)
         VALUES ($1, $2, $3, $4, true)",
    )
    .bind(id)
    .bind(new_user.role.as_str())
    .bind(new_user.team_id)
    .bind(&hash)
    .execute(&mut *tx)
    .await
    .map_err(team_error(new_user.team_id))?;
    tx.commit().await?;
    tracing::info!(user_id = id, role = new_user.role.as_str(), "user created");
    let user = fetch_user(&state.pool, id)
        .await?
        .ok_or_else(|| user_not_found(id))?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            user,
            initial_password,
        }),
    ))
}

fn team_error(team_id: Option<i64>) -> impl FnOnce(sqlx::Error) -> AppError {
    move |err| {
        if is_foreign_key_violation(&err) {
            AppError::unprocessable(format!("team {} not found", team_id.unwrap_or_default()))
        } else {
            err.into()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct AccountUpdate {
    pub role: Role,
    pub team_id: Option<i64>,
}

/// `PUT /users/{id}/account` (admin) `{"role": ..., "team_id": ...|null}` → the user.
pub async fn update_account(
    State(state): State<AppState>,
    viewer: Viewer,
    UserId(id): UserId,
    ApiJson(update): ApiJson<AccountUpdate>,
) -> Result<Json<User>, AppError> {
    viewer.require_admin()?;
    ensure_user_exists(&state.pool, id).await?;
    if id == viewer.user_id && update.role != Role::Admin {
        return Err(AppError::conflict(
            "an admin cannot take their own admin role away",
        ));
    }
    sqlx::query(
        "INSERT INTO accounts (user_id, role, team_id) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET role = $2, team_id = $3, updated_at = now()",
    )
    .bind(id)
    .bind(update.role.as_str())
    .bind(update.team_id)
    .execute(&state.pool)
    .await
    .map_err(team_error(update.team_id))?;
    tracing::info!(user_id = id, role = update.role.as_str(), "account updated");
    fetch_user(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| user_not_found(id))
}

/// `POST /users/{id}/password` (admin) → a new one-time password; the user's sessions end.
/// How an admin gives a password to a user who has none (e.g. migrated from before
/// accounts existed) or forgot theirs.
pub async fn reset_password(
    State(state): State<AppState>,
    viewer: Viewer,
    UserId(id): UserId,
) -> Result<Json<Created>, AppError> {
    viewer.require_admin()?;
    let user = fetch_user(&state.pool, id)
        .await?
        .ok_or_else(|| user_not_found(id))?;
    let initial_password = password::one_time();
    let hash = auth::hash_password(&state.auth, initial_password.clone()).await?;
    auth::set_password(&state.pool, id, &hash, true).await?;
    let keep = (id == viewer.user_id).then_some(viewer.token_hash.as_slice());
    session::end_others(&state.pool, id, keep).await?;
    tracing::info!(user_id = id, "one-time password set");
    Ok(Json(Created {
        user,
        initial_password,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    limit: Option<String>,
    offset: Option<String>,
}

/// `GET /users?limit=&offset=` → the users the viewer may see, by id (default limit 100,
/// max 1000): everyone for an admin, the team for a manager, oneself otherwise.
pub async fn list_users(
    State(state): State<AppState>,
    viewer: Viewer,
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
    let team = viewer.team_id.filter(|_| viewer.role == Role::Manager);
    let users = sqlx::query_as::<_, User>(&format!(
        "{USER_SELECT}
         WHERE $3 OR u.id = $4 OR ($5::bigint IS NOT NULL AND a.team_id = $5)
         ORDER BY u.id LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .bind(viewer.is_admin())
    .bind(viewer.user_id)
    .bind(team)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(users))
}

/// `GET /users/{id}` → the user, or 404 (also for a user the viewer may not see).
pub async fn get_user(
    State(state): State<AppState>,
    viewer: Viewer,
    UserId(id): UserId,
) -> Result<Json<User>, AppError> {
    if !viewer.can_see(&state.pool, id).await? {
        return Err(user_not_found(id));
    }
    fetch_user(&state.pool, id)
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
