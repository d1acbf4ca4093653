//! Local fakes of the Graph API and HubSpot, answering in the documented shapes and
//! checking what we send (paths, bearer tokens); tests inspect the received requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use referloop::clock::system_ms;
use referloop::domain::state::Persisted;
use referloop::signatures::{sign_hubspot_v3, sign_meta};
use referloop::store::{Backend, Queue};
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::contract::{Contract, MetaContract};
use crate::helpers::*;

pub const META_TOKEN: &str = "EAAtest-meta-token";
pub const HUBSPOT_TOKEN: &str = "pat-test-hubspot-token";
pub const PHONE_NUMBER_ID: &str = "100000000000202";
pub const MESSAGES_PATH: &str = "/v24.0/100000000000202/messages";
pub const REFERRER_PHONE: &str = "+447911123456";
pub const FRIEND_PHONE: &str = "+447911123457";

/// Accepts every send with a fresh wamid, like Meta's 200 answer.
pub struct GraphAccepts(pub AtomicUsize);

impl Respond for GraphAccepts {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let to = body["to"].as_str().unwrap_or("").to_string();
        ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to.trim_start_matches('+')}],
            "messages": [{"id": format!("wamid.OUT{n}")}]
        }))
    }
}

/// HubSpot's batch update of contacts, as it answers one that updated every input: 200
/// with each contact under `results`. A batch that names a contact twice is refused
/// (400), as HubSpot refuses duplicate ids.
pub struct HubSpotBatchUpdates;

/// The batch update path (`POST`), beside `/crm/v3/objects/contacts/{id}`.
pub const HUBSPOT_BATCH_UPDATE_PATH: &str = "/crm/v3/objects/contacts/batch/update";

/// The contact ids a batch update's body carries, in order.
pub fn batch_update_ids(body: &Value) -> Vec<String> {
    body["inputs"]
        .as_array()
        .map(|inputs| {
            inputs
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Respond for HubSpotBatchUpdates {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let ids = batch_update_ids(&body);
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        if ids.is_empty() || distinct.len() != ids.len() || ids.len() > 100 {
            return ResponseTemplate::new(400).set_body_json(json!({"status": "error",
                "message": "Duplicate IDs found in batch input", "correlationId": "test", "category": "VALIDATION_ERROR"}));
        }
        let results: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "properties": {}, "archived": false}))
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE", "results": results,
            "startedAt": "2026-12-05T09:00:00.000Z", "completedAt": "2026-12-05T09:00:00.100Z"}))
    }
}

/// A Graph error in Meta's shape.
pub fn graph_error(status: u16, code: i64, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": "OAuthException", "code": code,
                  "error_data": {"messaging_product": "whatsapp", "details": message}, "fbtrace_id": "Atest"}
    }))
}

pub const API_TOKEN: &str = "test-api-token";
pub const STRIPE_KEY: &str = "sk_test_referloop";

pub struct Lifecycle {
    pub app: TestApp,
    pub meta: MockServer,
    /// Every request to `meta` checked against Meta's OpenAPI document.
    pub contract: MetaContract,
    pub hubspot: MockServer,
    pub stripe: MockServer,
    /// Some fake answers in real time (Meta's statuses seconds after a send): then
    /// [`Lifecycle::settle`] waits instead of moving the app's clock past them.
    outside_in_real_time: std::sync::atomic::AtomicBool,
}

impl Lifecycle {
    /// Starts the fakes (with their default answers, lowest priority) and the app.
    pub async fn start(backend: Backend, adjust: impl FnOnce(&mut Vec<(String, String)>)) -> Lifecycle {
        let meta = MockServer::start().await;
        let hubspot = MockServer::start().await;
        // First of all: a request off Meta's contract is answered as Meta answers an
        // invalid parameter, and recorded for the test's end.
        let contract = MetaContract::default();
        Mock::given(contract.clone())
            .respond_with(graph_error(
                400,
                100,
                "(#100) Invalid parameter: off Meta's published contract",
            ))
            .with_priority(1)
            .mount(&meta)
            .await;
        Mock::given(method("POST"))
            .and(path(MESSAGES_PATH))
            .and(header("authorization", format!("Bearer {META_TOKEN}").as_str()))
            .respond_with(GraphAccepts(AtomicUsize::new(0)))
            .with_priority(10)
            .mount(&meta)
            .await;
        let bearer = format!("Bearer {HUBSPOT_TOKEN}");
        Mock::given(method("PATCH"))
            .and(path_regex(r"^/crm/v3/objects/contacts/[^/]+$"))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "x", "properties": {}})))
            .with_priority(10)
            .mount(&hubspot)
            .await;
        Mock::given(method("POST"))
            .and(path("/crm/v3/objects/contacts/search"))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"total": 0, "results": []})))
            .with_priority(10)
            .mount(&hubspot)
            .await;
        Mock::given(method("POST"))
            .and(path(HUBSPOT_BATCH_UPDATE_PATH))
            .and(header("authorization", bearer.as_str()))
            .respond_with(HubSpotBatchUpdates)
            .with_priority(10)
            .mount(&hubspot)
            .await;
        Mock::given(method("POST"))
            .and(path("/crm/v3/objects/contacts"))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "95001", "properties": {}})))
            .with_priority(10)
            .mount(&hubspot)
            .await;
        let stripe = MockServer::start().await;
        let meta_uri = meta.uri();
        let hubspot_uri = hubspot.uri();
        let stripe_uri = stripe.uri();
        let token_hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(API_TOKEN.as_bytes()))
        };
        let app = TestApp::spawn_with(backend, |env| {
            for (key, value) in [
                ("REFERLOOP_WHATSAPP__API_BASE", meta_uri.as_str()),
                ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", META_TOKEN),
                ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", PHONE_NUMBER_ID),
                ("REFERLOOP_HUBSPOT__API_BASE", hubspot_uri.as_str()),
                ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", HUBSPOT_TOKEN),
                ("REFERLOOP_HUBSPOT__REQUESTS_PER_10S", "1000"),
                ("REFERLOOP_HUBSPOT__SEARCHES_PER_SECOND", "100"),
                ("REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "1,1,1"),
                ("REFERLOOP_WORKER__RETRY_JITTER", "0"),
                ("REFERLOOP_PROGRAMME__DEFAULT_REGION", "GB"),
                ("REFERLOOP_STRIPE__API_BASE", stripe_uri.as_str()),
                ("REFERLOOP_STRIPE__SECRET_KEY", STRIPE_KEY),
                ("REFERLOOP_API__TOKENS", token_hash.as_str()),
            ] {
                set_env(env, key, value);
            }
            adjust(env);
        })
        .await;
        Lifecycle {
            app,
            meta,
            contract,
            hubspot,
            stripe,
            outside_in_real_time: Default::default(),
        }
    }

    /// Says that a fake now answers in real time (see [`Lifecycle::settle`]).
    pub fn outside_in_real_time(&self) {
        self.outside_in_real_time
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops the app; fails the test if any Graph call it made was off Meta's contract.
    pub async fn shutdown(self) {
        self.app.shutdown().await;
        let test = std::thread::current().name().unwrap_or("a test").to_string();
        self.contract.assert_kept(&test);
    }

    /// A signed HubSpot workflow webhook with a flat body.
    pub async fn trigger(&self, query: &str, body: Value) -> u16 {
        let path_and_query = format!("/webhooks/hubspot?{query}");
        let bytes = body.to_string().into_bytes();
        let timestamp = system_ms().to_string();
        let signature = sign_hubspot_v3(
            HUBSPOT_CLIENT_SECRET,
            "POST",
            &format!("{PUBLIC_BASE_URL}{path_and_query}"),
            &bytes,
            &timestamp,
        );
        self.app
            .client
            .post(self.app.url(&path_and_query))
            .header("x-hubspot-signature-v3", signature)
            .header("x-hubspot-request-timestamp", timestamp)
            .body(bytes)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    /// An NPS trigger for a contact.
    pub async fn nps(&self, contact_id: &str, phone: &str, first_name: &str, score: &str, survey_date: &str) -> u16 {
        let body = json!({"hs_object_id": contact_id, "firstname": first_name, "mobilephone": phone,
                          "hs_feedback_last_nps_rating": score, "hs_feedback_last_survey_date": survey_date});
        self.trigger("trigger=nps", body).await
    }

    /// A signed WhatsApp webhook carrying `value` (messages, statuses or user_preferences).
    pub async fn whatsapp(&self, field: &str, value: Value) -> u16 {
        let mut value = value;
        // Meta names the sender of each message in `contacts`.
        let senders: Vec<Value> = value["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["from"].as_str())
            .map(|from| json!({"profile": {"name": "Ana"}, "wa_id": from}))
            .collect();
        if !senders.is_empty() {
            value["contacts"] = Value::Array(senders);
        }
        value["messaging_product"] = json!("whatsapp");
        value["metadata"] = json!({"display_phone_number": "15550001234", "phone_number_id": PHONE_NUMBER_ID});
        let payload = json!({"object": "whatsapp_business_account",
                          "entry": [{"id": "100000000000101", "changes": [{"field": field, "value": value}]}]});
        // What the tests post as if from Meta follows Meta's contract too.
        if let Err(off) = Contract::meta().check_webhook(&payload) {
            panic!("a test webhook off Meta's contract: {off}");
        }
        let body = payload.to_string().into_bytes();
        self.app
            .client
            .post(self.app.url("/webhooks/whatsapp"))
            .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
            .body(body)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    pub async fn inbound(&self, message: Value) -> u16 {
        self.whatsapp("messages", json!({"messages": [message]})).await
    }

    pub async fn status(&self, wamid: &str, status: &str, error: Option<(i64, &str)>) -> u16 {
        let mut item =
            json!({"id": wamid, "status": status, "timestamp": "1795510900", "recipient_id": "447911123457"});
        if let Some((code, title)) = error {
            item["errors"] = json!([{"code": code, "title": title, "message": title}]);
        }
        self.whatsapp("messages", json!({"statuses": [item]})).await
    }

    /// A status carrying Meta's `pricing` object (`billable`, `pricing_model`, `type`,
    /// `category`), as Meta sends on `sent` and on the `delivered` or `read` that bills.
    pub async fn status_priced(&self, wamid: &str, status: &str, billable: bool, kind: &str, category: &str) -> u16 {
        let item = json!({"id": wamid, "status": status, "timestamp": "1795510900", "recipient_id": "447911123457",
                          "pricing": {"billable": billable, "pricing_model": "PMP", "type": kind, "category": category}});
        self.whatsapp("messages", json!({"statuses": [item]})).await
    }

    /// Waits until nothing is running or due soon (queued or waiting for a retry within
    /// ten seconds) in either queue; items held for later (reward holds) are left alone.
    /// When all that is left is due soon, the app's clock is moved to it rather than
    /// waited for, unless a fake answers in real time: a clock moved past a status Meta
    /// has yet to post would make the app resend what Meta accepted.
    pub async fn settle(&self) {
        let store = self.app.store.clone();
        let move_clock = !self.outside_in_real_time.load(std::sync::atomic::Ordering::Relaxed);
        let settled = eventually(Duration::from_secs(30), || {
            let store = store.clone();
            async move {
                let now = store.now_ms();
                let mut next = None::<i64>;
                // The inbox first: an event's jobs are queued in the commit that ends it.
                for queue in [Queue::Inbox, Queue::Jobs] {
                    match store.outlook(queue, now).await {
                        Ok(outlook) if outlook.busy == 0 => {
                            if let Some(at) = outlook.next_run_at {
                                next = Some(next.map_or(at, |earlier| earlier.min(at)));
                            }
                        }
                        _ => return false,
                    }
                }
                match next {
                    Some(at) if at <= now + 10_000 => {
                        if move_clock {
                            store.clock().advance(Duration::from_millis((at - now).max(1) as u64));
                        }
                        false
                    }
                    _ => true,
                }
            }
        })
        .await;
        assert!(
            settled,
            "queues did not settle: {:?}",
            self.app.store.list(Queue::Jobs, None, 50).await
        );
    }

    /// Bodies of the messages sent to the Graph API, in order.
    pub async fn sent(&self) -> Vec<Value> {
        self.meta
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == MESSAGES_PATH)
            .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
            .collect()
    }

    /// Sent messages of one template (or of type "text"/"interactive" when `name` is that).
    pub async fn sent_of(&self, name: &str) -> Vec<Value> {
        self.sent()
            .await
            .into_iter()
            .filter(|b| b["template"]["name"] == name || b["type"] == name)
            .collect()
    }

    /// HubSpot requests as (method, path, body).
    /// HubSpot's calls, in order, each a method, a path and a body; a batch update of
    /// contacts counts as the `PATCH` of each contact it carries, in its order (the jobs
    /// running at once write together; what each wrote is what the tests check).
    pub async fn hubspot_calls(&self) -> Vec<(String, String, Value)> {
        let mut calls = Vec::new();
        for r in self.hubspot.received_requests().await.unwrap_or_default() {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            match (r.method.as_str(), r.url.path()) {
                ("POST", HUBSPOT_BATCH_UPDATE_PATH) => {
                    for input in body["inputs"].as_array().cloned().unwrap_or_default() {
                        let id = input["id"].as_str().unwrap_or_default();
                        calls.push((
                            "PATCH".to_string(),
                            format!("/crm/v3/objects/contacts/{id}"),
                            json!({"properties": input["properties"]}),
                        ));
                    }
                }
                (m, p) => calls.push((m.to_string(), p.to_string(), body)),
            }
        }
        calls
    }

    /// `POST /api/v1/conversions` with the test token.
    pub async fn api_conversion(&self, body: Value) -> (u16, Value) {
        let request = self
            .app
            .client
            .post(self.app.url("/api/v1/conversions"))
            .bearer_auth(API_TOKEN)
            .json(&body);
        let (status, answer) = crate::api_document::checked(request).await;
        (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
    }

    /// `POST /api/v1/referrals/{id}/void` with the test token.
    pub async fn void(&self, referral_id: i64) -> (u16, Value) {
        let request = self
            .app
            .client
            .post(self.app.url(&format!("/api/v1/referrals/{referral_id}/void")))
            .bearer_auth(API_TOKEN);
        let (status, answer) = crate::api_document::checked(request).await;
        (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
    }

    /// A signed Stripe event.
    pub async fn stripe_event(&self, event: Value) -> u16 {
        let body = event.to_string().into_bytes();
        let signature = referloop::signatures::sign_stripe(STRIPE_WEBHOOK_SECRET, &body, system_ms() / 1000);
        self.app
            .client
            .post(self.app.url("/webhooks/stripe"))
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    /// Queues `job` under idempotency key `key`: the same work as a job already done, as
    /// if it had been held up until now.
    pub async fn enqueue_as(&self, key: &str, job: &referloop::domain::work::Job) {
        let late = referloop::store::NewJob {
            idempotency_key: key.to_string(),
            ..referloop::store::NewJob::new(job, 3, self.app.store.now_ms())
        };
        self.app.store.enqueue_job(&late).await.expect("enqueue");
    }

    /// HubSpot's contact search finds `contact` (one result, in HubSpot's shape), ahead
    /// of the default empty answer; only for a search whose body names `phone`, when given.
    pub async fn hubspot_search_finds(&self, phone: Option<&str>, contact: Value) {
        let mut search = wiremock::Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path("/crm/v3/objects/contacts/search"));
        if let Some(phone) = phone {
            search = search.and(wiremock::matchers::body_string_contains(phone));
        }
        search
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({"total": 1, "results": [contact]})))
            .with_priority(1)
            .mount(&self.hubspot)
            .await;
    }

    /// The properties of each PATCH to `contact` among the HubSpot calls after the first
    /// `before`.
    pub async fn contact_writes_since(&self, before: usize, contact: &str) -> Vec<Value> {
        let suffix = format!("/contacts/{contact}");
        self.hubspot_calls()
            .await
            .into_iter()
            .skip(before)
            .filter(|(m, p, _)| m == "PATCH" && p.ends_with(&suffix))
            .map(|(_, _, b)| b["properties"].clone())
            .collect()
    }

    /// Queues the referrer's status jobs `late` of `invite_id`, as if each had been held
    /// up until now, under the keys `test:late:1`, `test:late:2`, ….
    pub async fn enqueue_late_referrer_statuses(
        &self,
        invite_id: i64,
        contact: &str,
        late: &[(referloop::domain::state::InviteState, Option<&str>)],
    ) {
        for (n, (status, code)) in late.iter().enumerate() {
            let job = referloop::domain::work::Job::ReferrerStatus {
                invite_id,
                contact_id: contact.to_string(),
                status: *status,
                code: code.map(str::to_string),
            };
            self.enqueue_as(&format!("test:late:{}", n + 1), &job).await;
        }
    }

    /// A reader of the jobs' notes by idempotency key (empty when none).
    pub async fn job_notes(&self) -> impl Fn(&str) -> String {
        let jobs = self.app.store.list(Queue::Jobs, None, 500).await.expect("jobs");
        move |key| {
            jobs.iter()
                .find(|j| j.key == key)
                .and_then(|j| j.note.clone())
                .unwrap_or_default()
        }
    }

    pub async fn invite_id(&self) -> i64 {
        let invites = self.app.store.list_invites(10).await.expect("invites");
        invites
            .iter()
            .find(|i| i.state.as_str() != "ineligible")
            .map(|i| i.id)
            .expect("an invite")
    }
}

/// The quick-reply tap on "Refer someone".
pub fn refer_tap(from: &str, wamid: &str, invite_id: i64) -> Value {
    json!({"from": from.trim_start_matches('+'), "id": wamid, "timestamp": "1795510950", "type": "button",
           "button": {"payload": format!("refer:{invite_id}"), "text": "Refer someone"}})
}

/// The Flow's completion message.
pub fn flow_reply(from: &str, wamid: &str, context_id: &str, response: Value) -> Value {
    json!({"context": {"from": "15550001234", "id": context_id}, "from": from.trim_start_matches('+'),
           "id": wamid, "timestamp": "1795511100", "type": "interactive",
           "interactive": {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent",
                           "response_json": response.to_string()}}})
}

pub fn text_message(from: &str, wamid: &str, body: &str) -> Value {
    json!({"from": from.trim_start_matches('+'), "id": wamid, "timestamp": "1795511200", "type": "text",
           "text": {"body": body}})
}

/// Graph answers with `template` for every send whose body matches `partial`.
pub async fn mount_graph_answer(meta: &MockServer, partial: Value, template: ResponseTemplate, times: Option<u64>) {
    let mut mock = Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(wiremock::matchers::body_partial_json(partial))
        .respond_with(template)
        .with_priority(1);
    if let Some(n) = times {
        mock = mock.up_to_n_times(n);
    }
    mock.mount(meta).await;
}
