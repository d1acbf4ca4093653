//! The command line: `serve` (the default), `migrate`, `config`, queue inspection,
//! and `dev post` for driving a local instance with correctly signed webhooks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::clock::rfc3339 as format_ms;
use crate::config::{Account, Settings};
use crate::dev::{self, DevClient};
use crate::domain::access::Role;
use crate::domain::messaging::MessagePurpose;
use crate::domain::phone::E164;
use crate::domain::state::{MatchedBy, Persisted, QueueState};
use crate::startup::{shutdown_signal, Application};
use crate::store::{Queue, QueueRow, Store};
use crate::telemetry::{self, mask_phone};

/// `println!` for what a command prints: a failed write (a closed pipe, as in
/// `referloop jobs list | head -2`) becomes an error that [`run`] ends on quietly, where
/// `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

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
    /// Invites and referrals, newest first.
    Referrals {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// WhatsApp messages we sent or queued, newest first.
    Messages {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Conversions recorded from HubSpot, Stripe and the API, newest first.
    Conversions {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Rewards (the ledger) and the discount-code pool.
    Rewards {
        #[command(subcommand)]
        action: RewardsAction,
    },
    /// Check everything going live depends on: one line per check, non-zero exit when
    /// anything blocks.
    Doctor {
        /// The checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create what referloop needs in an outside account (safe to run again).
    Setup {
        #[command(subcommand)]
        target: SetupTarget,
    },
    /// API tokens.
    Api {
        #[command(subcommand)]
        action: ApiAction,
    },
    /// Dashboard users (sign in at /admin).
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// The Flow data endpoint's key pair.
    Flow {
        #[command(subcommand)]
        action: FlowAction,
    },
    /// Development helpers: signed webhooks to a running referloop.
    Dev {
        /// Where referloop listens (default: http://<server.listen>).
        #[arg(long, global = true)]
        base_url: Option<String>,
        /// After an accepted webhook, wait up to this long for the work it caused to be
        /// done (0: do not wait), so the next command finds it.
        #[arg(long, global = true, default_value_t = 30)]
        wait_seconds: u64,
        #[command(subcommand)]
        action: DevAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum SetupTarget {
    /// Templates, the nomination Flow and the app's webhook subscription.
    Whatsapp {
        /// Print the calls that would be made; create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The webhook endpoint for <public_base_url>/webhooks/stripe, and the coupons rewards name.
    Stripe {
        /// Print the calls that would be made; create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The contact property group and properties (and association labels when
    /// hubspot.record_referral_links is on).
    Hubspot {
        /// Print the calls that would create what is missing; create nothing.
        #[arg(long)]
        dry_run: bool,
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
pub enum RewardsAction {
    /// List rewards, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Load discount codes into the pool: one per line, or the first column of a CSV
    /// (a header line "code" is skipped). Codes already loaded are ignored.
    LoadCodes { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ApiAction {
    /// Print the SHA-256 digest of a token, for api.tokens.
    HashToken { token: String },
}

#[derive(Debug, Subcommand)]
pub enum FlowAction {
    /// Create an RSA-2048 key pair: the private key (PKCS#8 PEM) goes to a new file readable
    /// by its owner only, the public key to standard output.
    Keygen {
        /// Where to write the private key; an existing file is never overwritten.
        #[arg(long, default_value = "flow_private_key.pem")]
        out: PathBuf,
    },
    /// Print the public key of the configured private key (what setup uploads to Meta).
    PublicKey,
}

/// `--role`: a role by its stored name (clap lists the names when another is given).
fn role_named(name: &str) -> Result<Role, String> {
    Role::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|role| role.as_str()).collect();
        format!("must be one of: {}", names.join(", "))
    })
}

#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Create a user, or set an existing one's role and password. The password is read
    /// from standard input (one line, at least 12 characters), never from the command line.
    Add {
        name: String,
        /// viewer (reads) or operator (also retries dead work and voids rewards).
        #[arg(long, default_value = "viewer", value_parser = role_named)]
        role: Role,
    },
    /// List the users.
    List,
    /// Disable a user and end their sessions.
    Disable { name: String },
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
    },
    /// A HubSpot workflow trigger for a contact (flat body).
    Trigger {
        #[arg(long)]
        contact: String,
        #[arg(long)]
        phone: String,
        #[arg(long)]
        name: String,
        /// NPS score; ignored with --milestone.
        #[arg(long, default_value = "10")]
        score: String,
        /// A milestone trigger with this name instead of NPS.
        #[arg(long)]
        milestone: Option<String>,
    },
    /// The invited customer taps "Refer someone".
    Tap {
        #[arg(long)]
        invite: i64,
    },
    /// The customer completes the Flow, nominating a friend.
    Nominate {
        #[arg(long)]
        invite: i64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        phone: String,
        #[arg(long, default_value = "")]
        message: String,
        /// The referrer confirms the friend agreed to be contacted.
        #[arg(long)]
        consent: bool,
    },
    /// An inbound text (a friend arriving through the share link, or STOP).
    Say {
        #[arg(long)]
        from: String,
        text: String,
    },
    /// A HubSpot conversion (the friend's lifecycle stage became customer).
    Convert {
        /// The friend's phone (matched against nominated friends).
        #[arg(long)]
        phone: String,
        /// The friend's HubSpot contact id (default: derived from the phone).
        #[arg(long)]
        contact: Option<String>,
    },
    /// A status webhook for a message we sent: by wamid, or the friend invite of a referral.
    Status {
        #[arg(long, required_unless_present = "referral")]
        wamid: Option<String>,
        /// The referral whose friend invite the status is for.
        #[arg(long)]
        referral: Option<i64>,
        #[arg(long, default_value = "delivered")]
        status: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DevSource {
    Whatsapp,
    Hubspot,
    Stripe,
}

/// The least length of a dashboard password.
const MIN_PASSWORD: usize = 12;

fn flow_command(settings: &Settings, action: FlowAction) -> anyhow::Result<ExitCode> {
    match action {
        FlowAction::Keygen { out } => {
            let (private_pem, public_pem) = crate::whatsapp::flow_crypto::generate_key_pair()?;
            write_private_file(&out, &private_pem)
                .with_context(|| format!("writing the private key to {}", out.display()))?;
            eprintln!(
                "private key written to {} (mode 600). Point whatsapp.flow_private_key_file at it \
                 (or put its contents in REFERLOOP_WHATSAPP__FLOW_PRIVATE_KEY), then run \
                 `referloop setup whatsapp` to upload the public key:",
                out.display()
            );
            out!("{public_pem}");
        }
        FlowAction::PublicKey => {
            match crate::whatsapp::flow_crypto::configured_key(settings) {
                Ok(Some(key)) => out!("{}", key.public_key_pem()),
                Ok(None) => {
                    eprintln!("referloop: no Flow private key is configured (whatsapp.flow_private_key or flow_private_key_file)");
                    return Ok(ExitCode::FAILURE);
                }
                Err(problem) => {
                    eprintln!("referloop: {problem}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` (never replacing a file) readable and writable by its owner only.
fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

async fn users(settings: &Settings, action: UsersAction) -> anyhow::Result<ExitCode> {
    let store = connect(settings).await?;
    store.migrate().await.context("applying migrations")?;
    match action {
        UsersAction::Add { name, role } => {
            let name = name.trim().to_string();
            if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
                eprintln!("referloop: the name must be 1 to 100 printable characters");
                return Ok(ExitCode::from(2));
            }
            // On a terminal: a prompt, and what is typed is not echoed. From a pipe: the
            // first line.
            let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                rpassword::prompt_password(format!("Password for {name} (at least {MIN_PASSWORD} characters): "))
                    .context("reading the password from the terminal")?
            } else {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                line
            };
            let password = password.trim_end_matches(['\n', '\r']);
            if password.chars().count() < MIN_PASSWORD {
                eprintln!("referloop: give the password on standard input, at least {MIN_PASSWORD} characters");
                return Ok(ExitCode::from(2));
            }
            let hash = crate::app::accounts::hash_password(password)
                .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
            store.upsert_admin_user(&name, role, &hash).await?;
            outln!(
                "user {name} ({role}) saved; sign in at {}/admin",
                settings.server.public_base_url.as_str()
            );
        }
        UsersAction::List => {
            for user in store.admin_users().await? {
                let state = if user.disabled { " (disabled)" } else { "" };
                outln!("{}\t{}{state}", user.name, user.role);
            }
        }
        UsersAction::Disable { name } => {
            if !store.disable_admin_user(&name).await? {
                eprintln!("referloop: no user named {name}");
                return Ok(ExitCode::from(1));
            }
            outln!("user {name} disabled; their sessions ended");
        }
    }
    Ok(ExitCode::SUCCESS)
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
    telemetry::init(settings.log.format, settings.log.level.text());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("referloop: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command.unwrap_or(Command::Serve), settings)) {
        Ok(code) => code,
        // The reader went away (`| head`): what it did not read is not an error.
        Err(e) if is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("referloop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
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
            connect(&settings)
                .await?
                .migrate()
                .await
                .context("applying migrations")?;
            outln!("migrations applied");
        }
        Command::Config => out!("{}", settings.to_redacted_toml()),
        Command::Setup {
            target: SetupTarget::Hubspot { dry_run },
        } => return setup_hubspot(&settings, dry_run).await,
        Command::Doctor { json } => return doctor(&settings, json).await,
        Command::Setup {
            target: SetupTarget::Whatsapp { dry_run },
        } => return setup_whatsapp(&settings, dry_run).await,
        Command::Setup {
            target: SetupTarget::Stripe { dry_run },
        } => return setup_stripe(&settings, dry_run).await,
        Command::Health => return health_check(&settings).await,
        Command::Inbox { action } => return queue_command(&settings, Queue::Inbox, action).await,
        Command::Jobs { action } => return queue_command(&settings, Queue::Jobs, action).await,
        Command::Outbound {
            action: OutboundAction::List(args),
        } => {
            let store = open_store(&settings).await?;
            for call in store.list_outbound_calls(args.limit).await? {
                if args.json {
                    outln!("{}", serde_json::to_string(&call)?);
                } else {
                    outln!(
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
        Command::Referrals { limit, json } => {
            let store = open_store(&settings).await?;
            for invite in store.list_invites(limit).await? {
                if json {
                    outln!("{}", serde_json::to_string(&invite)?);
                } else {
                    outln!(
                        "invite #{} contact {} {} {} code {} {}{}",
                        invite.id,
                        invite.contact_id,
                        invite.trigger,
                        invite
                            .phone
                            .as_ref()
                            .map(|p| mask_phone(p.as_str()))
                            .unwrap_or_else(|| "-".into()),
                        invite.referral_code.as_deref().unwrap_or("-"),
                        invite.state.as_str(),
                        invite.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    );
                }
            }
            for referral in store.list_referrals(limit).await? {
                if json {
                    outln!("{}", serde_json::to_string(&referral)?);
                } else {
                    outln!(
                        "referral #{} invite #{} friend {} {} consent {} {}{}",
                        referral.id,
                        referral.invite_id,
                        referral.friend_name,
                        mask_phone(E164::text_of(referral.friend_phone.as_ref())),
                        referral.consent,
                        referral.state.as_str(),
                        referral
                            .reason
                            .map(|r| format!(" ({})", r.as_str()))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Command::Messages { limit, json } => {
            let store = open_store(&settings).await?;
            for message in store.list_messages(limit).await? {
                if json {
                    outln!("{}", serde_json::to_string(&message)?);
                } else {
                    outln!(
                        "message #{} {} to {} {} wamid {}{}",
                        message.id,
                        message.purpose.as_str(),
                        mask_phone(message.to_phone.as_str()),
                        message.status.as_str(),
                        message.wamid.as_deref().unwrap_or("-"),
                        message.error_code.map(|c| format!(" error {c}")).unwrap_or_default()
                    );
                }
            }
        }
        Command::Conversions { limit, json } => {
            let store = open_store(&settings).await?;
            for c in store.list_conversions(limit).await? {
                if json {
                    outln!("{}", serde_json::to_string(&c)?);
                } else {
                    outln!(
                        "conversion #{} {} {} referral {} {} (matched by {}) {}",
                        c.id,
                        c.source.as_str(),
                        c.external_id,
                        c.referral_id.map(|r| format!("#{r}")).unwrap_or_else(|| "-".into()),
                        c.outcome.as_str(),
                        c.matched_by.map_or("-", MatchedBy::as_str),
                        format_ms(c.created_at)
                    );
                }
            }
        }
        Command::Rewards {
            action: RewardsAction::List { limit, json },
        } => {
            let store = open_store(&settings).await?;
            for r in store.list_rewards(limit).await? {
                if json {
                    outln!("{}", serde_json::to_string(&r)?);
                } else {
                    outln!(
                        "reward #{} referral #{} {} {} {} {} {} {}{}",
                        r.id,
                        r.referral_id,
                        r.beneficiary.as_str(),
                        mask_phone(E164::text_of(r.phone.as_ref())),
                        r.kind.as_str(),
                        r.state.as_str(),
                        r.amount,
                        r.code.as_deref().unwrap_or("-"),
                        r.last_error.map(|e| format!("\n  last error: {e}")).unwrap_or_default()
                    );
                }
            }
            outln!("free pool codes: {}", store.free_pool_codes().await?);
        }
        Command::Rewards {
            action: RewardsAction::LoadCodes { file },
        } => {
            let store = open_store(&settings).await?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let codes = parse_code_file(&text)?;
            let loaded = store.load_reward_codes(&codes).await?;
            outln!(
                "{loaded} new code(s) loaded ({} read); {} free",
                codes.len(),
                store.free_pool_codes().await?
            );
        }
        Command::Api {
            action: ApiAction::HashToken { token },
        } => {
            use sha2::Digest;
            outln!("{}", hex::encode(sha2::Sha256::digest(token.as_bytes())));
        }
        Command::Users { action } => return users(&settings, action).await,
        Command::Flow { action } => return flow_command(&settings, action),
        Command::Dev {
            base_url,
            wait_seconds,
            action,
        } => return dev_command(&settings, base_url, wait_seconds, action).await,
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

/// Codes from a CSV file: the first column of each record, without a "code" header or blanks.
fn parse_code_file(text: &str) -> anyhow::Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut codes = Vec::new();
    for record in reader.records() {
        let record = record.context("reading the codes file as CSV")?;
        match record.get(0) {
            Some(code) if !code.is_empty() && !code.eq_ignore_ascii_case("code") => codes.push(code.to_string()),
            _ => {}
        }
    }
    Ok(codes)
}

/// The services a setup or doctor command calls the accounts through.
async fn account_services(settings: &Settings, store: Store) -> anyhow::Result<crate::app::Services> {
    let services = crate::app::Services::new(store, std::sync::Arc::new(settings.clone()), Default::default())?;
    if Account::ALL.iter().any(|a| !settings.live(*a)) {
        outln!(
            "accounts: {} (recorded calls: `referloop outbound list`)",
            settings.accounts_line()
        );
    }
    Ok(services)
}

/// Prints a setup report of `account` (recorded, not live: what would be created);
/// failure when anything in it is wrong.
fn print_report(settings: &Settings, account: Account, report: crate::setup::Report) -> anyhow::Result<ExitCode> {
    let report = if !settings.live(account) {
        report.recorded_only()
    } else {
        report
    };
    for line in report.lines() {
        outln!("{line}");
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn doctor(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    // The database is one of the checks: connect without requiring it to be ready.
    let services = account_services(settings, connect(settings).await?).await?;
    let diagnosis = crate::setup::doctor::run(&services).await;
    if json {
        outln!("{}", serde_json::to_string_pretty(&diagnosis)?);
    } else {
        for line in diagnosis.lines() {
            outln!("{line}");
        }
        if diagnosis.ok() {
            outln!("nothing blocks going live");
        }
    }
    Ok(if diagnosis.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn setup_whatsapp(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let services = account_services(settings, migrated_store(settings).await?).await?;
    let report = crate::setup::whatsapp::setup(&services.whatsapp, settings, dry_run).await;
    print_report(settings, Account::WhatsApp, report)
}

async fn setup_stripe(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let services = account_services(settings, migrated_store(settings).await?).await?;
    let done = crate::setup::stripe::setup(&services.stripe, settings, dry_run)
        .await
        .context("Stripe refused a setup call")?;
    let status = print_report(settings, Account::Stripe, done.report)?;
    if let Some(secret) = done.new_secret {
        // Shown once: Stripe never returns it again.
        outln!("the endpoint's signing secret (store it as stripe.webhook_secret; it is not shown again): {secret}");
    }
    Ok(status)
}

async fn setup_hubspot(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let services = account_services(settings, migrated_store(settings).await?).await?;
    let report = crate::setup::hubspot::setup(&services.hubspot, settings, dry_run)
        .await
        .context("HubSpot refused a setup call")?;
    print_report(settings, Account::HubSpot, report)
}

/// Connects for a command that needs the schema to do its work (setup records its calls):
/// migrates it first, as `serve` does, so the go-live steps run in order on a fresh
/// install.
async fn migrated_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = connect(settings).await?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

/// Connects for a command that reads or writes rows: no migrations are run (and none of
/// their notices printed); a database without referloop's tables is said plainly.
async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = connect(settings).await?;
    if let Err(not_ready) = store.readiness().await {
        anyhow::bail!(
            "the database at {} is not ready: {}. Run `referloop migrate` (or start `referloop serve`, which migrates).",
            crate::config::redact_url(&settings.database.url),
            not_ready.public_reason()
        );
    }
    Ok(store)
}

/// Connects, or says once and plainly which database could not be reached and what to try
/// (never its password).
async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    let url = &settings.database.url;
    Store::connect_with(
        url,
        settings.database.max_connections.get(),
        settings.database.acquire_timeout.max(Duration::from_secs(3)),
    )
    .await
    .map_err(|e| anyhow::anyhow!(crate::startup::unreachable_database(url, &e)))
}

async fn queue_command(settings: &Settings, queue: Queue, action: QueueAction) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    match action {
        QueueAction::List(args) => {
            let rows = store.list(queue, args.state.map(Into::into), args.limit).await?;
            for row in &rows {
                if args.json {
                    outln!("{}", serde_json::to_string(row)?);
                } else {
                    outln!("{}", describe(row));
                }
            }
            if rows.is_empty() && !args.json {
                eprintln!("(none)");
            }
        }
        QueueAction::Retry { id } => {
            if store.retry_dead(queue, id).await? {
                outln!("#{id} re-queued");
            } else {
                eprintln!("#{id} is not a dead item; only dead items can be retried");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(row: &QueueRow) -> String {
    let mut line = format!(
        "#{} {:<7} {} {} attempts {}/{} created {}",
        row.id,
        row.state.as_str(),
        row.kind,
        row.key,
        row.attempts,
        row.max_attempts,
        format_ms(row.created_at)
    );
    if QueueState::WAITING.contains(&row.state) {
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

async fn dev_command(
    settings: &Settings,
    base_url: Option<String>,
    wait_seconds: u64,
    action: DevAction,
) -> anyhow::Result<ExitCode> {
    let client = DevClient::new(settings, base_url);
    let accepted = match action {
        DevAction::Post { source, file, query } => {
            let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            match source {
                DevSource::Whatsapp => client.whatsapp(body).await?,
                DevSource::Hubspot => client.hubspot(&query, body).await?,
                DevSource::Stripe => client.stripe(body).await?,
            }
        }
        DevAction::Trigger {
            contact,
            phone,
            name,
            score,
            milestone,
        } => {
            let body = serde_json::json!({"hs_object_id": contact, "firstname": name, "mobilephone": phone,
                "hs_feedback_last_nps_rating": score, "hs_feedback_last_survey_date": crate::clock::system_ms().to_string()});
            let query = match milestone {
                Some(name) => {
                    let name: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
                    format!("trigger=milestone&name={name}")
                }
                None => "trigger=nps".to_string(),
            };
            client.hubspot(&query, body.to_string().into_bytes()).await?
        }
        DevAction::Tap { invite } => {
            let store = open_store(settings).await?;
            let row = store.invite(invite).await?.context("no such invite")?;
            let phone = row.phone.context("that invite has no phone")?;
            client.whatsapp(dev::refer_tap(phone.as_str(), invite)).await?
        }
        DevAction::Nominate {
            invite,
            name,
            phone,
            message,
            consent,
        } => {
            let store = open_store(settings).await?;
            let (referrer, token) = dev::latest_flow_token(&store, invite).await?;
            client
                .whatsapp(dev::flow_reply(&referrer, &token, &name, &phone, &message, consent))
                .await?
        }
        DevAction::Say { from, text } => client.whatsapp(dev::text(&from, &text)).await?,
        DevAction::Convert { phone, contact } => {
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            let contact = contact.unwrap_or_else(|| format!("phone-{digits}"));
            let body = serde_json::json!({"hs_object_id": contact, "mobilephone": phone, "lifecyclestage": "customer"});
            client
                .hubspot("trigger=conversion", body.to_string().into_bytes())
                .await?
        }
        DevAction::Status {
            wamid,
            referral,
            status,
        } => {
            let store = open_store(settings).await?;
            let message = match (wamid, referral) {
                (Some(wamid), _) => store
                    .message_by_wamid(&wamid)
                    .await?
                    .context("no message with that wamid")?,
                (None, Some(referral)) => store
                    .list_messages(1000)
                    .await?
                    .into_iter()
                    .find(|m| m.referral_id == Some(referral) && m.purpose == MessagePurpose::FriendInvite)
                    .context("no friend invite for that referral")?,
                (None, None) => anyhow::bail!("give --wamid or --referral"),
            };
            let wamid = message.wamid.clone().context("that message has not been sent yet")?;
            client
                .whatsapp(dev::status(&wamid, &status, message.to_phone.as_str()))
                .await?
        }
    };
    if !accepted {
        return Ok(ExitCode::FAILURE);
    }
    if wait_seconds > 0 {
        wait_for_the_work(settings, std::time::Duration::from_secs(wait_seconds)).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until the worker has done what is due now (or within a minute: a retry a few
/// seconds away counts, a reward held for days does not), so that a walk-through's next
/// command finds the invite, message or reward the last one caused.
async fn wait_for_the_work(settings: &Settings, limit: std::time::Duration) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let horizon = store.now_ms() + 60_000;
        let mut unfinished = 0;
        for queue in [Queue::Inbox, Queue::Jobs] {
            unfinished += store.unfinished_before(queue, horizon).await?;
        }
        if unfinished == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{unfinished} item(s) still waiting after {} s: is the worker running (`referloop jobs list`)?",
                limit.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_code_file;

    #[test]
    fn codes_are_the_first_column_without_header_or_blanks() {
        let file = "code,note\nSAVE10, first\n\n\"SAVE,20\",quoted\n  SAVE30  \nCODE\n";
        assert_eq!(parse_code_file(file).expect("codes"), ["SAVE10", "SAVE,20", "SAVE30"]);
        assert!(parse_code_file("").expect("no codes").is_empty());
    }
}
