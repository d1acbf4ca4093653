//! The Flow data endpoint's encryption (Data API 3.0). Meta wraps a fresh AES-128 key with
//! our RSA-2048 public key (OAEP, SHA-256 for the hash and MGF1), encrypts the request with
//! AES-128-GCM under a 16-byte IV, and expects the answer under the same key with every IV
//! byte flipped. Pure functions over bytes; no I/O.
//!
//! RSA decryption uses aws-lc-rs, whose OAEP is constant time: the ciphertext comes from
//! anyone who can reach the endpoint, so a timing leak (RUSTSEC-2023-0071, the `rsa`
//! crate) would let them decrypt recorded sessions.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes128;
use aes_gcm::AesGcm;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

/// AES-128-GCM with Meta's 16-byte IV (the common `Aes128Gcm` type takes 12 bytes).
type FlowCipher = AesGcm<Aes128, U16>;

const AES_KEY_BYTES: usize = 16;
const IV_BYTES: usize = 16;
const RSA_BITS: usize = 2048;

/// Why the key could not be loaded; said at startup and by `doctor`, never with key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the Flow private key is not PEM (expected -----BEGIN PRIVATE KEY-----, PKCS#8)")]
    NotPem,
    #[error("the Flow private key is not a PKCS#8 RSA private key")]
    NotRsaPkcs8,
    #[error("the Flow private key has {0} bits; Meta requires RSA-2048")]
    WrongSize(usize),
}

/// A request that cannot be read. Every kind is answered 421 with no detail, so a prober
/// learns nothing about which step failed; the kind is for our log and metric only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecryptError {
    NotJson,
    BadBase64,
    BadKey,
    BadIv,
    /// Tampered ciphertext, wrong key, or wrong IV: the GCM tag does not match.
    BadCiphertext,
    NotUtf8,
}

impl DecryptError {
    pub fn as_label(self) -> &'static str {
        match self {
            DecryptError::NotJson => "envelope_not_json",
            DecryptError::BadBase64 => "envelope_bad_base64",
            DecryptError::BadKey => "aes_key_unwrap_failed",
            DecryptError::BadIv => "iv_wrong_length",
            DecryptError::BadCiphertext => "gcm_tag_mismatch",
            DecryptError::NotUtf8 => "plaintext_not_utf8",
        }
    }
}

/// The endpoint's RSA private key.
pub struct FlowKey {
    oaep: OaepPrivateDecryptingKey,
    public_pem: String,
}

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowKey([redacted])")
    }
}

impl FlowKey {
    /// Reads a PKCS#8 PEM private key (`referloop flow keygen` writes one).
    pub fn from_pkcs8_pem(pem: &str) -> Result<FlowKey, KeyError> {
        let der = pem_decode(pem, "PRIVATE KEY").ok_or(KeyError::NotPem)?;
        let key = PrivateDecryptingKey::from_pkcs8(&der).map_err(|_| KeyError::NotRsaPkcs8)?;
        FlowKey::from_key(key)
    }

    fn from_key(key: PrivateDecryptingKey) -> Result<FlowKey, KeyError> {
        let bits = key.key_size_bits();
        if bits != RSA_BITS {
            return Err(KeyError::WrongSize(bits));
        }
        let public_der = key.public_key().as_der().map_err(|_| KeyError::NotRsaPkcs8)?;
        let public_pem = pem_encode(public_der.as_ref(), "PUBLIC KEY");
        let oaep = OaepPrivateDecryptingKey::new(key).map_err(|_| KeyError::NotRsaPkcs8)?;
        Ok(FlowKey { oaep, public_pem })
    }

    /// The public key as SPKI PEM: what Meta's `business_public_key` takes.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// Reads an endpoint request body: the session key and the plaintext JSON.
    pub fn decrypt_request(&self, body: &[u8]) -> Result<(SessionKey, String), DecryptError> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|_| DecryptError::NotJson)?;
        let decode = |field: &str| STANDARD.decode(field.trim()).map_err(|_| DecryptError::BadBase64);
        let wrapped_key = decode(&envelope.encrypted_aes_key)?;
        let iv = decode(&envelope.initial_vector)?;
        let data = decode(&envelope.encrypted_flow_data)?;
        let iv: [u8; IV_BYTES] = iv.try_into().map_err(|_| DecryptError::BadIv)?;
        let aes_key = self.unwrap_aes_key(&wrapped_key)?;
        let session = SessionKey { aes_key, iv };
        let plain = session
            .cipher()
            .decrypt(GenericArray::from_slice(&session.iv), data.as_slice())
            .map_err(|_| DecryptError::BadCiphertext)?;
        let text = String::from_utf8(plain).map_err(|_| DecryptError::NotUtf8)?;
        Ok((session, text))
    }

    fn unwrap_aes_key(&self, wrapped: &[u8]) -> Result<[u8; AES_KEY_BYTES], DecryptError> {
        let mut out = vec![0u8; self.oaep.min_output_size()];
        let key = self
            .oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, wrapped, &mut out, None)
            .map_err(|_| DecryptError::BadKey)?;
        key.try_into().map_err(|_| DecryptError::BadKey)
    }
}

/// The three base64 fields of a request.
#[derive(Deserialize)]
struct Envelope {
    encrypted_flow_data: String,
    encrypted_aes_key: String,
    initial_vector: String,
}

/// One request's AES key and IV, which encrypt its answer.
pub struct SessionKey {
    aes_key: [u8; AES_KEY_BYTES],
    iv: [u8; IV_BYTES],
}

impl SessionKey {
    fn cipher(&self) -> FlowCipher {
        FlowCipher::new(GenericArray::from_slice(&self.aes_key))
    }

    /// The answer body: AES-128-GCM under the same key with the flipped IV, tag appended,
    /// base64.
    pub fn encrypt_response(&self, plaintext: &[u8]) -> String {
        let flipped: [u8; IV_BYTES] = self.iv.map(|b| b ^ 0xFF);
        // Encryption only fails for plaintexts over 64 GiB; answers are a few hundred bytes.
        let sealed = self
            .cipher()
            .encrypt(GenericArray::from_slice(&flipped), plaintext)
            .unwrap_or_default();
        STANDARD.encode(sealed)
    }
}

/// What Meta's client does, for tests, the benchmark and `referloop dev`: a request body
/// encrypted to `public_key_pem` under a fresh AES key and IV, and that session's key to
/// read the answer with.
pub fn seal_request(public_key_pem: &str, plaintext: &str) -> anyhow::Result<(String, SessionKey)> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};
    let der = pem_decode(public_key_pem, "PUBLIC KEY").ok_or_else(|| anyhow::anyhow!("not a PEM public key"))?;
    let public = PublicEncryptingKey::from_der(&der).map_err(|_| anyhow::anyhow!("not an RSA public key"))?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|_| anyhow::anyhow!("not an RSA public key"))?;
    let random = SystemRandom::new();
    let mut session = SessionKey {
        aes_key: [0; AES_KEY_BYTES],
        iv: [0; IV_BYTES],
    };
    random
        .fill(&mut session.aes_key)
        .and_then(|()| random.fill(&mut session.iv))
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let mut wrapped = vec![0u8; oaep.ciphertext_size()];
    let wrapped = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, &session.aes_key, &mut wrapped, None)
        .map_err(|_| anyhow::anyhow!("RSA encryption failed"))?;
    let data = session
        .cipher()
        .encrypt(GenericArray::from_slice(&session.iv), plaintext.as_bytes())
        .map_err(|_| anyhow::anyhow!("AES encryption failed"))?;
    let body = serde_json::json!({
        "encrypted_flow_data": STANDARD.encode(data),
        "encrypted_aes_key": STANDARD.encode(wrapped),
        "initial_vector": STANDARD.encode(session.iv),
    });
    Ok((body.to_string(), session))
}

impl SessionKey {
    /// A session key and IV as Meta's test vectors give them (hex).
    pub fn from_hex(aes_key: &str, iv: &str) -> Option<SessionKey> {
        Some(SessionKey {
            aes_key: hex::decode(aes_key).ok()?.try_into().ok()?,
            iv: hex::decode(iv).ok()?.try_into().ok()?,
        })
    }

    /// Reads an answer as the client does: base64, the flipped IV, the same key.
    pub fn open_response(&self, body: &str) -> Option<String> {
        let sealed = STANDARD.decode(body.trim()).ok()?;
        let flipped: [u8; IV_BYTES] = self.iv.map(|b| b ^ 0xFF);
        let plain = self
            .cipher()
            .decrypt(GenericArray::from_slice(&flipped), sealed.as_slice())
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// The configured key (`whatsapp.flow_private_key` or `flow_private_key_file`), if any.
pub fn configured_key(settings: &crate::config::Settings) -> Result<Option<FlowKey>, String> {
    use secrecy::ExposeSecret;
    match settings.flow_private_key_pem()? {
        Some(pem) => FlowKey::from_pkcs8_pem(pem.expose_secret())
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// A new RSA-2048 key pair, as (PKCS#8 private PEM, SPKI public PEM).
pub fn generate_key_pair() -> anyhow::Result<(String, String)> {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("could not generate an RSA-2048 key"))?;
    let private_der = key
        .as_der()
        .map_err(|_| anyhow::anyhow!("could not encode the private key"))?;
    let private_pem = pem_encode(private_der.as_ref(), "PRIVATE KEY");
    let loaded = FlowKey::from_key(key).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((private_pem, loaded.public_pem))
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn pem_decode(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let base64: String = pem[start..stop].split_whitespace().collect();
    STANDARD.decode(base64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../../tests/fixtures/whatsapp/flow_endpoint_test_vector.json");

    fn vectors() -> Value {
        serde_json::from_str(VECTORS).expect("test vector file is JSON")
    }

    fn key() -> FlowKey {
        FlowKey::from_pkcs8_pem(vectors()["private_key_pkcs8_pem"].as_str().expect("pem")).expect("key loads")
    }

    #[test]
    fn meta_test_vectors_decrypt_and_answers_encrypt_to_the_expected_bytes() {
        let all = vectors();
        let key = key();
        assert_eq!(key.public_key_pem(), all["public_key_spki_pem"].as_str().expect("pem"));
        for vector in all["vectors"].as_array().expect("vectors") {
            let name = vector["name"].as_str().expect("name");
            let body = vector["request_body_exact"].as_str().expect("body");
            let (session, plaintext) = key.decrypt_request(body.as_bytes()).expect(name);
            assert_eq!(
                plaintext,
                vector["decrypted_request_utf8"].as_str().expect("plain"),
                "{name}"
            );
            assert_eq!(
                hex::encode(session.aes_key),
                vector["aes_key_hex"].as_str().expect("key")
            );
            assert_eq!(hex::encode(session.iv), vector["iv_hex"].as_str().expect("iv"));
            let answer = vector["response_plaintext_utf8"].as_str().expect("answer");
            assert_eq!(
                session.encrypt_response(answer.as_bytes()),
                vector["response_body_base64"].as_str().expect("base64"),
                "{name}"
            );
        }
    }

    #[test]
    fn tampering_with_any_field_is_refused() {
        let all = vectors();
        let key = key();
        let body: Value =
            serde_json::from_str(all["vectors"][0]["request_body_exact"].as_str().expect("body")).expect("json");
        let flip_first_byte = |field: &str| {
            let mut bytes = STANDARD.decode(body[field].as_str().expect("field")).expect("base64");
            bytes[0] ^= 1;
            let mut tampered = body.clone();
            tampered[field] = Value::String(STANDARD.encode(bytes));
            tampered.to_string()
        };
        let refusal = |text: String| key.decrypt_request(text.as_bytes()).err();
        assert_eq!(
            refusal(flip_first_byte("encrypted_flow_data")),
            Some(DecryptError::BadCiphertext)
        );
        assert_eq!(
            refusal(flip_first_byte("initial_vector")),
            Some(DecryptError::BadCiphertext)
        );
        assert_eq!(
            refusal(flip_first_byte("encrypted_aes_key")),
            Some(DecryptError::BadKey)
        );
        let mut short_iv = body.clone();
        short_iv["initial_vector"] = Value::String(STANDARD.encode([0u8; 12]));
        assert_eq!(refusal(short_iv.to_string()), Some(DecryptError::BadIv));
        let mut not_base64 = body.clone();
        not_base64["encrypted_flow_data"] = Value::String("%%%".into());
        assert_eq!(refusal(not_base64.to_string()), Some(DecryptError::BadBase64));
        assert_eq!(refusal("{}".into()), Some(DecryptError::NotJson));
        assert_eq!(refusal("".into()), Some(DecryptError::NotJson));
    }

    #[test]
    fn a_generated_key_pair_loads_and_round_trips() {
        let (private_pem, public_pem) = generate_key_pair().expect("generates");
        let key = FlowKey::from_pkcs8_pem(&private_pem).expect("loads");
        assert_eq!(key.public_key_pem(), public_pem);
        let (body, client) = seal_request(&public_pem, r#"{"action":"ping"}"#).expect("seals");
        let (server, plaintext) = key.decrypt_request(body.as_bytes()).expect("opens");
        assert_eq!(plaintext, r#"{"action":"ping"}"#);
        let answer = server.encrypt_response(b"{\"ok\":1}");
        assert_eq!(client.open_response(&answer).as_deref(), Some("{\"ok\":1}"));
        let (other_body, _) = seal_request(&public_pem, "x").expect("seals");
        assert_ne!(body, other_body, "a fresh key and IV each time");
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(FlowKey::from_pkcs8_pem("not a key").err(), Some(KeyError::NotPem));
        let garbage = pem_encode(b"garbage", "PRIVATE KEY");
        assert_eq!(FlowKey::from_pkcs8_pem(&garbage).err(), Some(KeyError::NotRsaPkcs8));
    }
}
