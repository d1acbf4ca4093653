//! What the benchmarks share.

use sqlx::{Connection, Executor};

/// The URL of the PostgreSQL server's database the benchmarks create theirs from:
/// TEST_DATABASE_URL, else the local server's.
fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A new, empty database on the PostgreSQL server of TEST_DATABASE_URL (else the local
/// one); `scripts/test` drops such databases afterwards, and a benchmark that ends drops
/// its own ([`drop_postgres`]).
pub async fn fresh_postgres() -> String {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL reachable");
    let name = format!("referloop_load_{}", uuid::Uuid::new_v4().simple());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
    format!("{base}/{name}")
}

/// CPU time used by this process so far (user + system), from /proc.
#[allow(dead_code)] // not every benchmark reports CPU
pub fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// CPU time used so far by every PostgreSQL process on this machine (the server under
/// test runs here), from /proc: its own time, and its ended children's (the postmaster's
/// backends that closed).
#[allow(dead_code)] // not every benchmark reports CPU
pub fn postgres_cpu_time() -> std::time::Duration {
    ticks_named("/proc", "postgres", &[11, 12, 13, 14])
}

/// The sum of `fields` (counted after the name; 11 and 12 are utime and stime, 13 and 14
/// the ended children's) over the entries of `dir` (processes, or a process's threads)
/// named `name`, as CPU time.
fn ticks_named(dir: &str, name: &str, fields: &[usize]) -> std::time::Duration {
    let mut ticks = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((named, rest)) = stat.split_once(") ") else {
            continue;
        };
        if named.rsplit_once('(').map(|(_, n)| n) != Some(name) {
            continue;
        }
        let values: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields
            .iter()
            .filter_map(|i| values.get(*i).and_then(|v| v.parse::<u64>().ok()))
            .sum::<u64>();
    }
    // Clock ticks are hundredths of a second on Linux.
    std::time::Duration::from_millis(ticks * 10)
}

/// This machine's speed now, for reading the figures beside it: SHA-256 over 64 MB on one
/// core, in MB a second. The kind of machine these benchmarks run on changes speed by up
/// to half within minutes, whatever else runs, so only runs with similar readings compare.
#[allow(dead_code)] // not every benchmark reports it
pub fn machine_speed() -> f64 {
    use sha2::Digest;
    let block = vec![0u8; 1 << 20];
    let started = std::time::Instant::now();
    let mut hasher = sha2::Sha256::new();
    for _ in 0..64 {
        hasher.update(&block);
    }
    std::hint::black_box(hasher.finalize());
    64.0 / started.elapsed().as_secs_f64()
}

/// The settings `env` names, with any setting named in this process's environment on top,
/// for trying one: `REFERLOOP_SERVER__INGEST_WRITERS=1 cargo bench …`. Only names with a
/// section (`REFERLOOP_SECTION__KEY`) are settings: the test script's own `REFERLOOP_…`
/// variables (`REFERLOOP_TOOLS_DIR`, …) would be refused as unknown settings.
#[allow(dead_code)] // not every benchmark starts referloop from settings
pub fn with_overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    env.into_iter()
        .chain(std::env::vars().filter(|(name, _)| name.starts_with("REFERLOOP_") && name.contains("__")))
        .collect()
}

/// Drops a database [`fresh_postgres`] made (its URL), its sessions ended first: a run by
/// hand leaves nothing behind. Said, not fatal, when it cannot.
pub async fn drop_postgres(database_url: &str) {
    let Some((_, name)) = database_url.rsplit_once('/') else {
        return;
    };
    // Only a name `fresh_postgres` makes (lower case, as PostgreSQL folds an unquoted
    // name); a benchmark given a database of someone else's does not call this.
    let ours = name.starts_with("referloop_load_")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ours {
        return;
    }
    let dropped = match sqlx::PgConnection::connect(&admin_url()).await {
        Ok(mut conn) => conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = dropped {
        eprintln!("could not drop the benchmark's database {name}: {e}");
    }
}

/// The name of the threads referloop runs on in a benchmark that tells its CPU from the
/// rest of the process's ([`ReferloopRuntime`]).
const REFERLOOP_THREADS: &str = "referloop-app";

/// A tokio runtime for referloop alone, beside the benchmark's own (its fakes and its
/// driver): its threads carry a name of their own, so that [`ReferloopRuntime::cpu_time`]
/// is referloop's CPU and the rest of the process's is the benchmark's.
#[allow(dead_code)] // only the whole-referral benchmark splits its CPU
pub struct ReferloopRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

#[allow(dead_code)]
impl ReferloopRuntime {
    /// As many workers as the machine has cores, as `#[tokio::main]` would start.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(REFERLOOP_THREADS)
            // Blocking threads that end would take their CPU time out of the count.
            .thread_keep_alive(std::time::Duration::from_secs(3600))
            .enable_all()
            .build()
            .expect("referloop's runtime");
        ReferloopRuntime { runtime: Some(runtime) }
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("running").handle()
    }

    /// CPU time (user + system) used so far by referloop's threads, from /proc.
    pub fn cpu_time(&self) -> std::time::Duration {
        ticks_named("/proc/self/task", REFERLOOP_THREADS, &[11, 12])
    }
}

/// Dropped, it ends referloop's tasks without waiting for them (the benchmark is done with
/// it). A runtime dropped as it is would block, which panics inside the benchmark's own.
impl Drop for ReferloopRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
