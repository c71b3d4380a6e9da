//! Presence, as this gateway tells chat-core: which users hold a socket
//! here. Only transitions travel (a user's first socket opened, their last
//! one closed), coalesced per user and sent in batches, plus one lease
//! renewal for the whole gateway every so often; nothing is sent per
//! socket or per heartbeat, so 50,000 sockets cost chat-core a report a
//! few times a second at most.
//!
//! The lease is what makes a dead gateway's users go offline: chat-core
//! drops everything a gateway reported once its lease runs out. When
//! chat-core says the lease was not live (it ran out while chat-core was
//! unreachable), the gateway reports every user it holds again. A gateway
//! that stops cleanly does not leave it to the lease: its last report
//! releases everything it reported, so its users' grace period starts when
//! their sockets are closed, not whenever the lease happens to run out.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use chat_proto::v1::{self as pb, relay_service_client::RelayServiceClient};
use tokio::{
    sync::{Notify, watch},
    time::{Instant, sleep_until},
};

use super::Routed;
use crate::edge::UserSockets;

/// How long transitions gather before a report goes, so that a burst of
/// sockets becomes one report.
const GATHER: Duration = Duration::from_millis(50);
/// Until chat-core says otherwise, how often the lease is renewed.
const FIRST_RENEWAL: Duration = Duration::from_secs(1);
/// Entries per report.
const REPORT_ENTRIES: usize = 2_000;
/// The wait after a failed report before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long one report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping gateway keeps trying to release its presence
/// before it leaves the rest to the lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// What is to be said about one user: online (with the token that proves
/// it) or offline.
type Pending = HashMap<Box<str>, Option<Arc<str>>>;

#[derive(Debug)]
struct Shared {
    gateway_id: String,
    pending: Mutex<Pending>,
    wake: Notify,
    reports: AtomicU64,
    transitions: AtomicU64,
    /// Whether [`PresenceReporter::start`] ran.
    started: AtomicBool,
    /// Set once the reporter has stopped (after its release, on shutdown).
    finished: watch::Sender<bool>,
}

/// Collects this gateway's presence transitions for chat-core. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct PresenceReporter {
    shared: Arc<Shared>,
}

impl Default for PresenceReporter {
    fn default() -> Self {
        PresenceReporter::new()
    }
}

impl PresenceReporter {
    /// A reporter under a new random gateway id (chat-core knows this
    /// gateway only by it; it is never shown to anyone else).
    pub fn new() -> Self {
        PresenceReporter {
            shared: Arc::new(Shared {
                gateway_id: uuid::Uuid::new_v4().simple().to_string(),
                pending: Mutex::default(),
                wake: Notify::new(),
                reports: AtomicU64::new(0),
                transitions: AtomicU64::new(0),
                started: AtomicBool::new(false),
                finished: watch::Sender::new(false),
            }),
        }
    }

    /// `user`'s first socket here opened.
    pub fn online(&self, user: &str, token: Arc<str>) {
        self.set(user, Some(token));
    }

    /// `user`'s last socket here closed.
    pub fn offline(&self, user: &str) {
        self.set(user, None);
    }

    fn set(&self, user: &str, state: Option<Arc<str>>) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.into(), state);
        self.shared.wake.notify_one();
    }

    /// Reports sent so far, and the user transitions they carried (for
    /// `/metrics`).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.reports.load(Ordering::Relaxed),
            self.shared.transitions.load(Ordering::Relaxed),
        )
    }

    /// Completes once the reporter has stopped: after `shutdown`, when its
    /// release went out (or could not within a few seconds). Completes at
    /// once if it was never started.
    pub async fn finished(&self) {
        if !self.shared.started.load(Ordering::Acquire) {
            return;
        }
        let mut finished = self.shared.finished.subscribe();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Sends transitions and renews the lease until `shutdown`, over
    /// `routed`; `sockets` (held weakly: it holds this reporter) says who
    /// is here when everything must be reported again.
    pub fn start(
        &self,
        routed: Routed,
        sockets: Weak<UserSockets>,
        shutdown: watch::Receiver<bool>,
    ) {
        let task = Task {
            shared: self.shared.clone(),
            client: RelayServiceClient::new(routed),
            sockets,
            renew_after: FIRST_RENEWAL,
            report_all: true,
            reported: false,
        };
        self.shared.started.store(true, Ordering::Release);
        tokio::spawn(async move {
            let shared = task.shared.clone();
            task.run(shutdown).await;
            shared.finished.send_replace(true);
        });
    }
}

struct Task {
    shared: Arc<Shared>,
    client: RelayServiceClient<Routed>,
    sockets: Weak<UserSockets>,
    renew_after: Duration,
    /// Report every user held here (chat-core lost them, or never had
    /// them).
    report_all: bool,
    /// Whether chat-core ever took a report (and so holds a lease).
    reported: bool,
}

impl Task {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut next_renewal = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    self.release().await;
                    return;
                }
                () = self.shared.wake.notified() => {
                    tokio::time::sleep(GATHER).await;
                }
                () = sleep_until(next_renewal) => {}
            }
            let mut batch: Pending = std::mem::take(
                &mut *self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let all = self.report_all;
            if all && let Some(sockets) = self.sockets.upgrade() {
                for (user, token) in sockets.holders() {
                    batch.insert(user.into(), Some(token));
                }
            }
            match self.send(batch).await {
                Ok(lease_was_live) => {
                    self.report_all = false;
                    if !lease_was_live && !all {
                        // chat-core dropped this gateway's users: say them
                        // all again, now.
                        tracing::warn!(gateway_id = %self.shared.gateway_id, "presence lease had run out; reporting every user again");
                        self.report_all = true;
                        self.shared.wake.notify_one();
                    }
                    next_renewal = Instant::now() + self.renew_after;
                }
                Err(unsent) => {
                    // Newer transitions of the same users win over these.
                    let mut pending = self
                        .shared
                        .pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (user, state) in unsent {
                        pending.entry(user).or_insert(state);
                    }
                    drop(pending);
                    self.report_all |= all;
                    next_renewal = Instant::now() + RETRY_AFTER;
                }
            }
        }
    }

    /// The last report, on shutdown: chat-core drops this gateway's lease
    /// and users at once, and they go offline after the grace period
    /// unless they hold a socket elsewhere (a socket told to reconnect
    /// elsewhere has time to). Transitions not yet sent are left out: the
    /// release covers them. Tried again for a few seconds; after that the
    /// lease runs out by itself.
    async fn release(&mut self) {
        if !self.reported {
            return;
        }
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            let mut call = tonic::Request::new(pb::ReportPresenceRequest {
                gateway_id: self.shared.gateway_id.clone(),
                release: true,
                ..Default::default()
            });
            let left = deadline.saturating_duration_since(Instant::now());
            call.set_timeout(left);
            let answer = tokio::time::timeout(left, self.client.report_presence(call)).await;
            match answer {
                Ok(Ok(_)) => {
                    self.shared.reports.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(gateway_id = %self.shared.gateway_id, "presence released for shutdown");
                    return;
                }
                Ok(Err(status)) => {
                    tracing::warn!(code = ?status.code(), message = %status.message(), "presence release failed");
                }
                Err(_) => {}
            }
            if Instant::now() + RETRY_AFTER >= deadline {
                tracing::warn!("presence not released; the lease will run out instead");
                return;
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }

    /// Sends `batch` in reports of at most [`REPORT_ENTRIES`] (at least one
    /// report, which renews the lease). Answers whether the lease was live
    /// before, or what was not sent.
    async fn send(&mut self, batch: Pending) -> Result<bool, Pending> {
        let mut entries: Vec<(Box<str>, Option<Arc<str>>)> = batch.into_iter().collect();
        let mut lease_was_live = true;
        let mut first = true;
        while first || !entries.is_empty() {
            first = false;
            let tail = entries.split_off(entries.len().saturating_sub(REPORT_ENTRIES));
            let mut request = pb::ReportPresenceRequest {
                gateway_id: self.shared.gateway_id.clone(),
                ..Default::default()
            };
            for (user, state) in &tail {
                match state {
                    Some(token) => request.online_tokens.push(token.to_string()),
                    None => request.offline_user_ids.push(user.to_string()),
                }
            }
            let mut call = tonic::Request::new(request);
            call.set_timeout(REPORT_TIMEOUT);
            let answer = tokio::time::timeout(REPORT_TIMEOUT, self.client.report_presence(call))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::unavailable("presence report timed out")));
            match answer {
                Ok(response) => {
                    let response = response.into_inner();
                    self.reported = true;
                    self.shared.reports.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .transitions
                        .fetch_add(tail.len() as u64, Ordering::Relaxed);
                    lease_was_live &= response.lease_was_live;
                    if response.renew_after_ms > 0 {
                        self.renew_after =
                            Duration::from_millis(u64::from(response.renew_after_ms));
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = %status.message(), "presence report failed; trying again");
                    entries.extend(tail);
                    return Err(entries.into_iter().collect());
                }
            }
        }
        Ok(lease_was_live)
    }
}
