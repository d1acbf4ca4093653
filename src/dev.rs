//! `referloop dev`: drives a running referloop with correctly signed webhooks, as Meta
//! and HubSpot would send them, so the whole programme can be watched in sandbox mode.

use anyhow::Context;
use serde_json::{json, Value};

use crate::clock::system_ms;
use crate::config::{secret_value, Settings};
use crate::domain::messaging::MessagePurpose;
use crate::signatures;
use crate::store::Store;

pub struct DevClient<'a> {
    settings: &'a Settings,
    base_url: String,
    http: reqwest::Client,
}

impl<'a> DevClient<'a> {
    pub fn new(settings: &'a Settings, base_url: Option<String>) -> DevClient<'a> {
        let base_url = base_url.unwrap_or_else(|| format!("http://{}", settings.server.listen));
        DevClient {
            settings,
            base_url: base_url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits (up to 20 s) until the server answers `/healthz`: a walkthrough may run a
    /// `dev` command right after starting the server.
    async fn wait_until_up(&self) -> anyhow::Result<()> {
        let health = format!("{}/healthz", self.base_url);
        for _ in 0..80 {
            if let Ok(response) = self.http.get(&health).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        anyhow::bail!(
            "no referloop answers at {}: start it with `referloop serve`",
            self.base_url
        )
    }

    async fn post(&self, path_and_query: &str, body: Vec<u8>, headers: Vec<(String, String)>) -> anyhow::Result<bool> {
        self.wait_until_up().await?;
        let url = format!("{}{path_and_query}", self.base_url);
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.with_context(|| format!("POST {url}"))?;
        let status = response.status();
        println!("{} {}", status.as_u16(), response.text().await.unwrap_or_default());
        Ok(status.is_success())
    }

    /// Signs and posts a WhatsApp webhook body.
    pub async fn whatsapp(&self, body: Vec<u8>) -> anyhow::Result<bool> {
        let secret = secret_value(&self.settings.whatsapp.app_secret).context("whatsapp.app_secret is not set")?;
        let signature = signatures::sign_meta(secret, &body);
        self.post(
            "/webhooks/whatsapp",
            body,
            vec![("x-hub-signature-256".into(), signature)],
        )
        .await
    }

    /// Signs (v3, or the API key) and posts a HubSpot webhook body.
    pub async fn hubspot(&self, query: &str, body: Vec<u8>) -> anyhow::Result<bool> {
        let path_and_query = if query.is_empty() {
            "/webhooks/hubspot".to_string()
        } else {
            format!("/webhooks/hubspot?{query}")
        };
        let headers = if let Some(secret) = secret_value(&self.settings.hubspot.client_secret) {
            let timestamp = system_ms().to_string();
            let public = self.settings.server.public_base_url.join(&path_and_query);
            let signature = signatures::sign_hubspot_v3(secret, "POST", &public, &body, &timestamp);
            vec![
                ("x-hubspot-signature-v3".into(), signature),
                ("x-hubspot-request-timestamp".into(), timestamp),
            ]
        } else {
            let key = secret_value(&self.settings.hubspot.webhook_api_key)
                .context("set hubspot.client_secret or hubspot.webhook_api_key")?;
            vec![(self.settings.hubspot.webhook_api_key_header.clone(), key.to_string())]
        };
        self.post(&path_and_query, body, headers).await
    }

    pub async fn stripe(&self, body: Vec<u8>) -> anyhow::Result<bool> {
        let secret = secret_value(&self.settings.stripe.webhook_secret).context("stripe.webhook_secret is not set")?;
        let signature = signatures::sign_stripe(secret, &body, system_ms() / 1000);
        self.post("/webhooks/stripe", body, vec![("stripe-signature".into(), signature)])
            .await
    }
}

fn dev_wamid(kind: &str) -> String {
    format!("wamid.DEV.{kind}.{}", uuid::Uuid::new_v4().simple())
}

/// A `messages` webhook around one inbound message or status.
pub fn whatsapp_webhook(field: &str, value: Value) -> Vec<u8> {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({"display_phone_number": "15550001234", "phone_number_id": "sandbox"});
    json!({"object": "whatsapp_business_account", "entry": [{"id": "sandbox", "changes": [{"field": field, "value": value}]}]})
        .to_string()
        .into_bytes()
}

fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// A `messages` change with one inbound message, naming its sender in `contacts` as Meta
/// does.
fn inbound(from: &str, message: Value) -> Vec<u8> {
    let contact = json!({"profile": {"name": "Sandbox sender"}, "wa_id": digits(from)});
    whatsapp_webhook("messages", json!({"contacts": [contact], "messages": [message]}))
}

/// The customer taps "Refer someone" on the invite.
pub fn refer_tap(from: &str, invite_id: i64) -> Vec<u8> {
    let message = json!({"from": digits(from), "id": dev_wamid("tap"), "timestamp": (system_ms() / 1000).to_string(),
        "type": "button", "button": {"payload": format!("refer:{invite_id}"), "text": "Refer someone"}});
    inbound(from, message)
}

/// The Flow completes with the friend's details.
pub fn flow_reply(from: &str, flow_token: &str, name: &str, phone: &str, message: &str, consent: bool) -> Vec<u8> {
    let response = json!({"flow_token": flow_token, "friend_name": name, "friend_phone": phone,
                          "personal_message": message, "friend_consent": consent});
    let message = json!({"from": digits(from), "id": dev_wamid("flow"), "timestamp": (system_ms() / 1000).to_string(),
        "type": "interactive", "interactive": {"type": "nfm_reply",
            "nfm_reply": {"name": "flow", "body": "Sent", "response_json": response.to_string()}}});
    inbound(from, message)
}

pub fn text(from: &str, body: &str) -> Vec<u8> {
    let message = json!({"from": digits(from), "id": dev_wamid("text"), "timestamp": (system_ms() / 1000).to_string(),
        "type": "text", "text": {"body": body}});
    inbound(from, message)
}

pub fn status(wamid: &str, status: &str, to: &str) -> Vec<u8> {
    let item = json!({"id": wamid, "status": status, "timestamp": (system_ms() / 1000).to_string(), "recipient_id": digits(to)});
    whatsapp_webhook("messages", json!({"statuses": [item]}))
}

/// The flow_token of the newest Flow message sent for an invite.
pub async fn latest_flow_token(store: &Store, invite_id: i64) -> anyhow::Result<(String, String)> {
    let message = store
        .latest_message_for_invite(invite_id, MessagePurpose::Flow)
        .await?
        .context("no Flow was sent for this invite yet: run `referloop dev tap` first")?;
    let token = crate::whatsapp::render::flow_token_of(&message.body).context("the Flow message has no flow_token")?;
    Ok((message.to_phone.as_str().to_string(), token))
}
