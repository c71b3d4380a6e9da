//! chat-core's `/metrics`: the request figures of every gRPC call (and of
//! each call carried on a `RelayService.Calls` stream, under its unary
//! method's name), the group-commit writer, the live-event hub and Redis
//! outbox, the database pool, the gRPC listener's caps and the process, on
//! `prometheus-client`; plus the tower layer that records each call and
//! opens its span.
//!
//! The hot path allocates nothing for labels: method names are resolved to
//! `&'static str` from the service descriptors once per process, and the
//! handles of each method's successful calls (most calls) are resolved once
//! at start.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use chat_runtime::metrics::{Counter, Family, Histogram, Registry, counter_fn, gauge_fn};
use prost::Message as _;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{bus::EventBus, store::Store, writer::MessageWriter};

/// gRPC status code names, indexed by code.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The label of calls to paths no service has: scanners cannot grow the
/// number of series.
const OTHER: &str = "other";

fn code_name(header: Option<&http::HeaderValue>) -> &'static str {
    // No grpc-status in the response headers means the status comes in the
    // trailers, which tonic only does for successful calls.
    let code = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    CODES.get(code).copied().unwrap_or("UNKNOWN")
}

/// Every gRPC path chat-core serves, from the services' descriptors, made
/// `'static` once per process.
fn known_methods() -> &'static HashMap<&'static str, &'static str> {
    static METHODS: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut paths: Vec<String> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .map(str::to_owned)
        .to_vec();
        for encoded in [
            chat_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = service.name.unwrap_or_default();
                    for method in service.method {
                        paths.push(format!(
                            "/{package}.{name}/{}",
                            method.name.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        paths
            .into_iter()
            .map(|path| {
                let path: &'static str = Box::leak(path.into_boxed_str());
                (path, path)
            })
            .collect()
    })
}

/// Labels of a call's series: method and status code.
type CallLabels = [(&'static str, &'static str); 2];

/// Counts and latencies per RPC and gRPC status code.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    requests: Family<CallLabels, Counter>,
    durations: Family<CallLabels, Histogram, fn() -> Histogram>,
    /// Each known method's `OK` series, resolved once.
    ok: Arc<HashMap<&'static str, (Counter, Histogram)>>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        let requests = Family::<CallLabels, Counter>::default();
        let durations = Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            chat_runtime::metrics::latency_histogram,
        );
        let ok = known_methods()
            .values()
            .map(|&method| {
                let labels = [("method", method), ("code", "OK")];
                (
                    method,
                    (
                        requests.get_or_create_owned(&labels),
                        durations.get_or_create_owned(&labels),
                    ),
                )
            })
            .collect();
        RpcMetrics {
            requests,
            durations,
            ok: Arc::new(ok),
        }
    }
}

impl RpcMetrics {
    /// Records a call that arrived inside a stream (`RelayService.Calls`)
    /// under its unary method's name, as if it had come as that RPC.
    pub fn observe_call(&self, method: &str, code: tonic::Code, seconds: f64) {
        let name = CODES.get(code as usize).copied().unwrap_or("UNKNOWN");
        self.observe(method, name, seconds);
    }

    fn observe(&self, method: &str, code: &'static str, seconds: f64) {
        if code == "OK"
            && let Some((count, duration)) = self.ok.get(method)
        {
            count.inc();
            duration.observe(seconds);
            return;
        }
        let method = known_methods().get(method).copied().unwrap_or(OTHER);
        let labels = [("method", method), ("code", code)];
        self.requests.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(seconds);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "chat_core_grpc_requests",
            "gRPC calls by method and status code.",
            self.requests.clone(),
        );
        registry.register(
            "chat_core_grpc_request_duration_seconds",
            "Time to the response headers.",
            self.durations.clone(),
        );
    }
}

/// Batch size bucket bounds, in messages: powers of two up to the largest
/// batch the writer forms.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The group-commit writer's figures. Batch sizes tell whether load is
/// being batched at all (all ones: the database keeps up message by
/// message); fallbacks count batches that failed as a whole and were
/// retried one message at a time, which should stay rare.
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    batch_sizes: Histogram,
    fallbacks: Counter,
    /// Batches and messages, for callers reading them back (the
    /// histogram keeps its totals to itself).
    batches: Counter,
    messages: Counter,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            batch_sizes: Histogram::new(BATCH_BUCKETS),
            fallbacks: Counter::default(),
            batches: Counter::default(),
            messages: Counter::default(),
        }
    }
}

impl WriterMetrics {
    /// Records a batch of `size` messages taken from the queue.
    pub fn observe_batch(&self, size: usize) {
        self.batch_sizes.observe(size as f64);
        self.batches.inc();
        self.messages.inc_by(size as u64);
    }

    /// Records a batch retried message by message.
    pub fn observe_fallback(&self) {
        self.fallbacks.inc();
    }

    /// Batches formed and messages in them, since start.
    pub fn batches(&self) -> (u64, u64) {
        (self.batches.get(), self.messages.get())
    }

    /// Batches retried message by message, since start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.get()
    }
}

/// What `/metrics` shows of one chat-core.
pub struct Sources {
    /// Request figures, shared with the gRPC layer and the call streams.
    pub rpc: RpcMetrics,
    /// The writer (batching, queue depth).
    pub writer: MessageWriter,
    /// The database pool.
    pub store: Store,
    /// The live-event hub and the Redis outbox.
    pub bus: EventBus,
    /// The gRPC listener's caps.
    pub connections: Arc<chat_runtime::connections::ConnectionLimiter>,
    /// The presence announcer's counts.
    pub presence: Arc<crate::presence::PresenceStats>,
}

/// The registry behind `/metrics`: every family chat-core exports.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    sources.rpc.register(&mut registry);
    chat_runtime::metrics::register_connections(
        &mut registry,
        "chat_core_grpc",
        &sources.connections,
    );
    let store = sources.store;
    for (name, help, read) in [
        (
            "chat_core_db_pool_connections",
            "Open database connections.",
            (|s: &Store| s.pool_stats().size) as fn(&Store) -> u32,
        ),
        (
            "chat_core_db_pool_idle_connections",
            "Idle database connections.",
            |s: &Store| s.pool_stats().idle,
        ),
        (
            "chat_core_db_pool_max_connections",
            "Database pool size limit.",
            |s: &Store| s.pool_stats().max,
        ),
    ] {
        let store = store.clone();
        gauge_fn(&mut registry, name, help, move || i64::from(read(&store)));
    }
    let writer_metrics = sources.writer.metrics().clone();
    registry.register(
        "chat_core_writer_batch_size",
        "Messages per group-commit batch.",
        writer_metrics.batch_sizes.clone(),
    );
    registry.register(
        "chat_core_writer_fallbacks",
        "Batches that failed and were retried message by message.",
        writer_metrics.fallbacks.clone(),
    );
    let writer = sources.writer;
    gauge_fn(
        &mut registry,
        "chat_core_writer_queue_depth",
        "Sends queued for the next batch.",
        move || writer.queue_depth() as i64,
    );
    let hub = sources.bus.hub().clone();
    let stats = hub.stats().clone();
    gauge_fn(
        &mut registry,
        "chat_core_live_subscriptions",
        "Live subscriptions on this replica (Subscribe streams and relay subscriptions).",
        move || stats.live.load(std::sync::atomic::Ordering::Relaxed) as i64,
    );
    let stats = hub.stats().clone();
    counter_fn(
        &mut registry,
        "chat_core_slow_subscribers",
        "Subscribers cut off because their queue was full.",
        move || stats.cut_off.load(std::sync::atomic::Ordering::Relaxed),
    );
    counter_fn(
        &mut registry,
        "chat_core_live_resyncs",
        "Times every subscriber was told to catch up from the database.",
        move || hub.resyncs(),
    );
    for (name, help, read) in [
        (
            "chat_core_outbox_published",
            "Live events published to Redis.",
            (|o: crate::bus::OutboxStats| o.published) as fn(crate::bus::OutboxStats) -> u64,
        ),
        (
            "chat_core_outbox_dropped",
            "Live events dropped from the Redis outbox (each makes every replica resync).",
            |o: crate::bus::OutboxStats| o.dropped,
        ),
    ] {
        let bus = sources.bus.clone();
        counter_fn(&mut registry, name, help, move || read(bus.outbox()));
    }
    let bus = sources.bus;
    gauge_fn(
        &mut registry,
        "chat_core_outbox_depth",
        "Live events waiting to be published to Redis.",
        move || bus.outbox().depth as i64,
    );
    let presence = sources.presence.clone();
    counter_fn(
        &mut registry,
        "chat_core_presence_announced",
        "Presence changes announced to co-participants by this replica.",
        move || {
            presence
                .announced
                .load(std::sync::atomic::Ordering::Relaxed)
        },
    );
    let presence = sources.presence;
    gauge_fn(
        &mut registry,
        "chat_core_presence_backlog",
        "Presence changes committed and waiting to be announced by this replica.",
        move || {
            let queued = presence.queued.load(std::sync::atomic::Ordering::Relaxed);
            let announced = presence
                .announced
                .load(std::sync::atomic::Ordering::Relaxed);
            queued.saturating_sub(announced) as i64
        },
    );
    chat_runtime::metrics::register_process(&mut registry);
    registry
}

/// A call's span: its method and request id for the logs, and, when
/// traces are exported, the fields that name it there (left out
/// otherwise: the log layer formats every field of every span).
pub(crate) fn rpc_span(method: &str, request_id: &str) -> tracing::Span {
    if chat_runtime::telemetry::enabled() {
        tracing::info_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            method = %method,
            request_id = %request_id,
        )
    } else {
        tracing::info_span!("rpc", method = %method, request_id = %request_id)
    }
}

/// Wraps every gRPC call in a span carrying its request id (the caller's
/// `x-request-id`, or a new one) and records its status and latency.
#[derive(Debug, Clone)]
pub struct RpcObserverLayer {
    metrics: RpcMetrics,
}

impl RpcObserverLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: RpcMetrics) -> Self {
        RpcObserverLayer { metrics }
    }
}

impl<S> Layer<S> for RpcObserverLayer {
    type Service = RpcObserver<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcObserver {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`RpcObserverLayer`].
#[derive(Debug, Clone)]
pub struct RpcObserver<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcObserver<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().to_owned();
        let request_id = match request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
        {
            Some(id) => id.to_owned(),
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                if let Ok(value) = http::HeaderValue::from_str(&id) {
                    request.headers_mut().insert("x-request-id", value);
                }
                id
            }
        };
        let span = rpc_span(&method, &request_id);
        chat_runtime::telemetry::continue_from_headers(&span, request.headers());
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(
            async move {
                let result = response.await;
                let elapsed = started.elapsed().as_secs_f64();
                let code = match &result {
                    Ok(response) => code_name(response.headers().get("grpc-status")),
                    Err(_) => "UNKNOWN",
                };
                metrics.observe(&method, code, elapsed);
                tracing::debug!(code, elapsed_ms = elapsed * 1000.0, "rpc finished");
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(metrics: &RpcMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        chat_runtime::metrics::render(&registry)
    }

    #[test]
    fn renders_counts_and_buckets() {
        let metrics = RpcMetrics::default();
        metrics.observe("/chat.v1.ChatService/SendMessage", "OK", 0.002);
        metrics.observe("/chat.v1.ChatService/SendMessage", "OK", 0.2);
        metrics.observe("/chat.v1.ChatService/SendMessage", "NOT_FOUND", 0.001);
        let text = render(&metrics);
        for line in [
            "chat_core_grpc_requests_total{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\"} 2\n",
            "chat_core_grpc_requests_total{method=\"/chat.v1.ChatService/SendMessage\",code=\"NOT_FOUND\"} 1\n",
            "chat_core_grpc_request_duration_seconds_bucket{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\",le=\"0.002\"} 1\n",
            "chat_core_grpc_request_duration_seconds_bucket{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\",le=\"0.001\"} 0\n",
            "chat_core_grpc_request_duration_seconds_count{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\"} 2\n",
            // Known methods are there from the start.
            "chat_core_grpc_requests_total{method=\"/grpc.health.v1.Health/Check\",code=\"OK\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn unknown_paths_cannot_grow_the_series() {
        let metrics = RpcMetrics::default();
        for i in 0..1000 {
            metrics.observe(&format!("/scan/{i}"), "UNIMPLEMENTED", 0.0);
        }
        let text = render(&metrics);
        assert!(!text.contains("/scan/"));
        assert!(text.contains(
            "chat_core_grpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"} 1000\n"
        ));
    }

    #[test]
    fn batch_sizes_and_fallbacks() {
        let metrics = WriterMetrics::default();
        metrics.observe_batch(1);
        metrics.observe_batch(3);
        metrics.observe_batch(300);
        metrics.observe_fallback();
        assert_eq!(metrics.batches(), (3, 304));
        assert_eq!(metrics.fallbacks(), 1);
        let mut registry = Registry::default();
        registry.register("b", "b", metrics.batch_sizes.clone());
        let text = chat_runtime::metrics::render(&registry);
        assert!(
            text.contains("b_bucket{le=\"4.0\"} 2\n") || text.contains("b_bucket{le=\"4\"} 2\n"),
            "{text}"
        );
    }
}
