//! Group commit (src/writer): concurrent sends share one transaction, yet
//! each behaves exactly as if it had been sent alone, on both backends.
//!
//! To put known messages into one batch, a test holds a lock the writer
//! needs (`block_writes`): the first send's batch waits on it, the next
//! sends queue behind it one by one (the queue depth on `/metrics` tells
//! when each has arrived), and releasing the lock commits them as the next
//! batch, in that order.

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chat_core::{
    bus::EventBus,
    domain::MessageKind,
    live::LiveEvents,
    store::{Appended, DatabaseLocation, NewMessage, NewThread, Store, StoreError},
    writer::{MessageWriter, WriterSettings},
};
use chat_proto::v1::{self as pb, MessageType, event::Kind};
use sqlx::{Connection, Executor};
use support::{Backend, Client, TestApp};
use tokio::task::JoinHandle;
use tonic::{Code, Status, Streaming};
use uuid::Uuid;

on_both_backends!(
    a_batch_refuses_only_the_outsider_and_keeps_seqs_contiguous,
    one_key_sent_many_times_in_one_batch_is_stored_once,
    concurrent_senders_across_threads_see_one_order_everywhere,
    integration_events_keep_their_messages_and_id_order_under_concurrency,
    queued_sends_are_committed_when_the_server_stops,
);

const WAIT: Duration = Duration::from_secs(20);
const BATCHES: &str = "chat_core_writer_batch_size_count";
const BATCHED: &str = "chat_core_writer_batch_size_sum";
const QUEUED: &str = "chat_core_writer_queue_depth";
const FALLBACKS: &str = "chat_core_writer_fallbacks_total";

async fn send_text(
    mut client: Client,
    thread_id: String,
    content: String,
    client_msg_id: Option<&'static str>,
) -> Result<pb::SendMessageResponse, Status> {
    client
        .send_message(pb::SendMessageRequest {
            thread_id,
            content,
            client_msg_id: client_msg_id.map(str::to_owned),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Starts `call` and returns once it waits in the writer's queue as its
/// `depth`-th entry, so that the next one queues after it.
async fn queue<T: Send + 'static>(
    app: &TestApp,
    depth: u64,
    call: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let handle = tokio::spawn(call);
    app.wait_for_metric(QUEUED, depth).await;
    handle
}

/// Starts `call` and returns once its batch has been taken (and, with
/// writes blocked, waits on the lock): the batch with number `batches`.
async fn start_batch<T: Send + 'static>(
    app: &TestApp,
    batches: u64,
    call: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let handle = tokio::spawn(call);
    app.wait_for_metric(BATCHES, batches).await;
    handle
}

async fn subscribe(client: &mut Client, thread_id: &str) -> Streaming<pb::Event> {
    client
        .subscribe(pb::SubscribeRequest {
            thread_id: Some(thread_id.to_owned()),
            since_seq: None,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// The next `count` events, which must all be new messages.
async fn received(stream: &mut Streaming<pb::Event>, count: usize) -> Vec<pb::Message> {
    let mut messages = Vec::with_capacity(count);
    while messages.len() < count {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .expect("a healthy stream")
            .expect("the stream is open");
        match event.kind {
            Some(Kind::MessageCreated(created)) => {
                let message = created.message.expect("message");
                assert_eq!(event.seq, message.seq);
                messages.push(message);
            }
            other => panic!("expected a new message, got {other:?}"),
        }
    }
    messages
}

/// Every stored message of a thread, ascending by seq.
async fn stored(client: &mut Client, thread_id: &str) -> Vec<pb::Message> {
    let mut all: Vec<pb::Message> = Vec::new();
    loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                thread_id: thread_id.to_owned(),
                after_seq: Some(all.last().map_or(0, |m| m.seq)),
                limit: 200,
                ..Default::default()
            })
            .await
            .expect("list messages")
            .into_inner();
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

async fn last_seq(client: &mut Client, thread_id: &str) -> i64 {
    client
        .get_thread(pb::GetThreadRequest {
            thread_id: thread_id.to_owned(),
        })
        .await
        .expect("get thread")
        .into_inner()
        .thread
        .expect("thread")
        .last_seq
}

async fn unread(client: &Client) -> pb::GetUnreadCountsResponse {
    client
        .clone()
        .get_unread_counts(pb::GetUnreadCountsRequest {})
        .await
        .expect("unread counts")
        .into_inner()
}

fn acked(
    result: Result<Result<pb::SendMessageResponse, Status>, tokio::task::JoinError>,
) -> (pb::Message, bool) {
    let response = result.expect("send task").expect("sent");
    (response.message.expect("message"), response.created)
}

async fn a_batch_refuses_only_the_outsider_and_keeps_seqs_contiguous(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let t = support::create(&mut alice, &["bob"], None).await.id;
    let mut live = subscribe(&mut bob, &t).await;

    let block = app.block_writes(&t).await;
    let first = start_batch(
        &app,
        1,
        send_text(alice.clone(), t.clone(), "first".into(), None),
    )
    .await;
    let mut sends = Vec::new();
    for (depth, (client, content, key)) in [
        (&alice, "a1", None),
        (&carol, "from outside", None),
        (&bob, "b1", None),
        (&alice, "keyed", Some("k-1")),
        (&bob, "b2", None),
        (&alice, "keyed, retried", Some("k-1")),
    ]
    .into_iter()
    .enumerate()
    {
        let call = send_text(client.clone(), t.clone(), content.into(), key);
        sends.push(queue(&app, depth as u64 + 1, call).await);
    }
    block.release().await;

    let (first, created) = acked(first.await);
    assert!(created);
    assert_eq!((first.seq, first.content.as_str()), (1, "first"));
    let mut outcomes = Vec::new();
    for send in sends {
        outcomes.push(send.await.expect("send task"));
    }
    let status = outcomes.remove(1).expect_err("carol is not in the thread");
    assert_eq!(status.code(), Code::NotFound);
    let acks: Vec<(pb::Message, bool)> = outcomes
        .into_iter()
        .map(|outcome| {
            let response = outcome.expect("sent");
            (response.message.expect("message"), response.created)
        })
        .collect();
    let summary: Vec<(i64, &str, bool)> = acks
        .iter()
        .map(|(m, created)| (m.seq, m.content.as_str(), *created))
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, "a1", true),
            (3, "b1", true),
            (4, "keyed", true),
            (5, "b2", true),
            (4, "keyed", false),
        ]
    );
    assert_eq!(acks[4].0, acks[2].0, "the retry gets the original");

    let mut expected = vec![first];
    expected.extend(acks[..4].iter().map(|(m, _)| m.clone()));
    assert_eq!(stored(&mut alice, &t).await, expected);
    assert_eq!(received(&mut live, 5).await, expected);
    assert_eq!(last_seq(&mut alice, &t).await, 5);
    // Read cursors: each sender's own last message counts as read.
    let alice_unread = unread(&alice).await;
    assert_eq!(alice_unread.total, 1, "b2 came after alice's last message");
    assert_eq!(alice_unread.threads.get(&t), Some(&1));
    assert_eq!(unread(&bob).await.total, 0);

    // Two batches: the lone first message, then the six queued behind it.
    assert_eq!(app.metric(BATCHES).await, 2);
    assert_eq!(app.metric(BATCHED).await, 7);
    assert_eq!(
        app.metric("chat_core_writer_batch_size_bucket{le=\"1\"}")
            .await,
        1
    );
    assert_eq!(
        app.metric("chat_core_writer_batch_size_bucket{le=\"4\"}")
            .await,
        1
    );
    assert_eq!(
        app.metric("chat_core_writer_batch_size_bucket{le=\"8\"}")
            .await,
        2
    );
    assert_eq!(app.metric(FALLBACKS).await, 0);
}

async fn one_key_sent_many_times_in_one_batch_is_stored_once(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = support::create(&mut alice, &["bob"], Some("job-1"))
        .await
        .id;
    let payments = app.integrations(app.service_token("payment-service")).await;
    let system_event = |key: &'static str, content: &'static str| {
        let mut payments = payments.clone();
        let t = t.clone();
        async move {
            payments
                .post_system_event(pb::PostSystemEventRequest {
                    thread_id: t,
                    message_type: MessageType::Payment.into(),
                    content: content.into(),
                    metadata_json: None,
                    idempotency_key: key.into(),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };

    let block = app.block_writes(&t).await;
    let first = start_batch(
        &app,
        1,
        send_text(alice.clone(), t.clone(), "first".into(), None),
    )
    .await;
    let mut retries = Vec::new();
    for i in 0..6 {
        let call = send_text(alice.clone(), t.clone(), format!("try {i}"), Some("same"));
        retries.push(queue(&app, i + 1, call).await);
    }
    let captured = queue(&app, 7, system_event("evt-1", "Payment captured")).await;
    let captured_again = queue(&app, 8, system_event("evt-1", "Payment captured!")).await;
    let refunded = queue(&app, 9, system_event("evt-2", "Payment refunded")).await;
    block.release().await;

    assert_eq!(acked(first.await).0.seq, 1);
    let mut created = 0;
    let mut originals = HashSet::new();
    for retry in retries {
        let (message, was_created) = acked(retry.await);
        created += usize::from(was_created);
        assert_eq!((message.seq, message.content.as_str()), (2, "try 0"));
        originals.insert(message.id);
    }
    assert_eq!(created, 1);
    assert_eq!(originals.len(), 1);

    let captured = captured.await.unwrap().expect("posted");
    let captured_again = captured_again.await.unwrap().expect("posted");
    let refunded = refunded.await.unwrap().expect("posted");
    assert!(captured.created);
    assert!(!captured_again.created);
    assert!(refunded.created);
    let captured = captured.message.expect("message");
    assert_eq!(captured_again.message.as_ref(), Some(&captured));
    assert_eq!(
        (captured.seq, captured.content.as_str()),
        (3, "Payment captured")
    );
    let refunded = refunded.message.expect("message");
    assert_eq!(refunded.seq, 4);

    let seqs: Vec<i64> = stored(&mut alice, &t).await.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let outbox: Vec<(i64, String)> = app
        .outbox()
        .await
        .into_iter()
        .map(|(id, _, message, _, _)| (id, message.expect("a message").to_string()))
        .collect();
    assert_eq!(outbox, vec![(1, captured.id), (2, refunded.id)]);
    assert_eq!(app.metric(BATCHES).await, 2);
    assert_eq!(app.metric(BATCHED).await, 10);
    assert_eq!(app.metric(FALLBACKS).await, 0);
}

async fn concurrent_senders_across_threads_see_one_order_everywhere(app: TestApp) {
    const THREADS: usize = 6;
    const PER_THREAD: usize = 40;
    let mut alice = app.user("alice").await;
    let mut threads = Vec::new();
    for i in 0..THREADS {
        let partner = format!("partner-{i}");
        let t = support::create(&mut alice, &[partner.as_str()], None)
            .await
            .id;
        let mut client = app.user(&partner).await;
        let live = subscribe(&mut client, &t).await;
        threads.push((t, client, live));
    }
    let mut sends = Vec::new();
    for i in 0..PER_THREAD {
        for (n, (t, partner, _)) in threads.iter().enumerate() {
            let client = if i % 2 == 0 {
                alice.clone()
            } else {
                partner.clone()
            };
            let call = send_text(client, t.clone(), format!("{n}/{i}"), None);
            sends.push((n, tokio::spawn(call)));
        }
    }
    let mut acks: Vec<Vec<pb::Message>> = vec![Vec::new(); THREADS];
    for (n, send) in sends {
        let (message, created) = acked(send.await);
        assert!(created);
        acks[n].push(message);
    }
    for (n, (t, partner, live)) in threads.iter_mut().enumerate() {
        let mut acks = std::mem::take(&mut acks[n]);
        acks.sort_by_key(|m| m.seq);
        let seqs: Vec<i64> = acks.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=PER_THREAD as i64).collect::<Vec<_>>(),
            "thread {n}"
        );
        assert_eq!(
            stored(partner, t).await,
            acks,
            "thread {n}: acks are what is stored"
        );
        assert_eq!(
            received(live, PER_THREAD).await,
            acks,
            "thread {n}: and what is delivered"
        );
        assert_eq!(last_seq(partner, t).await, PER_THREAD as i64);
    }
    assert_eq!(app.metric(BATCHED).await, (THREADS * PER_THREAD) as u64);
    assert_eq!(app.metric(FALLBACKS).await, 0);
}

async fn integration_events_keep_their_messages_and_id_order_under_concurrency(app: TestApp) {
    const THREADS: usize = 3;
    const PER_THREAD: usize = 20;
    let mut alice = app.user("alice").await;
    let mut threads = Vec::new();
    for partner in ["bob", "carol", "dave"] {
        threads.push(
            support::create(&mut alice, &[partner], Some("job-1"))
                .await
                .id,
        );
    }
    let as_alice = app.integrations(app.user_token("alice")).await;
    let as_service = app.integrations(app.service_token("jobs-service")).await;
    let mut watcher = app
        .integrations(app.service_token("payment-service"))
        .await
        .watch_integration_events(pb::WatchIntegrationEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    let mut calls: Vec<(String, JoinHandle<pb::Message>)> = Vec::new();
    for i in 0..PER_THREAD {
        for t in &threads {
            let (mut as_alice, mut as_service, t2) =
                (as_alice.clone(), as_service.clone(), t.clone());
            let call = tokio::spawn(async move {
                let message = match i % 3 {
                    0 => as_alice
                        .request_dispute(pb::RequestDisputeRequest {
                            thread_id: t2,
                            reason: format!("reason {i}"),
                            details: None,
                        })
                        .await
                        .map(|r| r.into_inner().message),
                    1 => as_alice
                        .initiate_payment(pb::InitiatePaymentRequest {
                            thread_id: t2,
                            amount: format!("{}.00", i + 1),
                            currency: "EUR".into(),
                            job_id: None,
                        })
                        .await
                        .map(|r| r.into_inner().message),
                    _ => as_service
                        .post_job_update(pb::PostJobUpdateRequest {
                            thread_id: t2,
                            job_id: "job-1".into(),
                            status: format!("step {i}"),
                            note: None,
                        })
                        .await
                        .map(|r| r.into_inner().message),
                };
                message.expect("posted").expect("message")
            });
            calls.push((t.clone(), call));
        }
    }
    let mut messages: HashMap<String, pb::Message> = HashMap::new();
    for (t, call) in calls {
        let message = call.await.expect("call task");
        assert_eq!(message.thread_id, t);
        messages.insert(message.id.clone(), message);
    }
    let total = THREADS * PER_THREAD;
    assert_eq!(messages.len(), total);

    // Every message has exactly one event, ids 1..=total without gap.
    let outbox = app.outbox().await;
    let ids: Vec<i64> = outbox.iter().map(|e| e.0).collect();
    assert_eq!(ids, (1..=total as i64).collect::<Vec<_>>());
    let mut event_of: HashMap<String, i64> = HashMap::new();
    for (id, event_type, message_id, _, _) in &outbox {
        let message = &messages[&message_id.expect("a message").to_string()];
        let expected_type = match MessageType::try_from(message.message_type) {
            Ok(MessageType::Dispute) => "dispute.requested",
            Ok(MessageType::Payment) => "payment.initiated",
            Ok(MessageType::JobUpdate) => "job.updated",
            other => panic!("unexpected message type {other:?}"),
        };
        assert_eq!(event_type, expected_type);
        assert!(
            event_of
                .insert(message_id.expect("a message").to_string(), *id)
                .is_none()
        );
    }
    // Within a thread, event ids follow seqs: the order they committed in.
    for t in &threads {
        let mut in_thread: Vec<&pb::Message> =
            messages.values().filter(|m| &m.thread_id == t).collect();
        in_thread.sort_by_key(|m| m.seq);
        let seqs: Vec<i64> = in_thread.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=PER_THREAD as i64).collect::<Vec<_>>());
        let ids: Vec<i64> = in_thread.iter().map(|m| event_of[&m.id]).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{t}: {ids:?}");
        assert_eq!(stored(&mut alice, t).await.len(), PER_THREAD);
    }
    // A watcher from the start sees them all, in id order.
    let mut watched = Vec::new();
    while watched.len() < total {
        let event = tokio::time::timeout(WAIT, watcher.message())
            .await
            .expect("an event in time")
            .expect("a healthy stream")
            .expect("the stream is open");
        assert_eq!(
            event_of[event.message_id.as_deref().expect("a message")],
            event.id
        );
        watched.push(event.id);
    }
    assert_eq!(watched, ids);
    assert_eq!(app.metric(FALLBACKS).await, 0);
}

async fn queued_sends_are_committed_when_the_server_stops(mut app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = support::create(&mut alice, &["bob"], None).await.id;
    let block = app.block_writes(&t).await;
    let mut sends = vec![
        start_batch(
            &app,
            1,
            send_text(alice.clone(), t.clone(), "0".into(), None),
        )
        .await,
    ];
    for i in 1..=5 {
        let call = send_text(alice.clone(), t.clone(), i.to_string(), None);
        sends.push(queue(&app, i, call).await);
    }
    app.stop();
    block.release().await;
    for (i, send) in sends.into_iter().enumerate() {
        let (message, _) = acked(send.await);
        assert_eq!(
            (message.seq, message.content),
            (i as i64 + 1, i.to_string())
        );
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM messages").await, 6);
}

mod two_replicas {
    use super::*;

    /// Batches of two replicas lock shared threads in the same order, so
    /// they queue behind each other: no deadlock (which would show as a
    /// failed batch retried one by one), no gap, no duplicate.
    #[tokio::test]
    async fn replicas_sending_to_shared_threads_neither_deadlock_nor_skip_seqs() {
        const THREADS: usize = 4;
        const TASKS: usize = 32;
        const ROUNDS: usize = 4;
        let a = support::spawn_app(Backend::Postgres).await;
        let b = a.replica().await;
        let mut alice = a.user("alice").await;
        let mut threads = Vec::new();
        for i in 0..THREADS {
            let partner = format!("partner-{i}");
            threads.push(
                support::create(&mut alice, &[partner.as_str()], None)
                    .await
                    .id,
            );
        }
        let mut sends = Vec::new();
        for (replica, reversed) in [(&a, false), (&b, true)] {
            let client = replica.user("alice").await;
            let mut order = threads.clone();
            if reversed {
                order.reverse();
            }
            for task in 0..TASKS {
                // Each task starts at a different thread, so that concurrent
                // batches hold different threads first.
                let mut order = order.clone();
                order.rotate_left(task % THREADS);
                let client = client.clone();
                sends.push(tokio::spawn(async move {
                    let mut acks = Vec::new();
                    for round in 0..ROUNDS {
                        for t in &order {
                            let content = format!("{task}/{round} {reversed}");
                            acks.push(send_text(client.clone(), t.clone(), content, None).await);
                        }
                    }
                    acks
                }));
            }
        }
        let mut acks: HashMap<String, Vec<pb::Message>> = HashMap::new();
        for send in sends {
            for ack in send.await.expect("send task") {
                let message = ack.expect("sent").message.expect("message");
                acks.entry(message.thread_id.clone())
                    .or_default()
                    .push(message);
            }
        }
        for t in &threads {
            let mut acked = acks.remove(t).expect("acks");
            acked.sort_by_key(|m| m.seq);
            let seqs: Vec<i64> = acked.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=(2 * TASKS * ROUNDS) as i64).collect::<Vec<_>>());
            assert_eq!(stored(&mut alice, t).await, acked);
        }
        assert_eq!(a.metric(FALLBACKS).await, 0);
        assert_eq!(b.metric(FALLBACKS).await, 0);
        assert_eq!(
            a.metric(BATCHED).await + b.metric(BATCHED).await,
            (2 * TASKS * ROUNDS * THREADS) as u64
        );
    }
}

/// Deadlock freedom rests on every batch locking its threads in id order;
/// a race between replicas rarely shows it, so this checks the order
/// itself. A batch whose first message is in the higher thread waits for
/// the lower thread's lock without holding the higher one.
#[tokio::test]
async fn postgres_batches_lock_their_threads_in_id_order() {
    let db = support::TestDatabase::create(Backend::Postgres).await;
    let store = connect(&db.url).await;
    let mut ids = [Uuid::now_v7(), Uuid::now_v7()];
    ids.sort_unstable();
    let [low, high] = ids;
    for id in ids {
        create_thread(&store, id).await;
    }

    let block = support::block_writes(Backend::Postgres, &db.url, &low.to_string()).await;
    let batch = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append_batch(&[text(high, "alice", "high"), text(low, "alice", "low")])
                .await
        })
    };
    let mut probe = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut probe)
        .await
        .expect("pg_stat_activity");
        if waiting == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    probe.execute("BEGIN").await.expect("begin");
    sqlx::query("SELECT 1 FROM threads WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(high)
        .fetch_one(&mut probe)
        .await
        .expect("the higher thread is not locked while the lower one is awaited");
    probe.execute("ROLLBACK").await.expect("rollback");
    block.release().await;

    let outcomes = batch.await.expect("batch task").expect("batch");
    let seqs: Vec<(String, i64)> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Some(Appended::Created(message, None)) => (message.content, message.seq),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![("high".into(), 1), ("low".into(), 1)]);
    store.close().await;
}

async fn connect(url: &str) -> Store {
    let location = DatabaseLocation::parse(url).expect("url");
    let store = Store::connect(&location, 5).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn create_thread(store: &Store, id: Uuid) {
    store
        .create_thread(&NewThread {
            id,
            participants: vec!["alice".into(), "bob".into()],
            // One thread per (participants, job): a job each keeps them apart.
            job_id: Some(format!("job-{id}")),
            title: None,
            created_by: "alice".into(),
            created_at: chat_core::domain::now_micros(),
        })
        .await
        .expect("thread");
}

/// Four shards commit concurrently: integration event ids still come out
/// contiguous, each with its message, in seq order within every thread
/// (the counter row orders the shards' transactions).
mod sharded {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        shards_keep_event_ids_contiguous_and_in_seq_order(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        shards_keep_event_ids_contiguous_and_in_seq_order(Backend::Postgres).await;
    }
}

async fn shards_keep_event_ids_contiguous_and_in_seq_order(backend: Backend) {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    let db = support::TestDatabase::create(backend).await;
    let store = connect(&db.url).await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let live = LiveEvents::new(store.clone(), EventBus::in_process(), stopped);
    let writer = MessageWriter::start(
        store.clone(),
        live,
        WriterSettings {
            shards: 4,
            queue_capacity: 16,
            max_batch: 8,
        },
    );
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let id = Uuid::now_v7();
        create_thread(&store, id).await;
        threads.push(id);
    }
    let mut appends = Vec::new();
    for i in 0..PER_THREAD {
        for &thread_id in &threads {
            let mut message = text(thread_id, "alice", &format!("{i}"));
            message.kind = MessageKind::Payment;
            message.event = Some(chat_core::store::NewIntegrationEvent {
                event_type: "payment.initiated".into(),
                actor_id: Some("alice".into()),
                payload: "{}".into(),
            });
            let writer = writer.clone();
            appends.push(tokio::spawn(async move { writer.append(message).await }));
        }
    }
    let mut by_thread: HashMap<Uuid, Vec<(i64, i64)>> = HashMap::new();
    let mut ids = Vec::new();
    for append in appends {
        match append.await.expect("append task") {
            Ok(Some(Appended::Created(message, Some(event)))) => {
                let event_id = event.id;
                by_thread
                    .entry(message.thread_id)
                    .or_default()
                    .push((message.seq, event_id));
                ids.push(event_id);
            }
            other => panic!("{other:?}"),
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=(THREADS * PER_THREAD) as i64).collect::<Vec<_>>());
    for (thread_id, mut pairs) in by_thread {
        pairs.sort_unstable();
        let seqs: Vec<i64> = pairs.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=PER_THREAD as i64).collect::<Vec<_>>());
        assert!(
            pairs.windows(2).all(|w| w[0].1 < w[1].1),
            "{thread_id}: event ids out of seq order: {pairs:?}"
        );
    }
    let stored = store
        .integration_events(0, &[], 1000)
        .await
        .expect("events");
    assert_eq!(stored.len(), THREADS * PER_THREAD);
    assert!(writer_metric(&writer, BATCHES) >= (THREADS * PER_THREAD / 8) as u64);
    assert_eq!(writer_metric(&writer, FALLBACKS), 0);
    writer.close(Duration::from_secs(60)).await;
    store.close().await;
}

/// `MessageWriter::close`, driven through the library: what is queued when
/// the writer stops is committed, even for callers that stopped waiting,
/// and later appends are refused.
mod closing {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        close_commits_what_is_queued(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        close_commits_what_is_queued(Backend::Postgres).await;
    }
}

fn text(thread_id: Uuid, sender: &str, content: &str) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        thread_id,
        sender_id: Some(sender.to_owned()),
        kind: MessageKind::Text,
        content: content.to_owned(),
        metadata: "{}".to_owned(),
        client_msg_id: None,
        posted_by: None,
        idempotency_key: None,
        created_at: chat_core::domain::now_micros(),
        event: None,
        contact: None,
    }
}

/// One of the writer's own figures, by the name of its `/metrics` sample.
fn writer_metric(writer: &MessageWriter, sample: &str) -> u64 {
    let metrics = writer.metrics();
    match sample {
        BATCHES => metrics.batches().0,
        BATCHED => metrics.batches().1,
        FALLBACKS => metrics.fallbacks(),
        other => panic!("{other}: not a writer figure"),
    }
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn close_commits_what_is_queued(backend: Backend) {
    let db = support::TestDatabase::create(backend).await;
    let store = connect(&db.url).await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let live = LiveEvents::new(store.clone(), EventBus::in_process(), stopped);
    let writer = MessageWriter::start(
        store.clone(),
        live,
        WriterSettings {
            shards: 1,
            queue_capacity: 64,
            max_batch: 512,
        },
    );
    let thread_id = Uuid::now_v7();
    create_thread(&store, thread_id).await;

    let block = support::block_writes(backend, &db.url, &thread_id.to_string()).await;
    let append = |content: &str| {
        let (writer, message) = (writer.clone(), text(thread_id, "alice", content));
        tokio::spawn(async move { writer.append(message).await })
    };
    let mut appends = vec![append("0")];
    wait_until("the first batch is taken", || {
        writer_metric(&writer, BATCHES) == 1
    })
    .await;
    for i in 1..=5 {
        appends.push(append(&i.to_string()));
        wait_until("queued", || writer.queue_depth() == i).await;
    }
    // Two callers give up; their messages are queued all the same.
    let gave_up: Vec<JoinHandle<_>> = appends.drain(4..).collect();
    for handle in &gave_up {
        handle.abort();
    }
    let closing = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.close(Duration::from_secs(60)).await })
    };
    block.release().await;
    closing.await.expect("close");

    for (i, append) in appends.into_iter().enumerate() {
        match append.await.expect("append task") {
            Ok(Some(Appended::Created(message, None))) => {
                assert_eq!(
                    (message.seq, message.content),
                    (i as i64 + 1, i.to_string())
                );
            }
            other => panic!("append {i}: {other:?}"),
        }
    }
    let (all, _) = store
        .list_messages(thread_id, chat_core::store::MessagePage::Latest, 100)
        .await
        .expect("list");
    let contents: Vec<(i64, String)> = all.into_iter().map(|m| (m.seq, m.content)).collect();
    let expected: Vec<(i64, String)> = (0..6).map(|i| (i + 1, i.to_string())).collect();
    assert_eq!(contents, expected);

    match writer.append(text(thread_id, "alice", "late")).await {
        Err(StoreError::WriterStopped) => {}
        other => panic!("expected WriterStopped, got {other:?}"),
    }
    store.close().await;
}
