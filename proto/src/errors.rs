//! Application error codes carried beside a gRPC status, for the failures
//! that no gRPC code names precisely (a message blocked by the contact
//! guard is neither a bad argument nor a conflict). chat-core sets them;
//! the gateway turns them into its own error codes and HTTP statuses.

use tonic::{Status, metadata::MetadataValue};

/// The metadata key (and `RelayEnded.error_code`) that carries the code.
pub const CODE_METADATA: &str = "chat-error-code";

/// The metadata key (and `RelayEnded.error_kinds`) that carries the kinds
/// of contact detail a [`CONTACT_BLOCKED`] refusal found, comma-separated
/// (`email,phone`).
pub const KINDS_METADATA: &str = "chat-error-kinds";

/// A user's text held contact details and the thread's policy blocks them.
pub const CONTACT_BLOCKED: &str = "contact_blocked";

/// `status` carrying the application error `code`.
pub fn with_code(mut status: Status, code: &'static str) -> Status {
    status
        .metadata_mut()
        .insert(CODE_METADATA, MetadataValue::from_static(code));
    status
}

/// The application error code `status` carries, if any.
pub fn code_of(status: &Status) -> Option<&str> {
    status.metadata().get(CODE_METADATA)?.to_str().ok()
}

/// `status` as a [`CONTACT_BLOCKED`] refusal of text holding these kinds of
/// contact detail (`"email"`, `"phone"`, `"link"`, `"handle"`).
pub fn contact_blocked<K: AsRef<str>>(status: Status, kinds: &[K]) -> Status {
    with_kinds(with_code(status, CONTACT_BLOCKED), kinds)
}

/// `status` carrying `kinds` (plain ASCII words); none is carried when
/// `kinds` is empty or one is not a plain word.
pub fn with_kinds<K: AsRef<str>>(mut status: Status, kinds: &[K]) -> Status {
    let plain = |kind: &str| {
        !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if kinds.is_empty() || !kinds.iter().all(|kind| plain(kind.as_ref())) {
        return status;
    }
    let joined = kinds
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(value) = joined.parse() {
        status.metadata_mut().insert(KINDS_METADATA, value);
    }
    status
}

/// The kinds `status` carries, in order; empty when none.
pub fn kinds_of(status: &Status) -> Vec<String> {
    status
        .metadata()
        .get(KINDS_METADATA)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(',')
                .filter(|kind| !kind.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_go_with_the_code_and_come_back_in_order() {
        let status = contact_blocked(Status::failed_precondition("blocked"), &["phone", "email"]);
        assert_eq!(code_of(&status), Some(CONTACT_BLOCKED));
        assert_eq!(kinds_of(&status), ["phone", "email"]);
        assert_eq!(
            status
                .metadata()
                .get(KINDS_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("phone,email")
        );
    }

    #[test]
    fn no_kinds_or_odd_ones_carry_nothing() {
        let none: [&str; 0] = [];
        let status = contact_blocked(Status::failed_precondition("blocked"), &none);
        assert_eq!(code_of(&status), Some(CONTACT_BLOCKED));
        assert!(status.metadata().get(KINDS_METADATA).is_none());
        assert!(kinds_of(&status).is_empty());
        let odd = with_kinds(Status::internal("x"), &["email", "a,b"]);
        assert!(kinds_of(&odd).is_empty());
        assert!(kinds_of(&Status::internal("x")).is_empty());
    }
}
