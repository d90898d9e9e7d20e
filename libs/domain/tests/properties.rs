//! Property tests of the loyalty domain.
//!
//! Random valid programs (built from JSON through `serde_json` so that `Program`'s validation
//! runs) and random command sequences (enrolment, purchases of any amount including 0, refunds
//! of earlier purchases including oversize ones, redemptions of known and unknown rewards,
//! timestamps that mostly move forward, sometimes jump weeks ahead and sometimes go back) are
//! fed through [`apply`] the way the engine does it: every event's outcome is kept in a map
//! `event_id -> Outcome`, and a refund is given the purchase's current [`PurchaseRecord`] from
//! that map, which the refund's outcome then updates. The invariants of the brief are checked
//! after every step.

use std::collections::HashMap;

use loyalty_domain::audit::{audit_member, Finding};
use loyalty_domain::{
    apply, classify, Applied, Delivery, EventContext, EventId, Fingerprint, FranchiseId,
    LedgerEntry, LedgerKind, MemberCommand, MemberId, MemberState, Outcome, Phone, PointLot,
    Points, ProcessedEvent, Profile, Program, PurchaseRecord, Rejection, RewardId, StoreId,
    TierMetric, Timestamp,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;
/// 2023-11-14, a plain positive epoch time.
const T0: i64 = 1_700_000_000_000;
const TIER_NAMES: [&str; 4] = ["Nouveau", "Habitué", "Maître", "Légende"];

// ---------------------------------------------------------------------------------------------
// Random programs
// ---------------------------------------------------------------------------------------------

/// The knobs of a random valid program; turned into the client's JSON by [`ProgramGen::json`].
#[derive(Clone, Debug)]
struct ProgramGen {
    points_per_unit: i64,
    signup_bonus: i64,
    metric: &'static str,
    window_days: i64,
    /// `(threshold, multiplier_pct)`, thresholds 0 then strictly increasing.
    tiers: Vec<(i64, i64)>,
    /// Reward costs; reward `i` is called `r{i}`.
    rewards: Vec<i64>,
    /// `(size, reward index)`.
    stamp_card: Option<(i64, usize)>,
    expiry_days: Option<i64>,
}

impl ProgramGen {
    fn json(&self) -> Value {
        json!({
            "currency": "EUR",
            "points_per_unit": self.points_per_unit,
            "signup_bonus": self.signup_bonus,
            "stamp_card": self.stamp_card.map(|(size, i)| json!({ "size": size, "reward_id": format!("r{i}") })),
            "tier_qualification": { "metric": self.metric, "window_days": self.window_days },
            "tiers": self.tiers.iter().enumerate().map(|(i, (threshold, pct))| json!({
                "name": TIER_NAMES[i], "threshold": threshold, "multiplier_pct": pct,
            })).collect::<Vec<_>>(),
            "rewards": self.rewards.iter().enumerate().map(|(i, cost)| json!({
                "id": format!("r{i}"), "name": format!("Reward {i}"), "cost_points": cost,
            })).collect::<Vec<_>>(),
            "points_expiry_days": self.expiry_days,
        })
    }

    fn program(&self) -> Program {
        serde_json::from_value(self.json()).expect("a generated program is valid")
    }
}

/// A random valid program: 1 to 4 tiers of increasing thresholds (scaled to the tier metric
/// so that the upper tiers are reachable), multipliers 0 to 400 %, 0 to 3 rewards, an optional
/// stamp card (always present if `stamp_card` is set), optional expiry.
fn program_gen(stamp_card: bool) -> impl Strategy<Value = ProgramGen> {
    let metric = prop_oneof![Just("spend_cents"), Just("points_earned"), Just("visits")];
    let ppu = prop_oneof![6 => 0i64..=10, 1 => 0i64..=10_000];
    let min_rewards = usize::from(stamp_card);
    (
        metric,
        1usize..=4,
        ppu,
        prop_oneof![Just(0i64), 1i64..=200],
        1i64..=90,
        prop::collection::vec(1i64..=300, min_rewards..=3),
        any::<bool>(),
        1i64..=12,
        any::<Index>(),
        prop::option::of(1i64..=60),
    )
        .prop_flat_map(
            move |(
                metric,
                ntiers,
                ppu,
                bonus,
                window,
                rewards,
                card,
                size,
                card_reward,
                expiry,
            )| {
                let scale = match metric {
                    "spend_cents" => 5_000,
                    "points_earned" => 50,
                    _ => 1,
                };
                (
                    prop::collection::vec(1i64..=6, ntiers - 1),
                    prop::collection::vec(0i64..=400, ntiers),
                )
                    .prop_map(move |(steps, pcts)| {
                        let mut thresholds = vec![0i64];
                        for s in steps {
                            thresholds.push(thresholds.last().unwrap() + s * scale);
                        }
                        let stamp_card = (!rewards.is_empty() && (stamp_card || card))
                            .then(|| (size, card_reward.index(rewards.len())));
                        ProgramGen {
                            points_per_unit: ppu,
                            signup_bonus: bonus,
                            metric,
                            window_days: window,
                            tiers: thresholds.into_iter().zip(pcts).collect(),
                            rewards: rewards.clone(),
                            stamp_card,
                            expiry_days: expiry,
                        }
                    })
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Random command sequences
// ---------------------------------------------------------------------------------------------

/// How much of a purchase a refund asks for, resolved against what is left of it.
#[derive(Clone, Debug)]
enum RefundSize {
    /// Everything that is left.
    Rest,
    /// `permille / 1000` of what is left.
    Part(u64),
    /// What is left plus `1..`: always refused.
    Oversize(u64),
    /// Any amount, whatever is left.
    Raw(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Purchase(u64),
    /// A refund of one of the purchases applied so far (of an unknown one if none was).
    Refund(Index, RefundSize),
    RefundUnknown(u64),
    /// A redemption of a reward of the catalogue (or of an unknown one if it is empty).
    Redeem(Index),
    RedeemUnknown,
    Reenrol,
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 5 => 1u64..=5_000, 3 => 5_000u64..=200_000]
}

fn refund_size() -> impl Strategy<Value = RefundSize> {
    prop_oneof![
        3 => Just(RefundSize::Rest),
        3 => (0u64..=1000).prop_map(RefundSize::Part),
        2 => (1u64..=10_000).prop_map(RefundSize::Oversize),
        1 => (0u64..=300_000).prop_map(RefundSize::Raw),
    ]
}

fn op(redemptions: bool) -> BoxedStrategy<Op> {
    let purchase = amount().prop_map(Op::Purchase);
    let refund = (any::<Index>(), refund_size()).prop_map(|(i, s)| Op::Refund(i, s));
    if redemptions {
        prop_oneof![
            10 => purchase,
            4 => refund,
            1 => (0u64..=1_000).prop_map(Op::RefundUnknown),
            5 => any::<Index>().prop_map(Op::Redeem),
            1 => Just(Op::RedeemUnknown),
            1 => Just(Op::Reenrol),
        ]
        .boxed()
    } else {
        prop_oneof![10 => purchase, 4 => refund, 1 => Just(Op::Reenrol)].boxed()
    }
}

/// Time between two POS events: mostly a few hours to two days forward, sometimes exactly
/// the same moment, sometimes weeks ahead (so that points expire and windows slide), and
/// sometimes back in time (a late POS event).
fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => Just(0i64),
        10 => 0..2 * DAY,
        2 => 10 * DAY..40 * DAY,
        2 => -3 * DAY..0,
    ]
}

fn steps(redemptions: bool) -> impl Strategy<Value = Vec<(i64, Op)>> {
    prop::collection::vec((delta(), op(redemptions)), 1..60)
}

// ---------------------------------------------------------------------------------------------
// The simulated engine
// ---------------------------------------------------------------------------------------------

/// A POS event as the client sends it (a refund names its purchase, not the record).
#[derive(Clone, Debug, PartialEq)]
enum Pos {
    Enrol,
    Purchase(u64),
    Refund { purchase: EventId, amount: u64 },
    Redeem(RewardId),
}

/// One step as a property sees it.
struct StepView<'a> {
    event_id: &'a EventId,
    at: Timestamp,
    cmd: &'a MemberCommand,
    before: &'a Option<MemberState>,
    after: &'a Option<MemberState>,
    result: &'a Result<Applied, Rejection>,
}

/// The engine's bookkeeping for one member: the state, every processed event (its
/// fingerprint and outcome; a purchase's outcome is kept current by its refunds), and the
/// purchases applied so far.
struct Sim {
    program: Program,
    member: MemberId,
    franchise: FranchiseId,
    store: StoreId,
    state: Option<MemberState>,
    processed: HashMap<EventId, ProcessedEvent>,
    purchases: Vec<EventId>,
    next_id: u64,
}

/// What a delivery did.
#[allow(clippy::large_enum_variant)] // short-lived, one at a time
enum Delivered {
    New {
        cmd: MemberCommand,
        before: Option<MemberState>,
        result: Result<Applied, Rejection>,
    },
    Replay(Outcome),
    Conflict,
}

fn phone() -> Phone {
    Phone::parse("+33612345678").unwrap()
}

/// The engine's fingerprint of a POS event: its content, field by field.
fn fingerprint(member: &MemberId, store: &StoreId, at: Timestamp, pos: &Pos) -> Fingerprint {
    let mut fields: Vec<Vec<u8>> = vec![
        member.as_str().into(),
        store.as_str().into(),
        at.0.to_le_bytes().into(),
    ];
    match pos {
        Pos::Enrol => fields.push(b"enrol".to_vec()),
        Pos::Purchase(a) => {
            fields.extend([
                b"purchase".to_vec(),
                a.to_le_bytes().into(),
                b"EUR".to_vec(),
            ]);
        }
        Pos::Refund { purchase, amount } => fields.extend([
            b"refund".to_vec(),
            purchase.as_str().into(),
            amount.to_le_bytes().into(),
        ]),
        Pos::Redeem(r) => fields.extend([b"redeem".to_vec(), r.as_str().into()]),
    }
    let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    Fingerprint::of(&refs)
}

impl Sim {
    fn new(program: Program) -> Sim {
        Sim {
            program,
            member: MemberId::parse("m-1").unwrap(),
            franchise: FranchiseId::parse("f-1").unwrap(),
            store: StoreId::parse("s-1").unwrap(),
            state: None,
            processed: HashMap::new(),
            purchases: Vec::new(),
            next_id: 0,
        }
    }

    fn fresh_id(&mut self) -> EventId {
        self.next_id += 1;
        EventId::parse(&format!("e-{}", self.next_id)).unwrap()
    }

    /// The current record of an applied purchase of this member, as the engine finds it.
    fn purchase_record(&self, id: &EventId) -> Option<PurchaseRecord> {
        match self.processed.get(id).map(|p| &p.outcome) {
            Some(Outcome::Purchase(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// Turns a generated operation into the POS event it stands for.
    fn resolve(&self, op: &Op) -> Pos {
        match op {
            Op::Purchase(a) => Pos::Purchase(*a),
            Op::Refund(i, size) if !self.purchases.is_empty() => {
                let id = i.get(&self.purchases).clone();
                let r = self.purchase_record(&id).expect("an applied purchase");
                let left = r.amount_cents.get() - r.refunded_cents;
                let amount = match size {
                    RefundSize::Rest => left,
                    RefundSize::Part(p) => left * p / 1000,
                    RefundSize::Oversize(x) => left + x,
                    RefundSize::Raw(x) => *x,
                };
                Pos::Refund {
                    purchase: id,
                    amount,
                }
            }
            Op::Refund(_, RefundSize::Raw(a)) | Op::RefundUnknown(a) => Pos::Refund {
                purchase: EventId::parse("no-such-purchase").unwrap(),
                amount: *a,
            },
            Op::Refund(..) => Pos::Refund {
                purchase: EventId::parse("no-such-purchase").unwrap(),
                amount: 1,
            },
            Op::Redeem(i) if !self.program.rewards.is_empty() => {
                Pos::Redeem(i.get(&self.program.rewards).id.clone())
            }
            Op::Redeem(_) | Op::RedeemUnknown => {
                Pos::Redeem(RewardId::parse("no-such-reward").unwrap())
            }
            Op::Reenrol => Pos::Enrol,
        }
    }

    fn command(&self, pos: &Pos) -> MemberCommand {
        match pos {
            Pos::Enrol => MemberCommand::Enrol {
                profile: Profile {
                    phone: phone(),
                    name: None,
                    birthday: None,
                    consent: Default::default(),
                    email: None,
                },
            },
            Pos::Purchase(a) => MemberCommand::Purchase {
                amount: loyalty_domain::Cents::new(*a as i64).unwrap(),
                currency: self.program.currency.clone(),
                items: Vec::new(),
            },
            Pos::Refund { purchase, amount } => MemberCommand::Refund {
                purchase_event_id: purchase.clone(),
                amount: Some(loyalty_domain::Cents::new(*amount as i64).unwrap()),
                purchase: self.purchase_record(purchase),
                // Unknown purchases are refused here, as before refunds were held; holds have
                // properties of their own (`held_refunds_*`).
                purchase_unseen: false,
            },
            Pos::Redeem(r) => MemberCommand::Redemption {
                reward_id: r.clone(),
            },
        }
    }

    /// Delivers the event `id` (with the engine's idempotency check) and keeps the books.
    fn deliver(&mut self, id: &EventId, at: Timestamp, pos: &Pos) -> Delivered {
        let fp = fingerprint(&self.member, &self.store, at, pos);
        match classify(self.processed.get(id), fp) {
            Delivery::Replay(r) => return Delivered::Replay(r.outcome.clone()),
            Delivery::Conflict(_) => return Delivered::Conflict,
            Delivery::New => {}
        }
        let cmd = self.command(pos);
        let before = self.state.clone();
        let ctx = EventContext {
            event_id: id,
            store_id: &self.store,
            at,
            program: &self.program,
            program_version: 1,
        };
        let result = apply(&mut self.state, &self.member, &self.franchise, &cmd, &ctx);
        let outcome = match &result {
            Ok(a) => a.outcome.clone(),
            Err(r) => Outcome::Rejected(r.clone()),
        };
        match &outcome {
            Outcome::Purchase(_) => self.purchases.push(id.clone()),
            Outcome::Refund {
                purchase_event_id,
                purchase,
                ..
            } => {
                let p = self
                    .processed
                    .get_mut(purchase_event_id)
                    .expect("a refunded purchase");
                p.outcome = Outcome::Purchase(purchase.clone());
            }
            _ => {}
        }
        self.processed.insert(
            id.clone(),
            ProcessedEvent {
                franchise_id: self.franchise.clone(),
                event_id: id.clone(),
                fingerprint: fp,
                member_id: Some(self.member.clone()),
                store_id: self.store.clone(),
                at,
                outcome,
            },
        );
        Delivered::New {
            cmd,
            before,
            result,
        }
    }
}

/// Runs an enrolment at `T0` then `steps`, calling `check` after each step.
fn run(
    program: &Program,
    steps: &[(i64, Op)],
    mut check: impl FnMut(&Sim, &StepView<'_>) -> Result<(), TestCaseError>,
) -> Result<Sim, TestCaseError> {
    let mut sim = Sim::new(program.clone());
    let mut t = T0;
    let all = std::iter::once((0i64, None)).chain(steps.iter().map(|(dt, op)| (*dt, Some(op))));
    for (dt, op) in all {
        let pos = op.map_or(Pos::Enrol, |op| sim.resolve(op));
        t = (t + dt).max(0);
        let id = sim.fresh_id();
        let at = Timestamp(t);
        let Delivered::New {
            cmd,
            before,
            result,
        } = sim.deliver(&id, at, &pos)
        else {
            panic!("a fresh id is always new");
        };
        let after = sim.state.clone();
        let view = StepView {
            event_id: &id,
            at,
            cmd: &cmd,
            before: &before,
            after: &after,
            result: &result,
        };
        check(&sim, &view)?;
    }
    Ok(sim)
}

fn pct_of(program: &Program, tier: usize) -> u64 {
    program.tiers[tier].multiplier_pct
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    /// 1. The balance is the sum of the ledger and of the lots after every step; each entry's
    /// `balance_after` is the running sum, `seq` runs 1..n without gaps, every entry names the
    /// event that caused it; the lifetime counters add up; no lot is older than the expiry.
    #[test]
    fn ledger_truth(gen in program_gen(false), steps in steps(true)) {
        let program = gen.program();
        let mut ledger: Vec<LedgerEntry> = Vec::new();
        run(&program, &steps, |_, v| {
            if let Ok(applied) = v.result {
                for e in &applied.entries {
                    prop_assert_eq!(&e.event_id, v.event_id, "entry names its event");
                    prop_assert_eq!(e.seq, ledger.len() as u64 + 1, "seq without gaps");
                    let running = ledger.last().map_or(0, |l| l.balance_after as i64);
                    prop_assert_eq!(running + e.points, e.balance_after as i64, "running sum");
                    prop_assert!(e.at >= v.at, "an entry is dated at the member's clock");
                    match e.kind {
                        LedgerKind::Earn => prop_assert!(e.points > 0),
                        LedgerKind::Expire | LedgerKind::Reverse => prop_assert!(e.points < 0),
                        LedgerKind::Redeem => prop_assert!(e.points <= 0),
                        LedgerKind::Adjust => prop_assert!(false, "no command adjusts"),
                        LedgerKind::Tier => {
                            prop_assert_eq!(e.points, 0, "a tier entry moves no points");
                            let c = e.tier_change.as_ref().expect("a tier entry names its move");
                            prop_assert!(c.from != c.to, "a tier entry is a move");
                        }
                    }
                    ledger.push(e.clone());
                }
            }
            let s = v.after.as_ref().expect("enrolled");
            let sum: i64 = ledger.iter().map(|e| e.points).sum();
            prop_assert_eq!(s.points as i64, sum, "balance == sum of the ledger");
            prop_assert_eq!(s.points, s.lots.iter().map(|l| l.points).sum::<Points>(), "balance == sum of lots");
            prop_assert_eq!(s.last_seq, ledger.len() as u64);
            prop_assert_eq!(
                s.points_earned as i128 - s.points_redeemed as i128 - s.points_expired as i128 - s.points_reversed as i128,
                s.points as i128,
                "earned - redeemed - expired - reversed == balance"
            );
            prop_assert!(s.lots.iter().all(|l| l.points > 0), "no empty lot");
            prop_assert!(s.lots.windows(2).all(|w| w[0].day < w[1].day), "lots by day, oldest first");
            let today = s.clock.day().0;
            let alive = |l: &PointLot| program.points_expiry_days.is_none_or(|days| l.day.0 + days > today);
            prop_assert!(s.lots.iter().all(alive), "a lot that reached its expiry age is gone");
            // Points are spent oldest first: what is spent is what would expire first.
            if let Ok(Applied { outcome: Outcome::Redemption { points_spent, .. }, .. }) = v.result {
                let mut lots: Vec<PointLot> = v.before.as_ref().unwrap().lots.iter().copied().filter(alive).collect();
                let mut n = *points_spent;
                while n > 0 {
                    let t = lots[0].points.min(n);
                    lots[0].points -= t;
                    n -= t;
                    if lots[0].points == 0 {
                        lots.remove(0);
                    }
                }
                prop_assert_eq!(&s.lots, &lots, "a redemption spends the oldest lots");
            }
            Ok(())
        })?;
    }

    /// 2. A rejected command changes nothing, and is rejected for a true reason; an accepted
    /// one never takes the balance below zero.
    #[test]
    fn rejections_change_nothing(gen in program_gen(false), steps in steps(true)) {
        let program = gen.program();
        run(&program, &steps, |_, v| {
            let Some(before) = v.before.as_ref() else {
                // The enrolment.
                let created = matches!(v.result, Ok(Applied { outcome: Outcome::Enrolled { created: true }, .. }));
                prop_assert!(created);
                return Ok(());
            };
            match v.result {
                Err(rejection) => {
                    prop_assert_eq!(v.before, v.after, "a rejection leaves the state as it was");
                    match (rejection, v.cmd) {
                        (Rejection::InsufficientPoints { needed, available }, MemberCommand::Redemption { reward_id }) => {
                            let reward = program.reward(reward_id).expect("a known reward");
                            prop_assert_eq!(*needed, reward.cost_points);
                            prop_assert!(available < needed);
                            prop_assert!(*available <= before.points);
                            prop_assert!(!before.vouchers.contains_key(reward_id));
                        }
                        (Rejection::UnknownReward { reward_id }, MemberCommand::Redemption { reward_id: r }) => {
                            prop_assert_eq!(reward_id, r);
                            prop_assert!(program.reward(r).is_none());
                        }
                        (Rejection::UnknownPurchase { .. }, MemberCommand::Refund { purchase, .. }) => {
                            prop_assert!(purchase.is_none());
                        }
                        (
                            Rejection::RefundExceedsPurchase { remaining_cents },
                            MemberCommand::Refund { purchase: Some(p), amount, .. },
                        ) => {
                            prop_assert_eq!(*remaining_cents, p.amount_cents.get() - p.refunded_cents);
                            prop_assert!(amount.unwrap().get() > *remaining_cents);
                        }
                        (r, c) => prop_assert!(false, "unexpected rejection {:?} of {:?}", r, c),
                    }
                }
                Ok(applied) => {
                    let after = v.after.as_ref().unwrap();
                    match (&applied.outcome, v.cmd) {
                        (Outcome::Enrolled { created }, _) => {
                            prop_assert!(!created);
                            prop_assert!(!applied.changed);
                            prop_assert_eq!(v.before, v.after, "a second enrolment changes nothing");
                        }
                        (Outcome::Redemption { used_voucher, points_spent, reward_id, .. }, _) => {
                            let cost = program.reward(reward_id).unwrap().cost_points;
                            if *used_voucher {
                                prop_assert_eq!(*points_spent, 0);
                                prop_assert!(before.vouchers.get(reward_id).is_some_and(|n| *n > 0));
                            } else {
                                prop_assert_eq!(*points_spent, cost);
                                prop_assert!(before.points >= cost);
                            }
                        }
                        (Outcome::Refund { purchase, .. }, MemberCommand::Refund { amount, purchase: Some(p), .. }) => {
                            prop_assert!(amount.unwrap().get() <= p.amount_cents.get() - p.refunded_cents);
                            prop_assert!(purchase.refunded_cents <= purchase.amount_cents.get());
                        }
                        (Outcome::Purchase(_), MemberCommand::Purchase { .. }) => {}
                        (o, c) => prop_assert!(false, "unexpected outcome {:?} of {:?}", o, c),
                    }
                    if applied.changed {
                        prop_assert_eq!(after.version, before.version + 1);
                    }
                }
            }
            Ok(())
        })?;
    }

    /// 3. With the engine's idempotency check, re-deliveries of earlier events (same content)
    /// are replays that answer the recorded outcome and change nothing; a different content
    /// under a used id is a conflict that changes nothing. The final state and ledger are those
    /// of the same run without re-deliveries.
    #[test]
    fn replay_changes_nothing(
        gen in program_gen(false),
        steps in steps(true),
        redeliveries in prop::collection::vec(prop::option::weighted(0.4, (any::<Index>(), any::<bool>())), 60),
    ) {
        let program = gen.program();
        let mut plain_ledger = Vec::new();
        let plain = run(&program, &steps, |_, v| {
            if let Ok(a) = v.result {
                plain_ledger.extend(a.entries.iter().cloned());
            }
            Ok(())
        })?;

        let mut sim = Sim::new(program.clone());
        let mut ledger = Vec::new();
        let mut sent: Vec<(EventId, Timestamp, Pos)> = Vec::new();
        let mut first_outcome: HashMap<EventId, Outcome> = HashMap::new();
        let mut t = T0;
        let all = std::iter::once((0i64, None)).chain(steps.iter().map(|(dt, op)| (*dt, Some(op))));
        for (i, (dt, op)) in all.enumerate() {
            let pos = op.map_or(Pos::Enrol, |op| sim.resolve(op));
            t = (t + dt).max(0);
            let id = sim.fresh_id();
            let Delivered::New { result, .. } = sim.deliver(&id, Timestamp(t), &pos) else {
                panic!("a fresh id is always new");
            };
            if let Ok(a) = &result {
                ledger.extend(a.entries.iter().cloned());
            }
            first_outcome.insert(id.clone(), sim.processed[&id].outcome.clone());
            sent.push((id, Timestamp(t), pos));

            if let Some(Some((which, conflicting))) = redeliveries.get(i) {
                let (id, at, pos) = which.get(&sent).clone();
                let state = sim.state.clone();
                let recorded = sim.processed[&id].clone();
                // The classification itself.
                let fp = fingerprint(&sim.member, &sim.store, at, &pos);
                prop_assert_eq!(classify(Some(&recorded), fp), Delivery::Replay(&recorded));
                let other = match &pos {
                    Pos::Enrol => Pos::Purchase(0),
                    Pos::Purchase(a) => Pos::Purchase(a + 1),
                    Pos::Refund { purchase, amount } => Pos::Refund { purchase: purchase.clone(), amount: amount + 1 },
                    Pos::Redeem(_) => Pos::Redeem(RewardId::parse("other").unwrap()),
                };
                let other_fp = fingerprint(&sim.member, &sim.store, at, &other);
                prop_assert_ne!(fp, other_fp);
                prop_assert_eq!(classify(Some(&recorded), other_fp), Delivery::Conflict(&recorded));
                prop_assert_eq!(classify(None, fp), Delivery::New);
                // Through the engine.
                if *conflicting {
                    prop_assert!(matches!(sim.deliver(&id, at, &other), Delivered::Conflict));
                } else {
                    let Delivered::Replay(outcome) = sim.deliver(&id, at, &pos) else {
                        return Err(TestCaseError::fail("a re-delivery is not a replay"));
                    };
                    prop_assert_eq!(&outcome, &recorded.outcome);
                    // A purchase's record may since have been refunded; anything else answers
                    // exactly what it answered the first time.
                    if !matches!(outcome, Outcome::Purchase(_)) {
                        prop_assert_eq!(&outcome, &first_outcome[&id]);
                    }
                }
                prop_assert_eq!(&sim.state, &state, "a replay or conflict changes nothing");
                prop_assert_eq!(&sim.processed[&id], &recorded, "nor the record");
            }
        }
        prop_assert_eq!(&sim.state, &plain.state);
        prop_assert_eq!(ledger, plain_ledger);
    }

    /// 4. Refunds are bounded: the cumulative refunded cents of a purchase never exceed its
    /// amount (an oversize refund is refused and changes nothing); the cumulative reversed plus
    /// forgiven points never exceed what it earned, are `floor(earned × refunded / amount)`,
    /// and a full refund owes back exactly what the purchase earned.
    #[test]
    fn refunds_are_bounded(gen in program_gen(false), steps in steps(true)) {
        let program = gen.program();
        // purchase id -> (amount, earned, cumulative refunded cents, cumulative taken + forgiven)
        let mut books: HashMap<EventId, (u64, Points, u64, Points)> = HashMap::new();
        run(&program, &steps, |_, v| {
            match (v.cmd, v.result) {
                (MemberCommand::Purchase { .. }, Ok(Applied { outcome: Outcome::Purchase(r), .. })) => {
                    books.insert(v.event_id.clone(), (r.amount_cents.get(), r.points_earned, 0, 0));
                }
                (MemberCommand::Refund { purchase: Some(p), amount: Some(amount), purchase_event_id, .. }, result) => {
                    let (total, earned, refunded, owed) = books[purchase_event_id];
                    prop_assert_eq!(p.refunded_cents, refunded, "the engine passes the current record");
                    prop_assert_eq!(p.reversed_points, owed);
                    match result {
                        Err(Rejection::RefundExceedsPurchase { remaining_cents }) => {
                            prop_assert_eq!(*remaining_cents, total - refunded);
                            prop_assert!(refunded + amount.get() > total);
                            prop_assert_eq!(v.before, v.after);
                        }
                        Ok(Applied {
                            outcome: Outcome::Refund { points_reversed, points_forgiven, purchase, amount_cents, .. },
                            entries,
                            ..
                        }) => {
                            prop_assert_eq!(amount_cents, amount);
                            let refunded = refunded + amount.get();
                            let owed = owed + points_reversed + points_forgiven;
                            prop_assert!(refunded <= total, "refunded {} of {}", refunded, total);
                            prop_assert!(owed <= earned, "owed back {} of {}", owed, earned);
                            prop_assert_eq!(purchase.refunded_cents, refunded);
                            prop_assert_eq!(purchase.reversed_points, owed);
                            prop_assert_eq!(purchase.points_earned, earned);
                            if total > 0 {
                                prop_assert_eq!(owed as u128, earned as u128 * refunded as u128 / total as u128);
                            }
                            if refunded == total {
                                prop_assert_eq!(owed, earned, "a full refund owes back all points");
                            }
                            let before = v.before.as_ref().unwrap();
                            prop_assert!(*points_reversed <= before.points);
                            let reversed: i64 = entries.iter().filter(|e| e.kind == LedgerKind::Reverse).map(|e| e.points).sum();
                            prop_assert_eq!(reversed, -(*points_reversed as i64));
                            books.insert(purchase_event_id.clone(), (total, earned, refunded, owed));
                        }
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
    }

    /// 5. A purchase earns exactly `floor(amount × points_per_unit × multiplier_pct / 10000)`
    /// at the tier the member has when it happens, before it counts (computed from the window
    /// at the purchase's time: qualifying activity older than the window no longer counts).
    #[test]
    fn earn_rule(gen in program_gen(false), steps in steps(true)) {
        let program = gen.program();
        run(&program, &steps, |_, v| {
            if let (MemberCommand::Purchase { amount, .. }, Ok(applied)) = (v.cmd, v.result) {
                // The tier at the purchase's time, before it counts: the window as it stands
                // once the member's clock has moved to the purchase.
                let mut at_purchase = v.before.clone().unwrap();
                at_purchase.clock = at_purchase.clock.max(v.at);
                let tier = program.tier_for(at_purchase.window_metric(&program));
                let expected = (amount.get() as u128 * program.points_per_unit as u128
                    * pct_of(&program, tier) as u128
                    / 10_000) as u64;
                let earns: Vec<&LedgerEntry> =
                    applied.entries.iter().filter(|e| e.kind == LedgerKind::Earn).collect();
                prop_assert!(earns.iter().all(|e| e.detail == "purchase"));
                if expected == 0 {
                    prop_assert!(earns.is_empty());
                } else {
                    prop_assert_eq!(earns.len(), 1);
                    prop_assert_eq!(earns[0].points, expected as i64);
                }
                let Outcome::Purchase(r) = &applied.outcome else {
                    return Err(TestCaseError::fail("a purchase's outcome"));
                };
                prop_assert_eq!(r.points_earned, expected);
                prop_assert_eq!(r.amount_cents, *amount);
                // Booked on the purchase's own day, a late one's too (README "Offline tills").
                prop_assert_eq!(r.day, v.at.day());
            }
            Ok(())
        })?;
    }

    /// 6. After every step (purchase, refund, redemption, rejection) the tier is the highest
    /// whose threshold the window metric meets; the window metric matches an independent model
    /// of the history (purchases minus refunds, by day, over the window ending on the clock; a
    /// purchase refunded in full is no visit).
    #[test]
    fn tier_follows_the_window(gen in program_gen(false), steps in steps(true)) {
        let program = gen.program();
        // purchase id -> (day, amount, refunded, earned, owed back); the member's clock.
        let mut model: Vec<(EventId, u32, u64, u64, Points, Points)> = Vec::new();
        let mut clock = Timestamp(T0);
        run(&program, &steps, |_, v| {
            let s = v.after.as_ref().unwrap();
            if let Ok(applied) = v.result {
                if applied.changed {
                    clock = clock.max(v.at);
                }
                match &applied.outcome {
                    Outcome::Purchase(r) => {
                        model.push((v.event_id.clone(), r.day.0, r.amount_cents.get(), 0, r.points_earned, 0));
                    }
                    Outcome::Refund { purchase_event_id, purchase, .. } => {
                        let p = model.iter_mut().find(|p| &p.0 == purchase_event_id).unwrap();
                        p.3 = purchase.refunded_cents;
                        p.5 = purchase.reversed_points;
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(s.clock, clock, "the member's clock is the latest applied event time");
            let today = clock.day().0;
            let window = program.tier_qualification.window_days.expect("a rolling window");
            let oldest = today.saturating_sub(window - 1);
            let in_window = model.iter().filter(|p| p.1 >= oldest);
            let metric: u64 = match program.tier_qualification.metric {
                TierMetric::SpendCents => in_window.map(|p| p.2 - p.3).sum(),
                TierMetric::PointsEarned => in_window.map(|p| p.4 - p.5).sum(),
                // A purchase refunded in full no longer counts as a visit.
                TierMetric::Visits => in_window.filter(|p| p.2 > 0 && p.3 < p.2).count() as u64,
            };
            prop_assert_eq!(s.window_metric(&program), metric, "window metric");
            let highest = program.tiers.iter().enumerate().filter(|(_, t)| t.threshold <= metric).map(|(i, _)| i).max().unwrap();
            prop_assert_eq!(program.tier_for(metric), highest);
            prop_assert_eq!(&s.tier, &program.tiers[highest].name);
            Ok(())
        })?;
    }

    /// 7. With a stamp card of size k and no redemptions, after n stamps (one per positive
    /// purchase, less those that full refunds took back) the member has n % k stamps and
    /// n / k vouchers for the card's reward (and no other voucher); visits count the positive
    /// purchases less those refunded in full. A full refund takes its stamp back unless that
    /// stamp is spent in a card another purchase completed (no voucher is ever used here).
    #[test]
    fn stamps(gen in program_gen(true), steps in steps(false)) {
        let program = gen.program();
        let card = program.stamp_card.clone().expect("a stamp card");
        let mut n = 0u32;
        let mut visits = 0u64;
        run(&program, &steps, |_, v| {
            match (v.cmd, v.result) {
                (MemberCommand::Purchase { amount, .. }, Ok(_)) if amount.get() > 0 => {
                    n += 1;
                    visits += 1;
                }
                (
                    MemberCommand::Refund { purchase: Some(p), .. },
                    Ok(Applied { outcome: Outcome::Refund { stamp_reversed, visit_reversed, voucher_kept, purchase, .. }, .. }),
                ) => {
                    let full_now = purchase.reversed_in_full && !p.reversed_in_full;
                    prop_assert_eq!(*visit_reversed, full_now && p.visit);
                    prop_assert!(voucher_kept.is_none(), "no voucher is used without redemptions");
                    let before = v.before.as_ref().unwrap();
                    let spent = before.stamps == 0 && p.voucher.is_none();
                    prop_assert_eq!(*stamp_reversed, full_now && p.stamp && !spent);
                    n -= u32::from(*stamp_reversed);
                    visits -= u64::from(*visit_reversed);
                }
                _ => {}
            }
            let s = v.after.as_ref().unwrap();
            prop_assert_eq!(s.stamps, n % card.size);
            let vouchers = s.vouchers.get(&card.reward_id).copied().unwrap_or(0);
            prop_assert_eq!(vouchers, n / card.size);
            prop_assert!(s.vouchers.keys().all(|r| r == &card.reward_id));
            prop_assert!(s.vouchers.values().all(|c| *c > 0), "no zero voucher count kept");
            prop_assert_eq!(s.visits, visits);
            Ok(())
        })?;
    }

    /// A program survives a serialization round trip (what the store and the admin API do).
    #[test]
    fn programs_round_trip(gen in program_gen(false)) {
        let program = gen.program();
        let again: Program = serde_json::from_value(serde_json::to_value(&program).unwrap()).unwrap();
        prop_assert_eq!(again, program);
    }

    /// Fingerprints depend on every field and on field boundaries.
    #[test]
    fn fingerprints_separate_fields(a in prop::collection::vec(any::<u8>(), 0..8), b in prop::collection::vec(any::<u8>(), 1..8)) {
        prop_assert_eq!(Fingerprint::of(&[&a, &b]), Fingerprint::of(&[&a, &b]));
        let mut joined = a.clone();
        joined.extend_from_slice(&b);
        prop_assert_ne!(Fingerprint::of(&[&a, &b]), Fingerprint::of(&[&joined]));
        prop_assert_ne!(Fingerprint::of(&[&a, &b]), Fingerprint::of(&[&a, &b, &[]]));
        if a != b {
            prop_assert_ne!(Fingerprint::of(&[&a, &b]), Fingerprint::of(&[&b, &a]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Program validation
// ---------------------------------------------------------------------------------------------

/// One way to break a valid program, and what the error must name.
#[derive(Clone, Debug)]
enum Breakage {
    /// `tiers[i].threshold` not above `tiers[i - 1].threshold` (`i >= 1`).
    Unsorted(Index, u64),
    /// `tiers[0].threshold` above 0.
    FirstNotZero(i64),
    /// `tiers[j].name` equal to `tiers[i].name`.
    DuplicateName(Index, Index),
    /// `stamp_card.reward_id` not in the catalogue.
    StampCardReward,
    /// A negative number in field `k` (see [`negate`]).
    Negative(Index, i64),
}

fn breakage() -> impl Strategy<Value = Breakage> {
    prop_oneof![
        (any::<Index>(), any::<u64>()).prop_map(|(i, d)| Breakage::Unsorted(i, d)),
        (1i64..=1_000_000).prop_map(Breakage::FirstNotZero),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Breakage::DuplicateName(i, j)),
        Just(Breakage::StampCardReward),
        (any::<Index>(), 1i64..=i64::MAX).prop_map(|(i, v)| Breakage::Negative(i, -v)),
    ]
}

/// The numeric fields of a program's JSON, as `(error field name, JSON pointer)`.
fn numeric_fields(j: &Value) -> Vec<(String, String)> {
    let mut out = vec![
        ("points_per_unit".to_owned(), "/points_per_unit".to_owned()),
        ("signup_bonus".to_owned(), "/signup_bonus".to_owned()),
        (
            "tier_qualification.window_days".to_owned(),
            "/tier_qualification/window_days".to_owned(),
        ),
    ];
    for i in 0..j["tiers"].as_array().unwrap().len() {
        out.push((
            format!("tiers[{i}].threshold"),
            format!("/tiers/{i}/threshold"),
        ));
        out.push((
            format!("tiers[{i}].multiplier_pct"),
            format!("/tiers/{i}/multiplier_pct"),
        ));
    }
    for i in 0..j["rewards"].as_array().unwrap().len() {
        out.push((
            format!("rewards[{i}].cost_points"),
            format!("/rewards/{i}/cost_points"),
        ));
    }
    if !j["stamp_card"].is_null() {
        out.push(("stamp_card.size".to_owned(), "/stamp_card/size".to_owned()));
    }
    if !j["points_expiry_days"].is_null() {
        out.push((
            "points_expiry_days".to_owned(),
            "/points_expiry_days".to_owned(),
        ));
    }
    out
}

proptest! {
    /// 8. Each way of breaking a valid program is refused, with a message naming the field.
    #[test]
    fn program_validation(gen in program_gen(false), b in breakage()) {
        let mut j = gen.json();
        let ntiers = gen.tiers.len();
        let expect: Vec<String> = match &b {
            Breakage::Unsorted(i, d) => {
                if ntiers < 2 {
                    return Ok(());
                }
                let i = 1 + i.index(ntiers - 1);
                let prev = gen.tiers[i - 1].0 as u64;
                let t = prev - d % (prev + 1);
                j["tiers"][i]["threshold"] = json!(t);
                vec![format!("tiers[{i}]"), "threshold".into()]
            }
            Breakage::FirstNotZero(t) => {
                j["tiers"][0]["threshold"] = json!(t);
                if ntiers > 1 {
                    // Keep the rest sorted so that only the first threshold is wrong.
                    for k in 1..ntiers {
                        j["tiers"][k]["threshold"] = json!(t + gen.tiers[k].0);
                    }
                }
                vec!["first tier".into(), "threshold".into()]
            }
            Breakage::DuplicateName(i, k) => {
                if ntiers < 2 {
                    return Ok(());
                }
                let a = i.index(ntiers);
                let mut c = k.index(ntiers - 1);
                if c >= a {
                    c += 1;
                }
                j["tiers"][c]["name"] = json!(format!("  {}  ", TIER_NAMES[a]));
                vec!["tier name".into(), TIER_NAMES[a].into(), "twice".into()]
            }
            Breakage::StampCardReward => {
                j["stamp_card"] = json!({ "size": 3, "reward_id": "not-in-catalogue" });
                vec!["stamp_card.reward_id".into(), "not-in-catalogue".into()]
            }
            Breakage::Negative(k, v) => {
                let fields = numeric_fields(&j);
                let (name, pointer) = k.get(&fields).clone();
                *j.pointer_mut(&pointer).unwrap() = json!(v);
                vec![name, v.to_string()]
            }
        };
        let err = serde_json::from_value::<Program>(j.clone()).expect_err("a broken program").to_string();
        for e in &expect {
            prop_assert!(err.contains(e.as_str()), "{:?}: error {:?} does not contain {:?}", b, err, e);
        }
        // The same from text.
        let err2 = serde_json::from_str::<Program>(&j.to_string()).expect_err("a broken program").to_string();
        prop_assert!(err2.contains(expect[0].as_str()), "{}", err2);
    }
}

#[test]
fn bad_programs_by_example() {
    let base = || {
        json!({
            "currency": "EUR",
            "points_per_unit": 1,
            "stamp_card": { "size": 10, "reward_id": "coffee" },
            "tier_qualification": { "metric": "spend_cents", "window_days": 365 },
            "tiers": [
                { "name": "Bronze", "threshold": 0, "multiplier_pct": 100 },
                { "name": "Silver", "threshold": 25000, "multiplier_pct": 150 },
            ],
            "rewards": [{ "id": "coffee", "name": "Coffee", "cost_points": 100 }],
        })
    };
    let ok: Program = serde_json::from_value(base()).unwrap();
    assert_eq!(ok.signup_bonus, 0);
    assert_eq!(ok.points_expiry_days, None);

    let cases: Vec<(&str, Value, &str)> = vec![
        ("/currency", json!("eur"), "currency"),
        ("/tiers", json!([]), "tiers"),
        ("/tiers/1/name", json!("   "), "tiers[1].name"),
        ("/rewards/0/id", json!("a b"), "rewards[0].id"),
        ("/rewards/0/cost_points", json!(0), "rewards[0].cost_points"),
        ("/stamp_card/size", json!(0), "stamp_card.size"),
        (
            "/tier_qualification/window_days",
            json!(0),
            "tier_qualification.window_days",
        ),
        (
            "/tiers/1/multiplier_pct",
            json!(10_001),
            "tiers[1].multiplier_pct",
        ),
        ("/points_per_unit", json!(10_001), "points_per_unit"),
    ];
    for (pointer, value, field) in cases {
        let mut j = base();
        *j.pointer_mut(pointer).unwrap() = value;
        let err = serde_json::from_value::<Program>(j)
            .expect_err(pointer)
            .to_string();
        assert!(err.contains(field), "{pointer}: {err}");
    }

    let mut j = base();
    j["rewards"] = json!([
        { "id": "coffee", "name": "Coffee", "cost_points": 100 },
        { "id": "coffee", "name": "Coffee again", "cost_points": 50 },
    ]);
    let err = serde_json::from_value::<Program>(j)
        .unwrap_err()
        .to_string();
    assert!(err.contains("coffee") && err.contains("twice"), "{err}");

    let mut j = base();
    j["bonus"] = json!(5);
    let err = serde_json::from_value::<Program>(j)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bonus"), "unknown fields are refused: {err}");
}

// ---------------------------------------------------------------------------------------------
// The audit (`loyalty_domain::audit`), on the states and ledgers the rules produce
// ---------------------------------------------------------------------------------------------

proptest! {
    /// 14. After every step of any history, the audit finds the state to be what its ledger
    /// says; and one changed entry (its points, its balance or its number) is found.
    #[test]
    fn the_audit_finds_nothing_in_any_history_and_finds_a_changed_entry(
        gen in program_gen(true),
        steps in steps(true),
        which in any::<Index>(),
        change in 0u8..3,
    ) {
        let program = gen.program();
        let mut ledger: Vec<LedgerEntry> = Vec::new();
        let sim = run(&program, &steps, |_, v| {
            if let Ok(applied) = v.result {
                ledger.extend(applied.entries.iter().cloned());
            }
            let state = v.after.as_ref().expect("enrolled");
            let findings = audit_member(state, &ledger, &program);
            prop_assert!(findings.is_empty(), "{:?}", findings);
            Ok(())
        })?;
        let state = sim.state.as_ref().expect("enrolled");
        if ledger.is_empty() {
            return Ok(());
        }
        let i = which.index(ledger.len());
        match change {
            0 => ledger[i].points += 1,
            1 => ledger[i].balance_after += 1,
            _ => ledger[i].seq += 1,
        }
        let findings = audit_member(state, &ledger, &program);
        prop_assert!(!findings.is_empty(), "entry {} changed ({}), nothing found", i, change);
    }
}

#[test]
fn the_audit_names_a_state_that_differs_from_its_ledger() {
    let program = Program::demo();
    let mut sim = Sim::new(program.clone());
    let id = sim.fresh_id();
    let Delivered::New { result, .. } = sim.deliver(&id, Timestamp(T0), &Pos::Enrol) else {
        panic!("a fresh id is always new");
    };
    let ledger = result.expect("enrolled").entries;
    let mut state = sim.state.clone().expect("enrolled");
    assert_eq!(audit_member(&state, &ledger, &program), vec![]);
    state.points += 5;
    let found = audit_member(&state, &ledger, &program);
    assert!(
        found.contains(&Finding::Balance {
            state: state.points,
            ledger: i128::from(state.points - 5)
        }),
        "{found:?}"
    );
    assert!(found.iter().any(|f| matches!(f, Finding::Lots { .. })));
    assert!(found.iter().all(|f| !f.to_string().is_empty()));
}
