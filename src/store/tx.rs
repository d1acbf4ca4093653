//! One step, one transaction. A use case opens a [`Tx`] for the work item that caused it
//! (its [`Lease`]), writes the state change and everything it causes (messages, jobs,
//! HubSpot updates) through it, and commits it together with the item's completion. A
//! crash before the commit leaves nothing; after it, the item is done. A retry therefore
//! never finds half a step.
//!
//! The statement that completes the item checks that this worker still owns its lease
//! (on SQLite, a first statement also takes the write lock and checks it early): a worker
//! whose lease lapsed cannot commit effects that the new owner will also commit.

use sqlx::AnyConnection;

use super::faults::Faults;
use super::jobs::NewJob;
use super::queue::{padded, placeholders, value_rows, Queue};
use super::{Backend, Store, StoreError};
use crate::clock::Clock;
use crate::domain::economics::Measure;
use crate::domain::funnel::{Step, DAY_MS};
use crate::domain::state::{Persisted, QueueState};

/// The `measure` of an experiment variant's funnel steps (the step is the detail).
pub const STEP_MEASURE: &str = "step";

/// Rows each (day, trigger, step) of the funnel's tally is spread over.
const TALLY_SLOTS: i64 = 8;

/// The worker's hold on one claimed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub queue: Queue,
    pub id: i64,
    pub owner: String,
}

/// The worker's hold on several claimed items of one queue, handled in one transaction
/// (a batch of Meta's statuses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLease {
    pub queue: Queue,
    pub owner: String,
    pub ids: Vec<i64>,
}

/// What a transaction holds, and so what its commit must end.
enum Hold {
    /// An API call or a tool: no item.
    Nothing,
    /// One step's item, ended by [`Tx::commit`] or [`Tx::finish`].
    Item(Lease),
    /// A batch's items, ended by [`Tx::finish_batch`].
    Batch(BatchLease),
}

/// Proof that a step's transaction committed, and how its item ended. Only
/// [`Tx::commit`], [`Tx::finish`] and a statement that ends its item with its work
/// ([`Store::accept_sending`]) make one (its field is private to this module), and
/// `app::Outcome::Committed` holds one: a step cannot report a commit it did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed(ItemEnd);

impl Committed {
    /// An item ended by the statement that did its work (an autocommit), with `end`.
    pub(super) fn ended_with_its_work(end: ItemEnd) -> Committed {
        Committed(end)
    }

    /// How the item ended.
    pub fn end(&self) -> &ItemEnd {
        &self.0
    }

    pub fn into_end(self) -> ItemEnd {
        self.0
    }
}

/// How the item behind a step ends, committed with the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemEnd {
    /// Finished; the note is kept on the item.
    Done(String),
    /// Finished for good without success (a final refusal); the reason is kept.
    Dead(String),
}

pub struct Tx {
    tx: super::warm_pool::WarmTransaction,
    backend: Backend,
    faults: Faults,
    hold: Hold,
    clock: Clock,
    /// Funnel steps reached in this transaction, tallied just before it commits.
    tally: Vec<(TallyKey, Step)>,
    /// Costs and revenue incurred in this transaction, tallied just before it commits.
    economics: Vec<(Cohort, EconomicsEntry)>,
    /// Jobs asked for in this transaction, written together when it commits.
    jobs: Vec<NewJob>,
    /// Whether the tallies also go to the invite's experiment variant.
    experiments: bool,
}

/// The cohort a cost or revenue belongs to: the trigger behind an invite or a referral,
/// or none (a message about no trigger, counted on the day it was charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cohort {
    Invite(i64),
    Referral(i64),
    Unattributed,
}

/// One cost or revenue for the economics tally.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EconomicsEntry {
    pub measure: Measure,
    pub detail: String,
    /// Empty for a measure without a value (a free or unpriced message).
    pub currency: String,
    pub micros: i64,
}

/// One row of the funnel tally's statement: a step reached by an invite (`i`) or a
/// referral (`r`), counted only when the referral was `after` a reminder or a nudge
/// (when given).
struct TallyRow {
    kind: &'static str,
    id: i64,
    step: Step,
    after: Option<&'static str>,
}

/// What a funnel step was reached by; its cohort is the trigger behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TallyKey {
    Invite(i64),
    Referral(i64),
}

impl Store {
    /// Begins a step's transaction for the item behind `lease` (none for an API call). If
    /// another worker holds the item by the time it commits, nothing is kept
    /// ([`StoreError::LeaseLost`]).
    pub async fn begin(&self, lease: Option<&Lease>) -> Result<Tx, StoreError> {
        let hold = match lease {
            Some(lease) => Hold::Item(lease.clone()),
            None => Hold::Nothing,
        };
        self.begin_holding(hold).await
    }

    /// Begins one transaction for a batch of items; [`Tx::finish_batch`] ends those it
    /// settled, all or none.
    pub async fn begin_batch(&self, batch: &BatchLease) -> Result<Tx, StoreError> {
        self.begin_holding(Hold::Batch(batch.clone())).await
    }

    async fn begin_holding(&self, hold: Hold) -> Result<Tx, StoreError> {
        let turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        // This process's turn at writing (SQLite), held until the transaction has ended.
        tx.keep_until_ended(turn);
        let mut tx = Tx {
            tx,
            backend: self.backend,
            faults: self.faults.clone(),
            hold,
            clock: self.clock().clone(),
            tally: Vec::new(),
            economics: Vec::new(),
            jobs: Vec::new(),
            experiments: self.experiments.load(std::sync::atomic::Ordering::Relaxed),
        };
        // SQLite: take the write lock first (a transaction that reads and then writes can be
        // refused by WAL when another writer went between). PostgreSQL checks the lease
        // when the step finishes, in the same statement that completes the item.
        if tx.backend == Backend::Sqlite {
            let (queue, owner, ids) = match &tx.hold {
                Hold::Nothing => return Ok(tx),
                Hold::Item(lease) => (lease.queue, lease.owner.clone(), vec![lease.id]),
                Hold::Batch(batch) => (batch.queue, batch.owner.clone(), batch.ids.clone()),
            };
            let sql = format!(
                "UPDATE {} SET lease_until = lease_until WHERE id IN ({}) AND state = '{}' AND lease_owner = $1",
                queue.table(),
                placeholders(2, ids.len()),
                QueueState::Running.as_str()
            );
            let mut check = sqlx::query(&sql).bind(owner);
            for id in &ids {
                check = check.bind(*id);
            }
            let held = check.execute(tx.write()?).await?;
            if held.rows_affected() != ids.len() as u64 {
                return Err(StoreError::LeaseLost);
            }
        }
        Ok(tx)
    }
}

impl Tx {
    /// The connection for the next write (counted by fault injection).
    pub(super) fn write(&mut self) -> Result<&mut AnyConnection, StoreError> {
        self.faults.before_write()?;
        Ok(&mut self.tx)
    }

    /// The connection for a read inside the transaction (sees its own writes).
    pub(super) fn read(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Milliseconds since the Unix epoch, by the store's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Commits the step; its item (if any) is done with `note`.
    pub async fn commit(self, note: impl Into<String>) -> Result<Committed, StoreError> {
        self.finish(ItemEnd::Done(note.into())).await
    }

    /// Queues `job` with this transaction: it is written when the transaction commits,
    /// together with the others, in one statement (a job asked for twice, here or by an
    /// earlier transaction, is one job: its idempotency key is unique).
    pub fn enqueue(&mut self, job: NewJob) {
        if !self
            .jobs
            .iter()
            .any(|queued| queued.idempotency_key == job.idempotency_key)
        {
            self.jobs.push(job);
        }
    }

    /// Writes the queued jobs, last but the tally and the item's end.
    async fn write_jobs(&mut self) -> Result<(), StoreError> {
        let jobs = std::mem::take(&mut self.jobs);
        let now = self.now_ms();
        for chunk in jobs.chunks(super::jobs::INSERT_CHUNK) {
            super::jobs::insert_jobs(self.write()?, chunk, now).await?;
        }
        Ok(())
    }

    /// Notes funnel steps reached in this transaction.
    pub(super) fn tally(&mut self, key: TallyKey, steps: Vec<Step>) {
        self.tally.extend(steps.into_iter().map(|step| (key, step)));
    }

    /// Notes a cost or revenue of `cohort`, tallied when the transaction commits.
    pub fn tally_economics(&mut self, cohort: Cohort, entry: EconomicsEntry) {
        self.economics.push((cohort, entry));
    }

    /// Adds the costs and revenue noted to the economics tally, in a fixed order (as the
    /// funnel's), each under its cohort's day and trigger kind.
    async fn write_economics(&mut self) -> Result<(), StoreError> {
        let mut entries = std::mem::take(&mut self.economics);
        if entries.is_empty() {
            return Ok(());
        }
        entries.sort();
        let now = self.now_ms();
        // One statement for the transaction's entries (a batch of statuses charges many
        // messages): summed per tally row in SQL, in a fixed order so that transactions
        // take the rows' locks in the same order.
        for chunk in entries.chunks(100) {
            let values = value_rows(
                2,
                padded(chunk.len()),
                &["TEXT", "BIGINT", "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT"],
            );
            let sql = format!(
                "WITH v (kind, id, measure, detail, currency, slot, micros) AS (VALUES {values}) \
                 INSERT INTO economics_tally (day, trigger, measure, detail, currency, slot, n, micros) \
                 SELECT CASE WHEN v.kind = 'u' THEN CAST($1 AS BIGINT) / {DAY_MS} ELSE i.created_at / {DAY_MS} END AS day, \
                   COALESCE(i.trigger, 'unattributed') AS trigger, v.measure, v.detail, v.currency, v.slot, \
                   COUNT(*), SUM(v.micros) \
                 FROM v \
                 LEFT JOIN referrals r ON v.kind = 'r' AND r.id = v.id \
                 LEFT JOIN invites i ON i.id = CASE WHEN v.kind = 'r' THEN r.invite_id WHEN v.kind = 'i' THEN v.id END \
                 WHERE v.kind = 'u' OR i.id IS NOT NULL \
                 GROUP BY 1, 2, v.measure, v.detail, v.currency, v.slot ORDER BY 1, 2, 3, 4, 5, 6 \
                 ON CONFLICT (day, trigger, measure, detail, currency, slot) \
                 DO UPDATE SET n = economics_tally.n + excluded.n, micros = economics_tally.micros + excluded.micros"
            );
            let mut insert = sqlx::query(&sql).bind(now);
            for (cohort, entry) in chunk {
                let (kind, id) = match cohort {
                    Cohort::Invite(id) => ("i", *id),
                    Cohort::Referral(id) => ("r", *id),
                    Cohort::Unattributed => ("u", now),
                };
                insert = insert
                    .bind(kind)
                    .bind(id)
                    .bind(entry.measure.as_str())
                    .bind(entry.detail.clone())
                    .bind(entry.currency.clone())
                    .bind(id.rem_euclid(TALLY_SLOTS))
                    .bind(entry.micros);
            }
            // Padding rows have no kind: neither `u` nor a cohort found, so none is counted.
            for _ in chunk.len()..padded(chunk.len()) {
                insert = insert
                    .bind(None::<String>)
                    .bind(None::<i64>)
                    .bind(None::<String>)
                    .bind(None::<String>)
                    .bind(None::<String>)
                    .bind(None::<i64>)
                    .bind(None::<i64>);
            }
            insert.execute(self.write()?).await?;
        }
        if self.experiments {
            for (cohort, entry) in entries {
                let (source, id) = match cohort {
                    Cohort::Invite(id) => ("FROM invites i WHERE i.id = $7", id),
                    Cohort::Referral(id) => (
                        "FROM referrals r JOIN invites i ON i.id = r.invite_id WHERE r.id = $7",
                        id,
                    ),
                    Cohort::Unattributed => continue,
                };
                let measure = entry.measure.as_str();
                self.tally_variant(source, id, measure, &entry.detail, &entry.currency, entry.micros)
                    .await?;
            }
        }
        Ok(())
    }

    /// Adds one event (worth `micros`) to the variant of the invite `source` selects as
    /// `i` (with `$7` its id), when it has one.
    async fn tally_variant(
        &mut self,
        source: &str,
        id: i64,
        measure: &str,
        detail: &str,
        currency: &str,
        micros: i64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO experiment_tally (experiment, variant, measure, detail, currency, slot, n, micros) \
             SELECT i.experiment, i.variant, $1, $2, $3, $4, 1, $5 {source} AND i.variant IS NOT NULL \
             ON CONFLICT (experiment, variant, measure, detail, currency, slot) \
             DO UPDATE SET n = experiment_tally.n + 1, micros = experiment_tally.micros + $6"
        );
        sqlx::query(&sql)
            .bind(measure)
            .bind(detail)
            .bind(currency)
            .bind(id.rem_euclid(TALLY_SLOTS))
            .bind(micros)
            .bind(micros)
            .bind(id)
            .execute(self.write()?)
            .await?;
        Ok(())
    }

    /// Adds the steps reached to the funnel's tally, last in the transaction, in one
    /// statement whose rows are taken in a fixed order (tally rows are held only briefly,
    /// and two transactions lock shared rows in the same order), and the referrers' own
    /// tally in another. Each cohort's counts are spread over a few rows so that busy
    /// days do not serialise.
    async fn write_tally(&mut self) -> Result<(), StoreError> {
        let mut tally = std::mem::take(&mut self.tally);
        if tally.is_empty() {
            return Ok(());
        }
        tally.sort();
        let mut steps: Vec<TallyRow> = Vec::with_capacity(tally.len() * 2);
        let mut referrers: Vec<(i64, &'static str)> = Vec::new();
        for &(key, step) in &tally {
            let (kind, id) = match key {
                TallyKey::Invite(id) => ("i", id),
                TallyKey::Referral(id) => ("r", id),
            };
            steps.push(TallyRow {
                kind,
                id,
                step,
                after: None,
            });
            if let (TallyKey::Referral(id), Step::Nominated | Step::Converted) = (key, step) {
                // What came after a reminder: the same step again, under its own name,
                // when the referral's invite had been reminded (before this step,
                // necessarily: a reminder is only queued for an invite nobody acted on),
                // and a conversion of a referral whose referrer had been nudged.
                let after_reminder = match step {
                    Step::Nominated => Step::NominatedAfterReminder,
                    _ => Step::ConvertedAfterReminder,
                };
                steps.push(TallyRow {
                    kind,
                    id,
                    step: after_reminder,
                    after: Some("reminded"),
                });
                if step == Step::Converted {
                    steps.push(TallyRow {
                        kind,
                        id,
                        step: Step::ConvertedAfterNudge,
                        after: Some("nudged"),
                    });
                }
                referrers.push((id, step.as_str()));
            }
        }
        let rows = value_rows(1, padded(steps.len()), &["TEXT", "BIGINT", "TEXT", "BIGINT", "TEXT"]);
        // A row marked `reminded` or `nudged` counts only when its referral was; padding
        // rows (no kind) find no invite.
        let sql = format!(
            "WITH v (kind, id, step, slot, after) AS (VALUES {rows}) \
             INSERT INTO funnel_tally (day, trigger, step, slot, n) \
             SELECT i.created_at / {DAY_MS}, i.trigger, v.step, v.slot, COUNT(*) \
             FROM v \
             LEFT JOIN referrals r ON v.kind = 'r' AND r.id = v.id \
             JOIN invites i ON i.id = CASE WHEN v.kind = 'r' THEN r.invite_id WHEN v.kind = 'i' THEN v.id END \
             WHERE v.after IS NULL OR (v.after = 'reminded' AND i.reminded_at IS NOT NULL) \
                OR (v.after = 'nudged' AND r.nudged_at IS NOT NULL) \
             GROUP BY 1, 2, v.step, v.slot ORDER BY 1, 2, 3, 4 \
             ON CONFLICT (day, trigger, step, slot) DO UPDATE SET n = funnel_tally.n + excluded.n"
        );
        let mut insert = sqlx::query(&sql);
        for row in &steps {
            insert = insert
                .bind(row.kind)
                .bind(row.id)
                .bind(row.step.as_str())
                .bind(row.id.rem_euclid(TALLY_SLOTS))
                .bind(row.after);
        }
        for _ in steps.len()..padded(steps.len()) {
            insert = insert
                .bind(None::<String>)
                .bind(None::<i64>)
                .bind(None::<String>)
                .bind(None::<i64>)
                .bind(None::<String>);
        }
        insert.execute(self.write()?).await?;
        if !referrers.is_empty() {
            let rows = value_rows(1, padded(referrers.len()), &["BIGINT", "TEXT"]);
            let sql = format!(
                "WITH v (id, step) AS (VALUES {rows}) \
                 INSERT INTO referrer_tally (contact_id, step, n) \
                 SELECT r.referrer_contact_id, v.step, COUNT(*) FROM v JOIN referrals r ON r.id = v.id \
                 WHERE v.step IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2 \
                 ON CONFLICT (contact_id, step) DO UPDATE SET n = referrer_tally.n + excluded.n"
            );
            let mut insert = sqlx::query(&sql);
            for (id, step) in &referrers {
                insert = insert.bind(*id).bind(*step);
            }
            for _ in referrers.len()..padded(referrers.len()) {
                insert = insert.bind(None::<i64>).bind(None::<String>);
            }
            insert.execute(self.write()?).await?;
        }
        if self.experiments {
            for (key, step) in tally {
                let (source, id) = match key {
                    TallyKey::Invite(id) => ("FROM invites i WHERE i.id = $7", id),
                    TallyKey::Referral(id) => (
                        "FROM referrals r JOIN invites i ON i.id = r.invite_id WHERE r.id = $7",
                        id,
                    ),
                };
                self.tally_variant(source, id, STEP_MEASURE, step.as_str(), "", 0)
                    .await?;
            }
        }
        Ok(())
    }

    /// Commits the step and ends its item as given.
    pub async fn finish(mut self, end: ItemEnd) -> Result<Committed, StoreError> {
        self.write_jobs().await?;
        self.write_tally().await?;
        self.write_economics().await?;
        match std::mem::replace(&mut self.hold, Hold::Nothing) {
            Hold::Nothing => {}
            Hold::Item(lease) => {
                let (state, note, error) = match &end {
                    ItemEnd::Done(note) => (QueueState::Done, Some(note.as_str()), None),
                    ItemEnd::Dead(error) => (QueueState::Dead, None, Some(error.as_str())),
                };
                let sql = format!(
                    "UPDATE {} SET state = $1, finished_at = $2, lease_until = NULL, note = $3, \
                     last_error = COALESCE($4, last_error) WHERE id = $5 AND state = '{}' AND lease_owner = $6",
                    lease.queue.table(),
                    QueueState::Running.as_str()
                );
                let ended = sqlx::query(&sql)
                    .bind(state.as_str())
                    .bind(self.now_ms())
                    .bind(note)
                    .bind(error)
                    .bind(lease.id)
                    .bind(&lease.owner)
                    .execute(self.write()?)
                    .await?;
                if ended.rows_affected() != 1 {
                    // Dropped without a commit: nothing of the step is kept.
                    return Err(StoreError::LeaseLost);
                }
            }
            Hold::Batch(_) => return Err(StoreError::Misuse("a batch's transaction ends with finish_batch")),
        }
        self.faults.before_write()?;
        self.tx.commit().await?;
        Ok(Committed(end))
    }

    /// Commits a batch's transaction, ending each of `done` (items of the batch, with
    /// their notes) in one statement. [`StoreError::LeaseLost`] when this worker no longer
    /// holds one of them: then nothing is kept. Items of the batch not in `done` stay
    /// leased, for the caller to handle one by one.
    pub async fn finish_batch(mut self, done: &[(i64, String)]) -> Result<(), StoreError> {
        self.write_jobs().await?;
        self.write_tally().await?;
        self.write_economics().await?;
        let Hold::Batch(batch) = std::mem::replace(&mut self.hold, Hold::Nothing) else {
            return Err(StoreError::Misuse("finish_batch on a transaction without a batch"));
        };
        if done.iter().any(|(id, _)| !batch.ids.contains(id)) {
            return Err(StoreError::Misuse("finish_batch given an item outside the batch"));
        }
        if !done.is_empty() {
            let rows = value_rows(3, padded(done.len()), &["", ""]);
            let table = batch.queue.table();
            let sql = format!(
                "WITH ended (id, note) AS (VALUES {rows}) \
                 UPDATE {table} SET state = '{}', finished_at = $1, lease_until = NULL, note = ended.note \
                 FROM ended WHERE {table}.id = ended.id AND {table}.state = '{}' AND {table}.lease_owner = $2",
                QueueState::Done.as_str(),
                QueueState::Running.as_str()
            );
            let mut end = sqlx::query(&sql).bind(self.now_ms()).bind(&batch.owner);
            for (id, note) in done {
                end = end.bind(*id).bind(note.as_str());
            }
            for _ in done.len()..padded(done.len()) {
                end = end.bind(None::<i64>).bind(None::<String>);
            }
            let ended = end.execute(self.write()?).await?;
            if ended.rows_affected() != done.len() as u64 {
                return Err(StoreError::LeaseLost);
            }
        }
        self.faults.before_write()?;
        self.tx.commit().await?;
        Ok(())
    }

    /// ` FOR NO KEY UPDATE` on PostgreSQL, so that a read locks the row the step will
    /// change until it commits (the weaker lock an UPDATE of non-key columns takes, so that
    /// inserting a child row, which takes a key-share lock on its parent, neither waits
    /// for it nor deadlocks with it); nothing on SQLite, whose single writer (taken when
    /// the step began) already serialises steps.
    pub(super) fn lock_clause(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR NO KEY UPDATE",
            Backend::Sqlite => "",
        }
    }

    /// The row of `table` whose `column` equals `value`, locked until this step commits
    /// (see [`Tx::lock_clause`]).
    pub(super) async fn row_for_update<T, V>(
        &mut self,
        columns: &str,
        table: &str,
        column: &str,
        value: V,
    ) -> Result<Option<T>, StoreError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
        V: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
    {
        let lock = self.lock_clause();
        super::row_where_locked(self.read(), columns, table, column, value, lock).await
    }
}
