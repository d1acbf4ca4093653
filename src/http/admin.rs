//! The admin API: what the dashboard shows, as JSON under `/api/v1` (funnel, referrals
//! with cursor pagination, a referral's timeline, rewards, conversions, dead work with
//! retry, CSV export). The router checks each operation's role from the table in
//! `openapi.rs`; parameters and answers are the types of `wire.rs`. Phones are masked in
//! every answer.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::problem::{ApiPath, ApiQuery, Caller, Problem};
use super::wire::{
    AmountLine, CohortAnswer, ComparisonAnswer, ConversionItem, ConversionsAnswer, DeadAnswer, DeadItemPath,
    DropoutsAnswer, EconomicsAnswer, ExperimentAnswer, ExperimentPath, ExperimentsAnswer, FunnelAnswer, FunnelQuery,
    HeldAnswer, LimitQuery, PageQuery, PeriodQuery, QueueItem, QueueName, ReferralAnswer, ReferralPath, ReferralsPage,
    RemindersAnswer, RetryAnswer, RewardAnswer, RewardSummaryAnswer, RewardsAnswer, StepAnswer, TimelineAnswer,
    TopReferrersAnswer, UncountedAnswer, VariantAnswer,
};
use super::AppState;
use crate::config::{Experiment, Variant};
use crate::domain::access::Role;
use crate::domain::economics::{self, CohortEconomics, Counted, Measure, TallyLine, MICROS_PER_UNIT};
use crate::domain::experiment::{self, Arm};
use crate::domain::funnel::{FunnelCounts, Step};
use crate::domain::funnel::{Period, PeriodError};
use crate::domain::phone::E164;
use crate::domain::state::{Persisted, QueueState};
use crate::store::STEP_MEASURE;
use crate::store::{Queue, StoreError};
use crate::telemetry::mask_phone;

/// The most items one list of dead work holds.
const MAX_DEAD: i64 = 200;

fn bad_period(e: PeriodError) -> Problem {
    Problem::Unprocessable(e.to_string())
}

/// `GET /api/v1/funnel`: each step's count and rate for the triggers of the period, and
/// the daily chart.
pub async fn funnel(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FunnelQuery>,
) -> Result<Json<FunnelAnswer>, Problem> {
    let period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let trigger = query.trigger.map(|t| t.0);
    let counts = state.store.funnel(period, trigger.as_deref()).await?;
    let days = state.store.funnel_days(period, trigger.as_deref()).await?;
    let steps = counts
        .steps()
        .into_iter()
        .map(|s| StepAnswer {
            step: s.step.to_string(),
            count: s.count,
            rate: s.rate,
        })
        .collect();
    Ok(Json(FunnelAnswer {
        period: period.into(),
        trigger,
        steps,
        days,
        held: HeldAnswer {
            quiet_hours: counts.held_quiet_hours,
            frequency_cap: counts.held_frequency_cap,
        },
        reminders: RemindersAnswer {
            reminded: counts.reminded,
            nominated_after: counts.nominated_after_reminder,
            converted_after: counts.converted_after_reminder,
            nudged: counts.nudged,
            converted_after_nudge: counts.converted_after_nudge,
            friend_reminded: counts.friend_reminded,
        },
        bonuses_granted: counts.bonuses_granted,
    }))
}

/// `GET /api/v1/economics`: what the period's triggers cost and earned, by trigger kind.
pub async fn economics(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FunnelQuery>,
) -> Result<Json<EconomicsAnswer>, Problem> {
    let period = query.period(state.store.now_ms()).map_err(bad_period)?;
    Ok(Json(
        economics_answer(&state, period, query.trigger.map(|t| t.0)).await?,
    ))
}

/// `GET /api/v1/export/economics.csv`: the same, one row per cohort and one for the total.
pub async fn economics_csv(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FunnelQuery>,
) -> Result<Response, Problem> {
    let period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let answer = economics_answer(&state, period, query.trigger.map(|t| t.0)).await?;
    let rows: Vec<EconomicsCsvRow> = answer
        .cohorts
        .iter()
        .chain(std::iter::once(&answer.total))
        .map(|c| EconomicsCsvRow::of(c, &answer.currency))
        .collect();
    csv_response("economics.csv", &rows)
}

/// The economics of the period's triggers, with the assumptions behind the figures.
pub(super) async fn economics_answer(
    state: &AppState,
    period: Period,
    trigger: Option<String>,
) -> Result<EconomicsAnswer, StoreError> {
    let pricing = &state.settings.pricing;
    let (lines, conversions) = state.store.economics_lines(period, trigger.as_deref()).await?;
    let report = economics::economics(&lines, &conversions, &pricing.exchange());
    let major = |micros: i64| micros as f64 / MICROS_PER_UNIT as f64;
    let amounts = |map: &std::collections::BTreeMap<String, Counted>| {
        map.iter()
            .map(|(key, c)| AmountLine {
                key: key.clone(),
                count: c.count,
                amount: major(c.micros),
            })
            .collect::<Vec<_>>()
    };
    let cohort = |c: &CohortEconomics| CohortAnswer {
        trigger: c.trigger.clone(),
        messages: amounts(&c.messages),
        message_cost: major(c.message_cost()),
        free_messages: c.free_messages,
        unpriced_messages: c.unpriced_messages,
        rewards: amounts(&c.rewards),
        reward_cost: major(c.reward_cost()),
        cost: major(c.cost()),
        revenue_by_source: amounts(&c.revenue),
        revenue: major(c.revenue_total()),
        conversions: c.conversions,
        cost_per_acquisition: c.cost_per_acquisition().map(major),
        return_on_cost: c.return_on_cost(),
    };
    let rates = if pricing.exchange_rates.is_empty() {
        "none configured".to_string()
    } else {
        pricing
            .exchange_rates
            .iter()
            .map(|(currency, rate)| {
                format!(
                    "1 {} = {} {}",
                    currency.to_ascii_uppercase(),
                    f64::from(*rate),
                    pricing.currency
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let assumptions = vec![
        "Cohort: the triggers received in the period; each cost and each purchase is counted under the trigger it came from, whenever it happened.".to_string(),
        format!(
            "Messages: Meta bills a message when it is delivered, in the pricing category its delivery status reports; each is priced from the configured rate card (pricing.markets: {} markets, {}) by the recipient's country on the day it was delivered. A market or category with no price is listed as unpriced, not guessed.",
            pricing.markets.len(),
            pricing.currency
        ),
        "Rewards: counted at the value they were issued at (the configured amount of their side or bonus), when issued; rewards held, capped or voided cost nothing.".to_string(),
        "Revenue: the converting purchase of each referred customer (its HubSpot deal amount, Stripe amount or API amount; taken to be in the reporting currency when none is given). Later purchases and lifetime value are not counted. A payment refunded in full on Stripe takes its revenue back (under `refunded`); partial refunds are not deducted.".to_string(),
        format!("Exchange: fixed rates from pricing.exchange_rates ({rates}); no live rates. Money in a currency without a rate is listed as uncounted."),
        "Cost per acquired customer: message and reward cost over conversions. Return: revenue over that cost.".to_string(),
    ];
    Ok(EconomicsAnswer {
        period: period.into(),
        trigger,
        currency: pricing.currency.to_string(),
        cohorts: report.cohorts.iter().map(cohort).collect(),
        total: cohort(&report.total),
        uncounted: report
            .uncounted
            .iter()
            .map(|u| UncountedAnswer {
                what: u.what.to_string(),
                key: u.key.clone(),
                count: u.count,
                amount: major(u.micros),
            })
            .collect(),
        assumptions,
    })
}

/// `GET /api/v1/experiments`: every configured experiment with its results.
pub async fn experiments(State(state): State<AppState>) -> Result<Json<ExperimentsAnswer>, Problem> {
    let mut experiments = Vec::new();
    for config in &state.settings.experiments {
        experiments.push(experiment_answer(&state, config).await?);
    }
    Ok(Json(ExperimentsAnswer { experiments }))
}

/// `GET /api/v1/experiments/{name}`: one experiment's results.
pub async fn experiment(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ExperimentPath>,
) -> Result<Json<ExperimentAnswer>, Problem> {
    let config = state
        .settings
        .experiments
        .iter()
        .find(|e| e.name == path.name.0)
        .ok_or(Problem::NotFound("no such experiment"))?;
    Ok(Json(experiment_answer(&state, config).await?))
}

/// The settings a variant changes, as `key = value` lines.
fn changes(variant: &Variant) -> Vec<String> {
    fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let key = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&key, value, out);
                }
            }
            other => out.push(format!("{prefix} = {other}")),
        }
    }
    let mut out = Vec::new();
    let parts = [
        ("rewards", serde_json::to_value(&variant.rewards)),
        ("templates", serde_json::to_value(&variant.templates)),
        ("reminders", serde_json::to_value(&variant.reminders)),
    ];
    for (name, value) in parts {
        if let Ok(value) = value {
            flatten(name, &value, &mut out);
        }
    }
    // An empty table flattens to nothing; a `null` left by a skipped field is not a change.
    out.retain(|line| !line.ends_with("= null") && !line.ends_with("= {}"));
    out
}

/// An experiment's results, from its tally: each variant's funnel and economics, its
/// conversion rate with a Wilson interval, and the two-proportion z-test against the
/// control, held back as "not yet conclusive" until both have the planned sample.
pub(super) async fn experiment_answer(state: &AppState, config: &Experiment) -> Result<ExperimentAnswer, StoreError> {
    let lines = state.store.experiment_lines(&config.name).await?;
    let now = state.store.now_ms();
    let refused = state
        .services
        .experiments
        .refused_now(&state.store, &config.name)
        .await?;
    let (start, end) = config.span_ms();
    let status = match (&refused, now) {
        (Some(_), now) if now < end => "refused",
        (_, now) if now < start => "scheduled",
        (_, now) if now < end => "running",
        _ => "ended",
    };
    let mut funnels: std::collections::BTreeMap<String, FunnelCounts> = Default::default();
    let mut money = Vec::new();
    for line in &lines {
        if line.measure == STEP_MEASURE {
            if let Some(step) = Step::parse(&line.detail) {
                funnels.entry(line.variant.clone()).or_default().add(step, line.n);
            }
        } else if let Some(measure) = Measure::parse(&line.measure) {
            money.push(TallyLine {
                trigger: line.variant.clone(),
                measure,
                detail: line.detail.clone(),
                currency: line.currency.clone(),
                n: line.n,
                micros: line.micros,
            });
        }
    }
    let conversions = funnels.iter().map(|(v, f)| (v.clone(), f.converted)).collect();
    let report = economics::economics(&money, &conversions, &state.settings.pricing.exchange());
    let planned = config.planned_sample_size();
    let arm = |variant: &str| {
        let f = funnels.get(variant).copied().unwrap_or_default();
        Arm {
            invited: f.invited,
            converted: f.converted,
        }
    };
    let control = config.variants.first().map(|v| arm(&v.name)).unwrap_or_default();
    let major = |micros: i64| micros as f64 / MICROS_PER_UNIT as f64;
    let variants = config
        .variants
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let f = funnels.get(&v.name).copied().unwrap_or_default();
            let this = arm(&v.name);
            let money = report
                .cohorts
                .iter()
                .find(|c| c.trigger == v.name)
                .cloned()
                .unwrap_or_default();
            let versus = (index > 0).then(|| experiment::compare(control, this)).flatten();
            VariantAnswer {
                name: v.name.clone(),
                weight: v.weight.get(),
                control: index == 0,
                changes: changes(v),
                invited: f.invited,
                flow_sent: f.flow_sent,
                nominated: f.nominated,
                friend_reached: f.friend_reached,
                converted: f.converted,
                rewarded: f.rewarded,
                conversion_rate: this.rate(),
                conversion_rate_interval: this.interval().map(|(low, high)| [low, high]),
                cost: major(money.cost()),
                revenue: major(money.revenue_total()),
                cost_per_acquisition: money.cost_per_acquisition().map(major),
                versus_control: versus.map(|c| ComparisonAnswer {
                    difference: c.difference,
                    interval: [c.low, c.high],
                    z: c.z,
                    p_value: c.p_value,
                }),
                verdict: if index == 0 {
                    "control".to_string()
                } else {
                    experiment::verdict(control, this, planned).words().to_string()
                },
            }
        })
        .collect();
    Ok(ExperimentAnswer {
        name: config.name.clone(),
        starts: String::from(config.starts),
        ends: String::from(config.ends),
        status: status.to_string(),
        refused_because: refused,
        planned_sample_size: planned,
        method: format!(
            "Conversion rate is converted referrals over invites given the variant. Each variant is compared with the control ({}) by a two-proportion z-test at 95 %, with the difference's interval; no verdict is given before both have {planned} invites (planned from a {:.1} % baseline and a {:.1}-point effect, 80 % power), so looking early cannot end the experiment on noise.",
            config.variants.first().map(|v| v.name.as_str()).unwrap_or("none"),
            config.baseline_rate * 100.0,
            config.minimum_effect * 100.0
        ),
        currency: state.settings.pricing.currency.to_string(),
        variants,
    })
}

/// A row of `economics.csv`: one cohort, amounts in the reporting currency with four
/// decimals (a message costs a fraction of a cent).
#[derive(Debug, Default, Serialize)]
struct EconomicsCsvRow {
    trigger: Defused,
    currency: Defused,
    conversions: i64,
    billable_messages: i64,
    free_messages: i64,
    unpriced_messages: i64,
    message_cost: String,
    referrer_rewards: String,
    friend_rewards: String,
    bonus_rewards: String,
    reward_cost: String,
    cost: String,
    revenue: String,
    cost_per_acquisition: String,
    return_on_cost: String,
}

impl EconomicsCsvRow {
    fn of(c: &CohortAnswer, currency: &str) -> EconomicsCsvRow {
        let amount = |v: f64| format!("{v:.4}");
        let side = |name: &str| {
            amount(
                c.rewards
                    .iter()
                    .filter(|r| r.key == name)
                    .fold(0.0, |sum, r| sum + r.amount),
            )
        };
        EconomicsCsvRow {
            trigger: Defused::new(c.trigger.clone()),
            currency: Defused::new(currency),
            conversions: c.conversions,
            billable_messages: c.messages.iter().map(|m| m.count).sum(),
            free_messages: c.free_messages,
            unpriced_messages: c.unpriced_messages,
            message_cost: amount(c.message_cost),
            referrer_rewards: side("referrer"),
            friend_rewards: side("friend"),
            bonus_rewards: side("referrer_bonus"),
            reward_cost: amount(c.reward_cost),
            cost: amount(c.cost),
            revenue: amount(c.revenue),
            cost_per_acquisition: c.cost_per_acquisition.map(amount).unwrap_or_default(),
            return_on_cost: c.return_on_cost.map(amount).unwrap_or_default(),
        }
    }
}

/// `GET /api/v1/dropouts`: why people dropped out in the period.
pub async fn dropouts(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> Result<Json<DropoutsAnswer>, Problem> {
    let period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let dropouts = state.store.dropouts(period).await?;
    Ok(Json(DropoutsAnswer {
        period: period.into(),
        dropouts,
    }))
}

/// `GET /api/v1/rewards/summary`: rewards granted in the period by state, kind and
/// currency with their value, and the code pool's level.
pub async fn reward_summary(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> Result<Json<RewardSummaryAnswer>, Problem> {
    let period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let totals = state.store.reward_totals(period).await?;
    let code_pool_free = state.store.free_pool_codes().await?;
    Ok(Json(RewardSummaryAnswer {
        period: period.into(),
        totals: totals.into_iter().map(Into::into).collect(),
        code_pool_free,
    }))
}

/// `GET /api/v1/referrers/top`: the referrers with the most converted friends (all time).
pub async fn top_referrers(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<Json<TopReferrersAnswer>, Problem> {
    let limit = query.limit.map_or(20, |l| l.0);
    let referrers = state.store.top_referrers(limit).await?;
    Ok(Json(TopReferrersAnswer { referrers }))
}

/// `GET /api/v1/referrals`: newest first, `limit` per page (at most 200); `next_cursor`,
/// when present, fetches the next page.
pub async fn referrals(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ReferralsPage>, Problem> {
    let limit = query.limit.map_or(50, |l| l.0);
    let before = query.cursor.as_ref().map(|c| c.before());
    let wanted = query.state.map(|s| s.0);
    let page = state.store.referrals_page(wanted, None, before, limit).await?;
    let next_cursor = (page.len() as i64 == limit)
        .then(|| page.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(ReferralsPage {
        referrals: page.iter().map(ReferralAnswer::from).collect(),
        next_cursor,
    }))
}

/// `GET /api/v1/referrals/{id}/timeline`.
pub async fn timeline(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ReferralPath>,
) -> Result<Json<TimelineAnswer>, Problem> {
    let referral = state
        .store
        .referral(path.id.0)
        .await?
        .ok_or(Problem::NotFound("no such referral"))?;
    let timeline = state.store.timeline(&referral).await?;
    Ok(Json(TimelineAnswer {
        referral: ReferralAnswer::from(&referral),
        timeline,
    }))
}

/// `GET /api/v1/rewards`: the newest rewards (phones masked).
pub async fn rewards(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<Json<RewardsAnswer>, Problem> {
    let limit = query.limit.map_or(50, |l| l.0);
    let rows = state.store.list_rewards(limit).await?;
    Ok(Json(RewardsAnswer {
        rewards: rows.iter().map(|r| RewardAnswer::new(r, caller.role)).collect(),
    }))
}

/// `GET /api/v1/conversions`: the newest conversions.
pub async fn conversions(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<Json<ConversionsAnswer>, Problem> {
    let limit = query.limit.map_or(50, |l| l.0);
    let rows = state.store.list_conversions(limit).await?;
    Ok(Json(ConversionsAnswer {
        conversions: rows.iter().map(ConversionItem::from).collect(),
    }))
}

/// `GET /api/v1/dead`: dead inbox events and jobs with their last error.
pub async fn dead(State(state): State<AppState>) -> Result<Json<DeadAnswer>, Problem> {
    let dead = |queue| state.store.list(queue, Some(QueueState::Dead), MAX_DEAD);
    let inbox = dead(Queue::Inbox).await?;
    let jobs = dead(Queue::Jobs).await?;
    Ok(Json(DeadAnswer {
        inbox: inbox.iter().map(QueueItem::from).collect(),
        jobs: jobs.iter().map(QueueItem::from).collect(),
    }))
}

/// `POST /api/v1/dead/{queue}/{id}/retry` (operator): re-queues a dead item with fresh
/// attempts, recorded with the token that asked.
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(path): ApiPath<DeadItemPath>,
) -> Result<Json<RetryAnswer>, Problem> {
    let queue = match path.queue {
        QueueName::Inbox => Queue::Inbox,
        QueueName::Jobs => Queue::Jobs,
    };
    let id = path.id.0;
    if state.store.retry_dead_by(queue, id, &caller.actor()).await? {
        Ok(Json(RetryAnswer { retried: true, id }))
    } else {
        Err(Problem::Conflict("the item is not dead (or does not exist)"))
    }
}

/// A text field of an export: a leading `=`, `+`, `-`, `@`, tab or carriage return gets a
/// `'` in front, so a spreadsheet shows it rather than running it as a formula. Quoting is
/// the `csv` writer's.
#[derive(Debug, Default)]
struct Defused(String);

impl Defused {
    fn new(value: impl Into<String>) -> Defused {
        Defused(value.into())
    }
}

impl Serialize for Defused {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            serializer.serialize_str(&format!("'{}", self.0))
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

/// A row of `referrals.csv`; its field names are the header.
#[derive(Debug, Default, Serialize)]
struct ReferralCsvRow {
    id: i64,
    state: &'static str,
    reason: Defused,
    referral_code: Defused,
    referrer_contact_id: Defused,
    referrer_name: Defused,
    referrer_phone: String,
    friend_name: Defused,
    friend_phone: String,
    nominated_at: i64,
}

/// A row of `rewards.csv`; its field names are the header.
#[derive(Debug, Default, Serialize)]
struct RewardCsvRow {
    id: i64,
    referral_id: i64,
    beneficiary: &'static str,
    contact_id: Defused,
    phone: String,
    kind: &'static str,
    state: &'static str,
    amount: i64,
    currency: Defused,
    /// A code can be redeemed: only operators see it.
    code: Defused,
    last_error: Defused,
}

/// A CSV attachment of `rows`, the header first even when there is no row.
fn csv_response<R: Serialize + Default>(filename: &str, rows: &[R]) -> Result<Response, Problem> {
    // Flat rows written to memory cannot fail; if a future row type could, the caller
    // hears "unavailable" and the log says why.
    let body = csv_text(rows).map_err(|e| {
        tracing::error!(error = %e, "could not write a CSV export");
        Problem::Unavailable
    })?;
    let disposition = format!("attachment; filename=\"{filename}\"");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

fn csv_text<R: Serialize + Default>(rows: &[R]) -> Result<String, Box<dyn std::error::Error>> {
    let writer = || {
        csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new())
    };
    let mut csv = writer();
    for row in rows {
        csv.serialize(row)?;
    }
    if rows.is_empty() {
        // The writer names the columns with the first row: write a blank one and keep
        // only its header line.
        let mut header = writer();
        header.serialize(R::default())?;
        let text = String::from_utf8(header.into_inner()?)?;
        return Ok(text.lines().next().map(|line| format!("{line}\n")).unwrap_or_default());
    }
    Ok(String::from_utf8(csv.into_inner()?)?)
}

/// `GET /api/v1/export/referrals.csv`: the referrals nominated in the period.
pub async fn referrals_csv(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> Result<Response, Problem> {
    let period: Period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let rows: Vec<ReferralCsvRow> = state
        .store
        .referrals_nominated_in(period)
        .await?
        .into_iter()
        .map(|r| ReferralCsvRow {
            id: r.id,
            state: r.state.as_str(),
            reason: Defused::new(r.reason.map(|reason| reason.as_str().to_string()).unwrap_or_default()),
            referral_code: Defused::new(r.referral_code),
            referrer_contact_id: Defused::new(r.referrer_contact_id),
            referrer_name: Defused::new(r.referrer_name),
            referrer_phone: mask_phone(E164::text_of(r.referrer_phone.as_ref())),
            friend_name: Defused::new(r.friend_name),
            friend_phone: mask_phone(E164::text_of(r.friend_phone.as_ref())),
            nominated_at: r.nominated_at,
        })
        .collect();
    csv_response("referrals.csv", &rows)
}

/// `GET /api/v1/export/rewards.csv`: the rewards granted in the period.
pub async fn rewards_csv(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> Result<Response, Problem> {
    let period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let rows: Vec<RewardCsvRow> = state
        .store
        .rewards_created_in(period.from, period.to)
        .await?
        .into_iter()
        .map(|r| RewardCsvRow {
            id: r.id,
            referral_id: r.referral_id,
            beneficiary: r.beneficiary.as_str(),
            contact_id: Defused::new(r.contact_id.unwrap_or_default()),
            phone: mask_phone(E164::text_of(r.phone.as_ref())),
            kind: r.kind.as_str(),
            state: r.state.as_str(),
            amount: r.amount,
            currency: Defused::new(r.currency),
            code: match caller.role {
                Role::Operator => Defused::new(r.code.unwrap_or_default()),
                Role::Viewer => Defused::default(),
            },
            last_error: Defused::new(r.last_error.unwrap_or_default()),
        })
        .collect();
    csv_response("rewards.csv", &rows)
}

#[cfg(test)]
mod tests {
    use super::{csv_text, Defused, ReferralCsvRow};

    fn line(text: &str) -> String {
        let row = ReferralCsvRow {
            reason: Defused::new(text),
            ..ReferralCsvRow::default()
        };
        let csv = csv_text(&[row]).expect("csv");
        csv.lines()
            .nth(1)
            .unwrap_or_default()
            .split_once(',')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert!(line("plain").starts_with(",plain,"), "{}", line("plain"));
        assert!(line("a,b").starts_with(",\"a,b\","));
        assert!(line("say \"hi\"").starts_with(",\"say \"\"hi\"\"\","));
        assert!(line("=HYPERLINK(\"x\")").starts_with(",\"'=HYPERLINK(\"\"x\"\")\","));
        assert!(line("+44").starts_with(",'+44,"));
        assert!(line("\t=1").starts_with(",'\t=1,") || line("\t=1").starts_with(",\"'\t=1\","));
    }

    #[test]
    fn an_empty_export_is_its_header() {
        let csv = csv_text::<ReferralCsvRow>(&[]).expect("csv");
        assert_eq!(
            csv,
            "id,state,reason,referral_code,referrer_contact_id,referrer_name,referrer_phone,friend_name,friend_phone,nominated_at\n"
        );
    }
}
