//! `referloop setup whatsapp`: submits each template in `templates/` the account lacks
//! (and reports the status and category Meta gave each), creates the nomination Flow from
//! `templates/` with the business name filled in, uploads its JSON (reporting validation
//! errors), publishes it, and subscribes the app to the account's webhooks.

use serde_json::{json, Value};

use super::{Finding, Report};
use crate::config::Settings;
use crate::domain::ids::path_segment;
use crate::integrations::whatsapp::WhatsAppClient;

/// The template definitions, as submitted (en_US), by the setting that names each.
fn definitions(settings: &Settings) -> Vec<(String, &'static str)> {
    let t = &settings.templates;
    vec![
        (
            t.invite.clone(),
            include_str!("../../templates/tmpl_referral_invite.json"),
        ),
        (t.flow.clone(), include_str!("../../templates/tmpl_referral_flow.json")),
        (
            t.friend_invite.clone(),
            include_str!("../../templates/tmpl_referral_friend_invite.json"),
        ),
        (
            t.thanks.clone(),
            include_str!("../../templates/tmpl_referral_thanks.json"),
        ),
        (
            t.reward.clone(),
            include_str!("../../templates/tmpl_referral_reward.json"),
        ),
    ]
}

const FLOW_JSON: &str = include_str!("../../templates/flow_referral_nomination.json");
const DEFINED_LANGUAGE: &str = "en_US";

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
    for (name, definition) in definitions(settings) {
        for language in &settings.templates.languages {
            let finding = template(client, &waba, &name, definition, language, dry_run).await;
            report.findings.push(finding);
        }
    }
    report.findings.push(flow(client, settings, &waba, dry_run).await);
    report.findings.push(subscription(client, &waba, dry_run).await);
    report
}

async fn template(
    client: &WhatsAppClient,
    waba: &str,
    name: &str,
    definition: &str,
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
    let mut body: Value = serde_json::from_str(definition).unwrap_or(Value::Null);
    let submitted_category = body["category"].as_str().unwrap_or("?").to_string();
    if let Some(found) = found {
        return template_status(&what, &found, &submitted_category);
    }
    if language != DEFINED_LANGUAGE {
        return Finding::Wrong {
            what: format!("{what}: no definition in this language"),
            fix: "submit a translation (templates/README.md, \"Other languages\") or remove the language from templates.languages".into(),
        };
    }
    if let Some(object) = body.as_object_mut() {
        object.remove("_note");
        object.insert("name".into(), json!(name));
    }
    if dry_run {
        return Finding::WouldCreate {
            what,
            call: format!("POST /{waba}/message_templates (templates/{name}.json)"),
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
        Ok(None) => Finding::Created(format!("{what}: submitted (recorded, sandbox)")),
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

async fn flow(client: &WhatsAppClient, settings: &Settings, waba: &str, dry_run: bool) -> Finding {
    let name = &settings.templates.flow_name;
    let what = format!("Flow {name}");
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
    let created = client
        .manage(
            reqwest::Method::POST,
            &format!("/{waba}/flows"),
            Some((
                "application/json",
                json!({"name": name, "categories": ["OTHER"]}).to_string(),
            )),
        )
        .await;
    let id = match ok_body(created, &what) {
        Ok(Some(body)) => body["id"].as_str().unwrap_or_default().to_string(),
        Ok(None) => return Finding::Created(format!("{what}: created, uploaded and published (recorded, sandbox)")),
        Err(wrong) => return wrong,
    };
    let flow_json = FLOW_JSON.replace("<BUSINESS_NAME>", business);
    let boundary = "referloop-flow-json";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"flow.json\"\r\n\
         Content-Type: application/json\r\n\r\n{flow_json}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nflow.json\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"asset_type\"\r\n\r\nFLOW_JSON\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let uploaded = client
        .manage(
            reqwest::Method::POST,
            &format!("/{}/assets", path_segment(&id)),
            Some((&content_type, multipart)),
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
            fix: "fix templates/flow_referral_nomination.json and upload it again; it is not published".into(),
        };
    }
    let published = client
        .manage(reqwest::Method::POST, &format!("/{}/publish", path_segment(&id)), None)
        .await;
    match ok_body(published, &what) {
        Ok(_) => Finding::Created(format!("{what}: published, id {id} — set templates.flow_id = \"{id}\"")),
        Err(wrong) => wrong,
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
