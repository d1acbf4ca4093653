use referloop::store::Backend;

use crate::both_backends;
use crate::helpers::*;

async fn health_and_readiness(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let health = app.client.get(app.url("/healthz")).send().await.expect("request");
    assert_eq!(health.status(), 200);
    assert!(
        health.headers().contains_key("x-request-id"),
        "every response carries a request id"
    );
    let ready = app.client.get(app.url("/readyz")).send().await.expect("request");
    assert_eq!(ready.status(), 200);
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("request");
    assert_eq!(
        given.headers()["x-request-id"],
        "abc-123",
        "a caller's request id is kept"
    );
    app.shutdown().await;
}

async fn readiness_fails_without_migrations(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = referloop::store::Store::connect(&db.url, 2).await.expect("connect");
    assert!(store.readiness().await.is_err(), "no migrations table yet");
    store.migrate().await.expect("migrate");
    assert_eq!(store.readiness().await, Ok(()));
}

async fn unknown_routes_are_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.client.get(app.url("/nope")).send().await.expect("request");
    assert_eq!(response.status(), 404);
    let wrong_method = app
        .client
        .delete(app.url("/webhooks/stripe"))
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_method.status(), 405);
    app.shutdown().await;
}

both_backends!(
    health_and_readiness,
    readiness_fails_without_migrations,
    unknown_routes_are_404
);
