//! `RelayService`: many live subscriptions over one bidirectional stream.
//!
//! A gateway carries tens of thousands of browser sockets; one `Subscribe`
//! stream each would cost an HTTP/2 stream and its buffers per socket on
//! both ends. Over a relay, a subscription costs only its own state: the
//! same [`crate::live`] state machine `Subscribe` uses (so every guarantee
//! holds per subscription), polled by one task per relay stream that wakes
//! only the subscriptions with something to say.
//!
//! Every open is authenticated by its own token, as `Subscribe` is by its
//! metadata; the stream grants nothing by itself.

use std::{
    collections::HashMap,
    pin::Pin,
    task::{Context, Poll, ready},
};

use chat_proto::v1::{self as pb, relay_event::Kind as RelayKind, relay_request::Kind as Command};
use futures_util::{
    StreamExt as _,
    future::BoxFuture,
    stream::{AbortHandle, Abortable, FuturesUnordered, SelectAll},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    bus::stopped,
    calls::{Answers, CallService},
    chat::{Chat, ChatError},
    domain::Caller,
    grpc::{Authenticator, subscribe_request},
    live::EventStream,
    presence::GatewayReport,
    wire::event_to_proto,
};

/// Answers waiting for the gateway. The gateway reads its relays without
/// ever waiting on a socket, so this fills only when the gateway itself is
/// overloaded; then the relay stops reading for a while and subscriptions
/// that fall behind are cut off (and re-opened by the gateway).
const OUTBOUND_QUEUE: usize = 1024;
/// Subscriptions one relay stream may hold.
const MAX_SUBSCRIPTIONS: usize = 200_000;

/// The relay service.
#[derive(Clone)]
pub struct RelayGrpc {
    chat: Chat,
    auth: Authenticator,
    calls: CallService,
    shutdown: watch::Receiver<bool>,
}

impl RelayGrpc {
    /// Relays for `chat`, checking each open with `auth`, and call streams
    /// served by `calls`; relay streams end when `shutdown` turns true
    /// (call streams once they have answered the calls they took).
    pub fn new(
        chat: Chat,
        auth: Authenticator,
        calls: CallService,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        RelayGrpc {
            chat,
            auth,
            calls,
            shutdown,
        }
    }
}

type RelayStream = Pin<Box<dyn Stream<Item = Result<pb::RelayEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::relay_service_server::RelayService for RelayGrpc {
    type RelayStream = RelayStream;
    type CallsStream = Answers;

    async fn calls(
        &self,
        request: Request<Streaming<pb::RelayCall>>,
    ) -> Result<Response<Self::CallsStream>, Status> {
        Ok(Response::new(
            self.calls
                .serve(request.into_inner(), self.shutdown.clone()),
        ))
    }

    async fn report_presence(
        &self,
        request: Request<pb::ReportPresenceRequest>,
    ) -> Result<Response<pb::ReportPresenceResponse>, Status> {
        let request = request.into_inner();
        let presence = self.chat.presence();
        // Each user who came online is proved by their socket's token, as
        // a relay open is; a refused token is left out and said back. A
        // release names nobody.
        let tokens = if request.release {
            &[][..]
        } else {
            &request.online_tokens[..]
        };
        let mut online = Vec::with_capacity(tokens.len());
        let mut refused = Vec::new();
        for (index, token) in tokens.iter().enumerate() {
            match self.auth.caller_with_token(token) {
                Ok(Caller::User(user)) => online.push(user),
                _ => refused.push(index as u32),
            }
        }
        let lease_was_live = presence
            .report(GatewayReport {
                gateway_id: request.gateway_id,
                online,
                offline: request.offline_user_ids,
                release: request.release,
            })
            .await?;
        Ok(Response::new(pb::ReportPresenceResponse {
            lease_was_live,
            renew_after_ms: u32::try_from(presence.settings().renew_after().as_millis())
                .unwrap_or(u32::MAX),
            refused,
        }))
    }

    async fn relay(
        &self,
        request: Request<Streaming<pb::RelayRequest>>,
    ) -> Result<Response<Self::RelayStream>, Status> {
        let (outbound, answers) = mpsc::channel(OUTBOUND_QUEUE);
        let relay = Relay {
            chat: self.chat.clone(),
            auth: self.auth.clone(),
            outbound,
            subscriptions: HashMap::new(),
            opening: FuturesUnordered::new(),
            live: SelectAll::new(),
        };
        tokio::spawn(relay.run(request.into_inner(), self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(answers))))
    }
}

/// Where a relay's answers wait for the transport.
type Outbound = mpsc::Sender<Result<pb::RelayEvent, Status>>;
/// One subscription's events in wire form, tagged with its id; ends when
/// the subscription is closed.
struct Tagged {
    id: u64,
    caller: Caller,
    events: Abortable<EventStream>,
}

impl Stream for Tagged {
    type Item = (u64, Result<pb::Event, Status>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let item = match ready!(self.events.poll_next_unpin(cx)) {
                None => return Poll::Ready(None),
                // Internal signals have no wire form.
                Some(Ok(event)) => match event_to_proto(&event, &self.caller) {
                    Some(event) => Ok(event),
                    None => continue,
                },
                Some(Err(err)) => Err(Status::from(err)),
            };
            return Poll::Ready(Some((self.id, item)));
        }
    }
}
/// A subscription being opened: its id and then its stream (or why it
/// failed) with its caller; nothing when it was closed while opening.
type Opening = BoxFuture<'static, (u64, Option<(Result<EventStream, ChatError>, Caller)>)>;

/// One relay stream's subscriptions.
struct Relay {
    chat: Chat,
    auth: Authenticator,
    outbound: Outbound,
    /// Open (or opening) subscriptions, to close them by id.
    subscriptions: HashMap<u64, AbortHandle>,
    opening: FuturesUnordered<Opening>,
    live: SelectAll<Tagged>,
}

impl Relay {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::RelayRequest>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut shutdown = shutdown;
        loop {
            let sent = tokio::select! {
                () = stopped(&mut shutdown) => return,
                command = inbound.message() => match command {
                    Ok(Some(pb::RelayRequest { kind: Some(command) })) => self.command(command).await,
                    Ok(Some(_)) => true,
                    // The gateway went away: every subscription goes with it.
                    Ok(None) | Err(_) => return,
                },
                Some((id, opened)) = self.opening.next() => match opened {
                    Some((opened, caller)) => self.opened(id, opened, caller).await,
                    None => true,
                },
                Some((id, item)) = self.live.next() => self.forward(id, item).await,
            };
            if !sent {
                return;
            }
        }
    }

    /// Handles an open or a close; false when the gateway is gone.
    async fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Open(open) => {
                let id = open.id;
                if self.subscriptions.contains_key(&id) {
                    return send(
                        &self.outbound,
                        id,
                        ended(&Status::already_exists("subscription id in use")),
                    )
                    .await;
                }
                if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                    return send(
                        &self.outbound,
                        id,
                        ended(&Status::resource_exhausted(
                            "too many subscriptions on one relay",
                        )),
                    )
                    .await;
                }
                let caller = match self.auth.caller_with_token(&open.token) {
                    Ok(caller) => caller,
                    Err(status) => return send(&self.outbound, id, ended(&status)).await,
                };
                let request = subscribe_request(open.subscribe.unwrap_or_default());
                let (abort, registration) = AbortHandle::new_pair();
                self.subscriptions.insert(id, abort);
                let chat = self.chat.clone();
                let opening = async move {
                    let opened = chat.subscribe(&caller, request).await;
                    (opened, caller)
                };
                // A close while opening drops the open (and its stream).
                self.opening.push(Box::pin(async move {
                    (id, Abortable::new(opening, registration).await.ok())
                }));
                true
            }
            Command::Close(close) => {
                if let Some(abort) = self.subscriptions.remove(&close.id) {
                    abort.abort();
                }
                true
            }
        }
    }

    /// An open finished: `opened` (then its events), or `ended`.
    async fn opened(
        &mut self,
        id: u64,
        opened: Result<EventStream, ChatError>,
        caller: Caller,
    ) -> bool {
        match opened {
            Ok(events) => {
                let (abort, registration) = AbortHandle::new_pair();
                self.subscriptions.insert(id, abort);
                self.live.push(Tagged {
                    id,
                    caller,
                    events: Abortable::new(events, registration),
                });
                send(&self.outbound, id, RelayKind::Opened(pb::RelayOpened {})).await
            }
            Err(err) => {
                self.subscriptions.remove(&id);
                send(&self.outbound, id, ended(&Status::from(err))).await
            }
        }
    }

    /// One subscription's event, or its end.
    async fn forward(&mut self, id: u64, item: Result<pb::Event, Status>) -> bool {
        match item {
            Ok(event) => send(&self.outbound, id, RelayKind::Event(event)).await,
            Err(status) => {
                // The stream yields nothing after its error.
                self.subscriptions.remove(&id);
                send(&self.outbound, id, ended(&status)).await
            }
        }
    }
}

/// Queues one answer for the gateway; false when the gateway is gone.
async fn send(outbound: &Outbound, id: u64, kind: RelayKind) -> bool {
    outbound
        .send(Ok(pb::RelayEvent {
            id,
            kind: Some(kind),
        }))
        .await
        .is_ok()
}

fn ended(status: &Status) -> RelayKind {
    RelayKind::Ended(pb::RelayEnded {
        code: status.code() as i32,
        message: status.message().to_owned(),
        error_code: String::new(),
        error_kinds: Vec::new(),
    })
}
