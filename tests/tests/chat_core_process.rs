//! chat-core as a new user meets it: the real binary, started with nothing
//! configured (or with PostgreSQL), a token from `chat-core token`, and gRPC
//! clients that discover the API through reflection.

use std::time::Duration;

use chat_proto::v1::{self as pb, chat_service_client::ChatServiceClient};
use system_tests::{Process, addr_in, binary, http_get, run};
use tonic::{
    Request, Status,
    service::Interceptor,
    transport::{Channel, Endpoint},
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const START: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Bearer(String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0).parse().expect("header");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// The service names reflection lists.
async fn reflected_services(channel: Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// Whether reflection can describe `symbol` (the file defining it).
async fn reflection_describes(channel: Channel, symbol: &str) -> bool {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    matches!(
        responses.message().await.expect("response").and_then(|r| r.message_response),
        Some(MessageResponse::FileDescriptorResponse(files)) if !files.file_descriptor_proto.is_empty()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_runs_it_with_nothing_configured() {
    let chat_core = binary("chat-core");
    let dir = tempfile::tempdir().expect("temp dir");

    // A token first: this creates the development secret under ./data.
    let (ok, alice_token, stderr) = run(&chat_core, &["token", "--sub", "alice"], dir.path(), &[]);
    assert!(ok, "token: {stderr}");
    let alice_token = alice_token.trim().to_owned();
    assert_eq!(alice_token.split('.').count(), 3, "a JWT: {alice_token}");
    assert!(dir.path().join("data/jwt-secret").exists());
    let (ok, bob_token, _) = run(
        &chat_core,
        &["token", "--sub", "bob", "--ttl", "60"],
        dir.path(),
        &[],
    );
    assert!(ok);
    let bob_token = bob_token.trim().to_owned();

    let mut server = Process::start(
        &chat_core,
        &[],
        dir.path(),
        &[
            ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
        ],
    );
    let line = server.wait_for_line("chat-core listening", START);
    let grpc = addr_in(&line, "grpc");
    let http = addr_in(&line, "http");
    assert!(
        dir.path().join("data/chat.db").exists(),
        "the embedded database lives under ./data"
    );
    assert!(server.log().contains("development secret"));

    let names = reflected_services(channel(grpc).await).await;
    for expected in [
        "chat.v1.ChatService",
        "chat.v1.IntegrationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(reflection_describes(channel(grpc).await, "chat.v1.ChatService").await);
    assert!(reflection_describes(channel(grpc).await, "chat.v1.Message").await);

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(grpc).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut alice =
        ChatServiceClient::with_interceptor(channel(grpc).await, Bearer(alice_token.clone()));
    let mut bob = ChatServiceClient::with_interceptor(channel(grpc).await, Bearer(bob_token));
    let thread = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into()],
            job_id: Some("job-42".into()),
            title: Some("Bathroom tiles".into()),
        })
        .await
        .expect("create thread")
        .into_inner()
        .thread
        .expect("thread");
    let sent = alice
        .send_message(pb::SendMessageRequest {
            thread_id: thread.id.clone(),
            content: "Can you start Monday?".into(),
            client_msg_id: Some("m-1".into()),
            metadata_json: None,
            message_type: pb::MessageType::Text.into(),
        })
        .await
        .expect("send")
        .into_inner();
    assert!(sent.created);
    assert_eq!(sent.message.as_ref().map(|m| m.seq), Some(1));
    let page = bob
        .list_messages(pb::ListMessagesRequest {
            thread_id: thread.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let contents: Vec<_> = page.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["Can you start Monday?"]);
    assert_eq!(page.messages[0].sender_id.as_deref(), Some("alice"));

    let (status, body) = http_get(http, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, metrics) = http_get(http, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "chat_core_grpc_requests_total{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("chat_core_db_pool_max_connections"));

    let status = server.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("chat-core stopped"), "{log}");
    assert!(
        !log.contains("at the deadline"),
        "idle connections must not hold up shutdown: {log}"
    );
    assert!(!log.contains(&alice_token), "a token reached the log");
    let secret = std::fs::read_to_string(dir.path().join("data/jwt-secret")).expect("secret");
    assert!(!log.contains(secret.trim()), "the secret reached the log");

    // The data survives a restart.
    let mut again = Process::start(
        &chat_core,
        &[],
        dir.path(),
        &[
            ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
        ],
    );
    let grpc = addr_in(&again.wait_for_line("chat-core listening", START), "grpc");
    let mut alice = ChatServiceClient::with_interceptor(channel(grpc).await, Bearer(alice_token));
    let listed = alice
        .list_threads(pb::ListThreadsRequest::default())
        .await
        .expect("list threads")
        .into_inner();
    assert_eq!(listed.threads.len(), 1);
    assert_eq!(
        listed.threads[0]
            .last_message
            .as_ref()
            .map(|m| m.content.as_str()),
        Some("Can you start Monday?")
    );
    assert!(again.terminate(Duration::from_secs(30)).success());
}

#[test]
fn bad_configuration_stops_start_up_naming_the_variable() {
    let chat_core = binary("chat-core");
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("CHAT_CORE_GRPC_ADDR", "not-an-address")],
            "CHAT_CORE_GRPC_ADDR",
        ),
        (&[("LOG_FORMAT", "xml")], "LOG_FORMAT"),
        (
            &[("DATABASE_URL", "mysql://localhost/chat")],
            "DATABASE_URL",
        ),
        // A real database without token checks configured.
        (
            &[(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )],
            "JWT_SECRET",
        ),
    ];
    for (env, variable) in cases {
        let mut process = Process::start(&chat_core, &[], dir.path(), env);
        let status = process.wait(Duration::from_secs(30));
        assert!(!status.success(), "{env:?} must stop start-up");
        assert!(
            process.log().contains(variable),
            "{env:?}: {}",
            process.log()
        );
    }
    let (ok, _, stderr) = run(&chat_core, &["token"], dir.path(), &[]);
    assert!(!ok);
    assert!(stderr.contains("--sub"), "{stderr}");
    let (ok, _, stderr) = run(&chat_core, &["token", "--sub", "bad id"], dir.path(), &[]);
    assert!(!ok, "an invalid subject is refused: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_then_serve_on_postgresql() {
    let chat_core = binary("chat-core");
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("chat_test_{}", std::process::id());
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .expect("url");
    let (ok, _, stderr) = run(
        std::path::Path::new("psql"),
        &[
            &admin,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            "-c",
            &format!("CREATE DATABASE {name}"),
        ],
        dir.path(),
        &[],
    );
    assert!(ok, "PostgreSQL is required for this test: {stderr}");
    let url = format!("{base}/{name}");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET", "pg-process-secret"),
    ];

    let (ok, _, stderr) = run(&chat_core, &["migrate"], dir.path(), &env);
    assert!(ok, "migrate: {stderr}");
    let (ok, _, stderr) = run(&chat_core, &["migrate"], dir.path(), &env);
    assert!(ok, "migrating twice is harmless: {stderr}");
    let (ok, token, _) = run(&chat_core, &["token", "--sub", "alice"], dir.path(), &env);
    assert!(ok);

    let mut server = Process::start(
        &chat_core,
        &[],
        dir.path(),
        &[
            env[0],
            env[1],
            ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
            ("LOG_FORMAT", "json"),
        ],
    );
    let line = server.wait_for_line("chat-core listening", START);
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    let grpc: std::net::SocketAddr = parsed["grpc"]
        .as_str()
        .expect("grpc field")
        .parse()
        .expect("addr");
    assert!(
        !dir.path().join("data").exists(),
        "nothing embedded when DATABASE_URL is set"
    );
    let mut alice =
        ChatServiceClient::with_interceptor(channel(grpc).await, Bearer(token.trim().to_owned()));
    let created = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into()],
            job_id: None,
            title: None,
        })
        .await
        .expect("create")
        .into_inner();
    assert!(created.created);
    assert!(server.terminate(Duration::from_secs(30)).success());
    let _ = run(
        std::path::Path::new("psql"),
        &[
            &admin,
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ],
        dir.path(),
        &[],
    );
}
