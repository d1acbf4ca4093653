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
    // A second init (tests) is harmless: the first subscriber stays. JSON escapes control
    // characters itself; the text format escapes every field through `escaped_fields`.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.fmt_fields(escaped_fields()).try_init(),
    };
}

/// Text-format fields with control characters escaped, so that no logged value (an event
/// kind, an id, an error from outside) can start a forged line of its own.
pub fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = escape(&format!("{value:?}"));
        match field.name() {
            "message" => write!(writer, "{text}"),
            name => write!(writer, "{name}={text}"),
        }
    })
    .delimited(" ")
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

    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut buffer) = self.0.lock() {
                buffer.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_logged_value_cannot_forge_a_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(super::escaped_fields())
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let kind = "whatsapp.status\n2026-11-30T00:00:00Z  INFO forged: admin logged in\r\t\0";
            tracing::warn!(kind = %kind, id = kind, "refused {kind}");
        });
        let text = String::from_utf8(captured.0.lock().map(|b| b.clone()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        assert!(text.contains("\\nforged") || text.contains("\\n2026"), "{text}");
        assert!(
            !text.contains('\t') && !text.contains('\0') && !text.contains('\r'),
            "{text:?}"
        );
    }

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
