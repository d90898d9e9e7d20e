//! Checkpoints: the engine commits a partition's offset only after the store has made the
//! effects before it durable (`StateStore::sync`). The embedded store makes effects visible
//! before they are durable; a crash rolls it back to its last sync, and the records after it
//! must then still be uncommitted in the log, so that they are delivered and applied again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use loyalty_core::engine::EngineConfig;
use loyalty_core::ports::StateStore;
use loyalty_testkit::faulty_store::FaultyStore;
use loyalty_tests::cluster::{Backend, EngineNode, World, PARTITIONS};

async fn committed(w: &World) -> Vec<Option<u64>> {
    let consumer = w
        .log
        .subscribe("loyalty-engine", "pos-commands")
        .await
        .unwrap();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        out.push(consumer.committed(p).await.unwrap());
    }
    consumer.close().await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_wait_for_the_store_to_be_durable() {
    const MEMBERS: usize = 200;
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    // The embedded store, on a disk that refuses fsync until told otherwise.
    let store = FaultyStore::new(Arc::clone(&w.store) as Arc<dyn StateStore>);
    store.refuse_sync.store(true, Ordering::SeqCst);
    let config = EngineConfig {
        checkpoint_every: Duration::from_millis(5),
        ..EngineConfig::default()
    };
    let start = |name: &str| {
        EngineNode::start(
            name,
            Arc::clone(&w.log),
            Arc::clone(&store) as Arc<dyn StateStore>,
            Arc::clone(&w.cache),
            config.clone(),
        )
    };

    // The store applies everything but can never make it durable.
    let mut node = start("a");
    w.enrol(MEMBERS).await;
    let mut spend = vec![0i64; MEMBERS];
    for n in 0..3 {
        let sent = join_all((0..MEMBERS).map(|i| w.purchase(i, n))).await;
        for (i, cents) in sent.into_iter().enumerate() {
            spend[i] += cents;
        }
    }
    w.wait_applied(&vec![3; MEMBERS]).await;
    node.stop();
    assert!(
        store.syncs.load(Ordering::SeqCst) > 0,
        "the engine tried to checkpoint"
    );
    assert_eq!(
        committed(&w).await,
        vec![None; PARTITIONS as usize],
        "no offset may be committed while the effects before it are not durable"
    );

    // Once the store can sync, a new node is delivered every record again: the effects are
    // recorded, so they are replays, and its checkpoints reach the end of every partition.
    store.refuse_sync.store(false, Ordering::SeqCst);
    let mut node = start("b");
    let mut ends = Vec::new();
    for p in 0..PARTITIONS {
        ends.push(Some(w.log.end_offset("pos-commands", p).await.unwrap()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = committed(&w).await;
        if now == ends {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoints never reached the end: {now:?} vs {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop();
    w.check(&spend, &vec![3; MEMBERS]).await;
}
