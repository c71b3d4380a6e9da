//! A real chat-core and a real gateway on 127.0.0.1:0 over a fresh
//! database, and a small HTTP client for them.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;
pub use sqlx_free_db::TestDatabase;
use tokio::sync::oneshot;

/// Fresh databases without pulling sqlx into the gateway's tests: SQLite
/// files in a temp dir, PostgreSQL databases made with `psql`.
pub mod sqlx_free_db {
    pub struct TestDatabase {
        pub url: String,
        _dir: tempfile::TempDir,
    }

    impl TestDatabase {
        pub fn create(postgres: bool) -> TestDatabase {
            let dir = tempfile::tempdir().expect("temp dir");
            if !postgres {
                let url = format!("sqlite://{}", dir.path().join("chat.db").display());
                return TestDatabase { url, _dir: dir };
            }
            let admin = std::env::var("TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
            let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
            let output = std::process::Command::new("psql")
                .args([
                    admin.as_str(),
                    "-q",
                    "-c",
                    &format!("CREATE DATABASE {name}"),
                ])
                .output()
                .expect("psql");
            assert!(
                output.status.success(),
                "PostgreSQL is required for these tests: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .expect("url");
            TestDatabase {
                url: format!("{base}/{name}"),
                _dir: dir,
            }
        }
    }
}

pub struct TestStack {
    pub gateway: SocketAddr,
    pub core: SocketAddr,
    pub secret: String,
    stops: Vec<oneshot::Sender<()>>,
    gateway_stop: Option<oneshot::Sender<()>>,
    _db: TestDatabase,
}

impl TestStack {
    /// The chat-core URL, for more gateways in front of it.
    pub fn core_url(&self) -> String {
        format!("http://{}", self.core)
    }

    /// Sends the gateway its shutdown signal, as SIGTERM would.
    pub fn stop_gateway(&mut self) {
        if let Some(stop) = self.gateway_stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        self.stop_gateway();
    }
}

/// The last value set for each name, so extras override the defaults.
fn lookup(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .rfind(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

/// chat-core (SQLite or PostgreSQL) and a gateway in front of it.
pub async fn spawn_stack(postgres: bool) -> TestStack {
    spawn_stack_with(postgres, &[]).await
}

/// The same, with extra settings (`CHAT_CORE_*` ones for chat-core, the
/// rest for the gateway).
pub async fn spawn_stack_with(postgres: bool, extra: &[(&'static str, &str)]) -> TestStack {
    let db = TestDatabase::create(postgres);
    let secret = format!("gateway-test-{}", uuid::Uuid::new_v4());
    let mut core_vars = vec![
        ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0".into()),
        ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0".into()),
        ("DATABASE_URL", db.url.clone()),
        ("JWT_SECRET", secret.clone()),
        ("SHUTDOWN_GRACE_SECONDS", "1".into()),
    ];
    // chat-core's own settings among the extras go to chat-core.
    core_vars.extend(
        extra
            .iter()
            .filter(|(k, _)| {
                ["CHAT_CORE_", "PRESENCE_", "REMINDER_"]
                    .iter()
                    .any(|prefix| k.starts_with(prefix))
            })
            .map(|(k, v)| (*k, (*v).to_owned())),
    );
    let core_settings =
        chat_core::config::Settings::from_lookup(lookup(core_vars)).expect("core settings");
    let core = chat_core::startup::Application::build(&core_settings)
        .await
        .expect("chat-core");
    let core_addr = core.grpc_addr();
    let (core_stop, core_stopped) = oneshot::channel::<()>();
    tokio::spawn(core.run_until_stopped(async {
        let _ = core_stopped.await;
    }));
    let (gateway, gateway_stop) =
        spawn_gateway_with(&format!("http://{core_addr}"), &secret, extra).await;
    TestStack {
        gateway,
        core: core_addr,
        secret,
        stops: vec![core_stop],
        gateway_stop: Some(gateway_stop),
        _db: db,
    }
}

/// A gateway in front of `chat_core_url`.
pub async fn spawn_gateway(chat_core_url: &str, secret: &str) -> (SocketAddr, oneshot::Sender<()>) {
    spawn_gateway_with(chat_core_url, secret, &[]).await
}

/// A gateway in front of `chat_core_url` with extra settings.
pub async fn spawn_gateway_with(
    chat_core_url: &str,
    secret: &str,
    extra: &[(&'static str, &str)],
) -> (SocketAddr, oneshot::Sender<()>) {
    let mut vars = vec![
        ("GATEWAY_ADDR", "127.0.0.1:0".to_owned()),
        ("CHAT_CORE_URL", chat_core_url.to_owned()),
        ("JWT_SECRET", secret.to_owned()),
        ("GATEWAY_UPSTREAM_TIMEOUT_MS", "3000".into()),
        ("SHUTDOWN_GRACE_SECONDS", "1".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let settings =
        chat_gateway::config::Settings::from_lookup(lookup(vars)).expect("gateway settings");
    let app = chat_gateway::startup::Application::build(&settings)
        .await
        .expect("gateway");
    let addr = app.addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// An HS256 token for `sub`, made independently of the code under test.
pub fn token(secret: &str, sub: &str) -> String {
    signed(secret, serde_json::json!({"sub": sub}))
}

/// An HS256 token for the service `sub` (`"role": "service"`), made
/// independently of the code under test.
#[allow(dead_code)] // Not every test file mints service tokens.
pub fn service_token(secret: &str, sub: &str) -> String {
    signed(secret, serde_json::json!({"sub": sub, "role": "service"}))
}

/// `claims` with an expiry an hour ahead, signed with HS256.
fn signed(secret: &str, mut claims: serde_json::Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    claims["exp"] = exp.into();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

/// An HTTP answer: status, headers and the body parsed as JSON (Null when
/// empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub json: Value,
}

impl Answer {
    /// Asserts docs/api.md#rest-api's error shape with `code`, returning the message.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let code = self.json["error"]["code"].as_str().expect("error.code");
        assert!(!code.is_empty());
        self.json["error"]["message"]
            .as_str()
            .expect("error.message")
            .to_owned()
    }
}

/// One HTTP request; `token` goes in `Authorization: Bearer`.
pub async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    call_with(addr, method, path, token, body, &[]).await
}

/// One HTTP request with extra headers.
pub async fn call_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(15), client.request(request))
        .await
        .expect("answer in time")
        .expect("http");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

/// The raw body of a GET.
pub async fn raw_get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client.request(request).await.expect("http");
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec()
}

/// A real WebSocket client for the gateway's sockets.
pub mod ws {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::Value;
    use tokio::net::TcpStream;
    use tokio_tungstenite::{
        MaybeTlsStream, WebSocketStream, connect_async,
        tungstenite::{Message, client::IntoClientRequest},
    };

    use super::TestStack;

    /// A client socket.
    pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

    /// How long a test waits for a frame.
    pub const WAIT: Duration = Duration::from_secs(10);

    /// Opens `path` on the stack's gateway with extra request headers.
    pub async fn connect(stack: &TestStack, path: &str, headers: &[(&str, &str)]) -> Socket {
        let mut request = format!("ws://{}{}", stack.gateway, path)
            .into_client_request()
            .expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        connect_async(request).await.expect("upgrade").0
    }

    /// Sends one JSON text frame.
    pub async fn send(socket: &mut Socket, frame: Value) {
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send frame");
    }

    /// The next JSON frame (pings are answered by the client library); a
    /// close instead fails the test.
    pub async fn next(socket: &mut Socket) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, socket.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("healthy socket");
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                    // Co-participants' presence comes whenever they connect;
                    // the tests that look for it read it on their own.
                    if frame["type"] != "presence" {
                        return frame;
                    }
                }
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    }
}
