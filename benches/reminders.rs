//! Reminders at scale: seeds a fresh PostgreSQL database with N open invites (default one
//! million), each with its promoter's reminder queued in the jobs table for some time in
//! the next three days and a hundredth of them due now, then times, one at a time as the
//! steps do them:
//! - scheduling a reminder: an invite's transaction queuing its `reminder.promoter` job;
//! - cancelling one: a tap's `Tx::advance_invite`, which ends the reminder's job and
//!   suppresses its message;
//! - claiming the due reminders: the worker's claim of up to `--claim` due jobs.
//!
//! Each prints its median and slowest, and the plan PostgreSQL chose for its statement,
//! which must use an index (the due-time queue's partial index, or the unique key) and
//! never scan the table.
//!
//!   cargo bench --bench reminders -- --invites 1000000 --runs 200
//!
//! It runs on a fresh database on the server of TEST_DATABASE_URL (else the local one).

use std::time::{Duration, Instant};

mod common;

use clap::Parser;
use referloop::domain::state::InviteState;
use referloop::domain::work::Job;
use referloop::store::{NewJob, Queue, Store};
use sqlx::Executor;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    invites: i64,
    /// Operations of each kind timed.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Jobs one claim takes.
    #[arg(long, default_value_t = 16)]
    claim: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const DAY_MS: i64 = 86_400_000;

/// Invite i was sent `3 days * i / n` ago, so its reminder falls due `3 days * (1 - i / n)`
/// from now; one in a hundred is due already.
fn seed_sql(n: i64, now: i64) -> Vec<String> {
    let sent = format!("({now} - {} * CAST(i AS BIGINT) / {n})", 3 * DAY_MS);
    vec![
        format!(
            "INSERT INTO invites (id, trigger_key, contact_id, trigger, phone, first_name, language, referral_code, \
               state, created_at, updated_at) \
             SELECT i, 'seed:' || i, CAST(100000 + i AS TEXT), 'nps', '+4479' || LPAD(CAST(i AS TEXT), 8, '0'), \
               'Customer', 'en_US', 'SEED' || i, 'invited', {sent}, {sent} \
             FROM generate_series(1, {n}) AS i"
        ),
        format!(
            "INSERT INTO jobs (kind, payload, idempotency_key, state, attempts, max_attempts, run_at, created_at) \
             SELECT 'reminder.promoter', '{{\"invite_id\":' || i || '}}', 'reminder.promoter:' || i, 'queued', 0, 9, \
               CASE WHEN i % 100 = 0 THEN {now} - 1000 ELSE {sent} + {} END, {sent} \
             FROM generate_series(1, {n}) AS i",
            3 * DAY_MS
        ),
        "ANALYZE invites".into(),
        "ANALYZE jobs".into(),
    ]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    let slowest = times[times.len() - 1];
    println!(
        "{what}: median {:.2} ms, slowest {:.2} ms ({} runs)",
        median.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0,
        times.len()
    );
}

/// The plan of `sql`, and whether it scans a whole table.
async fn plan(conn: &mut sqlx::PgConnection, sql: &str) -> (String, bool) {
    let rows: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    let scans = rows.iter().any(|line| line.contains("Seq Scan"));
    (rows.join("\n    "), scans)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let database_url = common::fresh_postgres().await;
    let store = Store::connect(&database_url, 4).await.expect("database");
    store.migrate().await.expect("migrate");
    let now = store.now_ms();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url)
        .await
        .expect("connect");
    let started = Instant::now();
    for sql in seed_sql(args.invites, now) {
        conn.execute(sql.as_str()).await.expect("seed");
    }
    println!(
        "seeded {} open invites with their reminders queued ({} due now) in {:.1} s",
        args.invites,
        args.invites / 100,
        started.elapsed().as_secs_f64()
    );

    // Scheduling: new invites' reminders, each in its own transaction.
    let mut times = Vec::new();
    for k in 0..args.runs as i64 {
        let job = Job::PromoterReminder {
            invite_id: args.invites + 1 + k,
        };
        let started = Instant::now();
        let mut tx = store.begin(None).await.expect("begin");
        tx.enqueue(NewJob::new(&job, 9, now + 3 * DAY_MS));
        tx.commit("").await.expect("commit");
        times.push(started.elapsed());
    }
    report("schedule one reminder (its invite's transaction)", times);

    // Cancelling: taps on invites whose reminders are still waiting.
    let mut times = Vec::new();
    for k in 0..args.runs as i64 {
        let invite_id = 1 + k * 7 + 1;
        let started = Instant::now();
        let mut tx = store.begin(None).await.expect("begin");
        let moved = tx
            .advance_invite(invite_id, InviteState::FlowSent)
            .await
            .expect("advance");
        tx.commit("").await.expect("commit");
        times.push(started.elapsed());
        assert!(moved.is_some(), "invite {invite_id} was open");
    }
    report("cancel one reminder (a tap moving its invite)", times);
    let cancelled: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE kind = 'reminder.promoter' AND state = 'done' AND note LIKE 'cancelled:%'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count");
    assert_eq!(cancelled, args.runs as i64, "each tap ended its reminder's job");

    // Claiming: the due reminders, a claim at a time.
    let mut times = Vec::new();
    let mut claimed = 0;
    for _ in 0..args.runs {
        let started = Instant::now();
        let items = store
            .claim_many(Queue::Jobs, "bench", 60_000, args.claim)
            .await
            .expect("claim");
        times.push(started.elapsed());
        claimed += items.len();
        if items.is_empty() {
            break;
        }
    }
    report(&format!("claim up to {} due reminders", args.claim), times);
    println!("claimed {claimed} due reminders");

    let statements = [
        (
            "the claim's search for due jobs",
            format!(
                "SELECT id FROM jobs WHERE state IN ('queued', 'failed') AND run_at <= {now} ORDER BY run_at, id LIMIT {}",
                args.claim
            ),
        ),
        (
            "the cancel's update of the reminder's job",
            "UPDATE jobs SET state = 'done' WHERE idempotency_key = 'reminder.promoter:12345' \
             AND state IN ('queued', 'failed')"
                .to_string(),
        ),
        (
            "the cancel's update of the reminder's message",
            "UPDATE messages SET status = 'suppressed' WHERE idempotency_key = 'reminder:12345' AND status = 'queued'"
                .to_string(),
        ),
    ];
    let mut any_scan = false;
    for (what, sql) in statements {
        let (plan, scans) = plan(&mut conn, &sql).await;
        any_scan |= scans;
        println!("plan of {what}:\n    {plan}");
    }
    println!(
        "reminders at {} open invites: whole-table scans: {}",
        args.invites,
        if any_scan { "yes" } else { "none" }
    );
    common::drop_postgres(&database_url).await;
}
