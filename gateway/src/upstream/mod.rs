//! The gateway's side of chat-core: one connection per replica with its
//! own health ([`replicas`]), each call handed to a healthy replica, a
//! client-side deadline on every call within which calls cut off by a
//! replica going away are tried again elsewhere, the caller's token and
//! request id passed along, and the sockets' live feeds ([`feed`]).
//!
//! The socket side (`ws`) sees only [`Upstream::open_feed`],
//! [`Upstream::call`] and the clients; how sockets map onto chat-core
//! streams stays in here.

mod calls;
mod feed;
mod presence;
mod replicas;

use std::{future::Future, time::Duration};

pub use calls::Calls;
use feed::Relays;
pub use feed::{FEED_CAPACITY, Feed, FeedEnd, FeedRequest};
pub use presence::PresenceReporter;
pub use replicas::{RouteError, Routed};

use chat_proto::v1::{
    chat_service_client::ChatServiceClient, integration_service_client::IntegrationServiceClient,
};
use tokio::time::Instant;
use tonic::{Code, Request, Status, metadata::MetadataValue};

/// How long `/readyz` waits for chat-core's health answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between attempts of a call while no replica takes it.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The message of an `UNAVAILABLE` answer to a call that is not safe to
/// repeat and was cut off after it may have reached chat-core: the client
/// cannot know whether it took effect, and must look before trying again.
pub const FATE_UNKNOWN: &str =
    "chat service unavailable; the request may or may not have been carried out";

/// What tonic's client says, with no error attached, when a response was
/// cut short: its body ended before the message or inside it.
const TRUNCATED: &[&str] = &[
    "Missing response message.",
    "Unexpected EOF decoding stream.",
];

/// A failed call's status as clients are told it. A call cut off by a
/// lost connection comes back from the transport as `UNKNOWN`, `INTERNAL`
/// or `CANCELLED`: an h2 or hyper error (the status then carries it as its
/// source), a response cut short, or a stream that ended without a final
/// status (`UNKNOWN`, which chat-core never sends). chat-core said none of
/// these and the client can only try again, so they are `UNAVAILABLE`.
/// Statuses that chat-core sent are kept.
pub fn cut_off(status: Status) -> Status {
    let lost = match status.code() {
        Code::Unknown => true,
        Code::Internal | Code::Cancelled => {
            std::error::Error::source(&status).is_some() || TRUNCATED.contains(&status.message())
        }
        _ => false,
    };
    if lost {
        tracing::warn!(code = ?status.code(), message = %status.message(), "chat-core call cut off");
        Status::unavailable("chat-core connection lost")
    } else {
        status
    }
}

/// Whether a failed call certainly never reached chat-core (no replica to
/// hand it to, a connect that failed, a stream refused before any work),
/// so even a call that is not idempotent may be tried again.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(route) = error.downcast_ref::<RouteError>()
            && matches!(route, RouteError::NoReplica)
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// chat-core, as the gateway calls it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    routed: Routed,
    timeout: Duration,
    relays: Relays,
    calls: Calls,
}

impl Upstream {
    /// Routes over `urls` (validated by the configuration), one replica per
    /// address; an address given by name is resolved again every few
    /// seconds. Connections open lazily, so the gateway starts while
    /// chat-core is still coming up; `/readyz` says when it is reachable.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let routed = Routed::new(urls)?;
        let relays = Relays::start(routed.clone());
        let calls = Calls::start(routed.clone());
        Ok(Upstream {
            routed,
            timeout,
            relays,
            calls,
        })
    }

    /// Starts reporting presence through `reporter` (see
    /// [`PresenceReporter`]) until `shutdown`.
    pub fn report_presence(
        &self,
        reporter: &PresenceReporter,
        sockets: std::sync::Weak<crate::edge::UserSockets>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        reporter.start(self.routed.clone(), sockets, shutdown);
    }

    /// A `ChatService` client.
    pub fn chat(&self) -> ChatServiceClient<Routed> {
        ChatServiceClient::new(self.routed.clone())
    }

    /// An `IntegrationService` client.
    pub fn integrations(&self) -> IntegrationServiceClient<Routed> {
        IntegrationServiceClient::new(self.routed.clone())
    }

    /// The shared call streams, for the sockets' frequent calls (send,
    /// mark read, typing); see [`Calls`].
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Sockets' subscriptions open on the relays now.
    pub fn open_feeds(&self) -> u64 {
        self.relays.open_feeds()
    }

    /// chat-core replicas in rotation, and known.
    pub fn replicas(&self) -> (usize, usize) {
        self.routed.serving()
    }

    /// Subscribes a socket to its live events over the shared relays.
    /// Returns once chat-core has the subscription in place, so every event
    /// after this reaches the feed.
    pub async fn open_feed(&self, request: FeedRequest) -> Result<Feed, FeedEnd> {
        self.relays.open(request).await
    }

    /// Runs a call within the call deadline, measured here on the client:
    /// the deadline sent to chat-core only helps once the request reaches
    /// it, and a call stuck in the transport must end too. An expired call
    /// is `UNAVAILABLE`, which every transport shows as `unavailable`.
    ///
    /// `attempt` makes the call once; it is made again, on another replica
    /// (the failed one is out of rotation by then), while the deadline
    /// lasts and the answer is `UNAVAILABLE`, if the call is `idempotent`
    /// or certainly never reached chat-core. A call that is not idempotent
    /// and was cut off answers [`FATE_UNKNOWN`].
    pub async fn call<T, F, Fut>(&self, idempotent: bool, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        // The first retry goes at once: the next replica is another one.
        let mut pause = Duration::ZERO;
        loop {
            let status = match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) => status,
                Err(_) => return Err(Status::unavailable("chat-core call timed out")),
            };
            let retry = idempotent || never_sent(&status);
            let status = cut_off(status);
            if status.code() != Code::Unavailable {
                return Err(status);
            }
            if !retry {
                return Err(Status::unavailable(FATE_UNKNOWN));
            }
            tracing::debug!(message = %status.message(), "chat-core call failed; trying another replica");
            if Instant::now() + pause >= deadline {
                return Err(Status::unavailable("chat-core call timed out"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).clamp(Duration::from_millis(20), MAX_RETRY_PAUSE);
        }
    }

    /// A unary request carrying the caller's token, the request id, the
    /// call deadline and the current span's trace context.
    pub fn request<T>(&self, body: T, token: &str, request_id: &str) -> Request<T> {
        let mut request = Request::new(body);
        request.set_timeout(self.timeout);
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
            request.metadata_mut().insert("authorization", value);
        }
        if let Ok(value) = MetadataValue::try_from(request_id) {
            request.metadata_mut().insert("x-request-id", value);
        }
        chat_runtime::telemetry::inject_current(request.metadata_mut());
        request
    }
}

impl Upstream {
    /// Whether chat-core answers `grpc.health.v1` (for `/readyz`): a
    /// replica whose health watch says `SERVING`, or else a replica that
    /// answers a health check now (the watches may not have answered yet
    /// right after start).
    pub async fn health(&self) -> Result<(), &'static str> {
        if self.routed.any_serving() {
            return Ok(());
        }
        let mut client = tonic_health::pb::health_client::HealthClient::new(self.routed.clone());
        let mut request = Request::new(tonic_health::pb::HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        });
        request.set_timeout(HEALTH_TIMEOUT);
        // Bounded here too, so `/readyz` says "unreachable" when the
        // transport is stuck instead of hanging with it.
        match tokio::time::timeout(HEALTH_TIMEOUT, client.check(request))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::unavailable("health check timed out")))
        {
            Ok(response)
                if response.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                Ok(())
            }
            Ok(_) => Err("chat-core not serving"),
            Err(_) => Err("chat-core unreachable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as tonic's client makes it from a transport error.
    fn from_transport(error: impl std::error::Error + Send + Sync + 'static) -> Status {
        Status::from_error(Box::new(error))
    }

    #[test]
    fn statuses_chat_core_sent_are_kept() {
        for code in [
            Code::Internal,
            Code::NotFound,
            Code::Cancelled,
            Code::Aborted,
        ] {
            let status = cut_off(Status::new(code, "from chat-core"));
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "from chat-core");
        }
    }

    #[test]
    fn a_response_cut_short_is_unavailable() {
        for message in TRUNCATED {
            assert_eq!(
                cut_off(Status::internal(*message)).code(),
                Code::Unavailable
            );
        }
        let no_final_status = Status::unknown("protocol error: missing grpc-status trailer");
        assert_eq!(cut_off(no_final_status).code(), Code::Unavailable);
        assert_eq!(
            cut_off(Status::internal("internal error")).code(),
            Code::Internal
        );
    }

    #[test]
    fn a_lost_connection_is_unavailable() {
        let reset = from_transport(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(reset.code(), Code::Unknown);
        assert_eq!(cut_off(reset).code(), Code::Unavailable);
        let h2 = from_transport(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        assert_eq!(h2.code(), Code::Internal);
        assert_eq!(cut_off(h2).code(), Code::Unavailable);
        let cancelled = from_transport(h2::Error::from(h2::Reason::CANCEL));
        assert_eq!(cancelled.code(), Code::Cancelled);
        assert_eq!(cut_off(cancelled).code(), Code::Unavailable);
    }

    #[test]
    fn only_calls_that_never_left_are_known_unsent() {
        let refused = from_transport(RouteError::NoReplica);
        assert!(never_sent(&refused));
        let stream = from_transport(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(stream.code(), Code::Unavailable);
        assert!(never_sent(&stream));
        let connect = from_transport(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(never_sent(&connect));
        let reset = from_transport(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!never_sent(&reset));
        assert!(!never_sent(&Status::unavailable("storage unavailable")));
    }
}
