//! The background worker: claims inbox events and jobs from the database, hands each to
//! its use case (`dispatch`), and records the outcome. Separate from HTTP; any number of
//! replicas may run it against one PostgreSQL database.
//!
//! Inbox events and jobs are claimed apart (`worker.inbox_concurrency` loops, and one job
//! claimer running up to `worker.job_concurrency` × `worker.job_batch` jobs), so a flood
//! of webhooks never starves the sends, nor the reverse. The job claimer claims as room
//! frees, at least `worker.job_batch` jobs' worth at a time, in one statement. Each item
//! runs inside its own tracing span.

mod completions;
mod dispatch;
mod upkeep;

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::app::Services;

use completions::Completions;

use crate::app::delivery::{self, BatchedStatus, StatusBatch};
use crate::app::{Outcome, StepError, Work};
use crate::config::WorkerSettings;
use crate::domain::retry::{RetryDecision, RetrySchedule};
use crate::domain::state::{Persisted, QueueState};
use crate::metrics::Metrics;
use crate::store::{
    duration_ms, in_attempt, BatchLease, BatchableKind, ClaimedItem, ItemEnd, Lease, Queue, Store, StoreError,
};
use crate::whatsapp::inbound;

/// Meta's message statuses: an inbox loop claims and applies them in batches.
const BATCHED: BatchableKind = BatchableKind::WhatsAppStatus;

/// How many times a step that lost a compare-and-set runs again at once before its item
/// is put back briefly.
const CONFLICT_RERUNS: u32 = 8;

#[derive(Clone)]
pub struct Worker {
    services: Arc<Services>,
    store: Store,
    metrics: Arc<Metrics>,
    schedule: RetrySchedule,
    settings: WorkerSettings,
    owner: String,
    /// Where the job claimer's jobs record a plain completion (together); none when items
    /// are handled by hand, which complete each alone.
    completions: Option<Completions>,
}

impl Worker {
    pub fn new(services: Arc<Services>) -> Self {
        let settings = services.settings.worker.clone();
        let schedule = RetrySchedule::new(settings.retry_schedule.clone(), settings.retry_jitter);
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
            completions: None,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs the inbox and job loops until `shutdown` turns true; an item in hand is
    /// finished first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut loops = JoinSet::new();
        for n in 0..self.settings.inbox_concurrency.get() {
            // Each loop owns its leases, so one loop can never complete another's item.
            let mut worker = self.clone();
            worker.owner = format!("{}-{}{n}", self.owner, Queue::Inbox.name());
            let shutdown = shutdown.clone();
            loops.spawn(async move { worker.run_inbox(shutdown).await });
        }
        let mut claimer = self.clone();
        claimer.owner = format!("{}-{}", self.owner, Queue::Jobs.name());
        claimer.completions = Some(Completions::start(self.store.clone(), Queue::Jobs));
        let upkeep = self.clone();
        let upkeep_shutdown = shutdown.clone();
        loops.spawn(async move { upkeep.run_upkeep(upkeep_shutdown).await });
        loops.spawn(async move { claimer.run_jobs(shutdown).await });
        while loops.join_next().await.is_some() {}
        tracing::info!(owner = %self.owner, "worker stopped");
    }

    /// One inbox loop.
    async fn run_inbox(&self, mut shutdown: watch::Receiver<bool>) {
        let queue = Queue::Inbox;
        let idle = self.settings.poll_interval;
        while !*shutdown.borrow() {
            let worked = match self.work_batch_from(queue).await {
                Ok(worked) => worked,
                Err(e) => {
                    tracing::error!(queue = queue.name(), error = %e, "worker could not record an item's outcome");
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

    /// Claims and handles one item, inbox first (for tests and tools that drive the
    /// worker by hand). False when nothing was due.
    pub async fn work_once(&self) -> Result<bool, StoreError> {
        for queue in [Queue::Inbox, Queue::Jobs] {
            if self.work_once_from(queue).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Claims and handles one item of `queue`. False when nothing was due.
    pub async fn work_once_from(&self, queue: Queue) -> Result<bool, StoreError> {
        let lease = duration_ms(self.settings.lease);
        let Some(item) = self.store.claim(queue, &self.owner, lease).await? else {
            return Ok(false);
        };
        let heartbeat = self.heartbeat(queue, vec![item.id]);
        let handled = self.handle_one(item).await;
        heartbeat.abort();
        handled.map(|()| true)
    }

    /// Keeps up to `worker.job_concurrency` × `worker.job_batch` jobs running until
    /// `shutdown` turns true, then lets those in hand finish. It claims again once room for
    /// `worker.job_batch` jobs is free, and then takes as many due jobs as there is room
    /// for, in one statement: a busy queue costs one claim for many jobs, not one each.
    /// Jobs carry no order among themselves; each step guards its own rows.
    async fn run_jobs(&self, mut shutdown: watch::Receiver<bool>) {
        let least = self.settings.job_batch.get();
        let capacity = self.settings.job_concurrency.get().saturating_mul(least);
        let room = Arc::new(Semaphore::new(capacity));
        let mut running = JoinSet::new();
        let mut claims = 0u64;
        while !*shutdown.borrow() {
            let permits = tokio::select! {
                permits = room.clone().acquire_many_owned(least as u32) => permits,
                _ = shutdown.changed() => break,
            };
            let Ok(mut permits) = permits else { break };
            let more = room
                .available_permits()
                .min(crate::config::MAX_JOB_BATCH.saturating_sub(least));
            if let Ok(extra) = room.clone().try_acquire_many_owned(more as u32) {
                permits.merge(extra);
            }
            // Each claim holds its leases under an owner of its own, so that a job whose
            // lease lapsed while it ran here, and is claimed again, is finished by one of
            // the two runs only.
            claims += 1;
            let mut claimer = self.clone();
            claimer.owner = format!("{}{claims}", self.owner);
            let claimed = claimer.claim_jobs(permits.num_permits()).await;
            let idle = claimed.is_empty();
            for item in claimed {
                let Some(permit) = permits.split(1) else { break };
                let worker = claimer.clone();
                running.spawn(async move {
                    let handled = worker.work_job(item).await;
                    drop(permit);
                    handled
                });
            }
            // Unused room goes back with `permits`.
            drop(permits);
            while let Some(finished) = running.try_join_next() {
                Self::report_job(finished);
            }
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        while let Some(finished) = running.join_next().await {
            Self::report_job(finished);
        }
    }

    /// Claims up to `limit` due jobs; none when the database could not be asked (said in
    /// the log; the claimer asks again after its poll interval).
    async fn claim_jobs(&self, limit: usize) -> Vec<ClaimedItem> {
        let lease = duration_ms(self.settings.lease);
        match self.store.claim_many(Queue::Jobs, &self.owner, lease, limit).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(queue = Queue::Jobs.name(), error = %e, "worker could not claim jobs");
                Vec::new()
            }
        }
    }

    /// Runs one claimed job, its lease kept while it runs.
    async fn work_job(&self, item: ClaimedItem) -> Result<(), StoreError> {
        let heartbeat = self.heartbeat(Queue::Jobs, vec![item.id]);
        let handled = self.handle_one(item).await;
        heartbeat.abort();
        handled
    }

    fn report_job(finished: Result<Result<(), StoreError>, tokio::task::JoinError>) {
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(queue = Queue::Jobs.name(), error = %e, "worker could not record an item's outcome")
            }
            // Its lease lapses and another attempt runs it.
            Err(e) => tracing::error!(queue = Queue::Jobs.name(), error = %e, "a job's step panicked"),
        }
    }

    /// Claims the oldest due item of `queue` and with it up to `worker.inbox_batch` of
    /// Meta's statuses: the statuses are applied together ([`delivery::on_status_batch`]);
    /// the other item, and any status the batch leaves, are handled one by one in the
    /// order they arrived. False when nothing was due.
    pub async fn work_batch_from(&self, queue: Queue) -> Result<bool, StoreError> {
        let lease = duration_ms(self.settings.lease);
        let items = self
            .store
            .claim_batch(queue, &self.owner, lease, BATCHED, self.settings.inbox_batch.get())
            .await?;
        if items.is_empty() {
            return Ok(false);
        }
        let heartbeat = self.heartbeat(queue, items.iter().map(|item| item.id).collect());
        let (statuses, mut alone): (Vec<ClaimedItem>, Vec<ClaimedItem>) = items
            .into_iter()
            .partition(|item| item.kind == BATCHED.kind() && item.attempts <= item.max_attempts);
        alone.extend(self.apply_statuses(queue, statuses).await);
        alone.sort_by_key(|item| item.id);
        let mut first_error = None;
        // Plain completions of the items handled one by one, recorded together at the end
        // (their leases are kept until then).
        let mut ended = Vec::new();
        for item in alone {
            // One item's unrecorded outcome must not strand the others of the batch.
            if let Err(e) = self.handle_one_ending(item, Some(&mut ended)).await {
                tracing::error!(queue = queue.name(), error = %e, "worker could not record an item's outcome");
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.complete_ended(queue, ended).await {
            tracing::error!(queue = queue.name(), error = %e, "worker could not record items' completions");
            first_error.get_or_insert(e);
        }
        heartbeat.abort();
        first_error.map_or(Ok(true), Err)
    }

    /// Records the plain completions `ended` in one statement.
    async fn complete_ended(&self, queue: Queue, ended: Vec<(i64, String)>) -> Result<(), StoreError> {
        if ended.is_empty() {
            return Ok(());
        }
        let items: Vec<(i64, String, String)> = ended
            .into_iter()
            .map(|(id, note)| (id, self.owner.clone(), note))
            .collect();
        let held = self.store.complete_many(queue, &items).await?;
        for (id, _, _) in items.iter().filter(|(id, _, _)| !held.contains(id)) {
            tracing::warn!(
                queue = queue.name(),
                id,
                "lease lost before completion; another worker owns the item now"
            );
        }
        Ok(())
    }

    /// Applies a batch of status events in one transaction; returns those it left (for
    /// one at a time). If the batch fails as a whole (a conflict, a lost lease, the
    /// database), nothing of it was kept and every item is left.
    async fn apply_statuses(&self, queue: Queue, items: Vec<ClaimedItem>) -> Vec<ClaimedItem> {
        if items.is_empty() {
            return items;
        }
        let mut statuses = Vec::with_capacity(items.len());
        let mut undecodable = Vec::new();
        for item in &items {
            match inbound::parse_status(&item.payload) {
                Ok(update) => statuses.push(BatchedStatus {
                    item_id: item.id,
                    update,
                }),
                Err(_) => undecodable.push(item.id),
            }
        }
        let batch = BatchLease {
            queue,
            owner: self.owner.clone(),
            ids: statuses.iter().map(|s| s.item_id).collect(),
        };
        let span = tracing::info_span!("work_batch", queue = queue.name(), statuses = statuses.len());
        // Counted as an attempt of its least-tried item, so that fault injection interrupts
        // the batch at each of its writes in turn too.
        let attempt = items.iter().map(|item| item.attempts).min().unwrap_or(1);
        let applied = in_attempt(attempt, delivery::on_status_batch(&self.services, &batch, &statuses))
            .instrument(span)
            .await;
        let left: Vec<i64> = match applied {
            Ok(StatusBatch { settled, left }) => {
                for _ in &settled {
                    self.metrics.worker_outcome(queue.name(), QueueState::Done.as_str());
                }
                left.into_iter().chain(undecodable).collect()
            }
            Err(e) => {
                tracing::debug!(error = %crate::telemetry::escape(&e.to_string()), "status batch not applied; handling its items one by one");
                return items;
            }
        };
        items.into_iter().filter(|item| left.contains(&item.id)).collect()
    }

    /// Handles one claimed item inside its own span.
    async fn handle_one(&self, item: ClaimedItem) -> Result<(), StoreError> {
        self.handle_one_ending(item, None).await
    }

    /// As [`Worker::handle_one`]; a plain completion (a step that committed nothing of its
    /// own) is added to `ended` when given, for the caller to record with others, rather
    /// than recorded at once.
    async fn handle_one_ending(
        &self,
        item: ClaimedItem,
        ended: Option<&mut Vec<(i64, String)>>,
    ) -> Result<(), StoreError> {
        let span = tracing::info_span!(
            "work",
            queue = item.queue.name(),
            id = item.id,
            kind = %crate::telemetry::escape(&item.kind.to_string()),
            attempt = item.attempts
        );
        self.handle(item, ended).instrument(span).await
    }

    async fn handle(&self, item: ClaimedItem, ended: Option<&mut Vec<(i64, String)>>) -> Result<(), StoreError> {
        let queue = item.queue.name();
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
            self.metrics.worker_outcome(queue, QueueState::Dead.as_str());
            return Ok(());
        }
        let work = Work {
            lease: Lease {
                queue: item.queue,
                id: item.id,
                owner: self.owner.clone(),
            },
            attempts: item.attempts,
        };
        let services = &self.services;
        let mut reruns = 0;
        let outcome = loop {
            let step = async {
                match item.queue {
                    Queue::Inbox => dispatch::inbox_item(services, &work, &item).await,
                    Queue::Jobs => dispatch::job_item(services, &work, &item).await,
                }
            };
            match in_attempt(item.attempts, step).await {
                // A concurrent step changed a row this one read: nothing of this run was
                // kept, so run it again at once from a fresh read (not an attempt).
                Err(StepError::Conflict(what)) if reruns < CONFLICT_RERUNS => {
                    reruns += 1;
                    self.metrics.worker_outcome(queue, "conflict");
                    tracing::debug!(conflict = %crate::telemetry::escape(&what), reruns, "step lost a compare-and-set; running it again");
                }
                outcome => break outcome,
            }
        };
        match outcome {
            Ok(Outcome::Done(note)) => {
                let completed = match (ended, &self.completions) {
                    // Recorded by the caller, with the others of its turn.
                    (Some(ended), _) => {
                        ended.push((item.id, note));
                        true
                    }
                    (None, Some(completions)) if item.queue == Queue::Jobs => {
                        completions.complete(item.id, &self.owner, note).await?
                    }
                    (None, _) => {
                        self.store
                            .complete(item.queue, item.id, &self.owner, Some(&note))
                            .await?
                    }
                };
                if !completed {
                    tracing::warn!("lease lost before completion; another worker owns the item now");
                }
                self.metrics.worker_outcome(queue, QueueState::Done.as_str());
            }
            Ok(Outcome::Committed(committed)) => match committed.end() {
                ItemEnd::Done(_) => self.metrics.worker_outcome(queue, QueueState::Done.as_str()),
                ItemEnd::Dead(reason) => {
                    tracing::error!(error = %crate::telemetry::escape(reason), "refused for good; item is dead");
                    self.metrics.worker_outcome(queue, QueueState::Dead.as_str());
                }
            },
            Err(error) => self.record_failure(&item, &error).await?,
        }
        Ok(())
    }

    /// Keeps the leases of `ids` while their steps run, however many outside calls they
    /// make: extends them every third of the lease until aborted, or until none is held.
    fn heartbeat(&self, queue: Queue, ids: Vec<i64>) -> tokio::task::JoinHandle<()> {
        let (store, owner) = (self.store.clone(), self.owner.clone());
        let lease = self.settings.lease;
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match store.extend_leases(queue, &ids, &owner, duration_ms(lease)).await {
                        Ok(0) => {
                            tracing::debug!("no lease left to extend");
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not extend the lease"),
                    }
                }
            }
            .instrument(span),
        )
    }

    async fn record_failure(&self, item: &ClaimedItem, error: &StepError) -> Result<(), StoreError> {
        let queue = item.queue.name();
        let decision = match error {
            // Still losing after the immediate reruns: a hot row, or a bug. An attempt,
            // so that a step that can never win ends dead rather than looping.
            StepError::Conflict(_) => {
                self.schedule
                    .after_failure(item.attempts, item.max_attempts, rand::random::<f64>())
            }
            StepError::Deferred { reason, delay } => {
                tracing::debug!(reason = %reason, delay = ?delay, "deferred");
                let run_at = self.store.now_ms() + duration_ms(*delay);
                if !self.store.defer(item.queue, item.id, &self.owner, run_at).await? {
                    tracing::warn!("lease lost before the item was deferred");
                }
                self.metrics.worker_outcome(queue, "deferred");
                return Ok(());
            }
            StepError::Permanent(_) => RetryDecision::GiveUp,
            StepError::Retryable { not_before, .. } => {
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
        let logged = crate::telemetry::escape(&message);
        let (retry_at, outcome) = match decision {
            RetryDecision::RetryAfter(delay) => {
                tracing::warn!(error = %logged, retry_in = ?delay, "attempt failed; will retry");
                (Some(self.store.now_ms() + duration_ms(delay)), "retry")
            }
            RetryDecision::GiveUp => {
                tracing::error!(error = %logged, "giving up; item is dead (see `referloop {queue} list --state dead`)");
                (None, QueueState::Dead.as_str())
            }
        };
        if !self
            .store
            .fail(item.queue, item.id, &self.owner, &message, retry_at)
            .await?
        {
            tracing::warn!("lease lost before the failure was recorded; another worker owns the item now");
        }
        self.metrics.worker_outcome(queue, outcome);
        Ok(())
    }
}
