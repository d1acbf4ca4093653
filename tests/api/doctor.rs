//! `referloop doctor` on a healthy and on a broken account, against fakes of the Graph
//! API, HubSpot and Stripe.

use std::sync::Arc;

use referloop::app::Services;
use referloop::config::Settings;
use referloop::metrics::Metrics;
use referloop::setup::doctor::{self, Status};
use referloop::store::Backend;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fakes::{HUBSPOT_TOKEN, META_TOKEN, PHONE_NUMBER_ID};
use crate::helpers::*;
use crate::setup::Properties;

const WABA: &str = "100000000000101";
const TEMPLATES: [&str; 8] = [
    "tmpl_referral_invite",
    "tmpl_referral_flow",
    "tmpl_referral_friend_invite",
    "tmpl_referral_thanks",
    "tmpl_referral_reward",
    "tmpl_referral_reminder",
    "tmpl_referral_nudge",
    "tmpl_referral_bonus",
];

struct Account {
    subscribed: bool,
    flow_status: &'static str,
    scopes: Vec<&'static str>,
    hubspot_scopes: Vec<&'static str>,
    rejected: Option<&'static str>,
    properties: Properties,
}

fn every_property() -> Properties {
    let text = |name: &str| json!({"name": name, "type": "string", "fieldType": "text"});
    let number = |name: &str| json!({"name": name, "type": "number", "fieldType": "number"});
    let mut all = Properties::default()
        .with("/groups/referloop", json!({"name": "referloop"}))
        .with("/hs_feedback_last_nps_rating", number("hs_feedback_last_nps_rating"));
    for name in [
        "referral_code",
        "referral_status",
        "referred_by_code",
        "referrer_contact_id",
        "whatsapp_marketing_opt_out",
        "referral_reward",
        "referral_experiment_variant",
    ] {
        all = all.with(&format!("/{name}"), text(name));
    }
    for name in ["referrals_converted", "referral_rewards_total", "referral_bonus_total"] {
        all = all.with(&format!("/{name}"), number(name));
    }
    all
}

const LANGUAGES: [&str; 5] = ["en_US", "es", "pt_BR", "fr", "de"];

fn vector_key(field: &str) -> String {
    let vectors: Value =
        serde_json::from_str(include_str!("../fixtures/whatsapp/flow_endpoint_test_vector.json")).expect("json");
    vectors[field].as_str().expect("pem").to_string()
}

async fn diagnose(account: Account) -> doctor::Diagnosis {
    diagnose_with(account, &[]).await
}

/// Meta holds the test vector's public key, signed.
async fn diagnose_with(account: Account, extra_env: &[(&str, String)]) -> doctor::Diagnosis {
    let meta = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v24.0/{PHONE_NUMBER_ID}/whatsapp_business_encryption")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [{
            "business_public_key": vector_key("public_key_spki_pem"),
            "business_public_key_signature_status": "VALID"}]})))
        .mount(&meta)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v24.0/{PHONE_NUMBER_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"display_phone_number": "+1 555-000-1234",
            "verified_name": "Acme", "quality_rating": "GREEN", "messaging_limit_tier": "TIER_1K", "id": PHONE_NUMBER_ID,
            "health_status": {"can_send_message": "AVAILABLE", "entities": []}})))
        .mount(&meta)
        .await;
    Mock::given(method("GET"))
        .and(path("/v24.0/debug_token"))
        .and(query_param("input_token", META_TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"data": {"type": "SYSTEM_USER", "is_valid": true,
            "scopes": account.scopes, "granular_scopes": [
                {"scope": "whatsapp_business_management", "target_ids": [WABA]},
                {"scope": "whatsapp_business_messaging", "target_ids": [WABA]}]}}),
        ))
        .mount(&meta)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v24.0/{WABA}/flows")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"data": LANGUAGES.iter().map(|language| {
            let name = match *language {
                "en_US" => "referral_nomination".to_string(),
                other => format!("referral_nomination_{other}"),
            };
            json!({"id": format!("F-{language}"), "name": name, "status": account.flow_status})
        }).collect::<Vec<_>>()})),
        )
        .mount(&meta)
        .await;
    let apps = if account.subscribed {
        json!({"data": [{"whatsapp_business_api_data": {"id": "1", "name": "referloop"}}]})
    } else {
        json!({"data": []})
    };
    Mock::given(method("GET"))
        .and(path(format!("/v24.0/{WABA}/subscribed_apps")))
        .respond_with(ResponseTemplate::new(200).set_body_json(apps))
        .mount(&meta)
        .await;
    for name in TEMPLATES {
        let (status, reason) = match account.rejected {
            Some(reason) if name == "tmpl_referral_invite" => ("REJECTED", Value::from(reason)),
            _ => ("APPROVED", Value::Null),
        };
        Mock::given(method("GET"))
            .and(path(format!("/v24.0/{WABA}/message_templates")))
            .and(query_param("name", name))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"data": LANGUAGES.iter().map(|language| json!({
                "name": name, "language": language, "status": status, "category": "MARKETING",
                "rejected_reason": reason})).collect::<Vec<_>>()}),
            ))
            .mount(&meta)
            .await;
    }
    let hubspot = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/v2/private-apps/get/access-token-info"))
        .and(wiremock::matchers::body_json(json!({"tokenKey": HUBSPOT_TOKEN})))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"userId": 4_100_001, "hubId": 48_000_001, "appId": 3_300_001, "scopes": account.hubspot_scopes}),
        ))
        .mount(&hubspot)
        .await;
    Mock::given(path_regex(r"^/crm/v3/properties/contacts"))
        .respond_with(account.properties.clone())
        .mount(&hubspot)
        .await;
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = db.store().await;
    let mut env = base_env(&db.url);
    for (key, value) in [
        ("REFERLOOP_WHATSAPP__API_BASE", meta.uri()),
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", META_TOKEN.to_string()),
        ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", PHONE_NUMBER_ID.to_string()),
        ("REFERLOOP_WHATSAPP__WABA_ID", WABA.to_string()),
        ("REFERLOOP_HUBSPOT__API_BASE", hubspot.uri()),
        ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", HUBSPOT_TOKEN.to_string()),
        ("REFERLOOP_STRIPE__SECRET_KEY", "sk_live_doctor".to_string()),
        ("REFERLOOP_TEMPLATES__LANGUAGES", LANGUAGES.join(",")),
    ] {
        set_env(&mut env, key, &value);
    }
    for (key, value) in extra_env {
        set_env(&mut env, key, value);
    }
    let settings = Arc::new(Settings::load_from(None, env).expect("settings"));
    let services = Services::new(store, settings, Arc::new(Metrics::new())).expect("services");
    let diagnosis = doctor::run(&services).await;
    println!("{}", diagnosis.lines().join("\n"));
    crate::contract::assert_requests_on_contract(&meta, "doctor's reads").await;
    diagnosis
}

#[tokio::test]
async fn a_healthy_account_passes() {
    let diagnosis = diagnose(healthy()).await;
    let problems: Vec<_> = diagnosis.checks.iter().filter(|c| c.status == Status::Fail).collect();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(diagnosis.ok());
    assert!(diagnosis
        .checks
        .iter()
        .any(|c| c.name == "template tmpl_referral_invite (en_US)" && c.status == Status::Ok));
    assert!(diagnosis
        .checks
        .iter()
        .any(|c| c.area == "hubspot" && c.name == "token scopes" && c.status == Status::Ok));
    let json = serde_json::to_value(&diagnosis).expect("json");
    assert!(json["checks"].as_array().is_some_and(|c| c.len() > 15));
}

#[tokio::test]
async fn a_broken_account_is_explained() {
    let diagnosis = diagnose(Account {
        subscribed: false,
        flow_status: "DRAFT",
        scopes: vec!["whatsapp_business_messaging"],
        hubspot_scopes: vec!["crm.objects.contacts.read", "crm.schemas.contacts.read"],
        rejected: Some("INVALID_FORMAT"),
        properties: Properties::default(),
    })
    .await;
    assert!(!diagnosis.ok());
    let failed = |name: &str| {
        diagnosis
            .checks
            .iter()
            .find(|c| c.name.contains(name) && c.status == Status::Fail)
            .cloned()
    };
    let subscription = failed("webhook subscription").expect("unsubscribed app reported");
    assert!(subscription.fix.as_deref().unwrap_or("").contains("subscribed_apps"));
    let rejected = failed("template tmpl_referral_invite").expect("rejected template reported");
    assert!(
        rejected.detail.contains("REJECTED") && rejected.detail.contains("INVALID_FORMAT"),
        "{rejected:?}"
    );
    let missing = failed("property referral_code").expect("missing properties reported");
    assert_eq!(missing.detail, "missing");
    assert!(missing.fix.as_deref().unwrap_or("").contains("referloop setup hubspot"));
    assert!(failed("NPS property").is_some());
    assert!(failed("Flow referral_nomination").is_some_and(|c| c.detail == "DRAFT"));
    let scopes = |area: &str| {
        diagnosis
            .checks
            .iter()
            .find(|c| c.area == area && c.name == "token scopes" && c.status == Status::Fail)
            .cloned()
    };
    assert!(scopes("whatsapp").is_some_and(|c| c.detail.contains("whatsapp_business_management")));
    let hubspot = scopes("hubspot").expect("HubSpot scopes reported");
    assert_eq!(
        hubspot.detail,
        "missing crm.objects.contacts.write, crm.schemas.contacts.write"
    );
    assert!(hubspot.fix.as_deref().unwrap_or("").contains("Private apps"));
    assert!(diagnosis.lines().iter().any(|l| l.starts_with('✗')));
}

fn healthy() -> Account {
    Account {
        subscribed: true,
        flow_status: "PUBLISHED",
        scopes: vec!["whatsapp_business_management", "whatsapp_business_messaging"],
        hubspot_scopes: vec![
            "crm.objects.contacts.read",
            "crm.objects.contacts.write",
            "crm.schemas.contacts.read",
            "crm.schemas.contacts.write",
            "crm.objects.deals.read",
        ],
        rejected: None,
        properties: every_property(),
    }
}

#[tokio::test]
async fn the_flow_endpoint_key_must_be_the_one_meta_holds() {
    let endpoint = ("REFERLOOP_WHATSAPP__FLOW_KIND", "endpoint".to_string());
    let key_check = |d: &doctor::Diagnosis| {
        d.checks
            .iter()
            .find(|c| c.name == "Flow endpoint key")
            .map(|c| (c.status, c.detail.clone()))
            .expect("a key check")
    };
    let held = (
        "REFERLOOP_WHATSAPP__FLOW_PRIVATE_KEY",
        vector_key("private_key_pkcs8_pem"),
    );
    let good = diagnose_with(healthy(), &[endpoint.clone(), held]).await;
    assert_eq!(key_check(&good).0, Status::Ok, "{:?}", key_check(&good));
    let missing = diagnose_with(healthy(), std::slice::from_ref(&endpoint)).await;
    assert_eq!(key_check(&missing).0, Status::Fail);
    let (other, _) = referloop::whatsapp::flow_crypto::generate_key_pair().expect("key");
    let rotated = diagnose_with(healthy(), &[endpoint, ("REFERLOOP_WHATSAPP__FLOW_PRIVATE_KEY", other)]).await;
    let (status, detail) = key_check(&rotated);
    assert_eq!(status, Status::Fail);
    assert!(detail.contains("Meta holds another key"), "{detail}");
}
