//! Conversions and rewards end to end, against fakes of HubSpot, the Graph API and Stripe.

use referloop::domain::referral::ReferralState;
use referloop::domain::state::{InviteState, Persisted};
use referloop::domain::work::{ItemKind, Job, JobKind};
use referloop::store::{Backend, Queue, QueueState};
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::nominate_friend;

/// Drives a referral to `friend_invited` (friend contact 95001). Returns (referral id, code).
pub async fn invited_friend(lc: &Lifecycle) -> (i64, String) {
    nominate_friend(lc, true).await;
    let messages = lc.app.store.list_messages(20).await.expect("messages");
    let wamid = messages
        .iter()
        .find(|m| m.purpose.as_str() == "friend_invite")
        .and_then(|m| m.wamid.clone())
        .expect("wamid");
    assert_eq!(lc.status(&wamid, "delivered", None).await, 200);
    lc.settle().await;
    let referral = lc.app.store.list_referrals(1).await.expect("referrals")[0].clone();
    assert_eq!(referral.state.as_str(), "friend_invited");
    (referral.id, referral.referral_code)
}

/// HubSpot answers that deal `deal_id`'s contact is the friend's (95001), as the v4
/// associations API does.
pub async fn deal_of_the_friend(lc: &Lifecycle, deal_id: u64) {
    Mock::given(method("GET"))
        .and(path(format!("/crm/v4/objects/deal/{deal_id}/associations/contact")))
        .and(header("authorization", format!("Bearer {HUBSPOT_TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": [
            {"toObjectId": 95001, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3, "label": null}]}]})))
        .mount(&lc.hubspot)
        .await;
}

pub fn checkout_event(id: &str, session: &str, extra: Value) -> Value {
    let mut object = json!({"id": session, "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": "paid", "amount_total": 4900, "currency": "usd", "customer": "cus_friend",
        "payment_intent": format!("pi_{session}"), "customer_details": {"email": "zoe@example.com", "phone": null},
        "metadata": {}, "discounts": [], "total_details": {"amount_discount": 0}});
    if let (Some(o), Some(e)) = (object.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    json!({"id": id, "object": "event", "type": "checkout.session.completed", "api_version": "2025-09-30.clover",
           "data": {"object": object}})
}

/// The properties of each PATCH to the referrer's contact (90001) that wrote its counters.
async fn referrer_counter_writes(lc: &Lifecycle) -> Vec<Value> {
    lc.hubspot_calls()
        .await
        .into_iter()
        .filter(|(m, p, b)| {
            m == "PATCH" && p.ends_with("/contacts/90001") && b["properties"].get("referrals_converted").is_some()
        })
        .map(|(_, _, b)| b["properties"].clone())
        .collect()
}

pub async fn rewards(lc: &Lifecycle) -> Vec<referloop::store::RewardRow> {
    lc.app.store.list_rewards(10).await.expect("rewards")
}

async fn one_conversion_from_three_sources_each_three_times(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let (referral_id, _) = invited_friend(&lc).await;
    let before = lc.hubspot_calls().await.len();
    let api_body =
        json!({"external_id": "order-1001", "friend_phone": FRIEND_PHONE, "amount": 4900, "currency": "usd"});
    let (first_status, first) = lc.api_conversion(api_body.clone()).await;
    assert_eq!(first_status, 201, "{first}");
    assert_eq!(first["referral_state"], "converted");
    // Static codes, not held: issued in the conversion's own commit, with their messages.
    let issued = rewards(&lc).await;
    assert_eq!(issued.len(), 2);
    assert!(issued.iter().all(|r| r.state.as_str() == "issued"), "{issued:?}");
    let keys: Vec<String> = lc
        .app
        .store
        .list_messages(20)
        .await
        .expect("messages")
        .into_iter()
        .map(|m| m.idempotency_key)
        .collect();
    for reward in &issued {
        assert!(keys.contains(&format!("reward:{}:message", reward.id)), "{keys:?}");
    }
    for _ in 0..2 {
        let (status, again) = lc.api_conversion(api_body.clone()).await;
        assert_eq!((status, &again), (200, &first), "a repeat answers the same");
    }
    for _ in 0..3 {
        assert_eq!(
            lc.trigger(
                "trigger=conversion",
                json!({"hs_object_id": "95001", "lifecyclestage": "customer"})
            )
            .await,
            200
        );
        let event = checkout_event(
            "evt_1",
            "cs_1",
            json!({"client_reference_id": format!("referral:{referral_id}")}),
        );
        assert_eq!(lc.stripe_event(event).await, 200);
    }
    lc.settle().await;

    let conversions = lc.app.store.list_conversions(10).await.expect("conversions");
    let mut outcomes: Vec<_> = conversions
        .iter()
        .map(|c| (c.source.as_str(), c.outcome.as_str()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            ("api", "converted"),
            ("hubspot", "already_converted"),
            ("stripe", "already_converted")
        ]
    );
    let rewards = rewards(&lc).await;
    assert_eq!(rewards.len(), 2, "one reward per side");
    assert!(rewards.iter().all(|r| r.state.as_str() == "issued"), "{rewards:?}");
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    assert!(
        !jobs.iter().any(|j| j.key.starts_with("reward.issue:")),
        "no job to issue them: {jobs:?}"
    );
    assert_eq!(lc.sent_of("tmpl_referral_thanks").await.len(), 1, "one thank-you");
    let reward_messages = lc.sent_of("tmpl_referral_reward").await;
    assert_eq!(reward_messages.len(), 2, "one reward message each");
    let to: Vec<_> = reward_messages
        .iter()
        .map(|m| m["to"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(to.contains(&REFERRER_PHONE.to_string()) && to.contains(&FRIEND_PHONE.to_string()));

    // Counters come from the ledger. The referrer's reward, issued at once, carries them:
    // one write for the moment (status, reward and counters), not one per fact.
    let counters: Vec<_> = referrer_counter_writes(&lc)
        .await
        .into_iter()
        .map(|p| {
            (
                p["referrals_converted"].clone(),
                p["referral_rewards_total"].clone(),
                p["referral_status"].clone(),
                p["referral_reward"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        counters,
        vec![(json!("1"), json!("1000"), json!("rewarded"), true)],
        "one write of the counters, with the reward"
    );
    // The friend's reward, issued with the conversion, writes `rewarded`: no `converted`
    // first, only to be overwritten.
    assert_eq!(
        lc.contact_writes_since(before, "95001").await,
        vec![json!({"referral_reward": "WELCOME10", "referral_status": "rewarded"})]
    );
    lc.shutdown().await;
}

async fn hubspot_deal_conversion_uses_its_contacts(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    deal_of_the_friend(&lc, 555).await;
    invited_friend(&lc).await;
    let deal = json!({"portalId": 1, "dealId": 555, "isDeleted": false,
                      "properties": {"hs_is_closed_won": {"value": "true"}, "amount": {"value": "49.00"}}});
    assert_eq!(lc.trigger("trigger=conversion", deal).await, 200);
    lc.settle().await;
    let conversions = lc.app.store.list_conversions(5).await.expect("conversions");
    assert_eq!(
        (conversions[0].outcome.as_str(), conversions[0].amount),
        ("converted", Some(4900))
    );
    assert_eq!(conversions[0].matched_by.map(|m| m.as_str()), Some("hubspot_contact"));
    assert_eq!(rewards(&lc).await.len(), 2);
    lc.shutdown().await;
}

async fn stripe_checkout_matched_by_typed_code_and_phone(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let (_, code) = invited_friend(&lc).await;
    Mock::given(method("GET"))
        .and(path("/v1/checkout/sessions/cs_typed"))
        .and(query_param("expand[]", "total_details.breakdown"))
        .and(header("authorization", format!("Bearer {STRIPE_KEY}").as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": "cs_typed", "total_details": {"breakdown": {
            "discounts": [{"amount": 500, "discount": {"promotion_code": {"id": "promo_x", "code": code}}}]}}})),
        )
        .mount(&lc.stripe)
        .await;
    let event = checkout_event(
        "evt_2",
        "cs_typed",
        json!({"discounts": [{"promotion_code": "promo_x"}], "total_details": {"amount_discount": 500},
               "customer_details": {"email": "zoe@example.com", "phone": "+44 7911 123457"}}),
    );
    assert_eq!(lc.stripe_event(event).await, 200);
    lc.settle().await;
    let conversions = lc.app.store.list_conversions(5).await.expect("conversions");
    assert_eq!(conversions[0].outcome.as_str(), "converted");
    assert_eq!(conversions[0].matched_by.map(|m| m.as_str()), Some("code_and_phone"));
    let stripe_calls = lc.stripe.received_requests().await.unwrap_or_default();
    assert!(
        stripe_calls.iter().all(|r| r.headers.get("stripe-version").is_some()),
        "API version pinned"
    );
    lc.shutdown().await;
}

async fn stripe_500_then_success_makes_one_promotion_code(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_REWARDS__FRIEND__KIND", "stripe_promotion_code");
        set_env(env, "REFERLOOP_REWARDS__FRIEND__STRIPE_COUPON", "RFR-FRIEND");
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/v1/promotion_codes"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"error": {"type": "api_error", "message": "Something went wrong"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&lc.stripe)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/promotion_codes"))
        .and(header("authorization", format!("Bearer {STRIPE_KEY}").as_str()))
        .respond_with(|request: &wiremock::Request| {
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&request.body).into_owned().collect();
            ResponseTemplate::new(200).set_body_json(json!({"id": "promo_1", "object": "promotion_code",
                "code": form.get("code"), "max_redemptions": 1, "promotion": {"type": "coupon", "coupon": form.get("promotion[coupon]")}}))
        })
        .mount(&lc.stripe)
        .await;
    let (referral_id, code) = invited_friend(&lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-1", "referral_code": code}))
        .await;
    assert_eq!(status, 201);
    lc.settle().await;

    let calls: Vec<_> = lc.stripe.received_requests().await.unwrap_or_default();
    let posts: Vec<_> = calls.iter().filter(|r| r.url.path() == "/v1/promotion_codes").collect();
    assert_eq!(posts.len(), 2, "one 500, one success");
    let keys: Vec<_> = posts
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        })
        .collect();
    assert!(
        !keys[0].is_empty() && keys[0] == keys[1],
        "the retry reuses the Idempotency-Key: {keys:?}"
    );
    assert_eq!(posts[0].body, posts[1].body, "byte-identical parameters");
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&posts[1].body).into_owned().collect();
    assert_eq!(form.get("promotion[type]").map(String::as_str), Some("coupon"));
    assert_eq!(form.get("promotion[coupon]").map(String::as_str), Some("RFR-FRIEND"));
    assert_eq!(form.get("max_redemptions").map(String::as_str), Some("1"));
    assert_eq!(
        form.get("customer"),
        None,
        "no Stripe customer known from an API conversion"
    );
    let friend = rewards(&lc)
        .await
        .into_iter()
        .find(|r| r.beneficiary.as_str() == "friend")
        .expect("friend reward");
    assert_eq!(friend.state.as_str(), "issued");
    assert_eq!(friend.code, Some(format!("{code}F{referral_id}")));
    assert_eq!(friend.external_ref.as_deref(), Some("promo_1"));
    let reward_messages = lc.sent_of("tmpl_referral_reward").await;
    assert_eq!(reward_messages.iter().filter(|m| m["to"] == FRIEND_PHONE).count(), 1);
    lc.shutdown().await;
}

async fn conversion_links_the_contacts_in_hubspot(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_HUBSPOT__RECORD_REFERRAL_LINKS", "true")
    })
    .await;
    let bearer = format!("Bearer {HUBSPOT_TOKEN}");
    Mock::given(method("GET"))
        .and(path("/crm/v4/associations/contact/contact/labels"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": []})))
        .mount(&lc.hubspot)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v4/associations/contact/contact/labels"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": [
            {"category": "USER_DEFINED", "typeId": 91, "label": "Referred"},
            {"category": "USER_DEFINED", "typeId": 92, "label": "Referred by"}]})))
        .mount(&lc.hubspot)
        .await;
    Mock::given(method("PUT"))
        .and(path("/crm/v4/objects/contact/90001/associations/contact/95001"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"fromObjectTypeId": "0-1", "fromObjectId": 90001})),
        )
        .mount(&lc.hubspot)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/notes"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "note-1"})))
        .mount(&lc.hubspot)
        .await;
    invited_friend(&lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-1", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 201);
    lc.settle().await;
    let calls = lc.hubspot_calls().await;
    let label = calls
        .iter()
        .find(|(m, p, _)| m == "POST" && p.ends_with("/labels"))
        .expect("label created");
    assert_eq!(
        label.2,
        json!({"name": "referrer_referred", "label": "Referred", "inverseLabel": "Referred by"})
    );
    let link = calls.iter().find(|(m, _, _)| m == "PUT").expect("association");
    assert_eq!(
        link.2,
        json!([{"associationCategory": "USER_DEFINED", "associationTypeId": 91}])
    );
    let note = calls
        .iter()
        .find(|(m, p, _)| m == "POST" && p == "/crm/v3/objects/notes")
        .expect("note");
    let linked: Vec<_> = note.2["associations"]
        .as_array()
        .map(|a| a.iter().map(|x| x["to"]["id"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(linked, vec![json!("90001"), json!("95001")]);
    assert!(note.2["properties"]["hs_note_body"]
        .as_str()
        .unwrap_or("")
        .contains("Zoë"));
    lc.shutdown().await;
}

async fn conversion_after_the_window_changes_nothing(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__ATTRIBUTION_WINDOW_DAYS", "0")
    })
    .await;
    invited_friend(&lc).await;
    let (status, answer) = lc
        .api_conversion(json!({"external_id": "late-1", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["outcome"], "outside_window");
    lc.settle().await;
    assert!(rewards(&lc).await.is_empty());
    assert!(lc.sent_of("tmpl_referral_thanks").await.is_empty());
    lc.shutdown().await;
}

async fn unattributed_conversion_is_recorded(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let (status, answer) = lc
        .api_conversion(json!({"external_id": "walk-in-1", "referral_code": "NOSUCH22"}))
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["outcome"], "unattributed");
    let event = checkout_event("evt_9", "cs_9", json!({}));
    assert_eq!(lc.stripe_event(event).await, 200);
    lc.settle().await;
    let conversions = lc.app.store.list_conversions(5).await.expect("conversions");
    assert_eq!(conversions.len(), 2);
    assert!(conversions
        .iter()
        .all(|c| c.outcome.as_str() == "unattributed" && c.referral_id.is_none()));
    let (status, _) = lc.api_conversion(json!({"external_id": "x"})).await;
    assert_eq!(status, 422, "a conversion must name something to match");
    let unauthorised = lc
        .app
        .client
        .post(lc.app.url("/api/v1/conversions"))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await;
    assert_eq!(unauthorised.expect("request").status(), 401);
    lc.shutdown().await;
}

async fn cap_reached_rewards_only_the_friend(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__MAX_REWARDED_REFERRALS_PER_REFERRER", "0")
    })
    .await;
    invited_friend(&lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-1", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 201);
    lc.settle().await;
    let rewards = rewards(&lc).await;
    let state = |who: &str| {
        rewards
            .iter()
            .find(|r| r.beneficiary.as_str() == who)
            .map(|r| r.state.as_str().to_string())
    };
    assert_eq!(state("referrer").as_deref(), Some("capped"));
    assert_eq!(state("friend").as_deref(), Some("issued"));
    assert_eq!(
        lc.sent_of("tmpl_referral_thanks").await.len(),
        1,
        "the referrer is still thanked"
    );
    let reward_messages = lc.sent_of("tmpl_referral_reward").await;
    assert_eq!(reward_messages.len(), 1);
    assert_eq!(reward_messages[0]["to"], FRIEND_PHONE);
    let calls = lc.hubspot_calls().await;
    assert!(
        calls.iter().any(|(m, p, b)| m == "PATCH"
            && p.ends_with("/contacts/90001")
            && b["properties"]["referral_status"] == "reward_capped"),
        "the cap is told in HubSpot"
    );
    lc.shutdown().await;
}

async fn held_rewards_can_be_voided(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__REWARD_HOLD_DAYS", "14")
    })
    .await;
    let (referral_id, _) = invited_friend(&lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-1", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 201);
    lc.settle().await;
    assert!(rewards(&lc).await.iter().all(|r| r.state.as_str() == "pending"), "held");
    // A held reward does not carry its conversion's counters: the conversion wrote them.
    let counters: Vec<_> = referrer_counter_writes(&lc)
        .await
        .into_iter()
        .map(|p| (p["referrals_converted"].clone(), p["referral_rewards_total"].clone()))
        .collect();
    assert_eq!(counters, vec![(json!("1"), json!("0"))]);
    let (status, body) = lc.void(referral_id).await;
    assert_eq!(status, 200);
    assert_eq!(body["voided_rewards"], 2);
    assert!(rewards(&lc).await.iter().all(|r| r.state.as_str() == "void"));
    assert!(lc.sent_of("tmpl_referral_reward").await.is_empty());
    let missing = lc
        .app
        .client
        .post(lc.app.url("/api/v1/referrals/999/void"))
        .bearer_auth(API_TOKEN)
        .send()
        .await;
    assert_eq!(missing.expect("request").status(), 404);
    lc.shutdown().await;
}

async fn exhausted_code_pool_fails_clearly(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_REWARDS__FRIEND__KIND", "code_pool")
    })
    .await;
    invited_friend(&lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-1", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 201);
    lc.settle().await;
    let friend = rewards(&lc)
        .await
        .into_iter()
        .find(|r| r.beneficiary.as_str() == "friend")
        .expect("friend reward");
    assert_eq!(friend.state.as_str(), "failed");
    assert!(
        friend.last_error.as_deref().unwrap_or("").contains("pool is exhausted"),
        "{friend:?}"
    );
    let dead = lc
        .app
        .store
        .list(Queue::Jobs, Some(QueueState::Dead), 10)
        .await
        .expect("jobs");
    let job = dead
        .iter()
        .find(|j| j.kind == ItemKind::Job(JobKind::IssueReward))
        .expect("dead reward job");
    let metrics = lc.app.metrics().await;
    assert!(metrics.contains("referloop_reward_pool_exhausted_total 1"), "{metrics}");

    // An operator loads codes and re-drives the job.
    lc.app
        .store
        .load_reward_codes(&["POOL-A".to_string(), "POOL-B".to_string()])
        .await
        .expect("load");
    assert!(lc.app.store.retry_dead(Queue::Jobs, job.id).await.expect("retry"));
    lc.settle().await;
    let friend = rewards(&lc)
        .await
        .into_iter()
        .find(|r| r.beneficiary.as_str() == "friend")
        .expect("friend reward");
    assert_eq!(
        (friend.state.as_str(), friend.code.as_deref()),
        ("issued", Some("POOL-A"))
    );
    assert_eq!(lc.app.store.free_pool_codes().await.expect("free"), 1);
    lc.shutdown().await;
}

async fn fulfilment_webhook_is_signed(backend: Backend) {
    let fulfilment = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fulfil"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fulfilment)
        .await;
    let url = format!("{}/fulfil", fulfilment.uri());
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_REWARDS__REFERRER__KIND", "webhook");
        set_env(env, "REFERLOOP_REWARDS__REFERRER__WEBHOOK_URL", &url);
        set_env(env, "REFERLOOP_REWARDS__REFERRER__WEBHOOK_SECRET", secret);
    })
    .await;
    invited_friend(&lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-1", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 201);
    lc.settle().await;
    let received = fulfilment.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let timestamp: i64 = header("webhook-timestamp").parse().expect("timestamp");
    assert!(referloop::signatures::verify_standard_webhook(
        secret,
        &header("webhook-id"),
        timestamp,
        &request.body,
        &header("webhook-signature")
    ));
    let body: Value = serde_json::from_slice(&request.body).expect("json");
    assert_eq!(body["data"]["beneficiary"], "referrer");
    assert_eq!(body["data"]["amount"], 1000);
    let referrer = rewards(&lc)
        .await
        .into_iter()
        .find(|r| r.beneficiary.as_str() == "referrer")
        .expect("reward");
    assert_eq!(referrer.state.as_str(), "issued");
    lc.shutdown().await;
}

/// The friend's status jobs of one referral run side by side and in any order: a late
/// one never sets HubSpot back. Overtaken by the referral it writes nothing; the
/// conversion's, after the friend's reward, writes `rewarded` as the reward's did.
/// A friend invited and converted through the API, both sides rewarded and every job
/// done: `(referral id, code)`.
async fn rewarded_referral(lc: &Lifecycle) -> (i64, String) {
    let invited = invited_friend(lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-1", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 201);
    lc.settle().await;
    invited
}

async fn late_friend_status_jobs_never_set_hubspot_back(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let (referral_id, code) = rewarded_referral(&lc).await;
    let before = lc.hubspot_calls().await.len();
    for (n, state) in [(1, ReferralState::FriendInvited), (2, ReferralState::Converted)] {
        lc.enqueue_as(&format!("test:late:{n}"), &Job::SyncFriend { referral_id, state })
            .await;
    }
    lc.settle().await;
    let note = lc.job_notes().await;
    assert!(
        note("test:late:1").contains("overtaken by converted"),
        "{}",
        note("test:late:1")
    );
    assert_eq!(
        lc.contact_writes_since(before, "95001").await,
        vec![json!({"referral_status": "rewarded", "referred_by_code": code, "referrer_contact_id": "90001"})],
        "only the conversion's job wrote, and it kept the reward's status"
    );
    lc.shutdown().await;
}

/// A referrer's invite jobs held up until after the referrer's reward (a HubSpot
/// outage's retries run in any order) never take `rewarded` away: without a code such a
/// job writes nothing, with one it writes only the code.
async fn late_invite_jobs_leave_the_referrers_reward_status(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    rewarded_referral(&lc).await;
    let invite_id = lc.invite_id().await;
    let before = lc.hubspot_calls().await.len();
    lc.enqueue_late_referrer_statuses(
        invite_id,
        "90001",
        &[(InviteState::Nominated, None), (InviteState::Invited, Some("LATE42"))],
    )
    .await;
    lc.settle().await;
    let note = lc.job_notes().await;
    assert!(
        note("test:late:1").contains("overtaken by the referrer's reward"),
        "{}",
        note("test:late:1")
    );
    assert_eq!(
        lc.contact_writes_since(before, "90001").await,
        vec![json!({"referral_code": "LATE42"})],
        "only the job with a code wrote, and it left the status as the reward wrote it"
    );
    lc.shutdown().await;
}

both_backends!(
    late_friend_status_jobs_never_set_hubspot_back,
    late_invite_jobs_leave_the_referrers_reward_status,
    one_conversion_from_three_sources_each_three_times,
    hubspot_deal_conversion_uses_its_contacts,
    stripe_checkout_matched_by_typed_code_and_phone,
    stripe_500_then_success_makes_one_promotion_code,
    conversion_after_the_window_changes_nothing,
    conversion_links_the_contacts_in_hubspot,
    unattributed_conversion_is_recorded,
    cap_reached_rewards_only_the_friend,
    held_rewards_can_be_voided,
    exhausted_code_pool_fails_clearly,
    fulfilment_webhook_is_signed,
);
