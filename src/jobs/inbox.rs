//! Received events, by kind. Each handler is idempotent: a redelivered or re-run event
//! finds its work done (unique keys) and changes nothing.

use serde_json::Value;

use super::{conversions, lifecycle};
use super::{HandlerOutcome, HandlerResult, Services};
use crate::store::ClaimedItem;

pub async fn handle(services: &Services, item: &ClaimedItem) -> HandlerResult {
    let Ok(payload) = serde_json::from_str::<Value>(&item.payload) else {
        return Err(super::HandlerError::Permanent("stored payload is not JSON".into()));
    };
    match item.kind.as_str() {
        "hubspot.workflow.nps" | "hubspot.workflow.milestone" => {
            lifecycle::on_trigger(services, item.id, &payload).await
        }
        "whatsapp.message" => lifecycle::on_message(services, item, &payload).await,
        "whatsapp.status" => lifecycle::on_status(services, item, &payload).await,
        "whatsapp.user_preference" => lifecycle::on_user_preference(services, &payload).await,
        "hubspot.workflow.conversion" => conversions::on_hubspot_conversion(services, &payload, item.id).await,
        kind if kind.starts_with("stripe.") => conversions::on_stripe_event(services, kind, &payload).await,
        other => {
            tracing::info!(kind = other, "no handler for this event kind; marked processed");
            HandlerOutcome::done(format!("unhandled kind: {other}"))
        }
    }
}
