//! What chat-core and the gateway do the same way at their edges: typed
//! configuration errors that name the variable, the variables both read
//! (`LOG_FORMAT`, `SHUTDOWN_GRACE_SECONDS`, listen addresses), logging and
//! trace export set-up, `/metrics` helpers, and the one shutdown signal of a
//! process.

use std::{net::SocketAddr, time::Duration};

pub mod connections;
pub mod metrics;
pub mod telemetry;

/// A variable that holds a value the service cannot use. Start-up stops
/// with this message, which names the variable (and never a secret).
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl ConfigError {
    /// An error about `variable`.
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            variable,
            message: message.into(),
        }
    }
}

/// How logs are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Reads `LOG_FORMAT`: `text` (default) or `json`.
pub fn log_format(value: Option<&str>) -> Result<LogFormat, ConfigError> {
    match value {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(_) => Err(ConfigError::new("LOG_FORMAT", "expected text or json")),
    }
}

/// Reads `SHUTDOWN_GRACE_SECONDS` (default 20): how long in-flight work
/// may finish after the stop signal.
pub fn shutdown_grace(value: Option<&str>) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(Duration::from_secs(20)),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= 3600)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                ConfigError::new("SHUTDOWN_GRACE_SECONDS", "expected whole seconds, 0-3600")
            }),
    }
}

/// Reads a whole number of `unit`s within `range` (`default` when unset),
/// for timeouts and intervals.
pub fn duration(
    variable: &'static str,
    value: Option<&str>,
    unit: Duration,
    range: std::ops::RangeInclusive<u32>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let unit_name = if unit == Duration::from_millis(1) {
        "milliseconds"
    } else {
        "seconds"
    };
    value
        .parse::<u32>()
        .ok()
        .filter(|n| range.contains(n))
        .map(|n| unit * n)
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                format!("expected {unit_name}, {}-{}", range.start(), range.end()),
            )
        })
}

/// Reads a listen address (`host:port`), or `default`.
pub fn listen_addr(
    variable: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    value
        .unwrap_or(default)
        .parse()
        .map_err(|_| ConfigError::new(variable, format!("expected host:port, e.g. {default}")))
}

/// Installs the global log subscriber: `RUST_LOG` filters (default
/// `info`), `format` chooses text or JSON, colours only on a terminal.
/// Later calls are ignored (tests start several services in one process).
/// No span export: see [`init_telemetry`].
pub fn init_tracing(format: LogFormat) {
    let _ = install(format, None::<tracing_subscriber::layer::Identity>);
}

/// [`init_tracing`], plus OpenTelemetry span export for `service` when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see [`telemetry`]). Call inside
/// the Tokio runtime, and [`telemetry::Telemetry::shutdown`] at exit so
/// the last spans leave.
pub fn init_telemetry(
    format: LogFormat,
    service: &'static str,
) -> Result<telemetry::Telemetry, ConfigError> {
    let endpoint = std::env::var(telemetry::ENDPOINT_VARIABLE).ok();
    let (layer, telemetry) = telemetry::layer(service, endpoint.as_deref())?;
    install(format, layer);
    Ok(telemetry)
}

fn install<L>(format: LogFormat, extra: Option<L>) -> bool
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::{EnvFilter, Layer as _, fmt, layer::SubscriberExt as _};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(extra)
        .with(logs)
        .with(filter);
    tracing::subscriber::set_global_default(subscriber).is_ok()
}

/// Completes on SIGTERM or Ctrl-C: the one shutdown signal of a process.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_variables() {
        assert_eq!(log_format(None).unwrap(), LogFormat::Text);
        assert_eq!(log_format(Some("json")).unwrap(), LogFormat::Json);
        assert_eq!(log_format(Some("xml")).unwrap_err().variable, "LOG_FORMAT");
        assert_eq!(shutdown_grace(Some("5")).unwrap(), Duration::from_secs(5));
        assert_eq!(
            shutdown_grace(Some("-1")).unwrap_err().variable,
            "SHUTDOWN_GRACE_SECONDS"
        );
        let ms = Duration::from_millis(1);
        assert_eq!(
            duration("T", Some("250"), ms, 1..=1000, Duration::ZERO).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            duration("T", None, ms, 1..=1000, Duration::from_secs(3)).unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(
            duration("T", Some("0"), ms, 1..=1000, Duration::ZERO)
                .unwrap_err()
                .to_string(),
            "T: expected milliseconds, 1-1000"
        );
        let err = listen_addr("GATEWAY_ADDR", Some("nope"), "0.0.0.0:8000").unwrap_err();
        assert_eq!(
            err.to_string(),
            "GATEWAY_ADDR: expected host:port, e.g. 0.0.0.0:8000"
        );
    }
}
