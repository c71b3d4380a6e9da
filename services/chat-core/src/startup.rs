//! Wiring: configuration → storage → servers. [`Application::build`] binds
//! the listeners (so tests learn the real ports when asking for port 0) and
//! [`Application::run_until_stopped`] serves until the shutdown signal.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use chat_auth::TokenVerifier;
use chat_proto::v1::{
    chat_service_server::ChatServiceServer, integration_service_server::IntegrationServiceServer,
    relay_service_server::RelayServiceServer,
};
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server;

use crate::{
    bus::{EventBus, RedisBus},
    calls::CallService,
    chat::Chat,
    config::{JwtSource, Settings, TranscriptKeySource},
    grpc::{Authenticator, ChatGrpc, IntegrationGrpc},
    http,
    integrations::Integrations,
    live::LiveEvents,
    metrics::{RpcMetrics, RpcObserverLayer},
    relay::RelayGrpc,
    store::{Store, sqlite_file},
    transcript::signing::TranscriptSigner,
};

/// How long, at least, the message writer may take at shutdown to commit
/// what is still queued: a few batches' worth, even with a short grace.
const WRITER_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A built chat-core: storage connected and migrated, listeners bound.
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    store: Store,
    bus: EventBus,
    stop: (watch::Sender<bool>, watch::Receiver<bool>),
    verifier: TokenVerifier,
    shutdown_grace: Duration,
    caps: crate::caps::CapSettings,
    connections: Arc<chat_runtime::connections::ConnectionLimiter>,
    first_request_timeout: Duration,
    drain: Duration,
    signer: Arc<TranscriptSigner>,
    contact_policy: crate::domain::ContactPolicy,
    presence: crate::presence::PresenceSettings,
}

impl Application {
    /// Connects and migrates the database, prepares token checks and binds
    /// both listeners.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let (jwt, created) = settings.jwt.resolve()?;
        if let JwtSource::DevelopmentSecret(path) = &settings.jwt {
            tracing::warn!(
                secret_file = %path.display(),
                created,
                "no JWT configuration: using a development secret; mint tokens with \
                 `chat-core token --sub alice` in this directory"
            );
        }
        let verifier = TokenVerifier::new(&jwt).context("loading the JWT key")?;

        let store = Store::connect_with(
            &settings.database,
            settings.database_max_connections,
            settings.database_acquire_timeout,
        )
        .await
        .context("connecting to the database (DATABASE_URL)")?;
        store
            .migrate()
            .await
            .context("applying database migrations")?;
        let signer = Arc::new(load_signer(&settings.transcript_key)?);
        store
            .register_transcript_key(
                signer.key_id(),
                &signer.public_key_base64(),
                crate::domain::now_micros(),
            )
            .await
            .context("registering the transcript signing key")?;
        match sqlite_file(&settings.database) {
            Some(file) => tracing::info!(file, "storage: embedded SQLite"),
            None => tracing::info!("storage: PostgreSQL"),
        }

        let stop = watch::channel(false);
        let bus = match &settings.redis_url {
            Some(url) => {
                let bus = RedisBus::start(url, &settings.redis_channel_prefix, stop.1.clone())
                    .await
                    .context("connecting to Redis (REDIS_URL)")?;
                tracing::info!(prefix = %settings.redis_channel_prefix, "live events: Redis pub/sub across replicas");
                bus
            }
            None => {
                tracing::info!("live events: in-process (one replica)");
                EventBus::in_process()
            }
        };

        let grpc_listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding CHAT_CORE_GRPC_ADDR {}", settings.grpc_addr))?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("binding CHAT_CORE_HTTP_ADDR {}", settings.http_addr))?;

        Ok(Application {
            grpc_listener,
            http_listener,
            store,
            bus,
            stop,
            verifier,
            shutdown_grace: settings.shutdown_grace,
            caps: settings.caps,
            connections: chat_runtime::connections::ConnectionLimiter::new(
                "chat-core",
                settings.max_connections,
                settings.max_connections_per_address,
            ),
            first_request_timeout: settings.first_request_timeout,
            drain: settings.drain,
            signer,
            contact_policy: settings.contact_policy,
            presence: settings.presence,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound HTTP (health and metrics) address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves gRPC and HTTP until `shutdown` completes; then reports
    /// `NOT_SERVING` and keeps serving for the drain period, stops
    /// accepting, gives in-flight calls the grace period to finish, and
    /// closes the database pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();
        let (stop_tx, stop_rx) = self.stop;
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let metrics = RpcMetrics::default();
        let bus = self.bus.clone();
        let live = LiveEvents::new(self.store.clone(), self.bus, stop_rx.clone());
        let chat = Chat::new(self.store.clone(), live)
            .with_caps(self.caps)
            .with_transcript_signer(self.signer)
            .with_contact_policy(self.contact_policy)
            .with_presence(self.presence);
        chat.presence().spawn(stop_rx.clone());
        let presence_stats = chat.presence().stats().clone();
        let writer = chat.writer().clone();
        let integrations = IntegrationGrpc::new(Integrations::new(
            chat.writer().clone(),
            chat.live().clone(),
        ));
        let auth = Authenticator::new(self.verifier);
        let calls = CallService::new(ChatGrpc::new(chat.clone()), auth.clone(), metrics.clone());
        let relay = RelayGrpc::new(chat.clone(), auth.clone(), calls, stop_rx.clone());

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ChatServiceServer<ChatGrpc>>().await;
        health
            .set_serving::<IntegrationServiceServer<IntegrationGrpc>>()
            .await;
        health.set_serving::<RelayServiceServer<RelayGrpc>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chat_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chat_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building gRPC reflection")?;

        let incoming = crate::listener::accept(
            self.grpc_listener,
            self.connections.clone(),
            self.first_request_timeout,
            stop_rx.clone(),
        );
        let grpc = Server::builder()
            .layer(crate::listener::FirstRequestLayer)
            .layer(RpcObserverLayer::new(metrics.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ChatServiceServer::with_interceptor(
                ChatGrpc::new(chat),
                auth.clone(),
            ))
            .add_service(IntegrationServiceServer::with_interceptor(
                integrations,
                auth,
            ))
            .add_service(RelayServiceServer::new(relay))
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

        let http = axum::serve(
            self.http_listener,
            http::router(
                self.store.clone(),
                Arc::new(crate::metrics::registry(crate::metrics::Sources {
                    rpc: metrics.clone(),
                    writer: writer.clone(),
                    store: self.store.clone(),
                    bus,
                    connections: self.connections.clone(),
                    presence: presence_stats,
                })),
            ),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()));

        tracing::info!(grpc = %grpc_addr, http = %http_addr, "chat-core listening");

        let grace = self.shutdown_grace;
        let deadline = {
            let rx = stop_rx.clone();
            async move {
                stopped(rx).await;
                tokio::time::sleep(grace).await;
            }
        };
        let drain = self.drain;
        tokio::spawn(async move {
            shutdown.await;
            // Not serving from the first moment, while still serving: the
            // gateways watch this status and route new calls to other
            // replicas, so by the time this one stops accepting nobody
            // sends it anything and a rolling restart costs no error.
            health
                .set_not_serving::<ChatServiceServer<ChatGrpc>>()
                .await;
            health
                .set_not_serving::<RelayServiceServer<RelayGrpc>>()
                .await;
            health
                .set_not_serving::<IntegrationServiceServer<IntegrationGrpc>>()
                .await;
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "shutting down: reporting NOT_SERVING; draining"
            );
            tokio::time::sleep(drain).await;
            tracing::info!("shutting down: no new calls; finishing in-flight ones");
            let _ = stop_tx.send(true);
        });

        let grpc = async {
            let result = grpc.await;
            tracing::info!("gRPC server stopped");
            result
        };
        let http = async {
            let result = http.await;
            tracing::info!("HTTP server stopped");
            result
        };
        let servers = async {
            let (grpc, http) = tokio::join!(grpc, http);
            grpc.context("gRPC server")?;
            http.context("HTTP server")?;
            anyhow::Ok(())
        };
        let result = tokio::select! {
            result = servers => result,
            () = deadline => {
                tracing::warn!(grace_seconds = grace.as_secs(), "in-flight calls still running at the deadline; closing them");
                Ok(())
            }
        };
        // No call can queue a message any more: commit what is queued
        // before the pool goes.
        writer.close(grace.max(WRITER_DRAIN_LIMIT)).await;
        self.store.close().await;
        tracing::info!("chat-core stopped");
        result
    }
}

/// The transcript signing key of `source`, said in the log by key id
/// (never its private half).
fn load_signer(source: &TranscriptKeySource) -> anyhow::Result<TranscriptSigner> {
    let signer = match source {
        TranscriptKeySource::File(path) => {
            TranscriptSigner::load(path, false).context("loading TRANSCRIPT_SIGNING_KEY_FILE")?
        }
        TranscriptKeySource::Created(path) => TranscriptSigner::load(path, true)
            .context("loading or creating the embedded transcript signing key")?,
        TranscriptKeySource::Ephemeral => {
            tracing::warn!(
                "TRANSCRIPT_SIGNING_KEY_FILE is not set: transcripts are signed with a key made \
                 for this process; set it so that every replica and restart signs with one key"
            );
            TranscriptSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&rand::random()))
        }
    };
    tracing::info!(key_id = signer.key_id(), "transcript signing key");
    Ok(signer)
}
