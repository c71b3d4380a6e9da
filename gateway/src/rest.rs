//! The REST API of docs/api.md#rest-api under `/api/chat/`: each route checks what it
//! can judge itself (token, JSON types, query parameters), then makes one
//! chat-core call and shapes the answer.

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{FromRequestParts, Path, RawQuery, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use chat_auth::TokenVerifier;
use chat_proto::v1 as pb;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{error::ApiError, json, upstream::Upstream};

/// Larger bodies are refused with 413 before parsing: no valid request
/// comes near it (content ≤ 4000 characters, metadata ≤ 16 KiB).
const MAX_BODY: usize = 64 * 1024;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub upstream: Upstream,
    pub verifier: TokenVerifier,
    /// Browser origins allowed to open WebSockets.
    pub allowed_origins: std::sync::Arc<Vec<String>>,
    /// Turns true when the gateway stops: sockets close with 1012.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Open WebSockets, so shutdown can wait for their close frames.
    pub open_sockets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The figures sockets and the request layer record.
    pub metrics: crate::metrics::GatewayMetrics,
    /// Everything `/metrics` shows.
    pub registry: std::sync::Arc<chat_runtime::metrics::Registry>,
    /// Messages per user (REST and WebSocket together).
    pub send_limit: std::sync::Arc<crate::edge::RateLimiter>,
    /// New WebSockets per client address.
    pub connect_limit: std::sync::Arc<crate::edge::RateLimiter>,
    /// How often sockets are pinged.
    pub ws_ping: std::time::Duration,
    /// How long a socket may take to accept one frame.
    pub ws_send_timeout: std::time::Duration,
    /// Open WebSockets per user, capped.
    pub user_sockets: std::sync::Arc<crate::edge::UserSockets>,
    /// Open client connections and the caps on them.
    pub connections: std::sync::Arc<chat_runtime::connections::ConnectionLimiter>,
}

/// The request id of the current request (set by the access-log layer).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The authenticated caller: the verified token, forwarded to chat-core,
/// which checks it again.
pub struct Caller {
    subject: String,
    token: String,
    request_id: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::unauthenticated("malformed token"))
            })
            .transpose()?;
        let identity = state
            .verifier
            .verify_bearer(header)
            .map_err(|err| ApiError::unauthenticated(err.to_string()))?;
        let token = header
            .and_then(|h| h.split_once(' '))
            .map(|(_, token)| token.to_owned())
            .unwrap_or_default();
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        Ok(Caller {
            subject: identity.subject,
            token,
            request_id,
        })
    }
}

impl Caller {
    fn request<T>(&self, state: &AppState, body: T) -> tonic::Request<T> {
        state.upstream.request(body, &self.token, &self.request_id)
    }
}

/// A JSON body of type `T`: strict types, 400 on anything else, 413 when
/// too large. An empty body reads as `{}` when `T` allows it.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> axum::extract::FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        _state: &AppState,
    ) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
            .await
            .map_err(|_| ApiError::too_large())?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let value = json::parse_client_json(bytes).map_err(|err| match err {
            json::JsonInputError::Syntax => ApiError::invalid("the body must be valid JSON"),
            json::JsonInputError::DuplicateKey(key) => {
                ApiError::invalid(format!("the body names {key:?} twice"))
            }
        })?;
        if !value.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|err| ApiError::invalid(field_error(&err.to_string())))
    }
}

/// serde's message, without the position noise.
fn field_error(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .replace("invalid type: ", "wrong type: ")
}

/// Query parameters, checked rather than clamped.
struct QueryParams(HashMap<String, String>);

impl QueryParams {
    fn parse(raw: Option<String>) -> Self {
        QueryParams(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn integer(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(format!(
                    "{name}: must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ))),
            },
        }
    }
}

/// The REST routes; paths are matched without their trailing slash.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/chat/threads", get(list_threads).post(create_thread))
        .route("/api/chat/threads/by-participants", get(find_thread))
        .route(
            "/api/chat/threads/{id}",
            get(get_thread)
                .put(update_thread)
                .patch(update_thread)
                .delete(archive_thread),
        )
        .route(
            "/api/chat/threads/{id}/messages",
            get(list_messages).post(send_message),
        )
        .route("/api/chat/threads/{id}/mark-read", post(mark_read))
        .route(
            "/api/chat/threads/{id}/create-dispute",
            post(create_dispute),
        )
        .route(
            "/api/chat/threads/{id}/initiate-payment",
            post(initiate_payment),
        )
        .route("/api/chat/threads/{id}/job-update", post(job_update))
        .route(
            "/api/chat/messages/{id}",
            get(get_message)
                .put(edit_message)
                .patch(edit_message)
                .delete(delete_message),
        )
        .route("/api/chat/unread-count", get(unread_count))
        .route("/api/chat/search", get(search))
        .route("/api/chat/threads/{id}/transcript", get(transcript))
        .route("/api/chat/transcript-keys", get(transcript_keys))
        .route(
            "/api/chat/threads/{id}/contact-policy",
            put(set_contact_policy),
        )
        .route("/api/chat/presence", get(presence))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

/// One chat-core call with the caller's token, within the call deadline.
/// A call that finds its replica gone is tried again on another replica
/// while the deadline lasts when it is idempotent (see
/// [`Upstream::call`](crate::upstream::Upstream::call)); others are not,
/// so nothing is done twice.
async fn unary<Req, Resp, F, Fut>(
    state: &AppState,
    caller: &Caller,
    idempotent: bool,
    body: Req,
    call: F,
) -> Result<Resp, ApiError>
where
    Req: Clone,
    F: Fn(tonic::Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let response = state
        .upstream
        .call(idempotent, || call(caller.request(state, body.clone())))
        .await?;
    Ok(response.into_inner())
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn created_or_ok(created: bool, value: Value) -> ApiResult {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(value)).into_response())
}

fn missing<T>(value: Option<T>) -> Result<T, ApiError> {
    value
        .ok_or_else(|| ApiError::from(tonic::Status::internal("chat-core answered without a body")))
}

async fn list_threads(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let query = QueryParams::parse(query);
    let limit = query.integer("limit", 1..=100)?.unwrap_or(0) as i32;
    let page = unary(
        &state,
        &caller,
        true,
        pb::ListThreadsRequest {
            limit,
            cursor: query.get("cursor").map(str::to_owned),
            job_id: query.get("job_id").map(str::to_owned),
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.list_threads(request).await }
        },
    )
    .await?;
    ok(json!({
        "results": page.threads.iter().map(json::thread).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    }))
}

#[derive(Deserialize)]
struct CreateThreadBody {
    participants: Vec<String>,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

async fn create_thread(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateThreadBody>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        true,
        pb::CreateThreadRequest {
            participants: body.participants,
            job_id: body.job_id,
            title: body.title,
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.create_thread(request).await }
        },
    )
    .await?;
    created_or_ok(response.created, json::thread(&missing(response.thread)?))
}

async fn find_thread(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let query = QueryParams::parse(query);
    let participants: Vec<String> = query
        .get("participants")
        .ok_or_else(|| ApiError::invalid("participants: required, comma-separated"))?
        .split(',')
        // Not trimmed: an id with a space or a control character is refused
        // by chat-core, as on every other route.
        .map(str::to_owned)
        .collect();
    let response = unary(
        &state,
        &caller,
        true,
        pb::FindThreadByParticipantsRequest {
            participants,
            job_id: query.get("job_id").map(str::to_owned),
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.find_thread_by_participants(request).await }
        },
    )
    .await?;
    ok(json::thread(&missing(response.thread)?))
}

async fn get_thread(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        true,
        pb::GetThreadRequest { thread_id: id },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.get_thread(request).await }
        },
    )
    .await?;
    ok(json::thread(&missing(response.thread)?))
}

#[derive(Deserialize)]
struct UpdateThreadBody {
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<String>>,
}

/// Tells `"title": null` (clear it) from no `title` at all.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

async fn update_thread(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateThreadBody>,
) -> ApiResult {
    let title = body
        .title
        .ok_or_else(|| ApiError::invalid("title: required (null clears it)"))?;
    let response = unary(
        &state,
        &caller,
        true,
        pb::UpdateThreadRequest {
            thread_id: id,
            title,
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.update_thread(request).await }
        },
    )
    .await?;
    ok(json::thread(&missing(response.thread)?))
}

async fn archive_thread(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    unary(
        &state,
        &caller,
        true,
        pb::ArchiveThreadRequest { thread_id: id },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.archive_thread(request).await }
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let query = QueryParams::parse(query);
    let before_seq = query.integer("before_seq", 0..=i64::MAX)?;
    let after_seq = query.integer("after_seq", 0..=i64::MAX)?;
    let limit = query.integer("limit", 1..=200)?.unwrap_or(0) as i32;
    if before_seq.is_some() && after_seq.is_some() {
        return Err(ApiError::invalid(
            "before_seq and after_seq cannot be combined",
        ));
    }
    let page = unary(
        &state,
        &caller,
        true,
        pb::ListMessagesRequest {
            thread_id: id,
            before_seq,
            after_seq,
            limit,
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.list_messages(request).await }
        },
    )
    .await?;
    ok(json!({
        "results": page.messages.iter().map(json::message).collect::<Vec<_>>(),
        "has_more": page.has_more,
    }))
}

#[derive(Deserialize)]
struct SendMessageBody {
    content: String,
    #[serde(default)]
    client_msg_id: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    message_type: Option<String>,
}

async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SendMessageBody>,
) -> ApiResult {
    if let Some(kind) = body.message_type.as_deref()
        && kind != "text"
    {
        return Err(ApiError::invalid(
            "message_type: users post text messages only",
        ));
    }
    let metadata_json = match body.metadata {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => Some(value.to_string()),
        Some(_) => return Err(ApiError::invalid("metadata: must be a JSON object")),
    };
    if let Err(wait) = state.send_limit.check(&caller.subject) {
        return Ok(crate::edge::rate_limited(wait));
    }
    let send_idempotent = body.client_msg_id.is_some();
    let response = unary(
        &state,
        &caller,
        send_idempotent,
        pb::SendMessageRequest {
            thread_id: id,
            content: body.content,
            client_msg_id: body.client_msg_id,
            metadata_json,
            message_type: pb::MessageType::Text.into(),
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.send_message(request).await }
        },
    )
    .await?;
    created_or_ok(response.created, json::message(&missing(response.message)?))
}

async fn get_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        true,
        pb::GetMessageRequest { message_id: id },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.get_message(request).await }
        },
    )
    .await?;
    ok(json::message(&missing(response.message)?))
}

#[derive(Deserialize)]
struct EditMessageBody {
    content: String,
}

async fn edit_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<EditMessageBody>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        true,
        pb::EditMessageRequest {
            message_id: id,
            content: body.content,
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.edit_message(request).await }
        },
    )
    .await?;
    ok(json::message(&missing(response.message)?))
}

async fn delete_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    unary(
        &state,
        &caller,
        true,
        pb::DeleteMessageRequest { message_id: id },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.delete_message(request).await }
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct MarkReadBody {
    #[serde(default)]
    up_to_seq: Option<i64>,
}

async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<MarkReadBody>,
) -> ApiResult {
    if body.up_to_seq.is_some_and(|seq| seq < 0) {
        return Err(ApiError::invalid("up_to_seq: must not be negative"));
    }
    let response = unary(
        &state,
        &caller,
        true,
        pb::MarkReadRequest {
            thread_id: id,
            up_to_seq: body.up_to_seq,
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.mark_read(request).await }
        },
    )
    .await?;
    ok(json!({
        "thread_id": response.thread_id,
        "last_read_seq": response.last_read_seq,
        "unread_count": response.unread_count,
    }))
}

#[derive(Deserialize)]
struct DisputeBody {
    reason: String,
    #[serde(default)]
    details: Option<String>,
}

async fn create_dispute(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DisputeBody>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        false,
        pb::RequestDisputeRequest {
            thread_id: id,
            reason: body.reason,
            details: body.details,
        },
        |request| {
            let mut client = state.upstream.integrations();
            async move { client.request_dispute(request).await }
        },
    )
    .await?;
    created_or_ok(true, json::message(&missing(response.message)?))
}

#[derive(Deserialize)]
struct PaymentBody {
    amount: String,
    currency: String,
    #[serde(default)]
    job_id: Option<String>,
}

async fn initiate_payment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PaymentBody>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        false,
        pb::InitiatePaymentRequest {
            thread_id: id,
            amount: body.amount,
            currency: body.currency,
            job_id: body.job_id,
        },
        |request| {
            let mut client = state.upstream.integrations();
            async move { client.initiate_payment(request).await }
        },
    )
    .await?;
    created_or_ok(true, json::message(&missing(response.message)?))
}

#[derive(Deserialize)]
struct JobUpdateBody {
    job_id: String,
    status: String,
    #[serde(default)]
    note: Option<String>,
}

async fn job_update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<JobUpdateBody>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        false,
        pb::PostJobUpdateRequest {
            thread_id: id,
            job_id: body.job_id,
            status: body.status,
            note: body.note,
        },
        |request| {
            let mut client = state.upstream.integrations();
            async move { client.post_job_update(request).await }
        },
    )
    .await?;
    created_or_ok(true, json::message(&missing(response.message)?))
}

async fn unread_count(State(state): State<AppState>, caller: Caller) -> ApiResult {
    let counts = unary(
        &state,
        &caller,
        true,
        pb::GetUnreadCountsRequest {},
        |request| {
            let mut client = state.upstream.chat();
            async move { client.get_unread_counts(request).await }
        },
    )
    .await?;
    ok(json!({"total": counts.total, "threads": counts.threads}))
}

async fn search(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let query = QueryParams::parse(query);
    // The length rule is chat-core's (one place for REST and gRPC).
    let q = query
        .get("q")
        .ok_or_else(|| ApiError::invalid("q: required, 2 to 200 characters"))?;
    let limit = query.integer("limit", 1..=50)?.unwrap_or(0) as i32;
    let page = unary(
        &state,
        &caller,
        true,
        pb::SearchMessagesRequest {
            q: q.to_owned(),
            thread_id: query.get("thread_id").map(str::to_owned),
            limit,
            cursor: query.get("cursor").map(str::to_owned),
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.search_messages(request).await }
        },
    )
    .await?;
    let results: Vec<Value> = page
        .results
        .iter()
        .filter_map(|result| {
            let message = result.message.as_ref()?;
            Some(json!({"thread_id": result.thread_id, "message": json::message(message)}))
        })
        .collect();
    ok(json!({"results": results, "next_cursor": page.next_cursor}))
}

async fn transcript(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let export = unary(
        &state,
        &caller,
        true,
        pb::ExportTranscriptRequest { thread_id: id },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.export_transcript(request).await }
        },
    )
    .await?;
    ok(json::transcript(&export))
}

async fn transcript_keys(State(state): State<AppState>, caller: Caller) -> ApiResult {
    let keys = unary(
        &state,
        &caller,
        true,
        pb::ListTranscriptKeysRequest {},
        |request| {
            let mut client = state.upstream.chat();
            async move { client.list_transcript_keys(request).await }
        },
    )
    .await?;
    ok(json!({"keys": keys.keys.iter().map(|key| json!({
        "key_id": key.key_id,
        "public_key": key.public_key,
    })).collect::<Vec<_>>()}))
}

/// `{"policy": "off" | "flag" | "mask" | "block" | null}`: `policy` must be
/// present, null clearing the thread's own policy.
#[derive(Deserialize)]
struct ContactPolicyBody {
    #[serde(deserialize_with = "present_or_null")]
    policy: Option<String>,
}

fn present_or_null<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(deserializer)
}

async fn set_contact_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ContactPolicyBody>,
) -> ApiResult {
    let response = unary(
        &state,
        &caller,
        true,
        pb::SetContactPolicyRequest {
            thread_id: id,
            policy: body.policy,
        },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.set_contact_policy(request).await }
        },
    )
    .await?;
    ok(json::thread(&missing(response.thread)?))
}

/// `GET /api/chat/presence/?users=a,b`: the asked users who share a thread
/// with the caller (the caller too), each `{online, last_seen_at}`.
async fn presence(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let query = QueryParams::parse(query);
    let users = query
        .get("users")
        .ok_or_else(|| ApiError::invalid("users: required, comma-separated user ids"))?;
    let user_ids: Vec<String> = users.split(',').map(str::to_owned).collect();
    if user_ids.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "users: comma-separated user ids, none empty",
        ));
    }
    let answer = unary(
        &state,
        &caller,
        true,
        pb::GetPresenceRequest { user_ids },
        |request| {
            let mut client = state.upstream.chat();
            async move { client.get_presence(request).await }
        },
    )
    .await?;
    let mut users = serde_json::Map::with_capacity(answer.users.len());
    for user in &answer.users {
        let mut entry = json::ObjectWriter::new();
        entry
            .bool("online", user.online)
            .time("last_seen_at", user.last_seen_at.as_ref());
        users.insert(
            user.user_id.clone(),
            serde_json::from_str(&entry.finish()).unwrap_or(Value::Null),
        );
    }
    ok(json!({ "users": users }))
}
