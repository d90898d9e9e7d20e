//! The demo franchise `loyalty dev` creates on first start, so that a checkout can be tried
//! at once. Its keys are printed and saved to `<data_dir>/demo-keys.env` (shell syntax), the
//! only place they exist in clear.
//!
//! On that first start `loyalty dev` also gives it a few months of generated history
//! ([`loyalty_core::demo_history`]), so that its dashboard is alive at once: when the franchise
//! is created, [`ensure_demo`] leaves `<data_dir>/demo-history.pending` naming it, its stores and
//! the generator's seed and clock; [`append_pending_history`] then appends the generated
//! commands to the command topic, where the engine applies them like POS traffic (exactly
//! once, projections included), and deletes the file. A start interrupted in between appends
//! the same history again on the next start (the same events, replays for those already
//! applied); a start with the history off (or any other command) deletes the file instead, so
//! history comes only with the franchise's creation.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use loyalty_core::demo_history::{self, HistoryCounts, HistorySpec};
use loyalty_core::ports::{partition_for, EventLog, StateStore};
use loyalty_core::provisioning::{create_franchise, create_store, now};
use loyalty_core::sealing::KeyRing;
use loyalty_domain::{FranchiseId, Program, StoreId, Timestamp};

pub const KEYS_FILE: &str = "demo-keys.env";
/// Marks a demo franchise whose history is still to be appended (no secret in it).
pub const HISTORY_FILE: &str = "demo-history.pending";
/// Appends in flight at once, each lane in order (a member's events share a lane).
const APPEND_LANES: u32 = 32;

/// Creates the demo franchise if the store has no franchise yet, and leaves its history
/// pending for [`append_pending_history`].
pub async fn ensure_demo(store: &dyn StateStore, data_dir: &Path) -> anyhow::Result<()> {
    let keys_path = data_dir.join(KEYS_FILE);
    if !store.franchises().await?.is_empty() {
        if keys_path.exists() {
            println!("demo keys: {}", keys_path.display());
        }
        return Ok(());
    }
    let (f, hq_key) = create_franchise(store, "Demo Coffee", &Program::demo()).await?;
    let mut stores = Vec::new();
    let mut env = String::new();
    let _ = writeln!(env, "FRANCHISE_ID={}", f.id);
    let _ = writeln!(env, "HQ_KEY={hq_key}");
    for (i, name) in [
        "Demo Coffee Bastille",
        "Demo Coffee Opéra",
        "Demo Coffee Gare du Nord",
    ]
    .iter()
    .enumerate()
    {
        let (s, key) = create_store(store, &f.id, name).await?;
        stores.push(s.id.clone());
        let _ = writeln!(env, "STORE{}_ID={}", i + 1, s.id);
        let _ = writeln!(env, "STORE{}_KEY={key}", i + 1);
    }
    std::fs::write(&keys_path, &env).with_context(|| format!("writing {}", keys_path.display()))?;
    let pending = PendingHistory {
        franchise_id: f.id.clone(),
        stores,
        spec: HistorySpec::new(demo_history::DEFAULT_SEED, now()),
    };
    let history_path = data_dir.join(HISTORY_FILE);
    std::fs::write(&history_path, pending.to_text())
        .with_context(|| format!("writing {}", history_path.display()))?;
    println!(
        "demo franchise \"Demo Coffee\" created with three stores; keys (also in {}):",
        keys_path.display()
    );
    for line in env.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// The history [`ensure_demo`] left to append: what to generate it from, again identically.
#[derive(Debug, PartialEq, Eq)]
struct PendingHistory {
    franchise_id: FranchiseId,
    /// The busiest first ([`demo_history::STORE_WEIGHTS`]).
    stores: Vec<StoreId>,
    spec: HistorySpec,
}

impl PendingHistory {
    fn to_text(&self) -> String {
        let stores: Vec<&str> = self.stores.iter().map(|s| s.as_str()).collect();
        format!(
            "# The demo franchise's generated history, appended by the next `loyalty dev` \
             (which deletes this file).\nfranchise_id={}\nstores={}\nseed={}\nnow_ms={}\n\
             days={}\nmembers={}\nanonymous_per_day={}\n",
            self.franchise_id,
            stores.join(","),
            self.spec.seed,
            self.spec.now.0,
            self.spec.days,
            self.spec.members,
            self.spec.anonymous_per_day
        )
    }

    fn parse(text: &str) -> anyhow::Result<PendingHistory> {
        let get = |name: &str| -> anyhow::Result<&str> {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim())
                .with_context(|| format!("no {name}"))
        };
        let num = |name: &str| -> anyhow::Result<i64> {
            get(name)?
                .parse()
                .with_context(|| format!("{name} is not a number"))
        };
        Ok(PendingHistory {
            franchise_id: FranchiseId::parse(get("franchise_id")?)?,
            stores: get("stores")?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(StoreId::parse)
                .collect::<Result<_, _>>()?,
            spec: HistorySpec {
                seed: num("seed")? as u64,
                now: Timestamp(num("now_ms")?),
                days: u32::try_from(num("days")?)?,
                members: u32::try_from(num("members")?)?,
                anonymous_per_day: u32::try_from(num("anonymous_per_day")?)?,
            },
        })
    }
}

/// Appends the demo franchise's generated history to `topic` if [`ensure_demo`] just created
/// the franchise and `enabled` (`loyalty dev` with `demo_history`), and returns its counts;
/// without `enabled`, forgets it. Prints one line with the counts (no personal data). A failure
/// is reported and leaves the history pending for the next start: the demo is no reason not to
/// start.
pub async fn append_pending_history(
    log: &Arc<dyn EventLog>,
    store: &dyn StateStore,
    keys: &KeyRing,
    topic: &str,
    data_dir: &Path,
    enabled: bool,
) -> Option<HistoryCounts> {
    let path = data_dir.join(HISTORY_FILE);
    if !path.exists() {
        return None;
    }
    let forget = || {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(
                file = %path.display(),
                error = %e,
                "could not delete the pending demo history"
            );
        }
    };
    if !enabled {
        forget();
        return None;
    }
    match append_history(log, store, keys, topic, &path).await {
        Ok(counts) => {
            forget();
            Some(counts)
        }
        Err(e) => {
            tracing::warn!(
                file = %path.display(),
                error = %format!("{e:#}"),
                "the demo history was not appended; the next start tries again"
            );
            None
        }
    }
}

async fn append_history(
    log: &Arc<dyn EventLog>,
    store: &dyn StateStore,
    keys: &KeyRing,
    topic: &str,
    path: &Path,
) -> anyhow::Result<HistoryCounts> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pending = PendingHistory::parse(&text).with_context(|| format!("in {}", path.display()))?;
    let franchise = store
        .franchise(&pending.franchise_id)
        .await?
        .context("the demo franchise is gone")?;
    let program = store
        .program(&franchise.id, franchise.program_version)
        .await?
        .context("the demo franchise has no program")?;
    let all = store.stores_of(&franchise.id).await?;
    let stores: Vec<_> = pending
        .stores
        .iter()
        .filter_map(|id| all.iter().find(|s| &s.id == id).cloned())
        .collect();
    let history = demo_history::generate(&franchise, &stores, &program, &pending.spec)?;
    // In order within each lane; a member's events share one (their key picks it), so the
    // engine sees them in order whatever the log.
    let mut lanes: Vec<Vec<_>> = (0..APPEND_LANES).map(|_| Vec::new()).collect();
    for env in history.envelopes {
        lanes[partition_for(&env.key(), APPEND_LANES) as usize].push(env);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let (log, topic, keys) = (Arc::clone(log), topic.to_owned(), keys.clone());
        tasks.spawn(async move {
            for env in lane {
                log.append(&topic, &env.key(), env.encode(&keys)?, Vec::new())
                    .await?;
            }
            Ok::<_, loyalty_core::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("appending the demo history")??;
    }
    println!(
        "demo history: appended {} over the last {} days; the engine applies them now",
        history.counts, pending.spec.days
    );
    Ok(history.counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_history_reads_back_as_written() {
        let p = PendingHistory {
            franchise_id: FranchiseId::parse("f_123").unwrap(),
            stores: vec![
                StoreId::parse("s_1").unwrap(),
                StoreId::parse("s_2").unwrap(),
            ],
            spec: HistorySpec::new(7, Timestamp(1_795_620_600_000)),
        };
        assert_eq!(PendingHistory::parse(&p.to_text()).unwrap(), p);
        assert!(PendingHistory::parse("franchise_id=f_1\n").is_err());
    }
}
