//! The job queue: the outbox for calls to outside APIs, one row per idempotency key.
//! Jobs are written in the transaction of the step that asks for them.

use sqlx::AnyConnection;

use super::{Store, StoreError};
use crate::domain::messaging::MessageStatus;
use crate::domain::state::{sql_list, Persisted, QueueState};
use crate::domain::work::{Job, JobKind};

/// A job row to insert: a [`Job`] in its stored form.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: JobKind,
    pub payload: String,
    /// Derived from what the job is for (for example the referral and the step), so that
    /// enqueuing the same work twice yields one job.
    pub idempotency_key: String,
    pub max_attempts: i64,
    pub run_at: i64,
}

impl NewJob {
    pub fn new(job: &Job, max_attempts: i64, run_at: i64) -> NewJob {
        let (kind, payload) = job.encode();
        NewJob {
            kind,
            payload,
            idempotency_key: job.idempotency_key(),
            max_attempts,
            run_at,
        }
    }
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

async fn insert_job(conn: &mut AnyConnection, job: &NewJob, now: i64) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, idempotency_key, state, max_attempts, run_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(job.kind.as_str())
    .bind(&job.payload)
    .bind(&job.idempotency_key)
    .bind(QueueState::Queued.as_str())
    .bind(job.max_attempts)
    .bind(job.run_at)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// The id of the job queued under `key`; none when it is gone (a finished job pruned
/// since the insert found it).
async fn existing_id(conn: &mut AnyConnection, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

/// Jobs one insert carries at most (seven parameters each).
pub(super) const INSERT_CHUNK: usize = 100;

/// Inserts `jobs` in one statement; those whose idempotency key is already queued are
/// skipped.
pub(super) async fn insert_jobs(conn: &mut AnyConnection, jobs: &[NewJob], now: i64) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let rows = (0..jobs.len())
        .map(|n| {
            let p = 7 * n;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO jobs (kind, payload, idempotency_key, state, max_attempts, run_at, created_at) \
         VALUES {rows} ON CONFLICT (idempotency_key) DO NOTHING"
    );
    let mut insert = sqlx::query(&sql);
    for job in jobs {
        insert = insert
            .bind(job.kind.as_str())
            .bind(&job.payload)
            .bind(&job.idempotency_key)
            .bind(QueueState::Queued.as_str())
            .bind(job.max_attempts)
            .bind(job.run_at)
            .bind(now);
    }
    insert.execute(conn).await?;
    Ok(())
}

impl super::Tx {
    /// A reminder made pointless by this step's transition: its job, if still waiting,
    /// ends (done, saying why), and its message, if queued and not yet handed to Meta, is
    /// suppressed. A job already running decides on the row it reads locked, after this.
    pub async fn cancel_reminder(&mut self, job: &Job, message_key: &str, why: &str) -> Result<(), StoreError> {
        let now = self.now_ms();
        let sql = format!(
            "UPDATE jobs SET state = '{}', note = $1, finished_at = $2 WHERE idempotency_key = $3 AND state IN ({})",
            QueueState::Done.as_str(),
            sql_list(QueueState::WAITING)
        );
        sqlx::query(&sql)
            .bind(why)
            .bind(now)
            .bind(job.idempotency_key())
            .execute(self.write()?)
            .await?;
        sqlx::query(
            "UPDATE messages SET status = $1, error_title = $2, updated_at = $3 \
             WHERE idempotency_key = $4 AND status = $5",
        )
        .bind(MessageStatus::Suppressed.as_str())
        .bind(why)
        .bind(now)
        .bind(message_key)
        .bind(MessageStatus::Queued.as_str())
        .execute(self.write()?)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Enqueues one job on its own (operators' and tests' entry point).
    pub async fn enqueue_job(&self, job: &NewJob) -> Result<EnqueueOutcome, StoreError> {
        let _turn = self.write_turn().await;
        let mut conn = self.pool.acquire().await?;
        let outcome = self.enqueue_job_on(&mut conn, job).await;
        conn.settle(&outcome);
        outcome
    }

    async fn enqueue_job_on(&self, conn: &mut AnyConnection, job: &NewJob) -> Result<EnqueueOutcome, StoreError> {
        // Twice at most: a key that conflicts and is then gone was pruned in between, and
        // the second insert finds it free.
        for _ in 0..2 {
            if let Some(id) = insert_job(conn, job, self.now_ms()).await? {
                return Ok(EnqueueOutcome::Created(id));
            }
            if let Some(id) = existing_id(conn, &job.idempotency_key).await? {
                return Ok(EnqueueOutcome::AlreadyQueued(id));
            }
        }
        Err(StoreError::Conflict(format!(
            "job {} neither inserted nor found",
            job.idempotency_key
        )))
    }
}
