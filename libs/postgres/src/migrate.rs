//! Versioned SQL migrations.
//!
//! Each migration is a file `migrations/NNNN_name.sql` embedded in the binary with
//! `include_str!`. [`migrate`] applies, in version order, every migration that the
//! `schema_migrations` table does not record, each in its own transaction together with the
//! row that records it (`version, name, checksum, applied_at`): a migration is applied whole or
//! not at all, and an interrupted `migrate` is simply run again. Every transaction first takes
//! `pg_advisory_xact_lock(MIGRATION_LOCK)` and only then reads `schema_migrations`, so
//! concurrent `migrate` calls (two deployment jobs, or every replica at start-up) queue behind
//! each other and each migration is applied once. The lock is per database; it is released by
//! the commit (or by the server if the session dies).
//!
//! A recorded migration whose text changed since it was applied is refused (its SHA-256 is
//! recorded): migrations are append-only; change the schema with a new file. Versions recorded
//! by a newer build are left alone (a rolling upgrade runs old and new builds side by side, and
//! migrations only ever add).
//!
//! Migrations run without a statement timeout (`SET LOCAL statement_timeout = 0`): building an
//! index on a large table, or waiting for another `migrate`, may take a while.

use std::collections::BTreeMap;

use loyalty_core::{Error, Result};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

use crate::error::{describe, pg};
use crate::PostgresConfig;

/// One schema migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "event_claims",
        sql: include_str!("../migrations/0002_event_claims.sql"),
    },
    Migration {
        version: 3,
        name: "dashboards",
        sql: include_str!("../migrations/0003_dashboards.sql"),
    },
    Migration {
        version: 4,
        name: "api_key_ids",
        sql: include_str!("../migrations/0004_api_key_ids.sql"),
    },
    Migration {
        version: 5,
        name: "member_due",
        sql: include_str!("../migrations/0005_member_due.sql"),
    },
    Migration {
        version: 6,
        name: "segments",
        sql: include_str!("../migrations/0006_segments.sql"),
    },
    Migration {
        version: 7,
        name: "reindex",
        sql: include_str!("../migrations/0007_reindex.sql"),
    },
    Migration {
        version: 8,
        name: "outbox",
        sql: include_str!("../migrations/0008_outbox.sql"),
    },
];

/// Key of the advisory lock that serializes migrations (any constant; "loyalty" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x006c_6f79_616c_7479;

const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     version integer PRIMARY KEY, \
     name text NOT NULL, \
     checksum text NOT NULL, \
     applied_at timestamptz NOT NULL DEFAULT now())";

impl Migration {
    /// SHA-256 of the migration's text, hex: recorded with it, to notice an edited migration.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `NNNN_name`, as the file is named.
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }

    fn version_i32(&self) -> Result<i32> {
        i32::try_from(self.version)
            .map_err(|_| Error::Invalid(format!("migration version {} is too large", self.version)))
    }
}

/// The latest schema version this build knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Opens one connection (outside any pool) with the configured timeouts.
pub(crate) async fn connect_one(config: &PostgresConfig) -> Result<Client> {
    let pg_config = config.pg_config()?;
    let (client, connection) = pg_config
        .connect(NoTls)
        .await
        .map_err(|e| pg(&format!("connecting to {}", config.redacted_url()), &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %describe(&e), "postgres: migration connection closed");
        }
    });
    Ok(client)
}

/// `version → checksum` of every recorded migration.
async fn recorded(
    client: &impl tokio_postgres::GenericClient,
) -> std::result::Result<BTreeMap<i32, String>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        out.insert(row.try_get(0)?, row.try_get(1)?);
    }
    Ok(out)
}

/// Refuses a recorded migration whose text is not this build's.
fn check_checksums(recorded: &BTreeMap<i32, String>) -> Result<()> {
    for m in MIGRATIONS {
        if let Some(sum) = recorded.get(&m.version_i32()?) {
            if *sum != m.checksum() {
                return Err(Error::Invalid(format!(
                    "postgres: migration {} was changed after it was applied (recorded \
                     checksum {sum}, this build has {}); migrations are append-only: restore \
                     the file and add a new migration instead",
                    m.label(),
                    m.checksum()
                )));
            }
        }
    }
    Ok(())
}

/// Applies the pending migrations to the database of `config.url`; returns the versions this
/// call applied (empty when the schema was up to date, or when a concurrent `migrate` applied
/// them first). See the module documentation.
pub async fn migrate(config: &PostgresConfig) -> Result<Vec<u32>> {
    let mut client = connect_one(config).await?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let version = m.version_i32()?;
        let what = format!("applying migration {}", m.label());
        let tx = client.transaction().await.map_err(|e| pg(&what, &e))?;
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(|e| pg(&what, &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| pg("taking the migration lock", &e))?;
        tx.batch_execute(CREATE_SCHEMA_MIGRATIONS)
            .await
            .map_err(|e| pg("creating schema_migrations", &e))?;
        let done = recorded(&tx)
            .await
            .map_err(|e| pg("reading schema_migrations", &e))?;
        check_checksums(&done)?;
        if done.contains_key(&version) {
            tx.commit().await.map_err(|e| pg(&what, &e))?;
            continue;
        }
        tracing::info!(
            url = %config.redacted_url(),
            version = m.version,
            name = m.name,
            "applying migration"
        );
        tx.batch_execute(m.sql).await.map_err(|e| pg(&what, &e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&version, &m.name, &m.checksum()],
        )
        .await
        .map_err(|e| pg(&format!("recording migration {}", m.label()), &e))?;
        tx.commit().await.map_err(|e| pg(&what, &e))?;
        applied.push(m.version);
    }
    Ok(applied)
}

/// Checks that the database is at this build's latest migration (every migration recorded,
/// none edited); the error says what to run.
pub(crate) async fn check_schema(
    client: &impl tokio_postgres::GenericClient,
    url: &str,
) -> Result<()> {
    let done = match recorded(client).await {
        Ok(done) => done,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(Error::Invalid(format!(
                "postgres: the database {url} has no schema (no schema_migrations table): run \
                 `loyalty migrate` first"
            )))
        }
        Err(e) => return Err(pg("reading schema_migrations", &e)),
    };
    check_checksums(&done)?;
    let mut pending = Vec::new();
    for m in MIGRATIONS {
        if !done.contains_key(&m.version_i32()?) {
            pending.push(m.label());
        }
    }
    if !pending.is_empty() {
        let at = done.keys().next_back().copied().unwrap_or(0);
        return Err(Error::Invalid(format!(
            "postgres: the database {url} is at schema version {at}, this build needs {} \
             (pending: {}): run `loyalty migrate` first",
            latest_version(),
            pending.join(", ")
        )));
    }
    if let Some(newer) = done
        .keys()
        .next_back()
        .filter(|v| i64::from(**v) > i64::from(latest_version()))
    {
        tracing::warn!(
            url,
            schema_version = newer,
            build_version = latest_version(),
            "postgres: the schema is newer than this build (a rolling upgrade?)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_from_one_and_match_the_files() {
        assert_eq!(MIGRATIONS[0].version, 1);
        for w in MIGRATIONS.windows(2) {
            // Increasing; a gap is a version another branch holds (7: merged later).
            assert!(
                w[0].version < w[1].version,
                "{} then {}",
                w[0].label(),
                w[1].label()
            );
        }
        for m in MIGRATIONS {
            assert!(
                m.sql.starts_with(&format!("-- {}:", m.label())),
                "{} must start with its label",
                m.label()
            );
            assert_eq!(m.checksum().len(), 64);
            assert_eq!(m.checksum(), m.checksum());
        }
        assert_ne!(MIGRATIONS[0].checksum(), MIGRATIONS[1].checksum());
        assert_eq!(latest_version(), 8);
    }

    #[test]
    fn an_edited_migration_is_refused() {
        let mut done = BTreeMap::new();
        done.insert(1, MIGRATIONS[0].checksum());
        assert!(check_checksums(&done).is_ok());
        done.insert(2, "0".repeat(64));
        let e = check_checksums(&done).unwrap_err().to_string();
        assert!(
            e.contains("0002_event_claims") && e.contains("append-only"),
            "{e}"
        );
    }
}
