//! Application error codes carried beside a gRPC status, for the failures
//! that no gRPC code names precisely (a message blocked by the contact
//! guard is neither a bad argument nor a conflict). chat-core sets them;
//! the gateway turns them into its own error codes and HTTP statuses.

use tonic::Status;

/// The metadata key (and `RelayEnded.error_code`) that carries the code.
pub const CODE_METADATA: &str = "chat-error-code";

/// A user's text held contact details and the thread's policy blocks them.
pub const CONTACT_BLOCKED: &str = "contact_blocked";

/// `status` carrying the application error `code`.
pub fn with_code(mut status: Status, code: &'static str) -> Status {
    status.metadata_mut().insert(
        CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(code),
    );
    status
}

/// The application error code `status` carries, if any.
pub fn code_of(status: &Status) -> Option<&str> {
    status.metadata().get(CODE_METADATA)?.to_str().ok()
}
