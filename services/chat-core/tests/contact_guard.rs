//! The off-platform contact guard, on both backends through a real gRPC
//! client: each policy on send and on edit, per-thread policies set by
//! services, flags on every message, masking that keeps the original for
//! services, and the moderation event written with what it is about.

mod support;

use chat_proto::v1::{self as pb};
use serde_json::{Value, json};
use support::{Client, TestApp, create, send, spawn_app_with};
use tonic::Code;

on_both_backends!(
    flag_stores_as_sent_with_flags_and_an_event,
    a_thread_policy_set_by_a_service_overrides_the_default,
    block_stores_nothing_but_the_event,
    edits_are_checked_under_the_same_policy,
    only_services_set_policies_and_bad_ones_are_refused,
);

const CONTACT: &str = "sure, mail me at jane.doe@example.com";

async fn try_send(
    client: &mut Client,
    thread_id: &str,
    content: &str,
) -> Result<pb::Message, tonic::Status> {
    client
        .send_message(pb::SendMessageRequest {
            thread_id: thread_id.to_owned(),
            content: content.to_owned(),
            client_msg_id: Some(format!("c-{}", uuid::Uuid::new_v4())),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().message.expect("message"))
}

/// The `chat-error-code` and `chat-error-kinds` metadata a refusal carries.
fn error_metadata(err: &tonic::Status) -> (Option<&str>, Option<&str>) {
    let get = |key| err.metadata().get(key).and_then(|v| v.to_str().ok());
    (get("chat-error-code"), get("chat-error-kinds"))
}

async fn set_policy(service: &mut Client, thread_id: &str, policy: Option<&str>) -> pb::Thread {
    service
        .set_contact_policy(pb::SetContactPolicyRequest {
            thread_id: thread_id.to_owned(),
            policy: policy.map(str::to_owned),
        })
        .await
        .expect("set policy")
        .into_inner()
        .thread
        .expect("thread")
}

async fn messages(client: &mut Client, thread_id: &str) -> Vec<pb::Message> {
    client
        .list_messages(pb::ListMessagesRequest {
            thread_id: thread_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .messages
}

/// The moderation events in the outbox: (message id or none, payload).
async fn moderation_events(app: &TestApp) -> Vec<(Option<uuid::Uuid>, Value)> {
    app.outbox()
        .await
        .into_iter()
        .filter(|e| e.1 == "moderation.contact_detected")
        .map(|e| (e.2, serde_json::from_str(&e.4).unwrap()))
        .collect()
}

async fn flag_stores_as_sent_with_flags_and_an_event(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    let clean = send(
        &mut alice,
        &t.id,
        "the invoice for job 4821 is $1,250.00, due 2026-12-01",
    )
    .await;
    assert!(clean.flags.is_empty());
    let flagged = try_send(
        &mut alice,
        &t.id,
        "call me on +1 415 555 0134 or jane.doe@example.com",
    )
    .await
    .unwrap();
    assert_eq!(flagged.flags, ["email", "phone"]);
    assert_eq!(
        flagged.content,
        "call me on +1 415 555 0134 or jane.doe@example.com"
    );
    assert_eq!(flagged.seq, 2);
    // The other side reads it as sent, flags and all.
    let seen = messages(&mut bob, &t.id).await;
    assert_eq!(seen[1].content, flagged.content);
    assert_eq!(seen[1].flags, ["email", "phone"]);
    assert!(seen[0].flags.is_empty());
    assert_eq!(seen[1].masked_content, None);

    let events = moderation_events(&app).await;
    assert_eq!(events.len(), 1, "clean messages make no event");
    assert_eq!(
        events[0].0.map(|id| id.to_string()),
        Some(flagged.id.clone())
    );
    assert_eq!(
        events[0].1,
        json!({"thread_id": t.id, "message_id": flagged.id, "sender_id": "alice",
               "kinds": ["email", "phone"], "policy": "flag"})
    );
}

async fn a_thread_policy_set_by_a_service_overrides_the_default(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut service = app.service("job-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    assert_eq!(
        set_policy(&mut service, &t.id, Some("mask"))
            .await
            .contact_policy
            .as_deref(),
        Some("mask")
    );

    // Users see the finding hidden, the sender's own ack included;
    // services read the original.
    let sent = try_send(&mut alice, &t.id, CONTACT).await.unwrap();
    assert_eq!(sent.content, "sure, mail me at [contact hidden]");
    assert_eq!(sent.flags, ["email"]);
    assert_eq!(sent.masked_content, None);
    let by_bob = messages(&mut bob, &t.id).await;
    assert_eq!(by_bob[0].content, "sure, mail me at [contact hidden]");
    let by_service = messages(&mut service, &t.id).await;
    assert_eq!(by_service[0].content, CONTACT);
    assert_eq!(
        by_service[0].masked_content.as_deref(),
        Some("sure, mail me at [contact hidden]")
    );
    // Users cannot find it by what was hidden.
    let found = bob
        .search_messages(pb::SearchMessagesRequest {
            q: "example".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(found.results.is_empty());
    // Live events are masked for users too.
    let mut stream = bob
        .subscribe(pb::SubscribeRequest {
            thread_id: Some(t.id.clone()),
            since_seq: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    try_send(&mut alice, &t.id, "or ring 415 555 0134")
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event.kind {
        Some(pb::event::Kind::MessageCreated(created)) => {
            let message = created.message.unwrap();
            assert_eq!(message.content, "or ring [contact hidden]");
            assert_eq!(message.flags, ["phone"]);
        }
        other => panic!("expected the message, got {other:?}"),
    }
    let events = moderation_events(&app).await;
    assert_eq!(events[0].1["policy"], "mask");

    // Off for this thread: nothing checked, nothing recorded.
    set_policy(&mut service, &t.id, Some("off")).await;
    let unchecked = try_send(&mut alice, &t.id, CONTACT).await.unwrap();
    assert!(unchecked.flags.is_empty());
    assert_eq!(unchecked.content, CONTACT);
    assert_eq!(moderation_events(&app).await.len(), 2);

    // Null: back to the deployment's default (flag).
    let thread = set_policy(&mut service, &t.id, None).await;
    assert_eq!(thread.contact_policy, None);
    let flagged = try_send(&mut alice, &t.id, CONTACT).await.unwrap();
    assert_eq!(
        (flagged.content.as_str(), flagged.flags.len()),
        (CONTACT, 1)
    );
    // A thread's policy shows on reads.
    let read = alice
        .get_thread(pb::GetThreadRequest {
            thread_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!(read.contact_policy, None);
}

async fn block_stores_nothing_but_the_event(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("job-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    set_policy(&mut service, &t.id, Some("block")).await;
    let err = try_send(
        &mut alice,
        &t.id,
        "w h a t s a p p me: five five five 0134 2233",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        error_metadata(&err),
        (Some("contact_blocked"), Some("phone,handle"))
    );
    assert_eq!(
        err.message(),
        "message blocked: it contains contact details (phone, handle)"
    );
    // Nothing stored: the next message takes seq 1.
    assert!(messages(&mut alice, &t.id).await.is_empty());
    let next = send(&mut alice, &t.id, "ok, let's keep it here").await;
    assert_eq!(next.seq, 1);
    let events = moderation_events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, None);
    assert_eq!(events[0].1["message_id"], Value::Null);
    assert_eq!(events[0].1["policy"], "block");
    assert_eq!(events[0].1["sender_id"], "alice");
    assert_eq!(events[0].1["thread_id"], t.id.as_str());
    // The transcript never saw it.
    let export = service
        .export_transcript(pb::ExportTranscriptRequest {
            thread_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.entries.len(), 1);
}

async fn edits_are_checked_under_the_same_policy(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut service = app.service("job-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    let m = send(&mut alice, &t.id, "draft is ready").await;
    let edit = |content: &'static str| {
        let id = m.id.clone();
        let mut client = alice.clone();
        async move {
            client
                .edit_message(pb::EditMessageRequest {
                    message_id: id,
                    content: content.into(),
                })
                .await
                .map(|r| r.into_inner().message.unwrap())
        }
    };
    // Flag (the default): flags follow the new text, with an event.
    let flagged = edit("find me at jane.doe@example.com").await.unwrap();
    assert_eq!(flagged.flags, ["email"]);
    let events = moderation_events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1["message_id"], m.id.as_str());
    // Clean again: no flags.
    assert!(edit("never mind").await.unwrap().flags.is_empty());
    // Mask: users see the masked edit.
    set_policy(&mut service, &t.id, Some("mask")).await;
    let masked = edit("see instagram.com/janedoe").await.unwrap();
    assert_eq!(masked.content, "see [contact hidden]");
    assert_eq!(
        messages(&mut bob, &t.id).await[0].content,
        "see [contact hidden]"
    );
    // Block: refused, unchanged, an event without a message.
    set_policy(&mut service, &t.id, Some("block")).await;
    let err = edit("text me 415 555 0134").await.unwrap_err();
    assert_eq!(
        error_metadata(&err),
        (Some("contact_blocked"), Some("phone"))
    );
    assert_eq!(
        messages(&mut bob, &t.id).await[0].content,
        "see [contact hidden]"
    );
    let events = moderation_events(&app).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].0, None);
    assert_eq!(events[2].1["policy"], "block");
}

async fn only_services_set_policies_and_bad_ones_are_refused(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("job-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    let err = alice
        .set_contact_policy(pb::SetContactPolicyRequest {
            thread_id: t.id.clone(),
            policy: Some("off".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    for (thread, policy, code) in [
        (t.id.as_str(), Some("ban"), Code::InvalidArgument),
        (t.id.as_str(), Some(""), Code::InvalidArgument),
        (
            "0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f",
            Some("block"),
            Code::NotFound,
        ),
        ("nope", None, Code::NotFound),
    ] {
        let err = service
            .set_contact_policy(pb::SetContactPolicyRequest {
                thread_id: thread.to_owned(),
                policy: policy.map(str::to_owned),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{thread} {policy:?}");
    }
    // Nothing changed.
    let read = service
        .get_thread(pb::GetThreadRequest {
            thread_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!(read.contact_policy, None);
}

#[tokio::test]
async fn the_deployment_default_comes_from_contact_policy() {
    for (policy, content, flags) in [
        ("off", CONTACT, 0),
        ("mask", "sure, mail me at [contact hidden]", 1),
    ] {
        let app = spawn_app_with(support::Backend::Sqlite, &[("CONTACT_POLICY", policy)]).await;
        let mut alice = app.user("alice").await;
        let t = create(&mut alice, &["bob"], None).await;
        let sent = try_send(&mut alice, &t.id, CONTACT).await.unwrap();
        assert_eq!(
            (sent.content.as_str(), sent.flags.len()),
            (content, flags),
            "{policy}"
        );
    }
    let app = spawn_app_with(support::Backend::Sqlite, &[("CONTACT_POLICY", "block")]).await;
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    assert!(try_send(&mut alice, &t.id, CONTACT).await.is_err());
    let bad = chat_core::config::Settings::from_lookup(|name| match name {
        "CONTACT_POLICY" => Some("strict".into()),
        _ => None,
    })
    .unwrap_err();
    assert_eq!(bad.variable, "CONTACT_POLICY");
}

#[tokio::test]
async fn a_policy_set_on_one_replica_holds_on_another() {
    let a = support::spawn_app(support::Backend::Postgres).await;
    let b = a.restart_with(&[]).await;
    let mut alice_on_b = b.user("alice").await;
    let t = create(&mut alice_on_b, &["bob"], None).await;
    set_policy(&mut a.service("job-service").await, &t.id, Some("block")).await;
    let err = try_send(&mut alice_on_b, &t.id, CONTACT).await.unwrap_err();
    assert_eq!(
        error_metadata(&err),
        (Some("contact_blocked"), Some("email"))
    );
    set_policy(&mut b.service("job-service").await, &t.id, Some("mask")).await;
    let sent = try_send(&mut a.user("alice").await, &t.id, CONTACT)
        .await
        .unwrap();
    assert_eq!(sent.content, "sure, mail me at [contact hidden]");
    let by_bob_on_b = messages(&mut b.user("bob").await, &t.id).await;
    assert_eq!(by_bob_on_b[0].content, "sure, mail me at [contact hidden]");
    assert_eq!(moderation_events(&a).await.len(), 2);
}
