//! Search and transcripts over REST: the routes, their JSON shapes and
//! errors, on both backends.

mod support;

use chat_core::transcript::verify::{KeyRing, verify};
use serde_json::{Value, json};
use support::{call, service_token, spawn_stack, token};

async fn search_and_transcripts(postgres: bool) {
    let stack = spawn_stack(postgres).await;
    let alice = token(&stack.secret, "alice");
    let carol = token(&stack.secret, "carol");
    let service = service_token(&stack.secret, "dispute-service");
    let gw = stack.gateway;

    let thread = call(
        gw,
        "POST",
        "/api/chat/threads/",
        Some(&alice),
        Some(r#"{"participants":["bob"]}"#),
    )
    .await;
    assert_eq!(thread.status, 201);
    let id = thread.json["id"].as_str().unwrap().to_owned();
    for content in ["Here is the Invoice", "Café au lait", "unrelated"] {
        let sent = call(
            gw,
            "POST",
            &format!("/api/chat/threads/{id}/messages/"),
            Some(&alice),
            Some(&json!({"content": content}).to_string()),
        )
        .await;
        assert_eq!(sent.status, 201);
    }

    // Search: the shape, newest first, with the message object.
    let found = call(gw, "GET", "/api/chat/search/?q=invo", Some(&alice), None).await;
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.json["next_cursor"], Value::Null);
    let results = found.json["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["thread_id"], id.as_str());
    assert_eq!(results[0]["message"]["content"], "Here is the Invoice");
    assert_eq!(results[0]["message"]["seq"], 1);
    let accents = call(
        gw,
        "GET",
        "/api/chat/search/?q=CAFE%20au",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(
        accents.json["results"][0]["message"]["content"],
        "Café au lait"
    );

    // The 400s and the 404, with the error shape.
    for path in [
        "/api/chat/search/".to_owned(),
        "/api/chat/search/?q=a".to_owned(),
        "/api/chat/search/?q=%20%20a%20%20".to_owned(),
        format!("/api/chat/search/?q={}", "x".repeat(201)),
        "/api/chat/search/?q=ab&limit=51".to_owned(),
        "/api/chat/search/?q=ab&limit=0".to_owned(),
        "/api/chat/search/?q=ab&cursor=bogus".to_owned(),
    ] {
        let answer = call(gw, "GET", &path, Some(&alice), None).await;
        answer.error(400);
    }
    let foreign = call(
        gw,
        "GET",
        &format!("/api/chat/search/?q=invoice&thread_id={id}"),
        Some(&carol),
        None,
    )
    .await;
    foreign.error(404);
    assert_eq!(foreign.json["error"]["code"], "not_found");
    let none = call(gw, "GET", "/api/chat/search/?q=invoice", Some(&carol), None).await;
    assert_eq!(none.json["results"], json!([]));
    call(gw, "GET", "/api/chat/search/?q=invoice", None, None)
        .await
        .error(401);

    // Transcripts: service tokens only; a participant gets the 404 a
    // stranger gets.
    let path = format!("/api/chat/threads/{id}/transcript/");
    call(gw, "GET", &path, Some(&alice), None).await.error(404);
    call(gw, "GET", &path, Some(&carol), None).await.error(404);
    let export = call(gw, "GET", &path, Some(&service), None).await;
    assert_eq!(export.status, 200, "{export:?}");
    let doc = export.json;
    assert_eq!(doc["thread_id"], id.as_str());
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(
        entries[0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        [
            "at",
            "content",
            "hash",
            "kind",
            "message_id",
            "message_type",
            "metadata",
            "n",
            "sender_id",
            "seq"
        ]
    );
    assert_eq!(entries[0]["metadata"], json!({}));
    assert_eq!(entries[2]["hash"], doc["head_hash"]);

    // Any valid token lists the keys; the export verifies with them.
    let keys = call(gw, "GET", "/api/chat/transcript-keys/", Some(&carol), None).await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.json["keys"][0]["key_id"], doc["key_id"]);
    let verified = verify(&doc, &KeyRing::from_json(&keys.json).unwrap()).expect("verifies");
    assert_eq!(verified.entries, 3);
    call(gw, "GET", "/api/chat/transcript-keys/", None, None)
        .await
        .error(401);
}

#[tokio::test]
async fn search_and_transcripts_on_sqlite() {
    search_and_transcripts(false).await;
}

#[tokio::test]
async fn search_and_transcripts_on_postgres() {
    search_and_transcripts(true).await;
}
