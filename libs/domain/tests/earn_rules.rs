//! The earn rules of a program (README "The loyalty program"): the rounding mode, the minimum
//! basket and the multipliers by schedule, which multiply with the tier multiplier (the best
//! matching schedule only). Example tests first, then property tests.

use loyalty_domain::{
    apply, Applied, Cents, Day, EventContext, EventId, FranchiseId, LedgerKind, MemberCommand,
    MemberId, MemberState, Outcome, Phone, Profile, Program, Rejection, Rounding, StoreId,
    Timestamp,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// The demo program's JSON (1 point per euro, Bronze ×1 / Silver ×1.5 / Gold ×2 on spend)
/// with `extra` fields set.
fn program(extra: Value) -> Result<Program, String> {
    let mut p = serde_json::to_value(Program::demo()).unwrap();
    for k in ["rounding", "min_basket_cents", "bonus_multipliers"] {
        p.as_object_mut().unwrap().remove(k);
    }
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    serde_json::from_value(p).map_err(|e| e.to_string())
}

fn valid(extra: Value) -> Program {
    program(extra).unwrap_or_else(|e| panic!("valid program: {e}"))
}

/// `y-m-d h:min` UTC.
fn at(y: i32, m: u32, d: u32, h: i64, min: i64) -> Timestamp {
    let day = Day::from_ymd(y, m, d).unwrap();
    Timestamp(day.0 as i64 * DAY + h * HOUR + min * 60_000)
}

fn store(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

/// One member's purchases through [`apply`], as the engine applies them.
struct Member<'p> {
    program: &'p Program,
    state: Option<MemberState>,
    next: u32,
}

impl<'p> Member<'p> {
    fn enrolled(program: &'p Program, when: Timestamp) -> Member<'p> {
        let mut m = Member {
            program,
            state: None,
            next: 0,
        };
        let profile = Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: None,
            birthday: None,
            consent: Default::default(),
            email: None,
        };
        m.send(when, "s-1", MemberCommand::Enrol { profile })
            .unwrap();
        m
    }

    fn send(
        &mut self,
        when: Timestamp,
        store_id: &str,
        cmd: MemberCommand,
    ) -> Result<Applied, Rejection> {
        self.next += 1;
        let id = EventId::parse(&format!("e-{}", self.next)).unwrap();
        let store_id = store(store_id);
        let ctx = EventContext {
            event_id: &id,
            store_id: &store_id,
            at: when,
            program: self.program,
            program_version: 1,
        };
        apply(
            &mut self.state,
            &MemberId::parse("m-1").unwrap(),
            &FranchiseId::parse("f-1").unwrap(),
            &cmd,
            &ctx,
        )
    }

    /// A purchase of `cents`: the applied effect and the points it earned.
    fn buy(&mut self, when: Timestamp, store_id: &str, cents: u64) -> (Applied, u64) {
        let cmd = MemberCommand::Purchase {
            amount: Cents::new(cents as i64).unwrap(),
            currency: self.program.currency.clone(),
            items: Vec::new(),
        };
        let applied = self
            .send(when, store_id, cmd)
            .expect("a purchase is accepted");
        let Outcome::Purchase(r) = &applied.outcome else {
            panic!("a purchase's outcome")
        };
        let earned = r.points_earned;
        (applied, earned)
    }

    fn state(&self) -> &MemberState {
        self.state.as_ref().unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------------

#[test]
fn rounding_modes_round_a_fraction_of_a_point() {
    let bronze = 0;
    for (rounding, cents, points) in [
        ("floor", 250, 2),
        ("nearest", 250, 3),
        ("up", 250, 3),
        ("floor", 249, 2),
        ("nearest", 249, 2),
        ("up", 201, 3),
        ("up", 200, 2),
        ("nearest", 200, 2),
        ("up", 0, 0),
        ("nearest", 49, 0),
        ("nearest", 50, 1),
        ("up", 1, 1),
    ] {
        let p = valid(json!({ "rounding": rounding }));
        assert_eq!(p.points_for(cents, bronze), points, "{rounding} of {cents}");
    }
    // Silver (×1.5): 3.33 € is 4.995 points.
    for (rounding, points) in [("floor", 4), ("nearest", 5), ("up", 5)] {
        let p = valid(json!({ "rounding": rounding }));
        assert_eq!(p.points_for(333, 1), points, "{rounding}");
    }
    assert_eq!(
        valid(json!({})).rounding,
        Rounding::Floor,
        "floor by default"
    );
}

#[test]
fn below_the_minimum_basket_no_points_but_still_a_visit_and_a_stamp() {
    let p = valid(json!({ "min_basket_cents": 500 }));
    let t = at(2026, 3, 2, 10, 0);
    let mut m = Member::enrolled(&p, t);
    let balance = m.state().points;
    let (applied, earned) = m.buy(t, "s-1", 499);
    assert_eq!(earned, 0);
    assert!(applied.entries.iter().all(|e| e.kind != LedgerKind::Earn));
    assert_eq!(m.state().points, balance);
    assert_eq!(m.state().visits, 1, "still a visit");
    assert_eq!(m.state().stamps, 1, "still a stamp");
    assert_eq!(m.state().spend_cents, 499, "still spend for the tiers");
    let (_, earned) = m.buy(t, "s-1", 500);
    assert_eq!(earned, 5, "at the minimum, the normal rule");
}

/// "Double points on Tuesdays" in Paris, and a happy hour at one store.
fn paris_bonuses() -> Program {
    valid(json!({
        "time_zone": "Europe/Paris",
        "bonus_multipliers": [
            { "name": "Double Tuesday", "multiplier_pct": 200, "days_of_week": ["tuesday"] },
            { "name": "Happy hour", "multiplier_pct": 300, "from_time": "15:00",
              "to_time": "17:00", "stores": ["s-lyon"] },
            { "name": "Summer", "multiplier_pct": 150, "from_date": "2026-07-01",
              "to_date": "2026-08-31" },
        ],
    }))
}

#[test]
fn schedules_follow_the_local_day_time_and_store() {
    let p = paris_bonuses();
    let paris = store("s-paris");
    let lyon = store("s-lyon");
    // 2026-03-03 is a Tuesday; Paris is UTC+1 in March.
    assert_eq!(p.bonus_pct(at(2026, 3, 3, 10, 0), &paris), 200);
    // Monday 23:30 UTC is Tuesday 00:30 in Paris; Tuesday 23:30 UTC is Wednesday.
    assert_eq!(p.bonus_pct(at(2026, 3, 2, 23, 30), &paris), 200);
    assert_eq!(p.bonus_pct(at(2026, 3, 3, 23, 30), &paris), 100);
    // Happy hour 15:00 to 17:00 local (14:00 to 16:00 UTC), at Lyon only, end excluded.
    assert_eq!(p.bonus_pct(at(2026, 3, 4, 14, 0), &lyon), 300);
    assert_eq!(p.bonus_pct(at(2026, 3, 4, 15, 59), &lyon), 300);
    assert_eq!(p.bonus_pct(at(2026, 3, 4, 16, 0), &lyon), 100);
    assert_eq!(p.bonus_pct(at(2026, 3, 4, 13, 59), &lyon), 100);
    assert_eq!(p.bonus_pct(at(2026, 3, 4, 14, 30), &paris), 100);
    // A Tuesday's happy hour at Lyon: the best one (300), not both.
    assert_eq!(p.bonus_pct(at(2026, 3, 3, 14, 30), &lyon), 300);
    // The summer, dates inclusive, local: 2026-06-30 22:30 UTC is July 1st in Paris (UTC+2).
    assert_eq!(p.bonus_pct(at(2026, 6, 30, 22, 30), &paris), 150);
    // An hour before, still Tuesday June 30th in Paris: double Tuesday, not the summer.
    assert_eq!(p.bonus_pct(at(2026, 6, 30, 21, 30), &paris), 200);
    assert_eq!(p.bonus_pct(at(2026, 8, 31, 21, 59), &paris), 150);
    // Midnight on September 1st (a Tuesday) in Paris: the summer is over, double Tuesday.
    assert_eq!(p.bonus_pct(at(2026, 8, 31, 22, 0), &paris), 200);
    assert_eq!(p.bonus_pct(at(2026, 9, 1, 22, 0), &paris), 100);
    // 2026-07-07 is a Tuesday of the summer: the best is 200.
    assert_eq!(p.bonus_pct(at(2026, 7, 7, 10, 0), &paris), 200);
}

#[test]
fn the_schedule_multiplies_the_tier_multiplier() {
    let p = paris_bonuses();
    let paris = store("s-paris");
    let tuesday = at(2026, 3, 3, 10, 0);
    let wednesday = at(2026, 3, 4, 10, 0);
    // 10 € at Bronze (×1), Silver (×1.5), Gold (×2); on a Tuesday ×2 more.
    for (tier, plain, doubled) in [(0, 10, 20), (1, 15, 30), (2, 20, 40)] {
        assert_eq!(p.purchase_points(1_000, tier, wednesday, &paris), plain);
        assert_eq!(p.purchase_points(1_000, tier, tuesday, &paris), doubled);
    }
    // Gold at the happy hour: 10 € × 2 × 3 = 60 points; rounding after both multipliers:
    // 3.33 € at Silver on a summer Tuesday... 3.33 × 1.5 × 2 = 9.99 points.
    let lyon = store("s-lyon");
    assert_eq!(
        p.purchase_points(1_000, 2, at(2026, 3, 4, 14, 0), &lyon),
        60
    );
    assert_eq!(p.purchase_points(333, 1, tuesday, &paris), 9);
    let mut up = p.clone();
    up.rounding = Rounding::Up;
    assert_eq!(up.purchase_points(333, 1, tuesday, &paris), 10);
    // The minimum basket is judged on the amount, before any multiplier.
    let mut min = p.clone();
    min.min_basket_cents = 1_001;
    assert_eq!(min.purchase_points(1_000, 2, tuesday, &paris), 0);
    // Through the member: a Tuesday purchase at Bronze earns double, in the ledger.
    let mut m = Member::enrolled(&p, wednesday);
    let (applied, earned) = m.buy(Timestamp(tuesday.0 + 7 * DAY), "s-paris", 1_234);
    assert_eq!(earned, 24);
    let earn = applied
        .entries
        .iter()
        .find(|e| e.kind == LedgerKind::Earn)
        .unwrap();
    assert_eq!((earn.points, earn.detail.as_str()), (24, "purchase"));
}

#[test]
fn schedules_are_validated_with_clear_messages() {
    let bonus = |fields: Value| {
        let mut b = json!({ "name": "B", "multiplier_pct": 200 });
        for (k, v) in fields.as_object().unwrap() {
            b[k] = v.clone();
        }
        program(json!({ "bonus_multipliers": [b] }))
    };
    for (fields, message) in [
        (
            json!({ "from_date": "2026-03-02", "to_date": "2026-03-01" }),
            "bonus_multipliers[0].from_date (2026-03-02) is after bonus_multipliers[0].to_date",
        ),
        (
            json!({ "from_time": "17:00", "to_time": "15:00" }),
            "bonus_multipliers[0].from_time must be before bonus_multipliers[0].to_time",
        ),
        (
            json!({ "from_time": "15:00", "to_time": "15:00" }),
            "must be before",
        ),
        (json!({ "from_time": "24:00" }), "HH:MM (00:00 to 23:59)"),
        (
            json!({ "to_time": "9:00" }),
            "bonus_multipliers[0].to_time must be",
        ),
        (json!({ "to_time": "24:01" }), "HH:MM (00:00 to 24:00)"),
        (
            json!({ "from_date": "2026-02-30" }),
            "local date YYYY-MM-DD",
        ),
        (json!({ "days_of_week": [] }), "must list 1 to 7 days"),
        (json!({ "days_of_week": ["funday"] }), "unknown variant"),
        (json!({ "stores": [] }), "store ids"),
        (json!({ "stores": ["not a store"] }), "invalid store id"),
        (json!({ "multiplier_pct": 10_001 }), "between 0 and 10000"),
        (json!({ "multiplier_pct": -1 }), "between 0 and 10000"),
        (json!({ "name": " " }), "bonus_multipliers[0].name must be"),
        (json!({ "every": "day" }), "unknown field"),
    ] {
        let e = bonus(fields.clone()).unwrap_err();
        assert!(e.contains(message), "{fields}: {e}");
    }
    assert!(bonus(json!({ "from_time": "00:00", "to_time": "24:00" })).is_ok());
    assert!(bonus(json!({ "from_date": "2026-03-01", "to_date": "2026-03-01" })).is_ok());
    let twice = json!({ "name": "B", "multiplier_pct": 200 });
    let e = program(json!({ "bonus_multipliers": [twice, twice] })).unwrap_err();
    assert!(e.contains("appears twice"), "{e}");
    let many: Vec<Value> = (0..33)
        .map(|i| json!({ "name": format!("B{i}"), "multiplier_pct": 200 }))
        .collect();
    let e = program(json!({ "bonus_multipliers": many })).unwrap_err();
    assert!(e.contains("at most 32 bonus_multipliers"), "{e}");
    for (field, v, message) in [
        ("rounding", json!("ceiling"), "unknown variant"),
        (
            "min_basket_cents",
            json!(-1),
            "min_basket_cents must be between 0",
        ),
        (
            "min_basket_cents",
            json!(1_000_000_000_001i64),
            "min_basket_cents must be",
        ),
    ] {
        let e = program(json!({ field: v })).unwrap_err();
        assert!(e.contains(message), "{field}: {e}");
    }
}

/// A program as stored before these rules existed: no `rounding`, `min_basket_cents` or
/// `bonus_multipliers`. It still loads, with the defaults, and earns as before.
#[test]
fn an_old_program_still_loads_and_earns_as_before() {
    let old = r#"{"currency":"EUR","points_per_unit":1,"signup_bonus":50,
        "stamp_card":{"size":10,"reward_id":"free-coffee"},
        "tier_qualification":{"metric":"spend_cents","window_days":365},
        "tiers":[{"name":"Bronze","threshold":0,"multiplier_pct":100},
                 {"name":"Silver","threshold":25000,"multiplier_pct":150},
                 {"name":"Gold","threshold":100000,"multiplier_pct":200}],
        "rewards":[{"id":"free-coffee","name":"Free coffee","cost_points":100,"cost_cents":80},
                   {"id":"free-pastry","name":"Free pastry","cost_points":150,"cost_cents":120}],
        "points_expiry_days":365,"time_zone":"UTC","expected_lifespan_years":3,
        "monthly_fee_cents":null}"#;
    let p: Program = serde_json::from_str(old).expect("an old program loads");
    assert_eq!(p, Program::demo());
    assert_eq!(p.rounding, Rounding::Floor);
    assert_eq!(p.min_basket_cents, 0);
    assert!(p.bonus_multipliers.is_empty());
    // Earned as before: floor(amount × points_per_unit × tier % / 10000), any time, any store.
    let s = store("s-1");
    for cents in [0u64, 1, 99, 100, 199, 333, 1_000, 123_456, Cents::MAX] {
        for tier in 0..3 {
            let before = (cents as u128 * [100u128, 150, 200][tier] / 10_000) as u64;
            assert_eq!(p.points_for(cents, tier), before);
            assert_eq!(
                p.purchase_points(cents, tier, at(2026, 3, 3, 12, 0), &s),
                before
            );
        }
    }
    // Saved again, it carries the defaults, and loads to the same program.
    let saved = serde_json::to_value(&p).unwrap();
    assert_eq!(saved["rounding"], "floor");
    assert_eq!(saved["min_basket_cents"], 0);
    assert_eq!(saved["bonus_multipliers"], json!([]));
    assert_eq!(serde_json::from_value::<Program>(saved).unwrap(), p);
}

#[test]
fn a_program_with_schedules_round_trips_in_full() {
    let p = paris_bonuses();
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(
        v["bonus_multipliers"][1],
        json!({ "name": "Happy hour", "multiplier_pct": 300, "days_of_week": null,
                "from_date": null, "to_date": null, "from_time": "15:00", "to_time": "17:00",
                "stores": ["s-lyon"] })
    );
    assert_eq!(v["bonus_multipliers"][2]["from_date"], "2026-07-01");
    assert_eq!(serde_json::from_value::<Program>(v).unwrap(), p);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// A random schedule (UTC program): some of days, dates, times and stores `s-0`..`s-3`.
fn schedule(i: usize) -> impl Strategy<Value = Value> {
    (
        0i64..=1_000,
        prop::option::of(prop::collection::vec(0usize..7, 1..=3)),
        prop::option::of((0u32..60, 0u32..60)),
        prop::option::of((0u32..1440, 1u32..=1440)),
        prop::option::of(prop::collection::vec(0usize..4, 1..=2)),
    )
        .prop_map(move |(pct, days, dates, times, stores)| {
            const NAMES: [&str; 7] = [
                "monday",
                "tuesday",
                "wednesday",
                "thursday",
                "friday",
                "saturday",
                "sunday",
            ];
            let base = Day::from_ymd(2026, 1, 1).unwrap().0;
            let mut b = json!({ "name": format!("b{i}"), "multiplier_pct": pct });
            if let Some(d) = days {
                b["days_of_week"] = json!(d.iter().map(|d| NAMES[*d]).collect::<Vec<_>>());
            }
            if let Some((a, z)) = dates {
                let (a, z) = (a.min(z), a.max(z));
                b["from_date"] = json!(Day(base + a).iso());
                b["to_date"] = json!(Day(base + z).iso());
            }
            if let Some((a, z)) = times {
                let (a, z) = if a < z {
                    (a, z)
                } else {
                    (z.saturating_sub(1), z)
                };
                let hm = |t: u32| format!("{:02}:{:02}", t / 60, t % 60);
                b["from_time"] = json!(hm(a));
                b["to_time"] = json!(hm(z));
            }
            if let Some(s) = stores {
                b["stores"] = json!(s.iter().map(|s| format!("s-{s}")).collect::<Vec<_>>());
            }
            b
        })
}

fn rules() -> impl Strategy<Value = (Value, Vec<Value>)> {
    (
        prop_oneof![Just(0i64), 0i64..=2_000],
        prop_oneof![3 => 0i64..=10, 1 => 0i64..=10_000],
        prop::collection::vec(0i64..=10_000, 3),
        0usize..=4,
    )
        .prop_flat_map(|(min, ppu, pcts, n)| {
            let list: Vec<_> = (0..n).map(|i| schedule(i).boxed()).collect();
            (Just((min, ppu, pcts)), list)
        })
        .prop_map(|((min, ppu, pcts), schedules)| {
            let p = json!({
                "min_basket_cents": min,
                "points_per_unit": ppu,
                "tiers": [
                    { "name": "A", "threshold": 0, "multiplier_pct": pcts[0] },
                    { "name": "B", "threshold": 100, "multiplier_pct": pcts[1] },
                    { "name": "C", "threshold": 200, "multiplier_pct": pcts[2] },
                ],
            });
            (p, schedules)
        })
}

fn with(base: &Value, rounding: &str, schedules: &[Value]) -> Program {
    let mut extra = base.clone();
    extra["rounding"] = json!(rounding);
    extra["bonus_multipliers"] = json!(schedules);
    valid(extra)
}

/// A moment in 2026 (the schedules' dates are in its first two months, and around them).
fn moment() -> impl Strategy<Value = (Timestamp, StoreId)> {
    (0i64..90 * DAY, 0usize..5).prop_map(|(ms, s)| {
        (
            Timestamp(at(2025, 12, 20, 0, 0).0 + ms),
            store(&format!("s-{s}")),
        )
    })
}

/// The schedule multiplier by an independent reading of the schedule's JSON (UTC program).
fn expected_bonus(schedules: &[Value], when: Timestamp, store: &StoreId) -> u64 {
    const NAMES: [&str; 7] = [
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
    ];
    let day = when.0.div_euclid(DAY);
    let weekday = NAMES[(day % 7) as usize];
    let minute = when.0.rem_euclid(DAY) / 60_000;
    let date = Day(day as u32).iso();
    let hm = format!("{:02}:{:02}", minute / 60, minute % 60);
    let matches = |b: &Value| {
        let list = |k: &str, v: &str| {
            b[k].as_array()
                .is_none_or(|a| a.iter().any(|x| x.as_str() == Some(v)))
        };
        let cmp = |k: &str, f: &dyn Fn(&str) -> bool| b[k].as_str().is_none_or(f);
        list("days_of_week", weekday)
            && list("stores", store.as_str())
            && cmp("from_date", &|f| date.as_str() >= f)
            && cmp("to_date", &|t| date.as_str() <= t)
            && cmp("from_time", &|f| hm.as_str() >= f)
            && cmp("to_time", &|t| hm.as_str() < t)
    };
    schedules
        .iter()
        .filter(|b| matches(b))
        .map(|b| b["multiplier_pct"].as_u64().unwrap())
        .max()
        .unwrap_or(100)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Earned points never decrease when the amount grows, in every rounding mode, at any
    /// tier, time and store (the minimum basket included).
    #[test]
    fn earned_points_are_monotone_in_the_amount(
        (base, schedules) in rules(),
        a in 0u64..=Cents::MAX,
        b in 0u64..=Cents::MAX,
        tier in 0usize..3,
        (when, s) in moment(),
    ) {
        let (lo, hi) = (a.min(b), a.max(b));
        for rounding in ["floor", "nearest", "up"] {
            let p = with(&base, rounding, &schedules);
            prop_assert!(
                p.purchase_points(lo, tier, when, &s) <= p.purchase_points(hi, tier, when, &s),
                "{} {} {}", rounding, lo, hi
            );
        }
    }

    /// up ≥ nearest ≥ floor, and they are within one point of each other and of the exact
    /// value `amount × points_per_unit × tier % × schedule % / 10^6`; below the minimum
    /// basket all three are 0.
    #[test]
    fn rounding_modes_are_ordered_and_within_a_point(
        (base, schedules) in rules(),
        amount in prop_oneof![0u64..=10_000, 0u64..=Cents::MAX],
        tier in 0usize..3,
        (when, s) in moment(),
    ) {
        let [floor, nearest, up] = ["floor", "nearest", "up"]
            .map(|r| with(&base, r, &schedules).purchase_points(amount, tier, when, &s));
        prop_assert!(floor <= nearest && nearest <= up);
        prop_assert!(up - floor <= 1);
        let p = with(&base, "floor", &schedules);
        if amount < p.min_basket_cents {
            prop_assert_eq!((floor, nearest, up), (0, 0, 0));
        } else {
            let exact = amount as u128
                * p.points_per_unit as u128
                * p.tiers[tier].multiplier_pct as u128
                * expected_bonus(&schedules, when, &s) as u128;
            prop_assert_eq!(floor as u128, exact / 1_000_000, "the stacking rule");
            prop_assert_eq!(up as u128, exact.div_ceil(1_000_000));
            prop_assert_eq!(nearest as u128, (2 * exact + 1_000_000) / 2_000_000);
        }
    }

    /// A schedule that matches nothing (dates before any purchase, a store that never buys)
    /// changes nothing: every purchase earns what it earns without it.
    #[test]
    fn a_schedule_that_matches_nothing_changes_nothing(
        (base, schedules) in rules(),
        rounding in prop_oneof![Just("floor"), Just("nearest"), Just("up")],
        purchases in prop::collection::vec((0u64..=50_000, moment()), 1..20),
        pct in 0i64..=10_000,
    ) {
        let p = with(&base, rounding, &schedules);
        let mut more = schedules.clone();
        more.push(json!({ "name": "never", "multiplier_pct": pct,
            "from_date": "2001-01-01", "to_date": "2001-12-31" }));
        more.push(json!({ "name": "elsewhere", "multiplier_pct": pct, "stores": ["s-none"] }));
        let q = with(&base, rounding, &more);
        let first = at(2025, 12, 20, 0, 0);
        let (mut a, mut b) = (Member::enrolled(&p, first), Member::enrolled(&q, first));
        for (amount, (when, s)) in purchases {
            for tier in 0..3 {
                prop_assert_eq!(
                    p.purchase_points(amount, tier, when, &s),
                    q.purchase_points(amount, tier, when, &s)
                );
            }
            let (x, _) = a.buy(when, s.as_str(), amount);
            let (y, _) = b.buy(when, s.as_str(), amount);
            prop_assert_eq!(x.outcome, y.outcome);
            prop_assert_eq!(x.entries, y.entries);
        }
        prop_assert_eq!(a.state, b.state);
    }

    /// Below the minimum basket a purchase earns nothing (no earn entry, the balance
    /// unchanged) but still counts as a visit, a stamp and spend.
    #[test]
    fn below_the_minimum_basket_nothing_is_earned(
        (base, schedules) in rules(),
        min in 1i64..=100_000,
        fraction in 0.0f64..1.0,
        (when, s) in moment(),
    ) {
        let mut extra = base.clone();
        extra["min_basket_cents"] = json!(min);
        extra["bonus_multipliers"] = json!(schedules);
        let p = valid(extra);
        let amount = ((min as f64 * fraction) as u64).min(min as u64 - 1);
        let mut m = Member::enrolled(&p, at(2025, 12, 20, 0, 0));
        let before = m.state().clone();
        let (applied, earned) = m.buy(when, s.as_str(), amount);
        prop_assert_eq!(earned, 0);
        prop_assert!(applied.entries.iter().all(|e| e.kind != LedgerKind::Earn));
        prop_assert_eq!(m.state().points, before.points);
        prop_assert_eq!(m.state().spend_cents, before.spend_cents + amount);
        let visit = u64::from(amount > 0);
        prop_assert_eq!(m.state().visits, before.visits + visit);
    }
}

/// At the validator's bounds a purchase earns 10^18 points (the balance limit), computed
/// without overflow; the next purchase that would earn is refused and changes nothing.
#[test]
fn the_largest_schedule_stays_within_the_balance_limit() {
    let p = valid(json!({
        "points_per_unit": 10_000,
        "signup_bonus": 0,
        "tiers": [{ "name": "Only", "threshold": 0, "multiplier_pct": 10_000 }],
        "rounding": "up",
        "bonus_multipliers": [{ "name": "Always", "multiplier_pct": 10_000 }],
    }));
    let s = store("s-1");
    let when = at(2026, 3, 3, 12, 0);
    assert_eq!(
        p.purchase_points(Cents::MAX, 0, when, &s),
        loyalty_domain::MAX_POINTS_BALANCE
    );
    assert_eq!(
        p.purchase_points(u64::MAX, 0, when, &s),
        u64::MAX,
        "saturated, not wrapped"
    );
    let mut m = Member::enrolled(&p, when);
    let (_, earned) = m.buy(when, "s-1", Cents::MAX);
    assert_eq!(earned, loyalty_domain::MAX_POINTS_BALANCE);
    let before = m.state.clone();
    let cmd = MemberCommand::Purchase {
        amount: Cents::new(1).unwrap(),
        currency: p.currency.clone(),
        items: Vec::new(),
    };
    assert!(matches!(
        m.send(when, "s-1", cmd),
        Err(Rejection::LimitExceeded { .. })
    ));
    assert_eq!(m.state, before);
}
