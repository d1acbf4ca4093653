//! Settings that are parsed when the configuration loads, so that no call site parses
//! (or re-checks) them: base URLs, the code pattern, API token digests.

use std::fmt;
use std::ops::Deref;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::access::TokenDigest;
use crate::domain::code::CodePattern;

/// A value read from a setting's text. A problem is said with the text, and the loader
/// adds the key.
pub trait FromSetting: Sized {
    /// What the text must be, for the JSON Schema (`"uri"`, or none).
    const FORMAT: Option<&'static str> = None;
    fn from_setting(text: &str) -> Result<Self, String>;
}

/// A setting parsed once, as it loads: the value, and the text it was given as (which
/// `referloop config` prints back).
#[derive(Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    value: T,
    text: String,
}

impl<T: FromSetting> Parsed<T> {
    pub fn new(text: &str) -> Result<Self, String> {
        Ok(Parsed {
            value: T::from_setting(text)?,
            text: text.to_string(),
        })
    }
}

impl<T> Parsed<T> {
    /// The text as configured.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T> Deref for Parsed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<'de, T: FromSetting> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Parsed::new(&text).map_err(serde::de::Error::custom)
    }
}

impl<T> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<T: FromSetting> JsonSchema for Parsed<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SettingText".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        match T::FORMAT {
            Some(format) => json_schema!({"type": "string", "format": format}),
            None => json_schema!({"type": "string"}),
        }
    }
}

/// An http(s) URL with a host, kept without a trailing slash so that paths join to it
/// as `base + "/path"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    /// `path` (which starts with `/`) under this base.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromSetting for BaseUrl {
    const FORMAT: Option<&'static str> = Some("uri");

    fn from_setting(text: &str) -> Result<Self, String> {
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Ok(BaseUrl(url.as_str().trim_end_matches('/').to_string()))
            }
            _ => Err(format!("`{text}` is not an http(s) URL")),
        }
    }
}

/// A log filter (`info`, `referloop=debug,sqlx=warn`), as `RUST_LOG` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter;

impl FromSetting for LogFilter {
    fn from_setting(text: &str) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::try_new(text)
            .map(|_| LogFilter)
            .map_err(|e| format!("`{text}` is not a log filter such as `info` or `referloop=debug,sqlx=warn`: {e}"))
    }
}

/// A whole http(s) URL with a host, used as given (a reward webhook's endpoint).
impl FromSetting for url::Url {
    const FORMAT: Option<&'static str> = Some("uri");

    fn from_setting(text: &str) -> Result<Self, String> {
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
            _ => Err(format!("`{text}` is not an http(s) URL")),
        }
    }
}

/// `messaging.send_window`: local hours such as `09:00-20:00`.
impl FromSetting for crate::domain::send_window::SendWindow {
    fn from_setting(text: &str) -> Result<Self, String> {
        crate::domain::send_window::SendWindow::parse(text)
    }
}

/// A duration written for people: `"3d"`, `"12h"`, `"5s"` (humantime's units).
impl FromSetting for std::time::Duration {
    fn from_setting(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration such as \"3d\", \"12h\" or \"5s\": {e}"))
    }
}

/// A time zone's IANA name (`Europe/Berlin`).
impl FromSetting for crate::domain::send_window::LocalZone {
    fn from_setting(text: &str) -> Result<Self, String> {
        crate::domain::send_window::LocalZone::parse(text)
            .map_err(|e| format!("{e}: give an IANA name such as `Europe/Berlin` or `UTC`"))
    }
}

/// A setting that may be unset, written `""` (as `config/default.toml` leaves it), and is
/// parsed when set.
pub(super) mod blank_or_parsed {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{FromSetting, Parsed};

    pub fn serialize<S: Serializer, T>(value: &Option<Parsed<T>>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value.as_ref().map_or("", |parsed| parsed.text()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: FromSetting>(
        deserializer: D,
    ) -> Result<Option<Parsed<T>>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
        match text.trim() {
            "" => Ok(None),
            _ => Parsed::new(&text).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

impl FromSetting for CodePattern {
    fn from_setting(text: &str) -> Result<Self, String> {
        CodePattern::parse(text).map_err(|e| e.0)
    }
}

impl FromSetting for TokenDigest {
    fn from_setting(text: &str) -> Result<Self, String> {
        TokenDigest::parse(text).map_err(|e| format!("{e} (referloop api hash-token)"))
    }
}

/// A duration the configuration keeps as whole days (its key ends in `_days`).
pub(super) mod whole_days {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    const DAY: u64 = 24 * 60 * 60;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs() / DAY)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let days = u64::deserialize(deserializer)?;
        days.checked_mul(DAY)
            .map(Duration::from_secs)
            .ok_or_else(|| serde::de::Error::custom(format!("{days} days is too long")))
    }
}

/// Durations the configuration keeps as a list of whole seconds.
pub(super) mod seconds_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(durations: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(durations.iter().map(Duration::as_secs))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
        let seconds = Vec::<u64>::deserialize(deserializer)?;
        Ok(seconds.into_iter().map(Duration::from_secs).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_lose_their_trailing_slash_and_join_paths() {
        let base = Parsed::<BaseUrl>::new("https://referrals.example.com/").expect("a URL");
        assert_eq!(
            base.join("/webhooks/stripe"),
            "https://referrals.example.com/webhooks/stripe"
        );
        assert!(base.is_https());
        assert_eq!(base.text(), "https://referrals.example.com/", "printed back as given");
        let under = Parsed::<BaseUrl>::new("http://proxy.local/referloop/").expect("a URL");
        assert_eq!(under.join("/healthz"), "http://proxy.local/referloop/healthz");
        for bad in ["", "referrals.example.com", "ftp://example.com", "https://"] {
            assert!(Parsed::<BaseUrl>::new(bad).is_err(), "{bad:?}");
        }
    }
}
