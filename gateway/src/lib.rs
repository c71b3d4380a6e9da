//! chat-gateway: the browser edge (SPEC §4, §5). It holds no chat state:
//! every request becomes chat-core gRPC calls, so any number of replicas
//! can run.

pub mod config;
pub mod edge;
pub mod error;
pub mod json;
pub mod openapi;
pub mod rest;
pub mod startup;
pub mod upstream;
pub mod ws;

/// Logging set-up: `RUST_LOG` (default `info`) and `LOG_FORMAT`.
pub fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        config::LogFormat::Text => builder.try_init(),
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
