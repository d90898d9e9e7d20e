//! Property and example tests of tier qualification over time (README "Tiers"): rolling
//! windows and calendar periods, downgrades at evaluations, grace periods, one tier at a
//! time, and `tier` ledger entries naming each move and its reason.

mod common;

use common::Member;
use loyalty_domain::{
    day_start, Day, EventId, LedgerKind, MemberCommand, Outcome, Program, PurchaseRecord,
    TierReason,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;

fn at(date: &str) -> i64 {
    day_start(Day::parse_iso(date).unwrap()).0 + 12 * 3_600_000
}

/// Bronze (0), Silver (100 €), Gold (300 €) on spend, with `qualification` merged in.
fn program(qualification: Value) -> Program {
    let mut q = json!({ "metric": "spend_cents" });
    for (k, v) in qualification.as_object().unwrap() {
        q[k] = v.clone();
    }
    serde_json::from_value(json!({
        "currency": "EUR",
        "points_per_unit": 1,
        "tier_qualification": q,
        "tiers": [
            { "name": "Bronze", "threshold": 0, "multiplier_pct": 100 },
            { "name": "Silver", "threshold": 10_000, "multiplier_pct": 100 },
            { "name": "Gold", "threshold": 30_000, "multiplier_pct": 100 }
        ],
    }))
    .expect("a valid program")
}

impl Member {
    /// A purchase, its event id and its record (what a refund of it needs).
    fn purchase_record(&mut self, cents: u64, when: i64) -> (EventId, PurchaseRecord) {
        let outcome = self.purchase(cents, when);
        let Some(Outcome::Purchase(record)) = outcome else {
            panic!("the purchase was refused: {outcome:?}");
        };
        (self.last_event(), record)
    }

    fn tier(&self) -> &str {
        &self.state().tier
    }

    /// The tier entries: (from, to, reason, UTC day of the entry).
    fn moves(&self) -> Vec<(String, String, TierReason)> {
        self.ledger
            .iter()
            .filter(|e| e.kind == LedgerKind::Tier)
            .map(|e| {
                let c = e.tier_change.as_ref().expect("a tier entry names its move");
                (c.from.clone(), c.to.clone(), c.reason)
            })
            .collect()
    }
}

fn rank(name: &str) -> usize {
    ["Bronze", "Silver", "Gold"]
        .iter()
        .position(|t| *t == name)
        .unwrap()
}

#[test]
fn a_calendar_year_keeps_the_tier_through_the_next_year_then_reviews_it() {
    let mut m = Member::enrolled(program(json!({"period": "year"})), at("2025-03-01"));
    m.purchase(35_000, at("2025-06-01"));
    assert_eq!(m.tier(), "Gold");
    // Nothing in 2026: Gold all through 2026, reviewed on 2027-01-01 on 2026's activity.
    m.advance_on_time(at("2026-12-31"));
    assert_eq!(
        m.tier(),
        "Gold",
        "the tier earned in 2025 is kept through 2026"
    );
    m.advance_on_time(at("2027-01-01"));
    assert_eq!(m.tier(), "Bronze", "2026 qualified for nothing");
    assert_eq!(
        m.moves(),
        vec![
            ("Bronze".into(), "Gold".into(), TierReason::Qualified),
            ("Gold".into(), "Bronze".into(), TierReason::PeriodEnd),
        ]
    );
}

#[test]
fn a_period_evaluation_judges_the_period_as_a_whole() {
    let mut m = Member::enrolled(program(json!({"period": "quarter"})), at("2026-01-05"));
    m.purchase(35_000, at("2026-02-01"));
    // Q2: 120 € over two purchases, Silver's threshold; Gold is reviewed on 2026-07-01.
    m.purchase(6_000, at("2026-04-10"));
    m.purchase(6_000, at("2026-06-20"));
    m.advance_on_time(at("2026-07-01"));
    assert_eq!(m.tier(), "Silver", "Q2's 120 € keeps Silver, not Gold");
    assert_eq!(m.moves().last().unwrap().2, TierReason::PeriodEnd);
    let status = loyalty_domain::MemberStatus::of(m.state(), &m.program);
    let next = status.next_tier.unwrap();
    assert_eq!(
        (next.name.as_str(), next.remaining),
        ("Gold", 30_000),
        "Q3 counts from 0"
    );
}

#[test]
fn one_tier_at_a_time_steps_down_once_per_period() {
    let p = program(json!({"period": "month", "one_tier_at_a_time": true}));
    let mut m = Member::enrolled(p, at("2026-01-05"));
    m.purchase(35_000, at("2026-01-10"));
    m.advance_on_time(at("2026-02-28"));
    assert_eq!(m.tier(), "Gold", "January's Gold is kept through February");
    m.advance_on_time(at("2026-03-01"));
    assert_eq!(m.tier(), "Silver", "one step at the end of February");
    m.advance_on_time(at("2026-03-31"));
    assert_eq!(m.tier(), "Silver");
    m.advance_on_time(at("2026-04-01"));
    assert_eq!(m.tier(), "Bronze");
}

#[test]
fn a_grace_period_delays_a_downgrade_and_qualifying_again_cancels_it() {
    let p = program(json!({"period": "month", "grace_days": 10}));
    let mut m = Member::enrolled(p.clone(), at("2026-01-05"));
    m.purchase(35_000, at("2026-01-10"));
    m.advance_on_time(at("2026-03-10"));
    assert_eq!(m.tier(), "Gold", "within the grace after February's review");
    let due = m
        .state()
        .tier_downgrade
        .clone()
        .expect("a downgrade is due");
    assert_eq!(
        (due.to.as_str(), due.on.iso().as_str()),
        ("Bronze", "2026-03-11")
    );
    m.advance_on_time(at("2026-03-11"));
    assert_eq!(m.tier(), "Bronze");
    assert_eq!(m.moves().last().unwrap().2, TierReason::GraceEnd);

    // The same, but the member spends Gold's threshold during the grace.
    let mut m = Member::enrolled(p, at("2026-01-05"));
    m.purchase(35_000, at("2026-01-10"));
    m.advance_on_time(at("2026-03-05"));
    m.purchase(30_000, at("2026-03-06"));
    m.advance_on_time(at("2026-05-01"));
    assert_eq!(
        m.tier(),
        "Gold",
        "re-qualified in March: kept through April"
    );
    assert_eq!(m.moves().len(), 1, "no downgrade happened: {:?}", m.moves());
}

#[test]
fn a_refund_takes_back_the_tier_its_purchase_gave_but_not_a_kept_one() {
    let mut m = Member::enrolled(program(json!({"period": "year"})), at("2025-03-01"));
    m.purchase(12_000, at("2025-06-01"));
    m.advance_on_time(at("2026-02-01"));
    assert_eq!(m.tier(), "Silver", "2025's Silver kept in 2026");
    let (big, record) = m.purchase_record(30_000, at("2026-02-02"));
    assert_eq!(m.tier(), "Gold");
    m.send(
        MemberCommand::Refund {
            purchase_event_id: big,
            amount: None,
            purchase: Some(record),
            purchase_unseen: false,
        },
        at("2026-02-03"),
    );
    assert_eq!(m.tier(), "Silver", "back to the kept tier, not below");
    assert_eq!(
        m.moves().last().unwrap(),
        &("Gold".into(), "Silver".into(), TierReason::Refund)
    );
}

/// A step of a member's life: a purchase after `gap` days, or the scheduler running.
#[derive(Clone, Debug)]
enum Step {
    Purchase { gap_days: i64, cents: u64 },
    Scheduler { gap_days: i64 },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0i64..60, 0u64..20_000).prop_map(|(gap_days, cents)| Step::Purchase { gap_days, cents }),
        1 => (0i64..200).prop_map(|gap_days| Step::Scheduler { gap_days }),
    ];
    prop::collection::vec(step, 1..25)
}

fn qualification() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            (1i64..120).prop_map(|w| json!({"window_days": w})),
            Just(json!({"period": "month"})),
            Just(json!({"period": "quarter"})),
            Just(json!({"period": "year"})),
        ],
        0i64..40,
        any::<bool>(),
    )
        .prop_map(|(mut q, grace, one)| {
            q["grace_days"] = json!(grace);
            q["one_tier_at_a_time"] = json!(one);
            q
        })
}

/// Runs `steps` from 2026-01-01, the scheduler on time (`on_time`) or never.
fn live(q: &Value, steps: &[Step], on_time: bool) -> Member {
    let mut now = at("2026-01-01");
    let mut m = Member::enrolled(program(q.clone()), now);
    for s in steps {
        match s {
            Step::Purchase { gap_days, cents } => {
                now += gap_days * DAY;
                if on_time {
                    m.advance_on_time(now);
                }
                m.purchase(*cents, now);
            }
            Step::Scheduler { gap_days } => {
                now += gap_days * DAY;
                if on_time {
                    m.advance_on_time(now);
                }
            }
        }
    }
    m.advance_on_time(now + 400 * DAY);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whether the scheduler ran on time or never (the member's next event doing its work),
    /// the tiers and their moves are the same: evaluations run in day order whoever runs them.
    #[test]
    fn the_tier_does_not_depend_on_when_the_scheduler_ran(q in qualification(), steps in steps()) {
        let on_time = live(&q, &steps, true);
        let late = live(&q, &steps, false);
        prop_assert_eq!(on_time.tier(), late.tier());
        prop_assert_eq!(on_time.moves(), late.moves());
        prop_assert_eq!(&on_time.state().tier_kept, &late.state().tier_kept);
    }

    /// Every `tier` entry moves 0 points from the tier the previous one reached; the last
    /// reaches the member's tier; moving up is a qualification; with one tier at a time a
    /// downgrade is one step; nothing is due once the member is in the first tier with
    /// nothing kept; advancing again changes nothing.
    #[test]
    fn tier_entries_chain_and_follow_the_rules(q in qualification(), steps in steps()) {
        let mut m = live(&q, &steps, true);
        let mut tier = "Bronze".to_owned();
        for e in m.ledger.iter().filter(|e| e.kind == LedgerKind::Tier) {
            prop_assert_eq!(e.points, 0);
            let c = e.tier_change.as_ref().unwrap();
            prop_assert_eq!(&c.from, &tier);
            prop_assert!(c.from != c.to);
            let up = rank(&c.to) > rank(&c.from);
            prop_assert_eq!(up, c.reason == TierReason::Qualified, "{:?}", c);
            if !up && q["one_tier_at_a_time"] == json!(true) && c.reason != TierReason::Refund {
                prop_assert_eq!(rank(&c.from) - rank(&c.to), 1, "{:?}", c);
            }
            tier = c.to.clone();
        }
        prop_assert_eq!(m.tier(), tier.as_str());
        let before = m.state().clone();
        let clock = before.clock.0;
        m.advance(clock);
        prop_assert_eq!(m.state(), &before, "advancing to the clock again changes nothing");
        if rank(m.tier()) == 0 && before.tier_kept.is_none() && before.tier_downgrade.is_none() {
            prop_assert!(before.next_tier_evaluation(&m.program, before.clock.day()).is_none());
        }
    }

    /// Tier evaluation is monotone in spend: the same life with every purchase at least as
    /// large ends in a tier at least as high, at every step.
    #[test]
    fn more_spend_never_gives_a_lower_tier(
        q in qualification(), steps in steps(), extra in prop::collection::vec(0u64..20_000, 25),
    ) {
        let more: Vec<Step> = steps
            .iter()
            .zip(&extra)
            .map(|(s, x)| match s {
                Step::Purchase { gap_days, cents } => Step::Purchase { gap_days: *gap_days, cents: cents + x },
                s => s.clone(),
            })
            .collect();
        for n in 1..=steps.len() {
            let a = live(&q, &steps[..n], true);
            let b = live(&q, &more[..n], true);
            prop_assert!(rank(b.tier()) >= rank(a.tier()), "{} < {} after {} steps", b.tier(), a.tier(), n);
        }
    }
}

#[test]
fn every_kind_of_qualification_reads_back_as_stored() {
    for q in [
        json!({"window_days": 30}),
        json!({"period": "month", "grace_days": 3}),
        json!({"period": "year", "one_tier_at_a_time": true}),
    ] {
        let p = program(q);
        let stored = serde_json::to_value(&p).unwrap();
        let back: Program =
            serde_json::from_value(stored.clone()).unwrap_or_else(|e| panic!("{stored}: {e}"));
        assert_eq!(back, p);
    }
}
