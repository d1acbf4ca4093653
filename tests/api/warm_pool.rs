//! The store's connections are taken back by `WarmPool`, not checked by sqlx's pool after
//! each use: what that check was for must still hold. Each test runs on a pool of one
//! connection, so the connection a test gets back is the one it gave up.

use std::time::Duration;

use referloop::store::{Backend, WarmPool, WarmTransaction};
use sqlx::{Connection, Executor, Row};

use crate::both_backends;
use crate::helpers::*;

/// The test database's URL, creating the SQLite file on first connection.
fn creating(db: &TestDatabase) -> String {
    match db.url.starts_with("sqlite:") {
        true => format!("{}?mode=rwc", db.url),
        false => db.url.clone(),
    }
}

/// sqlx's pool of one connection to the test database.
async fn pool_of_one(db: &TestDatabase) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&creating(db))
        .await
        .expect("connect")
}

async fn one_connection(db: &TestDatabase) -> WarmPool {
    let warm = WarmPool::new(pool_of_one(db).await);
    warm.execute("CREATE TABLE notes (n BIGINT NOT NULL)")
        .await
        .expect("create table");
    warm
}

async fn count(warm: &WarmPool) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM notes")
        .fetch_one(warm)
        .await?
        .get::<i64, _>("n"))
}

/// A transaction begun on `warm` that has written one note (`n = 1`), not yet committed.
async fn began_with_a_note(warm: &WarmPool) -> WarmTransaction {
    let mut tx = warm.begin().await.expect("begin");
    sqlx::query("INSERT INTO notes (n) VALUES (1)")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx
}

/// Whether a write on `warm`'s connection commits on its own: another connection sees it
/// at once (it would not, were it inside a transaction left open). Closes `warm`.
async fn commits_on_its_own(warm: WarmPool, db: &TestDatabase) -> bool {
    sqlx::query("INSERT INTO notes (n) VALUES (2)")
        .execute(&warm)
        .await
        .expect("insert");
    warm.close().await;
    let other = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("connect");
    let seen: i64 = sqlx::query("SELECT COUNT(*) AS n FROM notes WHERE n = 2")
        .fetch_one(&other)
        .await
        .expect("count")
        .get("n");
    other.close().await;
    seen == 1
}

/// A transaction dropped without a commit (a step that failed half-way) is rolled back
/// before its connection serves anyone else: its write is gone, and the next statement on
/// that connection commits on its own, seen by another connection at once.
async fn a_transaction_given_up_is_rolled_back_before_its_connection_is_reused(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let warm = one_connection(&db).await;
    let tx = began_with_a_note(&warm).await;
    drop(tx);

    // The only connection: this waits for the rollback, then gets it.
    assert_eq!(
        count(&warm).await.expect("count"),
        0,
        "the dropped transaction's write was kept"
    );
    assert!(
        commits_on_its_own(warm, &db).await,
        "the statement after the rollback ran inside a transaction left open"
    );
}

/// A committed transaction's connection is reused as it is, and what it wrote stays.
async fn a_committed_transaction_keeps_its_writes(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let warm = one_connection(&db).await;
    let tx = began_with_a_note(&warm).await;
    tx.commit().await.expect("commit");
    assert_eq!(count(&warm).await.expect("count"), 1);
    warm.close().await;
}

/// A connection given back while another user waits on sqlx's pool (every connection
/// out) goes to that user at once, not after the acquire timeout.
async fn a_connection_given_back_goes_to_whoever_waits(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let warm = one_connection(&db).await;
    let held = warm.acquire().await.expect("acquire");
    let waiter = {
        let warm = warm.clone();
        tokio::spawn(async move { count(&warm).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the waiter ran without a connection");
    drop(held);
    let counted = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was not handed the connection given back");
    assert_eq!(counted.expect("waiter").expect("count"), 0);
    warm.close().await;
}

/// A connection whose session the server ended (a restart, an operator) fails the
/// statement that finds out, and is not handed out again: the next statement runs on a new
/// connection. (PostgreSQL: SQLite has no server to end a session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_ended_is_replaced() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let warm = one_connection(&db).await;
    let pid: i32 = sqlx::query("SELECT pg_backend_pid() AS pid")
        .fetch_one(&warm)
        .await
        .expect("pid")
        .get("pid");
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.expect("connect");
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
    assert!(ended);
    // The server may take a moment to end it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(count(&warm).await.is_err(), "a statement ran on an ended session");
    let after = tokio::time::timeout(Duration::from_secs(5), count(&warm))
        .await
        .expect("no connection after the ended one");
    assert_eq!(after.expect("the ended connection was handed out again"), 0);
    admin.close().await.expect("close");
    warm.close().await;
}

/// A statement that fails a moment after it is sent, given up before it answers.
const LATE_FAILURE: &str = "DO $$ BEGIN PERFORM pg_sleep(0.3); RAISE EXCEPTION 'late failure'; END $$";

/// A statement given up before its answer came (a request timed out) leaves that answer
/// on the connection: the next user must not read it as its own. (PostgreSQL: SQLite runs
/// a statement to its end before anything else sees the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_given_up_leaves_nothing_for_the_next_user() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let warm = one_connection(&db).await;
    let given_up = tokio::time::timeout(Duration::from_millis(50), warm.execute(LATE_FAILURE)).await;
    assert!(given_up.is_err(), "the statement answered before it was given up");
    let next = tokio::time::timeout(Duration::from_secs(5), count(&warm))
        .await
        .expect("no connection after the statement given up");
    assert_eq!(next.expect("the next user read the answer of a statement given up"), 0);
    warm.close().await;
}

/// A transaction given up while its statement was in flight, a statement that then fails:
/// the rollback must still happen, though the first thing read on the connection is that
/// failure. The next user's statement then commits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_given_up_mid_statement_is_rolled_back() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let warm = one_connection(&db).await;
    let mut tx = began_with_a_note(&warm).await;
    let given_up = tokio::time::timeout(Duration::from_millis(50), (&mut *tx).execute(LATE_FAILURE)).await;
    assert!(given_up.is_err(), "the statement answered before it was given up");
    drop(tx);

    let next = tokio::time::timeout(Duration::from_secs(5), count(&warm))
        .await
        .expect("no connection after the transaction given up");
    assert_eq!(next.expect("count"), 0, "the transaction given up kept its write");
    assert!(
        commits_on_its_own(warm, &db).await,
        "the statement after the transaction given up ran inside it"
    );
}

/// A connection nobody uses goes back to sqlx's pool after its time warm, even when no
/// other statement follows (an idle replica), so that sqlx's idle timeout can close it.
async fn a_connection_left_unused_goes_back_to_sqlx(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let warm = WarmPool::warm_for(pool_of_one(&db).await, Duration::from_millis(200));
    sqlx::query("SELECT 1").execute(&warm).await.expect("select");
    // Warm here: sqlx counts it as in use.
    assert_eq!(warm.inner().num_idle(), 0, "the connection was not kept warm");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while warm.inner().num_idle() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an unused connection was still held 5 s after its 200 ms warm"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warm.close().await;
}

both_backends!(
    a_transaction_given_up_is_rolled_back_before_its_connection_is_reused,
    a_committed_transaction_keeps_its_writes,
    a_connection_given_back_goes_to_whoever_waits,
    a_connection_left_unused_goes_back_to_sqlx,
);
