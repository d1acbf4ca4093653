//! Whole referrals while the outside APIs misbehave: every fifth call to the Graph API and
//! to HubSpot is refused (429 with Retry-After, 500, 503). The referral still converts and
//! is rewarded, and every message, contact and reward happens exactly once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use referloop::domain::state::Persisted;
use referloop::store::{Backend, Queue};
use serde_json::json;
use wiremock::{Mock, Request, ResponseTemplate};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::nominate_friend;
use crate::rewards::checkout_event;

/// Matches every fifth request it sees, noting the bodies it took.
#[derive(Clone, Default)]
struct EveryFifth {
    seen: Arc<AtomicUsize>,
    taken: Arc<Mutex<Vec<String>>>,
}

impl wiremock::Match for EveryFifth {
    fn matches(&self, request: &Request) -> bool {
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        let take = n % 5 == 4;
        if take {
            if let Ok(mut taken) = self.taken.lock() {
                let body = String::from_utf8_lossy(&request.body);
                taken.push(format!("{} {} {body}", request.method, request.url.path()));
            }
        }
        take
    }
}

/// The refusals, in turn.
struct Refusals(AtomicUsize);

impl wiremock::Respond for Refusals {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        match self.0.fetch_add(1, Ordering::SeqCst) % 3 {
            0 => ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(
                    json!({"status": "error", "message": "You have reached your secondly limit.",
                    "errorType": "RATE_LIMIT", "policyName": "SECONDLY",
                    "error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}}),
                ),
            1 => ResponseTemplate::new(500).set_body_json(json!({"error": {"message": "An unknown error occurred",
                "type": "OAuthException", "code": 1}, "status": "error", "message": "internal error"})),
            _ => ResponseTemplate::new(503).set_body_string("<html>Service Unavailable</html>"),
        }
    }
}

async fn flaky(server: &wiremock::MockServer) -> EveryFifth {
    let every_fifth = EveryFifth::default();
    Mock::given(every_fifth.clone())
        .respond_with(Refusals(AtomicUsize::new(0)))
        .with_priority(1)
        .mount(server)
        .await;
    every_fifth
}

fn refused(every_fifth: &EveryFifth, needle: &str) -> usize {
    every_fifth
        .taken
        .lock()
        .map(|t| t.iter().filter(|b| b.contains(needle)).count())
        .unwrap_or(0)
}

async fn referrals_survive_flaky_outside_apis(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "1,1,1,1,1,1,1,1,1,1")
    })
    .await;
    let meta = flaky(&lc.meta).await;
    let hubspot = flaky(&lc.hubspot).await;
    nominate_friend(&lc, true).await;
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let event = checkout_event(
        "evt_chaos",
        "cs_chaos",
        json!({"metadata": {"referral_code": code},
               "customer_details": {"email": "zoe@example.com", "phone": FRIEND_PHONE}}),
    );
    assert_eq!(lc.stripe_event(event).await, 200);
    lc.settle().await;

    let referral = &lc.app.store.list_referrals(1).await.expect("referrals")[0];
    assert_eq!(referral.state.as_str(), "converted");
    for (template, expected) in [
        ("tmpl_referral_invite", 1),
        ("tmpl_referral_friend_invite", 1),
        ("tmpl_referral_thanks", 1),
        ("tmpl_referral_reward", 2),
    ] {
        let accepted = lc.sent_of(template).await.len() - refused(&meta, template);
        assert_eq!(accepted, expected, "{template} accepted {expected} time(s)");
    }
    let creates = lc
        .hubspot_calls()
        .await
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/crm/v3/objects/contacts")
        .count();
    let refused_creates = refused(&hubspot, "POST /crm/v3/objects/contacts {");
    assert_eq!(creates - refused_creates.min(creates), 1, "one friend contact created");
    let rewards = lc.app.store.list_rewards(10).await.expect("rewards");
    assert_eq!(rewards.len(), 2);
    assert!(rewards.iter().all(|r| r.state.as_str() == "issued"), "{rewards:?}");
    let jobs = lc.app.store.list(Queue::Jobs, None, 1_000).await.expect("jobs");
    assert!(
        jobs.iter().all(|j| j.state.as_str() == "done"),
        "every job done: {jobs:?}"
    );
    let retried = jobs.iter().filter(|j| j.attempts > 1).count();
    let (meta_refused, hubspot_refused) = (
        meta.taken.lock().map(|t| t.len()).unwrap_or(0),
        hubspot.taken.lock().map(|t| t.len()).unwrap_or(0),
    );
    println!("{backend:?}: refused {meta_refused} Graph and {hubspot_refused} HubSpot calls; {retried} jobs retried");
    assert!(meta_refused > 0 && hubspot_refused > 0, "the fakes refused calls");
    lc.shutdown().await;
}

both_backends!(referrals_survive_flaky_outside_apis);
