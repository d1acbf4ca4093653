//! Phone numbers, parsed with the libphonenumber port: a number is accepted only when
//! it is a valid mobile number, and is kept in E.164 (`+447911123456`).

use std::fmt;

use phonenumber::{metadata::DATABASE, Mode, Type};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("no phone number")]
    Missing,
    #[error("not a phone number")]
    Unparseable,
    #[error("not a valid number")]
    Invalid,
    #[error("not a mobile number")]
    NotMobile,
}

impl PhoneError {
    pub fn as_str(self) -> &'static str {
        match self {
            PhoneError::Missing => "no_phone",
            PhoneError::Unparseable => "phone_unparseable",
            PhoneError::Invalid => "phone_invalid",
            PhoneError::NotMobile => "phone_not_mobile",
        }
    }
}

/// Serialised as its text (rows printed by the CLI and the admin API).
impl serde::Serialize for E164 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Read back from a stored job's payload, which referloop wrote from an `E164`: checked
/// again in full, so a payload edited by hand cannot carry a number we would not accept.
impl<'de> serde::Deserialize<'de> for E164 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<E164, D::Error> {
        let text = String::deserialize(deserializer)?;
        E164::international(&text).map_err(serde::de::Error::custom)
    }
}

impl E164 {
    /// Parses `raw`; numbers without a country code are read in `default_region`
    /// (ISO 3166 alpha-2, e.g. "GB"). WhatsApp's `wa_id` (digits without `+`) is accepted.
    pub fn parse_mobile(raw: &str, default_region: &str) -> Result<E164, PhoneError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Missing);
        }
        let region = default_region.parse::<phonenumber::country::Id>().ok();
        let number = phonenumber::parse(region, trimmed).map_err(|_| PhoneError::Unparseable)?;
        if !number.is_valid() {
            return Err(PhoneError::Invalid);
        }
        match number.number_type(&DATABASE) {
            Type::Mobile | Type::FixedLineOrMobile => {}
            _ => return Err(PhoneError::NotMobile),
        }
        Ok(E164(number.format().mode(Mode::E164).to_string()))
    }

    /// A WhatsApp `wa_id` or `from` (digits, no `+`), which is always international.
    pub fn from_wa_id(wa_id: &str) -> Result<E164, PhoneError> {
        let digits: String = wa_id.chars().filter(char::is_ascii_digit).collect();
        Self::international(&format!("+{digits}"))
    }

    /// A number read back from a row: referloop writes only an `E164` there, so the
    /// shape (`+`, then 7 to 15 digits, the first not 0) is checked, not the numbering
    /// plan again, which would cost a full parse on every row read.
    pub fn from_row(raw: &str) -> Result<E164, PhoneError> {
        if raw.is_empty() {
            return Err(PhoneError::Missing);
        }
        let digits = raw.strip_prefix('+').ok_or(PhoneError::Unparseable)?;
        let shaped =
            (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if !shaped {
            return Err(PhoneError::Unparseable);
        }
        Ok(E164(raw.to_string()))
    }

    /// The text of a number a row may lack: "" where there is none, as rows keep it.
    pub fn text_of(phone: Option<&E164>) -> &str {
        phone.map_or("", E164::as_str)
    }

    /// A number with its country code; "ZZ" is libphonenumber's "no region".
    fn international(raw: &str) -> Result<E164, PhoneError> {
        Self::parse_mobile(raw, "ZZ")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits without `+`: the form of a `wa_id` and of click-to-chat links.
    pub fn digits(&self) -> &str {
        self.0.trim_start_matches('+')
    }

    /// True for +1 numbers in the US (Meta sends them no marketing templates).
    pub fn is_us(&self) -> bool {
        phonenumber::parse(None, &self.0)
            .ok()
            .and_then(|n| n.country().id())
            .is_some_and(|id| id == phonenumber::country::Id::US)
    }

    /// The number's country (ISO 3166 alpha-2), when its numbering plan names one.
    pub fn country(&self) -> Option<String> {
        let id = phonenumber::parse(None, &self.0).ok()?.country().id()?;
        Some(id.as_ref().to_string())
    }

    /// The market Meta prices the number's messages in: the main country of its calling
    /// code (+44 is GB, Guernsey's numbers included; +1 is US, Canada's included), as
    /// Meta's rate card groups countries by calling code.
    pub fn market(&self) -> Option<String> {
        // Calling codes are prefix-free: the first of the number's 1-, 2- and 3-digit
        // prefixes that is one is its code (a lookup, not a parse: this runs for every
        // delivered message).
        let digits = self.digits();
        (1..=3)
            .filter_map(|n| digits.get(..n)?.parse::<u16>().ok())
            .find_map(|code| phonenumber::metadata::DATABASE.region(&code))
            .and_then(|regions| regions.first().map(|id| id.to_string()))
    }

    /// The national significant number, as HubSpot's searchable phone properties hold it.
    pub fn national_digits(&self) -> String {
        phonenumber::parse(None, &self.0)
            .map(|n| n.national().value().to_string())
            .unwrap_or_default()
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod market_tests {
    use super::E164;

    #[test]
    fn a_market_is_its_calling_codes_main_country() {
        let market = |n: &str| E164::from_row(n).ok().and_then(|p| p.market());
        assert_eq!(market("+447911123456").as_deref(), Some("GB"));
        assert_eq!(market("+14165550100").as_deref(), Some("US"));
        assert_eq!(market("+5511987654321").as_deref(), Some("BR"));
        assert_eq!(market("+35312345678").as_deref(), Some("IE"));
        assert_eq!(market("+79161234567").as_deref(), Some("RU"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_mobiles() {
        assert_eq!(
            E164::parse_mobile("+44 7911 123456", "US").map(|p| p.0),
            Ok("+447911123456".into())
        );
        assert_eq!(
            E164::parse_mobile("07911 123456", "GB").map(|p| p.0),
            Ok("+447911123456".into())
        );
        assert_eq!(
            E164::parse_mobile("+1 (202) 555-0101", "GB").map(|p| p.0),
            Ok("+12025550101".into())
        );
        assert_eq!(E164::from_wa_id("12025550101").map(|p| p.0), Ok("+12025550101".into()));
        assert_eq!(
            E164::parse_mobile("+55 11 99999-0000", "GB").map(|p| p.0),
            Ok("+5511999990000".into())
        );
    }

    #[test]
    fn refuses_what_is_not_a_mobile() {
        assert_eq!(E164::parse_mobile("", "GB"), Err(PhoneError::Missing));
        assert_eq!(E164::parse_mobile("call me", "GB"), Err(PhoneError::Unparseable));
        assert_eq!(E164::parse_mobile("+44 20 7946 0000", "GB"), Err(PhoneError::NotMobile));
        assert_eq!(E164::parse_mobile("+44 7911", "GB"), Err(PhoneError::Invalid));
        assert_eq!(
            E164::parse_mobile("+44 7700 900123", "GB"),
            Err(PhoneError::Invalid),
            "Ofcom drama range"
        );
    }

    #[test]
    fn forms_for_whatsapp_and_hubspot() {
        let us = E164::parse_mobile("+12025550101", "GB").expect("valid");
        assert_eq!(us.digits(), "12025550101");
        assert_eq!(us.national_digits(), "2025550101");
        assert!(us.is_us());
        let uk = E164::parse_mobile("+447911123456", "GB").expect("valid");
        assert!(!uk.is_us());
    }
}
