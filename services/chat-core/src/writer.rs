//! The send path's single door: every new message, from a user or a
//! service, is appended through [`MessageWriter`].
//!
//! Keeping one door matters for SPEC §8. PostgreSQL commits roughly as many
//! single-message transactions per second as the 10,000 messages/s target,
//! so the writer will batch concurrent appends into one transaction (group
//! commit) and publish the committed messages to subscribers in seq order.
//! Callers already await a per-message outcome, so both can land here
//! without touching them.

use crate::store::{Appended, NewMessage, Store, StoreError};

/// Appends messages to the store; the one place where seq is assigned.
#[derive(Debug, Clone)]
pub struct MessageWriter {
    store: Store,
}

impl MessageWriter {
    /// A writer over `store`.
    pub fn new(store: Store) -> Self {
        MessageWriter { store }
    }

    /// Appends one message and returns it with its seq once committed.
    /// `None` when the thread does not exist or the sender is not in it.
    pub async fn append(&self, message: NewMessage) -> Result<Option<Appended>, StoreError> {
        self.store.append_message(&message).await
    }
}
