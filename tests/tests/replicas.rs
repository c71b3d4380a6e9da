//! Several chat-core processes on one PostgreSQL and one Redis: live events
//! cross replicas in seq order, exactly once, even when Redis restarts in the
//! middle of a conversation.

use std::{net::SocketAddr, path::Path, time::Duration};

use chat_proto::v1::{self as pb, chat_service_client::ChatServiceClient, event::Kind};
use system_tests::{PgDatabase, Process, addr_in, binary, free_port, token};
use tonic::{
    Request, Status, Streaming,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

const SECRET: &str = "replica-test-secret";

#[derive(Clone)]
struct Bearer(String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0).parse().expect("header");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Client = ChatServiceClient<InterceptedService<Channel, Bearer>>;

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port}");
}

/// A chat-core replica process.
struct Replica {
    process: Process,
    grpc: SocketAddr,
}

fn start_replica(dir: &Path, database: &str, redis: &str, prefix: &str) -> Replica {
    let mut process = Process::start(
        &binary("chat-core"),
        &[],
        dir,
        &[
            ("DATABASE_URL", database),
            ("REDIS_URL", redis),
            ("REDIS_CHANNEL_PREFIX", prefix),
            ("JWT_SECRET", SECRET),
            ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
        ],
    );
    let line = process.wait_for_line("chat-core listening", Duration::from_secs(60));
    Replica {
        grpc: addr_in(&line, "grpc"),
        process,
    }
}

fn service_token(dir: &Path) -> String {
    let (ok, token, stderr) = system_tests::run(
        &binary("chat-core"),
        &["token", "--sub", "watcher", "--role", "service"],
        dir,
        &[
            ("JWT_SECRET", SECRET),
            ("DATABASE_URL", "postgres://unused/x"),
        ],
    );
    assert!(ok, "token: {stderr}");
    token.trim().to_owned()
}

async fn integrations(
    addr: SocketAddr,
    token: &str,
) -> pb::integration_service_client::IntegrationServiceClient<InterceptedService<Channel, Bearer>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    pb::integration_service_client::IntegrationServiceClient::with_interceptor(
        channel,
        Bearer(token.to_owned()),
    )
}

async fn client(addr: SocketAddr, token: &str) -> Client {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    ChatServiceClient::with_interceptor(channel, Bearer(token.to_owned()))
}

async fn subscribe(client: &mut Client, thread_id: &str) -> Streaming<pb::Event> {
    client
        .subscribe(pb::SubscribeRequest {
            thread_id: Some(thread_id.to_owned()),
            since_seq: None,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// Reads message events until `total`, asserting 1..=total in order.
async fn expect_all(stream: &mut Streaming<pb::Event>, total: i64, within: Duration) {
    let mut expected = 1;
    let deadline = tokio::time::Instant::now() + within;
    while expected <= total {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} messages arrived", expected - 1))
            .expect("stream healthy")
            .expect("stream open");
        if let Some(Kind::MessageCreated(_)) = event.kind {
            assert_eq!(event.seq, expected, "out of order, duplicated or missing");
            expected += 1;
        }
    }
    // And nothing more.
    if let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(500), stream.message()).await
    {
        assert!(
            !matches!(event.kind, Some(Kind::MessageCreated(_))),
            "an extra message: {event:?}"
        );
    }
}

async fn send_many(mut client: Client, thread_id: String, count: usize, pause: Duration) {
    for i in 0..count {
        client
            .send_message(pb::SendMessageRequest {
                thread_id: thread_id.clone(),
                content: format!("message {i}"),
                client_msg_id: Some(format!("{}-{i}", uuid_like())),
                ..Default::default()
            })
            .await
            .expect("send is acknowledged");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_concurrent_sends_in_order_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = PgDatabase::create(dir.path());
    let prefix = format!("test-{}:", uuid_like());
    let redis = "redis://127.0.0.1:6379";
    let a = start_replica(dir.path(), &db.url, redis, &prefix);
    let b = start_replica(dir.path(), &db.url, redis, &prefix);
    let alice = token(dir.path(), SECRET, "alice");
    let bob = token(dir.path(), SECRET, "bob");

    // Bob follows all his threads on B before the thread exists.
    let mut bob_on_b = client(b.grpc, &bob).await;
    let mut bob_everything = bob_on_b
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();

    let mut alice_on_a = client(a.grpc, &alice).await;
    let thread_id = alice_on_a
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into()],
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .thread
        .expect("thread")
        .id;
    let synced = bob_everything
        .message()
        .await
        .expect("healthy")
        .expect("open");
    assert!(matches!(synced.kind, Some(Kind::Synced(_))), "{synced:?}");
    let created = tokio::time::timeout(Duration::from_secs(10), bob_everything.message())
        .await
        .expect("thread_created crosses replicas")
        .expect("healthy")
        .expect("open");
    assert!(matches!(created.kind, Some(Kind::ThreadCreated(_))));
    assert_eq!(created.thread_id, thread_id);

    let mut on_a = subscribe(&mut alice_on_a, &thread_id).await;
    let mut on_b = subscribe(&mut bob_on_b, &thread_id).await;

    const EACH: usize = 100;
    let senders = [
        tokio::spawn(send_many(
            client(a.grpc, &alice).await,
            thread_id.clone(),
            EACH,
            Duration::ZERO,
        )),
        tokio::spawn(send_many(
            client(b.grpc, &bob).await,
            thread_id.clone(),
            EACH,
            Duration::ZERO,
        )),
    ];
    for sender in senders {
        sender.await.expect("sender");
    }
    let total = (2 * EACH) as i64;
    expect_all(&mut on_a, total, Duration::from_secs(20)).await;
    expect_all(&mut on_b, total, Duration::from_secs(20)).await;
    expect_all(&mut bob_everything, total, Duration::from_secs(20)).await;

    // Integration events cross replicas too: written on A, watched on B.
    let service = service_token(dir.path());
    let mut watcher = integrations(b.grpc, &service)
        .await
        .watch_integration_events(pb::WatchIntegrationEventsRequest {
            after_event_id: 0,
            event_types: vec![],
        })
        .await
        .expect("watch")
        .into_inner();
    let mut on_a = integrations(a.grpc, &alice).await;
    for i in 0..5 {
        on_a.initiate_payment(pb::InitiatePaymentRequest {
            thread_id: thread_id.clone(),
            amount: format!("{}.50", i + 1),
            currency: "EUR".into(),
            job_id: None,
        })
        .await
        .expect("payment");
    }
    for id in 1..=5 {
        let event = tokio::time::timeout(Duration::from_secs(10), watcher.message())
            .await
            .expect("in time")
            .expect("healthy")
            .expect("open");
        assert_eq!(
            (event.id, event.event_type.as_str()),
            (id, "payment.initiated")
        );
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_missing_after_redis_restarts_mid_conversation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = PgDatabase::create(dir.path());
    let port = free_port();
    let port_text = port.to_string();
    let redis_args = [
        "--port",
        port_text.as_str(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    let mut redis_server = Process::start(Path::new("redis-server"), &redis_args, dir.path(), &[]);
    wait_for_port(port);
    let redis = format!("redis://127.0.0.1:{port}");
    let prefix = "restart:";
    let a = start_replica(dir.path(), &db.url, &redis, prefix);
    let b = start_replica(dir.path(), &db.url, &redis, prefix);
    let alice = token(dir.path(), SECRET, "alice");
    let bob = token(dir.path(), SECRET, "bob");

    let mut alice_on_a = client(a.grpc, &alice).await;
    let thread_id = alice_on_a
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into()],
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .thread
        .expect("thread")
        .id;
    let mut on_a = subscribe(&mut alice_on_a, &thread_id).await;
    let mut bob_on_b = client(b.grpc, &bob).await;
    let mut on_b = subscribe(&mut bob_on_b, &thread_id).await;

    // Some messages with Redis up, some while it is down (the last ones
    // of the conversation: no later message can reveal the gap), then Redis
    // comes back.
    const EACH: usize = 40;
    let pause = Duration::from_millis(10);
    let up = [
        tokio::spawn(send_many(
            client(a.grpc, &alice).await,
            thread_id.clone(),
            EACH / 2,
            pause,
        )),
        tokio::spawn(send_many(
            client(b.grpc, &bob).await,
            thread_id.clone(),
            EACH / 2,
            pause,
        )),
    ];
    for sender in up {
        sender.await.expect("every send was acknowledged");
    }
    let status = redis_server.terminate(Duration::from_secs(10));
    assert!(status.code().is_some(), "redis stopped");
    // One message per replica: a lost notification of the last message
    // can only be repaired by the resync.
    let down = [
        tokio::spawn(send_many(
            client(a.grpc, &alice).await,
            thread_id.clone(),
            1,
            pause,
        )),
        tokio::spawn(send_many(
            client(b.grpc, &bob).await,
            thread_id.clone(),
            1,
            pause,
        )),
    ];
    for sender in down {
        sender
            .await
            .expect("sends are acknowledged while Redis is down");
    }
    // Let the failed publishes happen before Redis is back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _redis_again = Process::start(Path::new("redis-server"), &redis_args, dir.path(), &[]);
    wait_for_port(port);
    let total = EACH as i64 + 2;
    expect_all(&mut on_a, total, Duration::from_secs(30)).await;
    expect_all(&mut on_b, total, Duration::from_secs(30)).await;
    assert!(
        a.process.log().contains("resync") || b.process.log().contains("resync"),
        "the replicas noticed the outage:\n{}\n{}",
        a.process.log(),
        b.process.log()
    );
}
