//! Rebuilding a franchise's dashboard aggregates from scratch, from the store's durable
//! records: every idempotency record (what each event did, anonymous sales included), every
//! member's ledger (points issued, redeemed, expired) and state (its tier), and each member's
//! purchases in POS-time order (the visit keys). The result replaces the stored aggregates in
//! one write, and members whose recorded purchase days differ (members from before the
//! dashboards existed) get them written, fenced by their version.
//!
//! Run it with the engines stopped (`loyalty projections rebuild`): a commit landing during
//! the scan could be counted twice or not at all, and a member write racing an engine is
//! refused by the fence (the rebuild then stops with an error and can be run again).
//! Days are the current program's: a rebuild re-buckets every event in today's time zone, and
//! redemptions cost what the current catalogue says.

use std::collections::BTreeMap;

use loyalty_domain::dashboard::{record_purchase, DashboardDelta, PurchaseDays};
use loyalty_domain::{Day, EventId, MemberId, Outcome, Program, StoreId};

use crate::model::Franchise;
use crate::ports::{EffectBatch, MemberWrite, StateStore};
use crate::Result;

/// Records read per page of a scan.
pub const REBUILD_PAGE: usize = 1000;

/// Member writes per commit.
const MEMBER_WRITES: usize = 256;

/// What a rebuild read and wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub members: u64,
    pub ledger_entries: u64,
    /// Members whose purchase days were rewritten.
    pub members_updated: u64,
    /// Aggregate rows written (totals, visit rows, tiers, segment changes).
    pub rows: u64,
}

/// Rebuilds the dashboards of `franchise`, whose current program is `program`.
pub async fn rebuild_dashboards(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
) -> Result<RebuildReport> {
    let f = &franchise.id;
    let mut report = RebuildReport::default();
    let mut delta = DashboardDelta::default();
    let mut purchases: BTreeMap<MemberId, Vec<(Day, StoreId)>> = BTreeMap::new();
    let mut after: Option<EventId> = None;
    loop {
        let page = store
            .processed_after(f, after.as_ref(), REBUILD_PAGE)
            .await?;
        for rec in &page {
            let day = program.local_day(rec.at);
            delta.add_outcome(f, &rec.store_id, day, program, &rec.outcome);
            if let (Outcome::Purchase(_), Some(m)) = (&rec.outcome, &rec.member_id) {
                purchases
                    .entry(m.clone())
                    .or_default()
                    .push((day, rec.store_id.clone()));
            }
        }
        report.events += page.len() as u64;
        after = page.last().map(|r| r.event_id.clone());
        if page.len() < REBUILD_PAGE {
            break;
        }
    }

    let mut writes = Vec::new();
    let mut last: Option<MemberId> = None;
    loop {
        let page = store.members_after(last.as_ref(), REBUILD_PAGE).await?;
        for state in page.iter().filter(|s| &s.franchise_id == f) {
            report.members += 1;
            delta.add_tier(f, Some(&state.tier), 1);
            // The segments a member is counted in, on its clock's day: the series before a
            // rebuild is not kept.
            let day = program.local_day(state.clock);
            for s in &state.segments {
                delta.add_segment(f, s, day, 1);
            }
            // Campaign results from what each member holds, on the day of its last firing
            // (the outbox's delivery counters are not rebuilt: README "Campaigns").
            for (id, r) in &state.campaigns {
                let day = r.fired_at.last().map_or(day, |t| program.local_day(*t));
                let t = loyalty_domain::campaigns::CampaignTally {
                    campaign_id: id.clone(),
                    fired: i64::from(r.fired),
                    messages: i64::from(r.messages),
                    redeemed: i64::from(r.redeemed),
                    revenue_cents: i64::try_from(r.revenue_cents).unwrap_or(i64::MAX),
                };
                delta.add_campaign(f, &t, day);
            }
            report.ledger_entries += add_ledger(store, &mut delta, program, state).await?;
            let mut days = PurchaseDays::new();
            let mut mine = purchases.remove(&state.member_id).unwrap_or_default();
            mine.sort();
            for (day, s) in &mine {
                let visits = record_purchase(&mut days, s, *day);
                delta.add_visits(f, &visits);
            }
            if days != state.purchase_days {
                let mut next = state.clone();
                next.purchase_days = days;
                next.version = state.version.saturating_add(1);
                writes.push(MemberWrite {
                    state: next,
                    expected_version: state.version,
                    due: None,
                });
            }
            if writes.len() >= MEMBER_WRITES {
                report.members_updated += flush(store, &mut writes).await?;
            }
        }
        last = page.last().map(|s| s.member_id.clone());
        if page.len() < REBUILD_PAGE {
            break;
        }
    }
    report.members_updated += flush(store, &mut writes).await?;
    delta.tidy();
    report.rows =
        (delta.totals.len() + delta.visits.len() + delta.tiers.len() + delta.segments.len()) as u64;
    store.replace_dashboard(f, &delta).await?;
    Ok(report)
}

/// Adds a member's whole ledger; returns how many entries it read.
async fn add_ledger(
    store: &dyn StateStore,
    delta: &mut DashboardDelta,
    program: &Program,
    state: &loyalty_domain::MemberState,
) -> Result<u64> {
    let mut n = 0;
    let mut before = None;
    loop {
        let page = store.ledger(&state.member_id, before, REBUILD_PAGE).await?;
        delta.add_entries(&state.franchise_id, program, &page);
        n += page.len() as u64;
        before = page.last().map(|e| e.seq);
        if page.len() < REBUILD_PAGE {
            return Ok(n);
        }
    }
}

/// Writes the pending member writes; how many.
async fn flush(store: &dyn StateStore, writes: &mut Vec<MemberWrite>) -> Result<u64> {
    if writes.is_empty() {
        return Ok(0);
    }
    let members = std::mem::take(writes);
    let n = members.len() as u64;
    store
        .commit(EffectBatch {
            members,
            ..EffectBatch::default()
        })
        .await?;
    store.sync().await?;
    Ok(n)
}
