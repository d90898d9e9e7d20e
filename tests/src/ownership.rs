//! Which engine owned which partition when, read from the engines' logs (`partitions assigned
//! partitions=[…]`, `partitions revoked partitions=[…]`, `engine stopped`), to tell a broker
//! that handed a partition to a second engine while the first still held it.
//!
//! tansu 0.6.0 does that: when two engines leave at once, it may complete a rebalance for the
//! member that rejoined first and give it the partitions of one that has not been revoked yet
//! (libs/kafka's docs). Both engines then read the partition; the store's version fence lets
//! one write through and the other finds the events already applied (a replay, not a second
//! effect). A test that allows no replay after a clean handover uses this to tell that broker
//! fault from a handover of ours that did not drain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One change of an engine's assignment.
#[derive(Debug)]
enum Change {
    Assigned(BTreeSet<u32>),
    Revoked(BTreeSet<u32>),
    Stopped,
}

/// A partition handed to `to` at `at` while `from` held it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub partition: u32,
    pub from: String,
    pub to: String,
    pub at: jiff::Timestamp,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} assigned to {} at {} while {} still held it",
            self.partition, self.to, self.at, self.from
        )
    }
}

/// Removes ANSI colour sequences (the engines' text logs are coloured).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn partitions(line: &str) -> Option<BTreeSet<u32>> {
    let list = line.split("partitions=[").nth(1)?.split(']').next()?;
    Some(
        list.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
    )
}

/// The assignment changes of one engine's log, with their times.
fn changes(log: &str) -> Vec<(jiff::Timestamp, Change)> {
    log.lines()
        .map(plain)
        .filter(|l| l.contains("loyalty_core::engine:"))
        .filter_map(|l| {
            let at: jiff::Timestamp = l.split_whitespace().next()?.parse().ok()?;
            let change = if l.contains("partitions assigned") {
                Change::Assigned(partitions(&l)?)
            } else if l.contains("partitions revoked") {
                Change::Revoked(partitions(&l)?)
            } else if l.contains("engine stopped") {
                Change::Stopped
            } else {
                return None;
            };
            Some((at, change))
        })
        .collect()
}

/// Every partition assigned at or after `since` to one engine while another still held it,
/// from `logs`: (engine name, its stderr log file).
pub fn overlaps(logs: &[(String, &Path)], since: jiff::Timestamp) -> Vec<Overlap> {
    let mut all: Vec<(jiff::Timestamp, &str, Change)> = Vec::new();
    for (name, path) in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        all.extend(
            changes(&text)
                .into_iter()
                .map(|(at, c)| (at, name.as_str(), c)),
        );
    }
    all.sort_by_key(|(at, _, _)| *at);
    let mut owner: BTreeMap<u32, &str> = BTreeMap::new();
    let mut found = Vec::new();
    for (at, engine, change) in all {
        match change {
            Change::Assigned(ps) => {
                for p in ps {
                    if let Some(from) = owner.insert(p, engine).filter(|f| *f != engine) {
                        if at >= since {
                            found.push(Overlap {
                                partition: p,
                                from: from.to_string(),
                                to: engine.to_string(),
                                at,
                            });
                        }
                    }
                }
            }
            Change::Revoked(ps) => {
                for p in ps {
                    if owner.get(&p) == Some(&engine) {
                        owner.remove(&p);
                    }
                }
            }
            Change::Stopped => owner.retain(|_, e| *e != engine),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_given_before_its_revocation_is_an_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        std::fs::write(
            &a,
            "\u{1b}[2m2026-12-01T16:15:31.195270Z\u{1b}[0m INFO loyalty_core::engine: partitions assigned partitions=[4, 5]\n\
             2026-12-01T16:15:37.007424Z INFO loyalty_core::engine: engine stopped\n",
        )
        .unwrap();
        std::fs::write(
            &b,
            "2026-12-01T16:15:31.414402Z INFO loyalty_core::engine: partitions assigned partitions=[0, 1]\n\
             2026-12-01T16:15:36.432784Z INFO loyalty_core::engine: partitions revoked partitions=[0, 1]\n\
             2026-12-01T16:15:36.450334Z INFO loyalty_core::engine: partitions assigned partitions=[0, 1, 4]\n\
             2026-12-01T16:15:37.461380Z INFO loyalty_core::engine: partitions assigned partitions=[5]\n",
        )
        .unwrap();
        let logs = [
            ("a".to_string(), a.as_path()),
            ("b".to_string(), b.as_path()),
        ];
        let since: jiff::Timestamp = "2026-12-01T16:15:00Z".parse().unwrap();
        let found = overlaps(&logs, since);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].partition, found[0].from.as_str()), (4, "a"));
        let later: jiff::Timestamp = "2026-12-01T16:15:40Z".parse().unwrap();
        assert!(overlaps(&logs, later).is_empty());
    }
}
