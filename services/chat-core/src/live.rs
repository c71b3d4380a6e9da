//! Live subscriptions (docs/api.md#websocket-api, #grpc-api `Subscribe`): stored messages after
//! `since_seq` first, then live events, with no gap, no duplicate and seq
//! order per thread, and typing indicators that expire.
//!
//! A subscription registers with the hub *before* it reads anything from
//! the database, so nothing committed after the read can slip between the
//! two; whatever both deliver is dropped by seq. A message event whose seq
//! jumps ahead is preceded by the missing messages, read from the database:
//! notifications may be late or lost (Redis pub/sub is at most once), the
//! database never is.
//!
//! No task and no database connection is held per subscriber: the stream is
//! a state machine polled by the transport, and database reads borrow a
//! pooled connection only while they run.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::Stream;
use tokio::{sync::watch, time::Instant};
use uuid::Uuid;

use crate::{
    bus::{EventBus, stopped},
    chat::ChatError,
    domain::{Caller, limits},
    events::{ChatEvent, EventKind, SharedEvent, Topic},
    hub::Subscription,
    store::{IntegrationEventRecord, MessagePage, Store},
};

/// Live events for one subscriber, ending with an error when the
/// subscriber lags, storage fails or the server shuts down.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SharedEvent, ChatError>> + Send>>;

/// Integration events for one watcher.
pub type IntegrationStream =
    Pin<Box<dyn Stream<Item = Result<IntegrationEventRecord, ChatError>> + Send>>;

struct WatchState {
    subscription: Subscription,
    store: Store,
    /// The last event id seen, of any type.
    last_id: i64,
    event_types: std::collections::HashSet<String>,
    pending: VecDeque<IntegrationEventRecord>,
    /// Read the database before waiting for live events.
    catch_up: bool,
    shutdown: watch::Receiver<bool>,
    resync: u64,
    finished: bool,
}

impl WatchState {
    fn wanted(&self, record: &IntegrationEventRecord) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&record.event_type)
    }

    async fn next(&mut self) -> Option<Result<IntegrationEventRecord, ChatError>> {
        const PAGE: u32 = 200;
        loop {
            if self.finished {
                return None;
            }
            if let Some(record) = self.pending.pop_front() {
                return Some(Ok(record));
            }
            if self.catch_up {
                match self.store.integration_events(self.last_id, &[], PAGE).await {
                    Ok(page) => {
                        self.catch_up = page.len() == PAGE as usize;
                        for record in page {
                            self.last_id = record.id;
                            if self.wanted(&record) {
                                self.pending.push_back(record);
                            }
                        }
                    }
                    Err(err) => {
                        self.finished = true;
                        return Some(Err(err.into()));
                    }
                }
                continue;
            }
            let event = tokio::select! {
                biased;
                () = stopped(&mut self.shutdown) => {
                    self.finished = true;
                    return Some(Err(ChatError::ShuttingDown));
                }
                event = self.subscription.recv() => event,
            };
            let Some(event) = event else {
                self.finished = true;
                return Some(Err(ChatError::Lagging));
            };
            match &event.kind {
                EventKind::Integration(record) if record.id == self.last_id + 1 => {
                    self.last_id = record.id;
                    if self.wanted(record) {
                        self.pending.push_back(record.clone());
                    }
                }
                // A jump: the database holds the missing ones, and this one.
                EventKind::Integration(record) if record.id > self.last_id => self.catch_up = true,
                EventKind::Resync { generation } if *generation > self.resync => {
                    self.resync = *generation;
                    self.catch_up = true;
                }
                _ => {}
            }
        }
    }
}

/// How long a typing indicator lasts without a refresh.
pub const TYPING_TTL: Duration = Duration::from_secs(6);

/// What a new subscription asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// One thread, or (None) every thread of the caller.
    pub thread_id: Option<String>,
    /// Resume after this seq (one thread only).
    pub since_seq: Option<i64>,
    /// Resume these threads after these seqs (every-thread only).
    pub since_seqs: HashMap<String, i64>,
}

struct StreamState {
    subscription: Subscription,
    store: Store,
    bus: EventBus,
    user: Option<String>,
    user_wide: bool,
    /// The last seq delivered per thread.
    delivered: HashMap<Uuid, i64>,
    /// Stored messages still to send before live events: (thread, after).
    backlog: VecDeque<(Uuid, i64)>,
    pending: VecDeque<SharedEvent>,
    shutdown: watch::Receiver<bool>,
    /// The last resync handled.
    resync: u64,
    finished: bool,
}

fn message_event(message: crate::domain::Message) -> SharedEvent {
    Arc::new(ChatEvent {
        thread_id: message.thread_id,
        kind: EventKind::MessageCreated(message),
    })
}

impl StreamState {
    /// Queues the stored messages of `thread` with seq in (after, until)
    /// (`until` None: all), advancing the delivered mark.
    async fn fill(
        &mut self,
        thread: Uuid,
        after: i64,
        until: Option<i64>,
    ) -> Result<bool, ChatError> {
        let (messages, has_more) = self
            .store
            .list_messages(thread, MessagePage::After(after), limits::MAX_MESSAGE_PAGE)
            .await?;
        let mut more = has_more;
        for message in messages {
            if until.is_some_and(|until| message.seq >= until) {
                more = false;
                break;
            }
            self.delivered.insert(thread, message.seq);
            self.pending.push_back(message_event(message));
        }
        Ok(more)
    }

    /// Decides what a live event becomes for this subscriber.
    async fn accept(&mut self, event: SharedEvent) -> Result<(), ChatError> {
        match &event.kind {
            EventKind::MessageCreated(message) => {
                let thread = event.thread_id;
                let mut last = self.delivered.get(&thread).copied().unwrap_or(0);
                if message.seq <= last {
                    return Ok(());
                }
                // A jump: fetch what is missing, in pages, before this one.
                while message.seq > last + 1 {
                    let more = self.fill(thread, last, Some(message.seq)).await?;
                    let now = self.delivered.get(&thread).copied().unwrap_or(0);
                    if !more || now == last {
                        break;
                    }
                    last = now;
                }
                self.delivered.insert(thread, message.seq);
                self.pending.push_back(event);
            }
            EventKind::Typing { user_id, .. } => {
                if self.user.as_deref() != Some(user_id.as_str()) {
                    self.pending.push_back(event);
                }
            }
            EventKind::ThreadCreated(thread) => {
                if !self.user_wide {
                    return Ok(());
                }
                let id = thread.id;
                if !self.delivered.contains_key(&id) {
                    self.subscription.add_topic(Topic::Thread(id));
                    self.delivered.insert(id, 0);
                    // Messages sent before the topic was added.
                    self.backlog.push_back((id, 0));
                }
                self.pending.push_back(event);
            }
            EventKind::Resync { generation } => {
                if *generation <= self.resync {
                    return Ok(());
                }
                self.resync = *generation;
                self.catch_up().await?;
            }
            _ => self.pending.push_back(event),
        }
        Ok(())
    }

    /// After notifications may have been lost: queue whatever the database
    /// holds beyond what was delivered, and (user-wide) join threads whose
    /// announcement was lost.
    async fn catch_up(&mut self) -> Result<(), ChatError> {
        match (&self.user, self.user_wide) {
            (Some(user), true) => {
                let current = self.store.user_thread_seqs(user).await?;
                for (thread, seq) in current {
                    match self.delivered.get(&thread) {
                        Some(delivered) if seq > *delivered => {
                            self.backlog.push_back((thread, *delivered));
                        }
                        Some(_) => {}
                        None => {
                            self.subscription.add_topic(Topic::Thread(thread));
                            self.delivered.insert(thread, 0);
                            self.backlog.push_back((thread, 0));
                        }
                    }
                }
            }
            _ => {
                for (thread, delivered) in &self.delivered {
                    self.backlog.push_back((*thread, *delivered));
                }
            }
        }
        Ok(())
    }

    /// The next item of the stream.
    async fn next(&mut self) -> Option<Result<SharedEvent, ChatError>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if let Some((thread, after)) = self.backlog.pop_front() {
                // A topic added on the way (a thread just joined) must be
                // live across replicas before its backlog is read.
                self.bus.ready().await;
                let after = self
                    .delivered
                    .get(&thread)
                    .copied()
                    .unwrap_or(after)
                    .max(after);
                match self.fill(thread, after, None).await {
                    Ok(true) => self.backlog.push_front((thread, after)),
                    Ok(false) => {}
                    Err(err) => {
                        self.finished = true;
                        return Some(Err(err));
                    }
                }
                continue;
            }
            let event = tokio::select! {
                biased;
                () = stopped(&mut self.shutdown) => {
                    self.finished = true;
                    return Some(Err(ChatError::ShuttingDown));
                }
                event = self.subscription.recv() => event,
            };
            let Some(event) = event else {
                self.finished = true;
                return Some(Err(ChatError::Lagging));
            };
            if let Err(err) = self.accept(event).await {
                self.finished = true;
                return Some(Err(err));
            }
        }
    }
}

/// Starts live subscriptions and tracks typing indicators.
#[derive(Debug, Clone)]
pub struct LiveEvents {
    store: Store,
    bus: EventBus,
    typing: Arc<Mutex<HashMap<(Uuid, String), Instant>>>,
    shutdown: watch::Receiver<bool>,
}

impl LiveEvents {
    /// Live events over `bus`; streams end when `shutdown` turns true.
    /// Spawns the task that expires typing indicators.
    pub fn new(store: Store, bus: EventBus, shutdown: watch::Receiver<bool>) -> Self {
        let live = LiveEvents {
            store,
            bus,
            typing: Arc::default(),
            shutdown,
        };
        tokio::spawn(live.clone().expire_typing());
        live
    }

    /// The bus events are published on.
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// Publishes an event of one thread.
    pub fn publish(&self, event: ChatEvent) {
        let topic = Topic::Thread(event.thread_id);
        self.bus.publish(&topic, Arc::new(event));
    }

    /// Publishes a committed integration event to its watchers.
    pub fn publish_integration(&self, record: IntegrationEventRecord) {
        let event = Arc::new(ChatEvent {
            thread_id: record.thread_id,
            kind: EventKind::Integration(record),
        });
        self.bus.publish(&Topic::Integration, event);
    }

    /// Integration events after `after_id` (stored ones first, then live
    /// ones), only of `event_types` when given: no gap, no duplicate. Ids
    /// commit in id order, so a jump in ids means a notification was lost
    /// or is late, and the database fills it.
    pub async fn watch_integration(
        &self,
        after_id: i64,
        event_types: Vec<String>,
    ) -> Result<IntegrationStream, ChatError> {
        crate::domain::validate_seq("after_event_id", after_id)?;
        let subscription = self.bus.hub().subscribe([Topic::Integration]);
        self.bus.ready().await;
        let state = WatchState {
            subscription,
            store: self.store.clone(),
            last_id: after_id,
            event_types: event_types.into_iter().collect(),
            pending: VecDeque::new(),
            catch_up: true,
            shutdown: self.shutdown.clone(),
            resync: 0,
            finished: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut state| async move {
                let item = state.next().await?;
                Some((item, state))
            },
        )))
    }

    /// Publishes a new thread to each of its participants.
    pub fn publish_thread_created(&self, thread: crate::domain::Thread) {
        let participants = thread.participants.clone();
        let event = Arc::new(ChatEvent {
            thread_id: thread.id,
            kind: EventKind::ThreadCreated(thread),
        });
        for user in participants {
            self.bus.publish(&Topic::User(user), event.clone());
        }
    }

    /// Opens a subscription for `caller`.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        request: SubscribeRequest,
    ) -> Result<EventStream, ChatError> {
        if let Some(seq) = request.since_seq {
            crate::domain::validate_seq("since_seq", seq)?;
        }
        let hub = self.bus.hub();
        let user = caller.user_id().map(str::to_owned);
        let state = match request.thread_id {
            Some(id) => {
                if !request.since_seqs.is_empty() {
                    return Err(ChatError::InvalidArgument(
                        "since_seqs: for every-thread subscriptions; use since_seq".into(),
                    ));
                }
                let id = crate::domain::parse_id(&id).ok_or(ChatError::NotFound("thread"))?;
                // A user's thread socket hears their co-participants'
                // presence too, which comes on the user's own topic.
                let topics =
                    std::iter::once(Topic::Thread(id)).chain(user.clone().map(Topic::User));
                let subscription = hub.subscribe(topics);
                self.bus.ready().await;
                let last_seq = self
                    .store
                    .visible_last_seq(id, user.as_deref())
                    .await?
                    .ok_or(ChatError::NotFound("thread"))?;
                let start = request
                    .since_seq
                    .map_or(last_seq, |since| since.min(last_seq));
                let mut state = self.state(subscription, user, false);
                state.delivered.insert(id, start);
                if start < last_seq {
                    state.backlog.push_back((id, start));
                }
                // Where the stream starts, so a relay can resume it from
                // there (Subscribe shows it only on every-thread streams).
                state.pending.push_back(Arc::new(ChatEvent {
                    thread_id: id,
                    kind: EventKind::Synced(HashMap::from([(id, start)])),
                }));
                state
            }
            None => {
                let Some(user_id) = user.clone() else {
                    return Err(ChatError::InvalidArgument(
                        "thread_id: a service token subscribes to one thread at a time".into(),
                    ));
                };
                if request.since_seq.is_some() {
                    return Err(ChatError::InvalidArgument(
                        "since_seq: resuming needs a thread_id (or since_seqs)".into(),
                    ));
                }
                if request.since_seqs.len() > 100_000
                    || request
                        .since_seqs
                        .iter()
                        .any(|(id, seq)| *seq < 0 || crate::domain::parse_id(id).is_none())
                {
                    return Err(ChatError::InvalidArgument(
                        "since_seqs: thread ids with non-negative seqs".into(),
                    ));
                }
                let mut subscription = hub.subscribe([Topic::User(user_id.clone())]);
                self.bus.ready().await;
                let first = self.store.user_thread_seqs(&user_id).await?;
                for (thread, _) in &first {
                    subscription.add_topic(Topic::Thread(*thread));
                }
                self.bus.ready().await;
                // Messages committed between the read and the registration
                // of their thread's topic come from the second read.
                let second: HashMap<Uuid, i64> = self
                    .store
                    .user_thread_seqs(&user_id)
                    .await?
                    .into_iter()
                    .collect();
                let mut state = self.state(subscription, user, true);
                for (thread, seq) in first {
                    // Resuming: start where the caller says it stopped.
                    let start = request
                        .since_seqs
                        .get(&thread.to_string())
                        .map_or(seq, |since| (*since).clamp(0, seq));
                    state.delivered.insert(thread, start);
                    if second.get(&thread).is_some_and(|now| *now > start) {
                        state.backlog.push_back((thread, start));
                    }
                }
                // The baseline goes first, so the caller can resume later.
                state.pending.push_back(Arc::new(ChatEvent {
                    thread_id: Uuid::nil(),
                    kind: EventKind::Synced(state.delivered.clone()),
                }));
                // A thread joined after the first read announces itself with
                // a ThreadCreated event, already queued for this subscriber.
                state
            }
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut state| async move {
                let item = state.next().await?;
                Some((item, state))
            },
        )))
    }

    fn state(
        &self,
        subscription: Subscription,
        user: Option<String>,
        user_wide: bool,
    ) -> StreamState {
        StreamState {
            subscription,
            store: self.store.clone(),
            bus: self.bus.clone(),
            user,
            user_wide,
            delivered: HashMap::new(),
            backlog: VecDeque::new(),
            pending: VecDeque::new(),
            shutdown: self.shutdown.clone(),
            resync: 0,
            finished: false,
        }
    }

    /// Says `user` is (or stopped) typing in `thread_id`. A `true` lasts
    /// [`TYPING_TTL`] unless refreshed; its expiry is announced as `false`.
    pub fn set_typing(&self, thread_id: Uuid, user: &str, is_typing: bool) {
        let key = (thread_id, user.to_owned());
        if let Ok(mut typing) = self.typing.lock() {
            if is_typing {
                typing.insert(key, Instant::now() + TYPING_TTL);
            } else {
                typing.remove(&key);
            }
        }
        self.publish(ChatEvent {
            thread_id,
            kind: EventKind::Typing {
                user_id: user.to_owned(),
                is_typing,
            },
        });
    }

    async fn expire_typing(self) {
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let expired: Vec<(Uuid, String)> = match self.typing.lock() {
                Ok(mut typing) => {
                    let expired: Vec<_> = typing
                        .iter()
                        .filter(|(_, deadline)| **deadline <= now)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in &expired {
                        typing.remove(key);
                    }
                    expired
                }
                Err(_) => return,
            };
            for (thread_id, user_id) in expired {
                self.publish(ChatEvent {
                    thread_id,
                    kind: EventKind::Typing {
                        user_id,
                        is_typing: false,
                    },
                });
            }
        }
    }
}
