//! Conversions between chat's domain types and their `chat.v1` protobuf
//! form: for gRPC responses, and for events crossing replicas over Redis.

use chat_proto::{Timestamp, v1 as pb};
use uuid::Uuid;

use crate::{
    domain::{Caller, Message, MessageKind, Thread, ThreadView, UnixMicros},
    events::{ChatEvent, EventKind, PresenceBatch, PresenceNotice},
    store::IntegrationEventRecord,
};

pub fn timestamp(micros: UnixMicros) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

pub fn message_type(kind: MessageKind) -> pb::MessageType {
    match kind {
        MessageKind::Text => pb::MessageType::Text,
        MessageKind::System => pb::MessageType::System,
        MessageKind::Payment => pb::MessageType::Payment,
        MessageKind::Dispute => pb::MessageType::Dispute,
        MessageKind::JobUpdate => pb::MessageType::JobUpdate,
    }
}

/// A stored message in `chat.v1` form.
pub fn message_to_proto(message: Message) -> pb::Message {
    pb::Message {
        id: message.id.to_string(),
        thread_id: message.thread_id.to_string(),
        seq: message.seq,
        sender_id: message.sender_id,
        message_type: message_type(message.kind).into(),
        content: message.content,
        metadata_json: message.metadata,
        client_msg_id: message.client_msg_id,
        created_at: Some(timestamp(message.created_at)),
        edited_at: message.edited_at.map(timestamp),
        deleted_at: message.deleted_at.map(timestamp),
        flags: message.flags,
        masked_content: message.masked_content,
    }
}

/// A thread, as one caller sees it, in `chat.v1` form.
pub fn thread_to_proto(view: ThreadView) -> pb::Thread {
    let unread_count = view.unread_count();
    let thread = view.thread;
    pb::Thread {
        id: thread.id.to_string(),
        participants: thread.participants,
        job_id: thread.job_id,
        title: thread.title,
        created_by: thread.created_by,
        created_at: Some(timestamp(thread.created_at)),
        last_message_at: thread.last_message_at.map(timestamp),
        last_seq: thread.last_seq,
        last_read_seq: view.last_read_seq,
        unread_count,
        last_message: view.last_message.map(message_to_proto),
        contact_policy: thread.contact_policy.map(|p| p.as_str().to_owned()),
    }
}

/// A thread in `chat.v1` form, without per-caller read state (events).
pub fn plain_thread_to_proto(thread: Thread) -> pb::Thread {
    thread_to_proto(ThreadView {
        thread,
        last_read_seq: 0,
        as_participant: false,
        last_message: None,
    })
}

/// A live event in `chat.v1` form, as `caller` may see it. Internal
/// signals (a resync) have no wire form.
pub fn event_to_proto(event: &ChatEvent, caller: &Caller) -> Option<pb::Event> {
    use pb::event::Kind;
    let kind = match &event.kind {
        EventKind::MessageCreated(message) => Kind::MessageCreated(pb::MessageCreated {
            message: Some(message_to_proto(message.clone().as_seen_by(caller))),
        }),
        EventKind::MessageUpdated(message) => Kind::MessageUpdated(pb::MessageUpdated {
            message: Some(message_to_proto(message.clone().as_seen_by(caller))),
        }),
        EventKind::MessageDeleted { message_id, .. } => Kind::MessageDeleted(pb::MessageDeleted {
            message_id: message_id.to_string(),
        }),
        EventKind::MessagesRead { user_id, up_to_seq } => Kind::MessagesRead(pb::MessagesRead {
            user_id: user_id.clone(),
            up_to_seq: *up_to_seq,
        }),
        EventKind::Typing { user_id, is_typing } => Kind::Typing(pb::Typing {
            user_id: user_id.clone(),
            is_typing: *is_typing,
        }),
        EventKind::ThreadCreated(thread) => Kind::ThreadCreated(pb::ThreadCreated {
            thread: Some(plain_thread_to_proto(thread.clone())),
        }),
        EventKind::ThreadUpdated(thread) => Kind::ThreadUpdated(pb::ThreadUpdated {
            thread: Some(plain_thread_to_proto(thread.clone())),
        }),
        EventKind::Synced(last_seqs) => Kind::Synced(pb::Synced {
            last_seqs: last_seqs
                .iter()
                .map(|(thread, seq)| (thread.to_string(), *seq))
                .collect(),
        }),
        EventKind::Presence {
            user_id,
            online,
            last_seen_at,
        } => Kind::Presence(pb::PresenceChanged {
            user_id: user_id.clone(),
            online: *online,
            last_seen_at: last_seen_at.map(timestamp),
        }),
        EventKind::Resync { .. } | EventKind::Integration(_) => return None,
    };
    Some(pb::Event {
        // Presence concerns a user, not a thread.
        thread_id: if matches!(event.kind, EventKind::Presence { .. }) {
            String::new()
        } else {
            event.thread_id.to_string()
        },
        seq: event.seq(),
        kind: Some(kind),
    })
}

/// A [`PresenceBatch`] on the bus between replicas. Internal to chat-core
/// (replicas of one version talk to each other), so it is not part of
/// `chat.v1`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PresenceBatchWire {
    #[prost(message, repeated, tag = "1")]
    pub notices: Vec<PresenceNoticeWire>,
}

/// One [`PresenceNotice`] on the bus.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PresenceNoticeWire {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(bool, tag = "2")]
    pub online: bool,
    /// Microseconds since the epoch; absent if never seen.
    #[prost(int64, optional, tag = "3")]
    pub last_seen_at: Option<i64>,
    #[prost(string, repeated, tag = "4")]
    pub audience: Vec<String>,
}

pub fn presence_batch_to_wire(batch: &PresenceBatch) -> PresenceBatchWire {
    PresenceBatchWire {
        notices: batch
            .notices
            .iter()
            .map(|notice| PresenceNoticeWire {
                user_id: notice.user_id.clone(),
                online: notice.online,
                last_seen_at: notice.last_seen_at,
                audience: notice.audience.clone(),
            })
            .collect(),
    }
}

pub fn presence_batch_from_wire(batch: PresenceBatchWire) -> PresenceBatch {
    PresenceBatch {
        notices: batch
            .notices
            .into_iter()
            .map(|notice| PresenceNotice {
                user_id: notice.user_id,
                online: notice.online,
                last_seen_at: notice.last_seen_at,
                audience: notice.audience,
            })
            .collect(),
    }
}

fn micros(timestamp: &Timestamp) -> UnixMicros {
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos) / 1_000
}

fn kind_from_proto(value: i32) -> Option<MessageKind> {
    Some(match pb::MessageType::try_from(value).ok()? {
        pb::MessageType::Text => MessageKind::Text,
        pb::MessageType::System => MessageKind::System,
        pb::MessageType::Payment => MessageKind::Payment,
        pb::MessageType::Dispute => MessageKind::Dispute,
        pb::MessageType::JobUpdate => MessageKind::JobUpdate,
        pb::MessageType::Unspecified => return None,
    })
}

/// A message back from its wire form; `None` when malformed.
pub fn message_from_proto(message: pb::Message) -> Option<Message> {
    Some(Message {
        id: Uuid::parse_str(&message.id).ok()?,
        thread_id: Uuid::parse_str(&message.thread_id).ok()?,
        seq: message.seq,
        sender_id: message.sender_id,
        kind: kind_from_proto(message.message_type)?,
        content: message.content,
        metadata: message.metadata_json,
        client_msg_id: message.client_msg_id,
        created_at: micros(message.created_at.as_ref()?),
        edited_at: message.edited_at.as_ref().map(micros),
        deleted_at: message.deleted_at.as_ref().map(micros),
        flags: message.flags,
        masked_content: message.masked_content,
    })
}

/// A thread back from its wire form; `None` when malformed.
pub fn thread_from_proto(thread: pb::Thread) -> Option<Thread> {
    Some(Thread {
        id: Uuid::parse_str(&thread.id).ok()?,
        participants: thread.participants,
        job_id: thread.job_id,
        title: thread.title,
        created_by: thread.created_by,
        created_at: micros(thread.created_at.as_ref()?),
        last_message_at: thread.last_message_at.as_ref().map(micros),
        last_seq: thread.last_seq,
        contact_policy: thread
            .contact_policy
            .as_deref()
            .and_then(crate::domain::ContactPolicy::parse),
    })
}

/// An event back from its wire form (as published, with full content);
/// `None` when malformed.
pub fn event_from_proto(event: pb::Event) -> Option<ChatEvent> {
    use pb::event::Kind;
    let thread_id = if event.thread_id.is_empty() {
        Uuid::nil()
    } else {
        Uuid::parse_str(&event.thread_id).ok()?
    };
    let kind = match event.kind? {
        Kind::MessageCreated(m) => EventKind::MessageCreated(message_from_proto(m.message?)?),
        Kind::MessageUpdated(m) => EventKind::MessageUpdated(message_from_proto(m.message?)?),
        Kind::MessageDeleted(m) => EventKind::MessageDeleted {
            message_id: Uuid::parse_str(&m.message_id).ok()?,
            seq: event.seq,
        },
        Kind::MessagesRead(r) => EventKind::MessagesRead {
            user_id: r.user_id,
            up_to_seq: r.up_to_seq,
        },
        Kind::Typing(t) => EventKind::Typing {
            user_id: t.user_id,
            is_typing: t.is_typing,
        },
        Kind::ThreadCreated(t) => EventKind::ThreadCreated(thread_from_proto(t.thread?)?),
        Kind::ThreadUpdated(t) => EventKind::ThreadUpdated(thread_from_proto(t.thread?)?),
        Kind::Presence(p) => EventKind::Presence {
            user_id: p.user_id,
            online: p.online,
            last_seen_at: p.last_seen_at.as_ref().map(micros),
        },
        // Per subscriber, never published.
        Kind::Synced(_) => return None,
    };
    Some(ChatEvent { thread_id, kind })
}

/// An integration event in `chat.v1` form.
pub fn integration_to_proto(record: &IntegrationEventRecord) -> pb::IntegrationEvent {
    pb::IntegrationEvent {
        id: record.id,
        event_type: record.event_type.clone(),
        thread_id: record.thread_id.to_string(),
        message_id: record.message_id.map(|id| id.to_string()),
        payload_json: record.payload.clone(),
        created_at: Some(timestamp(record.created_at)),
        actor_id: record.actor_id.clone(),
    }
}

/// An integration event back from its wire form; `None` when malformed.
pub fn integration_from_proto(event: pb::IntegrationEvent) -> Option<IntegrationEventRecord> {
    Some(IntegrationEventRecord {
        id: event.id,
        event_type: event.event_type,
        thread_id: Uuid::parse_str(&event.thread_id).ok()?,
        message_id: match event.message_id {
            Some(id) => Some(Uuid::parse_str(&id).ok()?),
            None => None,
        },
        actor_id: event.actor_id,
        payload: event.payload_json,
        created_at: micros(event.created_at.as_ref()?),
    })
}

/// A signed transcript as `ExportTranscript` answers it.
pub fn transcript_to_proto(export: crate::chat::TranscriptExport) -> pb::ExportTranscriptResponse {
    pb::ExportTranscriptResponse {
        thread_id: export.thread_id.to_string(),
        entries: export
            .entries
            .into_iter()
            .map(|entry| pb::TranscriptEntry {
                n: entry.n,
                kind: entry.kind.as_str().to_owned(),
                message_id: entry.message_id.to_string(),
                seq: entry.seq,
                sender_id: entry.sender_id,
                message_type: entry.message_type,
                content: entry.content,
                metadata_json: entry.metadata,
                at: crate::transcript::at_text(entry.at),
                hash: crate::transcript::hex(&entry.hash),
            })
            .collect(),
        head_hash: export.head_hash,
        exported_at: export.exported_at,
        key_id: export.key_id,
        signature: export.signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_wire() {
        let thread_id = Uuid::now_v7();
        let message = Message {
            id: Uuid::now_v7(),
            thread_id,
            seq: 7,
            sender_id: Some("alice".into()),
            kind: MessageKind::Text,
            content: "hi".into(),
            metadata: "{}".into(),
            client_msg_id: Some("c1".into()),
            created_at: 1_700_000_000_123_456,
            edited_at: Some(1_700_000_001_000_001),
            deleted_at: None,
            flags: vec!["email".into()],
            masked_content: Some("[contact hidden]".into()),
        };
        let thread = Thread {
            id: thread_id,
            participants: vec!["alice".into(), "bob".into()],
            job_id: Some("j".into()),
            title: None,
            created_by: "alice".into(),
            created_at: 1_700_000_000_000_000,
            last_message_at: None,
            last_seq: 0,
            contact_policy: Some(crate::domain::ContactPolicy::Mask),
        };
        let service = Caller::Service("bus".into());
        for kind in [
            EventKind::MessageCreated(message.clone()),
            EventKind::MessageUpdated(message.clone()),
            EventKind::MessageDeleted {
                message_id: message.id,
                seq: 7,
            },
            EventKind::MessagesRead {
                user_id: "bob".into(),
                up_to_seq: 3,
            },
            EventKind::Typing {
                user_id: "bob".into(),
                is_typing: true,
            },
            EventKind::ThreadCreated(thread.clone()),
            EventKind::ThreadUpdated(thread.clone()),
            EventKind::Presence {
                user_id: "bob".into(),
                online: false,
                last_seen_at: Some(1_700_000_002_000_003),
            },
        ] {
            // Presence belongs to no thread.
            let thread_id = match kind {
                EventKind::Presence { .. } => Uuid::nil(),
                _ => thread_id,
            };
            let event = ChatEvent { thread_id, kind };
            let wire = event_to_proto(&event, &service).unwrap();
            assert_eq!(event_from_proto(wire).unwrap(), event);
        }
    }

    #[test]
    fn presence_batches_survive_the_wire() {
        use prost::Message as _;
        let batch = PresenceBatch {
            notices: vec![
                PresenceNotice {
                    user_id: "alice".into(),
                    online: true,
                    last_seen_at: None,
                    audience: vec!["bob".into(), "carol".into()],
                },
                PresenceNotice {
                    user_id: "bob".into(),
                    online: false,
                    last_seen_at: Some(1_700_000_002_000_003),
                    audience: vec!["alice".into()],
                },
            ],
        };
        let bytes = presence_batch_to_wire(&batch).encode_to_vec();
        let back = PresenceBatchWire::decode(bytes.as_slice()).unwrap();
        assert_eq!(presence_batch_from_wire(back), batch);
    }
}
