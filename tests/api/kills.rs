//! Workers of the real binary killed with SIGKILL at random moments during whole
//! referrals, from the trigger through both rewards, with the promoter's reminder before
//! the tap, the referrer's nudge before the conversion, and a milestone bonus at each
//! referrer's first rewarded referral. The HTTP side runs in the test
//! (so webhooks are always acknowledged); the work runs only in worker processes
//! (three on PostgreSQL, two on SQLite), each killed and restarted at random. Every
//! message, contact, promotion code and reward still happens exactly once on the
//! outside, counted by the stateful fakes.
//!
//! The Graph fake plays Meta's statuses as Meta does (`sent` and `delivered` apart, in
//! any order, sometimes in one webhook), and one accepted send in seven is failed with a
//! transient 131000 racing its `sent`, so the app sends it again once. Each referral
//! must reach `friend_invited` (the friend's `delivered` was not lost) before it converts,
//! and every message ends delivered, or failed and resent.
//!
//! The kill schedule is printed with its seed; `REFERLOOP_KILL_SEED=<n>` replays it,
//! `REFERLOOP_KILL_REFERRALS=<n>` runs more referrals (scripts/faults does),
//! `REFERLOOP_KILL_WORKERS=<n>` sets how many workers run and
//! `REFERLOOP_KILL_INTERVAL_MS=<min>-<max>` how often one is killed (100-900).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use referloop::domain::state::Persisted;
use referloop::store::{Backend, Queue};
use serde_json::{json, Value};

use crate::both_backends;
use crate::chaos::{assert_funnel, chaos_env, drain, sends_to, Outside};
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::nomination;

/// One referrer and the friend they nominate.
struct Pair {
    contact: String,
    referrer: String,
    friend: String,
}

fn pairs(n: usize) -> Vec<Pair> {
    (0..n)
        .map(|i| Pair {
            contact: format!("{}", 91_000 + i),
            referrer: format!("+4479111{:05}", 30_000 + i),
            friend: format!("+4479111{:05}", 40_000 + i),
        })
        .collect()
}

/// A worker process, killed when dropped: a test that fails midway (its task dropped with
/// the runtime) leaves no worker running on.
struct Worker(Child);

impl Worker {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_worker(env: &[(String, String)]) -> Worker {
    let mut command = Command::new(env!("CARGO_BIN_EXE_referloop"));
    command
        .arg("serve")
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .env("REFERLOOP_WORKER__ENABLED", "true")
        .env("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0")
        .spawn()
        .map(Worker)
        .expect("start a referloop worker")
}

/// Kills a random worker every 0.1–0.9 s and starts it again while `phase` is
/// KILLING; lets them work while it is CALM; stops them at FINISHED. Returns the kills.
const KILLING: usize = 0;
const CALM: usize = 1;
const FINISHED: usize = 2;

fn kill_at_random(
    env: Vec<(String, String)>,
    count: usize,
    interval_ms: std::ops::Range<u64>,
    seed: u64,
    phase: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut workers: Vec<Worker> = (0..count).map(|_| start_worker(&env)).collect();
        let mut kills = 0;
        while phase.load(Ordering::SeqCst) == KILLING {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(interval_ms.clone()))).await;
            let victim = rng.gen_range(0..workers.len());
            workers[victim].stop();
            kills += 1;
            workers[victim] = start_worker(&env);
        }
        while phase.load(Ordering::SeqCst) == CALM {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(workers);
        kills
    })
}

async fn wait_for_send(outside: &Outside, name: &str, to: &str) -> Value {
    let mut found = None;
    let sent = eventually(Duration::from_secs(90), || {
        found = outside.graph.of(name).into_iter().find(|b| b["to"] == to);
        std::future::ready(found.is_some())
    })
    .await;
    assert!(sent, "{name} to {to} was never sent");
    found.unwrap_or(Value::Null)
}

/// Drives one whole referral through the app's webhooks and API, waiting at each step
/// for the workers to do their part.
async fn whole_referral(lc: &Lifecycle, outside: &Outside, pair: &Pair, n: usize) {
    let trigger = lc
        .nps(&pair.contact, &pair.referrer, "Ana", "10", "1767225600000")
        .await;
    assert_eq!(trigger, 200);
    wait_for_send(outside, "tmpl_referral_invite", &pair.referrer).await;
    // The promoter waits for the reminder (due a second after the invite) before tapping.
    wait_for_send(outside, "tmpl_referral_reminder", &pair.referrer).await;
    let invites = lc.app.store.list_invites(1_000).await.expect("invites");
    let invite = invites
        .iter()
        .find(|i| i.contact_id == pair.contact && i.state.as_str() != "ineligible")
        .expect("an invite");
    let tap = refer_tap(&pair.referrer, &format!("wamid.TAP{n}"), invite.id);
    assert_eq!(lc.inbound(tap).await, 200);
    let flow = wait_for_send(outside, "interactive", &pair.referrer).await;
    let token = flow["interactive"]["action"]["parameters"]["flow_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let reply = flow_reply(
        &pair.referrer,
        &format!("wamid.NOM{n}"),
        "x",
        nomination(Some(&token), &pair.friend, true),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    wait_for_send(outside, "tmpl_referral_friend_invite", &pair.friend).await;
    // Meta's `delivered` for the friend's invite moves the referral on, however its
    // statuses raced (and after the resend, when the first send failed).
    let friend_referral = || {
        let store = lc.app.store.clone();
        let friend = pair.friend.clone();
        async move {
            let referrals = store.list_referrals(1_000).await.ok()?;
            referrals
                .into_iter()
                .find(|r| r.friend_phone.as_ref().is_some_and(|p| p.as_str() == friend))
        }
    };
    let invited = eventually(Duration::from_secs(180), || async {
        friend_referral()
            .await
            .is_some_and(|r| r.state.as_str() == "friend_invited")
    })
    .await;
    if !invited {
        let messages = lc.app.store.list_messages(10_000).await.unwrap_or_default();
        let to_friend: Vec<_> = messages.iter().filter(|m| m.to_phone.as_str() == pair.friend).collect();
        panic!(
            "referral {n} never reached friend_invited: {:?}; messages to the friend: {to_friend:?}",
            friend_referral().await.map(|r| r.state)
        );
    }
    // The friend waits for the referrer's nudge (due two seconds after the nomination).
    let nudged = eventually(Duration::from_secs(90), || {
        std::future::ready(
            outside
                .graph
                .of("tmpl_referral_nudge")
                .iter()
                .any(|b| b["to"] == pair.referrer.as_str()),
        )
    })
    .await;
    if !nudged {
        let jobs = lc.app.store.list(Queue::Jobs, None, 10_000).await.unwrap_or_default();
        let reminders: Vec<_> = jobs
            .iter()
            .filter(|j| j.kind.to_string().starts_with("reminder."))
            .collect();
        let messages = lc.app.store.list_messages(10_000).await.unwrap_or_default();
        let to_referrer: Vec<_> = messages
            .iter()
            .filter(|m| m.to_phone.as_str() == pair.referrer)
            .collect();
        panic!(
            "the nudge to {} was never sent: {reminders:#?}; messages to the referrer: {to_referrer:#?}",
            pair.referrer
        );
    }
    let code = friend_referral().await.expect("the referral").referral_code;
    let (status, body) = lc
        .api_conversion(json!({"external_id": format!("order-{n}"), "referral_code": code}))
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn workers_killed_at_random_do_everything_once(backend: Backend) {
    let count: usize = std::env::var("REFERLOOP_KILL_REFERRALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("REFERLOOP_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let workers: usize = std::env::var("REFERLOOP_KILL_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(match backend {
            Backend::Postgres => 3,
            Backend::Sqlite => 2,
        });
    let interval_ms = std::env::var("REFERLOOP_KILL_INTERVAL_MS")
        .ok()
        .and_then(|v| {
            let (min, max) = v.split_once('-')?;
            Some(min.trim().parse::<u64>().ok()?..max.trim().parse::<u64>().ok()?)
        })
        .filter(|range| !range.is_empty())
        .unwrap_or(100..900);
    // A milestone at the first rewarded referral: every referrer earns a bonus.
    let config = tempfile::tempdir().expect("dir");
    let config_file = config.path().join("referloop.toml");
    // And every referral inside an experiment whose variant doubles the referrer's reward:
    // a contact's variant must never change, whatever the kills and the three workers do.
    std::fs::write(
        &config_file,
        "[[rewards.milestones]]\nconversions = 1\nreward = { kind = \"static_code\", amount = 500, \
         currency = \"usd\", description = \"a $5 bonus\", static_code = \"BONUS5\" }\n\
         [[experiments]]\nname = \"kills\"\nstarts = \"2020-01-01\"\nends = \"2099-12-31\"\n\
         [[experiments.variants]]\nname = \"control\"\nweight = 1\n\
         [[experiments.variants]]\nname = \"double\"\nweight = 1\nrewards.referrer.amount = 2000\n",
    )
    .expect("config file");
    let config_path = config_file.to_string_lossy().to_string();
    let lc = Lifecycle::start(backend, |env| {
        chaos_env(env);
        set_env(env, "REFERLOOP_CONFIG", &config_path);
        set_env(env, "REFERLOOP_REMINDERS__PROMOTER_AFTER", "1s");
        set_env(env, "REFERLOOP_REMINDERS__FRIEND_AFTER", "2s");
        // The referrer gets three marketing templates here (invite, reminder, nudge).
        set_env(env, "REFERLOOP_MESSAGING__MAX_MARKETING_PER_CONTACT_PER_WEEK", "3");
        set_env(env, "REFERLOOP_WORKER__ENABLED", "false");
        set_env(env, "REFERLOOP_WORKER__LEASE_SECONDS", "2");
        // An interrupted send waits this long for Meta's status before it is sent again
        // (two minutes in production). Under kills every fraction of a second with a
        // hundred referrals, the statuses can queue for longer than chaos_env's 3 s.
        set_env(env, "REFERLOOP_WORKER__INTERRUPTED_SEND_WAIT_SECONDS", "30");
    })
    .await;
    let outside = Outside::mount(&lc, false).await;
    outside.graph.fail_one_in(7);
    let phase = Arc::new(AtomicUsize::new(KILLING));
    let killer = kill_at_random(lc.app.env.clone(), workers, interval_ms.clone(), seed, phase.clone());

    let lc = Arc::new(lc);
    let outside = Arc::new(outside);
    let mut drives = tokio::task::JoinSet::new();
    for (n, pair) in pairs(count).into_iter().enumerate() {
        let (lc, outside) = (lc.clone(), outside.clone());
        drives.spawn(async move {
            whole_referral(&lc, &outside, &pair, n).await;
            pair
        });
    }
    let mut pairs = Vec::new();
    while let Some(driven) = drives.join_next().await {
        pairs.push(driven.expect("a referral driven through"));
    }
    // Keep killing while the conversions turn into rewards.
    tokio::time::sleep(Duration::from_secs(5)).await;
    phase.store(CALM, Ordering::SeqCst);
    drain(&lc, Duration::from_secs(120)).await;
    // Meta's last statuses come up to 1.5 s after the last sends (and the resends they
    // cause later still): wait for them, and for what they cause.
    let graph = outside.graph.clone();
    for _ in 0..5 {
        assert!(
            eventually(Duration::from_secs(60), || std::future::ready(!graph.owes_statuses())).await,
            "the fake posted every status"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        drain(&lc, Duration::from_secs(120)).await;
        if !graph.owes_statuses() {
            break;
        }
    }
    phase.store(FINISHED, Ordering::SeqCst);
    let kills = killer.await.unwrap_or(0);
    outside.stop();

    let failed = outside.graph.failed();
    println!(
        "{backend:?}: {count} referrals, {workers} workers, {kills} kills every {interval_ms:?} ms, \
         {} sends failed after acceptance and resent (REFERLOOP_KILL_SEED={seed})",
        failed.len()
    );
    assert!(kills > 0, "workers were killed");
    // No status was lost: every message ends delivered, or failed (the sends the fake
    // failed, each sent again and delivered).
    let messages = lc.app.store.list_messages(10_000).await.expect("messages");
    for message in &messages {
        let wamid = message.wamid.clone().unwrap_or_default();
        match message.status.as_str() {
            "delivered" | "read" => {}
            "failed" => assert!(
                failed.contains(&wamid),
                "failed only as the fake failed it: {message:?}"
            ),
            other => panic!("message {} ended {other}, a status was lost (seed {seed})", message.id),
        }
    }
    let failed_messages = messages.iter().filter(|m| m.status.as_str() == "failed").count();
    assert_eq!(failed_messages, failed.len(), "every failure recorded (seed {seed})");
    for pair in &pairs {
        for (template, to) in [
            ("tmpl_referral_invite", &pair.referrer),
            ("tmpl_referral_reminder", &pair.referrer),
            ("tmpl_referral_nudge", &pair.referrer),
            ("tmpl_referral_bonus", &pair.referrer),
            ("interactive", &pair.referrer),
            ("tmpl_referral_friend_invite", &pair.friend),
            ("tmpl_referral_thanks", &pair.referrer),
            ("tmpl_referral_reward", &pair.referrer),
            ("tmpl_referral_reward", &pair.friend),
        ] {
            assert_eq!(
                sends_to(&outside.graph, template, to),
                1,
                "{template} to {to} exactly once (seed {seed})"
            );
        }
    }
    assert_eq!(outside.contacts.created.all().len(), count, "one contact per friend");
    assert_eq!(
        outside.codes.created.all().len(),
        count,
        "one promotion code per friend"
    );
    let rewards = lc.app.store.list_rewards(1_000).await.expect("rewards");
    assert_eq!(rewards.len(), 3 * count, "both sides' rewards and a bonus per referral");
    assert!(rewards.iter().all(|r| r.state.as_str() == "issued"), "{rewards:?}");
    let referrals = lc.app.store.list_referrals(1_000).await.expect("referrals");
    assert!(referrals.iter().all(|r| r.state.as_str() == "converted"));
    // Each invite carries the variant its contact's hash names, and the referrer's reward
    // is that variant's.
    for r in &referrals {
        let invite = lc.app.store.invite(r.invite_id).await.expect("read").expect("invite");
        let expected = match referloop::domain::experiment::assign("kills", &invite.contact_id, &[1, 1]) {
            Some(0) => "control",
            _ => "double",
        };
        assert_eq!(
            invite.variant.as_deref(),
            Some(expected),
            "invite {} (seed {seed})",
            invite.id
        );
        let referrer = rewards
            .iter()
            .find(|w| w.referral_id == r.id && w.beneficiary.as_str() == "referrer")
            .expect("the referrer's reward");
        let amount = if expected == "double" { 2000 } else { 1000 };
        assert_eq!(referrer.amount, amount, "referral {} (seed {seed})", r.id);
    }
    let jobs = lc.app.store.list(Queue::Jobs, None, 10_000).await.expect("jobs");
    assert!(jobs.iter().all(|j| j.state.as_str() == "done"), "no dead job: {jobs:?}");
    assert_funnel(&lc, count as i64).await;
    if let Ok(lc) = Arc::try_unwrap(lc) {
        lc.shutdown().await;
    }
}

both_backends!(workers_killed_at_random_do_everything_once);
