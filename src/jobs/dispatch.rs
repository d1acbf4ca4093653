//! Decoding a claimed item into its typed form and handing it to its use case, with an
//! exhaustive `match`: adding a job or event kind is a compile error here until it is
//! handled. A kind this binary does not know (a newer binary's, queued by a replica
//! already upgraded during a rolling deploy) is retried on the schedule, so that a newer
//! replica can take it, and ends dead with the reason once its attempts are spent; it is
//! never silently done.

use crate::app::conversion;
use crate::app::inbox::InboundEvent;
use crate::app::{crm, delivery, friend, invite, nomination, opt_out, reminder, reward};
use crate::app::{Outcome, Services, StepError, StepResult, Work};
use crate::domain::messaging::OptOutSource;
use crate::domain::work::{ItemKind, Job};
use crate::store::ClaimedItem;
use crate::whatsapp::inbound::{Content, InboundMessage};

/// An item of a kind this binary has no handler for: worth another attempt, which a
/// newer replica may be the one to make.
fn unknown_kind(what: &str, kind: &ItemKind) -> StepError {
    StepError::retry(format!(
        "no handler in this binary for {what} kind `{kind}`: retried for a newer replica (a rolling deploy), \
         dead once its attempts are spent"
    ))
}

pub async fn inbox_item(s: &Services, work: &Work, item: &ClaimedItem) -> StepResult {
    let ItemKind::Event(kind) = &item.kind else {
        return Err(unknown_kind("event", &item.kind));
    };
    let event = InboundEvent::decode(kind, &item.payload).map_err(StepError::Permanent)?;
    match event {
        InboundEvent::WhatsAppMessage(message) => on_message(s, work, &message).await,
        InboundEvent::WhatsAppStatus(update) => delivery::on_status(s, work, &update).await,
        InboundEvent::WhatsAppPreference(update) => opt_out::on_preference(s, work, &update).await,
        InboundEvent::WhatsAppTemplateStatus(update) => delivery::on_template_status(s, work, &update).await,
        InboundEvent::WhatsAppTemplateQuality(update) => delivery::on_template_quality(s, &update),
        InboundEvent::WhatsAppTemplateCategory(update) => delivery::on_template_category(s, &update),
        InboundEvent::HubSpotTrigger(payload) => invite::on_trigger(s, work, &payload).await,
        InboundEvent::HubSpotConversion(payload) => conversion::on_hubspot_conversion(s, work, &payload).await,
        InboundEvent::Stripe { kind, event } => conversion::on_stripe_event(s, work, kind, &event).await,
        InboundEvent::Recorded { kind } => Outcome::done(format!("recorded; nothing to do for {kind}")),
    }
}

/// An inbound WhatsApp message: it opens the sender's service window, then, by content,
/// a button tap, a Flow reply, a stop keyword or a friend arriving.
async fn on_message(s: &Services, work: &Work, message: &InboundMessage) -> StepResult {
    let Some(from) = &message.from else {
        return Outcome::done("sender is not a valid mobile number");
    };
    // Idempotent (the latest time wins), so it may precede the step's own transaction.
    let sent_at = message.sent_at_ms.unwrap_or_else(|| s.now_ms());
    s.store.record_inbound(from, sent_at).await?;
    match &message.content {
        Content::ButtonTap { payload } => invite::on_button(s, work, from, &message.wamid, payload).await,
        Content::FlowReply { response_json } => nomination::on_flow_reply(s, work, from, message, response_json).await,
        Content::Text { body } => match s.settings.catalogues.stop_keywords().language_of(body) {
            Some(language) => opt_out::on_stop_request(s, work, from, OptOutSource::Keyword, Some(language)).await,
            None => friend::on_text(s, work, from, body).await,
        },
        Content::Other { kind } => Outcome::done(format!("inbound {kind} message not handled")),
    }
}

pub async fn job_item(s: &Services, work: &Work, item: &ClaimedItem) -> StepResult {
    let ItemKind::Job(kind) = item.kind else {
        return Err(unknown_kind("job", &item.kind));
    };
    let job = Job::decode(kind, &item.payload).map_err(|e| StepError::Permanent(format!("no handler: {e}")))?;
    match job {
        Job::SendWhatsApp { message_id } => delivery::send(s, work, message_id).await,
        Job::ScreenReferral {
            referral_id,
            business_number,
        } => nomination::screen(s, work, referral_id, &business_number).await,
        Job::ReferrerStatus {
            invite_id,
            contact_id,
            status,
            code,
        } => crm::referrer_status(s, work, invite_id, &contact_id, status, code.as_deref()).await,
        Job::ReferrerCapped { contact_id, .. } => crm::referrer_capped(s, work, &contact_id).await,
        Job::CreateFriendContact {
            referral_id,
            searched_at,
        } => friend::create_contact(s, work, referral_id, searched_at).await,
        Job::SyncFriend { referral_id, state } => friend::sync_contact(s, work, referral_id, state).await,
        Job::SyncOptOut { phone, opted_out, .. } => crm::sync_opt_out(s, work, &phone, opted_out).await,
        Job::IssueReward { reward_id } => reward::issue(s, work, reward_id).await,
        Job::RewardRecorded { contact_id, given, .. } => crm::reward_recorded(s, work, &contact_id, &given).await,
        Job::ReferrerRewarded { contact_id, given, .. } => crm::referrer_rewarded(s, work, &contact_id, &given).await,
        Job::LinkReferral { referral_id } => crm::link_referral(s, work, referral_id).await,
        Job::ReferrerCounters { contact_id, .. } => crm::referrer_counters(s, work, &contact_id).await,
        Job::CreditTotal {
            contact_id, property, ..
        } => crm::credit_total(s, work, &contact_id, &property).await,
        Job::PromoterReminder { invite_id } => reminder::promoter(s, work, invite_id).await,
        Job::ReferrerNudge {
            referral_id,
            business_number,
        } => reminder::nudge(s, work, referral_id, &business_number).await,
        Job::FriendReminder { referral_id } => reminder::friend(s, work, referral_id).await,
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use crate::app::inbox::InboundEvent;
    use crate::domain::inbox::{split_hubspot, split_stripe, split_whatsapp, HubSpotTrigger, InboxKind};
    use crate::domain::nomination::parse_flow_reply;
    use crate::domain::phone::E164;
    use crate::domain::state::Persisted;
    use crate::domain::work::{Job, JobKind};

    const KINDS: [&str; 8] = [
        "whatsapp.message",
        "whatsapp.status",
        "whatsapp.user_preference",
        "hubspot.workflow.nps",
        "hubspot.workflow.conversion",
        "stripe.checkout.session.completed",
        "whatsapp.send",
        "reward.issue",
    ];

    proptest! {
        /// Every parser of outside input returns a value or an error for any input: no panic.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in "\\PC{0,200}", kind in 0usize..8) {
            let _ = split_whatsapp(&bytes);
            let _ = split_stripe(&bytes);
            let _ = split_hubspot(&bytes, &HubSpotTrigger::default());
            let _ = split_whatsapp(text.as_bytes());
            let _ = parse_flow_reply(&text);
            let _ = E164::parse_mobile(&text, "GB");
            let _ = E164::from_wa_id(&text);
            if let Some(kind) = InboxKind::parse(KINDS[kind]) {
                let _ = InboundEvent::decode(&kind, &text);
            }
            if let Some(kind) = JobKind::parse(KINDS[kind]) {
                let _ = Job::decode(kind, &text);
            }
        }

        /// JSON of the right outline but arbitrary values decodes or is refused, never panics.
        #[test]
        fn shaped_events_never_panic(id in "\\PC{0,30}", status in "\\PC{0,12}", code in any::<i64>(), body in "\\PC{0,60}") {
            let message = serde_json::json!({"message": {"from": id, "id": id, "timestamp": body, "type": status,
                "text": {"body": body}, "interactive": {"type": status, "nfm_reply": {"response_json": body}}}});
            let _ = InboundEvent::decode(&InboxKind::WhatsAppMessage, &message.to_string());
            let update = serde_json::json!({"status": {"id": id, "status": status, "errors": [{"code": code, "title": body}]}});
            let _ = InboundEvent::decode(&InboxKind::WhatsAppStatus, &update.to_string());
            let job = serde_json::json!({"message_id": code, "referral_id": code, "contact_id": id});
            for kind in JobKind::ALL {
                let _ = Job::decode(*kind, &job.to_string());
            }
        }
    }
}
