//! The replica-local registry of live subscribers: who listens to which
//! [`Topic`]. Delivery never waits: each subscriber has a bounded queue, and
//! one that is full is cut off (it resumes with `since_seq`) instead of
//! growing memory or slowing the publisher and everyone else.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::Notify;

use crate::events::{ChatEvent, EventKind, PresenceBatch, SharedEvent, Topic};

/// How many events may wait for one subscriber before it counts as too
/// slow and is cut off.
pub const SUBSCRIBER_QUEUE: usize = 256;

/// One subscriber's queue. A locked deque rather than a channel: with tens
/// of thousands of idle subscribers (a gateway's sockets), a channel's
/// preallocated block per subscriber costs more than everything else the
/// subscriber holds.
#[derive(Default)]
struct Inbox {
    events: Mutex<VecDeque<SharedEvent>>,
    ready: Notify,
    /// Set when the queue was full: the subscriber is cut off.
    lagged: AtomicBool,
}

impl Inbox {
    /// Queues an event without waiting; false (and cut off) when full.
    /// `cut_off` counts subscribers cut off, each once.
    fn offer(&self, event: &SharedEvent, cut_off: &AtomicU64) -> bool {
        let queued = match self.events.lock() {
            Ok(mut events) if events.len() < SUBSCRIBER_QUEUE => {
                events.push_back(event.clone());
                true
            }
            _ => false,
        };
        if !queued && !self.lagged.swap(true, Ordering::AcqRel) {
            cut_off.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
        queued
    }
}

struct Registration {
    id: u64,
    inbox: Arc<Inbox>,
}

#[derive(Default)]
struct Registry {
    topics: HashMap<Topic, Vec<Registration>>,
}

/// Called when a topic gains its first local subscriber or loses its last,
/// so a cross-replica bus can follow local interest.
pub trait InterestListener: Send + Sync {
    fn interest_changed(&self, topic: &Topic, interested: bool);
}

/// Local subscribers by topic. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
    resyncs: Arc<AtomicU64>,
    stats: Arc<HubStats>,
    listener: Option<Arc<dyn InterestListener>>,
}

/// The hub's figures for `/metrics`.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Subscriptions open now.
    pub live: AtomicU64,
    /// Subscribers cut off for a full queue, since start.
    pub cut_off: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(None)
    }
}

impl Hub {
    /// A hub reporting interest changes to `listener`.
    pub fn new(listener: Option<Arc<dyn InterestListener>>) -> Self {
        Hub {
            registry: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            resyncs: Arc::new(AtomicU64::new(0)),
            stats: Arc::default(),
            listener,
        }
    }

    /// Registers a subscriber on `topics`. Events published from now on
    /// reach it.
    pub fn subscribe(&self, topics: impl IntoIterator<Item = Topic>) -> Subscription {
        self.stats.live.fetch_add(1, Ordering::Relaxed);
        let mut subscription = Subscription {
            hub: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            inbox: Arc::default(),
            topics: Vec::new(),
        };
        for topic in topics {
            subscription.add_topic(topic);
        }
        subscription
    }

    /// Hands `event` to every local subscriber of `topic`, without waiting.
    /// A subscriber whose queue is full is cut off.
    pub fn deliver(&self, topic: &Topic, event: &SharedEvent) {
        let mut emptied = false;
        {
            let Ok(mut registry) = self.registry.lock() else {
                return;
            };
            let Some(entries) = registry.topics.get_mut(topic) else {
                return;
            };
            entries.retain(|entry| entry.inbox.offer(event, &self.stats.cut_off));
            if entries.is_empty() {
                registry.topics.remove(topic);
                emptied = true;
            }
        }
        if emptied && let Some(listener) = &self.listener {
            listener.interest_changed(topic, false);
        }
    }

    /// Hands each change of `batch` to the local subscribers of its
    /// audience's user topics (see [`PresenceBatch`]), taking the registry
    /// lock once for the whole batch. Users with no subscriber here cost a
    /// lookup each.
    pub fn deliver_presence(&self, batch: &PresenceBatch) {
        let mut emptied = Vec::new();
        {
            let Ok(mut registry) = self.registry.lock() else {
                return;
            };
            let mut topic = Topic::User(String::new());
            for (event, audience) in batch.deliveries() {
                for user in audience {
                    // One topic value, refilled: no allocation per listener.
                    if let Topic::User(name) = &mut topic {
                        name.clear();
                        name.push_str(user);
                    }
                    let Some(entries) = registry.topics.get_mut(&topic) else {
                        continue;
                    };
                    entries.retain(|entry| entry.inbox.offer(&event, &self.stats.cut_off));
                    if entries.is_empty() {
                        registry.topics.remove(&topic);
                        emptied.push(topic.clone());
                    }
                }
            }
        }
        if let Some(listener) = &self.listener {
            for topic in &emptied {
                listener.interest_changed(topic, false);
            }
        }
    }

    /// Tells every local subscriber, once each, that notifications may have
    /// been lost, so it catches up from the database. One that cannot take
    /// the signal is cut off (it resumes with `since_seq`).
    pub fn resync_all(&self) {
        let generation = self.resyncs.fetch_add(1, Ordering::AcqRel) + 1;
        let event: SharedEvent = Arc::new(ChatEvent {
            thread_id: uuid::Uuid::nil(),
            kind: EventKind::Resync { generation },
        });
        let Ok(registry) = self.registry.lock() else {
            return;
        };
        let mut told = std::collections::HashSet::new();
        for entries in registry.topics.values() {
            for entry in entries {
                if told.insert(entry.id) {
                    entry.inbox.offer(&event, &self.stats.cut_off);
                }
            }
        }
    }

    /// Open subscriptions and cut-off counts, for `/metrics`.
    pub fn stats(&self) -> &Arc<HubStats> {
        &self.stats
    }

    /// Resyncs asked of every subscriber since start.
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// The topics with at least one local subscriber.
    pub fn topics(&self) -> Vec<Topic> {
        self.registry
            .lock()
            .map(|r| r.topics.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many subscriptions listen to `topic` here.
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.registry
            .lock()
            .map(|r| r.topics.get(topic).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    fn add(&self, topic: &Topic, id: u64, inbox: &Arc<Inbox>) {
        let first = {
            let Ok(mut registry) = self.registry.lock() else {
                return;
            };
            let entry = Registration {
                id,
                inbox: inbox.clone(),
            };
            match registry.topics.entry(topic.clone()) {
                Entry::Occupied(mut entries) => {
                    entries.get_mut().push(entry);
                    false
                }
                Entry::Vacant(slot) => {
                    slot.insert(vec![entry]);
                    true
                }
            }
        };
        if first && let Some(listener) = &self.listener {
            listener.interest_changed(topic, true);
        }
    }

    fn remove(&self, topic: &Topic, id: u64) {
        let emptied = {
            let Ok(mut registry) = self.registry.lock() else {
                return;
            };
            let Some(entries) = registry.topics.get_mut(topic) else {
                return;
            };
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                registry.topics.remove(topic);
                true
            } else {
                false
            }
        };
        if emptied && let Some(listener) = &self.listener {
            listener.interest_changed(topic, false);
        }
    }
}

/// One subscriber's registration and queue; unregistered when dropped.
pub struct Subscription {
    hub: Hub,
    id: u64,
    inbox: Arc<Inbox>,
    topics: Vec<Topic>,
}

impl Subscription {
    /// Starts listening to one more topic (a thread the user just joined).
    /// The caller adds each topic once: a user with thousands of threads
    /// must not pay a search per topic.
    pub fn add_topic(&mut self, topic: Topic) {
        self.hub.add(&topic, self.id, &self.inbox);
        self.topics.push(topic);
    }

    /// The next event; `None` once the subscriber was cut off for lagging.
    pub async fn recv(&mut self) -> Option<SharedEvent> {
        loop {
            if self.lagged() {
                return None;
            }
            if let Some(event) = self.try_recv() {
                return Some(event);
            }
            // A notification sent since the checks above is kept for this.
            self.inbox.ready.notified().await;
        }
    }

    /// Whether the hub cut this subscriber off because its queue was full.
    pub fn lagged(&self) -> bool {
        self.inbox.lagged.load(Ordering::Acquire)
    }

    /// Takes a queued event without waiting.
    pub fn try_recv(&mut self) -> Option<SharedEvent> {
        self.inbox.events.lock().ok()?.pop_front()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.stats.live.fetch_sub(1, Ordering::Relaxed);
        for topic in &self.topics {
            self.hub.remove(topic, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(thread: uuid::Uuid) -> SharedEvent {
        Arc::new(ChatEvent {
            thread_id: thread,
            kind: EventKind::Typing {
                user_id: "a".into(),
                is_typing: true,
            },
        })
    }

    #[tokio::test]
    async fn delivers_to_subscribers_of_the_topic_only() {
        let hub = Hub::default();
        let t1 = uuid::Uuid::now_v7();
        let t2 = uuid::Uuid::now_v7();
        let mut one = hub.subscribe([Topic::Thread(t1)]);
        let mut two = hub.subscribe([Topic::Thread(t2)]);
        hub.deliver(&Topic::Thread(t1), &typing(t1));
        assert_eq!(one.recv().await.unwrap().thread_id, t1);
        assert!(two.try_recv().is_none());
        drop(one);
        assert_eq!(hub.subscriber_count(&Topic::Thread(t1)), 0);
        assert_eq!(hub.topics(), vec![Topic::Thread(t2)]);
    }

    #[tokio::test]
    async fn a_presence_batch_reaches_each_listener_once() {
        let hub = Hub::default();
        let mut bob = hub.subscribe([Topic::User("bob".into())]);
        let mut carol = hub.subscribe([Topic::User("carol".into())]);
        let batch = PresenceBatch {
            notices: vec![
                crate::events::PresenceNotice {
                    user_id: "alice".into(),
                    online: true,
                    last_seen_at: None,
                    audience: vec!["bob".into(), "nobody-here".into()],
                },
                crate::events::PresenceNotice {
                    user_id: "dave".into(),
                    online: false,
                    last_seen_at: Some(7),
                    audience: vec!["bob".into(), "carol".into()],
                },
            ],
        };
        hub.deliver_presence(&batch);
        let said = |event: SharedEvent| match &event.kind {
            EventKind::Presence {
                user_id, online, ..
            } => (user_id.clone(), *online),
            other => panic!("{other:?}"),
        };
        assert_eq!(said(bob.recv().await.unwrap()), ("alice".into(), true));
        assert_eq!(said(bob.recv().await.unwrap()), ("dave".into(), false));
        assert!(bob.try_recv().is_none());
        assert_eq!(said(carol.recv().await.unwrap()), ("dave".into(), false));
        assert!(carol.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_cuts_the_subscriber_off() {
        let hub = Hub::default();
        let t = uuid::Uuid::now_v7();
        let mut slow = hub.subscribe([Topic::Thread(t)]);
        for _ in 0..SUBSCRIBER_QUEUE + 10 {
            hub.deliver(&Topic::Thread(t), &typing(t));
        }
        assert!(slow.lagged());
        assert!(slow.recv().await.is_none());
        assert_eq!(hub.subscriber_count(&Topic::Thread(t)), 0);
    }
}
