//! Property and example tests of segments (README "Segments"): each built-in rule against a
//! model computed from the purchases sent, at-risk and lapsed never together, membership a
//! function of (state, program, day) only, what a member is counted in always what it is in,
//! the scheduler's due time being exactly the next change, the program's validation, and the
//! masking of exported phone numbers.

mod common;

use std::collections::BTreeMap;

use loyalty_domain::segments::{mask_phone, next_change, segments_of, AT_RISK, LAPSED, LOYAL, NEW};
use loyalty_domain::{Applied, Day, MemberCommand, MemberState, MemberStatus, Program, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;
/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

fn program_json(segments: Value) -> Value {
    json!({
        "currency": "EUR", "points_per_unit": 1, "signup_bonus": 0,
        "tier_qualification": { "metric": "spend_cents", "window_days": 30 },
        "tiers": [
            { "name": "Bronze", "threshold": 0, "multiplier_pct": 100 },
            { "name": "Gold", "threshold": 1_000_000, "multiplier_pct": 100 }
        ],
        "rewards": [],
        "segments": segments,
    })
}

fn program(segments: Value) -> Program {
    serde_json::from_value(program_json(segments)).expect("a valid program")
}

/// Thresholds small enough for generated histories to cross them; no top tier rule.
fn rules(new_days: u32, min_visits: u32, window: u32, regular: u32, at_risk: u32) -> Program {
    let p = rules_json(new_days, min_visits, window, regular, at_risk);
    serde_json::from_value(p).expect("a valid program")
}

fn rules_json(new_days: u32, min_visits: u32, window: u32, regular: u32, at_risk: u32) -> Value {
    program_json(json!({
        "new_days": new_days,
        "loyal": { "min_visits": min_visits, "window_days": window, "top_tier": false },
        "regular_min_visits": regular,
        "at_risk_days": at_risk,
        "lapsed_days": at_risk + 30,
        "custom": [
            { "name": "big", "min_spend_cents": 5_000 },
            { "name": "recent", "last_visit_within_days": 7 },
            { "name": "away", "no_visit_for_days": 45 }
        ]
    }))
}

/// One member driven as the engine drives its actor; every change of segments it reports is
/// added to `counts`, as the dashboards add them.
struct Member {
    inner: common::Member,
    counts: BTreeMap<String, i64>,
    purchases: Vec<(i64, u64)>,
}

impl std::ops::Deref for Member {
    type Target = common::Member;
    fn deref(&self) -> &common::Member {
        &self.inner
    }
}

impl Member {
    fn enrolled(program: Program, at: i64) -> Member {
        let mut m = Member {
            inner: common::Member::new(program),
            counts: BTreeMap::new(),
            purchases: Vec::new(),
        };
        m.send(common::enrolment(None), at);
        m
    }

    fn send(&mut self, cmd: MemberCommand, at: i64) -> Option<Applied> {
        let applied = self.inner.apply(cmd, at).ok()?;
        if let Some(m) = &applied.segments {
            for s in &m.left {
                *self.counts.entry(s.clone()).or_default() -= 1;
            }
            for s in &m.joined {
                *self.counts.entry(s.clone()).or_default() += 1;
            }
        }
        Some(applied)
    }

    fn purchase(&mut self, cents: u64, at: i64) {
        if self.send(common::purchase(cents), at).is_some() {
            self.purchases.push((at, cents));
        }
    }

    fn today(&self) -> Day {
        self.program.local_day(self.state().clock)
    }
}

/// The built-in rules and the custom filters computed directly from what was sent
/// (enrolment at `T0`, the purchases), on the local day `today`.
fn model(m: &Member, today: Day) -> Vec<String> {
    let p = &m.program;
    let s = p.segments.as_ref().unwrap();
    let day = |t: i64| p.local_day(Timestamp(t)).0;
    let enrolled = day(T0);
    let days: Vec<u32> = m.purchases.iter().map(|(t, _)| day(*t)).collect();
    let last = days.iter().max().copied();
    let away = today.0 - last.unwrap_or(enrolled);
    let in_window = days
        .iter()
        .filter(|d| **d + s.loyal.window_days > today.0 && **d <= today.0)
        .count();
    let spend: u64 = m.purchases.iter().map(|(_, c)| c).sum();
    let mut out = Vec::new();
    if today.0 - enrolled < s.new_days {
        out.push(NEW.to_owned());
    }
    if in_window >= s.loyal.min_visits as usize {
        out.push(LOYAL.to_owned());
    }
    if away >= s.lapsed_days {
        out.push(LAPSED.to_owned());
    } else if away >= s.at_risk_days && days.len() as u64 >= s.regular_min_visits {
        out.push(AT_RISK.to_owned());
    }
    if spend >= 5_000 {
        out.push("big".to_owned());
    }
    if last.is_some() && away < 7 {
        out.push("recent".to_owned());
    }
    if away >= 45 {
        out.push("away".to_owned());
    }
    out
}

/// A step: a purchase after `gap` hours, or the scheduler's advance to the due time.
#[derive(Clone, Debug)]
enum Step {
    Purchase { gap_hours: i64, cents: u64 },
    AdvanceToDue,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0i64..24 * 40, 100u64..3_000).prop_map(|(gap_hours, cents)| Step::Purchase { gap_hours, cents }),
        2 => Just(Step::AdvanceToDue),
    ];
    prop::collection::vec(step, 1..40)
}

fn rules_strategy() -> impl Strategy<Value = Program> {
    (1u32..60, 1u32..6, 1u32..60, 1u32..5, 1u32..90)
        .prop_map(|(n, v, w, r, a)| rules(n, v, w, r, a))
}

/// Runs `steps`, checking after each what every property below checks.
fn run(program: Program, steps: &[Step]) -> Result<Member, TestCaseError> {
    let mut m = Member::enrolled(program, T0);
    let mut now = T0;
    for step in steps {
        match step {
            Step::Purchase { gap_hours, cents } => {
                now += gap_hours * 3_600_000;
                m.purchase(*cents, now);
            }
            Step::AdvanceToDue => {
                if let Some(due) = m.state().next_due(&m.program) {
                    prop_assert!(due > m.state().clock, "due {:?} not after the clock", due);
                    now = now.max(due.0);
                    m.send(MemberCommand::Advance, due.0);
                }
            }
        }
        let today = m.today();
        let got = segments_of(m.state(), &m.program, today);
        prop_assert_eq!(&got, &model(&m, today), "on day {}", today.0);
        prop_assert_eq!(&m.state().segments, &got, "counted in what it is in");
        prop_assert_eq!(&MemberStatus::of(m.state(), &m.program).segments, &got);
    }
    Ok(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every rule (new, loyal by visits, at-risk, lapsed, each custom filter) is what the
    /// model computes from the purchases sent, after every event and every advance.
    #[test]
    fn each_rule_is_its_definition(p in rules_strategy(), steps in steps()) {
        run(p, &steps)?;
    }

    /// At-risk and lapsed never overlap, on any day.
    #[test]
    fn at_risk_and_lapsed_are_exclusive(p in rules_strategy(), steps in steps(), later in 0u32..400) {
        let m = run(p, &steps)?;
        let day = Day(m.today().0 + later);
        let s = segments_of(m.state(), &m.program, day);
        prop_assert!(!(s.iter().any(|x| x == AT_RISK) && s.iter().any(|x| x == LAPSED)), "{:?}", s);
    }

    /// Membership is a function of (state, program, day): a state read back from its JSON
    /// (as the store keeps it) is in the same segments on every day.
    #[test]
    fn membership_depends_only_on_state_program_and_day(p in rules_strategy(), steps in steps(), later in 0u32..400) {
        let m = run(p, &steps)?;
        let day = Day(m.today().0 + later);
        let stored: MemberState = serde_json::from_value(serde_json::to_value(m.state()).unwrap()).unwrap();
        prop_assert_eq!(segments_of(&stored, &m.program, day), segments_of(m.state(), &m.program, day));
    }

    /// The changes a member reports add up to the segments it is in: the dashboards' sizes
    /// (sums of the changes) count each member once in each of its segments.
    #[test]
    fn reported_changes_add_up_to_the_segments(p in rules_strategy(), steps in steps()) {
        let m = run(p, &steps)?;
        let mut want: BTreeMap<String, i64> = m.state().segments.iter().map(|s| (s.clone(), 1)).collect();
        let mut got = m.counts.clone();
        got.retain(|_, n| *n != 0);
        want.retain(|_, n| *n != 0);
        prop_assert_eq!(got, want);
    }

    /// Nothing changes before the due time, and the advance at the due time moves exactly
    /// the segments of that day; advancing again changes nothing.
    #[test]
    fn the_due_time_is_the_next_change(p in rules_strategy(), steps in steps()) {
        let mut m = run(p, &steps)?;
        let before = m.state().clone();
        let today = m.today();
        let now = segments_of(&before, &m.program, today);
        let change = next_change(&before, &m.program, today);
        let horizon = change.map_or(today.0 + 400, |d| d.0);
        for d in today.0..horizon {
            prop_assert_eq!(&segments_of(&before, &m.program, Day(d)), &now, "day {} before the change", d);
        }
        if let Some(due) = before.next_due(&m.program) {
            prop_assert!(due > before.clock);
            m.send(MemberCommand::Advance, due.0);
            let due_day = m.program.local_day(due);
            prop_assert_eq!(&m.state().segments, &segments_of(&before, &m.program, due_day));
            let again = m.send(MemberCommand::Advance, due.0).unwrap();
            prop_assert!(!again.changed && again.segments.is_none());
        }
    }
}

#[test]
fn a_top_tier_member_is_loyal_unless_the_program_says_otherwise() {
    let p = program(json!({}));
    let mut m = Member::enrolled(p, T0);
    m.purchase(1_000_000, T0 + DAY);
    assert_eq!(m.state().tier, "Gold");
    assert_eq!(m.state().segments, [NEW, LOYAL]);
    let off = program(json!({ "loyal": { "top_tier": false } }));
    assert_eq!(segments_of(m.state(), &off, m.today()), [NEW]);
}

#[test]
fn defaults_are_documented_ones() {
    let p = program(json!({}));
    let s = p.segments.as_ref().unwrap();
    assert_eq!(
        (
            s.new_days,
            s.loyal.min_visits,
            s.loyal.window_days,
            s.loyal.top_tier
        ),
        (30, 5, 90, true)
    );
    assert_eq!(
        (s.regular_min_visits, s.at_risk_days, s.lapsed_days),
        (2, 60, 90)
    );
    assert!(s.custom.is_empty());
}

#[test]
fn a_program_without_segments_has_none_and_nothing_due_for_them() {
    let mut p = program_json(json!(null));
    p.as_object_mut().unwrap().remove("segments");
    let p: Program = serde_json::from_value(p).unwrap();
    let mut m = Member::enrolled(p, T0);
    m.purchase(500, T0);
    assert!(m.state().segments.is_empty());
    assert_eq!(m.state().next_due(&m.program), None);
    let v = serde_json::to_value(&m.program).unwrap();
    assert!(
        v.get("segments").is_none(),
        "left out of the program's JSON"
    );
}

#[test]
fn a_program_with_segments_reads_back_as_written() {
    let p = rules(10, 3, 30, 2, 60);
    let v = serde_json::to_value(&p).unwrap();
    let again: Program = serde_json::from_value(v).unwrap();
    assert_eq!(again, p);
}

#[test]
fn an_erased_member_leaves_its_segments() {
    let mut m = Member::enrolled(program(json!({})), T0);
    assert_eq!(m.state().segments, [NEW]);
    let a = m.send(MemberCommand::Erase, T0 + 1).unwrap();
    assert_eq!(a.segments.unwrap().left, [NEW]);
    assert!(m.state().segments.is_empty());
    assert_eq!(m.counts.get(NEW), Some(&0));
}

#[test]
fn a_regular_becomes_at_risk_then_lapsed_by_the_scheduler_alone() {
    let mut m = Member::enrolled(program(json!({})), T0);
    m.purchase(500, T0 + DAY);
    m.purchase(500, T0 + 2 * DAY);
    let mut seen = Vec::new();
    while let Some(due) = m.state().next_due(&m.program) {
        m.send(MemberCommand::Advance, due.0);
        seen.push((
            m.today().0 - Timestamp(T0 + 2 * DAY).day().0,
            m.state().segments.clone(),
        ));
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        seen,
        [(28, s(&[])), (60, s(&[AT_RISK])), (90, s(&[LAPSED]))],
        "new ends 30 days after enrolment, at-risk at 60 days away, lapsed at 90"
    );
}

fn refused(segments: Value) -> String {
    serde_json::from_value::<Program>(program_json(segments))
        .unwrap_err()
        .to_string()
}

#[test]
fn invalid_sections_are_refused_with_their_field() {
    let cases = [
        (
            json!({ "new_days": 0 }),
            "segments.new_days must be between 1 and 3650",
        ),
        (
            json!({ "at_risk_days": 90, "lapsed_days": 60 }),
            "segments.lapsed_days (60) must be above",
        ),
        (
            json!({ "loyal": { "window_days": 5000 } }),
            "segments.loyal.window_days must be between 1 and 1096",
        ),
        (
            json!({ "custom": [{ "name": "new", "min_visits": 1 }] }),
            "is a built-in segment",
        ),
        (
            json!({ "custom": [{ "name": "a", "min_visits": 1 }, { "name": "a", "max_visits": 2 }] }),
            "appears twice",
        ),
        (
            json!({ "custom": [{ "name": "Big Spenders", "min_visits": 1 }] }),
            "segments.custom[0].name must be",
        ),
        (json!({ "custom": [{ "name": "x" }] }), "sets no condition"),
        (
            json!({ "custom": [{ "name": "x", "tiers": ["Platinum"] }] }),
            "names no tier of the program",
        ),
        (
            json!({ "custom": [{ "name": "x", "min_visits": 5, "max_visits": 2 }] }),
            "min_visits (5) is above max_visits (2)",
        ),
        (
            json!({ "custom": [{ "name": "x", "stores": ["bad id!"] }] }),
            "invalid store id",
        ),
        (json!({ "unknown": 1 }), "unknown field"),
    ];
    for (section, want) in cases {
        let e = refused(section.clone());
        assert!(e.contains(want), "{section}: {e}");
    }
    let many: Vec<Value> = (0..33)
        .map(|i| json!({ "name": format!("s{i}"), "min_visits": 1 }))
        .collect();
    assert!(refused(json!({ "custom": many })).contains("at most 32"));
}

#[test]
fn custom_filters_on_tier_and_store() {
    let p = program(json!({ "custom": [
        { "name": "gold", "tiers": ["Gold"] },
        { "name": "at-s2", "stores": ["s-2"] },
        { "name": "at-s1", "stores": ["s-1"], "max_visits": 0 }
    ]}));
    let m = Member::enrolled(p, T0);
    // Enrolled at s-1, no visit yet.
    assert_eq!(m.state().segments, [NEW, "at-s1"]);
}

proptest! {
    /// A masked phone keeps its length, its first 3 and last 2 characters, and hides the rest.
    #[test]
    fn a_masked_phone_hides_all_but_its_ends(digits in "[0-9]{6,14}") {
        let phone = format!("+{digits}");
        let masked = mask_phone(&phone);
        let n = phone.len();
        prop_assert_eq!(masked.len(), n);
        prop_assert_eq!(&masked[..3], &phone[..3]);
        prop_assert_eq!(&masked[n - 2..], &phone[n - 2..]);
        prop_assert!(masked[3..n - 2].chars().all(|c| c == '*'));
    }
}

#[test]
fn a_short_phone_is_masked_whole() {
    assert_eq!(mask_phone("+3312"), "*****");
    assert_eq!(mask_phone("+33612345678"), "+33*******78");
}

proptest! {
    /// The due time of a local day is its first quarter of an hour in the program's zone: on
    /// that local day, and the quarter before it on an earlier one (offsets of half and three
    /// quarters of an hour, and days with a DST change, included).
    #[test]
    fn a_local_day_starts_at_its_due_time(
        day in 18_000u32..22_000,
        zone in prop::sample::select(vec!["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "Australia/Lord_Howe"]),
    ) {
        let z = loyalty_domain::Zone::parse(zone).unwrap();
        let t = z.start_of(Day(day));
        prop_assert_eq!(z.day(t), Day(day));
        prop_assert!(z.day(Timestamp(t.0 - 15 * 60 * 1000)) < Day(day));
    }

    /// In zones far from UTC (and with half-hour offsets), each rule is its definition on
    /// local days, and the scheduler's due times stay after the clock.
    #[test]
    fn each_rule_holds_on_local_days_far_from_utc(
        steps in steps(),
        zone in prop::sample::select(vec!["Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Kolkata"]),
    ) {
        let mut p = rules_json(3, 2, 4, 2, 5);
        p["time_zone"] = json!(zone);
        run(serde_json::from_value(p).unwrap(), &steps)?;
    }
}
