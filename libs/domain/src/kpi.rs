//! The KPIs of a period, from its summed [`DayTotals`] and [`VisitCounts`] (seed 001's
//! formulas). Rates and averages are reports, not rules: they are the only floats of the
//! domain, computed from exact integers and rounded to 2 decimals at the end; a ratio whose
//! denominator is 0 is `None` (JSON `null`).

use serde::Serialize;

use crate::dashboard::{DayTotals, VisitCounts};

/// What a period's KPIs are computed from.
#[derive(Clone, Debug)]
pub struct KpiInput<'a> {
    pub totals: &'a DayTotals,
    pub visits: VisitCounts,
    /// Members active in the period of the same length just before (retention's S).
    pub previous_active: u64,
    /// Days in the period.
    pub days: u32,
    pub expected_lifespan_years: u32,
    pub monthly_fee_cents: Option<u64>,
}

/// A period's KPIs, with the names of the API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kpis {
    pub member_purchases: u64,
    pub anonymous_purchases: u64,
    pub member_revenue_cents: u64,
    pub anonymous_revenue_cents: u64,
    pub refunded_cents: u64,
    pub enrolments: u64,
    pub active_members: u64,
    pub repeat_members: u64,
    pub new_members: u64,
    pub repeat_purchase_rate_pct: Option<f64>,
    pub visit_frequency: Option<f64>,
    pub avg_spend_member_cents: Option<f64>,
    pub avg_spend_anonymous_cents: Option<f64>,
    pub spend_lift_pct: Option<f64>,
    pub points_issued: u64,
    pub points_redeemed: u64,
    pub points_expired: u64,
    pub redemptions: u64,
    pub redemption_rate_pct: Option<f64>,
    pub customer_retention_rate_pct: Option<f64>,
    pub ltv_cents: Option<f64>,
    pub program_cost_cents: Option<f64>,
    pub incremental_revenue_cents: Option<f64>,
    pub roi_pct: Option<f64>,
}

/// Rounds to 2 decimals (half away from zero).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den != 0.0).then(|| num / den)
}

impl Kpis {
    pub fn of(i: &KpiInput<'_>) -> Kpis {
        let t = i.totals;
        let v = i.visits;
        let avg_member = ratio(t.member_revenue_cents as f64, t.member_purchases as f64);
        let avg_anon = ratio(
            t.anonymous_revenue_cents as f64,
            t.anonymous_purchases as f64,
        );
        let frequency = ratio(t.member_purchases as f64, v.active as f64);
        // Retention: (E - N) / S, E the active members, N the new ones, S those active in the
        // period before.
        let retention =
            ratio(v.active as f64 - v.new as f64, i.previous_active as f64).map(|r| r * 100.0);
        // LTV: average basket × purchases per member per year × expected lifespan.
        let per_year = frequency.map(|f| f * 365.0 / f64::from(i.days.max(1)));
        let ltv = match (avg_member, per_year) {
            (Some(a), Some(p)) => Some(a * p * f64::from(i.expected_lifespan_years)),
            _ => None,
        };
        // ROI: (incremental member revenue - program cost) / program cost, the incremental
        // revenue being what members spend above the anonymous basket, the cost the monthly
        // fee pro rata (a month being 365/12 days) plus the rewards given.
        let incremental = match (avg_member, avg_anon) {
            (Some(m), Some(a)) => Some((m - a) * t.member_purchases as f64),
            _ => None,
        };
        let cost = i
            .monthly_fee_cents
            .map(|fee| fee as f64 * f64::from(i.days) * 12.0 / 365.0 + t.reward_cost_cents as f64);
        let roi = match (incremental, cost) {
            (Some(inc), Some(c)) => ratio(inc - c, c).map(|r| r * 100.0),
            _ => None,
        };
        Kpis {
            member_purchases: t.member_purchases,
            anonymous_purchases: t.anonymous_purchases,
            member_revenue_cents: t.member_revenue_cents,
            anonymous_revenue_cents: t.anonymous_revenue_cents,
            refunded_cents: t.refunded_cents,
            enrolments: t.enrolments,
            active_members: v.active,
            repeat_members: v.repeat,
            new_members: v.new,
            repeat_purchase_rate_pct: ratio(v.repeat as f64, v.active as f64)
                .map(|r| round2(r * 100.0)),
            visit_frequency: frequency.map(round2),
            avg_spend_member_cents: avg_member.map(round2),
            avg_spend_anonymous_cents: avg_anon.map(round2),
            spend_lift_pct: match (avg_member, avg_anon) {
                (Some(m), Some(a)) => ratio(m, a).map(|r| round2((r - 1.0) * 100.0)),
                _ => None,
            },
            points_issued: t.points_issued,
            points_redeemed: t.points_redeemed,
            points_expired: t.points_expired,
            redemptions: t.redemptions,
            redemption_rate_pct: ratio(t.points_redeemed as f64, t.points_issued as f64)
                .map(|r| round2(r * 100.0)),
            customer_retention_rate_pct: retention.map(round2),
            ltv_cents: ltv.map(round2),
            program_cost_cents: cost.map(round2),
            incremental_revenue_cents: incremental.map(round2),
            roi_pct: roi.map(round2),
        }
    }
}
