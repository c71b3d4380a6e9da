//! Typed configuration from the environment (the README's configuration table). Every value is
//! checked at start: a bad one stops start-up with a message naming the
//! variable, instead of failing later in the middle of traffic.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use chat_auth::{JwtAlgorithm, JwtKey, JwtSettings};

use crate::store::DatabaseLocation;

pub use chat_runtime::{ConfigError, LogFormat};

fn config_error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(variable, message)
}

/// Where the token-checking key comes from.
#[derive(Debug, Clone)]
pub enum JwtSource {
    /// `JWT_*` variables.
    Configured(JwtSettings),
    /// Nothing configured on the embedded default: a random HS256 secret
    /// kept in this file (created on first use), so that `chat-core token`
    /// run in the same directory signs tokens the server accepts.
    DevelopmentSecret(PathBuf),
}

/// Everything chat-core reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CHAT_CORE_GRPC_ADDR`: the gRPC listener.
    pub grpc_addr: SocketAddr,
    /// `CHAT_CORE_HTTP_ADDR`: `/healthz` and `/metrics`.
    pub http_addr: SocketAddr,
    /// `DATABASE_URL`, or the embedded SQLite file.
    pub database: DatabaseLocation,
    /// `DATABASE_MAX_CONNECTIONS`: pool size (readers, for SQLite).
    pub database_max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS` (default 1000): how long a call waits
    /// for a database connection before it fails with `UNAVAILABLE`. Short,
    /// so that while the database is down calls fail fast instead of
    /// hanging until their deadline, and the pool's reconnect backoff
    /// (a fifth of this at most) stays short once it is back.
    pub database_acquire_timeout: Duration,
    /// `REDIS_URL`: cross-replica fan-out of live events.
    pub redis_url: Option<String>,
    /// `REDIS_CHANNEL_PREFIX`: namespaces the pub/sub channels, so that
    /// several deployments (or test runs) can share one Redis.
    pub redis_channel_prefix: String,
    /// `JWT_*`.
    pub jwt: JwtSource,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `SHUTDOWN_GRACE_SECONDS`: how long in-flight calls may run after a
    /// stop signal.
    pub shutdown_grace: Duration,
    /// `CHAT_CORE_DRAIN_MS` (default 1000): after a stop signal, how long
    /// chat-core keeps serving while it reports `NOT_SERVING`, so that
    /// gateways (which watch its health) and Kubernetes stop sending it
    /// calls before it stops accepting them.
    pub drain: Duration,
    /// `CHAT_CORE_MIGRATE_ON_START` (default true): apply migrations at
    /// start. Deployments that run `chat-core migrate` once per rollout set
    /// it to false so replicas do not race.
    pub migrate_on_start: bool,
    /// `CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER` and
    /// `CHAT_CORE_THREAD_CREATES_PER_MINUTE`: per-user caps (see
    /// [`crate::caps`]).
    pub caps: crate::caps::CapSettings,
    /// `CHAT_CORE_MAX_CONNECTIONS`: open gRPC connections; more are refused
    /// at once (default: the open-file limit less some headroom).
    pub max_connections: usize,
    /// `CHAT_CORE_MAX_CONNECTIONS_PER_ADDRESS`: open gRPC connections from
    /// one client address.
    pub max_connections_per_address: usize,
    /// `CHAT_CORE_FIRST_REQUEST_TIMEOUT_SECONDS`: a connection that has made
    /// no request this long after opening is closed.
    pub first_request_timeout: Duration,
    /// `TRANSCRIPT_SIGNING_KEY_FILE`: the key transcript exports are signed
    /// with.
    pub transcript_key: TranscriptKeySource,
    /// `CONTACT_POLICY` (default `flag`): what happens to users' texts that
    /// hold contact details, in threads without a policy of their own.
    pub contact_policy: crate::domain::ContactPolicy,
    /// `PRESENCE_GRACE_SECONDS` (default 10), `REMINDER_AFTER_SECONDS`
    /// (default 300) and `REMINDER_SCAN_INTERVAL_MS` (default 5000): see
    /// [`crate::presence`].
    pub presence: crate::presence::PresenceSettings,
}

/// Where the transcript signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscriptKeySource {
    /// `TRANSCRIPT_SIGNING_KEY_FILE`: an Ed25519 PKCS#8 PEM file that must
    /// exist (several replicas share it, so exports carry one key id).
    File(PathBuf),
    /// The embedded default: a key in this file, created on first start.
    Created(PathBuf),
    /// A database was configured but no key file: a key made for this
    /// process alone. Its public half is still registered, so its exports
    /// verify; but each restart adds a key, so deployments set the file.
    Ephemeral,
}

/// Every environment variable chat-core reads (the README's configuration table, and the extras in
/// the README), so deployments can be checked against it.
pub const ENVIRONMENT: &[&str] = &[
    "CHAT_CORE_GRPC_ADDR",
    "CHAT_CORE_HTTP_ADDR",
    "CHAT_CORE_MIGRATE_ON_START",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "DATABASE_ACQUIRE_TIMEOUT_MS",
    "CHAT_CORE_DRAIN_MS",
    "REDIS_URL",
    "REDIS_CHANNEL_PREFIX",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_ALGORITHM",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "LOG_FORMAT",
    "RUST_LOG",
    "SHUTDOWN_GRACE_SECONDS",
    "CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER",
    "CHAT_CORE_THREAD_CREATES_PER_MINUTE",
    "CHAT_CORE_MAX_CONNECTIONS",
    "CHAT_CORE_MAX_CONNECTIONS_PER_ADDRESS",
    "CHAT_CORE_FIRST_REQUEST_TIMEOUT_SECONDS",
    "TRANSCRIPT_SIGNING_KEY_FILE",
    "CONTACT_POLICY",
    // Read by chat_runtime::init_telemetry: traces are exported only when set.
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "PRESENCE_GRACE_SECONDS",
    "REMINDER_AFTER_SECONDS",
    "REMINDER_SCAN_INTERVAL_MS",
];

/// The directory of the embedded default's files (database, dev secret).
pub const DATA_DIR: &str = "./data";

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can pass their own
    /// environment. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let grpc_addr = chat_runtime::listen_addr(
            "CHAT_CORE_GRPC_ADDR",
            get("CHAT_CORE_GRPC_ADDR").as_deref(),
            "0.0.0.0:50051",
        )?;
        let http_addr = chat_runtime::listen_addr(
            "CHAT_CORE_HTTP_ADDR",
            get("CHAT_CORE_HTTP_ADDR").as_deref(),
            "0.0.0.0:9090",
        )?;

        let database_url = get("DATABASE_URL");
        let database = match &database_url {
            Some(url) => {
                DatabaseLocation::parse(url).map_err(|m| config_error("DATABASE_URL", m))?
            }
            None => DatabaseLocation::embedded_default(),
        };
        let database_max_connections = match get("DATABASE_MAX_CONNECTIONS") {
            None => 10,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    config_error(
                        "DATABASE_MAX_CONNECTIONS",
                        "expected a number from 1 to 1000",
                    )
                })?,
        };

        let redis_url = match get("REDIS_URL") {
            None => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => Some(url),
            Some(_) => return Err(config_error("REDIS_URL", "expected a redis://… URL")),
        };

        let redis_channel_prefix = match get("REDIS_CHANNEL_PREFIX") {
            None => "chat:".to_owned(),
            Some(prefix) if prefix.len() <= 64 && !prefix.chars().any(char::is_whitespace) => {
                prefix
            }
            Some(_) => {
                return Err(config_error(
                    "REDIS_CHANNEL_PREFIX",
                    "at most 64 characters, no whitespace",
                ));
            }
        };

        let jwt = match JwtSettings::from_env(get)
            .map_err(|err| config_error(err.variable(), err.to_string()))?
        {
            Some(settings) => JwtSource::Configured(settings),
            None if database_url.is_none() => {
                JwtSource::DevelopmentSecret(Path::new(DATA_DIR).join("jwt-secret"))
            }
            None => {
                return Err(config_error(
                    "JWT_SECRET",
                    "with DATABASE_URL set, token checks must be configured: set JWT_SECRET \
                     (HS256) or JWT_PUBLIC_KEY_FILE and JWT_ALGORITHM (RS256/ES256)",
                ));
            }
        };

        let log_format = chat_runtime::log_format(get("LOG_FORMAT").as_deref())?;
        let shutdown_grace =
            chat_runtime::shutdown_grace(get("SHUTDOWN_GRACE_SECONDS").as_deref())?;

        let database_acquire_timeout = chat_runtime::duration(
            "DATABASE_ACQUIRE_TIMEOUT_MS",
            get("DATABASE_ACQUIRE_TIMEOUT_MS").as_deref(),
            Duration::from_millis(1),
            50..=60_000,
            Duration::from_secs(1),
        )?;
        let drain = match get("CHAT_CORE_DRAIN_MS") {
            // Zero is allowed: nothing routes to this replica but itself.
            Some(value) if value.trim() == "0" => Duration::ZERO,
            value => chat_runtime::duration(
                "CHAT_CORE_DRAIN_MS",
                value.as_deref(),
                Duration::from_millis(1),
                1..=60_000,
                Duration::from_secs(1),
            )?,
        };

        let migrate_on_start = match get("CHAT_CORE_MIGRATE_ON_START").as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => {
                return Err(config_error(
                    "CHAT_CORE_MIGRATE_ON_START",
                    "expected true or false",
                ));
            }
        };

        let defaults = crate::caps::CapSettings::default();
        let caps = crate::caps::CapSettings {
            subscriptions_per_user: chat_runtime::connections::count(
                "CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER",
                get("CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER").as_deref(),
                defaults.subscriptions_per_user,
            )?,
            thread_creations_per_minute: chat_runtime::connections::count(
                "CHAT_CORE_THREAD_CREATES_PER_MINUTE",
                get("CHAT_CORE_THREAD_CREATES_PER_MINUTE").as_deref(),
                defaults.thread_creations_per_minute as usize,
            )? as u32,
        };

        let max_connections = chat_runtime::connections::max_connections(
            "CHAT_CORE_MAX_CONNECTIONS",
            get("CHAT_CORE_MAX_CONNECTIONS").as_deref(),
        )?;
        let max_connections_per_address = chat_runtime::connections::count(
            "CHAT_CORE_MAX_CONNECTIONS_PER_ADDRESS",
            get("CHAT_CORE_MAX_CONNECTIONS_PER_ADDRESS").as_deref(),
            1000,
        )?;
        let first_request_timeout = chat_runtime::duration(
            "CHAT_CORE_FIRST_REQUEST_TIMEOUT_SECONDS",
            get("CHAT_CORE_FIRST_REQUEST_TIMEOUT_SECONDS").as_deref(),
            Duration::from_secs(1),
            1..=3600,
            Duration::from_secs(10),
        )?;

        let presence_defaults = crate::presence::PresenceSettings::default();
        let presence = crate::presence::PresenceSettings {
            grace: chat_runtime::duration(
                "PRESENCE_GRACE_SECONDS",
                get("PRESENCE_GRACE_SECONDS").as_deref(),
                Duration::from_secs(1),
                1..=3600,
                presence_defaults.grace,
            )?,
            reminder_after: chat_runtime::duration(
                "REMINDER_AFTER_SECONDS",
                get("REMINDER_AFTER_SECONDS").as_deref(),
                Duration::from_secs(1),
                1..=30 * 86_400,
                presence_defaults.reminder_after,
            )?,
            reminder_scan: chat_runtime::duration(
                "REMINDER_SCAN_INTERVAL_MS",
                get("REMINDER_SCAN_INTERVAL_MS").as_deref(),
                Duration::from_millis(1),
                50..=3_600_000,
                presence_defaults.reminder_scan,
            )?,
        };

        let transcript_key = match get("TRANSCRIPT_SIGNING_KEY_FILE") {
            Some(path) => TranscriptKeySource::File(PathBuf::from(path)),
            None if database_url.is_none() => {
                TranscriptKeySource::Created(Path::new(DATA_DIR).join("transcript-signing-key.pem"))
            }
            None => TranscriptKeySource::Ephemeral,
        };

        let contact_policy = match get("CONTACT_POLICY") {
            None => crate::domain::ContactPolicy::Flag,
            Some(text) => crate::domain::ContactPolicy::parse(text.trim()).ok_or_else(|| {
                config_error("CONTACT_POLICY", "expected off, flag, mask or block")
            })?,
        };

        Ok(Settings {
            contact_policy,
            transcript_key,
            grpc_addr,
            http_addr,
            database,
            database_max_connections,
            database_acquire_timeout,
            redis_url,
            redis_channel_prefix,
            jwt,
            log_format,
            shutdown_grace,
            drain,
            migrate_on_start,
            caps,
            max_connections,
            max_connections_per_address,
            first_request_timeout,
            presence,
        })
    }
}

impl JwtSource {
    /// The settings to verify tokens with, creating the development secret
    /// when it does not exist yet. The flag tells whether it was created.
    pub fn resolve(&self) -> Result<(JwtSettings, bool), ConfigError> {
        match self {
            JwtSource::Configured(settings) => Ok((settings.clone(), false)),
            JwtSource::DevelopmentSecret(path) => {
                let (secret, created) = load_or_create_secret(path).map_err(|err| {
                    config_error("JWT_SECRET", format!("{}: {err}", path.display()))
                })?;
                Ok((
                    JwtSettings {
                        algorithm: JwtAlgorithm::Hs256,
                        key: JwtKey::Secret(secret),
                        issuer: None,
                        audience: None,
                    },
                    created,
                ))
            }
        }
    }
}

/// Reads the development secret, or writes a new random one readable by
/// the owner only.
fn load_or_create_secret(path: &Path) -> std::io::Result<(Vec<u8>, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().as_bytes().to_vec(), false)),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            Ok((secret.into_bytes(), true))
        }
        // Another process (a concurrent `chat-core token`) won the race.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok((
            std::fs::read_to_string(path)?.trim().as_bytes().to_vec(),
            false,
        )),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn every_variable_read_is_listed() {
        let source = include_str!("config.rs");
        for piece in source.split("get(\"").skip(1) {
            let name: String = piece.chars().take_while(|c| *c != '"').collect();
            if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty() {
                assert!(
                    ENVIRONMENT.contains(&name.as_str()),
                    "{name} is read but not listed"
                );
            }
        }
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(s.http_addr.to_string(), "0.0.0.0:9090");
        assert!(s.database.is_embedded());
        assert!(matches!(s.jwt, JwtSource::DevelopmentSecret(_)));
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("CHAT_CORE_GRPC_ADDR", "nope"),
            ("CHAT_CORE_HTTP_ADDR", "1.2.3.4"),
            ("DATABASE_URL", "mysql://x"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("REDIS_URL", "http://x"),
            ("LOG_FORMAT", "xml"),
            ("SHUTDOWN_GRACE_SECONDS", "-1"),
            ("JWT_ALGORITHM", "HS512"),
            ("CHAT_CORE_MIGRATE_ON_START", "maybe"),
            ("CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER", "0"),
            ("CHAT_CORE_THREAD_CREATES_PER_MINUTE", "lots"),
            ("CHAT_CORE_MAX_CONNECTIONS", "-5"),
            ("CHAT_CORE_MAX_CONNECTIONS_PER_ADDRESS", "0"),
            ("CHAT_CORE_FIRST_REQUEST_TIMEOUT_SECONDS", "0"),
        ] {
            let err = settings(&[(var, value), ("JWT_SECRET", "s3cret")]).unwrap_err();
            assert_eq!(err.variable, var, "{err}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn a_real_database_needs_real_token_checks() {
        let err = settings(&[("DATABASE_URL", "postgres://localhost/chat")]).unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET");
        let s = settings(&[
            ("DATABASE_URL", "postgres://localhost/chat"),
            ("JWT_SECRET", "s3cret"),
        ])
        .unwrap();
        assert!(matches!(s.jwt, JwtSource::Configured(_)));
    }

    #[test]
    fn the_development_secret_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = JwtSource::DevelopmentSecret(dir.path().join("data/jwt-secret"));
        let (first, created) = source.resolve().unwrap();
        assert!(created);
        let (second, created) = source.resolve().unwrap();
        assert!(!created);
        match (first.key, second.key) {
            (JwtKey::Secret(a), JwtKey::Secret(b)) => {
                assert_eq!(a, b);
                assert_eq!(a.len(), 64);
            }
            _ => panic!("expected HS256 secrets"),
        }
    }
}
