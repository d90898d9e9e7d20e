//! The PostgreSQL [`StateStore`]. The crate documentation describes the schema and the
//! semantics; this module holds the statements.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use loyalty_core::metrics::metrics;
use loyalty_core::model::{Franchise, Principal, Store};
use loyalty_core::ports::{EffectBatch, EventClaim, StateStore};
use loyalty_core::{Error, Result};
use loyalty_domain::{
    EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState, ProcessedEvent, Program,
    StoreId,
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
/// aborts the statement: all of the batch or nothing.
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
)
SELECT loyalty_fence(
    (SELECT count(*) FROM created), cardinality($1::text[]),
    (SELECT count(*) FROM updated), cardinality($5::text[]),
    (SELECT count(*) FROM recorded), cardinality($13::text[]))";

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
    pub async fn connect(config: &PostgresConfig) -> Result<PostgresStore> {
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
            Some(row) => Ok(Some(decode(what, &bytes_of(what, row)?)?)),
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
            .map(|row| decode(what, &bytes_of(what, row)?))
            .collect()
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
    fn of(batch: &EffectBatch) -> Result<CommitParams> {
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
            let version = to_i64("member version", s.version)?;
            if w.expected_version == 0 {
                p.new_ids.push(s.member_id.as_str().to_owned());
                p.new_franchises.push(s.franchise_id.as_str().to_owned());
                p.new_versions.push(version);
                p.new_states.push(encode(s)?);
            } else {
                p.upd_ids.push(s.member_id.as_str().to_owned());
                p.upd_versions.push(version);
                p.upd_states.push(encode(s)?);
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
        Ok(p)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 22] {
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

    async fn put_api_key(&self, key_hash: &str, principal: &Principal) -> Result<()> {
        let body = encode(principal)?;
        self.execute("writing an api key", PUT_API_KEY, &[&key_hash, &body])
            .await
            .map(|_| ())
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

    async fn commit(&self, batch: EffectBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let what = "committing a batch";
        let timer = metrics().store_commit_seconds.start_timer();
        let params = CommitParams::of(&batch)?;
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

    /// Nothing to do: a commit is durable when it returns (`synchronous_commit = on`).
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}
