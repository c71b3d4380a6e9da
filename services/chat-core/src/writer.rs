//! The send path's single door: every new message, from a user or a
//! service, is appended through [`MessageWriter`].
//!
//! Keeping one door matters for SPEC §8. PostgreSQL commits roughly as many
//! single-message transactions per second as the 10,000 messages/s target,
//! so the writer will batch concurrent appends into one transaction (group
//! commit) and publish the committed messages to subscribers in seq order.
//! Callers already await a per-message outcome, so both can land here
//! without touching them.

use crate::{
    events::{ChatEvent, EventKind},
    live::LiveEvents,
    store::{Appended, IntegrationEventRecord, NewMessage, Store, StoreError},
};

/// Appends messages to the store; the one place where seq is assigned.
#[derive(Debug, Clone)]
pub struct MessageWriter {
    store: Store,
    live: LiveEvents,
}

impl MessageWriter {
    /// A writer over `store`, announcing new messages through `live`.
    pub fn new(store: Store, live: LiveEvents) -> Self {
        MessageWriter { store, live }
    }

    /// Appends one message and returns it with its seq once committed,
    /// after announcing it to live subscribers. `None` when the thread does
    /// not exist or the sender is not in it.
    pub async fn append(&self, message: NewMessage) -> Result<Option<Appended>, StoreError> {
        let appended = self.store.append_message(&message).await?;
        if let Some(Appended::Created(stored, event_id)) = &appended {
            self.live.publish(ChatEvent {
                thread_id: stored.thread_id,
                kind: EventKind::MessageCreated(stored.clone()),
            });
            if let (Some(id), Some(event)) = (event_id, message.event) {
                self.live.publish_integration(IntegrationEventRecord {
                    id: *id,
                    event_type: event.event_type,
                    thread_id: stored.thread_id,
                    message_id: stored.id,
                    actor_id: event.actor_id,
                    payload: event.payload,
                    created_at: stored.created_at,
                });
            }
        }
        Ok(appended)
    }
}
