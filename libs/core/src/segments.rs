//! Segments for headquarters (README "Segments"): each segment's size now and over a range of
//! days, from the changes the engine's commits add ([`StateStore::segment_rows`]), and the
//! export of a segment's members, page by page.
//!
//! A size is the number of members counted in the segment: each member is counted in the
//! segments of the program at its latest change, on the local day of its clock (the
//! scheduler moves members on the days time alone changes them). A program change reaches a
//! member's count at the member's next change, as it reaches its due time.

use std::collections::BTreeMap;

use loyalty_domain::segments::{mask_phone, segments_of, BUILT_IN};
use loyalty_domain::{Day, FranchiseId, MemberId, MemberState, Program};
use serde::Serialize;

use crate::model::Franchise;
use crate::ports::StateStore;
use crate::Result;

/// The longest series answered: a year (one of them leap).
pub const MAX_SERIES_DAYS: u32 = 366;
/// Members read per page of an export's scan.
const SCAN_PAGE: usize = 500;
/// Pages one export request scans at most: a page of an export may hold fewer members than
/// asked (even none) and still have a `next_after` to continue from.
const SCAN_PAGES: usize = 20;
/// The largest export page.
pub const MAX_EXPORT_LIMIT: usize = 500;

/// One day of a segment's series: its size at the end of that local day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SizeOn {
    pub date: String,
    pub size: i64,
}

/// A segment's size now and over the range asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentSize {
    pub name: String,
    /// `built_in` or `custom`.
    pub kind: &'static str,
    pub size: i64,
    pub series: Vec<SizeOn>,
}

/// `GET /v1/franchises/{fid}/segments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentSizes {
    pub franchise_id: FranchiseId,
    pub time_zone: String,
    pub from: String,
    pub to: String,
    /// Every segment of the current program (none when it has no `segments` section).
    pub segments: Vec<SegmentSize>,
}

/// The sizes of the segments of `franchise` (whose current program is `program`) now, and at
/// the end of each local day of `from..=to`.
pub async fn segment_sizes(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
    from: Day,
    to: Day,
) -> Result<SegmentSizes> {
    let mut changes: BTreeMap<String, BTreeMap<Day, i64>> = BTreeMap::new();
    for (name, day, n) in store.segment_rows(&franchise.id).await? {
        let d = changes.entry(name).or_default().entry(day).or_default();
        *d = d.saturating_add(n);
    }
    let names = program
        .segments
        .as_ref()
        .map(|s| s.names())
        .unwrap_or_default();
    let segments = names
        .into_iter()
        .map(|name| {
            let empty = BTreeMap::new();
            let days = changes.get(name).unwrap_or(&empty);
            SegmentSize {
                name: name.to_owned(),
                kind: if BUILT_IN.contains(&name) {
                    "built_in"
                } else {
                    "custom"
                },
                size: days.values().fold(0, |a, n| a.saturating_add(*n)),
                series: series(days, from, to),
            }
        })
        .collect();
    Ok(SegmentSizes {
        franchise_id: franchise.id.clone(),
        time_zone: program.time_zone.name().to_owned(),
        from: from.iso(),
        to: to.iso(),
        segments,
    })
}

/// The size at the end of each day of `from..=to`: the sum of the changes up to that day.
fn series(changes: &BTreeMap<Day, i64>, from: Day, to: Day) -> Vec<SizeOn> {
    let mut size = changes
        .range(..from)
        .fold(0i64, |a, (_, n)| a.saturating_add(*n));
    (from.0..=to.0)
        .map(|d| {
            size = size.saturating_add(changes.get(&Day(d)).copied().unwrap_or(0));
            SizeOn {
                date: Day(d).iso(),
                size,
            }
        })
        .collect()
}

/// A member as an export lists it: the phone masked unless asked in full, no other
/// personal data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportedMember {
    pub member_id: MemberId,
    pub phone: String,
    pub tier: String,
    pub visits: u64,
    pub spend_cents: u64,
    pub points: u64,
    /// Local dates `YYYY-MM-DD`.
    pub enrolled_on: String,
    pub last_visit_on: Option<String>,
    pub segments: Vec<String>,
}

/// A page of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportPage {
    pub segment: String,
    pub phone: &'static str,
    pub members: Vec<ExportedMember>,
    /// Where the next page starts (`after`); `None` when every member was read.
    pub next_after: Option<MemberId>,
}

/// What an export is asked for.
#[derive(Clone, Debug)]
pub struct ExportQuery<'a> {
    pub segment: &'a str,
    pub after: Option<MemberId>,
    pub limit: usize,
    pub full_phone: bool,
}

/// One page of the members of `franchise` in `q.segment` (a segment of `program`), in the
/// store's scan order after `q.after`: at most `q.limit` members, from at most
/// `SCAN_PAGES` pages of the scan.
pub async fn export_page(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
    q: &ExportQuery<'_>,
) -> Result<ExportPage> {
    let mut members = Vec::new();
    let mut cursor = q.after.clone();
    for _ in 0..SCAN_PAGES {
        let page = store.members_after(cursor.as_ref(), SCAN_PAGE).await?;
        for m in &page {
            cursor = Some(m.member_id.clone());
            if let Some(e) = exported(m, franchise, program, q) {
                members.push(e);
                if members.len() >= q.limit {
                    return Ok(page_of(q, members, cursor));
                }
            }
        }
        if page.len() < SCAN_PAGE {
            return Ok(page_of(q, members, None));
        }
    }
    Ok(page_of(q, members, cursor))
}

fn page_of(
    q: &ExportQuery<'_>,
    members: Vec<ExportedMember>,
    next: Option<MemberId>,
) -> ExportPage {
    ExportPage {
        segment: q.segment.to_owned(),
        phone: if q.full_phone { "full" } else { "masked" },
        members,
        next_after: next,
    }
}

/// `m` as exported, if it is a member of `franchise` in the segment.
fn exported(
    m: &MemberState,
    franchise: &Franchise,
    program: &Program,
    q: &ExportQuery<'_>,
) -> Option<ExportedMember> {
    if m.franchise_id != franchise.id {
        return None;
    }
    let segments = segments_of(m, program, program.local_day(m.clock));
    if !segments.iter().any(|s| s == q.segment) {
        return None;
    }
    let phone = m.profile.phone.as_str();
    Some(ExportedMember {
        member_id: m.member_id.clone(),
        phone: if q.full_phone {
            phone.to_owned()
        } else {
            mask_phone(phone)
        },
        tier: m.tier.clone(),
        visits: m.visits,
        spend_cents: m.spend_cents,
        points: m.points,
        enrolled_on: program.local_day(m.enrolled_at).iso(),
        last_visit_on: m.last_visit.map(|t| program.local_day(t).iso()),
        segments,
    })
}
