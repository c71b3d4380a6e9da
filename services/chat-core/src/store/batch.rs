//! Group commit's storage half: many new messages, one transaction.
//!
//! A batch runs in three phases, the same on both backends:
//!
//! 1. **Lock and read.** The batch's thread rows are locked in id order (so
//!    batches from other replicas that share threads queue behind each
//!    other instead of deadlocking), and what the plan needs is read under
//!    that lock: each thread's last seq, its participants, and the stored
//!    messages that the batch's idempotency keys already name.
//! 2. **Plan** ([`plan`]), in memory: each message's fate in arrival order.
//!    Only that step assigns seqs, so they stay contiguous per thread even
//!    when some messages of the batch are refused or turn out duplicates.
//! 3. **Write** what the plan created, then commit.
//!
//! Both backends use set-based statements, so that a batch costs the same
//! few statements whatever its size: PostgreSQL through arrays and
//! `UNNEST` (one prepared statement for any batch size), where each
//! statement is a network round trip; SQLite through multi-row `VALUES`,
//! where each statement is a round trip to sqlx's worker thread. At
//! 10,000 messages/s those round trips, not the rows, are the price.
//!
//! What each message adds besides its row is decided in the plan too: its
//! transcript entry (the chain is extended in seq order, from the head
//! read under the thread lock, so it has no gap and no fork) and the
//! normalized words the search index holds. Both are written by the same
//! statements as the message, in the same transaction.

use std::collections::HashMap;

use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{
    Appended, IntegrationEventRecord, MESSAGE_COLUMN_COUNT, MESSAGE_COLUMNS, NewMessage, Store,
    StoreError, message_at,
};
use crate::domain::{ContactPolicy, Message, UnixMicros};
use crate::transcript::{self, Entry, EntryKind, Hash};

/// The integration event whose payload carries the thread's transcript
/// head, so the dispute service can later prove which record it was shown.
pub(crate) const DISPUTE_REQUESTED: &str = "dispute.requested";

/// The contact guard's integration event.
pub(crate) const CONTACT_DETECTED: &str = "moderation.contact_detected";

/// What names a message for idempotent retries: a user's client_msg_id in
/// one thread, or a service's key across all threads (the two unique
/// indexes on `messages`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdempotencyKey {
    Client {
        thread_id: Uuid,
        sender: String,
        client_msg_id: String,
    },
    Service {
        posted_by: String,
        key: String,
    },
}

impl IdempotencyKey {
    /// The key `new` is deduplicated on, if any (as `duplicate_of!` in
    /// the per-message path).
    fn of(new: &NewMessage) -> Option<Self> {
        match (
            &new.sender_id,
            &new.client_msg_id,
            &new.posted_by,
            &new.idempotency_key,
        ) {
            (Some(sender), Some(client_msg_id), _, _) => Some(IdempotencyKey::Client {
                thread_id: new.thread_id,
                sender: sender.clone(),
                client_msg_id: client_msg_id.clone(),
            }),
            (None, _, Some(posted_by), Some(key)) => Some(IdempotencyKey::Service {
                posted_by: posted_by.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// What the batch's threads held once their rows were locked.
#[derive(Debug, Default)]
struct Locked {
    /// The last seq of every thread of the batch that exists.
    last_seq: HashMap<Uuid, i64>,
    /// Every participant of those threads. Complete while the thread row is
    /// locked: participants are only ever written together with their
    /// thread row.
    participants: HashMap<Uuid, Vec<String>>,
    /// Stored messages named by the batch's idempotency keys.
    originals: HashMap<IdempotencyKey, Message>,
    /// Each thread's transcript head: its last entry's number and hash.
    heads: HashMap<Uuid, (i64, Hash)>,
    /// Each thread's own contact policy (`None`: the default applies).
    policies: HashMap<Uuid, Option<ContactPolicy>>,
}

/// One message's fate, decided before anything is written.
#[derive(Debug)]
enum Fate {
    /// Stored: the index of its entry in [`Plan::created`].
    Create(usize),
    /// Its key names a message stored before this batch.
    Original(Message),
    /// Its key names an earlier message of this batch (index in
    /// [`Plan::created`]): the second of two concurrent retries.
    SameAs(usize),
    /// No such thread, or the sender is not in it.
    Refused,
    /// Its text holds contact details and the thread blocks them: only its
    /// moderation event (index in [`Plan::events`]) is written.
    Blocked(usize, Vec<&'static str>),
}

/// A message the batch stores.
#[derive(Debug)]
struct Created<'a> {
    new: &'a NewMessage,
    seq: i64,
    /// Its integration event, if any (index in [`Plan::events`]).
    event: Option<usize>,
    /// The message's transcript entry number and hash.
    transcript_n: i64,
    transcript_hash: Hash,
    /// What the search index holds for it.
    words: String,
    /// The contact details found, as stored: kinds, and under `mask` the
    /// content users see.
    flags: Option<String>,
    masked: Option<&'a str>,
    kinds: &'a [&'static str],
}

impl Created<'_> {
    fn message(&self) -> Message {
        self.new.stored(self.seq, Some((self.kinds, self.masked)))
    }
}

/// An integration event the batch writes: a message's own, or the contact
/// guard's.
#[derive(Debug)]
struct PlannedEvent<'a> {
    event_type: &'a str,
    thread_id: Uuid,
    message_id: Option<Uuid>,
    actor_id: Option<&'a str>,
    payload: std::borrow::Cow<'a, str>,
    created_at: UnixMicros,
    /// Filled in once the event counter has been advanced.
    id: Option<i64>,
}

impl PlannedEvent<'_> {
    fn record(&self) -> Option<IntegrationEventRecord> {
        Some(IntegrationEventRecord {
            id: self.id?,
            event_type: self.event_type.to_owned(),
            thread_id: self.thread_id,
            message_id: self.message_id,
            actor_id: self.actor_id.map(str::to_owned),
            payload: self.payload.clone().into_owned(),
            created_at: self.created_at,
        })
    }
}

/// A thread's new tail after the batch.
#[derive(Debug)]
struct ThreadTail {
    id: Uuid,
    last_seq: i64,
    at: UnixMicros,
    transcript_n: i64,
    transcript_head: Hash,
}

/// A participant's row after the batch: the thread's copies of last seq and
/// activity, and (for someone who sent in this batch) the read cursor at
/// their own last message, or 0 to leave it.
#[derive(Debug)]
struct ParticipantTail {
    thread_id: Uuid,
    user_id: String,
    last_seq: i64,
    at: UnixMicros,
    read_seq: i64,
}

/// Everything the write phase does, decided in memory.
#[derive(Debug)]
struct Plan<'a> {
    /// One per batch message, in batch order.
    fates: Vec<Fate>,
    /// The messages to insert, in arrival order (seq order per thread).
    created: Vec<Created<'a>>,
    /// The integration events to insert, in arrival order.
    events: Vec<PlannedEvent<'a>>,
    threads: Vec<ThreadTail>,
    participants: Vec<ParticipantTail>,
}

/// What the contact guard's policy makes of a message with findings.
enum ContactOutcome {
    /// No findings, or the policy is `off`.
    Clean,
    Flag,
    Mask,
    Block,
}

fn contact_outcome(new: &NewMessage, locked: &Locked) -> ContactOutcome {
    let Some(found) = &new.contact else {
        return ContactOutcome::Clean;
    };
    let policy = locked
        .policies
        .get(&new.thread_id)
        .copied()
        .flatten()
        .unwrap_or(found.default_policy);
    match policy {
        ContactPolicy::Off => ContactOutcome::Clean,
        ContactPolicy::Flag => ContactOutcome::Flag,
        ContactPolicy::Mask => ContactOutcome::Mask,
        ContactPolicy::Block => ContactOutcome::Block,
    }
}

/// The `moderation.contact_detected` payload.
pub(crate) fn contact_payload(
    thread_id: Uuid,
    message_id: Option<Uuid>,
    sender_id: Option<&str>,
    kinds: &[&str],
    policy: ContactPolicy,
) -> String {
    serde_json::json!({
        "thread_id": thread_id.to_string(),
        "message_id": message_id.map(|id| id.to_string()),
        "sender_id": sender_id,
        "kinds": kinds,
        "policy": policy.as_str(),
    })
    .to_string()
}

/// Decides each message's fate in arrival order, the way the per-message
/// path would have one after the other: a duplicate first, then a missing
/// thread or a sender outside it, then the thread's contact policy, else
/// the thread's next seq.
fn plan<'a>(batch: &'a [NewMessage], locked: &Locked) -> Plan<'a> {
    let mut next_seq = locked.last_seq.clone();
    let mut heads = locked.heads.clone();
    let mut first_with_key: HashMap<IdempotencyKey, usize> = HashMap::new();
    let mut fates = Vec::with_capacity(batch.len());
    let mut created: Vec<Created<'a>> = Vec::with_capacity(batch.len());
    let mut events: Vec<PlannedEvent<'a>> = Vec::new();
    for new in batch {
        let key = IdempotencyKey::of(new);
        if let Some(key) = &key {
            if let Some(&earlier) = first_with_key.get(key) {
                fates.push(Fate::SameAs(earlier));
                continue;
            }
            if let Some(original) = locked.originals.get(key) {
                fates.push(Fate::Original(original.clone()));
                continue;
            }
        }
        let Some(last) = next_seq.get_mut(&new.thread_id) else {
            fates.push(Fate::Refused);
            continue;
        };
        if let Some(sender) = &new.sender_id {
            let member = locked
                .participants
                .get(&new.thread_id)
                .is_some_and(|users| users.contains(sender));
            if !member {
                fates.push(Fate::Refused);
                continue;
            }
        }
        let contact = contact_outcome(new, locked);
        let kinds: &'a [&'static str] = match (&contact, &new.contact) {
            (ContactOutcome::Clean, _) | (_, None) => &[],
            (_, Some(found)) => &found.kinds,
        };
        if let ContactOutcome::Block = contact {
            events.push(PlannedEvent {
                event_type: CONTACT_DETECTED,
                thread_id: new.thread_id,
                message_id: None,
                actor_id: new.sender_id.as_deref(),
                payload: contact_payload(
                    new.thread_id,
                    None,
                    new.sender_id.as_deref(),
                    kinds,
                    ContactPolicy::Block,
                )
                .into(),
                created_at: new.created_at,
                id: None,
            });
            fates.push(Fate::Blocked(events.len() - 1, kinds.to_vec()));
            continue;
        }
        *last += 1;
        let head = heads
            .entry(new.thread_id)
            .or_insert_with(|| (0, transcript::genesis(new.thread_id)));
        let previous = head.1;
        head.0 += 1;
        head.1 = transcript::link(
            &previous,
            &Entry {
                n: head.0,
                kind: EntryKind::Message,
                message_id: new.id,
                seq: *last,
                sender_id: new.sender_id.as_deref(),
                message_type: new.kind.as_str(),
                content: Some(&new.content),
                metadata: Some(&new.metadata),
                at: new.created_at,
            },
        );
        let masked = match (&contact, &new.contact) {
            (ContactOutcome::Mask, Some(found)) => Some(found.masked.as_str()),
            _ => None,
        };
        let event = match (&new.event, &contact) {
            (Some(event), _) => Some(PlannedEvent {
                event_type: &event.event_type,
                thread_id: new.thread_id,
                message_id: Some(new.id),
                actor_id: event.actor_id.as_deref(),
                payload: if event.event_type == DISPUTE_REQUESTED {
                    with_head_hash(&event.payload, &transcript::hex(&previous)).into()
                } else {
                    event.payload.as_str().into()
                },
                created_at: new.created_at,
                id: None,
            }),
            (None, ContactOutcome::Flag | ContactOutcome::Mask) => Some(PlannedEvent {
                event_type: CONTACT_DETECTED,
                thread_id: new.thread_id,
                message_id: Some(new.id),
                actor_id: new.sender_id.as_deref(),
                payload: contact_payload(
                    new.thread_id,
                    Some(new.id),
                    new.sender_id.as_deref(),
                    kinds,
                    if masked.is_some() {
                        ContactPolicy::Mask
                    } else {
                        ContactPolicy::Flag
                    },
                )
                .into(),
                created_at: new.created_at,
                id: None,
            }),
            (None, _) => None,
        };
        let event = event.map(|event| {
            events.push(event);
            events.len() - 1
        });
        let index = created.len();
        created.push(Created {
            new,
            seq: *last,
            event,
            transcript_n: head.0,
            transcript_hash: head.1,
            words: crate::search::index_text(masked.unwrap_or(&new.content)),
            flags: (!kinds.is_empty()).then(|| kinds.join(",")),
            masked,
            kinds,
        });
        if let Some(key) = key {
            first_with_key.insert(key, index);
        }
        fates.push(Fate::Create(index));
    }

    // Tails, in order of each thread's first appearance: the last message
    // of a thread sets its activity, as it would have committed last.
    let mut threads: Vec<ThreadTail> = Vec::new();
    let mut thread_at: HashMap<Uuid, usize> = HashMap::new();
    let mut read_seq: HashMap<(Uuid, &str), i64> = HashMap::new();
    for entry in &created {
        let new = entry.new;
        match thread_at.get(&new.thread_id) {
            Some(&i) => {
                threads[i].last_seq = entry.seq;
                threads[i].at = new.created_at;
                threads[i].transcript_n = entry.transcript_n;
                threads[i].transcript_head = entry.transcript_hash;
            }
            None => {
                thread_at.insert(new.thread_id, threads.len());
                threads.push(ThreadTail {
                    id: new.thread_id,
                    last_seq: entry.seq,
                    at: new.created_at,
                    transcript_n: entry.transcript_n,
                    transcript_head: entry.transcript_hash,
                });
            }
        }
        if let Some(sender) = &new.sender_id {
            read_seq.insert((new.thread_id, sender.as_str()), entry.seq);
        }
    }
    let mut participants = Vec::new();
    for tail in &threads {
        for user in locked.participants.get(&tail.id).into_iter().flatten() {
            participants.push(ParticipantTail {
                thread_id: tail.id,
                user_id: user.clone(),
                last_seq: tail.last_seq,
                at: tail.at,
                read_seq: read_seq
                    .get(&(tail.id, user.as_str()))
                    .copied()
                    .unwrap_or(0),
            });
        }
    }
    Plan {
        fates,
        created,
        events,
        threads,
        participants,
    }
}

/// `payload` (a JSON object) with the thread's transcript head added as
/// `head_hash`: the record as it stood when the dispute was requested.
fn with_head_hash(payload: &str, head_hash: &str) -> String {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(payload).unwrap_or_default();
    object.insert("head_hash".to_owned(), head_hash.into());
    serde_json::Value::Object(object).to_string()
}

impl Plan<'_> {
    /// Whether the batch writes anything at all.
    fn writes(&self) -> bool {
        !self.created.is_empty() || !self.events.is_empty()
    }

    /// How many integration events the batch writes.
    fn event_count(&self) -> i64 {
        i64::try_from(self.events.len()).unwrap_or(i64::MAX)
    }

    /// Gives the events ids `last_id - events + 1 ..= last_id` in arrival
    /// order: the counter row's lock makes ids commit in id order.
    fn number_events(&mut self, last_id: i64) {
        let first = last_id - self.event_count() + 1;
        for (id, event) in (first..).zip(self.events.iter_mut()) {
            event.id = Some(id);
        }
    }

    /// Each message's outcome, in batch order.
    fn outcomes(self) -> Vec<Option<Appended>> {
        let Plan {
            fates,
            created,
            events,
            ..
        } = self;
        fates
            .into_iter()
            .map(|fate| match fate {
                Fate::Create(i) => created.get(i).map(|c| {
                    let event = c.event.and_then(|e| events.get(e)?.record());
                    Appended::Created(c.message(), event)
                }),
                Fate::SameAs(i) => created.get(i).map(|c| Appended::Duplicate(c.message())),
                Fate::Original(message) => Some(Appended::Duplicate(message)),
                Fate::Refused => None,
                Fate::Blocked(e, kinds) => events
                    .get(e)
                    .and_then(PlannedEvent::record)
                    .map(|event| Appended::Blocked { kinds, event }),
            })
            .collect()
    }
}

impl Store {
    /// Appends a batch of messages in one transaction: one outcome per
    /// message, in order, each what [`Store::append_message`] would have
    /// returned had the messages been appended one after the other.
    ///
    /// An error means nothing was written, except an unavailable one,
    /// which may come from a COMMIT whose outcome is unknown: only the
    /// other errors are safe to retry one message at a time.
    pub async fn append_batch(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Option<Appended>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Postgres(backend) => {
                let mut connection = backend.pool.acquire().await?;
                postgres::append_batch(&mut connection, &backend.words, batch).await
            }
            Store::Sqlite(backend) => sqlite::append_batch(&backend.writer, batch).await,
        }
    }

    /// A session for one writer shard, to append its batches through.
    pub fn writer_session(&self) -> WriterSession {
        WriterSession { held: None }
    }
}

/// A writer shard's database session.
///
/// Why: on PostgreSQL a shard commits hundreds of batches a second, and
/// taking a pooled connection for each costs a round trip (the pool checks
/// a connection before handing it out), while planning the batch's
/// statements for the arrays at hand costs a few tenths of a millisecond
/// per statement. So a session holds one connection across batches, set
/// to generic plans (the batch statements' plans do not depend on their
/// arrays' contents; reads keep custom plans on the pool's other
/// connections). Any error drops the connection, so that a database that
/// restarted gets a fresh one on the next batch. On SQLite the session is
/// the store's single writer connection, as before.
#[derive(Debug)]
pub struct WriterSession {
    held: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

impl WriterSession {
    /// [`Store::append_batch`], through this session.
    pub async fn append_batch(
        &mut self,
        store: &Store,
        batch: &[NewMessage],
    ) -> Result<Vec<Option<Appended>>, StoreError> {
        let Store::Postgres(backend) = store else {
            return store.append_batch(batch).await;
        };
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let connection = match &mut self.held {
            Some(connection) => connection,
            None => {
                let mut connection = backend.pool.acquire().await?;
                sqlx::query("SET plan_cache_mode = force_generic_plan")
                    .execute(&mut *connection)
                    .await?;
                self.held.insert(connection)
            }
        };
        let outcome = postgres::append_batch(connection, &backend.words, batch).await;
        if outcome.is_err()
            && let Some(connection) = self.held.take()
        {
            // Closed, not returned: the pool's connections keep custom
            // plans, and this one may be broken.
            drop(connection.detach());
        }
        outcome
    }
}

/// A failed COMMIT leaves the batch's fate unknown (the connection may
/// have dropped after the database committed): reported as unavailable, so
/// the writer does not retry it message by message and risk storing
/// messages twice; clients retry with their idempotency keys instead.
fn commit_failed(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err)
}

/// The distinct thread ids of a batch.
fn thread_ids(batch: &[NewMessage]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = batch.iter().map(|m| m.thread_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A thread's transcript head from a row's `transcript_n` and
/// `transcript_head` columns (`at` and the next).
fn head_at<R>(row: &R, thread_id: Uuid, at: usize) -> Result<(i64, Hash), sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let n: i64 = row.try_get(at)?;
    let head: Option<Vec<u8>> = row.try_get(at + 1)?;
    Ok((n, transcript::head_or_genesis(thread_id, head.as_deref())))
}

/// A thread's own contact policy from a `contact_policy` column.
fn policy_at<R>(row: &R, at: usize) -> Result<Option<ContactPolicy>, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let policy: Option<String> = row.try_get(at)?;
    Ok(policy.and_then(|p| ContactPolicy::parse(&p)))
}

/// Files a stored message read by its idempotency key (columns: the
/// message's, then `posted_by` and `idempotency_key`) under every key that
/// names it.
fn add_original<R>(
    originals: &mut HashMap<IdempotencyKey, Message>,
    row: &R,
) -> Result<(), sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let message = message_at(row, 0)?;
    let posted_by: Option<String> = row.try_get(MESSAGE_COLUMN_COUNT)?;
    let key: Option<String> = row.try_get(MESSAGE_COLUMN_COUNT + 1)?;
    if let (Some(sender), Some(client_msg_id)) = (&message.sender_id, &message.client_msg_id) {
        originals.insert(
            IdempotencyKey::Client {
                thread_id: message.thread_id,
                sender: sender.clone(),
                client_msg_id: client_msg_id.clone(),
            },
            message.clone(),
        );
    }
    if let (Some(posted_by), Some(key)) = (posted_by, key) {
        originals.insert(IdempotencyKey::Service { posted_by, key }, message);
    }
    Ok(())
}

mod postgres {
    use super::*;
    use crate::store::vocabulary::{self, KnownWords};

    /// Four round trips whatever the batch size: begin, lock and read,
    /// write, commit; and one more each when messages carry idempotency
    /// keys and when they bring words the search vocabulary lacks.
    pub(super) async fn append_batch(
        connection: &mut sqlx::PgConnection,
        known: &KnownWords,
        batch: &[NewMessage],
    ) -> Result<Vec<Option<Appended>>, StoreError> {
        let mut tx = sqlx::Connection::begin(connection).await?;
        let ids = thread_ids(batch);

        // FOR UPDATE after ORDER BY: rows are locked in id order, so two
        // batches sharing threads wait for each other, never deadlock. The
        // participants come from a subquery per thread, which PostgreSQL
        // runs as an index lookup; as a join, small tables invite a scan of
        // the whole (update-heavy, so bloated) participants table.
        let rows = sqlx::query(
            "SELECT t.id, t.last_seq, ARRAY(SELECT p.user_id FROM thread_participants p \
             WHERE p.thread_id = t.id), t.transcript_n, t.transcript_head, t.contact_policy \
             FROM threads t \
             WHERE t.id = ANY($1) ORDER BY t.id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut locked = Locked::default();
        for row in &rows {
            let id: Uuid = row.try_get(0)?;
            locked.last_seq.insert(id, row.try_get(1)?);
            locked.participants.insert(id, row.try_get(2)?);
            locked.heads.insert(id, head_at(row, id, 3)?);
            locked.policies.insert(id, policy_at(row, 5)?);
        }

        read_originals(&mut tx, batch, &mut locked).await?;

        let mut plan = plan(batch, &locked);
        let mut new_words = Vec::new();
        if plan.writes() {
            write(&mut tx, &mut plan).await?;
            new_words = known.unknown(plan.created.iter().map(|c| c.words.as_str()));
            add_words(&mut tx, &new_words).await?;
        }
        tx.commit().await.map_err(commit_failed)?;
        known.learned(&new_words);
        Ok(plan.outcomes())
    }

    /// Adds `words` (sorted) to the search vocabulary.
    async fn add_words(tx: &mut sqlx::PgConnection, words: &[&str]) -> Result<(), StoreError> {
        if words.is_empty() {
            return Ok(());
        }
        sqlx::query(vocabulary::ADD_WORDS)
            .bind(words.join(" "))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// The stored messages that the batch's keys name, in one query. The
    /// thread locks are held, so nothing with a client key can commit in
    /// these threads meanwhile; a service key is global, and a concurrent
    /// use of it elsewhere surfaces as a unique violation at insert.
    async fn read_originals(
        tx: &mut sqlx::PgConnection,
        batch: &[NewMessage],
        locked: &mut Locked,
    ) -> Result<(), StoreError> {
        let mut client = (Vec::new(), Vec::new(), Vec::new());
        let mut service = (Vec::new(), Vec::new());
        for new in batch {
            match IdempotencyKey::of(new) {
                Some(IdempotencyKey::Client {
                    thread_id,
                    sender,
                    client_msg_id,
                }) => {
                    client.0.push(thread_id);
                    client.1.push(sender);
                    client.2.push(client_msg_id);
                }
                Some(IdempotencyKey::Service { posted_by, key }) => {
                    service.0.push(posted_by);
                    service.1.push(key);
                }
                None => {}
            }
        }
        if client.0.is_empty() && service.0.is_empty() {
            return Ok(());
        }
        // One index probe per key, whatever the planner knows: a plain join
        // can turn into a scan of every message when the table has no
        // statistics yet (a new or never-analyzed database), while a
        // lateral lookup with LIMIT 1 is always a parameterized index
        // search. The IS NOT NULL conditions let it use the partial unique
        // indexes; the equalities alone do not prove their predicates.
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS}, m.posted_by, m.idempotency_key \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS k(thread_id, sender_id, client_msg_id) \
             CROSS JOIN LATERAL (SELECT * FROM messages m WHERE m.thread_id = k.thread_id \
             AND m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id \
             AND m.client_msg_id IS NOT NULL AND m.sender_id IS NOT NULL LIMIT 1) m \
             UNION ALL \
             SELECT {MESSAGE_COLUMNS}, m.posted_by, m.idempotency_key \
             FROM UNNEST($4::text[], $5::text[]) AS k(posted_by, idempotency_key) \
             CROSS JOIN LATERAL (SELECT * FROM messages m WHERE m.posted_by = k.posted_by \
             AND m.idempotency_key = k.idempotency_key AND m.idempotency_key IS NOT NULL LIMIT 1) m"
        ))
        .bind(&client.0)
        .bind(&client.1)
        .bind(&client.2)
        .bind(&service.0)
        .bind(&service.1)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            add_original(&mut locked.originals, row)?;
        }
        Ok(())
    }

    /// Every write of the batch in one statement: data-modifying CTEs on
    /// different tables, each set-based over arrays. The event ids come
    /// from the counter in the same statement.
    async fn write(tx: &mut sqlx::PgConnection, plan: &mut Plan<'_>) -> Result<(), StoreError> {
        let created = &plan.created;
        // Each thread's participants as the search index marks them (see
        // `crate::search::member_mark`), once per thread of the batch.
        let mut marks: HashMap<Uuid, String> = HashMap::with_capacity(plan.threads.len());
        for p in &plan.participants {
            let thread = marks.entry(p.thread_id).or_default();
            if !thread.is_empty() {
                thread.push(' ');
            }
            thread.push_str(&crate::search::member_mark(&p.user_id));
        }
        let mut m = MessageColumns::with_capacity(created.len());
        for entry in created {
            m.push(entry);
            m.marks
                .push(marks.get(&entry.new.thread_id).map_or("", String::as_str));
        }
        let mut e = EventColumns::default();
        for event in &plan.events {
            e.message_id.push(event.message_id);
            e.event_type.push(event.event_type);
            e.thread_id.push(event.thread_id);
            e.actor_id.push(event.actor_id);
            e.payload.push(&event.payload);
            e.created_at.push(event.created_at);
        }
        let threads = &plan.threads;
        let participants = &plan.participants;
        // The `= ANY` conditions repeat the joins as restrictions on the
        // updated tables, which PostgreSQL always answers from the primary
        // key: joined to an array alone, a custom plan for a few dozen rows
        // may hash-join a scan of the whole (update-heavy, so bloated)
        // table instead.
        //
        // The event insert numbers its rows from the advanced counter, in
        // array order (WITH ORDINALITY), which is arrival order. The
        // counter is only touched when there are events, so plain chat
        // batches never contend on its row.
        let last_event_id: Option<i64> = sqlx::query_scalar(
            "WITH inserted AS ( \
               INSERT INTO messages (id, thread_id, seq, sender_id, message_type, content, \
               metadata, client_msg_id, posted_by, idempotency_key, created_at, \
               transcript_n, transcript_hash, search, flags, masked_content) \
               SELECT u.id, u.thread_id, u.seq, u.sender_id, u.message_type, u.content, \
               u.metadata, u.client_msg_id, u.posted_by, u.idempotency_key, u.created_at, \
               u.transcript_n, u.transcript_hash, \
               to_tsvector('simple', u.words) || array_to_tsvector(string_to_array(u.marks, ' ')), \
               u.flags, u.masked_content \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], \
               $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], \
               $26::int8[], $27::bytea[], $28::text[], $31::text[], $32::text[], $33::text[]) \
               AS u(id, thread_id, seq, sender_id, message_type, content, metadata, \
               client_msg_id, posted_by, idempotency_key, created_at, transcript_n, \
               transcript_hash, words, flags, masked_content, marks) \
             ), threads_moved AS ( \
               UPDATE threads t SET last_seq = u.last_seq, last_message_at = u.at, \
               activity_at = u.at, transcript_n = u.transcript_n, \
               transcript_head = u.transcript_head \
               FROM UNNEST($12::uuid[], $13::int8[], $14::int8[], $29::int8[], $30::bytea[]) \
               AS u(id, last_seq, at, transcript_n, transcript_head) \
               WHERE t.id = u.id AND t.id = ANY($12::uuid[]) \
             ), participants_moved AS ( \
               UPDATE thread_participants tp SET last_seq = u.last_seq, activity_at = u.at, \
               last_read_seq = GREATEST(tp.last_read_seq, u.read_seq) \
               FROM UNNEST($15::uuid[], $16::text[], $17::int8[], $18::int8[], $19::int8[]) \
               AS u(thread_id, user_id, last_seq, at, read_seq) \
               WHERE tp.thread_id = u.thread_id AND tp.user_id = u.user_id \
               AND tp.thread_id = ANY($15::uuid[]) \
             ), counter AS ( \
               UPDATE integration_event_counter SET last_id = last_id + cardinality($20::uuid[]) \
               WHERE id = 1 AND cardinality($20::uuid[]) > 0 RETURNING last_id \
             ), events AS ( \
               INSERT INTO integration_events (id, event_type, thread_id, message_id, actor_id, \
               payload, created_at) \
               SELECT counter.last_id - cardinality($20::uuid[]) + e.n, e.event_type, \
               e.thread_id, e.message_id, e.actor_id, e.payload, e.created_at \
               FROM counter, UNNEST($20::uuid[], $21::text[], $22::uuid[], $23::text[], \
               $24::text[], $25::int8[]) WITH ORDINALITY \
               AS e(message_id, event_type, thread_id, actor_id, payload, created_at, n) \
             ) SELECT last_id FROM counter",
        )
        .bind(&m.id)
        .bind(&m.thread_id)
        .bind(&m.seq)
        .bind(&m.sender_id)
        .bind(&m.kind)
        .bind(&m.content)
        .bind(&m.metadata)
        .bind(&m.client_msg_id)
        .bind(&m.posted_by)
        .bind(&m.idempotency_key)
        .bind(&m.created_at)
        .bind(threads.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(threads.iter().map(|t| t.last_seq).collect::<Vec<_>>())
        .bind(threads.iter().map(|t| t.at).collect::<Vec<_>>())
        .bind(participants.iter().map(|p| p.thread_id).collect::<Vec<_>>())
        .bind(
            participants
                .iter()
                .map(|p| p.user_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(participants.iter().map(|p| p.last_seq).collect::<Vec<_>>())
        .bind(participants.iter().map(|p| p.at).collect::<Vec<_>>())
        .bind(participants.iter().map(|p| p.read_seq).collect::<Vec<_>>())
        .bind(&e.message_id)
        .bind(&e.event_type)
        .bind(&e.thread_id)
        .bind(&e.actor_id)
        .bind(&e.payload)
        .bind(&e.created_at)
        .bind(&m.transcript_n)
        .bind(&m.transcript_hash)
        .bind(&m.words)
        .bind(threads.iter().map(|t| t.transcript_n).collect::<Vec<_>>())
        .bind(
            threads
                .iter()
                .map(|t| t.transcript_head.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(&m.flags)
        .bind(&m.masked_content)
        .bind(&m.marks)
        .fetch_optional(&mut *tx)
        .await?;
        if !plan.events.is_empty() {
            let last_id = last_event_id.ok_or(StoreError::Corrupt(
                "the integration event counter row is missing",
            ))?;
            plan.number_events(last_id);
        }
        Ok(())
    }

    /// The integration events' columns as arrays, in arrival order.
    #[derive(Default)]
    struct EventColumns<'a> {
        message_id: Vec<Option<Uuid>>,
        event_type: Vec<&'a str>,
        thread_id: Vec<Uuid>,
        actor_id: Vec<Option<&'a str>>,
        payload: Vec<&'a str>,
        created_at: Vec<i64>,
    }

    /// The messages table's columns as arrays, borrowed from the batch.
    struct MessageColumns<'a> {
        id: Vec<Uuid>,
        thread_id: Vec<Uuid>,
        seq: Vec<i64>,
        sender_id: Vec<Option<&'a str>>,
        kind: Vec<&'static str>,
        content: Vec<&'a str>,
        metadata: Vec<&'a str>,
        client_msg_id: Vec<Option<&'a str>>,
        posted_by: Vec<Option<&'a str>>,
        idempotency_key: Vec<Option<&'a str>>,
        created_at: Vec<i64>,
        transcript_n: Vec<i64>,
        transcript_hash: Vec<&'a [u8]>,
        words: Vec<&'a str>,
        flags: Vec<Option<&'a str>>,
        masked_content: Vec<Option<&'a str>>,
        /// The thread's member marks, space-separated.
        marks: Vec<&'a str>,
    }

    impl<'a> MessageColumns<'a> {
        fn with_capacity(n: usize) -> Self {
            MessageColumns {
                id: Vec::with_capacity(n),
                thread_id: Vec::with_capacity(n),
                seq: Vec::with_capacity(n),
                sender_id: Vec::with_capacity(n),
                kind: Vec::with_capacity(n),
                content: Vec::with_capacity(n),
                metadata: Vec::with_capacity(n),
                client_msg_id: Vec::with_capacity(n),
                posted_by: Vec::with_capacity(n),
                idempotency_key: Vec::with_capacity(n),
                created_at: Vec::with_capacity(n),
                transcript_n: Vec::with_capacity(n),
                transcript_hash: Vec::with_capacity(n),
                words: Vec::with_capacity(n),
                flags: Vec::with_capacity(n),
                masked_content: Vec::with_capacity(n),
                marks: Vec::with_capacity(n),
            }
        }

        fn push(&mut self, entry: &'a Created<'a>) {
            let new = entry.new;
            self.id.push(new.id);
            self.thread_id.push(new.thread_id);
            self.seq.push(entry.seq);
            self.sender_id.push(new.sender_id.as_deref());
            self.kind.push(new.kind.as_str());
            self.content.push(&new.content);
            self.metadata.push(&new.metadata);
            self.client_msg_id.push(new.client_msg_id.as_deref());
            self.posted_by.push(new.posted_by.as_deref());
            self.idempotency_key.push(new.idempotency_key.as_deref());
            self.created_at.push(new.created_at);
            self.transcript_n.push(entry.transcript_n);
            self.transcript_hash.push(&entry.transcript_hash);
            self.words.push(&entry.words);
            self.flags.push(entry.flags.as_deref());
            self.masked_content.push(entry.masked);
        }
    }
}

mod sqlite {
    use sqlx::{QueryBuilder, Sqlite};

    use super::*;

    /// Bound parameters per statement, under SQLite's limit of 32,766:
    /// longer batches are written in several statements.
    const MAX_PARAMETERS: usize = 32_000;

    /// Rows of `columns` parameters that one statement may carry.
    fn rows_per_statement(columns: usize) -> usize {
        (MAX_PARAMETERS / columns).max(1)
    }

    /// The same phases as on PostgreSQL, as multi-row statements: each
    /// statement is a round trip to sqlx's SQLite worker thread, which at
    /// thousands of messages per second costs more CPU than the SQL.
    pub(super) async fn append_batch(
        pool: &SqlitePool,
        batch: &[NewMessage],
    ) -> Result<Vec<Option<Appended>>, StoreError> {
        // IMMEDIATE takes the write lock up front: the reads below then see
        // the state the writes build on.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut locked = Locked::default();
        let ids = thread_ids(batch);
        for chunk in ids.chunks(rows_per_statement(1)) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT t.id, t.last_seq, tp.user_id, t.transcript_n, t.transcript_head, \
                 t.contact_policy FROM threads t \
                 LEFT JOIN thread_participants tp ON tp.thread_id = t.id WHERE t.id IN (",
            );
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            for row in &query.build().fetch_all(&mut *tx).await? {
                let id: Uuid = row.try_get(0)?;
                locked.last_seq.insert(id, row.try_get(1)?);
                let user: Option<String> = row.try_get(2)?;
                locked.participants.entry(id).or_default().extend(user);
                locked.heads.insert(id, head_at(row, id, 3)?);
                locked.policies.insert(id, policy_at(row, 5)?);
            }
        }
        read_originals(&mut tx, batch, &mut locked).await?;

        let mut plan = plan(batch, &locked);
        if plan.writes() {
            write(&mut tx, &mut plan).await?;
        }
        tx.commit().await.map_err(commit_failed)?;
        Ok(plan.outcomes())
    }

    /// The stored messages that the batch's keys name. CROSS JOIN keeps
    /// SQLite's planner on the keys as the outer loop, so each is one
    /// index search rather than a scan of the whole index.
    async fn read_originals(
        tx: &mut sqlx::SqliteConnection,
        batch: &[NewMessage],
        locked: &mut Locked,
    ) -> Result<(), StoreError> {
        let mut client = Vec::new();
        let mut service = Vec::new();
        for new in batch {
            match (
                &new.sender_id,
                &new.client_msg_id,
                &new.posted_by,
                &new.idempotency_key,
            ) {
                (Some(sender), Some(client_msg_id), _, _) => {
                    client.push((new.thread_id, sender.as_str(), client_msg_id.as_str()));
                }
                (None, _, Some(posted_by), Some(key)) => {
                    service.push((posted_by.as_str(), key.as_str()));
                }
                _ => {}
            }
        }
        for chunk in client.chunks(rows_per_statement(3)) {
            let mut query =
                QueryBuilder::<Sqlite>::new("WITH k(thread_id, sender_id, client_msg_id) AS (");
            query.push_values(chunk, |mut row, (thread_id, sender, client_msg_id)| {
                row.push_bind(*thread_id)
                    .push_bind(*sender)
                    .push_bind(*client_msg_id);
            });
            query.push(format!(
                ") SELECT {MESSAGE_COLUMNS}, m.posted_by, m.idempotency_key \
                 FROM k CROSS JOIN messages m ON m.thread_id = k.thread_id \
                 AND m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id \
                 WHERE m.client_msg_id IS NOT NULL AND m.sender_id IS NOT NULL"
            ));
            for row in &query.build().fetch_all(&mut *tx).await? {
                add_original(&mut locked.originals, row)?;
            }
        }
        for chunk in service.chunks(rows_per_statement(2)) {
            let mut query = QueryBuilder::<Sqlite>::new("WITH k(posted_by, idempotency_key) AS (");
            query.push_values(chunk, |mut row, (posted_by, key)| {
                row.push_bind(*posted_by).push_bind(*key);
            });
            query.push(format!(
                ") SELECT {MESSAGE_COLUMNS}, m.posted_by, m.idempotency_key \
                 FROM k CROSS JOIN messages m ON m.posted_by = k.posted_by \
                 AND m.idempotency_key = k.idempotency_key WHERE m.idempotency_key IS NOT NULL"
            ));
            for row in &query.build().fetch_all(&mut *tx).await? {
                add_original(&mut locked.originals, row)?;
            }
        }
        Ok(())
    }

    async fn write(tx: &mut sqlx::SqliteConnection, plan: &mut Plan<'_>) -> Result<(), StoreError> {
        for chunk in plan.created.chunks(rows_per_statement(15)) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (id, thread_id, seq, sender_id, message_type, content, \
                 metadata, client_msg_id, posted_by, idempotency_key, created_at, \
                 transcript_n, transcript_hash, flags, masked_content) ",
            );
            query.push_values(chunk, |mut row, entry| {
                let new = entry.new;
                row.push_bind(new.id)
                    .push_bind(new.thread_id)
                    .push_bind(entry.seq)
                    .push_bind(new.sender_id.as_deref())
                    .push_bind(new.kind.as_str())
                    .push_bind(new.content.as_str())
                    .push_bind(new.metadata.as_str())
                    .push_bind(new.client_msg_id.as_deref())
                    .push_bind(new.posted_by.as_deref())
                    .push_bind(new.idempotency_key.as_deref())
                    .push_bind(new.created_at)
                    .push_bind(entry.transcript_n)
                    .push_bind(entry.transcript_hash.as_slice())
                    .push_bind(entry.flags.as_deref())
                    .push_bind(entry.masked);
            });
            query.build().execute(&mut *tx).await?;
        }
        for chunk in plan.created.chunks(rows_per_statement(2)) {
            let mut query = QueryBuilder::<Sqlite>::new("WITH v(id, words) AS (");
            query.push_values(chunk, |mut row, entry| {
                row.push_bind(entry.new.id).push_bind(entry.words.as_str());
            });
            query.push(
                ") INSERT INTO message_search (rowid, words) \
                 SELECT m.rowid, v.words FROM v JOIN messages m ON m.id = v.id",
            );
            query.build().execute(&mut *tx).await?;
        }
        for chunk in plan.threads.chunks(rows_per_statement(5)) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "WITH u(id, last_seq, at, transcript_n, transcript_head) AS (",
            );
            query.push_values(chunk, |mut row, tail| {
                row.push_bind(tail.id)
                    .push_bind(tail.last_seq)
                    .push_bind(tail.at)
                    .push_bind(tail.transcript_n)
                    .push_bind(tail.transcript_head.as_slice());
            });
            query.push(
                ") UPDATE threads SET last_seq = u.last_seq, last_message_at = u.at, \
                 activity_at = u.at, transcript_n = u.transcript_n, \
                 transcript_head = u.transcript_head FROM u WHERE threads.id = u.id",
            );
            query.build().execute(&mut *tx).await?;
        }
        for chunk in plan.participants.chunks(rows_per_statement(5)) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "WITH u(thread_id, user_id, last_seq, at, read_seq) AS (",
            );
            query.push_values(chunk, |mut row, tail| {
                row.push_bind(tail.thread_id)
                    .push_bind(tail.user_id.as_str())
                    .push_bind(tail.last_seq)
                    .push_bind(tail.at)
                    .push_bind(tail.read_seq);
            });
            query.push(
                ") UPDATE thread_participants SET last_seq = u.last_seq, activity_at = u.at, \
                 last_read_seq = MAX(last_read_seq, u.read_seq) FROM u \
                 WHERE thread_participants.thread_id = u.thread_id \
                 AND thread_participants.user_id = u.user_id",
            );
            query.build().execute(&mut *tx).await?;
        }
        if !plan.events.is_empty() {
            let last_id: i64 = sqlx::query_scalar(
                "UPDATE integration_event_counter SET last_id = last_id + $1 \
                 WHERE id = 1 RETURNING last_id",
            )
            .bind(plan.event_count())
            .fetch_one(&mut *tx)
            .await?;
            plan.number_events(last_id);
            for chunk in plan.events.chunks(rows_per_statement(7)) {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO integration_events (id, event_type, thread_id, message_id, \
                     actor_id, payload, created_at) ",
                );
                query.push_values(chunk, |mut row, event| {
                    row.push_bind(event.id)
                        .push_bind(event.event_type)
                        .push_bind(event.thread_id)
                        .push_bind(event.message_id)
                        .push_bind(event.actor_id)
                        .push_bind(event.payload.as_ref())
                        .push_bind(event.created_at);
                });
                query.build().execute(&mut *tx).await?;
            }
        }
        Ok(())
    }
}
