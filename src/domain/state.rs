//! Every state referloop persists is an enum; its name in the database is written once,
//! in the enum's `as_str`, and read back only through [`Persisted::parse`]. SQL that needs
//! a list of states builds it with [`sql_list`] from the enum's own lists.

/// A state stored as text.
pub trait Persisted: Copy + PartialEq + 'static {
    /// Every value, in order.
    const ALL: &'static [Self];

    fn as_str(self) -> &'static str;

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|state| state.as_str() == s)
    }
}

/// `'a', 'b', 'c'`: the states as an SQL list for `state IN (...)`. The names are
/// compile-time constants, never input, so inlining them is safe.
pub fn sql_list<T: Persisted>(states: &[T]) -> String {
    states
        .iter()
        .map(|state| format!("'{}'", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stored name that no enum value has (a row written by a newer binary, or by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

/// Decodes a stored name (what each state enum's `TryFrom<String>` does, for sqlx).
pub fn decode<T: Persisted>(name: String) -> Result<T, UnknownState> {
    T::parse(&name).ok_or(UnknownState(name))
}

/// How an enum is stored, written once, next to its declaration: each variant and its
/// name, in order. The name is the value in the database, in JSON (the API, the CLI's
/// listings, job payloads) and in the configuration. It gives [`Persisted`] (the names,
/// every value, parsing), `TryFrom<String>` (for sqlx's `#[sqlx(try_from = "String")]`,
/// so a row decodes its column once, where it is read), and serde by the same names.
macro_rules! persisted {
    ($name:ident { $($variant:ident => $stored:literal),+ $(,)? }) => {
        impl $crate::domain::state::Persisted for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];

            fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $stored),+
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::domain::state::UnknownState;

            fn try_from(name: String) -> Result<Self, Self::Error> {
                $crate::domain::state::decode(name)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str($crate::domain::state::Persisted::as_str(*self))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                <Self as $crate::domain::state::Persisted>::parse(&name)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&name, &[$($stored),+]))
            }
        }
    };
}
pub(crate) use persisted;

/// An invite (one trigger): `invited` → `flow_sent` → `nominated`; or `ineligible`.
/// The referrer's `referral_status` in HubSpot takes the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InviteState {
    Ineligible,
    Invited,
    FlowSent,
    Nominated,
}

persisted!(InviteState {
    Ineligible => "ineligible",
    Invited => "invited",
    FlowSent => "flow_sent",
    Nominated => "nominated",
});

impl InviteState {
    /// Whether moving to `next` is progress (never backwards, never out of `ineligible`).
    pub fn may_advance_to(self, next: InviteState) -> bool {
        let rank = |s: InviteState| match s {
            Self::Ineligible => None,
            Self::Invited => Some(0),
            Self::FlowSent => Some(1),
            Self::Nominated => Some(2),
        };
        matches!((rank(self), rank(next)), (Some(a), Some(b)) if b > a)
    }
}

/// Where a conversion signal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversionSource {
    /// A HubSpot workflow's conversion webhook.
    Hubspot,
    /// A Stripe payment (`checkout.session.completed`).
    Stripe,
    /// Our admin API (`POST /api/v1/conversions`).
    Api,
}

persisted!(ConversionSource {
    Hubspot => "hubspot",
    Stripe => "stripe",
    Api => "api",
});

/// How a conversion found its referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchedBy {
    /// The friend's HubSpot contact, recorded on the referral.
    HubspotContact,
    /// The referrer's code and the friend's number together.
    CodeAndPhone,
    Code,
    Phone,
    /// Stripe's `client_reference_id`, which names the referral.
    ClientReferenceId,
    /// A referrer's code from a number nobody nominated: the referral was created then.
    CodeOnly,
}

persisted!(MatchedBy {
    HubspotContact => "hubspot_contact",
    CodeAndPhone => "code_and_phone",
    Code => "code",
    Phone => "phone",
    ClientReferenceId => "client_reference_id",
    CodeOnly => "code_only",
});

/// What a conversion signal achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversionOutcome {
    /// Being recorded (never seen outside the recording transaction).
    Pending,
    /// It converted its referral.
    Converted,
    /// Its referral had converted before (through another signal).
    AlreadyConverted,
    /// Its referral was nominated before the attribution window.
    OutsideWindow,
    /// Its referral cannot convert (refused or expired).
    NotConvertible,
    /// No referral matched.
    Unattributed,
}

persisted!(ConversionOutcome {
    Pending => "pending",
    Converted => "converted",
    AlreadyConverted => "already_converted",
    OutsideWindow => "outside_window",
    NotConvertible => "not_convertible",
    Unattributed => "unattributed",
});

impl ConversionOutcome {
    /// A repeated signal keeps a final outcome; the others are evaluated again (the
    /// friend may have been nominated since).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Converted | Self::AlreadyConverted | Self::OutsideWindow)
    }
}

/// An inbox event or a job: `queued` → `running` → `done`; a failure goes to `failed`
/// (due again at `run_at`) or, with no attempts left, `dead` (kept, visible, re-drivable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueState {
    Queued,
    Running,
    Done,
    Failed,
    Dead,
}

persisted!(QueueState {
    Queued => "queued",
    Running => "running",
    Done => "done",
    Failed => "failed",
    Dead => "dead",
});

impl QueueState {
    /// States a worker may claim from (with `run_at` due).
    pub const WAITING: &'static [Self] = &[Self::Queued, Self::Failed];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Persisted + std::fmt::Debug + serde::Serialize>() {
        for state in T::ALL {
            assert_eq!(T::parse(state.as_str()), Some(*state));
            // The JSON that CLI listings print uses the same names.
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::json!(state.as_str()))
            );
        }
        assert_eq!(T::parse("no such state"), None);
    }

    #[test]
    fn every_state_round_trips_its_name() {
        round_trips::<InviteState>();
        round_trips::<ConversionOutcome>();
        round_trips::<QueueState>();
        round_trips::<crate::domain::referral::ReferralState>();
        round_trips::<crate::domain::reward::RewardState>();
        round_trips::<crate::domain::messaging::MessageStatus>();
        round_trips::<crate::domain::messaging::MessagePurpose>();
        round_trips::<crate::domain::reward::Beneficiary>();
        round_trips::<crate::domain::reward::RewardKind>();
        round_trips::<crate::domain::access::Role>();
        round_trips::<crate::domain::funnel::Step>();
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_names_it_could_be() {
        let refused = serde_json::from_str::<QueueState>("\"finished\"").expect_err("not a state");
        let said = refused.to_string();
        assert!(
            said.contains("finished") && said.contains("queued") && said.contains("dead"),
            "{said}"
        );
        assert_eq!(
            QueueState::try_from("finished".to_string()),
            Err(UnknownState("finished".into()))
        );
    }

    /// The states a README diagram names: the words at the start of a line (a comma list
    /// before the first arrow) and the first word after each `►`.
    fn states_in_diagram(readme: &str, name: &str) -> std::collections::BTreeSet<String> {
        let marker = format!("<!-- states:{name} ");
        let after_marker = readme.split(&marker).nth(1).unwrap_or_default();
        let block = after_marker
            .split("```text")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_default();
        let word = |text: &str| -> String {
            text.trim()
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        };
        let mut states = std::collections::BTreeSet::new();
        for line in block.lines() {
            let start = line.trim_start_matches([' ', '│', '├', '└']);
            if !start.starts_with("──") {
                let head = start.split("──").next().unwrap_or_default();
                let head = head.split('(').next().unwrap_or_default();
                states.extend(head.split(',').map(word).filter(|w| !w.is_empty()));
            }
            states.extend(line.split('►').skip(1).map(word).filter(|w| !w.is_empty()));
        }
        states
    }

    fn diagram_matches<T: Persisted>(readme: &str, name: &str) {
        let named = states_in_diagram(readme, name);
        let states: std::collections::BTreeSet<String> = T::ALL.iter().map(|s| s.as_str().to_string()).collect();
        assert_eq!(named, states, "README's {name} diagram names exactly the enum's states");
    }

    #[test]
    fn readme_state_diagrams_match_the_enums() {
        let readme = include_str!("../../README.md");
        diagram_matches::<crate::domain::referral::ReferralState>(readme, "referral");
        diagram_matches::<crate::domain::reward::RewardState>(readme, "reward");
        diagram_matches::<crate::domain::messaging::MessageStatus>(readme, "message");
        diagram_matches::<QueueState>(readme, "queue");
    }

    #[test]
    fn sql_lists_are_quoted_names() {
        assert_eq!(sql_list(QueueState::WAITING), "'queued', 'failed'");
    }

    #[test]
    fn invites_only_move_forward() {
        use InviteState as S;
        assert!(S::Invited.may_advance_to(S::FlowSent));
        assert!(S::Invited.may_advance_to(S::Nominated));
        assert!(S::FlowSent.may_advance_to(S::Nominated));
        assert!(!S::Nominated.may_advance_to(S::FlowSent));
        assert!(!S::Ineligible.may_advance_to(S::Invited));
        assert!(!S::Invited.may_advance_to(S::Ineligible));
    }
}
