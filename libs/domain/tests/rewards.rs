//! The rewards rules of issue 12: validity dates and per-member limits on a reward, and the
//! cancellation of a redemption within the program's window (README "Rewards").
//!
//! Commands go through [`apply`] the way the engine sends them: every event's outcome is kept
//! by event id, a cancellation is handed the redemption's current [`RedemptionRecord`] from
//! those outcomes, and a cancellation's outcome marks the redemption's record `cancelled_by`.

use std::collections::{BTreeMap, HashMap};

use loyalty_domain::{
    apply, Applied, Cents, Day, EventContext, EventId, FranchiseId, LedgerEntry, LedgerKind,
    MemberCommand, MemberId, MemberState, MemberStatus, Outcome, Phone, PointLot, Points,
    ProcessedEvent, Profile, Program, RedemptionRecord, Rejection, RewardId, StoreId, Timestamp,
};
use proptest::prelude::*;
use serde_json::json;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

fn rid(s: &str) -> RewardId {
    RewardId::parse(s).unwrap()
}

/// The demo program (free coffee 100 points, free pastry 150, 10-stamp card for a coffee) with
/// redemptions cancellable for 30 minutes.
fn program() -> Program {
    let mut p = Program::demo();
    p.redemption_cancel_minutes = 30;
    p
}

/// One member, with the engine's record of every event's time and outcome.
struct Member {
    program: Program,
    state: Option<MemberState>,
    next: u32,
    records: HashMap<EventId, (Timestamp, Outcome)>,
    ledger: Vec<LedgerEntry>,
}

impl Member {
    fn enrolled(program: Program) -> Member {
        let mut m = Member {
            program,
            state: None,
            next: 0,
            records: HashMap::new(),
            ledger: Vec::new(),
        };
        let profile = Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: None,
            birthday: None,
            consent: Default::default(),
            email: None,
        };
        m.send(0, MemberCommand::Enrol { profile }).1.unwrap();
        m
    }

    fn state(&self) -> &MemberState {
        self.state.as_ref().expect("enrolled")
    }

    /// Applies `cmd` at `T0 + at_ms` and keeps its record as the engine does.
    fn send(&mut self, at_ms: i64, cmd: MemberCommand) -> (EventId, Result<Applied, Rejection>) {
        self.next += 1;
        let id = EventId::parse(&format!("e-{}", self.next)).unwrap();
        let store = StoreId::parse("store-1").unwrap();
        let at = Timestamp(T0 + at_ms);
        let ctx = EventContext {
            event_id: &id,
            store_id: &store,
            at,
            program: &self.program,
            program_version: 1,
        };
        let result = apply(
            &mut self.state,
            &MemberId::parse("m-1").unwrap(),
            &FranchiseId::parse("f-1").unwrap(),
            &cmd,
            &ctx,
        );
        if let Ok(applied) = &result {
            self.ledger.extend(applied.entries.iter().cloned());
            if let Outcome::RedemptionCancelled {
                redemption_event_id,
                ..
            } = &applied.outcome
            {
                if let Some((_, Outcome::Redemption { cancelled_by, .. })) =
                    self.records.get_mut(redemption_event_id)
                {
                    *cancelled_by = Some(id.clone());
                }
            }
            self.records
                .insert(id.clone(), (at, applied.outcome.clone()));
        }
        (id, result)
    }

    fn buy(&mut self, at_ms: i64, cents: i64) {
        let currency = self.program.currency.clone();
        let cmd = MemberCommand::Purchase {
            amount: Cents::new(cents).unwrap(),
            currency,
            items: Vec::new(),
        };
        self.send(at_ms, cmd).1.expect("a purchase is accepted");
    }

    fn redeem(&mut self, at_ms: i64, reward: &str) -> (EventId, Result<Applied, Rejection>) {
        let cmd = MemberCommand::Redemption {
            reward_id: rid(reward),
        };
        self.send(at_ms, cmd)
    }

    /// The redemption `id` as the engine hands it to a cancellation (from its record).
    fn record(&self, id: &EventId) -> Option<RedemptionRecord> {
        let (at, outcome) = self.records.get(id)?;
        RedemptionRecord::of(&ProcessedEvent {
            franchise_id: FranchiseId::parse("f-1").unwrap(),
            event_id: id.clone(),
            fingerprint: loyalty_domain::Fingerprint([0; 16]),
            member_id: None,
            store_id: StoreId::parse("store-1").unwrap(),
            at: *at,
            outcome: outcome.clone(),
        })
    }

    fn cancel(&mut self, at_ms: i64, redemption: &EventId) -> Result<Applied, Rejection> {
        let cmd = MemberCommand::CancelRedemption {
            redemption_event_id: redemption.clone(),
            redemption: self.record(redemption),
        };
        self.send(at_ms, cmd).1
    }
}

/// The invariants of the ledger that a cancellation must keep.
fn assert_ledger_truth(m: &Member) {
    let s = m.state();
    let sum: i64 = m.ledger.iter().map(|e| e.points).sum();
    assert_eq!(s.points as i64, sum, "balance == sum of the ledger");
    assert_eq!(s.points, s.lots.iter().map(|l| l.points).sum::<Points>());
    assert_eq!(
        s.points_earned as i128
            - s.points_redeemed as i128
            - s.points_expired as i128
            - s.points_reversed as i128,
        s.points as i128
    );
    assert!(s.lots.windows(2).all(|w| w[0].day < w[1].day));
    // What `loyalty audit` recomputes from the ledger agrees (redeemed net of cancellations).
    let findings = loyalty_domain::audit::audit_member(s, &m.ledger, &m.program);
    assert!(findings.is_empty(), "{findings:?}");
}

// ---------------------------------------------------------------------------------------------
// Validity dates and limits
// ---------------------------------------------------------------------------------------------

#[test]
fn a_reward_is_redeemed_with_points_only_within_its_local_dates() {
    let mut p = program();
    p.time_zone = loyalty_domain::Zone::parse("Europe/Paris").unwrap();
    // T0 is 2023-11-14 at 23:13 in Paris: the local day is the 14th, the UTC one too; 50
    // minutes later it is the 15th in Paris and still the 14th in UTC.
    let coffee = p.rewards.iter_mut().find(|r| r.id == rid("free-coffee"));
    let coffee = coffee.unwrap();
    coffee.valid_from = Day::parse_iso("2023-11-10");
    coffee.valid_to = Day::parse_iso("2023-11-14");
    let mut m = Member::enrolled(p);
    m.buy(MINUTE, 30_000);
    let (_, r) = m.redeem(2 * MINUTE, "free-coffee");
    assert!(matches!(r.unwrap().outcome, Outcome::Redemption { .. }));

    let before = m.state().clone();
    let (_, r) = m.redeem(50 * MINUTE, "free-coffee");
    assert_eq!(
        r.unwrap_err(),
        Rejection::RewardNotValid {
            reward_id: rid("free-coffee"),
            valid_from: Some("2023-11-10".into()),
            valid_to: Some("2023-11-14".into()),
        }
    );
    assert_eq!(m.state(), &before, "a refusal changes nothing");
    let status = MemberStatus::of(m.state(), &m.program);
    assert!(
        status.rewards_available.contains(&rid("free-coffee")),
        "the clock is before"
    );

    // A later event moves the member's clock past the dates: the status stops offering it,
    // and a backdated redemption is judged on the clock, not on its own time.
    m.buy(60 * MINUTE, 100);
    let status = MemberStatus::of(m.state(), &m.program);
    assert!(!status.rewards_available.contains(&rid("free-coffee")));
    assert!(status.rewards_available.contains(&rid("free-pastry")));
    let (_, r) = m.redeem(3 * MINUTE, "free-coffee");
    assert_eq!(r.unwrap_err().code(), "reward-not-valid");
}

#[test]
fn a_voucher_is_honoured_outside_the_dates_and_past_the_limit() {
    let mut p = program();
    let coffee = p.rewards.iter_mut().find(|r| r.id == rid("free-coffee"));
    let coffee = coffee.unwrap();
    coffee.valid_to = Day::parse_iso("2023-01-01");
    coffee.limit_per_member = Some(1);
    let mut m = Member::enrolled(p);
    for i in 0..10 {
        m.buy(i * MINUTE, 500);
    }
    assert_eq!(m.state().vouchers.get(&rid("free-coffee")), Some(&1));
    let status = MemberStatus::of(m.state(), &m.program);
    assert!(status.rewards_available.contains(&rid("free-coffee")));
    let (_, r) = m.redeem(11 * MINUTE, "free-coffee");
    let Outcome::Redemption { used_voucher, .. } = r.unwrap().outcome else {
        panic!("a redemption")
    };
    assert!(used_voucher);
    assert!(m.state().redemptions.is_empty(), "a voucher does not count");
    let (_, r) = m.redeem(12 * MINUTE, "free-coffee");
    assert_eq!(
        r.unwrap_err().code(),
        "reward-not-valid",
        "no voucher: points"
    );
}

#[test]
fn a_reward_past_its_limit_is_refused_until_a_cancellation_frees_one() {
    let mut p = program();
    p.rewards[1].limit_per_member = Some(2);
    let mut m = Member::enrolled(p);
    m.buy(MINUTE, 100_000);
    let (first, r) = m.redeem(2 * MINUTE, "free-pastry");
    r.unwrap();
    m.redeem(3 * MINUTE, "free-pastry").1.unwrap();
    assert_eq!(m.state().redemptions.get(&rid("free-pastry")), Some(&2));
    let status = MemberStatus::of(m.state(), &m.program);
    assert!(!status.rewards_available.contains(&rid("free-pastry")));
    assert!(status.rewards_available.contains(&rid("free-coffee")));

    let before = m.state().clone();
    let (_, r) = m.redeem(4 * MINUTE, "free-pastry");
    assert_eq!(
        r.unwrap_err(),
        Rejection::RedemptionLimitReached {
            reward_id: rid("free-pastry"),
            limit_per_member: 2,
        }
    );
    assert_eq!(m.state(), &before);

    m.cancel(5 * MINUTE, &first).unwrap();
    assert_eq!(m.state().redemptions.get(&rid("free-pastry")), Some(&1));
    m.redeem(6 * MINUTE, "free-pastry").1.unwrap();
    assert_eq!(
        m.redeem(7 * MINUTE, "free-pastry").1.unwrap_err().code(),
        "redemption-limit-reached"
    );
}

#[test]
fn the_program_names_a_bad_validity_or_limit_field() {
    let base = serde_json::to_value(program()).unwrap();
    let bad = |path: &str, field: &str, v: serde_json::Value| {
        let mut p = base.clone();
        match path {
            "reward" => p["rewards"][1][field] = v,
            _ => p[field] = v,
        }
        serde_json::from_value::<Program>(p)
            .unwrap_err()
            .to_string()
    };
    let e = bad("reward", "valid_from", json!("2024-02-30"));
    assert!(
        e.contains("rewards[1].valid_from must be a local date"),
        "{e}"
    );
    let e = bad("reward", "valid_to", json!("14/11/2023"));
    assert!(
        e.contains("rewards[1].valid_to must be a local date"),
        "{e}"
    );
    let e = bad("reward", "limit_per_member", json!(0));
    assert!(
        e.contains("rewards[1].limit_per_member must be between 1 and"),
        "{e}"
    );
    let e = bad("program", "redemption_cancel_minutes", json!(10_081));
    assert!(
        e.contains("redemption_cancel_minutes must be between 0 and 10080"),
        "{e}"
    );
    let mut p = base.clone();
    p["rewards"][0]["valid_from"] = json!("2024-03-02");
    p["rewards"][0]["valid_to"] = json!("2024-03-01");
    let e = serde_json::from_value::<Program>(p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rewards[0].valid_from (2024-03-02) is after rewards[0].valid_to"),
        "{e}"
    );

    // A valid one reads back as written, dates as local dates.
    let mut p = base;
    p["rewards"][0]["valid_from"] = json!("2024-03-01");
    p["rewards"][0]["limit_per_member"] = json!(3);
    let read: Program = serde_json::from_value(p.clone()).unwrap();
    assert_eq!(read.rewards[0].valid_from, Day::parse_iso("2024-03-01"));
    assert_eq!(serde_json::to_value(&read).unwrap(), p);
}

#[test]
fn states_programs_and_records_stored_before_read_as_they_were() {
    // A state without `redemptions`, a program and reward without the new settings, a
    // redemption record without `lots_taken` or `cancelled_by`.
    let mut m = Member::enrolled(program());
    m.buy(MINUTE, 20_000);
    let mut state = serde_json::to_value(m.state()).unwrap();
    assert!(state.get("redemptions").is_none(), "empty: not written");
    state.as_object_mut().unwrap().remove("redemptions");
    let read: MemberState = serde_json::from_value(state).unwrap();
    assert!(read.redemptions.is_empty());

    let mut p = serde_json::to_value(Program::demo()).unwrap();
    for r in p["rewards"].as_array_mut().unwrap() {
        for k in ["valid_from", "valid_to", "limit_per_member"] {
            r.as_object_mut().unwrap().remove(k);
        }
    }
    p.as_object_mut()
        .unwrap()
        .remove("redemption_cancel_minutes");
    assert_eq!(
        serde_json::from_value::<Program>(p).unwrap(),
        Program::demo()
    );

    let old = json!({ "type": "redemption", "reward_id": "free-coffee", "used_voucher": false,
        "points_spent": 100 });
    let o: Outcome = serde_json::from_value(old).unwrap();
    assert!(
        matches!(o, Outcome::Redemption { ref lots_taken, cancelled_by: None, .. } if lots_taken.is_empty())
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cancellation_gives_the_points_back_into_their_lots_once() {
    let mut m = Member::enrolled(program());
    // Lots: 50 (signup) on day 0, 80 on day 1, 200 on day 2.
    m.buy(DAY, 8_000);
    m.buy(2 * DAY, 20_000);
    let before = m.state().clone();
    let (redemption, r) = m.redeem(2 * DAY + MINUTE, "free-pastry");
    let Outcome::Redemption { lots_taken, .. } = r.unwrap().outcome else {
        panic!("a redemption")
    };
    let lot = |i: usize, points: Points| PointLot {
        day: before.lots[i].day,
        points,
    };
    assert_eq!(before.lots.len(), 3);
    assert_eq!(
        lots_taken,
        vec![lot(0, 50), lot(1, 80), lot(2, 20)],
        "oldest first"
    );
    assert_eq!(m.state().points, before.points - 150);

    let applied = m.cancel(2 * DAY + 20 * MINUTE, &redemption).unwrap();
    assert_eq!(
        applied.outcome,
        Outcome::RedemptionCancelled {
            redemption_event_id: redemption.clone(),
            reward_id: rid("free-pastry"),
            points_returned: 150,
            voucher_returned: false,
        }
    );
    let e = &applied.entries[0];
    assert_eq!((e.kind, e.points), (LedgerKind::Redeem, 150));
    assert_eq!(e.detail, format!("cancel:{redemption}"));
    let s = m.state();
    assert_eq!(
        s.lots, before.lots,
        "the points are back in the lots they came from"
    );
    assert_eq!(
        (s.points, s.points_redeemed, s.redemptions.clone()),
        (before.points, before.points_redeemed, BTreeMap::new())
    );
    assert_ledger_truth(&m);

    // A second cancellation, by another event, is refused and changes nothing.
    let after = m.state().clone();
    let cancel = m
        .records
        .iter()
        .find(|(_, (_, o))| matches!(o, Outcome::RedemptionCancelled { .. }));
    let first_cancel = cancel.unwrap().0.clone();
    assert_eq!(
        m.cancel(2 * DAY + 21 * MINUTE, &redemption).unwrap_err(),
        Rejection::RedemptionAlreadyCancelled {
            redemption_event_id: redemption,
            cancelled_by: first_cancel,
        }
    );
    assert_eq!(m.state(), &after);
}

#[test]
fn a_cancellation_of_a_voucher_redemption_gives_the_voucher_back() {
    let mut m = Member::enrolled(program());
    for i in 0..10 {
        m.buy(i * MINUTE, 100);
    }
    let (redemption, r) = m.redeem(11 * MINUTE, "free-coffee");
    assert!(matches!(
        r.unwrap().outcome,
        Outcome::Redemption {
            used_voucher: true,
            ..
        }
    ));
    assert!(m.state().vouchers.is_empty());
    let points = m.state().points;
    let applied = m.cancel(12 * MINUTE, &redemption).unwrap();
    assert!(matches!(
        applied.outcome,
        Outcome::RedemptionCancelled {
            voucher_returned: true,
            points_returned: 0,
            ..
        }
    ));
    assert_eq!(m.state().vouchers.get(&rid("free-coffee")), Some(&1));
    assert_eq!(m.state().points, points);
    assert_eq!(applied.entries[0].points, 0);
    assert_ledger_truth(&m);
}

#[test]
fn a_cancellation_after_the_window_without_one_or_of_no_redemption_is_refused() {
    let mut m = Member::enrolled(program());
    m.buy(MINUTE, 30_000);
    let (redemption, r) = m.redeem(2 * MINUTE, "free-coffee");
    r.unwrap();
    // Another event moves the clock past the window: a backdated cancellation is too late.
    m.buy(40 * MINUTE, 100);
    let before = m.state().clone();
    assert_eq!(
        m.cancel(10 * MINUTE, &redemption).unwrap_err(),
        Rejection::CancellationWindowClosed { cancel_minutes: 30 }
    );
    assert_eq!(m.state(), &before);
    // Exactly at the window's end it is still open.
    let (late, r) = m.redeem(41 * MINUTE, "free-coffee");
    r.unwrap();
    m.cancel(71 * MINUTE, &late).unwrap();

    // A purchase's event id, or an id never seen, is no redemption.
    let purchase = m
        .records
        .iter()
        .find(|(_, (_, o))| matches!(o, Outcome::Purchase(_)));
    let purchase = purchase.unwrap().0.clone();
    assert_eq!(
        m.cancel(72 * MINUTE, &purchase).unwrap_err().code(),
        "unknown-redemption"
    );

    // A program without a window cancels nothing.
    let mut p = program();
    p.redemption_cancel_minutes = 0;
    let mut m = Member::enrolled(p);
    m.buy(MINUTE, 30_000);
    let (redemption, _) = m.redeem(2 * MINUTE, "free-coffee");
    assert_eq!(
        m.cancel(2 * MINUTE, &redemption).unwrap_err(),
        Rejection::CancellationWindowClosed { cancel_minutes: 0 }
    );
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Buy(i64),
    Redeem(usize),
    /// Cancel the n-th redemption sent so far (modulo their number).
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i64..40_000).prop_map(Op::Buy),
        4 => (0usize..3).prop_map(Op::Redeem),
        3 => any::<usize>().prop_map(Op::Cancel),
    ]
}

/// A program whose rewards have random limits, dates around the run and a window.
fn limited_program(limits: [Option<u32>; 3], window: u32, to_day: Option<u32>) -> Program {
    let mut p = program();
    p.stamp_card = Some(loyalty_domain::StampCard {
        size: 3,
        reward_id: rid("free-coffee"),
    });
    let mut third = p.rewards[1].clone();
    third.id = rid("free-cake");
    third.cost_points = 40;
    p.rewards.push(third);
    for (r, l) in p.rewards.iter_mut().zip(limits) {
        r.limit_per_member = l;
    }
    p.rewards[2].valid_to = to_day.map(|d| Day(Timestamp(T0).day().0 + d));
    p.redemption_cancel_minutes = window;
    p
}

const REWARDS: [&str; 3] = ["free-coffee", "free-pastry", "free-cake"];

proptest! {
    /// Whatever the sequence of purchases, redemptions and cancellations (of any earlier
    /// redemption, in or out of the window, once or again), a member's redemptions of a reward
    /// with points, net of cancellations, never pass its limit, and the state's count is that
    /// net number.
    #[test]
    fn limits_are_never_exceeded(
        limits in prop::array::uniform3(prop::option::of(1u32..4)),
        window in 0u32..60,
        to_day in prop::option::of(0u32..3),
        steps in prop::collection::vec((0i64..20 * MINUTE, op()), 1..80),
    ) {
        let p = limited_program(limits, window, to_day);
        let mut m = Member::enrolled(p.clone());
        let mut t = 0;
        let mut redemptions: Vec<EventId> = Vec::new();
        let mut net: HashMap<RewardId, i64> = HashMap::new();
        for (dt, op) in steps {
            t += dt;
            match op {
                Op::Buy(c) => m.buy(t, c),
                Op::Redeem(i) => {
                    let (id, r) = m.redeem(t, REWARDS[i]);
                    if let Ok(Applied { outcome: Outcome::Redemption { used_voucher: false, reward_id, .. }, .. }) = &r {
                        *net.entry(reward_id.clone()).or_default() += 1;
                    }
                    if r.is_ok() {
                        redemptions.push(id);
                    }
                }
                Op::Cancel(n) if !redemptions.is_empty() => {
                    let id = redemptions[n % redemptions.len()].clone();
                    if let Ok(Applied { outcome: Outcome::RedemptionCancelled { voucher_returned: false, reward_id, .. }, .. }) = m.cancel(t, &id) {
                        *net.entry(reward_id).or_default() -= 1;
                    }
                }
                Op::Cancel(_) => {}
            }
            for r in &p.rewards {
                let n = m.state().redemptions.get(&r.id).copied().unwrap_or(0);
                prop_assert_eq!(i64::from(n), net.get(&r.id).copied().unwrap_or(0));
                prop_assert!(r.limit_per_member.is_none_or(|l| n <= l), "{} past its limit", r.id);
            }
        }
    }

    /// A cancellation gives back exactly what its redemption took (the points into the same
    /// lots, or the voucher), only once: right after a redemption, cancelling it brings the
    /// member back to the state before it but for the ledger's position and the version, and
    /// a second cancellation is refused and changes nothing; the ledger stays the balance's sum.
    #[test]
    fn a_cancellation_gives_back_exactly_what_the_redemption_took_once(
        buys in prop::collection::vec((0i64..3 * DAY, 0i64..40_000), 1..20),
        reward in 0usize..3,
        wait in 0i64..40 * MINUTE,
    ) {
        let p = limited_program([None, Some(1), None], 30, None);
        let mut m = Member::enrolled(p);
        let mut t = 0;
        for (dt, c) in buys {
            t += dt;
            m.buy(t, c);
        }
        let before = m.state().clone();
        let (id, r) = m.redeem(t, REWARDS[reward]);
        prop_assume!(r.is_ok());
        let taken = match r.unwrap().outcome {
            Outcome::Redemption { used_voucher, points_spent, lots_taken, .. } => {
                prop_assert_eq!(lots_taken.iter().map(|l| l.points).sum::<Points>(), points_spent);
                prop_assert_eq!(used_voucher, points_spent == 0);
                points_spent
            }
            o => panic!("{o:?}"),
        };
        let result = m.cancel(t + wait, &id);
        if wait > 30 * MINUTE {
            prop_assert_eq!(result.unwrap_err().code(), "cancellation-window-closed");
            return Ok(());
        }
        let applied = result.unwrap();
        let Outcome::RedemptionCancelled { points_returned, .. } = applied.outcome else {
            panic!("a cancellation")
        };
        prop_assert_eq!(points_returned, taken);
        let mut after = m.state().clone();
        prop_assert_eq!(after.last_seq, before.last_seq + 2);
        prop_assert_eq!(after.version, before.version + 2);
        after.last_seq = before.last_seq;
        after.version = before.version;
        after.clock = before.clock;
        prop_assert_eq!(&after, &before);
        assert_ledger_truth(&m);

        let once = m.state().clone();
        prop_assert_eq!(m.cancel(t + wait, &id).unwrap_err().code(), "redemption-already-cancelled");
        prop_assert_eq!(m.state(), &once);
    }
}

// ---------------------------------------------------------------------------------------------
// Automatic vouchers
// ---------------------------------------------------------------------------------------------

/// The demo program with a 5 € voucher at 500 points and a 12 € one at 1 000.
fn voucher_program() -> Program {
    let mut v = serde_json::to_value(program()).unwrap();
    let rewards = v["rewards"].as_array_mut().unwrap();
    rewards.push(json!({ "id": "voucher-5", "name": "5 € off", "cost_points": 600 }));
    rewards.push(json!({ "id": "voucher-12", "name": "12 € off", "cost_points": 1200 }));
    v["auto_vouchers"] = json!([
        { "at_points": 500, "reward_id": "voucher-5" },
        { "at_points": 1000, "reward_id": "voucher-12" },
    ]);
    serde_json::from_value(v).unwrap()
}

#[test]
fn an_earn_converts_points_into_vouchers_highest_threshold_first() {
    let mut m = Member::enrolled(voucher_program());
    // 50 of signup bonus: below every threshold.
    assert_eq!(m.state().points, 50);
    // 16.50 € earn 16 points (66), then 1 650 € make 1 716: a 12 € voucher and a 5 € one.
    m.buy(MINUTE, 1_650);
    m.buy(2 * MINUTE, 165_000);
    let s = m.state();
    assert_eq!(s.points, 1_716 - 1_500);
    assert_eq!(s.vouchers.get(&rid("voucher-12")), Some(&1));
    assert_eq!(s.vouchers.get(&rid("voucher-5")), Some(&1));
    assert_eq!(s.points_redeemed, 1_500);
    let auto: Vec<(&str, i64)> = m
        .ledger
        .iter()
        .filter(|e| e.detail.starts_with("auto_voucher:"))
        .map(|e| (e.detail.as_str(), e.points))
        .collect();
    assert_eq!(
        auto,
        [
            ("auto_voucher:voucher-12", -1_000),
            ("auto_voucher:voucher-5", -500)
        ]
    );
    assert_ledger_truth(&m);

    // Repeatedly, when the balance allows: 1 000 € at Gold (×2, reached by 1 666.50 € of
    // spend) are 2 000 more points, two 12 € vouchers and no 5 €.
    m.buy(3 * MINUTE, 100_000);
    let s = m.state();
    assert_eq!(s.vouchers.get(&rid("voucher-12")), Some(&3));
    assert_eq!(s.vouchers.get(&rid("voucher-5")), Some(&1));
    assert_eq!(s.tier, "Gold");
    assert_eq!(s.points, 216 + 2_000 - 2_000);
    let status = MemberStatus::of(s, &m.program);
    assert!(status.rewards_available.contains(&rid("voucher-12")));

    // The voucher is redeemed as a voucher (0 points).
    let (_, r) = m.redeem(4 * MINUTE, "voucher-5");
    assert!(matches!(
        r.unwrap().outcome,
        Outcome::Redemption {
            used_voucher: true,
            points_spent: 0,
            ..
        }
    ));
    assert_ledger_truth(&m);
}

#[test]
fn a_refund_after_an_automatic_voucher_forgives_what_was_converted() {
    let mut m = Member::enrolled(voucher_program());
    let currency = m.program.currency.clone();
    let (purchase, r) = m.send(
        MINUTE,
        MemberCommand::Purchase {
            amount: Cents::new(60_000).unwrap(),
            currency,
            items: Vec::new(),
        },
    );
    let Outcome::Purchase(record) = r.unwrap().outcome else {
        panic!("a purchase")
    };
    // 650 points: a 5 € voucher, 150 left.
    assert_eq!(m.state().points, 150);
    let cmd = MemberCommand::Refund {
        purchase_event_id: purchase,
        amount: Some(Cents::new(60_000).unwrap()),
        purchase: Some(record),
        purchase_unseen: false,
    };
    let applied = m.send(2 * MINUTE, cmd).1.unwrap();
    let Outcome::Refund {
        points_reversed,
        points_forgiven,
        ..
    } = applied.outcome
    else {
        panic!("a refund")
    };
    // The refund owes 600: what is left is taken back, the converted rest is forgiven, and
    // the voucher stays the member's.
    assert_eq!((points_reversed, points_forgiven), (150, 450));
    assert_eq!(m.state().points, 0);
    assert_eq!(m.state().vouchers.get(&rid("voucher-5")), Some(&1));
    assert_ledger_truth(&m);
}

#[test]
fn the_program_names_a_bad_automatic_voucher() {
    let base = serde_json::to_value(voucher_program()).unwrap();
    let bad = |i: usize, field: &str, v: serde_json::Value| {
        let mut p = base.clone();
        p["auto_vouchers"][i][field] = v;
        serde_json::from_value::<Program>(p)
            .unwrap_err()
            .to_string()
    };
    let e = bad(0, "reward_id", json!("free-car"));
    assert!(
        e.contains("auto_vouchers[0].reward_id \"free-car\" is not a reward"),
        "{e}"
    );
    let e = bad(1, "at_points", json!(0));
    assert!(
        e.contains("auto_vouchers[1].at_points must be between 1 and"),
        "{e}"
    );
    let e = bad(1, "at_points", json!(500));
    assert!(
        e.contains("auto_vouchers[1].at_points 500 appears twice"),
        "{e}"
    );
    // As written, it reads back the same (a program stored with it reads again).
    let p: Program = serde_json::from_value(base.clone()).unwrap();
    assert_eq!(serde_json::to_value(&p).unwrap(), base);
}

proptest! {
    /// Whatever the purchases, refunds and redemptions, after each command the balance is
    /// below every automatic threshold, each conversion took exactly its vouchers' points, and
    /// the ledger (and the audit) agree with the state.
    #[test]
    fn automatic_vouchers_leave_the_balance_below_every_threshold(
        thresholds in prop::collection::btree_set(1i64..700, 1..3),
        steps in prop::collection::vec((0i64..DAY, 0i64..80_000, any::<bool>()), 1..40),
    ) {
        let mut v = serde_json::to_value(program()).unwrap();
        v["auto_vouchers"] = json!(thresholds.iter().enumerate()
            .map(|(i, t)| {
                let reward = ["free-coffee", "free-pastry"][i % 2];
                json!({ "at_points": t, "reward_id": reward })
            })
            .collect::<Vec<_>>());
        let p: Program = serde_json::from_value(v).unwrap();
        let lowest = *thresholds.iter().next().unwrap() as u64;
        let mut m = Member::enrolled(p);
        let mut t = 0;
        for (dt, cents, redeem) in steps {
            t += dt;
            if redeem {
                let _ = m.redeem(t, "free-coffee");
            } else {
                m.buy(t, cents);
            }
            prop_assert!(m.state().points < lowest, "{} left", m.state().points);
            for e in m.ledger.iter().filter(|e| e.detail.starts_with("auto_voucher:")) {
                let at = thresholds.iter().any(|t| e.points % t == 0 && e.points < 0);
                prop_assert!(at, "{:?}", e);
            }
            assert_ledger_truth(&m);
        }
    }
}
