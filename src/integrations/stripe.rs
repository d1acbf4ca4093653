//! Stripe client: form-encoded requests with bracketed nesting, the API version pinned
//! with `Stripe-Version`, an `Idempotency-Key` on every POST (the reward's id, so a retry
//! can never create a second object), and Stripe's retry advice obeyed.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::{Outbound, OutboundRequest, OutboundResponse};
use crate::config::StripeSettings;
use crate::domain::ids::{path_segment, StripeId};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StripeError {
    /// 409, 424, 429, 5xx and connection errors: retry with the same key.
    #[error("{message}")]
    Retryable {
        message: String,
        not_before: Option<Duration>,
    },
    /// Other 4xx, and `idempotency_error` (a bug on our side).
    #[error("{0}")]
    Permanent(String),
}

#[derive(Clone)]
pub struct StripeClient {
    outbound: Outbound,
    base: String,
    version: String,
    secret_key: Option<String>,
}

impl StripeClient {
    pub fn new(settings: &StripeSettings, outbound: Outbound) -> StripeClient {
        StripeClient {
            outbound,
            base: settings.api_base.as_str().to_string(),
            version: settings.api_version.clone(),
            secret_key: settings.secret_key.as_ref().map(|k| k.expose_secret().to_string()),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(String, String)],
        idempotency_key: Option<&str>,
        job_id: Option<i64>,
    ) -> Result<Value, StripeError> {
        let mut headers = vec![
            ("stripe-version".to_string(), self.version.clone()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        if let Some(key) = &self.secret_key {
            headers.push(("authorization".to_string(), format!("Bearer {key}")));
        }
        if let Some(key) = idempotency_key {
            headers.push(("idempotency-key".to_string(), key.to_string()));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = OutboundRequest {
            method,
            url: format!("{}{path}", self.base),
            headers,
            body,
            job_id,
        };
        match self.outbound.send(request).await {
            Ok(OutboundResponse::Recorded { call_id }) => Ok(json!({"id": format!("sandbox_{call_id}")})),
            Ok(OutboundResponse::Sent { status, headers, body }) => {
                let should_retry = headers
                    .get("stripe-should-retry")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v == "true");
                let retry_after = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                interpret(status, should_retry, retry_after, &body)
            }
            Err(e) => Err(StripeError::Retryable {
                message: format!("request failed: {e}"),
                not_before: None,
            }),
        }
    }

    /// Whether calls are recorded instead of sent (sandbox mode).
    pub fn is_sandbox(&self) -> bool {
        matches!(self.outbound, Outbound::Sandbox(_))
    }

    /// The account's webhook endpoints (the first 100).
    pub async fn webhook_endpoints(&self) -> Result<Vec<Value>, StripeError> {
        let list = self
            .call(reqwest::Method::GET, "/v1/webhook_endpoints?limit=100", &[], None, None)
            .await?;
        Ok(list.get("data").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// Creates a webhook endpoint; the answer carries its signing secret (only now).
    pub async fn create_webhook_endpoint(&self, url: &str, events: &[&str]) -> Result<Value, StripeError> {
        let mut form = vec![("url".to_string(), url.to_string())];
        form.extend(events.iter().map(|e| ("enabled_events[]".to_string(), e.to_string())));
        form.push(("api_version".to_string(), self.version.clone()));
        form.push((
            "description".to_string(),
            "referloop conversions and refunds".to_string(),
        ));
        self.call(reqwest::Method::POST, "/v1/webhook_endpoints", &form, None, None)
            .await
    }

    /// Sets an endpoint's events.
    pub async fn update_webhook_endpoint(&self, id: &str, events: &[&str]) -> Result<(), StripeError> {
        let form: Vec<(String, String)> = events
            .iter()
            .map(|e| ("enabled_events[]".to_string(), e.to_string()))
            .collect();
        let path = format!("/v1/webhook_endpoints/{}", path_segment(id));
        self.call(reqwest::Method::POST, &path, &form, None, None)
            .await
            .map(|_| ())
    }

    /// A Stripe read (`path` with its query), answered raw.
    pub async fn probe(&self, path: &str) -> Result<Option<(u16, Value)>, String> {
        super::probe(
            &self.outbound,
            format!("{}{path}", self.base),
            self.secret_key.as_deref(),
        )
        .await
    }

    /// The key's mode, from its prefix: `Some(true)` live, `Some(false)` test.
    pub fn live_key(&self) -> Option<bool> {
        let key = self.secret_key.as_deref()?;
        if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
            Some(true)
        } else if key.starts_with("sk_test_") || key.starts_with("rk_test_") {
            Some(false)
        } else {
            None
        }
    }

    /// A one-use promotion code on `coupon` (API 2025-09-30+ shape: `promotion[coupon]`).
    pub async fn create_promotion_code(
        &self,
        coupon: &str,
        code: &str,
        customer: Option<&str>,
        metadata: &[(&str, String)],
        idempotency_key: &str,
        job_id: Option<i64>,
    ) -> Result<Value, StripeError> {
        let mut form = vec![
            ("promotion[type]".to_string(), "coupon".to_string()),
            ("promotion[coupon]".to_string(), coupon.to_string()),
            ("code".to_string(), code.to_string()),
            ("max_redemptions".to_string(), "1".to_string()),
        ];
        if let Some(customer) = customer {
            form.push(("customer".to_string(), customer.to_string()));
        }
        for (key, value) in metadata {
            form.push((format!("metadata[{key}]"), value.clone()));
        }
        self.call(
            reqwest::Method::POST,
            "/v1/promotion_codes",
            &form,
            Some(idempotency_key),
            job_id,
        )
        .await
    }

    /// A customer balance credit (a negative balance transaction).
    pub async fn credit_balance(
        &self,
        customer: &StripeId,
        amount: i64,
        currency: &str,
        description: &str,
        idempotency_key: &str,
        job_id: Option<i64>,
    ) -> Result<Value, StripeError> {
        let form = vec![
            ("amount".to_string(), (-amount.abs()).to_string()),
            ("currency".to_string(), currency.to_string()),
            ("description".to_string(), description.to_string()),
        ];
        let path = format!("/v1/customers/{}/balance_transactions", path_segment(customer.as_str()));
        self.call(reqwest::Method::POST, &path, &form, Some(idempotency_key), job_id)
            .await
    }

    /// A Checkout Session with its discount breakdown, where a typed promotion code shows.
    pub async fn checkout_session_discounts(
        &self,
        session_id: &StripeId,
        job_id: Option<i64>,
    ) -> Result<Value, StripeError> {
        let path = format!(
            "/v1/checkout/sessions/{}?expand[]=total_details.breakdown",
            path_segment(session_id.as_str())
        );
        self.call(reqwest::Method::GET, &path, &[], None, job_id).await
    }

    pub async fn promotion_code(&self, id: &StripeId, job_id: Option<i64>) -> Result<Value, StripeError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/promotion_codes/{}", path_segment(id.as_str())),
            &[],
            None,
            job_id,
        )
        .await
    }
}

fn interpret(
    status: u16,
    should_retry: Option<bool>,
    retry_after: Option<Duration>,
    body: &str,
) -> Result<Value, StripeError> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(parsed);
    }
    let kind = parsed.pointer("/error/type").and_then(Value::as_str).unwrap_or("");
    let message = parsed
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    let message = format!("HTTP {status} {kind}: {message}");
    if kind == "idempotency_error" {
        return Err(StripeError::Permanent(message));
    }
    let retryable = should_retry.unwrap_or(matches!(status, 409 | 424 | 429 | 500..=599));
    if retryable {
        Err(StripeError::Retryable {
            message,
            not_before: retry_after,
        })
    } else {
        Err(StripeError::Permanent(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_stripe_retry_advice() {
        assert!(interpret(200, None, None, r#"{"id":"promo_1"}"#).is_ok());
        assert!(matches!(
            interpret(500, None, None, "{}"),
            Err(StripeError::Retryable { .. })
        ));
        assert!(matches!(
            interpret(429, None, None, "{}"),
            Err(StripeError::Retryable { .. })
        ));
        assert!(matches!(
            interpret(409, None, None, "{}"),
            Err(StripeError::Retryable { .. })
        ));
        assert!(matches!(
            interpret(500, Some(false), None, "{}"),
            Err(StripeError::Permanent(_))
        ));
        assert!(matches!(
            interpret(400, Some(true), None, "{}"),
            Err(StripeError::Retryable { .. })
        ));
        assert!(matches!(
            interpret(400, None, None, r#"{"error":{"type":"invalid_request_error"}}"#),
            Err(StripeError::Permanent(_))
        ));
        let idempotency = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stripe/error-idempotency.json"
        ))
        .expect("fixture");
        assert!(matches!(
            interpret(400, Some(true), None, &idempotency),
            Err(StripeError::Permanent(_))
        ));
    }
}
