//! Whole referrals while the outside APIs misbehave. Calls to the Graph API, HubSpot and
//! Stripe fail (one in five to HubSpot; one in three and one in two to the Graph API and
//! Stripe, where a referral makes few calls), the faults in turn: a stall past our
//! timeout after the outside acted, a stall before it acted, 429 with Retry-After, 500,
//! 503. The referral still converts and is rewarded, and every message, contact,
//! promotion code and reward happens exactly once on the outside (counted by the
//! stateful fakes in `outside`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use referloop::domain::state::Persisted;
use referloop::store::{Backend, Queue};
use serde_json::json;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::nominate_friend;
use crate::outside::*;
use crate::rewards::checkout_event;

/// Our timeout on outside calls in these tests, and how long a stalled fake takes.
pub const OUTBOUND_TIMEOUT_MS: &str = "700";
const STALL: Duration = Duration::from_millis(1_500);

/// Matches one request in `n`: the first of each `n`.
struct OneIn {
    n: usize,
    seen: AtomicUsize,
}

impl wiremock::Match for OneIn {
    fn matches(&self, _: &Request) -> bool {
        self.seen.fetch_add(1, Ordering::SeqCst) % self.n == 0
    }
}

const FAULTS: [&str; 5] = ["acted, then stalled", "stalled", "429", "500", "503"];

/// The faults, in turn from `next`. `acting` is the API's stateful fake, used for the
/// stall after acting; `faulted` notes each call that failed, and how.
struct Faults {
    next: AtomicUsize,
    acting: Box<dyn Respond>,
    faulted: Arc<Mutex<Vec<String>>>,
}

impl Respond for Faults {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let fault = self.next.fetch_add(1, Ordering::SeqCst) % 5;
        if let Ok(mut faulted) = self.faulted.lock() {
            faulted.push(format!("{}: {} {}", FAULTS[fault], request.method, request.url.path()));
        }
        match fault {
            0 => self.acting.respond(request).set_delay(STALL),
            1 => ResponseTemplate::new(503).set_delay(STALL),
            2 => ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({
                "status": "error", "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT",
                "error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}})),
            3 => ResponseTemplate::new(500).set_body_json(json!({
                "error": {"message": "An unknown error occurred", "type": "api_error", "code": 1},
                "status": "error", "message": "internal error"})),
            _ => ResponseTemplate::new(503).set_body_string("<html>Service Unavailable</html>"),
        }
    }
}

/// Puts the fault schedule in front of `server`: one call in `one_in` fails, the faults
/// taken in turn. Returns the log of faulted calls.
async fn faulty(server: &MockServer, one_in: usize, acting: Box<dyn Respond>) -> Arc<Mutex<Vec<String>>> {
    let faulted = Arc::new(Mutex::new(Vec::new()));
    Mock::given(OneIn {
        n: one_in,
        seen: AtomicUsize::new(0),
    })
    .respond_with(Faults {
        next: AtomicUsize::new(0),
        acting,
        faulted: faulted.clone(),
    })
    .with_priority(1)
    .mount(server)
    .await;
    faulted
}

/// HubSpot as it acts: contacts created and searched statefully, updates accepted.
#[derive(Clone, Default)]
struct HubSpotActs(HubSpotContacts);

impl Respond for HubSpotActs {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.method.as_str() == "POST" {
            return self.0.respond(request);
        }
        ResponseTemplate::new(200).set_body_json(json!({"id": "x", "properties": {}}))
    }
}

/// The fakes of one chaos run and what each did.
pub struct Outside {
    pub graph: GraphSends,
    pub contacts: HubSpotContacts,
    pub codes: StripePromotionCodes,
    faulted: Vec<Arc<Mutex<Vec<String>>>>,
    statuses: tokio::task::JoinHandle<()>,
}

impl Outside {
    /// Mounts the stateful fakes (and, with `faults`, the fault schedule) on the
    /// Lifecycle's servers, and starts forwarding Meta's statuses to the app.
    pub async fn mount(lc: &Lifecycle, faults: bool) -> Outside {
        let graph = GraphSends::default();
        let contacts = HubSpotContacts::default();
        let codes = StripePromotionCodes::default();
        graph.mount(&lc.meta, 5).await;
        contacts.mount(&lc.hubspot, 5).await;
        codes.mount(&lc.stripe, 5).await;
        let mut faulted = Vec::new();
        if faults {
            // One call in five fails where there are many calls; where a referral makes
            // only a few, more often, so that each kind of fault is met.
            faulted.push(faulty(&lc.meta, 3, Box::new(graph.clone())).await);
            faulted.push(faulty(&lc.hubspot, 5, Box::new(HubSpotActs(contacts.clone()))).await);
            faulted.push(faulty(&lc.stripe, 2, Box::new(codes.clone())).await);
        }
        let statuses = forward_statuses(graph.clone(), lc.app.url("/webhooks/whatsapp"));
        lc.outside_in_real_time();
        Outside {
            graph,
            contacts,
            codes,
            faulted,
            statuses,
        }
    }

    /// Faulted calls, per API (Graph, HubSpot, Stripe): each fault and the call.
    pub fn faulted(&self) -> Vec<Vec<String>> {
        self.faulted
            .iter()
            .map(|r| r.lock().map(|r| r.clone()).unwrap_or_default())
            .collect()
    }

    pub fn stop(&self) {
        self.statuses.abort();
    }
}

/// The environment for runs against `Outside`: fast retries, a short outbound timeout,
/// a short wait for an interrupted send's status, and a Stripe promotion code for the
/// friend's reward.
pub fn chaos_env(env: &mut Vec<(String, String)>) {
    for (key, value) in [
        ("REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "1,1,1,1,1,1,1,1,1,1,1,1"),
        ("REFERLOOP_WORKER__OUTBOUND_TIMEOUT_MS", OUTBOUND_TIMEOUT_MS),
        ("REFERLOOP_WORKER__INTERRUPTED_SEND_WAIT_SECONDS", "3"),
        ("REFERLOOP_REWARDS__FRIEND__KIND", "stripe_promotion_code"),
        ("REFERLOOP_REWARDS__FRIEND__STRIPE_COUPON", "RFR-FRIEND"),
    ] {
        set_env(env, key, value);
    }
}

/// Waits until every inbox event and job has ended (done or dead), however far off its
/// retry is.
pub async fn drain(lc: &Lifecycle, within: Duration) {
    let store = lc.app.store.clone();
    let drained = eventually(within, || {
        let store = store.clone();
        async move {
            for queue in [Queue::Inbox, Queue::Jobs] {
                let Ok(items) = store.list(queue, None, 10_000).await else {
                    return false;
                };
                if items.iter().any(|i| !matches!(i.state.as_str(), "done" | "dead")) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(
        drained,
        "queues did not drain: {:?}",
        lc.app.store.list(Queue::Jobs, None, 50).await
    );
}

/// The funnel's tally counted each of `n` whole referrals at every step exactly once,
/// whatever was retried or interrupted.
pub async fn assert_funnel(lc: &Lifecycle, n: i64) {
    let period = referloop::domain::funnel::Period::last_days(1, referloop::clock::system_ms()).expect("period");
    let funnel = lc.app.store.funnel(period, None).await.expect("funnel");
    let counts: Vec<i64> = funnel.steps().iter().map(|s| s.count).collect();
    assert_eq!(counts, vec![n; 8], "every step once per referral: {funnel:?}");
}

/// Accepted sends of `template` to `to`.
/// Sends of `template` to `to` that reached them (accepted and not failed afterwards).
pub fn sends_to(graph: &GraphSends, template: &str, to: &str) -> usize {
    graph.delivered_of(template).iter().filter(|b| b["to"] == to).count()
}

async fn referrals_survive_flaky_outside_apis(backend: Backend) {
    let lc = Lifecycle::start(backend, chaos_env).await;
    let outside = Outside::mount(&lc, true).await;
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
    drain(&lc, Duration::from_secs(90)).await;
    outside.stop();

    let referral = &lc.app.store.list_referrals(1).await.expect("referrals")[0];
    assert_eq!(referral.state.as_str(), "converted");
    for (template, to, expected) in [
        ("tmpl_referral_invite", REFERRER_PHONE, 1),
        ("tmpl_referral_friend_invite", FRIEND_PHONE, 1),
        ("tmpl_referral_thanks", REFERRER_PHONE, 1),
        ("tmpl_referral_reward", REFERRER_PHONE, 1),
        ("tmpl_referral_reward", FRIEND_PHONE, 1),
    ] {
        assert_eq!(
            sends_to(&outside.graph, template, to),
            expected,
            "{template} to {to} sent exactly once"
        );
    }
    assert_eq!(outside.graph.of("interactive").len(), 1, "one Flow");
    assert_eq!(outside.contacts.created.all().len(), 1, "one friend contact created");
    let codes = outside.codes.created.all();
    assert_eq!(codes.len(), 1, "one promotion code: {codes:?}");
    let rewards = lc.app.store.list_rewards(10).await.expect("rewards");
    assert_eq!(rewards.len(), 2);
    assert!(rewards.iter().all(|r| r.state.as_str() == "issued"), "{rewards:?}");
    let jobs = lc.app.store.list(Queue::Jobs, None, 1_000).await.expect("jobs");
    assert!(
        jobs.iter().all(|j| j.state.as_str() == "done"),
        "every job done: {jobs:?}"
    );
    assert_funnel(&lc, 1).await;
    let timeline = lc.app.store.timeline(referral).await.expect("timeline");
    let calls: Vec<&str> = timeline
        .iter()
        .filter(|e| e.kind == "outside call")
        .map(|e| e.what.as_str())
        .collect();
    assert!(
        calls.iter().any(|c| c.starts_with("hubspot.create_friend: done")),
        "the friend's contact creation is on the timeline: {calls:?}"
    );
    assert!(timeline
        .iter()
        .any(|e| e.kind == "transition" && e.what.contains("to converted")));
    let retried = jobs.iter().filter(|j| j.attempts > 1).count();
    let faulted = outside.faulted();
    println!("{backend:?}: {retried} jobs retried; faulted calls (Graph, HubSpot, Stripe): {faulted:#?}");
    assert!(faulted.iter().all(|f| !f.is_empty()), "every fake faulted calls");
    let stalled_after_acting = |api: usize| faulted[api].iter().any(|f| f.starts_with(FAULTS[0]));
    assert!(
        (0..3).all(stalled_after_acting),
        "every fake stalled after acting at least once"
    );
    lc.shutdown().await;
}

both_backends!(referrals_survive_flaky_outside_apis);
