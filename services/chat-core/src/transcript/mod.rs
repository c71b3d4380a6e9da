//! Dispute-grade transcripts: every thread's hash-chained record of what
//! happened in it (each message as first stored, each edit, each deletion),
//! signed when exported.
//!
//! Entry `n` hashes as `SHA-256(hash(n-1) ‖ JCS(entry n))`, starting from
//! `SHA-256(thread id)`. The store extends a thread's chain in the same
//! transaction as the message, edit or deletion it records, so a record
//! and its entry can never exist without each other; changing a stored
//! entry afterwards, or a message row it was built from, breaks the chain
//! from that entry on.

pub mod jcs;
pub mod signing;
pub mod verify;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::UnixMicros;

/// A SHA-256 chain link.
pub type Hash = [u8; 32];

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A message as first stored.
    Message,
    /// A new content for a message.
    Edit,
    /// A message's deletion.
    Delete,
}

impl EntryKind {
    /// As written in entries.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Message => "message",
            EntryKind::Edit => "edit",
            EntryKind::Delete => "delete",
        }
    }

    /// The kind named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "message" => Some(EntryKind::Message),
            "edit" => Some(EntryKind::Edit),
            "delete" => Some(EntryKind::Delete),
            _ => None,
        }
    }
}

/// One transcript entry, borrowed from wherever its fields live.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub n: i64,
    pub kind: EntryKind,
    pub message_id: Uuid,
    pub seq: i64,
    /// The message's sender (`message`), or who edited or deleted it.
    pub sender_id: Option<&'a str>,
    pub message_type: &'a str,
    /// `None` for a deletion.
    pub content: Option<&'a str>,
    /// The metadata object as JSON text; `None` for a deletion.
    pub metadata: Option<&'a str>,
    pub at: UnixMicros,
}

/// A chain's starting point: SHA-256 of the thread id's text.
pub fn genesis(thread_id: Uuid) -> Hash {
    Sha256::digest(thread_id.to_string().as_bytes()).into()
}

/// The hash of `entry` following `previous`.
pub fn link(previous: &Hash, entry: &Entry<'_>) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical_entry(entry).as_bytes());
    hasher.finalize().into()
}

/// The entry as RFC 8785 canonical JSON: members in key order (`at`,
/// `content`, `kind`, `message_id`, `message_type`, `metadata`, `n`,
/// `sender_id`, `seq`). Written directly rather than through a
/// `serde_json::Value`, as this runs for every message sent; only a
/// non-empty metadata object is parsed, to canonicalize it.
pub fn canonical_entry(entry: &Entry<'_>) -> String {
    let mut out = String::with_capacity(256 + entry.content.map_or(0, str::len));
    out.push_str("{\"at\":\"");
    chat_proto::time::write_rfc3339(&mut out, &micros_timestamp(entry.at));
    out.push_str("\",\"content\":");
    match entry.content {
        Some(content) => jcs::write_string(&mut out, content),
        None => out.push_str("null"),
    }
    out.push_str(",\"kind\":\"");
    out.push_str(entry.kind.as_str());
    out.push_str("\",\"message_id\":\"");
    out.push_str(&entry.message_id.to_string());
    out.push_str("\",\"message_type\":");
    jcs::write_string(&mut out, entry.message_type);
    out.push_str(",\"metadata\":");
    match entry.metadata {
        None => out.push_str("null"),
        Some("{}") => out.push_str("{}"),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => jcs::write_value(&mut out, &value),
            // Stored metadata is always a validated object; should a row be
            // damaged, its text still goes into the hash as a string, so
            // the entry cannot verify against the original.
            Err(_) => jcs::write_string(&mut out, text),
        },
    }
    out.push_str(",\"n\":");
    out.push_str(&entry.n.to_string());
    out.push_str(",\"sender_id\":");
    match entry.sender_id {
        Some(sender) => jcs::write_string(&mut out, sender),
        None => out.push_str("null"),
    }
    out.push_str(",\"seq\":");
    out.push_str(&entry.seq.to_string());
    out.push('}');
    out
}

/// `at` as hashed: RFC 3339, UTC, microseconds.
pub fn at_text(at: UnixMicros) -> String {
    chat_proto::time::rfc3339_micros(at)
}

fn micros_timestamp(at: UnixMicros) -> chat_proto::Timestamp {
    chat_proto::Timestamp {
        seconds: at.div_euclid(1_000_000),
        nanos: (at.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Lowercase hex, as hashes are shown.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// A stored head, or the genesis hash of a thread with no entry yet.
pub fn head_or_genesis(thread_id: Uuid, stored: Option<&[u8]>) -> Hash {
    stored
        .and_then(|bytes| <Hash>::try_from(bytes).ok())
        .unwrap_or_else(|| genesis(thread_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_entry_matches_the_generic_canonicalization() {
        let id = Uuid::parse_str("0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f").unwrap();
        let entry = Entry {
            n: 3,
            kind: EntryKind::Edit,
            message_id: id,
            seq: 7,
            sender_id: Some("alice"),
            message_type: "text",
            content: Some("new \"text\"\n"),
            metadata: Some(r#"{"z":1.50,"a":[1,"x"]}"#),
            at: 1_795_521_845_123_456,
        };
        let generic = jcs::canonical(&serde_json::json!({
            "n": 3, "kind": "edit", "message_id": id.to_string(), "seq": 7,
            "sender_id": "alice", "message_type": "text", "content": "new \"text\"\n",
            "metadata": {"z": 1.5, "a": [1, "x"]}, "at": "2026-11-24T12:04:05.123456Z",
        }));
        assert_eq!(canonical_entry(&entry), generic);

        let deletion = Entry {
            kind: EntryKind::Delete,
            content: None,
            metadata: None,
            sender_id: None,
            ..entry
        };
        assert!(canonical_entry(&deletion).contains("\"content\":null,"));
        assert!(canonical_entry(&deletion).contains("\"sender_id\":null,"));
    }

    #[test]
    fn genesis_hashes_the_thread_id_text() {
        let id = Uuid::parse_str("0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f").unwrap();
        assert_eq!(
            hex(&genesis(id)),
            hex(&Sha256::digest(b"0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f"))
        );
    }
}
