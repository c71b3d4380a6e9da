//! The WebSockets of docs/api.md#websocket-api: one thread (`/ws/chat/{thread_id}/`) or every
//! thread of the user (`/ws/chat/`), each fed by an upstream [`Feed`].
//!
//! One task per socket runs a single loop over the browser's frames, the
//! feed's events, the chat-core call in flight, heartbeats, the token's
//! expiry and shutdown. The socket is subscribed before any frame is
//! answered, so everything after `auth_ok` (or a `pong`) reaches it. The
//! feed keeps order and resumes after a broken stream (see
//! `upstream::feed`); this side only turns events into frames.
//!
//! A frame that needs chat-core becomes the call in flight: the loop keeps
//! delivering events while it runs, and reads the browser's next frame only
//! once it has answered, so one socket's frames are handled in order and a
//! browser that sends faster than its calls finish is slowed by TCP, not
//! buffered.

use std::{
    collections::HashMap, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use axum::{
    extract::{
        ConnectInfo, Path, RawQuery, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chat_auth::Identity;
use chat_proto::v1::{
    self as pb, event::Kind, relay_call::Call, relay_call_result::Result as Answer,
};
use futures_util::{FutureExt as _, SinkExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until, timeout};
use tonic::Code;
use tracing::Instrument as _;

use crate::{
    error::ApiError,
    json::{self, ObjectWriter},
    metrics::{FrameKind, SocketGuard, SocketKind},
    rest::AppState,
    upstream::{FATE_UNKNOWN, Feed, FeedEnd, FeedRequest},
};

/// A write's outcome as the socket's fate: a lost connection, or a browser
/// too slow to take its frames within the send timeout.
fn sent(
    outcome: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>,
) -> Result<(), Closing> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Closing(close::POLICY, "connection lost")),
        Err(_) => Err(Closing(
            close::TOO_SLOW,
            "too slow; reconnect with since_seq",
        )),
    }
}

/// A frame's span, for trace export only: with export off there is none,
/// so a frame costs no span (the log layer would format its fields).
fn frame_span(kind: FrameKind, request_id: &str) -> tracing::Span {
    if !chat_runtime::telemetry::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "ws frame",
        otel.name = %format_args!("ws {}", kind.name()),
        otel.kind = "server",
        frame_type = kind.name(),
        request_id = %request_id,
    )
}

/// Close codes of docs/api.md#websocket-api.
pub mod close {
    pub const RESTARTING: u16 = 1012;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const NOT_FOUND: u16 = 4404;
    pub const TOO_SLOW: u16 = 4008;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL: u16 = 1011;
    /// RFC 6455: a frame the protocol does not allow.
    pub const PROTOCOL: u16 = 1002;
    /// RFC 6455: a text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// RFC 6455: a message over [`super::MAX_MESSAGE`].
    pub const TOO_BIG: u16 = 1009;
    /// A normal end: the browser closed, or went away.
    pub const NORMAL: u16 = 1000;
    /// The user holds as many sockets as allowed (as HTTP's 429).
    pub const TOO_MANY: u16 = 4429;
}

/// The largest message a browser may send, whole or in fragments: a frame
/// is refused from its header, before its payload is buffered, and a
/// fragmented message as soon as its fragments pass it.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The WebSocket read buffer, allocated per socket up front.
const READ_BUFFER: usize = 512;
/// What the write buffer holds before a write goes out without waiting
/// for the flush: several chat frames, yet little for an active socket to
/// keep (a buffer keeps the room it once needed).
const WRITE_BUFFER: usize = 4 * 1024;
/// How long a socket may take to send its `auth` frame.
const AUTH_WINDOW: Duration = Duration::from_secs(5);

/// `GET /ws/chat/{thread_id}/`.
pub async fn thread_socket(
    State(state): State<AppState>,
    Path(thread_id): Path<String>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    open(state, Some(thread_id), query, peer, headers, upgrade)
}

/// `GET /ws/chat/`.
pub async fn user_socket(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    open(state, None, query, peer, headers, upgrade)
}

fn open(
    state: AppState,
    thread_id: Option<String>,
    query: Option<String>,
    peer: SocketAddr,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(wait) = state.connect_limit.check(&peer.ip().to_string()) {
        return crate::edge::rate_limited(wait);
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        // The gateway's own page (GET /) is same-origin and always allowed.
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let allowed = origin.to_str().is_ok_and(|o| {
            let o = o.trim_end_matches('/');
            state.allowed_origins.iter().any(|a| a == o)
                || o.split_once("://")
                    .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
        });
        if !allowed {
            return ApiError {
                status: StatusCode::FORBIDDEN,
                code: "origin_not_allowed",
                message: "this origin may not open WebSockets".into(),
                kinds: None,
            }
            .into_response();
        }
    }
    let params: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let since_seq = match params.get("since_seq").map(|s| s.parse::<i64>()) {
        None => None,
        Some(Ok(seq)) if seq >= 0 && thread_id.is_some() => Some(seq),
        Some(_) => {
            return ApiError::invalid("since_seq: a non-negative integer, on a thread socket")
                .into_response();
        }
    };
    let token = params.get("token").cloned().or_else(|| {
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.to_owned())
    });
    let request_id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
    upgrade
        // Sized for an idle socket: chat frames are small, and a larger one
        // grows the buffer only while it is read.
        .read_buffer_size(READ_BUFFER)
        // Frames are buffered until the socket flushes (see
        // `Session::queue`); past this much they are written at once.
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            let session = Session {
                state,
                thread_id,
                since_seq,
                request_id,
                token: Arc::from(""),
                identity: None,
                expires_at: None,
                slot: None,
                counted: None,
            };
            session.run(socket, token)
        })
}

/// One socket's state.
struct Session {
    state: AppState,
    thread_id: Option<String>,
    since_seq: Option<i64>,
    request_id: Arc<str>,
    /// Shared with the socket's subscription: one copy per socket.
    token: Arc<str>,
    identity: Option<Identity>,
    expires_at: Option<Instant>,
    /// The socket's place under the user's cap, once authenticated.
    slot: Option<crate::edge::UserSlot>,
    /// The socket's place in its kind's gauge, once subscribed.
    counted: Option<SocketGuard>,
}

/// Why a socket ends.
struct Closing(u16, &'static str);

impl From<FeedEnd> for Closing {
    fn from(end: FeedEnd) -> Self {
        match end {
            FeedEnd::TooSlow => Closing(close::TOO_SLOW, "too slow; reconnect with since_seq"),
            FeedEnd::NotFound => Closing(close::NOT_FOUND, "thread not found"),
            FeedEnd::Unauthenticated => Closing(close::UNAUTHORIZED, "invalid token"),
            FeedEnd::TooMany => Closing(close::TOO_MANY, "too many sockets for this user"),
            FeedEnd::Unavailable => {
                Closing(close::RESTARTING, "chat service unavailable; reconnect")
            }
        }
    }
}

/// How a socket ends after a frame that could not be read: the RFC 6455
/// code that says why, so a client can tell its own bug from a server
/// fault.
fn read_failure(err: &axum::Error) -> Closing {
    use tungstenite::{Error, error::ProtocolError};
    match std::error::Error::source(err).and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::Capacity(_)) => Closing(close::TOO_BIG, "message too big"),
        Some(Error::Utf8(_)) => Closing(close::INVALID_DATA, "text is not UTF-8"),
        // The peer is gone: there is no one to tell.
        Some(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) | None => {
            Closing(close::NORMAL, "bye")
        }
        Some(Error::Protocol(_)) => Closing(close::PROTOCOL, "protocol error"),
        Some(_) => Closing(close::NORMAL, "bye"),
    }
}

/// A chat-core call in flight for one frame; it yields the frame that
/// answers it, if any.
type Pending = Pin<Box<dyn Future<Output = Option<Message>> + Send>>;

/// What a browser frame asks of the socket loop.
enum Action {
    /// Answer at once.
    Reply(Message),
    /// Call chat-core; answer when it returns.
    Call(Pending),
}

#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    client_msg_id: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    up_to_seq: Option<Value>,
    #[serde(default)]
    is_typing: Option<Value>,
}

/// A browser frame: JSON with no duplicate key (see
/// [`json::check_duplicate_keys`]) in the shape of [`ClientFrame`].
fn parse_frame(frame: &str) -> Result<ClientFrame, json::JsonInputError> {
    json::check_duplicate_keys(frame.as_bytes())?;
    serde_json::from_str(frame).map_err(|_| json::JsonInputError::Syntax)
}

fn text(value: Value) -> Message {
    Message::Text(value.to_string().into())
}

fn error_frame(code: &str, message: &str, client_msg_id: Option<&str>) -> Message {
    let mut frame = ObjectWriter::new();
    frame
        .str("type", "error")
        .str("code", code)
        .str("message", message)
        .opt_str("client_msg_id", client_msg_id);
    Message::Text(frame.finish().into())
}

/// The `code` of an error frame for a chat-core status.
fn status_code(status: &tonic::Status) -> &'static str {
    if chat_proto::errors::code_of(status) == Some(chat_proto::errors::CONTACT_BLOCKED) {
        return chat_proto::errors::CONTACT_BLOCKED;
    }
    match status.code() {
        Code::InvalidArgument => "invalid_request",
        Code::NotFound => "not_found",
        Code::PermissionDenied => "forbidden",
        Code::FailedPrecondition | Code::AlreadyExists => "conflict",
        Code::ResourceExhausted => "rate_limited",
        Code::Unauthenticated => "unauthenticated",
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => "unavailable",
        _ => "internal",
    }
}

fn safe_message(status: &tonic::Status) -> String {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::Unauthenticated => status.message().to_owned(),
        Code::Unavailable if status.message() == FATE_UNKNOWN => FATE_UNKNOWN.into(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            "chat service unavailable, try again".into()
        }
        _ => "internal error".into(),
    }
}

/// The `error` frame for a failed chat-core call; a `contact_blocked` one
/// also names the `kinds` of contact detail found.
fn status_frame(status: &tonic::Status, client_msg_id: Option<&str>) -> Message {
    let code = status_code(status);
    if code != chat_proto::errors::CONTACT_BLOCKED {
        return error_frame(code, &safe_message(status), client_msg_id);
    }
    let mut frame = ObjectWriter::new();
    frame
        .str("type", "error")
        .str("code", code)
        .str("message", &safe_message(status))
        .opt_str("client_msg_id", client_msg_id)
        .str_list("kinds", &chat_proto::errors::kinds_of(status));
    Message::Text(frame.finish().into())
}

/// A chat-core event as the browser's frame; `None` for events that have
/// no frame in docs/api.md#websocket-api.
fn event_frame(event: &pb::Event) -> Option<Message> {
    let mut frame = ObjectWriter::new();
    match event.kind.as_ref()? {
        Kind::MessageCreated(created) => frame
            .str("type", "chat_message")
            .str("thread_id", &event.thread_id)
            .int("seq", event.seq)
            .message("message", created.message.as_ref()?),
        Kind::MessageUpdated(updated) => frame
            .str("type", "message_updated")
            .str("thread_id", &event.thread_id)
            .int("seq", event.seq)
            .message("message", updated.message.as_ref()?),
        Kind::MessageDeleted(deleted) => frame
            .str("type", "message_deleted")
            .str("thread_id", &event.thread_id)
            .int("seq", event.seq)
            .str("message_id", &deleted.message_id),
        Kind::MessagesRead(read) => frame
            .str("type", "messages_read")
            .str("thread_id", &event.thread_id)
            .str("user_id", &read.user_id)
            .int("up_to_seq", read.up_to_seq),
        Kind::Typing(typing) => frame
            .str("type", "typing_indicator")
            .str("thread_id", &event.thread_id)
            .str("user_id", &typing.user_id)
            .bool("is_typing", typing.is_typing),
        Kind::Presence(presence) => frame
            .str("type", "presence")
            .str("user_id", &presence.user_id)
            .bool("online", presence.online)
            .time("last_seen_at", presence.last_seen_at.as_ref()),
        Kind::ThreadCreated(_) | Kind::ThreadUpdated(_) | Kind::Synced(_) => return None,
    };
    Some(Message::Text(frame.finish().into()))
}

impl Session {
    async fn run(mut self, mut socket: WebSocket, token: Option<String>) {
        let open = self.state.open_sockets.clone();
        open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let closing = self.serve(&mut socket, token).await;
        let Closing(code, reason) = closing;
        self.state.metrics.observe_close(code);
        // A slow browser gets longer to drain what is queued and see why it
        // was closed; the data waiting for it is already bounded.
        let linger = if code == close::TOO_SLOW {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(2)
        };
        // Then the browser's own close frame is awaited, and whatever it
        // sent before it (a pong to an earlier ping, say) read and dropped:
        // closing the connection with bytes of it unread would make the
        // kernel reset it, and a reset throws away the frames the browser
        // has not read yet, the close frame with its code among them.
        let _ = timeout(linger, async {
            socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await?;
            while let Some(frame) = socket.recv().await {
                if matches!(frame?, Message::Close(_)) {
                    break;
                }
            }
            Ok::<_, axum::Error>(())
        })
        .await;
        open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Writes a frame at once.
    async fn send(&self, socket: &mut WebSocket, message: Message) -> Result<(), Closing> {
        self.queue(socket, message).await?;
        self.flush(socket).await
    }

    /// Adds a frame to the socket's write buffer; [`Self::flush`] writes it.
    /// Frames that arrive together (a sender's `ack` and its own
    /// `chat_message`, say) then cost the kernel one write, not one each.
    /// Waits (within the send timeout) only when the buffer is full.
    async fn queue(&self, socket: &mut WebSocket, message: Message) -> Result<(), Closing> {
        self.state.metrics.frames_out.inc();
        sent(timeout(self.state.ws_send_timeout, socket.feed(message)).await)
    }

    /// Queues the answer of the call in flight, if it has one, and records
    /// how long the frame that made the call took.
    async fn answered(
        &self,
        socket: &mut WebSocket,
        answer: Option<Message>,
        (kind, arrived): (FrameKind, Instant),
    ) -> Result<(), Closing> {
        if let Some(answer) = answer {
            self.queue(socket, answer).await?;
        }
        self.state
            .metrics
            .observe_frame(kind, arrived.elapsed().as_secs_f64());
        Ok(())
    }

    /// Writes out what [`Self::queue`] buffered.
    async fn flush(&self, socket: &mut WebSocket) -> Result<(), Closing> {
        sent(timeout(self.state.ws_send_timeout, socket.flush()).await)
    }

    /// Checks a token: sets who the socket belongs to and when it expires.
    fn authenticate(&mut self, token: String) -> Result<(), Closing> {
        let identity = self
            .state
            .verifier
            .verify(&token)
            .map_err(|_| Closing(close::UNAUTHORIZED, "invalid token"))?;
        self.expires_at = token_expiry(&token);
        self.token = token.into();
        // Services are trusted integrations: their sockets are not capped
        // (and they have no presence).
        if !identity.is_service() {
            self.slot = Some(
                self.state
                    .user_sockets
                    .take(&identity.subject, &self.token)
                    .ok_or(Closing(close::TOO_MANY, "too many sockets for this user"))?,
            );
        }
        self.identity = Some(identity);
        Ok(())
    }

    /// Queues an event for the browser as its frame (events with no frame
    /// in docs/api.md#websocket-api are skipped).
    async fn forward(&self, socket: &mut WebSocket, event: &pb::Event) -> Result<(), Closing> {
        match event_frame(event) {
            Some(frame) => self.queue(socket, frame).await,
            None => Ok(()),
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket, token: Option<String>) -> Closing {
        match self.serve_inner(socket, token).await {
            Ok(closing) | Err(closing) => closing,
        }
    }

    async fn serve_inner(
        &mut self,
        socket: &mut WebSocket,
        token: Option<String>,
    ) -> Result<Closing, Closing> {
        // Who is this? A token in the URL or header, or the first frame.
        let via_frame = token.is_none();
        let token = match token {
            Some(token) => token,
            None => match timeout(AUTH_WINDOW, socket.recv()).await {
                Ok(Some(Ok(Message::Text(frame)))) => parse_frame(&frame)
                    .ok()
                    .filter(|f| f.kind == "auth")
                    .and_then(|f| f.token)
                    .ok_or(Closing(close::UNAUTHORIZED, "expected an auth frame"))?,
                Ok(Some(Err(err))) => return Err(read_failure(&err)),
                _ => return Err(Closing(close::UNAUTHORIZED, "no token")),
            },
        };
        self.authenticate(token)?;
        // Boxed: opening is done once, and its state would otherwise sit in
        // every idle socket's task for the socket's whole life.
        let mut feed: Feed = Box::pin(self.state.upstream.open_feed(FeedRequest {
            token: self.token.clone(),
            request_id: self.request_id.clone(),
            thread_id: self.thread_id.clone(),
            since_seq: self.since_seq,
        }))
        .await?;
        self.counted = Some(
            self.state
                .metrics
                .socket_opened(if self.thread_id.is_some() {
                    SocketKind::Thread
                } else {
                    SocketKind::User
                }),
        );
        if via_frame {
            let user_id = self.identity.as_ref().map(|i| i.subject.clone());
            self.send(socket, text(json!({"type": "auth_ok", "user_id": user_id})))
                .await?;
        }

        let mut shutdown = self.state.shutdown.clone();
        let mut last_heard = Instant::now();
        let ping_every = self.state.ws_ping;
        let mut next_ping = Instant::now() + ping_every;
        let far = Instant::now() + Duration::from_secs(3600 * 24 * 365);
        let mut in_flight: Option<Pending> = None;
        // The frame whose call is in flight: its kind, and when it came.
        let mut in_flight_frame = (FrameKind::Invalid, Instant::now());
        // Frames queued and not yet written.
        let mut unflushed = false;
        loop {
            if unflushed {
                // What has arrived meanwhile goes out in the same write.
                if let Some(answer) = in_flight.as_mut().and_then(|call| call.now_or_never()) {
                    in_flight = None;
                    self.answered(socket, answer, in_flight_frame).await?;
                    continue;
                }
                if let Some(event) = feed.try_next() {
                    self.forward(socket, &*event?).await?;
                    continue;
                }
                self.flush(socket).await?;
                unflushed = false;
            }
            let expiry = self.expires_at.unwrap_or(far);
            tokio::select! {
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    return Ok(Closing(close::RESTARTING, "server restarting; reconnect"));
                }
                () = sleep_until(expiry) => {
                    return Ok(Closing(close::UNAUTHORIZED, "token expired"));
                }
                () = sleep_until(next_ping) => {
                    if last_heard.elapsed() > 2 * ping_every {
                        return Ok(Closing(close::POLICY, "no answer to pings"));
                    }
                    self.send(socket, Message::Ping(Default::default())).await?;
                    next_ping = Instant::now() + ping_every;
                }
                answer = async { in_flight.as_mut().expect("guarded by the branch condition").await },
                    if in_flight.is_some() =>
                {
                    in_flight = None;
                    self.answered(socket, answer, in_flight_frame).await?;
                    unflushed = true;
                }
                frame = socket.recv(), if in_flight.is_none() => {
                    last_heard = Instant::now();
                    self.state.metrics.frames_in.inc();
                    match frame {
                        Some(Ok(Message::Text(frame))) => match self.handle(&frame) {
                            (kind, Action::Reply(answer)) => {
                                self.send(socket, answer)
                                    .instrument(frame_span(kind, &self.request_id))
                                    .await?;
                                self.state.metrics.observe_frame(kind, last_heard.elapsed().as_secs_f64());
                            }
                            (kind, Action::Call(call)) => {
                                in_flight = Some(call);
                                in_flight_frame = (kind, last_heard);
                            }
                        },
                        Some(Ok(Message::Binary(_))) => {
                            self.send(socket, error_frame("invalid_frame", "frames are JSON text", None)).await?;
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            return Ok(Closing(close::NORMAL, "bye"));
                        }
                        Some(Err(err)) => return Ok(read_failure(&err)),
                        Some(Ok(_)) => {}
                    }
                }
                event = feed.next() => {
                    self.forward(socket, &*event?).await?;
                    unflushed = true;
                }
            }
        }
    }

    /// The chat-core call for a frame, over the shared call streams,
    /// tried again on another replica within the call deadline when that
    /// is safe (see [`crate::upstream::Upstream::call`]); its answer is
    /// `answer` on success and an `error` frame otherwise.
    fn call(
        &self,
        kind: FrameKind,
        call: Call,
        idempotent: bool,
        client_msg_id: Option<String>,
        answer: impl FnOnce(Answer) -> Option<Message> + Send + 'static,
    ) -> Action {
        let upstream = self.state.upstream.clone();
        let token = self.token.clone();
        let request_id = self.request_id.clone();
        let span = frame_span(kind, &request_id);
        Action::Call(Box::pin(
            async move {
                let attempt = || upstream.calls().call(&token, &request_id, call.clone());
                match upstream.call(idempotent, attempt).await {
                    Ok(response) => answer(response),
                    Err(status) => Some(status_frame(&status, client_msg_id.as_deref())),
                }
            }
            .instrument(span),
        ))
    }

    /// One frame from the browser. A bad frame gets an `error` frame and
    /// the socket stays open.
    fn handle(&self, frame: &str) -> (FrameKind, Action) {
        let mut kind = FrameKind::Invalid;
        let action = self.handle_as(frame, &mut kind);
        (kind, action)
    }

    /// [`Self::handle`], setting `kind` once the frame's type is known.
    fn handle_as(&self, frame: &str, kind: &mut FrameKind) -> Action {
        let frame = match parse_frame(frame) {
            Ok(frame) => frame,
            Err(json::JsonInputError::DuplicateKey(key)) => {
                return Action::Reply(error_frame(
                    "invalid_frame",
                    &format!("the frame names {key:?} twice"),
                    None,
                ));
            }
            Err(json::JsonInputError::Syntax) => {
                return Action::Reply(error_frame(
                    "invalid_frame",
                    "frames are JSON objects with a type",
                    None,
                ));
            }
        };
        let thread_id = match (&self.thread_id, &frame.thread_id) {
            (Some(own), _) => Some(own.clone()),
            (None, Some(id)) => Some(id.clone()),
            (None, None) => None,
        };
        let needs_thread = matches!(
            frame.kind.as_str(),
            "chat_message" | "mark_messages_read" | "typing_indicator"
        );
        let client_msg_id = match &frame.client_msg_id {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(_) => {
                return Action::Reply(error_frame(
                    "invalid_request",
                    "client_msg_id: must be a string",
                    None,
                ));
            }
        };
        if needs_thread && thread_id.is_none() {
            return Action::Reply(error_frame(
                "invalid_request",
                "thread_id: required on this socket",
                client_msg_id.as_deref(),
            ));
        }
        let thread_id = thread_id.unwrap_or_default();
        *kind = match frame.kind.as_str() {
            "chat_message" => FrameKind::ChatMessage,
            "mark_messages_read" => FrameKind::MarkRead,
            "typing_indicator" => FrameKind::Typing,
            "ping" => FrameKind::Ping,
            _ => FrameKind::Invalid,
        };
        match frame.kind.as_str() {
            "ping" => Action::Reply(text(json!({"type": "pong"}))),
            "chat_message" => {
                let subject = self
                    .identity
                    .as_ref()
                    .map(|i| i.subject.as_str())
                    .unwrap_or_default();
                if self.state.send_limit.check(subject).is_err() {
                    self.state.metrics.rate_limited.inc();
                    return Action::Reply(error_frame(
                        "rate_limited",
                        "too many messages; slow down",
                        client_msg_id.as_deref(),
                    ));
                }
                let Some(Value::String(content)) = frame.content else {
                    return Action::Reply(error_frame(
                        "invalid_request",
                        "content: must be a string",
                        client_msg_id.as_deref(),
                    ));
                };
                let metadata_json = match frame.metadata {
                    None | Some(Value::Null) => None,
                    Some(value @ Value::Object(_)) => Some(value.to_string()),
                    Some(_) => {
                        return Action::Reply(error_frame(
                            "invalid_request",
                            "metadata: must be a JSON object",
                            client_msg_id.as_deref(),
                        ));
                    }
                };
                let acked = client_msg_id.clone();
                self.call(
                    FrameKind::ChatMessage,
                    Call::SendMessage(pb::SendMessageRequest {
                        thread_id,
                        content,
                        client_msg_id: client_msg_id.clone(),
                        metadata_json,
                        message_type: pb::MessageType::Text.into(),
                    }),
                    // A resend with the same key is answered with the
                    // message stored the first time.
                    client_msg_id.is_some(),
                    client_msg_id,
                    move |answer| {
                        let Answer::SendMessage(response) = answer else {
                            return Some(error_frame(
                                "internal",
                                "internal error",
                                acked.as_deref(),
                            ));
                        };
                        let mut frame = ObjectWriter::new();
                        frame
                            .str("type", "ack")
                            .opt_str("client_msg_id", acked.as_deref());
                        match &response.message {
                            Some(message) => frame.message("message", message),
                            None => frame.null("message"),
                        };
                        Some(Message::Text(frame.finish().into()))
                    },
                )
            }
            "mark_messages_read" => {
                let up_to_seq = match frame.up_to_seq {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => n.as_i64(),
                    Some(_) => {
                        return Action::Reply(error_frame(
                            "invalid_request",
                            "up_to_seq: must be a non-negative integer",
                            None,
                        ));
                    }
                };
                self.call(
                    FrameKind::MarkRead,
                    Call::MarkRead(pb::MarkReadRequest {
                        thread_id,
                        up_to_seq,
                    }),
                    // A read cursor only moves forward.
                    true,
                    None,
                    |_| None,
                )
            }
            "typing_indicator" => {
                let Some(Value::Bool(is_typing)) = frame.is_typing else {
                    return Action::Reply(error_frame(
                        "invalid_request",
                        "is_typing: must be true or false",
                        None,
                    ));
                };
                self.call(
                    FrameKind::Typing,
                    Call::SetTyping(pb::SetTypingRequest {
                        thread_id,
                        is_typing,
                    }),
                    true,
                    None,
                    |_| None,
                )
            }
            "auth" => Action::Reply(error_frame("invalid_frame", "already authenticated", None)),
            _ => Action::Reply(error_frame("invalid_frame", "unknown frame type", None)),
        }
    }
}

/// When a (verified) token expires, read from its `exp` claim.
fn token_expiry(token: &str) -> Option<Instant> {
    use base64::Engine as _;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now)))
}
