//! The referral lifecycle: trigger → invite → Flow → nomination → the friend's invitation,
//! plus message statuses and opt-outs. Handlers read the store, apply the pure rules in
//! `domain`, and queue messages and HubSpot updates as jobs, each under a key derived from
//! the referral and the step so that re-running a handler queues nothing new.

use serde_json::{json, Map, Value};

use super::{HandlerError, HandlerOutcome, HandlerResult, Services};
use crate::domain::code::codes_in_text;
use crate::domain::eligibility::{self, EligibilityRules, NpsAnswer, TriggerFacts, TriggerKind};
use crate::domain::flow_token::FlowToken;
use crate::domain::inbound::hubspot_property;
use crate::domain::messaging::{classify, first_name, is_stop_keyword, pick_language, MessageStatus, SendErrorClass};
use crate::domain::nomination::{self, parse_flow_reply, NominationRefusal};
use crate::domain::phone::E164;
use crate::domain::referral::{self, friend_hubspot_status, Effect, ReferralEvent, ReferralState};
use crate::integrations::whatsapp::bodies;
use crate::store::{
    now_ms, ClaimedItem, NewInvite, NewMessage, NewReferral, OptOutChange, ReferralInsert, ReferralRow, SideJob,
};
use crate::telemetry::mask_phone;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// Meta allows one message per 6 seconds to the same user.
const PAIR_SPACING_MS: i64 = 6_000;

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------
// Queuing helpers

impl Services {
    /// A message to queue. Its callback data is set to its key, so that a status for a
    /// send we failed to record can still be matched to it.
    pub(super) fn message(&self, key: String, purpose: &str, to: &E164, marketing: bool, body: Value) -> NewMessage {
        let mut body = body;
        body["biz_opaque_callback_data"] = json!(key);
        NewMessage {
            idempotency_key: key,
            purpose: purpose.into(),
            to_phone: to.as_str().into(),
            invite_id: None,
            referral_id: None,
            marketing,
            body: body.to_string(),
            run_at: now_ms(),
            max_attempts: self.max_attempts(),
        }
    }

    fn contact_update(&self, key: String, contact_id: &str, properties: Map<String, Value>) -> SideJob {
        SideJob {
            kind: "hubspot.update_contact".into(),
            payload: json!({"contact_id": contact_id, "properties": properties}).to_string(),
            idempotency_key: key,
            max_attempts: self.max_attempts(),
            run_at: now_ms(),
        }
    }

    fn referrer_status(&self, invite_id: i64, contact_id: &str, status: &str) -> SideJob {
        let mut properties = Map::new();
        properties.insert(self.settings.hubspot_properties.referral_status.clone(), json!(status));
        self.contact_update(format!("hubspot.referrer:{invite_id}:{status}"), contact_id, properties)
    }

    fn side_job(&self, kind: &str, key: String, payload: Value) -> SideJob {
        SideJob {
            kind: kind.into(),
            payload: payload.to_string(),
            idempotency_key: key,
            max_attempts: self.max_attempts(),
            run_at: now_ms(),
        }
    }

    fn new_flow_token(&self, invite_id: i64, seed: &str) -> String {
        let nonce: String = seed
            .bytes()
            .filter(u8::is_ascii_alphanumeric)
            .rev()
            .take(16)
            .map(char::from)
            .collect();
        let nonce = if nonce.is_empty() { "n".to_string() } else { nonce };
        FlowToken { invite_id, nonce }.sign(&self.flow_token_secret)
    }
}

// ---------------------------------------------------------------------------------------
// 1–3. Trigger, eligibility, invite

pub async fn on_trigger(s: &Services, inbox_id: i64, payload: &Value) -> HandlerResult {
    let settings = &s.settings;
    let props = &settings.hubspot_properties;
    let Some(record) = payload.get("record").and_then(Value::as_object) else {
        return Err(HandlerError::Permanent("trigger without a record".into()));
    };
    if text(payload, "/object_type") != Some("contact") {
        return HandlerOutcome::done("triggers must come from contact-based workflows");
    }
    let contact_id = text(payload, "/object_id").unwrap_or_default().to_string();
    let kind = match text(payload, "/trigger") {
        Some("nps") => TriggerKind::Nps,
        _ => TriggerKind::Milestone(text(payload, "/name").map(str::to_string)),
    };
    let raw_phone = props
        .phone
        .iter()
        .find_map(|p| hubspot_property(record, p))
        .unwrap_or_default();
    let first = hubspot_property(record, &props.first_name).unwrap_or_default();
    let language = pick_language(
        hubspot_property(record, &props.language).as_deref(),
        &settings.templates.languages,
        &settings.templates.default_language,
    );
    let score: Option<NpsAnswer> = hubspot_property(record, &settings.programme.nps_property)
        .or_else(|| hubspot_property(record, "score"))
        .and_then(|raw| eligibility::parse_nps(&raw));
    let phone = E164::parse_mobile(&raw_phone, &settings.programme.default_region);
    let opted_out = match &phone {
        Ok(p) => s.store.is_opted_out(p.as_str()).await?,
        Err(_) => false,
    };
    let (invites_so_far, last_invite) = s.store.invite_history(&contact_id).await?;
    let facts = TriggerFacts {
        kind: kind.clone(),
        score,
        phone: phone.clone(),
        opted_out,
        since_last_invite_ms: last_invite.map(|t| now_ms() - t),
        invites_so_far,
    };
    let rules = EligibilityRules {
        promoter_min_score: settings.programme.promoter_min_score,
        invite_cooldown_days: settings.programme.invite_cooldown_days,
        max_invites_per_contact: settings.programme.max_invites_per_contact,
    };
    let trigger_name = match &kind {
        TriggerKind::Nps => "nps".to_string(),
        TriggerKind::Milestone(Some(name)) => format!("milestone:{name}"),
        TriggerKind::Milestone(None) => "milestone".to_string(),
    };
    let mut invite = NewInvite {
        trigger_key: format!("inbox:{inbox_id}"),
        contact_id: contact_id.clone(),
        trigger: trigger_name,
        phone: phone.as_ref().ok().map(|p| p.as_str().to_string()),
        first_name: first.clone(),
        language: language.clone(),
        referral_code: None,
        state: "invited".into(),
        reason: None,
    };
    // A re-run of this trigger (after a crash or a failed queue) must not count its own
    // invite against the cooldown: it resumes where it stopped.
    let earlier = s.store.invite_by_trigger_key(&invite.trigger_key).await?;
    let checked = match &earlier {
        Some(done) if done.state == "ineligible" => return HandlerOutcome::done("already recorded as ineligible"),
        Some(_) => phone.map_err(eligibility::Ineligible::NoValidPhone),
        None => eligibility::check(&rules, &facts),
    };
    let phone = match checked {
        Ok(phone) => phone,
        Err(ineligible) => {
            invite.state = "ineligible".into();
            invite.reason = Some(ineligible.reason());
            s.store.insert_invite(&invite).await?;
            tracing::info!(contact_id, reason = %ineligible.reason(), "trigger not eligible");
            return HandlerOutcome::done(format!("ineligible: {}", ineligible.reason()));
        }
    };

    let code = s
        .store
        .customer_code(&contact_id, &first, || {
            s.code_pattern
                .generate(&first, |n| rand::random::<u32>() as usize % n.max(1))
        })
        .await?;
    invite.referral_code = Some(code.clone());
    let invite = match earlier {
        // Resuming this trigger: its invite already passed the gate.
        Some(earlier) => earlier,
        None => {
            let cooldown_start = now_ms() - settings.programme.invite_cooldown_days * DAY_MS;
            let max = settings.programme.max_invites_per_contact;
            match s.store.claim_invite(&invite, cooldown_start, max).await? {
                Some(claimed) => claimed,
                None => {
                    // Another trigger for this contact was invited at the same instant.
                    invite.state = "ineligible".into();
                    invite.reason = Some("cooldown: concurrent invite".into());
                    s.store.insert_invite(&invite).await?;
                    return HandlerOutcome::done("ineligible: cooldown: concurrent invite");
                }
            }
        }
    };

    let t = &settings.templates;
    let params = |order: &[crate::config::TemplateParameter]| -> Vec<String> {
        order
            .iter()
            .map(|p| match p {
                crate::config::TemplateParameter::Code => code.clone(),
                _ => {
                    if first.is_empty() {
                        "there".to_string()
                    } else {
                        first_name(&first)
                    }
                }
            })
            .collect()
    };
    let invite_body = bodies::template(bodies::Template {
        to: phone.as_str(),
        name: &t.invite,
        language: &language,
        body_params: params(&t.invite_body),
        copy_code: Some((t.invite_copy_code_button, &code)),
        quick_replies: vec![
            (t.invite_refer_button, format!("refer:{}", invite.id)),
            (t.invite_stop_button, "stop".into()),
        ],
        flow_button: None,
        callback: &format!("invite:{}", invite.id),
    });
    let mut messages = vec![NewMessage {
        invite_id: Some(invite.id),
        ..s.message(format!("invite:{}", invite.id), "invite", &phone, true, invite_body)
    }];
    if settings.programme.send_flow_with_invite {
        let token = s.new_flow_token(invite.id, &format!("tmpl{}", invite.id));
        let flow_body = bodies::template(bodies::Template {
            to: phone.as_str(),
            name: &t.flow,
            language: &language,
            body_params: params(&t.flow_body),
            copy_code: None,
            quick_replies: vec![],
            flow_button: Some((t.flow_button, &token)),
            callback: &format!("flow:{}", invite.id),
        });
        messages.push(NewMessage {
            invite_id: Some(invite.id),
            run_at: now_ms() + PAIR_SPACING_MS,
            ..s.message(format!("flow:{}:template", invite.id), "flow", &phone, true, flow_body)
        });
    }
    let mut properties = Map::new();
    properties.insert(settings.hubspot_properties.referral_code.clone(), json!(code));
    properties.insert(settings.hubspot_properties.referral_status.clone(), json!("invited"));
    let hubspot = s.contact_update(
        format!("hubspot.referrer:{}:invited", invite.id),
        &contact_id,
        properties,
    );
    s.store.queue(&messages, &[hubspot]).await?;
    tracing::info!(contact_id, phone = %mask_phone(phone.as_str()), invite_id = invite.id, "invite queued");
    HandlerOutcome::done(format!("invite {} queued with code {code}", invite.id))
}

// ---------------------------------------------------------------------------------------
// Inbound messages: button taps, Flow replies, stop keywords, friends arriving

pub async fn on_message(s: &Services, item: &ClaimedItem, payload: &Value) -> HandlerResult {
    let Some(message) = payload.get("message") else {
        return Err(HandlerError::Permanent("message event without a message".into()));
    };
    let Some(from) = text(message, "/from").and_then(|f| E164::from_wa_id(f).ok()) else {
        return HandlerOutcome::done("sender is not a valid mobile number");
    };
    let wamid = text(message, "/id").unwrap_or_default().to_string();
    let sent_at = text(message, "/timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .map(|t| t * 1000)
        .unwrap_or_else(now_ms);
    s.store.record_inbound(from.as_str(), sent_at).await?;
    let business_number = text(payload, "/metadata/display_phone_number")
        .unwrap_or_default()
        .to_string();

    let kind = text(message, "/type").unwrap_or_default();
    match kind {
        "button" => {
            let payload_text = text(message, "/button/payload")
                .or_else(|| text(message, "/button/text"))
                .unwrap_or_default();
            on_button(s, &from, &wamid, payload_text).await
        }
        "interactive" => match text(message, "/interactive/type") {
            Some("button_reply") => {
                let id = text(message, "/interactive/button_reply/id").unwrap_or_default();
                on_button(s, &from, &wamid, id).await
            }
            Some("nfm_reply") => on_flow_reply(s, item, &from, &wamid, message, &business_number).await,
            other => HandlerOutcome::done(format!("interactive {other:?} not handled")),
        },
        "text" => {
            let body = text(message, "/text/body").unwrap_or_default();
            if is_stop_keyword(body, &s.settings.programme.stop_keywords) {
                return opt_out(s, &from, "keyword", true).await;
            }
            on_friend_text(s, &from, body).await
        }
        other => HandlerOutcome::done(format!("inbound {other} message not handled")),
    }
}

async fn on_button(s: &Services, from: &E164, wamid: &str, payload: &str) -> HandlerResult {
    if s.settings
        .programme
        .stop_button_payloads
        .iter()
        .any(|p| p.eq_ignore_ascii_case(payload.trim()))
    {
        return opt_out(s, from, "button", false).await;
    }
    let Some(invite_id) = payload.strip_prefix("refer:").and_then(|id| id.parse::<i64>().ok()) else {
        return HandlerOutcome::done(format!("button payload {payload:?} not ours"));
    };
    let Some(invite) = s.store.invite(invite_id).await? else {
        return HandlerOutcome::done("refer button for an unknown invite");
    };
    if invite.phone.as_deref() != Some(from.as_str()) {
        return HandlerOutcome::done("refer button from a number that was not invited");
    }
    if s.store.is_opted_out(from.as_str()).await? {
        return HandlerOutcome::done("referrer opted out; no Flow sent");
    }
    let t = &s.settings.templates;
    let token = s.new_flow_token(invite_id, wamid);
    let greeting = if invite.first_name.is_empty() {
        String::new()
    } else {
        format!(", {}", first_name(&invite.first_name))
    };
    let body_text = format!("Thanks{greeting}! Tell us who you'd like to invite and we'll send them your code.");
    let body = bodies::interactive_flow(bodies::InteractiveFlow {
        to: from.as_str(),
        body_text: &body_text,
        flow_id: &t.flow_id,
        flow_name: &t.flow_name,
        cta: &t.flow_cta,
        screen: &t.flow_screen,
        flow_token: &token,
        callback: &format!("flow:{invite_id}"),
    });
    // One Flow per tap: a redelivered tap has the same wamid, hence the same key.
    let message = NewMessage {
        invite_id: Some(invite_id),
        ..s.message(format!("flow:{invite_id}:{wamid}"), "flow", from, true, body)
    };
    s.store
        .queue(
            &[message],
            &[s.referrer_status(invite_id, &invite.contact_id, "flow_sent")],
        )
        .await?;
    s.store.advance_invite(invite_id, "flow_sent").await?;
    HandlerOutcome::done(format!("flow sent for invite {invite_id}"))
}

/// The flow_token of the Flow message a reply answers (for clients that omit the token).
async fn token_from_context(s: &Services, message: &Value) -> Result<Option<String>, HandlerError> {
    let Some(context_id) = text(message, "/context/id") else {
        return Ok(None);
    };
    let Some(sent) = s.store.message_by_wamid(context_id).await? else {
        return Ok(None);
    };
    if sent.purpose != "flow" {
        return Ok(None);
    }
    let body: Value = serde_json::from_str(&sent.body).unwrap_or(Value::Null);
    let token = text(&body, "/interactive/action/parameters/flow_token")
        .or_else(|| text(&body, "/template/components/0/parameters/0/action/flow_token"))
        .or_else(|| {
            body.pointer("/template/components")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find_map(|c| text(c, "/parameters/0/action/flow_token")))
        });
    Ok(token.map(str::to_string))
}

async fn reply_in_window(s: &Services, to: &E164, key: String, body_text: &str) -> Result<(), HandlerError> {
    let body = bodies::text(to.as_str(), body_text, &key);
    s.store.queue(&[s.message(key, "reply", to, false, body)], &[]).await?;
    Ok(())
}

async fn on_flow_reply(
    s: &Services,
    item: &ClaimedItem,
    from: &E164,
    wamid: &str,
    message: &Value,
    business_number: &str,
) -> HandlerResult {
    let Some(reply) = text(message, "/interactive/nfm_reply/response_json").and_then(parse_flow_reply) else {
        return HandlerOutcome::done("flow reply without a readable response_json");
    };
    let token = match reply.flow_token.clone() {
        Some(token) => Some(token),
        None => token_from_context(s, message).await?,
    };
    let friend_name = reply.friend_name.clone();
    let refuse = |refusal: NominationRefusal| {
        let friend_name = friend_name.clone();
        async move {
            let key = format!("refusal:{wamid}");
            reply_in_window(s, from, key, &refusal.reply_text(&friend_name)).await?;
            tracing::info!(reason = refusal.reason(), "nomination refused");
            HandlerOutcome::done(format!("nomination refused: {}", refusal.reason()))
        }
    };
    let verified = token.as_deref().map(|t| FlowToken::verify(t, &s.flow_token_secret));
    let (Some(token), Some(Ok(verified))) = (token.clone(), verified) else {
        return refuse(NominationRefusal::InvalidToken).await;
    };
    let Some(invite) = s.store.invite(verified.invite_id).await? else {
        return refuse(NominationRefusal::InvalidToken).await;
    };
    if invite.phone.as_deref() != Some(from.as_str()) {
        return refuse(NominationRefusal::InvalidToken).await;
    }
    let nomination = match nomination::validate(&reply, from, &s.settings.programme.default_region) {
        Ok(n) => n,
        Err(refusal) => return refuse(refusal).await,
    };
    let existing_open = s.store.count_open_referrals(&invite.contact_id).await?;
    if existing_open >= s.settings.programme.max_open_referrals {
        return refuse(NominationRefusal::TooManyOpenReferrals).await;
    }
    let window_start = now_ms() - s.settings.programme.attribution_window_days * DAY_MS;
    let new = NewReferral {
        invite_id: invite.id,
        flow_token: token,
        referrer_contact_id: invite.contact_id.clone(),
        referrer_phone: from.as_str().into(),
        referrer_name: invite.first_name.clone(),
        referral_code: invite.referral_code.clone().unwrap_or_default(),
        friend_phone: nomination.friend_phone.as_str().into(),
        friend_name: nomination.friend_name.clone(),
        personal_message: nomination.personal_message.clone(),
        consent: nomination.consent,
        language: invite.language.clone(),
    };
    match s.store.insert_referral(&new, window_start).await? {
        ReferralInsert::Created(id) => {
            let screen = s.side_job(
                "referral.screen",
                format!("referral.screen:{id}"),
                json!({"referral_id": id, "business_number": business_number}),
            );
            let status = s.referrer_status(invite.id, &invite.contact_id, "nominated");
            s.store.queue(&[], &[screen, status]).await?;
            s.store.advance_invite(invite.id, "nominated").await?;
            tracing::info!(referral_id = id, friend = %mask_phone(new.friend_phone.as_str()), inbox_id = item.id, "friend nominated");
            HandlerOutcome::done(format!("referral {id} nominated"))
        }
        ReferralInsert::TokenAlreadyUsed(id) => {
            HandlerOutcome::done(format!("flow token already used by referral {id}"))
        }
        ReferralInsert::FriendTaken(id) => {
            let key = format!("referral:{id}:refusal");
            reply_in_window(
                s,
                from,
                key,
                &NominationRefusal::AlreadyReferred.reply_text(&nomination.friend_name),
            )
            .await?;
            HandlerOutcome::done(format!("referral {id} refused: already_referred"))
        }
    }
}

/// A text from someone who may be a friend arriving through a share link.
async fn on_friend_text(s: &Services, from: &E164, body: &str) -> HandlerResult {
    let codes = codes_in_text(body);
    let Some(referral) = s.store.referral_awaiting_friend(from.as_str(), &codes).await? else {
        return HandlerOutcome::done("text not matched to a referral");
    };
    // Matched by code from another number: the friend uses this one.
    let event = ReferralEvent::FriendArrived;
    let moved = apply_event(s, &referral, &event, Some(from), "").await?;
    HandlerOutcome::done(format!("friend arrived for referral {} ({moved})", referral.id))
}

// ---------------------------------------------------------------------------------------
// 5–6. Screening and the friend's invitation (through the referral state machine)

/// Checks that need HubSpot (is the friend already a customer?) and the store (did the
/// friend opt out?), then lets the state machine choose how to reach the friend.
pub async fn screen(s: &Services, referral_id: i64, business_number: &str, job_id: i64) -> HandlerResult {
    let Some(referral) = s.store.referral(referral_id).await? else {
        return Err(HandlerError::Permanent(format!("referral {referral_id} not found")));
    };
    if referral.state != ReferralState::Nominated.as_str() {
        return HandlerOutcome::done(format!("already screened ({})", referral.state));
    }
    let friend = E164::parse_mobile(&referral.friend_phone, "ZZ")
        .map_err(|_| HandlerError::Permanent("stored friend phone is invalid".into()))?;
    let refusal = if s.store.is_opted_out(friend.as_str()).await? {
        Some(NominationRefusal::FriendOptedOut)
    } else {
        let stage_property = s.settings.hubspot_properties.lifecycle_stage.as_str();
        let customers = s
            .hubspot
            .search_by_phone(
                &friend,
                &[stage_property],
                &s.settings.programme.default_region,
                Some(job_id),
            )
            .await
            .map_err(super::outbox::hubspot_error)?;
        let stage = &s.settings.programme.customer_lifecycle_stage;
        customers
            .iter()
            .any(|c| c.property(stage_property) == Some(stage.as_str()))
            .then_some(NominationRefusal::AlreadyCustomer)
    };
    let outcome = apply_event(
        s,
        &referral,
        &ReferralEvent::Screened { refusal },
        None,
        business_number,
    )
    .await?;
    HandlerOutcome::done(outcome)
}

/// Applies an event to a referral and queues what the transition asks for, atomically.
/// Returns a description for the item's note.
pub async fn apply_event(
    s: &Services,
    referral: &ReferralRow,
    event: &ReferralEvent,
    arrived_from: Option<&E164>,
    business_number: &str,
) -> Result<String, HandlerError> {
    let mut current = referral.clone();
    for _ in 0..3 {
        let Some(state) = ReferralState::parse(&current.state) else {
            return Err(HandlerError::Permanent(format!(
                "unknown referral state {}",
                current.state
            )));
        };
        let transition = referral::apply(state, s.settings.programme.friend_invite, current.consent == 1, event);
        if transition.state == state && transition.effects.is_empty() {
            return Ok(format!("{event:?} changes nothing in {}", state.as_str()));
        }
        let mut messages = Vec::new();
        let mut reason = None;
        for effect in &transition.effects {
            if let Effect::SendRefusal(refusal) = effect {
                reason = Some(refusal.reason());
            }
            messages.extend(effect_message(s, &current, effect, arrived_from, business_number)?);
        }
        let mut jobs = Vec::new();
        if friend_hubspot_status(transition.state).is_some() {
            // One job creates (or finds) the friend's contact; the status updates wait for it.
            jobs.push(s.side_job(
                "hubspot.create_friend",
                format!("hubspot.friend_create:{}", current.id),
                json!({"referral_id": current.id}),
            ));
            jobs.push(s.side_job(
                "hubspot.sync_friend",
                format!("hubspot.friend:{}:{}", current.id, transition.state.as_str()),
                json!({"referral_id": current.id}),
            ));
        }
        let moved = s
            .store
            .transition_referral(
                current.id,
                state.as_str(),
                transition.state.as_str(),
                reason,
                &messages,
                &jobs,
            )
            .await?;
        if moved {
            tracing::info!(
                referral_id = current.id,
                from = state.as_str(),
                to = transition.state.as_str(),
                "referral moved"
            );
            return Ok(format!(
                "referral {} {} -> {}",
                current.id,
                state.as_str(),
                transition.state.as_str()
            ));
        }
        // Another worker moved it first: re-read and re-apply.
        current = s
            .store
            .referral(current.id)
            .await?
            .ok_or_else(|| HandlerError::retry("referral vanished"))?;
    }
    Err(HandlerError::retry("referral kept changing under us"))
}

fn share_text(code: &str) -> String {
    format!("Hi! I'd like to join. My referral code is {code}")
}

pub(super) fn effect_message(
    s: &Services,
    r: &ReferralRow,
    effect: &Effect,
    arrived_from: Option<&E164>,
    business_number: &str,
) -> Result<Option<NewMessage>, HandlerError> {
    let invalid = |what: &str| HandlerError::Permanent(format!("stored {what} phone is invalid"));
    let referrer = E164::parse_mobile(&r.referrer_phone, "ZZ").map_err(|_| invalid("referrer"))?;
    let friend = match arrived_from {
        Some(phone) => phone.clone(),
        None => E164::parse_mobile(&r.friend_phone, "ZZ").map_err(|_| invalid("friend"))?,
    };
    let key = format!("referral:{}:{}", r.id, effect.key());
    let callback = format!("referral:{}:{}", r.id, effect.key());
    let friend_first = first_name(&r.friend_name);
    let referrer_first = if r.referrer_name.is_empty() {
        "A friend".to_string()
    } else {
        first_name(&r.referrer_name)
    };
    let personal = r
        .personal_message
        .as_deref()
        .map(nomination::single_line)
        .unwrap_or_else(|| s.settings.programme.default_personal_message.clone());
    let (to, marketing, body) = match effect {
        Effect::SendFriendInvite => {
            let t = &s.settings.templates;
            let params =
                t.friend_invite_body
                    .iter()
                    .map(|p| match p {
                        crate::config::TemplateParameter::FriendName => friend_first.clone(),
                        crate::config::TemplateParameter::ReferrerName
                        | crate::config::TemplateParameter::FirstName => referrer_first.clone(),
                        crate::config::TemplateParameter::Code | crate::config::TemplateParameter::Reward => {
                            r.referral_code.clone()
                        }
                        crate::config::TemplateParameter::PersonalMessage => personal.clone(),
                    })
                    .collect();
            let body = bodies::template(bodies::Template {
                to: friend.as_str(),
                name: &t.friend_invite,
                language: &r.language,
                body_params: params,
                copy_code: Some((t.friend_invite_copy_code_button, &r.referral_code)),
                quick_replies: vec![],
                flow_button: None,
                callback: &callback,
            });
            (friend.clone(), true, body)
        }
        Effect::SendShareLink => {
            let configured = &s.settings.whatsapp.business_number;
            let number: String = if configured.is_empty() {
                business_number
            } else {
                configured.as_str()
            }
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
            let prefilled = share_text(&r.referral_code);
            let link = format!(
                "https://wa.me/{number}?text={}",
                url::form_urlencoded::byte_serialize(prefilled.as_bytes()).collect::<String>()
            );
            let text = format!(
                "Thanks! Forward this to {friend_first}:\n\n\"{referrer_first} thinks you'll love us. {personal} Use my code {} — tap to start: {link}\"",
                r.referral_code
            );
            (
                referrer.clone(),
                false,
                bodies::text(referrer.as_str(), &text, &callback),
            )
        }
        Effect::SendFriendWelcome => {
            let text = format!(
                "Hi {friend_first}! {referrer_first} invited you. \"{personal}\" Your welcome code is {}.",
                r.referral_code
            );
            (friend.clone(), true, bodies::text(friend.as_str(), &text, &callback))
        }
        Effect::SendRefusal(refusal) => (
            referrer.clone(),
            false,
            bodies::text(referrer.as_str(), &refusal.reply_text(&r.friend_name), &callback),
        ),
        Effect::ThankReferrer => {
            let t = &s.settings.templates;
            let params = t
                .thanks_body
                .iter()
                .map(|p| match p {
                    crate::config::TemplateParameter::FriendName => friend_first.clone(),
                    _ => referrer_first.clone(),
                })
                .collect();
            let body = bodies::template(bodies::Template {
                to: referrer.as_str(),
                name: &t.thanks,
                language: &r.language,
                body_params: params,
                copy_code: None,
                quick_replies: vec![],
                flow_button: None,
                callback: &callback,
            });
            (referrer.clone(), true, body)
        }
        // Rewards are rows, not messages: `record_conversion` creates them.
        Effect::GrantRewards => return Ok(None),
    };
    Ok(Some(NewMessage {
        referral_id: Some(r.id),
        ..s.message(key, effect.key(), &to, marketing, body)
    }))
}

// ---------------------------------------------------------------------------------------
// 7. Message statuses

pub async fn on_status(s: &Services, item: &ClaimedItem, payload: &Value) -> HandlerResult {
    let Some(status) = payload.get("status") else {
        return Err(HandlerError::Permanent("status event without a status".into()));
    };
    let wamid = text(status, "/id").unwrap_or_default();
    let Some(incoming) = text(status, "/status").and_then(MessageStatus::parse) else {
        return HandlerOutcome::done("status kind not tracked");
    };
    let code = status.pointer("/errors/0/code").and_then(Value::as_i64);
    let title = text(status, "/errors/0/title")
        .or_else(|| text(status, "/errors/0/message"))
        .map(str::to_string);
    let mut found = s.store.message_by_wamid(wamid).await?;
    if found.is_none() {
        if let Some(key) = text(status, "/biz_opaque_callback_data") {
            found = s.store.attach_wamid(key, wamid).await?;
        }
    }
    let Some(message) = found else {
        // A status can overtake the record of our send; give it a little time.
        if item.attempts < 3 {
            return Err(HandlerError::retry_after(
                "status for a message not recorded yet",
                std::time::Duration::from_secs(20),
            ));
        }
        return HandlerOutcome::done("status for a message we did not send");
    };
    let current = MessageStatus::parse(&message.status).unwrap_or(MessageStatus::Accepted);
    let Some(next) = current.advance(incoming) else {
        return HandlerOutcome::done(format!(
            "{} after {} changes nothing",
            incoming.as_str(),
            message.status
        ));
    };
    if !s
        .store
        .advance_message_status(message.id, &message.status, next.as_str(), code, title.as_deref())
        .await?
    {
        return Err(HandlerError::retry("message status changed concurrently"));
    }
    let mut note = format!("message {} {} -> {}", message.id, message.status, next.as_str());
    if next == MessageStatus::Failed {
        let class = classify(code, None);
        note.push_str(&format!(" ({}: {})", code.unwrap_or_default(), class.as_str()));
        if let SendErrorClass::Retry { not_before } = class {
            note.push_str(&resend_once(s, &message, not_before).await?);
        }
        after_send_failure(s, &message, class, code).await?;
    }
    if matches!(next, MessageStatus::Delivered | MessageStatus::Read) && message.purpose == "friend_invite" {
        if let Some(referral) = referral_of(s, message.referral_id).await? {
            note.push_str(&format!(
                "; {}",
                apply_event(s, &referral, &ReferralEvent::DirectInviteDelivered, None, "").await?
            ));
        }
    }
    HandlerOutcome::done(note)
}

/// A transient failure reported by a `failed` status: send the message again, once, under
/// a key of its own.
async fn resend_once(
    s: &Services,
    message: &crate::store::MessageRow,
    not_before: std::time::Duration,
) -> Result<String, HandlerError> {
    if message.idempotency_key.ends_with(":resend") {
        return Ok("; already resent once".into());
    }
    let Ok(to) = E164::parse_mobile(&message.to_phone, "ZZ") else {
        return Ok("; invalid recipient, not resent".into());
    };
    let body: Value = serde_json::from_str(&message.body).unwrap_or(Value::Null);
    let resend = NewMessage {
        invite_id: message.invite_id,
        referral_id: message.referral_id,
        run_at: now_ms() + crate::store::duration_ms(not_before),
        ..s.message(
            format!("{}:resend", message.idempotency_key),
            &message.purpose,
            &to,
            message.marketing == 1,
            body,
        )
    };
    s.store.queue(&[resend], &[]).await?;
    Ok("; resend queued".into())
}

async fn referral_of(s: &Services, id: Option<i64>) -> Result<Option<ReferralRow>, HandlerError> {
    match id {
        Some(id) => Ok(s.store.referral(id).await?),
        None => Ok(None),
    }
}

/// What a refused send means for the referral and the recipient, whichever path
/// (synchronous answer or `failed` status) reported it.
pub async fn after_send_failure(
    s: &Services,
    message: &crate::store::MessageRow,
    class: SendErrorClass,
    code: Option<i64>,
) -> Result<(), HandlerError> {
    if class == SendErrorClass::OptedOut {
        if let Ok(phone) = E164::parse_mobile(&message.to_phone, "ZZ") {
            record_opt_out(s, &phone, "meta_131050", true).await?;
        }
    }
    s.metrics.whatsapp_send_error(class.as_str(), code);
    if class == SendErrorClass::AccountLevel {
        tracing::error!(
            message_id = message.id,
            "WhatsApp refused the send for an account-level reason: every send will fail until an operator acts"
        );
    }
    if message.purpose != "friend_invite" {
        return Ok(());
    }
    // Only a final refusal moves the referral; an account-level problem is fixed by an
    // operator and the send retried, and a transient one is sent again.
    let policy_limit = match class {
        SendErrorClass::MarketingLimit => true,
        SendErrorClass::OptedOut
        | SendErrorClass::Undeliverable
        | SendErrorClass::Permanent
        | SendErrorClass::OutsideWindow => false,
        SendErrorClass::AccountLevel | SendErrorClass::Retry { .. } => return Ok(()),
    };
    if let Some(referral) = referral_of(s, message.referral_id).await? {
        apply_event(
            s,
            &referral,
            &ReferralEvent::DirectInviteFailed { policy_limit },
            None,
            "",
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 8. Opt-out

pub async fn on_user_preference(s: &Services, payload: &Value) -> HandlerResult {
    let Some(preference) = payload.get("preference") else {
        return Err(HandlerError::Permanent("preference event without a preference".into()));
    };
    let Some(phone) = text(preference, "/wa_id").and_then(|w| E164::from_wa_id(w).ok()) else {
        return HandlerOutcome::done("preference for an invalid number");
    };
    match text(preference, "/value") {
        Some("stop") => record_opt_out(s, &phone, "whatsapp_stop", true)
            .await
            .map(|c| format!("{c:?}")),
        Some("resume") => record_opt_out(s, &phone, "whatsapp_resume", false)
            .await
            .map(|c| format!("{c:?}")),
        other => Ok(format!("preference {other:?} not handled")),
    }
    .and_then(HandlerOutcome::done)
}

async fn opt_out(s: &Services, phone: &E164, source: &str, acknowledge: bool) -> HandlerResult {
    let change = record_opt_out(s, phone, source, true).await?;
    if acknowledge {
        // Once per opt-out: the key carries the time the opt-out began.
        let since = match change {
            OptOutChange::OptedOut(at) | OptOutChange::AlreadyOptedOut(at) => at,
            _ => now_ms(),
        };
        let text = "You won't receive promotional messages from us on WhatsApp any more.";
        reply_in_window(s, phone, format!("opt_out_ack:{}:{since}", phone.as_str()), text).await?;
    }
    HandlerOutcome::done(format!("opt-out ({source}): {change:?}"))
}

/// Records an opt-out or its lifting, and mirrors a change to HubSpot.
async fn record_opt_out(
    s: &Services,
    phone: &E164,
    source: &str,
    opted_out: bool,
) -> Result<OptOutChange, HandlerError> {
    let value = if opted_out { "stop" } else { "resume" };
    let mirror = s.side_job(
        "hubspot.sync_opt_out",
        format!("hubspot.opt_out:{}:{value}:{}", phone.as_str(), now_ms()),
        json!({"phone": phone.as_str(), "opted_out": opted_out}),
    );
    let change = s.store.set_opt_out(phone.as_str(), opted_out, source, &mirror).await?;
    if matches!(change, OptOutChange::OptedOut(_) | OptOutChange::Resumed) {
        tracing::info!(phone = %mask_phone(phone.as_str()), source, opted_out, "marketing preference recorded");
    }
    Ok(change)
}
