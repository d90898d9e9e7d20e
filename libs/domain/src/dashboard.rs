//! Headquarters' dashboards: the daily aggregates that applied events add to, and the KPIs
//! computed from them (seed 001's formulas).
//!
//! Every figure is additive over days except the member counts (active, repeat, new), which
//! count distinct members. Those come from [`VisitKey`]s: each purchase is recorded on its day
//! with the days of the same member's two previous purchases (franchise-wide, and at the same
//! store), so that for any range `[from, to]`:
//! - a member is active once, on its first purchase in the range: the purchase whose previous
//!   one is before `from` (or which has none);
//! - a member is a repeat customer once, on its second purchase in the range: the purchase whose
//!   previous one is in the range and whose one before that is not;
//! - a member is new when its first purchase ever is in the range.
//!
//! A member's purchase days ([`PurchaseDays`]) are kept in the member's state, in order of
//! POS time, so that a purchase replayed late by an offline till takes its place and corrects
//! the keys of the purchases after it (deltas of -1 and +1). The aggregates are then the same
//! whatever the order in which a member's purchases arrive (within [`HORIZON_DAYS`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::segments::SegmentMove;
use crate::{Day, FranchiseId, LedgerEntry, LedgerKind, Outcome, Program, RewardId, StoreId};

/// How far back the member counts look: the longest range (3 years, [`MAX_RANGE_DAYS`]) and the
/// period before it that retention compares with. A previous purchase further back than this
/// is "before any range", and a purchase arriving more than this behind its member's newest is
/// counted in every sum but not in the member counts.
pub const HORIZON_DAYS: u32 = 2 * MAX_RANGE_DAYS;

/// The longest range a dashboard answers: three years (one of them leap).
pub const MAX_RANGE_DAYS: u32 = 3 * 365 + 1;

/// Additive counters of one store on one day (or summed over days and stores).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotals {
    pub member_purchases: u64,
    pub anonymous_purchases: u64,
    pub member_revenue_cents: u64,
    pub anonymous_revenue_cents: u64,
    pub refunded_cents: u64,
    pub enrolments: u64,
    pub points_issued: u64,
    pub points_redeemed: u64,
    pub points_expired: u64,
    pub redemptions: u64,
    /// What the redemptions cost the franchise (each reward's `cost_cents` when redeemed).
    pub reward_cost_cents: u64,
    /// Redemptions by reward.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewards: BTreeMap<RewardId, u64>,
}

impl DayTotals {
    /// Adds `other` to these counters (saturating: a report never wraps).
    pub fn add(&mut self, other: &DayTotals) {
        let pairs = [
            (&mut self.member_purchases, other.member_purchases),
            (&mut self.anonymous_purchases, other.anonymous_purchases),
            (&mut self.member_revenue_cents, other.member_revenue_cents),
            (
                &mut self.anonymous_revenue_cents,
                other.anonymous_revenue_cents,
            ),
            (&mut self.refunded_cents, other.refunded_cents),
            (&mut self.enrolments, other.enrolments),
            (&mut self.points_issued, other.points_issued),
            (&mut self.points_redeemed, other.points_redeemed),
            (&mut self.points_expired, other.points_expired),
            (&mut self.redemptions, other.redemptions),
            (&mut self.reward_cost_cents, other.reward_cost_cents),
        ];
        for (mine, theirs) in pairs {
            *mine = mine.saturating_add(theirs);
        }
        for (r, n) in &other.rewards {
            match self.rewards.get_mut(r) {
                Some(mine) => *mine = mine.saturating_add(*n),
                None => {
                    self.rewards.insert(r.clone(), *n);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == DayTotals::default()
    }

    fn counters(&self) -> [u64; 11] {
        [
            self.member_purchases,
            self.anonymous_purchases,
            self.member_revenue_cents,
            self.anonymous_revenue_cents,
            self.refunded_cents,
            self.enrolments,
            self.points_issued,
            self.points_redeemed,
            self.points_expired,
            self.redemptions,
            self.reward_cost_cents,
        ]
    }

    /// A compact binary form for storage: a version byte (1), the 11 counters (u64 LE), the
    /// number of rewards (u16 LE), then each reward as (id length u8, id, count u64 LE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 88 + 2 + self.rewards.len() * 24);
        out.push(TOTALS_V1);
        for c in self.counters() {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let n = self.rewards.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        for (r, count) in self.rewards.iter().take(n) {
            let id = r.as_str().as_bytes();
            out.push(id.len().min(255) as u8);
            out.extend_from_slice(&id[..id.len().min(255)]);
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    /// The totals of [`DayTotals::encode`]; `None` if the bytes are not such totals.
    pub fn decode(b: &[u8]) -> Option<DayTotals> {
        let mut r = Reader(b);
        if r.take(1)?[0] != TOTALS_V1 {
            return None;
        }
        let mut c = [0u64; 11];
        for v in &mut c {
            *v = r.u64()?;
        }
        let mut rewards = BTreeMap::new();
        let n = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        for _ in 0..n {
            let len = r.take(1)?[0] as usize;
            let id = std::str::from_utf8(r.take(len)?).ok()?;
            let id = RewardId::parse(id).ok()?;
            rewards.insert(id, r.u64()?);
        }
        if !r.0.is_empty() {
            return None;
        }
        let [member_purchases, anonymous_purchases, member_revenue_cents, anonymous_revenue_cents, refunded_cents, enrolments, points_issued, points_redeemed, points_expired, redemptions, reward_cost_cents] =
            c;
        Some(DayTotals {
            member_purchases,
            anonymous_purchases,
            member_revenue_cents,
            anonymous_revenue_cents,
            refunded_cents,
            enrolments,
            points_issued,
            points_redeemed,
            points_expired,
            redemptions,
            reward_cost_cents,
            rewards,
        })
    }
}

/// The version byte of [`DayTotals::encode`] (a JSON object would start with `{`).
const TOTALS_V1: u8 = 1;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Whose purchase days a [`VisitKey`] is about: the member's purchases anywhere in the
/// franchise, or at one store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Franchise,
    Store(StoreId),
}

impl Scope {
    /// The store key of a scope in storage: empty for the franchise (no store id is empty).
    pub fn key(&self) -> &str {
        match self {
            Scope::Franchise => "",
            Scope::Store(s) => s.as_str(),
        }
    }

    /// The scope of a storage key.
    pub fn from_key(key: &str) -> Option<Scope> {
        if key.is_empty() {
            Some(Scope::Franchise)
        } else {
            StoreId::parse(key).ok().map(Scope::Store)
        }
    }
}

/// One purchase's place among its member's purchases: how many days before it the member's
/// previous purchase and the one before that were, `None` when there is none (or it is more
/// than [`HORIZON_DAYS`] back, which no range can tell apart from none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VisitKey {
    pub prev: Option<u16>,
    pub prev2: Option<u16>,
}

impl VisitKey {
    fn of(day: Day, prev: Option<Day>, prev2: Option<Day>) -> VisitKey {
        let gap = |p: Option<Day>| {
            p.map(|p| day.0.saturating_sub(p.0))
                .filter(|g| *g <= HORIZON_DAYS)
                .map(|g| g as u16)
        };
        VisitKey {
            prev: gap(prev),
            prev2: gap(prev2),
        }
    }

    /// Packs the key in a `u32` (each gap + 1, 0 for none), for compact storage.
    pub fn pack(self) -> u32 {
        let g = |x: Option<u16>| x.map_or(0, |v| u32::from(v) + 1);
        (g(self.prev) << 16) | g(self.prev2)
    }

    pub fn unpack(v: u32) -> VisitKey {
        let g = |x: u32| (x != 0).then(|| (x - 1) as u16);
        VisitKey {
            prev: g(v >> 16),
            prev2: g(v & 0xffff),
        }
    }
}

/// The visit keys of one scope on one day, with their counts.
pub type VisitRow = BTreeMap<VisitKey, i64>;

/// A change of one visit count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisitDelta {
    pub scope: Scope,
    pub day: Day,
    pub key: VisitKey,
    pub n: i64,
}

/// Distinct members of a range, from visit keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitCounts {
    /// Members with at least one purchase in the range.
    pub active: u64,
    /// Members with at least two.
    pub repeat: u64,
    /// Active members whose first purchase (in the scope) is in the range.
    pub new: u64,
}

impl VisitCounts {
    /// Counts the keys of `day` (with multiplicity `n`) into the range `[from, to]`.
    pub fn add(&mut self, day: Day, key: VisitKey, n: i64, from: Day, to: Day) {
        if day < from || day > to || n <= 0 {
            return;
        }
        let n = n as u64;
        let back = |g: Option<u16>| g.map(|g| Day(day.0.saturating_sub(u32::from(g))));
        let (p1, p2) = (back(key.prev), back(key.prev2));
        match p1 {
            None => {
                self.active += n;
                self.new += n;
            }
            Some(p1) if p1 < from => self.active += n,
            Some(_) if p2.is_none_or(|p2| p2 < from) => self.repeat += n,
            Some(_) => {}
        }
    }

    /// Counts every key of `rows` (day, row) into `[from, to]`.
    pub fn of<'a>(rows: impl IntoIterator<Item = (Day, &'a VisitRow)>, from: Day, to: Day) -> Self {
        let mut c = VisitCounts::default();
        for (day, row) in rows {
            for (key, n) in row {
                c.add(day, *key, *n, from, to);
            }
        }
        c
    }
}

/// A member's purchase days (local days, sorted, one entry per purchase), by store.
pub type PurchaseDays = BTreeMap<StoreId, Vec<Day>>;

/// Records a purchase of the member on `day` at `store` and returns the changes of visit counts
/// it makes, in both scopes (the franchise and the store). A purchase more than
/// [`HORIZON_DAYS`] behind the member's newest changes no count.
pub fn record_purchase(days: &mut PurchaseDays, store: &StoreId, day: Day) -> Vec<VisitDelta> {
    let newest = days.values().filter_map(|d| d.last()).max().copied();
    let newest = newest.map_or(day, |n| n.max(day));
    let floor = Day(newest.0.saturating_sub(HORIZON_DAYS));
    if day < floor {
        return Vec::new();
    }
    // A member who only ever bought at this store has the same days in both scopes: its
    // franchise changes are the store's (most members; no merged list to build).
    let one_store = days.keys().all(|s| s == store);
    let mut out = Vec::new();
    if !one_store {
        let mut all: Vec<Day> = days.values().flatten().copied().collect();
        all.sort_unstable();
        out = insert(&mut all, day, Scope::Franchise);
    }
    let mine = days.entry(store.clone()).or_default();
    let at_store = insert(mine, day, Scope::Store(store.clone()));
    if one_store {
        out = at_store
            .iter()
            .map(|v| VisitDelta {
                scope: Scope::Franchise,
                ..v.clone()
            })
            .collect();
    }
    out.extend(at_store);
    for list in days.values_mut() {
        prune(list, floor);
    }
    out
}

/// Inserts `day` into the sorted `list` (after the days equal to it) and returns the changes
/// of the keys of the new purchase and of the two after it.
fn insert(list: &mut Vec<Day>, day: Day, scope: Scope) -> Vec<VisitDelta> {
    let pos = list.partition_point(|d| *d <= day);
    let key_at = |l: &[Day], i: usize| {
        let prev = i.checked_sub(1).map(|j| l[j]);
        let prev2 = i.checked_sub(2).map(|j| l[j]);
        (l[i], VisitKey::of(l[i], prev, prev2))
    };
    let mut changes: BTreeMap<(Day, VisitKey), i64> = BTreeMap::new();
    for i in pos..(pos + 2).min(list.len()) {
        *changes.entry(key_at(list, i)).or_default() -= 1;
    }
    list.insert(pos, day);
    for i in pos..(pos + 3).min(list.len()) {
        *changes.entry(key_at(list, i)).or_default() += 1;
    }
    changes
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|((day, key), n)| VisitDelta {
            scope: scope.clone(),
            day,
            key,
            n,
        })
        .collect()
}

/// Drops the days before `floor` but the last two of them (the keys of the days after need
/// them).
fn prune(list: &mut Vec<Day>, floor: Day) {
    let before = list.partition_point(|d| *d < floor);
    if before > 2 {
        list.drain(..before - 2);
    }
}

/// A change of the number of members in a tier (`from` is `None` for a new member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierMove {
    pub from: Option<String>,
    pub to: String,
}

/// What one applied event changes in its franchise's dashboards.
pub struct EventFacts<'a> {
    pub franchise: &'a FranchiseId,
    pub store: &'a StoreId,
    /// The local day of the event's POS time.
    pub day: Day,
    pub program: &'a Program,
    pub outcome: &'a Outcome,
    pub entries: &'a [LedgerEntry],
    pub visits: &'a [VisitDelta],
    pub tier: Option<&'a TierMove>,
    pub segments: Option<&'a SegmentMove>,
}

/// Changes of the dashboards' aggregates, merged over a batch of events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DashboardDelta {
    pub totals: BTreeMap<(FranchiseId, StoreId, Day), DayTotals>,
    pub visits: BTreeMap<(FranchiseId, Scope, Day), VisitRow>,
    pub tiers: BTreeMap<(FranchiseId, String), i64>,
    /// Changes of segment sizes by the local day they happened on: a segment's size on a day
    /// is the sum of its changes up to that day (README "Segments").
    pub segments: BTreeMap<(FranchiseId, String, Day), i64>,
}

impl DashboardDelta {
    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
            && self.visits.is_empty()
            && self.tiers.is_empty()
            && self.segments.is_empty()
    }

    fn totals(&mut self, f: &FranchiseId, store: &StoreId, day: Day) -> &mut DayTotals {
        self.totals
            .entry((f.clone(), store.clone(), day))
            .or_default()
    }

    /// Adds what one applied event changes. Changes that cancel out may leave zero entries:
    /// call [`DashboardDelta::tidy`] once the batch is complete.
    pub fn add_event(&mut self, e: &EventFacts<'_>) {
        self.add_outcome(e.franchise, e.store, e.day, e.program, e.outcome);
        self.add_entries(e.franchise, e.program, e.entries);
        self.add_visits(e.franchise, e.visits);
        if let Some(m) = e.tier {
            self.add_tier(e.franchise, m.from.as_deref(), -1);
            self.add_tier(e.franchise, Some(&m.to), 1);
        }
        if let Some(m) = e.segments {
            for s in &m.left {
                self.add_segment(e.franchise, s, m.day, -1);
            }
            for s in &m.joined {
                self.add_segment(e.franchise, s, m.day, 1);
            }
        }
    }

    /// Adds what one event changed in a campaign's results on `day`. They are kept in the
    /// daily series the segments' sizes are kept in (one table in every store), under the
    /// names [`campaign_series`] gives: no custom segment can have them.
    pub fn add_campaign(&mut self, f: &FranchiseId, t: &crate::campaigns::CampaignTally, day: Day) {
        for (counter, n) in [
            ("fired", t.fired),
            ("messages", t.messages),
            ("redeemed", t.redeemed),
            ("revenue_cents", t.revenue_cents),
        ] {
            if n != 0 {
                self.add_segment(f, &campaign_series(&t.campaign_id, counter), day, n);
            }
        }
    }

    /// Adds `n` members to `segment` on `day`.
    pub fn add_segment(&mut self, f: &FranchiseId, segment: &str, day: Day, n: i64) {
        *self
            .segments
            .entry((f.clone(), segment.to_owned(), day))
            .or_default() += n;
    }

    /// What an event's recorded outcome adds at its store on its day.
    pub fn add_outcome(
        &mut self,
        f: &FranchiseId,
        store: &StoreId,
        day: Day,
        program: &Program,
        outcome: &Outcome,
    ) {
        if matches!(
            outcome,
            Outcome::Enrolled { created: false }
                | Outcome::Erased { .. }
                | Outcome::Held { .. }
                | Outcome::Advanced { .. }
                | Outcome::Rejected(_)
                | Outcome::ConsentChanged { .. }
        ) {
            return;
        }
        let t = self.totals(f, store, day);
        match outcome {
            Outcome::Enrolled { created: true } => t.enrolments += 1,
            Outcome::Purchase(p) => {
                t.member_purchases += 1;
                t.member_revenue_cents =
                    t.member_revenue_cents.saturating_add(p.amount_cents.get());
                // Refunds held for it (an offline till's) apply within the purchase.
                t.refunded_cents = t.refunded_cents.saturating_add(p.held_refunded_cents);
            }
            Outcome::AnonymousSale { amount_cents } => {
                t.anonymous_purchases += 1;
                t.anonymous_revenue_cents =
                    t.anonymous_revenue_cents.saturating_add(amount_cents.get());
            }
            Outcome::Refund { amount_cents, .. } => {
                t.refunded_cents = t.refunded_cents.saturating_add(amount_cents.get());
            }
            Outcome::Redemption { reward_id, .. } => {
                t.redemptions += 1;
                *t.rewards.entry(reward_id.clone()).or_default() += 1;
                let cost = program.reward(reward_id).map_or(0, |r| r.cost_cents);
                t.reward_cost_cents = t.reward_cost_cents.saturating_add(cost);
            }
            // A cancelled redemption stays counted on its day (the totals only grow), and so do
            // its points: the `redeem` entry giving them back is not counted. A code's
            // redemption is counted when it is issued, its use at the till is not counted again.
            Outcome::Enrolled { created: false }
            | Outcome::CodeConsumed { .. }
            | Outcome::Erased { .. }
            | Outcome::Held { .. }
            | Outcome::Advanced { .. }
            | Outcome::RedemptionCancelled { .. }
            | Outcome::Rejected(_)
            | Outcome::ConsentChanged { .. } => {}
        }
    }

    /// What ledger entries add: points issued, redeemed and expired, at each entry's store on
    /// its local day.
    pub fn add_entries(&mut self, f: &FranchiseId, program: &Program, entries: &[LedgerEntry]) {
        for entry in entries {
            let day = program.local_day(entry.at);
            let t = self.totals(f, &entry.store_id, day);
            let magnitude = entry.points.unsigned_abs();
            match entry.kind {
                LedgerKind::Earn if entry.points > 0 => {
                    t.points_issued = t.points_issued.saturating_add(magnitude)
                }
                // A cancellation's entry gives points back: the totals only grow, so the
                // redemption stays counted on its day.
                LedgerKind::Redeem if entry.points < 0 => {
                    t.points_redeemed = t.points_redeemed.saturating_add(magnitude)
                }
                LedgerKind::Expire => t.points_expired = t.points_expired.saturating_add(magnitude),
                _ => {}
            }
        }
    }

    /// Adds changes of visit counts.
    pub fn add_visits(&mut self, f: &FranchiseId, visits: &[VisitDelta]) {
        for v in visits {
            let row = self
                .visits
                .entry((f.clone(), v.scope.clone(), v.day))
                .or_default();
            let n = row.entry(v.key).or_default();
            *n += v.n;
            if *n == 0 {
                row.remove(&v.key);
            }
        }
    }

    /// Adds `n` members to `tier` (nothing for `None`).
    pub fn add_tier(&mut self, f: &FranchiseId, tier: Option<&str>, n: i64) {
        if let Some(tier) = tier {
            *self.tiers.entry((f.clone(), tier.to_owned())).or_default() += n;
        }
    }

    /// Drops what adds nothing.
    pub fn tidy(&mut self) {
        self.visits.retain(|_, row| !row.is_empty());
        self.tiers.retain(|_, n| *n != 0);
        self.segments.retain(|_, n| *n != 0);
        self.totals.retain(|_, t| !t.is_empty());
    }

    /// Merges another delta into this one.
    pub fn merge(&mut self, other: DashboardDelta) {
        for (k, t) in other.totals {
            self.totals.entry(k).or_default().add(&t);
        }
        for (k, row) in other.visits {
            let mine = self.visits.entry(k).or_default();
            merge_row(mine, &row);
        }
        for (k, n) in other.tiers {
            *self.tiers.entry(k).or_default() += n;
        }
        for (k, n) in other.segments {
            *self.segments.entry(k).or_default() += n;
        }
        self.visits.retain(|_, row| !row.is_empty());
        self.tiers.retain(|_, n| *n != 0);
        self.segments.retain(|_, n| *n != 0);
    }
}

/// Adds the counts of `delta` to `row`, dropping the keys that reach zero.
pub fn merge_row(row: &mut VisitRow, delta: &VisitRow) {
    for (k, n) in delta {
        let v = row.entry(*k).or_default();
        *v += n;
        if *v == 0 {
            row.remove(k);
        }
    }
}

/// A visit row as read: packed (key u32, count i32) pairs, counted without being decoded into
/// a map, since a year of a large franchise reads millions of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedRow(Vec<u8>);

impl PackedRow {
    pub fn of(row: &VisitRow) -> PackedRow {
        let mut out = Vec::with_capacity(row.len() * 8);
        for (k, n) in row {
            out.extend_from_slice(&k.pack().to_le_bytes());
            out.extend_from_slice(&clamp_count(*n).to_le_bytes());
        }
        PackedRow(out)
    }

    /// A row as [`encode_row`] stores it (either version); `None` if the bytes are not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<PackedRow> {
        match bytes.first() {
            Some(&ROW_V2) if (bytes.len() - 1).is_multiple_of(8) => {
                Some(PackedRow(bytes[1..].to_vec()))
            }
            _ if bytes.len().is_multiple_of(12) => {
                // Version 1: (key u32, count i64) pairs, as the first stores wrote them.
                let mut out = Vec::with_capacity(bytes.len() / 12 * 8);
                for c in bytes.chunks_exact(12) {
                    let n = i64::from_le_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]]);
                    out.extend_from_slice(&c[..4]);
                    out.extend_from_slice(&clamp_count(n).to_le_bytes());
                }
                Some(PackedRow(out))
            }
            _ => None,
        }
    }

    /// The (key, count) pairs.
    pub fn entries(&self) -> impl Iterator<Item = (VisitKey, i64)> + '_ {
        self.0.chunks_exact(8).map(|c| {
            let k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let n = i32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            (VisitKey::unpack(k), i64::from(n))
        })
    }

    /// The row as a map (summing repeated keys).
    pub fn row(&self) -> VisitRow {
        let mut row = VisitRow::new();
        for (k, n) in self.entries() {
            *row.entry(k).or_default() += n;
        }
        row.retain(|_, n| *n != 0);
        row
    }

    /// Appends another row's pairs (counting is additive, so a key may appear twice).
    pub fn extend(&mut self, other: &PackedRow) {
        self.0.extend_from_slice(&other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A stored count in 32 bits (a key of one day never counts 2^31 purchases).
fn clamp_count(n: i64) -> i32 {
    n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// The version byte of [`encode_row`]'s current form.
const ROW_V2: u8 = 2;

impl<const N: usize> From<[(VisitKey, i64); N]> for PackedRow {
    fn from(pairs: [(VisitKey, i64); N]) -> PackedRow {
        PackedRow::of(&pairs.into_iter().collect())
    }
}

impl From<&VisitRow> for PackedRow {
    fn from(row: &VisitRow) -> PackedRow {
        PackedRow::of(row)
    }
}

impl VisitCounts {
    /// Counts the keys of a packed row of `day` into `[from, to]`.
    pub fn add_packed(&mut self, day: Day, row: &PackedRow, from: Day, to: Day) {
        if day < from || day > to {
            return;
        }
        // `add` on the packed form (each gap + 1, 0 for none), without unpacking: a previous
        // purchase is before `from` when its gap exceeds `day - from`, i.e. packed > t.
        let t = day.0 - from.0 + 1;
        let (mut active, mut repeat, mut new) = (0u64, 0u64, 0u64);
        for c in row.0.chunks_exact(8) {
            let k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let n = i32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            if n <= 0 {
                continue;
            }
            let n = n as u64;
            let (p1, p2) = (k >> 16, k & 0xffff);
            if p1 == 0 {
                active += n;
                new += n;
            } else if p1 > t {
                active += n;
            } else if p2 == 0 || p2 > t {
                repeat += n;
            }
        }
        self.active += active;
        self.repeat += repeat;
        self.new += new;
    }
}

/// Packs a visit row for storage: a version byte (2), then little-endian (key u32, count i32)
/// pairs in key order. (Version 1, still read, was (key u32, count i64) pairs.)
pub fn encode_row(row: &VisitRow) -> Vec<u8> {
    let packed = PackedRow::of(row);
    let mut out = Vec::with_capacity(1 + packed.0.len());
    out.push(ROW_V2);
    out.extend_from_slice(&packed.0);
    out
}

/// The row of [`encode_row`] (either version); `None` if the bytes are not one.
pub fn decode_row(bytes: &[u8]) -> Option<VisitRow> {
    PackedRow::from_bytes(bytes).map(|p| p.row())
}

/// The prefix of the daily series of campaign results ([`DashboardDelta::add_campaign`]).
pub const CAMPAIGN_SERIES: &str = "campaign:";

/// The name of the daily series of `counter` ([`crate::campaigns::COUNTERS`]) of campaign `id`.
pub fn campaign_series(id: &str, counter: &str) -> String {
    format!("{CAMPAIGN_SERIES}{id}:{counter}")
}

/// The campaign and counter of a daily series' name, if it is a campaign's.
pub fn parse_campaign_series(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(CAMPAIGN_SERIES)?.rsplit_once(':')
}
