//! Jobs: the calls to outside APIs the lifecycle queued. Each reads its current state
//! from the store first, so a retried or duplicated job does nothing twice.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{conversions, lifecycle};
use super::{HandlerError, HandlerOutcome, HandlerResult, Services};
use crate::domain::messaging::SendErrorClass;
use crate::domain::phone::E164;
use crate::domain::referral::{friend_hubspot_status, ReferralState};
use crate::integrations::hubspot::HubSpotError;
use crate::store::{now_ms, ClaimedItem};

/// How long a send interrupted mid-request waits for Meta's status before sending again.
const INTERRUPTED_SEND_WAIT_MS: i64 = 120_000;

pub async fn handle(s: &Services, item: &ClaimedItem) -> HandlerResult {
    let Ok(payload) = serde_json::from_str::<Value>(&item.payload) else {
        return Err(HandlerError::Permanent("job payload is not JSON".into()));
    };
    let id = |name: &str| payload.get(name).and_then(Value::as_i64);
    match item.kind.as_str() {
        "whatsapp.send" => match id("message_id") {
            Some(message_id) => send_whatsapp(s, item, message_id).await,
            None => Err(HandlerError::Permanent("no message_id".into())),
        },
        "referral.screen" => match id("referral_id") {
            Some(referral_id) => {
                let business = payload
                    .get("business_number")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                lifecycle::screen(s, referral_id, business, item.id).await
            }
            None => Err(HandlerError::Permanent("no referral_id".into())),
        },
        "hubspot.update_contact" => update_contact(s, item, &payload).await,
        "hubspot.create_friend" => match id("referral_id") {
            Some(referral_id) => create_friend(s, item, referral_id).await,
            None => Err(HandlerError::Permanent("no referral_id".into())),
        },
        "hubspot.sync_friend" => match id("referral_id") {
            Some(referral_id) => sync_friend(s, item, referral_id).await,
            None => Err(HandlerError::Permanent("no referral_id".into())),
        },
        "hubspot.sync_opt_out" => sync_opt_out(s, item, &payload).await,
        "reward.issue" => match id("reward_id") {
            Some(reward_id) => conversions::issue_reward(s, reward_id, item.id).await,
            None => Err(HandlerError::Permanent("no reward_id".into())),
        },
        "hubspot.link_referral" => match id("referral_id") {
            Some(referral_id) => conversions::link_referral(s, referral_id, item.id).await,
            None => Err(HandlerError::Permanent("no referral_id".into())),
        },
        "hubspot.referrer_counters" => {
            let contact = payload.get("contact_id").and_then(Value::as_str).unwrap_or_default();
            conversions::referrer_counters(s, contact, item.id).await
        }
        "hubspot.credit_total" => {
            let contact = payload.get("contact_id").and_then(Value::as_str).unwrap_or_default();
            let property = payload.get("property").and_then(Value::as_str).unwrap_or_default();
            conversions::credit_total(s, contact, property, item.id).await
        }
        other => Err(HandlerError::Permanent(format!("no handler for job kind `{other}`"))),
    }
}

pub fn hubspot_error(error: HubSpotError) -> HandlerError {
    match error {
        HubSpotError::RateLimited { retry_after, policy } => {
            HandlerError::retry_after(format!("HubSpot rate limit {policy}"), retry_after)
        }
        HubSpotError::Retryable(message) => HandlerError::retry(message),
        HubSpotError::Permanent(message) => HandlerError::Permanent(message),
    }
}

async fn send_whatsapp(s: &Services, item: &ClaimedItem, message_id: i64) -> HandlerResult {
    let Some(message) = s.store.message(message_id).await? else {
        return Err(HandlerError::Permanent(format!("message {message_id} not found")));
    };
    let from = match message.status.as_str() {
        "queued" => "queued",
        // An earlier attempt was interrupted after the request may have reached Meta (a
        // crash, a timeout). Meta takes no idempotency key, but its statuses echo our
        // callback data (the message's key), which `on_status` uses to record the send.
        // Wait for that a while before sending again.
        "sending" => {
            let waited = now_ms() - message.updated_at;
            if waited < INTERRUPTED_SEND_WAIT_MS {
                let rest = Duration::from_millis((INTERRUPTED_SEND_WAIT_MS - waited) as u64);
                return Err(HandlerError::retry_after(
                    "interrupted send: waiting for Meta's status",
                    rest,
                ));
            }
            tracing::warn!(message_id, "interrupted send never confirmed by Meta; sending again");
            "sending"
        }
        done => return HandlerOutcome::done(format!("message already {done}")),
    };
    if message.marketing == 1 && s.store.is_opted_out(&message.to_phone).await? {
        s.store
            .record_send(message.id, "suppressed", None, None, Some("recipient opted out"))
            .await?;
        return HandlerOutcome::done("suppressed: recipient opted out of marketing");
    }
    if !s
        .store
        .advance_message_status(message.id, from, "sending", None, None)
        .await?
    {
        return HandlerOutcome::done("another worker is sending this message");
    }
    match s.whatsapp.send(&message.body, Some(item.id)).await {
        Ok(accepted) => {
            s.store.mark_accepted(message.id, &accepted.wamid).await?;
            HandlerOutcome::done(format!("accepted as {}", accepted.wamid))
        }
        Err(failure) => {
            let retry_delay = match failure.class {
                SendErrorClass::Retry { not_before } => Some(not_before.max(failure.retry_after.unwrap_or_default())),
                _ => None,
            };
            if failure.ambiguous {
                // The request may have been delivered: keep `sending`, so the next attempt
                // waits for Meta's status before sending again.
                return Err(HandlerError::retry_after(failure.title, Duration::from_secs(30)));
            }
            if let Some(delay) = retry_delay {
                s.store
                    .advance_message_status(message.id, "sending", "queued", None, None)
                    .await?;
                return Err(HandlerError::retry_after(failure.title, delay));
            }
            if failure.class == SendErrorClass::AccountLevel {
                // Keep the message queued: `referloop jobs retry` sends it once fixed.
                s.store
                    .advance_message_status(message.id, "sending", "queued", None, None)
                    .await?;
                lifecycle::after_send_failure(s, &message, failure.class, failure.code).await?;
                return Err(HandlerError::Permanent(format!(
                    "account-level error {:?}: {}",
                    failure.code, failure.title
                )));
            }
            s.store
                .advance_message_status(message.id, "sending", "failed", failure.code, Some(&failure.title))
                .await?;
            lifecycle::after_send_failure(s, &message, failure.class, failure.code).await?;
            Err(HandlerError::Permanent(format!(
                "{} (code {}): {}",
                failure.class.as_str(),
                failure.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                failure.title
            )))
        }
    }
}

async fn update_contact(s: &Services, item: &ClaimedItem, payload: &Value) -> HandlerResult {
    let contact_id = payload.get("contact_id").and_then(Value::as_str).unwrap_or_default();
    let properties = payload
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if contact_id.is_empty() {
        return Err(HandlerError::Permanent("no contact_id".into()));
    }
    s.hubspot
        .update_contact(contact_id, &properties, Some(item.id))
        .await
        .map_err(hubspot_error)?;
    HandlerOutcome::done(format!("contact {contact_id} updated"))
}

/// Finds the friend's contact by phone or creates it (once per referral), then records
/// its id; the status updates (`hubspot.sync_friend`) wait for it.
async fn create_friend(s: &Services, item: &ClaimedItem, referral_id: i64) -> HandlerResult {
    let Some(referral) = s.store.referral(referral_id).await? else {
        return Err(HandlerError::Permanent(format!("referral {referral_id} not found")));
    };
    if let Some(id) = &referral.friend_contact_id {
        return HandlerOutcome::done(format!("friend contact {id} already recorded"));
    }
    let phone = E164::parse_mobile(&referral.friend_phone, "ZZ")
        .map_err(|_| HandlerError::Permanent("stored friend phone is invalid".into()))?;
    let names = &s.settings.hubspot_properties;
    let found = s
        .hubspot
        .search_by_phone(&phone, &[], &s.settings.programme.default_region, Some(item.id))
        .await
        .map_err(hubspot_error)?;
    let id = match found.first() {
        Some(contact) => contact.id.clone(),
        None => {
            let mut create = friend_properties(s, &referral);
            create.insert("phone".into(), json!(phone.as_str()));
            create.insert(names.first_name.clone(), json!(referral.friend_name));
            s.hubspot
                .create_contact(&create, Some(item.id))
                .await
                .map_err(hubspot_error)?
        }
    };
    s.store.set_friend_contact_id(referral.id, &id).await?;
    HandlerOutcome::done(format!("friend contact {id}"))
}

fn friend_properties(s: &Services, referral: &crate::store::ReferralRow) -> Map<String, Value> {
    let names = &s.settings.hubspot_properties;
    let status = ReferralState::parse(&referral.state)
        .and_then(friend_hubspot_status)
        .unwrap_or("nominated");
    let mut properties = Map::new();
    properties.insert(names.referral_status.clone(), json!(status));
    properties.insert(names.referred_by_code.clone(), json!(referral.referral_code));
    properties.insert(names.referrer_contact_id.clone(), json!(referral.referrer_contact_id));
    properties
}

/// Sets the friend's referral properties from the referral's current state (so an older
/// job cannot write a stale status).
async fn sync_friend(s: &Services, item: &ClaimedItem, referral_id: i64) -> HandlerResult {
    let Some(referral) = s.store.referral(referral_id).await? else {
        return Err(HandlerError::Permanent(format!("referral {referral_id} not found")));
    };
    if ReferralState::parse(&referral.state)
        .and_then(friend_hubspot_status)
        .is_none()
    {
        return HandlerOutcome::done("nothing to record for this state");
    }
    let Some(contact_id) = referral.friend_contact_id.clone() else {
        return Err(HandlerError::retry_after(
            "waiting for the friend's contact",
            Duration::from_secs(2),
        ));
    };
    let properties = friend_properties(s, &referral);
    s.hubspot
        .update_contact(&contact_id, &properties, Some(item.id))
        .await
        .map_err(hubspot_error)?;
    HandlerOutcome::done(format!(
        "friend contact {contact_id}: {}",
        properties.values().next().cloned().unwrap_or_default()
    ))
}

/// Mirrors an opt-out (or its lifting) onto every HubSpot contact with that number.
async fn sync_opt_out(s: &Services, item: &ClaimedItem, payload: &Value) -> HandlerResult {
    let Some(phone) = payload
        .get("phone")
        .and_then(Value::as_str)
        .and_then(|p| E164::parse_mobile(p, "ZZ").ok())
    else {
        return Err(HandlerError::Permanent("no valid phone".into()));
    };
    let opted_out = payload.get("opted_out").and_then(Value::as_bool).unwrap_or(true);
    let mut ids = s.store.contact_ids_for_phone(phone.as_str()).await?;
    if ids.is_empty() {
        let found = s
            .hubspot
            .search_by_phone(&phone, &[], &s.settings.programme.default_region, Some(item.id))
            .await
            .map_err(hubspot_error)?;
        ids = found.into_iter().map(|c| c.id).collect();
    }
    let names = &s.settings.hubspot_properties;
    let mut properties = Map::new();
    properties.insert(
        names.whatsapp_opted_out.clone(),
        json!(if opted_out { "true" } else { "false" }),
    );
    if opted_out {
        properties.insert(names.referral_status.clone(), json!("opted_out"));
    }
    for id in &ids {
        s.hubspot
            .update_contact(id, &properties, Some(item.id))
            .await
            .map_err(hubspot_error)?;
    }
    HandlerOutcome::done(format!("opt-out mirrored to {} contact(s)", ids.len()))
}
