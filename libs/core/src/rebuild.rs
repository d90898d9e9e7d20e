//! Rebuilding a hot cache from the durable store.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::shard::render_status;
use crate::ports::{HotCache, StateStore};
use crate::programs::ProgramCache;
use crate::Result;
use loyalty_domain::{FranchiseId, MemberId, Program};

/// A page size for [`rebuild`]: large enough that the round trips do not dominate, small
/// enough that one pipelined write stays a few hundred kilobytes.
pub const DEFAULT_REBUILD_PAGE: usize = 500;

/// Writes every member's status from `store` into `cache`, `page` members at a time (one
/// store read and one pipelined cache write per page), and returns how many statuses were
/// rendered and handed to the cache (a status the cache already holds in a newer version is
/// kept, and still counted).
///
/// Each status is rendered with the franchise's *current* program (the franchise's
/// `program_version`, read once per franchise per rebuild), as the engine renders it. The
/// rebuild can run while the engines write: the cache keeps the newer of two versions, so a
/// status read here before an engine's write cannot overwrite what the engine wrote after.
///
/// A member whose franchise or current program is missing from the store cannot be rendered:
/// it is skipped with a warning (the gateway falls back to the store on a cache miss), and not
/// counted. A store or cache error stops the rebuild and is returned; running it again is safe.
pub async fn rebuild(
    store: &dyn StateStore,
    programs: &ProgramCache,
    cache: &dyn HotCache,
    page: usize,
) -> Result<u64> {
    let page = page.max(1);
    let mut after: Option<MemberId> = None;
    let mut current: HashMap<FranchiseId, Option<(u32, Arc<Program>)>> = HashMap::new();
    let mut written = 0u64;
    let mut skipped = 0u64;
    loop {
        let members = store.members_after(after.as_ref(), page).await?;
        let Some(last) = members.last() else {
            break;
        };
        after = Some(last.member_id.clone());
        let last_page = members.len() < page;

        let mut batch = Vec::with_capacity(members.len());
        for member in &members {
            let program = match current.get(&member.franchise_id) {
                Some(p) => p.clone(),
                None => {
                    let p = programs.current_versioned(&member.franchise_id).await?;
                    current.insert(member.franchise_id.clone(), p.clone());
                    p
                }
            };
            match program {
                Some((version, program)) => {
                    batch.push((
                        member.member_id.clone(),
                        render_status(member, &program, version),
                    ));
                }
                None => skipped += 1,
            }
        }
        written += batch.len() as u64;
        if !batch.is_empty() {
            cache.put_statuses(batch).await?;
        }
        if last_page {
            break;
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "cache rebuild skipped members whose franchise or current program is missing"
        );
    }
    tracing::info!(written, "hot cache rebuilt from the store");
    Ok(written)
}
