//! Time for a member: the clock, expiry of points, and the tier evaluations it brings
//! (`tiers.rs`).

use super::tiers::TierReason;
use super::{add_points, signed, MemberState};
use crate::segments::next_change;
use crate::{
    Day, DayActivity, EventContext, LedgerEntry, LedgerKind, Points, Program, Rejection, Timestamp,
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
        let from = self.clock.day();
        self.clock = self.clock.max(ctx.at);
        self.lapse_held_refunds();
        // Before the lots expire: points a code gives back into a lot past its age expire now.
        self.expire_codes(ctx, entries)?;
        let today = self.clock.day();
        if let Some(days) = ctx.program.points_expiry_days {
            self.expire_lots(ctx, days, today, entries)?;
        }
        self.evaluate_tiers(ctx, from, today, entries)?;
        let first = ctx.program.tier_qualification.span_start(today);
        self.window.retain(|d| d.day >= first);
        // What no evaluation moves: a program change (thresholds, rules, tiers renamed).
        self.settle_tier(ctx, TierReason::Program, entries)?;
        self.give_birthday_reward(ctx, entries)
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
    /// scheduler's due time): the earliest of the day its oldest lot expires, the day of its
    /// next tier evaluation ([`MemberState::next_tier_evaluation`]), the start of its next
    /// birthday reward's window (local midnight), the horizon of its first held refund (which
    /// lapses then), the start of the next local day on which time alone changes its
    /// segments ([`crate::segments::next_change`]), the expiry of its first outstanding
    /// redemption code (which gives back what its redemption took then), and the next time
    /// trigger of a campaign (`campaigns.rs`). `None` when nothing is due, or when the
    /// member's personal data is erased (an erased member takes no more commands).
    pub fn next_due(&self, program: &Program) -> Option<Timestamp> {
        if self.erased_at.is_some() {
            return None;
        }
        let expiry = program.points_expiry_days.and_then(|days| {
            self.lots
                .first()
                .map(|lot| Day(lot.day.0.saturating_add(days)))
        });
        let tier = self.next_tier_evaluation(program, self.clock.day());
        let lapse = self.held_refunds.iter().map(|h| h.lapses_at).min();
        let today = program.local_day(self.clock);
        let segments = next_change(self, program, today).map(|d| program.time_zone.start_of(d));
        [
            expiry.map(day_start),
            tier.map(day_start),
            self.next_birthday_due(program),
            lapse,
            segments,
            self.next_campaign_due(program),
            self.next_code_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The points of the member's next expiry and the day they expire (the oldest lot's), if
    /// the program expires points.
    pub fn next_expiry(&self, program: &Program) -> Option<(Points, Day)> {
        let days = program.points_expiry_days?;
        let lot = self.lots.first()?;
        Some((lot.points, Day(lot.day.0.saturating_add(days))))
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
}
