//! The store contract suite (`loyalty_testkit::store_contract`) against the embedded redb
//! store, on a fresh file.

use std::sync::Arc;

use loyalty_core::ports::StateStore;
use loyalty_embedded::EmbeddedStore;
use loyalty_testkit::store_contract;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_meets_the_store_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path(), loyalty_core::sealing::KeyRing::dev())?;
    store_contract::run_all(store as Arc<dyn StateStore>).await
}

/// Effects committed without a sync are durable after a clean close, and so are synced ones:
/// reopening the file finds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_keeps_unsynced_commits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path(), loyalty_core::sealing::KeyRing::dev())?;
    let synced = store_contract::enrol_one(store.as_ref(), "synced").await?;
    store.sync().await?;
    let unsynced = store_contract::enrol_one(store.as_ref(), "unsynced").await?;
    drop(store);
    let store = EmbeddedStore::open(dir.path(), loyalty_core::sealing::KeyRing::dev())?;
    anyhow::ensure!(store.member(&synced.member_id).await?.as_ref() == Some(&synced));
    anyhow::ensure!(store.member(&unsynced.member_id).await?.as_ref() == Some(&unsynced));
    Ok(())
}

/// Personal data at rest on the embedded store: no profile field in clear anywhere in the
/// database file, and a rotation with `reseal_members` moves members to the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_members_personal_data_is_sealed_and_resealed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let open = |keys| {
        let path = path.clone();
        async move { Ok(EmbeddedStore::open(&path, keys)? as Arc<dyn StateStore>) }
    };
    let raw = || {
        let file = path.join("state.redb");
        async move { Ok(std::fs::read(file)?) }
    };
    store_contract::personal_data_is_sealed_and_resealed(open, raw).await
}
