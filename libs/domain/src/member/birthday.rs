//! The member's birthday reward ([`crate::birthday`]): given at the first event or scheduler
//! run whose local day (program's time zone) is in this year's birthday window, once per
//! birthday year, to a member enrolled long enough; never to an erased member (who has no
//! birthday any more). The due time for the scheduler is the window's first local day.

use super::MemberState;
use crate::birthday::{month_day, BirthdayReward};
use crate::{Day, EventContext, LedgerEntry, Program, Rejection, Timestamp};

impl MemberState {
    /// The birthday reward's settings and the member's birthday (month, day), if both exist.
    fn birthday_setup<'p>(&self, program: &'p Program) -> Option<(&'p BirthdayReward, (u32, u32))> {
        let reward = program.birthday_reward.as_ref()?;
        let md = month_day(self.profile.birthday.as_deref()?)?;
        Some((reward, md))
    }

    /// The first local day the member may get a birthday reward (enrolled long enough).
    fn birthday_eligible_from(&self, program: &Program, reward: &BirthdayReward) -> Day {
        let enrolled = program.local_day(self.enrolled_at);
        Day(enrolled.0.saturating_add(reward.min_days_enrolled))
    }

    /// The birthday year whose window holds `today` and has not been rewarded, if the member
    /// may get it on `today`.
    fn birthday_due_on(&self, program: &Program, today: Day) -> Option<i32> {
        let (reward, md) = self.birthday_setup(program)?;
        if today < self.birthday_eligible_from(program, reward) {
            return None;
        }
        let (y, _, _) = today.ymd();
        // A window can straddle the new year (a week around 31 December).
        [y - 1, y, y + 1].into_iter().find(|year| {
            self.birthday_rewarded.is_none_or(|done| done < *year)
                && reward
                    .window
                    .around(*year, md)
                    .is_some_and(|(first, last)| first <= today && today <= last)
        })
    }

    /// Gives the birthday reward if it is due on the local day of the member's clock: its
    /// points (an `earn` entry `birthday:<year>`) and its voucher.
    pub(super) fn give_birthday_reward(
        &mut self,
        ctx: &EventContext<'_>,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let program = ctx.program;
        let Some(year) = self.birthday_due_on(program, program.local_day(self.clock)) else {
            return Ok(());
        };
        let Some(reward) = program.birthday_reward.as_ref() else {
            return Ok(());
        };
        if reward.points > 0 {
            self.earn(ctx, reward.points, &format!("birthday:{year}"), entries)?;
        }
        if let Some(id) = &reward.reward_id {
            let n = self.vouchers.entry(id.clone()).or_default();
            *n = super::add_one(*n, "vouchers")?;
        }
        self.birthday_rewarded = Some(year);
        self.apply_auto_vouchers(ctx, entries)
    }

    /// When the next birthday reward is due: the first local day, from the clock's day on, of
    /// the next window not rewarded that the member is eligible in (as a UTC instant; at or
    /// before the clock only when it is due now, which the member's next advance gives).
    pub(super) fn next_birthday_due(&self, program: &Program) -> Option<Timestamp> {
        let (reward, md) = self.birthday_setup(program)?;
        let today = program.local_day(self.clock);
        let eligible = self.birthday_eligible_from(program, reward);
        let (y, _, _) = today.ymd();
        let day = (y - 1..=y + 2).find_map(|year| {
            if self.birthday_rewarded.is_some_and(|done| done >= year) {
                return None;
            }
            let (first, last) = reward.window.around(year, md)?;
            let from = first.max(eligible);
            (from <= last && from >= today).then_some(from)
        })?;
        Some(program.time_zone.start_of(day))
    }
}
