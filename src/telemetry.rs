//! Logging: tracing, human-readable or JSON, with the request id on every line of a
//! request (the HTTP span carries it). Phone numbers go through [`mask_phone`].

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Keeps the country code and the last four digits: `+447700904567` → `+44******4567`.
/// Anything that is not a phone number of plausible length is masked entirely.
pub fn mask_phone(raw: &str) -> String {
    let digits: Vec<char> = raw.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 8 {
        return "***".into();
    }
    let keep_front = 2;
    let keep_back = 4;
    let hidden = digits.len() - keep_front - keep_back;
    let mut out = String::from("+");
    out.extend(&digits[..keep_front]);
    out.extend(std::iter::repeat_n('*', hidden));
    out.extend(&digits[digits.len() - keep_back..]);
    out
}

/// A value fit for a log line: control characters (newlines, tabs, NUL...) are escaped,
/// so a value cannot forge a line of its own.
pub fn escape(value: &str) -> String {
    if !value.chars().any(char::is_control) {
        return value.to_string();
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::{escape, mask_phone};

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("whatsapp.status"), "whatsapp.status");
        assert_eq!(escape("a\nINFO forged\t\0"), "a\\nINFO forged\\t\\u{0}");
        assert_eq!(escape("Zoë\r"), "Zoë\\r");
    }

    #[test]
    fn masks_all_but_prefix_and_last_four() {
        assert_eq!(mask_phone("+447700904567"), "+44******4567");
        assert_eq!(mask_phone("12025550101"), "+12*****0101");
        assert_eq!(mask_phone("+1 (202) 555-0101"), "+12*****0101");
        assert_eq!(mask_phone("12345"), "***");
        assert_eq!(mask_phone(""), "***");
    }
}
