//! The consumer: a group member with a dedicated poll thread.
//!
//! ```text
//!  poll thread (BaseConsumer::poll, always)          engine task (LogConsumer::next)
//!    rebalance callback ── events (unbounded) ─────▶  Assigned / Revoked{done}
//!      └ on revoke: blocks until `done` / timeout
//!    messages ─────────── records (bounded) ──────▶  Records
//!      └ buffer full: pause the partitions, keep polling
//!  any task: commit() ── rd_kafka_commit (sync) on the shared BaseConsumer, fenced by `owned`
//! ```
//!
//! Every event and record carries the *generation* of the assignment it belongs to (bumped at
//! each revocation and assignment). `next` drops records of a generation older than the last
//! group event it delivered: records fetched before a revocation but not yet delivered are
//! never handed out (they were not committed, so the new owner reads them again).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use loyalty_core::ports::{ConsumerEvent, LogConsumer, Offset, Partition, Record};
use loyalty_core::{Error, Result};
use parking_lot::{Mutex, RwLock};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, oneshot};

use crate::{blocking, kafka_partition, unavailable, KafkaConfig};

/// A group event as the poll thread sends it.
struct Event {
    generation: u64,
    kind: EventKind,
}

enum EventKind {
    Assigned(Vec<Partition>),
    Revoked {
        partitions: Vec<Partition>,
        done: oneshot::Sender<()>,
    },
}

/// A fetched record and the generation of the assignment it was fetched under.
struct Tagged {
    generation: u64,
    record: Record,
}

/// State shared by the poll thread (and its rebalance callbacks) and the consumer's methods.
struct Shared {
    topic: String,
    /// Set by `close` and `Drop`: the poll thread stops, revocations stop waiting.
    closing: AtomicBool,
    generation: AtomicU64,
    /// The partitions this member owns: from their assignment until the engine's `done` for
    /// them (or the revocation timeout). Commits hold the read lock while they run, so once a
    /// revocation took the write lock no commit of the revoked partitions is in flight.
    owned: RwLock<BTreeSet<Partition>>,
    /// The highest offset this member committed per owned partition (a lower one is a no-op).
    committed: Mutex<HashMap<Partition, Offset>>,
    /// Partitions the engine paused ([`LogConsumer::pause`]); the poll thread applies changes
    /// when `pauses_changed` is set.
    engine_paused: Mutex<BTreeSet<Partition>>,
    pauses_changed: AtomicBool,
    /// The partitions of the topic.
    partitions: u32,
    /// What this member owned before the last revocation, to notice a stale assignment.
    before_revoke: Mutex<Option<BTreeSet<Partition>>>,
    /// See [`KafkaConfig::rejoin_on_stale_assignment`].
    rejoin_after: Option<Duration>,
    /// How long a stale-assignment rejoin stays out of the group before joining again:
    /// [`rejoin_delay`].
    rejoin_delay: Duration,
    last_rejoin: Mutex<Option<Instant>>,
    /// Set by the rebalance callback; the poll thread rejoins.
    rejoin: AtomicBool,
}

impl Shared {
    /// After an assignment: the same partitions as before the revocation, while the topic has
    /// others, means the coordinator may have kept a dead member's assignment; ask the poll
    /// thread to rejoin with a fresh member id (at most once per `rejoin_after`).
    fn check_stale_assignment(&self, assigned: &[Partition]) {
        let Some(every) = self.rejoin_after else {
            return;
        };
        let before = self.before_revoke.lock().take();
        let same = before.is_some_and(|b| b.iter().copied().eq(assigned.iter().copied()));
        if !same || assigned.len() as u32 >= self.partitions || assigned.is_empty() {
            return;
        }
        let mut last = self.last_rejoin.lock();
        if last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
        tracing::info!(
            topic = self.topic,
            partitions = ?assigned,
            rejoin_in = ?self.rejoin_delay,
            "a rebalance gave back exactly what this member had; leaving the group and joining \
             again with a fresh member id so that a crashed member's partitions are reassigned"
        );
        self.rejoin.store(true, Ordering::SeqCst);
    }
}

/// The consumer context: turns librdkafka's rebalance callbacks into group events.
struct GroupContext {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    revoke_timeout: Duration,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    /// On a revocation: tells the engine and blocks the poll thread (hence librdkafka's
    /// unassign and this member's rejoin, hence the whole rebalance) until the engine sent
    /// `done` or dropped it, or `revoke_timeout` passed, or the consumer is closing.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(partitions_of(tpl, &self.shared.topic)),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(topic = self.shared.topic, "rebalance error: {e}")
            }
        }
    }

    /// After an assignment took effect: the partitions are owned and the engine is told.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partitions_of(tpl, &self.shared.topic);
            let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
            {
                let mut owned = self.shared.owned.write();
                owned.clear();
                owned.extend(partitions.iter().copied());
                self.shared.committed.lock().clear();
            }
            self.shared.check_stale_assignment(&partitions);
            tracing::debug!(
                topic = self.shared.topic,
                ?partitions,
                generation,
                "assigned"
            );
            if !self.shared.closing.load(Ordering::SeqCst) {
                let _ = self.events.send(Event {
                    generation,
                    kind: EventKind::Assigned(partitions),
                });
            }
        }
    }
}

impl GroupContext {
    fn revoke(&self, partitions: Vec<Partition>) {
        *self.shared.before_revoke.lock() = Some(self.shared.owned.read().clone());
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::debug!(
            topic = self.shared.topic,
            ?partitions,
            generation,
            "revoking"
        );
        if !partitions.is_empty() && !self.shared.closing.load(Ordering::SeqCst) {
            let (done, mut wait) = oneshot::channel();
            let sent = self.events.send(Event {
                generation,
                kind: EventKind::Revoked {
                    partitions: partitions.clone(),
                    done,
                },
            });
            if sent.is_ok() {
                let started = Instant::now();
                loop {
                    match wait.try_recv() {
                        // `done` sent, or dropped (the engine gave up on it): released.
                        Ok(()) | Err(oneshot::error::TryRecvError::Closed) => break,
                        Err(oneshot::error::TryRecvError::Empty) => {}
                    }
                    if self.shared.closing.load(Ordering::SeqCst) {
                        break;
                    }
                    if started.elapsed() >= self.revoke_timeout {
                        tracing::warn!(
                            topic = self.shared.topic,
                            ?partitions,
                            "the engine did not release revoked partitions within {:?}; \
                             letting them go (its later commits are refused)",
                            self.revoke_timeout
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        let mut owned = self.shared.owned.write();
        let mut committed = self.shared.committed.lock();
        let mut paused = self.shared.engine_paused.lock();
        for p in &partitions {
            owned.remove(p);
            committed.remove(p);
            paused.remove(p);
        }
    }
}

/// Our partitions of `topic` in a partition list, sorted.
fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<Partition> {
    let mut out: Vec<Partition> = tpl
        .elements_for_topic(topic)
        .iter()
        .filter_map(|e| Partition::try_from(e.partition()).ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What `next` reads from, owned by the single task calling it.
struct Inbox {
    events: mpsc::UnboundedReceiver<Event>,
    records: mpsc::Receiver<Tagged>,
    /// A record read ahead (of a newer generation than delivered, or past `max_records`).
    peeked: Option<Tagged>,
    /// The generation of the last group event delivered.
    delivered: u64,
}

/// A member of a Kafka consumer group on one topic, created by
/// `KafkaLog::subscribe` ([`loyalty_core::ports::EventLog::subscribe`]). Dropping it leaves the group (in the background).
///
/// - **Manual commits only** (`enable.auto.commit=false`, `enable.auto.offset.store=false`).
///   Reading a newly assigned partition starts at the group's committed offset, or at the
///   earliest one if there is none (`auto.offset.reset=earliest`).
/// - **Eager rebalancing**: a rebalance revokes everything, then assigns. A revocation is
///   delivered as [`ConsumerEvent::Revoked`] and the poll thread waits for its `done` (at most
///   [`KafkaConfig::revoke_timeout`]) before librdkafka lets the partitions go; the broker
///   completes the rebalance only after that, so no other member reads them before.
/// - **Fenced commits**: a commit of a partition this member does not own (never assigned,
///   or released after `done`) fails with `Conflict("partition not owned")`, and so does one
///   the broker refuses because the member's generation is stale (it was evicted).
/// - **Never silently evicted for being slow**: the poll thread polls whatever the engine's
///   pace; when [`KafkaConfig::buffer_records`] records wait for `next`, it pauses the
///   partitions until there is room.
pub struct KafkaConsumer {
    shared: Arc<Shared>,
    /// The poll thread holds the only strong reference, so the consumer is closed (a blocking
    /// call) on that thread; commits borrow it for their duration.
    consumer: Weak<BaseConsumer<GroupContext>>,
    partitions: u32,
    poll_interval: Duration,
    request_timeout: Duration,
    inbox: tokio::sync::Mutex<Inbox>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.shared.topic)
            .field("owned", &*self.shared.owned.read())
            .finish()
    }
}

impl KafkaConsumer {
    /// Creates the consumer, subscribes it to `topic` and starts its poll thread.
    pub(crate) fn start(
        config: &KafkaConfig,
        group: &str,
        topic: &str,
        partitions: u32,
    ) -> Result<KafkaConsumer> {
        let shared = Arc::new(Shared {
            topic: topic.to_string(),
            closing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            owned: RwLock::new(BTreeSet::new()),
            committed: Mutex::new(HashMap::new()),
            engine_paused: Mutex::new(BTreeSet::new()),
            pauses_changed: AtomicBool::new(false),
            partitions,
            before_revoke: Mutex::new(None),
            rejoin_after: config
                .rejoin_on_stale_assignment
                .filter(|_| config.group_instance_id.is_none()),
            rejoin_delay: rejoin_delay(config),
            last_rejoin: Mutex::new(None),
            rejoin: AtomicBool::new(false),
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let (records_tx, records) = mpsc::channel(config.buffer_records.max(1));
        let context = GroupContext {
            shared: shared.clone(),
            events: events_tx,
            revoke_timeout: config.revoke_timeout,
        };
        let consumer: BaseConsumer<GroupContext> = config
            .consumer_config(group)
            .create_with_context(context)
            .map_err(|e| unavailable("creating a consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| unavailable(&format!("subscribing to {topic}"), e))?;
        let consumer = Arc::new(consumer);
        let weak = Arc::downgrade(&consumer);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-poll-{topic}"))
            .spawn(move || poll_loop(consumer, thread_shared, records_tx))
            .map_err(|e| Error::Unavailable(format!("kafka: cannot start a poll thread: {e}")))?;
        Ok(KafkaConsumer {
            shared,
            consumer: weak,
            partitions,
            poll_interval: config.poll_interval,
            request_timeout: config.request_timeout,
            inbox: tokio::sync::Mutex::new(Inbox {
                events,
                records,
                peeked: None,
                delivered: 0,
            }),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The partitions this member owns right now.
    pub fn owned(&self) -> Vec<Partition> {
        self.shared.owned.read().iter().copied().collect()
    }

    fn check_partition(&self, partition: Partition) -> Result<i32> {
        if partition >= self.partitions {
            return Err(Error::Invalid(format!(
                "topic {} has no partition {partition}",
                self.shared.topic
            )));
        }
        kafka_partition(partition)
    }
}

/// How long a member that leaves because of a stale assignment stays out before joining again:
/// two heartbeats and a second, time for the others to notice the new generation (at their
/// next heartbeat), drain their revocation and rejoin. Rejoining at once would make this member
/// the group's leader on tansu 0.6 (a leave clears a dead leader) and split the partitions
/// between it and the others, and tansu holds every follower's JoinGroup for 3 s
/// (`PAUSE_MS`): the partitions given to a follower would wait those 3 s. Staying out, the
/// first of the others to rejoin leads a group of the live members without it and, with one
/// other member, takes every partition at once; this member's later join rebalances again.
fn rejoin_delay(config: &KafkaConfig) -> Duration {
    config.heartbeat_interval * 2 + Duration::from_secs(1)
}

/// The poll thread: polls all the time, forwards records (pausing the partitions while the
/// buffer is full), and serves the rebalance callbacks. Ends when the consumer is closing or
/// dropped, and then closes the Kafka consumer (leaving the group).
fn poll_loop(
    consumer: Arc<BaseConsumer<GroupContext>>,
    shared: Arc<Shared>,
    records: mpsc::Sender<Tagged>,
) {
    let mut overflow: VecDeque<Tagged> = VecDeque::new();
    // The generation whose assignment is paused, if any.
    let mut paused: Option<u64> = None;
    // Partitions paused in librdkafka at the engine's request, and under which generation.
    let mut engine_paused: BTreeSet<Partition> = BTreeSet::new();
    let mut engine_paused_gen = 0;
    // After a stale-assignment leave: when to subscribe again.
    let mut resubscribe_at: Option<Instant> = None;
    while !shared.closing.load(Ordering::SeqCst) {
        let generation = shared.generation.load(Ordering::SeqCst);
        if paused.is_some_and(|g| g != generation) {
            // A new assignment is not paused.
            paused = None;
        }
        if engine_paused_gen != generation {
            engine_paused.clear();
            engine_paused_gen = generation;
            shared.pauses_changed.store(true, Ordering::SeqCst);
        }
        if shared.pauses_changed.swap(false, Ordering::SeqCst) {
            apply_engine_pauses(&consumer, &shared, paused.is_some(), &mut engine_paused);
        }
        if shared.rejoin.swap(false, Ordering::SeqCst) {
            // Leaving revokes everything (through the engine's drain, in the next polls) and
            // sends LeaveGroup; subscribing again, `rejoin_delay` later, joins as a new member.
            consumer.unsubscribe();
            resubscribe_at = Some(Instant::now() + shared.rejoin_delay);
        }
        if resubscribe_at.is_some_and(|at| Instant::now() >= at) {
            resubscribe_at = None;
            tracing::info!(topic = shared.topic, "joining the group again");
            if let Err(e) = consumer.subscribe(&[shared.topic.as_str()]) {
                tracing::error!(topic = shared.topic, "cannot subscribe again: {e}");
            }
        }
        overflow.retain(|r| r.generation == generation);
        while let Some(tagged) = overflow.pop_front() {
            match records.try_send(tagged) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(tagged)) => {
                    overflow.push_front(tagged);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    shared.closing.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
        // Resume only once half the buffer is free again: every pause and resume costs the
        // fetcher a restart (about 200 ms against tansu), so flapping at the edge of a full
        // buffer would cut the consume rate to a fraction of what the broker gives.
        if overflow.is_empty() {
            if paused.is_some() && records.capacity() * 2 >= records.max_capacity() {
                paused = None;
                set_paused(&consumer, &shared.topic, false, &engine_paused);
            }
        } else if paused.is_none() {
            set_paused(&consumer, &shared.topic, true, &engine_paused);
            paused = Some(generation);
        }
        let timeout = if overflow.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(10)
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(message)) => {
                let generation = shared.generation.load(Ordering::SeqCst);
                match to_record(&message) {
                    Some(record) => overflow.push_back(Tagged { generation, record }),
                    None => tracing::warn!(
                        topic = shared.topic,
                        partition = message.partition(),
                        offset = message.offset(),
                        "skipping a message with an invalid partition or offset"
                    ),
                }
            }
            Some(Err(e)) => {
                tracing::warn!(topic = shared.topic, "kafka consumer: {e}");
            }
        }
    }
    tracing::debug!(topic = shared.topic, "consumer closing");
    shared.owned.write().clear();
    // Dropping the last reference closes the consumer: final revocation (not waited for),
    // LeaveGroup (unless static membership), destroy.
    drop(consumer);
}

/// A partition list of `partitions` of `topic`.
fn partition_list(
    topic: &str,
    partitions: impl IntoIterator<Item = Partition>,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        if let Ok(p) = i32::try_from(p) {
            tpl.add_partition(topic, p);
        }
    }
    tpl
}

/// Pauses in librdkafka what the engine wants paused now and resumes what it no longer does
/// (unless the whole assignment is paused because the buffer is full: the buffer's resume
/// then leaves the engine's pauses alone).
fn apply_engine_pauses(
    consumer: &BaseConsumer<GroupContext>,
    shared: &Shared,
    buffer_paused: bool,
    applied: &mut BTreeSet<Partition>,
) {
    let wanted: BTreeSet<Partition> = {
        let owned = shared.owned.read();
        shared
            .engine_paused
            .lock()
            .iter()
            .filter(|p| owned.contains(p))
            .copied()
            .collect()
    };
    let pause: Vec<Partition> = wanted.difference(applied).copied().collect();
    let resume: Vec<Partition> = applied.difference(&wanted).copied().collect();
    if !pause.is_empty() {
        if let Err(e) = consumer.pause(&partition_list(&shared.topic, pause.iter().copied())) {
            tracing::warn!(topic = shared.topic, ?pause, "cannot pause partitions: {e}");
        }
    }
    if !resume.is_empty() && !buffer_paused {
        if let Err(e) = consumer.resume(&partition_list(&shared.topic, resume.iter().copied())) {
            tracing::warn!(
                topic = shared.topic,
                ?resume,
                "cannot resume partitions: {e}"
            );
        }
    }
    tracing::debug!(
        topic = shared.topic,
        ?pause,
        ?resume,
        "engine pauses applied"
    );
    *applied = wanted;
}

/// Pauses or resumes the current assignment (a resume leaves the engine's pauses in place).
fn set_paused(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    pause: bool,
    engine_paused: &BTreeSet<Partition>,
) {
    let result = consumer.assignment().and_then(|tpl| {
        if pause {
            consumer.pause(&tpl)
        } else {
            let keep = partitions_of(&tpl, topic)
                .into_iter()
                .filter(|p| !engine_paused.contains(p));
            consumer.resume(&partition_list(topic, keep))
        }
    });
    match result {
        Ok(()) => tracing::debug!(topic, pause, "buffer full: partitions paused or resumed"),
        Err(e) => tracing::warn!(topic, pause, "cannot pause or resume partitions: {e}"),
    }
}

fn to_record(m: &BorrowedMessage<'_>) -> Option<Record> {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Record {
        partition: Partition::try_from(m.partition()).ok()?,
        offset: Offset::try_from(m.offset()).ok()?,
        key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
    })
}

/// Maps a commit error: a stale generation or member means the partition is not ours anymore.
fn commit_error(e: KafkaError) -> Error {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::FencedInstanceId,
        ) => {
            tracing::warn!("kafka refused a commit: {e}");
            Error::Conflict("partition not owned".into())
        }
        _ => unavailable("committing offsets", e),
    }
}

impl Inbox {
    fn deliver(&mut self, event: Event) -> ConsumerEvent {
        self.delivered = event.generation;
        match event.kind {
            EventKind::Assigned(p) => ConsumerEvent::Assigned(p),
            EventKind::Revoked { partitions, done } => ConsumerEvent::Revoked { partitions, done },
        }
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    /// Returns the oldest undelivered group event if there is one; otherwise up to
    /// `max_records` records (each partition's in offset order), waiting up to
    /// [`KafkaConfig::poll_interval`] before returning an empty `Records`. Fails with
    /// `ShuttingDown` once the consumer is closed.
    async fn next(&self, max_records: usize) -> Result<ConsumerEvent> {
        let deadline = tokio::time::Instant::now() + self.poll_interval;
        let max = max_records.max(1);
        let mut guard = self.inbox.lock().await;
        let inbox = &mut *guard;
        loop {
            if self.shared.closing.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown);
            }
            match inbox.events.try_recv() {
                Ok(event) => return Ok(inbox.deliver(event)),
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(Error::ShuttingDown),
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let first = match inbox.peeked.take() {
                // A record of a newer assignment: its `Assigned` is on its way (sent before any
                // of its records), wait for it.
                Some(t) if t.generation > inbox.delivered => {
                    inbox.peeked = Some(t);
                    tokio::select! {
                        event = inbox.events.recv() => match event {
                            Some(event) => return Ok(inbox.deliver(event)),
                            None => return Err(Error::ShuttingDown),
                        },
                        _ = tokio::time::sleep_until(deadline) => {
                            return Ok(ConsumerEvent::Records(Vec::new()));
                        }
                    }
                }
                Some(t) => t,
                None => tokio::select! {
                    biased;
                    event = inbox.events.recv() => match event {
                        Some(event) => return Ok(inbox.deliver(event)),
                        None => return Err(Error::ShuttingDown),
                    },
                    record = inbox.records.recv() => match record {
                        Some(t) => t,
                        None => return Err(Error::ShuttingDown),
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        return Ok(ConsumerEvent::Records(Vec::new()));
                    }
                },
            };
            if first.generation < inbox.delivered {
                continue; // fetched before a revocation: dropped, the new owner reads it again
            }
            if first.generation > inbox.delivered {
                inbox.peeked = Some(first);
                continue;
            }
            let generation = first.generation;
            let mut out = vec![first.record];
            while out.len() < max {
                match inbox.records.try_recv() {
                    Ok(t) if t.generation == generation => out.push(t.record),
                    Ok(t) if t.generation < generation => {}
                    Ok(t) => {
                        inbox.peeked = Some(t);
                        break;
                    }
                    Err(_) => break,
                }
            }
            return Ok(ConsumerEvent::Records(out));
        }
    }

    /// Commits `next_offset` for `partition` synchronously (the broker has it on return).
    /// `Conflict("partition not owned")` unless this member owns the partition (it still does
    /// while its `Revoked` is pending, until it sends `done`) or when the broker refuses the
    /// member's generation; `Invalid` for a partition the topic does not have; a lower offset
    /// than one this member already committed in the current assignment is a no-op. Unlike the
    /// embedded log, an offset past the end of the partition is not checked (Kafka accepts it).
    async fn commit(&self, partition: Partition, next_offset: Offset) -> Result<()> {
        let p = self.check_partition(partition)?;
        let offset = i64::try_from(next_offset)
            .map_err(|_| Error::Invalid(format!("offset {next_offset} out of range")))?;
        let (shared, weak) = (self.shared.clone(), self.consumer.clone());
        blocking(move || {
            let Some(consumer) = weak.upgrade() else {
                return Err(Error::Conflict("partition not owned".into()));
            };
            let result = (|| {
                let owned = shared.owned.read();
                if shared.closing.load(Ordering::SeqCst) || !owned.contains(&partition) {
                    return Err(Error::Conflict("partition not owned".into()));
                }
                if shared
                    .committed
                    .lock()
                    .get(&partition)
                    .is_some_and(|c| next_offset <= *c)
                {
                    return Ok(());
                }
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&shared.topic, p, KafkaOffset::Offset(offset))
                    .map_err(|e| unavailable("building a commit", e))?;
                consumer
                    .commit(&tpl, CommitMode::Sync)
                    .map_err(commit_error)?;
                shared.committed.lock().insert(partition, next_offset);
                Ok(())
            })();
            // The read lock is released before the consumer reference: if it is the last one,
            // dropping it runs a final revocation, which takes the write lock.
            drop(consumer);
            result
        })
        .await
    }

    /// The group's committed offset of `partition`, from the broker.
    async fn committed(&self, partition: Partition) -> Result<Option<Offset>> {
        let p = self.check_partition(partition)?;
        let (shared, weak, timeout) = (
            self.shared.clone(),
            self.consumer.clone(),
            self.request_timeout,
        );
        blocking(move || {
            let Some(consumer) = weak.upgrade() else {
                return Err(Error::ShuttingDown);
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&shared.topic, p);
            let result = consumer
                .committed_offsets(tpl, timeout)
                .map_err(|e| unavailable("reading committed offsets", e))
                .map(|tpl| {
                    tpl.find_partition(&shared.topic, p)
                        .and_then(|e| match e.offset() {
                            KafkaOffset::Offset(o) => Offset::try_from(o).ok(),
                            _ => None,
                        })
                });
            drop(consumer);
            result
        })
        .await
    }

    /// Applied by the poll thread within one poll; records already fetched still come.
    async fn pause(&self, partitions: &[Partition]) -> Result<()> {
        self.shared
            .engine_paused
            .lock()
            .extend(partitions.iter().copied());
        self.shared.pauses_changed.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn resume(&self, partitions: &[Partition]) -> Result<()> {
        self.shared
            .engine_paused
            .lock()
            .retain(|p| !partitions.contains(p));
        self.shared.pauses_changed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Leaves the group: the poll thread stops and closes the Kafka consumer (a LeaveGroup, so
    /// the others rebalance at once, unless static membership is on: then only after
    /// `session_timeout`). No `Revoked` is delivered to a consumer that closes itself: the
    /// caller finishes and commits its work first. Waits for the poll thread (bounded).
    async fn close(&self) -> Result<()> {
        self.shared.closing.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let limit = self.request_timeout + Duration::from_secs(5);
            let joined = tokio::time::timeout(
                limit,
                tokio::task::spawn_blocking(move || thread.join().is_ok()),
            )
            .await;
            match joined {
                Ok(Ok(true)) => {}
                Ok(_) => tracing::error!(topic = self.shared.topic, "the poll thread panicked"),
                Err(_) => tracing::warn!(
                    topic = self.shared.topic,
                    "the consumer did not close within {limit:?}"
                ),
            }
        }
        self.shared.owned.write().clear();
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // The poll thread notices within one poll and closes the consumer on its own thread.
        self.shared.closing.store(true, Ordering::SeqCst);
    }
}
