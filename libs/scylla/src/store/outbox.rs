//! The campaign outbox on ScyllaDB (`migrations/0008_outbox.cql`).
//!
//! An entry must be written atomically with its member's share of a batch, and a conditional
//! batch covers one partition only. So the entry's row in `outbox` (by id, the target of the
//! attempts' compare-and-set) and its row in `outbox_pending` are written **before** the
//! member's conditional batch, which carries the entry's *marker* (a `member_events` row of
//! kind 3 whose `event_id` is the entry's id): the marker makes the entry committed, and it is
//! written or refused with the member's share. An entry not yet attempted is read only when
//! its marker exists; one without a marker is a refused batch's (or one in flight).
//!
//! - Insert: `INSERT … IF NOT EXISTS`. When an entry with the id exists, it is kept as it is;
//!   if it was never attempted, its `written_at_ms` is refreshed with a compare-and-set (so
//!   that a replay of a refused batch is not reaped while it runs) and its pending row written
//!   again.
//! - [`ScyllaStore::read_outbox_due`] reads the partition's pending rows in clustering order
//!   and checks each against its entry: a row that disagrees (delivered, rescheduled) is stale
//!   and deleted. An entry without its marker is skipped while younger than
//!   [`super::CLAIM_LEASE_MS`]; past it, its pending row is deleted and the entry removed with
//!   `DELETE … IF written_at_ms = <read>` (if that fails, a replay refreshed it: the row is
//!   written back), so that a refused batch's entries do not hold the head of the partition.
//! - [`ScyllaStore::record_attempt`]: the new pending row first (when rescheduled), then
//!   `UPDATE … IF state = 'pending' AND attempts = ?`, then the old pending row deleted, then
//!   the dashboard counters, as commits add them: **not atomic with the update** (a failure
//!   after the update leaves the attempt recorded without its counters).

use futures::TryStreamExt;
use loyalty_core::ports::{OutboxEntry, OutboxState, Partition};
use loyalty_core::{Error, Result};
use loyalty_domain::dashboard::DashboardDelta;
use loyalty_domain::Timestamp;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::{decode, encode, now_ms, unavailable, Lwt, ScyllaStore, CLAIM_LEASE_MS, PAGE_SIZE};

/// `kind` of outbox markers in `member_events`.
pub(super) const KIND_OUTBOX: i8 = 3;

/// The outbox's statements, prepared once per session.
pub(super) struct OutboxStatements {
    insert: PreparedStatement,
    refresh: PreparedStatement,
    get: PreparedStatement,
    update: PreparedStatement,
    reap: PreparedStatement,
    pending_insert: PreparedStatement,
    pending_delete: PreparedStatement,
    pending_read: PreparedStatement,
    marked: PreparedStatement,
    /// The marker, in the member's conditional batch: (pk, id, entry JSON).
    pub(super) mark: PreparedStatement,
}

async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement> {
    let mut p = session.prepare(cql.as_str()).await.map_err(|e| {
        unavailable(
            &format!("preparing `{cql}` (is the schema migrated? `loyalty migrate`)"),
            e,
        )
    })?;
    p.set_page_size(PAGE_SIZE);
    Ok(p)
}

impl OutboxStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<OutboxStatements> {
        let columns = "member_id, partition, next_attempt_at, state, attempts, written_at_ms, body";
        Ok(OutboxStatements {
            insert: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.outbox (id, {columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                     IF NOT EXISTS"
                ),
            )
            .await?,
            refresh: prepare(
                session,
                format!(
                    "UPDATE {ks}.outbox SET written_at_ms = ? WHERE id = ? \
                     IF state = 'pending' AND attempts = 0"
                ),
            )
            .await?,
            get: prepare(
                session,
                format!("SELECT {columns} FROM {ks}.outbox WHERE id = ?"),
            )
            .await?,
            update: prepare(
                session,
                format!(
                    "UPDATE {ks}.outbox SET member_id = ?, partition = ?, next_attempt_at = ?, \
                     state = ?, attempts = ?, body = ? WHERE id = ? \
                     IF state = 'pending' AND attempts = ?"
                ),
            )
            .await?,
            reap: prepare(
                session,
                format!(
                    "DELETE FROM {ks}.outbox WHERE id = ? \
                     IF state = 'pending' AND attempts = 0 AND written_at_ms = ?"
                ),
            )
            .await?,
            pending_insert: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.outbox_pending (partition, next_attempt_at, id) \
                     VALUES (?, ?, ?)"
                ),
            )
            .await?,
            pending_delete: prepare(
                session,
                format!(
                    "DELETE FROM {ks}.outbox_pending \
                     WHERE partition = ? AND next_attempt_at = ? AND id = ?"
                ),
            )
            .await?,
            pending_read: prepare(
                session,
                format!(
                    "SELECT next_attempt_at, id FROM {ks}.outbox_pending \
                     WHERE partition = ? AND next_attempt_at <= ?"
                ),
            )
            .await?,
            marked: prepare(
                session,
                format!(
                    "SELECT body FROM {ks}.member_events WHERE pk = ? AND kind = {KIND_OUTBOX} \
                     AND seq = 0 AND event_id = ?"
                ),
            )
            .await?,
            mark: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.member_events (pk, kind, seq, event_id, body) \
                     VALUES (?, {KIND_OUTBOX}, 0, ?, ?)"
                ),
            )
            .await?,
        })
    }
}

/// An `outbox` row.
struct Stored {
    member_id: String,
    partition: i32,
    next_attempt_at: i64,
    state: String,
    attempts: i32,
    written_at_ms: i64,
    body: Vec<u8>,
}

type StoredRow = (
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<Vec<u8>>,
);

impl Stored {
    fn of(id: &str, r: StoredRow) -> Result<Stored> {
        let missing = || Error::Corrupt(format!("scylla: outbox entry {id}: a column is null"));
        Ok(Stored {
            member_id: r.0.ok_or_else(missing)?,
            partition: r.1.ok_or_else(missing)?,
            next_attempt_at: r.2.ok_or_else(missing)?,
            state: r.3.ok_or_else(missing)?,
            attempts: r.4.ok_or_else(missing)?,
            written_at_ms: r.5.ok_or_else(missing)?,
            body: r.6.ok_or_else(missing)?,
        })
    }

    /// Not yet attempted: committed only if its marker exists.
    fn fresh(&self) -> bool {
        self.state == PENDING && self.attempts == 0
    }
}

const PENDING: &str = "pending";

/// The `state` column of an entry.
fn state_name(s: &OutboxState) -> &'static str {
    match s {
        OutboxState::Pending => PENDING,
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

impl ScyllaStore {
    async fn outbox_row(&self, id: &str) -> Result<Option<Stored>> {
        let what = "reading an outbox entry";
        let row = self
            .session
            .execute_unpaged(&self.ob.get, (id,))
            .await
            .map_err(|e| unavailable(what, e))?
            .into_rows_result()
            .map_err(|e| unavailable(what, e))?
            .maybe_first_row::<StoredRow>()
            .map_err(|e| unavailable(what, e))?;
        row.map(|r| Stored::of(id, r)).transpose()
    }

    /// Whether the entry's marker is in its member's partition (its batch was written).
    async fn marked(&self, member: &str, id: &str) -> Result<bool> {
        Ok(self
            .get_body("reading an outbox marker", &self.ob.marked, (member, id))
            .await?
            .is_some())
    }

    async fn pending_row(&self, what: &str, put: bool, p: i32, at: i64, id: &str) -> Result<()> {
        let st = if put {
            &self.ob.pending_insert
        } else {
            &self.ob.pending_delete
        };
        self.put(what, st, (p, at, id)).await
    }

    /// Writes a new entry of a commit (before the member's batch, which carries its marker):
    /// see the module documentation. An existing entry is kept as it is.
    pub(super) async fn insert_outbox(&self, e: &OutboxEntry) -> Result<()> {
        let what = "writing an outbox entry";
        let (p, at) = (partition_i32(e.partition)?, e.next_attempt_at.0);
        let pending = e.state == OutboxState::Pending;
        if pending {
            // Before the entry, so that a committed pending entry always has its row.
            self.pending_row(what, true, p, at, &e.id).await?;
        }
        let values = (
            e.id.as_str(),
            e.member_id.as_str(),
            p,
            at,
            state_name(&e.state),
            attempts_i32(e.attempts)?,
            now_ms(),
            encode(e)?,
        );
        let result = self
            .session
            .execute_unpaged(&self.ob.insert, values)
            .await
            .map_err(|e| unavailable(what, e))?;
        let lwt = Lwt::of(result)?;
        if lwt.applied {
            return Ok(());
        }
        // Kept. If never attempted, it may be a refused batch's: refresh it for this replay.
        let (stored_p, stored_at) = (
            lwt.column("partition").and_then(CqlValue::as_int),
            lwt.column("next_attempt_at").and_then(CqlValue::as_bigint),
        );
        let stored_pending =
            lwt.column("state").and_then(CqlValue::as_text) == Some(&PENDING.to_owned());
        if pending && (!stored_pending || (stored_p, stored_at) != (Some(p), Some(at))) {
            // This call's row is not the kept entry's: stale, removed now rather than by a
            // reader.
            self.pending_row(what, false, p, at, &e.id).await?;
        }
        let result = self
            .session
            .execute_unpaged(&self.ob.refresh, (now_ms(), e.id.as_str()))
            .await
            .map_err(|e| unavailable(what, e))?;
        let refresh = Lwt::of(result)?;
        if !refresh.applied {
            if refresh.column("state").is_none() {
                return Err(Error::Unavailable(format!(
                    "scylla: outbox entry {} was removed while being written again; retry",
                    e.id
                )));
            }
            return Ok(()); // attempted already: committed, and kept as it is
        }
        match (stored_p, stored_at) {
            (Some(sp), Some(sat)) => self.pending_row(what, true, sp, sat, &e.id).await,
            _ => Err(Error::Corrupt(format!(
                "scylla: outbox entry {} has no partition or time",
                e.id
            ))),
        }
    }

    /// The due entries of `partition` (see the module documentation).
    pub(super) async fn read_outbox_due(
        &self,
        partition: Partition,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let what = "reading the due outbox";
        let p = i32::try_from(partition).unwrap_or(i32::MAX);
        let mut rows = self
            .session
            .execute_iter(self.ob.pending_read.clone(), (p, until.0))
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<(i64, String)>()
            .map_err(|e| unavailable(what, e))?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((at, id)) = rows.try_next().await.map_err(|e| unavailable(what, e))? else {
                break;
            };
            let stored = match self.outbox_row(&id).await? {
                Some(s) if s.state == PENDING && s.partition == p && s.next_attempt_at == at => s,
                _ => {
                    self.pending_row(what, false, p, at, &id).await?;
                    continue;
                }
            };
            if stored.fresh() && !self.marked(&stored.member_id, &id).await? {
                self.reap_if_stale(p, at, &id, &stored).await?;
                continue;
            }
            out.push(decode("outbox entry", &stored.body)?);
        }
        Ok(out)
    }

    /// Removes an entry without its marker once older than the lease (see the module
    /// documentation); a younger one is left alone (its batch may be in flight).
    async fn reap_if_stale(&self, p: i32, at: i64, id: &str, stored: &Stored) -> Result<()> {
        let what = "removing an uncommitted outbox entry";
        if now_ms().saturating_sub(stored.written_at_ms) < CLAIM_LEASE_MS {
            return Ok(());
        }
        self.pending_row(what, false, p, at, id).await?;
        let result = self
            .session
            .execute_unpaged(&self.ob.reap, (id, stored.written_at_ms))
            .await
            .map_err(|e| unavailable(what, e))?;
        if Lwt::of(result)?.applied {
            tracing::info!(partition = p, "removed an outbox entry of a refused batch");
            Ok(())
        } else {
            // Written again (a replay) or attempted meanwhile: its row goes back.
            self.pending_row(what, true, p, at, id).await
        }
    }

    /// The committed entry `id`, if any.
    pub(super) async fn read_outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>> {
        let Some(stored) = self.outbox_row(id).await? else {
            return Ok(None);
        };
        if stored.fresh() && !self.marked(&stored.member_id, id).await? {
            return Ok(None);
        }
        Ok(Some(decode("outbox entry", &stored.body)?))
    }

    /// Records an attempt, fenced (see the module documentation).
    pub(super) async fn record_attempt(
        &self,
        entry: &OutboxEntry,
        expected_attempts: u32,
        dashboard: &DashboardDelta,
    ) -> Result<()> {
        let what = "recording an outbox attempt";
        let expected = attempts_i32(expected_attempts)?;
        let conflict = || {
            loyalty_core::metrics::metrics().store_conflicts.inc();
            Error::Conflict(format!(
                "outbox entry {} is not pending after {expected_attempts} attempts",
                entry.id
            ))
        };
        let Some(stored) = self.outbox_row(&entry.id).await? else {
            return Err(conflict());
        };
        if stored.state != PENDING || stored.attempts != expected {
            return Err(conflict());
        }
        if stored.fresh() && !self.marked(&stored.member_id, &entry.id).await? {
            return Err(conflict()); // a refused batch's: never committed
        }
        let (p, at) = (partition_i32(entry.partition)?, entry.next_attempt_at.0);
        let pending = entry.state == OutboxState::Pending;
        let moved = (p, at) != (stored.partition, stored.next_attempt_at);
        if pending && moved {
            self.pending_row(what, true, p, at, &entry.id).await?;
        }
        let values = (
            entry.member_id.as_str(),
            p,
            at,
            state_name(&entry.state),
            attempts_i32(entry.attempts)?,
            encode(entry)?,
            entry.id.as_str(),
            expected,
        );
        let result = self
            .session
            .execute_unpaged(&self.ob.update, values)
            .await
            .map_err(|e| unavailable(what, e))?;
        if !Lwt::of(result)?.applied {
            // The new row, if written, is stale: the next read removes it.
            return Err(conflict());
        }
        if !pending || moved {
            let (sp, sat) = (stored.partition, stored.next_attempt_at);
            self.pending_row(what, false, sp, sat, &entry.id).await?;
        }
        self.add_dashboard(dashboard).await
    }
}
