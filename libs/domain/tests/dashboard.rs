//! Properties of the dashboards' member counts: whatever the order in which a member's
//! purchases arrive, the visit keys they leave count, for every range, exactly the members a
//! direct count over the purchases finds.

use std::collections::{BTreeMap, BTreeSet};

use loyalty_domain::dashboard::{
    record_purchase, PackedRow, PurchaseDays, Scope, VisitCounts, VisitRow,
};
use loyalty_domain::kpi::{KpiInput, Kpis};
use loyalty_domain::{dashboard::DayTotals, Day, StoreId};
use proptest::prelude::*;

/// Purchases of several members: (member, store, day), in arrival order.
fn purchases() -> impl Strategy<Value = Vec<(u8, u8, u32)>> {
    prop::collection::vec((0u8..6, 0u8..3, 0u32..120), 0..80)
}

fn store(i: u8) -> StoreId {
    StoreId::parse(&format!("s{i}")).expect("valid id")
}

/// Applies the purchases in order; returns the summed visit rows by (scope, day).
fn project(events: &[(u8, u8, u32)]) -> BTreeMap<(Scope, Day), VisitRow> {
    let mut members: BTreeMap<u8, PurchaseDays> = BTreeMap::new();
    let mut rows: BTreeMap<(Scope, Day), VisitRow> = BTreeMap::new();
    for (m, s, d) in events {
        let days = members.entry(*m).or_default();
        for v in record_purchase(days, &store(*s), Day(1000 + d)) {
            let row = rows.entry((v.scope, v.day)).or_default();
            *row.entry(v.key).or_default() += v.n;
        }
    }
    for row in rows.values_mut() {
        row.retain(|_, n| *n != 0);
    }
    rows.retain(|_, r| !r.is_empty());
    rows
}

/// Counts members directly: active (a purchase in range), repeat (two), new (first ever in
/// range), for one scope.
fn direct(events: &[(u8, u8, u32)], scope: &Scope, from: Day, to: Day) -> VisitCounts {
    let mut by_member: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
    for (m, s, d) in events {
        if matches!(scope, Scope::Store(id) if *id != store(*s)) {
            continue;
        }
        by_member.entry(*m).or_default().push(1000 + d);
    }
    let mut c = VisitCounts::default();
    for days in by_member.values() {
        let inside = days.iter().filter(|d| (from.0..=to.0).contains(d)).count() as u64;
        if inside >= 1 {
            c.active += 1;
            if days.iter().min().is_some_and(|d| *d >= from.0) {
                c.new += 1;
            }
        }
        if inside >= 2 {
            c.repeat += 1;
        }
    }
    c
}

fn counted(
    rows: &BTreeMap<(Scope, Day), VisitRow>,
    scope: &Scope,
    from: Day,
    to: Day,
) -> VisitCounts {
    VisitCounts::of(
        rows.iter()
            .filter(|((s, _), _)| s == scope)
            .map(|((_, d), r)| (*d, r)),
        from,
        to,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn member_counts_match_a_direct_count(events in purchases(), a in 0u32..130, len in 0u32..60) {
        let rows = project(&events);
        let (from, to) = (Day(1000 + a), Day(1000 + a + len));
        let scopes: BTreeSet<Scope> = std::iter::once(Scope::Franchise)
            .chain((0..3).map(|i| Scope::Store(store(i))))
            .collect();
        for scope in &scopes {
            prop_assert_eq!(counted(&rows, scope, from, to), direct(&events, scope, from, to), "{:?}", scope);
        }
        // No count is ever left negative.
        prop_assert!(rows.values().flat_map(|r| r.values()).all(|n| *n > 0));
    }

    #[test]
    fn packed_rows_count_like_maps(events in purchases(), a in 0u32..130, len in 0u32..60) {
        let rows = project(&events);
        let (from, to) = (Day(1000 + a), Day(1000 + a + len));
        let mut packed = VisitCounts::default();
        for ((scope, day), row) in &rows {
            if *scope == Scope::Franchise {
                let p = PackedRow::of(row);
                prop_assert_eq!(&p.row(), row);
                packed.add_packed(*day, &p, from, to);
            }
        }
        prop_assert_eq!(packed, counted(&rows, &Scope::Franchise, from, to));
    }

    #[test]
    fn totals_round_trip(counts in prop::array::uniform11(any::<u64>()), rewards in prop::collection::btree_map("[a-z]{1,12}", any::<u64>(), 0..4)) {
        let t = DayTotals {
            member_purchases: counts[0], anonymous_purchases: counts[1],
            member_revenue_cents: counts[2], anonymous_revenue_cents: counts[3],
            refunded_cents: counts[4], enrolments: counts[5], points_issued: counts[6],
            points_redeemed: counts[7], points_expired: counts[8], redemptions: counts[9],
            reward_cost_cents: counts[10],
            rewards: rewards.into_iter().map(|(k, v)| (loyalty_domain::RewardId::parse(&k).expect("id"), v)).collect(),
        };
        let bytes = t.encode();
        prop_assert_eq!(DayTotals::decode(&bytes), Some(t));
        prop_assert_eq!(DayTotals::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn arrival_order_does_not_matter(events in purchases(), seed in any::<u64>()) {
        let mut shuffled = events.clone();
        // A deterministic shuffle of the arrival order (per member order changes too).
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut sorted = events.clone();
        sorted.sort_by_key(|(_, _, d)| *d);
        prop_assert_eq!(project(&shuffled), project(&sorted));
    }
}

#[test]
fn a_purchase_far_behind_its_member_changes_no_count() {
    let mut days = PurchaseDays::new();
    let s = store(0);
    assert!(!record_purchase(&mut days, &s, Day(10_000)).is_empty());
    assert!(record_purchase(
        &mut days,
        &s,
        Day(10_000 - loyalty_domain::dashboard::HORIZON_DAYS - 1)
    )
    .is_empty());
    assert!(!record_purchase(&mut days, &s, Day(10_000 - 30)).is_empty());
}

#[test]
fn kpis_follow_the_seed_formulas() {
    let totals = DayTotals {
        member_purchases: 40,
        anonymous_purchases: 60,
        member_revenue_cents: 100_000,    // 2 500 a member purchase
        anonymous_revenue_cents: 120_000, // 2 000 an anonymous one
        refunded_cents: 5_000,
        enrolments: 4,
        points_issued: 1_200,
        points_redeemed: 300,
        points_expired: 10,
        redemptions: 3,
        reward_cost_cents: 900,
        rewards: Default::default(),
    };
    let visits = VisitCounts {
        active: 16,
        repeat: 6,
        new: 4,
    };
    let k = Kpis::of(&KpiInput {
        totals: &totals,
        visits,
        previous_active: 20,
        days: 73,
        expected_lifespan_years: 3,
        monthly_fee_cents: Some(10_000),
    });
    assert_eq!(k.repeat_purchase_rate_pct, Some(37.5)); // 6 / 16
    assert_eq!(k.visit_frequency, Some(2.5)); // 40 / 16
    assert_eq!(k.avg_spend_member_cents, Some(2500.0));
    assert_eq!(k.avg_spend_anonymous_cents, Some(2000.0));
    assert_eq!(k.spend_lift_pct, Some(25.0));
    assert_eq!(k.redemption_rate_pct, Some(25.0)); // 300 / 1200
    assert_eq!(k.customer_retention_rate_pct, Some(60.0)); // (16 - 4) / 20
                                                           // 2 500 × (2.5 × 365 / 73 = 12.5 a year) × 3 years.
    assert_eq!(k.ltv_cents, Some(93_750.0));
    // Cost: 10 000 × 73 × 12 / 365 = 24 000, plus 900 of rewards; incremental: 500 × 40.
    assert_eq!(k.program_cost_cents, Some(24_900.0));
    assert_eq!(k.incremental_revenue_cents, Some(20_000.0));
    assert_eq!(k.roi_pct, Some(-19.68)); // (20 000 - 24 900) / 24 900
    let empty = Kpis::of(&KpiInput {
        totals: &DayTotals::default(),
        visits: VisitCounts::default(),
        previous_active: 0,
        days: 1,
        expected_lifespan_years: 3,
        monthly_fee_cents: None,
    });
    assert_eq!(empty.repeat_purchase_rate_pct, None);
    assert_eq!(empty.spend_lift_pct, None);
    assert_eq!(empty.roi_pct, None);
    assert_eq!(empty.customer_retention_rate_pct, None);
}

#[test]
fn stored_rows_of_both_versions_read_back() {
    use loyalty_domain::dashboard::{decode_row, encode_row, VisitKey};
    let k = |p: Option<u16>, q: Option<u16>| VisitKey { prev: p, prev2: q };
    let row: VisitRow = [
        (k(None, None), 3),
        (k(Some(0), None), 1),
        (k(Some(7), Some(14)), 12),
    ]
    .into();
    assert_eq!(decode_row(&encode_row(&row)), Some(row.clone()));
    // Version 1: (key u32, count i64) pairs with no version byte.
    let mut v1 = Vec::new();
    for (key, n) in &row {
        v1.extend_from_slice(&key.pack().to_le_bytes());
        v1.extend_from_slice(&n.to_le_bytes());
    }
    assert_eq!(decode_row(&v1), Some(row.clone()));
    assert_eq!(PackedRow::from_bytes(&v1), Some(PackedRow::of(&row)));
    assert_eq!(decode_row(&v1[..5]), None);
}
