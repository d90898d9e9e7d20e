//! The ScyllaDB [`StateStore`].
//!
//! # Schema (`migrations/0001_init.cql`)
//!
//! | table | partition key | clustering | holds |
//! | --- | --- | --- | --- |
//! | `franchises` | `id` | | franchise JSON |
//! | `programs` | `franchise_id` | `version DESC` | program JSON, written once (`IF NOT EXISTS`) |
//! | `stores` | `id` | | store JSON |
//! | `api_keys` | `key_hash` | | principal JSON of an active key (a lookup checks it against the key's record) |
//! | `api_key_records` | `franchise_id` | `key_id` | `version`, `key_hash`, API key record JSON; `version` fences writes (LWT) (`migrations/0004_api_key_ids.cql`) |
//! | `member_events` | `pk` (member id) | `kind, seq DESC, event_id` | static `version` + `state`; ledger rows (`kind = 1`, by `seq`); idempotency records (`kind = 2`, by `franchise/event`); outbox markers (`kind = 3`, by entry id) |
//! | `processed_by_event` | `(franchise_id, event_id)` | | `pk` of the `member_events` partition holding the record |
//! | `event_claims` | `(franchise_id, event_id)` | | the owning command's fingerprint, first claim wins (`migrations/0002_event_claims.cql`) |
//! | `stores_by_franchise` | `franchise_id` | `store_id` | store JSON, for `stores_of` (`migrations/0003_dashboards.cql`) |
//! | `dashboard_days` | `franchise_id` | `day` | the days that have aggregates |
//! | `dashboard_totals` | `(franchise_id, day)` | `store_id` | one counter per counter of `DayTotals` |
//! | `dashboard_rewards` | `(franchise_id, day)` | `store_id, reward_id` | redemptions by reward (counter) |
//! | `dashboard_visits` | `(franchise_id, day)` | `scope, key` | visit counts (counter; `scope` `''` = the franchise, `key` the packed `VisitKey`) |
//! | `dashboard_tiers` | `franchise_id` | `tier` | members by tier (counter) |
//! | `dashboard_segments` | `franchise_id` | `segment, day` | changes of segment sizes by local day (counter; `migrations/0006_segments.cql`) |
//! | `due_by_partition` | `partition` | `due_at, member_id` | the scheduler's due index; the truth is `member_events`' static `due_partition`, `due_at` (`migrations/0005_member_due.cql`) |
//! | `outbox` | `id` | | campaign outbox entry JSON, with `member_id`, `partition`, `next_attempt_at`, `state`, `attempts` (the attempts' LWT fence) and `written_at_ms`; committed by its marker, a `member_events` row of kind 3 written in the member's batch (`migrations/0008_outbox.cql`; see the `outbox` module) |
//! | `outbox_pending` | `partition` | `next_attempt_at, id` | the pending entries, earliest first, for `outbox_due`; a row disagreeing with its entry is stale and deleted by the reader |
//!
//! # Dashboards
//!
//! The dashboards' aggregates are counters, incremented by [`ScyllaStore::commit`] once every
//! member partition's batch of the commit was written: first the `(franchise, day)` rows of
//! `dashboard_days` the delta touches, then one counter batch per chunk of each `(franchise,
//! day)` partition's increments, and the tier counts. They are **not atomic with the member
//! batches** (counter updates cannot join a conditional batch): a commit that fails adds
//! nothing, although some members' shares may be written (whose events are replays from then
//! on: their share of the delta is missing), and a failure while incrementing leaves part of
//! the increments applied (counter updates are not idempotent and are not retried). A rebuild
//! of the projections restores exact figures. A visit count that reaches 0 stays at 0 (a
//! deleted counter cannot be written again) and reads skip it. [`StateStore::dashboard_rows`]
//! reads the days of the range from `dashboard_days`, then each day's three partitions, 16
//! days at a time.
//!
//! # Atomicity and fencing
//!
//! Cassandra and ScyllaDB make a batch atomic and conditional only inside one partition. So
//! everything one [`EffectBatch`] changes for one member lives in that member's partition, and
//! [`ScyllaStore::commit`] writes each member's share with ONE logged, conditional batch (a
//! lightweight transaction, Paxos at LOCAL_SERIAL):
//!
//! - `UPDATE … SET version, state … IF version = <expected>` (`IF version = null` when the
//!   member must not exist yet): the fence. A zombie owner, or any writer that read an older
//!   version, loses, and the whole batch of the partition is refused;
//! - `INSERT` of the member's ledger entries (unconditional: the fence covers them);
//! - `INSERT … IF NOT EXISTS` of each new idempotency record, `UPDATE` of a replaced one
//!   (a purchase updated by a refund is always the refunding member's own record).
//!
//! Either all of these statements are applied or none is; `[applied] = false` is reported as
//! [`Error::Conflict`]. Records of events without a member (anonymous sales) go, one
//! conditional batch each, to partitions `~anon/<franchise>/<bucket>` (1024 buckets by a hash
//! of the event id), which never hold a member state.
//!
//! A batch that touches several members is therefore atomic **per member**, not as a whole: on
//! a `Conflict` (or `Unavailable`) some members' shares may be written and others not. That is
//! what the engine needs: after a failed commit it drops its actors and processes the batch
//! again from the store, where the written members' events are found recorded (replays) and
//! the others are applied on the stored state. The port's documentation says so.
//!
//! # Finding a record by event id
//!
//! [`StateStore::processed`] is asked by (franchise, event id), without the member. The
//! second access path, `processed_by_event`, is written **before** the member partition: the
//! commit first claims `(franchise, event id) → pk` with `INSERT … IF NOT EXISTS` for every
//! record it writes, and only then runs the partition batches. So every committed record is reachable
//! from its claim, whatever crashes in between; a claim whose partition holds no record (its
//! batch failed or the writer died) means "not recorded", since `processed` always reads the
//! record itself from the member partition, the only source of truth. A retry of the same event
//! maps to the same partition (the member is part of the event's content; anonymous buckets
//! hash the event id), finds its own claim and proceeds. A claim held by another partition is an
//! event id reused for another member: if that partition has the record, the new one is a
//! `Conflict`; if not, the other write is in flight (`Unavailable`: retry) until the claim is
//! older than [`CLAIM_LEASE_MS`], when it is taken over with a compare-and-set. The index only
//! locates records: which command owns an event id is decided before, once and for good, by
//! the engine's [`StateStore::claim_events`] (table `event_claims`, one `INSERT … IF NOT
//! EXISTS` per id, never taken over), so a second member's use of the id is refused as a
//! conflict before it reaches a batch, however long a writer stalls.
//!
//! # Reads
//!
//! Reads and plain writes run at the configured consistency (LOCAL_QUORUM), which sees every
//! committed conditional write; with `local_datacenter` set, requests stay in that datacenter. Statements are prepared once, so the driver routes each
//! request to a replica of its partition (token-aware routing is the driver's default for
//! prepared statements, and shard-aware on ScyllaDB). The ledger and the member scan are read
//! with driver paging. [`StateStore::members_after`] walks the partitions in token order
//! (`token(pk) > token(after)`), which is the adapter's scan order the port allows; partitions
//! without a member state (anonymous buckets, unknown-member rejections) are skipped.
//!
//! # Sizes
//!
//! A member's partition grows with its history (one ledger row and one record per event, a few
//! hundred bytes each): tens of thousands of events per member stay well within ScyllaDB's
//! comfortable partition sizes. One member's share of a batch is one CQL batch; ScyllaDB refuses
//! batches above `batch_size_fail_threshold_in_kb` (1 MiB by default), far above an engine
//! batch's share for one member.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::future::{join_all, try_join_all};
use futures::{stream, StreamExt, TryStreamExt};
use loyalty_core::metrics::metrics;
use loyalty_core::model::{ApiKey, Franchise, Principal, Store};
use loyalty_core::ports::{
    DashboardRows, DueMember, DueWrite, EffectBatch, EventClaim, IndexedMember, OutboxEntry,
    Partition, ReindexMark, StateStore,
};
use loyalty_core::sealing::KeyRing;
use loyalty_core::{Error, Result};
use loyalty_domain::dashboard::{DashboardDelta, DayTotals, Scope, VisitKey, VisitRow};
use loyalty_domain::{
    Day, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState, ProcessedEvent,
    Program, RewardId, StoreId, Timestamp,
};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{Counter, CqlValue, Row};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ScyllaConfig;

mod outbox;

/// Age after which a claim of an event id whose partition holds no record is taken to be left
/// by a failed writer and may be taken over by another partition.
pub const CLAIM_LEASE_MS: i64 = 60_000;

/// `kind` of ledger rows in `member_events`.
const KIND_LEDGER: i8 = 1;
/// `kind` of idempotency records in `member_events`.
const KIND_PROCESSED: i8 = 2;
/// Partitions of the records of anonymous events, per franchise.
const ANON_BUCKETS: u64 = 1024;
/// Rows per page of paged reads.
const PAGE_SIZE: i32 = 1000;

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("scylla: {what}: {e}"))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn to_i64(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid(format!("{what} {v} does not fit a CQL bigint")))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// FNV-1a, 64 bits: a stable hash (the standard library's is not stable across releases).
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The `member_events` partition of an idempotency record: its member's, or an anonymous
/// bucket chosen by the event id alone (so that every retry of the event lands on it). `~` and
/// `/` never occur in ids, so a bucket never collides with a member id.
fn record_pk(franchise: &FranchiseId, event: &EventId, member: Option<&MemberId>) -> String {
    match member {
        Some(m) => m.as_str().to_owned(),
        None => format!(
            "~anon/{franchise}/{}",
            fnv(event.as_str().as_bytes()) % ANON_BUCKETS
        ),
    }
}

/// The clustering `event_id` of a record: franchise and event, since two franchises may use
/// the same event id (and a member partition could, through a bad request, receive both).
fn record_key(franchise: &FranchiseId, event: &EventId) -> String {
    format!("{franchise}/{event}")
}

/// Builds a session with the configured contact points, consistency and request timeout.
/// Use it to run [`crate::migrate`] before [`ScyllaStore::from_session`].
pub async fn session(config: &ScyllaConfig) -> Result<Session> {
    config.validate()?;
    // Token-aware routing (to a replica of the statement's partition, and on ScyllaDB to the
    // shard that owns it) is the driver's default for prepared statements; said explicitly.
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .consistency(config.consistency)
        .serial_consistency(Some(config.serial_consistency))
        .request_timeout(Some(config.request_timeout))
        .build();
    SessionBuilder::new()
        .known_nodes(&config.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(|e| unavailable(&format!("connecting to {:?}", config.nodes), e))
}

/// Every statement of the store, prepared once per session.
struct Statements {
    put_franchise: PreparedStatement,
    get_franchise: PreparedStatement,
    all_franchises: PreparedStatement,
    put_program: PreparedStatement,
    get_program: PreparedStatement,
    put_store: PreparedStatement,
    get_store: PreparedStatement,
    put_api_key: PreparedStatement,
    get_api_key: PreparedStatement,
    delete_api_key: PreparedStatement,
    insert_key_record: PreparedStatement,
    update_key_record: PreparedStatement,
    get_key_record: PreparedStatement,
    key_records_of: PreparedStatement,
    get_member: PreparedStatement,
    scan_members: PreparedStatement,
    scan_members_after: PreparedStatement,
    ledger_page: PreparedStatement,
    get_record: PreparedStatement,
    get_claim: PreparedStatement,
    claim: PreparedStatement,
    take_over: PreparedStatement,
    member_create: PreparedStatement,
    member_update: PreparedStatement,
    ledger_insert: PreparedStatement,
    record_insert: PreparedStatement,
    record_replace: PreparedStatement,
    claim_event: PreparedStatement,
    put_store_index: PreparedStatement,
    drop_store_index: PreparedStatement,
    stores_of: PreparedStatement,
    dash_day: PreparedStatement,
    dash_days: PreparedStatement,
    add_totals: PreparedStatement,
    add_reward: PreparedStatement,
    add_visit: PreparedStatement,
    add_tier: PreparedStatement,
    add_segment: PreparedStatement,
    read_segments: PreparedStatement,
    read_totals: PreparedStatement,
    read_rewards: PreparedStatement,
    read_visits: PreparedStatement,
    read_tiers: PreparedStatement,
    member_due: PreparedStatement,
    member_due_clear: PreparedStatement,
    due_insert: PreparedStatement,
    due_read: PreparedStatement,
    due_of: PreparedStatement,
    due_delete: PreparedStatement,
    member_listed: PreparedStatement,
    members_listed: PreparedStatement,
    member_indexed: PreparedStatement,
    member_due_fenced: PreparedStatement,
    get_reindex_mark: PreparedStatement,
    put_reindex_mark: PreparedStatement,
}

/// The counter columns of `dashboard_totals`, in the order of [`totals_counters`].
const TOTALS_COLUMNS: [&str; 11] = [
    "member_purchases",
    "anonymous_purchases",
    "member_revenue_cents",
    "anonymous_revenue_cents",
    "refunded_cents",
    "enrolments",
    "points_issued",
    "points_redeemed",
    "points_expired",
    "redemptions",
    "reward_cost_cents",
];

/// The counters of `t`, in the order of [`TOTALS_COLUMNS`].
fn totals_counters(t: &DayTotals) -> [u64; 11] {
    [
        t.member_purchases,
        t.anonymous_purchases,
        t.member_revenue_cents,
        t.anonymous_revenue_cents,
        t.refunded_cents,
        t.enrolments,
        t.points_issued,
        t.points_redeemed,
        t.points_expired,
        t.redemptions,
        t.reward_cost_cents,
    ]
}

/// Which counter table an increment is for.
#[derive(Clone, Copy, Debug)]
enum Counted {
    Totals,
    Reward,
    Visit,
    Tier,
    Segment,
}

/// Statements per counter batch (each a few dozen bytes: far below the batch size warnings).
const COUNTER_BATCH: usize = 100;
/// Partitions of the dashboards written or read at once by one call.
const DASHBOARD_CONCURRENCY: usize = 16;

/// A day as the CQL `int` column.
fn day_i32(day: Day) -> Result<i32> {
    i32::try_from(day.0).map_err(|_| Error::Invalid(format!("day {} is out of range", day.0)))
}

/// A counter increment, saturating (as the domain's sums do).
fn increment(v: u64) -> CqlValue {
    CqlValue::Counter(Counter(i64::try_from(v).unwrap_or(i64::MAX)))
}

/// A stored counter (`null` when never incremented; negative values, which no commit writes,
/// read as 0).
fn count(c: Option<Counter>) -> u64 {
    c.map_or(0, |c| u64::try_from(c.0).unwrap_or(0))
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements> {
        let prep = |cql: String| async move {
            let mut p = session.prepare(cql.as_str()).await.map_err(|e| {
                unavailable(
                    &format!("preparing `{cql}` (is the schema migrated? `loyalty migrate`)"),
                    e,
                )
            })?;
            p.set_page_size(PAGE_SIZE);
            Ok::<_, Error>(p)
        };
        let me = format!("{ks}.member_events");
        Ok(Statements {
            put_franchise: prep(format!(
                "INSERT INTO {ks}.franchises (id, body) VALUES (?, ?)"
            ))
            .await?,
            get_franchise: prep(format!("SELECT body FROM {ks}.franchises WHERE id = ?")).await?,
            all_franchises: prep(format!("SELECT body FROM {ks}.franchises")).await?,
            put_program: prep(format!(
                "INSERT INTO {ks}.programs (franchise_id, version, body) VALUES (?, ?, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            get_program: prep(format!(
                "SELECT body FROM {ks}.programs WHERE franchise_id = ? AND version = ?"
            ))
            .await?,
            put_store: prep(format!("INSERT INTO {ks}.stores (id, body) VALUES (?, ?)")).await?,
            get_store: prep(format!("SELECT body FROM {ks}.stores WHERE id = ?")).await?,
            put_api_key: prep(format!(
                "INSERT INTO {ks}.api_keys (key_hash, body) VALUES (?, ?)"
            ))
            .await?,
            get_api_key: prep(format!("SELECT body FROM {ks}.api_keys WHERE key_hash = ?")).await?,
            delete_api_key: prep(format!("DELETE FROM {ks}.api_keys WHERE key_hash = ?")).await?,
            insert_key_record: prep(format!(
                "INSERT INTO {ks}.api_key_records (franchise_id, key_id, version, key_hash, body) \
                 VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            update_key_record: prep(format!(
                "UPDATE {ks}.api_key_records SET version = ?, key_hash = ?, body = ? \
                 WHERE franchise_id = ? AND key_id = ? IF version = ?"
            ))
            .await?,
            get_key_record: prep(format!(
                "SELECT body FROM {ks}.api_key_records WHERE franchise_id = ? AND key_id = ?"
            ))
            .await?,
            key_records_of: prep(format!(
                "SELECT body FROM {ks}.api_key_records WHERE franchise_id = ?"
            ))
            .await?,
            get_member: prep(format!("SELECT state FROM {me} WHERE pk = ? LIMIT 1")).await?,
            scan_members: prep(format!("SELECT DISTINCT pk, state FROM {me}")).await?,
            scan_members_after: prep(format!(
                "SELECT DISTINCT pk, state FROM {me} WHERE token(pk) > token(?)"
            ))
            .await?,
            ledger_page: prep(format!(
                "SELECT body FROM {me} WHERE pk = ? AND kind = {KIND_LEDGER} AND seq < ? LIMIT ?"
            ))
            .await?,
            get_record: prep(format!(
                "SELECT body FROM {me} WHERE pk = ? AND kind = {KIND_PROCESSED} AND seq = 0 \
                 AND event_id = ?"
            ))
            .await?,
            get_claim: prep(format!(
                "SELECT pk FROM {ks}.processed_by_event WHERE franchise_id = ? AND event_id = ?"
            ))
            .await?,
            claim: prep(format!(
                "INSERT INTO {ks}.processed_by_event (franchise_id, event_id, pk, claimed_at_ms) \
                 VALUES (?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            take_over: prep(format!(
                "UPDATE {ks}.processed_by_event SET pk = ?, claimed_at_ms = ? \
                 WHERE franchise_id = ? AND event_id = ? IF pk = ? AND claimed_at_ms = ?"
            ))
            .await?,
            member_create: prep(format!(
                "UPDATE {me} SET version = ?, state = ? WHERE pk = ? IF version = null"
            ))
            .await?,
            member_update: prep(format!(
                "UPDATE {me} SET version = ?, state = ? WHERE pk = ? IF version = ?"
            ))
            .await?,
            ledger_insert: prep(format!(
                "INSERT INTO {me} (pk, kind, seq, event_id, body) \
                 VALUES (?, {KIND_LEDGER}, ?, '', ?)"
            ))
            .await?,
            record_insert: prep(format!(
                "INSERT INTO {me} (pk, kind, seq, event_id, body) \
                 VALUES (?, {KIND_PROCESSED}, 0, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            record_replace: prep(format!(
                "UPDATE {me} SET body = ? WHERE pk = ? AND kind = {KIND_PROCESSED} AND seq = 0 \
                 AND event_id = ?"
            ))
            .await?,
            claim_event: prep(format!(
                "INSERT INTO {ks}.event_claims (franchise_id, event_id, fingerprint) \
                 VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            put_store_index: prep(format!(
                "INSERT INTO {ks}.stores_by_franchise (franchise_id, store_id, body) \
                 VALUES (?, ?, ?)"
            ))
            .await?,
            drop_store_index: prep(format!(
                "DELETE FROM {ks}.stores_by_franchise WHERE franchise_id = ? AND store_id = ?"
            ))
            .await?,
            stores_of: prep(format!(
                "SELECT body FROM {ks}.stores_by_franchise WHERE franchise_id = ?"
            ))
            .await?,
            dash_day: prep(format!(
                "INSERT INTO {ks}.dashboard_days (franchise_id, day) VALUES (?, ?)"
            ))
            .await?,
            dash_days: prep(format!(
                "SELECT day FROM {ks}.dashboard_days WHERE franchise_id = ? AND day >= ? \
                 AND day <= ?"
            ))
            .await?,
            add_totals: prep(format!(
                "UPDATE {ks}.dashboard_totals SET {} \
                 WHERE franchise_id = ? AND day = ? AND store_id = ?",
                TOTALS_COLUMNS
                    .iter()
                    .map(|c| format!("{c} = {c} + ?"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .await?,
            add_reward: prep(format!(
                "UPDATE {ks}.dashboard_rewards SET n = n + ? \
                 WHERE franchise_id = ? AND day = ? AND store_id = ? AND reward_id = ?"
            ))
            .await?,
            add_visit: prep(format!(
                "UPDATE {ks}.dashboard_visits SET n = n + ? \
                 WHERE franchise_id = ? AND day = ? AND scope = ? AND key = ?"
            ))
            .await?,
            add_tier: prep(format!(
                "UPDATE {ks}.dashboard_tiers SET n = n + ? WHERE franchise_id = ? AND tier = ?"
            ))
            .await?,
            add_segment: prep(format!(
                "UPDATE {ks}.dashboard_segments SET n = n + ? \
                 WHERE franchise_id = ? AND segment = ? AND day = ?"
            ))
            .await?,
            read_segments: prep(format!(
                "SELECT segment, day, n FROM {ks}.dashboard_segments WHERE franchise_id = ?"
            ))
            .await?,
            read_totals: prep(format!(
                "SELECT store_id, {} FROM {ks}.dashboard_totals \
                 WHERE franchise_id = ? AND day = ?",
                TOTALS_COLUMNS.join(", ")
            ))
            .await?,
            read_rewards: prep(format!(
                "SELECT store_id, reward_id, n FROM {ks}.dashboard_rewards \
                 WHERE franchise_id = ? AND day = ?"
            ))
            .await?,
            read_visits: prep(format!(
                "SELECT scope, key, n FROM {ks}.dashboard_visits \
                 WHERE franchise_id = ? AND day = ?"
            ))
            .await?,
            read_tiers: prep(format!(
                "SELECT tier, n FROM {ks}.dashboard_tiers WHERE franchise_id = ?"
            ))
            .await?,
            member_due: prep(format!(
                "UPDATE {me} SET due_partition = ?, due_at = ? WHERE pk = ?"
            ))
            .await?,
            // Nothing due: the partition stays, for the partition's re-index.
            member_due_clear: prep(format!(
                "UPDATE {me} SET due_partition = ?, due_at = null WHERE pk = ?"
            ))
            .await?,
            due_insert: prep(format!(
                "INSERT INTO {ks}.due_by_partition (partition, due_at, member_id, franchise_id) \
                 VALUES (?, ?, ?, ?)"
            ))
            .await?,
            due_read: prep(format!(
                "SELECT due_at, member_id, franchise_id FROM {ks}.due_by_partition \
                 WHERE partition = ? AND due_at <= ? LIMIT ?"
            ))
            .await?,
            due_of: prep(format!(
                "SELECT due_partition, due_at FROM {me} WHERE pk = ? LIMIT 1"
            ))
            .await?,
            due_delete: prep(format!(
                "DELETE FROM {ks}.due_by_partition WHERE partition = ? AND due_at = ? \
                 AND member_id = ?"
            ))
            .await?,
            member_listed: prep(format!(
                "INSERT INTO {ks}.members_by_partition (partition, franchise_id, member_id) \
                 VALUES (?, ?, ?)"
            ))
            .await?,
            members_listed: prep(format!(
                "SELECT member_id FROM {ks}.members_by_partition \
                 WHERE partition = ? AND franchise_id = ? AND member_id > ? LIMIT ?"
            ))
            .await?,
            member_indexed: prep(format!(
                "SELECT state, due_partition, due_at FROM {me} WHERE pk = ? LIMIT 1"
            ))
            .await?,
            member_due_fenced: prep(format!(
                "UPDATE {me} SET due_partition = ?, due_at = ? WHERE pk = ? IF version = ?"
            ))
            .await?,
            get_reindex_mark: prep(format!(
                "SELECT body FROM {ks}.reindex_marks WHERE partition = ?"
            ))
            .await?,
            put_reindex_mark: prep(format!(
                "INSERT INTO {ks}.reindex_marks (partition, body) VALUES (?, ?)"
            ))
            .await?,
        })
    }
}

/// What one commit writes into one `member_events` partition.
#[derive(Default)]
struct PartitionWrite {
    /// (new version, state JSON, expected version).
    member: Option<(i64, Vec<u8>, u64)>,
    /// (seq, entry JSON).
    ledger: Vec<(i64, Vec<u8>)>,
    /// Record key → (must not exist yet, record JSON).
    records: BTreeMap<String, (bool, Vec<u8>)>,
    /// The member's due entry (partition, due time), `None` to leave it.
    due: Option<(i32, Option<i64>)>,
    /// Markers of the member's new outbox entries: (entry id, entry JSON).
    outbox: Vec<(String, Vec<u8>)>,
}

/// The outcome of a conditional statement: `[applied]` and the row the server sent with it
/// (the current values when not applied).
struct Lwt {
    applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl Lwt {
    fn of(result: QueryResult) -> Result<Lwt> {
        let rows = result
            .into_rows_result()
            .map_err(|e| unavailable("reading a conditional write's result", e))?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let row = rows
            .maybe_first_row::<Row>()
            .map_err(|e| unavailable("reading a conditional write's result", e))?
            .ok_or_else(|| {
                Error::Unavailable("scylla: a conditional write returned no row".into())
            })?;
        let columns: Vec<(String, Option<CqlValue>)> = names.into_iter().zip(row.columns).collect();
        let applied = columns
            .first()
            .and_then(|(_, v)| v.as_ref())
            .and_then(CqlValue::as_boolean)
            .ok_or_else(|| {
                Error::Unavailable("scylla: a conditional write returned no [applied]".into())
            })?;
        Ok(Lwt { applied, columns })
    }

    fn column(&self, name: &str) -> Option<&CqlValue> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }
}

/// The ScyllaDB [`StateStore`]. See the module documentation for the schema and semantics.
pub struct ScyllaStore {
    session: Session,
    st: Statements,
    ob: outbox::OutboxStatements,
    /// Seals and opens members' personal data (README "Personal data at rest").
    keys: KeyRing,
}

impl ScyllaStore {
    /// Connects to the cluster and prepares every statement. The schema must have been
    /// migrated ([`crate::migrate`]); an unmigrated keyspace fails here, naming the statement.
    /// Members' personal data is sealed and opened with `keys`.
    pub async fn connect(config: &ScyllaConfig, keys: KeyRing) -> Result<ScyllaStore> {
        let s = session(config).await?;
        ScyllaStore::from_session(s, config, keys).await
    }

    /// Builds the store on an existing session (for instance the one [`crate::migrate`] ran
    /// on).
    pub async fn from_session(
        session: Session,
        config: &ScyllaConfig,
        keys: KeyRing,
    ) -> Result<ScyllaStore> {
        config.validate()?;
        let st = Statements::prepare(&session, &config.keyspace).await?;
        let ob = outbox::OutboxStatements::prepare(&session, &config.keyspace).await?;
        Ok(ScyllaStore {
            session,
            st,
            ob,
            keys,
        })
    }

    /// The driver session (for operators' tools and tests).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The `body` blob of the first row of a single-partition read.
    async fn get_body(
        &self,
        what: &str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<Vec<u8>>> {
        let rows = self
            .session
            .execute_unpaged(stmt, values)
            .await
            .map_err(|e| unavailable(what, e))?
            .into_rows_result()
            .map_err(|e| unavailable(what, e))?;
        Ok(rows
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .map_err(|e| unavailable(what, e))?
            .and_then(|(b,)| b))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        what: &str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<T>> {
        match self.get_body(what, stmt, values).await? {
            Some(b) => Ok(Some(self.keys.scope(|| decode(what, &b))?)),
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        what: &str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<()> {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(what, e))
    }

    /// The record of `event` of `franchise` in partition `pk`, if that partition holds it.
    async fn record_in(
        &self,
        pk: &str,
        franchise: &FranchiseId,
        event: &EventId,
    ) -> Result<Option<ProcessedEvent>> {
        let key = record_key(franchise, event);
        let rec: Option<ProcessedEvent> = self
            .get_json("processed event", &self.st.get_record, (pk, key.as_str()))
            .await?;
        match rec {
            Some(r) if &r.franchise_id == franchise && &r.event_id == event => Ok(Some(r)),
            Some(r) => Err(Error::Corrupt(format!(
                "record {key} of partition {pk} names {}/{}",
                r.franchise_id, r.event_id
            ))),
            None => Ok(None),
        }
    }

    async fn processed_one(
        &self,
        franchise: &FranchiseId,
        event: &EventId,
    ) -> Result<Option<ProcessedEvent>> {
        let what = "processed event index";
        let rows = self
            .session
            .execute_unpaged(&self.st.get_claim, (franchise.as_str(), event.as_str()))
            .await
            .map_err(|e| unavailable(what, e))?
            .into_rows_result()
            .map_err(|e| unavailable(what, e))?;
        let holder = rows
            .maybe_first_row::<(Option<String>,)>()
            .map_err(|e| unavailable(what, e))?
            .and_then(|(pk,)| pk);
        match holder {
            Some(pk) => self.record_in(&pk, franchise, event).await,
            None => Ok(None),
        }
    }

    /// Claims an event id for `fingerprint` (a lightweight transaction); returns the owner.
    async fn claim_event(&self, c: &EventClaim) -> Result<Fingerprint> {
        let what = "claiming an event id's owner";
        let result = self
            .session
            .execute_unpaged(
                &self.st.claim_event,
                (
                    c.franchise_id.as_str(),
                    c.event_id.as_str(),
                    c.fingerprint.0.as_slice(),
                ),
            )
            .await
            .map_err(|e| unavailable(what, e))?;
        let lwt = Lwt::of(result)?;
        if lwt.applied {
            return Ok(c.fingerprint);
        }
        let owner = lwt
            .column("fingerprint")
            .and_then(CqlValue::as_blob)
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| Error::Corrupt(format!("{what}: the claim holds no fingerprint")))?;
        Ok(Fingerprint(owner))
    }

    /// Claims `(franchise, event) → pk` in the index before the record is written.
    async fn claim(&self, franchise: &FranchiseId, event: &EventId, pk: &str) -> Result<()> {
        let what = "claiming an event id";
        let now = now_ms();
        let result = self
            .session
            .execute_unpaged(
                &self.st.claim,
                (franchise.as_str(), event.as_str(), pk, now),
            )
            .await
            .map_err(|e| unavailable(what, e))?;
        let lwt = Lwt::of(result)?;
        if lwt.applied {
            return Ok(());
        }
        let holder = lwt
            .column("pk")
            .and_then(CqlValue::as_text)
            .cloned()
            .unwrap_or_default();
        if holder == pk {
            // Ours: a retry after a failed or unanswered commit.
            return Ok(());
        }
        if self.record_in(&holder, franchise, event).await?.is_some() {
            return Err(Error::Conflict(format!(
                "event {event} of {franchise} is already recorded"
            )));
        }
        let claimed_at = lwt
            .column("claimed_at_ms")
            .and_then(CqlValue::as_bigint)
            .unwrap_or(0);
        if now.saturating_sub(claimed_at) < CLAIM_LEASE_MS {
            return Err(Error::Unavailable(format!(
                "scylla: event {event} of {franchise} is being written for another member; retry"
            )));
        }
        let result = self
            .session
            .execute_unpaged(
                &self.st.take_over,
                (
                    pk,
                    now,
                    franchise.as_str(),
                    event.as_str(),
                    holder.as_str(),
                    claimed_at,
                ),
            )
            .await
            .map_err(|e| unavailable(what, e))?;
        if Lwt::of(result)?.applied {
            tracing::warn!(%franchise, %event, stale = %holder, "took over a stale event-id claim");
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "scylla: the claim of event {event} of {franchise} changed while taking it over; retry"
            )))
        }
    }

    /// Adds a batch's dashboard delta to the counters: first the days it touches (so that a
    /// reader that finds a counter finds its day), then one counter batch per chunk of each
    /// `(franchise, day)` partition's increments, and the tier counts. Not atomic: on an error
    /// some increments may have been applied (see the crate documentation).
    async fn add_dashboard(&self, d: &DashboardDelta) -> Result<()> {
        type Partition = Vec<(Counted, Vec<CqlValue>)>;
        let mut parts: BTreeMap<(String, i32), Partition> = BTreeMap::new();
        for ((f, store, day), t) in &d.totals {
            let part = parts
                .entry((f.as_str().to_owned(), day_i32(*day)?))
                .or_default();
            let counters = totals_counters(t);
            if counters.iter().any(|c| *c != 0) {
                let mut v: Vec<CqlValue> = counters.into_iter().map(increment).collect();
                v.push(CqlValue::Text(f.as_str().to_owned()));
                v.push(CqlValue::Int(day_i32(*day)?));
                v.push(CqlValue::Text(store.as_str().to_owned()));
                part.push((Counted::Totals, v));
            }
            for (r, n) in t.rewards.iter().filter(|(_, n)| **n != 0) {
                part.push((
                    Counted::Reward,
                    vec![
                        increment(*n),
                        CqlValue::Text(f.as_str().to_owned()),
                        CqlValue::Int(day_i32(*day)?),
                        CqlValue::Text(store.as_str().to_owned()),
                        CqlValue::Text(r.as_str().to_owned()),
                    ],
                ));
            }
        }
        for ((f, scope, day), row) in &d.visits {
            let part = parts
                .entry((f.as_str().to_owned(), day_i32(*day)?))
                .or_default();
            for (k, n) in row.iter().filter(|(_, n)| **n != 0) {
                part.push((
                    Counted::Visit,
                    vec![
                        CqlValue::Counter(Counter(*n)),
                        CqlValue::Text(f.as_str().to_owned()),
                        CqlValue::Int(day_i32(*day)?),
                        CqlValue::Text(scope.key().to_owned()),
                        // The packed key, bit for bit (it stays below 2^31).
                        CqlValue::Int(k.pack() as i32),
                    ],
                ));
            }
        }
        parts.retain(|_, p| !p.is_empty());

        let days: Vec<(String, i32)> = parts.keys().cloned().collect();
        let days = days.into_iter().map(|(f, day)| self.add_day(f, day));
        stream::iter(days)
            .buffer_unordered(DASHBOARD_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;

        let mut batches: Vec<Partition> = Vec::new();
        for (_, p) in parts {
            let mut p = p.into_iter().peekable();
            while p.peek().is_some() {
                batches.push(p.by_ref().take(COUNTER_BATCH).collect());
            }
        }
        let tiers: Partition = d
            .tiers
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|((f, tier), n)| {
                (
                    Counted::Tier,
                    vec![
                        CqlValue::Counter(Counter(*n)),
                        CqlValue::Text(f.as_str().to_owned()),
                        CqlValue::Text(tier.clone()),
                    ],
                )
            })
            .collect();
        for chunk in tiers.chunks(COUNTER_BATCH) {
            batches.push(chunk.to_vec());
        }
        let segments: Partition = d
            .segments
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|((f, name, day), n)| {
                Ok((
                    Counted::Segment,
                    vec![
                        CqlValue::Counter(Counter(*n)),
                        CqlValue::Text(f.as_str().to_owned()),
                        CqlValue::Text(name.clone()),
                        CqlValue::Int(day_i32(*day)?),
                    ],
                ))
            })
            .collect::<Result<_>>()?;
        for chunk in segments.chunks(COUNTER_BATCH) {
            batches.push(chunk.to_vec());
        }
        let writes = batches.into_iter().map(|b| self.counter_batch(b));
        stream::iter(writes)
            .buffer_unordered(DASHBOARD_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Records that `franchise` has aggregates on `day`.
    async fn add_day(&self, franchise: String, day: i32) -> Result<()> {
        self.session
            .execute_unpaged(&self.st.dash_day, (franchise.as_str(), day))
            .await
            .map(|_| ())
            .map_err(|e| unavailable("adding to the dashboards", e))
    }

    /// Applies counter increments with one counter batch.
    async fn counter_batch(&self, statements: Vec<(Counted, Vec<CqlValue>)>) -> Result<()> {
        let mut batch = Batch::new(BatchType::Counter);
        let mut values = Vec::with_capacity(statements.len());
        for (kind, v) in statements {
            let st = match kind {
                Counted::Totals => &self.st.add_totals,
                Counted::Reward => &self.st.add_reward,
                Counted::Visit => &self.st.add_visit,
                Counted::Tier => &self.st.add_tier,
                Counted::Segment => &self.st.add_segment,
            };
            batch.append_statement(BatchStatement::PreparedStatement(st.clone()));
            values.push(v);
        }
        self.session
            .batch(&batch, values)
            .await
            .map(|_| ())
            .map_err(|e| unavailable("adding to the dashboards", e))
    }

    /// The aggregates of one `(franchise, day)` partition: totals by store and visit rows by
    /// scope, zero rows left out.
    async fn dashboard_day(&self, franchise: &str, day: i32) -> Result<DashboardRows> {
        let what = "reading dashboards";
        let d = u32::try_from(day)
            .map(Day)
            .map_err(|_| Error::Corrupt(format!("scylla: {what}: day {day}")))?;
        let store_id = |s: &str| {
            StoreId::parse(s)
                .map_err(|e| Error::Corrupt(format!("scylla: {what}: store id {s:?}: {e}")))
        };
        type TotalsRow = (
            String,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
            Option<Counter>,
        );
        let mut totals: BTreeMap<String, DayTotals> = BTreeMap::new();
        let mut rows = self
            .session
            .execute_iter(self.st.read_totals.clone(), (franchise, day))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<TotalsRow>()
            .map_err(|e| unavailable(what, e))?;
        while let Some(r) = rows.try_next().await.map_err(|e| unavailable(what, e))? {
            let t = DayTotals {
                member_purchases: count(r.1),
                anonymous_purchases: count(r.2),
                member_revenue_cents: count(r.3),
                anonymous_revenue_cents: count(r.4),
                refunded_cents: count(r.5),
                enrolments: count(r.6),
                points_issued: count(r.7),
                points_redeemed: count(r.8),
                points_expired: count(r.9),
                redemptions: count(r.10),
                reward_cost_cents: count(r.11),
                rewards: BTreeMap::new(),
            };
            totals.insert(r.0, t);
        }
        let mut rows = self
            .session
            .execute_iter(self.st.read_rewards.clone(), (franchise, day))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(String, String, Option<Counter>)>()
            .map_err(|e| unavailable(what, e))?;
        while let Some((store, reward, n)) =
            rows.try_next().await.map_err(|e| unavailable(what, e))?
        {
            let n = count(n);
            if n == 0 {
                continue;
            }
            let reward = RewardId::parse(&reward).map_err(|e| {
                Error::Corrupt(format!("scylla: {what}: reward id {reward:?}: {e}"))
            })?;
            totals.entry(store).or_default().rewards.insert(reward, n);
        }
        let mut out = DashboardRows::default();
        for (store, t) in totals {
            if !t.is_empty() {
                out.totals.push((store_id(&store)?, d, t));
            }
        }
        let mut visits: BTreeMap<String, VisitRow> = BTreeMap::new();
        let mut rows = self
            .session
            .execute_iter(self.st.read_visits.clone(), (franchise, day))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(String, i32, Option<Counter>)>()
            .map_err(|e| unavailable(what, e))?;
        while let Some((scope, key, n)) = rows.try_next().await.map_err(|e| unavailable(what, e))? {
            let n = n.map_or(0, |c| c.0);
            if n != 0 {
                visits
                    .entry(scope)
                    .or_default()
                    .insert(VisitKey::unpack(key as u32), n);
            }
        }
        for (scope, row) in visits {
            let s = Scope::from_key(&scope)
                .ok_or_else(|| Error::Corrupt(format!("scylla: {what}: scope {scope:?}")))?;
            out.visits
                .push((s, d, loyalty_domain::dashboard::PackedRow::of(&row)));
        }
        Ok(out)
    }

    /// Writes one partition's share of a commit with one (conditional) batch.
    async fn write_partition(&self, pk: &str, w: PartitionWrite) -> Result<()> {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        let mut conditional = false;
        let pk_value = || CqlValue::Text(pk.to_owned());
        if let Some((version, state, expected)) = w.member {
            conditional = true;
            if expected == 0 {
                batch.append_statement(BatchStatement::PreparedStatement(
                    self.st.member_create.clone(),
                ));
                values.push(vec![
                    CqlValue::BigInt(version),
                    CqlValue::Blob(state),
                    pk_value(),
                ]);
            } else {
                batch.append_statement(BatchStatement::PreparedStatement(
                    self.st.member_update.clone(),
                ));
                values.push(vec![
                    CqlValue::BigInt(version),
                    CqlValue::Blob(state),
                    pk_value(),
                    CqlValue::BigInt(to_i64("expected version", expected)?),
                ]);
            }
        }
        match w.due {
            Some((partition, Some(at))) => {
                batch.append_statement(BatchStatement::PreparedStatement(
                    self.st.member_due.clone(),
                ));
                values.push(vec![
                    CqlValue::Int(partition),
                    CqlValue::BigInt(at),
                    pk_value(),
                ]);
            }
            Some((partition, None)) => {
                batch.append_statement(BatchStatement::PreparedStatement(
                    self.st.member_due_clear.clone(),
                ));
                values.push(vec![CqlValue::Int(partition), pk_value()]);
            }
            None => {}
        }
        for (seq, body) in w.ledger {
            batch.append_statement(BatchStatement::PreparedStatement(
                self.st.ledger_insert.clone(),
            ));
            values.push(vec![
                pk_value(),
                CqlValue::BigInt(seq),
                CqlValue::Blob(body),
            ]);
        }
        for (key, (insert, body)) in w.records {
            if insert {
                conditional = true;
                batch.append_statement(BatchStatement::PreparedStatement(
                    self.st.record_insert.clone(),
                ));
                values.push(vec![pk_value(), CqlValue::Text(key), CqlValue::Blob(body)]);
            } else {
                batch.append_statement(BatchStatement::PreparedStatement(
                    self.st.record_replace.clone(),
                ));
                values.push(vec![CqlValue::Blob(body), pk_value(), CqlValue::Text(key)]);
            }
        }
        for (id, body) in w.outbox {
            batch.append_statement(BatchStatement::PreparedStatement(self.ob.mark.clone()));
            values.push(vec![pk_value(), CqlValue::Text(id), CqlValue::Blob(body)]);
        }
        if values.is_empty() {
            return Ok(());
        }
        let result = self
            .session
            .batch(&batch, values)
            .await
            .map_err(|e| unavailable(&format!("writing partition {pk}"), e))?;
        if conditional && !Lwt::of(result)?.applied {
            return Err(Error::Conflict(format!(
                "partition {pk}: the member's version changed or an event is already recorded"
            )));
        }
        Ok(())
    }
}

impl ScyllaStore {
    /// Lists members in `members_by_partition` (partition, franchise, member), before the
    /// writes that give them their due entry (a row is checked against the member's
    /// `due_partition` when read).
    async fn list_members(&self, rows: &[(i32, &FranchiseId, &MemberId)]) -> Result<()> {
        try_join_all(rows.iter().map(|(p, f, m)| {
            let values = (*p, f.as_str(), m.as_str());
            self.put(
                "listing a partition's member",
                &self.st.member_listed,
                values,
            )
        }))
        .await
        .map(|_| ())
    }

    /// A listed member's state and due entry, if its `due_partition` is still `partition`.
    async fn indexed_member(&self, partition: i32, member: &str) -> Result<Option<IndexedMember>> {
        let what = "reading a partition's member";
        let row = self
            .session
            .execute_unpaged(&self.st.member_indexed, (member,))
            .await
            .map_err(|e| unavailable(what, e))?
            .into_rows_result()
            .map_err(|e| unavailable(what, e))?
            .maybe_first_row::<(Option<Vec<u8>>, Option<i32>, Option<i64>)>()
            .map_err(|e| unavailable(what, e))?;
        match row {
            Some((Some(state), Some(p), at)) if p == partition => Ok(Some(IndexedMember {
                state: self.keys.scope(|| decode(what, &state))?,
                due: at.map(Timestamp),
            })),
            _ => Ok(None),
        }
    }

    /// One member's due entry, conditional on its version.
    async fn put_due_fenced(&self, w: &DueWrite) -> Result<()> {
        let what = "writing a due entry";
        let p = partition_column(w.due.partition)?;
        let version = to_i64("member version", w.version)?;
        let at = w.due.at.map(|t| t.0);
        if let Some(at) = at {
            let values = (p, at, w.member_id.as_str(), w.franchise_id.as_str());
            self.put("due index", &self.st.due_insert, values).await?;
        }
        let values = (p, at, w.member_id.as_str(), version);
        let result = self
            .session
            .execute_unpaged(&self.st.member_due_fenced, values)
            .await
            .map_err(|e| unavailable(what, e))?;
        if !Lwt::of(result)?.applied {
            metrics().store_conflicts.inc();
            return Err(Error::Conflict(format!(
                "member {} is not at version {}",
                w.member_id, w.version
            )));
        }
        Ok(())
    }
}

fn partition_column(partition: Partition) -> Result<i32> {
    i32::try_from(partition).map_err(|_| Error::Invalid(format!("partition {partition}")))
}

#[async_trait]
impl StateStore for ScyllaStore {
    async fn put_franchise(&self, franchise: &Franchise) -> Result<()> {
        self.put(
            "writing a franchise",
            &self.st.put_franchise,
            (franchise.id.as_str(), encode(franchise)?),
        )
        .await
    }

    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Franchise>> {
        self.get_json("franchise", &self.st.get_franchise, (id.as_str(),))
            .await
    }

    async fn franchises(&self) -> Result<Vec<Franchise>> {
        let what = "listing franchises";
        let mut rows = self
            .session
            .execute_iter(self.st.all_franchises.clone(), ())
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(Option<Vec<u8>>,)>()
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::new();
        while let Some((body,)) = rows.try_next().await.map_err(|e| unavailable(what, e))? {
            if let Some(b) = body {
                out.push(decode("franchise", &b)?);
            }
        }
        Ok(out)
    }

    async fn put_program(
        &self,
        franchise: &FranchiseId,
        version: u32,
        program: &Program,
    ) -> Result<()> {
        let v = i32::try_from(version)
            .map_err(|_| Error::Invalid(format!("program version {version} is too large")))?;
        let result = self
            .session
            .execute_unpaged(
                &self.st.put_program,
                (franchise.as_str(), v, encode(program)?),
            )
            .await
            .map_err(|e| unavailable("writing a program", e))?;
        if Lwt::of(result)?.applied {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "program version {version} of {franchise} already exists"
            )))
        }
    }

    async fn program(&self, franchise: &FranchiseId, version: u32) -> Result<Option<Program>> {
        let Ok(v) = i32::try_from(version) else {
            return Ok(None);
        };
        self.get_json("program", &self.st.get_program, (franchise.as_str(), v))
            .await
    }

    async fn put_store(&self, store: &Store) -> Result<()> {
        let what = "writing a store";
        let body = encode(store)?;
        // A store moved to another franchise leaves the old franchise's index.
        let old: Option<Store> = self
            .get_json("store", &self.st.get_store, (store.id.as_str(),))
            .await?;
        if let Some(old) = old.filter(|o| o.franchise_id != store.franchise_id) {
            self.put(
                what,
                &self.st.drop_store_index,
                (old.franchise_id.as_str(), store.id.as_str()),
            )
            .await?;
        }
        self.put(
            what,
            &self.st.put_store_index,
            (
                store.franchise_id.as_str(),
                store.id.as_str(),
                body.as_slice(),
            ),
        )
        .await?;
        self.put(what, &self.st.put_store, (store.id.as_str(), body))
            .await
    }

    async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
        self.get_json("store", &self.st.get_store, (id.as_str(),))
            .await
    }

    /// The record and the hash index live in two partitions, so the writes are ordered to
    /// fail safe: a revocation deletes the hash first; a new hash is indexed before the record's
    /// conditional write names it, and the old one deleted after. A lookup checks the hash it
    /// found against the record ([`ScyllaStore::api_key`]), so a hash left behind by a write
    /// that failed half-way authenticates nothing.
    async fn put_api_key(&self, key: &ApiKey, previous: Option<&ApiKey>) -> Result<()> {
        key.check_replaces(previous)?;
        let what = "writing an api key";
        let (record, principal) = (encode(key)?, encode(&key.principal())?);
        let version = i64::try_from(key.version).map_err(|_| unavailable(what, "version"))?;
        let (fid, id) = (key.franchise_id.as_str(), key.id.as_str());
        let old_hash = previous.map(|p| p.key_hash.as_str());
        let new_hash = (!key.is_revoked()).then_some(key.key_hash.as_str());
        if key.is_revoked() {
            if let Some(h) = old_hash {
                self.put(what, &self.st.delete_api_key, (h,)).await?;
            }
        } else if old_hash != new_hash {
            self.put(
                what,
                &self.st.put_api_key,
                (key.key_hash.as_str(), &principal),
            )
            .await?;
        }
        let result = match previous {
            None => {
                self.session
                    .execute_unpaged(
                        &self.st.insert_key_record,
                        (fid, id, version, key.key_hash.as_str(), &record),
                    )
                    .await
            }
            Some(p) => {
                let expected =
                    i64::try_from(p.version).map_err(|_| unavailable(what, "version"))?;
                self.session
                    .execute_unpaged(
                        &self.st.update_key_record,
                        (version, key.key_hash.as_str(), &record, fid, id, expected),
                    )
                    .await
            }
        }
        .map_err(|e| unavailable(what, e))?;
        if !Lwt::of(result)?.applied {
            if let Some(h) = new_hash.filter(|h| Some(*h) != old_hash) {
                self.put(what, &self.st.delete_api_key, (h,)).await?;
            }
            return Err(Error::Conflict(format!(
                "key {id} of {fid} is not at version {:?}",
                previous.map(|p| p.version)
            )));
        }
        match (old_hash, new_hash) {
            (Some(old), Some(new)) if old != new => {
                self.put(what, &self.st.delete_api_key, (old,)).await
            }
            // The principal of a key written again under the same hash.
            (Some(_), Some(h)) => self.put(what, &self.st.put_api_key, (h, &principal)).await,
            _ => Ok(()),
        }
    }

    async fn api_key(&self, key_hash: &str) -> Result<Option<Principal>> {
        let Some(p): Option<Principal> = self
            .get_json("api key", &self.st.get_api_key, (key_hash,))
            .await?
        else {
            return Ok(None);
        };
        let (Some(fid), Some(id)) = (&p.franchise_id, &p.key_id) else {
            return Ok(Some(p));
        };
        Ok(match self.api_key_record(fid, id).await? {
            Some(k) if k.key_hash == key_hash && !k.is_revoked() => Some(p),
            _ => None,
        })
    }

    async fn api_key_record(&self, franchise: &FranchiseId, id: &str) -> Result<Option<ApiKey>> {
        self.get_json(
            "api key record",
            &self.st.get_key_record,
            (franchise.as_str(), id),
        )
        .await
    }

    async fn api_keys_of(&self, franchise: &FranchiseId) -> Result<Vec<ApiKey>> {
        let what = "listing a franchise's api keys";
        let mut rows = self
            .session
            .execute_iter(self.st.key_records_of.clone(), (franchise.as_str(),))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(Option<Vec<u8>>,)>()
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::new();
        while let Some((body,)) = rows.try_next().await.map_err(|e| unavailable(what, e))? {
            if let Some(body) = body {
                out.push(decode("api key record", &body)?);
            }
        }
        // The clustering order is the id's (text, byte order), like the other stores'.
        Ok(out)
    }

    async fn member(&self, id: &MemberId) -> Result<Option<MemberState>> {
        self.get_json("member", &self.st.get_member, (id.as_str(),))
            .await
    }

    async fn members_after(
        &self,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<MemberState>> {
        let what = "scanning members";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pager = match after {
            Some(m) => {
                self.session
                    .execute_iter(self.st.scan_members_after.clone(), (m.as_str(),))
                    .await
            }
            None => {
                self.session
                    .execute_iter(self.st.scan_members.clone(), ())
                    .await
            }
        }
        .map_err(|e| unavailable(what, e))?;
        let mut rows = pager
            .rows_stream::<(String, Option<Vec<u8>>)>()
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::new();
        // Partitions without a state are skipped; the pager fetches further pages as needed
        // and stops when this stream is dropped.
        while out.len() < limit {
            match rows.try_next().await.map_err(|e| unavailable(what, e))? {
                Some((_, Some(state))) => out.push(self.keys.scope(|| decode("member", &state))?),
                Some((_, None)) => {}
                None => break,
            }
        }
        Ok(out)
    }

    async fn claim_events(&self, claims: &[EventClaim]) -> Result<Vec<Fingerprint>> {
        // One conditional insert per distinct id (in parallel); a repeated id in the call gets
        // the owner of its first occurrence.
        let mut first: std::collections::HashMap<(&str, &str), usize> = Default::default();
        let mut unique = Vec::new();
        let index: Vec<usize> = claims
            .iter()
            .map(|c| {
                *first
                    .entry((c.franchise_id.as_str(), c.event_id.as_str()))
                    .or_insert_with(|| {
                        unique.push(c);
                        unique.len() - 1
                    })
            })
            .collect();
        let owners = try_join_all(unique.iter().map(|c| self.claim_event(c))).await?;
        Ok(index.into_iter().map(|i| owners[i]).collect())
    }

    async fn processed(
        &self,
        franchise: &FranchiseId,
        event_ids: &[EventId],
    ) -> Result<Vec<Option<ProcessedEvent>>> {
        try_join_all(event_ids.iter().map(|id| self.processed_one(franchise, id))).await
    }

    async fn ledger(
        &self,
        member: &MemberId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        let what = "reading a ledger";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let cql_limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut rows = self
            .session
            .execute_iter(
                self.st.ledger_page.clone(),
                (member.as_str(), before, cql_limit),
            )
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(Option<Vec<u8>>,)>()
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::new();
        while out.len() < limit {
            match rows.try_next().await.map_err(|e| unavailable(what, e))? {
                Some((Some(body),)) => out.push(decode("ledger entry", &body)?),
                Some((None,)) => {}
                None => break,
            }
        }
        Ok(out)
    }

    async fn dashboard_rows(
        &self,
        franchise: &FranchiseId,
        from: Day,
        to: Day,
    ) -> Result<DashboardRows> {
        let what = "reading dashboards";
        if from > to {
            return Ok(DashboardRows::default());
        }
        let lo = i32::try_from(from.0).unwrap_or(i32::MAX);
        let hi = i32::try_from(to.0).unwrap_or(i32::MAX);
        let f = franchise.as_str();
        let days: Vec<(i32,)> = self
            .session
            .execute_iter(self.st.dash_days.clone(), (f, lo, hi))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(i32,)>()
            .map_err(|e| unavailable(what, e))?
            .try_collect()
            .await
            .map_err(|e| unavailable(what, e))?;
        let parts: Vec<DashboardRows> =
            stream::iter(days.into_iter().map(|(d,)| self.dashboard_day(f, d)))
                .buffer_unordered(DASHBOARD_CONCURRENCY)
                .try_collect()
                .await?;
        let mut out = DashboardRows::default();
        for p in parts {
            out.totals.extend(p.totals);
            out.visits.extend(p.visits);
        }
        Ok(out)
    }

    /// Reads the partition's rows due by `until` and keeps those that their member's static
    /// due columns confirm; the others (left by a refused batch or an older due time) are
    /// deleted, so they are read once.
    async fn due_members(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<DueMember>> {
        let what = "reading the due index";
        let p = i32::try_from(partition).unwrap_or(i32::MAX);
        let n = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(i64, String, String)> = self
            .session
            .execute_iter(self.st.due_read.clone(), (p, until.0, n))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(i64, String, String)>()
            .map_err(|e| unavailable(what, e))?
            .try_collect()
            .await
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (at, m, f) in rows {
            let truth = self
                .session
                .execute_unpaged(&self.st.due_of, (m.as_str(),))
                .await
                .map_err(|e| unavailable(what, e))?
                .into_rows_result()
                .map_err(|e| unavailable(what, e))?
                .maybe_first_row::<(Option<i32>, Option<i64>)>()
                .map_err(|e| unavailable(what, e))?;
            if truth != Some((Some(p), Some(at))) {
                self.put(what, &self.st.due_delete, (p, at, m.as_str()))
                    .await?;
                continue;
            }
            let corrupt = |k: &str, v: &str| Error::Corrupt(format!("scylla: due {k} {v:?}"));
            out.push(DueMember {
                member_id: MemberId::parse(&m).map_err(|_| corrupt("member", &m))?,
                franchise_id: FranchiseId::parse(&f).map_err(|_| corrupt("franchise", &f))?,
                at: Timestamp(at),
            });
        }
        Ok(out)
    }

    async fn tier_counts(&self, franchise: &FranchiseId) -> Result<Vec<(String, i64)>> {
        let what = "reading tier counts";
        let rows: Vec<(String, Option<Counter>)> = self
            .session
            .execute_iter(self.st.read_tiers.clone(), (franchise.as_str(),))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(String, Option<Counter>)>()
            .map_err(|e| unavailable(what, e))?
            .try_collect()
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(tier, n)| n.map(|c| (tier, c.0)))
            .filter(|(_, n)| *n != 0)
            .collect())
    }

    async fn segment_rows(&self, franchise: &FranchiseId) -> Result<Vec<(String, Day, i64)>> {
        let what = "reading segment changes";
        let rows: Vec<(String, i32, Option<Counter>)> = self
            .session
            .execute_iter(self.st.read_segments.clone(), (franchise.as_str(),))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(String, i32, Option<Counter>)>()
            .map_err(|e| unavailable(what, e))?
            .try_collect()
            .await
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, day, n) in rows {
            let day = u32::try_from(day)
                .map_err(|_| Error::Corrupt(format!("scylla: {what}: day {day}")))?;
            if let Some(n) = n.map(|c| c.0).filter(|n| *n != 0) {
                out.push((name, Day(day), n));
            }
        }
        Ok(out)
    }

    /// Not on ScyllaDB yet: its idempotency records are partitioned by event id, so a
    /// franchise's cannot be scanned in order without a full-table scan. `loyalty projections
    /// rebuild` says so and runs on the embedded store and PostgreSQL.
    async fn processed_after(
        &self,
        _franchise: &FranchiseId,
        _after: Option<&EventId>,
        _limit: usize,
    ) -> Result<Vec<ProcessedEvent>> {
        Err(Error::Invalid(
            "scanning a franchise's idempotency records is not supported on ScyllaDB yet \
             (rebuilding the dashboards runs on the embedded store and PostgreSQL)"
                .into(),
        ))
    }

    /// Not on ScyllaDB yet (see [`ScyllaStore::processed_after`]): its counters cannot be set,
    /// only added to.
    async fn replace_dashboard(
        &self,
        _franchise: &FranchiseId,
        _rows: &loyalty_domain::dashboard::DashboardDelta,
    ) -> Result<()> {
        Err(Error::Invalid(
            "replacing the dashboards' aggregates is not supported on ScyllaDB yet".into(),
        ))
    }

    async fn stores_of(&self, franchise: &FranchiseId) -> Result<Vec<Store>> {
        let what = "listing a franchise's stores";
        let mut rows = self
            .session
            .execute_iter(self.st.stores_of.clone(), (franchise.as_str(),))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(Option<Vec<u8>>,)>()
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::new();
        while let Some((body,)) = rows.try_next().await.map_err(|e| unavailable(what, e))? {
            let Some(body) = body else { continue };
            let store: Store = decode("store", &body)?;
            // An index row left by a move to another franchise that failed half-way.
            if &store.franchise_id == franchise {
                out.push(store);
            }
        }
        Ok(out)
    }

    async fn commit(&self, batch: EffectBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let timer = metrics().store_commit_seconds.start_timer();
        let mut parts: BTreeMap<String, PartitionWrite> = BTreeMap::new();
        let mut due_rows = Vec::new();
        let mut listed = Vec::new();
        for w in &batch.members {
            let part = parts
                .entry(w.state.member_id.as_str().to_owned())
                .or_default();
            if part.member.is_some() {
                return Err(Error::Invalid(format!(
                    "member {} is written twice in one batch",
                    w.state.member_id
                )));
            }
            part.member = Some((
                to_i64("member version", w.state.version)?,
                self.keys.scope(|| encode(&w.state))?,
                w.expected_version,
            ));
            if let Some(due) = w.due {
                let partition = i32::try_from(due.partition)
                    .map_err(|_| Error::Invalid(format!("partition {}", due.partition)))?;
                part.due = Some((partition, due.at.map(|t| t.0)));
                listed.push((partition, &w.state.franchise_id, &w.state.member_id));
                if let Some(at) = due.at {
                    due_rows.push((partition, at.0, &w.state));
                }
            }
        }
        for (m, e) in &batch.ledger {
            parts
                .entry(m.as_str().to_owned())
                .or_default()
                .ledger
                .push((to_i64("ledger seq", e.seq)?, encode(e)?));
        }
        let mut claims: BTreeMap<(FranchiseId, EventId), String> = BTreeMap::new();
        for p in &batch.processed {
            let r = &p.record;
            let pk = record_pk(&r.franchise_id, &r.event_id, r.member_id.as_ref());
            // Replacements claim too (their claim exists and is theirs, so this only checks
            // it), so that a replacement that creates its record leaves it reachable.
            claims.insert((r.franchise_id.clone(), r.event_id.clone()), pk.clone());
            let slot = parts
                .entry(pk)
                .or_default()
                .records
                .entry(record_key(&r.franchise_id, &r.event_id))
                .or_insert((false, Vec::new()));
            // The last write of a record wins; it must not exist if any write said so.
            *slot = (slot.0 || p.insert, encode(r)?);
        }

        // 1. The index first, so that every record written below is reachable by event id.
        let claimed = try_join_all(claims.iter().map(|((f, e), pk)| self.claim(f, e, pk))).await;
        if let Err(e) = claimed {
            if matches!(e, Error::Conflict(_)) {
                metrics().store_conflicts.inc();
            }
            return Err(e);
        }

        // 1b. The due index's rows, before the states that make them true (a row whose member
        // batch then fails is stale, and its reader deletes it; see `due_members`).
        try_join_all(due_rows.iter().map(|(p, at, state)| {
            let values = (
                *p,
                *at,
                state.member_id.as_str(),
                state.franchise_id.as_str(),
            );
            self.put("due index", &self.st.due_insert, values)
        }))
        .await?;
        self.list_members(&listed).await?;

        // 1c. The outbox's entries and pending rows, before the markers that commit them with
        // their member's share (see `outbox`). The first entry of an id in the batch wins.
        let mut entries: BTreeMap<&str, &OutboxEntry> = BTreeMap::new();
        for e in &batch.outbox {
            entries.entry(e.id.as_str()).or_insert(e);
        }
        for e in entries.values() {
            parts
                .entry(e.member_id.as_str().to_owned())
                .or_default()
                .outbox
                .push((e.id.clone(), encode(e)?));
        }
        try_join_all(entries.values().map(|e| self.insert_outbox(e))).await?;

        // 2. Each partition's share in one conditional batch, all partitions at once.
        let results = join_all(
            parts
                .into_iter()
                .map(|(pk, w)| async move { self.write_partition(&pk, w).await }),
        )
        .await;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(()) => {}
                Err(e @ Error::Conflict(_)) => {
                    metrics().store_conflicts.inc();
                    // A conflict tells the caller to re-read the store: report it first.
                    if !matches!(first_error, Some(Error::Conflict(_))) {
                        first_error = Some(e);
                    }
                }
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            // Nothing of the dashboards: a refused member's events will be applied again and
            // counted then; the written members' events are replays from now on, so their
            // share is missing until a rebuild (the crate documentation says so).
            return Err(e);
        }
        // 3. The dashboards' counters, once every member's share is written.
        self.add_dashboard(&batch.dashboard).await?;
        timer.observe_duration();
        Ok(())
    }

    async fn outbox_due(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        self.read_outbox_due(partition, until, limit).await
    }

    async fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>> {
        self.read_outbox_entry(id).await
    }

    async fn update_outbox(
        &self,
        entry: &OutboxEntry,
        expected_attempts: u32,
        dashboard: &DashboardDelta,
    ) -> Result<()> {
        self.record_attempt(entry, expected_attempts, dashboard)
            .await
    }

    /// Reads the listed members of (partition, franchise) and keeps those whose
    /// `due_partition` confirms the row (a row listed before a refused write is skipped).
    async fn partition_members(
        &self,
        partition: Partition,
        franchise: &FranchiseId,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<IndexedMember>> {
        let what = "listing a partition's members";
        let p = partition_column(partition)?;
        let mut after = after.map_or(String::new(), |m| m.as_str().to_owned());
        let mut out = Vec::new();
        // Skipped rows do not count: read on until `limit` members or the end.
        while out.len() < limit {
            let n = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let ids: Vec<(String,)> = self
                .session
                .execute_iter(
                    self.st.members_listed.clone(),
                    (p, franchise.as_str(), after.as_str(), n),
                )
                .await
                .map_err(|e| unavailable(what, e))?
                .rows_stream::<(String,)>()
                .map_err(|e| unavailable(what, e))?
                .try_collect()
                .await
                .map_err(|e| unavailable(what, e))?;
            let short = ids.len() < n as usize;
            for (m,) in ids {
                if let Some(member) = self.indexed_member(p, &m).await? {
                    out.push(member);
                }
                after = m;
            }
            if short {
                break;
            }
        }
        Ok(out)
    }

    /// Member by member (each write conditional on its member's version): a conflict may
    /// leave the others written, as the port allows.
    async fn put_due(&self, writes: &[DueWrite]) -> Result<()> {
        let mut listed = Vec::with_capacity(writes.len());
        for w in writes {
            listed.push((
                partition_column(w.due.partition)?,
                &w.franchise_id,
                &w.member_id,
            ));
        }
        self.list_members(&listed).await?;
        let results = join_all(writes.iter().map(|w| self.put_due_fenced(w))).await;
        let mut first_error = None;
        for r in results {
            if let Err(e) = r {
                if first_error.is_none() || matches!(e, Error::Conflict(_)) {
                    first_error = Some(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn reindex_mark(&self, partition: Partition) -> Result<Option<ReindexMark>> {
        let p = partition_column(partition)?;
        self.get_json("reading a re-index mark", &self.st.get_reindex_mark, (p,))
            .await
    }

    async fn put_reindex_mark(&self, partition: Partition, mark: &ReindexMark) -> Result<()> {
        let values = (partition_column(partition)?, encode(mark)?);
        self.put("writing a re-index mark", &self.st.put_reindex_mark, values)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_land_in_their_members_partition_or_a_stable_bucket() {
        let f = FranchiseId::parse("f-1").unwrap();
        let e = EventId::parse("e-1").unwrap();
        let m = MemberId::parse("m-1").unwrap();
        assert_eq!(record_pk(&f, &e, Some(&m)), "m-1");
        let anon = record_pk(&f, &e, None);
        assert!(anon.starts_with("~anon/f-1/"), "{anon}");
        assert_eq!(anon, record_pk(&f, &e, None));
        assert!(
            MemberId::parse(&anon).is_err(),
            "a bucket must not be a member id"
        );
        assert_eq!(record_key(&f, &e), "f-1/e-1");
    }
}
