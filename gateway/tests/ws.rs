//! The WebSockets of docs/api.md#websocket-api through a real gateway and a real chat-core,
//! with a real WebSocket client.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{
    TestStack, call, spawn_stack, token,
    ws::{Socket, WAIT, connect, next, send},
};
use tokio_tungstenite::{
    MaybeTlsStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest},
};

/// The close code the server ends the socket with.
async fn closed_with(socket: &mut Socket) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("socket error before the close frame: {err}"),
        }
    }
}

/// No chat frame for a while (co-participants' `presence` frames, which
/// tests/presence.rs checks, are let by).
async fn quiet(socket: &mut Socket) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(Ok(Message::Text(text)))) =
        tokio::time::timeout_at(deadline, socket.next()).await
    {
        if !text.contains(r#""type":"presence""#) {
            panic!("expected silence, got {text}");
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
    answer.json["id"].as_str().expect("thread id").to_owned()
}

/// A thread socket authenticated with the first frame.
async fn join(stack: &TestStack, thread: &str, user: &str) -> Socket {
    let mut socket = connect(stack, &format!("/ws/chat/{thread}/"), &[]).await;
    send(
        &mut socket,
        json!({"type": "auth", "token": token(&stack.secret, user)}),
    )
    .await;
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "auth_ok", "user_id": user})
    );
    socket
}

#[tokio::test]
async fn chat_round_trip_with_ack_and_broadcast() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let mut alice = join(&stack, &thread, "alice").await;
    // Bob uses the query token and syncs with a ping.
    let bob_token = token(&stack.secret, "bob");
    let mut bob = connect(&stack, &format!("/ws/chat/{thread}?token={bob_token}"), &[]).await;
    send(&mut bob, json!({"type": "ping"})).await;
    assert_eq!(next(&mut bob).await, json!({"type": "pong"}));

    send(
        &mut alice,
        json!({"type": "chat_message", "content": "Hi Bob", "client_msg_id": "c-1"}),
    )
    .await;
    let mut got_ack = None;
    let mut got_event = None;
    for _ in 0..2 {
        let frame = next(&mut alice).await;
        match frame["type"].as_str() {
            Some("ack") => got_ack = Some(frame),
            Some("chat_message") => got_event = Some(frame),
            other => panic!("unexpected {other:?}"),
        }
    }
    let ack = got_ack.expect("ack");
    assert_eq!(ack["client_msg_id"], "c-1");
    assert_eq!(ack["message"]["seq"], 1);
    assert_eq!(ack["message"]["content"], "Hi Bob");
    let event = got_event.expect("own chat_message");
    assert_eq!(event["thread_id"], thread.as_str());
    assert_eq!(event["seq"], 1);
    assert_eq!(event["message"]["sender_id"], "alice");
    let to_bob = next(&mut bob).await;
    assert_eq!(to_bob["type"], "chat_message");
    assert_eq!(to_bob["message"]["content"], "Hi Bob");
    assert_eq!(to_bob["message"]["id"], ack["message"]["id"]);

    // The same client_msg_id: the original in the ack, no second broadcast.
    send(
        &mut alice,
        json!({"type": "chat_message", "content": "Hi Bob!!", "client_msg_id": "c-1"}),
    )
    .await;
    let ack = next(&mut alice).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["message"]["seq"], 1);
    assert_eq!(ack["message"]["content"], "Hi Bob");
    quiet(&mut alice).await;
    quiet(&mut bob).await;

    // Read receipts reach everyone, the reader included; typing the others.
    send(&mut bob, json!({"type": "mark_messages_read"})).await;
    let expected =
        json!({"type": "messages_read", "thread_id": thread, "user_id": "bob", "up_to_seq": 1});
    assert_eq!(next(&mut alice).await, expected);
    assert_eq!(next(&mut bob).await, expected);
    send(
        &mut bob,
        json!({"type": "typing_indicator", "is_typing": true}),
    )
    .await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "typing_indicator", "thread_id": thread, "user_id": "bob", "is_typing": true})
    );
    quiet(&mut bob).await;
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_socket_stays_open() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let mut alice = join(&stack, &thread, "alice").await;
    let cases = [
        (json!("not an object"), "invalid_frame"),
        (json!({"type": "dance"}), "invalid_frame"),
        (json!({"type": "chat_message"}), "invalid_request"),
        (
            json!({"type": "chat_message", "content": 5}),
            "invalid_request",
        ),
        (
            json!({"type": "chat_message", "content": ""}),
            "invalid_request",
        ),
        (
            json!({"type": "chat_message", "content": "x", "metadata": [1]}),
            "invalid_request",
        ),
        (
            json!({"type": "typing_indicator", "is_typing": "yes"}),
            "invalid_request",
        ),
        (
            json!({"type": "mark_messages_read", "up_to_seq": -2}),
            "invalid_request",
        ),
    ];
    for (frame, code) in cases {
        send(&mut alice, frame.clone()).await;
        let error = next(&mut alice).await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error["code"], code, "{frame}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    send(
        &mut alice,
        json!({"type": "chat_message", "content": "", "client_msg_id": "k"}),
    )
    .await;
    assert_eq!(next(&mut alice).await["client_msg_id"], "k");
    alice.send(Message::Text("{{{".into())).await.unwrap();
    assert_eq!(next(&mut alice).await["code"], "invalid_frame");
    send(&mut alice, json!({"type": "ping"})).await;
    assert_eq!(next(&mut alice).await, json!({"type": "pong"}));
    // Nothing was stored.
    let page = call(
        stack.gateway,
        "GET",
        &format!("/api/chat/threads/{thread}/messages/"),
        Some(&token(&stack.secret, "alice")),
        None,
    )
    .await;
    assert_eq!(page.json["results"], json!([]));
}

#[tokio::test]
async fn refusals_use_the_close_codes() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;

    let mut bad = connect(&stack, &format!("/ws/chat/{thread}/?token=garbage"), &[]).await;
    assert_eq!(closed_with(&mut bad).await, 4401);
    let forged = token("wrong-secret", "alice");
    let mut forged_frame = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
    send(&mut forged_frame, json!({"type": "auth", "token": forged})).await;
    assert_eq!(closed_with(&mut forged_frame).await, 4401);
    let mut not_auth = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
    send(&mut not_auth, json!({"type": "ping"})).await;
    assert_eq!(closed_with(&mut not_auth).await, 4401);

    let carol = token(&stack.secret, "carol");
    let mut outsider = connect(&stack, &format!("/ws/chat/{thread}/?token={carol}"), &[]).await;
    assert_eq!(closed_with(&mut outsider).await, 4404);
    let unknown = "00000000-0000-7000-8000-000000000000";
    let mut nowhere = connect(&stack, &format!("/ws/chat/{unknown}/?token={carol}"), &[]).await;
    assert_eq!(closed_with(&mut nowhere).await, 4404);

    // An Origin outside ALLOWED_ORIGINS is refused at the upgrade.
    let request = {
        let mut r = format!("ws://{}/ws/chat/{thread}/", stack.gateway)
            .into_client_request()
            .unwrap();
        r.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        r
    };
    match connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }

    // The Authorization header works for non-browser clients.
    let bearer = format!("Bearer {}", token(&stack.secret, "bob"));
    let mut bob = connect(
        &stack,
        &format!("/ws/chat/{thread}/"),
        &[("authorization", &bearer)],
    )
    .await;
    send(&mut bob, json!({"type": "ping"})).await;
    assert_eq!(next(&mut bob).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_with_4401() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let short = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: "alice", exp },
        &jsonwebtoken::EncodingKey::from_secret(stack.secret.as_bytes()),
    )
    .unwrap();
    let mut socket = connect(&stack, &format!("/ws/chat/{thread}/?token={short}"), &[]).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await, json!({"type": "pong"}));
    assert_eq!(closed_with(&mut socket).await, 4401);
}

#[tokio::test]
async fn since_seq_replays_then_goes_live() {
    let stack = spawn_stack(true).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let alice = token(&stack.secret, "alice");
    for i in 1..=3 {
        call(
            stack.gateway,
            "POST",
            &format!("/api/chat/threads/{thread}/messages/"),
            Some(&alice),
            Some(&json!({"content": format!("m{i}")}).to_string()),
        )
        .await;
    }
    let bob = token(&stack.secret, "bob");
    let mut socket = connect(
        &stack,
        &format!("/ws/chat/{thread}/?token={bob}&since_seq=1"),
        &[],
    )
    .await;
    for seq in 2..=3 {
        let frame = next(&mut socket).await;
        assert_eq!(
            (frame["type"].as_str(), frame["seq"].as_i64()),
            (Some("chat_message"), Some(seq))
        );
    }
    let mut writer = join(&stack, &thread, "alice").await;
    send(
        &mut writer,
        json!({"type": "chat_message", "content": "m4"}),
    )
    .await;
    let frame = next(&mut socket).await;
    assert_eq!(
        (frame["seq"].as_i64(), frame["message"]["content"].as_str()),
        (Some(4), Some("m4"))
    );
    quiet(&mut socket).await;
}

#[tokio::test]
async fn a_user_socket_follows_every_thread_and_new_ones() {
    let stack = spawn_stack(false).await;
    let old = new_thread(&stack, "alice", &["bob"]).await;
    let mut bob = connect(&stack, "/ws/chat/", &[]).await;
    send(
        &mut bob,
        json!({"type": "auth", "token": token(&stack.secret, "bob")}),
    )
    .await;
    assert_eq!(
        next(&mut bob).await,
        json!({"type": "auth_ok", "user_id": "bob"})
    );

    send(
        &mut bob,
        json!({"type": "chat_message", "content": "no thread"}),
    )
    .await;
    assert_eq!(next(&mut bob).await["code"], "invalid_request");
    send(&mut bob, json!({"type": "chat_message", "thread_id": old, "content": "to old", "client_msg_id": "b1"})).await;
    let mut types = Vec::new();
    for _ in 0..2 {
        types.push(next(&mut bob).await["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(types, ["ack", "chat_message"]);

    let new = new_thread(&stack, "carol", &["bob"]).await;
    let mut carol = join(&stack, &new, "carol").await;
    send(
        &mut carol,
        json!({"type": "chat_message", "content": "welcome"}),
    )
    .await;
    let frame = next(&mut bob).await;
    assert_eq!(frame["type"], "chat_message");
    assert_eq!(frame["thread_id"], new.as_str());
    assert_eq!(frame["message"]["content"], "welcome");
}

#[tokio::test]
async fn gateway_shutdown_tells_sockets_to_reconnect() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let mut socket = join(&stack, &thread, "alice").await;
    let mut stack = stack;
    stack.stop_gateway();
    assert_eq!(closed_with(&mut socket).await, 1012);
}

#[tokio::test]
async fn silent_peers_are_closed_and_answering_ones_kept() {
    let stack = support::spawn_stack_with(false, &[("GATEWAY_WS_PING_SECONDS", "1")]).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let alice = token(&stack.secret, "alice");
    // Reading answers the server's pings (the client library does).
    let mut lively = connect(&stack, &format!("/ws/chat/{thread}/?token={alice}"), &[]).await;
    let mut silent = connect(&stack, &format!("/ws/chat/{thread}/?token={alice}"), &[]).await;
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, lively.next()).await {
            if let Message::Ping(_) = message {
                pings += 1;
            }
        }
        (pings, lively)
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (pings, mut lively) = reader.await.unwrap();
    assert!(pings >= 2, "the server pings ({pings})");
    send(&mut lively, json!({"type": "ping"})).await;
    assert_eq!(next(&mut lively).await, json!({"type": "pong"}));
    // The silent one never read, so never answered: closed.
    assert_eq!(closed_with(&mut silent).await, 1008);
}

#[tokio::test]
async fn the_gateways_own_page_may_open_sockets() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let own = format!("http://{}", stack.gateway);
    let mut socket = connect(&stack, &format!("/ws/chat/{thread}/"), &[("origin", &own)]).await;
    send(
        &mut socket,
        json!({"type": "auth", "token": token(&stack.secret, "alice")}),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], "auth_ok");
}

#[tokio::test]
async fn edits_and_deletions_reach_sockets() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let mut bob = join(&stack, &thread, "bob").await;
    let alice = token(&stack.secret, "alice");
    let sent = call(
        stack.gateway,
        "POST",
        &format!("/api/chat/threads/{thread}/messages/"),
        Some(&alice),
        Some(&json!({"content": "draft"}).to_string()),
    )
    .await;
    let id = sent.json["id"].as_str().unwrap().to_owned();
    assert_eq!(next(&mut bob).await["type"], "chat_message");
    call(
        stack.gateway,
        "PATCH",
        &format!("/api/chat/messages/{id}/"),
        Some(&alice),
        Some(&json!({"content": "final"}).to_string()),
    )
    .await;
    let updated = next(&mut bob).await;
    assert_eq!(updated["type"], "message_updated");
    assert_eq!(
        (updated["thread_id"].as_str(), updated["seq"].as_i64()),
        (Some(thread.as_str()), Some(1))
    );
    assert_eq!(updated["message"]["content"], "final");
    call(
        stack.gateway,
        "DELETE",
        &format!("/api/chat/messages/{id}/"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(
        next(&mut bob).await,
        json!({"type": "message_deleted", "thread_id": thread, "seq": 1, "message_id": id})
    );
}

#[tokio::test]
async fn a_browser_too_slow_to_read_is_closed_with_4008() {
    let stack = support::spawn_stack_with(
        false,
        &[
            ("GATEWAY_WS_SEND_TIMEOUT_MS", "500"),
            ("GATEWAY_SEND_RATE", "100000"),
            ("GATEWAY_SEND_BURST", "100000"),
        ],
    )
    .await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    // Bob's socket never reads, with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(stack.gateway).await.unwrap();
    let bob_token = token(&stack.secret, "bob");
    let (mut bob, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws/chat/{thread}/?token={bob_token}", stack.gateway),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("upgrade");
    send(&mut bob, json!({"type": "ping"})).await;
    assert_eq!(next(&mut bob).await, json!({"type": "pong"}));
    // Alice talks a lot; bob reads nothing.
    let alice = token(&stack.secret, "alice");
    let body = json!({"content": "x".repeat(4000)}).to_string();
    // Until the gateway gives up on bob: more than the kernel buffers
    // between them can hold (about 4 MiB). It keeps a cut-off socket open
    // only so long for its close frame (10 s), so bob starts reading as
    // soon as the close is counted, however slow the machine.
    let path = format!("/api/chat/threads/{thread}/messages/");
    let mut sent = 0;
    while sent < 1500 {
        futures_util::future::join_all(
            (0..15).map(|_| call(stack.gateway, "POST", &path, Some(&alice), Some(&body))),
        )
        .await;
        sent += 15;
        let metrics = String::from_utf8(support::raw_get(stack.gateway, "/metrics").await).unwrap();
        if metrics.contains("chat_gateway_websocket_closes_total{code=\"4008\"} 1") {
            break;
        }
    }
    // Reading now, bob finds the close code after what had fit.
    let mut code = None;
    let mut frames = 0;
    while let Ok(Some(frame)) = tokio::time::timeout(WAIT, bob.next()).await {
        match frame {
            Ok(Message::Close(Some(frame))) => {
                code = Some(u16::from(frame.code));
                break;
            }
            Ok(_) => frames += 1,
            Err(err) => panic!("after {frames} frames: {err}"),
        }
    }
    assert_eq!(code, Some(4008), "after {frames} frames");
    assert!(frames < sent, "it was cut off before the end");
}
