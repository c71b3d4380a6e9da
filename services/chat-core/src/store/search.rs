//! Full-text search over messages: PostgreSQL's `tsvector` index or
//! SQLite's FTS5 table, both holding the words `crate::search` made, so a
//! query matches the same messages on either.

use uuid::Uuid;

use super::{MESSAGE_COLUMNS, Store, StoreError, message_at};
use crate::domain::{Message, UnixMicros};
use crate::search::SearchTerms;

/// How many of the newest messages a search across threads reads, in
/// turn, before it turns to the text index (see
/// [`Store::search_messages`]): enough for words in one message in a
/// thousand of the caller's.
const RECENT_WINDOWS: [i64; 2] = [2_000, 20_000];

/// Matches of a user's search, as the planner estimates them from the
/// index's word statistics, below which the text index answers at once:
/// reading that many of the caller's rows costs less than walking the
/// newest messages.
const FEW_MATCHES: f64 = 5_000.0;

/// The most words a query's last word, a prefix, is asked of PostgreSQL's
/// index as (see `super::vocabulary`). A shorter prefix that starts more
/// words stays a prefix: listing them all would cost more than it saves.
const MAX_PREFIX_WORDS: i64 = 64;

/// Whose messages a search looks through.
#[derive(Debug, Clone, Copy)]
pub enum SearchScope<'a> {
    /// A user: their threads only, deleted messages never.
    User(&'a str),
    /// A service: every thread.
    Service,
}

/// A position in search results (newest first): results strictly older.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchCursor {
    pub created_at: UnixMicros,
    pub message_id: Uuid,
}

impl Store {
    /// Up to `limit` messages matching `terms`, newest first, after
    /// `cursor`, in `thread` or across the scope's threads. The caller has
    /// checked that a given thread is in the scope.
    pub async fn search_messages(
        &self,
        scope: SearchScope<'_>,
        terms: &SearchTerms,
        thread: Option<Uuid>,
        cursor: Option<SearchCursor>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let (user, include_deleted) = match scope {
            SearchScope::User(user) => (Some(user), false),
            SearchScope::Service => (None, true),
        };
        let (before_at, before_id) =
            cursor.map_or((i64::MAX, Uuid::max()), |c| (c.created_at, c.message_id));
        // The cursor is a row comparison, which an index on (created_at,
        // id) answers as a range. Only the filters that apply are written
        // into the statement, so the planner sees each query shape as it is
        // (a cached generic plan for `$n IS NULL OR …` could not use the
        // thread or user filter).
        let mut filters = String::new();
        let mut next = 2;
        let mut param = || {
            next += 1;
            format!("${}", next - 1)
        };
        if user.is_some() {
            filters.push_str(&format!(
                " AND m.thread_id IN (SELECT tp.thread_id FROM thread_participants tp \
                 WHERE tp.user_id = {})",
                param()
            ));
        }
        if thread.is_some() {
            filters.push_str(&format!(" AND m.thread_id = {}", param()));
        }
        if !include_deleted {
            filters.push_str(" AND m.deleted_at IS NULL");
        }
        let (at, id, limit_param) = (param(), param(), param());
        // The caller's member mark, asked of the text index alongside the
        // words (see `crate::search::member_mark`).
        let mark = user.map(|user| (param(), format!("'{}'", crate::search::member_mark(user))));
        let cursor_cond = format!("(m.created_at, m.id) < ({at}, {id})");
        let order = format!("ORDER BY m.created_at DESC, m.id DESC LIMIT {limit_param}");
        macro_rules! run {
            ($sql:expr, $query_text:expr, $pool:expr) => {
                run!($sql, $query_text, $pool, None::<&str>)
            };
            ($sql:expr, $query_text:expr, $pool:expr, $mark:expr) => {{
                // Unnamed, so planned for these words every time: a cached
                // generic plan cannot tell a rare word from a common one.
                let mut query = sqlx::query($sql).persistent(false).bind($query_text);
                if let Some(user) = user {
                    query = query.bind(user);
                }
                if let Some(thread) = thread {
                    query = query.bind(thread);
                }
                query = query.bind(before_at).bind(before_id).bind(i64::from(limit));
                if let Some(mark) = $mark {
                    query = query.bind(mark);
                }
                query
                    .fetch_all($pool)
                    .await?
                    .iter()
                    .map(|row| message_at(row, 0))
                    .collect::<Result<Vec<_>, _>>()?
            }};
        }
        // On PostgreSQL, the prefix becomes the words it starts, looked up
        // in the search vocabulary; none means nothing can match.
        let query_text = match self {
            Store::Postgres(backend) => match prefix_as_words(&backend.pool, terms).await? {
                Some(tsquery) => tsquery,
                None => return Ok(Vec::new()),
            },
            Store::Sqlite(_) => terms.fts5(),
        };
        let rows = match self {
            Store::Postgres(backend) if thread.is_none() => {
                // Across many threads, no one plan suits every word: a
                // common word is best found walking back in time until a
                // page is full, a rare one through the text index. So the
                // newest messages are tried first; when they hold a full
                // page, it is the answer (every message outside them is
                // older). Otherwise the text index (or, for a user with
                // few threads, their threads' messages: the planner
                // chooses) finds the rest; `+ 0` keeps it off the time
                // index, whose walk would visit every message for a rare
                // word.
                let mut found = Vec::new();
                // Estimated for the prefix, not the words it stands for:
                // the planner adds up a guess for each rare word it does not
                // know (eleven rare words starting `4821` came to 44,000
                // messages, against 4,000 for the prefix, which the
                // statistics' common words tell about).
                let few = match &mark {
                    Some((_, mark)) => {
                        estimated_matches(&backend.pool, &terms.tsquery(), mark).await?
                            <= FEW_MATCHES
                    }
                    None => false,
                };
                let windows: &[i64] = if few { &[] } else { &RECENT_WINDOWS };
                for &window in windows {
                    let recent = format!(
                        "SELECT {MESSAGE_COLUMNS} FROM (SELECT * FROM messages m \
                         WHERE {cursor_cond} ORDER BY m.created_at DESC, m.id DESC \
                         LIMIT {window}) m \
                         WHERE m.search @@ to_tsquery('simple', $1){filters} {order}"
                    );
                    found = run!(&recent, query_text.as_str(), &backend.pool);
                    if found.len() >= limit as usize {
                        break;
                    }
                }
                if found.len() >= limit as usize {
                    found
                } else {
                    let words = match &mark {
                        Some((param, _)) => {
                            format!("(to_tsquery('simple', $1) && {param}::tsquery)")
                        }
                        None => "to_tsquery('simple', $1)".to_owned(),
                    };
                    let indexed = format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m \
                         WHERE m.search @@ {words}{filters} AND {cursor_cond} \
                         ORDER BY m.created_at + 0 DESC, m.id DESC LIMIT {limit_param}"
                    );
                    run!(
                        &indexed,
                        query_text.as_str(),
                        &backend.pool,
                        mark.as_ref().map(|(_, mark)| mark.as_str())
                    )
                }
            }
            Store::Postgres(backend) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m \
                     WHERE m.search @@ to_tsquery('simple', $1){filters} AND {cursor_cond} {order}"
                );
                run!(&sql, query_text.as_str(), &backend.pool)
            }
            Store::Sqlite(backend) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM message_search s \
                     JOIN messages m ON m.rowid = s.rowid \
                     WHERE message_search MATCH $1{filters} AND {cursor_cond} {order}"
                );
                run!(&sql, query_text.as_str(), &backend.reader)
            }
        };
        Ok(rows)
    }
}

/// `terms` as a PostgreSQL `tsquery`, the last word asked as the indexed
/// words it starts when there are at most [`MAX_PREFIX_WORDS`] of them;
/// `None` when no indexed word starts with it.
async fn prefix_as_words(
    pool: &sqlx::PgPool,
    terms: &SearchTerms,
) -> Result<Option<String>, StoreError> {
    let Some(prefix) = terms.prefix() else {
        return Ok(Some(terms.tsquery()));
    };
    // `search_words` is in byte order, where the words starting with the
    // prefix lie between it and it followed by the highest code point.
    let words: Vec<String> = sqlx::query_scalar(
        "SELECT word FROM search_words WHERE word >= $1 AND word < $1 || chr(1114111) \
         ORDER BY word LIMIT $2",
    )
    .bind(prefix)
    .bind(MAX_PREFIX_WORDS + 1)
    .fetch_all(pool)
    .await?;
    if words.len() > MAX_PREFIX_WORDS as usize {
        return Ok(Some(terms.tsquery()));
    }
    Ok(terms.tsquery_with_last_as(&words))
}

/// How many messages the planner expects to match `tsquery` and `mark`
/// together: from the word frequencies ANALYZE keeps for the `search`
/// column (common words and marks are there; a word that is not is rare).
/// Planned as a one-off statement, so the estimate is for these words,
/// not a generic plan's guess.
async fn estimated_matches(
    pool: &sqlx::PgPool,
    tsquery: &str,
    mark: &str,
) -> Result<f64, StoreError> {
    // The plan's first line: "<node>  (cost=a..b rows=N width=w)".
    let top: String = sqlx::query_scalar(
        "EXPLAIN SELECT 1 FROM messages m \
         WHERE m.search @@ (to_tsquery('simple', $1) && $2::tsquery)",
    )
    .bind(tsquery)
    .bind(mark)
    .persistent(false)
    .fetch_one(pool)
    .await?;
    Ok(top
        .split_once(" rows=")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(f64::MAX))
}
