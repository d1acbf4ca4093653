//! The inbox: every webhook event we acknowledged, unique per (source, dedupe key).

use sqlx::Row;

use super::{Store, StoreError};
use crate::domain::inbox::NewInboxEvent;
use crate::domain::state::{sql_list, Persisted, QueueState};
use crate::domain::work::Backlog;

/// Rows per INSERT: 6 binds each keeps a statement well under both backends' bind limits.
pub(super) const INSERT_CHUNK: usize = 500;

/// A multi-row INSERT with numbered placeholders (`$n` works on both backends, where
/// sqlx's `Any` query builder would emit `?`, which PostgreSQL rejects).
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO inbox_events (source, dedupe_key, kind, payload, max_attempts, run_at, received_at, state) VALUES ",
    );
    for row in 0..rows {
        let p = row * 6;
        if row > 0 {
            sql.push_str(", ");
        }
        // run_at and received_at are both "now" (the sixth bind).
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, '{}')",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 6,
            QueueState::Queued.as_str()
        ));
    }
    sql.push_str(" ON CONFLICT (source, dedupe_key) DO NOTHING");
    sql
}

/// Binds `events` to an [`insert_sql`] statement (after any rows already bound).
fn bind_events<'q>(
    mut insert: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    events: &'q [NewInboxEvent],
    max_attempts: i64,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for event in events {
        insert = insert
            .bind(event.source.as_str())
            .bind(event.dedupe_key.as_str())
            .bind(event.kind.name())
            .bind(event.payload.as_str())
            .bind(max_attempts)
            .bind(now);
    }
    insert
}

impl Store {
    /// Stores a webhook's events atomically; redelivered events are skipped by the unique
    /// key. Returns how many were new. The caller acknowledges only after this. Events
    /// that fit one statement are written by it alone (no BEGIN and COMMIT round trips);
    /// more take one transaction.
    pub async fn insert_inbox_events(&self, events: &[NewInboxEvent], max_attempts: i64) -> Result<u64, StoreError> {
        let turn = self.write_turn().await;
        if events.is_empty() {
            return Ok(0);
        }
        let now = self.now_ms();
        if events.len() <= INSERT_CHUNK {
            let sql = insert_sql(events.len());
            let inserted = bind_events(sqlx::query(&sql), events, max_attempts, now)
                .execute(&self.pool)
                .await?;
            return Ok(inserted.rows_affected());
        }
        let mut tx = self.pool.begin().await?;
        tx.keep_until_ended(turn);
        let mut inserted = 0;
        for chunk in events.chunks(INSERT_CHUNK) {
            let sql = insert_sql(chunk.len());
            inserted += bind_events(sqlx::query(&sql), chunk, max_attempts, now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Stores the events of several requests in one statement (at most [`INSERT_CHUNK`]
    /// rows, so one statement and no explicit transaction); returns each request's count
    /// of new events. Used by [`super::InboxWriter`].
    pub(super) async fn insert_inbox_group(
        &self,
        requests: &[(&[NewInboxEvent], i64)],
    ) -> Result<Vec<u64>, StoreError> {
        let rows: usize = requests.iter().map(|(events, _)| events.len()).sum();
        if rows == 0 {
            return Ok(vec![0; requests.len()]);
        }
        if rows > INSERT_CHUNK {
            return Err(StoreError::Exhausted("an inbox group larger than one statement"));
        }
        let _turn = self.write_turn().await;
        let now = self.now_ms();
        let sql = format!("{} RETURNING source, dedupe_key", insert_sql(rows));
        let mut insert = sqlx::query(&sql);
        for (events, max_attempts) in requests {
            insert = bind_events(insert, events, *max_attempts, now);
        }
        let inserted = insert
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("source")?, row.try_get("dedupe_key")?)))
            .collect::<Result<Vec<(String, String)>, sqlx::Error>>()?;
        Ok(super::group_commit::new_per_request(requests, inserted))
    }

    /// Events not yet handled, and the age of the oldest (waiting and running events are
    /// each read through their own partial index, so the cost follows the backlog, not
    /// the inbox's history).
    pub async fn inbox_backlog(&self) -> Result<Backlog, StoreError> {
        let sql = format!(
            "SELECT CAST(SUM(n) AS BIGINT) AS n, MIN(oldest) AS oldest FROM ( \
                 SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM inbox_events WHERE state IN ({}) \
                 UNION ALL \
                 SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM inbox_events WHERE state = '{}' \
             ) AS parts",
            sql_list(QueueState::WAITING),
            QueueState::Running.as_str()
        );
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        let events: i64 = row.try_get("n")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let age_ms = oldest.map_or(0, |at| (self.now_ms() - at).max(0));
        Ok(Backlog {
            events: u64::try_from(events).unwrap_or(0),
            oldest_age: std::time::Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)),
        })
    }

    /// Total events stored from one source (the load generator's check).
    pub async fn count_inbox_events(&self, source: &str) -> Result<i64, StoreError> {
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM inbox_events WHERE source = $1")
            .bind(source)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }
}
