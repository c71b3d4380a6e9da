//! A socket's live events: one chat-core `Subscribe` stream, read by its
//! own pump task into a bounded queue that the socket drains.
//!
//! Why a pump: every stream shares the HTTP/2 connection to chat-core with
//! every other stream and every unary call. A stream that nobody reads
//! keeps its data in the connection's flow-control window; enough of them
//! and no response reaches the gateway at all, so the whole gateway wedges
//! while one socket waits for its own call. The pump reads its stream
//! whatever the socket is doing. When the socket falls behind, the queue
//! fills and the feed ends with [`FeedEnd::TooSlow`] (the browser resumes
//! with `since_seq`); nothing is ever held in the transport on a slow
//! reader's behalf and nothing buffers without bound.
//!
//! The feed also owns the delivery guarantees: it remembers the last
//! message seq it passed on per thread, drops message events at or below
//! it, and when the stream breaks (a replica went away, or cut the stream
//! off for lagging) it subscribes again from there, so the socket sees no
//! gap and no duplicate.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use chat_proto::v1::{self as pb, event::Kind};
use tokio::{sync::mpsc, task::AbortHandle};
use tonic::{Code, Streaming};

use super::Upstream;

/// How many events may wait for one socket before it counts as too slow.
/// The queue's memory grows only as far as it is used.
pub const FEED_CAPACITY: usize = 512;
/// Re-subscription attempts after the stream breaks, before giving up.
const RESUBSCRIBE_ATTEMPTS: u32 = 8;
/// How long opening a stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a socket subscribes to.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    /// The user's token, passed to chat-core (which checks it again).
    pub token: String,
    /// For chat-core's logs.
    pub request_id: String,
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
}

impl FeedEnd {
    fn from_status(status: &tonic::Status) -> Option<FeedEnd> {
        match status.code() {
            Code::NotFound | Code::InvalidArgument => Some(FeedEnd::NotFound),
            Code::Unauthenticated | Code::PermissionDenied => Some(FeedEnd::Unauthenticated),
            _ => None,
        }
    }
}

/// A socket's stream of events, deduplicated and in seq order per thread.
/// Dropping it stops its pump and closes the chat-core stream.
#[derive(Debug)]
pub struct Feed {
    events: mpsc::Receiver<pb::Event>,
    end: Arc<OnceLock<FeedEnd>>,
    pump: AbortHandle,
}

impl Feed {
    /// The next event, or why the feed ended.
    pub async fn next(&mut self) -> Result<pb::Event, FeedEnd> {
        // A socket that fell behind is closed at once rather than after it
        // has worked through the backlog it could not keep up with.
        if self.end.get() == Some(&FeedEnd::TooSlow) {
            return Err(FeedEnd::TooSlow);
        }
        match self.events.recv().await {
            Some(event) => Ok(event),
            None => Err(self.end.get().copied().unwrap_or(FeedEnd::Unavailable)),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Upstream {
    /// Subscribes a socket. Returns once chat-core has the subscription in
    /// place, so every event after this reaches the feed.
    pub async fn open_feed(&self, request: FeedRequest) -> Result<Feed, FeedEnd> {
        let pump = Pump {
            upstream: self.clone(),
            request,
            delivered: HashMap::new(),
        };
        let stream = pump
            .subscribe()
            .await
            .map_err(|status| FeedEnd::from_status(&status).unwrap_or(FeedEnd::Unavailable))?;
        let (sender, events) = mpsc::channel(FEED_CAPACITY);
        let end = Arc::new(OnceLock::new());
        let task = tokio::spawn(pump.run(stream, sender, end.clone()));
        Ok(Feed {
            events,
            end,
            pump: task.abort_handle(),
        })
    }
}

/// The task behind a [`Feed`].
struct Pump {
    upstream: Upstream,
    request: FeedRequest,
    /// The last message seq passed on, per thread.
    delivered: HashMap<String, i64>,
}

impl Pump {
    async fn run(
        mut self,
        mut stream: Streaming<pb::Event>,
        sender: mpsc::Sender<pb::Event>,
        end: Arc<OnceLock<FeedEnd>>,
    ) {
        let reason = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if !self.is_new(&event) {
                        continue;
                    }
                    match sender.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => break FeedEnd::TooSlow,
                        // The socket is gone.
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Ok(None) => match self.resubscribe().await {
                    Ok(next) => stream = next,
                    Err(reason) => break reason,
                },
                Err(status) => match FeedEnd::from_status(&status) {
                    Some(reason) => break reason,
                    None => match self.resubscribe().await {
                        Ok(next) => stream = next,
                        Err(reason) => break reason,
                    },
                },
            }
        };
        let _ = end.set(reason);
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

    /// Opens the chat-core stream, resuming after what was passed on: one
    /// thread after its last seq; every thread after the baseline chat-core
    /// sent (`synced`) or what came since.
    async fn subscribe(&self) -> Result<Streaming<pb::Event>, tonic::Status> {
        let request = &self.request;
        let (since_seq, since_seqs) = match &request.thread_id {
            Some(thread) => (
                self.delivered.get(thread).copied().or(request.since_seq),
                HashMap::new(),
            ),
            None => (None, self.delivered.clone()),
        };
        let mut call = self.upstream.request(
            pb::SubscribeRequest {
                thread_id: request.thread_id.clone(),
                since_seq,
                since_seqs,
            },
            &request.token,
            &request.request_id,
        );
        // A stream has no deadline; only opening it does.
        call.set_timeout(Duration::from_secs(3600 * 24 * 365));
        let mut client = self.upstream.chat();
        let stream = tokio::time::timeout(OPEN_TIMEOUT, client.subscribe(call))
            .await
            .map_err(|_| tonic::Status::unavailable("subscribe timed out"))??;
        Ok(stream.into_inner())
    }

    /// Subscribes again after the stream broke, with back-off.
    async fn resubscribe(&self) -> Result<Streaming<pb::Event>, FeedEnd> {
        tracing::info!(
            request_id = %self.request.request_id,
            "subscription broke; resubscribing from the last delivered seq"
        );
        let mut delay = Duration::from_millis(50);
        for _ in 0..RESUBSCRIBE_ATTEMPTS {
            match self.subscribe().await {
                Ok(stream) => return Ok(stream),
                Err(status) => {
                    if let Some(reason) = FeedEnd::from_status(&status) {
                        return Err(reason);
                    }
                    tracing::warn!(request_id = %self.request.request_id, code = ?status.code(), "re-subscribing");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        Err(FeedEnd::Unavailable)
    }
}
