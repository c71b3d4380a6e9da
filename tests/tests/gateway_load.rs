//! The gateway under load through its public interface only, with the
//! load generator of `system_tests::load` run in-process against real
//! chat-core and gateway processes.
//!
//! The regression: with PostgreSQL and Redis, two-person threads, one
//! socket per participant and a closed loop of unacknowledged messages per
//! sender, the gateway used to wedge after a few seconds: every sender's
//! last messages were never acknowledged nor delivered, and from then on
//! `/readyz` and every REST call hung until restart (socket tasks awaiting
//! a unary chat-core call did not read their own `Subscribe` stream, and
//! the unread events filled the shared HTTP/2 connection's window). Every
//! step here has a client-side bound, so a wedged gateway fails the test
//! instead of hanging it.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde_json::{Value, json};
use system_tests::{
    PgDatabase, Process, addr_in, binary,
    load::{self, Config, Mode, Report, SocketKind, http_call},
};

const SECRET: &str = "gateway-load-secret";
/// How long the gateway may take to answer one REST call afterwards.
const ANSWER: Duration = Duration::from_secs(5);

fn start_core(dir: &Path, env: &[(&str, &str)]) -> (Process, String) {
    let mut all = vec![
        ("JWT_SECRET", SECRET),
        ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
        ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
        ("RUST_LOG", "warn,chat_core=info"),
        // The load's users hold many sockets and create many threads.
        ("CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER", "1000000"),
        ("CHAT_CORE_THREAD_CREATES_PER_MINUTE", "1000000"),
    ];
    all.extend_from_slice(env);
    let mut process = Process::start(&binary("chat-core"), &[], dir, &all);
    let line = process.wait_for_line("chat-core listening", Duration::from_secs(60));
    let addr = addr_in(&line, "grpc");
    (process, format!("http://{addr}"))
}

/// A gateway whose per-user and per-address limits are out of the way of
/// the load (it all comes from one address).
fn start_gateway(dir: &Path, core: &str) -> (Process, SocketAddr) {
    let mut process = Process::start(
        &binary("chat-gateway"),
        &[],
        dir,
        &[
            ("CHAT_CORE_URL", core),
            ("JWT_SECRET", SECRET),
            ("GATEWAY_ADDR", "127.0.0.1:0"),
            ("GATEWAY_SEND_RATE", "1000000"),
            ("GATEWAY_SEND_BURST", "1000000"),
            ("GATEWAY_CONNECT_RATE", "1000000"),
            ("GATEWAY_CONNECT_BURST", "1000000"),
            ("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", "1000000"),
            ("GATEWAY_MAX_SOCKETS_PER_USER", "1000000"),
            ("RUST_LOG", "warn,chat_gateway=info"),
        ],
    );
    let line = process.wait_for_line("chat-gateway listening", Duration::from_secs(60));
    (process, addr_in(&line, "addr"))
}

/// What the report and the gateway's answers afterwards got wrong.
fn problems(report: &Report) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    expect(!report.deadline_hit, "the run hit its deadline");
    expect(report.thread_create_failures == 0, "threads not created");
    expect(report.connect_failures == 0, "sockets failed to open");
    expect(report.closes.is_empty(), "sockets closed by the gateway");
    expect(report.sent > 0, "nothing was sent");
    expect(report.unacked == 0, "sends never answered");
    expect(report.rejected == 0, "sends refused");
    expect(report.acked == report.sent, "not every send acknowledged");
    expect(report.error_frames.is_empty(), "error frames");
    expect(report.lost == 0, "acknowledged messages not delivered");
    expect(report.duplicated == 0, "duplicated deliveries");
    expect(report.out_of_order == 0, "out-of-order deliveries");
    expect(
        report.delivered >= 2 * report.acked,
        "fewer deliveries than two participants per message",
    );
    problems
}

/// The gateway still answers: `/readyz`, listing and creating threads,
/// each within `ANSWER` (asked at once, so a wedged gateway costs one
/// `ANSWER`, not three).
async fn still_answers(gateway: SocketAddr, problems: &mut Vec<String>) {
    let token = chat_auth::TokenIssuer::new(SECRET.as_bytes(), None, None)
        .issue(
            "after-load",
            chat_auth::Role::User,
            Duration::from_secs(600),
        )
        .expect("token");
    let body = json!({"participants": ["after-load-peer"]}).to_string();
    let (ready, list, create) = tokio::join!(
        http_call(gateway, "GET", "/readyz", None, None, ANSWER),
        http_call(
            gateway,
            "GET",
            "/api/chat/threads/",
            Some(&token),
            None,
            ANSWER
        ),
        http_call(
            gateway,
            "POST",
            "/api/chat/threads/",
            Some(&token),
            Some(&body),
            ANSWER
        ),
    );
    for (call, answer, expected) in [
        ("GET /readyz", ready, 200),
        ("GET /api/chat/threads/", list, 200),
        ("POST /api/chat/threads/", create, 201),
    ] {
        match answer {
            Ok((status, _)) if status == expected => {}
            Ok((status, body)) => problems.push(format!("{call}: {status} {body}")),
            Err(err) => problems.push(format!("{call}: {err}")),
        }
    }
}

/// The last lines of a log, access-log lines left out.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" request request_id="))
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_load_on_postgres_and_redis_never_wedges_the_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = PgDatabase::create(dir.path());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let prefix = format!("load-{}-{nanos:x}:", std::process::id());
    let (core, core_url) = start_core(
        dir.path(),
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_CHANNEL_PREFIX", prefix.as_str()),
        ],
    );
    let (gateway_process, gateway) = start_gateway(dir.path(), &core_url);

    let config = Config {
        gateways: vec![gateway],
        secret: SECRET.to_owned(),
        threads: 50,
        participants: 2,
        socket_kind: SocketKind::Thread,
        mode: Mode::Closed { window: 4 },
        // Large messages fill the gateway's upstream connection window
        // within a few seconds when events go unread.
        message_size: 3000,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(6),
        // Room for what is in flight at the end on a busy machine; a
        // healthy gateway is drained long before.
        drain: Duration::from_secs(10),
        slow_readers: 4,
        slow_read_delay: Duration::from_secs(1),
        io_timeout: Duration::from_secs(5),
        deadline: Some(Duration::from_secs(40)),
        watch: vec![("gateway".to_owned(), gateway_process.pid())],
        ..Config::default()
    };
    let report = load::run(config).await.expect("a valid configuration");
    eprintln!("load report: {report}");
    let mut problems = problems(&report);
    still_answers(gateway, &mut problems).await;
    assert!(
        problems.is_empty(),
        "{problems:#?}\nreport: {report}\ngateway log:\n{}\nchat-core log:\n{}",
        tail(&gateway_process.log()),
        tail(&core.log()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_on_the_embedded_default_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No DATABASE_URL: the embedded SQLite file under ./data.
    let (core, core_url) = start_core(dir.path(), &[]);
    let (gateway_process, gateway) = start_gateway(dir.path(), &core_url);

    // Every-thread sockets: six users, each in three of six threads.
    let config = Config {
        gateways: vec![gateway],
        secret: SECRET.to_owned(),
        users: 6,
        threads: 6,
        participants: 3,
        socket_kind: SocketKind::User,
        mode: Mode::Closed { window: 2 },
        message_size: 200,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(2),
        drain: Duration::from_secs(5),
        slow_readers: 1,
        io_timeout: Duration::from_secs(5),
        deadline: Some(Duration::from_secs(30)),
        ..Config::default()
    };
    let report = load::run(config).await.expect("a valid configuration");
    eprintln!("load report: {report}");
    let report_json = report.to_json();
    assert_eq!(report_json["sockets_open"], Value::from(7), "{report}");
    let mut problems = problems(&report);
    // Three participants: each message reaches three sockets.
    if report.delivered < 3 * report.acked {
        problems.push("fewer deliveries than participants".to_owned());
    }
    still_answers(gateway, &mut problems).await;
    assert!(
        problems.is_empty(),
        "{problems:#?}\nreport: {report}\ngateway log:\n{}\nchat-core log:\n{}",
        tail(&gateway_process.log()),
        tail(&core.log()),
    );
}
