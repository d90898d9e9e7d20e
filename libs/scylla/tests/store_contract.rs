//! The store contract suite (`loyalty_testkit::store_contract`) against a real ScyllaDB (or
//! Cassandra) node named by `LOYALTY_SCYLLA_NODES` (`host:9042[,host:9042...]`), in a fresh
//! keyspace (SimpleStrategy, one replica) dropped at the end. Without the variable the tests
//! say they were skipped, and why: no ScyllaDB can be installed on this project's machines.

use std::sync::Arc;

use loyalty_core::ports::StateStore;
use loyalty_scylla::{migrate, session, ScyllaConfig, ScyllaStore, MIGRATIONS};
use loyalty_testkit::store_contract;

const SKIPPED: &str =
    "SKIPPED: LOYALTY_SCYLLA_NODES not set (no ScyllaDB can be installed on this machine)";

/// A dev config on a fresh random keyspace, or `None` (and the SKIPPED line) without a node.
fn config() -> Option<ScyllaConfig> {
    let nodes = std::env::var("LOYALTY_SCYLLA_NODES").unwrap_or_default();
    let nodes = ScyllaConfig::parse_nodes(&nodes);
    if nodes.is_empty() {
        println!("{SKIPPED}");
        eprintln!("{SKIPPED}");
        return None;
    }
    let keyspace = format!("loyalty_test_{}", uuid::Uuid::new_v4().simple());
    Some(ScyllaConfig::dev(nodes, keyspace))
}

async fn drop_keyspace(config: &ScyllaConfig) -> anyhow::Result<()> {
    let s = session(config).await?;
    s.query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", config.keyspace), ())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_store_meets_the_store_contract() -> anyhow::Result<()> {
    let Some(config) = config() else {
        return Ok(());
    };
    let s = session(&config).await?;
    let applied = migrate(&s, &config).await?;
    assert_eq!(applied.len(), MIGRATIONS.len());
    let store = Arc::new(
        ScyllaStore::from_session(s, &config, loyalty_core::sealing::KeyRing::dev()).await?,
    );
    let result = store_contract::run_all(store as Arc<dyn StateStore>).await;
    drop_keyspace(&config).await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_connect_needs_them() -> anyhow::Result<()> {
    let Some(config) = config() else {
        return Ok(());
    };
    // Before migrating, preparing the statements fails with a hint.
    let early = ScyllaStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await;
    assert!(early.is_err(), "connect before migrate succeeded");

    let s = session(&config).await?;
    assert_eq!(migrate(&s, &config).await?.len(), MIGRATIONS.len());
    assert!(
        migrate(&s, &config).await?.is_empty(),
        "a second migrate applied something"
    );
    let store = ScyllaStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?;
    assert!(store.franchises().await?.is_empty());
    drop_keyspace(&config).await
}
