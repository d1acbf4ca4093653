//! The referrer's nomination from the Flow: validated fields, or why it is refused.

use serde_json::Value;

use super::phone::{PhoneError, E164};
use super::state::{persisted, Persisted};

pub const MAX_NAME_CHARS: usize = 80;
pub const MAX_MESSAGE_CHARS: usize = 500;

/// What the Flow's `response_json` carried.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowReply {
    pub flow_token: Option<String>,
    pub friend_name: String,
    pub friend_phone: String,
    pub personal_message: Option<String>,
    pub consent: bool,
}

/// Parses `response_json` (a JSON string inside the webhook). Empty optional fields may be
/// `""` or missing; consent may be a boolean or a string.
pub fn parse_flow_reply(response_json: &str) -> Option<FlowReply> {
    let value: Value = serde_json::from_str(response_json).ok()?;
    value.is_object().then(|| flow_reply_from(&value))
}

/// The form's fields from a JSON object: the `nfm_reply`'s `response_json`, or the `data`
/// of an endpoint request (the same keys).
pub fn flow_reply_from(value: &Value) -> FlowReply {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    let consent = match value.get("friend_consent").or_else(|| value.get("consent")) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => {
            matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1")
        }
        _ => false,
    };
    FlowReply {
        flow_token: text("flow_token").filter(|t| !t.is_empty() && t != "unused"),
        friend_name: text("friend_name").unwrap_or_default(),
        friend_phone: text("friend_phone").unwrap_or_default(),
        personal_message: text("personal_message")
            .or_else(|| text("message"))
            .filter(|m| !m.trim().is_empty()),
        consent,
    }
}

/// A nomination that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nomination {
    pub friend_name: String,
    pub friend_phone: E164,
    pub personal_message: Option<String>,
    pub consent: bool,
}

/// Why a nomination is refused; each has a reply to the referrer and an in-Flow error in
/// every language's catalogue (`templates/messages/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NominationRefusal {
    InvalidToken,
    InvalidName,
    InvalidPhone(PhoneError),
    MessageTooLong,
    SelfReferral,
    AlreadyReferred,
    AlreadyCustomer,
    TooManyOpenReferrals,
    FriendOptedOut,
}

impl NominationRefusal {
    /// One of each kind.
    pub const ALL: [NominationRefusal; 9] = [
        NominationRefusal::InvalidToken,
        NominationRefusal::InvalidName,
        NominationRefusal::InvalidPhone(PhoneError::Invalid),
        NominationRefusal::MessageTooLong,
        NominationRefusal::SelfReferral,
        NominationRefusal::AlreadyReferred,
        NominationRefusal::AlreadyCustomer,
        NominationRefusal::TooManyOpenReferrals,
        NominationRefusal::FriendOptedOut,
    ];

    /// The reason recorded on the referral.
    pub fn recorded(&self) -> ReferralReason {
        match self {
            NominationRefusal::InvalidToken => ReferralReason::InvalidFlowToken,
            NominationRefusal::InvalidName => ReferralReason::InvalidName,
            NominationRefusal::InvalidPhone(_) => ReferralReason::InvalidPhone,
            NominationRefusal::MessageTooLong => ReferralReason::MessageTooLong,
            NominationRefusal::SelfReferral => ReferralReason::SelfReferral,
            NominationRefusal::AlreadyReferred => ReferralReason::AlreadyReferred,
            NominationRefusal::AlreadyCustomer => ReferralReason::AlreadyCustomer,
            NominationRefusal::TooManyOpenReferrals => ReferralReason::TooManyOpenReferrals,
            NominationRefusal::FriendOptedOut => ReferralReason::FriendOptedOut,
        }
    }

    /// The reason's name (the key of its reply in the message catalogue, too).
    pub fn reason(&self) -> &'static str {
        self.recorded().as_str()
    }
}

/// Why a referral is in its state, as recorded on it: the refusal of its nomination, or
/// how it began (a code-only purchase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReferralReason {
    InvalidFlowToken,
    InvalidName,
    InvalidPhone,
    MessageTooLong,
    SelfReferral,
    AlreadyReferred,
    AlreadyCustomer,
    TooManyOpenReferrals,
    FriendOptedOut,
    /// Created at conversion from a referrer's code a number nobody nominated used.
    CodeOnly,
}

persisted!(ReferralReason {
    InvalidFlowToken => "invalid_flow_token",
    InvalidName => "invalid_name",
    InvalidPhone => "invalid_phone",
    MessageTooLong => "message_too_long",
    SelfReferral => "self_referral",
    AlreadyReferred => "already_referred",
    AlreadyCustomer => "already_customer",
    TooManyOpenReferrals => "too_many_open_referrals",
    FriendOptedOut => "friend_opted_out",
    CodeOnly => "code_only",
});

/// What is known of a nomination beyond its fields; `None` is "not known yet", left to a
/// later check (the store's unique index at insert, the screening job after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// The referrer has `programme.max_open_referrals` open referrals already.
    pub referrer_at_limit: Option<bool>,
    /// The friend has an open referral inside the attribution window.
    pub friend_taken: Option<bool>,
    pub friend_opted_out: Option<bool>,
    /// HubSpot has the friend at the customer lifecycle stage.
    pub friend_is_customer: Option<bool>,
}

/// The nomination rules beyond the fields, in order. Both the endpoint Flow (before the
/// Flow closes) and the static Flow's path (as each fact becomes known) use these.
pub fn check_standing(standing: &Standing) -> Result<(), NominationRefusal> {
    let rules = [
        (standing.referrer_at_limit, NominationRefusal::TooManyOpenReferrals),
        (standing.friend_taken, NominationRefusal::AlreadyReferred),
        (standing.friend_opted_out, NominationRefusal::FriendOptedOut),
        (standing.friend_is_customer, NominationRefusal::AlreadyCustomer),
    ];
    match rules.into_iter().find(|(fact, _)| *fact == Some(true)) {
        Some((_, refusal)) => Err(refusal),
        None => Ok(()),
    }
}

/// Collapses whitespace: WhatsApp template parameters may not hold newlines, tabs or runs
/// of more than four spaces.
pub fn single_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Validates the fields (the token and the checks that need the store come separately).
pub fn validate(reply: &FlowReply, referrer: &E164, default_region: &str) -> Result<Nomination, NominationRefusal> {
    let name = reply.friend_name.trim();
    let name_chars = name.chars().count();
    if name_chars == 0 || name_chars > MAX_NAME_CHARS {
        return Err(NominationRefusal::InvalidName);
    }
    let phone = E164::parse_mobile(&reply.friend_phone, default_region).map_err(NominationRefusal::InvalidPhone)?;
    let message = reply
        .personal_message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    if message.is_some_and(|m| m.chars().count() > MAX_MESSAGE_CHARS) {
        return Err(NominationRefusal::MessageTooLong);
    }
    if &phone == referrer {
        return Err(NominationRefusal::SelfReferral);
    }
    Ok(Nomination {
        friend_name: name.to_string(),
        friend_phone: phone,
        personal_message: message.map(str::to_string),
        consent: reply.consent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn referrer() -> E164 {
        E164::parse_mobile("+447911123456", "GB").expect("valid")
    }

    fn reply() -> FlowReply {
        FlowReply {
            flow_token: Some("t".into()),
            friend_name: "  Zoë Ñúñez 😀 ".into(),
            friend_phone: "07911 123457".into(),
            personal_message: Some("Você vai adorar! 🎉".into()),
            consent: true,
        }
    }

    #[test]
    fn parses_response_json_variants() {
        let full = r#"{"flow_token":"rl1.1.a.b","friend_name":"Ana","friend_phone":"+12025550102","personal_message":"","friend_consent":"true"}"#;
        let parsed = parse_flow_reply(full).expect("json");
        assert_eq!(parsed.flow_token.as_deref(), Some("rl1.1.a.b"));
        assert_eq!(parsed.personal_message, None, "empty optional field");
        assert!(parsed.consent);
        let minimal =
            parse_flow_reply(r#"{"friend_name":"Ana","friend_phone":"1","message":"hi","friend_consent":false}"#)
                .expect("json");
        assert_eq!(minimal.flow_token, None);
        assert_eq!(minimal.personal_message.as_deref(), Some("hi"));
        assert!(!minimal.consent);
        assert!(parse_flow_reply("not json").is_none());
    }

    #[test]
    fn valid_nomination_keeps_accents_and_emoji() {
        let nomination = validate(&reply(), &referrer(), "GB").expect("valid");
        assert_eq!(nomination.friend_name, "Zoë Ñúñez 😀");
        assert_eq!(nomination.friend_phone.as_str(), "+447911123457");
        assert_eq!(nomination.personal_message.as_deref(), Some("Você vai adorar! 🎉"));
    }

    #[test]
    fn refusals() {
        let check = |r: FlowReply| validate(&r, &referrer(), "GB");
        assert_eq!(
            check(FlowReply {
                friend_name: " ".into(),
                ..reply()
            }),
            Err(NominationRefusal::InvalidName)
        );
        assert_eq!(
            check(FlowReply {
                friend_name: "é".repeat(81),
                ..reply()
            }),
            Err(NominationRefusal::InvalidName)
        );
        assert!(
            check(FlowReply {
                friend_name: "é".repeat(80),
                ..reply()
            })
            .is_ok(),
            "80 characters, not bytes"
        );
        assert!(matches!(
            check(FlowReply {
                friend_phone: "12".into(),
                ..reply()
            }),
            Err(NominationRefusal::InvalidPhone(_))
        ));
        assert_eq!(
            check(FlowReply {
                personal_message: Some("x".repeat(501)),
                ..reply()
            }),
            Err(NominationRefusal::MessageTooLong)
        );
        assert_eq!(
            check(FlowReply {
                friend_phone: "+44 7911 123456".into(),
                ..reply()
            }),
            Err(NominationRefusal::SelfReferral)
        );
    }

    #[test]
    fn standing_rules_in_order_and_unknown_facts_pass() {
        assert_eq!(check_standing(&Standing::default()), Ok(()));
        let all = Standing {
            referrer_at_limit: Some(true),
            friend_taken: Some(true),
            friend_opted_out: Some(true),
            friend_is_customer: Some(true),
        };
        assert_eq!(check_standing(&all), Err(NominationRefusal::TooManyOpenReferrals));
        let only = |s: Standing| check_standing(&s);
        assert_eq!(
            only(Standing {
                referrer_at_limit: Some(false),
                ..all
            }),
            Err(NominationRefusal::AlreadyReferred)
        );
        assert_eq!(
            only(Standing {
                friend_opted_out: Some(true),
                ..Standing::default()
            }),
            Err(NominationRefusal::FriendOptedOut)
        );
        assert_eq!(
            only(Standing {
                friend_is_customer: Some(true),
                friend_opted_out: Some(false),
                ..Standing::default()
            }),
            Err(NominationRefusal::AlreadyCustomer)
        );
        assert_eq!(
            only(Standing {
                friend_is_customer: None,
                friend_opted_out: Some(false),
                ..Standing::default()
            }),
            Ok(())
        );
    }

    #[test]
    fn single_line_collapses_whitespace() {
        assert_eq!(single_line("a\n\nb\t c     d"), "a b c d");
    }
}
