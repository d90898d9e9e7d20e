//! `loyalty projections rebuild`: recomputes the dashboards' aggregates of every franchise
//! (or one) from the store's records (see `loyalty_core::projections`). Stop the engines
//! first; on the embedded store the data directory's lock makes sure of it.

use anyhow::{bail, Context};
use loyalty_core::projections::rebuild_dashboards;
use loyalty_domain::FranchiseId;

use crate::configuration::DevConfig;
use crate::startup::{open_store, OpenStore};

/// Rebuilds the dashboards of `franchise`, or of every franchise; prints one line each.
pub async fn rebuild(config: &DevConfig, franchise: Option<&str>) -> anyhow::Result<()> {
    let OpenStore { store, lock: _lock } = open_store(config).await?;
    let franchises = match franchise {
        Some(id) => {
            let id = FranchiseId::parse(id).map_err(|e| anyhow::anyhow!("--franchise: {e}"))?;
            match store.franchise(&id).await? {
                Some(f) => vec![f],
                None => bail!("no franchise {id} in this store"),
            }
        }
        None => store.franchises().await?,
    };
    for f in franchises {
        let started = std::time::Instant::now();
        let program = store
            .program(&f.id, f.program_version)
            .await?
            .with_context(|| {
                format!(
                    "franchise {} has no program version {}",
                    f.id, f.program_version
                )
            })?;
        let r = rebuild_dashboards(store.as_ref(), &f, &program)
            .await
            .with_context(|| format!("rebuilding the dashboards of franchise {}", f.id))?;
        println!(
            "franchise {}: rebuilt dashboards from {} events, {} members and {} ledger entries \
             in {:.1} s: {} aggregate rows, {} members' purchase days rewritten",
            f.id,
            r.events,
            r.members,
            r.ledger_entries,
            started.elapsed().as_secs_f64(),
            r.rows,
            r.members_updated
        );
        tracing::info!(franchise = %f.id, events = r.events, rows = r.rows, "dashboards rebuilt");
    }
    Ok(())
}
