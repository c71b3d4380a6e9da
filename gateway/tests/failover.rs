//! Failover between chat-core replicas, through a real gateway, real
//! chat-cores and real sockets: a replica that is down, dies, or shuts down
//! gracefully costs users no error while another replica can take the
//! call, and every way a call can be cut off by a lost connection is
//! `unavailable` (REST 503, frame code `unavailable`), never `internal`.
//!
//! A replica "dies" as a TCP proxy in front of a chat-core that drops every
//! connection and stops accepting, which is what the gateway sees of a
//! `kill -9`; the proxy can also cut one call in the middle, after its
//! request has left the gateway.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{call, spawn_gateway_with, token};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const FATE_UNKNOWN: &str =
    "chat service unavailable; the request may or may not have been carried out";

fn lookup(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

/// A chat-core on `database`, stopped (gracefully) by the sender.
async fn spawn_core(database: &str, secret: &str) -> (SocketAddr, oneshot::Sender<()>) {
    let settings = chat_core::config::Settings::from_lookup(lookup(vec![
        ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0".into()),
        ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0".into()),
        ("DATABASE_URL", database.to_owned()),
        ("JWT_SECRET", secret.to_owned()),
        ("SHUTDOWN_GRACE_SECONDS", "2".into()),
        ("CHAT_CORE_DRAIN_MS", "300".into()),
    ]))
    .expect("core settings");
    let core = chat_core::startup::Application::build(&settings)
        .await
        .expect("chat-core");
    let addr = core.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(core.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Sends are not rate-limited here: the tests send in bursts.
const UNLIMITED: &[(&str, &str)] = &[
    ("GATEWAY_SEND_RATE", "100000"),
    ("GATEWAY_SEND_BURST", "100000"),
];

const FORWARD: u8 = 0;
/// Drop the connection that carries the next request, without passing it
/// on: the call has left the gateway and never comes back.
const CUT_NEXT: u8 = 1;
/// Accept and never answer.
const SILENT: u8 = 2;

/// A TCP proxy in front of a chat-core.
struct Proxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    dead: watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let (dead, mut died) = watch::channel(false);
        let shared = mode.clone();
        let died_pipes = dead.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { return };
                        tokio::spawn(pipe(client, target, shared.clone(), died_pipes.clone()));
                    }
                    // The listener goes with this task: connects are refused.
                    _ = async { let _ = died.wait_for(|dead| *dead).await; } => return,
                }
            }
        });
        Proxy { addr, mode, dead }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `kill -9` looks like from the gateway: every connection drops
    /// and nothing accepts any more.
    fn kill(&self) {
        let _ = self.dead.send(true);
    }
}

async fn pipe(
    mut client: TcpStream,
    target: SocketAddr,
    mode: Arc<AtomicU8>,
    mut died: watch::Receiver<bool>,
) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
    loop {
        tokio::select! {
            read = client_read.read(&mut up) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                // Requests are far larger than the window updates, pings
                // and acks an idle connection carries.
                if n > 40
                    && mode
                        .compare_exchange(CUT_NEXT, FORWARD, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    return;
                }
                if mode.load(Ordering::SeqCst) == SILENT {
                    continue;
                }
                if server_write.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            read = server_read.read(&mut down) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if client_write.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
            _ = async { let _ = died.wait_for(|dead| *dead).await; } => return,
        }
    }
}

/// A port nothing listens on.
async fn dead_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

async fn socket(gateway: SocketAddr, thread: &str, token: &str) -> Socket {
    let (mut socket, _) = connect_async(format!("ws://{gateway}/ws/chat/{thread}/"))
        .await
        .expect("upgrade");
    socket
        .send(Message::Text(
            json!({"type": "auth", "token": token}).to_string().into(),
        ))
        .await
        .expect("auth");
    loop {
        let frame = next(&mut socket).await;
        if frame["type"] == "auth_ok" {
            return socket;
        }
    }
}

async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
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

/// Sends a chat message and returns the frame that answers it (its ack or
/// its error), skipping the events.
async fn say(socket: &mut Socket, content: &str, key: Option<&str>) -> Value {
    let mut frame = json!({"type": "chat_message", "content": content});
    if let Some(key) = key {
        frame["client_msg_id"] = json!(key);
    }
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    loop {
        let frame = next(socket).await;
        if matches!(frame["type"].as_str(), Some("ack" | "error")) {
            return frame;
        }
    }
}

async fn new_thread(gateway: SocketAddr, owner: &str) -> String {
    let created = call(
        gateway,
        "POST",
        "/api/chat/threads/",
        Some(owner),
        Some(r#"{"participants": ["bob"]}"#),
    )
    .await;
    assert!(matches!(created.status, 200 | 201), "{created:?}");
    created.json["id"].as_str().expect("id").to_owned()
}

/// Every kind of call, a few times: thread reads and creation, sends with
/// and without a key over REST and WebSocket. None may fail.
async fn every_call_succeeds(gateway: SocketAddr, alice: &str, thread: &str, round: &str) {
    let mut ws = socket(gateway, thread, alice).await;
    for i in 0..8 {
        let list = call(gateway, "GET", "/api/chat/threads/", Some(alice), None).await;
        assert_eq!(list.status, 200, "{list:?}");
        let path = format!("/api/chat/threads/{thread}/messages/");
        let keyed = json!({"content": "hi", "client_msg_id": format!("{round}-rest-{i}")});
        let sent = call(
            gateway,
            "POST",
            &path,
            Some(alice),
            Some(&keyed.to_string()),
        )
        .await;
        assert!(matches!(sent.status, 200 | 201), "{sent:?}");
        let plain = call(
            gateway,
            "POST",
            &path,
            Some(alice),
            Some(r#"{"content": "hi"}"#),
        )
        .await;
        assert!(matches!(plain.status, 200 | 201), "{plain:?}");
        let key = format!("{round}-ws-{i}");
        let acked = say(&mut ws, "hi", Some(&key)).await;
        assert_eq!(acked["type"], "ack", "{acked}");
        let acked = say(&mut ws, "hi", None).await;
        assert_eq!(acked["type"], "ack", "{acked}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_down_or_dies_costs_no_error() {
    let db = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", db.path().join("chat.db").display());
    let secret = "failover-secret";
    let (core, _stop) = spawn_core(&url, secret).await;
    let proxy = Proxy::start(core).await;
    // A replica that was never up, one that will die, one that stays.
    let urls = format!("{},{},http://{core}", dead_port().await, proxy.url());
    let (gateway, _gateway_stop) = spawn_gateway_with(&urls, secret, UNLIMITED).await;
    let alice = token(secret, "alice");
    let thread = new_thread(gateway, &alice).await;

    every_call_succeeds(gateway, &alice, &thread, "before").await;
    proxy.kill();
    every_call_succeeds(gateway, &alice, &thread, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_costs_no_error() {
    // Several replicas share one database only on PostgreSQL.
    let database = support::TestDatabase::create(true);
    let url = database.url.clone();
    let secret = "failover-secret";
    let (core_a, stop_a) = spawn_core(&url, secret).await;
    let (core_b, _stop_b) = spawn_core(&url, secret).await;
    let urls = format!("http://{core_a},http://{core_b}");
    let (gateway, _gateway_stop) = spawn_gateway_with(&urls, secret, UNLIMITED).await;
    let alice = token(secret, "alice");
    let thread = new_thread(gateway, &alice).await;

    // Calls keep going while replica A drains and stops.
    let calls = tokio::spawn({
        let (alice, thread) = (alice.clone(), thread.clone());
        async move {
            // Before, during the drain, and after the replica is gone.
            let until = tokio::time::Instant::now() + Duration::from_millis(2500);
            let mut round = 0;
            while tokio::time::Instant::now() < until {
                every_call_succeeds(gateway, &alice, &thread, &format!("r{round}")).await;
                round += 1;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_a.send(());
    calls
        .await
        .expect("every call succeeded while a replica restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_off_by_a_lost_connection_are_unavailable() {
    let db = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", db.path().join("chat.db").display());
    let secret = "failover-secret";
    let (core, _stop) = spawn_core(&url, secret).await;
    let proxy = Proxy::start(core).await;
    // The proxy is the only replica, so nothing can route around it.
    let (gateway, _gateway_stop) = spawn_gateway_with(
        &proxy.url(),
        secret,
        &[("GATEWAY_UPSTREAM_TIMEOUT_MS", "1500")],
    )
    .await;
    let alice = token(secret, "alice");
    let thread = new_thread(gateway, &alice).await;
    let messages = format!("/api/chat/threads/{thread}/messages/");
    let mut ws = socket(gateway, &thread, &alice).await;
    assert_eq!(say(&mut ws, "warm", Some("warm")).await["type"], "ack");

    // Cut in the middle of a REST call that is not safe to repeat: 503,
    // and the client is told that the message's fate is unknown.
    proxy.mode.store(CUT_NEXT, Ordering::SeqCst);
    let cut = call(
        gateway,
        "POST",
        &messages,
        Some(&alice),
        Some(r#"{"content": "cut"}"#),
    )
    .await;
    assert_eq!(cut.status, 503, "{cut:?}");
    assert_eq!(cut.json["error"]["code"], "unavailable");
    assert_eq!(cut.json["error"]["message"], FATE_UNKNOWN);

    // The same over a WebSocket.
    let mut ws = socket(gateway, &thread, &alice).await;
    proxy.mode.store(CUT_NEXT, Ordering::SeqCst);
    let cut = say(&mut ws, "cut", None).await;
    assert_eq!(cut["type"], "error", "{cut}");
    assert_eq!(cut["code"], "unavailable", "{cut}");
    assert_eq!(cut["message"], FATE_UNKNOWN, "{cut}");

    // A keyed send cut off the same way is sent again and acknowledged.
    proxy.mode.store(CUT_NEXT, Ordering::SeqCst);
    let acked = say(&mut ws, "keyed", Some("keyed-1")).await;
    assert_eq!(acked["type"], "ack", "{acked}");
    let keyed = json!({"content": "keyed", "client_msg_id": "keyed-2"}).to_string();
    proxy.mode.store(CUT_NEXT, Ordering::SeqCst);
    let sent = call(gateway, "POST", &messages, Some(&alice), Some(&keyed)).await;
    assert!(matches!(sent.status, 200 | 201), "{sent:?}");

    // A replica that accepts and never answers: the deadline, 503.
    proxy.mode.store(SILENT, Ordering::SeqCst);
    let silent = call(gateway, "GET", "/api/chat/threads/", Some(&alice), None).await;
    assert_eq!(silent.status, 503, "{silent:?}");
    assert_eq!(silent.json["error"]["code"], "unavailable");
    let silent = say(&mut ws, "silent", Some("silent-1")).await;
    assert_eq!(silent["code"], "unavailable", "{silent}");

    // Gone altogether: connects refused.
    proxy.kill();
    let gone = call(gateway, "GET", "/api/chat/threads/", Some(&alice), None).await;
    assert_eq!(gone.status, 503, "{gone:?}");
    assert_eq!(gone.json["error"]["code"], "unavailable");
    let gone = call(
        gateway,
        "POST",
        &messages,
        Some(&alice),
        Some(r#"{"content": "gone"}"#),
    )
    .await;
    assert_eq!(gone.status, 503, "{gone:?}");
    assert_eq!(gone.json["error"]["code"], "unavailable");
    // The socket's stream went with the replica: it is told to reconnect,
    // or its send is unavailable; never internal.
    let mut frame = json!({"type": "chat_message", "content": "gone", "client_msg_id": "gone-1"});
    frame["thread_id"] = json!(thread);
    let _ = ws.send(Message::Text(frame.to_string().into())).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame["type"] == "error" {
                    assert_eq!(frame["code"], "unavailable", "{frame}");
                    break;
                }
            }
            Some(Ok(Message::Close(Some(close)))) => {
                assert_eq!(u16::from(close.code), 1012, "{close:?}");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolves_into_replicas_and_unreachable_ones_are_skipped() {
    let db = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", db.path().join("chat.db").display());
    let secret = "failover-secret";
    let (core, _stop) = spawn_core(&url, secret).await;
    // `localhost` resolves to 127.0.0.1, where chat-core listens, and on
    // most machines to ::1 too, where nothing does: every address is a
    // replica, and the one that cannot connect takes no call.
    let urls = format!("http://localhost:{}", core.port());
    let (gateway, _gateway_stop) = spawn_gateway_with(&urls, secret, UNLIMITED).await;
    let alice = token(secret, "alice");
    // The name is resolved in the background: the first call may find no
    // replica yet and is tried again within its deadline.
    let thread = new_thread(gateway, &alice).await;
    every_call_succeeds(gateway, &alice, &thread, "dns").await;
}
