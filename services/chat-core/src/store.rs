//! The only place that speaks SQL. One [`Store`] with two backends that
//! behave identically: PostgreSQL (many replicas) and an embedded SQLite file
//! (the default when nothing is configured).
//!
//! Each query is written once: [`with_pools!`] expands a method body for
//! both backends, so the two cannot drift apart. The schemas differ only in
//! column types (see `migrations/`), and every statement uses SQL that both
//! databases accept (`$n` parameters, `RETURNING`, `ON CONFLICT`, row
//! values).

use std::{
    borrow::Cow, future::Future, path::Path, pin::Pin, str::FromStr, sync::Arc, time::Duration,
};

use sqlx::{
    ColumnIndex, Decode, QueryBuilder, Row, Type,
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
    postgres::{PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};
use uuid::Uuid;

use crate::domain::{ContactPolicy, Message, MessageKind, Thread, ThreadView, UnixMicros};

mod batch;

pub use batch::WriterSession;

/// Why a storage call failed. Callers only distinguish "try again later"
/// from "something is wrong"; details go to the logs, never to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or the pool is exhausted.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database failure.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Applying the schema failed.
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A stored value that the code cannot read back.
    #[error("unreadable stored value: {0}")]
    Corrupt(&'static str),
    /// The batch this message was written in failed as a whole, for a
    /// reason that retrying it message by message would not cure (the
    /// database is unreachable): every message of the batch gets this,
    /// sharing the one cause.
    #[error("batched write failed")]
    Batch(#[source] Arc<StoreError>),
    /// The message writer has stopped (the server is shutting down), so
    /// nothing more is appended here; another replica can take it.
    #[error("message writer stopped")]
    WriterStopped,
}

impl StoreError {
    /// Whether trying again later (or elsewhere) may succeed: what clients
    /// are told as UNAVAILABLE rather than INTERNAL.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::WriterStopped => true,
            StoreError::Batch(cause) => cause.is_unavailable(),
            StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            // A connection that broke in the middle of a message.
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(err),
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(is_server_going_away) => {
                StoreError::Unavailable(err)
            }
            _ => StoreError::Database(err),
        }
    }
}

/// Whether a PostgreSQL SQLSTATE says the server, not the statement, is
/// the trouble: connection exceptions (class 08), too many connections,
/// and the server shutting down, crashed or starting up. A restart of
/// PostgreSQL ends in-flight statements with these; trying again shortly,
/// or on a fresh connection, works.
fn is_server_going_away(sqlstate: &str) -> bool {
    sqlstate.starts_with("08") || matches!(sqlstate, "53300" | "57P01" | "57P02" | "57P03")
}

/// Where the data lives, parsed from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
    /// A `sqlite://` URL (a file; created when missing).
    Sqlite(String),
}

impl DatabaseLocation {
    /// The embedded default: an SQLite file under `./data`.
    pub fn embedded_default() -> Self {
        DatabaseLocation::Sqlite("sqlite://./data/chat.db".to_owned())
    }

    /// Reads a `DATABASE_URL` value.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseLocation::Postgres(url.to_owned()))
        } else if url.starts_with("sqlite:") {
            Ok(DatabaseLocation::Sqlite(url.to_owned()))
        } else {
            Err("expected a postgres://… or sqlite://… URL".to_owned())
        }
    }

    /// Whether this is the embedded SQLite backend.
    pub fn is_embedded(&self) -> bool {
        matches!(self, DatabaseLocation::Sqlite(_))
    }
}

/// PostgreSQL: one pool; row locks order concurrent writers.
#[derive(Debug, Clone)]
pub struct PgBackend {
    pool: PgPool,
    /// The search words this replica knows are stored (see [`vocabulary`]).
    words: vocabulary::KnownWords,
}

/// SQLite: a single writer connection (SQLite allows one writer at a time,
/// so queueing in the pool beats retrying on `SQLITE_BUSY`) and a pool of
/// readers, which WAL mode lets run beside the writer.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    reader: SqlitePool,
    writer: SqlitePool,
}

/// The chat database.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgBackend),
    Sqlite(SqliteBackend),
}

/// Connection pool figures for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// A thread to insert; participants sorted and validated.
#[derive(Debug, Clone)]
pub struct NewThread {
    pub id: Uuid,
    pub participants: Vec<String>,
    pub job_id: Option<String>,
    pub title: Option<String>,
    pub created_by: String,
    pub created_at: UnixMicros,
}

/// A message to append; validated. `seq` is assigned by the store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub thread_id: Uuid,
    /// The sending user; `None` for service messages.
    pub sender_id: Option<String>,
    pub kind: MessageKind,
    pub content: String,
    pub metadata: String,
    pub client_msg_id: Option<String>,
    /// The service that posted a sender-less message.
    pub posted_by: Option<String>,
    /// A service's idempotency key.
    pub idempotency_key: Option<String>,
    pub created_at: UnixMicros,
    /// The integration event written in the same transaction, if any.
    pub event: Option<NewIntegrationEvent>,
    /// Contact details found in a user's text; what becomes of them is the
    /// thread's policy (or `default_policy`), decided under its lock.
    pub contact: Option<ContactFindings>,
}

/// What the contact guard found in a message's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactFindings {
    /// The kinds found, in a fixed order (`email`, `phone`, `link`,
    /// `handle`), each once.
    pub kinds: Vec<&'static str>,
    /// The text with each finding replaced, for the `mask` policy.
    pub masked: String,
    /// The deployment's policy, for threads without their own.
    pub default_policy: ContactPolicy,
}

impl NewMessage {
    /// The message as stored with `seq`: both send paths (one at a time
    /// and batched) answer with exactly this.
    pub fn stored(&self, seq: i64, contact: Option<(&[&str], Option<&str>)>) -> Message {
        Message {
            id: self.id,
            thread_id: self.thread_id,
            seq,
            sender_id: self.sender_id.clone(),
            kind: self.kind,
            content: self.content.clone(),
            metadata: self.metadata.clone(),
            client_msg_id: self.client_msg_id.clone(),
            created_at: self.created_at,
            edited_at: None,
            deleted_at: None,
            flags: contact
                .map(|(kinds, _)| kinds.iter().map(|k| (*k).to_owned()).collect())
                .unwrap_or_default(),
            masked_content: contact.and_then(|(_, masked)| masked.map(str::to_owned)),
        }
    }
}

/// An outbox entry to write with its message.
#[derive(Debug, Clone)]
pub struct NewIntegrationEvent {
    /// `dispute.requested`, `payment.initiated`, `job.updated`, ...
    pub event_type: String,
    /// The user who caused it; `None` for services.
    pub actor_id: Option<String>,
    /// A JSON object.
    pub payload: String,
}

/// A stored integration event.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationEventRecord {
    pub id: i64,
    pub event_type: String,
    pub thread_id: Uuid,
    /// `None` when the event is about a message that was not stored.
    pub message_id: Option<Uuid>,
    pub actor_id: Option<String>,
    pub payload: String,
    pub created_at: UnixMicros,
}

/// What appending a message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Stored with a new seq, and the integration event written with it,
    /// if any.
    Created(Message, Option<IntegrationEventRecord>),
    /// The sender's key was used before: the original message.
    Duplicate(Message),
    /// Refused by the thread's `block` contact policy: nothing stored but
    /// the moderation event.
    Blocked {
        kinds: Vec<&'static str>,
        event: IntegrationEventRecord,
    },
}

/// A position in a thread list: threads strictly after it, in list order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCursor {
    pub activity_at: UnixMicros,
    pub thread_id: Uuid,
}

/// Which page of a thread's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePage {
    /// The newest messages.
    Latest,
    /// Messages with seq below this one, newest first.
    Before(i64),
    /// Messages with seq above this one, oldest first.
    After(i64),
}

/// The key under which the one-thread-per-(participants, job) rule is
/// enforced: SHA-256 of the sorted ids, fixed-size for a unique index.
pub fn participants_key(sorted_participants: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (i, id) in sorted_participants.iter().enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        hasher.update(id.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    hex
}

fn job_key(job_id: Option<&str>) -> &str {
    job_id.unwrap_or("")
}

/// Expands `$body` once per backend with `$reader`/`$writer` bound to that
/// backend's pools and `$db` naming its `sqlx::Database`.
macro_rules! with_pools {
    ($store:expr, |$reader:ident, $writer:ident, $db:ident| $body:expr) => {
        match $store {
            Store::Postgres(backend) => {
                #[allow(unused_variables)]
                let $reader = &backend.pool;
                #[allow(unused_variables)]
                let $writer = &backend.pool;
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
            Store::Sqlite(backend) => {
                #[allow(unused_variables)]
                let $reader = &backend.reader;
                #[allow(unused_variables)]
                let $writer = &backend.writer;
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
        }
    };
}

/// The message that a new message's idempotency key (a user's
/// client_msg_id in this thread, or a service's key) already names, read
/// through `$executor`. Evaluates to `Option<Message>`, `?`-ing errors.
macro_rules! duplicate_of {
    ($executor:expr, $new:expr) => {{
        let new: &NewMessage = $new;
        let row = match (
            &new.sender_id,
            &new.client_msg_id,
            &new.posted_by,
            &new.idempotency_key,
        ) {
            (Some(sender), Some(client_msg_id), _, _) => {
                sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.thread_id = $1 \
                     AND m.sender_id = $2 AND m.client_msg_id = $3"
                ))
                .bind(new.thread_id)
                .bind(sender)
                .bind(client_msg_id)
                .fetch_optional($executor)
                .await?
            }
            (None, _, Some(posted_by), Some(key)) => {
                sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.posted_by = $1 \
                     AND m.idempotency_key = $2"
                ))
                .bind(posted_by)
                .bind(key)
                .fetch_optional($executor)
                .await?
            }
            _ => None,
        };
        row.map(|row| message_at(&row, 0)).transpose()?
    }};
}

/// Thread columns, read by [`thread_at`] in this order.
const THREAD_COLUMNS: &str = "t.id, t.job_id, t.title, t.created_by, t.created_at, \
     t.last_message_at, t.last_seq, t.contact_policy";
const THREAD_COLUMN_COUNT: usize = 8;

mod presence;
mod search;
mod transcript;
mod vocabulary;

pub use presence::{PresenceChange, PresenceReport, PresenceState, Reminder};
pub use search::{SearchCursor, SearchScope};
pub use transcript::{Changed, StoredEntry, StoredTranscript};

/// Message columns, read by [`message_at`] in this order.
const MESSAGE_COLUMNS: &str = "m.id, m.thread_id, m.seq, m.sender_id, m.message_type, m.content, \
     m.metadata, m.client_msg_id, m.created_at, m.edited_at, m.deleted_at, m.flags, \
     m.masked_content";

/// How many columns [`MESSAGE_COLUMNS`] has.
const MESSAGE_COLUMN_COUNT: usize = 13;

/// [`MESSAGE_COLUMNS`] unqualified, for `RETURNING` (SQLite refuses
/// qualified names there).
const MESSAGE_RETURNING: &str = "id, thread_id, seq, sender_id, message_type, content, metadata, \
     client_msg_id, created_at, edited_at, deleted_at, flags, masked_content";

fn thread_at<R>(row: &R, at: usize) -> Result<Thread, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> Uuid: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Thread {
        id: row.try_get(at)?,
        participants: Vec::new(),
        job_id: row.try_get(at + 1)?,
        title: row.try_get(at + 2)?,
        created_by: row.try_get(at + 3)?,
        created_at: row.try_get(at + 4)?,
        last_message_at: row.try_get(at + 5)?,
        last_seq: row.try_get(at + 6)?,
        contact_policy: row
            .try_get::<Option<String>, _>(at + 7)?
            .and_then(|policy| ContactPolicy::parse(&policy)),
    })
}

fn message_at<R>(row: &R, at: usize) -> Result<Message, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> Uuid: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = row.try_get(at + 4)?;
    Ok(Message {
        id: row.try_get(at)?,
        thread_id: row.try_get(at + 1)?,
        seq: row.try_get(at + 2)?,
        sender_id: row.try_get(at + 3)?,
        kind: MessageKind::parse(&kind).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "message_type".to_owned(),
            source: "unknown message type".into(),
        })?,
        content: row.try_get(at + 5)?,
        metadata: row.try_get(at + 6)?,
        client_msg_id: row.try_get(at + 7)?,
        created_at: row.try_get(at + 8)?,
        edited_at: row.try_get(at + 9)?,
        deleted_at: row.try_get(at + 10)?,
        flags: row
            .try_get::<Option<String>, _>(at + 11)?
            .map(|flags| flags.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        masked_content: row.try_get(at + 12)?,
    })
}

/// The schema, compiled into the binary so a deployed image needs no files.
#[derive(Debug)]
struct EmbeddedMigrations(&'static [(i64, &'static str, &'static str)]);

const POSTGRES_MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations(&[
    (
        1,
        "chat",
        include_str!("../../../migrations/postgres/0001_chat.sql"),
    ),
    (
        2,
        "hot rows without unique checks",
        include_str!("../../../migrations/postgres/0002_hot_rows_without_unique_checks.sql"),
    ),
    (
        3,
        "transcripts and search",
        include_str!("../../../migrations/postgres/0003_transcripts_and_search.sql"),
    ),
    (
        4,
        "contact guard",
        include_str!("../../../migrations/postgres/0004_contact_guard.sql"),
    ),
    (
        5,
        "presence and reminders",
        include_str!("../../../migrations/postgres/0005_presence_and_reminders.sql"),
    ),
    (
        6,
        "search member marks",
        include_str!("../../../migrations/postgres/0006_search_member_marks.sql"),
    ),
    (
        7,
        "search words",
        include_str!("../../../migrations/postgres/0007_search_words.sql"),
    ),
]);

const SQLITE_MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations(&[
    (
        1,
        "chat",
        include_str!("../../../migrations/sqlite/0001_chat.sql"),
    ),
    (
        2,
        "hot rows without unique checks",
        include_str!("../../../migrations/sqlite/0002_hot_rows_without_unique_checks.sql"),
    ),
    (
        3,
        "transcripts and search",
        include_str!("../../../migrations/sqlite/0003_transcripts_and_search.sql"),
    ),
    (
        4,
        "contact guard",
        include_str!("../../../migrations/sqlite/0004_contact_guard.sql"),
    ),
    (
        5,
        "presence and reminders",
        include_str!("../../../migrations/sqlite/0005_presence_and_reminders.sql"),
    ),
]);

type ResolveFuture<'s> =
    Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>>;

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(self) -> ResolveFuture<'s> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The SQLite writer's page cache, in KiB as a negative `cache_size`.
/// SQLite's default of 2 MiB holds too little of the indexes every batch
/// updates (messages by thread and seq, by client id, the text index), so
/// their pages were read back from the operating system's cache on every
/// batch: at the send path's maximum, 6 % of chat-core's samples were the
/// kernel copying them (under 1 % with this, and 5–7 % more messages a
/// second; BENCHMARKS.md). It grows only as far as it is used.
const WRITER_CACHE_KIB: i64 = -65_536;

/// PostgreSQL connections kept open even when idle.
const WARM_CONNECTIONS: u32 = 4;

/// How long a call waits for a PostgreSQL connection unless configured.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

impl Store {
    /// Opens the pools. For SQLite the file (and its directory) is created
    /// when missing, in WAL mode with full fsync: nothing acknowledged may
    /// be lost to a crash.
    pub async fn connect(
        location: &DatabaseLocation,
        max_connections: u32,
    ) -> Result<Store, StoreError> {
        Self::connect_with(location, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`Store::connect`], waiting at most `acquire_timeout` for a
    /// PostgreSQL connection. After the database restarts, every pooled
    /// connection is dead: each is tested before use and replaced at once
    /// rather than handed out, and a short timeout keeps the pool's
    /// reconnect backoff (a fifth of it at most) short, so calls are served
    /// again within a fraction of a second of the database coming back.
    pub async fn connect_with(
        location: &DatabaseLocation,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        match location {
            DatabaseLocation::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .test_before_acquire(true)
                    // A few connections open before the first call, so a
                    // replica that (re)starts under load does not make its
                    // first callers wait for connections to be set up.
                    .min_connections(max_connections.min(WARM_CONNECTIONS))
                    .connect(url)
                    .await?;
                Ok(Store::Postgres(PgBackend {
                    pool,
                    words: Default::default(),
                }))
            }
            DatabaseLocation::Sqlite(url) => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5));
                if let Some(dir) = options.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                }
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(
                        options
                            .clone()
                            .pragma("cache_size", WRITER_CACHE_KIB.to_string()),
                    )
                    .await?;
                let reader = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options.read_only(true))
                    .await?;
                Ok(Store::Sqlite(SqliteBackend { reader, writer }))
            }
        }
    }

    /// Applies the schema. Safe to run from several replicas at once on
    /// PostgreSQL (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let source = match self {
            Store::Postgres(_) => POSTGRES_MIGRATIONS,
            Store::Sqlite(_) => SQLITE_MIGRATIONS,
        };
        let migrator = Migrator::new(source).await.map_err(StoreError::Migrate)?;
        with_pools!(self, |reader, writer, Db| {
            migrator.run(writer).await.map_err(StoreError::Migrate)
        })
    }

    /// Closes every connection, waiting for checked-out ones to return.
    pub async fn close(&self) {
        match self {
            Store::Postgres(b) => b.pool.close().await,
            Store::Sqlite(b) => {
                b.reader.close().await;
                b.writer.close().await;
            }
        }
    }

    /// Pool figures for `/metrics`.
    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Store::Postgres(b) => PoolStats {
                size: b.pool.size(),
                idle: b.pool.num_idle() as u32,
                max: b.pool.options().get_max_connections(),
            },
            Store::Sqlite(b) => PoolStats {
                size: b.reader.size() + b.writer.size(),
                idle: (b.reader.num_idle() + b.writer.num_idle()) as u32,
                max: b.reader.options().get_max_connections()
                    + b.writer.options().get_max_connections(),
            },
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pools!(self, |reader, writer, Db| {
            sqlx::query("SELECT 1").execute(reader).await?;
            Ok(())
        })
    }

    /// Inserts a thread, or finds the one that already has these
    /// participants and job. Returns the thread and whether it is new.
    pub async fn create_thread(&self, new: &NewThread) -> Result<(Thread, bool), StoreError> {
        let key = participants_key(&new.participants);
        let job = job_key(new.job_id.as_deref());
        let inserted = with_pools!(self, |reader, writer, Db| {
            let mut tx = writer.begin().await?;
            // The key decides: a concurrent creation of the same thread
            // waits here for this one to commit, then inserts nothing.
            let inserted = sqlx::query(
                "INSERT INTO thread_keys (participants_key, job_key, thread_id) \
                 VALUES ($1, $2, $3) ON CONFLICT (participants_key, job_key) DO NOTHING",
            )
            .bind(&key)
            .bind(job)
            .bind(new.id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                sqlx::query(
                    "INSERT INTO threads (id, participants_key, job_key, job_id, title, \
                     created_by, created_at, last_seq, activity_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $7)",
                )
                .bind(new.id)
                .bind(&key)
                .bind(job)
                .bind(&new.job_id)
                .bind(&new.title)
                .bind(&new.created_by)
                .bind(new.created_at)
                .execute(&mut *tx)
                .await?;
                let mut insert = QueryBuilder::<Db>::new(
                    "INSERT INTO thread_participants (thread_id, user_id, activity_at) ",
                );
                insert.push_values(&new.participants, |mut row, user| {
                    row.push_bind(new.id)
                        .push_bind(user)
                        .push_bind(new.created_at);
                });
                insert.build().execute(&mut *tx).await?;
                tx.commit().await?;
            }
            inserted
        });
        if inserted {
            let thread = Thread {
                id: new.id,
                participants: new.participants.clone(),
                job_id: new.job_id.clone(),
                title: new.title.clone(),
                created_by: new.created_by.clone(),
                created_at: new.created_at,
                last_message_at: None,
                last_seq: 0,
                contact_policy: None,
            };
            return Ok((thread, true));
        }
        let existing = self
            .find_thread(&new.participants, new.job_id.as_deref(), None)
            .await?
            .ok_or(StoreError::Corrupt(
                "thread vanished after a conflicting insert",
            ))?;
        Ok((existing.thread, false))
    }

    /// The thread as `user` sees it (`None`: a service, which sees every
    /// thread). `None` when it does not exist or `user` is not in it.
    pub async fn thread(
        &self,
        thread_id: Uuid,
        user: Option<&str>,
    ) -> Result<Option<ThreadView>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let row =
                match user {
                    Some(user) => {
                        sqlx::query(&format!(
                            "SELECT {THREAD_COLUMNS}, tp.last_read_seq FROM threads t \
                         JOIN thread_participants tp ON tp.thread_id = t.id AND tp.user_id = $2 \
                         WHERE t.id = $1"
                        ))
                        .bind(thread_id)
                        .bind(user)
                        .fetch_optional(reader)
                        .await?
                    }
                    None => sqlx::query(&format!(
                        "SELECT {THREAD_COLUMNS}, CAST(0 AS BIGINT) FROM threads t WHERE t.id = $1"
                    ))
                    .bind(thread_id)
                    .fetch_optional(reader)
                    .await?,
                };
            let Some(row) = row else { return Ok(None) };
            let mut thread = thread_at(&row, 0)?;
            let last_read_seq: i64 = row.try_get(THREAD_COLUMN_COUNT)?;
            thread.participants = sqlx::query_scalar(
                "SELECT user_id FROM thread_participants WHERE thread_id = $1 ORDER BY user_id",
            )
            .bind(thread_id)
            .fetch_all(reader)
            .await?;
            Ok(Some(ThreadView {
                thread,
                last_read_seq,
                as_participant: user.is_some(),
                last_message: None,
            }))
        })
    }

    /// Whether `user` (or a service, with `None`) may see the thread. One
    /// indexed lookup, for the hot paths that need nothing else.
    pub async fn can_see(&self, thread_id: Uuid, user: Option<&str>) -> Result<bool, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let found = match user {
                Some(user) => sqlx::query(
                    "SELECT 1 FROM thread_participants WHERE thread_id = $1 AND user_id = $2",
                )
                .bind(thread_id)
                .bind(user)
                .fetch_optional(reader)
                .await?
                .is_some(),
                None => sqlx::query("SELECT 1 FROM threads WHERE id = $1")
                    .bind(thread_id)
                    .fetch_optional(reader)
                    .await?
                    .is_some(),
            };
            Ok(found)
        })
    }

    /// The thread's last seq, if `user` (or a service, with `None`) may
    /// see it: the starting point of a live subscription.
    pub async fn visible_last_seq(
        &self,
        thread_id: Uuid,
        user: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let seq: Option<i64> = match user {
                Some(user) => sqlx::query_scalar(
                    "SELECT last_seq FROM thread_participants WHERE thread_id = $1 AND user_id = $2",
                )
                .bind(thread_id)
                .bind(user)
                .fetch_optional(reader)
                .await?,
                None => sqlx::query_scalar("SELECT last_seq FROM threads WHERE id = $1")
                    .bind(thread_id)
                    .fetch_optional(reader)
                    .await?,
            };
            Ok(seq)
        })
    }

    /// Every thread of `user` with its last seq, in one query: where a
    /// user-wide subscription starts.
    pub async fn user_thread_seqs(&self, user: &str) -> Result<Vec<(Uuid, i64)>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let rows: Vec<(Uuid, i64)> = sqlx::query_as(
                "SELECT thread_id, last_seq FROM thread_participants WHERE user_id = $1",
            )
            .bind(user)
            .fetch_all(reader)
            .await?;
            Ok(rows)
        })
    }

    /// The thread with exactly these participants (sorted) and job.
    pub async fn find_thread(
        &self,
        sorted_participants: &[String],
        job_id: Option<&str>,
        user: Option<&str>,
    ) -> Result<Option<ThreadView>, StoreError> {
        let key = participants_key(sorted_participants);
        let id: Option<Uuid> = with_pools!(self, |reader, writer, Db| {
            sqlx::query_scalar(
                "SELECT thread_id FROM thread_keys WHERE participants_key = $1 AND job_key = $2",
            )
            .bind(&key)
            .bind(job_key(job_id))
            .fetch_optional(reader)
            .await?
        });
        match id {
            Some(id) => self.thread(id, user).await,
            None => Ok(None),
        }
    }

    /// A page of threads, most recent activity first, each with the
    /// viewer's read cursor and the last message. Two queries per page,
    /// whatever its size: the page itself and its participants.
    pub async fn list_threads(
        &self,
        user: Option<&str>,
        job_id: Option<&str>,
        after: Option<ThreadCursor>,
        limit: u32,
    ) -> Result<Vec<(ThreadView, ThreadCursor)>, StoreError> {
        let message_at_column = THREAD_COLUMN_COUNT + 2;
        let mut page: Vec<(ThreadView, ThreadCursor)> = with_pools!(self, |reader, writer, Db| {
            let mut query = QueryBuilder::<Db>::new("SELECT ");
            query.push(THREAD_COLUMNS);
            match user {
                Some(user) => {
                    query.push(", tp.last_read_seq, tp.activity_at, ");
                    query.push(MESSAGE_COLUMNS);
                    query.push(
                        " FROM thread_participants tp JOIN threads t ON t.id = tp.thread_id \
                         LEFT JOIN messages m ON m.thread_id = t.id AND m.seq = t.last_seq \
                         WHERE tp.user_id = ",
                    );
                    query.push_bind(user);
                    query.push(" AND (tp.archived_seq IS NULL OR tp.last_seq > tp.archived_seq)");
                    if let Some(job_id) = job_id {
                        query.push(" AND t.job_id = ").push_bind(job_id);
                    }
                    if let Some(after) = after {
                        query.push(" AND (tp.activity_at, tp.thread_id) < (");
                        query.push_bind(after.activity_at).push(", ");
                        query.push_bind(after.thread_id).push(")");
                    }
                    query.push(" ORDER BY tp.activity_at DESC, tp.thread_id DESC LIMIT ");
                }
                None => {
                    query.push(", CAST(0 AS BIGINT), t.activity_at, ");
                    query.push(MESSAGE_COLUMNS);
                    query.push(
                        " FROM threads t \
                         LEFT JOIN messages m ON m.thread_id = t.id AND m.seq = t.last_seq \
                         WHERE 1 = 1",
                    );
                    if let Some(job_id) = job_id {
                        query.push(" AND t.job_id = ").push_bind(job_id);
                    }
                    if let Some(after) = after {
                        query.push(" AND (t.activity_at, t.id) < (");
                        query.push_bind(after.activity_at).push(", ");
                        query.push_bind(after.thread_id).push(")");
                    }
                    query.push(" ORDER BY t.activity_at DESC, t.id DESC LIMIT ");
                }
            }
            query.push_bind(i64::from(limit));
            let rows = query.build().fetch_all(reader).await?;
            let mut page = Vec::with_capacity(rows.len());
            for row in &rows {
                let thread = thread_at(row, 0)?;
                let last_read_seq: i64 = row.try_get(THREAD_COLUMN_COUNT)?;
                let activity_at: i64 = row.try_get(THREAD_COLUMN_COUNT + 1)?;
                let has_message: Option<Uuid> = row.try_get(message_at_column)?;
                let last_message = match has_message {
                    Some(_) => Some(message_at(row, message_at_column)?),
                    None => None,
                };
                let cursor = ThreadCursor {
                    activity_at,
                    thread_id: thread.id,
                };
                page.push((
                    ThreadView {
                        thread,
                        last_read_seq,
                        as_participant: user.is_some(),
                        last_message,
                    },
                    cursor,
                ));
            }
            page
        });
        self.fill_participants(page.iter_mut().map(|(view, _)| &mut view.thread))
            .await?;
        Ok(page)
    }

    /// Loads the participants of several threads in one query.
    async fn fill_participants<'a>(
        &self,
        threads: impl Iterator<Item = &'a mut Thread>,
    ) -> Result<(), StoreError> {
        let mut threads: Vec<&mut Thread> = threads.collect();
        if threads.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(Uuid, String)> = with_pools!(self, |reader, writer, Db| {
            let mut query = QueryBuilder::<Db>::new(
                "SELECT thread_id, user_id FROM thread_participants WHERE thread_id IN (",
            );
            let mut ids = query.separated(", ");
            for thread in &threads {
                ids.push_bind(thread.id);
            }
            query.push(") ORDER BY thread_id, user_id");
            query.build_query_as().fetch_all(reader).await?
        });
        threads.sort_unstable_by_key(|t| t.id);
        for (thread_id, user_id) in pairs {
            if let Ok(i) = threads.binary_search_by_key(&thread_id, |t| t.id) {
                threads[i].participants.push(user_id);
            }
        }
        Ok(())
    }

    /// Changes the title. False when the thread does not exist.
    pub async fn update_title(
        &self,
        thread_id: Uuid,
        title: Option<&str>,
    ) -> Result<bool, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let updated = sqlx::query("UPDATE threads SET title = $2 WHERE id = $1")
                .bind(thread_id)
                .bind(title)
                .execute(writer)
                .await?
                .rows_affected();
            Ok(updated == 1)
        })
    }

    /// Hides the thread from `user`'s list until a new message arrives
    /// (`archived = true`), or shows it again. False when `user` is not in
    /// the thread.
    pub async fn set_archived(
        &self,
        thread_id: Uuid,
        user: &str,
        archived: bool,
    ) -> Result<bool, StoreError> {
        let sql = if archived {
            "UPDATE thread_participants SET archived_seq = last_seq \
             WHERE thread_id = $1 AND user_id = $2"
        } else {
            "UPDATE thread_participants SET archived_seq = NULL \
             WHERE thread_id = $1 AND user_id = $2"
        };
        with_pools!(self, |reader, writer, Db| {
            let updated = sqlx::query(sql)
                .bind(thread_id)
                .bind(user)
                .execute(writer)
                .await?
                .rows_affected();
            Ok(updated == 1)
        })
    }

    /// Appends one message, as a batch of one (so its transcript entry and
    /// search words are written exactly as in a batch). `None` when the
    /// thread does not exist or the sender is not in it.
    ///
    /// The message writer batches appends through `append_batch` and comes
    /// here only when a batch fails as a whole, to give each of its
    /// messages its own fate: a service key that a concurrent transaction
    /// used meanwhile, say, fails only its own message, which then answers
    /// with the message stored under that key.
    pub async fn append_message(&self, new: &NewMessage) -> Result<Option<Appended>, StoreError> {
        match self.append_batch(std::slice::from_ref(new)).await {
            Ok(mut outcomes) => Ok(outcomes.pop().flatten()),
            Err(StoreError::Database(err)) if is_unique_violation(&err) => {
                with_pools!(self, |reader, writer, Db| {
                    match duplicate_of!(writer, new) {
                        Some(original) => Ok(Some(Appended::Duplicate(original))),
                        None => Err(StoreError::Database(err)),
                    }
                })
            }
            Err(err) => Err(err),
        }
    }

    /// A page of a thread's messages in ascending seq order, and whether
    /// more lie beyond it in the paging direction.
    pub async fn list_messages(
        &self,
        thread_id: Uuid,
        page: MessagePage,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let fetch = i64::from(limit) + 1;
        let mut messages: Vec<Message> = with_pools!(self, |reader, writer, Db| {
            let rows = match page {
                MessagePage::Latest => {
                    sqlx::query(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.thread_id = $1 \
                         ORDER BY m.seq DESC LIMIT $2"
                    ))
                    .bind(thread_id)
                    .bind(fetch)
                    .fetch_all(reader)
                    .await?
                }
                MessagePage::Before(seq) => {
                    sqlx::query(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.thread_id = $1 \
                         AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"
                    ))
                    .bind(thread_id)
                    .bind(seq)
                    .bind(fetch)
                    .fetch_all(reader)
                    .await?
                }
                MessagePage::After(seq) => {
                    sqlx::query(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.thread_id = $1 \
                         AND m.seq > $2 ORDER BY m.seq ASC LIMIT $3"
                    ))
                    .bind(thread_id)
                    .bind(seq)
                    .bind(fetch)
                    .fetch_all(reader)
                    .await?
                }
            };
            rows.iter()
                .map(|row| message_at(row, 0))
                .collect::<Result<_, _>>()?
        });
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        if !matches!(page, MessagePage::After(_)) {
            messages.reverse();
        }
        Ok((messages, has_more))
    }

    /// One message, if `user` (or a service, with `None`) may see its
    /// thread.
    pub async fn message(
        &self,
        message_id: Uuid,
        user: Option<&str>,
    ) -> Result<Option<Message>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let row = match user {
                Some(user) => {
                    sqlx::query(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN thread_participants tp \
                         ON tp.thread_id = m.thread_id AND tp.user_id = $2 WHERE m.id = $1"
                    ))
                    .bind(message_id)
                    .bind(user)
                    .fetch_optional(reader)
                    .await?
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = $1"
                    ))
                    .bind(message_id)
                    .fetch_optional(reader)
                    .await?
                }
            };
            Ok(row.map(|row| message_at(&row, 0)).transpose()?)
        })
    }

    /// Sets a thread's own contact policy; `false` when there is no such
    /// thread.
    pub async fn set_contact_policy(
        &self,
        thread_id: Uuid,
        policy: Option<ContactPolicy>,
    ) -> Result<bool, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let updated = sqlx::query("UPDATE threads SET contact_policy = $2 WHERE id = $1")
                .bind(thread_id)
                .bind(policy.map(ContactPolicy::as_str))
                .execute(writer)
                .await?
                .rows_affected();
            Ok(updated == 1)
        })
    }

    /// Moves `user`'s read cursor to `up_to` (clamped to the thread's last
    /// seq; `None`: the last seq), never backwards. Returns the cursor and
    /// the thread's last seq, or `None` when `user` is not in the thread.
    pub async fn mark_read(
        &self,
        thread_id: Uuid,
        user: &str,
        up_to: Option<i64>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let target = up_to.unwrap_or(i64::MAX);
        with_pools!(self, |reader, writer, Db| {
            let row: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE thread_participants SET last_read_seq = CASE \
                 WHEN (CASE WHEN $3 < last_seq THEN $3 ELSE last_seq END) > last_read_seq \
                 THEN (CASE WHEN $3 < last_seq THEN $3 ELSE last_seq END) \
                 ELSE last_read_seq END \
                 WHERE thread_id = $1 AND user_id = $2 RETURNING last_read_seq, last_seq",
            )
            .bind(thread_id)
            .bind(user)
            .bind(target)
            .fetch_optional(writer)
            .await?;
            Ok(row)
        })
    }

    /// `user`'s threads with unread messages and their counts, in one
    /// query. Threads the user archived (and that had no message since) do
    /// not count.
    pub async fn unread_counts(&self, user: &str) -> Result<Vec<(Uuid, i64)>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let rows: Vec<(Uuid, i64)> = sqlx::query_as(
                "SELECT thread_id, last_seq - last_read_seq FROM thread_participants \
                 WHERE user_id = $1 AND last_seq > last_read_seq \
                 AND (archived_seq IS NULL OR last_seq > archived_seq)",
            )
            .bind(user)
            .fetch_all(reader)
            .await?;
            Ok(rows)
        })
    }
}

impl Store {
    /// Integration events after `after_id`, oldest first, optionally only
    /// of some types.
    pub async fn integration_events(
        &self,
        after_id: i64,
        event_types: &[String],
        limit: u32,
    ) -> Result<Vec<IntegrationEventRecord>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let mut query = QueryBuilder::<Db>::new(
                "SELECT id, event_type, thread_id, message_id, actor_id, payload, created_at \
                 FROM integration_events WHERE id > ",
            );
            query.push_bind(after_id);
            if !event_types.is_empty() {
                query.push(" AND event_type IN (");
                let mut types = query.separated(", ");
                for event_type in event_types {
                    types.push_bind(event_type);
                }
                query.push(")");
            }
            query
                .push(" ORDER BY id LIMIT ")
                .push_bind(i64::from(limit));
            let rows = query.build().fetch_all(reader).await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                events.push(IntegrationEventRecord {
                    id: row.try_get(0)?,
                    event_type: row.try_get(1)?,
                    thread_id: row.try_get(2)?,
                    message_id: row.try_get(3)?,
                    actor_id: row.try_get(4)?,
                    payload: row.try_get(5)?,
                    created_at: row.try_get(6)?,
                });
            }
            Ok(events)
        })
    }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// The SQLite file a location names (None for PostgreSQL), to tell
/// operators where their data lives.
pub fn sqlite_file(location: &DatabaseLocation) -> Option<String> {
    match location {
        DatabaseLocation::Sqlite(url) => SqliteConnectOptions::from_str(url)
            .ok()
            .map(|o| Path::new(o.get_filename()).display().to_string()),
        DatabaseLocation::Postgres(_) => None,
    }
}

#[cfg(test)]
mod going_away_tests {
    use super::is_server_going_away;

    #[test]
    fn a_restarting_server_is_unavailable_and_a_bad_statement_is_not() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53300"] {
            assert!(is_server_going_away(code), "{code}");
        }
        for code in ["23505", "42P01", "40001", "22001"] {
            assert!(!is_server_going_away(code), "{code}");
        }
    }
}
