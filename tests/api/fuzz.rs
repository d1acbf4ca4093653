//! Correctly signed, mutated provider payloads against the running router and worker:
//! whatever the values, every request is answered 200, 400 or 413 (never a 5xx, never a
//! dropped connection from a panic), and the worker ends every stored event done or dead.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use referloop::clock::system_ms;
use referloop::domain::state::Persisted;
use referloop::signatures::{sign_hubspot_v3, sign_meta, sign_stripe};
use referloop::store::{Backend, Queue};
use serde_json::Value;

use crate::both_backends;
use crate::helpers::*;

/// The seed payloads: one per route and shape.
fn seeds() -> Vec<(&'static str, Value)> {
    let json = |path: &str| serde_json::from_slice::<Value>(&fixture(path)).unwrap_or(Value::Null);
    vec![
        ("whatsapp", json("whatsapp/text_message.json")),
        ("whatsapp", json("whatsapp/inbound_flow_reply.json")),
        ("whatsapp", json("whatsapp/status_failed_131050.json")),
        ("whatsapp", json("whatsapp/user_preferences_stop.json")),
        ("whatsapp", json("whatsapp/button_reply.json")),
        ("hubspot?trigger=nps", json("hubspot/workflow-webhook-custom-body.json")),
        (
            "hubspot?trigger=conversion",
            json("hubspot/workflow-webhook-deal-all-properties.json"),
        ),
        (
            "hubspot?trigger=milestone&name=renewal",
            json("hubspot/workflow-webhook-contact-all-properties.json"),
        ),
        ("stripe", json("stripe/event-checkout-session-completed.json")),
        ("stripe", json("stripe/event-invoice-paid.json")),
    ]
}

/// A hostile value: odd strings (control characters, NUL, path climbing, huge numbers,
/// Unicode), other JSON types, or nesting.
fn hostile_value() -> impl Strategy<Value = Value> {
    let strings = prop_oneof![
        Just("".to_string()),
        Just("\u{0}".to_string()),
        Just("90001/../../../properties/contacts/referral_code".to_string()),
        Just("a\nINFO forged line\r\t".to_string()),
        Just("+0000000000000000000000000".to_string()),
        Just("refer:-9223372036854775808".to_string()),
        Just("refer:99999999999999999999".to_string()),
        Just("Zoë Ñúñez 😀 \u{202e}".to_string()),
        "\\PC{0,40}",
    ];
    let leaf = prop_oneof![
        strings.prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(nodes).sum(),
        Value::Object(map) => map.values().map(nodes).sum(),
        _ => 0,
    }
}

/// Replaces the `pick`-th node of `value` (in depth-first order) with `replacement`.
fn mutate(value: &mut Value, pick: usize, replacement: &Value) -> bool {
    fn walk(value: &mut Value, pick: usize, seen: &mut usize, replacement: &Value) -> bool {
        if *seen == pick {
            *value = replacement.clone();
            return true;
        }
        *seen += 1;
        match value {
            Value::Array(items) => items.iter_mut().any(|v| walk(v, pick, seen, replacement)),
            Value::Object(map) => map.values_mut().any(|v| walk(v, pick, seen, replacement)),
            _ => false,
        }
    }
    let mut seen = 0;
    walk(value, pick, &mut seen, replacement)
}

async fn post(app: &TestApp, route: &str, body: Vec<u8>) -> Result<u16, String> {
    let (path, query) = route.split_once('?').unwrap_or((route, ""));
    let url_path = if query.is_empty() {
        format!("/webhooks/{path}")
    } else {
        format!("/webhooks/{path}?{query}")
    };
    let mut request = app.client.post(app.url(&url_path)).body(body.clone());
    request = match path {
        "whatsapp" => request.header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body)),
        "hubspot" => {
            let timestamp = system_ms().to_string();
            let signature = sign_hubspot_v3(
                HUBSPOT_CLIENT_SECRET,
                "POST",
                &format!("{PUBLIC_BASE_URL}{url_path}"),
                &body,
                &timestamp,
            );
            request
                .header("x-hubspot-signature-v3", signature)
                .header("x-hubspot-request-timestamp", timestamp)
        }
        _ => request.header(
            "stripe-signature",
            sign_stripe(STRIPE_WEBHOOK_SECRET, &body, system_ms() / 1000),
        ),
    };
    request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

async fn signed_mutated_payloads_never_fail_the_server(backend: Backend) {
    // 120 in the ordinary test run; `scripts/faults` asks for more.
    let cases: usize = std::env::var("REFERLOOP_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(120);
    let app = TestApp::spawn(backend).await;
    let seeds = seeds();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(Config::default().rng_algorithm),
    );
    let replacement = hostile_value();
    let mut answered = std::collections::BTreeMap::new();
    for case in 0..cases {
        let (route, seed) = &seeds[case % seeds.len()];
        let mut body = seed.clone();
        let mutations = 1 + case % 3;
        for m in 0..mutations {
            let value = replacement
                .new_tree(&mut runner)
                .map(|t| t.current())
                .unwrap_or(Value::Null);
            let pick = (case * 7 + m * 13) % nodes(&body).max(1);
            // Node 0 is the whole body: replace a part of it instead.
            mutate(&mut body, pick.max(1), &value);
        }
        let status = post(&app, route, body.to_string().into_bytes()).await;
        let status = status.unwrap_or_else(|e| panic!("case {case} ({route}): the connection failed: {e}\n{body}"));
        assert!(
            matches!(status, 200 | 400 | 413),
            "case {case} ({route}) answered {status}:\n{body}"
        );
        *answered.entry(status).or_insert(0) += 1;
    }
    println!("{backend:?}: {cases} mutated payloads answered {answered:?}");
    let store = app.store.clone();
    let worked_through = eventually(Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            store
                .list(Queue::Inbox, None, 10_000)
                .await
                .map(|rows| {
                    rows.iter()
                        .all(|r| matches!(r.state.as_str(), "done" | "dead" | "failed"))
                })
                .unwrap_or(false)
        }
    })
    .await;
    assert!(worked_through, "every stored event was handled");
    let response = app.client.get(app.url("/healthz")).send().await.expect("alive");
    assert_eq!(response.status(), 200);
    app.shutdown().await;
}

both_backends!(signed_mutated_payloads_never_fail_the_server);
