//! Issue 16's edge hardening, tried from outside as an attacker would:
//! tokens not valid yet, WebSocket close codes, security headers, loose
//! JSON, idle and slow connections, per-user caps.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{TestStack, call, spawn_stack, token};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest},
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token with exactly `claims`.
fn token_with(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

async fn connect(stack: &TestStack, path: &str, headers: &[(&str, &str)]) -> Socket {
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

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send frame");
}

/// The next JSON frame.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("healthy socket");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// The close code and reason the server ends the socket with.
async fn closed_with(socket: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("socket error before the close frame: {err}"),
        }
    }
}

async fn new_thread(stack: &TestStack, owner: &str, others: &[&str]) -> String {
    let answer = call(
        stack.gateway,
        "POST",
        "/api/chat/threads/",
        Some(&token(&stack.secret, owner)),
        Some(&json!({"participants": others}).to_string()),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    answer.json["id"].as_str().expect("thread id").to_owned()
}

#[tokio::test]
async fn tokens_not_valid_yet_are_refused_on_rest_and_every_socket_path() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    for claims in [
        json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
        json!({"sub": "alice", "exp": now() + 7200, "iat": now() + 3600}),
    ] {
        let early = token_with(&stack.secret, &claims);
        let answer = call(
            stack.gateway,
            "GET",
            &format!("/api/chat/threads/{thread}/"),
            Some(&early),
            None,
        )
        .await;
        assert_eq!(answer.error(401), "token not yet valid", "{claims}");
        assert_eq!(answer.json["error"]["code"], "unauthenticated");

        let mut by_query = connect(&stack, &format!("/ws/chat/{thread}/?token={early}"), &[]).await;
        assert_eq!(closed_with(&mut by_query).await.0, 4401, "{claims}");
        let bearer = format!("Bearer {early}");
        let mut by_header = connect(&stack, "/ws/chat/", &[("authorization", &bearer)]).await;
        assert_eq!(closed_with(&mut by_header).await.0, 4401, "{claims}");
        let mut by_frame = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
        send(&mut by_frame, json!({"type": "auth", "token": early})).await;
        assert_eq!(closed_with(&mut by_frame).await.0, 4401, "{claims}");
    }
    // Due now: accepted everywhere.
    let due = token_with(
        &stack.secret,
        &json!({"sub": "alice", "exp": now() + 600, "nbf": now(), "iat": now()}),
    );
    let answer = call(
        stack.gateway,
        "GET",
        &format!("/api/chat/threads/{thread}/"),
        Some(&due),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let mut socket = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
    send(&mut socket, json!({"type": "auth", "token": due})).await;
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "auth_ok", "user_id": "alice"})
    );
}
