//! `chat-core`: serve (default), `migrate`, or mint a development `token`.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use chat_auth::{JwtAlgorithm, JwtKey, Role, TokenIssuer};
use chat_core::{config::Settings, startup::Application, store::Store};
use chat_runtime::{init_telemetry, init_tracing, shutdown_signal};

const USAGE: &str = "\
usage:
  chat-core [serve]                 run the gRPC service (configuration: environment, see README)
  chat-core migrate                 apply database migrations and exit
  chat-core token --sub ID [--role service] [--ttl SECONDS]
                                    print a token signed with JWT_SECRET (or the embedded
                                    default's development secret under ./data)";

enum Command {
    Serve,
    Migrate,
    Token {
        subject: String,
        role: Role,
        ttl: Duration,
    },
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Command> {
    let command = match args.next().as_deref() {
        None | Some("serve") => Command::Serve,
        Some("migrate") => Command::Migrate,
        Some("token") => {
            let mut subject = None;
            let mut role = Role::User;
            let mut ttl = Duration::from_secs(3600);
            while let Some(flag) = args.next() {
                let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
                match flag.as_str() {
                    "--sub" => subject = Some(value()?),
                    "--role" => {
                        role = match value()?.as_str() {
                            "service" => Role::Service,
                            "user" => Role::User,
                            other => bail!("--role: expected service or user, got {other:?}"),
                        }
                    }
                    "--ttl" => {
                        let seconds: u64 = value()?
                            .parse()
                            .ok()
                            .filter(|s| *s > 0)
                            .context("--ttl: expected a positive number of seconds")?;
                        ttl = Duration::from_secs(seconds);
                    }
                    other => bail!("unknown option {other:?}\n{USAGE}"),
                }
            }
            Command::Token {
                subject: subject.context("--sub is required")?,
                role,
                ttl,
            }
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    };
    if let Some(extra) = args.next() {
        bail!("unexpected argument {extra:?}\n{USAGE}");
    }
    Ok(command)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat-core: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let command = parse_args(std::env::args().skip(1))?;
    let settings = Settings::from_env()?;
    match command {
        Command::Serve => {
            let telemetry = init_telemetry(settings.log_format, "chat-core")?;
            let app = Application::build(&settings).await?;
            let result = app.run_until_stopped(shutdown_signal()).await;
            telemetry.shutdown().await;
            result
        }
        Command::Migrate => {
            init_tracing(settings.log_format);
            let store = Store::connect(&settings.database, 1)
                .await
                .context("connecting to the database (DATABASE_URL)")?;
            store
                .migrate()
                .await
                .context("applying database migrations")?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token { subject, role, ttl } => {
            let (jwt, _) = settings.jwt.resolve()?;
            let JwtKey::Secret(secret) = &jwt.key else {
                bail!(
                    "chat-core token signs HS256 tokens with JWT_SECRET; with a public key configured, tokens come from your identity provider"
                );
            };
            if jwt.algorithm != JwtAlgorithm::Hs256 {
                bail!("chat-core token signs HS256 tokens only");
            }
            let issuer = TokenIssuer::new(secret, jwt.issuer.clone(), jwt.audience.clone());
            let token = issuer
                .issue(&subject, role, ttl)
                .map_err(|err| anyhow::anyhow!("--sub: {err}"))?;
            println!("{token}");
            Ok(())
        }
    }
}
