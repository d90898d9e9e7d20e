//! Versioned CQL migrations.
//!
//! Each migration is a file `migrations/NNNN_name.cql` embedded in the binary, a list of
//! statements ending with `;` (lines starting with `--` are comments) in which `{keyspace}`
//! stands for the configured keyspace. [`migrate`] creates the keyspace if it is absent, then
//! applies, in version order, every migration that `schema_migrations` does not record, and
//! records it. Statements are written to be re-runnable (`IF NOT EXISTS`), so a migration
//! interrupted half-way is simply applied again. Run it from one process (`loyalty migrate`, a
//! deployment job), not from every replica at start-up: ScyllaDB's Raft-based schema makes
//! concurrent `CREATE TABLE IF NOT EXISTS` safe, but Cassandra can then create one table twice
//! under different ids. A recorded migration whose text changed since is refused: migrations
//! are append-only.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use loyalty_core::model::{ApiKey, Principal, Store};
use loyalty_core::{Error, Result};
use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

use crate::ScyllaConfig;

/// One schema migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// Every migration, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        cql: include_str!("../migrations/0001_init.cql"),
    },
    Migration {
        version: 2,
        name: "event_claims",
        cql: include_str!("../migrations/0002_event_claims.cql"),
    },
    Migration {
        version: 3,
        name: "dashboards",
        cql: include_str!("../migrations/0003_dashboards.cql"),
    },
    Migration {
        version: 4,
        name: "api_key_ids",
        cql: include_str!("../migrations/0004_api_key_ids.cql"),
    },
    Migration {
        version: 5,
        name: "member_due",
        cql: include_str!("../migrations/0005_member_due.cql"),
    },
    Migration {
        version: 6,
        name: "segments",
        cql: include_str!("../migrations/0006_segments.cql"),
    },
    Migration {
        version: 7,
        name: "reindex",
        cql: include_str!("../migrations/0007_reindex.cql"),
    },
    Migration {
        version: 8,
        name: "outbox",
        cql: include_str!("../migrations/0008_outbox.cql"),
    },
];

/// The migration of the due index, after which [`migrate`] adds the static due columns of
/// `member_events` (before recording it: an interrupted migration adds what is missing).
const MEMBER_DUE: u32 = 5;

/// The migration that creates `api_key_records`, which [`migrate`] then fills from the keys of
/// `api_keys` that have no id yet (before recording it: an interrupted fill is done again).
const API_KEY_IDS: u32 = 4;

/// The migration that creates `stores_by_franchise`, which [`migrate`] then fills from
/// `stores` (before recording it: an interrupted fill is done again).
const STORES_BY_FRANCHISE: u32 = 3;

impl Migration {
    /// The statements of the migration for `keyspace`.
    pub fn statements(&self, keyspace: &str) -> Vec<String> {
        let text: String = self
            .cql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        text.split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.replace("{keyspace}", keyspace))
            .collect()
    }

    /// FNV-1a of the migration's text, to notice an edited migration.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.cql.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("scylla migrate: {what}: {e}"))
}

/// Whether the server refused the statement as invalid or unknown (not as unreachable).
fn is_invalid(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid | DbError::SyntaxError | DbError::ConfigError,
            _
        ))
    )
}

async fn run(session: &Session, what: &str, cql: &str) -> Result<()> {
    session
        .query_unpaged(cql, ())
        .await
        .map(|_| ())
        .map_err(|e| unavailable(what, e))
}

/// Creates the keyspace (if absent) and applies the pending migrations; returns the versions
/// applied by this call (empty when the schema was up to date).
///
/// The keyspace is created with tablets disabled where the server knows the option (ScyllaDB 6
/// and later), because this store relies on lightweight transactions, which tablet keyspaces do
/// not support on every ScyllaDB version; Cassandra and older ScyllaDB refuse the option, and the
/// keyspace is then created without it.
pub async fn migrate(session: &Session, config: &ScyllaConfig) -> Result<Vec<u32>> {
    config.validate()?;
    let ks = &config.keyspace;
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {} AND durable_writes = true",
        config.replication.cql()
    );
    let no_tablets = format!("{create} AND tablets = {{'enabled': false}}");
    if let Err(e) = session.query_unpaged(no_tablets.as_str(), ()).await {
        if !is_invalid(&e) {
            return Err(unavailable("creating the keyspace", e));
        }
        run(session, "creating the keyspace", &create).await?;
    }
    run(
        session,
        "creating schema_migrations",
        &format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, \
             name text, checksum text, applied_at_ms bigint)"
        ),
    )
    .await?;

    let rows = session
        .query_unpaged(
            format!("SELECT version, checksum FROM {ks}.schema_migrations"),
            (),
        )
        .await
        .map_err(|e| unavailable("reading schema_migrations", e))?
        .into_rows_result()
        .map_err(|e| unavailable("reading schema_migrations", e))?;
    let mut applied: HashMap<i32, Option<String>> = HashMap::new();
    for row in rows
        .rows::<(i32, Option<String>)>()
        .map_err(|e| unavailable("reading schema_migrations", e))?
    {
        let (version, checksum) = row.map_err(|e| unavailable("reading schema_migrations", e))?;
        applied.insert(version, checksum);
    }

    let mut done = Vec::new();
    for m in MIGRATIONS {
        let version = i32::try_from(m.version)
            .map_err(|_| Error::Invalid(format!("migration version {} too large", m.version)))?;
        if let Some(recorded) = applied.get(&version) {
            if recorded.as_deref() != Some(m.checksum().as_str()) {
                return Err(Error::Invalid(format!(
                    "scylla migrate: migration {:04}_{} was changed after it was applied \
                     (recorded checksum {recorded:?}, now {}); add a new migration instead",
                    m.version,
                    m.name,
                    m.checksum()
                )));
            }
            continue;
        }
        tracing::info!(keyspace = %ks, version = m.version, name = m.name, "applying migration");
        for stmt in m.statements(ks) {
            run(
                session,
                &format!("migration {:04}_{}", m.version, m.name),
                &stmt,
            )
            .await?;
        }
        if m.version == STORES_BY_FRANCHISE {
            index_stores(session, ks).await?;
        }
        if m.version == API_KEY_IDS {
            adopt_legacy_keys(session, ks).await?;
        }
        if m.version == MEMBER_DUE {
            add_due_columns(session, ks).await?;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_migrations (version, name, checksum, applied_at_ms) \
                     VALUES (?, ?, ?, ?)"
                ),
                (version, m.name, m.checksum(), now_ms),
            )
            .await
            .map_err(|e| unavailable("recording a migration", e))?;
        done.push(m.version);
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| unavailable("waiting for schema agreement", e))?;
    Ok(done)
}

/// Adds the static columns `due_partition int` and `due_at bigint` to `member_events`, each
/// unless `system_schema` shows it there already (CQL has no `ADD IF NOT EXISTS`).
async fn add_due_columns(session: &Session, ks: &str) -> Result<()> {
    let what = "adding the due columns of member_events";
    for (column, kind) in [("due_partition", "int"), ("due_at", "bigint")] {
        let found = session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? \
                 AND table_name = 'member_events' AND column_name = ?",
                (ks, column),
            )
            .await
            .map_err(|e| unavailable(what, e))?
            .into_rows_result()
            .map_err(|e| unavailable(what, e))?
            .rows_num();
        if found == 0 {
            let alter = format!("ALTER TABLE {ks}.member_events ADD {column} {kind} static");
            run(session, what, &alter).await?;
        }
    }
    Ok(())
}

/// Fills `stores_by_franchise` from `stores` (idempotent: the same rows again).
async fn index_stores(session: &Session, ks: &str) -> Result<()> {
    let what = "indexing stores by franchise";
    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.stores_by_franchise (franchise_id, store_id, body) VALUES (?, ?, ?)"
        ))
        .await
        .map_err(|e| unavailable(what, e))?;
    let mut rows = session
        .query_iter(format!("SELECT body FROM {ks}.stores"), ())
        .await
        .map_err(|e| unavailable(what, e))?
        .rows_stream::<(Option<Vec<u8>>,)>()
        .map_err(|e| unavailable(what, e))?;
    while let Some((body,)) = rows.try_next().await.map_err(|e| unavailable(what, e))? {
        let Some(body) = body else { continue };
        let store: Store = serde_json::from_slice(&body)
            .map_err(|e| Error::Corrupt(format!("scylla migrate: {what}: a store: {e}")))?;
        session
            .execute_unpaged(
                &insert,
                (
                    store.franchise_id.as_str(),
                    store.id.as_str(),
                    body.as_slice(),
                ),
            )
            .await
            .map_err(|e| unavailable(what, e))?;
    }
    Ok(())
}

/// Gives every key of `api_keys` without an id its record under its derived id
/// ([`ApiKey::adopted`]; `IF NOT EXISTS`, so a second run changes nothing) and its principal
/// the id.
async fn adopt_legacy_keys(session: &Session, ks: &str) -> Result<()> {
    let what = "giving API keys an id";
    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.api_key_records (franchise_id, key_id, version, key_hash, body) \
             VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
        ))
        .await
        .map_err(|e| unavailable(what, e))?;
    let index = session
        .prepare(format!(
            "INSERT INTO {ks}.api_keys (key_hash, body) VALUES (?, ?)"
        ))
        .await
        .map_err(|e| unavailable(what, e))?;
    let mut rows = session
        .query_iter(format!("SELECT key_hash, body FROM {ks}.api_keys"), ())
        .await
        .map_err(|e| unavailable(what, e))?
        .rows_stream::<(String, Option<Vec<u8>>)>()
        .map_err(|e| unavailable(what, e))?;
    let now = loyalty_core::provisioning::now();
    while let Some((hash, body)) = rows.try_next().await.map_err(|e| unavailable(what, e))? {
        let Some(body) = body else { continue };
        let p: Principal = serde_json::from_slice(&body)
            .map_err(|e| Error::Corrupt(format!("scylla migrate: {what}: a principal: {e}")))?;
        if p.key_id.is_some() {
            continue;
        }
        let Some(key) = ApiKey::adopted(&hash, &p, now) else {
            continue;
        };
        let record = serde_json::to_vec(&key).map_err(|e| unavailable(what, e))?;
        let principal = serde_json::to_vec(&key.principal()).map_err(|e| unavailable(what, e))?;
        session
            .execute_unpaged(
                &insert,
                (
                    key.franchise_id.as_str(),
                    key.id.as_str(),
                    1i64,
                    hash.as_str(),
                    record.as_slice(),
                ),
            )
            .await
            .map_err(|e| unavailable(what, e))?;
        session
            .execute_unpaged(&index, (hash.as_str(), principal.as_slice()))
            .await
            .map_err(|e| unavailable(what, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_qualified_statements() {
        let stmts = MIGRATIONS[0].statements("ks1");
        assert_eq!(stmts.len(), 6, "{stmts:#?}");
        for s in &stmts {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS ks1."), "{s}");
            assert!(!s.contains("{keyspace}") && !s.contains("--"), "{s}");
        }
    }

    #[test]
    fn the_dashboards_migration_creates_its_tables() {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.version == STORES_BY_FRANCHISE)
            .expect("migration 3");
        let stmts = m.statements("ks1");
        assert_eq!(stmts.len(), 6, "{stmts:#?}");
        for s in &stmts {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS ks1."), "{s}");
        }
        assert!(stmts[0].contains("ks1.stores_by_franchise"), "{}", stmts[0]);
    }

    #[test]
    fn the_key_ids_migration_creates_the_key_records() {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.version == API_KEY_IDS)
            .expect("migration 4");
        let stmts = m.statements("ks1");
        assert_eq!(stmts.len(), 1, "{stmts:#?}");
        assert!(stmts[0].starts_with("CREATE TABLE IF NOT EXISTS ks1.api_key_records"));
        assert!(stmts[0].contains("PRIMARY KEY ((franchise_id), key_id)"));
    }

    #[test]
    fn the_segments_migration_creates_its_table() {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.version == 6)
            .expect("migration 6");
        let stmts = m.statements("ks1");
        assert_eq!(stmts.len(), 1, "{stmts:#?}");
        assert!(stmts[0].starts_with("CREATE TABLE IF NOT EXISTS ks1.dashboard_segments"));
        assert!(stmts[0].contains("PRIMARY KEY (franchise_id, segment, day)"));
    }

    #[test]
    fn the_outbox_migration_creates_its_tables() {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.name == "outbox")
            .expect("the outbox migration");
        let stmts = m.statements("ks1");
        assert_eq!(stmts.len(), 2, "{stmts:#?}");
        assert!(stmts[0].starts_with("CREATE TABLE IF NOT EXISTS ks1.outbox ("));
        assert!(stmts[0].contains("id text PRIMARY KEY"));
        assert!(stmts[1].starts_with("CREATE TABLE IF NOT EXISTS ks1.outbox_pending"));
        assert!(stmts[1].contains("PRIMARY KEY ((partition), next_attempt_at, id)"));
    }

    #[test]
    fn versions_are_increasing() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        assert_eq!(MIGRATIONS[0].checksum(), MIGRATIONS[0].checksum());
    }
}
