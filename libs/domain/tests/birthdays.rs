//! Property and example tests of the birthday reward (README "Birthdays"): once a year, only
//! inside the member's window in the franchise's time zone, never before the enrolment age,
//! whether the scheduler gives it or the member's next event does.

mod common;

use common::Member;
use loyalty_domain::birthday::BirthdayWindow;
use loyalty_domain::{Day, LedgerKind, MemberCommand, Program, RewardId, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;

fn program(birthday_reward: Value, time_zone: &str) -> Program {
    let mut p = serde_json::to_value(Program::demo()).unwrap();
    p["birthday_reward"] = birthday_reward;
    p["time_zone"] = json!(time_zone);
    serde_json::from_value(p).expect("a valid program")
}

fn utc(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

impl Member {
    /// The birthday entries: (year of the detail, entry time).
    fn birthdays(&self) -> Vec<(i32, Timestamp)> {
        self.ledger
            .iter()
            .filter(|e| e.kind == LedgerKind::Earn && e.detail.starts_with("birthday:"))
            .map(|e| (e.detail["birthday:".len()..].parse().unwrap(), e.at))
            .collect()
    }
}

#[test]
fn the_scheduler_gives_it_at_local_midnight_of_the_window() {
    // 17 April 2026 is a Friday: the week starts on Monday 13 April, at 00:00 in Tokyo
    // (15:00 UTC the day before).
    let p = program(json!({ "points": 100 }), "Asia/Tokyo");
    let mut m = Member::enrolled_with(p, Some("1990-04-17"), utc("2026-01-10T10:00:00Z"));
    let due = m.state().next_due(&m.program).unwrap();
    assert_eq!(due.0, utc("2026-04-12T15:00:00Z"));
    m.advance_on_time(utc("2026-04-12T14:59:00Z"));
    assert!(m.birthdays().is_empty(), "not before the window");
    m.advance_on_time(utc("2026-04-12T15:00:00Z"));
    assert_eq!(
        m.birthdays(),
        [(2026, Timestamp(utc("2026-04-12T15:00:00Z")))]
    );
    assert_eq!(m.state().points, 150, "the signup bonus and the birthday's");
    // Next year's is due next, and only once.
    let next = m.state().next_due(&m.program).unwrap();
    assert!(next.0 > utc("2027-01-01T00:00:00Z"), "{next:?}");
    m.purchase(500, utc("2026-04-14T03:00:00Z"))
        .expect("the purchase is applied");
    assert_eq!(m.birthdays().len(), 1);
}

#[test]
fn a_voucher_a_month_window_and_the_enrolment_age() {
    let mut catalogue = serde_json::to_value(Program::demo()).unwrap();
    catalogue["birthday_reward"] =
        json!({ "reward_id": "free-coffee", "window": "month", "min_days_enrolled": 30 });
    let p: Program = serde_json::from_value(catalogue).unwrap();
    // Enrolled on 20 May with a May birthday: too recent this year; next year on 1 May.
    let mut m = Member::enrolled_with(p, Some("1985-05-25"), utc("2026-05-20T09:00:00Z"));
    m.advance_on_time(utc("2026-12-31T00:00:00Z"));
    assert!(
        m.state().vouchers.is_empty(),
        "enrolled under 30 days in May 2026"
    );
    m.advance_on_time(utc("2027-05-01T00:00:00Z"));
    let coffee = RewardId::parse("free-coffee").unwrap();
    assert_eq!(m.state().vouchers.get(&coffee), Some(&1));
    assert_eq!(m.state().birthday_rewarded, Some(2027));
    assert!(m.birthdays().is_empty(), "a voucher alone moves no points");
}

#[test]
fn bad_settings_are_refused_with_their_field() {
    for (reward, field) in [
        (json!({}), "needs points, a reward_id"),
        (json!({ "points": 0 }), "needs points, a reward_id"),
        (json!({ "points": -1 }), "birthday_reward.points"),
        (
            json!({ "reward_id": "caviar" }),
            "birthday_reward.reward_id",
        ),
        (
            json!({ "points": 5, "min_days_enrolled": -1 }),
            "birthday_reward.min_days_enrolled",
        ),
    ] {
        let mut p = serde_json::to_value(Program::demo()).unwrap();
        p["birthday_reward"] = reward.clone();
        let e = serde_json::from_value::<Program>(p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{reward}: {e}");
    }
}

#[test]
fn a_program_with_a_birthday_reward_reads_back_as_stored() {
    for reward in [
        json!({ "points": 5 }),
        json!({ "reward_id": "free-coffee", "window": "day" }),
    ] {
        let p = program(reward, "Europe/Paris");
        let stored = serde_json::to_value(&p).unwrap();
        let back: Program =
            serde_json::from_value(stored.clone()).unwrap_or_else(|e| panic!("{stored}: {e}"));
        assert_eq!(back, p);
    }
}

#[test]
fn an_erased_member_gets_nothing() {
    let p = program(json!({ "points": 100, "window": "day" }), "UTC");
    let mut m = Member::enrolled_with(p, Some("1990-03-03"), utc("2026-01-10T10:00:00Z"));
    m.send(MemberCommand::Erase, utc("2026-02-01T10:00:00Z"))
        .expect("the erasure is applied");
    assert_eq!(m.state().next_due(&m.program), None);
}

fn window() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("day"), Just("week"), Just("month")]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over three years of a member's life, with purchases at random times and the scheduler
    /// on time or never: at most one reward per birthday year, each inside that year's window
    /// (local days) and not before the enrolment age; with the scheduler on time, exactly one
    /// for every window the member was eligible in.
    #[test]
    fn once_a_year_inside_the_window(
        month in 1u32..=12, day in 1u32..=31, w in window(), min_days in 0i64..60,
        zone in prop_oneof![Just("UTC"), Just("Asia/Tokyo"), Just("America/New_York")],
        gaps in prop::collection::vec(1i64..90, 0..20), on_time in any::<bool>(),
    ) {
        let day = day.min(28);
        let p = program(json!({ "points": 10, "window": w, "min_days_enrolled": min_days }), zone);
        let start = utc("2025-06-15T12:00:00Z");
        let birthday = format!("1990-{month:02}-{day:02}");
        let mut m = Member::enrolled_with(p.clone(), Some(&birthday), start);
        let mut now = start;
        for g in &gaps {
            now += g * DAY;
            if on_time {
                m.advance_on_time(now);
            }
            m.purchase(500, now).expect("the purchase is applied");
        }
        // Three years, or up to the last purchase when the gaps add up to more (up to 19 x 89
        // days, into 2030).
        let end = (start + 3 * 365 * DAY).max(now);
        if on_time {
            m.advance_on_time(end);
        }
        let window: BirthdayWindow = serde_json::from_value(json!(w)).unwrap();
        let eligible = Day(p.local_day(Timestamp(start)).0 + min_days as u32);
        let got = m.birthdays();
        let mut years: Vec<i32> = got.iter().map(|(y, _)| *y).collect();
        years.dedup();
        prop_assert_eq!(years.len(), got.len(), "once a year: {:?}", got);
        for (year, at) in &got {
            let (first, last) = window.around(*year, (month, day)).unwrap();
            let local = p.local_day(*at);
            prop_assert!(first <= local && local <= last, "{year}: {local:?} outside {first:?}..{last:?}");
            prop_assert!(local >= eligible, "before the enrolment age");
        }
        if on_time {
            let end_day = p.local_day(Timestamp(end));
            let expected: Vec<i32> = (2025..=2030)
                .filter(|y| {
                    let (first, last) = window.around(*y, (month, day)).unwrap();
                    first.max(eligible) <= last && first.max(eligible) <= end_day
                        && last >= p.local_day(Timestamp(start))
                })
                .collect();
            prop_assert_eq!(years, expected);
        }
    }
}
