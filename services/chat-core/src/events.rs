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

/// Presence changes of many users, each with everyone who hears it (the
/// users who share a thread with them): what the announcer hands the bus
/// in one piece, and what crosses replicas as one message, instead of one
/// event per (user, co-participant). Each replica hands every change to
/// the local subscribers of its audience's [`Topic::User`] as an
/// [`EventKind::Presence`] event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PresenceBatch {
    pub notices: Vec<PresenceNotice>,
}

/// One user's presence change and who hears it.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceNotice {
    pub user_id: String,
    pub online: bool,
    pub last_seen_at: Option<crate::domain::UnixMicros>,
    /// The users told, each once.
    pub audience: Vec<String>,
}

impl PresenceBatch {
    /// How many (change, listener) pairs the batch carries.
    pub fn pairs(&self) -> usize {
        self.notices.iter().map(|n| n.audience.len()).sum()
    }

    /// Each change as the event its audience's subscribers get, with the
    /// topics it goes to; the event is shared by its whole audience.
    pub fn deliveries(&self) -> impl Iterator<Item = (SharedEvent, &[String])> {
        self.notices.iter().map(|notice| {
            let event = Arc::new(ChatEvent {
                thread_id: Uuid::nil(),
                kind: EventKind::Presence {
                    user_id: notice.user_id.clone(),
                    online: notice.online,
                    last_seen_at: notice.last_seen_at,
                },
            });
            (event, notice.audience.as_slice())
        })
    }
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
    /// A co-participant came online or went offline (delivered on
    /// [`Topic::User`] of each user who shares a thread with them; it
    /// crosses replicas inside a [`PresenceBatch`]).
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
