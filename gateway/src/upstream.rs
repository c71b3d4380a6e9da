//! The gateway's side of chat-core: one lazily connected gRPC channel
//! balanced per call across every `CHAT_CORE_URL` address, a deadline on
//! every call, and the caller's token and request id passed along.

use std::time::Duration;

use chat_proto::v1::{
    chat_service_client::ChatServiceClient, integration_service_client::IntegrationServiceClient,
};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

/// chat-core, as the gateway calls it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    channel: Channel,
    timeout: Duration,
}

impl Upstream {
    /// Balances over `urls` (validated by the configuration). Connections
    /// open lazily, so the gateway starts while chat-core is still coming
    /// up; `/readyz` says when it is reachable.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            endpoints.push(
                Endpoint::from_shared(url.clone())?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10)),
            );
        }
        Ok(Upstream {
            channel: Channel::balance_list(endpoints.into_iter()),
            timeout,
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
        request.set_timeout(Duration::from_secs(2));
        match client.check(request).await {
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
