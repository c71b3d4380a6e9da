//! The send path's single door: every new message, from a user or a
//! service, is appended through [`MessageWriter`].
//!
//! One transaction per message caps throughput at the database's commit
//! rate (about 2,400/s on PostgreSQL, 1,700/s on SQLite here), well below
//! the 10,000 messages/s of docs/architecture.md#service-levels. So the writer queues concurrent
//! appends and commits whatever is queued as one transaction (group
//! commit): under load each commit carries many messages, while an idle
//! writer commits a lone message at once, adding no latency.
//!
//! Appends are spread over a few queues (shards) by thread id, each drained
//! by its own task (see [`batch`]): a thread always lands on the same shard,
//! so only one batch per thread is ever in flight, which keeps seqs in
//! arrival order and live events in seq order, while batches of different
//! shards overlap their commits.

mod batch;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use uuid::Uuid;

use crate::{
    live::LiveEvents,
    metrics::WriterMetrics,
    store::{Appended, NewMessage, Store, StoreError},
};

use self::batch::{Job, Shard};

/// How the writer batches; [`WriterSettings::for_store`] picks values that
/// fit the store's connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterSettings {
    /// Queues drained in parallel, each holding one database connection
    /// while it commits.
    pub shards: usize,
    /// Sends each queue holds before senders wait (backpressure: a full
    /// queue slows callers down, it never drops their messages).
    pub queue_capacity: usize,
    /// The most messages one transaction carries, so that a long queue is
    /// committed in steps whose latency stays bounded.
    pub max_batch: usize,
}

impl WriterSettings {
    /// PostgreSQL: two shards (one below a pool of 8), a quarter of the
    /// pool at most, so reads and live catch-ups always find a connection.
    /// Not more: on the 2-core target, a batch's fixed cost (begin, lock,
    /// commit) dominates the database's CPU, so fewer, larger batches carry
    /// more messages per second than many small concurrent ones (measured:
    /// four shards used twice the database CPU per message of one, and
    /// through the gateway gave a lower maximum and a three times worse
    /// p99 at half of it). Two
    /// keep a batch that waits on a lock (another replica's batch) from
    /// stalling every thread. SQLite has a single writer connection, so
    /// more than one shard would only queue on it.
    pub fn for_store(store: &Store) -> Self {
        let shards = match store {
            Store::Postgres(_) => (store.pool_stats().max as usize / 4).clamp(1, 2),
            Store::Sqlite(_) => 1,
        };
        WriterSettings {
            shards,
            queue_capacity: 4096,
            max_batch: 512,
        }
    }
}

/// Appends messages to the store; the one place where seq is assigned.
/// Clones share the same queues and tasks.
#[derive(Debug, Clone)]
pub struct MessageWriter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queues: Vec<mpsc::Sender<Job>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<WriterMetrics>,
}

impl MessageWriter {
    /// A writer over `store`, announcing new messages through `live`, with
    /// settings fitted to the store. Spawns its batching tasks, so it must
    /// be called within the Tokio runtime.
    pub fn new(store: Store, live: LiveEvents) -> Self {
        let settings = WriterSettings::for_store(&store);
        Self::start(store, live, settings)
    }

    /// A writer with explicit settings (at least one shard, a queue of at
    /// least one and batches of at least one are enforced).
    pub fn start(store: Store, live: LiveEvents, settings: WriterSettings) -> Self {
        let metrics = Arc::new(WriterMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let shards = settings.shards.max(1);
        let mut queues = Vec::with_capacity(shards);
        let mut tasks = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (queue, jobs) = mpsc::channel(settings.queue_capacity.max(1));
            queues.push(queue);
            let shard = Shard {
                store: store.clone(),
                live: live.clone(),
                metrics: metrics.clone(),
                max_batch: settings.max_batch.max(1),
            };
            tasks.push(tokio::spawn(shard.run(jobs, stopped.clone())));
        }
        MessageWriter {
            inner: Arc::new(Inner {
                queues,
                stop,
                tasks: Mutex::new(tasks),
                metrics,
            }),
        }
    }

    /// Appends one message and returns it with its seq once its batch has
    /// committed and been announced to live subscribers. `None` when the
    /// thread does not exist or the sender is not in it.
    ///
    /// Waits while the queue is full. Once queued, the message is written
    /// even if the caller stops waiting: a client that gave up and retries
    /// with its client_msg_id gets the original back.
    pub async fn append(&self, message: NewMessage) -> Result<Option<Appended>, StoreError> {
        let queue = self
            .inner
            .queues
            .get(shard_of(message.thread_id, self.inner.queues.len()))
            .ok_or(StoreError::WriterStopped)?;
        let (reply, outcome) = oneshot::channel();
        queue
            .send(Job { message, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        outcome.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Sends queued for a batch and not yet taken, over all shards.
    pub fn queue_depth(&self) -> usize {
        self.inner
            .queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }

    /// The batching figures, for `/metrics`.
    pub fn metrics(&self) -> &WriterMetrics {
        &self.inner.metrics
    }

    /// Stops taking new messages, commits everything already queued and
    /// waits (at most `limit`) for the batching tasks to finish. Called
    /// once the servers have stopped, before the pool closes, so that
    /// nothing accepted is left unwritten. Later appends fail with
    /// [`StoreError::WriterStopped`].
    pub async fn close(&self, limit: Duration) {
        self.inner.stop.send_replace(true);
        let tasks = match self.inner.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let all = futures_util::future::join_all(tasks);
        match tokio::time::timeout(limit, all).await {
            Ok(results) => {
                for result in results {
                    if let Err(err) = result {
                        tracing::error!(error = %err, "a message writer task failed");
                    }
                }
            }
            Err(_) => tracing::warn!(
                limit_seconds = limit.as_secs(),
                "message writer still busy at shutdown; queued messages may be unwritten"
            ),
        }
    }
}

/// The shard of a thread. Thread ids are UUIDv7, whose low bits are
/// random; folding both halves keeps any UUID well spread.
fn shard_of(thread_id: Uuid, shards: usize) -> usize {
    let bits = thread_id.as_u128();
    let folded = (bits as u64) ^ ((bits >> 64) as u64);
    (folded % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_always_lands_on_the_same_shard_and_threads_spread() {
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let id = Uuid::now_v7();
            let shard = shard_of(id, 4);
            assert_eq!(shard, shard_of(id, 4));
            counts[shard] += 1;
        }
        for count in counts {
            assert!(count > 700, "{counts:?}");
        }
        assert_eq!(shard_of(Uuid::now_v7(), 1), 0);
    }
}
