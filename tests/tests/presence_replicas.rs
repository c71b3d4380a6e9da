//! Presence and offline reminders with two chat-core replicas and two
//! gateways, all real processes, on one PostgreSQL and one Redis: presence
//! frames cross gateways and replicas, a reconnect through the other
//! gateway within the grace period does not flap, a gateway killed without
//! a word takes its users offline within twice the grace period, one
//! stopped with SIGTERM releases its users so they go offline right after
//! the grace period, and an offline user's unread thread is reminded
//! exactly once.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chat_proto::v1::{self as pb, integration_service_client::IntegrationServiceClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use system_tests::{PgDatabase, Process, addr_in, binary, free_port, run, token};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SECRET: &str = "presence-two-by-two";

fn start_core(dir: &Path, db: &str, prefix: &str) -> (Process, String) {
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut process = Process::start(
        &binary("chat-core"),
        &[],
        dir,
        &[
            ("DATABASE_URL", db),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_CHANNEL_PREFIX", prefix),
            ("JWT_SECRET", SECRET),
            ("CHAT_CORE_GRPC_ADDR", grpc.as_str()),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
            ("PRESENCE_GRACE_SECONDS", "1"),
            ("REMINDER_AFTER_SECONDS", "1"),
            ("REMINDER_SCAN_INTERVAL_MS", "100"),
        ],
    );
    let line = process.wait_for_line("chat-core listening", Duration::from_secs(60));
    (process, format!("http://{}", addr_in(&line, "grpc")))
}

fn start_gateway(dir: &Path, cores: &str) -> (Process, std::net::SocketAddr) {
    let mut process = Process::start(
        &binary("chat-gateway"),
        &[],
        dir,
        &[
            ("CHAT_CORE_URL", cores),
            ("JWT_SECRET", SECRET),
            ("GATEWAY_ADDR", "127.0.0.1:0"),
        ],
    );
    let line = process.wait_for_line("chat-gateway listening", Duration::from_secs(60));
    (process, addr_in(&line, "addr"))
}

/// A user-wide socket, authenticated and subscribed.
async fn socket(gateway: std::net::SocketAddr, token: &str) -> Socket {
    let (mut socket, _) = connect_async(format!("ws://{gateway}/ws/chat/"))
        .await
        .expect("upgrade");
    socket
        .send(Message::Text(
            json!({"type": "auth", "token": token}).to_string().into(),
        ))
        .await
        .expect("auth");
    loop {
        let frame = presence_or_other(&mut socket, Duration::from_secs(20))
            .await
            .expect("auth_ok");
        if frame["type"] == "auth_ok" {
            return socket;
        }
    }
}

async fn presence_or_other(socket: &mut Socket, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()?
            .expect("open")
            .expect("healthy");
        if let Message::Text(text) = message {
            return Some(serde_json::from_str(&text).expect("JSON"));
        }
    }
}

/// The next presence frame within `within`.
async fn presence(socket: &mut Socket, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = presence_or_other(socket, left).await?;
        if frame["type"] == "presence" {
            return Some(frame);
        }
    }
}

/// Two chat-core replicas over one database and Redis, and two gateways
/// in front of both, with tokens for alice and bob. Fields drop in order:
/// the processes before the database they use.
struct Cluster {
    /// Taken by a test that stops it.
    g1: Option<Process>,
    _g2: Process,
    _cores: [Process; 2],
    core_urls: [String; 2],
    gateway_1: std::net::SocketAddr,
    gateway_2: std::net::SocketAddr,
    alice: String,
    bob: String,
    _db: PgDatabase,
}

impl Cluster {
    fn start(dir: &Path, name: &str) -> Cluster {
        let db = PgDatabase::create(dir);
        let prefix = format!("{name}-{}:", std::process::id());
        let (core_a, url_a) = start_core(dir, &db.url, &prefix);
        let (core_b, url_b) = start_core(dir, &db.url, &prefix);
        let cores = format!("{url_a},{url_b}");
        let (g1, gateway_1) = start_gateway(dir, &cores);
        let (g2, gateway_2) = start_gateway(dir, &cores);
        Cluster {
            g1: Some(g1),
            _g2: g2,
            _cores: [core_a, core_b],
            core_urls: [url_a, url_b],
            gateway_1,
            gateway_2,
            alice: token(dir, SECRET, "alice"),
            bob: token(dir, SECRET, "bob"),
            _db: db,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_reminders_across_two_replicas_and_two_gateways() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(dir.path(), "presence");
    let (gateway_1, gateway_2) = (cluster.gateway_1, cluster.gateway_2);
    let (alice, bob) = (cluster.alice.clone(), cluster.bob.clone());
    let mut g1 = cluster.g1.take().expect("gateway 1");
    let (status, body) = system_tests::http_post_json(
        gateway_1,
        "/api/chat/threads/",
        &alice,
        &json!({"participants": ["bob"]}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let thread = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob on gateway 2 hears alice come online on gateway 1.
    let mut bob_socket = socket(gateway_2, &bob).await;
    let alice_socket = socket(gateway_1, &alice).await;
    let online = presence(&mut bob_socket, Duration::from_secs(5))
        .await
        .expect("online frame");
    assert_eq!(
        online,
        json!({"type": "presence", "user_id": "alice", "online": true, "last_seen_at": null})
    );
    // Either gateway answers the presence query.
    let (status, body) =
        system_tests::http_get_auth(gateway_1, "/api/chat/presence/?users=alice,nobody", &bob);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"users": {"alice": {"online": true, "last_seen_at": null}}})
    );

    // Alice moves to gateway 2 within the grace period: no flap.
    drop(alice_socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alice_on_2 = socket(gateway_2, &alice).await;
    assert_eq!(
        presence(&mut bob_socket, Duration::from_secs(3)).await,
        None
    );
    drop(alice_on_2);
    // ... and then back to gateway 1, where she stays.
    let _alice_on_1 = socket(gateway_1, &alice).await;
    assert_eq!(
        presence(&mut bob_socket, Duration::from_secs(3)).await,
        None
    );

    // Gateway 1 is killed: no close is reported, its lease just stops.
    g1.kill();
    let killed = Instant::now();
    let offline = presence(&mut bob_socket, Duration::from_secs(5))
        .await
        .expect("offline frame");
    assert_eq!(offline["user_id"], "alice");
    assert_eq!(offline["online"], false);
    assert!(offline["last_seen_at"].is_string());
    assert!(
        killed.elapsed() <= Duration::from_secs(2),
        "within twice the grace period, not {:?}",
        killed.elapsed()
    );

    // Alice is offline: bob's message waits unread and she is reminded
    // once, by one of the two replicas.
    let (ok, service, stderr) = run(
        &binary("chat-core"),
        &["token", "--sub", "notifier", "--role", "service"],
        dir.path(),
        &[
            ("JWT_SECRET", SECRET),
            ("DATABASE_URL", "postgres://unused/x"),
        ],
    );
    assert!(ok, "{stderr}");
    let channel = tonic::transport::Channel::from_shared(cluster.core_urls[1].clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watcher = IntegrationServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::WatchIntegrationEventsRequest {
        after_event_id: 0,
        event_types: vec!["chat.unread_reminder".into()],
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", service.trim()).parse().unwrap(),
    );
    let mut reminders = watcher
        .watch_integration_events(request)
        .await
        .unwrap()
        .into_inner();
    bob_socket
        .send(Message::Text(
            json!({"type": "chat_message", "thread_id": thread, "content": "ping?"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let reminder = tokio::time::timeout(Duration::from_secs(10), reminders.message())
        .await
        .expect("a reminder")
        .unwrap()
        .unwrap();
    let payload: Value = serde_json::from_str(&reminder.payload_json).unwrap();
    assert_eq!(
        payload,
        json!({"user_id": "alice", "thread_id": thread, "unread_count": 1, "first_unread_seq": 1})
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(2), reminders.message())
            .await
            .is_err(),
        "exactly one reminder"
    );
}

/// A gateway stopped with SIGTERM releases its users on the way out: they
/// go offline once the grace period (1 s here) has passed since the
/// signal, not whenever its lease would have run out, and the presence
/// query agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_with_sigterm_releases_its_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(dir.path(), "presence-stop");
    let (gateway_1, gateway_2) = (cluster.gateway_1, cluster.gateway_2);
    let (alice, bob) = (cluster.alice.clone(), cluster.bob.clone());
    let mut g1 = cluster.g1.take().expect("gateway 1");
    let (status, body) = system_tests::http_post_json(
        gateway_2,
        "/api/chat/threads/",
        &alice,
        &json!({"participants": ["bob"]}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let mut bob_socket = socket(gateway_2, &bob).await;
    let _alice_socket = socket(gateway_1, &alice).await;
    let online = presence(&mut bob_socket, Duration::from_secs(5))
        .await
        .expect("online frame");
    assert_eq!(online["online"], true);

    let signalled = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        let status = g1.terminate(Duration::from_secs(20));
        (status, g1.log())
    });
    let offline = presence(&mut bob_socket, Duration::from_secs(5))
        .await
        .expect("offline frame");
    let after = signalled.elapsed();
    assert_eq!(offline["user_id"], "alice");
    assert_eq!(offline["online"], false);
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_millis(2_000),
        "the grace period after the signal, then a sweep; not {after:?}"
    );
    let (status, body) =
        system_tests::http_get_auth(gateway_2, "/api/chat/presence/?users=alice", &bob);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"users": {"alice": {"online": false, "last_seen_at": offline["last_seen_at"]}}})
    );
    let (exit, log) = stopping.await.expect("stopped");
    assert!(exit.success(), "{log}");
    assert!(log.contains("presence released for shutdown"), "{log}");
}
