//! Step 3–4: the customer's Flow reply nominates a friend; the nomination is screened
//! (opted out? already a customer?) and the referral machine chooses how to reach them.

use std::time::Duration;

use super::transition::{self, EventContext};
use super::{Outcome, Services, StepError, StepResult, Work};
use crate::domain::flow_token::FlowToken;
use crate::domain::ids::HubSpotId;
use crate::domain::messaging::MessagePurpose;
use crate::domain::nomination::{
    self, check_standing, parse_flow_reply, FlowReply, Nomination, NominationRefusal, Standing,
};
use crate::domain::phone::E164;
use crate::domain::referral::{ReferralEvent, ReferralState};
use crate::domain::state::InviteState;
use crate::domain::work::Job;
use crate::integrations::hubspot::FoundContact;
use crate::store::{InviteRow, NewReferral, ReferralInsert};
use crate::telemetry::mask_phone;
use crate::whatsapp::inbound::InboundMessage;
use crate::whatsapp::render;

/// A completed Flow: validated, then recorded as a referral with its screening queued,
/// or refused with a reply to the referrer, in one transaction.
pub async fn on_flow_reply(
    s: &Services,
    work: &Work,
    from: &E164,
    message: &InboundMessage,
    response_json: &str,
) -> StepResult {
    let Some(reply) = parse_flow_reply(response_json) else {
        return Outcome::done("flow reply without a readable response_json");
    };
    let refuse = |refusal: NominationRefusal, language: Option<&str>| {
        let language = language.unwrap_or(&s.settings.templates.default_language).to_string();
        refuse(s, work, from, &message.wamid, refusal, &reply.friend_name, language)
    };
    let token = match (&reply.flow_token, &message.context_id) {
        (Some(token), _) => Some(token.clone()),
        // Some clients omit the token: take it from the Flow message this replies to.
        (None, Some(context)) => s
            .store
            .message_by_wamid(context)
            .await?
            .filter(|sent| sent.purpose == MessagePurpose::Flow)
            .and_then(|sent| render::flow_token_of(&sent.body)),
        (None, None) => None,
    };
    let Some(token) = token else {
        return refuse(NominationRefusal::InvalidToken, None).await;
    };
    let Some(invite) = invite_for_token(s, &token).await? else {
        return refuse(NominationRefusal::InvalidToken, None).await;
    };
    if invite.phone.as_ref() != Some(from) {
        return refuse(NominationRefusal::InvalidToken, None).await;
    }
    let language = Some(invite.language.as_str());
    // The friend's own facts (taken, opted out, a customer) are known later: the insert's
    // unique index and the screening job decide them.
    let nomination = match check(s, &invite, from, &reply, Standing::default()).await? {
        Ok(n) => n,
        Err(refusal) => return refuse(refusal, language).await,
    };
    let new = NewReferral {
        invite_id: invite.id,
        flow_token: token,
        referrer_contact_id: invite.contact_id.clone(),
        referrer_phone: Some(from.clone()),
        referrer_name: invite.first_name.clone(),
        referral_code: invite.referral_code.clone().unwrap_or_default(),
        friend_phone: Some(nomination.friend_phone.clone()),
        friend_name: nomination.friend_name.clone(),
        personal_message: nomination.personal_message.clone(),
        consent: nomination.consent,
        language: invite.language.clone(),
    };
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    // Counted again under the referrer's lock: the count in `check` was an early answer.
    if tx.count_open_referrals_locked(&invite.contact_id).await? >= s.settings.programme.max_open_referrals {
        drop(tx);
        return refuse(NominationRefusal::TooManyOpenReferrals, language).await;
    }
    // Open referrals of this number older than the window expire, so the first
    // nomination wins only within the window.
    for stale in tx
        .stale_open_referrals(&nomination.friend_phone, s.attribution_window_start())
        .await?
    {
        transition::apply(s, &mut tx, stale.id, &ReferralEvent::Expired, EventContext::default()).await?;
    }
    let note = match tx.insert_referral(&new).await? {
        ReferralInsert::Created(id) => {
            tx.enqueue(s.job(Job::ScreenReferral {
                referral_id: id,
                business_number: message.business_number.clone(),
            }));
            tx.enqueue(s.job(Job::ReferrerStatus {
                invite_id: invite.id,
                contact_id: invite.contact_id.clone(),
                status: InviteState::Nominated,
                code: None,
            }));
            tx.advance_invite(invite.id, InviteState::Nominated).await?;
            let reminders = &s
                .settings_for(invite.experiment.as_deref(), invite.variant.as_deref())
                .reminders;
            if reminders.nudge {
                let due = s.now_ms() + crate::clock::duration_ms(*reminders.friend_after);
                let nudge = Job::ReferrerNudge {
                    referral_id: id,
                    business_number: message.business_number.clone(),
                };
                tx.enqueue(s.job_at(nudge, due));
            }
            tracing::info!(referral_id = id, friend = %mask_phone(nomination.friend_phone.as_str()), "friend nominated");
            format!("referral {id} nominated")
        }
        ReferralInsert::TokenAlreadyUsed(id) => format!("flow token already used by referral {id}"),
        ReferralInsert::FriendTaken(id) => {
            let refusal = NominationRefusal::AlreadyReferred;
            let body = render::refusal(&s.settings, &new.language, &refusal, &new.friend_name, from.as_str());
            let key = format!("referral:{id}:refusal");
            let reply = crate::store::NewMessage {
                referral_id: Some(id),
                ..s.message(key, MessagePurpose::Refusal, from, false, body)
            };
            tx.insert_message(&reply).await?;
            format!("referral {id} refused: {}", refusal.reason())
        }
    };
    Ok(tx.commit(note).await?.into())
}

/// A nomination refused before it became a referral: the reason, told to the referrer
/// inside the window their reply opened.
async fn refuse(
    s: &Services,
    work: &Work,
    from: &E164,
    wamid: &str,
    refusal: NominationRefusal,
    friend_name: &str,
    language: String,
) -> StepResult {
    let body = render::refusal(&s.settings, &language, &refusal, friend_name, from.as_str());
    let reply = s.message(format!("refusal:{wamid}"), MessagePurpose::Reply, from, false, body);
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    tx.insert_message(&reply).await?;
    let note = format!("nomination refused: {}", refusal.reason());
    let committed = tx.commit(note).await?;
    tracing::info!(reason = refusal.reason(), "nomination refused");
    Ok(committed.into())
}

/// The `referral.screen` job: checks that need HubSpot (is the friend already a
/// customer?) and the store (did the friend opt out?), then the machine's choice. The
/// one search by the friend's phone also answers which contact is theirs: a friend who
/// passes has a contact found recorded now, and one not found is created without a
/// second search, so a nomination costs one of HubSpot's searches (four a second per
/// account), not two.
pub async fn screen(s: &Services, work: &Work, referral_id: i64, business_number: &str) -> StepResult {
    let Some(referral) = s.store.referral(referral_id).await? else {
        return Err(StepError::Permanent(format!("referral {referral_id} not found")));
    };
    if referral.state != ReferralState::Nominated {
        return Outcome::done(format!("already screened ({:?})", referral.state));
    }
    let friend = referral
        .friend_phone
        .clone()
        .ok_or_else(|| StepError::Permanent("the referral has no friend's number".into()))?;
    let opted_out = s.store.is_opted_out(&friend).await?;
    let searched_at = s.now_ms();
    let found = match opted_out {
        true => None,
        false => Some(search_friend(s, &friend, Some(work.job_id())).await?),
    };
    let refusal = check_standing(&Standing {
        friend_opted_out: Some(opted_out),
        friend_is_customer: found.as_deref().map(|contacts| any_customer(s, contacts)),
        ..Standing::default()
    })
    .err();
    let passed = refusal.is_none();
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let mut ctx = EventContext {
        business_number,
        ..EventContext::default()
    };
    match found.as_deref() {
        Some([contact, ..]) if passed => {
            // Recorded before the move, which then queues the friend's status sync.
            let id = HubSpotId::parse(&contact.id)?;
            tx.set_friend_contact_id(referral_id, id.as_str()).await?;
        }
        Some([]) => ctx.friend_searched_at = Some(searched_at),
        _ => {}
    }
    let event = ReferralEvent::Screened { refusal };
    let applied = transition::apply(s, &mut tx, referral_id, &event, ctx).await?;
    let note = format!("referral {referral_id} {applied}");
    Ok(tx.commit(note).await?.into())
}

/// The invite a Flow token was issued for: signed by us, for an invite that exists.
pub async fn invite_for_token(s: &Services, token: &str) -> Result<Option<InviteRow>, StepError> {
    let Ok(verified) = FlowToken::verify(token, &s.flow_token_secret) else {
        return Ok(None);
    };
    Ok(s.store.invite(verified.invite_id).await?)
}

/// The nomination rules both Flows share: the fields, then the referrer's open-referral
/// limit, then whatever `known` already says of the friend.
pub async fn check(
    s: &Services,
    invite: &InviteRow,
    referrer: &E164,
    form: &FlowReply,
    known: Standing,
) -> Result<Result<Nomination, NominationRefusal>, StepError> {
    let nomination = match nomination::validate(form, referrer, &s.settings.programme.default_region) {
        Ok(n) => n,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let open = s.store.count_open_referrals(&invite.contact_id).await?;
    let standing = Standing {
        referrer_at_limit: Some(open >= s.settings.programme.max_open_referrals),
        ..known
    };
    Ok(check_standing(&standing).map(|()| nomination))
}

/// The contacts HubSpot has for the number, with their lifecycle stage (a customer's is
/// `programme.customer_lifecycle_stage`).
async fn search_friend(s: &Services, friend: &E164, job_id: Option<i64>) -> Result<Vec<FoundContact>, StepError> {
    Ok(s.hubspot
        .search_by_phone(
            friend,
            &[stage_property(s)],
            &s.settings.programme.default_region,
            job_id,
        )
        .await?)
}

/// The same, if the search pace has a place within `limit` (`None` when it has not).
pub async fn is_customer_within(s: &Services, friend: &E164, limit: Duration) -> Result<Option<bool>, StepError> {
    let contacts = s
        .hubspot
        .search_by_phone_within(
            friend,
            &[stage_property(s)],
            &s.settings.programme.default_region,
            limit,
        )
        .await?;
    Ok(contacts.map(|found| any_customer(s, &found)))
}

fn stage_property(s: &Services) -> &str {
    s.settings.hubspot_properties.lifecycle_stage.as_str()
}

fn any_customer(s: &Services, contacts: &[FoundContact]) -> bool {
    let stage = &s.settings.programme.customer_lifecycle_stage;
    contacts
        .iter()
        .any(|c| c.property(stage_property(s)) == Some(stage.as_str()))
}
