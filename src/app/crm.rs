//! HubSpot updates that mirror our records: the referrer's status and counters, issued
//! rewards, credit totals, opt-outs, and the referrer–friend link. Each reads the
//! current record when it runs (so an older job cannot write a stale value) and writes
//! nothing to our database.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Outcome, Services, StepError, StepResult, Work};
use crate::domain::ids::HubSpotId;
use crate::domain::phone::E164;
use crate::domain::state::{InviteState, Persisted};
use crate::store::InviteForCrm;

fn string(value: impl Into<String>) -> Value {
    Value::String(value.into())
}

/// Once the referrer's reward for a referral of the invite is issued or capped, its jobs
/// (`referrer_rewarded`, `referrer_capped`) own the referrer's status.
const REWARD_OWNS_STATUS: &str = "the referrer's reward";

/// `referral_status` (and the code, on the invite) on the referrer's contact. The status
/// written is the invite's when the job runs, never older than the job's own: the jobs
/// of one invite (its tap's, its nomination's) may run side by side or out of order. So
/// a job overtaken by its invite writes nothing but its code, and each write is read
/// back until the invite stands still. A job held up until after the referrer's reward
/// (a HubSpot outage's retries run in any order) writes only its code: `rewarded` or
/// `reward_capped` stays. An opt-out owns the status, as in [`update_status`]. The
/// invite, its referrer's reward and the opt-out are read in one statement.
pub async fn referrer_status(
    s: &Services,
    work: &Work,
    invite_id: i64,
    contact_id: &str,
    status: InviteState,
    code: Option<&str>,
) -> StepResult {
    let contact = HubSpotId::parse(contact_id)?;
    let read = || async {
        s.store
            .invite_for_crm(invite_id)
            .await?
            .ok_or_else(|| StepError::Permanent(format!("invite {invite_id} not found")))
    };
    // The job's status, or the invite's when it has moved past it.
    let newest = |seen: &InviteForCrm| {
        if status.may_advance_to(seen.state) {
            seen.state
        } else {
            status
        }
    };
    // Once the referrer's reward is settled, its status is the reward's.
    let reward_status = |seen: &InviteForCrm| {
        if seen.referrer_rewarded {
            Some("rewarded")
        } else if seen.referrer_capped {
            Some("reward_capped")
        } else {
            None
        }
    };
    let seen = read().await?;
    let overtaken_by = if reward_status(&seen).is_some() {
        Some(REWARD_OWNS_STATUS)
    } else {
        (newest(&seen) != status).then(|| seen.state.as_str())
    };
    if let (None, Some(by)) = (code, overtaken_by) {
        return Outcome::done(format!(
            "contact {contact_id}: {} overtaken by {by}, whose job writes it",
            status.as_str()
        ));
    }
    // The invite's variant goes with its code.
    let variant = code.and_then(|_| Some(format!("{}:{}", seen.experiment.as_deref()?, seen.variant.as_deref()?)));
    let mut properties = s.referrer_properties(newest(&seen).as_str(), code, variant);
    if reward_status(&seen).is_some() {
        // The code still belongs on the contact; the status is the reward's.
        properties.remove(&s.settings.hubspot_properties.referral_status);
        s.hubspot
            .update_contact(&contact, &properties, Some(work.job_id()))
            .await?;
        return Outcome::done(format!(
            "contact {contact_id}: code only, {} overtaken by {REWARD_OWNS_STATUS}",
            status.as_str()
        ));
    }
    let (outcome, written) = write_status_until_still(
        s,
        work,
        &contact,
        seen,
        read,
        // A reward settled while this job's write was on its way: its status again, in
        // case this write landed after the reward's.
        |seen| reward_status(seen).or(Some(newest(seen).as_str())),
        |seen| seen.contact_opted_out,
        properties,
    )
    .await?;
    Outcome::done(format!(
        "contact {contact_id}: {} ({})",
        written.unwrap_or("-"),
        outcome.as_str()
    ))
}

/// Writes `properties` with the contact's `referral_status` as `status_of` reads it from
/// `seen`, then reads again (`read`) and writes the status again until it stands still
/// (at most three writes): jobs about one contact run side by side and in any order, so
/// the last write must be of the newest reading. An opt-out owns the status, as in
/// [`update_status`]: left out when the contact opted out, and `opted_out` written again
/// when the opt-out came while a write was on its way. Returns what was done and the
/// last status written.
#[allow(clippy::too_many_arguments)] // each is one part of the one loop
pub(super) async fn write_status_until_still<T, F, Fut>(
    s: &Services,
    work: &Work,
    contact: &HubSpotId,
    mut seen: T,
    mut read: F,
    status_of: impl Fn(&T) -> Option<&'static str>,
    opted_out: impl Fn(&T) -> bool,
    mut properties: Map<String, Value>,
) -> Result<(StatusWrite, Option<&'static str>), StepError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StepError>>,
{
    let status_name = &s.settings.hubspot_properties.referral_status;
    let mut written = None;
    for _ in 0..3 {
        if opted_out(&seen) {
            properties.remove(status_name);
            let outcome = if written.is_some() {
                properties.insert(status_name.clone(), string("opted_out"));
                StatusWrite::OptedOutMeanwhile
            } else {
                StatusWrite::LeftOptedOut
            };
            if !properties.is_empty() {
                s.hubspot
                    .update_contact(contact, &properties, Some(work.job_id()))
                    .await?;
            }
            return Ok((outcome, written));
        }
        let Some(status) = status_of(&seen) else {
            break;
        };
        if written == Some(status) {
            break;
        }
        properties.insert(status_name.clone(), string(status));
        s.hubspot
            .update_contact(contact, &properties, Some(work.job_id()))
            .await?;
        written = Some(status);
        properties = Map::new();
        seen = read().await?;
    }
    Ok((StatusWrite::Written, written))
}

/// What [`update_status`] did with `referral_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    Written,
    /// The contact had opted out: the status was left as `opted_out`.
    LeftOptedOut,
    /// The contact opted out while the update was on its way: `opted_out` written again.
    OptedOutMeanwhile,
}

impl StatusWrite {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusWrite::Written => "written",
            StatusWrite::LeftOptedOut => "status left as opted_out",
            StatusWrite::OptedOutMeanwhile => "opted out meanwhile",
        }
    }
}

/// Writes `properties` with `referral_status` = `status` to a contact. An opt-out owns
/// that status (`sync_opt_out` writes `opted_out`): for a contact whose number opted out
/// the status is left out, and when the opt-out was recorded while this update was on its
/// way, `opted_out` is written again after it. So whichever of the two jobs runs last,
/// HubSpot ends with `opted_out`. Every write of `referral_status` but the opt-out's own
/// goes through here or through [`write_status_until_still`], whose loop this is with the
/// opt-out as the only reading.
pub(super) async fn update_status(
    s: &Services,
    work: &Work,
    contact_id: &str,
    status: &'static str,
    properties: Map<String, Value>,
) -> Result<StatusWrite, StepError> {
    let contact = HubSpotId::parse(contact_id)?;
    let read = || async { s.store.contact_opted_out(contact_id).await.map_err(StepError::from) };
    let opted_out = read().await?;
    let (outcome, _) = write_status_until_still(
        s,
        work,
        &contact,
        opted_out,
        read,
        |_| Some(status),
        |opted_out| *opted_out,
        properties,
    )
    .await?;
    Ok(outcome)
}

/// The referrer's reward was capped.
pub async fn referrer_capped(s: &Services, work: &Work, contact_id: &str) -> StepResult {
    let written = update_status(s, work, contact_id, "reward_capped", Map::new()).await?;
    Outcome::done(format!("contact {contact_id}: reward_capped ({})", written.as_str()))
}

/// An issued reward on the beneficiary's contact.
pub async fn reward_recorded(s: &Services, work: &Work, contact_id: &str, given: &str) -> StepResult {
    let names = &s.settings.hubspot_properties;
    let mut properties = Map::new();
    properties.insert(names.referral_reward.clone(), string(given));
    let written = update_status(s, work, contact_id, "rewarded", properties).await?;
    Outcome::done(format!("contact {contact_id}: rewarded ({})", written.as_str()))
}

/// The referrer's reward issued: `rewarded`, the reward given and the counters from the
/// ledger, in one write (one HubSpot write for the moment, where a reward and a counter
/// job made two). The counters are then read again until they match what was written.
pub async fn referrer_rewarded(s: &Services, work: &Work, contact_id: &str, given: &str) -> StepResult {
    let names = &s.settings.hubspot_properties;
    let counters = s.store.referrer_counters(contact_id).await?;
    let mut properties = counter_properties(s, &counters);
    properties.insert(names.referral_reward.clone(), string(given));
    let written = update_status(s, work, contact_id, "rewarded", properties).await?;
    let (converted, total, bonuses) = write_until_stable(
        s,
        work,
        contact_id,
        Some(counters),
        || s.store.referrer_counters(contact_id),
        |counters| counter_properties(s, counters),
    )
    .await?
    .unwrap_or_default();
    Outcome::done(format!(
        "contact {contact_id}: rewarded ({}), {converted} converted, {total} rewarded, {bonuses} in bonuses",
        written.as_str()
    ))
}

/// Mirrors an opt-out (or its lifting) onto every HubSpot contact with that number.
pub async fn sync_opt_out(s: &Services, work: &Work, phone: &E164, opted_out: bool) -> StepResult {
    // Stored ids that are not valid HubSpot ids are skipped, never sent.
    let mut ids: Vec<HubSpotId> = s
        .store
        .contact_ids_for_phone(phone)
        .await?
        .iter()
        .filter_map(|id| HubSpotId::parse(id).ok())
        .collect();
    if ids.is_empty() {
        let region = &s.settings.programme.default_region;
        let found = s
            .hubspot
            .search_by_phone(phone, &[], region, Some(work.job_id()))
            .await?;
        ids = found.iter().filter_map(|c| HubSpotId::parse(&c.id).ok()).collect();
    }
    let names = &s.settings.hubspot_properties;
    let mut properties = Map::new();
    properties.insert(
        names.whatsapp_opted_out.clone(),
        string(if opted_out { "true" } else { "false" }),
    );
    if opted_out {
        properties.insert(names.referral_status.clone(), string("opted_out"));
    }
    for id in &ids {
        s.hubspot.update_contact(id, &properties, Some(work.job_id())).await?;
    }
    Outcome::done(format!("opt-out mirrored to {} contact(s)", ids.len()))
}

/// Writes `read()` to the contact until what was written (`written`, when the caller
/// wrote it already) equals a fresh reading: another job may have written an older
/// reading after ours.
async fn write_until_stable<T, F, Fut>(
    s: &Services,
    work: &Work,
    contact_id: &str,
    mut written: Option<T>,
    mut read: F,
    properties: impl Fn(&T) -> Map<String, Value>,
) -> Result<Option<T>, StepError>
where
    T: PartialEq,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let contact = HubSpotId::parse(contact_id)?;
    for _ in 0..3 {
        let reading = read().await?;
        if written.as_ref() == Some(&reading) {
            break;
        }
        s.hubspot
            .update_contact(&contact, &properties(&reading), Some(work.job_id()))
            .await?;
        written = Some(reading);
    }
    Ok(written)
}

/// The referrer's counters as HubSpot properties: converted referrals, rewards issued,
/// bonuses.
fn counter_properties(s: &Services, (converted, total, bonuses): &(i64, i64, i64)) -> Map<String, Value> {
    let names = &s.settings.hubspot_properties;
    let mut properties = Map::new();
    properties.insert(names.referrals_converted.clone(), string(converted.to_string()));
    properties.insert(names.referral_rewards_total.clone(), string(total.to_string()));
    properties.insert(names.referral_bonus_total.clone(), string(bonuses.to_string()));
    properties
}

/// The referrer's counters, from the ledger (never incremented).
pub async fn referrer_counters(s: &Services, work: &Work, contact_id: &str) -> StepResult {
    let written = write_until_stable(
        s,
        work,
        contact_id,
        None,
        || s.store.referrer_counters(contact_id),
        |counters| counter_properties(s, counters),
    )
    .await?;
    let (converted, total, bonuses) = written.unwrap_or_default();
    Outcome::done(format!(
        "contact {contact_id}: {converted} converted, {total} rewarded, {bonuses} in bonuses"
    ))
}

/// A contact's credit property, from its issued `hubspot_credit` rewards.
pub async fn credit_total(s: &Services, work: &Work, contact_id: &str, property: &str) -> StepResult {
    let written = write_until_stable(
        s,
        work,
        contact_id,
        None,
        || s.store.contact_credit_total(contact_id),
        |total: &i64| {
            let mut properties = Map::new();
            properties.insert(property.to_string(), string(total.to_string()));
            properties
        },
    )
    .await?;
    Outcome::done(format!("contact {contact_id}: credit {}", written.unwrap_or_default()))
}

/// Links referrer and friend ("Referred" / "Referred by") and notes the conversion on
/// both timelines. The association is idempotent; the note comes last.
pub async fn link_referral(s: &Services, work: &Work, referral_id: i64) -> StepResult {
    let Some(referral) = s.store.referral(referral_id).await? else {
        return Err(StepError::Permanent(format!("referral {referral_id} not found")));
    };
    let Some(friend) = referral.friend_contact_id.as_deref() else {
        return Err(StepError::retry_after(
            "waiting for the friend's contact",
            Duration::from_secs(2),
        ));
    };
    let friend = HubSpotId::parse(friend)?;
    let referrer = HubSpotId::parse(&referral.referrer_contact_id)?;
    let job_id = Some(work.job_id());
    let type_id = s
        .hubspot
        .referral_association_type("referrer_referred", "Referred", "Referred by", job_id)
        .await?;
    s.hubspot
        .associate_contacts(&referrer, &friend, type_id, job_id)
        .await?;
    let note = format!(
        "<p>Referral {}: {} (contact {friend}) converted with code {}, referred by contact {referrer}.</p>",
        referral.id,
        html_escape(&referral.friend_name),
        html_escape(&referral.referral_code)
    );
    s.hubspot
        .add_note(&[&referrer, &friend], &note, s.now_ms(), job_id)
        .await?;
    Outcome::done(format!("contacts {referrer} and {friend} linked (type {type_id})"))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
