//! Reporting speed: seeds a fresh PostgreSQL database with N referrals (default one
//! million) over the last 120 days, each from its own trigger, with two messages each and
//! rewards for the converted ones, then times the admin API's answers through HTTP: the
//! 90-day funnel, the first page of each list, a timeline, the drop-outs and the top
//! referrers, the economics and an experiment's results; then the dashboard's pages,
//! signed in. Prints the median and the slowest of
//! several runs of each. The funnel's
//! tally is filled by the same backfill its migration runs on existing data.
//!
//!   cargo bench --bench reporting -- --referrals 1000000 --runs 5
//!
//! It runs on a fresh database on the server of TEST_DATABASE_URL (else the local one).

use std::time::{Duration, Instant};

mod common;

use clap::Parser;
use referloop::config::Settings;
use referloop::startup::Application;
use referloop::store::Store;
use sqlx::Executor;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    referrals: i64,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const TOKEN: &str = "bench-viewer-token";
const DAY_MS: i64 = 86_400_000;

/// The seed, in set-based SQL (a row at a time would take longer than the benchmark).
/// Referral i arrives at `now - 120 days * i / n`; one in four is refused or expired, one
/// in twenty converted (with an issued reward for each side).
fn seed_sql(n: i64, now: i64) -> Vec<String> {
    let at = format!("({now} - CAST({} * i / {n} AS BIGINT))", 120 * DAY_MS);
    vec![
        format!(
            "INSERT INTO invites (id, trigger_key, contact_id, trigger, phone, first_name, language, referral_code, state, reason, created_at, updated_at) \
             SELECT i, 'seed:' || i, CAST(100000 + i % 200000 AS TEXT), CASE WHEN i % 3 = 0 THEN 'milestone' ELSE 'nps' END, \
               '+4479' || LPAD(CAST(i AS TEXT), 8, '0'), 'Customer', 'en_US', 'SEED' || i, \
               CASE WHEN i % 10 = 0 THEN 'ineligible' ELSE 'nominated' END, CASE WHEN i % 10 = 0 THEN 'not_a_promoter: score 6' END, {at}, {at} \
             FROM generate_series(1, {n}) AS i"
        ),
        format!(
            "INSERT INTO referrals (id, invite_id, flow_token, referrer_contact_id, referrer_phone, referrer_name, referral_code, \
               friend_phone, friend_name, consent, language, state, reason, nominated_at, updated_at) \
             SELECT i, i, 'token-' || i, CAST(100000 + i % 200000 AS TEXT), '+4479' || LPAD(CAST(i AS TEXT), 8, '0'), 'Customer', 'SEED' || i, \
               '+4478' || LPAD(CAST(i AS TEXT), 8, '0'), 'Friend', 1, 'en_US', \
               CASE WHEN i % 20 = 1 THEN 'converted' WHEN i % 4 = 2 THEN 'refused' WHEN i % 4 = 3 THEN 'expired' ELSE 'friend_invited' END, \
               CASE WHEN i % 4 = 2 THEN 'already_customer' END, {at}, {at} \
             FROM generate_series(1, {n}) AS i"
        ),
        format!(
            "INSERT INTO messages (idempotency_key, purpose, to_phone, invite_id, referral_id, marketing, body, status, error_code, error_title, created_at, updated_at) \
             SELECT 'm:' || i || ':' || k, CASE WHEN k = 0 THEN 'invite' ELSE 'friend_invite' END, '+4479' || LPAD(CAST(i AS TEXT), 8, '0'), \
               i, CASE WHEN k = 0 THEN NULL ELSE i END, 1, '{{}}', CASE WHEN i % 50 = 7 THEN 'failed' ELSE 'delivered' END, \
               CASE WHEN i % 50 = 7 THEN 131049 END, CASE WHEN i % 50 = 7 THEN 'Message not delivered to maintain healthy ecosystem engagement' END, {at}, {at} \
             FROM generate_series(1, {n}) AS i, generate_series(0, 1) AS k"
        ),
        format!(
            "INSERT INTO rewards (referral_id, beneficiary, phone, language, kind, state, amount, currency, available_at, created_at, updated_at) \
             SELECT i, b, '+4479' || LPAD(CAST(i AS TEXT), 8, '0'), 'en_US', 'static_code', 'issued', 1000, 'usd', 0, {at}, {at} \
             FROM generate_series(1, {n}) AS i, (VALUES ('referrer'), ('friend')) AS s(b) WHERE i % 20 = 1"
        ),
    ]
}

/// The economics and experiment tallies for the seed, as the steps would have written
/// them: each referral's two messages delivered as GB marketing (0.0529 each), each
/// converted referral's two rewards (10.00 each) and a purchase of 49.00; every invite in
/// the experiment `bench-offer`, alternately control and `bigger`.
fn economics_sql() -> Vec<String> {
    let day = format!("i.created_at / {DAY_MS}");
    vec![
        format!(
            "INSERT INTO economics_tally (day, trigger, measure, detail, currency, slot, n, micros) \
             SELECT {day}, i.trigger, 'message_cost', 'marketing', 'USD', i.id % 8, 2 * COUNT(*), 2 * 52900 * COUNT(*) \
             FROM invites i WHERE i.state <> 'ineligible' GROUP BY {day}, i.trigger, i.id % 8"
        ),
        format!(
            "INSERT INTO economics_tally (day, trigger, measure, detail, currency, slot, n, micros) \
             SELECT {day}, i.trigger, m.measure, m.detail, 'USD', r.id % 8, m.k * COUNT(*), m.v * COUNT(*) \
             FROM referrals r JOIN invites i ON i.id = r.invite_id, \
               (VALUES ('reward_cost', 'referrer', 1, 10000000), ('reward_cost', 'friend', 1, 10000000), ('revenue', 'api', 1, 49000000)) AS m(measure, detail, k, v) \
             WHERE r.state = 'converted' GROUP BY {day}, i.trigger, m.measure, m.detail, m.k, m.v, r.id % 8"
        ),
        "UPDATE invites SET experiment = 'bench-offer', variant = CASE WHEN id % 2 = 0 THEN 'control' ELSE 'bigger' END \
         WHERE state <> 'ineligible'"
            .to_string(),
        "INSERT INTO experiment_tally (experiment, variant, measure, detail, currency, slot, n, micros) \
         SELECT i.experiment, i.variant, 'step', s.step, '', i.id % 8, COUNT(*), 0 \
         FROM invites i, (VALUES ('triggers'), ('eligible'), ('invited')) AS s(step) \
         WHERE i.variant IS NOT NULL GROUP BY i.experiment, i.variant, s.step, i.id % 8"
            .to_string(),
        "INSERT INTO experiment_tally (experiment, variant, measure, detail, currency, slot, n, micros) \
         SELECT i.experiment, i.variant, 'step', 'converted', '', r.id % 8, COUNT(*), 0 \
         FROM referrals r JOIN invites i ON i.id = r.invite_id \
         WHERE i.variant IS NOT NULL AND r.state = 'converted' GROUP BY i.experiment, i.variant, r.id % 8"
            .to_string(),
    ]
}

/// The funnel's tally for the seed: the backfill the tally's migration runs over existing
/// data (the seed bypasses the code that tallies as things happen).
fn tally_sql() -> Vec<String> {
    include_str!("../migrations/postgres/20261130000009_funnel_tally.sql")
        .split(';')
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .map(|s| s.trim().to_string())
        .filter(|s| s.starts_with("INSERT") || s.starts_with("UPDATE"))
        .collect()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let database_url = common::fresh_postgres().await;
    let store = Store::connect(&database_url, 2).await.expect("database");
    store.migrate().await.expect("migrate");
    let now = referloop::clock::system_ms();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url)
        .await
        .expect("connect");
    let seeding = Instant::now();
    for sql in seed_sql(args.referrals, now)
        .into_iter()
        .chain(tally_sql())
        .chain(economics_sql())
    {
        conn.execute(sql.as_str()).await.expect("seed");
    }
    // As autovacuum leaves a table at rest: statistics and the visibility map (index-only scans).
    conn.execute("VACUUM ANALYZE").await.expect("vacuum");
    println!(
        "seeded {} referrals (each with its trigger and two messages; rewards for one in twenty) in {:.1} s",
        args.referrals,
        seeding.elapsed().as_secs_f64()
    );

    let digest = {
        use sha2::Digest;
        format!("viewer:{}", hex::encode(sha2::Sha256::digest(TOKEN.as_bytes())))
    };
    let env = [
        ("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0"),
        ("REFERLOOP_WORKER__ENABLED", "false"),
        ("REFERLOOP_API__TOKENS", digest.as_str()),
        ("DATABASE_URL", database_url.as_str()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    // The experiment the seed's invites are in (lists of tables come from a file).
    let config = std::env::temp_dir().join(format!("referloop-bench-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[[experiments]]\nname = \"bench-offer\"\nstarts = \"2020-01-01\"\nends = \"2099-12-31\"\n\
         [[experiments.variants]]\nname = \"control\"\nweight = 1\n\
         [[experiments.variants]]\nname = \"bigger\"\nweight = 1\nrewards.referrer.amount = 2000\n",
    )
    .expect("config file");
    let settings = Settings::load_from(Some(&config), env).expect("settings");
    let app = Application::build(settings).await.expect("start referloop");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::new();

    let middle = args.referrals / 2;
    let requests = [
        "/api/v1/funnel?days=90".to_string(),
        "/api/v1/funnel?days=90&trigger=milestone".to_string(),
        "/api/v1/funnel?days=7".to_string(),
        "/api/v1/referrals?limit=50".to_string(),
        "/api/v1/referrals?limit=50&state=converted".to_string(),
        format!("/api/v1/referrals?limit=50&cursor={middle}"),
        format!("/api/v1/referrals/{middle}/timeline"),
        "/api/v1/rewards?limit=50".to_string(),
        "/api/v1/conversions?limit=50".to_string(),
        "/api/v1/dead".to_string(),
        "/api/v1/dropouts?days=90".to_string(),
        "/api/v1/rewards/summary?days=90".to_string(),
        "/api/v1/referrers/top".to_string(),
        "/api/v1/economics?days=90".to_string(),
        "/api/v1/economics?days=90&trigger=milestone".to_string(),
        "/api/v1/experiments/bench-offer".to_string(),
    ];
    // A dashboard user, signed in, for the pages.
    let hash = referloop::app::accounts::hash_password("bench password 1234").expect("hash");
    store
        .upsert_admin_user("bench", referloop::domain::access::Role::Viewer, &hash)
        .await
        .expect("user");
    let signed_in = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{base}/admin/login"))
        .form(&[("name", "bench"), ("password", "bench password 1234")])
        .send()
        .await
        .expect("sign in");
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    let pages = [
        "/admin?days=90".to_string(),
        "/admin?days=30".to_string(),
        "/admin/referrals".to_string(),
        "/admin/referrals?q=SEED500000".to_string(),
        format!("/admin/referrals/{middle}"),
        "/admin/operations".to_string(),
        "/admin/economics?days=90".to_string(),
        "/admin/experiments".to_string(),
    ];
    println!("{:<48} {:>10} {:>10}", "request", "median ms", "max ms");
    let page_requests = pages.iter().map(|p| (p, true));
    let api_requests = requests.iter().map(|p| (p, false));
    for (path, page) in api_requests.chain(page_requests) {
        let mut times = Vec::new();
        for _ in 0..args.runs.max(1) {
            let started = Instant::now();
            let request = client.get(format!("{base}{path}"));
            let request = if page {
                request.header("cookie", &cookie)
            } else {
                request.bearer_auth(TOKEN)
            };
            let response = request.send().await.expect("request");
            let status = response.status();
            let _ = response.bytes().await;
            times.push(started.elapsed());
            assert!(status.is_success(), "{path}: {status}");
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{path:<48} {:>10.1} {:>10.1}",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
    common::drop_postgres(&database_url).await;
}
