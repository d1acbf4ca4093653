//! Lean in-process fakes of the Graph API and HubSpot for the whole-referral benchmark
//! (rewards are static codes there, so Stripe is not called). They answer in the
//! documented shapes and check the bearer token, keep only counts and what the driver
//! needs, and, like Meta, report every accepted send as `sent`, `delivered` and `read`,
//! each its own signed webhook, a few tens of milliseconds apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{patch, post};
use axum::{Json, Router};
use referloop::signatures::sign_meta;
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub const META_TOKEN: &str = "EAAbench-meta-token";
pub const HUBSPOT_TOKEN: &str = "pat-bench-hubspot-token";
pub const PHONE_NUMBER_ID: &str = "100000000000202";

/// A send Meta accepted: to whom, what (the template's name, or the message type), and
/// its body.
#[derive(Debug, Clone)]
pub struct Sent {
    pub to: String,
    pub kind: String,
    pub body: Value,
}

#[derive(Clone)]
pub struct Outside {
    sends: mpsc::UnboundedSender<Sent>,
    next_wamid: Arc<AtomicU64>,
    /// Sends per (recipient, kind): exactly once means every count is 1.
    pub sent: Arc<Mutex<HashMap<(String, String), u32>>>,
    pub contacts_created: Arc<AtomicU64>,
    pub hubspot_calls: Arc<AtomicU64>,
    /// Contact property writes, one per contact a `PATCH` or a batch update carried.
    pub hubspot_writes: Arc<AtomicU64>,
    /// Requests refused (a wrong token or a body that is not JSON).
    pub refused: Arc<AtomicU64>,
    webhooks: reqwest::Client,
    webhook_url: Arc<Mutex<String>>,
    app_secret: &'static str,
}

impl Outside {
    /// Serves the fakes on a local port; returns them, their base URL, and the sends as
    /// they are accepted (for the driver to answer, as a person would).
    pub async fn start(app_secret: &'static str) -> (Outside, String, mpsc::UnboundedReceiver<Sent>) {
        let (sends, accepted) = mpsc::unbounded_channel();
        let outside = Outside {
            sends,
            next_wamid: Arc::default(),
            sent: Arc::default(),
            contacts_created: Arc::default(),
            hubspot_calls: Arc::default(),
            hubspot_writes: Arc::default(),
            refused: Arc::default(),
            webhooks: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            webhook_url: Arc::default(),
            app_secret,
        };
        let routes = Router::new()
            .route("/{version}/{phone_number_id}/messages", post(graph_send))
            .route("/crm/v3/objects/contacts/search", post(hubspot_search))
            .route("/crm/v3/objects/contacts", post(hubspot_create))
            .route("/crm/v3/objects/contacts/batch/update", post(hubspot_batch_update))
            .route("/crm/v3/objects/contacts/{id}", patch(hubspot_update))
            .with_state(outside.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, routes).await });
        (outside, base, accepted)
    }

    /// Where Meta's status webhooks go (known once the app listens).
    pub fn post_statuses_to(&self, url: String) {
        if let Ok(mut slot) = self.webhook_url.lock() {
            *slot = url;
        }
    }

    /// Posts `sent`, `delivered` and `read` of one send, each its own webhook, with Meta's
    /// pricing object on the first two.
    fn report(&self, wamid: String, to: String, callback: Option<String>, pricing: Value) {
        let outside = self.clone();
        tokio::spawn(async move {
            for (status, after) in [("sent", 20), ("delivered", 40), ("read", 100)] {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let mut item = json!({"id": wamid, "status": status, "timestamp": "1795510803",
                                      "recipient_id": to.trim_start_matches('+')});
                if let Some(callback) = &callback {
                    item["biz_opaque_callback_data"] = json!(callback);
                }
                // Meta puts the pricing on `sent` and on the `delivered` that bills.
                if status != "read" {
                    item["pricing"] = pricing.clone();
                }
                let body = json!({"object": "whatsapp_business_account",
                    "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "15550001234", "phone_number_id": PHONE_NUMBER_ID},
                        "statuses": [item]}}]}]})
                .to_string();
                let url = outside.webhook_url.lock().map(|u| u.clone()).unwrap_or_default();
                let posted = outside
                    .webhooks
                    .post(url)
                    .header("x-hub-signature-256", sign_meta(outside.app_secret, body.as_bytes()))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                if !posted.is_ok_and(|r| r.status().is_success()) {
                    outside.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.strip_prefix("Bearer ") == Some(token))
}

fn graph_error(status: StatusCode, code: i64, message: &str) -> (StatusCode, Json<Value>) {
    let error = json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Abench"}});
    (status, Json(error))
}

async fn graph_send(
    State(outside): State<Outside>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    if !bearer_is(&headers, META_TOKEN) {
        outside.refused.fetch_add(1, Ordering::Relaxed);
        return graph_error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        outside.refused.fetch_add(1, Ordering::Relaxed);
        return graph_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
    };
    if phone_number_id != PHONE_NUMBER_ID || body["messaging_product"] != "whatsapp" {
        outside.refused.fetch_add(1, Ordering::Relaxed);
        return graph_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
    }
    let to = body["to"].as_str().unwrap_or_default().to_string();
    let kind = match body["template"]["name"].as_str() {
        Some(name) => name.to_string(),
        None => body["type"].as_str().unwrap_or("text").to_string(),
    };
    let wamid = format!("wamid.BENCH{}", outside.next_wamid.fetch_add(1, Ordering::Relaxed));
    if let Ok(mut sent) = outside.sent.lock() {
        *sent.entry((to.clone(), kind.clone())).or_default() += 1;
    }
    let callback = body["biz_opaque_callback_data"].as_str().map(str::to_string);
    // As Meta prices it: the invite, reminders and a friend's invite are marketing, other
    // templates utility, and a reply inside the window free customer service.
    let pricing = match body["template"]["name"].as_str() {
        Some(name) if ["invite", "reminder", "nudge"].iter().any(|k| name.contains(k)) => {
            json!({"billable": true, "pricing_model": "PMP", "type": "regular", "category": "marketing"})
        }
        Some(_) => json!({"billable": true, "pricing_model": "PMP", "type": "regular", "category": "utility"}),
        None => {
            json!({"billable": false, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"})
        }
    };
    outside.report(wamid.clone(), to.clone(), callback, pricing);
    let _ = outside.sends.send(Sent {
        to: to.clone(),
        kind,
        body,
    });
    let answer = json!({"messaging_product": "whatsapp",
                        "contacts": [{"input": to, "wa_id": to.trim_start_matches('+')}],
                        "messages": [{"id": wamid}]});
    (StatusCode::OK, Json(answer))
}

fn hubspot_refused(outside: &Outside) -> (StatusCode, Json<Value>) {
    outside.refused.fetch_add(1, Ordering::Relaxed);
    let error = json!({"status": "error", "message": "Authentication credentials not found.",
                       "category": "INVALID_AUTHENTICATION"});
    (StatusCode::UNAUTHORIZED, Json(error))
}

/// Nobody the benchmark nominates is a customer yet.
async fn hubspot_search(State(outside): State<Outside>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if !bearer_is(&headers, HUBSPOT_TOKEN) {
        return hubspot_refused(&outside);
    }
    outside.hubspot_calls.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, Json(json!({"total": 0, "results": []})))
}

async fn hubspot_create(State(outside): State<Outside>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if !bearer_is(&headers, HUBSPOT_TOKEN) {
        return hubspot_refused(&outside);
    }
    outside.hubspot_calls.fetch_add(1, Ordering::Relaxed);
    let n = outside.contacts_created.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}", 9_000_000 + n);
    (StatusCode::CREATED, Json(json!({"id": id, "properties": {}})))
}

async fn hubspot_update(
    State(outside): State<Outside>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if !bearer_is(&headers, HUBSPOT_TOKEN) {
        return hubspot_refused(&outside);
    }
    outside.hubspot_calls.fetch_add(1, Ordering::Relaxed);
    outside.hubspot_writes.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, Json(json!({"id": id, "properties": {}})))
}

/// Several contacts' properties in one call: each input's contact, in `results`.
async fn hubspot_batch_update(
    State(outside): State<Outside>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    if !bearer_is(&headers, HUBSPOT_TOKEN) {
        return hubspot_refused(&outside);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return hubspot_refused(&outside);
    };
    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
    outside.hubspot_calls.fetch_add(1, Ordering::Relaxed);
    outside.hubspot_writes.fetch_add(inputs.len() as u64, Ordering::Relaxed);
    let results: Vec<Value> = inputs
        .iter()
        .map(|i| json!({"id": i["id"], "properties": {}}))
        .collect();
    (StatusCode::OK, Json(json!({"status": "COMPLETE", "results": results})))
}
