//! The operator's HTTP side of chat-core on `CHAT_CORE_HTTP_ADDR`:
//! `/healthz` (the database answers) and Prometheus `/metrics`.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use chat_runtime::metrics::Registry;

use crate::store::Store;

#[derive(Clone)]
struct HttpState {
    store: Store,
    metrics: Arc<Registry>,
}

/// The router for the operator endpoints; `metrics` is what `/metrics`
/// shows (see [`crate::metrics::registry`]).
pub fn router(store: Store, metrics: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { store, metrics })
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
    (
        [(
            axum::http::header::CONTENT_TYPE,
            chat_runtime::metrics::CONTENT_TYPE,
        )],
        chat_runtime::metrics::render(&state.metrics),
    )
}
