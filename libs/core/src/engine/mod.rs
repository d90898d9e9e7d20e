//! The engine: consumes POS commands from the event log as a member of one consumer group,
//! hosts one [`shard::Shard`] per partition it owns and one actor per active member, and makes
//! effects durable before it commits offsets.
//!
//! Ownership follows the log's group protocol: on `Assigned` a shard is created (its actors are
//! activated lazily, rehydrated from the store); on `Revoked` the engine has no batch in flight
//! (batches are written to the store before the next poll), checkpoints, stops the shard's
//! actors, and only then acknowledges, so the next owner starts from a committed, durable point.
//!
//! Offsets are committed in the background by checkpoints ([`Checkpoints`]), off the path of
//! the next batch, at most once per [`EngineConfig::checkpoint_every`]: each round first makes
//! the store durable up to the batches it covers ([`StateStore::sync`]), then commits their offsets. A batch's
//! effects are visible (cache, replies) as soon as the store has them; a crash before the next
//! round rolls the store back to its last sync and the log delivers the records again, which
//! the engine applies again to the same effects, or finds recorded and treats as replays.

pub mod member;
pub mod shard;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use tokio::sync::watch;

use crate::metrics::metrics;
use crate::ports::{ConsumerEvent, EventLog, HotCache, LogConsumer, Partition, Record, StateStore};
use crate::programs::ProgramCache;
use crate::replies::ReplySink;
use crate::{Error, Result};
use shard::{BatchOutcome, Shard, ShardDeps};

/// Settings of an engine node.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Topic of POS commands.
    pub topic: String,
    /// Where undecodable or invalid records go, with the reason in a header.
    pub dead_letter_topic: String,
    /// The consumer group of engine nodes.
    pub group: String,
    /// Most records taken in one poll.
    pub max_batch: usize,
    /// A member actor idle for this long is stopped.
    pub passivate_after: Duration,
    /// Least time between two checkpoints (store sync, then offset commits): what a crash can
    /// make the log deliver again, against one fsync of the store per round.
    pub checkpoint_every: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            topic: "pos-commands".into(),
            dead_letter_topic: "pos-commands-dlq".into(),
            group: "loyalty-engine".into(),
            max_batch: 2048,
            passivate_after: Duration::from_secs(300),
            checkpoint_every: Duration::from_millis(10),
        }
    }
}

/// Everything an engine node runs with.
pub struct Engine {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn StateStore>,
    pub cache: Arc<dyn HotCache>,
    pub programs: Arc<ProgramCache>,
    pub replies: Arc<dyn ReplySink>,
    pub config: EngineConfig,
    /// Turned on once the engine has joined its consumer group (served by `/readyz`).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Engine {
    /// Runs until `shutdown` turns true. Must run inside an actix system (member actors are
    /// actix actors on the current arbiter).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let consumer: Arc<dyn LogConsumer> = Arc::from(
            self.log
                .subscribe(&self.config.group, &self.config.topic)
                .await?,
        );
        let mut checkpoints = Checkpoints::new(
            Arc::clone(&consumer),
            Arc::clone(&self.store),
            self.config.checkpoint_every,
        );
        let mut shards: BTreeMap<Partition, Shard> = BTreeMap::new();
        let mut last_sweep = Instant::now();
        let sweep_every = (self.config.passivate_after / 4).max(Duration::from_millis(50));
        tracing::info!(topic = %self.config.topic, group = %self.config.group, "engine started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.changed() => continue,
                () = checkpoints.in_flight_done() => {
                    checkpoints.start();
                    continue;
                }
                ev = consumer.next(self.config.max_batch) => ev,
            };
            match event {
                Ok(ConsumerEvent::Assigned(ps)) => {
                    tracing::info!(partitions = ?ps, "partitions assigned");
                    self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    for p in ps {
                        shards.entry(p).or_insert_with(|| Shard::new(p));
                    }
                }
                Ok(ConsumerEvent::Revoked { partitions, done }) => {
                    tracing::info!(partitions = ?partitions, "partitions revoked");
                    checkpoints.flush().await;
                    for p in &partitions {
                        if let Some(mut s) = shards.remove(p) {
                            s.stop_all();
                        }
                    }
                    let _ = done.send(());
                }
                Ok(ConsumerEvent::Records(records)) => {
                    if !records.is_empty() {
                        let timer = metrics().engine_batch_seconds.start_timer();
                        self.handle_records(&mut checkpoints, &mut shards, records, &mut shutdown)
                            .await;
                        timer.observe_duration();
                        checkpoints.start();
                    }
                }
                Err(Error::ShuttingDown) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed");
                    tokio::time::sleep(RETRY_MIN).await;
                }
            }
            if last_sweep.elapsed() >= sweep_every {
                last_sweep = Instant::now();
                let mut stopped = 0;
                for s in shards.values_mut() {
                    stopped += s.passivate_idle(self.config.passivate_after);
                }
                if stopped > 0 {
                    tracing::debug!(stopped, "idle member actors passivated");
                }
            }
        }
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        checkpoints.flush().await;
        for s in shards.values_mut() {
            s.stop_all();
        }
        if let Err(e) = consumer.close().await {
            tracing::warn!(error = %e, "leaving the consumer group");
        }
        tracing::info!("engine stopped");
        Ok(())
    }

    /// Processes one poll's records, partition by partition concurrently, each until the store
    /// has its effects, then queues each partition's offset for the next checkpoint.
    async fn handle_records(
        &self,
        checkpoints: &mut Checkpoints,
        shards: &mut BTreeMap<Partition, Shard>,
        records: Vec<Record>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let mut by_partition: HashMap<Partition, Vec<Record>> = HashMap::new();
        for r in records {
            by_partition.entry(r.partition).or_default().push(r);
        }
        let deps = ShardDeps {
            store: &self.store,
            programs: &self.programs,
        };
        let work = shards
            .iter_mut()
            .filter_map(|(p, shard)| by_partition.remove(p).map(|recs| (shard, recs)))
            .map(|(shard, recs)| {
                let deps = &deps;
                let shutdown = shutdown.clone();
                async move {
                    let outcome = process_until_stored(shard, deps, &recs, shutdown).await;
                    (shard.partition, recs, outcome)
                }
            });
        let results = join_all(work).await;
        for (partition, recs, outcome) in results {
            let Some(outcome) = outcome else { continue };
            self.publish(outcome).await;
            if let Some(last) = recs.last() {
                checkpoints.queue(partition, last.offset + 1);
            }
        }
        if !by_partition.is_empty() {
            tracing::warn!(partitions = ?by_partition.keys().collect::<Vec<_>>(), "records for partitions not owned");
        }
    }

    /// After the store has a batch's effects: dead letters, the hot cache, the waiting gateways.
    async fn publish(&self, outcome: BatchOutcome) {
        for dl in outcome.dead_letters {
            metrics().dead_letters.with_label_values(&[dl.reason]).inc();
            tracing::warn!(
                partition = dl.record.partition,
                offset = dl.record.offset,
                reason = dl.reason,
                "dead letter"
            );
            let mut headers = dl.record.headers.clone();
            headers.push((
                "dlq-reason".into(),
                Bytes::from_static(dl.reason.as_bytes()),
            ));
            headers.push(("dlq-detail".into(), Bytes::from(dl.detail)));
            headers.push((
                "dlq-source".into(),
                Bytes::from(format!(
                    "{}/{}/{}",
                    self.config.topic, dl.record.partition, dl.record.offset
                )),
            ));
            loop {
                match self
                    .log
                    .append(
                        &self.config.dead_letter_topic,
                        &dl.record.key,
                        dl.record.payload.clone(),
                        headers.clone(),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(Error::ShuttingDown) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "dead-letter append failed; retrying");
                        tokio::time::sleep(RETRY_MIN).await;
                    }
                }
            }
        }
        if !outcome.statuses.is_empty() {
            if let Err(e) = self.cache.put_statuses(outcome.statuses).await {
                // The cache is only a cache: readers fall back to the store.
                tracing::warn!(error = %e, "hot cache update failed");
            }
        }
        self.replies.publish(outcome.replies);
    }
}

/// Retries a batch until the store has its effects (or the engine shuts down: `None`).
async fn process_until_stored(
    shard: &mut Shard,
    deps: &ShardDeps<'_>,
    records: &[Record],
    shutdown: watch::Receiver<bool>,
) -> Option<BatchOutcome> {
    let mut delay = RETRY_MIN;
    loop {
        match shard.process(deps, records).await {
            Ok(outcome) => return Some(outcome),
            Err(e) => {
                tracing::warn!(partition = shard.partition, error = %e, "batch not written; retrying from the store");
                if *shutdown.borrow() {
                    return None;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Checkpoints in the background: at most one round in flight, each round making the store
/// durable and then committing the latest queued offset of every partition, so a committed
/// offset never runs ahead of the store's durable state nor goes backwards, and neither the
/// fsync nor the commit (a broker round trip) holds up the next batch.
struct Checkpoints {
    consumer: Arc<dyn LogConsumer>,
    store: Arc<dyn StateStore>,
    every: Duration,
    pending: BTreeMap<Partition, u64>,
    in_flight: Option<tokio::task::JoinHandle<()>>,
    last_round: Option<tokio::time::Instant>,
}

impl Checkpoints {
    fn new(
        consumer: Arc<dyn LogConsumer>,
        store: Arc<dyn StateStore>,
        every: Duration,
    ) -> Checkpoints {
        Checkpoints {
            consumer,
            store,
            every,
            pending: BTreeMap::new(),
            in_flight: None,
            last_round: None,
        }
    }

    /// `next` is the offset after the last record of `partition` whose effects the store has.
    fn queue(&mut self, partition: Partition, next: u64) {
        let e = self.pending.entry(partition).or_insert(next);
        *e = (*e).max(next);
    }

    /// Starts a round with what is queued, unless one is in flight; it waits until
    /// `checkpoint_every` after the previous round's start.
    fn start(&mut self) {
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) || self.pending.is_empty() {
            return;
        }
        let not_before = self.last_round.map(|t| t + self.every);
        let now = tokio::time::Instant::now();
        self.last_round = Some(not_before.map_or(now, |t| t.max(now)));
        let commits = std::mem::take(&mut self.pending);
        let (consumer, store) = (Arc::clone(&self.consumer), Arc::clone(&self.store));
        self.in_flight = Some(tokio::spawn(async move {
            if let Some(t) = not_before {
                tokio::time::sleep_until(t).await;
            }
            checkpoint(consumer.as_ref(), store.as_ref(), commits).await;
        }));
    }

    /// Resolves when the round in flight has finished (never, if none is).
    async fn in_flight_done(&mut self) {
        match self.in_flight.as_mut() {
            Some(h) => {
                let _ = h.await;
                self.in_flight = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Checkpoints everything queued now and waits for it (before partitions are released).
    async fn flush(&mut self) {
        if let Some(h) = self.in_flight.take() {
            let _ = h.await;
        }
        let commits = std::mem::take(&mut self.pending);
        if !commits.is_empty() {
            checkpoint(self.consumer.as_ref(), self.store.as_ref(), commits).await;
        }
    }
}

/// Makes the store durable, then commits every partition's offset at once (a log can make
/// concurrent commits durable with one write).
async fn checkpoint(
    consumer: &dyn LogConsumer,
    store: &dyn StateStore,
    commits: BTreeMap<Partition, u64>,
) {
    let timer = metrics().checkpoint_seconds.start_timer();
    if let Err(e) = store.sync().await {
        // Not committing is safe: the records are delivered again after a restart.
        tracing::warn!(error = %e, "store sync failed; offsets left uncommitted");
        return;
    }
    let done = join_all(commits.iter().map(|(&p, &next)| consumer.commit(p, next))).await;
    timer.observe_duration();
    for ((partition, _), result) in commits.iter().zip(done) {
        if let Err(e) = result {
            // Redelivery is harmless: the events are recorded as processed.
            tracing::warn!(partition, error = %e, "offset commit failed");
        }
    }
}
