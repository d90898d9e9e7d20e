//! A [`StateStore`] that wraps a real one and misbehaves on demand, for the engine's fault
//! tests: a disk that refuses fsync, a store that is down for a while (transient errors), a
//! store that holds corrupt data (a permanent error), and commits that are only partly written
//! (ScyllaDB's weakest case: a batch is atomic member by member, not as a whole).
//!
//! Every switch is an atomic the test flips while the engine runs; the wrapper counts what it
//! was asked, so a test can assert that the engine did retry, back off, or stop.
//!
//! Its commits can be forgotten (`forget_commits`: lost by a crash before a sync), so it never
//! says that its commit is a claim ([`StateStore::commit_claims_events`]), whatever the store it
//! wraps: the engine claims event ids first on it, as on any store whose commits a crash can
//! take back.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use loyalty_core::model::{ApiKey, Franchise, Principal, Store};
use loyalty_core::ports::{DashboardRows, EffectBatch, EventClaim, OutboxEntry, StateStore};
use loyalty_core::{Error, Result};
use loyalty_domain::{
    Day, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState, ProcessedEvent,
    Program, StoreId,
};

/// The wrapper. Build it with [`FaultyStore::new`], flip its public switches.
pub struct FaultyStore {
    pub inner: Arc<dyn StateStore>,
    /// `sync` fails (`Unavailable`) while set.
    pub refuse_sync: AtomicBool,
    /// `commit` fails with `Unavailable` (writing nothing) while set.
    pub unavailable: AtomicBool,
    /// Commits touching this member fail while set: `Unavailable` (a slow shard, an
    /// overloaded replica) or `Corrupt` (a damaged row, whose reads fail too).
    pub member_fault: parking_lot::Mutex<Option<(MemberId, Fault)>>,
    /// Commits answer `Ok` and write nothing while set: what a crash does to acknowledged but
    /// not yet durable writes of a store that makes commits visible before they are durable.
    pub forget_commits: AtomicBool,
    /// Every `n`-th commit (0: never) writes only the first member's share of its batch, then
    /// fails with `Unavailable`, as a per-member store can when it loses its connection.
    pub partial_every: AtomicU64,
    /// Calls seen.
    pub syncs: AtomicUsize,
    pub commits: AtomicUsize,
    pub failed_commits: AtomicUsize,
    pub partial_commits: AtomicUsize,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn StateStore>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            refuse_sync: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            member_fault: parking_lot::Mutex::new(None),
            forget_commits: AtomicBool::new(false),
            partial_every: AtomicU64::new(0),
            syncs: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
            failed_commits: AtomicUsize::new(0),
            partial_commits: AtomicUsize::new(0),
        })
    }

    /// The fault of `m`, if it is the faulty member.
    fn fault_of(&self, m: &MemberId) -> Option<Fault> {
        match &*self.member_fault.lock() {
            Some((f, fault)) if f == m => Some(*fault),
            _ => None,
        }
    }

    /// Makes batches touching `member` fail with `fault` (`None`: heals it).
    pub fn set_member_fault(&self, fault: Option<(MemberId, Fault)>) {
        *self.member_fault.lock() = fault;
    }
}

/// How a faulty member fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Unavailable,
    Corrupt,
}

/// Splits a batch into one batch per member (its state, ledger entries, the records of its
/// events and its outbox entries) plus one per anonymous record: what a per-member store commits one by one.
///
/// The batch's dashboard delta covers every member's events and belongs to no share: it is
/// left out (a per-member store adds it once every share is written, as the ScyllaDB store
/// does; a batch that fails half-way adds none of it).
pub fn split_by_member(batch: EffectBatch) -> Vec<EffectBatch> {
    let mut shares: BTreeMap<Option<MemberId>, EffectBatch> = BTreeMap::new();
    let mut anonymous = Vec::new();
    for w in batch.members {
        shares
            .entry(Some(w.state.member_id.clone()))
            .or_default()
            .members
            .push(w);
    }
    for (m, e) in batch.ledger {
        shares
            .entry(Some(m.clone()))
            .or_default()
            .ledger
            .push((m, e));
    }
    for p in batch.processed {
        match p.record.member_id.clone() {
            Some(m) => shares.entry(Some(m)).or_default().processed.push(p),
            None => anonymous.push(EffectBatch {
                processed: vec![p],
                ..EffectBatch::default()
            }),
        }
    }
    for e in batch.outbox {
        shares
            .entry(Some(e.member_id.clone()))
            .or_default()
            .outbox
            .push(e);
    }
    shares.into_values().chain(anonymous).collect()
}

#[async_trait]
impl StateStore for FaultyStore {
    async fn put_franchise(&self, f: &Franchise) -> Result<()> {
        self.inner.put_franchise(f).await
    }
    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Franchise>> {
        self.inner.franchise(id).await
    }
    async fn franchises(&self) -> Result<Vec<Franchise>> {
        self.inner.franchises().await
    }
    async fn put_program(&self, f: &FranchiseId, v: u32, p: &Program) -> Result<()> {
        self.inner.put_program(f, v, p).await
    }
    async fn program(&self, f: &FranchiseId, v: u32) -> Result<Option<Program>> {
        self.inner.program(f, v).await
    }
    async fn put_store(&self, s: &Store) -> Result<()> {
        self.inner.put_store(s).await
    }
    async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
        self.inner.store(id).await
    }
    async fn put_api_key(&self, k: &ApiKey, previous: Option<&ApiKey>) -> Result<()> {
        self.inner.put_api_key(k, previous).await
    }
    async fn api_key(&self, h: &str) -> Result<Option<Principal>> {
        self.inner.api_key(h).await
    }
    async fn api_key_record(&self, f: &FranchiseId, id: &str) -> Result<Option<ApiKey>> {
        self.inner.api_key_record(f, id).await
    }
    async fn api_keys_of(&self, f: &FranchiseId) -> Result<Vec<ApiKey>> {
        self.inner.api_keys_of(f).await
    }
    async fn member(&self, id: &MemberId) -> Result<Option<MemberState>> {
        if self.fault_of(id) == Some(Fault::Corrupt) {
            return Err(Error::Corrupt(format!("member {id}: damaged row (test)")));
        }
        self.inner.member(id).await
    }
    async fn members_after(
        &self,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<MemberState>> {
        self.inner.members_after(after, limit).await
    }
    async fn processed(
        &self,
        f: &FranchiseId,
        ids: &[EventId],
    ) -> Result<Vec<Option<ProcessedEvent>>> {
        self.inner.processed(f, ids).await
    }
    async fn ledger(
        &self,
        m: &MemberId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        self.inner.ledger(m, before, limit).await
    }
    async fn claim_events(&self, claims: &[EventClaim]) -> Result<Vec<Fingerprint>> {
        self.inner.claim_events(claims).await
    }
    async fn dashboard_rows(&self, f: &FranchiseId, from: Day, to: Day) -> Result<DashboardRows> {
        self.inner.dashboard_rows(f, from, to).await
    }
    async fn tier_counts(&self, f: &FranchiseId) -> Result<Vec<(String, i64)>> {
        self.inner.tier_counts(f).await
    }
    async fn segment_rows(&self, f: &FranchiseId) -> Result<Vec<(String, Day, i64)>> {
        self.inner.segment_rows(f).await
    }
    async fn due_members(
        &self,
        p: loyalty_core::ports::Partition,
        until: loyalty_domain::Timestamp,
        limit: usize,
    ) -> Result<Vec<loyalty_core::ports::DueMember>> {
        self.inner.due_members(p, until, limit).await
    }
    async fn stores_of(&self, f: &FranchiseId) -> Result<Vec<Store>> {
        self.inner.stores_of(f).await
    }
    async fn processed_after(
        &self,
        f: &FranchiseId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<Vec<ProcessedEvent>> {
        self.inner.processed_after(f, after, limit).await
    }
    async fn replace_dashboard(
        &self,
        f: &FranchiseId,
        rows: &loyalty_domain::dashboard::DashboardDelta,
    ) -> Result<()> {
        self.inner.replace_dashboard(f, rows).await
    }
    async fn commit(&self, batch: EffectBatch) -> Result<()> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        if self.unavailable.load(Ordering::SeqCst) {
            self.failed_commits.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Unavailable("store down (test)".into()));
        }
        let touched: HashSet<&MemberId> = batch
            .members
            .iter()
            .map(|w| &w.state.member_id)
            .chain(batch.ledger.iter().map(|(m, _)| m))
            .chain(batch.outbox.iter().map(|e| &e.member_id))
            .collect();
        let processed_members = batch
            .processed
            .iter()
            .filter_map(|p| p.record.member_id.as_ref());
        let fault = touched
            .into_iter()
            .chain(processed_members)
            .find_map(|m| self.fault_of(m));
        match fault {
            Some(Fault::Corrupt) => {
                self.failed_commits.fetch_add(1, Ordering::SeqCst);
                return Err(Error::Corrupt("damaged row (test)".into()));
            }
            Some(Fault::Unavailable) => {
                self.failed_commits.fetch_add(1, Ordering::SeqCst);
                return Err(Error::Unavailable("member's replica down (test)".into()));
            }
            None => {}
        }
        if self.forget_commits.load(Ordering::SeqCst) {
            return Ok(());
        }
        let every = self.partial_every.load(Ordering::SeqCst);
        if every > 0 && n.is_multiple_of(every) {
            let mut shares = split_by_member(batch.clone()).into_iter();
            if shares.len() > 1 {
                // The first member's share, without the batch's dashboard delta: the batch
                // fails, so (as on ScyllaDB) none of the delta is added.
                if let Some(first) = shares.next() {
                    self.inner.commit(first).await?;
                }
                self.partial_commits.fetch_add(1, Ordering::SeqCst);
                return Err(Error::Unavailable(
                    "connection lost after the first member's share (test)".into(),
                ));
            }
        }
        // Whole, its dashboard delta with it.
        self.inner.commit(batch).await
    }
    async fn outbox_due(
        &self,
        p: loyalty_core::ports::Partition,
        until: loyalty_domain::Timestamp,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        self.inner.outbox_due(p, until, limit).await
    }
    async fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>> {
        self.inner.outbox_entry(id).await
    }
    async fn update_outbox(
        &self,
        entry: &OutboxEntry,
        expected_attempts: u32,
        dashboard: &loyalty_domain::dashboard::DashboardDelta,
    ) -> Result<()> {
        self.inner
            .update_outbox(entry, expected_attempts, dashboard)
            .await
    }
    async fn sync(&self) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.refuse_sync.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("fsync refused (test)".into()));
        }
        self.inner.sync().await
    }
    async fn partition_members(
        &self,
        p: loyalty_core::ports::Partition,
        f: &FranchiseId,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<loyalty_core::ports::IndexedMember>> {
        self.inner.partition_members(p, f, after, limit).await
    }
    async fn put_due(&self, writes: &[loyalty_core::ports::DueWrite]) -> Result<()> {
        self.inner.put_due(writes).await
    }
    async fn reindex_mark(
        &self,
        p: loyalty_core::ports::Partition,
    ) -> Result<Option<loyalty_core::ports::ReindexMark>> {
        self.inner.reindex_mark(p).await
    }
    async fn put_reindex_mark(
        &self,
        p: loyalty_core::ports::Partition,
        mark: &loyalty_core::ports::ReindexMark,
    ) -> Result<()> {
        self.inner.put_reindex_mark(p, mark).await
    }
}
