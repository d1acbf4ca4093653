//! Meta's published contract as the oracle for the Graph API calls referloop makes.
//!
//! `tests/contracts/meta-business-messaging-api_v23.0.yaml` is Meta's OpenAPI 3.1
//! description of the WhatsApp Business Messaging API (facebook/openapi, MIT licence). It is
//! loaded once per test binary; every request the Graph fakes of [`crate::fakes::Lifecycle`]
//! receive is matched to the document's operation by method and path template, and its
//! JSON body is validated against that operation's request schema (JSON Schema 2020-12).
//! A request that does not conform is answered 400 with Meta's error shape naming the
//! offending field, and recorded, so the test that made it fails on shutdown.
//!
//! # Readings and exceptions
//!
//! The document is read as it is meant, and departs from Meta's prose documentation in a
//! few places; each departure is applied here, in [`READINGS`] and [`EXCEPTIONS`], with
//! its reason, and README "Contracts" lists them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Duration;

use referloop::domain::inbox::InboxKind;
use referloop::domain::referral::ReferralState;
use referloop::domain::state::InviteState;
use referloop::domain::work::ItemKind;
use referloop::store::{Backend, NewInvite, NewReferral, Queue, QueueState, ReferralInsert};
use serde_json::{json, Map, Value};
use wiremock::{Match, Request};

use crate::helpers::{e164, eventually, set_env, TestApp};

const DOCUMENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/contracts/meta-business-messaging-api_v23.0.yaml"
);

/// How the document's constructions are read (applied to every schema).
pub const READINGS: [&str; 2] = [
    "`additionalProperties: false` inside one branch of an `allOf` is read as \
     `unevaluatedProperties: false` on the whole `allOf` (a closed composition); read \
     literally it would refuse the sibling branch's fields, so no valid message would pass.",
    "A `discriminator` selects the schema its mapping names for the value found: a \
     `oneOf` becomes that choice, and a base schema with a mapping (a template component, a \
     button parameter) is also checked against the named schema, without its base again.",
];

/// Where Meta's documentation and the document disagree, the documentation wins:
/// (JSON pointer into `components/schemas`, the change, why).
pub const EXCEPTIONS: [(&str, &str, &str); 9] = [
    (
        "/BaseMessageProperties/properties/biz_opaque_callback_data",
        "added: string of at most 512 characters",
        "documented for message sends and echoed in status webhooks; referloop keys its \
         statuses by it; missing from the v23.0 schemas",
    ),
    (
        "/BaseMessageProperties/required",
        "`recipient_type` not required",
        "documented as optional, default `individual`",
    ),
    (
        "/TemplateComponent/properties/index/pattern (and ButtonComponent's)",
        "`^[0-9]$` instead of `^[2-6, 11-14]$`",
        "the description says position 0-9 and every example, Meta's own included, uses \
         \"0\", which the published pattern (a character class) refuses",
    ),
    (
        "/TemplateComponent/properties/sub_type/enum (and ButtonComponent's)",
        "adds `copy_code` and `flow`",
        "documented button types of template messages (a coupon-code button, a Flow button)",
    ),
    (
        "/ButtonParameterObject/properties/type/enum",
        "adds `coupon_code` and `action`",
        "the documented parameters of copy-code and Flow buttons",
    ),
    (
        "/IncomingMessage",
        "an object with `from`, `id`, `timestamp` and `type`",
        "its discriminator names the send schemas (`TextMessage`, `ImageMessage`, …: the \
         document defines each name once, for sends), so no inbound message, Meta's \
         examples included, could pass",
    ),
    (
        "/SystemMessage",
        "an object with `timestamp` and `type` `system`",
        "it extends the send schemas' base (requiring `messaging_product` and \
         `recipient_type` on an inbound message); Meta's example has neither",
    ),
    (
        "/GroupValue/properties/groups/items",
        "any object",
        "Meta's group examples send timestamps as strings and participants' ids as numbers, \
         against the schema; referloop records group updates and acts on none",
    ),
    (
        "/Change/properties/field/enum",
        "adds `group_participants_update`",
        "the field name of Meta's example (the enum says `group_participant_update`)",
    ),
];

/// One operation of the document.
struct Operation {
    method: String,
    /// Path template segments; `None` for a `{parameter}`.
    segments: Vec<Option<String>>,
    id: String,
    /// The request bodies it documents, by media type.
    bodies: Vec<RequestBody>,
    /// `requestBody.required`: without it, a request may carry no body at all.
    body_required: bool,
}

/// A documented request body of one media type.
struct RequestBody {
    /// `application/json`, `multipart/form-data`, `application/x-www-form-urlencoded`.
    media: String,
    /// Where its schema is.
    pointer: String,
    /// Compiled on first use.
    validator: OnceLock<jsonschema::Validator>,
}

/// The fields of a form body (`multipart/form-data` or urlencoded) as a JSON object of
/// strings, as a form's schema describes them (a file part's value is its content).
pub fn form_fields(content_type: &str, body: &[u8]) -> Option<Map<String, Value>> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let mut fields = Map::new();
    match media {
        "application/x-www-form-urlencoded" => {
            for (name, value) in url::form_urlencoded::parse(body) {
                fields.insert(name.into_owned(), Value::String(value.into_owned()));
            }
        }
        "multipart/form-data" => {
            let boundary = content_type
                .split(';')
                .find_map(|p| p.trim().strip_prefix("boundary="))?
                .trim_matches('"');
            let text = std::str::from_utf8(body).ok()?;
            let delimiter = format!("--{boundary}");
            let mut sections = text.split(delimiter.as_str());
            // Before the first delimiter: the preamble (empty); after the last: `--`.
            sections.next()?;
            for section in sections {
                if section.starts_with("--") {
                    break;
                }
                let section = section.strip_prefix("\r\n")?.strip_suffix("\r\n")?;
                let (headers, value) = section.split_once("\r\n\r\n")?;
                let disposition = headers
                    .split("\r\n")
                    .find(|h| h.to_ascii_lowercase().starts_with("content-disposition: form-data"))?;
                let name = disposition
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("name="))?
                    .trim_matches('"');
                fields.insert(name.to_string(), Value::String(value.to_string()));
            }
        }
        _ => return None,
    }
    Some(fields)
}

pub struct Contract {
    document: Value,
    operations: Vec<Operation>,
    /// `WebhookPayload`, compiled on first use.
    webhook: OnceLock<jsonschema::Validator>,
}

static META: OnceLock<Contract> = OnceLock::new();

impl Contract {
    /// Meta's contract, loaded and compiled once.
    pub fn meta() -> &'static Contract {
        META.get_or_init(|| {
            let text = std::fs::read_to_string(DOCUMENT).unwrap_or_else(|e| panic!("{DOCUMENT}: {e}"));
            let mut document: Value = serde_yaml_ng::from_str(&text).expect("Meta's OpenAPI document is YAML");
            apply_exceptions(&mut document);
            read_constructions(&mut document);
            Contract::compile(document)
        })
    }

    fn compile(document: Value) -> Contract {
        let mut operations = Vec::new();
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        for (template, item) in &paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                let Some(id) = op["operationId"].as_str() else { continue };
                // A JSON pointer in a URI fragment: `~` and `/` escaped, braces
                // percent-encoded.
                let escaped = |segment: &str| {
                    segment
                        .replace('~', "~0")
                        .replace('/', "~1")
                        .replace('{', "%7B")
                        .replace('}', "%7D")
                };
                let bodies = op["requestBody"]["content"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, content)| content["schema"].is_object())
                    .map(|(media, _)| RequestBody {
                        media: media.clone(),
                        pointer: format!(
                            "#/paths/{}/{method}/requestBody/content/{}/schema",
                            escaped(template),
                            escaped(media)
                        ),
                        validator: OnceLock::new(),
                    })
                    .collect();
                let segments = template
                    .split('/')
                    .skip(1)
                    .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                    .collect();
                operations.push(Operation {
                    method: method.to_uppercase(),
                    segments,
                    id: id.to_string(),
                    bodies,
                    body_required: op["requestBody"]["required"] == true,
                });
            }
        }
        Contract {
            document,
            operations,
            webhook: OnceLock::new(),
        }
    }

    /// Meta's example webhook payloads (of `POST /whatsapp/webhooks`), by name.
    pub fn webhook_examples(&self) -> Vec<(String, Value)> {
        let examples = &self.document["paths"]["/whatsapp/webhooks"]["post"]["requestBody"]["content"]
            ["application/json"]["examples"];
        examples
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, example)| (name.clone(), example["value"].clone()))
            .collect()
    }

    /// Checks a webhook payload as if from Meta against `WebhookPayload`. Changes of a
    /// field the document does not describe (`user_preferences`, the template updates:
    /// documented elsewhere) are checked for the envelope only.
    pub fn check_webhook(&self, payload: &Value) -> Result<(), String> {
        let validator = self
            .webhook
            .get_or_init(|| self.compile_at("#/components/schemas/WebhookPayload", "WebhookPayload"));
        let described = &self.document["components"]["schemas"]["Change"]["properties"]["field"]["enum"];
        let described = described.as_array().cloned().unwrap_or_default();
        let mut payload = payload.clone();
        for entry in payload["entry"].as_array_mut().into_iter().flatten() {
            if let Some(changes) = entry["changes"].as_array_mut() {
                changes.retain(|change| described.contains(&change["field"]));
            }
        }
        let errors: Vec<String> = validator
            .iter_errors(&payload)
            .map(|e| format!("{} at `{}`", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("WebhookPayload: {}", errors.join("; ")))
        }
    }

    fn compile_at(&self, pointer: &str, what: &str) -> jsonschema::Validator {
        let mut root = self.document.clone();
        root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        root["$ref"] = json!(pointer);
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}"))
    }

    /// A request body's validator: the whole document as the root (so that its
    /// references resolve), entered at the body's schema.
    fn validator<'a>(&self, op: &Operation, body: &'a RequestBody) -> &'a jsonschema::Validator {
        body.validator
            .get_or_init(|| self.compile_at(&body.pointer, &format!("{} ({})", op.id, body.media)))
    }

    /// The operation a request targets: the template with the most literal segments
    /// among those that match.
    fn operation(&self, method: &str, path: &str) -> Option<&Operation> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        self.operations
            .iter()
            .filter(|op| op.method == method && op.segments.len() == parts.len())
            .filter(|op| {
                op.segments
                    .iter()
                    .zip(&parts)
                    .all(|(s, p)| s.as_deref().is_none_or(|literal| literal == *p))
            })
            .max_by_key(|op| op.segments.iter().filter(|s| s.is_some()).count())
    }

    /// Checks one request: the operation's id when it conforms, else what is wrong
    /// (each error with the path of the offending field).
    pub fn check(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
        let Some(op) = self.operation(method, path) else {
            return Err(format!("no operation in Meta's document for {method} {path}"));
        };
        if op.bodies.is_empty() || (body.is_empty() && !op.body_required) {
            return Ok(op.id.clone());
        }
        let media = content_type.unwrap_or("").split(';').next().unwrap_or("").trim();
        let Some(documented) = op.bodies.iter().find(|b| b.media == media) else {
            let allowed: Vec<&str> = op.bodies.iter().map(|b| b.media.as_str()).collect();
            return Err(format!(
                "{}: content type {content_type:?}; the document takes {}",
                op.id,
                allowed.join(" or ")
            ));
        };
        let body: Value = if media == "application/json" {
            serde_json::from_slice(body).map_err(|e| format!("{}: the body is not JSON: {e}", op.id))?
        } else {
            Value::Object(
                form_fields(content_type.unwrap_or(""), body)
                    .ok_or_else(|| format!("{}: the body is not a well-formed {media}", op.id))?,
            )
        };
        let validator = self.validator(op, documented);
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at `{}`", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(op.id.clone())
        } else {
            Err(format!("{}: {}", op.id, errors.join("; ")))
        }
    }
}

fn schema_mut<'a>(document: &'a mut Value, name: &str) -> &'a mut Value {
    &mut document["components"]["schemas"][name]
}

fn apply_exceptions(document: &mut Value) {
    let base = schema_mut(document, "BaseMessageProperties");
    base["properties"]["biz_opaque_callback_data"] = json!({"type": "string", "maxLength": 512});
    if let Some(required) = base["required"].as_array_mut() {
        required.retain(|r| r != "recipient_type");
    }
    let component = schema_mut(document, "TemplateComponent");
    component["properties"]["index"]["pattern"] = json!("^[0-9]$");
    if let Some(kinds) = component["properties"]["sub_type"]["enum"].as_array_mut() {
        kinds.extend([json!("copy_code"), json!("flow")]);
    }
    for branch in schema_mut(document, "ButtonComponent")["allOf"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if branch["properties"]["index"].is_object() {
            branch["properties"]["index"]["pattern"] = json!("^[0-9]$");
        }
        if let Some(kinds) = branch["properties"]["sub_type"]["enum"].as_array_mut() {
            kinds.extend([json!("copy_code"), json!("flow")]);
        }
    }
    if let Some(kinds) = schema_mut(document, "ButtonParameterObject")["properties"]["type"]["enum"].as_array_mut() {
        kinds.extend([json!("coupon_code"), json!("action")]);
    }
    *schema_mut(document, "IncomingMessage") =
        json!({"type": "object", "required": ["from", "id", "timestamp", "type"]});
    *schema_mut(document, "SystemMessage") = json!({"type": "object", "required": ["timestamp", "type"],
                                                   "properties": {"type": {"const": "system"}}});
    schema_mut(document, "GroupValue")["properties"]["groups"]["items"] = json!({"type": "object"});
    if let Some(fields) = schema_mut(document, "Change")["properties"]["field"]["enum"].as_array_mut() {
        fields.push(json!("group_participants_update"));
    }
}

/// Applies [`READINGS`] to every schema under `components/schemas`.
fn read_constructions(document: &mut Value) {
    let schemas = document["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let Some(target) = document["components"]["schemas"].as_object_mut() else {
        return;
    };
    for (name, schema) in target.iter_mut() {
        close_compositions(schema);
        resolve_discriminator(name, schema, &schemas);
    }
}

fn close_compositions(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let mut closed = false;
            if let Some(Value::Array(branches)) = map.get_mut("allOf") {
                for branch in branches.iter_mut() {
                    if let Some(b) = branch.as_object_mut() {
                        if b.get("additionalProperties") == Some(&Value::Bool(false)) {
                            b.remove("additionalProperties");
                            closed = true;
                        }
                    }
                }
            }
            if closed {
                map.insert("unevaluatedProperties".into(), Value::Bool(false));
            }
            for value in map.values_mut() {
                close_compositions(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_compositions),
        _ => {}
    }
}

fn resolve_discriminator(name: &str, schema: &mut Value, schemas: &Map<String, Value>) {
    let Some(discriminator) = schema.get("discriminator").cloned() else {
        return;
    };
    let (Some(property), Some(mapping)) = (
        discriminator["propertyName"].as_str(),
        discriminator["mapping"].as_object(),
    ) else {
        return;
    };
    let base_ref = format!("#/components/schemas/{name}");
    let mut choices = Vec::new();
    for (value, target) in mapping {
        let Some(target_name) = target.as_str().and_then(|t| t.strip_prefix("#/components/schemas/")) else {
            continue;
        };
        // The named schema, without a branch that refers back to this base.
        let mut chosen = schemas.get(target_name).cloned().unwrap_or(Value::Null);
        if let Some(branches) = chosen.get_mut("allOf").and_then(Value::as_array_mut) {
            branches.retain(|b| b["$ref"] != base_ref.as_str());
        }
        close_compositions(&mut chosen);
        choices.push(json!({
            "if": {"properties": {property: {"const": value}}, "required": [property]},
            "then": chosen,
        }));
    }
    if let Some(map) = schema.as_object_mut() {
        map.remove("discriminator");
        if map.remove("oneOf").is_some() {
            let values: Vec<&String> = mapping.keys().collect();
            map.insert("required".into(), json!([property]));
            map.insert("properties".into(), json!({property: {"enum": values}}));
        }
        let mut all = map
            .remove("allOf")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default();
        all.extend(choices);
        map.insert("allOf".into(), Value::Array(all));
    }
}

/// A wiremock matcher that checks every request against Meta's contract: it matches
/// (so its mock answers 400) only a request that does not conform, and keeps the count
/// of checked requests and the violations for the test's end.
#[derive(Clone, Default)]
pub struct MetaContract {
    checked: Arc<AtomicUsize>,
    operations: Arc<Mutex<HashMap<String, usize>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl MetaContract {
    pub fn checked(&self) -> usize {
        self.checked.load(Ordering::SeqCst)
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Operations checked, with how many times each.
    pub fn operations(&self) -> Vec<(String, usize)> {
        let mut ops: Vec<_> = self
            .operations
            .lock()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        ops.sort();
        ops
    }

    /// Fails the test when any request broke the contract; prints the count, and adds it
    /// to the suite's tally (`scripts/test` prints the total).
    pub fn assert_kept(&self, what: &str) {
        let violations = self.violations();
        let tally = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("meta-contract-checks.tsv");
        let line = format!("{}\t{}\t{what}\n", self.checked(), violations.len());
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(&tally) {
            use std::io::Write;
            let _ = file.write_all(line.as_bytes());
        }
        println!(
            "Meta contract: {} Graph calls checked in {what} ({:?}), {} off contract",
            self.checked(),
            self.operations(),
            violations.len()
        );
        assert!(
            violations.is_empty(),
            "Graph calls off Meta's contract: {violations:#?}"
        );
    }
}

impl Match for MetaContract {
    fn matches(&self, request: &Request) -> bool {
        let content_type = request.headers.get("content-type").and_then(|v| v.to_str().ok());
        let method = request.method.as_str();
        let verdict = Contract::meta().check(method, request.url.path(), content_type, &request.body);
        self.checked.fetch_add(1, Ordering::SeqCst);
        match verdict {
            Ok(op) => {
                if let Ok(mut ops) = self.operations.lock() {
                    *ops.entry(op).or_default() += 1;
                }
                false
            }
            Err(violation) => {
                if let Ok(mut all) = self.violations.lock() {
                    all.push(violation);
                }
                true
            }
        }
    }
}

/// Checks every request `server` (a fake of the Graph API) received against Meta's
/// contract, after the fact, and adds them to the suite's tally; fails on any off it.
pub async fn assert_requests_on_contract(server: &wiremock::MockServer, what: &str) {
    let contract = MetaContract::default();
    for request in server.received_requests().await.unwrap_or_default() {
        let _ = contract.matches(&request);
    }
    contract.assert_kept(what);
}

#[test]
fn the_checker_refuses_what_meta_would() {
    let contract = Contract::meta();
    let path = "/v24.0/100000000000202/messages";
    let send = |body: Value| contract.check("POST", path, Some("application/json"), body.to_string().as_bytes());
    let template = |index: Value, language: Value| {
        json!({"messaging_product": "whatsapp", "to": "447911123456", "type": "template",
               "biz_opaque_callback_data": "invite:1",
               "template": {"name": "tmpl_referral_invite", "language": language,
                            "components": [{"type": "button", "sub_type": "quick_reply", "index": index,
                                            "parameters": [{"type": "payload", "payload": "refer:1"}]}]}})
    };
    let deterministic = json!({"policy": "deterministic", "code": "en"});
    assert_eq!(
        send(template(json!("0"), deterministic.clone())),
        Ok("sendMessage".to_string())
    );
    let numeric = send(template(json!(0), deterministic)).expect_err("a numeric index");
    assert!(numeric.contains("/template/components/0/index"), "{numeric}");
    let no_policy = send(template(json!("0"), json!({"code": "en"}))).expect_err("no policy");
    assert!(no_policy.contains("policy"), "{no_policy}");
    let text = json!({"messaging_product": "whatsapp", "to": "447911123456", "type": "text",
                      "text": {"body": "hi", "preview_url": false}});
    assert_eq!(send(text.clone()), Ok("sendMessage".to_string()));
    let mut stray = text;
    stray["text"]["colour"] = json!("red");
    assert!(
        send(stray).is_err(),
        "a closed composition refuses a field it does not name"
    );
    assert!(contract.check("POST", "/v24.0/1/nowhere", None, b"{}").is_err());
    // Forms: Meta documents creating a Flow as multipart/form-data only.
    let flows = "/v24.0/100000000000303/flows";
    let as_json = contract.check(
        "POST",
        flows,
        Some("application/json"),
        br#"{"name":"x","categories":["OTHER"]}"#,
    );
    assert!(as_json.is_err_and(|e| e.contains("multipart/form-data")));
    let form = "--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nreferral\r\n\
                --b\r\nContent-Disposition: form-data; name=\"categories\"\r\n\r\n[\"OTHER\"]\r\n--b--\r\n";
    assert_eq!(
        contract.check("POST", flows, Some("multipart/form-data; boundary=b"), form.as_bytes()),
        Ok("createFlow".to_string())
    );
    let fields = form_fields("multipart/form-data; boundary=b", form.as_bytes()).expect("a form");
    assert_eq!(fields["categories"], json!("[\"OTHER\"]"));
    let torn = contract.check(
        "POST",
        flows,
        Some("multipart/form-data; boundary=b"),
        b"--b\r\nno headers",
    );
    assert!(torn.is_err(), "a torn form is refused");
}

#[test]
fn the_readme_names_every_reading_and_exception() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    for (where_, _, _) in EXCEPTIONS {
        assert!(
            readme.contains(where_),
            "README.md does not list the exception at {where_}"
        );
    }
    for (reading, phrase) in READINGS.iter().zip(["unevaluatedProperties: false", "discriminator"]) {
        assert!(
            reading.contains(phrase) && readme.contains(phrase),
            "README.md does not state: {reading}"
        );
    }
}

/// Meta's own example webhooks, all of them, are valid against the document (the
/// checker's inbound half), accepted by the signed route, and handled by the worker on
/// each store without an error: every event they store ends done.
/// The number every Meta example message comes from.
const EXAMPLE_SENDER: &str = "+16505551234";

/// Makes Meta's example sender a known contact: the friend of a referral awaiting them
/// (a share link), for a business whose templates carry an "Unsubscribe" quick reply.
/// Returns the referral.
async fn known_example_sender(app: &TestApp) -> i64 {
    let mut tx = app.store.begin(None).await.expect("begin");
    let invite = tx
        .insert_invite(&NewInvite {
            trigger_key: "example:1".into(),
            contact_id: "501".into(),
            trigger: referloop::domain::eligibility::TriggerKind::Nps,
            phone: Some(e164("+447911123456")),
            first_name: "Ana".into(),
            language: "en_US".into(),
            referral_code: Some("ANA12345".into()),
            state: InviteState::Nominated,
            reason: None,
        })
        .await
        .expect("invite");
    let referral = NewReferral {
        invite_id: invite.id,
        flow_token: "token-example".into(),
        referrer_contact_id: invite.contact_id.clone(),
        referrer_phone: Some(e164("+447911123456")),
        referrer_name: "Ana".into(),
        referral_code: "ANA12345".into(),
        friend_phone: Some(e164(EXAMPLE_SENDER)),
        friend_name: "Sam".into(),
        personal_message: None,
        consent: false,
        language: "en_US".into(),
    };
    let ReferralInsert::Created(id) = tx.insert_referral(&referral).await.expect("referral") else {
        panic!("referral not created");
    };
    tx.move_referral(id, ReferralState::Nominated, ReferralState::AwaitingFriend, None)
        .await
        .expect("awaiting the friend");
    tx.commit("").await.expect("commit");
    id
}

async fn metas_webhook_examples_are_accepted_and_handled(backend: Backend) {
    let contract = Contract::meta();
    let examples = contract.webhook_examples();
    assert_eq!(examples.len(), 16, "Meta's document holds 16 example webhooks");
    let app = TestApp::spawn_with(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__STOP_BUTTON_PAYLOADS", "stop,Unsubscribe")
    })
    .await;
    let referral = known_example_sender(&app).await;
    for (name, payload) in &examples {
        contract
            .check_webhook(payload)
            .unwrap_or_else(|e| panic!("Meta's example {name:?} is off its own schema: {e}"));
        let answer = app.post_signed_whatsapp(payload.to_string().into_bytes()).await;
        assert_eq!(answer, 200, "Meta's example {name:?} was refused");
    }
    let store = app.store.clone();
    let settled = eventually(Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            store
                .list(Queue::Inbox, None, 100)
                .await
                .is_ok_and(|items| !items.is_empty() && items.iter().all(|i| i.state == QueueState::Done))
        }
    })
    .await;
    let items = app.store.list(Queue::Inbox, None, 100).await.expect("inbox");
    assert!(settled, "every stored event ends done: {items:#?}");
    // One event per distinct message (Meta's examples reuse some message ids, and a
    // redelivered id is the same event).
    let mut ids: Vec<String> = examples
        .iter()
        .flat_map(|(_, payload)| {
            payload["entry"][0]["changes"][0]["value"]["messages"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let messages = items
        .iter()
        .filter(|i| i.kind == ItemKind::Event(InboxKind::WhatsAppMessage))
        .count();
    assert_eq!(messages, ids.len(), "{items:#?}");
    // Their effects on a known contact: the texts bring the awaited friend in, and the
    // "Unsubscribe" tap opts the number out (whichever the worker took first).
    let friend = app.store.referral(referral).await.expect("read").expect("referral");
    assert_eq!(friend.state, ReferralState::FriendInvited, "{items:#?}");
    assert!(
        app.store.is_opted_out(&e164(EXAMPLE_SENDER)).await.expect("read"),
        "the Unsubscribe button opts out: {items:#?}"
    );
    app.shutdown().await;
}

crate::both_backends!(metas_webhook_examples_are_accepted_and_handled);
