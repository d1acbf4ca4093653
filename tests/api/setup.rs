//! `referloop setup hubspot` against a stateful fake of HubSpot's properties API: the
//! first run creates everything, a second changes nothing, a property of the wrong type is
//! reported with what to do, and `--dry-run` creates nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use referloop::app::Services;
use referloop::config::Settings;
use referloop::metrics::Metrics;
use referloop::setup::{hubspot, Finding};
use referloop::store::Backend;
use serde_json::{json, Value};
use wiremock::matchers::{header, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::fakes::HUBSPOT_TOKEN;
use crate::helpers::*;

/// Contact properties and groups, kept like HubSpot keeps them.
#[derive(Clone, Default)]
pub struct Properties(pub Arc<Mutex<HashMap<String, Value>>>);

impl Properties {
    pub fn with(self, name: &str, definition: Value) -> Self {
        if let Ok(mut all) = self.0.lock() {
            all.insert(name.to_string(), definition);
        }
        self
    }
}

impl Respond for Properties {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request
            .url
            .path()
            .trim_start_matches("/crm/v3/properties/contacts")
            .to_string();
        let Ok(mut all) = self.0.lock() else {
            return ResponseTemplate::new(500);
        };
        match request.method.as_str() {
            "GET" => match all.get(&path) {
                Some(found) => ResponseTemplate::new(200).set_body_json(found),
                None => ResponseTemplate::new(404).set_body_json(json!({"status": "error",
                    "message": "Unable to find property", "category": "OBJECT_NOT_FOUND"})),
            },
            "POST" => {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                let name = body["name"].as_str().unwrap_or_default().to_string();
                let key = if path == "/groups" {
                    format!("/groups/{name}")
                } else {
                    format!("/{name}")
                };
                if all.contains_key(&key) {
                    return ResponseTemplate::new(409)
                        .set_body_json(json!({"status": "error", "category": "CONFLICT"}));
                }
                all.insert(key, body.clone());
                ResponseTemplate::new(201).set_body_json(body)
            }
            _ => ResponseTemplate::new(405),
        }
    }
}

async fn start(properties: &Properties) -> (MockServer, Services, TestDatabase) {
    let server = MockServer::start().await;
    Mock::given(path_regex(r"^/crm/v3/properties/contacts"))
        .and(header("authorization", format!("Bearer {HUBSPOT_TOKEN}").as_str()))
        .respond_with(properties.clone())
        .mount(&server)
        .await;
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = db.store().await;
    let mut env = base_env("sqlite://unused.db");
    for (key, value) in [
        ("REFERLOOP_HUBSPOT__API_BASE", server.uri()),
        ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", HUBSPOT_TOKEN.to_string()),
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "live".to_string()),
        ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "100000000000202".to_string()),
    ] {
        set_env(&mut env, key, &value);
    }
    let settings = Arc::new(Settings::load_from(None, env).expect("settings"));
    let services = Services::new(store, settings, Arc::new(Metrics::new())).expect("services");
    (server, services, db)
}

async fn posts(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

#[tokio::test]
async fn setup_hubspot_creates_once_then_changes_nothing() {
    let properties = Properties::default();
    let (server, services, _db) = start(&properties).await;
    let first = hubspot::setup(&services.hubspot, &services.settings, false)
        .await
        .expect("first run");
    println!("{}", first.lines().join("\n"));
    assert!(first.ok());
    assert_eq!(first.created(), 11, "the group and ten properties");
    let definition = properties
        .0
        .lock()
        .map(|p| p.get("/referrals_converted").cloned())
        .ok()
        .flatten();
    let definition = definition.expect("created");
    assert_eq!(
        (definition["type"].as_str(), definition["groupName"].as_str()),
        (Some("number"), Some("referloop"))
    );
    let created_calls = posts(&server).await;
    let second = hubspot::setup(&services.hubspot, &services.settings, false)
        .await
        .expect("second run");
    assert!(second.ok());
    assert_eq!(second.created(), 0);
    assert!(
        second.findings.iter().all(|f| matches!(f, Finding::Present(_))),
        "{:?}",
        second.lines()
    );
    assert_eq!(posts(&server).await, created_calls, "a second run sends no creation");
}

#[tokio::test]
async fn a_property_of_the_wrong_type_is_reported() {
    let properties = Properties::default().with(
        "/referrals_converted",
        json!({"name": "referrals_converted", "type": "string", "fieldType": "text"}),
    );
    let (_server, services, _db) = start(&properties).await;
    let report = hubspot::setup(&services.hubspot, &services.settings, false)
        .await
        .expect("run");
    assert!(!report.ok());
    let wrong: Vec<String> = report.lines().into_iter().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(
        wrong[0].contains("referrals_converted has type string") && wrong[0].contains("number"),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn dry_run_creates_nothing() {
    let properties = Properties::default();
    let (server, services, _db) = start(&properties).await;
    let report = hubspot::setup(&services.hubspot, &services.settings, true)
        .await
        .expect("dry run");
    assert_eq!(report.created(), 0);
    assert_eq!(
        report
            .findings
            .iter()
            .filter(|f| matches!(f, Finding::WouldCreate { .. }))
            .count(),
        11
    );
    assert!(report
        .lines()
        .iter()
        .any(|l| l.contains("POST /crm/v3/properties/contacts {")));
    assert_eq!(posts(&server).await, 0);
}

/// Stripe's webhook endpoints, kept like Stripe keeps them (the secret only at creation).
/// Stripe's webhook endpoints, kept like Stripe keeps them.
#[derive(Clone, Default)]
pub struct Endpoints(pub Arc<Mutex<Vec<Value>>>);

impl Respond for Endpoints {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(mut all) = self.0.lock() else {
            return ResponseTemplate::new(500);
        };
        if request.method.as_str() == "GET" {
            return ResponseTemplate::new(200)
                .set_body_json(json!({"object": "list", "data": *all, "has_more": false}));
        }
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body).into_owned().collect();
        let events: Vec<&str> = form
            .iter()
            .filter(|(k, _)| k == "enabled_events[]")
            .map(|(_, v)| v.as_str())
            .collect();
        let url = form
            .iter()
            .find(|(k, _)| k == "url")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let endpoint = json!({"id": format!("we_{}", all.len() + 1), "object": "webhook_endpoint", "url": url,
                              "enabled_events": events, "status": "enabled"});
        all.push(endpoint.clone());
        let mut answer = endpoint;
        answer["secret"] = json!("whsec_created_once");
        ResponseTemplate::new(200).set_body_json(answer)
    }
}

#[tokio::test]
async fn setup_stripe_creates_the_endpoint_once_and_checks_coupons() {
    let stripe = MockServer::start().await;
    let endpoints = Endpoints::default();
    Mock::given(wiremock::matchers::path("/v1/webhook_endpoints"))
        .and(header("authorization", "Bearer sk_live_setup"))
        .respond_with(endpoints.clone())
        .mount(&stripe)
        .await;
    Mock::given(wiremock::matchers::path("/v1/coupons/RFR-FRIEND"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!({"error": {"type": "invalid_request_error",
            "message": "No such coupon: 'RFR-FRIEND'"}})),
        )
        .mount(&stripe)
        .await;
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = db.store().await;
    let mut env = base_env(&db.url);
    for (key, value) in [
        ("REFERLOOP_STRIPE__API_BASE", stripe.uri()),
        ("REFERLOOP_STRIPE__SECRET_KEY", "sk_live_setup".to_string()),
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "live".to_string()),
        ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "100000000000202".to_string()),
        ("REFERLOOP_REWARDS__FRIEND__KIND", "stripe_promotion_code".to_string()),
        ("REFERLOOP_REWARDS__FRIEND__STRIPE_COUPON", "RFR-FRIEND".to_string()),
    ] {
        set_env(&mut env, key, &value);
    }
    let settings = Arc::new(Settings::load_from(None, env).expect("settings"));
    let services = Services::new(store, settings, Arc::new(Metrics::new())).expect("services");
    let first = referloop::setup::stripe::setup(&services.stripe, &services.settings, false)
        .await
        .expect("first run");
    println!("{}", first.report.lines().join("\n"));
    assert_eq!(first.new_secret.as_deref(), Some("whsec_created_once"));
    assert_eq!(first.report.created(), 1);
    let created = endpoints.0.lock().map(|e| e[0].clone()).expect("endpoint");
    assert_eq!(created["url"], format!("{PUBLIC_BASE_URL}/webhooks/stripe"));
    assert_eq!(created["enabled_events"].as_array().map(Vec::len), Some(4));
    assert!(!first.report.ok(), "the missing coupon is reported");
    assert!(first
        .report
        .lines()
        .iter()
        .any(|l| l.starts_with('✗') && l.contains("RFR-FRIEND")));
    let second = referloop::setup::stripe::setup(&services.stripe, &services.settings, false)
        .await
        .expect("second run");
    assert_eq!(second.new_secret, None);
    assert_eq!(second.report.created(), 0, "{:?}", second.report.lines());
    assert_eq!(endpoints.0.lock().map(|e| e.len()).unwrap_or(0), 1, "one endpoint");
}

/// The Graph API's management side for one account: templates, Flows, subscriptions.
#[derive(Clone, Default)]
pub struct GraphAccount {
    pub state: Arc<Mutex<GraphState>>,
}

#[derive(Default)]
pub struct GraphState {
    pub templates: Vec<Value>,
    pub flows: Vec<Value>,
    pub subscribed: bool,
    /// Validation errors the next Flow JSON upload gets.
    flow_errors: Vec<Value>,
    uploads: Vec<String>,
    /// Flow creation bodies, in order.
    pub flow_creations: Vec<Value>,
    /// The phone number's uploaded public key.
    public_key: Option<String>,
}

/// A form body's fields (Meta documents these calls as `multipart/form-data`).
fn form(request: &Request) -> serde_json::Map<String, Value> {
    let content_type = request
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    crate::contract::form_fields(content_type, &request.body).unwrap_or_default()
}

impl Respond for GraphAccount {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(mut state) = self.state.lock() else {
            return ResponseTemplate::new(500);
        };
        let path = request.url.path().trim_start_matches("/v24.0").to_string();
        let ok = |body: Value| ResponseTemplate::new(200).set_body_json(body);
        match (request.method.as_str(), path.as_str()) {
            ("GET", p) if p.ends_with("/message_templates") => {
                let name = request
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "name")
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default();
                let data: Vec<Value> = state
                    .templates
                    .iter()
                    .filter(|t| t["name"] == name.as_str())
                    .cloned()
                    .collect();
                ok(json!({"data": data}))
            }
            ("POST", p) if p.ends_with("/message_templates") => {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                let template = json!({"id": format!("T{}", state.templates.len() + 1), "name": body["name"],
                    "language": body["language"], "status": "PENDING", "category": body["category"],
                    "components": body["components"]});
                state.templates.push(template.clone());
                ok(json!({"id": template["id"], "status": "PENDING", "category": body["category"]}))
            }
            ("GET", p) if p.ends_with("/flows") => ok(json!({"data": state.flows})),
            ("GET", p) if p.ends_with("/whatsapp_business_encryption") => {
                let data = match &state.public_key {
                    Some(key) => json!([{"business_public_key": key, "business_public_key_signature_status": "VALID"}]),
                    None => json!([]),
                };
                ok(json!({"data": data}))
            }
            ("POST", p) if p.ends_with("/whatsapp_business_encryption") => {
                let key = form(request)
                    .get("business_public_key")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                state.public_key = key;
                ok(json!({"success": true}))
            }
            ("POST", p) if p.ends_with("/flows") => {
                let body = Value::Object(form(request));
                state.flow_creations.push(body.clone());
                let id = format!("F{}", state.flows.len() + 1);
                state
                    .flows
                    .push(json!({"id": id, "name": body["name"], "status": "DRAFT"}));
                ok(json!({"id": id}))
            }
            ("POST", p) if p.ends_with("/assets") => {
                state.uploads.push(String::from_utf8_lossy(&request.body).to_string());
                let errors = std::mem::take(&mut state.flow_errors);
                ok(json!({"success": true, "validation_errors": errors}))
            }
            ("POST", p) if p.ends_with("/publish") => {
                let id = p.trim_start_matches('/').trim_end_matches("/publish").to_string();
                for flow in state.flows.iter_mut().filter(|f| f["id"] == id.as_str()) {
                    flow["status"] = json!("PUBLISHED");
                }
                ok(json!({"success": true}))
            }
            ("GET", p) if p.ends_with("/subscribed_apps") => {
                let data = if state.subscribed {
                    json!([{"whatsapp_business_api_data": {"id": "1"}}])
                } else {
                    json!([])
                };
                ok(json!({"data": data}))
            }
            ("POST", p) if p.ends_with("/subscribed_apps") => {
                state.subscribed = true;
                ok(json!({"success": true}))
            }
            // A Flow read by its id (`?fields=name,status`).
            ("GET", p) if state.flows.iter().any(|f| f["id"] == p.trim_start_matches('/')) => {
                let id = p.trim_start_matches('/');
                let flow = state.flows.iter().find(|f| f["id"] == id).cloned();
                ok(flow.unwrap_or(Value::Null))
            }
            _ => ResponseTemplate::new(404).set_body_json(json!({"error": {"message": "unknown path", "code": 100}})),
        }
    }
}

async fn whatsapp_services(account: &GraphAccount, business_name: &str) -> (MockServer, Services, TestDatabase) {
    whatsapp_services_with(account, business_name, &[]).await
}

async fn whatsapp_services_with(
    account: &GraphAccount,
    business_name: &str,
    extra_env: &[(&str, String)],
) -> (MockServer, Services, TestDatabase) {
    let meta = MockServer::start().await;
    Mock::given(path_regex(r"^/v24\.0/"))
        .and(header(
            "authorization",
            format!("Bearer {}", crate::fakes::META_TOKEN).as_str(),
        ))
        .respond_with(account.clone())
        .mount(&meta)
        .await;
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = db.store().await;
    let mut env = base_env(&db.url);
    for (key, value) in [
        ("REFERLOOP_WHATSAPP__API_BASE", meta.uri()),
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", crate::fakes::META_TOKEN.to_string()),
        (
            "REFERLOOP_WHATSAPP__PHONE_NUMBER_ID",
            crate::fakes::PHONE_NUMBER_ID.to_string(),
        ),
        ("REFERLOOP_WHATSAPP__WABA_ID", "100000000000101".to_string()),
        ("REFERLOOP_WHATSAPP__BUSINESS_NAME", business_name.to_string()),
    ] {
        set_env(&mut env, key, &value);
    }
    for (key, value) in extra_env {
        set_env(&mut env, key, value);
    }
    let settings = Arc::new(Settings::load_from(None, env).expect("settings"));
    let services = Services::new(store, settings, Arc::new(Metrics::new())).expect("services");
    (meta, services, db)
}

#[tokio::test]
async fn setup_whatsapp_submits_creates_publishes_and_subscribes_once() {
    let account = GraphAccount::default();
    let languages = [("REFERLOOP_TEMPLATES__LANGUAGES", "en_US,es,pt_BR,fr,de".to_string())];
    let (meta, services, _db) = whatsapp_services_with(&account, "Acme Bikes", &languages).await;
    let first = referloop::setup::whatsapp::setup(&services.whatsapp, &services.settings, false).await;
    println!("{}", first.lines().join("\n"));
    assert!(first.ok(), "{:?}", first.lines());
    assert_eq!(
        first.created(),
        46,
        "eight templates and a Flow in each of five languages, the subscription"
    );
    {
        let state = account.state.lock().expect("state");
        assert_eq!(state.templates.len(), 40);
        assert_eq!(state.flows.len(), 5);
        let spanish_flow = state
            .templates
            .iter()
            .find(|t| t["name"] == "tmpl_referral_flow" && t["language"] == "es")
            .expect("the Spanish Flow template");
        assert_eq!(spanish_flow["status"], "PENDING");
        let spanish_upload = state
            .uploads
            .iter()
            .find(|u| u.contains("Invitar a un amigo") || u.contains("amig"))
            .expect("a Spanish Flow JSON");
        assert!(!spanish_upload.contains("{{"), "every text filled in");
        assert!(
            state.flow_creations.iter().all(|f| f.get("endpoint_uri").is_none()),
            "the static Flow has no endpoint"
        );
        assert_eq!(state.public_key, None, "no key configured, none uploaded");
        assert!(state.subscribed);
        assert_eq!(state.flows[0]["status"], "PUBLISHED");
        let upload = &state.uploads[0];
        assert!(
            upload.contains("Acme Bikes") && !upload.contains("<BUSINESS_NAME>"),
            "business name filled in"
        );
        assert!(upload.contains("name=\"asset_type\"\r\n\r\nFLOW_JSON"));
    }
    assert!(first
        .lines()
        .iter()
        .any(|l| l.contains("set templates.flow_id = \"F1\"")));
    let calls = meta.received_requests().await.map(|r| r.len()).unwrap_or(0);
    let second = referloop::setup::whatsapp::setup(&services.whatsapp, &services.settings, false).await;
    assert_eq!(second.created(), 0, "{:?}", second.lines());
    let posts_after = meta
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .skip(calls)
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts_after, 0, "a second run changes nothing");
    assert!(second
        .lines()
        .iter()
        .any(|l| l.contains("tmpl_referral_invite (en_US): pending review")));
    crate::contract::assert_requests_on_contract(&meta, "setup whatsapp").await;
}

#[tokio::test]
async fn setup_whatsapp_reports_rejections_and_flow_errors() {
    let account = GraphAccount::default();
    {
        let mut state = account.state.lock().expect("state");
        state
            .templates
            .push(json!({"id": "T9", "name": "tmpl_referral_invite", "language": "en_US",
            "status": "REJECTED", "category": "MARKETING", "rejected_reason": "INVALID_FORMAT"}));
        state.flow_errors = vec![
            json!({"error": "INVALID_PROPERTY", "message": "Invalid value for label",
            "line_start": 46, "line_end": 46}),
        ];
    }
    let (_meta, services, _db) = whatsapp_services(&account, "Acme Bikes").await;
    let report = referloop::setup::whatsapp::setup(&services.whatsapp, &services.settings, false).await;
    println!("{}", report.lines().join("\n"));
    assert!(!report.ok());
    let lines = report.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('✗') && l.contains("REJECTED, INVALID_FORMAT")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('✗') && l.contains("Invalid value for label (line 46)")),
        "{lines:?}"
    );
    let published = account
        .state
        .lock()
        .map(|s| s.flows[0]["status"].clone())
        .expect("state");
    assert_eq!(published, "DRAFT", "not published with errors");
    let (_meta, no_name, _db2) = whatsapp_services(&GraphAccount::default(), "").await;
    let report = referloop::setup::whatsapp::setup(&no_name.whatsapp, &no_name.settings, true).await;
    assert!(
        report
            .lines()
            .iter()
            .any(|l| l.contains("whatsapp.business_name is not set")),
        "{:?}",
        report.lines()
    );
}

#[tokio::test]
async fn setup_whatsapp_creates_endpoint_flows_and_uploads_the_public_key_once() {
    let vectors: Value =
        serde_json::from_str(include_str!("../fixtures/whatsapp/flow_endpoint_test_vector.json")).expect("json");
    let private = vectors["private_key_pkcs8_pem"].as_str().expect("pem").to_string();
    let public = vectors["public_key_spki_pem"].as_str().expect("pem").to_string();
    let account = GraphAccount::default();
    let env = [
        ("REFERLOOP_WHATSAPP__FLOW_KIND", "endpoint".to_string()),
        ("REFERLOOP_WHATSAPP__FLOW_PRIVATE_KEY", private),
        ("REFERLOOP_TEMPLATES__LANGUAGES", "en_US,de".to_string()),
    ];
    let (meta, services, _db) = whatsapp_services_with(&account, "Acme Bikes", &env).await;
    let first = referloop::setup::whatsapp::setup(&services.whatsapp, &services.settings, false).await;
    println!("{}", first.lines().join("\n"));
    assert!(first.ok(), "{:?}", first.lines());
    assert!(first
        .lines()
        .iter()
        .any(|l| l.contains("Flow endpoint public key: uploaded and signed (VALID)")));
    {
        let state = account.state.lock().expect("state");
        assert_eq!(state.public_key.as_deref(), Some(public.as_str()));
        let uri = format!("{PUBLIC_BASE_URL}/webhooks/whatsapp/flow");
        assert!(state.flow_creations.iter().all(|f| f["endpoint_uri"] == uri.as_str()));
        assert_eq!(state.flows.len(), 2);
        let german = state
            .uploads
            .iter()
            .find(|u| u.contains("Einladung"))
            .expect("German Flow");
        for expected in [
            "\"data_api_version\": \"3.0\"",
            "\"name\": \"data_exchange\"",
            "${data.friend_phone_error}",
        ] {
            assert!(german.contains(expected), "{expected}");
        }
        let names: Vec<&str> = state.flows.iter().filter_map(|f| f["name"].as_str()).collect();
        assert_eq!(
            names,
            ["referral_nomination_endpoint", "referral_nomination_endpoint_de"],
            "Flows of their own, apart from any static ones"
        );
        let german_button = state
            .templates
            .iter()
            .find(|t| t["name"] == "tmpl_referral_flow" && t["language"] == "de");
        let buttons = german_button.and_then(|t| {
            t["components"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "BUTTONS").cloned())
        });
        let button = buttons.map(|b| b["buttons"][0].clone()).unwrap_or(Value::Null);
        assert_eq!(
            button["flow_name"], "referral_nomination_endpoint_de",
            "the German template opens the German Flow"
        );
        assert_eq!(button["flow_action"], "data_exchange");
        assert!(button.get("navigate_screen").is_none());
    }
    let second = referloop::setup::whatsapp::setup(&services.whatsapp, &services.settings, false).await;
    assert_eq!(second.created(), 0, "{:?}", second.lines());
    assert!(second
        .lines()
        .iter()
        .any(|l| l.contains("Flow endpoint public key: signed (VALID)")));
    crate::contract::assert_requests_on_contract(&meta, "setup whatsapp with the endpoint Flow").await;
}
