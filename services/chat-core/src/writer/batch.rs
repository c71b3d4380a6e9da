//! The batching task of one shard: take whatever is queued (up to the
//! batch limit), commit it as one transaction, announce it, answer each
//! caller, repeat. It never waits for a batch to fill: at low load a batch
//! is the one message that arrived, so group commit costs no latency; under
//! load, messages queue while the previous commit runs and the next batch
//! carries them all.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    events::{ChatEvent, EventKind},
    live::LiveEvents,
    metrics::WriterMetrics,
    store::{Appended, IntegrationEventRecord, NewMessage, Store, StoreError, WriterSession},
};

/// What one append gets back.
pub(super) type Outcome = Result<Option<Appended>, StoreError>;

/// A queued append and where its outcome goes.
#[derive(Debug)]
pub(super) struct Job {
    pub message: NewMessage,
    pub reply: oneshot::Sender<Outcome>,
}

/// One shard's batching task.
pub(super) struct Shard {
    pub store: Store,
    pub live: LiveEvents,
    pub metrics: Arc<WriterMetrics>,
    pub max_batch: usize,
}

impl Shard {
    /// Runs until the writer stops (then drains the queue first) or every
    /// [`super::MessageWriter`] is gone.
    pub async fn run(self, mut queue: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        let mut session = self.store.writer_session();
        let mut stopping = false;
        loop {
            let taken = tokio::select! {
                biased;
                taken = queue.recv_many(&mut jobs, self.max_batch) => taken,
                // Closing lets what is already queued through and refuses
                // the rest; recv_many then ends with 0 once drained.
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    queue.close();
                    continue;
                }
            };
            if taken == 0 {
                break;
            }
            self.write(&mut session, &mut jobs).await;
        }
    }

    /// Commits one batch (`jobs` is left empty), publishes what it created
    /// and answers every caller.
    async fn write(&self, session: &mut WriterSession, jobs: &mut Vec<Job>) {
        let (messages, replies): (Vec<NewMessage>, Vec<oneshot::Sender<Outcome>>) =
            jobs.drain(..).map(|job| (job.message, job.reply)).unzip();
        self.metrics.observe_batch(messages.len());
        let outcomes: Vec<Outcome> = match session.append_batch(&self.store, &messages).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // The database is unreachable (or the commit's fate unknown):
            // retrying message by message would only repeat the wait, and
            // after an unknown commit it could store messages twice.
            Err(err) if err.is_unavailable() => {
                tracing::warn!(error = %err, size = messages.len(), "message batch failed");
                let cause = Arc::new(err);
                messages
                    .iter()
                    .map(|_| Err(StoreError::Batch(cause.clone())))
                    .collect()
            }
            // Nothing was written. One message may have brought the whole
            // transaction down (a service key used concurrently on another
            // shard or replica, a constraint): alone, each message meets
            // its own fate and the others are stored.
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    size = messages.len(),
                    "message batch failed; writing its messages one by one"
                );
                self.metrics.observe_fallback();
                let mut outcomes = Vec::with_capacity(messages.len());
                for message in &messages {
                    outcomes.push(self.store.append_message(message).await);
                }
                outcomes
            }
        };
        // Committed: announce in batch order, which is seq order within
        // each thread, before anyone hears back (as when one message was
        // one transaction).
        for outcome in &outcomes {
            match outcome {
                Ok(Some(Appended::Created(stored, event))) => self.publish(stored, event.as_ref()),
                Ok(Some(Appended::Blocked { event, .. })) => {
                    self.live.publish_integration(event.clone());
                }
                _ => {}
            }
        }
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that stopped waiting still had its message stored.
            let _ = reply.send(outcome);
        }
    }

    fn publish(&self, stored: &crate::domain::Message, event: Option<&IntegrationEventRecord>) {
        self.live.publish(ChatEvent {
            thread_id: stored.thread_id,
            kind: EventKind::MessageCreated(stored.clone()),
        });
        if let Some(event) = event {
            self.live.publish_integration(event.clone());
        }
    }
}
