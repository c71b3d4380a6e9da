//! What the gateway does for every request before and after its route: CORS
//! for allowed browser origins, per-user and per-address rate limits, and
//! the counters behind `/metrics`.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{error::ApiError, rest::AppState, upstream::PresenceReporter};

/// A token bucket per key (a user, an address): `rate` per second, bursts
/// up to `burst`. The map is bounded: idle full buckets are dropped when it
/// grows, so a flood of new keys cannot grow memory without limit.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Beyond this many keys, idle buckets are swept.
const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; on refusal, how long until one is free.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_KEYS {
                return Err(Duration::from_secs(1));
            }
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - *tokens) / self.rate).max(0.001),
            ))
        }
    }
}

/// Open WebSockets per user, capped: one user (one stolen token) cannot
/// hold an unbounded share of the gateway's sockets and chat-core's
/// subscriptions. Only users with an open socket are kept.
///
/// It is also where presence starts: a user's first socket here and their
/// last one are the only transitions the gateway reports to chat-core
/// (through the [`PresenceReporter`]), never each socket.
#[derive(Debug)]
pub struct UserSockets {
    max: usize,
    open: Mutex<HashMap<String, Held>>,
    presence: Option<PresenceReporter>,
}

/// One user's sockets here: how many, and the token of the latest one
/// (shared with that socket), to report the user again after chat-core
/// lost this gateway's lease.
#[derive(Debug)]
struct Held {
    count: usize,
    token: std::sync::Arc<str>,
}

impl UserSockets {
    /// At most `max` sockets per user; transitions go to `presence`.
    pub fn new(max: usize, presence: Option<PresenceReporter>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(UserSockets {
            max,
            open: Mutex::new(HashMap::new()),
            presence,
        })
    }

    /// A place for one more socket of `user` (who proved it with `token`),
    /// or `None` at the cap.
    pub fn take(
        self: &std::sync::Arc<Self>,
        user: &str,
        token: &std::sync::Arc<str>,
    ) -> Option<UserSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = open.entry(user.to_owned()).or_insert_with(|| Held {
            count: 0,
            token: token.clone(),
        });
        if held.count >= self.max {
            return None;
        }
        held.count += 1;
        held.token = token.clone();
        // Reported under the lock, so a user's transitions reach the
        // reporter in the order they happened.
        if held.count == 1
            && let Some(presence) = &self.presence
        {
            presence.online(user, token.clone());
        }
        Some(UserSlot {
            sockets: self.clone(),
            user: user.into(),
        })
    }

    /// Presence reports sent to chat-core and the transitions they
    /// carried, as `/metrics` lines.
    pub fn render_presence(&self, out: &mut String) {
        if let Some(presence) = &self.presence {
            let (reports, transitions) = presence.counts();
            let _ = write!(
                out,
                "# HELP chat_gateway_presence_reports_total Presence reports sent to chat-core (transitions and lease renewals).\n\
                 # TYPE chat_gateway_presence_reports_total counter\n\
                 chat_gateway_presence_reports_total {reports}\n\
                 # HELP chat_gateway_presence_transitions_total Users reported online (first socket here) or offline (last socket here).\n\
                 # TYPE chat_gateway_presence_transitions_total counter\n\
                 chat_gateway_presence_transitions_total {transitions}\n"
            );
        }
    }

    /// Every user holding a socket here, with the token of their latest.
    pub fn holders(&self) -> Vec<(String, std::sync::Arc<str>)> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(user, held)| (user.clone(), held.token.clone()))
            .collect()
    }
}

/// One socket's place under its user's cap, given back when dropped.
#[derive(Debug)]
pub struct UserSlot {
    sockets: std::sync::Arc<UserSockets>,
    user: Box<str>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self
            .sockets
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = open.get_mut(&*self.user) {
            held.count -= 1;
            if held.count == 0 {
                open.remove(&*self.user);
                if let Some(presence) = &self.sockets.presence {
                    presence.offline(&self.user);
                }
            }
        }
    }
}

/// The 429 answer for a refusal.
pub fn rate_limited(retry_after: Duration) -> Response {
    let mut response = ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        message: "too many requests; slow down".into(),
    }
    .into_response();
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    requests: Mutex<HashMap<(String, String, u16), u64>>,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub rate_limited: AtomicU64,
}

impl GatewayMetrics {
    fn observe(&self, method: &Method, route: &str, status: u16) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests
                .entry((method.to_string(), route.to_owned(), status))
                .or_default() += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, open_sockets: usize) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str(
            "# HELP chat_gateway_http_requests_total HTTP requests by route and status.\n",
        );
        out.push_str("# TYPE chat_gateway_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            let mut rows: Vec<_> = requests.iter().collect();
            rows.sort();
            for ((method, route, status), count) in rows {
                let _ = writeln!(
                    out,
                    "chat_gateway_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let counters = [
            (
                "chat_gateway_open_websockets",
                "gauge",
                "Open WebSockets.",
                open_sockets as u64,
            ),
            (
                "chat_gateway_ws_frames_in_total",
                "counter",
                "WebSocket frames received.",
                self.frames_in.load(Ordering::Relaxed),
            ),
            (
                "chat_gateway_ws_frames_out_total",
                "counter",
                "WebSocket frames sent.",
                self.frames_out.load(Ordering::Relaxed),
            ),
            (
                "chat_gateway_upstream_errors_total",
                "counter",
                "chat-core calls that failed for want of chat-core.",
                self.upstream_errors.load(Ordering::Relaxed),
            ),
            (
                "chat_gateway_rate_limited_total",
                "counter",
                "Requests and frames refused by rate limits.",
                self.rate_limited.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in counters {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        out
    }
}

/// Counts each request by its route template (never the raw path, which
/// holds ids) and status.
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if status == 503 {
        state
            .metrics
            .upstream_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    if status == 429 {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
    }
    state.metrics.observe(&method, &route, status);
    response
}

/// CORS for the browser origins in `ALLOWED_ORIGINS`: preflights are
/// answered here, and allowed origins get the response headers. Other
/// origins get no CORS headers, so browsers keep their pages out.
pub async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(|o| o.trim_end_matches('/').to_owned());
    let allowed = origin
        .as_deref()
        .filter(|o| state.allowed_origins.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        match &allowed {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => ApiError {
                status: StatusCode::FORBIDDEN,
                code: "origin_not_allowed",
                message: "this origin may not call the API".into(),
            }
            .into_response(),
        }
    } else {
        next.run(request).await
    };
    if let Some(origin) = allowed {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, x-request-id"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_refuse() {
        let limiter = RateLimiter::new(1000.0, 3.0);
        for _ in 0..3 {
            assert!(limiter.check("u").is_ok());
        }
        let wait = limiter.check("u").unwrap_err();
        assert!(wait <= Duration::from_millis(2));
        assert!(limiter.check("other").is_ok());
        std::thread::sleep(Duration::from_millis(5));
        assert!(limiter.check("u").is_ok());
    }
}
