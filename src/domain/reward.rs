//! Rewards: one per (referral, beneficiary), each in a small state machine, with the
//! programme's cap and hold rules. The `rewards` table is the ledger HubSpot's counters are
//! computed from.

use super::state::persisted;

/// Who a reward is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Beneficiary {
    Referrer,
    Friend,
    /// The referrer again, for a milestone bonus (`rewards.milestones`) reached with this
    /// referral.
    ReferrerBonus,
}

persisted!(Beneficiary {
    Referrer => "referrer",
    Friend => "friend",
    ReferrerBonus => "referrer_bonus",
});

/// `pending` → `issuing` → `issued` | `failed` (retried; re-drivable when dead);
/// `pending`/`failed` → `void` (a refund; never once issuing began);
/// `capped` is final (recorded, never issued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RewardState {
    Pending,
    /// Claimed by the worker that is fulfilling it; a void can no longer cancel it.
    Issuing,
    Issued,
    Failed,
    Capped,
    Void,
}

persisted!(RewardState {
    Pending => "pending",
    Issuing => "issuing",
    Issued => "issued",
    Failed => "failed",
    Capped => "capped",
    Void => "void",
});

impl RewardState {
    /// States that may still be issued (`issuing` is resumed after a crash).
    pub const ISSUABLE: &'static [Self] = &[Self::Pending, Self::Failed, Self::Issuing];
    /// A refund or void cancels these.
    pub const VOIDABLE: &'static [Self] = &[Self::Pending, Self::Failed];
    /// The referrer's rewards in these count against the cap.
    pub const COUNTS_AGAINST_CAP: &'static [Self] = &[Self::Pending, Self::Issuing, Self::Issued, Self::Failed];

    /// Whether issuing may (still) happen; `issuing` is resumed after a crash, under the
    /// same idempotency key.
    pub fn can_issue(self) -> bool {
        Self::ISSUABLE.contains(&self)
    }

    /// A refund or void cancels what has not been issued yet.
    pub fn can_void(self) -> bool {
        Self::VOIDABLE.contains(&self)
    }
}

/// How a reward is fulfilled (`rewards.<beneficiary>.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardKind {
    None,
    StripePromotionCode,
    StripeBalanceCredit,
    HubspotCredit,
    CodePool,
    StaticCode,
    Webhook,
}

// The stored names are also the kinds' names in the configuration.
persisted!(RewardKind {
    None => "none",
    StripePromotionCode => "stripe_promotion_code",
    StripeBalanceCredit => "stripe_balance_credit",
    HubspotCredit => "hubspot_credit",
    CodePool => "code_pool",
    StaticCode => "static_code",
    Webhook => "webhook",
});

impl RewardKind {
    /// Fulfilled from the programme's own settings, with no outside call (a static code;
    /// a HubSpot credit, whose total a HubSpot job records): a reward of such a kind that
    /// is not held is issued in the transaction that grants it.
    pub fn is_fulfilled_locally(self) -> bool {
        match self {
            RewardKind::StaticCode | RewardKind::HubspotCredit => true,
            RewardKind::None
            | RewardKind::StripePromotionCode
            | RewardKind::StripeBalanceCredit
            | RewardKind::CodePool
            | RewardKind::Webhook => false,
        }
    }
}

/// The referrer's reward is capped once they have this many rewarded referrals in the
/// period; the friend's never is.
pub fn initial_state(beneficiary: Beneficiary, referrer_rewards_in_period: i64, cap: i64) -> RewardState {
    match beneficiary {
        Beneficiary::Referrer if referrer_rewards_in_period >= cap => RewardState::Capped,
        _ => RewardState::Pending,
    }
}

/// A readable promotion code derived from the referral code, unique per referral and side.
pub fn promotion_code(referral_code: &str, referral_id: i64, beneficiary: Beneficiary) -> String {
    let side = match beneficiary {
        Beneficiary::Referrer => "R",
        Beneficiary::Friend => "F",
        Beneficiary::ReferrerBonus => "B",
    };
    format!("{referral_code}{side}{referral_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::Persisted;

    /// A reward kind is stored by the name the configuration gives it.
    #[test]
    fn reward_kinds_are_stored_by_their_configuration_names() {
        for kind in RewardKind::ALL {
            let configured = serde_json::to_value(kind).expect("serialize");
            assert_eq!(configured.as_str(), Some(kind.as_str()));
            assert_eq!(RewardKind::parse(kind.as_str()), Some(*kind));
        }
        for side in Beneficiary::ALL {
            assert_eq!(Beneficiary::parse(side.as_str()), Some(*side));
        }
    }

    #[test]
    fn cap_applies_to_the_referrer_only() {
        assert_eq!(initial_state(Beneficiary::Referrer, 2, 3), RewardState::Pending);
        assert_eq!(initial_state(Beneficiary::Referrer, 3, 3), RewardState::Capped);
        assert_eq!(initial_state(Beneficiary::Friend, 99, 3), RewardState::Pending);
    }

    #[test]
    fn states() {
        assert!(RewardState::Failed.can_issue());
        assert!(!RewardState::Issued.can_issue());
        assert!(!RewardState::Capped.can_void());
        assert_eq!(promotion_code("ANA7KQ2", 12, Beneficiary::Friend), "ANA7KQ2F12");
    }
}
