//! CORS: off unless configured; configured origins get preflight and response headers.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};

use crate::pg::TestDb;
use crate::support::{App, send};

fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/users")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .unwrap()
}

async fn allow_origin(app: &axum::Router, request: Request<Body>) -> (StatusCode, Option<String>) {
    let response = tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap();
    let allowed = response
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), allowed)
}

#[tokio::test]
async fn cors_headers_only_for_configured_origins() {
    let db = TestDb::migrated().await;
    let origin = "http://localhost:5173";

    let closed = timemanager_backend::app(timemanager_backend::AppState::new(db.pool.clone()));
    assert_eq!(allow_origin(&closed, preflight(origin)).await.1, None);

    let open = timemanager_backend::app(
        timemanager_backend::AppState::new(db.pool.clone()).with_cors(
            timemanager_backend::config::CorsOrigins::List(vec![origin.parse().unwrap()]),
        ),
    );
    let (status, allowed) = allow_origin(&open, preflight(origin)).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(allowed.as_deref(), Some(origin));
    assert_eq!(
        allow_origin(&open, preflight("https://evil.example"))
            .await
            .1,
        None
    );

    let get = Request::builder()
        .uri("/health")
        .header(header::ORIGIN, origin)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        allow_origin(&open, get).await,
        (StatusCode::OK, Some(origin.to_owned()))
    );

    // Unmatched routes still answer JSON 404 with CORS applied.
    let missing = send(
        &App::from(open),
        Request::builder()
            .uri("/nope")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    missing.error(StatusCode::NOT_FOUND);
}
