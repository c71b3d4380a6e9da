//! `RelayService`: many subscriptions over one stream, each with the
//! guarantees and the access rules of `Subscribe`, on both backends.

mod support;

use std::time::Duration;

use chat_proto::v1::{
    self as pb, event::Kind, relay_event::Kind as RelayKind, relay_request::Kind as Command,
    relay_service_client::RelayServiceClient,
};
use support::TestApp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

on_both_backends!(
    subscriptions_share_one_stream_and_see_only_their_own_threads,
    opens_follow_the_access_rules_and_leave_others_alone,
    a_closed_subscription_gets_nothing_more,
    a_reopened_thread_subscription_resumes_from_its_baseline,
);

const WAIT: Duration = Duration::from_secs(10);

/// One relay stream: commands in, events out.
struct Relay {
    commands: mpsc::Sender<pb::RelayRequest>,
    events: Streaming<pb::RelayEvent>,
}

impl Relay {
    async fn connect(app: &TestApp) -> Relay {
        let (commands, requests) = mpsc::channel(64);
        let events = RelayServiceClient::new(app.channel().await)
            .relay(ReceiverStream::new(requests))
            .await
            .expect("relay")
            .into_inner();
        Relay { commands, events }
    }

    async fn open(&self, id: u64, token: &str, thread: Option<&str>, since_seq: Option<i64>) {
        self.commands
            .send(pb::RelayRequest {
                kind: Some(Command::Open(pb::RelayOpen {
                    id,
                    token: token.to_owned(),
                    subscribe: Some(pb::SubscribeRequest {
                        thread_id: thread.map(str::to_owned),
                        since_seq,
                        ..Default::default()
                    }),
                    request_id: format!("test-{id}"),
                })),
            })
            .await
            .expect("send open");
    }

    async fn close(&self, id: u64) {
        self.commands
            .send(pb::RelayRequest {
                kind: Some(Command::Close(pb::RelayClose { id })),
            })
            .await
            .expect("send close");
    }

    async fn next(&mut self) -> (u64, RelayKind) {
        let event = tokio::time::timeout(WAIT, self.events.message())
            .await
            .expect("a relay event in time")
            .expect("a healthy relay")
            .expect("the relay is open");
        (event.id, event.kind.expect("a kind"))
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(event) =
            tokio::time::timeout(Duration::from_millis(300), self.events.message()).await
        {
            panic!("expected nothing, got {event:?}");
        }
    }
}

fn message_seq(kind: &RelayKind) -> Option<(String, i64, String)> {
    match kind {
        RelayKind::Event(pb::Event {
            thread_id,
            seq,
            kind: Some(Kind::MessageCreated(created)),
        }) => Some((
            thread_id.clone(),
            *seq,
            created.message.as_ref().expect("message").content.clone(),
        )),
        _ => None,
    }
}

fn synced(kind: &RelayKind) -> Vec<(String, i64)> {
    match kind {
        RelayKind::Event(pb::Event {
            kind: Some(Kind::Synced(synced)),
            ..
        }) => {
            let mut seqs: Vec<_> = synced
                .last_seqs
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            seqs.sort();
            seqs
        }
        other => panic!("expected synced, got {other:?}"),
    }
}

async fn subscriptions_share_one_stream_and_see_only_their_own_threads(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut carol = app.user("carol").await;
    let ab = support::create(&mut alice, &["bob"], None).await.id;
    let cd = support::create(&mut carol, &["dave"], None).await.id;
    let mut relay = Relay::connect(&app).await;

    relay.open(1, &app.user_token("bob"), Some(&ab), None).await;
    assert!(matches!(relay.next().await, (1, RelayKind::Opened(_))));
    assert_eq!(synced(&relay.next().await.1), vec![(ab.clone(), 0)]);
    relay.open(2, &app.user_token("dave"), None, None).await;
    assert!(matches!(relay.next().await, (2, RelayKind::Opened(_))));
    assert_eq!(synced(&relay.next().await.1), vec![(cd.clone(), 0)]);

    support::send(&mut alice, &ab, "to bob").await;
    support::send(&mut carol, &cd, "to dave").await;
    support::send(&mut alice, &ab, "to bob again").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (id, kind) = relay.next().await;
        seen.push((id, message_seq(&kind).expect("a message")));
    }
    let for_bob: Vec<_> = seen
        .iter()
        .filter(|(id, _)| *id == 1)
        .map(|(_, m)| m.clone())
        .collect();
    let for_dave: Vec<_> = seen
        .iter()
        .filter(|(id, _)| *id == 2)
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(
        for_bob,
        vec![
            (ab.clone(), 1, "to bob".to_owned()),
            (ab.clone(), 2, "to bob again".to_owned())
        ]
    );
    assert_eq!(for_dave, vec![(cd.clone(), 1, "to dave".to_owned())]);
    relay.quiet().await;
}

async fn opens_follow_the_access_rules_and_leave_others_alone(app: TestApp) {
    let mut alice = app.user("alice").await;
    let ab = support::create(&mut alice, &["bob"], None).await.id;
    let mut relay = Relay::connect(&app).await;
    relay.open(1, &app.user_token("bob"), Some(&ab), None).await;
    assert!(matches!(relay.next().await, (1, RelayKind::Opened(_))));
    synced(&relay.next().await.1);

    // A bad token, a foreign thread, a missing thread, a malformed id and
    // an id in use: each open ends alone, with Subscribe's status.
    let cases: [(u64, String, Option<String>, Code); 4] = [
        (
            2,
            "not-a-token".to_owned(),
            Some(ab.clone()),
            Code::Unauthenticated,
        ),
        (
            3,
            app.user_token("mallory"),
            Some(ab.clone()),
            Code::NotFound,
        ),
        (
            4,
            app.user_token("bob"),
            Some(uuid::Uuid::now_v7().to_string()),
            Code::NotFound,
        ),
        (
            1,
            app.user_token("bob"),
            Some(ab.clone()),
            Code::AlreadyExists,
        ),
    ];
    for (id, token, thread, code) in cases {
        relay.open(id, &token, thread.as_deref(), None).await;
        match relay.next().await {
            (got, RelayKind::Ended(ended)) => {
                assert_eq!(got, id);
                assert_eq!(Code::from_i32(ended.code), code, "{}", ended.message);
            }
            other => panic!("expected ended for {id}, got {other:?}"),
        }
    }
    // A foreign thread's refusal says the same as a missing one's.
    relay
        .open(5, &app.user_token("mallory"), Some(&ab), None)
        .await;
    let (_, foreign) = relay.next().await;
    relay
        .open(
            6,
            &app.user_token("mallory"),
            Some(&uuid::Uuid::now_v7().to_string()),
            None,
        )
        .await;
    let (_, missing) = relay.next().await;
    match (foreign, missing) {
        (RelayKind::Ended(foreign), RelayKind::Ended(missing)) => {
            assert_eq!(foreign, missing)
        }
        other => panic!("expected two ends, got {other:?}"),
    }

    // The first subscription is untouched.
    support::send(&mut alice, &ab, "still here").await;
    let (id, kind) = relay.next().await;
    assert_eq!(id, 1);
    assert_eq!(message_seq(&kind), Some((ab, 1, "still here".to_owned())));
}

async fn a_closed_subscription_gets_nothing_more(app: TestApp) {
    let mut alice = app.user("alice").await;
    let ab = support::create(&mut alice, &["bob"], None).await.id;
    let mut relay = Relay::connect(&app).await;
    relay.open(1, &app.user_token("bob"), Some(&ab), None).await;
    relay
        .open(2, &app.user_token("alice"), Some(&ab), None)
        .await;
    let mut opened = Vec::new();
    for _ in 0..4 {
        let (id, kind) = relay.next().await;
        if matches!(kind, RelayKind::Opened(_)) {
            opened.push(id);
        }
    }
    opened.sort();
    assert_eq!(opened, vec![1, 2]);
    relay.close(1).await;
    // Closed before this send: only subscription 2 hears of it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    support::send(&mut alice, &ab, "after the close").await;
    let (id, kind) = relay.next().await;
    assert_eq!(id, 2);
    assert_eq!(
        message_seq(&kind),
        Some((ab.clone(), 1, "after the close".to_owned()))
    );
    relay.quiet().await;
    // The id may be opened again.
    relay
        .open(1, &app.user_token("bob"), Some(&ab), Some(0))
        .await;
    assert!(matches!(relay.next().await, (1, RelayKind::Opened(_))));
    assert_eq!(synced(&relay.next().await.1), vec![(ab.clone(), 0)]);
    let (id, kind) = relay.next().await;
    assert_eq!(id, 1);
    assert_eq!(
        message_seq(&kind),
        Some((ab, 1, "after the close".to_owned()))
    );
}

async fn a_reopened_thread_subscription_resumes_from_its_baseline(app: TestApp) {
    let mut alice = app.user("alice").await;
    let ab = support::create(&mut alice, &["bob"], None).await.id;
    support::send(&mut alice, &ab, "one").await;
    support::send(&mut alice, &ab, "two").await;
    let mut relay = Relay::connect(&app).await;
    relay.open(7, &app.user_token("bob"), Some(&ab), None).await;
    assert!(matches!(relay.next().await, (7, RelayKind::Opened(_))));
    // Live from the thread's current end: the baseline says where that is.
    assert_eq!(synced(&relay.next().await.1), vec![(ab.clone(), 2)]);
    relay.close(7).await;
    // Sent while the subscription was away.
    support::send(&mut alice, &ab, "three").await;
    relay
        .open(7, &app.user_token("bob"), Some(&ab), Some(2))
        .await;
    assert!(matches!(relay.next().await, (7, RelayKind::Opened(_))));
    assert_eq!(synced(&relay.next().await.1), vec![(ab.clone(), 2)]);
    let (_, kind) = relay.next().await;
    assert_eq!(message_seq(&kind), Some((ab, 3, "three".to_owned())));
    relay.quiet().await;
}
