//! Time for a member: the clock, expiry of points, the tier window and the tier it gives.

use super::{add_points, signed, MemberState};
use crate::{
    Day, DayActivity, EventContext, LedgerEntry, LedgerKind, Points, Program, Rejection, TierMetric,
};

impl MemberState {
    /// Moves the member's clock to the event's time (never backwards), expiring points that
    /// reached the program's expiry age, dropping activity that left the tier window and
    /// re-evaluating the tier on what is left, so that the command is judged at the tier the
    /// member has at its time (a purchase after the window slid earns at the lower tier, not
    /// at the one qualified for more than a window ago).
    pub(super) fn advance_clock(
        &mut self,
        ctx: &EventContext<'_>,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        self.clock = self.clock.max(ctx.at);
        let today = self.clock.day();
        if let Some(days) = ctx.program.points_expiry_days {
            let mut expired: Points = 0;
            while let Some(lot) = self.lots.first() {
                if lot.day.0.saturating_add(days) <= today.0 {
                    expired = expired.saturating_add(lot.points);
                    self.lots.remove(0);
                } else {
                    break;
                }
            }
            // The lots sum to the balance; the entry is what the balance lost, so the ledger
            // stays its sum whatever happens.
            let after = self.points.saturating_sub(expired);
            let lost = self.points - after;
            if lost > 0 {
                self.points_expired = add_points(self.points_expired, lost, "points_expired")?;
                self.points = after;
                self.push_entry(
                    ctx,
                    LedgerKind::Expire,
                    signed(lost, true)?,
                    "expired",
                    entries,
                )?;
            }
        }
        let window = ctx.program.tier_qualification.window_days;
        let oldest = today.0.saturating_sub(window.saturating_sub(1));
        self.window.retain(|d| d.day.0 >= oldest);
        self.reevaluate_tier(ctx.program);
        Ok(())
    }

    pub(super) fn activity(&mut self, day: Day) -> &mut DayActivity {
        let idx = match self.window.iter().rposition(|d| d.day == day) {
            Some(i) => i,
            None => {
                let pos = self.window.partition_point(|d| d.day < day);
                self.window.insert(
                    pos,
                    DayActivity {
                        day,
                        spend_cents: 0,
                        points: 0,
                        visits: 0,
                    },
                );
                pos
            }
        };
        &mut self.window[idx]
    }

    /// The tier metric summed over the window ending on the member's clock day.
    pub fn window_metric(&self, program: &Program) -> u64 {
        let today = self.clock.day().0;
        let oldest = today.saturating_sub(program.tier_qualification.window_days.saturating_sub(1));
        self.window
            .iter()
            .filter(|d| d.day.0 >= oldest)
            .map(|d| match program.tier_qualification.metric {
                TierMetric::SpendCents => d.spend_cents,
                TierMetric::PointsEarned => d.points,
                TierMetric::Visits => u64::from(d.visits),
            })
            // Saturating: past every threshold is the top tier either way.
            .fold(0, u64::saturating_add)
    }

    /// Tier is the highest whose threshold the window metric meets: a member moves up as soon
    /// as they qualify and down when activity leaves the window (or is refunded), evaluated at
    /// each event.
    pub(super) fn reevaluate_tier(&mut self, program: &Program) {
        let idx = program.tier_for(self.window_metric(program));
        self.tier = program.tiers[idx].name.clone();
    }
}
