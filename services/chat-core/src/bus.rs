//! How events get from the replica that committed them to every replica's
//! [`Hub`]: in-process on the embedded default (one replica), or over Redis
//! pub/sub when `REDIS_URL` is set.
//!
//! Over Redis, each replica keeps one subscriber connection and subscribes
//! exactly the channels its local subscribers need, following the hub's
//! interest. Publishing never waits on Redis: events go to local
//! subscribers at once and to Redis through a bounded outbox, pipelined.
//! Redis pub/sub is at most once, so whenever notifications may have been
//! lost (a failed publish, a full outbox, a reconnect) every replica is told
//! to resync, and each stream catches up from the database.
//!
//! Presence changes travel differently: many of them, each with its
//! audience, in one message on one channel that every replica hears
//! ([`PresenceBatch`]), instead of one publish per (user, co-participant).
//! Each replica hands them to its own subscribers of the audience's user
//! topics.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

use crate::{
    domain::Caller,
    events::{ChatEvent, EventKind, PresenceBatch, SharedEvent, Topic},
    hub::{Hub, InterestListener},
    wire::{
        PresenceBatchWire, event_from_proto, event_to_proto, integration_from_proto,
        integration_to_proto, presence_batch_from_wire, presence_batch_to_wire,
    },
};

/// Events waiting to be published to Redis; beyond this, events are
/// dropped and every replica resyncs from the database instead.
const OUTBOX: usize = 16 * 1024;

/// What waits in the outbox: one event for one topic, or a batch of
/// presence changes for the presence channel.
enum Outgoing {
    Event(Topic, SharedEvent),
    Presence(Arc<PresenceBatch>),
}
/// Publishes pipelined in one round trip.
const PIPELINE: usize = 512;
/// How long a new subscription waits for Redis to confirm its channels.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// Publishes live events.
#[derive(Debug, Clone)]
pub enum EventBus {
    /// Events go straight to this process's hub.
    InProcess(Hub),
    /// Events go to this process's hub and, through Redis, to every other
    /// replica's.
    Redis(RedisBus),
}

impl EventBus {
    /// A bus for one replica.
    pub fn in_process() -> Self {
        EventBus::InProcess(Hub::default())
    }

    /// The local subscriber registry.
    pub fn hub(&self) -> &Hub {
        match self {
            EventBus::InProcess(hub) => hub,
            EventBus::Redis(bus) => &bus.hub,
        }
    }

    /// Publishes `event` to the subscribers of `topic` on every replica.
    /// Never waits.
    pub fn publish(&self, topic: &Topic, event: SharedEvent) {
        match self {
            EventBus::InProcess(hub) => hub.deliver(topic, &event),
            EventBus::Redis(bus) => bus.publish(topic, event),
        }
    }

    /// The Redis outbox's figures (all zero in process): events waiting,
    /// published and dropped since start.
    pub fn outbox(&self) -> OutboxStats {
        match self {
            EventBus::InProcess(_) => OutboxStats::default(),
            EventBus::Redis(bus) => OutboxStats {
                depth: (bus.outbox.max_capacity() - bus.outbox.capacity()) as u64,
                published: bus.counts.published.load(Ordering::Relaxed),
                dropped: bus.counts.dropped.load(Ordering::Relaxed),
            },
        }
    }

    /// Announces presence changes on every replica: each change to the
    /// subscribers of its audience's user topics, here at once and
    /// elsewhere through one Redis message for the whole batch. Waits for
    /// room in the Redis outbox instead of dropping (and making every
    /// replica resync) when it is full: announcements come from a
    /// background task, which may wait and must not crowd out the events
    /// of the send path.
    pub async fn announce_presence(&self, batch: PresenceBatch) {
        match self {
            EventBus::InProcess(hub) => hub.deliver_presence(&batch),
            EventBus::Redis(bus) => {
                bus.hub.deliver_presence(&batch);
                // Leave room for the send path: wait while the outbox is
                // more than half full.
                while bus.outbox.capacity() < OUTBOX / 2 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = bus.outbox.send(Outgoing::Presence(Arc::new(batch))).await;
            }
        }
    }

    /// Waits (briefly) until the topics registered so far are subscribed
    /// across replicas, so that a subscription reads the database only once
    /// nothing committed elsewhere can pass it by.
    pub async fn ready(&self) {
        if let EventBus::Redis(bus) = self {
            bus.ready().await;
        }
    }
}

/// The Redis outbox at one moment, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events waiting to be published.
    pub depth: u64,
    /// Events published since start.
    pub published: u64,
    /// Events dropped since start (outbox full, or lost with a failed
    /// publish): each made every replica resync.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct OutboxCounts {
    published: AtomicU64,
    dropped: AtomicU64,
}

/// Tells the subscriber task that local interest changed.
struct InterestSignal {
    requested: Arc<AtomicU64>,
    notify: Arc<Notify>,
}

impl InterestListener for InterestSignal {
    fn interest_changed(&self, _topic: &Topic, _interested: bool) {
        self.requested.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// The Redis side of the bus.
#[derive(Clone)]
pub struct RedisBus {
    hub: Hub,
    outbox: mpsc::Sender<Outgoing>,
    counts: Arc<OutboxCounts>,
    needs_resync: Arc<AtomicBool>,
    /// Interest changes requested / applied on Redis.
    requested: Arc<AtomicU64>,
    applied: watch::Receiver<u64>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").finish_non_exhaustive()
    }
}

/// Channel names under one prefix, so that deployments (or test runs)
/// sharing a Redis do not hear each other.
#[derive(Debug, Clone)]
struct Channels {
    prefix: String,
}

impl Channels {
    fn topic(&self, topic: &Topic) -> String {
        match topic {
            Topic::Thread(id) => format!("{}t:{}", self.prefix, id.simple()),
            Topic::User(user) => format!("{}u:{}", self.prefix, user),
            Topic::Integration => format!("{}integration", self.prefix),
        }
    }

    fn control(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// Presence batches: every replica listens.
    fn presence(&self) -> String {
        format!("{}presence", self.prefix)
    }

    fn parse(&self, channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix(&self.prefix)?;
        if rest == "integration" {
            return Some(Topic::Integration);
        }
        if let Some(id) = rest.strip_prefix("t:") {
            Uuid::try_parse(id).ok().map(Topic::Thread)
        } else {
            rest.strip_prefix("u:").map(|u| Topic::User(u.to_owned()))
        }
    }
}

const RESYNC: &[u8] = b"resync";

impl RedisBus {
    /// Connects to Redis (failing when it cannot be reached at start) and
    /// starts the publisher and subscriber tasks, which reconnect with
    /// backoff until `shutdown`.
    pub async fn start(
        url: &str,
        prefix: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Result<EventBus, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let publisher = connect_publisher(&client).await?;
        let requested = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(Notify::new());
        let hub = Hub::new(Some(Arc::new(InterestSignal {
            requested: requested.clone(),
            notify: notify.clone(),
        })));
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (applied_tx, applied) = watch::channel(0);
        let needs_resync = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(OutboxCounts::default());
        let channels = Channels {
            prefix: prefix.to_owned(),
        };
        let origin = Uuid::new_v4();
        tokio::spawn(
            Publisher {
                client: client.clone(),
                channels: channels.clone(),
                origin,
                needs_resync: needs_resync.clone(),
                counts: counts.clone(),
                shutdown: shutdown.clone(),
            }
            .run(publisher, outbox_rx),
        );
        tokio::spawn(
            Subscriber {
                client,
                channels,
                origin,
                hub: hub.clone(),
                notify,
                requested: requested.clone(),
                applied: applied_tx,
                shutdown,
            }
            .run(),
        );
        Ok(EventBus::Redis(RedisBus {
            hub,
            outbox,
            counts,
            needs_resync,
            requested,
            applied,
        }))
    }

    fn publish(&self, topic: &Topic, event: SharedEvent) {
        self.hub.deliver(topic, &event);
        if self
            .outbox
            .try_send(Outgoing::Event(topic.clone(), event))
            .is_err()
        {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.needs_resync.swap(true, Ordering::AcqRel) {
                tracing::warn!("redis outbox full: other replicas will resync from the database");
            }
        }
    }

    async fn ready(&self) {
        let target = self.requested.load(Ordering::Acquire);
        let mut applied = self.applied.clone();
        let _ =
            tokio::time::timeout(SUBSCRIBE_WAIT, applied.wait_for(|done| *done >= target)).await;
    }
}

async fn connect_publisher(
    client: &redis::Client,
) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Completes once the shutdown signal is set (never holding its guard
/// across an await).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Waits out a reconnect delay (doubling up to 5 s); false on shutdown.
async fn backoff(delay: &mut Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(Duration::from_secs(5));
    tokio::select! {
        () = stopped(shutdown) => false,
        () = tokio::time::sleep(wait) => true,
    }
}

struct Publisher {
    client: redis::Client,
    channels: Channels,
    origin: Uuid,
    needs_resync: Arc<AtomicBool>,
    counts: Arc<OutboxCounts>,
    shutdown: watch::Receiver<bool>,
}

impl Publisher {
    /// `[origin: 16 bytes][tag][protobuf]`: tag 0 is a `chat.v1.Event`,
    /// tag 1 a `chat.v1.IntegrationEvent`, tag 2 a [`PresenceBatchWire`];
    /// with the channel it goes to.
    fn payload(&self, outgoing: &Outgoing) -> Option<(String, Vec<u8>)> {
        let (channel, tag, body) = match outgoing {
            Outgoing::Event(topic, event) => match &event.kind {
                EventKind::Integration(record) => (
                    self.channels.topic(topic),
                    1u8,
                    integration_to_proto(record).encode_to_vec(),
                ),
                _ => (
                    self.channels.topic(topic),
                    0u8,
                    event_to_proto(event, &Caller::Service(String::new()))?.encode_to_vec(),
                ),
            },
            Outgoing::Presence(batch) => (
                self.channels.presence(),
                2u8,
                presence_batch_to_wire(batch).encode_to_vec(),
            ),
        };
        let mut payload = Vec::with_capacity(17 + body.len());
        payload.extend_from_slice(self.origin.as_bytes());
        payload.push(tag);
        payload.extend_from_slice(&body);
        Some((channel, payload))
    }

    async fn run(
        mut self,
        mut connection: redis::aio::MultiplexedConnection,
        mut outbox: mpsc::Receiver<Outgoing>,
    ) {
        let mut batch = Vec::with_capacity(PIPELINE);
        loop {
            if self.needs_resync.load(Ordering::Acquire) {
                let sent: Result<(), _> = redis::cmd("PUBLISH")
                    .arg(self.channels.control())
                    .arg(RESYNC)
                    .query_async(&mut connection)
                    .await;
                if sent.is_ok() {
                    self.needs_resync.store(false, Ordering::Release);
                    tracing::info!("asked every replica to resync from the database");
                }
            }
            batch.clear();
            tokio::select! {
                () = stopped(&mut self.shutdown) => return,
                received = outbox.recv_many(&mut batch, PIPELINE) => {
                    if received == 0 {
                        return;
                    }
                }
            }
            let mut pipe = redis::pipe();
            for outgoing in &batch {
                if let Some((channel, payload)) = self.payload(outgoing) {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
            }
            let published: Result<(), _> = pipe.query_async(&mut connection).await;
            if published.is_ok() {
                self.counts
                    .published
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            if let Err(err) = published {
                self.counts
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(error = %err, lost = batch.len(), "redis publish failed; reconnecting");
                self.needs_resync.store(true, Ordering::Release);
                let mut delay = Duration::from_millis(100);
                connection = loop {
                    if !backoff(&mut delay, &mut self.shutdown).await {
                        return;
                    }
                    match connect_publisher(&self.client).await {
                        Ok(connection) => break connection,
                        Err(err) => {
                            tracing::warn!(error = %err, "redis publisher reconnect failed")
                        }
                    }
                };
                tracing::info!("redis publisher reconnected");
            }
        }
    }
}

struct Subscriber {
    client: redis::Client,
    channels: Channels,
    origin: Uuid,
    hub: Hub,
    notify: Arc<Notify>,
    requested: Arc<AtomicU64>,
    applied: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
}

impl Subscriber {
    async fn run(mut self) {
        let mut delay = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let pubsub = match self.client.get_async_pubsub().await {
                Ok(pubsub) => pubsub,
                Err(err) => {
                    tracing::warn!(error = %err, "redis subscriber cannot connect");
                    if !backoff(&mut delay, &mut self.shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            let (mut sink, mut stream) = pubsub.split();
            let mut subscribed = HashSet::new();
            if let Err(err) = sink
                .subscribe(&[self.channels.control(), self.channels.presence()])
                .await
            {
                tracing::warn!(error = %err, "redis subscribe failed");
                continue;
            }
            if let Err(err) = self.sync(&mut sink, &mut subscribed).await {
                tracing::warn!(error = %err, "redis subscribe failed");
                continue;
            }
            if connected_before {
                tracing::info!("redis subscriber reconnected; resyncing live subscribers");
                self.hub.resync_all();
            }
            connected_before = true;
            let mut shutdown = self.shutdown.clone();
            loop {
                tokio::select! {
                    () = stopped(&mut shutdown) => return,
                    () = self.notify.notified() => {
                        if let Err(err) = self.sync(&mut sink, &mut subscribed).await {
                            tracing::warn!(error = %err, "redis subscribe failed");
                            break;
                        }
                    }
                    message = stream.next() => match message {
                        Some(message) => self.receive(message.get_channel_name(), message.get_payload_bytes()),
                        None => break,
                    },
                }
            }
            tracing::warn!("redis subscriber disconnected; reconnecting");
            if !backoff(&mut delay, &mut self.shutdown).await {
                return;
            }
        }
    }

    /// Subscribes and unsubscribes so that Redis sends exactly what local
    /// subscribers listen to.
    async fn sync(
        &self,
        sink: &mut redis::aio::PubSubSink,
        subscribed: &mut HashSet<String>,
    ) -> Result<(), redis::RedisError> {
        let target = self.requested.load(Ordering::Acquire);
        let wanted: HashSet<String> = self
            .hub
            .topics()
            .iter()
            .map(|topic| self.channels.topic(topic))
            .collect();
        let add: Vec<&String> = wanted.difference(subscribed).collect();
        for chunk in add.chunks(256) {
            sink.subscribe(chunk).await?;
        }
        let remove: Vec<&String> = subscribed.difference(&wanted).collect();
        for chunk in remove.chunks(256) {
            sink.unsubscribe(chunk).await?;
        }
        *subscribed = wanted;
        self.applied.send_if_modified(|applied| {
            let moved = target > *applied;
            *applied = (*applied).max(target);
            moved
        });
        Ok(())
    }

    fn receive(&self, channel: &str, payload: &[u8]) {
        if channel == self.channels.control() {
            if payload == RESYNC {
                tracing::info!("resync requested by a replica");
                self.hub.resync_all();
            }
            return;
        }
        if channel == self.channels.presence() {
            if payload.len() < 17 || payload[..16] == *self.origin.as_bytes() {
                return;
            }
            match (payload[16], PresenceBatchWire::decode(&payload[17..])) {
                (2, Ok(batch)) => self.hub.deliver_presence(&presence_batch_from_wire(batch)),
                _ => tracing::warn!(channel, "undecodable presence batch on the bus"),
            }
            return;
        }
        let Some(topic) = self.channels.parse(channel) else {
            return;
        };
        if payload.len() < 17 || payload[..16] == *self.origin.as_bytes() {
            return;
        }
        let body = &payload[17..];
        let event = match payload[16] {
            0 => chat_proto::v1::Event::decode(body)
                .ok()
                .and_then(event_from_proto),
            1 => chat_proto::v1::IntegrationEvent::decode(body)
                .ok()
                .and_then(integration_from_proto)
                .map(|record| ChatEvent {
                    thread_id: record.thread_id,
                    kind: EventKind::Integration(record),
                }),
            _ => None,
        };
        match event {
            Some(event) => self.hub.deliver(&topic, &Arc::new(event)),
            None => tracing::warn!(channel, "undecodable event on the bus"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::PresenceNotice;

    /// Two replicas on the local Redis (which the test suite requires):
    /// one batch announced on one reaches the audience's subscribers on
    /// both, each change once, in order.
    #[tokio::test]
    async fn a_presence_batch_reaches_every_replica() {
        let (_stop, shutdown) = watch::channel(false);
        let prefix = format!("bus-test-{}:", Uuid::new_v4().simple());
        let url = "redis://127.0.0.1:6379";
        let one = RedisBus::start(url, &prefix, shutdown.clone())
            .await
            .expect("redis");
        let two = RedisBus::start(url, &prefix, shutdown)
            .await
            .expect("redis");
        let mut here = one.hub().subscribe([Topic::User("bob".into())]);
        let mut there = two.hub().subscribe([Topic::User("bob".into())]);
        let mut carol = two.hub().subscribe([Topic::User("carol".into())]);
        one.ready().await;
        two.ready().await;
        let notice = |user: &str, online: bool, audience: &[&str]| PresenceNotice {
            user_id: user.into(),
            online,
            last_seen_at: (!online).then_some(42),
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        };
        one.announce_presence(PresenceBatch {
            notices: vec![
                notice("alice", true, &["bob", "carol"]),
                notice("dave", false, &["bob"]),
            ],
        })
        .await;
        let said = |event: Option<SharedEvent>| match event.as_deref().map(|e| &e.kind) {
            Some(EventKind::Presence {
                user_id, online, ..
            }) => (user_id.clone(), *online),
            other => panic!("{other:?}"),
        };
        let wait = Duration::from_secs(5);
        for subscription in [&mut here, &mut there] {
            let first = tokio::time::timeout(wait, subscription.recv()).await;
            assert_eq!(said(first.expect("alice")), ("alice".into(), true));
            let second = tokio::time::timeout(wait, subscription.recv()).await;
            assert_eq!(said(second.expect("dave")), ("dave".into(), false));
        }
        let first = tokio::time::timeout(wait, carol.recv()).await;
        assert_eq!(said(first.expect("alice")), ("alice".into(), true));
        // Nothing twice (the replica that announced ignores its own echo).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(here.try_recv().is_none());
        assert!(there.try_recv().is_none());
        assert!(carol.try_recv().is_none());
    }
}
