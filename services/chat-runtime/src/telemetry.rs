//! Distributed tracing with OpenTelemetry: when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, the process's `tracing` spans are exported over OTLP/gRPC (the
//! standard `OTEL_*` variables apply: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`…), and
//! W3C `traceparent` is read from incoming requests and written into
//! outgoing gRPC metadata, so one request is one trace across the gateway
//! and chat-core.
//!
//! When the variable is not set nothing is installed: no exporter, no
//! OpenTelemetry layer, and every propagation helper here returns after
//! one relaxed load.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::ConfigError;

/// The variable that turns export on.
pub const ENDPOINT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Whether spans are exported in this process (set once, at start).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether trace context is propagated (export is on).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter, kept to flush what is buffered at exit.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporter. Call at exit,
    /// from the runtime (the export runs on the runtime's reactor).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(err) = provider.shutdown() {
                    eprintln!("exporting the last spans failed: {err}");
                }
            })
            .await;
        }
    }
}

/// The OpenTelemetry layer for `service`, when `endpoint` is set; `None`
/// (and nothing installed) otherwise. Must run inside the Tokio runtime:
/// the OTLP exporter uses its reactor.
pub(crate) fn layer<S>(
    service: &'static str,
    endpoint: Option<&str>,
) -> Result<(Option<impl tracing_subscriber::Layer<S>>, Telemetry), ConfigError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let Some(_endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
        return Ok((None, Telemetry::default()));
    };
    // The builder reads the endpoint (and headers, timeout, compression)
    // from the standard variables itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|err| ConfigError::new(ENDPOINT_VARIABLE, err.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer(service);
    ENABLED.store(true, Ordering::Relaxed);
    Ok((
        Some(tracing_opentelemetry::layer().with_tracer(tracer)),
        Telemetry {
            provider: Some(provider),
        },
    ))
}

/// Reads trace context from HTTP headers (a browser's request, or a gRPC
/// call's metadata as chat-core receives it).
struct HeaderSource<'a>(&'a http::HeaderMap);

impl Extractor for HeaderSource<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes trace context into gRPC metadata.
struct MetadataSink<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataSink<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads trace context from one `traceparent` value.
struct TraceparentSource<'a>(&'a str);

impl Extractor for TraceparentSource<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Collects what the propagator writes, for [`traceparent`].
struct TraceparentSink(Option<String>);

impl Injector for TraceparentSink {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

fn parent_of(span: &tracing::Span, cx: Context) {
    use opentelemetry::trace::TraceContextExt as _;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of the trace context in `headers` (W3C
/// `traceparent`), if they carry one.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    parent_of(
        span,
        TraceContextPropagator::new().extract(&HeaderSource(headers)),
    );
}

/// Makes `span` a child of the trace context in one `traceparent` value
/// (a call carried on a shared stream); empty: none.
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if !enabled() || traceparent.is_empty() {
        return;
    }
    parent_of(
        span,
        TraceContextPropagator::new().extract(&TraceparentSource(traceparent)),
    );
}

/// Writes the current span's trace context into `metadata`, so the callee
/// continues the trace.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataSink(metadata));
}

/// The current span's trace context as a W3C `traceparent` value, for a
/// call carried on a shared stream; empty when export is off or there is no
/// span.
pub fn traceparent() -> String {
    if !enabled() {
        return String::new();
    }
    let cx = tracing::Span::current().context();
    let mut sink = TraceparentSink(None);
    TraceContextPropagator::new().inject_context(&cx, &mut sink);
    sink.0.unwrap_or_default()
}
