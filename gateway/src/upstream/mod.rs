//! The gateway's side of chat-core: one lazily connected gRPC channel
//! balanced per call across every `CHAT_CORE_URL` address, a client-side
//! deadline on every call, the caller's token and request id passed along,
//! and the sockets' live feeds ([`feed`]).
//!
//! The socket side (`ws`) sees only [`Upstream::open_feed`],
//! [`Upstream::within_deadline`] and the clients; how sockets map onto
//! chat-core streams stays in here.

mod calls;
mod feed;

use std::{future::Future, time::Duration};

pub use calls::Calls;
use feed::Relays;
pub use feed::{FEED_CAPACITY, Feed, FeedEnd, FeedRequest};

use chat_proto::v1::{
    chat_service_client::ChatServiceClient, integration_service_client::IntegrationServiceClient,
};
use std::collections::HashSet;

use tokio::sync::mpsc;
use tonic::transport::channel::Change;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

/// How long `/readyz` waits for chat-core's health answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often names in `CHAT_CORE_URL` are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// Keeps the balanced channel's endpoints equal to what `host` resolves
/// to, until the channel is dropped.
async fn follow_dns(
    host: String,
    port: u16,
    scheme: String,
    changes: mpsc::Sender<Change<String, Endpoint>>,
) {
    let mut current: HashSet<String> = HashSet::new();
    loop {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                let resolved: HashSet<String> =
                    addrs.map(|addr| format!("{scheme}://{addr}")).collect();
                for url in resolved.difference(&current) {
                    if let Ok(endpoint) = endpoint(url) {
                        tracing::info!(host, url, "chat-core address added");
                        if changes
                            .send(Change::Insert(url.clone(), endpoint))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                for url in current.difference(&resolved) {
                    tracing::info!(host, url, "chat-core address removed");
                    if changes.send(Change::Remove(url.clone())).await.is_err() {
                        return;
                    }
                }
                current = resolved;
            }
            Err(err) => tracing::warn!(host, error = %err, "cannot resolve chat-core address"),
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

/// chat-core, as the gateway calls it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    channel: Channel,
    timeout: Duration,
    relays: Relays,
    calls: Calls,
}

impl Upstream {
    /// Balances over `urls` (validated by the configuration). An address
    /// given by name is resolved again every few seconds and every address
    /// it yields is used (a Kubernetes headless service lists one per pod),
    /// since HTTP/2 connections are long-lived and one address would pin
    /// all calls to one replica. Connections open lazily, so the gateway
    /// starts while chat-core is still coming up; `/readyz` says when it is
    /// reachable.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let (channel, changes) = Channel::balance_channel::<String>(64);
        for url in urls {
            // Validated by the configuration; an endpoint error says why.
            let Ok(uri) = url.parse::<http::Uri>() else {
                endpoint(url)?;
                continue;
            };
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            if host.parse::<std::net::IpAddr>().is_ok() {
                let endpoint = endpoint(url)?;
                let _ = changes.try_send(Change::Insert(url.clone(), endpoint));
            } else {
                let port = uri.port_u16().unwrap_or(80);
                tokio::spawn(follow_dns(
                    host.to_owned(),
                    port,
                    uri.scheme_str().unwrap_or("http").to_owned(),
                    changes.clone(),
                ));
            }
        }
        let relays = Relays::start(channel.clone());
        let calls = Calls::start(channel.clone());
        Ok(Upstream {
            channel,
            timeout,
            relays,
            calls,
        })
    }

    /// A `ChatService` client.
    pub fn chat(&self) -> ChatServiceClient<Channel> {
        ChatServiceClient::new(self.channel.clone())
    }

    /// An `IntegrationService` client.
    pub fn integrations(&self) -> IntegrationServiceClient<Channel> {
        IntegrationServiceClient::new(self.channel.clone())
    }

    /// The shared call streams, for the sockets' frequent calls (send,
    /// mark read, typing); see [`Calls`].
    pub fn calls(&self) -> &Calls {
        &self.calls
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
    pub async fn within_deadline<T>(
        &self,
        call: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::unavailable("chat-core call timed out")))
    }

    /// A unary request carrying the caller's token, the request id and the
    /// call deadline.
    pub fn request<T>(&self, body: T, token: &str, request_id: &str) -> Request<T> {
        let mut request = Request::new(body);
        request.set_timeout(self.timeout);
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
            request.metadata_mut().insert("authorization", value);
        }
        if let Ok(value) = MetadataValue::try_from(request_id) {
            request.metadata_mut().insert("x-request-id", value);
        }
        request
    }
}

impl Upstream {
    /// Whether chat-core answers `grpc.health.v1` (for `/readyz`).
    pub async fn health(&self) -> Result<(), &'static str> {
        let mut client = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
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
