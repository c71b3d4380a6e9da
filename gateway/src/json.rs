//! The JSON shapes of SPEC §3 and §4, built from chat-core's protobuf
//! messages: every field present, absent values as `null`, timestamps in
//! RFC 3339 UTC.

use chat_proto::{Timestamp, v1 as pb};
use serde_json::{Map, Value, json};

/// `2026-11-25T10:04:05.123456Z`: RFC 3339, UTC, microseconds.
pub fn rfc3339(timestamp: &Timestamp) -> String {
    let seconds = timestamp.seconds;
    let days = seconds.div_euclid(86_400);
    let in_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        timestamp.nanos / 1_000
    )
}

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

/// A message as SPEC §3 shows it.
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
    })
}

/// A thread as SPEC §3 shows it, with the caller's read state and (in
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
