//! Segments (README "Segments"): groups of members computed from each member's state, the
//! program's `segments` section and a local day. Four built-ins and the program's custom
//! filters; a member may be in several.
//!
//! - `new`: enrolled within `new_days` days (the enrolment day is day 0);
//! - `loyal`: at least `loyal.min_visits` purchases in the last `loyal.window_days` days, or in
//!   the program's top tier (when `loyal.top_tier` and the program has more than one tier);
//! - `at_risk`: a regular (at least `regular_min_visits` visits ever) away for `at_risk_days`
//!   days or more, but fewer than `lapsed_days`;
//! - `lapsed`: away for `lapsed_days` days or more (at-risk and lapsed never overlap).
//!
//! "Away" counts the days since the member's last visit, or since enrolment for a member who
//! never bought. Days are local days of the program's time zone; "today" is the day of the
//! member's clock (their latest event, or the scheduler's advance). Membership that time
//! alone changes (new ends, at-risk and lapsed begin, a loyal member's visits leave the
//! window, a custom filter's days pass) is due at [`next_change`], which the member's
//! `next_due` includes so that the scheduler moves the member on that day.
//!
//! A program without a `segments` section has no segments (programs written before segments
//! existed are unchanged); `"segments": {}` turns the built-ins on with their defaults.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::object;
use crate::program::{bounded, Tier};
use crate::{Day, DomainError, MemberState, Program, StoreId};

pub const NEW: &str = "new";
pub const LOYAL: &str = "loyal";
pub const AT_RISK: &str = "at_risk";
pub const LAPSED: &str = "lapsed";
/// The built-in segments, in the order they are listed.
pub const BUILT_IN: [&str; 4] = [NEW, LOYAL, AT_RISK, LAPSED];

pub const DEFAULT_NEW_DAYS: i64 = 30;
pub const DEFAULT_LOYAL_MIN_VISITS: i64 = 5;
pub const DEFAULT_LOYAL_WINDOW_DAYS: i64 = 90;
pub const DEFAULT_REGULAR_MIN_VISITS: i64 = 2;
pub const DEFAULT_AT_RISK_DAYS: i64 = 60;
pub const DEFAULT_LAPSED_DAYS: i64 = 90;
/// At most this many custom segments in a program.
pub const MAX_CUSTOM: usize = 32;
/// The longest loyal window: the dashboards' longest range (a member's purchase days are
/// kept for twice that).
const MAX_WINDOW_DAYS: i64 = crate::dashboard::MAX_RANGE_DAYS as i64;
const MAX_DAYS: i64 = 3_650;
const MAX_VISITS: i64 = 1_000_000;
const MAX_CENTS: i64 = 1_000_000_000_000;
const MAX_STORES: usize = 1_000;
const MAX_NAME: usize = 64;

/// The `segments` section as a client writes it; every field has a default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsSpec {
    #[serde(default)]
    pub new_days: Option<i64>,
    #[serde(default, deserialize_with = "object::option")]
    pub loyal: Option<LoyalSpec>,
    #[serde(default)]
    pub regular_min_visits: Option<i64>,
    #[serde(default)]
    pub at_risk_days: Option<i64>,
    #[serde(default)]
    pub lapsed_days: Option<i64>,
    #[serde(default, deserialize_with = "object::list")]
    pub custom: Vec<CustomSegmentSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoyalSpec {
    #[serde(default)]
    pub min_visits: Option<i64>,
    #[serde(default)]
    pub window_days: Option<i64>,
    #[serde(default)]
    pub top_tier: Option<bool>,
}

/// A saved filter: a member is in it when every condition it sets holds.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSegmentSpec {
    pub name: String,
    #[serde(default)]
    pub min_visits: Option<i64>,
    #[serde(default)]
    pub max_visits: Option<i64>,
    #[serde(default)]
    pub min_spend_cents: Option<i64>,
    #[serde(default)]
    pub max_spend_cents: Option<i64>,
    #[serde(default)]
    pub tiers: Option<Vec<String>>,
    #[serde(default)]
    pub stores: Option<Vec<String>>,
    #[serde(default)]
    pub last_visit_within_days: Option<i64>,
    #[serde(default)]
    pub no_visit_for_days: Option<i64>,
}

/// The validated `segments` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Segments {
    pub new_days: u32,
    pub loyal: Loyal,
    pub regular_min_visits: u64,
    pub at_risk_days: u32,
    pub lapsed_days: u32,
    pub custom: Vec<CustomSegment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Loyal {
    pub min_visits: u32,
    pub window_days: u32,
    pub top_tier: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CustomSegment {
    pub name: String,
    pub min_visits: Option<u64>,
    pub max_visits: Option<u64>,
    pub min_spend_cents: Option<u64>,
    pub max_spend_cents: Option<u64>,
    pub tiers: Option<Vec<String>>,
    pub stores: Option<Vec<StoreId>>,
    pub last_visit_within_days: Option<u32>,
    pub no_visit_for_days: Option<u32>,
}

/// A member's change of segments, on the local day of the member's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMove {
    pub day: Day,
    pub left: Vec<String>,
    pub joined: Vec<String>,
}

fn invalid(msg: String) -> DomainError {
    DomainError::invalid_program(msg)
}

fn opt_bounded(
    field: &str,
    v: Option<i64>,
    min: i64,
    max: i64,
) -> Result<Option<u64>, DomainError> {
    v.map(|v| bounded(field, v, min, max)).transpose()
}

/// `min ≤ max` when both are given.
fn ordered(field: &str, min: Option<u64>, max: Option<u64>) -> Result<(), DomainError> {
    match (min, max) {
        (Some(a), Some(z)) if a > z => Err(invalid(format!(
            "{field}: min_{0} ({a}) is above max_{0} ({z})",
            field.rsplit('.').next().unwrap_or(field)
        ))),
        _ => Ok(()),
    }
}

/// `segments.{field}`: a number of days from 1 to `max`, `default` when left out.
fn days(field: &str, v: Option<i64>, default: i64, max: i64) -> Result<u32, DomainError> {
    bounded(&format!("segments.{field}"), v.unwrap_or(default), 1, max).map(|d| d as u32)
}

impl Loyal {
    fn validate(l: Option<&LoyalSpec>) -> Result<Loyal, DomainError> {
        let l = l.cloned().unwrap_or_default();
        let min_visits = l.min_visits.unwrap_or(DEFAULT_LOYAL_MIN_VISITS);
        Ok(Loyal {
            min_visits: bounded("segments.loyal.min_visits", min_visits, 1, MAX_VISITS)? as u32,
            window_days: days(
                "loyal.window_days",
                l.window_days,
                DEFAULT_LOYAL_WINDOW_DAYS,
                MAX_WINDOW_DAYS,
            )?,
            top_tier: l.top_tier.unwrap_or(true),
        })
    }
}

/// The custom segments, validated: at most [`MAX_CUSTOM`], names unique and not built-ins'.
fn custom(specs: &[CustomSegmentSpec], tiers: &[Tier]) -> Result<Vec<CustomSegment>, DomainError> {
    if specs.len() > MAX_CUSTOM {
        return Err(invalid(format!("at most {MAX_CUSTOM} segments.custom")));
    }
    let mut out: Vec<CustomSegment> = Vec::with_capacity(specs.len());
    for (i, c) in specs.iter().enumerate() {
        let seg = CustomSegment::validate(i, c, tiers)?;
        if seg.name.starts_with(crate::dashboard::CAMPAIGN_SERIES) {
            return Err(invalid(format!(
                "segments.custom[{i}].name may not start with {:?} (the campaigns' results use it)",
                crate::dashboard::CAMPAIGN_SERIES
            )));
        }
        if BUILT_IN.contains(&seg.name.as_str()) {
            return Err(invalid(format!(
                "segments.custom[{i}].name {:?} is a built-in segment",
                seg.name
            )));
        }
        if out.iter().any(|x| x.name == seg.name) {
            return Err(invalid(format!(
                "segment name {:?} appears twice",
                seg.name
            )));
        }
        out.push(seg);
    }
    Ok(out)
}

impl Segments {
    /// Validates the section of a program whose tiers are `tiers`.
    pub fn validate(s: &SegmentsSpec, tiers: &[Tier]) -> Result<Segments, DomainError> {
        let loyal = Loyal::validate(s.loyal.as_ref())?;
        let at_risk_days = days(
            "at_risk_days",
            s.at_risk_days,
            DEFAULT_AT_RISK_DAYS,
            MAX_DAYS,
        )?;
        let lapsed_days = days("lapsed_days", s.lapsed_days, DEFAULT_LAPSED_DAYS, MAX_DAYS)?;
        if lapsed_days <= at_risk_days {
            return Err(invalid(format!(
                "segments.lapsed_days ({lapsed_days}) must be above segments.at_risk_days ({at_risk_days})"
            )));
        }
        let regular = s.regular_min_visits.unwrap_or(DEFAULT_REGULAR_MIN_VISITS);
        Ok(Segments {
            new_days: days("new_days", s.new_days, DEFAULT_NEW_DAYS, MAX_DAYS)?,
            loyal,
            regular_min_visits: bounded("segments.regular_min_visits", regular, 1, MAX_VISITS)?,
            at_risk_days,
            lapsed_days,
            custom: custom(&s.custom, tiers)?,
        })
    }

    /// Every segment's name: the built-ins, then the custom ones in program order.
    pub fn names(&self) -> Vec<&str> {
        let custom = self.custom.iter().map(|c| c.name.as_str());
        BUILT_IN.iter().copied().chain(custom).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.names().contains(&name)
    }
}

/// A segment name: 1 to 64 characters of `[a-z0-9_-]` (it appears in URLs).
fn segment_name(field: &str, s: &str) -> Result<String, DomainError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(invalid(format!(
            "{field} must be 1 to {MAX_NAME} characters of [a-z0-9_-], got {s:?}"
        )))
    }
}

/// A filter's tiers: 1 to as many as the program has, each one of its tiers.
fn tier_names(field: &str, list: &[String], tiers: &[Tier]) -> Result<Vec<String>, DomainError> {
    if list.is_empty() || list.len() > tiers.len() {
        return Err(invalid(format!(
            "{field} must list 1 to {} tier names, or be left out",
            tiers.len()
        )));
    }
    if let Some(t) = list.iter().find(|t| !tiers.iter().any(|x| &x.name == *t)) {
        return Err(invalid(format!(
            "{field} names no tier of the program: {t:?}"
        )));
    }
    Ok(list.to_vec())
}

/// A filter's stores: 1 to [`MAX_STORES`] valid store ids.
fn store_ids(field: &str, v: &[String]) -> Result<Vec<StoreId>, DomainError> {
    if v.is_empty() || v.len() > MAX_STORES {
        return Err(invalid(format!(
            "{field} must list 1 to {MAX_STORES} store ids, or be left out"
        )));
    }
    v.iter()
        .map(|id| {
            StoreId::parse(id)
                .map_err(|_| invalid(format!("{field} has an invalid store id {id:?}")))
        })
        .collect()
}

impl CustomSegment {
    fn validate(i: usize, c: &CustomSegmentSpec, tiers: &[Tier]) -> Result<Self, DomainError> {
        let f = |field: &str| format!("segments.custom[{i}].{field}");
        let name = segment_name(&f("name"), &c.name)?;
        let min_visits = opt_bounded(&f("min_visits"), c.min_visits, 0, MAX_VISITS)?;
        let max_visits = opt_bounded(&f("max_visits"), c.max_visits, 0, MAX_VISITS)?;
        ordered(&f("visits"), min_visits, max_visits)?;
        let min_spend_cents = opt_bounded(&f("min_spend_cents"), c.min_spend_cents, 0, MAX_CENTS)?;
        let max_spend_cents = opt_bounded(&f("max_spend_cents"), c.max_spend_cents, 0, MAX_CENTS)?;
        ordered(&f("spend_cents"), min_spend_cents, max_spend_cents)?;
        let tiers = c
            .tiers
            .as_ref()
            .map(|t| tier_names(&f("tiers"), t, tiers))
            .transpose()?;
        let stores = c
            .stores
            .as_ref()
            .map(|v| store_ids(&f("stores"), v))
            .transpose()?;
        let within = opt_bounded(
            &f("last_visit_within_days"),
            c.last_visit_within_days,
            1,
            MAX_DAYS,
        )?;
        let away = opt_bounded(&f("no_visit_for_days"), c.no_visit_for_days, 1, MAX_DAYS)?;
        let seg = CustomSegment {
            name,
            min_visits,
            max_visits,
            min_spend_cents,
            max_spend_cents,
            tiers,
            stores,
            last_visit_within_days: within.map(|d| d as u32),
            no_visit_for_days: away.map(|d| d as u32),
        };
        if seg.is_empty() {
            return Err(invalid(format!(
                "segments.custom[{i}] sets no condition (min/max_visits, min/max_spend_cents, tiers, stores, last_visit_within_days, no_visit_for_days)"
            )));
        }
        Ok(seg)
    }

    fn is_empty(&self) -> bool {
        self.min_visits.is_none()
            && self.max_visits.is_none()
            && self.min_spend_cents.is_none()
            && self.max_spend_cents.is_none()
            && self.tiers.is_none()
            && self.stores.is_none()
            && self.last_visit_within_days.is_none()
            && self.no_visit_for_days.is_none()
    }

    /// Whether `m` (with its facts `x` on the day) meets every condition.
    fn matches(&self, m: &MemberState, x: &Facts) -> bool {
        let between = |v: u64, lo: Option<u64>, hi: Option<u64>| {
            lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi)
        };
        between(m.visits, self.min_visits, self.max_visits)
            && between(m.spend_cents, self.min_spend_cents, self.max_spend_cents)
            && self.tiers.as_ref().is_none_or(|t| t.contains(&m.tier))
            && self.stores.as_ref().is_none_or(|s| {
                s.contains(&m.enrolled_store) || s.iter().any(|s| m.purchase_days.contains_key(s))
            })
            && self
                .last_visit_within_days
                .is_none_or(|n| x.last_visit.is_some() && x.away < n)
            && self.no_visit_for_days.is_none_or(|n| x.away >= n)
    }
}

/// What the rules read of a member on a day.
struct Facts {
    today: u32,
    enrolled: u32,
    last_visit: Option<u32>,
    /// Days since the last visit, or since enrolment for a member who never bought.
    away: u32,
    /// Purchase days up to today, newest first.
    visit_days: Vec<u32>,
}

impl Facts {
    fn of(m: &MemberState, program: &Program, today: Day) -> Facts {
        let enrolled = program.local_day(m.enrolled_at).0;
        let last_visit = m.last_visit.map(|t| program.local_day(t).0);
        let away = today.0.saturating_sub(last_visit.unwrap_or(enrolled));
        let mut visit_days: Vec<u32> = m
            .purchase_days
            .values()
            .flatten()
            .map(|d| d.0)
            .filter(|d| *d <= today.0)
            .collect();
        visit_days.sort_unstable_by(|a, b| b.cmp(a));
        Facts {
            today: today.0,
            enrolled,
            last_visit,
            away,
            visit_days,
        }
    }

    /// Purchases in the `window` days ending today.
    fn visits_within(&self, window: u32) -> usize {
        let oldest = self.today.saturating_sub(window.saturating_sub(1));
        self.visit_days.iter().take_while(|d| **d >= oldest).count()
    }
}

fn is_top_tier(m: &MemberState, program: &Program) -> bool {
    program.tiers.len() > 1 && program.tier_index(&m.tier) == program.tiers.len() - 1
}

/// The segments of `m` on the local day `today` under `program`, built-ins first then the
/// custom ones in program order. None for an erased member or a program without segments.
pub fn segments_of(m: &MemberState, program: &Program, today: Day) -> Vec<String> {
    let Some(s) = &program.segments else {
        return Vec::new();
    };
    if m.erased_at.is_some() {
        return Vec::new();
    }
    let x = Facts::of(m, program, today);
    let mut out = Vec::new();
    if x.today.saturating_sub(x.enrolled) < s.new_days {
        out.push(NEW.to_owned());
    }
    let by_visits = x.visits_within(s.loyal.window_days) >= s.loyal.min_visits as usize;
    if by_visits || (s.loyal.top_tier && is_top_tier(m, program)) {
        out.push(LOYAL.to_owned());
    }
    if x.away >= s.lapsed_days {
        out.push(LAPSED.to_owned());
    } else if x.away >= s.at_risk_days && m.visits >= s.regular_min_visits {
        out.push(AT_RISK.to_owned());
    }
    out.extend(
        s.custom
            .iter()
            .filter(|c| c.matches(m, &x))
            .map(|c| c.name.clone()),
    );
    out
}

/// The first local day after `today` on which time alone may change `m`'s segments (no event
/// of theirs): the end of `new`, of `loyal` by visits, the start of `at_risk` and `lapsed`,
/// and the days of custom filters on the last visit. `None` when none is ahead.
pub fn next_change(m: &MemberState, program: &Program, today: Day) -> Option<Day> {
    let s = program.segments.as_ref()?;
    if m.erased_at.is_some() {
        return None;
    }
    let x = Facts::of(m, program, today);
    let base = x.last_visit.unwrap_or(x.enrolled);
    let mut days = vec![
        x.enrolled.saturating_add(s.new_days),
        base.saturating_add(s.lapsed_days),
    ];
    if m.visits >= s.regular_min_visits {
        days.push(base.saturating_add(s.at_risk_days));
    }
    let n = s.loyal.min_visits as usize;
    if x.visits_within(s.loyal.window_days) >= n {
        // The n-th newest visit leaves the window on this day.
        let nth = n.checked_sub(1).and_then(|i| x.visit_days.get(i));
        days.extend(nth.map(|d| d.saturating_add(s.loyal.window_days)));
    }
    for c in &s.custom {
        days.extend(
            c.last_visit_within_days
                .and_then(|d| x.last_visit.map(|v| v.saturating_add(d))),
        );
        days.extend(c.no_visit_for_days.map(|d| base.saturating_add(d)));
    }
    days.into_iter().filter(|d| *d > x.today).min().map(Day)
}

/// The change from the segments `before` to `after` on `day`; `None` when they are the same.
pub fn segment_move(before: &[String], after: &[String], day: Day) -> Option<SegmentMove> {
    let (b, a): (BTreeSet<&String>, BTreeSet<&String>) =
        (before.iter().collect(), after.iter().collect());
    let left: Vec<String> = b.difference(&a).map(|s| (*s).clone()).collect();
    let joined: Vec<String> = a.difference(&b).map(|s| (*s).clone()).collect();
    (!left.is_empty() || !joined.is_empty()).then_some(SegmentMove { day, left, joined })
}

/// A phone number as an export shows it by default: its first 3 and last 2 characters, every
/// other character replaced by `*` (`+33612345678` → `+33*******78`). A number of 5
/// characters or fewer is masked whole.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    let n = chars.len();
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if n > 5 && (i < 3 || i >= n - 2) {
                *c
            } else {
                '*'
            }
        })
        .collect()
}
