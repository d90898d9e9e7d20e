//! A member's tier over time, by the rules of [`crate::tiers`].
//!
//! The member's tier is always the higher of two: the tier their activity qualifies for in
//! the current span (the rolling window, or the calendar period so far), and the tier the
//! downgrade rule keeps (`tier_kept`). Qualifying moves a member up at once, with the event
//! that qualifies them; a refund takes back the progress of its purchase at once. Moving down
//! happens only at an *evaluation*:
//! - a rolling window is evaluated on each day counted activity leaves it;
//! - a calendar period is evaluated on the first day of the next period, on the whole period
//!   that ended: a member who qualified keeps the tier through the next period (it becomes the
//!   kept tier), one who did not is downgraded;
//! - a downgrade waits `grace_days` after its evaluation (the member keeps the tier meanwhile,
//!   and for good by qualifying again); with `one_tier_at_a_time` it lowers the tier by one step
//!   per evaluation (a rolling window then takes the next step `max(grace_days, 1)` days later;
//!   a calendar period at its next end).
//!
//! Evaluations run in day order from the member's previous clock day to the new one, whatever
//! ran them (the member's next event or the scheduler), so that the result does not depend on
//! when the member was next seen. Every move is a `tier` ledger entry (0 points) naming its
//! reason.

use serde::{Deserialize, Serialize};

use super::MemberState;
use crate::{
    Day, DayActivity, EventContext, LedgerEntry, LedgerKind, Program, Rejection, TierMetric,
};

/// A downgrade an evaluation decided, due after the program's grace period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierDowngrade {
    /// The tier it lowers the member to (or to the tier the member qualifies for then, if
    /// higher).
    pub to: String,
    /// The day it takes effect, unless the member qualifies again before.
    pub on: Day,
}

/// Why a member's tier moved (a `tier` ledger entry's detail is `tier:<reason>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierReason {
    /// A purchase qualified the member for a higher tier.
    Qualified,
    /// A refund took back the progress that qualified the member.
    Refund,
    /// Activity left the rolling window.
    Window,
    /// The calendar period ended without the member qualifying for their tier.
    PeriodEnd,
    /// A downgrade's grace period ended.
    GraceEnd,
    /// The program changed (a tier's threshold or the qualification rules).
    Program,
}

impl TierReason {
    pub fn name(self) -> &'static str {
        match self {
            TierReason::Qualified => "qualified",
            TierReason::Refund => "refund",
            TierReason::Window => "window",
            TierReason::PeriodEnd => "period_end",
            TierReason::GraceEnd => "grace_end",
            TierReason::Program => "program",
        }
    }
}

/// A `tier` ledger entry's move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChange {
    pub from: String,
    pub to: String,
    pub reason: TierReason,
}

fn counts(d: &DayActivity) -> bool {
    d.spend_cents > 0 || d.points > 0 || d.visits > 0
}

impl MemberState {
    /// The tier metric summed over the span holding the member's clock day.
    pub fn window_metric(&self, program: &Program) -> u64 {
        self.metric_on(program, self.clock.day())
    }

    /// The tier metric over the span holding `day`, up to `day`.
    fn metric_on(&self, program: &Program, day: Day) -> u64 {
        let q = &program.tier_qualification;
        let first = q.span_start(day);
        self.window
            .iter()
            .filter(|d| d.day >= first && d.day <= day)
            .map(|d| match q.metric {
                TierMetric::SpendCents => d.spend_cents,
                TierMetric::PointsEarned => d.points,
                TierMetric::Visits => u64::from(d.visits),
            })
            // Saturating: past every threshold is the top tier either way.
            .fold(0, u64::saturating_add)
    }

    /// Whether activity of `day` still counts towards the tier on the clock's day.
    pub(super) fn in_window(&self, program: &Program, day: Day) -> bool {
        day >= program.tier_qualification.span_start(self.clock.day())
    }

    /// The index of the tier the downgrade rule keeps (the first if none).
    fn kept(&self, program: &Program) -> usize {
        self.tier_kept
            .as_deref()
            .map_or(0, |t| program.tier_index(t))
    }

    fn keep(&mut self, program: &Program, idx: usize) {
        self.tier_kept = (idx > 0).then(|| program.tiers[idx].name.clone());
    }

    /// Sets the tier to the higher of the one qualified for on `day` and the kept one,
    /// writing a `tier` entry when it moves.
    fn settle_tier_on(
        &mut self,
        ctx: &EventContext<'_>,
        day: Day,
        reason: TierReason,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let program = ctx.program;
        let qualified = program.tier_for(self.metric_on(program, day));
        // Qualifying again for the tier a grace period protects keeps it for good: the
        // downgrade due is void (a rolling window then protects nothing more).
        if reason == TierReason::Qualified
            && self.tier_downgrade.is_some()
            && qualified >= self.kept(program)
        {
            self.tier_downgrade = None;
            if !program.tier_qualification.is_calendar() {
                self.keep(program, 0);
            }
        }
        let idx = qualified.max(self.kept(program));
        let to = &program.tiers[idx].name;
        if *to == self.tier {
            return Ok(());
        }
        let change = TierChange {
            from: std::mem::replace(&mut self.tier, to.clone()),
            to: to.clone(),
            reason,
        };
        let detail = format!("tier:{}", reason.name());
        self.push_entry(ctx, LedgerKind::Tier, 0, &detail, entries)?;
        if let Some(e) = entries.last_mut() {
            e.tier_change = Some(change);
        }
        Ok(())
    }

    /// [`MemberState::settle_tier_on`] the clock's day: after an event changed the activity.
    pub(super) fn settle_tier(
        &mut self,
        ctx: &EventContext<'_>,
        reason: TierReason,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        self.settle_tier_on(ctx, self.clock.day(), reason, entries)
    }

    /// The first day after `after` on which an evaluation can move the tier: a downgrade
    /// due, the next calendar period, or (rolling) the day counted activity leaves the
    /// window. `None` in the first tier with nothing kept nor due.
    pub fn next_tier_evaluation(&self, program: &Program, after: Day) -> Option<Day> {
        let q = &program.tier_qualification;
        let next_day = Day(after.0.saturating_add(1));
        let due = self.tier_downgrade.as_ref().map(|d| d.on.max(next_day));
        let above_first = program.tier_index(&self.tier) > 0 || self.tier_kept.is_some();
        let span = if !above_first {
            None
        } else if q.is_calendar() {
            q.next_period_start(after)
        } else {
            self.window
                .iter()
                .filter(|d| counts(d))
                .filter_map(|d| q.leaves_window_on(d.day))
                .find(|leave| *leave > after)
        };
        match (due, span) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs, in day order, every evaluation due after `from` up to `today`.
    pub(super) fn evaluate_tiers(
        &mut self,
        ctx: &EventContext<'_>,
        from: Day,
        today: Day,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let mut day = from;
        while let Some(e) = self
            .next_tier_evaluation(ctx.program, day)
            .filter(|e| *e <= today)
        {
            self.evaluate_tier_on(ctx, e, entries)?;
            day = e;
        }
        Ok(())
    }

    /// One evaluation on `day`: a downgrade due takes effect, then the span is judged.
    fn evaluate_tier_on(
        &mut self,
        ctx: &EventContext<'_>,
        day: Day,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let program = ctx.program;
        let q = &program.tier_qualification;
        let stepped = self.apply_due_downgrade(ctx, day, entries)?;
        let Some((judged, reason)) = self.judge(program, day) else {
            return Ok(());
        };
        let current = program.tier_index(&self.tier);
        if judged >= current {
            // Qualified for the tier held: nothing due; a calendar period's tier is kept
            // through the next period.
            self.tier_downgrade = None;
            self.keep(program, if q.is_calendar() { current } else { 0 });
            return Ok(());
        }
        if self.tier_downgrade.is_some() {
            return Ok(());
        }
        let to = if q.one_tier_at_a_time {
            current - 1
        } else {
            judged
        };
        // A rolling window takes one step per evaluation: the next after a day at least.
        let wait = if stepped && !q.is_calendar() {
            q.grace_days.max(1)
        } else {
            q.grace_days
        };
        if wait > 0 {
            self.keep(program, current);
            self.tier_downgrade = Some(TierDowngrade {
                to: program.tiers[to].name.clone(),
                on: Day(day.0.saturating_add(wait)),
            });
            return Ok(());
        }
        self.keep(
            program,
            if q.is_calendar() || to > judged {
                to
            } else {
                0
            },
        );
        self.settle_tier_on(ctx, day, reason, entries)?;
        if !q.is_calendar() && to > judged {
            self.tier_downgrade = Some(TierDowngrade {
                to: program.tiers[to - 1].name.clone(),
                on: Day(day.0.saturating_add(1)),
            });
        }
        Ok(())
    }

    /// The downgrade due on `day`, if any, takes effect; whether one did.
    fn apply_due_downgrade(
        &mut self,
        ctx: &EventContext<'_>,
        day: Day,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<bool, Rejection> {
        let program = ctx.program;
        let q = &program.tier_qualification;
        let Some(due) = self.tier_downgrade.take_if(|d| d.on <= day) else {
            return Ok(false);
        };
        // To the tier decided, or higher if the member qualifies for more now; a tier lost
        // since (a rolling window's activity leaving meanwhile) gets a grace of its own.
        let current = program.tier_index(&self.tier);
        self.keep(program, program.tier_index(&due.to).min(current));
        let reason = match (q.grace_days, q.is_calendar()) {
            (0, true) => TierReason::PeriodEnd,
            (0, false) => TierReason::Window,
            _ => TierReason::GraceEnd,
        };
        self.settle_tier_on(ctx, day, reason, entries)?;
        Ok(true)
    }

    /// The tier the span gives at an evaluation on `day`, and the reason a downgrade from it
    /// would give: a calendar period is judged as a whole on the first day of the next one
    /// (`None` on any other day), a rolling window on the window ending on `day`.
    fn judge(&self, program: &Program, day: Day) -> Option<(usize, TierReason)> {
        let q = &program.tier_qualification;
        if !q.is_calendar() {
            return Some((
                program.tier_for(self.metric_on(program, day)),
                TierReason::Window,
            ));
        }
        if q.span_start(day) != day {
            return None;
        }
        let last = Day(day.0.saturating_sub(1));
        Some((
            program.tier_for(self.metric_on(program, last)),
            TierReason::PeriodEnd,
        ))
    }
}
