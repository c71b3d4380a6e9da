//! Fault injection with real processes: two chat-core replicas on a
//! PostgreSQL and a Redis of the test's own, two gateways each listing both
//! replicas, and clients that behave like the web client (they resume with
//! `since_seq` after a lost socket and send un-acknowledged messages again
//! with the same `client_msg_id`) sending about 200 messages a second
//! through this schedule:
//!
//! 1. `kill -9` of one replica, which comes back a little later;
//! 2. a graceful restart (SIGTERM) of the other;
//! 3. a Redis restart;
//! 4. a PostgreSQL restart;
//! 5. `kill -9` of a gateway (its clients move to the other one), which
//!    comes back.
//!
//! It asserts what users see: nothing acknowledged lost, nothing delivered
//! twice or out of order, no error frame while a single replica dies or
//! restarts, acknowledgement p99 under 250 ms over the whole run, and the
//! Redis and PostgreSQL restarts survived (sends acknowledged after them).
//! The figures are printed, for the README's operations section.
//!
//! A second test checks chat-core alone against its database: while
//! PostgreSQL is down calls fail fast with `UNAVAILABLE`, and once it is
//! back they are served within a second.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use system_tests::{
    Process, addr_in, binary,
    faults::{OwnPostgres, OwnRedis},
    free_port, restartable_port, token,
};
use tokio::{
    net::TcpStream,
    time::{Instant, sleep, timeout},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SECRET: &str = "fault-injection-secret";

/// The tests of this file run one at a time: each starts a database server
/// and restarts it, and the latency one measures must not be the other's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Threads in the run; each has a sender and a reader.
const THREADS: usize = 4;
/// Messages per second per sender: 200 in all.
const RATE_PER_SENDER: u64 = 50;
/// At most this many messages unacknowledged per sender, like a browser's
/// outbox.
const WINDOW: usize = 200;

fn start_core(dir: &Path, db: &str, redis: &str, port: u16) -> Process {
    let grpc = format!("127.0.0.1:{port}");
    let mut process = Process::start(
        &binary("chat-core"),
        &[],
        dir,
        &[
            ("DATABASE_URL", db),
            ("REDIS_URL", redis),
            ("JWT_SECRET", SECRET),
            ("CHAT_CORE_GRPC_ADDR", grpc.as_str()),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
            ("SHUTDOWN_GRACE_SECONDS", "5"),
        ],
    );
    process.wait_for_line("chat-core listening", Duration::from_secs(60));
    process
}

fn start_gateway(dir: &Path, cores: &str, port: u16) -> Process {
    let addr = format!("127.0.0.1:{port}");
    let mut process = Process::start(
        &binary("chat-gateway"),
        &[],
        dir,
        &[
            ("CHAT_CORE_URL", cores),
            ("JWT_SECRET", SECRET),
            ("GATEWAY_ADDR", addr.as_str()),
            ("GATEWAY_UPSTREAM_TIMEOUT_MS", "3000"),
            ("GATEWAY_SEND_RATE", "1000"),
            ("GATEWAY_SEND_BURST", "1000"),
        ],
    );
    let line = process.wait_for_line("chat-gateway listening", Duration::from_secs(60));
    assert_eq!(addr_in(&line, "addr").port(), port);
    process
}

/// What the run is going through, so every error frame is filed under the
/// fault it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Steady,
    ReplicaKilled,
    ReplicaRestarted,
    Redis,
    Postgres,
    Gateway,
    Drain,
}

#[derive(Default)]
struct Shared {
    phase: Option<Phase>,
    /// Error frames per phase, with their codes.
    errors: BTreeMap<Phase, Vec<String>>,
    /// Acknowledgement latencies (first send to ack) in ms, per phase.
    acks: BTreeMap<Phase, Vec<f64>>,
    /// When the current phase began, and per phase the slowest ack: its
    /// latency and when it was sent, in ms after the phase began.
    phase_began: Option<Instant>,
    slowest: BTreeMap<Phase, (f64, f64)>,
    /// Sockets that had to be opened again.
    reconnects: u32,
    /// Delivery faults: a seq skipped, repeated or going back.
    disorder: Vec<String>,
}

type State = Arc<Mutex<Shared>>;

fn phase(state: &State) -> Phase {
    state.lock().expect("state").phase.unwrap_or(Phase::Steady)
}

/// One participant's socket on one thread, as the web client keeps it.
struct Client {
    name: String,
    token: String,
    thread: String,
    gateways: Vec<SocketAddr>,
    preferred: usize,
    /// The last seq seen; the socket resumes after it.
    last_seq: i64,
    /// Contents (keys) of the messages seen, in seq order.
    seen: Vec<String>,
    sender: bool,
    next_key: u64,
    /// Sent and not yet acknowledged: key → first send.
    unacked: BTreeMap<u64, Instant>,
    acked: HashSet<String>,
    state: State,
}

impl Client {
    fn key(&self, n: u64) -> String {
        format!("{}-{n}", self.name)
    }

    /// Opens the socket on the preferred gateway, or the next one that
    /// answers, resuming after the last seq seen; then sends again what
    /// is unacknowledged.
    async fn connect(&mut self, again: bool) -> Socket {
        if again {
            self.state.lock().expect("state").reconnects += 1;
        }
        loop {
            let gateway = self.gateways[self.preferred % self.gateways.len()];
            let url = format!(
                "ws://{gateway}/ws/chat/{}/?since_seq={}",
                self.thread, self.last_seq
            );
            let opened = timeout(Duration::from_secs(5), async {
                let (mut socket, _) = connect_async(url).await.ok()?;
                socket
                    .send(Message::Text(
                        json!({"type": "auth", "token": self.token})
                            .to_string()
                            .into(),
                    ))
                    .await
                    .ok()?;
                loop {
                    match socket.next().await? {
                        Ok(Message::Text(text)) => {
                            let frame: Value = serde_json::from_str(&text).ok()?;
                            if frame["type"] == "auth_ok" {
                                return Some(socket);
                            }
                        }
                        Ok(Message::Close(_)) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .ok()
            .flatten();
            if let Some(mut socket) = opened {
                let keys: Vec<u64> = self.unacked.keys().copied().collect();
                for key in keys {
                    if self.send(&mut socket, key).await.is_err() {
                        break;
                    }
                }
                return socket;
            }
            // That gateway is gone: the next one (a load balancer would).
            self.preferred += 1;
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn send(&self, socket: &mut Socket, key: u64) -> Result<(), ()> {
        let key = self.key(key);
        socket
            .send(Message::Text(
                json!({"type": "chat_message", "content": key, "client_msg_id": key})
                    .to_string()
                    .into(),
            ))
            .await
            .map_err(|_| ())
    }

    /// Handles one frame; an error frame's message goes into `resend`.
    fn frame(&mut self, frame: &Value, resend: &mut Vec<u64>) {
        match frame["type"].as_str() {
            Some("chat_message") => {
                let seq = frame["seq"].as_i64().unwrap_or(-1);
                let content = frame["message"]["content"].as_str().unwrap_or_default();
                if seq == self.last_seq + 1 {
                    self.last_seq = seq;
                    self.seen.push(content.to_owned());
                } else {
                    self.state.lock().expect("state").disorder.push(format!(
                        "{}: seq {seq} after {} ({content})",
                        self.name, self.last_seq
                    ));
                    self.last_seq = self.last_seq.max(seq);
                }
            }
            Some("ack") => {
                let key = frame["client_msg_id"].as_str().unwrap_or_default();
                let number = key.rsplit('-').next().and_then(|n| n.parse::<u64>().ok());
                if let Some(sent) = number.and_then(|n| self.unacked.remove(&n)) {
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    let phase = phase(&self.state);
                    let mut state = self.state.lock().expect("state");
                    state.acks.entry(phase).or_default().push(ms);
                    let sent_at = state
                        .phase_began
                        .map(|began| sent.saturating_duration_since(began).as_secs_f64() * 1000.0)
                        .unwrap_or(0.0);
                    let slowest = state.slowest.entry(phase).or_insert((0.0, 0.0));
                    if ms > slowest.0 {
                        *slowest = (ms, sent_at);
                    }
                    self.acked.insert(key.to_owned());
                }
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                let phase = phase(&self.state);
                self.state
                    .lock()
                    .expect("state")
                    .errors
                    .entry(phase)
                    .or_default()
                    .push(format!("{code}: {}", frame["message"]));
                let number = frame["client_msg_id"]
                    .as_str()
                    .and_then(|k| k.rsplit('-').next())
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(number) = number.filter(|n| self.unacked.contains_key(n)) {
                    resend.push(number);
                }
            }
            _ => {}
        }
    }

    /// Sends (when a sender) until `stop`, then until everything is
    /// acknowledged and `expected()` messages were seen.
    async fn run(mut self, stop: Instant, expected: Arc<Mutex<i64>>) -> Client {
        let mut socket = self.connect(false).await;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SENDER));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let give_up = stop + Duration::from_secs(60);
        let mut resend: Vec<u64> = Vec::new();
        let mut retry_at = Instant::now() + Duration::from_secs(3600);
        loop {
            let sending = self.sender && Instant::now() < stop;
            if !sending && self.unacked.is_empty() {
                // Every key acknowledged once is one message of the thread:
                // the sender knows how many the thread holds.
                let target = if self.sender {
                    let sent = self.acked.len() as i64;
                    *expected.lock().expect("expected") = sent;
                    sent
                } else {
                    *expected.lock().expect("expected")
                };
                if target > 0 && self.last_seq >= target {
                    return self;
                }
            }
            assert!(
                Instant::now() < give_up,
                "{}: not done 60 s after the run ({} unacknowledged, seq {})",
                self.name,
                self.unacked.len(),
                self.last_seq
            );
            tokio::select! {
                _ = tick.tick(), if sending && self.unacked.len() < WINDOW => {
                    let key = self.next_key;
                    self.next_key += 1;
                    self.unacked.insert(key, Instant::now());
                    if self.send(&mut socket, key).await.is_err() {
                        socket = self.connect(true).await;
                    }
                }
                () = tokio::time::sleep_until(retry_at), if !resend.is_empty() => {
                    retry_at = Instant::now() + Duration::from_secs(3600);
                    for key in std::mem::take(&mut resend) {
                        if self.unacked.contains_key(&key) && self.send(&mut socket, key).await.is_err() {
                            socket = self.connect(true).await;
                            break;
                        }
                    }
                }
                message = timeout(Duration::from_secs(2), socket.next()) => match message {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                        let before = resend.len();
                        self.frame(&frame, &mut resend);
                        if resend.len() > before {
                            // As the web client does: a short pause, then again.
                            retry_at = Instant::now() + Duration::from_millis(100);
                        }
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                        socket = self.connect(true).await;
                    }
                    Ok(Some(Ok(_))) => {}
                    // Quiet: keep waiting (the server pings).
                    Err(_) => {}
                },
            }
        }
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_redis_postgres_and_a_gateway_fail_and_users_see_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let postgres = OwnPostgres::start();
    let mut redis = OwnRedis::start(dir.path());
    let db = postgres.create_database(dir.path(), "chat_faults");
    let (port_a, port_b) = (restartable_port(), restartable_port());
    let mut core_a = start_core(dir.path(), &db, &redis.url(), port_a);
    let mut core_b = start_core(dir.path(), &db, &redis.url(), port_b);
    let cores = format!("http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}");
    let (gw_port_1, gw_port_2) = (free_port(), free_port());
    let mut gateway_1 = start_gateway(dir.path(), &cores, gw_port_1);
    let _gateway_2 = start_gateway(dir.path(), &cores, gw_port_2);
    let gateways: Vec<SocketAddr> = [gw_port_1, gw_port_2]
        .iter()
        .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
        .collect();

    let state: State = Arc::default();
    let steady = Duration::from_secs(
        std::env::var("FAULT_TEST_STEADY_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8),
    );
    // The schedule below takes about 6 steady periods plus the faults.
    let run_for = steady * 6 + Duration::from_secs(12);
    let stop = Instant::now() + run_for + Duration::from_secs(5);

    let mut tasks = Vec::new();
    for t in 0..THREADS {
        let (writer, reader) = (format!("w{t}"), format!("r{t}"));
        let writer_token = token(dir.path(), SECRET, &writer);
        let reader_token = token(dir.path(), SECRET, &reader);
        let (status, body) = system_tests::http_post_json(
            gateways[0],
            "/api/chat/threads/",
            &writer_token,
            &json!({"participants": [reader]}).to_string(),
        );
        assert_eq!(status, 201, "{body}");
        let thread = serde_json::from_str::<Value>(&body).expect("JSON")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let target = Arc::new(Mutex::new(0i64));
        for (name, token, sender, preferred) in [
            (writer.clone(), writer_token, true, t),
            (reader.clone(), reader_token, false, t + 1),
        ] {
            let client = Client {
                name,
                token,
                thread: thread.clone(),
                gateways: gateways.clone(),
                preferred,
                last_seq: 0,
                seen: Vec::new(),
                sender,
                next_key: 0,
                unacked: BTreeMap::new(),
                acked: HashSet::new(),
                state: state.clone(),
            };
            tasks.push(tokio::spawn(client.run(stop, target.clone())));
        }
    }

    let set_phase = |phase: Phase| {
        let mut state = state.lock().expect("state");
        state.phase = Some(phase);
        state.phase_began = Some(Instant::now());
    };
    let started = Instant::now();
    sleep(steady).await;

    // 1. A replica dies without warning, and comes back.
    set_phase(Phase::ReplicaKilled);
    core_a.kill();
    sleep(Duration::from_secs(2)).await;
    let _core_a = tokio::task::block_in_place(|| start_core(dir.path(), &db, &redis.url(), port_a));
    sleep(steady).await;

    // 2. The other one restarts gracefully, as in a rolling update.
    set_phase(Phase::ReplicaRestarted);
    let status = tokio::task::block_in_place(|| core_b.terminate(Duration::from_secs(20)));
    assert!(status.success(), "graceful stop: {status}");
    let _core_b = tokio::task::block_in_place(|| start_core(dir.path(), &db, &redis.url(), port_b));
    sleep(steady).await;

    // 3. Redis restarts (pub/sub between the replicas breaks).
    set_phase(Phase::Redis);
    redis.kill();
    sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| redis.start_again());
    sleep(steady).await;

    // 4. PostgreSQL restarts.
    set_phase(Phase::Postgres);
    let down = Instant::now();
    tokio::task::block_in_place(|| {
        postgres.stop();
        postgres.start_again();
    });
    let postgres_down_ms = down.elapsed().as_millis();
    sleep(steady).await;

    // 5. A gateway dies; its sockets move to the other one; it comes back.
    set_phase(Phase::Gateway);
    gateway_1.kill();
    sleep(Duration::from_secs(1)).await;
    let _gateway_1 = tokio::task::block_in_place(|| start_gateway(dir.path(), &cores, gw_port_1));
    sleep(steady).await;
    set_phase(Phase::Steady);
    let faulted_for = started.elapsed();
    sleep(stop.saturating_duration_since(Instant::now())).await;
    set_phase(Phase::Drain);

    // Senders are done once everything is acknowledged and seen; readers
    // once they have seen as many messages as their sender had acked.
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("a client failed"));
    }
    let mut guard = state.lock().expect("state");
    let state = &mut *guard;
    let mut all: Vec<f64> = state.acks.values().flatten().copied().collect();
    let total = all.len();
    let p50 = percentile(&mut all, 50.0);
    let p99 = percentile(&mut all, 99.0);
    let max = all.last().copied().unwrap_or(0.0);
    let mut report = format!(
        "fault run: {total} messages acknowledged over {:.0} s of faults; ack p50 {p50:.1} ms, \
         p99 {p99:.1} ms, max {max:.0} ms; {} sockets reopened; PostgreSQL down for {postgres_down_ms} ms\n",
        faulted_for.as_secs_f64(),
        state.reconnects,
    );
    for (phase, acks) in state.acks.iter_mut() {
        let errors = state.errors.get(phase).map(Vec::len).unwrap_or(0);
        report.push_str(&format!(
            "  {phase:?}: {} acks, p99 {:.1} ms, max {:.0} ms (sent {:.0} ms into the phase), {errors} error frames\n",
            acks.len(),
            percentile(acks, 99.0),
            acks.last().copied().unwrap_or(0.0),
            state.slowest.get(phase).map(|s| s.1).unwrap_or(0.0),
        ));
    }
    eprintln!("{report}");

    // Nothing lost, duplicated or out of order, for sender and reader.
    assert!(state.disorder.is_empty(), "{:?}\n{report}", state.disorder);
    for pair in clients.chunks(2) {
        let (writer, reader) = (&pair[0], &pair[1]);
        for client in [writer, reader] {
            let unique: HashSet<&String> = client.seen.iter().collect();
            assert_eq!(
                unique.len(),
                client.seen.len(),
                "{} saw a message twice\n{report}",
                client.name
            );
            let missing: Vec<&String> = writer
                .acked
                .iter()
                .filter(|key| !unique.contains(key))
                .collect();
            assert!(
                missing.is_empty(),
                "{} lost acknowledged messages {missing:?}\n{report}",
                client.name
            );
            assert_eq!(client.seen.len(), writer.acked.len(), "{report}");
        }
    }
    // No error frame while one replica died or restarted; any error at all
    // is `unavailable`.
    for phase in [Phase::ReplicaKilled, Phase::ReplicaRestarted] {
        assert_eq!(
            state.errors.get(&phase),
            None,
            "error frames while a single replica went away\n{report}"
        );
    }
    for (phase, errors) in &state.errors {
        assert!(
            errors.iter().all(|e| e.starts_with("unavailable")),
            "{phase:?}: {errors:?}"
        );
    }
    // Survived: messages acknowledged after Redis and after PostgreSQL.
    for phase in [Phase::Redis, Phase::Postgres, Phase::Gateway] {
        assert!(
            state.acks.get(&phase).is_some_and(|acks| acks.len() > 100),
            "{phase:?}: too few acknowledgements\n{report}"
        );
    }
    assert!(p99 < 250.0, "ack p99 {p99:.1} ms\n{report}");
}

/// A request with the caller's token and a deadline far beyond what any
/// answer should take.
fn authorized<T>(
    body: T,
    bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request.set_timeout(Duration::from_secs(10));
    request
}

/// One chat-core call, bounded by `limit`: its answer or its code.
async fn core_call<T, F, Fut>(limit: Duration, call: F) -> Result<T, tonic::Code>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match timeout(limit, call()).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => Err(tonic::Code::DeadlineExceeded),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_fails_fast_and_back_serves_within_a_second() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use chat_proto::v1::{
        CreateThreadRequest, ListThreadsRequest, SendMessageRequest,
        chat_service_client::ChatServiceClient,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let postgres = OwnPostgres::start();
    let db = postgres.create_database(dir.path(), "chat_pg_restart");
    let port = free_port();
    let redis_less = "";
    let _core = {
        let grpc = format!("127.0.0.1:{port}");
        let mut process = Process::start(
            &binary("chat-core"),
            &[],
            dir.path(),
            &[
                ("DATABASE_URL", db.as_str()),
                ("REDIS_URL", redis_less),
                ("JWT_SECRET", SECRET),
                ("CHAT_CORE_GRPC_ADDR", grpc.as_str()),
                ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
            ],
        );
        process.wait_for_line("chat-core listening", Duration::from_secs(60));
        process
    };
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token(dir.path(), SECRET, "alice"))
            .parse()
            .expect("metadata");
    let client = ChatServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    let thread = core_call(Duration::from_secs(10), || {
        let mut client = client.clone();
        let request = authorized(
            CreateThreadRequest {
                participants: vec!["bob".into()],
                ..Default::default()
            },
            &bearer,
        );
        async move { client.create_thread(request).await }
    })
    .await
    .expect("thread")
    .thread
    .expect("thread")
    .id;
    let send = |n: u32| {
        let mut client = client.clone();
        let request = authorized(
            SendMessageRequest {
                thread_id: thread.clone(),
                content: format!("m{n}"),
                client_msg_id: Some(format!("m{n}")),
                ..Default::default()
            },
            &bearer,
        );
        async move { client.send_message(request).await }
    };
    let list = || {
        let mut client = client.clone();
        let request = authorized(ListThreadsRequest::default(), &bearer);
        async move { client.list_threads(request).await }
    };
    core_call(Duration::from_secs(10), || send(0))
        .await
        .expect("a send");

    // Sends in flight while the database goes down end UNAVAILABLE (or
    // succeed), never INTERNAL.
    let stopping = std::sync::atomic::AtomicBool::new(false);
    let in_flight = async {
        let mut codes = Vec::new();
        let mut n = 1000;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let sends = futures_util::future::join_all(
                (0..8).map(|i| core_call(Duration::from_secs(10), move || send(n * 10 + i))),
            )
            .await;
            codes.extend(sends.into_iter().filter_map(Result::err));
        }
        codes
    };
    let stop = async {
        sleep(Duration::from_millis(100)).await;
        tokio::task::spawn_blocking({
            let data = postgres.stopper();
            move || data()
        })
        .await
        .expect("stop");
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (codes, ()) = tokio::join!(in_flight, stop);
    assert!(
        codes.iter().all(|code| *code == tonic::Code::Unavailable),
        "{codes:?}"
    );
    eprintln!(
        "{} sends cut off while PostgreSQL stopped, all UNAVAILABLE",
        codes.len()
    );

    // Down: reads and sends fail with UNAVAILABLE, long before a 10 s
    // deadline (the pool waits at most DATABASE_ACQUIRE_TIMEOUT_MS).
    for n in 1..=2 {
        let asked = Instant::now();
        let read = core_call(Duration::from_secs(10), list).await;
        assert_eq!(read.err(), Some(tonic::Code::Unavailable));
        let sent = core_call(Duration::from_secs(10), || send(n)).await;
        assert_eq!(sent.err(), Some(tonic::Code::Unavailable));
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(3), "two calls took {took:?}");
    }

    // Back: served within a second of PostgreSQL accepting connections.
    tokio::task::block_in_place(|| postgres.start_again());
    let back = Instant::now();
    let mut n = 10;
    loop {
        n += 1;
        let read = core_call(Duration::from_secs(2), list).await;
        let sent = core_call(Duration::from_secs(2), || send(n)).await;
        if read.is_ok() && sent.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "not served {:?} after PostgreSQL came back: {:?} {:?}",
            back.elapsed(),
            read.err(),
            sent.err()
        );
        sleep(Duration::from_millis(20)).await;
    }
    let recovered = back.elapsed();
    eprintln!("served again {recovered:?} after PostgreSQL accepted connections");
    // And stays served: no stale connection left in the pool.
    for m in 0..20 {
        core_call(Duration::from_secs(2), list)
            .await
            .unwrap_or_else(|code| panic!("read {m} after recovery: {code:?}"));
        core_call(Duration::from_secs(2), || send(100 + m))
            .await
            .unwrap_or_else(|code| panic!("send {m} after recovery: {code:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_core_says_not_serving_at_once_and_serves_while_it_drains() {
    use chat_proto::v1::{ListThreadsRequest, chat_service_client::ChatServiceClient};
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("chat.db").display());
    let port = free_port();
    let grpc = format!("127.0.0.1:{port}");
    let mut core = Process::start(
        &binary("chat-core"),
        &[],
        dir.path(),
        &[
            ("DATABASE_URL", db.as_str()),
            ("JWT_SECRET", SECRET),
            ("CHAT_CORE_GRPC_ADDR", grpc.as_str()),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
            ("CHAT_CORE_DRAIN_MS", "1500"),
        ],
    );
    core.wait_for_line("chat-core listening", Duration::from_secs(60));
    let url = format!("http://{grpc}");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token(dir.path(), SECRET, "alice"))
            .parse()
            .expect("metadata");
    let mut chat = ChatServiceClient::new(channel);

    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &core.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let next = timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("a status change in time")
        .expect("status")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let told = signalled.elapsed();
    assert!(
        told < Duration::from_millis(500),
        "NOT_SERVING after {told:?}"
    );
    drop(watch);
    // Still serving while it drains: calls already routed to it succeed.
    chat.list_threads(authorized(ListThreadsRequest::default(), &bearer))
        .await
        .expect("served while draining");
    // Then it stops accepting and exits cleanly.
    let exited = tokio::task::block_in_place(|| core.wait(Duration::from_secs(20)));
    assert!(exited.success(), "{exited}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "stopped before the drain was over"
    );
    assert!(
        TcpStream::connect(&grpc).await.is_err(),
        "still accepting after exit"
    );
}
