//! Purchases (points, window, stamps) and refunds (what a purchase earned, taken back).

use super::{add_one, add_points, limit_exceeded, signed, MemberState};
use crate::{
    Cents, EventContext, EventId, LedgerEntry, LedgerKind, Outcome, PurchaseRecord, Rejection,
    MAX_MEMBER_CENTS,
};

impl MemberState {
    pub(super) fn purchase(
        &mut self,
        ctx: &EventContext<'_>,
        amount: Cents,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        let program = ctx.program;
        // The tier at the purchase's time, before it counts (re-evaluated by `advance_clock`).
        let tier_before = program
            .tiers
            .iter()
            .position(|t| t.name == self.tier)
            .unwrap_or_else(|| program.tier_for(self.window_metric(program)));
        let earned = program.purchase_points(amount.get(), tier_before, ctx.at, ctx.store_id);
        // Every total is checked before anything moves (on the caller's copy regardless).
        let spend = amount
            .get()
            .checked_add(self.spend_cents)
            .filter(|s| *s <= MAX_MEMBER_CENTS)
            .ok_or_else(|| limit_exceeded("spend_cents", MAX_MEMBER_CENTS))?;
        if earned > 0 {
            self.earn(ctx, earned, "purchase", entries)?;
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
        self.reevaluate_tier(program);
        // A late event's lot may be past its age already: it expires now, as it would have.
        if let Some(days) = program.points_expiry_days {
            self.expire_lots(ctx, days, self.clock.day(), entries)?;
        }
        if positive {
            if let Some(card) = &program.stamp_card {
                self.stamps = add_one(self.stamps, "stamps")?;
                if self.stamps >= card.size {
                    self.stamps = 0;
                    let n = self.vouchers.entry(card.reward_id.clone()).or_default();
                    *n = add_one(*n, "vouchers")?;
                }
            }
        }
        Ok(Outcome::Purchase(PurchaseRecord {
            amount_cents: amount,
            points_earned: earned,
            day,
            refunded_cents: 0,
            reversed_points: 0,
        }))
    }

    pub(super) fn refund(
        &mut self,
        ctx: &EventContext<'_>,
        purchase_event_id: &EventId,
        purchase: &PurchaseRecord,
        amount: Cents,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        let total = purchase.amount_cents.get();
        let remaining = total.saturating_sub(purchase.refunded_cents);
        if amount.get() > remaining {
            return Err(Rejection::RefundExceedsPurchase {
                remaining_cents: remaining,
            });
        }
        // At most the purchase's amount: `amount` is at most what is left of it.
        let refunded = purchase.refunded_cents.saturating_add(amount.get());
        let owed_total = if total == 0 {
            0
        } else {
            (purchase.points_earned as u128 * refunded as u128 / total as u128) as u64
        };
        let owed = owed_total.saturating_sub(purchase.reversed_points);
        let taken = owed.min(self.points);
        let forgiven = owed - taken;
        if taken > 0 {
            self.points_reversed = add_points(self.points_reversed, taken, "points_reversed")?;
            self.take_newest(taken);
            self.points -= taken;
            self.push_entry(
                ctx,
                LedgerKind::Reverse,
                signed(taken, true)?,
                &format!("refund:{purchase_event_id}"),
                entries,
            )?;
        }
        self.spend_cents = self.spend_cents.saturating_sub(amount.get());
        if let Some(a) = self.window.iter_mut().find(|d| d.day == purchase.day) {
            a.spend_cents = a.spend_cents.saturating_sub(amount.get());
            a.points = a.points.saturating_sub(owed);
        }
        self.reevaluate_tier(ctx.program);
        Ok(Outcome::Refund {
            purchase_event_id: purchase_event_id.clone(),
            amount_cents: amount,
            points_reversed: taken,
            points_forgiven: forgiven,
            purchase: PurchaseRecord {
                refunded_cents: refunded,
                reversed_points: owed_total,
                ..purchase.clone()
            },
        })
    }
}
