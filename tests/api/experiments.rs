//! Experiments on both stores: a variant's reward is the one promised and issued, its
//! assignment is recorded with the invite and written to HubSpot, a redelivered trigger
//! or a second invite of the contact never changes it, a variant that names a template
//! Meta has not approved is refused (its contacts get the control) until Meta approves
//! it, and the results say "not yet conclusive" before the planned sample. (Kills and
//! three worker replicas: `kills.rs` runs its referrals inside an experiment.)

use referloop::domain::experiment::assign;
use referloop::domain::reward::Beneficiary;
use referloop::domain::state::Persisted;
use referloop::store::Backend;
use serde_json::{json, Value};
use std::time::Duration;

use crate::api_document::checked;
use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;
use crate::rewards::invited_friend;

const ANA: &str = "90001";

/// The control (weight 1) and `bigger` (weight 3): the referrer's reward doubled, and
/// (with `template`) another invite template.
fn experiment(template: Option<&str>) -> String {
    let template = template.map_or(String::new(), |t| format!("templates.invite = \"{t}\"\n"));
    format!(
        r#"
[[experiments]]
name = "bigger-reward"
starts = "2020-01-01"
ends = "2099-12-31"
baseline_rate = 0.10
minimum_effect = 0.05

[[experiments.variants]]
name = "control"
weight = 1

[[experiments.variants]]
name = "bigger"
weight = 3
rewards.referrer.amount = 2000
rewards.referrer.description = "a $20 thank-you credit"
{template}"#
    )
}

async fn start(backend: Backend, config: String) -> (Lifecycle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("referloop.toml");
    std::fs::write(&file, config).expect("config file");
    let path = file.to_string_lossy().to_string();
    let lc = Lifecycle::start(backend, move |env| set_env(env, "REFERLOOP_CONFIG", &path)).await;
    (lc, dir)
}

fn variant_of(contact: &str) -> &'static str {
    match assign("bigger-reward", contact, &[1, 3]) {
        Some(0) => "control",
        _ => "bigger",
    }
}

async fn results(lc: &Lifecycle) -> Value {
    let request = lc
        .app
        .client
        .get(lc.app.url("/api/v1/experiments/bigger-reward"))
        .bearer_auth(API_TOKEN);
    let (status, body) = checked(request).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn arm<'a>(results: &'a Value, variant: &str) -> &'a Value {
    results["variants"]
        .as_array()
        .and_then(|v| v.iter().find(|a| a["name"] == variant))
        .unwrap_or_else(|| panic!("variant {variant} in {results}"))
}

async fn the_variant_is_recorded_written_to_hubspot_and_rewarded(backend: Backend) {
    let (lc, _dir) = start(backend, experiment(None)).await;
    let variant = variant_of(ANA);
    invited_friend(&lc).await;
    let invite = lc
        .app
        .store
        .invite(lc.invite_id().await)
        .await
        .expect("read")
        .expect("the invite");
    assert_eq!(
        (invite.experiment.as_deref(), invite.variant.as_deref()),
        (Some("bigger-reward"), Some(variant))
    );
    // The variant goes on the contact with the code.
    let patches: Vec<Value> = lc
        .hubspot_calls()
        .await
        .into_iter()
        .filter(|(method, path, _)| method == "PATCH" && path.ends_with(&format!("/contacts/{ANA}")))
        .map(|(_, _, body)| body)
        .collect();
    assert!(
        patches
            .iter()
            .any(|p: &Value| p["properties"]["referral_experiment_variant"] == format!("bigger-reward:{variant}")),
        "{patches:?}"
    );
    let (status, answer) = lc
        .api_conversion(json!({"external_id": "order-x1", "friend_phone": FRIEND_PHONE, "amount": 5000}))
        .await;
    assert_eq!(status, 201, "{answer}");
    lc.settle().await;
    let rewards = lc.app.store.list_rewards(10).await.expect("rewards");
    let referrer = rewards
        .iter()
        .find(|r| r.beneficiary == Beneficiary::Referrer)
        .expect("the referrer's reward");
    let promised = if variant == "bigger" { 2000 } else { 1000 };
    assert_eq!(referrer.amount, promised, "{variant}");
    assert_eq!(referrer.state.as_str(), "issued");
    let r = results(&lc).await;
    assert_eq!(r["status"], "running");
    assert_eq!(r["planned_sample_size"], 686, "10 % to 15 % at 80 % power");
    let mine = arm(&r, variant);
    assert_eq!(
        (mine["invited"].as_i64(), mine["converted"].as_i64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(mine["conversion_rate"], 1.0);
    let other = arm(&r, if variant == "bigger" { "control" } else { "bigger" });
    assert_eq!(other["invited"], 0);
    assert_eq!(arm(&r, "bigger")["verdict"], "not yet conclusive");
    assert_eq!(arm(&r, "control")["verdict"], "control");
    assert!(arm(&r, "bigger")["changes"]
        .as_array()
        .is_some_and(|c| c.contains(&json!("rewards.referrer.amount = 2000"))));
    // Its cost per customer counts its own reward (both sides at 10 or 20 USD).
    let cost = mine["cost_per_acquisition"].as_f64().unwrap_or_default();
    assert!((cost - (promised as f64 / 100.0 + 10.0)).abs() < 1e-9, "{mine}");
    lc.shutdown().await;
}

async fn a_contacts_variant_never_changes(backend: Backend) {
    let config = format!(
        "[programme]\ninvite_cooldown_days = 0\nmax_invites_per_contact = 5\n{}",
        experiment(None)
    );
    let (lc, _dir) = start(backend, config).await;
    // Twenty contacts, each triggered twice (a redelivery and a later trigger): every
    // invite of a contact carries the same variant, the one its hash names.
    for n in 0..20 {
        let contact = format!("{}", 93_000 + n);
        let phone = format!("+4479111{:05}", 70_000 + n);
        for date in ["1767225600000", "1767225600000", "1767312000000"] {
            assert_eq!(lc.nps(&contact, &phone, "Bo", "10", date).await, 200);
        }
    }
    lc.settle().await;
    let invites = lc.app.store.list_invites(500).await.expect("invites");
    let given: Vec<_> = invites.iter().filter(|i| i.variant.is_some()).collect();
    assert!(
        given.len() >= 40,
        "each contact invited twice at least: {}",
        given.len()
    );
    for invite in invites.iter().filter(|i| i.state.as_str() != "ineligible") {
        assert_eq!(
            invite.variant.as_deref(),
            Some(variant_of(&invite.contact_id)),
            "contact {}",
            invite.contact_id
        );
    }
    lc.shutdown().await;
}

async fn a_variant_with_an_unapproved_template_is_refused_until_meta_approves_it(backend: Backend) {
    let (lc, _dir) = start(backend, experiment(Some("tmpl_referral_invite_b"))).await;
    assert_eq!(lc.nps(ANA, REFERRER_PHONE, "Ana", "10", "1767225600000").await, 200);
    lc.settle().await;
    let invite = lc
        .app
        .store
        .invite(lc.invite_id().await)
        .await
        .expect("read")
        .expect("the invite");
    assert_eq!(invite.variant, None, "refused: the contact gets the control");
    assert_eq!(lc.sent_of("tmpl_referral_invite").await.len(), 1);
    let r = results(&lc).await;
    assert_eq!(r["status"], "refused");
    assert!(
        r["refused_because"]
            .as_str()
            .is_some_and(|why| why.contains("tmpl_referral_invite_b (en_US) has no approval recorded")),
        "{r}"
    );
    // Meta approves it: the experiment starts (at the next check, within a minute).
    let approved = lc
        .whatsapp(
            "message_template_status_update",
            json!({"event": "APPROVED", "message_template_id": 99, "message_template_name": "tmpl_referral_invite_b",
                   "message_template_language": "en_US", "reason": "NONE"}),
        )
        .await;
    assert_eq!(approved, 200);
    lc.settle().await;
    lc.app.store.clock().advance(Duration::from_secs(61));
    // A contact the hash puts in `bigger`.
    let contact = (94_000..95_000)
        .map(|n| n.to_string())
        .find(|c| variant_of(c) == "bigger")
        .expect("a contact in bigger");
    assert_eq!(
        lc.nps(&contact, "+447911180000", "Cy", "10", "1767225600000").await,
        200
    );
    lc.settle().await;
    assert_eq!(
        lc.sent_of("tmpl_referral_invite_b").await.len(),
        1,
        "the variant's template"
    );
    assert_eq!(results(&lc).await["status"], "running");
    lc.shutdown().await;
}

both_backends!(
    the_variant_is_recorded_written_to_hubspot_and_rewarded,
    a_contacts_variant_never_changes,
    a_variant_with_an_unapproved_template_is_refused_until_meta_approves_it,
);
