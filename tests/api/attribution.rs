//! The attribution rule: a nominated referral that was not refused converts when a
//! conversion matches it within the window, whatever its delivery state; a code alone,
//! from a number never nominated, converts only with `programme.attribute_code_only`.

use referloop::domain::state::Persisted;
use referloop::store::Backend;
use serde_json::json;

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::lifecycle::nominate_friend;
use crate::rewards::{checkout_event, rewards};

async fn referral_state(lc: &Lifecycle) -> String {
    lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .state
        .as_str()
        .to_string()
}

/// Auto mode without consent: the referrer gets a share link; the friend never writes
/// to the business and buys on the shop with the code.
async fn share_link_friend_who_never_writes_converts_through_stripe(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    nominate_friend(&lc, false).await;
    assert_eq!(referral_state(&lc).await, "awaiting_friend");
    assert_eq!(
        lc.sent_of("tmpl_referral_friend_invite").await.len(),
        0,
        "no consent, no direct invite"
    );
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let event = checkout_event(
        "evt_share",
        "cs_share",
        json!({"metadata": {"referral_code": code},
               "customer_details": {"email": "zoe@example.com", "phone": "+44 7911 123457"}}),
    );
    assert_eq!(lc.stripe_event(event).await, 200);
    lc.settle().await;
    let conversions = lc.app.store.list_conversions(5).await.expect("conversions");
    assert_eq!(conversions[0].outcome.as_str(), "converted");
    assert_eq!(conversions[0].matched_by.map(|m| m.as_str()), Some("code_and_phone"));
    assert_eq!(referral_state(&lc).await, "converted");
    let rewards = rewards(&lc).await;
    assert_eq!(rewards.len(), 2, "both sides");
    assert!(rewards.iter().all(|r| r.state.as_str() == "issued"), "{rewards:?}");
    assert_eq!(lc.sent_of("tmpl_referral_thanks").await.len(), 1);
    // The friend never opened a window nor consented: their reward is issued and in
    // HubSpot, but not messaged.
    let reward_messages = lc.sent_of("tmpl_referral_reward").await;
    assert_eq!(reward_messages.len(), 1);
    assert_eq!(reward_messages[0]["to"], REFERRER_PHONE);
    lc.shutdown().await;
}

/// The direct invite was sent but WhatsApp has not (yet) reported it delivered.
async fn conversion_before_the_delivered_status_converts(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    nominate_friend(&lc, true).await;
    assert_eq!(referral_state(&lc).await, "direct_invite_queued");
    let (status, answer) = lc
        .api_conversion(json!({"external_id": "order-early", "friend_phone": FRIEND_PHONE}))
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["outcome"], "converted");
    lc.settle().await;
    // The late receipt changes nothing.
    let messages = lc.app.store.list_messages(20).await.expect("messages");
    let wamid = messages
        .iter()
        .find(|m| m.purpose.as_str() == "friend_invite")
        .and_then(|m| m.wamid.clone())
        .expect("wamid");
    assert_eq!(lc.status(&wamid, "delivered", None).await, 200);
    lc.settle().await;
    assert_eq!(referral_state(&lc).await, "converted");
    assert_eq!(rewards(&lc).await.len(), 2);
    assert_eq!(lc.sent_of("tmpl_referral_thanks").await.len(), 1);
    lc.shutdown().await;
}

/// A refused nomination (the friend opted out) never converts, whatever matches it.
async fn refused_referral_does_not_convert(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    assert_eq!(lc.inbound(text_message(FRIEND_PHONE, "wamid.STOP", "STOP")).await, 200);
    lc.settle().await;
    nominate_friend(&lc, true).await;
    assert_eq!(referral_state(&lc).await, "refused");
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let (status, answer) = lc
        .api_conversion(json!({"external_id": "order-refused", "friend_phone": FRIEND_PHONE, "referral_code": code}))
        .await;
    assert_ne!(answer["outcome"], "converted", "{answer}");
    assert_eq!(status, 404, "{answer}");
    lc.settle().await;
    assert_eq!(referral_state(&lc).await, "refused");
    assert!(rewards(&lc).await.is_empty());
    assert!(lc.sent_of("tmpl_referral_thanks").await.is_empty());
    lc.shutdown().await;
}

/// A referrer's code, used by a number nobody nominated.
async fn code_alone_converts_only_when_configured(backend: Backend) {
    for attribute_code_only in [false, true] {
        let lc = Lifecycle::start(backend, |env| {
            let flag = if attribute_code_only { "true" } else { "false" };
            set_env(env, "REFERLOOP_PROGRAMME__ATTRIBUTE_CODE_ONLY", flag);
        })
        .await;
        nominate_friend(&lc, true).await;
        let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
            .referral_code
            .clone();
        let stranger = "+447911123999";
        let body = json!({"external_id": "order-hand", "friend_phone": stranger, "referral_code": code});
        let (status, answer) = lc.api_conversion(body.clone()).await;
        if !attribute_code_only {
            assert_eq!(
                (status, answer["outcome"].as_str()),
                (404, Some("unattributed")),
                "{answer}"
            );
            lc.settle().await;
            assert!(rewards(&lc).await.is_empty());
            lc.shutdown().await;
            continue;
        }
        assert_eq!(
            (status, answer["outcome"].as_str()),
            (201, Some("converted")),
            "{answer}"
        );
        let (again, repeated) = lc.api_conversion(body).await;
        assert_eq!((again, &repeated), (200, &answer), "a repeat answers the same");
        lc.settle().await;
        let referrals = lc.app.store.list_referrals(5).await.expect("referrals");
        assert_eq!(referrals.len(), 2, "the nominated friend's and the code-only one");
        let created = &referrals[0];
        assert_eq!(
            (
                created.state.as_str(),
                created.reason.map(|r| r.as_str()),
                created.friend_phone.as_ref().map(|p| p.as_str())
            ),
            ("converted", Some("code_only"), Some(stranger))
        );
        assert_eq!(
            referrals[1].state.as_str(),
            "direct_invite_queued",
            "the nominated one is untouched"
        );
        let rewards = rewards(&lc).await;
        assert_eq!(rewards.len(), 2, "{rewards:?}");
        assert!(rewards.iter().all(|r| r.state.as_str() == "issued"));
        lc.shutdown().await;
    }
}

both_backends!(
    share_link_friend_who_never_writes_converts_through_stripe,
    conversion_before_the_delivered_status_converts,
    refused_referral_does_not_convert,
    code_alone_converts_only_when_configured,
);
