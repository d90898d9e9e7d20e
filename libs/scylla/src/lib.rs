//! The ScyllaDB (or Apache Cassandra) adapter of the loyalty [`StateStore`] port, on the
//! [`scylla`](https://docs.rs/scylla) driver.
//!
//! - [`ScyllaConfig`]: contact nodes, keyspace, replication (NetworkTopologyStrategy by default,
//!   SimpleStrategy for a one-node dev cluster) and consistency (LOCAL_QUORUM for reads and
//!   writes, LOCAL_SERIAL for the Paxos phase of conditional writes).
//! - [`migrate`]: versioned CQL migrations (`migrations/NNNN_name.cql`, embedded in the binary)
//!   recorded in a `schema_migrations` table; idempotent, run by `loyalty migrate` before the
//!   store is used.
//! - [`ScyllaStore`]: the store itself. See its module documentation for the schema and for how
//!   a batch's effects are made atomic and fenced, one member partition at a time.
//!
//! # ScyllaDB and PostgreSQL: what differs, and what the contract suite checks
//!
//! Both shared stores run the one contract suite (`loyalty_testkit::store_contract`);
//! PostgreSQL on every CI run, ScyllaDB whenever `LOYALTY_SCYLLA_NODES` names a node. The suite
//! is written against the port's weakest promises, so that both pass it:
//!
//! | | ScyllaDB (this crate) | PostgreSQL (`loyalty-postgres`) | checked by |
//! | --- | --- | --- | --- |
//! | atomicity of `commit` | per member partition (one LWT batch each); a refused batch may have written other members' shares | the whole batch in one transaction | `refused_batches_are_atomic_per_member` (the fenced member's share never written; every other member's wholly written or wholly absent) |
//! | fencing | `IF version = ?` / `IF version = null` (Paxos, LOCAL_SERIAL) | `UPDATE … WHERE version = $n` / `INSERT … ON CONFLICT DO NOTHING`, row counts checked | `versions_fence_writes` |
//! | new idempotency records | `INSERT … IF NOT EXISTS` in the member's batch | unique key, checked in the same statement | `existing_records_refuse_inserts`, `records_can_be_replaced` |
//! | event id claims | one `INSERT … IF NOT EXISTS` per id (`event_claims`) | one `INSERT … ON CONFLICT DO NOTHING` for the call, owners read back | `claims_first_wins` |
//! | `members_after` order | token order of the member id | member-id order (`C` collation) | `members_scan_once` (each member exactly once, whatever the order) |
//! | `sync` | nothing to do: writes are durable on return (commit log) | nothing to do: `synchronous_commit = on` | `sync_keeps_every_commit` |
//! | ledger order | clustering `seq DESC` | index on `(member, seq)` | `ledger_pages_newest_first` |
//! | dashboards' aggregates (`EffectBatch::dashboard`) | counter tables, incremented **after** the member batches and only when every one of them was written: **not atomic with the member batches**. A batch that fails adds nothing, also for the members whose share it wrote (their events are replays from then on, so they are missing from the aggregates); a failure while incrementing may leave part of the increments applied; counters are not idempotent, so a timed-out increment is not retried. A rebuild of the projections would restore exact figures, but it does not run on ScyllaDB yet (next row) | in the commit's transaction: exact | `dashboard_deltas_add_up`, `refused_batches_add_nothing_to_dashboards` |
//! | visit counts at 0 | kept at 0 (a counter cannot be deleted and written again), skipped by reads | deleted (trigger) | `dashboard_deltas_add_up` |
//! | rebuilding the dashboards (`processed_after`, `replace_dashboard`) | **not supported yet**: idempotency records are partitioned by event id (no ordered scan of a franchise's), and counters cannot be set; both answer `Invalid`, and `loyalty projections rebuild` says so | a page of `processed` in event-id order; the aggregates deleted and rewritten in one transaction | `rebuild_scans_and_replaces` (accepts `Invalid` as "not supported") |
//! | campaign outbox (`EffectBatch::outbox`, `update_outbox`) | `outbox` by id and `outbox_pending` rows written **before** the member's batch, which writes the entry's marker (kind 3 of `member_events`): atomic per member through the marker (an unmarked entry is invisible, and reaped after the claim lease); attempts fenced with `IF state = 'pending' AND attempts = ?`, their counters added after (not atomic with them) | the row inserted in the commit's statement (`ON CONFLICT DO NOTHING`); an attempt's `UPDATE … WHERE attempts = $2` and its counters in one transaction | `outbox_entries_are_due_by_partition_and_time`, `outbox_updates_are_fenced`, `refused_batches_write_no_outbox_entry` |
//! | `stores_of` | `stores_by_franchise`, written by `put_store` with `stores` (a move deletes the old franchise's row) and filled by `migrate` | index on `stores (franchise_id, id)` | `stores_of_lists_the_franchise_stores` |
//!
//! The engine is written for the weaker column: after a failed commit it re-reads the store and
//! treats the events it finds recorded as replays (`tests/tests/e2e/engine_faults.rs` runs it on a
//! store that writes every third batch only in part).
//!
//! [`StateStore`]: loyalty_core::ports::StateStore

mod config;
mod migrate;
mod store;

pub use config::{Replication, ScyllaConfig};
pub use migrate::{migrate, Migration, MIGRATIONS};
pub use store::{session, ScyllaStore};
