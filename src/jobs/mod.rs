//! The background worker: claims inbox events and jobs from the database, dispatches
//! them by kind, and records the outcome. Separate from HTTP; any number of replicas may
//! run it against one PostgreSQL database.
//!
//! `inbox.rs` turns received events into referral steps (`lifecycle.rs`); `outbox.rs`
//! performs the jobs those steps queue (WhatsApp sends, HubSpot updates).

mod conversions;
mod inbox;
mod lifecycle;
mod outbox;
mod services;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use conversions::{convert, match_referral};
pub use services::Services;

use crate::config::WorkerSettings;
use crate::domain::retry::{RetryDecision, RetrySchedule};
use crate::metrics::Metrics;
use crate::store::{duration_ms, now_ms, ClaimedItem, Queue, Store, StoreError};

/// What a handler made of an item.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOutcome {
    /// Finished; the note is kept on the item.
    Done { note: Option<String> },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt (a timeout, a 5xx, a rate limit), no sooner than `not_before`
    /// when the other side said so (Retry-After, Meta's pair-rate limit).
    #[error("{message}")]
    Retryable {
        message: String,
        not_before: Option<Duration>,
    },
    /// Another attempt would fail the same way; the item is marked dead at once.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retry(message: impl Into<String>) -> HandlerError {
        HandlerError::Retryable {
            message: message.into(),
            not_before: None,
        }
    }

    pub fn retry_after(message: impl Into<String>, delay: Duration) -> HandlerError {
        HandlerError::Retryable {
            message: message.into(),
            not_before: Some(delay),
        }
    }
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        HandlerError::retry(e.to_string())
    }
}

pub type HandlerResult = Result<HandlerOutcome, HandlerError>;

impl HandlerOutcome {
    pub fn done(note: impl Into<String>) -> HandlerResult {
        Ok(HandlerOutcome::Done {
            note: Some(note.into()),
        })
    }
}

#[derive(Clone)]
pub struct Worker {
    services: Arc<Services>,
    store: Store,
    metrics: Arc<Metrics>,
    schedule: RetrySchedule,
    settings: WorkerSettings,
    owner: String,
}

impl Worker {
    pub fn new(services: Arc<Services>) -> Self {
        let settings = services.settings.worker.clone();
        let schedule = RetrySchedule::from_seconds(&settings.retry_schedule_seconds, settings.retry_jitter);
        let owner = format!(
            "worker-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let store = services.store.clone();
        let metrics = services.metrics.clone();
        Worker {
            services,
            store,
            metrics,
            schedule,
            settings,
            owner,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs `concurrency` loops until `shutdown` turns true; an item in hand is finished first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut loops = JoinSet::new();
        for n in 0..self.settings.concurrency {
            // Each loop owns its leases, so one loop can never complete another's item.
            let mut worker = self.clone();
            worker.owner = format!("{}-{n}", self.owner);
            let shutdown = shutdown.clone();
            loops.spawn(async move { worker.run_loop(shutdown).await });
        }
        while loops.join_next().await.is_some() {}
        tracing::info!(owner = %self.owner, "worker stopped");
    }

    async fn run_loop(&self, mut shutdown: watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms);
        while !*shutdown.borrow() {
            let worked = match self.work_once().await {
                Ok(worked) => worked,
                Err(e) => {
                    tracing::error!(error = %e, "worker could not reach the database");
                    false
                }
            };
            if worked {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Claims and handles one item, inbox first. False when nothing was due.
    pub async fn work_once(&self) -> Result<bool, StoreError> {
        for queue in [Queue::Inbox, Queue::Jobs] {
            let lease = duration_ms(Duration::from_secs(self.settings.lease_seconds));
            if let Some(item) = self.store.claim(queue, &self.owner, lease).await? {
                self.handle(item).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn handle(&self, item: ClaimedItem) -> Result<(), StoreError> {
        let queue = queue_name(item.queue);
        let span = tracing::info_span!("work", queue, id = item.id, kind = %item.kind, attempt = item.attempts);
        let _entered = span.enter();
        if item.attempts > item.max_attempts {
            // Its last attempt's worker vanished (the lease lapsed): nothing left to try.
            tracing::error!("attempts exhausted after a lapsed lease; marking dead");
            self.store
                .fail(
                    item.queue,
                    item.id,
                    &self.owner,
                    "attempts exhausted (lease lapsed)",
                    None,
                )
                .await?;
            self.metrics.worker_outcome(queue, "dead");
            return Ok(());
        }
        // Keep the lease while the handler runs, however many outside calls it makes.
        let heartbeat = self.heartbeat(&item);
        let outcome = match item.queue {
            Queue::Inbox => inbox::handle(&self.services, &item).await,
            Queue::Jobs => outbox::handle(&self.services, &item).await,
        };
        heartbeat.abort();
        match outcome {
            Ok(HandlerOutcome::Done { note }) => {
                if !self
                    .store
                    .complete(item.queue, item.id, &self.owner, note.as_deref())
                    .await?
                {
                    tracing::warn!("lease lost before completion; another worker owns the item now");
                }
                self.metrics.worker_outcome(queue, "done");
            }
            Err(error) => self.record_failure(&item, &error).await?,
        }
        Ok(())
    }

    /// Extends the item's lease every third of the lease until aborted.
    fn heartbeat(&self, item: &ClaimedItem) -> tokio::task::JoinHandle<()> {
        let (store, owner, queue, id) = (self.store.clone(), self.owner.clone(), item.queue, item.id);
        let lease = Duration::from_secs(self.settings.lease_seconds);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match store.extend_lease(queue, id, &owner, duration_ms(lease)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(id, "lease lost while the handler runs");
                        return;
                    }
                    Err(e) => tracing::warn!(id, error = %e, "could not extend the lease"),
                }
            }
        })
    }

    async fn record_failure(&self, item: &ClaimedItem, error: &HandlerError) -> Result<(), StoreError> {
        let queue = queue_name(item.queue);
        let decision = match error {
            HandlerError::Permanent(_) => RetryDecision::GiveUp,
            HandlerError::Retryable { not_before, .. } => {
                match self
                    .schedule
                    .after_failure(item.attempts, item.max_attempts, rand::random::<f64>())
                {
                    // The other side's "not before" wins over a shorter scheduled delay.
                    RetryDecision::RetryAfter(delay) => {
                        RetryDecision::RetryAfter(delay.max(not_before.unwrap_or_default()))
                    }
                    RetryDecision::GiveUp => RetryDecision::GiveUp,
                }
            }
        };
        let message = error.to_string();
        match decision {
            RetryDecision::RetryAfter(delay) => {
                tracing::warn!(error = %message, retry_in = ?delay, "attempt failed; will retry");
                self.store
                    .fail(
                        item.queue,
                        item.id,
                        &self.owner,
                        &message,
                        Some(now_ms() + duration_ms(delay)),
                    )
                    .await?;
                self.metrics.worker_outcome(queue, "retry");
            }
            RetryDecision::GiveUp => {
                tracing::error!(error = %message, "giving up; item is dead (see `referloop {queue} list --state dead`)");
                self.store
                    .fail(item.queue, item.id, &self.owner, &message, None)
                    .await?;
                self.metrics.worker_outcome(queue, "dead");
            }
        }
        Ok(())
    }
}

fn queue_name(queue: Queue) -> &'static str {
    match queue {
        Queue::Inbox => "inbox",
        Queue::Jobs => "jobs",
    }
}
