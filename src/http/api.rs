//! The programme's own API: `POST /api/v1/conversions` (a conversion the business saw)
//! and `POST /api/v1/referrals/{id}/void` (a refund). Bearer tokens are configured as
//! SHA-256 digests and compared in constant time.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::app::conversion::{attribute, convert};
use crate::app::reward;
use crate::domain::access::{Action, Role, TokenDigest};
use crate::domain::phone::E164;
use crate::domain::state::{ConversionOutcome, Persisted};
use crate::store::NewConversion;

pub(super) fn problem(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({"error": reason.into()}))).into_response()
}

/// The role of the request's bearer token, when that role may take `action`; otherwise
/// the status and reason to answer with (401 unknown token, 403 role not allowed).
pub(super) fn authorise(
    state: &AppState,
    headers: &HeaderMap,
    action: Action,
) -> Result<Role, (StatusCode, &'static str)> {
    let allowed = &state.settings.api.tokens;
    if allowed.is_empty() {
        tracing::error!("API refused: api.tokens is empty");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the API is not configured (api.tokens)",
        ));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    // Every entry is compared, in constant time, whichever matches.
    let mut role = None;
    for entry in allowed.iter().filter_map(|e| TokenDigest::parse(e).ok()) {
        if bool::from(digest.as_bytes().ct_eq(entry.digest.as_bytes())) {
            role = role.max(Some(entry.role));
        }
    }
    let Some(role) = role.filter(|_| !token.is_empty()) else {
        state.metrics.reject("api", "bad_token");
        tracing::warn!("API refused: missing or unknown bearer token");
        return Err((StatusCode::UNAUTHORIZED, "missing or unknown bearer token"));
    };
    if !role.may(action) {
        state.metrics.reject("api", "role");
        tracing::warn!(role = %role, "API refused: the token's role may not take this action");
        return Err((StatusCode::FORBIDDEN, "this token's role may only read"));
    }
    Ok(role)
}

#[derive(Debug, Deserialize)]
pub struct ConversionRequest {
    pub external_id: Option<String>,
    pub referral_code: Option<String>,
    pub friend_phone: Option<String>,
    pub hubspot_contact_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

pub async fn post_conversion(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err((status, reason)) = authorise(&state, &headers, Action::Act) {
        return problem(status, reason);
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return problem(rejection.status(), "request body too large or unreadable"),
    };
    let request: ConversionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body is not the expected JSON: {e}")),
    };
    let has_control = [
        &request.external_id,
        &request.referral_code,
        &request.friend_phone,
        &request.hubspot_contact_id,
        &request.currency,
    ]
    .iter()
    .any(|field| field.as_deref().is_some_and(|v| v.chars().any(char::is_control)));
    if has_control {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "fields may not contain control characters",
        );
    }
    let Some(external_id) = request.external_id.filter(|e| !e.trim().is_empty() && e.len() <= 200) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "external_id is required (at most 200 characters): it makes the call idempotent",
        );
    };
    let region = &state.settings.programme.default_region;
    let phone = match request.friend_phone.as_deref().map(|p| E164::parse_mobile(p, region)) {
        Some(Err(e)) => return problem(StatusCode::UNPROCESSABLE_ENTITY, format!("friend_phone: {e}")),
        Some(Ok(p)) => Some(p),
        None => None,
    };
    if request.referral_code.is_none() && phone.is_none() && request.hubspot_contact_id.is_none() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "give referral_code, friend_phone or hubspot_contact_id",
        );
    }
    let services = &state.services;
    let attribution = match attribute(
        services,
        request.hubspot_contact_id.as_deref(),
        phone.as_ref().map(E164::as_str),
        request.referral_code.as_deref(),
    )
    .await
    {
        Ok(attribution) => attribution,
        Err(e) => {
            tracing::error!(error = %e, "conversion could not be matched");
            return problem(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
        }
    };
    let conversion = NewConversion {
        source: "api".into(),
        external_id,
        referral_id: None,
        matched_by: None,
        amount: request.amount,
        currency: request.currency,
        payment_ref: None,
        stripe_customer: None,
    };
    // Runs to its end whatever the client does (a disconnect must not cancel it inside
    // its transaction).
    let step_services = services.clone();
    let step = tokio::spawn(async move { convert(&step_services, None, conversion, attribution).await });
    let converted = step
        .await
        .unwrap_or_else(|e| Err(crate::app::StepError::retry(format!("conversion task: {e}"))));
    let record = match converted {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(error = %e, "conversion could not be recorded");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unavailable; retry with the same external_id",
            );
        }
    };
    let c = &record.conversion;
    let referral_state = match c.referral_id {
        Some(id) => state
            .services
            .store
            .referral(id)
            .await
            .ok()
            .flatten()
            .map(|r| r.state.as_str()),
        None => None,
    };
    let answer = json!({
        "conversion_id": c.id,
        "external_id": c.external_id,
        "outcome": c.outcome.as_str(),
        "referral_id": c.referral_id,
        "referral_state": referral_state,
    });
    let status = match c.outcome {
        ConversionOutcome::Converted if record.converted_now => StatusCode::CREATED,
        ConversionOutcome::Converted | ConversionOutcome::AlreadyConverted => StatusCode::OK,
        ConversionOutcome::Unattributed => StatusCode::NOT_FOUND,
        ConversionOutcome::Pending | ConversionOutcome::OutsideWindow | ConversionOutcome::NotConvertible => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    (status, Json(answer)).into_response()
}

pub async fn void_referral(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let role = match authorise(&state, &headers, Action::Act) {
        Ok(role) => role,
        Err((status, reason)) => return problem(status, reason),
    };
    let Ok(id) = id.parse::<i64>() else {
        return problem(StatusCode::NOT_FOUND, "no such referral");
    };
    match state.store.referral(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return problem(StatusCode::NOT_FOUND, "no such referral"),
        Err(_) => return problem(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable"),
    }
    let services = state.services.clone();
    let actor = format!("api:{role}");
    let voided = tokio::spawn(async move { reward::void_by(&services, id, &actor).await })
        .await
        .unwrap_or_else(|e| Err(crate::app::StepError::retry(format!("void task: {e}"))));
    match voided {
        Ok(voided) => (
            StatusCode::OK,
            Json(json!({"referral_id": id, "voided_rewards": voided})),
        )
            .into_response(),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable"),
    }
}
