//! Request metrics and the per-request span, as one tower layer around the
//! gRPC server, and their Prometheus text rendering.
//!
//! Hand-rolled rather than a metrics framework: a handful of counters and
//! two histogram families is all chat-core exports, and the hot path costs
//! one short uncontended lock per request (atomics per batch for the
//! writer's figures).

use std::{
    collections::HashMap,
    fmt::Write as _,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use tower::{Layer, Service};
use tracing::Instrument;

use crate::store::PoolStats;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// At most this many distinct RPC names are tracked; calls to unknown paths
/// beyond it are counted as "other", so scanners cannot grow memory.
const MAX_METHODS: usize = 64;

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum_seconds: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Counts and latencies per RPC and gRPC status code.
#[derive(Debug, Default)]
pub struct RpcMetrics {
    series: Mutex<HashMap<String, HashMap<&'static str, Series>>>,
}

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

fn code_name(header: Option<&http::HeaderValue>) -> &'static str {
    // No grpc-status in the response headers means the status comes in the
    // trailers, which tonic only does for successful calls.
    let code = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    CODES.get(code).copied().unwrap_or("UNKNOWN")
}

impl RpcMetrics {
    /// Records a call that arrived inside a stream (`RelayService.Calls`)
    /// under its unary method's name, as if it had come as that RPC.
    pub fn observe_call(&self, method: &str, code: tonic::Code, seconds: f64) {
        let name = CODES.get(code as usize).copied().unwrap_or("UNKNOWN");
        self.observe(method, name, seconds);
    }

    fn observe(&self, method: &str, code: &'static str, seconds: f64) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let method = if series.contains_key(method) || series.len() < MAX_METHODS {
            method
        } else {
            "other"
        };
        if !series.contains_key(method) {
            series.insert(method.to_owned(), HashMap::new());
        }
        let Some(by_code) = series.get_mut(method) else {
            return;
        };
        let entry = by_code.entry(code).or_default();
        entry.count += 1;
        entry.sum_seconds += seconds;
        for (bucket, bound) in entry.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// The Prometheus text exposition of the request metrics and the
    /// database pool.
    pub fn render(&self, pool: PoolStats) -> String {
        let snapshot: Vec<(String, Vec<(&'static str, Series)>)> = match self.series.lock() {
            Ok(series) => series
                .iter()
                .map(|(m, codes)| {
                    (
                        m.clone(),
                        codes.iter().map(|(c, s)| (*c, s.clone())).collect(),
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP chat_core_grpc_requests_total gRPC calls by method and status code.\n",
        );
        out.push_str("# TYPE chat_core_grpc_requests_total counter\n");
        for (method, codes) in &snapshot {
            for (code, s) in codes {
                let _ = writeln!(
                    out,
                    "chat_core_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {}",
                    s.count
                );
            }
        }
        out.push_str(
            "# HELP chat_core_grpc_request_duration_seconds Time to the response headers.\n",
        );
        out.push_str("# TYPE chat_core_grpc_request_duration_seconds histogram\n");
        for (method, codes) in &snapshot {
            for (code, s) in codes {
                let labels = format!("method=\"{method}\",code=\"{code}\"");
                for (bound, count) in BUCKETS.iter().zip(s.buckets) {
                    let _ = writeln!(
                        out,
                        "chat_core_grpc_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                    );
                }
                let _ = writeln!(
                    out,
                    "chat_core_grpc_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    s.count
                );
                let _ = writeln!(
                    out,
                    "chat_core_grpc_request_duration_seconds_sum{{{labels}}} {}",
                    s.sum_seconds
                );
                let _ = writeln!(
                    out,
                    "chat_core_grpc_request_duration_seconds_count{{{labels}}} {}",
                    s.count
                );
            }
        }
        let _ = write!(
            out,
            "# HELP chat_core_db_pool_connections Open database connections.\n\
             # TYPE chat_core_db_pool_connections gauge\n\
             chat_core_db_pool_connections {}\n\
             # HELP chat_core_db_pool_idle_connections Idle database connections.\n\
             # TYPE chat_core_db_pool_idle_connections gauge\n\
             chat_core_db_pool_idle_connections {}\n\
             # HELP chat_core_db_pool_max_connections Database pool size limit.\n\
             # TYPE chat_core_db_pool_max_connections gauge\n\
             chat_core_db_pool_max_connections {}\n",
            pool.size, pool.idle, pool.max
        );
        out
    }
}

/// Batch size bucket bounds, in messages: powers of two up to the largest
/// batch the writer forms.
const BATCH_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// The group-commit writer's figures. Batch sizes tell whether load is
/// being batched at all (all ones: the database keeps up message by
/// message); fallbacks count batches that failed as a whole and were
/// retried one message at a time, which should stay rare.
#[derive(Debug, Default)]
pub struct WriterMetrics {
    batches: AtomicU64,
    messages: AtomicU64,
    buckets: [AtomicU64; BATCH_BUCKETS.len()],
    fallbacks: AtomicU64,
}

impl WriterMetrics {
    /// Records a batch of `size` messages taken from the queue.
    pub fn observe_batch(&self, size: usize) {
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.messages.fetch_add(size, Ordering::Relaxed);
        for (bucket, bound) in self.buckets.iter().zip(BATCH_BUCKETS) {
            if size <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records a batch retried message by message.
    pub fn observe_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the current queue depth (sends
    /// waiting for a batch).
    pub fn render(&self, queue_depth: usize) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str(
            "# HELP chat_core_writer_batch_size Messages per group-commit batch.\n\
             # TYPE chat_core_writer_batch_size histogram\n",
        );
        for (bound, count) in BATCH_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "chat_core_writer_batch_size_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let batches = self.batches.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "chat_core_writer_batch_size_bucket{{le=\"+Inf\"}} {batches}\n\
             chat_core_writer_batch_size_sum {}\n\
             chat_core_writer_batch_size_count {batches}\n\
             # HELP chat_core_writer_fallbacks_total Batches that failed and were retried message by message.\n\
             # TYPE chat_core_writer_fallbacks_total counter\n\
             chat_core_writer_fallbacks_total {}\n\
             # HELP chat_core_writer_queue_depth Sends queued for the next batch.\n\
             # TYPE chat_core_writer_queue_depth gauge\n\
             chat_core_writer_queue_depth {queue_depth}\n",
            self.messages.load(Ordering::Relaxed),
            self.fallbacks.load(Ordering::Relaxed),
        );
        out
    }
}

/// Wraps every gRPC call in a span carrying its request id (the caller's
/// `x-request-id`, or a new one) and records its status and latency.
#[derive(Debug, Clone)]
pub struct RpcObserverLayer {
    metrics: Arc<RpcMetrics>,
}

impl RpcObserverLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<RpcMetrics>) -> Self {
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
    metrics: Arc<RpcMetrics>,
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
        let span = tracing::info_span!("rpc", method = %method, request_id = %request_id);
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

    #[test]
    fn renders_counts_and_buckets() {
        let metrics = RpcMetrics::default();
        metrics.observe("/chat.v1.ChatService/SendMessage", "OK", 0.002);
        metrics.observe("/chat.v1.ChatService/SendMessage", "OK", 0.2);
        metrics.observe("/chat.v1.ChatService/SendMessage", "NOT_FOUND", 0.001);
        let text = metrics.render(PoolStats {
            size: 3,
            idle: 2,
            max: 10,
        });
        assert!(text.contains(
            "chat_core_grpc_requests_total{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\"} 2"
        ));
        assert!(text.contains(
            "chat_core_grpc_request_duration_seconds_bucket{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains("chat_core_db_pool_connections 3"));
        assert!(text.contains("chat_core_db_pool_max_connections 10"));
    }

    #[test]
    fn renders_batch_sizes_and_queue_depth() {
        let metrics = WriterMetrics::default();
        metrics.observe_batch(1);
        metrics.observe_batch(3);
        metrics.observe_batch(300);
        metrics.observe_fallback();
        let text = metrics.render(7);
        assert!(text.contains("chat_core_writer_batch_size_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("chat_core_writer_batch_size_bucket{le=\"4\"} 2\n"));
        assert!(text.contains("chat_core_writer_batch_size_bucket{le=\"256\"} 2\n"));
        assert!(text.contains("chat_core_writer_batch_size_bucket{le=\"512\"} 3\n"));
        assert!(text.contains("chat_core_writer_batch_size_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("chat_core_writer_batch_size_sum 304\n"));
        assert!(text.contains("chat_core_writer_batch_size_count 3\n"));
        assert!(text.contains("chat_core_writer_fallbacks_total 1\n"));
        assert!(text.contains("chat_core_writer_queue_depth 7\n"));
    }

    #[test]
    fn unknown_paths_cannot_grow_memory() {
        let metrics = RpcMetrics::default();
        for i in 0..1000 {
            metrics.observe(&format!("/scan/{i}"), "UNIMPLEMENTED", 0.0);
        }
        let series = metrics.series.lock().unwrap();
        assert!(series.len() <= MAX_METHODS + 1);
        assert_eq!(
            series["other"]["UNIMPLEMENTED"].count,
            1000 - MAX_METHODS as u64
        );
    }
}
