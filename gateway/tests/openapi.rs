//! The OpenAPI description covers every route of docs/api.md#rest-api, and every
//! operation it describes is routed.

mod support;

use support::{call, spawn_stack, token};

/// The REST routes of docs/api.md, written out independently of the code.
const API_ROUTES: &[(&str, &str)] = &[
    ("get", "/api/chat/threads/"),
    ("post", "/api/chat/threads/"),
    ("get", "/api/chat/threads/{id}/"),
    ("put", "/api/chat/threads/{id}/"),
    ("patch", "/api/chat/threads/{id}/"),
    ("delete", "/api/chat/threads/{id}/"),
    ("get", "/api/chat/threads/by-participants/"),
    ("get", "/api/chat/threads/{id}/messages/"),
    ("post", "/api/chat/threads/{id}/messages/"),
    ("get", "/api/chat/messages/{id}/"),
    ("put", "/api/chat/messages/{id}/"),
    ("patch", "/api/chat/messages/{id}/"),
    ("delete", "/api/chat/messages/{id}/"),
    ("post", "/api/chat/threads/{id}/mark-read/"),
    ("post", "/api/chat/threads/{id}/create-dispute/"),
    ("post", "/api/chat/threads/{id}/initiate-payment/"),
    ("post", "/api/chat/threads/{id}/job-update/"),
    ("get", "/api/chat/unread-count/"),
    ("get", "/api/chat/search/"),
    ("get", "/api/chat/threads/{id}/transcript/"),
    ("get", "/api/chat/transcript-keys/"),
    ("put", "/api/chat/threads/{id}/contact-policy/"),
    ("get", "/api/chat/presence/"),
];

#[tokio::test]
async fn the_description_covers_spec_and_matches_the_router() {
    let stack = spawn_stack(false).await;
    let answer = call(stack.gateway, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(answer.status, 200);
    let doc = answer.json;
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in API_ROUTES {
        let operation = &doc["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} missing from the description"
        );
        assert!(operation["responses"].is_object());
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        API_ROUTES.len(),
        "nothing undocumented, nothing extra"
    );
    // Every schema reference resolves.
    let text = doc.to_string();
    for reference in text.split("#/components/schemas/").skip(1) {
        let name: String = reference
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        assert!(
            doc["components"]["schemas"][&name].is_object(),
            "dangling $ref {name}"
        );
    }

    // Every documented operation reaches a handler: never the router's own
    // "no such route" 404 or a 405.
    let alice = token(&stack.secret, "alice");
    let id = "00000000-0000-7000-8000-000000000000";
    for operation in chat_gateway::openapi::OPERATIONS {
        let path = operation.path.replace("{id}", id);
        let body = operation.body.map(|_| "{}");
        let answer = call(
            stack.gateway,
            &operation.method.to_uppercase(),
            &path,
            Some(&alice),
            body,
        )
        .await;
        assert_ne!(answer.status, 405, "{} {path}", operation.method);
        if answer.status == 404 {
            assert_ne!(
                answer.json["error"]["message"], "no such route",
                "{} {path}",
                operation.method
            );
        }
    }
}
