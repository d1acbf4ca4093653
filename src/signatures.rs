//! Webhook signature verification for Meta, HubSpot and Stripe. Pure functions over
//! raw bytes: no I/O, no clock (callers pass "now"), every comparison in constant time.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// HubSpot and Stripe both reject requests signed more than five minutes away from now.
pub const MAX_SIGNATURE_AGE_MS: i64 = 5 * 60 * 1000;

/// Why a signature was refused; also the `reason` label of the rejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Mismatch,
    Expired,
}

impl SignatureError {
    pub fn as_label(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::Expired => "signature_expired",
        }
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Meta's `X-Hub-Signature-256: sha256=<hex>`: HMAC-SHA256 of the raw body with the App Secret.
pub fn verify_meta(app_secret: &str, body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header.trim().strip_prefix("sha256=").ok_or(SignatureError::Malformed)?;
    let given = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    let expected = hmac_sha256(app_secret.as_bytes(), &[body]);
    if constant_time_eq(&given, &expected) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Signs a body the way Meta does; used by tests, the load generator and `referloop dev`.
pub fn sign_meta(app_secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(app_secret.as_bytes(), &[body])))
}

/// HubSpot's v3 URI rule: decode only the listed percent-escapes, leave everything else
/// (including `%20`, `+` and any other escape) exactly as sent.
pub fn hubspot_decode_uri(uri: &str) -> String {
    const DECODED: [(&str, char); 12] = [
        ("%3A", ':'),
        ("%2F", '/'),
        ("%3F", '?'),
        ("%40", '@'),
        ("%21", '!'),
        ("%24", '$'),
        ("%27", '\''),
        ("%28", '('),
        ("%29", ')'),
        ("%2A", '*'),
        ("%2C", ','),
        ("%3B", ';'),
    ];
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let candidate = rest.get(pos..pos + 3).unwrap_or("");
        match DECODED.iter().find(|(esc, _)| esc.eq_ignore_ascii_case(candidate)) {
            Some((_, ch)) => {
                out.push(*ch);
                rest = &rest[pos + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The v3 signature: base64(HMAC-SHA256(client secret, method + decoded URI + body + timestamp)).
pub fn sign_hubspot_v3(client_secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    let uri = hubspot_decode_uri(uri);
    let digest = hmac_sha256(
        client_secret.as_bytes(),
        &[method.as_bytes(), uri.as_bytes(), body, timestamp.as_bytes()],
    );
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Verifies `X-HubSpot-Signature-v3` with `X-HubSpot-Request-Timestamp` (milliseconds,
/// used as the header string). `uri` is the public URL HubSpot called.
pub fn verify_hubspot_v3(
    client_secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
    now_ms: i64,
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing)?;
    let timestamp = timestamp.ok_or(SignatureError::Missing)?;
    let sent_ms: i64 = timestamp.trim().parse().map_err(|_| SignatureError::Malformed)?;
    if now_ms.abs_diff(sent_ms) > MAX_SIGNATURE_AGE_MS as u64 {
        return Err(SignatureError::Expired);
    }
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| SignatureError::Malformed)?;
    let uri = hubspot_decode_uri(uri);
    let expected = hmac_sha256(
        client_secret.as_bytes(),
        &[method.as_bytes(), uri.as_bytes(), body, timestamp.as_bytes()],
    );
    if constant_time_eq(&given, &expected) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Compares a shared API key (HubSpot's "API key" auth option) in constant time.
pub fn verify_api_key(expected: &str, given: Option<&str>) -> Result<(), SignatureError> {
    let given = given.ok_or(SignatureError::Missing)?;
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=…]`; any `v1` may match (secret roll).
pub fn verify_stripe(secret: &str, body: &[u8], header: Option<&str>, now_secs: i64) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<&str> = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", sig)) => candidates.push(sig),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    let sent: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_secs.abs_diff(sent).saturating_mul(1000) > MAX_SIGNATURE_AGE_MS as u64 {
        return Err(SignatureError::Expired);
    }
    let expected = hmac_sha256(secret.as_bytes(), &[timestamp.as_bytes(), b".", body]);
    let matched = candidates
        .iter()
        .filter_map(|c| hex::decode(c).ok())
        .any(|given| constant_time_eq(&given, &expected));
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Builds a `Stripe-Signature` header; used by tests and the dev helper.
pub fn sign_stripe(secret: &str, body: &[u8], timestamp: i64) -> String {
    let t = timestamp.to_string();
    let digest = hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body]);
    format!("t={t},v1={}", hex::encode(digest))
}

/// Standard Webhooks (used for reward fulfilment): `webhook-signature: v1,<base64>` where
/// the HMAC-SHA256 key is the base64 part of a `whsec_…` secret and the message is
/// `<webhook-id>.<webhook-timestamp>.<body>`.
pub fn sign_standard_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .map_err(|_| "not a whsec_<base64> secret".to_string())?;
    let t = timestamp.to_string();
    let digest = hmac_sha256(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// Verifies a Standard Webhooks signature header (space-separated `v1,<sig>` entries).
pub fn verify_standard_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(expected) = sign_standard_webhook(secret, id, timestamp, body) else {
        return false;
    };
    header
        .split_whitespace()
        .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const META_FIXTURE: &[u8] = include_bytes!("../tests/fixtures/whatsapp/text_message_signed.json");
    const META_FIXTURE_SIG: &str = include_str!("../tests/fixtures/whatsapp/text_message_signed.sig.txt");

    fn fixture_line(prefix: &str) -> String {
        META_FIXTURE_SIG
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn meta_fixture_verifies_and_reserialised_body_does_not() {
        let secret = fixture_line("APP_SECRET=");
        let header = fixture_line("X-Hub-Signature-256:");
        assert_eq!(verify_meta(&secret, META_FIXTURE, Some(&header)), Ok(()));
        let value: serde_json::Value = serde_json::from_slice(META_FIXTURE).expect("fixture is json");
        let reserialised = serde_json::to_vec(&value).expect("serialise");
        assert_ne!(reserialised, META_FIXTURE);
        assert_eq!(
            verify_meta(&secret, &reserialised, Some(&header)),
            Err(SignatureError::Mismatch)
        );
        let wrong = fixture_line("WRONG_IF_RESERIALISED=");
        assert_eq!(
            verify_meta(&secret, META_FIXTURE, Some(&wrong)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn meta_rejections() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let good = sign_meta("secret", body);
        assert_eq!(verify_meta("secret", body, Some(&good)), Ok(()));
        assert_eq!(verify_meta("other", body, Some(&good)), Err(SignatureError::Mismatch));
        assert_eq!(verify_meta("secret", b"{}", Some(&good)), Err(SignatureError::Mismatch));
        assert_eq!(verify_meta("secret", body, None), Err(SignatureError::Missing));
        assert_eq!(
            verify_meta("secret", body, Some("md5=abc")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_meta("secret", body, Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_meta("secret", body, Some("sha256=")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn hubspot_v3_documented_vector() {
        let secret = "00000000-0000-4000-8000-000000000000";
        let uri = "https://referrals.example.com/hooks/hubspot/promoter?source=wf%3Anps";
        let body = br#"{"hs_object_id":"90001","email":"ana.referrer@example.com","score":"10"}"#;
        let ts = "1767225600000";
        assert_eq!(
            sign_hubspot_v3(secret, "POST", uri, body, ts),
            "GObhlSLb2dh8DM/LYkHCUi2+YXfVsZsXt+RRmgF+q2Y="
        );
        let now = 1767225600000 + 1000;
        let sig = "GObhlSLb2dh8DM/LYkHCUi2+YXfVsZsXt+RRmgF+q2Y=";
        assert_eq!(
            verify_hubspot_v3(secret, "POST", uri, body, Some(sig), Some(ts), now),
            Ok(())
        );
        // The undecoded signature is what a client that skips the decoding step computes.
        let undecoded = "XlVe0TIFrIvJDFQWElO3oVY2w+x6YitCA0yJaypKl6k=";
        assert_eq!(
            verify_hubspot_v3(secret, "POST", uri, body, Some(undecoded), Some(ts), now),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn hubspot_v3_window_and_rejections() {
        let secret = "s";
        let uri = "https://x.example/webhooks/hubspot?trigger=nps";
        let ts = 1_700_000_000_000_i64;
        let sig = sign_hubspot_v3(secret, "POST", uri, b"{}", &ts.to_string());
        let verify =
            |sig: Option<&str>, t: Option<&str>, now: i64| verify_hubspot_v3(secret, "POST", uri, b"{}", sig, t, now);
        let t = ts.to_string();
        assert_eq!(verify(Some(&sig), Some(&t), ts + 299_000), Ok(()));
        assert_eq!(
            verify(Some(&sig), Some(&t), ts + 6 * 60_000),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(Some(&sig), Some(&t), ts - 6 * 60_000),
            Err(SignatureError::Expired)
        );
        assert_eq!(verify(None, Some(&t), ts), Err(SignatureError::Missing));
        assert_eq!(verify(Some(&sig), None, ts), Err(SignatureError::Missing));
        assert_eq!(verify(Some(&sig), Some("soon"), ts), Err(SignatureError::Malformed));
        let extreme = i64::MIN.to_string();
        assert_eq!(
            verify(Some(&sig), Some(&extreme), ts),
            Err(SignatureError::Expired),
            "no overflow"
        );
        assert_eq!(verify(Some("!!"), Some(&t), ts), Err(SignatureError::Malformed));
        let other = (ts + 1).to_string();
        assert_eq!(verify(Some(&sig), Some(&other), ts), Err(SignatureError::Mismatch));
    }

    #[test]
    fn hubspot_decodes_only_listed_escapes() {
        assert_eq!(hubspot_decode_uri("/a%3Ab%2fc%20d+e%7E%"), "/a:b/c%20d+e%7E%");
        assert_eq!(hubspot_decode_uri("%28%29%2A%2C%3B%40%21%24%27%3F"), "()*,;@!$'?");
    }

    #[test]
    fn stripe_documented_vector() {
        let body = br#"{"id":"evt_test_0001","object":"event","type":"customer.created"}"#;
        let header = "t=1767225600,v1=93957963e750dee399c120381e04f6682dbbac7c278bd9bedeea7479aa93045d";
        assert_eq!(sign_stripe("whsec_test_secret", body, 1767225600), header);
        assert_eq!(
            verify_stripe("whsec_test_secret", body, Some(header), 1767225700),
            Ok(())
        );
    }

    #[test]
    fn stripe_rejections() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let good = sign_stripe("whsec_a", body, now);
        assert_eq!(verify_stripe("whsec_a", body, Some(&good), now), Ok(()));
        assert_eq!(
            verify_stripe("whsec_b", body, Some(&good), now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_stripe("whsec_a", b"{}", Some(&good), now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_stripe("whsec_a", body, Some(&good), now + 301),
            Err(SignatureError::Expired)
        );
        assert_eq!(verify_stripe("whsec_a", body, None, now), Err(SignatureError::Missing));
        assert_eq!(
            verify_stripe("whsec_a", body, Some("v1=abc"), now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_stripe("whsec_a", body, Some("t=1"), now),
            Err(SignatureError::Malformed)
        );
        // A rolled secret: the second v1 matches.
        let rolled = format!("{good},v1=00ff");
        let two = format!("t={now},v1=00ff,{}", good.split(',').nth(1).unwrap_or_default());
        assert_eq!(verify_stripe("whsec_a", body, Some(&rolled), now), Ok(()));
        assert_eq!(verify_stripe("whsec_a", body, Some(&two), now), Ok(()));
    }

    #[test]
    fn standard_webhook_round_trip() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = sign_standard_webhook(secret, "msg_1", 1700000000, b"{}").expect("sign");
        assert!(sig.starts_with("v1,"));
        assert!(verify_standard_webhook(
            secret,
            "msg_1",
            1700000000,
            b"{}",
            &format!("v1,bogus {sig}")
        ));
        assert!(!verify_standard_webhook(secret, "msg_2", 1700000000, b"{}", &sig));
        assert!(sign_standard_webhook("whsec_!!", "m", 1, b"").is_err());
    }

    #[test]
    fn api_key_comparison() {
        assert_eq!(verify_api_key("k1", Some("k1")), Ok(()));
        assert_eq!(verify_api_key("k1", Some("k2")), Err(SignatureError::Mismatch));
        assert_eq!(verify_api_key("k1", Some("k")), Err(SignatureError::Mismatch));
        assert_eq!(verify_api_key("k1", None), Err(SignatureError::Missing));
    }
}
