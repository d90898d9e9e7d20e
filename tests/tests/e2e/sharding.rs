//! Member actors sharded across engine nodes of one consumer group, sharing the log, the store
//! and the cache: nodes are killed, stopped and added while purchases stream in, and every
//! member still ends with exactly the effects of its events.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;
use loyalty_core::command::{CommandEnvelope, PosCommand};
use loyalty_core::ports::StateStore;
use loyalty_domain::{Cents, Currency, EventId, Profile};
use loyalty_tests::cluster::{Backend, EngineNode, World};

async fn a_node_killed_mid_stream_loses_and_duplicates_nothing(backend: Backend) {
    const MEMBERS: usize = 1000;
    const PURCHASES: usize = 6;
    let Some(w) = World::new(backend).await else {
        return;
    };
    let mut nodes = [w.node("a"), w.node("b"), w.node("c")];
    w.enrol(MEMBERS).await;
    let mut spend = vec![0i64; MEMBERS];
    let mut visits = vec![0u64; MEMBERS];
    for n in 0..PURCHASES {
        if n == PURCHASES / 2 {
            // Mid-stream, with batches in flight.
            nodes[1].kill();
        }
        let sent = join_all((0..MEMBERS).map(|i| w.purchase(i, n))).await;
        for (i, cents) in sent.into_iter().enumerate() {
            spend[i] += cents;
            visits[i] += 1;
        }
    }
    w.wait_applied(&visits).await;
    w.check(&spend, &visits).await;
    // Points: 50 at signup plus one per euro (every member stays Bronze).
    for i in (0..MEMBERS).step_by(97) {
        let s = w.store.member(&w.member(i)).await.unwrap().unwrap();
        assert_eq!(
            s.points as i64,
            50 + (0..PURCHASES)
                .map(|n| (100 + ((i * 37 + n * 11) % 900) as i64) / 100)
                .sum::<i64>()
        );
    }
    for n in nodes.iter_mut() {
        n.stop();
    }
}

async fn rebalances_under_load_on_one_member_apply_each_event_once(backend: Backend, hot: usize) {
    let Some(w) = World::new(backend).await else {
        return;
    };
    let mut a = w.node("a");
    w.enrol(1).await;
    let mut spend = 0i64;
    let mut others: Vec<EngineNode> = Vec::new();
    let step = hot / 6;
    for n in 0..hot {
        spend += w.purchase(0, n).await;
        match n / step {
            _ if n % step != 0 => {}
            1 => others.push(w.node("b")),
            2 => others.push(w.node("c")),
            3 => a.kill(),
            4 => others[0].stop(),
            5 => others.push(w.node("d")),
            _ => {}
        }
    }
    w.wait_applied(&[hot as u64]).await;
    w.check(&[spend], &[hot as u64]).await;
    for n in others.iter_mut() {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_log_records_change_nothing() {
    let w = World::new(Backend::Embedded).await.unwrap();
    let mut a = w.node("a");
    w.enrol(3).await;
    for n in 0..5 {
        for i in 0..3 {
            w.purchase(i, n).await;
        }
    }
    // The same events again, as a producer retry or a restore would deliver them.
    let mut spend = vec![0i64; 3];
    for n in 0..5 {
        for (i, s) in spend.iter_mut().enumerate() {
            *s += w.purchase(i, n).await;
        }
    }
    w.send(w.envelope(
        format!("enrol.{}", w.member(0)),
        PosCommand::Enrol {
            member_id: w.member(0),
            profile: Profile {
                phone: w.phone(0),
                name: None,
                birthday: None,
                consent: Default::default(),
                email: None,
            },
        },
    ))
    .await;
    // A last purchase per member orders the check after every replay.
    for (i, s) in spend.iter_mut().enumerate() {
        *s += w.purchase(i, 99).await;
    }
    w.wait_applied(&[6, 6, 6]).await;
    w.check(&spend, &[6, 6, 6]).await;
    a.stop();
}

/// A member whose last command of a batch is a replay: the batch takes the member's state from
/// its actor (no reply of the batch carries it) and still writes what the member's earlier
/// commands of the batch changed, and its status.
#[actix_rt::test]
async fn a_batch_ending_a_member_with_a_replay_writes_what_it_changed() {
    let w = World::new(Backend::Embedded).await.unwrap();
    // Appended before any engine runs, so that the partition's first batch holds all three:
    // the enrolment, a purchase, and the same purchase again (a replay).
    w.enrol(1).await;
    let spend = w.purchase(0, 0).await;
    w.purchase(0, 0).await;
    let mut a = w.node("a");
    w.wait_applied(&[1]).await;
    w.check(&[spend], &[1]).await;
    a.stop();
}

/// A node that lost its partition without noticing (a zombie) still holds a member's old state
/// in memory: its write is refused by the store's version check, nothing of its batch lands,
/// and a retry rebuilds from the newer owner's state.
#[actix_rt::test]
async fn a_zombie_owner_cannot_overwrite_the_new_owners_state() {
    use loyalty_core::engine::shard::{Shard, ShardDeps};
    use loyalty_core::ports::Record;
    use loyalty_core::programs::ProgramCache;

    let w = World::new(Backend::Embedded).await.unwrap();
    let store: Arc<dyn StateStore> = w.store.clone();
    let programs = ProgramCache::new(Arc::clone(&store));
    let keys = loyalty_core::sealing::KeyRing::dev();
    let deps = ShardDeps {
        store: &store,
        programs: &programs,
        keys: &keys,
    };
    let record = |offset: u64, env: CommandEnvelope| Record {
        partition: 0,
        offset,
        key: Bytes::from(env.key()),
        payload: env.encode(&loyalty_core::sealing::KeyRing::dev()).unwrap(),
        headers: Vec::new(),
    };
    let m = w.member(0);
    let enrol = w.envelope(
        format!("enrol.{m}"),
        PosCommand::Enrol {
            member_id: m.clone(),
            profile: Profile {
                phone: w.phone(0),
                name: None,
                birthday: None,
                consent: Default::default(),
                email: None,
            },
        },
    );
    let purchase = |n: usize, cents: i64| {
        w.envelope(
            format!("z-{n}"),
            PosCommand::Purchase {
                member_id: Some(m.clone()),
                amount_cents: Cents::new(cents).unwrap(),
                currency: Currency::parse("EUR").unwrap(),
                items: Vec::new(),
            },
        )
    };

    let mut zombie = Shard::new(0);
    zombie
        .process(&deps, &[record(0, enrol), record(1, purchase(1, 1000))])
        .await
        .unwrap();
    assert_eq!(store.member(&m).await.unwrap().unwrap().version, 2);

    // The partition moved: the new owner applies the next purchase from the store's state.
    let mut owner = Shard::new(0);
    owner
        .process(&deps, &[record(2, purchase(2, 2000))])
        .await
        .unwrap();
    assert_eq!(store.member(&m).await.unwrap().unwrap().version, 3);

    // The zombie, still at version 2 in memory, is fenced: nothing of its batch is written.
    let err = zombie.process(&deps, &[record(3, purchase(3, 4000))]).await;
    assert!(
        matches!(err, Err(loyalty_core::Error::Conflict(_))),
        "zombie write accepted"
    );
    let s = store.member(&m).await.unwrap().unwrap();
    assert_eq!((s.version, s.spend_cents), (3, 3000));
    assert!(store
        .processed(&w.franchise.id, &[EventId::parse("z-3").unwrap()])
        .await
        .unwrap()[0]
        .is_none());

    // Its retry starts from the store's truth.
    zombie
        .process(&deps, &[record(3, purchase(3, 4000))])
        .await
        .unwrap();
    let s = store.member(&m).await.unwrap().unwrap();
    assert_eq!((s.version, s.spend_cents, s.visits), (4, 7000, 3));
    assert_eq!(s.points, 50 + 10 + 20 + 40);
    let ledger = store.ledger(&m, None, 100).await.unwrap();
    assert_eq!(
        ledger.iter().map(|e| e.points).sum::<i64>(),
        s.points as i64
    );
    assert_eq!(ledger.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_node_killed_mid_stream_loses_and_duplicates_nothing() {
    a_node_killed_mid_stream_loses_and_duplicates_nothing(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_redis_a_node_killed_mid_stream_loses_and_duplicates_nothing() {
    a_node_killed_mid_stream_loses_and_duplicates_nothing(Backend::KafkaRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_rebalances_under_load_on_one_member_apply_each_event_once() {
    rebalances_under_load_on_one_member_apply_each_event_once(Backend::Embedded, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_redis_rebalances_under_load_on_one_member_apply_each_event_once() {
    rebalances_under_load_on_one_member_apply_each_event_once(Backend::KafkaRedis, 600).await;
}
