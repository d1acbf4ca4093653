//! The one path by which a referral changes state. Inside the step's transaction it locks
//! and re-reads the referral, asks the pure machine (`domain::referral::apply`) what the
//! event means, moves the referral (compare-and-set) and writes everything the move
//! causes: the messages the machine asks for, the rewards, and the HubSpot jobs. The step
//! commits all of it together with the completion of its work item.

use super::{reward, Services, StepError};
use crate::domain::messaging::MessagePurpose;
use crate::domain::phone::E164;
use crate::domain::referral::{self, friend_hubspot_status, Effect, ReferralEvent, ReferralState};
use crate::domain::state::Persisted;
use crate::domain::work::Job;
use crate::store::{NewConversion, NewMessage, ReferralRow, Tx};
use crate::whatsapp::render;

/// What the event came with, beyond the event itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventContext<'a> {
    /// The number a friend arriving through a share link wrote from.
    pub arrived_from: Option<&'a E164>,
    /// The business's display number from the webhook (share links), when known.
    pub business_number: &'a str,
    /// The conversion that converts the referral (the friend's Stripe customer).
    pub conversion: Option<&'a NewConversion>,
    /// When screening searched HubSpot by the friend's phone and found no contact: the
    /// contact's creation, if queued, need not search again.
    pub friend_searched_at: Option<i64>,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Moved { from: ReferralState, to: ReferralState },
    Unchanged(ReferralState),
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Moved { from, to } => write!(f, "{} -> {}", from.as_str(), to.as_str()),
            Applied::Unchanged(state) => write!(f, "unchanged in {}", state.as_str()),
        }
    }
}

/// Applies `event` to referral `referral_id` inside `tx`.
pub async fn apply(
    s: &Services,
    tx: &mut Tx,
    referral_id: i64,
    event: &ReferralEvent,
    ctx: EventContext<'_>,
) -> Result<Applied, StepError> {
    let Some(current) = tx.referral_for_update(referral_id).await? else {
        return Err(StepError::Permanent(format!("referral {referral_id} not found")));
    };
    let from = current.state;
    let transition = referral::apply(from, s.settings.programme.friend_invite, current.consent, event);
    if transition.state == from && transition.effects.is_empty() {
        return Ok(Applied::Unchanged(from));
    }
    let reason = transition.effects.iter().find_map(|effect| match effect {
        Effect::SendRefusal(refusal) => Some(refusal.recorded()),
        _ => None,
    });
    // The row is locked (or the database has one writer), so this cannot lose; if it
    // ever did, the conflict reruns the step.
    tx.move_referral(current.id, from, transition.state, reason).await?;
    let mut granted = reward::Granted::default();
    for effect in &transition.effects {
        if let Some(rewards) = write_effect(s, tx, &current, effect, ctx).await? {
            granted = rewards;
        }
    }
    queue_crm_updates(s, tx, &current, transition.state, granted, ctx.friend_searched_at).await?;
    tracing::info!(
        referral_id = current.id,
        from = from.as_str(),
        to = transition.state.as_str(),
        "referral moved"
    );
    Ok(Applied::Moved {
        from,
        to: transition.state,
    })
}

async fn write_effect(
    s: &Services,
    tx: &mut Tx,
    r: &ReferralRow,
    effect: &Effect,
    ctx: EventContext<'_>,
) -> Result<Option<reward::Granted>, StepError> {
    if let Effect::GrantRewards = effect {
        return Ok(Some(reward::grant(s, tx, r, ctx.conversion).await?));
    }
    if let Some(message) = effect_message(s, r, effect, ctx)? {
        tx.insert_message(&message).await?;
    }
    Ok(None)
}

/// The message an effect asks for, keyed by the referral and the effect (so asked once).
fn effect_message(
    s: &Services,
    r: &ReferralRow,
    effect: &Effect,
    ctx: EventContext<'_>,
) -> Result<Option<NewMessage>, StepError> {
    let settings = &s.settings;
    let referrer = || {
        r.referrer_phone
            .clone()
            .ok_or_else(|| StepError::Permanent("the referral has no referrer's number".into()))
    };
    let friend = || match ctx.arrived_from {
        Some(phone) => Ok(phone.clone()),
        None => r
            .friend_phone
            .clone()
            .ok_or_else(|| StepError::Permanent("the referral has no friend's number".into())),
    };
    let text = super::referral_text(r);
    let (to, purpose, marketing, body) = match effect {
        Effect::SendFriendInvite => {
            let to = friend()?;
            let body = render::friend_invite(settings, &text, to.as_str());
            (to, MessagePurpose::FriendInvite, true, body)
        }
        Effect::SendShareLink => {
            let to = referrer()?;
            let body = render::share_link(settings, &text, to.as_str(), ctx.business_number);
            (to, MessagePurpose::ShareLink, false, body)
        }
        Effect::SendFriendWelcome => {
            let to = friend()?;
            let body = render::friend_welcome(settings, &text, to.as_str());
            (to, MessagePurpose::FriendWelcome, true, body)
        }
        Effect::SendRefusal(refusal) => {
            let to = referrer()?;
            let body = render::refusal(settings, &r.language, refusal, &r.friend_name, to.as_str());
            (to, MessagePurpose::Refusal, false, body)
        }
        Effect::ThankReferrer => {
            let to = referrer()?;
            let body = render::thanks(settings, &text, to.as_str());
            (to, MessagePurpose::Thanks, true, body)
        }
        // Rewards are rows, not messages.
        Effect::GrantRewards => return Ok(None),
    };
    let key = format!("referral:{}:{}", r.id, effect.key());
    Ok(Some(NewMessage {
        referral_id: Some(r.id),
        ..s.message(key, purpose, &to, marketing, body)
    }))
}

/// The friend's contact and status in HubSpot follow the referral; a conversion also
/// links the two contacts and refreshes the referrer's counters (unless the referrer's
/// reward, issued now, writes them with it).
async fn queue_crm_updates(
    s: &Services,
    tx: &mut Tx,
    r: &ReferralRow,
    to: ReferralState,
    granted: reward::Granted,
    friend_searched_at: Option<i64>,
) -> Result<(), StepError> {
    if friend_hubspot_status(to).is_some() {
        // Until the friend's contact is recorded, its creation carries the status (and
        // queues the sync for a state that moved meanwhile: `friend::create_contact`),
        // so a sync never runs only to wait for the contact. The row is locked, so the
        // two cannot miss each other.
        let job = match r.friend_contact_id {
            None => Some(Job::CreateFriendContact {
                referral_id: r.id,
                searched_at: friend_searched_at,
            }),
            // The friend's reward, issued in this commit, records `rewarded` on the contact.
            Some(_) if to == ReferralState::Converted && granted.friend_issued_in_commit => None,
            Some(_) => Some(Job::SyncFriend {
                referral_id: r.id,
                state: to,
            }),
        };
        if let Some(job) = job {
            tx.enqueue(s.job(job));
        }
    }
    if to == ReferralState::Converted {
        if s.settings.hubspot.record_referral_links {
            tx.enqueue(s.job(Job::LinkReferral { referral_id: r.id }));
        }
        if !granted.referrer_issued_now {
            tx.enqueue(s.job(Job::ReferrerCounters {
                contact_id: r.referrer_contact_id.clone(),
                cause: format!("{}:converted", r.id),
            }));
        }
    }
    Ok(())
}
