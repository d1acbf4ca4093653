//! What the benchmarks share.

use sqlx::{Connection, Executor};

/// A new, empty database on the PostgreSQL server of TEST_DATABASE_URL (else the local
/// one); `scripts/test` drops such databases afterwards.
pub async fn fresh_postgres() -> String {
    let admin =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL reachable");
    let name = format!("referloop_load_{}", uuid::Uuid::new_v4().simple());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
    format!("{base}/{name}")
}
