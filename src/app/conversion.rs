//! Step 5: a friend's purchase or signup, from a HubSpot workflow, a Stripe payment or
//! the API, is matched to a referral and converts it once.
//!
//! Attribution: a nominated referral that was not refused converts when a conversion
//! matches it within `programme.attribution_window_days`, whatever its delivery state.
//! Matching, in order: an explicit reference (Stripe `client_reference_id`
//! `referral:<id>` or `metadata.referral_id`, confirmed by the buyer's phone when known);
//! the friend's HubSpot contact; the code together with the friend's phone (a code is
//! shared by all of a referrer's friends); the code alone when one referral has it and
//! the buyer's phone is unknown; the friend's phone. A code used by a number nobody
//! nominated stays unattributed, unless `programme.attribute_code_only` creates the
//! referral at conversion time.

use serde_json::Value;

use super::transition::{self, EventContext};
use super::{Outcome, Services, StepError, StepResult, Work};
use crate::domain::code::normalise_code;
use crate::domain::economics::{Currency, Decimal6, Measure};
use crate::domain::ids::{HubSpotId, StripeId, StripeObject};
use crate::domain::inbox::hubspot_property;
use crate::domain::phone::E164;
use crate::domain::referral::{ReferralEvent, ReferralState};
use crate::domain::state::{ConversionOutcome, ConversionSource, MatchedBy, Persisted};
use crate::store::{
    Cohort, Committed, ConversionRow, EconomicsEntry, FriendKey, InviteRow, Lease, NewConversion, NewReferral, Tx,
};

/// How a conversion found its referral.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribution {
    Referral {
        id: i64,
        matched_by: MatchedBy,
    },
    /// A referrer's code from a number nobody nominated.
    CodeOnly {
        invite: Box<InviteRow>,
        code: String,
        buyer_phone: Option<E164>,
    },
    None,
}

/// A recorded conversion, whether this call recorded it, and whether this call converted
/// the referral.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionRecord {
    pub conversion: ConversionRow,
    pub created: bool,
    pub converted_now: bool,
    /// The transaction that recorded it.
    pub committed: Committed,
}

/// Finds the referral a conversion belongs to (see the module's attribution rule).
pub async fn attribute(
    s: &Services,
    contact_id: Option<&str>,
    phone: Option<&str>,
    code: Option<&str>,
) -> Result<Attribution, StepError> {
    let region = &s.settings.programme.default_region;
    let phone = phone.and_then(|p| E164::parse_mobile(p, region).ok());
    if let Some(contact) = contact_id {
        if let Some((id, _)) = s
            .store
            .referral_ids_by(FriendKey::HubSpotContact, contact)
            .await?
            .first()
        {
            return Ok(Attribution::Referral {
                id: *id,
                matched_by: MatchedBy::HubspotContact,
            });
        }
    }
    let code = code.map(normalise_code).filter(|c| !c.is_empty());
    if let Some(code) = &code {
        let candidates = s.store.referral_ids_by(FriendKey::ReferralCode, code).await?;
        if let Some(phone) = &phone {
            if let Some((id, _)) = candidates.iter().find(|(_, p)| p.as_ref() == Some(phone)) {
                return Ok(Attribution::Referral {
                    id: *id,
                    matched_by: MatchedBy::CodeAndPhone,
                });
            }
        }
        if let (None, [(id, _)]) = (&phone, candidates.as_slice()) {
            return Ok(Attribution::Referral {
                id: *id,
                matched_by: MatchedBy::Code,
            });
        }
    }
    if let Some(phone) = &phone {
        if let Some((id, _)) = s.store.referral_ids_by(FriendKey::Phone, phone.as_str()).await?.first() {
            return Ok(Attribution::Referral {
                id: *id,
                matched_by: MatchedBy::Phone,
            });
        }
    }
    if let Some(code) = code {
        if let Some(invite) = s.store.latest_invite_with_code(&code).await? {
            let own_number = phone.as_ref().is_some_and(|p| invite.phone.as_ref() == Some(p));
            if !own_number {
                return Ok(Attribution::CodeOnly {
                    invite: Box::new(invite),
                    code,
                    buyer_phone: phone,
                });
            }
        }
    }
    Ok(Attribution::None)
}

/// Records a conversion; when it converts its referral, the thanks, both rewards and the
/// HubSpot updates are written in the same transaction (and, from the worker, with the
/// completion of the event that reported it).
pub async fn convert(
    s: &Services,
    lease: Option<&Lease>,
    mut conversion: NewConversion,
    attribution: Attribution,
) -> Result<ConversionRecord, StepError> {
    if let Attribution::Referral { id, matched_by } = &attribution {
        conversion.referral_id = Some(*id);
        conversion.matched_by = Some(*matched_by);
    }
    let mut tx = s.store.begin(lease).await?;
    let (mut row, created) = tx.record_conversion_signal(&conversion).await?;
    if !created && row.outcome.is_final() {
        let committed = tx
            .commit(format!("conversion {} already {}", row.id, row.outcome.as_str()))
            .await?;
        return Ok(ConversionRecord {
            conversion: row,
            created,
            converted_now: false,
            committed,
        });
    }
    let referral_id = match (row.referral_id, attribution) {
        (Some(id), _) => Some(id),
        (
            None,
            Attribution::CodeOnly {
                invite,
                code,
                buyer_phone,
            },
        ) if s.settings.programme.attribute_code_only => {
            let new = code_only_referral(&invite, &code, buyer_phone.as_ref(), &conversion);
            let id = tx.insert_code_only_referral(&new).await?;
            tx.set_conversion_referral(row.id, id, MatchedBy::CodeOnly).await?;
            row.referral_id = Some(id);
            row.matched_by = Some(MatchedBy::CodeOnly);
            Some(id)
        }
        (None, _) => None,
    };
    let outcome = match referral_id {
        None => ConversionOutcome::Unattributed,
        Some(id) => match tx.referral_for_update(id).await? {
            None => ConversionOutcome::Unattributed,
            Some(r) if r.state == ReferralState::Converted => ConversionOutcome::AlreadyConverted,
            Some(r) if !r.state.is_convertible() => ConversionOutcome::NotConvertible,
            Some(r) if r.nominated_at < s.attribution_window_start() => ConversionOutcome::OutsideWindow,
            Some(r) => {
                let ctx = EventContext {
                    conversion: Some(&conversion),
                    ..EventContext::default()
                };
                transition::apply(s, &mut tx, r.id, &ReferralEvent::Converted, ctx).await?;
                if let Some(amount) = conversion.amount {
                    tally_revenue(s, &mut tx, r.id, &conversion, amount);
                }
                ConversionOutcome::Converted
            }
        },
    };
    tx.set_conversion_outcome(row.id, outcome).await?;
    row.outcome = outcome;
    let committed = tx
        .commit(format!("conversion {}: {}", row.id, outcome.as_str()))
        .await?;
    tracing::info!(
        source = conversion.source.as_str(),
        referral_id = ?row.referral_id,
        outcome = outcome.as_str(),
        new = created,
        "conversion recorded"
    );
    Ok(ConversionRecord {
        conversion: row,
        created,
        converted_now: outcome == ConversionOutcome::Converted,
        committed,
    })
}

/// Notes the converting purchase's amount (`amount` of its currency's minor unit) as the
/// referral's revenue. Only this first purchase is counted. An amount given without a
/// currency is taken to be in the reporting currency (`pricing.currency`).
fn tally_revenue(s: &Services, tx: &mut Tx, referral_id: i64, conversion: &NewConversion, amount: i64) {
    let currency = conversion
        .currency
        .as_deref()
        .and_then(Currency::parse)
        .unwrap_or_else(|| s.settings.pricing.currency.clone());
    tx.tally_economics(
        Cohort::Referral(referral_id),
        EconomicsEntry {
            measure: Measure::Revenue,
            detail: conversion.source.as_str().to_string(),
            currency: currency.as_str().to_string(),
            micros: currency.micros_from_minor(amount),
        },
    );
}

fn code_only_referral(invite: &InviteRow, code: &str, buyer: Option<&E164>, conversion: &NewConversion) -> NewReferral {
    NewReferral {
        invite_id: invite.id,
        // Unique like a Flow token: one referral per conversion signal.
        flow_token: format!("code_only:{}:{}", conversion.source.as_str(), conversion.external_id),
        referrer_contact_id: invite.contact_id.clone(),
        referrer_phone: invite.phone.clone(),
        referrer_name: invite.first_name.clone(),
        referral_code: code.to_string(),
        friend_phone: buyer.cloned(),
        friend_name: String::new(),
        personal_message: None,
        consent: false,
        language: invite.language.clone(),
    }
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// `POST /webhooks/hubspot?trigger=conversion` from a contact (lifecycle stage customer)
/// or a deal (closed won) workflow.
pub async fn on_hubspot_conversion(s: &Services, work: &Work, payload: &Value) -> StepResult {
    let Some(record) = payload.get("record").and_then(Value::as_object) else {
        return Err(StepError::Permanent("conversion without a record".into()));
    };
    let object_id = text(payload, "/object_id").unwrap_or_default().to_string();
    let object_type = text(payload, "/object_type").unwrap_or("contact");
    let names = &s.settings.hubspot_properties;
    let (contacts, external_id) = if object_type == "deal" {
        if hubspot_property(record, "hs_is_closed_won").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            return Outcome::done("deal is not closed won");
        }
        let deal = HubSpotId::parse(&object_id)?;
        let contacts = s.hubspot.deal_contacts(&deal, None).await?;
        let contacts = contacts.iter().map(|c| c.as_str().to_string()).collect();
        (contacts, format!("deal:{object_id}"))
    } else {
        let stage = hubspot_property(record, &names.lifecycle_stage);
        if stage
            .as_deref()
            .is_some_and(|st| st != s.settings.programme.customer_lifecycle_stage)
        {
            return Outcome::done(format!("lifecycle stage {stage:?} is not a conversion"));
        }
        (vec![object_id.clone()], format!("contact:{object_id}"))
    };
    let phone = names.phone.iter().find_map(|p| hubspot_property(record, p));
    let code = hubspot_property(record, &names.referred_by_code);
    let mut attribution = Attribution::None;
    for contact in &contacts {
        attribution = attribute(s, Some(contact), phone.as_deref(), code.as_deref()).await?;
        if matches!(attribution, Attribution::Referral { .. }) {
            break;
        }
    }
    if contacts.is_empty() {
        attribution = attribute(s, None, phone.as_deref(), code.as_deref()).await?;
    }
    // HubSpot writes the deal's amount in major units ("1250.50"); we keep minor units.
    let deal_currency = hubspot_property(record, "deal_currency_code");
    let amount = hubspot_property(record, "amount")
        .and_then(|a| Decimal6::parse(&a))
        .map(|a| {
            deal_currency
                .as_deref()
                .and_then(Currency::parse)
                .unwrap_or_else(|| s.settings.pricing.currency.clone())
                .minor_from_micros(a.micros())
        });
    let conversion = NewConversion {
        source: ConversionSource::Hubspot,
        external_id,
        referral_id: None,
        matched_by: None,
        amount,
        currency: deal_currency,
        payment_ref: None,
        stripe_customer: None,
    };
    let record = convert(s, Some(&work.lease), conversion, attribution).await?;
    Ok(record.committed.into())
}

/// The Stripe events referloop acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripeEventKind {
    CheckoutCompleted,
    AsyncPaymentSucceeded,
    InvoicePaid,
    ChargeRefunded,
}

impl StripeEventKind {
    /// From Stripe's event `type`; `None` for events referloop only records.
    pub fn parse(event_type: &str) -> Option<StripeEventKind> {
        match event_type {
            "checkout.session.completed" => Some(StripeEventKind::CheckoutCompleted),
            "checkout.session.async_payment_succeeded" => Some(StripeEventKind::AsyncPaymentSucceeded),
            "invoice.paid" => Some(StripeEventKind::InvoicePaid),
            "charge.refunded" => Some(StripeEventKind::ChargeRefunded),
            _ => None,
        }
    }
}

pub async fn on_stripe_event(s: &Services, work: &Work, kind: StripeEventKind, event: &Value) -> StepResult {
    let Some(object) = event.pointer("/data/object") else {
        return Err(StepError::Permanent("event without data.object".into()));
    };
    match kind {
        StripeEventKind::CheckoutCompleted | StripeEventKind::AsyncPaymentSucceeded => {
            let paid = matches!(text(object, "/payment_status"), Some("paid" | "no_payment_required"));
            if !paid {
                return Outcome::done("session not paid yet (async payment)");
            }
            let session_id = text(object, "/id").unwrap_or_default();
            let mut code = text(object, "/metadata/referral_code").map(str::to_string);
            if code.is_none() {
                code = session_promotion_code(s, object, session_id).await?;
            }
            let paid = StripePayment::new(
                format!("checkout:{session_id}"),
                code,
                "/amount_total",
                "/customer_details/phone",
            );
            stripe_conversion(s, work, object, paid).await
        }
        StripeEventKind::InvoicePaid => {
            let invoice_id = text(object, "/id").unwrap_or_default();
            let code = text(object, "/metadata/referral_code")
                .or_else(|| text(object, "/parent/subscription_details/metadata/referral_code"))
                .map(str::to_string);
            let paid = StripePayment::new(format!("invoice:{invoice_id}"), code, "/amount_paid", "/customer_phone");
            stripe_conversion(s, work, object, paid).await
        }
        StripeEventKind::ChargeRefunded => {
            let Some(payment) = text(object, "/payment_intent").or_else(|| text(object, "/id")) else {
                return Outcome::done("refund without a payment reference");
            };
            let Some(referral_id) = s.store.referral_for_payment(payment).await? else {
                return Outcome::done("refund of a payment that converted no referral");
            };
            let mut tx = s.store.begin(Some(&work.lease)).await?;
            let voided = tx.void_rewards(referral_id, s.cap_period_start()).await?;
            let mut note = format!("refund: {voided} pending reward(s) of referral {referral_id} voided");
            // A full refund takes the purchase's revenue back (a partial one does not).
            if object.pointer("/refunded").and_then(Value::as_bool) == Some(true)
                && tx.refund_conversion(referral_id, &s.settings.pricing.currency).await?
            {
                note.push_str("; its revenue taken back");
            }
            Ok(tx.commit(note).await?.into())
        }
    }
}

/// A code typed at checkout is not always in the completed event: read it from the
/// session's expanded discount breakdown.
async fn session_promotion_code(s: &Services, object: &Value, session_id: &str) -> Result<Option<String>, StepError> {
    let has_discounts = object
        .get("discounts")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty());
    let amount_discount = object
        .pointer("/total_details/amount_discount")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !has_discounts && amount_discount == 0 {
        return Ok(None);
    }
    let session_id = StripeId::parse(session_id, StripeObject::CheckoutSession)?;
    let session = s.stripe.checkout_session_discounts(&session_id, None).await?;
    let promotion = session
        .pointer("/total_details/breakdown/discounts")
        .and_then(Value::as_array)
        .and_then(|d| d.iter().find_map(|d| d.pointer("/discount/promotion_code").cloned()));
    match promotion {
        Some(Value::Object(p)) => Ok(p.get("code").and_then(Value::as_str).map(str::to_string)),
        Some(Value::String(id)) => {
            let id = StripeId::parse(&id, StripeObject::PromotionCode)?;
            let code = s.stripe.promotion_code(&id, None).await?;
            Ok(text(&code, "/code").map(str::to_string))
        }
        _ => Ok(None),
    }
}

/// Where a paid Stripe object keeps what a conversion needs.
struct StripePayment {
    external_id: String,
    code: Option<String>,
    amount_field: &'static str,
    phone_field: &'static str,
}

impl StripePayment {
    fn new(external_id: String, code: Option<String>, amount_field: &'static str, phone_field: &'static str) -> Self {
        StripePayment {
            external_id,
            code,
            amount_field,
            phone_field,
        }
    }
}

async fn stripe_conversion(s: &Services, work: &Work, object: &Value, paid: StripePayment) -> StepResult {
    // Merchants put their own ids in client_reference_id: only ours (`referral:<id>`)
    // names a referral; metadata.referral_id is explicit.
    let by_reference = text(object, "/client_reference_id")
        .and_then(|r| r.strip_prefix("referral:"))
        .or_else(|| text(object, "/metadata/referral_id"))
        .and_then(|r| r.trim().parse::<i64>().ok());
    // A reference can be set by the buyer (Payment Links take it from the URL): when the
    // customer's phone is known it must be the friend's, else the reference is ignored.
    let region = &s.settings.programme.default_region;
    let buyer_phone = text(object, paid.phone_field).and_then(|p| E164::parse_mobile(p, region).ok());
    let referenced = match by_reference {
        Some(id) => s.store.referral(id).await?,
        None => None,
    };
    let attribution = match referenced {
        Some(r) if buyer_phone.as_ref().is_none_or(|p| r.friend_phone.as_ref() == Some(p)) => Attribution::Referral {
            id: r.id,
            matched_by: MatchedBy::ClientReferenceId,
        },
        _ => attribute(s, None, text(object, paid.phone_field), paid.code.as_deref()).await?,
    };
    // The Stripe customer becomes the friend's (promotion codes are restricted to it,
    // credits go to it) only when the buyer's phone confirms the friend.
    let confirmed = buyer_phone.is_some() && matches!(attribution, Attribution::Referral { .. });
    let conversion = NewConversion {
        source: ConversionSource::Stripe,
        external_id: paid.external_id,
        referral_id: None,
        matched_by: None,
        amount: object.pointer(paid.amount_field).and_then(Value::as_i64),
        currency: text(object, "/currency").map(str::to_string),
        payment_ref: text(object, "/payment_intent").map(str::to_string),
        stripe_customer: text(object, "/customer").filter(|_| confirmed).map(str::to_string),
    };
    let record = convert(s, Some(&work.lease), conversion, attribution).await?;
    Ok(record.committed.into())
}
