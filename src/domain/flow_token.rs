//! The Flow's `flow_token`: opaque to WhatsApp, verifiable by us. It names the invite and
//! carries a nonce, signed with HMAC-SHA256, so a forged token is refused and a token can
//! be used for one nomination only (the store keeps used tokens unique).
//!
//! Format: `rl1.<invite id>.<nonce>.<base64url signature>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const PREFIX: &str = "rl1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowToken {
    pub invite_id: i64,
    pub nonce: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowTokenError {
    #[error("flow token is malformed")]
    Malformed,
    #[error("flow token signature does not match")]
    Forged,
}

fn signature(secret: &str, invite_id: i64, nonce: &str) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(format!("{PREFIX}.{invite_id}.{nonce}").as_bytes());
    mac.finalize().into_bytes().to_vec()
}

impl FlowToken {
    pub fn sign(&self, secret: &str) -> String {
        let sig = URL_SAFE_NO_PAD.encode(signature(secret, self.invite_id, &self.nonce));
        format!("{PREFIX}.{}.{}.{sig}", self.invite_id, self.nonce)
    }

    pub fn verify(token: &str, secret: &str) -> Result<FlowToken, FlowTokenError> {
        let mut parts = token.trim().split('.');
        let (Some(PREFIX), Some(id), Some(nonce), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(FlowTokenError::Malformed);
        };
        let invite_id: i64 = id.parse().map_err(|_| FlowTokenError::Malformed)?;
        if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FlowTokenError::Malformed);
        }
        let given = URL_SAFE_NO_PAD.decode(sig).map_err(|_| FlowTokenError::Malformed)?;
        let expected = signature(secret, invite_id, nonce);
        if given.len() == expected.len() && bool::from(given.ct_eq(&expected)) {
            Ok(FlowToken {
                invite_id,
                nonce: nonce.to_string(),
            })
        } else {
            Err(FlowTokenError::Forged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let token = FlowToken {
            invite_id: 42,
            nonce: "abc123".into(),
        };
        let signed = token.sign("secret");
        assert_eq!(FlowToken::verify(&signed, "secret"), Ok(token));
        assert_eq!(FlowToken::verify(&signed, "other"), Err(FlowTokenError::Forged));
        let other_invite = signed.replacen("rl1.42.", "rl1.43.", 1);
        assert_eq!(FlowToken::verify(&other_invite, "secret"), Err(FlowTokenError::Forged));
        for bad in [
            "",
            "unused",
            "rl1.x.abc.sig",
            "rl1.1.abc",
            "rl2.1.abc.sig",
            "rl1.1.a-b.sig",
            "rl1.1.abc.!!",
        ] {
            assert_eq!(
                FlowToken::verify(bad, "secret"),
                Err(FlowTokenError::Malformed),
                "{bad}"
            );
        }
    }
}
