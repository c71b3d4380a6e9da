//! Presence and offline reminders, on both storage backends: gateways'
//! reports (`RelayService.ReportPresence`) become `presence` events for
//! co-participants after the grace period, `GetPresence` shows only
//! co-participants, a gateway that stops renewing its lease takes its users
//! offline, and unread messages of an offline user become exactly one
//! `chat.unread_reminder` integration event per (user, thread) until the
//! user reads again, across restarts.

mod support;

use std::time::{Duration, Instant};

use chat_proto::v1::{self as pb, event::Kind, relay_service_client::RelayServiceClient};
use serde_json::{Value, json};
use support::{Backend, Client, TestApp, spawn_app_with};
use tonic::{Code, Streaming, transport::Channel};

/// Presence and reminders, fast: a 1 s grace, reminders after 1 s, scans
/// every 100 ms.
const FAST: &[(&str, &str)] = &[
    ("PRESENCE_GRACE_SECONDS", "1"),
    ("REMINDER_AFTER_SECONDS", "1"),
    ("REMINDER_SCAN_INTERVAL_MS", "100"),
    // A stop stops at once: nothing is written after it.
    ("CHAT_CORE_DRAIN_MS", "0"),
];

macro_rules! on_both_backends_fast {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::spawn_app_with(super::Backend::Sqlite, super::FAST).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::spawn_app_with(super::Backend::Postgres, super::FAST).await).await;
                }
            )*
        }
    };
}

on_both_backends_fast!(
    co_participants_hear_presence_after_the_grace_period,
    a_reconnect_within_the_grace_period_is_not_announced,
    a_gateway_that_stops_renewing_takes_its_users_offline,
    a_released_gateway_takes_its_users_offline_after_the_grace_period,
    presence_queries_show_co_participants_only,
    bad_reports_and_queries_are_refused,
    an_offline_user_is_reminded_once_per_read,
    no_reminder_while_online,
    reminders_survive_a_restart_and_are_not_repeated,
);

/// A pretend gateway: its own random id, reporting over `RelayService`.
struct Gateway {
    id: String,
    client: RelayServiceClient<Channel>,
}

impl Gateway {
    async fn new(app: &TestApp) -> Gateway {
        Gateway {
            id: uuid::Uuid::new_v4().simple().to_string(),
            client: RelayServiceClient::new(app.channel().await),
        }
    }

    async fn report(&mut self, online: &[String], offline: &[&str]) -> pb::ReportPresenceResponse {
        self.client
            .report_presence(pb::ReportPresenceRequest {
                gateway_id: self.id.clone(),
                online_tokens: online.to_vec(),
                offline_user_ids: offline.iter().map(|u| u.to_string()).collect(),
                release: false,
            })
            .await
            .expect("report")
            .into_inner()
    }

    /// The last report of a gateway that stops cleanly.
    async fn release(&mut self) -> pb::ReportPresenceResponse {
        self.client
            .report_presence(pb::ReportPresenceRequest {
                gateway_id: self.id.clone(),
                release: true,
                ..Default::default()
            })
            .await
            .expect("release")
            .into_inner()
    }
}

/// Every-thread events of `user`.
async fn listen(app: &TestApp, user: &str) -> Streaming<pb::Event> {
    let mut client = app.user(user).await;
    let mut events = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    // The baseline.
    let first = events.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(Kind::Synced(_))));
    events
}

/// The next presence event within `within`, skipping others; `None` when
/// none came.
async fn next_presence(
    events: &mut Streaming<pb::Event>,
    within: Duration,
) -> Option<pb::PresenceChanged> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.message()).await {
            Err(_) => return None,
            Ok(event) => {
                if let Some(Kind::Presence(presence)) = event.unwrap().unwrap().kind {
                    return Some(presence);
                }
            }
        }
    }
}

async fn pair(app: &TestApp) -> (Client, String) {
    let mut alice = app.user("alice").await;
    let thread = support::create(&mut alice, &["bob"], None).await.id;
    (alice, thread)
}

async fn co_participants_hear_presence_after_the_grace_period(app: TestApp) {
    let _ = pair(&app).await;
    let mut bob = listen(&app, "bob").await;
    let mut carol = listen(&app, "carol").await;
    let mut gateway = Gateway::new(&app).await;

    let answer = gateway.report(&[app.user_token("alice")], &[]).await;
    assert!(!answer.lease_was_live, "the first report finds no lease");
    assert!(answer.renew_after_ms > 0 && answer.renew_after_ms <= 1000);
    let online = next_presence(&mut bob, Duration::from_secs(2))
        .await
        .expect("bob hears alice come online");
    assert_eq!(online.user_id, "alice");
    assert!(online.online);
    assert_eq!(online.last_seen_at, None, "alice was never seen before");

    let closed_at = Instant::now();
    assert!(gateway.report(&[], &["alice"]).await.lease_was_live);
    let offline = next_presence(&mut bob, Duration::from_secs(3))
        .await
        .expect("bob hears alice go offline");
    let waited = closed_at.elapsed();
    assert_eq!(offline.user_id, "alice");
    assert!(!offline.online);
    let seen = offline.last_seen_at.expect("last_seen_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - 3..=now).contains(&seen.seconds),
        "last seen just now"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "announced only after the grace period, not after {waited:?}"
    );
    // Carol shares no thread with alice: nothing at all.
    assert_eq!(
        next_presence(&mut carol, Duration::from_millis(300)).await,
        None
    );
}

async fn a_reconnect_within_the_grace_period_is_not_announced(app: TestApp) {
    let _ = pair(&app).await;
    let mut bob = listen(&app, "bob").await;
    let mut one = Gateway::new(&app).await;
    let mut two = Gateway::new(&app).await;
    one.report(&[app.user_token("alice")], &[]).await;
    assert!(
        next_presence(&mut bob, Duration::from_secs(2))
            .await
            .unwrap()
            .online
    );

    // Alice's socket drops and she comes back through another gateway
    // within the grace period: no change for anyone.
    one.report(&[], &["alice"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    two.report(&[app.user_token("alice")], &[]).await;
    // Keep both leases alive past several grace periods.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        one.report(&[], &[]).await;
        two.report(&[], &[]).await;
    }
    assert_eq!(
        next_presence(&mut bob, Duration::from_millis(200)).await,
        None
    );

    // A second socket's gateway closing leaves her online while the other
    // still holds one.
    let mut bob_client = app.user("bob").await;
    let answer = bob_client
        .get_presence(pb::GetPresenceRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.users[0].online);
    assert_eq!(answer.users[0].last_seen_at, None);
}

async fn a_gateway_that_stops_renewing_takes_its_users_offline(app: TestApp) {
    let _ = pair(&app).await;
    let mut bob = listen(&app, "bob").await;
    let mut gateway = Gateway::new(&app).await;
    gateway.report(&[app.user_token("alice")], &[]).await;
    assert!(
        next_presence(&mut bob, Duration::from_secs(2))
            .await
            .unwrap()
            .online
    );

    // The gateway dies: no close is ever reported, the lease just stops.
    let died = Instant::now();
    let offline = next_presence(&mut bob, Duration::from_secs(3))
        .await
        .expect("alice goes offline with her gateway");
    assert!(!offline.online);
    assert!(offline.last_seen_at.is_some());
    assert!(
        died.elapsed() <= Duration::from_secs(2),
        "within twice the grace period, not {:?}",
        died.elapsed()
    );

    // It comes back: its lease was gone, so it must report its users again.
    let answer = gateway.report(&[], &[]).await;
    assert!(!answer.lease_was_live);
    gateway.report(&[app.user_token("alice")], &[]).await;
    let back = next_presence(&mut bob, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(back.online);
    assert_eq!(back.last_seen_at, offline.last_seen_at);
}

async fn a_released_gateway_takes_its_users_offline_after_the_grace_period(app: TestApp) {
    let _ = pair(&app).await;
    let mut carol = app.user("carol").await;
    support::create(&mut carol, &["bob"], None).await;
    let mut bob = listen(&app, "bob").await;
    let mut stopping = Gateway::new(&app).await;
    let mut staying = Gateway::new(&app).await;
    // Alice on the stopping gateway only; carol on both.
    stopping
        .report(&[app.user_token("alice"), app.user_token("carol")], &[])
        .await;
    staying.report(&[app.user_token("carol")], &[]).await;
    let mut online = Vec::new();
    for _ in 0..2 {
        let change = next_presence(&mut bob, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(change.online);
        online.push(change.user_id);
    }
    online.sort();
    assert_eq!(online, ["alice", "carol"]);

    // The staying gateway keeps its lease.
    let renewals = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            staying.report(&[], &[]).await;
        }
    });

    // The stopping gateway's last report: nothing it said counts any more,
    // and alice's grace period starts now.
    let released = Instant::now();
    let answer = stopping.release().await;
    assert!(answer.lease_was_live);
    let offline = next_presence(&mut bob, Duration::from_secs(3))
        .await
        .expect("alice goes offline");
    let waited = released.elapsed();
    assert_eq!(offline.user_id, "alice");
    assert!(!offline.online);
    assert!(offline.last_seen_at.is_some());
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_millis(1_600),
        "the grace period after the release, and a sweep, not {waited:?}"
    );
    // Carol still has a socket on the other gateway.
    assert_eq!(
        next_presence(&mut bob, Duration::from_millis(1_500)).await,
        None
    );
    let answer = app
        .user("bob")
        .await
        .get_presence(pb::GetPresenceRequest {
            user_ids: vec!["alice".into(), "carol".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let states: Vec<(String, bool)> = answer
        .users
        .iter()
        .map(|u| (u.user_id.clone(), u.online))
        .collect();
    assert_eq!(
        states,
        [("alice".to_owned(), false), ("carol".to_owned(), true)]
    );
    renewals.abort();

    // Released means gone: a report under the same id finds no lease.
    assert!(!stopping.report(&[], &[]).await.lease_was_live);
}

async fn presence_queries_show_co_participants_only(app: TestApp) {
    let _ = pair(&app).await;
    let mut dave = app.user("dave").await;
    support::create(&mut dave, &["carol"], None).await;
    let mut gateway = Gateway::new(&app).await;
    gateway
        .report(&[app.user_token("alice"), app.user_token("carol")], &[])
        .await;

    let mut bob = app.user("bob").await;
    let answer = bob
        .get_presence(pb::GetPresenceRequest {
            user_ids: vec![
                "alice".into(),
                "carol".into(),
                "bob".into(),
                "nobody".into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let users: Vec<(&str, bool, bool)> = answer
        .users
        .iter()
        .map(|u| (u.user_id.as_str(), u.online, u.last_seen_at.is_some()))
        .collect();
    // Carol (online, but no thread with bob) and nobody are left out; bob
    // may ask about himself.
    assert_eq!(users, vec![("alice", true, false), ("bob", false, false)]);

    // A service sees anyone.
    let mut service = app.service("notifier").await;
    let answer = service
        .get_presence(pb::GetPresenceRequest {
            user_ids: vec!["carol".into(), "nobody".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let users: Vec<(&str, bool)> = answer
        .users
        .iter()
        .map(|u| (u.user_id.as_str(), u.online))
        .collect();
    assert_eq!(users, vec![("carol", true), ("nobody", false)]);
}

async fn bad_reports_and_queries_are_refused(app: TestApp) {
    let mut bob = app.user("bob").await;
    for users in [
        vec![],
        vec!["".to_owned()],
        vec!["has space".to_owned()],
        (0..101).map(|i| format!("u{i}")).collect(),
    ] {
        let status = bob
            .get_presence(pb::GetPresenceRequest { user_ids: users })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    }
    let mut anonymous =
        chat_proto::v1::chat_service_client::ChatServiceClient::new(app.channel().await);
    let status = anonymous
        .get_presence(pb::GetPresenceRequest {
            user_ids: vec!["bob".into()],
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut relay = RelayServiceClient::new(app.channel().await);
    let status = relay
        .report_presence(pb::ReportPresenceRequest {
            gateway_id: "short".into(),
            ..Default::default()
        })
        .await
        .expect_err("a guessable gateway id");
    assert_eq!(status.code(), Code::InvalidArgument);

    // A bad or service token proves no user: refused by index, the rest
    // taken.
    let mut gateway = Gateway::new(&app).await;
    let answer = gateway
        .report(
            &[
                "not-a-token".into(),
                app.user_token("bob"),
                app.service_token("svc"),
            ],
            &[],
        )
        .await;
    assert_eq!(answer.refused, vec![0, 2]);
    let answer = bob
        .get_presence(pb::GetPresenceRequest {
            user_ids: vec!["bob".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.users[0].online);
}

/// The stored `chat.unread_reminder` events: (message id, payload).
async fn reminders(app: &TestApp) -> Vec<(uuid::Uuid, Value)> {
    app.outbox()
        .await
        .into_iter()
        .filter(|(_, kind, ..)| kind == "chat.unread_reminder")
        .map(|(_, _, message_id, actor, payload)| {
            assert_eq!(actor, None);
            (
                message_id.expect("a reminder names a message"),
                serde_json::from_str(&payload).unwrap(),
            )
        })
        .collect()
}

async fn an_offline_user_is_reminded_once_per_read(app: TestApp) {
    let service = app.service_token("notifier");
    let mut watcher = app
        .integrations(service)
        .await
        .watch_integration_events(pb::WatchIntegrationEventsRequest {
            after_event_id: 0,
            event_types: vec!["chat.unread_reminder".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let (mut alice, thread) = pair(&app).await;
    let first = support::send(&mut alice, &thread, "are you there?").await;
    support::send(&mut alice, &thread, "hello?").await;

    let event = tokio::time::timeout(Duration::from_secs(5), watcher.message())
        .await
        .expect("a reminder comes")
        .unwrap()
        .unwrap();
    assert_eq!(event.event_type, "chat.unread_reminder");
    assert_eq!(event.thread_id, thread);
    assert_eq!(event.message_id, Some(first.id.clone()));
    let payload: Value = serde_json::from_str(&event.payload_json).unwrap();
    assert_eq!(
        payload,
        json!({"user_id": "bob", "thread_id": thread, "unread_count": 2, "first_unread_seq": 1})
    );

    // More messages while bob still has not read: no second reminder.
    support::send(&mut alice, &thread, "still waiting").await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(reminders(&app).await.len(), 1, "one until bob reads");

    // Bob reads, new messages come, and he is away again: one more.
    let mut bob = app.user("bob").await;
    bob.mark_read(pb::MarkReadRequest {
        thread_id: thread.clone(),
        up_to_seq: None,
    })
    .await
    .unwrap();
    let fourth = support::send(&mut alice, &thread, "new news").await;
    let event = tokio::time::timeout(Duration::from_secs(5), watcher.message())
        .await
        .expect("a second reminder")
        .unwrap()
        .unwrap();
    let payload: Value = serde_json::from_str(&event.payload_json).unwrap();
    assert_eq!(
        payload,
        json!({"user_id": "bob", "thread_id": thread, "unread_count": 1, "first_unread_seq": 4})
    );
    assert_eq!(event.message_id, Some(fourth.id.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = reminders(&app).await;
    assert_eq!(stored.len(), 2);
    // Alice, the sender, has nothing unread and is never reminded.
    assert!(stored.iter().all(|(_, p)| p["user_id"] == "bob"));
}

async fn no_reminder_while_online(app: TestApp) {
    let (mut alice, thread) = pair(&app).await;
    let mut gateway = Gateway::new(&app).await;
    gateway.report(&[app.user_token("bob")], &[]).await;
    support::send(&mut alice, &thread, "you are online").await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        gateway.report(&[], &[]).await;
    }
    assert_eq!(reminders(&app).await.len(), 0, "bob is online");

    // He leaves without reading: once the grace period is over he is
    // offline, and the waiting message (long due) is reminded.
    gateway.report(&[], &["bob"]).await;
    let left = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reminders(&app).await.is_empty() {
        assert!(Instant::now() < deadline, "no reminder after bob left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.elapsed() >= Duration::from_millis(900),
        "not during the grace"
    );
    assert_eq!(reminders(&app).await.len(), 1);
}

async fn reminders_survive_a_restart_and_are_not_repeated(mut app: TestApp) {
    let (mut alice, thread) = pair(&app).await;
    support::send(&mut alice, &thread, "first").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while reminders(&app).await.is_empty() {
        assert!(Instant::now() < deadline, "no reminder");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second thread's message becomes due while chat-core is down.
    let mut carol = app.user("carol").await;
    let other = support::create(&mut carol, &["bob"], None).await.id;
    support::send(&mut carol, &other, "while you were out").await;
    app.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = app.restart_with(FAST).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while reminders(&again).await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the reminder due during the restart is lost"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stored = reminders(&again).await;
    let mut threads: Vec<&str> = stored
        .iter()
        .map(|(_, p)| p["thread_id"].as_str().unwrap())
        .collect();
    threads.sort_unstable();
    let mut expected = vec![thread.as_str(), other.as_str()];
    expected.sort_unstable();
    assert_eq!(
        threads, expected,
        "one each, none repeated after the restart"
    );
}

/// Two replicas over one PostgreSQL database scan for reminders at once:
/// each reminder is written by exactly one of them.
#[tokio::test]
async fn two_replicas_write_each_reminder_once() {
    let settings = [FAST, &[("CHAT_CORE_THREAD_CREATES_PER_MINUTE", "1000")]].concat();
    let app = spawn_app_with(Backend::Postgres, &settings).await;
    let replica = app.restart_with(&settings).await;
    let mut alice = app.user("alice").await;
    let mut threads = Vec::new();
    for i in 0..40 {
        let t = support::create(&mut alice, &[&format!("user-{i}")], None)
            .await
            .id;
        support::send(&mut alice, &t, "ping").await;
        threads.push(t);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while reminders(&app).await.len() < 40 {
        assert!(Instant::now() < deadline, "reminders missing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stored = reminders(&replica).await;
    assert_eq!(stored.len(), 40, "each exactly once");
    let mut seen: Vec<&str> = stored
        .iter()
        .map(|(_, p)| p["thread_id"].as_str().unwrap())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 40);
    drop(replica);
}

/// Two replicas sweep at once: a user going offline is announced once.
#[tokio::test]
async fn two_replicas_announce_an_offline_user_once() {
    let app = spawn_app_with(Backend::Postgres, FAST).await;
    let replica = app.restart_with(FAST).await;
    let _ = pair(&app).await;
    // Bob listens on both replicas (no Redis here: each replica's own
    // announcements reach only its own subscribers, so together the two
    // streams see every announcement exactly once).
    let mut on_one = listen(&app, "bob").await;
    let mut on_two = listen(&replica, "bob").await;
    let mut gateway = Gateway::new(&app).await;
    gateway.report(&[app.user_token("alice")], &[]).await;
    assert!(
        next_presence(&mut on_one, Duration::from_secs(2))
            .await
            .unwrap()
            .online
    );
    gateway.report(&[], &["alice"]).await;
    let mut offline = 0;
    for stream in [&mut on_one, &mut on_two] {
        while let Some(change) = next_presence(stream, Duration::from_millis(2500)).await {
            assert!(!change.online);
            offline += 1;
        }
    }
    assert_eq!(offline, 1, "one replica announced it");
}
