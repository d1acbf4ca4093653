//! The admin API: what the dashboard shows, as JSON under `/api/v1` (funnel, referrals
//! with cursor pagination, a referral's timeline, rewards, conversions, dead work with
//! retry, CSV export). Reads need a viewer token; retry needs an operator. Phones are
//! masked in every answer.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{authorise, problem};
use super::AppState;
use crate::domain::access::{Action, Role};
use crate::domain::funnel::{Period, PeriodError};
use crate::domain::state::{Persisted, QueueState};
use crate::store::{now_ms, Queue, ReferralRow};
use crate::telemetry::mask_phone;

/// The most items one page or list holds.
const MAX_PAGE: i64 = 200;

/// A period: `days` (default 30), or `from` and `to` in Unix milliseconds.
#[derive(Debug, Default, Deserialize)]
pub struct PeriodQuery {
    days: Option<i64>,
    from: Option<i64>,
    to: Option<i64>,
    trigger: Option<String>,
}

impl PeriodQuery {
    fn period(&self) -> Result<Period, PeriodError> {
        match (self.from, self.to) {
            (Some(from), Some(to)) => Period::between(from, to),
            _ => Period::last_days(self.days.unwrap_or(30), now_ms()),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %crate::telemetry::escape(&e.to_string()), "admin API: database error");
    problem(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable")
}

/// `GET /api/v1/funnel`: each step's count and rate for the triggers of the period, and
/// the daily chart.
pub async fn funnel(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<PeriodQuery>) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let period = match query.period() {
        Ok(period) => period,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let trigger = query.trigger.as_deref();
    let counts = match state.store.funnel(period, trigger).await {
        Ok(counts) => counts,
        Err(e) => return unavailable(e),
    };
    let days = match state.store.funnel_days(period, trigger).await {
        Ok(days) => days,
        Err(e) => return unavailable(e),
    };
    Json(json!({"period": period, "trigger": trigger, "steps": counts.steps(), "days": days})).into_response()
}

/// `GET /api/v1/dropouts`: why people dropped out in the period.
pub async fn dropouts(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<PeriodQuery>) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let period = match query.period() {
        Ok(period) => period,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    match state.store.dropouts(period).await {
        Ok(dropouts) => Json(json!({"period": period, "dropouts": dropouts})).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `GET /api/v1/rewards/summary`: rewards granted in the period by state, kind and
/// currency with their value, and the code pool's level.
pub async fn reward_summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<PeriodQuery>,
) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let period = match query.period() {
        Ok(period) => period,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let totals = match state.store.reward_totals(period).await {
        Ok(totals) => totals,
        Err(e) => return unavailable(e),
    };
    match state.store.free_pool_codes().await {
        Ok(free) => Json(json!({"period": period, "totals": totals, "code_pool_free": free})).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `GET /api/v1/referrers/top`: the referrers with the most converted friends (all time).
pub async fn top_referrers(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LimitQuery>,
) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let limit = query.limit.unwrap_or(20).clamp(1, MAX_PAGE);
    match state.store.top_referrers(limit).await {
        Ok(top) => Json(json!({"referrers": top})).into_response(),
        Err(e) => unavailable(e),
    }
}

fn referral_json(r: &ReferralRow) -> Value {
    json!({
        "id": r.id,
        "state": r.state.as_str(),
        "reason": r.reason,
        "referral_code": r.referral_code,
        "referrer_contact_id": r.referrer_contact_id,
        "referrer_name": r.referrer_name,
        "referrer_phone": mask_phone(&r.referrer_phone),
        "friend_name": r.friend_name,
        "friend_phone": mask_phone(&r.friend_phone),
        "friend_contact_id": r.friend_contact_id,
        "consent": r.consent == 1,
        "language": r.language,
        "nominated_at": r.nominated_at,
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/referrals`: newest first, `limit` per page (at most 200); `next_cursor`,
/// when present, fetches the next page.
pub async fn referrals(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<PageQuery>) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let before = match query.cursor.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "cursor is not one this API gave"),
    };
    if let Some(s) = query.state.as_deref() {
        if crate::domain::referral::ReferralState::parse(s).is_none() {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "state is not a referral state");
        }
    }
    let page = match state.store.referrals_page(query.state.as_deref(), before, limit).await {
        Ok(page) => page,
        Err(e) => return unavailable(e),
    };
    let next_cursor = (page.len() as i64 == limit)
        .then(|| page.last().map(|r| r.id.to_string()))
        .flatten();
    let items: Vec<Value> = page.iter().map(referral_json).collect();
    Json(json!({"referrals": items, "next_cursor": next_cursor})).into_response()
}

/// `GET /api/v1/referrals/{id}/timeline`.
pub async fn timeline(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let Ok(id) = id.parse::<i64>() else {
        return problem(StatusCode::NOT_FOUND, "no such referral");
    };
    let referral = match state.store.referral(id).await {
        Ok(Some(referral)) => referral,
        Ok(None) => return problem(StatusCode::NOT_FOUND, "no such referral"),
        Err(e) => return unavailable(e),
    };
    match state.store.timeline(&referral).await {
        Ok(entries) => Json(json!({"referral": referral_json(&referral), "timeline": entries})).into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LimitQuery {
    limit: Option<i64>,
}

/// `GET /api/v1/rewards`: the newest rewards (phones masked).
pub async fn rewards(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<LimitQuery>) -> Response {
    let role = match authorise(&state, &headers, Action::Read) {
        Ok(role) => role,
        Err((status, reason)) => return problem(status, reason),
    };
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    match state.store.list_rewards(limit).await {
        Ok(rows) => {
            let items: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                    v["phone"] = json!(mask_phone(&r.phone));
                    // A code can be redeemed: only operators see it.
                    if role != Role::Operator {
                        for secret in ["code", "external_ref", "stripe_customer"] {
                            v[secret] = Value::Null;
                        }
                    }
                    v
                })
                .collect();
            Json(json!({"rewards": items})).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// `GET /api/v1/conversions`: the newest conversions.
pub async fn conversions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LimitQuery>,
) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    match state.store.list_conversions(limit).await {
        Ok(rows) => Json(json!({"conversions": rows})).into_response(),
        Err(e) => unavailable(e),
    }
}

fn queue_named(name: &str) -> Option<Queue> {
    match name {
        "inbox" => Some(Queue::Inbox),
        "jobs" => Some(Queue::Jobs),
        _ => None,
    }
}

/// `GET /api/v1/dead`: dead inbox events and jobs with their last error.
pub async fn dead(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let mut answer = json!({});
    for (queue, name) in [(Queue::Inbox, "inbox"), (Queue::Jobs, "jobs")] {
        match state.store.list(queue, Some(QueueState::Dead), MAX_PAGE).await {
            Ok(items) => answer[name] = json!(items),
            Err(e) => return unavailable(e),
        }
    }
    Json(answer).into_response()
}

/// `POST /api/v1/dead/{queue}/{id}/retry` (operator): re-queues a dead item with fresh
/// attempts, recorded with the token that asked.
pub async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((queue, id)): Path<(String, String)>,
) -> Response {
    let role = match authorise(&state, &headers, Action::Act) {
        Ok(role) => role,
        Err((status, reason)) => return problem(status, reason),
    };
    let (Some(queue), Ok(id)) = (queue_named(&queue), id.parse::<i64>()) else {
        return problem(StatusCode::NOT_FOUND, "no such item");
    };
    let actor = format!("api:{role}");
    match state.store.retry_dead_by(queue, id, &actor).await {
        Ok(true) => Json(json!({"retried": true, "id": id})).into_response(),
        Ok(false) => problem(StatusCode::CONFLICT, "the item is not dead (or does not exist)"),
        Err(e) => unavailable(e),
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
    headers: HeaderMap,
    Query(query): Query<PeriodQuery>,
) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Read) {
        return problem(status, reason);
    }
    let period = match query.period() {
        Ok(period) => period,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let rows = match state.store.referrals_nominated_in(period).await {
        Ok(rows) => rows,
        Err(e) => return unavailable(e),
    };
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
                mask_phone(&r.referrer_phone),
                r.friend_name.clone(),
                mask_phone(&r.friend_phone),
                r.nominated_at.to_string(),
            ]
        })
        .collect();
    csv_response(
        "referrals.csv",
        "id,state,reason,referral_code,referrer_contact_id,referrer_name,referrer_phone,friend_name,friend_phone,nominated_at",
        rows,
    )
}

/// `GET /api/v1/export/rewards.csv`: the rewards granted in the period.
pub async fn rewards_csv(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<PeriodQuery>,
) -> Response {
    let role = match authorise(&state, &headers, Action::Read) {
        Ok(role) => role,
        Err((status, reason)) => return problem(status, reason),
    };
    let period = match query.period() {
        Ok(period) => period,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let rows = match state.store.rewards_created_in(period.from, period.to).await {
        Ok(rows) => rows,
        Err(e) => return unavailable(e),
    };
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.referral_id.to_string(),
                r.beneficiary.clone(),
                r.contact_id.clone().unwrap_or_default(),
                mask_phone(&r.phone),
                r.kind.clone(),
                r.state.as_str().to_string(),
                r.amount.to_string(),
                r.currency.clone(),
                // A code can be redeemed: only operators see it.
                match role {
                    Role::Operator => r.code.clone().unwrap_or_default(),
                    Role::Viewer => String::new(),
                },
                r.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    csv_response(
        "rewards.csv",
        "id,referral_id,beneficiary,contact_id,phone,kind,state,amount,currency,code,last_error",
        rows,
    )
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
