//! Meta's WhatsApp payloads: what arrives in webhooks ([`inbound`], typed once here) and
//! the request bodies we send ([`render`]). The HTTP client is in
//! `integrations::whatsapp`; what the events mean for a referral is in `app`.

pub mod flow_crypto;
pub mod inbound;
pub mod render;
