//! A load generator for the gateway's public interface: REST to create
//! threads, WebSockets (docs/api.md#websocket-api) to send and receive messages. The
//! `ws-load` binary is a command line around [`run`]; tests call [`run`]
//! in-process.
//!
//! What one run does, every step bounded in time:
//!
//! 1. creates `threads` threads over REST (`POST /api/chat/threads/`), each
//!    with `participants` users taken from `users` (`load-<run>-u<N>`);
//! 2. opens the sockets: per participant and thread `sockets_per_user`
//!    thread sockets (or per user `sockets_per_user` every-thread sockets),
//!    plus `slow_readers` extra sockets that read one frame every
//!    `slow_read_delay` through a small receive buffer; all authenticate
//!    with an `auth` frame. Sockets are spread round-robin over the
//!    gateways and the source addresses;
//! 3. sends for `warmup + duration`: every participant of every thread is
//!    a sender on its first socket, either closed-loop (at most `window`
//!    unacknowledged messages each) or open-loop (`rate` messages per
//!    second in all); every message carries its send time;
//! 4. drains: waits (at most `drain`) until every send is answered and
//!    every socket has every acknowledged message of its threads;
//! 5. checks and reports: per socket and thread the seqs must go up by
//!    exactly one (otherwise a duplicate or an out-of-order delivery); an
//!    acknowledged message missing on a participant's socket is lost.
//!    Slow readers may be closed with 4008; that is counted apart and
//!    their misses are not losses.
//!
//! Latencies (send → ack, send → delivery to each recipient, the sender
//! included) and throughput count only what was sent after the warm-up.
//! Only loopback addresses are accepted.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, de};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
    time::{Instant, sleep, sleep_until, timeout, timeout_at},
};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{
        self, Message,
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};

type Ws = WebSocketStream<TcpStream>;
type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

/// Which sockets the participants open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `/ws/chat/{thread_id}/`: per participant and thread.
    Thread,
    /// `/ws/chat/`: per user, every thread of theirs (frames carry `thread_id`).
    User,
}

/// How messages are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Closed loop: each sender keeps at most `window` messages unacknowledged.
    Closed { window: usize },
    /// Open loop: `rate` messages per second in all, spread evenly over the
    /// senders; a sender with `max_outstanding` unanswered messages skips
    /// its turn (counted as `skipped`).
    Open { rate: f64, max_outstanding: usize },
    /// No messages: open the sockets, hold them for `warmup + duration`,
    /// report connect failures and closes.
    Idle { sockets: usize },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Gateway addresses; sockets go round-robin across them. Loopback only.
    pub gateways: Vec<SocketAddr>,
    /// The HS256 secret the gateway checks tokens with.
    pub secret: String,
    /// Distinct users; 0 means `threads * participants` (each user in one thread).
    pub users: usize,
    pub threads: usize,
    /// Participants per thread, creator included (2..=50).
    pub participants: usize,
    pub sockets_per_user: usize,
    pub socket_kind: SocketKind,
    pub mode: Mode,
    /// Content length in bytes (at least what the send time and ids need).
    pub message_size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The longest wait after sending for the last acks and deliveries.
    pub drain: Duration,
    pub slow_readers: usize,
    /// A slow reader takes one frame per this long.
    pub slow_read_delay: Duration,
    /// Local addresses to bind sockets to, round-robin (loopback only).
    pub sources: Vec<IpAddr>,
    /// Server processes (name, pid) whose CPU time and memory are sampled.
    pub watch: Vec<(String, u32)>,
    /// Sockets being opened at once.
    pub connect_concurrency: usize,
    /// New sockets per second (0: as fast as `connect_concurrency` allows).
    pub connect_rate: f64,
    /// The limit on each connect, handshake, auth, REST call and frame write.
    pub io_timeout: Duration,
    /// A bound on the whole run; `None`: a minute of set-up plus warm-up,
    /// duration and drain.
    pub deadline: Option<Duration>,
    /// Names users and jobs; unique per run so runs never meet.
    pub run_id: String,
}

impl Default for Config {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Config {
            gateways: vec![SocketAddr::from(([127, 0, 0, 1], 8000))],
            secret: String::new(),
            users: 0,
            threads: 50,
            participants: 2,
            sockets_per_user: 1,
            socket_kind: SocketKind::Thread,
            mode: Mode::Closed { window: 4 },
            message_size: 100,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(10),
            slow_readers: 0,
            slow_read_delay: Duration::from_millis(200),
            sources: Vec::new(),
            watch: Vec::new(),
            connect_concurrency: 256,
            connect_rate: 0.0,
            io_timeout: Duration::from_secs(10),
            deadline: None,
            run_id: format!("{:x}{:x}", nanos as u64, std::process::id()),
        }
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            count: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }

    fn json(&self) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({"count": self.count, "mean": round(self.mean), "p50": round(self.p50),
               "p90": round(self.p90), "p99": round(self.p99), "p999": round(self.p999),
               "max": round(self.max)})
    }
}

/// CPU time and memory of a watched process.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (user + system) during the measured window.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per second of the window, in percent of one core.
    pub cpu_percent: f64,
    pub rss_max_kib: u64,
    pub rss_end_kib: u64,
    /// Whether /proc could be read throughout.
    pub readable: bool,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub mode: String,
    pub deadline_hit: bool,
    pub elapsed_seconds: f64,
    pub threads_created: u64,
    pub thread_create_failures: u64,
    pub sockets_requested: u64,
    /// Sockets authenticated (`auth_ok`), slow readers included.
    pub sockets_open: u64,
    pub connect_failures: u64,
    pub connect_failure_reasons: BTreeMap<String, u64>,
    /// Sockets (not slow readers) the server closed before the end, by code.
    pub closes: BTreeMap<String, u64>,
    pub slow_readers: u64,
    pub slow_closed_4008: u64,
    pub slow_delivered: u64,
    pub senders: u64,
    pub sent: u64,
    pub acked: u64,
    /// Sends answered with an error frame.
    pub rejected: u64,
    /// Sends answered by neither an ack nor an error by the end.
    pub unacked: u64,
    /// Open loop: turns skipped because a sender had too many unanswered.
    pub skipped: u64,
    pub error_frames: BTreeMap<String, u64>,
    /// `chat_message` frames received on sockets other than slow readers.
    pub delivered: u64,
    /// (message, socket) pairs: acknowledged, not delivered to a socket of
    /// one of the thread's participants.
    pub lost: u64,
    /// Distinct acknowledged messages missing on at least one socket.
    pub lost_messages: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub measured_seconds: f64,
    pub acked_per_second: f64,
    pub delivered_per_second: f64,
    pub ack_latency: Latency,
    pub delivery_latency: Latency,
    pub processes: Vec<ProcessFigures>,
}

impl Report {
    /// The one-line JSON form.
    pub fn to_json(&self) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "mode": self.mode,
            "deadline_hit": self.deadline_hit,
            "elapsed_seconds": round(self.elapsed_seconds),
            "threads_created": self.threads_created,
            "thread_create_failures": self.thread_create_failures,
            "sockets_requested": self.sockets_requested,
            "sockets_open": self.sockets_open,
            "connect_failures": self.connect_failures,
            "connect_failure_reasons": self.connect_failure_reasons,
            "closes": self.closes,
            "slow_readers": self.slow_readers,
            "slow_closed_4008": self.slow_closed_4008,
            "slow_delivered": self.slow_delivered,
            "senders": self.senders,
            "sent": self.sent,
            "acked": self.acked,
            "rejected": self.rejected,
            "unacked": self.unacked,
            "skipped": self.skipped,
            "error_frames": self.error_frames,
            "delivered": self.delivered,
            "lost": self.lost,
            "lost_messages": self.lost_messages,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "measured_seconds": round(self.measured_seconds),
            "acked_per_second": round(self.acked_per_second),
            "delivered_per_second": round(self.delivered_per_second),
            "ack_latency_ms": self.ack_latency.json(),
            "delivery_latency_ms": self.delivery_latency.json(),
            "processes": self.processes.iter().map(|p| json!({
                "name": p.name, "pid": p.pid, "cpu_seconds": round(p.cpu_seconds),
                "cpu_percent": round(p.cpu_percent), "rss_max_kib": p.rss_max_kib,
                "rss_end_kib": p.rss_end_kib, "readable": p.readable,
            })).collect::<Vec<_>>(),
        })
    }

    /// Whether every message sent was acknowledged and delivered to every
    /// participant's socket, once and in order, with no error frame,
    /// failed connect or unexpected close.
    pub fn clean(&self) -> bool {
        !self.deadline_hit
            && self.thread_create_failures == 0
            && self.connect_failures == 0
            && self.closes.is_empty()
            && self.unacked == 0
            && self.rejected == 0
            && self.error_frames.is_empty()
            && self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.acked == self.sent
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// A configuration the run refuses.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn check(config: &Config) -> Result<(), ConfigError> {
    let bad = |m: &str| Err(ConfigError(m.to_owned()));
    if config.gateways.is_empty() {
        return bad("at least one gateway address");
    }
    if let Some(addr) = config.gateways.iter().find(|a| !a.ip().is_loopback()) {
        return Err(ConfigError(format!("{addr}: loopback gateways only")));
    }
    if let Some(ip) = config.sources.iter().find(|ip| !ip.is_loopback()) {
        return Err(ConfigError(format!("{ip}: loopback sources only")));
    }
    if config.secret.is_empty() {
        return bad("a JWT secret is required");
    }
    if !(2..=50).contains(&config.participants) {
        return bad("participants: 2 to 50 per thread");
    }
    if config.threads == 0 {
        return bad("threads: at least 1");
    }
    if config.users != 0 && config.users < config.participants {
        return bad("users: at least as many as participants per thread");
    }
    if config.sockets_per_user == 0 || config.connect_concurrency == 0 {
        return bad("sockets per user and connect concurrency: at least 1");
    }
    if config.message_size > 4000 {
        return bad("message size: at most 4000 bytes");
    }
    match config.mode {
        Mode::Closed { window: 0 } => return bad("window: at least 1"),
        Mode::Open {
            rate,
            max_outstanding,
        } if !(rate.is_finite() && rate > 0.0) || max_outstanding == 0 => {
            return bad("rate: a positive number (and max outstanding at least 1)");
        }
        Mode::Idle { sockets: 0 } => return bad("idle: at least one socket"),
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------- state

/// One thread of the run.
struct ThreadState {
    id: String,
    participants: Vec<usize>,
    /// Its `last_seq` when created: deliveries start after it.
    baseline: i64,
    /// Seqs of acknowledged messages.
    acked: Mutex<Vec<i64>>,
    max_acked: AtomicI64,
}

/// What a socket saw of one thread.
struct Track {
    thread: usize,
    /// The last seq delivered in order (starts at the thread's baseline).
    last: AtomicI64,
    /// Seqs skipped over (a gap), as inclusive ranges, and filled later.
    missing: Mutex<Vec<(i64, i64)>>,
}

/// A sender: one participant in one thread, on its first socket.
struct Sender {
    thread: usize,
    global: usize,
    window: Semaphore,
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
}

impl Sender {
    fn outstanding(&self) -> u64 {
        self.sent.load(Ordering::Acquire).saturating_sub(
            self.acked.load(Ordering::Acquire) + self.rejected.load(Ordering::Acquire),
        )
    }
}

/// One socket's plan and what it saw.
struct SocketState {
    user: usize,
    /// Thread socket: its thread.
    thread: Option<usize>,
    slow: bool,
    /// Sorted by thread.
    tracks: Vec<Track>,
    senders: Vec<Sender>,
    open: AtomicBool,
    closed: AtomicBool,
}

impl SocketState {
    fn track(&self, thread: usize) -> Option<&Track> {
        self.tracks
            .binary_search_by_key(&thread, |t| t.thread)
            .ok()
            .map(|i| &self.tracks[i])
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    delivered_measured: AtomicU64,
    acked_measured: AtomicU64,
    slow_delivered: AtomicU64,
    slow_closed_4008: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    skipped: AtomicU64,
    writers: AtomicUsize,
    connect_failures: AtomicU64,
}

struct Shared {
    epoch: Instant,
    config: Config,
    threads: Vec<ThreadState>,
    thread_index: HashMap<String, usize>,
    counters: Counters,
    errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    connect_failures: Mutex<BTreeMap<String, u64>>,
    ack_latency: Mutex<Histogram<u64>>,
    delivery_latency: Mutex<Histogram<u64>>,
    /// Microseconds since `epoch`: the measured window.
    measure_from: AtomicU64,
    measure_to: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn in_window(&self, us: u64) -> bool {
        us >= self.measure_from.load(Ordering::Relaxed)
            && us < self.measure_to.load(Ordering::Relaxed)
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, key: impl Into<String>) {
        if let Ok(mut map) = map.lock() {
            *map.entry(key.into()).or_default() += 1;
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, from 1 µs to an hour, three significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Samples kept by a socket before they go to the shared histograms.
#[derive(Default)]
struct Samples {
    ack: Vec<u64>,
    delivery: Vec<u64>,
}

impl Samples {
    const FLUSH_AT: usize = 128;

    fn flush(&mut self, shared: &Shared) {
        for (samples, histogram) in [
            (&mut self.ack, &shared.ack_latency),
            (&mut self.delivery, &shared.delivery_latency),
        ] {
            if samples.is_empty() {
                continue;
            }
            if let Ok(mut histogram) = histogram.lock() {
                for us in samples.drain(..) {
                    histogram.saturating_record(us.max(1));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- frames

/// The parts of a server frame the generator reads; strings borrowed when
/// they can be.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    thread_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: MessageField<'a>,
}

/// `message`: an object in `chat_message` and `ack`, a text in `error`.
#[derive(Default)]
enum MessageField<'a> {
    Object(FrameMessage<'a>),
    #[default]
    Other,
}

#[derive(Deserialize)]
struct FrameMessage<'a> {
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for MessageField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> de::Visitor<'de> for Visit<'a> {
            type Value = MessageField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message object or text")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                FrameMessage::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(MessageField::Object)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MessageField::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MessageField::Other)
            }
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// The send time (µs since the run's epoch) at the start of a content.
fn sent_at(content: &str) -> Option<u64> {
    content.split_once(' ')?.0.parse().ok()
}

fn content(sent_us: u64, sender: usize, n: u64, size: usize) -> String {
    let mut text = format!("{sent_us} s{sender} n{n} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

// ---------------------------------------------------------------- HTTP

/// A minimal HTTP/1.1 call (`Connection: close`) bounded by `limit`:
/// status and body. Enough for the REST calls of a load run and for
/// checking that a gateway still answers.
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    limit: Duration,
) -> Result<(u16, String), String> {
    let call = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let response = String::from_utf8_lossy(&response);
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                format!(
                    "no status line in {:?}",
                    response.chars().take(80).collect::<String>()
                )
            })?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    timeout(limit, call)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}

// ---------------------------------------------------------------- plan

fn user_name(config: &Config, user: usize) -> String {
    format!("load-{}-u{user}", config.run_id)
}

fn user_count(config: &Config) -> usize {
    if config.users == 0 {
        config.threads * config.participants
    } else {
        config.users
    }
}

/// Participants of thread `t`: distinct users, spread evenly.
fn thread_participants(config: &Config, t: usize) -> Vec<usize> {
    let users = user_count(config);
    (0..config.participants)
        .map(|j| (t * config.participants + j) % users)
        .collect()
}

struct PlannedSocket {
    user: usize,
    thread: Option<usize>,
    /// Threads it receives.
    threads: Vec<usize>,
    /// Threads it sends in.
    sends: Vec<usize>,
    slow: bool,
}

fn plan(config: &Config, participants: &[Vec<usize>]) -> Vec<PlannedSocket> {
    let mut user_threads: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (t, users) in participants.iter().enumerate() {
        for &u in users {
            user_threads.entry(u).or_default().push(t);
        }
    }
    let sending = !matches!(config.mode, Mode::Idle { .. });
    let mut sockets = Vec::new();
    match config.socket_kind {
        SocketKind::Thread => {
            for (t, users) in participants.iter().enumerate() {
                for &u in users {
                    for k in 0..config.sockets_per_user {
                        sockets.push(PlannedSocket {
                            user: u,
                            thread: Some(t),
                            threads: vec![t],
                            sends: if k == 0 && sending { vec![t] } else { vec![] },
                            slow: false,
                        });
                    }
                }
            }
        }
        SocketKind::User => {
            for (&u, threads) in &user_threads {
                for k in 0..config.sockets_per_user {
                    sockets.push(PlannedSocket {
                        user: u,
                        thread: None,
                        threads: threads.clone(),
                        sends: if k == 0 && sending {
                            threads.clone()
                        } else {
                            vec![]
                        },
                        slow: false,
                    });
                }
            }
        }
    }
    if let Mode::Idle { sockets: wanted } = config.mode {
        let base = std::mem::take(&mut sockets);
        sockets = (0..wanted)
            .map(|i| {
                let b = &base[i % base.len()];
                PlannedSocket {
                    user: b.user,
                    thread: b.thread,
                    threads: b.threads.clone(),
                    sends: vec![],
                    slow: false,
                }
            })
            .collect();
    }
    for i in 0..config.slow_readers {
        let t = i % participants.len();
        let u = participants[t][(i / participants.len()) % participants[t].len()];
        let (thread, threads) = match config.socket_kind {
            SocketKind::Thread => (Some(t), vec![t]),
            SocketKind::User => (None, user_threads[&u].clone()),
        };
        sockets.push(PlannedSocket {
            user: u,
            thread,
            threads,
            sends: vec![],
            slow: true,
        });
    }
    sockets
}

// ---------------------------------------------------------------- run

/// Runs the load described by `config` and reports what happened. Never
/// takes longer than the deadline (plus a few seconds to close sockets).
pub async fn run(config: Config) -> Result<Report, ConfigError> {
    check(&config)?;
    let started = Instant::now();
    let deadline = started
        + config
            .deadline
            .unwrap_or(Duration::from_secs(60) + config.warmup + config.duration + config.drain);
    let issuer = chat_auth::TokenIssuer::new(config.secret.as_bytes(), None, None);
    let users = user_count(&config);
    let tokens: Vec<String> = (0..users)
        .map(|u| {
            issuer
                .issue(
                    &user_name(&config, u),
                    chat_auth::Role::User,
                    Duration::from_secs(24 * 3600),
                )
                .map_err(|e| ConfigError(format!("issuing a token: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let tokens = Arc::new(tokens);
    let participants: Vec<Vec<usize>> = (0..config.threads)
        .map(|t| thread_participants(&config, t))
        .collect();

    let mut report = Report {
        mode: match config.mode {
            Mode::Closed { window } => format!("closed window={window}"),
            Mode::Open { rate, .. } => format!("open rate={rate}"),
            Mode::Idle { sockets } => format!("idle sockets={sockets}"),
        },
        ..Report::default()
    };

    // 1. Threads.
    let created = timeout_at(deadline, create_threads(&config, &tokens, &participants)).await;
    let Ok(created) = created else {
        report.deadline_hit = true;
        report.elapsed_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    };
    report.threads_created = created.iter().filter(|c| c.is_ok()).count() as u64;
    report.thread_create_failures = created.iter().filter(|c| c.is_err()).count() as u64;
    let mut threads = Vec::new();
    for (t, result) in created.into_iter().enumerate() {
        match result {
            Ok((id, baseline)) => {
                threads.push(ThreadState {
                    id,
                    participants: participants[t].clone(),
                    baseline,
                    acked: Mutex::new(Vec::new()),
                    max_acked: AtomicI64::new(baseline),
                });
            }
            Err(reason) => {
                eprintln!("ws-load: creating thread {t}: {reason}");
            }
        }
    }
    if threads.is_empty() {
        report.elapsed_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let live_participants: Vec<Vec<usize>> =
        threads.iter().map(|t| t.participants.clone()).collect();

    // 2. Sockets.
    let planned = plan(&config, &live_participants);
    let mut global_sender = 0;
    let sockets: Vec<Arc<SocketState>> = planned
        .iter()
        .map(|p| {
            let mut covered = p.threads.clone();
            covered.sort_unstable();
            let window = match config.mode {
                Mode::Closed { window } => window,
                _ => 0,
            };
            Arc::new(SocketState {
                user: p.user,
                thread: p.thread,
                slow: p.slow,
                tracks: covered
                    .iter()
                    .map(|&t| Track {
                        thread: t,
                        last: AtomicI64::new(threads[t].baseline),
                        missing: Mutex::new(Vec::new()),
                    })
                    .collect(),
                senders: p
                    .sends
                    .iter()
                    .map(|&t| {
                        global_sender += 1;
                        Sender {
                            thread: t,
                            global: global_sender - 1,
                            window: Semaphore::new(window),
                            sent: AtomicU64::new(0),
                            acked: AtomicU64::new(0),
                            rejected: AtomicU64::new(0),
                        }
                    })
                    .collect(),
                open: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            })
        })
        .collect();
    report.senders = global_sender as u64;
    report.sockets_requested = sockets.len() as u64;
    report.slow_readers = sockets.iter().filter(|s| s.slow).count() as u64;
    let thread_index = threads
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), i))
        .collect();
    let shared = Arc::new(Shared {
        epoch: started,
        config: config.clone(),
        threads,
        thread_index,
        counters: Counters::default(),
        errors: Mutex::default(),
        closes: Mutex::default(),
        connect_failures: Mutex::default(),
        ack_latency: Mutex::new(histogram()),
        delivery_latency: Mutex::new(histogram()),
        measure_from: AtomicU64::new(u64::MAX),
        measure_to: AtomicU64::new(u64::MAX),
    });
    let (start_tx, start_rx) = watch::channel::<Option<(Instant, Instant)>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let phases = drive(
        &shared, &sockets, &tokens, &mut tasks, start_tx, start_rx, stop_rx,
    );
    let watcher = Watcher::start(&config.watch);
    let outcome = timeout_at(deadline, phases).await;
    report.deadline_hit = outcome.is_err();
    let window = outcome.ok().flatten();
    // Stop: readers and writers end and close their sockets.
    let _ = stop_tx.send(true);
    if !report.deadline_hit {
        let _ = timeout(Duration::from_secs(3), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    report.processes = watcher.finish(window).await;
    summarise(&shared, &sockets, window, &mut report);
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Opens the sockets, sends, drains; returns the measured window.
#[allow(clippy::too_many_arguments)]
async fn drive(
    shared: &Arc<Shared>,
    sockets: &[Arc<SocketState>],
    tokens: &Arc<Vec<String>>,
    tasks: &mut JoinSet<()>,
    start_tx: watch::Sender<Option<(Instant, Instant)>>,
    start_rx: watch::Receiver<Option<(Instant, Instant)>>,
    stop_rx: watch::Receiver<bool>,
) -> Option<(Instant, Instant)> {
    let config = &shared.config;
    let total_senders: usize = sockets.iter().map(|s| s.senders.len()).sum();
    // Open every socket, a bounded number at once, optionally paced.
    let permits = Arc::new(Semaphore::new(config.connect_concurrency));
    let mut opening = JoinSet::new();
    let pace =
        (config.connect_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / config.connect_rate));
    let mut next_connect = Instant::now();
    for (i, socket) in sockets.iter().enumerate() {
        if let Some(pace) = pace {
            sleep_until(next_connect).await;
            next_connect += pace;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let gateway = config.gateways[i % config.gateways.len()];
        let source = (!config.sources.is_empty()).then(|| config.sources[i % config.sources.len()]);
        let socket = socket.clone();
        let shared_here = shared.clone();
        let token = tokens[socket.user].clone();
        opening.spawn(async move {
            let _permit = permit;
            let result = open_socket(&shared_here, &socket, gateway, source, &token).await;
            (socket, result)
        });
        // Collect finished ones as we go so readers start at once.
        while let Some(done) = opening.try_join_next() {
            start_socket(shared, done, tasks, &start_rx, &stop_rx, total_senders);
        }
    }
    while let Some(done) = opening.join_next().await {
        start_socket(shared, done, tasks, &start_rx, &stop_rx, total_senders);
    }

    // Send (or hold) for warm-up + duration.
    let t0 = Instant::now() + Duration::from_millis(100);
    let measure_from = t0 + config.warmup;
    let send_end = measure_from + config.duration;
    let us = |at: Instant| at.duration_since(shared.epoch).as_micros() as u64;
    shared
        .measure_from
        .store(us(measure_from), Ordering::Relaxed);
    shared.measure_to.store(us(send_end), Ordering::Relaxed);
    let _ = start_tx.send(Some((t0, send_end)));
    sleep_until(send_end).await;

    // Drain: every send answered, every socket caught up.
    let drain_end = send_end + config.drain;
    loop {
        if drained(shared, sockets) || Instant::now() >= drain_end {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    Some((measure_from, send_end))
}

fn drained(shared: &Shared, sockets: &[Arc<SocketState>]) -> bool {
    if shared.counters.writers.load(Ordering::Acquire) > 0 {
        return false;
    }
    for socket in sockets {
        if socket.slow
            || !socket.open.load(Ordering::Acquire)
            || socket.closed.load(Ordering::Acquire)
        {
            continue;
        }
        if socket.senders.iter().any(|s| s.outstanding() > 0) {
            return false;
        }
        for track in &socket.tracks {
            let thread = &shared.threads[track.thread];
            if track.last.load(Ordering::Acquire) < thread.max_acked.load(Ordering::Acquire) {
                return false;
            }
            if track.missing.lock().map(|m| !m.is_empty()).unwrap_or(false) {
                return false;
            }
        }
    }
    true
}

fn start_socket(
    shared: &Arc<Shared>,
    done: Result<(Arc<SocketState>, Result<Ws, String>), tokio::task::JoinError>,
    tasks: &mut JoinSet<()>,
    start_rx: &watch::Receiver<Option<(Instant, Instant)>>,
    stop_rx: &watch::Receiver<bool>,
    total_senders: usize,
) {
    let Ok((socket, result)) = done else {
        return;
    };
    let ws = match result {
        Ok(ws) => ws,
        Err(reason) => {
            shared
                .counters
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            Shared::count(&shared.connect_failures, reason);
            return;
        }
    };
    socket.open.store(true, Ordering::Release);
    let (sink, stream) = ws.split();
    let sink: Sink = Arc::new(tokio::sync::Mutex::new(sink));
    for index in 0..socket.senders.len() {
        shared.counters.writers.fetch_add(1, Ordering::AcqRel);
        tasks.spawn(write_loop(
            shared.clone(),
            socket.clone(),
            index,
            sink.clone(),
            start_rx.clone(),
            stop_rx.clone(),
            total_senders,
        ));
    }
    tasks.spawn(read_loop(
        shared.clone(),
        socket,
        stream,
        sink,
        stop_rx.clone(),
    ));
}

/// Connects (from `source` when given), upgrades and authenticates.
async fn open_socket(
    shared: &Shared,
    socket: &SocketState,
    gateway: SocketAddr,
    source: Option<IpAddr>,
    token: &str,
) -> Result<Ws, String> {
    let limit = shared.config.io_timeout;
    let tcp = if gateway.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    if let Some(source) = source {
        tcp.bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind: {}", e.kind()))?;
    }
    if socket.slow {
        // Little room in the kernel, so a slow reader pushes back at once.
        let _ = tcp.set_recv_buffer_size(4096);
    }
    let stream = timeout(limit, tcp.connect(gateway))
        .await
        .map_err(|_| "connect: timeout".to_owned())?
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let path = match socket.thread {
        Some(t) => format!("/ws/chat/{}/", shared.threads[t].id),
        None => "/ws/chat/".to_owned(),
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096 + shared.config.message_size.max(1024))
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20));
    let (mut ws, _) = timeout(
        limit,
        client_async_with_config(format!("ws://{gateway}{path}"), stream, Some(ws_config)),
    )
    .await
    .map_err(|_| "handshake: timeout".to_owned())?
    .map_err(|e| match e {
        tungstenite::Error::Http(response) => format!("http {}", response.status().as_u16()),
        tungstenite::Error::Io(e) => format!("handshake: {}", e.kind()),
        other => format!("handshake: {other}"),
    })?;
    let auth = json!({"type": "auth", "token": token}).to_string();
    timeout(limit, ws.send(Message::Text(auth.into())))
        .await
        .map_err(|_| "auth: write timeout".to_owned())?
        .map_err(|_| "auth: write failed".to_owned())?;
    let answer = timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let kind = serde_json::from_str::<Frame>(&text)
                        .map(|f| f.kind.into_owned())
                        .unwrap_or_default();
                    return if kind == "auth_ok" {
                        Ok(())
                    } else {
                        Err(format!("auth: {kind} frame"))
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!(
                        "auth: closed {}",
                        frame.map_or(1005, |f| u16::from(f.code))
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err("auth: connection lost".to_owned()),
            }
        }
    })
    .await
    .map_err(|_| "auth: timeout".to_owned())?;
    answer.map(|()| ws)
}

async fn write_loop(
    shared: Arc<Shared>,
    socket: Arc<SocketState>,
    index: usize,
    sink: Sink,
    mut start_rx: watch::Receiver<Option<(Instant, Instant)>>,
    mut stop_rx: watch::Receiver<bool>,
    total_senders: usize,
) {
    struct Done<'a>(&'a Counters);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.writers.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _done = Done(&shared.counters);
    let sender = &socket.senders[index];
    let Some((t0, send_end)) = (match start_rx.wait_for(Option::is_some).await {
        Ok(start) => *start,
        Err(_) => None,
    }) else {
        return;
    };
    let config = &shared.config;
    let thread_id = &shared.threads[sender.thread].id;
    let on_user_socket = socket.thread.is_none();
    // Open loop: this sender's share of the rate, phase-shifted so senders
    // do not all fire at once.
    let (period, mut next) = match config.mode {
        Mode::Open { rate, .. } => {
            let period = Duration::from_secs_f64(total_senders as f64 / rate);
            let offset = period.mul_f64(sender.global as f64 / total_senders.max(1) as f64);
            (period, t0 + offset)
        }
        _ => (Duration::ZERO, t0),
    };
    sleep_until(next.min(send_end)).await;
    let mut n: u64 = 0;
    let mut rejected_seen = 0;
    loop {
        if *stop_rx.borrow() || Instant::now() >= send_end {
            return;
        }
        match config.mode {
            Mode::Closed { .. } => {
                tokio::select! {
                    permit = sender.window.acquire() => match permit {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    },
                    () = sleep_until(send_end) => return,
                    _ = stop_rx.changed() => return,
                }
                // After a refusal, wait a little rather than spin.
                let rejected = sender.rejected.load(Ordering::Acquire);
                if rejected != rejected_seen {
                    rejected_seen = rejected;
                    sleep(Duration::from_millis(20)).await;
                }
            }
            Mode::Open {
                max_outstanding, ..
            } => {
                tokio::select! {
                    () = sleep_until(next) => {}
                    _ = stop_rx.changed() => return,
                }
                if next >= send_end {
                    return;
                }
                next += period;
                // Far behind (the writer was blocked): skip the missed turns.
                let now = Instant::now();
                while next + Duration::from_secs(1) < now {
                    next += period;
                    shared.counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                if sender.outstanding() >= max_outstanding as u64 {
                    shared.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            Mode::Idle { .. } => return,
        }
        if Instant::now() >= send_end {
            return;
        }
        let sent_us = shared.now_us();
        let mut frame = json!({
            "type": "chat_message",
            "content": content(sent_us, sender.global, n, config.message_size),
            "client_msg_id": format!("{index}.{}.{n}", sender.global),
        });
        if on_user_socket {
            frame["thread_id"] = Value::String(thread_id.clone());
        }
        n += 1;
        sender.sent.fetch_add(1, Ordering::AcqRel);
        let message = Message::Text(frame.to_string().into());
        let written = timeout(config.io_timeout, async {
            sink.lock().await.send(message).await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            // The frame may or may not have left; it stays unanswered.
            return;
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    socket: Arc<SocketState>,
    mut stream: SplitStream<Ws>,
    sink: Sink,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut samples = Samples::default();
    let slow_delay = shared.config.slow_read_delay;
    let closed_by_server = loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = stop_rx.changed() => break None,
        };
        match frame {
            Some(Ok(Message::Text(text))) => {
                on_frame(&shared, &socket, &text, &mut samples);
                if samples.ack.len() + samples.delivery.len() >= Samples::FLUSH_AT {
                    samples.flush(&shared);
                }
                if socket.slow {
                    tokio::select! {
                        () = sleep(slow_delay) => {}
                        _ = stop_rx.changed() => break None,
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break Some(
                    frame.map_or_else(|| "1005".to_owned(), |f| u16::from(f.code).to_string()),
                );
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break Some("abnormal".to_owned()),
        }
    };
    samples.flush(&shared);
    match closed_by_server {
        Some(code) => {
            socket.closed.store(true, Ordering::Release);
            if socket.slow {
                if code == "4008" {
                    shared
                        .counters
                        .slow_closed_4008
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    Shared::count(&shared.closes, format!("slow reader {code}"));
                }
            } else {
                Shared::count(&shared.closes, code);
            }
            // Stop this socket's senders.
            for sender in &socket.senders {
                sender.window.close();
            }
        }
        None => {
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }));
            let _ = timeout(Duration::from_secs(1), async {
                sink.lock().await.send(close).await
            })
            .await;
        }
    }
}

fn on_frame(shared: &Shared, socket: &SocketState, text: &str, samples: &mut Samples) {
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        Shared::count(&shared.errors, "unparsable frame");
        return;
    };
    let now_us = shared.now_us();
    match frame.kind.as_ref() {
        "chat_message" => {
            let (Some(thread_id), Some(seq)) = (frame.thread_id.as_deref(), frame.seq) else {
                return;
            };
            let Some(track) = shared
                .thread_index
                .get(thread_id)
                .and_then(|&t| socket.track(t))
            else {
                return;
            };
            if socket.slow {
                shared
                    .counters
                    .slow_delivered
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
                if shared.in_window(now_us) {
                    shared
                        .counters
                        .delivered_measured
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            let last = track.last.load(Ordering::Acquire);
            if seq == last + 1 {
                track.last.store(seq, Ordering::Release);
            } else if seq > last + 1 {
                shared.counters.out_of_order.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut missing) = track.missing.lock() {
                    missing.push((last + 1, seq - 1));
                }
                track.last.store(seq, Ordering::Release);
            } else {
                // At or below the last: a late one filling a gap, or a duplicate.
                let mut filled = false;
                if let Ok(mut missing) = track.missing.lock()
                    && let Some(i) = missing.iter().position(|&(a, b)| a <= seq && seq <= b)
                {
                    let (a, b) = missing.remove(i);
                    if a < seq {
                        missing.push((a, seq - 1));
                    }
                    if seq < b {
                        missing.push((seq + 1, b));
                    }
                    filled = true;
                }
                if filled {
                    shared.counters.out_of_order.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.counters.duplicated.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let MessageField::Object(message) = &frame.message
                && let Some(sent) = message.content.as_deref().and_then(sent_at)
                && sent >= shared.measure_from.load(Ordering::Relaxed)
                && !socket.slow
            {
                samples.delivery.push(now_us.saturating_sub(sent));
            }
        }
        "ack" => {
            let Some(sender) = frame
                .client_msg_id
                .as_deref()
                .and_then(|id| id.split('.').next()?.parse::<usize>().ok())
                .and_then(|i| socket.senders.get(i))
            else {
                Shared::count(&shared.errors, "ack for an unknown message");
                return;
            };
            sender.acked.fetch_add(1, Ordering::AcqRel);
            sender.window.add_permits(1);
            if shared.in_window(now_us) {
                shared
                    .counters
                    .acked_measured
                    .fetch_add(1, Ordering::Relaxed);
            }
            if let MessageField::Object(message) = &frame.message {
                if let Some(seq) = message.seq {
                    let thread = &shared.threads[sender.thread];
                    if let Ok(mut acked) = thread.acked.lock() {
                        acked.push(seq);
                    }
                    thread.max_acked.fetch_max(seq, Ordering::AcqRel);
                }
                if let Some(sent) = message.content.as_deref().and_then(sent_at)
                    && sent >= shared.measure_from.load(Ordering::Relaxed)
                {
                    samples.ack.push(now_us.saturating_sub(sent));
                }
            }
        }
        "error" => {
            Shared::count(&shared.errors, frame.code.as_deref().unwrap_or("(no code)"));
            if let Some(sender) = frame
                .client_msg_id
                .as_deref()
                .and_then(|id| id.split('.').next()?.parse::<usize>().ok())
                .and_then(|i| socket.senders.get(i))
            {
                sender.rejected.fetch_add(1, Ordering::AcqRel);
                sender.window.add_permits(1);
            }
        }
        _ => {}
    }
}

fn summarise(
    shared: &Shared,
    sockets: &[Arc<SocketState>],
    window: Option<(Instant, Instant)>,
    report: &mut Report,
) {
    let c = &shared.counters;
    report.sockets_open = sockets
        .iter()
        .filter(|s| s.open.load(Ordering::Acquire))
        .count() as u64;
    report.connect_failures = c.connect_failures.load(Ordering::Relaxed);
    report.connect_failure_reasons = shared
        .connect_failures
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    report.closes = shared.closes.lock().map(|m| m.clone()).unwrap_or_default();
    report.error_frames = shared.errors.lock().map(|m| m.clone()).unwrap_or_default();
    report.slow_closed_4008 = c.slow_closed_4008.load(Ordering::Relaxed);
    report.slow_delivered = c.slow_delivered.load(Ordering::Relaxed);
    report.delivered = c.delivered.load(Ordering::Relaxed);
    report.duplicated = c.duplicated.load(Ordering::Relaxed);
    report.out_of_order = c.out_of_order.load(Ordering::Relaxed);
    report.skipped = c.skipped.load(Ordering::Relaxed);
    for sender in sockets.iter().flat_map(|s| s.senders.iter()) {
        report.sent += sender.sent.load(Ordering::Acquire);
        report.acked += sender.acked.load(Ordering::Acquire);
        report.rejected += sender.rejected.load(Ordering::Acquire);
        report.unacked += sender.outstanding();
    }
    // Losses: on every opened socket but slow readers, each acknowledged
    // seq of its threads must have arrived.
    let acked: Vec<Vec<i64>> = shared
        .threads
        .iter()
        .map(|t| t.acked.lock().map(|a| a.clone()).unwrap_or_default())
        .collect();
    let mut lost_messages: HashSet<(usize, i64)> = HashSet::new();
    for socket in sockets
        .iter()
        .filter(|s| !s.slow && s.open.load(Ordering::Acquire))
    {
        for track in &socket.tracks {
            let last = track.last.load(Ordering::Acquire);
            let missing = track.missing.lock().map(|m| m.clone()).unwrap_or_default();
            for &seq in &acked[track.thread] {
                if seq > last || missing.iter().any(|&(a, b)| a <= seq && seq <= b) {
                    report.lost += 1;
                    lost_messages.insert((track.thread, seq));
                }
            }
        }
    }
    report.lost_messages = lost_messages.len() as u64;
    if let Some((from, to)) = window {
        let seconds = to.duration_since(from).as_secs_f64();
        report.measured_seconds = seconds;
        if seconds > 0.0 {
            report.acked_per_second = c.acked_measured.load(Ordering::Relaxed) as f64 / seconds;
            report.delivered_per_second =
                c.delivered_measured.load(Ordering::Relaxed) as f64 / seconds;
        }
    }
    if let Ok(h) = shared.ack_latency.lock() {
        report.ack_latency = Latency::of(&h);
    }
    if let Ok(h) = shared.delivery_latency.lock() {
        report.delivery_latency = Latency::of(&h);
    }
}

// ---------------------------------------------------------------- threads

async fn create_threads(
    config: &Config,
    tokens: &Arc<Vec<String>>,
    participants: &[Vec<usize>],
) -> Vec<Result<(String, i64), String>> {
    let limit = Arc::new(Semaphore::new(16));
    let mut calls = JoinSet::new();
    for (t, users) in participants.iter().enumerate() {
        let limit = limit.clone();
        let gateway = config.gateways[t % config.gateways.len()];
        let token = tokens[users[0]].clone();
        let body = json!({
            "participants": users[1..].iter().map(|&u| user_name(config, u)).collect::<Vec<_>>(),
            "job_id": format!("load-{}-{t}", config.run_id),
        })
        .to_string();
        let io = config.io_timeout;
        calls.spawn(async move {
            let _permit = limit.acquire().await;
            let mut last_error = String::new();
            for attempt in 0..5u32 {
                match http_call(
                    gateway,
                    "POST",
                    "/api/chat/threads/",
                    Some(&token),
                    Some(&body),
                    io,
                )
                .await
                {
                    Ok((200 | 201, body)) => {
                        let thread: Value = serde_json::from_str(&body).unwrap_or_default();
                        return match thread["id"].as_str() {
                            Some(id) => {
                                Ok((t, id.to_owned(), thread["last_seq"].as_i64().unwrap_or(0)))
                            }
                            None => Err((t, format!("no id in {body}"))),
                        };
                    }
                    Ok((429 | 502 | 503, body)) => last_error = body,
                    Ok((status, body)) => return Err((t, format!("{status}: {body}"))),
                    Err(e) => last_error = e,
                }
                sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err((t, last_error))
        });
    }
    let mut results: Vec<Result<(String, i64), String>> = (0..participants.len())
        .map(|_| Err("not run".to_owned()))
        .collect();
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(Ok((t, id, seq))) => results[t] = Ok((id, seq)),
            Ok(Err((t, e))) => results[t] = Err(e),
            Err(_) => {}
        }
    }
    results
}

// ---------------------------------------------------------------- /proc

/// Samples watched processes' CPU time and resident memory every 250 ms
/// while the run goes.
struct Watcher {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Readings>>,
}

/// Each watched process with its CPU readings.
type Readings = Vec<(ProcessFigures, Vec<Sample>)>;

/// One reading of a process: when, CPU ticks so far.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    ticks: u64,
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
/// At most this many samples per process (over an hour at 4 a second).
const MAX_SAMPLES: usize = 20_000;

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3; utime 14 and stime 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Watcher {
    fn start(watch: &[(String, u32)]) -> Watcher {
        if watch.is_empty() {
            return Watcher {
                stop: None,
                task: None,
            };
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let watch = watch.to_vec();
        let task = tokio::spawn(async move {
            let mut figures: Readings = watch
                .iter()
                .map(|(name, pid)| {
                    let figures = ProcessFigures {
                        name: name.clone(),
                        pid: *pid,
                        readable: true,
                        ..ProcessFigures::default()
                    };
                    (figures, Vec::new())
                })
                .collect();
            loop {
                let at = Instant::now();
                for (f, samples) in &mut figures {
                    match (rss_kib(f.pid), cpu_ticks(f.pid)) {
                        (Some(rss), Some(ticks)) => {
                            f.rss_max_kib = f.rss_max_kib.max(rss);
                            f.rss_end_kib = rss;
                            if samples.len() < MAX_SAMPLES {
                                samples.push(Sample { at, ticks });
                            }
                        }
                        _ => f.readable = false,
                    }
                }
                tokio::select! {
                    () = sleep(Duration::from_millis(250)) => {}
                    _ = &mut stopped => break,
                }
            }
            figures
        });
        Watcher {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops sampling; CPU time over the measured window is the difference
    /// between the first sample in it and the last.
    async fn finish(mut self, window: Option<(Instant, Instant)>) -> Vec<ProcessFigures> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Vec::new();
        };
        let Ok(Ok(figures)) = timeout(Duration::from_secs(2), task).await else {
            return Vec::new();
        };
        figures
            .into_iter()
            .map(|(mut f, samples)| {
                if let Some((from, to)) = window {
                    let inside: Vec<&Sample> = samples
                        .iter()
                        .filter(|s| s.at >= from && s.at <= to)
                        .collect();
                    if let (Some(first), Some(last)) = (inside.first(), inside.last()) {
                        f.cpu_seconds =
                            last.ticks.saturating_sub(first.ticks) as f64 / TICKS_PER_SECOND;
                        let seconds = last.at.duration_since(first.at).as_secs_f64();
                        if seconds > 0.0 {
                            f.cpu_percent = 100.0 * f.cpu_seconds / seconds;
                        }
                    }
                }
                f
            })
            .collect()
    }
}
