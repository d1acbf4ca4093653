//! Same outcome in any order. Random histories of events about whole referrals (triggers,
//! taps, Flow replies, Meta's statuses with random codes, duplicated, reordered and
//! sometimes two in one webhook, stop keywords, conversions from HubSpot, Stripe and the
//! API, refunds and voids) are delivered twice through the real webhooks and API:
//! once sequentially (one worker loop, each event handled in the history's order) and
//! once concurrently (all of a phase's events at once, with random delays, to three
//! worker loops of each queue). The final states must be equal: messages, invites,
//! referrals, rewards, conversions, funnel tallies, opt-outs and HubSpot writes.
//!
//! A history runs in phases, as a referral does: the events of a phase may arrive in
//! any order (Meta's statuses of one message, a tap and its redelivery, conversions of
//! one purchase from three sources); a phase starts when the one before has settled
//! (a friend cannot reply to a Flow that was never sent).
//!
//! `REFERLOOP_CONCURRENCY_HISTORIES` sets how many (200 by default, 5,000 in
//! scripts/faults); the seed is printed, and `REFERLOOP_CONCURRENCY_SEED` replays it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use referloop::store::Backend;
use serde_json::{json, Value};
use sqlx::Row;

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::nomination;
use crate::rewards::checkout_event;

/// One of Meta's statuses for a message: `sent`, `delivered`, `read` or `failed` with a code.
type Status = (&'static str, Option<i64>);

/// What the history does to one referrer and the friend they nominate, phase by phase.
#[derive(Debug, Clone)]
struct Plan {
    n: usize,
    /// NPS triggers: the survey dates (a repeat is the same trigger redelivered).
    triggers: Vec<u32>,
    invite_statuses: Vec<Vec<Status>>,
    /// "Refer someone" taps: their wamid numbers (a repeat is a redelivery).
    taps: Vec<u32>,
    flow_statuses: Vec<Vec<Status>>,
    /// Flow replies: their wamid numbers.
    replies: Vec<u32>,
    consent: bool,
    /// The referrer writes STOP while nominating.
    referrer_stops: bool,
    friend_statuses: Vec<Vec<Status>>,
    conversions: Vec<Source>,
    refund: bool,
    void: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    HubSpot,
    Stripe,
    Api,
}

impl Plan {
    fn contact(&self) -> String {
        format!("{}", 70_000 + self.n)
    }
    fn referrer(&self) -> String {
        format!("+4479333{:05}", self.n)
    }
    fn friend(&self) -> String {
        format!("+4479444{:05}", self.n)
    }
}

/// Meta's statuses for one message, as it might send them: a consistent outcome
/// (delivered and perhaps read, or, when `may_fail`, failed with a code, perhaps after
/// sent), each status perhaps twice, in any order, some two to a webhook. (The invite
/// and the Flow do not fail: their recipient answers them in the same phase.)
fn statuses(rng: &mut StdRng, may_fail: bool) -> Vec<Vec<Status>> {
    let outcomes = if may_fail { 10 } else { 7 };
    let mut all: Vec<Status> = match rng.gen_range(0..outcomes) {
        0..=5 => {
            let mut s = vec![("delivered", None)];
            if rng.gen_bool(0.7) {
                s.push(("sent", None));
            }
            if rng.gen_bool(0.5) {
                s.push(("read", None));
            }
            s
        }
        6 => vec![("sent", None)],
        _ => {
            let code = *[131049, 131050, 131026, 131000, 131047].choose(rng).unwrap_or(&131026);
            let mut s = vec![("failed", Some(code))];
            if rng.gen_bool(0.6) {
                s.push(("sent", None));
            }
            s
        }
    };
    let repeats: Vec<Status> = all.iter().filter(|_| rng.gen_bool(0.3)).copied().collect();
    all.extend(repeats);
    all.shuffle(rng);
    let mut webhooks = Vec::new();
    let mut rest = all.as_slice();
    while !rest.is_empty() {
        let take = if rest.len() > 1 && rng.gen_bool(0.3) { 2 } else { 1 };
        webhooks.push(rest[..take].to_vec());
        rest = &rest[take..];
    }
    webhooks
}

fn plan(n: usize, rng: &mut StdRng) -> Plan {
    let mut triggers = vec![1];
    if rng.gen_bool(0.5) {
        triggers.push(1);
    }
    if rng.gen_bool(0.2) {
        triggers.push(2);
    }
    let conversions: Vec<Source> = match rng.gen_range(0..6) {
        0 => vec![],
        1 => vec![Source::HubSpot],
        2 => vec![Source::Stripe, Source::Stripe],
        3 => vec![Source::Api, Source::Api],
        _ => vec![Source::HubSpot, Source::Stripe, Source::Api],
    };
    Plan {
        n,
        triggers,
        invite_statuses: statuses(rng, false),
        taps: if rng.gen_bool(0.3) { vec![1, 1] } else { vec![1] },
        flow_statuses: statuses(rng, false),
        replies: if rng.gen_bool(0.4) { vec![1, 1] } else { vec![1] },
        consent: rng.gen_bool(0.8),
        referrer_stops: rng.gen_bool(0.1),
        friend_statuses: statuses(rng, true),
        conversions,
        refund: rng.gen_bool(0.2),
        void: rng.gen_bool(0.2),
    }
}

/// One delivery: a webhook or API call, resolved against what the app has recorded when
/// it is made (the wamid of a message, the Flow token of an invite).
#[derive(Debug, Clone)]
enum Event {
    Trigger {
        plan: usize,
        date: u32,
    },
    Statuses {
        to: String,
        purpose: &'static str,
        items: Vec<Status>,
    },
    Tap {
        plan: usize,
        wamid: u32,
    },
    Reply {
        plan: usize,
        wamid: u32,
    },
    Stop {
        plan: usize,
    },
    Conversion {
        plan: usize,
        source: Source,
    },
    Refund {
        plan: usize,
    },
    Void {
        plan: usize,
    },
}

fn phases(plans: &[Plan]) -> Vec<Vec<Event>> {
    let mut phases = vec![Vec::new(); 6];
    for p in plans {
        let n = p.n;
        for &date in &p.triggers {
            phases[0].push(Event::Trigger { plan: n, date });
        }
        for items in &p.invite_statuses {
            let (to, purpose) = (p.referrer(), "invite");
            phases[1].push(Event::Statuses {
                to,
                purpose,
                items: items.clone(),
            });
        }
        for &wamid in &p.taps {
            phases[1].push(Event::Tap { plan: n, wamid });
        }
        for items in &p.flow_statuses {
            let (to, purpose) = (p.referrer(), "flow");
            phases[2].push(Event::Statuses {
                to,
                purpose,
                items: items.clone(),
            });
        }
        for &wamid in &p.replies {
            phases[2].push(Event::Reply { plan: n, wamid });
        }
        if p.referrer_stops {
            phases[2].push(Event::Stop { plan: n });
        }
        for items in &p.friend_statuses {
            let (to, purpose) = (p.friend(), "friend_invite");
            phases[3].push(Event::Statuses {
                to,
                purpose,
                items: items.clone(),
            });
        }
        for &source in &p.conversions {
            phases[4].push(Event::Conversion { plan: n, source });
        }
        if p.refund {
            phases[5].push(Event::Refund { plan: n });
        }
        if p.void {
            phases[5].push(Event::Void { plan: n });
        }
    }
    phases
}

/// The app under test, with a connection of our own for reading its tables.
struct Run {
    lc: Lifecycle,
    db: sqlx::AnyPool,
    plans: Arc<Vec<Plan>>,
}

impl Run {
    async fn start(backend: Backend, loops: usize, plans: Arc<Vec<Plan>>) -> Run {
        let lc = Lifecycle::start(backend, |env| {
            for (key, value) in [
                ("REFERLOOP_WORKER__INBOX_CONCURRENCY", loops.to_string()),
                ("REFERLOOP_WORKER__JOB_CONCURRENCY", loops.to_string()),
                ("REFERLOOP_WHATSAPP__MAX_MESSAGES_PER_SECOND", "1000".into()),
                ("REFERLOOP_HUBSPOT__REQUESTS_PER_10S", "100000".into()),
                ("REFERLOOP_HUBSPOT__SEARCHES_PER_SECOND", "10000".into()),
                ("REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "1,1,1,1,1,1,1,1".into()),
                ("REFERLOOP_PROGRAMME__MAX_OPEN_REFERRALS", "50".into()),
            ] {
                set_env(env, key, &value);
            }
        })
        .await;
        let url = lc
            .app
            .env
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .map(|(_, v)| v.clone())
            .expect("database url");
        // Each friend's contact is created under an id of its own (the default fake
        // answers one id for every creation).
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path("/crm/v3/objects/contacts"))
            .respond_with(|request: &wiremock::Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                let phone = body["properties"]["phone"].as_str().unwrap_or_default();
                let id = format!("6{}", &phone[phone.len().saturating_sub(5)..]);
                wiremock::ResponseTemplate::new(201).set_body_json(json!({"id": id, "properties": {}}))
            })
            .with_priority(5)
            .mount(&lc.hubspot)
            .await;
        sqlx::any::install_default_drivers();
        let db = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connect");
        Run { lc, db, plans }
    }

    async fn rows(&self, sql: &str) -> Vec<String> {
        let rows = sqlx::query(sql).fetch_all(&self.db).await.expect(sql);
        let mut lines: Vec<String> = rows
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        row.try_get::<Option<String>, _>(i)
                            .ok()
                            .flatten()
                            .or_else(|| row.try_get::<Option<i64>, _>(i).ok().flatten().map(|v| v.to_string()))
                            .unwrap_or_else(|| "-".into())
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        lines.sort();
        lines
    }

    /// The message `purpose` sent to `to` (its wamid), when there is one.
    async fn wamid(&self, to: &str, purpose: &str) -> Option<String> {
        sqlx::query_scalar::<_, String>(
            "SELECT wamid FROM messages WHERE to_phone = $1 AND purpose = $2 AND wamid IS NOT NULL \
             AND idempotency_key NOT LIKE '%:resend' ORDER BY id LIMIT 1",
        )
        .bind(to)
        .bind(purpose)
        .fetch_optional(&self.db)
        .await
        .expect("wamid")
    }

    async fn invite_id(&self, contact: &str) -> Option<i64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT id FROM invites WHERE contact_id = $1 AND state <> 'ineligible' ORDER BY id LIMIT 1",
        )
        .bind(contact)
        .fetch_optional(&self.db)
        .await
        .expect("invite")
    }

    async fn flow_token(&self, to: &str) -> Option<String> {
        let body: Option<String> = sqlx::query_scalar(
            "SELECT body FROM messages WHERE to_phone = $1 AND purpose = 'flow' ORDER BY id LIMIT 1",
        )
        .bind(to)
        .fetch_optional(&self.db)
        .await
        .expect("flow");
        let body: Value = serde_json::from_str(&body?).ok()?;
        body["interactive"]["action"]["parameters"]["flow_token"]
            .as_str()
            .map(str::to_string)
    }

    async fn referral(&self, friend: &str) -> Option<(i64, String)> {
        let row = sqlx::query("SELECT id, referral_code FROM referrals WHERE friend_phone = $1 ORDER BY id LIMIT 1")
            .bind(friend)
            .fetch_optional(&self.db)
            .await
            .expect("referral")?;
        Some((row.try_get(0).ok()?, row.try_get(1).ok()?))
    }

    /// Makes one delivery; an event about something this run never created is dropped
    /// (the same in both runs, since each phase starts from equal states).
    async fn deliver(&self, event: &Event) {
        let lc = &self.lc;
        let plan = |n: usize| &self.plans[n];
        let accepted = |status: u16| {
            assert!(
                (200..300).contains(&status) || status == 404 || status == 422,
                "{event:?}: {status}"
            )
        };
        match event {
            Event::Trigger { plan: n, date } => {
                let p = plan(*n);
                let date = (1_767_225_600_000u64 + u64::from(*date) * 86_400_000).to_string();
                accepted(lc.nps(&p.contact(), &p.referrer(), "Ana", "10", &date).await);
            }
            Event::Statuses { to, purpose, items } => {
                let Some(wamid) = self.wamid(to, purpose).await else {
                    return;
                };
                let items: Vec<Value> = items
                    .iter()
                    .map(|(status, code)| {
                        let mut item = json!({"id": wamid, "status": status, "timestamp": "1795510900",
                                              "recipient_id": to.trim_start_matches('+')});
                        if let Some(code) = code {
                            item["errors"] = json!([{"code": code, "title": "refused", "message": "refused"}]);
                        }
                        item
                    })
                    .collect();
                accepted(lc.whatsapp("messages", json!({"statuses": items})).await);
            }
            Event::Tap { plan: n, wamid } => {
                let p = plan(*n);
                let Some(invite) = self.invite_id(&p.contact()).await else {
                    return;
                };
                let tap = refer_tap(&p.referrer(), &format!("wamid.T{n}x{wamid}"), invite);
                accepted(lc.inbound(tap).await);
            }
            Event::Reply { plan: n, wamid } => {
                let p = plan(*n);
                let Some(token) = self.flow_token(&p.referrer()).await else {
                    return;
                };
                let response = nomination(Some(&token), &p.friend(), p.consent);
                let reply = flow_reply(&p.referrer(), &format!("wamid.R{n}x{wamid}"), "x", response);
                accepted(lc.inbound(reply).await);
            }
            Event::Stop { plan: n } => {
                let p = plan(*n);
                accepted(
                    lc.inbound(text_message(&p.referrer(), &format!("wamid.S{n}"), "STOP"))
                        .await,
                );
            }
            Event::Conversion { plan: n, source } => {
                let p = plan(*n);
                let Some((referral_id, code)) = self.referral(&p.friend()).await else {
                    return;
                };
                match source {
                    Source::HubSpot => {
                        let body = json!({"hs_object_id": format!("8{n:05}"), "lifecyclestage": "customer",
                                          "mobilephone": p.friend()});
                        accepted(lc.trigger("trigger=conversion", body).await);
                    }
                    Source::Stripe => {
                        let event = checkout_event(
                            &format!("evt_{n}"),
                            &format!("cs_{n}"),
                            json!({"client_reference_id": format!("referral:{referral_id}"),
                                   "metadata": {"referral_code": code}}),
                        );
                        accepted(lc.stripe_event(event).await);
                    }
                    Source::Api => {
                        let body = json!({"external_id": format!("order-{n}"), "friend_phone": p.friend()});
                        accepted(lc.api_conversion(body).await.0);
                    }
                }
            }
            Event::Refund { plan: n } => {
                let object = json!({"id": format!("ch_{n}"), "object": "charge", "payment_intent": format!("pi_cs_{n}"),
                                    "refunded": true});
                let event = json!({"id": format!("evt_refund_{n}"), "object": "event", "type": "charge.refunded",
                                   "api_version": "2025-09-30.clover", "data": {"object": object}});
                accepted(lc.stripe_event(event).await);
            }
            Event::Void { plan: n } => {
                let p = plan(*n);
                let Some((referral_id, _)) = self.referral(&p.friend()).await else {
                    return;
                };
                accepted(lc.void(referral_id).await.0);
            }
        }
    }

    /// Everything the history left, in terms that do not depend on the order of events
    /// (row ids, which conversion of a purchase came first).
    async fn final_state(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut state = BTreeMap::new();
        state.insert("invites", self.rows("SELECT contact_id, state FROM invites").await);
        state.insert(
            "messages",
            self.rows(
                "SELECT to_phone, purpose, status, error_code, \
                 CASE WHEN idempotency_key LIKE '%:resend' THEN 'resend' ELSE 'first' END FROM messages",
            )
            .await,
        );
        state.insert(
            "referrals",
            self.rows("SELECT referrer_phone, friend_phone, state, reason FROM referrals")
                .await,
        );
        state.insert(
            "rewards",
            self.rows(
                "SELECT r.friend_phone, w.beneficiary, w.kind, w.state FROM rewards w \
                 JOIN referrals r ON r.id = w.referral_id",
            )
            .await,
        );
        state.insert(
            "conversions",
            self.rows(
                "SELECT c.source, c.external_id, r.friend_phone FROM conversions c \
                 LEFT JOIN referrals r ON r.id = c.referral_id",
            )
            .await,
        );
        state.insert(
            "converted",
            self.rows(
                "SELECT r.friend_phone, COUNT(*) FROM conversions c JOIN referrals r ON r.id = c.referral_id \
                 WHERE c.outcome = 'converted' GROUP BY r.friend_phone",
            )
            .await,
        );
        state.insert(
            "funnel",
            self.rows("SELECT step, CAST(SUM(n) AS BIGINT) FROM funnel_tally GROUP BY step")
                .await,
        );
        state.insert(
            "referrer tally",
            self.rows("SELECT contact_id, step, n FROM referrer_tally").await,
        );
        state.insert(
            "opt-outs",
            self.rows("SELECT phone, opted_out FROM wa_users WHERE opted_out = 1")
                .await,
        );
        // Referral codes are drawn at random: named by their customer instead.
        let codes: Vec<(String, String)> = sqlx::query("SELECT referral_code, contact_id FROM customers")
            .fetch_all(&self.db)
            .await
            .expect("codes")
            .iter()
            .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
            .collect();
        let canonical = |text: String| {
            codes.iter().fold(text, |text, (code, contact)| {
                text.replace(code.as_str(), &format!("<code of {contact}>"))
            })
        };
        // HubSpot as it ends up: each contact's properties after the last update (an
        // update computed early, such as counters before a reward was issued, is
        // overwritten by the later one), and every other write as made.
        let mut properties: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut writes: Vec<String> = Vec::new();
        for (method, path, body) in self.lc.hubspot_calls().await {
            if method == "GET" || path.ends_with("/search") {
                continue;
            }
            match (method.as_str(), body["properties"].as_object()) {
                ("PATCH", Some(props)) => {
                    let contact = properties.entry(path).or_default();
                    for (name, value) in props {
                        contact.insert(name.clone(), canonical(value.to_string()));
                    }
                }
                _ => writes.push(canonical(format!("{method} {path} {body}"))),
            }
        }
        for (path, props) in properties {
            for (name, value) in props {
                writes.push(format!("{path} {name}={value}"));
            }
        }
        writes.sort();
        writes.dedup();
        state.insert("HubSpot writes", writes);
        state
    }
}

async fn deliver_sequentially(run: &Run, phases: &[Vec<Event>]) {
    for phase in phases {
        for event in phase {
            run.deliver(event).await;
        }
        run.lc.settle().await;
    }
}

async fn deliver_concurrently(run: &Arc<Run>, phases: &[Vec<Event>], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for phase in phases {
        let mut deliveries = tokio::task::JoinSet::new();
        for event in phase {
            let delay = Duration::from_millis(rng.gen_range(0..40));
            let (run, event) = (run.clone(), event.clone());
            deliveries.spawn(async move {
                tokio::time::sleep(delay).await;
                run.deliver(&event).await;
            });
        }
        while let Some(done) = deliveries.join_next().await {
            done.expect("delivery");
        }
        run.lc.settle().await;
    }
}

async fn same_outcome_in_any_order(backend: Backend) {
    let histories: usize = std::env::var("REFERLOOP_CONCURRENCY_HISTORIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("REFERLOOP_CONCURRENCY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{backend:?}: {histories} histories, REFERLOOP_CONCURRENCY_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let plans: Arc<Vec<Plan>> = Arc::new((0..histories).map(|n| plan(n, &mut rng)).collect());
    let phases = phases(&plans);
    let events: usize = phases.iter().map(Vec::len).sum();

    let sequential = Run::start(backend, 1, plans.clone()).await;
    deliver_sequentially(&sequential, &phases).await;
    let expected = sequential.final_state().await;

    let concurrent = Arc::new(Run::start(backend, 3, plans.clone()).await);
    deliver_concurrently(&concurrent, &phases, seed).await;
    let got = concurrent.final_state().await;

    let mut differences = Vec::new();
    for (what, rows) in &expected {
        let other = &got[what];
        if rows != other {
            let missing: Vec<&String> = rows.iter().filter(|r| !other.contains(r)).take(8).collect();
            let extra: Vec<&String> = other.iter().filter(|r| !rows.contains(r)).take(8).collect();
            differences.push(format!(
                "{what} ({} rows vs {}): only sequential {missing:#?}, only concurrent {extra:#?}",
                rows.len(),
                other.len()
            ));
        }
    }
    if !differences.is_empty() {
        // What each run did about the numbers concerned, for the failure message.
        let mut phones: Vec<String> = Vec::new();
        for d in &differences {
            for word in d.split(|c: char| !(c.is_ascii_digit() || c == '+')) {
                if word.starts_with("+44794") && !phones.contains(&word.to_string()) {
                    phones.push(word.to_string());
                }
            }
        }
        let mut told = String::new();
        for phone in phones.iter().take(3) {
            for (name, run) in [("sequential", &sequential), ("concurrent", &*concurrent)] {
                let digits = phone.trim_start_matches('+');
                let messages = run
                    .rows(&format!(
                        "SELECT id, purpose, status, error_code, wamid, idempotency_key FROM messages WHERE to_phone = '{phone}'"
                    ))
                    .await;
                let events = run
                    .rows(&format!(
                        "SELECT id, kind, state, note, last_error FROM inbox_events WHERE payload LIKE '%{digits}%'"
                    ))
                    .await;
                told.push_str(&format!(
                    "\n{name} {phone}:\n  {}\n  {}",
                    messages.join("\n  "),
                    events.join("\n  ")
                ));
            }
        }
        panic!("final states differ (seed {seed}):\n{}{told}", differences.join("\n"));
    }
    let converted = expected["referrals"]
        .iter()
        .filter(|r| r.contains(" converted "))
        .count();
    println!(
        "{backend:?}: {histories} histories, {events} deliveries each way, equal final states \
         ({} messages, {converted} referrals converted, {} rewards)",
        expected["messages"].len(),
        expected["rewards"].len()
    );
    assert!(converted > 0, "some histories reach a conversion");
}

both_backends!(same_outcome_in_any_order);
