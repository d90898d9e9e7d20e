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
//! [`StateStore`]: loyalty_core::ports::StateStore

mod config;
mod migrate;
mod store;

pub use config::{Replication, ScyllaConfig};
pub use migrate::{migrate, Migration, MIGRATIONS};
pub use store::{session, ScyllaStore};
