//! `/metrics`: the exact metric names and labels other components rely on.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::pg::TestDb;
use crate::support::{app, call, get, post};

#[tokio::test]
async fn metrics_expose_request_pool_and_build_series() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;

    post(
        &app,
        "/users",
        Some(json!({ "username": "ivan", "email": "ivan@example.com" })),
    )
    .await;
    get(&app, "/users/1").await;
    get(&app, "/users/999").await;
    get(&app, "/users/abc").await;
    get(&app, "/wp-login.php").await;
    get(&app, "/another/random/path").await;
    call(&app, Method::DELETE, "/users/1", None).await;

    let reply = get(&app, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text;
    let has = |line: &str| text.lines().any(|l| l == line);
    let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();

    for line in [
        "# TYPE http_requests_total counter",
        "# TYPE http_request_duration_seconds histogram",
        "# TYPE db_pool_connections gauge",
        "# TYPE db_pool_max_connections gauge",
        "# TYPE build_info gauge",
        r#"http_requests_total{method="POST",route="/users",status="201"} 1"#,
        r#"http_requests_total{method="GET",route="/users/{id}",status="200"} 1"#,
        r#"http_requests_total{method="GET",route="/users/{id}",status="404"} 1"#,
        r#"http_requests_total{method="GET",route="/users/{id}",status="400"} 1"#,
        r#"http_requests_total{method="DELETE",route="/users/{id}",status="405"} 1"#,
        // Unknown paths share one label value, whatever the URL.
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 2"#,
        r#"http_request_duration_seconds_bucket{method="POST",route="/users",status="201",le="+Inf"} 1"#,
        r#"http_request_duration_seconds_count{method="GET",route="/users/{id}",status="200"} 1"#,
        "db_pool_max_connections 10",
    ] {
        assert!(has(line), "missing line {line:?} in:\n{text}");
    }
    assert_eq!(
        series(
            r#"http_request_duration_seconds_bucket{method="GET",route="/users/{id}",status="200","#
        ),
        12
    );
    assert_eq!(series("http_request_duration_seconds_sum{"), 6);
    assert!(
        !text.contains("wp-login"),
        "raw paths must not become labels"
    );
    assert_eq!(series(r#"db_pool_connections{state="idle"} "#), 1);
    assert_eq!(series(r#"db_pool_connections{state="in_use"} "#), 1);
    let build = format!(
        r#"build_info{{version="{}",revision="{}"}} 1"#,
        env!("CARGO_PKG_VERSION"),
        timemanager_backend::REVISION
    );
    assert!(has(&build), "missing {build:?}");

    // Pool gauges are live: the requests above opened connections. (A released
    // connection returns to the idle set asynchronously, so only the total is stable.)
    let gauge = |state: &str| -> u32 {
        let prefix = format!("db_pool_connections{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(gauge("idle") + gauge("in_use") >= 1, "{text}");

    // Scrapes are requests too, recorded once the response is produced.
    let again = get(&app, "/metrics").await.text;
    assert!(
        again.contains(r#"http_requests_total{method="GET",route="/metrics",status="200"} 1"#),
        "{again}"
    );
}
