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

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::{
    bus::stopped,
    chat::ChatError,
    domain::{Caller, now_micros},
    events::{ChatEvent, EventKind, Topic},
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
    /// How often the sweeper runs: often enough that a user is announced
    /// offline within a quarter of the grace period after it ends.
    fn sweep_every(&self) -> Duration {
        (self.grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// When a gateway should report again: a third of its lease, so two
    /// lost reports in a row still leave it live.
    pub fn renew_after(&self) -> Duration {
        (self.grace / 3).max(Duration::from_millis(100))
    }
}

/// A gateway report, checked: users who came online (by their verified
/// tokens) and users whose last socket on the gateway closed.
#[derive(Debug, Clone, Default)]
pub struct GatewayReport {
    pub gateway_id: String,
    pub online: Vec<String>,
    pub offline: Vec<String>,
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
}

/// Users whose audiences are read in one query.
const ANNOUNCE_BATCH: usize = 500;

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
        tokio::spawn(announce(store.clone(), live.clone(), changes));
        Presence {
            store,
            live,
            settings,
            announcer,
        }
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
        if !changes.is_empty() && self.announcer.send(changes).is_err() {
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

    async fn sweep(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.sweep_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                _ = tick.tick() => {}
            }
            let now = now_micros();
            match self
                .store
                .sweep_presence(now, now - micros(self.settings.grace))
                .await
            {
                Ok(changes) => self.announce(changes),
                Err(err) => tracing::warn!(error = %err, "presence sweep failed; trying again"),
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

/// Tells everyone who shares a thread with each changed user, on their
/// user-wide topic: one event per (user, co-participant) however many
/// threads they share, and none per thread; the audiences of up to
/// [`ANNOUNCE_BATCH`] users are read in one query.
async fn announce(
    store: Store,
    live: LiveEvents,
    mut changes: mpsc::UnboundedReceiver<Vec<PresenceChange>>,
) {
    while let Some(batch) = changes.recv().await {
        for chunk in batch.chunks(ANNOUNCE_BATCH) {
            let users: Vec<String> = chunk.iter().map(|c| c.user_id.clone()).collect();
            let audiences = match store.co_participants_of(&users).await {
                Ok(audiences) => audiences,
                Err(err) => {
                    tracing::warn!(error = %err, users = users.len(), "presence: cannot read co-participants; changes not announced");
                    continue;
                }
            };
            let mut by_user: std::collections::HashMap<&str, Vec<&str>> =
                std::collections::HashMap::new();
            for (user, audience) in &audiences {
                by_user.entry(user).or_default().push(audience);
            }
            for change in chunk {
                let Some(audience) = by_user.get(change.user_id.as_str()) else {
                    continue;
                };
                let event = Arc::new(ChatEvent {
                    thread_id: Uuid::nil(),
                    kind: EventKind::Presence {
                        user_id: change.user_id.clone(),
                        online: change.online,
                        last_seen_at: change.last_seen_at,
                    },
                });
                for user in audience {
                    live.bus()
                        .publish_paced(&Topic::User((*user).to_owned()), event.clone())
                        .await;
                }
            }
        }
    }
}
