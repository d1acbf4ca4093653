//! Hostile input, correctly signed: ids that try to steer our outbound URLs, NUL
//! characters, oversized batches, slow and idle connections, and what a client may learn
//! of the database.

use std::time::Duration;

use referloop::domain::state::Persisted;
use referloop::signatures::sign_meta;
use referloop::store::{Backend, Queue};
use serde_json::{json, Value};
use sqlx::{Connection, Executor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::rewards::checkout_event;

async fn inbox_rows(app: &TestApp) -> Vec<referloop::store::QueueRow> {
    app.store.list(Queue::Inbox, None, 1_000).await.expect("inbox")
}

async fn wait_until_finished(app: &TestApp) {
    let store = app.store.clone();
    let finished = eventually(Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            store
                .list(Queue::Inbox, None, 1_000)
                .await
                .map(|rows| rows.iter().all(|r| matches!(r.state.as_str(), "done" | "dead")))
                .unwrap_or(false)
        }
    })
    .await;
    assert!(finished, "the inbox was worked through");
}

/// Every request the fakes received, as paths with queries.
async fn outbound_paths(lc: &Lifecycle) -> Vec<String> {
    let mut paths = Vec::new();
    for server in [&lc.hubspot, &lc.stripe, &lc.meta] {
        for request in server.received_requests().await.unwrap_or_default() {
            paths.push(format!("{}?{}", request.url.path(), request.url.query().unwrap_or("")));
        }
    }
    paths
}

async fn ids_cannot_steer_outbound_urls(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    for (n, id) in [
        "90001/../../../properties/contacts/referral_code",
        "90001?archived=true&x=",
    ]
    .into_iter()
    .enumerate()
    {
        let status = lc
            .nps(id, REFERRER_PHONE, "Ana", "10", &format!("17672256000{n}"))
            .await;
        assert_eq!(status, 200, "stored: the sender is authentic");
    }
    // A Checkout Session id that climbs to a customer's balance.
    let event = checkout_event(
        "evt_climb",
        "cs_x/../../../v1/customers/cus_evil/balance_transactions",
        json!({"discounts": [{"promotion_code": "promo_x"}], "total_details": {"amount_discount": 500}}),
    );
    assert_eq!(lc.stripe_event(event).await, 200);
    wait_until_finished(&lc.app).await;
    let paths = outbound_paths(&lc).await;
    assert!(
        paths
            .iter()
            .all(|p| !p.contains("..") && !p.contains("properties") && !p.contains("customers")),
        "no request went where an id pointed: {paths:?}"
    );
    assert!(paths.is_empty(), "nothing was sent at all: {paths:?}");
    let rows = inbox_rows(&lc.app).await;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row.state.as_str(), "dead", "a permanent refusal: {row:?}");
        assert!(row.last_error.as_deref().unwrap_or("").contains("invalid"), "{row:?}");
    }
    assert!(lc.app.store.list_invites(10).await.expect("invites").is_empty());
    lc.shutdown().await;
}

fn whatsapp_body(value: Value) -> Vec<u8> {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({"display_phone_number": "15550001234", "phone_number_id": PHONE_NUMBER_ID});
    json!({"object": "whatsapp_business_account",
           "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": value}]}]})
    .to_string()
    .into_bytes()
}

async fn post_whatsapp(app: &TestApp, body: Vec<u8>) -> (u16, String) {
    let response = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Both stores answer alike: NUL in an id is refused (400), in free text it is replaced.
async fn nul_characters_are_decided_at_the_boundary(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let text = |id: &str, body: &str| {
        json!({"messages": [{"from": "447911123456", "id": id, "timestamp": "1795510810",
                              "type": "text", "text": {"body": body}}]})
    };
    let (status, reason) = post_whatsapp(&app, whatsapp_body(text("wamid.A\u{0}B", "hello"))).await;
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("NUL"), "{reason}");
    assert!(inbox_rows(&app).await.is_empty(), "nothing stored");
    let (status, reason) = post_whatsapp(&app, whatsapp_body(text("wamid.C", "hi\u{0}there"))).await;
    assert_eq!(status, 200, "{reason}");
    wait_until_finished(&app).await;
    let rows = inbox_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state.as_str(), "done", "{rows:?}");
    app.shutdown().await;
}

async fn oversized_batches_are_refused_whole(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| {
        set_env(env, "REFERLOOP_SERVER__MAX_EVENTS_PER_REQUEST", "5")
    })
    .await;
    let statuses = |n: usize| {
        let items: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": format!("wamid.B{n}x{i}"), "status": "sent", "timestamp": "1795510800",
                            "recipient_id": "447911123456"})
            })
            .collect();
        whatsapp_body(json!({"statuses": items}))
    };
    let (status, reason) = post_whatsapp(&app, statuses(6)).await;
    assert_eq!(status, 413, "{reason}");
    assert!(reason.contains("at most 5"), "{reason}");
    assert!(inbox_rows(&app).await.is_empty(), "nothing of it stored");
    let (status, _) = post_whatsapp(&app, statuses(5)).await;
    assert_eq!(status, 200);
    assert_eq!(inbox_rows(&app).await.len(), 5);
    app.shutdown().await;
}

/// Reads until the server closes the connection; the time it took.
async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + limit, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

async fn slow_idle_and_surplus_connections_are_closed(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| {
        set_env(env, "REFERLOOP_SERVER__HEADER_READ_TIMEOUT_SECONDS", "1");
        set_env(env, "REFERLOOP_SERVER__REQUEST_TIMEOUT_SECONDS", "1");
        set_env(env, "REFERLOOP_SERVER__IDLE_TIMEOUT_SECONDS", "2");
        set_env(env, "REFERLOOP_SERVER__MAX_CONNECTIONS", "3");
    })
    .await;
    let address = app.address.trim_start_matches("http://").to_string();
    // Slow headers: a request line, then nothing.
    let mut slow = TcpStream::connect(&address).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let closed = time_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(5)),
        "slow headers cut off: {closed:?}"
    );
    // Idle keep-alive: one request, then silence.
    let mut idle = TcpStream::connect(&address).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 256];
    let n = idle.read(&mut first).await.expect("answer");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let closed = time_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(6)),
        "idle socket closed: {closed:?}"
    );
    // Three silent sockets hold every slot: a fourth connection is closed at once...
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&address).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut surplus = TcpStream::connect(&address).await.expect("connect");
    let closed = time_until_closed(&mut surplus, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(1)),
        "over the limit: {closed:?}"
    );
    // ...and once they are gone, the server answers again.
    drop(held);
    let answered = eventually(Duration::from_secs(5), || {
        let client = app.client.clone();
        let url = app.url("/healthz");
        async move { client.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(answered);
    app.shutdown().await;
}

/// What `/readyz` says when the database misbehaves: a stable reason, no database text.
async fn database_errors_do_not_reach_clients(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let app = TestApp::spawn_with_database(db, |_| {}).await;
    let url = app.database_url().to_string();
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
            conn.execute("DROP TABLE _sqlx_migrations").await.expect("drop");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            conn.execute("DROP TABLE _sqlx_migrations").await.expect("drop");
        }
    }
    let response = app.client.get(app.url("/readyz")).send().await.expect("request");
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap_or_default();
    assert_eq!(body, "database unavailable");
    assert!(!body.contains("relation") && !body.contains("no such table"), "{body}");
    app.shutdown().await;
}

/// A client that hangs up while its events are being written does not cancel the write
/// halfway (which returned connections to the pool inside a transaction): the write
/// finishes, and the server goes on serving. The inbox is held locked from outside so the
/// client is sure to give up first.
async fn a_client_hanging_up_does_not_cancel_the_write(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let url = app.database_url().to_string();
    let mut pg = None;
    let mut sqlite = None;
    match backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            conn.execute("BEGIN").await.expect("begin");
            conn.execute("LOCK TABLE inbox_events IN EXCLUSIVE MODE")
                .await
                .expect("lock");
            pg = Some(conn);
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
            conn.execute("BEGIN IMMEDIATE").await.expect("lock");
            sqlite = Some(conn);
        }
    }
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let body = crate::whatsapp::texts_body();
    let gave_up = impatient
        .post(app.url("/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
        .body(body)
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()), "the client hung up first");
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(mut conn) = pg {
        conn.execute("COMMIT").await.expect("unlock");
    }
    if let Some(mut conn) = sqlite {
        conn.execute("COMMIT").await.expect("unlock");
    }
    let written = eventually(Duration::from_secs(5), || {
        let store = app.store.clone();
        async move { store.count_inbox_events("whatsapp").await.is_ok_and(|n| n == 3) }
    })
    .await;
    assert!(written, "the write finished after the client left");
    let (status, _) = post_whatsapp(&app, load_message(1)).await;
    assert_eq!(status, 200, "and the server goes on serving");
    app.shutdown().await;
}

both_backends!(
    a_client_hanging_up_does_not_cancel_the_write,
    ids_cannot_steer_outbound_urls,
    nul_characters_are_decided_at_the_boundary,
    oversized_batches_are_refused_whole,
    slow_idle_and_surplus_connections_are_closed,
    database_errors_do_not_reach_clients,
);

/// PostgreSQL unreachable (connections refused): a webhook is answered 503 within about
/// a second (the pool's acquire timeout), and served again once it is back, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_and_recovers() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap_or_default().to_string();
    let app = TestApp::spawn_with_database(db, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.expect("admin");
    let block = |allow: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}");
    admin.execute(block(false).as_str()).await.expect("block");
    admin
        .execute(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'").as_str())
        .await
        .expect("terminate");
    let started = std::time::Instant::now();
    let (status, _) = post_whatsapp(&app, crate::whatsapp::texts_body()).await;
    let waited = started.elapsed();
    println!("outage: answered {status} after {waited:?}");
    assert_eq!(status, 503);
    assert!(
        waited < Duration::from_secs(3),
        "answered within about a second: {waited:?}"
    );
    admin.execute(block(true).as_str()).await.expect("unblock");
    let recovered = eventually(Duration::from_secs(10), || {
        let app = &app;
        async move { post_whatsapp(app, crate::whatsapp::texts_body()).await.0 == 200 }
    })
    .await;
    assert!(recovered, "served again without a restart");
    app.shutdown().await;
}

/// One text message from `from`, id `wamid.LOAD<n>`, in a signed-ready batch.
fn load_message(n: usize) -> Vec<u8> {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "100000000000101", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "12025550100", "phone_number_id": "100000000000202"},
        "messages": [{"from": format!("4479111{:05}", 50_000 + n % 40), "id": format!("wamid.LOAD{n}"),
                      "timestamp": "1795510810", "type": "text", "text": {"body": format!("hello {n}")}}]}}]}]})
    .to_string()
    .into_bytes()
}

/// PostgreSQL stopped and started again under load (connections refused and every
/// session terminated, as a stopped server looks to its clients). Four senders post
/// webhooks steadily and, like Meta, repeat each one until it is acknowledged.
/// During the outage they get quick 503s, never a 500; afterwards every event is stored
/// and processed exactly once, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_loses_and_repeats_nothing() {
    const SENDERS: usize = 4;
    let db = TestDatabase::new(Backend::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap_or_default().to_string();
    // Items a worker held when the database went away come back when their lease lapses.
    let app = std::sync::Arc::new(
        TestApp::spawn_with_database(db, |env| {
            set_env(env, "REFERLOOP_WORKER__LEASE_SECONDS", "2");
            set_env(env, "REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "1,1,1,1,1");
        })
        .await,
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.expect("admin");
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let (app, sending) = (app.clone(), sending.clone());
        senders.spawn(async move {
            let mut answers = std::collections::BTreeMap::<u16, usize>::new();
            let mut sent = 0;
            while sending.load(std::sync::atomic::Ordering::SeqCst) {
                loop {
                    let (status, _) = post_whatsapp(&app, load_message(sender * 1_000_000 + sent)).await;
                    *answers.entry(status).or_default() += 1;
                    if status == 200 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent += 1;
                // A steady load rather than a flood: the worker has to process it all.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (sent, answers)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let block = |allow: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}");
    admin.execute(block(false).as_str()).await.expect("stop");
    admin
        .execute(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'").as_str())
        .await
        .expect("terminate sessions");
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin.execute(block(true).as_str()).await.expect("start again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sending.store(false, std::sync::atomic::Ordering::SeqCst);

    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    let mut sent = 0;
    while let Some(result) = senders.join_next().await {
        let (n, by_status) = result.expect("a sender");
        sent += n;
        for (status, count) in by_status {
            *answers.entry(status).or_default() += count;
        }
    }
    println!("outage under load: {sent} events sent; answers by status {answers:?}");
    assert!(
        answers.get(&503).copied().unwrap_or(0) > 0,
        "the outage was seen: {answers:?}"
    );
    assert!(
        answers.keys().all(|s| *s == 200 || *s == 503),
        "only 200 and 503: {answers:?}"
    );
    assert_eq!(
        app.store.count_inbox_events("whatsapp").await.expect("count"),
        sent as i64,
        "every event stored once"
    );
    let processed = eventually(Duration::from_secs(120), || {
        let store = app.store.clone();
        async move {
            store
                .list(Queue::Inbox, None, 1_000_000)
                .await
                .is_ok_and(|items| items.len() == sent && items.iter().all(|i| i.state.as_str() == "done"))
        }
    })
    .await;
    assert!(processed, "every event processed after the outage");
    if let Ok(app) = std::sync::Arc::try_unwrap(app) {
        app.shutdown().await;
    }
}
