//! Stateful fakes of the outside APIs for the fault tests, where a call may act and still
//! fail on our side (a timeout after the outside acted, a worker killed mid-call):
//! - the Graph API accepts sends and, like Meta, reports each as `sent` and `delivered`
//!   in status webhooks that echo our `biz_opaque_callback_data` (and, when asked, fails
//!   some with a transient 131000 that races their `sent`);
//! - HubSpot keeps the contacts it created and finds them by phone;
//! - Stripe keeps each promotion code under its Idempotency-Key and replays the first
//!   answer for a repeated key, as Stripe does.
//!
//! Each counts what it actually did, so a test can assert "exactly once" on the outside.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use referloop::signatures::sign_meta;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::fakes::{graph_error, MESSAGES_PATH, PHONE_NUMBER_ID};
use crate::helpers::WHATSAPP_APP_SECRET;

/// What a fake did: one entry per effect, in order.
#[derive(Clone, Default)]
pub struct Effects(Arc<Mutex<Vec<Value>>>);

impl Effects {
    fn push(&self, effect: Value) {
        if let Ok(mut all) = self.0.lock() {
            all.push(effect);
        }
    }

    pub fn all(&self) -> Vec<Value> {
        self.0.lock().map(|all| all.clone()).unwrap_or_default()
    }
}

/// Graph API sends: each accepted message is an effect (its body, plus the wamid), and its
/// `sent` and `delivered` statuses wait in `statuses` until [`forward_statuses`] posts
/// them, as Meta does: in separate webhooks a random 0–1.5 s after the send (so sometimes
/// `delivered` first), or now and then both in one webhook, in either order. With
/// [`GraphSends::fail_one_in`], one accepted send in `n` (never a resend) is reported
/// `sent` and `failed` (131000, transient) instead, in separate webhooks that race; the
/// app sends it again once.
#[derive(Clone, Default)]
pub struct GraphSends {
    pub sent: Effects,
    statuses: Arc<Mutex<Vec<OwedWebhook>>>,
    next: Arc<AtomicUsize>,
    /// One accepted send in this many fails after acceptance (0: none).
    fail_one_in: Arc<AtomicUsize>,
    /// The wamids reported failed.
    failed: Arc<Mutex<Vec<String>>>,
}

/// A status webhook the Graph fake owes: when it is due (Unix ms) and its statuses.
type OwedWebhook = (i64, Vec<Value>);

impl Respond for GraphSends {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(mut body) = serde_json::from_slice::<Value>(&request.body) else {
            return graph_error(400, 100, "Invalid parameter");
        };
        let wamid = format!("wamid.CHAOS{}", self.next.fetch_add(1, Ordering::SeqCst));
        let to = body["to"].as_str().unwrap_or("").to_string();
        let recipient = to.trim_start_matches('+').to_string();
        let status = |kind: &str| {
            let mut status = json!({"id": wamid, "status": kind, "timestamp": "1795510900", "recipient_id": recipient});
            if let Some(callback) = body.get("biz_opaque_callback_data") {
                status["biz_opaque_callback_data"] = callback.clone();
            }
            status
        };
        let (sent, delivered) = (status("sent"), status("delivered"));
        let now = referloop::clock::system_ms();
        let mut rng = rand::thread_rng();
        let is_resend = body["biz_opaque_callback_data"]
            .as_str()
            .is_some_and(|key| key.ends_with(":resend"));
        let one_in = self.fail_one_in.load(Ordering::SeqCst);
        let fails = one_in > 0 && !is_resend && rng.gen_range(0..one_in) == 0;
        let owed = match rng.gen_range(0..10) {
            _ if fails => {
                if let Ok(mut failed) = self.failed.lock() {
                    failed.push(wamid.clone());
                }
                let mut failed = status("failed");
                failed["errors"] = json!([{"code": 131000, "title": "Something went wrong",
                    "message": "Something went wrong", "error_data": {"details": "Something went wrong"}}]);
                vec![
                    (now + rng.gen_range(0..1_500), vec![sent]),
                    (now + rng.gen_range(0..1_500), vec![failed]),
                ]
            }
            0 => vec![(now + rng.gen_range(0..1_500), vec![sent, delivered])],
            1 => vec![(now + rng.gen_range(0..1_500), vec![delivered, sent])],
            _ => vec![
                (now + rng.gen_range(0..1_500), vec![sent]),
                (now + rng.gen_range(0..1_500), vec![delivered]),
            ],
        };
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.extend(owed);
        }
        body["wamid"] = json!(wamid);
        self.sent.push(body);
        ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": recipient}],
            "messages": [{"id": wamid}]
        }))
    }
}

impl GraphSends {
    pub async fn mount(&self, meta: &MockServer, priority: u8) {
        Mock::given(method("POST"))
            .and(path(MESSAGES_PATH))
            .respond_with(self.clone())
            .with_priority(priority)
            .mount(meta)
            .await;
    }

    /// From now on, one accepted send in `n` is failed after acceptance (see the type).
    pub fn fail_one_in(&self, n: usize) {
        self.fail_one_in.store(n, Ordering::SeqCst);
    }

    /// The wamids reported failed after acceptance.
    pub fn failed(&self) -> Vec<String> {
        self.failed.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Accepted sends of one template (or of a message type, e.g. "interactive") that
    /// were not failed afterwards: what reached the recipient.
    pub fn delivered_of(&self, name: &str) -> Vec<Value> {
        let failed = self.failed();
        self.of(name)
            .into_iter()
            .filter(|b| !failed.iter().any(|w| b["wamid"] == w.as_str()))
            .collect()
    }

    /// Accepted sends of one template (or of a message type, e.g. "interactive").
    pub fn of(&self, name: &str) -> Vec<Value> {
        self.sent
            .all()
            .into_iter()
            .filter(|b| b["template"]["name"] == name || b["type"] == name)
            .collect()
    }

    /// Whether status webhooks are still owed (not yet due or not yet taken).
    pub fn owes_statuses(&self) -> bool {
        self.statuses.lock().map(|s| !s.is_empty()).unwrap_or(false)
    }

    /// The webhooks due by now.
    fn take_due_statuses(&self) -> Vec<Vec<Value>> {
        let now = referloop::clock::system_ms();
        let Ok(mut owed) = self.statuses.lock() else {
            return Vec::new();
        };
        let (due, later): (Vec<_>, Vec<_>) = owed.drain(..).partition(|(at, _)| *at <= now);
        *owed = later;
        due.into_iter().map(|(_, statuses)| statuses).collect()
    }
}

/// Posts the statuses the Graph fake owes when they are due, signed like Meta's, until
/// aborted; a webhook the app does not acknowledge is posted again, as Meta retries.
pub fn forward_statuses(graph: GraphSends, webhook_url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut owed: Vec<Vec<Value>> = Vec::new();
        loop {
            owed.extend(graph.take_due_statuses());
            let mut unacknowledged = Vec::new();
            for status in owed.drain(..) {
                let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "100000000000101",
                    "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "15550001234", "phone_number_id": PHONE_NUMBER_ID},
                        "statuses": status.clone()}}]}]});
                // The statuses the fake reports follow Meta's contract, as the tests' own
                // webhooks do.
                if let Err(off) = crate::contract::Contract::meta().check_webhook(&body) {
                    panic!("a status webhook off Meta's contract: {off}");
                }
                let body = body.to_string().into_bytes();
                let answered = client
                    .post(&webhook_url)
                    .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if !answered {
                    unacknowledged.push(status);
                }
            }
            owed = unacknowledged;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// HubSpot contacts: `POST /crm/v3/objects/contacts` creates one (an effect) and the
/// search finds created contacts by any phone digits in its filters.
#[derive(Clone, Default)]
pub struct HubSpotContacts {
    pub created: Effects,
}

impl Respond for HubSpotContacts {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        if request.url.path().ends_with("/search") {
            let wanted = body.to_string();
            let results: Vec<Value> = self
                .created
                .all()
                .into_iter()
                .filter(|c| {
                    let phone = c["properties"]["phone"].as_str().unwrap_or("");
                    !phone.is_empty() && wanted.contains(phone)
                })
                .collect();
            return ResponseTemplate::new(200).set_body_json(json!({"total": results.len(), "results": results}));
        }
        let id = format!("96{:03}", self.created.all().len());
        let contact = json!({"id": id, "properties": body["properties"].clone()});
        self.created.push(contact.clone());
        ResponseTemplate::new(201).set_body_json(contact)
    }
}

impl HubSpotContacts {
    pub async fn mount(&self, hubspot: &MockServer, priority: u8) {
        for route in ["/crm/v3/objects/contacts", "/crm/v3/objects/contacts/search"] {
            Mock::given(method("POST"))
                .and(path(route))
                .respond_with(self.clone())
                .with_priority(priority)
                .mount(hubspot)
                .await;
        }
    }
}

/// Stripe promotion codes, kept by Idempotency-Key: a repeated key replays the first
/// answer (with `Idempotent-Replayed: true`) and creates nothing.
#[derive(Clone, Default)]
pub struct StripePromotionCodes {
    pub created: Effects,
    answers: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl Respond for StripePromotionCodes {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Ok(mut answers) = self.answers.lock() else {
            return ResponseTemplate::new(500);
        };
        if let Some(first) = answers.get(&key).filter(|_| !key.is_empty()) {
            return ResponseTemplate::new(200)
                .insert_header("idempotent-replayed", "true")
                .set_body_json(first.clone());
        }
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(&request.body).into_owned().collect();
        let code = json!({"id": format!("promo_{}", answers.len() + 1), "object": "promotion_code",
            "code": form.get("code"), "max_redemptions": 1, "active": true,
            "promotion": {"type": "coupon", "coupon": form.get("promotion[coupon]")}});
        answers.insert(key.clone(), code.clone());
        self.created.push(json!({"idempotency_key": key, "code": code}));
        ResponseTemplate::new(200).set_body_json(code)
    }
}

impl StripePromotionCodes {
    pub async fn mount(&self, stripe: &MockServer, priority: u8) {
        Mock::given(method("POST"))
            .and(path("/v1/promotion_codes"))
            .respond_with(self.clone())
            .with_priority(priority)
            .mount(stripe)
            .await;
    }
}
