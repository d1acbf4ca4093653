//! The claim/lease/retry mechanics shared by the inbox and the job queue.
//!
//! A worker claims one due item by setting `state = 'running'` and a lease in a single
//! UPDATE (on PostgreSQL the candidate row is locked with `FOR UPDATE SKIP LOCKED`, so
//! replicas never claim the same item; SQLite's single writer serialises the statement).
//! The transaction commits before any outside call. An item whose lease lapses (its worker
//! crashed) is due again. Outcomes are recorded only by the lease owner.

use serde::Serialize;
use sqlx::Row;

use super::{Backend, Store, StoreError};
use crate::domain::state::{sql_list, Persisted, QueueState};
use crate::domain::work::ItemKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Inbox,
    Jobs,
}

impl Queue {
    pub const ALL: [Queue; 2] = [Queue::Inbox, Queue::Jobs];

    /// The queue's name for people and metrics (`inbox`, `jobs`).
    pub fn name(self) -> &'static str {
        match self {
            Queue::Inbox => "inbox",
            Queue::Jobs => "jobs",
        }
    }

    /// The queue `name` names.
    pub fn named(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|queue| queue.name() == name)
    }

    pub(super) fn table(self) -> &'static str {
        match self {
            Queue::Inbox => "inbox_events",
            Queue::Jobs => "jobs",
        }
    }

    /// What a stored kind names in this queue.
    pub fn kind_named(self, name: &str) -> ItemKind {
        match self {
            Queue::Inbox => ItemKind::of_event(name),
            Queue::Jobs => ItemKind::of_job(name),
        }
    }

    /// The column that identifies an item to the outside world, and when it was created.
    fn key_and_created_columns(self) -> (&'static str, &'static str) {
        match self {
            Queue::Inbox => ("source || ':' || dedupe_key", "received_at"),
            Queue::Jobs => ("idempotency_key", "created_at"),
        }
    }
}

/// The inbox kinds whose items a loop claims in batches (each has a partial index of
/// its due items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchableKind {
    /// Meta's message statuses.
    WhatsAppStatus,
}

impl BatchableKind {
    /// The kind its items have.
    pub fn kind(self) -> ItemKind {
        match self {
            BatchableKind::WhatsAppStatus => ItemKind::Event(crate::domain::inbox::InboxKind::WhatsAppStatus),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BatchableKind::WhatsAppStatus => crate::domain::inbox::STATUS_KIND,
        }
    }
}

/// Which of a queue's finished items a prune deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Of every kind.
    Any,
    /// Only the batchable kind's (Meta's statuses, kept for less time).
    Only(BatchableKind),
    /// Of every kind but the batchable one.
    AllBut(BatchableKind),
}

/// An item a worker holds the lease on.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedItem {
    pub queue: Queue,
    pub id: i64,
    pub kind: ItemKind,
    pub payload: String,
    /// Attempts including this one.
    pub attempts: i64,
    pub max_attempts: i64,
}

/// What [`Store::outlook`] saw of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutlook {
    /// Items running, or waiting and due.
    pub busy: i64,
    /// When the first waiting item is due.
    pub next_run_at: Option<i64>,
}

/// An item as listed by `referloop inbox list` / `jobs list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueRow {
    pub id: i64,
    pub kind: ItemKind,
    pub key: String,
    pub state: QueueState,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub last_error: Option<String>,
    pub note: Option<String>,
}

/// A [`QueueRow`] as read, before its kind is decoded (which needs its queue).
#[derive(sqlx::FromRow)]
struct ListedRow {
    id: i64,
    kind: String,
    key: String,
    #[sqlx(try_from = "String")]
    state: QueueState,
    attempts: i64,
    max_attempts: i64,
    run_at: i64,
    created_at: i64,
    finished_at: Option<i64>,
    last_error: Option<String>,
    note: Option<String>,
}

impl ListedRow {
    fn in_queue(self, queue: Queue) -> QueueRow {
        QueueRow {
            id: self.id,
            kind: queue.kind_named(&self.kind),
            key: self.key,
            state: self.state,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            run_at: self.run_at,
            created_at: self.created_at,
            finished_at: self.finished_at,
            last_error: self.last_error,
            note: self.note,
        }
    }
}

/// The number of rows a batched statement is written for when it carries `count`: the
/// next power of two. The rows past `count` are bound to NULLs, which match nothing, so
/// that each batched statement has a handful of texts rather than one per batch size:
/// each is then prepared once per connection and, once warm, runs a generic plan rather
/// than being parsed and planned for every new size. Only statements that reach their
/// rows by primary key (`… FROM (VALUES …) WHERE t.id = v.id`) are padded: their generic
/// plan is the same index lookup whatever the table's size when it was made. A lookup
/// by a list of other keys is planned afresh instead (see `messages_by_wamids_for_update`).
pub(super) fn padded(count: usize) -> usize {
    count.max(1).next_power_of_two()
}

/// `rows` rows of numbered placeholders for a `VALUES` list, from `$first` on, one per
/// column of `columns`: each column is cast to the SQL type it names, or left bare where
/// it names none (`""`). So `value_rows(2, 2, &["BIGINT", ""])` is
/// `(CAST($2 AS BIGINT), $3), (CAST($4 AS BIGINT), $5)`.
pub(super) fn value_rows(first: usize, rows: usize, columns: &[&str]) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(column, cast)| {
                    let n = first + row * columns.len() + column;
                    if cast.is_empty() {
                        format!("${n}")
                    } else {
                        format!("CAST(${n} AS {cast})")
                    }
                })
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, $first+1, …`: `count` numbered placeholders (both backends accept `$n`).
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A queue state's stored name, for SQL text.
fn q(state: QueueState) -> &'static str {
    state.as_str()
}

/// The oldest due items an inbox loop claims at a time, besides its batch of statuses.
/// The events other than statuses are about one a referral step (a trigger, a tap, a
/// Flow reply): claimed one at a time, they cost a claim each, the dearest statement of
/// the inbox (it is planned afresh, see [`Store::claim_where`]). They change only the
/// database, so a loop runs a few in a row in little time.
pub const OLDEST_PER_CLAIM: usize = 4;

impl Store {
    /// Claims the next due item for `owner` until `now + lease_ms`.
    pub async fn claim(&self, queue: Queue, owner: &str, lease_ms: i64) -> Result<Option<ClaimedItem>, StoreError> {
        let table = queue.table();
        let (waiting, running) = (sql_list(QueueState::WAITING), QueueState::Running.as_str());
        let lock = self.skip_locked();
        // The first due item, and the first whose lease lapsed, each found through its own
        // partial index (one condition with OR would scan and sort the whole queue); the
        // earlier of the two is claimed.
        let candidates = format!(
            "SELECT id FROM ( \
                 SELECT id, run_at FROM (SELECT id, run_at FROM {table} \
                     WHERE state IN ({waiting}) AND run_at <= $3 ORDER BY run_at, id LIMIT 1 {lock}) AS due \
                 UNION ALL \
                 SELECT id, run_at FROM (SELECT id, run_at FROM {table} \
                     WHERE state = '{running}' AND lease_until < $3 ORDER BY lease_until LIMIT 1 {lock}) AS lapsed \
             ) AS candidates ORDER BY run_at, id LIMIT 1"
        );
        Ok(self.claim_where(queue, owner, lease_ms, &candidates).await?.pop())
    }

    /// Claims, for `owner` until `now + lease_ms`, up to `limit` due items (the oldest
    /// first) and the first whose lease lapsed: one statement for a loop's next few items.
    pub async fn claim_many(
        &self,
        queue: Queue,
        owner: &str,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        let table = queue.table();
        let (waiting, running) = (sql_list(QueueState::WAITING), QueueState::Running.as_str());
        let lock = self.skip_locked();
        let limit = limit.clamp(1, crate::config::MAX_JOB_BATCH);
        let candidates = format!(
            "SELECT id FROM (SELECT id FROM {table} \
                 WHERE state IN ({waiting}) AND run_at <= $3 ORDER BY run_at, id LIMIT {limit} {lock}) AS due \
             UNION \
             SELECT id FROM (SELECT id FROM {table} \
                 WHERE state = '{running}' AND lease_until < $3 ORDER BY lease_until LIMIT 1 {lock}) AS lapsed"
        );
        self.claim_where(queue, owner, lease_ms, &candidates).await
    }

    /// Claims, for `owner` until `now + lease_ms`, the [`OLDEST_PER_CLAIM`] (at most
    /// `limit`) oldest due items of any kind, one whose lease lapsed, and with them up to
    /// `limit` due items of the batchable `kind` (Meta's statuses, found through their own
    /// index): a loop handles the batch together and the rest one by one, in arrival order.
    pub async fn claim_batch(
        &self,
        queue: Queue,
        owner: &str,
        lease_ms: i64,
        kind: BatchableKind,
        limit: usize,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        let table = queue.table();
        let (waiting, running) = (sql_list(QueueState::WAITING), QueueState::Running.as_str());
        let lock = self.skip_locked();
        let limit = limit.min(crate::config::MAX_INBOX_BATCH);
        // A batch of one means each event alone: then the oldest are taken one at a time too.
        let oldest = OLDEST_PER_CLAIM.min(limit);
        // The kind is written into the statement (it is ours, not input), so that the
        // planner can use the partial index that names it.
        let kind = kind.as_str();
        let candidates = format!(
            "SELECT id FROM (SELECT id FROM {table} \
                 WHERE state IN ({waiting}) AND run_at <= $3 ORDER BY run_at, id LIMIT {oldest} {lock}) AS due \
             UNION \
             SELECT id FROM (SELECT id FROM {table} \
                 WHERE state = '{running}' AND lease_until < $3 ORDER BY lease_until LIMIT 1 {lock}) AS lapsed \
             UNION \
             SELECT id FROM (SELECT id FROM {table} \
                 WHERE state IN ({waiting}) AND kind = '{kind}' AND run_at <= $3 ORDER BY run_at, id LIMIT {limit} {lock}) AS batchable"
        );
        self.claim_where(queue, owner, lease_ms, &candidates).await
    }

    /// Claims the items `candidates` selects (SQL over `$3`, now), in id order.
    async fn claim_where(
        &self,
        queue: Queue,
        owner: &str,
        lease_ms: i64,
        candidates: &str,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        let _turn = self.write_turn().await;
        let now = self.now_ms();
        let sql = format!(
            "UPDATE {} SET state = '{}', attempts = attempts + 1, lease_until = $1, lease_owner = $2 \
             WHERE id IN ({candidates}) RETURNING id, kind, payload, attempts, max_attempts",
            queue.table(),
            QueueState::Running.as_str()
        );
        // Planned afresh each time, never from a cached generic plan: a queue table
        // starts empty, so a plan cached then scans it whole long after it has grown
        // (until an ANALYZE that a busy new install may not have run yet).
        let rows = sqlx::query(&sql)
            .persistent(false)
            .bind(now + lease_ms)
            .bind(owner)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        let mut items = rows
            .iter()
            .map(|row| {
                Ok(ClaimedItem {
                    queue,
                    id: row.try_get("id")?,
                    kind: queue.kind_named(&row.try_get::<String, _>("kind")?),
                    payload: row.try_get("payload")?,
                    attempts: row.try_get("attempts")?,
                    max_attempts: row.try_get("max_attempts")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // RETURNING keeps no order; ids grow with arrival.
        items.sort_by_key(|item| item.id);
        Ok(items)
    }

    /// Replicas never claim the same row: PostgreSQL skips rows another claim holds;
    /// SQLite's single writer serialises claims.
    fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Extends the leases `owner` still holds among `ids` (the worker's heartbeat for long
    /// handlers); returns how many it still holds.
    pub async fn extend_leases(
        &self,
        queue: Queue,
        ids: &[i64],
        owner: &str,
        lease_ms: i64,
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let _turn = self.write_turn().await;
        let sql = format!(
            "UPDATE {} SET lease_until = $1 WHERE id IN ({}) AND state = '{}' AND lease_owner = $2",
            queue.table(),
            placeholders(3, ids.len()),
            q(QueueState::Running)
        );
        let mut extend = sqlx::query(&sql).bind(self.now_ms() + lease_ms).bind(owner);
        for id in ids {
            extend = extend.bind(*id);
        }
        Ok(extend.execute(&self.pool).await?.rows_affected())
    }

    /// Marks the item done. False when `owner` no longer holds the lease.
    pub async fn complete(&self, queue: Queue, id: i64, owner: &str, note: Option<&str>) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let sql = format!(
            "UPDATE {} SET state = '{}', finished_at = $1, lease_until = NULL, note = $2 \
             WHERE id = $3 AND state = '{}' AND lease_owner = $4",
            queue.table(),
            q(QueueState::Done),
            q(QueueState::Running)
        );
        let done = sqlx::query(&sql)
            .bind(self.now_ms())
            .bind(note)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks several items of `queue` done in one statement, each `(id, owner, note)`;
    /// returns the ids whose owner still held the lease (the others are left as they are).
    pub async fn complete_many(&self, queue: Queue, items: &[(i64, String, String)]) -> Result<Vec<i64>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.write_turn().await;
        let table = queue.table();
        let rows = value_rows(2, padded(items.len()), &["", "", ""]);
        let sql = format!(
            "WITH ended (id, owner, note) AS (VALUES {rows}) \
             UPDATE {table} SET state = '{}', finished_at = $1, lease_until = NULL, note = ended.note \
             FROM ended WHERE {table}.id = ended.id AND {table}.state = '{}' AND {table}.lease_owner = ended.owner \
             RETURNING {table}.id",
            q(QueueState::Done),
            q(QueueState::Running)
        );
        let mut update = sqlx::query_scalar(&sql).bind(self.now_ms());
        for (id, owner, note) in items {
            update = update.bind(*id).bind(owner.as_str()).bind(note.as_str());
        }
        for _ in items.len()..padded(items.len()) {
            update = update.bind(None::<i64>).bind(None::<String>).bind(None::<String>);
        }
        Ok(update.fetch_all(&self.pool).await?)
    }

    /// Records a failed attempt: due again at `retry_at`, or dead when `None`.
    pub async fn fail(
        &self,
        queue: Queue,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let (state, run_at, finished_at) = match retry_at {
            Some(at) => (q(QueueState::Failed), Some(at), None),
            None => (q(QueueState::Dead), None, Some(self.now_ms())),
        };
        let sql = format!(
            "UPDATE {} SET state = $1, run_at = COALESCE($2, run_at), finished_at = $3, last_error = $4, \
             lease_until = NULL WHERE id = $5 AND state = '{}' AND lease_owner = $6",
            queue.table(),
            q(QueueState::Running)
        );
        let failed = sqlx::query(&sql)
            .bind(state)
            .bind(run_at)
            .bind(finished_at)
            .bind(error)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(failed.rows_affected() == 1)
    }

    /// Gives the lease back without counting the attempt (used on shutdown).
    pub async fn release(&self, queue: Queue, id: i64, owner: &str) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let sql = format!(
            "UPDATE {} SET state = '{}', attempts = attempts - 1, lease_until = NULL, lease_owner = NULL \
             WHERE id = $1 AND state = '{}' AND lease_owner = $2",
            queue.table(),
            q(QueueState::Queued),
            q(QueueState::Running)
        );
        let released = sqlx::query(&sql).bind(id).bind(owner).execute(&self.pool).await?;
        Ok(released.rows_affected() == 1)
    }

    /// Puts the item back to run at `run_at` without counting the attempt (it was not a
    /// failure: the item waits its turn).
    pub async fn defer(&self, queue: Queue, id: i64, owner: &str, run_at: i64) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let sql = format!(
            "UPDATE {} SET state = '{}', attempts = attempts - 1, run_at = $1, lease_until = NULL, lease_owner = NULL \
             WHERE id = $2 AND state = '{}' AND lease_owner = $3",
            queue.table(),
            q(QueueState::Queued),
            q(QueueState::Running)
        );
        let deferred = sqlx::query(&sql)
            .bind(run_at)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(deferred.rows_affected() == 1)
    }

    /// Deletes up to `limit` of `queue`'s items that finished (`done`) before `before`
    /// (ms), the oldest first; returns how many. Dead items are never deleted here: they
    /// wait for a person. Replicas pruning at once skip each other's rows.
    pub async fn prune_done(
        &self,
        queue: Queue,
        which: Finished,
        before: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let table = queue.table();
        // The kind is ours, not input: written into the statement like the claims'.
        let kind = match which {
            Finished::Any => String::new(),
            Finished::Only(kind) => format!(" AND kind = '{}'", kind.as_str()),
            Finished::AllBut(kind) => format!(" AND kind <> '{}'", kind.as_str()),
        };
        let sql = format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} \
                 WHERE state = '{}' AND finished_at < $1{kind} ORDER BY finished_at LIMIT {} {})",
            q(QueueState::Done),
            limit.max(1),
            self.skip_locked()
        );
        let pruned = sqlx::query(&sql).bind(before).execute(&self.pool).await?;
        Ok(pruned.rows_affected())
    }

    /// Re-queues a dead item with a fresh set of attempts. False when it is not dead.
    pub async fn retry_dead(&self, queue: Queue, id: i64) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let sql = format!(
            "UPDATE {} SET state = '{}', attempts = 0, run_at = $1, finished_at = NULL, lease_until = NULL \
             WHERE id = $2 AND state = '{}'",
            queue.table(),
            q(QueueState::Queued),
            q(QueueState::Dead)
        );
        let retried = sqlx::query(&sql)
            .bind(self.now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(retried.rows_affected() == 1)
    }

    /// As [`Store::retry_dead`], for a person: the retry and the record of who asked for
    /// it commit together. False when the item is not dead (nothing is recorded).
    pub async fn retry_dead_by(&self, queue: Queue, id: i64, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin(None).await?;
        let sql = format!(
            "UPDATE {} SET state = '{}', attempts = 0, run_at = $1, finished_at = NULL, lease_until = NULL \
             WHERE id = $2 AND state = '{}'",
            queue.table(),
            q(QueueState::Queued),
            q(QueueState::Dead)
        );
        let retried = sqlx::query(&sql)
            .bind(self.now_ms())
            .bind(id)
            .execute(tx.write()?)
            .await?;
        if retried.rows_affected() != 1 {
            return Ok(false);
        }
        let target = format!("{}:{id}", queue.table());
        tx.record_admin_action(actor, "retry", &target).await?;
        tx.commit("").await?;
        Ok(true)
    }

    /// Item counts by state, every state present (zero when empty).
    pub async fn count_by_state(&self, queue: Queue) -> Result<Vec<(QueueState, i64)>, StoreError> {
        let sql = format!("SELECT state, COUNT(*) AS n FROM {} GROUP BY state", queue.table());
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        let mut counts: Vec<(QueueState, i64)> = QueueState::ALL.iter().map(|s| (*s, 0)).collect();
        for row in rows {
            let state: QueueState = super::typed_column::<String, _>(&row, "state")?;
            let n: i64 = row.try_get("n")?;
            if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == state) {
                entry.1 = n;
            }
        }
        Ok(counts)
    }

    /// Items running, or waiting and due before `horizon` (Unix ms): the work still to
    /// happen soon (what `referloop dev` waits for).
    pub async fn unfinished_before(&self, queue: Queue, horizon: i64) -> Result<i64, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE (state IN ({}) AND run_at <= $1) OR state = '{}'",
            queue.table(),
            sql_list(QueueState::WAITING),
            QueueState::Running.as_str()
        );
        Ok(sqlx::query_scalar(&sql).bind(horizon).fetch_one(&self.pool).await?)
    }

    /// When the oldest item now due was due (`run_at`), if any is waiting.
    pub async fn oldest_due(&self, queue: Queue) -> Result<Option<i64>, StoreError> {
        let sql = format!(
            "SELECT MIN(run_at) FROM {} WHERE state IN ({}) AND run_at <= $1",
            queue.table(),
            sql_list(QueueState::WAITING)
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(self.now_ms())
            .fetch_one(&self.pool)
            .await?)
    }

    /// One look at `queue` (one statement, so one snapshot): how many items are running or
    /// due by `now`, and when the first waiting item is due. Two reads could miss an item
    /// that moved from waiting to running between them.
    pub async fn outlook(&self, queue: Queue, now: i64) -> Result<QueueOutlook, StoreError> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(CASE WHEN state = '{running}' OR run_at <= $1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS busy, \
             MIN(CASE WHEN state IN ({waiting}) THEN run_at END) AS next_run_at \
             FROM {table} WHERE state IN ({waiting}) OR state = '{running}'",
            table = queue.table(),
            waiting = sql_list(QueueState::WAITING),
            running = QueueState::Running.as_str()
        );
        let row = sqlx::query(&sql).bind(now).fetch_one(&self.pool).await?;
        Ok(QueueOutlook {
            busy: row.try_get("busy")?,
            next_run_at: row.try_get("next_run_at")?,
        })
    }

    /// The newest items first, optionally in one state.
    pub async fn list(&self, queue: Queue, state: Option<QueueState>, limit: i64) -> Result<Vec<QueueRow>, StoreError> {
        let (key, created) = queue.key_and_created_columns();
        let sql = format!(
            "SELECT id, kind, {key} AS key, state, attempts, max_attempts, run_at, {created} AS created_at, \
             finished_at, last_error, note FROM {} WHERE (CAST($1 AS TEXT) IS NULL OR state = CAST($1 AS TEXT)) ORDER BY id DESC LIMIT $2",
            queue.table()
        );
        let rows = sqlx::query_as::<_, ListedRow>(&sql)
            .bind(state.map(QueueState::as_str))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|row| row.in_queue(queue)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batchable_kind_is_named_as_its_items_are_stored() {
        let kind = BatchableKind::WhatsAppStatus;
        assert_eq!(kind.kind().to_string(), kind.as_str());
        assert_eq!(Queue::Inbox.kind_named(kind.as_str()), kind.kind());
    }

    #[test]
    fn value_rows_number_each_cell_and_cast_where_asked() {
        assert_eq!(
            value_rows(2, 2, &["BIGINT", ""]),
            "(CAST($2 AS BIGINT), $3), (CAST($4 AS BIGINT), $5)"
        );
        assert_eq!(value_rows(3, 1, &["", ""]), "($3, $4)");
        assert_eq!(
            (padded(0), padded(1), padded(3), padded(64), padded(65)),
            (1, 1, 4, 64, 128)
        );
    }
}
