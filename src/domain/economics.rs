//! What the programme costs and earns: Meta's charge for each delivered message (its
//! pricing category, priced from the configured rate card by the recipient's market), the
//! issued value of each reward, and each conversion's amount. Money is counted in
//! millionths of a currency's major unit ("micros"), because a message costs a fraction of
//! a cent, and converted to the reporting currency only when a report is read, with rates
//! from the configuration (no live exchange-rate call).

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::funnel::DAY_MS;
use super::state::{persisted, Persisted};

/// Millionths of a major unit in one major unit.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// An ISO 4217 currency code, upper case (Stripe writes `usd`, HubSpot `USD`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Three ASCII letters, in either case.
    pub fn parse(text: &str) -> Option<Currency> {
        let text = text.trim();
        (text.len() == 3 && text.bytes().all(|b| b.is_ascii_alphabetic())).then(|| Currency(text.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits after the decimal point of its minor unit (Stripe's and ISO 4217's lists of
    /// zero- and three-decimal currencies; two for every other).
    pub fn minor_digits(&self) -> u32 {
        const ZERO: &[&str] = &[
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF",
            "XOF", "XPF",
        ];
        const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
        if ZERO.contains(&self.0.as_str()) {
            0
        } else if THREE.contains(&self.0.as_str()) {
            3
        } else {
            2
        }
    }

    /// `amount` of its minor unit (cents for USD, yen for JPY) in micros.
    pub fn micros_from_minor(&self, amount: i64) -> i64 {
        amount.saturating_mul(10_i64.pow(6 - self.minor_digits()))
    }

    /// `micros` in its minor unit, rounded half away from zero.
    pub fn minor_from_micros(&self, micros: i64) -> i64 {
        let unit = 10_i64.pow(6 - self.minor_digits());
        let half = unit / 2;
        if micros >= 0 {
            (micros + half) / unit
        } else {
            (micros - half) / unit
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Currency::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a currency code (three letters, ISO 4217)"))
        })
    }
}

/// A decimal amount of money (a price, a rate), kept in micros; written in the
/// configuration as a number or a decimal string (`0.0250`, `"0.0250"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(into = "f64")]
#[schemars(with = "f64")]
pub struct Decimal6(i64);

impl Decimal6 {
    pub fn from_micros(micros: i64) -> Decimal6 {
        Decimal6(micros)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// A decimal with at most six digits after the point.
    pub fn parse(text: &str) -> Option<Decimal6> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty()
            || fraction.len() > 6
            || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
        let micros = whole.checked_mul(MICROS_PER_UNIT)?.checked_add(fraction)?;
        Some(Decimal6(if negative { -micros } else { micros }))
    }
}

impl From<Decimal6> for f64 {
    fn from(value: Decimal6) -> f64 {
        value.0 as f64 / MICROS_PER_UNIT as f64
    }
}

impl<'de> Deserialize<'de> for Decimal6 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        let bad = |what: &dyn fmt::Display| serde::de::Error::custom(format!("{what} is not a decimal amount"));
        match Written::deserialize(deserializer)? {
            Written::Number(n) if n.is_finite() && n.abs() < 1e12 => {
                Ok(Decimal6((n * MICROS_PER_UNIT as f64).round() as i64))
            }
            Written::Number(n) => Err(bad(&n)),
            Written::Text(t) => Decimal6::parse(&t).ok_or_else(|| bad(&format!("{t:?}"))),
        }
    }
}

/// The category Meta bills a message in (`pricing.category` of its statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PricingCategory {
    Marketing,
    MarketingLite,
    Utility,
    Authentication,
    AuthenticationInternational,
    Service,
    ReferralConversion,
}

persisted!(PricingCategory {
    Marketing => "marketing",
    MarketingLite => "marketing_lite",
    Utility => "utility",
    Authentication => "authentication",
    AuthenticationInternational => "authentication-international",
    Service => "service",
    ReferralConversion => "referral_conversion",
});

/// What a status's `pricing` object says of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    /// Whether Meta charges for it: `type` `regular` (the free types are a customer
    /// service reply and a free entry point), else the deprecated `billable`.
    pub billable: bool,
    /// `None` for a category this version does not know: reported as unpriced.
    pub category: Option<PricingCategory>,
    /// Meta's `category` as written, for the report of what could not be priced.
    pub category_name: String,
}

impl Pricing {
    /// From the object's `billable`, `type` and `category`.
    pub fn from_meta(billable: Option<bool>, kind: Option<&str>, category: Option<&str>) -> Pricing {
        let billable = match kind {
            Some("regular") => true,
            Some(free) if free.starts_with("free") => false,
            _ => billable.unwrap_or(true),
        };
        let category_name = category.unwrap_or("unknown").to_string();
        Pricing {
            billable,
            category: category.and_then(PricingCategory::parse),
            category_name,
        }
    }
}

/// One market's prices per delivered message, in the rate card's currency, from the day
/// `from` (UTC) when given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarketRates {
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub from: Option<CalendarDay>,
    #[serde(default)]
    pub marketing: Option<Decimal6>,
    #[serde(default)]
    pub utility: Option<Decimal6>,
    #[serde(default)]
    pub authentication: Option<Decimal6>,
    #[serde(default)]
    pub authentication_international: Option<Decimal6>,
    /// Marketing messages delivered as Marketing Messages Lite; the marketing price when
    /// not given.
    #[serde(default)]
    pub marketing_lite: Option<Decimal6>,
}

impl MarketRates {
    /// The price of one message of `category`; service and referral-conversion messages
    /// are free, and a missing price is `None` (never guessed).
    fn price(&self, category: PricingCategory) -> Option<Decimal6> {
        match category {
            PricingCategory::Marketing => self.marketing,
            PricingCategory::MarketingLite => self.marketing_lite.or(self.marketing),
            PricingCategory::Utility => self.utility,
            PricingCategory::Authentication => self.authentication,
            PricingCategory::AuthenticationInternational => self.authentication_international,
            PricingCategory::Service | PricingCategory::ReferralConversion => Some(Decimal6(0)),
        }
    }
}

/// A day of the calendar (UTC), `YYYY-MM-DD`: when a market's rates apply from, or an
/// experiment starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct CalendarDay(NaiveDate);

impl CalendarDay {
    /// Unix milliseconds at the day's start (UTC).
    pub fn start_ms(self) -> i64 {
        self.0.signed_duration_since(NaiveDate::default()).num_days() * DAY_MS
    }
}

impl From<CalendarDay> for String {
    fn from(day: CalendarDay) -> String {
        day.0.format("%Y-%m-%d").to_string()
    }
}

impl<'de> Deserialize<'de> for CalendarDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map(CalendarDay)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a date (YYYY-MM-DD)")))
    }
}

/// A market's rates: one table, or several dated ones (`[[pricing.markets.BR]]`), the
/// latest that has begun applying.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum MarketCard {
    One(MarketRates),
    Dated(Vec<MarketRates>),
}

impl MarketCard {
    fn rates_at(&self, at_ms: i64) -> Option<&MarketRates> {
        let applies = |r: &&MarketRates| r.from.is_none_or(|d| d.start_ms() <= at_ms);
        match self {
            MarketCard::One(rates) => Some(rates).filter(applies),
            MarketCard::Dated(list) => list
                .iter()
                .filter(applies)
                .max_by_key(|r| r.from.map_or(i64::MIN, CalendarDay::start_ms)),
        }
    }
}

/// What one delivered message costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageCharge {
    /// Billable and priced: micros of the rate card's currency.
    Priced { category: PricingCategory, micros: i64 },
    /// Not billable (a free type) or free by category.
    Free { category: String },
    /// Billable, but the card has no price for its market and category at that date.
    Unpriced { market: String, category: String },
}

/// The rate card: prices per market (ISO 3166 country) and category, in one currency.
#[derive(Debug, Clone, PartialEq)]
pub struct RateCard<'a> {
    pub markets: &'a BTreeMap<String, MarketCard>,
}

impl RateCard<'_> {
    /// The charge for a message delivered at `at_ms` to a number of `market` (`None`: a
    /// number whose country is not known).
    pub fn charge(&self, pricing: &Pricing, market: Option<&str>, at_ms: i64) -> MessageCharge {
        let market_name = market.unwrap_or("unknown").to_ascii_uppercase();
        if !pricing.billable {
            return MessageCharge::Free {
                category: pricing.category_name.clone(),
            };
        }
        let Some(category) = pricing.category else {
            return MessageCharge::Unpriced {
                market: market_name,
                category: pricing.category_name.clone(),
            };
        };
        let price = self
            .markets
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&market_name))
            .and_then(|(_, card)| card.rates_at(at_ms))
            .and_then(|rates| rates.price(category));
        match price {
            Some(p) if p.micros() == 0 => MessageCharge::Free {
                category: category.as_str().to_string(),
            },
            Some(p) => MessageCharge::Priced {
                category,
                micros: p.micros(),
            },
            None => MessageCharge::Unpriced {
                market: market_name,
                category: category.as_str().to_string(),
            },
        }
    }
}

/// What a row of the economics tally counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Measure {
    /// Billable messages delivered, by category (detail), priced.
    MessageCost,
    /// Messages delivered free of charge, by category.
    MessageFree,
    /// Billable messages delivered with no price for their market and category
    /// (detail `MARKET:category`).
    MessageUnpriced,
    /// Rewards issued, by beneficiary (detail), at their value.
    RewardCost,
    /// Conversions' amounts, by source (detail).
    Revenue,
}

persisted!(Measure {
    MessageCost => "message_cost",
    MessageFree => "message_free",
    MessageUnpriced => "message_unpriced",
    RewardCost => "reward_cost",
    Revenue => "revenue",
});

/// One row of the tally, summed over a period: `n` events of `measure`/`detail` worth
/// `micros` of `currency` (empty when the measure has no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TallyLine {
    pub trigger: String,
    pub measure: Measure,
    pub detail: String,
    pub currency: String,
    pub n: i64,
    pub micros: i64,
}

/// Exchange rates into the reporting currency: one unit of the key's currency is worth
/// the value in the reporting currency.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange<'a> {
    pub reporting: &'a Currency,
    pub rates: &'a BTreeMap<String, Decimal6>,
}

impl Exchange<'_> {
    /// `micros` of `currency` in the reporting currency; `None` when no rate is configured.
    pub fn convert(&self, micros: i64, currency: &str) -> Option<i64> {
        if currency.eq_ignore_ascii_case(self.reporting.as_str()) {
            return Some(micros);
        }
        let rate = self
            .rates
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(currency))?
            .1
            .micros();
        // micros × rate (itself in micros), in 128 bits so a large sum cannot overflow.
        let converted =
            (i128::from(micros) * i128::from(rate) + i128::from(MICROS_PER_UNIT / 2)) / i128::from(MICROS_PER_UNIT);
        i64::try_from(converted).ok()
    }
}

/// A count and its value in the reporting currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counted {
    pub count: i64,
    pub micros: i64,
}

/// The economics of one cohort of triggers (one trigger kind, or all of them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CohortEconomics {
    /// `nps`, `milestone:KIND`, or `all`.
    pub trigger: String,
    /// Billable messages by category, and their cost.
    pub messages: BTreeMap<String, Counted>,
    /// Messages delivered free of charge.
    pub free_messages: i64,
    /// Billable messages no price was found for (not in the cost).
    pub unpriced_messages: i64,
    /// Issued rewards by side (`referrer`, `friend`, `referrer_bonus`), and their value.
    pub rewards: BTreeMap<String, Counted>,
    /// Conversions' amounts by source (`hubspot`, `stripe`, `api`).
    pub revenue: BTreeMap<String, Counted>,
    /// Converted referrals (the funnel's step).
    pub conversions: i64,
}

impl CohortEconomics {
    pub fn message_cost(&self) -> i64 {
        self.messages.values().map(|c| c.micros).sum()
    }

    pub fn reward_cost(&self) -> i64 {
        self.rewards.values().map(|c| c.micros).sum()
    }

    pub fn cost(&self) -> i64 {
        self.message_cost() + self.reward_cost()
    }

    pub fn revenue_total(&self) -> i64 {
        self.revenue.values().map(|c| c.micros).sum()
    }

    /// The programme's cost over its conversions; `None` before the first one.
    pub fn cost_per_acquisition(&self) -> Option<i64> {
        (self.conversions > 0).then(|| self.cost() / self.conversions)
    }

    /// Revenue over cost; `None` while nothing cost anything.
    pub fn return_on_cost(&self) -> Option<f64> {
        let cost = self.cost();
        (cost > 0).then(|| self.revenue_total() as f64 / cost as f64)
    }

    fn add(&mut self, other: &CohortEconomics) {
        let merge = |into: &mut BTreeMap<String, Counted>, from: &BTreeMap<String, Counted>| {
            for (key, c) in from {
                let entry = into.entry(key.clone()).or_default();
                entry.count += c.count;
                entry.micros += c.micros;
            }
        };
        merge(&mut self.messages, &other.messages);
        merge(&mut self.rewards, &other.rewards);
        merge(&mut self.revenue, &other.revenue);
        self.free_messages += other.free_messages;
        self.unpriced_messages += other.unpriced_messages;
        self.conversions += other.conversions;
    }
}

/// Something the report could not count, said next to its figures.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Uncounted {
    /// `message` (no price for a market and category) or `money` (no exchange rate).
    pub what: &'static str,
    /// `MARKET:category`, or the currency.
    pub key: String,
    pub count: i64,
    /// For money: its amount in its own currency, in micros.
    pub micros: i64,
}

/// The economics of a period: each trigger kind's cohort, their total, and what could
/// not be counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Economics {
    pub cohorts: Vec<CohortEconomics>,
    pub total: CohortEconomics,
    pub uncounted: Vec<Uncounted>,
}

/// Builds the report from the tally's lines and each trigger kind's conversions.
pub fn economics(lines: &[TallyLine], conversions: &BTreeMap<String, i64>, exchange: &Exchange<'_>) -> Economics {
    let mut cohorts: BTreeMap<String, CohortEconomics> = BTreeMap::new();
    let mut uncounted: BTreeMap<(&'static str, String), (i64, i64)> = BTreeMap::new();
    for line in lines {
        let entry = cohorts.entry(line.trigger.clone()).or_insert_with(|| CohortEconomics {
            trigger: line.trigger.clone(),
            ..CohortEconomics::default()
        });
        let value = match line.measure {
            Measure::MessageCost | Measure::RewardCost | Measure::Revenue => {
                match exchange.convert(line.micros, &line.currency) {
                    Some(v) => Some(v),
                    None => {
                        let key = if line.currency.is_empty() {
                            "unknown".to_string()
                        } else {
                            line.currency.clone()
                        };
                        let u = uncounted.entry(("money", key)).or_default();
                        u.0 += line.n;
                        u.1 += line.micros;
                        None
                    }
                }
            }
            Measure::MessageFree | Measure::MessageUnpriced => None,
        };
        let add = |map: &mut BTreeMap<String, Counted>, value: Option<i64>| {
            if let Some(v) = value {
                let c = map.entry(line.detail.clone()).or_default();
                c.count += line.n;
                c.micros += v;
            }
        };
        match line.measure {
            Measure::MessageCost => add(&mut entry.messages, value),
            Measure::RewardCost => add(&mut entry.rewards, value),
            Measure::Revenue => add(&mut entry.revenue, value),
            Measure::MessageFree => entry.free_messages += line.n,
            Measure::MessageUnpriced => {
                entry.unpriced_messages += line.n;
                uncounted.entry(("message", line.detail.clone())).or_default().0 += line.n;
            }
        }
    }
    for (trigger, n) in conversions {
        cohorts
            .entry(trigger.clone())
            .or_insert_with(|| CohortEconomics {
                trigger: trigger.clone(),
                ..CohortEconomics::default()
            })
            .conversions += n;
    }
    let mut total = CohortEconomics {
        trigger: "all".into(),
        ..CohortEconomics::default()
    };
    for c in cohorts.values() {
        total.add(c);
    }
    Economics {
        cohorts: cohorts.into_values().collect(),
        total,
        uncounted: uncounted
            .into_iter()
            .map(|((what, key), (count, micros))| Uncounted {
                what,
                key,
                count,
                micros,
            })
            .collect(),
    }
}

/// Micros as a decimal of the major unit, with `places` digits (for pages and CSV).
pub fn format_micros(micros: i64, places: usize) -> String {
    let places = places.min(6);
    let scale = 10_i64.pow(6 - places as u32);
    let rounded = if micros >= 0 {
        (micros + scale / 2) / scale
    } else {
        (micros - scale / 2) / scale
    };
    let sign = if rounded < 0 { "-" } else { "" };
    let abs = rounded.unsigned_abs();
    if places == 0 {
        return format!("{sign}{abs}");
    }
    let unit = 10_u64.pow(places as u32);
    format!("{sign}{}.{:0places$}", abs / unit, abs % unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("usd").expect("a currency")
    }

    #[test]
    fn currencies_scale_their_minor_units() {
        assert_eq!(usd().micros_from_minor(1250), 12_500_000);
        let yen = Currency::parse("JPY").expect("a currency");
        assert_eq!(yen.micros_from_minor(500), 500_000_000);
        let dinar = Currency::parse("kwd").expect("a currency");
        assert_eq!(dinar.micros_from_minor(1500), 1_500_000);
        assert_eq!(usd().minor_from_micros(12_345_000), 1235);
        assert!(Currency::parse("US").is_none());
        assert!(Currency::parse("U$D").is_none());
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(Decimal6::parse("0.0250").map(Decimal6::micros), Some(25_000));
        assert_eq!(Decimal6::parse("12").map(Decimal6::micros), Some(12_000_000));
        assert_eq!(Decimal6::parse(".5").map(Decimal6::micros), Some(500_000));
        assert_eq!(Decimal6::parse("-1.25").map(Decimal6::micros), Some(-1_250_000));
        assert_eq!(Decimal6::parse("0.0000001"), None);
        assert_eq!(Decimal6::parse("1e3"), None);
        assert_eq!(Decimal6::parse(""), None);
        let n: Decimal6 = serde_json::from_str("0.0625").expect("a number");
        assert_eq!(n.micros(), 62_500);
        assert_eq!(format_micros(62_500, 4), "0.0625");
        assert_eq!(format_micros(-1_250_000, 2), "-1.25");
        assert_eq!(format_micros(2_005_000, 2), "2.01");
    }

    #[test]
    fn meta_pricing_decides_billable_by_type_first() {
        let p = Pricing::from_meta(Some(true), Some("free_customer_service"), Some("service"));
        assert!(!p.billable);
        let p = Pricing::from_meta(Some(false), Some("regular"), Some("utility"));
        assert!(p.billable);
        let p = Pricing::from_meta(Some(false), None, Some("marketing"));
        assert!(!p.billable);
        assert_eq!(p.category, Some(PricingCategory::Marketing));
        let p = Pricing::from_meta(None, None, Some("authentication-international"));
        assert!(p.billable);
        assert_eq!(p.category, Some(PricingCategory::AuthenticationInternational));
        assert_eq!(Pricing::from_meta(None, None, Some("galactic")).category, None);
    }

    fn card() -> BTreeMap<String, MarketCard> {
        let card = r#"{
            "US": { "marketing": 0.025, "utility": "0.004" },
            "BR": [ { "marketing": 0.0625 }, { "from": "2026-10-01", "marketing": 0.07 } ]
        }"#;
        serde_json::from_str(card).expect("a card")
    }

    #[test]
    fn the_card_prices_by_market_category_and_date() {
        let markets = card();
        let card = RateCard { markets: &markets };
        let marketing = Pricing::from_meta(None, Some("regular"), Some("marketing"));
        let september = 20_697 * DAY_MS; // 2026-09-01
        let october = 20_727 * DAY_MS; // 2026-10-01
        assert_eq!(
            card.charge(&marketing, Some("US"), september),
            MessageCharge::Priced {
                category: PricingCategory::Marketing,
                micros: 25_000
            }
        );
        assert_eq!(
            card.charge(&marketing, Some("BR"), september),
            MessageCharge::Priced {
                category: PricingCategory::Marketing,
                micros: 62_500
            }
        );
        assert_eq!(
            card.charge(&marketing, Some("BR"), october),
            MessageCharge::Priced {
                category: PricingCategory::Marketing,
                micros: 70_000
            }
        );
        // A missing rate is reported, not guessed.
        let auth = Pricing::from_meta(None, Some("regular"), Some("authentication"));
        assert_eq!(
            card.charge(&auth, Some("US"), september),
            MessageCharge::Unpriced {
                market: "US".into(),
                category: "authentication".into()
            }
        );
        assert_eq!(
            card.charge(&marketing, Some("DE"), september),
            MessageCharge::Unpriced {
                market: "DE".into(),
                category: "marketing".into()
            }
        );
        let service = Pricing::from_meta(Some(false), Some("free_customer_service"), Some("service"));
        assert_eq!(
            card.charge(&service, Some("DE"), september),
            MessageCharge::Free {
                category: "service".into()
            }
        );
    }

    #[test]
    fn every_category_has_its_price_or_is_free() {
        let markets: BTreeMap<String, MarketCard> = serde_json::from_str(
            r#"{"US": {"marketing": 0.025, "utility": 0.004, "authentication": 0.0135, "authentication_international": 0.03}}"#,
        )
        .expect("a card");
        let card = RateCard { markets: &markets };
        let expected = [
            (PricingCategory::Marketing, Some(25_000)),
            (PricingCategory::MarketingLite, Some(25_000)),
            (PricingCategory::Utility, Some(4_000)),
            (PricingCategory::Authentication, Some(13_500)),
            (PricingCategory::AuthenticationInternational, Some(30_000)),
            (PricingCategory::Service, None),
            (PricingCategory::ReferralConversion, None),
        ];
        assert_eq!(expected.len(), PricingCategory::ALL.len());
        for (category, micros) in expected {
            let pricing = Pricing::from_meta(Some(true), Some("regular"), Some(category.as_str()));
            let charge = card.charge(&pricing, Some("US"), 0);
            match micros {
                Some(micros) => assert_eq!(charge, MessageCharge::Priced { category, micros }),
                None => assert_eq!(
                    charge,
                    MessageCharge::Free {
                        category: category.as_str().into()
                    }
                ),
            }
        }
    }

    #[test]
    fn money_converts_with_configured_rates_only() {
        let reporting = usd();
        let rates: BTreeMap<String, Decimal6> =
            serde_json::from_str(r#"{"EUR": 1.08, "JPY": "0.0067"}"#).expect("rates");
        let exchange = Exchange {
            reporting: &reporting,
            rates: &rates,
        };
        assert_eq!(exchange.convert(10_000_000, "USD"), Some(10_000_000));
        assert_eq!(exchange.convert(10_000_000, "eur"), Some(10_800_000));
        assert_eq!(exchange.convert(1_000_000_000, "JPY"), Some(6_700_000));
        assert_eq!(exchange.convert(10_000_000, "GBP"), None);
    }

    #[test]
    fn the_report_sums_cohorts_and_says_what_it_could_not_count() {
        let reporting = usd();
        let rates: BTreeMap<String, Decimal6> = serde_json::from_str(r#"{"EUR": 2}"#).expect("rates");
        let exchange = Exchange {
            reporting: &reporting,
            rates: &rates,
        };
        let line = |trigger: &str, measure, detail: &str, currency: &str, n, micros| TallyLine {
            trigger: trigger.into(),
            measure,
            detail: detail.into(),
            currency: currency.into(),
            n,
            micros,
        };
        let lines = [
            line("nps", Measure::MessageCost, "marketing", "USD", 4, 100_000),
            line("nps", Measure::MessageCost, "utility", "USD", 2, 8_000),
            line("nps", Measure::MessageFree, "service", "", 3, 0),
            line("nps", Measure::RewardCost, "referrer", "EUR", 1, 5_000_000),
            line("nps", Measure::RewardCost, "friend", "GBP", 1, 5_000_000),
            line("nps", Measure::Revenue, "stripe", "USD", 1, 50_000_000),
            line("milestone:renewal", Measure::MessageUnpriced, "DE:marketing", "", 2, 0),
        ];
        let conversions = BTreeMap::from([("nps".to_string(), 1)]);
        let report = economics(&lines, &conversions, &exchange);
        let nps = report.cohorts.iter().find(|c| c.trigger == "nps").expect("nps");
        assert_eq!(nps.message_cost(), 108_000);
        assert_eq!(nps.reward_cost(), 10_000_000);
        assert_eq!(nps.cost(), 10_108_000);
        assert_eq!(nps.cost_per_acquisition(), Some(10_108_000));
        assert_eq!(nps.free_messages, 3);
        let ret = nps.return_on_cost().expect("a return");
        assert!((ret - 50.0 / 10.108).abs() < 1e-9);
        assert_eq!(report.total.unpriced_messages, 2);
        assert_eq!(report.total.conversions, 1);
        assert_eq!(
            report.uncounted,
            vec![
                Uncounted {
                    what: "message",
                    key: "DE:marketing".into(),
                    count: 2,
                    micros: 0
                },
                Uncounted {
                    what: "money",
                    key: "GBP".into(),
                    count: 1,
                    micros: 5_000_000
                },
            ]
        );
    }
}
