//! Time for a member: the clock, expiry of points, the tier window and the tier it gives.

use super::{add_points, signed, MemberState};
use crate::segments::next_change;
use crate::{
    Day, DayActivity, EventContext, LedgerEntry, LedgerKind, Points, Program, Rejection,
    TierMetric, Timestamp,
};

/// The first moment of `day` (UTC).
pub fn day_start(day: Day) -> Timestamp {
    Timestamp(i64::from(day.0) * 86_400_000)
}

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
            self.expire_lots(ctx, days, today, entries)?;
        }
        let window = ctx.program.tier_qualification.window_days;
        let oldest = today.0.saturating_sub(window.saturating_sub(1));
        self.window.retain(|d| d.day.0 >= oldest);
        self.reevaluate_tier(ctx.program);
        Ok(())
    }

    /// Expires, oldest first (FIFO), every lot that reached the program's expiry age by
    /// `today`, writing one `expire` entry per lot (its detail names the lot's day,
    /// `expired:YYYY-MM-DD`), so that the ledger shows what expired and when it was earned.
    pub(super) fn expire_lots(
        &mut self,
        ctx: &EventContext<'_>,
        days: u32,
        today: Day,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        while let Some(lot) = self.lots.first().copied() {
            if lot.day.0.saturating_add(days) > today.0 {
                break;
            }
            self.lots.remove(0);
            // The lots sum to the balance; the entry is what the balance lost, so the ledger
            // stays its sum whatever happens.
            let lost = lot.points.min(self.points);
            if lost == 0 {
                continue;
            }
            self.points_expired = add_points(self.points_expired, lost, "points_expired")?;
            self.points -= lost;
            let detail = format!("expired:{}", lot.day.iso());
            self.push_entry(
                ctx,
                LedgerKind::Expire,
                signed(lost, true)?,
                &detail,
                entries,
            )?;
        }
        Ok(())
    }

    /// When this member next needs the clock moved without an event of theirs (the
    /// scheduler's due time): the earliest of the day its oldest lot expires, above the first
    /// tier the day its oldest counted activity leaves the tier window (which may lower the
    /// tier), and the start of the next local day on which time alone changes the member's
    /// segments ([`crate::segments::next_change`]). `None` when nothing is due (no lot that
    /// can expire, first tier, no segment change ahead, or the member's personal data erased:
    /// an erased member takes no more commands).
    pub fn next_due(&self, program: &Program) -> Option<Timestamp> {
        if self.erased_at.is_some() {
            return None;
        }
        let expiry = program
            .points_expiry_days
            .and_then(|days| self.lots.first().map(|lot| lot.day.0.saturating_add(days)));
        let idx = program.tier_index(&self.tier);
        let window = program.tier_qualification.window_days;
        let drop = (idx > 0)
            .then(|| {
                self.window
                    .iter()
                    .find(|d| d.spend_cents > 0 || d.points > 0 || d.visits > 0)
                    .map(|d| d.day.0.saturating_add(window))
            })
            .flatten();
        let day = match (expiry, drop) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let clock = day.map(|d| day_start(Day(d)));
        let today = program.local_day(self.clock);
        let segments = next_change(self, program, today).map(|d| program.time_zone.start_of(d));
        match (clock, segments) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The points of the member's next expiry and the day they expire (the oldest lot's), if
    /// the program expires points.
    pub fn next_expiry(&self, program: &Program) -> Option<(Points, Day)> {
        let days = program.points_expiry_days?;
        let lot = self.lots.first()?;
        Some((lot.points, Day(lot.day.0.saturating_add(days))))
    }

    /// Whether `day` is inside the tier window ending on the clock's day.
    pub(super) fn in_window(&self, program: &Program, day: Day) -> bool {
        let window = program.tier_qualification.window_days;
        day.0 >= self.clock.day().0.saturating_sub(window.saturating_sub(1))
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
