//! Conversions and rewards: a friend's purchase or signup, from HubSpot, Stripe or the
//! API, converts its referral once; the referrer is thanked and both sides rewarded once.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::lifecycle::effect_message;
use super::outbox::hubspot_error;
use super::{HandlerError, HandlerOutcome, HandlerResult, Services};
use crate::config::{secret_value, RewardSide, TemplateParameter};
use crate::domain::code::normalise_code;
use crate::domain::inbound::hubspot_property;
use crate::domain::messaging::first_name;
use crate::domain::phone::E164;
use crate::domain::referral::{self, Effect, ReferralEvent, ReferralState};
use crate::domain::reward::{self, Beneficiary, RewardKind, RewardState};
use crate::integrations::stripe::StripeError;
use crate::integrations::whatsapp::bodies;
use crate::signatures;
use crate::store::{
    now_ms, ConversionEffects, ConversionRecord, NewConversion, NewReward, ReferralRow, RewardCap, SideJob,
};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn stripe_error(error: StripeError) -> HandlerError {
    match error {
        StripeError::Retryable {
            message,
            not_before: Some(delay),
        } => HandlerError::retry_after(message, delay),
        StripeError::Retryable {
            message,
            not_before: None,
        } => HandlerError::retry(message),
        StripeError::Permanent(message) => HandlerError::Permanent(message),
    }
}

impl Services {
    fn reward_side(&self, beneficiary: Beneficiary) -> &RewardSide {
        match beneficiary {
            Beneficiary::Referrer => &self.settings.rewards.referrer,
            Beneficiary::Friend => &self.settings.rewards.friend,
        }
    }
}

/// Records a conversion; when it converts the referral, the thanks, both rewards and the
/// HubSpot updates are created in the same transaction.
pub async fn convert(s: &Services, conversion: NewConversion) -> Result<ConversionRecord, HandlerError> {
    let programme = &s.settings.programme;
    let window_start = now_ms() - programme.attribution_window_days * DAY_MS;
    let referral = match conversion.referral_id {
        Some(id) => s.store.referral(id).await?,
        None => None,
    };
    let effects = match &referral {
        Some(r) => conversion_effects(s, r, &conversion).await?,
        None => ConversionEffects::default(),
    };
    let record = s.store.record_conversion(&conversion, window_start, &effects).await?;
    tracing::info!(
        source = %conversion.source,
        referral_id = ?conversion.referral_id,
        outcome = %record.conversion.outcome,
        new = record.created,
        "conversion recorded"
    );
    Ok(record)
}

async fn conversion_effects(
    s: &Services,
    r: &ReferralRow,
    conversion: &NewConversion,
) -> Result<ConversionEffects, HandlerError> {
    // What converting asks for, whatever the current state: the store applies it only if
    // the referral is still `friend_invited` when the transaction runs.
    let transition = referral::apply(
        ReferralState::FriendInvited,
        s.settings.programme.friend_invite,
        r.consent == 1,
        &ReferralEvent::Converted,
    );
    let programme = &s.settings.programme;
    let mut effects = ConversionEffects {
        reward_job_attempts: s.max_attempts(),
        referrer_cap: Some(RewardCap {
            referrer_contact_id: r.referrer_contact_id.clone(),
            since: now_ms() - programme.reward_cap_period_days * DAY_MS,
            max: programme.max_rewarded_referrals_per_referrer,
            on_capped: {
                let names = &s.settings.hubspot_properties;
                let mut properties = Map::new();
                properties.insert(names.referral_status.clone(), json!("reward_capped"));
                s.job(
                    "hubspot.update_contact",
                    format!("hubspot.capped:{}", r.id),
                    json!({"contact_id": r.referrer_contact_id, "properties": properties}),
                )
            },
        }),
        ..Default::default()
    };
    for effect in &transition.effects {
        match effect {
            Effect::GrantRewards => effects.rewards = rewards_for(s, r, conversion).await?,
            other => effects.messages.extend(effect_message(s, r, other, None, "")?),
        }
    }
    effects.jobs.push(s.job(
        "hubspot.sync_friend",
        format!("hubspot.friend:{}:converted", r.id),
        json!({"referral_id": r.id}),
    ));
    if s.settings.hubspot.record_referral_links {
        effects.jobs.push(s.job(
            "hubspot.link_referral",
            format!("hubspot.link:{}", r.id),
            json!({"referral_id": r.id}),
        ));
    }
    effects.jobs.push(s.job(
        "hubspot.referrer_counters",
        format!("hubspot.counters:{}:converted", r.id),
        json!({"contact_id": r.referrer_contact_id}),
    ));
    Ok(effects)
}

async fn rewards_for(
    s: &Services,
    r: &ReferralRow,
    conversion: &NewConversion,
) -> Result<Vec<NewReward>, HandlerError> {
    let programme = &s.settings.programme;
    let available_at = now_ms() + programme.reward_hold_days * DAY_MS;
    let mut rewards = Vec::new();
    for beneficiary in [Beneficiary::Referrer, Beneficiary::Friend] {
        let side = s.reward_side(beneficiary);
        if side.kind == RewardKind::None {
            continue;
        }
        // The referrer's cap is decided by the store, inside the converting transaction.
        let state = RewardState::Pending;
        let (contact_id, phone, name, customer) = match beneficiary {
            Beneficiary::Referrer => (
                Some(r.referrer_contact_id.clone()),
                r.referrer_phone.clone(),
                r.referrer_name.clone(),
                None,
            ),
            Beneficiary::Friend => (
                r.friend_contact_id.clone(),
                r.friend_phone.clone(),
                r.friend_name.clone(),
                conversion.stripe_customer.clone(),
            ),
        };
        rewards.push(NewReward {
            beneficiary: beneficiary.as_str().into(),
            contact_id,
            phone,
            first_name: name,
            language: r.language.clone(),
            kind: serde_json::to_value(side.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            state: state.as_str().into(),
            amount: side.amount,
            currency: side.currency.clone(),
            stripe_customer: customer,
            available_at,
        });
    }
    Ok(rewards)
}

impl Services {
    fn job(&self, kind: &str, key: String, payload: Value) -> SideJob {
        SideJob {
            kind: kind.into(),
            payload: payload.to_string(),
            idempotency_key: key,
            max_attempts: self.max_attempts(),
            run_at: now_ms(),
        }
    }
}

/// The one referral a code, phone or contact points to (a code is shared by all of a
/// referrer's friends, so it needs the phone to choose, unless only one friend has it).
pub async fn match_referral(
    s: &Services,
    contact_id: Option<&str>,
    phone: Option<&str>,
    code: Option<&str>,
) -> Result<(Option<i64>, Option<String>), HandlerError> {
    let region = &s.settings.programme.default_region;
    let phone = phone.and_then(|p| E164::parse_mobile(p, region).ok());
    if let Some(contact) = contact_id {
        if let Some((id, _)) = s.store.referral_ids_by("friend_contact_id", contact).await?.first() {
            return Ok((Some(*id), Some("hubspot_contact".into())));
        }
    }
    if let Some(code) = code.map(normalise_code) {
        let candidates = s.store.referral_ids_by("referral_code", &code).await?;
        if let Some(phone) = &phone {
            if let Some((id, _)) = candidates.iter().find(|(_, p)| p == phone.as_str()) {
                return Ok((Some(*id), Some("code_and_phone".into())));
            }
        }
        if candidates.len() == 1 {
            return Ok((Some(candidates[0].0), Some("code".into())));
        }
    }
    if let Some(phone) = &phone {
        if let Some((id, _)) = s.store.referral_ids_by("friend_phone", phone.as_str()).await?.first() {
            return Ok((Some(*id), Some("phone".into())));
        }
    }
    Ok((None, None))
}

/// `POST /webhooks/hubspot?trigger=conversion` from a contact (lifecycle stage customer)
/// or a deal (closed won) workflow.
pub async fn on_hubspot_conversion(s: &Services, payload: &Value, inbox_id: i64) -> HandlerResult {
    let Some(record) = payload.get("record").and_then(Value::as_object) else {
        return Err(HandlerError::Permanent("conversion without a record".into()));
    };
    let object_id = text(payload, "/object_id").unwrap_or_default().to_string();
    let object_type = text(payload, "/object_type").unwrap_or("contact");
    let names = &s.settings.hubspot_properties;
    let (contacts, external_id) = if object_type == "deal" {
        if hubspot_property(record, "hs_is_closed_won").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            return HandlerOutcome::done("deal is not closed won");
        }
        let contacts = s.hubspot.deal_contacts(&object_id, None).await.map_err(hubspot_error)?;
        (contacts, format!("deal:{object_id}"))
    } else {
        let stage = hubspot_property(record, &names.lifecycle_stage);
        if stage
            .as_deref()
            .is_some_and(|st| st != s.settings.programme.customer_lifecycle_stage)
        {
            return HandlerOutcome::done(format!("lifecycle stage {stage:?} is not a conversion"));
        }
        (vec![object_id.clone()], format!("contact:{object_id}"))
    };
    let phone = names.phone.iter().find_map(|p| hubspot_property(record, p));
    let code = hubspot_property(record, &names.referred_by_code);
    let mut matched = (None, None);
    for contact in &contacts {
        matched = match_referral(s, Some(contact), phone.as_deref(), code.as_deref()).await?;
        if matched.0.is_some() {
            break;
        }
    }
    if matched.0.is_none() && contacts.is_empty() {
        matched = match_referral(s, None, phone.as_deref(), code.as_deref()).await?;
    }
    let amount = hubspot_property(record, "amount")
        .and_then(|a| a.parse::<f64>().ok())
        .map(|a| (a * 100.0).round() as i64);
    let record = convert(
        s,
        NewConversion {
            source: "hubspot".into(),
            external_id,
            referral_id: matched.0,
            matched_by: matched.1,
            amount,
            currency: hubspot_property(record, "deal_currency_code"),
            payment_ref: None,
            stripe_customer: None,
        },
    )
    .await?;
    HandlerOutcome::done(format!(
        "conversion {} (inbox {inbox_id}): {}",
        record.conversion.id, record.conversion.outcome
    ))
}

/// Stripe events: `checkout.session.completed`, `invoice.paid`, `charge.refunded`.
pub async fn on_stripe_event(s: &Services, kind: &str, event: &Value) -> HandlerResult {
    let Some(object) = event.pointer("/data/object") else {
        return Err(HandlerError::Permanent("event without data.object".into()));
    };
    match kind {
        "stripe.checkout.session.completed" | "stripe.checkout.session.async_payment_succeeded" => {
            let paid = matches!(text(object, "/payment_status"), Some("paid" | "no_payment_required"));
            if !paid {
                return HandlerOutcome::done("session not paid yet (async payment)");
            }
            let session_id = text(object, "/id").unwrap_or_default();
            let mut code = text(object, "/metadata/referral_code").map(str::to_string);
            if code.is_none() {
                code = session_promotion_code(s, object, session_id).await?;
            }
            stripe_conversion(
                s,
                object,
                format!("checkout:{session_id}"),
                code,
                "/amount_total",
                "/customer_details/phone",
            )
            .await
        }
        "stripe.invoice.paid" => {
            let invoice_id = text(object, "/id").unwrap_or_default();
            let code = text(object, "/metadata/referral_code")
                .or_else(|| text(object, "/parent/subscription_details/metadata/referral_code"))
                .map(str::to_string);
            stripe_conversion(
                s,
                object,
                format!("invoice:{invoice_id}"),
                code,
                "/amount_paid",
                "/customer_phone",
            )
            .await
        }
        "stripe.charge.refunded" => {
            let Some(payment) = text(object, "/payment_intent").or_else(|| text(object, "/id")) else {
                return HandlerOutcome::done("refund without a payment reference");
            };
            match s.store.referral_for_payment(payment).await? {
                Some(referral_id) => {
                    let voided = s.store.void_rewards(referral_id).await?;
                    HandlerOutcome::done(format!(
                        "refund: {voided} pending reward(s) of referral {referral_id} voided"
                    ))
                }
                None => HandlerOutcome::done("refund of a payment that converted no referral"),
            }
        }
        other => HandlerOutcome::done(format!("unhandled kind: {other}")),
    }
}

/// A code typed at checkout is not always in the completed event: read it from the
/// session's expanded discount breakdown.
async fn session_promotion_code(
    s: &Services,
    object: &Value,
    session_id: &str,
) -> Result<Option<String>, HandlerError> {
    let discounts = object
        .get("discounts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let amount_discount = object
        .pointer("/total_details/amount_discount")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if discounts.is_empty() && amount_discount == 0 {
        return Ok(None);
    }
    let session = s
        .stripe
        .checkout_session_discounts(session_id, None)
        .await
        .map_err(stripe_error)?;
    let promotion = session
        .pointer("/total_details/breakdown/discounts")
        .and_then(Value::as_array)
        .and_then(|d| d.iter().find_map(|d| d.pointer("/discount/promotion_code").cloned()));
    match promotion {
        Some(Value::Object(p)) => Ok(p.get("code").and_then(Value::as_str).map(str::to_string)),
        Some(Value::String(id)) => {
            let code = s.stripe.promotion_code(&id, None).await.map_err(stripe_error)?;
            Ok(text(&code, "/code").map(str::to_string))
        }
        _ => Ok(None),
    }
}

async fn stripe_conversion(
    s: &Services,
    object: &Value,
    external_id: String,
    code: Option<String>,
    amount_field: &str,
    phone_field: &str,
) -> HandlerResult {
    // Merchants put their own ids in client_reference_id: only ours (`referral:<id>`)
    // names a referral; metadata.referral_id is explicit.
    let by_reference = text(object, "/client_reference_id")
        .and_then(|r| r.strip_prefix("referral:"))
        .or_else(|| text(object, "/metadata/referral_id"))
        .and_then(|r| r.trim().parse::<i64>().ok());
    // A reference can be set by the buyer (Payment Links take it from the URL): when the
    // customer's phone is known it must be the friend's, else the reference is ignored.
    let region = &s.settings.programme.default_region;
    let buyer_phone = text(object, phone_field).and_then(|p| E164::parse_mobile(p, region).ok());
    let referenced = match by_reference {
        Some(id) => s.store.referral(id).await?,
        None => None,
    };
    let matched = match referenced {
        Some(r) if buyer_phone.as_ref().is_none_or(|p| p.as_str() == r.friend_phone) => {
            (Some(r.id), Some("client_reference_id".to_string()))
        }
        _ => match_referral(s, None, text(object, phone_field), code.as_deref()).await?,
    };
    // The Stripe customer becomes the friend's (promotion codes are restricted to it, credits
    // go to it) only when the buyer's phone confirms the friend.
    let confirmed = buyer_phone.is_some() && matched.0.is_some();
    let record = convert(
        s,
        NewConversion {
            source: "stripe".into(),
            external_id,
            referral_id: matched.0,
            matched_by: matched.1,
            amount: object.pointer(amount_field).and_then(Value::as_i64),
            currency: text(object, "/currency").map(str::to_string),
            payment_ref: text(object, "/payment_intent").map(str::to_string),
            stripe_customer: text(object, "/customer").filter(|_| confirmed).map(str::to_string),
        },
    )
    .await?;
    HandlerOutcome::done(format!(
        "conversion {}: {}",
        record.conversion.id, record.conversion.outcome
    ))
}

/// The `reward.issue` job: fulfils one reward by its kind, then records it, messages the
/// beneficiary and updates HubSpot, once.
pub async fn issue_reward(s: &Services, reward_id: i64, job_id: i64) -> HandlerResult {
    let Some(reward) = s.store.reward(reward_id).await? else {
        return Err(HandlerError::Permanent(format!("reward {reward_id} not found")));
    };
    let state = RewardState::parse(&reward.state).unwrap_or(RewardState::Void);
    if !state.can_issue() {
        return HandlerOutcome::done(format!("reward is {}", reward.state));
    }
    let wait = reward.available_at - now_ms();
    if wait > 0 {
        return Err(HandlerError::retry_after(
            "reward on hold",
            Duration::from_millis(wait as u64),
        ));
    }
    let Some(beneficiary) = Beneficiary::parse(&reward.beneficiary) else {
        return Err(HandlerError::Permanent("unknown beneficiary".into()));
    };
    let Some(referral) = s.store.referral(reward.referral_id).await? else {
        return Err(HandlerError::Permanent("referral not found".into()));
    };
    if !s.store.claim_reward(reward.id).await? {
        return HandlerOutcome::done("reward was voided or issued meanwhile");
    }
    let side = s.reward_side(beneficiary).clone();
    let fulfilled = fulfil(s, &reward, &referral, beneficiary, &side, job_id).await;
    let (code, external_ref) = match fulfilled {
        Ok(done) => done,
        Err(error) => {
            s.store.fail_reward(reward.id, &error.to_string()).await?;
            return Err(error);
        }
    };

    let given = code.clone().unwrap_or_else(|| side.description.clone());
    let mut messages = Vec::new();
    // A friend who gave no consent is messaged only inside a window they opened.
    let may_message = match beneficiary {
        Beneficiary::Referrer => true,
        Beneficiary::Friend if referral.consent == 1 => true,
        Beneficiary::Friend => {
            let last = s.store.last_inbound_at(&reward.phone).await?;
            last.is_some_and(|at| now_ms() - at < 24 * 60 * 60 * 1000)
        }
    };
    let phone = E164::parse_mobile(&reward.phone, "ZZ").ok().filter(|_| may_message);
    if let Some(phone) = phone {
        let t = &s.settings.templates;
        let params = t
            .reward_body
            .iter()
            .map(|p| match p {
                TemplateParameter::Reward | TemplateParameter::Code => given.clone(),
                _ => first_name(&reward.first_name),
            })
            .collect();
        let body = bodies::template(bodies::Template {
            to: phone.as_str(),
            name: &t.reward,
            language: &reward.language,
            body_params: params,
            copy_code: None,
            quick_replies: vec![],
            flow_button: None,
            callback: &format!("reward:{}", reward.id),
        });
        messages.push(crate::store::NewMessage {
            referral_id: Some(reward.referral_id),
            ..s.queued_message(format!("reward:{}:message", reward.id), "reward", &phone, body)
        });
    }
    let names = &s.settings.hubspot_properties;
    let contact = reward.contact_id.clone().or_else(|| match beneficiary {
        Beneficiary::Friend => referral.friend_contact_id.clone(),
        Beneficiary::Referrer => Some(referral.referrer_contact_id.clone()),
    });
    let mut jobs = Vec::new();
    if let Some(contact) = &contact {
        let mut properties = Map::new();
        properties.insert(names.referral_status.clone(), json!("rewarded"));
        properties.insert(names.referral_reward.clone(), json!(given));
        jobs.push(s.job(
            "hubspot.update_contact",
            format!("hubspot.reward:{}", reward.id),
            json!({"contact_id": contact, "properties": properties}),
        ));
        if side.kind == RewardKind::HubspotCredit {
            jobs.push(s.job(
                "hubspot.credit_total",
                format!("hubspot.credit:{}", reward.id),
                json!({"contact_id": contact, "property": side.hubspot_property}),
            ));
        }
    }
    if beneficiary == Beneficiary::Referrer {
        jobs.push(s.job(
            "hubspot.referrer_counters",
            format!("hubspot.counters:reward:{}", reward.id),
            json!({"contact_id": referral.referrer_contact_id}),
        ));
    }
    let issued = s
        .store
        .issue_reward(reward.id, code.as_deref(), external_ref.as_deref(), &messages, &jobs)
        .await?;
    if !issued {
        return HandlerOutcome::done("reward changed state meanwhile (voided?)");
    }
    HandlerOutcome::done(format!("reward {} issued: {}", reward.id, given))
}

impl Services {
    fn queued_message(&self, key: String, purpose: &str, to: &E164, body: Value) -> crate::store::NewMessage {
        // A reward is an account update, but the policy is strict: no message at all to a
        // number that opted out (the reward is still issued and in HubSpot).
        self.message(key, purpose, to, true, body)
    }
}

/// Fulfils a reward: `(code, external reference)`.
async fn fulfil(
    s: &Services,
    reward: &crate::store::RewardRow,
    referral: &ReferralRow,
    beneficiary: Beneficiary,
    side: &RewardSide,
    job_id: i64,
) -> Result<(Option<String>, Option<String>), HandlerError> {
    let idempotency_key = format!("referloop-reward-{}", reward.id);
    match side.kind {
        RewardKind::None | RewardKind::HubspotCredit => Ok((None, None)),
        RewardKind::StaticCode => Ok((Some(side.static_code.clone()), None)),
        RewardKind::CodePool => {
            let code = s.store.assign_pool_code(reward.id).await?;
            let free = s.store.free_pool_codes().await?;
            if free < s.settings.rewards.pool_low_watermark {
                tracing::warn!(
                    free,
                    "reward code pool is running low: load more with `referloop rewards load-codes`"
                );
            }
            match code {
                Some(code) => Ok((Some(code), None)),
                None => {
                    s.metrics.reward_pool_exhausted();
                    Err(HandlerError::Permanent(
                        "reward code pool is exhausted: load codes with `referloop rewards load-codes FILE.csv`, then `referloop jobs retry`".into(),
                    ))
                }
            }
        }
        RewardKind::StripePromotionCode => {
            let code = reward::promotion_code(&referral.referral_code, referral.id, beneficiary);
            let metadata = [
                ("referral_id", referral.id.to_string()),
                ("beneficiary", beneficiary.as_str().to_string()),
            ];
            let created = s
                .stripe
                .create_promotion_code(
                    &side.stripe_coupon,
                    &code,
                    reward.stripe_customer.as_deref(),
                    &metadata,
                    &idempotency_key,
                    Some(job_id),
                )
                .await
                .map_err(stripe_error)?;
            let code = text(&created, "/code").map(str::to_string).unwrap_or(code);
            Ok((Some(code), text(&created, "/id").map(str::to_string)))
        }
        RewardKind::StripeBalanceCredit => {
            let Some(customer) = reward.stripe_customer.as_deref() else {
                return Err(HandlerError::Permanent(format!(
                    "no Stripe customer known for the {}: a balance credit needs one (a Stripe conversion carries it)",
                    beneficiary.as_str()
                )));
            };
            let txn = s
                .stripe
                .credit_balance(
                    customer,
                    side.amount,
                    &side.currency,
                    &side.description,
                    &idempotency_key,
                    Some(job_id),
                )
                .await
                .map_err(stripe_error)?;
            Ok((None, text(&txn, "/id").map(str::to_string)))
        }
        RewardKind::Webhook => {
            let secret = secret_value(&side.webhook_secret).unwrap_or_default();
            let body = json!({
                "type": "referral.reward",
                "data": {"reward_id": reward.id, "referral_id": referral.id, "beneficiary": beneficiary.as_str(),
                         "hubspot_contact_id": reward.contact_id, "phone": reward.phone, "amount": reward.amount,
                         "currency": reward.currency, "referral_code": referral.referral_code}
            })
            .to_string();
            let timestamp = now_ms() / 1000;
            let signature = signatures::sign_standard_webhook(secret, &idempotency_key, timestamp, body.as_bytes())
                .map_err(|e| HandlerError::Permanent(format!("rewards webhook_secret: {e}")))?;
            let request = crate::integrations::OutboundRequest {
                method: reqwest::Method::POST,
                url: side.webhook_url.clone(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("webhook-id".into(), idempotency_key.clone()),
                    ("webhook-timestamp".into(), timestamp.to_string()),
                    ("webhook-signature".into(), signature),
                ],
                body,
                job_id: Some(job_id),
            };
            match s.outbound.send(request).await {
                Ok(crate::integrations::OutboundResponse::Recorded { .. }) => Ok((None, Some(idempotency_key))),
                Ok(crate::integrations::OutboundResponse::Sent { status, .. }) if (200..300).contains(&status) => {
                    Ok((None, Some(idempotency_key)))
                }
                Ok(crate::integrations::OutboundResponse::Sent { status, .. }) => {
                    Err(HandlerError::retry(format!("fulfilment webhook answered {status}")))
                }
                Err(e) => Err(HandlerError::retry(format!("fulfilment webhook: {e}"))),
            }
        }
    }
}

/// Sets the referrer's counters from the ledger (never increments them). Another job may
/// have written an older reading after ours: re-read after writing until they agree.
pub async fn referrer_counters(s: &Services, contact_id: &str, job_id: i64) -> HandlerResult {
    let names = &s.settings.hubspot_properties;
    let mut written = None;
    for _ in 0..3 {
        let ledger = s.store.referrer_counters(contact_id).await?;
        if written == Some(ledger) {
            break;
        }
        let mut properties = Map::new();
        properties.insert(names.referrals_converted.clone(), json!(ledger.0.to_string()));
        properties.insert(names.referral_rewards_total.clone(), json!(ledger.1.to_string()));
        s.hubspot
            .update_contact(contact_id, &properties, Some(job_id))
            .await
            .map_err(hubspot_error)?;
        written = Some(ledger);
    }
    let (converted, total) = written.unwrap_or_default();
    HandlerOutcome::done(format!("contact {contact_id}: {converted} converted, {total} rewarded"))
}

/// Sets a contact's credit property to its issued `hubspot_credit` total (re-read after
/// writing, as for the counters).
pub async fn credit_total(s: &Services, contact_id: &str, property: &str, job_id: i64) -> HandlerResult {
    let mut written = None;
    for _ in 0..3 {
        let total = s.store.contact_credit_total(contact_id).await?;
        if written == Some(total) {
            break;
        }
        let mut properties = Map::new();
        properties.insert(property.to_string(), json!(total.to_string()));
        s.hubspot
            .update_contact(contact_id, &properties, Some(job_id))
            .await
            .map_err(hubspot_error)?;
        written = Some(total);
    }
    HandlerOutcome::done(format!("contact {contact_id}: credit {}", written.unwrap_or_default()))
}

/// Links referrer and friend in HubSpot ("Referred" / "Referred by") and notes the
/// conversion on both timelines. The association is idempotent; the note comes last.
pub async fn link_referral(s: &Services, referral_id: i64, job_id: i64) -> HandlerResult {
    let Some(referral) = s.store.referral(referral_id).await? else {
        return Err(HandlerError::Permanent(format!("referral {referral_id} not found")));
    };
    let Some(friend) = referral.friend_contact_id.clone() else {
        return Err(HandlerError::retry_after(
            "waiting for the friend's contact",
            Duration::from_secs(2),
        ));
    };
    let referrer = referral.referrer_contact_id.clone();
    let type_id = s
        .hubspot
        .referral_association_type("referrer_referred", "Referred", "Referred by", Some(job_id))
        .await
        .map_err(hubspot_error)?;
    s.hubspot
        .associate_contacts(&referrer, &friend, type_id, Some(job_id))
        .await
        .map_err(hubspot_error)?;
    let note = format!(
        "<p>Referral {}: {} (contact {friend}) converted with code {}, referred by contact {referrer}.</p>",
        referral.id,
        html_escape(&referral.friend_name),
        html_escape(&referral.referral_code)
    );
    s.hubspot
        .add_note(&[&referrer, &friend], &note, now_ms(), Some(job_id))
        .await
        .map_err(hubspot_error)?;
    HandlerOutcome::done(format!("contacts {referrer} and {friend} linked (type {type_id})"))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
