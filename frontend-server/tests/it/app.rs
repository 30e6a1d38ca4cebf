//! In-process tests of `app()` through `tower::ServiceExt::oneshot`.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::Response;
use timemanager_frontend_server::Drain;
use tower::ServiceExt as _;

use crate::fixture::{ASSET_JS, ASSET_JS_GZ, ASSET_PATH, INDEX_HTML, SECRET, Site};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

async fn send(site: &Site, request: Request<Body>) -> (Response, Bytes) {
    let response = timemanager_frontend_server::app(&site.config(), &Drain::default())
        .oneshot(request)
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (Response::from_parts(parts, Body::empty()), bytes)
}

async fn get(site: &Site, uri: &str, headers: &[(header::HeaderName, &str)]) -> (Response, Bytes) {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    send(site, request.body(Body::empty()).unwrap()).await
}

fn header(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).map(|value| value.to_str().unwrap())
}

fn assert_security_headers(response: &Response) {
    let headers = response.headers();
    assert_eq!(header(headers, "content-security-policy"), Some(CSP));
    assert_eq!(header(headers, "x-frame-options"), Some("DENY"));
    assert_eq!(header(headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(headers, "referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(
        header(headers, "permissions-policy"),
        Some("camera=(), microphone=(), geolocation=()")
    );
    assert!(headers.get("strict-transport-security").is_none());
}

fn assert_index(response: &Response, body: &[u8]) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, INDEX_HTML.as_bytes());
    assert_eq!(
        header(response.headers(), header::CONTENT_TYPE),
        Some("text/html")
    );
    assert_eq!(
        header(response.headers(), header::CACHE_CONTROL),
        Some("no-cache")
    );
    assert_security_headers(response);
}

#[tokio::test]
async fn root_and_index_html_are_served_with_no_cache() {
    let site = Site::new();
    for uri in ["/", "/index.html"] {
        let (response, body) = get(&site, uri, &[]).await;
        assert_index(&response, &body);
        assert!(
            response.headers().contains_key(header::LAST_MODIFIED),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_fall_back_to_index_html() {
    let site = Site::new();
    for uri in [
        "/some/route",
        "/some/route/",
        "/clock-in?week=12",
        "/reports/2026/11",
        "/favicon.ico",
    ] {
        let (response, body) = get(&site, uri, &[]).await;
        assert_index(&response, &body);
    }
}

#[tokio::test]
async fn head_on_a_client_route_returns_index_headers_without_body() {
    let site = Site::new();
    let request = Request::head("/some/route").body(Body::empty()).unwrap();
    let (response, body) = send(&site, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(
        header(response.headers(), header::CONTENT_LENGTH),
        Some(INDEX_HTML.len().to_string().as_str())
    );
    assert_eq!(
        header(response.headers(), header::CACHE_CONTROL),
        Some("no-cache")
    );
}

#[tokio::test]
async fn asset_is_served_uncompressed_and_immutable_without_accept_encoding() {
    let site = Site::new();
    let (response, body) = get(&site, ASSET_PATH, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, ASSET_JS.as_bytes());
    let headers = response.headers();
    assert_eq!(
        header(headers, header::CONTENT_TYPE),
        Some("text/javascript")
    );
    assert_eq!(header(headers, header::CACHE_CONTROL), Some(IMMUTABLE));
    assert_eq!(header(headers, header::CONTENT_ENCODING), None);
    assert_eq!(header(headers, header::VARY), Some("accept-encoding"));
    assert_security_headers(&response);
}

#[tokio::test]
async fn gzip_variant_is_served_only_when_accepted() {
    let site = Site::new();

    let (response, body) = get(
        &site,
        ASSET_PATH,
        &[(header::ACCEPT_ENCODING, "gzip, deflate, br")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body.as_ref(), ASSET_JS_GZ);
    let headers = response.headers();
    assert_eq!(header(headers, header::CONTENT_ENCODING), Some("gzip"));
    assert_eq!(
        header(headers, header::CONTENT_TYPE),
        Some("text/javascript")
    );
    assert_eq!(header(headers, header::VARY), Some("accept-encoding"));
    assert_eq!(header(headers, header::CACHE_CONTROL), Some(IMMUTABLE));
    assert_security_headers(&response);

    for refused in ["br", "identity", "gzip;q=0"] {
        let (response, body) = get(&site, ASSET_PATH, &[(header::ACCEPT_ENCODING, refused)]).await;
        assert_eq!(response.status(), StatusCode::OK, "{refused}");
        assert_eq!(body, ASSET_JS.as_bytes(), "{refused}");
        assert_eq!(
            header(response.headers(), header::CONTENT_ENCODING),
            None,
            "{refused}"
        );
    }
}

#[tokio::test]
async fn missing_asset_is_404_not_index_html() {
    let site = Site::new();
    for uri in [
        "/assets/app-deadbeef.js",
        "/assets/nested/missing.css",
        "/assets",
        "/assets/",
    ] {
        let (response, body) = get(&site, uri, &[(header::ACCEPT_ENCODING, "gzip")]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
        assert!(body.is_empty(), "{uri}");
        // A 404 must not be cached as immutable.
        assert_eq!(
            header(response.headers(), header::CACHE_CONTROL),
            Some("no-cache"),
            "{uri}"
        );
        assert_security_headers(&response);
    }
}

#[tokio::test]
async fn if_modified_since_yields_304() {
    let site = Site::new();
    for (uri, cache_control) in [
        (ASSET_PATH, IMMUTABLE),
        ("/index.html", "no-cache"),
        ("/some/route", "no-cache"),
    ] {
        let (first, _) = get(&site, uri, &[]).await;
        let last_modified = header(first.headers(), header::LAST_MODIFIED)
            .unwrap()
            .to_owned();

        let (response, body) =
            get(&site, uri, &[(header::IF_MODIFIED_SINCE, &last_modified)]).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{uri}");
        assert!(body.is_empty(), "{uri}");
        assert_eq!(
            header(response.headers(), header::CACHE_CONTROL),
            Some(cache_control),
            "{uri}"
        );
        assert_security_headers(&response);

        let (stale, _) = get(
            &site,
            uri,
            &[(header::IF_MODIFIED_SINCE, "Thu, 01 Jan 1970 00:00:00 GMT")],
        )
        .await;
        assert_eq!(stale.status(), StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn health_reports_index_readability() {
    let site = Site::new();
    let (response, body) = get(&site, "/health", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body.as_ref(), br#"{"status":"ok"}"#);
    assert_eq!(
        header(response.headers(), header::CONTENT_TYPE),
        Some("application/json")
    );
    assert_security_headers(&response);

    std::fs::remove_file(site.index_html()).unwrap();
    let (response, body) = get(&site, "/health", &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.as_ref(), br#"{"status":"unavailable"}"#);
    assert_security_headers(&response);

    // The SPA fallback cannot serve a missing index either: 503, not an empty 200.
    let (response, _) = get(&site, "/some/route", &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_security_headers(&response);
}

#[tokio::test]
async fn non_get_methods_are_rejected_with_security_headers() {
    let site = Site::new();
    for uri in ["/", "/some/route", ASSET_PATH] {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let (response, _) = send(&site, request).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{uri}");
        assert_security_headers(&response);
    }
}

#[tokio::test]
async fn path_traversal_does_not_escape_static_dir() {
    let site = Site::new();
    assert!(site.path().join("../secret.txt").is_file());
    for uri in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
    ] {
        let (response, body) = get(&site, uri, &[]).await;
        assert_ne!(body, SECRET.as_bytes(), "{uri}");
        assert!(
            response.status() == StatusCode::NOT_FOUND || body == INDEX_HTML.as_bytes(),
            "{uri}: {}",
            response.status()
        );
    }
}

#[tokio::test]
async fn health_is_503_draining_once_the_drain_started_while_files_are_still_served() {
    let site = Site::new();
    let drain = Drain::default();
    let app = timemanager_frontend_server::app(&site.config(), &drain);
    let health = || Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(
        app.clone().oneshot(health()).await.unwrap().status(),
        StatusCode::OK
    );

    drain.start();
    let response = app.clone().oneshot(health()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_security_headers(&response);
    let body = axum::body::to_bytes(response.into_body(), 1 << 10)
        .await
        .unwrap();
    assert_eq!(body.as_ref(), br#"{"status":"draining"}"#);

    let page = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}
