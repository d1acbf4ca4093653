//! What the admin API reads and answers, as types: each parameter type checks its own
//! rule when it is deserialized and states the same rule in its JSON Schema, and each
//! answer is a struct whose schema is derived. The OpenAPI document (`openapi.rs`) is
//! built from these, so it cannot say other than what the handlers do.

use std::borrow::Cow;

use chrono::NaiveDate;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize, Serializer};

use crate::domain::access::Role;
use crate::domain::funnel::{Period, PeriodError, DAY_MS, MAX_DAYS};
use crate::domain::phone::E164;
use crate::domain::referral::ReferralState;
use crate::domain::state::Persisted;
use crate::store::{
    ConversionRow, Dropouts, FunnelDay, QueueRow, ReferralRow, ReferrerCounts, RewardRow, RewardTotal, TimelineEntry,
};
use crate::telemetry::mask_phone;

/// Characters a text field may not hold: Unicode's control characters (what
/// `char::is_control` refuses), as a JSON Schema pattern.
const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// An integer in `MIN..=MAX`. JSON Schema counts `3.0` as an integer, and so does this;
/// in a query or a path it is the same text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: i64, const MAX: i64>(pub i64);

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Integral<const MIN: i64, const MAX: i64>;

        impl<const MIN: i64, const MAX: i64> serde::de::Visitor<'_> for Integral<MIN, MAX> {
            type Value = Bounded<MIN, MAX>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "an integer between {MIN} and {MAX}")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Bounded::try_from(n).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                i64::try_from(n).map_err(E::custom).and_then(|n| self.visit_i64(n))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
                // Exact: an integral float within i64's range converts without loss.
                if n.fract() == 0.0 && n >= i64::MIN as f64 && n < i64::MAX as f64 {
                    self.visit_i64(n as i64)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(n), &self))
                }
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s.parse::<i64>() {
                    Ok(n) => self.visit_i64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
        }

        deserializer.deserialize_any(Integral::<MIN, MAX>)
    }
}

impl<const MIN: i64, const MAX: i64> TryFrom<i64> for Bounded<MIN, MAX> {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&n) {
            Ok(Bounded(n))
        } else {
            Err(format!("must be between {MIN} and {MAX}"))
        }
    }
}

impl<const MIN: i64, const MAX: i64> JsonSchema for Bounded<MIN, MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Bounded_{MIN}_{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "format": "int64", "minimum": MIN, "maximum": MAX})
    }
}

/// A row id: positive.
pub type Id = Bounded<1, { i64::MAX }>;
/// How many items a list returns.
pub type Limit = Bounded<1, 200>;
/// A period's length in days.
pub type Days = Bounded<1, MAX_DAYS>;

/// Text of 1 to `MAX` characters, none of them a control character.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Text<const MAX: usize>(pub String);

impl<const MAX: usize> TryFrom<String> for Text<MAX> {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let length = s.chars().count();
        if length == 0 || length > MAX {
            Err(format!("must be 1 to {MAX} characters"))
        } else if s.chars().any(char::is_control) {
            Err("may not contain control characters".into())
        } else {
            Ok(Text(s))
        }
    }
}

impl<const MAX: usize> JsonSchema for Text<MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Text_{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "minLength": 1, "maxLength": MAX, "pattern": NO_CONTROL})
    }
}

/// Text matching a pattern, checked by a function that says the same as the pattern.
macro_rules! patterned {
    ($(#[$doc:meta])* $name:ident, $pattern:literal, $check:expr, $refusal:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(pub String);

        impl TryFrom<String> for $name {
            type Error = &'static str;
            fn try_from(s: String) -> Result<Self, &'static str> {
                let check: fn(&str) -> bool = $check;
                if check(&s) { Ok($name(s)) } else { Err($refusal) }
            }
        }

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({"type": "string", "pattern": $pattern})
            }
        }
    };
}

fn all_of(s: &str, min: usize, max: usize, allowed: impl Fn(char) -> bool) -> bool {
    (min..=max).contains(&s.chars().count()) && s.chars().all(allowed)
}

patterned!(
    /// A trigger kind: `nps`, `milestone` (every milestone) or `milestone:KIND`.
    TriggerFilter,
    "^(nps|milestone(:[a-z0-9_-]{1,64})?)$",
    |s| {
        s == "nps"
            || s == "milestone"
            || s.strip_prefix("milestone:").is_some_and(|kind| {
                all_of(kind, 1, 64, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            })
    },
    "trigger must be nps, milestone or milestone:KIND"
);

patterned!(
    /// An experiment's name (`[[experiments]]`).
    ExperimentName,
    "^[a-z0-9_-]{1,64}$",
    |s| all_of(s, 1, 64, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'),
    "an experiment's name is 1 to 64 of a-z, 0-9, - and _"
);

patterned!(
    /// A page's cursor: the `next_cursor` of the page before.
    Cursor,
    "^[0-9]{1,18}$",
    |s| all_of(s, 1, 18, |c| c.is_ascii_digit()),
    "cursor is not one this API gave"
);

patterned!(
    /// A phone number as people write it: digits, optionally a leading `+`, spaces,
    /// dashes and parentheses.
    PhoneText,
    "^[+]?[0-9 ()-]{6,24}$",
    |s| {
        let rest = s.strip_prefix('+').unwrap_or(s);
        all_of(rest, 6, 24, |c| c.is_ascii_digit() || " ()-".contains(c))
    },
    "friend_phone must be a phone number (digits, optionally +, spaces, dashes, parentheses)"
);

patterned!(
    /// A HubSpot record id: digits.
    HubSpotId,
    "^[0-9]{1,20}$",
    |s| all_of(s, 1, 20, |c| c.is_ascii_digit()),
    "hubspot_contact_id must be HubSpot's numeric id"
);

patterned!(
    /// An ISO 4217 currency code, either case.
    Currency,
    "^[A-Za-z]{3}$",
    |s| all_of(s, 3, 3, |c| c.is_ascii_alphabetic()),
    "currency must be a three-letter ISO code"
);

impl Cursor {
    /// The id the page before ended with (the pattern holds at most 18 digits).
    pub fn before(&self) -> i64 {
        self.0.parse().unwrap_or(i64::MAX)
    }
}

/// A UTC day as `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Day(pub NaiveDate);

impl TryFrom<String> for Day {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, &'static str> {
        NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .ok()
            .filter(|_| s.len() == 10)
            .map(Day)
            .ok_or("from must be a date, YYYY-MM-DD")
    }
}

impl JsonSchema for Day {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Day".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date"})
    }
}

impl Day {
    /// Unix milliseconds at the day's start.
    fn start_ms(self) -> i64 {
        self.0.signed_duration_since(NaiveDate::default()).num_days() * DAY_MS
    }
}

/// A persisted enum by its stored name: read from a parameter, written in an answer, and
/// in the schema as the list of its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named<T>(pub T);

impl<'de, T: Persisted> Deserialize<'de> for Named<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let names: Vec<&str> = T::ALL.iter().map(|value| value.as_str()).collect();
        T::parse(&name)
            .map(Named)
            .ok_or_else(|| serde::de::Error::custom(format!("must be one of {}", names.join(", "))))
    }
}

impl<T: Persisted> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl<T: Persisted> JsonSchema for Named<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("Named")
            .to_string()
            .into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = T::ALL.iter().map(|value| value.as_str()).collect();
        json_schema!({"type": "string", "enum": names})
    }
}

// ---- parameters ----

/// A period of whole days: `days` days from `from`, or the last `days` days.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PeriodQuery {
    /// The period's length in days (default 30).
    pub days: Option<Days>,
    /// The period's first day, UTC; without it the period ends now.
    pub from: Option<Day>,
}

/// A period of the funnel, optionally of one trigger kind.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct FunnelQuery {
    /// The period's length in days (default 30).
    pub days: Option<Days>,
    /// The period's first day, UTC; without it the period ends now.
    pub from: Option<Day>,
    /// Only triggers of this kind: `nps`, `milestone` or `milestone:KIND`.
    pub trigger: Option<TriggerFilter>,
}

/// The period `days` days from `from`, or the last `days` days before `now`.
pub fn period(days: Option<Days>, from: Option<Day>, now: i64) -> Result<Period, PeriodError> {
    let days = days.map_or(30, |d| d.0);
    match from {
        Some(day) => Period::between(day.start_ms(), day.start_ms() + days * DAY_MS),
        None => Period::last_days(days, now),
    }
}

impl PeriodQuery {
    pub fn period(&self, now: i64) -> Result<Period, PeriodError> {
        period(self.days, self.from, now)
    }
}

impl FunnelQuery {
    pub fn period(&self, now: i64) -> Result<Period, PeriodError> {
        period(self.days, self.from, now)
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct LimitQuery {
    /// How many to return (default 50; 20 for top referrers).
    pub limit: Option<Limit>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PageQuery {
    /// Only referrals in this state.
    pub state: Option<Named<ReferralState>>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Cursor>,
    /// Referrals per page (default 50).
    pub limit: Option<Limit>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExperimentPath {
    /// The experiment.
    pub name: ExperimentName,
}

/// The configured experiments, each with its results.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExperimentsAnswer {
    pub experiments: Vec<ExperimentAnswer>,
}

/// An experiment and what its variants did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExperimentAnswer {
    pub name: String,
    /// Its first and last day (UTC, both included).
    pub starts: String,
    pub ends: String,
    /// `scheduled`, `running`, `ended`, or `refused` (a variant names a template Meta has
    /// not approved: every contact gets the control until it is).
    pub status: String,
    pub refused_because: Option<String>,
    /// Invites each variant needs before a verdict (from `baseline_rate` and
    /// `minimum_effect`, at 5 % two-sided and 80 % power).
    pub planned_sample_size: i64,
    /// How variants are compared, in words.
    pub method: String,
    /// The reporting currency of every amount.
    pub currency: String,
    /// The control first.
    pub variants: Vec<VariantAnswer>,
}

/// One variant's funnel, conversion, economics and comparison with the control.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VariantAnswer {
    pub name: String,
    pub weight: u32,
    pub control: bool,
    /// The settings it changes, as `key = value`.
    pub changes: Vec<String>,
    /// Invites given this variant (eligible triggers).
    pub invited: i64,
    pub flow_sent: i64,
    pub nominated: i64,
    pub friend_reached: i64,
    pub converted: i64,
    pub rewarded: i64,
    /// `converted` ÷ `invited`.
    pub conversion_rate: Option<f64>,
    /// Its 95 % interval (Wilson).
    pub conversion_rate_interval: Option<[f64; 2]>,
    pub cost: f64,
    pub revenue: f64,
    pub cost_per_acquisition: Option<f64>,
    /// Against the control (absent for the control, and while either has no invite).
    pub versus_control: Option<ComparisonAnswer>,
    /// `not yet conclusive` until both this variant and the control have the planned
    /// sample; then `better than control`, `worse than control` or `no difference detected`.
    pub verdict: String,
}

/// A variant's conversion rate against the control's.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ComparisonAnswer {
    /// The variant's rate minus the control's, with its 95 % interval.
    pub difference: f64,
    pub interval: [f64; 2],
    pub z: f64,
    pub p_value: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReferralPath {
    /// The referral.
    pub id: Id,
}

/// Which queue a dead item is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    Inbox,
    Jobs,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeadItemPath {
    /// The queue: inbox or jobs.
    pub queue: QueueName,
    /// The item.
    pub id: Id,
}

/// `POST /api/v1/conversions`: name at least one of `referral_code`, `friend_phone` and
/// `hubspot_contact_id` (not null).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("anyOf" = [
    {"required": ["referral_code"], "properties": {"referral_code": {"type": "string"}}},
    {"required": ["friend_phone"], "properties": {"friend_phone": {"type": "string"}}},
    {"required": ["hubspot_contact_id"], "properties": {"hubspot_contact_id": {"type": "string"}}},
]))]
pub struct ConversionRequest {
    /// Your id of the sale; the call is idempotent by it.
    pub external_id: Text<200>,
    /// The referral code the friend used.
    pub referral_code: Option<Text<64>>,
    /// The friend's phone, E.164 or in the programme's default region. One that is not a
    /// mobile number matches no referral.
    pub friend_phone: Option<PhoneText>,
    /// The friend's HubSpot contact id.
    pub hubspot_contact_id: Option<HubSpotId>,
    /// The sale's value in minor units (cents).
    pub amount: Option<Bounded<0, 1_000_000_000_000>>,
    pub currency: Option<Currency>,
}

// ---- answers ----

/// A period, Unix milliseconds: `[from, to)`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PeriodAnswer {
    pub from: i64,
    pub to: i64,
}

impl From<Period> for PeriodAnswer {
    fn from(p: Period) -> Self {
        PeriodAnswer { from: p.from, to: p.to }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StepAnswer {
    /// triggers, eligible, invited, flow_sent, nominated, friend_reached, converted, rewarded.
    pub step: String,
    pub count: i64,
    /// This step's count over the previous step's, when that is not zero.
    pub rate: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FunnelAnswer {
    pub period: PeriodAnswer,
    pub trigger: Option<String>,
    pub steps: Vec<StepAnswer>,
    pub days: Vec<FunnelDay>,
    pub held: HeldAnswer,
    pub reminders: RemindersAnswer,
    /// Milestone bonuses granted to the cohort's referrers (`rewards.milestones`).
    pub bonuses_granted: i64,
}

/// What the programme cost and earned for the triggers of a period, in the reporting
/// currency (`currency`), by trigger kind.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EconomicsAnswer {
    pub period: PeriodAnswer,
    pub trigger: Option<String>,
    /// The reporting currency (`pricing.currency`); every amount is in its major unit.
    pub currency: String,
    /// Each trigger kind's cohort (`nps`, `milestone:KIND`; `unattributed` for messages
    /// about no trigger, by the day they were charged).
    pub cohorts: Vec<CohortAnswer>,
    /// All the cohorts together.
    pub total: CohortAnswer,
    /// What could not be counted, and so is in no figure above.
    pub uncounted: Vec<UncountedAnswer>,
    /// How the figures were made, in words.
    pub assumptions: Vec<String>,
}

/// One cohort's costs, revenue and what they make per customer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CohortAnswer {
    pub trigger: String,
    /// Billable messages delivered, by Meta's pricing category, with their cost.
    pub messages: Vec<AmountLine>,
    pub message_cost: f64,
    /// Messages delivered free of charge (customer-service replies, free entry points).
    pub free_messages: i64,
    /// Billable messages the rate card has no price for (not in `message_cost`).
    pub unpriced_messages: i64,
    /// Rewards issued, by side (`referrer`, `friend`, `referrer_bonus`), at their value.
    pub rewards: Vec<AmountLine>,
    pub reward_cost: f64,
    /// `message_cost` + `reward_cost`.
    pub cost: f64,
    /// The converting purchases, by source (`hubspot`, `stripe`, `api`).
    pub revenue_by_source: Vec<AmountLine>,
    pub revenue: f64,
    /// Referrals converted (the funnel's step).
    pub conversions: i64,
    /// `cost` ÷ `conversions`; absent before the first conversion.
    pub cost_per_acquisition: Option<f64>,
    /// `revenue` ÷ `cost`; absent while nothing cost anything.
    pub return_on_cost: Option<f64>,
}

/// A count and its amount, under a name.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AmountLine {
    pub key: String,
    pub count: i64,
    pub amount: f64,
}

/// Something left out of the figures.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UncountedAnswer {
    /// `message`: billable messages with no price for their market (`key` is
    /// `MARKET:category`); `money`: amounts in a currency with no exchange rate (`key`).
    pub what: String,
    pub key: String,
    pub count: i64,
    /// For money, the amount in its own currency.
    pub amount: f64,
}

/// The promoters' reminders of the cohort, and what came after them.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RemindersAnswer {
    /// Reminders queued (at most one per invite; one skipped for the frequency cap or an
    /// opt-out is not counted).
    pub reminded: i64,
    /// Nominations made after a reminder, from the reminded invites.
    pub nominated_after: i64,
    /// Conversions of those nominations.
    pub converted_after: i64,
    /// Referrers nudged about a friend who had not converted.
    pub nudged: i64,
    /// Nudged referrals that converted after the nudge.
    pub converted_after_nudge: i64,
    /// Friends reminded inside the window they opened.
    pub friend_reminded: i64,
}

/// Sends of the cohort that waited without using an attempt, each counted once per reason.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HeldAnswer {
    /// Held until the recipient's local send window opened (`messaging.send_window`).
    pub quiet_hours: i64,
    /// Held by `messaging.max_marketing_per_contact_per_week`.
    pub frequency_cap: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DropoutsAnswer {
    pub period: PeriodAnswer,
    pub dropouts: Dropouts,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RewardSummaryAnswer {
    pub period: PeriodAnswer,
    pub totals: Vec<RewardTotalAnswer>,
    /// Unused codes left in the discount-code pool.
    pub code_pool_free: i64,
}

/// Rewards of one state, kind and currency, with their total value.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RewardTotalAnswer {
    pub state: Named<crate::domain::reward::RewardState>,
    pub kind: Named<crate::domain::reward::RewardKind>,
    pub currency: String,
    pub count: i64,
    pub amount: i64,
}

impl From<RewardTotal> for RewardTotalAnswer {
    fn from(t: RewardTotal) -> Self {
        RewardTotalAnswer {
            state: Named(t.state),
            kind: Named(t.kind),
            currency: t.currency,
            count: t.count,
            amount: t.amount,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TopReferrersAnswer {
    pub referrers: Vec<ReferrerCounts>,
}

/// A referral, phones masked.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReferralAnswer {
    pub id: i64,
    pub state: Named<ReferralState>,
    pub reason: Option<Named<crate::domain::nomination::ReferralReason>>,
    pub referral_code: String,
    pub referrer_contact_id: String,
    pub referrer_name: String,
    pub referrer_phone: String,
    pub friend_name: String,
    pub friend_phone: String,
    pub friend_contact_id: Option<String>,
    /// The friend agreed to be messaged directly.
    pub consent: bool,
    pub language: String,
    pub nominated_at: i64,
}

impl From<&ReferralRow> for ReferralAnswer {
    fn from(r: &ReferralRow) -> Self {
        ReferralAnswer {
            id: r.id,
            state: Named(r.state),
            reason: r.reason.map(Named),
            referral_code: r.referral_code.clone(),
            referrer_contact_id: r.referrer_contact_id.clone(),
            referrer_name: r.referrer_name.clone(),
            referrer_phone: mask_phone(E164::text_of(r.referrer_phone.as_ref())),
            friend_name: r.friend_name.clone(),
            friend_phone: mask_phone(E164::text_of(r.friend_phone.as_ref())),
            friend_contact_id: r.friend_contact_id.clone(),
            consent: r.consent,
            language: r.language.clone(),
            nominated_at: r.nominated_at,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReferralsPage {
    pub referrals: Vec<ReferralAnswer>,
    /// Fetches the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TimelineAnswer {
    pub referral: ReferralAnswer,
    pub timeline: Vec<TimelineEntry>,
}

/// A reward, phone masked; a code (which can be redeemed) is shown to operators only.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RewardAnswer {
    pub id: i64,
    pub referral_id: i64,
    /// referrer or friend.
    pub beneficiary: String,
    pub contact_id: Option<String>,
    pub phone: String,
    pub first_name: String,
    pub language: String,
    pub kind: String,
    pub state: Named<crate::domain::reward::RewardState>,
    pub amount: i64,
    pub currency: String,
    pub code: Option<String>,
    pub external_ref: Option<String>,
    pub stripe_customer: Option<String>,
    pub last_error: Option<String>,
    pub available_at: i64,
}

impl RewardAnswer {
    pub fn new(r: &RewardRow, role: Role) -> Self {
        let secret = |value: &Option<String>| match role {
            Role::Operator => value.clone(),
            Role::Viewer => None,
        };
        RewardAnswer {
            id: r.id,
            referral_id: r.referral_id,
            beneficiary: r.beneficiary.as_str().to_string(),
            contact_id: r.contact_id.clone(),
            phone: mask_phone(E164::text_of(r.phone.as_ref())),
            first_name: r.first_name.clone(),
            language: r.language.clone(),
            kind: r.kind.as_str().to_string(),
            state: Named(r.state),
            amount: r.amount,
            currency: r.currency.clone(),
            code: secret(&r.code),
            external_ref: secret(&r.external_ref),
            stripe_customer: secret(&r.stripe_customer),
            last_error: r.last_error.clone(),
            available_at: r.available_at,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RewardsAnswer {
    pub rewards: Vec<RewardAnswer>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversionItem {
    pub id: i64,
    pub source: Named<crate::domain::state::ConversionSource>,
    pub external_id: String,
    pub referral_id: Option<i64>,
    pub outcome: Named<crate::domain::state::ConversionOutcome>,
    pub matched_by: Option<Named<crate::domain::state::MatchedBy>>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub created_at: i64,
}

impl From<&ConversionRow> for ConversionItem {
    fn from(c: &ConversionRow) -> Self {
        ConversionItem {
            id: c.id,
            source: Named(c.source),
            external_id: c.external_id.clone(),
            referral_id: c.referral_id,
            outcome: Named(c.outcome),
            matched_by: c.matched_by.map(Named),
            amount: c.amount,
            currency: c.currency.clone(),
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversionsAnswer {
    pub conversions: Vec<ConversionItem>,
}

/// An inbox event or a job.
#[derive(Debug, Serialize, JsonSchema)]
pub struct QueueItem {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub state: Named<crate::domain::state::QueueState>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub last_error: Option<String>,
    pub note: Option<String>,
}

impl From<&QueueRow> for QueueItem {
    fn from(q: &QueueRow) -> Self {
        QueueItem {
            id: q.id,
            kind: q.kind.to_string(),
            key: q.key.clone(),
            state: Named(q.state),
            attempts: q.attempts,
            max_attempts: q.max_attempts,
            run_at: q.run_at,
            created_at: q.created_at,
            finished_at: q.finished_at,
            last_error: q.last_error.clone(),
            note: q.note.clone(),
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeadAnswer {
    pub inbox: Vec<QueueItem>,
    pub jobs: Vec<QueueItem>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RetryAnswer {
    pub retried: bool,
    pub id: i64,
}

/// What became of a conversion the API was told of.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversionAnswer {
    pub conversion_id: i64,
    pub external_id: String,
    pub outcome: Named<crate::domain::state::ConversionOutcome>,
    pub referral_id: Option<i64>,
    pub referral_state: Option<Named<ReferralState>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VoidAnswer {
    pub referral_id: i64,
    /// How many of its rewards were voided.
    pub voided_rewards: u64,
}
