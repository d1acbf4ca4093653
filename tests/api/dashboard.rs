//! The dashboard over HTTP, as a browser sends it: signing in, the funnel page against
//! the seed, a timeline, and the security of every action (CSRF token, role, session
//! fixation, throttled sign-in), on both stores.

use referloop::app::accounts::hash_password;
use referloop::domain::access::Role;
use referloop::domain::referral::ReferralState;
use referloop::domain::state::Persisted;
use referloop::store::{Backend, Queue, QueueState};

use crate::admin::{dead_job, seed};
use crate::both_backends;
use crate::helpers::*;

const PASSWORD: &str = "correct horse battery";

async fn start(backend: Backend) -> TestApp {
    let app = TestApp::spawn_with(backend, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let hash = hash_password(PASSWORD).expect("hash");
    for (name, role) in [("olga", Role::Operator), ("vera", Role::Viewer)] {
        app.store.upsert_admin_user(name, role, &hash).await.expect("user");
    }
    app
}

/// A browser that keeps its cookie and does not follow redirects (to see them).
struct Browser {
    client: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Browser { client, cookie: None }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", format!("referloop_session={cookie}")),
            None => request,
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(set) = headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let value = set
                .split(';')
                .next()
                .and_then(|pair| pair.split_once('='))
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            self.cookie = (!value.is_empty()).then_some(value);
        }
        Page {
            status,
            headers,
            body: response.text().await.unwrap_or_default(),
        }
    }

    async fn get(&mut self, app: &TestApp, path: &str) -> Page {
        let request = self.client.get(app.url(path));
        self.send(request).await
    }

    async fn post(&mut self, app: &TestApp, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.client.post(app.url(path)).form(form);
        self.send(request).await
    }

    async fn sign_in(&mut self, app: &TestApp, name: &str, password: &str) -> Page {
        self.post(app, "/admin/login", &[("name", name), ("password", password)])
            .await
    }

    /// The CSRF token of the signed-in session, as its pages carry it.
    async fn csrf(&mut self, app: &TestApp) -> String {
        let page = self.get(app, "/admin/operations").await;
        page.body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    }
}

async fn signing_in_shows_the_funnel_of_the_seed(backend: Backend) {
    let app = start(backend).await;
    let ids = seed(&app.store).await;
    let mut browser = Browser::new();
    let first = browser.get(&app, "/admin").await;
    assert_eq!(first.status, 303, "signed out: sent to sign in");
    assert_eq!(
        first.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("/admin/login")
    );
    assert_eq!(browser.sign_in(&app, "olga", "wrong password").await.status, 401);
    let signed_in = browser.sign_in(&app, "olga", PASSWORD).await;
    assert_eq!(signed_in.status, 303);
    let cookie = signed_in
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Secure"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let page = browser.get(&app, "/admin?days=7").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for (step, count) in [
        ("triggers", 12),
        ("eligible", 10),
        ("invited", 10),
        ("flow_sent", 9),
        ("nominated", 8),
        ("friend_reached", 2),
        ("converted", 1),
        ("rewarded", 1),
    ] {
        let cell = format!("data-step=\"{step}\">{count}<");
        assert!(page.body.contains(&cell), "{cell} on the funnel page");
    }
    assert!(page.body.contains("<svg"), "charts drawn as SVG");
    let renewals = browser.get(&app, "/admin?days=7&trigger=milestone%3Arenewal").await;
    assert!(renewals.body.contains("data-step=\"triggers\">3<"), "by milestone name");
    assert!(renewals.body.contains("<option value=\"milestone:renewal\" selected>"));
    let csp = page
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(
        page.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let converted = ids[ReferralState::ALL
        .iter()
        .position(|s| *s == ReferralState::Converted)
        .unwrap_or(0)];
    let timeline = browser.get(&app, &format!("/admin/referrals/{converted}")).await;
    assert_eq!(timeline.status, 200);
    assert!(timeline
        .body
        .contains("data-referral=\"state\" title=\"converted\">converted<"));
    assert!(!timeline.body.contains("+4479111"), "phones masked");
    let found = browser.get(&app, "/admin/referrals?q=SEED011").await;
    assert!(
        found.body.contains(&format!("/admin/referrals/{converted}")),
        "found by code"
    );
    // The list's filters: one state, a period (a referral nominated 40 days ago is left
    // out of the last 30 days), and a refusal of a state that does not exist.
    let id_of = |state: ReferralState| ids[ReferralState::ALL.iter().position(|s| *s == state).unwrap_or(0)];
    let link = |id: i64| format!("href=\"/admin/referrals/{id}\"");
    let old = id_of(ReferralState::Refused);
    age_referral(&app, old, 40).await;
    let converted_only = browser.get(&app, "/admin/referrals?state=converted&days=").await;
    assert_eq!(converted_only.status, 200, "{}", converted_only.body);
    assert!(converted_only.body.contains(&link(converted)));
    assert!(!converted_only.body.contains(&link(old)), "one state only");
    assert!(converted_only.body.contains("<option value=\"converted\" selected>"));
    let month = browser.get(&app, "/admin/referrals?state=&days=30").await;
    assert!(month.body.contains(&link(converted)));
    assert!(!month.body.contains(&link(old)), "nominated before the period");
    let all_time = browser.get(&app, "/admin/referrals").await;
    assert!(all_time.body.contains(&link(old)) && all_time.body.contains(&link(converted)));
    for (query, why) in [
        ("state=no_such_state", "no such state"),
        ("days=0", "between 1 and 366"),
    ] {
        let refused = browser.get(&app, &format!("/admin/referrals?{query}")).await;
        assert_eq!(refused.status, 422, "{query}");
        assert!(refused.body.contains(why), "{query}: {}", refused.body);
    }
    let style = browser.get(&app, "/admin/style.css").await;
    assert_eq!(style.status, 200);
    app.shutdown().await;
}

/// Moves a referral's nomination `days` into the past, as if it had been made then.
async fn age_referral(app: &TestApp, id: i64, days: i64) {
    let db = raw_database(app).await;
    sqlx::query("UPDATE referrals SET nominated_at = nominated_at - $1 WHERE id = $2")
        .bind(days * 86_400_000)
        .bind(id)
        .execute(&db)
        .await
        .expect("age the referral");
    db.close().await;
}

fn pairs<'a>(form: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    form.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn actions_need_the_csrf_token_and_an_operator(backend: Backend) {
    let app = start(backend).await;
    let id = dead_job(&app, "dead-dashboard").await.to_string();
    let mut viewer = Browser::new();
    viewer.sign_in(&app, "vera", PASSWORD).await;
    let viewer_csrf = viewer.csrf(&app).await;
    assert_eq!(viewer_csrf.len(), 64);
    let retry = |csrf: &str, confirm: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("queue", "jobs".to_string()),
            ("id", id.clone()),
            ("confirm", confirm.to_string()),
        ]
    };
    let form = retry(&viewer_csrf, "yes");
    let refused = viewer.post(&app, "/admin/operations/retry", &pairs(&form)).await;
    assert_eq!(refused.status, 403, "a viewer's session may not act");

    let mut operator = Browser::new();
    operator.sign_in(&app, "olga", PASSWORD).await;
    let csrf = operator.csrf(&app).await;
    assert_ne!(csrf, viewer_csrf, "each session has its own token");
    let form = retry("", "yes");
    let missing = operator.post(&app, "/admin/operations/retry", &pairs(&form)).await;
    assert_eq!(missing.status, 403, "no CSRF token");
    let form = retry(&viewer_csrf, "yes");
    let foreign = operator.post(&app, "/admin/operations/retry", &pairs(&form)).await;
    assert_eq!(foreign.status, 403, "another session's token");
    let form = retry(&csrf, "");
    let asked = operator.post(&app, "/admin/operations/retry", &pairs(&form)).await;
    assert_eq!(asked.status, 200);
    assert!(asked.body.contains("Confirm"), "asks first");
    let jobs = app.store.list(Queue::Jobs, None, 10).await.expect("jobs");
    assert_eq!(jobs[0].state, QueueState::Dead, "not yet retried");
    let form = retry(&csrf, "yes");
    let done = operator.post(&app, "/admin/operations/retry", &pairs(&form)).await;
    assert_eq!(done.status, 303);
    let jobs = app.store.list(Queue::Jobs, None, 10).await.expect("jobs");
    assert_eq!(jobs[0].state, QueueState::Queued, "retried");
    let actions = app.store.admin_actions(10).await.expect("actions");
    assert_eq!(
        (actions.len(), actions[0].actor.as_str(), actions[0].action.as_str()),
        (1, "user:olga", "retry")
    );
    let operations = operator.get(&app, "/admin/operations").await;
    assert!(operations.body.contains("user:olga"), "the action is shown");
    app.shutdown().await;
}

async fn sign_in_never_adopts_a_session_and_sign_out_ends_it(backend: Backend) {
    let app = start(backend).await;
    // An attacker plants a token of their choosing in the victim's browser...
    let planted = "ab".repeat(32);
    let mut browser = Browser::new();
    browser.cookie = Some(planted.clone());
    assert_eq!(
        browser.get(&app, "/admin").await.status,
        303,
        "a made-up token is nothing"
    );
    // ...the victim signs in: the session is a new one, and the planted token stays useless.
    assert_eq!(browser.sign_in(&app, "olga", PASSWORD).await.status, 303);
    let issued = browser.cookie.clone().unwrap_or_default();
    assert_ne!(issued, planted);
    assert_eq!(browser.get(&app, "/admin").await.status, 200);
    let mut attacker = Browser::new();
    attacker.cookie = Some(planted);
    assert_eq!(attacker.get(&app, "/admin").await.status, 303);
    // Signing in again ends the session the browser held.
    let mut again = Browser::new();
    again.cookie = Some(issued.clone());
    again.sign_in(&app, "olga", PASSWORD).await;
    let mut old = Browser::new();
    old.cookie = Some(issued);
    assert_eq!(old.get(&app, "/admin").await.status, 303, "the earlier session ended");
    // Sign-out needs the token, then ends the session.
    let csrf = again.csrf(&app).await;
    assert_eq!(again.post(&app, "/admin/logout", &[("csrf", "")]).await.status, 403);
    let token = again.cookie.clone();
    assert_eq!(again.post(&app, "/admin/logout", &[("csrf", &csrf)]).await.status, 303);
    let mut after = Browser::new();
    after.cookie = token;
    assert_eq!(after.get(&app, "/admin").await.status, 303, "signed out");
    // A new password ends the sessions the old one opened.
    let mut before_change = Browser::new();
    before_change.sign_in(&app, "olga", PASSWORD).await;
    assert_eq!(before_change.get(&app, "/admin").await.status, 200);
    let new_hash = hash_password("a brand new password").expect("hash");
    app.store
        .upsert_admin_user("olga", Role::Operator, &new_hash)
        .await
        .expect("change");
    assert_eq!(
        before_change.get(&app, "/admin").await.status,
        303,
        "ended by the change"
    );
    app.shutdown().await;
}

async fn repeated_failed_sign_ins_are_throttled(backend: Backend) {
    let app = start(backend).await;
    let mut browser = Browser::new();
    for _ in 0..5 {
        assert_eq!(browser.sign_in(&app, "olga", "not the password").await.status, 401);
    }
    let throttled = browser.sign_in(&app, "olga", PASSWORD).await;
    assert_eq!(throttled.status, 429, "even the right password waits");
    assert!(throttled.body.contains("Too many failed attempts"));
    assert!(browser.cookie.is_none());
    // Another name is not held back by olga's failures.
    assert_eq!(browser.sign_in(&app, "vera", PASSWORD).await.status, 303);
    // Unknown names are refused alike, and throttled alike.
    assert_eq!(browser.sign_in(&app, "mallory", PASSWORD).await.status, 401);
    app.shutdown().await;
}

both_backends!(
    signing_in_shows_the_funnel_of_the_seed,
    actions_need_the_csrf_token_and_an_operator,
    sign_in_never_adopts_a_session_and_sign_out_ends_it,
    repeated_failed_sign_ins_are_throttled,
);
