//! The ONE store contract suite (`loyalty_testkit::store_contract`) against a real PostgreSQL
//! server: a cluster of its own (initdb, pg_ctl, a free loopback port), a fresh database,
//! migrated, then every check. Skipped, saying why, only where no PostgreSQL server is
//! installed and `LOYALTY_REQUIRE_SERVERS` is not `1` (CI sets it: there the suite must run).

mod common;

use std::sync::Arc;

use loyalty_core::ports::StateStore;
use loyalty_testkit::store_contract;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_meets_the_store_contract() -> anyhow::Result<()> {
    let Some(server) = common::server() else {
        return Ok(());
    };
    let (_, store) = common::store(&server, "contract").await?;
    store_contract::run_all(Arc::new(store) as Arc<dyn StateStore>).await
}

/// Personal data at rest on PostgreSQL: the `members` rows hold profiles sealed, and a
/// rotation with `reseal_members` moves them to the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_members_personal_data_is_sealed_and_resealed() -> anyhow::Result<()> {
    let Some(server) = common::server() else {
        return Ok(());
    };
    let (config, _) = common::store(&server, "sealed").await?;
    let open = |keys| {
        let config = config.clone();
        async move {
            let store = loyalty_postgres::PostgresStore::connect(&config, keys).await?;
            Ok(Arc::new(store) as Arc<dyn StateStore>)
        }
    };
    let raw = || {
        let config = config.clone();
        async move {
            let client = common::raw(&config).await?;
            let rows = client.query("SELECT state FROM members", &[]).await?;
            Ok(rows
                .iter()
                .flat_map(|r| r.get::<_, Vec<u8>>(0))
                .collect::<Vec<u8>>())
        }
    };
    store_contract::personal_data_is_sealed_and_resealed(open, raw).await
}
