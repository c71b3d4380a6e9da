//! Live events through `Subscribe` and `SetTyping` (docs/api.md#websocket-api, #grpc-api), on both
//! storage backends, through a real gRPC client.

mod support;

use std::{collections::HashMap, time::Duration};

use chat_proto::v1::{self as pb, event::Kind};
use support::{Client, TestApp};

async fn create(client: &mut Client, others: &[&str]) -> String {
    support::create(client, others, None).await.id
}

async fn send(client: &mut Client, thread_id: &str, content: &str) -> i64 {
    support::send(client, thread_id, content).await.seq
}
use tonic::{Code, Streaming};

on_both_backends!(
    participants_receive_messages_in_seq_order,
    since_seq_replays_the_backlog_then_goes_live,
    a_subscription_opened_during_a_send_burst_misses_nothing,
    a_user_wide_stream_follows_new_threads,
    edits_deletes_and_read_receipts_are_events,
    typing_reaches_the_others_and_expires,
    subscribing_follows_the_access_rules,
    a_subscriber_that_never_reads_is_cut_off,
    a_user_wide_stream_resumes_every_thread,
    streams_end_with_unavailable_at_shutdown,
);

const WAIT: Duration = Duration::from_secs(10);

async fn subscribe(
    client: &mut Client,
    thread_id: Option<&str>,
    since_seq: Option<i64>,
) -> Streaming<pb::Event> {
    client
        .subscribe(pb::SubscribeRequest {
            thread_id: thread_id.map(str::to_owned),
            since_seq,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event in time")
        .expect("a healthy stream")
        .expect("the stream is open")
}

/// The seq and content of the next event, which must be a new message.
async fn next_message(stream: &mut Streaming<pb::Event>) -> (i64, String) {
    let event = next(stream).await;
    match event.kind {
        Some(Kind::MessageCreated(created)) => {
            let message = created.message.expect("message");
            assert_eq!(event.seq, message.seq);
            assert_eq!(event.thread_id, message.thread_id);
            (message.seq, message.content)
        }
        other => panic!("expected a new message, got {other:?}"),
    }
}

/// Nothing arrives within a short while.
async fn quiet(stream: &mut Streaming<pb::Event>) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("expected silence, got {item:?}");
    }
}

async fn participants_receive_messages_in_seq_order(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"]).await;
    let mut alice_events = subscribe(&mut alice, Some(&t), None).await;
    let mut bob_events = subscribe(&mut bob, Some(&t), None).await;
    for text in ["one", "two", "three"] {
        send(&mut alice, &t, text).await;
    }
    send(&mut bob, &t, "four").await;
    for stream in [&mut alice_events, &mut bob_events] {
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(next_message(stream).await);
        }
        let expected: Vec<(i64, String)> = ["one", "two", "three", "four"]
            .iter()
            .enumerate()
            .map(|(i, s)| (i as i64 + 1, s.to_string()))
            .collect();
        assert_eq!(got, expected);
        quiet(stream).await;
    }
}

async fn since_seq_replays_the_backlog_then_goes_live(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"]).await;
    for i in 1..=5 {
        send(&mut alice, &t, &format!("m{i}")).await;
    }
    let mut from_two = subscribe(&mut bob, Some(&t), Some(2)).await;
    for seq in 3..=5 {
        assert_eq!(next_message(&mut from_two).await, (seq, format!("m{seq}")));
    }
    let mut from_zero = subscribe(&mut bob, Some(&t), Some(0)).await;
    for seq in 1..=5 {
        assert_eq!(next_message(&mut from_zero).await.0, seq);
    }
    // Without since_seq: live events only. Beyond last_seq: from last_seq.
    let mut live_only = subscribe(&mut bob, Some(&t), None).await;
    let mut ahead = subscribe(&mut bob, Some(&t), Some(99)).await;
    quiet(&mut live_only).await;
    send(&mut alice, &t, "m6").await;
    for stream in [&mut from_two, &mut from_zero, &mut live_only, &mut ahead] {
        assert_eq!(next_message(stream).await, (6, "m6".to_owned()));
        quiet(stream).await;
    }
}

async fn a_subscription_opened_during_a_send_burst_misses_nothing(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob", "carol"]).await;
    const TOTAL: i64 = 150;
    let mut senders = Vec::new();
    for who in ["alice", "bob", "carol"] {
        let mut client = app.user(who).await;
        let t = t.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..TOTAL / 3 {
                send(&mut client, &t, &format!("{who}-{i}")).await;
            }
        }));
    }
    // Subscribers joining at different moments of the burst, resuming
    // from 0 or from wherever they are.
    let mut streams = Vec::new();
    for (i, who) in ["bob", "carol", "alice", "bob"].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut client = app.user(who).await;
        let since = if i % 2 == 0 { Some(0) } else { None };
        let stream = subscribe(&mut client, Some(&t), since).await;
        streams.push((since, stream, client));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    for (since, stream, _client) in &mut streams {
        let mut seqs = Vec::new();
        loop {
            let (seq, _) = next_message(stream).await;
            seqs.push(seq);
            if seq == TOTAL {
                break;
            }
        }
        let first = seqs[0];
        if since.is_some() {
            assert_eq!(first, 1);
        }
        assert_eq!(
            seqs,
            (first..=TOTAL).collect::<Vec<_>>(),
            "a gap or a duplicate"
        );
        quiet(stream).await;
    }
}

async fn a_user_wide_stream_follows_new_threads(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let old = create(&mut alice, &["bob"]).await;
    send(&mut alice, &old, "before").await;
    let mut events = subscribe(&mut bob, None, None).await;
    // First, the baseline: each thread and the seq the stream starts after.
    match next(&mut events).await.kind {
        Some(Kind::Synced(synced)) => {
            assert_eq!(synced.last_seqs, HashMap::from([(old.clone(), 1)]))
        }
        other => panic!("expected synced, got {other:?}"),
    }
    send(&mut alice, &old, "in the old thread").await;
    let event = next(&mut events).await;
    assert_eq!(event.thread_id, old);
    assert!(matches!(event.kind, Some(Kind::MessageCreated(_))));

    let new = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into(), "carol".into()],
            job_id: Some("job-1".into()),
            title: Some("New job".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap()
        .id;
    let event = next(&mut events).await;
    assert_eq!(event.thread_id, new);
    match event.kind {
        Some(Kind::ThreadCreated(created)) => {
            let thread = created.thread.unwrap();
            assert_eq!(thread.participants, vec!["alice", "bob", "carol"]);
            assert_eq!(thread.title.as_deref(), Some("New job"));
        }
        other => panic!("expected thread_created, got {other:?}"),
    }
    send(&mut alice, &new, "in the new thread").await;
    let event = next(&mut events).await;
    assert_eq!(event.thread_id, new);
    assert_eq!(event.seq, 1);
    // A thread bob is not in never shows up.
    let private = create(&mut alice, &["carol"]).await;
    send(&mut alice, &private, "not for bob").await;
    quiet(&mut events).await;
}

async fn edits_deletes_and_read_receipts_are_events(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"]).await;
    let mut alice_events = subscribe(&mut alice, Some(&t), None).await;
    let mut bob_events = subscribe(&mut bob, Some(&t), None).await;
    let sent = alice
        .send_message(pb::SendMessageRequest {
            thread_id: t.clone(),
            content: "draft".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    alice
        .edit_message(pb::EditMessageRequest {
            message_id: sent.id.clone(),
            content: "final".into(),
        })
        .await
        .unwrap();
    bob.mark_read(pb::MarkReadRequest {
        thread_id: t.clone(),
        up_to_seq: None,
    })
    .await
    .unwrap();
    alice
        .delete_message(pb::DeleteMessageRequest {
            message_id: sent.id.clone(),
        })
        .await
        .unwrap();
    for stream in [&mut alice_events, &mut bob_events] {
        assert_eq!(next_message(stream).await, (1, "draft".to_owned()));
        let updated = next(stream).await;
        assert_eq!(updated.seq, 1);
        match updated.kind {
            Some(Kind::MessageUpdated(u)) => assert_eq!(u.message.unwrap().content, "final"),
            other => panic!("expected message_updated, got {other:?}"),
        }
        let read = next(stream).await;
        assert_eq!(
            read.kind,
            Some(Kind::MessagesRead(pb::MessagesRead {
                user_id: "bob".into(),
                up_to_seq: 1
            }))
        );
        let deleted = next(stream).await;
        assert_eq!(deleted.seq, 1);
        assert_eq!(
            deleted.kind,
            Some(Kind::MessageDeleted(pb::MessageDeleted {
                message_id: sent.id.clone()
            }))
        );
        quiet(stream).await;
    }
}

async fn typing_reaches_the_others_and_expires(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"]).await;
    let mut alice_events = subscribe(&mut alice, Some(&t), None).await;
    let mut bob_events = subscribe(&mut bob, Some(&t), None).await;
    let typing = |is_typing| pb::SetTypingRequest {
        thread_id: t.clone(),
        is_typing,
    };
    alice.set_typing(typing(true)).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        next(&mut bob_events).await.kind,
        Some(Kind::Typing(pb::Typing {
            user_id: "alice".into(),
            is_typing: true
        }))
    );
    // Expires to false after 6 s without a refresh.
    let stopped = tokio::time::timeout(Duration::from_secs(9), bob_events.message())
        .await
        .expect("expiry in time")
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(
        stopped.kind,
        Some(Kind::Typing(pb::Typing {
            user_id: "alice".into(),
            is_typing: false
        }))
    );
    assert!(
        waited >= Duration::from_millis(5500),
        "expired after {waited:?}"
    );
    // An explicit stop is passed on at once; the typist hears nothing.
    bob.set_typing(pb::SetTypingRequest {
        thread_id: t.clone(),
        is_typing: false,
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut alice_events).await.kind,
        Some(Kind::Typing(pb::Typing {
            user_id: "bob".into(),
            is_typing: false
        }))
    );
    quiet(&mut alice_events).await;
    // Typing is never stored.
    let page = alice
        .list_messages(pb::ListMessagesRequest {
            thread_id: t.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.messages.is_empty());
}

async fn subscribing_follows_the_access_rules(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut carol = app.user("carol").await;
    let t = create(&mut alice, &["bob"]).await;
    let cases = [
        (Some(t.clone()), None, Code::NotFound),
        (Some(uuid::Uuid::new_v4().to_string()), None, Code::NotFound),
        (Some("nope".to_owned()), None, Code::NotFound),
    ];
    for (thread_id, since_seq, code) in cases {
        let status = carol
            .subscribe(pb::SubscribeRequest {
                thread_id,
                since_seq,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code);
    }
    let status = carol
        .set_typing(pb::SetTypingRequest {
            thread_id: t.clone(),
            is_typing: true,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::NotFound);
    for (thread_id, since_seq) in [(Some(t.clone()), Some(-1)), (None, Some(3))] {
        let status = alice
            .subscribe(pb::SubscribeRequest {
                thread_id,
                since_seq,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    // A service follows one thread at a time, and may not type.
    let mut service = app.service("dispute-service").await;
    let mut watching = subscribe(&mut service, Some(&t), Some(0)).await;
    send(&mut alice, &t, "hello").await;
    assert_eq!(next_message(&mut watching).await, (1, "hello".to_owned()));
    let status = service
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = service
        .set_typing(pb::SetTypingRequest {
            thread_id: t.clone(),
            is_typing: true,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn a_subscriber_that_never_reads_is_cut_off(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user_with_small_window("bob").await;
    let t = create(&mut alice, &["bob"]).await;
    let mut stalled = subscribe(&mut bob, Some(&t), None).await;
    let mut healthy = subscribe(&mut alice, Some(&t), None).await;
    // Enough data to fill the HTTP/2 window and then the subscriber's
    // bounded queue (256 events); the healthy subscriber keeps reading.
    let body = "x".repeat(3000);
    const TOTAL: i64 = 800;
    let reader = tokio::spawn(async move {
        for seq in 1..=TOTAL {
            assert_eq!(next_message(&mut healthy).await.0, seq);
        }
    });
    for _ in 0..TOTAL {
        send(&mut alice, &t, &body).await;
    }
    reader
        .await
        .expect("the healthy subscriber got everything, in order");

    // The stalled one finds a contiguous prefix, then RESOURCE_EXHAUSTED.
    let mut expected = 1;
    let status = loop {
        match tokio::time::timeout(WAIT, stalled.message())
            .await
            .unwrap_or_else(|_| panic!("stalled after {expected}"))
        {
            Ok(Some(event)) => {
                assert_eq!(event.seq, expected, "a gap before the cut-off");
                expected += 1;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("since_seq"));
    assert!(expected - 1 < TOTAL, "it was cut off before the end");
    // Resuming from the last seq it saw delivers the rest.
    let mut resumed = subscribe(&mut bob, Some(&t), Some(expected - 1)).await;
    for seq in expected..=TOTAL {
        assert_eq!(next_message(&mut resumed).await.0, seq);
    }
}

async fn streams_end_with_unavailable_at_shutdown(mut app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"]).await;
    let mut events = subscribe(&mut alice, Some(&t), None).await;
    send(&mut alice, &t, "before").await;
    assert_eq!(next_message(&mut events).await.0, 1);
    app.stop();
    let status = tokio::time::timeout(WAIT, events.message())
        .await
        .expect("in time")
        .expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("since_seq"));
}

async fn a_user_wide_stream_resumes_every_thread(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let busy = create(&mut alice, &["bob"]).await;
    let quiet_thread = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into()],
            job_id: Some("job-2".into()),
            title: None,
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap()
        .id;
    for text in ["a", "b"] {
        send(&mut alice, &busy, text).await;
    }
    let mut first = subscribe(&mut bob, None, None).await;
    let baseline = match next(&mut first).await.kind {
        Some(Kind::Synced(synced)) => synced.last_seqs,
        other => panic!("expected synced, got {other:?}"),
    };
    assert_eq!(
        baseline,
        HashMap::from([(busy.clone(), 2), (quiet_thread.clone(), 0)])
    );
    drop(first);
    // While bob is away, both threads move, the one he never saw an event
    // of included.
    send(&mut alice, &busy, "c").await;
    send(&mut alice, &quiet_thread, "x").await;
    send(&mut alice, &quiet_thread, "y").await;
    let mut resumed = bob
        .subscribe(pb::SubscribeRequest {
            since_seqs: baseline.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match next(&mut resumed).await.kind {
        Some(Kind::Synced(synced)) => assert_eq!(synced.last_seqs, baseline),
        other => panic!("expected synced, got {other:?}"),
    }
    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..3 {
        let event = next(&mut resumed).await;
        assert!(matches!(event.kind, Some(Kind::MessageCreated(_))));
        got.entry(event.thread_id.clone())
            .or_default()
            .push(event.seq);
    }
    assert_eq!(
        got,
        HashMap::from([(busy.clone(), vec![3]), (quiet_thread.clone(), vec![1, 2])])
    );
    quiet(&mut resumed).await;
    // Bad resume points are refused.
    for since_seqs in [
        HashMap::from([("not-a-uuid".to_owned(), 1)]),
        HashMap::from([(busy.clone(), -1)]),
    ] {
        let status = bob
            .subscribe(pb::SubscribeRequest {
                since_seqs,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
