//! What both services' `/metrics` share, on `prometheus-client`: the
//! latency buckets, the Prometheus text rendering, gauges read when scraped,
//! the standard `process_*` families (read from `/proc/self`, which the
//! crate has no collector for) and the connection caps' counters.
//!
//! Each service builds one [`Registry`] per process instance (tests run
//! several services in one process, so nothing here is global) and keeps
//! cheap clones of the handles it records into.

use std::sync::Arc;

pub use prometheus_client::{
    self,
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::connections::{ConnectionLimiter, Refusal};

/// The `Content-Type` of what [`render`] returns (Prometheus text 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency bucket bounds in seconds: every millisecond from 1 to 5, then
/// 7.5 and 10, so that the 10 ms acknowledgement target and what is under
/// it resolve; coarser above, up to the call deadline's order.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// A histogram over [`LATENCY_BUCKETS`] (a `fn` so families can make one
/// per label set).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The registry in the Prometheus text format (0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// A value read from its owner at each scrape: what already lives in an
/// atomic elsewhere (queue depths, pool figures) needs no second copy.
type Read = Box<dyn Fn() -> i64 + Send + Sync>;

/// A gauge or counter whose value is read when scraped.
pub struct ReadAtScrape {
    name: &'static str,
    help: &'static str,
    counter: bool,
    read: Read,
}

impl std::fmt::Debug for ReadAtScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAtScrape")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Collector for ReadAtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.read)();
        if self.counter {
            let counter = ConstCounter::new(u64::try_from(value).unwrap_or(0));
            let metric =
                encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
            counter.encode(metric)
        } else {
            let gauge = ConstGauge::new(value);
            let metric =
                encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
            gauge.encode(metric)
        }
    }
}

/// Registers a gauge `name` whose value `read` returns at each scrape.
pub fn gauge_fn(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    read: impl Fn() -> i64 + Send + Sync + 'static,
) {
    registry.register_collector(Box::new(ReadAtScrape {
        name,
        help,
        counter: false,
        read: Box::new(read),
    }));
}

/// Registers a counter `name` (without `_total`, which the encoding adds)
/// whose value `read` returns at each scrape.
pub fn counter_fn(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    read: impl Fn() -> u64 + Send + Sync + 'static,
) {
    registry.register_collector(Box::new(ReadAtScrape {
        name,
        help,
        counter: true,
        read: Box::new(move || i64::try_from(read()).unwrap_or(i64::MAX)),
    }));
}

/// Registers `{prefix}_open_connections` and
/// `{prefix}_connections_refused_total{cap}` for a listener's caps.
pub fn register_connections(
    registry: &mut Registry,
    prefix: &'static str,
    limiter: &Arc<ConnectionLimiter>,
) {
    registry.register_collector(Box::new(ConnectionsCollector {
        open: format!("{prefix}_open_connections"),
        refused: format!("{prefix}_connections_refused"),
        limiter: limiter.clone(),
    }));
}

#[derive(Debug)]
struct ConnectionsCollector {
    open: String,
    refused: String,
    limiter: Arc<ConnectionLimiter>,
}

impl Collector for ConnectionsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = ConstGauge::new(self.limiter.open() as i64);
        open.encode(encoder.encode_descriptor(
            &self.open,
            "Open client connections.",
            None,
            open.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            &self.refused,
            "Connections refused at accept by a cap.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (cap, refusal) in [
            ("total", Refusal::Total),
            ("per_address", Refusal::PerAddress),
        ] {
            let counter = ConstCounter::new(self.limiter.refused(refusal));
            counter.encode(family.encode_family(&[("cap", cap)])?)?;
        }
        Ok(())
    }
}

/// Registers the standard process families: `process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`.
/// On systems without `/proc` they are left out.
pub fn register_process(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self/stat` tells, in the units exported.
#[derive(Debug, Default, PartialEq)]
struct ProcStat {
    cpu_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    /// Seconds after boot.
    started_after_boot: f64,
}

/// Parses `/proc/self/stat`: the fields after the command name (which is in
/// parentheses and may hold spaces), numbered as in proc(5).
fn parse_stat(stat: &str, ticks_per_second: f64, page_size: u64) -> Option<ProcStat> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks_per_second,
        started_after_boot: field(22)? as f64 / ticks_per_second,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
    })
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(unix)]
fn clock() -> (f64, u64) {
    (
        rustix::param::clock_ticks_per_second() as f64,
        rustix::param::page_size() as u64,
    )
}

#[cfg(not(unix))]
fn clock() -> (f64, u64) {
    (100.0, 4096)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (ticks, page) = clock();
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s, ticks, page))
        else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<f64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Some(stat.resident_bytes as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Some(stat.virtual_bytes as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                std::fs::read_dir("/proc/self/fd")
                    .ok()
                    .map(|dir| dir.count() as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                crate::connections::open_file_limit().map(|limit| limit as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot_time().map(|boot| boot + stat.started_after_boot),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A name with spaces and a parenthesis, as a process may set.
        let line = "4242 (chat (core) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 50 0 0 20 0 9 0 1234 104857600 2560 18446744073709551615";
        let stat = parse_stat(line, 100.0, 4096).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                cpu_seconds: 3.0,
                virtual_bytes: 104_857_600,
                resident_bytes: 2560 * 4096,
                started_after_boot: 12.34,
            }
        );
    }

    #[test]
    fn process_and_read_at_scrape_families_render() {
        let mut registry = Registry::default();
        register_process(&mut registry);
        gauge_fn(&mut registry, "queue_depth", "Queued.", || 7);
        counter_fn(&mut registry, "dropped", "Dropped.", || 3);
        let limiter = ConnectionLimiter::new("test", 1, 1);
        register_connections(&mut registry, "svc", &limiter);
        let _held = limiter.admit("10.0.0.1".parse().unwrap()).unwrap();
        assert!(limiter.admit("10.0.0.2".parse().unwrap()).is_err());
        let text = render(&registry);
        for line in [
            "queue_depth 7\n",
            "dropped_total 3\n",
            "svc_open_connections 1\n",
            "svc_connections_refused_total{cap=\"total\"} 1\n",
            "svc_connections_refused_total{cap=\"per_address\"} 0\n",
            "# TYPE process_cpu_seconds_total counter\n",
            "# TYPE process_resident_memory_bytes gauge\n",
            "# TYPE process_open_fds gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1_000_000.0, "{rss}");
    }

    #[test]
    fn latency_buckets_resolve_each_millisecond_up_to_five() {
        let histogram = latency_histogram();
        histogram.observe(0.0021);
        let mut registry = Registry::default();
        registry.register("lat_seconds", "Latency.", histogram);
        let text = render(&registry);
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.002\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.003\"} 1\n"),
            "{text}"
        );
    }
}
