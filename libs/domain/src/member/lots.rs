//! The ledger side of a member: earning points into lots, writing entries, spending lots.

use super::{add_one, add_points, signed, MemberState};
use crate::{EventContext, LedgerEntry, LedgerKind, PointLot, Points, Rejection};

impl MemberState {
    pub(super) fn earn(
        &mut self,
        ctx: &EventContext<'_>,
        points: Points,
        detail: &str,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let balance = add_points(self.points, points, "points")?;
        let earned = add_points(self.points_earned, points, "points_earned")?;
        let change = signed(points, false)?;
        // The lot of the event's own day (a late event's too, kept in day order so that the
        // oldest points still expire and are spent first).
        let day = ctx.at.day();
        let pos = self.lots.partition_point(|l| l.day < day);
        match self.lots.get_mut(pos) {
            // A lot is part of the balance, so it fits where the balance does.
            Some(lot) if lot.day == day => lot.points = add_points(lot.points, points, "points")?,
            _ => self.lots.insert(pos, PointLot { day, points }),
        }
        self.points = balance;
        self.points_earned = earned;
        self.push_entry(ctx, LedgerKind::Earn, change, detail, entries)
    }

    pub(super) fn push_entry(
        &mut self,
        ctx: &EventContext<'_>,
        kind: LedgerKind,
        points: i64,
        detail: &str,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        self.last_seq = add_one(self.last_seq, "ledger")?;
        entries.push(LedgerEntry {
            seq: self.last_seq,
            event_id: ctx.event_id.clone(),
            kind,
            points,
            balance_after: self.points,
            store_id: ctx.store_id.clone(),
            at: self.clock.max(ctx.at),
            detail: detail.to_owned(),
            program_version: ctx.program_version,
            tier_change: None,
        });
        Ok(())
    }

    /// Spends from the oldest lots, so that what is spent is what would expire first.
    pub(super) fn take_oldest(&mut self, mut n: Points) {
        while n > 0 {
            let Some(lot) = self.lots.first_mut() else {
                break;
            };
            let t = lot.points.min(n);
            lot.points -= t;
            n -= t;
            if lot.points == 0 {
                self.lots.remove(0);
            }
        }
    }

    /// Takes back from the newest lots: refunded points are usually the most recent ones.
    pub(super) fn take_newest(&mut self, mut n: Points) {
        while n > 0 {
            let Some(lot) = self.lots.last_mut() else {
                break;
            };
            let t = lot.points.min(n);
            lot.points -= t;
            n -= t;
            if lot.points == 0 {
                self.lots.pop();
            }
        }
    }
}
