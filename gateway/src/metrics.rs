//! The gateway's `/metrics`, on `prometheus-client`: requests and their
//! latency by route template, WebSockets by kind, frames handled by type
//! and how long each took (a `chat_message` until its ack: the
//! acknowledgement latency), closes by code, the upstream's replicas and
//! subscriptions, the listener's caps and the process.
//!
//! Everything a socket records on its hot path is a handle resolved once
//! here (per frame type, per kind, per close code): no label is looked up
//! or allocated per frame.

use std::sync::{
    Arc, OnceLock, RwLock,
    atomic::{AtomicUsize, Ordering},
};

use chat_runtime::metrics::{Counter, Family, Gauge, Histogram, Registry, gauge_fn};

use crate::upstream::Upstream;

/// A route template (`/api/chat/threads/{id}/messages`), made `'static`
/// once: templates come from the router, so there are only so many, and
/// raw paths (which hold ids) never get here.
fn route_label(route: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<std::collections::HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(known) = routes.read().ok().and_then(|r| r.get(route).copied()) {
        return known;
    }
    let mut routes = routes
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = routes.get(route) {
        return known;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

/// Labels of a request count: method and route, then status.
type RequestLabels = ([(&'static str, &'static str); 2], [(&'static str, u16); 1]);
/// Labels of a latency: method and route.
type RouteLabels = [(&'static str, &'static str); 2];
/// One label.
type OneLabel = [(&'static str, &'static str); 1];
/// Latency histograms made over the shared buckets.
type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

/// The kinds of frame a browser sends, each with its own latency series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A message: its latency is until the ack went out.
    ChatMessage,
    MarkRead,
    Typing,
    Ping,
    /// `auth` after authentication, unknown types and frames that do not
    /// parse: answered with an `error` frame.
    Invalid,
}

impl FrameKind {
    const ALL: [(FrameKind, &'static str); 5] = [
        (FrameKind::ChatMessage, "chat_message"),
        (FrameKind::MarkRead, "mark_messages_read"),
        (FrameKind::Typing, "typing_indicator"),
        (FrameKind::Ping, "ping"),
        (FrameKind::Invalid, "invalid"),
    ];

    /// The frame's `type` as a label and span field.
    pub fn name(self) -> &'static str {
        Self::ALL[self as usize].1
    }
}

/// The kinds of WebSocket: one thread's, or all of a user's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Thread,
    User,
}

/// Close codes counted under their own label; others count as `other`.
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1007, 1008, 1009, 1011, 1012, 4008, 4401, 4404, 4429,
];

/// The gateway's figures, recorded by the request layer and the sockets.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Latencies<RouteLabels>,
    /// WebSocket frames received.
    pub frames_in: Counter,
    /// WebSocket frames sent.
    pub frames_out: Counter,
    /// Calls answered 503 for want of chat-core.
    pub upstream_errors: Counter,
    /// Requests and frames refused by the rate limits.
    pub rate_limited: Counter,
    frames: Arc<[Histogram; 5]>,
    sockets: Arc<[Gauge; 2]>,
    closes: Arc<[Counter; CLOSE_CODES.len() + 1]>,
    frame_family: Latencies<OneLabel>,
    socket_family: Family<OneLabel, Gauge>,
    close_family: Family<OneLabel, Counter>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let frame_family = Family::<_, Histogram, fn() -> Histogram>::new_with_constructor(
            chat_runtime::metrics::latency_histogram,
        );
        let frames =
            FrameKind::ALL.map(|(_, name)| frame_family.get_or_create_owned(&[("type", name)]));
        let socket_family = Family::<_, Gauge>::default();
        let sockets =
            ["thread", "user"].map(|kind| socket_family.get_or_create_owned(&[("kind", kind)]));
        let close_family = Family::<_, Counter>::default();
        const NAMES: [&str; CLOSE_CODES.len() + 1] = [
            "1000", "1001", "1002", "1007", "1008", "1009", "1011", "1012", "4008", "4401", "4404",
            "4429", "other",
        ];
        let closes = NAMES.map(|code| close_family.get_or_create_owned(&[("code", code)]));
        GatewayMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(chat_runtime::metrics::latency_histogram),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            upstream_errors: Counter::default(),
            rate_limited: Counter::default(),
            frames: Arc::new(frames),
            sockets: Arc::new(sockets),
            closes: Arc::new(closes),
            frame_family,
            socket_family,
            close_family,
        }
    }
}

impl GatewayMetrics {
    /// Records a request by route template and status, and its latency.
    pub fn observe_request(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        let route = route_label(route);
        self.requests
            .get_or_create(&([("method", method), ("route", route)], [("status", status)]))
            .inc();
        self.durations
            .get_or_create(&[("method", method), ("route", route)])
            .observe(seconds);
    }

    /// Records a frame handled, `seconds` after it arrived.
    pub fn observe_frame(&self, kind: FrameKind, seconds: f64) {
        self.frames[kind as usize].observe(seconds);
    }

    /// Counts a socket of `kind` as open until the guard is dropped.
    pub fn socket_opened(&self, kind: SocketKind) -> SocketGuard {
        let gauge = self.sockets[kind as usize].clone();
        gauge.inc();
        SocketGuard(gauge)
    }

    /// Counts a close by its code.
    pub fn observe_close(&self, code: u16) {
        let index = CLOSE_CODES
            .iter()
            .position(|known| *known == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[index].inc();
    }

    /// The registry behind `/metrics`: these figures, `open_sockets`, the
    /// upstream's, the listener's caps and the process.
    pub fn registry(
        &self,
        open_sockets: Arc<AtomicUsize>,
        upstream: &Upstream,
        connections: &Arc<chat_runtime::connections::ConnectionLimiter>,
    ) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "chat_gateway_http_requests",
            "HTTP requests by route and status.",
            self.requests.clone(),
        );
        registry.register(
            "chat_gateway_http_request_duration_seconds",
            "HTTP request latency by route, to the response head (for a WebSocket, to the upgrade).",
            self.durations.clone(),
        );
        gauge_fn(
            &mut registry,
            "chat_gateway_open_websockets",
            "Open WebSockets.",
            move || open_sockets.load(Ordering::Acquire) as i64,
        );
        registry.register(
            "chat_gateway_websockets",
            "Open authenticated WebSockets by kind (thread: one thread's; user: all of a user's threads).",
            self.socket_family.clone(),
        );
        registry.register(
            "chat_gateway_websocket_closes",
            "WebSockets closed, by close code (4008: too slow).",
            self.close_family.clone(),
        );
        registry.register(
            "chat_gateway_ws_frame_duration_seconds",
            "Time from a frame's arrival until it was handled (chat_message: until its ack was sent).",
            self.frame_family.clone(),
        );
        for (name, help, counter) in [
            (
                "chat_gateway_ws_frames_in",
                "WebSocket frames received.",
                &self.frames_in,
            ),
            (
                "chat_gateway_ws_frames_out",
                "WebSocket frames sent.",
                &self.frames_out,
            ),
            (
                "chat_gateway_upstream_errors",
                "chat-core calls that failed for want of chat-core.",
                &self.upstream_errors,
            ),
            (
                "chat_gateway_rate_limited",
                "Requests and frames refused by rate limits.",
                &self.rate_limited,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let feeds = upstream.clone();
        gauge_fn(
            &mut registry,
            "chat_gateway_upstream_subscriptions",
            "Sockets' subscriptions carried on the relays to chat-core.",
            move || feeds.open_feeds() as i64,
        );
        let replicas = upstream.clone();
        gauge_fn(
            &mut registry,
            "chat_gateway_upstream_replicas_serving",
            "chat-core replicas in rotation (their health says SERVING).",
            move || replicas.replicas().0 as i64,
        );
        let replicas = upstream.clone();
        gauge_fn(
            &mut registry,
            "chat_gateway_upstream_replicas",
            "chat-core replicas known (configured or resolved).",
            move || replicas.replicas().1 as i64,
        );
        chat_runtime::metrics::register_connections(&mut registry, "chat_gateway", connections);
        chat_runtime::metrics::register_process(&mut registry);
        registry
    }
}

/// An open socket's place in its kind's gauge, given back when dropped.
#[derive(Debug)]
pub struct SocketGuard(Gauge);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_interned_once() {
        let a = route_label("/api/chat/threads/{id}");
        let b = route_label(&String::from("/api/chat/threads/{id}"));
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn frame_kinds_name_their_series() {
        for (kind, name) in FrameKind::ALL {
            assert_eq!(kind.name(), name);
        }
    }
}
