//! Steps 1–3: a HubSpot workflow's trigger, the eligibility rules, the invite with the
//! customer's code; then the customer's "Refer someone" tap, answered with the Flow.

use serde_json::{Map, Value};

use super::{opt_out, Outcome, Services, StepError, StepResult, Work};
use crate::clock::duration_ms;
use crate::config::Settings;
use crate::domain::eligibility::{
    self, EligibilityRules, Ineligible, IneligibleReason, NpsAnswer, TriggerFacts, TriggerKind,
};
use crate::domain::flow_token::FlowToken;
use crate::domain::ids::HubSpotId;
use crate::domain::inbox::hubspot_property;
use crate::domain::messaging::{pick_language, MessagePurpose, OptOutSource};
use crate::domain::phone::E164;
use crate::domain::send_window::{LocalZone, SendTiming};
use crate::domain::state::{InviteState, Persisted};
use crate::domain::work::Job;
use crate::store::{NewInvite, NewMessage, Tx};
use crate::telemetry::mask_phone;
use crate::whatsapp::render;

/// What a workflow trigger says, read from HubSpot's payload.
struct Trigger {
    contact_id: String,
    kind: TriggerKind,
    raw_phone: String,
    first_name: String,
    language: String,
    score: Option<NpsAnswer>,
    /// The contact's time zone, when HubSpot knows it (an unknown name is ignored).
    time_zone: Option<LocalZone>,
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// `Ok(None)` for a workflow that is not contact-based (nothing to do).
fn parse_trigger(s: &Services, payload: &Value) -> Result<Option<Trigger>, StepError> {
    let settings = &s.settings;
    let props = &settings.hubspot_properties;
    let Some(record) = payload.get("record").and_then(Value::as_object) else {
        return Err(StepError::Permanent("trigger without a record".into()));
    };
    if text(payload, "/object_type") != Some("contact") {
        return Ok(None);
    }
    let property = |name: &str| hubspot_property(record, name);
    // The contact id goes into HubSpot URLs: digits or nothing.
    let contact_id = HubSpotId::parse(text(payload, "/object_id").unwrap_or_default())?;
    Ok(Some(Trigger {
        contact_id: contact_id.as_str().to_string(),
        kind: match text(payload, "/trigger") {
            Some("nps") => TriggerKind::Nps,
            _ => TriggerKind::Milestone(text(payload, "/name").map(str::to_string)),
        },
        raw_phone: props.phone.iter().find_map(|p| property(p)).unwrap_or_default(),
        first_name: property(&props.first_name).unwrap_or_default(),
        language: pick_language(
            property(&props.language).as_deref(),
            &settings.templates.languages,
            &settings.templates.default_language,
        ),
        score: property(&settings.programme.nps_property)
            .or_else(|| property("score"))
            .and_then(|raw| eligibility::parse_nps(&raw)),
        time_zone: property(&props.time_zone).and_then(|raw| match LocalZone::parse(&raw) {
            Ok(zone) => Some(zone),
            Err(e) => {
                tracing::warn!(contact_id = %contact_id, error = %crate::telemetry::escape(&e.to_string()), "ignoring the contact's time zone");
                None
            }
        }),
    }))
}

pub async fn on_trigger(s: &Services, work: &Work, payload: &Value) -> StepResult {
    let Some(trigger) = parse_trigger(s, payload)? else {
        return Outcome::done("triggers must come from contact-based workflows");
    };
    let trigger_key = format!("inbox:{}", work.lease.id);
    if let Some(earlier) = s.store.invite_by_trigger_key(&trigger_key).await? {
        return Outcome::done(format!("already recorded as invite {}", earlier.id));
    }
    let programme = &s.settings.programme;
    let phone = E164::parse_mobile(&trigger.raw_phone, &programme.default_region);
    let opted_out = match &phone {
        Ok(p) => s.store.is_opted_out(p).await?,
        Err(_) => false,
    };
    let (invites_so_far, last_invite) = s.store.invite_history(&trigger.contact_id).await?;
    let facts = TriggerFacts {
        kind: trigger.kind.clone(),
        score: trigger.score,
        phone: phone.clone(),
        opted_out,
        since_last_invite_ms: last_invite.map(|t| s.now_ms() - t),
        invites_so_far,
    };
    let rules = EligibilityRules {
        promoter_min_score: programme.promoter_min_score,
        invite_cooldown: programme.invite_cooldown,
        max_invites_per_contact: programme.max_invites_per_contact,
    };
    let mut invite = NewInvite {
        trigger_key,
        contact_id: trigger.contact_id.clone(),
        trigger: trigger.kind.clone(),
        phone: phone.as_ref().ok().cloned(),
        first_name: trigger.first_name.clone(),
        language: trigger.language.clone(),
        referral_code: None,
        state: InviteState::Invited,
        reason: None,
    };
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let phone = match eligibility::check(&rules, &facts) {
        Ok(phone) => phone,
        Err(ineligible) => return record_ineligible(tx, invite, ineligible.reason()).await,
    };
    let code = tx
        .customer_code(&trigger.contact_id, &trigger.first_name, || {
            s.settings
                .programme
                .code_pattern
                .generate(&trigger.first_name, |n| rand::random::<u32>() as usize % n.max(1))
        })
        .await?;
    invite.referral_code = Some(code.clone());
    let cooldown_start = s.now_ms() - duration_ms(programme.invite_cooldown);
    if !tx
        .pass_invite_gate(&trigger.contact_id, cooldown_start, programme.max_invites_per_contact)
        .await?
    {
        // Another trigger for this contact was invited at the same instant.
        return record_ineligible(tx, invite, Ineligible::ConcurrentInvite.reason()).await;
    }
    let mut invite = tx.insert_invite(&invite).await?;
    // The variant is given with the invite and never changes: it is a hash of the
    // experiment and the contact, recorded in this transaction.
    if let Some(assigned) = s.experiments.assign(&s.store, &trigger.contact_id, s.now_ms()).await? {
        tx.assign_variant(&mut invite, &assigned.experiment, &assigned.variant)
            .await?;
    }
    let settings = s.settings_for(invite.experiment.as_deref(), invite.variant.as_deref());
    if let Some(zone) = &trigger.time_zone {
        tx.record_time_zone(&phone, zone).await?;
    }
    for message in invite_messages(s, settings, invite.id, &phone, &trigger, &code) {
        tx.insert_message(&message).await?;
    }
    tx.enqueue(s.job(Job::ReferrerStatus {
        invite_id: invite.id,
        contact_id: trigger.contact_id.clone(),
        status: InviteState::Invited,
        code: Some(code.clone()),
    }));
    let reminders = &settings.reminders;
    if reminders.promoter {
        let due = s.now_ms() + duration_ms(*reminders.promoter_after);
        tx.enqueue(s.job_at(Job::PromoterReminder { invite_id: invite.id }, due));
    }
    let committed = tx
        .commit(format!("invite {} queued with code {code}", invite.id))
        .await?;
    tracing::info!(contact_id = %trigger.contact_id, phone = %mask_phone(phone.as_str()), invite_id = invite.id, "invite queued");
    Ok(committed.into())
}

async fn record_ineligible(mut tx: Tx, mut invite: NewInvite, reason: IneligibleReason) -> StepResult {
    let said = reason.to_string();
    invite.state = InviteState::Ineligible;
    invite.reason = Some(reason);
    tx.insert_invite(&invite).await?;
    let committed = tx.commit(format!("ineligible: {said}")).await?;
    tracing::info!(contact_id = %invite.contact_id, reason = %said, "trigger not eligible");
    Ok(committed.into())
}

/// The invite template and, when configured, the Flow template right after it.
fn invite_messages(
    s: &Services,
    settings: &Settings,
    invite_id: i64,
    phone: &E164,
    trigger: &Trigger,
    code: &str,
) -> Vec<NewMessage> {
    let body = render::invite(
        settings,
        phone.as_str(),
        &trigger.language,
        &trigger.first_name,
        code,
        invite_id,
    );
    let mut messages = vec![NewMessage {
        invite_id: Some(invite_id),
        ..s.message(format!("invite:{invite_id}"), MessagePurpose::Invite, phone, true, body)
    }];
    if settings.programme.send_flow_with_invite {
        let token = s.new_flow_token(invite_id, &format!("tmpl{invite_id}"));
        let body = render::flow_template(
            settings,
            phone.as_str(),
            &trigger.language,
            &trigger.first_name,
            code,
            &token,
        );
        messages.push(NewMessage {
            invite_id: Some(invite_id),
            // Right after the invite, in the recipient's next turn; and, as it comes with
            // the invite rather than answering a tap, in their daytime too.
            run_at: s.now_ms() + duration_ms(settings.whatsapp.pair_spacing),
            timing: SendTiming::RecipientDaytime,
            ..s.message(
                format!("flow:{invite_id}:template"),
                MessagePurpose::Flow,
                phone,
                true,
                body,
            )
        });
    }
    messages
}

/// A quick-reply tap on the invite: "Refer someone" (answered with the Flow) or "Stop".
pub async fn on_button(s: &Services, work: &Work, from: &E164, wamid: &str, payload: &str) -> StepResult {
    let is_stop = s
        .settings
        .programme
        .stop_button_payloads
        .iter()
        .any(|p| p.eq_ignore_ascii_case(payload.trim()));
    if is_stop {
        return opt_out::on_stop_request(s, work, from, OptOutSource::Button, None).await;
    }
    let Some(invite_id) = payload.strip_prefix("refer:").and_then(|id| id.parse::<i64>().ok()) else {
        return Outcome::done(format!("button payload {payload:?} not ours"));
    };
    let Some(invite) = s.store.invite(invite_id).await? else {
        return Outcome::done("refer button for an unknown invite");
    };
    if invite.phone.as_ref() != Some(from) {
        return Outcome::done("refer button from a number that was not invited");
    }
    if s.store.is_opted_out(from).await? {
        return Outcome::done("referrer opted out; no Flow sent");
    }
    let token = s.new_flow_token(invite_id, wamid);
    let body = render::flow_prompt(&s.settings, from.as_str(), &invite.language, &invite.first_name, &token);
    // One Flow per tap: a redelivered tap has the same wamid, hence the same key.
    let message = NewMessage {
        invite_id: Some(invite_id),
        ..s.message(
            format!("flow:{invite_id}:{wamid}"),
            MessagePurpose::Flow,
            from,
            true,
            body,
        )
    };
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    tx.insert_message(&message).await?;
    // HubSpot hears of the move only when it happens: a tap after the nomination must not
    // set the referrer back to flow_sent there.
    let note = match tx.advance_invite(invite_id, InviteState::FlowSent).await? {
        Some(from) => {
            tx.enqueue(s.job(Job::ReferrerStatus {
                invite_id,
                contact_id: invite.contact_id.clone(),
                status: InviteState::FlowSent,
                code: None,
            }));
            format!("flow sent for invite {invite_id} ({} -> flow_sent)", from.as_str())
        }
        None => format!("flow sent for invite {invite_id} (already past flow_sent)"),
    };
    Ok(tx.commit(note).await?.into())
}

impl Services {
    pub(super) fn new_flow_token(&self, invite_id: i64, seed: &str) -> String {
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

    /// `referral_status` (and the code, when given) for the referrer's contact; and the
    /// experiment's variant they were given (`experiment:variant`), when given.
    pub(super) fn referrer_properties(
        &self,
        status: &str,
        code: Option<&str>,
        variant: Option<String>,
    ) -> Map<String, Value> {
        let names = &self.settings.hubspot_properties;
        let mut properties = Map::new();
        properties.insert(names.referral_status.clone(), Value::String(status.to_string()));
        if let Some(code) = code {
            properties.insert(names.referral_code.clone(), Value::String(code.to_string()));
        }
        if let Some(variant) = variant {
            properties.insert(names.referral_experiment_variant.clone(), Value::String(variant));
        }
        properties
    }
}
