//! Which chat-core replica takes a call: one connection per replica, each
//! with its own health, and a per-call choice among the healthy ones.
//!
//! Why not tonic's balanced channel: it treats an endpoint that cannot
//! connect as ready (grpc-rust issue 2839), so a dead replica keeps getting
//! its share of calls for as long as it is down. Here every replica has a
//! lazily connected [`Channel`] and a task that follows its
//! `grpc.health.v1` `Watch` stream over that same connection: a replica is
//! taken out of rotation as soon as a call or a connect to it fails, its
//! connection breaks, or it reports `NOT_SERVING` (chat-core does so as
//! soon as it starts shutting down), and comes back when its health says
//! `SERVING` again.
//!
//! The per-call choice is a round-robin over a snapshot of the replica
//! list: one atomic increment and a few atomic loads, no lock held across
//! an await.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::Service;

/// The service whose health decides whether a replica takes calls.
const HEALTH_SERVICE: &str = "chat.v1.ChatService";
/// How long opening a health watch may take before the replica counts as
/// down: a replica that cannot answer this quickly would stall calls too.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The first wait before watching a replica's health again after it went
/// down: short, so a restarted replica is back within a fraction of a
/// second.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between health watches of a replica that stays down.
const LAST_RETRY: Duration = Duration::from_secs(1);
/// How often names in `CHAT_CORE_URL` are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// What the gateway knows of a replica's health.
const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const DOWN: u8 = 2;

/// The settings of every replica connection.
pub(super) fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// A replica's health, shared between its calls and its health task.
#[derive(Debug)]
struct Health {
    state: AtomicU8,
    /// Wakes the health task when a call found the replica gone, so it
    /// watches again instead of trusting a stream that may be stale.
    ejected: Notify,
}

/// One chat-core replica.
#[derive(Debug)]
struct Replica {
    url: Arc<str>,
    channel: Channel,
    health: Arc<Health>,
    /// Dropped with the replica: its health task then ends.
    _retire: watch::Sender<()>,
}

impl Replica {
    fn start(url: &str) -> Result<Arc<Replica>, tonic::transport::Error> {
        let channel = endpoint(url)?.connect_lazy();
        // Unknown until its watch answers, and usable meanwhile: a replica
        // that is down fails its first call fast and is taken out then.
        let health = Arc::new(Health {
            state: AtomicU8::new(UNKNOWN),
            ejected: Notify::new(),
        });
        let (retire, retired) = watch::channel(());
        let url: Arc<str> = url.into();
        tokio::spawn(follow_health(
            url.clone(),
            channel.clone(),
            health.clone(),
            retired,
        ));
        Ok(Arc::new(Replica {
            url,
            channel,
            health,
            _retire: retire,
        }))
    }

    fn usable(&self) -> bool {
        self.health.state.load(Ordering::Relaxed) != DOWN
    }

    /// Takes the replica out of rotation after a failed call or connect.
    fn eject(&self, error: &tonic::transport::Error) {
        if self.health.state.swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(replica = %self.url, error = %error, "chat-core replica failed a call; out of rotation until healthy");
        }
        self.health.ejected.notify_one();
    }
}

/// Marks a replica's health, logging changes.
fn mark(url: &str, health: &Health, state: u8, why: &str) {
    let before = health.state.swap(state, Ordering::Relaxed);
    if before != state {
        match state {
            SERVING => tracing::info!(replica = %url, "chat-core replica serving; in rotation"),
            _ => tracing::warn!(replica = %url, why, "chat-core replica down; out of rotation"),
        }
    }
}

/// Follows a replica's `grpc.health.v1` `Watch` until the replica is
/// retired. A stream that ends or breaks, a status other than `SERVING`,
/// or an ejection by a failed call mark the replica down and the watch is
/// opened again after a short, growing wait. The stream is dropped as soon
/// as the replica reports `NOT_SERVING`, so a draining replica is not kept
/// open by this watch.
async fn follow_health(
    url: Arc<str>,
    channel: Channel,
    health: Arc<Health>,
    mut retired: watch::Receiver<()>,
) {
    let mut wait = FIRST_RETRY;
    loop {
        let watched = async {
            let mut client = HealthClient::new(channel.clone());
            let request = HealthCheckRequest {
                service: HEALTH_SERVICE.into(),
            };
            let mut stream = match tokio::time::timeout(PROBE_TIMEOUT, client.watch(request)).await
            {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    mark(&url, &health, DOWN, status.message());
                    return false;
                }
                Err(_) => {
                    mark(&url, &health, DOWN, "health watch timed out");
                    return false;
                }
            };
            let mut served = false;
            loop {
                tokio::select! {
                    message = stream.message() => match message {
                        Ok(Some(answer)) if answer.status == ServingStatus::Serving as i32 => {
                            mark(&url, &health, SERVING, "");
                            served = true;
                        }
                        Ok(Some(_)) => {
                            mark(&url, &health, DOWN, "not serving");
                            return served;
                        }
                        Ok(None) => {
                            mark(&url, &health, DOWN, "health stream ended");
                            return served;
                        }
                        Err(status) => {
                            mark(&url, &health, DOWN, status.message());
                            return served;
                        }
                    },
                    () = health.ejected.notified() => return served,
                }
            }
        };
        let served = tokio::select! {
            served = watched => served,
            _ = retired.changed() => return,
        };
        // A replica that was serving is retried soon; one that stays down
        // less and less often.
        wait = if served {
            FIRST_RETRY
        } else {
            (wait * 2).min(LAST_RETRY)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = retired.changed() => return,
        }
    }
}

/// The replica set, shared by every clone of [`Routed`].
#[derive(Debug, Default)]
struct Set {
    /// Replaced as a whole when DNS changes; read per call as a snapshot.
    replicas: RwLock<Arc<[Arc<Replica>]>>,
    next: AtomicUsize,
}

impl Set {
    fn snapshot(&self) -> Arc<[Arc<Replica>]> {
        match self.replicas.read() {
            Ok(replicas) => replicas.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The first usable replica from `start` on (by default the next in
    /// round-robin order); when none is usable, the one at `start` anyway
    /// (its health may be stale, and trying costs a refused connect at
    /// worst).
    fn pick(&self, start: Option<usize>) -> Option<Arc<Replica>> {
        let replicas = self.snapshot();
        let count = replicas.len();
        if count == 0 {
            return None;
        }
        let start = start.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
        (0..count)
            .map(|offset| &replicas[(start + offset) % count])
            .find(|replica| replica.usable())
            .or_else(|| replicas.get(start % count))
            .cloned()
    }

    fn replace(&self, replicas: Vec<Arc<Replica>>) {
        self.update(|_| replicas);
    }

    /// Replaces the list with what `change` makes of it, under the lock,
    /// so resolvers of several names never undo each other's changes.
    fn update(&self, change: impl FnOnce(&[Arc<Replica>]) -> Vec<Arc<Replica>>) {
        let mut current = match self.replicas.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = change(&current).into();
    }
}

/// Why a call could not be handed to a replica.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No replica is configured (a name resolved to nothing yet).
    #[error("no chat-core replica known")]
    NoReplica,
    /// The replica's connection failed the call; it is out of rotation.
    #[error("chat-core replica unreachable")]
    Transport(#[source] tonic::transport::Error),
}

/// A gRPC transport that hands each call to a healthy replica. Cheap to
/// clone; every clone shares the replicas and their health.
#[derive(Debug, Clone)]
pub struct Routed {
    set: Arc<Set>,
    /// Where the search for a healthy replica starts, when fixed.
    start: Option<usize>,
}

impl Routed {
    /// Connects (lazily) to `urls`; names are resolved again every few
    /// seconds and every address they yield becomes a replica (a
    /// Kubernetes headless service lists one per pod).
    pub fn new(urls: &[String]) -> Result<Routed, tonic::transport::Error> {
        let set = Arc::new(Set::default());
        let mut fixed = Vec::new();
        let mut names = Vec::new();
        for url in urls {
            // Validated by the configuration; an endpoint error says why.
            let Ok(uri) = url.parse::<http::Uri>() else {
                endpoint(url)?;
                continue;
            };
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            if host.parse::<std::net::IpAddr>().is_ok() {
                fixed.push(Replica::start(url)?);
            } else {
                names.push((
                    host.to_owned(),
                    uri.port_u16().unwrap_or(80),
                    uri.scheme_str().unwrap_or("http").to_owned(),
                ));
            }
        }
        // The fixed addresses first: the resolvers add to them.
        set.replace(fixed);
        for (host, port, scheme) in names {
            tokio::spawn(follow_dns(host, port, scheme, Arc::downgrade(&set)));
        }
        Ok(Routed { set, start: None })
    }

    /// The same replicas, each call going to the first healthy one from
    /// the `index`-th on: long-lived streams opened through transports
    /// pinned to different indexes spread evenly over the healthy replicas.
    pub fn pinned(&self, index: usize) -> Routed {
        Routed {
            set: self.set.clone(),
            start: Some(index),
        }
    }

    /// Replicas whose health says `SERVING`, and all replicas.
    pub fn serving(&self) -> (usize, usize) {
        let replicas = self.set.snapshot();
        let serving = replicas
            .iter()
            .filter(|replica| replica.health.state.load(Ordering::Relaxed) == SERVING)
            .count();
        (serving, replicas.len())
    }

    /// Whether any replica has said `SERVING` on its health watch.
    pub fn any_serving(&self) -> bool {
        self.set
            .snapshot()
            .iter()
            .any(|replica| replica.health.state.load(Ordering::Relaxed) == SERVING)
    }
}

impl Service<http::Request<Body>> for Routed {
    type Response = http::Response<Body>;
    type Error = RouteError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, RouteError>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is judged per call, when the replica is chosen.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let replica = self.set.pick(self.start);
        Box::pin(async move {
            let replica = replica.ok_or(RouteError::NoReplica)?;
            let mut channel = replica.channel.clone();
            let result = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            result.map_err(|error| {
                replica.eject(&error);
                RouteError::Transport(error)
            })
        })
    }
}

/// Keeps the replicas of `host` equal to what it resolves to, while the
/// set lives. Replicas of other entries (and of other names) are kept.
async fn follow_dns(host: String, port: u16, scheme: String, set: Weak<Set>) {
    let mut current: HashSet<String> = HashSet::new();
    loop {
        let Some(live) = set.upgrade() else { return };
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                let resolved: HashSet<String> =
                    addrs.map(|addr| format!("{scheme}://{addr}")).collect();
                if resolved != current {
                    live.update(|replicas| {
                        let mut kept: Vec<Arc<Replica>> = replicas
                            .iter()
                            .filter(|r| !current.contains(&*r.url) || resolved.contains(&*r.url))
                            .cloned()
                            .collect();
                        for url in resolved.difference(&current) {
                            match Replica::start(url) {
                                Ok(replica) => {
                                    tracing::info!(host, url, "chat-core address added");
                                    kept.push(replica);
                                }
                                Err(err) => {
                                    tracing::warn!(host, url, error = %err, "unusable chat-core address")
                                }
                            }
                        }
                        kept
                    });
                    for url in current.difference(&resolved) {
                        tracing::info!(host, url, "chat-core address removed");
                    }
                    current = resolved;
                }
            }
            Err(err) => tracing::warn!(host, error = %err, "cannot resolve chat-core address"),
        }
        drop(live);
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica in a known state, with no health task to change it.
    fn replica(port: u16, state: u8) -> Arc<Replica> {
        let url = format!("http://127.0.0.1:{port}");
        let (retire, _) = watch::channel(());
        Arc::new(Replica {
            channel: endpoint(&url).expect("endpoint").connect_lazy(),
            url: url.into(),
            health: Arc::new(Health {
                state: AtomicU8::new(state),
                ejected: Notify::new(),
            }),
            _retire: retire,
        })
    }

    fn ports(set: &Set, start: Option<usize>, calls: usize) -> Vec<String> {
        (0..calls)
            .map(|_| set.pick(start).expect("a replica").url.to_string())
            .collect()
    }

    #[tokio::test]
    async fn calls_go_round_robin_over_usable_replicas_only() {
        let set = Set::default();
        set.replace(vec![
            replica(1, SERVING),
            replica(2, DOWN),
            replica(3, UNKNOWN),
        ]);
        // A down replica's turn goes to the next usable one.
        let picked: Vec<String> = ports(&set, None, 6);
        let port = |url: &String| url.rsplit(':').next().unwrap_or_default().to_owned();
        assert_eq!(
            picked.iter().map(port).collect::<Vec<_>>(),
            ["1", "3", "3", "1", "3", "3"]
        );
    }

    #[tokio::test]
    async fn with_every_replica_down_calls_still_try_one() {
        let set = Set::default();
        assert!(set.pick(None).is_none());
        set.replace(vec![replica(1, DOWN), replica(2, DOWN)]);
        assert_eq!(ports(&set, None, 2).len(), 2);
    }

    #[tokio::test]
    async fn pinned_streams_spread_evenly_and_move_off_a_dead_replica() {
        let set = Set::default();
        set.replace(vec![replica(1, SERVING), replica(2, SERVING)]);
        let links: Vec<String> = (0..4).flat_map(|i| ports(&set, Some(i), 1)).collect();
        assert_eq!(
            links,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:1",
                "http://127.0.0.1:2"
            ]
        );
        set.snapshot()[1]
            .health
            .state
            .store(DOWN, Ordering::Relaxed);
        let moved: Vec<String> = (0..4).flat_map(|i| ports(&set, Some(i), 1)).collect();
        assert!(moved.iter().all(|url| url.ends_with(":1")), "{moved:?}");
    }
}
