//! WhatsApp Cloud API client: `POST /{version}/{phone_number_id}/messages` with a bearer
//! token, paced per phone number, and the request bodies for each message we send.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::pacer::Pacer;
use super::{Outbound, OutboundError, OutboundRequest, OutboundResponse};
use crate::config::WhatsAppSettings;
use crate::domain::messaging::{classify, SendErrorClass};

/// Meta accepted the message (not yet delivered).
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub wamid: String,
}

/// Meta refused the message, or it could not be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SendFailure {
    pub class: SendErrorClass,
    pub code: Option<i64>,
    pub title: String,
    pub retry_after: Option<Duration>,
    /// The request may have reached Meta (a timeout or a broken connection after sending):
    /// it may have been accepted.
    pub ambiguous: bool,
}

#[derive(Clone)]
pub struct WhatsAppClient {
    outbound: Outbound,
    url: String,
    token: Option<String>,
    pacer: Arc<Pacer>,
}

impl WhatsAppClient {
    pub fn new(settings: &WhatsAppSettings, outbound: Outbound) -> WhatsAppClient {
        // Sandbox mode may run without a number: the recorded URL then shows a placeholder.
        let phone_number_id = if settings.phone_number_id.is_empty() {
            "PHONE_NUMBER_ID"
        } else {
            settings.phone_number_id.as_str()
        };
        let url = format!(
            "{}/{}/{phone_number_id}/messages",
            settings.api_base.trim_end_matches('/'),
            settings.api_version
        );
        WhatsAppClient {
            outbound,
            url,
            token: settings.access_token.as_ref().map(|t| t.expose_secret().to_string()),
            pacer: Arc::new(Pacer::new(settings.max_messages_per_second, Duration::from_secs(1))),
        }
    }

    pub async fn send(&self, body: &str, job_id: Option<i64>) -> Result<Accepted, SendFailure> {
        self.pacer.wait().await;
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(token) = &self.token {
            headers.push(("authorization".to_string(), format!("Bearer {token}")));
        }
        let request = OutboundRequest {
            method: reqwest::Method::POST,
            url: self.url.clone(),
            headers,
            body: body.to_string(),
            job_id,
        };
        match self.outbound.send(request).await {
            Ok(OutboundResponse::Recorded { call_id }) => Ok(Accepted {
                wamid: format!("wamid.sandbox.{call_id}"),
            }),
            Ok(OutboundResponse::Sent { status, headers, body }) => {
                let retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok());
                interpret(status, retry_after, &body)
            }
            Err(e) => {
                let ambiguous = match &e {
                    OutboundError::Network(network) => !network.is_connect(),
                    OutboundError::Store(_) => false,
                };
                Err(SendFailure {
                    class: classify(None, None),
                    code: None,
                    title: format!("request failed: {e}"),
                    retry_after: None,
                    ambiguous,
                })
            }
        }
    }
}

fn interpret(status: u16, retry_after: Option<&str>, body: &str) -> Result<Accepted, SendFailure> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        if let Some(wamid) = parsed.pointer("/messages/0/id").and_then(Value::as_str) {
            return Ok(Accepted {
                wamid: wamid.to_string(),
            });
        }
        return Err(SendFailure {
            class: SendErrorClass::Retry {
                not_before: Duration::from_secs(5),
            },
            code: None,
            title: "2xx without a message id".into(),
            retry_after: None,
            ambiguous: true,
        });
    }
    let code = parsed.pointer("/error/code").and_then(Value::as_i64);
    let title = parsed
        .pointer("/error/error_data/details")
        .or_else(|| parsed.pointer("/error/message"))
        .and_then(Value::as_str)
        .unwrap_or("no error detail")
        .to_string();
    Err(SendFailure {
        class: classify(code, Some(status)),
        code,
        title: format!("HTTP {status}: {title}"),
        retry_after: retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
        ambiguous: false,
    })
}

/// Request bodies, in the shapes Meta documents.
pub mod bodies {
    use super::*;

    fn envelope(to: &str, kind: &str, content: Value, callback: &str) -> Value {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": kind,
            "biz_opaque_callback_data": callback,
        });
        body[kind] = content;
        body
    }

    fn text_params(values: &[String]) -> Value {
        Value::Array(values.iter().map(|v| json!({"type": "text", "text": v})).collect())
    }

    pub struct Template<'a> {
        pub to: &'a str,
        pub name: &'a str,
        pub language: &'a str,
        pub body_params: Vec<String>,
        /// (button index, code)
        pub copy_code: Option<(u8, &'a str)>,
        /// (button index, payload)
        pub quick_replies: Vec<(u8, String)>,
        /// (button index, flow token)
        pub flow_button: Option<(u8, &'a str)>,
        pub callback: &'a str,
    }

    pub fn template(t: Template<'_>) -> Value {
        let mut components = vec![];
        if !t.body_params.is_empty() {
            components.push(json!({"type": "body", "parameters": text_params(&t.body_params)}));
        }
        if let Some((index, code)) = t.copy_code {
            components.push(json!({"type": "button", "sub_type": "copy_code", "index": index,
                "parameters": [{"type": "coupon_code", "coupon_code": code}]}));
        }
        for (index, payload) in &t.quick_replies {
            components.push(json!({"type": "button", "sub_type": "quick_reply", "index": index,
                "parameters": [{"type": "payload", "payload": payload}]}));
        }
        if let Some((index, token)) = t.flow_button {
            components.push(json!({"type": "button", "sub_type": "flow", "index": index.to_string(),
                "parameters": [{"type": "action", "action": {"flow_token": token}}]}));
        }
        envelope(
            t.to,
            "template",
            json!({"name": t.name, "language": {"code": t.language}, "components": components}),
            t.callback,
        )
    }

    pub struct InteractiveFlow<'a> {
        pub to: &'a str,
        pub body_text: &'a str,
        pub flow_id: &'a str,
        pub flow_name: &'a str,
        pub cta: &'a str,
        pub screen: &'a str,
        pub flow_token: &'a str,
        pub callback: &'a str,
    }

    /// A Flow inside the 24-hour window.
    pub fn interactive_flow(f: InteractiveFlow<'_>) -> Value {
        let mut parameters = json!({
            "flow_message_version": "3",
            "flow_cta": f.cta,
            "flow_token": f.flow_token,
            "flow_action": "navigate",
            "flow_action_payload": {"screen": f.screen},
        });
        if f.flow_id.is_empty() {
            parameters["flow_name"] = json!(f.flow_name);
        } else {
            parameters["flow_id"] = json!(f.flow_id);
        }
        envelope(
            f.to,
            "interactive",
            json!({"type": "flow", "body": {"text": f.body_text}, "action": {"name": "flow", "parameters": parameters}}),
            f.callback,
        )
    }

    /// Free-form text inside the 24-hour window.
    pub fn text(to: &str, body: &str, callback: &str) -> Value {
        envelope(to, "text", json!({"preview_url": false, "body": body}), callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interprets_answers() {
        let ok = interpret(
            200,
            None,
            r#"{"messaging_product":"whatsapp","messages":[{"id":"wamid.X"}]}"#,
        );
        assert_eq!(
            ok,
            Ok(Accepted {
                wamid: "wamid.X".into()
            })
        );
        let pair = interpret(
            400,
            None,
            r#"{"error":{"code":131056,"message":"(#131056) Pair rate limit hit"}}"#,
        )
        .expect_err("refused");
        assert!(matches!(pair.class, SendErrorClass::Retry { .. }));
        assert_eq!(pair.code, Some(131056));
        let throttled = interpret(429, Some("7"), "{}").expect_err("refused");
        assert_eq!(throttled.retry_after, Some(Duration::from_secs(7)));
        let server = interpret(502, None, "<html>").expect_err("refused");
        assert!(matches!(server.class, SendErrorClass::Retry { .. }));
        let template = interpret(
            404,
            None,
            r#"{"error":{"code":132001,"message":"Template name does not exist"}}"#,
        )
        .expect_err("refused");
        assert_eq!(template.class, SendErrorClass::Permanent);
    }

    #[test]
    fn template_body_matches_the_documented_shape() {
        let body = bodies::template(bodies::Template {
            to: "+447911123456",
            name: "tmpl_referral_invite",
            language: "en_US",
            body_params: vec!["Zoë".into(), "ZEK7Q2".into()],
            copy_code: Some((0, "ZEK7Q2")),
            quick_replies: vec![(1, "refer:7".into())],
            flow_button: None,
            callback: "invite:7",
        });
        assert_eq!(body["type"], "template");
        assert_eq!(body["template"]["components"][0]["parameters"][0]["text"], "Zoë");
        assert_eq!(body["template"]["components"][1]["sub_type"], "copy_code");
        assert_eq!(
            body["template"]["components"][1]["parameters"][0]["coupon_code"],
            "ZEK7Q2"
        );
        assert_eq!(body["template"]["components"][2]["parameters"][0]["payload"], "refer:7");
    }
}
