//! `loyalty audit`: checks every member's stored state against its ledger, and Redis (when
//! `LOYALTY_REDIS_URL` is set) against the store (see `loyalty_core::audit`). Prints one line
//! per difference and a summary; exits non-zero when anything differs, so that scripts and
//! tests can run it after a fault. With the embedded store the node must be stopped (the data
//! directory's lock refuses a second process); on a shared store it can run beside the engines.

use anyhow::Context;
use loyalty_core::audit::{audit, AuditOptions};
use loyalty_core::programs::ProgramCache;
use loyalty_domain::FranchiseId;

use crate::configuration::DevConfig;
use crate::startup::{open_store, OpenStore};

/// Runs the audit; `Ok(false)` when differences were found.
pub async fn run(
    config: &DevConfig,
    franchise: Option<&str>,
    repair_cache: bool,
) -> anyhow::Result<bool> {
    let franchise = franchise
        .map(FranchiseId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--franchise: {e}"))?;
    let OpenStore { store, lock: _lock } = open_store(config).await?;
    let cache = match &config.redis_url {
        Some(url) => Some(
            loyalty_redis::RedisCache::connect(url, loyalty_redis::RedisCacheOptions::default())
                .await
                .context("connecting to Redis (LOYALTY_REDIS_URL)")?,
        ),
        None => None,
    };
    if repair_cache && cache.is_none() {
        anyhow::bail!("--repair-cache needs LOYALTY_REDIS_URL (the embedded cache lives in the node's process)");
    }
    let programs = ProgramCache::new(std::sync::Arc::clone(&store));
    let started = std::time::Instant::now();
    let options = AuditOptions {
        franchise,
        repair_cache,
    };
    let report = audit(
        store.as_ref(),
        &programs,
        cache
            .as_ref()
            .map(|c| c as &dyn loyalty_core::ports::HotCache),
        &options,
    )
    .await?;
    for d in &report.differences {
        println!("DIFFERENCE {d}");
    }
    let cache_line = if cache.is_some() {
        format!(
            "{} cached statuses compared ({} members not cached), {} repaired",
            report.cache_checked, report.cache_missing, report.cache_repaired
        )
    } else {
        "cache not checked (no LOYALTY_REDIS_URL)".to_string()
    };
    println!(
        "audited {} members and {} ledger entries in {:.1} s: {} differences; {cache_line}",
        report.members,
        report.ledger_entries,
        started.elapsed().as_secs_f64(),
        report.differences.len()
    );
    tracing::info!(
        members = report.members,
        differences = report.differences.len(),
        repaired = report.cache_repaired,
        "audit done"
    );
    Ok(report.differences.is_empty())
}
