//! `GET /health`: liveness plus a bounded database round-trip, and 503 while draining.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::AppState;

/// Upper bound for the database check, so a hung database turns into a fast 503
/// instead of a probe timeout.
pub const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    /// Absent while draining: the database is not checked then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    pub version: &'static str,
    pub revision: &'static str,
}

pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    // After SIGTERM: tell the load balancer to stop sending requests here, however
    // healthy the database is (see `timemanager_shutdown`).
    if state.drain.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "draining",
                database: None,
                version: crate::VERSION,
                revision: crate::REVISION,
            }),
        );
    }
    let check = sqlx::query("SELECT 1").execute(&state.pool);
    let database_ok = match tokio::time::timeout(DB_CHECK_TIMEOUT, check).await {
        Ok(Ok(_)) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database query failed");
            false
        }
        Err(_) => {
            tracing::warn!(
                timeout_s = DB_CHECK_TIMEOUT.as_secs(),
                "health check: database did not answer in time"
            );
            false
        }
    };
    let (status, body_status, database) = if database_ok {
        (StatusCode::OK, "ok", "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded", "unavailable")
    };
    (
        status,
        Json(Health {
            status: body_status,
            database: Some(database),
            version: crate::VERSION,
            revision: crate::REVISION,
        }),
    )
}
