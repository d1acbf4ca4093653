//! The job queue and the inbox share the claim/lease/retry mechanics; these tests drive
//! them directly against each backend.

use std::collections::HashSet;
use std::time::Duration;

use referloop::clock::system_ms;
use referloop::domain::inbox::{InboxKind, NewInboxEvent, Source};
use referloop::domain::state::Persisted;
use referloop::domain::work::{ItemKind, JobKind};
use referloop::store::{Backend, BatchableKind, EnqueueOutcome, NewJob, Queue, QueueState, Store, OLDEST_PER_CLAIM};

use crate::both_backends;
use crate::helpers::*;

fn job(key: &str, max_attempts: i64) -> NewJob {
    NewJob {
        kind: JobKind::LinkReferral,
        payload: r#"{"n":1}"#.into(),
        idempotency_key: key.into(),
        max_attempts,
        run_at: system_ms(),
    }
}

async fn state_of(store: &Store, id: i64) -> String {
    let rows = store.list(Queue::Jobs, None, 1000).await.expect("list");
    rows.into_iter()
        .find(|r| r.id == id)
        .map(|r| r.state.as_str().to_string())
        .unwrap_or_default()
}

async fn enqueue_is_idempotent(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let first = store.enqueue_job(&job("referral:1:invite", 3)).await.expect("enqueue");
    let second = store
        .enqueue_job(&job("referral:1:invite", 3))
        .await
        .expect("enqueue again");
    assert!(matches!(first, EnqueueOutcome::Created(_)));
    assert_eq!(second, EnqueueOutcome::AlreadyQueued(first.id()));
    assert_eq!(store.list(Queue::Jobs, None, 10).await.expect("list").len(), 1);
}

async fn claim_complete_and_ownership(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let id = store.enqueue_job(&job("k1", 3)).await.expect("enqueue").id();
    let claimed = store
        .claim(Queue::Jobs, "a", 60_000)
        .await
        .expect("claim")
        .expect("due job");
    assert_eq!(
        (claimed.id, claimed.attempts, claimed.kind),
        (id, 1, ItemKind::Job(JobKind::LinkReferral))
    );
    assert_eq!(state_of(&store, id).await, "running");
    assert!(
        store.claim(Queue::Jobs, "b", 60_000).await.expect("claim").is_none(),
        "leased job is not claimable"
    );
    assert!(
        !store.complete(Queue::Jobs, id, "b", None).await.expect("complete"),
        "only the owner completes"
    );
    assert!(store
        .complete(Queue::Jobs, id, "a", Some("sent"))
        .await
        .expect("complete"));
    assert_eq!(state_of(&store, id).await, "done");
    assert!(store.claim(Queue::Jobs, "a", 60_000).await.expect("claim").is_none());
}

/// Completions recorded together: each is kept only where its owner still holds the
/// lease, and the answer names those kept.
async fn completions_together_keep_each_owner_check(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let mut ids = Vec::new();
    for key in ["k1", "k2", "k3"] {
        ids.push(store.enqueue_job(&job(key, 3)).await.expect("enqueue").id());
    }
    let claimed = store.claim_many(Queue::Jobs, "a", 60_000, 2).await.expect("claim");
    let by_b = store
        .claim(Queue::Jobs, "b", 60_000)
        .await
        .expect("claim")
        .expect("due job");
    let mut held_by_a: Vec<i64> = claimed.iter().map(|item| item.id).collect();
    held_by_a.sort_unstable();
    assert_eq!((held_by_a.clone(), by_b.id), (ids[..2].to_vec(), ids[2]));
    let completions: Vec<(i64, String, String)> = ids
        .iter()
        .map(|id| (*id, "a".to_string(), format!("done {id}")))
        .collect();
    let mut kept = store.complete_many(Queue::Jobs, &completions).await.expect("complete");
    kept.sort_unstable();
    assert_eq!(kept, held_by_a, "only the owner's completions are kept");
    let rows = store.list(Queue::Jobs, None, 10).await.expect("list");
    for row in rows {
        let expected = if row.id == ids[2] {
            (QueueState::Running, None)
        } else {
            (QueueState::Done, Some(format!("done {}", row.id)))
        };
        assert_eq!((row.state, row.note), expected);
    }
}

async fn lapsed_lease_is_claimed_again(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let id = store.enqueue_job(&job("k1", 3)).await.expect("enqueue").id();
    store
        .claim(Queue::Jobs, "crashed", 60_000)
        .await
        .expect("claim")
        .expect("due");
    assert!(store
        .claim(Queue::Jobs, "survivor", 60_000)
        .await
        .expect("claim")
        .is_none());
    store.clock().advance(Duration::from_secs(61));
    let again = store
        .claim(Queue::Jobs, "survivor", 60_000)
        .await
        .expect("claim")
        .expect("lapsed lease");
    assert_eq!((again.id, again.attempts), (id, 2));
    assert!(
        !store
            .complete(Queue::Jobs, id, "crashed", None)
            .await
            .expect("complete"),
        "the old owner lost it"
    );
    assert!(store
        .complete(Queue::Jobs, id, "survivor", None)
        .await
        .expect("complete"));
}

async fn failures_wait_for_their_retry_time_then_die(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let id = store.enqueue_job(&job("k1", 2)).await.expect("enqueue").id();
    store
        .claim(Queue::Jobs, "w", 60_000)
        .await
        .expect("claim")
        .expect("due");
    assert!(store
        .fail(Queue::Jobs, id, "w", "HTTP 503", Some(store.now_ms() + 60_000))
        .await
        .expect("fail"));
    assert_eq!(state_of(&store, id).await, "failed");
    assert!(
        store.claim(Queue::Jobs, "w", 60_000).await.expect("claim").is_none(),
        "not before its retry time"
    );

    store.clock().advance(Duration::from_secs(61));
    let second = store
        .claim(Queue::Jobs, "w", 60_000)
        .await
        .expect("claim")
        .expect("due again");
    assert_eq!(second.attempts, 2);
    assert!(store
        .fail(Queue::Jobs, id, "w", "HTTP 503 again", None)
        .await
        .expect("fail"));
    let rows = store.list(Queue::Jobs, Some(QueueState::Dead), 10).await.expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].last_error.as_deref(), Some("HTTP 503 again"));
    assert!(
        store.claim(Queue::Jobs, "w", 60_000).await.expect("claim").is_none(),
        "dead jobs stay put"
    );

    assert!(store.retry_dead(Queue::Jobs, id).await.expect("retry"));
    assert!(
        !store.retry_dead(Queue::Jobs, id).await.expect("retry"),
        "only dead jobs"
    );
    let revived = store
        .claim(Queue::Jobs, "w", 60_000)
        .await
        .expect("claim")
        .expect("re-queued");
    assert_eq!(revived.attempts, 1, "a retried job starts a fresh set of attempts");
}

async fn release_returns_the_attempt(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let id = store.enqueue_job(&job("k1", 3)).await.expect("enqueue").id();
    store
        .claim(Queue::Jobs, "w", 60_000)
        .await
        .expect("claim")
        .expect("due");
    assert!(store.release(Queue::Jobs, id, "w").await.expect("release"));
    let again = store
        .claim(Queue::Jobs, "w", 60_000)
        .await
        .expect("claim")
        .expect("released");
    assert_eq!(again.attempts, 1);
}

async fn concurrent_workers_never_claim_the_same_job(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let total = 120;
    for n in 0..total {
        store.enqueue_job(&job(&format!("k{n}"), 3)).await.expect("enqueue");
    }
    let mut workers = Vec::new();
    for w in 0..6 {
        // Each worker has its own pool, like a separate replica.
        let store = Store::connect(&db.url, 2).await.expect("connect");
        workers.push(tokio::spawn(async move {
            let owner = format!("replica-{w}");
            let mut mine = Vec::new();
            while let Some(item) = store.claim(Queue::Jobs, &owner, 60_000).await.expect("claim") {
                mine.push(item.id);
                assert!(store
                    .complete(Queue::Jobs, item.id, &owner, None)
                    .await
                    .expect("complete"));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut claimed = 0;
    for worker in workers {
        for id in worker.await.expect("worker") {
            claimed += 1;
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(claimed, total);
    let counts = store.count_by_state(Queue::Jobs).await.expect("counts");
    assert!(counts.contains(&(QueueState::Done, total as i64)), "{counts:?}");
}

/// The doctor reads whether PostgreSQL's autovacuum runs as the server has it; SQLite
/// has none to report.
async fn autovacuum_is_read_as_the_server_has_it(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let read = store.autovacuum_runs().await.expect("read");
    match backend {
        Backend::Sqlite => assert_eq!(read, None),
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
            let shown: String = sqlx::query_scalar("SHOW autovacuum")
                .fetch_one(&pool)
                .await
                .expect("show");
            assert_eq!(read, Some(shown == "on"), "SHOW autovacuum says {shown}");
            pool.close().await;
        }
    }
}

both_backends!(
    autovacuum_is_read_as_the_server_has_it,
    enqueue_is_idempotent,
    claim_complete_and_ownership,
    completions_together_keep_each_owner_check,
    lapsed_lease_is_claimed_again,
    failures_wait_for_their_retry_time_then_die,
    release_returns_the_attempt,
    concurrent_workers_never_claim_the_same_job,
    invite_gate_admits_one_of_concurrent_invites,
    an_inbox_claim_takes_the_oldest_few_and_the_statuses,
);

/// An inbox loop's claim: the oldest events of any kind, a few at a time, and with them
/// the statuses due (up to the batch); a batch of one takes one of each.
async fn an_inbox_claim_takes_the_oldest_few_and_the_statuses(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let event = |n: usize, kind: InboxKind| NewInboxEvent {
        source: Source::WhatsApp,
        dedupe_key: format!("event:{n}"),
        kind,
        payload: "{}".into(),
    };
    // Six messages (a tap, a Flow reply, …) then three statuses, in arrival order.
    let mut events: Vec<NewInboxEvent> = (0..6).map(|n| event(n, InboxKind::WhatsAppMessage)).collect();
    events.extend((6..9).map(|n| event(n, InboxKind::WhatsAppStatus)));
    for one in &events {
        // One webhook each, so that they arrive in order.
        store
            .insert_inbox_events(std::slice::from_ref(one), 3)
            .await
            .expect("store");
    }
    let statuses = BatchableKind::WhatsAppStatus;
    let kinds = |claimed: &[referloop::store::ClaimedItem]| -> Vec<String> {
        claimed.iter().map(|item| item.kind.to_string()).collect()
    };
    let one_each = store
        .claim_batch(Queue::Inbox, "a", 60_000, statuses, 1)
        .await
        .expect("claim");
    assert_eq!(kinds(&one_each), ["whatsapp.message", "whatsapp.status"]);
    let claimed = store
        .claim_batch(Queue::Inbox, "b", 60_000, statuses, 100)
        .await
        .expect("claim");
    let mut expected = vec!["whatsapp.message"; OLDEST_PER_CLAIM];
    expected.extend(["whatsapp.status"; 2]);
    assert_eq!(
        kinds(&claimed),
        expected,
        "the {OLDEST_PER_CLAIM} oldest and every status left"
    );
    let rest = store
        .claim_batch(Queue::Inbox, "c", 60_000, statuses, 100)
        .await
        .expect("claim");
    assert_eq!(kinds(&rest), ["whatsapp.message"], "the one message left");
}

/// Two triggers for one contact handled at the same instant: the invite gate admits one.
async fn invite_gate_admits_one_of_concurrent_invites(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let mut tx = store.begin(None).await.expect("begin");
    tx.customer_code("90001", "Ana", || "ANA7KQ2".to_string())
        .await
        .expect("code");
    tx.commit("").await.expect("commit");
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let store = Store::connect(&db.url, 2).await.expect("connect");
        attempts.push(tokio::spawn(async move {
            let mut tx = store.begin(None).await?;
            let passed = tx.pass_invite_gate("90001", system_ms() - 1000, 3).await?;
            tx.commit("").await?;
            Ok::<bool, referloop::store::StoreError>(passed)
        }));
    }
    let mut admitted = 0;
    for attempt in attempts {
        // SQLite may refuse a concurrent writer outright (busy): that is not an admission.
        if let Ok(Ok(true)) = attempt.await {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 1, "the cooldown holds under concurrency");
}
