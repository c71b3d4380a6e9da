//! WebSocket/REST load generator for chat-gateway: creates threads over
//! REST, opens WebSockets, sends `chat_message` frames and checks that
//! every participant's socket receives every acknowledged message once and
//! in seq order. Prints exactly one JSON line with every figure (see
//! `system_tests::load` for what each one means). It speaks only the
//! gateway's public interface, to loopback addresses only.
//!
//! ```text
//! ws-load --gateway 127.0.0.1:8000[,127.0.0.1:8001…] --secret "$JWT_SECRET"
//!     [--threads 50] [--participants 2] [--users 0 (= threads × participants)]
//!     [--sockets-per-user 1] [--user-sockets]
//!     [--window 4 | --rate MSGS_PER_S [--max-outstanding 1000] | --idle SOCKETS]
//!     [--size 100] [--warmup 2] [--duration 10] [--drain 10]   (seconds)
//!     [--slow-readers 0] [--slow-delay-ms 200]
//!     [--source 127.0.0.2,127.0.0.3…] [--watch gateway=PID]…
//!     [--connect-concurrency 256] [--connect-rate 0] [--timeout 10]
//!     [--deadline SECONDS] [--workers N]
//! ```
//!
//! - `--window W`: closed loop, each sender (one per participant and
//!   thread) keeps at most W messages unacknowledged (the default, 4).
//! - `--rate R`: open loop, R messages per second in all; a sender with
//!   `--max-outstanding` unanswered messages skips its turn (`skipped`).
//! - `--idle N`: open N authenticated sockets, hold them for warm-up +
//!   duration, report connect failures and closes; nothing is sent.
//! - `--user-sockets`: every-thread sockets (`/ws/chat/`) instead of one
//!   socket per thread.
//! - `--slow-readers N`: extra sockets reading one frame per
//!   `--slow-delay-ms`; a 4008 close of one is counted in
//!   `slow_closed_4008`, not as a loss.
//! - `--source`: local addresses to bind sockets to, round-robin (more
//!   than ~28,000 sockets to one gateway need several).
//! - `--watch name=pid`: samples the process's CPU time and resident
//!   memory from /proc during the measured window.
//!
//! The gateway limits sends per user, new sockets per address, open
//! connections per address and sockets per user: raise
//! `GATEWAY_SEND_RATE`/`GATEWAY_SEND_BURST`,
//! `GATEWAY_CONNECT_RATE`/`GATEWAY_CONNECT_BURST`,
//! `GATEWAY_MAX_CONNECTIONS_PER_ADDRESS` and `GATEWAY_MAX_SOCKETS_PER_USER`
//! for load, and chat-core's `CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER` and
//! `CHAT_CORE_THREAD_CREATES_PER_MINUTE`. Thousands of sockets also need
//! `ulimit -n` raised here and on the gateway (whose connection cap
//! follows it).
//!
//! Exit status: 0 when the run was clean (everything acknowledged and
//! delivered once, in order, no error frame, failed connect or
//! unexpected close), 1 otherwise, 2 on a usage error.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use system_tests::load::{self, Config, Mode, SocketKind};

fn seconds(value: &str) -> anyhow::Result<Duration> {
    let s: f64 = value.parse().with_context(|| format!("{value}: seconds"))?;
    if !(s.is_finite() && s >= 0.0) {
        bail!("{value}: a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn addresses(value: &str) -> anyhow::Result<Vec<SocketAddr>> {
    value
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(|a| {
            let a = a
                .trim()
                .trim_start_matches("http://")
                .trim_start_matches("ws://");
            let a = a.trim_end_matches('/');
            let a = a
                .strip_prefix("localhost:")
                .map_or(a.to_owned(), |port| format!("127.0.0.1:{port}"));
            a.parse::<SocketAddr>()
                .with_context(|| format!("{a}: expected IP:PORT"))
        })
        .collect()
}

fn parse() -> anyhow::Result<(Config, Option<usize>)> {
    let mut config = Config {
        secret: std::env::var("JWT_SECRET").unwrap_or_default(),
        ..Config::default()
    };
    let mut gateways = Vec::new();
    let mut workers = None;
    let mut window = None;
    let mut rate = None;
    let mut idle = None;
    let mut max_outstanding = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--user-sockets" {
            config.socket_kind = SocketKind::User;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            bail!("usage: see the doc comment at the top of tests/src/bin/ws-load.rs");
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--gateway" | "--gateways" => gateways.extend(addresses(&value)?),
            "--secret" => config.secret = value,
            "--users" => config.users = value.parse()?,
            "--threads" => config.threads = value.parse()?,
            "--participants" => config.participants = value.parse()?,
            "--sockets-per-user" => config.sockets_per_user = value.parse()?,
            "--window" => window = Some(value.parse()?),
            "--rate" => rate = Some(value.parse()?),
            "--max-outstanding" => max_outstanding = value.parse()?,
            "--idle" => idle = Some(value.parse()?),
            "--size" => config.message_size = value.parse()?,
            "--warmup" => config.warmup = seconds(&value)?,
            "--duration" => config.duration = seconds(&value)?,
            "--drain" => config.drain = seconds(&value)?,
            "--slow-readers" => config.slow_readers = value.parse()?,
            "--slow-delay-ms" => config.slow_read_delay = Duration::from_millis(value.parse()?),
            "--source" => {
                for ip in value.split(',').filter(|s| !s.trim().is_empty()) {
                    config
                        .sources
                        .push(ip.trim().parse().with_context(|| format!("{ip}: an IP"))?);
                }
            }
            "--watch" => {
                let (name, pid) = value
                    .split_once('=')
                    .with_context(|| format!("--watch {value}: expected name=pid"))?;
                config
                    .watch
                    .push((name.to_owned(), pid.parse().context("--watch: a pid")?));
            }
            "--connect-concurrency" => config.connect_concurrency = value.parse()?,
            "--connect-rate" => config.connect_rate = value.parse()?,
            "--timeout" => config.io_timeout = seconds(&value)?,
            "--deadline" => config.deadline = Some(seconds(&value)?),
            "--workers" => workers = Some(value.parse()?),
            other => bail!("unknown option {other}"),
        }
    }
    if !gateways.is_empty() {
        config.gateways = gateways;
    }
    config.mode = match (window, rate, idle) {
        (_, None, None) => Mode::Closed {
            window: window.unwrap_or(4),
        },
        (None, Some(rate), None) => Mode::Open {
            rate,
            max_outstanding,
        },
        (None, None, Some(sockets)) => Mode::Idle { sockets },
        _ => bail!("--window, --rate and --idle exclude each other"),
    };
    Ok((config, workers))
}

fn main() {
    let (config, workers) = match parse() {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("ws-load: {err:#}");
            std::process::exit(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ws-load: starting the runtime: {err}");
            std::process::exit(2);
        }
    };
    match runtime.block_on(load::run(config)) {
        Ok(report) => {
            println!("{}", report.to_json());
            std::process::exit(if report.clean() { 0 } else { 1 });
        }
        Err(err) => {
            eprintln!("ws-load: {err}");
            std::process::exit(2);
        }
    }
}
