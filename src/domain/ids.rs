//! Ids that reach an outside API's URL. Each is validated where it enters (a webhook body,
//! an API answer, a stored row) and is percent-encoded again when a path is built, so an
//! id can never steer a request elsewhere (`90001/../../properties/...`).

use std::fmt;

/// An id that is not the kind of id it claims to be: a permanent refusal, never a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}")]
pub struct InvalidId {
    pub kind: &'static str,
    /// The offending value, shortened and with control characters escaped (it is logged).
    pub value: String,
}

impl InvalidId {
    fn new(kind: &'static str, raw: &str) -> InvalidId {
        let shown: String = raw.chars().take(64).collect();
        InvalidId {
            kind,
            value: shown.escape_debug().to_string(),
        }
    }
}

/// A HubSpot CRM object id (contact, deal, note): 1 to 20 ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubSpotId(String);

impl HubSpotId {
    pub fn parse(raw: &str) -> Result<HubSpotId, InvalidId> {
        let valid = (1..=20).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit());
        if valid {
            Ok(HubSpotId(raw.to_string()))
        } else {
            Err(InvalidId::new("HubSpot object", raw))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HubSpotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Stripe objects whose ids referloop puts in a path, by their documented prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripeObject {
    Customer,
    CheckoutSession,
    PromotionCode,
}

impl StripeObject {
    fn prefixes(self) -> &'static [&'static str] {
        match self {
            StripeObject::Customer => &["cus_"],
            StripeObject::CheckoutSession => &["cs_test_", "cs_live_", "cs_"],
            StripeObject::PromotionCode => &["promo_"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            StripeObject::Customer => "Stripe customer",
            StripeObject::CheckoutSession => "Stripe Checkout Session",
            StripeObject::PromotionCode => "Stripe promotion code",
        }
    }
}

/// A Stripe object id: its prefix, then 1 to 255 ASCII letters, digits or underscores.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StripeId(String);

impl StripeId {
    pub fn parse(raw: &str, object: StripeObject) -> Result<StripeId, InvalidId> {
        let rest = object.prefixes().iter().find_map(|p| raw.strip_prefix(p));
        let valid = rest.is_some_and(|rest| {
            (1..=255).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if valid {
            Ok(StripeId(raw.to_string()))
        } else {
            Err(InvalidId::new(object.name(), raw))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A value percent-encoded as one URL path segment (`/`, `?`, `#`, `%` and `.` included).
pub fn path_segment(value: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'_').remove(b'-');
    percent_encoding::utf8_percent_encode(value, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubspot_ids_are_digits() {
        assert_eq!(HubSpotId::parse("90001").map(|id| id.to_string()), Ok("90001".into()));
        for bad in [
            "",
            "90001/../../../properties/contacts/referral_code",
            "90001?archived=true&x=",
            "9 0",
            "٣٤",
            "123456789012345678901",
            "90001\n",
        ] {
            assert!(HubSpotId::parse(bad).is_err(), "{bad:?}");
        }
        let error = HubSpotId::parse("1\n2").expect_err("refused");
        assert_eq!(error.value, "1\\n2", "logged escaped");
    }

    #[test]
    fn stripe_ids_have_their_prefix() {
        assert!(StripeId::parse("cus_NffrFeUfNV2Hib", StripeObject::Customer).is_ok());
        assert!(StripeId::parse("cs_test_a1B2c3", StripeObject::CheckoutSession).is_ok());
        assert!(StripeId::parse("promo_1MiM6KLkdIwHu7ix", StripeObject::PromotionCode).is_ok());
        for (bad, object) in [
            (
                "../../../../v1/customers/cus_evil/balance_transactions",
                StripeObject::Customer,
            ),
            ("cus_evil/balance_transactions", StripeObject::Customer),
            ("promo_1?expand[]=x", StripeObject::PromotionCode),
            ("cus_", StripeObject::Customer),
            ("pi_123", StripeObject::Customer),
        ] {
            assert!(StripeId::parse(bad, object).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_segments_cannot_climb() {
        assert_eq!(path_segment("90001"), "90001");
        assert_eq!(path_segment("cs_test_1"), "cs_test_1");
        assert_eq!(path_segment("../x?y#z"), "%2E%2E%2Fx%3Fy%23z");
    }
}
