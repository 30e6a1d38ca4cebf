//! `/health` in-process: database reachable (200) and unreachable (503).

use axum::http::StatusCode;
use sqlx::postgres::PgConnectOptions;

use crate::pg::{TestDb, free_port};
use crate::support::{App, app, get};

#[tokio::test]
async fn healthy_database_gives_200_with_version_and_revision() {
    let db = TestDb::migrated().await;
    let reply = get(&app(&db).await, "/health").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.content_type.starts_with("application/json"));
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "status": "ok",
            "database": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "revision": timemanager_backend::REVISION,
        })
    );
}

#[tokio::test]
async fn unreachable_database_gives_503_within_the_timeout() {
    // Nothing listens on this port: every connection attempt is refused.
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(free_port())
        .username("nobody");
    let pool = timemanager_backend::pool(options);
    let app = App::from(timemanager_backend::app(
        timemanager_backend::AppState::new(pool),
    ));

    let started = std::time::Instant::now();
    let reply = get(&app, "/health").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    let json = reply.json();
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["database"], "unavailable");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
}
