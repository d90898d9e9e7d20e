//! What an engine node tells about its consumer, in the metrics: the lag of each partition it
//! owns, the age of its checkpoint, and its rebalances.
//!
//! - [`Positions`] holds, per owned partition, the offset this node last committed (or, until
//!   it commits one, the group's committed offset at assignment, read once). A sampler
//!   ([`run_sampler`]) reads each owned partition's end offset every
//!   [`super::EngineConfig::lag_every`] and sets `loyalty_engine_consumer_lag_records
//!   {partition}` to the end offset minus the committed one: the records a restart would
//!   deliver again or has not read yet. A partition's series is removed when it is released, so
//!   the gauge has exactly one series per owned partition (partitions are few and fixed: a
//!   bounded label). One engine per process is assumed (the series are process-wide).
//! - `loyalty_engine_checkpoint_age_seconds` (see [`crate::metrics::CheckpointClock`]) restarts
//!   at each offset commit and at each lag sample that finds every owned partition committed
//!   up to its end, so an idle engine stays near 0 and one that applies but cannot commit (or
//!   cannot reach the log) grows.
//! - [`RebalanceClock`] times the two phases of each eager rebalance as the engine sees them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use parking_lot::Mutex;

use crate::metrics::metrics;
use crate::ports::{EventLog, LogConsumer, Offset, Partition};

/// The committed offsets of the partitions this node owns (`None`: not known yet).
#[derive(Debug, Default)]
pub(crate) struct Positions {
    committed: Mutex<BTreeMap<Partition, Option<Offset>>>,
}

impl Positions {
    /// `partitions` are now owned.
    pub(crate) fn assigned(&self, partitions: &[Partition]) {
        let mut owned = self.committed.lock();
        for &p in partitions {
            owned.entry(p).or_insert(None);
        }
    }

    /// `partitions` are no longer owned: their lag series go.
    pub(crate) fn released(&self, partitions: &[Partition]) {
        let mut owned = self.committed.lock();
        let gauge = &metrics().consumer.lag_records;
        for p in partitions {
            if owned.remove(p).is_some() {
                // Absent when no sample was published yet: nothing to remove.
                let _ = gauge.remove_label_values(&[&p.to_string()]);
            }
        }
    }

    /// Everything of `partition` before `next` is committed.
    pub(crate) fn committed(&self, partition: Partition, next: Offset) {
        if let Some(c) = self.committed.lock().get_mut(&partition) {
            *c = Some(c.map_or(next, |old| old.max(next)));
        }
        metrics().consumer.checkpoint_clock.touch();
    }

    fn snapshot(&self) -> Vec<(Partition, Option<Offset>)> {
        self.committed
            .lock()
            .iter()
            .map(|(&p, &c)| (p, c))
            .collect()
    }

    /// The group's committed offset of a partition, read at its assignment.
    fn learned(&self, partition: Partition, committed: Offset) {
        if let Some(c @ None) = self.committed.lock().get_mut(&partition) {
            *c = Some(committed);
        }
    }

    /// Sets the lag of the sampled partitions still owned; `true` when every owned partition
    /// was sampled and has none.
    fn publish(&self, lags: &[(Partition, u64)]) -> bool {
        let owned = self.committed.lock();
        let gauge = &metrics().consumer.lag_records;
        let mut sampled = 0;
        let mut caught_up = true;
        for &(p, lag) in lags.iter().filter(|(p, _)| owned.contains_key(p)) {
            gauge
                .with_label_values(&[&p.to_string()])
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
            sampled += 1;
            caught_up &= lag == 0;
        }
        caught_up && sampled == owned.len()
    }
}

/// What the sampler reads from.
pub(crate) struct Sampler {
    pub log: Arc<dyn EventLog>,
    pub consumer: Arc<dyn LogConsumer>,
    pub topic: String,
    pub positions: Arc<Positions>,
}

impl Sampler {
    /// The lag of `partition`, or `None` when the log cannot tell now (logged at debug: the
    /// next sample tries again).
    async fn lag(&self, partition: Partition, committed: Option<Offset>) -> Option<u64> {
        let end = match self.log.end_offset(&self.topic, partition).await {
            Ok(end) => end,
            Err(e) => {
                tracing::debug!(partition, error = %e, "lag sample: no end offset");
                return None;
            }
        };
        let committed = match committed {
            Some(c) => c,
            // Never committed: reading starts at the beginning of the partition.
            None => match self.consumer.committed(partition).await {
                Ok(c) => {
                    let c = c.unwrap_or(0);
                    self.positions.learned(partition, c);
                    c
                }
                Err(e) => {
                    tracing::debug!(partition, error = %e, "lag sample: no committed offset");
                    return None;
                }
            },
        };
        Some(end.saturating_sub(committed))
    }

    /// Samples every owned partition once.
    pub(crate) async fn sample(&self) {
        let owned = self.positions.snapshot();
        let lags = join_all(owned.iter().map(|&(p, c)| self.lag(p, c))).await;
        let lags: Vec<(Partition, u64)> = owned
            .iter()
            .zip(lags)
            .filter_map(|(&(p, _), lag)| lag.map(|l| (p, l)))
            .collect();
        if self.positions.publish(&lags) {
            metrics().consumer.checkpoint_clock.touch();
        }
    }
}

/// Samples the lag every `every`, for as long as the task runs (see [`SamplerTask`]).
pub(crate) async fn run_sampler(sampler: Sampler, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sampler.sample().await;
    }
}

/// The sampler's task, stopped when this is dropped (the engine stops, or its task is dropped).
pub(crate) struct SamplerTask(pub tokio::task::JoinHandle<()>);

impl Drop for SamplerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Times the phases of the group's eager rebalances, as this node sees them, into
/// `loyalty_engine_rebalance_duration_seconds{phase}` and counts the events into
/// `loyalty_engine_rebalances_total{event}`:
/// - `assign`: from joining the group, or from releasing revoked partitions, until the next
///   assignment (the group's rebalance itself, while this node consumes nothing);
/// - `revoke`: from a revocation until this node released its partitions (batches in flight
///   stored, offsets committed, actors stopped), which the group waits for.
#[derive(Debug)]
pub(crate) struct RebalanceClock {
    /// Since when this node waits for an assignment.
    waiting: Option<Instant>,
}

impl RebalanceClock {
    /// The node joins the group now.
    pub(crate) fn joining() -> RebalanceClock {
        RebalanceClock {
            waiting: Some(Instant::now()),
        }
    }

    /// An assignment arrived.
    pub(crate) fn assigned(&mut self) {
        let m = &metrics().consumer;
        m.rebalances.with_label_values(&["assigned"]).inc();
        if let Some(since) = self.waiting.take() {
            observe(m, "assign", since);
        }
    }

    /// A revocation arrived: returns when, for [`RebalanceClock::released`].
    pub(crate) fn revoked(&mut self) -> Instant {
        metrics()
            .consumer
            .rebalances
            .with_label_values(&["revoked"])
            .inc();
        Instant::now()
    }

    /// The partitions of the revocation that arrived `at` are released.
    pub(crate) fn released(&mut self, at: Instant) {
        observe(&metrics().consumer, "revoke", at);
        self.waiting = Some(Instant::now());
    }
}

fn observe(m: &crate::metrics::ConsumerMetrics, phase: &str, since: Instant) {
    m.rebalance_seconds
        .with_label_values(&[phase])
        .observe(since.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Appended, ConsumerEvent};
    use crate::{Error, Result};
    use async_trait::async_trait;
    use bytes::Bytes;

    /// A log whose partitions end at the offsets of `ends` (an unknown one is unavailable).
    struct Ends(Mutex<BTreeMap<Partition, Offset>>);

    #[async_trait]
    impl EventLog for Ends {
        async fn ensure_topic(&self, _: &str, _: u32) -> Result<u32> {
            Err(Error::Invalid("fake".into()))
        }
        async fn append(
            &self,
            _: &str,
            _: &[u8],
            _: Bytes,
            _: Vec<(String, Bytes)>,
        ) -> Result<Appended> {
            Err(Error::Invalid("fake".into()))
        }
        async fn end_offset(&self, _: &str, p: Partition) -> Result<Offset> {
            let ends = self.0.lock();
            ends.get(&p)
                .copied()
                .ok_or_else(|| Error::Unavailable("down".into()))
        }
        async fn subscribe(&self, _: &str, _: &str) -> Result<Box<dyn LogConsumer>> {
            Err(Error::Invalid("fake".into()))
        }
    }

    /// A consumer whose group committed 2 for partition 801 and nothing for the others.
    struct Group;

    #[async_trait]
    impl LogConsumer for Group {
        async fn next(&self, _: usize) -> Result<ConsumerEvent> {
            Err(Error::ShuttingDown)
        }
        async fn commit(&self, _: Partition, _: Offset) -> Result<()> {
            Ok(())
        }
        async fn committed(&self, p: Partition) -> Result<Option<Offset>> {
            Ok((p == 801).then_some(2))
        }
        async fn pause(&self, _: &[Partition]) -> Result<()> {
            Ok(())
        }
        async fn resume(&self, _: &[Partition]) -> Result<()> {
            Ok(())
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    fn lag(p: Partition) -> Option<i64> {
        let g = &metrics().consumer.lag_records;
        let text = metrics().render();
        text.contains(&format!("partition=\"{p}\""))
            .then(|| g.with_label_values(&[&p.to_string()]).get())
    }

    #[tokio::test]
    async fn the_lag_is_the_end_offset_minus_the_committed_one_per_owned_partition() {
        let ends = Arc::new(Ends(Mutex::new(BTreeMap::from([(801, 10), (802, 4)]))));
        let sampler = Sampler {
            log: ends.clone(),
            consumer: Arc::new(Group),
            topic: "t".into(),
            positions: Arc::new(Positions::default()),
        };
        sampler.positions.assigned(&[801, 802, 803]);
        sampler.sample().await;
        // 801: the group's 2; 802: never committed, from 0; 803: the log cannot tell.
        assert_eq!((lag(801), lag(802), lag(803)), (Some(8), Some(4), None));
        sampler.positions.committed(801, 10);
        sampler.positions.committed(802, 3);
        ends.0.lock().insert(802, 6);
        sampler.sample().await;
        assert_eq!((lag(801), lag(802)), (Some(0), Some(3)));
        sampler.positions.released(&[801, 802, 803]);
        assert_eq!((lag(801), lag(802)), (None, None));
    }

    #[test]
    fn positions_track_owned_partitions_and_their_highest_commit() {
        let p = Positions::default();
        p.assigned(&[1, 2]);
        p.committed(1, 10);
        p.committed(1, 7);
        p.learned(1, 3);
        p.learned(2, 4);
        p.committed(9, 5);
        assert_eq!(p.snapshot(), vec![(1, Some(10)), (2, Some(4))]);
        p.released(&[1]);
        assert_eq!(p.snapshot(), vec![(2, Some(4))]);
    }

    #[test]
    fn caught_up_only_when_every_owned_partition_was_sampled_at_zero() {
        let p = Positions::default();
        p.assigned(&[901, 902]);
        assert!(!p.publish(&[(901, 0)]), "902 not sampled");
        assert!(!p.publish(&[(901, 0), (902, 3)]));
        assert!(
            p.publish(&[(901, 0), (902, 0), (903, 5)]),
            "903 is not owned"
        );
        let text = metrics().render();
        assert!(text.contains("loyalty_engine_consumer_lag_records{partition=\"901\"} 0"));
        assert!(!text.contains("partition=\"903\""), "{text}");
        p.released(&[901, 902]);
        assert!(!metrics().render().contains("partition=\"901\""));
    }
}
