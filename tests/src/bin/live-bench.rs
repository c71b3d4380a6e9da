//! Live-delivery benchmark: how many messages per second a running
//! chat-core persists and delivers to subscribers, and the latency from
//! sending a message to a subscriber receiving it.
//!
//! It creates `--threads` two-person threads, subscribes the second
//! participant of each, and sends `--messages` messages from `--senders`
//! concurrent senders (optionally paced to `--rate` per second). Each message
//! carries its send time; each subscriber records the delay when it arrives.
//! A message counts once it is both acknowledged and delivered.
//!
//! ```text
//! live-bench --addr 127.0.0.1:50051 --secret "$JWT_SECRET" \
//!     [--threads 100] [--senders 64] [--messages 20000] [--rate 0] [--subscribe-addr ADDR]
//! ```

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chat_auth::{Role, TokenIssuer};
use chat_proto::v1::{self as pb, chat_service_client::ChatServiceClient, event::Kind};
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

#[derive(Clone)]
struct Bearer(String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| Status::internal("bad token"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Client = ChatServiceClient<InterceptedService<Channel, Bearer>>;

struct Options {
    addr: String,
    subscribe_addr: Option<String>,
    secret: String,
    threads: usize,
    senders: usize,
    messages: usize,
    rate: f64,
}

fn parse() -> anyhow::Result<Options> {
    let mut options = Options {
        addr: "127.0.0.1:50051".into(),
        subscribe_addr: None,
        secret: std::env::var("JWT_SECRET").unwrap_or_default(),
        threads: 100,
        senders: 64,
        messages: 20_000,
        rate: 0.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => options.addr = value,
            "--subscribe-addr" => options.subscribe_addr = Some(value),
            "--secret" => options.secret = value,
            "--threads" => options.threads = value.parse()?,
            "--senders" => options.senders = value.parse()?,
            "--messages" => options.messages = value.parse()?,
            "--rate" => options.rate = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    if options.secret.is_empty() {
        bail!("--secret (or JWT_SECRET) is required");
    }
    Ok(options)
}

async fn client(addr: &str, token: String) -> anyhow::Result<Client> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(ChatServiceClient::with_interceptor(channel, Bearer(token)))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse()?;
    let issuer = TokenIssuer::new(options.secret.as_bytes(), None, None);
    let token = |sub: &str| issuer.issue(sub, Role::User, Duration::from_secs(3600));
    let run = format!("{:x}", std::process::id());
    let subscribe_addr = options
        .subscribe_addr
        .clone()
        .unwrap_or(options.addr.clone());

    // Threads, each with a subscribed second participant.
    let mut threads = Vec::with_capacity(options.threads);
    let mut receivers = Vec::with_capacity(options.threads);
    let start = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(options.messages)));
    let sender = format!("bench-{run}-a");
    let mut creator = client(&options.addr, token(&sender)?).await?;
    for i in 0..options.threads {
        let reader = format!("bench-{run}-b{i}");
        let thread_id = creator
            .create_thread(pb::CreateThreadRequest {
                participants: vec![reader.clone()],
                ..Default::default()
            })
            .await?
            .into_inner()
            .thread
            .context("thread")?
            .id;
        let mut subscriber = client(&subscribe_addr, token(&reader)?).await?;
        let mut stream = subscriber
            .subscribe(pb::SubscribeRequest {
                thread_id: Some(thread_id.clone()),
                since_seq: None,
                ..Default::default()
            })
            .await?
            .into_inner();
        let latencies = latencies.clone();
        receivers.push(tokio::spawn(async move {
            let _keep = subscriber;
            while let Ok(Some(event)) = stream.message().await {
                if let Some(Kind::MessageCreated(created)) = event.kind {
                    let sent_nanos: u64 = created
                        .message
                        .and_then(|m| m.content.parse().ok())
                        .unwrap_or(0);
                    let sent = start + Duration::from_nanos(sent_nanos);
                    let latency = Instant::now().saturating_duration_since(sent);
                    if let Ok(mut all) = latencies.lock() {
                        all.push(latency);
                    }
                }
            }
        }));
        threads.push(thread_id);
    }

    // Senders: one connection each, threads taken round-robin.
    let per_sender = options.messages / options.senders.max(1);
    let interval = if options.rate > 0.0 {
        Some(Duration::from_secs_f64(
            options.senders as f64 / options.rate,
        ))
    } else {
        None
    };
    let threads = Arc::new(threads);
    let began = Instant::now();
    let mut sending = Vec::new();
    for s in 0..options.senders {
        let threads = threads.clone();
        let mut sender_client = client(&options.addr, token(&sender)?).await?;
        sending.push(tokio::spawn(async move {
            let mut ticker = interval.map(tokio::time::interval);
            for n in 0..per_sender {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let thread_id = &threads[(s + n * 7919) % threads.len()];
                let sent = start.elapsed().as_nanos().to_string();
                sender_client
                    .send_message(pb::SendMessageRequest {
                        thread_id: thread_id.clone(),
                        content: sent,
                        ..Default::default()
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in sending {
        task.await??;
    }
    let acked = began.elapsed();
    let expected = per_sender * options.senders;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered = latencies.lock().map(|l| l.len()).unwrap_or(0);
        if delivered >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_at = began.elapsed();
    for receiver in receivers {
        receiver.abort();
    }
    let mut latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_unstable();
    println!(
        "threads={} senders={} messages={} rate_target={}",
        options.threads,
        options.senders,
        expected,
        if options.rate > 0.0 {
            format!("{}/s", options.rate)
        } else {
            "max".into()
        }
    );
    println!(
        "acknowledged {} in {:.2}s ({:.0} msg/s); delivered {} in {:.2}s ({:.0} msg/s)",
        expected,
        acked.as_secs_f64(),
        expected as f64 / acked.as_secs_f64(),
        latencies.len(),
        delivered_at.as_secs_f64(),
        latencies.len() as f64 / delivered_at.as_secs_f64(),
    );
    println!(
        "send-to-delivery latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.90).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    if latencies.len() < expected {
        bail!(
            "only {} of {} messages were delivered",
            latencies.len(),
            expected
        );
    }
    Ok(())
}
