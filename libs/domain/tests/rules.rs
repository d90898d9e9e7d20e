//! Example-based tests of the program rules, with the demonstration program
//! (`Program::demo()`: 1 point per euro, signup bonus 50, a 10-stamp card for a free coffee,
//! Bronze 0 / Silver 25 000 / Gold 100 000 cents of spend over 365 days at ×1 / ×1.5 / ×2,
//! a free coffee for 100 points and a free pastry for 150, points expire after 365 days).

use std::collections::HashMap;

use loyalty_domain::{
    apply, Applied, Cents, Currency, EventContext, EventId, FranchiseId, LedgerEntry, LedgerKind,
    MemberCommand, MemberId, MemberState, Outcome, Phone, PointLot, Profile, Program,
    PurchaseRecord, Rejection, RewardId, StoreId, Timestamp,
};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_700_000_000_000;

/// One member of the demo program, with the engine's bookkeeping of purchases.
struct Member {
    program: Program,
    state: Option<MemberState>,
    next: u32,
    purchases: HashMap<EventId, PurchaseRecord>,
}

impl Member {
    fn new() -> Member {
        Member {
            program: Program::demo(),
            state: None,
            next: 0,
            purchases: HashMap::new(),
        }
    }

    fn enrolled() -> Member {
        let mut m = Member::new();
        m.enrol(0).unwrap();
        m
    }

    fn state(&self) -> &MemberState {
        self.state.as_ref().expect("enrolled")
    }

    /// Applies `cmd` at `T0 + at_ms`; returns the event's id and the result.
    fn send(&mut self, at_ms: i64, cmd: MemberCommand) -> (EventId, Result<Applied, Rejection>) {
        self.next += 1;
        let id = EventId::parse(&format!("e-{}", self.next)).unwrap();
        let store = StoreId::parse("store-1").unwrap();
        let ctx = EventContext {
            event_id: &id,
            store_id: &store,
            at: Timestamp(T0 + at_ms),
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
        match &result {
            Ok(Applied {
                outcome: Outcome::Purchase(r),
                ..
            }) => {
                self.purchases.insert(id.clone(), r.clone());
            }
            Ok(Applied {
                outcome:
                    Outcome::Refund {
                        purchase_event_id,
                        purchase,
                        ..
                    },
                ..
            }) => {
                self.purchases
                    .insert(purchase_event_id.clone(), purchase.clone());
            }
            _ => {}
        }
        (id, result)
    }

    fn enrol(&mut self, at_ms: i64) -> Result<Applied, Rejection> {
        let profile = Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: None,
            birthday: None,
            consent: Default::default(),
            email: None,
        };
        self.send(at_ms, MemberCommand::Enrol { profile }).1
    }

    fn buy(&mut self, at_ms: i64, cents: i64) -> (EventId, Result<Applied, Rejection>) {
        let currency = self.program.currency.clone();
        self.send(
            at_ms,
            MemberCommand::Purchase {
                amount: Cents::new(cents).unwrap(),
                currency,
                items: Vec::new(),
            },
        )
    }

    /// The points a purchase earned (its "purchase" Earn entry).
    fn earned_by(&mut self, at_ms: i64, cents: i64) -> u64 {
        let (_, r) = self.buy(at_ms, cents);
        let Outcome::Purchase(rec) = r.expect("a purchase is accepted").outcome else {
            panic!("a purchase")
        };
        rec.points_earned
    }

    fn refund(&mut self, at_ms: i64, purchase: &EventId, cents: i64) -> Result<Applied, Rejection> {
        let cmd = MemberCommand::Refund {
            purchase_event_id: purchase.clone(),
            amount: Some(Cents::new(cents).unwrap()),
            purchase: self.purchases.get(purchase).cloned(),
            purchase_unseen: false,
        };
        self.send(at_ms, cmd).1
    }

    fn redeem(&mut self, at_ms: i64, reward: &str) -> Result<Applied, Rejection> {
        self.send(
            at_ms,
            MemberCommand::Redemption {
                reward_id: RewardId::parse(reward).unwrap(),
            },
        )
        .1
    }
}

fn only(entries: &[LedgerEntry]) -> &LedgerEntry {
    assert_eq!(entries.len(), 1, "{entries:?}");
    &entries[0]
}

#[test]
fn enrolment_gives_the_signup_bonus() {
    let mut m = Member::new();
    let applied = m.enrol(0).unwrap();
    assert_eq!(applied.outcome, Outcome::Enrolled { created: true });
    let e = only(&applied.entries);
    assert_eq!(
        (e.kind, e.points, e.balance_after, e.seq),
        (LedgerKind::Earn, 50, 50, 1)
    );
    assert_eq!(e.detail, "signup_bonus");
    assert_eq!(e.event_id.as_str(), "e-1");
    let s = m.state();
    assert_eq!(
        (s.points, s.tier.as_str(), s.version, s.last_seq),
        (50, "Bronze", 1, 1)
    );

    // Enrolling again changes nothing.
    let before = m.state.clone();
    let again = m.enrol(DAY).unwrap();
    assert_eq!(again.outcome, Outcome::Enrolled { created: false });
    assert!(!again.changed && again.entries.is_empty());
    assert_eq!(m.state, before);
}

#[test]
fn a_bronze_purchase_earns_one_point_per_whole_euro() {
    let mut m = Member::enrolled();
    let (id, r) = m.buy(1000, 1234);
    let applied = r.unwrap();
    let e = only(&applied.entries);
    assert_eq!(
        (e.kind, e.points, e.balance_after, e.seq),
        (LedgerKind::Earn, 12, 62, 2)
    );
    assert_eq!(e.detail, "purchase");
    assert_eq!(e.event_id, id);
    let s = m.state();
    assert_eq!(
        (s.points, s.stamps, s.visits, s.spend_cents),
        (62, 1, 1, 1234)
    );
    // 99 cents earn nothing, and write no entry; a purchase of 0 is no visit.
    assert!(m.buy(2000, 99).1.unwrap().entries.is_empty());
    assert!(m.buy(3000, 0).1.unwrap().entries.is_empty());
    assert_eq!(
        (m.state().points, m.state().stamps, m.state().visits),
        (62, 2, 2)
    );
}

#[test]
fn silver_from_25_000_cents_then_points_times_one_and_a_half() {
    let mut m = Member::enrolled();
    assert_eq!(m.earned_by(1000, 24_999), 249);
    assert_eq!(m.state().tier, "Bronze");
    // The purchase that reaches the threshold still earns at Bronze.
    assert_eq!(m.earned_by(2000, 1), 0);
    assert_eq!(m.state().tier, "Silver");
    assert_eq!(m.earned_by(3000, 1000), 15);
    assert_eq!(m.earned_by(4000, 1234), 18); // floor(12.34 × 1.5)
    assert_eq!(m.earned_by(5000, 100_000 - 25_000 - 1000 - 1234), 1091); // floor(727.66 × 1.5)
    assert_eq!(m.state().tier, "Gold");
    assert_eq!(m.earned_by(6000, 1000), 20);
}

#[test]
fn insufficient_points_changes_nothing() {
    let mut m = Member::enrolled();
    m.buy(1000, 1000).1.unwrap();
    assert_eq!(m.state().points, 60);
    let before = m.state.clone();
    let err = m.redeem(2000, "free-coffee").unwrap_err();
    assert_eq!(
        err,
        Rejection::InsufficientPoints {
            needed: 100,
            available: 60
        }
    );
    assert_eq!(m.state, before);

    assert_eq!(
        m.redeem(2000, "caviar").unwrap_err(),
        Rejection::UnknownReward {
            reward_id: RewardId::parse("caviar").unwrap()
        }
    );
    assert_eq!(m.state, before);
}

#[test]
fn a_voucher_is_used_before_points() {
    let mut m = Member::enrolled();
    for i in 0..10 {
        m.buy(1000 * (i + 1), 1000).1.unwrap();
    }
    let s = m.state();
    assert_eq!((s.points, s.stamps), (150, 0));
    assert_eq!(
        s.vouchers.get(&RewardId::parse("free-coffee").unwrap()),
        Some(&1)
    );

    let applied = m.redeem(20_000, "free-coffee").unwrap();
    assert_eq!(
        applied.outcome,
        Outcome::Redemption {
            reward_id: RewardId::parse("free-coffee").unwrap(),
            used_voucher: true,
            points_spent: 0,
            lots_taken: Vec::new(),
            cancelled_by: None,
            code: None,
        }
    );
    let e = only(&applied.entries);
    assert_eq!(
        (e.kind, e.points, e.balance_after),
        (LedgerKind::Redeem, 0, 150)
    );
    assert_eq!(e.detail, "voucher:free-coffee");
    assert!(m.state().vouchers.is_empty());

    // No voucher left: points pay.
    let applied = m.redeem(21_000, "free-coffee").unwrap();
    let e = only(&applied.entries);
    assert_eq!(
        (e.kind, e.points, e.balance_after),
        (LedgerKind::Redeem, -100, 50)
    );
    assert_eq!(e.detail, "reward:free-coffee");
    assert_eq!((m.state().points, m.state().points_redeemed), (50, 100));
}

#[test]
fn commands_for_no_member_and_in_another_currency_are_refused() {
    let mut m = Member::new();
    assert_eq!(m.buy(0, 1000).1.unwrap_err(), Rejection::UnknownMember);
    assert!(m.state.is_none());

    let mut m = Member::enrolled();
    let before = m.state.clone();
    let cmd = MemberCommand::Purchase {
        amount: Cents::new(1000).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        items: Vec::new(),
    };
    assert_eq!(
        m.send(1000, cmd).1.unwrap_err(),
        Rejection::CurrencyMismatch {
            expected: "EUR".into()
        }
    );
    assert_eq!(m.state, before);
}

#[test]
fn refunds_reverse_points_in_proportion() {
    let mut m = Member::enrolled();
    let (p, _) = m.buy(1000, 10_000);
    assert_eq!(m.state().points, 150);

    let applied = m.refund(2000, &p, 2_500).unwrap();
    let e = only(&applied.entries);
    assert_eq!(
        (e.kind, e.points, e.balance_after),
        (LedgerKind::Reverse, -25, 125)
    );
    assert_eq!(e.detail, format!("refund:{p}"));
    assert_eq!(
        (m.state().spend_cents, m.state().points_reversed),
        (7_500, 25)
    );

    let before = m.state.clone();
    assert_eq!(
        m.refund(3000, &p, 7_501).unwrap_err(),
        Rejection::RefundExceedsPurchase {
            remaining_cents: 7_500
        }
    );
    assert_eq!(m.state, before);

    let Outcome::Refund {
        points_reversed,
        points_forgiven,
        purchase,
        ..
    } = m.refund(4000, &p, 7_500).unwrap().outcome
    else {
        panic!("a refund")
    };
    assert_eq!((points_reversed, points_forgiven), (75, 0));
    assert_eq!(
        (
            purchase.refunded_cents,
            purchase.reversed_points,
            purchase.points_earned
        ),
        (10_000, 100, 100)
    );
    assert_eq!(m.state().points, 50);
    assert_eq!(
        m.refund(5000, &p, 1).unwrap_err(),
        Rejection::RefundExceedsPurchase { remaining_cents: 0 }
    );

    let unknown = EventId::parse("nope").unwrap();
    assert_eq!(
        m.refund(6000, &unknown, 1).unwrap_err(),
        Rejection::UnknownPurchase {
            purchase_event_id: unknown
        }
    );
}

#[test]
fn a_refund_of_spent_points_is_forgiven_not_negative() {
    let mut m = Member::enrolled();
    let (p, _) = m.buy(1000, 10_000);
    m.redeem(2000, "free-pastry").unwrap();
    assert_eq!(m.state().points, 0);
    let applied = m.refund(3000, &p, 10_000).unwrap();
    assert!(applied.entries.is_empty());
    let Outcome::Refund {
        points_reversed,
        points_forgiven,
        ..
    } = applied.outcome
    else {
        panic!("a refund")
    };
    assert_eq!((points_reversed, points_forgiven), (0, 100));
    assert_eq!(m.state().points, 0);
}

#[test]
fn a_refund_can_take_the_member_down_a_tier() {
    let mut m = Member::enrolled();
    let (p, _) = m.buy(1000, 30_000);
    assert_eq!(m.state().tier, "Silver");
    m.refund(2000, &p, 5_001).unwrap();
    assert_eq!(m.state().tier, "Bronze");
}

#[test]
fn points_expire_after_365_days_oldest_first() {
    let mut m = Member::enrolled(); // 50 points on day 0
    m.buy(10 * DAY, 5_000).1.unwrap(); // 50 points on day 10
    m.buy(20 * DAY, 7_000).1.unwrap(); // 70 points on day 20
    m.redeem(30 * DAY, "free-coffee").unwrap(); // spends the 50 of day 0 and the 50 of day 10
    assert_eq!(m.state().points, 70);
    let day20 = Timestamp(T0 + 20 * DAY).day();
    assert_eq!(
        m.state().lots,
        vec![PointLot {
            day: day20,
            points: 70
        }]
    );

    // Days 365 and 375: the lots of days 0 and 10 would expire, but they were spent.
    assert!(m.buy(365 * DAY, 0).1.unwrap().entries.is_empty());
    assert!(m.buy(375 * DAY, 0).1.unwrap().entries.is_empty());
    // Day 385: the 70 points of day 20 expire, before the purchase earns.
    let applied = m.buy(385 * DAY, 1_000).1.unwrap();
    let kinds: Vec<_> = applied
        .entries
        .iter()
        .map(|e| (e.kind, e.points, e.balance_after))
        .collect();
    assert_eq!(
        kinds,
        vec![(LedgerKind::Expire, -70, 0), (LedgerKind::Earn, 10, 10)]
    );
    assert_eq!(m.state().points_expired, 70);
}

#[test]
fn a_late_event_does_not_move_the_clock_back() {
    let mut m = Member::enrolled();
    m.buy(10 * DAY, 1_000).1.unwrap();
    let clock = m.state().clock;
    let applied = m.buy(5 * DAY, 1_000).1.unwrap();
    assert_eq!(m.state().clock, clock);
    assert_eq!(only(&applied.entries).at, clock);
}

/// The tier window slides between events: a member who qualified for Silver more than a
/// window ago earns at the tier their current window gives them, not the stale one.
#[test]
fn a_purchase_after_the_window_slid_earns_at_the_current_tier() {
    let mut m = Member::enrolled();
    m.buy(0, 30_000).1.unwrap();
    assert_eq!(m.state().tier, "Silver");
    // 400 days later the 30 000 cents have left the 365-day window: Bronze, ×1.
    assert_eq!(m.earned_by(400 * DAY, 1_000), 10);
    assert_eq!(m.state().tier, "Bronze");

    // A redemption re-evaluates the tier too.
    let mut m = Member::enrolled();
    m.buy(0, 30_000).1.unwrap();
    m.redeem(400 * DAY, "free-coffee").unwrap_err(); // 0 points left after expiry: refused
    m.buy(300 * DAY, 20_000).1.unwrap(); // still Silver: 50 000 cents in the window
    assert_eq!(m.state().tier, "Silver");
    m.redeem(400 * DAY, "free-coffee").unwrap(); // only the 20 000 of day 300 are left in it
    assert_eq!(m.state().tier, "Bronze");
}

/// Issue 14, defect 8: a reward removed from the catalogue after a member's card earned its
/// voucher. The voucher stays redeemable (once), the status lists it among the rewards
/// available, and the reward cannot be bought with points any more.
#[test]
fn a_voucher_outlives_its_reward_leaving_the_catalogue() {
    let mut m = Member::enrolled();
    for i in 0..10 {
        m.buy(1000 * (i + 1), 1000).1.unwrap();
    }
    let coffee = RewardId::parse("free-coffee").unwrap();
    assert_eq!(m.state().vouchers.get(&coffee), Some(&1));
    // The program drops the coffee (its reward and the stamp card that gave it).
    m.program.rewards.retain(|r| r.id != coffee);
    m.program.stamp_card = None;
    let status = loyalty_domain::MemberStatus::of(m.state(), &m.program);
    assert!(status.rewards_available.contains(&coffee), "{status:?}");
    assert_eq!(status.stamp_card_size, None);
    assert_eq!(status.vouchers.len(), 1);

    let applied = m.redeem(20_000, "free-coffee").unwrap();
    assert_eq!(
        applied.outcome,
        Outcome::Redemption {
            reward_id: coffee.clone(),
            used_voucher: true,
            points_spent: 0,
            lots_taken: Vec::new(),
            cancelled_by: None,
            code: None,
        }
    );
    assert!(m.state().vouchers.is_empty());
    let status = loyalty_domain::MemberStatus::of(m.state(), &m.program);
    assert!(!status.rewards_available.contains(&coffee));
    // Without a voucher the reward is unknown, whatever the balance.
    let before = m.state.clone();
    assert_eq!(
        m.redeem(21_000, "free-coffee").unwrap_err(),
        Rejection::UnknownReward { reward_id: coffee }
    );
    assert_eq!(m.state, before);
}
