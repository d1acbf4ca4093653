//! The Flow data endpoint: Meta's test vectors, hostile requests, each nomination rule
//! shown inside the Flow, and the nomination recorded exactly once.

use referloop::domain::state::Persisted;
use referloop::store::Backend;
use referloop::whatsapp::flow_crypto::{seal_request, SessionKey};
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::to_flow;

const VECTORS: &str = include_str!("../fixtures/whatsapp/flow_endpoint_test_vector.json");
const FLOW_PATH: &str = "/webhooks/whatsapp/flow";

fn vectors() -> Value {
    serde_json::from_str(VECTORS).expect("vector file")
}

fn private_key() -> String {
    vectors()["private_key_pkcs8_pem"].as_str().expect("pem").to_string()
}

fn public_key() -> String {
    vectors()["public_key_spki_pem"].as_str().expect("pem").to_string()
}

/// The app with the endpoint Flow and the test vector's key.
async fn endpoint_app(backend: Backend, adjust: impl FnOnce(&mut Vec<(String, String)>)) -> Lifecycle {
    let key = private_key();
    Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_WHATSAPP__FLOW_KIND", "endpoint");
        set_env(env, "REFERLOOP_WHATSAPP__FLOW_PRIVATE_KEY", &key);
        adjust(env);
    })
    .await
}

/// Posts a raw body with a signature header; returns (status, body text).
async fn post_raw(app: &TestApp, body: &[u8], signature: Option<&str>) -> (u16, String) {
    let mut request = app.client.post(app.url(FLOW_PATH)).body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    if status == 200 || status == 427 {
        assert!(content_type.starts_with("text/plain"), "{content_type}");
    }
    (status, text)
}

/// What Meta does: encrypt `request` to our public key, sign, post, and decrypt the answer.
async fn exchange(app: &TestApp, request: Value) -> (u16, Value) {
    let (body, session) = seal_request(&public_key(), &request.to_string()).expect("seal");
    let signature = referloop::signatures::sign_meta(WHATSAPP_APP_SECRET, body.as_bytes());
    let (status, text) = post_raw(app, body.as_bytes(), Some(&signature)).await;
    let answer = session
        .open_response(&text)
        .and_then(|plain| serde_json::from_str(&plain).ok())
        .unwrap_or(Value::Null);
    (status, answer)
}

fn submit(token: &str, name: &str, phone: &str, message: &str) -> Value {
    json!({"version": "3.0", "action": "data_exchange", "screen": "NOMINATE", "flow_token": token,
           "data": {"friend_name": name, "friend_phone": phone, "personal_message": message, "friend_consent": false}})
}

async fn meta_test_vectors_answer_through_the_endpoint(backend: Backend) {
    let all = vectors();
    let secret = all["app_secret"].as_str().expect("secret").to_string();
    let lc = endpoint_app(backend, |env| set_env(env, "REFERLOOP_WHATSAPP__APP_SECRET", &secret)).await;
    for vector in all["vectors"].as_array().expect("vectors") {
        let name = vector["name"].as_str().expect("name");
        let body = vector["request_body_exact"].as_str().expect("body");
        let signature = vector["x_hub_signature_256"].as_str().expect("sig");
        let session = SessionKey::from_hex(
            vector["aes_key_hex"].as_str().expect("key"),
            vector["iv_hex"].as_str().expect("iv"),
        )
        .expect("session");
        let (status, text) = post_raw(&lc.app, body.as_bytes(), Some(signature)).await;
        let answer: Value = session
            .open_response(&text)
            .and_then(|plain| serde_json::from_str(&plain).ok())
            .unwrap_or(Value::Null);
        if name == "ping" {
            assert_eq!((status, answer), (200, json!({"data": {"status": "active"}})), "{name}");
        } else {
            // The vector's token was not issued by us.
            assert_eq!(status, 427, "{name}");
            assert!(
                answer["error_msg"].as_str().is_some_and(|m| !m.is_empty()),
                "{name}: {answer}"
            );
        }
        // The same body with a byte of the ciphertext changed, signed again: 421, no detail.
        let mut tampered: Value = serde_json::from_str(body).expect("json");
        let data = tampered["encrypted_flow_data"].as_str().expect("data").to_string();
        let flipped = if data.starts_with('A') { "B" } else { "A" };
        tampered["encrypted_flow_data"] = json!(format!("{flipped}{}", &data[1..]));
        let tampered = tampered.to_string();
        let resigned = referloop::signatures::sign_meta(&secret, tampered.as_bytes());
        assert_eq!(
            post_raw(&lc.app, tampered.as_bytes(), Some(&resigned)).await,
            (421, String::new()),
            "{name}"
        );
        // The original body under a signature made with another secret, or none: 432.
        let forged = referloop::signatures::sign_meta("another secret", body.as_bytes());
        assert_eq!(post_raw(&lc.app, body.as_bytes(), Some(&forged)).await.0, 432, "{name}");
        assert_eq!(post_raw(&lc.app, body.as_bytes(), None).await.0, 432, "{name}");
    }
    let garbage = b"not json at all";
    let signature = referloop::signatures::sign_meta(&secret, garbage);
    assert_eq!(post_raw(&lc.app, garbage, Some(&signature)).await, (421, String::new()));
    let metrics = lc.app.metrics().await;
    for answer in ["active", "token_refused", "undecryptable", "signature_failed"] {
        let line = format!("referloop_flow_endpoint_answers_total{{answer=\"{answer}\"}}");
        assert!(metrics.contains(&line), "{line}");
    }
    lc.shutdown().await;
}

/// An answer's errors as (the snackbar, the field key holding an error).
fn field_error(answer: &Value) -> (String, Option<String>) {
    let data = &answer["data"];
    let field = ["friend_name_error", "friend_phone_error", "personal_message_error"]
        .iter()
        .find(|k| data[**k].as_str().is_some_and(|e| !e.is_empty()))
        .map(|k| k.to_string());
    (data["error_message"].as_str().unwrap_or_default().to_string(), field)
}

/// Answers HubSpot's search for `phone`, after `delay`, with a contact at the customer stage.
async fn hubspot_knows_customer(lc: &Lifecycle, phone: &str, delay: std::time::Duration) {
    let found = json!({"total": 1, "results": [
        {"id": "777", "properties": {"lifecyclestage": "customer", "mobilephone": phone}}]});
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/search"))
        .and(body_string_contains(phone))
        .respond_with(ResponseTemplate::new(200).set_body_json(found).set_delay(delay))
        .with_priority(1)
        .mount(&lc.hubspot)
        .await;
}

async fn each_nomination_rule_is_shown_on_its_field(backend: Backend) {
    let lc = endpoint_app(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__MAX_OPEN_REFERRALS", "2")
    })
    .await;
    let (invite_id, token, _) = to_flow(&lc).await;
    // The Flow message opens the endpoint Flow, which asks us for its first screen.
    let flow = &lc.sent_of("interactive").await[0];
    let parameters = &flow["interactive"]["action"]["parameters"];
    assert_eq!(parameters["flow_action"], "data_exchange");
    assert_eq!(parameters["flow_name"], "referral_nomination_endpoint");
    assert!(
        parameters.get("flow_action_payload").is_none(),
        "Meta refuses a payload with data_exchange"
    );
    let (status, opened) = exchange(
        &lc.app,
        json!({"version": "3.0", "action": "INIT", "flow_token": token}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(opened["screen"], "NOMINATE");
    assert_eq!(
        opened["data"]["friend_phone_error"], "",
        "the screen's error fields, empty"
    );

    let opted_out = "+447911000001";
    assert_eq!(lc.inbound(text_message(opted_out, "wamid.STOP1", "STOP")).await, 200);
    let customer = "+447911000002";
    hubspot_knows_customer(&lc, "+447911000002", std::time::Duration::ZERO).await;
    lc.settle().await;

    let texts = |key: &str| -> String {
        let en: toml::Table = include_str!("../../templates/messages/en_US.toml")
            .parse()
            .expect("toml");
        en["flow_errors"][key]
            .as_str()
            .unwrap_or_default()
            .replace("{friend_name}", "Grace")
    };
    let long = "x".repeat(501);
    let cases = [
        ("", "+447911000009", "", "invalid_name", Some("friend_name_error")),
        ("Grace", "555", "", "invalid_phone", Some("friend_phone_error")),
        ("Grace", REFERRER_PHONE, "", "self_referral", Some("friend_phone_error")),
        (
            "Grace",
            "+447911000009",
            long.as_str(),
            "message_too_long",
            Some("personal_message_error"),
        ),
        ("Grace", opted_out, "", "friend_opted_out", Some("friend_phone_error")),
        ("Grace", customer, "", "already_customer", Some("friend_phone_error")),
    ];
    for (name, phone, message, reason, field) in cases {
        let (status, answer) = exchange(&lc.app, submit(&token, name, phone, message)).await;
        assert_eq!(status, 200, "{reason}");
        assert_eq!(answer["screen"], "NOMINATE", "{reason}: the same screen");
        assert_eq!(
            field_error(&answer),
            (texts(reason), field.map(str::to_string)),
            "{reason}"
        );
    }
    // A good number finishes the Flow with the nomination's parameters.
    let (status, finished) = exchange(&lc.app, submit(&token, "Grace", "07911 000010", "Hi")).await;
    assert_eq!(status, 200);
    assert_eq!(finished["screen"], "SUCCESS");
    let params = finished["data"]["extension_message_response"]["params"].clone();
    assert_eq!(params["friend_phone"], "+447911000010");
    assert_eq!(params["flow_token"], token.as_str());
    assert!(
        lc.app.store.list_referrals(10).await.expect("referrals").is_empty(),
        "nothing recorded yet"
    );
    let reply = flow_reply(REFERRER_PHONE, "wamid.DONE1", "x", params);
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;

    // A second tap gives a second token: the friend nominated a moment ago is taken.
    let second = next_token(&lc, invite_id, "wamid.TAP2").await;
    let (_, taken) = exchange(&lc.app, submit(&second, "Grace", "+447911000010", "")).await;
    assert_eq!(
        field_error(&taken),
        (texts("already_referred"), Some("friend_phone_error".into()))
    );
    // Another friend fills the referrer's second open place.
    let (_, done) = exchange(&lc.app, submit(&second, "Lena", "+447911000011", "")).await;
    let params = done["data"]["extension_message_response"]["params"].clone();
    assert_eq!(
        lc.inbound(flow_reply(REFERRER_PHONE, "wamid.DONE2", "x", params)).await,
        200
    );
    lc.settle().await;
    let third = next_token(&lc, invite_id, "wamid.TAP3").await;
    let (_, full) = exchange(&lc.app, submit(&third, "Max", "+447911000012", "")).await;
    assert_eq!(
        field_error(&full),
        (texts("too_many_open_referrals"), None),
        "about the referrer, not a field: a snackbar"
    );

    // Tokens: forged, and used for another friend.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let (status, refused) = exchange(&lc.app, submit(&forged, "Max", "+447911000012", "")).await;
    assert_eq!(status, 427);
    assert_eq!(refused["error_msg"], texts("invalid_flow_token").as_str());
    assert_eq!(
        exchange(&lc.app, submit(&token, "Max", "+447911000012", "")).await.0,
        427,
        "a used token for another friend"
    );
    assert_eq!(
        exchange(&lc.app, json!({"action": "INIT", "flow_token": token}))
            .await
            .0,
        427,
        "a used token cannot open the Flow again"
    );
    let (status, ack) = exchange(
        &lc.app,
        json!({"action": "data_exchange", "flow_token": third, "data": {"error": "INVALID_SCREEN", "error_message": "bad\u{7}"}}),
    )
    .await;
    assert_eq!((status, ack), (200, json!({"data": {"acknowledged": true}})));
    lc.shutdown().await;
}

/// Taps "Refer someone" again and returns the new Flow's token.
async fn next_token(lc: &Lifecycle, invite_id: i64, wamid: &str) -> String {
    assert_eq!(lc.inbound(refer_tap(REFERRER_PHONE, wamid, invite_id)).await, 200);
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    flows
        .last()
        .and_then(|f| f["interactive"]["action"]["parameters"]["flow_token"].as_str())
        .expect("a new Flow")
        .to_string()
}

async fn a_finished_flow_nominates_exactly_once(backend: Backend) {
    let lc = endpoint_app(backend, |_| {}).await;
    let (_, token, flow_wamid) = to_flow(&lc).await;
    let request = submit(&token, "Zoë Ñúñez", FRIEND_PHONE, "Você vai adorar!");
    let (_, finished) = exchange(&lc.app, request.clone()).await;
    let params = finished["data"]["extension_message_response"]["params"].clone();
    assert_eq!(params["friend_name"], "Zoë Ñúñez");
    // The nfm_reply arrives twice (Meta redelivers) and once more under another id,
    // before the client's retry of the last request reaches the endpoint.
    for wamid in ["wamid.DONE", "wamid.DONE", "wamid.DONE.AGAIN"] {
        let reply = flow_reply(REFERRER_PHONE, wamid, &flow_wamid, params.clone());
        assert_eq!(lc.inbound(reply).await, 200);
    }
    lc.settle().await;
    let (status, again) = exchange(&lc.app, request).await;
    assert_eq!(status, 200, "the retried submission gets the same answer");
    assert_eq!(again, finished);
    lc.settle().await;
    let referrals = lc.app.store.list_referrals(10).await.expect("referrals");
    assert_eq!(referrals.len(), 1, "{referrals:?}");
    assert_eq!(
        referrals[0].friend_phone.as_ref().map(|p| p.as_str()),
        Some(FRIEND_PHONE)
    );
    assert_eq!(referrals[0].flow_token, token);
    let share_links = lc
        .sent_of("text")
        .await
        .into_iter()
        .filter(|m| m["to"] == REFERRER_PHONE)
        .count();
    assert_eq!(share_links, 1, "one share link (the friend gave no consent)");
    let refusals = referrals.iter().filter(|r| r.state.as_str() == "refused").count();
    assert_eq!(refusals, 0);
    lc.shutdown().await;
}

async fn hubspot_too_slow_leaves_the_customer_check_to_the_worker(backend: Backend) {
    let lc = endpoint_app(backend, |env| {
        set_env(env, "REFERLOOP_WHATSAPP__FLOW_CUSTOMER_CHECK_MS", "200")
    })
    .await;
    let (_, token, _) = to_flow(&lc).await;
    hubspot_knows_customer(&lc, "+447911000002", std::time::Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    let (status, finished) = exchange(&lc.app, submit(&token, "Grace", "+447911000002", "")).await;
    assert_eq!((status, finished["screen"].as_str()), (200, Some("SUCCESS")));
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1400),
        "did not wait for HubSpot"
    );
    let params = finished["data"]["extension_message_response"]["params"].clone();
    assert_eq!(
        lc.inbound(flow_reply(REFERRER_PHONE, "wamid.D", "x", params)).await,
        200
    );
    lc.settle().await;
    let referrals = lc.app.store.list_referrals(10).await.expect("referrals");
    assert_eq!(referrals[0].state.as_str(), "refused", "the worker found the customer");
    let told = lc.sent_of("text").await;
    assert!(
        told.iter().any(|m| m["text"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("already a customer"))),
        "{told:?}"
    );
    lc.shutdown().await;
}

/// Without a key (the static Flow), the endpoint still checks signatures first: a
/// stranger gets 432, not a 503 that would page someone.
async fn without_a_key_strangers_get_432_and_meta_503(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let (body, _) = seal_request(&public_key(), r#"{"action":"ping"}"#).expect("seal");
    assert_eq!(post_raw(&lc.app, body.as_bytes(), None).await.0, 432);
    let signature = referloop::signatures::sign_meta(WHATSAPP_APP_SECRET, body.as_bytes());
    assert_eq!(post_raw(&lc.app, body.as_bytes(), Some(&signature)).await.0, 503);
    let huge = vec![b'x'; 2 * 1024 * 1024];
    assert_eq!(post_raw(&lc.app, &huge, None).await.0, 413);
    lc.shutdown().await;
}

/// A Flow that keeps being refused is closed: it cannot look up number after number.
async fn a_flow_refused_too_often_is_closed(backend: Backend) {
    let lc = endpoint_app(backend, |env| {
        set_env(env, "REFERLOOP_WHATSAPP__FLOW_MAX_REFUSALS", "3")
    })
    .await;
    let (invite_id, token, _) = to_flow(&lc).await;
    for n in 0..3 {
        let (status, answer) = exchange(&lc.app, submit(&token, "Grace", &format!("55{n}"), "")).await;
        assert_eq!(
            (status, answer["screen"].as_str()),
            (200, Some("NOMINATE")),
            "refusal {n}"
        );
    }
    let (status, _) = exchange(&lc.app, submit(&token, "Grace", "+447911000010", "")).await;
    assert_eq!(status, 427, "even a good number, once the Flow used its refusals");
    // A new tap opens a new Flow with its own count.
    let fresh = next_token(&lc, invite_id, "wamid.TAP.AGAIN").await;
    let (status, finished) = exchange(&lc.app, submit(&fresh, "Grace", "+447911000010", "")).await;
    assert_eq!((status, finished["screen"].as_str()), (200, Some("SUCCESS")));
    lc.shutdown().await;
}

both_backends!(
    a_flow_refused_too_often_is_closed,
    without_a_key_strangers_get_432_and_meta_503,
    meta_test_vectors_answer_through_the_endpoint,
    each_nomination_rule_is_shown_on_its_field,
    a_finished_flow_nominates_exactly_once,
    hubspot_too_slow_leaves_the_customer_check_to_the_worker,
);
