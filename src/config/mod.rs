//! Typed settings, layered: built-in defaults (`config/default.toml`, embedded in the
//! binary) -> an optional file -> `REFERLOOP_<SECTION>__<KEY>` environment variables
//! -> `DATABASE_URL`. Secrets are `SecretString`s: their `Debug` is redacted and
//! `referloop config` prints them as "[redacted]".
//!
//! `settings.rs` holds the types, `load.rs` the layering and the errors that name a key,
//! `checks.rs` what a loaded configuration must satisfy.

mod checks;
mod load;
mod settings;
mod shape;
mod values;

use secrecy::{ExposeSecret, SecretString};

pub use settings::*;
pub use values::{BaseUrl, FromSetting, Parsed};

/// The most inbox events one loop claims at once (its statements bind two values each).
pub const MAX_INBOX_BATCH: usize = 1000;
/// The most jobs a job loop claims at once.
pub const MAX_JOB_BATCH: usize = 100;

/// The defaults, one documented key each; also what the binary falls back to.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A key no setting has (a typo, in a file or a `REFERLOOP_*` variable).
    #[error("configuration: unknown key `{key}`{source_note}{suggestion}")]
    UnknownKey {
        key: String,
        source_note: String,
        suggestion: String,
    },
    #[error("configuration key `{key}`: `{value}` is not one of {accepted}")]
    NotOneOf {
        key: String,
        value: String,
        accepted: String,
    },
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
    /// A list setting in the environment that is neither `a,b` nor a JSON array.
    #[error("configuration key `{key}`: {problem}")]
    InvalidList { key: String, problem: String },
}

/// A URL fit to print or log: a password (in the authority or a `password` query
/// parameter) is replaced by `[redacted]`. Anything that does not parse as a URL is
/// redacted whole past its scheme.
pub fn redact_url(raw: &str) -> String {
    const REDACTED: &str = "[redacted]";
    let Ok(mut url) = url::Url::parse(raw) else {
        let scheme = raw.split(':').next().unwrap_or_default();
        return format!("{scheme}:{REDACTED}");
    };
    let mut redacted = url.password().is_some();
    if redacted {
        let _ = url.set_password(Some("REDACTED"));
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if pairs.iter().any(|(k, _)| k.contains("password")) {
        redacted = true;
        let mut query = url.query_pairs_mut();
        query.clear();
        for (key, value) in &pairs {
            let shown = if key.contains("password") {
                "REDACTED"
            } else {
                value.as_str()
            };
            query.append_pair(key, shown);
        }
    }
    let text = url.to_string();
    if redacted {
        text.replace("REDACTED", REDACTED)
    } else {
        text
    }
}

/// A configured secret, treating an empty string as "not configured".
pub fn secret_value(secret: &Option<SecretString>) -> Option<&str> {
    secret.as_ref().map(|s| s.expose_secret()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
