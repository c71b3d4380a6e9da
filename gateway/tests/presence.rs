//! Presence through the gateway, on both backends: `presence` frames to
//! co-participants' sockets after the grace period (none for a reconnect
//! within it), `GET /api/chat/presence/`, and a gateway stopped cleanly
//! releasing its users' presence on the way out.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use support::{
    TestStack, call, spawn_gateway, spawn_stack_with, token,
    ws::{Socket, connect, next},
};
use tokio_tungstenite::tungstenite::Message;

/// A 1 s grace period.
const SETTINGS: &[(&str, &str)] = &[("PRESENCE_GRACE_SECONDS", "1")];

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::spawn_stack_with(false, super::SETTINGS).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::spawn_stack_with(true, super::SETTINGS).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    co_participants_get_presence_frames_without_flapping,
    presence_is_answered_for_co_participants_only,
    bad_presence_queries_are_400,
    a_gateway_stopped_cleanly_releases_its_users,
);

async fn thread(stack: &TestStack, creator: &str, others: &[&str]) -> String {
    let answer = call(
        stack.gateway,
        "POST",
        "/api/chat/threads/",
        Some(&token(&stack.secret, creator)),
        Some(&json!({"participants": others}).to_string()),
    )
    .await;
    assert_eq!(answer.status, 201);
    answer.json["id"].as_str().unwrap().to_owned()
}

async fn user_socket(stack: &TestStack, user: &str) -> Socket {
    user_socket_on(stack.gateway, &stack.secret, user).await
}

async fn user_socket_on(gateway: std::net::SocketAddr, secret: &str, user: &str) -> Socket {
    let url = format!("ws://{gateway}/ws/chat/?token={}", token(secret, user));
    let mut socket = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0;
    // Subscribed once a pong comes back.
    support::ws::send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    socket
}

/// The next `presence` frame within `within`, other frames skipped.
async fn presence_frame(socket: &mut Socket, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return None,
            Ok(message) => message.expect("socket open").expect("healthy socket"),
        };
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "presence" {
                return Some(frame);
            }
        }
    }
}

async fn co_participants_get_presence_frames_without_flapping(stack: TestStack) {
    let t = thread(&stack, "alice", &["bob"]).await;
    let mut bob = user_socket(&stack, "bob").await;
    // A one-thread socket hears presence too.
    let mut bob_thread = connect(
        &stack,
        &format!("/ws/chat/{t}/?token={}", token(&stack.secret, "bob")),
        &[],
    )
    .await;
    support::ws::send(&mut bob_thread, json!({"type": "ping"})).await;
    assert_eq!(next(&mut bob_thread).await["type"], "pong");
    let mut carol = user_socket(&stack, "carol").await;

    let alice = user_socket(&stack, "alice").await;
    let online =
        json!({"type": "presence", "user_id": "alice", "online": true, "last_seen_at": null});
    assert_eq!(
        presence_frame(&mut bob, Duration::from_secs(3)).await,
        Some(online.clone())
    );
    assert_eq!(
        presence_frame(&mut bob_thread, Duration::from_secs(3)).await,
        Some(online)
    );

    // A second socket of alice, and a reconnect within the grace period:
    // no frame for anyone.
    let second = user_socket(&stack, "alice").await;
    drop(alice);
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alice = user_socket(&stack, "alice").await;
    assert_eq!(
        presence_frame(&mut bob, Duration::from_millis(2000)).await,
        None
    );

    // She leaves: offline once the grace period has passed.
    let mut alice = alice;
    alice.close(None).await.unwrap();
    let left = Instant::now();
    let offline = presence_frame(&mut bob, Duration::from_secs(4))
        .await
        .expect("offline frame");
    assert!(
        left.elapsed() >= Duration::from_millis(900),
        "not before the grace period ended"
    );
    assert_eq!(offline["user_id"], "alice");
    assert_eq!(offline["online"], false);
    let seen = offline["last_seen_at"].as_str().expect("an RFC 3339 time");
    assert!(seen.ends_with('Z') && seen.contains('T'), "{seen}");
    // Carol shares no thread with alice.
    assert_eq!(
        presence_frame(&mut carol, Duration::from_millis(200)).await,
        None
    );
}

async fn presence_is_answered_for_co_participants_only(stack: TestStack) {
    thread(&stack, "alice", &["bob"]).await;
    thread(&stack, "carol", &["dave"]).await;
    let _alice = user_socket(&stack, "alice").await;
    let _carol = user_socket(&stack, "carol").await;
    let bob = token(&stack.secret, "bob");
    // The gateway reports a new socket within moments, not synchronously.
    let deadline = Instant::now() + Duration::from_secs(3);
    let answer = loop {
        let answer = call(
            stack.gateway,
            "GET",
            "/api/chat/presence/?users=alice,carol,bob",
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(answer.status, 200);
        if answer.json["users"]["alice"]["online"] == true || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        answer.json,
        json!({"users": {
            "alice": {"online": true, "last_seen_at": null},
            "bob": {"online": false, "last_seen_at": null},
        }})
    );
}

async fn bad_presence_queries_are_400(stack: TestStack) {
    let bob = token(&stack.secret, "bob");
    let many = (0..101)
        .map(|i| format!("u{i}"))
        .collect::<Vec<_>>()
        .join(",");
    for query in [
        "".to_owned(),
        "?users=".to_owned(),
        "?users=a,,b".to_owned(),
        "?users=not%20an%20id".to_owned(),
        format!("?users={many}"),
    ] {
        let answer = call(
            stack.gateway,
            "GET",
            &format!("/api/chat/presence/{query}"),
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(answer.json["error"]["code"], "invalid_request", "{query}");
        assert!(answer.json["error"]["message"].is_string());
    }
    let answer = call(
        stack.gateway,
        "GET",
        "/api/chat/presence/?users=a",
        None,
        None,
    )
    .await;
    assert_eq!(answer.status, 401);
}

async fn a_gateway_stopped_cleanly_releases_its_users(mut stack: TestStack) {
    thread(&stack, "alice", &["bob"]).await;
    // Bob listens through a second gateway; alice is on the first.
    let (other, _other_stop) = spawn_gateway(&stack.core_url(), &stack.secret).await;
    let mut bob = user_socket_on(other, &stack.secret, "bob").await;
    let _alice = user_socket(&stack, "alice").await;
    assert_eq!(
        presence_frame(&mut bob, Duration::from_secs(3))
            .await
            .unwrap()["online"],
        true
    );
    // The first gateway gets its shutdown signal (as from SIGTERM): its
    // last report releases alice, whose grace period starts now, not
    // whenever its lease would have run out.
    stack.stop_gateway();
    let stopped = Instant::now();
    let offline = presence_frame(&mut bob, Duration::from_secs(4))
        .await
        .expect("alice goes offline with her gateway");
    let after = stopped.elapsed();
    assert_eq!(offline["user_id"], "alice");
    assert_eq!(offline["online"], false);
    // The grace period (1 s), plus at most one sweep (a quarter of it) and
    // the trip to bob's socket.
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_millis(1_750),
        "after the grace period and soon after it, not {after:?}"
    );
    // The presence query agrees, through the gateway still up.
    let answer = call(
        other,
        "GET",
        "/api/chat/presence/?users=alice",
        Some(&token(&stack.secret, "bob")),
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json,
        json!({"users": {"alice": {"online": false, "last_seen_at": offline["last_seen_at"]}}})
    );
}
