//! What an engine node can tell about itself: which partitions it owns, which are backing off
//! after a transient error, which are stopped by a permanent one, and whether the engine as a
//! whole has failed. Served by `/readyz` (and mirrored in metrics), so an operator sees a
//! stuck partition without reading logs.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::metrics;
use crate::ports::Partition;

/// The shared health of one engine node. Cheap to update; read on every `/readyz`.
#[derive(Debug, Default)]
pub struct EngineHealth {
    state: Mutex<HealthReport>,
}

/// A snapshot of [`EngineHealth`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Partitions owned by this node.
    pub owned: BTreeSet<Partition>,
    /// Partitions backing off after a transient error, with the last error.
    pub retrying: BTreeMap<Partition, String>,
    /// Partitions stopped by a permanent error, with the error: nothing of them is applied.
    pub stopped: BTreeMap<Partition, String>,
    /// Set when the engine stopped altogether (it applies nothing more).
    pub failed: Option<String>,
}

impl HealthReport {
    /// Whether every owned partition is being applied.
    pub fn healthy(&self) -> bool {
        self.failed.is_none() && self.stopped.is_empty()
    }
}

impl EngineHealth {
    pub fn report(&self) -> HealthReport {
        self.state.lock().clone()
    }

    fn update(&self, f: impl FnOnce(&mut HealthReport)) {
        let mut s = self.state.lock();
        f(&mut s);
        let m = metrics();
        m.engine_partitions_owned.set(s.owned.len() as i64);
        m.engine_partitions_retrying.set(s.retrying.len() as i64);
        m.engine_partitions_stopped.set(s.stopped.len() as i64);
    }

    pub(crate) fn assigned(&self, partitions: &[Partition]) {
        self.update(|s| s.owned.extend(partitions.iter().copied()));
    }

    pub(crate) fn released(&self, partitions: &[Partition]) {
        self.update(|s| {
            for p in partitions {
                s.owned.remove(p);
                s.retrying.remove(p);
                s.stopped.remove(p);
            }
        });
    }

    pub(crate) fn retrying(&self, partition: Partition, error: String) {
        self.update(|s| {
            s.retrying.insert(partition, error);
        });
    }

    pub(crate) fn recovered(&self, partition: Partition) {
        self.update(|s| {
            s.retrying.remove(&partition);
        });
    }

    pub(crate) fn stopped(&self, partition: Partition, error: String) {
        self.update(|s| {
            s.retrying.remove(&partition);
            s.stopped.insert(partition, error);
        });
    }

    /// The engine stopped applying anything (it exits, or refuses to run).
    pub fn failed(&self, error: String) {
        self.update(|s| s.failed = Some(error));
    }
}
