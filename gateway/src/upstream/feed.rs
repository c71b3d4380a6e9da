//! Sockets' live events, carried over a few shared chat-core relay streams
//! (`RelayService.Relay`) instead of one `Subscribe` stream per socket.
//!
//! Why shared: a `Subscribe` stream costs HTTP/2 state and buffers on both
//! ends (about 15 KiB per socket), far beyond what a gateway carrying tens
//! of thousands of sockets can afford; a subscription on a relay costs only
//! its own small state.
//!
//! Why a link task per relay that never waits on a socket: every stream
//! shares the HTTP/2 connection to chat-core with every unary call. Events
//! that nobody reads keep their data in the connection's flow-control
//! window, and enough of them starve every response, wedging the gateway.
//! A link hands each event to its socket's bounded queue without waiting;
//! a socket whose queue is full is cut off with [`FeedEnd::TooSlow`] (the
//! browser resumes with `since_seq`). Nothing is held in the transport on a
//! slow reader's behalf and nothing buffers without bound.
//!
//! The link also owns the delivery guarantees: per subscription it keeps
//! the last message seq passed on per thread (starting from the `synced`
//! baseline chat-core sends first), drops message events at or below it,
//! and when a relay breaks or a subscription is cut off upstream it opens
//! the subscription again from there, so the socket sees no gap and no
//! duplicate.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chat_proto::v1::{
    self as pb, event::Kind, relay_event::Kind as RelayKind, relay_request::Kind as Command,
    relay_service_client::RelayServiceClient,
};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    time::{Instant, sleep_until},
};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Streaming};

use super::Routed;

/// How many events may wait for one socket before it counts as too slow.
/// The queue holds boxed events and grows only as far as it is used.
pub const FEED_CAPACITY: usize = 512;
/// Relay streams per gateway: enough to spread sockets over the chat-core
/// replicas and over their cores.
const RELAY_LINKS: usize = 4;
/// How long opening a subscription may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Re-opens of a subscription cut off upstream, without an event in
/// between, before its socket is told to reconnect.
const REOPEN_ATTEMPTS: u32 = 8;
/// How long a link waits before opening cut-off subscriptions again, or
/// before reconnecting a broken relay.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// What a socket subscribes to.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    /// The user's token, passed to chat-core (which checks it again).
    pub token: Arc<str>,
    /// For chat-core's logs.
    pub request_id: Arc<str>,
    /// One thread, or `None` for every thread of the user.
    pub thread_id: Option<String>,
    /// On a thread feed: resume after this seq.
    pub since_seq: Option<i64>,
}

/// Why a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEnd {
    /// The socket did not keep up with its events.
    TooSlow,
    /// No such thread, or the user is not in it.
    NotFound,
    /// The token was refused or expired.
    Unauthenticated,
    /// chat-core could not be reached, or the gateway is stopping.
    Unavailable,
    /// chat-core refused to open one more subscription for this user.
    TooMany,
}

impl FeedEnd {
    /// The end a subscription's final status means; `None` when opening it
    /// again may work (a lagging cut-off, a replica going away).
    fn from_code(code: Code) -> Option<FeedEnd> {
        match code {
            Code::NotFound | Code::InvalidArgument => Some(FeedEnd::NotFound),
            Code::Unauthenticated | Code::PermissionDenied => Some(FeedEnd::Unauthenticated),
            _ => None,
        }
    }
}

/// A socket's queue of events, filled by its link and drained by the
/// socket. A plain locked deque rather than a channel: an idle socket's
/// queue then costs a few dozen bytes, not a channel's preallocated block.
#[derive(Debug, Default)]
struct Queue {
    events: Mutex<VecDeque<Box<pb::Event>>>,
    ready: Notify,
    end: OnceLock<FeedEnd>,
}

impl Queue {
    /// Queues an event; false when the socket has [`FEED_CAPACITY`]
    /// events waiting already.
    fn push(&self, event: Box<pb::Event>) -> bool {
        let Ok(mut events) = self.events.lock() else {
            return false;
        };
        if events.len() >= FEED_CAPACITY {
            return false;
        }
        events.push_back(event);
        drop(events);
        self.ready.notify_one();
        true
    }

    fn pop(&self) -> Option<Box<pb::Event>> {
        self.events.lock().ok()?.pop_front()
    }

    /// Ends the feed: the socket learns why once it has read what is
    /// queued (at once, for [`FeedEnd::TooSlow`]).
    fn finish(&self, end: FeedEnd) {
        let _ = self.end.set(end);
        self.ready.notify_one();
    }
}

/// A socket's stream of events, deduplicated and in seq order per thread.
/// Dropping it closes the subscription.
#[derive(Debug)]
pub struct Feed {
    id: u64,
    queue: Arc<Queue>,
    link: mpsc::UnboundedSender<Control>,
    /// The relays' count of open feeds, given back when dropped.
    open: Arc<AtomicU64>,
}

impl Feed {
    /// The next event, or why the feed ended.
    pub async fn next(&mut self) -> Result<Box<pb::Event>, FeedEnd> {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            // A notification sent since the check above is kept for this.
            self.queue.ready.notified().await;
        }
    }

    /// The next event if one is queued already, or why the feed ended;
    /// `None` when the socket would have to wait. Lets a socket write what
    /// has arrived together in one go.
    pub fn try_next(&mut self) -> Option<Result<Box<pb::Event>, FeedEnd>> {
        // A socket that fell behind is closed at once rather than after it
        // has worked through the backlog it could not keep up with.
        let end = self.queue.end.get().copied();
        if end == Some(FeedEnd::TooSlow) {
            return Some(Err(FeedEnd::TooSlow));
        }
        if let Some(event) = self.queue.pop() {
            return Some(Ok(event));
        }
        end.map(Err)
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let _ = self.link.send(Control::Close { id: self.id });
    }
}

/// The relay links of one gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Relays {
    links: Arc<[mpsc::UnboundedSender<Control>]>,
    next_link: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl Relays {
    /// Starts the links over `routed`. They connect when the first socket
    /// subscribes and end when every clone of this value is gone. Link `i`
    /// connects to the first healthy replica from the `i`-th on, so the
    /// links spread evenly over the healthy replicas, and a link whose
    /// replica goes away reconnects to the next healthy one.
    pub fn start(routed: Routed) -> Relays {
        let links = (0..RELAY_LINKS)
            .map(|index| {
                // Unbounded, yet bounded by the sockets: each subscription
                // puts at most one open and one close here.
                let (control, commands) = mpsc::unbounded_channel();
                let link = Link {
                    client: RelayServiceClient::new(routed.pinned(index)),
                    commands,
                    subscriptions: HashMap::new(),
                    reopen: Vec::new(),
                };
                tokio::spawn(link.run());
                control
            })
            .collect();
        Relays {
            links,
            next_link: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            open: Arc::default(),
        }
    }

    /// Feeds open now (one per subscribed socket).
    pub fn open_feeds(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Subscribes a socket. Returns once chat-core has the subscription in
    /// place, so every event after this reaches the feed.
    pub async fn open(&self, request: FeedRequest) -> Result<Feed, FeedEnd> {
        let link =
            self.links[self.next_link.fetch_add(1, Ordering::Relaxed) % self.links.len()].clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (opened, answer) = oneshot::channel();
        let queue = Arc::new(Queue::default());
        let subscription = Subscription {
            request,
            queue: queue.clone(),
            delivered: HashMap::new(),
            opened: Some(opened),
            attempts: 0,
        };
        link.send(Control::Open {
            id,
            subscription: Box::new(subscription),
        })
        .map_err(|_| FeedEnd::Unavailable)?;
        // From here the feed closes the subscription if opening fails.
        self.open.fetch_add(1, Ordering::Relaxed);
        let feed = Feed {
            id,
            queue,
            link,
            open: self.open.clone(),
        };
        match tokio::time::timeout(OPEN_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(feed),
            Ok(Ok(Err(end))) => Err(end),
            Ok(Err(_)) | Err(_) => Err(FeedEnd::Unavailable),
        }
    }
}

/// What sockets ask of a link.
#[derive(Debug)]
enum Control {
    Open {
        id: u64,
        subscription: Box<Subscription>,
    },
    Close {
        id: u64,
    },
}

/// One socket's subscription, as its link keeps it.
#[derive(Debug)]
struct Subscription {
    request: FeedRequest,
    queue: Arc<Queue>,
    /// The last message seq passed on, per thread.
    delivered: HashMap<String, i64>,
    /// Told when chat-core has the subscription in place.
    opened: Option<oneshot::Sender<Result<(), FeedEnd>>>,
    /// Re-opens since the last event.
    attempts: u32,
}

impl Subscription {
    /// The open that resumes after what was passed on: one thread after
    /// its last seq; every thread after what came since the baseline.
    fn open_command(&self, id: u64) -> pb::RelayRequest {
        let request = &self.request;
        let (since_seq, since_seqs) = match &request.thread_id {
            Some(thread) => (
                self.delivered.get(thread).copied().or(request.since_seq),
                HashMap::new(),
            ),
            None => (None, self.delivered.clone()),
        };
        pb::RelayRequest {
            kind: Some(Command::Open(pb::RelayOpen {
                id,
                token: request.token.to_string(),
                subscribe: Some(pb::SubscribeRequest {
                    thread_id: request.thread_id.clone(),
                    since_seq,
                    since_seqs,
                }),
                request_id: request.request_id.to_string(),
            })),
        }
    }

    /// Whether an event goes to the socket: message events at or below
    /// what was passed on are dropped; `synced` only moves the baseline.
    fn is_new(&mut self, event: &pb::Event) -> bool {
        match &event.kind {
            Some(Kind::Synced(synced)) => {
                for (thread, seq) in &synced.last_seqs {
                    let last = self.delivered.entry(thread.clone()).or_insert(*seq);
                    *last = (*last).max(*seq);
                }
                false
            }
            Some(Kind::MessageCreated(_)) => {
                // The thread id is copied only the first time a thread is seen.
                match self.delivered.get_mut(&event.thread_id) {
                    Some(last) if event.seq <= *last => false,
                    Some(last) => {
                        *last = event.seq;
                        true
                    }
                    None => {
                        self.delivered.insert(event.thread_id.clone(), event.seq);
                        true
                    }
                }
            }
            _ => true,
        }
    }

    /// Ends the feed (see [`Queue::finish`]), or its opening.
    fn finish(mut self, end: FeedEnd) {
        self.queue.finish(end);
        if let Some(opened) = self.opened.take() {
            let _ = opened.send(Err(end));
        }
    }
}

/// One relay stream to chat-core and the subscriptions on it.
struct Link {
    client: RelayServiceClient<Routed>,
    commands: mpsc::UnboundedReceiver<Control>,
    subscriptions: HashMap<u64, Box<Subscription>>,
    /// Subscriptions cut off upstream, to open again shortly.
    reopen: Vec<u64>,
}

/// A connected relay: what to send and what comes back.
struct Connected {
    outbound: mpsc::UnboundedSender<pb::RelayRequest>,
    inbound: Streaming<pb::RelayEvent>,
}

impl Link {
    async fn run(mut self) {
        let mut relay: Option<Connected> = None;
        let mut retry_at: Option<Instant> = None;
        loop {
            if relay.is_none() && !self.subscriptions.is_empty() && retry_at.is_none() {
                match self.connect().await {
                    Ok(connected) => relay = Some(connected),
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), "chat-core relay unavailable; retrying");
                        retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command, relay.as_ref()),
                    // The gateway is gone.
                    None => return,
                },
                event = async {
                    match relay.as_mut() {
                        Some(connected) => connected.inbound.message().await,
                        None => std::future::pending().await,
                    }
                } => match event {
                    Ok(Some(event)) => {
                        if let Some(connected) = &relay {
                            self.route(event, &connected.outbound);
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::info!("chat-core relay broke; resubscribing its sockets from their last delivered seqs");
                        relay = None;
                        retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                },
                () = sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                    retry_at = None;
                    let reopen = std::mem::take(&mut self.reopen);
                    if let Some(connected) = &relay {
                        for id in reopen {
                            if let Some(subscription) = self.subscriptions.get(&id) {
                                let _ = connected.outbound.send(subscription.open_command(id));
                            }
                        }
                    }
                }
            }
            if !self.reopen.is_empty() && retry_at.is_none() {
                retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    /// Opens a relay stream and every subscription this link holds.
    async fn connect(&mut self) -> Result<Connected, tonic::Status> {
        let (outbound, requests) = mpsc::unbounded_channel();
        self.reopen.clear();
        for (id, subscription) in &self.subscriptions {
            let _ = outbound.send(subscription.open_command(*id));
        }
        let mut client = self.client.clone();
        let inbound = tokio::time::timeout(
            OPEN_TIMEOUT,
            client.relay(UnboundedReceiverStream::new(requests)),
        )
        .await
        .map_err(|_| tonic::Status::unavailable("relay open timed out"))??
        .into_inner();
        Ok(Connected { outbound, inbound })
    }

    fn command(&mut self, command: Control, relay: Option<&Connected>) {
        match command {
            Control::Open { id, subscription } => {
                if let Some(connected) = relay {
                    let _ = connected.outbound.send(subscription.open_command(id));
                }
                // Without a relay, connecting opens it.
                self.subscriptions.insert(id, subscription);
            }
            Control::Close { id } => {
                if self.subscriptions.remove(&id).is_some()
                    && let Some(connected) = relay
                {
                    let _ = connected.outbound.send(close_command(id));
                }
            }
        }
    }

    /// Hands one relay event to its socket, without waiting.
    fn route(&mut self, event: pb::RelayEvent, outbound: &mpsc::UnboundedSender<pb::RelayRequest>) {
        let id = event.id;
        // Events of a subscription already closed are dropped.
        let Some(subscription) = self.subscriptions.get_mut(&id) else {
            return;
        };
        match event.kind {
            Some(RelayKind::Opened(_)) => {
                if let Some(opened) = subscription.opened.take() {
                    let _ = opened.send(Ok(()));
                }
            }
            Some(RelayKind::Event(event)) => {
                if !subscription.is_new(&event) {
                    return;
                }
                subscription.attempts = 0;
                if !subscription.queue.push(Box::new(event)) {
                    if let Some(subscription) = self.subscriptions.remove(&id) {
                        subscription.finish(FeedEnd::TooSlow);
                    }
                    let _ = outbound.send(close_command(id));
                }
            }
            Some(RelayKind::Ended(ended)) => {
                let code = Code::from_i32(ended.code);
                // Refused at open (not cut off later for lagging): the
                // user's cap on subscriptions; opening again would not help.
                let capped = code == Code::ResourceExhausted && subscription.opened.is_some();
                let end = capped.then_some(FeedEnd::TooMany);
                let end = end.or_else(|| FeedEnd::from_code(code)).or_else(|| {
                    subscription.attempts += 1;
                    (subscription.attempts > REOPEN_ATTEMPTS).then_some(FeedEnd::Unavailable)
                });
                match end {
                    Some(end) => {
                        if let Some(subscription) = self.subscriptions.remove(&id) {
                            subscription.finish(end);
                        }
                    }
                    None => {
                        tracing::info!(
                            request_id = %subscription.request.request_id,
                            code = ?code,
                            "subscription cut off upstream; resubscribing from the last delivered seq"
                        );
                        self.reopen.push(id);
                    }
                }
            }
            None => {}
        }
    }
}

fn close_command(id: u64) -> pb::RelayRequest {
    pb::RelayRequest {
        kind: Some(Command::Close(pb::RelayClose { id })),
    }
}
