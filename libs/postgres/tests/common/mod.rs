//! Shared by the PostgreSQL tests: a real server per test (skipped, with the reason, when this
//! machine has none and `LOYALTY_REQUIRE_SERVERS` is not `1`), fresh databases on it, and
//! domain values built with the real rules, as the engine builds them.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::Context;
use loyalty_domain::Fingerprint;
use loyalty_postgres::{migrate, PostgresConfig, PostgresStore};
use loyalty_testkit::postgres::PostgresServer;

/// A started server, or `None` after printing why the test is skipped.
pub fn server() -> Option<PostgresServer> {
    if let Err(reason) = PostgresServer::available() {
        println!("SKIPPED: {reason}");
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    match PostgresServer::start() {
        Ok(s) => Some(s),
        Err(e) => panic!("PostgreSQL is installed but did not start: {e:#}"),
    }
}

/// A config for a new database `name` on `server`, with small timeouts for tests.
pub fn fresh(server: &PostgresServer, name: &str) -> anyhow::Result<PostgresConfig> {
    let url = server.create_database(name)?;
    let mut config = PostgresConfig::new(url);
    config.pool_size = 4;
    config.connect_timeout = Duration::from_secs(3);
    config.statement_timeout = Duration::from_secs(20);
    Ok(config)
}

/// A migrated, connected store on a new database `name`.
pub async fn store(
    server: &PostgresServer,
    name: &str,
) -> anyhow::Result<(PostgresConfig, PostgresStore)> {
    let config = fresh(server, name)?;
    migrate(&config).await.context("migrate")?;
    let store = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev())
        .await
        .context("connect")?;
    Ok((config, store))
}

/// A raw driver connection (for tests that look behind the adapter).
pub async fn raw(config: &PostgresConfig) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub fn fp(s: &str) -> Fingerprint {
    Fingerprint::of(&[s.as_bytes()])
}

/// Domain values built with the real rules, as the engine builds them: the store contract's
/// scenario builder.
#[allow(unused_imports)]
pub use loyalty_testkit::store_contract::{Effect, Scenario as Sim};
