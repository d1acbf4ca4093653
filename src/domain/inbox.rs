//! Splits a verified webhook body into inbox events, each with a key that is the same
//! every time the provider redelivers it. The keys (documented in README.md):
//!
//! | source   | event                      | dedupe key                                              |
//! |----------|----------------------------|---------------------------------------------------------|
//! | whatsapp | inbound message            | `message:<wamid>`                                       |
//! | whatsapp | status                     | `status:<wamid>:<status>`                               |
//! | whatsapp | marketing preference       | `preference:<wa_id>:<value>:<timestamp>`                |
//! | whatsapp | anything else              | `<field>:<sha256 of the change>`                        |
//! | hubspot  | Webhooks API event         | `event:<eventId>`                                       |
//! | hubspot  | workflow "Send a webhook"  | `<object>:<id>:<trigger>[:<name>]:<trigger date/value>` |
//! | stripe   | event                      | `<evt_ id>`                                             |
//!
//! A workflow webhook carries no event id, so its key is derived from the record, the
//! trigger named in the URL, and the property that changes each time that trigger fires
//! (the survey date for `nps`, the lifecycle-stage date or `closedate` for `conversion`);
//! for other triggers (milestones), or when that property is absent, a hash of the body,
//! which is identical across HubSpot's retries.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::state::persisted;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    WhatsApp,
    HubSpot,
    Stripe,
}

// Stored in `inbox_events.source`.
persisted!(Source {
    WhatsApp => "whatsapp",
    HubSpot => "hubspot",
    Stripe => "stripe",
});

/// One event to store in the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInboxEvent {
    pub source: Source,
    pub dedupe_key: String,
    pub kind: InboxKind,
    pub payload: String,
}

/// What a stored inbox event is: its source and which of the source's events. Stored as
/// `<source>.<event>` (`whatsapp.status`, `hubspot.workflow.nps`,
/// `stripe.checkout.session.completed`), written and read back only through this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxKind {
    WhatsAppMessage,
    WhatsAppStatus,
    WhatsAppPreference,
    WhatsAppTemplateStatus,
    WhatsAppTemplateQuality,
    WhatsAppTemplateCategory,
    /// Another field of a WhatsApp change, by its name (recorded).
    WhatsAppOther(String),
    /// A HubSpot workflow's webhook, by the trigger its URL names.
    HubSpotWorkflow(WorkflowTrigger),
    /// A HubSpot Webhooks API event, by its subscription type (recorded).
    HubSpotEvent(String),
    /// A Stripe event, by its type.
    Stripe(String),
}

/// The trigger a HubSpot workflow's URL names (`?trigger=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowTrigger {
    Nps,
    Milestone,
    Conversion,
    /// A name referloop does not know (the event ends dead, saying so).
    Other(String),
}

impl WorkflowTrigger {
    pub fn parse(name: &str) -> WorkflowTrigger {
        match name {
            "nps" => WorkflowTrigger::Nps,
            "milestone" => WorkflowTrigger::Milestone,
            "conversion" => WorkflowTrigger::Conversion,
            other => WorkflowTrigger::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            WorkflowTrigger::Nps => "nps",
            WorkflowTrigger::Milestone => "milestone",
            WorkflowTrigger::Conversion => "conversion",
            WorkflowTrigger::Other(name) => name,
        }
    }
}

impl InboxKind {
    /// The stored name.
    pub fn name(&self) -> String {
        match self {
            InboxKind::WhatsAppMessage => "whatsapp.message".into(),
            InboxKind::WhatsAppStatus => STATUS_KIND.into(),
            InboxKind::WhatsAppPreference => "whatsapp.user_preference".into(),
            InboxKind::WhatsAppTemplateStatus => "whatsapp.message_template_status_update".into(),
            InboxKind::WhatsAppTemplateQuality => "whatsapp.message_template_quality_update".into(),
            InboxKind::WhatsAppTemplateCategory => "whatsapp.template_category_update".into(),
            InboxKind::WhatsAppOther(field) => format!("whatsapp.{field}"),
            InboxKind::HubSpotWorkflow(trigger) => format!("hubspot.workflow.{}", trigger.as_str()),
            InboxKind::HubSpotEvent(kind) => format!("hubspot.{kind}"),
            InboxKind::Stripe(kind) => format!("stripe.{kind}"),
        }
    }

    /// The kind a stored name names; `None` for a source referloop does not know.
    pub fn parse(name: &str) -> Option<InboxKind> {
        if let Some(field) = name.strip_prefix("whatsapp.") {
            return Some(Self::whatsapp_field(field));
        }
        if let Some(trigger) = name.strip_prefix("hubspot.workflow.") {
            return Some(InboxKind::HubSpotWorkflow(WorkflowTrigger::parse(trigger)));
        }
        if let Some(kind) = name.strip_prefix("hubspot.") {
            return Some(InboxKind::HubSpotEvent(kind.to_string()));
        }
        name.strip_prefix("stripe.")
            .map(|kind| InboxKind::Stripe(kind.to_string()))
    }

    /// The kind of a WhatsApp change's field, or of one of its items.
    fn whatsapp_field(field: &str) -> InboxKind {
        match field {
            "message" => InboxKind::WhatsAppMessage,
            "status" => InboxKind::WhatsAppStatus,
            "user_preference" => InboxKind::WhatsAppPreference,
            "message_template_status_update" => InboxKind::WhatsAppTemplateStatus,
            "message_template_quality_update" => InboxKind::WhatsAppTemplateQuality,
            "template_category_update" => InboxKind::WhatsAppTemplateCategory,
            other => InboxKind::WhatsAppOther(other.to_string()),
        }
    }
}

/// The stored name of Meta's message statuses (claimed in batches by its own index).
pub const STATUS_KIND: &str = "whatsapp.status";

/// Why a body that passed authentication still cannot be accepted (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Unexpected(&'static str),
    #[error("a NUL character in an identifier")]
    NulInIdentifier,
}

impl PayloadError {
    pub fn as_label(&self) -> &'static str {
        match self {
            PayloadError::NotJson(_) => "malformed_json",
            PayloadError::Unexpected(_) => "unexpected_shape",
            PayloadError::NulInIdentifier => "nul_character",
        }
    }
}

/// NUL characters, decided once at the boundary so that both stores behave alike
/// (PostgreSQL text cannot hold NUL): an event whose key or kind (built from the
/// provider's ids) holds one is refused; in any other value NUL becomes U+FFFD.
pub fn clean_nul(events: &mut [NewInboxEvent]) -> Result<(), PayloadError> {
    for event in events.iter_mut() {
        if event.dedupe_key.contains('\0') || event.kind.name().contains('\0') {
            return Err(PayloadError::NulInIdentifier);
        }
        // serde_json writes a NUL inside a string as the escape `\u0000`.
        if !event.payload.contains("\\u0000") {
            continue;
        }
        let mut payload: Value =
            serde_json::from_str(&event.payload).map_err(|e| PayloadError::NotJson(e.to_string()))?;
        replace_nul(&mut payload);
        event.payload = payload.to_string();
    }
    Ok(())
}

fn replace_nul(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) => {
            let keys_with_nul: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
            for key in keys_with_nul {
                if let Some(v) = map.remove(&key) {
                    map.insert(key.replace('\0', "\u{FFFD}"), v);
                }
            }
            map.values_mut().for_each(replace_nul);
        }
        _ => {}
    }
}

fn parse(body: &[u8]) -> Result<Value, PayloadError> {
    serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// A JSON string or number as text (ids arrive as either).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Meta's batch: `entry[].changes[]`, each a `field` and a `value` holding messages,
/// statuses or other updates. Every message and status becomes its own event, carrying
/// the change's `metadata` and `contacts` so it can be handled alone.
pub fn split_whatsapp(body: &[u8]) -> Result<Vec<NewInboxEvent>, PayloadError> {
    let root = parse(body)?;
    if root.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return Err(PayloadError::Unexpected("not a whatsapp_business_account webhook"));
    }
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or(PayloadError::Unexpected("no entry array"))?;
    let mut events = Vec::new();
    for entry in entries {
        let changes = entry
            .get("changes")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for change in changes {
            split_whatsapp_change(entry, change, &mut events);
        }
    }
    Ok(events)
}

fn split_whatsapp_change(entry: &Value, change: &Value, out: &mut Vec<NewInboxEvent>) {
    let field = change.get("field").and_then(Value::as_str).unwrap_or("unknown");
    let value = change.get("value").cloned().unwrap_or(Value::Null);
    let context = |item_name: &str, item: &Value| {
        let mut payload = Map::new();
        payload.insert("waba_id".into(), entry.get("id").cloned().unwrap_or(Value::Null));
        payload.insert("field".into(), Value::String(field.to_string()));
        payload.insert("metadata".into(), value.get("metadata").cloned().unwrap_or(Value::Null));
        payload.insert("contacts".into(), value.get("contacts").cloned().unwrap_or(Value::Null));
        payload.insert(item_name.to_string(), item.clone());
        Value::Object(payload).to_string()
    };
    let whatsapp = |dedupe_key: String, kind: InboxKind, payload: String| NewInboxEvent {
        source: Source::WhatsApp,
        dedupe_key,
        kind,
        payload,
    };

    let mut itemised = false;
    for message in value.get("messages").and_then(Value::as_array).into_iter().flatten() {
        itemised = true;
        let key = match message.get("id").and_then(scalar_text) {
            Some(id) => format!("message:{id}"),
            None => format!("message:sha256:{}", short_hash(message.to_string().as_bytes())),
        };
        out.push(whatsapp(key, InboxKind::WhatsAppMessage, context("message", message)));
    }
    for status in value.get("statuses").and_then(Value::as_array).into_iter().flatten() {
        itemised = true;
        let id = status.get("id").and_then(scalar_text);
        let state = status.get("status").and_then(scalar_text);
        let key = match (id, state) {
            (Some(id), Some(state)) => format!("status:{id}:{state}"),
            _ => format!("status:sha256:{}", short_hash(status.to_string().as_bytes())),
        };
        out.push(whatsapp(key, InboxKind::WhatsAppStatus, context("status", status)));
    }
    for preference in value
        .get("user_preferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        itemised = true;
        let part = |name: &str| preference.get(name).and_then(scalar_text).unwrap_or_default();
        let key = format!("preference:{}:{}:{}", part("wa_id"), part("value"), part("timestamp"));
        out.push(whatsapp(
            key,
            InboxKind::WhatsAppPreference,
            context("preference", preference),
        ));
    }
    if !itemised {
        let raw = change.to_string();
        let key = format!("{field}:{}", short_hash(raw.as_bytes()));
        out.push(whatsapp(key, InboxKind::whatsapp_field(field), raw));
    }
}

/// What the workflow's URL says about the trigger (`?trigger=nps`, `?trigger=milestone&name=renewal`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubSpotTrigger {
    pub trigger: Option<String>,
    pub name: Option<String>,
}

/// HubSpot sends either a JSON array of Webhooks API events or one workflow record
/// (the classic v1 record or a flat object of chosen properties).
pub fn split_hubspot(body: &[u8], trigger: &HubSpotTrigger) -> Result<Vec<NewInboxEvent>, PayloadError> {
    match parse(body)? {
        Value::Array(events) => Ok(events.iter().map(hubspot_api_event).collect()),
        Value::Object(record) => Ok(vec![hubspot_workflow_event(&record, body, trigger)?]),
        _ => Err(PayloadError::Unexpected("expected a JSON object or array")),
    }
}

fn hubspot_api_event(event: &Value) -> NewInboxEvent {
    let key = match event.get("eventId").and_then(scalar_text) {
        Some(id) => format!("event:{id}"),
        None => format!("event:sha256:{}", short_hash(event.to_string().as_bytes())),
    };
    let kind = event.get("subscriptionType").and_then(Value::as_str).unwrap_or("event");
    NewInboxEvent {
        source: Source::HubSpot,
        dedupe_key: key,
        kind: InboxKind::HubSpotEvent(kind.to_string()),
        payload: event.to_string(),
    }
}

/// A property of a workflow record in either shape: flat (`"x": "1"`) or classic
/// (`"properties": {"x": {"value": "1"}}`).
pub fn hubspot_property(record: &Map<String, Value>, name: &str) -> Option<String> {
    if let Some(v) = record.get(name).and_then(scalar_text) {
        return Some(v);
    }
    let property = record.get("properties")?.get(name)?;
    property
        .get("value")
        .and_then(scalar_text)
        .or_else(|| scalar_text(property))
}

/// The record a workflow webhook is about: `(object type, id)`.
pub fn hubspot_record_id(record: &Map<String, Value>) -> Option<(&'static str, String)> {
    if let Some(id) = record.get("dealId").and_then(scalar_text) {
        return Some(("deal", id));
    }
    for key in ["canonical-vid", "vid"] {
        if let Some(id) = record.get(key).and_then(scalar_text) {
            return Some(("contact", id));
        }
    }
    if let Some(object) = record.get("object") {
        let kind = match object.get("objectType").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("deal") => "deal",
            _ => "contact",
        };
        if let Some(id) = object.get("objectId").and_then(scalar_text) {
            return Some((kind, id));
        }
    }
    for key in ["hs_object_id", "objectId"] {
        if let Some(id) = hubspot_property(record, key) {
            let kind = if hubspot_property(record, "dealname").is_some() {
                "deal"
            } else {
                "contact"
            };
            return Some((kind, id));
        }
    }
    None
}

/// The properties that change each time a trigger fires, by trigger; other triggers
/// (milestones) are told apart by the body's hash.
fn occurrence_properties(trigger: &str) -> &'static [&'static str] {
    match trigger {
        "nps" => &["hs_feedback_last_survey_date"],
        "conversion" => &["hs_lifecyclestage_customer_date", "closedate"],
        _ => &[],
    }
}

fn hubspot_workflow_event(
    record: &Map<String, Value>,
    body: &[u8],
    trigger: &HubSpotTrigger,
) -> Result<NewInboxEvent, PayloadError> {
    let (object, id) =
        hubspot_record_id(record).ok_or(PayloadError::Unexpected("no record id (hs_object_id, vid or dealId)"))?;
    let trigger_name = trigger.trigger.as_deref().unwrap_or("unspecified");
    let mut key = format!("{object}:{id}:{trigger_name}");
    if let Some(name) = &trigger.name {
        key.push(':');
        key.push_str(name);
    }
    let occurrence = occurrence_properties(trigger_name)
        .iter()
        .find_map(|p| hubspot_property(record, p))
        .unwrap_or_else(|| format!("sha256:{}", short_hash(body)));
    key.push(':');
    key.push_str(&occurrence);

    let mut payload = Map::new();
    payload.insert("trigger".into(), Value::String(trigger_name.to_string()));
    payload.insert(
        "name".into(),
        trigger.name.clone().map(Value::String).unwrap_or(Value::Null),
    );
    payload.insert("object_type".into(), Value::String(object.to_string()));
    payload.insert("object_id".into(), Value::String(id));
    payload.insert("record".into(), Value::Object(record.clone()));
    Ok(NewInboxEvent {
        source: Source::HubSpot,
        dedupe_key: key,
        kind: InboxKind::HubSpotWorkflow(WorkflowTrigger::parse(trigger_name)),
        payload: Value::Object(payload).to_string(),
    })
}

/// A Stripe event: its `evt_…` id is the key.
pub fn split_stripe(body: &[u8]) -> Result<Vec<NewInboxEvent>, PayloadError> {
    let root = parse(body)?;
    let id = root
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(PayloadError::Unexpected("no event id"))?;
    let kind = root.get("type").and_then(Value::as_str).unwrap_or("unknown");
    Ok(vec![NewInboxEvent {
        source: Source::Stripe,
        dedupe_key: id.to_string(),
        kind: InboxKind::Stripe(kind.to_string()),
        payload: String::from_utf8_lossy(body).into_owned(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind reads back from its stored name as itself.
    #[test]
    fn inbox_kinds_read_back_from_their_names() {
        let kinds = [
            InboxKind::WhatsAppMessage,
            InboxKind::WhatsAppStatus,
            InboxKind::WhatsAppPreference,
            InboxKind::WhatsAppTemplateStatus,
            InboxKind::WhatsAppTemplateQuality,
            InboxKind::WhatsAppTemplateCategory,
            InboxKind::WhatsAppOther("messages".into()),
            InboxKind::HubSpotWorkflow(WorkflowTrigger::Nps),
            InboxKind::HubSpotWorkflow(WorkflowTrigger::Milestone),
            InboxKind::HubSpotWorkflow(WorkflowTrigger::Conversion),
            InboxKind::HubSpotWorkflow(WorkflowTrigger::Other("unspecified".into())),
            InboxKind::HubSpotEvent("contact.propertyChange".into()),
            InboxKind::Stripe("checkout.session.completed".into()),
        ];
        for kind in kinds {
            assert_eq!(InboxKind::parse(&kind.name()), Some(kind.clone()), "{}", kind.name());
        }
        assert_eq!(InboxKind::WhatsAppStatus.name(), STATUS_KIND);
        assert_eq!(InboxKind::parse("mailchimp.open"), None);
    }

    #[test]
    fn nul_is_refused_in_keys_and_replaced_in_text() {
        let event = |key: &str, payload: Value| NewInboxEvent {
            source: Source::WhatsApp,
            dedupe_key: key.into(),
            kind: InboxKind::WhatsAppMessage,
            payload: payload.to_string(),
        };
        let mut bad_key = vec![event("message:wamid.\0X", serde_json::json!({}))];
        assert_eq!(clean_nul(&mut bad_key), Err(PayloadError::NulInIdentifier));
        let mut text = vec![event(
            "message:wamid.X",
            serde_json::json!({"message": {"text": {"body": "hi\0there"}, "k\0": ["a\0"]}}),
        )];
        assert_eq!(clean_nul(&mut text), Ok(()));
        assert!(!text[0].payload.contains("\\u0000"), "{}", text[0].payload);
        assert!(text[0].payload.contains("hi\u{FFFD}there"));
        let mut clean = vec![event("message:wamid.Y", serde_json::json!({"a": "b"}))];
        let before = clean[0].payload.clone();
        assert_eq!(clean_nul(&mut clean), Ok(()));
        assert_eq!(clean[0].payload, before);
    }

    fn fixture(path: &str) -> Vec<u8> {
        let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    #[test]
    fn whatsapp_status_and_message_keys() {
        let events = split_whatsapp(&fixture("whatsapp/status_delivered.json")).expect("split");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind.name(), "whatsapp.status");
        assert_eq!(
            events[0].dedupe_key,
            "status:wamid.VEVTVC1SRUZFUkxPT1AtT1VULUlOVklURS0wMDAx:delivered"
        );
        let payload: Value = serde_json::from_str(&events[0].payload).expect("json");
        assert_eq!(payload["metadata"]["phone_number_id"], "100000000000202");

        let events = split_whatsapp(&fixture("whatsapp/text_message.json")).expect("split");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind.name(), "whatsapp.message");
        assert!(events[0].dedupe_key.starts_with("message:wamid."));
    }

    #[test]
    fn whatsapp_batch_is_split_per_item() {
        let body = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [
                {"field": "messages", "value": {
                    "statuses": [{"id": "wamid.A", "status": "sent"}, {"id": "wamid.A", "status": "delivered"}],
                    "messages": [{"id": "wamid.B", "type": "text"}]}},
                {"field": "message_template_status_update", "value": {"event": "APPROVED"}}
            ]}]
        });
        let events = split_whatsapp(body.to_string().as_bytes()).expect("split");
        let keys: Vec<_> = events.iter().map(|e| e.dedupe_key.as_str()).collect();
        assert_eq!(
            keys[..3],
            ["message:wamid.B", "status:wamid.A:sent", "status:wamid.A:delivered"]
        );
        assert!(keys[3].starts_with("message_template_status_update:"));
        assert_eq!(events[3].kind.name(), "whatsapp.message_template_status_update");
    }

    #[test]
    fn whatsapp_user_preferences() {
        let events = split_whatsapp(&fixture("whatsapp/user_preferences_stop.json")).expect("split");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind.name(), "whatsapp.user_preference");
        assert!(events[0].dedupe_key.starts_with("preference:"));
        assert!(events[0].dedupe_key.contains(":stop:"));
    }

    #[test]
    fn whatsapp_rejects_other_shapes() {
        assert!(matches!(split_whatsapp(b"{"), Err(PayloadError::NotJson(_))));
        assert!(matches!(
            split_whatsapp(b"{\"object\":\"page\"}"),
            Err(PayloadError::Unexpected(_))
        ));
        assert!(matches!(
            split_whatsapp(b"{\"object\":\"whatsapp_business_account\"}"),
            Err(PayloadError::Unexpected(_))
        ));
        let empty = split_whatsapp(b"{\"object\":\"whatsapp_business_account\",\"entry\":[]}").expect("ok");
        assert!(empty.is_empty());
    }

    #[test]
    fn hubspot_workflow_keys_for_both_shapes() {
        let trigger = HubSpotTrigger {
            trigger: Some("nps".into()),
            name: None,
        };
        let flat = split_hubspot(&fixture("hubspot/workflow-webhook-custom-body.json"), &trigger).expect("flat");
        assert_eq!(flat[0].dedupe_key, "contact:90001:nps:1767225600000");
        assert_eq!(flat[0].kind.name(), "hubspot.workflow.nps");
        let classic = split_hubspot(
            &fixture("hubspot/workflow-webhook-contact-all-properties.json"),
            &trigger,
        )
        .expect("classic");
        assert!(
            classic[0].dedupe_key.starts_with("contact:90001:nps:"),
            "{}",
            classic[0].dedupe_key
        );

        let milestone = HubSpotTrigger {
            trigger: Some("milestone".into()),
            name: Some("renewal".into()),
        };
        let body = br#"{"hs_object_id":"7","firstname":"Ana"}"#;
        let a = split_hubspot(body, &milestone).expect("milestone");
        let b = split_hubspot(body, &milestone).expect("again");
        assert_eq!(
            a[0].dedupe_key, b[0].dedupe_key,
            "a retry of the same body has the same key"
        );
        assert!(a[0].dedupe_key.starts_with("contact:7:milestone:renewal:sha256:"));
    }

    #[test]
    fn hubspot_deal_and_api_events() {
        let trigger = HubSpotTrigger {
            trigger: Some("conversion".into()),
            name: None,
        };
        let deal =
            split_hubspot(&fixture("hubspot/workflow-webhook-deal-all-properties.json"), &trigger).expect("deal");
        assert!(deal[0].dedupe_key.starts_with("deal:"), "{}", deal[0].dedupe_key);
        let api = split_hubspot(&fixture("hubspot/webhooks-api-contact-propertychange.json"), &trigger).expect("api");
        assert!(!api.is_empty());
        assert!(api.iter().all(|e| e.dedupe_key.starts_with("event:")));
        assert!(api[0].kind.name().starts_with("hubspot.contact."));
    }

    #[test]
    fn hubspot_rejects_records_without_id() {
        let trigger = HubSpotTrigger::default();
        assert!(matches!(
            split_hubspot(b"{\"firstname\":\"A\"}", &trigger),
            Err(PayloadError::Unexpected(_))
        ));
        assert!(matches!(
            split_hubspot(b"42", &trigger),
            Err(PayloadError::Unexpected(_))
        ));
        assert!(matches!(
            split_hubspot(b"nope", &trigger),
            Err(PayloadError::NotJson(_))
        ));
    }

    #[test]
    fn stripe_event_key_is_its_id() {
        let events = split_stripe(&fixture("stripe/event-checkout-session-completed.json")).expect("stripe");
        assert!(events[0].dedupe_key.starts_with("evt_"));
        assert_eq!(events[0].kind.name(), "stripe.checkout.session.completed");
        assert!(matches!(
            split_stripe(b"{\"type\":\"x\"}"),
            Err(PayloadError::Unexpected(_))
        ));
    }
}
