//! `RelayService.Calls`: the gateway's per-frame chat calls over one
//! stream.
//!
//! Why: a unary RPC costs an HTTP/2 stream, a header block (the token
//! Huffman-coded one way and decoded the other) and the whole service stack
//! on both ends; profiled at thousands of sends a second, that framing cost
//! chat-core more CPU than the send itself. Here a call is one small
//! message each way.
//!
//! Each call is still answered by the unary handler ([`ChatGrpc`]), with the
//! caller checked from the call's own token exactly as the interceptor
//! would, so validation, errors and metrics cannot drift apart. Calls run
//! concurrently (they wait on the group-commit writer), answers leave in
//! completion order under the caller's id. At most [`MAX_IN_FLIGHT`]
//! run per stream; beyond that the stream stops reading, and HTTP/2 flow
//! control slows the gateway down.

use std::{sync::Arc, time::Instant};

use chat_proto::v1::{
    self as pb, chat_service_server::ChatService as _, relay_call::Call,
    relay_call_result::Result as Answer,
};
use futures_util::{StreamExt as _, stream::FuturesUnordered};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    bus::stopped,
    grpc::{Authenticator, ChatGrpc},
    metrics::RpcMetrics,
};

/// Calls one stream runs at once.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Answers waiting for the transport.
const OUTBOUND_QUEUE: usize = 1024;

/// What serves call streams. Cheap to clone.
#[derive(Clone)]
pub struct CallService {
    chat: ChatGrpc,
    auth: Authenticator,
    metrics: RpcMetrics,
}

/// The answers of one call stream.
pub type Answers = ReceiverStream<Result<pb::RelayCallResult, Status>>;

impl CallService {
    /// Calls answered by `chat`, each checked by `auth`, recorded in
    /// `metrics` under the unary method's name.
    pub fn new(chat: ChatGrpc, auth: Authenticator, metrics: RpcMetrics) -> Self {
        CallService {
            chat,
            auth,
            metrics,
        }
    }

    /// Serves one stream of calls until the gateway closes it or the
    /// server stops (then the calls already taken are still answered).
    pub fn serve(
        &self,
        calls: Streaming<pb::RelayCall>,
        shutdown: watch::Receiver<bool>,
    ) -> Answers {
        let (outbound, answers) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(self.clone().run(calls, outbound, shutdown));
        ReceiverStream::new(answers)
    }

    async fn run(
        self,
        mut calls: Streaming<pb::RelayCall>,
        outbound: mpsc::Sender<Result<pb::RelayCallResult, Status>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Shared by the calls in flight: one reference count per call.
        let service = Arc::new(self);
        let mut running = FuturesUnordered::new();
        let mut taking = true;
        loop {
            tokio::select! {
                () = stopped(&mut shutdown), if taking => taking = false,
                call = calls.message(), if taking && running.len() < MAX_IN_FLIGHT => match call {
                    Ok(Some(call)) => running.push(service.clone().answer(call)),
                    // The gateway went away: nobody is left to answer.
                    Ok(None) | Err(_) => return,
                },
                Some(answer) = running.next() => {
                    if outbound.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                else => return,
            }
            if !taking && running.is_empty() {
                return;
            }
        }
    }

    /// One call, answered as its unary RPC would answer it.
    async fn answer(self: Arc<Self>, call: pb::RelayCall) -> pb::RelayCallResult {
        let started = Instant::now();
        let method = match &call.call {
            Some(Call::SendMessage(_)) => "/chat.v1.ChatService/SendMessage",
            Some(Call::MarkRead(_)) => "/chat.v1.ChatService/MarkRead",
            Some(Call::SetTyping(_)) => "/chat.v1.ChatService/SetTyping",
            None => "/chat.v1.RelayService/Calls",
        };
        let span = crate::metrics::rpc_span(method, &call.request_id);
        chat_runtime::telemetry::continue_from_traceparent(&span, &call.traceparent);
        let result = self.dispatch(call.token, call.call).instrument(span).await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics
            .observe_call(method, code, started.elapsed().as_secs_f64());
        pb::RelayCallResult {
            id: call.id,
            result: Some(result.unwrap_or_else(|status| {
                Answer::Failed(pb::RelayEnded {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    error_code: chat_proto::errors::code_of(&status)
                        .unwrap_or_default()
                        .to_owned(),
                    error_kinds: chat_proto::errors::kinds_of(&status),
                })
            })),
        }
    }

    async fn dispatch(&self, token: String, call: Option<Call>) -> Result<Answer, Status> {
        let caller = self.auth.caller_with_token(&token)?;
        fn request<T>(body: T, caller: crate::domain::Caller) -> Request<T> {
            let mut request = Request::new(body);
            request.extensions_mut().insert(caller);
            request
        }
        match call {
            Some(Call::SendMessage(body)) => self
                .chat
                .send_message(request(body, caller))
                .await
                .map(|r| Answer::SendMessage(r.into_inner())),
            Some(Call::MarkRead(body)) => self
                .chat
                .mark_read(request(body, caller))
                .await
                .map(|r| Answer::MarkRead(r.into_inner())),
            Some(Call::SetTyping(body)) => self
                .chat
                .set_typing(request(body, caller))
                .await
                .map(|r| Answer::SetTyping(r.into_inner())),
            None => Err(Status::invalid_argument("a call names what it calls")),
        }
    }
}
