//! The referral lifecycle end to end, against local fakes of the Graph API and HubSpot.

use referloop::domain::eligibility::IneligibleCode;
use referloop::domain::nomination::ReferralReason;
use referloop::domain::state::{InviteState, Persisted};
use referloop::domain::work::{ItemKind, JobKind};
use referloop::store::{Backend, Queue, QueueState};
use serde_json::{json, Value};

use wiremock::ResponseTemplate;

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;

const ANA: &str = "90001";

/// Trigger → invite → "Refer someone" → Flow. Returns (invite id, flow token, Flow wamid).
pub async fn to_flow(lc: &Lifecycle) -> (i64, String, String) {
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1767225600000").await, 200);
    lc.settle().await;
    let invite_id = lc.invite_id().await;
    assert_eq!(
        lc.inbound(refer_tap(REFERRER_PHONE, "wamid.TAP1", invite_id)).await,
        200
    );
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    assert_eq!(flows.len(), 1, "one Flow per tap");
    let token = flows[0]["interactive"]["action"]["parameters"]["flow_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let messages = lc.app.store.list_messages(50).await.expect("messages");
    let flow_wamid = messages
        .iter()
        .find(|m| m.purpose.as_str() == "flow")
        .and_then(|m| m.wamid.clone())
        .expect("flow wamid");
    (invite_id, token, flow_wamid)
}

/// Trigger → invite → Flow → Ana nominates Zoë (with or without consent), settled.
pub async fn nominate_friend(lc: &Lifecycle, consent: bool) {
    let (_, token, _) = to_flow(lc).await;
    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.R1",
        "x",
        nomination(Some(&token), FRIEND_PHONE, consent),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;
}

pub fn nomination(token: Option<&str>, friend_phone: &str, consent: bool) -> Value {
    let mut response = json!({"friend_name": "Zoë Ñúñez 😀", "friend_phone": friend_phone,
                              "personal_message": "Você vai adorar!\nÉ ótimo 🎉", "friend_consent": consent});
    if let Some(token) = token {
        response["flow_token"] = json!(token);
    }
    response
}

async fn referral_state(lc: &Lifecycle) -> String {
    lc.app
        .store
        .list_referrals(5)
        .await
        .expect("referrals")
        .first()
        .map(|r| r.state.as_str().to_string())
        .unwrap_or_default()
}

async fn happy_path_with_every_webhook_twice(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    for _ in 0..2 {
        assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1767225600000").await, 200);
    }
    lc.settle().await;
    let invites = lc.sent_of("tmpl_referral_invite").await;
    assert_eq!(invites.len(), 1, "one invite");
    let invite = &invites[0];
    assert_eq!(invite["to"], REFERRER_PHONE);
    let code = invite["template"]["components"][0]["parameters"][1]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(code.starts_with("ANA") && code.len() == 7, "{code}");
    assert_eq!(
        invite["template"]["components"][1]["parameters"][0]["coupon_code"],
        code.as_str()
    );
    let invite_id = lc.invite_id().await;
    assert_eq!(
        invite["template"]["components"][2]["parameters"][0]["payload"],
        format!("refer:{invite_id}")
    );
    let calls = lc.hubspot_calls().await;
    let code_patch = calls
        .iter()
        .find(|(m, p, _)| m == "PATCH" && p.ends_with(&format!("/contacts/{ANA}")));
    let code_patch = code_patch.expect("referral code written to the contact");
    assert_eq!(code_patch.2["properties"]["referral_code"], code.as_str());
    assert_eq!(code_patch.2["properties"]["referral_status"], "invited");

    for _ in 0..2 {
        assert_eq!(
            lc.inbound(refer_tap(REFERRER_PHONE, "wamid.TAP1", invite_id)).await,
            200
        );
    }
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    assert_eq!(flows.len(), 1);
    let token = flows[0]["interactive"]["action"]["parameters"]["flow_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.FLOWREPLY1",
        "wamid.unknown",
        nomination(Some(&token), FRIEND_PHONE, true),
    );
    for _ in 0..2 {
        assert_eq!(lc.inbound(reply.clone()).await, 200);
    }
    lc.settle().await;
    let friend_invites = lc.sent_of("tmpl_referral_friend_invite").await;
    assert_eq!(friend_invites.len(), 1, "one friend invite");
    let params = &friend_invites[0]["template"]["components"][0]["parameters"];
    assert_eq!(friend_invites[0]["to"], FRIEND_PHONE);
    assert_eq!(params[0]["text"], "Zoë");
    assert_eq!(params[1]["text"], "Ana");
    assert_eq!(params[2]["text"], code.as_str());
    assert_eq!(
        params[3]["text"], "Você vai adorar! É ótimo 🎉",
        "one line, accents and emoji intact"
    );
    assert_eq!(referral_state(&lc).await, "direct_invite_queued");

    let messages = lc.app.store.list_messages(50).await.expect("messages");
    let wamid = messages
        .iter()
        .find(|m| m.purpose.as_str() == "friend_invite")
        .and_then(|m| m.wamid.clone())
        .expect("wamid");
    for _ in 0..2 {
        assert_eq!(lc.status(&wamid, "delivered", None).await, 200);
    }
    lc.settle().await;
    assert_eq!(referral_state(&lc).await, "friend_invited");

    let calls = lc.hubspot_calls().await;
    let created: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/crm/v3/objects/contacts")
        .collect();
    assert_eq!(created.len(), 1, "the friend's contact is created once");
    assert_eq!(created[0].2["properties"]["firstname"], "Zoë Ñúñez 😀");
    assert_eq!(created[0].2["properties"]["phone"], FRIEND_PHONE);
    assert_eq!(created[0].2["properties"]["referred_by_code"], code.as_str());
    assert_eq!(created[0].2["properties"]["referrer_contact_id"], ANA);
    assert_eq!(
        created[0].2["properties"]["referral_status"], "invite_sent",
        "created with the status screening moved the referral to"
    );
    let searches: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/crm/v3/objects/contacts/search")
        .collect();
    assert_eq!(
        searches.len(),
        1,
        "one HubSpot search for the friend: screening's, which the contact's creation trusts: {searches:?}"
    );
    let friend_statuses: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "PATCH" && p.ends_with("/contacts/95001"))
        .map(|(_, _, b)| b["properties"]["referral_status"].clone())
        .collect();
    assert_eq!(
        friend_statuses.last(),
        Some(&json!("friend_invited")),
        "{friend_statuses:?}"
    );
    let jobs = lc.app.store.list(Queue::Jobs, None, 100).await.expect("jobs");
    let friend_jobs: Vec<_> = jobs
        .iter()
        .filter(|j| matches!(j.kind, ItemKind::Job(kind) if kind.as_str().starts_with("hubspot.")))
        .collect();
    assert!(
        friend_jobs.iter().all(|j| j.attempts == 1),
        "no HubSpot job waited for the friend's contact: {friend_jobs:?}"
    );

    assert_eq!(lc.sent().await.len(), 3, "invite, Flow, friend invite: nothing else");
    lc.shutdown().await;
}

async fn statuses_out_of_order_never_move_back(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    let messages = lc.app.store.list_messages(5).await.expect("messages");
    let wamid = messages[0].wamid.clone().expect("wamid");
    for status in ["read", "delivered", "sent"] {
        assert_eq!(lc.status(&wamid, status, None).await, 200);
        lc.settle().await;
    }
    let message = lc
        .app
        .store
        .message_by_wamid(&wamid)
        .await
        .expect("query")
        .expect("message");
    assert_eq!(message.status.as_str(), "read");
    assert_eq!(
        lc.status(&wamid, "failed", Some((131026, "Message undeliverable")))
            .await,
        200
    );
    lc.settle().await;
    let message = lc
        .app
        .store
        .message_by_wamid(&wamid)
        .await
        .expect("query")
        .expect("message");
    assert_eq!(message.status.as_str(), "read", "failed after read changes nothing");
    lc.shutdown().await;
}

async fn ineligible_triggers_are_answered_and_recorded(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    assert_eq!(lc.nps("1", REFERRER_PHONE, "Ana", "6", "1").await, 200, "detractor");
    assert_eq!(lc.nps("2", "not a phone", "Bo", "10", "1").await, 200, "no valid phone");
    assert_eq!(
        lc.nps("3", "+44 20 7946 0000", "Cy", "PROMOTER", "1").await,
        200,
        "landline"
    );
    assert_eq!(lc.nps("4", "+447911123460", "Di", "9", "1").await, 200, "eligible");
    lc.settle().await;
    assert_eq!(
        lc.nps("4", "+447911123460", "Di", "10", "2").await,
        200,
        "again, within the cooldown"
    );
    lc.settle().await;
    let invites = lc.app.store.list_invites(10).await.expect("invites");
    let reason = |contact: &str| {
        invites
            .iter()
            .filter(|i| i.contact_id == contact)
            .map(|i| i.reason.as_ref().map(ToString::to_string).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(reason("1"), vec!["not_a_promoter: score 6"]);
    assert_eq!(reason("2"), vec!["phone_unparseable"]);
    assert_eq!(reason("3"), vec!["phone_not_mobile"]);
    let di = reason("4");
    assert!(di.iter().any(|r| r.starts_with("cooldown")), "{di:?}");
    assert_eq!(
        lc.sent_of("tmpl_referral_invite").await.len(),
        1,
        "only the eligible contact, once"
    );
    lc.shutdown().await;
}

async fn refusals_reply_to_the_referrer(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let (_, token, _) = to_flow(&lc).await;
    // Self-referral.
    let own = flow_reply(
        REFERRER_PHONE,
        "wamid.R1",
        "x",
        nomination(Some(&token), REFERRER_PHONE, true),
    );
    assert_eq!(lc.inbound(own).await, 200);
    // Forged token.
    let forged = token.replace("rl1.", "rl1.9").to_string();
    let forged = flow_reply(
        REFERRER_PHONE,
        "wamid.R2",
        "x",
        nomination(Some(&forged), FRIEND_PHONE, true),
    );
    assert_eq!(lc.inbound(forged).await, 200);
    lc.settle().await;
    let texts: Vec<String> = lc
        .sent_of("text")
        .await
        .iter()
        .map(|b| b["text"]["body"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("can't refer yourself")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("couldn't match")), "{texts:?}");
    assert!(lc.sent_of("tmpl_referral_friend_invite").await.is_empty());
    assert!(lc.app.store.list_referrals(5).await.expect("referrals").is_empty());
    lc.shutdown().await;
}

async fn reply_without_token_is_matched_by_context_id(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let (_, _, flow_wamid) = to_flow(&lc).await;
    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.R1",
        &flow_wamid,
        nomination(None, FRIEND_PHONE, true),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;
    assert_eq!(lc.sent_of("tmpl_referral_friend_invite").await.len(), 1);
    lc.shutdown().await;
}

/// HubSpot already has the friend as a lead: screening's search, which found them not a
/// customer, also records their contact; nothing is created and nobody searches again,
/// and the friend's status goes to that contact.
async fn a_friend_known_to_hubspot_is_recorded_by_screening(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    lc.hubspot_search_finds(
        None,
        json!({"id": "777", "properties": {"mobilephone": "+44 7911 123457", "lifecyclestage": "lead"}}),
    )
    .await;
    let (_, token, flow_wamid) = to_flow(&lc).await;
    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.R1",
        &flow_wamid,
        nomination(Some(&token), FRIEND_PHONE, true),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;
    assert_eq!(lc.sent_of("tmpl_referral_friend_invite").await.len(), 1);
    let referral = &lc.app.store.list_referrals(1).await.expect("referrals")[0];
    assert_eq!(referral.friend_contact_id.as_deref(), Some("777"));
    let calls = lc.hubspot_calls().await;
    let count = |method: &str, path: &str| calls.iter().filter(|(m, p, _)| m == method && p == path).count();
    assert_eq!(count("POST", "/crm/v3/objects/contacts/search"), 1, "{calls:?}");
    assert_eq!(
        count("POST", "/crm/v3/objects/contacts"),
        0,
        "nothing created: {calls:?}"
    );
    assert_eq!(
        lc.contact_writes_since(0, "777").await,
        vec![
            json!({"referred_by_code": referral.referral_code, "referrer_contact_id": ANA,
                    "referral_status": "invite_sent"})
        ],
        "the friend's status on the contact found"
    );
    let jobs = lc.app.store.list(Queue::Jobs, None, 100).await.expect("jobs");
    assert!(
        !jobs.iter().any(|j| j.key.starts_with("hubspot.friend_create:")),
        "{jobs:?}"
    );
    lc.shutdown().await;
}

async fn friend_already_nominated_or_customer(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    // The HubSpot search finds the second friend as a customer.
    lc.hubspot_search_finds(
        Some("+447911123458"),
        json!({"id": "777", "properties": {"mobilephone": "+44 7911 123458", "lifecyclestage": "customer"}}),
    )
    .await;
    let (_, token, _) = to_flow(&lc).await;
    let first = flow_reply(
        REFERRER_PHONE,
        "wamid.R1",
        "x",
        nomination(Some(&token), FRIEND_PHONE, true),
    );
    assert_eq!(lc.inbound(first).await, 200);
    lc.settle().await;

    // A second referrer nominates the same friend, then a customer.
    assert_eq!(lc.nps("90002", "+447911123459", "Bo", "10", "1").await, 200);
    lc.settle().await;
    let invites = lc.app.store.list_invites(5).await.expect("invites");
    let bo = invites
        .iter()
        .find(|i| i.contact_id == "90002")
        .expect("Bo's invite")
        .id;
    assert_eq!(lc.inbound(refer_tap("+447911123459", "wamid.TAP2", bo)).await, 200);
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    let bo_token = flows
        .last()
        .and_then(|f| f["interactive"]["action"]["parameters"]["flow_token"].as_str())
        .unwrap_or("");
    let taken = flow_reply(
        "+447911123459",
        "wamid.R2",
        "x",
        nomination(Some(bo_token), FRIEND_PHONE, true),
    );
    assert_eq!(lc.inbound(taken).await, 200);
    lc.settle().await;
    assert_eq!(lc.inbound(refer_tap("+447911123459", "wamid.TAP3", bo)).await, 200);
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    let bo_token = flows
        .last()
        .and_then(|f| f["interactive"]["action"]["parameters"]["flow_token"].as_str())
        .unwrap_or("");
    let customer = flow_reply(
        "+447911123459",
        "wamid.R3",
        "x",
        nomination(Some(bo_token), "+447911123458", true),
    );
    assert_eq!(lc.inbound(customer).await, 200);
    lc.settle().await;

    let texts: Vec<String> = lc
        .sent_of("text")
        .await
        .iter()
        .map(|b| b["text"]["body"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(texts.iter().any(|t| t.contains("already been invited")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("already a customer")), "{texts:?}");
    assert_eq!(
        lc.sent_of("tmpl_referral_friend_invite").await.len(),
        1,
        "only the first nomination"
    );
    let referrals = lc.app.store.list_referrals(5).await.expect("referrals");
    let reasons: Vec<_> = referrals.iter().map(|r| (r.state.as_str(), r.reason)).collect();
    assert!(
        reasons.contains(&("refused", Some(ReferralReason::AlreadyReferred))),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("refused", Some(ReferralReason::AlreadyCustomer))),
        "{reasons:?}"
    );
    lc.shutdown().await;
}

async fn share_link_mode_and_the_friend_arriving(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__FRIEND_INVITE", "share_link")
    })
    .await;
    nominate_friend(&lc, true).await;
    assert!(
        lc.sent_of("tmpl_referral_friend_invite").await.is_empty(),
        "no direct message in share_link mode"
    );
    let texts = lc.sent_of("text").await;
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["to"], REFERRER_PHONE);
    let share = texts[0]["text"]["body"].as_str().unwrap_or_default();
    assert!(share.contains("https://wa.me/15550001234?text="), "{share}");
    assert_eq!(referral_state(&lc).await, "awaiting_friend");
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();

    for _ in 0..2 {
        let hello = text_message(
            FRIEND_PHONE,
            "wamid.HELLO",
            &format!("Hi! I'd like to join. My referral code is {code}"),
        );
        assert_eq!(lc.inbound(hello).await, 200);
    }
    lc.settle().await;
    let texts = lc.sent_of("text").await;
    assert_eq!(texts.len(), 2, "one welcome");
    assert_eq!(texts[1]["to"], FRIEND_PHONE);
    let welcome = texts[1]["text"]["body"].as_str().unwrap_or_default();
    assert!(
        welcome.contains(&code) && welcome.contains("Zoë") && welcome.contains("🎉"),
        "{welcome}"
    );
    assert_eq!(referral_state(&lc).await, "friend_invited");
    lc.shutdown().await;
}

async fn auto_mode_falls_back_to_a_share_link_after_131049(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    mount_graph_answer(
        &lc.meta,
        json!({"template": {"name": "tmpl_referral_friend_invite"}}),
        graph_error(
            400,
            131049,
            "This message was not delivered to maintain healthy ecosystem engagement.",
        ),
        None,
    )
    .await;
    nominate_friend(&lc, true).await;
    assert_eq!(
        lc.sent_of("tmpl_referral_friend_invite").await.len(),
        1,
        "tried once, not retried"
    );
    let texts = lc.sent_of("text").await;
    assert_eq!(texts.len(), 1, "share link to the referrer");
    assert!(texts[0]["text"]["body"]
        .as_str()
        .unwrap_or_default()
        .contains("https://wa.me/"));
    assert_eq!(referral_state(&lc).await, "awaiting_friend");
    let failed = lc.app.store.list_messages(10).await.expect("messages");
    let invite = failed
        .iter()
        .find(|m| m.purpose.as_str() == "friend_invite")
        .expect("friend invite");
    assert_eq!((invite.status.as_str(), invite.error_code), ("failed", Some(131049)));
    lc.shutdown().await;
}

async fn auto_mode_without_consent_uses_a_share_link(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    nominate_friend(&lc, false).await;
    assert!(lc.sent_of("tmpl_referral_friend_invite").await.is_empty());
    assert_eq!(referral_state(&lc).await, "awaiting_friend");
    lc.shutdown().await;
}

async fn direct_mode_has_no_fallback(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__FRIEND_INVITE", "direct")
    })
    .await;
    mount_graph_answer(
        &lc.meta,
        json!({"template": {"name": "tmpl_referral_friend_invite"}}),
        graph_error(
            400,
            131049,
            "This message was not delivered to maintain healthy ecosystem engagement.",
        ),
        None,
    )
    .await;
    nominate_friend(&lc, true).await;
    assert_eq!(lc.sent_of("tmpl_referral_friend_invite").await.len(), 1);
    assert!(lc.sent_of("text").await.is_empty(), "no share link in direct mode");
    assert_eq!(referral_state(&lc).await, "friend_unreachable");
    let calls = lc.hubspot_calls().await;
    assert!(
        calls
            .iter()
            .any(|(_, _, b)| b["properties"]["referral_status"] == "friend_unreachable"),
        "{calls:?}"
    );
    lc.shutdown().await;
}

async fn stop_button_and_131050_opt_out(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let stop_tap = json!({"from": "447911123460", "id": "wamid.STOPTAP", "timestamp": "1795510950", "type": "button",
                          "button": {"payload": "Stop promotions", "text": "Stop promotions"}});
    assert_eq!(lc.inbound(stop_tap).await, 200);
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    assert!(
        lc.app.store.is_opted_out(&e164("+447911123460")).await.expect("query"),
        "quick reply opts out"
    );
    let messages = lc.app.store.list_messages(5).await.expect("messages");
    let wamid = messages[0].wamid.clone().expect("invite wamid");
    assert_eq!(
        lc.status(&wamid, "failed", Some((131050, "User has stopped marketing messages")))
            .await,
        200
    );
    lc.settle().await;
    assert!(
        lc.app.store.is_opted_out(&e164(REFERRER_PHONE)).await.expect("query"),
        "131050 records the opt-out"
    );
    let message = lc
        .app
        .store
        .message_by_wamid(&wamid)
        .await
        .expect("query")
        .expect("message");
    assert_eq!((message.status.as_str(), message.error_code), ("failed", Some(131050)));
    lc.shutdown().await;
}

async fn interrupted_send_is_reconciled_by_callback_data(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    // Meta's answer is lost (a 200 without a message id): we cannot know the send's fate.
    mount_graph_answer(
        &lc.meta,
        json!({"template": {"name": "tmpl_referral_invite"}}),
        ResponseTemplate::new(200).set_body_json(json!({"messaging_product": "whatsapp"})),
        Some(1),
    )
    .await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    let store = lc.app.store.clone();
    let interrupted = eventually(std::time::Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .list_messages(5)
                .await
                .map(|m| m.first().is_some_and(|m| m.status.as_str() == "sending"))
                .unwrap_or(false)
        }
    })
    .await;
    assert!(interrupted, "the message waits in `sending`");
    // The request reaches the fake around the time the message is marked `sending`.
    let mut sent = Vec::new();
    for _ in 0..200 {
        sent = lc.sent_of("tmpl_referral_invite").await;
        if !sent.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let key = sent
        .first()
        .and_then(|b| b["biz_opaque_callback_data"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        key,
        format!("invite:{}", lc.invite_id().await),
        "callback data is the message key"
    );
    // Meta reports the message it did accept, echoing our callback data.
    let status = json!({"statuses": [{"id": "wamid.LATE", "status": "delivered", "timestamp": "1795510900",
                                      "recipient_id": "447911123456", "biz_opaque_callback_data": key}]});
    assert_eq!(lc.whatsapp("messages", status).await, 200);
    let reconciled = eventually(std::time::Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .message_by_wamid("wamid.LATE")
                .await
                .ok()
                .flatten()
                .is_some_and(|m| m.status.as_str() == "delivered")
        }
    })
    .await;
    assert!(reconciled, "the status recorded the send");
    assert_eq!(
        lc.sent_of("tmpl_referral_invite").await.len(),
        1,
        "and it is not sent again"
    );
    lc.shutdown().await;
}

async fn transient_failed_status_is_resent_once(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    for round in 0..2 {
        let messages = lc.app.store.list_messages(5).await.expect("messages");
        let wamid = messages[0].wamid.clone().expect("wamid");
        assert_eq!(
            lc.status(&wamid, "failed", Some((131000, "Something went wrong")))
                .await,
            200,
            "round {round}"
        );
        lc.settle().await;
    }
    assert_eq!(
        lc.sent_of("tmpl_referral_invite").await.len(),
        2,
        "resent once, not twice"
    );
    lc.shutdown().await;
}

async fn account_level_error_keeps_the_referral(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    mount_graph_answer(
        &lc.meta,
        json!({"template": {"name": "tmpl_referral_friend_invite"}}),
        graph_error(401, 190, "Error validating access token"),
        None,
    )
    .await;
    nominate_friend(&lc, true).await;
    assert_eq!(
        referral_state(&lc).await,
        "direct_invite_queued",
        "an operator fixes the token; the friend is not lost"
    );
    let dead = lc
        .app
        .store
        .list(Queue::Jobs, Some(QueueState::Dead), 10)
        .await
        .expect("jobs");
    assert!(
        dead.iter()
            .any(|j| j.last_error.as_deref().unwrap_or("").contains("account-level")),
        "{dead:?}"
    );
    let metrics = lc.app.metrics().await;
    assert!(
        metrics.contains(r#"referloop_whatsapp_send_errors_total{class="account_level",code="190"} 1"#),
        "{metrics}"
    );
    lc.shutdown().await;
}

/// Meta delivers the 131050 `failed` of the invite again, after its key was pruned (an
/// hour on) and after the customer opted back in: the refusal was handled when it was
/// recorded, so the number stays opted in.
async fn a_failed_status_delivered_again_keeps_a_later_resume(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    let wamid = lc.app.store.list_messages(5).await.expect("messages")[0]
        .wamid
        .clone()
        .expect("invite wamid");
    let refused = Some((131050, "User has stopped marketing messages"));
    assert_eq!(lc.status(&wamid, "failed", refused).await, 200);
    lc.settle().await;
    let opted_out = || async { lc.app.store.is_opted_out(&e164(REFERRER_PHONE)).await.expect("query") };
    assert!(opted_out().await, "131050 records the opt-out");
    let resume = json!({"user_preferences": [{"wa_id": "447911123456", "detail": "resume", "category": "marketing_messages",
                                              "value": "resume", "timestamp": 1795511800}]});
    assert_eq!(lc.whatsapp("user_preferences", resume).await, 200);
    lc.settle().await;
    assert!(!opted_out().await, "opted back in");

    // As the hourly prune of finished statuses does.
    let db = raw_database(&lc.app).await;
    let key = format!("status:{wamid}:failed");
    let pruned = sqlx::query("DELETE FROM inbox_events WHERE dedupe_key = $1")
        .bind(&key)
        .execute(&db)
        .await
        .expect("prune the status");
    assert_eq!(pruned.rows_affected(), 1);
    assert_eq!(lc.status(&wamid, "failed", refused).await, 200);
    lc.settle().await;
    assert!(
        !opted_out().await,
        "the repeated refusal does not opt the number out again"
    );
    let events = lc.app.store.list(Queue::Inbox, None, 100).await.expect("inbox");
    let again = events
        .iter()
        .find(|e| e.key.ends_with(&key))
        .unwrap_or_else(|| panic!("the repeated status, stored anew: {events:?}"));
    assert_eq!(again.state, QueueState::Done);
    assert!(
        again
            .note
            .as_deref()
            .is_some_and(|n| n.contains("its refusal was handled when recorded")),
        "{again:?}"
    );
    lc.shutdown().await;
}

async fn stop_keyword_and_user_preferences(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    // HubSpot knows the number as Ana's contact.
    lc.hubspot_search_finds(
        None,
        json!({"id": ANA, "properties": {"mobilephone": "07911 123456", "phone": ""}}),
    )
    .await;
    for n in 0..2 {
        assert_eq!(
            lc.inbound(text_message(REFERRER_PHONE, &format!("wamid.STOP{n}"), " stop "))
                .await,
            200
        );
    }
    lc.settle().await;
    assert_eq!(lc.sent_of("text").await.len(), 1, "acknowledged once");
    assert!(lc.app.store.is_opted_out(&e164(REFERRER_PHONE)).await.expect("query"));
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    assert!(
        lc.sent_of("tmpl_referral_invite").await.is_empty(),
        "never message an opted-out number"
    );
    let calls = lc.hubspot_calls().await;
    assert!(
        calls.iter().any(|(m, p, b)| m == "PATCH"
            && p.ends_with(&format!("/contacts/{ANA}"))
            && b["properties"]["whatsapp_marketing_opt_out"] == "true"),
        "mirrored to HubSpot: {calls:?}"
    );
    let invites = lc.app.store.list_invites(5).await.expect("invites");
    assert_eq!(
        invites[0].reason.as_ref().map(|r| r.code),
        Some(IneligibleCode::OptedOut)
    );

    let resume = json!({"user_preferences": [{"wa_id": "447911123456", "detail": "resume", "category": "marketing_messages",
                                              "value": "resume", "timestamp": 1795511800}]});
    assert_eq!(lc.whatsapp("user_preferences", resume).await, 200);
    lc.settle().await;
    assert!(!lc.app.store.is_opted_out(&e164(REFERRER_PHONE)).await.expect("query"));
    let stop = json!({"user_preferences": [{"wa_id": "447911123456", "detail": "stop", "category": "marketing_messages",
                                            "value": "stop", "timestamp": 1795511900}]});
    assert_eq!(lc.whatsapp("user_preferences", stop).await, 200);
    lc.settle().await;
    assert!(lc.app.store.is_opted_out(&e164(REFERRER_PHONE)).await.expect("query"));
    lc.shutdown().await;
}

async fn graph_500_then_success_sends_once(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    mount_graph_answer(
        &lc.meta,
        json!({"type": "template"}),
        graph_error(500, 131000, "Something went wrong"),
        Some(1),
    )
    .await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    assert_eq!(
        lc.sent_of("tmpl_referral_invite").await.len(),
        2,
        "one failed attempt, one accepted"
    );
    let messages = lc.app.store.list_messages(5).await.expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].status.as_str(), "accepted");
    let jobs = lc
        .app
        .store
        .list(Queue::Jobs, Some(QueueState::Done), 10)
        .await
        .expect("jobs");
    assert!(jobs
        .iter()
        .any(|j| j.kind == ItemKind::Job(JobKind::SendWhatsApp) && j.attempts == 2));
    lc.shutdown().await;
}

async fn graph_429_honours_retry_after(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let throttled = graph_error(429, 130429, "Rate limit hit").insert_header("retry-after", "30");
    mount_graph_answer(&lc.meta, json!({"type": "template"}), throttled, Some(1)).await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    let store = lc.app.store.clone();
    let waiting = eventually(std::time::Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .list(Queue::Jobs, Some(QueueState::Failed), 10)
                .await
                .map(|j| j.iter().any(|j| j.kind == ItemKind::Job(JobKind::SendWhatsApp)))
                .unwrap_or(false)
        }
    })
    .await;
    assert!(waiting, "the send waits for a retry");
    let job = lc
        .app
        .store
        .list(Queue::Jobs, Some(QueueState::Failed), 10)
        .await
        .expect("jobs");
    let job = job
        .iter()
        .find(|j| j.kind == ItemKind::Job(JobKind::SendWhatsApp))
        .expect("send job");
    assert!(job.run_at - job.created_at >= 29_000, "not before Retry-After: {job:?}");
    assert_eq!(lc.sent_of("tmpl_referral_invite").await.len(), 1);
    lc.shutdown().await;
}

async fn permanent_meta_error_is_recorded_not_retried(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    mount_graph_answer(
        &lc.meta,
        json!({"type": "template"}),
        graph_error(404, 132001, "Template name does not exist in the translation"),
        None,
    )
    .await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    assert_eq!(lc.sent_of("tmpl_referral_invite").await.len(), 1, "no retry");
    let messages = lc.app.store.list_messages(5).await.expect("messages");
    assert_eq!(
        (messages[0].status.as_str(), messages[0].error_code),
        ("failed", Some(132001))
    );
    let dead = lc
        .app
        .store
        .list(Queue::Jobs, Some(QueueState::Dead), 10)
        .await
        .expect("jobs");
    assert!(
        dead.iter()
            .any(|j| j.last_error.as_deref().unwrap_or("").contains("132001")),
        "{dead:?}"
    );
    lc.shutdown().await;
}

async fn hubspot_429_is_retried(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    wiremock::Mock::given(wiremock::matchers::method("PATCH"))
        .respond_with(
            wiremock::ResponseTemplate::new(429).set_body_json(json!({"status": "error",
            "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT", "policyName": "SECONDLY"})),
        )
        .with_priority(1)
        .up_to_n_times(1)
        .mount(&lc.hubspot)
        .await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1").await, 200);
    lc.settle().await;
    let patches = lc
        .hubspot_calls()
        .await
        .into_iter()
        .filter(|(m, _, _)| m == "PATCH")
        .count();
    assert_eq!(patches, 2, "refused once, then accepted");
    let done = lc
        .app
        .store
        .list(Queue::Jobs, Some(QueueState::Done), 10)
        .await
        .expect("jobs");
    assert!(done
        .iter()
        .any(|j| j.kind == ItemKind::Job(JobKind::ReferrerStatus) && j.attempts == 2));
    lc.shutdown().await;
}

/// Statuses of messages another tool sent from the same number (no callback data, or
/// callback data that names no message of ours) are settled on their first attempt, not
/// retried; a status carrying our key still records a send whose answer we missed.
async fn statuses_of_other_senders_are_settled_at_once(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    assert_eq!(lc.status("wamid.OTHERTOOL1", "delivered", None).await, 200);
    let theirs = json!({"id": "wamid.OTHERTOOL2", "status": "read", "timestamp": "1795510900",
                        "recipient_id": "447911123457", "biz_opaque_callback_data": "crm-campaign-7"});
    assert_eq!(lc.whatsapp("messages", json!({"statuses": [theirs]})).await, 200);
    lc.settle().await;
    let events = lc.app.store.list(Queue::Inbox, None, 10).await.expect("inbox");
    assert_eq!(events.len(), 2);
    for event in &events {
        assert_eq!(event.state.as_str(), "done", "{event:?}");
        assert_eq!(event.attempts, 1, "settled on the first attempt: {event:?}");
        assert!(
            event.note.as_deref().unwrap_or_default().contains("we did not send"),
            "{event:?}"
        );
    }
    lc.shutdown().await;
}

/// A referrer's status job that runs after its invite moved on (jobs of one invite run
/// side by side, in any order) never sets HubSpot back: without a code it writes nothing,
/// with one it writes the code and the invite's newer status.
async fn late_referrer_status_jobs_never_set_hubspot_back(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    nominate_friend(&lc, true).await;
    let invite_id = lc.invite_id().await;
    let before = lc.hubspot_calls().await.len();
    // The tap's and the trigger's jobs.
    lc.enqueue_late_referrer_statuses(
        invite_id,
        ANA,
        &[(InviteState::FlowSent, None), (InviteState::Invited, Some("LATE42"))],
    )
    .await;
    lc.settle().await;
    let note = lc.job_notes().await;
    assert!(
        note("test:late:1").contains("overtaken by nominated"),
        "{}",
        note("test:late:1")
    );
    assert_eq!(
        lc.contact_writes_since(before, ANA).await,
        vec![json!({"referral_code": "LATE42", "referral_status": "nominated"})],
        "only the job with a code wrote, and the status it wrote is the invite's"
    );
    lc.shutdown().await;
}

both_backends!(
    late_referrer_status_jobs_never_set_hubspot_back,
    statuses_of_other_senders_are_settled_at_once,
    happy_path_with_every_webhook_twice,
    statuses_out_of_order_never_move_back,
    ineligible_triggers_are_answered_and_recorded,
    refusals_reply_to_the_referrer,
    reply_without_token_is_matched_by_context_id,
    friend_already_nominated_or_customer,
    a_friend_known_to_hubspot_is_recorded_by_screening,
    share_link_mode_and_the_friend_arriving,
    auto_mode_falls_back_to_a_share_link_after_131049,
    auto_mode_without_consent_uses_a_share_link,
    stop_keyword_and_user_preferences,
    interrupted_send_is_reconciled_by_callback_data,
    transient_failed_status_is_resent_once,
    account_level_error_keeps_the_referral,
    direct_mode_has_no_fallback,
    stop_button_and_131050_opt_out,
    a_failed_status_delivered_again_keeps_a_later_resume,
    graph_500_then_success_sends_once,
    graph_429_honours_retry_after,
    permanent_meta_error_is_recorded_not_retried,
    hubspot_429_is_retried,
);
