//! Spans at the port boundary: [`TracedStore`] and [`TracedCache`] wrap any adapter of
//! [`StateStore`] and [`HotCache`] and give each call a client span named after the port's
//! method (`db.operation.name`: `claim_events`, `commit`, `status`...), with the adapter's
//! `db.system.name` (`postgresql`, `redb`, `scylladb`, `redis`) and, on failure, `error.type`
//! (the error's kind, never its message). No argument is recorded: ids and keys stay in the
//! process.
//!
//! Calls made outside any traced span (the engine's checkpoints, background reads) get none.
//! A process wraps its ports only when it exports traces (see [`super::enable`]), so an
//! untraced process pays nothing. Every method of the traits is forwarded explicitly,
//! `sync` included: a method added to a port must be added here too, or the wrapper would run
//! the trait's default instead of the adapter's.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use loyalty_domain::dashboard::DashboardDelta;
use loyalty_domain::{
    Day, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState, ProcessedEvent,
    Program, StoreId,
};
use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing::Instrument;

use crate::model::{Franchise, Principal, Store};
use crate::ports::{CachedStatus, DashboardRows, EffectBatch, EventClaim, HotCache, StateStore};
use crate::Result;

/// Runs `call` in a client span of operation `op` on `system`, when it is part of a trace (a
/// traced span is current: a request, a batch): the background calls (checkpoints, actor
/// activations outside a batch) would otherwise each start a trace of their own.
async fn traced<T>(
    system: &'static str,
    op: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    if !opentelemetry::Context::current().has_active_span() {
        return call.await;
    }
    let span = tracing::info_span!(
        "db",
        otel.name = op,
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = system,
        db.operation.name = op,
        error.type = Empty,
    );
    let result = call.instrument(span.clone()).await;
    if let Err(e) = &result {
        super::record_error(&span, e);
    }
    result
}

/// A [`StateStore`] whose every call is a span.
pub struct TracedStore {
    inner: Arc<dyn StateStore>,
    system: &'static str,
}

impl TracedStore {
    /// Wraps `inner`, a store of `db.system.name` `system`.
    pub fn wrap(inner: Arc<dyn StateStore>, system: &'static str) -> Arc<dyn StateStore> {
        Arc::new(TracedStore { inner, system })
    }
}

#[async_trait]
impl StateStore for TracedStore {
    async fn put_franchise(&self, f: &Franchise) -> Result<()> {
        traced(self.system, "put_franchise", self.inner.put_franchise(f)).await
    }
    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Franchise>> {
        traced(self.system, "franchise", self.inner.franchise(id)).await
    }
    async fn franchises(&self) -> Result<Vec<Franchise>> {
        traced(self.system, "franchises", self.inner.franchises()).await
    }
    async fn put_program(&self, f: &FranchiseId, v: u32, p: &Program) -> Result<()> {
        traced(self.system, "put_program", self.inner.put_program(f, v, p)).await
    }
    async fn program(&self, f: &FranchiseId, v: u32) -> Result<Option<Program>> {
        traced(self.system, "program", self.inner.program(f, v)).await
    }
    async fn put_store(&self, s: &Store) -> Result<()> {
        traced(self.system, "put_store", self.inner.put_store(s)).await
    }
    async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
        traced(self.system, "store", self.inner.store(id)).await
    }
    async fn put_api_key(&self, h: &str, p: &Principal) -> Result<()> {
        traced(self.system, "put_api_key", self.inner.put_api_key(h, p)).await
    }
    async fn api_key(&self, h: &str) -> Result<Option<Principal>> {
        traced(self.system, "api_key", self.inner.api_key(h)).await
    }
    async fn member(&self, id: &MemberId) -> Result<Option<MemberState>> {
        traced(self.system, "member", self.inner.member(id)).await
    }
    async fn members_after(
        &self,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<MemberState>> {
        let call = self.inner.members_after(after, limit);
        traced(self.system, "members_after", call).await
    }
    async fn processed(
        &self,
        f: &FranchiseId,
        ids: &[EventId],
    ) -> Result<Vec<Option<ProcessedEvent>>> {
        traced(self.system, "processed", self.inner.processed(f, ids)).await
    }
    async fn ledger(
        &self,
        m: &MemberId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        traced(self.system, "ledger", self.inner.ledger(m, before, limit)).await
    }
    async fn claim_events(&self, claims: &[EventClaim]) -> Result<Vec<Fingerprint>> {
        traced(self.system, "claim_events", self.inner.claim_events(claims)).await
    }
    async fn dashboard_rows(&self, f: &FranchiseId, from: Day, to: Day) -> Result<DashboardRows> {
        let call = self.inner.dashboard_rows(f, from, to);
        traced(self.system, "dashboard_rows", call).await
    }
    async fn tier_counts(&self, f: &FranchiseId) -> Result<Vec<(String, i64)>> {
        traced(self.system, "tier_counts", self.inner.tier_counts(f)).await
    }
    async fn stores_of(&self, f: &FranchiseId) -> Result<Vec<Store>> {
        traced(self.system, "stores_of", self.inner.stores_of(f)).await
    }
    async fn processed_after(
        &self,
        f: &FranchiseId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<Vec<ProcessedEvent>> {
        let call = self.inner.processed_after(f, after, limit);
        traced(self.system, "processed_after", call).await
    }
    async fn replace_dashboard(&self, f: &FranchiseId, rows: &DashboardDelta) -> Result<()> {
        let call = self.inner.replace_dashboard(f, rows);
        traced(self.system, "replace_dashboard", call).await
    }
    async fn commit(&self, batch: EffectBatch) -> Result<()> {
        traced(self.system, "commit", self.inner.commit(batch)).await
    }
    async fn sync(&self) -> Result<()> {
        traced(self.system, "sync", self.inner.sync()).await
    }
}

/// A [`HotCache`] whose every call is a span.
pub struct TracedCache {
    inner: Arc<dyn HotCache>,
    system: &'static str,
}

impl TracedCache {
    /// Wraps `inner`, a cache of `db.system.name` `system`.
    pub fn wrap(inner: Arc<dyn HotCache>, system: &'static str) -> Arc<dyn HotCache> {
        Arc::new(TracedCache { inner, system })
    }
}

#[async_trait]
impl HotCache for TracedCache {
    async fn status(&self, member: &MemberId) -> Result<Option<CachedStatus>> {
        traced(self.system, "status", self.inner.status(member)).await
    }
    async fn put_statuses(&self, statuses: Vec<(MemberId, CachedStatus)>) -> Result<()> {
        traced(
            self.system,
            "put_statuses",
            self.inner.put_statuses(statuses),
        )
        .await
    }
    async fn evict(&self, members: &[MemberId]) -> Result<()> {
        traced(self.system, "evict", self.inner.evict(members)).await
    }
}
