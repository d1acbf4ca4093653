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
/// test runs here), from /proc.
#[allow(dead_code)] // not every benchmark reports CPU
pub fn postgres_cpu_time() -> std::time::Duration {
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((name, rest)) = stat.split_once(") ") else {
            continue;
        };
        if !name.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Its own time, and its ended children's (the postmaster's backends that closed).
        ticks += field(11) + field(12) + field(13) + field(14);
    }
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
