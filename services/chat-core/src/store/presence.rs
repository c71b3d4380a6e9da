//! Presence and offline reminders in the database, so that every replica
//! sees the same state and a restart loses nothing.
//!
//! Gateways report transitions (a user's first socket on the gateway
//! opened, their last one closed) and renew one lease each; a user is
//! connected while a `presence` row of theirs belongs to a gateway whose
//! lease is live. `user_presence` holds what co-participants were last
//! told, and when the grace period before an offline announcement began.
//!
//! Every transition locks the user's `user_presence` row first (an upsert
//! that changes nothing), so the transitions of one user, from any number
//! of gateways and replicas, and the sweeper's decisions about them happen
//! one at a time.

use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::UnixMicros;

/// A presence change to announce to the user's co-participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub user_id: String,
    pub online: bool,
    pub last_seen_at: Option<UnixMicros>,
}

/// What a gateway's report did.
#[derive(Debug, Clone, Default)]
pub struct PresenceReport {
    /// Whether the gateway's lease was live before this report.
    pub lease_was_live: bool,
    /// Users who came online (were offline as far as anyone was told).
    pub changes: Vec<PresenceChange>,
}

/// One user's presence as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceState {
    pub user_id: String,
    pub online: bool,
    pub last_seen_at: Option<UnixMicros>,
}

/// An unread reminder written to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Reminder {
    pub record: super::IntegrationEventRecord,
}

/// The (thread, user) rows due for a reminder at `$1`: unread, not
/// reminded since the user last read, the first unread message at least
/// as old as `$1`, and the user offline as announced. The first unread
/// message is the one after the read cursor: sending moves the sender's
/// own cursor, so everything after it came from someone else.
const CANDIDATES: &str = "SELECT tp.thread_id, tp.user_id, tp.last_read_seq, tp.last_seq, m.id \
     FROM thread_participants tp \
     JOIN messages m ON m.thread_id = tp.thread_id AND m.seq = tp.last_read_seq + 1 \
     WHERE tp.last_seq > tp.last_read_seq \
     AND (tp.reminded_read_seq IS NULL OR tp.last_read_seq > tp.reminded_read_seq) \
     AND m.created_at <= $1 \
     AND NOT EXISTS (SELECT 1 FROM user_presence up \
       WHERE up.user_id = tp.user_id AND up.online)";

/// The PostgreSQL advisory lock key that lets one replica sweep at a time.
const SWEEP_LOCK: i64 = 0x0070_7265_7365_6e63;

/// Users per statement when a set of users is named in an `IN` list.
const USERS_PER_STATEMENT: usize = 500;

/// Starts the grace period (`offline_since = $since`) of those of `users`
/// (`&[String]`) who are online with no socket left on a gateway whose
/// lease outlives `now`; the others stay online, with no grace period
/// running. A macro because the statement is built for the backend at
/// hand inside `with_pools!`.
macro_rules! start_grace {
    ($db:ty, $tx:expr, $users:expr, $since:expr, $now:expr) => {
        for chunk in $users.chunks(USERS_PER_STATEMENT) {
            let mut query = QueryBuilder::<$db>::new("UPDATE user_presence SET offline_since = ");
            query.push_bind($since).push(
                " WHERE online AND offline_since IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM presence p \
                   JOIN gateway_leases g ON g.gateway_id = p.gateway_id \
                   WHERE p.user_id = user_presence.user_id AND g.expires_at > ",
            );
            query.push_bind($now).push(") AND user_id IN (");
            let mut ids = query.separated(", ");
            for user in chunk {
                ids.push_bind(user.as_str());
            }
            query.push(")");
            query.build().execute($tx).await?;
        }
    };
}

impl Store {
    /// Applies a gateway's report in one transaction: renews its lease
    /// until `lease_until`, records `online` users (their first socket on
    /// the gateway opened) and `offline` users (their last one closed).
    /// Users who were announced offline and now have a socket come back as
    /// changes; users left with no live socket anywhere start their grace
    /// period at `now` (the sweeper announces them).
    pub async fn report_presence(
        &self,
        gateway_id: &str,
        now: UnixMicros,
        lease_until: UnixMicros,
        online: &[String],
        offline: &[String],
    ) -> Result<PresenceReport, StoreError> {
        // One order for every transaction, so two reports never wait on
        // each other's users in a cycle.
        let mut users: Vec<(&str, bool)> = online
            .iter()
            .map(|u| (u.as_str(), true))
            .chain(offline.iter().map(|u| (u.as_str(), false)))
            .collect();
        users.sort_unstable();
        users.dedup_by(|a, b| a.0 == b.0);
        if let Store::Postgres(backend) = self {
            return report_presence_pg(&backend.pool, gateway_id, now, lease_until, &users).await;
        }
        with_pools!(self, |reader, writer, Db| {
            let mut tx = writer.begin().await?;
            let previous: Option<i64> =
                sqlx::query_scalar("SELECT expires_at FROM gateway_leases WHERE gateway_id = $1")
                    .bind(gateway_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            sqlx::query(
                "INSERT INTO gateway_leases (gateway_id, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (gateway_id) DO UPDATE SET expires_at = excluded.expires_at",
            )
            .bind(gateway_id)
            .bind(lease_until)
            .execute(&mut *tx)
            .await?;
            let mut report = PresenceReport {
                lease_was_live: previous.is_some_and(|at| at > now),
                changes: Vec::new(),
            };
            for (user, connected) in users {
                let row = sqlx::query(
                    "INSERT INTO user_presence (user_id, online) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id \
                     RETURNING online, last_seen_at, offline_since",
                )
                .bind(user)
                .bind(false)
                .fetch_one(&mut *tx)
                .await?;
                let was_online: bool = row.try_get(0)?;
                let last_seen_at: Option<i64> = row.try_get(1)?;
                let offline_since: Option<i64> = row.try_get(2)?;
                if connected {
                    sqlx::query(
                        "INSERT INTO presence (user_id, gateway_id) VALUES ($1, $2) \
                         ON CONFLICT (user_id, gateway_id) DO NOTHING",
                    )
                    .bind(user)
                    .bind(gateway_id)
                    .execute(&mut *tx)
                    .await?;
                    if !was_online || offline_since.is_some() {
                        sqlx::query(
                            "UPDATE user_presence SET online = $2, offline_since = NULL \
                             WHERE user_id = $1",
                        )
                        .bind(user)
                        .bind(true)
                        .execute(&mut *tx)
                        .await?;
                    }
                    if !was_online {
                        report.changes.push(PresenceChange {
                            user_id: user.to_owned(),
                            online: true,
                            last_seen_at,
                        });
                    }
                } else {
                    sqlx::query("DELETE FROM presence WHERE user_id = $1 AND gateway_id = $2")
                        .bind(user)
                        .bind(gateway_id)
                        .execute(&mut *tx)
                        .await?;
                    let live: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM presence p \
                         JOIN gateway_leases g ON g.gateway_id = p.gateway_id \
                         WHERE p.user_id = $1 AND g.expires_at > $2",
                    )
                    .bind(user)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    if live == 0 && was_online && offline_since.is_none() {
                        sqlx::query(
                            "UPDATE user_presence SET offline_since = $2 WHERE user_id = $1",
                        )
                        .bind(user)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(report)
        })
    }

    /// A gateway's last report before it stops: drops its lease and every
    /// user it reported; users left with no live socket anywhere start
    /// their grace period at `now`, as if their last socket had just
    /// closed (the sweeper announces them). Returns whether the lease was
    /// live. On PostgreSQL it takes the sweeper's lock, so the two never
    /// drop the same rows at once, and locks the users' `user_presence`
    /// rows in order before looking for their other sockets, like a
    /// report.
    pub async fn release_presence(
        &self,
        gateway_id: &str,
        now: UnixMicros,
    ) -> Result<bool, StoreError> {
        let postgres = matches!(self, Store::Postgres(_));
        with_pools!(self, |reader, writer, Db| {
            let mut tx = writer.begin().await?;
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SWEEP_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            let previous: Option<i64> = sqlx::query_scalar(
                "DELETE FROM gateway_leases WHERE gateway_id = $1 RETURNING expires_at",
            )
            .bind(gateway_id)
            .fetch_optional(&mut *tx)
            .await?;
            let mut users: Vec<String> =
                sqlx::query_scalar("SELECT user_id FROM presence WHERE gateway_id = $1")
                    .bind(gateway_id)
                    .fetch_all(&mut *tx)
                    .await?;
            users.sort_unstable();
            if postgres {
                for chunk in users.chunks(USERS_PER_STATEMENT) {
                    let mut query = QueryBuilder::<Db>::new(
                        "SELECT user_id FROM user_presence WHERE user_id IN (",
                    );
                    let mut ids = query.separated(", ");
                    for user in chunk {
                        ids.push_bind(user.as_str());
                    }
                    query.push(") ORDER BY user_id FOR UPDATE");
                    query.build().execute(&mut *tx).await?;
                }
            }
            sqlx::query("DELETE FROM presence WHERE gateway_id = $1")
                .bind(gateway_id)
                .execute(&mut *tx)
                .await?;
            start_grace!(Db, &mut *tx, &users, now, now);
            tx.commit().await?;
            Ok(previous.is_some_and(|at| at > now))
        })
    }

    /// Drops the rows of gateways whose lease ran out by `now` (their users
    /// are due at once: the lease already outlived the grace period), then
    /// turns offline every user whose grace period began at or before
    /// `grace_cutoff` with no live socket since. Returns the changes to
    /// announce. On PostgreSQL only one replica sweeps at a time (an
    /// advisory lock held by the transaction); the others return nothing.
    pub async fn sweep_presence(
        &self,
        now: UnixMicros,
        grace_cutoff: UnixMicros,
    ) -> Result<Vec<PresenceChange>, StoreError> {
        let postgres = matches!(self, Store::Postgres(_));
        with_pools!(self, |reader, writer, Db| {
            let mut tx = writer.begin().await?;
            if postgres {
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(SWEEP_LOCK)
                    .fetch_one(&mut *tx)
                    .await?;
                if !locked {
                    return Ok(Vec::new());
                }
            }
            let expired: Vec<String> = sqlx::query_scalar(
                "DELETE FROM gateway_leases WHERE expires_at <= $1 RETURNING gateway_id",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let mut orphaned: Vec<String> = Vec::new();
            for gateway in &expired {
                let users: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM presence WHERE gateway_id = $1 RETURNING user_id",
                )
                .bind(gateway)
                .fetch_all(&mut *tx)
                .await?;
                orphaned.extend(users);
            }
            orphaned.sort_unstable();
            orphaned.dedup();
            // Due at once: their grace period counts from the cutoff.
            start_grace!(Db, &mut *tx, &orphaned, grace_cutoff, now);
            // A grace period that ran out while the user holds a socket on
            // a live gateway (a report that raced the step above, say)
            // ends without an announcement: they are online.
            sqlx::query(
                "UPDATE user_presence SET offline_since = NULL \
                 WHERE offline_since IS NOT NULL AND offline_since <= $2 \
                 AND EXISTS (SELECT 1 FROM presence p \
                   JOIN gateway_leases g ON g.gateway_id = p.gateway_id \
                   WHERE p.user_id = user_presence.user_id AND g.expires_at > $1)",
            )
            .bind(now)
            .bind(grace_cutoff)
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(
                "UPDATE user_presence SET online = $3, last_seen_at = offline_since, \
                 offline_since = NULL \
                 WHERE online AND offline_since IS NOT NULL AND offline_since <= $2 \
                 AND NOT EXISTS (SELECT 1 FROM presence p \
                   JOIN gateway_leases g ON g.gateway_id = p.gateway_id \
                   WHERE p.user_id = user_presence.user_id AND g.expires_at > $1) \
                 RETURNING user_id, last_seen_at",
            )
            .bind(now)
            .bind(grace_cutoff)
            .bind(false)
            .fetch_all(&mut *tx)
            .await?;
            let mut changes = Vec::with_capacity(rows.len());
            for row in &rows {
                changes.push(PresenceChange {
                    user_id: row.try_get(0)?,
                    online: false,
                    last_seen_at: row.try_get(1)?,
                });
            }
            tx.commit().await?;
            Ok(changes)
        })
    }

    /// When the earliest running grace period began, if any runs: the
    /// sweeper's next round is due once it has lasted the grace period.
    pub async fn earliest_offline_since(&self) -> Result<Option<UnixMicros>, StoreError> {
        with_pools!(self, |reader, writer, Db| {
            let earliest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(offline_since) FROM user_presence WHERE offline_since IS NOT NULL",
            )
            .fetch_one(reader)
            .await?;
            Ok(earliest)
        })
    }

    /// The announced presence of `users` (absent users: never seen).
    pub async fn presence_of(&self, users: &[String]) -> Result<Vec<PresenceState>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        with_pools!(self, |reader, writer, Db| {
            let mut query = QueryBuilder::<Db>::new(
                "SELECT user_id, online, last_seen_at FROM user_presence WHERE user_id IN (",
            );
            let mut ids = query.separated(", ");
            for user in users {
                ids.push_bind(user.as_str());
            }
            query.push(")");
            let rows = query.build().fetch_all(reader).await?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let user: String = row.try_get(0)?;
                found.insert(user, (row.try_get::<bool, _>(1)?, row.try_get(2)?));
            }
            Ok(users
                .iter()
                .map(|user| {
                    let (online, last_seen_at) = found.get(user).copied().unwrap_or((false, None));
                    PresenceState {
                        user_id: user.clone(),
                        online,
                        last_seen_at,
                    }
                })
                .collect())
        })
    }

    /// Which of `users` share a thread with `caller` (the caller counts).
    pub async fn co_participants_among(
        &self,
        caller: &str,
        users: &[String],
    ) -> Result<Vec<String>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        with_pools!(self, |reader, writer, Db| {
            let mut query = QueryBuilder::<Db>::new(
                "SELECT DISTINCT p.user_id FROM thread_participants p \
                 WHERE EXISTS (SELECT 1 FROM thread_participants q \
                   WHERE q.thread_id = p.thread_id AND q.user_id = ",
            );
            query.push_bind(caller).push(") AND p.user_id IN (");
            let mut ids = query.separated(", ");
            for user in users {
                ids.push_bind(user.as_str());
            }
            query.push(")");
            let rows: Vec<String> = query.build_query_scalar().fetch_all(reader).await?;
            Ok(rows)
        })
    }

    /// For each of `users`, everyone who shares a thread with them, each
    /// once, themselves left out: who hears about their presence. Pairs
    /// (user, co-participant), however many threads they share: on
    /// PostgreSQL one query for any number of users (joined as an array,
    /// so the plan is a hash join or index probes, never a filter that
    /// compares every row with every user), on SQLite one per
    /// [`USERS_PER_STATEMENT`] users.
    pub async fn co_participants_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        if let Store::Postgres(backend) = self {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT DISTINCT p.user_id, q.user_id \
                 FROM UNNEST($1::text[]) AS u(user_id) \
                 JOIN thread_participants p ON p.user_id = u.user_id \
                 JOIN thread_participants q ON q.thread_id = p.thread_id \
                 WHERE q.user_id <> p.user_id",
            )
            .bind(users)
            .fetch_all(&backend.pool)
            .await?;
            return Ok(rows);
        }
        with_pools!(self, |reader, writer, Db| {
            let mut pairs = Vec::new();
            for chunk in users.chunks(USERS_PER_STATEMENT) {
                let mut query = QueryBuilder::<Db>::new(
                    "SELECT DISTINCT p.user_id, q.user_id FROM thread_participants p \
                     JOIN thread_participants q ON q.thread_id = p.thread_id \
                     WHERE q.user_id <> p.user_id AND p.user_id IN (",
                );
                let mut ids = query.separated(", ");
                for user in chunk {
                    ids.push_bind(user.as_str());
                }
                query.push(")");
                let rows: Vec<(String, String)> = query.build_query_as().fetch_all(reader).await?;
                pairs.extend(rows);
            }
            Ok(pairs)
        })
    }

    /// Writes the unread reminders due at `now`: for each (thread, user)
    /// whose first unread message is at least as old as `due_before`, who
    /// is offline (as announced) and was not reminded since they last
    /// read, one `chat.unread_reminder` integration event, in the same
    /// transaction that records the reminder, at most `limit` at a time.
    /// On PostgreSQL the candidate rows are locked with `SKIP LOCKED`, so
    /// replicas scanning at once each take different rows, and a row is
    /// checked again under its lock, so none is reminded twice.
    pub async fn write_due_reminders(
        &self,
        now: UnixMicros,
        due_before: UnixMicros,
        limit: u32,
    ) -> Result<Vec<super::IntegrationEventRecord>, StoreError> {
        let postgres = matches!(self, Store::Postgres(_));
        let lock = if postgres {
            " FOR UPDATE OF tp SKIP LOCKED"
        } else {
            ""
        };
        let select = format!("{{CANDIDATES}} LIMIT $2{lock}");
        let probe = format!("{CANDIDATES} LIMIT 1");
        let select = select.replace("{CANDIDATES}", CANDIDATES);
        with_pools!(self, |reader, writer, Db| {
            // A look without locks first: most scans find nothing, and
            // must then not hold up the outbox.
            let probe: Option<Uuid> = sqlx::query_scalar(&probe)
                .bind(due_before)
                .fetch_optional(reader)
                .await?;
            if probe.is_none() {
                return Ok(Vec::new());
            }
            let mut tx = writer.begin().await?;
            if postgres {
                // The outbox counter before any candidate row: a sender
                // takes its participant rows and then the counter, and the
                // scan never waits for a participant row (SKIP LOCKED), so
                // the two can never wait on each other in a cycle.
                sqlx::query(
                    "SELECT last_id FROM integration_event_counter WHERE id = 1 FOR UPDATE",
                )
                .execute(&mut *tx)
                .await?;
            }
            let rows = sqlx::query(&select)
                .bind(due_before)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            let last_id: i64 = sqlx::query_scalar(
                "UPDATE integration_event_counter SET last_id = last_id + $1 \
                 WHERE id = 1 RETURNING last_id",
            )
            .bind(rows.len() as i64)
            .fetch_one(&mut *tx)
            .await?;
            let first_id = last_id - rows.len() as i64 + 1;
            let mut records = Vec::with_capacity(rows.len());
            for (n, row) in rows.iter().enumerate() {
                let thread_id: Uuid = row.try_get(0)?;
                let user_id: String = row.try_get(1)?;
                let last_read_seq: i64 = row.try_get(2)?;
                let last_seq: i64 = row.try_get(3)?;
                let message_id: Uuid = row.try_get(4)?;
                sqlx::query(
                    "UPDATE thread_participants SET reminded_read_seq = $3 \
                     WHERE thread_id = $1 AND user_id = $2",
                )
                .bind(thread_id)
                .bind(&user_id)
                .bind(last_read_seq)
                .execute(&mut *tx)
                .await?;
                let payload = serde_json::json!({
                    "user_id": user_id,
                    "thread_id": thread_id.to_string(),
                    "unread_count": last_seq - last_read_seq,
                    "first_unread_seq": last_read_seq + 1,
                })
                .to_string();
                let record = super::IntegrationEventRecord {
                    id: first_id + n as i64,
                    event_type: crate::presence::UNREAD_REMINDER.to_owned(),
                    thread_id,
                    message_id: Some(message_id),
                    actor_id: None,
                    payload,
                    created_at: now,
                };
                sqlx::query(
                    "INSERT INTO integration_events (id, event_type, thread_id, message_id, \
                     actor_id, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(record.id)
                .bind(&record.event_type)
                .bind(record.thread_id)
                .bind(record.message_id)
                .bind(record.actor_id.as_deref())
                .bind(&record.payload)
                .bind(record.created_at)
                .execute(&mut *tx)
                .await?;
                records.push(record);
            }
            tx.commit().await?;
            Ok(records)
        })
    }
}

/// [`Store::report_presence`] on PostgreSQL: the same steps, each one
/// statement over all the report's users (arrays), so a report of
/// thousands of transitions costs a handful of round trips. `users` is
/// sorted, so concurrent reports lock `user_presence` rows in one order.
async fn report_presence_pg(
    pool: &sqlx::PgPool,
    gateway_id: &str,
    now: UnixMicros,
    lease_until: UnixMicros,
    users: &[(&str, bool)],
) -> Result<PresenceReport, StoreError> {
    let all: Vec<&str> = users.iter().map(|(u, _)| *u).collect();
    let online: Vec<&str> = users.iter().filter(|(_, c)| *c).map(|(u, _)| *u).collect();
    let offline: Vec<&str> = users.iter().filter(|(_, c)| !*c).map(|(u, _)| *u).collect();
    let mut tx = pool.begin().await?;
    let previous: Option<i64> =
        sqlx::query_scalar("SELECT expires_at FROM gateway_leases WHERE gateway_id = $1")
            .bind(gateway_id)
            .fetch_optional(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO gateway_leases (gateway_id, expires_at) VALUES ($1, $2) \
         ON CONFLICT (gateway_id) DO UPDATE SET expires_at = excluded.expires_at",
    )
    .bind(gateway_id)
    .bind(lease_until)
    .execute(&mut *tx)
    .await?;
    let mut report = PresenceReport {
        lease_was_live: previous.is_some_and(|at| at > now),
        changes: Vec::new(),
    };
    if all.is_empty() {
        tx.commit().await?;
        return Ok(report);
    }
    // Lock every user's row first, in order, and see what was announced.
    let rows = sqlx::query(
        "INSERT INTO user_presence (user_id, online) \
         SELECT u, FALSE FROM UNNEST($1::text[]) AS u ORDER BY u \
         ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id \
         RETURNING user_id, online, last_seen_at",
    )
    .bind(&all)
    .fetch_all(&mut *tx)
    .await?;
    let mut was_online = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let user: String = row.try_get(0)?;
        was_online.insert(
            user,
            (
                row.try_get::<bool, _>(1)?,
                row.try_get::<Option<i64>, _>(2)?,
            ),
        );
    }
    if !online.is_empty() {
        sqlx::query(
            "INSERT INTO presence (user_id, gateway_id) SELECT u, $2 FROM UNNEST($1::text[]) AS u \
             ON CONFLICT (user_id, gateway_id) DO NOTHING",
        )
        .bind(&online)
        .bind(gateway_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE user_presence SET online = TRUE, offline_since = NULL \
             WHERE user_id = ANY($1) AND (NOT online OR offline_since IS NOT NULL)",
        )
        .bind(&online)
        .execute(&mut *tx)
        .await?;
        for user in &online {
            if let Some((false, last_seen_at)) = was_online.get(*user) {
                report.changes.push(PresenceChange {
                    user_id: (*user).to_owned(),
                    online: true,
                    last_seen_at: *last_seen_at,
                });
            }
        }
    }
    if !offline.is_empty() {
        sqlx::query("DELETE FROM presence WHERE gateway_id = $2 AND user_id = ANY($1)")
            .bind(&offline)
            .bind(gateway_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE user_presence SET offline_since = $2 \
             WHERE user_id = ANY($1) AND online AND offline_since IS NULL \
             AND NOT EXISTS (SELECT 1 FROM presence p \
               JOIN gateway_leases g ON g.gateway_id = p.gateway_id \
               WHERE p.user_id = user_presence.user_id AND g.expires_at > $2)",
        )
        .bind(&offline)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(report)
}
