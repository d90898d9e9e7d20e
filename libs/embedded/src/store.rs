//! The embedded durable store, on [redb](https://docs.rs/redb).
//!
//! Why redb: a pure-Rust, single-file, ACID B-tree with copy-on-write pages and
//! checksummed commits. A transaction committed with `Durability::Immediate` survives a
//! `kill -9` or a power cut, there is no C toolchain or server to install, and it reads fast
//! enough to serve the checkout path directly on a cache miss. (fjall would also do; SQLite
//! would add a C dependency and SQL for what are key-value access paths.)
//!
//! Writes go through one writer thread that practises **group commit**: it takes every
//! [`EffectBatch`] waiting, checks each batch's conditions inside one write transaction
//! (member versions, idempotency records that must not exist), writes the batches that pass,
//! commits once and then answers each caller. A batch that fails its conditions is left out
//! whole: all of a batch or none of it is written.
//!
//! Every group transaction is durable before any of its callers is answered (one fsync covers
//! every batch, claim and outbox attempt waiting), so [`StateStore::sync`] has nothing left to
//! do. That makes a batch's commit its claim of the event ids it records
//! ([`StateStore::commit_claims_events`]): one writer decides, in commit order, which command
//! records an id first, and a batch with a record to insert whose id another command recorded
//! or claimed ([`StateStore::claim_events`], table `event_claims`) is refused whole. The engine
//! therefore skips the separate durable claim before applying, which cost every batch a
//! second writer round trip, a second fsync and a second B-tree insert per event. Outbox
//! attempts ([`StateStore::update_outbox`], fenced on the stored entry's attempts, with their
//! dashboard delta) ride the same group transaction. A batch's outbox entries are written
//! with it (tables `outbox` by id and `outbox_due` by (partition, next attempt, id) for the
//! pending ones). Administrative writes (franchises, programs, stores, keys) are durable on
//! return.
//!
//! Values are encoded on the engine's threads, so the writer only checks conditions and
//! inserts bytes: a member's value starts with its version (fenced without decoding), an
//! idempotency record leaves out the ids its key holds (`processed`), and a member's due entry
//! is left as it is when a write does not move it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use async_trait::async_trait;
use loyalty_core::model::{ApiKey, Franchise, Principal, Store};
use loyalty_core::ports::{
    DashboardRows, Due, DueMember, DueWrite, EffectBatch, EventClaim, IndexedMember, OutboxEntry,
    OutboxState, Partition, ReindexMark, StateStore,
};
use loyalty_core::sealing::KeyRing;
use loyalty_core::{Error, Result};
use loyalty_domain::dashboard::DashboardDelta;
use loyalty_domain::{
    Day, DomainError, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberId, MemberState,
    ProcessedEvent, Program, StoreId, Timestamp,
};
use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

mod dashboard;
mod processed;
mod slot;

use slot::DbSlot;

const FRANCHISES: TableDefinition<&str, &[u8]> = TableDefinition::new("franchises");
const PROGRAMS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("programs");
const STORES: TableDefinition<&str, &[u8]> = TableDefinition::new("stores");
/// The hash index of the active keys: key hash → principal (with its key id).
const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");
/// Key records, revoked ones included: (franchise, key id) → [`ApiKey`].
const API_KEY_RECORDS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("api_key_records");
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");
const LEDGER: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ledger");
const PROCESSED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("processed");
/// Event id claims: (franchise, event id) → the owning command's fingerprint.
const CLAIMS: TableDefinition<(&str, &str), [u8; 16]> = TableDefinition::new("event_claims");

/// The due index of the scheduler: (partition, due time in ms, member) → franchise.
const DUE: TableDefinition<(u32, i64, &str), &str> = TableDefinition::new("due");
/// Each indexed member's entry in [`DUE`]: member → (partition, due time), to replace it.
const DUE_OF: TableDefinition<&str, (u32, i64)> = TableDefinition::new("due_of");
/// The members of each partition by franchise, as the due index last placed them, for the
/// partition's re-index ([`StateStore::partition_members`]): (partition, franchise, member) →
/// due time in ms, [`NOTHING_DUE`] when nothing is.
const INDEXED: TableDefinition<(u32, &str, &str), i64> = TableDefinition::new("indexed");
/// Each member's partition in [`INDEXED`], to move it.
const INDEXED_OF: TableDefinition<&str, u32> = TableDefinition::new("indexed_of");
/// [`INDEXED`]'s due time of a member with nothing due.
const NOTHING_DUE: i64 = i64::MAX;
/// The re-index mark of each partition: partition → JSON of [`ReindexMark`].
const REINDEX: TableDefinition<u32, &[u8]> = TableDefinition::new("reindex_marks");

/// The campaign outbox: entry id → [`OutboxEntry`] (JSON), every state.
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
/// The pending entries of [`OUTBOX`] by (partition, next attempt in ms, id), for
/// [`StateStore::outbox_due`]; written in the transaction that writes the entry.
const OUTBOX_DUE: TableDefinition<(u32, i64, &str), ()> = TableDefinition::new("outbox_due");

/// Page cache of the store unless configured otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Batches the writer thread puts in one transaction at most.
const MAX_GROUP: usize = 256;

/// What the writer thread is asked to do.
enum WriteRequest {
    /// Write a batch's effects (durable on reply).
    Commit(EncodedBatch, oneshot::Sender<Result<()>>),
    /// Claim event ids (durable on reply).
    Claim(Vec<EventClaim>, oneshot::Sender<Result<Vec<Fingerprint>>>),
    /// Record an outbox attempt, fenced (durable on reply).
    Outbox(OutboxUpdate, oneshot::Sender<Result<()>>),
}

/// An attempt's result to record ([`StateStore::update_outbox`]), encoded by its caller.
struct OutboxUpdate {
    entry: EncodedOutbox,
    expected_attempts: u32,
    dashboard: DashboardDelta,
}

/// An outbox entry ready to write: its keys, and its JSON.
struct EncodedOutbox {
    id: String,
    partition: Partition,
    next_attempt_at: i64,
    pending: bool,
    value: Vec<u8>,
}

impl EncodedOutbox {
    fn of(e: &OutboxEntry) -> Result<EncodedOutbox> {
        Ok(EncodedOutbox {
            id: e.id.clone(),
            partition: e.partition,
            next_attempt_at: e.next_attempt_at.0,
            pending: e.state == OutboxState::Pending,
            value: encode(e)?,
        })
    }
}

/// The embedded [`StateStore`]: one redb file.
pub struct EmbeddedStore {
    db: Arc<DbSlot>,
    /// Seals and opens members' personal data (README "Personal data at rest").
    keys: KeyRing,
    writer: Option<mpsc::Sender<WriteRequest>>,
    writer_thread: Option<thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    /// Lets the writer finish what is queued and close the file, so that the store can be
    /// opened again as soon as this one is gone.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("embedded store: {e}"))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// The format byte of a member's stored value: then its version (8 bytes, little endian),
/// then its state as JSON. The writer checks a batch's expected versions on every commit, and
/// reading 8 bytes costs nothing where decoding the state did. Values written before this
/// format are the JSON alone, and start with `{`.
const MEMBER_FORMAT: u8 = 1;

fn encode_member(state: &MemberState, keys: &KeyRing) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    out.push(MEMBER_FORMAT);
    out.extend_from_slice(&state.version.to_le_bytes());
    keys.scope(|| serde_json::to_writer(&mut out, state))
        .map_err(|e| Error::Corrupt(format!("encoding: {e}")))?;
    Ok(out)
}

fn member_json(bytes: &[u8]) -> Result<&[u8]> {
    match bytes.first() {
        Some(&MEMBER_FORMAT) => bytes
            .get(9..)
            .ok_or_else(|| Error::Corrupt("member: a truncated value".into())),
        _ => Ok(bytes),
    }
}

fn decode_member(bytes: &[u8], keys: &KeyRing) -> Result<MemberState> {
    keys.from_json("member", member_json(bytes)?)
}

/// The version field of a member's JSON (the rest is not decoded).
#[derive(serde::Deserialize)]
struct VersionOnly {
    version: u64,
}

/// The version of a stored member, without decoding its state (but for values of the older
/// format).
fn member_version(bytes: &[u8]) -> Result<u64> {
    match bytes.first() {
        Some(&MEMBER_FORMAT) => bytes
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| Error::Corrupt("member: a truncated value".into())),
        _ => Ok(decode::<VersionOnly>("member", bytes)?.version),
    }
}

/// A batch's ledger entries as rows of the ledger table: one row per member, keyed by
/// (member, the sequence of its last entry in the batch), holding the member's entries of the
/// batch in sequence order, as a JSON array (one B-tree insert for all of them; a batch of
/// the engine often holds several commands of a member), or as the entry's JSON object when
/// there is one (the only form of rows written before this one, which read the same way).
/// Rows never overlap: a member's sequences only grow, and a batch is written whole or not at
/// all.
fn ledger_rows(entries: Vec<(MemberId, LedgerEntry)>) -> Result<Vec<(MemberId, u64, Vec<u8>)>> {
    let mut by_member: HashMap<MemberId, Vec<LedgerEntry>> = HashMap::new();
    let mut order = Vec::new();
    for (m, e) in entries {
        match by_member.get_mut(&m) {
            Some(es) => es.push(e),
            None => {
                order.push(m.clone());
                by_member.insert(m, vec![e]);
            }
        }
    }
    let mut rows = Vec::with_capacity(order.len());
    for m in order {
        let Some(mut es) = by_member.remove(&m) else {
            continue;
        };
        es.sort_by_key(|e| e.seq);
        let Some(last) = es.last().map(|e| e.seq) else {
            continue;
        };
        let value = match es.as_slice() {
            [one] => encode(one)?,
            many => encode(&many)?,
        };
        rows.push((m, last, value));
    }
    Ok(rows)
}

/// The entries of one ledger row ([`ledger_rows`]), in sequence order.
fn ledger_entries(bytes: &[u8]) -> Result<Vec<LedgerEntry>> {
    match bytes.first() {
        Some(b'[') => decode("ledger entries", bytes),
        _ => Ok(vec![decode("ledger entry", bytes)?]),
    }
}

/// An [`EffectBatch`] encoded by its caller, on the engine's threads: every batch goes through
/// the one writer thread, which then only checks conditions and inserts bytes.
struct EncodedBatch {
    /// (member, expected stored version, new value, due index entry and franchise).
    members: Vec<(MemberId, u64, Vec<u8>, Option<DueEntry>)>,
    /// (member, sequence of its last entry in the batch, its entries: see [`ledger_row`]).
    ledger: Vec<(MemberId, u64, Vec<u8>)>,
    processed: Vec<EncodedProcessed>,
    dashboard: DashboardDelta,
    /// New outbox entries (an existing id is kept as it is).
    outbox: Vec<EncodedOutbox>,
}

/// A member's due index entry and its franchise (the index names both).
type DueEntry = (Due, FranchiseId);

struct EncodedProcessed {
    franchise_id: FranchiseId,
    event_id: EventId,
    /// The command that owns the event id (checked against a claim of it).
    fingerprint: Fingerprint,
    /// The record must not exist yet (see [`loyalty_core::ports::ProcessedWrite::insert`]).
    insert: bool,
    value: Vec<u8>,
}

impl EncodedBatch {
    fn encode(batch: EffectBatch, keys: &KeyRing) -> Result<EncodedBatch> {
        let members = batch
            .members
            .iter()
            .map(|w| {
                let value = encode_member(&w.state, keys)?;
                let due = w.due.map(|d| (d, w.state.franchise_id.clone()));
                Ok((w.state.member_id.clone(), w.expected_version, value, due))
            })
            .collect::<Result<_>>()?;
        let ledger = ledger_rows(batch.ledger)?;
        let processed = batch
            .processed
            .into_iter()
            .map(|p| {
                let value = processed::encode(&p.record)?;
                Ok(EncodedProcessed {
                    franchise_id: p.record.franchise_id,
                    event_id: p.record.event_id,
                    fingerprint: p.record.fingerprint,
                    insert: p.insert,
                    value,
                })
            })
            .collect::<Result<_>>()?;
        let outbox = batch
            .outbox
            .iter()
            .map(EncodedOutbox::of)
            .collect::<Result<_>>()?;
        Ok(EncodedBatch {
            members,
            ledger,
            processed,
            dashboard: batch.dashboard,
            outbox,
        })
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir/state.redb` with a 64 MiB page cache; members'
    /// personal data is sealed and opened with `keys`.
    pub fn open(dir: &Path, keys: KeyRing) -> Result<Arc<EmbeddedStore>> {
        Self::open_with(dir, DEFAULT_CACHE_BYTES, keys)
    }

    /// Opens the store with a page cache of `cache_bytes` (memory stays bounded however many
    /// members there are; the OS page cache serves the rest).
    pub fn open_with(dir: &Path, cache_bytes: usize, keys: KeyRing) -> Result<Arc<EmbeddedStore>> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = DbSlot::open(dir.join("state.redb"), cache_bytes).map_err(unavailable)?;
        // Create every table once so that readers never meet a missing table.
        let tx = db.begin_write().map_err(unavailable)?;
        {
            tx.open_table(FRANCHISES).map_err(unavailable)?;
            tx.open_table(PROGRAMS).map_err(unavailable)?;
            tx.open_table(STORES).map_err(unavailable)?;
            tx.open_table(API_KEYS).map_err(unavailable)?;
            tx.open_table(API_KEY_RECORDS).map_err(unavailable)?;
            adopt_legacy_keys(&tx)?;
            tx.open_table(MEMBERS).map_err(unavailable)?;
            tx.open_table(LEDGER).map_err(unavailable)?;
            tx.open_table(PROCESSED).map_err(unavailable)?;
            tx.open_table(CLAIMS).map_err(unavailable)?;
            tx.open_table(DUE).map_err(unavailable)?;
            tx.open_table(DUE_OF).map_err(unavailable)?;
            tx.open_table(OUTBOX).map_err(unavailable)?;
            tx.open_table(OUTBOX_DUE).map_err(unavailable)?;
            tx.open_table(INDEXED).map_err(unavailable)?;
            tx.open_table(INDEXED_OF).map_err(unavailable)?;
            tx.open_table(REINDEX).map_err(unavailable)?;
            dashboard::create_tables(&tx)?;
        }
        tx.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<WriteRequest>(4096);
        let wdb = Arc::clone(&db);
        let writer_thread = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&wdb, rx))
            .map_err(unavailable)?;
        Ok(Arc::new(EmbeddedStore {
            db,
            keys,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
        }))
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(table).map_err(unavailable)?;
        match t.get(key).map_err(unavailable)? {
            Some(v) => Ok(Some(decode("record", v.value())?)),
            None => Ok(None),
        }
    }

    fn put_simple(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: Vec<u8>,
    ) -> Result<()> {
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut t = tx.open_table(table).map_err(unavailable)?;
            t.insert(key, value.as_slice()).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }

    fn writer(&self) -> Result<&mpsc::Sender<WriteRequest>> {
        self.writer.as_ref().ok_or(Error::ShuttingDown)
    }

    /// Number of enrolled members (for operators and tests).
    pub fn member_count(&self) -> Result<u64> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(MEMBERS).map_err(unavailable)?;
        t.len().map_err(unavailable)
    }
}

/// Gives every key stored before keys had ids (a principal without `key_id` in the hash index)
/// its record under its derived id ([`ApiKey::adopted`]), in the opening transaction.
fn adopt_legacy_keys(tx: &redb::WriteTransaction) -> Result<()> {
    let mut keys = tx.open_table(API_KEYS).map_err(unavailable)?;
    let mut legacy = Vec::new();
    for row in keys.iter().map_err(unavailable)? {
        let (h, v) = row.map_err(unavailable)?;
        let p: Principal = decode("api key", v.value())?;
        if p.key_id.is_none() {
            legacy.push((h.value().to_owned(), p));
        }
    }
    if legacy.is_empty() {
        return Ok(());
    }
    let mut records = tx.open_table(API_KEY_RECORDS).map_err(unavailable)?;
    let now = loyalty_core::provisioning::now();
    for (hash, p) in legacy {
        let Some(key) = ApiKey::adopted(&hash, &p, now) else {
            continue;
        };
        let id = (key.franchise_id.as_str(), key.id.as_str());
        if records.get(id).map_err(unavailable)?.is_none() {
            records
                .insert(id, encode(&key)?.as_slice())
                .map_err(unavailable)?;
        }
        keys.insert(hash.as_str(), encode(&key.principal())?.as_slice())
            .map_err(unavailable)?;
        tracing::info!(key_id = %key.id, franchise = %key.franchise_id, "API key given an id");
    }
    Ok(())
}

/// Applies queued requests in groups: one durable transaction (one fsync) per group, answered
/// once committed.
fn writer_loop(db: &DbSlot, mut rx: mpsc::Receiver<WriteRequest>) {
    while let Some(first) = rx.blocking_recv() {
        if db.awaits_reopen() {
            db.reopen();
        }
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let (mut batches, mut commit_replies) = (Vec::new(), Vec::new());
        let (mut claims, mut claim_replies) = (Vec::new(), Vec::new());
        let (mut updates, mut update_replies) = (Vec::new(), Vec::new());
        for request in group {
            match request {
                WriteRequest::Commit(batch, reply) => {
                    batches.push(batch);
                    commit_replies.push(reply);
                }
                WriteRequest::Claim(c, reply) => {
                    claims.push(c);
                    claim_replies.push(reply);
                }
                WriteRequest::Outbox(u, reply) => {
                    updates.push(u);
                    update_replies.push(reply);
                }
            }
        }
        let timer = loyalty_core::metrics::metrics()
            .store_commit_seconds
            .start_timer();
        let requests = GroupRequests {
            batches: &batches,
            claims: &claims,
            updates: &updates,
        };
        match commit_group(db, requests) {
            Ok(done) => {
                timer.observe_duration();
                for (reply, result) in commit_replies.into_iter().zip(done.batches) {
                    let _ = reply.send(result);
                }
                for (reply, result) in update_replies.into_iter().zip(done.updates) {
                    let _ = reply.send(result);
                }
                for (reply, owners) in claim_replies.into_iter().zip(done.owners) {
                    let _ = reply.send(Ok(owners));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for reply in commit_replies.into_iter().chain(update_replies) {
                    let _ = reply.send(Err(Error::Unavailable(msg.clone())));
                }
                for reply in claim_replies {
                    let _ = reply.send(Err(Error::Unavailable(msg.clone())));
                }
                // After an I/O error redb refuses everything until it is opened again, which
                // loses nothing: every commit answered was durable (see `slot`).
                if db.poisoned() {
                    db.reopen();
                }
            }
        }
    }
}

/// What one group transaction is asked to write.
#[derive(Clone, Copy)]
struct GroupRequests<'a> {
    batches: &'a [EncodedBatch],
    claims: &'a [Vec<EventClaim>],
    updates: &'a [OutboxUpdate],
}

/// What one group transaction answers: each batch's result, each claim request's owners, each
/// outbox update's result.
struct GroupResults {
    batches: Vec<Result<()>>,
    owners: Vec<Vec<Fingerprint>>,
    updates: Vec<Result<()>>,
}

/// Writes every batch whose conditions hold, every claim of an unclaimed id and every outbox
/// update whose fence holds, durably; returns each one's result. `Err` of the whole function
/// means nothing was committed.
fn commit_group(db: &DbSlot, requests: GroupRequests<'_>) -> Result<GroupResults> {
    let tx = db.begin_write().map_err(unavailable)?;
    let owners = claim_in(&tx, requests.claims)?;
    let batches = write_batches(&tx, requests.batches)?;
    let updates = requests
        .updates
        .iter()
        .map(|u| update_outbox(&tx, u))
        .collect::<Result<Vec<_>>>()?;
    tx.commit().map_err(unavailable)?;
    Ok(GroupResults {
        batches,
        owners,
        updates,
    })
}

/// Claims each request's event ids in `tx`: an id recorded already is owned by its record's
/// command, an id claimed already by its claim's; any other is claimed by its request. Returns
/// each request's owners.
fn claim_in(
    tx: &redb::WriteTransaction,
    requests: &[Vec<EventClaim>],
) -> Result<Vec<Vec<Fingerprint>>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let recorded = tx.open_table(PROCESSED).map_err(unavailable)?;
    let mut table = tx.open_table(CLAIMS).map_err(unavailable)?;
    let mut owners = Vec::with_capacity(requests.len());
    for request in requests {
        let mut out = Vec::with_capacity(request.len());
        for c in request {
            let key = (c.franchise_id.as_str(), c.event_id.as_str());
            if let Some(v) = recorded.get(key).map_err(unavailable)? {
                out.push(processed::owner(&c.franchise_id, &c.event_id, v.value())?);
                continue;
            }
            // One B-tree operation when the id is new (the usual case); an owner that the
            // insert replaced is put back.
            let previous = table
                .insert(key, c.fingerprint.0)
                .map_err(unavailable)?
                .map(|v| v.value());
            match previous {
                Some(owner) if owner != c.fingerprint.0 => {
                    table.insert(key, owner).map_err(unavailable)?;
                    out.push(Fingerprint(owner));
                }
                _ => out.push(c.fingerprint),
            }
        }
        owners.push(out);
    }
    Ok(owners)
}

/// Why `batch` cannot be written (a member's version moved, or an event id it records is
/// recorded or claimed by another command), if it cannot.
fn refusal(
    batch: &EncodedBatch,
    members: &redb::Table<'_, &'static str, &'static [u8]>,
    processed: &redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
    claims: &redb::Table<'_, (&'static str, &'static str), [u8; 16]>,
) -> Result<Option<String>> {
    for (member, expected, _, _) in &batch.members {
        let stored = match members.get(member.as_str()).map_err(unavailable)? {
            Some(v) => member_version(v.value())?,
            None => 0,
        };
        if stored != *expected {
            return Ok(Some(format!(
                "member {member} is at version {stored}, expected {expected}"
            )));
        }
    }
    for p in batch.processed.iter().filter(|p| p.insert) {
        let key = (p.franchise_id.as_str(), p.event_id.as_str());
        if processed.get(key).map_err(unavailable)?.is_some() {
            return Ok(Some(format!("event {} is already recorded", p.event_id)));
        }
        let claimed = claims.get(key).map_err(unavailable)?.map(|v| v.value());
        if claimed.is_some_and(|owner| owner != p.fingerprint.0) {
            return Ok(Some(format!(
                "event {} is claimed by another command",
                p.event_id
            )));
        }
    }
    Ok(None)
}

/// Writes, in `tx`, each batch whose conditions hold (checked first, so that a refused batch
/// writes nothing); returns each batch's result.
fn write_batches(tx: &redb::WriteTransaction, group: &[EncodedBatch]) -> Result<Vec<Result<()>>> {
    let mut results = Vec::with_capacity(group.len());
    if group.is_empty() {
        return Ok(results);
    }
    let mut members = tx.open_table(MEMBERS).map_err(unavailable)?;
    let mut ledger = tx.open_table(LEDGER).map_err(unavailable)?;
    let mut processed = tx.open_table(PROCESSED).map_err(unavailable)?;
    let claims = tx.open_table(CLAIMS).map_err(unavailable)?;
    let mut due_tables = DueTables::open(tx)?;
    for batch in group {
        if let Some(reason) = refusal(batch, &members, &processed, &claims)? {
            loyalty_core::metrics::metrics().store_conflicts.inc();
            results.push(Err(Error::Conflict(reason)));
            continue;
        }
        for (member, _, value, due) in &batch.members {
            members
                .insert(member.as_str(), value.as_slice())
                .map_err(unavailable)?;
            if let Some((due, franchise)) = due {
                due_tables.put(member, *due, franchise)?;
            }
        }
        for (member, seq, value) in &batch.ledger {
            ledger
                .insert((member.as_str(), *seq), value.as_slice())
                .map_err(unavailable)?;
        }
        for p in &batch.processed {
            let key = (p.franchise_id.as_str(), p.event_id.as_str());
            processed
                .insert(key, p.value.as_slice())
                .map_err(unavailable)?;
        }
        dashboard::apply(tx, &batch.dashboard)?;
        insert_outbox(tx, &batch.outbox)?;
        results.push(Ok(()));
    }
    Ok(results)
}

/// Inserts a batch's new outbox entries (and the pending ones' index rows), keeping an entry
/// whose id exists as it is (in the batch's transaction).
fn insert_outbox(tx: &redb::WriteTransaction, entries: &[EncodedOutbox]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut outbox = tx.open_table(OUTBOX).map_err(unavailable)?;
    let mut due = tx.open_table(OUTBOX_DUE).map_err(unavailable)?;
    for e in entries {
        if outbox.get(e.id.as_str()).map_err(unavailable)?.is_some() {
            continue;
        }
        outbox
            .insert(e.id.as_str(), e.value.as_slice())
            .map_err(unavailable)?;
        if e.pending {
            due.insert((e.partition, e.next_attempt_at, e.id.as_str()), ())
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

/// Records one attempt's result if the stored entry is pending with the expected attempts
/// (else `Ok(Err(Conflict))`, nothing written): the entry, its index row, the dashboard delta,
/// in the group's transaction.
fn update_outbox(tx: &redb::WriteTransaction, u: &OutboxUpdate) -> Result<Result<()>> {
    let e = &u.entry;
    let stored: Option<OutboxEntry> = {
        let outbox = tx.open_table(OUTBOX).map_err(unavailable)?;
        let v = outbox.get(e.id.as_str()).map_err(unavailable)?;
        v.map(|v| decode("outbox entry", v.value())).transpose()?
    };
    let conflict = |why: String| {
        loyalty_core::metrics::metrics().store_conflicts.inc();
        Ok(Err(Error::Conflict(why)))
    };
    let Some(stored) = stored else {
        return conflict(format!("outbox entry {} does not exist", e.id));
    };
    if stored.state != OutboxState::Pending || stored.attempts != u.expected_attempts {
        return conflict(format!(
            "outbox entry {} is {:?} after {} attempts, expected pending after {}",
            e.id, stored.state, stored.attempts, u.expected_attempts
        ));
    }
    {
        let mut outbox = tx.open_table(OUTBOX).map_err(unavailable)?;
        let mut due = tx.open_table(OUTBOX_DUE).map_err(unavailable)?;
        let old = (stored.partition, stored.next_attempt_at.0, e.id.as_str());
        due.remove(old).map_err(unavailable)?;
        if e.pending {
            due.insert((e.partition, e.next_attempt_at, e.id.as_str()), ())
                .map_err(unavailable)?;
        }
        outbox
            .insert(e.id.as_str(), e.value.as_slice())
            .map_err(unavailable)?;
    }
    dashboard::apply(tx, &u.dashboard)?;
    Ok(Ok(()))
}

/// An identifier read back from the store, which only ever wrote valid ones.
fn parse_id<T>(
    what: &str,
    s: &str,
    parse: fn(&str) -> std::result::Result<T, DomainError>,
) -> Result<T> {
    parse(s).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// The four tables of the due index, opened once per transaction.
struct DueTables<'t> {
    index: redb::Table<'t, (u32, i64, &'static str), &'static str>,
    of: redb::Table<'t, &'static str, (u32, i64)>,
    indexed: redb::Table<'t, (u32, &'static str, &'static str), i64>,
    indexed_of: redb::Table<'t, &'static str, u32>,
}

impl<'t> DueTables<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<DueTables<'t>> {
        Ok(DueTables {
            index: tx.open_table(DUE).map_err(unavailable)?,
            of: tx.open_table(DUE_OF).map_err(unavailable)?,
            indexed: tx.open_table(INDEXED).map_err(unavailable)?,
            indexed_of: tx.open_table(INDEXED_OF).map_err(unavailable)?,
        })
    }

    /// Indexes `member` (of `franchise`) as due at `due`: in the due index of its partition,
    /// and in the partition's list of indexed members. Only what differs from the stored
    /// entries is written: most writes of a member leave its due time as it was, and then
    /// cost two reads.
    fn put(&mut self, member: &MemberId, due: Due, franchise: &FranchiseId) -> Result<()> {
        let (m, f) = (member.as_str(), franchise.as_str());
        let wanted = due.at.map(|at| (due.partition, at.0));
        let current = self.of.get(m).map_err(unavailable)?.map(|v| v.value());
        let indexed_in = self
            .indexed_of
            .get(m)
            .map_err(unavailable)?
            .map(|v| v.value());
        if current == wanted && indexed_in == Some(due.partition) {
            return Ok(());
        }
        if current != wanted {
            if let Some((p, at)) = current {
                self.index.remove((p, at, m)).map_err(unavailable)?;
            }
            match wanted {
                Some(entry) => {
                    self.index
                        .insert((entry.0, entry.1, m), f)
                        .map_err(unavailable)?;
                    self.of.insert(m, entry).map_err(unavailable)?;
                }
                None => {
                    self.of.remove(m).map_err(unavailable)?;
                }
            }
        }
        if indexed_in != Some(due.partition) {
            if let Some(old) = indexed_in {
                self.indexed.remove((old, f, m)).map_err(unavailable)?;
            }
            self.indexed_of
                .insert(m, due.partition)
                .map_err(unavailable)?;
        }
        let at = due.at.map_or(NOTHING_DUE, |t| t.0);
        self.indexed
            .insert((due.partition, f, m), at)
            .map_err(unavailable)?;
        Ok(())
    }
}

impl EmbeddedStore {
    /// [`StateStore::partition_members`], in one read transaction.
    fn read_partition_members(
        &self,
        partition: Partition,
        franchise: &FranchiseId,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<IndexedMember>> {
        use std::ops::Bound;
        let tx = self.db.begin_read().map_err(unavailable)?;
        let indexed = tx.open_table(INDEXED).map_err(unavailable)?;
        let members = tx.open_table(MEMBERS).map_err(unavailable)?;
        let f = franchise.as_str();
        let start = match after {
            Some(a) => Bound::Excluded((partition, f, a.as_str())),
            None => Bound::Included((partition, f, "")),
        };
        let end = Bound::Included((partition, f, "\u{10ffff}"));
        let mut out = Vec::new();
        for row in indexed.range((start, end)).map_err(unavailable)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(unavailable)?;
            let (_, _, member) = k.value();
            // Written in the member's own commit: a state always exists for an entry.
            let Some(state) = members.get(member).map_err(unavailable)? else {
                continue;
            };
            let at = v.value();
            out.push(IndexedMember {
                state: decode_member(state.value(), &self.keys)?,
                due: (at != NOTHING_DUE).then_some(Timestamp(at)),
            });
        }
        Ok(out)
    }

    /// [`StateStore::put_due`]: the versions checked and the entries written in one durable
    /// write transaction (a conflict drops it, writing nothing).
    fn write_due(&self, writes: &[DueWrite]) -> Result<()> {
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let members = tx.open_table(MEMBERS).map_err(unavailable)?;
            for w in writes {
                let stored = match members.get(w.member_id.as_str()).map_err(unavailable)? {
                    Some(v) => Some(member_version(v.value())?),
                    None => None,
                };
                if stored != Some(w.version) {
                    loyalty_core::metrics::metrics().store_conflicts.inc();
                    return Err(Error::Conflict(format!(
                        "member {} is at version {stored:?}, not {}",
                        w.member_id, w.version
                    )));
                }
            }
        }
        {
            let mut due_tables = DueTables::open(&tx)?;
            for w in writes {
                due_tables.put(&w.member_id, w.due, &w.franchise_id)?;
            }
        }
        tx.commit().map_err(unavailable)
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn put_franchise(&self, franchise: &Franchise) -> Result<()> {
        self.put_simple(FRANCHISES, franchise.id.as_str(), encode(franchise)?)
    }

    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Franchise>> {
        self.get(FRANCHISES, id.as_str())
    }

    async fn franchises(&self) -> Result<Vec<Franchise>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(FRANCHISES).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(unavailable)? {
            let (_, v) = row.map_err(unavailable)?;
            out.push(decode("franchise", v.value())?);
        }
        Ok(out)
    }

    async fn put_program(
        &self,
        franchise: &FranchiseId,
        version: u32,
        program: &Program,
    ) -> Result<()> {
        let v = encode(program)?;
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut t = tx.open_table(PROGRAMS).map_err(unavailable)?;
            let key = (franchise.as_str(), version);
            if t.get(key).map_err(unavailable)?.is_some() {
                return Err(Error::Conflict(format!(
                    "program version {version} of {franchise} already exists"
                )));
            }
            t.insert(key, v.as_slice()).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }

    async fn program(&self, franchise: &FranchiseId, version: u32) -> Result<Option<Program>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(PROGRAMS).map_err(unavailable)?;
        match t.get((franchise.as_str(), version)).map_err(unavailable)? {
            Some(v) => Ok(Some(decode("program", v.value())?)),
            None => Ok(None),
        }
    }

    async fn put_store(&self, store: &Store) -> Result<()> {
        self.put_simple(STORES, store.id.as_str(), encode(store)?)
    }

    async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
        self.get(STORES, id.as_str())
    }

    async fn put_api_key(&self, key: &ApiKey, previous: Option<&ApiKey>) -> Result<()> {
        key.check_replaces(previous)?;
        let (record, principal) = (encode(key)?, encode(&key.principal())?);
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut records = tx.open_table(API_KEY_RECORDS).map_err(unavailable)?;
            let mut hashes = tx.open_table(API_KEYS).map_err(unavailable)?;
            let id = (key.franchise_id.as_str(), key.id.as_str());
            let stored: Option<ApiKey> = match records.get(id).map_err(unavailable)? {
                Some(v) => Some(decode("api key record", v.value())?),
                None => None,
            };
            if stored.as_ref().map(|k| k.version) != previous.map(|p| p.version) {
                return Err(Error::Conflict(format!(
                    "key {} of {} is at version {:?}, not {:?}",
                    key.id,
                    key.franchise_id,
                    stored.map(|k| k.version),
                    previous.map(|p| p.version)
                )));
            }
            if let Some(old) = &stored {
                if old.key_hash != key.key_hash || key.is_revoked() {
                    hashes.remove(old.key_hash.as_str()).map_err(unavailable)?;
                }
            }
            if !key.is_revoked() {
                hashes
                    .insert(key.key_hash.as_str(), principal.as_slice())
                    .map_err(unavailable)?;
            }
            records.insert(id, record.as_slice()).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }

    async fn api_key(&self, key_hash: &str) -> Result<Option<Principal>> {
        self.get(API_KEYS, key_hash)
    }

    async fn api_key_record(&self, franchise: &FranchiseId, id: &str) -> Result<Option<ApiKey>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(API_KEY_RECORDS).map_err(unavailable)?;
        match t.get((franchise.as_str(), id)).map_err(unavailable)? {
            Some(v) => Ok(Some(decode("api key record", v.value())?)),
            None => Ok(None),
        }
    }

    async fn api_keys_of(&self, franchise: &FranchiseId) -> Result<Vec<ApiKey>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(API_KEY_RECORDS).map_err(unavailable)?;
        let f = franchise.as_str();
        let mut out = Vec::new();
        // Every id of the franchise sorts between "" and the largest character.
        for row in t.range((f, "")..=(f, "\u{10ffff}")).map_err(unavailable)? {
            let (_, v) = row.map_err(unavailable)?;
            out.push(decode("api key record", v.value())?);
        }
        Ok(out)
    }

    async fn member(&self, id: &MemberId) -> Result<Option<MemberState>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(MEMBERS).map_err(unavailable)?;
        match t.get(id.as_str()).map_err(unavailable)? {
            Some(v) => Ok(Some(decode_member(v.value(), &self.keys)?)),
            None => Ok(None),
        }
    }

    async fn members_after(
        &self,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<MemberState>> {
        use std::ops::Bound;
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(MEMBERS).map_err(unavailable)?;
        let start = match after {
            Some(m) => Bound::Excluded(m.as_str()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for row in t
            .range::<&str>((start, Bound::Unbounded))
            .map_err(unavailable)?
            .take(limit)
        {
            let (_, v) = row.map_err(unavailable)?;
            out.push(decode_member(v.value(), &self.keys)?);
        }
        Ok(out)
    }

    async fn processed(
        &self,
        franchise: &FranchiseId,
        event_ids: &[EventId],
    ) -> Result<Vec<Option<ProcessedEvent>>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(PROCESSED).map_err(unavailable)?;
        let mut out = Vec::with_capacity(event_ids.len());
        for id in event_ids {
            out.push(
                match t
                    .get((franchise.as_str(), id.as_str()))
                    .map_err(unavailable)?
                {
                    Some(v) => Some(processed::decode(franchise, id, v.value())?),
                    None => None,
                },
            );
        }
        Ok(out)
    }

    async fn ledger(
        &self,
        member: &MemberId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(LEDGER).map_err(unavailable)?;
        let m = member.as_str();
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // The first row at or after `end` may hold entries before it (a row's key is the
        // sequence of its last entry); every row before `end` holds only entries before it.
        let first = t
            .range((m, end)..=(m, u64::MAX))
            .map_err(unavailable)?
            .next();
        let earlier = t.range((m, 0)..(m, end)).map_err(unavailable)?.rev();
        for row in first.into_iter().chain(earlier) {
            let (_, v) = row.map_err(unavailable)?;
            for e in ledger_entries(v.value())?.into_iter().rev() {
                if e.seq < end {
                    out.push(e);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
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
        dashboard::rows(&*self.db.get().map_err(unavailable)?, franchise, from, to)
    }

    async fn tier_counts(&self, franchise: &FranchiseId) -> Result<Vec<(String, i64)>> {
        dashboard::tiers(&*self.db.get().map_err(unavailable)?, franchise)
    }

    async fn segment_rows(&self, franchise: &FranchiseId) -> Result<Vec<(String, Day, i64)>> {
        dashboard::segments(&*self.db.get().map_err(unavailable)?, franchise)
    }

    async fn due_members(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<DueMember>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(DUE).map_err(unavailable)?;
        let mut out = Vec::new();
        let range = (partition, i64::MIN, "")..=(partition, until.0, "\u{10ffff}");
        for row in t.range(range).map_err(unavailable)?.take(limit) {
            let (k, v) = row.map_err(unavailable)?;
            let (_, at, member) = k.value();
            out.push(DueMember {
                member_id: parse_id("due member", member, MemberId::parse)?,
                franchise_id: parse_id("due franchise", v.value(), FranchiseId::parse)?,
                at: Timestamp(at),
            });
        }
        Ok(out)
    }

    async fn processed_after(
        &self,
        franchise: &FranchiseId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<Vec<ProcessedEvent>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(PROCESSED).map_err(unavailable)?;
        let f = franchise.as_str();
        let start = after.map_or("", |e| e.as_str());
        let mut out = Vec::new();
        for row in t
            .range((f, start)..(f, "\u{10ffff}"))
            .map_err(unavailable)?
        {
            let (k, v) = row.map_err(unavailable)?;
            if after.is_some_and(|a| k.value().1 == a.as_str()) {
                continue;
            }
            let event = parse_id("processed event", k.value().1, EventId::parse)?;
            out.push(processed::decode(franchise, &event, v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn replace_dashboard(
        &self,
        franchise: &FranchiseId,
        rows: &loyalty_domain::dashboard::DashboardDelta,
    ) -> Result<()> {
        dashboard::replace(&*self.db.get().map_err(unavailable)?, franchise, rows)
    }

    async fn stores_of(&self, franchise: &FranchiseId) -> Result<Vec<Store>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(STORES).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(unavailable)? {
            let (_, v) = row.map_err(unavailable)?;
            let store: Store = decode("store", v.value())?;
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
        let batch = EncodedBatch::encode(batch, &self.keys)?;
        let (tx, rx) = oneshot::channel();
        self.writer()?
            .send(WriteRequest::Commit(batch, tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn claim_events(&self, claims: &[EventClaim]) -> Result<Vec<Fingerprint>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        self.writer()?
            .send(WriteRequest::Claim(claims.to_vec(), tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn outbox_due(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let due = tx.open_table(OUTBOX_DUE).map_err(unavailable)?;
        let outbox = tx.open_table(OUTBOX).map_err(unavailable)?;
        let range = (partition, i64::MIN, "")..=(partition, until.0, "\u{10ffff}");
        let mut out = Vec::new();
        for row in due.range(range).map_err(unavailable)?.take(limit) {
            let (k, _) = row.map_err(unavailable)?;
            let (_, _, id) = k.value();
            let v = outbox.get(id).map_err(unavailable)?.ok_or_else(|| {
                Error::Corrupt(format!("outbox index names a missing entry {id}"))
            })?;
            out.push(decode("outbox entry", v.value())?);
        }
        Ok(out)
    }

    async fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(OUTBOX).map_err(unavailable)?;
        match t.get(id).map_err(unavailable)? {
            Some(v) => Ok(Some(decode("outbox entry", v.value())?)),
            None => Ok(None),
        }
    }

    async fn update_outbox(
        &self,
        entry: &OutboxEntry,
        expected_attempts: u32,
        dashboard: &DashboardDelta,
    ) -> Result<()> {
        let update = OutboxUpdate {
            entry: EncodedOutbox::of(entry)?,
            expected_attempts,
            dashboard: dashboard.clone(),
        };
        let (tx, rx) = oneshot::channel();
        self.writer()?
            .send(WriteRequest::Outbox(update, tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Nothing to do: every commit was durable before it returned.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// The batch's commit is its claim: one writer, durable commits, records checked against
    /// records and claims (see the module's documentation).
    fn commit_claims_events(&self) -> bool {
        true
    }

    async fn partition_members(
        &self,
        partition: Partition,
        franchise: &FranchiseId,
        after: Option<&MemberId>,
        limit: usize,
    ) -> Result<Vec<IndexedMember>> {
        self.read_partition_members(partition, franchise, after, limit)
    }

    async fn put_due(&self, writes: &[DueWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write_due(writes)
    }

    async fn reindex_mark(&self, partition: Partition) -> Result<Option<ReindexMark>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(REINDEX).map_err(unavailable)?;
        match t.get(partition).map_err(unavailable)? {
            Some(v) => Ok(Some(decode("reindex mark", v.value())?)),
            None => Ok(None),
        }
    }

    async fn put_reindex_mark(&self, partition: Partition, mark: &ReindexMark) -> Result<()> {
        let value = encode(mark)?;
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut t = tx.open_table(REINDEX).map_err(unavailable)?;
            t.insert(partition, value.as_slice()).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_testkit::store_contract::Scenario;

    /// A key stored before keys had ids (a principal by its hash, nothing else) gets its
    /// record under its derived id when the store opens, and works as before: listed, found by
    /// its hash with its id, and rotatable.
    #[tokio::test]
    async fn keys_of_the_older_format_get_an_id_on_open() -> anyhow::Result<()> {
        use loyalty_core::model::Role;
        let dir = tempfile::tempdir()?;
        let sc = Scenario::new("legacy-keys")?;
        let legacy = serde_json::json!({"role": "store", "franchise_id": sc.franchise, "store_id": sc.store});
        {
            let store = EmbeddedStore::open(dir.path(), KeyRing::dev())?;
            let tx = store.db.begin_write()?;
            {
                let mut t = tx.open_table(API_KEYS)?;
                t.insert("legacy-hash", serde_json::to_vec(&legacy)?.as_slice())?;
            }
            tx.commit()?;
        }
        let store = EmbeddedStore::open(dir.path(), KeyRing::dev())?;
        let id = loyalty_core::identity::legacy_api_key_id("legacy-hash");
        let p = store
            .api_key("legacy-hash")
            .await?
            .expect("the key still works");
        assert_eq!(p.key_id.as_deref(), Some(id.as_str()));
        assert_eq!(
            (p.role, p.store_id.as_ref()),
            (Role::Store, Some(&sc.store))
        );
        let keys = store.api_keys_of(&sc.franchise).await?;
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].id.as_str(), keys[0].version), (id.as_str(), 1));
        assert_eq!(keys[0].key_hash, "legacy-hash");
        drop(store);
        // Opening again adopts nothing twice.
        let store = EmbeddedStore::open(dir.path(), KeyRing::dev())?;
        assert_eq!(store.api_keys_of(&sc.franchise).await?, keys);
        let rotated = ApiKey {
            key_hash: "new-hash".into(),
            version: 2,
            ..keys[0].clone()
        };
        store.put_api_key(&rotated, Some(&keys[0])).await?;
        assert!(store.api_key("legacy-hash").await?.is_none());
        Ok(())
    }

    /// Members stored before the version prefix (JSON alone) read as before, and a commit
    /// fenced on their version is checked against it, passing or refused.
    #[tokio::test]
    async fn members_of_the_older_format_read_and_fence() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(dir.path(), KeyRing::dev())?;
        let mut sc = Scenario::new("legacy")?;
        let enrol = sc.enrol(&sc.member(1)?)?;
        store.commit(enrol.batch(0)).await?;
        let state = enrol.state.ok_or_else(|| anyhow::anyhow!("no state"))?;
        // Rewrite the member as the older format stored it.
        let tx = store.db.begin_write()?;
        {
            let mut t = tx.open_table(MEMBERS)?;
            t.insert(
                state.member_id.as_str(),
                serde_json::to_vec(&state)?.as_slice(),
            )?;
        }
        tx.commit()?;
        assert_eq!(store.member(&state.member_id).await?.as_ref(), Some(&state));
        assert_eq!(store.members_after(None, 10).await?, vec![state.clone()]);

        let bought = sc.purchase(&state, 1_000)?;
        let stale = store.commit(bought.batch(state.version + 1)).await;
        assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
        store.commit(bought.batch(state.version)).await?;
        let now = store.member(&state.member_id).await?;
        assert_eq!(now.as_ref(), bought.state.as_ref());
        // Written again in the new format: the version is its prefix.
        let tx = store.db.begin_read()?;
        let t = tx.open_table(MEMBERS)?;
        let raw = t
            .get(state.member_id.as_str())?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        assert_eq!(raw.first(), Some(&MEMBER_FORMAT));
        assert_eq!(member_version(&raw)?, state.version + 1);
        Ok(())
    }

    #[test]
    fn a_truncated_member_value_is_corrupt_not_a_panic() {
        for raw in [&[MEMBER_FORMAT][..], &[MEMBER_FORMAT, 1, 2, 3][..]] {
            assert!(matches!(member_version(raw), Err(Error::Corrupt(_))));
            assert!(matches!(
                decode_member(raw, &KeyRing::dev()),
                Err(Error::Corrupt(_))
            ));
        }
    }
}
