//! Crash tests: with fault injection armed, the n-th attempt of every inbox event and
//! job fails at its n-th database write, so every step is interrupted after each of its
//! writes in turn (as a killed worker would leave it) before an attempt gets through.
//! Each scenario then checks that the referral still ends where it should, with every
//! message, contact and reward exactly once. Among the steps interrupted: the
//! `delivered` status of a friend invite and the nomination (the two ways a referral
//! used to be stranded).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use referloop::clock::system_ms;
use referloop::domain::state::Persisted;
use referloop::domain::work::{ItemKind, JobKind};
use referloop::store::{Backend, Queue};
use referloop::whatsapp::render;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::nomination;
use crate::rewards::checkout_event;

const FRIEND_CONTACT: &str = "95001";
/// The template the refusal scenario's Graph fake refuses (131049); only that scenario
/// mounts the refusal (the others pass `None`).
const REFUSED_TEMPLATE: &str = "tmpl_referral_friend_invite";

/// HubSpot's contact search finds the friend once their contact was created, as the
/// real search does (after indexing), so a retried creation finds instead of creating.
struct ContactDirectory {
    created: Arc<AtomicBool>,
    creates: bool,
}

impl Respond for ContactDirectory {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.creates {
            self.created.store(true, Ordering::SeqCst);
            return ResponseTemplate::new(201).set_body_json(json!({"id": FRIEND_CONTACT, "properties": {}}));
        }
        if !self.created.load(Ordering::SeqCst) {
            return ResponseTemplate::new(200).set_body_json(json!({"total": 0, "results": []}));
        }
        ResponseTemplate::new(200).set_body_json(json!({"total": 1, "results": [
            {"id": FRIEND_CONTACT, "properties": {"mobilephone": FRIEND_PHONE, "lifecyclestage": "lead"}}]}))
    }
}

async fn start(backend: Backend) -> Lifecycle {
    let lc = Lifecycle::start(backend, |env| {
        // Enough immediate retries for a step to be interrupted after each of its writes.
        set_env(
            env,
            "REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS",
            "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
        );
        set_env(env, "REFERLOOP_WORKER__INTERRUPTED_SEND_WAIT_SECONDS", "2");
    })
    .await;
    let created = Arc::new(AtomicBool::new(false));
    for (route, creates) in [
        ("/crm/v3/objects/contacts/search", false),
        ("/crm/v3/objects/contacts", true),
    ] {
        Mock::given(method("POST"))
            .and(path(route))
            .respond_with(ContactDirectory {
                created: created.clone(),
                creates,
            })
            .with_priority(5)
            .mount(&lc.hubspot)
            .await;
    }
    lc.app.store.faults().interrupt_each_write();
    lc
}

/// Meta's statuses for everything sent so far: `delivered`, echoing our callback data
/// (which is how a send interrupted after Meta accepted it is recorded). The fake Graph
/// API names its n-th accepted message `wamid.OUT<n>`.
async fn deliver_statuses(lc: &Lifecycle, refused: Option<&str>, reported: &mut HashSet<String>) {
    let accepted = accepted_sends(lc, refused).await;
    for (n, body) in accepted.iter().enumerate() {
        let wamid = format!("wamid.OUT{n}");
        if !reported.insert(wamid.clone()) {
            continue;
        }
        let to = body["to"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('+')
            .to_string();
        let status = json!({"id": wamid, "status": "delivered", "timestamp": (system_ms() / 1000).to_string(),
                            "recipient_id": to, "biz_opaque_callback_data": body["biz_opaque_callback_data"]});
        assert_eq!(lc.whatsapp("messages", json!({"statuses": [status]})).await, 200);
    }
}

/// The sends the fake accepted (a refused one got no wamid).
async fn accepted_sends(lc: &Lifecycle, refused: Option<&str>) -> Vec<Value> {
    let sent = lc.sent().await;
    match refused {
        Some(name) => sent.into_iter().filter(|b| b["template"]["name"] != name).collect(),
        None => sent,
    }
}

/// Runs the queues dry while Meta reports every accepted send delivered.
async fn settle_delivering(lc: &Lifecycle, refused: Option<&str>) {
    let mut reported = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        deliver_statuses(lc, refused, &mut reported).await;
        let accepted = accepted_sends(lc, refused).await.len();
        if idle(lc).await && accepted == reported.len() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "queues did not settle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every item ended, but for those scheduled for days ahead (a promoter's reminder).
async fn idle(lc: &Lifecycle) -> bool {
    let later = lc.app.store.now_ms() + 60_000;
    for queue in [Queue::Inbox, Queue::Jobs] {
        let Ok(items) = lc.app.store.list(queue, None, 10_000).await else {
            return false;
        };
        let open = |i: &&referloop::store::QueueRow| {
            let ended = matches!(i.state.as_str(), "done" | "dead");
            let scheduled_later = i.state.as_str() == "queued" && i.run_at > later;
            !(ended || scheduled_later)
        };
        if items.iter().any(|i| open(&i)) {
            return false;
        }
    }
    true
}

/// Nothing died, and the steps that write were interrupted (attempts beyond the first).
async fn assert_every_step_finished_after_interruptions(lc: &Lifecycle, kinds: &[&str]) {
    assert_steps_finished(lc, kinds, 0).await;
}

/// As above, with `refused` sends ended dead by Meta's final refusal.
async fn assert_steps_finished(lc: &Lifecycle, kinds: &[&str], refused: usize) {
    let mut items = lc.app.store.list(Queue::Inbox, None, 10_000).await.expect("inbox");
    items.extend(lc.app.store.list(Queue::Jobs, None, 10_000).await.expect("jobs"));
    let dead: Vec<_> = items.iter().filter(|i| i.state.as_str() == "dead").collect();
    assert_eq!(dead.len(), refused, "only refused sends end dead: {dead:?}");
    assert!(
        dead.iter().all(|i| i.kind == ItemKind::Job(JobKind::SendWhatsApp)),
        "{dead:?}"
    );
    for kind in kinds {
        assert!(
            items.iter().any(|i| i.kind.to_string() == *kind && i.attempts >= 3),
            "{kind} was interrupted at least twice: {:?}",
            items.iter().filter(|i| i.kind.to_string() == *kind).collect::<Vec<_>>()
        );
    }
    assert!(lc.app.store.faults().injected() >= 20, "faults were injected");
}

async fn assert_sent_once_each(lc: &Lifecycle, expected: &[(&str, usize)]) {
    for (name, count) in expected {
        assert_eq!(lc.sent_of(name).await.len(), *count, "{name} sent {count} time(s)");
    }
}

async fn friend_contacts_created(lc: &Lifecycle) -> usize {
    lc.hubspot_calls()
        .await
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/crm/v3/objects/contacts")
        .count()
}

async fn referral_state(lc: &Lifecycle) -> String {
    lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .state
        .as_str()
        .to_string()
}

async fn buy_with_the_code(lc: &Lifecycle, event_id: &str) {
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let event = checkout_event(
        event_id,
        &format!("cs_{event_id}"),
        json!({"metadata": {"referral_code": code},
               "customer_details": {"email": "zoe@example.com", "phone": FRIEND_PHONE}}),
    );
    assert_eq!(lc.stripe_event(event).await, 200);
}

/// Trigger → invite → "Refer someone" → Flow → nomination, with Meta reporting every
/// send delivered throughout.
async fn nominate(lc: &Lifecycle, consent: bool, refused: Option<&str>) {
    assert_eq!(lc.nps("90001", REFERRER_PHONE, "Ana", "10", "1767225600000").await, 200);
    settle_delivering(lc, refused).await;
    let invite_id = lc.invite_id().await;
    assert_eq!(
        lc.inbound(refer_tap(REFERRER_PHONE, "wamid.TAP1", invite_id)).await,
        200
    );
    settle_delivering(lc, refused).await;
    let messages = lc.app.store.list_messages(50).await.expect("messages");
    let flow = messages
        .iter()
        .find(|m| m.purpose.as_str() == "flow")
        .expect("the Flow was queued");
    let token = render::flow_token_of(&flow.body).expect("flow token");
    let flow_wamid = flow.wamid.clone().expect("the Flow's wamid is recorded");
    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.R1",
        &flow_wamid,
        nomination(Some(&token), FRIEND_PHONE, consent),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    settle_delivering(lc, refused).await;
}

/// Direct path: invite, Flow, nomination with consent, the friend's invite delivered,
/// a Stripe purchase, both rewards.
async fn direct_path_survives_a_crash_after_every_write(backend: Backend) {
    let lc = start(backend).await;
    nominate(&lc, true, None).await;
    assert_eq!(
        referral_state(&lc).await,
        "friend_invited",
        "the delivered status moved the referral despite every interruption"
    );
    buy_with_the_code(&lc, "evt_direct").await;
    settle_delivering(&lc, None).await;
    assert_eq!(referral_state(&lc).await, "converted");
    assert_sent_once_each(
        &lc,
        &[
            ("tmpl_referral_invite", 1),
            ("interactive", 1),
            ("tmpl_referral_friend_invite", 1),
            ("tmpl_referral_thanks", 1),
            ("tmpl_referral_reward", 2),
            ("text", 0),
        ],
    )
    .await;
    assert_eq!(friend_contacts_created(&lc).await, 1, "one friend contact");
    let rewards = lc.app.store.list_rewards(10).await.expect("rewards");
    assert_eq!(rewards.len(), 2);
    assert!(rewards.iter().all(|r| r.state.as_str() == "issued"), "{rewards:?}");
    let conversions = lc.app.store.list_conversions(10).await.expect("conversions");
    assert_eq!(conversions.len(), 1);
    assert_eq!(conversions[0].outcome.as_str(), "converted");
    assert_every_step_finished_after_interruptions(
        &lc,
        &[
            "hubspot.workflow.nps",
            "whatsapp.message",
            "whatsapp.status",
            "referral.screen",
            "whatsapp.send",
            "hubspot.create_friend",
            // The conversion's step also issues both rewards (static codes, not held).
            "stripe.checkout.session.completed",
        ],
    )
    .await;
    lc.shutdown().await;
}

/// Share-link path: no consent, the referrer forwards the link, the friend writes with
/// the code (welcome), then buys.
async fn share_link_path_survives_a_crash_after_every_write(backend: Backend) {
    let lc = start(backend).await;
    nominate(&lc, false, None).await;
    assert_eq!(referral_state(&lc).await, "awaiting_friend");
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let mut hello = text_message(FRIEND_PHONE, "wamid.HELLO", &format!("Hi! My referral code is {code}"));
    // Written now: the friend's 24-hour window is open when the rewards go out.
    hello["timestamp"] = json!((system_ms() / 1000).to_string());
    assert_eq!(lc.inbound(hello).await, 200);
    settle_delivering(&lc, None).await;
    assert_eq!(referral_state(&lc).await, "friend_invited");
    buy_with_the_code(&lc, "evt_share").await;
    settle_delivering(&lc, None).await;
    assert_eq!(referral_state(&lc).await, "converted");
    let texts: Vec<Value> = lc.sent_of("text").await;
    let share_links = texts.iter().filter(|t| t["to"] == REFERRER_PHONE).count();
    let welcomes = texts.iter().filter(|t| t["to"] == FRIEND_PHONE).count();
    assert_eq!(
        (share_links, welcomes),
        (1, 1),
        "one share link, one welcome: {texts:?}"
    );
    assert_sent_once_each(
        &lc,
        &[
            ("tmpl_referral_invite", 1),
            ("interactive", 1),
            ("tmpl_referral_friend_invite", 0),
            ("tmpl_referral_thanks", 1),
            // The friend wrote to us: their reward message is inside their window.
            ("tmpl_referral_reward", 2),
        ],
    )
    .await;
    assert_eq!(friend_contacts_created(&lc).await, 1, "one friend contact");
    assert_every_step_finished_after_interruptions(
        &lc,
        &[
            "whatsapp.message",
            "referral.screen",
            "whatsapp.send",
            // The conversion, which issues both rewards in its step.
            "stripe.checkout.session.completed",
        ],
    )
    .await;
    lc.shutdown().await;
}

/// Meta refuses the friend's invite with 131049 (auto mode falls back to a share link),
/// then the referrer opts out with a keyword.
async fn refusal_fallback_and_opt_out_survive_a_crash_after_every_write(backend: Backend) {
    let lc = start(backend).await;
    mount_graph_answer(
        &lc.meta,
        json!({"template": {"name": REFUSED_TEMPLATE}}),
        graph_error(
            400,
            131049,
            "This message was not delivered to maintain healthy ecosystem engagement.",
        ),
        None,
    )
    .await;
    nominate(&lc, true, Some(REFUSED_TEMPLATE)).await;
    assert_eq!(
        referral_state(&lc).await,
        "awaiting_friend",
        "fell back to a share link"
    );
    let invites = lc.app.store.list_messages(50).await.expect("messages");
    let refused = invites
        .iter()
        .find(|m| m.purpose.as_str() == "friend_invite")
        .expect("friend invite");
    assert_eq!((refused.status.as_str(), refused.error_code), ("failed", Some(131049)));
    let mut stop = text_message(REFERRER_PHONE, "wamid.STOP", "STOP");
    stop["timestamp"] = json!((system_ms() / 1000).to_string());
    assert_eq!(lc.inbound(stop).await, 200);
    settle_delivering(&lc, Some(REFUSED_TEMPLATE)).await;
    let texts = lc.sent_of("text").await;
    let to_referrer: Vec<&str> = texts
        .iter()
        .filter(|t| t["to"] == REFERRER_PHONE)
        .filter_map(|t| t["text"]["body"].as_str())
        .collect();
    assert_eq!(
        to_referrer.len(),
        2,
        "one share link, one acknowledgement: {to_referrer:?}"
    );
    assert!(to_referrer
        .iter()
        .any(|t| t.contains("won't receive promotional messages")));
    // Meta takes no idempotency key: a crash between its refusal and our record of it
    // (which the injection includes) sends once more after the wait. Never more.
    assert!(
        lc.sent_of(REFUSED_TEMPLATE).await.len() <= 2,
        "a final refusal is not retried"
    );
    let jobs = lc.app.store.list(Queue::Jobs, None, 1_000).await.expect("jobs");
    let mirrors = jobs
        .iter()
        .filter(|j| j.kind == ItemKind::Job(JobKind::SyncOptOut))
        .count();
    assert_eq!(mirrors, 1, "one HubSpot mirror per opt-out");
    assert_steps_finished(&lc, &["whatsapp.message", "whatsapp.send", "referral.screen"], 1).await;
    lc.shutdown().await;
}

both_backends!(
    direct_path_survives_a_crash_after_every_write,
    share_link_path_survives_a_crash_after_every_write,
    refusal_fallback_and_opt_out_survive_a_crash_after_every_write,
);
