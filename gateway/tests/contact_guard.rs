//! The contact guard at the edge: the per-thread policy route, `flags` on
//! every message object, masking for users, and `contact_blocked` over
//! REST (422) and WebSocket (an `error` frame with the `client_msg_id`),
//! both naming the `kinds` of contact detail found.

mod support;

use serde_json::{Value, json};
use support::ws::{connect, next, send};
use support::{call, service_token, spawn_stack, token};

async fn guard_at_the_edge(postgres: bool) {
    let stack = spawn_stack(postgres).await;
    let gw = stack.gateway;
    let alice = token(&stack.secret, "alice");
    let bob = token(&stack.secret, "bob");
    let service = service_token(&stack.secret, "job-service");
    let thread = call(
        gw,
        "POST",
        "/api/chat/threads/",
        Some(&alice),
        Some(r#"{"participants":["bob"]}"#),
    )
    .await;
    let id = thread.json["id"].as_str().unwrap().to_owned();
    assert_eq!(thread.json["contact_policy"], Value::Null);
    let messages_path = format!("/api/chat/threads/{id}/messages/");
    let policy_path = format!("/api/chat/threads/{id}/contact-policy/");

    // Flag (the default): as sent, with flags; every message has flags.
    let clean = call(
        gw,
        "POST",
        &messages_path,
        Some(&alice),
        Some(r#"{"content":"invoice 4821 is due"}"#),
    )
    .await;
    assert_eq!(clean.status, 201);
    assert_eq!(clean.json["flags"], json!([]));
    let flagged = call(
        gw,
        "POST",
        &messages_path,
        Some(&alice),
        Some(r#"{"content":"mail jane.doe@example.com"}"#),
    )
    .await;
    assert_eq!(flagged.json["flags"], json!(["email"]));
    assert_eq!(flagged.json["content"], "mail jane.doe@example.com");

    // Only services set a thread's policy; bad bodies are 400s.
    call(
        gw,
        "PUT",
        &policy_path,
        Some(&alice),
        Some(r#"{"policy":"off"}"#),
    )
    .await
    .error(403);
    assert_eq!(
        call(
            gw,
            "PUT",
            &policy_path,
            Some(&alice),
            Some(r#"{"policy":"off"}"#)
        )
        .await
        .json["error"]["code"],
        "forbidden"
    );
    for body in [r#"{"policy":"strict"}"#, r#"{}"#, r#"{"policy":3}"#, "nope"] {
        call(gw, "PUT", &policy_path, Some(&service), Some(body))
            .await
            .error(400);
    }
    call(
        gw,
        "PUT",
        "/api/chat/threads/0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f/contact-policy/",
        Some(&service),
        Some(r#"{"policy":"block"}"#),
    )
    .await
    .error(404);
    let masked = call(
        gw,
        "PUT",
        &policy_path,
        Some(&service),
        Some(r#"{"policy":"mask"}"#),
    )
    .await;
    assert_eq!(masked.status, 200, "{masked:?}");
    assert_eq!(masked.json["contact_policy"], "mask");

    // Mask: users see it hidden, the WebSocket included.
    let mut socket = connect(&stack, &format!("/ws/chat/{id}/?token={bob}"), &[]).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    let sent = call(
        gw,
        "POST",
        &messages_path,
        Some(&alice),
        Some(r#"{"content":"or ring +1 415 555 0134"}"#),
    )
    .await;
    assert_eq!(sent.json["content"], "or ring [contact hidden]");
    let frame = next(&mut socket).await;
    assert_eq!(frame["type"], "chat_message");
    assert_eq!(frame["message"]["content"], "or ring [contact hidden]");
    assert_eq!(frame["message"]["flags"], json!(["phone"]));
    let as_service = call(gw, "GET", &messages_path, Some(&service), None).await;
    assert_eq!(
        as_service.json["results"][2]["content"],
        "or ring +1 415 555 0134"
    );

    // Block: 422 over REST, an error frame over the socket; nothing stored.
    call(
        gw,
        "PUT",
        &policy_path,
        Some(&service),
        Some(r#"{"policy":"block"}"#),
    )
    .await;
    let blocked = call(
        gw,
        "POST",
        &messages_path,
        Some(&alice),
        Some(r#"{"content":"whatsapp me"}"#),
    )
    .await;
    blocked.error(422);
    assert_eq!(
        blocked.json,
        json!({"error": {
            "code": "contact_blocked",
            "message": "message blocked: it contains contact details (handle)",
            "kinds": ["handle"],
        }})
    );
    // Several kinds, each once, in the order email, phone, link, handle.
    let blocked = call(
        gw,
        "POST",
        &messages_path,
        Some(&alice),
        Some(r#"{"content":"whatsapp me, or mail jane.doe@example.com"}"#),
    )
    .await;
    blocked.error(422);
    assert_eq!(blocked.json["error"]["kinds"], json!(["email", "handle"]));
    // An edit is refused the same way.
    let first = clean.json["id"].as_str().unwrap();
    let edit = call(
        gw,
        "PATCH",
        &format!("/api/chat/messages/{first}/"),
        Some(&alice),
        Some(r#"{"content":"invoice 4821: see example.com/pay"}"#),
    )
    .await;
    edit.error(422);
    assert_eq!(edit.json["error"]["code"], "contact_blocked");
    assert_eq!(edit.json["error"]["kinds"], json!(["link"]));
    // Other errors carry no kinds.
    let other = call(
        gw,
        "PUT",
        &policy_path,
        Some(&alice),
        Some(r#"{"policy":"off"}"#),
    )
    .await;
    assert_eq!(other.json["error"].get("kinds"), None);
    send(
        &mut socket,
        json!({"type": "chat_message", "content": "t.e.l.e.g.r.a.m @bobby_b or ring +1 415 555 0134", "client_msg_id": "c-9"}),
    )
    .await;
    let error = next(&mut socket).await;
    assert_eq!(
        error,
        json!({
            "type": "error",
            "code": "contact_blocked",
            "message": "message blocked: it contains contact details (phone, handle)",
            "client_msg_id": "c-9",
            "kinds": ["phone", "handle"],
        })
    );
    let page = call(gw, "GET", &messages_path, Some(&alice), None).await;
    assert_eq!(page.json["results"].as_array().unwrap().len(), 3);
    assert_eq!(page.json["results"][0]["content"], "invoice 4821 is due");

    // Null: back to the default.
    let reset = call(
        gw,
        "PUT",
        &policy_path,
        Some(&service),
        Some(r#"{"policy":null}"#),
    )
    .await;
    assert_eq!(reset.status, 200);
    assert_eq!(reset.json["contact_policy"], Value::Null);
}

#[tokio::test]
async fn guard_at_the_edge_on_sqlite() {
    guard_at_the_edge(false).await;
}

#[tokio::test]
async fn guard_at_the_edge_on_postgres() {
    guard_at_the_edge(true).await;
}
