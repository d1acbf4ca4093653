//! The economics report on both stores: messages priced from Meta's `pricing` in their
//! delivery statuses (billable or free, every category, once whatever is redelivered), a
//! missing price reported rather than guessed, rewards at their issued value, revenue by
//! source (a full refund taking it back, once), money converted with the configured rates (and reported when no rate exists),
//! and the figures of a whole referral against a hand-computed fixture, in the API's JSON
//! (checked against its document) and its CSV.

use referloop::domain::state::Persisted;
use referloop::store::Backend;
use serde_json::{json, Value};

use crate::api_document::checked;
use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::rewards::{checkout_event, deal_of_the_friend, invited_friend};

/// The referrer is rewarded in euros (with a rate), the friend in pounds (without one).
const PRICING: &str = r#"
[pricing]
currency = "USD"
[pricing.exchange_rates]
EUR = "1.10"

[rewards.referrer]
amount = 1000
currency = "eur"

[rewards.friend]
amount = 500
currency = "gbp"
"#;

async fn start(backend: Backend) -> (Lifecycle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("referloop.toml");
    std::fs::write(&file, PRICING).expect("config file");
    let path = file.to_string_lossy().to_string();
    let lc = Lifecycle::start(backend, move |env| set_env(env, "REFERLOOP_CONFIG", &path)).await;
    (lc, dir)
}

async fn wamid_of(lc: &Lifecycle, purpose: &str) -> String {
    lc.app
        .store
        .list_messages(50)
        .await
        .expect("messages")
        .into_iter()
        .find(|m| m.purpose.as_str() == purpose)
        .and_then(|m| m.wamid)
        .unwrap_or_else(|| panic!("a sent {purpose} message"))
}

/// `GET path` with the API token, checked against the API's document.
async fn get(lc: &Lifecycle, path: &str) -> (u16, String) {
    checked(lc.app.client.get(lc.app.url(path)).bearer_auth(API_TOKEN)).await
}

async fn economics(lc: &Lifecycle) -> Value {
    let (status, body) = get(lc, "/api/v1/economics?days=30").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn cohort<'a>(report: &'a Value, trigger: &str) -> &'a Value {
    report["cohorts"]
        .as_array()
        .and_then(|cohorts| cohorts.iter().find(|c| c["trigger"] == trigger))
        .unwrap_or_else(|| panic!("a {trigger} cohort in {report}"))
}

fn close(actual: &Value, expected: f64) -> bool {
    actual.as_f64().is_some_and(|a| (a - expected).abs() < 1e-9)
}

async fn delivered_messages_are_priced_once_by_market_and_category(backend: Backend) {
    let (lc, _dir) = start(backend).await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    let invite = wamid_of(&lc, "invite").await;
    let flow = wamid_of(&lc, "flow").await;
    let friend = wamid_of(&lc, "friend_invite").await;
    // The invite: `sent` carries the pricing but bills nothing; `delivered` bills (GB
    // marketing, 0.0529 in the shipped card); a redelivered `delivered` and the `read`
    // that also carries the pricing bill nothing more.
    for status in ["sent", "delivered", "delivered", "read"] {
        assert_eq!(
            lc.status_priced(&invite, status, true, "regular", "marketing").await,
            200
        );
    }
    // The Flow, a reply inside the window the tap opened: free.
    assert_eq!(
        lc.status_priced(&flow, "delivered", false, "free_customer_service", "service")
            .await,
        200
    );
    // A category the card has no GB price for: reported, not guessed.
    assert_eq!(
        lc.status_priced(&friend, "delivered", true, "regular", "authentication-international")
            .await,
        200
    );
    lc.settle().await;
    let report = economics(&lc).await;
    let nps = cohort(&report, "nps");
    assert_eq!(nps["messages"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(nps["messages"][0]["key"], "marketing");
    assert_eq!(nps["messages"][0]["count"], 1, "charged once: {nps}");
    assert!(close(&nps["messages"][0]["amount"], 0.0529), "{nps}");
    assert!(close(&nps["message_cost"], 0.0529));
    assert_eq!(nps["free_messages"], 1);
    assert_eq!(nps["unpriced_messages"], 1);
    assert_eq!(
        report["uncounted"],
        json!([{"what": "message", "key": "GB:authentication-international", "count": 1, "amount": 0.0}])
    );
    assert_eq!(report["currency"], "USD");
    assert!(nps["cost_per_acquisition"].is_null(), "no conversion yet");
    lc.shutdown().await;
}

/// One whole referral, computed by hand:
/// - the invite and the friend's invite delivered as GB marketing: 2 × 0.0529 = 0.1058;
/// - the referrer's reward, 10.00 EUR at 1.10: 11.00; the friend's, 5.00 GBP: no rate, so
///   uncounted (and said);
/// - the purchase, 150.00 EUR through the API: 165.00;
/// - cost 11.1058 for one conversion; return 165 / 11.1058.
async fn a_whole_referral_against_a_hand_computed_fixture(backend: Backend) {
    let (lc, _dir) = start(backend).await;
    invited_friend(&lc).await;
    for purpose in ["invite", "friend_invite"] {
        let wamid = wamid_of(&lc, purpose).await;
        assert_eq!(
            lc.status_priced(&wamid, "read", true, "regular", "marketing").await,
            200
        );
    }
    let (status, answer) = lc
        .api_conversion(
            json!({"external_id": "order-7", "friend_phone": FRIEND_PHONE, "amount": 15000, "currency": "eur"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    lc.settle().await;
    let report = economics(&lc).await;
    let nps = cohort(&report, "nps");
    assert!(close(&nps["message_cost"], 0.1058), "{nps}");
    assert_eq!(
        nps["rewards"],
        json!([{"key": "referrer", "count": 1, "amount": 11.0}]),
        "the friend's reward has no rate: {nps}"
    );
    assert!(close(&nps["reward_cost"], 11.0));
    assert!(close(&nps["cost"], 11.1058));
    assert_eq!(
        nps["revenue_by_source"],
        json!([{"key": "api", "count": 1, "amount": 165.0}])
    );
    assert!(close(&nps["revenue"], 165.0));
    assert_eq!(nps["conversions"], 1);
    assert!(close(&nps["cost_per_acquisition"], 11.1058));
    assert!(close(&nps["return_on_cost"], 165.0 / 11.1058));
    assert_eq!(report["total"]["trigger"], "all");
    assert!(close(&report["total"]["cost"], 11.1058));
    assert_eq!(
        report["uncounted"],
        json!([{"what": "money", "key": "GBP", "count": 1, "amount": 5.0}])
    );
    let assumptions = report["assumptions"].as_array().map(Vec::len).unwrap_or(0);
    assert!(assumptions >= 5, "the assumptions are stated: {report}");
    // The CSV: one row for the cohort and one for the total.
    let (status, csv) = get(&lc, "/api/v1/export/economics.csv?days=30").await;
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("trigger,currency,conversions,billable_messages"),
        "{csv}"
    );
    assert_eq!(
        lines[1], "nps,USD,1,2,0,0,0.1058,11.0000,0.0000,0.0000,11.0000,11.1058,165.0000,11.1058,14.8571",
        "{csv}"
    );
    assert!(lines[2].starts_with("all,USD,1,2,"), "{csv}");
    lc.shutdown().await;
}

async fn revenue_is_counted_by_source(backend: Backend) {
    // Stripe: the session's amount (minor units) in its currency.
    let (lc, _dir) = start(backend).await;
    let (referral_id, _) = invited_friend(&lc).await;
    let event = checkout_event(
        "evt_rev",
        "cs_rev",
        json!({"client_reference_id": format!("referral:{referral_id}"), "amount_total": 4900, "currency": "usd"}),
    );
    assert_eq!(lc.stripe_event(event.clone()).await, 200);
    // A redelivered event counts nothing more.
    assert_eq!(lc.stripe_event(event).await, 200);
    lc.settle().await;
    let report = economics(&lc).await;
    assert_eq!(
        cohort(&report, "nps")["revenue_by_source"],
        json!([{"key": "stripe", "count": 1, "amount": 49.0}])
    );
    // Refunded in full (twice, as two events): the revenue is taken back once.
    for id in ["evt_refund_1", "evt_refund_2"] {
        let refund = json!({"id": id, "object": "event", "type": "charge.refunded", "api_version": "2025-09-30.clover",
                            "data": {"object": {"id": "ch_rev", "object": "charge", "payment_intent": "pi_cs_rev",
                                                "amount_refunded": 4900, "refunded": true}}});
        assert_eq!(lc.stripe_event(refund).await, 200);
    }
    lc.settle().await;
    let report = economics(&lc).await;
    let nps = cohort(&report, "nps");
    assert_eq!(
        nps["revenue_by_source"],
        json!([{"key": "refunded", "count": 1, "amount": -49.0}, {"key": "stripe", "count": 1, "amount": 49.0}]),
        "{nps}"
    );
    assert!(close(&nps["revenue"], 0.0));
    lc.shutdown().await;

    // HubSpot: the deal's amount in major units; with no currency, the reporting one.
    let (lc, _dir) = start(backend).await;
    deal_of_the_friend(&lc, 556).await;
    invited_friend(&lc).await;
    let deal = json!({"portalId": 1, "dealId": 556, "isDeleted": false,
                      "properties": {"hs_is_closed_won": {"value": "true"}, "amount": {"value": "1250.50"}}});
    assert_eq!(lc.trigger("trigger=conversion", deal).await, 200);
    lc.settle().await;
    let report = economics(&lc).await;
    assert_eq!(
        cohort(&report, "nps")["revenue_by_source"],
        json!([{"key": "hubspot", "count": 1, "amount": 1250.5}])
    );
    lc.shutdown().await;
}

async fn a_bad_period_is_refused(backend: Backend) {
    let (lc, _dir) = start(backend).await;
    let (status, body) = get(&lc, "/api/v1/economics?days=0").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&lc, "/api/v1/economics?trigger=DROP%20TABLE").await;
    assert_eq!(status, 400, "{body}");
    lc.shutdown().await;
}

both_backends!(
    delivered_messages_are_priced_once_by_market_and_category,
    a_whole_referral_against_a_hand_computed_fixture,
    revenue_is_counted_by_source,
    a_bad_period_is_refused,
);
