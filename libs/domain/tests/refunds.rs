//! Refunds and voids (README "Refunds and voids"): a refund reverses exactly what its purchase
//! gave (points pro rata; the visit, the stamp and an unused voucher of the card once refunded
//! in full; a used voucher stays used), a void refunds all that is left, and a refund of a
//! purchase not seen yet is held and applied within the purchase when it arrives, within the
//! program's horizon. Ledger entries record the program version of their event.

use std::collections::HashMap;

use loyalty_domain::dashboard::DashboardDelta;
use loyalty_domain::{
    apply, Applied, Cents, EventContext, EventId, FranchiseId, LedgerEntry, LedgerKind,
    MemberCommand, MemberId, MemberState, MemberStatus, Outcome, Phone, Profile, Program,
    PurchaseRecord, Rejection, RewardId, StoreId, Timestamp, MAX_HELD_REFUNDS,
};
use proptest::prelude::*;
use serde_json::json;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_760_000_000_000;

/// A café: 1 point per euro, no signup bonus, a card of `card` stamps for a free coffee (100
/// points otherwise), Bronze and Silver at `silver` visits over 30 days (Silver ×2).
fn cafe(card: i64, silver: i64) -> Program {
    serde_json::from_value(json!({
        "currency": "EUR",
        "points_per_unit": 1,
        "stamp_card": { "size": card, "reward_id": "free-coffee" },
        "tier_qualification": { "metric": "visits", "window_days": 30 },
        "tiers": [
            { "name": "Bronze", "threshold": 0, "multiplier_pct": 100 },
            { "name": "Silver", "threshold": silver, "multiplier_pct": 200 }
        ],
        "rewards": [{ "id": "free-coffee", "name": "Free coffee", "cost_points": 100 }]
    }))
    .expect("a valid program")
}

/// One member, with the engine's bookkeeping: every event's outcome by id, and each purchase's
/// current record (refunds keep it current), so that a refund is sent as the engine would.
struct Till {
    program: Program,
    program_version: u32,
    state: Option<MemberState>,
    next: u32,
    outcomes: HashMap<EventId, Outcome>,
    purchases: HashMap<EventId, PurchaseRecord>,
    ledger: Vec<LedgerEntry>,
    clock: i64,
}

impl Till {
    fn new(program: Program) -> Till {
        let mut t = Till {
            program,
            program_version: 1,
            state: None,
            next: 0,
            outcomes: HashMap::new(),
            purchases: HashMap::new(),
            ledger: Vec::new(),
            clock: T0,
        };
        let profile = Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: None,
            birthday: None,
            consent: Default::default(),
            email: None,
        };
        t.send(MemberCommand::Enrol { profile }).1.unwrap();
        t
    }

    fn state(&self) -> &MemberState {
        self.state.as_ref().expect("enrolled")
    }

    fn id(&mut self) -> EventId {
        self.next += 1;
        EventId::parse(&format!("e-{}", self.next)).unwrap()
    }

    fn send(&mut self, cmd: MemberCommand) -> (EventId, Result<Applied, Rejection>) {
        let id = self.id();
        let r = self.send_as(&id, cmd);
        (id, r)
    }

    /// Applies `cmd` as event `id` at the till's clock, and keeps the books as the engine does.
    fn send_as(&mut self, id: &EventId, cmd: MemberCommand) -> Result<Applied, Rejection> {
        let store = StoreId::parse("s-1").unwrap();
        let ctx = EventContext {
            event_id: id,
            store_id: &store,
            at: Timestamp(self.clock),
            program: &self.program,
            program_version: self.program_version,
        };
        let member = MemberId::parse("m-1").unwrap();
        let franchise = FranchiseId::parse("f-1").unwrap();
        let result = apply(&mut self.state, &member, &franchise, &cmd, &ctx);
        match &result {
            Ok(a) => {
                self.ledger.extend(a.entries.iter().cloned());
                match &a.outcome {
                    Outcome::Purchase(r) => {
                        self.purchases.insert(id.clone(), r.clone());
                    }
                    Outcome::Refund {
                        purchase_event_id,
                        purchase,
                        ..
                    } => {
                        self.purchases
                            .insert(purchase_event_id.clone(), purchase.clone());
                    }
                    _ => {}
                }
                self.outcomes.insert(id.clone(), a.outcome.clone());
            }
            Err(r) => {
                self.outcomes
                    .insert(id.clone(), Outcome::Rejected(r.clone()));
            }
        }
        result
    }

    fn buy(&mut self, cents: i64) -> EventId {
        let id = self.id();
        self.buy_as(&id, cents).expect("a purchase is accepted");
        id
    }

    fn buy_as(&mut self, id: &EventId, cents: i64) -> Result<Applied, Rejection> {
        let cmd = MemberCommand::Purchase {
            amount: Cents::new(cents).unwrap(),
            currency: self.program.currency.clone(),
            items: Vec::new(),
        };
        self.send_as(id, cmd)
    }

    /// A refund of `purchase` as the engine sends it: with its record if it is a purchase of
    /// this member, "unseen" if no event has its id.
    fn refund(&mut self, purchase: &EventId, cents: Option<i64>) -> Result<Applied, Rejection> {
        let cmd = MemberCommand::Refund {
            purchase_event_id: purchase.clone(),
            amount: cents.map(|c| Cents::new(c).unwrap()),
            purchase: self.purchases.get(purchase).cloned(),
            purchase_unseen: !self.outcomes.contains_key(purchase),
        };
        self.send(cmd).1
    }

    fn redeem(&mut self, reward: &str) -> Result<Applied, Rejection> {
        let cmd = MemberCommand::Redemption {
            reward_id: RewardId::parse(reward).unwrap(),
        };
        self.send(cmd).1
    }

    fn vouchers(&self) -> u32 {
        let coffee = RewardId::parse("free-coffee").unwrap();
        self.state().vouchers.get(&coffee).copied().unwrap_or(0)
    }
}

/// What a refund's outcome says it took back besides points.
fn reversal(a: &Applied) -> (bool, bool, Option<RewardId>, Option<RewardId>) {
    match &a.outcome {
        Outcome::Refund {
            visit_reversed,
            stamp_reversed,
            voucher_reversed,
            voucher_kept,
            ..
        } => (
            *visit_reversed,
            *stamp_reversed,
            voucher_reversed.clone(),
            voucher_kept.clone(),
        ),
        other => panic!("not a refund: {other:?}"),
    }
}

fn coffee() -> Option<RewardId> {
    Some(RewardId::parse("free-coffee").unwrap())
}

#[test]
fn a_full_refund_takes_back_the_stamp_the_unused_voucher_the_visit_and_the_tier() {
    let mut t = Till::new(cafe(2, 2));
    t.buy(1_000);
    let second = t.buy(1_000);
    let s = t.state();
    assert_eq!((s.stamps, t.vouchers(), s.visits), (0, 1, 2));
    assert_eq!(s.tier, "Silver");
    let rec = &t.purchases[&second];
    assert!(rec.visit && rec.stamp);
    assert_eq!((rec.voucher.clone(), rec.card_size), (coffee(), 2));

    let a = t.refund(&second, Some(1_000)).unwrap();
    assert_eq!(reversal(&a), (true, true, coffee(), None));
    let s = t.state();
    assert_eq!((s.stamps, t.vouchers(), s.visits), (1, 0, 1));
    assert_eq!(s.tier, "Bronze", "the visit left the tier window");
    assert_eq!(s.points, 10);
    assert_eq!(s.spend_cents, 1_000);
    assert!(t.purchases[&second].reversed_in_full);
}

#[test]
fn a_used_voucher_stays_used_and_the_refund_says_so() {
    let mut t = Till::new(cafe(2, 10));
    t.buy(1_000);
    let second = t.buy(1_000);
    let redeemed = t.redeem("free-coffee").unwrap();
    assert!(matches!(
        redeemed.outcome,
        Outcome::Redemption {
            used_voucher: true,
            ..
        }
    ));
    let a = t.refund(&second, None).unwrap();
    assert_eq!(reversal(&a), (true, false, None, coffee()));
    let s = t.state();
    assert_eq!((s.stamps, t.vouchers(), s.visits), (0, 0, 1));
    // Nothing else is taken for the voucher: only the purchase's own points.
    assert_eq!(s.points, 10);
    assert_eq!(
        a.entries.iter().map(|e| e.points).sum::<i64>(),
        -10,
        "one reverse entry of the purchase's points"
    );
}

#[test]
fn a_stamp_comes_off_the_current_card_when_later_purchases_started_one() {
    let mut t = Till::new(cafe(2, 10));
    t.buy(1_000);
    let completing = t.buy(1_000);
    t.buy(1_000);
    assert_eq!((t.state().stamps, t.vouchers()), (1, 1));
    // Without the completing stamp, the third purchase would have completed the card: the
    // voucher stays and one stamp comes off.
    let a = t.refund(&completing, None).unwrap();
    assert_eq!(reversal(&a), (true, true, None, None));
    assert_eq!((t.state().stamps, t.vouchers()), (0, 1));
}

#[test]
fn a_partial_refund_takes_points_pro_rata_and_the_last_one_the_visit_and_stamp() {
    let mut t = Till::new(cafe(5, 10));
    let p = t.buy(5_000);
    let a = t.refund(&p, Some(2_000)).unwrap();
    assert_eq!(reversal(&a), (false, false, None, None));
    let s = t.state();
    assert_eq!(
        (s.points, s.stamps, s.visits, s.spend_cents),
        (30, 1, 1, 3_000)
    );
    assert_eq!(t.state().window_metric(&t.program), 1, "still a visit");
    // A void: everything that is left, and with it the visit and the stamp.
    let a = t.refund(&p, None).unwrap();
    let Outcome::Refund { amount_cents, .. } = &a.outcome else {
        panic!("a refund")
    };
    assert_eq!(amount_cents.get(), 3_000);
    assert_eq!(reversal(&a), (true, true, None, None));
    let s = t.state();
    assert_eq!((s.points, s.stamps, s.visits, s.spend_cents), (0, 0, 0, 0));
    // Nothing is left: another void is refused and changes nothing.
    let before = t.state().clone();
    assert_eq!(
        t.refund(&p, None).unwrap_err(),
        Rejection::RefundExceedsPurchase { remaining_cents: 0 }
    );
    assert_eq!(t.state(), &before);
}

#[test]
fn ledger_entries_record_the_program_version_of_their_event() {
    let mut t = Till::new(cafe(5, 10));
    let before = t.buy(1_000);
    t.program_version = 2;
    t.program.points_per_unit = 5;
    let after = t.buy(1_000);
    let version_of = |id: &EventId| {
        let e: Vec<&LedgerEntry> = t.ledger.iter().filter(|e| &e.event_id == id).collect();
        assert_eq!(e.len(), 1);
        (e[0].program_version, e[0].points)
    };
    assert_eq!(version_of(&before), (1, 10));
    assert_eq!(version_of(&after), (2, 50));
    // An entry stored before the version was recorded reads as version 0.
    let mut old = serde_json::to_value(&t.ledger[0]).unwrap();
    old.as_object_mut().unwrap().remove("program_version");
    let e: LedgerEntry = serde_json::from_value(old).unwrap();
    assert_eq!(e.program_version, 0);
}

#[test]
fn records_and_states_stored_before_refunds_were_held_still_read() {
    let old = json!({"amount_cents": 1000, "points_earned": 10, "day": 20000,
        "refunded_cents": 0, "reversed_points": 0});
    let r: PurchaseRecord = serde_json::from_value(old).unwrap();
    assert!(!r.visit && !r.stamp && r.voucher.is_none() && !r.reversed_in_full);
    let old = json!({"type": "refund", "purchase_event_id": "p", "amount_cents": 1,
        "points_reversed": 0, "points_forgiven": 0, "purchase": {"amount_cents": 1000,
        "points_earned": 10, "day": 20000, "refunded_cents": 1, "reversed_points": 0}});
    let o: Outcome = serde_json::from_value(old).unwrap();
    assert_eq!(
        reversal(&Applied {
            entries: Vec::new(),
            outcome: o,
            changed: true,
            visits: Vec::new(),
            tier: None,
            segments: None,
            campaigns: Default::default(),
        }),
        (false, false, None, None)
    );
    let t = Till::new(cafe(5, 10));
    let mut state = serde_json::to_value(t.state()).unwrap();
    assert!(
        state.get("held_refunds").is_none(),
        "not written when empty"
    );
    state.as_object_mut().unwrap().remove("held_refunds");
    let back: MemberState = serde_json::from_value(state).unwrap();
    assert!(back.held_refunds.is_empty());
    // A full refund of a purchase recorded before: points and spend only, as then.
    let mut t = Till::new(cafe(5, 10));
    let p = t.buy(1_000);
    let rec = t.purchases.get_mut(&p).unwrap();
    (rec.visit, rec.stamp) = (false, false);
    let a = t.refund(&p, None).unwrap();
    assert_eq!(reversal(&a), (false, false, None, None));
    assert_eq!(
        (t.state().visits, t.state().stamps, t.state().points),
        (1, 1, 0)
    );
}

#[test]
fn a_refund_before_its_purchase_is_held_and_applied_within_the_purchase() {
    let mut t = Till::new(cafe(5, 10));
    let purchase = EventId::parse("till-2:0001").unwrap();
    t.program_version = 3;
    let (refund_id, held) = {
        let cmd = MemberCommand::Refund {
            purchase_event_id: purchase.clone(),
            amount: Some(Cents::new(400).unwrap()),
            purchase: None,
            purchase_unseen: true,
        };
        t.send(cmd)
    };
    let held = held.unwrap();
    let Outcome::Held {
        purchase_event_id,
        amount_cents,
        lapses_at,
    } = &held.outcome
    else {
        panic!("held: {:?}", held.outcome)
    };
    assert_eq!(purchase_event_id, &purchase);
    assert_eq!(amount_cents.map(Cents::get), Some(400));
    assert_eq!(lapses_at.0, T0 + 30 * DAY, "the default horizon: 30 days");
    assert!(held.entries.is_empty());
    assert_eq!(t.state().held_refunds.len(), 1);

    t.program_version = 4;
    let a = t.buy_as(&purchase, 1_000).unwrap();
    let Outcome::Purchase(rec) = &a.outcome else {
        panic!("a purchase")
    };
    assert_eq!((rec.refunded_cents, rec.reversed_points), (400, 4));
    assert_eq!(rec.held_refunded_cents, 400);
    let kinds: Vec<(LedgerKind, i64, &str, u32)> = a
        .entries
        .iter()
        .map(|e| (e.kind, e.points, e.event_id.as_str(), e.program_version))
        .collect();
    assert_eq!(
        kinds,
        [
            (LedgerKind::Earn, 10, "till-2:0001", 4),
            (LedgerKind::Reverse, -4, refund_id.as_str(), 3)
        ],
        "the reversal names the refund and the version it was accepted under"
    );
    let s = t.state();
    assert!(s.held_refunds.is_empty());
    assert_eq!((s.points, s.spend_cents, s.visits), (6, 600, 1));
    // The rest of the purchase can still be refunded, no more.
    assert_eq!(
        t.refund(&purchase, Some(601)).unwrap_err(),
        Rejection::RefundExceedsPurchase {
            remaining_cents: 600
        }
    );
    // A later refund adds to what is refunded, not to what the held ones refunded: the
    // dashboards count each refunded cent once, live or rebuilt from the records.
    let later = t.refund(&purchase, Some(100)).unwrap();
    let rec = t.purchases[&purchase].clone();
    assert_eq!((rec.refunded_cents, rec.held_refunded_cents), (500, 400));
    let (f, store) = (
        FranchiseId::parse("f-1").unwrap(),
        StoreId::parse("s-1").unwrap(),
    );
    let mut rebuilt = DashboardDelta::default();
    let day = t.program.local_day(Timestamp(T0));
    for o in [&Outcome::Purchase(rec), &held.outcome, &later.outcome] {
        rebuilt.add_outcome(&f, &store, day, &t.program, o);
    }
    let refunded: u64 = rebuilt.totals.values().map(|t| t.refunded_cents).sum();
    assert_eq!(refunded, 500);
}

#[test]
fn a_held_void_refunds_the_whole_purchase_with_its_stamp_and_visit() {
    let mut t = Till::new(cafe(5, 10));
    let purchase = EventId::parse("till-2:0002").unwrap();
    assert!(matches!(
        t.refund(&purchase, None).unwrap().outcome,
        Outcome::Held {
            amount_cents: None,
            ..
        }
    ));
    let Outcome::Purchase(rec) = t.buy_as(&purchase, 1_000).unwrap().outcome else {
        panic!("a purchase")
    };
    assert!(rec.reversed_in_full);
    let s = t.state();
    assert_eq!((s.points, s.stamps, s.visits, s.spend_cents), (0, 0, 0, 0));
}

#[test]
fn held_refunds_are_bounded_and_lapse_at_the_horizon() {
    let mut t = Till::new(cafe(5, 10));
    for i in 0..MAX_HELD_REFUNDS {
        let p = EventId::parse(&format!("offline-{i}")).unwrap();
        assert!(matches!(
            t.refund(&p, Some(100)).unwrap().outcome,
            Outcome::Held { .. }
        ));
    }
    let before = t.state().clone();
    let p = EventId::parse("offline-x").unwrap();
    assert_eq!(
        t.refund(&p, Some(100)).unwrap_err(),
        Rejection::LimitExceeded {
            counter: "held_refunds".into(),
            limit: MAX_HELD_REFUNDS as u64
        }
    );
    assert_eq!(t.state(), &before, "refused, nothing changed");
    // One day before the horizon they are still held; at it they lapse.
    t.clock += 29 * DAY;
    t.buy(100);
    assert_eq!(t.state().held_refunds.len(), MAX_HELD_REFUNDS);
    t.clock += DAY;
    t.buy(100);
    assert!(t.state().held_refunds.is_empty());
    // A purchase arriving after its refund lapsed is not refunded.
    let late = EventId::parse("offline-0").unwrap();
    let Outcome::Purchase(rec) = t.buy_as(&late, 1_000).unwrap().outcome else {
        panic!("a purchase")
    };
    assert_eq!(rec.refunded_cents, 0);
}

/// A held refund shows in the status and is due for the scheduler at its horizon: an advance
/// there, with no event of the member's, drops it, and it leaves the status.
#[test]
fn a_held_refund_lapses_on_time_without_an_event() {
    let mut t = Till::new(cafe(5, 10));
    let p = EventId::parse("offline-1").unwrap();
    let Outcome::Held { lapses_at, .. } = t.refund(&p, Some(100)).unwrap().outcome else {
        panic!("held")
    };
    let status = MemberStatus::of(t.state(), &t.program);
    assert_eq!(status.held_refunds.len(), 1);
    assert_eq!(status.held_refunds[0].purchase_event_id, p);
    assert_eq!(status.held_refunds[0].lapses_at, lapses_at);
    assert_eq!(
        t.state().next_due(&t.program),
        Some(lapses_at),
        "nothing else is due earlier"
    );
    t.clock = lapses_at.0 - 1;
    t.send(MemberCommand::Advance).1.unwrap();
    assert_eq!(t.state().held_refunds.len(), 1, "not before its horizon");
    t.clock = lapses_at.0;
    let applied = t.send(MemberCommand::Advance).1.unwrap();
    assert!(applied.changed);
    assert!(t.state().held_refunds.is_empty());
    assert!(MemberStatus::of(t.state(), &t.program)
        .held_refunds
        .is_empty());
}

#[test]
fn refunds_of_other_events_or_with_holding_off_are_refused() {
    let mut t = Till::new(cafe(5, 10));
    let p = t.buy(1_000);
    let refund = {
        t.refund(&p, Some(100)).unwrap();
        EventId::parse(&format!("e-{}", t.next)).unwrap()
    };
    // The id of a refund (an event, not a purchase): refused, not held.
    let before = t.state().clone();
    assert_eq!(
        t.refund(&refund, Some(100)).unwrap_err(),
        Rejection::UnknownPurchase {
            purchase_event_id: refund.clone()
        }
    );
    assert_eq!(t.state(), &before);
    let mut off = Till::new(cafe(5, 10));
    off.program.held_refund_horizon_days = 0;
    let unseen = EventId::parse("offline-1").unwrap();
    assert_eq!(
        off.refund(&unseen, Some(100)).unwrap_err(),
        Rejection::UnknownPurchase {
            purchase_event_id: unseen
        }
    );
}

#[test]
fn the_horizon_is_a_program_setting_from_0_to_365_days() {
    let mut spec = serde_json::to_value(cafe(5, 10)).unwrap();
    assert_eq!(spec["held_refund_horizon_days"], 30);
    spec["held_refund_horizon_days"] = json!(7);
    let p: Program = serde_json::from_value(spec.clone()).unwrap();
    assert_eq!(p.held_refund_horizon_days, 7);
    spec["held_refund_horizon_days"] = json!(366);
    let e = serde_json::from_value::<Program>(spec.clone()).unwrap_err();
    assert!(e.to_string().contains("held_refund_horizon_days"), "{e}");
    spec.as_object_mut()
        .unwrap()
        .remove("held_refund_horizon_days");
    let p: Program = serde_json::from_value(spec).unwrap();
    assert_eq!(p.held_refund_horizon_days, 30, "a program saved before");
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// One step of a history: a purchase, a refund of the k-th purchase so far (a part in
/// thousandths of what is left, at least a cent unless 0; or a void), a redemption, or time
/// passing.
#[derive(Clone, Debug)]
enum Step {
    Buy(i64),
    Refund(prop::sample::Index, Option<u64>),
    Redeem,
    Wait(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0i64..=20_000).prop_map(Step::Buy),
        4 => (any::<prop::sample::Index>(), prop::option::of(prop_oneof![1 => Just(0u64), 5 => 1u64..=1_000]))
            .prop_map(|(i, p)| Step::Refund(i, p)),
        2 => Just(Step::Redeem),
        1 => (0i64..=3 * DAY).prop_map(Step::Wait),
    ]
}

/// What the refunds of one purchase took back so far.
#[derive(Default, Debug)]
struct Taken {
    points: u64,
    visits: u32,
    stamps: u32,
    vouchers: u32,
}

/// Runs `steps` on a member of `program`, checking after each refund that what the refunds of
/// its purchase took back never exceeds what the purchase gave.
fn run(program: Program, steps: &[Step]) -> Result<Till, TestCaseError> {
    let mut t = Till::new(program);
    let mut bought: Vec<EventId> = Vec::new();
    let mut gave: HashMap<EventId, PurchaseRecord> = HashMap::new();
    let mut taken: HashMap<EventId, Taken> = HashMap::new();
    for s in steps {
        match s {
            Step::Buy(c) => {
                let id = t.buy(*c);
                gave.insert(id.clone(), t.purchases[&id].clone());
                bought.push(id);
            }
            Step::Refund(i, part) if !bought.is_empty() => {
                let id = i.get(&bought).clone();
                let rec = &t.purchases[&id];
                let left = rec.amount_cents.get() - rec.refunded_cents;
                // A part of 0 is a refund of 0 (the API refuses it; the rules take it as
                // nothing), even of a purchase refunded in full already.
                let amount = part.map(|p| {
                    if p == 0 {
                        0
                    } else {
                        (left * p / 1_000).max(1) as i64
                    }
                });
                let Ok(a) = t.refund(&id, amount) else {
                    continue;
                };
                let Outcome::Refund {
                    points_reversed,
                    points_forgiven,
                    visit_reversed,
                    stamp_reversed,
                    voucher_reversed,
                    ..
                } = &a.outcome
                else {
                    panic!("a refund")
                };
                let g = &gave[&id];
                let k = taken.entry(id.clone()).or_default();
                k.points += points_reversed + points_forgiven;
                k.visits += u32::from(*visit_reversed);
                k.stamps += u32::from(*stamp_reversed);
                k.vouchers += u32::from(voucher_reversed.is_some());
                prop_assert!(k.points <= g.points_earned, "{:?} of {:?}", k, g);
                prop_assert!(k.visits <= u32::from(g.visit), "{:?} of {:?}", k, g);
                prop_assert!(k.stamps <= u32::from(g.stamp), "{:?} of {:?}", k, g);
                prop_assert!(k.vouchers <= u32::from(g.voucher.is_some()));
                prop_assert!(voucher_reversed.is_none() || voucher_reversed == &g.voucher);
                let r = &t.purchases[&id];
                prop_assert!(r.refunded_cents <= r.amount_cents.get());
            }
            Step::Refund(..) => {}
            Step::Redeem => {
                let _ = t.redeem("free-coffee");
            }
            Step::Wait(ms) => t.clock += ms,
        }
        let s = t.state();
        prop_assert_eq!(
            s.points,
            t.ledger.iter().map(|e| e.points).sum::<i64>() as u64
        );
    }
    Ok(t)
}

/// The member's counters a purchase and its refund move (not the ledger's history totals).
#[derive(Debug, PartialEq)]
struct Counters {
    points: u64,
    stamps: u32,
    vouchers: u32,
    visits: u64,
    spend_cents: u64,
    tier: String,
    window_metric: u64,
    /// The lots (day, points), oldest first.
    lots: Vec<(u32, u64)>,
}

fn counters(t: &Till) -> Counters {
    let s = t.state();
    Counters {
        points: s.points,
        stamps: s.stamps,
        vouchers: t.vouchers(),
        visits: s.visits,
        spend_cents: s.spend_cents,
        tier: s.tier.clone(),
        window_metric: s.window_metric(&t.program),
        lots: s.lots.iter().map(|l| (l.day.0, l.points)).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// No refund, nor any sequence of refunds of a purchase (partial, voids, after other
    /// purchases and redemptions), takes back more than the purchase gave: points, visits,
    /// stamps, vouchers; the balance stays the sum of the ledger.
    #[test]
    fn refunds_never_take_back_more_than_the_purchase_gave(
        card in 1i64..=4,
        silver in 1i64..=5,
        steps in prop::collection::vec(step(), 1..50),
    ) {
        run(cafe(card, silver), &steps)?;
    }

    /// A full refund right after a purchase puts the member's counters (balance and lots,
    /// stamps, vouchers, visits, spend, tier and its window) back as they were before it,
    /// whatever came before.
    #[test]
    fn a_full_refund_right_after_a_purchase_restores_the_counters(
        card in 1i64..=4,
        silver in 1i64..=5,
        steps in prop::collection::vec(step(), 0..30),
        cents in 0i64..=20_000,
        void in any::<bool>(),
    ) {
        let mut t = run(cafe(card, silver), &steps)?;
        // Right after: at the member's clock, so that no time passes (no window slides).
        t.clock = t.state().clock.0;
        let before = counters(&t);
        let p = t.buy(cents);
        let amount = (!void).then_some(cents);
        match t.refund(&p, amount) {
            Ok(_) => prop_assert_eq!(counters(&t), before),
            // Only a purchase of 0 has nothing to refund: a void of it is refused.
            Err(r) => {
                prop_assert_eq!(cents, 0);
                prop_assert_eq!(r, Rejection::RefundExceedsPurchase { remaining_cents: 0 });
            }
        }
    }

    /// A refund held for its purchase, then the purchase, leaves the member as the purchase
    /// then the refund does (what the purchase's record shows refunded, and every counter).
    #[test]
    fn a_held_refund_is_the_same_refund_applied_when_its_purchase_arrives(
        steps in prop::collection::vec(step(), 0..20),
        cents in 1i64..=20_000,
        part in prop::option::of(1i64..=20_000),
    ) {
        let amount = part.map(|p| p.min(cents));
        let id = EventId::parse("offline-1").unwrap();
        let mut held = run(cafe(3, 3), &steps)?;
        let mut direct = run(cafe(3, 3), &steps)?;
        let r = held.refund(&id, amount).unwrap();
        prop_assert!(matches!(r.outcome, Outcome::Held { .. }), "held");
        held.buy_as(&id, cents).unwrap();
        direct.buy_as(&id, cents).unwrap();
        direct.refund(&id, amount).unwrap();
        prop_assert_eq!(counters(&held), counters(&direct));
        let (h, d) = (&held.purchases[&id], &direct.purchases[&id]);
        prop_assert_eq!((h.refunded_cents, h.reversed_points, h.reversed_in_full),
            (d.refunded_cents, d.reversed_points, d.reversed_in_full));
    }
}
