//! The programme's own API: `POST /api/v1/conversions` (a conversion the business saw)
//! and `POST /api/v1/referrals/{id}/void` (a refund). The router has checked the caller's
//! bearer token and role (`problem::require_role`) before these run.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::problem::{ApiJson, ApiPath, Caller, Problem};
use super::wire::{ConversionAnswer, ConversionRequest, Named, ReferralPath, VoidAnswer};
use super::AppState;
use crate::app::conversion::{attribute, convert};
use crate::app::{reward, StepError};
use crate::domain::phone::E164;
use crate::domain::state::{ConversionOutcome, ConversionSource};
use crate::store::NewConversion;

/// Runs a step to its end whatever the client does: a disconnect must not cancel it
/// inside its transaction.
async fn run_detached<T: Send + 'static>(
    step: impl std::future::Future<Output = Result<T, StepError>> + Send + 'static,
) -> Result<T, StepError> {
    tokio::spawn(step)
        .await
        .unwrap_or_else(|e| Err(StepError::retry(format!("API step: {e}"))))
}

pub async fn post_conversion(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ConversionRequest>,
) -> Result<(StatusCode, Json<ConversionAnswer>), Problem> {
    if request.referral_code.is_none() && request.friend_phone.is_none() && request.hubspot_contact_id.is_none() {
        return Err(Problem::Unprocessable(
            "give referral_code, friend_phone or hubspot_contact_id".into(),
        ));
    }
    // A well-formed number that is not a mobile one cannot be a friend we messaged: it
    // matches no referral rather than failing the call.
    let region = &state.settings.programme.default_region;
    let phone = request
        .friend_phone
        .as_ref()
        .and_then(|p| E164::parse_mobile(&p.0, region).ok());
    let services = &state.services;
    let attribution = attribute(
        services,
        request.hubspot_contact_id.as_ref().map(|id| id.0.as_str()),
        phone.as_ref().map(E164::as_str),
        request.referral_code.as_ref().map(|code| code.0.as_str()),
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "conversion could not be matched");
        Problem::Unavailable
    })?;
    let conversion = NewConversion {
        source: ConversionSource::Api,
        external_id: request.external_id.0,
        referral_id: None,
        matched_by: None,
        amount: request.amount.map(|a| a.0),
        currency: request.currency.map(|c| c.0),
        payment_ref: None,
        stripe_customer: None,
    };
    let step_services = services.clone();
    let record = run_detached(async move { convert(&step_services, None, conversion, attribution).await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "conversion could not be recorded");
            Problem::Unavailable
        })?;
    let c = &record.conversion;
    let referral_state = match c.referral_id {
        Some(id) => state.services.store.referral(id).await?.map(|r| Named(r.state)),
        None => None,
    };
    let status = match c.outcome {
        ConversionOutcome::Converted if record.converted_now => StatusCode::CREATED,
        ConversionOutcome::Converted | ConversionOutcome::AlreadyConverted => StatusCode::OK,
        ConversionOutcome::Unattributed => StatusCode::NOT_FOUND,
        // The referral exists but its state does not let it convert.
        ConversionOutcome::Pending | ConversionOutcome::OutsideWindow | ConversionOutcome::NotConvertible => {
            StatusCode::CONFLICT
        }
    };
    let answer = ConversionAnswer {
        conversion_id: c.id,
        external_id: c.external_id.clone(),
        outcome: Named(c.outcome),
        referral_id: c.referral_id,
        referral_state,
    };
    Ok((status, Json(answer)))
}

pub async fn void_referral(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(path): ApiPath<ReferralPath>,
) -> Result<Json<VoidAnswer>, Problem> {
    let id = path.id.0;
    state
        .store
        .referral(id)
        .await?
        .ok_or(Problem::NotFound("no such referral"))?;
    let services = state.services.clone();
    let actor = caller.actor();
    let voided = run_detached(async move { reward::void_by(&services, id, &actor).await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "void failed");
            Problem::Unavailable
        })?;
    Ok(Json(VoidAnswer {
        referral_id: id,
        voided_rewards: voided,
    }))
}
