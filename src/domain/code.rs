//! Referral codes: readable, short, without characters that are easy to confuse
//! (no 0/O, 1/I/L), built from a pattern such as `{name:6}{random:4}` → `ANNA7KQ2`.

/// Letters and digits a reader cannot mistake for one another.
pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// Meta accepts up to 20 characters in a copy-code button; some BSPs only 15.
pub const MAX_CODE_LEN: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Name(usize),
    Random(usize),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("programme.code_pattern: {0}")]
pub struct PatternError(pub String);

/// A parsed code pattern: `{name:N}` (up to N letters of the first name), `{random:N}`
/// (N random characters) and literal text (kept if it uses only the code alphabet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePattern(Vec<Part>);

impl CodePattern {
    pub fn parse(pattern: &str) -> Result<CodePattern, PatternError> {
        let mut parts = Vec::new();
        let mut rest = pattern;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or_else(|| PatternError("unclosed `{`".into()))?;
                let (kind, n) = after[..end]
                    .split_once(':')
                    .ok_or_else(|| PatternError("expected {kind:N}".into()))?;
                let n: usize = n.parse().map_err(|_| PatternError(format!("`{n}` is not a number")))?;
                parts.push(match kind {
                    "name" => Part::Name(n),
                    "random" => Part::Random(n),
                    other => return Err(PatternError(format!("unknown part `{other}`"))),
                });
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = rest[..end].to_ascii_uppercase();
                if !literal.bytes().all(|b| CODE_ALPHABET.contains(&b) || b == b'-') {
                    return Err(PatternError(format!("literal `{literal}` has ambiguous characters")));
                }
                parts.push(Part::Literal(literal));
                rest = &rest[end..];
            }
        }
        let random: usize = parts.iter().map(|p| if let Part::Random(n) = p { *n } else { 0 }).sum();
        if random < 3 {
            return Err(PatternError("needs at least 3 random characters to stay unique".into()));
        }
        let longest: usize = parts
            .iter()
            .map(|p| match p {
                Part::Name(n) | Part::Random(n) => *n,
                Part::Literal(s) => s.len(),
            })
            .sum();
        if longest > MAX_CODE_LEN {
            return Err(PatternError(format!(
                "codes could reach {longest} characters; at most {MAX_CODE_LEN}"
            )));
        }
        Ok(CodePattern(parts))
    }

    /// Builds a code; `random_index(n)` returns a number in `0..n` (the caller's RNG).
    pub fn generate(&self, first_name: &str, mut random_index: impl FnMut(usize) -> usize) -> String {
        let name = readable_letters(first_name);
        let mut code = String::new();
        for part in &self.0 {
            match part {
                Part::Name(n) => code.extend(name.chars().take(*n)),
                Part::Random(n) => {
                    for _ in 0..*n {
                        let i = random_index(CODE_ALPHABET.len()) % CODE_ALPHABET.len();
                        code.push(CODE_ALPHABET[i] as char);
                    }
                }
                Part::Literal(s) => code.push_str(s),
            }
        }
        code
    }
}

/// Upper-case letters of a name in the code alphabet, accents folded (`Zoë` → `Z E`… →
/// `ZE`, since O is ambiguous).
fn readable_letters(name: &str) -> String {
    name.chars()
        .map(fold_accent)
        .map(|c| c.to_ascii_uppercase())
        .filter(|c| c.is_ascii_alphabetic() && CODE_ALPHABET.contains(&(*c as u8)))
        .collect()
}

fn fold_accent(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'A',
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'E',
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'I',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' => 'O',
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'U',
        'ç' | 'Ç' => 'C',
        'ñ' | 'Ñ' => 'N',
        'ý' | 'ÿ' | 'Ý' => 'Y',
        other => other,
    }
}

/// Normalises what a user typed as a code: upper case, no spaces.
pub fn normalise_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Finds a code-like token (6–15 characters of the code alphabet) in free text such as
/// the prefilled share-link message "REF ANNA7KQ2".
pub fn codes_in_text(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_uppercase)
        .filter(|w| (6..=MAX_CODE_LEN).contains(&w.len()) && w.bytes().all(|b| CODE_ALPHABET.contains(&b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut(usize) -> usize {
        let mut i = 0;
        move |n| {
            i += 7;
            i % n
        }
    }

    #[test]
    fn default_pattern_makes_readable_codes() {
        let pattern = CodePattern::parse("{name:6}{random:4}").expect("valid");
        let code = pattern.generate("Anna", counter());
        assert!(code.starts_with("ANNA"), "{code}");
        assert_eq!(code.len(), 8);
        let long = pattern.generate("Maximilian", counter());
        assert!(long.starts_with("MAXMAN"), "{long}");
        for name in ["Zoë", "Ölof", "李", "", "O'Neil-Lily"] {
            let code = pattern.generate(name, counter());
            assert!(code.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{name} → {code}");
            assert!(code.len() >= 4);
        }
    }

    #[test]
    fn alphabet_has_no_ambiguous_characters() {
        for c in b"0O1IL" {
            assert!(!CODE_ALPHABET.contains(c));
        }
    }

    #[test]
    fn patterns_are_checked() {
        assert!(CodePattern::parse("REF-{random:6}").is_ok());
        assert!(
            CodePattern::parse("{name:6}{random:2}").is_err(),
            "too few random characters"
        );
        assert!(CodePattern::parse("{name:12}{random:6}").is_err(), "too long");
        assert!(CodePattern::parse("{nome:6}{random:4}").is_err());
        assert!(CodePattern::parse("LOL{random:4}").is_err(), "ambiguous literal");
        assert!(CodePattern::parse("{name:6").is_err());
    }

    #[test]
    fn finds_codes_in_text() {
        assert_eq!(codes_in_text("Hi! REF anna7kq2 please"), vec!["ANNA7KQ2".to_string()]);
        assert!(codes_in_text("hello there").is_empty());
        assert_eq!(normalise_code(" anna 7kq2 "), "ANNA7KQ2");
    }
}
