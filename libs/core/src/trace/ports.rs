//! The port boundary: [`TracedStore`] and [`TracedCache`] wrap any adapter of [`StateStore`]
//! and [`HotCache`], time every call and count its failures in the metrics
//! (`loyalty_store_operation_duration_seconds`, `loyalty_store_operation_errors_total`, and the
//! `loyalty_cache_operation_*` pair), by the port's method (`claim_events`, `commit`,
//! `status`...) and, for errors, the error's kind and class (transient, permanent).
//!
//! When the process exports traces (see [`super::enable`]) each call is also a client span
//! named after the method (`db.operation.name`), with the adapter's `db.system.name`
//! (`postgresql`, `redb`, `scylladb`, `redis`) and, on failure, `error.type` (the error's kind,
//! never its message). No argument is recorded, in spans or metrics: ids and keys stay in the
//! process. Calls made outside any traced span (the engine's checkpoints, background reads)
//! get no span, but are measured.
//!
//! Every process wraps its ports (the metrics are always on; a span costs nothing unless
//! traces are exported). Every method of the traits is forwarded explicitly, `sync` included:
//! a method added to a port must be added here too, or the wrapper would run the trait's
//! default instead of the adapter's.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use loyalty_domain::dashboard::DashboardDelta;
use loyalty_domain::{
    Day, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState, ProcessedEvent,
    Program, StoreId, Timestamp,
};
use opentelemetry::trace::TraceContextExt;
use prometheus::{HistogramVec, IntCounterVec};
use tracing::field::Empty;
use tracing::Instrument;

use crate::metrics::{error_class, metrics};
use crate::model::{ApiKey, Franchise, Principal, Store};
use crate::ports::{
    CachedStatus, DashboardRows, EffectBatch, EventClaim, HotCache, OutboxEntry, Partition,
    StateStore,
};
use crate::Result;

/// Which port a call is made on: where its latency and errors are counted.
#[derive(Clone, Copy)]
enum Port {
    Store,
    Cache,
}

impl Port {
    fn series(self) -> (&'static HistogramVec, &'static IntCounterVec) {
        let m = &metrics().ports;
        match self {
            Port::Store => (&m.store_seconds, &m.store_errors),
            Port::Cache => (&m.cache_seconds, &m.cache_errors),
        }
    }

    /// Counts one call of `op` that took `seconds` and ended with `result`.
    fn observe<T>(self, op: &'static str, seconds: f64, result: &Result<T>) {
        let (latency, errors) = self.series();
        latency.with_label_values(&[op]).observe(seconds);
        if let Err(e) = result {
            errors
                .with_label_values(&[op, e.kind(), error_class(e)])
                .inc();
        }
    }
}

/// Runs `call`, operation `op` on `port`, measured; in a client span on `system` when it has
/// one (`None`: the in-process cache, whose calls take a microsecond) and the call is part of
/// a trace (a traced span is current: a request, a batch). Background calls (checkpoints,
/// actor activations outside a batch) would otherwise each start a trace of their own.
async fn observed<T>(
    port: Port,
    system: Option<&'static str>,
    op: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let start = Instant::now();
    let result = match system.filter(|_| in_trace()) {
        Some(system) => traced(system, op, call).await,
        None => call.await,
    };
    port.observe(op, start.elapsed().as_secs_f64(), &result);
    result
}

/// A store call of `op` on `system`.
async fn store<T>(
    system: &'static str,
    op: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    observed(Port::Store, Some(system), op, call).await
}

/// A cache call of `op` on `system`.
async fn cache<T>(
    system: Option<&'static str>,
    op: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    observed(Port::Cache, system, op, call).await
}

/// Whether spans are on and a traced span is current.
fn in_trace() -> bool {
    super::enabled() && opentelemetry::Context::current().has_active_span()
}

/// Runs `call` in a client span of operation `op` on `system`.
async fn traced<T>(
    system: &'static str,
    op: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
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

/// A [`StateStore`] whose every call is measured, and a span when traced.
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
        store(self.system, "put_franchise", self.inner.put_franchise(f)).await
    }
    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Franchise>> {
        store(self.system, "franchise", self.inner.franchise(id)).await
    }
    async fn franchises(&self) -> Result<Vec<Franchise>> {
        store(self.system, "franchises", self.inner.franchises()).await
    }
    async fn put_program(&self, f: &FranchiseId, v: u32, p: &Program) -> Result<()> {
        store(self.system, "put_program", self.inner.put_program(f, v, p)).await
    }
    async fn program(&self, f: &FranchiseId, v: u32) -> Result<Option<Program>> {
        store(self.system, "program", self.inner.program(f, v)).await
    }
    async fn put_store(&self, s: &Store) -> Result<()> {
        store(self.system, "put_store", self.inner.put_store(s)).await
    }
    async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
        store(self.system, "store", self.inner.store(id)).await
    }
    async fn put_api_key(&self, k: &ApiKey, previous: Option<&ApiKey>) -> Result<()> {
        store(
            self.system,
            "put_api_key",
            self.inner.put_api_key(k, previous),
        )
        .await
    }
    async fn api_key(&self, h: &str) -> Result<Option<Principal>> {
        store(self.system, "api_key", self.inner.api_key(h)).await
    }
    async fn api_key_record(&self, f: &FranchiseId, id: &str) -> Result<Option<ApiKey>> {
        store(
            self.system,
            "api_key_record",
            self.inner.api_key_record(f, id),
        )
        .await
    }
    async fn api_keys_of(&self, f: &FranchiseId) -> Result<Vec<ApiKey>> {
        store(self.system, "api_keys_of", self.inner.api_keys_of(f)).await
    }
    async fn member(&self, id: &MemberId) -> Result<Option<MemberState>> {
        store(self.system, "member", self.inner.member(id)).await
    }
    async fn members_after(
        &self,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<MemberState>> {
        let call = self.inner.members_after(after, limit);
        store(self.system, "members_after", call).await
    }
    async fn processed(
        &self,
        f: &FranchiseId,
        ids: &[EventId],
    ) -> Result<Vec<Option<ProcessedEvent>>> {
        store(self.system, "processed", self.inner.processed(f, ids)).await
    }
    async fn ledger(
        &self,
        m: &MemberId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        store(self.system, "ledger", self.inner.ledger(m, before, limit)).await
    }
    async fn claim_events(&self, claims: &[EventClaim]) -> Result<Vec<Fingerprint>> {
        store(self.system, "claim_events", self.inner.claim_events(claims)).await
    }
    fn commit_claims_events(&self) -> bool {
        self.inner.commit_claims_events()
    }
    async fn dashboard_rows(&self, f: &FranchiseId, from: Day, to: Day) -> Result<DashboardRows> {
        let call = self.inner.dashboard_rows(f, from, to);
        store(self.system, "dashboard_rows", call).await
    }
    async fn tier_counts(&self, f: &FranchiseId) -> Result<Vec<(String, i64)>> {
        store(self.system, "tier_counts", self.inner.tier_counts(f)).await
    }
    async fn segment_rows(&self, f: &FranchiseId) -> Result<Vec<(String, Day, i64)>> {
        store(self.system, "segment_rows", self.inner.segment_rows(f)).await
    }
    async fn due_members(
        &self,
        p: crate::ports::Partition,
        until: loyalty_domain::Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::ports::DueMember>> {
        let call = self.inner.due_members(p, until, limit);
        store(self.system, "due_members", call).await
    }
    async fn stores_of(&self, f: &FranchiseId) -> Result<Vec<Store>> {
        store(self.system, "stores_of", self.inner.stores_of(f)).await
    }
    async fn processed_after(
        &self,
        f: &FranchiseId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<Vec<ProcessedEvent>> {
        let call = self.inner.processed_after(f, after, limit);
        store(self.system, "processed_after", call).await
    }
    async fn replace_dashboard(&self, f: &FranchiseId, rows: &DashboardDelta) -> Result<()> {
        let call = self.inner.replace_dashboard(f, rows);
        store(self.system, "replace_dashboard", call).await
    }
    async fn commit(&self, batch: EffectBatch) -> Result<()> {
        store(self.system, "commit", self.inner.commit(batch)).await
    }
    async fn sync(&self) -> Result<()> {
        store(self.system, "sync", self.inner.sync()).await
    }
    async fn outbox_due(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let call = self.inner.outbox_due(partition, until, limit);
        store(self.system, "outbox_due", call).await
    }
    async fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>> {
        store(self.system, "outbox_entry", self.inner.outbox_entry(id)).await
    }
    async fn update_outbox(
        &self,
        entry: &OutboxEntry,
        expected_attempts: u32,
        dashboard: &DashboardDelta,
    ) -> Result<()> {
        let call = self
            .inner
            .update_outbox(entry, expected_attempts, dashboard);
        store(self.system, "update_outbox", call).await
    }
    async fn partition_members(
        &self,
        p: crate::ports::Partition,
        f: &FranchiseId,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<crate::ports::IndexedMember>> {
        let call = self.inner.partition_members(p, f, after, limit);
        store(self.system, "partition_members", call).await
    }
    async fn put_due(&self, writes: &[crate::ports::DueWrite]) -> Result<()> {
        store(self.system, "put_due", self.inner.put_due(writes)).await
    }
    async fn reindex_mark(
        &self,
        p: crate::ports::Partition,
    ) -> Result<Option<crate::ports::ReindexMark>> {
        store(self.system, "reindex_mark", self.inner.reindex_mark(p)).await
    }
    async fn put_reindex_mark(
        &self,
        p: crate::ports::Partition,
        mark: &crate::ports::ReindexMark,
    ) -> Result<()> {
        let call = self.inner.put_reindex_mark(p, mark);
        store(self.system, "put_reindex_mark", call).await
    }
}

/// A [`HotCache`] whose every call is measured, and a span when traced.
pub struct TracedCache {
    inner: Arc<dyn HotCache>,
    system: Option<&'static str>,
}

impl TracedCache {
    /// Wraps `inner`, a cache of `db.system.name` `system`; `None` for a cache whose calls get
    /// no span (the in-process one), only metrics.
    pub fn wrap(inner: Arc<dyn HotCache>, system: Option<&'static str>) -> Arc<dyn HotCache> {
        Arc::new(TracedCache { inner, system })
    }
}

#[async_trait]
impl HotCache for TracedCache {
    async fn status(&self, member: &MemberId) -> Result<Option<CachedStatus>> {
        cache(self.system, "status", self.inner.status(member)).await
    }
    async fn put_statuses(&self, statuses: Vec<(MemberId, CachedStatus)>) -> Result<()> {
        let call = self.inner.put_statuses(statuses);
        cache(self.system, "put_statuses", call).await
    }
    async fn evict(&self, members: &[MemberId]) -> Result<()> {
        cache(self.system, "evict", self.inner.evict(members)).await
    }
}
