//! Builds the application from settings: store (migrated), HTTP router, worker. Tests
//! build it on port 0 with a fresh database and talk to it over real HTTP.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::Services;
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::jobs::Worker;
use crate::metrics::Metrics;
use crate::store::{InboxWriter, Store};
use crate::whatsapp::flow_crypto;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    worker: Option<Worker>,
    /// The API's operations: routes and the least role of each.
    operations: &'static [http::openapi::Operation],
}

impl Application {
    /// Connects to and migrates the database and binds the listener; nothing runs yet.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = Store::connect_with(
            &settings.database.url,
            settings.database.max_connections.get(),
            settings.database.acquire_timeout,
        )
        .await
        .context("connecting to the database (database.url)")?;
        store.migrate().await.context("applying migrations")?;
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| format!("binding server.listen = {}", settings.server.listen))?;
        let metrics = Arc::new(Metrics::new());
        let settings = Arc::new(settings);
        let services = Arc::new(Services::new(store.clone(), settings.clone(), metrics.clone())?);
        let worker = settings.worker.enabled.then(|| Worker::new(services.clone()));
        let inbox = InboxWriter::start(store.clone(), settings.server.ingest_writers.get());
        let flow_key = flow_crypto::configured_key(&settings)
            .map_err(|problem| anyhow::anyhow!("the Flow endpoint's key: {problem}"))?
            .map(Arc::new);
        if flow_key.is_none() && settings.whatsapp.flow_kind == crate::config::FlowKind::Endpoint {
            use crate::setup::doctor::{NO_FLOW_KEY, NO_FLOW_KEY_FIX};
            tracing::warn!("{NO_FLOW_KEY} ({NO_FLOW_KEY_FIX})");
        }
        let state = AppState {
            inbox,
            store,
            settings,
            metrics,
            services,
            flow_key,
        };
        Ok(Application {
            listener,
            state,
            worker,
            operations: http::openapi::OPERATIONS,
        })
    }

    /// Serves the API from `operations` instead of the published table (a test that
    /// changes a role sees the router enforce it).
    pub fn with_operations(mut self, operations: &'static [http::openapi::Operation]) -> Self {
        self.operations = operations;
        self
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn store(&self) -> Store {
        self.state.store.clone()
    }

    /// Serves until `shutdown` completes: stops accepting, finishes in-flight requests,
    /// then lets the worker finish the item in hand.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let settings = self.state.settings.clone();
        tracing::info!(
            listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            accounts = %settings.accounts_line(),
            backend = ?self.state.store.backend(),
            "referloop serving"
        );
        let (stop_worker, worker_stopped) = watch::channel(false);
        let worker = self.worker.map(|w| tokio::spawn(w.run(worker_stopped)));
        let store = self.state.store.clone();
        let app = http::router_with(self.state, self.operations);
        let server = &settings.server;
        let limits = http::ConnectionLimits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections: server.max_connections.get(),
        };
        http::serve(self.listener, app, limits, shutdown).await?;
        tracing::info!("HTTP server stopped; stopping worker");
        let _ = stop_worker.send(true);
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        store.close().await;
        Ok(())
    }
}

/// What to say when the database cannot be reached: which one (host and database, never
/// the password), why, and what to try.
pub fn unreachable_database(url: &str, error: &crate::store::StoreError) -> String {
    let shown = crate::config::redact_url(url);
    let hint = match crate::store::Backend::from_url(url) {
        Some(crate::store::Backend::Postgres) => {
            let database = url::Url::parse(url)
                .ok()
                .map(|u| u.path().trim_start_matches('/').to_string())
                .unwrap_or_default();
            format!(
                "is PostgreSQL running and reachable from here, and does the database exist (`createdb {database}`)? \
                 Set database.url or DATABASE_URL."
            )
        }
        Some(crate::store::Backend::Sqlite) => "can this user create and write that file and its directory?".into(),
        None => "database.url must start with postgres:// or sqlite:".into(),
    };
    format!("cannot open the database {shown}: {error}. {hint}")
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight work");
}
