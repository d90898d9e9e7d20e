//! The idempotency records one batch works with: those it read from the store (its own event
//! ids, the purchases it refunds, the redemptions it cancels) and those it writes (its new
//! events, the purchases and redemptions it updates).
//!
//! One table holds each record once, found by (franchise, event id) without building an owned
//! key per lookup: a batch of a few hundred commands looks records up several times per
//! command, and cloned id strings in a map's keys were a visible part of the engine's time
//! (loadtest/RESULTS.md). The records to write come out in the order they were first written,
//! each with whether it is an insert (a new event) or a replace (an update).

use hashbrown::{DefaultHashBuilder, HashTable};
use loyalty_domain::{EventId, FranchiseId, ProcessedEvent};
use std::hash::BuildHasher;

use crate::ports::ProcessedWrite;

struct Entry {
    record: ProcessedEvent,
    /// `None`: only read. `Some(true)`: the batch inserts it (a new event). `Some(false)`: the
    /// batch replaces the stored record.
    write: Option<bool>,
}

/// The records of one batch, by (franchise, event id).
pub(crate) struct BatchRecords {
    hasher: DefaultHashBuilder,
    /// Positions in `entries`, hashed by their record's (franchise, event id).
    index: HashTable<usize>,
    entries: Vec<Entry>,
    /// Positions of the entries to write (each once), in the order of their first write.
    writes: Vec<usize>,
}

impl BatchRecords {
    /// Room for `n` records without growing.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            hasher: DefaultHashBuilder::default(),
            index: HashTable::with_capacity(n),
            entries: Vec::with_capacity(n),
            writes: Vec::with_capacity(n),
        }
    }

    fn position(&self, franchise: &FranchiseId, event: &EventId) -> Option<usize> {
        let hash = self.hasher.hash_one((franchise.as_str(), event.as_str()));
        self.index
            .find(hash, |&i| {
                let r = &self.entries[i].record;
                r.event_id == *event && r.franchise_id == *franchise
            })
            .copied()
    }

    /// The record of `event` in `franchise`, read or written by the batch.
    pub(crate) fn get(&self, franchise: &FranchiseId, event: &EventId) -> Option<&ProcessedEvent> {
        self.position(franchise, event)
            .map(|i| &self.entries[i].record)
    }

    /// Whether the batch knows a record of `event` in `franchise`.
    pub(crate) fn contains(&self, franchise: &FranchiseId, event: &EventId) -> bool {
        self.position(franchise, event).is_some()
    }

    /// Puts `record` in the table (replacing the batch's record of its id, whose write, if
    /// any, stays where it was) with `write` as its write if it has none yet; returns its
    /// position and whether it had one.
    fn put(&mut self, record: ProcessedEvent, write: Option<bool>) -> (usize, bool) {
        if let Some(i) = self.position(&record.franchise_id, &record.event_id) {
            let entry = &mut self.entries[i];
            let had = entry.write.is_some();
            entry.record = record;
            entry.write = write.or(entry.write);
            return (i, had);
        }
        let i = self.entries.len();
        let hash = self
            .hasher
            .hash_one((record.franchise_id.as_str(), record.event_id.as_str()));
        self.entries.push(Entry { record, write });
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, i, |&j| {
            let r = &entries[j].record;
            hasher.hash_one((r.franchise_id.as_str(), r.event_id.as_str()))
        });
        (i, false)
    }

    /// A record read from the store: known to the batch, written only if updated.
    pub(crate) fn read(&mut self, record: ProcessedEvent) {
        self.put(record, None);
    }

    /// A new event's record, which the commit inserts (it must not exist in the store).
    pub(crate) fn insert_new(&mut self, record: ProcessedEvent) {
        let (i, had_write) = self.put(record, Some(true));
        if !had_write {
            self.writes.push(i);
        }
    }

    /// Changes the record of `event` in `franchise` with `change`, and writes it: a replace of
    /// a stored record, or still an insert if the batch itself records the event. Returns
    /// whether the batch knew the record.
    pub(crate) fn update(
        &mut self,
        franchise: &FranchiseId,
        event: &EventId,
        change: impl FnOnce(&mut ProcessedEvent),
    ) -> bool {
        let Some(i) = self.position(franchise, event) else {
            return false;
        };
        let entry = &mut self.entries[i];
        change(&mut entry.record);
        if entry.write.is_none() {
            entry.write = Some(false);
            self.writes.push(i);
        }
        true
    }

    /// The records to write, in the order of their first write.
    pub(crate) fn into_writes(self) -> Vec<ProcessedWrite> {
        let mut entries: Vec<Option<Entry>> = self.entries.into_iter().map(Some).collect();
        // Every position in `writes` is there once and its entry has a write.
        self.writes
            .into_iter()
            .filter_map(|i| entries[i].take())
            .map(|e| ProcessedWrite {
                insert: e.write == Some(true),
                record: e.record,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_domain::{Fingerprint, Outcome, Rejection, StoreId, Timestamp};

    fn record(franchise: &str, event: &str) -> ProcessedEvent {
        ProcessedEvent {
            franchise_id: FranchiseId::parse(franchise).unwrap(),
            event_id: EventId::parse(event).unwrap(),
            fingerprint: Fingerprint([0; 16]),
            member_id: None,
            store_id: StoreId::parse("s-1").unwrap(),
            at: Timestamp(0),
            outcome: Outcome::Rejected(Rejection::UnknownMember),
        }
    }

    #[test]
    fn records_are_found_by_franchise_and_event_and_only_written_ones_come_out() {
        let mut r = BatchRecords::with_capacity(2);
        r.read(record("f-1", "e-1"));
        r.read(record("f-2", "e-1"));
        r.insert_new(record("f-1", "e-2"));
        let (f1, f2, e1, e2) = (
            FranchiseId::parse("f-1").unwrap(),
            FranchiseId::parse("f-2").unwrap(),
            EventId::parse("e-1").unwrap(),
            EventId::parse("e-2").unwrap(),
        );
        assert!(r.contains(&f1, &e1) && r.contains(&f2, &e1) && r.contains(&f1, &e2));
        assert!(!r.contains(&f2, &e2));
        assert_eq!(r.get(&f2, &e1).unwrap().franchise_id, f2);
        // An update of a read record replaces it; of the batch's own, it stays an insert.
        assert!(r.update(&f2, &e1, |rec| rec.fingerprint = Fingerprint([1; 16])));
        assert!(r.update(&f1, &e2, |rec| rec.fingerprint = Fingerprint([2; 16])));
        assert!(!r.update(&f2, &e2, |_| {}));
        let writes: Vec<(String, String, bool, Fingerprint)> = r
            .into_writes()
            .into_iter()
            .map(|w| {
                (
                    w.record.franchise_id.to_string(),
                    w.record.event_id.to_string(),
                    w.insert,
                    w.record.fingerprint,
                )
            })
            .collect();
        assert_eq!(
            writes,
            vec![
                ("f-1".into(), "e-2".into(), true, Fingerprint([2; 16])),
                ("f-2".into(), "e-1".into(), false, Fingerprint([1; 16])),
            ]
        );
    }

    #[test]
    fn many_records_survive_the_table_growing() {
        let mut r = BatchRecords::with_capacity(1);
        for i in 0..1000 {
            r.insert_new(record("f-1", &format!("e-{i}")));
        }
        let f = FranchiseId::parse("f-1").unwrap();
        for i in 0..1000 {
            let e = EventId::parse(&format!("e-{i}")).unwrap();
            assert_eq!(r.get(&f, &e).unwrap().event_id, e);
        }
        assert_eq!(r.into_writes().len(), 1000);
    }
}
