//! `referloop setup whatsapp`: creates the nomination Flow in each configured language
//! from `templates/` (the variant `whatsapp.flow_kind` names, with the language's texts and
//! the business name filled in), uploads its JSON (reporting validation errors) and
//! publishes it; submits each template in each language the account lacks (and reports
//! the status and category Meta gave each); uploads the Flow endpoint's public key and
//! reports its signature status; and subscribes the app to the account's webhooks.

use serde_json::{json, Value};

use super::{Finding, Report};
use crate::config::{FlowKind, Settings};
use crate::domain::ids::path_segment;
use crate::integrations::whatsapp::WhatsAppClient;
use crate::whatsapp::render;

/// The templates, each as (the name configured for it, its file in `templates/`).
fn templates(settings: &Settings) -> [(String, &'static str); 8] {
    let t = &settings.templates;
    [
        (t.invite.clone(), "tmpl_referral_invite"),
        (t.flow.clone(), "tmpl_referral_flow"),
        (t.friend_invite.clone(), "tmpl_referral_friend_invite"),
        (t.thanks.clone(), "tmpl_referral_thanks"),
        (t.reward.clone(), "tmpl_referral_reward"),
        (t.reminder.clone(), "tmpl_referral_reminder"),
        (t.nudge.clone(), "tmpl_referral_nudge"),
        (t.bonus.clone(), "tmpl_referral_bonus"),
    ]
}

/// Every built-in template definition: (file name, language, JSON). The en_US files have
/// no language in their name.
const DEFINITIONS: [(&str, &str, &str); 40] = [
    (
        "tmpl_referral_invite",
        "en_US",
        include_str!("../../templates/tmpl_referral_invite.json"),
    ),
    (
        "tmpl_referral_flow",
        "en_US",
        include_str!("../../templates/tmpl_referral_flow.json"),
    ),
    (
        "tmpl_referral_friend_invite",
        "en_US",
        include_str!("../../templates/tmpl_referral_friend_invite.json"),
    ),
    (
        "tmpl_referral_thanks",
        "en_US",
        include_str!("../../templates/tmpl_referral_thanks.json"),
    ),
    (
        "tmpl_referral_reward",
        "en_US",
        include_str!("../../templates/tmpl_referral_reward.json"),
    ),
    (
        "tmpl_referral_invite",
        "es",
        include_str!("../../templates/tmpl_referral_invite.es.json"),
    ),
    (
        "tmpl_referral_flow",
        "es",
        include_str!("../../templates/tmpl_referral_flow.es.json"),
    ),
    (
        "tmpl_referral_friend_invite",
        "es",
        include_str!("../../templates/tmpl_referral_friend_invite.es.json"),
    ),
    (
        "tmpl_referral_thanks",
        "es",
        include_str!("../../templates/tmpl_referral_thanks.es.json"),
    ),
    (
        "tmpl_referral_reward",
        "es",
        include_str!("../../templates/tmpl_referral_reward.es.json"),
    ),
    (
        "tmpl_referral_invite",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_invite.pt_BR.json"),
    ),
    (
        "tmpl_referral_flow",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_flow.pt_BR.json"),
    ),
    (
        "tmpl_referral_friend_invite",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_friend_invite.pt_BR.json"),
    ),
    (
        "tmpl_referral_thanks",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_thanks.pt_BR.json"),
    ),
    (
        "tmpl_referral_reward",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_reward.pt_BR.json"),
    ),
    (
        "tmpl_referral_invite",
        "fr",
        include_str!("../../templates/tmpl_referral_invite.fr.json"),
    ),
    (
        "tmpl_referral_flow",
        "fr",
        include_str!("../../templates/tmpl_referral_flow.fr.json"),
    ),
    (
        "tmpl_referral_friend_invite",
        "fr",
        include_str!("../../templates/tmpl_referral_friend_invite.fr.json"),
    ),
    (
        "tmpl_referral_thanks",
        "fr",
        include_str!("../../templates/tmpl_referral_thanks.fr.json"),
    ),
    (
        "tmpl_referral_reward",
        "fr",
        include_str!("../../templates/tmpl_referral_reward.fr.json"),
    ),
    (
        "tmpl_referral_invite",
        "de",
        include_str!("../../templates/tmpl_referral_invite.de.json"),
    ),
    (
        "tmpl_referral_flow",
        "de",
        include_str!("../../templates/tmpl_referral_flow.de.json"),
    ),
    (
        "tmpl_referral_friend_invite",
        "de",
        include_str!("../../templates/tmpl_referral_friend_invite.de.json"),
    ),
    (
        "tmpl_referral_thanks",
        "de",
        include_str!("../../templates/tmpl_referral_thanks.de.json"),
    ),
    (
        "tmpl_referral_reward",
        "de",
        include_str!("../../templates/tmpl_referral_reward.de.json"),
    ),
    (
        "tmpl_referral_reminder",
        "en_US",
        include_str!("../../templates/tmpl_referral_reminder.json"),
    ),
    (
        "tmpl_referral_reminder",
        "es",
        include_str!("../../templates/tmpl_referral_reminder.es.json"),
    ),
    (
        "tmpl_referral_reminder",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_reminder.pt_BR.json"),
    ),
    (
        "tmpl_referral_reminder",
        "fr",
        include_str!("../../templates/tmpl_referral_reminder.fr.json"),
    ),
    (
        "tmpl_referral_reminder",
        "de",
        include_str!("../../templates/tmpl_referral_reminder.de.json"),
    ),
    (
        "tmpl_referral_nudge",
        "en_US",
        include_str!("../../templates/tmpl_referral_nudge.json"),
    ),
    (
        "tmpl_referral_nudge",
        "es",
        include_str!("../../templates/tmpl_referral_nudge.es.json"),
    ),
    (
        "tmpl_referral_nudge",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_nudge.pt_BR.json"),
    ),
    (
        "tmpl_referral_nudge",
        "fr",
        include_str!("../../templates/tmpl_referral_nudge.fr.json"),
    ),
    (
        "tmpl_referral_nudge",
        "de",
        include_str!("../../templates/tmpl_referral_nudge.de.json"),
    ),
    (
        "tmpl_referral_bonus",
        "en_US",
        include_str!("../../templates/tmpl_referral_bonus.json"),
    ),
    (
        "tmpl_referral_bonus",
        "es",
        include_str!("../../templates/tmpl_referral_bonus.es.json"),
    ),
    (
        "tmpl_referral_bonus",
        "pt_BR",
        include_str!("../../templates/tmpl_referral_bonus.pt_BR.json"),
    ),
    (
        "tmpl_referral_bonus",
        "fr",
        include_str!("../../templates/tmpl_referral_bonus.fr.json"),
    ),
    (
        "tmpl_referral_bonus",
        "de",
        include_str!("../../templates/tmpl_referral_bonus.de.json"),
    ),
];

fn definition(file: &str, language: &str) -> Option<&'static str> {
    DEFINITIONS
        .iter()
        .find(|(f, l, _)| *f == file && *l == language)
        .map(|(_, _, json)| *json)
}

const STATIC_FLOW_JSON: &str = include_str!("../../templates/flow_referral_nomination.json");
const ENDPOINT_FLOW_JSON: &str = include_str!("../../templates/flow_referral_nomination_endpoint.json");

/// The Flow JSON for a language: the variant `whatsapp.flow_kind` names, with the
/// language's screen texts and the business name filled in.
pub fn flow_json(settings: &Settings, language: &str) -> String {
    let source = match settings.whatsapp.flow_kind {
        FlowKind::Static => STATIC_FLOW_JSON,
        FlowKind::Endpoint => ENDPOINT_FLOW_JSON,
    };
    let texts = &settings.catalogues.get(language).flow;
    let business = settings.whatsapp.business_name.trim();
    texts
        .placeholders()
        .iter()
        .fold(source.to_string(), |json, (key, text)| {
            // The texts go inside JSON strings: escape them as JSON does.
            let quoted = serde_json::to_string(&text.replace("{business_name}", business)).unwrap_or_default();
            let escaped = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or_default();
            json.replace(&format!("{{{{{key}}}}}"), escaped)
        })
}

fn graph_error(body: &Value) -> String {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no detail")
        .to_string()
}

/// A call's answer; `Ok(None)` in sandbox mode (recorded, not sent).
type Answer = Result<Option<(u16, Value)>, String>;

fn ok_body(answer: Answer, what: &str) -> Result<Option<Value>, Finding> {
    match answer {
        Ok(Some((status, body))) if (200..300).contains(&status) => Ok(Some(body)),
        Ok(Some((status, body))) => Err(Finding::Wrong {
            what: format!("{what}: HTTP {status}"),
            fix: format!("{} (the token needs whatsapp_business_management)", graph_error(&body)),
        }),
        Ok(None) => Ok(None),
        Err(e) => Err(Finding::Wrong {
            what: format!("{what}: unreachable"),
            fix: e,
        }),
    }
}

pub async fn setup(client: &WhatsAppClient, settings: &Settings, dry_run: bool) -> Report {
    let mut report = Report::default();
    if settings.whatsapp.waba_id.is_empty() {
        report.findings.push(Finding::Wrong {
            what: "whatsapp.waba_id is not set".into(),
            fix: "set it to the WhatsApp Business Account id (Meta Business Suite → WhatsApp accounts)".into(),
        });
        return report;
    }
    let waba = path_segment(&settings.whatsapp.waba_id);
    // Flows first: a template's FLOW button names its language's Flow.
    for language in &settings.templates.languages {
        report
            .findings
            .push(flow(client, settings, &waba, language, dry_run).await);
    }
    for (name, file) in templates(settings) {
        for language in &settings.templates.languages {
            let finding = template(client, settings, &waba, (&name, file), language, dry_run).await;
            report.findings.push(finding);
        }
    }
    if let Some(finding) = encryption_key(client, settings, dry_run).await {
        report.findings.push(finding);
    }
    report.findings.push(subscription(client, &waba, dry_run).await);
    report
}

async fn template(
    client: &WhatsAppClient,
    settings: &Settings,
    waba: &str,
    (name, file): (&str, &str),
    language: &str,
    dry_run: bool,
) -> Finding {
    let what = format!("template {name} ({language})");
    let path = format!(
        "/{waba}/message_templates?name={}&fields=name,language,status,category,rejected_reason",
        path_segment(name)
    );
    let existing = match ok_body(client.probe(&path).await, &what) {
        Ok(body) => body,
        Err(wrong) => return wrong,
    };
    let found = existing
        .as_ref()
        .and_then(|b| b["data"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .find(|t| t["name"] == name && t["language"] == language);
    let Some(definition) = definition(file, language) else {
        if let Some(found) = found {
            return template_status(&what, &found, "?");
        }
        return Finding::Wrong {
            what: format!("{what}: no definition in this language"),
            fix: "submit a translation (templates/README.md, \"Other languages\") or remove the language from templates.languages".into(),
        };
    };
    let mut body: Value = serde_json::from_str(definition).unwrap_or(Value::Null);
    let submitted_category = body["category"].as_str().unwrap_or("?").to_string();
    if let Some(found) = found {
        return template_status(&what, &found, &submitted_category);
    }
    if let Some(object) = body.as_object_mut() {
        object.remove("_note");
        object.insert("name".into(), json!(name));
        object.insert("language".into(), json!(language));
    }
    // A FLOW button opens its language's Flow; the endpoint Flow asks for its first screen.
    if let Some(components) = body["components"].as_array_mut() {
        for button in components
            .iter_mut()
            // `get_mut`, not indexing: indexing a component without buttons would add
            // `"buttons": null` to it, which Meta's contract refuses.
            .filter_map(|c| c.get_mut("buttons").and_then(Value::as_array_mut))
            .flatten()
        {
            if button["type"] != "FLOW" {
                continue;
            }
            button["flow_name"] = json!(render::flow_name(settings, language));
            if settings.whatsapp.flow_kind == FlowKind::Endpoint {
                button["flow_action"] = json!("data_exchange");
                if let Some(button) = button.as_object_mut() {
                    button.remove("navigate_screen");
                }
            }
        }
    }
    if dry_run {
        return Finding::WouldCreate {
            what,
            call: format!("POST /{waba}/message_templates (templates/{file}.json, {language})"),
        };
    }
    let created = client
        .manage(
            reqwest::Method::POST,
            &format!("/{waba}/message_templates"),
            Some(("application/json", body.to_string())),
        )
        .await;
    match ok_body(created, &what) {
        Ok(Some(answer)) => Finding::Created(format!(
            "{what}: submitted, {} as {}",
            answer["status"].as_str().unwrap_or("PENDING"),
            answer["category"].as_str().unwrap_or(&submitted_category)
        )),
        Ok(None) => Finding::Recorded(what),
        Err(wrong) => wrong,
    }
}

fn template_status(what: &str, found: &Value, submitted: &str) -> Finding {
    let status = found["status"].as_str().unwrap_or("UNKNOWN");
    let category = found["category"].as_str().unwrap_or("?");
    let recategorised = if category == submitted {
        String::new()
    } else {
        format!(" (submitted as {submitted}, Meta assigned {category})")
    };
    match status {
        "APPROVED" => Finding::Present(format!("{what}: approved, {category}{recategorised}")),
        "PENDING" => Finding::Present(format!("{what}: pending review{recategorised}")),
        other => Finding::Wrong {
            what: format!(
                "{what}: {other}, {}",
                found["rejected_reason"].as_str().unwrap_or("no reason given")
            ),
            fix: "edit it in WhatsApp Manager (or fix templates/ and submit it under a new name)".into(),
        },
    }
}

async fn flow(client: &WhatsAppClient, settings: &Settings, waba: &str, language: &str, dry_run: bool) -> Finding {
    let name = &render::flow_name(settings, language);
    let what = format!("Flow {name} ({language})");
    let listed = match ok_body(client.probe(&format!("/{waba}/flows")).await, &what) {
        Ok(body) => body,
        Err(wrong) => return wrong,
    };
    let existing = listed
        .as_ref()
        .and_then(|b| b["data"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .find(|f| f["name"] == name.as_str());
    if let Some(existing) = existing {
        let id = existing["id"].as_str().unwrap_or("?");
        return match existing["status"].as_str().unwrap_or("UNKNOWN") {
            "PUBLISHED" => Finding::Present(format!("{what}: published, id {id}")),
            status => Finding::Wrong {
                what: format!("{what}: {status}, id {id}"),
                fix: format!("fix its validation errors and publish it (POST /{id}/publish)"),
            },
        };
    }
    let business = settings.whatsapp.business_name.trim();
    if business.is_empty() {
        return Finding::Wrong {
            what: format!("{what}: missing, and whatsapp.business_name is not set"),
            fix: "set whatsapp.business_name (the Flow's consent line names the business), then run setup again".into(),
        };
    }
    if dry_run {
        return Finding::WouldCreate {
            what,
            call: format!("POST /{waba}/flows, POST /<id>/assets (Flow JSON), POST /<id>/publish"),
        };
    }
    // Form fields, as Meta's OpenAPI document describes the call (`categories` a JSON
    // array in a string).
    let endpoint = (settings.whatsapp.flow_kind == FlowKind::Endpoint).then(|| endpoint_uri(settings));
    let mut fields = vec![
        FormPart::field("name", name),
        FormPart::field("categories", r#"["OTHER"]"#),
    ];
    if let Some(uri) = &endpoint {
        fields.push(FormPart::field("endpoint_uri", uri));
    }
    let (form_type, form) = multipart(&fields);
    let created = client
        .manage(
            reqwest::Method::POST,
            &format!("/{waba}/flows"),
            Some((&form_type, form)),
        )
        .await;
    let id = match ok_body(created, &what) {
        Ok(Some(body)) => body["id"].as_str().unwrap_or_default().to_string(),
        Ok(None) => return Finding::Recorded(format!("{what} (create, upload the JSON, publish)")),
        Err(wrong) => return wrong,
    };
    let flow_json = flow_json(settings, language);
    let (form_type, form) = multipart(&[
        FormPart::file("file", "flow.json", "application/json", &flow_json),
        FormPart::field("name", "flow.json"),
        FormPart::field("asset_type", "FLOW_JSON"),
    ]);
    let uploaded = client
        .manage(
            reqwest::Method::POST,
            &format!("/{}/assets", path_segment(&id)),
            Some((&form_type, form)),
        )
        .await;
    let errors = match ok_body(uploaded, &what) {
        Ok(body) => body
            .and_then(|b| b["validation_errors"].as_array().cloned())
            .unwrap_or_default(),
        Err(wrong) => return wrong,
    };
    if !errors.is_empty() {
        let listed: Vec<String> = errors
            .iter()
            .map(|e| format!("{} (line {})", e["message"].as_str().unwrap_or("?"), e["line_start"]))
            .collect();
        return Finding::Wrong {
            what: format!(
                "{what}: created as id {id}, but its JSON has validation errors: {}",
                listed.join("; ")
            ),
            fix: "fix the Flow JSON in templates/ (or the [flow] texts of the language's catalogue) and run setup again; it is not published".into(),
        };
    }
    let published = client
        .manage(reqwest::Method::POST, &format!("/{}/publish", path_segment(&id)), None)
        .await;
    let default_language = language == settings.templates.default_language;
    match ok_body(published, &what) {
        Ok(_) if default_language => {
            Finding::Created(format!("{what}: published, id {id} — set templates.flow_id = \"{id}\""))
        }
        Ok(_) => Finding::Created(format!("{what}: published, id {id} (sent by name)")),
        Err(wrong) => wrong,
    }
}

/// Where Meta calls the endpoint Flow.
pub fn endpoint_uri(settings: &Settings) -> String {
    settings
        .server
        .public_base_url
        .join(&settings.whatsapp.flow_endpoint_path)
}

/// Uploads the endpoint's public key to the phone number (with the endpoint Flow only)
/// and reports Meta's signature status.
async fn encryption_key(client: &WhatsAppClient, settings: &Settings, dry_run: bool) -> Option<Finding> {
    let what = "Flow endpoint public key".to_string();
    // Meta holds one key per number: only the endpoint Flow may replace it.
    if settings.whatsapp.flow_kind == FlowKind::Static {
        return None;
    }
    let key = match crate::whatsapp::flow_crypto::configured_key(settings) {
        Ok(Some(key)) => key,
        Ok(None) => {
            return Some(Finding::Wrong {
                what: format!("{what}: no private key configured"),
                fix: "run `referloop flow keygen`, set whatsapp.flow_private_key_file (or the secret whatsapp.flow_private_key), then run setup again".into(),
            })
        }
        Err(problem) => {
            return Some(Finding::Wrong {
                what: format!("{what}: {problem}"),
                fix: "see README.md, \"The Flow endpoint\"".into(),
            })
        }
    };
    let number = path_segment(&settings.whatsapp.phone_number_id);
    let path = format!("/{number}/whatsapp_business_encryption");
    let current = match ok_body(client.probe(&path).await, &what) {
        Ok(body) => body,
        Err(wrong) => return Some(wrong),
    };
    let registered = current.as_ref().and_then(|b| b["data"].get(0).cloned());
    let same_key = registered.as_ref().is_some_and(|r| {
        r["business_public_key"].as_str().map(normalise_pem) == Some(normalise_pem(key.public_key_pem()))
    });
    if same_key {
        return Some(signature_status(&what, registered.as_ref()));
    }
    if dry_run {
        return Some(Finding::WouldCreate {
            what,
            call: format!("POST {path} (business_public_key)"),
        });
    }
    let (form_type, form) = multipart(&[FormPart::field("business_public_key", key.public_key_pem())]);
    let uploaded = client
        .manage(reqwest::Method::POST, &path, Some((&form_type, form)))
        .await;
    match ok_body(uploaded, &what) {
        Ok(None) => return Some(Finding::Recorded(format!("{what}: uploaded"))),
        Ok(Some(_)) => {}
        Err(wrong) => return Some(wrong),
    }
    let after = ok_body(client.probe(&path).await, &what).ok().flatten();
    match signature_status(&what, after.as_ref().and_then(|b| b["data"].get(0))) {
        Finding::Present(line) => Some(Finding::Created(line.replace(": signed", ": uploaded and signed"))),
        other => Some(other),
    }
}

/// One part of a `multipart/form-data` body: a field, or a file with its name and type.
struct FormPart<'a> {
    name: &'a str,
    file: Option<(&'a str, &'a str)>,
    value: &'a str,
}

impl<'a> FormPart<'a> {
    fn field(name: &'a str, value: &'a str) -> Self {
        FormPart {
            name,
            file: None,
            value,
        }
    }

    fn file(name: &'a str, filename: &'a str, content_type: &'a str, value: &'a str) -> Self {
        FormPart {
            name,
            file: Some((filename, content_type)),
            value,
        }
    }
}

/// A `multipart/form-data` body and its content type (the Graph calls Meta documents as
/// forms: creating a Flow, uploading its JSON, registering the encryption key). The
/// boundary is one no part can hold: the parts are our own names, a PEM key and our Flow
/// JSON.
fn multipart(parts: &[FormPart]) -> (String, String) {
    const BOUNDARY: &str = "referloop-form-7c1d0e";
    let mut body = String::new();
    for part in parts {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{}\"",
            part.name
        ));
        match part.file {
            Some((filename, content_type)) => body.push_str(&format!(
                "; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )),
            None => body.push_str("\r\n\r\n"),
        }
        body.push_str(part.value);
        body.push_str("\r\n");
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

fn normalise_pem(pem: &str) -> String {
    pem.split_whitespace().collect()
}

/// Meta signs the uploaded key with the phone number's identity; until it is VALID the
/// client will not encrypt to it.
fn signature_status(what: &str, registered: Option<&Value>) -> Finding {
    let status = registered
        .and_then(|r| r["business_public_key_signature_status"].as_str())
        .unwrap_or("UNKNOWN");
    match status {
        "VALID" => Finding::Present(format!("{what}: signed (VALID)")),
        other => Finding::Wrong {
            what: format!("{what}: signature status {other}"),
            fix: "upload the key again after the number is registered (`referloop setup whatsapp`); Meta signs it with the number's identity".into(),
        },
    }
}

async fn subscription(client: &WhatsAppClient, waba: &str, dry_run: bool) -> Finding {
    let what = "webhook subscription of the app to the account".to_string();
    let listed = match ok_body(client.probe(&format!("/{waba}/subscribed_apps")).await, &what) {
        Ok(body) => body,
        Err(wrong) => return wrong,
    };
    if listed
        .as_ref()
        .is_some_and(|b| b["data"].as_array().is_some_and(|d| !d.is_empty()))
    {
        return Finding::Present(what);
    }
    if dry_run {
        return Finding::WouldCreate {
            what,
            call: format!("POST /{waba}/subscribed_apps"),
        };
    }
    let subscribed = client
        .manage(reqwest::Method::POST, &format!("/{waba}/subscribed_apps"), None)
        .await;
    match ok_body(subscribed, &what) {
        Ok(_) => Finding::Created(what),
        Err(wrong) => wrong,
    }
}
