//! What the gateway does for every request before and after its route: CORS
//! for allowed browser origins, per-user and per-address rate limits, and
//! the request figures behind `/metrics`.

use std::{
    collections::HashMap,
    sync::Mutex,
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

    /// Registers the presence reporter's counters, when there is one.
    pub fn register_presence(&self, registry: &mut chat_runtime::metrics::Registry) {
        if let Some(presence) = &self.presence {
            let reports = presence.clone();
            chat_runtime::metrics::counter_fn(
                registry,
                "chat_gateway_presence_reports",
                "Presence reports sent to chat-core (transitions and lease renewals).",
                move || reports.counts().0,
            );
            let transitions = presence.clone();
            chat_runtime::metrics::counter_fn(
                registry,
                "chat_gateway_presence_transitions",
                "Users reported online (first socket here) or offline (last socket here).",
                move || transitions.counts().1,
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
        kinds: None,
    }
    .into_response();
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Counts each request by its route template (never the raw path, which
/// holds ids) and status, and times it to its response head.
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if status == 503 {
        state.metrics.upstream_errors.inc();
    }
    if status == 429 {
        state.metrics.rate_limited.inc();
    }
    state.metrics.observe_request(
        method,
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        status,
        started.elapsed().as_secs_f64(),
    );
    response
}

/// A request method as a label: the standard ones by name, others as one.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
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
                kinds: None,
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
