//! Static file server for the Time Manager SPA: replaces nginx in the scratch frontend image.
//!
//! [`app`] builds the whole HTTP behaviour as an axum [`Router`] (tested in-process);
//! [`serve`] binds it and runs until a shutdown signal, draining first ([`timemanager_shutdown`]).

pub mod config;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::handler::HandlerWithoutStateExt as _;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::services::{ServeDir, ServeFile};

pub use config::{Config, ConfigError};
pub use timemanager_shutdown::{Drain, ShutdownSignal};

/// URL prefix of Vite's content-hashed build output.
const ASSETS_PREFIX: &str = "/assets";

/// For content-hashed assets: a new build gets new names, so cache forever.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// For everything else (notably `index.html`): always revalidate (cheap thanks to 304s).
const CACHE_REVALIDATE: &str = "no-cache";

/// Sent on every response, as the production nginx config did.
///
/// `Strict-Transport-Security` is deliberately absent: TLS terminates at Traefik, which sets it.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
         frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    ),
];

/// Builds the router: `/health` (503 once `drain` has started), static files with SPA
/// fallback, headers and access log.
pub fn app(config: &Config, drain: &Drain) -> Router {
    let index = Arc::new(config.index_html());
    let index_file = ServeFile::new(index.as_path()).precompressed_gzip();
    let spa_fallback = {
        let index = Arc::clone(&index);
        move |req: Request| spa_fallback(index_file.clone(), Arc::clone(&index), req)
    };
    let static_files = ServeDir::new(&config.static_dir)
        // Directories (including `/`) are not served as listings nor redirected: they
        // fall through to the SPA fallback like any unknown path.
        .append_index_html_on_directories(false)
        .precompressed_gzip()
        .fallback(spa_fallback.into_service());

    let drain = drain.clone();
    Router::new()
        .route(
            "/health",
            get(move || health(Arc::clone(&index), drain.clone())),
        )
        .fallback_service(static_files)
        .layer(middleware::from_fn(set_response_headers))
        .layer(middleware::from_fn(log_request))
}

/// Fails with a message naming the path unless `index.html` is a readable file.
///
/// # Errors
/// The file is missing, unreadable, or not a regular file.
pub fn check_index(config: &Config) -> io::Result<()> {
    let path = config.index_html();
    let opened = std::fs::File::open(&path).and_then(|file| file.metadata());
    match opened {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{} is not a regular file (check STATIC_DIR)",
            path.display()
        ))),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("cannot read {} (check STATIC_DIR): {err}", path.display()),
        )),
    }
}

/// Checks `index.html`, binds the configured address and serves until `signal`, then
/// drains for `config.shutdown_drain` and stops (see [`timemanager_shutdown`]).
///
/// # Errors
/// `index.html` is unusable, binding fails, or the accept loop fails.
pub async fn serve(config: &Config, signal: ShutdownSignal) -> io::Result<()> {
    check_index(config)?;
    let addr = config.bind_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        static_dir = %config.static_dir.display(),
        "listening"
    );
    let drain = Drain::default();
    let router = app(config, &drain);
    timemanager_shutdown::serve_and_drain(listener, router, drain, config.shutdown_drain, signal)
        .await
}

/// `true` for paths under Vite's hashed-asset directory.
fn is_asset_path(path: &str) -> bool {
    path.strip_prefix(ASSETS_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Unknown non-asset paths get `index.html` (client-side routing); unknown assets get 404
/// so a broken asset link shows up as such rather than as HTML.
async fn spa_fallback(mut index_file: ServeFile, index: Arc<PathBuf>, req: Request) -> Response {
    if is_asset_path(req.uri().path()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    match index_file.try_call(req).await {
        Ok(response) => response.map(Body::new),
        Err(err) => {
            tracing::error!(path = %index.display(), error = %err, "cannot serve index.html");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// `200 {"status":"ok"}` while `index.html` can be opened, `503` otherwise, and
/// `503 {"status":"draining"}` after SIGTERM so the load balancer stops sending requests.
async fn health(index: Arc<PathBuf>, drain: Drain) -> Response {
    let (status, body) = if drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else if index_readable(&index).await {
        (StatusCode::OK, r#"{"status":"ok"}"#)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"unavailable"}"#,
        )
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn index_readable(path: &Path) -> bool {
    match tokio::fs::File::open(path).await {
        Ok(file) => file.metadata().await.is_ok_and(|meta| meta.is_file()),
        Err(_) => false,
    }
}

/// Adds security headers to every response and picks `Cache-Control` by path and status.
async fn set_response_headers(req: Request, next: Next) -> Response {
    let asset = is_asset_path(req.uri().path());
    let mut response = next.run(req).await;
    let status = response.status();
    // Only real asset content is immutable; a 404 must not be cached for a year.
    let immutable = asset && (status.is_success() || status == StatusCode::NOT_MODIFIED);
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            CACHE_IMMUTABLE
        } else {
            CACHE_REVALIDATE
        }),
    );
    response
}

/// One JSON log line per request: method, path (no query string), status, latency.
///
/// Latency is measured until the response head is ready, not until the body is sent.
async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_paths() {
        assert!(is_asset_path("/assets"));
        assert!(is_asset_path("/assets/"));
        assert!(is_asset_path("/assets/app-abc123.js"));
        assert!(!is_asset_path("/assetsfoo"));
        assert!(!is_asset_path("/"));
        assert!(!is_asset_path("/app/assets/x.js"));
    }

    #[test]
    fn header_constants_are_valid() {
        for (name, value) in SECURITY_HEADERS {
            HeaderName::from_static(name);
            HeaderValue::from_static(value);
        }
    }
}
