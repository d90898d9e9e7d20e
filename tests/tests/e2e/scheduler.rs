//! The scheduler of expiry and tier re-evaluation (`loyalty_core::engine::scheduler`): a
//! dormant member's points expire, and a tier held by old activity is lost, on time and
//! without any event of theirs; the status shows it; a crash or restart during or after a run
//! neither skips nor repeats an expiry; several engine nodes never expire a lot twice.
//!
//! Time is a manual clock given to the engines' schedulers: the test moves it a year ahead
//! instead of sleeping.

use std::sync::Arc;
use std::time::Duration;

use loyalty_core::command::PosCommand;
use loyalty_core::engine::scheduler::{event_id, SchedulerConfig};
use loyalty_core::engine::EngineConfig;
use loyalty_core::metrics::metrics;
use loyalty_core::ports::{ManualClock, StateStore};
use loyalty_core::provisioning::now;
use loyalty_domain::{day_start, Cents, Currency, Day, LedgerKind, MemberId, Timestamp};
use loyalty_tests::cluster::{Backend, EngineNode, World, PARTITIONS};

const DAY: i64 = 86_400_000;

/// A node whose scheduler runs every 10 ms on `clock`, committing `batch` members at a time.
fn node(w: &World, name: &str, clock: &Arc<ManualClock>, batch: usize) -> EngineNode {
    w.node_with(
        name,
        EngineConfig {
            max_batch: 256,
            scheduler: SchedulerConfig {
                every: Duration::from_millis(10),
                batch,
                clock: Arc::clone(clock) as _,
            },
            ..EngineConfig::default()
        },
    )
}

/// Polls `check` until it holds (the engine's effects land asynchronously), for at most 60 s.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The member's status as the till reads it (from the hot cache).
async fn status(w: &World, m: &MemberId) -> Option<serde_json::Value> {
    let cached = w.cache.status(m).await.unwrap()?;
    Some(serde_json::from_slice(&cached.json).unwrap())
}

async fn expire_entries(w: &World, m: &MemberId) -> Vec<loyalty_domain::LedgerEntry> {
    let ledger = w.store.ledger(m, None, 10_000).await.unwrap();
    let points: i64 = ledger.iter().map(|e| e.points).sum();
    let state = w.store.member(m).await.unwrap().expect("enrolled");
    assert_eq!(
        points, state.points as i64,
        "{m}: balance is not the ledger's sum"
    );
    ledger
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Expire)
        .collect()
}

/// Sends a purchase of `cents` by member `i` that happened at `at`.
async fn purchase_at(w: &World, i: usize, n: usize, cents: i64, at: Timestamp) {
    let mut env = w.envelope(
        format!("p-{i}-{n}"),
        PosCommand::Purchase {
            member_id: Some(w.member(i)),
            amount_cents: Cents::new(cents).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            items: Vec::new(),
        },
    );
    env.occurred_at = Some(at);
    w.send(env).await;
}

/// Whether no member of any partition is due by the clock's now.
async fn nothing_due(w: &World, clock: &ManualClock) -> bool {
    for p in 0..PARTITIONS {
        if !w
            .store
            .due_members(p, clock_now(clock), 1)
            .await
            .unwrap()
            .is_empty()
        {
            return false;
        }
    }
    true
}

fn clock_now(clock: &ManualClock) -> Timestamp {
    use loyalty_core::ports::Clock;
    clock.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dormant_members_points_expire_and_tier_drops_without_an_event() {
    let w = World::new(Backend::Embedded).await.unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::new(t0));
    let mut a = node(&w, "a", &clock, 64);
    // Member 0: the signup lot today and a lot of 9 points two days later (the demo program
    // expires points after 365 days). Member 1: Silver by a 300 € purchase today.
    w.enrol(2).await;
    purchase_at(&w, 0, 0, 900, Timestamp(t0.0 + 2 * DAY)).await;
    purchase_at(&w, 1, 0, 30_000, t0).await;
    let (m0, m1) = (w.member(0), w.member(1));
    until("both purchases applied", || async {
        let v0 = status(&w, &m0).await.map(|s| s["visits"].clone());
        let v1 = status(&w, &m1).await.map(|s| s["visits"].clone());
        v0 == Some(1.into()) && v1 == Some(1.into())
    })
    .await;
    let day0 = t0.day();
    let s = status(&w, &m0).await.unwrap();
    assert_eq!(s["points"], 59);
    let first = Day(day0.0 + 365);
    assert_eq!(s["next_expiry"]["points"], 50);
    assert_eq!(s["next_expiry"]["date"], first.iso());
    assert_eq!(status(&w, &m1).await.unwrap()["tier"], "Silver");

    // A year later, with no event: the first lot expires, the second is next.
    clock.set(Timestamp(t0.0 + 366 * DAY));
    until("the first lot expired", || async {
        status(&w, &m0).await.unwrap()["points"] == 9
    })
    .await;
    let s = status(&w, &m0).await.unwrap();
    assert_eq!(s["next_expiry"]["points"], 9);
    assert_eq!(s["next_expiry"]["date"], Day(day0.0 + 367).iso());
    // Member 1's purchase left the 365-day window: back to Bronze, its points gone with it.
    until("member 1 lost Silver", || async {
        status(&w, &m1).await.unwrap()["tier"] == "Bronze"
    })
    .await;
    assert_eq!(status(&w, &m1).await.unwrap()["points"], 0);

    clock.set(Timestamp(t0.0 + 368 * DAY));
    until("the second lot expired", || async {
        status(&w, &m0).await.unwrap()["points"] == 0
    })
    .await;
    assert!(status(&w, &m0).await.unwrap().get("next_expiry").is_none());
    let entries = expire_entries(&w, &m0).await;
    let got: Vec<(i64, &str, String)> = entries
        .iter()
        .map(|e| (e.points, e.detail.as_str(), e.event_id.to_string()))
        .collect();
    let id = |day: u32| event_id(&m0, day_start(Day(day))).unwrap().to_string();
    assert_eq!(
        got,
        [
            (
                -9,
                &*format!("expired:{}", Day(day0.0 + 2).iso()),
                id(day0.0 + 367)
            ),
            (-50, &*format!("expired:{}", day0.iso()), id(first.0)),
        ],
        "newest first: one entry per lot, named by the scheduler's event"
    );
    assert!(metrics().scheduler.members_applied.get() >= 3);
    a.stop();
}

/// Enrols `members` (each a signup lot of 50 points today), then moves the clock a year on.
async fn members_due(w: &World, members: usize, clock: &ManualClock, t0: Timestamp) {
    w.enrol(members).await;
    w.wait_enrolled(members).await;
    clock.set(Timestamp(t0.0 + 366 * DAY));
}

/// Every member's signup lot expired exactly once, by the scheduler's event.
async fn each_expired_once(w: &World, members: usize, t0: Timestamp) {
    let due = day_start(Day(t0.day().0 + 365));
    for i in 0..members {
        let m = w.member(i);
        let entries = expire_entries(w, &m).await;
        assert_eq!(entries.len(), 1, "member {i}: {entries:?}");
        assert_eq!(entries[0].points, -50, "member {i}");
        assert_eq!(
            entries[0].event_id,
            event_id(&m, due).unwrap(),
            "member {i}"
        );
    }
}

async fn wait_all_expired(w: &World, members: usize, clock: &ManualClock) {
    until("every member's lot expired", || async {
        if !nothing_due(w, clock).await {
            return false;
        }
        for i in 0..members {
            let s = w.store.member(&w.member(i)).await.unwrap().unwrap();
            if s.points != 0 {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_or_after_a_run_neither_skips_nor_repeats() {
    const MEMBERS: usize = 600;
    let w = World::new(Backend::Embedded).await.unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::new(t0));
    let mut a = node(&w, "a", &clock, 8);
    members_due(&w, MEMBERS, &clock, t0).await;
    // Killed as soon as its first advances are in the store, mid-run most likely.
    until("a's first advances", || async {
        metrics().scheduler.members_applied.get() > 0
    })
    .await;
    a.kill();
    let at_kill = metrics().scheduler.members_applied.get();
    println!("killed after {at_kill} of {MEMBERS} members advanced");
    let mut b = node(&w, "b", &clock, 8);
    wait_all_expired(&w, MEMBERS, &clock).await;
    b.kill();
    // And after a run: a restart finds nothing to do again.
    let mut c = node(&w, "c", &clock, 8);
    let runs = metrics().scheduler.runs.with_label_values(&["ok"]).get();
    until("c's scheduler ran", || async {
        metrics().scheduler.runs.with_label_values(&["ok"]).get() > runs + PARTITIONS as u64
    })
    .await;
    each_expired_once(&w, MEMBERS, t0).await;
    c.stop();
}

async fn two_nodes_never_expire_a_lot_twice(backend: Backend) {
    const MEMBERS: usize = 600;
    let Some(w) = World::new(backend).await else {
        return;
    };
    let t0 = now();
    let clock = Arc::new(ManualClock::new(t0));
    let mut a = node(&w, "a", &clock, 16);
    let mut b = node(&w, "b", &clock, 16);
    members_due(&w, MEMBERS, &clock, t0).await;
    // A third node joins mid-run: partitions move between schedulers while they advance.
    until("the first advances", || async {
        metrics().scheduler.members_applied.get() > 0
    })
    .await;
    let mut c = node(&w, "c", &clock, 16);
    wait_all_expired(&w, MEMBERS, &clock).await;
    each_expired_once(&w, MEMBERS, t0).await;
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_expire_a_lot_twice_embedded() {
    two_nodes_never_expire_a_lot_twice(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_expire_a_lot_twice_kafka() {
    two_nodes_never_expire_a_lot_twice(Backend::KafkaRedis).await;
}

/// The first moment of the month `months` after the one holding `t`, plus an hour.
fn month_start_after(t: Timestamp, months: u32) -> Timestamp {
    let (y, m, _) = t.day().ymd();
    let next = m - 1 + months;
    let day = Day::from_ymd(y + (next / 12) as i32, next % 12 + 1, 1).unwrap();
    Timestamp(day_start(day).0 + 3_600_000)
}

/// A monthly tier program with 5 days of grace: Gold earned this month is kept through the
/// next month; at the end of that one (no activity) a downgrade is due after the grace, shown
/// in the status, and applied by the scheduler on its day, once: a `tier` entry per move,
/// named by the scheduler's event, and a restarted node repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_tier_is_kept_through_the_next_period_then_reviewed_on_time() {
    let mut w = World::new(Backend::Embedded).await.unwrap();
    let mut program = serde_json::to_value(loyalty_domain::Program::demo()).unwrap();
    program["tier_qualification"] =
        serde_json::json!({ "metric": "spend_cents", "period": "month", "grace_days": 5 });
    let program: loyalty_domain::Program = serde_json::from_value(program).unwrap();
    w.franchise =
        loyalty_core::provisioning::replace_program(w.store.as_ref(), &w.franchise, &program)
            .await
            .unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::new(t0));
    let mut a = node(&w, "a", &clock, 64);
    w.enrol(1).await;
    let m = w.member(0);
    let mut env = w.envelope(
        "gold".into(),
        PosCommand::Purchase {
            member_id: Some(m.clone()),
            amount_cents: Cents::new(100_000).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            items: Vec::new(),
        },
    );
    env.program_version = w.franchise.program_version;
    w.send(env).await;
    until("Gold by the purchase", || async {
        status(&w, &m).await.is_some_and(|s| s["tier"] == "Gold")
    })
    .await;

    // The month ends: Gold was qualified for, so it is kept through the next month.
    let next = month_start_after(t0, 1);
    clock.set(next);
    until("the first review", || async {
        let s = w.store.member(&m).await.unwrap().unwrap();
        // Advanced to its due time: the month's first instant.
        s.clock.day() >= next.day() && s.tier_kept.as_deref() == Some("Gold")
    })
    .await;
    assert_eq!(status(&w, &m).await.unwrap()["tier"], "Gold");

    // The next month ends with nothing spent: Bronze is due after 5 days of grace.
    let review = month_start_after(t0, 2);
    clock.set(review);
    let due = Day(review.day().0 + 5);
    until("the downgrade is due", || async {
        status(&w, &m).await.unwrap()["tier_downgrade"]
            == serde_json::json!({ "tier": "Bronze", "date": due.iso() })
    })
    .await;
    assert_eq!(
        status(&w, &m).await.unwrap()["tier"],
        "Gold",
        "kept in the grace"
    );

    clock.set(Timestamp(day_start(due).0 + 60_000));
    until("Bronze after the grace", || async {
        status(&w, &m).await.unwrap()["tier"] == "Bronze"
    })
    .await;
    assert!(status(&w, &m)
        .await
        .unwrap()
        .get("tier_downgrade")
        .is_none());
    a.stop();
    // A restarted node runs its scheduler again and finds nothing to do.
    let runs = metrics().scheduler.runs.with_label_values(&["ok"]).get();
    let mut b = node(&w, "b", &clock, 64);
    until("b's scheduler ran", || async {
        metrics().scheduler.runs.with_label_values(&["ok"]).get() > runs + PARTITIONS as u64
    })
    .await;
    b.stop();
    let ledger = w.store.ledger(&m, None, 100).await.unwrap();
    let moves: Vec<(String, String, String, String)> = ledger
        .iter()
        .rev()
        .filter(|e| e.kind == LedgerKind::Tier)
        .map(|e| {
            let c = e.tier_change.as_ref().unwrap();
            (
                c.from.clone(),
                c.to.clone(),
                e.detail.clone(),
                e.event_id.to_string(),
            )
        })
        .collect();
    let sched = event_id(&m, day_start(due)).unwrap().to_string();
    assert_eq!(
        moves,
        [
            (
                "Bronze".into(),
                "Gold".into(),
                "tier:qualified".into(),
                "gold".into()
            ),
            (
                "Gold".into(),
                "Bronze".into(),
                "tier:grace_end".into(),
                sched
            ),
        ],
        "one entry per move, the downgrade by the scheduler's event of its day"
    );
}

// ---------------------------------------------------------------------------------------------
// The re-index (`loyalty_core::engine::reindex`): members no write indexed, and due times a
// program change moves, reach the scheduler without an event of the member's.

/// Stores member `i` enrolled at `at` (the signup lot of 50 points) straight into the store
/// with `due: None`, as a member stored before the due index existed: no due entry.
async fn store_unindexed(w: &World, i: usize, at: Timestamp) {
    use loyalty_core::ports::{EffectBatch, MemberWrite};
    use loyalty_domain::{apply, EventContext, EventId, MemberCommand, Profile};
    let m = w.member(i);
    let program = loyalty_domain::Program::demo();
    let event = EventId::parse(&format!("legacy-{i}")).unwrap();
    let ctx = EventContext {
        event_id: &event,
        store_id: &w.store_id,
        at,
        program: &program,
        program_version: w.franchise.program_version,
    };
    let profile = Profile {
        phone: w.phone(i),
        name: None,
        birthday: None,
        consent: Default::default(),
        email: None,
    };
    let mut state = None;
    let enrol = MemberCommand::Enrol { profile };
    let applied = apply(&mut state, &m, &w.franchise.id, &enrol, &ctx).unwrap();
    let batch = EffectBatch {
        members: vec![MemberWrite {
            state: state.unwrap(),
            expected_version: 0,
            due: None,
        }],
        ledger: applied
            .entries
            .into_iter()
            .map(|e| (m.clone(), e))
            .collect(),
        ..EffectBatch::default()
    };
    w.store.commit(batch).await.unwrap();
}

async fn store_unindexed_many(w: &World, members: usize, at: Timestamp) {
    for i in 0..members {
        store_unindexed(w, i, at).await;
    }
    w.store.sync().await.unwrap();
}

fn partition_of(m: &MemberId) -> u32 {
    loyalty_core::ports::partition_for(m.as_str().as_bytes(), PARTITIONS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_reindex_expires_a_member_stored_before_the_due_index() {
    let w = World::new(Backend::Embedded).await.unwrap();
    let t0 = now();
    store_unindexed_many(&w, 3, t0).await;
    let far = Timestamp(t0.0 + 1000 * DAY);
    let m = w.member(0);
    assert!(
        w.store
            .due_members(partition_of(&m), far, 10)
            .await
            .unwrap()
            .is_empty(),
        "stored without a due entry"
    );
    // A year on, the engine starts: no event of theirs, their signup lot expires on time.
    let clock = Arc::new(ManualClock::new(Timestamp(t0.0 + 366 * DAY)));
    let mut a = node(&w, "a", &clock, 64);
    wait_all_expired(&w, 3, &clock).await;
    each_expired_once(&w, 3, t0).await;
    assert!(metrics().scheduler.reindexed_members.get() >= 3);
    let sweeps = &metrics().scheduler.reindex_sweeps;
    until("every partition swept once", || async {
        sweeps.with_label_values(&["all", "done"]).get() >= PARTITIONS as u64
    })
    .await;
    a.stop();
    // A restart with nothing changed sweeps nothing: the marks say so.
    let (done, scanned) = (
        sweeps.with_label_values(&["all", "done"]).get(),
        metrics().scheduler.reindex_scanned.get(),
    );
    let runs = metrics().scheduler.runs.with_label_values(&["ok"]).get();
    let mut b = node(&w, "b", &clock, 64);
    until("b's scheduler ran", || async {
        metrics().scheduler.runs.with_label_values(&["ok"]).get() > runs + PARTITIONS as u64
    })
    .await;
    b.stop();
    assert_eq!(sweeps.with_label_values(&["all", "done"]).get(), done);
    assert_eq!(metrics().scheduler.reindex_scanned.get(), scanned);
    each_expired_once(&w, 3, t0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_reindex_a_program_change_expires_a_dormant_members_points() {
    let mut program = loyalty_domain::Program::demo();
    program.points_expiry_days = None;
    let mut w = World::with_program(Backend::Embedded, &program)
        .await
        .unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::new(t0));
    let mut a = node(&w, "a", &clock, 64);
    w.enrol(1).await;
    w.wait_enrolled(1).await;
    let m = w.member(0);
    let until_day = |d: u32| day_start(Day(t0.day().0 + d));
    assert!(
        w.store
            .due_members(partition_of(&m), until_day(1000), 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing due: the program expires no points"
    );
    // Headquarters make points expire after 10 days; the member stays dormant.
    program.points_expiry_days = Some(10);
    w.franchise =
        loyalty_core::provisioning::replace_program(w.store.as_ref(), &w.franchise, &program)
            .await
            .unwrap();
    until("the re-index moved the due time to the expiry", || async {
        let due = w
            .store
            .due_members(partition_of(&m), until_day(10), 10)
            .await
            .unwrap();
        due.iter()
            .any(|d| d.member_id == m && d.at == until_day(10))
    })
    .await;
    assert!(metrics().scheduler.reindexed_members.get() >= 1);
    clock.set(Timestamp(until_day(10).0 + 60_000));
    until("the signup lot expired", || async {
        w.store.member(&m).await.unwrap().unwrap().points == 0
    })
    .await;
    let entries = expire_entries(&w, &m).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].points, -50);
    assert_eq!(entries[0].event_id, event_id(&m, until_day(10)).unwrap());
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_reindex_with_two_nodes_and_a_third_joining_expires_each_lot_once() {
    const MEMBERS: usize = 300;
    let w = World::new(Backend::Embedded).await.unwrap();
    let t0 = now();
    store_unindexed_many(&w, MEMBERS, t0).await;
    let clock = Arc::new(ManualClock::new(Timestamp(t0.0 + 366 * DAY)));
    let mut a = node(&w, "a", &clock, 16);
    let mut b = node(&w, "b", &clock, 16);
    // A third node joins mid-sweep: partitions move while they are re-indexed and advanced.
    until("the first re-indexed members", || async {
        metrics().scheduler.reindexed_members.get() > 0
    })
    .await;
    let mut c = node(&w, "c", &clock, 16);
    wait_all_expired(&w, MEMBERS, &clock).await;
    each_expired_once(&w, MEMBERS, t0).await;
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_reindex_a_kill_mid_sweep_then_a_restart_neither_skips_nor_repeats() {
    const MEMBERS: usize = 600;
    let w = World::new(Backend::Embedded).await.unwrap();
    let t0 = now();
    store_unindexed_many(&w, MEMBERS, t0).await;
    let clock = Arc::new(ManualClock::new(Timestamp(t0.0 + 366 * DAY)));
    // Pages of 8: each partition's sweep reads every member in 75 pages.
    let mut a = node(&w, "a", &clock, 8);
    until("a's first re-index pages", || async {
        metrics().scheduler.reindexed_members.get() > 0
    })
    .await;
    a.kill();
    let done = metrics()
        .scheduler
        .reindex_sweeps
        .with_label_values(&["all", "done"])
        .get();
    println!("killed with {done} of {PARTITIONS} partitions swept");
    let mut b = node(&w, "b", &clock, 8);
    wait_all_expired(&w, MEMBERS, &clock).await;
    each_expired_once(&w, MEMBERS, t0).await;
    b.stop();
}
