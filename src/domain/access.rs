//! Who may do what through the admin API (and, later, the dashboard): a viewer reads; an
//! operator also acts (retries dead work, voids rewards, records conversions).
//!
//! `api.tokens` holds SHA-256 digests of bearer tokens, each optionally prefixed with its
//! role (`viewer:<hex>` or `operator:<hex>`); a bare digest is an operator, as every token
//! was before roles existed.

use std::fmt;

use super::state::{persisted, Persisted};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

persisted!(Role {
    Viewer => "viewer",
    Operator => "operator",
});

impl Role {
    /// Whether this role may take `action`.
    pub fn may(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Act => self == Role::Operator,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failed sign-ins allowed for one user name within [`SIGN_IN_WINDOW_MS`]; beyond it,
/// sign-in is refused until the window has passed (whatever the password).
pub const MAX_SIGN_IN_FAILURES: i64 = 5;
pub const SIGN_IN_WINDOW_MS: i64 = 15 * 60 * 1000;

/// Whether a user name with `failures` recent failed sign-ins must wait.
pub fn sign_in_throttled(failures: i64) -> bool {
    failures >= MAX_SIGN_IN_FAILURES
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reads: the funnel, lists, timelines, exports.
    Read,
    /// Changes: retry dead work, void a reward, record a conversion.
    Act,
}

/// One configured token: its role and the SHA-256 digest (lowercase hex) of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDigest {
    pub role: Role,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{entry}` is not a token digest: give 64 hex digits (sha256 of the token), optionally after `viewer:` or `operator:`")]
pub struct BadTokenEntry {
    pub entry: String,
}

impl TokenDigest {
    pub fn parse(entry: &str) -> Result<TokenDigest, BadTokenEntry> {
        let bad = || BadTokenEntry {
            // Only the shape is echoed: the entry is a digest, not a secret, but keep it short.
            entry: entry.chars().take(12).collect(),
        };
        let (role, digest) = match entry.split_once(':') {
            Some(("viewer", digest)) => (Role::Viewer, digest),
            Some(("operator", digest)) => (Role::Operator, digest),
            Some(_) => return Err(bad()),
            None => (Role::Operator, entry),
        };
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(TokenDigest {
            role,
            digest: digest.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn entries_carry_their_role_and_a_bare_digest_is_an_operator() {
        assert_eq!(TokenDigest::parse(HEX).map(|t| t.role), Ok(Role::Operator));
        let viewer = TokenDigest::parse(&format!("viewer:{}", HEX.to_uppercase())).expect("viewer");
        assert_eq!((viewer.role, viewer.digest.as_str()), (Role::Viewer, HEX));
        assert_eq!(
            TokenDigest::parse(&format!("operator:{HEX}")).map(|t| t.role),
            Ok(Role::Operator)
        );
        for bad in [
            "",
            "admin:x",
            &format!("admin:{HEX}"),
            &HEX[..63],
            &format!("{}g", &HEX[..63]),
        ] {
            assert!(TokenDigest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sign_in_is_throttled_after_five_failures() {
        assert!(!sign_in_throttled(MAX_SIGN_IN_FAILURES - 1));
        assert!(sign_in_throttled(MAX_SIGN_IN_FAILURES));
        for &role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn only_operators_act() {
        for &role in Role::ALL {
            assert!(role.may(Action::Read));
            assert_eq!(role.may(Action::Act), role == Role::Operator);
        }
    }
}
