//! Redemptions: a voucher the member holds, or the reward's cost in points (within the
//! reward's validity dates and per-member limit); and their cancellation within the program's
//! window, which gives back exactly what the redemption took, once.

use super::{add_one, add_points, signed, MemberState};
use crate::{
    EventContext, EventId, IssuedCode, LedgerEntry, LedgerKind, Outcome, PointLot, Points,
    ProcessedEvent, Rejection, RewardId, Timestamp,
};

/// A redemption as its idempotency record holds it, handed to its cancellation (the engine
/// reads the record by the redemption's event id, as a refund reads its purchase's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedemptionRecord {
    /// The redemption's event time.
    pub at: Timestamp,
    pub reward_id: RewardId,
    pub used_voucher: bool,
    pub points_spent: Points,
    pub lots_taken: Vec<PointLot>,
    pub cancelled_by: Option<EventId>,
    /// The code the redemption issued, if it asked for one (README "Redemption codes").
    pub code: Option<IssuedCode>,
}

impl RedemptionRecord {
    /// The redemption recorded in `rec`, if `rec` is an applied redemption.
    pub fn of(rec: &ProcessedEvent) -> Option<RedemptionRecord> {
        match &rec.outcome {
            Outcome::Redemption {
                reward_id,
                used_voucher,
                points_spent,
                lots_taken,
                cancelled_by,
                code,
            } => Some(RedemptionRecord {
                at: rec.at,
                reward_id: reward_id.clone(),
                used_voucher: *used_voucher,
                points_spent: *points_spent,
                lots_taken: lots_taken.clone(),
                cancelled_by: cancelled_by.clone(),
                code: code.clone(),
            }),
            _ => None,
        }
    }
}

impl MemberState {
    pub(super) fn redeem(
        &mut self,
        ctx: &EventContext<'_>,
        reward_id: &RewardId,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        // A voucher is honoured even when its reward has left the catalogue since it was
        // issued, or is out of its dates or past its limit: the member earned it (the stamps or
        // points it took are gone), and a program change must not take it back. Only new
        // vouchers and redemptions with points need the reward in the program.
        if let Some(n) = self.vouchers.get_mut(reward_id).filter(|n| **n > 0) {
            *n -= 1;
            if *n == 0 {
                self.vouchers.remove(reward_id);
            }
            self.push_entry(
                ctx,
                LedgerKind::Redeem,
                0,
                &format!("voucher:{reward_id}"),
                entries,
            )?;
            return Ok(redeemed(reward_id, true, 0, Vec::new()));
        }
        let Some(reward) = ctx.program.reward(reward_id) else {
            return Err(Rejection::UnknownReward {
                reward_id: reward_id.clone(),
            });
        };
        // Judged on the member's clock (the latest event time), so a backdated event cannot
        // reopen a reward's dates.
        if !reward.valid_on(ctx.program.local_day(self.clock)) {
            return Err(Rejection::RewardNotValid {
                reward_id: reward_id.clone(),
                valid_from: reward.valid_from.map(|d| d.iso()),
                valid_to: reward.valid_to.map(|d| d.iso()),
            });
        }
        let redeemed_before = self.redemptions.get(reward_id).copied().unwrap_or(0);
        if let Some(limit) = reward
            .limit_per_member
            .filter(|_| !reward.within_limit(redeemed_before))
        {
            return Err(Rejection::RedemptionLimitReached {
                reward_id: reward_id.clone(),
                limit_per_member: limit,
            });
        }
        let cost = reward.cost_points;
        if self.points < cost {
            return Err(Rejection::InsufficientPoints {
                needed: cost,
                available: self.points,
            });
        }
        self.points_redeemed = add_points(self.points_redeemed, cost, "points_redeemed")?;
        self.redemptions
            .insert(reward_id.clone(), add_one(redeemed_before, "redemptions")?);
        let lots_taken = self.lots_oldest(cost);
        self.take_oldest(cost);
        self.points -= cost;
        self.push_entry(
            ctx,
            LedgerKind::Redeem,
            signed(cost, true)?,
            &format!("reward:{reward_id}"),
            entries,
        )?;
        Ok(redeemed(reward_id, false, cost, lots_taken))
    }

    /// What [`MemberState::take_oldest`] would take for `n` points, lot by lot.
    fn lots_oldest(&self, mut n: Points) -> Vec<PointLot> {
        let mut out = Vec::new();
        for lot in &self.lots {
            if n == 0 {
                break;
            }
            let t = lot.points.min(n);
            out.push(PointLot {
                day: lot.day,
                points: t,
            });
            n -= t;
        }
        out
    }

    /// Cancels the redemption `r` (the event `redemption_event_id`): within the program's
    /// `redemption_cancel_minutes` of the redemption's time on the member's clock, and only
    /// once. A voucher comes back as a voucher; points come back into the lots they were taken
    /// from (same days, so they expire when they would have; a lot past its age then expires at
    /// the member's next event), `points_redeemed` and the reward's count for its limit go down
    /// by what the redemption added. The ledger entry is a `redeem` entry giving the points
    /// back (positive; 0 for a voucher) with the detail `cancel:<redemption event id>`, so the
    /// redeem entries always sum to minus `points_redeemed`.
    pub(super) fn cancel_redemption(
        &mut self,
        ctx: &EventContext<'_>,
        redemption_event_id: &EventId,
        r: &RedemptionRecord,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        if let Some(by) = &r.cancelled_by {
            return Err(Rejection::RedemptionAlreadyCancelled {
                redemption_event_id: redemption_event_id.clone(),
                cancelled_by: by.clone(),
            });
        }
        let minutes = ctx.program.redemption_cancel_minutes;
        let closes = r.at.0.saturating_add(i64::from(minutes) * 60_000);
        if minutes == 0 || self.clock.0 > closes {
            return Err(Rejection::CancellationWindowClosed {
                cancel_minutes: minutes,
            });
        }
        // A code the redemption issued is voided first: refused if used or expired.
        if let Some(issued) = &r.code {
            self.void_code(ctx, redemption_event_id, issued)?;
        }
        let detail = format!("cancel:{redemption_event_id}");
        self.give_back_taken(ctx, r, &detail, entries)?;
        Ok(Outcome::RedemptionCancelled {
            redemption_event_id: redemption_event_id.clone(),
            reward_id: r.reward_id.clone(),
            points_returned: r.points_spent,
            voucher_returned: r.used_voucher,
        })
    }

    /// Gives back what the redemption `r` took (its voucher, or its points into their lots,
    /// with `points_redeemed` and the reward's count for its limit down by what it added),
    /// writing the `redeem` entry `detail` (the points given back; 0 for a voucher).
    pub(super) fn give_back_taken(
        &mut self,
        ctx: &EventContext<'_>,
        r: &RedemptionRecord,
        detail: &str,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        if r.used_voucher {
            let n = self.vouchers.entry(r.reward_id.clone()).or_default();
            *n = add_one(*n, "vouchers")?;
            self.push_entry(ctx, LedgerKind::Redeem, 0, detail, entries)
        } else {
            self.points = add_points(self.points, r.points_spent, "points")?;
            self.points_redeemed = self.points_redeemed.saturating_sub(r.points_spent);
            self.give_back(r);
            if let Some(n) = self.redemptions.get_mut(&r.reward_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.redemptions.remove(&r.reward_id);
                }
            }
            let change = signed(r.points_spent, false)?;
            self.push_entry(ctx, LedgerKind::Redeem, change, detail, entries)
        }
    }

    /// Puts the points of `r` back into the lots they came from (by day, oldest first); what
    /// its record does not place (a record kept before lots were) goes to the redemption's day.
    /// The lots stay a sum of the balance: the caller added `r.points_spent` to it.
    fn give_back(&mut self, r: &RedemptionRecord) {
        let placed: Points = r.lots_taken.iter().map(|l| l.points).sum();
        let rest = r.points_spent.saturating_sub(placed);
        let rest = PointLot {
            day: r.at.day(),
            points: rest,
        };
        for lot in r.lots_taken.iter().chain(std::iter::once(&rest)) {
            if lot.points == 0 {
                continue;
            }
            match self.lots.binary_search_by_key(&lot.day, |l| l.day) {
                // Within the balance, which the caller checked.
                Ok(i) => self.lots[i].points = self.lots[i].points.saturating_add(lot.points),
                Err(i) => self.lots.insert(i, *lot),
            }
        }
    }
}

impl MemberState {
    /// Converts points into the program's automatic vouchers after an earn: the highest
    /// threshold the balance meets first, as many vouchers of it as the balance allows, then
    /// the next, spending the oldest points (one `redeem` entry `auto_voucher:<reward>` per
    /// threshold, for all its vouchers). A member holds at most `u32::MAX` vouchers of a
    /// reward: points beyond stay points.
    pub(super) fn apply_auto_vouchers(
        &mut self,
        ctx: &EventContext<'_>,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let mut rules: Vec<_> = ctx.program.auto_vouchers.iter().collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.at_points));
        for rule in rules {
            let held = self.vouchers.get(&rule.reward_id).copied().unwrap_or(0);
            let n = (self.points / rule.at_points).min(u64::from(u32::MAX - held));
            if n == 0 {
                continue;
            }
            // At most the balance: n ≤ points / at_points.
            let cost = n * rule.at_points;
            self.points_redeemed = add_points(self.points_redeemed, cost, "points_redeemed")?;
            self.take_oldest(cost);
            self.points -= cost;
            // At most u32::MAX by the `min` above.
            self.vouchers
                .insert(rule.reward_id.clone(), held + n as u32);
            let detail = format!("auto_voucher:{}", rule.reward_id);
            self.push_entry(
                ctx,
                LedgerKind::Redeem,
                signed(cost, true)?,
                &detail,
                entries,
            )?;
        }
        Ok(())
    }
}

fn redeemed(
    reward_id: &RewardId,
    used_voucher: bool,
    points_spent: Points,
    lots_taken: Vec<PointLot>,
) -> Outcome {
    Outcome::Redemption {
        reward_id: reward_id.clone(),
        used_voucher,
        points_spent,
        lots_taken,
        cancelled_by: None,
        code: None,
    }
}
