//! The admin API on both stores: the funnel against a seed with a trigger and a referral
//! in every state, cursor pagination, a timeline, dead work retried by an operator and
//! refused to a viewer, the CSV export, and the tokens' roles.

use referloop::domain::economics::Measure;
use referloop::domain::eligibility::{IneligibleCode, IneligibleReason, TriggerKind};
use referloop::domain::nomination::ReferralReason;
use referloop::domain::referral::ReferralState;
use referloop::domain::reward::{Beneficiary, RewardKind, RewardState};
use referloop::domain::state::{InviteState, Persisted};
use referloop::store::{
    Backend, Cohort, EconomicsEntry, NewInvite, NewReferral, NewReward, Queue, QueueState, ReferralInsert, Store,
};
use serde_json::Value;

use crate::api_document::checked;
use crate::both_backends;
use crate::helpers::*;

pub const OPERATOR: &str = "operator-token";
pub const VIEWER: &str = "viewer-token";

pub fn digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

async fn start(backend: Backend) -> TestApp {
    let tokens = format!("{},viewer:{}", digest(OPERATOR), digest(VIEWER));
    TestApp::spawn_with(backend, |env| {
        set_env(env, "REFERLOOP_API__TOKENS", &tokens);
        set_env(env, "REFERLOOP_WORKER__ENABLED", "false");
    })
    .await
}

fn invite(n: usize, state: InviteState) -> NewInvite {
    NewInvite {
        trigger_key: format!("seed:{n}"),
        contact_id: format!("{}", 92_000 + n),
        trigger: match n % 4 {
            0 | 2 => TriggerKind::Nps,
            1 => TriggerKind::Milestone(None),
            _ => TriggerKind::Milestone(Some("renewal".into())),
        },
        phone: Some(e164(&format!("+4479111{:05}", 60_000 + n))),
        first_name: format!("Customer {n}"),
        language: "en_US".into(),
        referral_code: Some(format!("SEED{n:03}")),
        state,
        reason: (state == InviteState::Ineligible).then(|| IneligibleReason {
            code: IneligibleCode::NotAPromoter,
            detail: Some("Detractor".into()),
        }),
    }
}

/// A trigger in every invite state and a referral in every referral state; the converted
/// referral's friend reward is issued. Returns the referral ids, oldest first.
pub async fn seed(store: &Store) -> Vec<i64> {
    let mut tx = store.begin(None).await.expect("begin");
    let mut n = 0;
    for state in [
        InviteState::Ineligible,
        InviteState::Ineligible,
        InviteState::Invited,
        InviteState::FlowSent,
    ] {
        tx.insert_invite(&invite(n, state)).await.expect("invite");
        n += 1;
    }
    let mut referrals = Vec::new();
    for state in ReferralState::ALL {
        let row = tx
            .insert_invite(&invite(n, InviteState::Nominated))
            .await
            .expect("invite");
        let referral = NewReferral {
            invite_id: row.id,
            flow_token: format!("token-{n}"),
            referrer_contact_id: row.contact_id.clone(),
            referrer_phone: row.phone.clone(),
            referrer_name: row.first_name.clone(),
            referral_code: format!("SEED{n:03}"),
            friend_phone: Some(e164(&format!("+4479111{:05}", 70_000 + n))),
            friend_name: format!("=Friend {n}"),
            personal_message: None,
            consent: true,
            language: "en_US".into(),
        };
        let ReferralInsert::Created(id) = tx.insert_referral(&referral).await.expect("referral") else {
            panic!("referral {n} not created");
        };
        if *state != ReferralState::Nominated {
            let reason = (*state == ReferralState::Refused).then_some(ReferralReason::AlreadyCustomer);
            tx.move_referral(id, ReferralState::Nominated, *state, reason)
                .await
                .expect("move");
        }
        if *state == ReferralState::Converted {
            let reward = NewReward {
                beneficiary: Beneficiary::Friend,
                contact_id: None,
                phone: referral.friend_phone.clone(),
                first_name: "Friend".into(),
                language: "en_US".into(),
                kind: RewardKind::StaticCode,
                state: RewardState::Issued,
                amount: 1000,
                currency: "usd".into(),
                stripe_customer: None,
                available_at: 0,
                milestone: None,
            };
            tx.insert_reward(id, &reward).await.expect("reward");
            // What it cost and earned besides: two marketing templates delivered in GB
            // (0.0529 each) and a purchase of 49.00 through the API.
            for (measure, detail, micros) in [
                (Measure::MessageCost, "marketing", 52_900),
                (Measure::MessageCost, "marketing", 52_900),
                (Measure::Revenue, "api", 49_000_000),
            ] {
                let entry = EconomicsEntry {
                    measure,
                    detail: detail.into(),
                    currency: "USD".into(),
                    micros,
                };
                tx.tally_economics(Cohort::Referral(id), entry);
            }
        }
        referrals.push(id);
        n += 1;
    }
    tx.commit("").await.expect("commit");
    referrals
}

/// An experiment's arms for the browser test: 30 invites in each of `control` and
/// `bigger` (of the experiment `browser-offer`), of which 3 and 6 converted.
pub async fn seed_experiment(store: &Store) {
    let mut tx = store.begin(None).await.expect("begin");
    for n in 0..60 {
        let variant = if n < 30 { "control" } else { "bigger" };
        let mut row = tx
            .insert_invite(&NewInvite {
                trigger_key: format!("experiment:{n}"),
                contact_id: format!("{}", 96_000 + n),
                ..invite(100 + n, InviteState::Invited)
            })
            .await
            .expect("invite");
        tx.assign_variant(&mut row, "browser-offer", variant)
            .await
            .expect("variant");
        let converts = n < 3 || (30..36).contains(&n);
        if converts {
            let referral = NewReferral {
                invite_id: row.id,
                flow_token: format!("experiment-token-{n}"),
                referrer_contact_id: row.contact_id.clone(),
                referrer_phone: row.phone.clone(),
                referrer_name: row.first_name.clone(),
                referral_code: format!("EXP{n:03}"),
                friend_phone: Some(e164(&format!("+4479112{:05}", n))),
                friend_name: format!("Friend {n}"),
                personal_message: None,
                consent: true,
                language: "en_US".into(),
            };
            let ReferralInsert::Created(id) = tx.insert_referral(&referral).await.expect("referral") else {
                panic!("referral {n} not created");
            };
            tx.move_referral(id, ReferralState::Nominated, ReferralState::Converted, None)
                .await
                .expect("move");
        }
    }
    tx.commit("").await.expect("commit");
}

/// A job of an unknown kind, claimed and ended dead ("unknown kind"); returns its id.
pub async fn dead_job(app: &TestApp, key: &str) -> i64 {
    enqueue_unknown_job(app, "no.such.kind", key, 1, 0).await;
    let claimed = app
        .store
        .claim(Queue::Jobs, "test", 60_000)
        .await
        .expect("claim")
        .expect("the job");
    app.store
        .fail(Queue::Jobs, claimed.id, "test", "unknown kind", None)
        .await
        .expect("dead");
    claimed.id
}

/// A GET whose answer is checked against the API's document.
async fn get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = app.client.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    checked(request).await
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let (status, body) = get(app, path, Some(VIEWER)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// A POST whose answer is checked against the API's document.
async fn post(app: &TestApp, path: &str, token: Option<&str>) -> u16 {
    let mut request = app.client.post(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    checked(request).await.0
}

async fn the_funnel_counts_every_step_of_the_seed(backend: Backend) {
    let app = start(backend).await;
    seed(&app.store).await;
    let funnel = get_json(&app, "/api/v1/funnel?days=7").await;
    let counts: Vec<(String, i64)> = funnel["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or("").to_string(),
                s["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let expected = [
        ("triggers", 12),
        ("eligible", 10),
        ("invited", 10),
        ("flow_sent", 9),
        ("nominated", 8),
        ("friend_reached", 2),
        ("converted", 1),
        ("rewarded", 1),
    ];
    let expected: Vec<(String, i64)> = expected.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    assert_eq!(counts, expected);
    assert_eq!(funnel["steps"][1]["rate"].as_f64(), Some(10.0 / 12.0));
    let days = funnel["days"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        days.iter().map(|d| d["triggers"].as_i64().unwrap_or(0)).sum::<i64>(),
        12
    );
    assert_eq!(
        days.iter().map(|d| d["converted"].as_i64().unwrap_or(0)).sum::<i64>(),
        1
    );

    // By trigger kind (every milestone together) and by milestone name.
    let nps = get_json(&app, "/api/v1/funnel?days=7&trigger=nps").await;
    assert_eq!(nps["steps"][0]["count"], 6);
    let milestones = get_json(&app, "/api/v1/funnel?days=7&trigger=milestone").await;
    assert_eq!(milestones["steps"][0]["count"], 6);
    let renewals = get_json(&app, "/api/v1/funnel?days=7&trigger=milestone:renewal").await;
    assert_eq!(renewals["steps"][0]["count"], 3);
    // A period before the seed is empty; bad periods are refused.
    let old = get_json(&app, "/api/v1/funnel?from=1970-01-01&days=1").await;
    assert_eq!(old["steps"][0]["count"], 0);
    assert_eq!(get(&app, "/api/v1/funnel?days=0", Some(VIEWER)).await.0, 400);
    assert_eq!(get(&app, "/api/v1/funnel?days=x", Some(VIEWER)).await.0, 400);
    app.shutdown().await;
}

async fn referrals_come_in_pages_with_masked_phones(backend: Backend) {
    let app = start(backend).await;
    let ids = seed(&app.store).await;
    let mut seen = Vec::new();
    let mut path = "/api/v1/referrals?limit=3".to_string();
    loop {
        let page = get_json(&app, &path).await;
        let items = page["referrals"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 3);
        for item in &items {
            let phone = item["friend_phone"].as_str().unwrap_or("");
            assert!(phone.contains('*') && !phone.contains("70"), "masked: {phone}");
            seen.push(item["id"].as_i64().unwrap_or(0));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/referrals?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every referral once, newest first");
    let converted = get_json(&app, "/api/v1/referrals?state=converted").await;
    assert_eq!(converted["referrals"].as_array().map(Vec::len), Some(1));
    assert_eq!(get(&app, "/api/v1/referrals?state=bogus", Some(VIEWER)).await.0, 400);
    assert_eq!(get(&app, "/api/v1/referrals?cursor=abc", Some(VIEWER)).await.0, 400);
    app.shutdown().await;
}

async fn a_referral_has_a_timeline(backend: Backend) {
    let app = start(backend).await;
    let ids = seed(&app.store).await;
    let converted = ids[ReferralState::ALL
        .iter()
        .position(|s| *s == ReferralState::Converted)
        .unwrap_or(0)];
    let answer = get_json(&app, &format!("/api/v1/referrals/{converted}/timeline")).await;
    let kinds: Vec<&str> = answer["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"invite"), "{answer}");
    // The first entry is the trigger as it was then, not the converted referral of now.
    let first = answer["timeline"][0]["what"].as_str().unwrap_or_default();
    assert!(first.starts_with("trigger ") && !first.contains("convert"), "{first}");
    assert!(
        kinds.contains(&"referral") && kinds.contains(&"reward") && kinds.contains(&"transition"),
        "{kinds:?}"
    );
    let moved = answer["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["what"] == "referral moved from nominated to converted");
    assert!(moved, "{answer}");
    let times: Vec<i64> = answer["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["at"].as_i64())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order");
    assert_eq!(answer["referral"]["state"], "converted");
    assert_eq!(
        get(&app, "/api/v1/referrals/999999/timeline", Some(VIEWER)).await.0,
        404
    );
    app.shutdown().await;
}

async fn dead_work_is_retried_by_an_operator_only(backend: Backend) {
    let app = start(backend).await;
    let dead_id = dead_job(&app, "dead-1").await;
    let dead = get_json(&app, "/api/v1/dead").await;
    assert_eq!(dead["jobs"][0]["last_error"], "unknown kind", "{dead}");
    let retry = format!("/api/v1/dead/jobs/{dead_id}/retry");
    assert_eq!(post(&app, &retry, None).await, 401, "no token");
    assert_eq!(post(&app, &retry, Some("wrong")).await, 401, "unknown token");
    assert_eq!(post(&app, &retry, Some(VIEWER)).await, 403, "a viewer may not act");
    assert_eq!(post(&app, &retry, Some(OPERATOR)).await, 200);
    assert_eq!(post(&app, &retry, Some(OPERATOR)).await, 409, "no longer dead");
    assert_eq!(post(&app, "/api/v1/dead/nope/1/retry", Some(OPERATOR)).await, 400);
    let jobs = app.store.list(Queue::Jobs, None, 10).await.expect("jobs");
    assert_eq!(jobs[0].state, QueueState::Queued);
    let actions = app.store.admin_actions(10).await.expect("actions");
    assert_eq!(actions.len(), 1, "one action recorded");
    assert_eq!(
        (actions[0].actor.as_str(), actions[0].action.as_str()),
        ("api:operator", "retry")
    );
    app.shutdown().await;
}

async fn reads_need_a_token_and_exports_are_csv(backend: Backend) {
    let app = start(backend).await;
    seed(&app.store).await;
    for path in [
        "/api/v1/funnel",
        "/api/v1/referrals",
        "/api/v1/rewards",
        "/api/v1/conversions",
        "/api/v1/dead",
        "/api/v1/dropouts",
        "/api/v1/rewards/summary",
        "/api/v1/referrers/top",
        "/api/v1/export/referrals.csv",
        "/api/v1/export/rewards.csv",
    ] {
        assert_eq!(get(&app, path, None).await.0, 401, "{path} without a token");
        assert_eq!(get(&app, path, Some(VIEWER)).await.0, 200, "{path} as a viewer");
    }
    let rewards = get_json(&app, "/api/v1/rewards").await;
    assert_eq!(rewards["rewards"][0]["state"], "issued");
    assert!(rewards["rewards"][0]["phone"].as_str().is_some_and(|p| p.contains('*')));
    let response = app
        .client
        .get(app.url("/api/v1/export/referrals.csv?days=7"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("request");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = response.text().await.expect("body");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + ReferralState::ALL.len(), "{csv}");
    assert!(lines[0].starts_with("id,state,reason,"));
    assert!(lines[1].contains(",'=Friend "), "a leading = is defused: {}", lines[1]);
    assert!(!csv.contains("70004"), "phones masked");
    let (status, rewards_csv) = get(&app, "/api/v1/export/rewards.csv?days=7", Some(VIEWER)).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = rewards_csv.lines().collect();
    assert_eq!(lines.len(), 2, "{rewards_csv}");
    assert!(lines[0].starts_with("id,referral_id,beneficiary,"));
    assert!(
        lines[1].contains(",friend,") && lines[1].contains(",issued,1000,usd,"),
        "{}",
        lines[1]
    );
    app.shutdown().await;
}

async fn dropouts_rewards_and_referrers_are_summed(backend: Backend) {
    let app = start(backend).await;
    seed(&app.store).await;
    let dropouts = get_json(&app, "/api/v1/dropouts?days=7").await;
    assert_eq!(
        dropouts["dropouts"]["ineligible"],
        serde_json::json!([{"reason": "not_a_promoter: Detractor", "count": 2}])
    );
    assert_eq!(
        dropouts["dropouts"]["refused"],
        serde_json::json!([{"reason": "already_customer", "count": 1}])
    );
    let summary = get_json(&app, "/api/v1/rewards/summary?days=7").await;
    assert_eq!(
        summary["totals"],
        serde_json::json!([{"state": "issued", "kind": "static_code", "currency": "usd", "count": 1, "amount": 1000}])
    );
    assert_eq!(summary["code_pool_free"], 0);
    let top = get_json(&app, "/api/v1/referrers/top").await;
    let referrers = top["referrers"].as_array().cloned().unwrap_or_default();
    assert_eq!(referrers.len(), 1, "only referrers with a converted friend: {top}");
    assert_eq!(
        (referrers[0]["converted"].as_i64(), referrers[0]["nominated"].as_i64()),
        (Some(1), Some(1))
    );
    assert!(referrers[0]["name"].as_str().is_some_and(|n| n.starts_with("Customer")));
    app.shutdown().await;
}

/// The OpenAPI document is public, well formed, and lists every route the API answers:
/// each documented operation exists (not 404 or 405), and the routes this test knows of
/// are all documented.
async fn the_openapi_document_lists_every_route(backend: Backend) {
    let app = start(backend).await;
    let (status, body) = get(&app, "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let mut operation_ids = std::collections::BTreeSet::new();
    let mut documented = Vec::new();
    for (path, item) in &paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            assert!(["get", "post"].contains(&method.as_str()), "{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(
                !id.is_empty() && operation_ids.insert(id),
                "unique operationId at {method} {path}"
            );
            let responses = op["responses"].as_object().cloned().unwrap_or_default();
            assert!(!responses.is_empty(), "{method} {path} has responses");
            for (code, response) in &responses {
                assert!(
                    code.parse::<u16>().is_ok() && response["description"].is_string(),
                    "{path} {code}"
                );
            }
            // Every templated segment is a required path parameter, and only those.
            let templated: Vec<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .inspect(|p| assert_eq!(p["required"], true))
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(templated, declared, "{method} {path}");
            documented.push((method.clone(), path.clone()));
        }
    }
    for (method, path) in &documented {
        let concrete = path.replace("{queue}", "jobs").replace("{id}", "1");
        let request = match method.as_str() {
            "post" => app.client.post(app.url(&concrete)),
            _ => app.client.get(app.url(&concrete)),
        };
        let status = request.send().await.expect("request").status().as_u16();
        assert!(status != 404 && status != 405, "{method} {path} is routed: {status}");
    }
    for expected in [
        ("post", "/api/v1/conversions"),
        ("post", "/api/v1/referrals/{id}/void"),
        ("get", "/api/v1/funnel"),
        ("get", "/api/v1/referrals"),
        ("get", "/api/v1/referrals/{id}/timeline"),
        ("get", "/api/v1/rewards"),
        ("get", "/api/v1/conversions"),
        ("get", "/api/v1/dead"),
        ("post", "/api/v1/dead/{queue}/{id}/retry"),
        ("get", "/api/v1/export/referrals.csv"),
        ("get", "/api/v1/export/rewards.csv"),
    ] {
        assert!(
            documented.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} documented"
        );
    }
    app.shutdown().await;
}

/// The router enforces the table's roles: in a copy of the table with the funnel raised
/// to operators, a viewer is refused it and an operator is not; with the published table
/// the viewer reads it.
async fn the_routers_roles_come_from_the_table(backend: Backend) {
    use referloop::domain::access::Role;
    use referloop::http::openapi::{Operation, OPERATIONS};
    let mut table = OPERATIONS.to_vec();
    let funnel = table
        .iter_mut()
        .find(|op| op.id == "funnel")
        .expect("the funnel operation");
    assert_eq!(funnel.role, Some(Role::Viewer), "published: viewers read the funnel");
    funnel.role = Some(Role::Operator);
    let table: &'static [Operation] = Box::leak(table.into_boxed_slice());
    let tokens = format!("{},viewer:{}", digest(OPERATOR), digest(VIEWER));
    let app = TestApp::spawn_serving(
        TestDatabase::new(backend).await,
        |env| {
            set_env(env, "REFERLOOP_API__TOKENS", &tokens);
            set_env(env, "REFERLOOP_WORKER__ENABLED", "false");
        },
        table,
    )
    .await;
    let status = |token: &'static str| {
        let request = app.client.get(app.url("/api/v1/funnel?days=7")).bearer_auth(token);
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(status(VIEWER).await, 403, "the changed role is enforced");
    assert_eq!(status(OPERATOR).await, 200);
    app.shutdown().await;
    let app = start(backend).await;
    assert_eq!(get(&app, "/api/v1/funnel?days=7", Some(VIEWER)).await.0, 200);
    app.shutdown().await;
}

both_backends!(
    the_routers_roles_come_from_the_table,
    the_openapi_document_lists_every_route,
    dropouts_rewards_and_referrers_are_summed,
    the_funnel_counts_every_step_of_the_seed,
    referrals_come_in_pages_with_masked_phones,
    a_referral_has_a_timeline,
    dead_work_is_retried_by_an_operator_only,
    reads_need_a_token_and_exports_are_csv,
);
