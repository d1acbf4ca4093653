use std::time::Duration;

use referloop::signatures::sign_meta;
use referloop::store::{now_ms, Backend, NewJob, Queue, QueueState};

use crate::both_backends;
use crate::helpers::*;

async fn stored_events_are_processed_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = crate::whatsapp::texts_body();
    let response = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let store = app.store.clone();
    let all_done = eventually(Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .list(Queue::Inbox, Some(QueueState::Done), 10)
                .await
                .map(|r| r.len() == 3)
                .unwrap_or(false)
        }
    })
    .await;
    assert!(all_done, "the worker processes every stored event");
    for row in app.store.list(Queue::Inbox, None, 10).await.expect("list") {
        assert_eq!(row.attempts, 1);
        assert_eq!(row.note.as_deref(), Some("text not matched to a referral"), "{row:?}");
    }
    app.shutdown().await;
}

async fn unknown_job_kinds_go_dead_and_stay_visible(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let job = NewJob {
        kind: "from.the.future".into(),
        payload: "{}".into(),
        idempotency_key: "future:1".into(),
        max_attempts: 5,
        run_at: now_ms(),
    };
    let id = app.store.enqueue_job(&job).await.expect("enqueue").id();
    let store = app.store.clone();
    let dead = eventually(Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .list(Queue::Jobs, Some(QueueState::Dead), 10)
                .await
                .map(|r| r.len() == 1)
                .unwrap_or(false)
        }
    })
    .await;
    assert!(dead);
    let rows = app
        .store
        .list(Queue::Jobs, Some(QueueState::Dead), 10)
        .await
        .expect("list");
    assert_eq!(rows[0].id, id);
    assert_eq!(rows[0].attempts, 1, "a permanent failure is not retried");
    assert!(rows[0].last_error.as_deref().unwrap_or("").contains("no handler"));
    app.shutdown().await;
}

both_backends!(
    stored_events_are_processed_once,
    unknown_job_kinds_go_dead_and_stay_visible
);
