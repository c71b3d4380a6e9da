//! Issue 16's edge hardening as seen from a gRPC caller: tokens that are
//! not valid yet, malformed protobuf, and per-identity caps.

mod support;

use chat_proto::v1 as pb;
use serde_json::json;
use support::{Backend, now, spawn_app};
use tonic::Code;

/// An HS256 token with exactly `claims`.
fn token_with(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

#[tokio::test]
async fn tokens_not_valid_yet_are_refused_on_every_call() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut alice = app.user("alice").await;
    let thread = support::create(&mut alice, &["bob"], None).await;
    for claims in [
        json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
        json!({"sub": "alice", "exp": now() + 7200, "iat": now() + 3600}),
    ] {
        let mut early = app.with_token(Some(token_with(&app.secret, &claims))).await;
        let status = early
            .get_thread(pb::GetThreadRequest {
                thread_id: thread.id.clone(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{claims}");
        assert_eq!(status.message(), "token not yet valid");
        let status = early
            .subscribe(pb::SubscribeRequest {
                thread_id: Some(thread.id.clone()),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{claims}");
        assert_eq!(status.message(), "token not yet valid");
    }
    // A relay open with such a token ends at once.
    let (commands, requests) = tokio::sync::mpsc::channel(8);
    let mut relay = pb::relay_service_client::RelayServiceClient::new(app.channel().await)
        .relay(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .expect("relay")
        .into_inner();
    commands
        .send(pb::RelayRequest {
            kind: Some(pb::relay_request::Kind::Open(pb::RelayOpen {
                id: 1,
                token: token_with(
                    &app.secret,
                    &json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
                ),
                subscribe: Some(pb::SubscribeRequest::default()),
                request_id: "test".into(),
            })),
        })
        .await
        .unwrap();
    match relay.message().await.unwrap().unwrap().kind {
        Some(pb::relay_event::Kind::Ended(ended)) => {
            assert_eq!(ended.code, Code::Unauthenticated as i32);
            assert_eq!(ended.message, "token not yet valid");
        }
        other => panic!("{other:?}"),
    }
    // The same claims, due now, work.
    let mut due = app
        .with_token(Some(token_with(
            &app.secret,
            &json!({"sub": "alice", "exp": now() + 600, "nbf": now(), "iat": now()}),
        )))
        .await;
    due.get_thread(pb::GetThreadRequest {
        thread_id: thread.id.clone(),
    })
    .await
    .expect("a token due now works");
}

/// A request of the wrong shape: field 1 as a number where `chat.v1`
/// requests carry a string, and bytes that are not UTF-8 in field 2.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(uint64, tag = "1")]
    number: u64,
    #[prost(bytes = "vec", tag = "2")]
    bytes: Vec<u8>,
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user_token("alice");
    for path in [
        "/chat.v1.ChatService/GetThread",
        "/chat.v1.ChatService/CreateThread",
        "/chat.v1.IntegrationService/RequestDispute",
    ] {
        let mut grpc = tonic::client::Grpc::new(app.channel().await);
        grpc.ready().await.expect("ready");
        let mut request = tonic::Request::new(Garbage {
            number: 7,
            bytes: vec![0xff, 0xfe],
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let status = grpc
            .unary::<_, pb::GetThreadResponse, _>(
                request,
                http::uri::PathAndQuery::from_static(path),
                chat_proto::codec::StrictCodec::default(),
            )
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().starts_with("malformed message: "),
            "{path}: {status:?}"
        );
    }
}

#[tokio::test]
async fn live_subscriptions_are_capped_per_user_across_subscribe_and_relays() {
    use chat_proto::v1::{
        relay_event::Kind as RelayKind, relay_request::Kind as Command,
        relay_service_client::RelayServiceClient,
    };
    let app = support::spawn_app_with(
        Backend::Sqlite,
        &[("CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER", "2")],
    )
    .await;
    let mut alice = app.user("alice").await;
    let thread = support::create(&mut alice, &["bob"], None).await;
    let subscribe = || pb::SubscribeRequest {
        thread_id: Some(thread.id.clone()),
        ..Default::default()
    };
    let first = alice.subscribe(subscribe()).await.expect("first");
    let _second = alice.subscribe(subscribe()).await.expect("second");
    let status = alice.subscribe(subscribe()).await.expect_err("third");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "too many live subscriptions for this user"
    );

    // Relay subscriptions count too.
    let (commands, requests) = tokio::sync::mpsc::channel(8);
    let mut relay = RelayServiceClient::new(app.channel().await)
        .relay(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .expect("relay")
        .into_inner();
    commands
        .send(pb::RelayRequest {
            kind: Some(Command::Open(pb::RelayOpen {
                id: 1,
                token: app.user_token("alice"),
                subscribe: Some(subscribe()),
                request_id: "test".into(),
            })),
        })
        .await
        .unwrap();
    let answer = relay.message().await.unwrap().unwrap();
    match answer.kind {
        Some(RelayKind::Ended(ended)) => {
            assert_eq!(ended.code, Code::ResourceExhausted as i32);
            assert_eq!(ended.message, "too many live subscriptions for this user");
        }
        other => panic!("{other:?}"),
    }

    // Other users and service tokens are not affected.
    let mut bob = app.user("bob").await;
    bob.subscribe(subscribe()).await.expect("bob's own cap");
    let mut service = app.service("payments").await;
    let mut services = Vec::new();
    for _ in 0..3 {
        services.push(
            service
                .subscribe(subscribe())
                .await
                .expect("services are not capped"),
        );
    }

    // A stream that ends gives its place back.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        match alice.subscribe(subscribe()).await {
            Ok(stream) => {
                again = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert!(again.is_some(), "a place came back");
}

#[tokio::test]
async fn thread_creations_are_limited_per_user_per_minute() {
    let app = support::spawn_app_with(
        Backend::Sqlite,
        &[("CHAT_CORE_THREAD_CREATES_PER_MINUTE", "3")],
    )
    .await;
    let mut alice = app.user("alice").await;
    for other in ["b1", "b2", "b3"] {
        support::create(&mut alice, &[other], None).await;
    }
    let status = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["b4".into()],
            job_id: None,
            title: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "too many new threads; try again in a minute"
    );
    // Nothing was created; finding an existing thread is not limited.
    let again = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["b1".into()],
            job_id: None,
            title: None,
        })
        .await
        .expect("an existing thread is found")
        .into_inner();
    assert!(!again.created);
    let listed = alice
        .list_threads(pb::ListThreadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.threads.len(), 3);
    // Other users have their own allowance.
    let mut bob = app.user("bob").await;
    support::create(&mut bob, &["b4"], None).await;
}

/// Reads until the server closes the connection, within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) {
    use tokio::io::AsyncReadExt as _;
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the server closes the connection in time");
}

async fn connect_from(addr: std::net::SocketAddr, source: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind a loopback source");
    socket.connect(addr).await.expect("connect")
}

#[tokio::test]
async fn grpc_connections_must_ask_something_and_are_capped() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt as _;
    let app = support::spawn_app_with(
        Backend::Sqlite,
        &[
            ("CHAT_CORE_FIRST_REQUEST_TIMEOUT_SECONDS", "1"),
            ("CHAT_CORE_MAX_CONNECTIONS_PER_ADDRESS", "2"),
        ],
    )
    .await;
    // Silent, and the HTTP/2 preface alone: both closed.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(app.grpc_addr).await.unwrap();
    let mut preface = tokio::net::TcpStream::connect(app.grpc_addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    closed_within(&mut silent, Duration::from_secs(5)).await;
    closed_within(&mut preface, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that asked once may stay quiet as long as it likes.
    let mut alice = app.user("alice").await;
    let thread = support::create(&mut alice, &["bob"], None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    alice
        .get_thread(pb::GetThreadRequest {
            thread_id: thread.id.clone(),
        })
        .await
        .expect("the same connection still works");

    // Two connections per address; the third is closed at once.
    let _first = connect_from(app.grpc_addr, "127.0.0.2").await;
    let _second = connect_from(app.grpc_addr, "127.0.0.2").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect_from(app.grpc_addr, "127.0.0.2").await;
    closed_within(&mut third, Duration::from_millis(500)).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("chat_core_grpc_connections_refused_total{cap=\"per_address\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chat_core_grpc_connections_refused_total{cap=\"total\"} 0\n"),
        "{metrics}"
    );
}
