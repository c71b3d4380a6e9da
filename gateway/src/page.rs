//! The web client (`GET /`, its script and style, and the browser
//! library it is built on, all built into the binary) and the security
//! headers of every answer.
//!
//! The page holds a bearer token, so it runs under a strict Content
//! Security Policy: scripts and styles only from the gateway's own files
//! (no inline script for an injection to hide in), connections only to
//! its own origin (`'self'` covers same-origin `ws:`/`wss:` in current
//! browsers), no framing (no clickjacking), no referrer.

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

/// The policy of the page and its assets.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// `GET /`, the page's script and style, and the browser library
/// (`/static/chat-client.js`, an ES module other front-ends may load too).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    const JS: &str = "text/javascript; charset=utf-8";
    Router::new()
        .route(
            "/",
            get(|| async {
                asset(
                    "text/html; charset=utf-8",
                    include_str!("../static/index.html"),
                )
            }),
        )
        .route(
            "/app.js",
            get(|| async { asset(JS, include_str!("../static/app.js")) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("../static/app.css")) }),
        )
        .route(
            "/static/chat-client.js",
            get(|| async { asset(JS, include_str!("../static/chat-client.js")) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `X-Content-Type-Options: nosniff` on every answer, errors included:
/// no browser may guess a JSON error or a text answer is something to run.
pub async fn nosniff(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
