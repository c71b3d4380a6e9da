//! The one place where failures become HTTP responses: docs/api.md#rest-api's
//! `{"error": {"code", "message"}}` (and `kinds` for `contact_blocked`)
//! with its status codes. A 5xx body never shows internals.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use tonic::Code;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For `contact_blocked`: the kinds of contact detail found, shown as
    /// the body's `kinds`; `None` for every other error.
    pub kinds: Option<Vec<String>>,
}

impl ApiError {
    /// 400: the request breaks a rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
            kinds: None,
        }
    }

    /// 401: no token, or a bad one.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            message: message.into(),
            kinds: None,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            kinds: None,
        }
    }

    /// 413: the body is larger than any valid request.
    pub fn too_large() -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: "request body too large".into(),
            kinds: None,
        }
    }

    /// 405 on a known path.
    pub fn method_not_allowed() -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: "method not allowed on this path".into(),
            kinds: None,
        }
    }
}

/// chat-core's status codes, mapped once.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        if chat_proto::errors::code_of(&status) == Some(chat_proto::errors::CONTACT_BLOCKED) {
            return ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: chat_proto::errors::CONTACT_BLOCKED,
                message,
                kinds: Some(chat_proto::errors::kinds_of(&status)),
            };
        }
        let (http, code, message) = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                (StatusCode::BAD_REQUEST, "invalid_request", message)
            }
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated", message),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden", message),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found", message),
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
                (StatusCode::CONFLICT, "conflict", message)
            }
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", message),
            Code::Unimplemented => (
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                "not implemented yet".to_owned(),
            ),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                tracing::warn!(code = ?status.code(), message = %status.message(), "chat-core unavailable");
                let message = if status.message() == crate::upstream::FATE_UNKNOWN {
                    crate::upstream::FATE_UNKNOWN
                } else {
                    "chat service unavailable, try again"
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    message.to_owned(),
                )
            }
            _ => {
                tracing::error!(code = ?status.code(), message = %status.message(), "chat-core error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                )
            }
        };
        ApiError {
            status: http,
            code,
            message,
            kinds: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.kinds {
            Some(kinds) => {
                json!({"error": {"code": self.code, "message": self.message, "kinds": kinds}})
            }
            None => json!({"error": {"code": self.code, "message": self.message}}),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
