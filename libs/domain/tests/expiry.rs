//! Property and example tests of expiry and of the scheduler's time-only command
//! ([`MemberCommand::Advance`]): points expire FIFO by lot, one `expire` entry per lot, never
//! before their age; advancing is idempotent; the due time is what the next advance acts on.

mod common;

use common::Member;
use loyalty_domain::{
    day_start, LedgerEntry, LedgerKind, MemberCommand, MemberState, MemberStatus, Outcome, Points,
    Program, Timestamp,
};
use proptest::prelude::*;
use serde_json::json;

const DAY: i64 = 86_400_000;
/// 2023-11-14.
const T0: i64 = 1_700_000_000_000;

fn program(expiry_days: u32, window_days: u32, silver: u64) -> Program {
    serde_json::from_value(json!({
        "currency": "EUR",
        "points_per_unit": 1,
        "signup_bonus": 0,
        "tier_qualification": { "metric": "spend_cents", "window_days": window_days },
        "tiers": [
            { "name": "Bronze", "threshold": 0, "multiplier_pct": 100 },
            { "name": "Silver", "threshold": silver, "multiplier_pct": 100 }
        ],
        "rewards": [],
        "points_expiry_days": expiry_days,
    }))
    .expect("a valid program")
}

impl Member {
    fn expire_entries(&self) -> Vec<&LedgerEntry> {
        let expire = |e: &&LedgerEntry| e.kind == LedgerKind::Expire;
        self.ledger.iter().filter(expire).collect()
    }
}

/// Points earned per lot day, from the ledger: what each lot was.
fn earned_by_day(m: &Member) -> std::collections::BTreeMap<u32, Points> {
    let mut by_day = std::collections::BTreeMap::new();
    for e in m.ledger.iter().filter(|e| e.kind == LedgerKind::Earn) {
        *by_day.entry(e.at.day().0).or_default() += e.points as Points;
    }
    by_day
}

/// A step: a purchase (cents) after `gap` ms, or the scheduler advancing to the member's due
/// time (or, when nothing is due, to an arbitrary time).
#[derive(Clone, Debug)]
enum Step {
    Purchase { gap: i64, cents: u64 },
    Advance { gap: i64 },
    AdvanceToDue,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let gap = prop_oneof![3 => 0i64..DAY, 1 => DAY..40 * DAY];
    let step = prop_oneof![
        3 => (gap.clone(), 0u64..5_000).prop_map(|(gap, cents)| Step::Purchase { gap, cents }),
        1 => gap.prop_map(|gap| Step::Advance { gap }),
        2 => Just(Step::AdvanceToDue),
    ];
    prop::collection::vec(step, 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Expiry never removes unexpired points: every `expire` entry takes a lot that reached
    /// the program's age at the entry's time, at most what that lot earned, and there is one
    /// entry per lot (a lot day expires once); after any step no lot that reached its age is
    /// left; the balance is the sum of the ledger and of the lots.
    #[test]
    fn expiry_never_removes_unexpired_points(
        expiry in 1u32..30, window in 1u32..30, silver in 1u64..20_000, steps in steps(),
    ) {
        let mut m = Member::enrolled(program(expiry, window, silver), T0);
        let mut now = T0;
        for step in steps {
            match step {
                Step::Purchase { gap, cents } => { now += gap; m.purchase(cents, now); }
                Step::Advance { gap } => { now += gap; m.send(MemberCommand::Advance, now); }
                Step::AdvanceToDue => {
                    if let Some(due) = m.state().next_due(&m.program) {
                        now = now.max(due.0);
                        m.send(MemberCommand::Advance, due.0);
                    }
                }
            }
            let s = m.state();
            let today = s.clock.day().0;
            for lot in &s.lots {
                prop_assert!(lot.day.0 + expiry > today, "an expired lot is left: {lot:?}");
            }
            let lots: Points = s.lots.iter().map(|l| l.points).sum();
            prop_assert_eq!(lots, s.points);
            let sum: i64 = m.ledger.iter().map(|e| e.points).sum();
            prop_assert_eq!(sum, s.points as i64);
        }
        let earned = earned_by_day(&m);
        let mut seen = std::collections::BTreeSet::new();
        for e in m.expire_entries() {
            let day = e.detail.strip_prefix("expired:").expect("names its lot");
            let lot = loyalty_domain::Day::parse_iso(day).expect("an ISO day").0;
            prop_assert!(seen.insert(lot), "two expire entries for the lot of {day}");
            prop_assert!(lot + expiry <= e.at.day().0, "lot of {day} expired early at {:?}", e.at);
            prop_assert!((-e.points) as Points <= earned.get(&lot).copied().unwrap_or(0));
        }
    }

    /// Advancing to a time the clock already passed changes nothing, and advancing to the
    /// member's due time always changes something (so a due member never stays due).
    #[test]
    fn advance_is_idempotent_and_due_is_acted_on(
        expiry in 1u32..30, window in 1u32..30, silver in 1u64..20_000, steps in steps(),
    ) {
        let mut m = Member::enrolled(program(expiry, window, silver), T0);
        let mut now = T0;
        for step in steps {
            if let Step::Purchase { gap, cents } = step {
                now += gap;
                m.purchase(cents, now);
            }
            let due = m.state().next_due(&m.program);
            if let Some(due) = due {
                prop_assert!(due > m.state().clock, "due {due:?} not after the clock");
                let before = m.state().clone();
                m.send(MemberCommand::Advance, due.0);
                prop_assert!(m.state().version == before.version + 1, "an advance to the due time changed nothing");
                let after = m.state().clone();
                let n = m.ledger.len();
                m.send(MemberCommand::Advance, due.0);
                m.send(MemberCommand::Advance, due.0 - DAY);
                prop_assert_eq!(m.state(), &after);
                prop_assert_eq!(m.ledger.len(), n);
                now = now.max(due.0);
            }
        }
    }
}

#[test]
fn a_dormant_members_lots_expire_one_entry_each_oldest_first() {
    let mut m = Member::enrolled(program(10, 30, 1_000_000), T0);
    m.purchase(500, T0);
    m.purchase(300, T0 + 2 * DAY);
    let first_day = Timestamp(T0).day();
    let due = m.state().next_due(&m.program).expect("a lot to expire");
    assert_eq!(due, day_start(loyalty_domain::Day(first_day.0 + 10)));
    let status = MemberStatus::of(m.state(), &m.program);
    let next = status.next_expiry.expect("a next expiry");
    assert_eq!((next.points, next.date.as_str()), (5, "2023-11-24"));

    let outcome = m.send(MemberCommand::Advance, due.0);
    assert_eq!(
        outcome,
        Some(Outcome::Advanced {
            points_expired: 5,
            tier: "Bronze".into()
        })
    );
    assert_eq!(m.state().points, 3);
    let next = m.state().next_due(&m.program).expect("the second lot");
    m.send(MemberCommand::Advance, next.0);
    let expired: Vec<(i64, &str)> = m
        .expire_entries()
        .iter()
        .map(|e| (e.points, e.detail.as_str()))
        .collect();
    assert_eq!(
        expired,
        [(-5, "expired:2023-11-14"), (-3, "expired:2023-11-16")]
    );
    assert_eq!(m.state().points, 0);
    assert_eq!(m.state().next_due(&m.program), None);
    assert!(MemberStatus::of(m.state(), &m.program)
        .next_expiry
        .is_none());
}

#[test]
fn a_tier_held_by_old_activity_is_lost_on_the_day_it_leaves_the_window() {
    let mut m = Member::enrolled(program(365, 7, 1_000), T0);
    m.purchase(1_500, T0);
    assert_eq!(m.state().tier, "Silver");
    let due = m
        .state()
        .next_due(&m.program)
        .expect("the window day drops");
    assert_eq!(
        due,
        day_start(loyalty_domain::Day(Timestamp(T0).day().0 + 7))
    );
    m.send(MemberCommand::Advance, due.0 - 1);
    assert_eq!(
        m.state().tier,
        "Silver",
        "still inside the window a moment before"
    );
    m.send(MemberCommand::Advance, due.0);
    assert_eq!(m.state().tier, "Bronze");
    assert_eq!(m.state().points, 15, "a downgrade takes no points");
}

#[test]
fn an_erased_member_is_never_due() {
    let mut m = Member::enrolled(program(1, 7, 1), T0);
    m.purchase(500, T0);
    assert!(m.state().next_due(&m.program).is_some());
    m.send(MemberCommand::Erase, T0 + 1);
    assert_eq!(m.state().next_due(&m.program), None);
}

/// The parts of a member's state that do not depend on the order its events arrived in.
fn order_free(s: &MemberState) -> impl PartialEq + std::fmt::Debug {
    (
        (
            s.points,
            s.points_earned,
            s.points_expired,
            s.visits,
            s.spend_cents,
        ),
        (
            s.lots.clone(),
            s.window.clone(),
            s.tier.clone(),
            s.clock,
            s.last_visit,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Replaying a member's events in arrival order or in event order gives the documented
    /// result (README "Offline tills"): a late purchase is booked on its own day (its lot in
    /// day order, its window day if still inside the window, a lot already past its age
    /// expired at once), so once advanced to the same time the member has the same balance,
    /// lots, window, tier and counters whatever order the purchases arrived in. (Points earned
    /// use the tier the member has when a purchase arrives; here every tier earns at 100 %.)
    #[test]
    fn arrival_order_or_event_order_gives_the_same_member(
        expiry in 1u32..60, window in 1u32..60, silver in 1u64..20_000,
        (events, arrival) in prop::collection::vec((0i64..120 * DAY, 0u64..5_000), 1..25)
            .prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
    ) {
        let program = program(expiry, window, silver);
        let mut by_time = events.clone();
        by_time.sort_by_key(|(at, _)| *at);
        let end = T0 + 200 * DAY;
        let replay = |order: &[(i64, u64)]| {
            let mut m = Member::enrolled(program.clone(), T0);
            for (at, cents) in order {
                m.purchase(*cents, T0 + at);
            }
            m.send(MemberCommand::Advance, end);
            let sum: i64 = m.ledger.iter().map(|e| e.points).sum();
            assert_eq!(sum, m.state().points as i64, "the ledger sums to the balance");
            m
        };
        let (in_order, as_arrived) = (replay(&by_time), replay(&arrival));
        prop_assert_eq!(order_free(in_order.state()), order_free(as_arrived.state()));
    }
}

#[test]
fn a_late_purchase_is_booked_on_its_own_day() {
    let mut m = Member::enrolled(program(30, 7, 1_000), T0);
    m.purchase(500, T0 + 10 * DAY);
    // Sent by a till that was offline: it happened 3 days earlier.
    m.purchase(700, T0 + 7 * DAY);
    let s = m.state();
    let days: Vec<(u32, Points)> = s.lots.iter().map(|l| (l.day.0, l.points)).collect();
    let d = Timestamp(T0).day().0;
    assert_eq!(days, [(d + 7, 7), (d + 10, 5)], "lots in day order");
    let window: Vec<(u32, u64)> = s.window.iter().map(|a| (a.day.0, a.spend_cents)).collect();
    assert_eq!(window, [(d + 7, 700), (d + 10, 500)]);
    assert_eq!(s.tier, "Silver", "both days are inside the 7-day window");
    // Older than the window when it arrives: it counts for points and spend, not the tier.
    m.purchase(900, T0 + DAY);
    assert_eq!(m.state().window.len(), 2);
    assert_eq!(m.state().points, 21);
    // Older than the expiry: earned and expired at once, one entry each.
    m.purchase(100, T0 + 40 * DAY);
    m.purchase(800, T0 + 5 * DAY);
    let lots: Vec<String> = m
        .expire_entries()
        .iter()
        .map(|e| e.detail.clone())
        .collect();
    let named = |n: u32| format!("expired:{}", loyalty_domain::Day(d + n).iso());
    assert_eq!(lots, [named(1), named(7), named(10), named(5)]);
    assert_eq!(
        m.state().points,
        1,
        "only the last on-time purchase's point is left"
    );
}
