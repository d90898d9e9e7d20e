//! Benchmark (ignored by default): the end-to-end ingestion rate of one engine node on the local
//! Kafka-compatible broker, next to the raw produce→consume rate of the same broker measured in
//! the same run with records of the same size. Run it with
//! `cargo test --release -p loyalty-tests --test ingest_bench -- --ignored --nocapture`
//! (`LOYALTY_BENCH_EVENTS`, default 20 000). It prints figures and asserts only correctness.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use loyalty_core::command::PosCommand;
use loyalty_domain::{Cents, Currency};
use loyalty_tests::cluster::{Backend, World};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const IN_FLIGHT: usize = 512;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (prints rates, minutes long): run by scripts/run-ignored.sh and loadtest/bench.sh"]
async fn ingestion_rate_next_to_the_raw_broker_rate() {
    let n: usize = std::env::var("LOYALTY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let members = 1000;
    let Some(w) = World::new(Backend::KafkaRedis).await else {
        return;
    };
    let brokers = w.brokers().expect("kafka world");

    // A purchase envelope, for the record size.
    let sample = w
        .envelope(
            "p-999-99999".into(),
            PosCommand::Purchase {
                member_id: Some(w.member(999)),
                amount_cents: Cents::new(1234).unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
        )
        .encode();

    // Raw: rdkafka produce (idempotent, acks=all) then consume, same broker, same size.
    w.log.ensure_topic("raw-bench", 12).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let t0 = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let producer = &producer;
            let payload = sample.clone();
            async move {
                let key = format!("k{}", i % members);
                producer
                    .send(
                        FutureRecord::to("raw-bench")
                            .key(&key)
                            .payload(payload.as_ref()),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let produced = t0.elapsed();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "raw-bench")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["raw-bench"]).unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(300);
        while read < n && Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                read += 1;
            }
        }
        read
    })
    .await
    .unwrap();
    let raw = t0.elapsed();
    assert_eq!(read, n, "the raw consumer read everything");

    // End to end: one engine node applies purchases appended by the platform's Kafka log
    // (what the gateway does once a request is validated) until durable in the store.
    let mut node = w.node("bench");
    w.enrol(members).await;
    w.wait_applied(&vec![0; members]).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let t1 = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let (w, sent) = (&w, Arc::clone(&sent));
            async move {
                w.purchase(i % members, i / members).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let appended = t1.elapsed();
    let per_member: Vec<u64> = (0..members)
        .map(|m| ((n - m).div_ceil(members)) as u64)
        .collect();
    w.wait_applied(&per_member).await;
    let e2e = t1.elapsed();
    node.stop();

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "records: {n} of {} bytes, {IN_FLIGHT} in flight, 12 partitions, one tansu broker (sqlite)",
        sample.len()
    );
    println!(
        "raw rdkafka produce: {:.0}/s; produce→consume: {:.0}/s",
        rate(produced),
        rate(raw)
    );
    println!(
        "platform append (KafkaLog): {:.0}/s; append→applied durably by one engine node: {:.0}/s ({:.0} % of raw)",
        rate(appended),
        rate(e2e),
        100.0 * raw.as_secs_f64() / e2e.as_secs_f64()
    );
}
