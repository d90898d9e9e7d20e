//! Consumer groups: membership, eager rebalancing, fenced durable offsets, and the consumer.
//!
//! The protocol is Kafka's classic eager one. On every join or leave, each member that holds
//! partitions is sent [`ConsumerEvent::Revoked`] for all of them; the group waits until every
//! such member has sent `done` (or has left), and only then computes the new assignment over the
//! members present at that moment and sends each one [`ConsumerEvent::Assigned`]. A member owns
//! a partition from the moment the assignment is computed until its `done` for that partition
//! arrives (or it leaves); commits from anyone else fail with `Error::Conflict`, which fences a
//! zombie that kept running after it lost the partition.
//!
//! The wait for `done` runs on a short-lived thread of its own (with a private current-thread
//! runtime), so a rebalance completes whatever runtime the members run on, and even while none
//! of them is polling.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use loyalty_core::ports::{ConsumerEvent, LogConsumer, Offset, Partition, Record};
use loyalty_core::{Error, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify};

use super::partition::Topic;
use super::{io_error, write_atomically};

/// What the group sends a member, delivered by `next` in order.
enum Pending {
    Assigned(Vec<Partition>),
    Revoked {
        partitions: Vec<Partition>,
        done: oneshot::Sender<()>,
    },
}

/// A member as the group sees it.
struct Member {
    id: u64,
    inbox: Mutex<Inbox>,
    /// Woken when an event is queued for the member or it is closed.
    wake: Notify,
    /// Set to `true` when the member leaves; a rebalance waiting for its `done` stops waiting.
    gone: watch::Sender<bool>,
}

/// A member's private state: its undelivered events and its read positions.
#[derive(Default)]
struct Inbox {
    events: VecDeque<Pending>,
    /// Assigned partitions (as delivered) and the next offset to read of each.
    positions: Vec<(Partition, Offset)>,
    /// Round-robin cursor over `positions`, so no partition is starved.
    cursor: usize,
    /// Partitions the consumer paused: not read until resumed or assigned again.
    paused: std::collections::BTreeSet<Partition>,
    closed: bool,
}

impl Member {
    fn push(&self, event: Pending) {
        self.inbox.lock().events.push_back(event);
        self.wake.notify_one();
    }
}

/// Membership and ownership of a group.
struct GroupState {
    /// Live members in join order (the assignment order).
    members: Vec<Arc<Member>>,
    /// The member owning each partition, if any.
    owners: Vec<Option<u64>>,
    /// A rebalance is waiting for `done`s; joins and leaves meanwhile are folded into it.
    rebalancing: bool,
    next_member: u64,
    generation: u64,
}

/// The group's offsets: the latest accepted and the latest durable.
#[derive(Default)]
struct Offsets {
    requested: BTreeMap<Partition, Offset>,
    requested_gen: u64,
    durable: BTreeMap<Partition, Offset>,
    durable_gen: u64,
}

/// The offsets file (JSON, written atomically).
#[derive(Serialize, Deserialize, Default)]
struct OffsetsFile {
    offsets: BTreeMap<Partition, Offset>,
}

/// One consumer group on one topic.
pub(crate) struct Group {
    name: String,
    topic: Arc<Topic>,
    path: PathBuf,
    poll_interval: Duration,
    max_read_bytes: usize,
    state: Mutex<GroupState>,
    offsets: Mutex<Offsets>,
    /// Serialises writes of the offsets file (held on a blocking thread only).
    io: Mutex<()>,
}

/// Where the offsets of `group` on `topic` live.
pub(crate) fn offsets_path(topic_dir: &std::path::Path, group: &str) -> PathBuf {
    topic_dir
        .join("groups")
        .join(format!("{group}.offsets.json"))
}

impl Group {
    /// Loads (blocking) the group's durable offsets and makes an empty group.
    pub fn load(
        name: &str,
        topic: Arc<Topic>,
        poll_interval: Duration,
        max_read_bytes: usize,
    ) -> Result<Group> {
        let path = offsets_path(&topic.dir, name);
        let file: OffsetsFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("offsets file {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OffsetsFile::default(),
            Err(e) => return Err(io_error(&format!("reading {}", path.display()), e)),
        };
        let partitions = topic.partitions.len();
        let offsets: BTreeMap<Partition, Offset> = file
            .offsets
            .into_iter()
            .filter(|(p, _)| (*p as usize) < partitions)
            .collect();
        Ok(Group {
            name: name.to_string(),
            topic,
            path,
            poll_interval,
            max_read_bytes,
            state: Mutex::new(GroupState {
                members: Vec::new(),
                owners: vec![None; partitions],
                rebalancing: false,
                next_member: 0,
                generation: 0,
            }),
            offsets: Mutex::new(Offsets {
                requested: offsets.clone(),
                durable: offsets,
                ..Offsets::default()
            }),
            io: Mutex::new(()),
        })
    }

    /// Adds a member and starts a rebalance.
    pub fn join(self: &Arc<Self>) -> EmbeddedConsumer {
        let member = {
            let mut st = self.state.lock();
            let id = st.next_member;
            st.next_member += 1;
            let member = Arc::new(Member {
                id,
                inbox: Mutex::new(Inbox::default()),
                wake: Notify::new(),
                gone: watch::channel(false).0,
            });
            st.members.push(member.clone());
            member
        };
        tracing::debug!(
            group = self.name,
            topic = self.topic.name,
            member = member.id,
            "member joined"
        );
        self.rebalance();
        EmbeddedConsumer {
            group: self.clone(),
            member,
        }
    }

    /// Removes a member (idempotent): releases its partitions, drops its undelivered events
    /// (a pending `done` among them counts as sent) and rebalances the others.
    fn leave(self: &Arc<Self>, member: &Arc<Member>) {
        {
            let mut st = self.state.lock();
            let Some(i) = st.members.iter().position(|m| m.id == member.id) else {
                return;
            };
            st.members.remove(i);
            for owner in st.owners.iter_mut() {
                if *owner == Some(member.id) {
                    *owner = None;
                }
            }
            let mut inbox = member.inbox.lock();
            inbox.closed = true;
            inbox.events.clear();
            inbox.positions.clear();
        }
        member.gone.send_replace(true);
        member.wake.notify_one();
        tracing::debug!(
            group = self.name,
            topic = self.topic.name,
            member = member.id,
            "member left"
        );
        self.rebalance();
    }

    /// Starts a rebalance unless one is running (which will then account for the change).
    fn rebalance(self: &Arc<Self>) {
        let mut waits = Vec::new();
        {
            let mut st = self.state.lock();
            if st.rebalancing {
                return;
            }
            st.rebalancing = true;
            for member in &st.members {
                let held: Vec<Partition> = st
                    .owners
                    .iter()
                    .enumerate()
                    .filter(|(_, owner)| **owner == Some(member.id))
                    .map(|(p, _)| p as Partition)
                    .collect();
                if held.is_empty() {
                    continue;
                }
                let (done, rx) = oneshot::channel();
                member.push(Pending::Revoked {
                    partitions: held,
                    done,
                });
                waits.push((member.id, rx, member.gone.subscribe()));
            }
            if waits.is_empty() {
                self.assign(&mut st);
                return;
            }
        }
        let group = self.clone();
        let spawned = std::thread::Builder::new()
            .name("embedded-log-rebalance".into())
            .spawn(move || group.await_revocations(waits));
        if let Err(e) = spawned {
            // Without a thread the `done`s cannot be awaited; rather than wedge the group,
            // release the partitions now (at-least-once still holds through the offsets).
            tracing::error!(group = self.name, "cannot start a rebalance thread: {e}");
            let mut st = self.state.lock();
            st.owners.iter_mut().for_each(|o| *o = None);
            self.assign(&mut st);
        }
    }

    /// Waits (on the rebalance thread) for each revoking member's `done` or departure, releasing
    /// its partitions as it comes, then hands out the new assignment.
    fn await_revocations(
        self: Arc<Self>,
        waits: Vec<(u64, oneshot::Receiver<()>, watch::Receiver<bool>)>,
    ) {
        let wait_all = async {
            for (id, done, mut gone) in waits {
                tokio::select! {
                    _ = done => {}
                    _ = gone.wait_for(|g| *g) => {}
                }
                let mut st = self.state.lock();
                for owner in st.owners.iter_mut() {
                    if *owner == Some(id) {
                        *owner = None;
                    }
                }
            }
        };
        match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt.block_on(wait_all),
            Err(e) => tracing::error!(group = self.name, "cannot build a rebalance runtime: {e}"),
        }
        let mut st = self.state.lock();
        st.owners.iter_mut().for_each(|o| *o = None);
        self.assign(&mut st);
    }

    /// Computes and sends the assignment over the current members: partition `p` goes to the
    /// member at `p % members` in join order. Every member gets an `Assigned` (maybe empty).
    fn assign(&self, st: &mut GroupState) {
        st.rebalancing = false;
        st.generation += 1;
        let n = st.members.len();
        if n == 0 {
            return;
        }
        let mut lists = vec![Vec::new(); n];
        for p in 0..st.owners.len() {
            lists[p % n].push(p as Partition);
            st.owners[p] = Some(st.members[p % n].id);
        }
        for (member, list) in st.members.iter().zip(lists) {
            member.push(Pending::Assigned(list));
        }
        tracing::debug!(
            group = self.name,
            topic = self.topic.name,
            generation = st.generation,
            members = n,
            "assigned partitions"
        );
    }

    fn durable_committed(&self, partition: Partition) -> Option<Offset> {
        self.offsets.lock().durable.get(&partition).copied()
    }

    /// Writes the offsets file if generation `wanted` is not durable yet (blocking). Whoever
    /// holds the file lock writes everything accepted so far, so concurrent commits share one
    /// write.
    fn flush_offsets(&self, wanted: u64) -> Result<()> {
        let _io = self.io.lock();
        let (snapshot, generation) = {
            let offsets = self.offsets.lock();
            if offsets.durable_gen >= wanted {
                return Ok(());
            }
            (offsets.requested.clone(), offsets.requested_gen)
        };
        let json = serde_json::to_vec(&OffsetsFile {
            offsets: snapshot.clone(),
        })
        .map_err(|e| Error::Corrupt(format!("encoding offsets: {e}")))?;
        write_atomically(&self.path, &json)?;
        let mut offsets = self.offsets.lock();
        offsets.durable = snapshot;
        offsets.durable_gen = generation;
        Ok(())
    }
}

/// A member of an embedded consumer group. Dropping it leaves the group.
pub struct EmbeddedConsumer {
    group: Arc<Group>,
    member: Arc<Member>,
}

impl std::fmt::Debug for EmbeddedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedConsumer")
            .field("group", &self.group.name)
            .field("topic", &self.group.topic.name)
            .field("member", &self.member.id)
            .finish()
    }
}

impl EmbeddedConsumer {
    /// Delivers the next queued group event, updating the read positions it changes.
    fn take_event(&self) -> Result<Option<ConsumerEvent>> {
        let mut inbox = self.member.inbox.lock();
        if inbox.closed {
            return Err(Error::ShuttingDown);
        }
        let Some(event) = inbox.events.pop_front() else {
            return Ok(None);
        };
        Ok(Some(match event {
            Pending::Assigned(partitions) => {
                inbox.positions = partitions
                    .iter()
                    .map(|&p| (p, self.start_offset(p)))
                    .collect();
                inbox.cursor = 0;
                inbox.paused.clear();
                ConsumerEvent::Assigned(partitions)
            }
            Pending::Revoked { partitions, done } => {
                inbox.positions.retain(|(p, _)| !partitions.contains(p));
                inbox.paused.retain(|p| !partitions.contains(p));
                ConsumerEvent::Revoked { partitions, done }
            }
        }))
    }

    /// Where reading of a newly assigned partition starts: the committed offset, or 0.
    fn start_offset(&self, partition: Partition) -> Offset {
        let committed = self.group.durable_committed(partition).unwrap_or(0);
        let end = self
            .group
            .topic
            .partitions
            .get(partition as usize)
            .map_or(0, |p| p.end_offset());
        if committed > end {
            tracing::warn!(
                group = self.group.name,
                partition,
                committed,
                end,
                "committed offset is past the end of the partition; reading from the end"
            );
            return end;
        }
        committed
    }

    /// Reads up to `max` records from the assigned partitions: a first round gives each
    /// partition an equal share (starting from a rotating partition), a second round hands the
    /// unused share to whoever has more.
    fn poll_records(&self, max: usize) -> Result<Vec<Record>> {
        let (mut positions, start) = {
            let mut inbox = self.member.inbox.lock();
            if inbox.positions.is_empty() {
                return Ok(Vec::new());
            }
            let start = inbox.cursor % inbox.positions.len();
            inbox.cursor = inbox.cursor.wrapping_add(1);
            let readable: Vec<(Partition, Offset)> = inbox
                .positions
                .iter()
                .filter(|(p, _)| !inbox.paused.contains(p))
                .copied()
                .collect();
            if readable.is_empty() {
                return Ok(Vec::new());
            }
            let start = start % readable.len();
            (readable, start)
        };
        let n = positions.len();
        let share = (max / n).max(1);
        let mut out = Vec::new();
        let mut budget = self.group.max_read_bytes;
        for round in 0..2 {
            for i in 0..n {
                let remaining = max - out.len();
                if remaining == 0 || budget == 0 {
                    break;
                }
                let (p, pos) = &mut positions[(start + i) % n];
                let want = if round == 0 {
                    share.min(remaining)
                } else {
                    remaining
                };
                let (records, bytes) = self.group.topic.partition(*p)?.read(*pos, want, budget)?;
                budget = budget.saturating_sub(bytes);
                *pos += records.len() as Offset;
                out.extend(records);
            }
        }
        let mut inbox = self.member.inbox.lock();
        // Only partitions still assigned (no event was delivered meanwhile: `next` is the only
        // one delivering) move on.
        for (p, pos) in positions {
            if let Some(slot) = inbox.positions.iter_mut().find(|(q, _)| *q == p) {
                slot.1 = pos;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    /// Returns the oldest undelivered group event if there is one; otherwise up to
    /// `max_records` records of the assigned partitions (shared fairly between them), waiting
    /// up to [`super::LogConfig::poll_interval`] for an append or a group event before
    /// returning an empty `Records`. Fails with `ShuttingDown` once the member has left.
    async fn next(&self, max_records: usize) -> Result<ConsumerEvent> {
        let deadline = tokio::time::Instant::now() + self.group.poll_interval;
        let max = max_records.max(1);
        loop {
            // Subscribe before looking, so an append landing in between still wakes us.
            let mut changes = self.group.topic.changes.subscribe();
            if let Some(event) = self.take_event()? {
                return Ok(event);
            }
            let records = self.poll_records(max)?;
            if !records.is_empty() {
                return Ok(ConsumerEvent::Records(records));
            }
            tokio::select! {
                Ok(()) = changes.changed() => {}
                _ = self.member.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(ConsumerEvent::Records(Vec::new()));
                }
            }
        }
    }

    /// Durably records `next_offset` for `partition` (the offsets file is rewritten atomically;
    /// concurrent commits of the group share one write). Fails with `Conflict("partition not
    /// owned")` unless this member owns the partition (it still does while its `Revoked` is
    /// pending, until it sends `done`), with `Invalid` past the end of the partition; a lower
    /// offset than the committed one is a no-op.
    async fn commit(&self, partition: Partition, next_offset: Offset) -> Result<()> {
        let end = self.group.topic.partition(partition)?.end_offset();
        if next_offset > end {
            return Err(Error::Invalid(format!(
                "cannot commit offset {next_offset} of partition {partition}: its end is {end}"
            )));
        }
        let wanted = {
            let st = self.group.state.lock();
            if st.owners.get(partition as usize).copied().flatten() != Some(self.member.id) {
                return Err(Error::Conflict("partition not owned".into()));
            }
            let mut offsets = self.group.offsets.lock();
            let current = offsets.requested.get(&partition).copied();
            if current.is_none_or(|c| next_offset > c) {
                offsets.requested.insert(partition, next_offset);
                offsets.requested_gen += 1;
            }
            // Wait for whatever is accepted now (ours, or a higher offset already accepted).
            offsets.requested_gen
        };
        let group = self.group.clone();
        tokio::task::spawn_blocking(move || group.flush_offsets(wanted))
            .await
            .map_err(|e| Error::Unavailable(format!("offset commit task failed: {e}")))?
    }

    /// The group's durable committed offset of `partition`.
    async fn committed(&self, partition: Partition) -> Result<Option<Offset>> {
        self.group.topic.partition(partition)?;
        Ok(self.group.durable_committed(partition))
    }

    /// Paused partitions are skipped by `next` (nothing of them is read ahead).
    async fn pause(&self, partitions: &[Partition]) -> Result<()> {
        let mut inbox = self.member.inbox.lock();
        let owned: Vec<Partition> = inbox.positions.iter().map(|(p, _)| *p).collect();
        inbox
            .paused
            .extend(partitions.iter().filter(|p| owned.contains(p)));
        Ok(())
    }

    async fn resume(&self, partitions: &[Partition]) -> Result<()> {
        let mut inbox = self.member.inbox.lock();
        inbox.paused.retain(|p| !partitions.contains(p));
        drop(inbox);
        self.member.wake.notify_one();
        Ok(())
    }

    /// Leaves the group at once: the member's partitions are released (its later commits are
    /// fenced) and the other members rebalance. The caller finishes and commits its work
    /// before closing; no `Revoked` is delivered to a member that closes itself.
    async fn close(&self) -> Result<()> {
        self.group.leave(&self.member);
        Ok(())
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.group.leave(&self.member);
    }
}
