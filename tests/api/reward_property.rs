//! Property: any interleaving and repetition of referral events, conversion signals, job
//! runs by several concurrent workers (each with its own pool, like replicas), abandoned
//! claims (a worker that crashed) and restarts leaves the referral where the pure machine
//! says, with at most one reward per (referral, beneficiary), one message per issued
//! reward, one thank-you, and HubSpot counters equal to the ledger. Runs against real
//! SQLite and real PostgreSQL and the real worker, in sandbox mode.

use std::sync::Arc;

use proptest::prelude::*;
use referloop::app::conversion::{convert, Attribution};
use referloop::app::transition::{self, EventContext};
use referloop::app::Services;
use referloop::config::Settings;
use referloop::domain::nomination::NominationRefusal;
use referloop::domain::referral::{self, ReferralEvent, ReferralState};
use referloop::domain::state::{ConversionSource, InviteState, MatchedBy, Persisted};
use referloop::jobs::Worker;
use referloop::metrics::Metrics;
use referloop::store::{Backend, NewConversion, NewInvite, NewReferral, Queue, ReferralInsert, Store};
use serde_json::Value;

use crate::helpers::*;

/// Workers that run side by side in a `Work` step.
const WORKERS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A referral event, applied as its step would.
    Event(ReferralEvent),
    /// A conversion signal from one of three sources, with one of two external ids.
    Signal { source: usize, external: usize },
    /// The concurrent workers handle up to n items each.
    Work(usize),
    /// A worker claims the next job and dies (its lease lapses).
    Crash,
    /// The process restarts: new pools, new services, new workers.
    Restart,
    /// A worker claims a pending reward for fulfilment and dies before recording anything.
    DieWhileIssuing,
}

fn event() -> impl Strategy<Value = ReferralEvent> {
    prop_oneof![
        Just(ReferralEvent::Screened { refusal: None }),
        Just(ReferralEvent::Screened {
            refusal: Some(NominationRefusal::AlreadyCustomer)
        }),
        Just(ReferralEvent::DirectInviteDelivered),
        Just(ReferralEvent::DirectInviteFailed { policy_limit: true }),
        Just(ReferralEvent::DirectInviteFailed { policy_limit: false }),
        Just(ReferralEvent::FriendArrived),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => event().prop_map(Op::Event),
        2 => (0usize..3, 0usize..2).prop_map(|(source, external)| Op::Signal { source, external }),
        3 => (1usize..6).prop_map(Op::Work),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
        1 => Just(Op::DieWhileIssuing),
    ]
}

struct Process {
    store: Store,
    services: Arc<Services>,
    workers: Vec<Worker>,
}

async fn start(url: &str, settings: &Arc<Settings>) -> Process {
    let store = Store::connect(url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let services =
        Arc::new(Services::new(store.clone(), settings.clone(), Arc::new(Metrics::new())).expect("services"));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        // A pool of its own per worker, as replicas have.
        let replica = Store::connect(url, 2)
            .await
            .expect("connect")
            .with_clock(store.clock().clone());
        let replica_services = Services::new(replica, settings.clone(), Arc::new(Metrics::new())).expect("services");
        workers.push(Worker::new(Arc::new(replica_services)));
    }
    Process {
        store,
        services,
        workers,
    }
}

async fn seed_nominated_referral(store: &Store) -> i64 {
    let mut tx = store.begin(None).await.expect("begin");
    let invite = tx
        .insert_invite(&NewInvite {
            trigger_key: "seed".into(),
            contact_id: "90001".into(),
            trigger: referloop::domain::eligibility::TriggerKind::Nps,
            phone: Some(e164("+447911123456")),
            first_name: "Ana".into(),
            language: "en_US".into(),
            referral_code: Some("ANA7KQ2".into()),
            state: InviteState::Nominated,
            reason: None,
        })
        .await
        .expect("invite");
    let referral = NewReferral {
        invite_id: invite.id,
        flow_token: "seed-token".into(),
        referrer_contact_id: "90001".into(),
        referrer_phone: Some(e164("+447911123456")),
        referrer_name: "Ana".into(),
        referral_code: "ANA7KQ2".into(),
        friend_phone: Some(e164("+447911123457")),
        friend_name: "Zoë".into(),
        personal_message: None,
        consent: true,
        language: "en_US".into(),
    };
    let ReferralInsert::Created(id) = tx.insert_referral(&referral).await.expect("referral") else {
        panic!("seed referral not created");
    };
    tx.commit("").await.expect("commit");
    id
}

/// Runs the workers side by side, each for up to `n` items.
async fn work_concurrently(process: &Process, n: usize) {
    let mut running = Vec::new();
    for worker in &process.workers {
        let worker = worker.clone();
        running.push(tokio::spawn(async move {
            for _ in 0..n {
                // A claim or a record that fails (SQLite busy) is a worker that gave up.
                if !worker.work_once().await.unwrap_or(false) {
                    break;
                }
            }
        }));
    }
    for task in running {
        let _ = task.await;
    }
}

async fn run(backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let db = TestDatabase::new(backend).await;
    let mut env = base_env(&db.url);
    set_env(&mut env, "REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "0,0,0,0,0,0,0,0");
    set_env(&mut env, "REFERLOOP_WORKER__RETRY_JITTER", "0");
    set_env(&mut env, "REFERLOOP_WORKER__LEASE_SECONDS", "1");
    let settings = Arc::new(Settings::load_from(None, env).expect("settings"));
    let mode = settings.programme.friend_invite;
    let mut process = start(&db.url, &settings).await;
    let referral_id = seed_nominated_referral(&process.store).await;
    // The model: the pure machine, fed the same events in the same order.
    let mut expected = ReferralState::Nominated;

    for op in ops {
        match op {
            Op::Event(event) => {
                let mut tx = process.store.begin(None).await.expect("begin");
                transition::apply(&process.services, &mut tx, referral_id, &event, EventContext::default())
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                tx.commit("").await.expect("commit");
                expected = referral::apply(expected, mode, true, &event).state;
            }
            Op::Signal { source, external } => {
                let source = ConversionSource::ALL[source];
                let conversion = NewConversion {
                    source,
                    external_id: format!("{}-{external}", source.as_str()),
                    referral_id: None,
                    matched_by: None,
                    amount: Some(4900),
                    currency: Some("usd".into()),
                    payment_ref: None,
                    stripe_customer: None,
                };
                let attribution = Attribution::Referral {
                    id: referral_id,
                    matched_by: MatchedBy::Code,
                };
                convert(&process.services, None, conversion, attribution)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                expected = referral::apply(expected, mode, true, &ReferralEvent::Converted).state;
            }
            Op::Work(n) => work_concurrently(&process, n).await,
            Op::Crash => {
                let _ = process.store.claim(Queue::Jobs, "ghost", 1).await.expect("claim");
            }
            Op::DieWhileIssuing => {
                let rewards = process.store.list_rewards(10).await.expect("rewards");
                if let Some(pending) = rewards.iter().find(|r| r.state.as_str() == "pending") {
                    process.store.claim_reward(pending.id).await.expect("claim");
                }
            }
            Op::Restart => {
                process.store.close().await;
                process = start(&db.url, &settings).await;
            }
        }
    }
    // Let abandoned leases lapse (the lease is a second), then drain.
    process.store.clock().advance(std::time::Duration::from_secs(2));
    for _ in 0..100 {
        work_concurrently(&process, 20).await;
        let open = process.store.count_by_state(Queue::Jobs).await.expect("counts");
        let pending: i64 = open
            .iter()
            .filter(|(state, _)| !matches!(state.as_str(), "done" | "dead"))
            .map(|(_, n)| n)
            .sum();
        if pending == 0 {
            break;
        }
    }

    let store = &process.store;
    let referral = store.referral(referral_id).await.expect("referral").expect("exists");
    prop_assert_eq!(referral.state, expected, "the stored referral follows the machine");
    let converted = expected == ReferralState::Converted;
    let rewards = store.list_rewards(100).await.expect("rewards");
    for side in ["referrer", "friend"] {
        prop_assert!(
            rewards.iter().filter(|r| r.beneficiary.as_str() == side).count() <= 1,
            "two {} rewards",
            side
        );
    }
    let issued = rewards.iter().filter(|r| r.state.as_str() == "issued").count();
    prop_assert_eq!(issued, if converted { 2 } else { 0 });
    let messages = store.list_messages(100).await.expect("messages");
    let of = |purpose: &str| messages.iter().filter(|m| m.purpose.as_str() == purpose).count();
    prop_assert_eq!(of("reward"), issued, "one message per issued reward");
    prop_assert_eq!(of("thanks"), usize::from(converted));
    for effect in ["friend_invite", "share_link", "friend_welcome", "refusal"] {
        prop_assert!(of(effect) <= 1, "{} asked twice", effect);
    }
    let calls = store.list_outbound_calls(1000).await.expect("calls");
    let reward_sends = calls.iter().filter(|c| c.body.contains("tmpl_referral_reward")).count();
    prop_assert_eq!(reward_sends, issued, "each reward message sent once");
    let dead = store.list(Queue::Jobs, None, 1000).await.expect("jobs");
    prop_assert!(
        dead.iter().all(|j| j.state.as_str() != "dead"),
        "no job died: {:?}",
        dead.iter().filter(|j| j.state.as_str() == "dead").collect::<Vec<_>>()
    );

    // The newest counters written to HubSpot equal the ledger.
    let (converted_count, total, _bonuses) = store.referrer_counters("90001").await.expect("counters");
    let last_counters = calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.url.ends_with("/contacts/90001"))
        .filter_map(|c| serde_json::from_str::<Value>(&c.body).ok())
        .find(|b| b["properties"].get("referrals_converted").is_some());
    if converted {
        let body = last_counters.expect("counters written");
        prop_assert_eq!(
            &body["properties"]["referrals_converted"],
            &Value::from(converted_count.to_string())
        );
        prop_assert_eq!(
            &body["properties"]["referral_rewards_total"],
            &Value::from(total.to_string())
        );
        prop_assert_eq!((converted_count, total), (1, 1000));
    } else {
        prop_assert!(last_counters.is_none());
    }
    process.store.close().await;
    Ok(())
}

fn check(backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(backend, ops))
}

/// 16 cases in the ordinary test run; `scripts/faults` asks for more.
fn cases() -> u32 {
    std::env::var("REFERLOOP_PROPERTY_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn sqlite_referral_and_rewards_happen_once(ops in proptest::collection::vec(op(), 1..30)) {
        check(Backend::Sqlite, ops)?;
    }

    #[test]
    fn postgres_referral_and_rewards_happen_once(ops in proptest::collection::vec(op(), 1..30)) {
        check(Backend::Postgres, ops)?;
    }
}
