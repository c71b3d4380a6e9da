//! The JSON shapes of docs/api.md#data-model and #rest-api, built from chat-core's protobuf
//! messages: every field present, absent values as `null`, timestamps in
//! RFC 3339 UTC.

use std::fmt::Write as _;

use chat_proto::{Timestamp, v1 as pb};
use serde::de::IgnoredAny;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// Why a client's JSON was refused.
#[derive(Debug, thiserror::Error)]
pub enum JsonInputError {
    /// Not JSON at all (or nested too deep).
    #[error("not valid JSON")]
    Syntax,
    /// An object names the same key twice. Parsers disagree on which one
    /// wins (a proxy or a WAF in front may check the other one), so the
    /// input is refused instead of picking one.
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
}

/// Parses a client's JSON (a REST body, a WebSocket frame) as
/// `serde_json` does, except that an object with a duplicate key is an
/// error rather than last-one-wins.
pub fn parse_client_json(input: &[u8]) -> Result<Value, JsonInputError> {
    check_duplicate_keys(input)?;
    serde_json::from_slice(input).map_err(|_| JsonInputError::Syntax)
}

/// Checks a client's JSON for duplicate keys without building it: for a
/// WebSocket frame, parsed once more straight into its typed shape, this
/// costs a borrowed key list per object instead of a whole `Value` tree.
pub fn check_duplicate_keys(input: &[u8]) -> Result<(), JsonInputError> {
    let mut deserializer = serde_json::Deserializer::from_slice(input);
    KeyCheck
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|err| classify(&err))
}

fn classify(err: &serde_json::Error) -> JsonInputError {
    match err.classify() {
        serde_json::error::Category::Data => {
            // The one data error `KeyCheck` makes: "duplicate
            // key K at line L column C".
            let message = err.to_string();
            let key = message.strip_prefix(DUPLICATE).unwrap_or(&message);
            let key = key.rsplit_once(" at line ").map_or(key, |(key, _)| key);
            JsonInputError::DuplicateKey(key.to_owned())
        }
        _ => JsonInputError::Syntax,
    }
}

/// The error for `key`, seen twice.
fn duplicate<E: serde::de::Error>(key: &str) -> E {
    let mut end = key.len().min(MAX_QUOTED_KEY);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    E::custom(format_args!("{DUPLICATE}{}", &key[..end]))
}

/// Walks any JSON value, refusing duplicate keys at every depth.
struct KeyCheck;

impl<'de> DeserializeSeed<'de> for KeyCheck {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyCheck {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(KeyCheck)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        // Frames have a handful of keys: a list beats a set for those; a
        // set keeps an object of thousands of keys from costing their
        // square.
        const FEW: usize = 16;
        let mut few: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut many = std::collections::HashSet::new();
        while let Some(key) = access.next_key_seed(Key)? {
            let repeated = if few.len() < FEW {
                let repeated = few.contains(&key);
                few.push(key.clone());
                repeated
            } else {
                few.contains(&key) || !many.insert(key.clone())
            };
            if repeated {
                return Err(duplicate(&key));
            }
            access.next_value_seed(KeyCheck)?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the input unless it holds escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }
}

const DUPLICATE: &str = "duplicate key ";

/// Longest key quoted back in an error.
const MAX_QUOTED_KEY: usize = 64;

pub use chat_proto::time::rfc3339;
use chat_proto::time::write_rfc3339;

fn time(timestamp: Option<&Timestamp>) -> Value {
    timestamp.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn message_type(value: i32) -> &'static str {
    match pb::MessageType::try_from(value) {
        Ok(pb::MessageType::System) => "system",
        Ok(pb::MessageType::Payment) => "payment",
        Ok(pb::MessageType::Dispute) => "dispute",
        Ok(pb::MessageType::JobUpdate) => "job_update",
        _ => "text",
    }
}

/// A message as docs/api.md#data-model shows it.
pub fn message(message: &pb::Message) -> Value {
    let metadata = serde_json::from_str::<Value>(&message.metadata_json)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()));
    json!({
        "id": message.id,
        "thread_id": message.thread_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "message_type": message_type(message.message_type),
        "content": message.content,
        "metadata": metadata,
        "client_msg_id": message.client_msg_id,
        "created_at": time(message.created_at.as_ref()),
        "edited_at": time(message.edited_at.as_ref()),
        "deleted_at": time(message.deleted_at.as_ref()),
        "flags": message.flags,
    })
}

/// A signed transcript export. Each entry's fields are shown exactly as
/// they were hashed (its `metadata` as the JSON object it is, `at` as the
/// very text), so anyone can recompute the chain from this document.
pub fn transcript(export: &pb::ExportTranscriptResponse) -> Value {
    let entries: Vec<Value> = export
        .entries
        .iter()
        .map(|entry| {
            let metadata = entry.metadata_json.as_deref().map_or(Value::Null, |text| {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
            });
            json!({
                "n": entry.n,
                "kind": entry.kind,
                "message_id": entry.message_id,
                "seq": entry.seq,
                "sender_id": entry.sender_id,
                "message_type": entry.message_type,
                "content": entry.content,
                "metadata": metadata,
                "at": entry.at,
                "hash": entry.hash,
            })
        })
        .collect();
    json!({
        "thread_id": export.thread_id,
        "entries": entries,
        "head_hash": export.head_hash,
        "exported_at": export.exported_at,
        "key_id": export.key_id,
        "signature": export.signature,
    })
}

/// A JSON object written straight into its text.
///
/// Why: the WebSocket path writes a frame for every event and every ack,
/// thousands a second; building a `Value` tree first costs an allocation
/// per key and value and dominated the gateway's profile. Keys are written
/// as given, so callers pass plain ASCII names.
pub struct ObjectWriter {
    out: String,
    /// Whether the object being written has no member yet.
    empty: bool,
}

impl ObjectWriter {
    /// An empty object, with room for a typical chat frame.
    pub fn new() -> ObjectWriter {
        let mut out = String::with_capacity(384);
        out.push('{');
        ObjectWriter { out, empty: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        &mut self.out
    }

    /// A string member.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let out = self.key(key);
        write_str(out, value);
        self
    }

    /// A string member, `null` when absent.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    /// An integer member.
    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        let out = self.key(key);
        let _ = write!(out, "{value}");
        self
    }

    /// A boolean member.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    /// A `null` member.
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).push_str("null");
        self
    }

    /// A timestamp member in RFC 3339, `null` when absent.
    pub fn time(&mut self, key: &str, value: Option<&Timestamp>) -> &mut Self {
        match value {
            Some(value) => {
                let out = self.key(key);
                out.push('"');
                write_rfc3339(out, value);
                out.push('"');
                self
            }
            None => self.null(key),
        }
    }

    /// A nested object member, written by `members`.
    pub fn object(&mut self, key: &str, members: impl FnOnce(&mut Self)) -> &mut Self {
        self.key(key).push('{');
        self.empty = true;
        members(self);
        self.out.push('}');
        self.empty = false;
        self
    }

    /// A message member, as [`message`] shows it.
    pub fn message(&mut self, key: &str, message: &pb::Message) -> &mut Self {
        self.object(key, |w| {
            w.str("id", &message.id)
                .str("thread_id", &message.thread_id)
                .int("seq", message.seq)
                .opt_str("sender_id", message.sender_id.as_deref())
                .str("message_type", message_type(message.message_type))
                .str("content", &message.content);
            // chat-core stores only objects; anything else shows as `{}`,
            // as in [`message`]. Validated without building a tree.
            let metadata = message.metadata_json.trim();
            let is_object =
                metadata.starts_with('{') && serde_json::from_str::<IgnoredAny>(metadata).is_ok();
            w.key("metadata")
                .push_str(if is_object { metadata } else { "{}" });
            w.opt_str("client_msg_id", message.client_msg_id.as_deref())
                .time("created_at", message.created_at.as_ref())
                .time("edited_at", message.edited_at.as_ref())
                .time("deleted_at", message.deleted_at.as_ref())
                .str_list("flags", &message.flags);
        })
    }

    /// An array of strings.
    pub fn str_list(&mut self, key: &str, values: &[String]) -> &mut Self {
        let out = self.key(key);
        out.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(out, value);
        }
        out.push(']');
        self
    }

    /// The object's text.
    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

impl Default for ObjectWriter {
    fn default() -> Self {
        ObjectWriter::new()
    }
}

/// Writes `value` as a JSON string: quotes, backslashes and control
/// characters escaped, everything else as is (JSON text is UTF-8).
fn write_str(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    let mut plain = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[plain..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        plain = at + 1;
    }
    out.push_str(&value[plain..]);
    out.push('"');
}

/// A thread as docs/api.md#data-model shows it, with the caller's read state and (in
/// lists) the last message.
pub fn thread(thread: &pb::Thread) -> Value {
    json!({
        "id": thread.id,
        "participants": thread.participants,
        "job_id": thread.job_id,
        "title": thread.title,
        "created_by": thread.created_by,
        "created_at": time(thread.created_at.as_ref()),
        "last_message_at": time(thread.last_message_at.as_ref()),
        "last_seq": thread.last_seq,
        "last_read_seq": thread.last_read_seq,
        "unread_count": thread.unread_count,
        "last_message": thread.last_message.as_ref().map_or(Value::Null, message),
        "contact_policy": thread.contact_policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(content: &str, metadata: &str, client_msg_id: Option<&str>) -> pb::Message {
        pb::Message {
            id: "m-1".into(),
            thread_id: "t-1".into(),
            seq: 42,
            sender_id: Some("user \"q\"".into()),
            message_type: pb::MessageType::Payment.into(),
            content: content.into(),
            metadata_json: metadata.into(),
            client_msg_id: client_msg_id.map(Into::into),
            created_at: Some(Timestamp {
                seconds: 1_795_651_445,
                nanos: 123_456_789,
            }),
            edited_at: None,
            deleted_at: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            flags: if content.is_empty() {
                Vec::new()
            } else {
                vec!["email".into(), "phone \"q\"".into()]
            },
            masked_content: None,
        }
    }

    #[test]
    fn writer_matches_the_value_shape() {
        let cases = [
            sample(
                "plain",
                r#"{"amount": 5, "nested": {"a": [1, "x"]}}"#,
                Some("c-1"),
            ),
            sample(
                "quote \" backslash \\ nl \n tab \t cr \r bell \u{7} nul \u{0} é 😀 \u{202e}",
                "",
                None,
            ),
            sample("", "[1,2]", None),
            sample("x", "{not json", Some("")),
            sample("x", "  {}  ", None),
        ];
        for message in cases {
            let mut writer = ObjectWriter::new();
            writer
                .str("type", "ack")
                .int("n", -7)
                .bool("b", false)
                .message("message", &message);
            let text = writer.finish();
            let parsed: Value = serde_json::from_str(&text).expect(&text);
            assert_eq!(
                parsed,
                json!({"type": "ack", "n": -7, "b": false, "message": super::message(&message)}),
                "{text}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        assert_eq!(
            parse_client_json(br#"{"a": [1, {"b": null}], "c": 1.5}"#).unwrap(),
            json!({"a": [1, {"b": null}], "c": 1.5})
        );
        for (input, key) in [
            (&br#"{"a": 1, "a": 2}"#[..], "a"),
            (br#"{"m": {"x": 1, "y": 2, "x": 3}}"#, "x"),
            (br#"[{"k": 1, "\u006b": 2}]"#, "k"),
        ] {
            match parse_client_json(input) {
                Err(JsonInputError::DuplicateKey(found)) => assert_eq!(found, key),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            parse_client_json(b"{\"a\": 1} x"),
            Err(JsonInputError::Syntax)
        ));
        let long = format!(r#"{{"{0}": 1, "{0}": 2}}"#, "é".repeat(100));
        match parse_client_json(long.as_bytes()) {
            Err(JsonInputError::DuplicateKey(found)) => assert_eq!(found, "é".repeat(32)),
            other => panic!("{other:?}"),
        }
        // The check alone finds the same.
        assert!(check_duplicate_keys(br#"{"a": [1, {"b": null}], "c": 1.5}"#).is_ok());
        for (input, key) in [
            (&br#"{"a": 1, "a": 2}"#[..], "a"),
            (br#"{"m": {"x": 1, "y": 2, "x": 3}}"#, "x"),
            (br#"[{"k": 1, "\u006b": 2}]"#, "k"),
        ] {
            match check_duplicate_keys(input) {
                Err(JsonInputError::DuplicateKey(found)) => assert_eq!(found, key),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            check_duplicate_keys(b"{\"a\": 1"),
            Err(JsonInputError::Syntax)
        ));
        // Past the first few keys too.
        let keys: Vec<String> = (0..100).map(|i| format!("\"k{i}\": {i}")).collect();
        let wide = format!("{{{}, \"k3\": 0}}", keys.join(", "));
        match check_duplicate_keys(wide.as_bytes()) {
            Err(JsonInputError::DuplicateKey(found)) => assert_eq!(found, "k3"),
            other => panic!("{other:?}"),
        }
        let wide = format!("{{{}, \"k99\": 0}}", keys.join(", "));
        assert!(check_duplicate_keys(wide.as_bytes()).is_err());
        let wide = format!("{{{}}}", keys.join(", "));
        assert!(check_duplicate_keys(wide.as_bytes()).is_ok());
    }

    #[test]
    fn formats_rfc3339_utc() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5_000, "2000-02-29T00:00:00.000005Z"),
            (1_795_651_445, 123_456_789, "2026-11-26T00:04:05.123456Z"),
            (4_107_542_399, 999_999_000, "2100-02-28T23:59:59.999999Z"),
        ];
        for (seconds, nanos, expected) in cases {
            assert_eq!(rfc3339(&Timestamp { seconds, nanos }), expected);
        }
    }
}
