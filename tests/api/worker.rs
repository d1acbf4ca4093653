use std::time::Duration;

use referloop::clock::system_ms;
use referloop::domain::inbox::{InboxKind, NewInboxEvent, Source};
use referloop::domain::messaging::{MessagePurpose, MessageStatus};
use referloop::domain::state::Persisted;
use referloop::store::{Acceptance, Backend, Lease, Queue, QueueState};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

async fn stored_events_are_processed_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(app.post_signed_whatsapp(crate::whatsapp::texts_body()).await, 200);
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

/// A job of a kind this binary does not know (a newer replica queued it during a rolling
/// deploy) is retried on the schedule, for a replica that knows it, and ends dead saying
/// so once its attempts are spent; it stays listed throughout.
async fn unknown_job_kinds_wait_for_a_newer_replica_then_go_dead(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let waiting = enqueue_unknown_job(&app, "from.the.future", "future:1", 5, system_ms()).await;
    let spent = enqueue_unknown_job(&app, "from.the.future", "future:2", 1, system_ms()).await;
    let store = app.store.clone();
    let tried = eventually(Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            // Tried, and the outcome recorded (a claimed job is `running` until then).
            let rows = store.list(Queue::Jobs, None, 10).await.unwrap_or_default();
            rows.iter()
                .filter(|r| r.attempts >= 1 && r.state != QueueState::Running)
                .count()
                == 2
        }
    })
    .await;
    assert!(tried, "both were tried and their outcomes recorded");
    let rows = app.store.list(Queue::Jobs, None, 10).await.expect("list");
    let row = |id: i64| rows.iter().find(|r| r.id == id).expect("listed");
    let (waiting, spent) = (row(waiting), row(spent));
    assert_eq!(
        (waiting.state, waiting.attempts),
        (QueueState::Failed, 1),
        "waiting for its retry: {waiting:?}"
    );
    let error = waiting.last_error.as_deref().unwrap_or("");
    assert!(
        error.contains("no handler") && error.contains("newer replica"),
        "{error}"
    );
    assert_eq!((spent.state, spent.attempts), (QueueState::Dead, 1), "{spent:?}");
    assert!(spent.last_error.as_deref().unwrap_or("").contains("no handler"));
    app.shutdown().await;
}

/// A flood of inbox events (statuses being retried) while sends are queued: the sends
/// have loops of their own and finish while most of the flood still waits. The bound:
/// every send is done before a quarter of the flood has been handled even once (a starved
/// send would wait for all of it; the margin leaves room for a fast machine's inbox loop).
async fn sends_are_not_starved_by_an_inbox_flood(backend: Backend) {
    const FLOOD: usize = 5_000;
    const SENDS: usize = 50;
    let app = TestApp::spawn_with(backend, |env| {
        set_env(env, "REFERLOOP_WORKER__INBOX_CONCURRENCY", "1");
        set_env(env, "REFERLOOP_WORKER__JOB_CONCURRENCY", "1");
        // One event a claim, so that the flood lasts (in batches it is gone in a moment):
        // what is measured is the loops' independence, not the inbox's speed.
        set_env(env, "REFERLOOP_WORKER__INBOX_BATCH", "1");
    })
    .await;
    // Statuses for messages nobody sent: each is retried later, keeping the inbox busy.
    let flood: Vec<NewInboxEvent> = (0..FLOOD)
        .map(|n| NewInboxEvent {
            source: Source::WhatsApp,
            dedupe_key: format!("status:wamid.FLOOD{n}:delivered"),
            kind: InboxKind::WhatsAppStatus,
            payload: json!({"status": {"id": format!("wamid.FLOOD{n}"), "status": "delivered"}}).to_string(),
        })
        .collect();
    app.store.insert_inbox_events(&flood, 5).await.expect("flood");
    let started = std::time::Instant::now();
    let mut tx = app.store.begin(None).await.expect("begin");
    for n in 0..SENDS {
        let body = json!({"messaging_product": "whatsapp", "to": "+447911123456", "type": "text",
                          "text": {"body": format!("message {n}")}});
        let message = test_message(&format!("fairness:{n}"), MessagePurpose::Reply, "+447911123456", &body);
        tx.insert_message(&message).await.expect("message");
    }
    tx.commit("").await.expect("commit");
    let store = app.store.clone();
    let all_sent = eventually(Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            store
                .list_messages(1_000)
                .await
                .map(|m| m.iter().filter(|m| m.status.as_str() == "accepted").count() == SENDS)
                .unwrap_or(false)
        }
    })
    .await;
    let elapsed = started.elapsed();
    let untouched = app
        .store
        .list(Queue::Inbox, None, 10_000)
        .await
        .expect("inbox")
        .iter()
        .filter(|i| i.attempts == 0)
        .count();
    println!(
        "{backend:?}: {SENDS} sends done in {elapsed:?} with {untouched} of {FLOOD} flooded events not yet claimed"
    );
    assert!(all_sent, "the sends completed during the flood");
    assert!(
        untouched >= FLOOD * 3 / 4,
        "sends finished before a quarter of the flood was handled ({untouched} of {FLOOD} untouched)"
    );
    app.shutdown().await;
}

/// A send interrupted after Meta accepted it, whose message Meta then reported failed (its
/// status found the message by its callback data, recorded the failure and queued what it
/// means): when the send job runs again it is done, not dead, and sends nothing.
async fn a_send_failed_in_its_status_ends_done(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let worker = hand_worker(&app);
    let body = json!({"messaging_product": "whatsapp", "to": "+447911123456", "type": "text",
                      "text": {"body": "hello"}, "biz_opaque_callback_data": "failed:later"});
    let message = test_message("failed:later", MessagePurpose::Reply, "+447911123456", &body);
    let mut tx = app.store.begin(None).await.expect("begin");
    let id = tx.insert_message(&message).await.expect("insert").expect("new");
    tx.set_message_status(
        id,
        MessageStatus::Queued,
        MessageStatus::Failed,
        Some("wamid.LATER"),
        Some((Some(131000), "Something went wrong")),
    )
    .await
    .expect("failed");
    tx.commit("").await.expect("commit");

    assert!(worker.work_once_from(Queue::Jobs).await.expect("the send job"));
    let jobs = app.store.list(Queue::Jobs, None, 10).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, QueueState::Done, "{jobs:?}");
    assert!(
        jobs[0].note.as_deref().unwrap_or("").contains("wamid.LATER"),
        "{jobs:?}"
    );
    app.shutdown().await;
}

/// A status webhook for a message nobody sent (no callback data of ours): settled at once.
fn stranger_status(wamid: &str) -> Vec<u8> {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "12025550100", "phone_number_id": "100000000000202"},
            "statuses": [{"id": wamid, "status": "delivered", "timestamp": "1795510803",
                          "recipient_id": "12025550101"}]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

/// Finished items are deleted once they are older than their keep: Meta's statuses after
/// `worker.keep_done_statuses_seconds` (an hour), other events and jobs after
/// `worker.keep_done_days` (a week). Dead items and items not yet due stay, however old.
/// A status redelivered after its item was deleted is stored again and changes nothing.
async fn finished_items_are_deleted_after_their_keep(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let worker = hand_worker(&app);
    let store = app.store.clone();
    assert_eq!(app.post_signed_whatsapp(stranger_status("wamid.STRANGER1")).await, 200);
    assert_eq!(app.post_signed_whatsapp(crate::whatsapp::texts_body()).await, 200);
    enqueue_unknown_job(&app, "from.the.future", "future:dead", 1, store.now_ms()).await;
    let month = 30 * 24 * 3_600_000;
    let later = enqueue_unknown_job(&app, "from.the.future", "future:later", 5, store.now_ms() + month).await;
    let db = raw_database(&app).await;
    sqlx::query(
        "INSERT INTO jobs (kind, payload, idempotency_key, state, max_attempts, run_at, created_at, finished_at) \
         VALUES ('hubspot.link', '{}', 'done:1', 'done', 5, $1, $1, $1)",
    )
    .bind(store.now_ms())
    .execute(&db)
    .await
    .expect("a finished job");
    while worker.work_once().await.expect("work") {}
    let count = |queue, state: QueueState| {
        let store = store.clone();
        async move { store.list(queue, Some(state), 100).await.expect("list").len() }
    };
    assert_eq!(
        count(Queue::Inbox, QueueState::Done).await,
        4,
        "a status and three texts"
    );
    assert_eq!(count(Queue::Jobs, QueueState::Dead).await, 1);

    assert_eq!(worker.prune_finished().await.expect("prune"), 0, "nothing is old yet");
    store.clock().advance(Duration::from_secs(2 * 3600));
    assert_eq!(
        worker.prune_finished().await.expect("prune"),
        1,
        "the status, after an hour"
    );
    let kinds: Vec<String> = store
        .list(Queue::Inbox, None, 100)
        .await
        .expect("list")
        .iter()
        .map(|row| row.key.clone())
        .collect();
    assert_eq!(kinds.len(), 3);
    assert!(kinds.iter().all(|key| !key.contains("STRANGER1")), "{kinds:?}");

    // Deleted, the status is a stranger again: stored anew, and it changes nothing.
    assert_eq!(app.post_signed_whatsapp(stranger_status("wamid.STRANGER1")).await, 200);
    while worker.work_once().await.expect("work") {}
    assert_eq!(count(Queue::Inbox, QueueState::Done).await, 4);

    store.clock().advance(Duration::from_secs(7 * 24 * 3600));
    assert_eq!(
        worker.prune_finished().await.expect("prune"),
        5,
        "after a week: the texts, the status stored again and the finished job"
    );
    assert_eq!(count(Queue::Inbox, QueueState::Done).await, 0);
    let jobs = store.list(Queue::Jobs, None, 100).await.expect("list");
    let left: Vec<(String, QueueState)> = jobs.iter().map(|row| (row.key.clone(), row.state)).collect();
    assert_eq!(
        left.len(),
        2,
        "the dead job waits for a person, the one due in a month for its time: {left:?}"
    );
    assert!(jobs
        .iter()
        .any(|row| row.id == later && row.state == QueueState::Queued));
    assert!(jobs.iter().any(|row| row.state == QueueState::Dead));
    db.close().await;
    app.shutdown().await;
}

both_backends!(
    a_send_failed_in_its_status_ends_done,
    finished_items_are_deleted_after_their_keep,
    stored_events_are_processed_once,
    unknown_job_kinds_wait_for_a_newer_replica_then_go_dead,
    sends_are_not_starved_by_an_inbox_flood,
    statuses_are_applied_in_batches,
    a_sends_acceptance_ends_its_job_in_the_same_statement,
);

/// Meta's acceptance of a send is recorded by one statement, which on PostgreSQL also ends
/// the send job, but only for the job's owner; a message that moved meanwhile is left to
/// the caller's transaction.
async fn a_sends_acceptance_ends_its_job_in_the_same_statement(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let store = app.store.clone();
    let mut sending = Vec::new();
    for key in ["accept:owner", "accept:stranger"] {
        let body = json!({"messaging_product": "whatsapp", "to": "+447911123456", "type": "text",
                          "text": {"body": "hello"}, "biz_opaque_callback_data": key});
        let mut tx = store.begin(None).await.expect("begin");
        let id = tx
            .insert_message(&test_message(key, MessagePurpose::Reply, "+447911123456", &body))
            .await
            .expect("insert")
            .expect("new");
        tx.commit("").await.expect("commit");
        let job = store
            .claim(Queue::Jobs, "sender", 60_000)
            .await
            .expect("claim")
            .expect("its send job");
        store.mark_sending(id, MessageStatus::Queued).await.expect("sending");
        sending.push((id, job.id));
    }
    let lease = |job: i64, owner: &str| Lease {
        queue: Queue::Jobs,
        id: job,
        owner: owner.into(),
    };
    let job_state = |job: i64| {
        let store = store.clone();
        async move {
            let jobs = store.list(Queue::Jobs, None, 10).await.expect("jobs");
            let row = jobs.into_iter().find(|j| j.id == job).expect("the job");
            (row.state, row.note)
        }
    };

    // Its owner's: recorded, and on PostgreSQL the job ended with it.
    let (id, job) = sending[0];
    let accepted = store
        .accept_sending(id, "wamid.OWNER", &lease(job, "sender"), "accepted as wamid.OWNER")
        .await
        .expect("accept");
    match backend {
        Backend::Postgres => {
            assert!(matches!(accepted, Acceptance::Ended(_)), "{accepted:?}");
            assert_eq!(
                job_state(job).await,
                (QueueState::Done, Some("accepted as wamid.OWNER".into()))
            );
        }
        Backend::Sqlite => {
            assert!(matches!(accepted, Acceptance::Recorded), "{accepted:?}");
            assert_eq!(job_state(job).await.0, QueueState::Running, "the worker completes it");
        }
    }
    let again = store
        .accept_sending(id, "wamid.OWNER", &lease(job, "sender"), "again")
        .await
        .expect("accept again");
    assert!(matches!(again, Acceptance::Moved), "already accepted: {again:?}");

    // Another owner's lease (this one's lapsed and was taken): recorded, the job left alone.
    let (id, job) = sending[1];
    let accepted = store
        .accept_sending(id, "wamid.STRANGER", &lease(job, "someone-else"), "accepted")
        .await
        .expect("accept");
    assert!(matches!(accepted, Acceptance::Recorded), "{accepted:?}");
    assert_eq!(job_state(job).await.0, QueueState::Running);
    let messages = store.list_messages(10).await.expect("messages");
    assert!(
        messages.iter().all(|m| m.status == MessageStatus::Accepted),
        "{messages:?}"
    );
    app.shutdown().await;
}

/// Meta's statuses are applied in batches: one claim takes them all, the statuses that
/// only move a status are applied together (and a `read` that changes nothing writes
/// nothing), and the ones that cause more (a transient `failed`, which sends again) or
/// name no message of ours are handled as alone. A status that overtook the record of
/// our send is matched by its callback data and records the wamid in the batch; a
/// friend's invite `sent` (not yet on the phone, so the referral does not move) is
/// batched too.
async fn statuses_are_applied_in_batches(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let worker = hand_worker(&app);

    // Three messages Meta accepted: an invite, a thanks already read, and one that fails.
    let mut tx = app.store.begin(None).await.expect("begin");
    let mut ids = Vec::new();
    for (key, purpose) in [
        ("batch:invite", MessagePurpose::Invite),
        ("batch:thanks", MessagePurpose::Thanks),
        ("batch:fails", MessagePurpose::Invite),
        ("batch:overtaken", MessagePurpose::Invite),
        ("batch:friend", MessagePurpose::FriendInvite),
    ] {
        let body = json!({"messaging_product": "whatsapp", "to": "+447911123456", "type": "text",
                          "text": {"body": key}, "biz_opaque_callback_data": key});
        let message = test_message(key, purpose, "+447911123456", &body);
        ids.push(tx.insert_message(&message).await.expect("insert").expect("new"));
    }
    let (queued, accepted, read) = (MessageStatus::Queued, MessageStatus::Accepted, MessageStatus::Read);
    tx.set_message_status(ids[0], queued, accepted, Some("wamid.B0"), None)
        .await
        .expect("accept");
    tx.set_message_status(ids[1], queued, read, Some("wamid.B1"), None)
        .await
        .expect("read");
    tx.set_message_status(ids[2], queued, accepted, Some("wamid.B2"), None)
        .await
        .expect("accept");
    // Sent, Meta answered, but its status comes before we record the answer.
    tx.set_message_status(ids[3], queued, MessageStatus::Sending, None, None)
        .await
        .expect("sending");
    tx.set_message_status(ids[4], queued, accepted, Some("wamid.B4"), None)
        .await
        .expect("accept");
    tx.commit("").await.expect("commit");
    let thanks_before = app.store.message(ids[1]).await.expect("read").expect("thanks");

    let status_with = |wamid: &str, status: &str, callback: Option<&str>| {
        let mut item =
            json!({"id": wamid, "status": status, "timestamp": "1795510900", "recipient_id": "447911123456"});
        if status == "failed" {
            item["errors"] = json!([{"code": 131000, "title": "Something went wrong"}]);
        }
        if let Some(key) = callback {
            item["biz_opaque_callback_data"] = json!(key);
        }
        let value = json!({"messaging_product": "whatsapp", "statuses": [item],
                           "metadata": {"display_phone_number": "15550001234", "phone_number_id": "100000000000202"}});
        json!({"object": "whatsapp_business_account",
               "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": value}]}]})
        .to_string()
        .into_bytes()
    };
    let status = |wamid: &str, status: &str| status_with(wamid, status, None);
    // Each its own webhook, the invite's in reverse order, as Meta may deliver them.
    let webhooks = [
        status("wamid.B0", "read"),
        status("wamid.B0", "delivered"),
        status("wamid.B0", "sent"),
        status("wamid.B1", "read"),
        status("wamid.B2", "failed"),
        status("wamid.ELSEWHERE", "delivered"),
        status_with("wamid.B3", "delivered", Some("batch:overtaken")),
        status("wamid.B4", "sent"),
    ];
    for body in webhooks {
        assert_eq!(app.post_signed_whatsapp(body).await, 200);
    }

    assert!(
        worker.work_batch_from(Queue::Inbox).await.expect("a batch"),
        "one batch claims them"
    );
    let items = app.store.list(Queue::Inbox, None, 10).await.expect("inbox");
    assert_eq!(items.len(), 8);
    assert!(
        items.iter().all(|i| i.state == QueueState::Done && i.attempts == 1),
        "{items:?}"
    );
    let notes: Vec<&str> = items.iter().rev().map(|i| i.note.as_deref().unwrap_or("")).collect();
    let moved = format!("message {} accepted -> read (3 of its statuses in one batch)", ids[0]);
    assert_eq!(notes[..3], [moved.as_str(); 3], "{notes:?}");
    assert_eq!(notes[3], format!("message {} stays read", ids[1]));
    assert!(
        notes[4].contains("resend queued"),
        "a transient failure is handled alone: {notes:?}"
    );
    assert_eq!(notes[5], "status of a message we did not send (no callback data)");
    assert_eq!(
        notes[6],
        format!(
            "message {} sending -> delivered (1 of its statuses in one batch)",
            ids[3]
        )
    );
    assert_eq!(
        notes[7],
        format!("message {} accepted -> sent (1 of its statuses in one batch)", ids[4])
    );

    let message = |id: i64| {
        let store = app.store.clone();
        async move { store.message(id).await.expect("read").expect("message") }
    };
    assert_eq!(message(ids[0]).await.status, MessageStatus::Read);
    assert_eq!(message(ids[2]).await.status, MessageStatus::Failed);
    let overtaken = message(ids[3]).await;
    assert_eq!(
        (overtaken.status, overtaken.wamid.as_deref()),
        (MessageStatus::Delivered, Some("wamid.B3"))
    );
    assert_eq!(message(ids[4]).await.status, MessageStatus::Sent);
    assert_eq!(
        message(ids[1]).await,
        thanks_before,
        "a read that changes nothing writes nothing"
    );
    let resends = app.store.list_messages(10).await.expect("messages");
    assert!(resends.iter().any(|m| m.idempotency_key == "batch:fails:resend"));
    assert!(!worker.work_batch_from(Queue::Inbox).await.expect("nothing left"));
    app.shutdown().await;
}
