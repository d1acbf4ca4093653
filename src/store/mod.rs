//! All SQL lives here. One `Store` serves PostgreSQL (production; replicas share it) and
//! SQLite (the embedded default) through sqlx's `Any` driver; where the SQL must differ
//! (job claiming, migrations) the backend is matched explicitly.

mod admin_users;
mod economics;
mod faults;
mod flag;
mod group_commit;
mod inbox;
mod invites;
mod jobs;
mod messages;
mod named;
mod outbound;
mod pacing;
mod phone;
mod queue;
mod referrals;
mod reporting;
mod rewards;
mod tx;
mod wa_users;
mod warm_pool;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::ConnectOptions;

pub use crate::clock::duration_ms;
use crate::clock::Clock;
pub use crate::domain::state::QueueState;
pub use admin_users::{AdminSession, AdminUser};
pub use economics::{DeliveredCharge, VariantLine};
pub use faults::{in_attempt, Faults};
pub use flag::StoredFlag;
pub use group_commit::InboxWriter;
pub use invites::{InviteForCrm, InviteRow, NewInvite};
pub use jobs::{EnqueueOutcome, NewJob};
pub use messages::{Acceptance, MessageRow, MessageToSend, NewMessage, StatusMove};
pub use named::StoredName;
pub use outbound::OutboundCall;
pub use pacing::{now_us, Reservation};
pub use phone::StoredPhone;
pub use queue::{BatchableKind, ClaimedItem, Finished, Queue, QueueOutlook, QueueRow, OLDEST_PER_CLAIM};
pub use referrals::{NewReferral, ReferralForCrm, ReferralInsert, ReferralRow};
pub use reporting::{AdminAction, Dropouts, FunnelDay, ReasonCount, ReferrerCounts, RewardTotal, TimelineEntry};
pub use rewards::{ConversionRow, FriendKey, NewConversion, NewReward, RewardRow};
pub use tx::{BatchLease, Cohort, Committed, EconomicsEntry, ItemEnd, Lease, Tx, STEP_MEASURE};
pub use wa_users::OptOutChange;
pub use warm_pool::{Conn, WarmPool, WarmTransaction};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else {
            None
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database url must start with postgres:// or sqlite:")]
    UnsupportedUrl,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Exhausted(&'static str),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A compare-and-set lost: another step changed the row between this step's read and
    /// its write. Never a silent no-op: the step's transaction is dropped and the worker
    /// runs the step again at once, from a fresh read.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Another worker holds the item now (this worker's lease lapsed).
    #[error("lease lost: another worker owns the item")]
    LeaseLost,
    /// A call the store's rules do not allow (a bug in the caller).
    #[error("store misuse: {0}")]
    Misuse(&'static str),
    /// A failure injected by a test ([`Faults`]).
    #[error("injected failure (test)")]
    Injected,
}

impl StoreError {
    /// The database could not be reached (or no connection was free in time), as opposed
    /// to a statement it refused.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
        )
    }
}

/// Why the store is not ready. The detail is for the log; clients get [`NotReady::public_reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("database: {0}")]
    Database(String),
    #[error("migrations not applied (expected version {expected})")]
    NotMigrated { expected: i64 },
}

impl NotReady {
    /// A stable reason that reveals nothing about the database.
    pub fn public_reason(&self) -> &'static str {
        match self {
            NotReady::Database(_) => "database unavailable",
            NotReady::NotMigrated { .. } => "database migrations not applied (run `referloop migrate`)",
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: WarmPool,
    backend: Backend,
    faults: Faults,
    /// The time every step reads; shared by every clone (tests move it).
    clock: Clock,
    /// SQLite has one writer; its busy handler lets whoever retries first win, so a busy
    /// loop can starve the others. Writers in this process queue here instead, in order.
    /// (PostgreSQL: none.)
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Whether steps also tally each experiment variant's funnel and economics (only
    /// when experiments are configured: it costs a statement per step).
    experiments: Arc<std::sync::atomic::AtomicBool>,
}

/// The row of `table` whose `column` equals `value`, as `T` (`columns` names its fields).
pub(super) async fn row_where<T, V>(
    conn: &mut sqlx::AnyConnection,
    columns: &str,
    table: &str,
    column: &str,
    value: V,
) -> Result<Option<T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    V: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
{
    row_where_locked(conn, columns, table, column, value, "").await
}

/// As [`row_where`], with `lock` (a `FOR … UPDATE` clause, or nothing) after the condition.
pub(super) async fn row_where_locked<T, V>(
    conn: &mut sqlx::AnyConnection,
    columns: &str,
    table: &str,
    column: &str,
    value: V,
    lock: &str,
) -> Result<Option<T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    V: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
{
    let sql = format!("SELECT {columns} FROM {table} WHERE {column} = $1{lock}");
    Ok(sqlx::query_as::<_, T>(&sql).bind(value).fetch_optional(conn).await?)
}

/// A column of a hand-read row decoded through its stored form `S` into `T`, as
/// `#[sqlx(try_from = "S")]` does for a `FromRow`: a stored value the type refuses is a
/// decoding error, never a string passed on.
pub(crate) fn typed_column<S, T>(row: &sqlx::any::AnyRow, column: &str) -> Result<T, sqlx::Error>
where
    S: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    T: TryFrom<S>,
    T::Error: std::error::Error + Send + Sync + 'static,
{
    use sqlx::Row;
    let stored: S = row.try_get(column)?;
    T::try_from(stored).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: Box::new(e),
    })
}

/// Prepared statements each PostgreSQL connection keeps (sqlx's default is 100). Ours
/// number a few hundred, counting a batched statement's sizes; past the capacity, the
/// least used is closed and the next use of it prepared again (a round trip, a parse and
/// five custom plans), which busy replicas did for a tenth of their statements.
const STATEMENT_CACHE_CAPACITY: usize = 500;

/// A turn at writing (SQLite), held until the write or transaction ends.
pub(crate) type WriteTurn = Option<tokio::sync::OwnedMutexGuard<()>>;

impl Store {
    /// Connects; a SQLite file is created when missing and switched to WAL so that
    /// readers do not wait for the writer.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Self::connect_with(url, max_connections, Duration::from_secs(10)).await
    }

    /// As [`Store::connect`], waiting at most `acquire_timeout` for a connection.
    pub async fn connect_with(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url).ok_or(StoreError::UnsupportedUrl)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            Backend::Postgres if !url.contains("statement-cache-capacity=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}statement-cache-capacity={STATEMENT_CACHE_CAPACITY}")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        // No ping before each use of a pooled connection: it would double the round trips
        // of every statement. A connection broken by a database restart fails its next
        // statement instead, which is retried like any other database error. Nor one after
        // each use: `WarmPool` takes connections back itself.
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        let pool = WarmPool::new(pool);
        let write_gate = (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(Store {
            pool,
            backend,
            faults: Faults::default(),
            clock: Clock::system(),
            write_gate,
            experiments: Arc::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Makes every clone's steps tally experiment variants too (see `experiment_tally`).
    pub fn tally_experiments(&self, on: bool) {
        self.experiments.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for this process's turn to write (SQLite only; first come, first served).
    pub(crate) async fn write_turn(&self) -> WriteTurn {
        match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }

    /// The clock every step reads; shared by every clone of this store.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// This store reading `clock` (replicas in one test share one clock).
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// Milliseconds since the Unix epoch, by [`Store::clock`].
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The fault-injection switch (tests); shared by every clone of this store.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.backend.migrator().run(self.pool.inner()).await?;
        Ok(())
    }

    /// Whether PostgreSQL's autovacuum runs; `None` on SQLite, which needs none. Without
    /// it the rows the queues finish with and delete are never reclaimed, so every claim
    /// walks further past them as the tables grow.
    pub async fn autovacuum_runs(&self) -> Result<Option<bool>, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(None),
            Backend::Postgres => {
                let setting: String = sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'autovacuum'")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(Some(setting == "on"))
            }
        }
    }

    /// Ready when the database answers and every migration this binary knows is applied.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        let expected = self.backend.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| NotReady::Database(e.to_string()))?;
        match applied {
            Some(v) if v >= expected => Ok(()),
            _ => Err(NotReady::NotMigrated { expected }),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
