//! The inbox's events in their typed form: a stored item's kind and payload decode into
//! an [`InboundEvent`], which the worker hands to its step (`jobs/dispatch.rs`).

use serde_json::Value;

use crate::app::conversion::StripeEventKind;
use crate::domain::inbox::{InboxKind, WorkflowTrigger};
use crate::whatsapp::inbound::{
    self, InboundMessage, PreferenceUpdate, StatusUpdate, TemplateCategoryUpdate, TemplateQualityUpdate,
    TemplateStatusUpdate,
};

/// A received webhook event, as the inbox stores it (one per dedupe key).
#[derive(Debug, Clone, PartialEq)]
pub enum InboundEvent {
    WhatsAppMessage(InboundMessage),
    WhatsAppStatus(StatusUpdate),
    WhatsAppPreference(PreferenceUpdate),
    /// A template's status changed (paused, approved, …).
    WhatsAppTemplateStatus(TemplateStatusUpdate),
    WhatsAppTemplateQuality(TemplateQualityUpdate),
    WhatsAppTemplateCategory(TemplateCategoryUpdate),
    /// A HubSpot workflow's NPS or milestone trigger.
    HubSpotTrigger(Value),
    /// A HubSpot workflow's conversion (contact became a customer, deal won).
    HubSpotConversion(Value),
    Stripe {
        kind: StripeEventKind,
        event: Value,
    },
    /// Stored for the record, nothing to do (template status updates, HubSpot Webhooks
    /// API events, Stripe events referloop does not act on).
    Recorded {
        kind: String,
    },
}

impl InboundEvent {
    pub fn decode(kind: &InboxKind, payload: &str) -> Result<InboundEvent, String> {
        let json = || serde_json::from_str::<Value>(payload).map_err(|e| format!("payload is not JSON: {e}"));
        let shape = |e: inbound::ShapeError| e.to_string();
        Ok(match kind {
            InboxKind::WhatsAppMessage => {
                InboundEvent::WhatsAppMessage(inbound::parse_message(payload).map_err(shape)?)
            }
            InboxKind::WhatsAppStatus => InboundEvent::WhatsAppStatus(inbound::parse_status(payload).map_err(shape)?),
            InboxKind::WhatsAppTemplateStatus => {
                InboundEvent::WhatsAppTemplateStatus(inbound::parse_template_status(payload).map_err(shape)?)
            }
            InboxKind::WhatsAppTemplateQuality => {
                InboundEvent::WhatsAppTemplateQuality(inbound::parse_template_quality(payload).map_err(shape)?)
            }
            InboxKind::WhatsAppTemplateCategory => {
                InboundEvent::WhatsAppTemplateCategory(inbound::parse_template_category(payload).map_err(shape)?)
            }
            InboxKind::WhatsAppPreference => {
                InboundEvent::WhatsAppPreference(inbound::parse_preference(payload).map_err(shape)?)
            }
            InboxKind::HubSpotWorkflow(WorkflowTrigger::Nps | WorkflowTrigger::Milestone) => {
                InboundEvent::HubSpotTrigger(json()?)
            }
            InboxKind::HubSpotWorkflow(WorkflowTrigger::Conversion) => InboundEvent::HubSpotConversion(json()?),
            InboxKind::HubSpotWorkflow(WorkflowTrigger::Other(_)) => {
                return Err(format!("unknown event kind `{}`", kind.name()))
            }
            InboxKind::Stripe(event_type) => match StripeEventKind::parse(event_type) {
                Some(stripe) => InboundEvent::Stripe {
                    kind: stripe,
                    event: json()?,
                },
                None => InboundEvent::Recorded { kind: kind.name() },
            },
            InboxKind::WhatsAppOther(_) | InboxKind::HubSpotEvent(_) => InboundEvent::Recorded { kind: kind.name() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(kind: &str, payload: &str) -> Result<InboundEvent, String> {
        let kind = InboxKind::parse(kind).ok_or_else(|| format!("unknown event kind `{kind}`"))?;
        InboundEvent::decode(&kind, payload)
    }

    #[test]
    fn event_kinds_decode_or_are_refused() {
        assert!(matches!(
            decode("whatsapp.account_update", "{}"),
            Ok(InboundEvent::Recorded { .. })
        ));
        assert!(decode("whatsapp.message_template_status_update", "{}").is_err());
        assert!(matches!(
            decode("stripe.customer.created", "{}"),
            Ok(InboundEvent::Recorded { .. })
        ));
        assert!(matches!(
            decode("stripe.invoice.paid", "{}"),
            Ok(InboundEvent::Stripe {
                kind: StripeEventKind::InvoicePaid,
                ..
            })
        ));
        assert!(decode("hubspot.workflow.teleport", "{}").is_err());
        assert!(decode("from.the.future", "{}").is_err());
        assert!(decode("whatsapp.status", "not json").is_err());
    }
}
