//! The engine: consumes POS commands from the event log as a member of one consumer group,
//! hosts one partition worker per partition it owns ([`worker`], each with its
//! [`shard::Shard`] of member actors), and makes effects durable before it commits offsets.
//!
//! ```text
//!  engine task (dispatcher)                      worker threads (actix arbiters)
//!   consumer.next ─ records by partition ─▶ lane ─▶ worker p: shard p, batch after batch
//!        ▲   pause/resume a lane's partition  ◀── Progress::Stored{next} / Stopped
//!        └ checkpoints: store sync, then offsets of what the workers reported
//! ```
//!
//! Ownership follows the log's group protocol: on `Assigned` a worker is started per partition
//! on one of [`EngineConfig::workers`] threads (partition `p` on thread `p % workers`), so
//! shards use every core while each partition (hence each member) is applied by one task in
//! log order; its actors are activated lazily, rehydrated from the store. On `Revoked` the
//! engine tells the partition's worker to stop, waits for the batch it has in flight to be
//! stored and published, checkpoints, and only then acknowledges, so the next owner starts
//! from a committed, durable point.
//!
//! Each partition has a lane: records wait there until its worker is free (two batches may be
//! queued to it). A lane holding more than [`EngineConfig::lane_records`] records has its
//! partition paused in the consumer, and resumed below half of that: a slow or stuck partition
//! neither holds up the others nor grows memory. Errors are handled by the worker, per
//! partition (see [`worker`]).
//!
//! Offsets are committed in the background by checkpoints ([`Checkpoints`]), off the path of
//! the next batch, at most once per [`EngineConfig::checkpoint_every`]: each round first makes
//! the store durable up to the batches it covers ([`StateStore::sync`]), then commits their
//! offsets. A batch's effects are visible (cache, replies) as soon as the store has them; a
//! crash before the next round rolls the store back to its last sync and the log delivers the
//! records again, which the engine applies again to the same effects, or finds recorded and
//! treats as replays.
//!
//! The engine's consumer lag per partition, checkpoint age and rebalances are in the metrics
//! ([`observe`]).

pub mod delivery;
pub mod health;
pub mod member;
mod observe;
mod records;
pub mod reindex;
pub mod scheduler;
pub mod shard;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::metrics;
use crate::ports::{ConsumerEvent, EventLog, HotCache, LogConsumer, Partition, Record, StateStore};
use crate::programs::ProgramCache;
use crate::replies::ReplySink;
use crate::{Error, Result};
use health::EngineHealth;
use observe::{Positions, RebalanceClock, Sampler, SamplerTask};
use worker::{Progress, WorkerChannels, WorkerDeps, RETRY_MIN};

/// Settings of an engine node.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Topic of POS commands.
    pub topic: String,
    /// Where undecodable or invalid records go, with the reason in a header.
    pub dead_letter_topic: String,
    /// The consumer group of engine nodes.
    pub group: String,
    /// Most records taken in one poll, and in one batch of a partition.
    pub max_batch: usize,
    /// A member actor idle for this long is stopped.
    pub passivate_after: Duration,
    /// Least time between two checkpoints (store sync, then offset commits): what a crash can
    /// make the log deliver again, against one fsync of the store per round.
    pub checkpoint_every: Duration,
    /// Worker threads the partitions are spread over; 0: one per core.
    pub workers: usize,
    /// Records a partition's lane holds before its partition is paused.
    pub lane_records: usize,
    /// `Some(n)`: this engine must own all `n` partitions of the topic, alone (it runs on a
    /// store that no other process shares, the embedded one). If the group ever gives it fewer
    /// (another engine joined), it stops with an error rather than split members across two
    /// stores.
    pub exclusive: Option<u32>,
    /// How often the consumer lag of each owned partition is sampled (one end-offset read per
    /// partition) into `loyalty_engine_consumer_lag_records`.
    pub lag_every: Duration,
    /// The scheduler of expiry and tier re-evaluation of each owned partition
    /// ([`scheduler`]).
    pub scheduler: scheduler::SchedulerConfig,
    /// The delivery of campaign messages of each owned partition ([`delivery`]).
    pub delivery: delivery::DeliveryConfig,
    /// The partition count of [`EngineConfig::topic`], which the re-index of a partition
    /// needs to tell its members from the others' ([`reindex`]); 0: asked of the log when
    /// the engine starts (the topic exists by then).
    pub partitions: u32,
    /// Opens the personal values of the commands read (README "Personal data at rest"): the
    /// ring of the gateways that sealed them, or one holding their keys.
    pub keys: crate::sealing::KeyRing,
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
            workers: 0,
            lane_records: 8192,
            exclusive: None,
            lag_every: Duration::from_secs(5),
            scheduler: scheduler::SchedulerConfig::default(),
            delivery: delivery::DeliveryConfig::default(),
            partitions: 0,
            keys: crate::sealing::KeyRing::dev(),
        }
    }
}

impl EngineConfig {
    /// The number of worker threads to run.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
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
    pub ready: Arc<AtomicBool>,
    /// Partitions owned, retrying, stopped (served by `/readyz`).
    pub health: Arc<EngineHealth>,
}

/// The engine's side of one owned partition.
struct Lane {
    records: mpsc::Sender<Vec<Record>>,
    stop: watch::Sender<bool>,
    exited: oneshot::Receiver<()>,
    /// Records not handed to the worker yet, in offset order.
    backlog: VecDeque<Record>,
    paused: bool,
    /// Stopped by a permanent error: its records are dropped (never committed).
    stopped: bool,
}

/// The dispatcher's state: lanes, the worker threads, the channel workers report on.
struct Dispatcher<'a> {
    engine: &'a Engine,
    consumer: Arc<dyn LogConsumer>,
    arbiters: Vec<actix_rt::Arbiter>,
    lanes: BTreeMap<Partition, Lane>,
    progress_tx: mpsc::UnboundedSender<Progress>,
    deps: WorkerDeps,
    /// The committed offsets of the owned partitions, for the lag metrics.
    positions: Arc<Positions>,
}

impl Engine {
    /// Runs until `shutdown` turns true. Must run inside an actix system (worker threads are
    /// actix arbiters; member actors run on them).
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<()> {
        let result = self.run_inner(shutdown).await;
        self.ready.store(false, Ordering::Relaxed);
        if let Err(e) = &result {
            self.health.failed(e.to_string());
        }
        result
    }

    async fn run_inner(&self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut rebalance = RebalanceClock::joining();
        let consumer: Arc<dyn LogConsumer> = Arc::from(
            self.log
                .subscribe(&self.config.group, &self.config.topic)
                .await?,
        );
        let partitions = match self.config.partitions {
            // The group's topic exists once subscribed to: this reads its count back.
            0 => self.log.ensure_topic(&self.config.topic, 1).await?,
            n => n,
        };
        let positions = Arc::new(Positions::default());
        let _sampler = self.start_sampler(&consumer, &positions);
        let mut checkpoints = Checkpoints::new(
            Arc::clone(&consumer),
            Arc::clone(&self.store),
            Arc::clone(&positions),
            self.config.checkpoint_every,
        );
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
        let threads = self.config.worker_threads();
        let mut d = Dispatcher {
            engine: self,
            consumer: Arc::clone(&consumer),
            arbiters: (0..threads).map(|_| actix_rt::Arbiter::new()).collect(),
            lanes: BTreeMap::new(),
            progress_tx,
            deps: WorkerDeps {
                log: Arc::clone(&self.log),
                store: Arc::clone(&self.store),
                cache: Arc::clone(&self.cache),
                programs: Arc::clone(&self.programs),
                replies: Arc::clone(&self.replies),
                health: Arc::clone(&self.health),
                topic: self.config.topic.clone(),
                dead_letter_topic: self.config.dead_letter_topic.clone(),
                passivate_after: self.config.passivate_after,
                scheduler: self.config.scheduler.clone(),
                delivery: Arc::new(delivery::Delivery::new(
                    self.config.delivery.clone(),
                    Arc::clone(&self.store),
                    Arc::clone(&self.programs),
                )),
                partitions,
                keys: self.config.keys.clone(),
            },
            positions,
        };
        tracing::info!(topic = %self.config.topic, group = %self.config.group, threads, "engine started");
        let mut failure = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.changed() => continue,
                Some(p) = progress_rx.recv() => {
                    d.on_progress(&mut checkpoints, p).await;
                    continue;
                }
                () = checkpoints.in_flight_done() => {
                    checkpoints.start();
                    continue;
                }
                ev = consumer.next(self.config.max_batch) => ev,
            };
            match event {
                Ok(ConsumerEvent::Assigned(ps)) => {
                    tracing::info!(partitions = ?ps, "partitions assigned");
                    rebalance.assigned();
                    d.assign(&ps);
                    if let Err(e) = d.check_exclusive() {
                        failure = Some(e);
                        break;
                    }
                    self.ready.store(true, Ordering::Relaxed);
                }
                Ok(ConsumerEvent::Revoked { partitions, done }) => {
                    tracing::info!(partitions = ?partitions, "partitions revoked");
                    let at = rebalance.revoked();
                    d.release(&partitions, &mut progress_rx, &mut checkpoints)
                        .await;
                    rebalance.released(at);
                    let _ = done.send(());
                }
                Ok(ConsumerEvent::Records(records)) => {
                    if !records.is_empty() {
                        d.dispatch(records).await;
                        checkpoints.start();
                    }
                }
                Err(Error::ShuttingDown) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed");
                    tokio::time::sleep(RETRY_MIN).await;
                }
            }
        }
        let owned: Vec<Partition> = d.lanes.keys().copied().collect();
        d.release(&owned, &mut progress_rx, &mut checkpoints).await;
        drop(d);
        if let Err(e) = consumer.close().await {
            tracing::warn!(error = %e, "leaving the consumer group");
        }
        match failure {
            Some(e) => {
                tracing::error!(error = %e, "engine stopped");
                Err(e)
            }
            None => {
                tracing::info!("engine stopped");
                Ok(())
            }
        }
    }
}

impl Engine {
    /// Starts sampling the consumer lag of the partitions in `positions`; it stops when the
    /// returned task is dropped. The checkpoint age counts from now.
    fn start_sampler(
        &self,
        consumer: &Arc<dyn LogConsumer>,
        positions: &Arc<Positions>,
    ) -> SamplerTask {
        metrics().consumer.checkpoint_clock.touch();
        let sampler = Sampler {
            log: Arc::clone(&self.log),
            consumer: Arc::clone(consumer),
            topic: self.config.topic.clone(),
            positions: Arc::clone(positions),
        };
        let every = self.config.lag_every.max(Duration::from_millis(10));
        SamplerTask(tokio::spawn(observe::run_sampler(sampler, every)))
    }
}

impl Drop for Dispatcher<'_> {
    /// Stops the worker threads: after a clean release they have nothing left to run; if the
    /// engine's task was dropped mid-way (a simulated crash), their work is dropped with it.
    fn drop(&mut self) {
        for a in &self.arbiters {
            a.stop();
        }
    }
}

impl Dispatcher<'_> {
    /// Starts a worker for each newly assigned partition.
    fn assign(&mut self, partitions: &[Partition]) {
        self.engine.health.assigned(partitions);
        self.positions.assigned(partitions);
        for &p in partitions {
            if self.lanes.contains_key(&p) {
                continue;
            }
            let (records_tx, records) = mpsc::channel(2);
            let (stop_tx, stop) = watch::channel(false);
            let (exited_tx, exited) = oneshot::channel();
            let channels = WorkerChannels {
                records,
                stop,
                progress: self.progress_tx.clone(),
                exited: exited_tx,
            };
            let deps = self.deps.clone();
            let arbiter = &self.arbiters[p as usize % self.arbiters.len()];
            if !arbiter.spawn(worker::run(p, deps, channels)) {
                tracing::error!(partition = p, "worker thread gone; partition not started");
            }
            self.lanes.insert(
                p,
                Lane {
                    records: records_tx,
                    stop: stop_tx,
                    exited,
                    backlog: VecDeque::new(),
                    paused: false,
                    stopped: false,
                },
            );
        }
    }

    /// An exclusive engine (on a store no other process shares) must own every partition.
    fn check_exclusive(&self) -> Result<()> {
        let Some(n) = self.engine.config.exclusive else {
            return Ok(());
        };
        if self.lanes.len() as u32 >= n {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "another engine joined the consumer group {:?}: this one was given {} of the {n}              partitions, but it runs on the embedded store, which no other process shares, so              members would be split across two stores. Stop the other engine, or run every              engine and gateway on a shared store (LOYALTY_POSTGRES_URL or LOYALTY_SCYLLA_NODES)",
            self.engine.config.group,
            self.lanes.len()
        )))
    }

    /// Hands a poll's records to their lanes.
    async fn dispatch(&mut self, records: Vec<Record>) {
        let mut unowned = BTreeSet::new();
        let mut touched = BTreeSet::new();
        for r in records {
            match self.lanes.get_mut(&r.partition) {
                Some(lane) if lane.stopped => {}
                Some(lane) => {
                    touched.insert(r.partition);
                    lane.backlog.push_back(r);
                }
                None => {
                    unowned.insert(r.partition);
                }
            }
        }
        for p in touched {
            self.feed(p).await;
        }
        if !unowned.is_empty() {
            tracing::warn!(partitions = ?unowned, "records for partitions not owned");
        }
    }

    /// Moves a lane's backlog to its worker as far as it takes it, and pauses or resumes the
    /// partition by the size of what is left.
    async fn feed(&mut self, partition: Partition) {
        let max_batch = self.engine.config.max_batch.max(1);
        let pause_at = self.engine.config.lane_records.max(max_batch);
        let Some(lane) = self.lanes.get_mut(&partition) else {
            return;
        };
        while !lane.backlog.is_empty() {
            let Ok(permit) = lane.records.try_reserve() else {
                break;
            };
            let n = lane.backlog.len().min(max_batch);
            permit.send(lane.backlog.drain(..n).collect());
        }
        let backlog = lane.backlog.len();
        let change = if !lane.paused && backlog >= pause_at {
            Some(true)
        } else if lane.paused && !lane.stopped && backlog < pause_at / 2 {
            Some(false)
        } else {
            None
        };
        if let Some(pause) = change {
            lane.paused = pause;
            self.set_paused(partition, pause).await;
        }
    }

    async fn set_paused(&self, partition: Partition, pause: bool) {
        let result = if pause {
            self.consumer.pause(&[partition]).await
        } else {
            self.consumer.resume(&[partition]).await
        };
        match result {
            Ok(()) => {
                let g = &metrics().engine_partitions_paused;
                if pause {
                    g.inc()
                } else {
                    g.dec()
                }
                tracing::debug!(partition, pause, "partition reading paused or resumed");
            }
            Err(e) => tracing::warn!(partition, pause, error = %e, "cannot pause or resume"),
        }
    }

    async fn on_progress(&mut self, checkpoints: &mut Checkpoints, progress: Progress) {
        match progress {
            Progress::Stored {
                partition,
                next_offset,
            } => {
                checkpoints.queue(partition, next_offset);
                checkpoints.start();
                self.feed(partition).await;
            }
            Progress::Stopped { partition, .. } => {
                let Some(lane) = self.lanes.get_mut(&partition) else {
                    return;
                };
                lane.stopped = true;
                lane.backlog.clear();
                let was_paused = std::mem::replace(&mut lane.paused, true);
                if !was_paused {
                    self.set_paused(partition, true).await;
                }
            }
        }
    }

    /// Stops the workers of `partitions` after their batch in flight, checkpoints what they
    /// stored, and forgets them: once this returns, the partitions can be handed over.
    async fn release(
        &mut self,
        partitions: &[Partition],
        progress_rx: &mut mpsc::UnboundedReceiver<Progress>,
        checkpoints: &mut Checkpoints,
    ) {
        let mut exits = Vec::new();
        for p in partitions {
            if let Some(lane) = self.lanes.remove(p) {
                let _ = lane.stop.send(true);
                if lane.paused {
                    metrics().engine_partitions_paused.dec();
                }
                drop(lane.records);
                exits.push(lane.exited);
            }
        }
        // A worker drops `exited` when it is gone, after reporting its last batch.
        join_all(exits).await;
        while let Ok(p) = progress_rx.try_recv() {
            self.on_progress(checkpoints, p).await;
        }
        checkpoints.flush().await;
        self.engine.health.released(partitions);
        self.positions.released(partitions);
    }
}

/// Checkpoints in the background: at most one round in flight, each round making the store
/// durable and then committing the latest queued offset of every partition, so a committed
/// offset never runs ahead of the store's durable state nor goes backwards, and neither the
/// fsync nor the commit (a broker round trip) holds up the next batch.
struct Checkpoints {
    consumer: Arc<dyn LogConsumer>,
    store: Arc<dyn StateStore>,
    /// Told of every committed offset.
    positions: Arc<Positions>,
    every: Duration,
    pending: BTreeMap<Partition, u64>,
    in_flight: Option<tokio::task::JoinHandle<()>>,
    last_round: Option<tokio::time::Instant>,
}

impl Checkpoints {
    fn new(
        consumer: Arc<dyn LogConsumer>,
        store: Arc<dyn StateStore>,
        positions: Arc<Positions>,
        every: Duration,
    ) -> Checkpoints {
        Checkpoints {
            consumer,
            store,
            positions,
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
        let positions = Arc::clone(&self.positions);
        self.in_flight = Some(tokio::spawn(async move {
            if let Some(t) = not_before {
                tokio::time::sleep_until(t).await;
            }
            checkpoint(consumer.as_ref(), store.as_ref(), &positions, commits).await;
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
            let (consumer, store) = (self.consumer.as_ref(), self.store.as_ref());
            checkpoint(consumer, store, &self.positions, commits).await;
        }
    }
}

/// Makes the store durable, then commits every partition's offset at once (a log can make
/// concurrent commits durable with one write), and tells `positions` what was committed.
async fn checkpoint(
    consumer: &dyn LogConsumer,
    store: &dyn StateStore,
    positions: &Positions,
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
    for ((&partition, &next), result) in commits.iter().zip(done) {
        match result {
            Ok(()) => positions.committed(partition, next),
            // Redelivery is harmless: the events are recorded as processed.
            Err(e) => tracing::warn!(partition, error = %e, "offset commit failed"),
        }
    }
}
