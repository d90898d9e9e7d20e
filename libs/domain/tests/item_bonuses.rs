//! Item bonuses (README "Item bonuses"): extra points for SKUs or categories among a purchase's
//! line items, each bonus its own earn entry `item_bonus:<name>`, the best matching bonus per
//! line, the fixed part untouched by multipliers and the `multiplier_pct` part multiplying with
//! the tier and the schedule. Example tests first, then property tests.

use loyalty_domain::items::{parse_items, MAX_ITEMS};
use loyalty_domain::{
    apply, Applied, Cents, Day, EventContext, EventId, FranchiseId, LedgerEntry, LedgerKind,
    MemberCommand, MemberId, MemberState, Outcome, Phone, Profile, Program, PurchaseItem,
    PurchaseItemSpec, Rejection, StoreId, Timestamp,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;

/// The demo program's JSON (1 point per euro, Bronze ×1 / Silver ×1.5 / Gold ×2 on spend)
/// with `extra` fields set.
fn program(extra: Value) -> Result<Program, String> {
    let mut p = serde_json::to_value(Program::demo()).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    serde_json::from_value(p).map_err(|e| e.to_string())
}

fn valid(extra: Value) -> Program {
    program(extra).unwrap_or_else(|e| panic!("valid program: {e}"))
}

/// A café's bonuses: 20 points per bag of beans, double points on pastries, and on the
/// croissant of the month 5 points each and triple points.
fn cafe() -> Program {
    valid(json!({ "item_bonuses": [
        { "name": "Beans", "categories": ["beans"], "points_per_item": 20 },
        { "name": "Pastry double", "categories": ["pastry"], "multiplier_pct": 200 },
        { "name": "Croissant of the month", "skus": ["CROI-AMANDE"],
          "points_per_item": 5, "multiplier_pct": 300 },
    ] }))
}

fn item(sku: &str, category: Option<&str>, quantity: i64, cents: i64) -> PurchaseItemSpec {
    PurchaseItemSpec {
        sku: sku.into(),
        category: category.map(Into::into),
        quantity,
        amount_cents: cents,
    }
}

fn items(specs: &[PurchaseItemSpec], amount: u64) -> Vec<PurchaseItem> {
    parse_items(specs, Cents::new(amount as i64).unwrap()).expect("valid items")
}

fn noon(day: u32) -> Timestamp {
    Timestamp(Day::from_ymd(2026, 3, day).unwrap().0 as i64 * DAY + 12 * 3_600_000)
}

fn store() -> StoreId {
    StoreId::parse("s-1").unwrap()
}

/// One member's commands through [`apply`], as the engine applies them.
struct Member<'p> {
    program: &'p Program,
    state: Option<MemberState>,
    next: u32,
}

impl<'p> Member<'p> {
    fn enrolled(program: &'p Program) -> Member<'p> {
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
        m.send(MemberCommand::Enrol { profile }).unwrap();
        m
    }

    fn send(&mut self, cmd: MemberCommand) -> Result<Applied, Rejection> {
        self.next += 1;
        let id = EventId::parse(&format!("e-{}", self.next)).unwrap();
        let store_id = store();
        let ctx = EventContext {
            event_id: &id,
            store_id: &store_id,
            at: noon(3),
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

    fn purchase(&mut self, cents: u64, items: Vec<PurchaseItem>) -> Result<Applied, Rejection> {
        self.send(MemberCommand::Purchase {
            amount: Cents::new(cents as i64).unwrap(),
            currency: self.program.currency.clone(),
            items,
        })
    }

    /// A purchase that must be accepted: its effect and the points it earned.
    fn buy(&mut self, cents: u64, items: Vec<PurchaseItem>) -> (Applied, u64) {
        let applied = self.purchase(cents, items).expect("a purchase is accepted");
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

fn details(entries: &[LedgerEntry]) -> Vec<(LedgerKind, &str, i64)> {
    entries
        .iter()
        .map(|e| (e.kind, e.detail.as_str(), e.points))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------------

#[test]
fn each_bonus_is_its_own_earn_entry_and_part_of_what_the_purchase_earned() {
    let p = cafe();
    let mut m = Member::enrolled(&p);
    let lines = items(
        &[
            item("BEANS-1KG", Some("beans"), 2, 1_200),
            item("PAIN-CHOC", Some("pastry"), 2, 300),
            item("LATTE", Some("drinks"), 1, 450),
        ],
        2_000,
    );
    let (applied, earned) = m.buy(2_000, lines);
    // 20 € earn 20 points; two bags 2 × 20; the pastries' 3 € earn 3 points more (double).
    assert_eq!(
        details(&applied.entries),
        vec![
            (LedgerKind::Earn, "purchase", 20),
            (LedgerKind::Earn, "item_bonus:Beans", 40),
            (LedgerKind::Earn, "item_bonus:Pastry double", 3),
        ]
    );
    assert_eq!(earned, 63);
    assert_eq!(m.state().points, 50 + 63);
    assert_eq!(m.state().points_earned, 50 + 63);
    // The balance is the sum of the ledger, each entry's balance_after in turn.
    let last = applied.entries.last().unwrap();
    assert_eq!(last.balance_after, m.state().points);
}

#[test]
fn a_line_gets_the_best_matching_bonus_only() {
    let p = cafe();
    // The croissant is a pastry too: double on 2.50 € is 2.5 points, the croissant of the
    // month 5 + 5 (triple) = 10 points: only the croissant's bonus applies.
    let croissant = items(&[item("CROI-AMANDE", Some("pastry"), 1, 250)], 250);
    let got = p.item_bonus_points(&croissant, 250, 0, noon(3), &store());
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.name.as_str(), got[0].1),
        ("Croissant of the month", 10)
    );
    // On a tie the first listed wins.
    let tie = valid(json!({ "item_bonuses": [
        { "name": "First", "skus": ["A"], "points_per_item": 3 },
        { "name": "Second", "categories": ["c"], "points_per_item": 3 },
    ] }));
    let line = items(&[item("A", Some("c"), 1, 0)], 0);
    let got = tie.item_bonus_points(&line, 0, 0, noon(3), &store());
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.name.as_str(), got[0].1), ("First", 3));
    // A line matching nothing, or without the category a bonus names, gets nothing.
    let plain = items(&[item("BEANS-1KG", None, 3, 1_000)], 1_000);
    assert!(p
        .item_bonus_points(&plain, 1_000, 0, noon(3), &store())
        .is_empty());
}

#[test]
fn the_multiplier_part_multiplies_with_tier_and_schedule_the_fixed_part_does_not() {
    let p = valid(json!({
        "item_bonuses": [
            { "name": "Beans", "categories": ["beans"], "points_per_item": 20,
              "multiplier_pct": 300 },
        ],
        "bonus_multipliers": [{ "name": "Tuesday", "multiplier_pct": 200,
                                "days_of_week": ["tuesday"] }],
    }));
    let line = items(&[item("BEANS-1KG", Some("beans"), 1, 1_000)], 1_000);
    let tuesday = noon(3); // 2026-03-03 is a Tuesday.
    let wednesday = noon(4);
    let s = store();
    // Bronze (×1), no schedule: 20 + 10 € × 1 × (300 − 100) % = 20 + 20.
    assert_eq!(p.item_bonus_points(&line, 1_000, 0, wednesday, &s)[0].1, 40);
    // Gold (×2), Tuesday (×2): the extra is 10 × 2 × 2 × 2 = 80; the 20 fixed points stay.
    assert_eq!(p.item_bonus_points(&line, 1_000, 2, tuesday, &s)[0].1, 100);
    // The purchase itself: 10 € × 2 × 2 = 40 points; with the bonus the line earns 3 times
    // that (120) plus the fixed 20.
    assert_eq!(p.purchase_points(1_000, 2, tuesday, &s), 40);
}

#[test]
fn rounding_applies_once_per_bonus() {
    let p = valid(json!({
        "rounding": "up",
        "item_bonuses": [{ "name": "Pastry double", "categories": ["pastry"],
                           "multiplier_pct": 200 }],
    }));
    // Three lines of 0.40 € each earn 0.4 point more: 1.2 rounded up once is 2 (per line it
    // would be 3).
    let lines = items(
        &[
            item("A", Some("pastry"), 1, 40),
            item("B", Some("pastry"), 1, 40),
            item("C", Some("pastry"), 1, 40),
        ],
        120,
    );
    assert_eq!(
        p.item_bonus_points(&lines, 120, 0, noon(3), &store())[0].1,
        2
    );
}

#[test]
fn below_the_minimum_basket_no_bonus_either() {
    let p = valid(json!({
        "min_basket_cents": 500,
        "item_bonuses": [{ "name": "Beans", "categories": ["beans"], "points_per_item": 20 }],
    }));
    let mut m = Member::enrolled(&p);
    let line = items(&[item("BEANS-250G", Some("beans"), 1, 400)], 400);
    let (applied, earned) = m.buy(400, line.clone());
    assert_eq!(earned, 0);
    assert!(applied.entries.is_empty());
    let (_, earned) = m.buy(500, line);
    assert_eq!(earned, 5 + 20);
}

#[test]
fn a_refund_reverses_the_bonus_pro_rata() {
    let p = cafe();
    let mut m = Member::enrolled(&p);
    let lines = items(&[item("BEANS-1KG", Some("beans"), 2, 1_200)], 2_000);
    let (applied, earned) = m.buy(2_000, lines);
    assert_eq!(earned, 60);
    let Outcome::Purchase(record) = applied.outcome else {
        panic!("a purchase")
    };
    let refund = m
        .send(MemberCommand::Refund {
            purchase_event_id: EventId::parse("e-2").unwrap(),
            amount: Some(Cents::new(1_000).unwrap()),
            purchase: Some(record),
            purchase_unseen: false,
        })
        .unwrap();
    let Outcome::Refund {
        points_reversed, ..
    } = refund.outcome
    else {
        panic!("a refund")
    };
    // Half the amount: half of the 60 points, bonus included.
    assert_eq!(points_reversed, 30);
    assert_eq!(m.state().points, 50 + 30);
}

#[test]
fn items_change_nothing_without_item_bonuses() {
    let p = Program::demo();
    let mut with = Member::enrolled(&p);
    let mut without = Member::enrolled(&p);
    let lines = items(&[item("BEANS-1KG", Some("beans"), 2, 1_200)], 2_000);
    let (a, earned) = with.buy(2_000, lines);
    let (b, plain) = without.buy(2_000, Vec::new());
    assert_eq!(earned, plain);
    assert_eq!(a.entries, b.entries);
    assert_eq!(with.state(), without.state());
}

#[test]
fn items_are_validated_with_clear_messages() {
    let amount = Cents::new(1_000).unwrap();
    let err = |specs: &[PurchaseItemSpec]| parse_items(specs, amount).unwrap_err().to_string();
    let ok = item("BEANS-1KG", Some("beans"), 1, 500);
    assert_eq!(parse_items(&[], amount), Ok(Vec::new()));
    assert_eq!(
        parse_items(std::slice::from_ref(&ok), amount)
            .unwrap()
            .len(),
        1
    );
    let many = vec![item("A", None, 1, 0); MAX_ITEMS + 1];
    assert_eq!(
        err(&many),
        "invalid items: a purchase has at most 200 items, got 201"
    );
    assert!(parse_items(&many[..MAX_ITEMS], amount).is_ok());
    for (bad, field) in [
        (item("", None, 1, 0), "items[1].sku"),
        (item("a b", None, 1, 0), "items[1].sku"),
        (item(&"x".repeat(65), None, 1, 0), "items[1].sku"),
        (item("A", Some(""), 1, 0), "items[1].category"),
        (item("A", Some("café"), 1, 0), "items[1].category"),
    ] {
        let e = err(&[ok.clone(), bad]);
        assert!(
            e.contains(&format!("{field} must be 1 to 64 characters")),
            "{e}"
        );
    }
    for q in [0, -1, 10_001] {
        let e = err(&[item("A", None, q, 0)]);
        assert_eq!(
            e,
            format!("invalid items: items[0].quantity must be between 1 and 10000, got {q}")
        );
    }
    let e = err(&[item("A", None, 1, -5)]);
    assert!(
        e.contains("items[0].amount_cents must be between 0 and"),
        "{e}"
    );
    let e = err(&[item("A", None, 1, 600), item("B", None, 1, 401)]);
    assert_eq!(
        e,
        "invalid items: the items' amounts add up to 1001 cents, more than the purchase's \
         amount_cents (1000)"
    );
    assert!(parse_items(&[item("A", None, 1, 600), item("B", None, 1, 400)], amount).is_ok());
}

#[test]
fn item_bonuses_are_validated_with_clear_messages() {
    let bonus = |b: Value| program(json!({ "item_bonuses": [b] }));
    for (b, message) in [
        (
            json!({ "name": "X", "points_per_item": 1 }),
            "item_bonuses[0] must name skus or categories (or both)",
        ),
        (
            json!({ "name": "X", "skus": ["A"] }),
            "item_bonuses[0] gives nothing: set points_per_item (1 or more) or multiplier_pct (above 100)",
        ),
        (
            json!({ "name": "X", "skus": ["A"], "multiplier_pct": 99 }),
            "item_bonuses[0].multiplier_pct must be between 100 and 10000, got 99",
        ),
        (
            json!({ "name": "X", "skus": ["A"], "points_per_item": -1 }),
            "item_bonuses[0].points_per_item must be between 0 and 1000000, got -1",
        ),
        (
            json!({ "name": "X", "skus": [], "points_per_item": 1 }),
            "item_bonuses[0].skus must list 1 to 1000 entries, or be left out",
        ),
        (
            json!({ "name": "X", "categories": ["no spaces"], "points_per_item": 1 }),
            "item_bonuses[0].categories has \"no spaces\", not 1 to 64 characters",
        ),
        (
            json!({ "name": " ", "skus": ["A"], "points_per_item": 1 }),
            "item_bonuses[0].name must be 1 to 100 characters",
        ),
        (
            json!({ "name": "X", "skus": ["A"], "points_per_item": 1, "stores": ["s-1"] }),
            "unknown field `stores`",
        ),
        (json!(["X", ["A"]]), "expected a JSON object"),
    ] {
        let e = bonus(b.clone()).unwrap_err();
        assert!(e.contains(message), "{b}: {e}");
    }
    let twice = program(json!({ "item_bonuses": [
        { "name": "X", "skus": ["A"], "points_per_item": 1 },
        { "name": "X", "categories": ["c"], "points_per_item": 2 },
    ] }));
    assert!(twice
        .unwrap_err()
        .contains("item bonus name \"X\" appears twice"));
    let many: Vec<Value> = (0..33)
        .map(|i| json!({ "name": format!("B{i}"), "skus": ["A"], "points_per_item": 1 }))
        .collect();
    assert!(program(json!({ "item_bonuses": many }))
        .unwrap_err()
        .contains("at most 32 item_bonuses"));
}

#[test]
fn a_program_with_item_bonuses_round_trips_and_an_old_one_has_none() {
    let p = cafe();
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(
        v["item_bonuses"][0],
        json!({ "name": "Beans", "skus": null, "categories": ["beans"],
                "points_per_item": 20, "multiplier_pct": 100 })
    );
    assert_eq!(serde_json::from_value::<Program>(v).unwrap(), p);
    let mut old = serde_json::to_value(Program::demo()).unwrap();
    old.as_object_mut().unwrap().remove("item_bonuses");
    let old: Program = serde_json::from_value(old).unwrap();
    assert!(old.item_bonuses.is_empty());
    assert_eq!(old, Program::demo());
}

/// At the validator's bounds the bonus saturates instead of wrapping, and a purchase whose
/// bonus would take the member past the balance limit is refused and changes nothing.
#[test]
fn at_the_bounds_a_bonus_saturates_and_the_purchase_is_refused() {
    let p = valid(json!({
        "points_per_unit": 10_000,
        "signup_bonus": 0,
        "tiers": [{ "name": "Only", "threshold": 0, "multiplier_pct": 10_000 }],
        "rounding": "nearest",
        "bonus_multipliers": [{ "name": "Always", "multiplier_pct": 10_000 }],
        "item_bonuses": [{ "name": "Max", "skus": ["A"], "points_per_item": 1_000_000,
                           "multiplier_pct": 10_000 }],
    }));
    let line = items(&[item("A", None, 10_000, Cents::MAX as i64)], Cents::MAX);
    let got = p.item_bonus_points(&line, Cents::MAX, 0, noon(3), &store());
    assert_eq!(got[0].1, u64::MAX, "saturated, not wrapped");
    let mut m = Member::enrolled(&p);
    let before = m.state.clone();
    assert!(matches!(
        m.purchase(Cents::MAX, line),
        Err(Rejection::LimitExceeded { .. })
    ));
    assert_eq!(m.state, before);
    // A purchase of 1 cent at the bounds earns 10^12 / 10^6 points; its line 10^10 fixed
    // points and 10^12 × 9 900 / 10^8 on the amount.
    let small = items(&[item("A", None, 10_000, 1)], 1);
    let (_, earned) = m.buy(1, small);
    assert_eq!(earned, 1_000_000 + 10_000_000_000 + 99_000_000);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

const SKUS: [&str; 4] = ["A", "B", "C", "D"];
const CATEGORIES: [&str; 3] = ["x", "y", "z"];

/// A random item bonus over [`SKUS`] and [`CATEGORIES`].
fn bonus(i: usize) -> impl Strategy<Value = Value> {
    (
        proptest::sample::subsequence(SKUS.to_vec(), 0..=2),
        proptest::sample::subsequence(CATEGORIES.to_vec(), 0..=2),
        0i64..=50,
        100i64..=500,
    )
        .prop_filter("names products and gives something", |(s, c, p, m)| {
            (!s.is_empty() || !c.is_empty()) && (*p > 0 || *m > 100)
        })
        .prop_map(move |(s, c, p, m)| {
            let mut b = json!({ "name": format!("bonus {i}"), "points_per_item": p,
                                "multiplier_pct": m });
            if !s.is_empty() {
                b["skus"] = json!(s);
            }
            if !c.is_empty() {
                b["categories"] = json!(c);
            }
            b
        })
}

/// A program with 0 to 4 random item bonuses, a rounding mode and maybe a schedule.
fn bonus_program() -> impl Strategy<Value = Program> {
    (
        (0usize..=4).prop_flat_map(|n| (0..n).map(bonus).collect::<Vec<_>>()),
        prop_oneof![Just("floor"), Just("nearest"), Just("up")],
        proptest::option::of(0i64..=400),
        0i64..=300,
    )
        .prop_map(|(bonuses, rounding, schedule, min)| {
            let schedules: Vec<Value> = schedule
                .map(|m| json!({ "name": "Always", "multiplier_pct": m }))
                .into_iter()
                .collect();
            valid(json!({ "item_bonuses": bonuses, "rounding": rounding,
                          "bonus_multipliers": schedules, "min_basket_cents": min }))
        })
}

/// 0 to 8 lines over [`SKUS`] and [`CATEGORIES`], and a purchase amount not below their total.
fn basket() -> impl Strategy<Value = (Vec<PurchaseItemSpec>, u64)> {
    (
        proptest::collection::vec(
            (
                0usize..SKUS.len(),
                proptest::option::of(0usize..CATEGORIES.len()),
                1i64..=20,
                0i64..=5_000,
            ),
            0..=8,
        ),
        0u64..=5_000,
    )
        .prop_map(|(lines, extra)| {
            let specs: Vec<PurchaseItemSpec> = lines
                .into_iter()
                .map(|(s, c, q, a)| item(SKUS[s], c.map(|c| CATEGORIES[c]), q, a))
                .collect();
            let total: u64 = specs.iter().map(|s| s.amount_cents as u64).sum();
            (specs, total + extra)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A bonus only adds: every bonus is positive (at any tier), and the purchase earns its
    /// points without items plus its bonuses, exactly its entries (one `item_bonus:` entry per
    /// bonus), the balance staying the sum of the ledger.
    #[test]
    fn a_bonus_only_adds_and_is_in_the_ledger(
        p in bonus_program(),
        (specs, amount) in basket(),
        tier in 0usize..3,
    ) {
        let lines = items(&specs, amount);
        let at_tier = p.item_bonus_points(&lines, amount, tier, noon(3), &store());
        prop_assert!(at_tier.iter().all(|(_, b)| *b > 0));
        // The member starts in the first tier.
        let base = p.purchase_points(amount, 0, noon(3), &store());
        let bonuses = p.item_bonus_points(&lines, amount, 0, noon(3), &store());
        let mut m = Member::enrolled(&p);
        let (applied, earned) = m.buy(amount, lines);
        let sum: u64 = bonuses.iter().map(|(_, b)| *b).sum();
        prop_assert_eq!(earned, base + sum);
        let bonus_entries: Vec<(String, u64)> = applied
            .entries
            .iter()
            .filter(|e| e.kind == LedgerKind::Earn && e.detail.starts_with("item_bonus:"))
            .map(|e| (e.detail.clone(), e.points as u64))
            .collect();
        let expected: Vec<(String, u64)> = bonuses
            .iter()
            .map(|(b, n)| (format!("item_bonus:{}", b.name), *n))
            .collect();
        prop_assert_eq!(bonus_entries, expected);
        let all: i64 = applied.entries.iter().map(|e| e.points).sum();
        prop_assert_eq!(all as u64, earned);
        prop_assert_eq!(m.state().points, p.signup_bonus + earned);
    }

    /// More of a line never earns less, with the line's amount unchanged.
    #[test]
    fn the_bonus_is_monotone_in_quantity(
        p in bonus_program(),
        (specs, amount) in basket(),
        line in 0usize..8,
        more in 1i64..=1_000,
        tier in 0usize..3,
    ) {
        prop_assume!(!specs.is_empty());
        let total = |specs: &[PurchaseItemSpec]| -> u64 {
            p.item_bonus_points(&items(specs, amount), amount, tier, noon(3), &store())
                .iter()
                .map(|(_, b)| *b)
                .sum()
        };
        let mut bigger = specs.clone();
        let i = line % specs.len();
        bigger[i].quantity += more;
        prop_assert!(total(&specs) <= total(&bigger));
    }

    /// Without items, or with items no bonus matches, a purchase earns exactly what it earns
    /// today (`purchase_points`), in the same entries, purchase after purchase.
    #[test]
    fn without_matching_items_todays_points_exactly(
        p in bonus_program(),
        amount in 0u64..=100_000,
        quantity in 1i64..=100,
    ) {
        let unmatched = items(&[item("NOT-LISTED", Some("none"), quantity, 0)], amount);
        for tier in 0..3 {
            prop_assert!(p.item_bonus_points(&[], amount, tier, noon(3), &store()).is_empty());
            prop_assert!(p
                .item_bonus_points(&unmatched, amount, tier, noon(3), &store())
                .is_empty());
        }
        let mut plain = Member::enrolled(&p);
        let mut with = Member::enrolled(&p);
        for i in 0..3 {
            let (a, earned) = plain.buy(amount, Vec::new());
            let (b, same) = with.buy(amount, unmatched.clone());
            prop_assert_eq!(earned, same);
            prop_assert_eq!(a.entries, b.entries);
            if i == 0 {
                prop_assert_eq!(earned, p.purchase_points(amount, 0, noon(3), &store()));
            }
        }
        prop_assert_eq!(plain.state(), with.state());
    }
}
