//! Tests of the embedded event log. Each works in its own temporary directory.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loyalty_core::ports::{ConsumerEvent, EventLog, Partition};
use loyalty_core::Error;

use loyalty_testkit::log_contract::{
    self, by_partition, expect_assigned, expect_revoked, key_for, take_records,
};

use super::{partition_file, EmbeddedLog, LogConfig};

fn config() -> LogConfig {
    LogConfig {
        poll_interval: Duration::from_millis(30),
        ..LogConfig::default()
    }
}

fn open(dir: &std::path::Path) -> Arc<EmbeddedLog> {
    EmbeddedLog::open_with(dir, config()).unwrap()
}

#[tokio::test]
async fn log_appends_land_in_key_partitions_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let expected = log_contract::appends_land_in_key_partitions(log.as_ref(), "orders").await;

    drop(log);
    let log = open(dir.path());
    assert_eq!(log.partitions("orders"), Some(4));
    let mut reread = Vec::new();
    for p in 0..4 {
        reread.extend(log.read("orders", p, 0, 1000).unwrap());
    }
    assert_eq!(reread, expected);
    // Reading from the middle and past the end.
    let p = expected[0].partition;
    let tail = log.read("orders", p, 1, 2).unwrap();
    assert_eq!(
        tail.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(log.read("orders", p, 10_000, 5).unwrap().is_empty());
}

#[tokio::test]
async fn log_rejects_bad_names_partitions_and_topics() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for bad in ["", "a/b", "..", ".", "sp ace", "é", &"x".repeat(201)] {
        assert!(
            matches!(log.ensure_topic(bad, 1).await, Err(Error::Invalid(_))),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        log.ensure_topic("t", 0).await,
        Err(Error::Invalid(_))
    ));
    log.ensure_topic("t", 2).await.unwrap();
    assert!(matches!(
        log.end_offset("t", 2).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        log.append("nope", b"k", Bytes::new(), vec![]).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        log.subscribe("g", "nope").await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        log.subscribe("g/x", "t").await,
        Err(Error::Invalid(_))
    ));
    let huge = Bytes::from(vec![0u8; config().max_record_bytes + 1]);
    assert!(matches!(
        log.append("t", b"k", huge, vec![]).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn log_torn_tail_is_cut_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..10u8 {
        log.append(
            "t",
            b"k",
            Bytes::from(vec![i; 100]),
            vec![("h".into(), Bytes::from(vec![i]))],
        )
        .await
        .unwrap();
    }
    drop(log);
    let path = partition_file(&dir.path().join("t"), 0);

    // 1. Garbage after the last frame (a crash while writing a frame): all 10 survive.
    let clean_len = std::fs::metadata(&path).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        // A plausible length, a wrong checksum, a short body.
        f.write_all(&40u32.to_le_bytes()).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).unwrap();
    }
    let log = open(dir.path());
    assert_eq!(log.end_offset("t", 0).await.unwrap(), 10);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        clean_len,
        "tail not cut"
    );
    let at = log
        .append("t", b"k", Bytes::from_static(b"eleven"), vec![])
        .await
        .unwrap();
    assert_eq!(at.offset, 10);
    drop(log);

    // 2. The last frame cut in the middle: it goes, the 10 before it stay.
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let log = open(dir.path());
    assert_eq!(log.end_offset("t", 0).await.unwrap(), 10);
    let records = log.read("t", 0, 0, 100).unwrap();
    assert_eq!(records.len(), 10);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.payload, Bytes::from(vec![i as u8; 100]));
        assert_eq!(
            r.headers,
            vec![("h".to_string(), Bytes::from(vec![i as u8]))]
        );
    }
    let at = log
        .append("t", b"k", Bytes::from_static(b"again"), vec![])
        .await
        .unwrap();
    assert_eq!(at.offset, 10);
    drop(log);

    // 3. A flipped byte inside an earlier frame: the scan stops there.
    let mut bytes = std::fs::read(&path).unwrap();
    let frame_len = bytes.len() / 11; // roughly inside the 6th frame
    bytes[frame_len * 5 + 20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let log = open(dir.path());
    let end = log.end_offset("t", 0).await.unwrap();
    assert!((4..=6).contains(&end), "end {end}");
    let records = log.read("t", 0, 0, 100).unwrap();
    assert_eq!(records.len() as u64, end);
    let at = log
        .append("t", b"k", Bytes::from_static(b"after"), vec![])
        .await
        .unwrap();
    assert_eq!(at.offset, end);
}

#[tokio::test]
async fn log_paused_partitions_wait_and_resume_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log_contract::paused_partitions_wait_and_resume_in_order(log.as_ref(), "paused", "g").await;
}

#[tokio::test]
async fn log_consumer_redelivers_from_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log_contract::consumer_redelivers_from_committed_offset(log.as_ref(), "t", "g").await;

    // Offsets are durable: another process (a reopened log) sees them.
    drop(log);
    let log = open(dir.path());
    let c = log.subscribe("g", "t").await.unwrap();
    expect_assigned(c.as_ref()).await;
    assert_eq!(c.committed(0).await.unwrap(), Some(3));
    assert_eq!(c.committed(1).await.unwrap(), Some(7));
    // Past the end is refused.
    assert!(matches!(c.commit(0, 11).await, Err(Error::Invalid(_))));
    let got = take_records(c.as_ref(), 7 + 3).await;
    assert_eq!(by_partition(&got)[&0], (3..10).collect::<Vec<_>>());
    assert_eq!(by_partition(&got)[&1], (7..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn log_append_wakes_a_waiting_consumer() {
    let dir = tempfile::tempdir().unwrap();
    // A poll interval far longer than the test: only a wake-up can return records early.
    let log = EmbeddedLog::open_with(
        dir.path(),
        LogConfig {
            poll_interval: Duration::from_secs(30),
            ..LogConfig::default()
        },
    )
    .unwrap();
    log.ensure_topic("t", 3).await.unwrap();
    let c = log.subscribe("g", "t").await.unwrap();
    assert_eq!(expect_assigned(c.as_ref()).await, vec![0, 1, 2]);
    let started = Instant::now();
    let (next, at) = tokio::join!(c.next(10), async {
        tokio::task::yield_now().await;
        log.append("t", b"late", Bytes::from_static(b"x"), vec![])
            .await
            .unwrap()
    });
    match next.unwrap() {
        ConsumerEvent::Records(r) => {
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].partition, r[0].offset), (at.partition, at.offset));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn log_consumer_is_fair_between_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.ensure_topic("t", 2).await.unwrap();
    for p in 0..2 {
        let key = key_for(p, 2, 1);
        for _ in 0..100 {
            log.append("t", &key, Bytes::from_static(b"x"), vec![])
                .await
                .unwrap();
        }
    }
    let c = log.subscribe("g", "t").await.unwrap();
    expect_assigned(c.as_ref()).await;
    for _ in 0..5 {
        let got = take_records(c.as_ref(), 10).await;
        let per = by_partition(&got);
        assert_eq!(per.get(&0).map(Vec::len), Some(5), "{per:?}");
        assert_eq!(per.get(&1).map(Vec::len), Some(5), "{per:?}");
    }
}

#[tokio::test]
async fn log_rebalance_waits_for_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.ensure_topic("t", 4).await.unwrap();
    let c1 = log.subscribe("g", "t").await.unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1, 2, 3]);

    let c2 = log.subscribe("g", "t").await.unwrap();
    // c1 holds everything: it is asked to give it all back. c2 held nothing: no Revoked.
    let (revoked, done) = expect_revoked(c1.as_ref()).await;
    assert_eq!(revoked, vec![0, 1, 2, 3]);
    // While c1 has not sent `done`, c2 gets nothing and c1 still owns (and may commit).
    for _ in 0..3 {
        match c2.next(10).await.unwrap() {
            ConsumerEvent::Records(r) => assert!(r.is_empty()),
            other => panic!("c2 got {other:?} before c1 released its partitions"),
        }
    }
    c1.commit(2, 0).await.unwrap();

    let released = Arc::new(AtomicBool::new(false));
    let c2_task = {
        let released = released.clone();
        tokio::spawn(async move {
            let assigned = expect_assigned(c2.as_ref()).await;
            (assigned, released.load(Ordering::SeqCst), c2)
        })
    };
    // Let c2's task start waiting (the test runtime has one thread).
    tokio::task::yield_now().await;
    released.store(true, Ordering::SeqCst);
    done.send(()).unwrap();
    let (assigned2, was_released, c2) = c2_task.await.unwrap();
    assert!(was_released, "c2 was assigned before c1 sent done");
    // Round robin in join order: c1 gets the even partitions, c2 the odd ones.
    assert_eq!(assigned2, vec![1, 3]);
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 2]);
    // c1 no longer owns partition 1.
    assert!(matches!(c1.commit(1, 0).await, Err(Error::Conflict(_))));

    // c2 closes: c1 revokes what it holds, then gets everything.
    c2.close().await.unwrap();
    let (revoked, done) = expect_revoked(c1.as_ref()).await;
    assert_eq!(revoked, vec![0, 2]);
    done.send(()).unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1, 2, 3]);
    assert!(matches!(c2.next(1).await, Err(Error::ShuttingDown)));
    drop(c2);

    // A third joins and is dropped (not closed) while holding partitions.
    let c3 = log.subscribe("g", "t").await.unwrap();
    let (_, done) = expect_revoked(c1.as_ref()).await;
    done.send(()).unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 2]);
    assert_eq!(expect_assigned(c3.as_ref()).await, vec![1, 3]);
    drop(c3);
    let (_, done) = expect_revoked(c1.as_ref()).await;
    done.send(()).unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn log_dropped_member_pending_done_counts_as_done() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.ensure_topic("t", 2).await.unwrap();
    let c1 = log.subscribe("g", "t").await.unwrap();
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1]);
    let c2 = log.subscribe("g", "t").await.unwrap();
    let (_, done) = expect_revoked(c1.as_ref()).await;
    // c1 dies mid-revocation, its `done` still alive somewhere: c2 must not wait forever.
    drop(c1);
    assert_eq!(expect_assigned(c2.as_ref()).await, vec![0, 1]);
    drop(done);

    // A member that never even saw its Revoked (undelivered) and is dropped: same.
    let c3 = log.subscribe("g", "t").await.unwrap();
    drop(c3);
    let (revoked, done) = expect_revoked(c2.as_ref()).await;
    assert_eq!(revoked, vec![0, 1]);
    done.send(()).unwrap();
    assert_eq!(expect_assigned(c2.as_ref()).await, vec![0, 1]);
}

#[tokio::test]
async fn log_commit_on_unowned_partition_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.ensure_topic("t", 2).await.unwrap();
    let key1 = key_for(1, 2, 2);
    log.append("t", &key1, Bytes::from_static(b"x"), vec![])
        .await
        .unwrap();

    let c1 = log.subscribe("g", "t").await.unwrap();
    // Before any assignment is delivered, the group already assigned: c1 owns both.
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0, 1]);
    let c2 = log.subscribe("g", "t").await.unwrap();
    let (_, done) = expect_revoked(c1.as_ref()).await;
    done.send(()).unwrap();
    // Between `done` and the new assignment, c1 owns nothing.
    assert_eq!(expect_assigned(c1.as_ref()).await, vec![0]);
    assert_eq!(expect_assigned(c2.as_ref()).await, vec![1]);
    assert!(matches!(c1.commit(1, 1).await, Err(Error::Conflict(m)) if m == "partition not owned"));
    assert!(matches!(c1.commit(9, 0).await, Err(Error::Invalid(_))));
    c2.commit(1, 1).await.unwrap();
    assert_eq!(c1.committed(1).await.unwrap(), Some(1));
    c2.close().await.unwrap();
    assert!(matches!(c2.commit(1, 1).await, Err(Error::Conflict(_))));
}

/// Appends `tasks × per_task` records concurrently; returns (partition, offset, payload) of each
/// and the time taken.
async fn concurrent_appends(
    log: &Arc<EmbeddedLog>,
    tasks: usize,
    per_task: usize,
) -> (Vec<(Partition, u64, Bytes)>, Duration) {
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let key = format!("member-{t}-{}", i % 10);
                    let payload = Bytes::from(format!("{t}:{i}"));
                    let at = log
                        .append("t", key.as_bytes(), payload.clone(), vec![])
                        .await
                        .unwrap();
                    out.push((at.partition, at.offset, payload));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    (all, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_concurrent_appends_are_all_acknowledged_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.ensure_topic("t", 4).await.unwrap();
    let (acked, took) = concurrent_appends(&log, 16, 500).await;
    assert_eq!(acked.len(), 8000);
    eprintln!(
        "16 x 500 durable appends in {took:?}: {:.0} appends/s",
        8000.0 / took.as_secs_f64()
    );
    let unique: HashSet<(Partition, u64)> = acked.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(unique.len(), acked.len(), "an offset was handed out twice");
    for p in 0..4 {
        let end = log.end_offset("t", p).await.unwrap();
        let mine: Vec<_> = acked.iter().filter(|(q, _, _)| *q == p).collect();
        assert_eq!(
            mine.len() as u64,
            end,
            "offsets of partition {p} are not contiguous"
        );
        let records = log.read("t", p, 0, usize::MAX).unwrap();
        assert_eq!(records.len() as u64, end);
        for (_, offset, payload) in mine {
            assert_eq!(&records[*offset as usize].payload, payload);
        }
    }
}

/// Throughput with many appenders (run with `--ignored --nocapture`; prints, asserts nothing
/// about timing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (prints rates, about 10 s in release): run by scripts/run-ignored.sh"]
async fn log_append_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.ensure_topic("t", 8).await.unwrap();
    for tasks in [1usize, 16, 64, 256] {
        let per_task = 40_000 / tasks;
        let (acked, took) = concurrent_appends(&log, tasks, per_task).await;
        eprintln!(
            "{tasks} appenders: {} durable appends in {took:?}: {:.0} appends/s",
            acked.len(),
            acked.len() as f64 / took.as_secs_f64()
        );
    }
}

/// A log whose writer never checkpoints on its own (only when it closes).
fn open_without_checkpoints(dir: &std::path::Path) -> Arc<EmbeddedLog> {
    let config = LogConfig {
        checkpoint_every: Duration::from_secs(3600),
        checkpoint_bytes: u64::MAX,
        ..config()
    };
    EmbeddedLog::open_with(dir, config).unwrap()
}

fn journal_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join(super::journal::JOURNAL_FILE))
        .unwrap()
        .len()
}

/// Appends `n` records with distinct payloads over the topic's partitions (empty so far);
/// returns each partition's payloads in offset order.
async fn append_spread(
    log: &EmbeddedLog,
    topic: &str,
    partitions: u32,
    n: usize,
) -> Vec<Vec<Bytes>> {
    let mut expected = vec![Vec::new(); partitions as usize];
    for i in 0..n {
        let payload = Bytes::from(format!("record {i}").into_bytes());
        let at = log
            .append(topic, format!("k{i}").as_bytes(), payload.clone(), vec![])
            .await
            .unwrap();
        assert_eq!(at.offset as usize, expected[at.partition as usize].len());
        expected[at.partition as usize].push(payload);
    }
    expected
}

/// Appends `n` records over topic `t`'s `partitions` in a log that never checkpoints, then
/// "crashes": no checkpoint, the writer left running, idle. Returns each partition's payloads.
async fn crash_after_appends(dir: &std::path::Path, partitions: u32, n: usize) -> Vec<Vec<Bytes>> {
    let log = open_without_checkpoints(dir);
    log.ensure_topic("t", partitions).await.unwrap();
    let expected = append_spread(&log, "t", partitions, n).await;
    assert!(
        journal_len(dir) > 0,
        "acknowledged appends are in the journal"
    );
    std::mem::forget(log);
    expected
}

/// Every partition of topic `t` holds exactly `expected` (its payloads in offset order).
fn assert_partitions(log: &EmbeddedLog, expected: &[Vec<Bytes>]) {
    for (p, want) in expected.iter().enumerate() {
        let got: Vec<Bytes> = log
            .read("t", p as Partition, 0, 10_000)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(&got, want, "partition {p}");
    }
}

#[tokio::test]
async fn log_journal_restores_what_a_crash_took_from_the_partition_files() {
    let dir = tempfile::tempdir().unwrap();
    let expected = crash_after_appends(dir.path(), 4, 200).await;
    // The kernel had written nothing of two partition files and half of a third.
    let topic_dir = dir.path().join("t");
    let cut = |p: Partition, keep: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(partition_file(&topic_dir, p))
            .unwrap()
            .set_len(keep)
            .unwrap();
    };
    cut(0, 0);
    cut(1, 0);
    let half = std::fs::metadata(partition_file(&topic_dir, 2))
        .unwrap()
        .len()
        / 2;
    cut(2, half);

    let log = open(dir.path());
    assert_partitions(&log, &expected);
    assert_eq!(journal_len(dir.path()), 0, "replayed, then emptied");
    // Appends go on after the records restored.
    let at = log
        .append("t", b"k0", Bytes::from_static(b"after"), vec![])
        .await
        .unwrap();
    assert_eq!(at.offset as usize, expected[at.partition as usize].len());
}

#[tokio::test]
async fn log_journal_torn_tail_is_ignored_and_a_clean_close_empties_it() {
    let dir = tempfile::tempdir().unwrap();
    let expected = crash_after_appends(dir.path(), 2, 50).await;
    // The kernel had written nothing of partition 0: its records are in the entries before
    // the torn one.
    std::fs::OpenOptions::new()
        .write(true)
        .open(partition_file(&dir.path().join("t"), 0))
        .unwrap()
        .set_len(0)
        .unwrap();
    // The crash came in the middle of writing an entry that was never synced (never acknowledged).
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(super::journal::JOURNAL_FILE))
            .unwrap();
        f.write_all(&500u32.to_le_bytes()).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2]).unwrap();
    }
    let log = open_without_checkpoints(dir.path());
    assert_partitions(&log, &expected);
    log.append("t", b"k", Bytes::from_static(b"more"), vec![])
        .await
        .unwrap();
    assert!(journal_len(dir.path()) > 0);
    drop(log);
    assert_eq!(journal_len(dir.path()), 0, "a clean close checkpoints");
}

#[tokio::test]
async fn log_journal_checkpoints_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        checkpoint_every: Duration::from_secs(3600),
        checkpoint_bytes: 4096,
        ..config()
    };
    let log = EmbeddedLog::open_with(dir.path(), config).unwrap();
    log.ensure_topic("t", 2).await.unwrap();
    append_spread(&log, "t", 2, 200).await;
    // Each record's entry is about 60 bytes: without checkpoints the journal would hold
    // 200 of them.
    assert!(
        journal_len(dir.path()) < 4096 + 200,
        "journal {} bytes",
        journal_len(dir.path())
    );
}
