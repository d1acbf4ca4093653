//! The job queue: the outbox for calls to outside APIs, one row per idempotency key.

use sqlx::Row;

use super::{now_ms, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub payload: String,
    /// Derived from what the job is for (for example the referral and the step), so that
    /// enqueuing the same work twice yields one job.
    pub idempotency_key: String,
    pub max_attempts: i64,
    pub run_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Created(i64),
    AlreadyQueued(i64),
}

impl EnqueueOutcome {
    pub fn id(self) -> i64 {
        match self {
            EnqueueOutcome::Created(id) | EnqueueOutcome::AlreadyQueued(id) => id,
        }
    }
}

impl Store {
    pub async fn enqueue_job(&self, job: &NewJob) -> Result<EnqueueOutcome, StoreError> {
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO jobs (kind, payload, idempotency_key, state, max_attempts, run_at, created_at) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(&job.kind)
        .bind(&job.payload)
        .bind(&job.idempotency_key)
        .bind(job.max_attempts)
        .bind(job.run_at)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(id) = inserted {
            return Ok(EnqueueOutcome::Created(id));
        }
        let existing = sqlx::query("SELECT id FROM jobs WHERE idempotency_key = $1")
            .bind(&job.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
        Ok(EnqueueOutcome::AlreadyQueued(existing.try_get("id")?))
    }
}
