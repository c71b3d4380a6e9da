//! `GET /api/openapi.json`: an OpenAPI 3.1 description of docs/api.md#rest-api, built
//! from [`OPERATIONS`], the same table the tests hold the router to (every
//! operation listed here must be routed, and every documented route listed).

use serde_json::{Map, Value, json};

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    /// As docs/api.md#rest-api writes it, with the trailing slash (which is optional).
    pub path: &'static str,
    pub summary: &'static str,
    /// Query parameters: (name, schema type, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// The request body schema, if any.
    pub body: Option<&'static str>,
    /// The success status and its schema (None: no body).
    pub success: (u16, Option<&'static str>),
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [(&'static str, &'static str, &'static str)],
    body: Option<&'static str>,
    success: (u16, Option<&'static str>),
) -> Operation {
    Operation {
        method,
        path,
        summary,
        query,
        body,
        success,
    }
}

/// Every REST operation of the gateway.
pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/api/chat/threads/",
        "The caller's threads, most recent activity first",
        &[
            ("limit", "integer", "1-100, default 20"),
            ("cursor", "string", "next_cursor of the previous page"),
            ("job_id", "string", "only threads of this job"),
        ],
        None,
        (200, Some("ThreadList")),
    ),
    op(
        "post",
        "/api/chat/threads/",
        "Create the thread of these participants and job, or return it (200)",
        &[],
        Some("CreateThread"),
        (201, Some("Thread")),
    ),
    op(
        "get",
        "/api/chat/threads/by-participants/",
        "The thread with exactly these participants and job",
        &[
            (
                "participants",
                "string",
                "comma-separated user ids, the caller among them",
            ),
            (
                "job_id",
                "string",
                "the job; without it, the thread that has no job",
            ),
        ],
        None,
        (200, Some("Thread")),
    ),
    op(
        "get",
        "/api/chat/threads/{id}/",
        "One thread",
        &[],
        None,
        (200, Some("Thread")),
    ),
    op(
        "put",
        "/api/chat/threads/{id}/",
        "Change the title",
        &[],
        Some("UpdateThread"),
        (200, Some("Thread")),
    ),
    op(
        "patch",
        "/api/chat/threads/{id}/",
        "Change the title",
        &[],
        Some("UpdateThread"),
        (200, Some("Thread")),
    ),
    op(
        "delete",
        "/api/chat/threads/{id}/",
        "Archive the thread for the caller until a new message arrives",
        &[],
        None,
        (204, None),
    ),
    op(
        "get",
        "/api/chat/threads/{id}/messages/",
        "A page of messages, ascending by seq; newest page by default",
        &[
            ("before_seq", "integer", "messages before this seq"),
            ("after_seq", "integer", "messages after this seq"),
            ("limit", "integer", "1-200, default 50"),
        ],
        None,
        (200, Some("MessagePage")),
    ),
    op(
        "post",
        "/api/chat/threads/{id}/messages/",
        "Send a text message (200 with the original when client_msg_id repeats)",
        &[],
        Some("SendMessage"),
        (201, Some("Message")),
    ),
    op(
        "get",
        "/api/chat/messages/{id}/",
        "One message",
        &[],
        None,
        (200, Some("Message")),
    ),
    op(
        "put",
        "/api/chat/messages/{id}/",
        "The sender edits the content",
        &[],
        Some("EditMessage"),
        (200, Some("Message")),
    ),
    op(
        "patch",
        "/api/chat/messages/{id}/",
        "The sender edits the content",
        &[],
        Some("EditMessage"),
        (200, Some("Message")),
    ),
    op(
        "delete",
        "/api/chat/messages/{id}/",
        "The sender deletes the message",
        &[],
        None,
        (204, None),
    ),
    op(
        "post",
        "/api/chat/threads/{id}/mark-read/",
        "Move the caller's read cursor (no body: to the latest)",
        &[],
        Some("MarkRead"),
        (200, Some("ReadState")),
    ),
    op(
        "post",
        "/api/chat/threads/{id}/create-dispute/",
        "Open a dispute: a dispute message and a dispute.requested event",
        &[],
        Some("CreateDispute"),
        (201, Some("Message")),
    ),
    op(
        "post",
        "/api/chat/threads/{id}/initiate-payment/",
        "Ask for a payment: a payment message and a payment.initiated event",
        &[],
        Some("InitiatePayment"),
        (201, Some("Message")),
    ),
    op(
        "post",
        "/api/chat/threads/{id}/job-update/",
        "Report a job status: a job_update message and a job.updated event",
        &[],
        Some("JobUpdate"),
        (201, Some("Message")),
    ),
    op(
        "get",
        "/api/chat/unread-count/",
        "The caller's unread counts",
        &[],
        None,
        (200, Some("UnreadCounts")),
    ),
    op(
        "get",
        "/api/chat/search/",
        "Messages of the caller's threads containing every word of q, newest first",
        &[
            (
                "q",
                "string",
                "2-200 characters; every word must occur (case- and accent-insensitive), the last also as a prefix",
            ),
            (
                "thread_id",
                "string",
                "only this thread (one of the caller's)",
            ),
            ("limit", "integer", "1-50, default 20"),
            ("cursor", "string", "next_cursor of the previous page"),
        ],
        None,
        (200, Some("SearchResults")),
    ),
    op(
        "get",
        "/api/chat/threads/{id}/transcript/",
        "The thread's hash-chained, signed transcript (service tokens only)",
        &[],
        None,
        (200, Some("Transcript")),
    ),
    op(
        "get",
        "/api/chat/transcript-keys/",
        "The public keys transcript signatures verify with, rotated ones included",
        &[],
        None,
        (200, Some("TranscriptKeys")),
    ),
    op(
        "put",
        "/api/chat/threads/{id}/contact-policy/",
        "Set the thread's own contact policy, or null for the deployment's default (service tokens only)",
        &[],
        Some("ContactPolicy"),
        (200, Some("Thread")),
    ),
    op(
        "get",
        "/api/chat/presence/",
        "Whether each asked user is online and when their last socket closed; users who share no thread with the caller are left out",
        &[("users", "string", "comma-separated user ids, 1-100")],
        None,
        (200, Some("Presence")),
    ),
];

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

fn schemas() -> Value {
    let time = json!({"type": "string", "format": "date-time"});
    let nullable_time = json!({"type": ["string", "null"], "format": "date-time"});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                "kinds": {"type": "array", "description": "contact_blocked only: the kinds of contact detail found",
                    "items": {"type": "string", "enum": ["email", "phone", "link", "handle"]}}}}}},
        "Message": {"type": "object", "required": ["id", "thread_id", "seq", "sender_id", "message_type",
            "content", "metadata", "client_msg_id", "created_at", "edited_at", "deleted_at", "flags"],
            "properties": {
                "id": {"type": "string", "format": "uuid"}, "thread_id": {"type": "string", "format": "uuid"},
                "seq": {"type": "integer"}, "sender_id": nullable("string"),
                "message_type": {"type": "string", "enum": ["text", "system", "payment", "dispute", "job_update"]},
                "content": {"type": "string"}, "metadata": {"type": "object"},
                "client_msg_id": nullable("string"), "created_at": time,
                "edited_at": nullable_time, "deleted_at": nullable_time,
                "flags": {"type": "array", "items": {"type": "string", "enum": ["email", "phone", "link", "handle"]}}}},
        "Thread": {"type": "object", "required": ["id", "participants", "job_id", "title", "created_by",
            "created_at", "last_message_at", "last_seq", "unread_count", "last_message"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "participants": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 50},
                "job_id": nullable("string"), "title": nullable("string"), "created_by": {"type": "string"},
                "created_at": time, "last_message_at": nullable_time, "last_seq": {"type": "integer"},
                "last_read_seq": {"type": "integer"}, "unread_count": {"type": "integer"},
                "last_message": {"oneOf": [schema_ref("Message"), {"type": "null"}]},
                "contact_policy": {"type": ["string", "null"], "enum": ["off", "flag", "mask", "block", null]}}},
        "ThreadList": {"type": "object", "required": ["results", "next_cursor"], "properties": {
            "results": {"type": "array", "items": schema_ref("Thread")}, "next_cursor": nullable("string")}},
        "MessagePage": {"type": "object", "required": ["results", "has_more"], "properties": {
            "results": {"type": "array", "items": schema_ref("Message")}, "has_more": {"type": "boolean"}}},
        "ReadState": {"type": "object", "required": ["thread_id", "last_read_seq", "unread_count"], "properties": {
            "thread_id": {"type": "string"}, "last_read_seq": {"type": "integer"}, "unread_count": {"type": "integer"}}},
        "UnreadCounts": {"type": "object", "required": ["total", "threads"], "properties": {
            "total": {"type": "integer"}, "threads": {"type": "object", "additionalProperties": {"type": "integer"}}}},
        "SearchResults": {"type": "object", "required": ["results", "next_cursor"], "properties": {
            "results": {"type": "array", "items": {"type": "object", "required": ["thread_id", "message"],
                "properties": {"thread_id": {"type": "string", "format": "uuid"}, "message": schema_ref("Message")}}},
            "next_cursor": nullable("string")}},
        "TranscriptEntry": {"type": "object", "required": ["n", "kind", "message_id", "seq", "sender_id",
            "message_type", "content", "metadata", "at", "hash"], "properties": {
                "n": {"type": "integer", "minimum": 1}, "kind": {"type": "string", "enum": ["message", "edit", "delete"]},
                "message_id": {"type": "string", "format": "uuid"}, "seq": {"type": "integer"},
                "sender_id": nullable("string"), "message_type": {"type": "string"},
                "content": nullable("string"), "metadata": {"type": ["object", "null"]},
                "at": time.clone(), "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
        "Transcript": {"type": "object", "required": ["thread_id", "entries", "head_hash", "exported_at",
            "key_id", "signature"], "properties": {
                "thread_id": {"type": "string", "format": "uuid"},
                "entries": {"type": "array", "items": schema_ref("TranscriptEntry")},
                "head_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "exported_at": time.clone(),
                "key_id": {"type": "string"}, "signature": {"type": "string", "contentEncoding": "base64"}}},
        "Presence": {"type": "object", "required": ["users"], "properties": {"users": {"type": "object",
            "additionalProperties": {"type": "object", "required": ["online", "last_seen_at"], "properties": {
                "online": {"type": "boolean"},
                "last_seen_at": {"type": ["string", "null"], "format": "date-time"}}}}}},
        "TranscriptKeys": {"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array",
            "items": {"type": "object", "required": ["key_id", "public_key"], "properties": {
                "key_id": {"type": "string"}, "public_key": {"type": "string", "contentEncoding": "base64"}}}}}},
        "ContactPolicy": {"type": "object", "required": ["policy"], "properties": {
            "policy": {"type": ["string", "null"], "enum": ["off", "flag", "mask", "block", null]}}},
        "CreateThread": {"type": "object", "required": ["participants"], "properties": {
            "participants": {"type": "array", "items": {"type": "string"}},
            "job_id": nullable("string"), "title": nullable("string")}},
        "UpdateThread": {"type": "object", "required": ["title"], "properties": {"title": nullable("string")}},
        "SendMessage": {"type": "object", "required": ["content"], "properties": {
            "content": {"type": "string", "minLength": 1, "maxLength": 4000},
            "client_msg_id": nullable("string"), "metadata": {"type": ["object", "null"]},
            "message_type": {"type": "string", "enum": ["text"]}}},
        "EditMessage": {"type": "object", "required": ["content"], "properties": {
            "content": {"type": "string", "minLength": 1, "maxLength": 4000}}},
        "MarkRead": {"type": "object", "properties": {"up_to_seq": {"type": ["integer", "null"], "minimum": 0}}},
        "CreateDispute": {"type": "object", "required": ["reason"], "properties": {
            "reason": {"type": "string", "minLength": 1}, "details": nullable("string")}},
        "InitiatePayment": {"type": "object", "required": ["amount", "currency"], "properties": {
            "amount": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$"},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "job_id": nullable("string")}},
        "JobUpdate": {"type": "object", "required": ["job_id", "status"], "properties": {
            "job_id": {"type": "string", "minLength": 1}, "status": {"type": "string", "minLength": 1},
            "note": nullable("string")}},
    })
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema_ref("Error")}}})
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for operation in OPERATIONS {
        let mut parameters = Vec::new();
        if operation.path.contains("{id}") {
            parameters.push(json!({"name": "id", "in": "path", "required": true,
                "schema": {"type": "string", "format": "uuid"}}));
        }
        for (name, kind, description) in operation.query {
            parameters.push(json!({"name": name, "in": "query", "required": false,
                "description": description, "schema": {"type": kind}}));
        }
        let mut responses = Map::new();
        let (status, schema) = operation.success;
        responses.insert(
            status.to_string(),
            match schema {
                Some(schema) => json!({"description": "success",
                    "content": {"application/json": {"schema": schema_ref(schema)}}}),
                None => json!({"description": "done, no content"}),
            },
        );
        for (code, description) in [
            ("400", "invalid input"),
            ("401", "no token or a bad one"),
            ("403", "not allowed for this token (forbidden)"),
            ("404", "not found, or not a participant"),
            ("413", "body too large"),
            (
                "422",
                "the text holds contact details the thread's policy blocks (contact_blocked)",
            ),
            ("429", "rate limited (see Retry-After)"),
            ("503", "chat-core unavailable"),
        ] {
            responses.insert(code.into(), error_response(description));
        }
        let mut entry = json!({
            "summary": operation.summary,
            "operationId": format!("{}{}", operation.method, operation.path.replace(['/', '{', '}', '-'], "_")),
            "parameters": parameters,
            "responses": responses,
            "security": [{"bearer": []}],
        });
        if let Some(body) = operation.body {
            entry["requestBody"] = json!({"required": operation.method != "post" || !operation.path.ends_with("mark-read/"),
                "content": {"application/json": {"schema": schema_ref(body)}}});
        }
        let path = paths
            .entry(operation.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        path[operation.method] = entry;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Marketplace chat gateway", "version": env!("CARGO_PKG_VERSION"),
            "description": "REST API of the chat gateway. Trailing slashes are optional. Errors: {\"error\": {\"code\", \"message\"}}."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    })
}
