//! The member's side of campaigns ([`crate::campaigns`]): when a campaign fires (its trigger
//! seen on an event or on the scheduler's advance, for a member of its audience, within its
//! dates and frequency cap, once per trigger occurrence), what its offer gives, when its use
//! counts as a redemption, and the scheduler's due time of the time triggers.
//!
//! Everything here runs inside the member's `apply`, so a firing is exactly once like every
//! other effect: recorded in the member's state with the event that caused it, replayed to
//! the same result, and never repeated by a restart or another node.

use serde::{Deserialize, Serialize};

use super::{add_one, Applied, MemberState};
use crate::birthday::{birthday_in, month_day};
use crate::campaigns::{
    Campaign, CampaignTally, Channel, Firing, Offer, Trigger, CATCH_UP_DAYS, REVENUE_DAYS,
};
use crate::{Day, EventContext, Points, Program, Rejection, RewardId, Timestamp};

const DAY_MS: i64 = 86_400_000;

/// What a member holds of one campaign.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRecord {
    /// The trigger occurrence of the last firing: the campaign does not fire again for it.
    pub last_key: String,
    /// Times of the last firings (at most the cap's `max`), oldest first: the frequency cap.
    pub fired_at: Vec<Timestamp>,
    /// Lifetime firings, redemptions and redeemers' revenue (what a rebuild of the results
    /// counts again).
    pub fired: u32,
    #[serde(default)]
    pub messages: u32,
    pub redeemed: u32,
    pub revenue_cents: u64,
    /// The last firing's offer is still to be used (a redemption then counts), until
    /// `redeem_until`.
    pub open: bool,
    pub redeem_until: Timestamp,
    /// The voucher the last firing gave, whose redemption is the offer's use; `None`: a
    /// purchase is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher: Option<RewardId>,
    /// Purchases after the last firing are counted in its revenue until then.
    pub revenue_until: Timestamp,
    /// Revenue since the last firing while its offer was not used yet: counted when it is.
    pub pending_revenue_cents: u64,
    /// A multiplier offer's percentage and the end of its window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<(u64, Timestamp)>,
}

impl MemberState {
    /// Fires the program's campaigns that the member's change (`applied`, after segments are
    /// settled) or the time on its clock triggers, `points_before` being the balance before
    /// the command. Campaigns are judged in program order, each once per call.
    pub(super) fn settle_campaigns(
        &mut self,
        ctx: &EventContext<'_>,
        applied: &mut Applied,
        points_before: Points,
    ) -> Result<(), Rejection> {
        let program = ctx.program;
        if program.campaigns.is_empty() || self.erased_at.is_some() {
            return Ok(());
        }
        let today = program.local_day(self.clock);
        for c in &program.campaigns {
            let Some(key) = self.trigger_key(c, program, applied, points_before, today) else {
                continue;
            };
            if !c.runs_on(today) || !self.in_audience(c) || !self.under_cap(c, &key) {
                continue;
            }
            self.fire(ctx, c, key, applied)?;
        }
        Ok(())
    }

    /// The occurrence of `c`'s trigger that this change or the clock's day shows, if any.
    fn trigger_key(
        &self,
        c: &Campaign,
        program: &Program,
        applied: &Applied,
        points_before: Points,
        today: Day,
    ) -> Option<String> {
        let catching_up =
            |first: Day| today >= first && today.0 < first.0.saturating_add(CATCH_UP_DAYS);
        match &c.trigger {
            Trigger::Enrolled { after_days } => {
                let due = self.enrolled_at.0 + i64::from(*after_days) * DAY_MS;
                let late = self.clock.0 - due;
                (late >= 0 && late < i64::from(CATCH_UP_DAYS) * DAY_MS)
                    .then(|| "enrolled".to_owned())
            }
            Trigger::Date { on } => (catching_up(*on)
                && program.local_day(self.enrolled_at) <= *on)
                .then(|| format!("date:{}", on.iso())),
            Trigger::Birthday => {
                let md = month_day(self.profile.birthday.as_deref()?)?;
                let (y, _, _) = today.ymd();
                [y - 1, y].into_iter().find_map(|year| {
                    let b = birthday_in(year, md)?;
                    catching_up(b).then(|| format!("birthday:{year}"))
                })
            }
            Trigger::SegmentEntered { segment } => applied
                .segments
                .as_ref()
                .filter(|m| m.joined.iter().any(|s| s == segment))
                .map(|m| format!("segment:{segment}:{}", m.day.iso())),
            Trigger::TierReached { tier } => {
                let m = applied.tier.as_ref()?;
                let from = program.tier_index(m.from.as_deref()?);
                (m.to == *tier && program.tier_index(&m.to) > from)
                    .then(|| format!("tier:{tier}:{}", today.iso()))
            }
            Trigger::PointsReached { points } => (points_before < *points
                && self.points >= *points)
                .then(|| format!("points:{points}:{}", today.iso())),
        }
    }

    /// Whether the member is in `c`'s audience: in one of its segments, and enrolled at or
    /// buying at one of its stores.
    fn in_audience(&self, c: &Campaign) -> bool {
        let segments = c
            .audience
            .segments
            .as_ref()
            .is_none_or(|want| want.iter().any(|s| self.segments.contains(s)));
        let stores = c.audience.stores.as_ref().is_none_or(|want| {
            want.iter()
                .any(|s| *s == self.enrolled_store || self.purchase_days.contains_key(s))
        });
        segments && stores
    }

    /// Whether `c` may fire for the occurrence `key`: not fired for it yet, and fewer than the
    /// cap's `max` firings in its last `days` days.
    fn under_cap(&self, c: &Campaign, key: &str) -> bool {
        let Some(r) = self.campaigns.get(&c.id) else {
            return true;
        };
        let since = self.clock.0 - i64::from(c.frequency_cap.days) * DAY_MS;
        let recent = r.fired_at.iter().filter(|t| t.0 > since).count();
        r.last_key != key && recent < c.frequency_cap.max as usize
    }

    /// Fires `c` for the occurrence `key`: gives its offer, records the firing, and asks for
    /// its messages on the channels the member consented to.
    fn fire(
        &mut self,
        ctx: &EventContext<'_>,
        c: &Campaign,
        key: String,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let now = self.clock;
        let mut record = self.campaigns.remove(&c.id).unwrap_or_default();
        record.voucher = None;
        record.multiplier = None;
        match &c.offer {
            Offer::BonusPoints { points } => {
                self.earn(
                    ctx,
                    *points,
                    &format!("campaign:{}", c.id),
                    &mut applied.entries,
                )?;
                self.apply_auto_vouchers(ctx, &mut applied.entries)?;
            }
            Offer::Voucher { reward_id } => {
                let n = self.vouchers.entry(reward_id.clone()).or_default();
                *n = add_one(*n, "vouchers")?;
                record.voucher = Some(reward_id.clone());
            }
            Offer::Multiplier {
                multiplier_pct,
                days,
            } => {
                let until = Timestamp(now.0.saturating_add(i64::from(*days) * DAY_MS));
                record.multiplier = Some((*multiplier_pct, until));
            }
            Offer::None => {}
        }
        record.last_key = key.clone();
        record.fired_at.push(now);
        let keep = c.frequency_cap.max as usize;
        if record.fired_at.len() > keep {
            let drop = record.fired_at.len() - keep;
            record.fired_at.drain(..drop);
        }
        record.fired = add_one(record.fired, "campaign_firings")?;
        record.open = true;
        record.redeem_until = Timestamp(
            now.0
                .saturating_add(i64::from(c.redeem_within_days) * DAY_MS),
        );
        record.revenue_until = Timestamp(now.0.saturating_add(REVENUE_DAYS * DAY_MS));
        record.pending_revenue_cents = 0;
        self.campaigns.insert(c.id.clone(), record);

        let consent = self.profile.consent;
        let channels: Vec<Channel> = c
            .channels()
            .into_iter()
            .filter(|ch| match ch {
                Channel::Sms => consent.sms,
                Channel::Email => consent.email,
            })
            .collect();
        if let Some(r) = self.campaigns.get_mut(&c.id) {
            r.messages = r.messages.saturating_add(channels.len() as u32);
        }
        applied.campaigns.tallies.push(CampaignTally {
            campaign_id: c.id.clone(),
            fired: 1,
            messages: channels.len() as i64,
            ..CampaignTally::default()
        });
        applied.campaigns.firings.push(Firing {
            campaign_id: c.id.clone(),
            key,
            channels,
        });
        if !applied.changed {
            applied.changed = true;
            self.version = add_one(self.version, "version")?;
        }
        Ok(())
    }

    /// The best multiplier of the member's campaign offers open at `at`, if any.
    pub(super) fn campaign_pct(&self, at: Timestamp) -> Option<u64> {
        self.campaigns
            .values()
            .filter_map(|r| r.multiplier)
            .filter(|(_, until)| at <= *until)
            .map(|(pct, _)| pct)
            .max()
    }

    /// Counts a purchase of `amount` cents at `at` in the results of the campaigns that fired
    /// before it: the use of an open offer that needs no voucher, and the revenue of members
    /// who used theirs.
    pub(super) fn campaign_purchase(
        &mut self,
        at: Timestamp,
        amount: u64,
        tallies: &mut Vec<CampaignTally>,
    ) {
        for (id, r) in self.campaigns.iter_mut() {
            let mut t = CampaignTally {
                campaign_id: id.clone(),
                ..CampaignTally::default()
            };
            if r.open && r.voucher.is_none() && at <= r.redeem_until {
                r.use_offer(&mut t);
            }
            if at <= r.revenue_until {
                if r.open {
                    r.pending_revenue_cents = r.pending_revenue_cents.saturating_add(amount);
                } else {
                    r.count_revenue(amount, &mut t);
                }
            }
            if !t.is_empty() {
                tallies.push(t);
            }
        }
    }

    /// Counts a redemption of a voucher for `reward` at `at` as the use of the open offer that
    /// gave such a voucher (the first one, by campaign id).
    pub(super) fn campaign_voucher_used(
        &mut self,
        reward: &RewardId,
        at: Timestamp,
        tallies: &mut Vec<CampaignTally>,
    ) {
        let used = self
            .campaigns
            .iter_mut()
            .find(|(_, r)| r.open && r.voucher.as_ref() == Some(reward) && at <= r.redeem_until);
        if let Some((id, r)) = used {
            let mut t = CampaignTally {
                campaign_id: id.clone(),
                ..CampaignTally::default()
            };
            r.use_offer(&mut t);
            tallies.push(t);
        }
    }

    /// When a time trigger of a campaign is next due for this member (local midnight of the
    /// day, or the enrolment anniversary's moment), if any is ahead of the clock.
    pub(super) fn next_campaign_due(&self, program: &Program) -> Option<Timestamp> {
        let today = program.local_day(self.clock);
        program
            .campaigns
            .iter()
            .filter_map(|c| {
                let at = match &c.trigger {
                    Trigger::Enrolled { after_days } => {
                        Timestamp(self.enrolled_at.0 + i64::from(*after_days) * DAY_MS)
                    }
                    Trigger::Date { on } => program.time_zone.start_of(*on),
                    Trigger::Birthday => {
                        let md = month_day(self.profile.birthday.as_deref()?)?;
                        let (y, _, _) = today.ymd();
                        let next = (y..=y + 1)
                            .filter_map(|year| birthday_in(year, md))
                            .find(|b| *b > today)?;
                        program.time_zone.start_of(next)
                    }
                    _ => return None,
                };
                let fires_on = program.local_day(at);
                let ended = c.valid_to.is_some_and(|t| fires_on.0 > t.0);
                (at > self.clock && !ended).then_some(at)
            })
            .min()
    }
}

impl CampaignRecord {
    fn use_offer(&mut self, t: &mut CampaignTally) {
        self.open = false;
        self.redeemed = self.redeemed.saturating_add(1);
        t.redeemed += 1;
        let pending = std::mem::take(&mut self.pending_revenue_cents);
        self.count_revenue(pending, t);
    }

    fn count_revenue(&mut self, cents: u64, t: &mut CampaignTally) {
        if cents == 0 {
            return;
        }
        self.revenue_cents = self.revenue_cents.saturating_add(cents);
        t.revenue_cents = t
            .revenue_cents
            .saturating_add(i64::try_from(cents).unwrap_or(i64::MAX));
    }
}
