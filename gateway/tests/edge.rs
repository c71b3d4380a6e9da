//! CORS, rate limits and metrics at the gateway's edge.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{call, call_with, spawn_stack_with, token};
use tokio_tungstenite::{connect_async, tungstenite::Message};

#[tokio::test]
async fn cors_rate_limits_and_metrics() {
    let stack = spawn_stack_with(
        false,
        &[
            (
                "ALLOWED_ORIGINS",
                "https://app.example, https://admin.example/",
            ),
            ("GATEWAY_SEND_RATE", "0.5"),
            ("GATEWAY_SEND_BURST", "3"),
            ("GATEWAY_CONNECT_RATE", "0.5"),
            ("GATEWAY_CONNECT_BURST", "2"),
        ],
    )
    .await;
    let alice = token(&stack.secret, "alice");

    // CORS: allowed origins get the headers; preflights are answered.
    let preflight = call_with(
        stack.gateway,
        "OPTIONS",
        "/api/chat/threads/",
        None,
        None,
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        preflight.headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let refused = call_with(
        stack.gateway,
        "OPTIONS",
        "/api/chat/threads/",
        None,
        None,
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    refused.error(403);
    let listed = call_with(
        stack.gateway,
        "GET",
        "/api/chat/threads/",
        Some(&alice),
        None,
        &[("origin", "https://admin.example")],
    )
    .await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.headers["access-control-allow-origin"],
        "https://admin.example"
    );
    let foreign = call_with(
        stack.gateway,
        "GET",
        "/api/chat/threads/",
        Some(&alice),
        None,
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(!foreign.headers.contains_key("access-control-allow-origin"));

    // Sends: a burst of 3 per user, then 429 with Retry-After.
    let created = call(
        stack.gateway,
        "POST",
        "/api/chat/threads/",
        Some(&alice),
        Some(&json!({"participants": ["bob"]}).to_string()),
    )
    .await;
    let thread = created.json["id"].as_str().unwrap().to_owned();
    let path = format!("/api/chat/threads/{thread}/messages/");
    for i in 0..3 {
        let sent = call(
            stack.gateway,
            "POST",
            &path,
            Some(&alice),
            Some(&json!({"content": format!("m{i}")}).to_string()),
        )
        .await;
        assert_eq!(sent.status, 201);
    }
    let limited = call(
        stack.gateway,
        "POST",
        &path,
        Some(&alice),
        Some(&json!({"content": "m3"}).to_string()),
    )
    .await;
    limited.error(429);
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    // Another user is not affected; nothing was stored for the refusal.
    let bob = token(&stack.secret, "bob");
    let sent = call(
        stack.gateway,
        "POST",
        &path,
        Some(&bob),
        Some(&json!({"content": "b"}).to_string()),
    )
    .await;
    assert_eq!(sent.json["seq"], 4);

    // The same budget applies on WebSockets: an error frame, socket open.
    let (mut socket, _) = connect_async(format!(
        "ws://{}/ws/chat/{thread}/?token={alice}",
        stack.gateway
    ))
    .await
    .expect("first socket");
    socket
        .send(Message::Text(
            json!({"type": "chat_message", "content": "x", "client_msg_id": "k1"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let frame = loop {
        if let Some(Ok(Message::Text(text))) = socket.next().await {
            break serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    };
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], "rate_limited");
    assert_eq!(frame["client_msg_id"], "k1");

    // New connections per address: a burst of 2, then 429 at the upgrade.
    let (_second, _) = connect_async(format!(
        "ws://{}/ws/chat/{thread}/?token={alice}",
        stack.gateway
    ))
    .await
    .expect("second socket");
    match connect_async(format!(
        "ws://{}/ws/chat/{thread}/?token={alice}",
        stack.gateway
    ))
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 429, got {other:?}"),
    }

    // Metrics by route template and status, sockets and frames.
    let metrics = call(stack.gateway, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(support::raw_get(stack.gateway, "/metrics").await).unwrap();
    for line in [
        "chat_gateway_http_requests_total{method=\"POST\",route=\"/api/chat/threads/{id}/messages\",status=\"201\"} 4",
        "chat_gateway_http_requests_total{method=\"POST\",route=\"/api/chat/threads/{id}/messages\",status=\"429\"} 1",
        "chat_gateway_open_websockets 2",
        "chat_gateway_rate_limited_total 3",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains(&thread),
        "raw paths (with ids) never become labels"
    );
}

#[tokio::test]
async fn chat_core_found_by_name_is_resolved_to_its_addresses() {
    let stack = support::spawn_stack(false).await;
    let by_name = format!("http://localhost:{}", stack.core.port());
    let (gateway, _stop) = support::spawn_gateway(&by_name, &stack.secret).await;
    let alice = token(&stack.secret, "alice");
    let listed = call(gateway, "GET", "/api/chat/threads/", Some(&alice), None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.json["results"], json!([]));
}
