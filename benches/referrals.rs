//! End to end, as Meta drives it, on a fresh PostgreSQL database (TEST_DATABASE_URL,
//! else the local server), with one in-process replica (HTTP and worker, as `referloop
//! serve` runs).
//!
//! `--referrals N` drives N whole referrals, from the trigger to both rewards, through
//! the real routes, against lean in-process fakes of the Graph API and HubSpot (see
//! `referrals/whole.rs`; the outside rate limits are raised, as the benchmark measures
//! referloop, not HubSpot's quota):
//!
//!   cargo bench --bench referrals -- --referrals 3000 --rate 150
//!
//! referloop runs on a Tokio runtime of its own, so the CPU per referral it prints is told
//! apart: referloop's threads, the fakes' and driver's, and PostgreSQL's. It ends with
//! `whole referrals per second: N` (0 when any effect was missing or repeated). When the
//! server loads `pg_stat_statements`, it also prints the statements per referral and the
//! five dearest (where PostgreSQL's time goes).
//!
//! Without `--referrals`, the status flood: every message we send comes back as `sent`,
//! `delivered` and `read`, each its own signed webhook, so 1,000 sends a second are
//! 3,000 status events a second. The benchmark records R messages a second as sent by us
//! (accepted, with their wamids), then posts their three statuses through the real
//! webhook route for `--seconds`. Each second it samples the inbox backlog (events not
//! yet handled); at the end it prints the rates, the largest backlog, and whether the
//! worker kept up:
//!
//!   cargo bench --bench referrals -- --status-flood 1000 --seconds 60
//!
//! Before it, `machine speed:` reads this machine's speed (SHA-256 on one core) before and
//! after the run: the kind of machine it runs on drifts by up to half within minutes, so
//! only runs with similar readings compare. The last line is for scripts:
//! `status flood: R messages/s, E status events/s, backlog bounded: yes|no`
//! (bounded: after the last second of posting, at most two seconds' worth of events
//! were still waiting).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
#[path = "referrals/outside.rs"]
mod outside;
#[path = "referrals/whole.rs"]
mod whole;

use clap::Parser;
use referloop::app::Services;
use referloop::clock::system_ms;
use referloop::config::Settings;
use referloop::jobs::Worker;
use referloop::metrics::Metrics;
use referloop::signatures::sign_meta;
use referloop::startup::Application;
use referloop::store::Store;

const APP_SECRET: &str = "bench-app-secret";
const HUBSPOT_SECRET: &str = "00000000-0000-4000-8000-00000000bench";
const API_TOKEN: &str = "bench-api-token";
const PUBLIC_BASE_URL: &str = "https://referrals.example.com";

#[derive(Debug, Parser)]
struct Args {
    /// Whole referrals to drive (instead of the status flood).
    #[arg(long)]
    referrals: Option<u64>,
    /// Triggers offered a second with `--referrals`.
    #[arg(long, default_value_t = 150)]
    rate: u64,
    /// Messages a second whose statuses are posted (three status events each).
    #[arg(long, default_value_t = 1000)]
    status_flood: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Connections posting webhooks.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// worker.inbox_concurrency (4 and a pool of 12 beat 8 and 40 on 2 cores: fewer
    /// PostgreSQL backends switching on them; see the README)
    #[arg(long, default_value_t = 4)]
    inbox_loops: usize,
    /// worker.inbox_batch (1: each event alone, as before batching)
    #[arg(long, default_value_t = 100)]
    inbox_batch: usize,
    /// worker.job_batch (with `--referrals`): the room the claimer waits for (1: it
    /// claims as soon as any job finishes)
    #[arg(long, default_value_t = 4)]
    job_batch: usize,
    /// worker.job_concurrency (with `--referrals`): claims' worth of jobs running at
    /// once (× `--job-batch` jobs)
    #[arg(long, default_value_t = 8)]
    job_concurrency: usize,
    /// database.max_connections
    #[arg(long, default_value_t = 12)]
    pool: u32,
    /// hubspot.requests_per_10s (with `--referrals`; raised by default: the benchmark
    /// measures referloop; 100 is HubSpot's Free and Starter limit)
    #[arg(long, default_value_t = 100_000)]
    hubspot_per_10s: u32,
    /// hubspot.searches_per_second (with `--referrals`; HubSpot allows 4 to 5)
    #[arg(long, default_value_t = 10_000)]
    hubspot_searches_per_second: u32,
    /// Status flood: store the events first, with the worker off; then time a worker
    /// alone draining them (its rate, and its CPU and PostgreSQL's per event).
    #[arg(long)]
    worker_after: bool,
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
    let speed_before = common::machine_speed();
    let for_scripts = match args.referrals {
        Some(count) => Some(whole_referrals(&args, &database_url, count).await),
        None => status_flood(&args, &database_url).await,
    };
    println!(
        "machine speed: SHA-256 at {speed_before:.0} MB/s on one core before, {:.0} after \
         (it drifts; compare runs with similar readings)",
        common::machine_speed()
    );
    if let Some(line) = for_scripts {
        println!("{line}");
    }
    common::drop_postgres(&database_url).await;
}

/// The settings of the replica under test, with `extra` on top.
fn settings(args: &Args, database_url: &str, extra: &[(&str, String)]) -> Settings {
    let mut env: Vec<(String, String)> = [
        ("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0".to_string()),
        ("REFERLOOP_WHATSAPP__APP_SECRET", APP_SECRET.to_string()),
        ("REFERLOOP_WORKER__ENABLED", "true".to_string()),
        // Every send at once, whatever the hour the benchmark runs at.
        ("REFERLOOP_MESSAGING__SEND_WINDOW", "00:00-24:00".to_string()),
        ("REFERLOOP_WORKER__INBOX_CONCURRENCY", args.inbox_loops.to_string()),
        ("REFERLOOP_WORKER__INBOX_BATCH", args.inbox_batch.to_string()),
        ("REFERLOOP_WORKER__POLL_INTERVAL_MS", "10".to_string()),
        ("REFERLOOP_DATABASE__MAX_CONNECTIONS", args.pool.to_string()),
        ("REFERLOOP_LOG__LEVEL", "error".to_string()),
        ("DATABASE_URL", database_url.to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Settings::load_from(None, common::with_overrides(env)).expect("settings")
}

/// Returns the line for scripts.
async fn whole_referrals(args: &Args, database_url: &str, count: u64) -> String {
    let (outside, base, accepted) = outside::Outside::start(APP_SECRET).await;
    let token_hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(API_TOKEN.as_bytes()))
    };
    let settings = settings(
        args,
        database_url,
        &[
            ("REFERLOOP_SERVER__PUBLIC_BASE_URL", PUBLIC_BASE_URL.into()),
            ("REFERLOOP_HUBSPOT__CLIENT_SECRET", HUBSPOT_SECRET.into()),
            ("REFERLOOP_HUBSPOT__API_BASE", base.clone()),
            ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", outside::HUBSPOT_TOKEN.into()),
            ("REFERLOOP_HUBSPOT__REQUESTS_PER_10S", args.hubspot_per_10s.to_string()),
            (
                "REFERLOOP_HUBSPOT__SEARCHES_PER_SECOND",
                args.hubspot_searches_per_second.to_string(),
            ),
            ("REFERLOOP_WHATSAPP__API_BASE", base),
            ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", outside::META_TOKEN.into()),
            ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", outside::PHONE_NUMBER_ID.into()),
            ("REFERLOOP_WHATSAPP__MAX_MESSAGES_PER_SECOND", "2000".into()),
            ("REFERLOOP_WHATSAPP__PAIR_SPACING_MS", "0".into()),
            ("REFERLOOP_WORKER__JOB_CONCURRENCY", args.job_concurrency.to_string()),
            ("REFERLOOP_WORKER__JOB_BATCH", args.job_batch.to_string()),
            ("REFERLOOP_PROGRAMME__DEFAULT_REGION", "GB".into()),
            ("REFERLOOP_API__TOKENS", token_hash),
        ],
    );
    // referloop runs on a runtime of its own, its threads named apart, so that its CPU
    // can be told from the fakes' and the driver's (which run on this one).
    let referloop = common::ReferloopRuntime::start();
    let app = referloop
        .handle()
        .spawn(Application::build(settings))
        .await
        .expect("build task")
        .expect("start referloop");
    let app_url = format!("http://127.0.0.1:{}", app.port());
    outside.post_statuses_to(format!("{app_url}/webhooks/whatsapp"));
    let store = app.store();
    referloop.handle().spawn(app.run_until_stopped(std::future::pending()));
    let pool = sqlx::PgPool::connect(database_url).await.expect("database");
    println!(
        "whole referrals: {count}, triggers offered at {}/s; {} inbox loops, {} jobs at once (claimed {}+ at a time), pool {}",
        args.rate, args.inbox_loops, args.job_concurrency * args.job_batch, args.job_batch, args.pool
    );
    let for_scripts = whole::run(&app_url, &pool, &outside, accepted, count, args.rate, &referloop).await;
    store.close().await;
    drop(referloop);
    for_scripts
}

/// One replica's worker alone drains `waiting` events: its rate, and the CPU per event
/// of this process (only the worker works now) and of PostgreSQL.
async fn worker_alone<F, Fut>(store: &Store, settings: Settings, waiting: i64, backlog: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let services = Services::new(store.clone(), Arc::new(settings), Arc::new(Metrics::new())).expect("services");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (cpu_before, postgres_before) = (common::cpu_time(), common::postgres_cpu_time());
    let started = Instant::now();
    let worker = tokio::spawn(Worker::new(Arc::new(services)).run(stopped));
    while backlog().await > 0 && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let (cpu, postgres) = (
        common::cpu_time().saturating_sub(cpu_before),
        common::postgres_cpu_time().saturating_sub(postgres_before),
    );
    let _ = stop.send(true);
    let _ = worker.await;
    let per_event = |d: Duration| d.as_micros() as f64 / waiting.max(1) as f64;
    println!(
        "worker alone: {waiting} events drained in {:.1} s: {:.0} events/s; per event: referloop {:.0} µs CPU, PostgreSQL {:.0} µs CPU",
        elapsed.as_secs_f64(),
        waiting as f64 / elapsed.as_secs_f64(),
        per_event(cpu),
        per_event(postgres)
    );
}

/// Returns the line for scripts (none with `--worker-after`).
async fn status_flood(args: &Args, database_url: &str) -> Option<String> {
    let mut settings = settings(args, database_url, &[]);
    let worker_settings = settings.clone();
    // With --worker-after, the events are only stored while posting; a worker drains them after.
    settings.worker.enabled = !args.worker_after;
    let app = Application::build(settings).await.expect("start referloop");
    let url = format!("http://127.0.0.1:{}/webhooks/whatsapp", app.port());
    let store = app.store();

    // The messages whose statuses come back: recorded as we record an accepted send.
    let messages = args.status_flood * args.seconds;
    let pool = sqlx::PgPool::connect(database_url).await.expect("database");
    sqlx::query(
        "INSERT INTO messages (idempotency_key, purpose, to_phone, marketing, body, wamid, status, created_at, updated_at) \
         SELECT 'flood:' || n, 'reply', '+12025550101', 0, '{}', 'wamid.FLOOD' || n, 'accepted', $1, $1 \
         FROM generate_series(0, $2 - 1) AS n",
    )
    .bind(system_ms())
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
    if args.worker_after {
        worker_alone(&store, worker_settings, backlog().await, &backlog).await;
    }
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
    if args.worker_after {
        // Nothing was handled while posting: the figure above is the drain.
        store.close().await;
        return None;
    }
    let bounded = backlog_at_end <= i64::try_from(2 * 3 * args.status_flood).unwrap_or(i64::MAX);
    store.close().await;
    Some(format!(
        "status flood: {} messages/s, {} status events/s, backlog bounded: {}",
        args.status_flood,
        args.status_flood * 3,
        if bounded { "yes" } else { "no" }
    ))
}
