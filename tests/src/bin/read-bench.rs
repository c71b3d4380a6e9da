//! Read-path benchmark for the gateway's REST interface (the read service level, docs/architecture.md#service-levels):
//! one user's thread list with unread counts, and message pages, timed
//! call by call over keep-alive HTTP/1.1 connections. Prints one JSON line
//! of latency figures (milliseconds) per kind of read.
//!
//! ```text
//! read-bench --gateway 127.0.0.1:8000 --secret "$JWT_SECRET"
//!     [--user reader] [--rounds 2000] [--concurrency 4] [--expect-threads N]
//!     [--search "invoice,fox,milestone deadline,inv"]
//! ```
//!
//! 1. Walks the user's whole thread list, 100 threads a page, following
//!    `next_cursor` (`threads_page_100`), and checks every thread came
//!    once (and `--expect-threads` of them, when given).
//! 2. Then `--rounds` times, spread over `--concurrency` connections: the
//!    first page of 20 threads (`threads_first_page`), the unread totals
//!    (`unread_counts`), the newest 50 messages of a random thread of the
//!    user (`messages_newest_page`) and the 50 before those
//!    (`messages_older_page`), and with `--search`, one search of the
//!    user's messages with the next of the given queries (`search`, and
//!    each query on its own under `search_by_query`).
//!
//! Exit status 0 when every answer was 200 and well formed, 1 otherwise.
//! Build the dataset with `scripts/bench-reads`, which runs this too.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    time::Instant,
};

/// One keep-alive HTTP/1.1 connection to the gateway.
struct Connection {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
    token: String,
}

impl Connection {
    async fn open(addr: SocketAddr, token: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            addr,
            stream: BufReader::new(stream),
            token: token.to_owned(),
        })
    }

    /// `GET path`: the JSON body of a 200 answer, and how long it took.
    async fn get(&mut self, path: &str) -> anyhow::Result<(Value, Duration)> {
        let started = Instant::now();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.addr, self.token
        );
        self.stream.get_mut().write_all(head.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line: {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let length = length.context("answer without Content-Length")?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        let took = started.elapsed();
        ensure!(
            status == 200,
            "GET {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok((serde_json::from_slice(&body)?, took))
    }
}

fn record(histogram: &mut Histogram<u64>, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

fn summary(histogram: &Histogram<u64>) -> Value {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": histogram.len(),
        "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": histogram.max() as f64 / 1000.0,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Walks the whole thread list: every thread id, in list order.
async fn walk_threads(
    connection: &mut Connection,
    pages: &mut Histogram<u64>,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/chat/threads/?limit=100&cursor={cursor}"),
            None => "/api/chat/threads/?limit=100".to_owned(),
        };
        let (page, took) = connection.get(&path).await?;
        record(pages, took);
        let results = page["results"].as_array().context("results")?;
        for thread in results {
            let id = thread["id"].as_str().context("thread id")?.to_owned();
            ensure!(
                thread["unread_count"].is_i64(),
                "thread without unread_count"
            );
            ensure!(seen.insert(id.clone()), "thread {id} listed twice");
            ids.push(id);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(ids),
        }
    }
}

/// One worker's rounds: first thread page, newest and older message pages.
async fn rounds(
    mut connection: Connection,
    threads: std::sync::Arc<Vec<String>>,
    queries: std::sync::Arc<Vec<String>>,
    rounds: usize,
    seed: u64,
) -> anyhow::Result<([Histogram<u64>; 4], Vec<Histogram<u64>>)> {
    let [mut first, mut unread, mut newest, mut older] =
        [histogram(), histogram(), histogram(), histogram()];
    let mut searches: Vec<Histogram<u64>> = queries.iter().map(|_| histogram()).collect();
    let mut state = seed | 1;
    for round in 0..rounds {
        if !queries.is_empty() {
            let which = (round + seed as usize) % queries.len();
            let q: String = form_urlencoded::byte_serialize(queries[which].as_bytes()).collect();
            let (found, took) = connection.get(&format!("/api/chat/search/?q={q}")).await?;
            record(&mut searches[which], took);
            ensure!(found["results"].is_array(), "search answered {found}");
        }
        let (page, took) = connection.get("/api/chat/threads/?limit=20").await?;
        record(&mut first, took);
        ensure!(page["results"].as_array().is_some_and(|r| !r.is_empty()));
        let (counts, took) = connection.get("/api/chat/unread-count/").await?;
        record(&mut unread, took);
        ensure!(counts["total"].is_i64() && counts["threads"].is_object());
        // xorshift: a different thread each time, no dependency needed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let thread = &threads[(state % threads.len() as u64) as usize];
        let (page, took) = connection
            .get(&format!("/api/chat/threads/{thread}/messages/?limit=50"))
            .await?;
        record(&mut newest, took);
        let oldest = page["results"][0]["seq"].as_i64().context("a message")?;
        let (page, took) = connection
            .get(&format!(
                "/api/chat/threads/{thread}/messages/?limit=50&before_seq={oldest}"
            ))
            .await?;
        record(&mut older, took);
        ensure!(page["results"].is_array());
    }
    Ok(([first, unread, newest, older], searches))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut gateway: Option<SocketAddr> = None;
    let mut secret = None;
    let mut user = "reader".to_owned();
    let mut round_count = 2000usize;
    let mut concurrency = 4usize;
    let mut expect_threads: Option<usize> = None;
    let mut queries: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag}: a value"))?;
        match flag.as_str() {
            "--gateway" => gateway = Some(value.parse().context("--gateway")?),
            "--secret" => secret = Some(value),
            "--user" => user = value,
            "--rounds" => round_count = value.parse().context("--rounds")?,
            "--concurrency" => concurrency = value.parse().context("--concurrency")?,
            "--expect-threads" => expect_threads = Some(value.parse().context("--expect-threads")?),
            "--search" => {
                queries = value
                    .split(',')
                    .map(|q| q.trim().to_owned())
                    .filter(|q| !q.is_empty())
                    .collect()
            }
            _ => bail!("unknown option {flag}"),
        }
    }
    let gateway = gateway.context("--gateway is required")?;
    ensure!(gateway.ip().is_loopback(), "loopback addresses only");
    let secret = secret.context("--secret is required")?;
    ensure!(concurrency > 0, "--concurrency: at least 1");
    let token = chat_auth::TokenIssuer::new(secret.as_bytes(), None, None)
        .issue(&user, chat_auth::Role::User, Duration::from_secs(3600))
        .context("issuing a token")?;

    let mut walker = Connection::open(gateway, &token).await?;
    let mut pages = histogram();
    let threads = walk_threads(&mut walker, &mut pages).await?;
    if let Some(expected) = expect_threads {
        ensure!(
            threads.len() == expected,
            "{} threads listed, {expected} expected",
            threads.len()
        );
    }
    ensure!(!threads.is_empty(), "{user} has no threads");
    let threads = std::sync::Arc::new(threads);
    let queries = std::sync::Arc::new(queries);

    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let connection = Connection::open(gateway, &token).await?;
        let share = round_count / concurrency + usize::from(w < round_count % concurrency);
        workers.spawn(rounds(
            connection,
            threads.clone(),
            queries.clone(),
            share,
            0x9e37_79b9 + w as u64,
        ));
    }
    let [mut first, mut unread, mut newest, mut older] =
        [histogram(), histogram(), histogram(), histogram()];
    let mut searches: Vec<Histogram<u64>> = queries.iter().map(|_| histogram()).collect();
    let mut search = histogram();
    while let Some(done) = workers.join_next().await {
        let ([f, u, n, o], s) = done??;
        for (total, part) in searches.iter_mut().zip(s) {
            search.add(&part)?;
            total.add(part)?;
        }
        first.add(f)?;
        unread.add(u)?;
        newest.add(n)?;
        older.add(o)?;
    }
    println!(
        "{}",
        json!({
            "user": user,
            "threads": threads.len(),
            "concurrency": concurrency,
            "threads_page_100": summary(&pages),
            "threads_first_page": summary(&first),
            "unread_counts": summary(&unread),
            "messages_newest_page": summary(&newest),
            "messages_older_page": summary(&older),
            "search": (!queries.is_empty()).then(|| summary(&search)),
            "search_by_query": queries
                .iter()
                .zip(&searches)
                .map(|(q, h)| (q.clone(), summary(h)))
                .collect::<serde_json::Map<String, Value>>(),
        })
    );
    Ok(())
}
