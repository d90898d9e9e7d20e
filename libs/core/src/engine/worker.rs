//! A partition worker: the task that owns one partition's [`Shard`] on one of the engine's
//! worker threads, applies its batches one after the other (so a member's commands keep their
//! log order), and publishes each batch once the store has it.
//!
//! Errors are handled per partition, so one stuck partition never holds up the others:
//! - a transient error (the store or the log unavailable, a lost conditional write) backs off
//!   exponentially (with jitter, capped) and tries the batch again from the store's truth,
//!   visible in `loyalty_engine_batch_retries_total` and `/readyz` while it lasts;
//! - a permanent error (corrupt or invalid data) stops the partition loudly: an error log, the
//!   `loyalty_engine_partitions_stopped` gauge, `/readyz` 503 naming the partition. Nothing of
//!   it is applied or committed afterwards, so nothing is lost: once an operator has repaired
//!   the data, a restart (or the partition's next assignment) delivers the records again.
//!
//! A worker stops when its engine tells it to (revocation, shutdown): it finishes the attempt
//! in flight, reports it, and exits without starting another.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::engine::health::EngineHealth;
use crate::engine::reindex::Reindexer;
use crate::engine::scheduler::{self, SchedulerConfig};
use crate::engine::shard::{BatchOutcome, DeadLetter, Shard, ShardDeps};
use crate::metrics::metrics;
use crate::ports::{EventLog, HotCache, Partition, Record, StateStore};
use crate::programs::ProgramCache;
use crate::replies::ReplySink;
use crate::Error;

/// First pause after a transient error.
pub const RETRY_MIN: Duration = Duration::from_millis(20);
/// Longest pause between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a worker tells its engine.
#[derive(Debug)]
pub enum Progress {
    /// The store has the effects of every record of the partition before `next_offset`, and
    /// they are published (dead letters appended, cache updated, gateways answered).
    Stored {
        partition: Partition,
        next_offset: u64,
    },
    /// A permanent error: the partition is stopped.
    Stopped { partition: Partition, error: String },
}

/// Everything a worker shares with its engine (cheap clones).
#[derive(Clone)]
pub struct WorkerDeps {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn StateStore>,
    pub cache: Arc<dyn HotCache>,
    pub programs: Arc<ProgramCache>,
    pub replies: Arc<dyn ReplySink>,
    pub health: Arc<EngineHealth>,
    pub topic: String,
    pub dead_letter_topic: String,
    pub passivate_after: Duration,
    pub scheduler: SchedulerConfig,
    /// The delivery of the partition's campaign messages, run beside its batches.
    pub delivery: Arc<crate::engine::delivery::Delivery>,
    /// The topic's partition count (for the re-index, [`crate::engine::reindex`]).
    pub partitions: u32,
    /// Opens the personal values of the commands read (README "Personal data at rest").
    pub keys: crate::sealing::KeyRing,
}

impl WorkerDeps {
    /// What a shard's work borrows.
    pub fn shard_deps(&self) -> ShardDeps<'_> {
        ShardDeps {
            store: &self.store,
            programs: &self.programs,
            keys: &self.keys,
        }
    }
}

/// A worker's inputs.
pub struct WorkerChannels {
    pub records: mpsc::Receiver<Vec<Record>>,
    pub stop: watch::Receiver<bool>,
    pub progress: mpsc::UnboundedSender<Progress>,
    /// Dropped when the worker has exited.
    pub exited: oneshot::Sender<()>,
}

/// Runs the worker of `partition` until it is told to stop or its input closes.
pub async fn run(partition: Partition, deps: WorkerDeps, mut ch: WorkerChannels) {
    let mut shard = Shard::new(partition);
    // On the worker's thread, interleaved with its batches at their awaits; stopped with it.
    let delivery = actix_rt::spawn(Arc::clone(&deps.delivery).run(partition, ch.stop.clone()));
    let sweep_every = (deps.passivate_after / 4).max(Duration::from_millis(50));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let scheduling = !deps.scheduler.every.is_zero();
    let mut schedule = tokio::time::interval(deps.scheduler.every.max(Duration::from_millis(1)));
    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reindex = Reindexer::new(partition, deps.partitions);
    // A re-index page ran since the last batch: the next turn is the records'.
    let mut paged = false;
    loop {
        let records = tokio::select! {
            biased;
            _ = ch.stop.changed() => break,
            // Before the records (it is ready once per interval, so it cannot hold them up),
            // so that a steady stream of records cannot hold the scheduler up either. Its
            // first tick is at once: the re-index checks its partition on assignment.
            _ = schedule.tick(), if scheduling => {
                reindex_check(&mut reindex, &mut shard, &deps).await;
                schedule_run(&mut shard, &deps).await;
                continue;
            }
            // One page of a re-index sweep, then a batch, and so on: neither waits long.
            _ = std::future::ready(()), if scheduling && !paged && reindex.pending() => {
                reindex_page(&mut reindex, &mut shard, &deps).await;
                paged = true;
                continue;
            }
            r = ch.records.recv() => match r {
                Some(r) => r,
                None => break,
            },
            _ = sweep.tick() => {
                let stopped = shard.passivate_idle(deps.passivate_after);
                if stopped > 0 {
                    tracing::debug!(partition, stopped, "idle member actors passivated");
                }
                continue;
            }
            // No record waiting: the re-index goes on page after page.
            _ = std::future::ready(()), if scheduling && reindex.pending() => {
                reindex_page(&mut reindex, &mut shard, &deps).await;
                continue;
            }
        };
        paged = false;
        if *ch.stop.borrow() {
            break;
        }
        let Some(last) = records.last().map(|r| r.offset) else {
            continue;
        };
        let timer = metrics().engine_batch_seconds.start_timer();
        let span = crate::trace::process_span(&deps.topic, partition, &records);
        let attempt = store_batch(&mut shard, &deps, &records, &mut ch.stop)
            .instrument(span.clone())
            .await;
        match attempt {
            Attempt::Stored(outcome) => {
                let published = publish(&deps, partition, outcome, &mut ch.stop)
                    .instrument(span)
                    .await;
                if !published {
                    break;
                }
                timer.observe_duration();
                let _ = ch.progress.send(Progress::Stored {
                    partition,
                    next_offset: last + 1,
                });
            }
            Attempt::Stopping => break,
            Attempt::Permanent(error) => {
                tracing::error!(
                    partition,
                    error = %error,
                    "partition stopped: a permanent error; nothing of it is applied until the \
                     data is repaired and the engine restarted"
                );
                deps.health.stopped(partition, error.clone());
                let _ = ch.progress.send(Progress::Stopped { partition, error });
                break;
            }
        }
    }
    delivery.abort();
    shard.stop_all();
    drop(ch.exited);
}

/// One run of the partition's scheduler: advances its due members, makes them durable, then
/// publishes their statuses. A failed run changes nothing the next run cannot redo (see
/// [`crate::engine::scheduler`]): it is counted, logged, and left to the next interval.
async fn schedule_run(shard: &mut Shard, deps: &WorkerDeps) {
    let partition = shard.partition;
    let span = crate::trace::scheduler_span(partition);
    let shard_deps = deps.shard_deps();
    let run = async {
        let (report, outcomes) = scheduler::run_once(shard, &shard_deps, &deps.scheduler).await?;
        // Durable before visible: the statuses go out only once the store has the effects.
        if report.applied > 0 {
            deps.store.sync().await?;
        }
        Ok::<_, Error>((report, outcomes))
    };
    let m = &metrics().scheduler;
    match run.instrument(span.clone()).await {
        Ok((report, outcomes)) => {
            m.runs.with_label_values(&["ok"]).inc();
            m.members_applied.inc_by(report.applied as u64);
            m.points_expired.inc_by(report.points_expired);
            span.record("loyalty.scheduler.due", report.due);
            if report.due > 0 {
                tracing::info!(
                    partition,
                    due = report.due,
                    applied = report.applied,
                    points_expired = report.points_expired,
                    "scheduler run"
                );
            }
            for outcome in outcomes {
                if !outcome.statuses.is_empty() {
                    if let Err(e) = deps.cache.put_statuses(outcome.statuses).await {
                        tracing::warn!(partition, error = %e, "hot cache update failed");
                    }
                }
            }
        }
        Err(e) => {
            m.runs.with_label_values(&["error"]).inc();
            tracing::warn!(partition, error = %e, "scheduler run failed; the next run redoes it");
        }
    }
}

/// The re-index's check of its partition's mark and of the current programs (on assignment and
/// at each scheduler interval). A failure is logged; the next interval checks again.
async fn reindex_check(reindex: &mut Reindexer, shard: &mut Shard, deps: &WorkerDeps) {
    let shard_deps = deps.shard_deps();
    if let Err(e) = reindex.check(shard, &shard_deps).await {
        tracing::warn!(partition = shard.partition, error = %e, "re-index check failed; the next interval checks again");
    }
}

/// One page of the partition's re-index sweep. A failed page is logged and counted; the sweep
/// waits for the next interval's check and goes on from where it was.
async fn reindex_page(reindex: &mut Reindexer, shard: &mut Shard, deps: &WorkerDeps) {
    let shard_deps = deps.shard_deps();
    let limit = deps.scheduler.batch;
    if let Err(e) = reindex.page(shard, &shard_deps, limit).await {
        tracing::warn!(partition = shard.partition, error = %e, "re-index page failed; the sweep goes on at the next interval");
    }
}

enum Attempt {
    Stored(BatchOutcome),
    Stopping,
    Permanent(String),
}

/// A pause of about `delay` (±25 %, so partitions retrying together spread out).
fn jittered(delay: Duration) -> Duration {
    let spread = delay.as_millis() as u64 / 2;
    if spread == 0 {
        return delay;
    }
    let r = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * spread / 255;
    delay - Duration::from_millis(spread / 2) + Duration::from_millis(r)
}

/// Waits `delay`, or less if the worker is told to stop (`false` then).
async fn pause(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(jittered(delay)) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Tries the batch until the store has its effects, backing off on transient errors.
async fn store_batch(
    shard: &mut Shard,
    deps: &WorkerDeps,
    records: &[Record],
    stop: &mut watch::Receiver<bool>,
) -> Attempt {
    let shard_deps = deps.shard_deps();
    let partition = shard.partition;
    let mut delay = RETRY_MIN;
    let mut attempts = 0u32;
    loop {
        let error = match shard.process(&shard_deps, records).await {
            Ok(outcome) => {
                if attempts > 0 {
                    tracing::info!(partition, attempts, "batch stored after retries");
                    deps.health.recovered(partition);
                }
                return Attempt::Stored(outcome);
            }
            Err(Error::ShuttingDown) => return Attempt::Stopping,
            Err(e) if !e.is_transient() => return Attempt::Permanent(e.to_string()),
            Err(e) => e,
        };
        attempts += 1;
        metrics()
            .engine_retries
            .with_label_values(&[error.kind()])
            .inc();
        // A lost conditional write is redone at once from the store; an outage backs off.
        let wait = if matches!(error, Error::Conflict(_)) && attempts == 1 {
            Duration::ZERO
        } else {
            delay
        };
        if attempts == 1 || attempts.is_power_of_two() {
            tracing::warn!(partition, attempts, error = %error, next_in_ms = wait.as_millis() as u64, "batch not written; retrying from the store");
        }
        deps.health.retrying(partition, error.to_string());
        if !pause(wait, stop).await {
            return Attempt::Stopping;
        }
        if wait > Duration::ZERO {
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// After the store has a batch's effects: dead letters (durable before the offset moves on),
/// the hot cache, the waiting gateways. `false` if told to stop while a dead letter could not
/// be appended (the batch is then not reported, and is delivered again later).
async fn publish(
    deps: &WorkerDeps,
    partition: Partition,
    outcome: BatchOutcome,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    for dl in outcome.dead_letters {
        if !dead_letter(deps, &dl, stop).await {
            return false;
        }
    }
    if !outcome.statuses.is_empty() {
        if let Err(e) = deps.cache.put_statuses(outcome.statuses).await {
            // The cache is only a cache: readers fall back to the store.
            tracing::warn!(partition, error = %e, "hot cache update failed");
        }
    }
    deps.replies.publish(outcome.replies);
    true
}

/// Appends a dead letter, backing off while the log refuses it.
async fn dead_letter(deps: &WorkerDeps, dl: &DeadLetter, stop: &mut watch::Receiver<bool>) -> bool {
    metrics().dead_letters.with_label_values(&[dl.reason]).inc();
    tracing::warn!(
        partition = dl.record.partition,
        offset = dl.record.offset,
        reason = dl.reason,
        "dead letter"
    );
    let headers =
        crate::dead_letters::headers(&dl.record, &deps.topic, dl.reason, dl.detail.clone());
    let mut delay = RETRY_MIN;
    loop {
        match deps
            .log
            .append(
                &deps.dead_letter_topic,
                &dl.record.key,
                dl.record.payload.clone(),
                headers.clone(),
            )
            .await
        {
            Ok(_) => return true,
            Err(Error::ShuttingDown) => return false,
            Err(e) => {
                metrics()
                    .engine_retries
                    .with_label_values(&["dead-letter"])
                    .inc();
                tracing::warn!(error = %e, "dead-letter append failed; retrying");
                if !pause(delay, stop).await {
                    return false;
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
