//! Full-text search over messages: PostgreSQL's `tsvector` index or
//! SQLite's FTS5 table, both holding the words `crate::search` made, so a
//! query matches the same messages on either.

use uuid::Uuid;

use super::{MESSAGE_COLUMNS, Store, StoreError, message_at};
use crate::domain::{Message, UnixMicros};
use crate::search::SearchTerms;

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
        let (at, id) = (param(), param());
        filters.push_str(&format!(
            " AND (m.created_at, m.id) < ({at}, {id}) \
             ORDER BY m.created_at DESC, m.id DESC LIMIT {}",
            param()
        ));
        macro_rules! run {
            ($sql:expr, $query_text:expr, $pool:expr) => {{
                let mut query = sqlx::query($sql).bind($query_text);
                if let Some(user) = user {
                    query = query.bind(user);
                }
                if let Some(thread) = thread {
                    query = query.bind(thread);
                }
                query
                    .bind(before_at)
                    .bind(before_id)
                    .bind(i64::from(limit))
                    .fetch_all($pool)
                    .await?
                    .iter()
                    .map(|row| message_at(row, 0))
                    .collect::<Result<Vec<_>, _>>()?
            }};
        }
        let rows = match self {
            Store::Postgres(backend) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m \
                     WHERE m.search @@ to_tsquery('simple', $1){filters}"
                );
                run!(&sql, terms.tsquery(), &backend.pool)
            }
            Store::Sqlite(backend) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM message_search s \
                     JOIN messages m ON m.rowid = s.rowid \
                     WHERE message_search MATCH $1{filters}"
                );
                run!(&sql, terms.fts5(), &backend.reader)
            }
        };
        Ok(rows)
    }
}
