//! The admin API: what the dashboard shows, as JSON under `/api/v1` (funnel, referrals
//! with cursor pagination, a referral's timeline, rewards, conversions, dead work with
//! retry, CSV export). The router checks each operation's role from the table in
//! `openapi.rs`; parameters and answers are the types of `wire.rs`. Phones are masked in
//! every answer.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::problem::{ApiPath, ApiQuery, Caller, Problem};
use super::wire::{
    ConversionItem, ConversionsAnswer, DeadAnswer, DeadItemPath, DropoutsAnswer, FunnelAnswer, FunnelQuery, LimitQuery,
    PageQuery, PeriodQuery, QueueItem, QueueName, ReferralAnswer, ReferralPath, ReferralsPage, RetryAnswer,
    RewardAnswer, RewardSummaryAnswer, RewardsAnswer, StepAnswer, TimelineAnswer, TopReferrersAnswer,
};
use super::AppState;
use crate::domain::access::Role;
use crate::domain::funnel::{Period, PeriodError};
use crate::domain::phone::E164;
use crate::domain::state::{Persisted, QueueState};
use crate::store::Queue;
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
    }))
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
    let wanted = query.state.map(|s| s.0.as_str());
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

/// A CSV field: quoted when it holds a separator, a quote or a line break; a leading
/// `=`, `+`, `-`, `@`, tab or carriage return is prefixed with `'` so a spreadsheet does
/// not run it.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// A CSV attachment from a header and rows of fields.
fn csv_response(filename: &str, header_row: &str, rows: Vec<Vec<String>>) -> Response {
    let mut csv = format!("{header_row}\n");
    for fields in rows {
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    let disposition = format!("attachment; filename=\"{filename}\"");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv,
    )
        .into_response()
}

/// `GET /api/v1/export/referrals.csv`: the referrals nominated in the period.
pub async fn referrals_csv(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> Result<Response, Problem> {
    let period: Period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let rows = state.store.referrals_nominated_in(period).await?;
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.as_str().to_string(),
                r.reason.clone().unwrap_or_default(),
                r.referral_code.clone(),
                r.referrer_contact_id.clone(),
                r.referrer_name.clone(),
                mask_phone(E164::text_of(r.referrer_phone.as_ref())),
                r.friend_name.clone(),
                mask_phone(E164::text_of(r.friend_phone.as_ref())),
                r.nominated_at.to_string(),
            ]
        })
        .collect();
    Ok(csv_response(
        "referrals.csv",
        "id,state,reason,referral_code,referrer_contact_id,referrer_name,referrer_phone,friend_name,friend_phone,nominated_at",
        rows,
    ))
}

/// `GET /api/v1/export/rewards.csv`: the rewards granted in the period.
pub async fn rewards_csv(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> Result<Response, Problem> {
    let period = query.period(state.store.now_ms()).map_err(bad_period)?;
    let rows = state.store.rewards_created_in(period.from, period.to).await?;
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.referral_id.to_string(),
                r.beneficiary.as_str().to_string(),
                r.contact_id.clone().unwrap_or_default(),
                mask_phone(E164::text_of(r.phone.as_ref())),
                r.kind.as_str().to_string(),
                r.state.as_str().to_string(),
                r.amount.to_string(),
                r.currency.clone(),
                // A code can be redeemed: only operators see it.
                match caller.role {
                    Role::Operator => r.code.clone().unwrap_or_default(),
                    Role::Viewer => String::new(),
                },
                r.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Ok(csv_response(
        "rewards.csv",
        "id,referral_id,beneficiary,contact_id,phone,kind,state,amount,currency,code,last_error",
        rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+44"), "'+44");
        assert_eq!(csv_field("\t=1"), "'\t=1");
    }
}
