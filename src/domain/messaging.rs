//! WhatsApp messaging rules: status order, what Meta's error codes mean for us, and
//! opt-out keywords.

use std::time::Duration;

use super::state::persisted;

/// A message's status: ours while we send it (`queued` → `sending` → `accepted`, or
/// `suppressed` when policy stops it), then Meta's, which only move forward
/// (accepted < sent < delivered < read). `failed` is final, and is ignored once the
/// message was delivered or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Queued,
    /// A send attempt began; Meta may or may not have it (see the send job).
    Sending,
    /// Not sent: the recipient opted out of marketing.
    Suppressed,
    Accepted,
    Sent,
    Delivered,
    Read,
    Failed,
}

persisted!(MessageStatus {
    Queued => "queued",
    Sending => "sending",
    Suppressed => "suppressed",
    Accepted => "accepted",
    Sent => "sent",
    Delivered => "delivered",
    Read => "read",
    Failed => "failed",
});

impl MessageStatus {
    /// Before Meta confirmed the send: a status from Meta (echoing our callback data)
    /// proves it was accepted.
    pub const UNCONFIRMED: &'static [Self] = &[Self::Queued, Self::Sending];

    fn rank(self) -> u8 {
        match self {
            Self::Queued | Self::Sending => 0,
            Self::Accepted => 1,
            Self::Sent => 2,
            Self::Delivered => 3,
            Self::Read => 4,
            Self::Failed | Self::Suppressed => 5,
        }
    }

    /// The status after Meta reported `incoming`, or `None` when it changes nothing.
    pub fn advance(self, incoming: MessageStatus) -> Option<MessageStatus> {
        match (self, incoming) {
            (Self::Failed | Self::Suppressed, _) => None,
            (Self::Delivered | Self::Read, Self::Failed) => None,
            (current, next) if next.rank() > current.rank() => Some(next),
            _ => None,
        }
    }

    /// Where Meta's `incoming` statuses take a message of `purpose` now in `self`, when
    /// all they do is move its status; `None` when one of them causes more and must be
    /// handled alone: a refusal (a resend, an opt-out, a referral's fallback) or a
    /// friend's invite first reaching the phone (the referral moves, in the commit that
    /// records it delivered; the invite's `sent` before, and its `read` after, only move
    /// its status). Statuses that only move a status commute (it only rises), so they
    /// may be applied together, in any order.
    pub fn after_status_only(self, purpose: MessagePurpose, incoming: &[MessageStatus]) -> Option<MessageStatus> {
        let refused = |s: MessageStatus| matches!(s, Self::Failed | Self::Suppressed);
        if refused(self) || incoming.iter().copied().any(refused) {
            return None;
        }
        let to = incoming
            .iter()
            .fold(self, |now, next| now.advance(*next).unwrap_or(now));
        let reaches_friend = purpose == MessagePurpose::FriendInvite && to.is_delivered() && !self.is_delivered();
        (!reaches_friend).then_some(to)
    }

    /// Meta reported the message on the recipient's phone.
    pub fn is_delivered(self) -> bool {
        matches!(self, Self::Delivered | Self::Read)
    }
}

/// What a message is for; the send job and the status handler act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessagePurpose {
    /// `tmpl_referral_invite` to the customer.
    Invite,
    /// The nomination Flow (template or interactive).
    Flow,
    /// The marketing template to a consenting friend.
    FriendInvite,
    /// The forwardable text to the referrer.
    ShareLink,
    /// The text to a friend who arrived through a share link.
    FriendWelcome,
    /// A refused nomination, told to the referrer.
    Refusal,
    /// `tmpl_referral_thanks` to the referrer.
    Thanks,
    /// A reward message.
    Reward,
    /// A reply inside the service window (opt-out acknowledgement, refusals).
    Reply,
    /// `tmpl_referral_reminder` to a customer who did not act on the invite.
    Reminder,
    /// `tmpl_referral_nudge` to a referrer whose friend has not converted.
    Nudge,
    /// A free-form reminder to a friend, inside the window their message opened.
    FriendReminder,
}

persisted!(MessagePurpose {
    Invite => "invite",
    Flow => "flow",
    FriendInvite => "friend_invite",
    ShareLink => "share_link",
    FriendWelcome => "friend_welcome",
    Refusal => "refusal",
    Thanks => "thanks",
    Reward => "reward",
    Reply => "reply",
    Reminder => "reminder",
    Nudge => "nudge",
    FriendReminder => "friend_reminder",
});

/// Meta's `event` in a `message_template_status_update`, as recorded per template and
/// language. Meta documents APPROVED, ARCHIVED, DELETED, DISABLED, FLAGGED, IN_APPEAL,
/// LIMIT_EXCEEDED, LOCKED, PAUSED, PENDING, PENDING_DELETION, REINSTATED and REJECTED; one
/// it adds later is kept as `Other` (and holds sends, as any event not known to allow them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateEvent {
    Approved,
    Archived,
    Deleted,
    Disabled,
    Flagged,
    InAppeal,
    LimitExceeded,
    Locked,
    Paused,
    Pending,
    PendingDeletion,
    Reinstated,
    Rejected,
    Other(String),
}

impl TemplateEvent {
    const NAMED: [(TemplateEvent, &'static str); 13] = [
        (TemplateEvent::Approved, "APPROVED"),
        (TemplateEvent::Archived, "ARCHIVED"),
        (TemplateEvent::Deleted, "DELETED"),
        (TemplateEvent::Disabled, "DISABLED"),
        (TemplateEvent::Flagged, "FLAGGED"),
        (TemplateEvent::InAppeal, "IN_APPEAL"),
        (TemplateEvent::LimitExceeded, "LIMIT_EXCEEDED"),
        (TemplateEvent::Locked, "LOCKED"),
        (TemplateEvent::Paused, "PAUSED"),
        (TemplateEvent::Pending, "PENDING"),
        (TemplateEvent::PendingDeletion, "PENDING_DELETION"),
        (TemplateEvent::Reinstated, "REINSTATED"),
        (TemplateEvent::Rejected, "REJECTED"),
    ];

    /// Meta's name, as sent and as stored.
    pub fn parse(name: &str) -> TemplateEvent {
        Self::NAMED
            .iter()
            .find(|(_, known)| *known == name)
            .map_or_else(|| TemplateEvent::Other(name.to_string()), |(event, _)| event.clone())
    }

    pub fn as_str(&self) -> &str {
        match self {
            TemplateEvent::Other(name) => name,
            known => Self::NAMED
                .iter()
                .find(|(event, _)| event == known)
                .map_or("", |(_, name)| name),
        }
    }

    /// Whether sends of the template may go out. A flagged template is still approved
    /// (its quality is low); a reinstated one is approved again.
    pub fn sendable(&self) -> bool {
        matches!(
            self,
            TemplateEvent::Approved | TemplateEvent::Reinstated | TemplateEvent::Flagged
        )
    }
}

impl From<String> for TemplateEvent {
    fn from(name: String) -> TemplateEvent {
        TemplateEvent::parse(&name)
    }
}

impl std::fmt::Display for TemplateEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a marketing opt-out (or its lifting) came from; the dashboard's drop-out
/// reasons group by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptOutSource {
    /// A stop keyword in the person's language.
    Keyword,
    /// The invite's "Stop" button.
    Button,
    /// WhatsApp's own marketing preference: stopped, or resumed.
    WhatsAppStop,
    WhatsAppResume,
    /// Meta refused a marketing send with 131050 (the user stopped marketing messages).
    Meta131050,
}

persisted!(OptOutSource {
    Keyword => "keyword",
    Button => "button",
    WhatsAppStop => "whatsapp_stop",
    WhatsAppResume => "whatsapp_resume",
    Meta131050 => "meta_131050",
});

/// What to do about an error Meta returned, synchronously or in a `failed` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendErrorClass {
    /// Throughput, pair-rate, transient: retry no sooner than the delay.
    Retry { not_before: Duration },
    /// 131049: the per-user marketing limit. No retry for 24 h; a share link still works.
    MarketingLimit,
    /// 131050: the user stopped marketing messages from us: record the opt-out.
    OptedOut,
    /// 131047: outside the 24-hour window: a template is needed.
    OutsideWindow,
    /// 131026: not reachable on WhatsApp.
    Undeliverable,
    /// Our request or template is wrong (100, 131008, 131009, 132xxx, 130472, 131030): no retry.
    Permanent,
    /// The whole account is blocked (190 token, 131042 payment, 368/131031 policy, 131048
    /// spam, permission errors): every send will fail until an operator acts.
    AccountLevel,
}

impl SendErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            SendErrorClass::Retry { .. } => "retry",
            SendErrorClass::MarketingLimit => "marketing_limit",
            SendErrorClass::OptedOut => "opted_out",
            SendErrorClass::OutsideWindow => "outside_window",
            SendErrorClass::Undeliverable => "undeliverable",
            SendErrorClass::Permanent => "permanent",
            SendErrorClass::AccountLevel => "account_level",
        }
    }
}

/// Classifies by Meta's `code` first (the text varies), then by HTTP status.
pub fn classify(code: Option<i64>, http_status: Option<u16>) -> SendErrorClass {
    let retry = |secs| SendErrorClass::Retry {
        not_before: Duration::from_secs(secs),
    };
    match code {
        Some(130429) => retry(2),
        // One message per 6 seconds to the same user.
        Some(131056) => retry(6),
        Some(131000 | 131016 | 1 | 2) => retry(5),
        Some(131057) => retry(60),
        Some(4 | 80007) => retry(60),
        Some(131049) => SendErrorClass::MarketingLimit,
        Some(131050) => SendErrorClass::OptedOut,
        Some(131047) => SendErrorClass::OutsideWindow,
        Some(131026) => SendErrorClass::Undeliverable,
        Some(190 | 131042 | 368 | 131031 | 131048 | 0 | 10) => SendErrorClass::AccountLevel,
        Some(200..=299) => SendErrorClass::AccountLevel,
        Some(100 | 131008 | 131009 | 130472 | 131030) => SendErrorClass::Permanent,
        Some(132000..=132999) => SendErrorClass::Permanent,
        _ => match http_status {
            Some(429) => retry(5),
            Some(s) if s >= 500 => retry(5),
            Some(401 | 403) => SendErrorClass::AccountLevel,
            None => retry(5),
            _ => SendErrorClass::Permanent,
        },
    }
}

/// The stop keywords of every configured language. A message opts its sender out when,
/// whole, it is one of them: compared after Unicode case folding, with accents and
/// surrounding whitespace and punctuation ignored ("¡Baja!", "arreter" and "ARRÊTER" all
/// count; "don't stop" does not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopKeywords {
    /// (folded keyword, language)
    folded: Vec<(String, String)>,
}

impl StopKeywords {
    /// From (language, keywords) pairs, first language first: a keyword shared by several
    /// languages (STOP) answers in the first.
    pub fn new(by_language: impl IntoIterator<Item = (String, Vec<String>)>) -> StopKeywords {
        let mut folded: Vec<(String, String)> = vec![];
        for (language, keywords) in by_language {
            for keyword in keywords {
                let key = fold_for_matching(&keyword);
                if !key.is_empty() && !folded.iter().any(|(k, _)| *k == key) {
                    folded.push((key, language.clone()));
                }
            }
        }
        StopKeywords { folded }
    }

    /// The language of the keyword `text` is, if it is one.
    pub fn language_of(&self, text: &str) -> Option<&str> {
        let key = fold_for_matching(text);
        self.folded
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, language)| language.as_str())
    }
}

/// Trimmed of whitespace and punctuation at both ends, compatibility-decomposed (full-width
/// letters become letters), accents removed, case-folded.
fn fold_for_matching(text: &str) -> String {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    let trimmed = text.trim_matches(|c: char| !c.is_alphanumeric());
    let without_accents: String = trimmed.nfkd().filter(|c| !is_combining_mark(*c)).collect();
    caseless::default_case_fold_str(&without_accents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_events_keep_their_names_and_only_approval_sends() {
        for (event, name) in TemplateEvent::NAMED {
            assert_eq!(TemplateEvent::parse(name), event);
            assert_eq!(event.as_str(), name);
        }
        let later = TemplateEvent::parse("SOMETHING_NEW");
        assert_eq!(later, TemplateEvent::Other("SOMETHING_NEW".into()));
        assert_eq!(later.as_str(), "SOMETHING_NEW");
        assert!(!later.sendable());
        let sendable: Vec<&str> = TemplateEvent::NAMED
            .iter()
            .filter(|(event, _)| event.sendable())
            .map(|(_, name)| *name)
            .collect();
        assert_eq!(sendable, ["APPROVED", "FLAGGED", "REINSTATED"]);
    }
    use MessageStatus::*;

    #[test]
    fn statuses_never_move_backwards() {
        assert_eq!(Accepted.advance(Sent), Some(Sent));
        assert_eq!(Sent.advance(Read), Some(Read));
        assert_eq!(Read.advance(Delivered), None);
        assert_eq!(Delivered.advance(Sent), None);
        assert_eq!(Delivered.advance(Delivered), None);
        assert_eq!(Sent.advance(Failed), Some(Failed));
        assert_eq!(Delivered.advance(Failed), None);
        assert_eq!(Read.advance(Failed), None);
        assert_eq!(Failed.advance(Read), None);
        assert_eq!(Queued.advance(Delivered), Some(Delivered));
        assert_eq!(Sending.advance(Sent), Some(Sent));
        assert_eq!(Suppressed.advance(Delivered), None);
    }

    #[test]
    fn statuses_that_only_move_a_status_commute() {
        let one_by_one = |start: MessageStatus, incoming: &[MessageStatus]| {
            incoming
                .iter()
                .fold(start, |now, next| now.advance(*next).unwrap_or(now))
        };
        let orders: [[MessageStatus; 3]; 6] = [
            [Sent, Delivered, Read],
            [Sent, Read, Delivered],
            [Delivered, Sent, Read],
            [Delivered, Read, Sent],
            [Read, Sent, Delivered],
            [Read, Delivered, Sent],
        ];
        for start in [Queued, Sending, Accepted, Sent, Delivered, Read] {
            for order in orders {
                for n in 1..=3 {
                    let incoming = &order[..n];
                    assert_eq!(
                        start.after_status_only(MessagePurpose::Invite, incoming),
                        Some(one_by_one(start, incoming))
                    );
                }
                // Every order of the same statuses ends in the same place.
                assert_eq!(one_by_one(start, &order), one_by_one(start, &orders[0]));
            }
        }
        // A refusal, or a friend's invite reaching the phone, is handled alone.
        assert_eq!(
            Sent.after_status_only(MessagePurpose::Invite, &[Delivered, Failed]),
            None
        );
        assert_eq!(Failed.after_status_only(MessagePurpose::Invite, &[Read]), None);
        assert_eq!(Sent.after_status_only(MessagePurpose::FriendInvite, &[Delivered]), None);
        assert_eq!(Accepted.after_status_only(MessagePurpose::FriendInvite, &[Read]), None);
        // A friend's invite before it reaches the phone, or after (the referral moved with
        // the first delivery), only moves its status.
        assert_eq!(
            Accepted.after_status_only(MessagePurpose::FriendInvite, &[Sent]),
            Some(Sent)
        );
        assert_eq!(
            Delivered.after_status_only(MessagePurpose::FriendInvite, &[Read]),
            Some(Read)
        );
        // Nothing new: no move.
        assert_eq!(
            Read.after_status_only(MessagePurpose::Thanks, &[Read, Delivered]),
            Some(Read)
        );
    }

    #[test]
    fn error_codes_decide() {
        assert_eq!(
            classify(Some(131056), Some(400)),
            SendErrorClass::Retry {
                not_before: Duration::from_secs(6)
            }
        );
        assert!(matches!(
            classify(Some(130429), Some(429)),
            SendErrorClass::Retry { .. }
        ));
        assert!(matches!(
            classify(Some(131000), Some(500)),
            SendErrorClass::Retry { .. }
        ));
        assert!(matches!(classify(Some(80007), Some(429)), SendErrorClass::Retry { .. }));
        assert!(matches!(classify(None, Some(503)), SendErrorClass::Retry { .. }));
        assert!(
            matches!(classify(None, None), SendErrorClass::Retry { .. }),
            "a timeout is retried"
        );
        assert_eq!(classify(Some(131049), Some(400)), SendErrorClass::MarketingLimit);
        assert_eq!(classify(Some(131050), None), SendErrorClass::OptedOut);
        assert_eq!(classify(Some(131047), Some(400)), SendErrorClass::OutsideWindow);
        assert_eq!(classify(Some(131026), None), SendErrorClass::Undeliverable);
        assert_eq!(classify(Some(132001), Some(404)), SendErrorClass::Permanent);
        assert_eq!(classify(Some(190), Some(401)), SendErrorClass::AccountLevel);
        assert_eq!(classify(Some(131042), Some(400)), SendErrorClass::AccountLevel);
        assert_eq!(classify(Some(368), Some(403)), SendErrorClass::AccountLevel);
        assert_eq!(classify(None, Some(400)), SendErrorClass::Permanent);
    }

    #[test]
    fn stop_keywords_in_each_language() {
        let list = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let keywords = StopKeywords::new([
            ("en_US".to_string(), list(&["STOP", "UNSUBSCRIBE"])),
            ("es".to_string(), list(&["BAJA", "PARAR"])),
            ("pt_BR".to_string(), list(&["PARAR", "SAIR"])),
            ("fr".to_string(), list(&["ARRÊTER", "STOP"])),
            ("de".to_string(), list(&["STOPP"])),
        ]);
        assert_eq!(keywords.language_of("stop"), Some("en_US"));
        assert_eq!(keywords.language_of("  Stop! "), Some("en_US"));
        assert_eq!(keywords.language_of("unsubscribe"), Some("en_US"));
        assert_eq!(keywords.language_of("¡Baja!"), Some("es"));
        assert_eq!(keywords.language_of("parar"), Some("es"), "shared: the first language");
        assert_eq!(keywords.language_of("Sair."), Some("pt_BR"));
        assert_eq!(keywords.language_of("arrêter"), Some("fr"));
        assert_eq!(keywords.language_of("ARRETER"), Some("fr"), "without the accent");
        assert_eq!(keywords.language_of("Arre\u{302}ter"), Some("fr"), "decomposed accent");
        assert_eq!(
            keywords.language_of("\u{a0}STOPP\u{3000}"),
            Some("de"),
            "Unicode spaces"
        );
        assert_eq!(keywords.language_of("ＳＴＯＰＰ"), Some("de"), "full-width letters");
        assert_eq!(keywords.language_of("don't stop"), None);
        assert_eq!(keywords.language_of("stopwatch"), None);
        assert_eq!(keywords.language_of(""), None);
        assert_eq!(keywords.language_of("!!!"), None);
    }
}

/// The language for a contact, along the chain: their language exactly (`pt-BR` →
/// `pt_BR`), else its primary language (`pt_BR` → `pt`, or the first `pt_*` there is),
/// else the default.
pub fn pick_language(contact_language: Option<&str>, available: &[String], default: &str) -> String {
    let Some(wanted) = contact_language
        .map(|l| l.trim().replace('-', "_"))
        .filter(|l| !l.is_empty())
    else {
        return default.to_string();
    };
    if let Some(exact) = available.iter().find(|a| a.eq_ignore_ascii_case(&wanted)) {
        return exact.clone();
    }
    let primary = wanted.split('_').next().unwrap_or("");
    if let Some(bare) = available.iter().find(|a| a.eq_ignore_ascii_case(primary)) {
        return bare.clone();
    }
    available
        .iter()
        .find(|a| a.split('_').next().is_some_and(|p| p.eq_ignore_ascii_case(primary)))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// The first word of a name, for a friendly greeting.
pub fn first_name(name: &str) -> String {
    name.split_whitespace().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod language_tests {
    use super::*;

    #[test]
    fn picks_a_matching_template_language() {
        let available: Vec<String> = ["en_US", "pt_BR", "es"].iter().map(|s| s.to_string()).collect();
        assert_eq!(pick_language(Some("pt-br"), &available, "en_US"), "pt_BR");
        assert_eq!(pick_language(Some("pt"), &available, "en_US"), "pt_BR");
        assert_eq!(pick_language(Some("es-MX"), &available, "en_US"), "es");
        assert_eq!(pick_language(Some("de"), &available, "en_US"), "en_US");
        let with_bare: Vec<String> = ["en_US", "pt", "pt_PT"].iter().map(|s| s.to_string()).collect();
        assert_eq!(pick_language(Some("pt_BR"), &with_bare, "en_US"), "pt", "pt_BR → pt");
        assert_eq!(pick_language(Some("PT-pt"), &with_bare, "en_US"), "pt_PT");
        assert_eq!(pick_language(Some(" "), &with_bare, "en_US"), "en_US");
        assert_eq!(pick_language(None, &available, "en_US"), "en_US");
        assert_eq!(first_name("  Zoë Ñúñez "), "Zoë");
    }
}
