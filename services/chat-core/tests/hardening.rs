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
