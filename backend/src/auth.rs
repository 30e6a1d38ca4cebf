//! Accounts and sign-in: `POST /auth/login`, `POST /auth/logout`, `GET /auth/me`,
//! `POST /auth/password`, the session middleware in front of every other route, and who
//! may see whom.
//!
//! CSRF: every state-changing request of a session (anything but GET/HEAD/OPTIONS) must
//! carry the session's CSRF token in `X-CSRF-Token`; the browser app gets it from the
//! sign-in answer and `/auth/me`. Another site can make the browser send a request, but
//! it can neither read the token (same-origin policy, no CORS in production) nor set the
//! header without a CORS preflight, which fails. `SameSite=Strict` on the cookie is a
//! second layer. The sign-in itself has no session yet: it needs a JSON body, which a
//! cross-site form cannot send without that same preflight, so no one can sign a victim
//! in to their own account either.

pub mod limiter;
pub mod password;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

use crate::AppState;
use crate::auth::limiter::Limiter;
use crate::auth::session::Lifetime;
use crate::error::{AppError, json_error};
use crate::extract::ApiJson;
use crate::users::{User, fetch_user};

/// Argon2 computations at once: each holds 19 MiB, so this bounds the memory a burst of
/// sign-ins can take (and leaves a core for everything else on a small server).
const HASHING_AT_ONCE: usize = 2;

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Employee,
    Manager,
    Admin,
}

impl Role {
    /// The role stored in `accounts.role`; the column's CHECK allows nothing else, and
    /// anything unexpected gets the least rights.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "admin" => Self::Admin,
            "manager" => Self::Manager,
            _ => Self::Employee,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Employee => "employee",
            Self::Manager => "manager",
            Self::Admin => "admin",
        }
    }
}

/// Session and sign-in settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    pub lifetime: Lifetime,
    /// `Secure` on the cookie; `SESSION_COOKIE_SECURE=false` is accepted only with a
    /// loopback `APP_HOST` (config.rs).
    pub secure_cookie: bool,
    /// Take the client address from the last `X-Forwarded-For` entry (the one Traefik
    /// appended) instead of the TCP peer, which behind Traefik is always Traefik.
    pub trust_forwarded_for: bool,
}

/// Idle expiry by default: a working day's morning or afternoon without a request.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(4 * 3600);
/// Absolute expiry by default: one long working day.
pub const DEFAULT_ABSOLUTE: Duration = Duration::from_secs(12 * 3600);

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            lifetime: Lifetime {
                idle: DEFAULT_IDLE,
                absolute: DEFAULT_ABSOLUTE,
            },
            secure_cookie: true,
            trust_forwarded_for: false,
        }
    }
}

/// Shared sign-in state of the server.
pub struct Auth {
    pub settings: AuthSettings,
    pub limiter: Limiter,
    hashing: Semaphore,
}

impl Auth {
    pub fn new(settings: AuthSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            limiter: Limiter::default(),
            hashing: Semaphore::new(HASHING_AT_ONCE),
        })
    }

    /// Runs Argon2 work off the async runtime, a bounded number at a time.
    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|err| AppError::Internal(Box::new(err)))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| AppError::Internal(Box::new(err)))
    }
}

/// Hashes a new password off the runtime.
pub async fn hash_password(auth: &Auth, password: String) -> Result<String, AppError> {
    auth.hashing(move || password::hash(&password))
        .await?
        .map_err(|err| AppError::Internal(err.to_string().into()))
}

/// The signed-in user of a request, put there by [`require_session`].
#[derive(Clone, Debug)]
pub struct Viewer {
    pub user_id: i64,
    pub role: Role,
    pub team_id: Option<i64>,
    pub must_change_password: bool,
    pub csrf_token: String,
    pub token_hash: Vec<u8>,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// 403 unless an admin.
    pub fn require_admin(&self) -> Result<(), AppError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(AppError::Status(
                StatusCode::FORBIDDEN,
                "only an admin may do this".to_owned(),
            ))
        }
    }

    /// True if this viewer manages team `team_id`.
    pub fn manages(&self, team_id: i64) -> bool {
        self.role == Role::Manager && self.team_id == Some(team_id)
    }

    /// Whether this viewer may see `user_id`'s data: themselves, an admin, or the
    /// manager of the user's team. Callers answer 404 otherwise, exactly as for a user
    /// that does not exist, so nobody learns which ids exist.
    pub async fn can_see(&self, pool: &PgPool, user_id: i64) -> Result<bool, AppError> {
        if self.user_id == user_id || self.is_admin() {
            return Ok(true);
        }
        let Some(team) = self.team_id.filter(|_| self.role == Role::Manager) else {
            return Ok(false);
        };
        let same: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE user_id = $1 AND team_id = $2)",
        )
        .bind(user_id)
        .bind(team)
        .fetch_one(pool)
        .await?;
        Ok(same)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Viewer>().cloned().ok_or_else(|| {
            AppError::Internal("route without the session middleware asked for a viewer".into())
        })
    }
}

fn unauthorized(secure: bool) -> Response {
    let mut response = json_error(StatusCode::UNAUTHORIZED, "sign-in required");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(secure));
    response
}

/// Middleware of every route but `/health`, `/metrics` and `/auth/login`: 401 without a
/// live session, 403 for a state-changing request without the session's CSRF token, and
/// 403 for anything but `/auth/*` while the user must replace a one-time password.
pub async fn require_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let secure = state.auth.settings.secure_cookie;
    let Some(token) = session::token_from(request.headers()) else {
        return json_error(StatusCode::UNAUTHORIZED, "sign-in required");
    };
    let viewer = match session::lookup(&state.pool, &token, state.auth.settings.lifetime).await {
        Ok(Some(viewer)) => viewer,
        Ok(None) => return unauthorized(secure),
        Err(err) => return AppError::from(err).into_response(),
    };
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe {
        let sent = request
            .headers()
            .get(session::CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !bool::from(sent.ct_eq(viewer.csrf_token.as_bytes())) {
            return json_error(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token (X-CSRF-Token)",
            );
        }
    }
    if viewer.must_change_password && !request.uri().path().starts_with("/auth/") {
        return json_error(
            StatusCode::FORBIDDEN,
            "change the one-time password first (POST /auth/password)",
        );
    }
    request.extensions_mut().insert(viewer);
    next.run(request).await
}

/// The client address the limiter counts: the TCP peer, or behind Traefik the last
/// `X-Forwarded-For` entry (Traefik drops the entries sent by an untrusted client and
/// appends the peer it saw, so only the last one is its word).
fn client_address(
    settings: &AuthSettings,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> String {
    if settings.trust_forwarded_for {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|v| !v.is_empty());
        if let Some(address) = forwarded {
            return address.chars().take(64).collect();
        }
    }
    peer.map_or_else(|| "unknown".to_owned(), |peer| peer.ip().to_string())
}

#[derive(Deserialize)]
pub struct Login {
    pub email: String,
    pub password: String,
}

// Hand-written so a stray `{:?}` can never print the password.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// The signed-in user as `/auth/me` and `/auth/login` answer.
#[derive(Debug, Serialize)]
pub struct Me {
    pub user: User,
    pub must_change_password: bool,
    pub csrf_token: String,
}

#[derive(sqlx::FromRow)]
struct Credentials {
    id: i64,
    password_hash: Option<String>,
}

const WRONG_CREDENTIALS: &str = "wrong email or password";

/// `POST /auth/login` → 200 with [`Me`] and the session cookie; 401 for a wrong email or
/// password (the same answer, after the same Argon2 work); 429 with `Retry-After` when
/// the account or the client address has failed too often.
pub async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ApiJson(login): ApiJson<Login>,
) -> Result<Response, AppError> {
    let auth = &state.auth;
    let email = login.email.trim().to_lowercase();
    let address = client_address(
        &auth.settings,
        &headers,
        peer.map(|Extension(ConnectInfo(p))| p),
    );
    if let Err(wait) = auth.limiter.check(&email, &address, Instant::now()) {
        let mut response = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins; try again later",
        );
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return Ok(response);
    }
    let found = sqlx::query_as::<_, Credentials>(
        "SELECT u.id, a.password_hash FROM users u LEFT JOIN accounts a ON a.user_id = u.id
         WHERE lower(u.email) = $1",
    )
    .bind(&email)
    .fetch_optional(&state.pool)
    .await?;
    let password = login.password;
    let ok = if password.len() > password::MAX_BYTES {
        false
    } else {
        let stored = found.as_ref().and_then(|c| c.password_hash.clone());
        auth.hashing(move || password::verify(&password, stored.as_deref()))
            .await?
    };
    let user_id = match (ok, found) {
        (true, Some(found)) => found.id,
        _ => {
            auth.limiter.failure(&email, &address, Instant::now());
            tracing::info!(%address, "sign-in refused");
            return Err(AppError::Status(
                StatusCode::UNAUTHORIZED,
                WRONG_CREDENTIALS.to_owned(),
            ));
        }
    };
    auth.limiter.success(&email);
    let (token, csrf_token) = session::create(&state.pool, user_id).await?;
    tracing::info!(user_id, "signed in");
    let me = me_of(&state.pool, user_id, csrf_token).await?;
    let mut response = Json(me).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&token, auth.settings.lifetime, auth.settings.secure_cookie),
    );
    Ok(response)
}

async fn me_of(pool: &PgPool, user_id: i64, csrf_token: String) -> Result<Me, AppError> {
    let user = fetch_user(pool, user_id)
        .await?
        .ok_or_else(|| AppError::Internal("signed-in user vanished".into()))?;
    let must_change_password: bool = sqlx::query_scalar(
        "SELECT COALESCE((SELECT must_change_password FROM accounts WHERE user_id = $1), false)",
    )
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    Ok(Me {
        user,
        must_change_password,
        csrf_token,
    })
}

/// `GET /auth/me` → the signed-in user and the session's CSRF token.
pub async fn me(State(state): State<AppState>, viewer: Viewer) -> Result<Json<Me>, AppError> {
    Ok(Json(
        me_of(&state.pool, viewer.user_id, viewer.csrf_token).await?,
    ))
}

/// `POST /auth/logout` → 204; the session is deleted server-side and the cookie cleared.
pub async fn logout(State(state): State<AppState>, viewer: Viewer) -> Result<Response, AppError> {
    session::end(&state.pool, &viewer.token_hash).await?;
    tracing::info!(user_id = viewer.user_id, "signed out");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(state.auth.settings.secure_cookie),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// `POST /auth/password` → 204 after checking the current password and the rules for
/// the new one; every other session of the user ends.
pub async fn change_password(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiJson(change): ApiJson<PasswordChange>,
) -> Result<StatusCode, AppError> {
    let user = fetch_user(&state.pool, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::Internal("signed-in user vanished".into()))?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM accounts WHERE user_id = $1")
            .bind(viewer.user_id)
            .fetch_optional(&state.pool)
            .await?
            .flatten();
    let current = change.current_password;
    let ok = current.len() <= password::MAX_BYTES
        && state
            .auth
            .hashing(move || password::verify(&current, stored.as_deref()))
            .await?;
    if !ok {
        return Err(AppError::Status(
            StatusCode::FORBIDDEN,
            "current password is wrong".to_owned(),
        ));
    }
    password::check_new(&change.new_password, &user.email, &user.username)
        .map_err(AppError::unprocessable)?;
    let hash = hash_password(&state.auth, change.new_password).await?;
    set_password(&state.pool, viewer.user_id, &hash, false).await?;
    let ended = session::end_others(&state.pool, viewer.user_id, Some(&viewer.token_hash)).await?;
    tracing::info!(
        user_id = viewer.user_id,
        other_sessions_ended = ended,
        "password changed"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Stores a password hash (creating the account row of a user an older release added).
pub async fn set_password(
    pool: &PgPool,
    user_id: i64,
    hash: &str,
    must_change: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (user_id, password_hash, must_change_password) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE
         SET password_hash = $2, must_change_password = $3, updated_at = now()",
    )
    .bind(user_id)
    .bind(hash)
    .bind(must_change)
    .execute(pool)
    .await?;
    Ok(())
}
