//! Rewards: one per (referral, beneficiary), each in a small state machine, with the
//! programme's cap and hold rules. The `rewards` table is the ledger HubSpot's counters are
//! computed from.

/// Who a reward is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Beneficiary {
    Referrer,
    Friend,
}

impl Beneficiary {
    pub fn as_str(self) -> &'static str {
        match self {
            Beneficiary::Referrer => "referrer",
            Beneficiary::Friend => "friend",
        }
    }

    pub fn parse(s: &str) -> Option<Beneficiary> {
        match s {
            "referrer" => Some(Beneficiary::Referrer),
            "friend" => Some(Beneficiary::Friend),
            _ => None,
        }
    }
}

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

impl RewardState {
    pub const ALL: [RewardState; 6] = [
        RewardState::Pending,
        RewardState::Issuing,
        RewardState::Issued,
        RewardState::Failed,
        RewardState::Capped,
        RewardState::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RewardState::Pending => "pending",
            RewardState::Issuing => "issuing",
            RewardState::Issued => "issued",
            RewardState::Failed => "failed",
            RewardState::Capped => "capped",
            RewardState::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<RewardState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether issuing may (still) happen; `issuing` is resumed after a crash, under the
    /// same idempotency key.
    pub fn can_issue(self) -> bool {
        matches!(self, RewardState::Pending | RewardState::Failed | RewardState::Issuing)
    }

    /// A refund or void cancels what has not been issued yet.
    pub fn can_void(self) -> bool {
        matches!(self, RewardState::Pending | RewardState::Failed)
    }
}

/// How a reward is fulfilled (`rewards.<beneficiary>.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    None,
    StripePromotionCode,
    StripeBalanceCredit,
    HubspotCredit,
    CodePool,
    StaticCode,
    Webhook,
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
    };
    format!("{referral_code}{side}{referral_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_applies_to_the_referrer_only() {
        assert_eq!(initial_state(Beneficiary::Referrer, 2, 3), RewardState::Pending);
        assert_eq!(initial_state(Beneficiary::Referrer, 3, 3), RewardState::Capped);
        assert_eq!(initial_state(Beneficiary::Friend, 99, 3), RewardState::Pending);
    }

    #[test]
    fn states() {
        for state in RewardState::ALL {
            assert_eq!(RewardState::parse(state.as_str()), Some(state));
        }
        assert!(RewardState::Failed.can_issue());
        assert!(!RewardState::Issued.can_issue());
        assert!(!RewardState::Capped.can_void());
        assert_eq!(promotion_code("ANA7KQ2", 12, Beneficiary::Friend), "ANA7KQ2F12");
    }
}
