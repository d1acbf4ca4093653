//! The Flow data endpoint's answers: the nomination rules run while the Flow is open, so
//! the referrer sees why a number cannot be used on the field itself. Nothing is written
//! here: the `nfm_reply` that follows a finished Flow records the nomination exactly as
//! with the static Flow (`nomination::on_flow_reply`), checking the same rules again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::nomination::{check, invite_for_token, is_customer_within};
use super::{Services, StepError};
use crate::catalogue::Catalogue;
use crate::domain::flow_exchange::{FlowAnswer, FlowRequest, FormField};
use crate::domain::nomination::{check_standing, validate, FlowReply, NominationRefusal, Standing};
use crate::domain::phone::E164;
use crate::store::InviteRow;
use crate::telemetry::escape;

/// Refused submissions per Flow token, in this process. Entries an hour old are dropped
/// when the map grows, so it stays small; a Flow is rarely open that long.
#[derive(Default)]
pub struct RefusalCounter {
    counts: Mutex<HashMap<String, (u32, Instant)>>,
}

const REFUSAL_MEMORY: Duration = Duration::from_secs(3600);
const PRUNE_ABOVE: usize = 10_000;

impl RefusalCounter {
    fn count(&self, token: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(token).map(|(n, _)| *n).unwrap_or(0)
    }

    fn record(&self, token: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if counts.len() > PRUNE_ABOVE {
            counts.retain(|_, (_, since)| since.elapsed() < REFUSAL_MEMORY);
        }
        let entry = counts.entry(token.to_string()).or_insert((0, Instant::now()));
        entry.0 += 1;
    }
}

/// What a token says: the invite it opens, and whether a nomination already used it.
enum TokenState {
    Open(InviteRow),
    /// Used by the referral to this number.
    Used {
        invite: InviteRow,
        friend_phone: Option<E164>,
    },
    Invalid,
}

async fn token_state(s: &Services, token: &str) -> Result<TokenState, StepError> {
    let Some(invite) = invite_for_token(s, token).await? else {
        return Ok(TokenState::Invalid);
    };
    if invite.phone.is_none() {
        return Ok(TokenState::Invalid);
    }
    Ok(match s.store.referral_by_flow_token(token).await? {
        Some(referral) => TokenState::Used {
            invite,
            friend_phone: referral.friend_phone,
        },
        None => TokenState::Open(invite),
    })
}

/// The answer to one decrypted request.
pub async fn answer(s: &Services, request: FlowRequest) -> Result<FlowAnswer, StepError> {
    match request {
        FlowRequest::Ping => Ok(FlowAnswer::Active),
        FlowRequest::ErrorNotification {
            error, error_message, ..
        } => {
            tracing::warn!(error = %escape(&error), message = %escape(&error_message),
                "the WhatsApp client reported an error with our Flow answer");
            Ok(FlowAnswer::Acknowledged)
        }
        FlowRequest::Open { flow_token, .. } => match token_state(s, &flow_token).await? {
            TokenState::Open(_) => Ok(FlowAnswer::Screen {
                screen: s.settings.templates.flow_screen.clone(),
                error: None,
            }),
            TokenState::Used { invite, .. } => Ok(token_refused(s, Some(&invite.language))),
            TokenState::Invalid => Ok(token_refused(s, None)),
        },
        FlowRequest::DataExchange {
            flow_token,
            screen,
            form,
        } => submitted(s, flow_token, screen, form).await,
    }
}

async fn submitted(s: &Services, flow_token: String, screen: String, form: FlowReply) -> Result<FlowAnswer, StepError> {
    if s.flow_refusals.count(&flow_token) >= s.settings.whatsapp.flow_max_refusals {
        tracing::info!("a Flow reached its refused-submission limit; closed");
        return Ok(token_refused(s, None));
    }
    let (invite, used_for) = match token_state(s, &flow_token).await? {
        TokenState::Open(invite) => (invite, None),
        TokenState::Used { invite, friend_phone } => (invite, Some(friend_phone)),
        TokenState::Invalid => return Ok(token_refused(s, None)),
    };
    let texts = s.settings.catalogues.get(&invite.language);
    let region = &s.settings.programme.default_region;
    let Some(referrer) = invite.phone.clone() else {
        return Ok(token_refused(s, Some(&invite.language)));
    };
    if let Some(friend_phone) = used_for {
        // Meta retried the submission that finished the Flow, and the nfm_reply was
        // recorded in between: the same submission gets the same answer, another none.
        return Ok(match validate(&form, &referrer, region) {
            Ok(nomination) if friend_phone.as_ref() == Some(&nomination.friend_phone) => {
                FlowAnswer::Finish { flow_token, nomination }
            }
            _ => token_refused(s, Some(&invite.language)),
        });
    }
    let field_error = |refusal: NominationRefusal| {
        s.flow_refusals.record(&flow_token);
        FlowAnswer::Screen {
            screen: screen.clone(),
            error: Some((FormField::of(&refusal), texts.flow_error(&refusal, &form.friend_name))),
        }
    };
    // The fields first: a mistyped number needs no lookup.
    let nomination = match validate(&form, &referrer, region) {
        Ok(n) => n,
        Err(refusal) => return Ok(field_error(refusal)),
    };
    // The store's checks next, then HubSpot only for a number nothing else refuses.
    let friend = &nomination.friend_phone;
    let known = Standing {
        friend_taken: Some(
            s.store
                .friend_has_open_referral(friend, s.attribution_window_start())
                .await?,
        ),
        friend_opted_out: Some(s.store.is_opted_out(friend).await?),
        ..Standing::default()
    };
    let nomination = match check(s, &invite, &referrer, &form, known).await? {
        Ok(n) => n,
        Err(refusal) => return Ok(field_error(refusal)),
    };
    let customer = Standing {
        friend_is_customer: customer_within_budget(s, &nomination.friend_phone).await,
        ..Standing::default()
    };
    match check_standing(&customer) {
        Ok(()) => Ok(FlowAnswer::Finish { flow_token, nomination }),
        Err(refusal) => Ok(field_error(refusal)),
    }
}

/// HubSpot's answer within `whatsapp.flow_customer_check_ms`, waiting for a search place
/// (the pace the worker shares) no longer than that; else unknown: the Flow goes on, and
/// the screening job asks after the nomination is recorded (a customer is then told by
/// message, as with the static Flow).
async fn customer_within_budget(s: &Services, friend: &E164) -> Option<bool> {
    // Half the request timeout at most, so the answer always beats the timeout layer.
    let request_timeout = s.settings.server.request_timeout;
    let budget = s.settings.whatsapp.flow_customer_check.min(request_timeout / 2);
    match tokio::time::timeout(budget, is_customer_within(s, friend, budget)).await {
        Ok(Ok(Some(answer))) => Some(answer),
        Ok(Ok(None)) => {
            tracing::info!(
                budget_ms = budget.as_millis() as u64,
                "no HubSpot search place within the Flow's budget; the worker checks later"
            );
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %escape(&e.to_string()), "HubSpot customer check failed in the Flow; the worker checks later");
            None
        }
        Err(_) => {
            tracing::warn!(
                budget_ms = budget.as_millis() as u64,
                "HubSpot customer check too slow for the Flow; the worker checks later"
            );
            None
        }
    }
}

fn token_refused(s: &Services, language: Option<&str>) -> FlowAnswer {
    let texts: &Catalogue = s
        .settings
        .catalogues
        .get(language.unwrap_or(&s.settings.templates.default_language));
    FlowAnswer::TokenRefused {
        message: texts.flow_error(&NominationRefusal::InvalidToken, ""),
    }
}
