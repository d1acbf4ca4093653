//! The nominated friend: arriving through a share link (a text with the code from a new
//! or the nominated number), and their HubSpot contact, created once and kept in step
//! with the referral.

use serde_json::{Map, Value};

use super::transition::{self, EventContext};
use super::{Outcome, Services, StepError, StepResult, Work};
use crate::domain::code::codes_in_text;
use crate::domain::ids::HubSpotId;
use crate::domain::phone::E164;
use crate::domain::referral::{friend_crm_status, friend_hubspot_status, ReferralEvent, ReferralState};
use crate::domain::state::Persisted;
use crate::domain::work::Job;
use crate::store::ReferralForCrm;

/// A text from someone who may be a friend arriving through a share link.
pub async fn on_text(s: &Services, work: &Work, from: &E164, body: &str) -> StepResult {
    let codes = codes_in_text(body);
    let Some(referral) = s.store.referral_awaiting_friend(from, &codes).await? else {
        return Outcome::done("text not matched to a referral");
    };
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    // Matched by code from another number: the friend uses this one.
    let ctx = EventContext {
        arrived_from: Some(from),
        ..EventContext::default()
    };
    let applied = transition::apply(s, &mut tx, referral.id, &ReferralEvent::FriendArrived, ctx).await?;
    // The friend opened a 24-hour window: one reminder may go inside it (keyed by the
    // referral, so once however often they write).
    let reminders = &s.settings.reminders;
    if reminders.friend {
        let due = s.now_ms() + crate::clock::duration_ms(*reminders.friend_reminder_after);
        tx.enqueue(s.job_at(
            Job::FriendReminder {
                referral_id: referral.id,
            },
            due,
        ));
    }
    let note = format!("friend arrived for referral {} ({applied})", referral.id);
    Ok(tx.commit(note).await?.into())
}

/// How long screening's search for the friend's phone stands in for the contact
/// creation's own: one search per nominated friend, where HubSpot allows four a second.
const SCREENING_SEARCH_TRUSTED_MS: i64 = 30_000;

/// The `hubspot.create_friend` job: finds the friend's contact by phone or creates it,
/// then records its id; the status updates (`hubspot.sync_friend`) wait for it.
pub async fn create_contact(s: &Services, work: &Work, referral_id: i64, searched_at: Option<i64>) -> StepResult {
    let Some(referral) = s.store.referral(referral_id).await? else {
        return Err(StepError::Permanent(format!("referral {referral_id} not found")));
    };
    if let Some(id) = &referral.friend_contact_id {
        return Outcome::done(format!("friend contact {id} already recorded"));
    }
    let phone = referral
        .friend_phone
        .clone()
        .ok_or_else(|| StepError::Permanent("the referral has no friend's number".into()))?;
    // Screening's search found no contact moments ago: a first attempt trusts it. A retry
    // searches (an interrupted attempt may have created the contact), and so does a job
    // that ran late (the friend may have given the business their details meanwhile).
    let trusted = searched_at.is_some_and(|at| work.attempts <= 1 && s.now_ms() - at <= SCREENING_SEARCH_TRUSTED_MS);
    let found = if trusted {
        Vec::new()
    } else {
        let region = &s.settings.programme.default_region;
        s.hubspot
            .search_by_phone(&phone, &[], region, Some(work.job_id()))
            .await?
    };
    // The status the contact carries once this job is done: none for a contact found
    // (the sync writes it), the read state's for one created with it.
    let (id, written) = match found.first() {
        Some(contact) => (HubSpotId::parse(&contact.id)?, None),
        None => {
            let names = &s.settings.hubspot_properties;
            let mut create = properties(s, &referral.referral_code, &referral.referrer_contact_id);
            let status = friend_hubspot_status(referral.state).unwrap_or("nominated");
            create.insert(names.referral_status.clone(), Value::String(status.into()));
            create.insert("phone".into(), Value::String(phone.as_str().into()));
            create.insert(names.first_name.clone(), Value::String(referral.friend_name.clone()));
            let id = s.hubspot.create_contact(&create, Some(work.job_id())).await?;
            (id, friend_hubspot_status(referral.state))
        }
    };
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    // Locked: a transition either committed before this (and queued no sync, the contact
    // being unknown), so the state read here is the one to write, or it waits and then
    // sees the contact and queues its own sync.
    let Some(current) = tx.referral_for_update(referral.id).await? else {
        return Err(StepError::Permanent(format!("referral {referral_id} not found")));
    };
    tx.set_friend_contact_id(referral.id, id.as_str()).await?;
    let status = friend_hubspot_status(current.state);
    if status.is_some() && status != written {
        tx.enqueue(s.job(Job::SyncFriend {
            referral_id: referral.id,
            state: current.state,
        }));
    }
    let note = format!("friend contact {id}");
    Ok(tx.commit(note).await?.into())
}

/// The friend's referral properties besides the status: the code and the referrer.
fn properties(s: &Services, referral_code: &str, referrer_contact_id: &str) -> Map<String, Value> {
    let names = &s.settings.hubspot_properties;
    let mut properties = Map::new();
    properties.insert(names.referred_by_code.clone(), Value::String(referral_code.into()));
    properties.insert(
        names.referrer_contact_id.clone(),
        Value::String(referrer_contact_id.into()),
    );
    properties
}

/// The `hubspot.sync_friend` job: the friend's properties from the referral as it is
/// when the job runs. A job whose state the referral has left writes nothing (the newer
/// state's job, or the contact's creation, writes it); the status is read back after
/// each write until it stands still, and a converted friend whose reward was issued is
/// `rewarded`, so a late conversion update cannot undo the reward's.
pub async fn sync_contact(s: &Services, work: &Work, referral_id: i64, state: ReferralState) -> StepResult {
    let read = || async {
        s.store
            .referral_for_crm(referral_id)
            .await?
            .ok_or_else(|| StepError::Permanent(format!("referral {referral_id} not found")))
    };
    let seen = read().await?;
    if seen.state != state {
        return Outcome::done(format!(
            "{} overtaken by {}, whose update writes it",
            state.as_str(),
            seen.state.as_str()
        ));
    }
    if friend_crm_status(seen.state, seen.friend_rewarded).is_none() {
        return Outcome::done("nothing to record for this state");
    }
    // Queued only once the contact is recorded (see `create_contact`); a job queued by
    // an older binary may still come first, and waits.
    let Some(contact_id) = seen.friend_contact_id.clone() else {
        return Err(StepError::retry_after(
            "waiting for the friend's contact",
            std::time::Duration::from_secs(2),
        ));
    };
    let contact = HubSpotId::parse(&contact_id)?;
    let properties = properties(s, &seen.referral_code, &seen.referrer_contact_id);
    let (outcome, written) = super::crm::write_status_until_still(
        s,
        work,
        &contact,
        seen,
        read,
        |seen: &ReferralForCrm| friend_crm_status(seen.state, seen.friend_rewarded),
        |seen: &ReferralForCrm| seen.contact_opted_out,
        properties,
    )
    .await?;
    Outcome::done(format!(
        "friend contact {contact_id}: {} ({})",
        written.unwrap_or("-"),
        outcome.as_str()
    ))
}
