//! Live events: what happened in a thread, as it travels from the replica
//! that committed it to every subscriber. Events are shared (`Arc`) between
//! all the subscribers of a thread, never copied per subscriber.

use std::sync::Arc;

use uuid::Uuid;

use crate::domain::{Message, Thread};

/// Where an event is published and who hears it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Everything that happens in one thread.
    Thread(Uuid),
    /// What concerns one user beyond their known threads: being added to a
    /// new thread.
    User(String),
    /// Integration events, for the services that watch them.
    Integration,
}

/// One live event.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatEvent {
    pub thread_id: Uuid,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A new message; its seq orders the thread's stream.
    MessageCreated(Message),
    /// A message's content changed.
    MessageUpdated(Message),
    /// A message was deleted.
    MessageDeleted { message_id: Uuid, seq: i64 },
    /// A participant's read cursor moved.
    MessagesRead { user_id: String, up_to_seq: i64 },
    /// A participant started or stopped typing. Never stored.
    Typing { user_id: String, is_typing: bool },
    /// A thread was created with the subscriber among its participants.
    ThreadCreated(Thread),
    /// A thread's title changed.
    ThreadUpdated(Thread),
    /// The first event of a user-wide stream: each thread and the seq the
    /// stream starts after.
    Synced(std::collections::HashMap<Uuid, i64>),
    /// An integration event was committed (published on
    /// [`Topic::Integration`] only, for `WatchIntegrationEvents`).
    Integration(crate::store::IntegrationEventRecord),
    /// A co-participant came online or went offline (published on
    /// [`Topic::User`] of each user who shares a thread with them).
    Presence {
        user_id: String,
        online: bool,
        last_seen_at: Option<crate::domain::UnixMicros>,
    },
    /// Internal: notifications may have been lost (the cross-replica bus
    /// reconnected); subscribers catch up from the database. Never sent.
    Resync { generation: u64 },
}

impl ChatEvent {
    /// The seq of the message this event is about (0 when none).
    pub fn seq(&self) -> i64 {
        match &self.kind {
            EventKind::MessageCreated(m) | EventKind::MessageUpdated(m) => m.seq,
            EventKind::MessageDeleted { seq, .. } => *seq,
            _ => 0,
        }
    }
}

/// An event as shared between subscribers.
pub type SharedEvent = Arc<ChatEvent>;
