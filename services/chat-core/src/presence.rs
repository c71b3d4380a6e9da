//! Presence and offline reminders: who is connected, told to the people
//! who share a thread with them, and a reminder for those who are away
//! while messages wait for them.
//!
//! Gateways know who holds a socket; chat-core only hears transitions (a
//! user's first socket on a gateway, their last one) and one lease renewal
//! per gateway, so 50,000 sockets coming and going cost a handful of
//! database writes per user transition and none per socket or heartbeat.
//! Going offline waits out the grace period, so a reconnect does not flap;
//! a gateway that stops renewing its lease takes its users with it.
//!
//! Two loops run on every replica: the sweeper (announces users whose
//! grace period passed and drops dead gateways; one replica acts per round)
//! and the reminder scan (writes due reminders to the outbox; each row is
//! taken by one replica).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    bus::{EventBus, stopped},
    chat::ChatError,
    domain::{Caller, now_micros},
    events::{PresenceBatch, PresenceNotice},
    live::LiveEvents,
    store::{PresenceChange, PresenceState, Store},
};

/// The integration event type of an offline reminder.
pub const UNREAD_REMINDER: &str = "chat.unread_reminder";

/// Most users one presence query may name.
pub const MAX_PRESENCE_USERS: usize = 100;

/// Most online entries plus offline entries in one gateway report.
pub const MAX_REPORT_ENTRIES: usize = 5_000;

/// Reminders written per transaction.
const REMINDER_BATCH: u32 = 500;

/// Timing of presence and reminders.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// How long a user may be without a socket before they are announced
    /// offline; also the lease a gateway's report buys.
    pub grace: Duration,
    /// How long a message may wait unread before an offline user is
    /// reminded.
    pub reminder_after: Duration,
    /// How often each replica looks for due reminders.
    pub reminder_scan: Duration,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            grace: Duration::from_secs(10),
            reminder_after: Duration::from_secs(300),
            reminder_scan: Duration::from_secs(5),
        }
    }
}

impl PresenceSettings {
    /// How often the sweeper runs at the least: often enough that a dead
    /// gateway's users are dropped within a quarter of the grace period
    /// after its lease ran out. A grace period that ends sooner wakes it
    /// earlier (see [`PresenceSettings::sweep_gap`]).
    fn sweep_every(&self) -> Duration {
        (self.grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The shortest pause between two sweeps: users whose grace periods
    /// end close together go out in one round, and one ending just after a
    /// round waits this long at most.
    fn sweep_gap(&self) -> Duration {
        (self.grace / 40).clamp(Duration::from_millis(20), Duration::from_millis(250))
    }

    /// When a gateway should report again: a third of its lease, so two
    /// lost reports in a row still leave it live.
    pub fn renew_after(&self) -> Duration {
        (self.grace / 3).max(Duration::from_millis(100))
    }
}

/// A gateway report, checked: users who came online (by their verified
/// tokens) and users whose last socket on the gateway closed; or, with
/// `release`, the gateway's last report before it stops.
#[derive(Debug, Clone, Default)]
pub struct GatewayReport {
    pub gateway_id: String,
    pub online: Vec<String>,
    pub offline: Vec<String>,
    /// The gateway is stopping: everything it reported goes, its users
    /// start their grace period now (`online` and `offline` are ignored).
    pub release: bool,
}

/// Presence and reminders. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence {
    store: Store,
    live: LiveEvents,
    settings: PresenceSettings,
    /// Committed changes, announced in order by one task per replica, so
    /// a report is answered once it is stored, not once thousands of
    /// users' audiences are read.
    announcer: mpsc::UnboundedSender<Vec<PresenceChange>>,
    stats: Arc<PresenceStats>,
}

/// What the announcer did, for `/metrics`.
#[derive(Debug, Default)]
pub struct PresenceStats {
    /// Changes handed to the announcer since start.
    pub queued: AtomicU64,
    /// Changes announced (or found to have nobody to tell) since start.
    pub announced: AtomicU64,
}

/// Changes announced in one round, their users' audiences read together
/// (one query on PostgreSQL).
const ANNOUNCE_BATCH: usize = 5_000;

/// Most (change, listener) pairs in one bus message: a few tens of
/// kilobytes.
const ANNOUNCE_PAIRS: usize = 2_000;

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Whether `id` may name a gateway: long enough not to be guessed.
fn valid_gateway_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Presence {
    /// Presence over `store`, announcing through `live`.
    pub fn new(store: Store, live: LiveEvents, settings: PresenceSettings) -> Self {
        let (announcer, changes) = mpsc::unbounded_channel();
        let stats = Arc::new(PresenceStats::default());
        tokio::spawn(announce(
            store.clone(),
            live.bus().clone(),
            stats.clone(),
            changes,
        ));
        Presence {
            store,
            live,
            settings,
            announcer,
            stats,
        }
    }

    /// The announcer's counts.
    pub fn stats(&self) -> &Arc<PresenceStats> {
        &self.stats
    }

    /// The timing in force.
    pub fn settings(&self) -> PresenceSettings {
        self.settings
    }

    /// Applies a gateway's report and announces who came online. Returns
    /// whether the gateway's lease was live before.
    pub async fn report(&self, report: GatewayReport) -> Result<bool, ChatError> {
        if !valid_gateway_id(&report.gateway_id) {
            return Err(ChatError::InvalidArgument(
                "gateway_id: 16-64 characters of [A-Za-z0-9_-]".into(),
            ));
        }
        if report.release {
            let released = self
                .store
                .release_presence(&report.gateway_id, now_micros())
                .await?;
            tracing::info!(gateway_id = %report.gateway_id, "a stopping gateway released its presence");
            return Ok(released);
        }
        if report.online.len() + report.offline.len() > MAX_REPORT_ENTRIES {
            return Err(ChatError::InvalidArgument(format!(
                "a report carries at most {MAX_REPORT_ENTRIES} entries"
            )));
        }
        for user in &report.offline {
            crate::domain::validate_user_id("offline_user_ids", user)?;
        }
        let now = now_micros();
        let applied = self
            .store
            .report_presence(
                &report.gateway_id,
                now,
                now + micros(self.settings.grace),
                &report.online,
                &report.offline,
            )
            .await?;
        self.announce(applied.changes);
        Ok(applied.lease_was_live)
    }

    /// Hands committed changes to the announcer.
    fn announce(&self, changes: Vec<PresenceChange>) {
        if changes.is_empty() {
            return;
        }
        // Counted before the announcer can count them announced.
        self.stats
            .queued
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        if self.announcer.send(changes).is_err() {
            tracing::warn!("presence announcer stopped; changes not announced");
        }
    }

    /// The presence of `users` as `caller` may see it: a user sees those
    /// who share a thread with them (and themself); the others are left
    /// out. A service sees everyone asked.
    pub async fn query(
        &self,
        caller: &Caller,
        users: Vec<String>,
    ) -> Result<Vec<PresenceState>, ChatError> {
        if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
            return Err(ChatError::InvalidArgument(format!(
                "users: 1-{MAX_PRESENCE_USERS} user ids"
            )));
        }
        for user in &users {
            crate::domain::validate_user_id("users", user)?;
        }
        let mut asked = users;
        let mut seen = std::collections::HashSet::new();
        asked.retain(|u| seen.insert(u.clone()));
        let visible = match caller {
            Caller::Service(_) => asked,
            Caller::User(me) => {
                let shared: std::collections::HashSet<String> = self
                    .store
                    .co_participants_among(me, &asked)
                    .await?
                    .into_iter()
                    .collect();
                asked
                    .into_iter()
                    .filter(|u| u == me || shared.contains(u))
                    .collect()
            }
        };
        Ok(self.store.presence_of(&visible).await?)
    }

    /// Starts the sweeper and the reminder scan on this replica; both stop
    /// at `shutdown`.
    pub fn spawn(&self, shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.clone().sweep(shutdown.clone()));
        tokio::spawn(self.clone().remind(shutdown));
    }

    /// Announces users whose grace period ended and drops dead gateways:
    /// every [`PresenceSettings::sweep_every`], and as soon as the earliest
    /// running grace period ends (no sooner than
    /// [`PresenceSettings::sweep_gap`] after the last round), so users are
    /// announced right after their grace period rather than up to a
    /// quarter of it later.
    async fn sweep(self, mut shutdown: watch::Receiver<bool>) {
        let grace = micros(self.settings.grace);
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                () = tokio::time::sleep_until(next) => {}
            }
            let started = tokio::time::Instant::now();
            let now = now_micros();
            match self.store.sweep_presence(now, now - grace).await {
                Ok(changes) => self.announce(changes),
                Err(err) => tracing::warn!(error = %err, "presence sweep failed; trying again"),
            }
            next = started + self.settings.sweep_every();
            match self.store.earliest_offline_since().await {
                Ok(Some(since)) => {
                    let wait = u64::try_from(since + grace - now_micros()).unwrap_or(0);
                    let due = tokio::time::Instant::now() + Duration::from_micros(wait);
                    let soonest = tokio::time::Instant::now() + self.settings.sweep_gap();
                    next = next.min(due.max(soonest));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "presence: cannot read the next due sweep")
                }
            }
        }
    }

    async fn remind(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.reminder_scan);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                _ = tick.tick() => {}
            }
            loop {
                let now = now_micros();
                match self
                    .store
                    .write_due_reminders(
                        now,
                        now - micros(self.settings.reminder_after),
                        REMINDER_BATCH,
                    )
                    .await
                {
                    Ok(records) => {
                        let full = records.len() == REMINDER_BATCH as usize;
                        if !records.is_empty() {
                            tracing::info!(count = records.len(), "unread reminders written");
                        }
                        for record in records {
                            self.live.publish_integration(record);
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "reminder scan failed; trying again");
                        break;
                    }
                }
            }
        }
    }
}

/// Tells everyone who shares a thread with each changed user, however
/// many threads they share: the audiences of up to [`ANNOUNCE_BATCH`]
/// users are read together, and the changes go out in bus messages of
/// up to [`ANNOUNCE_PAIRS`] (change, listener) pairs each, never one per
/// listener. Changes queued while a round runs go out together in the
/// next.
async fn announce(
    store: Store,
    bus: EventBus,
    stats: Arc<PresenceStats>,
    mut changes: mpsc::UnboundedReceiver<Vec<PresenceChange>>,
) {
    let mut round: Vec<PresenceChange> = Vec::new();
    while let Some(first) = changes.recv().await {
        round.extend(first);
        while round.len() < ANNOUNCE_BATCH {
            match changes.try_recv() {
                Ok(more) => round.extend(more),
                Err(_) => break,
            }
        }
        for chunk in round.chunks(ANNOUNCE_BATCH) {
            announce_chunk(&store, &bus, chunk).await;
            stats
                .announced
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        round.clear();
    }
}

/// Announces up to [`ANNOUNCE_BATCH`] changes: their audiences read
/// together, then as few bus messages as [`ANNOUNCE_PAIRS`] allows.
async fn announce_chunk(store: &Store, bus: &EventBus, chunk: &[PresenceChange]) {
    let mut users: Vec<String> = chunk.iter().map(|c| c.user_id.clone()).collect();
    users.sort_unstable();
    users.dedup();
    let audiences = match store.co_participants_of(&users).await {
        Ok(audiences) => audiences,
        Err(err) => {
            tracing::warn!(error = %err, users = users.len(), "presence: cannot read co-participants; changes not announced");
            return;
        }
    };
    let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
    for (user, listener) in audiences {
        by_user.entry(user).or_default().push(listener);
    }
    let mut batch = PresenceBatch::default();
    let mut pairs = 0;
    for change in chunk {
        let Some(audience) = by_user.get(&change.user_id) else {
            continue;
        };
        // A very large audience is split over several messages.
        for part in audience.chunks(ANNOUNCE_PAIRS) {
            if pairs + part.len() > ANNOUNCE_PAIRS {
                bus.announce_presence(std::mem::take(&mut batch)).await;
                pairs = 0;
            }
            pairs += part.len();
            batch.notices.push(PresenceNotice {
                user_id: change.user_id.clone(),
                online: change.online,
                last_seen_at: change.last_seen_at,
                audience: part.to_vec(),
            });
        }
    }
    if !batch.notices.is_empty() {
        bus.announce_presence(batch).await;
    }
}
