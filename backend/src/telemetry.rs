//! Logging (JSON lines on stdout) and optional OpenTelemetry trace export over OTLP/HTTP.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::OtelConfig;

/// Per-export HTTP timeout.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the trace pipeline alive; call [`Telemetry::shutdown`] to flush on exit.
#[must_use]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber. Must run inside the Tokio runtime when `otel` is
/// set, because exports are driven on that runtime.
pub fn init(log_filter: &str, otel: Option<&OtelConfig>) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(log_filter).map_err(|err| format!("RUST_LOG: {err}"))?;
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stdout);

    let provider = otel.map(build_provider).transpose()?;
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel_layer)
        .try_init()
        .map_err(|err| format!("cannot install the log subscriber: {err}"))?;

    if let Some(otel) = otel {
        tracing::info!(endpoint = %otel.traces_endpoint, service = %otel.service_name, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

fn build_provider(otel: &OtelConfig) -> Result<SdkTracerProvider, String> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "trace export needs a Tokio runtime".to_owned())?;
    let client = RuntimeHttpClient {
        inner: opentelemetry_http::hyper::HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
        runtime,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(otel.traces_endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|err| format!("cannot build the OTLP exporter: {err}"))?;
    let resource = Resource::builder()
        .with_service_name(otel.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::VERSION,
        ))
        .build();
    // Incoming `traceparent` headers (from Traefik or the browser) join our spans
    // to the caller's trace.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Flushes buffered spans. Blocking work, so it runs off the async workers.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "trace exporter shutdown failed"),
                Err(err) => tracing::warn!(error = %err, "trace exporter shutdown panicked"),
            }
        }
    }
}

/// The SDK's batch processor exports from its own thread with a plain executor, but
/// hyper needs Tokio's reactor. Spawning each export onto the server's runtime lets
/// us reuse hyper (already linked for axum) instead of pulling in reqwest.
#[derive(Debug)]
struct RuntimeHttpClient {
    inner: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}
