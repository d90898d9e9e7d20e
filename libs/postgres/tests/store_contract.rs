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
