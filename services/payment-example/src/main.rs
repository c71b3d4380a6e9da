//! `payment-example`: how a marketplace service integrates with chat.
//!
//! It watches `payment.initiated` integration events (resuming after the
//! last one it handled, kept in a small offset file), "captures" each
//! payment, and answers in the thread with a `PostSystemEvent` payment
//! message. The idempotency key is derived from the event id, so handling
//! an event twice (after a crash before the offset was saved) posts once.
//!
//! Configuration: `CHAT_CORE_URL` (default `http://127.0.0.1:50051`),
//! `JWT_SECRET` (signs its own service token), `PAYMENT_OFFSET_FILE`
//! (default `./data/payment-example.offset`), `LOG_FORMAT`, `RUST_LOG`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use chat_auth::{Role, TokenIssuer};
use chat_proto::v1::{
    self as pb, MessageType, integration_service_client::IntegrationServiceClient,
};
use chat_runtime::{init_tracing, log_format, shutdown_signal};
use tonic::{Request, transport::Endpoint};

const SERVICE: &str = "payment-service";

struct Config {
    chat_core_url: String,
    issuer: TokenIssuer,
    offset_file: PathBuf,
}

fn config() -> anyhow::Result<Config> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let secret = get("JWT_SECRET").context("JWT_SECRET: required to sign the service token")?;
    Ok(Config {
        chat_core_url: get("CHAT_CORE_URL").unwrap_or_else(|| "http://127.0.0.1:50051".into()),
        issuer: TokenIssuer::new(secret.as_bytes(), get("JWT_ISSUER"), get("JWT_AUDIENCE")),
        offset_file: get("PAYMENT_OFFSET_FILE")
            .unwrap_or_else(|| "./data/payment-example.offset".into())
            .into(),
    })
}

fn authorized<T>(config: &Config, body: T) -> anyhow::Result<Request<T>> {
    let token = config
        .issuer
        .issue(SERVICE, Role::Service, Duration::from_secs(3600))
        .context("signing the service token")?;
    let mut request = Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

fn load_offset(config: &Config) -> i64 {
    std::fs::read_to_string(&config.offset_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

fn save_offset(config: &Config, id: i64) -> anyhow::Result<()> {
    if let Some(dir) = config.offset_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = config.offset_file.with_extension("tmp");
    std::fs::write(&temporary, id.to_string())?;
    std::fs::rename(&temporary, &config.offset_file)?;
    Ok(())
}

/// Captures one payment and tells the thread.
async fn capture(
    config: &Config,
    client: &mut IntegrationServiceClient<tonic::transport::Channel>,
    event: &pb::IntegrationEvent,
) -> anyhow::Result<()> {
    let payment: serde_json::Value = serde_json::from_str(&event.payload_json)?;
    let amount = payment["amount"].as_str().unwrap_or("?");
    let currency = payment["currency"].as_str().unwrap_or("?");
    let metadata = serde_json::json!({
        "status": "captured",
        "amount": amount,
        "currency": currency,
        "payment_message_id": event.message_id,
    });
    let response = client
        .post_system_event(authorized(
            config,
            pb::PostSystemEventRequest {
                thread_id: event.thread_id.clone(),
                message_type: MessageType::Payment.into(),
                content: format!("Payment captured: {amount} {currency}"),
                metadata_json: Some(metadata.to_string()),
                idempotency_key: format!("capture:{}", event.id),
            },
        )?)
        .await?
        .into_inner();
    tracing::info!(event_id = event.id, thread_id = %event.thread_id, created = response.created, "payment captured");
    Ok(())
}

/// Watches and captures until the stream ends; returns to reconnect.
async fn watch(config: &Config) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(config.chat_core_url.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", config.chat_core_url))?;
    let mut client = IntegrationServiceClient::new(channel);
    let after = load_offset(config);
    let mut events = client
        .watch_integration_events(authorized(
            config,
            pb::WatchIntegrationEventsRequest {
                after_event_id: after,
                event_types: vec!["payment.initiated".into()],
            },
        )?)
        .await?
        .into_inner();
    tracing::info!(after_event_id = after, "watching payment.initiated");
    while let Some(event) = events.message().await? {
        capture(config, &mut client, &event).await?;
        save_offset(config, event.id)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing(log_format(std::env::var("LOG_FORMAT").ok().as_deref())?);
    let config = config()?;
    let run = async {
        let mut delay = Duration::from_millis(200);
        loop {
            if let Err(err) = watch(&config).await {
                tracing::warn!(error = %err, "watch interrupted; reconnecting");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    };
    tokio::select! {
        () = run => Ok(()),
        () = shutdown_signal() => {
            tracing::info!("payment-example stopped");
            Ok(())
        }
    }
}
