//! Milestone bonuses end to end on both stores: a referrer's second rewarded referral earns
//! the bonus configured at two conversions, once, whatever is redelivered or converted at
//! the same moment; it is issued after the hold, told with `tmpl_referral_bonus` and
//! recorded in HubSpot's `referral_bonus_total`; a void that drops the count below two
//! while the bonus is held cancels it.

use std::time::Duration;

use referloop::domain::funnel::Period;
use referloop::domain::reward::{Beneficiary, RewardState};
use referloop::store::{Backend, RewardRow};
use serde_json::{json, Value};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;

const SECOND_FRIEND: &str = "+447911123470";

const MILESTONE: &str = r#"
[[rewards.milestones]]
conversions = 2
reward = { kind = "static_code", amount = 2000, currency = "usd", description = "a $20 bonus", static_code = "BONUS20" }
"#;

/// The app, with a milestone at two conversions (from a configuration file, as an
/// operator sets one) and `hold_days` of reward hold.
async fn start(backend: Backend, hold_days: &str) -> (Lifecycle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("referloop.toml");
    std::fs::write(&file, MILESTONE).expect("config file");
    let path = file.to_string_lossy().to_string();
    let hold = hold_days.to_string();
    let lc = Lifecycle::start(backend, move |env| {
        set_env(env, "REFERLOOP_CONFIG", &path);
        set_env(env, "REFERLOOP_PROGRAMME__REWARD_HOLD_DAYS", &hold);
    })
    .await;
    (lc, dir)
}

/// Ana nominates a second friend through a new tap and Flow.
async fn nominate_second_friend(lc: &Lifecycle) {
    let invite_id = lc.invite_id().await;
    assert_eq!(
        lc.inbound(refer_tap(REFERRER_PHONE, "wamid.TAP2", invite_id)).await,
        200
    );
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    let token = flows
        .last()
        .and_then(|f| f["interactive"]["action"]["parameters"]["flow_token"].as_str())
        .expect("a second Flow")
        .to_string();
    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.R2",
        "x",
        crate::lifecycle::nomination(Some(&token), SECOND_FRIEND, true),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;
}

async fn convert(lc: &Lifecycle, order: &str, friend: &str) {
    let (status, answer) = lc
        .api_conversion(json!({"external_id": order, "friend_phone": friend}))
        .await;
    assert!(status < 300, "{status} {answer}");
}

async fn bonuses(lc: &Lifecycle) -> Vec<RewardRow> {
    lc.app
        .store
        .list_rewards(50)
        .await
        .expect("rewards")
        .into_iter()
        .filter(|r| r.beneficiary == Beneficiary::ReferrerBonus)
        .collect()
}

async fn bonus_messages(lc: &Lifecycle) -> Vec<Value> {
    lc.sent_of("tmpl_referral_bonus").await
}

async fn the_second_rewarded_referral_earns_the_bonus_once(backend: Backend) {
    let (lc, _config) = start(backend, "0").await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    nominate_second_friend(&lc).await;
    convert(&lc, "order-1", FRIEND_PHONE).await;
    lc.settle().await;
    assert!(bonuses(&lc).await.is_empty(), "one conversion is not two");
    convert(&lc, "order-2", SECOND_FRIEND).await;
    // Redelivered: still one conversion, one bonus.
    convert(&lc, "order-2", SECOND_FRIEND).await;
    lc.settle().await;
    let granted = bonuses(&lc).await;
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(granted[0].milestone, Some(2));
    assert_eq!(granted[0].state, RewardState::Issued);
    assert_eq!(granted[0].code.as_deref(), Some("BONUS20"));
    let told = bonus_messages(&lc).await;
    assert_eq!(told.len(), 1, "{told:?}");
    let params = told[0]["template"]["components"][0]["parameters"].to_string();
    assert!(params.contains("\"2\"") && params.contains("BONUS20"), "{params}");
    let recorded = lc.hubspot_calls().await.iter().any(|(method, path, body)| {
        method == "PATCH" && path.ends_with("/90001") && body["properties"]["referral_bonus_total"] == "2000"
    });
    assert!(recorded, "HubSpot records the bonus total");
    let period = Period::last_days(30, lc.app.store.now_ms()).expect("a period");
    let counts = lc.app.store.funnel(period, None).await.expect("funnel");
    assert_eq!(counts.bonuses_granted, 1);
    lc.shutdown().await;
}

async fn conversions_at_the_same_moment_grant_one_bonus(backend: Backend) {
    let (lc, _config) = start(backend, "0").await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    nominate_second_friend(&lc).await;
    // Both friends buy at once, each conversion also redelivered.
    tokio::join!(
        convert(&lc, "order-a", FRIEND_PHONE),
        convert(&lc, "order-b", SECOND_FRIEND),
        convert(&lc, "order-a", FRIEND_PHONE),
        convert(&lc, "order-b", SECOND_FRIEND),
    );
    lc.settle().await;
    let granted = bonuses(&lc).await;
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(bonus_messages(&lc).await.len(), 1);
    lc.shutdown().await;
}

async fn a_void_within_the_hold_cancels_the_bonus(backend: Backend) {
    let (lc, _config) = start(backend, "3").await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    nominate_second_friend(&lc).await;
    convert(&lc, "order-1", FRIEND_PHONE).await;
    convert(&lc, "order-2", SECOND_FRIEND).await;
    lc.settle().await;
    let granted = bonuses(&lc).await;
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].state, RewardState::Pending, "held");
    // The first friend's purchase is refunded while everything is held.
    let first = lc
        .app
        .store
        .list_referrals(5)
        .await
        .expect("referrals")
        .into_iter()
        .find(|r| r.friend_phone.as_ref().map(|p| p.as_str()) == Some(FRIEND_PHONE))
        .expect("the first referral");
    let (status, answer) = lc.void(first.id).await;
    assert!(status < 300, "{status} {answer}");
    let granted = bonuses(&lc).await;
    assert_eq!(granted[0].state, RewardState::Void, "one rewarded referral is not two");
    lc.app.store.clock().advance(Duration::from_secs(3 * 86_400 + 1));
    lc.settle().await;
    assert!(bonus_messages(&lc).await.is_empty());
    lc.shutdown().await;
}

both_backends!(
    the_second_rewarded_referral_earns_the_bonus_once,
    conversions_at_the_same_moment_grant_one_bonus,
    a_void_within_the_hold_cancels_the_bonus,
);
