//! End to end, as Meta drives it. This first part is the status flood: every message we
//! send comes back as `sent`, `delivered` and `read`, each its own signed webhook, so
//! 1,000 sends a second are 3,000 status events a second. The benchmark records R
//! messages a second as sent by us (accepted, with their wamids), then posts their three
//! statuses through the real webhook route for `--seconds`, while one in-process replica
//! (HTTP and worker, as `referloop serve` runs) takes them in and handles them. Each
//! second it samples the inbox backlog (events not yet handled); at the end it prints
//! the rates, the largest backlog, and whether the worker kept up:
//!
//!   cargo bench --bench referrals -- --status-flood 1000 --seconds 60
//!
//! The last line is for scripts:
//! `status flood: R messages/s, E status events/s, backlog bounded: yes|no`
//! (bounded: after the last second of posting, at most two seconds' worth of events
//! were still waiting). It runs on a fresh PostgreSQL database (TEST_DATABASE_URL, else
//! the local server). The whole-referral mode (`--referrals`) is not written yet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use clap::Parser;
use referloop::config::Settings;
use referloop::signatures::sign_meta;
use referloop::startup::Application;
use referloop::store::now_ms;

const APP_SECRET: &str = "bench-app-secret";

#[derive(Debug, Parser)]
struct Args {
    /// Messages a second whose statuses are posted (three status events each).
    #[arg(long, default_value_t = 1000)]
    status_flood: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Connections posting webhooks.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// worker.inbox_concurrency
    #[arg(long, default_value_t = 8)]
    inbox_loops: usize,
    /// database.max_connections
    #[arg(long, default_value_t = 40)]
    pool: u32,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn status_webhook(n: u64, status: &str) -> Vec<u8> {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "12025550100", "phone_number_id": "100000000000202"},
            "statuses": [{"id": format!("wamid.FLOOD{n}"), "status": status, "timestamp": "1795510803",
                          "recipient_id": "12025550101", "biz_opaque_callback_data": format!("flood:{n}")}]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let database_url = common::fresh_postgres().await;
    let env = [
        ("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0".to_string()),
        ("REFERLOOP_WHATSAPP__APP_SECRET", APP_SECRET.to_string()),
        ("REFERLOOP_WORKER__ENABLED", "true".to_string()),
        ("REFERLOOP_WORKER__INBOX_CONCURRENCY", args.inbox_loops.to_string()),
        ("REFERLOOP_WORKER__POLL_INTERVAL_MS", "10".to_string()),
        ("REFERLOOP_DATABASE__MAX_CONNECTIONS", args.pool.to_string()),
        ("REFERLOOP_LOG__LEVEL", "error".to_string()),
        ("DATABASE_URL", database_url.clone()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let settings = Settings::load_from(None, env).expect("settings");
    let app = Application::build(settings).await.expect("start referloop");
    let url = format!("http://127.0.0.1:{}/webhooks/whatsapp", app.port());
    let store = app.store();

    // The messages whose statuses come back: recorded as we record an accepted send.
    let messages = args.status_flood * args.seconds;
    let pool = sqlx::PgPool::connect(&database_url).await.expect("database");
    sqlx::query(
        "INSERT INTO messages (idempotency_key, purpose, to_phone, marketing, body, wamid, status, created_at, updated_at) \
         SELECT 'flood:' || n, 'reply', '+12025550101', 0, '{}', 'wamid.FLOOD' || n, 'accepted', $1, $1 \
         FROM generate_series(0, $2 - 1) AS n",
    )
    .bind(now_ms())
    .bind(i64::try_from(messages).unwrap_or(i64::MAX))
    .execute(&pool)
    .await
    .expect("seed messages");
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    println!(
        "status flood: {} messages/s ({} status events/s) for {} s over {} connections; {} inbox loops, pool {}",
        args.status_flood,
        args.status_flood * 3,
        args.seconds,
        args.connections,
        args.inbox_loops,
        args.pool
    );

    let backlog = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM inbox_events WHERE state IN ('queued', 'running', 'failed')")
            .fetch_one(&pool)
            .await
            .unwrap_or(-1)
    };
    let handled = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM inbox_events WHERE state = 'done'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };

    // Posters: each second's events are handed out to the connections, paced in 10 ms
    // ticks; a poster that falls behind catches up (the flood is offered, not awaited).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()
        .expect("client");
    let posted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let cpu_before = common::cpu_time();
    let ticks_per_second = 100u64;
    let per_tick = (args.status_flood * 3).div_ceil(ticks_per_second);
    let total_events = messages * 3;
    let next = Arc::new(AtomicU64::new(0));
    let mut posters = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (client, url, posted, refused, next) = (
            client.clone(),
            url.clone(),
            posted.clone(),
            refused.clone(),
            next.clone(),
        );
        posters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total_events {
                    return;
                }
                // Event i is due at tick i / per_tick.
                let due = started + Duration::from_millis(i / per_tick * (1000 / ticks_per_second));
                tokio::time::sleep_until(due.into()).await;
                // Within each message, sent, delivered and read in turn.
                let (n, status) = (i / 3, ["sent", "delivered", "read"][(i % 3) as usize]);
                let body = status_webhook(n, status);
                let answer = client
                    .post(&url)
                    .header("x-hub-signature-256", sign_meta(APP_SECRET, &body))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => posted.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    let mut samples = Vec::new();
    let mut largest = 0;
    while !posters.is_empty() {
        tokio::select! {
            _ = posters.join_next() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let b = backlog().await;
                largest = largest.max(b);
                samples.push(b);
            }
        }
    }
    let posting = started.elapsed();
    let backlog_at_end = backlog().await;
    largest = largest.max(backlog_at_end);
    let handled_at_end = handled().await;
    // Then let the worker finish, for its drain rate.
    let drain_started = Instant::now();
    while backlog().await > 0 && drain_started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    let cpu = common::cpu_time().saturating_sub(cpu_before);
    let handled_total = handled().await;
    let statuses_recorded: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE idempotency_key LIKE 'flood:%' AND status = 'read'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);

    let posted = posted.load(Ordering::Relaxed);
    println!(
        "ingest: {posted} status webhooks accepted ({} refused) in {:.1} s: {:.0}/s offered",
        refused.load(Ordering::Relaxed),
        posting.as_secs_f64(),
        posted as f64 / posting.as_secs_f64()
    );
    println!(
        "worker: {handled_at_end} events handled while posting ({:.0}/s); all {handled_total} in {:.1} s ({:.0}/s overall)",
        handled_at_end as f64 / posting.as_secs_f64(),
        elapsed.as_secs_f64(),
        handled_total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "CPU (ingest, worker and posters, this process): {:.0} µs per status event",
        cpu.as_micros() as f64 / handled_total.max(1) as f64
    );
    let seconds: Vec<String> = samples.iter().map(i64::to_string).collect();
    println!("backlog each second: {}", seconds.join(" "));
    println!("largest backlog: {largest}; at the end of posting: {backlog_at_end}");
    println!("messages read at the end: {statuses_recorded} of {messages}");
    let bounded = backlog_at_end <= i64::try_from(2 * 3 * args.status_flood).unwrap_or(i64::MAX);
    println!(
        "status flood: {} messages/s, {} status events/s, backlog bounded: {}",
        args.status_flood,
        args.status_flood * 3,
        if bounded { "yes" } else { "no" }
    );
    store.close().await;
}
