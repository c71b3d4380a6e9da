//! The gRPC transport: thin `chat.v1` service impls over [`Chat`], the
//! token interceptor, and the one mapping from [`ChatError`] to [`Status`].

use std::pin::Pin;

use chat_auth::{Role, TokenVerifier, VerifiedTokens};
use chat_proto::v1::{
    self as pb, chat_service_server::ChatService, integration_service_server::IntegrationService,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, service::Interceptor};

use crate::{
    chat::{Chat, ChatError, SendRequest},
    domain::{Caller, MessageKind},
    events::EventKind,
    integrations::Integrations,
    live::SubscribeRequest,
    wire::{
        event_to_proto, integration_to_proto, message_to_proto, thread_to_proto,
        transcript_to_proto,
    },
};

/// Checks the `authorization` metadata of every call (docs/api.md#identity-and-tokens) and hands
/// the [`Caller`] to the service through the request's extensions. A token
/// is verified again here even when the gateway already did: chat-core
/// trusts no one by network position.
/// Good tokens are remembered until they expire ([`VerifiedTokens`]): the
/// gateways' call streams carry a token with every call.
#[derive(Clone)]
pub struct Authenticator {
    tokens: VerifiedTokens,
}

impl Authenticator {
    /// An interceptor checking tokens with `verifier`.
    pub fn new(verifier: TokenVerifier) -> Self {
        Authenticator {
            tokens: VerifiedTokens::new(verifier),
        }
    }
}

impl Authenticator {
    /// The caller an `authorization` value (`Bearer <jwt>`) stands for.
    pub fn caller(&self, header: Option<&str>) -> Result<Caller, Status> {
        caller_of(self.tokens.verify_bearer(header))
    }

    /// The caller a bare token (no `Bearer ` scheme) names, checked as
    /// [`Authenticator::caller`] checks a header: for calls and
    /// subscriptions that carry their own token inside a stream.
    pub fn caller_with_token(&self, token: &str) -> Result<Caller, Status> {
        if token.is_empty() {
            return self.caller(None);
        }
        caller_of(self.tokens.verify(token))
    }
}

/// The caller a verified identity is, or why there is none.
fn caller_of(
    identity: Result<chat_auth::Identity, chat_auth::AuthError>,
) -> Result<Caller, Status> {
    let identity = identity.map_err(|err| Status::unauthenticated(err.to_string()))?;
    Ok(match identity.role {
        Role::Service => Caller::Service(identity.subject),
        Role::User => Caller::User(identity.subject),
    })
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = match request.metadata().get("authorization") {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| Status::unauthenticated("malformed authorization metadata"))?,
            ),
            None => None,
        };
        let caller = self.caller(header)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the [`Authenticator`] put on the request.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing token"))
}

/// The one place where domain errors become gRPC status codes. Internal
/// details are logged, never sent.
impl From<ChatError> for Status {
    fn from(err: ChatError) -> Self {
        match &err {
            ChatError::InvalidArgument(message) => Status::invalid_argument(message.clone()),
            ChatError::NotFound(_) => Status::not_found(err.to_string()),
            ChatError::PermissionDenied(message) => Status::permission_denied(*message),
            ChatError::FailedPrecondition(message) => Status::failed_precondition(*message),
            ChatError::Unavailable(source) => {
                tracing::warn!(error = %source, cause = ?std::error::Error::source(source), "storage unavailable");
                Status::unavailable("storage unavailable, try again")
            }
            ChatError::Lagging => Status::resource_exhausted(err.to_string()),
            ChatError::CapReached(message) => Status::resource_exhausted(*message),
            ChatError::ContactBlocked(kinds) => chat_proto::errors::contact_blocked(
                Status::failed_precondition(err.to_string()),
                kinds,
            ),
            ChatError::ShuttingDown => Status::unavailable(err.to_string()),
            ChatError::Internal(source) => {
                tracing::error!(error = %source, cause = ?std::error::Error::source(source), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// A `Subscribe` request in domain form.
pub fn subscribe_request(request: pb::SubscribeRequest) -> SubscribeRequest {
    SubscribeRequest {
        thread_id: request.thread_id,
        since_seq: request.since_seq,
        since_seqs: request.since_seqs,
    }
}

fn message_kind(value: i32) -> Result<Option<MessageKind>, Status> {
    match pb::MessageType::try_from(value) {
        Ok(pb::MessageType::Unspecified) => Ok(None),
        Ok(pb::MessageType::Text) => Ok(Some(MessageKind::Text)),
        Ok(pb::MessageType::System) => Ok(Some(MessageKind::System)),
        Ok(pb::MessageType::Payment) => Ok(Some(MessageKind::Payment)),
        Ok(pb::MessageType::Dispute) => Ok(Some(MessageKind::Dispute)),
        Ok(pb::MessageType::JobUpdate) => Ok(Some(MessageKind::JobUpdate)),
        Err(_) => Err(Status::invalid_argument("message_type: unknown value")),
    }
}

/// `ChatService` over [`Chat`].
#[derive(Debug, Clone)]
pub struct ChatGrpc {
    chat: Chat,
}

impl ChatGrpc {
    /// The service for `chat`.
    pub fn new(chat: Chat) -> Self {
        ChatGrpc { chat }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type IntegrationEventStream =
    Pin<Box<dyn Stream<Item = Result<pb::IntegrationEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for ChatGrpc {
    async fn create_thread(
        &self,
        request: Request<pb::CreateThreadRequest>,
    ) -> Result<Response<pb::CreateThreadResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (view, created) = self
            .chat
            .create_thread(
                &caller,
                &req.participants,
                req.job_id.as_deref(),
                req.title.as_deref(),
            )
            .await?;
        Ok(Response::new(pb::CreateThreadResponse {
            thread: Some(thread_to_proto(view)),
            created,
        }))
    }

    async fn get_thread(
        &self,
        request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let caller = caller(&request)?;
        let view = self
            .chat
            .get_thread(&caller, &request.get_ref().thread_id)
            .await?;
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(thread_to_proto(view)),
        }))
    }

    async fn list_threads(
        &self,
        request: Request<pb::ListThreadsRequest>,
    ) -> Result<Response<pb::ListThreadsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = self
            .chat
            .list_threads(
                &caller,
                req.limit,
                req.cursor.as_deref(),
                req.job_id.as_deref(),
            )
            .await?;
        Ok(Response::new(pb::ListThreadsResponse {
            threads: page.threads.into_iter().map(thread_to_proto).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    async fn find_thread_by_participants(
        &self,
        request: Request<pb::FindThreadByParticipantsRequest>,
    ) -> Result<Response<pb::FindThreadByParticipantsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let view = self
            .chat
            .find_thread(&caller, &req.participants, req.job_id.as_deref())
            .await?;
        Ok(Response::new(pb::FindThreadByParticipantsResponse {
            thread: Some(thread_to_proto(view)),
        }))
    }

    async fn update_thread(
        &self,
        request: Request<pb::UpdateThreadRequest>,
    ) -> Result<Response<pb::UpdateThreadResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let view = self
            .chat
            .update_thread(&caller, &req.thread_id, req.title.as_deref())
            .await?;
        Ok(Response::new(pb::UpdateThreadResponse {
            thread: Some(thread_to_proto(view)),
        }))
    }

    async fn archive_thread(
        &self,
        request: Request<pb::ArchiveThreadRequest>,
    ) -> Result<Response<pb::ArchiveThreadResponse>, Status> {
        let caller = caller(&request)?;
        self.chat
            .archive_thread(&caller, &request.get_ref().thread_id)
            .await?;
        Ok(Response::new(pb::ArchiveThreadResponse {}))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let kind = message_kind(req.message_type)?;
        let (message, created) = self
            .chat
            .send_message(
                &caller,
                SendRequest {
                    thread_id: req.thread_id,
                    content: req.content,
                    client_msg_id: req.client_msg_id,
                    metadata: req.metadata_json,
                    kind,
                },
            )
            .await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(message_to_proto(message)),
            created,
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = self
            .chat
            .list_messages(
                &caller,
                &req.thread_id,
                req.before_seq,
                req.after_seq,
                req.limit,
            )
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.messages.into_iter().map(message_to_proto).collect(),
            has_more: page.has_more,
        }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let caller = caller(&request)?;
        let message = self
            .chat
            .get_message(&caller, &request.get_ref().message_id)
            .await?;
        Ok(Response::new(pb::GetMessageResponse {
            message: Some(message_to_proto(message)),
        }))
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let message = self
            .chat
            .edit_message(&caller, &req.message_id, &req.content)
            .await?;
        Ok(Response::new(pb::EditMessageResponse {
            message: Some(message_to_proto(message)),
        }))
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let caller = caller(&request)?;
        self.chat
            .delete_message(&caller, &request.get_ref().message_id)
            .await?;
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let state = self
            .chat
            .mark_read(&caller, &req.thread_id, req.up_to_seq)
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            thread_id: state.thread_id.to_string(),
            last_read_seq: state.last_read_seq,
            unread_count: state.unread_count,
        }))
    }

    async fn get_unread_counts(
        &self,
        request: Request<pb::GetUnreadCountsRequest>,
    ) -> Result<Response<pb::GetUnreadCountsResponse>, Status> {
        let caller = caller(&request)?;
        let counts = self.chat.unread_counts(&caller).await?;
        Ok(Response::new(pb::GetUnreadCountsResponse {
            total: counts.total,
            threads: counts
                .threads
                .into_iter()
                .map(|(id, n)| (id.to_string(), n))
                .collect(),
        }))
    }

    async fn set_typing(
        &self,
        request: Request<pb::SetTypingRequest>,
    ) -> Result<Response<pb::SetTypingResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        self.chat
            .set_typing(&caller, &req.thread_id, req.is_typing)
            .await?;
        Ok(Response::new(pb::SetTypingResponse {}))
    }

    async fn search_messages(
        &self,
        request: Request<pb::SearchMessagesRequest>,
    ) -> Result<Response<pb::SearchMessagesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = self
            .chat
            .search(
                &caller,
                &req.q,
                req.thread_id.as_deref(),
                Some(u32::try_from(req.limit).unwrap_or(u32::MAX)),
                req.cursor.as_deref(),
            )
            .await?;
        Ok(Response::new(pb::SearchMessagesResponse {
            results: page
                .results
                .into_iter()
                .map(|message| pb::SearchResult {
                    thread_id: message.thread_id.to_string(),
                    message: Some(message_to_proto(message)),
                })
                .collect(),
            next_cursor: page.next_cursor,
        }))
    }

    async fn export_transcript(
        &self,
        request: Request<pb::ExportTranscriptRequest>,
    ) -> Result<Response<pb::ExportTranscriptResponse>, Status> {
        let caller = caller(&request)?;
        let export = self
            .chat
            .export_transcript(&caller, &request.get_ref().thread_id)
            .await?;
        Ok(Response::new(transcript_to_proto(export)))
    }

    async fn list_transcript_keys(
        &self,
        request: Request<pb::ListTranscriptKeysRequest>,
    ) -> Result<Response<pb::ListTranscriptKeysResponse>, Status> {
        caller(&request)?;
        let keys = self.chat.transcript_keys().await?;
        Ok(Response::new(pb::ListTranscriptKeysResponse {
            keys: keys
                .into_iter()
                .map(|key| pb::TranscriptKey {
                    key_id: key.key_id,
                    public_key: key.public_key,
                })
                .collect(),
        }))
    }

    async fn set_contact_policy(
        &self,
        request: Request<pb::SetContactPolicyRequest>,
    ) -> Result<Response<pb::SetContactPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let view = self
            .chat
            .set_contact_policy(&caller, &req.thread_id, req.policy.as_deref())
            .await?;
        Ok(Response::new(pb::SetContactPolicyResponse {
            thread: Some(thread_to_proto(view)),
        }))
    }

    async fn get_presence(
        &self,
        request: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let caller = caller(&request)?;
        let users = self
            .chat
            .presence()
            .query(&caller, request.into_inner().user_ids)
            .await?;
        Ok(Response::new(pb::GetPresenceResponse {
            users: users
                .into_iter()
                .map(|state| pb::UserPresence {
                    user_id: state.user_id,
                    online: state.online,
                    last_seen_at: state.last_seen_at.map(crate::wire::timestamp),
                })
                .collect(),
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use tokio_stream::StreamExt as _;
        let caller = caller(&request)?;
        let req = request.into_inner();
        // One-thread streams start with a baseline only relays show.
        let one_thread = req.thread_id.is_some();
        let events = self.chat.subscribe(&caller, subscribe_request(req)).await?;
        let stream = events.filter_map(move |item| match item {
            Ok(event) if one_thread && matches!(event.kind, EventKind::Synced(_)) => None,
            Ok(event) => event_to_proto(&event, &caller).map(Ok),
            Err(err) => Some(Err(Status::from(err))),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `IntegrationService` over [`Integrations`].
#[derive(Debug, Clone)]
pub struct IntegrationGrpc {
    integrations: Integrations,
}

impl IntegrationGrpc {
    /// The service for `integrations`.
    pub fn new(integrations: Integrations) -> Self {
        IntegrationGrpc { integrations }
    }
}

fn message_response(message: crate::domain::Message) -> Response<pb::IntegrationMessageResponse> {
    Response::new(pb::IntegrationMessageResponse {
        message: Some(message_to_proto(message)),
    })
}

#[tonic::async_trait]
impl IntegrationService for IntegrationGrpc {
    async fn request_dispute(
        &self,
        request: Request<pb::RequestDisputeRequest>,
    ) -> Result<Response<pb::IntegrationMessageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let message = self
            .integrations
            .request_dispute(&caller, &req.thread_id, &req.reason, req.details.as_deref())
            .await?;
        Ok(message_response(message))
    }

    async fn initiate_payment(
        &self,
        request: Request<pb::InitiatePaymentRequest>,
    ) -> Result<Response<pb::IntegrationMessageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let message = self
            .integrations
            .initiate_payment(
                &caller,
                &req.thread_id,
                &req.amount,
                &req.currency,
                req.job_id.as_deref(),
            )
            .await?;
        Ok(message_response(message))
    }

    async fn post_job_update(
        &self,
        request: Request<pb::PostJobUpdateRequest>,
    ) -> Result<Response<pb::IntegrationMessageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let message = self
            .integrations
            .post_job_update(
                &caller,
                &req.thread_id,
                &req.job_id,
                &req.status,
                req.note.as_deref(),
            )
            .await?;
        Ok(message_response(message))
    }

    async fn post_system_event(
        &self,
        request: Request<pb::PostSystemEventRequest>,
    ) -> Result<Response<pb::PostSystemEventResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let kind = message_kind(req.message_type)?;
        let (message, created) = self
            .integrations
            .post_system_event(
                &caller,
                &req.thread_id,
                kind,
                &req.content,
                req.metadata_json.as_deref(),
                &req.idempotency_key,
            )
            .await?;
        Ok(Response::new(pb::PostSystemEventResponse {
            message: Some(message_to_proto(message)),
            created,
        }))
    }

    type WatchIntegrationEventsStream = IntegrationEventStream;

    async fn watch_integration_events(
        &self,
        request: Request<pb::WatchIntegrationEventsRequest>,
    ) -> Result<Response<Self::WatchIntegrationEventsStream>, Status> {
        use tokio_stream::StreamExt as _;
        let caller = caller(&request)?;
        let req = request.into_inner();
        let events = self
            .integrations
            .watch(&caller, req.after_event_id, req.event_types)
            .await?;
        let stream = events.map(|item| match item {
            Ok(record) => Ok(integration_to_proto(&record)),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
