//! Typed configuration from the environment (the README's configuration table). A bad value stops
//! start-up with a message naming the variable.

use std::{net::SocketAddr, time::Duration};

use chat_auth::JwtSettings;

pub use chat_runtime::{ConfigError, LogFormat};

fn config_error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(variable, message)
}

/// Every environment variable the gateway reads, so deployments can be
/// checked against it.
pub const ENVIRONMENT: &[&str] = &[
    "GATEWAY_ADDR",
    "CHAT_CORE_URL",
    "ALLOWED_ORIGINS",
    "GATEWAY_UPSTREAM_TIMEOUT_MS",
    "GATEWAY_SEND_RATE",
    "GATEWAY_SEND_BURST",
    "GATEWAY_CONNECT_RATE",
    "GATEWAY_CONNECT_BURST",
    "GATEWAY_WS_PING_SECONDS",
    "GATEWAY_WS_SEND_TIMEOUT_MS",
    "GATEWAY_HEADER_TIMEOUT_SECONDS",
    "GATEWAY_IDLE_TIMEOUT_SECONDS",
    "GATEWAY_MAX_CONNECTIONS",
    "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS",
    "GATEWAY_MAX_SOCKETS_PER_USER",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_ALGORITHM",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "LOG_FORMAT",
    "RUST_LOG",
    "SHUTDOWN_GRACE_SECONDS",
    // Read by chat_runtime::init_telemetry: traces are exported only when set.
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

#[cfg(test)]
mod tests {
    use super::{ENVIRONMENT, Settings};

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, super::ConfigError> {
        Settings::from_lookup(|name| {
            vars.iter()
                .chain(&[("JWT_SECRET", "s3cret")])
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn edge_limits_have_defaults_and_are_checked() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.header_timeout.as_secs(), 10);
        assert_eq!(s.idle_timeout.as_secs(), 30);
        assert_eq!(s.max_connections_per_address, 1000);
        assert_eq!(s.max_sockets_per_user, 32);
        assert!(s.max_connections >= 1);
        for (var, value) in [
            ("GATEWAY_HEADER_TIMEOUT_SECONDS", "0"),
            ("GATEWAY_IDLE_TIMEOUT_SECONDS", "x"),
            ("GATEWAY_MAX_CONNECTIONS", "0"),
            ("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", "-1"),
            ("GATEWAY_MAX_SOCKETS_PER_USER", "many"),
        ] {
            assert_eq!(settings(&[(var, value)]).unwrap_err().variable, var);
        }
        // A chat-core call must never look idle.
        let err = settings(&[
            ("GATEWAY_IDLE_TIMEOUT_SECONDS", "5"),
            ("GATEWAY_UPSTREAM_TIMEOUT_MS", "5000"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "GATEWAY_IDLE_TIMEOUT_SECONDS");
    }

    #[test]
    fn every_variable_read_is_listed() {
        let source = include_str!("config.rs");
        for piece in source.split("get(\"").skip(1) {
            let name: String = piece.chars().take_while(|c| *c != '"').collect();
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                assert!(
                    ENVIRONMENT.contains(&name.as_str()),
                    "{name} is read but not listed"
                );
            }
        }
    }
}

/// Everything the gateway reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `GATEWAY_ADDR`: the HTTP/WebSocket listener.
    pub addr: SocketAddr,
    /// `CHAT_CORE_URL`: chat-core replicas, balanced per call.
    pub chat_core_urls: Vec<String>,
    /// `ALLOWED_ORIGINS`: browser origins for CORS and WebSockets.
    pub allowed_origins: Vec<String>,
    /// `JWT_*`: the same token checks as chat-core.
    pub jwt: JwtSettings,
    /// `GATEWAY_UPSTREAM_TIMEOUT_MS`: deadline of each chat-core call.
    pub upstream_timeout: Duration,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `SHUTDOWN_GRACE_SECONDS`: how long in-flight requests may finish.
    pub shutdown_grace: Duration,
    /// `GATEWAY_SEND_RATE` and `GATEWAY_SEND_BURST`: messages per second
    /// per user, and the burst allowed.
    pub send_rate: (f64, f64),
    /// `GATEWAY_CONNECT_RATE` and `GATEWAY_CONNECT_BURST`: new WebSockets
    /// per second per client address, and the burst allowed.
    pub connect_rate: (f64, f64),
    /// `GATEWAY_WS_PING_SECONDS`: how often sockets are pinged; a peer
    /// silent for two intervals is closed.
    pub ws_ping: Duration,
    /// `GATEWAY_WS_SEND_TIMEOUT_MS`: a browser that cannot take a frame
    /// within this long is too slow and is closed with 4008.
    pub ws_send_timeout: Duration,
    /// `GATEWAY_HEADER_TIMEOUT_SECONDS`: how long a request's head may take
    /// to arrive, from the connection's opening or its previous response;
    /// so also how long a kept-alive connection may sit idle.
    pub header_timeout: Duration,
    /// `GATEWAY_IDLE_TIMEOUT_SECONDS`: a connection where no byte moves for
    /// this long (a body announced and never sent, an unread response) is
    /// closed; longer than the upstream deadline, so that no call of the
    /// gateway's own looks idle.
    pub idle_timeout: Duration,
    /// `GATEWAY_MAX_CONNECTIONS`: open client connections, WebSockets
    /// included; beyond it new ones are refused so the process never runs
    /// out of files (default: the open-file limit less some headroom).
    pub max_connections: usize,
    /// `GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`: open connections from one
    /// client address.
    pub max_connections_per_address: usize,
    /// `GATEWAY_MAX_SOCKETS_PER_USER`: open WebSockets of one user (service
    /// tokens are not capped); one more closes with 4429.
    pub max_sockets_per_user: usize,
}

const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);

fn rate(value: Option<String>, variable: &'static str, default: f64) -> Result<f64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1_000_000.0)
            .ok_or_else(|| config_error(variable, "expected a positive number")),
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let addr = chat_runtime::listen_addr(
            "GATEWAY_ADDR",
            get("GATEWAY_ADDR").as_deref(),
            "0.0.0.0:8000",
        )?;
        let chat_core_urls: Vec<String> = get("CHAT_CORE_URL")
            .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned())
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        for url in &chat_core_urls {
            let parsed: Result<http::Uri, _> = url.parse();
            match parsed {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some() => {}
                _ => {
                    return Err(config_error(
                        "CHAT_CORE_URL",
                        format!("expected http://host:port addresses, got {url:?}"),
                    ));
                }
            }
        }
        let allowed_origins = get("ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let jwt = JwtSettings::from_env(get)
            .map_err(|err| config_error(err.variable(), err.to_string()))?
            .ok_or_else(|| {
                config_error(
                    "JWT_SECRET",
                    "token checks must be configured: JWT_SECRET (HS256) or JWT_PUBLIC_KEY_FILE \
                     and JWT_ALGORITHM (RS256/ES256), the same as chat-core's",
                )
            })?;
        let upstream_timeout = chat_runtime::duration(
            "GATEWAY_UPSTREAM_TIMEOUT_MS",
            get("GATEWAY_UPSTREAM_TIMEOUT_MS").as_deref(),
            MILLISECOND,
            1..=600_000,
            Duration::from_secs(5),
        )?;
        let log_format = chat_runtime::log_format(get("LOG_FORMAT").as_deref())?;
        let shutdown_grace =
            chat_runtime::shutdown_grace(get("SHUTDOWN_GRACE_SECONDS").as_deref())?;
        let send_rate = (
            rate(get("GATEWAY_SEND_RATE"), "GATEWAY_SEND_RATE", 20.0)?,
            rate(get("GATEWAY_SEND_BURST"), "GATEWAY_SEND_BURST", 40.0)?,
        );
        let connect_rate = (
            rate(get("GATEWAY_CONNECT_RATE"), "GATEWAY_CONNECT_RATE", 20.0)?,
            rate(get("GATEWAY_CONNECT_BURST"), "GATEWAY_CONNECT_BURST", 60.0)?,
        );
        let ws_ping = chat_runtime::duration(
            "GATEWAY_WS_PING_SECONDS",
            get("GATEWAY_WS_PING_SECONDS").as_deref(),
            SECOND,
            1..=3600,
            Duration::from_secs(25),
        )?;
        let ws_send_timeout = chat_runtime::duration(
            "GATEWAY_WS_SEND_TIMEOUT_MS",
            get("GATEWAY_WS_SEND_TIMEOUT_MS").as_deref(),
            MILLISECOND,
            1..=600_000,
            Duration::from_secs(10),
        )?;
        let header_timeout = chat_runtime::duration(
            "GATEWAY_HEADER_TIMEOUT_SECONDS",
            get("GATEWAY_HEADER_TIMEOUT_SECONDS").as_deref(),
            SECOND,
            1..=3600,
            Duration::from_secs(10),
        )?;
        let idle_timeout = chat_runtime::duration(
            "GATEWAY_IDLE_TIMEOUT_SECONDS",
            get("GATEWAY_IDLE_TIMEOUT_SECONDS").as_deref(),
            SECOND,
            1..=86_400,
            Duration::from_secs(30),
        )?;
        if idle_timeout <= upstream_timeout {
            // A REST call waits on chat-core without a byte moving: it must
            // not look idle.
            return Err(config_error(
                "GATEWAY_IDLE_TIMEOUT_SECONDS",
                "must be longer than GATEWAY_UPSTREAM_TIMEOUT_MS",
            ));
        }
        let max_connections = chat_runtime::connections::max_connections(
            "GATEWAY_MAX_CONNECTIONS",
            get("GATEWAY_MAX_CONNECTIONS").as_deref(),
        )?;
        let max_connections_per_address = chat_runtime::connections::count(
            "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS",
            get("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS").as_deref(),
            1000,
        )?;
        let max_sockets_per_user = chat_runtime::connections::count(
            "GATEWAY_MAX_SOCKETS_PER_USER",
            get("GATEWAY_MAX_SOCKETS_PER_USER").as_deref(),
            32,
        )?;
        Ok(Settings {
            addr,
            chat_core_urls,
            allowed_origins,
            jwt,
            upstream_timeout,
            log_format,
            shutdown_grace,
            send_rate,
            connect_rate,
            ws_ping,
            ws_send_timeout,
            header_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_address,
            max_sockets_per_user,
        })
    }
}
