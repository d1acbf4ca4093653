//! HubSpot property writes of jobs running at once go as batch updates: never one
//! contact twice in a batch, each job with its own answer (a contact the batch left out
//! is written alone), and a batch HubSpot asks to wait for retried by every job in it.

use std::time::Duration;

use referloop::domain::state::QueueState;
use referloop::domain::work::{ItemKind, Job, JobKind};
use referloop::store::{Backend, Queue};
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::fakes::*;

/// The contacts of the writes these tests queue.
const CONTACTS: [&str; 6] = ["91001", "91002", "91003", "91004", "91005", "91006"];

/// HubSpot answers each single `PATCH` slowly, so the writes queued behind the first
/// wait together for the writer.
async fn slow_single_writes(lc: &Lifecycle) {
    Mock::given(method("PATCH"))
        .and(path_regex(r"^/crm/v3/objects/contacts/[^/]+$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "x", "properties": {}}))
                .set_delay(Duration::from_millis(400)),
        )
        .with_priority(5)
        .mount(&lc.hubspot)
        .await;
}

/// Starts the app with slow single writes and `batch_answer` (HubSpot's answer to batch
/// updates, ahead of the default), queues the writes and waits until they are done.
async fn write_all(backend: Backend, batch_answer: Option<Mock>) -> Lifecycle {
    let lc = Lifecycle::start(backend, |_| {}).await;
    slow_single_writes(&lc).await;
    if let Some(answer) = batch_answer {
        answer.with_priority(1).mount(&lc.hubspot).await;
    }
    queue_counter_writes(&lc).await;
    lc.settle().await;
    lc
}

/// A mock of HubSpot's batch updates, its answer still to give.
fn batch_updates() -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(path(HUBSPOT_BATCH_UPDATE_PATH))
}

/// One counters job per contact, and a second for the first contact.
async fn queue_counter_writes(lc: &Lifecycle) {
    for (n, contact) in CONTACTS.iter().chain([&CONTACTS[0]]).enumerate() {
        let job = Job::ReferrerCounters {
            contact_id: contact.to_string(),
            cause: "test".into(),
        };
        lc.enqueue_as(&format!("test:counters:{n}"), &job).await;
    }
}

/// The inputs' contact ids of each batch update HubSpot received.
async fn batches(lc: &Lifecycle) -> Vec<Vec<String>> {
    lc.hubspot
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == HUBSPOT_BATCH_UPDATE_PATH)
        .map(|r| batch_update_ids(&serde_json::from_slice(&r.body).unwrap_or(Value::Null)))
        .collect()
}

/// The single `PATCH`es HubSpot received, by contact.
async fn single_writes(lc: &Lifecycle) -> Vec<String> {
    lc.hubspot
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "PATCH")
        .filter_map(|r| r.url.path().rsplit('/').next().map(str::to_string))
        .collect()
}

async fn counter_jobs(lc: &Lifecycle, state: QueueState) -> Vec<referloop::store::QueueRow> {
    lc.app
        .store
        .list(Queue::Jobs, Some(state), 50)
        .await
        .expect("jobs")
        .into_iter()
        .filter(|j| j.kind == ItemKind::Job(JobKind::ReferrerCounters))
        .collect()
}

async fn writes_of_jobs_running_at_once_go_together(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    slow_single_writes(&lc).await;
    queue_counter_writes(&lc).await;
    lc.settle().await;

    let batches = batches(&lc).await;
    assert!(
        !batches.is_empty(),
        "the writes waiting behind a slow one went as a batch"
    );
    for batch in &batches {
        assert!(batch.len() >= 2, "a write alone is a PATCH: {batches:?}");
        let mut distinct = batch.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), batch.len(), "no contact twice in a batch: {batch:?}");
    }
    // Every job wrote its contact once, whether alone or in a batch: 7 writes in all.
    let written: Vec<String> = batches.concat().into_iter().chain(single_writes(&lc).await).collect();
    assert_eq!(written.len(), 7, "{written:?}");
    for contact in CONTACTS {
        assert!(written.iter().any(|c| c == contact), "{contact} written: {written:?}");
    }
    assert_eq!(written.iter().filter(|c| *c == CONTACTS[0]).count(), 2);
    assert_eq!(counter_jobs(&lc, QueueState::Done).await.len(), 7);
    lc.shutdown().await;
}

async fn a_contact_the_batch_left_out_is_written_alone(backend: Backend) {
    // HubSpot's partial failure: 207, every contact updated but the batch's last, which
    // is under `errors`.
    let partial = batch_updates().respond_with(|request: &wiremock::Request| {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let mut inputs = body["inputs"].as_array().cloned().unwrap_or_default();
        let left_out = inputs.pop().map(|i| i["id"].clone()).unwrap_or(Value::Null);
        let results: Vec<Value> = inputs
            .iter()
            .map(|i| json!({"id": i["id"], "properties": {}}))
            .collect();
        ResponseTemplate::new(207).set_body_json(json!({"status": "COMPLETE", "results": results,
                "numErrors": 1, "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND",
                "message": "Object not found.", "context": {"ids": [left_out]}}]}))
    });
    let lc = write_all(backend, Some(partial)).await;
    let batches = batches(&lc).await;
    assert!(
        !batches.is_empty(),
        "the writes waiting behind a slow one went as a batch"
    );
    // Each batch's last contact was then written alone (after the batch: the writer
    // answers a batch's jobs before it takes the next writes).
    let calls = lc.hubspot.received_requests().await.unwrap_or_default();
    let mut seen_batches = 0;
    for (n, call) in calls.iter().enumerate() {
        if call.url.path() != HUBSPOT_BATCH_UPDATE_PATH {
            continue;
        }
        let left_out = batches[seen_batches].last().cloned().unwrap_or_default();
        seen_batches += 1;
        let alone_after = calls[n + 1..]
            .iter()
            .any(|c| c.method.as_str() == "PATCH" && c.url.path().ends_with(&format!("/{left_out}")));
        assert!(
            alone_after,
            "{left_out}, left out of a batch, was written alone after it"
        );
        // The batch's others were written by it: none again alone (but the contact
        // with a second job of its own).
        let batch = &batches[seen_batches - 1];
        for contact in batch.iter().take(batch.len() - 1).filter(|c| *c != CONTACTS[0]) {
            let again = calls[n + 1..]
                .iter()
                .any(|c| c.method.as_str() == "PATCH" && c.url.path().ends_with(&format!("/{contact}")));
            assert!(!again, "{contact} was updated by the batch, not written again");
        }
    }
    assert_eq!(counter_jobs(&lc, QueueState::Done).await.len(), 7);
    lc.shutdown().await;
}

async fn a_batch_hubspot_asks_to_wait_for_is_retried_by_each_job(backend: Backend) {
    let limited = batch_updates()
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"status": "error",
            "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT", "policyName": "SECONDLY"})))
        .up_to_n_times(1);
    let lc = write_all(backend, Some(limited)).await;
    let refused = batches(&lc).await.first().cloned().unwrap_or_default();
    assert!(refused.len() >= 2, "a batch was refused: {refused:?}");
    let done = counter_jobs(&lc, QueueState::Done).await;
    assert_eq!(done.len(), 7, "{done:?}");
    // Each job of the refused batch tried again, and only those.
    let retried = done.iter().filter(|j| j.attempts == 2).count();
    assert_eq!(retried, refused.len(), "{done:?}");
    lc.shutdown().await;
}

crate::both_backends!(
    writes_of_jobs_running_at_once_go_together,
    a_contact_the_batch_left_out_is_written_alone,
    a_batch_hubspot_asks_to_wait_for_is_retried_by_each_job,
);
