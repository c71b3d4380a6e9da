//! Caps on open connections, shared by both services' listeners: in total
//! and per client address, so that neither a flood of idle sockets nor one
//! greedy address can use up the process's open files. A connection over a
//! cap is refused the moment it is accepted, counted, and reported by a
//! warning at most every few seconds (a flood must not flood the log too).
//!
//! The admission ticket ([`Admitted`]) travels with the socket for its whole
//! life, through an HTTP upgrade too, so the count is of open files, not of
//! requests.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::ConfigError;

/// How often, at most, a refusal is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Files kept free for what is not a client connection: listeners, the
/// database pool, upstream channels, logs.
fn headroom(limit: u64) -> u64 {
    (limit / 16).max(64)
}

/// The process's open-file limit (the soft `RLIMIT_NOFILE`), when it can
/// be read.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Reads a connection cap: `value` when set (1 to 1,000,000), else the
/// open-file limit less some headroom, so that by default the process
/// refuses a connection before it runs out of files.
pub fn max_connections(variable: &'static str, value: Option<&str>) -> Result<usize, ConfigError> {
    match value {
        Some(value) => count(variable, Some(value), 0),
        None => Ok(open_file_limit()
            .map(|limit| limit.saturating_sub(headroom(limit)).max(1))
            .unwrap_or(16_384)
            .min(1_000_000) as usize),
    }
}

/// Reads a positive count (1 to 1,000,000), or `default` when unset.
pub fn count(
    variable: &'static str,
    value: Option<&str>,
    default: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| ConfigError::new(variable, "expected a whole number from 1 to 1000000")),
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process holds its maximum of connections.
    Total,
    /// The client's address holds its maximum of connections.
    PerAddress,
}

/// The caps and the live counts behind them. One per listener.
#[derive(Debug)]
pub struct ConnectionLimiter {
    service: &'static str,
    max_total: usize,
    max_per_address: usize,
    open: AtomicUsize,
    /// Only addresses with an open connection are kept, so the map is
    /// bounded by `max_total`.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    refused_total: AtomicU64,
    refused_per_address: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last warning, plus one (0:
    /// never warned).
    last_warning: AtomicU64,
}

impl ConnectionLimiter {
    /// Caps for `service`'s listener (the name goes in the warnings).
    pub fn new(service: &'static str, max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            service,
            max_total,
            max_per_address,
            open: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            refused_total: AtomicU64::new(0),
            refused_per_address: AtomicU64::new(0),
            started: Instant::now(),
            last_warning: AtomicU64::new(0),
        })
    }

    /// Takes a place for a connection from `address`, or says why there is
    /// none (and counts and reports the refusal).
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, Refusal> {
        let refusal = if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            Refusal::Total
        } else {
            let mut per_address = self
                .per_address
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = per_address.entry(address).or_insert(0);
            if *held < self.max_per_address {
                *held += 1;
                return Ok(Admitted {
                    limiter: self.clone(),
                    address,
                });
            }
            drop(per_address);
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused_per_address.fetch_add(1, Ordering::Relaxed);
            Refusal::PerAddress
        };
        self.warn(refusal);
        Err(refusal)
    }

    fn warn(&self, refusal: Refusal) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_warning.load(Ordering::Relaxed);
        if last != 0 && now - last < WARN_EVERY.as_millis() as u64 {
            return;
        }
        if self
            .last_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        tracing::warn!(
            service = self.service,
            cap = match refusal {
                Refusal::Total => "total",
                Refusal::PerAddress => "per_address",
            },
            open = self.open(),
            max_total = self.max_total,
            max_per_address = self.max_per_address,
            refused_total = self.refused(Refusal::Total),
            refused_per_address = self.refused(Refusal::PerAddress),
            "connection refused: cap reached (logged at most every 10 s)"
        );
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections refused so far for `refusal`.
    pub fn refused(&self, refusal: Refusal) -> u64 {
        match refusal {
            Refusal::Total => self.refused_total.load(Ordering::Relaxed),
            Refusal::PerAddress => self.refused_per_address.load(Ordering::Relaxed),
        }
    }

    /// The caps: in total, per address.
    pub fn caps(&self) -> (usize, usize) {
        (self.max_total, self.max_per_address)
    }
}

/// A connection's place under the caps, given back when dropped (when the
/// socket closes).
#[derive(Debug)]
pub struct Admitted {
    limiter: Arc<ConnectionLimiter>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_address = self
            .limiter
            .per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = per_address.get_mut(&self.address) {
            *held -= 1;
            if *held == 0 {
                per_address.remove(&self.address);
            }
        }
        drop(per_address);
        self.limiter.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let limiter = ConnectionLimiter::new("test", 3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limiter.admit(a).unwrap();
        let _a2 = limiter.admit(a).unwrap();
        assert_eq!(limiter.admit(a).unwrap_err(), Refusal::PerAddress);
        let _b1 = limiter.admit(b).unwrap();
        assert_eq!(limiter.admit(b).unwrap_err(), Refusal::Total);
        assert_eq!(limiter.open(), 3);
        assert_eq!(limiter.refused(Refusal::Total), 1);
        assert_eq!(limiter.refused(Refusal::PerAddress), 1);
        drop(a1);
        assert_eq!(limiter.open(), 2);
        let _a3 = limiter.admit(a).unwrap();
    }

    #[test]
    fn the_default_leaves_headroom_under_the_file_limit() {
        let cap = max_connections("X", None).unwrap() as u64;
        if let Some(limit) = open_file_limit() {
            assert!(cap < limit, "{cap} < {limit}");
        }
        assert_eq!(max_connections("X", Some("500")).unwrap(), 500);
        assert_eq!(max_connections("X", Some("0")).unwrap_err().variable, "X");
    }
}
