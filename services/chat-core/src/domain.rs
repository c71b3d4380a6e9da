//! Chat's own vocabulary: threads, messages, who is asking, and the rules of
//! docs/api.md#data-model that every input must pass. Nothing here knows about gRPC or SQL,
//! so the same rules hold whichever transport or database is in front.

use std::fmt;

use uuid::Uuid;

/// Microseconds since the Unix epoch, UTC. Stored as a plain integer so that
/// both databases order and compare timestamps identically.
pub type UnixMicros = i64;

/// The current time as [`UnixMicros`].
pub fn now_micros() -> UnixMicros {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// Who is calling: a participant acting for themself, or an internal service
/// that may read every thread but never acts as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user, by the token's `sub`.
    User(String),
    /// An internal service (token with `"role": "service"`), by its `sub`.
    Service(String),
}

impl Caller {
    /// The token's `sub`, user or service.
    pub fn subject(&self) -> &str {
        match self {
            Caller::User(id) | Caller::Service(id) => id,
        }
    }

    /// The user id when the caller is a user.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Caller::User(id) => Some(id),
            Caller::Service(_) => None,
        }
    }
}

/// The kinds of message of docs/api.md#data-model. Users post `Text` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Text,
    System,
    Payment,
    Dispute,
    JobUpdate,
}

impl MessageKind {
    /// The name stored in the database and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::System => "system",
            MessageKind::Payment => "payment",
            MessageKind::Dispute => "dispute",
            MessageKind::JobUpdate => "job_update",
        }
    }

    /// The inverse of [`MessageKind::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "text" => MessageKind::Text,
            "system" => MessageKind::System,
            "payment" => MessageKind::Payment,
            "dispute" => MessageKind::Dispute,
            "job_update" => MessageKind::JobUpdate,
            _ => return None,
        })
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A thread as stored, independent of who looks at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Thread {
    pub id: Uuid,
    /// Sorted user ids.
    pub participants: Vec<String>,
    pub job_id: Option<String>,
    pub title: Option<String>,
    pub created_by: String,
    pub created_at: UnixMicros,
    pub last_message_at: Option<UnixMicros>,
    pub last_seq: i64,
    /// The thread's own contact policy; `None`: the deployment's default.
    pub contact_policy: Option<ContactPolicy>,
}

/// What happens to a user's text that holds contact details (e-mail,
/// phone, links, app handles), so deals stay on the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactPolicy {
    /// Not checked.
    Off,
    /// Stored and delivered as sent, with `flags` and a moderation event.
    Flag,
    /// Users see each finding replaced by `[contact hidden]`; services read
    /// the original.
    Mask,
    /// Not stored: the sender gets `contact_blocked`.
    Block,
}

impl ContactPolicy {
    /// As configured and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactPolicy::Off => "off",
            ContactPolicy::Flag => "flag",
            ContactPolicy::Mask => "mask",
            ContactPolicy::Block => "block",
        }
    }

    /// The inverse of [`ContactPolicy::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "off" => ContactPolicy::Off,
            "flag" => ContactPolicy::Flag,
            "mask" => ContactPolicy::Mask,
            "block" => ContactPolicy::Block,
            _ => return None,
        })
    }
}

/// A thread as one caller sees it: with their read cursor and, in lists, the
/// last message.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadView {
    pub thread: Thread,
    /// The caller's cursor; 0 for services.
    pub last_read_seq: i64,
    /// False for services, which have no read state of their own.
    pub as_participant: bool,
    pub last_message: Option<Message>,
}

impl ThreadView {
    /// `last_seq − last_read_seq`, never negative; 0 for services.
    pub fn unread_count(&self) -> i64 {
        if !self.as_participant {
            return 0;
        }
        (self.thread.last_seq - self.last_read_seq).max(0)
    }
}

/// A stored message. `content` is as stored; hiding deleted content from
/// users is [`Message::as_seen_by`]'s job.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: Uuid,
    pub thread_id: Uuid,
    pub seq: i64,
    pub sender_id: Option<String>,
    pub kind: MessageKind,
    pub content: String,
    /// A JSON object, serialized.
    pub metadata: String,
    pub client_msg_id: Option<String>,
    pub created_at: UnixMicros,
    pub edited_at: Option<UnixMicros>,
    pub deleted_at: Option<UnixMicros>,
    /// The kinds of contact detail found in it (`email`, `phone`, `link`,
    /// `handle`), empty when none.
    pub flags: Vec<String>,
    /// Under the `mask` policy, the content users are shown.
    pub masked_content: Option<String>,
}

impl Message {
    /// The message as `caller` may see it: a deleted message keeps its
    /// content and metadata for services (dispute evidence) only, and a
    /// masked one shows users its masked content.
    pub fn as_seen_by(mut self, caller: &Caller) -> Self {
        if matches!(caller, Caller::User(_)) {
            if let Some(masked) = self.masked_content.take() {
                self.content = masked;
            }
            if self.deleted_at.is_some() {
                self.content.clear();
                self.metadata = EMPTY_METADATA.to_owned();
            }
        }
        self
    }
}

/// Metadata stored when a message has none.
pub const EMPTY_METADATA: &str = "{}";

/// Limits of docs/api.md#data-model.
pub mod limits {
    pub const MIN_PARTICIPANTS: usize = 2;
    pub const MAX_PARTICIPANTS: usize = 50;
    pub const MAX_JOB_ID_CHARS: usize = 128;
    pub const MAX_TITLE_CHARS: usize = 200;
    pub const MAX_CONTENT_CHARS: usize = 4000;
    pub const MAX_METADATA_BYTES: usize = 16 * 1024;
    pub const MAX_CLIENT_MSG_ID_CHARS: usize = 128;
    pub const DEFAULT_THREAD_PAGE: u32 = 20;
    pub const MAX_THREAD_PAGE: u32 = 100;
    pub const DEFAULT_MESSAGE_PAGE: u32 = 50;
    pub const MAX_MESSAGE_PAGE: u32 = 200;
}

/// A rule of docs/api.md#data-model that an input broke; the text is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// Unicode category Cc: C0, DEL and C1.
fn is_control(c: char) -> bool {
    c.is_control()
}

/// A user id: 1–128 characters of `[A-Za-z0-9_.:@-]`.
pub fn validate_user_id(field: &str, id: &str) -> Result<(), Invalid> {
    if chat_auth::is_valid_user_id(id) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field}: a user id is 1-128 characters of [A-Za-z0-9_.:@-]"
        )))
    }
}

/// The participants of a new thread, with the creating user added: distinct
/// valid ids, 2–50 in all, returned sorted.
pub fn validate_participants(
    participants: &[String],
    creator: Option<&str>,
) -> Result<Vec<String>, Invalid> {
    let mut ids: Vec<String> = Vec::with_capacity(participants.len() + 1);
    for id in participants {
        validate_user_id("participants", id)?;
        ids.push(id.clone());
    }
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("participants: ids must be distinct"));
    }
    if let Some(creator) = creator
        && ids.binary_search_by(|id| id.as_str().cmp(creator)).is_err()
    {
        ids.push(creator.to_owned());
        ids.sort_unstable();
    }
    if ids.len() < limits::MIN_PARTICIPANTS || ids.len() > limits::MAX_PARTICIPANTS {
        return Err(invalid(format!(
            "participants: a thread has {}-{} distinct participants, creator included",
            limits::MIN_PARTICIPANTS,
            limits::MAX_PARTICIPANTS
        )));
    }
    Ok(ids)
}

/// The participants of a lookup: the same rules, but the set is taken as
/// given (a user caller must be in it, which the lookup itself enforces).
pub fn validate_participant_set(participants: &[String]) -> Result<Vec<String>, Invalid> {
    validate_participants(participants, None)
}

fn validate_text_field(
    field: &str,
    value: &str,
    max_chars: usize,
    min_chars: usize,
) -> Result<(), Invalid> {
    let count = value.chars().count();
    if count < min_chars || count > max_chars {
        return Err(invalid(format!(
            "{field}: must be {min_chars}-{max_chars} characters"
        )));
    }
    if value.chars().any(is_control) {
        return Err(invalid(format!(
            "{field}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// A job id: 1–128 characters, no control characters.
pub fn validate_job_id(job_id: &str) -> Result<(), Invalid> {
    validate_text_field("job_id", job_id, limits::MAX_JOB_ID_CHARS, 1)
}

/// A title: up to 200 characters, no control characters. An empty title
/// means "no title".
pub fn normalize_title(title: Option<&str>) -> Result<Option<String>, Invalid> {
    match title {
        None | Some("") => Ok(None),
        Some(t) => {
            validate_text_field("title", t, limits::MAX_TITLE_CHARS, 1)?;
            Ok(Some(t.to_owned()))
        }
    }
}

/// Text content: 1–4000 characters; control characters other than
/// `\n \r \t` are refused.
pub fn validate_content(content: &str) -> Result<(), Invalid> {
    let count = content.chars().count();
    if count == 0 || count > limits::MAX_CONTENT_CHARS {
        return Err(invalid(format!(
            "content: must be 1-{} characters",
            limits::MAX_CONTENT_CHARS
        )));
    }
    if content
        .chars()
        .any(|c| is_control(c) && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(
            "content: control characters other than \\n, \\r and \\t are not allowed",
        ));
    }
    Ok(())
}

/// A client message id: 1–128 characters without control characters.
pub fn validate_client_msg_id(id: &str) -> Result<(), Invalid> {
    validate_text_field("client_msg_id", id, limits::MAX_CLIENT_MSG_ID_CHARS, 1)
}

/// Metadata: a JSON object of at most 16 KiB. Returned in compact form, the
/// form that is stored and measured.
pub fn normalize_metadata(metadata: Option<&str>) -> Result<String, Invalid> {
    let Some(text) = metadata else {
        return Ok(EMPTY_METADATA.to_owned());
    };
    if text.len() > 4 * limits::MAX_METADATA_BYTES {
        return Err(metadata_too_large());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| invalid("metadata: must be valid JSON"))?;
    if !value.is_object() {
        return Err(invalid("metadata: must be a JSON object"));
    }
    let compact = value.to_string();
    if compact.len() > limits::MAX_METADATA_BYTES {
        return Err(metadata_too_large());
    }
    Ok(compact)
}

fn metadata_too_large() -> Invalid {
    invalid(format!(
        "metadata: must be at most {} bytes",
        limits::MAX_METADATA_BYTES
    ))
}

/// A page size: 0 means the default; otherwise 1..=max.
pub fn page_limit(requested: i32, default: u32, max: u32) -> Result<u32, Invalid> {
    match requested {
        0 => Ok(default),
        n if n > 0 && (n as u32) <= max => Ok(n as u32),
        _ => Err(invalid(format!("limit: must be 1-{max}"))),
    }
}

/// A sequence number given by a caller: never negative.
pub fn validate_seq(field: &str, seq: i64) -> Result<(), Invalid> {
    if seq < 0 {
        Err(invalid(format!("{field}: must not be negative")))
    } else {
        Ok(())
    }
}

/// A UUID given by a caller. A malformed id names no thread, so callers
/// answer it like an unknown one (NOT_FOUND) where the API asks them to reveal
/// nothing; this parser only says whether it is well formed.
pub fn parse_id(id: &str) -> Option<Uuid> {
    Uuid::parse_str(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participants_get_the_creator_and_are_sorted() {
        let ids = validate_participants(&["zoe".into()], Some("adam")).unwrap();
        assert_eq!(ids, vec!["adam".to_owned(), "zoe".to_owned()]);
        let ids = validate_participants(&["adam".into(), "zoe".into()], Some("adam")).unwrap();
        assert_eq!(ids, vec!["adam".to_owned(), "zoe".to_owned()]);
    }

    #[test]
    fn participants_rules() {
        assert!(validate_participants(&[], Some("a")).is_err());
        assert!(validate_participants(&["a".into()], Some("a")).is_err());
        assert!(validate_participants(&["b".into(), "b".into()], Some("a")).is_err());
        assert!(validate_participants(&["bad id".into()], Some("a")).is_err());
        let fifty: Vec<String> = (0..49).map(|i| format!("u{i}")).collect();
        assert_eq!(validate_participants(&fifty, Some("me")).unwrap().len(), 50);
        let fifty_one: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
        assert!(validate_participants(&fifty_one, Some("me")).is_err());
    }

    #[test]
    fn content_rules() {
        assert!(validate_content("hi\n\tthere\r").is_ok());
        assert!(validate_content("").is_err());
        assert!(validate_content("a\u{0}b").is_err());
        assert!(validate_content("a\u{7f}b").is_err());
        assert!(validate_content("a\u{85}b").is_err());
        assert!(validate_content(&"é".repeat(4000)).is_ok());
        assert!(validate_content(&"é".repeat(4001)).is_err());
    }

    #[test]
    fn metadata_rules() {
        assert_eq!(normalize_metadata(None).unwrap(), "{}");
        assert_eq!(
            normalize_metadata(Some(r#"{ "a" : 1 }"#)).unwrap(),
            r#"{"a":1}"#
        );
        assert!(normalize_metadata(Some("[1]")).is_err());
        assert!(normalize_metadata(Some("nope")).is_err());
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(16 * 1024));
        assert!(normalize_metadata(Some(&big)).is_err());
    }

    #[test]
    fn titles() {
        assert_eq!(normalize_title(Some("")).unwrap(), None);
        assert_eq!(normalize_title(Some("Hi")).unwrap(), Some("Hi".into()));
        assert!(normalize_title(Some(&"t".repeat(201))).is_err());
        assert!(normalize_title(Some("a\u{1b}b")).is_err());
    }
}
