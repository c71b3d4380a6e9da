//! The chat domain: who may do what (docs/api.md#identity-and-tokens) and which inputs are valid
//! (docs/api.md#data-model), over the [`Store`]. Transports call these methods with a
//! [`Caller`] and plain values and translate [`ChatError`] once each.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

mod records;

pub use records::{SearchPage, TranscriptExport, TranscriptKey};

use crate::{
    domain::{
        self, Caller, ContactPolicy, Invalid, Message, MessageKind, ThreadView, limits,
        normalize_metadata, normalize_title, now_micros, parse_id, validate_client_msg_id,
        validate_content, validate_job_id, validate_seq,
    },
    events::{ChatEvent, EventKind},
    live::{EventStream, LiveEvents, SubscribeRequest},
    store::{
        Appended, Changed, MessagePage, NewMessage, NewThread, Store, StoreError, ThreadCursor,
    },
    writer::MessageWriter,
};

/// Why a chat operation was refused or failed; each transport maps these to
/// its status codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// An input broke a rule of docs/api.md#data-model; the message says which.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such thread or message, or the caller may not see it: the two are
    /// indistinguishable on purpose.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may see the target but not do this to it.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// The target's state forbids the change.
    #[error("{0}")]
    FailedPrecondition(&'static str),
    /// Storage is unreachable; retrying later may work.
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    /// Anything else; details stay in the logs.
    #[error("internal error")]
    Internal(#[source] StoreError),
    /// A live subscriber fell too far behind and was cut off.
    #[error("subscriber too slow: events were dropped; subscribe again with since_seq")]
    Lagging,
    /// The server is stopping; live subscribers should reconnect elsewhere.
    #[error("server shutting down; subscribe again with since_seq")]
    ShuttingDown,
    /// The caller reached a per-user cap ([`crate::caps`]); the message
    /// says which.
    #[error("{0}")]
    CapReached(&'static str),
    /// The text holds contact details (these kinds) and the thread's policy
    /// blocks them: nothing was stored.
    #[error("message blocked: it contains contact details ({})", .0.join(", "))]
    ContactBlocked(Vec<&'static str>),
}

impl From<Invalid> for ChatError {
    fn from(invalid: Invalid) -> Self {
        ChatError::InvalidArgument(invalid.0)
    }
}

impl From<StoreError> for ChatError {
    fn from(err: StoreError) -> Self {
        if err.is_unavailable() {
            ChatError::Unavailable(err)
        } else {
            ChatError::Internal(err)
        }
    }
}

const THREAD: &str = "thread";
const MESSAGE: &str = "message";

/// A page of threads and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadPage {
    pub threads: Vec<ThreadView>,
    pub next_cursor: Option<String>,
}

/// A page of messages, ascending by seq.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesPage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// A message to send, as a transport received it.
#[derive(Debug, Clone, Default)]
pub struct SendRequest {
    pub thread_id: String,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub metadata: Option<String>,
    /// `None` means text.
    pub kind: Option<MessageKind>,
}

/// A caller's read state after moving their cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    pub thread_id: Uuid,
    pub last_read_seq: i64,
    pub unread_count: i64,
}

/// Unread counts: the total and each thread with unread messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadCounts {
    pub total: i64,
    pub threads: Vec<(Uuid, i64)>,
}

/// The chat operations of docs/api.md#grpc-api `ChatService`.
#[derive(Debug, Clone)]
pub struct Chat {
    store: Store,
    writer: MessageWriter,
    live: LiveEvents,
    caps: std::sync::Arc<crate::caps::Caps>,
    /// Signs transcript exports; set by [`Chat::with_transcript_signer`].
    signer: Option<std::sync::Arc<crate::transcript::signing::TranscriptSigner>>,
    /// Checks users' texts for contact details.
    guard: std::sync::Arc<crate::guard::ContactGuard>,
    /// Presence and reminders (see [`crate::presence`]).
    presence: crate::presence::Presence,
}

fn thread_id(id: &str) -> Result<Uuid, ChatError> {
    parse_id(id).ok_or(ChatError::NotFound(THREAD))
}

fn message_id(id: &str) -> Result<Uuid, ChatError> {
    parse_id(id).ok_or(ChatError::NotFound(MESSAGE))
}

fn acting_user(caller: &Caller) -> Result<&str, ChatError> {
    caller.user_id().ok_or(ChatError::PermissionDenied(
        "a service token cannot act as a participant",
    ))
}

fn encode_cursor(cursor: ThreadCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "t1.{}.{}",
        cursor.activity_at,
        cursor.thread_id.simple()
    ))
}

fn decode_cursor(text: &str) -> Result<ThreadCursor, ChatError> {
    let bad = || ChatError::InvalidArgument("cursor: not a cursor issued by this server".into());
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let mut parts = text.split('.');
    let (Some("t1"), Some(activity), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let activity_at: i64 = activity.parse().map_err(|_| bad())?;
    if id.len() != 32 {
        return Err(bad());
    }
    let thread_id = Uuid::try_parse(id).map_err(|_| bad())?;
    Ok(ThreadCursor {
        activity_at,
        thread_id,
    })
}

impl Chat {
    /// Chat over `store`, publishing live events through `live`.
    pub fn new(store: Store, live: LiveEvents) -> Self {
        let writer = MessageWriter::new(store.clone(), live.clone());
        let presence =
            crate::presence::Presence::new(store.clone(), live.clone(), Default::default());
        Chat {
            store,
            writer,
            live,
            caps: crate::caps::Caps::new(crate::caps::CapSettings::default()),
            signer: None,
            guard: std::sync::Arc::new(crate::guard::ContactGuard::new(ContactPolicy::Flag)),
            presence,
        }
    }

    /// The same, with presence timed by `settings` instead of the defaults.
    pub fn with_presence(mut self, settings: crate::presence::PresenceSettings) -> Self {
        self.presence =
            crate::presence::Presence::new(self.store.clone(), self.live.clone(), settings);
        self
    }

    /// Presence and reminders.
    pub fn presence(&self) -> &crate::presence::Presence {
        &self.presence
    }

    /// The same, with per-user caps of `settings` instead of the defaults.
    pub fn with_caps(mut self, settings: crate::caps::CapSettings) -> Self {
        self.caps = crate::caps::Caps::new(settings);
        self
    }

    /// The same, with `policy` for threads without their own
    /// (`CONTACT_POLICY`).
    pub fn with_contact_policy(mut self, policy: ContactPolicy) -> Self {
        self.guard = std::sync::Arc::new(crate::guard::ContactGuard::new(policy));
        self
    }

    /// Live events, shared with the integration operations.
    pub fn live(&self) -> &LiveEvents {
        &self.live
    }

    /// The send path, shared with the integration operations.
    pub fn writer(&self) -> &MessageWriter {
        &self.writer
    }

    /// Creates the thread of these participants (the caller added when a
    /// user) and job, or returns the existing one (`false`). Re-creating a
    /// thread the caller archived brings it back to their list.
    pub async fn create_thread(
        &self,
        caller: &Caller,
        participants: &[String],
        job_id: Option<&str>,
        title: Option<&str>,
    ) -> Result<(ThreadView, bool), ChatError> {
        let participants = domain::validate_participants(participants, caller.user_id())?;
        if let Some(job_id) = job_id {
            validate_job_id(job_id)?;
        }
        let title = normalize_title(title)?;
        let new = NewThread {
            id: Uuid::now_v7(),
            participants,
            job_id: job_id.map(str::to_owned),
            title,
            created_by: caller.subject().to_owned(),
            created_at: now_micros(),
        };
        // A user's allowance counts threads created, not found: at the cap,
        // asking for an existing thread still answers it.
        let user = caller.user_id();
        let mut took = false;
        if let Some(user) = user {
            took = self.caps.take_creation(user).is_ok();
            if !took
                && self
                    .store
                    .find_thread(&new.participants, new.job_id.as_deref(), None)
                    .await?
                    .is_none()
            {
                return Err(ChatError::CapReached(
                    "too many new threads; try again in a minute",
                ));
            }
        }
        let stored = self.store.create_thread(&new).await;
        if let Some(user) = user
            && took
            && !matches!(stored, Ok((_, true)))
        {
            // Nothing was created: finding a thread is not limited.
            self.caps.return_creation(user);
        }
        let (thread, created) = stored?;
        if created {
            self.live.publish_thread_created(thread.clone());
            let view = ThreadView {
                thread,
                last_read_seq: 0,
                as_participant: caller.user_id().is_some(),
                last_message: None,
            };
            return Ok((view, true));
        }
        if let Some(user) = caller.user_id() {
            self.store.set_archived(thread.id, user, false).await?;
        }
        let view = self
            .store
            .thread(thread.id, caller.user_id())
            .await?
            .ok_or(ChatError::NotFound(THREAD))?;
        Ok((view, false))
    }

    /// One thread as the caller sees it.
    pub async fn get_thread(&self, caller: &Caller, id: &str) -> Result<ThreadView, ChatError> {
        let id = thread_id(id)?;
        self.store
            .thread(id, caller.user_id())
            .await?
            .ok_or(ChatError::NotFound(THREAD))
    }

    /// Sets the thread's own contact policy (`None`: back to the
    /// deployment's default). Service tokens only: the job service, say,
    /// blocks contact details until a contract starts.
    pub async fn set_contact_policy(
        &self,
        caller: &Caller,
        id: &str,
        policy: Option<&str>,
    ) -> Result<ThreadView, ChatError> {
        if caller.user_id().is_some() {
            return Err(ChatError::PermissionDenied(
                "only a service token can set a thread's contact policy",
            ));
        }
        let policy = policy
            .map(|text| {
                ContactPolicy::parse(text).ok_or_else(|| {
                    ChatError::InvalidArgument(
                        "policy: must be off, flag, mask, block or null".into(),
                    )
                })
            })
            .transpose()?;
        let id = thread_id(id)?;
        if !self.store.set_contact_policy(id, policy).await? {
            return Err(ChatError::NotFound(THREAD));
        }
        self.get_thread(caller, &id.to_string()).await
    }

    /// A page of the caller's threads (every thread for a service), most
    /// recent activity first.
    pub async fn list_threads(
        &self,
        caller: &Caller,
        limit: i32,
        cursor: Option<&str>,
        job_id: Option<&str>,
    ) -> Result<ThreadPage, ChatError> {
        let limit =
            domain::page_limit(limit, limits::DEFAULT_THREAD_PAGE, limits::MAX_THREAD_PAGE)?;
        let after = cursor.map(decode_cursor).transpose()?;
        if let Some(job_id) = job_id {
            validate_job_id(job_id)?;
        }
        let mut page = self
            .store
            .list_threads(caller.user_id(), job_id, after, limit + 1)
            .await?;
        let next_cursor = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last().map(|(_, cursor)| encode_cursor(*cursor))
        } else {
            None
        };
        let threads = page
            .into_iter()
            .map(|(mut view, _)| {
                view.last_message = view.last_message.map(|m| m.as_seen_by(caller));
                view
            })
            .collect();
        Ok(ThreadPage {
            threads,
            next_cursor,
        })
    }

    /// The thread with exactly these participants and job; a user caller
    /// must be one of them.
    pub async fn find_thread(
        &self,
        caller: &Caller,
        participants: &[String],
        job_id: Option<&str>,
    ) -> Result<ThreadView, ChatError> {
        let participants = domain::validate_participant_set(participants)?;
        if let Some(job_id) = job_id {
            validate_job_id(job_id)?;
        }
        if let Some(user) = caller.user_id()
            && participants
                .binary_search_by(|p| p.as_str().cmp(user))
                .is_err()
        {
            return Err(ChatError::NotFound(THREAD));
        }
        self.store
            .find_thread(&participants, job_id, caller.user_id())
            .await?
            .ok_or(ChatError::NotFound(THREAD))
    }

    /// A participant sets (or, with `None` or "", clears) a thread's title.
    pub async fn update_thread(
        &self,
        caller: &Caller,
        id: &str,
        title: Option<&str>,
    ) -> Result<ThreadView, ChatError> {
        // Services read threads and post system events; they do not edit
        // what participants see (docs/api.md#identity-and-tokens).
        acting_user(caller)?;
        let title = normalize_title(title)?;
        let mut view = self.get_thread(caller, id).await?;
        if !self
            .store
            .update_title(view.thread.id, title.as_deref())
            .await?
        {
            return Err(ChatError::NotFound(THREAD));
        }
        view.thread.title = title;
        self.live.publish(ChatEvent {
            thread_id: view.thread.id,
            kind: EventKind::ThreadUpdated(view.thread.clone()),
        });
        Ok(view)
    }

    /// Hides the thread from the caller's list until a new message arrives.
    pub async fn archive_thread(&self, caller: &Caller, id: &str) -> Result<(), ChatError> {
        let user = acting_user(caller)?;
        let id = thread_id(id)?;
        if self.store.set_archived(id, user, true).await? {
            Ok(())
        } else {
            Err(ChatError::NotFound(THREAD))
        }
    }

    /// Stores a text message from the calling user; `false` when its
    /// client_msg_id was used before and the original is returned.
    pub async fn send_message(
        &self,
        caller: &Caller,
        request: SendRequest,
    ) -> Result<(Message, bool), ChatError> {
        let user = acting_user(caller)?;
        match request.kind {
            None | Some(MessageKind::Text) => {}
            Some(_) => {
                return Err(ChatError::InvalidArgument(
                    "message_type: users post text messages only".into(),
                ));
            }
        }
        validate_content(&request.content)?;
        if let Some(id) = &request.client_msg_id {
            validate_client_msg_id(id)?;
        }
        let metadata = normalize_metadata(request.metadata.as_deref())?;
        let thread_id = thread_id(&request.thread_id)?;
        let contact = self.guard.check(&request.content);
        let new = NewMessage {
            id: Uuid::now_v7(),
            thread_id,
            sender_id: Some(user.to_owned()),
            kind: MessageKind::Text,
            content: request.content,
            metadata,
            client_msg_id: request.client_msg_id,
            posted_by: None,
            idempotency_key: None,
            created_at: now_micros(),
            event: None,
            contact,
        };
        match self.writer.append(new).await? {
            Some(Appended::Created(message, _)) => Ok((message.as_seen_by(caller), true)),
            Some(Appended::Duplicate(message)) => Ok((message.as_seen_by(caller), false)),
            Some(Appended::Blocked { kinds, .. }) => Err(ChatError::ContactBlocked(kinds)),
            None => Err(ChatError::NotFound(THREAD)),
        }
    }

    /// A page of a thread's messages: the newest by default, or those
    /// before or after a seq.
    pub async fn list_messages(
        &self,
        caller: &Caller,
        id: &str,
        before_seq: Option<i64>,
        after_seq: Option<i64>,
        limit: i32,
    ) -> Result<MessagesPage, ChatError> {
        let limit = domain::page_limit(
            limit,
            limits::DEFAULT_MESSAGE_PAGE,
            limits::MAX_MESSAGE_PAGE,
        )?;
        let page = match (before_seq, after_seq) {
            (Some(_), Some(_)) => {
                return Err(ChatError::InvalidArgument(
                    "before_seq and after_seq cannot be combined".into(),
                ));
            }
            (Some(before), None) => {
                validate_seq("before_seq", before)?;
                MessagePage::Before(before)
            }
            (None, Some(after)) => {
                validate_seq("after_seq", after)?;
                MessagePage::After(after)
            }
            (None, None) => MessagePage::Latest,
        };
        let id = thread_id(id)?;
        if !self.store.can_see(id, caller.user_id()).await? {
            return Err(ChatError::NotFound(THREAD));
        }
        let (messages, has_more) = self.store.list_messages(id, page, limit).await?;
        let messages = messages.into_iter().map(|m| m.as_seen_by(caller)).collect();
        Ok(MessagesPage { messages, has_more })
    }

    /// One message.
    pub async fn get_message(&self, caller: &Caller, id: &str) -> Result<Message, ChatError> {
        let id = message_id(id)?;
        self.store
            .message(id, caller.user_id())
            .await?
            .map(|m| m.as_seen_by(caller))
            .ok_or(ChatError::NotFound(MESSAGE))
    }

    /// The caller's own message that they may change.
    async fn own_message(&self, caller: &Caller, id: &str) -> Result<Message, ChatError> {
        let user = acting_user(caller)?;
        let id = message_id(id)?;
        let message = self
            .store
            .message(id, Some(user))
            .await?
            .ok_or(ChatError::NotFound(MESSAGE))?;
        if message.sender_id.as_deref() != Some(user) {
            return Err(ChatError::PermissionDenied(
                "only the sender can change a message",
            ));
        }
        Ok(message)
    }

    /// The sender replaces a text message's content.
    pub async fn edit_message(
        &self,
        caller: &Caller,
        id: &str,
        content: &str,
    ) -> Result<Message, ChatError> {
        acting_user(caller)?;
        validate_content(content)?;
        let message = self.own_message(caller, id).await?;
        if message.deleted_at.is_some() {
            return Err(ChatError::FailedPrecondition(
                "a deleted message cannot be edited",
            ));
        }
        if message.kind != MessageKind::Text {
            return Err(ChatError::FailedPrecondition(
                "only text messages can be edited",
            ));
        }
        let changed = self
            .store
            .edit_message(
                message.id,
                acting_user(caller)?,
                content,
                self.guard.check(content),
                now_micros(),
            )
            .await?
            .ok_or(ChatError::FailedPrecondition(
                "a deleted message cannot be edited",
            ))?;
        let (edited, event) = match changed {
            Changed::Done(edited, event) => (*edited, event),
            Changed::Blocked { kinds, event } => {
                self.live.publish_integration(event);
                return Err(ChatError::ContactBlocked(kinds));
            }
        };
        self.live.publish(ChatEvent {
            thread_id: edited.thread_id,
            kind: EventKind::MessageUpdated(edited.clone()),
        });
        if let Some(event) = event {
            self.live.publish_integration(event);
        }
        Ok(edited.as_seen_by(caller))
    }

    /// The sender deletes a message: hidden from users, kept for services.
    /// Deleting it again changes nothing.
    pub async fn delete_message(&self, caller: &Caller, id: &str) -> Result<Message, ChatError> {
        let message = self.own_message(caller, id).await?;
        let deleted = match self
            .store
            .delete_message(message.id, acting_user(caller)?, now_micros())
            .await?
        {
            Some(Changed::Done(deleted, _)) => *deleted,
            _ => return Err(ChatError::NotFound(MESSAGE)),
        };
        if message.deleted_at.is_none() {
            self.live.publish(ChatEvent {
                thread_id: deleted.thread_id,
                kind: EventKind::MessageDeleted {
                    message_id: deleted.id,
                    seq: deleted.seq,
                },
            });
        }
        Ok(deleted.as_seen_by(caller))
    }

    /// Moves the caller's read cursor forward to `up_to_seq` (default: the
    /// latest message; clamped to it).
    pub async fn mark_read(
        &self,
        caller: &Caller,
        id: &str,
        up_to_seq: Option<i64>,
    ) -> Result<ReadState, ChatError> {
        let user = acting_user(caller)?;
        if let Some(seq) = up_to_seq {
            validate_seq("up_to_seq", seq)?;
        }
        let id = thread_id(id)?;
        let (last_read_seq, last_seq) = self
            .store
            .mark_read(id, user, up_to_seq)
            .await?
            .ok_or(ChatError::NotFound(THREAD))?;
        self.live.publish(ChatEvent {
            thread_id: id,
            kind: EventKind::MessagesRead {
                user_id: user.to_owned(),
                up_to_seq: last_read_seq,
            },
        });
        Ok(ReadState {
            thread_id: id,
            last_read_seq,
            unread_count: (last_seq - last_read_seq).max(0),
        })
    }

    /// Live events for the caller: one thread (optionally resuming after a
    /// seq) or all of the caller's threads.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        request: SubscribeRequest,
    ) -> Result<EventStream, ChatError> {
        let Some(user) = caller.user_id() else {
            return self.live.subscribe(caller, request).await;
        };
        let slot = self.caps.subscription(user).ok_or(ChatError::CapReached(
            "too many live subscriptions for this user",
        ))?;
        let events = self.live.subscribe(caller, request).await?;
        Ok(Box::pin(crate::caps::Capped::new(events, slot)))
    }

    /// Tells the thread's other participants the caller is (or stopped)
    /// typing. Never stored.
    pub async fn set_typing(
        &self,
        caller: &Caller,
        id: &str,
        is_typing: bool,
    ) -> Result<(), ChatError> {
        let user = acting_user(caller)?;
        let id = thread_id(id)?;
        if !self.store.can_see(id, Some(user)).await? {
            return Err(ChatError::NotFound(THREAD));
        }
        self.live.set_typing(id, user, is_typing);
        Ok(())
    }

    /// The caller's unread counts.
    pub async fn unread_counts(&self, caller: &Caller) -> Result<UnreadCounts, ChatError> {
        let user = acting_user(caller)?;
        let threads = self.store.unread_counts(user).await?;
        let total = threads.iter().map(|(_, n)| n).sum();
        Ok(UnreadCounts { total, threads })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let cursor = ThreadCursor {
            activity_at: 1_700_000_000_123_456,
            thread_id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)).unwrap(), cursor);
        for bad in ["", "abc", "dDEuMS4y", &URL_SAFE_NO_PAD.encode("t1.x.y")] {
            assert!(matches!(
                decode_cursor(bad),
                Err(ChatError::InvalidArgument(_))
            ));
        }
    }
}
