//! `RelayService.Calls`: sends, read cursors and typing flags multiplexed
//! over one stream, each answered exactly as its unary RPC answers it, on
//! both backends.

mod support;

use std::time::Duration;

use chat_proto::v1::{
    self as pb, relay_call::Call, relay_call_result::Result as Answer,
    relay_service_client::RelayServiceClient,
};
use support::TestApp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

on_both_backends!(
    calls_are_answered_under_their_ids_like_their_unary_rpcs,
    each_call_is_checked_alone_and_a_refused_one_changes_nothing,
    calls_taken_before_shutdown_are_still_answered,
);

const WAIT: Duration = Duration::from_secs(10);

/// One call stream: calls in, results out.
struct CallStream {
    calls: mpsc::Sender<pb::RelayCall>,
    results: Streaming<pb::RelayCallResult>,
}

impl CallStream {
    async fn connect(app: &TestApp) -> CallStream {
        let (calls, requests) = mpsc::channel(64);
        let results = RelayServiceClient::new(app.channel().await)
            .calls(ReceiverStream::new(requests))
            .await
            .expect("calls")
            .into_inner();
        CallStream { calls, results }
    }

    async fn call(&self, id: u64, token: &str, call: Option<Call>) {
        self.calls
            .send(pb::RelayCall {
                id,
                token: token.to_owned(),
                request_id: format!("test-{id}"),
                call,
                traceparent: String::new(),
            })
            .await
            .expect("queue a call");
    }

    async fn next(&mut self) -> (u64, Answer) {
        let result = tokio::time::timeout(WAIT, self.results.message())
            .await
            .expect("a result in time")
            .expect("a healthy stream")
            .expect("the stream is open");
        (result.id, result.result.expect("a result"))
    }

    /// Makes one call and waits for its result.
    async fn round_trip(&mut self, id: u64, token: &str, call: Call) -> Answer {
        self.call(id, token, Some(call)).await;
        let (answered, answer) = self.next().await;
        assert_eq!(answered, id, "answered under the call's id");
        answer
    }
}

fn send(thread_id: &str, content: &str, client_msg_id: Option<&str>) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        thread_id: thread_id.to_owned(),
        content: content.to_owned(),
        client_msg_id: client_msg_id.map(str::to_owned),
        ..Default::default()
    }
}

fn failed(answer: Answer) -> (Code, String) {
    match answer {
        Answer::Failed(failed) => (Code::from_i32(failed.code), failed.message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

async fn calls_are_answered_under_their_ids_like_their_unary_rpcs(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let thread = support::create(&mut alice, &["bob"], None).await.id;
    let mut stream = CallStream::connect(&app).await;
    let alice_token = app.user_token("alice");

    // Several calls in flight at once come back under their own ids.
    for (id, key) in [(10, "k-10"), (11, "k-11"), (12, "k-12")] {
        stream
            .call(
                id,
                &alice_token,
                Some(Call::SendMessage(send(&thread, key, Some(key)))),
            )
            .await;
    }
    let mut acked = Vec::new();
    for _ in 0..3 {
        let (id, answer) = stream.next().await;
        let Answer::SendMessage(response) = answer else {
            panic!("expected a send answer, got {answer:?}");
        };
        let message = response.message.expect("the stored message");
        assert!(response.created);
        assert_eq!(message.content, format!("k-{id}"));
        assert_eq!(message.client_msg_id.as_deref(), Some(&*format!("k-{id}")));
        acked.push(message.seq);
    }
    acked.sort_unstable();
    assert_eq!(acked, vec![1, 2, 3], "contiguous seqs");

    // A resend with a used key gets the original, as over SendMessage.
    let Answer::SendMessage(again) = stream
        .round_trip(
            13,
            &alice_token,
            Call::SendMessage(send(&thread, "k-11", Some("k-11"))),
        )
        .await
    else {
        panic!("expected a send answer");
    };
    assert!(!again.created);
    let (unary, created) = support::send_with(&mut alice, &thread, "k-11", Some("k-11")).await;
    assert!(!created);
    assert_eq!(again.message.expect("original"), unary);

    // Bob's read cursor moves; his unread count says so.
    let before = bob
        .get_unread_counts(pb::GetUnreadCountsRequest {})
        .await
        .expect("unread counts")
        .into_inner();
    assert_eq!(before.threads.get(&thread).copied(), Some(3));
    let answer = stream
        .round_trip(
            14,
            &app.user_token("bob"),
            Call::MarkRead(pb::MarkReadRequest {
                thread_id: thread.clone(),
                up_to_seq: Some(2),
            }),
        )
        .await;
    assert!(matches!(answer, Answer::MarkRead(_)), "{answer:?}");
    let after = bob
        .get_unread_counts(pb::GetUnreadCountsRequest {})
        .await
        .expect("unread counts")
        .into_inner();
    assert_eq!(after.threads.get(&thread).copied(), Some(1));

    let answer = stream
        .round_trip(
            15,
            &app.user_token("bob"),
            Call::SetTyping(pb::SetTypingRequest {
                thread_id: thread.clone(),
                is_typing: true,
            }),
        )
        .await;
    assert!(matches!(answer, Answer::SetTyping(_)), "{answer:?}");

    // Counted like the unary RPC.
    app.wait_for_metric(
        "chat_core_grpc_requests_total{method=\"/chat.v1.ChatService/SendMessage\",code=\"OK\"}",
        5,
    )
    .await;
}

async fn each_call_is_checked_alone_and_a_refused_one_changes_nothing(app: TestApp) {
    let mut alice = app.user("alice").await;
    let thread = support::create(&mut alice, &["bob"], None).await.id;
    let mut stream = CallStream::connect(&app).await;
    let alice_token = app.user_token("alice");

    // Each refusal is the unary RPC's own status, code and message.
    let cases: Vec<(&str, String, pb::SendMessageRequest)> = vec![
        (
            "a bad token",
            "not-a-token".to_owned(),
            send(&thread, "x", None),
        ),
        ("no token", String::new(), send(&thread, "x", None)),
        (
            "a foreign thread",
            app.user_token("mallory"),
            send(&thread, "x", None),
        ),
        (
            "a malformed thread id",
            alice_token.clone(),
            send("not-a-uuid", "x", None),
        ),
        (
            "empty content",
            alice_token.clone(),
            send(&thread, "", None),
        ),
    ];
    for (i, (case, token, request)) in cases.into_iter().enumerate() {
        let id = 100 + i as u64;
        let answer = stream
            .round_trip(id, &token, Call::SendMessage(request.clone()))
            .await;
        let (code, message) = failed(answer);
        let token = (!token.is_empty()).then_some(token);
        let unary = app
            .with_token(token)
            .await
            .send_message(request)
            .await
            .expect_err(case);
        assert_eq!(
            (code, message.as_str()),
            (unary.code(), unary.message()),
            "{case}"
        );
    }

    // A text the thread's contact policy blocks: the application error
    // code and the kinds found travel with the status, as the unary RPC's
    // metadata carries them.
    app.service("job-service")
        .await
        .set_contact_policy(pb::SetContactPolicyRequest {
            thread_id: thread.clone(),
            policy: Some("block".into()),
        })
        .await
        .expect("block contact details");
    let blocked = send(
        &thread,
        "mail me at jane.doe@example.com or +1 415 555 0134",
        None,
    );
    let answer = stream
        .round_trip(150, &alice_token, Call::SendMessage(blocked.clone()))
        .await;
    let Answer::Failed(refused) = answer else {
        panic!("expected a failure, got {answer:?}");
    };
    let unary = alice.send_message(blocked).await.expect_err("blocked");
    assert_eq!(
        (
            Code::from_i32(refused.code),
            refused.message.as_str(),
            refused.error_code.as_str(),
            refused.error_kinds.clone(),
        ),
        (
            unary.code(),
            unary.message(),
            "contact_blocked",
            vec!["email".to_owned(), "phone".to_owned()],
        )
    );
    assert_eq!(
        unary
            .metadata()
            .get("chat-error-kinds")
            .and_then(|v| v.to_str().ok()),
        Some("email,phone")
    );
    // Other refusals carry neither.
    let answer = stream
        .round_trip(
            151,
            &alice_token,
            Call::SendMessage(send(&thread, "", None)),
        )
        .await;
    let Answer::Failed(refused) = answer else {
        panic!("expected a failure, got {answer:?}");
    };
    assert_eq!(
        (refused.error_code.as_str(), refused.error_kinds.len()),
        ("", 0)
    );

    // A call that names nothing.
    stream.call(200, &alice_token, None).await;
    let (id, answer) = stream.next().await;
    assert_eq!(id, 200);
    assert_eq!(failed(answer).0, Code::InvalidArgument);

    // Nothing was stored, and the stream still carries calls.
    assert_eq!(app.count("SELECT COUNT(*) FROM messages").await, 0);
    let answer = stream
        .round_trip(
            201,
            &alice_token,
            Call::SendMessage(send(&thread, "fine", None)),
        )
        .await;
    let Answer::SendMessage(response) = answer else {
        panic!("expected a send answer, got {answer:?}");
    };
    assert_eq!(response.message.expect("stored").seq, 1);
}

async fn calls_taken_before_shutdown_are_still_answered(mut app: TestApp) {
    let mut alice = app.user("alice").await;
    let thread = support::create(&mut alice, &["bob"], None).await.id;
    let mut stream = CallStream::connect(&app).await;
    let alice_token = app.user_token("alice");
    assert!(matches!(
        stream
            .round_trip(
                1,
                &alice_token,
                Call::SendMessage(send(&thread, "first", None))
            )
            .await,
        Answer::SendMessage(_)
    ));

    // Sends held in the writer (their thread is locked) when the server is
    // told to stop are answered before the stream ends.
    let block = app.block_writes(&thread).await;
    for id in 2..=4 {
        stream
            .call(
                id,
                &alice_token,
                Some(Call::SendMessage(send(&thread, &format!("m{id}"), None))),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    block.release().await;
    let mut answered = Vec::new();
    for _ in 2..=4 {
        let (id, answer) = stream.next().await;
        let Answer::SendMessage(response) = answer else {
            panic!("expected a send answer, got {answer:?}");
        };
        answered.push((id, response.message.expect("stored").seq));
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![(2, 2), (3, 3), (4, 4)]);
    let end = tokio::time::timeout(WAIT, stream.results.message())
        .await
        .expect("the stream ends in time");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}
