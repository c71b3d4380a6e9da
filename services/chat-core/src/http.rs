//! The operator's HTTP side of chat-core on `CHAT_CORE_HTTP_ADDR`:
//! `/healthz` (the database answers) and Prometheus `/metrics`.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{metrics::RpcMetrics, store::Store, writer::MessageWriter};

#[derive(Clone)]
struct HttpState {
    store: Store,
    metrics: Arc<RpcMetrics>,
    writer: MessageWriter,
    connections: Arc<chat_runtime::connections::ConnectionLimiter>,
}

/// The router for the operator endpoints; `writer` for its batching
/// figures, `connections` for the gRPC listener's.
pub fn router(
    store: Store,
    metrics: Arc<RpcMetrics>,
    writer: MessageWriter,
    connections: Arc<chat_runtime::connections::ConnectionLimiter>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState {
            store,
            metrics,
            writer,
            connections,
        })
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(err) => {
            tracing::warn!(error = %err, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut text = state.metrics.render(state.store.pool_stats());
    text.push_str(&state.writer.metrics().render(state.writer.queue_depth()));
    state.connections.render("chat_core_grpc", &mut text);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
