//! Reminders referloop sends on its own (`[reminders]`). Each is a job queued, with its due
//! time, in the transaction that makes it due, and made pointless by later transitions:
//! the promoter's reminder is cancelled by a tap or a nomination (`Tx::advance_invite`
//! ends its job and suppresses its queued message), and when it runs it decides on the
//! invite read locked, so a tap committing at the same moment is seen by one or the other.

use super::{Outcome, Services, StepResult, Work};
use crate::clock::duration_ms;
use crate::domain::messaging::MessagePurpose;
use crate::domain::send_window::{cap_frees_at, CAP_PERIOD};
use crate::domain::state::{InviteState, Persisted};
use crate::store::NewMessage;
use crate::whatsapp::render;

/// The `reminder.promoter` job: `tmpl_referral_reminder` to a customer who was invited and
/// has neither tapped "Refer someone" nor nominated, once per invite.
pub async fn promoter(s: &Services, work: &Work, invite_id: i64) -> StepResult {
    if !s.settings.reminders.promoter {
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
    // A reminder is the least needed marketing message: over the weekly cap it is skipped,
    // not held until a late day when it would no longer fit.
    let now = s.now_ms();
    let sent = s.store.marketing_sent_to(phone, now - duration_ms(CAP_PERIOD)).await?;
    let cap = s.settings.messaging.max_marketing_per_contact_per_week;
    if cap_frees_at(&sent, cap, now).is_some() {
        let note = format!("skipped: {cap} marketing templates in the last seven days");
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
