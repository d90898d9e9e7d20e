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

/// A purchase dead-lettered because its program version did not exist yet is applied once the
/// version is written and the dead-letter topic replayed; a second replay replays nothing, and
/// a dry run counts without appending or moving the replay's offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_after_its_cause_is_fixed_is_applied_once() {
    use loyalty_core::command::{CommandEnvelope, PosCommand};
    use loyalty_core::dead_letters::{replay, ReplayOptions};
    use loyalty_domain::{Cents, Currency, EventId, FranchiseId, MemberId, StoreId};

    let app = spawn_app().await;
    let f = app.franchise("Café Replay").await;
    let m = app.enrol(&f, "+33600000011").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let points_before = app.status(&f, &m).await["points"].as_i64().unwrap();

    // A purchase judged by program version 2, which the franchise does not have yet.
    let env = CommandEnvelope {
        franchise_id: FranchiseId::parse(&f.id).unwrap(),
        store_id: StoreId::parse(&f.store_id).unwrap(),
        event_id: EventId::parse("replayed-1").unwrap(),
        program_version: 2,
        occurred_at: None,
        received_at: loyalty_core::provisioning::now(),
        request_id: None,
        reply_to: None,
        command: PosCommand::Purchase {
            member_id: Some(MemberId::parse(&m).unwrap()),
            amount_cents: Cents::new(2_000).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            items: Vec::new(),
        },
    };
    app.log
        .append(
            "pos-commands",
            m.as_bytes(),
            env.encode(&loyalty_core::sealing::KeyRing::dev()).unwrap(),
            Vec::new(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while app
        .log
        .read("pos-commands-dlq", 0, 0, 10)
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let dry = ReplayOptions {
        dry_run: true,
        ..ReplayOptions::default()
    };
    let counted = replay(app.log.as_ref(), "pos-commands-dlq", &dry)
        .await
        .unwrap();
    assert_eq!(
        counted.replayed.get("unknown-program"),
        Some(&1),
        "{counted:?}"
    );

    // The cause fixed: version 2 written (the same program).
    let r = app
        .put(
            &format!("/v1/franchises/{}/program", f.id),
            &f.hq_key,
            serde_json::json!({ "program": loyalty_tests::demo_program() }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let done = replay(
        app.log.as_ref(),
        "pos-commands-dlq",
        &ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        done.total_replayed(),
        1,
        "the dry run replayed nothing: {done:?}"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let points = app.status(&f, &m).await["points"].as_i64().unwrap();
        if points == points_before + 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "points {points}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = replay(
        app.log.as_ref(),
        "pos-commands-dlq",
        &ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(again.total_replayed(), 0, "{again:?}");
    let entries = app.ledger(&f, &m).await;
    let replayed: Vec<_> = entries
        .iter()
        .filter(|e| e["event_id"] == "replayed-1")
        .collect();
    assert_eq!(replayed.len(), 1, "applied once: {entries:?}");
}
