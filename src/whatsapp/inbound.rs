//! The WhatsApp inbox events (one message, status or preference each, as split by
//! `domain::inbox`), parsed into types. Fields Meta may omit are optional; an event
//! that is not JSON of the expected shape is an error (the item ends dead with it).

use serde::Deserialize;

use crate::domain::economics::Pricing;
use crate::domain::messaging::{MessageStatus, TemplateEvent};
use crate::domain::phone::E164;

/// A message someone sent to the business.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The sender, when a valid mobile number.
    pub from: Option<E164>,
    pub wamid: String,
    /// When it was sent (Unix milliseconds), when Meta said.
    pub sent_at_ms: Option<i64>,
    /// The message it replies to (a Flow reply names the Flow message).
    pub context_id: Option<String>,
    /// The business's display number, from the webhook's metadata.
    pub business_number: String,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A template quick-reply button or an interactive reply button.
    ButtonTap {
        payload: String,
    },
    /// A completed Flow (`nfm_reply`).
    FlowReply {
        response_json: String,
    },
    Text {
        body: String,
    },
    /// Anything else (images, reactions, locations...): recorded, not acted on.
    Other {
        kind: String,
    },
}

/// A status Meta reported for a message we sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub wamid: String,
    /// `None` for statuses referloop does not track (`deleted`, `warning`).
    pub status: Option<MessageStatus>,
    pub error_code: Option<i64>,
    pub error_title: Option<String>,
    /// Our `biz_opaque_callback_data`, echoed: the message's idempotency key.
    pub callback: Option<String>,
    /// Meta's `pricing` object (on `sent`, and on the `delivered` or `read` that bills).
    pub pricing: Option<Pricing>,
}

/// A marketing-preference change the user made in WhatsApp.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceUpdate {
    pub phone: Option<E164>,
    pub preference: Preference,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preference {
    Stop,
    Resume,
    Other(String),
}

/// A change of a template's status (`message_template_status_update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateStatusUpdate {
    pub name: String,
    pub language: String,
    /// Meta's `event`: APPROVED, PAUSED, DISABLED, REJECTED, …
    pub event: TemplateEvent,
    pub reason: Option<String>,
}

#[derive(Deserialize)]
struct TemplateChange {
    value: RawTemplateStatus,
}

#[derive(Deserialize)]
struct RawTemplateStatus {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    message_template_name: Option<String>,
    #[serde(default)]
    message_template_language: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A template's quality score changed (`message_template_quality_update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateQualityUpdate {
    pub name: String,
    pub language: String,
    pub previous: Option<String>,
    /// GREEN, YELLOW, RED or UNKNOWN.
    pub new: String,
}

/// Meta recategorised a template, or will in 24 hours (`template_category_update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateCategoryUpdate {
    pub name: String,
    pub language: String,
    pub previous: Option<String>,
    pub new: String,
    /// Set on the notice of an impending change: the category it will become.
    pub correct: Option<String>,
}

#[derive(Deserialize)]
struct TemplateChangeValue {
    value: RawTemplateChange,
}

#[derive(Deserialize)]
struct RawTemplateChange {
    #[serde(default)]
    message_template_name: Option<String>,
    #[serde(default)]
    message_template_language: Option<String>,
    #[serde(default)]
    previous_quality_score: Option<String>,
    #[serde(default)]
    new_quality_score: Option<String>,
    #[serde(default)]
    previous_category: Option<String>,
    #[serde(default)]
    new_category: Option<String>,
    #[serde(default)]
    correct_category: Option<String>,
}

fn template_change(payload: &str) -> Result<(String, String, RawTemplateChange), ShapeError> {
    let change: TemplateChangeValue = parse(payload)?;
    let mut v = change.value;
    match (
        present(v.message_template_name.take()),
        present(v.message_template_language.take()),
    ) {
        (Some(name), Some(language)) => Ok((name, language, v)),
        _ => Err(ShapeError("a template update without name or language".into())),
    }
}

pub fn parse_template_quality(payload: &str) -> Result<TemplateQualityUpdate, ShapeError> {
    let (name, language, v) = template_change(payload)?;
    let new = present(v.new_quality_score).ok_or(ShapeError("a quality update without new_quality_score".into()))?;
    Ok(TemplateQualityUpdate {
        name,
        language,
        previous: present(v.previous_quality_score),
        new,
    })
}

pub fn parse_template_category(payload: &str) -> Result<TemplateCategoryUpdate, ShapeError> {
    let (name, language, v) = template_change(payload)?;
    let new = present(v.new_category).ok_or(ShapeError("a category update without new_category".into()))?;
    Ok(TemplateCategoryUpdate {
        name,
        language,
        previous: present(v.previous_category),
        new,
        correct: present(v.correct_category),
    })
}

pub fn parse_template_status(payload: &str) -> Result<TemplateStatusUpdate, ShapeError> {
    let change: TemplateChange = parse(payload)?;
    let v = change.value;
    let (Some(name), Some(language), Some(event)) = (
        present(v.message_template_name),
        present(v.message_template_language),
        present(v.event),
    ) else {
        return Err(ShapeError(
            "a template status update without name, language or event".into(),
        ));
    };
    Ok(TemplateStatusUpdate {
        name,
        language,
        event: TemplateEvent::from(event),
        reason: present(v.reason).filter(|r| r != "NONE"),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WhatsApp event is not in the expected shape: {0}")]
pub struct ShapeError(String);

#[derive(Deserialize)]
struct MessageEvent {
    message: RawMessage,
    #[serde(default)]
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize)]
struct RawMetadata {
    #[serde(default)]
    display_phone_number: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    context: Option<RawId>,
    #[serde(default)]
    button: Option<RawButton>,
    #[serde(default)]
    interactive: Option<RawInteractive>,
    #[serde(default)]
    text: Option<RawText>,
}

#[derive(Deserialize)]
struct RawId {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct RawButton {
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawInteractive {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    button_reply: Option<RawId>,
    #[serde(default)]
    nfm_reply: Option<RawFlowReply>,
}

#[derive(Deserialize)]
struct RawFlowReply {
    #[serde(default)]
    response_json: Option<String>,
}

#[derive(Deserialize)]
struct RawText {
    #[serde(default)]
    body: Option<String>,
}

#[derive(Deserialize)]
struct StatusEvent {
    status: RawStatus,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    errors: Vec<RawError>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    pricing: Option<RawPricing>,
}

#[derive(Deserialize)]
struct RawPricing {
    #[serde(default)]
    billable: Option<bool>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    category: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct PreferenceEvent {
    preference: RawPreference,
}

#[derive(Deserialize)]
struct RawPreference {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn parse<'a, T: Deserialize<'a>>(payload: &'a str) -> Result<T, ShapeError> {
    serde_json::from_str(payload).map_err(|e| ShapeError(e.to_string()))
}

pub fn parse_message(payload: &str) -> Result<InboundMessage, ShapeError> {
    let event: MessageEvent = parse(payload)?;
    let m = event.message;
    let kind = present(m.kind).unwrap_or_default();
    let content = match kind.as_str() {
        "button" => {
            let button = m.button.unwrap_or(RawButton {
                payload: None,
                text: None,
            });
            Content::ButtonTap {
                payload: present(button.payload).or(present(button.text)).unwrap_or_default(),
            }
        }
        "interactive" => interactive_content(m.interactive),
        "text" => Content::Text {
            body: m.text.and_then(|t| t.body).unwrap_or_default(),
        },
        _ => Content::Other { kind },
    };
    Ok(InboundMessage {
        from: present(m.from).and_then(|f| E164::from_wa_id(&f).ok()),
        wamid: present(m.id).unwrap_or_default(),
        sent_at_ms: m.timestamp.and_then(|t| t.parse::<i64>().ok()).map(|t| t * 1000),
        context_id: m.context.and_then(|c| present(c.id)),
        business_number: event.metadata.and_then(|m| m.display_phone_number).unwrap_or_default(),
        content,
    })
}

fn interactive_content(interactive: Option<RawInteractive>) -> Content {
    let Some(interactive) = interactive else {
        return Content::Other {
            kind: "interactive".into(),
        };
    };
    match interactive.kind.as_deref() {
        Some("button_reply") => Content::ButtonTap {
            payload: interactive.button_reply.and_then(|b| b.id).unwrap_or_default(),
        },
        Some("nfm_reply") => Content::FlowReply {
            response_json: interactive.nfm_reply.and_then(|r| r.response_json).unwrap_or_default(),
        },
        other => Content::Other {
            kind: format!("interactive {}", other.unwrap_or("?")),
        },
    }
}

/// Meta's statuses that referloop tracks.
fn meta_status(name: &str) -> Option<MessageStatus> {
    match name {
        "sent" => Some(MessageStatus::Sent),
        "delivered" => Some(MessageStatus::Delivered),
        "read" => Some(MessageStatus::Read),
        "failed" => Some(MessageStatus::Failed),
        _ => None,
    }
}

pub fn parse_status(payload: &str) -> Result<StatusUpdate, ShapeError> {
    let event: StatusEvent = parse(payload)?;
    let s = event.status;
    let first_error = s.errors.into_iter().next();
    Ok(StatusUpdate {
        wamid: present(s.id).unwrap_or_default(),
        status: s.status.as_deref().and_then(meta_status),
        error_code: first_error.as_ref().and_then(|e| e.code),
        error_title: first_error.and_then(|e| present(e.title).or(present(e.message))),
        callback: present(s.biz_opaque_callback_data),
        pricing: s
            .pricing
            .map(|p| Pricing::from_meta(p.billable, p.kind.as_deref(), p.category.as_deref())),
    })
}

pub fn parse_preference(payload: &str) -> Result<PreferenceUpdate, ShapeError> {
    let event: PreferenceEvent = parse(payload)?;
    let p = event.preference;
    let preference = match p.value.as_deref() {
        Some("stop") => Preference::Stop,
        Some("resume") => Preference::Resume,
        other => Preference::Other(other.unwrap_or_default().to_string()),
    };
    Ok(PreferenceUpdate {
        phone: present(p.wa_id).and_then(|w| E164::from_wa_id(&w).ok()),
        preference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_of_each_kind() {
        let event = |message: serde_json::Value| {
            json!({"metadata": {"display_phone_number": "15550001234"}, "message": message}).to_string()
        };
        let tap = parse_message(&event(
            json!({"from": "447911123456", "id": "wamid.A", "timestamp": "1767225600",
            "type": "button", "button": {"payload": "refer:7", "text": "Refer someone"}}),
        ))
        .expect("tap");
        assert_eq!(
            tap.content,
            Content::ButtonTap {
                payload: "refer:7".into()
            }
        );
        assert_eq!(tap.sent_at_ms, Some(1_767_225_600_000));
        assert_eq!(tap.business_number, "15550001234");
        assert_eq!(
            tap.from.map(|p| p.as_str().to_string()).as_deref(),
            Some("+447911123456")
        );

        let reply = parse_message(&event(
            json!({"from": "447911123456", "id": "wamid.B", "type": "interactive",
            "context": {"id": "wamid.FLOW"},
            "interactive": {"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}}}),
        ))
        .expect("reply");
        assert_eq!(
            reply.content,
            Content::FlowReply {
                response_json: "{}".into()
            }
        );
        assert_eq!(reply.context_id.as_deref(), Some("wamid.FLOW"));

        let text = parse_message(&event(
            json!({"from": "x", "id": "wamid.C", "type": "text", "text": {"body": "STOP"}}),
        ))
        .expect("text");
        assert_eq!(text.content, Content::Text { body: "STOP".into() });
        assert_eq!(text.from, None, "an invalid sender is not a phone");

        let image = parse_message(&event(json!({"id": "wamid.D", "type": "image"}))).expect("image");
        assert_eq!(image.content, Content::Other { kind: "image".into() });
        assert!(parse_message("{\"no_message\": 1}").is_err());
    }

    #[test]
    fn statuses_and_their_errors() {
        let failed = parse_status(
            &json!({"status": {"id": "wamid.X", "status": "failed",
            "biz_opaque_callback_data": "referral:1:friend_invite",
            "errors": [{"code": 131049, "title": "Message not delivered"}]}})
            .to_string(),
        )
        .expect("status");
        assert_eq!(failed.status, Some(MessageStatus::Failed));
        assert_eq!(failed.error_code, Some(131049));
        assert_eq!(failed.error_title.as_deref(), Some("Message not delivered"));
        assert_eq!(failed.callback.as_deref(), Some("referral:1:friend_invite"));
        let deleted =
            parse_status(&json!({"status": {"id": "wamid.X", "status": "deleted"}}).to_string()).expect("status");
        assert_eq!(deleted.status, None);
    }

    #[test]
    fn template_status_updates() {
        let paused = parse_template_status(
            &json!({"field": "message_template_status_update", "value": {"event": "PAUSED",
                "message_template_id": 123, "message_template_name": "tmpl_referral_invite",
                "message_template_language": "en_US", "reason": "NONE"}})
            .to_string(),
        )
        .expect("update");
        assert_eq!(
            (paused.name.as_str(), paused.event.as_str(), paused.reason),
            ("tmpl_referral_invite", "PAUSED", None)
        );
        assert!(parse_template_status(&json!({"value": {"event": "PAUSED"}}).to_string()).is_err());
    }

    #[test]
    fn template_quality_and_category_updates() {
        let quality = parse_template_quality(
            &json!({"field": "message_template_quality_update", "value": {"previous_quality_score": "GREEN",
                "new_quality_score": "RED", "message_template_id": 1, "message_template_name": "tmpl_referral_invite",
                "message_template_language": "en_US"}})
            .to_string(),
        )
        .expect("quality");
        assert_eq!(
            (quality.previous.as_deref(), quality.new.as_str()),
            (Some("GREEN"), "RED")
        );
        let impending = parse_template_category(
            &json!({"field": "template_category_update", "value": {"message_template_name": "tmpl_referral_reward",
                "message_template_language": "en_US", "correct_category": "MARKETING", "new_category": "UTILITY",
                "category_update_timestamp": 1767225600}})
            .to_string(),
        )
        .expect("category");
        assert_eq!(
            (impending.new.as_str(), impending.correct.as_deref()),
            ("UTILITY", Some("MARKETING"))
        );
        assert!(parse_template_quality(&json!({"value": {"new_quality_score": "RED"}}).to_string()).is_err());
    }

    #[test]
    fn preferences() {
        let stop = parse_preference(&json!({"preference": {"wa_id": "447911123456", "value": "stop"}}).to_string())
            .expect("preference");
        assert_eq!(stop.preference, Preference::Stop);
        assert!(stop.phone.is_some());
    }
}
