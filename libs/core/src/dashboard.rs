//! Headquarters' dashboard of a franchise for a range of days: read from the stored daily
//! aggregates (never from members), computed with the domain's KPI formulas.
//!
//! One read of the store covers the range and the periods before it that retention and the
//! comparison need; everything else is arithmetic over those rows.

use std::collections::BTreeMap;

use loyalty_domain::dashboard::{DayTotals, PackedRow, Scope, VisitCounts, MAX_RANGE_DAYS};
use loyalty_domain::kpi::{KpiInput, Kpis};
use loyalty_domain::{Day, FranchiseId, Program, RewardId, StoreId};
use serde::Serialize;

use crate::campaigns::CampaignResult;
use crate::model::Franchise;
use crate::ports::{DashboardRows, StateStore};
use crate::Result;

/// What a dashboard is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardQuery {
    pub from: Day,
    pub to: Day,
    /// Only this store's events.
    pub store: Option<StoreId>,
    /// Also the KPIs of the period of the same length just before.
    pub compare_previous: bool,
}

/// Why a query is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("{0} must be a date YYYY-MM-DD")]
    BadDate(&'static str),
    #[error("from ({from}) is after to ({to})")]
    Reversed { from: String, to: String },
    #[error("the range is {days} days; at most {max} (three years) are answered")]
    TooLong { days: u32, max: u32 },
}

impl DashboardQuery {
    /// Validates a query's parameters (dates `YYYY-MM-DD`, both inclusive).
    pub fn parse(
        from: &str,
        to: &str,
        store: Option<StoreId>,
        compare_previous: bool,
    ) -> Result<DashboardQuery, QueryError> {
        let from_day = Day::parse_iso(from).ok_or(QueryError::BadDate("from"))?;
        let to_day = Day::parse_iso(to).ok_or(QueryError::BadDate("to"))?;
        if from_day > to_day {
            return Err(QueryError::Reversed {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        let days = to_day.0 - from_day.0 + 1;
        if days > MAX_RANGE_DAYS {
            return Err(QueryError::TooLong {
                days,
                max: MAX_RANGE_DAYS,
            });
        }
        Ok(DashboardQuery {
            from: from_day,
            to: to_day,
            store,
            compare_previous,
        })
    }

    pub fn days(&self) -> u32 {
        self.to.0 - self.from.0 + 1
    }

    /// The period of the same length just before `from..=to` (shorter if it would start
    /// before 1970).
    fn before(from: Day, days: u32) -> (Day, Day) {
        let end = Day(from.0.saturating_sub(1));
        (Day(from.0.saturating_sub(days)), end)
    }
}

/// A period's KPIs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Period {
    pub from: String,
    pub to: String,
    pub kpis: Kpis,
}

/// One day of the chart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SeriesDay {
    pub day: String,
    pub member_purchases: u64,
    pub anonymous_purchases: u64,
    pub member_revenue_cents: u64,
    pub anonymous_revenue_cents: u64,
    pub refunded_cents: u64,
    pub enrolments: u64,
    pub points_issued: u64,
    pub points_redeemed: u64,
    pub active_members: u64,
}

/// One store of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreRow {
    pub store_id: StoreId,
    pub name: String,
    pub member_purchases: u64,
    pub anonymous_purchases: u64,
    pub member_revenue_cents: u64,
    pub anonymous_revenue_cents: u64,
    pub refunded_cents: u64,
    pub enrolments: u64,
    pub points_issued: u64,
    pub points_redeemed: u64,
    pub active_members: u64,
    pub repeat_members: u64,
    pub repeat_purchase_rate_pct: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierRow {
    pub name: String,
    pub members: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RewardRow {
    pub reward_id: RewardId,
    pub redemptions: u64,
}

/// The dashboard of a franchise for a range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dashboard {
    pub franchise_id: FranchiseId,
    pub from: String,
    pub to: String,
    pub store: Option<StoreId>,
    pub time_zone: String,
    pub kpis: Kpis,
    /// The period of the same length just before, when asked (`compare=previous`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Period>,
    pub series: Vec<SeriesDay>,
    pub stores: Vec<StoreRow>,
    pub tiers: Vec<TierRow>,
    pub top_rewards: Vec<RewardRow>,
    /// The program's segments (README "Segments"), franchise-wide: absent when it has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentRow>,
    /// The program's campaigns' results over the range (README "Campaigns"), franchise-wide
    /// whatever `store`: absent when it has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub campaigns: Vec<CampaignResult>,
}

/// A segment's members now, at the end of the day before the range and at the end of its
/// last day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentRow {
    pub name: String,
    pub members: i64,
    pub members_at_start: i64,
    pub members_at_end: i64,
}

/// How many rewards `top_rewards` lists.
const TOP_REWARDS: usize = 10;

/// The stored rows of a read, indexed by store and day for the computations (every sum is a
/// range of a sorted map, so a year of 50 stores costs one pass over its rows).
struct Rows {
    /// Totals by store, then day.
    by_store: BTreeMap<StoreId, BTreeMap<Day, DayTotals>>,
    /// Totals of every store by day.
    by_day: BTreeMap<Day, DayTotals>,
    visits: BTreeMap<Scope, BTreeMap<Day, PackedRow>>,
}

impl Rows {
    fn new(r: DashboardRows) -> Rows {
        let mut by_store: BTreeMap<StoreId, BTreeMap<Day, DayTotals>> = BTreeMap::new();
        let mut by_day: BTreeMap<Day, DayTotals> = BTreeMap::new();
        for (store, day, t) in r.totals {
            by_day.entry(day).or_default().add(&t);
            match by_store.entry(store).or_default().entry(day) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(t);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().add(&t),
            }
        }
        let mut visits: BTreeMap<Scope, BTreeMap<Day, PackedRow>> = BTreeMap::new();
        for (scope, day, row) in r.visits {
            match visits.entry(scope).or_default().entry(day) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(row);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().extend(&row),
            }
        }
        Rows {
            by_store,
            by_day,
            visits,
        }
    }

    /// The daily totals of `store` (all stores when `None`).
    fn days(&self, store: Option<&StoreId>) -> Option<&BTreeMap<Day, DayTotals>> {
        match store {
            None => Some(&self.by_day),
            Some(s) => self.by_store.get(s),
        }
    }

    /// Totals of `store` (all stores when `None`) summed over `from..=to`.
    fn totals(&self, store: Option<&StoreId>, from: Day, to: Day) -> DayTotals {
        let mut sum = DayTotals::default();
        if let Some(days) = self.days(store) {
            for t in days.range(from..=to).map(|(_, t)| t) {
                sum.add(t);
            }
        }
        sum
    }

    fn visits(&self, scope: &Scope, from: Day, to: Day) -> VisitCounts {
        let mut c = VisitCounts::default();
        if let Some(rows) = self.visits.get(scope) {
            for (d, r) in rows.range(from..=to) {
                c.add_packed(*d, r, from, to);
            }
        }
        c
    }

    fn kpis(&self, scope: &Scope, from: Day, to: Day, program: &Program) -> Kpis {
        let store = match scope {
            Scope::Franchise => None,
            Scope::Store(s) => Some(s),
        };
        let days = to.0 - from.0 + 1;
        let (pf, pt) = DashboardQuery::before(from, days);
        let previous_active = if from.0 == 0 {
            0
        } else {
            self.visits(scope, pf, pt).active
        };
        Kpis::of(&KpiInput {
            totals: &self.totals(store, from, to),
            visits: self.visits(scope, from, to),
            previous_active,
            days,
            expected_lifespan_years: program.expected_lifespan_years,
            monthly_fee_cents: program.monthly_fee_cents,
        })
    }
}

/// Reads and computes the dashboard of `franchise` (whose current program gives the time zone,
/// the expected lifespan and the costs) for `q`.
pub async fn dashboard(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
    q: &DashboardQuery,
) -> Result<Dashboard> {
    let days = q.days();
    // Retention needs the period before; the comparison needs the one before that too.
    let back = if q.compare_previous { 2 * days } else { days };
    let first = Day(q.from.0.saturating_sub(back));
    let rows = Rows::new(store.dashboard_rows(&franchise.id, first, q.to).await?);
    let scope = match &q.store {
        Some(s) => Scope::Store(s.clone()),
        None => Scope::Franchise,
    };
    let kpis = rows.kpis(&scope, q.from, q.to, program);
    let previous = q.compare_previous.then(|| {
        let (pf, pt) = DashboardQuery::before(q.from, days);
        Period {
            from: pf.iso(),
            to: pt.iso(),
            kpis: rows.kpis(&scope, pf, pt, program),
        }
    });
    let known = store.stores_of(&franchise.id).await?;
    let stores = store_rows(&rows, &known, q);
    let tiers = tier_rows(store.tier_counts(&franchise.id).await?, program);
    let mut top: Vec<RewardRow> = rows
        .totals(q.store.as_ref(), q.from, q.to)
        .rewards
        .into_iter()
        .map(|(reward_id, redemptions)| RewardRow {
            reward_id,
            redemptions,
        })
        .collect();
    top.sort_by(|a, b| {
        b.redemptions
            .cmp(&a.redemptions)
            .then(a.reward_id.cmp(&b.reward_id))
    });
    top.truncate(TOP_REWARDS);
    Ok(Dashboard {
        franchise_id: franchise.id.clone(),
        from: q.from.iso(),
        to: q.to.iso(),
        store: q.store.clone(),
        time_zone: program.time_zone.name().to_owned(),
        kpis,
        previous,
        series: series(&rows, &scope, q.store.as_ref(), q.from, q.to),
        stores,
        tiers,
        top_rewards: top,
        segments: segment_rows(store, franchise, program, q).await?,
        campaigns: campaign_rows(store, franchise, program, q).await?,
    })
}

/// One entry per day of the range, zeros included.
fn series(
    rows: &Rows,
    scope: &Scope,
    store: Option<&StoreId>,
    from: Day,
    to: Day,
) -> Vec<SeriesDay> {
    let days = rows.days(store);
    (from.0..=to.0)
        .map(Day)
        .map(|d| {
            let t = days.and_then(|m| m.get(&d)).cloned().unwrap_or_default();
            SeriesDay {
                day: d.iso(),
                member_purchases: t.member_purchases,
                anonymous_purchases: t.anonymous_purchases,
                member_revenue_cents: t.member_revenue_cents,
                anonymous_revenue_cents: t.anonymous_revenue_cents,
                refunded_cents: t.refunded_cents,
                enrolments: t.enrolments,
                points_issued: t.points_issued,
                points_redeemed: t.points_redeemed,
                active_members: rows.visits(scope, d, d).active,
            }
        })
        .collect()
}

/// The franchise's stores (only the asked one with `store`), with any store that has data.
fn store_rows(rows: &Rows, known: &[crate::model::Store], q: &DashboardQuery) -> Vec<StoreRow> {
    let mut names: BTreeMap<StoreId, String> = known
        .iter()
        .map(|s| (s.id.clone(), s.name.clone()))
        .collect();
    for s in rows.by_store.keys() {
        names.entry(s.clone()).or_insert_with(|| s.to_string());
    }
    names
        .into_iter()
        .filter(|(id, _)| q.store.as_ref().is_none_or(|s| s == id))
        .map(|(id, name)| {
            let t = rows.totals(Some(&id), q.from, q.to);
            let v = rows.visits(&Scope::Store(id.clone()), q.from, q.to);
            StoreRow {
                store_id: id,
                name,
                member_purchases: t.member_purchases,
                anonymous_purchases: t.anonymous_purchases,
                member_revenue_cents: t.member_revenue_cents,
                anonymous_revenue_cents: t.anonymous_revenue_cents,
                refunded_cents: t.refunded_cents,
                enrolments: t.enrolments,
                points_issued: t.points_issued,
                points_redeemed: t.points_redeemed,
                active_members: v.active,
                repeat_members: v.repeat,
                repeat_purchase_rate_pct: (v.active > 0).then(|| {
                    loyalty_domain::kpi::round2(v.repeat as f64 * 100.0 / v.active as f64)
                }),
            }
        })
        .collect()
}

/// The segments of the program over the range of `q` (none without segments).
async fn segment_rows(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
    q: &DashboardQuery,
) -> Result<Vec<SegmentRow>> {
    if program.segments.is_none() {
        return Ok(Vec::new());
    }
    let start = Day(q.from.0.saturating_sub(1));
    let sizes = crate::segments::segment_sizes(store, franchise, program, start, q.to).await?;
    Ok(sizes
        .segments
        .into_iter()
        .map(|s| SegmentRow {
            members_at_start: s.series.first().map_or(0, |d| d.size),
            members_at_end: s.series.last().map_or(0, |d| d.size),
            members: s.size,
            name: s.name,
        })
        .collect())
}

/// The results of the program's campaigns over the range of `q` (none without campaigns).
async fn campaign_rows(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
    q: &DashboardQuery,
) -> Result<Vec<CampaignResult>> {
    if program.campaigns.is_empty() {
        return Ok(Vec::new());
    }
    let r = crate::campaigns::campaign_results(store, franchise, program, q.from, q.to).await?;
    Ok(r.campaigns)
}

/// Members per tier, in the program's order (tiers it no longer has after them).
fn tier_rows(counts: Vec<(String, i64)>, program: &Program) -> Vec<TierRow> {
    let mut counts: BTreeMap<String, i64> = counts.into_iter().collect();
    let mut out: Vec<TierRow> = program
        .tiers
        .iter()
        .map(|t| TierRow {
            name: t.name.clone(),
            members: counts.remove(&t.name).unwrap_or(0),
        })
        .collect();
    out.extend(
        counts
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(name, members)| TierRow { name, members }),
    );
    out
}

/// The CSV of a range: a header, then one row per store per day (zeros included), with the
/// API's column names.
pub async fn dashboard_csv(
    store: &dyn StateStore,
    franchise: &Franchise,
    q: &DashboardQuery,
) -> Result<String> {
    let rows = Rows::new(store.dashboard_rows(&franchise.id, q.from, q.to).await?);
    let known = store.stores_of(&franchise.id).await?;
    let mut out = String::from(
        "day,store_id,store_name,member_purchases,anonymous_purchases,member_revenue_cents,\
         anonymous_revenue_cents,refunded_cents,enrolments,points_issued,points_redeemed,\
         points_expired,redemptions,active_members\n",
    );
    let mut stores: BTreeMap<StoreId, String> = known
        .iter()
        .map(|s| (s.id.clone(), s.name.clone()))
        .collect();
    for s in rows.by_store.keys() {
        stores.entry(s.clone()).or_insert_with(|| s.to_string());
    }
    for d in (q.from.0..=q.to.0).map(Day) {
        for (id, name) in &stores {
            if q.store.as_ref().is_some_and(|s| s != id) {
                continue;
            }
            let t = rows
                .by_store
                .get(id)
                .and_then(|m| m.get(&d))
                .cloned()
                .unwrap_or_default();
            let active = rows.visits(&Scope::Store(id.clone()), d, d).active;
            let fields = [
                d.iso(),
                id.to_string(),
                csv_field(name),
                t.member_purchases.to_string(),
                t.anonymous_purchases.to_string(),
                t.member_revenue_cents.to_string(),
                t.anonymous_revenue_cents.to_string(),
                t.refunded_cents.to_string(),
                t.enrolments.to_string(),
                t.points_issued.to_string(),
                t.points_redeemed.to_string(),
                t.points_expired.to_string(),
                t.redemptions.to_string(),
                active.to_string(),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
    }
    Ok(out)
}

/// A CSV field, quoted when it holds a separator, a quote or a line break; a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet does not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}
