//! Clients for the outside APIs (WhatsApp Cloud API, HubSpot, Stripe), each over a
//! transport of its own: live, or (sandbox, until the account's credential is set) one
//! that makes no network call and records each request in full in the database
//! (`referloop outbound list`).

mod contact_writes;
pub mod hubspot;
mod pacer;
pub mod stripe;
pub mod whatsapp;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRequest {
    pub method: reqwest::Method,
    pub url: String,
    /// Sent, never recorded or logged: they carry credentials.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The job this call belongs to, for the sandbox record.
    pub job_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutboundResponse {
    /// Sandbox: recorded as outbound call `call_id`, not sent.
    Recorded { call_id: i64 },
    Sent {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("recording the sandboxed call: {0}")]
    Store(#[from] StoreError),
    #[error("network: {0}")]
    Network(#[from] reqwest::Error),
}

#[derive(Clone)]
pub enum Outbound {
    Sandbox(Store),
    Live(Live),
}

/// The live transport: the HTTP client, and what each call's outcome is counted under.
#[derive(Clone)]
pub struct Live {
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    /// (URL prefix, API name) for the `outside_calls` metric; other URLs are reward
    /// webhooks.
    apis: Arc<Vec<(String, &'static str)>>,
}

impl Live {
    fn api_of(&self, url: &str) -> &'static str {
        self.apis
            .iter()
            .find(|(prefix, _)| url.starts_with(prefix.as_str()))
            .map_or("reward_webhook", |(_, api)| api)
    }
}

/// How a call ended, as counted in `referloop_outside_calls_total`.
fn call_outcome(answer: &Result<u16, &reqwest::Error>) -> &'static str {
    match answer {
        Ok(200..=299) => "ok",
        Ok(401 | 403) => "auth_refused",
        Ok(429) => "rate_limited",
        Ok(400..=499) => "refused",
        Ok(_) => "server_error",
        Err(e) if e.is_timeout() => "timeout",
        Err(_) => "unreachable",
    }
}

/// A management call's raw answer, for checks that read status and body themselves
/// (`referloop doctor`). `None` in sandbox mode, where nothing is sent.
pub async fn probe(
    outbound: &Outbound,
    url: String,
    token: Option<&str>,
) -> Result<Option<(u16, serde_json::Value)>, String> {
    management_call(outbound, reqwest::Method::GET, url, token, None).await
}

/// A management call (setup), answered raw: `body` is `(content type, text)`. `None` in
/// sandbox mode, where the call is recorded instead.
pub async fn management_call(
    outbound: &Outbound,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> Result<Option<(u16, serde_json::Value)>, String> {
    let mut headers = Vec::new();
    if let Some(token) = token {
        headers.push(("authorization".to_string(), format!("Bearer {token}")));
    }
    let body = match body {
        Some((content_type, text)) => {
            headers.push(("content-type".to_string(), content_type.to_string()));
            text
        }
        None => String::new(),
    };
    let request = OutboundRequest {
        method,
        url,
        headers,
        body,
        job_id: None,
    };
    match outbound.send(request).await {
        Ok(OutboundResponse::Recorded { .. }) => Ok(None),
        Ok(OutboundResponse::Sent { status, body, .. }) => Ok(Some((
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        ))),
        Err(e) => Err(e.to_string()),
    }
}

impl Outbound {
    /// A pacer for calls through this transport: shared across replicas (through `store`)
    /// when calls go out; local in sandbox mode, where nothing leaves.
    pub fn pacer(
        &self,
        store: &Store,
        per_interval: std::num::NonZeroU32,
        interval: Duration,
        bucket: &str,
    ) -> pacer::Pacer {
        match self {
            Outbound::Live(_) => pacer::Pacer::shared(per_interval, interval, store.clone(), bucket.to_string()),
            Outbound::Sandbox(_) => pacer::Pacer::new(per_interval, interval),
        }
    }

    /// The transport for calls that are `live` (see [`Settings::live`]), else one that
    /// records them.
    pub fn new(
        settings: &Settings,
        live: bool,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Outbound, reqwest::Error> {
        if !live {
            return Ok(Outbound::Sandbox(store));
        }
        let worker = &settings.worker;
        let client = reqwest::Client::builder()
            .connect_timeout(worker.outbound_connect_timeout)
            .timeout(worker.outbound_timeout)
            .build()?;
        let apis = vec![
            (settings.whatsapp.api_base.to_string(), "whatsapp"),
            (settings.hubspot.api_base.to_string(), "hubspot"),
            (settings.stripe.api_base.to_string(), "stripe"),
        ];
        Ok(Outbound::Live(Live {
            client,
            metrics,
            apis: Arc::new(apis),
        }))
    }

    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        match self {
            Outbound::Sandbox(store) => {
                let method = request.method.as_str();
                let call_id = store
                    .record_outbound_call(request.job_id, method, &request.url, &request.body)
                    .await?;
                // The body may hold phone numbers: it is in the database, not the log.
                tracing::info!(call_id, method, url = %request.url, bytes = request.body.len(), "sandbox: outbound call recorded, not sent (see `referloop outbound list`)");
                Ok(OutboundResponse::Recorded { call_id })
            }
            Outbound::Live(live) => {
                let api = live.api_of(&request.url);
                let mut builder = live.client.request(request.method, &request.url).body(request.body);
                for (name, value) in &request.headers {
                    builder = builder.header(name, value);
                }
                let sent = builder.send().await;
                let answer = sent.as_ref().map(|r| r.status().as_u16());
                live.metrics.outside_call(api, call_outcome(&answer));
                let response = sent?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.text().await?;
                Ok(OutboundResponse::Sent { status, headers, body })
            }
        }
    }
}
