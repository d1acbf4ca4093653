use referloop::signatures::sign_meta;
use referloop::store::{Backend, Queue};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

/// A batch of two statuses and one message, as Meta may send it: two changes of one
/// entry (a value holds either statuses or messages).
pub fn batch_body() -> Vec<u8> {
    let metadata = json!({"display_phone_number": "12025550100", "phone_number_id": "100000000000202"});
    on_contract(json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000101", "changes": [
            {"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": metadata,
                "statuses": [
                    {"id": "wamid.AAA", "status": "sent", "timestamp": "1795510800", "recipient_id": "12025550101"},
                    {"id": "wamid.AAA", "status": "delivered", "timestamp": "1795510803", "recipient_id": "12025550101"}
                ]}},
            {"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": metadata,
                "contacts": [{"profile": {"name": "Zoë Ñúñez 😀"}, "wa_id": "12025550101"}],
                "messages": [{"from": "12025550101", "id": "wamid.BBB", "timestamp": "1795510810",
                              "type": "text", "text": {"body": "Olá, Zoë 😀"}}]}}
        ]}]
    }))
}

/// A fixture as if from Meta, checked against Meta's contract first.
fn on_contract(payload: serde_json::Value) -> Vec<u8> {
    if let Err(off) = crate::contract::Contract::meta().check_webhook(&payload) {
        panic!("a test webhook off Meta's contract: {off}");
    }
    payload.to_string().into_bytes()
}

/// Three inbound texts that match no referral: each is handled and marked done.
pub fn texts_body() -> Vec<u8> {
    let message = |n: u32| {
        json!({"from": "447911123456", "id": format!("wamid.TEXT{n}"), "timestamp": "1795510810",
               "type": "text", "text": {"body": format!("hello {n}")}})
    };
    on_contract(json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "12025550100", "phone_number_id": "100000000000202"},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": "447911123456"}],
            "messages": [message(1), message(2), message(3)]
        }}]}]
    }))
}

async fn post(app: &TestApp, body: &[u8], signature: Option<String>) -> reqwest::StatusCode {
    let mut request = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.send().await.expect("request").status()
}

async fn stored(app: &TestApp) -> i64 {
    app.store.count_inbox_events("whatsapp").await.expect("count")
}

async fn handshake_echoes_challenge(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ok = app
        .client
        .get(app.url(&format!(
            "/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={WHATSAPP_VERIFY_TOKEN}"
        )))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/plain"));
    assert_eq!(ok.text().await.expect("body"), "1158201444");

    for query in [
        "hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong",
        "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=test-verify-token",
        "hub.mode=subscribe&hub.verify_token=test-verify-token",
        "",
    ] {
        let refused = app
            .client
            .get(app.url(&format!("/webhooks/whatsapp?{query}")))
            .send()
            .await
            .expect("request");
        assert_eq!(refused.status(), 403, "query {query:?}");
    }
    app.shutdown().await;
}

async fn signed_batch_is_stored_once_per_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = batch_body();
    for _ in 0..3 {
        assert_eq!(
            post(&app, &body, Some(sign_meta(WHATSAPP_APP_SECRET, &body))).await,
            200
        );
    }
    assert_eq!(stored(&app).await, 3);
    let keys: Vec<String> = app
        .store
        .list(Queue::Inbox, None, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(keys.contains(&"whatsapp:status:wamid.AAA:sent".to_string()), "{keys:?}");
    assert!(keys.contains(&"whatsapp:status:wamid.AAA:delivered".to_string()));
    assert!(keys.contains(&"whatsapp:message:wamid.BBB".to_string()));
    app.shutdown().await;
}

async fn meta_fixture_with_escaped_unicode_verifies(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| {
        set_env(
            env,
            "REFERLOOP_WHATSAPP__APP_SECRET",
            "test_app_secret_do_not_use_0123456789abcdef",
        )
    })
    .await;
    let body = fixture("whatsapp/text_message_signed.json");
    let signature = "sha256=117bcea32c8a2e05e91e5684fc43c69a2e0636efb4ef88d2c528f679308a71cb";
    assert_eq!(post(&app, &body, Some(signature.into())).await, 200);
    assert_eq!(stored(&app).await, 1);
    app.shutdown().await;
}

async fn bad_signatures_are_refused_and_store_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = batch_body();
    let good = sign_meta(WHATSAPP_APP_SECRET, &body);

    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    assert_eq!(post(&app, &tampered, Some(good.clone())).await, 401, "one byte changed");
    assert_eq!(
        post(&app, &body, Some(sign_meta("another-secret", &body))).await,
        401,
        "wrong secret"
    );
    assert_eq!(post(&app, &body, None).await, 401, "no header");
    assert_eq!(
        post(&app, &body, Some("sha256=nothex".into())).await,
        401,
        "malformed header"
    );
    assert_eq!(
        post(&app, &body, Some(good.replace("sha256=", "sha1="))).await,
        401,
        "wrong scheme"
    );
    assert_eq!(stored(&app).await, 0);
    app.shutdown().await;
}

async fn malformed_and_oversized_bodies_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let not_json = b"{\"object\": \"whatsapp_business_account\", ".to_vec();
    assert_eq!(
        post(&app, &not_json, Some(sign_meta(WHATSAPP_APP_SECRET, &not_json))).await,
        400
    );
    let wrong_object = br#"{"object":"page","entry":[]}"#.to_vec();
    assert_eq!(
        post(&app, &wrong_object, Some(sign_meta(WHATSAPP_APP_SECRET, &wrong_object))).await,
        400
    );

    // Just over the 4 MiB limit; a 3 MB batch (Meta's maximum) is accepted.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    assert_eq!(post(&app, &big, Some(sign_meta(WHATSAPP_APP_SECRET, &big))).await, 413);
    let mut three_mb = batch_body();
    three_mb.extend(std::iter::repeat_n(b' ', 3 * 1000 * 1000));
    assert_eq!(
        post(&app, &three_mb, Some(sign_meta(WHATSAPP_APP_SECRET, &three_mb))).await,
        200
    );
    assert_eq!(stored(&app).await, 3);
    app.shutdown().await;
}

async fn unconfigured_webhook_fails_closed(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| {
        remove_env(env, "REFERLOOP_WHATSAPP__APP_SECRET");
        remove_env(env, "REFERLOOP_WHATSAPP__VERIFY_TOKEN");
    })
    .await;
    let body = batch_body();
    assert_eq!(post(&app, &body, Some(sign_meta("", &body))).await, 503);
    assert_eq!(
        post(&app, &body, Some(sign_meta(WHATSAPP_APP_SECRET, &body))).await,
        503
    );
    let handshake = app
        .client
        .get(app.url("/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=1&hub.verify_token="))
        .send()
        .await
        .expect("request");
    assert_eq!(handshake.status(), 503);
    assert_eq!(stored(&app).await, 0);
    app.shutdown().await;
}

both_backends!(
    handshake_echoes_challenge,
    signed_batch_is_stored_once_per_event,
    meta_fixture_with_escaped_unicode_verifies,
    bad_signatures_are_refused_and_store_nothing,
    malformed_and_oversized_bodies_are_refused,
    unconfigured_webhook_fails_closed,
);
