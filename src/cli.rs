//! The command line: `serve` (the default), `migrate`, `config`, queue inspection,
//! and `dev post` for driving a local instance with correctly signed webhooks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{secret_value, Settings};
use crate::signatures;
use crate::startup::{shutdown_signal, Application};
use crate::store::{now_ms, Queue, QueueRow, QueueState, Store};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "referloop",
    version,
    about = "Two-sided referrals over WhatsApp, tracked in HubSpot"
)]
pub struct Cli {
    /// Configuration file layered over the defaults (see config/default.toml).
    #[arg(long, global = true, env = "REFERLOOP_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server and the background worker (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Exit 0 when the local server answers GET /healthz (the Docker HEALTHCHECK).
    Health,
    /// Received webhook events.
    Inbox {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Jobs: the outbox of calls to outside APIs.
    Jobs {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Outbound calls recorded in sandbox mode.
    Outbound {
        #[command(subcommand)]
        action: OutboundAction,
    },
    /// Development helpers.
    Dev {
        #[command(subcommand)]
        action: DevAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List items, newest first.
    List(ListArgs),
    /// Re-queue a dead item with a fresh set of attempts.
    Retry { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum OutboundAction {
    /// List recorded calls, newest first.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only items in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// One JSON object per line, for machines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateFilter {
    Queued,
    Running,
    Done,
    Failed,
    Dead,
}

impl From<StateFilter> for QueueState {
    fn from(s: StateFilter) -> Self {
        match s {
            StateFilter::Queued => QueueState::Queued,
            StateFilter::Running => QueueState::Running,
            StateFilter::Done => QueueState::Done,
            StateFilter::Failed => QueueState::Failed,
            StateFilter::Dead => QueueState::Dead,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DevAction {
    /// POST a JSON file to a running referloop, signed with the configured secret.
    Post {
        #[arg(value_enum)]
        source: DevSource,
        file: PathBuf,
        /// Query string for HubSpot, e.g. "trigger=nps".
        #[arg(long, default_value = "")]
        query: String,
        /// Where referloop listens (default: server.public_base_url).
        #[arg(long)]
        base_url: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DevSource {
    Whatsapp,
    Hubspot,
    Stripe,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("referloop: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log.format, &settings.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("referloop: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command.unwrap_or(Command::Serve), settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("referloop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            Application::build(settings)
                .await?
                .run_until_stopped(shutdown_signal())
                .await?;
        }
        Command::Migrate => {
            open_store(&settings).await?;
            println!("migrations applied");
        }
        Command::Config => print!("{}", settings.to_redacted_toml()),
        Command::Health => return health_check(&settings).await,
        Command::Inbox { action } => return queue_command(&settings, Queue::Inbox, action).await,
        Command::Jobs { action } => return queue_command(&settings, Queue::Jobs, action).await,
        Command::Outbound {
            action: OutboundAction::List(args),
        } => {
            let store = open_store(&settings).await?;
            for call in store.list_outbound_calls(args.limit).await? {
                if args.json {
                    println!("{}", serde_json::to_string(&call)?);
                } else {
                    println!(
                        "#{} {} {} {}\n  {}",
                        call.id,
                        format_ms(call.created_at),
                        call.method,
                        call.url,
                        call.body
                    );
                }
            }
        }
        Command::Dev {
            action:
                DevAction::Post {
                    source,
                    file,
                    query,
                    base_url,
                },
        } => {
            return dev_post(&settings, source, &file, &query, base_url).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn health_check(settings: &Settings) -> anyhow::Result<ExitCode> {
    // A wildcard listen address is reached through loopback.
    let listen = settings
        .server
        .listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?;
    let healthy = client
        .get(format!("http://{listen}/healthz"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database.url, settings.database.max_connections)
        .await
        .context("connecting to the database (database.url)")?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

async fn queue_command(settings: &Settings, queue: Queue, action: QueueAction) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    match action {
        QueueAction::List(args) => {
            let rows = store.list(queue, args.state.map(Into::into), args.limit).await?;
            for row in &rows {
                if args.json {
                    println!("{}", serde_json::to_string(row)?);
                } else {
                    println!("{}", describe(row));
                }
            }
            if rows.is_empty() && !args.json {
                eprintln!("(none)");
            }
        }
        QueueAction::Retry { id } => {
            if store.retry_dead(queue, id).await? {
                println!("#{id} re-queued");
            } else {
                eprintln!("#{id} is not a dead item; only dead items can be retried");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn format_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn describe(row: &QueueRow) -> String {
    let mut line = format!(
        "#{} {:<7} {} {} attempts {}/{} created {}",
        row.id,
        row.state,
        row.kind,
        row.key,
        row.attempts,
        row.max_attempts,
        format_ms(row.created_at)
    );
    if row.state == "failed" || row.state == "queued" {
        line.push_str(&format!(" next {}", format_ms(row.run_at)));
    }
    if let Some(error) = &row.last_error {
        line.push_str(&format!("\n  last error: {error}"));
    }
    if let Some(note) = &row.note {
        line.push_str(&format!("\n  note: {note}"));
    }
    line
}

async fn dev_post(
    settings: &Settings,
    source: DevSource,
    file: &std::path::Path,
    query: &str,
    base_url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let base = base_url.unwrap_or_else(|| settings.server.public_base_url.clone());
    let base = base.trim_end_matches('/');
    let (path, headers) = match source {
        DevSource::Whatsapp => {
            let secret = secret_value(&settings.whatsapp.app_secret).context("whatsapp.app_secret is not set")?;
            (
                "/webhooks/whatsapp",
                vec![("x-hub-signature-256".to_string(), signatures::sign_meta(secret, &body))],
            )
        }
        DevSource::Hubspot => {
            let secret = secret_value(&settings.hubspot.client_secret).context("hubspot.client_secret is not set")?;
            let timestamp = now_ms().to_string();
            let path_and_query = if query.is_empty() {
                "/webhooks/hubspot".to_string()
            } else {
                format!("/webhooks/hubspot?{query}")
            };
            let public = format!(
                "{}{}",
                settings.server.public_base_url.trim_end_matches('/'),
                path_and_query
            );
            let signature = signatures::sign_hubspot_v3(secret, "POST", &public, &body, &timestamp);
            (
                "/webhooks/hubspot",
                vec![
                    ("x-hubspot-signature-v3".to_string(), signature),
                    ("x-hubspot-request-timestamp".to_string(), timestamp),
                ],
            )
        }
        DevSource::Stripe => {
            let secret = secret_value(&settings.stripe.webhook_secret).context("stripe.webhook_secret is not set")?;
            (
                "/webhooks/stripe",
                vec![(
                    "stripe-signature".to_string(),
                    signatures::sign_stripe(secret, &body, now_ms() / 1000),
                )],
            )
        }
    };
    let url = if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    };
    let client = reqwest::Client::new();
    let mut request = client.post(&url).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    println!("{} {}", status.as_u16(), response.text().await.unwrap_or_default());
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
