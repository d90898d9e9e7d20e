//! Refunds and voids: what a purchase gave, taken back (README "Refunds and voids").
//!
//! - Points come back pro rata on the cumulative refunded amount, spend and tier window by the
//!   amount refunded, at every refund (partial or not).
//! - The visit, the stamp and the voucher the stamp completed come back once, when the
//!   purchase is refunded in full (by one refund or the last of several), as recorded in its
//!   [`PurchaseRecord`]. A voucher already used stays used: the refund reports it as
//!   `voucher_kept` and takes nothing else for it.
//! - A refund of a purchase not seen yet (an offline till replaying its queue) is held in the
//!   member's state ([`HeldRefund`]) and applied within the purchase's own command when it
//!   arrives, within the program's `held_refund_horizon_days`.

use serde::{Deserialize, Serialize};

use super::tiers::TierReason;
use super::{add_points, limit_exceeded, signed, MemberState};
use crate::{
    Cents, EventContext, EventId, LedgerEntry, LedgerKind, Outcome, PurchaseRecord, Rejection,
    RewardId, StoreId, Timestamp,
};

/// The most refunds one member holds for purchases not seen yet; one more is refused
/// (`limit-exceeded`, counter `held_refunds`) and changes nothing.
pub const MAX_HELD_REFUNDS: usize = 16;

const MS_PER_DAY: i64 = 86_400_000;

/// A refund waiting for its purchase, with what its ledger entry needs when it applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRefund {
    /// The refund's own event id (its ledger entry names it).
    pub event_id: EventId,
    pub purchase_event_id: EventId,
    /// `None`: everything the purchase has left (a void).
    pub amount_cents: Option<Cents>,
    pub store_id: StoreId,
    /// The program version the refund was accepted under.
    pub program_version: u32,
    /// When the member's clock reaches this, the hold lapses and the refund does nothing.
    pub lapses_at: Timestamp,
}

/// What a refund in full took back besides points and spend.
#[derive(Default)]
struct Reversal {
    visit: bool,
    stamp: bool,
    voucher: Option<RewardId>,
    voucher_kept: Option<RewardId>,
}

impl MemberState {
    /// Refunds `amount` (`None`: all that is left) of `purchase`, this member's purchase
    /// `purchase_event_id` as currently recorded.
    pub(super) fn refund(
        &mut self,
        ctx: &EventContext<'_>,
        purchase_event_id: &EventId,
        purchase: &PurchaseRecord,
        amount: Option<Cents>,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        let total = purchase.amount_cents.get();
        let remaining = total.saturating_sub(purchase.refunded_cents);
        // A void of a purchase with nothing left refunds nothing: refused like too large a
        // refund (the API refuses a refund of 0 before it gets here).
        let void_of_nothing = amount.is_none() && remaining == 0;
        let amount = amount.map_or(remaining, Cents::get);
        if amount > remaining || void_of_nothing {
            return Err(Rejection::RefundExceedsPurchase {
                remaining_cents: remaining,
            });
        }
        // At most the purchase's amount: `amount` is at most what is left of it.
        let refunded = purchase.refunded_cents.saturating_add(amount);
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
        self.spend_cents = self.spend_cents.saturating_sub(amount);
        if let Some(a) = self.window.iter_mut().find(|d| d.day == purchase.day) {
            a.spend_cents = a.spend_cents.saturating_sub(amount);
            a.points = a.points.saturating_sub(owed);
        }
        let full = total > 0 && refunded == total && !purchase.reversed_in_full;
        let reversal = if full {
            self.reverse_counters(ctx, purchase)
        } else {
            Reversal::default()
        };
        self.settle_tier(ctx, TierReason::Refund, entries)?;
        Ok(Outcome::Refund {
            purchase_event_id: purchase_event_id.clone(),
            amount_cents: cents(amount)?,
            points_reversed: taken,
            points_forgiven: forgiven,
            purchase: PurchaseRecord {
                refunded_cents: refunded,
                reversed_points: owed_total,
                reversed_in_full: purchase.reversed_in_full || full,
                ..purchase.clone()
            },
            visit_reversed: reversal.visit,
            stamp_reversed: reversal.stamp,
            voucher_reversed: reversal.voucher,
            voucher_kept: reversal.voucher_kept,
        })
    }

    /// Takes back the visit and the stamp `purchase` gave (a purchase refunded in full).
    /// The stamp comes off the member's current card if it has one (stamps are alike); else,
    /// if the purchase's stamp completed a card whose voucher the member still holds, that
    /// voucher goes and its card comes back with its other stamps; else the stamp is spent in
    /// a card already redeemed (or completed by a later purchase) and stays spent.
    fn reverse_counters(&mut self, ctx: &EventContext<'_>, purchase: &PurchaseRecord) -> Reversal {
        let mut r = Reversal::default();
        if purchase.visit {
            self.visits = self.visits.saturating_sub(1);
            if let Some(a) = self.window.iter_mut().find(|d| d.day == purchase.day) {
                a.visits = a.visits.saturating_sub(1);
            }
            r.visit = true;
        }
        if !purchase.stamp {
            return r;
        }
        if self.stamps > 0 {
            self.stamps -= 1;
            r.stamp = true;
            return r;
        }
        let Some(reward) = &purchase.voucher else {
            return r;
        };
        match self.vouchers.get_mut(reward).filter(|n| **n > 0) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.vouchers.remove(reward);
                }
                let mut back = purchase.card_size.saturating_sub(1);
                // A card made smaller since keeps below its size, as every card does.
                if let Some(card) = &ctx.program.stamp_card {
                    back = back.min(card.size.saturating_sub(1));
                }
                self.stamps = back;
                r.stamp = true;
                r.voucher = Some(reward.clone());
            }
            None => r.voucher_kept = Some(reward.clone()),
        }
        r
    }

    /// Holds a refund of `purchase_event_id`, which no event of the franchise has yet, until
    /// the purchase arrives or the horizon passes (the program's `held_refund_horizon_days`
    /// after the member's clock). Refused as an unknown purchase when the program holds
    /// nothing (horizon 0), and past [`MAX_HELD_REFUNDS`] as a limit.
    pub(super) fn hold_refund(
        &mut self,
        ctx: &EventContext<'_>,
        purchase_event_id: &EventId,
        amount: Option<Cents>,
    ) -> Result<Outcome, Rejection> {
        let days = ctx.program.held_refund_horizon_days;
        if days == 0 {
            return Err(Rejection::UnknownPurchase {
                purchase_event_id: purchase_event_id.clone(),
            });
        }
        if self.held_refunds.len() >= MAX_HELD_REFUNDS {
            return Err(limit_exceeded("held_refunds", MAX_HELD_REFUNDS as u64));
        }
        let lapses_at = Timestamp(
            self.clock
                .0
                .saturating_add(i64::from(days).saturating_mul(MS_PER_DAY)),
        );
        self.held_refunds.push(HeldRefund {
            event_id: ctx.event_id.clone(),
            purchase_event_id: purchase_event_id.clone(),
            amount_cents: amount,
            store_id: ctx.store_id.clone(),
            program_version: ctx.program_version,
            lapses_at,
        });
        Ok(Outcome::Held {
            purchase_event_id: purchase_event_id.clone(),
            amount_cents: amount,
            lapses_at,
        })
    }

    /// Drops the held refunds whose horizon the member's clock has reached.
    pub(super) fn lapse_held_refunds(&mut self) {
        let clock = self.clock;
        self.held_refunds.retain(|h| h.lapses_at > clock);
    }

    /// Applies the refunds held for the purchase being applied (`ctx.event_id`), in the order
    /// they arrived, each for at most what is left of it; returns the purchase's record with
    /// them. Their ledger entries name the refunds' own events.
    pub(super) fn apply_held_refunds(
        &mut self,
        ctx: &EventContext<'_>,
        mut record: PurchaseRecord,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<PurchaseRecord, Rejection> {
        if !self
            .held_refunds
            .iter()
            .any(|h| &h.purchase_event_id == ctx.event_id)
        {
            return Ok(record);
        }
        let (mine, rest): (Vec<HeldRefund>, Vec<HeldRefund>) =
            std::mem::take(&mut self.held_refunds)
                .into_iter()
                .partition(|h| &h.purchase_event_id == ctx.event_id);
        self.held_refunds = rest;
        for h in mine {
            let remaining = record
                .amount_cents
                .get()
                .saturating_sub(record.refunded_cents);
            let amount = h.amount_cents.map_or(remaining, |a| a.get().min(remaining));
            if amount == 0 {
                continue;
            }
            let held_ctx = EventContext {
                event_id: &h.event_id,
                store_id: &h.store_id,
                program_version: h.program_version,
                ..*ctx
            };
            let amount = Some(cents(amount)?);
            if let Outcome::Refund { purchase, .. } =
                self.refund(&held_ctx, ctx.event_id, &record, amount, entries)?
            {
                record = purchase;
            }
        }
        record.held_refunded_cents = record.refunded_cents;
        Ok(record)
    }
}

/// `v` as an amount (it is at most a purchase's amount, itself an amount).
fn cents(v: u64) -> Result<Cents, Rejection> {
    i64::try_from(v)
        .ok()
        .and_then(|v| Cents::new(v).ok())
        .ok_or_else(|| limit_exceeded("amount_cents", Cents::MAX))
}
