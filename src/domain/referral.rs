//! The referral (one nominated friend) as an explicit state machine. Events may arrive
//! duplicated or reordered; a state never moves backwards, and each message the machine
//! asks for ([`Effect`]) belongs to exactly one forward transition, so it is asked for at
//! most once.
//!
//! ```text
//! nominated ──screened ok, direct──► direct_invite_queued ──delivered──► friend_invited
//!     │                                  │   └─permanent failure──► friend_unreachable
//!     │                                  └─131049 (policy), not "direct" mode─┐
//!     ├──screened ok, share link────────────────────────────► awaiting_friend ┘
//!     │                                                           └─friend arrives──► friend_invited
//!     └──screened: refusal──► refused
//!
//! nominated, direct_invite_queued, awaiting_friend, friend_invited, friend_unreachable
//!     ──converted (within the attribution window)──► converted
//! nominated, direct_invite_queued, awaiting_friend, friend_invited
//!     ──past the attribution window, the number nominated again──► expired
//! ```
//!
//! Attribution: a nominated referral that was not refused converts whatever its delivery
//! state; the friend may have got the code another way (a forwarded share link, a
//! lost delivery receipt, a number WhatsApp cannot reach).

use super::nomination::NominationRefusal;
use super::state::persisted;

/// How the friend is reached (`programme.friend_invite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FriendInviteMode {
    /// A marketing template to the friend (only with the friend's recorded consent;
    /// otherwise a share link). No fallback when Meta refuses it.
    Direct,
    /// A ready-to-forward message and click-to-chat link to the referrer.
    ShareLink,
    /// Direct when the referrer confirmed the friend's consent, else (and as a fallback) share link.
    Auto,
}

impl FriendInviteMode {
    pub const ALL: [FriendInviteMode; 3] = [
        FriendInviteMode::Direct,
        FriendInviteMode::ShareLink,
        FriendInviteMode::Auto,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReferralState {
    Nominated,
    DirectInviteQueued,
    AwaitingFriend,
    FriendInvited,
    FriendUnreachable,
    Refused,
    /// Left open past `programme.attribution_window_days`; the friend may be nominated again.
    Expired,
    /// The friend signed up or bought: thanks and rewards were granted.
    Converted,
}

persisted!(ReferralState {
    Nominated => "nominated",
    DirectInviteQueued => "direct_invite_queued",
    AwaitingFriend => "awaiting_friend",
    FriendInvited => "friend_invited",
    FriendUnreachable => "friend_unreachable",
    Refused => "refused",
    Expired => "expired",
    Converted => "converted",
});

impl ReferralState {
    /// States after which the referrer's nudge and the friend's reminder are pointless:
    /// the friend bought, or the referral was refused or expired.
    pub fn ends_nudging(self) -> bool {
        matches!(self, Self::Converted | Self::Refused | Self::Expired)
    }

    /// Still occupying the friend's number (blocks other nominations of it, counts
    /// against `programme.max_open_referrals`). The migrations' partial unique index
    /// `referrals_open_friend` lists the same states.
    pub const OPEN: &'static [Self] = &[
        Self::Nominated,
        Self::DirectInviteQueued,
        Self::AwaitingFriend,
        Self::FriendInvited,
    ];

    /// A conversion matched to a referral in one of these converts it (within the window).
    pub const CONVERTIBLE: &'static [Self] = &[
        Self::Nominated,
        Self::DirectInviteQueued,
        Self::AwaitingFriend,
        Self::FriendInvited,
        Self::FriendUnreachable,
    ];

    /// Where a friend writing to us (through a share link) is expected.
    pub const AWAITING_FRIEND: &'static [Self] = &[Self::DirectInviteQueued, Self::AwaitingFriend];

    /// Progress; no transition lowers it. Final states share the top rank.
    pub fn rank(self) -> u8 {
        match self {
            Self::Nominated => 0,
            Self::DirectInviteQueued => 1,
            Self::AwaitingFriend => 2,
            Self::FriendInvited | Self::FriendUnreachable => 3,
            Self::Converted | Self::Refused | Self::Expired => 4,
        }
    }

    /// No event moves a referral out of these.
    pub fn is_final(self) -> bool {
        self.rank() == 4
    }

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }

    pub fn is_convertible(self) -> bool {
        Self::CONVERTIBLE.contains(&self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferralEvent {
    /// The checks that need outside data (already a customer in HubSpot) are done.
    Screened { refusal: Option<NominationRefusal> },
    /// The direct invite was refused, synchronously or by a `failed` status.
    /// `policy_limit`: Meta's per-user marketing limit (131049), where a share link still works.
    DirectInviteFailed { policy_limit: bool },
    /// A `delivered` or `read` status for the direct invite.
    DirectInviteDelivered,
    /// The friend wrote to us (through the share link) and was recognised.
    FriendArrived,
    /// The friend signed up or bought (HubSpot, Stripe or the API said so), within the
    /// attribution window.
    Converted,
    /// The attribution window passed and the number was nominated again.
    Expired,
}

/// A message the transition asks for. Each is sent through a job whose idempotency key is
/// the referral id plus the effect, so the store enforces "once" as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    SendFriendInvite,
    SendShareLink,
    SendFriendWelcome,
    SendRefusal(NominationRefusal),
    /// Thank the referrer (`tmpl_referral_thanks`).
    ThankReferrer,
    /// Create the referrer's and the friend's rewards.
    GrantRewards,
}

impl Effect {
    pub fn key(&self) -> &'static str {
        match self {
            Effect::SendFriendInvite => "friend_invite",
            Effect::SendShareLink => "share_link",
            Effect::SendFriendWelcome => "friend_welcome",
            Effect::SendRefusal(_) => "refusal",
            Effect::ThankReferrer => "thanks",
            Effect::GrantRewards => "rewards",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: ReferralState,
    pub effects: Vec<Effect>,
}

impl Transition {
    fn to(state: ReferralState, effects: Vec<Effect>) -> Self {
        Transition { state, effects }
    }
}

/// The next state and the messages to send. An event that does not apply (a duplicate,
/// or one overtaken by a later event) leaves the state as it is and asks for nothing.
pub fn apply(state: ReferralState, mode: FriendInviteMode, consent: bool, event: &ReferralEvent) -> Transition {
    use ReferralEvent as E;
    use ReferralState as S;
    match (state, event) {
        (S::Nominated, E::Screened { refusal: Some(refusal) }) => {
            Transition::to(S::Refused, vec![Effect::SendRefusal(refusal.clone())])
        }
        (S::Nominated, E::Screened { refusal: None }) => {
            // Messaging policy: the business may start a conversation with the friend only
            // on their recorded consent, whatever the mode; without it, a share link.
            let direct = consent && mode != FriendInviteMode::ShareLink;
            if direct {
                Transition::to(S::DirectInviteQueued, vec![Effect::SendFriendInvite])
            } else {
                Transition::to(S::AwaitingFriend, vec![Effect::SendShareLink])
            }
        }
        (S::DirectInviteQueued, E::DirectInviteFailed { policy_limit: true }) if mode != FriendInviteMode::Direct => {
            Transition::to(S::AwaitingFriend, vec![Effect::SendShareLink])
        }
        (S::DirectInviteQueued, E::DirectInviteFailed { .. }) => Transition::to(S::FriendUnreachable, vec![]),
        (S::DirectInviteQueued, E::DirectInviteDelivered) => Transition::to(S::FriendInvited, vec![]),
        // The friend wrote to us while the direct invite was in flight: they are in.
        (S::DirectInviteQueued, E::FriendArrived) => Transition::to(S::FriendInvited, vec![]),
        (S::AwaitingFriend, E::FriendArrived) => Transition::to(S::FriendInvited, vec![Effect::SendFriendWelcome]),
        // Whatever the delivery state: the friend may have got the code another way.
        (from, E::Converted) if from.is_convertible() => {
            Transition::to(S::Converted, vec![Effect::ThankReferrer, Effect::GrantRewards])
        }
        (from, E::Expired) if from.is_open() => Transition::to(S::Expired, vec![]),
        (unchanged, _) => Transition::to(unchanged, vec![]),
    }
}

/// The friend's `referral_status` in HubSpot: the referral's, and `rewarded` once the
/// friend's reward is issued (so the conversion's update and the reward's agree,
/// whichever runs last).
pub fn friend_crm_status(state: ReferralState, friend_rewarded: bool) -> Option<&'static str> {
    match (state, friend_rewarded) {
        (ReferralState::Converted, true) => Some("rewarded"),
        _ => friend_hubspot_status(state),
    }
}

/// `referral_status` on the friend's HubSpot contact for each state (documented in README).
pub fn friend_hubspot_status(state: ReferralState) -> Option<&'static str> {
    match state {
        ReferralState::Nominated => Some("nominated"),
        ReferralState::DirectInviteQueued => Some("invite_sent"),
        ReferralState::AwaitingFriend => Some("share_link_sent"),
        ReferralState::FriendInvited => Some("friend_invited"),
        ReferralState::FriendUnreachable => Some("friend_unreachable"),
        ReferralState::Converted => Some("converted"),
        ReferralState::Refused | ReferralState::Expired => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::Persisted;
    use proptest::prelude::*;
    use FriendInviteMode as M;
    use ReferralEvent as E;
    use ReferralState as S;

    #[test]
    fn a_rewarded_friend_stays_rewarded_whatever_the_state_says() {
        assert_eq!(friend_crm_status(ReferralState::Converted, true), Some("rewarded"));
        assert_eq!(friend_crm_status(ReferralState::Converted, false), Some("converted"));
        assert_eq!(
            friend_crm_status(ReferralState::FriendInvited, false),
            Some("friend_invited")
        );
        assert_eq!(friend_crm_status(ReferralState::Refused, false), None);
    }

    #[test]
    fn happy_paths() {
        let t = apply(S::Nominated, M::Auto, true, &E::Screened { refusal: None });
        assert_eq!(t, Transition::to(S::DirectInviteQueued, vec![Effect::SendFriendInvite]));
        assert_eq!(
            apply(S::DirectInviteQueued, M::Auto, true, &E::DirectInviteDelivered).state,
            S::FriendInvited
        );

        let t = apply(S::Nominated, M::Auto, false, &E::Screened { refusal: None });
        assert_eq!(t, Transition::to(S::AwaitingFriend, vec![Effect::SendShareLink]));
        let t = apply(S::AwaitingFriend, M::Auto, false, &E::FriendArrived);
        assert_eq!(t, Transition::to(S::FriendInvited, vec![Effect::SendFriendWelcome]));
    }

    #[test]
    fn modes_choose_the_channel() {
        let screened = E::Screened { refusal: None };
        assert_eq!(
            apply(S::Nominated, M::Direct, true, &screened).state,
            S::DirectInviteQueued
        );
        // Messaging policy: no recorded consent, no direct message, whatever the mode.
        assert_eq!(
            apply(S::Nominated, M::Direct, false, &screened).state,
            S::AwaitingFriend
        );
        assert_eq!(
            apply(S::Nominated, M::ShareLink, true, &screened).state,
            S::AwaitingFriend
        );
    }

    #[test]
    fn policy_limit_falls_back_to_a_share_link_except_in_direct_mode() {
        let failed = E::DirectInviteFailed { policy_limit: true };
        let t = apply(S::DirectInviteQueued, M::Auto, true, &failed);
        assert_eq!(t, Transition::to(S::AwaitingFriend, vec![Effect::SendShareLink]));
        assert_eq!(
            apply(S::DirectInviteQueued, M::Direct, true, &failed).state,
            S::FriendUnreachable
        );
        let permanent = E::DirectInviteFailed { policy_limit: false };
        assert_eq!(
            apply(S::DirectInviteQueued, M::Auto, true, &permanent).state,
            S::FriendUnreachable
        );
    }

    #[test]
    fn refusal_replies_once() {
        let refusal = NominationRefusal::AlreadyCustomer;
        let t = apply(
            S::Nominated,
            M::Auto,
            true,
            &E::Screened {
                refusal: Some(refusal.clone()),
            },
        );
        assert_eq!(t, Transition::to(S::Refused, vec![Effect::SendRefusal(refusal)]));
        assert_eq!(
            apply(S::Refused, M::Auto, true, &E::Screened { refusal: None }),
            Transition::to(S::Refused, vec![])
        );
    }

    #[test]
    fn every_nominated_referral_not_refused_converts_once() {
        for &from in S::CONVERTIBLE {
            let t = apply(from, M::Auto, true, &E::Converted);
            assert_eq!(
                t,
                Transition::to(S::Converted, vec![Effect::ThankReferrer, Effect::GrantRewards]),
                "from {from:?}"
            );
        }
        for stays in [S::Converted, S::Refused, S::Expired] {
            assert_eq!(
                apply(stays, M::Auto, true, &E::Converted),
                Transition::to(stays, vec![])
            );
        }
    }

    #[test]
    fn only_open_referrals_expire() {
        for &state in S::ALL {
            let next = apply(state, M::Auto, true, &E::Expired).state;
            if state.is_open() {
                assert_eq!(next, S::Expired);
            } else {
                assert_eq!(next, state);
            }
        }
    }

    #[test]
    fn late_events_change_nothing() {
        assert_eq!(
            apply(
                S::FriendInvited,
                M::Auto,
                true,
                &E::DirectInviteFailed { policy_limit: true }
            )
            .state,
            S::FriendInvited
        );
        assert_eq!(
            apply(S::FriendUnreachable, M::Auto, true, &E::DirectInviteDelivered).state,
            S::FriendUnreachable
        );
        assert!(apply(S::FriendInvited, M::Auto, false, &E::FriendArrived)
            .effects
            .is_empty());
    }

    fn any_event() -> impl Strategy<Value = ReferralEvent> {
        prop_oneof![
            Just(E::Screened { refusal: None }),
            Just(E::Screened {
                refusal: Some(NominationRefusal::AlreadyCustomer)
            }),
            Just(E::DirectInviteFailed { policy_limit: true }),
            Just(E::DirectInviteFailed { policy_limit: false }),
            Just(E::DirectInviteDelivered),
            Just(E::FriendArrived),
            Just(E::Converted),
            Just(E::Expired),
        ]
    }

    fn any_mode() -> impl Strategy<Value = FriendInviteMode> {
        prop_oneof![Just(M::Direct), Just(M::ShareLink), Just(M::Auto)]
    }

    proptest! {
        /// Any sequence of events, duplicated and reordered at will, never asks for a
        /// message twice and never lowers the state's rank.
        #[test]
        fn no_second_message_and_no_step_back(
            mode in any_mode(),
            consent in any::<bool>(),
            events in proptest::collection::vec(any_event(), 0..40),
            repeats in proptest::collection::vec(0usize..40, 0..20),
        ) {
            // Duplicate some events at random later positions.
            let mut sequence = events.clone();
            for (i, at) in repeats.iter().enumerate() {
                if let Some(event) = events.get(i % events.len().max(1)).cloned() {
                    sequence.insert((*at).min(sequence.len()), event);
                }
            }
            let mut state = S::Nominated;
            let mut asked: Vec<&'static str> = Vec::new();
            for event in &sequence {
                let next = apply(state, mode, consent, event);
                prop_assert!(next.state.rank() >= state.rank(), "{:?} -> {:?} on {:?}", state, next.state, event);
                if state.is_final() {
                    prop_assert_eq!(next.state, state, "final states stay");
                }
                for effect in &next.effects {
                    prop_assert!(!asked.contains(&effect.key()), "{} asked twice", effect.key());
                    asked.push(effect.key());
                }
                state = next.state;
            }
        }
    }
}
