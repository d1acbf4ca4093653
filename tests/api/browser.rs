//! The dashboard as a person sees it: Debian's Chromium, headless, driven through
//! ChromeDriver with the fantoccini WebDriver client. It signs in to a referloop seeded
//! with referrals in every state, reads the funnel from the page, opens a timeline,
//! retries a dead job as an operator, is refused the same action as a viewer, and saves
//! a screenshot of each page under `target/screenshots/`.
//!
//! scripts/test installs Chromium and ChromeDriver when missing; without them this test
//! fails (it is never skipped).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use referloop::app::accounts::hash_password;
use referloop::domain::access::Role;
use referloop::domain::referral::ReferralState;
use referloop::domain::state::Persisted;
use referloop::store::{Backend, Queue, QueueState};
use serde_json::{json, Value};

use crate::admin::{dead_job, seed};
use crate::helpers::*;

const PASSWORD: &str = "correct horse battery";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Chrome {
    driver: Child,
    client: Client,
}

impl Chrome {
    async fn start() -> Chrome {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver must be installed for the browser test (scripts/test installs Debian's chromium-driver)",
            );
        let base = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::new();
        let ready = eventually(Duration::from_secs(20), || {
            let (probe, url) = (probe.clone(), format!("{base}/status"));
            async move { probe.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(ready, "chromedriver did not start");
        let options = json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"]});
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&base)
            .await
            .unwrap_or_else(|e| panic!("Chromium did not start: {e}"));
        Chrome { driver, client }
    }

    /// The text of the element `css`, or `None` while it is not there.
    async fn try_text(&self, css: &str) -> Option<String> {
        let found = self.client.find(Locator::Css(css)).await.ok()?;
        found.text().await.ok()
    }

    /// The text of the element `css` once `wanted` holds for it (a form's answer may
    /// still be loading); fails after 5 s.
    async fn wait_for_text(&self, css: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.try_text(css).await.unwrap_or_default();
            if wanted(&text) {
                return text;
            }
            assert!(tokio::time::Instant::now() < deadline, "{css}: {text:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        element.text().await.unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        element.send_keys(text).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        element.click().await.unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn script(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Saves a PNG of the page as `target/screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot PNG");
        let dir = format!("{}/target/screenshots", env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        std::fs::write(format!("{dir}/{name}.png"), png).expect("screenshot written");
    }

    /// Sets the window's size in CSS pixels.
    async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("resize: {e}"));
    }

    /// What a marketer reads on the page holds no stored name: states, reasons and kinds
    /// are in words (the names stay in tooltips, which are not the page's text).
    async fn assert_words_not_internals(&self, page: &str) {
        let shown = self.script("return document.querySelector('main').innerText;").await;
        let shown = shown.as_str().unwrap_or_default();
        let internal: Vec<&str> = ReferralState::ALL
            .iter()
            .map(|s| s.as_str())
            .filter(|name| name.contains('_'))
            .chain([
                "not_a_promoter",
                "phone_not_mobile",
                "flow_sent",
                "friend_reached",
                "friend_invite",
                "static_code",
                "outside call",
            ])
            .filter(|name| shown.contains(name))
            .collect();
        assert!(internal.is_empty(), "{page} shows {internal:?}:\n{shown}");
    }

    /// At a phone's width (390 px) each page fits: nothing scrolls sideways. Each is saved
    /// as a screenshot under its name; the window is set back to 1,280 px after.
    async fn assert_fit_a_phone(&self, app: &TestApp, pages: &[(&str, &str)]) {
        self.resize(390, 844).await;
        for (path, name) in pages {
            self.goto(&app.url(path)).await;
            let overflow = self
                .script("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
                .await;
            assert!(
                overflow.as_i64().is_some_and(|o| o <= 0),
                "{path} scrolls sideways by {overflow} px at 390 px"
            );
            self.screenshot(name).await;
        }
        self.resize(1280, 900).await;
    }

    async fn sign_in(&self, app: &TestApp, name: &str) {
        self.goto(&app.url("/admin/login")).await;
        self.type_into("#name", name).await;
        self.type_into("#password", PASSWORD).await;
        self.click("form.login button").await;
        self.wait_for_text("h1", |t| t == "Funnel").await;
    }

    async fn quit(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn job_state(app: &TestApp, id: i64) -> QueueState {
    let jobs = app.store.list(Queue::Jobs, None, 100).await.expect("jobs");
    jobs.iter().find(|j| j.id == id).map(|j| j.state).expect("the job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_reads_the_funnel_and_acts_as_their_role_allows() {
    // An experiment for the experiments page (seeded below, after the funnel is read).
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("referloop.toml");
    std::fs::write(
        &config,
        "[[experiments]]\nname = \"browser-offer\"\nstarts = \"2020-01-01\"\nends = \"2099-12-31\"\n\
         baseline_rate = 0.10\nminimum_effect = 0.05\n\
         [[experiments.variants]]\nname = \"control\"\nweight = 1\n\
         [[experiments.variants]]\nname = \"bigger\"\nweight = 1\nrewards.referrer.amount = 2000\n",
    )
    .expect("config file");
    let config = config.to_string_lossy().to_string();
    let app = TestApp::spawn_with(Backend::Postgres, |env| {
        set_env(env, "REFERLOOP_WORKER__ENABLED", "false");
        set_env(env, "REFERLOOP_CONFIG", &config);
    })
    .await;
    let hash = hash_password(PASSWORD).expect("hash");
    for (name, role) in [("olga", Role::Operator), ("vera", Role::Viewer)] {
        app.store.upsert_admin_user(name, role, &hash).await.expect("user");
    }
    seed(&app.store).await;
    let chrome = Chrome::start().await;

    // Signed out, /admin leads to the sign-in page.
    chrome.goto(&app.url("/admin")).await;
    chrome.wait_for_text("h1", |t| t == "Sign in").await;
    chrome.screenshot("sign-in").await;

    // The operator signs in and reads the funnel of the seed.
    chrome.sign_in(&app, "olga").await;
    chrome.goto(&app.url("/admin?days=7")).await;
    for (step, count) in [
        ("triggers", "12"),
        ("eligible", "10"),
        ("invited", "10"),
        ("flow_sent", "9"),
        ("nominated", "8"),
        ("friend_reached", "2"),
        ("converted", "1"),
        ("rewarded", "1"),
    ] {
        assert_eq!(
            chrome.text(&format!("td[data-step=\"{step}\"]")).await,
            count,
            "{step} on the page"
        );
    }
    chrome.screenshot("funnel").await;
    chrome.assert_words_not_internals("the funnel").await;
    // At a phone's width (390 px) every page fits: nothing scrolls sideways.
    chrome
        .assert_fit_a_phone(
            &app,
            &[
                ("/admin?days=7", "funnel-390"),
                ("/admin/referrals", "referrals-390"),
                ("/admin/referrals?q=SEED011", "search-390"),
            ],
        )
        .await;

    // The economics of the seed: its converted referral's friend reward (10.00 USD), two
    // marketing templates (0.0529 each) and a purchase of 49.00.
    chrome.goto(&app.url("/admin/economics?days=7")).await;
    for (figure, shown) in [
        ("conversions", "1"),
        ("message_cost", "0.11 USD"),
        ("reward_cost", "10.00 USD"),
        ("cost", "10.11 USD"),
        ("revenue", "49.00 USD"),
        ("cost_per_acquisition", "10.11 USD"),
        ("return_on_cost", "4.85×"),
    ] {
        assert_eq!(
            chrome
                .text(&format!("tr[data-cohort=\"all\"] td[data-figure=\"{figure}\"]"))
                .await,
            shown,
            "{figure} on the economics page"
        );
    }
    assert_eq!(
        chrome
            .text("tr[data-category=\"marketing\"] td[data-figure=\"amount\"]")
            .await,
        "0.1058 USD"
    );
    assert!(chrome.text("#assumptions + ul").await.contains("rate card"));
    chrome.screenshot("economics").await;
    chrome.assert_words_not_internals("the economics page").await;

    // An experiment's results: 3 of 30 converted in the control, 6 of 30 in `bigger`.
    crate::admin::seed_experiment(&app.store).await;
    chrome.goto(&app.url("/admin/experiments")).await;
    let cell = |variant: &str, figure: &str| {
        format!(
            "section[data-experiment=\"browser-offer\"] tr[data-variant=\"{variant}\"] td[data-figure=\"{figure}\"]"
        )
    };
    for (variant, invited, converted, rate) in [("control", "30", "3", "10.0 %"), ("bigger", "30", "6", "20.0 %")] {
        assert_eq!(chrome.text(&cell(variant, "invited")).await, invited);
        assert_eq!(chrome.text(&cell(variant, "converted")).await, converted);
        assert!(chrome.text(&cell(variant, "conversion_rate")).await.starts_with(rate));
    }
    assert!(chrome
        .text(&cell("bigger", "difference"))
        .await
        .starts_with("+10.0 points"));
    assert_eq!(chrome.text(&cell("bigger", "verdict")).await, "not yet conclusive");
    assert_eq!(chrome.text("[data-figure=\"planned_sample_size\"]").await, "686");
    chrome.screenshot("experiment").await;
    chrome
        .assert_fit_a_phone(
            &app,
            &[
                ("/admin/economics?days=7", "economics-390"),
                ("/admin/experiments", "experiment-390"),
            ],
        )
        .await;

    // A referral's timeline, found by its code.
    chrome.goto(&app.url("/admin/referrals?q=SEED011")).await;
    chrome.click("table a").await;
    chrome
        .wait_for_text("dd[data-referral=\"state\"]", |t| t == "converted")
        .await;
    assert!(chrome.text("ol.timeline").await.contains("reward"));
    // The first entry is the trigger as it happened, not the referral's state of now.
    let first = chrome.text("ol.timeline li").await;
    assert!(first.contains("trigger") && !first.contains("convert"), "{first}");
    chrome.screenshot("timeline").await;
    chrome.assert_words_not_internals("the timeline").await;
    chrome.goto(&app.url("/admin/referrals")).await;
    chrome.wait_for_text("h1", |t| t == "Referrals").await;
    chrome.assert_words_not_internals("the referrals").await;

    // Retry a dead job: the button asks, the confirmation acts.
    let first = dead_job(&app, "browser-1").await;
    chrome.goto(&app.url("/admin/operations")).await;
    chrome.screenshot("operations").await;
    chrome.click("form[action=\"/admin/operations/retry\"] button").await;
    let question = format!("Retry jobs item #{first}");
    chrome.wait_for_text("main", |t| t.contains(&question)).await;
    chrome.click("main form button").await;
    let retried = eventually(Duration::from_secs(5), || async {
        job_state(&app, first).await == QueueState::Queued
    })
    .await;
    assert!(retried, "retried");
    chrome.wait_for_text("main", |t| t.contains("user:olga")).await;
    chrome.click("form.signout button").await;
    chrome.wait_for_text("h1", |t| t == "Sign in").await;

    // A viewer sees the button disabled, and a forced submission is refused.
    let second = dead_job(&app, "browser-2").await;
    chrome.sign_in(&app, "vera").await;
    chrome.goto(&app.url("/admin/operations")).await;
    let disabled = chrome
        .script("return document.querySelector('form[action=\"/admin/operations/retry\"] button').disabled;")
        .await;
    assert_eq!(disabled, Value::Bool(true), "a viewer's retry button is disabled");
    chrome
        .script(
            "const f = document.querySelector('form[action=\"/admin/operations/retry\"]'); \
             const c = document.createElement('input'); c.type = 'hidden'; c.name = 'confirm'; c.value = 'yes'; \
             f.appendChild(c); f.submit(); return true;",
        )
        .await;
    chrome
        .wait_for_text("main", |t| t.contains("Your role may only read"))
        .await;
    chrome.screenshot("viewer-refused").await;
    assert_eq!(job_state(&app, second).await, QueueState::Dead, "not retried");

    chrome.quit().await;
    app.shutdown().await;
}
