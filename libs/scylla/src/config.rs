//! Connection and keyspace settings of the ScyllaDB store.

use std::collections::BTreeMap;
use std::time::Duration;

use loyalty_core::{Error, Result};
use scylla::frame::types::{Consistency, SerialConsistency};

/// How the keyspace is replicated. Only used when [`crate::migrate`] creates the keyspace: an
/// existing keyspace is never altered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// Production: replicas per datacenter (`{'dc1': 3}`), rack-aware, what LOCAL_QUORUM and
    /// LOCAL_SERIAL are defined against.
    NetworkTopology(BTreeMap<String, u32>),
    /// Development and tests on a single node: `replication_factor` replicas, no topology.
    Simple(u32),
}

impl Default for Replication {
    /// Three replicas in Scylla's default datacenter name, `datacenter1`.
    fn default() -> Self {
        Replication::NetworkTopology(BTreeMap::from([("datacenter1".to_owned(), 3)]))
    }
}

impl Replication {
    /// The CQL map literal of the replication settings.
    pub fn cql(&self) -> String {
        match self {
            Replication::Simple(rf) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
            }
            Replication::NetworkTopology(dcs) => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, rf) in dcs {
                    s.push_str(&format!(", '{dc}': {rf}"));
                }
                s.push('}');
                s
            }
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Replication::Simple(0) => Err(Error::Invalid(
                "scylla: replication_factor must be at least 1".into(),
            )),
            Replication::Simple(_) => Ok(()),
            Replication::NetworkTopology(dcs) if dcs.is_empty() => Err(Error::Invalid(
                "scylla: NetworkTopologyStrategy needs at least one datacenter".into(),
            )),
            Replication::NetworkTopology(dcs) => {
                for (dc, rf) in dcs {
                    // The name is written into CQL: only plain characters.
                    let plain = !dc.is_empty()
                        && dc
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                    if !plain {
                        return Err(Error::Invalid(format!(
                            "scylla: datacenter name {dc:?} must be [A-Za-z0-9_.-]+"
                        )));
                    }
                    if *rf == 0 {
                        return Err(Error::Invalid(format!(
                            "scylla: replication factor of {dc} must be at least 1"
                        )));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Where the store lives and how it talks to the cluster.
#[derive(Clone, Debug)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` (9042 is CQL's port). The driver discovers the rest of the
    /// cluster from them.
    pub nodes: Vec<String>,
    /// Keyspace of every table; `[A-Za-z][A-Za-z0-9_]{0,47}`.
    pub keyspace: String,
    pub replication: Replication,
    /// Consistency of reads and writes (LOCAL_QUORUM: a read sees every acknowledged write
    /// while a minority of the local datacenter's replicas is down).
    pub consistency: Consistency,
    /// Consistency of the Paxos phase of conditional writes (LOCAL_SERIAL).
    pub serial_consistency: SerialConsistency,
    /// Deadline of one request, retries included.
    pub request_timeout: Duration,
    /// The datacenter this process runs in. When set, requests go to its nodes only (LOCAL_*
    /// consistencies are then evaluated where they are meant to be); when `None`, every node
    /// counts as local, which is right for a single-datacenter cluster.
    pub local_datacenter: Option<String>,
}

impl ScyllaConfig {
    /// Production defaults: NetworkTopologyStrategy `{'datacenter1': 3}`, LOCAL_QUORUM,
    /// LOCAL_SERIAL, 10 s per request.
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> ScyllaConfig {
        ScyllaConfig {
            nodes,
            keyspace: keyspace.into(),
            replication: Replication::default(),
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            request_timeout: Duration::from_secs(10),
            local_datacenter: None,
        }
    }

    /// A single-node development cluster: SimpleStrategy with one replica.
    pub fn dev(nodes: Vec<String>, keyspace: impl Into<String>) -> ScyllaConfig {
        ScyllaConfig {
            replication: Replication::Simple(1),
            ..ScyllaConfig::new(nodes, keyspace)
        }
    }

    /// Parses a comma-separated node list (`LOYALTY_SCYLLA_NODES=10.0.0.1:9042,10.0.0.2:9042`).
    pub fn parse_nodes(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checks what is written into CQL text (keyspace, datacenter names) and the rest, with a
    /// message that names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::Invalid(
                "scylla: no contact node given (LOYALTY_SCYLLA_NODES=host:9042,...)".into(),
            ));
        }
        let ks = self.keyspace.as_bytes();
        let valid = !ks.is_empty()
            && ks.len() <= 48
            && ks[0].is_ascii_alphabetic()
            && ks.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !valid {
            return Err(Error::Invalid(format!(
                "scylla: keyspace {:?} must be [A-Za-z][A-Za-z0-9_]{{0,47}}",
                self.keyspace
            )));
        }
        self.replication.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_renders_cql() {
        assert_eq!(
            Replication::Simple(1).cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            Replication::default().cql(),
            "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"
        );
    }

    #[test]
    fn names_written_into_cql_are_checked() {
        let ok = ScyllaConfig::dev(vec!["127.0.0.1:9042".into()], "loyalty");
        assert!(ok.validate().is_ok());
        for bad in ["", "1abc", "a-b", "a;DROP", &"k".repeat(49)] {
            let c = ScyllaConfig::dev(vec!["n:9042".into()], bad);
            assert!(c.validate().is_err(), "{bad} accepted");
        }
        let mut c = ScyllaConfig::new(vec!["n:9042".into()], "ks");
        c.replication = Replication::NetworkTopology(BTreeMap::from([("dc' }".into(), 3)]));
        assert!(c.validate().is_err());
        assert!(ScyllaConfig::new(Vec::new(), "ks").validate().is_err());
        assert_eq!(
            ScyllaConfig::parse_nodes(" a:9042, ,b:9042 "),
            vec!["a:9042".to_owned(), "b:9042".to_owned()]
        );
    }
}
