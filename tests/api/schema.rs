//! The two hand-written schemas held equal, and held to the enums.
//!
//! Every migration is written twice, for PostgreSQL and for SQLite. After migrating a fresh
//! database of each, the schemas are read back from the databases' own catalogues and
//! compared by meaning: tables, columns (type family, nullability, default), primary keys,
//! indexes (columns, uniqueness, the literals of their predicates), foreign keys and named
//! CHECK constraints. And the state names in partial-index predicates and CHECK
//! constraints must be the sets the code's enums name, so a new state cannot silently miss
//! an index the code relies on.

use std::collections::{BTreeMap, BTreeSet};

use referloop::domain::messaging::MessageStatus;
use referloop::domain::referral::ReferralState;
use referloop::domain::state::{InviteState, Persisted};
use referloop::store::{Backend, BatchableKind, QueueState};
use sqlx::{Connection, Row};

use crate::helpers::TestDatabase;

/// A column as both stores can describe it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Column {
    family: &'static str,
    nullable: bool,
    /// The default as a value (`'queued'`, `0`), without casts; `None` for none.
    default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Index {
    table: String,
    columns: Vec<String>,
    unique: bool,
    /// The quoted literals and numbers of its predicate (`WHERE …`), if partial.
    predicate: Option<BTreeSet<String>>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Schema {
    /// table → column → description.
    columns: BTreeMap<String, BTreeMap<String, Column>>,
    /// table → primary-key columns.
    primary_keys: BTreeMap<String, Vec<String>>,
    /// Named indexes (those a migration created), by name.
    named_indexes: BTreeMap<String, Index>,
    /// Unique constraints declared with their table (named by the store, so compared
    /// without names).
    unique_constraints: BTreeSet<Index>,
    /// (table, column, referenced table, referenced column).
    foreign_keys: BTreeSet<(String, String, String, String)>,
    /// Named CHECK constraints: name → the literals they allow.
    checks: BTreeMap<String, BTreeSet<String>>,
}

/// The type families both stores share, from a declared type.
fn family(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") || t.contains("SERIAL") {
        "integer"
    } else if t.contains("CHAR") || t.contains("TEXT") {
        "text"
    } else if t.contains("REAL") || t.contains("DOUBLE") || t.contains("FLOAT") {
        "real"
    } else if t.contains("BLOB") || t.contains("BYTEA") {
        "bytes"
    } else if t.contains("BOOL") {
        "boolean"
    } else {
        "other"
    }
}

/// `'queued'::text` → `'queued'`; `(0)` → `0`.
fn default_value(raw: &str) -> String {
    let mut value = raw.trim().trim_start_matches('(').trim_end_matches(')').to_string();
    if let Some((literal, _cast)) = value.split_once("::") {
        value = literal.to_string();
    }
    value
}

/// The quoted literals and bare numbers of an SQL expression, as a set.
fn literals(expression: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (n, piece) in expression.split('\'').enumerate() {
        if n % 2 == 1 {
            found.insert(piece.to_string());
        } else {
            for word in piece.split(|c: char| !c.is_ascii_alphanumeric()) {
                if !word.is_empty() && word.chars().all(|c| c.is_ascii_digit()) {
                    found.insert(word.to_string());
                }
            }
        }
    }
    found
}

/// The text after `WHERE` in an index's definition.
fn predicate_of(definition: &str) -> Option<BTreeSet<String>> {
    let upper = definition.to_ascii_uppercase();
    upper.find(" WHERE ").map(|at| literals(&definition[at + 7..]))
}

/// The expression of `CONSTRAINT name CHECK (…)` in SQLite's table definitions.
fn sqlite_checks(table_sql: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = table_sql;
    while let Some(at) = rest.find("CONSTRAINT ") {
        rest = &rest[at + "CONSTRAINT ".len()..];
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            break;
        };
        if kind != "CHECK" {
            continue;
        }
        let Some(open) = rest.find('(') else { break };
        let mut depth = 0;
        let mut end = open;
        for (i, c) in rest[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        found.push((name.to_string(), rest[open..=end].to_string()));
    }
    found
}

async fn postgres_schema(url: &str) -> Schema {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
    let mut schema = Schema::default();
    let rows = sqlx::query(
        "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.column_default \
         FROM information_schema.columns c JOIN information_schema.tables t \
           ON t.table_name = c.table_name AND t.table_schema = c.table_schema \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut db)
    .await
    .expect("columns");
    for row in rows {
        let table: String = row.get("table_name");
        let default: Option<String> = row.get("column_default");
        schema.columns.entry(table).or_default().insert(
            row.get("column_name"),
            Column {
                family: family(row.get::<String, _>("data_type").as_str()),
                nullable: row.get::<String, _>("is_nullable") == "YES",
                // A BIGSERIAL's sequence is SQLite's INTEGER PRIMARY KEY: the key, not a default.
                default: default
                    .filter(|d| !d.starts_with("nextval("))
                    .map(|d| default_value(&d)),
            },
        );
    }
    let rows = sqlx::query(
        "SELECT t.relname AS table_name, i.relname AS index_name, ix.indisunique, ix.indisprimary, \
                pg_get_indexdef(ix.indexrelid) AS definition, \
                EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = ix.indexrelid) AS is_constraint, \
                ARRAY(SELECT a.attname::text FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, n) \
                      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.n) AS columns \
         FROM pg_index ix JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_class i ON i.oid = ix.indexrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND t.relname NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut db)
    .await
    .expect("indexes");
    for row in rows {
        let table: String = row.get("table_name");
        let columns: Vec<String> = row.get("columns");
        if row.get::<bool, _>("indisprimary") {
            schema.primary_keys.insert(table, columns);
            continue;
        }
        let definition: String = row.get("definition");
        let index = Index {
            table,
            columns,
            unique: row.get("indisunique"),
            predicate: predicate_of(&definition),
        };
        if row.get::<bool, _>("is_constraint") {
            schema.unique_constraints.insert(index);
        } else {
            schema.named_indexes.insert(row.get("index_name"), index);
        }
    }
    let rows = sqlx::query(
        "SELECT k.conname, k.contype::text AS kind, t.relname AS table_name, pg_get_constraintdef(k.oid) AS definition, \
                r.relname AS referenced, \
                (SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1]) AS from_column, \
                (SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = k.confrelid AND a.attnum = k.confkey[1]) AS to_column \
         FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         LEFT JOIN pg_class r ON r.oid = k.confrelid \
         WHERE n.nspname = 'public' AND k.contype IN ('f', 'c')",
    )
    .fetch_all(&mut db)
    .await
    .expect("constraints");
    for row in rows {
        match row.get::<String, _>("kind").as_str() {
            "f" => {
                schema.foreign_keys.insert((
                    row.get("table_name"),
                    row.get::<Option<String>, _>("from_column").unwrap_or_default(),
                    row.get::<Option<String>, _>("referenced").unwrap_or_default(),
                    row.get::<Option<String>, _>("to_column").unwrap_or_default(),
                ));
            }
            _ => {
                let definition: String = row.get("definition");
                schema.checks.insert(row.get("conname"), literals(&definition));
            }
        }
    }
    db.close().await.expect("close");
    schema
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut db = sqlx::SqliteConnection::connect(url).await.expect("connect");
    let mut schema = Schema::default();
    let tables = sqlx::query(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
    )
    .fetch_all(&mut db)
    .await
    .expect("tables");
    for table in tables {
        let name: String = table.get("name");
        let sql: String = table.get("sql");
        let columns = sqlx::query("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")
            .bind(&name)
            .fetch_all(&mut db)
            .await
            .expect("table info");
        let mut key: Vec<(i64, String)> = Vec::new();
        for column in columns {
            let column_name: String = column.get("name");
            let pk: i64 = column.get("pk");
            if pk > 0 {
                key.push((pk, column_name.clone()));
            }
            let default: Option<String> = column.get("dflt_value");
            schema.columns.entry(name.clone()).or_default().insert(
                column_name,
                Column {
                    family: family(column.get::<String, _>("type").as_str()),
                    // SQLite lets a primary key be NULL unless it is the rowid; PostgreSQL never.
                    nullable: column.get::<i64, _>("notnull") == 0 && pk == 0,
                    default: default.map(|d| default_value(&d)),
                },
            );
        }
        key.sort();
        if !key.is_empty() {
            schema
                .primary_keys
                .insert(name.clone(), key.into_iter().map(|(_, c)| c).collect());
        }
        let indexes = sqlx::query("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1)")
            .bind(&name)
            .fetch_all(&mut db)
            .await
            .expect("index list");
        for listed in indexes {
            let index_name: String = listed.get("name");
            let origin: String = listed.get("origin");
            if origin == "pk" {
                continue;
            }
            let mut columns = sqlx::query("SELECT seqno, name FROM pragma_index_info(?1)")
                .bind(&index_name)
                .fetch_all(&mut db)
                .await
                .expect("index info")
                .iter()
                .map(|c| (c.get::<i64, _>("seqno"), c.get::<String, _>("name")))
                .collect::<Vec<_>>();
            columns.sort();
            let definition: Option<String> =
                sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1")
                    .bind(&index_name)
                    .fetch_one(&mut db)
                    .await
                    .expect("index sql");
            let index = Index {
                table: name.clone(),
                columns: columns.into_iter().map(|(_, c)| c).collect(),
                unique: listed.get::<i64, _>("unique") == 1,
                predicate: definition.as_deref().and_then(predicate_of),
            };
            if origin == "u" {
                schema.unique_constraints.insert(index);
            } else {
                schema.named_indexes.insert(index_name, index);
            }
        }
        let keys = sqlx::query("SELECT \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1)")
            .bind(&name)
            .fetch_all(&mut db)
            .await
            .expect("foreign keys");
        for key in keys {
            schema.foreign_keys.insert((
                name.clone(),
                key.get("from"),
                key.get("table"),
                key.get::<Option<String>, _>("to").unwrap_or_else(|| "id".into()),
            ));
        }
        for (check, expression) in sqlite_checks(&sql) {
            schema.checks.insert(check, literals(&expression));
        }
    }
    db.close().await.expect("close");
    schema
}

async fn schema_of(backend: Backend) -> Schema {
    let db = TestDatabase::new(backend).await;
    db.store().await;
    match backend {
        Backend::Postgres => postgres_schema(&db.url).await,
        Backend::Sqlite => sqlite_schema(&db.url).await,
    }
}

fn names<T: Persisted>(states: &[T]) -> BTreeSet<String> {
    states.iter().map(|s| s.as_str().to_string()).collect()
}

/// Each partial index and CHECK constraint that names states, and the set the code's
/// enums give it. A partial index missing here fails the test, so a new one must say
/// what it stands for.
fn expected_state_sets() -> BTreeMap<&'static str, BTreeSet<String>> {
    let waiting = names(QueueState::WAITING);
    let mut due_statuses = waiting.clone();
    due_statuses.insert(BatchableKind::WhatsAppStatus.as_str().to_string());
    let mut finished_statuses = names(&[QueueState::Done]);
    finished_statuses.insert(BatchableKind::WhatsAppStatus.as_str().to_string());
    BTreeMap::from([
        ("inbox_events_claimable", waiting.clone()),
        ("jobs_claimable", waiting),
        ("inbox_events_due_statuses", due_statuses),
        ("inbox_events_leased", names(&[QueueState::Running])),
        ("jobs_leased", names(&[QueueState::Running])),
        ("inbox_events_finished", finished_statuses.clone()),
        ("inbox_events_finished_statuses", finished_statuses),
        ("jobs_finished", names(&[QueueState::Done])),
        ("referrals_open_friend", names(ReferralState::OPEN)),
        ("referrals_refused", names(&[ReferralState::Refused])),
        ("invites_ineligible", names(&[InviteState::Ineligible])),
        ("messages_failed_error", names(&[MessageStatus::Failed])),
        // Booleans are stored as 0 and 1 on both stores.
        ("wa_users_opted_out", BTreeSet::from(["1".to_string()])),
        // Free codes: `reward_id IS NULL` names no literal.
        ("reward_codes_free", BTreeSet::new()),
        // Sent messages, which the frequency cap counts: `sent_at IS NOT NULL`.
        ("messages_recipient_sent", BTreeSet::new()),
        // Milestone bonuses: `milestone IS NOT NULL`.
        ("rewards_bonus", BTreeSet::new()),
        ("inbox_events_state", names(QueueState::ALL)),
        ("jobs_state", names(QueueState::ALL)),
    ])
}

/// The PostgreSQL and SQLite migrations define the same schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_stores_migrate_to_the_same_schema() {
    let postgres = schema_of(Backend::Postgres).await;
    let sqlite = schema_of(Backend::Sqlite).await;
    assert!(
        postgres.columns.len() > 10,
        "the schema was read: {:?}",
        postgres.columns.keys()
    );
    println!(
        "compared: {} tables, {} columns, {} indexes, {} unique constraints, {} foreign keys, {} checks",
        postgres.columns.len(),
        postgres.columns.values().map(BTreeMap::len).sum::<usize>(),
        postgres.named_indexes.len(),
        postgres.unique_constraints.len(),
        postgres.foreign_keys.len(),
        postgres.checks.len()
    );
    let tables = |s: &Schema| s.columns.keys().cloned().collect::<Vec<_>>();
    assert_eq!(tables(&postgres), tables(&sqlite), "the same tables");
    for (table, columns) in &postgres.columns {
        assert_eq!(Some(columns), sqlite.columns.get(table), "the columns of {table}");
    }
    assert_eq!(postgres.primary_keys, sqlite.primary_keys, "primary keys");
    assert_eq!(postgres.named_indexes, sqlite.named_indexes, "indexes");
    assert_eq!(
        postgres.unique_constraints, sqlite.unique_constraints,
        "unique constraints"
    );
    assert_eq!(postgres.foreign_keys, sqlite.foreign_keys, "foreign keys");
    assert_eq!(postgres.checks, sqlite.checks, "CHECK constraints");
}

/// The state names in partial-index predicates and CHECK constraints are the sets the
/// enums give, on both stores.
async fn state_names_in_the_schema_are_the_enums(backend: Backend) {
    let schema = schema_of(backend).await;
    let expected = expected_state_sets();
    let mut seen = BTreeSet::new();
    for (name, index) in &schema.named_indexes {
        let Some(predicate) = &index.predicate else { continue };
        let wanted = expected
            .get(name.as_str())
            .unwrap_or_else(|| panic!("partial index {name} is not in expected_state_sets(): say what it stands for"));
        assert_eq!(predicate, wanted, "the predicate of {name}");
        seen.insert(name.as_str());
    }
    for (name, allowed) in &schema.checks {
        let wanted = expected
            .get(name.as_str())
            .unwrap_or_else(|| panic!("CHECK {name} is not in expected_state_sets()"));
        assert_eq!(allowed, wanted, "CHECK {name}");
        seen.insert(name.as_str());
    }
    let missing: Vec<_> = expected.keys().filter(|name| !seen.contains(*name)).collect();
    assert!(missing.is_empty(), "expected in the schema but not found: {missing:?}");
}

crate::both_backends!(state_names_in_the_schema_are_the_enums);
