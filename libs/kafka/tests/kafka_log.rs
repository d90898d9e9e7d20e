//! Tests of the Kafka event log against a real broker: tansu 0.6.0 (the Kafka-compatible broker
//! these machines can run), started per test by `loyalty_testkit::tansu` on a free loopback
//! port. They mirror the embedded log's tests (`libs/embedded/src/log/tests.rs`). Without the
//! binary each test prints `SKIPPED: ...` and returns; install it with
//! `scripts/install-tansu.sh`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loyalty_core::ports::{ConsumerEvent, EventLog, LogConsumer, Partition};
use loyalty_core::Error;
use loyalty_kafka::{KafkaConfig, KafkaLog};
use loyalty_testkit::log_contract::{
    self, by_partition, expect_assigned, expect_assigned_some, expect_quiet, expect_revoked,
    key_for, next_event, take_records, PATIENCE,
};
use loyalty_testkit::tansu::{TansuBroker, INSTALL_HINT};

/// Starts a broker, or returns from the test saying it was skipped.
macro_rules! broker {
    () => {
        match TansuBroker::available() {
            Err(_) => {
                println!("SKIPPED: {INSTALL_HINT}");
                return;
            }
            Ok(()) => TansuBroker::start().await.expect("starting tansu"),
        }
    };
}

/// Logs to the test output (`RUST_LOG`, default: errors only; librdkafka's own warnings
/// about consumer properties given to the producer are noise).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()))
        .with_test_writer()
        .try_init();
}

fn config(broker: &TansuBroker) -> KafkaConfig {
    init_tracing();
    let mut c = KafkaConfig::new(broker.brokers());
    c.client_id = "loyalty-test".into();
    c.session_timeout = Duration::from_secs(6);
    c.max_poll_interval = Duration::from_secs(30);
    c.revoke_timeout = Duration::from_secs(25);
    c.poll_interval = Duration::from_millis(100);
    c.extra = vec![
        ("heartbeat.interval.ms".into(), "500".into()),
        ("fetch.wait.max.ms".into(), "100".into()),
    ];
    c
}

fn open(broker: &TansuBroker) -> Arc<KafkaLog> {
    KafkaLog::new(config(broker)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ensure_topic_is_idempotent() {
    let broker = broker!();
    let log = open(&broker);
    assert_eq!(log.ensure_topic("orders", 4).await.unwrap(), 4);
    // An existing topic keeps its partition count.
    assert_eq!(log.ensure_topic("orders", 8).await.unwrap(), 4);
    assert_eq!(log.ensure_topic("dead-letters", 1).await.unwrap(), 1);
    // Another client sees the same.
    let other = open(&broker);
    assert_eq!(other.ensure_topic("orders", 2).await.unwrap(), 4);
    assert!(matches!(
        log.ensure_topic("orders", 0).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        log.append("missing", b"k", Bytes::new(), vec![]).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_producer_is_idempotent_with_acks_all() {
    let broker = broker!();
    let log = open(&broker);
    assert_eq!(log.producer_setting("enable.idempotence").unwrap(), "true");
    let acks = log.producer_setting("acks").unwrap();
    assert!(acks == "-1" || acks == "all", "acks={acks}");
    // `extra` cannot weaken them.
    let mut weak = config(&broker);
    weak.extra
        .push(("enable.idempotence".into(), "false".into()));
    weak.extra.push(("acks".into(), "1".into()));
    let log = KafkaLog::new(weak).unwrap();
    assert_eq!(log.producer_setting("enable.idempotence").unwrap(), "true");
    // And the idempotent producer works against the broker.
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..20u64 {
        let at = log
            .append("t", b"k", Bytes::from(format!("r{i}")), vec![])
            .await
            .unwrap();
        assert_eq!(at.offset, i);
    }
    assert_eq!(log.end_offset("t", 0).await.unwrap(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_appends_land_in_key_partitions_with_headers() {
    let broker = broker!();
    let log = open(&broker);
    log_contract::appends_land_in_key_partitions(log.as_ref(), "orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumer_redelivers_from_committed_offset() {
    let broker = broker!();
    let log = open(&broker);
    log_contract::consumer_redelivers_from_committed_offset(log.as_ref(), "t", "g").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_paused_partitions_wait_and_resume_in_order() {
    let broker = broker!();
    let log = open(&broker);
    log_contract::paused_partitions_wait_and_resume_in_order(log.as_ref(), "paused", "g").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rebalance_waits_for_revocation() {
    let broker = broker!();
    let log = open(&broker);
    log.ensure_topic("t", 6).await.unwrap();
    let c1: Arc<dyn LogConsumer> = Arc::from(log.subscribe("g", "t").await.unwrap());
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1, 2, 3, 4, 5]);

    let c2: Arc<dyn LogConsumer> = Arc::from(log.subscribe("g", "t").await.unwrap());
    let released = Arc::new(AtomicBool::new(false));
    let c2_task = {
        let (released, c2) = (released.clone(), c2.clone());
        tokio::spawn(async move {
            let assigned = expect_assigned_some(c2.as_ref()).await;
            (assigned, released.load(Ordering::SeqCst))
        })
    };
    // c1 holds everything: it is asked to give it all back.
    let (revoked, done) = expect_revoked(c1.as_ref()).await;
    assert_eq!(revoked, vec![0, 1, 2, 3, 4, 5]);
    // While c1 has not sent `done`, c2 gets nothing and c1 still owns (and may commit).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !c2_task.is_finished(),
        "c2 was assigned before c1 sent done"
    );
    c1.commit(2, 0).await.unwrap();
    released.store(true, Ordering::SeqCst);
    done.send(()).unwrap();
    let (assigned2, was_released) = tokio::time::timeout(PATIENCE, c2_task)
        .await
        .expect("c2 not assigned in time")
        .unwrap();
    assert!(was_released, "c2 was assigned before c1 sent done");
    let assigned1 = expect_assigned(c1.as_ref()).await;
    assert_eq!(assigned1.len(), 3, "c1 got {assigned1:?}");
    assert_eq!(assigned2.len(), 3, "c2 got {assigned2:?}");
    let all: BTreeSet<Partition> = assigned1.iter().chain(&assigned2).copied().collect();
    assert_eq!(all, (0..6).collect());
    // c1 no longer owns c2's partitions.
    assert!(matches!(
        c1.commit(assigned2[0], 0).await,
        Err(Error::Conflict(m)) if m == "partition not owned"
    ));
    c1.commit(assigned1[0], 0).await.unwrap();

    // c2 closes: c1 revokes what it holds, then gets everything.
    c2.close().await.unwrap();
    let (revoked, done) = expect_revoked(c1.as_ref()).await;
    assert_eq!(revoked, assigned1);
    done.send(()).unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1, 2, 3, 4, 5]);
    assert!(matches!(c2.next(1).await, Err(Error::ShuttingDown)));
    assert!(matches!(
        c2.commit(assigned2[0], 0).await,
        Err(Error::Conflict(_))
    ));
    c1.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dropped_member_hands_everything_to_the_survivor() {
    let broker = broker!();
    let log = open(&broker);
    log.ensure_topic("t", 6).await.unwrap();
    // 60 records, 10 per partition.
    for p in 0..6 {
        let key = key_for(p, 6, 3);
        for i in 0..10 {
            log.append("t", &key, Bytes::from(format!("{p}:{i}")), vec![])
                .await
                .unwrap();
        }
    }
    let c1 = log.subscribe("g", "t").await.unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1, 2, 3, 4, 5]);
    // c1 processes everything and commits half of each partition.
    let got = take_records(c1.as_ref(), 60).await;
    assert_eq!(got.len(), 60);
    for p in 0..6 {
        c1.commit(p, 5).await.unwrap();
    }

    let c2 = log.subscribe("g", "t").await.unwrap();
    let (_, done) = expect_revoked(c1.as_ref()).await;
    done.send(()).unwrap();
    let a1 = expect_assigned(c1.as_ref()).await;
    let a2 = expect_assigned_some(c2.as_ref()).await;
    assert_eq!(a1.len() + a2.len(), 6, "{a1:?} {a2:?}");
    // c2 reads its partitions from the committed offsets: offsets 5..10 of each.
    let got2 = take_records(c2.as_ref(), 5 * a2.len()).await;
    for (p, offsets) in by_partition(&got2) {
        assert!(a2.contains(&p));
        assert_eq!(offsets, (5..10).collect::<Vec<_>>());
    }
    // c1 reads again what it had not committed of its partitions.
    let got1 = take_records(c1.as_ref(), 5 * a1.len()).await;
    for (p, offsets) in by_partition(&got1) {
        assert!(a1.contains(&p));
        assert_eq!(offsets, (5..10).collect::<Vec<_>>());
    }
    for &p in &a2 {
        c2.commit(p, 10).await.unwrap();
    }

    // c2 goes away without close(): the survivor gets everything, and reads only what c2 did
    // not commit (nothing of c2's partitions) and what it did not commit itself.
    drop(c2);
    let (revoked, done) = expect_revoked(c1.as_ref()).await;
    assert_eq!(revoked, a1);
    done.send(()).unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1, 2, 3, 4, 5]);
    let again = take_records(c1.as_ref(), 5 * a1.len()).await;
    for (p, offsets) in by_partition(&again) {
        assert!(
            a1.contains(&p),
            "partition {p} of c2 read again past its commit"
        );
        assert_eq!(offsets, (5..10).collect::<Vec<_>>());
    }
    expect_quiet(c1.as_ref(), Duration::from_millis(500)).await;
    c1.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_commit_on_unowned_partition_conflicts() {
    let broker = broker!();
    let log = open(&broker);
    log.ensure_topic("t", 2).await.unwrap();
    let c1 = log.subscribe("g", "t").await.unwrap();
    // Nothing assigned yet: nothing owned.
    assert!(matches!(
        c1.commit(0, 0).await,
        Err(Error::Conflict(m)) if m == "partition not owned"
    ));
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1]);
    c1.commit(0, 0).await.unwrap();
    assert!(matches!(c1.commit(9, 0).await, Err(Error::Invalid(_))));
    c1.close().await.unwrap();
    // After close, nothing is owned any more.
    assert!(matches!(c1.commit(0, 0).await, Err(Error::Conflict(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_slow_consumer_pauses_instead_of_losing_or_leaving() {
    let broker = broker!();
    let mut cfg = config(&broker);
    // A tiny buffer: the poll thread has to pause and resume the partitions many times.
    cfg.buffer_records = 4;
    let log = KafkaLog::new(cfg).unwrap();
    log.ensure_topic("t", 2).await.unwrap();
    let keys = [key_for(0, 2, 5), key_for(1, 2, 5)];
    for i in 0..200usize {
        log.append("t", &keys[i % 2], Bytes::from(format!("r{i}")), vec![])
            .await
            .unwrap();
    }
    let c = log.subscribe("g", "t").await.unwrap();
    assert_eq!(expect_assigned(c.as_ref()).await, vec![0, 1]);
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while got.len() < 200 {
            if let ConsumerEvent::Records(r) = c.next(3).await.unwrap() {
                got.extend(r);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("records did not arrive in time");
    let per = by_partition(&got);
    assert_eq!(per[&0], (0..100).collect::<Vec<_>>());
    assert_eq!(per[&1], (0..100).collect::<Vec<_>>());
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_survive_a_broker_kill9() {
    let mut broker = broker!();
    let log = open(&broker);
    log.ensure_topic("t", 3).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..30u32 {
        let key = format!("member-{i}");
        acked.push(
            log.append("t", key.as_bytes(), Bytes::from(format!("r{i}")), vec![])
                .await
                .unwrap(),
        );
    }
    let c = log.subscribe("g", "t").await.unwrap();
    expect_assigned(c.as_ref()).await;
    take_records(c.as_ref(), 30).await;
    for p in 0..3 {
        let end = log.end_offset("t", p).await.unwrap();
        c.commit(p, end.min(2)).await.unwrap();
    }
    c.close().await.unwrap();
    drop(log);

    broker.kill9();
    broker.restart().await.unwrap();
    let log = open(&broker);
    assert_eq!(log.ensure_topic("t", 3).await.unwrap(), 3);
    let mut total = 0;
    for p in 0..3 {
        let n = acked.iter().filter(|a| a.partition == p).count() as u64;
        assert_eq!(log.end_offset("t", p).await.unwrap(), n);
        total += n.saturating_sub(2);
    }
    // Committed offsets survive too: the group resumes after them.
    let c = log.subscribe("g", "t").await.unwrap();
    expect_assigned(c.as_ref()).await;
    let got = take_records(c.as_ref(), total as usize).await;
    for (_, offsets) in by_partition(&got) {
        assert_eq!(offsets[0], 2);
    }
    c.close().await.unwrap();
}

/// Prints the last lines of the broker's log (when a probe fails).
fn dump_broker_log(broker: &TansuBroker) {
    let log = broker.log();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    for l in tail.iter().rev() {
        eprintln!("tansu: {l}");
    }
}

/// Static membership (`group.instance.id`) against tansu: a probe, not a check of the adapter
/// (run with `--ignored --nocapture`). Against tansu 0.6.0 it is unreliable, see the report
/// in the crate docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "probe of tansu's static membership, unreliable on tansu 0.6.0: run by scripts/run-ignored.sh"]
async fn kafka_static_membership_probe() {
    let broker = broker!();
    let log = open(&broker);
    log.ensure_topic("t", 4).await.unwrap();
    let mut cfg1 = config(&broker);
    cfg1.group_instance_id = Some("node-1".into());
    let mut cfg2 = config(&broker);
    cfg2.group_instance_id = Some("node-2".into());
    let log1 = KafkaLog::new(cfg1).unwrap();
    let log2 = KafkaLog::new(cfg2.clone()).unwrap();
    let c1 = log1.subscribe("g", "t").await.unwrap();
    eprintln!("c1 first: {:?}", expect_assigned(c1.as_ref()).await);
    let c2 = log2.subscribe("g", "t").await.unwrap();
    let wait = Duration::from_secs(20);
    let Ok(ConsumerEvent::Revoked { done, .. }) =
        tokio::time::timeout(wait, next_event(c1.as_ref())).await
    else {
        dump_broker_log(&broker);
        panic!("c1 saw no revocation within {wait:?} of c2 joining");
    };
    done.send(()).unwrap();
    let a1 = expect_assigned(c1.as_ref()).await;
    let a2 = expect_assigned_some(c2.as_ref()).await;
    eprintln!("split: {a1:?} {a2:?}");
    // A rolling restart of node-2: close (a static member sends no LeaveGroup), rejoin.
    c2.close().await.unwrap();
    let started = std::time::Instant::now();
    let log2b = KafkaLog::new(cfg2).unwrap();
    let c2b: Arc<dyn LogConsumer> = Arc::from(log2b.subscribe("g", "t").await.unwrap());
    let t = {
        let c2b = c2b.clone();
        tokio::spawn(
            async move { tokio::time::timeout(wait, expect_assigned_some(c2b.as_ref())).await },
        )
    };
    // With KIP-345 (Kafka >= 2.3) the others see no rebalance at all.
    match tokio::time::timeout(Duration::from_secs(10), next_event(c1.as_ref())).await {
        Ok(ConsumerEvent::Revoked { partitions, done }) => {
            eprintln!("c1 revoked {partitions:?} after {:?}", started.elapsed());
            done.send(()).unwrap();
            eprintln!("c1 then {:?}", expect_assigned(c1.as_ref()).await);
        }
        Ok(other) => eprintln!("c1 got {other:?}"),
        Err(_) => eprintln!("c1 saw no rebalance in 10s"),
    }
    match t.await.unwrap() {
        Ok(a) => eprintln!("node-2 again: {a:?} after {:?}", started.elapsed()),
        Err(_) => {
            dump_broker_log(&broker);
            panic!("node-2 not assigned within {wait:?} of its restart");
        }
    }
}

/// The `max.poll.interval.ms` trap: an engine that does not call `next` for longer than the
/// poll interval must not be evicted from the group (the poll thread keeps polling, with the
/// partitions paused while the buffer is full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_idle_engine_is_not_evicted_past_max_poll_interval() {
    let broker = broker!();
    let mut cfg = config(&broker);
    cfg.max_poll_interval = Duration::from_secs(7);
    cfg.revoke_timeout = Duration::from_secs(5);
    cfg.buffer_records = 4;
    let log = KafkaLog::new(cfg).unwrap();
    log.ensure_topic("t", 2).await.unwrap();
    let c = log.subscribe("g", "t").await.unwrap();
    assert_eq!(expect_assigned(c.as_ref()).await, vec![0, 1]);
    for i in 0..50usize {
        log.append("t", format!("m{i}").as_bytes(), Bytes::new(), vec![])
            .await
            .unwrap();
    }
    // The engine is busy elsewhere for longer than max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let got = take_records(c.as_ref(), 50).await;
    assert_eq!(got.len(), 50);
    // Still the owner: no revocation was pending, and commits are accepted.
    for p in 0..2 {
        let end = log.end_offset("t", p).await.unwrap();
        c.commit(p, end).await.unwrap();
        assert_eq!(c.committed(p).await.unwrap(), Some(end));
    }
    expect_quiet(c.as_ref(), Duration::from_millis(300)).await;
    c.close().await.unwrap();
}

/// Drives a consumer for `for_`: answers group events at once (`done` right away), and checks
/// that every record it is handed belongs to a partition assigned to it at that moment (none
/// between a `Revoked` and the next `Assigned`). Returns the (partition, offset) pairs read.
async fn drive(c: Arc<dyn LogConsumer>, for_: Duration) -> Vec<(Partition, u64)> {
    let until = tokio::time::Instant::now() + for_;
    let mut assigned: Vec<Partition> = Vec::new();
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < until {
        match c.next(100).await.unwrap() {
            ConsumerEvent::Assigned(p) => assigned = p,
            ConsumerEvent::Revoked { partitions, done } => {
                assigned.retain(|p| !partitions.contains(p));
                done.send(()).unwrap();
            }
            ConsumerEvent::Records(records) => {
                for r in records {
                    assert!(
                        assigned.contains(&r.partition),
                        "record of partition {} delivered outside the assignment {assigned:?}",
                        r.partition
                    );
                    seen.push((r.partition, r.offset));
                }
            }
        }
    }
    seen
}

/// Records fetched before a revocation but not yet delivered are dropped, never handed out
/// after `Revoked`: the new owner reads them from the committed offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_undelivered_records_are_dropped_on_revocation() {
    let broker = broker!();
    let log = open(&broker);
    log.ensure_topic("t", 2).await.unwrap();
    let c1: Arc<dyn LogConsumer> = Arc::from(log.subscribe("g", "t").await.unwrap());
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1]);
    let keys = [key_for(0, 2, 7), key_for(1, 2, 7)];
    for i in 0..20usize {
        log.append("t", &keys[i % 2], Bytes::from(format!("r{i}")), vec![])
            .await
            .unwrap();
    }
    // c1's poll thread fetches them into its buffer; c1's engine does not read them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c2: Arc<dyn LogConsumer> = Arc::from(log.subscribe("g", "t").await.unwrap());
    // Let the revocation reach c1's poll thread (heartbeats every 500 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The revocation comes before the buffered records, which are then never delivered.
    let (revoked, done) = expect_revoked(c1.as_ref()).await;
    assert_eq!(revoked, vec![0, 1]);
    done.send(()).unwrap();
    // Nothing was committed: between them they read every record again, each only while it
    // owns its partition (tansu sometimes runs a second rebalance right after this one).
    let (seen1, seen2) = tokio::join!(
        drive(c1.clone(), Duration::from_secs(10)),
        drive(c2.clone(), Duration::from_secs(10))
    );
    let all: BTreeSet<(Partition, u64)> = seen1.iter().chain(&seen2).copied().collect();
    let expected: BTreeSet<(Partition, u64)> =
        (0..2).flat_map(|p| (0..10).map(move |o| (p, o))).collect();
    assert_eq!(all, expected, "c1 read {seen1:?}, c2 read {seen2:?}");
    c2.close().await.unwrap();
    c1.close().await.unwrap();
}
