//! The PostgreSQL adapter of the loyalty [`StateStore`] port: the shared store that these
//! machines can run, and a common choice for mid-sized chains.
//!
//! - [`PostgresConfig`]: a libpq URL (`postgres://user@host:5432/db`), the pool size and the
//!   connect and statement timeouts.
//! - [`migrate`]: versioned SQL migrations (`migrations/NNNN_name.sql`, embedded in the
//!   binary), run by `loyalty migrate` before the store is used.
//! - [`PostgresStore`]: the store. [`PostgresStore::connect`] refuses a database whose schema
//!   is not at this build's latest migration, and says to run `loyalty migrate`.
//!
//! # Driver
//!
//! [`tokio-postgres`](https://docs.rs/tokio-postgres) with the
//! [`deadpool-postgres`](https://docs.rs/deadpool-postgres) pool, rather than sqlx:
//!
//! - no database at compile time (sqlx's checked queries need one, or an offline cache kept in
//!   sync with the schema); the statements here are plain strings, checked by the tests
//!   against a real server;
//! - lean: the two crates pull in the wire protocol and little else (no TLS, no macros, no
//!   runtime-agnostic layers); sqlx brings its own pool, macros and drivers;
//! - statements are prepared once per connection and cached (`prepare_cached`): after the
//!   first use a call is one Bind/Execute round trip, with the plan kept by the server;
//! - the pool is bounded ([`PostgresConfig::pool_size`]): a burst of callers waits for a free
//!   connection (at most `connect_timeout + statement_timeout`, then `Unavailable`) instead of
//!   opening connections the server would refuse.
//!
//! TLS is out of scope for this step: the driver is built without a TLS connector, and a URL
//! asking for `sslmode=require` is refused by [`PostgresConfig::validate`] (`disable` and the
//! default `prefer` connect in clear). Adding it later means a TLS connector crate
//! (`tokio-postgres-rustls` or `postgres-native-tls`) chosen when the URL says
//! `sslmode=require` (or `verify-full` with `sslrootcert=...`), the URL carrying the mode as
//! libpq's does.
//!
//! # Schema (`migrations/`)
//!
//! | table | key | holds |
//! | --- | --- | --- |
//! | `franchises` | `id` | franchise |
//! | `programs` | `(franchise_id, version)` | program, written once (`ON CONFLICT DO NOTHING`; 0 rows is a `Conflict`) |
//! | `stores` | `id` (+ `franchise_id`) | store |
//! | `api_keys` | `key_hash` | principal (with its `key_id`) of an active key: a rotated or revoked key's hash is deleted |
//! | `api_key_records` | `(franchise_id, key_id)` (+ `version`, `key_hash`) | API key record (`0004_api_key_ids`), revoked ones included; `version` fences writes |
//! | `members` | `member_id` (+ `franchise_id`, `version`) | member state; `version` fences writes |
//! | `ledger` | `(member_id, seq)` (+ `event_id`) | ledger entries, read newest first on the key's index |
//! | `processed` | `(franchise_id, event_id)` (+ `member_id`, `fingerprint`) | idempotency records; `member_id` is NULL for anonymous sales |
//! | `event_claims` | `(franchise_id, event_id)` | the fingerprint of the command that owns the id (first claim wins), `claimed_at` |
//! | `dashboard_totals` | `(franchise_id, day, store_id)` | a store's daily counters (one `bigint` per counter of `DayTotals`), added to by commits (`0003_dashboards`) |
//! | `dashboard_rewards` | `(franchise_id, day, store_id, reward_id)` | redemptions by reward, added to likewise |
//! | `dashboard_visits` | `(franchise_id, day, scope, key)` | visit counts (`scope` `''` for the franchise, else a store id; `key` the packed `VisitKey`); a count brought to 0 is deleted by a trigger |
//! | `dashboard_tiers` | `(franchise_id, tier)` | members by tier |
//! | `member_due` | `member_id` (+ `partition`, `due_at`) | the scheduler's due index, written by the member's commit (`0005_member_due`) |
//! | `dashboard_segments` | `(franchise_id, segment, day)` | changes of segment sizes, added to by commits (`0006_segments`) |
//! | `outbox` | `id` (+ `franchise_id`, `member_id`, `partition`, `next_attempt_at`, `state`, `attempts`) | campaign outbox entries (`0008_outbox`; 7 is another branch's): inserted by the commit statement, `ON CONFLICT (id) DO NOTHING`; an attempt is recorded with `UPDATE … WHERE state = 'pending' AND attempts = $2` (0 rows: `Conflict`) and the commit statement's dashboard upserts, in one transaction. Partial index `outbox_pending_by_partition (partition, next_attempt_at, id) WHERE state = 'pending'` for `outbox_due` |
//! | `schema_migrations` | `version` | `name`, `checksum` (SHA-256 of the file), `applied_at` |
//!
//! `stores` has an index on `(franchise_id, id)` for [`StateStore::stores_of`]. The dashboards'
//! keys start with `(franchise_id, day)`, so [`StateStore::dashboard_rows`] reads one range of
//! each primary key (three statements pipelined in one read-only REPEATABLE READ transaction,
//! so that totals and visit counts come from one snapshot).
//!
//! Keys are typed columns (text in the `"C"` collation, i.e. byte order, `bigint` for versions
//! and sequence numbers, `bytea` for fingerprints). Domain values are their serde_json
//! documents in `bytea` columns, byte for byte what the embedded and ScyllaDB stores keep.
//! Not `jsonb`: the values are only ever read whole by the adapter, never queried inside;
//! `bytea` round-trips exactly what serde wrote with no parsing on the server's write path
//! (jsonb re-parses every document of every commit and reorders keys), and jsonb refuses some
//! strings serde_json writes (a `\u0000` in a name would fail a commit). An operator who wants
//! to look inside can still `SELECT convert_from(state, 'UTF8')::jsonb FROM members`.
//!
//! # Atomicity and fencing
//!
//! [`StateStore::commit`] writes a whole [`EffectBatch`] with ONE statement (so one round
//! trip and one transaction), whose data-modifying CTEs take every row of the batch as array
//! parameters (`unnest($1::text[], ...)`), however many members and events it holds (the
//! engine commits batches of up to ~2000 events):
//!
//! - new members (`expected_version == 0`): `INSERT ... ON CONFLICT DO NOTHING`, so an existing
//!   member is a row not written;
//! - other members: `UPDATE ... WHERE member_id = u.member_id AND version = u.expected`, so a
//!   zombie owner, or any writer that read an older version, writes no row;
//! - ledger entries: a plain `INSERT` (a duplicate `(member_id, seq)` is a `unique_violation`);
//! - records to insert: `INSERT ... ON CONFLICT DO NOTHING`; records to replace: an upsert;
//! - new outbox entries: `INSERT ... ON CONFLICT (id) DO NOTHING` (an existing entry is kept);
//! - the batch's dashboard delta: additive upserts (`INSERT ... ON CONFLICT DO UPDATE SET x =
//!   t.x + EXCLUDED.x`) of the daily totals, rewards, visit counts and tier counts, rows sorted
//!   by primary key; a visit count that reaches 0 is deleted by an `AFTER UPDATE` trigger
//!   (`WHEN (NEW.n = 0)`) at the end of the statement;
//! - then `loyalty_fence(...)` compares the rows each conditional part wrote with the rows it
//!   had to write and raises SQLSTATE `LY409` when one fell short.
//!
//! A failed condition (reported as [`Error::Conflict`]), like any other error, aborts the
//! statement, which rolls back everything it wrote: the batch is written whole or not at all,
//! its dashboard increments included (a refused batch adds nothing to the aggregates, and its
//! events are counted when they are applied again), a stronger guarantee than the port's
//! per-member atomicity. Concurrent commits are serialized by row locks at READ COMMITTED: an
//! `UPDATE` that waited for another writer re-checks `version` on the row that writer left,
//! and an `INSERT ... ON CONFLICT` waits for the other insert to commit or abort. Rows are
//! passed in key order, so that two batches lock shared rows in the same order; a deadlock or
//! serialization failure that still happens is `Unavailable` (retry).
//!
//! [`StateStore::claim_events`] is one statement too: `INSERT ... SELECT FROM unnest ... ON
//! CONFLICT DO NOTHING` of the first claim of each id in the call, then the owners read back,
//! from the inserted rows or from the table. The first claim of an id wins forever; duplicate
//! ids inside one call resolve to the first one's fingerprint. (An id claimed by a concurrent
//! call after the statement's snapshot was taken is read again with a second statement.)
//!
//! # Durability
//!
//! Every commit and claim is durable when it returns: sessions run with `synchronous_commit =
//! on` (set by the adapter in the connection's `options`, unless the URL's own `options` sets
//! it, for instance to `remote_apply` with synchronous replicas), so the server flushes the WAL
//! before it acknowledges the commit. [`StateStore::sync`] is therefore a no-op.
//!
//! # Pool sizing and timeouts
//!
//! A call holds one connection for one statement. Size the pool of a process to the commits it
//! runs at once (one per shard worker of an engine) plus a few for reads (gateway lookups and
//! cache misses): the default, 10, suits a node on a small machine. The sum over every process
//! must stay below the server's `max_connections` (100 by default, 3 of them reserved for
//! superusers); past that, put PgBouncer (transaction mode) in front (1.21 or later, with
//! `max_prepared_statements` set, for the prepared statements; `ignore_startup_parameters =
//! options`, with `statement_timeout` and `synchronous_commit` then set on the role with
//! `ALTER ROLE ... SET`). `statement_timeout` (30 s by default) is enforced by the server;
//! `connect_timeout` (5 s) bounds opening a connection, and a caller waits at most
//! `connect_timeout + statement_timeout` for a free connection of the pool.
//!
//! # Tests
//!
//! `tests/` runs the shared contract suite and this adapter's own checks (migrations, claims
//! across a kill -9 of the server, fencing races, whole-batch atomicity, 2000-event batches)
//! on a real server that each test starts for itself
//! (`loyalty_testkit::postgres::PostgresServer`: `initdb` in a temporary directory, `pg_ctl`
//! on a free loopback port).
//!
//! # Differences from the ScyllaDB adapter that the contract suite checks
//!
//! The contract suite (`loyalty_testkit::store_contract`) runs unchanged on both; where they
//! differ, it checks what the port promises and both pass:
//!
//! - **Atomicity**: PostgreSQL writes a batch whole or not at all; ScyllaDB's conditional
//!   batches cover one partition, so it is atomic per member and may have written other
//!   members' shares of a batch that fails. The suite checks per-member atomicity (a refused
//!   member's state, ledger rows and records are all left unwritten), which both give.
//! - **`members_after` order**: member-id order here (byte order, like the embedded store);
//!   token order of the member id on ScyllaDB. The suite checks that paging returns every
//!   member exactly once, whatever the order.
//! - **Conditional writes**: here, row counts of ordinary statements under row locks (`UPDATE
//!   ... WHERE version = $n`, `ON CONFLICT DO NOTHING`) checked in the same statement;
//!   ScyllaDB uses lightweight transactions (Paxos, `IF version = ?`, `IF NOT EXISTS`). Both
//!   report a lost condition as [`Error::Conflict`].
//! - **`sync`**: a no-op on both: their commits are durable on return.
//! - **Dashboards' aggregates**: here, additive upserts in the commit's statement, so exact;
//!   on ScyllaDB, counter tables incremented after the member batches, not atomic with them
//!   (a batch that fails after some members' shares were written adds nothing, so those
//!   events are missing from the aggregates until a rebuild). The suite checks that deltas add
//!   up and that a refused batch adds nothing, which both give.
//!   Rows of a dashboard read here are rows of one snapshot; there, of one read per partition.
//!
//! [`StateStore`]: loyalty_core::ports::StateStore
//! [`StateStore::commit`]: loyalty_core::ports::StateStore::commit
//! [`StateStore::claim_events`]: loyalty_core::ports::StateStore::claim_events
//! [`StateStore::sync`]: loyalty_core::ports::StateStore::sync
//! [`StateStore::stores_of`]: loyalty_core::ports::StateStore::stores_of
//! [`StateStore::dashboard_rows`]: loyalty_core::ports::StateStore::dashboard_rows
//! [`EffectBatch`]: loyalty_core::ports::EffectBatch
//! [`Error::Conflict`]: loyalty_core::Error::Conflict

mod config;
mod error;
mod migrate;
mod store;

pub use config::{
    PostgresConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT,
};
pub use migrate::{latest_version, migrate, Migration, MIGRATIONS, MIGRATION_LOCK};
pub use store::PostgresStore;
