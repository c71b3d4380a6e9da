//! The transcript's storage: edits and deletions with their chain entries,
//! the export read, and the registry of signing keys.
//!
//! A message's own entry is written by the send path (see `batch`); here
//! the rarer writes extend the same chain, under the same thread-row lock,
//! so entries of one thread are numbered in commit order whichever path
//! wrote them.

use uuid::Uuid;

use super::batch::{CONTACT_DETECTED, contact_payload};
use super::{
    ContactFindings, IntegrationEventRecord, MESSAGE_RETURNING, Store, StoreError, message_at,
};
use crate::domain::{ContactPolicy, Message, UnixMicros};
use crate::transcript::{self, Entry, EntryKind, Hash};

/// Writes one `moderation.contact_detected` integration event through
/// `$executor` (inside the caller's transaction): the id from the counter
/// row, whose lock orders event writers. Evaluates to the event's record.
macro_rules! insert_event {
    ($executor:expr, $thread_id:expr, $message_id:expr, $actor:expr, $payload:expr, $now:expr) => {{
        let id: i64 = sqlx::query_scalar(
            "UPDATE integration_event_counter SET last_id = last_id + 1 \
             WHERE id = 1 RETURNING last_id",
        )
        .fetch_one($executor)
        .await?;
        sqlx::query(
            "INSERT INTO integration_events (id, event_type, thread_id, message_id, actor_id, \
             payload, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(CONTACT_DETECTED)
        .bind($thread_id)
        .bind($message_id)
        .bind($actor)
        .bind(&$payload)
        .bind($now)
        .execute($executor)
        .await?;
        IntegrationEventRecord {
            id,
            event_type: CONTACT_DETECTED.to_owned(),
            thread_id: $thread_id,
            message_id: $message_id,
            actor_id: $actor.map(str::to_owned),
            payload: $payload,
            created_at: $now,
        }
    }};
}

/// What an edit or deletion did.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    /// Done: the message as it now is, and the moderation event written
    /// with it, if its new text held contact details.
    Done(Box<Message>, Option<IntegrationEventRecord>),
    /// The new text holds contact details the thread blocks: the message
    /// is unchanged, and only the moderation event was written.
    Blocked {
        kinds: Vec<&'static str>,
        event: IntegrationEventRecord,
    },
}

/// One stored transcript entry with its hash, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub n: i64,
    pub kind: EntryKind,
    pub message_id: Uuid,
    pub seq: i64,
    pub sender_id: Option<String>,
    pub message_type: String,
    pub content: Option<String>,
    pub metadata: Option<String>,
    pub at: UnixMicros,
    /// As stored: the export shows what the database holds, and a row
    /// changed behind the service's back no longer matches it.
    pub hash: Vec<u8>,
}

/// A thread's whole transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTranscript {
    pub entries: Vec<StoredEntry>,
    pub head: Hash,
}

/// What changes a message and records it in the chain.
enum Change<'a> {
    Edit {
        content: &'a str,
        contact: Option<ContactFindings>,
    },
    Delete,
}

/// How each backend keeps the search index in step with an edit: the
/// statements run with `$1` the message id and `$2` its new words.
trait SearchIndex {
    const REINDEX: &'static [&'static str];
    /// Adds the new words to the search vocabulary (see
    /// `store::vocabulary`): last in the transaction, as a batch adds them.
    const ADD_WORDS: Option<&'static str>;
}

impl SearchIndex for sqlx::Postgres {
    // The thread's member marks stay with the new words (see
    // `crate::search::member_mark`).
    const REINDEX: &'static [&'static str] = &[concat!(
        "UPDATE messages m SET search = to_tsvector('simple', $2) || array_to_tsvector(ARRAY( \
         SELECT ",
        crate::search::member_mark_sql!(),
        " FROM thread_participants p WHERE p.thread_id = m.thread_id)) WHERE m.id = $1"
    )];
    const ADD_WORDS: Option<&'static str> = Some(super::vocabulary::ADD_WORDS);
}

impl SearchIndex for sqlx::Sqlite {
    // A contentless FTS5 table replaces a row by deleting and inserting it.
    // `$2 IS NOT NULL` only gives the DELETE the same parameters.
    const REINDEX: &'static [&'static str] = &[
        "DELETE FROM message_search WHERE rowid = (SELECT rowid FROM messages WHERE id = $1) \
         AND $2 IS NOT NULL",
        "INSERT INTO message_search (rowid, words) SELECT rowid, $2 FROM messages WHERE id = $1",
    ];
    // FTS5 answers prefixes from its own index.
    const ADD_WORDS: Option<&'static str> = None;
}

impl Store {
    /// Replaces a live message's content, recording the edit in its
    /// thread's transcript (the first content stays for the transcript's
    /// `message` entry). `None` when it is gone or deleted.
    pub async fn edit_message(
        &self,
        message_id: Uuid,
        editor: &str,
        content: &str,
        contact: Option<ContactFindings>,
        now: UnixMicros,
    ) -> Result<Option<Changed>, StoreError> {
        let change = Change::Edit { content, contact };
        self.change_message(message_id, editor, change, now).await
    }

    /// Soft-deletes a message (the first deletion time stays), recording
    /// the deletion in its thread's transcript once.
    pub async fn delete_message(
        &self,
        message_id: Uuid,
        deleter: &str,
        now: UnixMicros,
    ) -> Result<Option<Changed>, StoreError> {
        self.change_message(message_id, deleter, Change::Delete, now)
            .await
    }

    async fn change_message(
        &self,
        message_id: Uuid,
        actor: &str,
        change: Change<'_>,
        now: UnixMicros,
    ) -> Result<Option<Changed>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let mut tx = writer.begin().await?;
            let thread_id: Option<Uuid> =
                sqlx::query_scalar("SELECT thread_id FROM messages WHERE id = $1")
                    .bind(message_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(thread_id) = thread_id else {
                return Ok(None);
            };
            // Taking the next entry number locks the thread row: entries
            // of a thread commit one at a time, in number order, and the
            // thread's contact policy holds still meanwhile.
            let (n, head, policy): (i64, Option<Vec<u8>>, Option<String>) = sqlx::query_as(
                "UPDATE threads SET transcript_n = transcript_n + 1 WHERE id = $1 \
                 RETURNING transcript_n, transcript_head, contact_policy",
            )
            .bind(thread_id)
            .fetch_one(&mut *tx)
            .await?;
            let previous = transcript::head_or_genesis(thread_id, head.as_deref());
            // What the contact guard's findings come to under the policy.
            let found = match &change {
                Change::Edit {
                    contact: Some(found),
                    ..
                } => {
                    let policy = policy
                        .as_deref()
                        .and_then(ContactPolicy::parse)
                        .unwrap_or(found.default_policy);
                    (policy != ContactPolicy::Off).then_some((found, policy))
                }
                _ => None,
            };
            if let Some((found, ContactPolicy::Block)) = found {
                // Nothing changes but the moderation event, on its own.
                drop(tx);
                let mut tx = writer.begin().await?;
                let payload = contact_payload(
                    thread_id,
                    None,
                    Some(actor),
                    &found.kinds,
                    ContactPolicy::Block,
                );
                let event =
                    insert_event!(&mut *tx, thread_id, None::<Uuid>, Some(actor), payload, now);
                tx.commit().await?;
                return Ok(Some(Changed::Blocked {
                    kinds: found.kinds.clone(),
                    event,
                }));
            }
            let changed = match &change {
                Change::Edit { content, .. } => {
                    let (flags, masked) = match found {
                        Some((found, policy)) => (
                            Some(found.kinds.join(",")),
                            (policy == ContactPolicy::Mask).then_some(found.masked.as_str()),
                        ),
                        None => (None, None),
                    };
                    sqlx::query(&format!(
                        "UPDATE messages SET original_content = COALESCE(original_content, \
                         content), content = $2, edited_at = $3, flags = $4, masked_content = $5 \
                         WHERE id = $1 AND deleted_at IS NULL RETURNING {MESSAGE_RETURNING}"
                    ))
                    .bind(message_id)
                    .bind(*content)
                    .bind(now)
                    .bind(flags)
                    .bind(masked)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                Change::Delete => {
                    sqlx::query(&format!(
                        "UPDATE messages SET deleted_at = $2 \
                         WHERE id = $1 AND deleted_at IS NULL RETURNING {MESSAGE_RETURNING}"
                    ))
                    .bind(message_id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?
                }
            };
            let Some(row) = changed else {
                // Deleted already (or meanwhile): nothing to record.
                drop(tx);
                return match change {
                    Change::Edit { .. } => Ok(None),
                    Change::Delete => Ok(self
                        .message(message_id, None)
                        .await?
                        .map(|message| Changed::Done(Box::new(message), None))),
                };
            };
            let message = message_at(&row, 0)?;
            let (kind, content, metadata) = match &change {
                Change::Edit { content, .. } => (
                    EntryKind::Edit,
                    Some(*content),
                    Some(message.metadata.as_str()),
                ),
                Change::Delete => (EntryKind::Delete, None, None),
            };
            let hash = transcript::link(
                &previous,
                &Entry {
                    n,
                    kind,
                    message_id,
                    seq: message.seq,
                    sender_id: Some(actor),
                    message_type: message.kind.as_str(),
                    content,
                    metadata,
                    at: now,
                },
            );
            sqlx::query(
                "INSERT INTO transcript_entries (thread_id, n, kind, message_id, sender_id, \
                 content, metadata, at, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(thread_id)
            .bind(n)
            .bind(kind.as_str())
            .bind(message_id)
            .bind(actor)
            .bind(content)
            .bind(metadata)
            .bind(now)
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE threads SET transcript_head = $2 WHERE id = $1")
                .bind(thread_id)
                .bind(hash.as_slice())
                .execute(&mut *tx)
                .await?;
            let mut event = None;
            if let Change::Edit { content, .. } = &change {
                let shown = message.masked_content.as_deref().unwrap_or(content);
                let words = crate::search::index_text(shown);
                for statement in <Db as SearchIndex>::REINDEX {
                    sqlx::query(statement)
                        .bind(message_id)
                        .bind(words.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some((found, policy)) = found {
                    let payload = contact_payload(
                        thread_id,
                        Some(message_id),
                        Some(actor),
                        &found.kinds,
                        policy,
                    );
                    event = Some(insert_event!(
                        &mut *tx,
                        thread_id,
                        Some(message_id),
                        Some(actor),
                        payload,
                        now
                    ));
                }
                if let Some(statement) = <Db as SearchIndex>::ADD_WORDS {
                    sqlx::query(statement)
                        .bind(super::vocabulary::all_words(&words))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            Ok(Some(Changed::Done(Box::new(message), event)))
        })
    }

    /// A thread's transcript as stored, `None` when there is no such
    /// thread. The head is read first: every entry up to it has committed,
    /// and later ones are left out, so the export is one consistent prefix.
    pub async fn transcript(
        &self,
        thread_id: Uuid,
    ) -> Result<Option<StoredTranscript>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let head: Option<(i64, Option<Vec<u8>>)> =
                sqlx::query_as("SELECT transcript_n, transcript_head FROM threads WHERE id = $1")
                    .bind(thread_id)
                    .fetch_optional(reader)
                    .await?;
            let Some((last_n, head)) = head else {
                return Ok(None);
            };
            let rows: Vec<EntryRow> = sqlx::query_as(
                "SELECT n, kind, message_id, seq, sender_id, message_type, content, metadata, \
                 at, hash FROM ( \
                   SELECT m.transcript_n AS n, 'message' AS kind, m.id AS message_id, m.seq, \
                   m.sender_id, m.message_type, COALESCE(m.original_content, m.content) AS content, \
                   m.metadata, m.created_at AS at, m.transcript_hash AS hash \
                   FROM messages m WHERE m.thread_id = $1 AND m.transcript_n IS NOT NULL \
                   AND m.transcript_n <= $2 \
                   UNION ALL \
                   SELECT e.n, e.kind, e.message_id, m.seq, e.sender_id, m.message_type, \
                   e.content, e.metadata, e.at, e.hash \
                   FROM transcript_entries e JOIN messages m ON m.id = e.message_id \
                   WHERE e.thread_id = $1 AND e.n <= $2 \
                 ) entries ORDER BY n",
            )
            .bind(thread_id)
            .bind(last_n)
            .fetch_all(reader)
            .await?;
            let entries = rows
                .into_iter()
                .map(entry_from_row)
                .collect::<Result<_, _>>()?;
            Ok(Some(StoredTranscript {
                entries,
                head: transcript::head_or_genesis(thread_id, head.as_deref()),
            }))
        })
    }

    /// Records a signing key's public half, once per key id.
    pub async fn register_transcript_key(
        &self,
        key_id: &str,
        public_key: &str,
        now: UnixMicros,
    ) -> Result<(), StoreError> {
        with_pools!(self, |reader, writer, Db| {
            sqlx::query(
                "INSERT INTO transcript_keys (key_id, public_key, added_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key_id) DO NOTHING",
            )
            .bind(key_id)
            .bind(public_key)
            .bind(now)
            .execute(writer)
            .await?;
            Ok(())
        })
    }

    /// Every key that ever signed here, oldest first: `(key_id, public key
    /// in base64)`.
    pub async fn transcript_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            Ok(sqlx::query_as(
                "SELECT key_id, public_key FROM transcript_keys ORDER BY added_at, key_id",
            )
            .fetch_all(reader)
            .await?)
        })
    }
}

/// An entry's columns as read: n, kind, message_id, seq, sender_id,
/// message_type, content, metadata, at, hash.
type EntryRow = (
    i64,
    String,
    Uuid,
    i64,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    i64,
    Vec<u8>,
);

fn entry_from_row(row: EntryRow) -> Result<StoredEntry, StoreError> {
    let (n, kind, message_id, seq, sender_id, message_type, content, metadata, at, hash) = row;
    Ok(StoredEntry {
        n,
        kind: EntryKind::parse(&kind)
            .ok_or(StoreError::Corrupt("unknown transcript entry kind"))?,
        message_id,
        seq,
        sender_id,
        message_type,
        content,
        metadata,
        at,
        hash,
    })
}
