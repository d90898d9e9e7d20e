//! The ports: what the engine and the gateway need from the outside world. Each has an
//! embedded adapter (`loyalty-embedded`) and a real one (Kafka, ScyllaDB, Redis).

use async_trait::async_trait;
use bytes::Bytes;
use loyalty_domain::dashboard::{DashboardDelta, DayTotals, PackedRow, Scope};
use loyalty_domain::{
    Day, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState, ProcessedEvent,
    Program, StoreId, Timestamp,
};
use tokio::sync::oneshot;

use crate::model::{ApiKey, Franchise, Principal, Store};
use crate::Result;

pub type Partition = u32;
pub type Offset = u64;

/// One record of a topic partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Bytes,
    pub payload: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub partition: Partition,
    pub offset: Offset,
}

/// Chooses the partition of a key. Every adapter uses this one function, so a key lands on the
/// same partition whatever the log behind it (FNV-1a, 64 bits).
pub fn partition_for(key: &[u8], partitions: u32) -> Partition {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as Partition
}

/// A partitioned, durable, append-only log of records with consumer groups (Kafka's model).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates `topic` with `partitions` partitions if it does not exist; returns the topic's
    /// actual partition count.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32>;

    /// Appends a record to the partition of `key` and returns once it is durable.
    async fn append(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        headers: Vec<(String, Bytes)>,
    ) -> Result<Appended>;

    /// The offset the next record of the partition will get.
    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset>;

    /// Joins the consumer group `group` on `topic`. Partitions are handed to the consumer
    /// through [`ConsumerEvent::Assigned`]; reading starts at the group's committed offset.
    async fn subscribe(&self, group: &str, topic: &str) -> Result<Box<dyn LogConsumer>>;
}

/// What a consumer sees, in order.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// These partitions are now this consumer's; records follow from their committed offsets.
    Assigned(Vec<Partition>),
    /// These partitions are being taken away. The consumer must finish in-flight work, make it
    /// durable, commit, stop what it runs for them, and only then send on `done`: the log waits
    /// for it before handing the partitions to another consumer.
    Revoked {
        partitions: Vec<Partition>,
        done: oneshot::Sender<()>,
    },
    /// Records, each partition's in offset order. Empty when the poll timed out.
    Records(Vec<Record>),
}

/// A member of a consumer group. `next` is called by one task; `commit` from any.
#[async_trait]
pub trait LogConsumer: Send + Sync {
    /// Waits (up to an adapter-defined poll interval) for the next event.
    async fn next(&self, max_records: usize) -> Result<ConsumerEvent>;

    /// Records that everything before `next_offset` of `partition` is processed and durable.
    async fn commit(&self, partition: Partition, next_offset: Offset) -> Result<()>;

    /// The group's committed offset of `partition`, if any.
    async fn committed(&self, partition: Partition) -> Result<Option<Offset>>;

    /// Stops reading `partitions` (owned ones; others are ignored) until [`LogConsumer::resume`]
    /// or their next assignment: `next` returns no record of them fetched after this call,
    /// though records already fetched may still come. For a partition whose work cannot keep
    /// up or is stuck, so that the others keep flowing and memory stays bounded.
    async fn pause(&self, partitions: &[Partition]) -> Result<()>;

    /// Reads `partitions` again from where reading stopped.
    async fn resume(&self, partitions: &[Partition]) -> Result<()>;

    /// Leaves the group (revoking everything first).
    async fn close(&self) -> Result<()>;
}

/// The time the engine's scheduler reads: [`SystemClock`] in production, a [`ManualClock`]
/// in tests (so that a test moves time by days without sleeping).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        crate::provisioning::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(at: Timestamp) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(at.0))
    }

    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A member's state to write, fenced by the version the writer read.
#[derive(Clone, Debug)]
pub struct MemberWrite {
    pub state: MemberState,
    /// The stored version this write replaces; 0 when the member must not exist yet.
    pub expected_version: u64,
    /// The member's entry in the due index, written with the state (so the index never
    /// disagrees with it); `None` leaves the entry as it is (a rewrite that moves no time,
    /// such as a rebuilt projection).
    pub due: Option<Due>,
}

/// A member's entry in the due index: when the scheduler of `partition` must next move the
/// member's clock ([`loyalty_domain::MemberState::next_due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The log partition of the member (its shard's).
    pub partition: Partition,
    /// `None`: nothing is due; the member leaves the index.
    pub at: Option<Timestamp>,
}

/// A member the due index names as due, as [`StateStore::due_members`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueMember {
    pub member_id: MemberId,
    pub franchise_id: FranchiseId,
    pub at: Timestamp,
}

/// An idempotency record to write.
#[derive(Clone, Debug)]
pub struct ProcessedWrite {
    pub record: ProcessedEvent,
    /// `true`: the record must not exist yet (a new event). `false`: replace it (a purchase
    /// record updated by a refund, a redemption's marked by its cancellation).
    pub insert: bool,
}

/// Effects of a batch of events, written atomically.
#[derive(Clone, Debug, Default)]
pub struct EffectBatch {
    pub members: Vec<MemberWrite>,
    pub ledger: Vec<(MemberId, LedgerEntry)>,
    pub processed: Vec<ProcessedWrite>,
    /// What the batch's new events add to the dashboards' daily aggregates. Written with the
    /// events' records, so that an event counts once: a replay finds its record and adds
    /// nothing.
    pub dashboard: DashboardDelta,
    /// Messages the batch's campaign firings ask for (the durable outbox), written with the
    /// member's share: inserted unless an entry with the same id exists (which is kept).
    pub outbox: Vec<OutboxEntry>,
}

impl EffectBatch {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.ledger.is_empty()
            && self.processed.is_empty()
            && self.dashboard.is_empty()
            && self.outbox.is_empty()
    }
}

/// Where a message of the outbox stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OutboxState {
    /// To send at `next_attempt_at`.
    Pending,
    /// The receiver accepted it.
    Delivered { at: Timestamp },
    /// Dead-lettered: a permanent failure, or the last attempt failed. `reason` is the
    /// adapter's error (no personal data).
    Failed { at: Timestamp, reason: String },
    /// Not sent, on purpose: the member withdrew consent, has no address on the channel, was
    /// erased, or the program no longer has the campaign's message.
    Skipped { at: Timestamp, reason: String },
}

/// One message of the durable outbox: what a campaign firing asks to send to a member on a
/// channel. Holds no personal data: the delivery worker reads the member's address and
/// consent, and renders the program's template, when it sends.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    /// `<member>/<campaign>/<firing key>/<channel>`: one per firing and channel, the same on
    /// every replay (and the [`crate::notify::Message::id`] receivers deduplicate on).
    pub id: String,
    pub franchise_id: FranchiseId,
    pub member_id: MemberId,
    /// The member's log partition: the outbox is read by partition, by the node that owns it.
    pub partition: Partition,
    pub campaign_id: String,
    pub channel: loyalty_domain::campaigns::Channel,
    /// The program version whose campaign fired (its templates are the message's).
    pub program_version: u32,
    /// When the campaign fired (the member's event time).
    pub created_at: Timestamp,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending entries only).
    pub next_attempt_at: Timestamp,
    /// The last attempt's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub state: OutboxState,
}

/// The dashboards' stored aggregates of a franchise over a range of days.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DashboardRows {
    /// Daily totals by store: (store, day, totals).
    pub totals: Vec<(StoreId, Day, DayTotals)>,
    /// Visit rows by scope and day, packed (counted without decoding).
    pub visits: Vec<(Scope, Day, PackedRow)>,
}

/// Who owns an event id: the command (by fingerprint) that claimed it first.
///
/// An event id is chosen by the client, and nothing stops a client from using one id for two
/// different commands that land on two partitions (two members, or a member purchase and an
/// anonymous sale). The engine claims every new event id before it applies the command, and the
/// claim decides, once and durably, which command owns the id: the other is an idempotency
/// conflict, whatever the order in which partitions are applied again after a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventClaim {
    pub franchise_id: FranchiseId,
    pub event_id: EventId,
    pub fingerprint: Fingerprint,
}

/// The durable state of the platform.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    async fn put_franchise(&self, franchise: &Franchise) -> Result<()>;
    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Franchise>>;
    async fn franchises(&self) -> Result<Vec<Franchise>>;
    /// Programs are immutable once written: a version is written once.
    async fn put_program(
        &self,
        franchise: &FranchiseId,
        version: u32,
        program: &Program,
    ) -> Result<()>;
    async fn program(&self, franchise: &FranchiseId, version: u32) -> Result<Option<Program>>;
    async fn put_store(&self, store: &Store) -> Result<()>;
    async fn store(&self, id: &StoreId) -> Result<Option<Store>>;
    /// Writes the record of API key `key` (by franchise and id) and its hash index, fenced:
    /// `previous` is the record as the caller read it (`None`: the key must not exist yet), and
    /// `key.version` must be one more than its version (1 for a new key). Fails with
    /// [`crate::Error::Conflict`], having changed nothing, when the stored record is not
    /// `previous` (another gateway changed the key meanwhile).
    ///
    /// Afterwards [`StateStore::api_key`] of `key.key_hash` is `key`'s principal, unless the
    /// key is revoked; a hash the key had before (a rotated secret) and the hash of a revoked
    /// key resolve to nothing. Secrets are never stored, only their hash.
    async fn put_api_key(&self, key: &ApiKey, previous: Option<&ApiKey>) -> Result<()>;
    /// The holder of the active (not revoked, not rotated away) key whose hash is `key_hash`.
    async fn api_key(&self, key_hash: &str) -> Result<Option<Principal>>;
    /// The record of key `id` of `franchise`, revoked or not.
    async fn api_key_record(&self, franchise: &FranchiseId, id: &str) -> Result<Option<ApiKey>>;
    /// Every key record of `franchise`, revoked ones included, in id order.
    async fn api_keys_of(&self, franchise: &FranchiseId) -> Result<Vec<ApiKey>>;

    async fn member(&self, id: &MemberId) -> Result<Option<MemberState>>;
    /// At most `limit` members, in the adapter's scan order, resuming after `after`
    /// (exclusive): a full scan in pages, for rebuilding the hot cache. Pass the last member
    /// of a page as the next `after`; a page shorter than `limit` is the last. (The embedded
    /// store scans in id order; ScyllaDB in token order of the member id.)
    async fn members_after(
        &self,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<MemberState>>;
    /// Idempotency records of `event_ids`, in the same order.
    async fn processed(
        &self,
        franchise: &FranchiseId,
        event_ids: &[EventId],
    ) -> Result<Vec<Option<ProcessedEvent>>>;
    /// Ledger entries of a member, newest first, with `seq < before` when given.
    async fn ledger(
        &self,
        member: &MemberId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>>;
    /// Claims each event id for its command: the first claim of an id wins, forever. Durable on
    /// return on every store (whatever [`StateStore::sync`] does), so that no outcome is told
    /// before its owner is decided. Returns, in order, the fingerprint that owns each id after
    /// the call: the claim's own when it won or had claimed it before. Of two claims of one id
    /// in the same call, the first wins.
    async fn claim_events(&self, claims: &[EventClaim]) -> Result<Vec<Fingerprint>>;

    /// Whether [`StateStore::commit`] is itself the claim of the event ids it records, so that
    /// the engine claims nothing before applying a batch. A store that says so serializes every
    /// commit (one writer), makes a commit durable before it returns, and refuses (a
    /// [`crate::Error::Conflict`]) a batch with a record to insert whose event id is already
    /// recorded or claimed by another command; its [`StateStore::claim_events`] answers a
    /// recorded id's owner. The first commit of an id then owns it, durably, before any outcome
    /// is told, as a claim would, and a batch costs one store round trip and one fsync instead
    /// of two of each. Stores whose commits may be lost by a crash until a sync, or that
    /// commit partition by partition (ScyllaDB), keep the default: claims first.
    fn commit_claims_events(&self) -> bool {
        false
    }

    /// The dashboards' aggregates of `franchise` for the days `from..=to` (every store and
    /// scope), in no particular order.
    async fn dashboard_rows(
        &self,
        franchise: &FranchiseId,
        from: Day,
        to: Day,
    ) -> Result<DashboardRows>;

    /// At most `limit` members of `partition` whose due time ([`MemberWrite::due`]) is at or
    /// before `until`, earliest first (then by member id): what the scheduler of that
    /// partition's shard must advance now.
    async fn due_members(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<DueMember>>;

    /// Members of `franchise` by tier, as of each member's latest event.
    async fn tier_counts(&self, franchise: &FranchiseId) -> Result<Vec<(String, i64)>>;

    /// The changes of segment sizes of `franchise` ([`DashboardDelta::segments`] as committed
    /// and replaced): (segment, local day, sum of the changes that day), the zero sums left
    /// out, in no particular order. A segment's size on a day is the sum of its changes up to
    /// that day.
    async fn segment_rows(&self, franchise: &FranchiseId) -> Result<Vec<(String, Day, i64)>>;

    /// The stores of `franchise`.
    async fn stores_of(&self, franchise: &FranchiseId) -> Result<Vec<Store>>;

    /// At most `limit` idempotency records of `franchise` in event id order, after `after`
    /// (exclusive): a full scan in pages, for rebuilding the dashboards. A page shorter than
    /// `limit` is the last.
    async fn processed_after(
        &self,
        franchise: &FranchiseId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<Vec<ProcessedEvent>>;

    /// Replaces every dashboard aggregate of `franchise` with `rows` (absolute values, in the
    /// shape of a delta), atomically: readers see the old aggregates or the new ones.
    async fn replace_dashboard(&self, franchise: &FranchiseId, rows: &DashboardDelta)
        -> Result<()>;

    /// Writes the effects of a batch, fenced. Fails with [`crate::Error::Conflict`] if a
    /// member's stored version differs from the expected one or a record to insert already
    /// exists.
    ///
    /// Atomicity is guaranteed per member: a member's state, its ledger entries and the records
    /// of its events are all written or none is, and a failed condition leaves that member's
    /// share unwritten. The embedded store writes the whole batch or nothing; ScyllaDB (whose
    /// conditional batches cover one partition) may have written other members' shares of a
    /// batch that fails. Callers therefore re-read the store after an error and treat the
    /// recorded events as replays, as the engine's shards do.
    ///
    /// On return the effects are visible to every reader; they are durable once a later
    /// [`StateStore::sync`] has returned (at once, for a store that says so, and for one whose
    /// commit claims, [`StateStore::commit_claims_events`]).
    async fn commit(&self, batch: EffectBatch) -> Result<()>;

    /// Makes every commit that returned before this call durable.
    ///
    /// A store may make commits visible before they are durable (the faulty test store can act
    /// so) because every command is already durable in the log and the engine commits a
    /// partition's offset only after a `sync` that covers the batches before it: a crash rolls
    /// the store back to its last sync, and the log delivers again what came after, which the
    /// engine applies again, in the same order, to the same effects.
    /// Stores whose commits are durable on return (embedded, ScyllaDB) need not do anything.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// At most `limit` pending outbox entries of `partition` whose `next_attempt_at` is at or
    /// before `until`, earliest first (then by id): what the delivery worker of the node that
    /// owns the partition sends now.
    async fn outbox_due(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>>;

    /// The outbox entry `id`, if any.
    async fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>>;

    /// Replaces the stored entry `entry.id` with `entry` (an attempt's result) and adds
    /// `dashboard` (the campaign's delivery counters), atomically, fenced: fails with
    /// [`crate::Error::Conflict`], having changed nothing, unless the stored entry is pending
    /// with `expected_attempts` attempts (another node recorded this attempt first, so its
    /// counters are not added twice). Durable on return.
    async fn update_outbox(
        &self,
        entry: &OutboxEntry,
        expected_attempts: u32,
        dashboard: &DashboardDelta,
    ) -> Result<()>;

    /// At most `limit` members of `franchise` whose due index entry is of `partition`, in
    /// member id order after `after` (exclusive), each with its stored due time: what the
    /// re-index of that partition sweeps ([`crate::engine::reindex`]). A member is listed from
    /// the first write that gives it a [`Due`] of `partition` (one with `at: None` included:
    /// its entry says that nothing is due) until a write gives it another partition; a member
    /// stored without one (before the due index existed) is not. A page shorter than `limit`
    /// is the last.
    async fn partition_members(
        &self,
        partition: Partition,
        franchise: &FranchiseId,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<IndexedMember>>;

    /// Writes due index entries alone, each fenced by its member's version: an entry replaces
    /// its member's entry (as a commit's [`MemberWrite::due`] does, the state untouched) only
    /// if the member is stored at [`DueWrite::version`]. Fails with [`crate::Error::Conflict`]
    /// when a member is not (another writer moved it, or it does not exist): the embedded
    /// store and PostgreSQL then write none of `writes`; ScyllaDB, whose conditions cover one
    /// member each, may have written the others. Durable on return.
    async fn put_due(&self, writes: &[DueWrite]) -> Result<()>;

    /// The re-index mark of `partition` ([`StateStore::put_reindex_mark`]), `None` if none
    /// was ever written.
    async fn reindex_mark(&self, partition: Partition) -> Result<Option<ReindexMark>>;

    /// Replaces the re-index mark of `partition`: what its owner's sweeps have done. Durable
    /// on return. Only a partition's owner writes it, after the due entries it vouches for
    /// are durable.
    async fn put_reindex_mark(&self, partition: Partition, mark: &ReindexMark) -> Result<()>;
}

/// A member status as served at the till: rendered once by the engine, served as bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedStatus {
    pub franchise_id: FranchiseId,
    pub version: u64,
    /// The program version the status was rendered with. A reader that knows a newer current
    /// version renders the status again (`loyalty_gateway::state::Gateway::member_status`), so
    /// a program change shows in every member's status at once, not at their next event. `0`:
    /// unknown (written before this field existed), always rendered again.
    #[serde(default)]
    pub program_version: u32,
    /// The JSON of [`loyalty_domain::MemberStatus`].
    pub json: Bytes,
}

/// The hot cache of member statuses, read on every checkout. A cache: losing it loses nothing.
#[async_trait]
pub trait HotCache: Send + Sync + 'static {
    async fn status(&self, member: &MemberId) -> Result<Option<CachedStatus>>;
    /// Stores each status unless the cache holds a newer version of it.
    async fn put_statuses(&self, statuses: Vec<(MemberId, CachedStatus)>) -> Result<()>;
    /// Forgets the statuses of `members` (readers then fall back to the store), for a repair
    /// of entries that are wrong rather than old (`loyalty audit --repair-cache`).
    async fn evict(&self, members: &[MemberId]) -> Result<()>;
}

/// A member of one partition as the due index holds it ([`StateStore::partition_members`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedMember {
    pub state: MemberState,
    /// Its stored due time; `None`: nothing is due.
    pub due: Option<Timestamp>,
}

/// A due index entry written alone ([`StateStore::put_due`]), by the re-index of the member's
/// partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueWrite {
    pub member_id: MemberId,
    pub franchise_id: FranchiseId,
    /// The member's stored version the entry was computed from: the write's fence.
    pub version: u64,
    pub due: Due,
}

/// How far the due entries of a partition's members are re-indexed, as its owner stored it
/// ([`StateStore::put_reindex_mark`]; [`crate::engine::reindex`]). Stores keep it as the JSON
/// of this type.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReindexMark {
    /// Every member of the partition stored before the sweep of all members began has an
    /// entry (those stored before the due index existed included); later writes give one.
    #[serde(default)]
    pub all_members: bool,
    /// Per franchise, the program version every due entry of its members in the partition
    /// was computed with, or a newer one.
    #[serde(default)]
    pub programs: std::collections::BTreeMap<FranchiseId, u32>,
}
