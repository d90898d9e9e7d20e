//! `loyalty audit`: every member's stored state checked against its ledger, and the hot cache
//! against the store.
//!
//! For each member (the store scanned in pages): its ledger, read whole, is checked by the
//! domain's [`loyalty_domain::audit`] (balance chain, counters, lots, tier, stamps, vouchers);
//! and, when a cache is given, the cached status must be the one the engine would render from
//! the stored state (same version, same JSON). A missing cache entry is not a difference (a
//! cache may drop anything); a stale, newer or different one is. With `repair_cache`, each
//! differing entry is evicted and rendered again from the store.
//!
//! The audit reads while engines may write: a cache difference is checked a second time
//! (member and cache read again) before it is reported, so that a status published between the
//! two reads is not reported; so is a ledger difference (the member and its ledger read again,
//! when the member changed in between).

use std::collections::HashMap;
use std::sync::Arc;

use loyalty_domain::audit::{audit_member, Finding};
use loyalty_domain::{FranchiseId, LedgerEntry, MemberId, MemberState, Program};

use crate::engine::shard::render_status;
use crate::ports::{CachedStatus, HotCache, StateStore};
use crate::programs::ProgramCache;
use crate::Result;

/// Members read per page of the scan.
pub const AUDIT_PAGE: usize = 500;
/// Ledger entries read per page of one member's ledger.
const LEDGER_PAGE: usize = 1_000;

/// What to audit and whether to repair the cache.
#[derive(Clone, Debug, Default)]
pub struct AuditOptions {
    /// Only the members of this franchise.
    pub franchise: Option<FranchiseId>,
    /// Evict and rewrite every cache entry that differs from the store.
    pub repair_cache: bool,
}

/// One difference found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub franchise: FranchiseId,
    pub member: MemberId,
    pub what: DifferenceKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DifferenceKind {
    /// The stored state is not what its ledger says.
    Ledger(Finding),
    /// The cached status is not the store's (`cached`/`stored`: their versions).
    Cache { cached: u64, stored: u64 },
    /// The member's franchise or its current program is missing from the store.
    NoProgram,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "franchise {} member {}: ", self.franchise, self.member)?;
        match &self.what {
            DifferenceKind::Ledger(finding) => write!(f, "{finding}"),
            DifferenceKind::Cache { cached, stored } if cached == stored => write!(
                f,
                "the cached status (version {cached}) differs from the store's rendering"
            ),
            DifferenceKind::Cache { cached, stored } => write!(
                f,
                "the cached status is version {cached}, the store's is version {stored}"
            ),
            DifferenceKind::NoProgram => write!(f, "no current program to check it against"),
        }
    }
}

/// What an audit saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub members: u64,
    pub ledger_entries: u64,
    /// Cached statuses compared (present in the cache).
    pub cache_checked: u64,
    /// Members with no cached status (not a difference).
    pub cache_missing: u64,
    /// Cache entries evicted and rewritten from the store.
    pub cache_repaired: u64,
    pub differences: Vec<Difference>,
}

impl AuditReport {
    /// Whether the cache differences found were all repaired and nothing else was found.
    pub fn clean_after_repair(&self) -> bool {
        self.differences
            .iter()
            .all(|d| matches!(d.what, DifferenceKind::Cache { .. }))
            && self.cache_repaired as usize == self.differences.len()
    }
}

/// Audits every member of the store (or of one franchise); `cache`: the hot cache to compare,
/// if any. A store or cache error stops the audit and is returned.
pub async fn audit(
    store: &dyn StateStore,
    programs: &ProgramCache,
    cache: Option<&dyn HotCache>,
    options: &AuditOptions,
) -> Result<AuditReport> {
    let mut report = AuditReport::default();
    let mut current: HashMap<FranchiseId, Option<(u32, Arc<Program>)>> = HashMap::new();
    let mut after: Option<MemberId> = None;
    loop {
        let page = store.members_after(after.as_ref(), AUDIT_PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.member_id.clone());
        let last_page = page.len() < AUDIT_PAGE;
        for state in page.iter().filter(|s| {
            options
                .franchise
                .as_ref()
                .is_none_or(|f| *f == s.franchise_id)
        }) {
            let program = match current.get(&state.franchise_id) {
                Some(p) => p.clone(),
                None => {
                    let p = programs.current_versioned(&state.franchise_id).await?;
                    current.insert(state.franchise_id.clone(), p.clone());
                    p
                }
            };
            audit_one(
                store,
                programs,
                cache,
                state,
                program.as_ref().map(|(v, p)| (*v, p.as_ref())),
                options,
                &mut report,
            )
            .await?;
        }
        if last_page {
            break;
        }
    }
    let m = &crate::metrics::metrics().audit_differences;
    m.inc_by(report.differences.len() as u64);
    Ok(report)
}

async fn audit_one(
    store: &dyn StateStore,
    programs: &ProgramCache,
    cache: Option<&dyn HotCache>,
    state: &MemberState,
    program: Option<(u32, &Program)>,
    options: &AuditOptions,
    report: &mut AuditReport,
) -> Result<()> {
    report.members += 1;
    let difference = |what| Difference {
        franchise: state.franchise_id.clone(),
        member: state.member_id.clone(),
        what,
    };
    let Some((version, program)) = program else {
        report
            .differences
            .push(difference(DifferenceKind::NoProgram));
        return Ok(());
    };
    let (state, ledger, findings) = stable_findings(store, state, program).await?;
    report.ledger_entries += ledger.len() as u64;
    for finding in findings {
        report
            .differences
            .push(difference(DifferenceKind::Ledger(finding)));
    }
    let Some(cache) = cache else {
        return Ok(());
    };
    let Some(cached) = cache.status(&state.member_id).await? else {
        report.cache_missing += 1;
        return Ok(());
    };
    report.cache_checked += 1;
    if same(
        &cached,
        &rendered_as(programs, &state, &cached, version, program).await?,
    ) {
        return Ok(());
    }
    // Read both again: an engine may have committed and published in between.
    let Some(state) = store.member(&state.member_id).await? else {
        return Ok(());
    };
    let stored = render_status(&state, program, version);
    let Some(cached) = cache.status(&state.member_id).await? else {
        return Ok(());
    };
    if same(
        &cached,
        &rendered_as(programs, &state, &cached, version, program).await?,
    ) {
        return Ok(());
    }
    report.differences.push(difference(DifferenceKind::Cache {
        cached: cached.version,
        stored: stored.version,
    }));
    if options.repair_cache {
        cache.evict(std::slice::from_ref(&state.member_id)).await?;
        cache
            .put_statuses(vec![(state.member_id.clone(), stored)])
            .await?;
        report.cache_repaired += 1;
    }
    Ok(())
}

/// Reads of a state and of its ledger that an engine's commit came between (the state
/// older than the ledger) are tried again.
const LEDGER_ATTEMPTS: usize = 3;

/// The domain audit's findings for a member, with the state and ledger they were found in: when
/// it finds something, the member is read again, and the findings stand only if the member did
/// not change meanwhile (an engine committing between the two reads is not a difference).
async fn stable_findings(
    store: &dyn StateStore,
    state: &MemberState,
    program: &Program,
) -> Result<(MemberState, Vec<LedgerEntry>, Vec<Finding>)> {
    let mut state = state.clone();
    let mut attempt = 1;
    loop {
        let ledger = whole_ledger(store, &state.member_id).await?;
        let findings = audit_member(&state, &ledger, program);
        if findings.is_empty() || attempt == LEDGER_ATTEMPTS {
            return Ok((state, ledger, findings));
        }
        match store.member(&state.member_id).await? {
            Some(now) if now.version != state.version => state = now,
            _ => return Ok((state, ledger, findings)),
        }
        attempt += 1;
    }
}

/// `state` rendered as `cached` should have been: with the program version it names (a status
/// rendered before the current version is served only after the gateway renders it again, so
/// it is right if it was right for its own version), or with the current one.
async fn rendered_as(
    programs: &ProgramCache,
    state: &MemberState,
    cached: &CachedStatus,
    current: u32,
    program: &Program,
) -> Result<CachedStatus> {
    if cached.program_version != current && cached.program_version != 0 {
        if let Some(p) = programs
            .get(&state.franchise_id, cached.program_version)
            .await?
        {
            return Ok(render_status(state, &p, cached.program_version));
        }
    }
    Ok(render_status(state, program, current))
}

fn same(a: &CachedStatus, b: &CachedStatus) -> bool {
    a.version == b.version && a.franchise_id == b.franchise_id && a.json == b.json
}

/// A member's whole ledger, oldest first.
async fn whole_ledger(store: &dyn StateStore, member: &MemberId) -> Result<Vec<LedgerEntry>> {
    let mut entries = Vec::new();
    let mut before = None;
    loop {
        let page = store.ledger(member, before, LEDGER_PAGE).await?;
        let done = page.len() < LEDGER_PAGE;
        before = page.last().map(|e| e.seq);
        entries.extend(page);
        if done || before.is_none_or(|seq| seq <= 1) {
            break;
        }
    }
    entries.reverse();
    Ok(entries)
}
