//! `IntegrationService` (docs/api.md#grpc-api): typed messages and their outbox events,
//! written in one transaction, on both storage backends.

mod support;

use chat_proto::v1::{self as pb, MessageType};
use serde_json::{Value, json};
use support::{Client, TestApp};

async fn thread(client: &mut Client) -> String {
    support::create(client, &["bob"], Some("job-1")).await.id
}
use tonic::Code;

on_both_backends!(
    participants_and_services_post_typed_messages_with_events,
    bad_integration_input_is_refused_and_writes_nothing,
    system_events_are_for_services_and_idempotent,
    watching_events_needs_a_service_token,
    watchers_resume_without_gap_or_duplicate,
);

fn metadata(message: &pb::Message) -> Value {
    serde_json::from_str(&message.metadata_json).unwrap()
}

async fn participants_and_services_post_typed_messages_with_events(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = thread(&mut alice).await;
    let mut live = alice
        .subscribe(pb::SubscribeRequest {
            thread_id: Some(t.clone()),
            since_seq: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut as_alice = app.integrations(app.user_token("alice")).await;
    let mut as_service = app.integrations(app.service_token("jobs-service")).await;

    let dispute = as_alice
        .request_dispute(pb::RequestDisputeRequest {
            thread_id: t.clone(),
            reason: "Work not delivered".into(),
            details: None,
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(dispute.message_type, MessageType::Dispute as i32);
    assert_eq!(dispute.sender_id.as_deref(), Some("alice"));
    assert_eq!(dispute.seq, 1);
    assert_eq!(
        metadata(&dispute),
        json!({"reason": "Work not delivered", "details": null})
    );

    let payment = as_alice
        .initiate_payment(pb::InitiatePaymentRequest {
            thread_id: t.clone(),
            amount: "125.00".into(),
            currency: "USD".into(),
            job_id: Some("job-1".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(payment.message_type, MessageType::Payment as i32);
    assert_eq!(payment.seq, 2);
    assert_eq!(
        metadata(&payment),
        json!({"amount": "125.00", "currency": "USD", "job_id": "job-1"})
    );

    let update = as_service
        .post_job_update(pb::PostJobUpdateRequest {
            thread_id: t.clone(),
            job_id: "job-1".into(),
            status: "completed".into(),
            note: Some("Signed off".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(update.message_type, MessageType::JobUpdate as i32);
    assert_eq!(update.sender_id, None, "a service never acts as a user");
    assert_eq!(
        metadata(&update),
        json!({"job_id": "job-1", "status": "completed", "note": "Signed off"})
    );

    // Each message has its event, ids increasing, in one transaction.
    let outbox = app.outbox().await;
    let summary: Vec<(i64, &str, String, Option<&str>)> = outbox
        .iter()
        .map(|(id, kind, message, actor, _)| {
            (
                *id,
                kind.as_str(),
                message.expect("a message").to_string(),
                actor.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "dispute.requested", dispute.id.clone(), Some("alice")),
            (2, "payment.initiated", payment.id.clone(), Some("alice")),
            (3, "job.updated", update.id.clone(), None),
        ]
    );
    let payload: Value = serde_json::from_str(&outbox[1].4).unwrap();
    assert_eq!(
        payload,
        json!({"amount": "125.00", "currency": "USD", "job_id": "job-1"})
    );

    // They reach subscribers like any message, with their type.
    for (seq, kind) in [
        (1, MessageType::Dispute),
        (2, MessageType::Payment),
        (3, MessageType::JobUpdate),
    ] {
        let event = live.message().await.unwrap().unwrap();
        assert_eq!(event.seq, seq);
        match event.kind {
            Some(pb::event::Kind::MessageCreated(created)) => {
                assert_eq!(created.message.unwrap().message_type, kind as i32)
            }
            other => panic!("{other:?}"),
        }
    }
}

async fn bad_integration_input_is_refused_and_writes_nothing(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = thread(&mut alice).await;
    let mut as_alice = app.integrations(app.user_token("alice")).await;
    let pay = |amount: &str, currency: &str, job: Option<&str>| pb::InitiatePaymentRequest {
        thread_id: t.clone(),
        amount: amount.into(),
        currency: currency.into(),
        job_id: job.map(str::to_owned),
    };
    for request in [
        pay("0", "USD", None),
        pay("-5", "USD", None),
        pay("1.234", "USD", None),
        pay("12,50", "USD", None),
        pay("abc", "USD", None),
        pay("", "USD", None),
        pay("10", "usd", None),
        pay("10", "XYZ", None),
        pay("10", "USD", Some("")),
        pay("10", "USD", Some("job\u{0}")),
    ] {
        let status = as_alice
            .initiate_payment(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
    }
    for (reason, details) in [
        ("", None),
        ("a\u{7}b", None),
        ("ok", Some("x".repeat(4001))),
    ] {
        let status = as_alice
            .request_dispute(pb::RequestDisputeRequest {
                thread_id: t.clone(),
                reason: reason.into(),
                details,
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    for (job_id, status) in [("", "done"), ("job-1", ""), (&*"j".repeat(129), "done")] {
        let refused = as_alice
            .post_job_update(pb::PostJobUpdateRequest {
                thread_id: t.clone(),
                job_id: job_id.into(),
                status: status.into(),
                note: None,
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    // A non-participant learns nothing.
    let mut as_carol = app.integrations(app.user_token("carol")).await;
    let status = as_carol
        .request_dispute(pb::RequestDisputeRequest {
            thread_id: t.clone(),
            reason: "mine".into(),
            details: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::NotFound);

    let seen = alice
        .get_thread(pb::GetThreadRequest {
            thread_id: t.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!(seen.last_seq, 0);
    assert!(app.outbox().await.is_empty());
}

async fn system_events_are_for_services_and_idempotent(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = thread(&mut alice).await;
    let event = |key: &str, kind: MessageType| pb::PostSystemEventRequest {
        thread_id: t.clone(),
        message_type: kind.into(),
        content: "Payment captured".into(),
        metadata_json: Some(r#"{"payment_id": "p-9"}"#.into()),
        idempotency_key: key.into(),
    };
    let mut as_alice = app.integrations(app.user_token("alice")).await;
    let status = as_alice
        .post_system_event(event("k-1", MessageType::System))
        .await
        .expect_err("users may not");
    assert_eq!(status.code(), Code::PermissionDenied);

    let mut payments = app.integrations(app.service_token("payment-service")).await;
    let first = payments
        .post_system_event(event("k-1", MessageType::Payment))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let message = first.message.unwrap();
    assert_eq!(message.message_type, MessageType::Payment as i32);
    assert_eq!(message.sender_id, None);
    assert_eq!(metadata(&message), json!({"payment_id": "p-9"}));
    let again = payments
        .post_system_event(event("k-1", MessageType::Payment))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.message.unwrap().id, message.id);

    for (kind, key) in [
        (MessageType::Text, "k-2"),
        (MessageType::Unspecified, "k-3"),
    ] {
        let status = payments
            .post_system_event(event(key, kind))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let status = payments
        .post_system_event(event("", MessageType::System))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::InvalidArgument);
    // A plain text post cannot pretend to be a business type either.
    let status = alice
        .send_message(pb::SendMessageRequest {
            thread_id: t.clone(),
            content: "I paid".into(),
            message_type: MessageType::Payment.into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].1, "system_event.posted");
    assert_eq!(outbox[0].2.map(|id| id.to_string()), Some(message.id));
}

async fn watching_events_needs_a_service_token(app: TestApp) {
    let mut as_alice = app.integrations(app.user_token("alice")).await;
    let status = as_alice
        .watch_integration_events(pb::WatchIntegrationEventsRequest::default())
        .await
        .expect_err("users may not");
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn post_events(app: &TestApp, thread_id: &str, count: usize, tag: &str) {
    let mut as_alice = app.integrations(app.user_token("alice")).await;
    for i in 0..count {
        if i % 2 == 0 {
            as_alice
                .initiate_payment(pb::InitiatePaymentRequest {
                    thread_id: thread_id.to_owned(),
                    amount: format!("{}.00", i + 1),
                    currency: "EUR".into(),
                    job_id: None,
                })
                .await
                .unwrap();
        } else {
            as_alice
                .request_dispute(pb::RequestDisputeRequest {
                    thread_id: thread_id.to_owned(),
                    reason: format!("{tag} {i}"),
                    details: None,
                })
                .await
                .unwrap();
        }
    }
}

async fn watchers_resume_without_gap_or_duplicate(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = thread(&mut alice).await;
    post_events(&app, &t, 5, "before").await;
    let mut service = app.integrations(app.service_token("payment-service")).await;

    // Stored events first, then live ones.
    let mut all = service
        .watch_integration_events(pb::WatchIntegrationEventsRequest {
            after_event_id: 2,
            event_types: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut payments_only = service
        .watch_integration_events(pb::WatchIntegrationEventsRequest {
            after_event_id: 0,
            event_types: vec!["payment.initiated".into()],
        })
        .await
        .unwrap()
        .into_inner();
    for id in 3..=5 {
        let event = all.message().await.unwrap().unwrap();
        assert_eq!(event.id, id);
        assert_eq!(event.thread_id, t);
    }
    for id in [1, 3, 5] {
        let event = payments_only.message().await.unwrap().unwrap();
        assert_eq!(
            (event.id, event.event_type.as_str()),
            (id, "payment.initiated")
        );
        let payload: Value = serde_json::from_str(&event.payload_json).unwrap();
        assert_eq!(payload["currency"], "EUR");
        assert_eq!(event.actor_id.as_deref(), Some("alice"));
    }
    post_events(&app, &t, 1, "live").await;
    assert_eq!(all.message().await.unwrap().unwrap().id, 6);
    assert_eq!(payments_only.message().await.unwrap().unwrap().id, 6);

    // A consumer that disconnects and resumes from its last id gets every
    // event exactly once while events keep being written.
    const MORE: usize = 40;
    let writers = [
        tokio::spawn({
            let (app_secret, t) = (app.user_token("alice"), t.clone());
            let addr = app.grpc_addr;
            async move { write_events(addr, app_secret, t, MORE / 2).await }
        }),
        tokio::spawn({
            let (app_secret, t) = (app.user_token("alice"), t.clone());
            let addr = app.grpc_addr;
            async move { write_events(addr, app_secret, t, MORE / 2).await }
        }),
    ];
    let total = 6 + MORE as i64;
    let mut seen = Vec::new();
    let mut after = 0;
    'consume: for round in 0.. {
        let mut stream = service
            .watch_integration_events(pb::WatchIntegrationEventsRequest {
                after_event_id: after,
                event_types: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        for _ in 0..(7 + round * 3) {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
                .await
                .expect("in time")
                .unwrap()
                .unwrap();
            seen.push(event.id);
            after = event.id;
            if event.id == total {
                break 'consume;
            }
        }
        // Disconnect mid-flow, resume from the last id seen.
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
}

async fn write_events(addr: std::net::SocketAddr, token: String, thread_id: String, count: usize) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::integration_service_client::IntegrationServiceClient::with_interceptor(
        channel,
        support::Bearer(Some(token)),
    );
    for i in 0..count {
        client
            .post_job_update(pb::PostJobUpdateRequest {
                thread_id: thread_id.clone(),
                job_id: "job-1".into(),
                status: format!("step-{i}"),
                note: None,
            })
            .await
            .unwrap();
    }
}
