//! The store contract suite (`loyalty_testkit::store_contract`) against the embedded redb
//! store, on a fresh file.

use std::sync::Arc;

use loyalty_core::ports::StateStore;
use loyalty_embedded::EmbeddedStore;
use loyalty_testkit::store_contract;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_meets_the_store_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    store_contract::run_all(store as Arc<dyn StateStore>).await
}
