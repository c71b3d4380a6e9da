//! `chat-core`: serve (default), `migrate`, mint a development `token`, or
//! `verify-transcript` an exported transcript offline.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use chat_auth::{JwtAlgorithm, JwtKey, Role, TokenIssuer};
use chat_core::{
    config::{Settings, TranscriptKeySource},
    startup::Application,
    store::Store,
    transcript::{
        signing::TranscriptSigner,
        verify::{KeyRing, verify},
    },
};
use chat_runtime::{init_telemetry, init_tracing, shutdown_signal};

const USAGE: &str = "\
usage:
  chat-core [serve]                 run the gRPC service (configuration: environment, see README)
  chat-core migrate                 apply database migrations and exit
  chat-core token --sub ID [--role service] [--ttl SECONDS]
                                    print a token signed with JWT_SECRET (or the embedded
                                    default's development secret under ./data)
  chat-core verify-transcript FILE [--keys KEYS.json]
                                    check an exported transcript offline: its hash chain and
                                    its signature, with the keys of a saved transcript-keys
                                    answer or else the configured signing key; names the first
                                    entry that does not verify and exits non-zero";

enum Command {
    Serve,
    Migrate,
    Token {
        subject: String,
        role: Role,
        ttl: Duration,
    },
    VerifyTranscript {
        file: PathBuf,
        keys: Option<PathBuf>,
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
        Some("verify-transcript") => {
            let mut file = None;
            let mut keys = None;
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--keys" => keys = Some(args.next().context("--keys needs a file")?.into()),
                    flag if flag.starts_with("--") => bail!("unknown option {flag:?}\n{USAGE}"),
                    _ if file.is_none() => file = Some(arg.into()),
                    _ => bail!("unexpected argument {arg:?}\n{USAGE}"),
                }
            }
            Command::VerifyTranscript {
                file: file.context("the export FILE is required")?,
                keys,
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
        Command::VerifyTranscript { file, keys } => {
            verify_transcript(&file, keys.as_deref(), &settings.transcript_key)
        }
    }
}

/// Checks an export offline; an error names what does not verify.
fn verify_transcript(
    file: &std::path::Path,
    keys: Option<&std::path::Path>,
    configured: &TranscriptKeySource,
) -> anyhow::Result<()> {
    let read_json = |path: &std::path::Path| -> anyhow::Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    };
    let export = read_json(file)?;
    let ring = match (keys, configured) {
        (Some(path), _) => KeyRing::from_json(&read_json(path)?)
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?,
        (None, TranscriptKeySource::File(path) | TranscriptKeySource::Created(path)) => {
            KeyRing::single(TranscriptSigner::load(path, false)?.verifying_key())
        }
        (None, TranscriptKeySource::Ephemeral) => {
            bail!(
                "no signing key is configured here (TRANSCRIPT_SIGNING_KEY_FILE): pass --keys KEYS.json"
            )
        }
    };
    let verified = verify(&export, &ring)
        .map_err(|failure| anyhow::anyhow!("{}: does not verify: {failure}", file.display()))?;
    println!(
        "verified: thread {}, {} entries, head {}, signed by key {}",
        verified.thread_id, verified.entries, verified.head_hash, verified.key_id
    );
    Ok(())
}
