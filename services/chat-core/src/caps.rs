//! Per-user caps on what costs chat-core memory or rows, so that one user
//! (or one stolen token) cannot take a share of the service that others
//! need: live subscriptions held at once (each ~10 KiB of state and
//! buffers), and new threads per minute (rows that stay forever).
//!
//! Service tokens are not capped here: they are the marketplace's own
//! integrations, whose load is planned, and a cap that fires under their
//! legitimate peak would break payments or disputes. Counts are per
//! replica, kept in memory: a restart forgets them, which only ever
//! loosens a cap for a moment.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio_stream::Stream;

/// The caps; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSettings {
    /// Live subscriptions (`Subscribe` streams and relay subscriptions
    /// together) one user may hold on this replica.
    pub subscriptions_per_user: usize,
    /// Threads one user may create per minute on this replica.
    pub thread_creations_per_minute: u32,
}

impl Default for CapSettings {
    fn default() -> Self {
        CapSettings {
            subscriptions_per_user: 100,
            thread_creations_per_minute: 30,
        }
    }
}

/// Beyond this many users in the creation buckets, full ones are dropped.
const MAX_BUCKETS: usize = 100_000;

/// The live counts behind the caps. Shared by every call.
#[derive(Debug)]
pub struct Caps {
    settings: CapSettings,
    /// Only users with an open subscription are kept.
    subscriptions: Mutex<HashMap<String, usize>>,
    /// Token buckets: creations left, and when they were counted.
    creations: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Caps {
    /// Caps with `settings`.
    pub fn new(settings: CapSettings) -> Arc<Self> {
        Arc::new(Caps {
            settings,
            subscriptions: Mutex::new(HashMap::new()),
            creations: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more live subscription of `user`, or `None` at the
    /// cap.
    pub fn subscription(self: &Arc<Self>, user: &str) -> Option<SubscriptionSlot> {
        let mut open = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = open.entry(user.to_owned()).or_insert(0);
        if *held >= self.settings.subscriptions_per_user {
            return None;
        }
        *held += 1;
        Some(SubscriptionSlot {
            caps: self.clone(),
            user: user.into(),
        })
    }

    /// Takes one thread creation from `user`'s allowance; on refusal, how
    /// long until one is free. Creations refill evenly over the minute.
    pub fn take_creation(&self, user: &str) -> Result<(), Duration> {
        let per_minute = f64::from(self.settings.thread_creations_per_minute);
        let rate = per_minute / 60.0;
        let now = Instant::now();
        let mut buckets = self
            .creations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(user) {
            buckets.retain(|_, (left, at)| {
                *left + now.duration_since(*at).as_secs_f64() * rate < per_minute
            });
        }
        let (left, at) = buckets.entry(user.to_owned()).or_insert((per_minute, now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * rate).min(per_minute);
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *left) / rate))
        }
    }

    /// Gives back a creation taken for a call that created nothing (the
    /// thread existed already): finding a thread is never limited.
    pub fn return_creation(&self, user: &str) {
        let per_minute = f64::from(self.settings.thread_creations_per_minute);
        let mut buckets = self
            .creations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((left, _)) = buckets.get_mut(user) {
            *left = (*left + 1.0).min(per_minute);
        }
    }
}

/// One subscription's place under its user's cap, given back when dropped.
#[derive(Debug)]
pub struct SubscriptionSlot {
    caps: Arc<Caps>,
    user: Box<str>,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut open = self
            .caps
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(&*self.user) {
            *held -= 1;
            if *held == 0 {
                open.remove(&*self.user);
            }
        }
    }
}

/// A stream that holds a [`SubscriptionSlot`] for as long as it lives.
pub struct Capped<S> {
    stream: S,
    _slot: SubscriptionSlot,
}

impl<S> Capped<S> {
    /// `stream`, holding `slot`.
    pub fn new(stream: S, slot: SubscriptionSlot) -> Self {
        Capped {
            stream,
            _slot: slot,
        }
    }
}

impl<S: Stream + Unpin> Stream for Capped<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_capped_per_user() {
        let caps = Caps::new(CapSettings {
            subscriptions_per_user: 2,
            thread_creations_per_minute: 1,
        });
        let a = caps.subscription("alice").unwrap();
        let _b = caps.subscription("alice").unwrap();
        assert!(caps.subscription("alice").is_none());
        assert!(caps.subscription("bob").is_some());
        drop(a);
        assert!(caps.subscription("alice").is_some());
    }

    #[test]
    fn creations_refill_over_the_minute_and_come_back() {
        let caps = Caps::new(CapSettings {
            subscriptions_per_user: 1,
            thread_creations_per_minute: 2,
        });
        assert!(caps.take_creation("alice").is_ok());
        assert!(caps.take_creation("alice").is_ok());
        let wait = caps.take_creation("alice").unwrap_err();
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30));
        caps.return_creation("alice");
        assert!(caps.take_creation("alice").is_ok());
        assert!(caps.take_creation("bob").is_ok());
    }
}
