//! The dashboards' aggregates in the embedded store: daily totals by (franchise, day, store),
//! visit rows by (franchise, day, scope), tier counts, and segment changes by (franchise,
//! segment, day), each merged with a batch's delta inside the batch's own write transaction,
//! so that an event counts exactly once.

use loyalty_core::ports::DashboardRows;
use loyalty_core::{Error, Result};
use loyalty_domain::dashboard::{
    decode_row, encode_row, merge_row, DashboardDelta, DayTotals, PackedRow, Scope, VisitRow,
};
use loyalty_domain::{Day, FranchiseId, StoreId};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{decode, unavailable};

/// (franchise, day, store) → [`DayTotals::encode`] (JSON in stores written before it).
const TOTALS: TableDefinition<(&str, u32, &str), &[u8]> = TableDefinition::new("dashboard_totals");
/// (franchise, day, scope key) → packed [`VisitRow`].
const VISITS: TableDefinition<(&str, u32, &str), &[u8]> = TableDefinition::new("dashboard_visits");
/// (franchise, tier) → members.
const TIERS: TableDefinition<(&str, &str), i64> = TableDefinition::new("dashboard_tiers");
/// (franchise, segment, day) → the change of the segment's size that day (never 0: a sum that
/// reaches 0 is removed).
const SEGMENTS: TableDefinition<(&str, &str, u32), i64> =
    TableDefinition::new("dashboard_segments");

/// Creates the tables, so that reads of a new store find them.
pub(super) fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(TOTALS).map_err(unavailable)?;
    tx.open_table(VISITS).map_err(unavailable)?;
    tx.open_table(TIERS).map_err(unavailable)?;
    tx.open_table(SEGMENTS).map_err(unavailable)?;
    Ok(())
}

/// Adds `delta` to the stored aggregates, in the caller's transaction.
pub(super) fn apply(tx: &WriteTransaction, delta: &DashboardDelta) -> Result<()> {
    if delta.is_empty() {
        return Ok(());
    }
    let mut totals = tx.open_table(TOTALS).map_err(unavailable)?;
    for ((f, store, day), add) in &delta.totals {
        let key = (f.as_str(), day.0, store.as_str());
        let mut t: DayTotals = match totals.get(key).map_err(unavailable)? {
            Some(v) => totals_of(v.value())?,
            None => DayTotals::default(),
        };
        t.add(add);
        totals
            .insert(key, t.encode().as_slice())
            .map_err(unavailable)?;
    }
    let mut visits = tx.open_table(VISITS).map_err(unavailable)?;
    for ((f, scope, day), add) in &delta.visits {
        let key = (f.as_str(), day.0, scope.key());
        let mut row = match visits.get(key).map_err(unavailable)? {
            Some(v) => row_of(v.value())?,
            None => VisitRow::new(),
        };
        merge_row(&mut row, add);
        if row.is_empty() {
            visits.remove(key).map_err(unavailable)?;
        } else {
            visits
                .insert(key, encode_row(&row).as_slice())
                .map_err(unavailable)?;
        }
    }
    let mut tiers = tx.open_table(TIERS).map_err(unavailable)?;
    for ((f, tier), add) in &delta.tiers {
        let key = (f.as_str(), tier.as_str());
        let n = tiers
            .get(key)
            .map_err(unavailable)?
            .map_or(0, |v| v.value());
        tiers
            .insert(key, n.saturating_add(*add))
            .map_err(unavailable)?;
    }
    apply_segments(tx, delta)
}

/// Adds the segments' changes of `delta`, removing the sums that reach 0.
fn apply_segments(tx: &WriteTransaction, delta: &DashboardDelta) -> Result<()> {
    let mut segments = tx.open_table(SEGMENTS).map_err(unavailable)?;
    for ((f, name, day), add) in &delta.segments {
        let key = (f.as_str(), name.as_str(), day.0);
        let n = segments
            .get(key)
            .map_err(unavailable)?
            .map_or(0, |v| v.value())
            .saturating_add(*add);
        if n == 0 {
            segments.remove(key).map_err(unavailable)?;
        } else {
            segments.insert(key, n).map_err(unavailable)?;
        }
    }
    Ok(())
}

/// The segments' changes of `franchise`: (segment, day, change).
pub(super) fn segments(
    db: &redb::Database,
    franchise: &FranchiseId,
) -> Result<Vec<(String, Day, i64)>> {
    let tx = db.begin_read().map_err(unavailable)?;
    let t = tx.open_table(SEGMENTS).map_err(unavailable)?;
    let f = franchise.as_str();
    let mut out = Vec::new();
    for row in t
        .range((f, "", 0)..=(f, "\u{10ffff}", u32::MAX))
        .map_err(unavailable)?
    {
        let (k, v) = row.map_err(unavailable)?;
        let (_, name, day) = k.value();
        out.push((name.to_owned(), Day(day), v.value()));
    }
    Ok(out)
}

/// Stored totals: the binary form, or JSON as the first version wrote them.
fn totals_of(bytes: &[u8]) -> Result<DayTotals> {
    match bytes.first() {
        Some(b'{') => decode("dashboard totals", bytes),
        _ => DayTotals::decode(bytes).ok_or_else(|| Error::Corrupt("dashboard totals".into())),
    }
}

fn row_of(bytes: &[u8]) -> Result<VisitRow> {
    decode_row(bytes).ok_or_else(|| Error::Corrupt("dashboard visit row".into()))
}

/// Every aggregate of `franchise` for the days `from..=to`.
pub(super) fn rows(
    db: &redb::Database,
    franchise: &FranchiseId,
    from: Day,
    to: Day,
) -> Result<DashboardRows> {
    let tx = db.begin_read().map_err(unavailable)?;
    let f = franchise.as_str();
    let mut out = DashboardRows::default();
    let totals = tx.open_table(TOTALS).map_err(unavailable)?;
    for row in totals
        .range((f, from.0, "")..=(f, to.0, "\u{10ffff}"))
        .map_err(unavailable)?
    {
        let (k, v) = row.map_err(unavailable)?;
        let (_, day, store) = k.value();
        let store = StoreId::parse(store).map_err(|e| Error::Corrupt(format!("store id: {e}")))?;
        out.totals.push((store, Day(day), totals_of(v.value())?));
    }
    let visits = tx.open_table(VISITS).map_err(unavailable)?;
    for row in visits
        .range((f, from.0, "")..=(f, to.0, "\u{10ffff}"))
        .map_err(unavailable)?
    {
        let (k, v) = row.map_err(unavailable)?;
        let (_, day, scope) = k.value();
        let scope = Scope::from_key(scope)
            .ok_or_else(|| Error::Corrupt(format!("dashboard scope {scope:?}")))?;
        let row = PackedRow::from_bytes(v.value())
            .ok_or_else(|| Error::Corrupt("dashboard visit row".into()))?;
        out.visits.push((scope, Day(day), row));
    }
    Ok(out)
}

/// Members by tier of `franchise`.
pub(super) fn tiers(db: &redb::Database, franchise: &FranchiseId) -> Result<Vec<(String, i64)>> {
    let tx = db.begin_read().map_err(unavailable)?;
    let t = tx.open_table(TIERS).map_err(unavailable)?;
    let f = franchise.as_str();
    let mut out = Vec::new();
    for row in t.range((f, "")..=(f, "\u{10ffff}")).map_err(unavailable)? {
        let (k, v) = row.map_err(unavailable)?;
        out.push((k.value().1.to_owned(), v.value()));
    }
    Ok(out)
}

/// Replaces every aggregate of `franchise` with `rows`, in one transaction.
pub(super) fn replace(
    db: &redb::Database,
    franchise: &FranchiseId,
    rows: &DashboardDelta,
) -> Result<()> {
    let f = franchise.as_str();
    let tx = db.begin_write().map_err(unavailable)?;
    {
        let mut totals = tx.open_table(TOTALS).map_err(unavailable)?;
        let old: Vec<(u32, String)> = totals
            .range((f, 0, "")..=(f, u32::MAX, "\u{10ffff}"))
            .map_err(unavailable)?
            .map(|r| r.map(|(k, _)| (k.value().1, k.value().2.to_owned())))
            .collect::<std::result::Result<_, _>>()
            .map_err(unavailable)?;
        for (day, store) in &old {
            totals
                .remove((f, *day, store.as_str()))
                .map_err(unavailable)?;
        }
        let mut visits = tx.open_table(VISITS).map_err(unavailable)?;
        let old: Vec<(u32, String)> = visits
            .range((f, 0, "")..=(f, u32::MAX, "\u{10ffff}"))
            .map_err(unavailable)?
            .map(|r| r.map(|(k, _)| (k.value().1, k.value().2.to_owned())))
            .collect::<std::result::Result<_, _>>()
            .map_err(unavailable)?;
        for (day, scope) in &old {
            visits
                .remove((f, *day, scope.as_str()))
                .map_err(unavailable)?;
        }
        let mut tiers = tx.open_table(TIERS).map_err(unavailable)?;
        let old: Vec<String> = tiers
            .range((f, "")..=(f, "\u{10ffff}"))
            .map_err(unavailable)?
            .map(|r| r.map(|(k, _)| k.value().1.to_owned()))
            .collect::<std::result::Result<_, _>>()
            .map_err(unavailable)?;
        for tier in &old {
            tiers.remove((f, tier.as_str())).map_err(unavailable)?;
        }
        let mut segments = tx.open_table(SEGMENTS).map_err(unavailable)?;
        let old: Vec<(String, u32)> = segments
            .range((f, "", 0)..=(f, "\u{10ffff}", u32::MAX))
            .map_err(unavailable)?
            .map(|r| r.map(|(k, _)| (k.value().1.to_owned(), k.value().2)))
            .collect::<std::result::Result<_, _>>()
            .map_err(unavailable)?;
        for (name, day) in &old {
            segments
                .remove((f, name.as_str(), *day))
                .map_err(unavailable)?;
        }
    }
    let mine = DashboardDelta {
        totals: rows
            .totals
            .iter()
            .filter(|((fr, _, _), _)| fr == franchise)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        visits: rows
            .visits
            .iter()
            .filter(|((fr, _, _), _)| fr == franchise)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tiers: rows
            .tiers
            .iter()
            .filter(|((fr, _), _)| fr == franchise)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        segments: rows
            .segments
            .iter()
            .filter(|((fr, _, _), _)| fr == franchise)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    };
    apply(&tx, &mine)?;
    tx.commit().map_err(unavailable)
}
