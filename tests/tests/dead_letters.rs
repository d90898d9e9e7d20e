//! A record the engine cannot use goes to the dead-letter topic with its reason, and the
//! partition it sat on keeps flowing.

use bytes::Bytes;
use loyalty_core::ports::{partition_for, EventLog};
use loyalty_tests::spawn_app;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_poison_record_is_dead_lettered_and_its_partition_keeps_flowing() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol(&f, "+33600000010").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Garbage on the member's own partition, ahead of the member's next purchase.
    let poison = app
        .log
        .append(
            "pos-commands",
            m.as_bytes(),
            Bytes::from_static(b"\x00not a command"),
            vec![("origin".into(), Bytes::from_static(b"test"))],
        )
        .await
        .unwrap();
    assert_eq!(poison.partition, partition_for(m.as_bytes(), 4));

    let r = app.purchase(&f, "after-poison", &m, 500).await;
    assert_eq!(r.status(), StatusCode::OK, "the partition is blocked");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["member"]["points"], 55);

    let dlq = app.log.read("pos-commands-dlq", 0, 0, 10).unwrap();
    assert_eq!(dlq.len(), 1, "one dead letter");
    let header = |name: &str| {
        dlq[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("dlq-reason").as_deref(), Some("undecodable"));
    assert_eq!(
        header("origin").as_deref(),
        Some("test"),
        "original headers are kept"
    );
    assert_eq!(
        header("dlq-source").as_deref(),
        Some(format!("pos-commands/{}/{}", poison.partition, poison.offset).as_str())
    );
    assert_eq!(dlq[0].payload.as_ref(), b"\x00not a command");

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("loyalty_dead_letters_total{reason=\"undecodable\"} 1"),
        "{metrics}"
    );
}

/// The same on the real broker: a poison record on a member's Kafka partition is dead-lettered
/// with its reason, and the member's next purchase is applied. Skipped (with the reason) when
/// tansu or redis-server is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_poison_record_is_dead_lettered_and_its_partition_keeps_flowing() {
    use loyalty_core::ports::ConsumerEvent;
    use loyalty_tests::cluster::{Backend, World};

    let Some(w) = World::new(Backend::KafkaRedis).await else {
        return;
    };
    let mut node = w.node("a");
    w.enrol(1).await;
    let m = w.member(0);
    let poison = w
        .log
        .append(
            "pos-commands",
            m.as_str().as_bytes(),
            Bytes::from_static(b"{\"not\": \"a command\"}"),
            Vec::new(),
        )
        .await
        .unwrap();
    w.purchase(0, 1).await;
    w.wait_applied(&[1]).await;
    // The cache is written right after the store: wait for it (bounded).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while w.cache.status(&m).await.unwrap().map(|s| s.version) != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status never reached the cache"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let reader = w
        .log
        .subscribe("dlq-reader", "pos-commands-dlq")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let record = loop {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        if let ConsumerEvent::Records(rs) = reader.next(10).await.unwrap() {
            if let Some(r) = rs.into_iter().next() {
                break r;
            }
        }
    };
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("dlq-reason").as_deref(), Some("undecodable"));
    assert_eq!(
        header("dlq-source").as_deref(),
        Some(format!("pos-commands/{}/{}", poison.partition, poison.offset).as_str())
    );
    assert_eq!(record.payload.as_ref(), b"{\"not\": \"a command\"}");
    reader.close().await.unwrap();
    node.stop();
}
