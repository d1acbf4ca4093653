//! Load generator for the WhatsApp webhook: posts unique, correctly signed status
//! webhooks over N connections for T seconds, prints requests per second and latency
//! percentiles, then checks that every 200 is a stored event.
//!
//!   cargo bench --bench ingest_load -- --connections 32 --seconds 20
//!
//! By default it measures, in the same run and on the same PostgreSQL server
//! (TEST_DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres):
//! 1. the thinnest possible handler: verify the signature, one INSERT, answer 200;
//! 2. referloop in-process on a fresh database with the worker off (only ingest);
//!
//! and prints both and their ratio. `--only referloop` skips the first; `--url` and
//! `--database-url` aim it at a running instance instead (that instance's app secret goes
//! in `--app-secret`).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use clap::Parser;
use referloop::config::Settings;
use referloop::signatures::{sign_meta, verify_meta};
use referloop::startup::Application;
use referloop::store::Store;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// A running referloop (default: one started in-process).
    #[arg(long)]
    url: Option<String>,
    /// The database of that running referloop, to check the stored count.
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value = "loadgen-app-secret")]
    app_secret: String,
    /// `both` (default), `referloop` or `baseline` (the thinnest handler alone).
    #[arg(long, default_value = "both")]
    only: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn status_body(connection: usize, n: u64) -> Vec<u8> {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "12025550100", "phone_number_id": "100000000000202"},
            "statuses": [{"id": format!("wamid.LOAD.{connection}.{n}"), "status": "delivered",
                          "timestamp": "1795510803", "recipient_id": "12025550101"}]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

struct ConnectionResult {
    latencies: Vec<Duration>,
    ok: u64,
    other: u64,
    errors: u64,
}

async fn drive(url: String, secret: String, connection: usize, until: Instant) -> ConnectionResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let mut result = ConnectionResult {
        latencies: Vec::new(),
        ok: 0,
        other: 0,
        errors: 0,
    };
    let mut n = 0;
    while Instant::now() < until {
        let body = status_body(connection, n);
        n += 1;
        let signature = sign_meta(&secret, &body);
        let started = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await;
        let elapsed = started.elapsed();
        match response {
            Ok(r) if r.status() == 200 => {
                result.ok += 1;
                result.latencies.push(elapsed);
            }
            Ok(_) => result.other += 1,
            Err(_) => result.errors += 1,
        }
    }
    result
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one run measured.
struct Measured {
    ok: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Drives `url` for the configured time and checks every 200 against `stored()`.
async fn measure<F, Fut>(args: &Args, label: &str, url: &str, stored: F) -> Measured
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let before = stored().await;
    println!(
        "{label}: {} connections for {} s against {url}",
        args.connections, args.seconds
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| tokio::spawn(drive(url.to_string(), args.app_secret.clone(), c, until)))
        .collect();
    let mut latencies = Vec::new();
    let (mut ok, mut other, mut errors) = (0, 0, 0);
    for task in tasks {
        let result = task.await.expect("connection task");
        latencies.extend(result.latencies);
        ok += result.ok;
        other += result.other;
        errors += result.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let stored = stored().await - before;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("  requests: {ok} answered 200, {other} other status, {errors} transport errors");
    println!("  throughput: {:.0} requests/s", ok as f64 / elapsed);
    println!(
        "  latency of 200s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 99.9)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    println!("  stored events: {stored} (expected {ok})");
    if stored != ok as i64 {
        eprintln!("MISMATCH: every 200 must be a stored event");
        // The databases are kept for a look (`scripts/test` drops them).
        std::process::exit(1);
    }
    Measured {
        ok,
        per_second: ok as f64 / elapsed,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    }
}

/// The thinnest durable handler: the signature checked, the body in one INSERT.
async fn thinnest_handler(
    axum::extract::State((pool, secret)): axum::extract::State<(sqlx::PgPool, Arc<String>)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    if verify_meta(&secret, &body, signature).is_err() {
        return axum::http::StatusCode::UNAUTHORIZED;
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    match sqlx::query("INSERT INTO thin_events (body) VALUES ($1)")
        .bind(text)
        .execute(&pool)
        .await
    {
        Ok(_) => axum::http::StatusCode::OK,
        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Starts the thinnest handler on a fresh database; returns its URL, its pool and the
/// database's URL.
async fn start_baseline(args: &Args) -> (String, sqlx::PgPool, String) {
    let database_url = common::fresh_postgres().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(&database_url)
        .await
        .expect("baseline database");
    sqlx::query("CREATE TABLE thin_events (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("baseline table");
    let router = axum::Router::new()
        .route("/thin", axum::routing::post(thinnest_handler))
        .with_state((pool.clone(), Arc::new(args.app_secret.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://127.0.0.1:{port}/thin"), pool, database_url)
}

/// Starts referloop in-process on a fresh database, worker off; returns the webhook URL
/// and that database's URL.
async fn start_referloop(args: &Args) -> (String, String) {
    let database_url = common::fresh_postgres().await;
    let env = [
        ("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0"),
        ("REFERLOOP_WHATSAPP__APP_SECRET", args.app_secret.as_str()),
        ("REFERLOOP_WORKER__ENABLED", "false"),
        ("REFERLOOP_DATABASE__MAX_CONNECTIONS", "32"),
        ("DATABASE_URL", database_url.as_str()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let settings = Settings::load_from(None, common::with_overrides(env)).expect("settings");
    let app = Application::build(settings).await.expect("start referloop");
    let url = format!("http://127.0.0.1:{}/webhooks/whatsapp", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    (url, database_url)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let baseline = if args.url.is_none() && args.only != "referloop" {
        let (url, pool, database_url) = start_baseline(&args).await;
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM thin_events")
                .fetch_one(&pool)
                .await
                .expect("count")
        };
        let measured = measure(&args, "thinnest handler (verify, one INSERT)", &url, count).await;
        pool.close().await;
        common::drop_postgres(&database_url).await;
        Some(measured)
    } else {
        None
    };
    if args.only == "baseline" {
        return;
    }
    let (url, database_url) = match &args.url {
        Some(url) => (
            url.clone(),
            args.database_url.clone().expect("--database-url goes with --url"),
        ),
        None => start_referloop(&args).await,
    };
    let store = Store::connect(&database_url, 2).await.expect("database");
    let count = || async { store.count_inbox_events("whatsapp").await.expect("count") };
    let referloop = measure(&args, "referloop ingest (verify, parse, group commit)", &url, count).await;
    if let Some(baseline) = baseline {
        println!(
            "referloop / thinnest handler: {:.2} × the throughput ({:.0} vs {:.0} requests/s), p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms ({} vs {} requests)",
            referloop.per_second / baseline.per_second.max(1.0),
            referloop.per_second,
            baseline.per_second,
            referloop.p50.as_secs_f64() * 1000.0,
            baseline.p50.as_secs_f64() * 1000.0,
            referloop.p99.as_secs_f64() * 1000.0,
            baseline.p99.as_secs_f64() * 1000.0,
            referloop.ok,
            baseline.ok,
        );
    }
    store.close().await;
    // Only the database this run made: one named by `--database-url` is left as it is.
    if args.url.is_none() {
        common::drop_postgres(&database_url).await;
    }
}
