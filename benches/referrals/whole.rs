//! Whole referrals, from the trigger to both rewards, through the real routes: the
//! driver offers HubSpot NPS triggers at a steady rate and answers each send as the
//! people would (the customer taps "Refer someone" on the invite, fills the Flow with a
//! consenting friend); a friend invited buys (a conversion through the API); Meta's
//! statuses come back from the Graph fake. It reports rates, latencies and the largest
//! backlog, then checks that every effect happened exactly once. Returns the line for scripts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use referloop::clock::system_ms;
use referloop::signatures::{sign_hubspot_v3, sign_meta};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::outside::{Outside, Sent};
use super::{API_TOKEN, APP_SECRET, HUBSPOT_SECRET, PUBLIC_BASE_URL};

/// What each referral sends, each to its recipient once: the invite, the Flow, the
/// friend's invite, the thanks, and each side's reward (so two recipients).
const SENDS_PER_REFERRAL: [(&str, u64); 5] = [
    ("tmpl_referral_invite", 1),
    ("interactive", 1),
    ("tmpl_referral_friend_invite", 1),
    ("tmpl_referral_thanks", 1),
    ("tmpl_referral_reward", 2),
];

/// Referrers and friends have UK mobile numbers (07911 0… and 07911 1…), so at most
/// 100,000 referrals a run.
fn referrer_phone(n: u64) -> String {
    format!("+4479110{:05}", n % 100_000)
}

fn friend_phone(n: u64) -> String {
    format!("+4479111{:05}", n % 100_000)
}

fn contact_id(n: u64) -> String {
    format!("{}", 8_000_000 + n)
}

/// Posts to the app as Meta, HubSpot and the business's own systems would.
#[derive(Clone)]
struct Driver {
    client: reqwest::Client,
    app: String,
    refused: Arc<AtomicU64>,
}

impl Driver {
    async fn post(&self, request: reqwest::RequestBuilder) {
        let ok = request.send().await.is_ok_and(|r| r.status().is_success());
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn trigger(&self, n: u64) {
        let path = "/webhooks/hubspot?trigger=nps";
        let body = json!({"hs_object_id": contact_id(n), "firstname": "Ana", "mobilephone": referrer_phone(n),
                          "hs_feedback_last_nps_rating": "10", "hs_feedback_last_survey_date": "1767225600000"})
        .to_string();
        let timestamp = system_ms().to_string();
        let signature = sign_hubspot_v3(
            HUBSPOT_SECRET,
            "POST",
            &format!("{PUBLIC_BASE_URL}{path}"),
            body.as_bytes(),
            &timestamp,
        );
        let request = self
            .client
            .post(format!("{}{path}", self.app))
            .header("x-hubspot-signature-v3", signature)
            .header("x-hubspot-request-timestamp", timestamp)
            .header("content-type", "application/json")
            .body(body);
        self.post(request).await;
    }

    async fn inbound(&self, message: Value) {
        let body = json!({"object": "whatsapp_business_account",
            "entry": [{"id": "100000000000101", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550001234", "phone_number_id": super::outside::PHONE_NUMBER_ID},
                "messages": [message]}}]}]})
        .to_string();
        let request = self
            .client
            .post(format!("{}/webhooks/whatsapp", self.app))
            .header("x-hub-signature-256", sign_meta(APP_SECRET, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body);
        self.post(request).await;
    }

    async fn convert(&self, referral_id: i64, code: &str) {
        let request = self
            .client
            .post(format!("{}/api/v1/conversions", self.app))
            .bearer_auth(API_TOKEN)
            .json(&json!({"external_id": format!("order-{referral_id}"), "referral_code": code}));
        self.post(request).await;
    }

    /// The person's answer to a send: a tap on the invite, the filled Flow.
    async fn answer(&self, sent: Sent, people: &HashMap<String, u64>) {
        let Some(&n) = people.get(&sent.to) else { return };
        let from = sent.to.trim_start_matches('+').to_string();
        match sent.kind.as_str() {
            "tmpl_referral_invite" => {
                let Some(payload) = find_string(&sent.body, "refer:") else {
                    return;
                };
                self.inbound(
                    json!({"from": from, "id": format!("wamid.TAP{n}"), "timestamp": "1795510950",
                                    "type": "button", "button": {"payload": payload, "text": "Refer someone"}}),
                )
                .await;
            }
            "interactive" => {
                let token = sent.body["interactive"]["action"]["parameters"]["flow_token"]
                    .as_str()
                    .unwrap_or_default();
                let response = json!({"flow_token": token, "friend_name": "Zoë", "friend_phone": friend_phone(n),
                                      "personal_message": "You will love it", "friend_consent": true});
                self.inbound(json!({"context": {"from": "15550001234", "id": "x"}, "from": from,
                    "id": format!("wamid.NOM{n}"), "timestamp": "1795511100", "type": "interactive",
                    "interactive": {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent",
                                    "response_json": response.to_string()}}}))
                    .await;
            }
            _ => {}
        }
    }
}

/// The first string in `value` that starts with `prefix` (the invite's button payload).
fn find_string(value: &Value, prefix: &str) -> Option<String> {
    match value {
        Value::String(s) if s.starts_with(prefix) => Some(s.clone()),
        Value::Array(items) => items.iter().find_map(|v| find_string(v, prefix)),
        Value::Object(map) => map.values().find_map(|v| find_string(v, prefix)),
        _ => None,
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap_or(-1)
}

/// What PostgreSQL ran for this database, per statement text, from `pg_stat_statements`
/// (when the server loads it): calls and milliseconds (executing, lock waits included,
/// and planning). None when it is not loaded.
async fn statements(pool: &PgPool) -> Option<HashMap<String, (i64, f64)>> {
    // The view needs the extension in this (fresh) database; the counts are the server's.
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await
        .ok()?;
    let rows: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT query, CAST(calls AS BIGINT), total_exec_time + total_plan_time FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    let mut by_text: HashMap<String, (i64, f64)> = HashMap::new();
    for (query, calls, ms) in rows {
        let entry = by_text.entry(query).or_default();
        entry.0 += calls;
        entry.1 += ms;
    }
    Some(by_text)
}

/// Statements per referral between two readings of [`statements`], and the dearest five:
/// where PostgreSQL's time goes, for the engineer sizing a deployment. (The benchmark's
/// own polling is in it: about one statement a referral.)
fn statements_report(
    before: Option<HashMap<String, (i64, f64)>>,
    after: Option<HashMap<String, (i64, f64)>>,
    count: u64,
) {
    let (Some(before), Some(after)) = (before, after) else {
        println!(
            "statements per referral: not measured (PostgreSQL does not load pg_stat_statements; \
             add it to shared_preload_libraries to see them)"
        );
        return;
    };
    let per = |n: f64| n / count.max(1) as f64;
    let mut spent: Vec<(String, i64, f64)> = after
        .into_iter()
        .map(|(query, (calls, ms))| {
            let (calls_before, ms_before) = before.get(&query).copied().unwrap_or_default();
            (query, calls - calls_before, ms - ms_before)
        })
        .filter(|(_, calls, _)| *calls > 0)
        .collect();
    let calls: i64 = spent.iter().map(|(_, calls, _)| calls).sum();
    let ms: f64 = spent.iter().map(|(_, _, ms)| ms).sum();
    let begins: i64 = spent
        .iter()
        .filter(|(query, _, _)| query.eq_ignore_ascii_case("begin"))
        .map(|(_, calls, _)| calls)
        .sum();
    println!(
        "statements per referral: {:.0}, {:.1} of them BEGIN, {:.1} ms of PostgreSQL's time (lock \
         waits included; pg_stat_statements); the dearest, a referral:",
        per(calls as f64),
        per(begins as f64),
        per(ms)
    );
    spent.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (query, calls, ms) in spent.iter().take(5) {
        let text: String = query
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(90)
            .collect();
        println!("  {:.2} ms in {:.1} calls: {text}", per(*ms), per(*calls as f64));
    }
}

/// Drives `count` whole referrals, offered at `rate` triggers a second; prints the
/// figures and, last, `whole referrals per second: N`.
pub async fn run(
    app_url: &str,
    pool: &PgPool,
    outside: &Outside,
    mut accepted: mpsc::UnboundedReceiver<Sent>,
    count: u64,
    rate: u64,
    referloop: &super::common::ReferloopRuntime,
) -> String {
    let driver = Driver {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client"),
        app: app_url.to_string(),
        refused: Arc::default(),
    };
    let people: Arc<HashMap<String, u64>> = Arc::new((0..count).map(|n| (referrer_phone(n), n)).collect());
    // The people answer every send as it is accepted.
    let answering = {
        let (driver, people) = (driver.clone(), people.clone());
        tokio::spawn(async move {
            while let Some(sent) = accepted.recv().await {
                let (driver, people) = (driver.clone(), people.clone());
                tokio::spawn(async move { driver.answer(sent, &people).await });
            }
        })
    };
    let statements_before = statements(pool).await;
    let started = Instant::now();
    let (cpu_before, postgres_before) = (super::common::cpu_time(), super::common::postgres_cpu_time());
    let referloop_before = referloop.cpu_time();
    let triggered_at: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let triggers = {
        let (driver, triggered_at) = (driver.clone(), triggered_at.clone());
        tokio::spawn(async move {
            let mut posts = tokio::task::JoinSet::new();
            for n in 0..count {
                let due = started + Duration::from_micros(n * 1_000_000 / rate.max(1));
                tokio::time::sleep_until(due.into()).await;
                if let Ok(mut at) = triggered_at.lock() {
                    at.insert(contact_id(n), system_ms());
                }
                let driver = driver.clone();
                posts.spawn(async move { driver.trigger(n).await });
            }
            while posts.join_next().await.is_some() {}
        })
    };

    // A friend invited buys: each referral that reaches friend_invited is converted once.
    let mut converted: HashSet<i64> = HashSet::new();
    let mut converted_at: HashMap<i64, i64> = HashMap::new();
    let mut largest_backlog = 0;
    let mut last_sample = Instant::now();
    let deadline = Duration::from_secs(120 + 4 * count / rate.max(1));
    loop {
        let invited: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, referral_code FROM referrals WHERE state = 'friend_invited'")
                .fetch_all(pool)
                .await
                .unwrap_or_default();
        for (id, code) in invited {
            if converted.insert(id) {
                converted_at.insert(id, system_ms());
                let driver = driver.clone();
                tokio::spawn(async move { driver.convert(id, &code).await });
            }
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            let backlog = scalar(
                pool,
                "SELECT COUNT(*) FROM inbox_events WHERE state IN ('queued', 'running', 'failed')",
            )
            .await;
            largest_backlog = largest_backlog.max(backlog);
        }
        let rewarded = scalar(pool, "SELECT COUNT(*) FROM rewards WHERE state = 'issued'").await;
        if rewarded >= 2 * i64::try_from(count).unwrap_or(i64::MAX) || started.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let cpu = super::common::cpu_time().saturating_sub(cpu_before);
    let postgres_cpu = super::common::postgres_cpu_time().saturating_sub(postgres_before);
    let referloop_cpu = referloop.cpu_time().saturating_sub(referloop_before);
    let statements_after = statements(pool).await;
    let _ = triggers.await;

    // Let the last HubSpot updates and statuses finish before counting effects.
    let quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(60) {
        let busy = scalar(
            pool,
            "SELECT (SELECT COUNT(*) FROM inbox_events WHERE state IN ('queued', 'running')) \
             + (SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running'))",
        )
        .await;
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_after = quiet_since.elapsed();
    answering.abort();

    let referrals_done = scalar(pool, "SELECT COUNT(*) FROM referrals WHERE state = 'converted'").await;
    let inbox_done = scalar(pool, "SELECT COUNT(*) FROM inbox_events WHERE state = 'done'").await;
    let jobs_done = scalar(pool, "SELECT COUNT(*) FROM jobs WHERE state = 'done'").await;
    let dead = scalar(
        pool,
        "SELECT (SELECT COUNT(*) FROM inbox_events WHERE state = 'dead') + (SELECT COUNT(*) FROM jobs WHERE state = 'dead')",
    )
    .await;
    let seconds = elapsed.as_secs_f64();

    // Latencies from the database's own timestamps.
    let invited_at: Vec<(String, i64)> = sqlx::query_as(
        "SELECT i.contact_id, t.at FROM referral_transitions t JOIN referrals r ON r.id = t.referral_id \
         JOIN invites i ON i.id = r.invite_id WHERE t.to_state = 'friend_invited'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let triggered_at = triggered_at.lock().map(|t| t.clone()).unwrap_or_default();
    let mut to_invited: Vec<i64> = invited_at
        .iter()
        .filter_map(|(contact, at)| Some(at - triggered_at.get(contact)?))
        .collect();
    to_invited.sort_unstable();
    let rewarded_at: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT referral_id, COUNT(*), MAX(updated_at) FROM rewards WHERE state = 'issued' GROUP BY referral_id",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut to_rewarded: Vec<i64> = rewarded_at
        .iter()
        .filter(|(_, both, _)| *both == 2)
        .filter_map(|(id, _, at)| Some(at - converted_at.get(id)?))
        .collect();
    to_rewarded.sort_unstable();

    // Exactly once, on the outside and in the ledger.
    let sent = outside.sent.lock().map(|s| s.clone()).unwrap_or_default();
    let repeated: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    let mut missing = Vec::new();
    for (kind, each) in SENDS_PER_REFERRAL {
        let n = sent.keys().filter(|(_, k)| k == kind).count() as u64;
        if n != each * count {
            missing.push(format!("{kind}: {n} of {}", each * count));
        }
    }
    let rewards = scalar(pool, "SELECT COUNT(*) FROM rewards").await;
    let rewards_issued = scalar(pool, "SELECT COUNT(*) FROM rewards WHERE state = 'issued'").await;
    let conversions = scalar(pool, "SELECT COUNT(*) FROM conversions").await;
    let contacts = outside.contacts_created.load(Ordering::Relaxed);
    let n = i64::try_from(count).unwrap_or(i64::MAX);
    let once = repeated.is_empty()
        && missing.is_empty()
        && referrals_done == n
        && rewards == 2 * n
        && rewards_issued == 2 * n
        && conversions == n
        && contacts == count
        && dead == 0;

    println!(
        "whole referrals: {referrals_done} of {count} converted and both sides rewarded in {seconds:.1} s \
         (triggers offered at {rate}/s)"
    );
    println!(
        "inbox events: {inbox_done} ({:.0}/s); jobs: {jobs_done} ({:.0}/s); largest inbox backlog: {largest_backlog}",
        inbox_done as f64 / seconds,
        jobs_done as f64 / seconds
    );
    // CPU time moves less with a noisy neighbour than the rate does: compare it too.
    let per_referral = |d: Duration| d.as_secs_f64() * 1000.0 / count.max(1) as f64;
    println!(
        "CPU (app, worker, fakes and driver, this process): {:.1} ms per referral; PostgreSQL: {:.1} ms per referral",
        per_referral(cpu),
        per_referral(postgres_cpu)
    );
    // What a deployment pays, without the fakes of Meta and HubSpot and the driver.
    println!(
        "of it, referloop's own threads (HTTP and worker): {:.1} ms; the fakes and the driver: {:.1} ms; \
         referloop and PostgreSQL together: {:.1} ms per referral",
        per_referral(referloop_cpu),
        per_referral(cpu.saturating_sub(referloop_cpu)),
        per_referral(referloop_cpu + postgres_cpu)
    );
    statements_report(statements_before, statements_after, count);
    println!(
        "trigger to friend invited: p50 {} ms, p99 {} ms; conversion to both rewards: p50 {} ms, p99 {} ms",
        percentile(&to_invited, 0.5),
        percentile(&to_invited, 0.99),
        percentile(&to_rewarded, 0.5),
        percentile(&to_rewarded, 0.99)
    );
    println!(
        "outside: {} sends, {} HubSpot calls ({} contact writes), {contacts} friend contacts created; requests refused: {} by the fakes, {} by the app",
        sent.values().sum::<u32>(),
        outside.hubspot_calls.load(Ordering::Relaxed),
        outside.hubspot_writes.load(Ordering::Relaxed),
        outside.refused.load(Ordering::Relaxed),
        driver.refused.load(Ordering::Relaxed)
    );
    println!(
        "the last HubSpot updates and statuses done {:.1} s after the last reward",
        drained_after.as_secs_f64()
    );
    println!(
        "exactly once: {} (rewards {rewards}, issued {rewards_issued}, conversions {conversions}, dead items {dead}, \
         repeated sends {}, missing {:?})",
        if once { "yes" } else { "no" },
        repeated.len(),
        missing
    );
    let per_second = if once { referrals_done as f64 / seconds } else { 0.0 };
    format!("whole referrals per second: {per_second:.0}")
}
