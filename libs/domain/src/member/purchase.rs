//! Purchases (points, window, stamps); their refunds are in `refund.rs`.

use super::tiers::TierReason;
use super::{add_one, add_points, limit_exceeded, MemberState};
use crate::{
    Cents, EventContext, LedgerEntry, Outcome, PurchaseItem, PurchaseRecord, Rejection,
    MAX_MEMBER_CENTS,
};

impl MemberState {
    pub(super) fn purchase(
        &mut self,
        ctx: &EventContext<'_>,
        amount: Cents,
        items: &[PurchaseItem],
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        let program = ctx.program;
        // The tier at the purchase's time, before it counts (evaluated by `advance_clock`).
        let tier_before = program
            .tiers
            .iter()
            .position(|t| t.name == self.tier)
            .unwrap_or_else(|| program.tier_for(self.window_metric(program)));
        // A campaign's multiplier competes with the schedule's: the best one applies, and
        // multiplies with the tier's (README "Campaigns").
        let schedule = program.bonus_pct(ctx.at, ctx.store_id);
        let pct = self
            .campaign_pct(ctx.at)
            .map_or(schedule, |c| c.max(schedule));
        let base = program.points_with(amount.get(), tier_before, pct);
        let bonuses =
            program.item_bonus_points(items, amount.get(), tier_before, ctx.at, ctx.store_id);
        // What the purchase earned, its item bonuses included (a refund reverses it pro rata).
        let earned = bonuses
            .iter()
            .try_fold(base, |t, (_, p)| add_points(t, *p, "points_earned"))?;
        // Every total is checked before anything moves (on the caller's copy regardless).
        let spend = amount
            .get()
            .checked_add(self.spend_cents)
            .filter(|s| *s <= MAX_MEMBER_CENTS)
            .ok_or_else(|| limit_exceeded("spend_cents", MAX_MEMBER_CENTS))?;
        if base > 0 {
            self.earn(ctx, base, "purchase", entries)?;
        }
        for (bonus, points) in bonuses {
            self.earn(ctx, points, &format!("item_bonus:{}", bonus.name), entries)?;
        }
        let positive = amount.get() > 0;
        self.spend_cents = spend;
        if positive {
            self.visits = add_one(self.visits, "visits")?;
            self.last_visit = Some(self.last_visit.map_or(ctx.at, |v| v.max(ctx.at)));
        }
        // Booked on the event's own day (a late event's too), if that day is still inside the
        // tier window ending on the clock's day; older activity would have left it already.
        let day = ctx.at.day();
        if self.in_window(ctx.program, day) {
            let activity = self.activity(day);
            // A day's activity is part of the member's totals, so it fits where they do.
            activity.spend_cents = activity
                .spend_cents
                .checked_add(amount.get())
                .ok_or_else(|| limit_exceeded("spend_cents", MAX_MEMBER_CENTS))?;
            activity.points = add_points(activity.points, earned, "points_earned")?;
            if positive {
                activity.visits = add_one(activity.visits, "visits")?;
            }
        }
        self.settle_tier(ctx, TierReason::Qualified, entries)?;
        // A late event's lot may be past its age already: it expires now, as it would have.
        if let Some(days) = program.points_expiry_days {
            self.expire_lots(ctx, days, self.clock.day(), entries)?;
        }
        let mut record = PurchaseRecord {
            amount_cents: amount,
            points_earned: earned,
            day,
            refunded_cents: 0,
            reversed_points: 0,
            visit: positive,
            stamp: false,
            voucher: None,
            card_size: 0,
            reversed_in_full: false,
            held_refunded_cents: 0,
        };
        if positive {
            if let Some(card) = &program.stamp_card {
                self.stamps = add_one(self.stamps, "stamps")?;
                record.stamp = true;
                if self.stamps >= card.size {
                    self.stamps = 0;
                    let n = self.vouchers.entry(card.reward_id.clone()).or_default();
                    *n = add_one(*n, "vouchers")?;
                    record.voucher = Some(card.reward_id.clone());
                    record.card_size = card.size;
                }
            }
        }
        // Refunds that arrived before this purchase (an offline till's) apply now, within it.
        let record = self.apply_held_refunds(ctx, record, entries)?;
        Ok(Outcome::Purchase(record))
    }
}
