//! What the dashboard says to a marketer: each stored name (a state, a reason, a kind) in
//! words. The pages keep the stored name in a tooltip for engineers; the API answers
//! with the stored names themselves.

/// The words for a stored name, when it has some.
pub fn words(code: &str) -> Option<&'static str> {
    Some(match code {
        // Referral states.
        "nominated" => "nominated",
        "direct_invite_queued" => "invitation being sent",
        "awaiting_friend" => "waiting for the friend to write",
        "friend_invited" => "friend invited",
        "friend_unreachable" => "friend not reachable on WhatsApp",
        "refused" => "refused",
        "expired" => "expired",
        "converted" => "converted",
        // Invite states.
        "ineligible" => "not eligible",
        "invited" => "invited",
        "flow_sent" => "referral form sent",
        // Funnel steps.
        "triggers" => "triggers",
        "eligible" => "eligible",
        "friend_reached" => "friend reached",
        "rewarded" => "rewarded",
        // Messages: what for, and how they went.
        "invite" => "invitation",
        "flow" => "referral form",
        "friend_invite" => "friend's invitation",
        "share_link" => "share link",
        "friend_welcome" => "friend's welcome",
        "refusal" => "refusal reply",
        "thanks" => "thank-you",
        "reward" => "reward",
        "reply" => "reply",
        "queued" => "queued",
        "sending" => "sending",
        "suppressed" => "not sent (suppressed)",
        "accepted" => "accepted by WhatsApp",
        "sent" => "sent",
        "delivered" => "delivered",
        "read" => "read",
        "failed" => "failed",
        // Rewards.
        "referrer" => "referrer",
        "friend" => "friend",
        "pending" => "pending",
        "issuing" => "being issued",
        "issued" => "issued",
        "capped" => "over the referrer's limit",
        "void" => "void",
        "static_code" => "discount code",
        "code_pool" => "code from the pool",
        "credit" => "credit",
        "stripe_promotion_code" => "Stripe promotion code",
        // Conversions.
        "already_converted" => "already converted",
        "outside_window" => "outside the attribution window",
        "not_convertible" => "could not convert",
        "unattributed" => "matched no referral",
        // Why a trigger was not eligible.
        "not_a_promoter" => "not a promoter",
        "opted_out" => "opted out",
        "cooldown" => "invited recently",
        "invite_limit" => "invitation limit reached",
        "no_phone" => "no phone number",
        "phone_unparseable" => "phone number unreadable",
        "phone_invalid" => "phone number not valid",
        "phone_not_mobile" => "phone is not a mobile number",
        // Why a nomination was refused.
        "invalid_flow_token" => "form expired or not theirs",
        "invalid_name" => "friend's name missing or too long",
        "invalid_phone" => "friend's number not valid",
        "message_too_long" => "personal message too long",
        "self_referral" => "referred themselves",
        "already_referred" => "friend already referred",
        "already_customer" => "friend already a customer",
        "too_many_open_referrals" => "too many open referrals",
        "friend_opted_out" => "friend opted out",
        // Where an opt-out came from.
        "keyword" => "replied with a stop word",
        "button" => "tapped Stop",
        "whatsapp_stop" => "stopped marketing in WhatsApp",
        "whatsapp_resume" => "resumed marketing in WhatsApp",
        "meta_131050" => "WhatsApp: the person stopped marketing messages",
        _ => return None,
    })
}

/// A stored name in words; one without words has its underscores read as spaces.
pub fn say(code: &str) -> String {
    words(code).map_or_else(|| code.replace('_', " "), str::to_string)
}

/// A reason as stored, `code` or `code: detail`, in words: "not a promoter (score 3)".
pub fn reason(stored: &str) -> String {
    match stored.split_once(": ") {
        Some((code, detail)) => format!("{} ({detail})", say(code)),
        None => say(stored),
    }
}

/// A sentence written with stored names in it (a timeline entry), each name in words.
pub fn sentence(text: &str) -> String {
    let mut said = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, said: &mut String| {
        if !word.is_empty() {
            match words(word) {
                Some(w) if word.contains('_') || word.len() > 2 => said.push_str(w),
                _ => said.push_str(word),
            }
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit() {
            word.push(c);
        } else {
            flush(&mut word, &mut said);
            said.push(c);
        }
    }
    flush(&mut word, &mut said);
    said
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::referral::ReferralState;
    use crate::domain::state::Persisted;

    #[test]
    fn every_referral_state_has_words() {
        for state in ReferralState::ALL {
            assert!(words(state.as_str()).is_some(), "{state:?}");
        }
    }

    #[test]
    fn reasons_and_sentences_read_as_words() {
        assert_eq!(reason("not_a_promoter: score 3"), "not a promoter (score 3)");
        assert_eq!(reason("phone_not_mobile"), "phone is not a mobile number");
        assert_eq!(
            sentence("referral moved from awaiting_friend to friend_invited (friend arrived)"),
            "referral moved from waiting for the friend to write to friend invited (friend arrived)"
        );
        assert_eq!(
            sentence("friend_invite message delivered"),
            "friend's invitation message delivered"
        );
    }
}
