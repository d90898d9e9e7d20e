//! The event log contract: scenarios every [`EventLog`] adapter must pass (the embedded log in
//! `libs/embedded`, Kafka in `libs/kafka`), and the helpers their own tests use to drive a
//! [`LogConsumer`]. Each scenario panics with what went wrong, as an assertion in a test does.
//!
//! What is not in the contract stays with the adapter: the embedded log's deterministic
//! round-robin assignment and reopen from disk, Kafka's pause under back-pressure, static
//! membership, and survival of a broker kill.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use loyalty_core::ports::{partition_for, ConsumerEvent, EventLog, LogConsumer, Partition, Record};
use loyalty_core::Error;
use tokio::sync::oneshot;

/// Generous bound on any single wait (a Kafka group join takes seconds), so that a bug fails
/// the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(45);

/// A key that lands on `partition` of a topic with `partitions` partitions.
pub fn key_for(partition: Partition, partitions: u32, salt: usize) -> Vec<u8> {
    (0..)
        .map(|i| format!("key-{salt}-{i}").into_bytes())
        .find(|k| partition_for(k, partitions) == partition)
        .unwrap_or_default()
}

/// Polls until the next group event or non-empty batch of records.
pub async fn next_event(c: &dyn LogConsumer) -> ConsumerEvent {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match c.next(100).await {
                Ok(ConsumerEvent::Records(r)) if r.is_empty() => continue,
                Ok(other) => return other,
                Err(e) => panic!("polling the consumer: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no consumer event within {PATIENCE:?}"))
}

pub async fn expect_assigned(c: &dyn LogConsumer) -> Vec<Partition> {
    match next_event(c).await {
        ConsumerEvent::Assigned(p) => p,
        other => panic!("expected Assigned, got {other:?}"),
    }
}

pub async fn expect_revoked(c: &dyn LogConsumer) -> (Vec<Partition>, oneshot::Sender<()>) {
    match next_event(c).await {
        ConsumerEvent::Revoked { partitions, done } => (partitions, done),
        other => panic!("expected Revoked, got {other:?}"),
    }
}

/// Waits for an assignment that is not empty (a member may first be handed nothing while
/// others join), releasing anything revoked on the way.
pub async fn expect_assigned_some(c: &dyn LogConsumer) -> Vec<Partition> {
    loop {
        match next_event(c).await {
            ConsumerEvent::Assigned(p) if !p.is_empty() => return p,
            ConsumerEvent::Assigned(_) => {}
            ConsumerEvent::Revoked { done, .. } => {
                let _ = done.send(());
            }
            ConsumerEvent::Records(r) => panic!("unexpected records {r:?}"),
        }
    }
}

/// Reads records until `n` arrived (fails on group events or a timeout).
pub async fn take_records(c: &dyn LogConsumer, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        while out.len() < n {
            match c.next(n - out.len()).await {
                Ok(ConsumerEvent::Records(r)) => out.extend(r),
                Ok(other) => panic!("expected records, got {other:?}"),
                Err(e) => panic!("polling the consumer: {e}"),
            }
        }
    })
    .await;
    if read.is_err() {
        panic!("only {} of {n} records arrived in time", out.len());
    }
    out
}

/// Asserts that nothing more arrives for `for_`.
pub async fn expect_quiet(c: &dyn LogConsumer, for_: Duration) {
    let until = tokio::time::Instant::now() + for_;
    while tokio::time::Instant::now() < until {
        match c.next(100).await {
            Ok(ConsumerEvent::Records(r)) if r.is_empty() => {}
            Ok(other) => panic!("expected nothing, got {other:?}"),
            Err(e) => panic!("polling the consumer: {e}"),
        }
    }
}

/// The offsets of `records`, by partition, in the order read.
pub fn by_partition(records: &[Record]) -> BTreeMap<Partition, Vec<u64>> {
    let mut map: BTreeMap<Partition, Vec<u64>> = BTreeMap::new();
    for r in records {
        map.entry(r.partition).or_default().push(r.offset);
    }
    map
}

/// Appends 120 records with 13 keys to a new 4-partition topic `topic`: each lands on its key's
/// partition with contiguous offsets from 0, the partition's end follows, and a consumer group
/// reads every record back (key, payload, headers) in order within each partition. Returns the
/// records appended, sorted by partition and offset.
pub async fn appends_land_in_key_partitions(log: &dyn EventLog, topic: &str) -> Vec<Record> {
    assert_eq!(log.ensure_topic(topic, 4).await.ok(), Some(4));
    // An existing topic keeps its partition count.
    assert_eq!(log.ensure_topic(topic, 8).await.ok(), Some(4));
    let mut expected: BTreeMap<(Partition, u64), Record> = BTreeMap::new();
    for i in 0..120u32 {
        let key = format!("member-{}", i % 13).into_bytes();
        let payload = Bytes::from(format!("payload-{i}").repeat((i % 5) as usize));
        let headers = if i % 7 == 0 {
            Vec::new()
        } else {
            vec![
                ("event-id".to_string(), Bytes::from(format!("ev-{i}"))),
                ("bin".to_string(), Bytes::from(vec![0u8, 255, i as u8])),
            ]
        };
        let at = log
            .append(topic, &key, payload.clone(), headers.clone())
            .await
            .unwrap_or_else(|e| panic!("append {i}: {e}"));
        assert_eq!(at.partition, partition_for(&key, 4));
        expected.insert(
            (at.partition, at.offset),
            Record {
                partition: at.partition,
                offset: at.offset,
                key: Bytes::from(key),
                payload,
                headers,
            },
        );
    }
    let records: Vec<Record> = expected.values().cloned().collect();
    let mut touched = 0;
    for (p, offsets) in by_partition(&records) {
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
        assert_eq!(
            log.end_offset(topic, p).await.ok(),
            Some(offsets.len() as u64)
        );
        touched += 1;
    }
    assert!(touched > 1, "13 keys should spread over several partitions");
    assert!(matches!(
        log.end_offset(topic, 4).await,
        Err(Error::Invalid(_))
    ));

    let c = subscribe(log, "readers", topic).await;
    assert_eq!(expect_assigned(c.as_ref()).await, vec![0, 1, 2, 3]);
    let got = take_records(c.as_ref(), expected.len()).await;
    let mut last: BTreeMap<Partition, u64> = BTreeMap::new();
    for r in &got {
        if let Some(prev) = last.insert(r.partition, r.offset) {
            assert!(r.offset > prev, "partition {} out of order", r.partition);
        }
        assert_eq!(Some(r), expected.get(&(r.partition, r.offset)));
    }
    assert_eq!(got.len(), expected.len());
    close(c.as_ref()).await;
    records
}

/// Twenty records on a new 2-partition topic `topic`; a member of group `group` reads them,
/// commits 3 and 7 (then 2, which is no rewind) and closes. The next member of the group is
/// delivered exactly what was not committed, and nothing more; another group reads everything.
pub async fn consumer_redelivers_from_committed_offset(
    log: &dyn EventLog,
    topic: &str,
    group: &str,
) {
    assert!(log.ensure_topic(topic, 2).await.is_ok());
    let keys = [key_for(0, 2, 0), key_for(1, 2, 0)];
    for i in 0..20usize {
        let appended = log
            .append(topic, &keys[i % 2], Bytes::from(format!("r{i}")), vec![])
            .await;
        assert!(appended.is_ok(), "append {i}: {appended:?}");
    }

    let c = subscribe(log, group, topic).await;
    assert_eq!(expect_assigned(c.as_ref()).await, vec![0, 1]);
    assert_eq!(c.committed(0).await.ok(), Some(None));
    let got = take_records(c.as_ref(), 20).await;
    let per = by_partition(&got);
    assert_eq!(per[&0], (0..10).collect::<Vec<_>>());
    assert_eq!(per[&1], (0..10).collect::<Vec<_>>());
    assert!(c.commit(0, 3).await.is_ok());
    assert!(c.commit(1, 7).await.is_ok());
    // Going backwards is a no-op, not a rewind.
    assert!(c.commit(1, 2).await.is_ok());
    assert_eq!(c.committed(0).await.ok(), Some(Some(3)));
    assert_eq!(c.committed(1).await.ok(), Some(Some(7)));
    close(c.as_ref()).await;

    let c = subscribe(log, group, topic).await;
    assert_eq!(expect_assigned(c.as_ref()).await, vec![0, 1]);
    let got = take_records(c.as_ref(), 7 + 3).await;
    let per = by_partition(&got);
    assert_eq!(per[&0], (3..10).collect::<Vec<_>>());
    assert_eq!(per[&1], (7..10).collect::<Vec<_>>());
    expect_quiet(c.as_ref(), Duration::from_millis(500)).await;
    close(c.as_ref()).await;

    let other = subscribe(log, &format!("{group}-other"), topic).await;
    expect_assigned(other.as_ref()).await;
    assert_eq!(take_records(other.as_ref(), 20).await.len(), 20);
    close(other.as_ref()).await;
}

/// A paused partition yields nothing appended after the pause while the others keep flowing;
/// once resumed, it yields everything it held back, in order, from where reading stopped.
pub async fn paused_partitions_wait_and_resume_in_order(
    log: &dyn EventLog,
    topic: &str,
    group: &str,
) {
    assert!(log.ensure_topic(topic, 2).await.is_ok());
    let keys = [key_for(0, 2, 1), key_for(1, 2, 1)];
    let append = |k: usize, i: usize| {
        let key = keys[k].clone();
        async move {
            let r = log
                .append(topic, &key, Bytes::from(format!("r{i}")), vec![])
                .await;
            assert!(r.is_ok(), "append {i}: {r:?}");
        }
    };
    let c = subscribe(log, group, topic).await;
    assert_eq!(expect_assigned(c.as_ref()).await, vec![0, 1]);
    for i in 0..4 {
        append(i % 2, i).await;
    }
    assert_eq!(take_records(c.as_ref(), 4).await.len(), 4);

    assert!(c.pause(&[0]).await.is_ok());
    // Records fetched before the pause may still come; give the adapter a moment to apply it.
    expect_quiet(c.as_ref(), Duration::from_millis(500)).await;
    for i in 4..14 {
        append(i % 2, i).await;
    }
    let got = take_records(c.as_ref(), 5).await;
    assert!(
        got.iter().all(|r| r.partition == 1),
        "records of a paused partition were read: {got:?}"
    );
    expect_quiet(c.as_ref(), Duration::from_millis(1500)).await;

    assert!(c.resume(&[0]).await.is_ok());
    let got = take_records(c.as_ref(), 5).await;
    assert_eq!(
        by_partition(&got)[&0],
        vec![2, 3, 4, 5, 6],
        "partition 0 after resume"
    );
    close(c.as_ref()).await;
}

async fn subscribe(log: &dyn EventLog, group: &str, topic: &str) -> Box<dyn LogConsumer> {
    log.subscribe(group, topic)
        .await
        .unwrap_or_else(|e| panic!("subscribing {group} to {topic}: {e}"))
}

async fn close(c: &dyn LogConsumer) {
    if let Err(e) = c.close().await {
        panic!("closing a consumer: {e}");
    }
}
