//! Time Manager backend: an HTTP API for users and clock entries on PostgreSQL.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod migrations;
pub mod teams;
pub mod telemetry;
pub mod users;

use std::any::Any;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post, put};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use timemanager_shutdown::{Drain, ShutdownSignal, serve_and_drain};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{Auth, AuthSettings};
use crate::config::{Config, CorsOrigins};
use crate::error::{error_chain, json_error};
use crate::metrics::Metrics;
pub use crate::migrations::MIGRATOR;

/// Crate version, reported by `/health` and `build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Source revision, injected by the build tool through `TIMEMANAGER_REVISION`
/// (read at compile time so builds stay reproducible and need no git).
pub const REVISION: &str = match option_env!("TIMEMANAGER_REVISION") {
    Some(revision) if !revision.is_empty() => revision,
    _ => "unknown",
};

/// Connections kept by the pool; small because PostgreSQL processes are costly.
const POOL_MAX_CONNECTIONS: u32 = 10;
/// How long a request waits for a pooled connection before failing with 500.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long start-up waits for the database (e.g. while its container boots).
const STARTUP_DB_WAIT: Duration = Duration::from_secs(30);

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub cors: CorsOrigins,
    /// Set on SIGTERM/SIGINT: `/health` then answers 503 (see [`timemanager_shutdown`]).
    pub drain: Drain,
    /// Session settings and the sign-in limiter.
    pub auth: Arc<Auth>,
}

impl AppState {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            metrics: Arc::new(Metrics::new()),
            cors: CorsOrigins::Disabled,
            drain: Drain::default(),
            auth: Auth::new(AuthSettings::default()),
        }
    }

    pub fn with_auth(mut self, settings: AuthSettings) -> Self {
        self.auth = Auth::new(settings);
        self
    }

    pub fn with_cors(mut self, cors: CorsOrigins) -> Self {
        self.cors = cors;
        self
    }
}

/// The complete HTTP application. Routes carry no `/api` prefix: Traefik strips it.
/// Every route but `/health`, `/metrics` and `/auth/login` needs a session
/// ([`auth::require_session`]); adding a route to `signed_in` is the only way in.
pub fn app(state: AppState) -> Router {
    let signed_in = Router::new()
        .route("/auth/logout", post(auth::logout))
        .route("/auth/me", get(auth::me))
        .route("/auth/password", post(auth::change_password))
        .route("/users", get(users::list_users).post(users::create_user))
        .route("/users/{id}", get(users::get_user))
        .route("/users/{id}/account", put(users::update_account))
        .route("/users/{id}/password", post(users::reset_password))
        .route("/users/{id}/clock/in", post(clock::clock_in))
        .route("/users/{id}/clock/out", post(clock::clock_out))
        .route("/users/{id}/clock/status", get(clock::status))
        .route("/users/{id}/clock/history", get(clock::history))
        .route("/teams", get(teams::list_teams).post(teams::create_team))
        .route("/teams/{id}/totals", get(teams::totals))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_session,
        ));
    let router = Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::metrics_handler))
        .route("/auth/login", post(auth::login))
        .merge(signed_in)
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .method_not_allowed_fallback(|| async {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(CatchPanicLayer::custom(panic_response));

    let router = match cors_layer(&state.cors) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // Outermost, so CORS preflights and caught panics are measured and logged too.
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_requests,
        ))
        .with_state(state)
}

fn cors_layer(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow_origin = match origins {
        CorsOrigins::Disabled => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::HeaderName::from_static(auth::session::CSRF_HEADER),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(panic = %message, "handler panicked");
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// Pool settings shared by the server and the tests. The pool connects lazily, so
/// creating it never fails on an unreachable database.
pub fn pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(POOL_MAX_CONNECTIONS)
        .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
        // Recycle connections so a database fail-over or restart is absorbed.
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(Duration::from_secs(1800))
        .connect_lazy_with(options)
}

/// Waits until the database accepts a connection, for at most `STARTUP_DB_WAIT`.
/// Connecting directly (not through the pool) surfaces the real cause, e.g.
/// "connection refused", instead of a generic pool timeout.
pub(crate) async fn wait_for_database(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let deadline = tokio::time::Instant::now() + STARTUP_DB_WAIT;
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = tokio::time::timeout(POOL_ACQUIRE_TIMEOUT, options.connect()).await;
        let err = match attempt {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            // Unreachable or slow: the database may still be booting.
            Ok(Err(
                err @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut),
            )) => err,
            Err(_) => sqlx::Error::PoolTimedOut,
            // Authentication failures, unknown database, ...: waiting will not help.
            Ok(Err(err)) => return Err(err),
        };
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(err);
        }
        tracing::warn!(
            error = %err,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "database not reachable yet"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
}

/// Runs the server until SIGTERM/SIGINT. Returns the process exit code.
pub async fn run(config: Config) -> ExitCode {
    let telemetry = match telemetry::init(&config.log_filter, config.otel.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let code = serve(config).await;
    telemetry.shutdown().await;
    code
}

async fn serve(config: Config) -> ExitCode {
    let addr = SocketAddr::new(config.host, config.port);
    tracing::info!(
        version = VERSION,
        revision = REVISION,
        %addr,
        database = %config.database,
        "starting"
    );

    // Register signal handlers before anything slow, so an early SIGTERM is honoured.
    let mut shutdown = match ShutdownSignal::register() {
        Ok(signal) => signal,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };

    let options = config.database.connect_options();
    let startup = async {
        wait_for_database(&options)
            .await
            .map_err(|err| format!("database unavailable: {}", error_chain(&err)))?;
        let pool = pool(options.clone());
        match migrations::run_at_startup(&pool).await {
            Ok(()) => Ok(pool),
            Err(err) => {
                pool.close().await;
                Err(format!("database migration failed: {}", error_chain(&err)))
            }
        }
    };
    let pool = tokio::select! {
        result = startup => match result {
            Ok(pool) => pool,
            Err(message) => {
                tracing::error!("{message}");
                return ExitCode::FAILURE;
            }
        },
        () = shutdown.recv() => {
            tracing::info!("shutdown requested before start-up finished");
            return ExitCode::SUCCESS;
        }
    };
    tracing::info!("database migrations applied");

    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, %addr, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%addr, "listening");

    // Off the runtime, while the listener already accepts (sign-ins wait on the OnceLock).
    tokio::task::spawn_blocking(auth::password::warm_up);
    let state = AppState::new(pool.clone())
        .with_cors(config.cors)
        .with_auth(config.auth);
    let drain = state.drain.clone();
    let code =
        match serve_and_drain(listener, app(state), drain, config.shutdown_drain, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %err, "server failed");
                ExitCode::FAILURE
            }
        };
    // close() waits for checked-out connections; bound it in case the grace period
    // expired with handlers still holding some.
    if tokio::time::timeout(Duration::from_secs(5), pool.close())
        .await
        .is_err()
    {
        tracing::warn!("database pool did not close in time");
    }
    tracing::info!("shutdown complete");
    code
}
