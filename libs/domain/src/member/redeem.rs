//! Redemptions: a voucher the member holds, or the reward's cost in points.

use super::{add_points, signed, MemberState};
use crate::{EventContext, LedgerEntry, LedgerKind, Outcome, Rejection, RewardId};

impl MemberState {
    pub(super) fn redeem(
        &mut self,
        ctx: &EventContext<'_>,
        reward_id: &RewardId,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        // A voucher is honoured even when its reward has left the catalogue since it was
        // issued: the member earned it (the stamps or points it took are gone), and a program
        // change must not take it back. Only new vouchers and redemptions with points need the
        // reward in the program.
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
            return Ok(Outcome::Redemption {
                reward_id: reward_id.clone(),
                used_voucher: true,
                points_spent: 0,
            });
        }
        let Some(reward) = ctx.program.reward(reward_id) else {
            return Err(Rejection::UnknownReward {
                reward_id: reward_id.clone(),
            });
        };
        let cost = reward.cost_points;
        if self.points < cost {
            return Err(Rejection::InsufficientPoints {
                needed: cost,
                available: self.points,
            });
        }
        self.points_redeemed = add_points(self.points_redeemed, cost, "points_redeemed")?;
        self.take_oldest(cost);
        self.points -= cost;
        self.push_entry(
            ctx,
            LedgerKind::Redeem,
            signed(cost, true)?,
            &format!("reward:{reward_id}"),
            entries,
        )?;
        Ok(Outcome::Redemption {
            reward_id: reward_id.clone(),
            used_voucher: false,
            points_spent: cost,
        })
    }
}
