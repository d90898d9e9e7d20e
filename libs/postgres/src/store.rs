//! The PostgreSQL [`StateStore`]. The crate documentation describes the schema and the
//! semantics; this module holds the statements.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use loyalty_core::metrics::metrics;
use loyalty_core::model::{ApiKey, Franchise, Principal, Store};
use loyalty_core::ports::{
    DashboardRows, Due, DueMember, DueWrite, EffectBatch, EventClaim, IndexedMember, OutboxEntry,
    OutboxState, Partition, ReindexMark, StateStore,
};
use loyalty_core::sealing::KeyRing;
use loyalty_core::{Error, Result};
use loyalty_domain::dashboard::{DashboardDelta, DayTotals, PackedRow, Scope, VisitKey, VisitRow};
use loyalty_domain::{
    Day, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState, ProcessedEvent,
    Program, RewardId, StoreId, Timestamp,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::error::{corrupt, pg, pool};
use crate::migrate::check_schema;
use crate::PostgresConfig;

const PUT_FRANCHISE: &str = "INSERT INTO franchises (id, body) VALUES ($1, $2) \
     ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body";
const GET_FRANCHISE: &str = "SELECT body FROM franchises WHERE id = $1";
const ALL_FRANCHISES: &str = "SELECT body FROM franchises ORDER BY id";
const PUT_PROGRAM: &str = "INSERT INTO programs (franchise_id, version, body) VALUES ($1, $2, $3) \
     ON CONFLICT (franchise_id, version) DO NOTHING";
const GET_PROGRAM: &str = "SELECT body FROM programs WHERE franchise_id = $1 AND version = $2";
const PUT_STORE: &str = "INSERT INTO stores (id, franchise_id, body) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET franchise_id = EXCLUDED.franchise_id, body = EXCLUDED.body";
const GET_STORE: &str = "SELECT body FROM stores WHERE id = $1";
const PUT_API_KEY: &str = "INSERT INTO api_keys (key_hash, body) VALUES ($1, $2) \
     ON CONFLICT (key_hash) DO UPDATE SET body = EXCLUDED.body";
const GET_API_KEY: &str = "SELECT body FROM api_keys WHERE key_hash = $1";
const DELETE_API_KEY: &str = "DELETE FROM api_keys WHERE key_hash = $1";
const INSERT_KEY_RECORD: &str = "INSERT INTO api_key_records \
     (franchise_id, key_id, version, key_hash, body) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (franchise_id, key_id) DO NOTHING";
const UPDATE_KEY_RECORD: &str = "UPDATE api_key_records SET version = $3, key_hash = $4, \
     body = $5 WHERE franchise_id = $1 AND key_id = $2 AND version = $6";
const GET_KEY_RECORD: &str =
    "SELECT body FROM api_key_records WHERE franchise_id = $1 AND key_id = $2";
const KEY_RECORDS_OF: &str =
    "SELECT body FROM api_key_records WHERE franchise_id = $1 ORDER BY key_id";
const GET_MEMBER: &str = "SELECT state FROM members WHERE member_id = $1";
const SCAN_MEMBERS: &str = "SELECT state FROM members ORDER BY member_id LIMIT $1";
const SCAN_MEMBERS_AFTER: &str =
    "SELECT state FROM members WHERE member_id > $1 ORDER BY member_id LIMIT $2";
const LEDGER_PAGE: &str = "SELECT body FROM ledger WHERE member_id = $1 AND seq < $2 \
     ORDER BY seq DESC LIMIT $3";
const PROCESSED: &str = "SELECT t.ord, p.body \
     FROM unnest($2::text[]) WITH ORDINALITY AS t(event_id, ord) \
     JOIN processed p ON p.franchise_id = $1 AND p.event_id = t.event_id";

/// A whole [`EffectBatch`] in one statement, so one round trip and one (implicit) transaction:
/// the data-modifying CTEs all run, then `loyalty_fence` compares the rows the conditional
/// parts wrote with the rows they had to write and raises `LY409` if one fell short, which
/// aborts the statement: all of the batch or nothing, the dashboards' increments included
/// (`totals` ... `tiers`: additive upserts, `SET x = t.x + EXCLUDED.x`; a visit count brought
/// to 0 is deleted by the table's trigger at the end of the statement).
const COMMIT: &str = "\
WITH created AS (
    INSERT INTO members (member_id, franchise_id, version, state)
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[])
    ON CONFLICT (member_id) DO NOTHING
    RETURNING 1
), updated AS (
    UPDATE members AS m SET version = u.version, state = u.state
    FROM unnest($5::text[], $6::int8[], $7::bytea[], $8::int8[])
        AS u(member_id, version, state, expected)
    WHERE m.member_id = u.member_id AND m.version = u.expected
    RETURNING 1
), entries AS (
    INSERT INTO ledger (member_id, seq, event_id, body)
    SELECT * FROM unnest($9::text[], $10::int8[], $11::text[], $12::bytea[])
), recorded AS (
    INSERT INTO processed (franchise_id, event_id, member_id, fingerprint, body)
    SELECT * FROM unnest($13::text[], $14::text[], $15::text[], $16::bytea[], $17::bytea[])
    ON CONFLICT (franchise_id, event_id) DO NOTHING
    RETURNING 1
), replaced AS (
    INSERT INTO processed (franchise_id, event_id, member_id, fingerprint, body)
    SELECT * FROM unnest($18::text[], $19::text[], $20::text[], $21::bytea[], $22::bytea[])
    ON CONFLICT (franchise_id, event_id) DO UPDATE
        SET member_id = EXCLUDED.member_id, fingerprint = EXCLUDED.fingerprint,
            body = EXCLUDED.body
), totals AS (
    INSERT INTO dashboard_totals AS t (franchise_id, day, store_id, member_purchases,
        anonymous_purchases, member_revenue_cents, anonymous_revenue_cents, refunded_cents,
        enrolments, points_issued, points_redeemed, points_expired, redemptions,
        reward_cost_cents)
    SELECT * FROM unnest($23::text[], $24::int4[], $25::text[], $26::int8[], $27::int8[],
        $28::int8[], $29::int8[], $30::int8[], $31::int8[], $32::int8[], $33::int8[],
        $34::int8[], $35::int8[], $36::int8[])
    ON CONFLICT (franchise_id, day, store_id) DO UPDATE SET
        member_purchases = t.member_purchases + EXCLUDED.member_purchases,
        anonymous_purchases = t.anonymous_purchases + EXCLUDED.anonymous_purchases,
        member_revenue_cents = t.member_revenue_cents + EXCLUDED.member_revenue_cents,
        anonymous_revenue_cents = t.anonymous_revenue_cents + EXCLUDED.anonymous_revenue_cents,
        refunded_cents = t.refunded_cents + EXCLUDED.refunded_cents,
        enrolments = t.enrolments + EXCLUDED.enrolments,
        points_issued = t.points_issued + EXCLUDED.points_issued,
        points_redeemed = t.points_redeemed + EXCLUDED.points_redeemed,
        points_expired = t.points_expired + EXCLUDED.points_expired,
        redemptions = t.redemptions + EXCLUDED.redemptions,
        reward_cost_cents = t.reward_cost_cents + EXCLUDED.reward_cost_cents
), rewards AS (
    INSERT INTO dashboard_rewards AS t (franchise_id, day, store_id, reward_id, n)
    SELECT * FROM unnest($37::text[], $38::int4[], $39::text[], $40::text[], $41::int8[])
    ON CONFLICT (franchise_id, day, store_id, reward_id) DO UPDATE SET n = t.n + EXCLUDED.n
), visits AS (
    INSERT INTO dashboard_visits AS t (franchise_id, day, scope, key, n)
    SELECT * FROM unnest($42::text[], $43::int4[], $44::text[], $45::int4[], $46::int8[])
    ON CONFLICT (franchise_id, day, scope, key) DO UPDATE SET n = t.n + EXCLUDED.n
), tiers AS (
    INSERT INTO dashboard_tiers AS t (franchise_id, tier, n)
    SELECT * FROM unnest($47::text[], $48::text[], $49::int8[])
    ON CONFLICT (franchise_id, tier) DO UPDATE SET n = t.n + EXCLUDED.n
), due_set AS (
    INSERT INTO member_due (member_id, franchise_id, partition, due_at)
    SELECT * FROM unnest($50::text[], $51::text[], $52::int4[], $53::int8[])
    ON CONFLICT (member_id) DO UPDATE SET franchise_id = EXCLUDED.franchise_id,
        partition = EXCLUDED.partition, due_at = EXCLUDED.due_at
), segments AS (
    INSERT INTO dashboard_segments AS t (franchise_id, segment, day, n)
    SELECT * FROM unnest($54::text[], $55::text[], $56::int4[], $57::int8[])
    ON CONFLICT (franchise_id, segment, day) DO UPDATE SET n = t.n + EXCLUDED.n
), outbox_new AS (
    INSERT INTO outbox (id, franchise_id, member_id, partition, next_attempt_at, state,
        attempts, body)
    SELECT * FROM unnest($58::text[], $59::text[], $60::text[], $61::int4[], $62::int8[],
        $63::text[], $64::int4[], $65::bytea[])
    ON CONFLICT (id) DO NOTHING
)
SELECT loyalty_fence(
    (SELECT count(*) FROM created), cardinality($1::text[]),
    (SELECT count(*) FROM updated), cardinality($5::text[]),
    (SELECT count(*) FROM recorded), cardinality($13::text[]))";

/// A page of one franchise's members of one partition with their due times (the re-index's
/// read), on the `member_due_by_franchise` index.
const PARTITION_MEMBERS: &str = "SELECT m.state, d.due_at FROM member_due d \
    JOIN members m ON m.member_id = d.member_id \
    WHERE d.partition = $1 AND d.franchise_id = $2 AND d.member_id > $3 \
    ORDER BY d.member_id LIMIT $4";

/// Due entries alone, each fenced by its member's version: the members are locked at the
/// versions given (a member moved meanwhile is re-checked and left out), and `loyalty_fence`
/// raises `LY409`, aborting the statement, unless every entry was written.
const PUT_DUE: &str = "\
WITH w AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[], $5::int8[])
        AS w(member_id, franchise_id, partition, due_at, version)
), fenced AS (
    SELECT w.member_id, w.franchise_id, w.partition, w.due_at
    FROM w JOIN members m ON m.member_id = w.member_id AND m.version = w.version
    FOR UPDATE OF m
), written AS (
    INSERT INTO member_due (member_id, franchise_id, partition, due_at)
    SELECT * FROM fenced
    ON CONFLICT (member_id) DO UPDATE SET franchise_id = EXCLUDED.franchise_id,
        partition = EXCLUDED.partition, due_at = EXCLUDED.due_at
    RETURNING 1
)
SELECT loyalty_fence(0, 0, (SELECT count(*) FROM written), cardinality($1::text[]), 0, 0)";

const GET_REINDEX_MARK: &str = "SELECT body FROM reindex_marks WHERE partition = $1";
const PUT_REINDEX_MARK: &str = "INSERT INTO reindex_marks (partition, body) VALUES ($1, $2) \
     ON CONFLICT (partition) DO UPDATE SET body = EXCLUDED.body";

/// A partition's members due by a time, earliest first (the scheduler's read), on the
/// `member_due_by_partition` index.
const DUE_MEMBERS: &str = "SELECT member_id, franchise_id, due_at FROM member_due \
    WHERE partition = $1 AND due_at <= $2 ORDER BY due_at, member_id LIMIT $3";

/// A partition's pending outbox entries due by a time, earliest first (the delivery worker's
/// read), on the partial index `outbox_pending_by_partition`.
const OUTBOX_DUE: &str = "SELECT body FROM outbox \
    WHERE partition = $1 AND state = 'pending' AND next_attempt_at <= $2 \
    ORDER BY next_attempt_at, id LIMIT $3";
const OUTBOX_ENTRY: &str = "SELECT body FROM outbox WHERE id = $1";
/// An attempt's result, fenced on the stored entry being pending after `$2` attempts.
const OUTBOX_UPDATE: &str = "UPDATE outbox SET franchise_id = $3, member_id = $4, \
    partition = $5, next_attempt_at = $6, state = $7, attempts = $8, body = $9 \
    WHERE id = $1 AND state = 'pending' AND attempts = $2";

/// The stores of a franchise, on the `stores_by_franchise` index.
const STORES_OF: &str = "SELECT body FROM stores WHERE franchise_id = $1 ORDER BY id";

/// A page of a franchise's idempotency records in event id order (the rebuild's scan).
const PROCESSED_AFTER: &str = "SELECT body FROM processed \
    WHERE franchise_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $3";

/// What `replace_dashboard` deletes before it writes the new aggregates.
const DELETE_DASHBOARD: [&str; 5] = [
    "DELETE FROM dashboard_totals WHERE franchise_id = $1",
    "DELETE FROM dashboard_rewards WHERE franchise_id = $1",
    "DELETE FROM dashboard_visits WHERE franchise_id = $1",
    "DELETE FROM dashboard_tiers WHERE franchise_id = $1",
    "DELETE FROM dashboard_segments WHERE franchise_id = $1",
];
/// Daily totals of a franchise over a range of days (every store).
const DASHBOARD_TOTALS: &str = "SELECT store_id, day, member_purchases, anonymous_purchases, \
     member_revenue_cents, anonymous_revenue_cents, refunded_cents, enrolments, points_issued, \
     points_redeemed, points_expired, redemptions, reward_cost_cents \
     FROM dashboard_totals WHERE franchise_id = $1 AND day BETWEEN $2 AND $3";
const DASHBOARD_REWARDS: &str = "SELECT store_id, day, reward_id, n FROM dashboard_rewards \
     WHERE franchise_id = $1 AND day BETWEEN $2 AND $3 AND n <> 0";
const DASHBOARD_VISITS: &str = "SELECT scope, day, key, n FROM dashboard_visits \
     WHERE franchise_id = $1 AND day BETWEEN $2 AND $3 AND n <> 0";
const TIER_COUNTS: &str =
    "SELECT tier, n FROM dashboard_tiers WHERE franchise_id = $1 AND n <> 0 ORDER BY tier";
const SEGMENT_ROWS: &str =
    "SELECT segment, day, n FROM dashboard_segments WHERE franchise_id = $1 AND n <> 0";

/// Claims in one statement: the first claim of each id in the call (by position) is inserted
/// unless the id is claimed; the owner of every id is then read back, from the rows this
/// statement inserted (`won`: the statement's snapshot does not show them) or from the table.
const CLAIM: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
        WITH ORDINALITY AS t(franchise_id, event_id, fingerprint, ord)
), firsts AS (
    SELECT DISTINCT ON (franchise_id, event_id) franchise_id, event_id, fingerprint
    FROM input ORDER BY franchise_id, event_id, ord
), won AS (
    INSERT INTO event_claims (franchise_id, event_id, fingerprint)
    SELECT franchise_id, event_id, fingerprint FROM firsts
    ON CONFLICT (franchise_id, event_id) DO NOTHING
    RETURNING franchise_id, event_id, fingerprint
)
SELECT i.ord, COALESCE(w.fingerprint, c.fingerprint)
FROM input i
LEFT JOIN won w ON w.franchise_id = i.franchise_id AND w.event_id = i.event_id
LEFT JOIN event_claims c ON c.franchise_id = i.franchise_id AND c.event_id = i.event_id
ORDER BY i.ord";

/// The owners of claims, read again (for ids that a concurrent claim took between this
/// statement's snapshot and its insert).
const CLAIM_OWNERS: &str = "SELECT t.ord, c.fingerprint \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(franchise_id, event_id, ord) \
     JOIN event_claims c ON c.franchise_id = t.franchise_id AND c.event_id = t.event_id";

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(format!("postgres: encoding: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what, e))
}

fn to_i64(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid(format!("{what} {v} does not fit a bigint")))
}

fn fingerprint(what: &str, bytes: &[u8]) -> Result<Fingerprint> {
    <[u8; 16]>::try_from(bytes)
        .map(Fingerprint)
        .map_err(|_| corrupt(what, format!("a fingerprint of {} bytes", bytes.len())))
}

/// The `body`-like first column of a row.
fn bytes_of(what: &str, row: &Row) -> Result<Vec<u8>> {
    row.try_get::<_, Vec<u8>>(0).map_err(|e| pg(what, &e))
}

/// The PostgreSQL [`StateStore`]: a bounded pool of connections, each with its prepared
/// statements. See the crate documentation.
pub struct PostgresStore {
    pool: Pool,
    url: String,
    /// Seals and opens members' personal data (README "Personal data at rest").
    keys: KeyRing,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .finish()
    }
}

impl PostgresStore {
    /// Builds the pool and checks, on one connection, that the database is reachable and its
    /// schema is at this build's latest migration; otherwise fails with an error that says
    /// what to do (`run loyalty migrate`). Connections are opened lazily up to
    /// `config.pool_size`.
    ///
    /// Members' personal data is sealed and opened with `keys`.
    pub async fn connect(config: &PostgresConfig, keys: KeyRing) -> Result<PostgresStore> {
        let pg_config = config.pg_config()?;
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                // A closed connection is noticed (the driver's connection task ended); a
                // broken one fails its next statement with `Unavailable` and is dropped.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .wait_timeout(Some(config.connect_timeout + config.statement_timeout))
            .build()
            .map_err(|e| Error::Invalid(format!("postgres: building the pool: {e}")))?;
        let store = PostgresStore {
            pool,
            url: config.redacted_url(),
            keys,
        };
        let client = store
            .client(&format!("connecting to {}", store.url))
            .await?;
        check_schema(&**client, &store.url).await?;
        Ok(store)
    }

    /// The connection pool (for operators' tools and tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self, what: &str) -> Result<Object> {
        self.pool.get().await.map_err(|e| pool(what, e))
    }

    /// Runs a cached prepared statement and returns its rows.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self.client(what).await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| pg(what, &e))?;
        client.query(&stmt, params).await.map_err(|e| pg(what, &e))
    }

    /// Runs a cached prepared statement and returns the rows it changed.
    async fn execute(&self, what: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let client = self.client(what).await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| pg(what, &e))?;
        client
            .execute(&stmt, params)
            .await
            .map_err(|e| pg(what, &e))
    }

    /// The JSON value in the first column of the (at most one) row of a lookup.
    async fn get_json<T: DeserializeOwned>(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<T>> {
        match self.query(what, sql, params).await?.first() {
            Some(row) => Ok(Some(self.decode(what, &bytes_of(what, row)?)?)),
            None => Ok(None),
        }
    }

    async fn decode_all<T: DeserializeOwned>(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<T>> {
        self.query(what, sql, params)
            .await?
            .iter()
            .map(|row| self.decode(what, &bytes_of(what, row)?))
            .collect()
    }

    /// [`decode`] with the key ring in scope (members' profiles open; other values have no
    /// sealed field).
    fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T> {
        self.keys.scope(|| decode(what, bytes))
    }
}

/// The parameters of [`COMMIT`], one array per column.
#[derive(Default)]
struct CommitParams {
    new_ids: Vec<String>,
    new_franchises: Vec<String>,
    new_versions: Vec<i64>,
    new_states: Vec<Vec<u8>>,
    upd_ids: Vec<String>,
    upd_versions: Vec<i64>,
    upd_states: Vec<Vec<u8>>,
    upd_expected: Vec<i64>,
    led_members: Vec<String>,
    led_seqs: Vec<i64>,
    led_events: Vec<String>,
    led_bodies: Vec<Vec<u8>>,
    ins: RecordColumns,
    rep: RecordColumns,
    dash: DashboardColumns,
    due: DueColumns,
    outbox: OutboxColumns,
}

/// The new outbox entries of [`COMMIT`], one per id (the first of the batch), in id order.
#[derive(Default)]
struct OutboxColumns {
    ids: Vec<String>,
    franchises: Vec<String>,
    members: Vec<String>,
    partitions: Vec<i32>,
    next_attempts: Vec<i64>,
    states: Vec<&'static str>,
    attempts: Vec<i32>,
    bodies: Vec<Vec<u8>>,
}

/// The `state` column of an entry.
fn state_name(s: &OutboxState) -> &'static str {
    match s {
        OutboxState::Pending => "pending",
        OutboxState::Delivered { .. } => "delivered",
        OutboxState::Failed { .. } => "failed",
        OutboxState::Skipped { .. } => "skipped",
    }
}

fn partition_i32(p: Partition) -> Result<i32> {
    i32::try_from(p).map_err(|_| Error::Invalid(format!("partition {p}")))
}

fn attempts_i32(n: u32) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Invalid(format!("{n} attempts")))
}

impl OutboxColumns {
    fn of(entries: &[OutboxEntry]) -> Result<OutboxColumns> {
        let mut firsts: BTreeMap<&str, &OutboxEntry> = BTreeMap::new();
        for e in entries {
            firsts.entry(e.id.as_str()).or_insert(e);
        }
        let mut c = OutboxColumns::default();
        for (id, e) in firsts {
            c.ids.push(id.to_owned());
            c.franchises.push(e.franchise_id.as_str().to_owned());
            c.members.push(e.member_id.as_str().to_owned());
            c.partitions.push(partition_i32(e.partition)?);
            c.next_attempts.push(e.next_attempt_at.0);
            c.states.push(state_name(&e.state));
            c.attempts.push(attempts_i32(e.attempts)?);
            c.bodies.push(encode(e)?);
        }
        Ok(c)
    }
}

/// The due index changes of [`COMMIT`] (members whose write sets their due entry; a NULL
/// due time when nothing is due, the row kept for the partition's re-index).
#[derive(Default)]
struct DueColumns {
    set_members: Vec<String>,
    set_franchises: Vec<String>,
    set_partitions: Vec<i32>,
    set_at: Vec<Option<i64>>,
}

impl DueColumns {
    fn push(&mut self, s: &MemberState, due: Due) -> Result<()> {
        self.set_members.push(s.member_id.as_str().to_owned());
        self.set_franchises.push(s.franchise_id.as_str().to_owned());
        self.set_partitions.push(partition_column(due.partition)?);
        self.set_at.push(due.at.map(|t| t.0));
        Ok(())
    }
}

fn partition_column(partition: Partition) -> Result<i32> {
    i32::try_from(partition).map_err(|_| Error::Invalid(format!("partition {partition}")))
}

/// The dashboard increments of [`COMMIT`], one array per column, rows sorted by primary key
/// (so that concurrent commits lock the shared aggregate rows in one order).
#[derive(Default)]
struct DashboardColumns {
    t_franchises: Vec<String>,
    t_days: Vec<i32>,
    t_stores: Vec<String>,
    /// One array per counter of [`DayTotals`], in the order of [`totals_counters`].
    t_counters: [Vec<i64>; COUNTERS],
    r_franchises: Vec<String>,
    r_days: Vec<i32>,
    r_stores: Vec<String>,
    r_rewards: Vec<String>,
    r_ns: Vec<i64>,
    v_franchises: Vec<String>,
    v_days: Vec<i32>,
    v_scopes: Vec<String>,
    v_keys: Vec<i32>,
    v_ns: Vec<i64>,
    g_franchises: Vec<String>,
    g_tiers: Vec<String>,
    g_ns: Vec<i64>,
    s_franchises: Vec<String>,
    s_names: Vec<String>,
    s_days: Vec<i32>,
    s_ns: Vec<i64>,
}

/// Counters of [`DayTotals`] (its reward map aside).
const COUNTERS: usize = 11;

/// The counters of `t`, in the column order of `dashboard_totals`.
fn totals_counters(t: &DayTotals) -> [u64; COUNTERS] {
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

/// Totals of a stored row: the counters in column order (negative values, which no commit
/// writes, read as 0).
fn totals_of(counters: [i64; COUNTERS]) -> DayTotals {
    let c = counters.map(|v| u64::try_from(v).unwrap_or(0));
    DayTotals {
        member_purchases: c[0],
        anonymous_purchases: c[1],
        member_revenue_cents: c[2],
        anonymous_revenue_cents: c[3],
        refunded_cents: c[4],
        enrolments: c[5],
        points_issued: c[6],
        points_redeemed: c[7],
        points_expired: c[8],
        redemptions: c[9],
        reward_cost_cents: c[10],
        rewards: BTreeMap::new(),
    }
}

/// A day as the `integer` column.
fn day_i32(day: Day) -> Result<i32> {
    i32::try_from(day.0).map_err(|_| Error::Invalid(format!("day {} is out of range", day.0)))
}

/// A counter as a `bigint`, saturating (as the domain's sums do: a report never wraps).
fn counter(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl DashboardColumns {
    fn of(d: &DashboardDelta) -> Result<DashboardColumns> {
        let mut c = DashboardColumns::default();
        let mut totals: Vec<_> = d
            .totals
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|((f, s, day), t)| Ok(((f.as_str(), day_i32(*day)?, s.as_str()), t)))
            .collect::<Result<_>>()?;
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rewards = Vec::new();
        for ((f, day, store), t) in totals {
            c.t_franchises.push(f.to_owned());
            c.t_days.push(day);
            c.t_stores.push(store.to_owned());
            for (col, v) in c.t_counters.iter_mut().zip(totals_counters(t)) {
                col.push(counter(v));
            }
            for (r, n) in t.rewards.iter().filter(|(_, n)| **n != 0) {
                rewards.push(((f, day, store, r.as_str()), counter(*n)));
            }
        }
        rewards.sort_by(|a, b| a.0.cmp(&b.0));
        for ((f, day, store, reward), n) in rewards {
            c.r_franchises.push(f.to_owned());
            c.r_days.push(day);
            c.r_stores.push(store.to_owned());
            c.r_rewards.push(reward.to_owned());
            c.r_ns.push(n);
        }
        let mut visits = Vec::new();
        for ((f, scope, day), row) in &d.visits {
            let day = day_i32(*day)?;
            for (k, n) in row.iter().filter(|(_, n)| **n != 0) {
                // The packed key as the `integer` column, bit for bit (it stays below 2^31).
                visits.push(((f.as_str(), day, scope.key(), k.pack() as i32), *n));
            }
        }
        visits.sort_by(|a, b| a.0.cmp(&b.0));
        for ((f, day, scope, key), n) in visits {
            c.v_franchises.push(f.to_owned());
            c.v_days.push(day);
            c.v_scopes.push(scope.to_owned());
            c.v_keys.push(key);
            c.v_ns.push(n);
        }
        // The tiers' map is already in (franchise, tier) order.
        for ((f, tier), n) in d.tiers.iter().filter(|(_, n)| **n != 0) {
            c.g_franchises.push(f.as_str().to_owned());
            c.g_tiers.push(tier.clone());
            c.g_ns.push(*n);
        }
        // The segments' map is already in (franchise, segment, day) order.
        for ((f, name, day), n) in d.segments.iter().filter(|(_, n)| **n != 0) {
            c.s_franchises.push(f.as_str().to_owned());
            c.s_names.push(name.clone());
            c.s_days.push(day_i32(*day)?);
            c.s_ns.push(*n);
        }
        Ok(c)
    }
}

#[derive(Default)]
struct RecordColumns {
    franchises: Vec<String>,
    events: Vec<String>,
    members: Vec<Option<String>>,
    fingerprints: Vec<Vec<u8>>,
    bodies: Vec<Vec<u8>>,
}

impl RecordColumns {
    fn push(&mut self, r: &ProcessedEvent) -> Result<()> {
        self.franchises.push(r.franchise_id.as_str().to_owned());
        self.events.push(r.event_id.as_str().to_owned());
        self.members
            .push(r.member_id.as_ref().map(|m| m.as_str().to_owned()));
        self.fingerprints.push(r.fingerprint.0.to_vec());
        self.bodies.push(encode(r)?);
        Ok(())
    }
}

impl CommitParams {
    /// Splits a batch into the statement's arrays, rows in key order (so that concurrent
    /// commits lock rows in one order). A member written twice is refused; of several writes
    /// of one record the last wins, and it must not exist if any of them said so.
    fn of(batch: &EffectBatch, keys: &KeyRing) -> Result<CommitParams> {
        let mut p = CommitParams::default();
        let mut members: Vec<_> = batch.members.iter().collect();
        members.sort_by(|a, b| a.state.member_id.cmp(&b.state.member_id));
        for pair in members.windows(2) {
            if pair[0].state.member_id == pair[1].state.member_id {
                return Err(Error::Invalid(format!(
                    "member {} is written twice in one batch",
                    pair[0].state.member_id
                )));
            }
        }
        for w in members {
            let s = &w.state;
            if let Some(due) = w.due {
                p.due.push(s, due)?;
            }
            let version = to_i64("member version", s.version)?;
            if w.expected_version == 0 {
                p.new_ids.push(s.member_id.as_str().to_owned());
                p.new_franchises.push(s.franchise_id.as_str().to_owned());
                p.new_versions.push(version);
                p.new_states.push(keys.scope(|| encode(s))?);
            } else {
                p.upd_ids.push(s.member_id.as_str().to_owned());
                p.upd_versions.push(version);
                p.upd_states.push(keys.scope(|| encode(s))?);
                p.upd_expected
                    .push(to_i64("expected version", w.expected_version)?);
            }
        }
        let mut ledger: Vec<_> = batch.ledger.iter().collect();
        ledger.sort_by(|(ma, a), (mb, b)| ma.cmp(mb).then(a.seq.cmp(&b.seq)));
        for (m, e) in ledger {
            p.led_members.push(m.as_str().to_owned());
            p.led_seqs.push(to_i64("ledger seq", e.seq)?);
            p.led_events.push(e.event_id.as_str().to_owned());
            p.led_bodies.push(encode(e)?);
        }
        let mut records: BTreeMap<(&str, &str), (bool, &ProcessedEvent)> = BTreeMap::new();
        for w in &batch.processed {
            let key = (w.record.franchise_id.as_str(), w.record.event_id.as_str());
            let slot = records.entry(key).or_insert((false, &w.record));
            *slot = (slot.0 || w.insert, &w.record);
        }
        for (insert, r) in records.into_values() {
            if insert {
                p.ins.push(r)?;
            } else {
                p.rep.push(r)?;
            }
        }
        p.dash = DashboardColumns::of(&batch.dashboard)?;
        p.outbox = OutboxColumns::of(&batch.outbox)?;
        Ok(p)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 65] {
        let o = &self.outbox;
        let d = &self.dash;
        let t = &d.t_counters;
        [
            &self.new_ids,
            &self.new_franchises,
            &self.new_versions,
            &self.new_states,
            &self.upd_ids,
            &self.upd_versions,
            &self.upd_states,
            &self.upd_expected,
            &self.led_members,
            &self.led_seqs,
            &self.led_events,
            &self.led_bodies,
            &self.ins.franchises,
            &self.ins.events,
            &self.ins.members,
            &self.ins.fingerprints,
            &self.ins.bodies,
            &self.rep.franchises,
            &self.rep.events,
            &self.rep.members,
            &self.rep.fingerprints,
            &self.rep.bodies,
            &d.t_franchises,
            &d.t_days,
            &d.t_stores,
            &t[0],
            &t[1],
            &t[2],
            &t[3],
            &t[4],
            &t[5],
            &t[6],
            &t[7],
            &t[8],
            &t[9],
            &t[10],
            &d.r_franchises,
            &d.r_days,
            &d.r_stores,
            &d.r_rewards,
            &d.r_ns,
            &d.v_franchises,
            &d.v_days,
            &d.v_scopes,
            &d.v_keys,
            &d.v_ns,
            &d.g_franchises,
            &d.g_tiers,
            &d.g_ns,
            &self.due.set_members,
            &self.due.set_franchises,
            &self.due.set_partitions,
            &self.due.set_at,
            &d.s_franchises,
            &d.s_names,
            &d.s_days,
            &d.s_ns,
            &o.ids,
            &o.franchises,
            &o.members,
            &o.partitions,
            &o.next_attempts,
            &o.states,
            &o.attempts,
            &o.bodies,
        ]
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn put_franchise(&self, franchise: &Franchise) -> Result<()> {
        let body = encode(franchise)?;
        self.execute(
            "writing a franchise",
            PUT_FRANCHISE,
            &[&franchise.id.as_str(), &body],
        )
        .await
        .map(|_| ())
    }

    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Franchise>> {
        self.get_json("reading a franchise", GET_FRANCHISE, &[&id.as_str()])
            .await
    }

    async fn franchises(&self) -> Result<Vec<Franchise>> {
        self.decode_all("listing franchises", ALL_FRANCHISES, &[])
            .await
    }

    async fn put_program(
        &self,
        franchise: &FranchiseId,
        version: u32,
        program: &Program,
    ) -> Result<()> {
        let body = encode(program)?;
        let v = i64::from(version);
        let written = self
            .execute(
                "writing a program",
                PUT_PROGRAM,
                &[&franchise.as_str(), &v, &body],
            )
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "program version {version} of {franchise} already exists"
            )))
        }
    }

    async fn program(&self, franchise: &FranchiseId, version: u32) -> Result<Option<Program>> {
        let v = i64::from(version);
        self.get_json("reading a program", GET_PROGRAM, &[&franchise.as_str(), &v])
            .await
    }

    async fn put_store(&self, store: &Store) -> Result<()> {
        let body = encode(store)?;
        self.execute(
            "writing a store",
            PUT_STORE,
            &[&store.id.as_str(), &store.franchise_id.as_str(), &body],
        )
        .await
        .map(|_| ())
    }

    async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
        self.get_json("reading a store", GET_STORE, &[&id.as_str()])
            .await
    }

    /// One transaction: the record's fenced write (0 rows: a `Conflict`, rolled back), then
    /// the hash index (the old hash deleted, the new one written unless revoked).
    async fn put_api_key(&self, key: &ApiKey, previous: Option<&ApiKey>) -> Result<()> {
        key.check_replaces(previous)?;
        let what = "writing an api key";
        let (record, principal) = (encode(key)?, encode(&key.principal())?);
        let version = i64::try_from(key.version).map_err(|_| corrupt(what, "version"))?;
        let (fid, id) = (key.franchise_id.as_str(), key.id.as_str());
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(|e| pg(what, &e))?;
        let written = match previous {
            None => {
                let st = tx
                    .prepare_cached(INSERT_KEY_RECORD)
                    .await
                    .map_err(|e| pg(what, &e))?;
                tx.execute(&st, &[&fid, &id, &version, &key.key_hash, &record])
                    .await
            }
            Some(p) => {
                let expected = i64::try_from(p.version).map_err(|_| corrupt(what, "version"))?;
                let st = tx
                    .prepare_cached(UPDATE_KEY_RECORD)
                    .await
                    .map_err(|e| pg(what, &e))?;
                tx.execute(
                    &st,
                    &[&fid, &id, &version, &key.key_hash, &record, &expected],
                )
                .await
            }
        }
        .map_err(|e| pg(what, &e))?;
        if written != 1 {
            return Err(Error::Conflict(format!(
                "key {id} of {fid} is not at version {:?}",
                previous.map(|p| p.version)
            )));
        }
        if let Some(p) = previous {
            if p.key_hash != key.key_hash || key.is_revoked() {
                let st = tx
                    .prepare_cached(DELETE_API_KEY)
                    .await
                    .map_err(|e| pg(what, &e))?;
                tx.execute(&st, &[&p.key_hash])
                    .await
                    .map_err(|e| pg(what, &e))?;
            }
        }
        if !key.is_revoked() {
            let st = tx
                .prepare_cached(PUT_API_KEY)
                .await
                .map_err(|e| pg(what, &e))?;
            tx.execute(&st, &[&key.key_hash, &principal])
                .await
                .map_err(|e| pg(what, &e))?;
        }
        tx.commit().await.map_err(|e| pg(what, &e))
    }

    async fn api_key_record(&self, franchise: &FranchiseId, id: &str) -> Result<Option<ApiKey>> {
        self.get_json(
            "reading an api key record",
            GET_KEY_RECORD,
            &[&franchise.as_str(), &id],
        )
        .await
    }

    async fn api_keys_of(&self, franchise: &FranchiseId) -> Result<Vec<ApiKey>> {
        self.decode_all(
            "listing a franchise's api keys",
            KEY_RECORDS_OF,
            &[&franchise.as_str()],
        )
        .await
    }

    async fn api_key(&self, key_hash: &str) -> Result<Option<Principal>> {
        self.get_json("reading an api key", GET_API_KEY, &[&key_hash])
            .await
    }

    async fn member(&self, id: &MemberId) -> Result<Option<MemberState>> {
        self.get_json("reading a member", GET_MEMBER, &[&id.as_str()])
            .await
    }

    async fn members_after(
        &self,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<MemberState>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let what = "scanning members";
        match after {
            Some(m) => {
                self.decode_all(what, SCAN_MEMBERS_AFTER, &[&m.as_str(), &limit])
                    .await
            }
            None => self.decode_all(what, SCAN_MEMBERS, &[&limit]).await,
        }
    }

    async fn processed(
        &self,
        franchise: &FranchiseId,
        event_ids: &[EventId],
    ) -> Result<Vec<Option<ProcessedEvent>>> {
        let what = "reading idempotency records";
        let mut out: Vec<Option<ProcessedEvent>> = vec![None; event_ids.len()];
        if event_ids.is_empty() {
            return Ok(out);
        }
        let ids: Vec<&str> = event_ids.iter().map(EventId::as_str).collect();
        for row in self
            .query(what, PROCESSED, &[&franchise.as_str(), &ids])
            .await?
        {
            let ord: i64 = row.try_get(0).map_err(|e| pg(what, &e))?;
            let body: Vec<u8> = row.try_get(1).map_err(|e| pg(what, &e))?;
            let record: ProcessedEvent = decode(what, &body)?;
            let slot = usize::try_from(ord - 1)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| corrupt(what, format!("row for position {ord}")))?;
            *slot = Some(record);
        }
        Ok(out)
    }

    async fn ledger(
        &self,
        member: &MemberId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.decode_all(
            "reading a ledger",
            LEDGER_PAGE,
            &[&member.as_str(), &before, &limit],
        )
        .await
    }

    async fn claim_events(&self, claims: &[EventClaim]) -> Result<Vec<Fingerprint>> {
        let what = "claiming event ids";
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let franchises: Vec<&str> = claims.iter().map(|c| c.franchise_id.as_str()).collect();
        let events: Vec<&str> = claims.iter().map(|c| c.event_id.as_str()).collect();
        let fps: Vec<&[u8]> = claims.iter().map(|c| c.fingerprint.0.as_slice()).collect();
        let mut owners: Vec<Option<Fingerprint>> = vec![None; claims.len()];
        let mut fill = |rows: Vec<Row>| -> Result<()> {
            for row in rows {
                let ord: i64 = row.try_get(0).map_err(|e| pg(what, &e))?;
                let fp: Option<Vec<u8>> = row.try_get(1).map_err(|e| pg(what, &e))?;
                let slot = usize::try_from(ord - 1)
                    .ok()
                    .and_then(|i| owners.get_mut(i))
                    .ok_or_else(|| corrupt(what, format!("row for position {ord}")))?;
                if let Some(fp) = fp {
                    *slot = Some(fingerprint(what, &fp)?);
                }
            }
            Ok(())
        };
        fill(
            self.query(what, CLAIM, &[&franchises, &events, &fps])
                .await?,
        )?;
        // An id claimed by a concurrent call after this statement's snapshot was taken is
        // neither in the snapshot nor inserted here: its owner committed (the insert waited for
        // it), and a fresh read sees it.
        let missing: Vec<usize> = (0..claims.len()).filter(|i| owners[*i].is_none()).collect();
        if !missing.is_empty() {
            let f: Vec<&str> = missing.iter().map(|i| franchises[*i]).collect();
            let e: Vec<&str> = missing.iter().map(|i| events[*i]).collect();
            let rows = self.query(what, CLAIM_OWNERS, &[&f, &e]).await?;
            let mut again: Vec<Option<Fingerprint>> = vec![None; missing.len()];
            for row in rows {
                let ord: i64 = row.try_get(0).map_err(|e| pg(what, &e))?;
                let fp: Vec<u8> = row.try_get(1).map_err(|e| pg(what, &e))?;
                if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| again.get_mut(i)) {
                    *slot = Some(fingerprint(what, &fp)?);
                }
            }
            for (i, fp) in missing.into_iter().zip(again) {
                owners[i] = fp;
            }
        }
        owners
            .into_iter()
            .zip(claims)
            .map(|(fp, c)| {
                fp.ok_or_else(|| {
                    Error::Unavailable(format!(
                        "postgres: {what}: the owner of event {} of {} could not be read; retry",
                        c.event_id, c.franchise_id
                    ))
                })
            })
            .collect()
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
        // Days past the column's range hold nothing: clamp the bounds.
        let lo = i32::try_from(from.0).unwrap_or(i32::MAX);
        let hi = i32::try_from(to.0).unwrap_or(i32::MAX);
        let f = franchise.as_str();
        let mut client = self.client(what).await?;
        // One snapshot for the three reads (totals, their rewards and the visit counts agree
        // with each other), pipelined on the connection.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| pg(what, &e))?;
        let (st_totals, st_rewards, st_visits) = tokio::try_join!(
            tx.prepare_cached(DASHBOARD_TOTALS),
            tx.prepare_cached(DASHBOARD_REWARDS),
            tx.prepare_cached(DASHBOARD_VISITS),
        )
        .map_err(|e| pg(what, &e))?;
        let params: [&(dyn ToSql + Sync); 3] = [&f, &lo, &hi];
        let (totals, rewards, visits) = tokio::try_join!(
            tx.query(&st_totals, &params),
            tx.query(&st_rewards, &params),
            tx.query(&st_visits, &params),
        )
        .map_err(|e| pg(what, &e))?;
        tx.commit().await.map_err(|e| pg(what, &e))?;

        let store_id =
            |s: &str| StoreId::parse(s).map_err(|e| corrupt(what, format!("store id {s:?}: {e}")));
        let day_of = |d: i32| {
            u32::try_from(d)
                .map(Day)
                .map_err(|_| corrupt(what, format!("day {d}")))
        };
        let mut by_key: BTreeMap<(String, i32), DayTotals> = BTreeMap::new();
        for row in &totals {
            let store: String = row.try_get(0).map_err(|e| pg(what, &e))?;
            let day: i32 = row.try_get(1).map_err(|e| pg(what, &e))?;
            let mut counters = [0i64; COUNTERS];
            for (i, c) in counters.iter_mut().enumerate() {
                *c = row.try_get(i + 2).map_err(|e| pg(what, &e))?;
            }
            by_key.insert((store, day), totals_of(counters));
        }
        for row in &rewards {
            let store: String = row.try_get(0).map_err(|e| pg(what, &e))?;
            let day: i32 = row.try_get(1).map_err(|e| pg(what, &e))?;
            let reward: String = row.try_get(2).map_err(|e| pg(what, &e))?;
            let n: i64 = row.try_get(3).map_err(|e| pg(what, &e))?;
            let reward = RewardId::parse(&reward)
                .map_err(|e| corrupt(what, format!("reward id {reward:?}: {e}")))?;
            let Ok(n) = u64::try_from(n) else { continue };
            by_key
                .entry((store, day))
                .or_default()
                .rewards
                .insert(reward, n);
        }
        let mut out = DashboardRows::default();
        for ((store, day), t) in by_key {
            if !t.is_empty() {
                out.totals.push((store_id(&store)?, day_of(day)?, t));
            }
        }
        let mut rows: BTreeMap<(String, i32), VisitRow> = BTreeMap::new();
        for row in &visits {
            let scope: String = row.try_get(0).map_err(|e| pg(what, &e))?;
            let day: i32 = row.try_get(1).map_err(|e| pg(what, &e))?;
            let key: i32 = row.try_get(2).map_err(|e| pg(what, &e))?;
            let n: i64 = row.try_get(3).map_err(|e| pg(what, &e))?;
            rows.entry((scope, day))
                .or_default()
                .insert(VisitKey::unpack(key as u32), n);
        }
        for ((scope, day), row) in rows {
            let s = Scope::from_key(&scope)
                .ok_or_else(|| corrupt(what, format!("visit scope {scope:?}")))?;
            out.visits.push((s, day_of(day)?, PackedRow::of(&row)));
        }
        Ok(out)
    }

    async fn due_members(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<DueMember>> {
        let what = "reading the due index";
        let p = i32::try_from(partition).unwrap_or(i32::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let parse = |kind: &str, v: &str| Error::Corrupt(format!("postgres: due {kind} {v:?}"));
        self.query(what, DUE_MEMBERS, &[&p, &until.0, &limit])
            .await?
            .iter()
            .map(|row| {
                let m: String = row.try_get(0).map_err(|e| pg(what, &e))?;
                let f: String = row.try_get(1).map_err(|e| pg(what, &e))?;
                let at: i64 = row.try_get(2).map_err(|e| pg(what, &e))?;
                Ok(DueMember {
                    member_id: MemberId::parse(&m).map_err(|_| parse("member", &m))?,
                    franchise_id: FranchiseId::parse(&f).map_err(|_| parse("franchise", &f))?,
                    at: Timestamp(at),
                })
            })
            .collect()
    }

    async fn tier_counts(&self, franchise: &FranchiseId) -> Result<Vec<(String, i64)>> {
        let what = "reading tier counts";
        self.query(what, TIER_COUNTS, &[&franchise.as_str()])
            .await?
            .iter()
            .map(|row| {
                let tier: String = row.try_get(0).map_err(|e| pg(what, &e))?;
                let n: i64 = row.try_get(1).map_err(|e| pg(what, &e))?;
                Ok((tier, n))
            })
            .collect()
    }

    async fn segment_rows(&self, franchise: &FranchiseId) -> Result<Vec<(String, Day, i64)>> {
        let what = "reading segment changes";
        self.query(what, SEGMENT_ROWS, &[&franchise.as_str()])
            .await?
            .iter()
            .map(|row| {
                let name: String = row.try_get(0).map_err(|e| pg(what, &e))?;
                let day: i32 = row.try_get(1).map_err(|e| pg(what, &e))?;
                let n: i64 = row.try_get(2).map_err(|e| pg(what, &e))?;
                let day =
                    u32::try_from(day).map_err(|_| Error::Corrupt(format!("segment day {day}")))?;
                Ok((name, Day(day), n))
            })
            .collect()
    }

    async fn processed_after(
        &self,
        franchise: &FranchiseId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<Vec<ProcessedEvent>> {
        let after = after.map_or("", EventId::as_str);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.decode_all(
            "scanning idempotency records",
            PROCESSED_AFTER,
            &[&franchise.as_str(), &after, &limit],
        )
        .await
    }

    async fn replace_dashboard(
        &self,
        franchise: &FranchiseId,
        rows: &loyalty_domain::dashboard::DashboardDelta,
    ) -> Result<()> {
        let what = "replacing dashboard aggregates";
        let mut rows = rows.clone();
        rows.totals.retain(|(f, _, _), _| f == franchise);
        rows.visits.retain(|(f, _, _), _| f == franchise);
        rows.tiers.retain(|(f, _), _| f == franchise);
        rows.segments.retain(|(f, _, _), _| f == franchise);
        let batch = EffectBatch {
            dashboard: rows,
            ..EffectBatch::default()
        };
        let params = CommitParams::of(&batch, &self.keys)?;
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(|e| pg(what, &e))?;
        for sql in DELETE_DASHBOARD {
            tx.execute(sql, &[&franchise.as_str()])
                .await
                .map_err(|e| pg(what, &e))?;
        }
        if !batch.dashboard.is_empty() {
            let stmt = tx.prepare_cached(COMMIT).await.map_err(|e| pg(what, &e))?;
            tx.query(&stmt, &params.params())
                .await
                .map_err(|e| pg(what, &e))?;
        }
        tx.commit().await.map_err(|e| pg(what, &e))
    }

    async fn stores_of(&self, franchise: &FranchiseId) -> Result<Vec<Store>> {
        self.decode_all(
            "listing a franchise's stores",
            STORES_OF,
            &[&franchise.as_str()],
        )
        .await
    }

    async fn commit(&self, batch: EffectBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let what = "committing a batch";
        let timer = metrics().store_commit_seconds.start_timer();
        let params = CommitParams::of(&batch, &self.keys)?;
        match self.query(what, COMMIT, &params.params()).await {
            Ok(_) => {
                timer.observe_duration();
                Ok(())
            }
            Err(e @ Error::Conflict(_)) => {
                metrics().store_conflicts.inc();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn outbox_due(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let p = i32::try_from(partition).unwrap_or(i32::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.decode_all(
            "reading the due outbox",
            OUTBOX_DUE,
            &[&p, &until.0, &limit],
        )
        .await
    }

    async fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>> {
        self.get_json("reading an outbox entry", OUTBOX_ENTRY, &[&id])
            .await
    }

    /// One transaction: the fenced `UPDATE` (0 rows: `Conflict`, rolled back), then the
    /// dashboard delta with the commit statement's own upserts.
    async fn update_outbox(
        &self,
        entry: &OutboxEntry,
        expected_attempts: u32,
        dashboard: &DashboardDelta,
    ) -> Result<()> {
        let what = "recording an outbox attempt";
        let body = encode(entry)?;
        let (partition, attempts) = (
            partition_i32(entry.partition)?,
            attempts_i32(entry.attempts)?,
        );
        let expected = attempts_i32(expected_attempts)?;
        let batch = EffectBatch {
            dashboard: dashboard.clone(),
            ..EffectBatch::default()
        };
        let params = CommitParams::of(&batch, &self.keys)?;
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(|e| pg(what, &e))?;
        let update = tx
            .prepare_cached(OUTBOX_UPDATE)
            .await
            .map_err(|e| pg(what, &e))?;
        let n = tx
            .execute(
                &update,
                &[
                    &entry.id.as_str(),
                    &expected,
                    &entry.franchise_id.as_str(),
                    &entry.member_id.as_str(),
                    &partition,
                    &entry.next_attempt_at.0,
                    &state_name(&entry.state),
                    &attempts,
                    &body,
                ],
            )
            .await
            .map_err(|e| pg(what, &e))?;
        if n == 0 {
            // Dropping the transaction rolls it back: nothing was written.
            metrics().store_conflicts.inc();
            return Err(Error::Conflict(format!(
                "outbox entry {} is not pending after {expected_attempts} attempts",
                entry.id
            )));
        }
        if !dashboard.is_empty() {
            let stmt = tx.prepare_cached(COMMIT).await.map_err(|e| pg(what, &e))?;
            tx.query(&stmt, &params.params())
                .await
                .map_err(|e| pg(what, &e))?;
        }
        tx.commit().await.map_err(|e| pg(what, &e))
    }

    /// Nothing to do: a commit is durable when it returns (`synchronous_commit = on`).
    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    async fn partition_members(
        &self,
        partition: Partition,
        franchise: &FranchiseId,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<IndexedMember>> {
        let what = "reading a partition's members";
        let p = partition_column(partition)?;
        let after = after.map_or("", |m| m.as_str());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            what,
            PARTITION_MEMBERS,
            &[&p, &franchise.as_str(), &after, &limit],
        )
        .await?
        .iter()
        .map(|row| {
            let state: Vec<u8> = row.try_get(0).map_err(|e| pg(what, &e))?;
            let due: Option<i64> = row.try_get(1).map_err(|e| pg(what, &e))?;
            Ok(IndexedMember {
                state: self.decode(what, &state)?,
                due: due.map(Timestamp),
            })
        })
        .collect()
    }

    async fn put_due(&self, writes: &[DueWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut members = Vec::with_capacity(writes.len());
        let mut franchises = Vec::with_capacity(writes.len());
        let mut partitions = Vec::with_capacity(writes.len());
        let mut dues = Vec::with_capacity(writes.len());
        let mut versions = Vec::with_capacity(writes.len());
        for w in writes {
            members.push(w.member_id.as_str());
            franchises.push(w.franchise_id.as_str());
            partitions.push(partition_column(w.due.partition)?);
            dues.push(w.due.at.map(|t| t.0));
            versions.push(to_i64("member version", w.version)?);
        }
        let params: [&(dyn ToSql + Sync); 5] =
            [&members, &franchises, &partitions, &dues, &versions];
        match self.query("writing due entries", PUT_DUE, &params).await {
            Ok(_) => Ok(()),
            Err(e @ Error::Conflict(_)) => {
                metrics().store_conflicts.inc();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn reindex_mark(&self, partition: Partition) -> Result<Option<ReindexMark>> {
        let p = partition_column(partition)?;
        self.get_json("reading a re-index mark", GET_REINDEX_MARK, &[&p])
            .await
    }

    async fn put_reindex_mark(&self, partition: Partition, mark: &ReindexMark) -> Result<()> {
        let (p, body) = (partition_column(partition)?, encode(mark)?);
        self.execute("writing a re-index mark", PUT_REINDEX_MARK, &[&p, &body])
            .await
            .map(|_| ())
    }
}
