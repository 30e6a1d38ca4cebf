//! Sessions: opaque random tokens in a cookie, stored as SHA-256 hashes with an idle and
//! an absolute expiry, and the CSRF token bound to each.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use sha2::{Digest as _, Sha256};
use sqlx::{FromRow, PgPool};

use crate::auth::{Role, Viewer};
use crate::migrations::hex;

/// Name of the session cookie.
pub const COOKIE: &str = "tm_session";
/// Header carrying the CSRF token on every state-changing request.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Random bytes per token: 256 bits, twice the minimum the issue (and OWASP) asks for.
const TOKEN_BYTES: usize = 32;
/// `last_seen_at` is written at most this often per session, not on every request.
const TOUCH_EVERY_SECONDS: f64 = 60.0;

/// How long sessions live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Ends a session unused for this long.
    pub idle: Duration,
    /// Ends every session this long after sign-in, used or not.
    pub absolute: Duration,
}

/// 32 random bytes as 64 hex digits.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// What the database stores for a token: a plain SHA-256 is enough (no salt, no slow
/// hash) because the token is 256 random bits, not a guessable password.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Starts a session for `user_id`; returns its token and CSRF token.
pub async fn create(
    pool: &PgPool,
    user_id: i64,
) -> Result<(String, String), crate::error::AppError> {
    let token = random_token().map_err(internal)?;
    let csrf = random_token().map_err(internal)?;
    sqlx::query("INSERT INTO sessions (token_hash, user_id, csrf_token) VALUES ($1, $2, $3)")
        .bind(token_hash(&token))
        .bind(user_id)
        .bind(&csrf)
        .execute(pool)
        .await?;
    Ok((token, csrf))
}

fn internal(err: getrandom::Error) -> crate::error::AppError {
    crate::error::AppError::Internal(Box::new(err))
}

#[derive(FromRow)]
struct SessionRow {
    user_id: i64,
    csrf_token: String,
    alive: bool,
    stale: bool,
    role: String,
    team_id: Option<i64>,
    must_change_password: bool,
}

/// The signed-in user behind `token`, or `None` for an unknown or expired session (an
/// expired one is deleted on the way).
pub async fn lookup(
    pool: &PgPool,
    token: &str,
    lifetime: Lifetime,
) -> Result<Option<Viewer>, sqlx::Error> {
    let hash = token_hash(token);
    let row = sqlx::query_as::<_, SessionRow>(
        "SELECT s.user_id, s.csrf_token,
                s.created_at + make_interval(secs => $2) > now()
                  AND s.last_seen_at + make_interval(secs => $3) > now() AS alive,
                s.last_seen_at + make_interval(secs => $4) < now() AS stale,
                COALESCE(a.role, 'employee') AS role, a.team_id,
                COALESCE(a.must_change_password, false) AS must_change_password
         FROM sessions s LEFT JOIN accounts a ON a.user_id = s.user_id
         WHERE s.token_hash = $1",
    )
    .bind(&hash)
    .bind(lifetime.absolute.as_secs_f64())
    .bind(lifetime.idle.as_secs_f64())
    .bind(TOUCH_EVERY_SECONDS)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if !row.alive {
        end(pool, &hash).await?;
        return Ok(None);
    }
    if row.stale {
        sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE token_hash = $1")
            .bind(&hash)
            .execute(pool)
            .await?;
    }
    Ok(Some(Viewer {
        user_id: row.user_id,
        role: Role::parse(&row.role),
        team_id: row.team_id,
        must_change_password: row.must_change_password,
        csrf_token: row.csrf_token,
        token_hash: hash,
    }))
}

/// Deletes one session (sign-out).
pub async fn end(pool: &PgPool, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes every session of `user_id` except `keep` (after a password change).
pub async fn end_others(
    pool: &PgPool,
    user_id: i64,
    keep: Option<&[u8]>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM sessions WHERE user_id = $1 AND ($2::bytea IS NULL OR token_hash <> $2)",
    )
    .bind(user_id)
    .bind(keep)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The session token from the request's `Cookie` headers.
pub fn token_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for a new session. `HttpOnly`: scripts never see the token; `SameSite=Strict`:
/// browsers never send it with a request started by another site; `Secure` unless
/// relaxed for loopback development (`SESSION_COOKIE_SECURE=false`).
pub fn set_cookie(token: &str, lifetime: Lifetime, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!(
        "{COOKIE}={token}; HttpOnly{secure}; SameSite=Strict; Path=/; Max-Age={}",
        lifetime.absolute.as_secs()
    );
    // Hex digits and fixed ASCII only, so this never fails.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that makes the browser drop the cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "tm_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
        )
    } else {
        HeaderValue::from_static("tm_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_and_stored_hashed() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_token().unwrap());
        assert_eq!(token_hash(&a).len(), 32);
        assert_ne!(hex(&token_hash(&a)), a);
    }

    #[test]
    fn cookie_attributes_and_parsing() {
        let lifetime = Lifetime {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(3600),
        };
        assert_eq!(
            set_cookie("ab", lifetime, true),
            "tm_session=ab; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=3600"
        );
        assert!(
            !set_cookie("ab", lifetime, false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tm_session=xyz; b=2"),
        );
        assert_eq!(token_from(&headers).as_deref(), Some("xyz"));
        let mut empty = HeaderMap::new();
        empty.append(header::COOKIE, HeaderValue::from_static("tm_session="));
        assert_eq!(token_from(&empty), None);
    }
}
