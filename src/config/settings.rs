//! The settings' types, one struct per section of `config/default.toml`.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use crate::catalogue::Catalogues;
use crate::domain::economics::{CalendarDay, Currency, Decimal6, Exchange, MarketCard, RateCard};
use crate::domain::nomination::NominationRefusal;
use crate::domain::referral::FriendInviteMode;
use crate::domain::reward::RewardKind;
use crate::domain::send_window::{LocalZone, SendWindow};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize, Serializer};

use super::values::{blank_or_parsed, seconds_list, whole_days, BaseUrl, LogFilter, Parsed};
use super::{redact_url, secret_value};
use crate::domain::access::TokenDigest;
use crate::domain::code::CodePattern;

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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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
    pub messaging: MessagingSettings,
    pub reminders: ReminderSettings,
    pub hubspot_properties: HubSpotProperties,
    pub templates: TemplateSettings,
    pub api: ApiSettings,
    pub rewards: RewardSettings,
    pub pricing: PricingSettings,
    /// Experiments on the offer, at most one running at a time.
    #[serde(default)]
    pub experiments: Vec<Experiment>,
    /// The texts referloop writes, per configured language (`templates/messages/`), loaded
    /// after the settings themselves.
    #[serde(skip)]
    pub catalogues: Catalogues,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub tokens: Vec<Parsed<TokenDigest>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardSettings {
    pub pool_low_watermark: i64,
    /// Bonuses at the referrer's Nth rewarded referral in the cap period.
    #[serde(default)]
    pub milestones: Vec<Milestone>,
    pub referrer: RewardSide,
    pub friend: RewardSide,
}

/// `[[rewards.milestones]]`: the bonus for the referrer's `conversions`th rewarded
/// referral in `programme.reward_cap_period_days`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Milestone {
    pub conversions: NonZeroU32,
    pub reward: RewardSide,
}

impl RewardSettings {
    /// The milestone reached at `conversions` rewarded referrals, if one is configured.
    pub fn milestone(&self, conversions: i64) -> Option<&Milestone> {
        self.milestones
            .iter()
            .find(|m| i64::from(m.conversions.get()) == conversions)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardSide {
    #[schemars(schema_with = "reward_kind_names")]
    pub kind: RewardKind,
    pub amount: i64,
    pub currency: String,
    pub description: String,
    /// The description in other languages (language code → text), chosen like templates.
    #[serde(default)]
    pub descriptions: std::collections::BTreeMap<String, String>,
    /// What only some kinds need may be left out (a milestone's reward names only its own).
    #[serde(default)]
    pub static_code: String,
    #[serde(default)]
    pub stripe_coupon: String,
    #[serde(default)]
    pub hubspot_property: String,
    /// Where a `webhook` reward is posted; `""` when none is.
    #[serde(default, with = "blank_or_parsed")]
    #[schemars(with = "String")]
    pub webhook_url: Option<Parsed<url::Url>>,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub public_base_url: Parsed<BaseUrl>,
    #[serde(rename = "request_timeout_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub request_timeout: Duration,
    /// A client must send a request's headers within this time.
    #[serde(rename = "header_read_timeout_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub header_read_timeout: Duration,
    /// A connection with no traffic for this long is closed (idle keep-alive sockets).
    #[serde(rename = "idle_timeout_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub idle_timeout: Duration,
    /// Connections served at once; beyond it new ones are closed at once.
    pub max_connections: NonZeroUsize,
    /// Events one webhook request may carry; a larger batch is refused (413).
    pub max_events_per_request: NonZeroUsize,
    /// Tasks storing received events, each grouping the requests waiting into one
    /// statement.
    pub ingest_writers: NonZeroUsize,
}

#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: NonZeroU32,
    /// How long a request waits for a database connection before giving up (a 503 for
    /// webhooks, so the sender retries promptly during an outage).
    #[serde(rename = "acquire_timeout_ms", with = "whole_millis")]
    #[schemars(with = "u64")]
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Where `RUST_LOG` is unset.
    pub level: Parsed<LogFilter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub const ALL: [LogFormat; 2] = [LogFormat::Text, LogFormat::Json];
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub enabled: bool,
    /// Loops claiming inbox events (webhooks received).
    pub inbox_concurrency: NonZeroUsize,
    /// Claims' worth of jobs (sends and outside calls) a replica runs at once: up to
    /// `job_concurrency` × `job_batch` jobs, claimed apart from the inbox loops, so a burst
    /// of one never starves the other.
    pub job_concurrency: NonZeroUsize,
    /// Inbox events an inbox loop claims at once; Meta's statuses among them are applied
    /// in one transaction.
    pub inbox_batch: NonZeroUsize,
    /// The room for jobs the claimer waits for before it claims again, taking then as
    /// many as there is room for (one statement).
    pub job_batch: NonZeroUsize,
    /// The inbox is backlogged (`/readyz` says so, and a metric and an alert) while more
    /// events than this wait, or the oldest has waited longer than
    /// `inbox_backlog_seconds`.
    pub inbox_backlog_events: NonZeroU64,
    #[serde(rename = "inbox_backlog_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub inbox_backlog_age: Duration,
    /// How long a send interrupted mid-request waits for Meta's status before it is sent
    /// again.
    #[serde(rename = "interrupted_send_wait_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub interrupted_send_wait: Duration,
    /// Limits on every call to Meta, HubSpot, Stripe and reward webhooks: connecting, and
    /// the whole request. A call that times out after sending counts as "may have acted".
    #[serde(rename = "outbound_connect_timeout_ms", with = "whole_millis")]
    #[schemars(with = "u64")]
    pub outbound_connect_timeout: Duration,
    #[serde(rename = "outbound_timeout_ms", with = "whole_millis")]
    #[schemars(with = "u64")]
    pub outbound_timeout: Duration,
    #[serde(rename = "poll_interval_ms", with = "whole_millis")]
    #[schemars(with = "u64")]
    pub poll_interval: Duration,
    #[serde(rename = "lease_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub lease: Duration,
    /// The waits between attempts; one attempt more than there are waits.
    #[serde(rename = "retry_schedule_seconds", with = "seconds_list")]
    #[schemars(with = "Vec<u64>")]
    pub retry_schedule: Vec<Duration>,
    pub retry_jitter: f64,
    /// How long finished inbox events and jobs are kept before the worker deletes them
    /// (dead ones stay until an operator acts): as long as Meta redelivers a webhook, so
    /// a redelivery is still recognised.
    #[serde(rename = "keep_done_days", with = "whole_days")]
    #[schemars(with = "u64")]
    pub keep_done: Duration,
    /// How long Meta's finished statuses are kept: three for every message sent, and one
    /// applied again changes nothing.
    #[serde(rename = "keep_done_statuses_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub keep_done_statuses: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppSettings {
    pub api_base: Parsed<BaseUrl>,
    pub api_version: String,
    pub phone_number_id: String,
    pub waba_id: String,
    /// The business's name as customers know it (shown in the Flow's consent line).
    pub business_name: String,
    pub business_number: String,
    pub max_messages_per_second: NonZeroU32,
    /// The least time between two messages to the same recipient (Meta's pair limit).
    #[serde(rename = "pair_spacing_ms", with = "whole_millis")]
    #[schemars(with = "u64")]
    pub pair_spacing: Duration,
    /// How often a send held by a paused or rejected template looks again.
    #[serde(rename = "template_recheck_seconds", with = "whole_seconds")]
    #[schemars(with = "u64")]
    pub template_recheck: Duration,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub access_token: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub app_secret: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub verify_token: Option<SecretString>,
    /// Which nomination Flow is sent: the static one, or the one that calls our endpoint.
    pub flow_kind: FlowKind,
    /// Where Meta posts the Flow's data exchange.
    pub flow_endpoint_path: String,
    /// How long the endpoint waits for HubSpot's "already a customer?" answer before it
    /// leaves that check to the worker.
    #[serde(rename = "flow_customer_check_ms", with = "whole_millis")]
    #[schemars(with = "u64")]
    pub flow_customer_check: Duration,
    /// Submissions one Flow may have refused before its token is refused.
    pub flow_max_refusals: u32,
    /// The endpoint's RSA-2048 private key, PKCS#8 PEM.
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub flow_private_key: Option<SecretString>,
    /// Or a file holding it, readable by its owner only.
    pub flow_private_key_file: String,
}

/// The nomination Flow in use (`whatsapp.flow_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// `templates/flow_referral_nomination.json`: checks after the Flow completes.
    Static,
    /// `templates/flow_referral_nomination_endpoint.json`: checks inside the Flow.
    Endpoint,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSpotSettings {
    pub api_base: Parsed<BaseUrl>,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub access_token: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub client_secret: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub webhook_api_key: Option<SecretString>,
    pub webhook_api_key_header: String,
    pub contacts_path: String,
    pub requests_per_10s: NonZeroU32,
    pub searches_per_second: NonZeroU32,
    pub record_referral_links: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    pub api_base: Parsed<BaseUrl>,
    pub api_version: String,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub secret_key: Option<SecretString>,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub webhook_secret: Option<SecretString>,
}

/// When unprompted messages may go out, and how many marketing templates one number gets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// The recipient's local hours for the invite, a friend's invite and the share link.
    pub send_window: Parsed<SendWindow>,
    /// The zone when neither the contact's `hs_timezone` nor the number's country tells one.
    pub default_timezone: Parsed<LocalZone>,
    /// Marketing templates to one number in any seven days.
    pub max_marketing_per_contact_per_week: NonZeroU32,
}

/// `[[experiments]]`: from `starts` to `ends` (both days included, UTC), each contact
/// invited gets one of `variants` by weight; the first variant is the control and changes
/// nothing. Contacts invited outside those days get the control and are not counted.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[schemars(with = "String")]
    pub starts: CalendarDay,
    #[schemars(with = "String")]
    pub ends: CalendarDay,
    /// The control's expected conversion rate (converted ÷ invited), for the planned
    /// sample size.
    #[serde(default = "default_baseline_rate")]
    pub baseline_rate: f64,
    /// The smallest absolute change of that rate worth detecting.
    #[serde(default = "default_minimum_effect")]
    pub minimum_effect: f64,
    pub variants: Vec<Variant>,
}

fn default_baseline_rate() -> f64 {
    0.05
}

fn default_minimum_effect() -> f64 {
    0.02
}

impl Experiment {
    /// Unix milliseconds of its first moment and of the moment after its last day.
    pub fn span_ms(&self) -> (i64, i64) {
        (
            self.starts.start_ms(),
            self.ends.start_ms() + crate::domain::funnel::DAY_MS,
        )
    }

    /// Invites each variant needs before a verdict.
    pub fn planned_sample_size(&self) -> i64 {
        crate::domain::experiment::planned_sample_size(self.baseline_rate, self.minimum_effect)
    }
}

/// One arm of an experiment: its share (`weight`) and the settings it changes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub weight: NonZeroU32,
    #[serde(default, skip_serializing_if = "RewardOverrides::is_empty")]
    pub rewards: RewardOverrides,
    #[serde(default, skip_serializing_if = "TemplateOverrides::is_empty")]
    pub templates: TemplateOverrides,
    #[serde(default, skip_serializing_if = "ReminderOverrides::is_empty")]
    pub reminders: ReminderOverrides,
}

/// A variant's rewards: either side's kind, amount, currency, description and code.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<SideOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friend: Option<SideOverride>,
}

impl RewardOverrides {
    fn is_empty(&self) -> bool {
        self.referrer.is_none() && self.friend.is_none()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SideOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub kind: Option<RewardKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_coupon: Option<String>,
}

impl SideOverride {
    fn apply(&self, side: &mut RewardSide) {
        if let Some(kind) = self.kind {
            side.kind = kind;
        }
        if let Some(amount) = self.amount {
            side.amount = amount;
        }
        if let Some(currency) = &self.currency {
            side.currency = currency.clone();
        }
        if let Some(description) = &self.description {
            // The other languages' descriptions told of the old reward.
            side.description = description.clone();
            side.descriptions.clear();
        }
        if let Some(code) = &self.static_code {
            side.static_code = code.clone();
        }
        if let Some(coupon) = &self.stripe_coupon {
            side.stripe_coupon = coupon.clone();
        }
    }
}

/// A variant's invite template: another approved template laid out as the invite.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
}

impl TemplateOverrides {
    fn is_empty(&self) -> bool {
        self.invite.is_none()
    }
}

/// A variant's reminders.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReminderOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoter: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub promoter_after: Option<Parsed<Duration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudge: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub friend_after: Option<Parsed<Duration>>,
}

impl ReminderOverrides {
    fn is_empty(&self) -> bool {
        self.promoter.is_none() && self.promoter_after.is_none() && self.nudge.is_none() && self.friend_after.is_none()
    }
}

impl Variant {
    /// A control changes nothing.
    pub fn changes_nothing(&self) -> bool {
        self.rewards.is_empty() && self.templates.is_empty() && self.reminders.is_empty()
    }

    /// `base` as this variant runs it.
    pub fn apply(&self, base: &Settings) -> Settings {
        let mut settings = base.clone();
        if let Some(side) = &self.rewards.referrer {
            side.apply(&mut settings.rewards.referrer);
        }
        if let Some(side) = &self.rewards.friend {
            side.apply(&mut settings.rewards.friend);
        }
        if let Some(invite) = &self.templates.invite {
            settings.templates.invite = invite.clone();
        }
        let r = &self.reminders;
        if let Some(on) = r.promoter {
            settings.reminders.promoter = on;
        }
        if let Some(after) = &r.promoter_after {
            settings.reminders.promoter_after = after.clone();
        }
        if let Some(on) = r.nudge {
            settings.reminders.nudge = on;
        }
        if let Some(after) = &r.friend_after {
            settings.reminders.friend_after = after.clone();
        }
        // Variants do not nest.
        settings.experiments.clear();
        settings
    }
}

/// What messages cost and what other currencies are worth, for the economics report.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PricingSettings {
    /// The reporting currency, which the rate card's prices are in too.
    #[schemars(with = "String")]
    pub currency: Currency,
    /// What one unit of another currency is worth in the reporting currency.
    #[serde(default)]
    pub exchange_rates: std::collections::BTreeMap<String, Decimal6>,
    /// Each market's (ISO 3166 country code) price per delivered message by category.
    #[serde(default)]
    pub markets: std::collections::BTreeMap<String, MarketCard>,
}

impl PricingSettings {
    pub fn rate_card(&self) -> RateCard<'_> {
        RateCard { markets: &self.markets }
    }

    pub fn exchange(&self) -> Exchange<'_> {
        Exchange {
            reporting: &self.currency,
            rates: &self.exchange_rates,
        }
    }
}

/// The reminders referloop sends on its own, each with its kill switch.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReminderSettings {
    /// Remind a promoter who neither tapped "Refer someone" nor nominated, once.
    pub promoter: bool,
    /// How long after the invite.
    pub promoter_after: Parsed<Duration>,
    /// Nudge the referrer, once, about a nominated friend who has not converted.
    pub nudge: bool,
    /// How long after the nomination.
    pub friend_after: Parsed<Duration>,
    /// Remind a friend who wrote to us, once, inside the window they opened.
    pub friend: bool,
    /// How long after the friend's message.
    pub friend_reminder_after: Parsed<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeSettings {
    pub promoter_min_score: u8,
    pub nps_property: String,
    pub default_region: String,
    #[serde(rename = "invite_cooldown_days", with = "whole_days")]
    #[schemars(with = "u64")]
    pub invite_cooldown: Duration,
    pub max_invites_per_contact: i64,
    #[serde(rename = "attribution_window_days", with = "whole_days")]
    #[schemars(with = "u64")]
    pub attribution_window: Duration,
    pub max_open_referrals: i64,
    pub send_flow_with_invite: bool,
    #[schemars(schema_with = "friend_invite_names")]
    pub friend_invite: FriendInviteMode,
    pub code_pattern: Parsed<CodePattern>,
    pub customer_lifecycle_stage: String,
    pub stop_button_payloads: Vec<String>,
    /// Languages whose stop keywords are honoured besides `templates.languages`.
    pub stop_keyword_languages: Vec<String>,
    #[serde(rename = "reward_hold_days", with = "whole_days")]
    #[schemars(with = "u64")]
    pub reward_hold: Duration,
    pub max_rewarded_referrals_per_referrer: i64,
    #[serde(rename = "reward_cap_period_days", with = "whole_days")]
    #[schemars(with = "u64")]
    pub reward_cap_period: Duration,
    /// A purchase with a referrer's code by a number never nominated creates the referral
    /// at conversion time (codes shared by hand) instead of staying unattributed.
    pub attribute_code_only: bool,
    #[serde(default, serialize_with = "redact")]
    #[schemars(with = "Option<String>")]
    pub flow_token_secret: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSpotProperties {
    pub phone: Vec<String>,
    pub first_name: String,
    pub language: String,
    /// The contact's time zone (`hs_timezone`), read from the trigger for quiet hours.
    pub time_zone: String,
    pub referral_code: String,
    pub referral_status: String,
    pub referred_by_code: String,
    pub referrer_contact_id: String,
    pub whatsapp_opted_out: String,
    pub lifecycle_stage: String,
    pub referrals_converted: String,
    pub referral_rewards_total: String,
    pub referral_bonus_total: String,
    pub referral_reward: String,
    /// The experiment and variant the referrer's invite was given (`experiment:variant`).
    pub referral_experiment_variant: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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
    /// The promoter's reminder; its buttons are laid out as the invite's.
    pub reminder: String,
    pub reminder_body: Vec<TemplateParameter>,
    /// The referrer's nudge about a friend who has not converted.
    pub nudge: String,
    pub nudge_body: Vec<TemplateParameter>,
    pub nudge_stop_button: u8,
    /// The milestone bonus, to the referrer.
    pub bonus: String,
    pub bonus_body: Vec<TemplateParameter>,
}

/// A value a template body parameter can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TemplateParameter {
    FirstName,
    Code,
    FriendName,
    ReferrerName,
    PersonalMessage,
    Reward,
    // The click-to-chat link with the referral code in its text (the referrer's nudge).
    // (Plain comments: documented variants would make the schema's list of names a
    // `oneOf`, which the configuration's shape check reads only when all are documented.)
    ShareLink,
    // The number of rewarded referrals a milestone bonus was reached at.
    Milestone,
}

impl TemplateParameter {
    pub const ALL: [TemplateParameter; 8] = [
        TemplateParameter::FirstName,
        TemplateParameter::Code,
        TemplateParameter::FriendName,
        TemplateParameter::ReferrerName,
        TemplateParameter::PersonalMessage,
        TemplateParameter::Reward,
        TemplateParameter::ShareLink,
        TemplateParameter::Milestone,
    ];
}

/// A setting that takes one of a domain type's names (the domain stays free of schemas).
fn names_schema(names: impl IntoIterator<Item = String>) -> Schema {
    let names: Vec<String> = names.into_iter().collect();
    json_schema!({"type": "string", "enum": names})
}

fn reward_kind_names(_: &mut SchemaGenerator) -> Schema {
    use crate::domain::state::Persisted;
    names_schema(RewardKind::ALL.iter().map(|kind| kind.as_str().to_string()))
}

fn friend_invite_names(_: &mut SchemaGenerator) -> Schema {
    let serialized = FriendInviteMode::ALL
        .iter()
        .filter_map(|mode| serde_json::to_value(mode).ok());
    names_schema(serialized.filter_map(|name| name.as_str().map(str::to_string)))
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
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
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
}

/// A duration the configuration keeps as whole seconds (its key ends in `_seconds`).
mod whole_seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

/// A duration the configuration keeps as whole milliseconds (its key ends in `_ms`).
mod whole_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}
