//! Two chat-core replicas and two gateways, all real processes, on one
//! PostgreSQL and one Redis: browsers on different gateways chat in seq
//! order with no gap and no duplicate, and keep doing so when a chat-core
//! replica is killed in the middle of the conversation.

use std::{path::Path, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use system_tests::{PgDatabase, Process, addr_in, binary, free_port, token};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SECRET: &str = "two-by-two-secret";

fn start_core(dir: &Path, db: &str, prefix: &str, port: u16) -> (Process, String) {
    let grpc = format!("127.0.0.1:{port}");
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
        ],
    );
    let line = process.wait_for_line("chat-core listening", Duration::from_secs(60));
    let addr = addr_in(&line, "grpc");
    assert_eq!(addr.port(), port);
    (process, format!("http://{addr}"))
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
            ("GATEWAY_UPSTREAM_TIMEOUT_MS", "2000"),
        ],
    );
    let line = process.wait_for_line("chat-gateway listening", Duration::from_secs(60));
    (process, addr_in(&line, "addr"))
}

async fn socket(gateway: std::net::SocketAddr, thread: &str, token: &str) -> Socket {
    let (mut socket, _) = connect_async(format!("ws://{gateway}/ws/chat/{thread}/"))
        .await
        .expect("upgrade");
    socket
        .send(Message::Text(
            json!({"type": "auth", "token": token}).to_string().into(),
        ))
        .await
        .expect("auth");
    let ok = next(&mut socket).await;
    assert_eq!(ok["type"], "auth_ok");
    socket
}

async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("healthy");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// What one socket has seen: message seqs, in order, and acks by key.
#[derive(Default)]
struct Seen {
    seqs: Vec<i64>,
    acked: Vec<String>,
}

async fn read_frame(socket: &mut Socket, seen: &mut Seen) -> Value {
    let frame = next(socket).await;
    match frame["type"].as_str() {
        Some("chat_message") => seen.seqs.push(frame["seq"].as_i64().expect("seq")),
        Some("ack") => seen.acked.push(
            frame["client_msg_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => {}
    }
    frame
}

/// Sends a chat message and waits for its ack, re-sending with the same
/// key after an error (what a browser does when a replica goes away).
async fn say(socket: &mut Socket, seen: &mut Seen, key: &str) {
    for _ in 0..20 {
        socket
            .send(Message::Text(
                json!({"type": "chat_message", "content": key, "client_msg_id": key})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send");
        loop {
            let frame = read_frame(socket, seen).await;
            match frame["type"].as_str() {
                Some("ack") if frame["client_msg_id"] == key => return,
                Some("error") if frame["client_msg_id"] == key => {
                    // A replica going away is never `internal`.
                    assert_eq!(frame["code"], "unavailable", "{frame}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                _ => {}
            }
        }
    }
    panic!("{key} was never acknowledged");
}

async fn drain_until(socket: &mut Socket, seen: &mut Seen, last: i64) {
    while seen.seqs.last().copied().unwrap_or(0) < last {
        read_frame(socket, seen).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_replicas_and_a_replica_killed_mid_conversation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = PgDatabase::create(dir.path());
    let prefix = format!("gw-{}:", std::process::id());
    let (port_a, port_b) = (free_port(), free_port());
    let (mut core_a, url_a) = start_core(dir.path(), &db.url, &prefix, port_a);
    let (mut core_b, url_b) = start_core(dir.path(), &db.url, &prefix, port_b);
    let cores = format!("{url_a},{url_b}");
    let (g1, gateway_1) = start_gateway(dir.path(), &cores);
    let (g2, gateway_2) = start_gateway(dir.path(), &cores);

    let alice_token = token(dir.path(), SECRET, "alice");
    let bob_token = token(dir.path(), SECRET, "bob");
    let thread = {
        let (status, body) = system_tests::http_post_json(
            gateway_1,
            "/api/chat/threads/",
            &alice_token,
            &json!({"participants": ["bob"]}).to_string(),
        );
        assert_eq!(status, 201, "{body}");
        serde_json::from_str::<Value>(&body).expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };

    let mut alice = socket(gateway_1, &thread, &alice_token).await;
    let mut bob = socket(gateway_2, &thread, &bob_token).await;
    let (mut alice_seen, mut bob_seen) = (Seen::default(), Seen::default());
    // Bob also follows all his threads on one socket of the other gateway.
    let (mut bob_all, _) = connect_async(format!("ws://{gateway_1}/ws/chat/"))
        .await
        .expect("upgrade");
    bob_all
        .send(Message::Text(
            json!({"type": "auth", "token": bob_token})
                .to_string()
                .into(),
        ))
        .await
        .expect("auth");
    assert_eq!(next(&mut bob_all).await["type"], "auth_ok");
    let mut bob_all_seen = Seen::default();

    // A conversation across gateways (and so across replicas).
    let mut sent = 0;
    for round in 0..10 {
        say(&mut alice, &mut alice_seen, &format!("a-{round}")).await;
        say(&mut bob, &mut bob_seen, &format!("b-{round}")).await;
        sent += 2;
    }
    drain_until(&mut alice, &mut alice_seen, sent).await;
    drain_until(&mut bob, &mut bob_seen, sent).await;

    // A replica dies without warning in the middle of it; it comes back
    // and the other one dies. Every subscription lived on one of them, so
    // every socket lost its stream at least once.
    core_a.kill();
    for round in 10..15 {
        say(&mut alice, &mut alice_seen, &format!("a-{round}")).await;
        say(&mut bob, &mut bob_seen, &format!("b-{round}")).await;
        sent += 2;
    }
    let (_core_a_again, _) = start_core(dir.path(), &db.url, &prefix, port_a);
    core_b.kill();
    for round in 15..25 {
        say(&mut alice, &mut alice_seen, &format!("a-{round}")).await;
        say(&mut bob, &mut bob_seen, &format!("b-{round}")).await;
        sent += 2;
    }
    drain_until(&mut alice, &mut alice_seen, sent).await;
    drain_until(&mut bob, &mut bob_seen, sent).await;
    for gateway in [&g1, &g2] {
        assert!(
            gateway.log().contains("resubscribing"),
            "a socket's stream broke and was resumed:\n{}",
            gateway.log()
        );
    }

    drain_until(&mut bob_all, &mut bob_all_seen, sent).await;
    let expected: Vec<i64> = (1..=sent).collect();
    assert_eq!(
        bob_all_seen.seqs, expected,
        "bob's every-thread socket saw a gap or a duplicate"
    );
    assert_eq!(
        alice_seen.seqs, expected,
        "alice saw a gap, a duplicate or a reordering"
    );
    assert_eq!(
        bob_seen.seqs, expected,
        "bob saw a gap, a duplicate or a reordering"
    );
    // Each message once in storage too.
    let (status, body) = system_tests::http_get_auth(
        gateway_2,
        &format!("/api/chat/threads/{thread}/messages/?limit=200"),
        &bob_token,
    );
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        page["results"].as_array().expect("results").len() as i64,
        sent
    );
}
