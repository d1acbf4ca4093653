use referloop::clock::system_ms;
use referloop::signatures::sign_stripe;
use referloop::store::Backend;

use crate::both_backends;
use crate::helpers::*;

async fn post(app: &TestApp, body: &[u8], signature: Option<String>) -> reqwest::StatusCode {
    let mut request = app.client.post(app.url("/webhooks/stripe")).body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.expect("request").status()
}

async fn signed_event_is_stored_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("stripe/event-checkout-session-completed.json");
    let now = system_ms() / 1000;
    assert_eq!(
        post(&app, &body, Some(sign_stripe(STRIPE_WEBHOOK_SECRET, &body, now))).await,
        200
    );
    assert_eq!(
        post(&app, &body, Some(sign_stripe(STRIPE_WEBHOOK_SECRET, &body, now + 1))).await,
        200
    );
    assert_eq!(app.store.count_inbox_events("stripe").await.expect("count"), 1);
    app.shutdown().await;
}

async fn tampered_or_stale_events_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("stripe/event-invoice-paid.json");
    let now = system_ms() / 1000;
    let signature = sign_stripe(STRIPE_WEBHOOK_SECRET, &body, now);
    let tampered = String::from_utf8(body.clone())
        .expect("utf8")
        .replacen("paid", "void", 1)
        .into_bytes();
    assert_eq!(post(&app, &tampered, Some(signature)).await, 401);
    assert_eq!(
        post(&app, &body, Some(sign_stripe(STRIPE_WEBHOOK_SECRET, &body, now - 301))).await,
        401
    );
    assert_eq!(
        post(&app, &body, Some(sign_stripe("whsec_other", &body, now))).await,
        401
    );
    assert_eq!(post(&app, &body, None).await, 401);
    let no_id = br#"{"object":"event","type":"invoice.paid"}"#;
    assert_eq!(
        post(&app, no_id, Some(sign_stripe(STRIPE_WEBHOOK_SECRET, no_id, now))).await,
        400
    );
    assert_eq!(app.store.count_inbox_events("stripe").await.expect("count"), 0);
    app.shutdown().await;
}

both_backends!(signed_event_is_stored_once, tampered_or_stale_events_are_refused);
