//! `spawn_app`: a real chat-core on 127.0.0.1:0 over a fresh database (a
//! new SQLite file, or a new PostgreSQL database), and gRPC clients for it.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chat_core::{config::Settings, startup::Application};
use chat_proto::v1::chat_service_client::ChatServiceClient;
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::oneshot;
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Which storage backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database; the SQLite file lives as long as this value.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("chat.db").display());
                TestDatabase {
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|err| {
                    panic!(
                        "PostgreSQL is required for these tests and is not reachable at \
                         {admin} (set TEST_DATABASE_URL): {err}"
                    )
                });
                let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDatabase {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }
}

/// A running chat-core.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub db_url: String,
    pub http_addr: SocketAddr,
    pub secret: String,
    pub backend: Backend,
    stop: Option<oneshot::Sender<()>>,
    _db: TestDatabase,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts chat-core on 127.0.0.1:0 over a fresh database of `backend`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = TestDatabase::create(backend).await;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    spawn_on(db, backend, secret).await
}

/// The same, with extra settings.
pub async fn spawn_app_with(backend: Backend, extra: &[(&'static str, &str)]) -> TestApp {
    let db = TestDatabase::create(backend).await;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    spawn_on_with(db, backend, secret, extra).await
}

impl TestApp {
    /// A second chat-core over this one's database, accepting the same
    /// tokens: another replica. PostgreSQL only (SQLite is one process's
    /// file).
    pub async fn replica(&self) -> TestApp {
        assert_eq!(self.backend, Backend::Postgres, "replicas share PostgreSQL");
        let db = TestDatabase {
            url: self.db_url.clone(),
            _dir: None,
        };
        spawn_on(db, self.backend, self.secret.clone()).await
    }
}

impl TestApp {
    /// Another chat-core over this one's database with extra settings: a
    /// replica on PostgreSQL, or on SQLite the next process over the same
    /// file (stop this one first).
    pub async fn restart_with(&self, extra: &[(&'static str, &str)]) -> TestApp {
        let db = TestDatabase {
            url: self.db_url.clone(),
            _dir: None,
        };
        spawn_on_with(db, self.backend, self.secret.clone(), extra).await
    }
}

/// Starts chat-core over `db` (which may already hold data).
pub async fn spawn_on(db: TestDatabase, backend: Backend, secret: String) -> TestApp {
    spawn_on_with(db, backend, secret, &[]).await
}

/// The same, with extra settings.
pub async fn spawn_on_with(
    db: TestDatabase,
    backend: Backend,
    secret: String,
    extra: &[(&'static str, &str)],
) -> TestApp {
    let mut vars = vec![
        ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("DATABASE_MAX_CONNECTIONS", "5".to_owned()),
        ("JWT_SECRET", secret.clone()),
        ("SHUTDOWN_GRACE_SECONDS", "1".to_owned()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let settings = Settings::from_lookup(|name| {
        vars.iter()
            .rfind(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("test settings");
    let app = Application::build(&settings)
        .await
        .expect("build chat-core");
    let grpc_addr = app.grpc_addr();
    let http_addr = app.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        grpc_addr,
        db_url: db.url.clone(),
        http_addr,
        secret,
        backend,
        stop: Some(stop),
        _db: db,
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token, made independently of the code under test.
pub fn sign(secret: &str, sub: &str, role: Option<&str>, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub, exp, role },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// Adds `authorization: Bearer …` to every call (or nothing, for `None`).
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}").parse().expect("header value");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

pub type Client = ChatServiceClient<InterceptedService<Channel, Bearer>>;

/// Runs each listed test once per backend, each against its own database.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::support::spawn_app(super::support::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::support::spawn_app(super::support::Backend::Postgres).await).await;
                }
            )*
        }
    };
}

impl TestApp {
    /// Sends the shutdown signal, as SIGTERM would.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to chat-core")
    }

    /// A client calling as user `sub`.
    pub async fn user(&self, sub: &str) -> Client {
        let token = sign(&self.secret, sub, None, now() + 3600);
        ChatServiceClient::with_interceptor(self.channel().await, Bearer(Some(token)))
    }

    /// A client calling as user `sub` over a connection with small HTTP/2
    /// windows (64 KiB), like a slow mobile reader: the server can park
    /// little data in flight for it.
    pub async fn user_with_small_window(&self, sub: &str) -> Client {
        let token = sign(&self.secret, sub, None, now() + 3600);
        let channel = Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("uri")
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535))
            .connect()
            .await
            .expect("connect to chat-core");
        ChatServiceClient::with_interceptor(channel, Bearer(Some(token)))
    }

    /// An `IntegrationService` client calling with `token`.
    pub async fn integrations(
        &self,
        token: String,
    ) -> chat_proto::v1::integration_service_client::IntegrationServiceClient<
        InterceptedService<Channel, Bearer>,
    > {
        chat_proto::v1::integration_service_client::IntegrationServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    /// A user token.
    pub fn user_token(&self, sub: &str) -> String {
        sign(&self.secret, sub, None, now() + 3600)
    }

    /// A service token.
    pub fn service_token(&self, sub: &str) -> String {
        sign(&self.secret, sub, Some("service"), now() + 3600)
    }

    /// The outbox as stored: (id, event type, message id (none for a blocked
    /// message's moderation event), actor, payload).
    pub async fn outbox(&self) -> Vec<(i64, String, Option<uuid::Uuid>, Option<String>, String)> {
        let sql = "SELECT id, event_type, message_id, actor_id, payload FROM integration_events ORDER BY id";
        match self.backend {
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.db_url).await.expect("connect");
                let rows = sqlx::query_as(sql).fetch_all(&pool).await.expect("outbox");
                pool.close().await;
                rows
            }
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.db_url)
                    .await
                    .expect("connect");
                let rows = sqlx::query_as(sql).fetch_all(&pool).await.expect("outbox");
                pool.close().await;
                rows
            }
        }
    }

    /// A client calling with a service token.
    pub async fn service(&self, sub: &str) -> Client {
        let token = sign(&self.secret, sub, Some("service"), now() + 3600);
        ChatServiceClient::with_interceptor(self.channel().await, Bearer(Some(token)))
    }

    /// A client sending `token` as is (`None`: no authorization at all).
    pub async fn with_token(&self, token: Option<String>) -> Client {
        ChatServiceClient::with_interceptor(self.channel().await, Bearer(token))
    }
}

/// Creates (or finds) the thread of the caller and `others` for `job`.
pub async fn create(
    client: &mut Client,
    others: &[&str],
    job: Option<&str>,
) -> chat_proto::v1::Thread {
    client
        .create_thread(chat_proto::v1::CreateThreadRequest {
            participants: others.iter().map(|s| s.to_string()).collect(),
            job_id: job.map(str::to_owned),
            title: None,
        })
        .await
        .expect("create thread")
        .into_inner()
        .thread
        .expect("thread")
}

/// Sends a text message; the stored message.
pub async fn send(client: &mut Client, thread_id: &str, content: &str) -> chat_proto::v1::Message {
    send_with(client, thread_id, content, None).await.0
}

/// Sends a text message with a client_msg_id: the message and whether it
/// was new.
pub async fn send_with(
    client: &mut Client,
    thread_id: &str,
    content: &str,
    client_msg_id: Option<&str>,
) -> (chat_proto::v1::Message, bool) {
    let response = client
        .send_message(chat_proto::v1::SendMessageRequest {
            thread_id: thread_id.to_owned(),
            content: content.to_owned(),
            client_msg_id: client_msg_id.map(str::to_owned),
            ..Default::default()
        })
        .await
        .expect("send message")
        .into_inner();
    (response.message.expect("message"), response.created)
}

impl TestApp {
    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.http_addr)
            .await
            .expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: chat-core\r\nConnection: close\r\n\r\n")
            .await
            .expect("request /metrics");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read /metrics");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// One unlabelled (or exactly labelled) sample of `/metrics`, e.g.
    /// `chat_core_writer_queue_depth` or
    /// `chat_core_writer_batch_size_bucket{le="4"}`.
    pub async fn metric(&self, sample: &str) -> u64 {
        let page = self.metrics().await;
        page.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("{sample} not in /metrics"))
            // Sums are written as floats (`7.0`); every figure asked for
            // here is a whole number.
            .parse::<f64>()
            .map(|value| value as u64)
            .unwrap_or_else(|err| panic!("{sample}: {err}"))
    }

    /// Waits until `sample` reads `value`. Not a timing assertion: the
    /// limit only turns a hang into a failure.
    pub async fn wait_for_metric(&self, sample: &str, value: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.metric(sample).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stayed at {now}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Makes the message writer's next transaction wait until
    /// [`WriteBlock::release`]: on PostgreSQL by locking a thread's row,
    /// on SQLite by taking the database's write lock (the writer waits up
    /// to its 5 s busy timeout, so release well before).
    pub async fn block_writes(&self, thread_id: &str) -> WriteBlock {
        block_writes(self.backend, &self.db_url, thread_id).await
    }

    /// Runs `statement` directly on the database, behind the service's back.
    pub async fn execute(&self, statement: &str) {
        match self.backend {
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.db_url).await.expect("connect");
                conn.execute(statement).await.expect("execute");
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.db_url)
                    .await
                    .expect("connect");
                conn.execute(statement).await.expect("execute");
            }
        }
    }

    /// A UUID as a literal of this backend's SQL (SQLite stores them as
    /// 16-byte blobs).
    pub fn uuid_literal(&self, id: &str) -> String {
        let id = uuid::Uuid::parse_str(id).expect("uuid");
        match self.backend {
            Backend::Postgres => format!("'{id}'::uuid"),
            Backend::Sqlite => format!("X'{}'", id.simple()),
        }
    }

    /// Runs `statement` (one row, one BIGINT) directly on the database.
    pub async fn count(&self, statement: &str) -> i64 {
        match self.backend {
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.db_url).await.expect("connect");
                sqlx::query_scalar(statement)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count")
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.db_url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(statement)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count")
            }
        }
    }
}

/// See [`TestApp::block_writes`]; for tests that drive the library
/// directly.
pub async fn block_writes(backend: Backend, db_url: &str, thread_id: &str) -> WriteBlock {
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(db_url).await.expect("connect");
            conn.execute("BEGIN").await.expect("begin");
            sqlx::query("SELECT 1 FROM threads WHERE id = $1 FOR UPDATE")
                .bind(uuid::Uuid::parse_str(thread_id).expect("thread id"))
                .fetch_one(&mut conn)
                .await
                .expect("lock the thread row");
            WriteBlock::Postgres(conn)
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(db_url)
                .await
                .expect("connect");
            conn.execute("BEGIN IMMEDIATE")
                .await
                .expect("take the write lock");
            WriteBlock::Sqlite(conn)
        }
    }
}

/// A held lock that the message writer waits on; see
/// [`TestApp::block_writes`].
pub enum WriteBlock {
    Postgres(PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl WriteBlock {
    pub async fn release(self) {
        match self {
            WriteBlock::Postgres(mut conn) => {
                conn.execute("ROLLBACK").await.expect("rollback");
            }
            WriteBlock::Sqlite(mut conn) => {
                conn.execute("ROLLBACK").await.expect("rollback");
            }
        }
    }
}
