//! `chat-gateway`: configuration → `Application::build` → run until
//! SIGTERM or Ctrl-C.

use std::process::ExitCode;

use chat_gateway::{config::Settings, startup::Application};
use chat_runtime::{init_telemetry, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let telemetry = init_telemetry(settings.log_format, "chat-gateway")?;
    let app = Application::build(&settings).await?;
    let result = app.run_until_stopped(shutdown_signal()).await;
    telemetry.shutdown().await;
    result
}
