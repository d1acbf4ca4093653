//! Spawns referloop on a random port with a fresh database of either backend.

use std::time::Duration;

use referloop::config::Settings;
use referloop::startup::Application;
use referloop::store::{Backend, Store};
use sqlx::{Connection, Executor};
use tokio::sync::oneshot;

pub const WHATSAPP_APP_SECRET: &str = "test-app-secret";
pub const WHATSAPP_VERIFY_TOKEN: &str = "test-verify-token";
pub const HUBSPOT_CLIENT_SECRET: &str = "00000000-0000-4000-8000-000000000000";
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_test_secret";
pub const PUBLIC_BASE_URL: &str = "https://referrals.example.com";

/// Runs each listed `async fn name(backend: Backend)` as two tests, one per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(referloop::store::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(referloop::store::Backend::Postgres).await })*
        }
    };
}

/// A database of its own for one test. SQLite: a file in a temporary directory.
/// PostgreSQL: a new database on the server named by TEST_DATABASE_URL (scripts/test
/// sets it; the default is the local server), which must answer: no silent skipping.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("referloop.db").display());
                TestDatabase { url, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let admin = admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL at {admin} must be reachable for the PostgreSQL tests (run scripts/test): {e}")
                });
                let name = format!("referloop_test_{}", uuid::Uuid::new_v4().simple());
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create database");
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(admin.clone());
                TestDatabase {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 5).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

pub struct TestApp {
    pub address: String,
    pub store: Store,
    pub client: reqwest::Client,
    /// The environment the app's settings were loaded from (for processes of the real
    /// binary that join it, such as extra workers).
    pub env: Vec<(String, String)>,
    _db: TestDatabase,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// The environment every test app starts from: secrets set, fast worker.
pub fn base_env(db_url: &str) -> Vec<(String, String)> {
    [
        ("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0"),
        ("REFERLOOP_SERVER__PUBLIC_BASE_URL", PUBLIC_BASE_URL),
        ("REFERLOOP_WHATSAPP__APP_SECRET", WHATSAPP_APP_SECRET),
        ("REFERLOOP_WHATSAPP__VERIFY_TOKEN", WHATSAPP_VERIFY_TOKEN),
        ("REFERLOOP_HUBSPOT__CLIENT_SECRET", HUBSPOT_CLIENT_SECRET),
        ("REFERLOOP_STRIPE__WEBHOOK_SECRET", STRIPE_WEBHOOK_SECRET),
        ("REFERLOOP_WORKER__POLL_INTERVAL_MS", "20"),
        // Meta's pair limit is tested on its own; elsewhere it would only slow the tests.
        ("REFERLOOP_WHATSAPP__PAIR_SPACING_MS", "0"),
        // Quiet hours are tested on their own (tests/api/quiet_hours.rs); elsewhere the
        // time of day the suite runs at would decide what is sent.
        ("REFERLOOP_MESSAGING__SEND_WINDOW", "00:00-24:00"),
        ("REFERLOOP_LOG__LEVEL", "warn"),
        ("DATABASE_URL", db_url),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// `adjust` edits the environment (add, replace or remove keys) before settings load.
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Vec<(String, String)>)) -> TestApp {
        Self::spawn_with_database(TestDatabase::new(backend).await, adjust).await
    }

    /// As [`TestApp::spawn_with`], on a database made beforehand.
    pub async fn spawn_with_database(db: TestDatabase, adjust: impl FnOnce(&mut Vec<(String, String)>)) -> TestApp {
        Self::spawn_serving(db, adjust, referloop::http::openapi::OPERATIONS).await
    }

    /// As [`TestApp::spawn_with_database`], serving the API from `operations` (a changed
    /// copy of the published table).
    pub async fn spawn_serving(
        db: TestDatabase,
        adjust: impl FnOnce(&mut Vec<(String, String)>),
        operations: &'static [referloop::http::openapi::Operation],
    ) -> TestApp {
        let mut env = base_env(&db.url);
        adjust(&mut env);
        let settings = load_settings(&env);
        let app = Application::build(settings)
            .await
            .expect("build app")
            .with_operations(operations);
        let address = format!("http://127.0.0.1:{}", app.port());
        let store = app.store();
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(async move {
            let _ = app
                .run_until_stopped(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        TestApp {
            address,
            store,
            client,
            env,
            _db: db,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub fn database_url(&self) -> &str {
        &self._db.url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Posts `body` to the WhatsApp webhook, signed with the app secret as Meta signs it;
    /// returns the status.
    pub async fn post_signed_whatsapp(&self, body: Vec<u8>) -> u16 {
        self.client
            .post(self.url("/webhooks/whatsapp"))
            .header(
                "x-hub-signature-256",
                referloop::signatures::sign_meta(WHATSAPP_APP_SECRET, &body),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.expect("metrics");
        response.text().await.expect("metrics text")
    }

    /// Stops the server and the worker gracefully.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

/// Sets or replaces an environment entry.
/// A number in E.164 as a test seeds rows with it (checked by shape, as rows are read).
pub fn e164(raw: &str) -> referloop::domain::phone::E164 {
    referloop::domain::phone::E164::from_row(raw).expect("a number in E.164")
}

/// A message to queue in a test, due now, not marketing, with three attempts.
pub fn test_message(
    key: &str,
    purpose: referloop::domain::messaging::MessagePurpose,
    to: &str,
    body: &serde_json::Value,
) -> referloop::store::NewMessage {
    referloop::store::NewMessage {
        idempotency_key: key.into(),
        purpose,
        to_phone: e164(to),
        invite_id: None,
        referral_id: None,
        marketing: false,
        body: body.to_string(),
        run_at: referloop::clock::system_ms(),
        max_attempts: 3,
        timing: purpose.timing(),
    }
}

/// A worker over `app`'s store and settings, for a test to drive by hand (the app's own
/// worker being off).
pub fn hand_worker(app: &TestApp) -> referloop::jobs::Worker {
    let settings = load_settings(&app.env);
    let services = referloop::app::Services::new(
        app.store.clone(),
        std::sync::Arc::new(settings),
        std::sync::Arc::new(referloop::metrics::Metrics::new()),
    )
    .expect("services");
    referloop::jobs::Worker::new(std::sync::Arc::new(services))
}

/// The settings `env` gives, with the configuration file REFERLOOP_CONFIG names, if any,
/// as the binary reads them.
pub fn load_settings(env: &[(String, String)]) -> Settings {
    let file = env
        .iter()
        .find(|(k, _)| k == "REFERLOOP_CONFIG")
        .map(|(_, v)| std::path::PathBuf::from(v));
    Settings::load_from(file.as_deref(), env.to_vec()).expect("test settings")
}

pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

pub fn remove_env(env: &mut Vec<(String, String)>, key: &str) {
    env.retain(|(k, _)| k != key);
}

pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A connection of its own to the app's database, for a test that writes what no
/// type of ours would (a row from the past, a newer binary's row). Close it after use.
pub async fn raw_database(app: &TestApp) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(app.database_url())
        .await
        .expect("connect")
}

/// Queues a job of a kind this binary does not know, as a newer binary would: raw SQL,
/// since no type of ours can name such a kind. Returns its id.
pub async fn enqueue_unknown_job(app: &TestApp, kind: &str, key: &str, max_attempts: i64, run_at: i64) -> i64 {
    let db = raw_database(app).await;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, idempotency_key, state, max_attempts, run_at, created_at) \
         VALUES ($1, '{}', $2, 'queued', $3, $4, $4) RETURNING id",
    )
    .bind(kind)
    .bind(key)
    .bind(max_attempts)
    .bind(run_at)
    .fetch_one(&db)
    .await
    .expect("a job of an unknown kind");
    db.close().await;
    id
}
