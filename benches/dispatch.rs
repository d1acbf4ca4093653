//! Dispatch throughput: queues N WhatsApp messages, lets one replica's worker send them to
//! a local fake of the Graph API, and prints sustained messages per second, CPU per
//! message, queue latency (queued → accepted) and the busiest second seen by the fake,
//! aligned and sliding (any one-second interval), which must not exceed the configured
//! rate by more than a few places sent late.
//!
//!   cargo bench --bench dispatch -- --messages 5000 --rate 1000 --concurrency 32
//!
//! It runs on a fresh PostgreSQL database (TEST_DATABASE_URL, else the local server).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use clap::Parser;
use referloop::app::Services;
use referloop::clock::system_ms;
use referloop::config::Settings;
use referloop::domain::messaging::MessagePurpose;
use referloop::domain::state::Persisted;
use referloop::jobs::Worker;
use referloop::metrics::Metrics;
use referloop::store::{NewMessage, Store};
use tokio::sync::watch;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// whatsapp.max_messages_per_second
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// worker.job_concurrency
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// database.max_connections
    #[arg(long, default_value_t = 40)]
    pool: u32,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A lean fake of the Graph API's send endpoint: accepts every send with a fresh wamid
/// and notes when it arrived (a full mock server would cost more CPU than referloop).
#[derive(Clone, Default)]
struct Graph(Arc<Mutex<Vec<i64>>>);

impl Graph {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let arrivals = self.0.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let arrivals = arrivals.clone();
                let service = hyper::service::service_fn(move |_request| {
                    let n = {
                        let mut arrivals = arrivals.lock().expect("arrivals");
                        arrivals.push(unix_ms());
                        arrivals.len()
                    };
                    let body = format!(r#"{{"messaging_product":"whatsapp","messages":[{{"id":"wamid.BENCH{n}"}}]}}"#);
                    async move {
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        format!("http://{address}")
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let graph = Graph::default();
    let graph_url = graph.start().await;
    let url = common::fresh_postgres().await;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", url.clone()),
        ("REFERLOOP_DATABASE__MAX_CONNECTIONS", args.pool.to_string()),
        ("REFERLOOP_WHATSAPP__API_BASE", graph_url),
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "bench-token".into()),
        ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "100000000000202".into()),
        ("REFERLOOP_WHATSAPP__MAX_MESSAGES_PER_SECOND", args.rate.to_string()),
        ("REFERLOOP_WORKER__JOB_CONCURRENCY", args.concurrency.to_string()),
        ("REFERLOOP_WORKER__POLL_INTERVAL_MS", "10".into()),
        ("REFERLOOP_LOG__LEVEL", "error".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let settings = Arc::new(Settings::load_from(None, env).expect("settings"));
    let store = Store::connect(&url, args.pool).await.expect("connect");
    store.migrate().await.expect("migrate");

    let mut tx = store.begin(None).await.expect("begin");
    for n in 0..args.messages {
        let to = format!("+4479{:08}", n);
        let body = serde_json::json!({"messaging_product": "whatsapp", "to": to, "type": "text",
                                      "text": {"body": format!("benchmark {n}")}});
        tx.insert_message(&NewMessage {
            idempotency_key: format!("bench:{n}"),
            purpose: MessagePurpose::Reply,
            to_phone: referloop::domain::phone::E164::parse_mobile(&to, "GB").expect("a mobile number"),
            invite_id: None,
            referral_id: None,
            marketing: false,
            body: body.to_string(),
            run_at: system_ms(),
            max_attempts: 5,
            timing: MessagePurpose::Reply.timing(),
        })
        .await
        .expect("queue");
    }
    tx.commit("").await.expect("commit");
    println!(
        "queued {} messages; rate {} /s, job_concurrency {}, pool {}",
        args.messages, args.rate, args.concurrency, args.pool
    );

    let services = Services::new(store.clone(), settings, Arc::new(Metrics::new())).expect("services");
    let (stop, stopped) = watch::channel(false);
    let cpu_before = common::cpu_time();
    let started = Instant::now();
    let worker = tokio::spawn(Worker::new(Arc::new(services)).run(stopped));
    loop {
        let sent = graph.0.lock().map(|a| a.len()).unwrap_or(0);
        if sent >= args.messages || started.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let cpu = common::cpu_time().saturating_sub(cpu_before);
    let _ = stop.send(true);
    let _ = worker.await;

    let arrivals = graph.0.lock().map(|a| a.clone()).unwrap_or_default();
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for at in &arrivals {
        *per_second.entry(at / 1000).or_insert(0) += 1;
    }
    let busiest = per_second.values().copied().max().unwrap_or(0);
    let mut sorted = arrivals.clone();
    sorted.sort_unstable();
    let busiest_sliding = referloop::domain::pacing::busiest_interval(&sorted, 1_000);
    let messages = store.list_messages(i64::MAX).await.expect("messages");
    let accepted = messages.iter().filter(|m| m.status.as_str() == "accepted").count();
    let created: i64 = system_ms() - elapsed.as_millis() as i64;
    let mut latencies: Vec<i64> = messages
        .iter()
        .filter(|m| m.status.as_str() == "accepted")
        .map(|m| m.updated_at - created)
        .collect();
    latencies.sort_unstable();
    println!("sent: {} requests to the fake, {accepted} accepted", arrivals.len());
    println!(
        "throughput: {:.0} messages/s over {:.2} s",
        arrivals.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "CPU (referloop, fake and database client, this process): {:.0} µs per message",
        cpu.as_micros() as f64 / arrivals.len().max(1) as f64
    );
    println!(
        "queue latency (start → accepted): p50 {} ms, p99 {} ms, max {} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    println!(
        "busiest aligned second at the fake: {busiest} (configured {})",
        args.rate
    );
    println!(
        "busiest sliding second at the fake: {busiest_sliding} (configured {})",
        args.rate
    );
    let seconds: Vec<String> = per_second.values().map(usize::to_string).collect();
    println!("sends in each second at the fake: {}", seconds.join(" "));
    store.close().await;
    common::drop_postgres(&url).await;
}
