//! Dashboard accounts: argon2id password hashes, sign-in with throttling, and sessions
//! (a random token in an HttpOnly cookie, kept in the database only as its SHA-256
//! digest, with a CSRF token of its own).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::access::{sign_in_throttled, SIGN_IN_WINDOW_MS};
use crate::store::{AdminSession, AdminUser, Store, StoreError};

/// How long a session lasts.
pub const SESSION_MS: i64 = 8 * 60 * 60 * 1000;

/// A password's argon2id hash (PHC string, with its own random salt).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Whether `password` matches `hash` (false for a malformed hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A random token, hex-encoded (32 bytes from the OS).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The digest a session token is kept under.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The outcome of a sign-in.
pub enum SignIn {
    /// A new session: the token goes in the cookie.
    Started { token: String, user: AdminUser },
    /// Unknown user, disabled user or wrong password (not told apart).
    Refused,
    /// Too many recent failures for this name.
    Throttled,
    /// Too many sign-ins being checked at once; try again shortly.
    Busy,
}

/// A password hash to check unknown names against, so they take as long as known ones.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("referloop decoy password").unwrap_or_default())
}

/// Password checks running at once (each argon2id check takes about 19 MiB and some
/// CPU); a sign-in beyond them is answered "busy" rather than queued.
const CONCURRENT_CHECKS: usize = 4;

fn password_checks() -> &'static tokio::sync::Semaphore {
    static CHECKS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    CHECKS.get_or_init(|| tokio::sync::Semaphore::new(CONCURRENT_CHECKS))
}

/// Signs `name` in with `password`. The attempt is counted before the password is
/// checked (so parallel guesses cannot slip past the limit) and forgotten when it
/// succeeds. Every sign-in starts a new session: a token a client brought along is never
/// adopted (no session fixation).
pub async fn sign_in(store: &Store, name: &str, password: &str) -> Result<SignIn, StoreError> {
    let Ok(_check) = password_checks().try_acquire() else {
        tracing::warn!("sign-in refused: too many password checks at once");
        return Ok(SignIn::Busy);
    };
    store.record_login_failure(name).await?;
    let attempts = store
        .login_failures_since(name, store.now_ms() - SIGN_IN_WINDOW_MS)
        .await?;
    // This attempt is one of them: more than the limit means earlier ones used it up.
    if sign_in_throttled(attempts - 1) {
        tracing::warn!(user = %crate::telemetry::escape(name), "sign-in throttled");
        return Ok(SignIn::Throttled);
    }
    let user = store.admin_user(name).await?;
    let hash = user
        .as_ref()
        .map_or(decoy_hash(), |u| u.password_hash.as_str())
        .to_string();
    let password = password.to_string();
    let matches = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|u| matches && !u.disabled) else {
        tracing::warn!(user = %crate::telemetry::escape(name), "sign-in refused");
        return Ok(SignIn::Refused);
    };
    store.clear_login_failures(name).await?;
    let token = random_token();
    store
        .create_admin_session(
            &token_hash(&token),
            user.id,
            &random_token(),
            store.now_ms() + SESSION_MS,
        )
        .await?;
    tracing::info!(user = %crate::telemetry::escape(&user.name), role = %user.role, "signed in");
    Ok(SignIn::Started { token, user })
}

/// The live session for a cookie's token, if any.
pub async fn session(store: &Store, token: &str) -> Result<Option<AdminSession>, StoreError> {
    if token.len() != 64 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(None);
    }
    store.admin_session(&token_hash(token)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_argon2id_with_their_own_salt() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct hors"));
        assert_ne!(hash, hash_password("correct horse").expect("hash"), "salted");
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn tokens_are_random_and_kept_as_digests() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
