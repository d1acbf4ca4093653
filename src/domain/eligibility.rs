//! Who gets invited: the rules a trigger must pass, each refusal with its reason.

use std::time::Duration;

use super::phone::{PhoneError, E164};
use super::state::{persisted, Persisted, UnknownState};

/// What the HubSpot workflow said happened. Stored as `nps`, `milestone` or
/// `milestone:<name>` (the workflow's name for the milestone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerKind {
    Nps,
    Milestone(Option<String>),
}

impl std::fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TriggerKind::Nps => f.write_str("nps"),
            TriggerKind::Milestone(None) => f.write_str("milestone"),
            TriggerKind::Milestone(Some(name)) => write!(f, "milestone:{name}"),
        }
    }
}

/// A stored trigger name that is none of [`TriggerKind`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a trigger kind")]
pub struct UnknownTrigger(pub String);

impl TryFrom<String> for TriggerKind {
    type Error = UnknownTrigger;

    fn try_from(stored: String) -> Result<Self, Self::Error> {
        match stored.as_str() {
            "nps" => Ok(TriggerKind::Nps),
            "milestone" => Ok(TriggerKind::Milestone(None)),
            _ => match stored.strip_prefix("milestone:") {
                Some(name) => Ok(TriggerKind::Milestone(Some(name.to_string()))),
                None => Err(UnknownTrigger(stored)),
            },
        }
    }
}

impl serde::Serialize for TriggerKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An NPS answer in any of the shapes portals use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpsAnswer {
    Score(u8),
    Promoter,
    Passive,
    Detractor,
}

/// Reads a number (`10`), a numeric string (`"9"`, `"9.0"`) or a response group (`PROMOTER`).
pub fn parse_nps(raw: &str) -> Option<NpsAnswer> {
    let raw = raw.trim();
    match raw.to_ascii_uppercase().as_str() {
        "PROMOTER" => return Some(NpsAnswer::Promoter),
        "PASSIVE" => return Some(NpsAnswer::Passive),
        "DETRACTOR" => return Some(NpsAnswer::Detractor),
        _ => {}
    }
    let value: f64 = raw.parse().ok()?;
    (0.0..=10.0)
        .contains(&value)
        .then_some(NpsAnswer::Score(value.round() as u8))
}

/// Why a trigger does not lead to an invite. Recorded, and answered 2xx all the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    NotAPromoter {
        score: Option<NpsAnswer>,
    },
    NoValidPhone(PhoneError),
    OptedOut,
    CoolingDown {
        last_invited_days_ago: i64,
    },
    InviteLimitReached {
        invites: i64,
    },
    /// Another trigger for the contact passed the invite gate at the same instant.
    ConcurrentInvite,
}

impl Ineligible {
    /// The reason recorded on the invite.
    pub fn reason(&self) -> IneligibleReason {
        let with = |code, detail: String| IneligibleReason {
            code,
            detail: Some(detail),
        };
        match self {
            Ineligible::NotAPromoter {
                score: Some(NpsAnswer::Score(s)),
            } => with(IneligibleCode::NotAPromoter, format!("score {s}")),
            Ineligible::NotAPromoter { score: Some(group) } => with(IneligibleCode::NotAPromoter, format!("{group:?}")),
            Ineligible::NotAPromoter { score: None } => with(IneligibleCode::NotAPromoter, "no score".into()),
            Ineligible::NoValidPhone(e) => IneligibleReason::from(match e {
                PhoneError::Missing => IneligibleCode::NoPhone,
                PhoneError::Unparseable => IneligibleCode::PhoneUnparseable,
                PhoneError::Invalid => IneligibleCode::PhoneInvalid,
                PhoneError::NotMobile => IneligibleCode::PhoneNotMobile,
            }),
            Ineligible::OptedOut => IneligibleReason::from(IneligibleCode::OptedOut),
            Ineligible::CoolingDown { last_invited_days_ago } => with(
                IneligibleCode::Cooldown,
                format!("invited {last_invited_days_ago} days ago"),
            ),
            Ineligible::InviteLimitReached { invites } => {
                with(IneligibleCode::InviteLimit, format!("{invites} invites"))
            }
            Ineligible::ConcurrentInvite => with(IneligibleCode::Cooldown, "concurrent invite".into()),
        }
    }
}

/// Which rule refused a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IneligibleCode {
    NotAPromoter,
    NoPhone,
    PhoneUnparseable,
    PhoneInvalid,
    PhoneNotMobile,
    OptedOut,
    Cooldown,
    InviteLimit,
}

persisted!(IneligibleCode {
    NotAPromoter => "not_a_promoter",
    NoPhone => "no_phone",
    PhoneUnparseable => "phone_unparseable",
    PhoneInvalid => "phone_invalid",
    PhoneNotMobile => "phone_not_mobile",
    OptedOut => "opted_out",
    Cooldown => "cooldown",
    InviteLimit => "invite_limit",
});

/// Why a trigger led to no invite, as recorded on the invite: the rule, and what it saw
/// (`not_a_promoter: score 6`, `cooldown: invited 3 days ago`). Stored as that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IneligibleReason {
    pub code: IneligibleCode,
    pub detail: Option<String>,
}

impl From<IneligibleCode> for IneligibleReason {
    fn from(code: IneligibleCode) -> Self {
        IneligibleReason { code, detail: None }
    }
}

impl std::fmt::Display for IneligibleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.code.as_str()),
            None => f.write_str(self.code.as_str()),
        }
    }
}

impl TryFrom<String> for IneligibleReason {
    type Error = UnknownState;

    fn try_from(stored: String) -> Result<Self, Self::Error> {
        let (code, detail) = match stored.split_once(": ") {
            Some((code, detail)) => (code, Some(detail.to_string())),
            None => (stored.as_str(), None),
        };
        let code = IneligibleCode::parse(code).ok_or_else(|| UnknownState(stored.clone()))?;
        Ok(IneligibleReason { code, detail })
    }
}

impl serde::Serialize for IneligibleReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The programme's rules for triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EligibilityRules {
    pub promoter_min_score: u8,
    pub invite_cooldown: Duration,
    pub max_invites_per_contact: i64,
}

/// What we know of the contact when the trigger arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerFacts {
    pub kind: TriggerKind,
    pub score: Option<NpsAnswer>,
    pub phone: Result<E164, PhoneError>,
    pub opted_out: bool,
    /// Milliseconds since the last invite, if any.
    pub since_last_invite_ms: Option<i64>,
    pub invites_so_far: i64,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The phone to invite, or why not. Rules in order: promoter (NPS only), phone, opt-out,
/// cooldown, lifetime limit.
pub fn check(rules: &EligibilityRules, facts: &TriggerFacts) -> Result<E164, Ineligible> {
    if facts.kind == TriggerKind::Nps {
        let promoter = match facts.score {
            Some(NpsAnswer::Score(s)) => s >= rules.promoter_min_score,
            Some(NpsAnswer::Promoter) => true,
            _ => false,
        };
        if !promoter {
            return Err(Ineligible::NotAPromoter { score: facts.score });
        }
    }
    let phone = facts.phone.clone().map_err(Ineligible::NoValidPhone)?;
    if facts.opted_out {
        return Err(Ineligible::OptedOut);
    }
    if let Some(since) = facts.since_last_invite_ms {
        if u128::try_from(since).unwrap_or(0) < rules.invite_cooldown.as_millis() {
            return Err(Ineligible::CoolingDown {
                last_invited_days_ago: since / DAY_MS,
            });
        }
    }
    if facts.invites_so_far >= rules.max_invites_per_contact {
        return Err(Ineligible::InviteLimitReached {
            invites: facts.invites_so_far,
        });
    }
    Ok(phone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_kinds_read_back_as_stored() {
        for kind in [
            TriggerKind::Nps,
            TriggerKind::Milestone(None),
            TriggerKind::Milestone(Some("renewal".into())),
        ] {
            assert_eq!(TriggerKind::try_from(kind.to_string()), Ok(kind));
        }
        assert!(TriggerKind::try_from("csat".to_string()).is_err());
    }

    fn rules() -> EligibilityRules {
        EligibilityRules {
            promoter_min_score: 9,
            invite_cooldown: Duration::from_secs(90 * 24 * 60 * 60),
            max_invites_per_contact: 3,
        }
    }

    fn facts() -> TriggerFacts {
        TriggerFacts {
            kind: TriggerKind::Nps,
            score: Some(NpsAnswer::Score(10)),
            phone: E164::parse_mobile("+447911123456", "GB"),
            opted_out: false,
            since_last_invite_ms: None,
            invites_so_far: 0,
        }
    }

    #[test]
    fn nps_shapes() {
        assert_eq!(parse_nps("10"), Some(NpsAnswer::Score(10)));
        assert_eq!(parse_nps(" 9.0 "), Some(NpsAnswer::Score(9)));
        assert_eq!(parse_nps("promoter"), Some(NpsAnswer::Promoter));
        assert_eq!(parse_nps("DETRACTOR"), Some(NpsAnswer::Detractor));
        assert_eq!(parse_nps("11"), None);
        assert_eq!(parse_nps("great"), None);
    }

    #[test]
    fn promoters_with_a_mobile_are_eligible() {
        assert!(check(&rules(), &facts()).is_ok());
        let promoter_group = TriggerFacts {
            score: Some(NpsAnswer::Promoter),
            ..facts()
        };
        assert!(check(&rules(), &promoter_group).is_ok());
        let milestone = TriggerFacts {
            kind: TriggerKind::Milestone(None),
            score: None,
            ..facts()
        };
        assert!(check(&rules(), &milestone).is_ok(), "milestones need no score");
    }

    #[test]
    fn each_rule_refuses_with_its_reason() {
        let detractor = TriggerFacts {
            score: Some(NpsAnswer::Score(6)),
            ..facts()
        };
        assert_eq!(
            check(&rules(), &detractor).map_err(|e| e.reason().to_string()),
            Err("not_a_promoter: score 6".into())
        );
        for reason in [
            Ineligible::CoolingDown {
                last_invited_days_ago: 3,
            }
            .reason(),
            Ineligible::NoValidPhone(PhoneError::NotMobile).reason(),
        ] {
            assert_eq!(IneligibleReason::try_from(reason.to_string()), Ok(reason));
        }
        let passive = TriggerFacts {
            score: Some(NpsAnswer::Passive),
            ..facts()
        };
        assert!(matches!(
            check(&rules(), &passive),
            Err(Ineligible::NotAPromoter { .. })
        ));
        let no_score = TriggerFacts { score: None, ..facts() };
        assert!(matches!(
            check(&rules(), &no_score),
            Err(Ineligible::NotAPromoter { score: None })
        ));
        let landline = TriggerFacts {
            phone: E164::parse_mobile("+442079460000", "GB"),
            ..facts()
        };
        assert_eq!(
            check(&rules(), &landline),
            Err(Ineligible::NoValidPhone(PhoneError::NotMobile))
        );
        let opted_out = TriggerFacts {
            opted_out: true,
            ..facts()
        };
        assert_eq!(check(&rules(), &opted_out), Err(Ineligible::OptedOut));
        let recent = TriggerFacts {
            since_last_invite_ms: Some(10 * DAY_MS),
            ..facts()
        };
        assert_eq!(
            check(&rules(), &recent),
            Err(Ineligible::CoolingDown {
                last_invited_days_ago: 10
            })
        );
        let old = TriggerFacts {
            since_last_invite_ms: Some(91 * DAY_MS),
            invites_so_far: 1,
            ..facts()
        };
        assert!(check(&rules(), &old).is_ok());
        let many = TriggerFacts {
            since_last_invite_ms: Some(400 * DAY_MS),
            invites_so_far: 3,
            ..facts()
        };
        assert_eq!(
            check(&rules(), &many),
            Err(Ineligible::InviteLimitReached { invites: 3 })
        );
    }
}
