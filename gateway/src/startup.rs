//! Wiring: configuration → token checks and the chat-core upstream → one
//! HTTP server. [`Application::build`] binds the listener so tests learn
//! the real port.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use chat_auth::TokenVerifier;
use tokio::net::TcpListener;
use tower::Layer as _;
use tracing::Instrument as _;

use crate::{
    config::Settings,
    edge::{self, RateLimiter},
    rest::{self, AppState, RequestId},
    upstream::Upstream,
    ws,
};

/// A built gateway: upstream prepared, listener bound.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    stop: tokio::sync::watch::Sender<bool>,
    shutdown_grace: std::time::Duration,
    timeouts: crate::listener::Timeouts,
    presence: crate::upstream::PresenceReporter,
}

impl Application {
    /// Prepares token checks and the chat-core channel and binds
    /// `GATEWAY_ADDR`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let verifier = TokenVerifier::new(&settings.jwt).context("loading the JWT key")?;
        let upstream = Upstream::new(&settings.chat_core_urls, settings.upstream_timeout)
            .context("CHAT_CORE_URL")?;
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADDR {}", settings.addr))?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let presence = crate::upstream::PresenceReporter::new();
        let user_sockets =
            edge::UserSockets::new(settings.max_sockets_per_user, Some(presence.clone()));
        upstream.report_presence(&presence, Arc::downgrade(&user_sockets), shutdown.clone());
        let open_sockets = Arc::default();
        let metrics = crate::metrics::GatewayMetrics::default();
        let connections = chat_runtime::connections::ConnectionLimiter::new(
            "chat-gateway",
            settings.max_connections,
            settings.max_connections_per_address,
        );
        let mut registry = metrics.registry(Arc::clone(&open_sockets), &upstream, &connections);
        user_sockets.register_presence(&mut registry);
        let registry = Arc::new(registry);
        Ok(Application {
            listener,
            state: AppState {
                upstream,
                verifier,
                allowed_origins: Arc::new(settings.allowed_origins.clone()),
                shutdown,
                open_sockets,
                metrics,
                registry,
                send_limit: Arc::new(RateLimiter::new(settings.send_rate.0, settings.send_rate.1)),
                connect_limit: Arc::new(RateLimiter::new(
                    settings.connect_rate.0,
                    settings.connect_rate.1,
                )),
                ws_ping: settings.ws_ping,
                ws_send_timeout: settings.ws_send_timeout,
                user_sockets,
                connections,
            },
            stop,
            shutdown_grace: settings.shutdown_grace,
            timeouts: crate::listener::Timeouts {
                header: settings.header_timeout,
                idle: settings.idle_timeout,
            },
            presence,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.addr();
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .route(
                "/api/openapi.json",
                get(|| async { axum::Json(crate::openapi::document()) }),
            )
            .route("/ws/chat", get(ws::user_socket))
            .route("/ws/chat/{thread_id}", get(ws::thread_socket))
            .with_state(self.state.clone())
            .merge(crate::page::router())
            .merge(rest::router(self.state.clone()))
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                edge::count_requests,
            ))
            .layer(middleware::from_fn(access_log))
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                edge::cors,
            ))
            .layer(middleware::from_fn(crate::page::nosniff));
        // Trailing slashes are optional: strip one before routing.
        let app = axum::middleware::map_request(strip_trailing_slash).layer(router);
        let stop_tx = self.stop;
        let stop_rx = stop_tx.subscribe();
        let open_sockets = self.state.open_sockets.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight requests");
            let _ = stop_tx.send(true);
        });
        let mut deadline_rx = stop_rx.clone();
        let grace = self.shutdown_grace;
        let (max_connections, max_per_address) = self.state.connections.caps();
        let server = crate::listener::serve(
            self.listener,
            app,
            self.state.connections.clone(),
            self.timeouts,
            stop_rx,
        );
        tracing::info!(
            addr = %addr,
            max_connections,
            max_per_address,
            header_timeout_s = self.timeouts.header.as_secs(),
            idle_timeout_s = self.timeouts.idle.as_secs(),
            "chat-gateway listening"
        );
        tokio::select! {
            () = server => {}
            () = async move {
                let _ = deadline_rx.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!("in-flight requests still running at the deadline; closing them"),
        }
        // WebSockets were told to reconnect elsewhere (1012); let their
        // close frames go out.
        let deadline = Instant::now() + grace.min(std::time::Duration::from_secs(5));
        while open_sockets.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The presence reporter released this gateway's users when the
        // signal came (their grace period runs from then); wait until that
        // went out, so they do not stay online until the lease runs out.
        // It gives up by itself within a few seconds.
        self.presence.finished().await;
        tracing::info!("chat-gateway stopped");
        Ok(())
    }
}

async fn strip_trailing_slash(mut request: Request) -> Request {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let rebuilt = match request.uri().query() {
            Some(query) => format!("{trimmed}?{query}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = rebuilt.parse() {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// Gives every request an id (the caller's `x-request-id`, or a new one),
/// echoes it, and logs one line per request: method, path (never the query
/// string, which may hold a token), status and duration.
async fn access_log(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", axum::extract::MatchedPath::as_str);
    // Never the query string or headers: a WebSocket's token may be there.
    let span = tracing::info_span!(
        "http request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        request_id = %request_id,
        http.response.status_code = tracing::field::Empty,
    );
    chat_runtime::telemetry::continue_from_headers(&span, request.headers());
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::info!(
        request_id,
        method = %method,
        path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            chat_runtime::metrics::CONTENT_TYPE,
        )],
        chat_runtime::metrics::render(&state.registry),
    )
        .into_response()
}

/// Ready when chat-core answers its health check.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.upstream.health().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => {
            tracing::warn!(reason, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "chat-core unreachable\n").into_response()
        }
    }
}
