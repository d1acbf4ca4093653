//! Sending: the `whatsapp.send` job, Meta's statuses for what we sent, and what a
//! refusal (synchronous or in a `failed` status) means for the recipient and the
//! referral. Meta's error codes decide between retry, suppress and fallback
//! (`domain::messaging::classify`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::transition::{self, EventContext};
use super::{opt_out, Outcome, Services, StepError, StepResult, Work};
use crate::domain::messaging::{classify, MessagePurpose, MessageStatus, OptOutSource, SendErrorClass, TemplateEvent};
use crate::domain::referral::ReferralEvent;
use crate::domain::send_window::{cap_frees_at, HoldReason, LocalZone, SendTiming, CAP_PERIOD};
use crate::domain::state::Persisted;
use crate::store::{
    duration_ms, Acceptance, BatchLease, Cohort, DeliveredCharge, ItemEnd, MessageRow, MessageToSend, NewMessage,
    StatusMove, Tx,
};
use crate::whatsapp::inbound::{StatusUpdate, TemplateCategoryUpdate, TemplateQualityUpdate, TemplateStatusUpdate};
use jiff::Timestamp;

/// The `whatsapp.send` job.
pub async fn send(s: &Services, work: &Work, message_id: i64) -> StepResult {
    let Some(MessageToSend {
        message,
        recipient_opted_out,
        template,
        recipient_zone,
    }) = s.store.message_to_send(message_id).await?
    else {
        return Err(StepError::Permanent(format!("message {message_id} not found")));
    };
    let from = match message.status {
        MessageStatus::Queued => MessageStatus::Queued,
        // An earlier attempt was interrupted after the request may have reached Meta (a
        // crash, a timeout). Meta takes no idempotency key, but its statuses echo our
        // callback data (the message's key), which `on_status` uses to record the send.
        // Wait for that a while before sending again.
        MessageStatus::Sending => {
            let wait = duration_ms(s.settings.worker.interrupted_send_wait);
            let waited = s.now_ms() - message.updated_at;
            if waited < wait {
                return Err(StepError::retry_after(
                    "interrupted send: waiting for Meta's status",
                    Duration::from_millis((wait - waited) as u64),
                ));
            }
            tracing::warn!(message_id, "interrupted send never confirmed by Meta; sending again");
            MessageStatus::Sending
        }
        // Accepted by Meta, then failed in a status (the send job was interrupted before it
        // recorded the acceptance): the status recorded the failure and what it means (a
        // resend, an opt-out, a fallback) in one commit, so this send is done.
        MessageStatus::Failed if message.wamid.is_some() => {
            return Outcome::done(format!(
                "Meta accepted it as {}, then reported it failed; its status handled that",
                message.wamid.as_deref().unwrap_or_default()
            ))
        }
        // Refused for good and recorded, but the consequences may not have committed
        // (a crash right after the record): apply them again; they are idempotent.
        MessageStatus::Failed => return finish_refusal(s, work, &message, recorded_class(message.error_code)).await,
        done => return Outcome::done(format!("message already {}", done.as_str())),
    };
    if message.marketing && recipient_opted_out {
        let mut tx = s.store.begin(Some(&work.lease)).await?;
        tx.set_message_status(
            message.id,
            from,
            MessageStatus::Suppressed,
            None,
            Some((None, "recipient opted out")),
        )
        .await?;
        return Ok(tx.commit("suppressed: recipient opted out of marketing").await?.into());
    }
    if let Some(wait) = template_held(s, &message, template) {
        return Err(wait);
    }
    if let Some(wait) = hold_for_recipient(s, &message, recipient_zone).await? {
        return Err(wait);
    }
    // Meta allows one message per 6 seconds to the same user (131056): keep to it ahead.
    let spacing = crate::clock::duration_ms(s.settings.whatsapp.pair_spacing);
    if let Some(wait) = s
        .store
        .reserve_recipient_turn(&message.to_phone, message.id, spacing)
        .await?
    {
        return Err(StepError::Deferred {
            reason: "waiting for the recipient's turn".into(),
            delay: Duration::from_millis(u64::try_from(wait).unwrap_or(0)),
        });
    }
    // Something that moved the message since it was read (a status matched by its
    // callback data, another attempt) is a conflict: the step runs again from a fresh read.
    s.store.mark_sending(message.id, from).await?;
    let failure = match s.whatsapp.send(&message.body, Some(work.job_id())).await {
        Ok(accepted) => return record_acceptance(s, work, message.id, &accepted.wamid).await,
        Err(failure) => failure,
    };
    if failure.ambiguous {
        // The request may have been delivered: keep `sending`, and look again once Meta
        // has had time to send its status (which records the send); only then send again.
        let wait = s.settings.worker.interrupted_send_wait;
        return Err(StepError::retry_after(failure.title, wait));
    }
    let retry_delay = match failure.class {
        SendErrorClass::Retry { not_before } => Some(not_before.max(failure.retry_after.unwrap_or_default())),
        _ => None,
    };
    if retry_delay.is_some() || failure.class == SendErrorClass::AccountLevel {
        // Not sent: back to `queued`, for the retry (or, for an account-level problem an
        // operator must fix, for `referloop jobs retry`).
        let mut tx = s.store.begin(None).await?;
        tx.set_message_status(message.id, MessageStatus::Sending, MessageStatus::Queued, None, None)
            .await?;
        tx.commit("").await?;
        s.metrics.whatsapp_send_error(failure.class.as_str(), failure.code);
        if let Some(delay) = retry_delay {
            return Err(StepError::retry_after(failure.title, delay));
        }
        tracing::error!(
            message_id = message.id,
            "WhatsApp refused the send for an account-level reason: every send will fail until an operator acts"
        );
        return Err(StepError::Permanent(format!(
            "account-level error {:?}: {}",
            failure.code, failure.title
        )));
    }
    // A final refusal: recorded at once (the one fact only this attempt knows), then what
    // it means commits with the job's end.
    s.store.record_refusal(message.id, failure.code, &failure.title).await?;
    s.metrics.whatsapp_send_error(failure.class.as_str(), failure.code);
    let refused = MessageRow {
        status: MessageStatus::Failed,
        error_code: failure.code,
        ..message
    };
    finish_refusal(s, work, &refused, failure.class).await
}

/// Records Meta's acceptance of a send. A status for it may have been recorded first
/// (matched by its callback data while this request was in flight), in which case the
/// message has moved on and only its wamid is missing, if anything.
async fn record_acceptance(s: &Services, work: &Work, message_id: i64, wamid: &str) -> StepResult {
    // Nothing moved the message: one statement, which on PostgreSQL ends the job too (the
    // acceptance causes nothing else to commit with it).
    let note = format!("accepted as {wamid}");
    match s.store.accept_sending(message_id, wamid, &work.lease, &note).await? {
        Acceptance::Ended(committed) => return Ok(committed.into()),
        // The job ends with the others that finish meanwhile (or, its lease lost, says so).
        Acceptance::Recorded => return Outcome::done(note),
        Acceptance::Moved => {}
    }
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let Some(message) = tx.message_for_update(message_id).await? else {
        return Err(StepError::Permanent(format!(
            "message {message_id} vanished while sending"
        )));
    };
    // `queued` too: an attempt whose lease lapsed may have put it back meanwhile, but
    // Meta accepted it.
    let note = if MessageStatus::UNCONFIRMED.contains(&message.status) {
        if message.wamid.as_deref().is_some_and(|known| known != wamid) {
            tracing::error!(message_id, "Meta accepted a second send of one message");
        }
        tx.set_message_status(message_id, message.status, MessageStatus::Accepted, Some(wamid), None)
            .await?;
        format!("accepted as {wamid}")
    } else {
        format!(
            "accepted as {wamid} (its status, {}, was recorded first)",
            message.status.as_str()
        )
    };
    Ok(tx.commit(note).await?.into())
}

/// The class of a recorded final refusal (any code not known as final counts as permanent).
fn recorded_class(code: Option<i64>) -> SendErrorClass {
    match classify(code, None) {
        SendErrorClass::Retry { .. } | SendErrorClass::AccountLevel => SendErrorClass::Permanent,
        class => class,
    }
}

/// What a recorded final refusal means, committed with the send job's end (dead).
async fn finish_refusal(s: &Services, work: &Work, message: &MessageRow, class: SendErrorClass) -> StepResult {
    let reason = format!(
        "{} (code {}): {}",
        class.as_str(),
        message.error_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        message.error_title.as_deref().unwrap_or("refused")
    );
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    after_refusal(s, &mut tx, message, class).await?;
    Ok(tx.finish(ItemEnd::Dead(reason)).await?.into())
}

/// A send whose template Meta paused, disabled or rejected (`template`, its recorded
/// status) waits (without using an attempt) until a webhook says the template is approved
/// again.
fn template_held(
    s: &Services,
    message: &MessageRow,
    template: Option<(TemplateEvent, Option<String>)>,
) -> Option<StepError> {
    let (status, reason) = template?;
    if status.sendable() {
        return None;
    }
    let (name, language) = crate::whatsapp::render::template_of(&message.body)?;
    tracing::error!(
        template = %name,
        language = %language,
        status = %status,
        reason = reason.as_deref().unwrap_or("-"),
        message_id = message.id,
        "template not sendable: its sends wait until Meta approves it again"
    );
    s.metrics
        .template_sends_held
        .get_or_create(&crate::metrics::TemplateLabels {
            template: name.clone(),
            language: language.clone(),
        })
        .inc();
    Some(StepError::Deferred {
        reason: format!("template {name} ({language}) is {status}"),
        delay: s.settings.whatsapp.template_recheck,
    })
}

/// Quiet hours, then the weekly frequency cap: a send that must wait records why and until
/// when (its timeline says "held for quiet hours until …"), and waits without using an
/// attempt. `zone` is the recipient's as their CRM record gave it.
async fn hold_for_recipient(
    s: &Services,
    message: &MessageRow,
    zone: Option<LocalZone>,
) -> Result<Option<StepError>, StepError> {
    let messaging = &s.settings.messaging;
    let now = s.now_ms();
    let mut hold = None;
    if message.timing == SendTiming::RecipientDaytime && !messaging.send_window.is_always_open() {
        let zone = LocalZone::of_recipient(zone, &message.to_phone, &messaging.default_timezone);
        let instant = Timestamp::from_millisecond(now).map_err(|e| StepError::Permanent(e.to_string()))?;
        if let Some(opens) = messaging.send_window.next_opening(instant, zone.zone()) {
            // The Flow that comes with an invite waits one turn longer, so the two leave
            // in their order when the window opens.
            let turn = match message.purpose {
                MessagePurpose::Flow => duration_ms(s.settings.whatsapp.pair_spacing),
                _ => 0,
            };
            let said = format!("quiet hours in {zone} (window {})", *messaging.send_window);
            hold = Some((HoldReason::QuietHours, opens.as_millisecond() + turn, said));
        }
    }
    if hold.is_none() && message.purpose.is_marketing_template() {
        let sent = s
            .store
            .marketing_sent_to(&message.to_phone, now - duration_ms(CAP_PERIOD), Some(message.id))
            .await?;
        let cap = messaging.max_marketing_per_contact_per_week;
        if let Some(frees) = cap_frees_at(&sent, cap, now) {
            let said = format!("{cap} marketing templates in the last seven days");
            hold = Some((HoldReason::FrequencyCap, frees, said));
        }
    }
    let Some((reason, until, said)) = hold else {
        return Ok(None);
    };
    let mut tx = s.store.begin(None).await?;
    tx.hold_message(message, reason, until).await?;
    tx.commit("").await?;
    tracing::info!(message_id = message.id, until = %crate::clock::rfc3339(until), "{}: {said}", reason.for_people());
    Ok(Some(StepError::Deferred {
        reason: format!(
            "{} until {}: {said}",
            reason.for_people(),
            crate::clock::for_people(until)
        ),
        delay: Duration::from_millis(u64::try_from(until - now).unwrap_or(0)),
    }))
}

/// Meta's `message_template_status_update`: the template's status, recorded for the sends.
pub async fn on_template_status(s: &Services, work: &Work, update: &TemplateStatusUpdate) -> StepResult {
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    tx.set_template_status(&update.name, &update.language, &update.event, update.reason.as_deref())
        .await?;
    let note = format!("template {} ({}) is {}", update.name, update.language, update.event);
    let committed = tx.commit(note).await?;
    if update.event.sendable() {
        tracing::info!(template = %update.name, language = %update.language, event = %update.event, "template sendable");
    } else {
        tracing::error!(
            template = %update.name,
            language = %update.language,
            event = %update.event,
            reason = update.reason.as_deref().unwrap_or("-"),
            "template can no longer be sent: its sends wait until Meta approves it again"
        );
    }
    Ok(committed.into())
}

/// Meta's `message_template_quality_update`: logged (loudly when RED) and counted.
pub fn on_template_quality(s: &Services, update: &TemplateQualityUpdate) -> StepResult {
    let previous = update.previous.as_deref().unwrap_or("-");
    if update.new == "RED" {
        tracing::error!(template = %update.name, language = %update.language, previous, quality = %update.new,
            "template quality is low: Meta may pause it; send fewer of its marketing messages");
    } else {
        tracing::info!(template = %update.name, language = %update.language, previous, quality = %update.new, "template quality changed");
    }
    s.metrics
        .template_quality_changes
        .get_or_create(&crate::metrics::TemplateChangeLabels {
            template: update.name.clone(),
            language: update.language.clone(),
            value: update.new.clone(),
        })
        .inc();
    Outcome::done(format!(
        "template {} ({}) quality {} -> {}",
        update.name, update.language, previous, update.new
    ))
}

/// Meta's `template_category_update`: a recategorisation (done, or due in 24 hours)
/// changes what a message costs and whether marketing rules apply, so it is said loudly.
pub fn on_template_category(s: &Services, update: &TemplateCategoryUpdate) -> StepResult {
    let becomes = update.correct.as_deref().unwrap_or(&update.new);
    tracing::error!(template = %update.name, language = %update.language,
        previous = update.previous.as_deref().unwrap_or("-"), category = %becomes,
        impending = update.correct.is_some(), "Meta recategorised a template");
    s.metrics
        .template_category_changes
        .get_or_create(&crate::metrics::TemplateChangeLabels {
            template: update.name.clone(),
            language: update.language.clone(),
            value: becomes.to_string(),
        })
        .inc();
    Outcome::done(format!(
        "template {} ({}) category now or soon {becomes}",
        update.name, update.language
    ))
}

/// A status matched by no wamid of ours and carrying no callback data of ours.
const NOT_OURS: &str = "status of a message we did not send (no callback data)";

/// One status event of a batch: its inbox item and what Meta said.
#[derive(Debug, Clone)]
pub struct BatchedStatus {
    pub item_id: i64,
    pub update: StatusUpdate,
}

/// What a batch of statuses did: the items it settled, and those it left to
/// [`on_status`], one at a time (still leased to the worker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusBatch {
    pub settled: Vec<i64>,
    pub left: Vec<i64>,
}

/// Meta's statuses, many at once: every status that only moves its message's status
/// (nearly all of them: `sent`, `delivered` and `read` of what we sent) is applied in
/// one transaction, with one locking read, one set-based update and one statement that
/// ends their items. A status that causes more (a refusal, a friend's invite delivered),
/// or whose message is not known by its wamid yet, is left to [`on_status`]. A status
/// that changes nothing (a `read` after `read`) writes nothing but its item's end.
///
/// The batch's messages are locked in id order, so batches and single steps about the
/// same message take turns as single steps do, and the statuses of one message in the
/// batch are applied together: they commute, so their order does not matter.
pub async fn on_status_batch(
    s: &Services,
    batch: &BatchLease,
    statuses: &[BatchedStatus],
) -> Result<StatusBatch, StepError> {
    let mut outcome = StatusBatch::default();
    let mut ended: Vec<(i64, String)> = Vec::new();
    let mut by_wamid: BTreeMap<&str, Vec<&BatchedStatus>> = BTreeMap::new();
    for status in statuses {
        match status.update.status {
            Some(_) => by_wamid.entry(status.update.wamid.as_str()).or_default().push(status),
            None => ended.push((status.item_id, "status kind not tracked".into())),
        }
    }
    let mut tx = s.store.begin_batch(batch).await?;
    let wamids: Vec<&str> = by_wamid.keys().copied().collect();
    let callback = |group: &[&BatchedStatus]| group.iter().find_map(|b| b.update.callback.clone());
    let keys: Vec<String> = by_wamid.values().filter_map(|group| callback(group)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let messages = tx.messages_by_wamids_for_update(&wamids, &keys).await?;
    let mut moves = Vec::new();
    let mut charges = Vec::new();
    // Messages found by their callback data, each claimed by one wamid only.
    let mut attached: Vec<i64> = Vec::new();
    for (wamid, group) in &by_wamid {
        let incoming: Vec<MessageStatus> = group.iter().filter_map(|b| b.update.status).collect();
        let key = callback(group);
        let message = messages.iter().find(|m| m.wamid.as_deref() == Some(*wamid));
        if message.is_none() && key.is_none() {
            // Not a send of ours (see `on_status`): the lookup just made settles it.
            ended.extend(group.iter().map(|b| (b.item_id, NOT_OURS.to_string())));
            continue;
        }
        // A status that overtook the record of our send (Meta answered, its status came
        // before our commit): the message is found by its key and, as `on_status` would,
        // counts as accepted under this wamid. Anything less plain is left to `on_status`.
        let overtaken = match message {
            Some(_) => None,
            None => messages.iter().find(|m| {
                m.wamid.is_none()
                    && Some(&m.idempotency_key) == key.as_ref()
                    && MessageStatus::UNCONFIRMED.contains(&m.status)
                    && !attached.contains(&m.id)
            }),
        };
        let after = match (message, overtaken) {
            (Some(m), _) => m.status.after_status_only(m.purpose, &incoming).map(|to| (m, to, None)),
            (None, Some(m)) => MessageStatus::Accepted
                .after_status_only(m.purpose, &incoming)
                .map(|to| (m, to, Some(wamid.to_string()))),
            (None, None) => None,
        };
        let Some((message, to, attach)) = after else {
            outcome.left.extend(group.iter().map(|b| b.item_id));
            continue;
        };
        if attach.is_some() {
            attached.push(message.id);
        }
        charges.extend(delivered_charge(s, message, group.iter().map(|b| &b.update)));
        let note = if to == message.status && attach.is_none() {
            format!("message {} stays {}", message.id, to.as_str())
        } else {
            moves.push(StatusMove {
                id: message.id,
                from: message.status,
                to,
                wamid: attach,
            });
            format!(
                "message {} {} -> {} ({} of its statuses in one batch)",
                message.id,
                message.status.as_str(),
                to.as_str(),
                group.len()
            )
        };
        ended.extend(group.iter().map(|b| (b.item_id, note.clone())));
    }
    tx.set_message_statuses(&moves).await?;
    tx.record_charges(&charges, &s.settings.pricing.currency).await?;
    tx.finish_batch(&ended).await?;
    outcome.settled = ended.into_iter().map(|(id, _)| id).collect();
    Ok(outcome)
}

/// A status Meta reported. The message is read locked, so statuses of one message
/// handled at once (Meta sends `sent`, `delivered` and `read` within a second, sometimes
/// reordered) take turns, and each decides on what the one before it left. The message's
/// new status and everything it means (a resend, an opt-out, the referral's move) commit
/// together; a redelivered status re-applies only what is missing.
pub async fn on_status(s: &Services, work: &Work, update: &StatusUpdate) -> StepResult {
    let Some(incoming) = update.status else {
        return Outcome::done("status kind not tracked");
    };
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let mut found = tx.message_by_wamid_for_update(&update.wamid).await?;
    // Found by its callback data: a send whose acceptance was never recorded (its job
    // was interrupted), perhaps refused since by the send's retry.
    let mut attached = false;
    if found.is_none() {
        if let Some(key) = &update.callback {
            found = tx.attach_wamid(key, &update.wamid).await?;
            attached = found.is_some();
        }
    }
    let Some(message) = found else {
        drop(tx);
        // Every send of ours carries its key as callback data, and its row is committed
        // before the request leaves, so a status matched by neither its wamid nor its key
        // is not about a send we are waiting for: another tool sending from the same
        // number, or a repeat of a send whose first wamid is recorded. Settled at once,
        // with no retry.
        return Outcome::done(match update.callback {
            None => NOT_OURS,
            Some(_) => "status of a message we did not send or already recorded under another wamid",
        });
    };
    let changed = match message.status.advance(incoming) {
        Some(next) => {
            let error = update.error_title.as_deref().map(|title| (update.error_code, title));
            tx.set_message_status(message.id, message.status, next, None, error)
                .await?;
            Some(next)
        }
        None => None,
    };
    if let Some(charge) = delivered_charge(s, &message, std::iter::once(update)) {
        tx.record_charges(&[charge], &s.settings.pricing.currency).await?;
    }
    let status = changed.unwrap_or(message.status);
    let mut note = match changed {
        Some(next) => format!(
            "message {} {} -> {}",
            message.id,
            message.status.as_str(),
            next.as_str()
        ),
        None => format!("message {} stays {}", message.id, message.status.as_str()),
    };
    // What a refusal means (a resend, an opt-out, the referral's move) commits with the
    // status that records it, or with the send job that recorded it, which reruns it when
    // interrupted unless a status has attached its wamid since. So a status that finds
    // its message failed under this wamid already changes nothing: a `sent` after the
    // `failed`, or a `failed` Meta delivers again once its key was pruned. Applying the
    // refusal again could opt out a number that has opted back in since.
    if status == MessageStatus::Failed && changed.is_none() && !attached {
        note.push_str("; its refusal was handled when recorded");
    } else if status == MessageStatus::Failed {
        // The refusal is the one recorded: a `sent` that arrives after the `failed` (Meta
        // sends them apart, in either order) carries no error and must not be read as one.
        let code = if changed.is_some() {
            update.error_code
        } else {
            message.error_code
        };
        let class = classify(code, None);
        note.push_str(&format!(" ({}: {})", code.unwrap_or_default(), class.as_str()));
        if let SendErrorClass::Retry { not_before } = class {
            note.push_str(&resend_once(s, &mut tx, &message, not_before).await?);
        }
        after_refusal(s, &mut tx, &message, class).await?;
        if changed.is_some() {
            s.metrics.whatsapp_send_error(class.as_str(), update.error_code);
        }
    }
    if status.is_delivered() && message.purpose == MessagePurpose::FriendInvite {
        if let Some(referral_id) = message.referral_id {
            let event = ReferralEvent::DirectInviteDelivered;
            let applied = transition::apply(s, &mut tx, referral_id, &event, EventContext::default()).await?;
            note.push_str(&format!("; referral {referral_id} {applied}"));
        }
    }
    Ok(tx.commit(note).await?.into())
}

/// The charge for `message` when one of `statuses` reports it delivered (or read) with
/// Meta's pricing: Meta bills a message when it is delivered, and puts the pricing object
/// on `sent` and on the `delivered` or `read` that bills. Priced from the rate card by
/// the recipient's country on the day it is recorded; recorded once (`record_charges`).
fn delivered_charge<'a>(
    s: &Services,
    message: &MessageRow,
    statuses: impl Iterator<Item = &'a StatusUpdate>,
) -> Option<DeliveredCharge> {
    let pricing = statuses
        .filter(|u| u.status.is_some_and(MessageStatus::is_delivered))
        .find_map(|u| u.pricing.as_ref())?;
    let market = message.to_phone.market();
    let charge = s
        .settings
        .pricing
        .rate_card()
        .charge(pricing, market.as_deref(), s.now_ms());
    let cohort = match (message.referral_id, message.invite_id) {
        (Some(id), _) => Cohort::Referral(id),
        (None, Some(id)) => Cohort::Invite(id),
        (None, None) => Cohort::Unattributed,
    };
    Some(DeliveredCharge {
        message_id: message.id,
        cohort,
        market: market.unwrap_or_else(|| "unknown".into()),
        charge,
    })
}

/// A transient failure reported by a `failed` status: the message is sent again, once,
/// under a key of its own.
async fn resend_once(
    s: &Services,
    tx: &mut Tx,
    message: &MessageRow,
    not_before: Duration,
) -> Result<String, StepError> {
    if message.idempotency_key.ends_with(":resend") {
        return Ok("; already resent once".into());
    }
    let to = message.to_phone.clone();
    let body: serde_json::Value = serde_json::from_str(&message.body).unwrap_or_default();
    let resend = NewMessage {
        invite_id: message.invite_id,
        referral_id: message.referral_id,
        run_at: s.now_ms() + duration_ms(not_before),
        timing: message.timing,
        ..s.message(
            format!("{}:resend", message.idempotency_key),
            message.purpose,
            &to,
            message.marketing,
            body,
        )
    };
    tx.insert_message(&resend).await?;
    Ok("; resend queued".into())
}

/// What a final refusal means for the recipient (131050: opted out) and, for a friend's
/// invite, for the referral: Meta's marketing limit (131049) falls back to a share link
/// where the mode allows, anything else leaves the friend unreachable.
async fn after_refusal(
    s: &Services,
    tx: &mut Tx,
    message: &MessageRow,
    class: SendErrorClass,
) -> Result<(), StepError> {
    if class == SendErrorClass::OptedOut {
        opt_out::record(s, tx, &message.to_phone, OptOutSource::Meta131050, true).await?;
    }
    if message.purpose != MessagePurpose::FriendInvite {
        return Ok(());
    }
    // An account-level problem is fixed by an operator and the send retried, and a
    // transient one is sent again: neither moves the referral.
    let policy_limit = match class {
        SendErrorClass::MarketingLimit => true,
        SendErrorClass::OptedOut
        | SendErrorClass::Undeliverable
        | SendErrorClass::Permanent
        | SendErrorClass::OutsideWindow => false,
        SendErrorClass::AccountLevel | SendErrorClass::Retry { .. } => return Ok(()),
    };
    if let Some(referral_id) = message.referral_id {
        let event = ReferralEvent::DirectInviteFailed { policy_limit };
        transition::apply(s, tx, referral_id, &event, EventContext::default()).await?;
    }
    Ok(())
}
