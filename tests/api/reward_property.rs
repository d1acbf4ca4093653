//! Property: any interleaving and repetition of conversion signals, job runs, abandoned
//! claims (a worker that crashed) and restarts yields at most one reward per (referral,
//! beneficiary), one message per issued reward, one thank-you, and HubSpot counters equal
//! to the ledger. Runs against real SQLite and the real worker in sandbox mode.

use std::sync::Arc;

use proptest::prelude::*;
use referloop::config::Settings;
use referloop::jobs::{convert, Services, Worker};
use referloop::metrics::Metrics;
use referloop::store::{Backend, NewConversion, NewInvite, NewReferral, Queue, ReferralInsert, Store};
use serde_json::Value;

use crate::helpers::*;

#[derive(Debug, Clone)]
enum Op {
    /// A conversion signal from one of three sources, with one of two external ids.
    Signal { source: usize, external: usize },
    /// The worker handles up to n items.
    Work(usize),
    /// A worker claims the next job and dies (its lease lapses).
    Crash,
    /// The process restarts: new pool, new services, new worker.
    Restart,
    /// A worker claims a pending reward for fulfilment and dies before recording anything.
    DieWhileIssuing,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3, 0usize..2).prop_map(|(source, external)| Op::Signal { source, external }),
        (1usize..6).prop_map(Op::Work),
        Just(Op::Crash),
        Just(Op::Restart),
        Just(Op::DieWhileIssuing),
    ]
}

struct Process {
    store: Store,
    services: Arc<Services>,
    worker: Worker,
}

async fn start(url: &str, settings: &Arc<Settings>) -> Process {
    let store = Store::connect(url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let services =
        Arc::new(Services::new(store.clone(), settings.clone(), Arc::new(Metrics::new())).expect("services"));
    let worker = Worker::new(services.clone());
    Process {
        store,
        services,
        worker,
    }
}

async fn seed_invited_referral(store: &Store) -> i64 {
    let invite = store
        .insert_invite(&NewInvite {
            trigger_key: "seed".into(),
            contact_id: "90001".into(),
            trigger: "nps".into(),
            phone: Some("+447911123456".into()),
            first_name: "Ana".into(),
            language: "en_US".into(),
            referral_code: Some("ANA7KQ2".into()),
            state: "nominated".into(),
            reason: None,
        })
        .await
        .expect("invite");
    let referral = NewReferral {
        invite_id: invite.id,
        flow_token: "seed-token".into(),
        referrer_contact_id: "90001".into(),
        referrer_phone: "+447911123456".into(),
        referrer_name: "Ana".into(),
        referral_code: "ANA7KQ2".into(),
        friend_phone: "+447911123457".into(),
        friend_name: "Zoë".into(),
        personal_message: None,
        consent: true,
        language: "en_US".into(),
    };
    let ReferralInsert::Created(id) = store.insert_referral(&referral, 0).await.expect("referral") else {
        panic!("seed referral not created");
    };
    assert!(store
        .transition_referral(id, "nominated", "friend_invited", None, &[], &[])
        .await
        .expect("move"));
    id
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut env = base_env(&db.url);
    set_env(&mut env, "REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "0,0,0,0,0,0");
    set_env(&mut env, "REFERLOOP_WORKER__RETRY_JITTER", "0");
    let settings = Arc::new(Settings::load_from(None, env).expect("settings"));
    let mut process = start(&db.url, &settings).await;
    let referral_id = seed_invited_referral(&process.store).await;
    let mut signalled = false;

    for op in ops {
        match op {
            Op::Signal { source, external } => {
                let source = ["api", "hubspot", "stripe"][source];
                let conversion = NewConversion {
                    source: source.into(),
                    external_id: format!("{source}-{external}"),
                    referral_id: Some(referral_id),
                    matched_by: Some("test".into()),
                    amount: Some(4900),
                    currency: Some("usd".into()),
                    payment_ref: None,
                    stripe_customer: None,
                };
                convert(&process.services, conversion)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                signalled = true;
            }
            Op::Work(n) => {
                for _ in 0..n {
                    if !process.worker.work_once().await.expect("work") {
                        break;
                    }
                }
            }
            Op::Crash => {
                let _ = process.store.claim(Queue::Jobs, "ghost", 1).await.expect("claim");
            }
            Op::DieWhileIssuing => {
                let rewards = process.store.list_rewards(10).await.expect("rewards");
                if let Some(pending) = rewards.iter().find(|r| r.state == "pending") {
                    process.store.claim_reward(pending.id).await.expect("claim");
                }
            }
            Op::Restart => {
                process.store.close().await;
                process = start(&db.url, &settings).await;
            }
        }
    }
    // Let abandoned leases lapse, then drain.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    for _ in 0..500 {
        if !process.worker.work_once().await.expect("work") {
            break;
        }
    }

    let store = &process.store;
    let rewards = store.list_rewards(100).await.expect("rewards");
    for side in ["referrer", "friend"] {
        prop_assert!(
            rewards.iter().filter(|r| r.beneficiary == side).count() <= 1,
            "two {} rewards",
            side
        );
    }
    let issued = rewards.iter().filter(|r| r.state == "issued").count();
    prop_assert_eq!(issued, if signalled { 2 } else { 0 });
    let messages = store.list_messages(100).await.expect("messages");
    prop_assert_eq!(
        messages.iter().filter(|m| m.purpose == "reward").count(),
        issued,
        "one message per issued reward"
    );
    prop_assert_eq!(
        messages.iter().filter(|m| m.purpose == "thanks").count(),
        usize::from(signalled)
    );
    let calls = store.list_outbound_calls(1000).await.expect("calls");
    let reward_sends = calls.iter().filter(|c| c.body.contains("tmpl_referral_reward")).count();
    prop_assert_eq!(reward_sends, issued, "each reward message sent once");

    // The newest counters written to HubSpot equal the ledger.
    let (converted, total) = store.referrer_counters("90001").await.expect("counters");
    let last_counters = calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.url.ends_with("/contacts/90001"))
        .filter_map(|c| serde_json::from_str::<Value>(&c.body).ok())
        .find(|b| b["properties"].get("referrals_converted").is_some());
    if signalled {
        let body = last_counters.expect("counters written");
        prop_assert_eq!(
            &body["properties"]["referrals_converted"],
            &Value::from(converted.to_string())
        );
        prop_assert_eq!(
            &body["properties"]["referral_rewards_total"],
            &Value::from(total.to_string())
        );
        prop_assert_eq!((converted, total), (1, 1000));
    } else {
        prop_assert!(last_counters.is_none());
    }
    process.store.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn rewards_happen_once_and_counters_match_the_ledger(ops in proptest::collection::vec(op(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(run(ops))?;
    }
}
