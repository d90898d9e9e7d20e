//! The engine under store faults, on the embedded log with the embedded store behind
//! [`FaultyStore`]:
//! - an event id reused for two members keeps the owner it was first told with, whatever
//!   order the partitions are applied in again after a crash (claimed before applying, on a
//!   store whose commits a crash can take back), and has one owner, the first commit, on the
//!   embedded store, whose durable commit is the claim;
//! - a partition whose store writes fail (transiently, or permanently) neither freezes the
//!   other partitions nor loses anything;
//! - batches only partly committed (a per-member store losing its connection mid-batch) are
//!   applied exactly once;
//! - shards spread over several worker threads keep each member's commands in log order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use loyalty_core::command::PosCommand;
use loyalty_core::engine::EngineConfig;
use loyalty_core::ports::{partition_for, StateStore};
use loyalty_core::replies::{ReplyResult, ReplySink, ReplyWaiters};
use loyalty_domain::{Cents, Currency, EventId, Outcome};
use loyalty_testkit::faulty_store::{Fault, FaultyStore};
use loyalty_tests::cluster::{Backend, EngineNode, World, PARTITIONS};

const WAIT: Duration = Duration::from_secs(60);

fn faulty(w: &World) -> Arc<FaultyStore> {
    FaultyStore::new(Arc::clone(&w.store) as Arc<dyn StateStore>)
}

fn node(
    w: &World,
    name: &str,
    store: &Arc<FaultyStore>,
    replies: Arc<dyn ReplySink>,
) -> EngineNode {
    EngineNode::start_with_replies(
        name,
        Arc::clone(&w.log),
        Arc::clone(store) as Arc<dyn StateStore>,
        Arc::clone(&w.cache),
        EngineConfig {
            max_batch: 64,
            checkpoint_every: Duration::from_millis(5),
            ..EngineConfig::default()
        },
        replies,
    )
}

/// Two members whose commands land on different partitions.
fn two_partitions(w: &World) -> (usize, usize) {
    let part = |i: usize| partition_for(w.member(i).as_str().as_bytes(), PARTITIONS);
    let other = (1..100)
        .find(|&j| part(j) != part(0))
        .expect("members on two partitions");
    (0, other)
}

fn purchase(
    w: &World,
    i: usize,
    event: &str,
    cents: i64,
) -> loyalty_core::command::CommandEnvelope {
    w.envelope(
        event.to_owned(),
        PosCommand::Purchase {
            member_id: Some(w.member(i)),
            amount_cents: Cents::new(cents).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            items: Vec::new(),
        },
    )
}

/// Polls `cond` until it holds, failing with `what` after [`WAIT`].
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Defect: the same event id sent for two members lands on two partitions; the first store
/// commit won, so after a crash that rolled the store back, applying the partitions in another
/// order turned an outcome already told to a client into an idempotency conflict. The owner of
/// an event id is now claimed durably before anything is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_event_id_keeps_the_owner_it_was_told_with() {
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    let (a, b) = two_partitions(&w);
    w.enrol(b + 1).await;
    let mut n = w.node("enrol");
    w.wait_enrolled(b + 1).await;
    n.stop();

    // Member a's purchase is applied and told; then the process crashes before the store made
    // it durable (its commit is lost, no offset is committed).
    let store = faulty(&w);
    store.forget_commits.store(true, Ordering::SeqCst);
    store.refuse_sync.store(true, Ordering::SeqCst);
    let for_a = purchase(&w, a, "reused-1", 1200);
    let for_b = purchase(&w, b, "reused-1", 3400);
    let waiters = ReplyWaiters::new();
    let told = waiters.register(&w.franchise.id, &for_a.event_id, for_a.fingerprint());
    let mut first = node(&w, "first", &store, waiters.clone() as Arc<dyn ReplySink>);
    w.send(for_a.clone()).await;
    let told = told
        .wait(WAIT)
        .await
        .expect("member a's purchase is answered");
    let ReplyResult::Applied(told_outcome) = told.result.clone() else {
        panic!("member a's purchase was not applied: {:?}", told.result);
    };
    assert!(
        matches!(told_outcome, Outcome::Purchase(_)),
        "{told_outcome:?}"
    );
    first.kill();

    // After the restart, member b's use of the same id is applied first: a's partition is
    // held up by its replica until b's answer is out.
    store.forget_commits.store(false, Ordering::SeqCst);
    store.refuse_sync.store(false, Ordering::SeqCst);
    store.set_member_fault(Some((w.member(a), Fault::Unavailable)));
    let waiters = ReplyWaiters::new();
    let again_a = waiters.register(&w.franchise.id, &for_a.event_id, for_a.fingerprint());
    let answer_b = waiters.register(&w.franchise.id, &for_b.event_id, for_b.fingerprint());
    let _second = node(&w, "second", &store, waiters.clone() as Arc<dyn ReplySink>);
    w.send(for_b.clone()).await;
    let answer_b = answer_b
        .wait(WAIT)
        .await
        .expect("member b's purchase is answered");
    assert!(
        matches!(answer_b.result, ReplyResult::Conflict),
        "the id was told to member a's purchase; b's must be a conflict, got {:?}",
        answer_b.result
    );
    store.set_member_fault(None);
    let again_a = again_a
        .wait(WAIT)
        .await
        .expect("member a's purchase is applied again");
    let outcome = match &again_a.result {
        ReplyResult::Applied(o) | ReplyResult::Replayed(o) => o.clone(),
        ReplyResult::Conflict => panic!("an outcome told to a client became a conflict"),
    };
    assert_eq!(outcome, told_outcome, "the told outcome changed");

    let rec = w
        .store
        .processed(&w.franchise.id, &[EventId::parse("reused-1").unwrap()])
        .await
        .unwrap()
        .remove(0)
        .expect("recorded");
    assert_eq!(rec.member_id.as_ref(), Some(&w.member(a)));
    let b_state = w.store.member(&w.member(b)).await.unwrap().unwrap();
    assert_eq!(b_state.visits, 0, "member b was charged for a's event id");
}

/// Sends every command of `uses` at once and returns, in order, what each was told.
async fn send_all(
    w: &World,
    uses: &[loyalty_core::command::CommandEnvelope],
    waiters: Arc<ReplyWaiters>,
) -> Vec<ReplyResult> {
    let registered: Vec<_> = uses
        .iter()
        .map(|u| waiters.register(&u.franchise_id, &u.event_id, u.fingerprint()))
        .collect();
    join_all(uses.iter().map(|u| w.send(u.clone()))).await;
    let mut told = Vec::new();
    for r in registered {
        let reply = r.wait(WAIT).await.expect("every use is answered");
        told.push(reply.result.clone());
    }
    told
}

/// On the embedded store the batch's durable commit is the claim of its event ids
/// (`StateStore::commit_claims_events`): ids reused for two members on two partitions, sent at
/// once so that both partitions apply them side by side, get one owner each, the first commit;
/// the other use is a conflict. After the node is killed and another one started, every use
/// sent again answers what it was first told, and each member holds only the ids it owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_event_ids_applied_side_by_side_have_one_owner_for_good() {
    const IDS: usize = 40;
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    assert!(
        w.store.commit_claims_events(),
        "the embedded store's commit is the claim"
    );
    let (a, b) = two_partitions(&w);
    w.enrol(b + 1).await;
    let mut n = w.node("enrol");
    w.wait_enrolled(b + 1).await;
    n.stop();
    let start = |name: &str, replies: Arc<ReplyWaiters>| {
        EngineNode::start_with_replies(
            name,
            Arc::clone(&w.log),
            Arc::clone(&w.store) as Arc<dyn StateStore>,
            Arc::clone(&w.cache),
            EngineConfig {
                max_batch: 8,
                ..EngineConfig::default()
            },
            replies as Arc<dyn ReplySink>,
        )
    };
    let uses: Vec<_> = (0..IDS)
        .flat_map(|k| {
            let id = format!("twice-{k}");
            [
                purchase(&w, a, &id, 1000 + k as i64),
                purchase(&w, b, &id, 2000 + k as i64),
            ]
        })
        .collect();

    let waiters = ReplyWaiters::new();
    let mut first = start("first", Arc::clone(&waiters));
    let told = send_all(&w, &uses, waiters).await;
    first.kill();
    let mut owned = [0u64; 2];
    for (k, pair) in told.chunks(2).enumerate() {
        let won: Vec<usize> = (0..2)
            .filter(|&side| matches!(pair[side], ReplyResult::Applied(_)))
            .collect();
        let lost = pair
            .iter()
            .filter(|r| matches!(r, ReplyResult::Conflict))
            .count();
        assert!(
            won.len() == 1 && lost == 1,
            "twice-{k}: one use applied, the other a conflict: {pair:?}"
        );
        owned[won[0]] += 1;
    }

    let waiters = ReplyWaiters::new();
    let _second = start("second", Arc::clone(&waiters));
    let again = send_all(&w, &uses, waiters).await;
    for (k, (before, after)) in told.iter().zip(&again).enumerate() {
        let same = match (before, after) {
            (ReplyResult::Applied(o), ReplyResult::Replayed(p)) => o == p,
            (ReplyResult::Conflict, ReplyResult::Conflict) => true,
            _ => false,
        };
        assert!(same, "use {k} was told {before:?}, then {after:?}");
    }
    for (side, member) in [a, b].into_iter().enumerate() {
        let state = w.store.member(&w.member(member)).await.unwrap().unwrap();
        assert_eq!(
            state.visits, owned[side],
            "member {member} holds exactly the ids it owns"
        );
    }
}

/// Defect: one partition whose store writes fail froze the whole node (one `join_all` over
/// every partition, retried forever). Now the partition backs off alone, visibly, and the
/// others keep flowing; once the store heals, it catches up, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_cannot_write_does_not_hold_up_the_others() {
    const MEMBERS: usize = 60;
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    let store = faulty(&w);
    let node = node(&w, "a", &store, ReplyWaiters::new() as Arc<dyn ReplySink>);
    w.enrol(MEMBERS).await;
    w.wait_enrolled(MEMBERS).await;

    let stuck = 0;
    let stuck_partition = partition_for(w.member(stuck).as_str().as_bytes(), PARTITIONS);
    store.set_member_fault(Some((w.member(stuck), Fault::Unavailable)));
    let mut spend = vec![0i64; MEMBERS];
    for n in 0..2 {
        for (i, c) in join_all((0..MEMBERS).map(|i| w.purchase(i, n)))
            .await
            .into_iter()
            .enumerate()
        {
            spend[i] += c;
        }
    }
    // Every member of another partition is applied while the stuck one retries.
    let others: Vec<usize> = (0..MEMBERS)
        .filter(|&i| partition_for(w.member(i).as_str().as_bytes(), PARTITIONS) != stuck_partition)
        .collect();
    assert!(!others.is_empty());
    eventually("the other partitions are applied", || async {
        let mut all = true;
        for &i in &others {
            let s = w.store.member(&w.member(i)).await.unwrap().unwrap();
            all &= s.visits == 2;
        }
        all
    })
    .await;
    let report = node.health.report();
    assert!(
        report.retrying.contains_key(&stuck_partition),
        "the stuck partition is reported as retrying: {report:?}"
    );
    assert!(report.stopped.is_empty(), "{report:?}");
    assert!(
        store.failed_commits.load(Ordering::SeqCst) >= 2,
        "it retried"
    );
    let stuck_state = w.store.member(&w.member(stuck)).await.unwrap().unwrap();
    assert_eq!(
        stuck_state.visits, 0,
        "nothing of the stuck member was written"
    );

    store.set_member_fault(None);
    w.wait_applied(&vec![2; MEMBERS]).await;
    eventually("the partition recovered", || async {
        node.health.report().retrying.is_empty()
    })
    .await;
    w.check(&spend, &vec![2; MEMBERS]).await;
}

/// A permanent error (a damaged row) stops its partition loudly, lets the others flow, and
/// commits nothing past it: after the repair and a restart, everything is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_member_stops_its_partition_only_and_loses_nothing() {
    const MEMBERS: usize = 40;
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    let store = faulty(&w);
    let mut first = node(&w, "a", &store, ReplyWaiters::new() as Arc<dyn ReplySink>);
    w.enrol(MEMBERS).await;
    w.wait_enrolled(MEMBERS).await;

    let bad = 3;
    let bad_partition = partition_for(w.member(bad).as_str().as_bytes(), PARTITIONS);
    store.set_member_fault(Some((w.member(bad), Fault::Corrupt)));
    let mut spend = vec![0i64; MEMBERS];
    for (i, c) in join_all((0..MEMBERS).map(|i| w.purchase(i, 0)))
        .await
        .into_iter()
        .enumerate()
    {
        spend[i] += c;
    }
    eventually("the partition is reported stopped", || async {
        first.health.report().stopped.contains_key(&bad_partition)
    })
    .await;
    let others: Vec<usize> = (0..MEMBERS)
        .filter(|&i| partition_for(w.member(i).as_str().as_bytes(), PARTITIONS) != bad_partition)
        .collect();
    eventually("the other partitions are applied", || async {
        let mut all = true;
        for &i in &others {
            all &= w.store.member(&w.member(i)).await.unwrap().unwrap().visits == 1;
        }
        all
    })
    .await;
    assert!(!first.health.report().healthy());
    first.stop();
    // Nothing past the stopped point was committed: the records are delivered again.
    let consumer = w
        .log
        .subscribe("loyalty-engine", "pos-commands")
        .await
        .unwrap();
    let committed = consumer
        .committed(bad_partition)
        .await
        .unwrap()
        .unwrap_or(0);
    consumer.close().await.unwrap();
    let end = w
        .log
        .end_offset("pos-commands", bad_partition)
        .await
        .unwrap();
    assert!(
        committed < end,
        "the stopped partition's offset moved on: {committed} of {end}"
    );

    // Repaired: a new node applies what the stopped partition held, once.
    store.set_member_fault(None);
    let _second = node(&w, "b", &store, ReplyWaiters::new() as Arc<dyn ReplySink>);
    w.wait_applied(&vec![1; MEMBERS]).await;
    w.check(&spend, &vec![1; MEMBERS]).await;
}

/// A store that commits member by member and loses its connection mid-batch (ScyllaDB's
/// weakest case): every third batch is only partly written, then reported failed. The engine
/// re-reads the store and finds the written members' events recorded: exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_committed_in_part_are_applied_exactly_once() {
    const MEMBERS: usize = 80;
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    let store = faulty(&w);
    store.partial_every.store(3, Ordering::SeqCst);
    let _node = node(&w, "a", &store, ReplyWaiters::new() as Arc<dyn ReplySink>);
    w.enrol(MEMBERS).await;
    let mut spend = vec![0i64; MEMBERS];
    for n in 0..3 {
        for (i, c) in join_all((0..MEMBERS).map(|i| w.purchase(i, n)))
            .await
            .into_iter()
            .enumerate()
        {
            spend[i] += c;
        }
    }
    w.wait_applied(&vec![3; MEMBERS]).await;
    assert!(
        store.partial_commits.load(Ordering::SeqCst) > 0,
        "some batches were written in part"
    );
    w.check(&spend, &vec![3; MEMBERS]).await;
}

/// With more worker threads than cores, each member's commands still apply in log order: a
/// refund sent right after its purchase always finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_each_members_order() {
    const MEMBERS: usize = 100;
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    let _node = w.node_with(
        "a",
        EngineConfig {
            max_batch: 16,
            workers: 4,
            ..EngineConfig::default()
        },
    );
    w.enrol(MEMBERS).await;
    for i in 0..MEMBERS {
        w.send(purchase(&w, i, &format!("buy-{i}"), 1000)).await;
        w.send(w.envelope(
            format!("refund-{i}"),
            PosCommand::Refund {
                member_id: Some(w.member(i)),
                purchase_event_id: EventId::parse(&format!("buy-{i}")).unwrap(),
                amount_cents: Some(Cents::new(1000).unwrap()),
            },
        ))
        .await;
    }
    let ids: Vec<EventId> = (0..MEMBERS)
        .map(|i| EventId::parse(&format!("refund-{i}")).unwrap())
        .collect();
    eventually("every refund is recorded", || async {
        w.store
            .processed(&w.franchise.id, &ids)
            .await
            .unwrap()
            .iter()
            .all(Option::is_some)
    })
    .await;
    for (i, rec) in w
        .store
        .processed(&w.franchise.id, &ids)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let rec = rec.unwrap();
        assert!(
            matches!(rec.outcome, Outcome::Refund { .. }),
            "member {i}: the refund was applied before its purchase: {:?}",
            rec.outcome
        );
    }
}

/// An engine on a store no other process shares (the embedded one) must own every partition:
/// when a second engine joins its consumer group, neither applies anything more, and both say
/// why, rather than split members across two stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_engine_refuses_to_share_its_group() {
    let w = World::new(Backend::Embedded).await.expect("embedded world");
    let config = EngineConfig {
        exclusive: Some(PARTITIONS),
        ..EngineConfig::default()
    };
    let first = w.node_with("first", config.clone());
    eventually("the first engine owns every partition", || async {
        first.health.report().owned.len() == PARTITIONS as usize
    })
    .await;
    w.enrol(5).await;
    w.wait_enrolled(5).await;

    let second = w.node_with("second", config);
    for node in [&first, &second] {
        eventually("both engines stop", || async {
            node.health.report().failed.is_some()
        })
        .await;
        let why = node.health.report().failed.unwrap_or_default();
        assert!(
            why.contains("another engine joined") && why.contains("LOYALTY_POSTGRES_URL"),
            "{why}"
        );
    }
    assert!(!first.ready.load(Ordering::SeqCst) && !second.ready.load(Ordering::SeqCst));
}
