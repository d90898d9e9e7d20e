//! Tier qualification: what counts (the metric), over which span (a rolling window, or a
//! calendar month, quarter or year), and how a member moves down (at the span's evaluation,
//! after a grace period, one tier at a time). The member's side, which applies these rules
//! over time, is in `member/tiers.rs`; README "Tiers" documents them for franchise owners.
//!
//! Spans are counted in UTC days, as the rest of a member's activity (the tier window, the
//! expiry of lots).

use serde::{Deserialize, Serialize};

use crate::program::bounded;
use crate::{Day, DomainError};

/// What tier qualification counts over its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMetric {
    SpendCents,
    PointsEarned,
    Visits,
}

/// The span a tier is qualified over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierPeriod {
    /// The last `window_days` days, evaluated every day: activity leaving the window can
    /// lower the tier on the day it leaves.
    #[default]
    Rolling,
    /// The calendar month so far; evaluated when the month ends.
    Month,
    /// The calendar quarter (January, April, July, October) so far; evaluated at its end.
    Quarter,
    /// The calendar year so far; evaluated when the year ends.
    Year,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierQualificationSpec {
    pub metric: TierMetric,
    /// The rolling window's length; only (and then always) with a rolling period.
    #[serde(default)]
    pub window_days: Option<i64>,
    #[serde(default)]
    pub period: Option<TierPeriod>,
    /// Days a downgrade waits after the evaluation that decided it (0 by default); the
    /// member keeps the tier meanwhile, and keeps it for good by re-qualifying.
    #[serde(default)]
    pub grace_days: Option<i64>,
    /// A downgrade lowers the tier by one step per evaluation (false by default: straight to
    /// the tier the activity gives).
    #[serde(default)]
    pub one_tier_at_a_time: Option<bool>,
}

/// The validated qualification rules. Invariant: `window_days` is set if and only if the
/// period is rolling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierQualification {
    pub metric: TierMetric,
    /// `null` with a calendar period.
    pub window_days: Option<u32>,
    pub period: TierPeriod,
    pub grace_days: u32,
    pub one_tier_at_a_time: bool,
}

/// The longest rolling window and grace period, in days.
const MAX_WINDOW_DAYS: i64 = 3_650;
const MAX_GRACE_DAYS: i64 = 365;

impl TierQualification {
    /// A rolling window of `days` days that moves straight to the tier the activity gives.
    pub fn rolling(metric: TierMetric, days: u32) -> TierQualification {
        TierQualification {
            metric,
            window_days: Some(days.max(1)),
            period: TierPeriod::Rolling,
            grace_days: 0,
            one_tier_at_a_time: false,
        }
    }

    pub fn from_spec(s: &TierQualificationSpec) -> Result<TierQualification, DomainError> {
        let period = s.period.unwrap_or_default();
        let window_days = match (period, s.window_days) {
            (TierPeriod::Rolling, Some(d)) => {
                Some(bounded("tier_qualification.window_days", d, 1, MAX_WINDOW_DAYS)? as u32)
            }
            (TierPeriod::Rolling, None) => {
                return Err(DomainError::invalid_program(
                    "tier_qualification.window_days is required with a rolling period \
                     (or set tier_qualification.period to month, quarter or year)",
                ))
            }
            (_, Some(_)) => {
                return Err(DomainError::invalid_program(format!(
                    "tier_qualification.window_days applies to a rolling period only: a {} \
                     period counts from its first day",
                    period.name()
                )))
            }
            (_, None) => None,
        };
        let grace_days = match s.grace_days {
            Some(d) => bounded("tier_qualification.grace_days", d, 0, MAX_GRACE_DAYS)? as u32,
            None => 0,
        };
        Ok(TierQualification {
            metric: s.metric,
            window_days,
            period,
            grace_days,
            one_tier_at_a_time: s.one_tier_at_a_time.unwrap_or(false),
        })
    }

    /// Whether the span is a calendar period (evaluated at its end) rather than rolling.
    pub fn is_calendar(&self) -> bool {
        self.period != TierPeriod::Rolling
    }

    /// The first day counted for a tier on `day`: the rolling window's oldest day, or the
    /// first day of the calendar period holding `day`.
    pub fn span_start(&self, day: Day) -> Day {
        let (y, m, _) = day.ymd();
        let first = |y: i32, m: u32| Day::from_ymd(y, m, 1).unwrap_or(day);
        match self.period {
            TierPeriod::Rolling => Day(day
                .0
                .saturating_sub(self.window_days.unwrap_or(1).saturating_sub(1))),
            TierPeriod::Month => first(y, m),
            TierPeriod::Quarter => first(y, (m - 1) / 3 * 3 + 1),
            TierPeriod::Year => first(y, 1),
        }
    }

    /// The first day of the calendar period after the one holding `day` (when that period is
    /// evaluated); `None` for a rolling window.
    pub fn next_period_start(&self, day: Day) -> Option<Day> {
        let months = match self.period {
            TierPeriod::Rolling => return None,
            TierPeriod::Month => 1,
            TierPeriod::Quarter => 3,
            TierPeriod::Year => 12,
        };
        let (y, start, _) = self.span_start(day).ymd();
        // 0-based month of the next period's start, past December into the next year.
        let next = start - 1 + months;
        Day::from_ymd(y + (next / 12) as i32, next % 12 + 1, 1)
    }

    /// The day activity of `day` stops counting in a rolling window (`None` for a calendar
    /// period, which is evaluated as a whole at its end).
    pub fn leaves_window_on(&self, day: Day) -> Option<Day> {
        match (self.period, self.window_days) {
            (TierPeriod::Rolling, Some(w)) => Some(Day(day.0.saturating_add(w))),
            _ => None,
        }
    }
}

impl TierPeriod {
    pub fn name(self) -> &'static str {
        match self {
            TierPeriod::Rolling => "rolling",
            TierPeriod::Month => "month",
            TierPeriod::Quarter => "quarter",
            TierPeriod::Year => "year",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(period: TierPeriod) -> TierQualification {
        TierQualification {
            window_days: None,
            period,
            ..TierQualification::rolling(TierMetric::Visits, 1)
        }
    }

    fn d(s: &str) -> Day {
        Day::parse_iso(s).unwrap()
    }

    #[test]
    fn calendar_spans_start_on_their_first_day_and_end_before_the_next() {
        for (period, day, start, next) in [
            (TierPeriod::Month, "2026-02-28", "2026-02-01", "2026-03-01"),
            (TierPeriod::Month, "2026-12-31", "2026-12-01", "2027-01-01"),
            (
                TierPeriod::Quarter,
                "2026-05-15",
                "2026-04-01",
                "2026-07-01",
            ),
            (
                TierPeriod::Quarter,
                "2026-10-01",
                "2026-10-01",
                "2027-01-01",
            ),
            (
                TierPeriod::Quarter,
                "2026-03-31",
                "2026-01-01",
                "2026-04-01",
            ),
            (TierPeriod::Year, "2024-02-29", "2024-01-01", "2025-01-01"),
        ] {
            let q = q(period);
            assert_eq!(q.span_start(d(day)), d(start), "{period:?} {day}");
            assert_eq!(
                q.next_period_start(d(day)),
                Some(d(next)),
                "{period:?} {day}"
            );
        }
    }

    #[test]
    fn a_rolling_window_counts_its_last_days() {
        let q = TierQualification::rolling(TierMetric::Visits, 30);
        assert_eq!(q.span_start(d("2026-03-30")), d("2026-03-01"));
        assert_eq!(q.next_period_start(d("2026-03-30")), None);
        assert_eq!(q.leaves_window_on(d("2026-03-01")), Some(d("2026-03-31")));
    }

    #[test]
    fn window_days_goes_with_a_rolling_period_only() {
        let spec = |period, window_days| TierQualificationSpec {
            metric: TierMetric::Visits,
            window_days,
            period,
            grace_days: None,
            one_tier_at_a_time: None,
        };
        assert!(TierQualification::from_spec(&spec(None, Some(30))).is_ok());
        let e = TierQualification::from_spec(&spec(None, None)).unwrap_err();
        assert!(e.to_string().contains("window_days is required"), "{e}");
        let e = TierQualification::from_spec(&spec(Some(TierPeriod::Year), Some(30))).unwrap_err();
        assert!(e.to_string().contains("rolling period only"), "{e}");
        let ok = TierQualification::from_spec(&spec(Some(TierPeriod::Quarter), None)).unwrap();
        assert!(ok.is_calendar() && ok.window_days.is_none());
    }
}
