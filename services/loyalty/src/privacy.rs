//! `loyalty privacy reseal`: writes every stored member again under the first key of
//! `LOYALTY_PII_KEYS` (see `loyalty_core::sealing`). Safe beside running engines on a shared
//! store (each write is conditional on the member's version); on the embedded store the data
//! directory's lock makes the node stop first.

use loyalty_core::sealing::reseal_members;

use crate::configuration::DevConfig;
use crate::startup::{open_store, OpenStore};

/// Reseals every member of the configured store; prints what it did.
pub async fn reseal(config: &DevConfig) -> anyhow::Result<()> {
    let keys = config.keys()?;
    let OpenStore { store, lock: _lock } = open_store(config).await?;
    let started = std::time::Instant::now();
    let report = reseal_members(store.as_ref()).await?;
    println!(
        "resealed {} members under the key `{}` in {:.1} s ({} changed meanwhile by an engine, \
         which sealed them itself); keys in the ring: {}",
        report.members,
        keys.current(),
        started.elapsed().as_secs_f64(),
        report.changed_meanwhile,
        keys.ids().join(", ")
    );
    Ok(())
}
