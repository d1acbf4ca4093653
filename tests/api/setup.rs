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
pub struct Properties(Arc<Mutex<HashMap<String, Value>>>);

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
    assert_eq!(first.created(), 9, "the group and eight properties");
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
        9
    );
    assert!(report
        .lines()
        .iter()
        .any(|l| l.contains("POST /crm/v3/properties/contacts {")));
    assert_eq!(posts(&server).await, 0);
}

/// Stripe's webhook endpoints, kept like Stripe keeps them (the secret only at creation).
#[derive(Clone, Default)]
struct Endpoints(Arc<Mutex<Vec<Value>>>);

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
