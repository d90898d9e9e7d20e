//! Points and money never wrap (issue 14, defect 1).
//!
//! The largest valid programs (10 000 points per unit, tiers up to 10 000 %, a signup bonus up to
//! 10^9) and the largest amounts (10^12 cents) earn up to 10^16 points per purchase: a few hundred
//! purchases used to take a balance past the int64 the API documents, and about 1 800 past 2^64,
//! where it wrapped with `balance_after` no longer the sum of the ledger. These properties drive
//! such programs with long runs of huge purchases (with refunds and redemptions mixed in) and
//! check after every command that:
//!
//! - the balance is the sum of every ledger entry written so far, and each entry's
//!   `balance_after` is the running sum (computed in `i128`, so a wrap cannot hide);
//! - the balance and every counter of the member stay within [`MAX_POINTS_BALANCE`] (and so
//!   within int64), and money totals within [`MAX_MEMBER_CENTS`];
//! - a command that would go past them is refused with `limit-exceeded` and changes nothing, and
//!   is refused only then (a purchase only when its points or amount would not fit).

use loyalty_domain::{
    apply, EventContext, EventId, FranchiseId, LedgerEntry, MemberCommand, MemberId, MemberState,
    Phone, Profile, Program, PurchaseRecord, Rejection, RewardId, StoreId, Timestamp,
    MAX_MEMBER_CENTS, MAX_POINTS_BALANCE,
};
use loyalty_domain::{Cents, Currency, Outcome};
use proptest::prelude::*;
use serde_json::json;

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

/// A program at (or near) the validator's bounds.
fn huge_program(ppu: i64, top_pct: i64, bonus: i64, metric: &str, cost: i64) -> Program {
    serde_json::from_value(json!({
        "currency": "EUR",
        "points_per_unit": ppu,
        "signup_bonus": bonus,
        "tier_qualification": { "metric": metric, "window_days": 3650 },
        "tiers": [
            { "name": "Base", "threshold": 0, "multiplier_pct": 100 },
            { "name": "Top", "threshold": 1, "multiplier_pct": top_pct },
        ],
        "rewards": [{ "id": "big", "name": "Big", "cost_points": cost }],
        "stamp_card": { "size": 1, "reward_id": "big" },
    }))
    .expect("a program within the validator's bounds")
}

#[derive(Clone, Debug)]
enum Op {
    Purchase(u64),
    /// A refund of `permille` of what is left of the latest purchase.
    Refund(u64),
    Redeem,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => prop_oneof![
            8 => Just(Cents::MAX),
            2 => (Cents::MAX / 2)..=Cents::MAX,
            1 => 0..=Cents::MAX,
        ].prop_map(Op::Purchase),
        1 => (0u64..=1000).prop_map(Op::Refund),
        1 => Just(Op::Redeem),
    ]
}

fn program() -> impl Strategy<Value = Program> {
    (
        prop_oneof![4 => Just(10_000i64), 1 => 1i64..=10_000],
        prop_oneof![4 => Just(10_000i64), 1 => 0i64..=10_000],
        prop_oneof![Just(0i64), Just(1_000_000_000i64)],
        prop_oneof![Just("spend_cents"), Just("points_earned"), Just("visits")],
        prop_oneof![Just(1i64), Just(1_000_000_000i64)],
    )
        .prop_map(|(ppu, pct, bonus, metric, cost)| huge_program(ppu, pct, bonus, metric, cost))
}

struct Member {
    state: Option<MemberState>,
    ledger: Vec<LedgerEntry>,
    /// The latest applied purchase and its current record.
    purchase: Option<(EventId, PurchaseRecord)>,
    next: u64,
}

fn counters_within_limits(s: &MemberState) -> Result<(), TestCaseError> {
    for (what, v) in [
        ("points", s.points),
        ("points_earned", s.points_earned),
        ("points_redeemed", s.points_redeemed),
        ("points_expired", s.points_expired),
        ("points_reversed", s.points_reversed),
    ] {
        prop_assert!(v <= MAX_POINTS_BALANCE, "{what} = {v}");
        prop_assert!(i64::try_from(v).is_ok(), "{what} = {v} leaves int64");
    }
    prop_assert!(s.spend_cents <= MAX_MEMBER_CENTS, "spend {}", s.spend_cents);
    prop_assert!(i64::try_from(s.visits).is_ok(), "visits {}", s.visits);
    let lots: u128 = s.lots.iter().map(|l| u128::from(l.points)).sum();
    prop_assert_eq!(lots, u128::from(s.points), "lots = balance");
    Ok(())
}

fn check_ledger(m: &Member) -> Result<(), TestCaseError> {
    let mut sum: i128 = 0;
    for (i, e) in m.ledger.iter().enumerate() {
        sum += i128::from(e.points);
        prop_assert_eq!(e.seq, i as u64 + 1, "seq without gaps");
        prop_assert_eq!(
            i128::from(e.balance_after),
            sum,
            "balance_after of entry {} is the running sum",
            e.seq
        );
    }
    let points = m.state.as_ref().map_or(0, |s| s.points);
    prop_assert_eq!(i128::from(points), sum, "balance = sum of the ledger");
    Ok(())
}

fn run(program: &Program, ops: &[Op]) -> Result<bool, TestCaseError> {
    let member = MemberId::parse("m-1").unwrap();
    let franchise = FranchiseId::parse("f-1").unwrap();
    let store = StoreId::parse("s-1").unwrap();
    let reward = RewardId::parse("big").unwrap();
    let mut m = Member {
        state: None,
        ledger: Vec::new(),
        purchase: None,
        next: 0,
    };
    let mut limited = false;
    let enrol = MemberCommand::Enrol {
        profile: Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: None,
            birthday: None,
            consent: Default::default(),
            email: None,
        },
    };
    let mut commands = vec![enrol];
    let mut at = T0;
    let mut i = 0;
    loop {
        let Some(cmd) = commands.pop() else {
            let Some(op) = ops.get(i) else { break };
            i += 1;
            commands.push(match op {
                Op::Purchase(a) => MemberCommand::Purchase {
                    amount: Cents::new(*a as i64).unwrap(),
                    currency: Currency::parse("EUR").unwrap(),
                    items: Vec::new(),
                },
                Op::Refund(permille) => {
                    let Some((id, rec)) = &m.purchase else {
                        continue;
                    };
                    let left = rec.amount_cents.get() - rec.refunded_cents;
                    MemberCommand::Refund {
                        purchase_event_id: id.clone(),
                        amount: Some(Cents::new((left * permille / 1000) as i64).unwrap()),
                        purchase: Some(rec.clone()),
                        purchase_unseen: false,
                    }
                }
                Op::Redeem => MemberCommand::Redemption {
                    reward_id: reward.clone(),
                },
            });
            continue;
        };
        m.next += 1;
        at += HOUR;
        let event_id = EventId::parse(&format!("e-{}", m.next)).unwrap();
        let ctx = EventContext {
            event_id: &event_id,
            store_id: &store,
            at: Timestamp(at),
            program,
            program_version: 1,
        };
        let before = m.state.clone();
        match apply(&mut m.state, &member, &franchise, &cmd, &ctx) {
            Ok(applied) => {
                m.ledger.extend(applied.entries);
                match applied.outcome {
                    Outcome::Purchase(rec) => m.purchase = Some((event_id.clone(), rec)),
                    Outcome::Refund { purchase, .. } => {
                        if let Some((_, rec)) = &mut m.purchase {
                            *rec = purchase;
                        }
                    }
                    _ => {}
                }
            }
            Err(Rejection::LimitExceeded { .. }) => {
                limited = true;
                prop_assert_eq!(&m.state, &before, "a refused command changes nothing");
                // Refused only when it would not fit: the balance is near the limit, or some
                // total of the member is.
                let s = m.state.as_ref().unwrap();
                if let MemberCommand::Purchase { amount, .. } = &cmd {
                    let most = program.points_for(amount.get(), program.tiers.len() - 1);
                    prop_assert!(
                        s.points_earned + most > MAX_POINTS_BALANCE
                            || s.spend_cents + amount.get() > MAX_MEMBER_CENTS,
                        "a purchase of {} refused with room left (earned {}, spent {})",
                        amount.get(),
                        s.points_earned,
                        s.spend_cents
                    );
                }
            }
            Err(_) => prop_assert_eq!(&m.state, &before, "a refused command changes nothing"),
        }
        if let Some(s) = &m.state {
            counters_within_limits(s)?;
        }
        check_ledger(&m)?;
    }
    Ok(limited)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Long runs of the largest purchases on the largest programs: every balance is the sum of
    /// its ledger and stays in range; what would leave the range is refused and changes nothing.
    #[test]
    fn balances_stay_the_sum_of_their_entries_and_never_wrap(
        program in program(),
        ops in prop::collection::vec(op(), 50..2_200),
    ) {
        run(&program, &ops)?;
    }
}

/// The case of the issue: 10^16 points per purchase until the limit, then a clear refusal that
/// changes nothing.
#[test]
fn the_largest_purchases_reach_the_limit_and_are_then_refused() {
    let program = huge_program(10_000, 10_000, 0, "spend_cents", 1_000_000_000);
    let ops = vec![Op::Purchase(Cents::MAX); 2_000];
    assert_eq!(
        program.points_for(Cents::MAX, 1),
        10_000_000_000_000_000,
        "10^16 points a purchase at the top tier"
    );
    let limited = run(&program, &ops).unwrap_or_else(|e| panic!("{e}"));
    assert!(limited, "2 000 purchases of 10^16 points hit the limit");
}
