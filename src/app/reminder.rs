//! Reminders referloop sends on its own (`[reminders]`). Each is a job queued, with its due
//! time, in the transaction that makes it due, and made pointless by later transitions,
//! which end its job and suppress its queued message (`Tx::cancel_reminder`): the
//! promoter's reminder by a tap or a nomination (`Tx::advance_invite`), the referrer's
//! nudge by a conversion, a refusal or an expiry (`Tx::move_referral`). When it runs it
//! decides on the invite or referral read locked, so a transition committing at the same
//! moment is seen by one or the other. Each is a marketing template: a number that opted
//! out gets none, and one over the weekly cap is skipped, not held (a late reminder is
//! worse than none).

use super::{Outcome, Services, StepError, StepResult, Work};
use crate::clock::duration_ms;
use crate::domain::messaging::MessagePurpose;
use crate::domain::phone::E164;
use crate::domain::send_window::{cap_frees_at, LocalZone, CAP_PERIOD};
use crate::domain::state::{InviteState, Persisted};
use crate::store::{NewMessage, ReferralRow, Tx};
use crate::whatsapp::render;
use jiff::Timestamp;

/// The `reminder.promoter` job: `tmpl_referral_reminder` to a customer who was invited and
/// has neither tapped "Refer someone" nor nominated, once per invite.
pub async fn promoter(s: &Services, work: &Work, invite_id: i64) -> StepResult {
    if !s.settings_for_invite(invite_id).await?.reminders.promoter {
        return Outcome::done("skipped: reminders.promoter is off");
    }
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let Some(invite) = tx.invite_for_update(invite_id).await? else {
        return Ok(tx.commit(format!("invite {invite_id} not found")).await?.into());
    };
    if invite.state != InviteState::Invited {
        let note = format!("cancelled: the customer is {} already", invite.state.as_str());
        return Ok(tx.commit(note).await?.into());
    }
    let (Some(phone), Some(code)) = (&invite.phone, &invite.referral_code) else {
        return Ok(tx.commit("invite without a number or a code").await?.into());
    };
    if tx.is_opted_out(phone).await? {
        return Ok(tx.commit("cancelled: the customer opted out").await?.into());
    }
    if let Some(note) = over_cap(s, phone).await? {
        return Ok(tx.commit(note).await?.into());
    }
    let body = render::reminder(
        &s.settings,
        phone.as_str(),
        &invite.language,
        &invite.first_name,
        code,
        invite_id,
    );
    let message = NewMessage {
        invite_id: Some(invite_id),
        ..s.message(
            format!("reminder:{invite_id}"),
            MessagePurpose::Reminder,
            phone,
            true,
            body,
        )
    };
    tx.insert_message(&message).await?;
    tx.mark_reminded(invite_id).await?;
    Ok(tx
        .commit(format!("reminder queued for invite {invite_id}"))
        .await?
        .into())
}

/// The `reminder.nudge` job: `tmpl_referral_nudge` to the referrer, once per referral,
/// when the friend has not converted; with a share link to forward.
pub async fn nudge(s: &Services, work: &Work, referral_id: i64, business_number: &str) -> StepResult {
    // As the referral's experiment variant has it (a read only while experiments run).
    let on = match s.experiments.is_empty() {
        true => s.settings.reminders.nudge,
        false => match s.store.referral(referral_id).await? {
            Some(r) => s.settings_for_invite(r.invite_id).await?.reminders.nudge,
            None => s.settings.reminders.nudge,
        },
    };
    if !on {
        return Outcome::done("skipped: reminders.nudge is off");
    }
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let r = match still_open(&mut tx, referral_id).await? {
        Ok(r) => r,
        Err(note) => return Ok(tx.commit(note).await?.into()),
    };
    // Referrals expire when a later nomination of the friend finds them past the window;
    // one past it is expired for the nudge too.
    if r.nominated_at < s.attribution_window_start() {
        return Ok(tx.commit("cancelled: past the attribution window").await?.into());
    }
    let Some(phone) = &r.referrer_phone else {
        return Ok(tx.commit("referral without the referrer's number").await?.into());
    };
    if tx.is_opted_out(phone).await? {
        return Ok(tx.commit("cancelled: the referrer opted out").await?.into());
    }
    if let Some(note) = over_cap(s, phone).await? {
        return Ok(tx.commit(note).await?.into());
    }
    let text = super::referral_text(&r);
    let body = render::nudge(&s.settings, &text, phone.as_str(), business_number);
    let message = NewMessage {
        referral_id: Some(referral_id),
        ..s.message(format!("nudge:{referral_id}"), MessagePurpose::Nudge, phone, true, body)
    };
    tx.insert_message(&message).await?;
    tx.mark_nudged(referral_id).await?;
    Ok(tx
        .commit(format!("nudge queued for referral {referral_id}"))
        .await?
        .into())
}

/// The referral a reminder is about, read locked, while one may still help; otherwise why
/// not (the job ends with it).
async fn still_open(tx: &mut Tx, referral_id: i64) -> Result<Result<ReferralRow, String>, StepError> {
    let Some(r) = tx.referral_for_update(referral_id).await? else {
        return Ok(Err(format!("referral {referral_id} not found")));
    };
    if r.state.ends_nudging() {
        return Ok(Err(format!("cancelled: the referral is {}", r.state.as_str())));
    }
    Ok(Ok(r))
}

/// Why a reminder to `phone` is skipped for the weekly cap, if it is.
async fn over_cap(s: &Services, phone: &E164) -> Result<Option<String>, StepError> {
    let now = s.now_ms();
    let sent = s
        .store
        .marketing_sent_to(phone, now - duration_ms(CAP_PERIOD), None)
        .await?;
    let cap = s.settings.messaging.max_marketing_per_contact_per_week;
    Ok(cap_frees_at(&sent, cap, now).map(|_| format!("skipped: {cap} marketing templates in the last seven days")))
}

/// The `reminder.friend` job: a free-form text to a friend who wrote to us and has not
/// bought, once per referral, only inside the 24-hour window their message opened (a
/// friend who did not opt in never gets a second template) and in their daytime.
pub async fn friend(s: &Services, work: &Work, referral_id: i64) -> StepResult {
    if !s.settings.reminders.friend {
        return Outcome::done("skipped: reminders.friend is off");
    }
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let r = match still_open(&mut tx, referral_id).await? {
        Ok(r) => r,
        Err(note) => return Ok(tx.commit(note).await?.into()),
    };
    let Some(phone) = &r.friend_phone else {
        return Ok(tx.commit("referral without the friend's number").await?.into());
    };
    if tx.is_opted_out(phone).await? {
        return Ok(tx.commit("cancelled: the friend opted out").await?.into());
    }
    // The window must still be open when the text leaves: now, or when quiet hours end.
    let now = s.now_ms();
    let messaging = &s.settings.messaging;
    let zone = LocalZone::of_recipient(None, phone, &messaging.default_timezone);
    let leaves = Timestamp::from_millisecond(now)
        .ok()
        .and_then(|at| messaging.send_window.next_opening(at, zone.zone()))
        .map_or(now, |opens| opens.as_millisecond());
    let window_ends = s.store.last_inbound_at(phone).await?.map(|at| at + SERVICE_WINDOW_MS);
    if window_ends.is_none_or(|ends| leaves + WINDOW_MARGIN_MS > ends) {
        return Ok(tx
            .commit("skipped: the window the friend opened closes first")
            .await?
            .into());
    }
    let text = super::referral_text(&r);
    let body = render::friend_reminder(&s.settings, &text, phone.as_str());
    let message = NewMessage {
        referral_id: Some(referral_id),
        ..s.message(
            format!("friend_reminder:{referral_id}"),
            MessagePurpose::FriendReminder,
            phone,
            false,
            body,
        )
    };
    tx.insert_message(&message).await?;
    tx.tally_friend_reminded(referral_id);
    Ok(tx
        .commit(format!("friend reminder queued for referral {referral_id}"))
        .await?
        .into())
}

/// Meta's customer service window: 24 hours from the person's last message.
const SERVICE_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Time kept in hand for the send itself (pacing, the pair limit) before the window closes.
const WINDOW_MARGIN_MS: i64 = 10 * 60 * 1000;
