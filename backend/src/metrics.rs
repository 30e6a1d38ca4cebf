//! Prometheus metrics: per-request middleware, registry and text exposition at `/metrics`.
//!
//! Hand-rolled rather than a metrics crate: the set is small and fixed, and this keeps
//! the exact names and the classic text format (0.0.4) that dashboards depend on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry_http::HeaderExtractor;
use sqlx::PgPool;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::AppState;

/// Histogram upper bounds in seconds (Prometheus client defaults: 5 ms to 10 s).
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Route label for requests no route matched; a fixed value keeps scanners probing
/// random URLs from creating unbounded label values.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Default)]
struct Series {
    count: u64,
    sum_seconds: f64,
    /// Non-cumulative counts per bucket; the last slot is the +Inf overflow.
    buckets: [u64; BUCKETS.len() + 1],
}

/// HTTP request metrics. `http_requests_total` is the histogram's count, so both are
/// stored once.
#[derive(Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<SeriesKey, Series>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one finished request.
    pub fn observe(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let key = SeriesKey {
            route: route.to_owned(),
            method: method_label(method),
            status: status.as_u16(),
        };
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        // A panic elsewhere while holding the lock cannot leave a series half-updated
        // in a harmful way, so a poisoned lock is still usable.
        let mut http = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        let series = http.entry(key).or_default();
        series.count += 1;
        series.sum_seconds += seconds;
        series.buckets[bucket] += 1;
    }

    /// Renders all metrics in the Prometheus text exposition format. Pool gauges
    /// are read now so they are fresh at scrape time.
    pub fn render(&self, pool: &PgPool) -> String {
        let mut out = String::with_capacity(4096);
        {
            let http = self.http.lock().unwrap_or_else(PoisonError::into_inner);

            out.push_str("# HELP http_requests_total Total HTTP requests by method, route template and status code.\n");
            out.push_str("# TYPE http_requests_total counter\n");
            for (key, series) in http.iter() {
                let _ = writeln!(
                    out,
                    "http_requests_total{{{}}} {}",
                    key.labels(),
                    series.count
                );
            }

            out.push_str("# HELP http_request_duration_seconds HTTP request latency by method, route template and status code.\n");
            out.push_str("# TYPE http_request_duration_seconds histogram\n");
            for (key, series) in http.iter() {
                let labels = key.labels();
                let mut cumulative = 0;
                for (bound, count) in BUCKETS.iter().zip(series.buckets.iter()) {
                    cumulative += count;
                    let _ = writeln!(
                        out,
                        "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    series.count
                );
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_sum{{{labels}}} {}",
                    series.sum_seconds
                );
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_count{{{labels}}} {}",
                    series.count
                );
            }
        }

        let size = pool.size();
        // num_idle() and size() are read separately, so clamp rather than underflow.
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
        out.push_str("# HELP db_pool_connections Database pool connections by state.\n");
        out.push_str("# TYPE db_pool_connections gauge\n");
        let _ = writeln!(out, "db_pool_connections{{state=\"idle\"}} {idle}");
        let _ = writeln!(
            out,
            "db_pool_connections{{state=\"in_use\"}} {}",
            size - idle
        );
        out.push_str("# HELP db_pool_max_connections Maximum size of the database pool.\n");
        out.push_str("# TYPE db_pool_max_connections gauge\n");
        let _ = writeln!(
            out,
            "db_pool_max_connections {}",
            pool.options().get_max_connections()
        );

        out.push_str("# HELP build_info Build metadata; the value is always 1.\n");
        out.push_str("# TYPE build_info gauge\n");
        let _ = writeln!(
            out,
            "build_info{{version=\"{}\",revision=\"{}\"}} 1",
            escape(crate::VERSION),
            escape(crate::REVISION)
        );
        out
    }
}

impl SeriesKey {
    fn labels(&self) -> String {
        format!(
            "method=\"{}\",route=\"{}\",status=\"{}\"",
            self.method,
            escape(&self.route),
            self.status
        )
    }
}

/// Standard methods keep their name; anything else is folded into "other" because
/// clients can send arbitrary method tokens.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Escapes a label value per the exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`.
pub async fn metrics_handler(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.pool);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

/// Middleware wrapped around every route: opens the request span (joining an incoming
/// W3C `traceparent`), records metrics and writes the one access-log line.
pub async fn track_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();

    let span = tracing::info_span!(
        "http_request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(req.headers()))
    });
    // Only fails when no OpenTelemetry layer is installed, i.e. tracing export is off.
    let _ = span.set_parent(parent);

    let response = next.run(req).instrument(span.clone()).await;

    let status = response.status();
    let elapsed = started.elapsed();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    state.metrics.observe(&method, &route, status, elapsed);
    tracing::info!(
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_labels_escaped() {
        let metrics = Metrics::new();
        let get = Method::GET;
        metrics.observe(
            &get,
            "/users/{id}",
            StatusCode::OK,
            Duration::from_millis(3),
        );
        metrics.observe(
            &get,
            "/users/{id}",
            StatusCode::OK,
            Duration::from_millis(30),
        );
        metrics.observe(&get, "/users/{id}", StatusCode::OK, Duration::from_secs(60));
        metrics.observe(
            &Method::from_bytes(b"BREW").unwrap(),
            "a\"b",
            StatusCode::OK,
            Duration::ZERO,
        );
        let http = metrics.http.lock().unwrap();
        let key = SeriesKey {
            route: "/users/{id}".into(),
            method: "GET",
            status: 200,
        };
        let series = &http[&key];
        assert_eq!(series.count, 3);
        assert_eq!(series.buckets[0], 1);
        assert_eq!(series.buckets[3], 1);
        assert_eq!(series.buckets[BUCKETS.len()], 1);
        let odd = SeriesKey {
            route: "a\"b".into(),
            method: "other",
            status: 200,
        };
        assert_eq!(odd.labels(), r#"method="other",route="a\"b",status="200""#);
    }
}
