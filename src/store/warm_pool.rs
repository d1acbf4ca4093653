//! Connections kept warm between uses.
//!
//! sqlx's pool checks every connection it gets back with a round trip to the server (a
//! `Sync` on PostgreSQL), so that a transaction a dropped future left open is rolled back
//! at once. A statement run on the pool therefore cost two round trips, and a referral
//! about a hundred round trips that carried nothing (a quarter of the machine's CPU in the
//! end-to-end benchmark). [`WarmPool`] hands out sqlx's connections and takes them back
//! itself: a connection that ended cleanly goes straight to the next user. One left in a
//! transaction is rolled back first, and one given up in the middle of a statement is
//! drained first (what sqlx's check did); one that cannot be, or that failed at the
//! connection level, is closed. One nobody wanted for [`WARM_FOR`] goes back to sqlx's
//! pool (looked for on every return, and every half of that time by a task of the pool's,
//! so an idle replica does not keep its connections). Users who find none ready wait here
//! for the next one given back, or opened while the pool is below its size.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Describe, Either, Execute, Executor};
use tokio::sync::oneshot;

use super::WriteTurn;

/// How long a connection may wait unused here before it goes back to sqlx's pool (whose
/// idle timeout then applies to it).
pub const WARM_FOR: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct WarmPool {
    pool: AnyPool,
    warm: Arc<Mutex<Warm>>,
}

#[derive(Default)]
struct Warm {
    /// Ready connections, the most recently used last.
    idle: Vec<(PoolConnection<Any>, Instant)>,
    /// How long one may stay in `idle` unused ([`WARM_FOR`] but in tests). Always set by
    /// [`WarmPool::warm_for`]: the derived default, zero, would retire each at once.
    warm_for: Duration,
    /// Users waiting for a connection, the longest waiting first: a connection given back
    /// goes to the first still waiting, as it is.
    waiting: VecDeque<oneshot::Sender<Result<PoolConnection<Any>, sqlx::Error>>>,
    /// Connections being opened for waiters.
    opening: usize,
    closed: bool,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool").finish_non_exhaustive()
    }
}

impl WarmPool {
    pub fn new(pool: AnyPool) -> Self {
        Self::warm_for(pool, WARM_FOR)
    }

    /// As [`WarmPool::new`], a connection unused for `warm_for` going back to sqlx's pool.
    pub fn warm_for(pool: AnyPool, warm_for: Duration) -> Self {
        let warm = Arc::new(Mutex::new(Warm {
            warm_for,
            ..Warm::default()
        }));
        // Without a runtime (a tool built outside one), connections are retired on return only.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(retire_unused(Arc::downgrade(&warm), warm_for));
        }
        WarmPool { pool, warm }
    }

    /// sqlx's pool itself (migrations, which take it whole).
    pub fn inner(&self) -> &AnyPool {
        &self.pool
    }

    fn lock(&self) -> MutexGuard<'_, Warm> {
        lock(&self.warm)
    }

    /// A connection: a warm one if any; else the next one given back here or got from
    /// sqlx's pool by a task of its own (an opening abandoned half-way would be wasted). A
    /// wait ends with sqlx's `PoolTimedOut` after the pool's acquire timeout, and an
    /// opening that fails hands its error to the first waiter.
    pub async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        let handed = {
            let mut warm = self.lock();
            if let Some((conn, _)) = warm.idle.pop() {
                return Ok(self.hold(conn));
            }
            // Registered under the same lock as the check: a connection given back from now
            // on comes to the first waiter.
            let (hand, handed) = oneshot::channel();
            warm.waiting.push_back(hand);
            ensure_openers(&self.pool, &self.warm, &mut warm);
            handed
        };
        match tokio::time::timeout(self.pool.options().get_acquire_timeout(), handed).await {
            Ok(Ok(Ok(conn))) => Ok(self.hold(conn)),
            Ok(Ok(Err(e))) => Err(e),
            // Dropped unanswered only when the pool closes.
            Ok(Err(_)) => Err(sqlx::Error::PoolClosed),
            // A connection handed over as the wait ends is given back by the dropped channel.
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    fn hold(&self, conn: PoolConnection<Any>) -> Conn {
        Conn {
            conn: Some(conn),
            warm: self.warm.clone(),
            // Until a statement's outcome is settled: given up half-way.
            after: After::Drain,
            turn: None,
        }
    }

    /// Begins a transaction on a connection of its own.
    pub async fn begin(&self) -> Result<WarmTransaction, sqlx::Error> {
        let mut conn = self.acquire().await?;
        // Before the BEGIN is sent: a caller that gives up while it is in flight must not
        // leave a transaction open on a connection someone else reuses. (A ROLLBACK with
        // no transaction open is only a warning on PostgreSQL; on SQLite it fails, and the
        // connection is closed.)
        conn.after = After::RollBack;
        let begun = (&mut *conn).execute("BEGIN").await;
        if let Err(e) = &begun {
            if breaks_connection(e) {
                conn.after = After::Close;
            }
        }
        begun?;
        Ok(WarmTransaction { conn })
    }

    /// Gives every warm connection back to sqlx's pool and closes it (waiting for the
    /// connections in use; they go back to sqlx too).
    pub async fn close(&self) {
        let (idle, waiting) = {
            let mut warm = self.lock();
            warm.closed = true;
            (std::mem::take(&mut warm.idle), std::mem::take(&mut warm.waiting))
        };
        drop(idle);
        // Their users get `PoolClosed`.
        drop(waiting);
        self.pool.close().await;
    }
}

/// Every half of `warm_for`, gives the connections unused for longer back to sqlx's pool
/// (whose idle timeout then closes them), until the pool closes or is dropped.
async fn retire_unused(pool: Weak<Mutex<Warm>>, warm_for: Duration) {
    // (`interval` refuses a period of zero.)
    let mut ticks = tokio::time::interval((warm_for / 2).max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = pool.upgrade() else { return };
        let stale: Vec<PoolConnection<Any>> = {
            let mut warm = lock(&shared);
            if warm.closed {
                return;
            }
            // The longest unused are first.
            let now = Instant::now();
            let unused = warm
                .idle
                .iter()
                .take_while(|(_, since)| now.duration_since(*since) > warm_for)
                .count();
            warm.idle.drain(..unused).map(|(conn, _)| conn).collect()
        };
        // Dropped outside the lock: sqlx's pool takes them back in a task of its own.
        drop(stale);
    }
}

/// Starts tasks that ask sqlx's pool for a connection for the waiters: one per waiter, up
/// to the pool's size. sqlx's pool opens one while below its size, or passes on one it
/// has (retired here, or dropped with a waiter that gave up). Run whenever waiters may
/// have been left without one: when a user starts waiting, and when such a task ends.
fn ensure_openers(pool: &AnyPool, shared: &Arc<Mutex<Warm>>, warm: &mut Warm) {
    warm.waiting.retain(|waiter| !waiter.is_closed());
    let max = pool.options().get_max_connections() as usize;
    while warm.opening < warm.waiting.len().min(max) && !warm.closed {
        warm.opening += 1;
        let (pool, shared) = (pool.clone(), shared.clone());
        tokio::spawn(async move {
            match pool.acquire().await {
                Ok(conn) => give_back(&shared, conn),
                // Every connection was in use all along: the waiters' own timeouts say so,
                // if nothing is given back meanwhile.
                Err(sqlx::Error::PoolTimedOut) => {}
                Err(e) => hand_error(&shared, e),
            }
            let mut warm = lock(&shared);
            warm.opening -= 1;
            ensure_openers(&pool, &shared, &mut warm);
        });
    }
}

fn lock(warm: &Mutex<Warm>) -> MutexGuard<'_, Warm> {
    // A panic while holding this lock leaves the list intact (pushes and pops only).
    warm.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Gives `conn` back: to the first user still waiting, else to the warm list; to sqlx's
/// pool (which checks it) when the pool is closing.
fn give_back(warm: &Mutex<Warm>, mut conn: PoolConnection<Any>) {
    let now = Instant::now();
    let (stale, refused) = {
        let mut warm = lock(warm);
        // The longest unused is first; at most one is retired per return, which is enough
        // to drain a list that is not in use.
        let stale = match warm.idle.first() {
            Some((_, since)) if now.duration_since(*since) > warm.warm_for => Some(warm.idle.remove(0).0),
            _ => None,
        };
        if warm.closed {
            (stale, Some(conn))
        } else {
            loop {
                let Some(waiter) = warm.waiting.pop_front() else {
                    warm.idle.push((conn, now));
                    break;
                };
                // A waiter that gave up has gone.
                match waiter.send(Ok(conn)) {
                    Ok(()) => break,
                    Err(unsent) => match unsent {
                        Ok(unsent) => conn = unsent,
                        Err(_) => break,
                    },
                }
            }
            (stale, None)
        }
    };
    // Dropped outside the lock: sqlx's pool takes them back in a task of its own.
    drop(stale);
    drop(refused);
}

/// Hands `error` (opening a connection failed) to the first user still waiting.
fn hand_error(warm: &Mutex<Warm>, mut error: sqlx::Error) {
    let mut warm = lock(warm);
    while let Some(waiter) = warm.waiting.pop_front() {
        match waiter.send(Err(error)) {
            Ok(()) => return,
            Err(Err(unsent)) => error = unsent,
            Err(Ok(_)) => return,
        }
    }
}

/// What happens to a connection when its holder lets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Ended cleanly: reused as it is.
    Reuse,
    /// A transaction may be open on it: rolled back, then reused.
    RollBack,
    /// Given up in the middle of a statement, whose answer may still be on its way: read
    /// to its end (a `Sync` and its answer), then reused.
    Drain,
    /// It failed at the connection level: closed.
    Close,
}

/// A connection held from a [`WarmPool`]; given back when dropped.
pub struct Conn {
    conn: Option<PoolConnection<Any>>,
    warm: Arc<Mutex<Warm>>,
    after: After,
    /// The SQLite write turn of the transaction on this connection, let go only once the
    /// transaction has ended (a rollback included).
    turn: WriteTurn,
}

impl Conn {
    /// Notes the outcome of a statement run on this connection: a statement that ended
    /// (well, or refused by the database) leaves it reusable; one that failed at the
    /// connection level has it closed.
    pub fn settle<T, E: AsConnectionError>(&mut self, outcome: &Result<T, E>) {
        self.after = match outcome {
            Err(e) if e.as_sqlx().is_some_and(breaks_connection) => After::Close,
            _ => After::Reuse,
        };
    }
}

impl Deref for Conn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        // Present until dropped.
        self.conn.as_deref().expect("connection held")
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn.as_deref_mut().expect("connection held")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let turn = self.turn.take();
        let after = self.after;
        match after {
            After::Reuse => give_back(&self.warm, conn),
            After::Close => {
                conn.close_on_drop();
                drop(conn);
            }
            After::RollBack | After::Drain => {
                let warm = self.warm.clone();
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    // No runtime left to tidy it on: the socket closes with the process.
                    drop(conn.leak());
                    return;
                };
                runtime.spawn(async move {
                    if tidy(&mut conn, after).await {
                        give_back(&warm, conn);
                    } else {
                        conn.close_on_drop();
                        drop(conn);
                    }
                    // Only now may the next SQLite writer begin.
                    drop(turn);
                });
            }
        }
    }
}

/// Rolls back or drains a connection given up; false when it could not be, and must be
/// closed. Twice at most: the first attempt may only read the error that the statement
/// given up ended with.
async fn tidy(conn: &mut AnyConnection, after: After) -> bool {
    for _ in 0..2 {
        let tidied = match after {
            After::RollBack => conn.execute("ROLLBACK").await.map(|_| ()),
            _ => conn.ping().await,
        };
        match tidied {
            Ok(()) => return true,
            Err(e) if breaks_connection(&e) => break,
            Err(_) => {}
        }
    }
    tracing::warn!("a connection given up could not be tidied (a transaction left open, or an answer unread); closed");
    false
}

/// A transaction on a [`Conn`]: rolled back if dropped before [`WarmTransaction::commit`].
pub struct WarmTransaction {
    conn: Conn,
}

impl WarmTransaction {
    /// Keeps `turn` (SQLite's write turn) until the transaction has ended, a rollback of a
    /// transaction given up included.
    pub fn keep_until_ended(&mut self, turn: WriteTurn) {
        self.conn.turn = turn;
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        // Until COMMIT answers, dropping this (a caller giving up) still rolls back. A
        // COMMIT the database refused (SQLite busy) may leave the transaction open: it is
        // rolled back too. Only a broken connection is closed.
        let committed = (&mut *self.conn).execute("COMMIT").await;
        match &committed {
            Ok(_) => self.conn.after = After::Reuse,
            Err(e) if breaks_connection(e) => self.conn.after = After::Close,
            Err(_) => {}
        }
        committed.map(|_| ())
    }
}

impl Deref for WarmTransaction {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl DerefMut for WarmTransaction {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

/// Errors after which a connection cannot be trusted to be in step with its server.
/// PostgreSQL ends a session with an error of SQLSTATE class 57P (the server shutting down,
/// an operator ending the backend) or 08 (a connection exception) before it closes the
/// socket: the connection is as good as broken.
fn breaks_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
    }
}

/// An error that may carry sqlx's (for [`Conn::settle`]).
pub trait AsConnectionError {
    fn as_sqlx(&self) -> Option<&sqlx::Error>;
}

impl AsConnectionError for sqlx::Error {
    fn as_sqlx(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

impl AsConnectionError for super::StoreError {
    fn as_sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            super::StoreError::Database(e) => Some(e),
            _ => None,
        }
    }
}

/// A statement run on the pool itself, as on sqlx's pool: on a connection of its own for
/// the statement's length. Its rows are read whole before they are handed on (every use
/// here reads them all).
impl<'c> Executor<'c> for &'c WarmPool {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        async move {
            let mut conn = self.acquire().await?;
            let fetched: Result<Vec<_>, sqlx::Error> = conn.fetch_many(query).try_collect().await;
            conn.settle(&fetched);
            fetched
        }
        .map(|fetched| match fetched {
            Ok(items) => futures_util::stream::iter(items.into_iter().map(Ok)).boxed(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten_stream()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        async move {
            let mut conn = self.acquire().await?;
            let fetched = conn.fetch_optional(query).await;
            conn.settle(&fetched);
            fetched
        }
        .boxed()
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        async move {
            let mut conn = self.acquire().await?;
            let prepared = conn.prepare_with(sql, parameters).await;
            conn.settle(&prepared);
            prepared
        }
        .boxed()
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        async move {
            let mut conn = self.acquire().await?;
            let described = conn.describe(sql).await;
            conn.settle(&described);
            described
        }
        .boxed()
    }
}
