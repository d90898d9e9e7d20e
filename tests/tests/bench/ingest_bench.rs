//! Benchmarks (ignored by default): the end-to-end ingestion rate of one engine node, next to
//! the raw rate of the log behind it measured in the same run with records of the same size.
//!
//! - on the local Kafka-compatible broker (distributed mode): raw rdkafka produce→consume;
//! - on the embedded log (dev mode, durability on): raw `EmbeddedLog` append→consume.
//!
//! Both sides are timed the same way: from the first append until the last record is read (raw)
//! or applied (platform), with the consumer already in its group and reading meanwhile.
//!
//! Run them with
//! `cargo test --release -p loyalty-tests --test bench ingest_bench:: -- --ignored --nocapture`
//! (`LOYALTY_BENCH_EVENTS`, default 20 000 on Kafka and 100 000 embedded). They print figures
//! and assert only correctness. The raw broker measurement is shared with the multi-process
//! benchmark (`loyalty_tests::bench`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use loyalty_core::command::PosCommand;
use loyalty_core::engine::EngineConfig;
use loyalty_core::metrics::metrics;
use loyalty_core::ports::{ConsumerEvent, EventLog};
use loyalty_domain::{Cents, Currency};
use loyalty_embedded::log::EmbeddedLog;
use loyalty_tests::bench::{
    events, raw_kafka_produce_consume, thread_cpu_report, thread_cpu_seconds, IN_FLIGHT,
};
use loyalty_tests::cluster::{Backend, World, PARTITIONS};

const MEMBERS: usize = 1000;

/// A purchase envelope as the gateway appends it, for the record size.
fn sample(w: &World) -> Bytes {
    w.envelope(
        "p-999-99999".into(),
        PosCommand::Purchase {
            member_id: Some(w.member(999)),
            amount_cents: Cents::new(1234).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            items: Vec::new(),
        },
    )
    .encode(&loyalty_core::sealing::KeyRing::dev())
    .unwrap()
}

/// One engine node (the services' engine settings) applies `n` purchases appended by the
/// platform's log (what the gateway does once a request is validated) until durable in the store. Returns (append time, time until
/// every purchase is applied), both from the first append.
async fn platform_ingestion(w: &World, n: usize) -> (Duration, Duration) {
    let mut node = w.node_with("bench", EngineConfig::default());
    w.enrol(MEMBERS).await;
    w.wait_applied(&vec![0; MEMBERS]).await;
    let batches = &metrics().engine_batch_records;
    let (records0, batches0) = (batches.get_sample_sum(), batches.get_sample_count());
    let busy = &metrics().engine_batch_seconds;
    let busy0 = busy.get_sample_sum();
    let writer = &metrics().store_commit_seconds;
    let writer0 = writer.get_sample_sum();
    let sent = Arc::new(AtomicUsize::new(0));
    let cpu0 = thread_cpu_seconds();
    let t1 = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let sent = Arc::clone(&sent);
            async move {
                w.purchase(i % MEMBERS, i / MEMBERS).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let appended = t1.elapsed();
    let per_member: Vec<u64> = (0..MEMBERS)
        .map(|m| ((n - m).div_ceil(MEMBERS)) as u64)
        .collect();
    w.wait_applied(&per_member).await;
    let e2e = t1.elapsed();
    let cpu = thread_cpu_report(&cpu0, &thread_cpu_seconds());
    node.stop();
    let polls = batches.get_sample_count() - batches0;
    println!(
        "engine: {polls} partition batches, {:.1} records each on average; busy {:.2} s of {:.2} s",
        (batches.get_sample_sum() - records0) / polls.max(1) as f64,
        busy.get_sample_sum() - busy0,
        e2e.as_secs_f64()
    );
    println!(
        "store: group commits busy {:.2} s of {:.2} s",
        writer.get_sample_sum() - writer0,
        e2e.as_secs_f64()
    );
    println!("CPU by thread (this process): {cpu}");
    assert_eq!(sent.load(Ordering::Relaxed), n);
    (appended, e2e)
}

fn report(n: usize, raw_what: &str, raw: (Duration, Duration), platform: (Duration, Duration)) {
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{raw_what}: append {:.0}/s; append→consume (consumer reading meanwhile) {:.0}/s",
        rate(raw.0),
        rate(raw.1)
    );
    println!(
        "platform append: {:.0}/s; append→applied durably by one engine node: {:.0}/s ({:.0} % of raw append→consume)",
        rate(platform.0),
        rate(platform.1),
        100.0 * raw.1.as_secs_f64() / platform.1.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (prints rates, about 10 s in release, tansu and redis-server): run by scripts/run-ignored.sh and loadtest/bench.sh"]
async fn ingestion_rate_next_to_the_raw_broker_rate() {
    let n = events(20_000);
    let Some(w) = World::new(Backend::KafkaRedis).await else {
        return;
    };
    let brokers = w.brokers().expect("kafka world");
    let sample = sample(&w);

    // Raw: rdkafka produce (idempotent, acks=all) while a consumer that has already joined its
    // group reads, same broker, same size; from the first produce to the last record read.
    let (produced, raw) = raw_kafka_produce_consume(
        w.log.as_ref(),
        &brokers,
        "raw-bench",
        PARTITIONS,
        n,
        sample.clone(),
        MEMBERS,
    )
    .await;

    let platform = platform_ingestion(&w, n).await;
    println!(
        "records: {n} of {} bytes, {IN_FLIGHT} in flight, {PARTITIONS} partitions, one tansu broker (sqlite)",
        sample.len()
    );
    report(n, "raw rdkafka", (produced, raw), platform);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (prints rates, about 10 s in release): run by scripts/run-ignored.sh and loadtest/bench.sh"]
async fn dev_ingestion_rate_next_to_the_raw_embedded_log_rate() {
    let n = events(100_000);
    let Some(w) = World::new(Backend::Embedded).await else {
        return;
    };
    let sample = sample(&w);

    // Raw: the embedded log alone, in a directory of its own on the same disk: durable appends
    // while a consumer that has already joined its group reads them.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path().join("raw")).unwrap();
    log.ensure_topic("raw-bench", PARTITIONS).await.unwrap();
    let consumer = log.subscribe("raw-bench", "raw-bench").await.unwrap();
    let reader = tokio::spawn(async move {
        let mut read = 0;
        while read < n {
            match tokio::time::timeout(Duration::from_secs(60), consumer.next(2048))
                .await
                .expect("the raw consumer keeps reading")
                .unwrap()
            {
                ConsumerEvent::Records(rs) => read += rs.len(),
                ConsumerEvent::Assigned(_) => {}
                ConsumerEvent::Revoked { done, .. } => {
                    let _ = done.send(());
                }
            }
        }
        read
    });
    let t0 = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let (log, payload) = (&log, sample.clone());
            async move {
                let key = format!("k{}", i % MEMBERS);
                log.append("raw-bench", key.as_bytes(), payload, Vec::new())
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let appended = t0.elapsed();
    assert_eq!(reader.await.unwrap(), n);
    let raw = t0.elapsed();

    let platform = platform_ingestion(&w, n).await;
    println!(
        "records: {n} of {} bytes, {IN_FLIGHT} in flight, {PARTITIONS} partitions, embedded log and store (fsync on)",
        sample.len()
    );
    report(n, "raw EmbeddedLog", (appended, raw), platform);
}
