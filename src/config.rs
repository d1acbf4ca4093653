//! Typed settings, layered: built-in defaults (`config/default.toml`, embedded in the
//! binary) -> an optional file -> `REFERLOOP_<SECTION>__<KEY>` environment variables
//! -> `DATABASE_URL`. Secrets are `SecretString`s: their `Debug` is redacted and
//! `referloop config` prints them as "[redacted]".

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::catalogue::Catalogues;
use crate::domain::code::CodePattern;
use crate::domain::nomination::NominationRefusal;
use crate::domain::referral::FriendInviteMode;
use crate::domain::reward::RewardKind;
use serde::{Deserialize, Serialize, Serializer};

/// Settings that are lists: in the environment, comma-separated.
const LIST_KEYS: [&str; 11] = [
    "worker.retry_schedule_seconds",
    "programme.stop_button_payloads",
    "programme.stop_keyword_languages",
    "hubspot_properties.phone",
    "templates.languages",
    "templates.invite_body",
    "templates.flow_body",
    "templates.friend_invite_body",
    "templates.thanks_body",
    "templates.reward_body",
    "api.tokens",
];

/// A list setting from the environment: `a,b,c`, or a JSON array (`["a","b"]`, numbers
/// allowed), each item a string.
fn env_list(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if !value.starts_with('[') {
        return Ok(value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect());
    }
    let refused =
        || "a list is comma-separated (a,b) or a JSON array ([\"a\",\"b\"]) of strings or numbers".to_string();
    let items: Vec<serde_json::Value> = serde_json::from_str(value).map_err(|_| refused())?;
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => Err(refused()),
        })
        .collect()
}

/// Settings that left the configuration, each with where it went: a configuration that
/// still sets one is told so rather than "unknown key".
const REMOVED_KEYS: [(&str, &str); 4] = [
    (
        "replies",
        "the reply texts moved to the message catalogue, `[replies]` in templates/messages/<language>.toml; put the texts you change in a file of that name under `templates.catalogue_dir`",
    ),
    (
        "programme.stop_keywords",
        "stop keywords moved to each language's message catalogue (`stop_keywords` in templates/messages/<language>.toml, overridden under `templates.catalogue_dir`); `programme.stop_keyword_languages` picks the languages",
    ),
    (
        "programme.default_personal_message",
        "it moved to the message catalogue, `default_personal_message` under `[replies]` in templates/messages/<language>.toml (overridden under `templates.catalogue_dir`)",
    ),
    (
        "templates.flow_cta",
        "it moved to the message catalogue, `flow_cta` under `[replies]` in templates/messages/<language>.toml (overridden under `templates.catalogue_dir`)",
    ),
];

/// The defaults, one documented key each; also what the binary falls back to.
/// The most inbox events one loop claims at once (its statements bind two values each).
pub const MAX_INBOX_BATCH: usize = 1000;
/// The most jobs a job loop claims at once.
pub const MAX_JOB_BATCH: usize = 100;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The outside accounts referloop calls; each is live or recorded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    WhatsApp,
    HubSpot,
    Stripe,
}

impl Account {
    pub const ALL: [Account; 3] = [Account::WhatsApp, Account::HubSpot, Account::Stripe];

    pub fn as_str(self) -> &'static str {
        match self {
            Account::WhatsApp => "WhatsApp",
            Account::HubSpot => "HubSpot",
            Account::Stripe => "Stripe",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `None`: each account is recorded until its credential is set; see [`Settings::live`].
    #[serde(rename = "sandbox")]
    pub sandbox_setting: Option<bool>,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub worker: WorkerSettings,
    pub whatsapp: WhatsAppSettings,
    pub hubspot: HubSpotSettings,
    pub stripe: StripeSettings,
    pub programme: ProgrammeSettings,
    pub hubspot_properties: HubSpotProperties,
    pub templates: TemplateSettings,
    pub api: ApiSettings,
    pub rewards: RewardSettings,
    /// The texts referloop writes, per configured language (`templates/messages/`), loaded
    /// after the settings themselves.
    #[serde(skip)]
    pub catalogues: Catalogues,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Replies {
    /// The interactive Flow sent when the customer taps "Refer someone".
    pub flow_prompt: String,
    /// To the referrer: the message to forward to the friend.
    pub share_link: String,
    /// Pre-filled in the friend's chat by the share link.
    pub share_prefill: String,
    /// To a friend who arrived through the share link.
    pub friend_welcome: String,
    /// To someone who opted out by keyword.
    pub opt_out_ack: String,
    /// To the referrer, one per refusal reason (`NominationRefusal::reason`).
    pub refusals: std::collections::BTreeMap<String, String>,
}

impl Replies {
    /// `template` with each `{name}` replaced by its value.
    pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
        values.iter().fold(template.to_string(), |text, (name, value)| {
            text.replace(&format!("{{{name}}}"), value)
        })
    }

    /// The reply for a refused nomination.
    pub fn refusal(&self, refusal: &NominationRefusal, friend_name: &str) -> String {
        let friend = match friend_name.trim() {
            "" => "your friend",
            name => name,
        };
        let template = self
            .refusals
            .get(refusal.reason())
            .map(String::as_str)
            .unwrap_or_default();
        Self::fill(template, &[("friend_name", friend)])
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSettings {
    pub pool_low_watermark: i64,
    pub referrer: RewardSide,
    pub friend: RewardSide,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSide {
    pub kind: RewardKind,
    pub amount: i64,
    pub currency: String,
    pub description: String,
    /// The description in other languages (language code → text), chosen like templates.
    #[serde(default)]
    pub descriptions: std::collections::BTreeMap<String, String>,
    pub static_code: String,
    pub stripe_coupon: String,
    pub hubspot_property: String,
    pub webhook_url: String,
    #[serde(default, serialize_with = "redact")]
    pub webhook_secret: Option<SecretString>,
}

impl RewardSide {
    /// What the beneficiary is told they get, in their language when one is configured.
    pub fn description_in(&self, language: &str) -> &str {
        let languages: Vec<String> = self.descriptions.keys().cloned().collect();
        let chosen = crate::domain::messaging::pick_language(Some(language), &languages, "");
        self.descriptions
            .get(&chosen)
            .map(String::as_str)
            .unwrap_or(&self.description)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub public_base_url: String,
    pub request_timeout_seconds: u64,
    /// A client must send a request's headers within this time.
    pub header_read_timeout_seconds: u64,
    /// A connection with no traffic for this long is closed (idle keep-alive sockets).
    pub idle_timeout_seconds: u64,
    /// Connections served at once; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// Events one webhook request may carry; a larger batch is refused (413).
    pub max_events_per_request: usize,
    /// Tasks storing received events, each grouping the requests waiting into one
    /// statement.
    pub ingest_writers: usize,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a database connection before giving up (a 503 for
    /// webhooks, so the sender retries promptly during an outage).
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub const ALL: [LogFormat; 2] = [LogFormat::Text, LogFormat::Json];
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub enabled: bool,
    /// Loops claiming inbox events (webhooks received).
    pub inbox_concurrency: usize,
    /// Loops claiming jobs (sends and outside calls); apart from the inbox loops, so a
    /// burst of one never starves the other.
    pub job_concurrency: usize,
    /// Inbox events an inbox loop claims at once; Meta's statuses among them are applied
    /// in one transaction.
    pub inbox_batch: NonZeroUsize,
    /// Jobs a job loop claims at once (one statement) and runs side by side.
    pub job_batch: NonZeroUsize,
    /// The inbox is backlogged (`/readyz` says so, and a metric and an alert) while more
    /// events than this wait, or the oldest has waited longer than
    /// `inbox_backlog_seconds`.
    pub inbox_backlog_events: NonZeroU64,
    pub inbox_backlog_seconds: NonZeroU64,
    /// How long a send interrupted mid-request waits for Meta's status before it is sent
    /// again.
    pub interrupted_send_wait_seconds: u64,
    /// Limits on every call to Meta, HubSpot, Stripe and reward webhooks: connecting, and
    /// the whole request. A call that times out after sending counts as "may have acted".
    pub outbound_connect_timeout_ms: u64,
    pub outbound_timeout_ms: u64,
    pub poll_interval_ms: u64,
    pub lease_seconds: u64,
    pub retry_schedule_seconds: Vec<u64>,
    pub retry_jitter: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppSettings {
    pub api_base: String,
    pub api_version: String,
    pub phone_number_id: String,
    pub waba_id: String,
    /// The business's name as customers know it (shown in the Flow's consent line).
    pub business_name: String,
    pub business_number: String,
    pub max_messages_per_second: u32,
    /// The least time between two messages to the same recipient (Meta's pair limit).
    pub pair_spacing_ms: u64,
    /// How often a send held by a paused or rejected template looks again.
    pub template_recheck_seconds: u64,
    #[serde(default, serialize_with = "redact")]
    pub access_token: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    pub app_secret: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    pub verify_token: Option<SecretString>,
    /// Which nomination Flow is sent: the static one, or the one that calls our endpoint.
    pub flow_kind: FlowKind,
    /// Where Meta posts the Flow's data exchange.
    pub flow_endpoint_path: String,
    /// How long the endpoint waits for HubSpot's "already a customer?" answer before it
    /// leaves that check to the worker.
    pub flow_customer_check_ms: u64,
    /// Submissions one Flow may have refused before its token is refused.
    pub flow_max_refusals: u32,
    /// The endpoint's RSA-2048 private key, PKCS#8 PEM.
    #[serde(default, serialize_with = "redact")]
    pub flow_private_key: Option<SecretString>,
    /// Or a file holding it, readable by its owner only.
    pub flow_private_key_file: String,
}

/// The nomination Flow in use (`whatsapp.flow_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// `templates/flow_referral_nomination.json`: checks after the Flow completes.
    Static,
    /// `templates/flow_referral_nomination_endpoint.json`: checks inside the Flow.
    Endpoint,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotSettings {
    pub api_base: String,
    #[serde(default, serialize_with = "redact")]
    pub access_token: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    pub client_secret: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    pub webhook_api_key: Option<SecretString>,
    pub webhook_api_key_header: String,
    pub contacts_path: String,
    pub requests_per_10s: u32,
    pub searches_per_second: u32,
    pub record_referral_links: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    pub api_base: String,
    pub api_version: String,
    #[serde(default, serialize_with = "redact")]
    pub secret_key: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    pub webhook_secret: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeSettings {
    pub promoter_min_score: u8,
    pub nps_property: String,
    pub default_region: String,
    pub invite_cooldown_days: i64,
    pub max_invites_per_contact: i64,
    pub attribution_window_days: i64,
    pub max_open_referrals: i64,
    pub send_flow_with_invite: bool,
    pub friend_invite: FriendInviteMode,
    pub code_pattern: String,
    pub customer_lifecycle_stage: String,
    pub stop_button_payloads: Vec<String>,
    /// Languages whose stop keywords are honoured besides `templates.languages`.
    pub stop_keyword_languages: Vec<String>,
    pub reward_hold_days: i64,
    pub max_rewarded_referrals_per_referrer: i64,
    pub reward_cap_period_days: i64,
    /// A purchase with a referrer's code by a number never nominated creates the referral
    /// at conversion time (codes shared by hand) instead of staying unattributed.
    pub attribute_code_only: bool,
    #[serde(default, serialize_with = "redact")]
    pub flow_token_secret: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotProperties {
    pub phone: Vec<String>,
    pub first_name: String,
    pub language: String,
    pub referral_code: String,
    pub referral_status: String,
    pub referred_by_code: String,
    pub referrer_contact_id: String,
    pub whatsapp_opted_out: String,
    pub lifecycle_stage: String,
    pub referrals_converted: String,
    pub referral_rewards_total: String,
    pub referral_reward: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    pub languages: Vec<String>,
    pub default_language: String,
    /// A directory of `<language>.toml` files overriding keys of the built-in catalogues.
    pub catalogue_dir: String,
    pub invite: String,
    pub invite_body: Vec<TemplateParameter>,
    pub invite_copy_code_button: u8,
    pub invite_refer_button: u8,
    pub invite_stop_button: u8,
    pub flow: String,
    pub flow_body: Vec<TemplateParameter>,
    pub flow_button: u8,
    pub friend_invite: String,
    pub friend_invite_body: Vec<TemplateParameter>,
    pub friend_invite_copy_code_button: u8,
    pub friend_invite_stop_button: u8,
    pub flow_id: String,
    pub flow_name: String,
    pub flow_screen: String,
    pub thanks: String,
    pub thanks_body: Vec<TemplateParameter>,
    pub reward: String,
    pub reward_body: Vec<TemplateParameter>,
}

/// A value a template body parameter can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateParameter {
    FirstName,
    Code,
    FriendName,
    ReferrerName,
    PersonalMessage,
    Reward,
}

impl TemplateParameter {
    pub const ALL: [TemplateParameter; 6] = [
        TemplateParameter::FirstName,
        TemplateParameter::Code,
        TemplateParameter::FriendName,
        TemplateParameter::ReferrerName,
        TemplateParameter::PersonalMessage,
        TemplateParameter::Reward,
    ];
}

impl RewardSide {
    /// What is missing for this kind of reward, if anything.
    fn problem(&self) -> Option<String> {
        let missing = |key: &str| Some(format!("kind {:?} needs `{key}`", self.kind));
        match self.kind {
            RewardKind::StaticCode if self.static_code.is_empty() => missing("static_code"),
            RewardKind::StripePromotionCode if self.stripe_coupon.is_empty() => missing("stripe_coupon"),
            RewardKind::HubspotCredit if self.hubspot_property.is_empty() => missing("hubspot_property"),
            RewardKind::Webhook if self.webhook_url.is_empty() => missing("webhook_url"),
            RewardKind::Webhook if secret_value(&self.webhook_secret).is_none() => missing("webhook_secret"),
            RewardKind::StripeBalanceCredit | RewardKind::HubspotCredit if self.amount <= 0 => {
                Some("amount must be positive".into())
            }
            _ => None,
        }
    }
}

/// Configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A key no setting has (a typo, in a file or a `REFERLOOP_*` variable).
    #[error("configuration: unknown key `{key}`{source_note}{suggestion}")]
    UnknownKey {
        key: String,
        source_note: String,
        suggestion: String,
    },
    #[error("configuration key `{key}`: `{value}` is not one of {accepted}")]
    NotOneOf {
        key: String,
        value: String,
        accepted: String,
    },
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn redact<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .finish()
    }
}

/// `host:port` with a port number and a host (a name, an IPv4 address or `[IPv6]`).
fn is_host_and_port(listen: &str) -> bool {
    if listen.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    host_ok && port.parse::<u16>().is_ok()
}

/// Turns serde's "unknown field" and config's "no variant" errors into ones that name
/// the whole key, where it came from, and what was meant.
fn explain(
    error: config::ConfigError,
    env: &std::collections::HashMap<String, String>,
    file: Option<&Path>,
) -> ConfigError {
    let text = error.to_string();
    let quoted: Vec<&str> = text.split('`').skip(1).step_by(2).collect();
    let parent = text
        .rsplit_once(" for key `")
        .map(|(_, rest)| rest.trim_end_matches('`'))
        .filter(|_| text.contains(" for key `"));
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = quoted.iter().skip(1).copied().filter(|q| Some(*q) != parent).collect();
        let key = match parent {
            Some(parent) => format!("{parent}.{field}"),
            None => field.to_string(),
        };
        let variable = env
            .keys()
            .filter_map(|name| name.strip_prefix("REFERLOOP_").map(|rest| (name, rest)))
            .find(|(_, rest)| rest.to_ascii_lowercase().replace("__", ".").starts_with(&key))
            .map(|(name, _)| name.clone());
        let source_note = match &variable {
            Some(name) => format!(" (from the environment variable {name})"),
            None => match file {
                Some(path) => match line_of(path, field) {
                    Some(line) => format!(" (in {}, line {line})", path.display()),
                    None => format!(" (in {})", path.display()),
                },
                None => " (in the configuration file)".to_string(),
            },
        };
        let removed = REMOVED_KEYS
            .iter()
            .find(|(gone, _)| key == *gone || key.starts_with(&format!("{gone}.")))
            .map(|(_, went)| format!("; {went}"));
        // REFERLOOP_WHATSAPP_APP_SECRET: the section and the key need a double underscore.
        let separator_hint = variable.as_ref().filter(|_| parent.is_none()).and_then(|name| {
            expected
                .iter()
                .find(|section| field.starts_with(&format!("{section}_")))
                .map(|section| {
                    let rest = &field[section.len() + 1..];
                    format!(
                        "; a section and its key are separated by a double underscore: `REFERLOOP_{}__{}` (not {name})",
                        section.to_ascii_uppercase(),
                        rest.to_ascii_uppercase()
                    )
                })
        });
        let suggestion = removed
            .or(separator_hint)
            .or_else(|| {
                nearest(field, &expected).map(|near| {
                    let known = match parent {
                        Some(parent) => format!("{parent}.{near}"),
                        None => near.to_string(),
                    };
                    format!("; did you mean `{known}`?")
                })
            })
            .unwrap_or_default();
        return ConfigError::UnknownKey {
            key,
            source_note,
            suggestion,
        };
    }
    if let (Some(rest), Some(key)) = (text.strip_prefix("enum "), parent) {
        let mut words = rest.split_whitespace();
        let enum_name = words.next().unwrap_or_default();
        let value = rest
            .split(" variant constructor ")
            .nth(1)
            .and_then(|v| v.split(" for key ").next())
            .unwrap_or_default();
        if let Some(accepted) = accepted_values(enum_name) {
            return ConfigError::NotOneOf {
                key: key.to_string(),
                value: value.to_string(),
                accepted,
            };
        }
    }
    ConfigError::Load(error)
}

/// The line (from 1) of a TOML file where `key` is set or opened as a table: the first
/// line that starts with it and then `=`, `.` or `]`.
fn line_of(path: &Path, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches('[').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', '.', ']']))
        })
        .map(|index| index + 1)
}

/// The closest name by edit distance (strsim's Levenshtein), when it is close enough to
/// be a typo.
fn nearest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(typed, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

/// The accepted values of a configuration enum, by its Rust name.
fn accepted_values(enum_name: &str) -> Option<String> {
    fn names<T: Serialize>(values: &[T]) -> String {
        values
            .iter()
            .filter_map(|v| serde_json::to_value(v).ok())
            .filter_map(|v| v.as_str().map(|s| format!("`{s}`")))
            .collect::<Vec<_>>()
            .join(", ")
    }
    match enum_name {
        "FriendInviteMode" => Some(names(&FriendInviteMode::ALL)),
        "LogFormat" => Some(names(&LogFormat::ALL)),
        "RewardKind" => Some(names(<RewardKind as crate::domain::state::Persisted>::ALL)),
        "TemplateParameter" => Some(names(&TemplateParameter::ALL)),
        _ => None,
    }
}

/// A URL fit to print or log: a password (in the authority or a `password` query
/// parameter) is replaced by `[redacted]`. Anything that does not parse as a URL is
/// redacted whole past its scheme.
pub fn redact_url(raw: &str) -> String {
    const REDACTED: &str = "[redacted]";
    let Ok(mut url) = url::Url::parse(raw) else {
        let scheme = raw.split(':').next().unwrap_or_default();
        return format!("{scheme}:{REDACTED}");
    };
    let mut redacted = url.password().is_some();
    if redacted {
        let _ = url.set_password(Some("REDACTED"));
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if pairs.iter().any(|(k, _)| k.contains("password")) {
        redacted = true;
        let mut query = url.query_pairs_mut();
        query.clear();
        for (key, value) in &pairs {
            let shown = if key.contains("password") {
                "REDACTED"
            } else {
                value.as_str()
            };
            query.append_pair(key, shown);
        }
    }
    let text = url.to_string();
    if redacted {
        text.replace("REDACTED", REDACTED)
    } else {
        text
    }
}

/// A configured secret, treating an empty string as "not configured".
pub fn secret_value(secret: &Option<SecretString>) -> Option<&str> {
    secret.as_ref().map(|s| s.expose_secret()).filter(|s| !s.is_empty())
}

impl Settings {
    /// The Flow endpoint's private key (PKCS#8 PEM): the secret, else the file, which
    /// must be readable by its owner only. `Ok(None)` when neither is configured.
    pub fn flow_private_key_pem(&self) -> Result<Option<SecretString>, String> {
        if let Some(pem) = secret_value(&self.whatsapp.flow_private_key) {
            return Ok(Some(SecretString::from(pem.to_string())));
        }
        let file = self.whatsapp.flow_private_key_file.trim();
        if file.is_empty() {
            return Ok(None);
        }
        let path = Path::new(file);
        let metadata = std::fs::metadata(path).map_err(|e| format!("whatsapp.flow_private_key_file {file}: {e}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "whatsapp.flow_private_key_file {file} is readable by others (mode {mode:o}); run chmod 600 {file}"
                ));
            }
        }
        #[cfg(not(unix))]
        let _ = metadata;
        let pem = std::fs::read_to_string(path).map_err(|e| format!("whatsapp.flow_private_key_file {file}: {e}"))?;
        Ok(Some(SecretString::from(pem)))
    }

    /// Loads the layers from the real environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the layers with an explicit environment, so tests need not touch the process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            // REFERLOOP_CONFIG names the file (read by the command line), not a setting.
            .filter(|(k, _)| (k.starts_with("REFERLOOP_") && k != "REFERLOOP_CONFIG") || k == "DATABASE_URL")
            .collect();
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("REFERLOOP")
                .prefix_separator("_")
                .separator("__")
                // Values stay strings (a verify token "007" must not become 7); serde
                // converts numbers and booleans where the setting is one.
                .source(Some(env.clone())),
        );
        // Lists come as comma-separated strings; split them here so that every value stays
        // a string (config's own list parsing would also coerce scalars).
        for (name, value) in &env {
            let Some(rest) = name.strip_prefix("REFERLOOP_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if let Some(list_key) = LIST_KEYS.iter().find(|k| **k == key) {
                let items = env_list(value).map_err(|problem| ConfigError::Invalid {
                    key: list_key,
                    problem: format!("{problem} (from the environment variable {name})"),
                })?;
                builder = builder.set_override(key, items)?;
            }
        }
        if let Some(url) = env.get("DATABASE_URL") {
            builder = builder.set_override("database.url", url.as_str())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize().map_err(|e| explain(e, &env, file))?;
        settings.validate()?;
        let templates = &settings.templates;
        let override_dir = Some(templates.catalogue_dir.trim())
            .filter(|d| !d.is_empty())
            .map(Path::new);
        settings.catalogues = Catalogues::load(
            &templates.languages,
            &settings.programme.stop_keyword_languages,
            &templates.default_language,
            override_dir,
        )
        .map_err(|e| ConfigError::Invalid {
            key: "templates.catalogue_dir",
            problem: e.to_string(),
        })?;
        Ok(settings)
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| Err(ConfigError::Invalid { key, problem });
        if !is_host_and_port(&self.server.listen) {
            return invalid(
                "server.listen",
                format!(
                    "`{}` is not host:port (for example 127.0.0.1:8080, localhost:8080 or [::]:8080)",
                    self.server.listen
                ),
            );
        }
        match url::Url::parse(&self.server.public_base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return invalid(
                    "server.public_base_url",
                    format!("`{}` is not an http(s) URL", self.server.public_base_url),
                )
            }
        }
        if self.server.request_timeout_seconds == 0 {
            return invalid("server.request_timeout_seconds", "must be at least 1".into());
        }
        if self.server.header_read_timeout_seconds == 0 {
            return invalid("server.header_read_timeout_seconds", "must be at least 1".into());
        }
        if self.server.idle_timeout_seconds <= self.server.request_timeout_seconds {
            return invalid(
                "server.idle_timeout_seconds",
                "must be longer than server.request_timeout_seconds".into(),
            );
        }
        if self.server.ingest_writers == 0 {
            return invalid("server.ingest_writers", "must be at least 1".into());
        }
        if self.server.max_connections == 0 || self.server.max_events_per_request == 0 {
            return invalid(
                "server.max_connections",
                "connection and event limits must be at least 1".into(),
            );
        }
        if self.database.acquire_timeout_ms == 0 {
            return invalid("database.acquire_timeout_ms", "must be at least 1".into());
        }
        if !(self.database.url.starts_with("sqlite:") || self.database.url.starts_with("postgres")) {
            return invalid("database.url", "must start with sqlite: or postgres://".into());
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1".into());
        }
        let flow_path = &self.whatsapp.flow_endpoint_path;
        let plain_path = flow_path.len() > 1
            && flow_path.starts_with('/')
            && flow_path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
        let taken = [
            "/webhooks/whatsapp",
            "/webhooks/hubspot",
            "/webhooks/stripe",
            "/healthz",
            "/readyz",
            "/metrics",
        ];
        if !plain_path
            || taken.contains(&flow_path.as_str())
            || flow_path.starts_with("/admin")
            || flow_path.starts_with("/api/")
        {
            return invalid(
                "whatsapp.flow_endpoint_path",
                format!("`{flow_path}` must be a path of its own, such as /webhooks/whatsapp/flow"),
            );
        }
        let check_ms = self.whatsapp.flow_customer_check_ms;
        if check_ms > 8_000 {
            return invalid(
                "whatsapp.flow_customer_check_ms",
                format!("{check_ms} must be at most 8000 (Meta gives the endpoint 10 s)"),
            );
        }
        if self.worker.inbox_concurrency == 0 {
            return invalid("worker.inbox_concurrency", "must be at least 1".into());
        }
        if self.worker.job_concurrency == 0 {
            return invalid("worker.job_concurrency", "must be at least 1".into());
        }
        if self.worker.job_batch.get() > MAX_JOB_BATCH {
            return invalid("worker.job_batch", format!("must be at most {MAX_JOB_BATCH}"));
        }
        if self.worker.inbox_batch.get() > MAX_INBOX_BATCH {
            return invalid("worker.inbox_batch", format!("must be at most {MAX_INBOX_BATCH}"));
        }
        if self.worker.lease_seconds == 0 {
            return invalid("worker.lease_seconds", "must be at least 1".into());
        }
        for (key, value) in [
            (
                "worker.outbound_connect_timeout_ms",
                self.worker.outbound_connect_timeout_ms,
            ),
            ("worker.outbound_timeout_ms", self.worker.outbound_timeout_ms),
        ] {
            if value < 100 {
                return invalid(key, "must be at least 100 (milliseconds)".into());
            }
        }
        if !(0.0..1.0).contains(&self.worker.retry_jitter) {
            return invalid("worker.retry_jitter", "must be in [0, 1)".into());
        }
        for (key, value) in [
            ("whatsapp.api_base", &self.whatsapp.api_base),
            ("hubspot.api_base", &self.hubspot.api_base),
            ("stripe.api_base", &self.stripe.api_base),
        ] {
            if url::Url::parse(value).is_err() {
                return invalid(key, format!("`{value}` is not a URL"));
            }
        }
        if !self.sandbox() {
            if self.whatsapp.phone_number_id.is_empty() {
                return invalid("whatsapp.phone_number_id", "is required outside sandbox mode".into());
            }
            if secret_value(&self.whatsapp.access_token).is_none() {
                return invalid("whatsapp.access_token", "is required outside sandbox mode".into());
            }
        }
        if let Err(e) = CodePattern::parse(&self.programme.code_pattern) {
            return invalid("programme.code_pattern", e.0);
        }
        if self
            .programme
            .default_region
            .parse::<phonenumber::country::Id>()
            .is_err()
        {
            return invalid(
                "programme.default_region",
                "is not an ISO 3166 alpha-2 region such as US or GB".into(),
            );
        }
        if self.programme.promoter_min_score > 10 {
            return invalid("programme.promoter_min_score", "must be 0..=10".into());
        }
        if self.whatsapp.max_messages_per_second == 0 {
            return invalid("whatsapp.max_messages_per_second", "must be at least 1".into());
        }
        if self.hubspot.requests_per_10s == 0 || self.hubspot.searches_per_second == 0 {
            return invalid("hubspot.requests_per_10s", "rate limits must be at least 1".into());
        }
        if !self.templates.languages.contains(&self.templates.default_language) {
            return invalid(
                "templates.default_language",
                "must be one of templates.languages".into(),
            );
        }
        if self.templates.flow_id.is_empty() && self.templates.flow_name.is_empty() {
            return invalid("templates.flow_id", "set flow_id or flow_name".into());
        }
        for (key, side) in [
            ("rewards.referrer", &self.rewards.referrer),
            ("rewards.friend", &self.rewards.friend),
        ] {
            if let Some(problem) = side.problem() {
                return Err(ConfigError::Invalid { key, problem });
            }
        }
        for entry in &self.api.tokens {
            if let Err(e) = crate::domain::access::TokenDigest::parse(entry) {
                return invalid("api.tokens", format!("{e} (referloop api hash-token)"));
            }
        }
        if axum::http::HeaderName::try_from(self.hubspot.webhook_api_key_header.as_str()).is_err() {
            return invalid("hubspot.webhook_api_key_header", "is not a valid header name".into());
        }
        Ok(())
    }

    /// Sandbox unless explicitly turned off, or on by default while no access token is set.
    /// Whether WhatsApp's calls are recorded rather than sent: the programme's messages,
    /// hence its webhooks and reward webhooks, are a rehearsal. See [`Settings::live`].
    pub fn sandbox(&self) -> bool {
        !self.live(Account::WhatsApp)
    }

    /// Whether calls to `account` go out; otherwise they are recorded, not sent
    /// (`referloop outbound list`). Each account goes live once its credential is set,
    /// so HubSpot can be set up before WhatsApp is; `sandbox = true` records every call
    /// and `sandbox = false` sends every call.
    pub fn live(&self, account: Account) -> bool {
        match self.sandbox_setting {
            Some(forced) => !forced,
            None => match account {
                Account::WhatsApp => secret_value(&self.whatsapp.access_token).is_some(),
                Account::HubSpot => secret_value(&self.hubspot.access_token).is_some(),
                Account::Stripe => secret_value(&self.stripe.secret_key).is_some(),
            },
        }
    }

    /// One line for each account: live, or recorded (sandbox).
    pub fn accounts_line(&self) -> String {
        let each: Vec<String> = Account::ALL
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a.as_str(),
                    if self.live(*a) { "live" } else { "recorded (sandbox)" }
                )
            })
            .collect();
        each.join(", ")
    }

    /// The effective configuration as TOML, secrets redacted.
    /// The effective configuration as TOML, one key per line, that `--config` reads back.
    /// Secrets are left out (a comment says each is set); a password in `database.url` is
    /// shown as `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        // What is printed reads back as the same configuration: a derived value (sandbox
        // while no access token is set) is said in a comment, not pinned, and a secret is
        // left out with a note of how to give it, never printed as a stand-in literal.
        let mut value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(Default::default()));
        let url_redacted = redact_url(&self.database.url);
        let url_has_password = url_redacted != self.database.url;
        if let toml::Value::Table(table) = &mut value {
            if let Some(toml::Value::Table(database)) = table.get_mut("database") {
                database.insert("url".into(), toml::Value::String(url_redacted));
            }
        }
        let header = match self.sandbox_setting {
            Some(_) => String::new(),
            None => format!(
                "# sandbox mode is {} for WhatsApp; accounts: {} (derived from the credentials set; set `sandbox` to force)\n",
                if self.sandbox() { "on" } else { "off" },
                self.accounts_line()
            ),
        };
        let text = toml::to_string_pretty(&value).unwrap_or_default();
        let body = text
            .lines()
            .map(|line| {
                if line.ends_with("= \"[redacted]\"") {
                    format!("# {line} (secret: set, not shown; give it in the environment)")
                } else if url_has_password && line.starts_with("url = ") {
                    format!("# {line} (holds a password: give the whole URL in DATABASE_URL)")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        header + &body + "\n"
    }

    /// The key that signs Flow tokens: its own secret, else the WhatsApp app secret, else
    /// (sandbox without secrets) a fixed development key.
    pub fn flow_token_secret(&self) -> String {
        secret_value(&self.programme.flow_token_secret)
            .or_else(|| secret_value(&self.whatsapp.app_secret))
            .unwrap_or("referloop-development-only")
            .to_string()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.server.request_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let s = Settings::load_from(None, env(&[])).expect("defaults load");
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.database.url, "sqlite://referloop.db");
        assert!(s.sandbox(), "sandbox while no access token");
        assert!(s.whatsapp.app_secret.is_none());
    }

    #[test]
    fn reward_descriptions_follow_the_beneficiarys_language() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("referloop.toml");
        std::fs::write(
            &path,
            "[rewards.friend]\ndescriptions = { es = \"10 $ de descuento\", pt_BR = \"R$ 10 de desconto\" }\n",
        )
        .expect("write");
        let s = Settings::load_from(Some(&path), env(&[])).expect("loads");
        let friend = &s.rewards.friend;
        assert_eq!(friend.description_in("es-MX"), "10 $ de descuento");
        assert_eq!(friend.description_in("pt"), "R$ 10 de desconto");
        assert_eq!(friend.description_in("de"), "$10 off your first order");
        assert_eq!(s.rewards.referrer.description_in("es"), "a $10 thank-you credit");
    }

    #[test]
    fn the_flow_endpoint_path_is_a_path_of_its_own() {
        for bad in [
            "",
            "/",
            "flow",
            "/webhooks/whatsapp",
            "/admin/flow",
            "/api/v1/flow",
            "/flow/{id}",
        ] {
            let loaded = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__FLOW_ENDPOINT_PATH", bad)]));
            assert!(loaded.is_err(), "{bad:?}");
        }
        let custom = Settings::load_from(
            None,
            env(&[("REFERLOOP_WHATSAPP__FLOW_ENDPOINT_PATH", "/meta/flow-data")]),
        );
        assert_eq!(custom.expect("loads").whatsapp.flow_endpoint_path, "/meta/flow-data");
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("referloop.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"0.0.0.0:9000\"\n[database]\nmax_connections = 3\n[whatsapp]\nverify_token = \"from-file\"\n",
        )
        .expect("write");
        let s = Settings::load_from(
            Some(&path),
            env(&[
                ("REFERLOOP_DATABASE__MAX_CONNECTIONS", "7"),
                ("REFERLOOP_WHATSAPP__APP_SECRET", "s3cret"),
                ("REFERLOOP_HUBSPOT__WEBHOOK_API_KEY", "007"),
                ("REFERLOOP_SANDBOX", "false"),
                ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "1e6"),
                ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "100000000000202"),
                ("REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "1,2,3"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("load");
        assert_eq!(s.server.listen, "0.0.0.0:9000");
        assert_eq!(s.database.max_connections, 7);
        assert_eq!(secret_value(&s.whatsapp.app_secret), Some("s3cret"));
        assert_eq!(secret_value(&s.whatsapp.verify_token), Some("from-file"));
        assert_eq!(s.worker.retry_schedule_seconds, vec![1, 2, 3]);
        assert_eq!(
            secret_value(&s.hubspot.webhook_api_key),
            Some("007"),
            "secrets stay strings"
        );
        assert_eq!(secret_value(&s.whatsapp.access_token), Some("1e6"));
        assert!(!s.sandbox());
        let one =
            Settings::load_from(None, env(&[("REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "60")])).expect("one entry");
        assert_eq!(one.worker.retry_schedule_seconds, vec![60]);
    }

    #[test]
    fn database_url_wins_over_everything() {
        let s = Settings::load_from(
            None,
            env(&[
                ("REFERLOOP_DATABASE__URL", "sqlite://a.db"),
                ("DATABASE_URL", "postgres://root@127.0.0.1/test"),
            ]),
        )
        .expect("load");
        assert_eq!(s.database.url, "postgres://root@127.0.0.1/test");
    }

    #[test]
    fn access_token_turns_sandbox_off_unless_forced() {
        let s = Settings::load_from(
            None,
            env(&[
                ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAAB"),
                ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "1"),
            ]),
        )
        .expect("load");
        assert!(!s.sandbox());
        let err = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAAB")])).expect_err("no id");
        assert!(err.to_string().contains("whatsapp.phone_number_id"), "{err}");
        let s = Settings::load_from(
            None,
            env(&[
                ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAAB"),
                ("REFERLOOP_SANDBOX", "true"),
            ]),
        )
        .expect("load");
        assert!(s.sandbox());
    }

    #[test]
    fn each_account_goes_live_with_its_own_credential() {
        let s = Settings::load_from(None, env(&[("REFERLOOP_HUBSPOT__ACCESS_TOKEN", "pat-1")])).expect("load");
        assert!(s.live(Account::HubSpot), "HubSpot can be set up before WhatsApp");
        assert!(!s.live(Account::WhatsApp) && !s.live(Account::Stripe) && s.sandbox());
        let s = Settings::load_from(None, env(&[("REFERLOOP_STRIPE__SECRET_KEY", "sk_test_1")])).expect("load");
        assert!(s.live(Account::Stripe) && !s.live(Account::HubSpot));
        let forced = Settings::load_from(
            None,
            env(&[
                ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", "pat-1"),
                ("REFERLOOP_SANDBOX", "true"),
            ]),
        )
        .expect("load");
        assert!(
            Account::ALL.iter().all(|a| !forced.live(*a)),
            "sandbox = true records every call"
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err =
            Settings::load_from(None, env(&[("REFERLOOP_SERVER__LISTEN", "nowhere")])).expect_err("invalid listen");
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err = Settings::load_from(None, env(&[("REFERLOOP_DATABASE__MAX_CONNECTIONS", "many")]))
            .expect_err("invalid number");
        assert!(err.to_string().contains("max_connections"), "{err}");
        let err = Settings::load_from(None, env(&[("REFERLOOP_LOG__FORMAT", "xml")])).expect_err("bad enum");
        assert!(err.to_string().contains("format"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let err = Settings::load_from(None, env(&[("REFERLOOP_WHATSAP__APP_SECRET", "x")])).expect_err("typo");
        let text = err.to_string();
        assert!(text.contains("unknown key `whatsap`"), "{text}");
        assert!(text.contains("REFERLOOP_WHATSAP__APP_SECRET"), "{text}");
        assert!(text.contains("did you mean `whatsapp`?"), "{text}");
        let err = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__APP_SECRE", "x")])).expect_err("typo");
        assert!(err.to_string().contains("did you mean `whatsapp.app_secret`?"), "{err}");

        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("referloop.toml");
        std::fs::write(&file, "[whatsap]\napp_secret = \"x\"\n").expect("write");
        let err = Settings::load_from(Some(&file), env(&[])).expect_err("typo in the file");
        let text = err.to_string();
        assert!(
            text.contains("unknown key `whatsap`") && text.contains(&format!("in {}, line 1", file.display())),
            "{text}"
        );
        assert!(text.contains("did you mean `whatsapp`?"), "{text}");
        // The variable naming the file is not a setting.
        assert!(Settings::load_from(None, env(&[("REFERLOOP_CONFIG", "/etc/referloop.toml")])).is_ok());
    }

    #[test]
    fn bad_enum_values_list_the_accepted_ones() {
        let err = Settings::load_from(None, env(&[("REFERLOOP_PROGRAMME__FRIEND_INVITE", "bogus")])).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "configuration key `programme.friend_invite`: `bogus` is not one of `direct`, `share_link`, `auto`"
        );
    }

    #[test]
    fn listen_takes_host_names() {
        for good in ["localhost:8080", "127.0.0.1:8080", "[::]:8080", "referloop.internal:80"] {
            assert!(
                Settings::load_from(None, env(&[("REFERLOOP_SERVER__LISTEN", good)])).is_ok(),
                "{good}"
            );
        }
        for bad in ["localhost", ":8080", "localhost:99999", "a b:80"] {
            assert!(
                Settings::load_from(None, env(&[("REFERLOOP_SERVER__LISTEN", bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn printed_configuration_reads_back_unchanged() {
        let s = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__APP_SECRET", "topsecret-app")])).expect("load");
        let printed = s.to_redacted_toml();
        assert!(printed.lines().count() > 50, "one key per line:\n{printed}");
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &printed).expect("write");
        let again = Settings::load_from(Some(&file), env(&[])).expect("the printed file loads");
        let settings_lines = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(settings_lines(&again.to_redacted_toml()), settings_lines(&printed));
        assert!(
            printed.contains("# app_secret = \"[redacted]\" (secret: set, not shown; give it in the environment)"),
            "{printed}"
        );
        assert!(!printed.contains("topsecret"));
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(redact_url("sqlite://referloop.db"), "sqlite://referloop.db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://u:p%40ss@h/db"), "postgres://u:[redacted]@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=hunter2"),
            "postgres://u@h/db?sslmode=require&password=[redacted]"
        );
        assert_eq!(redact_url("not a url with secret"), "not a url with secret:[redacted]");
    }

    #[test]
    fn printed_configuration_redacts_secrets() {
        let s = Settings::load_from(
            None,
            env(&[
                ("REFERLOOP_WHATSAPP__APP_SECRET", "topsecret-app"),
                ("REFERLOOP_STRIPE__WEBHOOK_SECRET", "whsec_topsecret"),
                ("DATABASE_URL", "postgres://referloop:dbpass@db.internal:5432/referloop"),
            ]),
        )
        .expect("load");
        let printed = s.to_redacted_toml();
        assert!(
            printed.contains("postgres://referloop:[redacted]@db.internal:5432/referloop"),
            "{printed}"
        );
        assert!(!format!("{s:?}").contains("dbpass"), "nor in Debug output");
        assert!(!printed.contains("topsecret"), "{printed}");
        assert!(
            !printed.contains("dbpass"),
            "the database password is redacted: {printed}"
        );
        assert!(printed.contains("[redacted]"));
        assert!(!format!("{s:?}").contains("topsecret"));
    }
}
