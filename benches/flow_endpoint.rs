//! Latency of the Flow data endpoint, as Meta's client meets it: every request encrypted
//! to the test vector's key (RSA-OAEP + AES-GCM), signed, posted, and its answer
//! decrypted and checked.
//!
//!   cargo bench --bench flow_endpoint -- --seconds 60 --rate 200
//!
//! referloop runs in-process on a fresh database (PostgreSQL by default, `--store sqlite`
//! for the embedded one) against a local fake of HubSpot's contact search that answers
//! after `--hubspot-ms`. Requests start at `--rate` a second (open loop), in turn: ping,
//! INIT, a submission refused on its fields (no lookup); and at `--submissions-per-second`
//! a good submission (the store's checks and the HubSpot customer search, through the
//! search pacing; HubSpot allows 5 searches a second, referloop keeps to
//! `hubspot.searches_per_second`, 4). A final burst of `--burst` good submissions
//! at once shows what happens beyond the search rate: each waits for a search place up to
//! `whatsapp.flow_customer_check_ms`, then answers without it (the worker checks later).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use clap::Parser;
use referloop::config::Settings;
use referloop::domain::flow_token::FlowToken;
use referloop::domain::state::InviteState;
use referloop::signatures::sign_meta;
use referloop::startup::Application;
use referloop::store::{NewInvite, Store};
use referloop::whatsapp::flow_crypto::seal_request;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const APP_SECRET: &str = "bench-app-secret";
const VECTORS: &str = include_str!("../tests/fixtures/whatsapp/flow_endpoint_test_vector.json");

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Requests a second, all kinds together (opened at this rate whatever the answers).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// `postgres` (TEST_DATABASE_URL's server) or `sqlite`.
    #[arg(long, default_value = "postgres")]
    store: String,
    /// How long the fake HubSpot takes to answer a search.
    #[arg(long, default_value_t = 20)]
    hubspot_ms: u64,
    #[arg(long, default_value_t = 3.0)]
    submissions_per_second: f64,
    #[arg(long, default_value_t = 12)]
    burst: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ping,
    Open,
    FieldError,
    Submission,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Open => "INIT (open the Flow)",
            Kind::FieldError => "submission, field error",
            Kind::Submission => "submission, checked (HubSpot)",
        }
    }
}

struct Target {
    client: reqwest::Client,
    url: String,
    public_key: String,
    tokens: Vec<String>,
}

impl Target {
    /// One request as Meta's client sends it; returns its latency after checking the answer.
    async fn exchange(&self, kind: Kind, n: usize) -> Duration {
        let token = &self.tokens[n % self.tokens.len()];
        let request = match kind {
            Kind::Ping => json!({"version": "3.0", "action": "ping"}),
            Kind::Open => json!({"version": "3.0", "action": "INIT", "flow_token": token}),
            Kind::FieldError | Kind::Submission => {
                let phone = if kind == Kind::FieldError {
                    "555"
                } else {
                    "+12025550142"
                };
                json!({"version": "3.0", "action": "data_exchange", "screen": "NOMINATE", "flow_token": token,
                       "data": {"friend_name": "Grace", "friend_phone": phone, "personal_message": "", "friend_consent": false}})
            }
        };
        let (body, session) = seal_request(&self.public_key, &request.to_string()).expect("seal");
        let signature = sign_meta(APP_SECRET, body.as_bytes());
        let started = Instant::now();
        let response = self
            .client
            .post(&self.url)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let elapsed = started.elapsed();
        let answer: Value = session
            .open_response(&text)
            .and_then(|plain| serde_json::from_str(&plain).ok())
            .unwrap_or(Value::Null);
        let expected = match kind {
            Kind::Ping => answer["data"]["status"] == "active",
            Kind::Open => answer["screen"] == "NOMINATE",
            Kind::FieldError => answer["data"]["friend_phone_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            Kind::Submission => answer["screen"] == "SUCCESS",
        };
        assert!(status == 200 && expected, "{kind:?}: {status} {answer}");
        elapsed
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<32} {:>6}  p50 {:>6.1} ms  p90 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
        latencies.len(),
        ms(percentile(latencies, 50.0)),
        ms(percentile(latencies, 90.0)),
        ms(percentile(latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
}

async fn seed_invites(store: &Store, secret: &str, count: i64) -> Vec<String> {
    let mut tx = store.begin(None).await.expect("begin");
    let mut tokens = vec![];
    for n in 0..count {
        let invite = tx
            .insert_invite(&NewInvite {
                trigger_key: format!("bench:{n}"),
                contact_id: format!("{}", 70_000 + n),
                trigger: referloop::domain::eligibility::TriggerKind::Nps,
                phone: Some(
                    referloop::domain::phone::E164::from_row(&format!("+4479111{:05}", 10_000 + n)).expect("E.164"),
                ),
                first_name: format!("Customer {n}"),
                language: "en_US".into(),
                referral_code: Some(format!("BENCH{n:03}")),
                state: InviteState::FlowSent,
                reason: None,
            })
            .await
            .expect("invite");
        let token = FlowToken {
            invite_id: invite.id,
            nonce: format!("bench{n}"),
        };
        tokens.push(token.sign(secret));
    }
    tx.commit("benchmark invites").await.expect("commit");
    tokens
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let vectors: Value = serde_json::from_str(VECTORS).expect("vectors");
    let hubspot = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/search"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"total": 0, "results": []}))
                .set_delay(Duration::from_millis(args.hubspot_ms)),
        )
        .mount(&hubspot)
        .await;
    let dir = tempfile::tempdir().expect("dir");
    let database_url = match args.store.as_str() {
        "sqlite" => format!("sqlite://{}", dir.path().join("bench.db").display()),
        _ => common::fresh_postgres().await,
    };
    let key = vectors["private_key_pkcs8_pem"].as_str().expect("pem").to_string();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url.as_str()),
        ("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0"),
        ("REFERLOOP_WORKER__ENABLED", "false"),
        ("REFERLOOP_LOG__LEVEL", "error"),
        ("REFERLOOP_WHATSAPP__APP_SECRET", APP_SECRET),
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAA-bench"),
        ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "100000000000202"),
        ("REFERLOOP_WHATSAPP__API_BASE", &hubspot.uri()),
        ("REFERLOOP_WHATSAPP__FLOW_KIND", "endpoint"),
        ("REFERLOOP_WHATSAPP__FLOW_PRIVATE_KEY", key.as_str()),
        ("REFERLOOP_HUBSPOT__API_BASE", &hubspot.uri()),
        ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", "pat-bench"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings = Settings::load_from(None, env).expect("settings");
    let budget = settings.whatsapp.flow_customer_check;
    let searches = settings.hubspot.searches_per_second;
    let app = Application::build(settings).await.expect("app");
    let port = app.port();
    let store = app.store();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let tokens = seed_invites(&store, APP_SECRET, 200).await;
    let target = Arc::new(Target {
        client: reqwest::Client::new(),
        url: format!("http://127.0.0.1:{port}/webhooks/whatsapp/flow"),
        public_key: vectors["public_key_spki_pem"].as_str().expect("pem").to_string(),
        tokens,
    });
    for n in 0..20 {
        target.exchange(Kind::Ping, n).await;
    }
    println!(
        "Flow endpoint on {} ({} s after 2 s of warm-up, {} requests a second; HubSpot answers in {} ms, searched at most \
         {searches}/s, good submissions offered at {}/s; customer check budget {} ms)",
        args.store, args.seconds, args.rate, args.hubspot_ms, args.submissions_per_second, budget.as_millis()
    );
    // Open loop: each request starts at its time whatever the others do, so a slow answer
    // cannot hide the ones that would have queued behind it. The first two seconds warm up
    // connections and caches and are not counted.
    let warm_up = Duration::from_secs(2);
    let started = Instant::now();
    let total = Duration::from_secs(args.seconds) + warm_up;
    let spacing = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let submission_every = Duration::from_secs_f64(1.0 / args.submissions_per_second.max(0.1));
    let mut next_submission = started;
    let mut ticker = tokio::time::interval(spacing);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = vec![];
    let mut n = 0usize;
    while started.elapsed() < total {
        ticker.tick().await;
        let mut kind = [Kind::Ping, Kind::Open, Kind::FieldError][n % 3];
        if Instant::now() >= next_submission {
            next_submission += submission_every;
            kind = Kind::Submission;
        }
        let counted = started.elapsed() >= warm_up;
        let target = target.clone();
        requests.push(tokio::spawn(
            async move { (kind, counted, target.exchange(kind, n).await) },
        ));
        n += 1;
    }
    let mut results = vec![];
    for request in requests {
        let (kind, counted, latency) = request.await.expect("request");
        if counted {
            results.push((kind, latency));
        }
    }
    let mut all: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    for kind in [Kind::Ping, Kind::Open, Kind::FieldError, Kind::Submission] {
        let mut of_kind: Vec<Duration> = results.iter().filter(|(k, _)| *k == kind).map(|(_, d)| *d).collect();
        report(kind.name(), &mut of_kind);
    }
    report("all requests", &mut all);

    // Beyond the search rate: a burst of good submissions at once.
    let searched_before = hubspot.received_requests().await.map(|r| r.len()).unwrap_or(0);
    let burst: Vec<_> = (0..args.burst)
        .map(|n| {
            let target = target.clone();
            tokio::spawn(async move { target.exchange(Kind::Submission, 1_000 + n).await })
        })
        .collect();
    let mut burst_latencies = vec![];
    for request in burst {
        burst_latencies.push(request.await.expect("burst"));
    }
    tokio::time::sleep(budget + Duration::from_millis(500)).await;
    let searched = hubspot.received_requests().await.map(|r| r.len()).unwrap_or(0) - searched_before;
    report(&format!("burst of {} submissions", args.burst), &mut burst_latencies);
    println!(
        "  HubSpot searched for {searched} of them within the budget; the others finished without the customer check \
         (the worker makes it after the Flow completes)"
    );
    // A SQLite file goes with its temporary directory.
    common::drop_postgres(&database_url).await;
}
