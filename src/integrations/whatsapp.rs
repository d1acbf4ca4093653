//! WhatsApp Cloud API client: `POST /{version}/{phone_number_id}/messages` with a bearer
//! token, paced per phone number. The bodies are rendered in `crate::whatsapp::render`.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;

use super::pacer::Pacer;
use super::{Outbound, OutboundError, OutboundRequest, OutboundResponse};
use crate::config::WhatsAppSettings;
use crate::domain::messaging::{classify, SendErrorClass};
use crate::store::Store;

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
    /// `{api_base}/{version}`, for management reads.
    graph: String,
    url: String,
    token: Option<String>,
    pacer: Arc<Pacer>,
}

impl WhatsAppClient {
    pub fn new(settings: &WhatsAppSettings, outbound: Outbound, store: &Store) -> WhatsAppClient {
        // Sandbox mode may run without a number: the recorded URL then shows a placeholder.
        let phone_number_id = if settings.phone_number_id.is_empty() {
            "PHONE_NUMBER_ID"
        } else {
            settings.phone_number_id.as_str()
        };
        let graph = settings.api_base.join(&format!("/{}", settings.api_version));
        let url = format!("{graph}/{phone_number_id}/messages");
        // Meta's throughput limit is per business phone number.
        let pacer = outbound.pacer(
            store,
            settings.max_messages_per_second,
            Duration::from_secs(1),
            &format!("whatsapp:{phone_number_id}"),
        );
        WhatsAppClient {
            outbound,
            graph,
            url,
            token: settings.access_token.as_ref().map(|t| t.expose_secret().to_string()),
            pacer: Arc::new(pacer),
        }
    }

    /// A Graph API read (`path` after the version, with its query), answered raw.
    pub async fn probe(&self, path: &str) -> Result<Option<(u16, Value)>, String> {
        super::probe(&self.outbound, format!("{}{path}", self.graph), self.token.as_deref()).await
    }

    /// A Graph API management write (`path` after the version), answered raw.
    pub async fn manage(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, String)>,
    ) -> Result<Option<(u16, Value)>, String> {
        super::management_call(
            &self.outbound,
            method,
            format!("{}{path}", self.graph),
            self.token.as_deref(),
            body,
        )
        .await
    }

    /// What Meta says of our own token (`/debug_token`): validity and scopes.
    pub async fn inspect_token(&self) -> Result<Option<(u16, Value)>, String> {
        let token = self.token.clone().unwrap_or_default();
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("input_token", &token)
            .finish();
        self.probe(&format!("/debug_token?{query}")).await
    }

    pub fn is_sandbox(&self) -> bool {
        matches!(self.outbound, Outbound::Sandbox(_))
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
}
