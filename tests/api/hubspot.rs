use referloop::clock::system_ms;
use referloop::signatures::sign_hubspot_v3;
use referloop::store::{Backend, Queue};

use crate::both_backends;
use crate::helpers::*;

const FLAT_BODY: &[u8] = r#"{"hs_object_id":"90001","firstname":"Zoë","phone":"+1 (202) 555-0101","hs_feedback_last_nps_rating":"10","hs_feedback_last_survey_date":"1767225600000"}"#.as_bytes();

async fn post_signed(app: &TestApp, path_and_query: &str, body: &[u8], timestamp_ms: i64) -> reqwest::StatusCode {
    let timestamp = timestamp_ms.to_string();
    let public = format!("{PUBLIC_BASE_URL}{path_and_query}");
    let signature = sign_hubspot_v3(HUBSPOT_CLIENT_SECRET, "POST", &public, body, &timestamp);
    app.client
        .post(app.url(path_and_query))
        .header("content-type", "application/json")
        .header("x-hubspot-signature-v3", signature)
        .header("x-hubspot-request-timestamp", timestamp)
        .body(body.to_vec())
        .send()
        .await
        .expect("request")
        .status()
}

async fn stored(app: &TestApp) -> i64 {
    app.store.count_inbox_events("hubspot").await.expect("count")
}

async fn v3_signed_request_with_query_is_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let path = "/webhooks/hubspot?trigger=milestone&name=renewal%3A2026&source=wf%20one";
    assert_eq!(post_signed(&app, path, FLAT_BODY, system_ms()).await, 200);
    assert_eq!(
        post_signed(&app, path, FLAT_BODY, system_ms()).await,
        200,
        "a retry is acknowledged"
    );
    assert_eq!(stored(&app).await, 1, "and stored once");
    let rows = app.store.list(Queue::Inbox, None, 5).await.expect("list");
    assert!(
        rows[0]
            .key
            .starts_with("hubspot:contact:90001:milestone:renewal:2026:sha256:"),
        "{}",
        rows[0].key
    );
    assert_eq!(
        rows[0].kind.to_string(),
        "hubspot.workflow.milestone",
        "stored by its name"
    );

    let classic = fixture("hubspot/workflow-webhook-contact-all-properties.json");
    assert_eq!(
        post_signed(&app, "/webhooks/hubspot?trigger=nps", &classic, system_ms()).await,
        200
    );
    assert_eq!(stored(&app).await, 2);
    app.shutdown().await;
}

async fn stale_or_wrong_signatures_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let path = "/webhooks/hubspot?trigger=nps";
    assert_eq!(
        post_signed(&app, path, FLAT_BODY, system_ms() - 6 * 60 * 1000).await,
        401,
        "6 minutes old"
    );
    assert_eq!(
        post_signed(&app, path, FLAT_BODY, system_ms() + 6 * 60 * 1000).await,
        401,
        "6 minutes ahead"
    );

    // Signed for another URL (a proxy's internal one) than the public base.
    let timestamp = system_ms().to_string();
    let signature = sign_hubspot_v3(HUBSPOT_CLIENT_SECRET, "POST", &app.url(path), FLAT_BODY, &timestamp);
    let internal = app
        .client
        .post(app.url(path))
        .header("x-hubspot-signature-v3", signature)
        .header("x-hubspot-request-timestamp", timestamp)
        .body(FLAT_BODY.to_vec())
        .send()
        .await
        .expect("request");
    assert_eq!(internal.status(), 401);

    let unsigned = app
        .client
        .post(app.url(path))
        .body(FLAT_BODY.to_vec())
        .send()
        .await
        .expect("request");
    assert_eq!(unsigned.status(), 401);
    assert_eq!(stored(&app).await, 0);
    app.shutdown().await;
}

async fn malformed_bodies_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let path = "/webhooks/hubspot?trigger=nps";
    assert_eq!(post_signed(&app, path, b"{not json", system_ms()).await, 400);
    assert_eq!(
        post_signed(&app, path, br#"{"firstname":"no id"}"#, system_ms()).await,
        400
    );
    let big = vec![b'x'; 1024 * 1024 + 1];
    assert_eq!(post_signed(&app, path, &big, system_ms()).await, 413);
    assert_eq!(stored(&app).await, 0);
    app.shutdown().await;
}

async fn api_key_authentication(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| {
        remove_env(env, "REFERLOOP_HUBSPOT__CLIENT_SECRET");
        set_env(env, "REFERLOOP_HUBSPOT__WEBHOOK_API_KEY", "key-123");
    })
    .await;
    let send = |key: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url("/webhooks/hubspot?trigger=nps"))
            .body(FLAT_BODY.to_vec());
        if let Some(key) = key {
            request = request.header("X-Referloop-Key", key);
        }
        async move { request.send().await.expect("request").status() }
    };
    assert_eq!(send(Some("key-123")).await, 200);
    assert_eq!(send(Some("key-124")).await, 401);
    assert_eq!(send(None).await, 401);
    assert_eq!(stored(&app).await, 1);
    app.shutdown().await;
}

async fn unconfigured_webhook_fails_closed(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| remove_env(env, "REFERLOOP_HUBSPOT__CLIENT_SECRET")).await;
    assert_eq!(
        post_signed(&app, "/webhooks/hubspot", FLAT_BODY, system_ms()).await,
        503
    );
    assert_eq!(stored(&app).await, 0);
    app.shutdown().await;
}

both_backends!(
    v3_signed_request_with_query_is_accepted,
    stale_or_wrong_signatures_are_refused,
    malformed_bodies_are_refused,
    api_key_authentication,
    unconfigured_webhook_fails_closed,
);
