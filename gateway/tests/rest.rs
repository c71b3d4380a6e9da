//! Every REST row of docs/api.md#rest-api through a real gateway in front of a real
//! chat-core, on both storage backends, with a real HTTP client.

mod support;

use serde_json::{Value, json};
use support::{Answer, TestStack, call, spawn_gateway, token};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::support::spawn_stack(false).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::support::spawn_stack(true).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    threads_are_created_read_renamed_and_archived,
    messages_are_sent_paged_edited_and_deleted,
    read_state_and_unread_counts,
    bad_requests_get_the_error_shape_and_change_nothing,
    a_non_participant_gets_404_everywhere,
    lists_page_with_cursors_and_filters,
    integration_routes_post_typed_messages,
);

struct User {
    token: String,
}

fn user(stack: &TestStack, sub: &str) -> User {
    User {
        token: token(&stack.secret, sub),
    }
}

async fn req(
    stack: &TestStack,
    who: &User,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let body = body.map(|b| b.to_string());
    call(
        stack.gateway,
        method,
        path,
        Some(&who.token),
        body.as_deref(),
    )
    .await
}

fn is_rfc3339_utc(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 27 && s.ends_with('Z') && s.as_bytes()[10] == b'T')
}

async fn new_thread(stack: &TestStack, who: &User, others: &[&str], job: Option<&str>) -> String {
    let answer = req(
        stack,
        who,
        "POST",
        "/api/chat/threads/",
        Some(json!({"participants": others, "job_id": job})),
    )
    .await;
    assert!(matches!(answer.status, 200 | 201), "{answer:?}");
    answer.json["id"].as_str().expect("id").to_owned()
}

async fn threads_are_created_read_renamed_and_archived(stack: TestStack) {
    let alice = user(&stack, "alice");
    let bob = user(&stack, "bob");
    let created = req(
        &stack,
        &alice,
        "POST",
        "/api/chat/threads/",
        Some(json!({"participants": ["bob"], "title": "Fence repair"})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let t = &created.json;
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["participants"], json!(["alice", "bob"]));
    assert_eq!(t["job_id"], Value::Null);
    assert_eq!(t["title"], "Fence repair");
    assert_eq!(t["created_by"], "alice");
    assert!(is_rfc3339_utc(&t["created_at"]), "{}", t["created_at"]);
    assert_eq!(t["last_message_at"], Value::Null);
    assert_eq!(t["last_seq"], 0);
    assert_eq!(t["unread_count"], 0);
    assert_eq!(t["last_message"], Value::Null);
    assert!(created.headers.contains_key("x-request-id"));

    // Again, from the other side and without the trailing slash: 200, same.
    let again = req(
        &stack,
        &bob,
        "POST",
        "/api/chat/threads",
        Some(json!({"participants": ["alice"]})),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["id"], id.as_str());

    let read = req(
        &stack,
        &bob,
        "GET",
        &format!("/api/chat/threads/{id}"),
        None,
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json["title"], "Fence repair");

    let renamed = req(
        &stack,
        &bob,
        "PATCH",
        &format!("/api/chat/threads/{id}/"),
        Some(json!({"title": "Fence and gate"})),
    )
    .await;
    assert_eq!(renamed.status, 200);
    assert_eq!(renamed.json["title"], "Fence and gate");
    let cleared = req(
        &stack,
        &alice,
        "PUT",
        &format!("/api/chat/threads/{id}/"),
        Some(json!({"title": null})),
    )
    .await;
    assert_eq!(cleared.status, 200);
    assert_eq!(cleared.json["title"], Value::Null);

    let found = req(
        &stack,
        &alice,
        "GET",
        "/api/chat/threads/by-participants/?participants=bob,alice",
        None,
    )
    .await;
    assert_eq!(found.status, 200);
    assert_eq!(found.json["id"], id.as_str());
    let absent = req(
        &stack,
        &alice,
        "GET",
        "/api/chat/threads/by-participants/?participants=alice,bob&job_id=job-1",
        None,
    )
    .await;
    absent.error(404);

    let archived = req(
        &stack,
        &alice,
        "DELETE",
        &format!("/api/chat/threads/{id}/"),
        None,
    )
    .await;
    assert_eq!(archived.status, 204);
    let listed = req(&stack, &alice, "GET", "/api/chat/threads/", None).await;
    assert_eq!(listed.json["results"], json!([]));
    let listed = req(&stack, &bob, "GET", "/api/chat/threads/", None).await;
    assert_eq!(listed.json["results"].as_array().unwrap().len(), 1);
}

async fn messages_are_sent_paged_edited_and_deleted(stack: TestStack) {
    let alice = user(&stack, "alice");
    let bob = user(&stack, "bob");
    let id = new_thread(&stack, &alice, &["bob"], Some("job-7")).await;
    let path = format!("/api/chat/threads/{id}/messages/");
    let sent = req(
        &stack,
        &alice,
        "POST",
        &path,
        Some(json!({"content": "<b>Hi</b>\nthere", "client_msg_id": "c-1", "metadata": {"k": [1, 2]}})),
    )
    .await;
    assert_eq!(sent.status, 201, "{sent:?}");
    let m = &sent.json;
    assert_eq!(m["seq"], 1);
    assert_eq!(m["thread_id"], id.as_str());
    assert_eq!(m["sender_id"], "alice");
    assert_eq!(m["message_type"], "text");
    assert_eq!(m["content"], "<b>Hi</b>\nthere");
    assert_eq!(m["metadata"], json!({"k": [1, 2]}));
    assert_eq!(m["client_msg_id"], "c-1");
    assert!(is_rfc3339_utc(&m["created_at"]));
    assert_eq!(m["edited_at"], Value::Null);
    assert_eq!(m["deleted_at"], Value::Null);
    let message_id = m["id"].as_str().unwrap().to_owned();

    let repeat = req(
        &stack,
        &alice,
        "POST",
        &path,
        Some(json!({"content": "retry", "client_msg_id": "c-1"})),
    )
    .await;
    assert_eq!(repeat.status, 200);
    assert_eq!(repeat.json["id"], message_id.as_str());
    assert_eq!(repeat.json["content"], "<b>Hi</b>\nthere");

    for i in 2..=5 {
        let who = if i % 2 == 0 { &bob } else { &alice };
        let sent = req(
            &stack,
            who,
            "POST",
            &path,
            Some(json!({"content": format!("m{i}")})),
        )
        .await;
        assert_eq!(sent.json["seq"], i);
    }
    let seqs = |answer: &Answer| -> Vec<i64> {
        answer.json["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let page = req(&stack, &bob, "GET", &path, None).await;
    assert_eq!(
        (seqs(&page), page.json["has_more"].clone()),
        (vec![1, 2, 3, 4, 5], json!(false))
    );
    let page = req(&stack, &bob, "GET", &format!("{path}?limit=2"), None).await;
    assert_eq!(
        (seqs(&page), page.json["has_more"].clone()),
        (vec![4, 5], json!(true))
    );
    let page = req(
        &stack,
        &bob,
        "GET",
        &format!("{path}?before_seq=4&limit=2"),
        None,
    )
    .await;
    assert_eq!(
        (seqs(&page), page.json["has_more"].clone()),
        (vec![2, 3], json!(true))
    );
    let page = req(&stack, &bob, "GET", &format!("{path}?after_seq=3"), None).await;
    assert_eq!(
        (seqs(&page), page.json["has_more"].clone()),
        (vec![4, 5], json!(false))
    );

    let one = req(
        &stack,
        &bob,
        "GET",
        &format!("/api/chat/messages/{message_id}/"),
        None,
    )
    .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json["seq"], 1);
    let not_mine = req(
        &stack,
        &bob,
        "PATCH",
        &format!("/api/chat/messages/{message_id}/"),
        Some(json!({"content": "hijack"})),
    )
    .await;
    not_mine.error(403);
    let edited = req(
        &stack,
        &alice,
        "PUT",
        &format!("/api/chat/messages/{message_id}"),
        Some(json!({"content": "Hi, edited"})),
    )
    .await;
    assert_eq!(edited.status, 200);
    assert_eq!(edited.json["content"], "Hi, edited");
    assert!(is_rfc3339_utc(&edited.json["edited_at"]));
    let deleted = req(
        &stack,
        &alice,
        "DELETE",
        &format!("/api/chat/messages/{message_id}/"),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let gone = req(
        &stack,
        &bob,
        "GET",
        &format!("/api/chat/messages/{message_id}/"),
        None,
    )
    .await;
    assert_eq!(gone.json["content"], "");
    assert!(is_rfc3339_utc(&gone.json["deleted_at"]));
    let late_edit = req(
        &stack,
        &alice,
        "PATCH",
        &format!("/api/chat/messages/{message_id}/"),
        Some(json!({"content": "again"})),
    )
    .await;
    late_edit.error(409);

    let listed = req(&stack, &bob, "GET", "/api/chat/threads/", None).await;
    let item = &listed.json["results"][0];
    assert_eq!(item["last_message"]["seq"], 5);
    assert_eq!(item["last_message"]["content"], "m5");
    assert!(is_rfc3339_utc(&item["last_message_at"]));
}

async fn read_state_and_unread_counts(stack: TestStack) {
    let alice = user(&stack, "alice");
    let bob = user(&stack, "bob");
    let t1 = new_thread(&stack, &alice, &["bob"], Some("job-1")).await;
    let t2 = new_thread(&stack, &alice, &["bob"], Some("job-2")).await;
    for (thread, count) in [(&t1, 3), (&t2, 1)] {
        for i in 0..count {
            req(
                &stack,
                &alice,
                "POST",
                &format!("/api/chat/threads/{thread}/messages/"),
                Some(json!({"content": format!("hello {i}")})),
            )
            .await;
        }
    }
    let counts = req(&stack, &bob, "GET", "/api/chat/unread-count/", None).await;
    assert_eq!(counts.status, 200);
    assert_eq!(
        counts.json,
        json!({"total": 4, "threads": {t1.clone(): 3, t2.clone(): 1}})
    );
    let none = req(&stack, &alice, "GET", "/api/chat/unread-count", None).await;
    assert_eq!(none.json, json!({"total": 0, "threads": {}}));

    let marked = req(
        &stack,
        &bob,
        "POST",
        &format!("/api/chat/threads/{t1}/mark-read/"),
        Some(json!({"up_to_seq": 2})),
    )
    .await;
    assert_eq!(marked.status, 200);
    assert_eq!(
        marked.json,
        json!({"thread_id": t1.clone(), "last_read_seq": 2, "unread_count": 1})
    );
    // No body counts as {}: everything.
    let all = call(
        stack.gateway,
        "POST",
        &format!("/api/chat/threads/{t1}/mark-read/"),
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(
        all.json,
        json!({"thread_id": t1.clone(), "last_read_seq": 3, "unread_count": 0})
    );
    let beyond = req(
        &stack,
        &bob,
        "POST",
        &format!("/api/chat/threads/{t2}/mark-read/"),
        Some(json!({"up_to_seq": 99})),
    )
    .await;
    assert_eq!(beyond.json["last_read_seq"], 1);
    let counts = req(&stack, &bob, "GET", "/api/chat/unread-count/", None).await;
    assert_eq!(counts.json, json!({"total": 0, "threads": {}}));
}

async fn bad_requests_get_the_error_shape_and_change_nothing(stack: TestStack) {
    let alice = user(&stack, "alice");
    let id = new_thread(&stack, &alice, &["bob"], None).await;
    let messages = format!("/api/chat/threads/{id}/messages/");
    let thread_path = format!("/api/chat/threads/{id}/");
    let mark_read = format!("/api/chat/threads/{id}/mark-read/");

    // Tokens.
    call(stack.gateway, "GET", "/api/chat/threads/", None, None)
        .await
        .error(401);
    call(
        stack.gateway,
        "GET",
        "/api/chat/threads/",
        Some("garbage"),
        None,
    )
    .await
    .error(401);
    let forged = token("not-the-secret", "alice");
    call(
        stack.gateway,
        "GET",
        "/api/chat/threads/",
        Some(&forged),
        None,
    )
    .await
    .error(401);

    // Unknown routes and methods.
    req(&stack, &alice, "GET", "/api/chat/nope/", None)
        .await
        .error(404);
    req(&stack, &alice, "GET", "/api/chat/threads/x/y/z", None)
        .await
        .error(404);
    req(&stack, &alice, "DELETE", "/api/chat/unread-count/", None)
        .await
        .error(405);

    // Strict JSON types and shapes.
    let bodies: Vec<(&str, &str, String)> = vec![
        (
            "POST",
            "/api/chat/threads/",
            r#"{"participants": "bob"}"#.into(),
        ),
        (
            "POST",
            "/api/chat/threads/",
            r#"{"participants": [5]}"#.into(),
        ),
        (
            "POST",
            "/api/chat/threads/",
            r#"{"participants": ["bob"], "title": 7}"#.into(),
        ),
        (
            "POST",
            "/api/chat/threads/",
            r#"{"participants": ["bob"], "job_id": 12}"#.into(),
        ),
        ("POST", "/api/chat/threads/", "not json".into()),
        ("POST", "/api/chat/threads/", "[1]".into()),
        ("POST", &messages, r#"{"content": 5}"#.into()),
        ("POST", &messages, r#"{}"#.into()),
        ("POST", &messages, r#"{"content": ""}"#.into()),
        ("POST", &messages, r#"{"content": "a\u0000b"}"#.into()),
        (
            "POST",
            &messages,
            r#"{"content": "hi", "message_type": "system"}"#.into(),
        ),
        (
            "POST",
            &messages,
            r#"{"content": "hi", "metadata": [1]}"#.into(),
        ),
        (
            "POST",
            &messages,
            r#"{"content": "hi", "client_msg_id": ""}"#.into(),
        ),
        (
            "POST",
            &messages,
            r#"{"content": "hi", "client_msg_id": 3}"#.into(),
        ),
        ("PATCH", &thread_path, r#"{}"#.into()),
        ("PATCH", &thread_path, r#"{"title": ["x"]}"#.into()),
        ("POST", &mark_read, r#"{"up_to_seq": "3"}"#.into()),
        ("POST", &mark_read, r#"{"up_to_seq": -1}"#.into()),
    ];
    for (method, path, body) in bodies {
        let answer = call(stack.gateway, method, path, Some(&alice.token), Some(&body)).await;
        answer.error(400);
    }
    let huge = json!({"content": "x".repeat(70 * 1024)}).to_string();
    call(
        stack.gateway,
        "POST",
        &messages,
        Some(&alice.token),
        Some(&huge),
    )
    .await
    .error(413);

    // Query parameters are checked, not clamped.
    for query in [
        "/api/chat/threads/?limit=0",
        "/api/chat/threads/?limit=101",
        "/api/chat/threads/?limit=ten",
        "/api/chat/threads/?cursor=not-ours",
        "/api/chat/threads/by-participants/",
    ] {
        req(&stack, &alice, "GET", query, None).await.error(400);
    }
    for query in [
        "?limit=201",
        "?limit=0",
        "?before_seq=x",
        "?after_seq=1.5",
        "?before_seq=2&after_seq=1",
    ] {
        req(&stack, &alice, "GET", &format!("{messages}{query}"), None)
            .await
            .error(400);
    }

    // Nothing changed.
    let thread = req(
        &stack,
        &alice,
        "GET",
        &format!("/api/chat/threads/{id}/"),
        None,
    )
    .await;
    assert_eq!(thread.json["last_seq"], 0);
    assert_eq!(thread.json["title"], Value::Null);
    let listed = req(&stack, &alice, "GET", "/api/chat/threads/", None).await;
    assert_eq!(listed.json["results"].as_array().unwrap().len(), 1);

    // chat-core unreachable: 503 with the same shape, no internals.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (lonely, _stop) = spawn_gateway(&format!("http://{closed}"), &stack.secret).await;
    let answer = call(
        lonely,
        "GET",
        "/api/chat/threads/",
        Some(&alice.token),
        None,
    )
    .await;
    let message = answer.error(503);
    assert!(!message.contains(&closed.to_string()), "{message}");
    let ready = call(lonely, "GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        call(stack.gateway, "GET", "/readyz", None, None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(stack.gateway, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );
}

async fn a_non_participant_gets_404_everywhere(stack: TestStack) {
    let alice = user(&stack, "alice");
    let carol = user(&stack, "carol");
    let id = new_thread(&stack, &alice, &["bob"], None).await;
    let sent = req(
        &stack,
        &alice,
        "POST",
        &format!("/api/chat/threads/{id}/messages/"),
        Some(json!({"content": "private"})),
    )
    .await;
    let message_id = sent.json["id"].as_str().unwrap().to_owned();
    let unknown = "00000000-0000-7000-8000-000000000000";
    for thread in [id.as_str(), unknown] {
        let cases = [
            ("GET", format!("/api/chat/threads/{thread}/"), None),
            (
                "PATCH",
                format!("/api/chat/threads/{thread}/"),
                Some(json!({"title": "x"})),
            ),
            ("DELETE", format!("/api/chat/threads/{thread}/"), None),
            ("GET", format!("/api/chat/threads/{thread}/messages/"), None),
            (
                "POST",
                format!("/api/chat/threads/{thread}/messages/"),
                Some(json!({"content": "hi"})),
            ),
            (
                "POST",
                format!("/api/chat/threads/{thread}/mark-read/"),
                None,
            ),
        ];
        for (method, path, body) in cases {
            let answer = req(&stack, &carol, method, &path, body).await;
            assert_eq!(answer.error(404), "thread not found", "{method} {path}");
        }
    }
    for message in [message_id.as_str(), unknown] {
        for (method, body) in [
            ("GET", None),
            ("PATCH", Some(json!({"content": "x"}))),
            ("DELETE", None),
        ] {
            let answer = req(
                &stack,
                &carol,
                method,
                &format!("/api/chat/messages/{message}/"),
                body,
            )
            .await;
            assert_eq!(answer.error(404), "message not found");
        }
    }
    let still = req(
        &stack,
        &alice,
        "GET",
        &format!("/api/chat/messages/{message_id}/"),
        None,
    )
    .await;
    assert_eq!(still.json["content"], "private");
}

async fn lists_page_with_cursors_and_filters(stack: TestStack) {
    let alice = user(&stack, "alice");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(new_thread(&stack, &alice, &["bob"], Some(&format!("job-{i}"))).await);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/chat/threads/?limit=2".to_owned();
    loop {
        let page = req(&stack, &alice, "GET", &path, None).await;
        assert_eq!(page.status, 200);
        for t in page.json["results"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_owned());
        }
        match page.json["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/chat/threads/?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let filtered = req(
        &stack,
        &alice,
        "GET",
        "/api/chat/threads/?job_id=job-3",
        None,
    )
    .await;
    let results = filtered.json["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["job_id"], "job-3");
}

#[tokio::test]
async fn the_web_client_is_served_at_the_root() {
    let stack = support::spawn_stack(false).await;
    let page = support::raw_get(stack.gateway, "/").await;
    let page = String::from_utf8(page).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("<title>Marketplace chat</title>"));
    assert!(page.contains(r#"<script type="module" src="/app.js">"#));
    let script = String::from_utf8(support::raw_get(stack.gateway, "/app.js").await).unwrap();
    assert!(
        script.contains(r#"from "/static/chat-client.js";"#),
        "the page is built on the browser library"
    );
    let library =
        String::from_utf8(support::raw_get(stack.gateway, "/static/chat-client.js").await).unwrap();
    assert!(
        library.contains("export class ChatClient"),
        "the library is an ES module"
    );
    assert!(
        library.contains("/ws/chat/"),
        "the client uses the WebSocket"
    );
    for source in [&script, &library] {
        assert!(
            !source.contains("innerHTML") && !source.contains("insertAdjacentHTML"),
            "content is never inserted as HTML"
        );
    }
}

async fn integration_routes_post_typed_messages(stack: TestStack) {
    let alice = user(&stack, "alice");
    let carol = user(&stack, "carol");
    let id = new_thread(&stack, &alice, &["bob"], Some("job-5")).await;
    let cases = [
        (
            "create-dispute",
            json!({"reason": "Late delivery", "details": "Two weeks late"}),
            "dispute",
            json!({"reason": "Late delivery", "details": "Two weeks late"}),
        ),
        (
            "initiate-payment",
            json!({"amount": "125.00", "currency": "USD"}),
            "payment",
            json!({"amount": "125.00", "currency": "USD", "job_id": null}),
        ),
        (
            "job-update",
            json!({"job_id": "job-5", "status": "in_progress"}),
            "job_update",
            json!({"job_id": "job-5", "status": "in_progress", "note": null}),
        ),
    ];
    for (seq, (route, body, kind, metadata)) in cases.into_iter().enumerate() {
        let answer = req(
            &stack,
            &alice,
            "POST",
            &format!("/api/chat/threads/{id}/{route}/"),
            Some(body),
        )
        .await;
        assert_eq!(answer.status, 201, "{route}: {answer:?}");
        assert_eq!(answer.json["message_type"], kind);
        assert_eq!(answer.json["metadata"], metadata);
        assert_eq!(answer.json["sender_id"], "alice");
        assert_eq!(answer.json["seq"], seq as i64 + 1);
    }
    let bad = [
        ("create-dispute", json!({"reason": ""})),
        ("create-dispute", json!({"reason": 5})),
        ("create-dispute", json!({})),
        (
            "initiate-payment",
            json!({"amount": 125, "currency": "USD"}),
        ),
        (
            "initiate-payment",
            json!({"amount": "0.00", "currency": "USD"}),
        ),
        (
            "initiate-payment",
            json!({"amount": "1.999", "currency": "USD"}),
        ),
        (
            "initiate-payment",
            json!({"amount": "10", "currency": "DOLLARS"}),
        ),
        ("job-update", json!({"job_id": "", "status": "done"})),
        ("job-update", json!({"job_id": "job-5", "status": ""})),
        ("job-update", json!({"status": "done"})),
    ];
    for (route, body) in bad {
        let answer = req(
            &stack,
            &alice,
            "POST",
            &format!("/api/chat/threads/{id}/{route}/"),
            Some(body.clone()),
        )
        .await;
        answer.error(400);
    }
    let outsider = req(
        &stack,
        &carol,
        "POST",
        &format!("/api/chat/threads/{id}/create-dispute/"),
        Some(json!({"reason": "not mine"})),
    )
    .await;
    outsider.error(404);
    let thread = req(
        &stack,
        &alice,
        "GET",
        &format!("/api/chat/threads/{id}/"),
        None,
    )
    .await;
    assert_eq!(thread.json["last_seq"], 3);
}
