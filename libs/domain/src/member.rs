//! A member's state and the rules that move it: enrolment, purchases (points, window, tier,
//! stamps), refunds, redemptions, expiry, and the erasure of the member's personal data.
//!
//! [`apply`] is the single entry point. It either applies a command completely, returning the
//! ledger entries it wrote and its outcome, or refuses it and leaves the state untouched.
//! Time only moves forward for a member: the member's clock is the latest event time seen, so
//! a late-arriving POS event cannot expire points or shrink a window retroactively.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dashboard::{record_purchase, PurchaseDays, TierMove, VisitDelta};
use crate::{
    Cents, Currency, Day, EventId, FranchiseId, LedgerEntry, LedgerKind, MemberId, Outcome, Phone,
    PointLot, Points, Program, PurchaseRecord, Rejection, RewardId, StoreId, TierMetric, Timestamp,
    MAX_MEMBER_CENTS, MAX_POINTS_BALANCE,
};

/// The refusal of an event that would take `counter` past `limit`.
fn limit_exceeded(counter: &str, limit: u64) -> Rejection {
    Rejection::LimitExceeded {
        counter: counter.to_owned(),
        limit,
    }
}

/// `v + n` if it stays within [`MAX_POINTS_BALANCE`], else the refusal naming `counter`.
fn add_points(v: Points, n: Points, counter: &str) -> Result<Points, Rejection> {
    v.checked_add(n)
        .filter(|s| *s <= MAX_POINTS_BALANCE)
        .ok_or_else(|| limit_exceeded(counter, MAX_POINTS_BALANCE))
}

/// `v + 1` for a count of events (visits, stamps, vouchers), which no real member reaches the
/// end of; checked all the same.
fn add_one<T: TryFrom<u64> + Into<u64> + Copy>(v: T, counter: &str) -> Result<T, Rejection> {
    let next = v.into().checked_add(1);
    next.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| limit_exceeded(counter, v.into()))
}

/// A change of points as a ledger entry's signed amount (within int64 since points are
/// bounded by [`MAX_POINTS_BALANCE`]).
fn signed(points: Points, negative: bool) -> Result<i64, Rejection> {
    let v = i64::try_from(points).map_err(|_| limit_exceeded("points", MAX_POINTS_BALANCE))?;
    Ok(if negative { -v } else { v })
}

/// Personal data given at enrolment. Kept with the member, never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub phone: Phone,
    pub name: Option<String>,
    /// `YYYY-MM-DD`.
    pub birthday: Option<String>,
}

/// Personal data: debug output (of a state, a command, an envelope) never shows it, only
/// whether a name or a birthday is there.
impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = |v: &Option<String>| if v.is_some() { "Some(***)" } else { "None" };
        f.debug_struct("Profile")
            .field("phone", &self.phone)
            .field("name", &format_args!("{}", given(&self.name)))
            .field("birthday", &format_args!("{}", given(&self.birthday)))
            .finish()
    }
}

/// Activity of one day, summed for tier qualification over the program's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayActivity {
    pub day: Day,
    pub spend_cents: u64,
    pub points: Points,
    pub visits: u32,
}

/// Everything the platform knows about one member, rebuilt from the store when the member's
/// actor is activated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub member_id: MemberId,
    pub franchise_id: FranchiseId,
    /// Number of state changes applied; the store refuses a write whose expected version is
    /// not the stored one, which fences a stale writer.
    pub version: u64,
    pub enrolled_at: Timestamp,
    pub enrolled_store: StoreId,
    pub profile: Profile,
    /// Current balance: the sum of the ledger, and of `lots`.
    pub points: Points,
    /// Unspent points by the day they were earned, oldest first.
    pub lots: Vec<PointLot>,
    pub points_earned: Points,
    pub points_redeemed: Points,
    pub points_expired: Points,
    pub points_reversed: Points,
    pub tier: String,
    pub stamps: u32,
    pub vouchers: BTreeMap<RewardId, u32>,
    pub visits: u64,
    /// Net spend (purchases minus refunds), all time.
    pub spend_cents: u64,
    /// Daily activity inside the tier window, oldest first.
    pub window: Vec<DayActivity>,
    /// Latest event time applied.
    pub clock: Timestamp,
    pub last_visit: Option<Timestamp>,
    /// The `seq` of the last ledger entry.
    pub last_seq: u64,
    /// Local days of the member's purchases by store, for the dashboards' member counts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub purchase_days: PurchaseDays,
    /// When the member's personal data was erased ([`MemberCommand::Erase`]): the profile then
    /// holds [`Phone::ERASED`] and no name or birthday, and the member takes no more commands.
    /// Absent from states stored before erasure existed (and from every state not erased), so
    /// those read as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<Timestamp>,
}

/// A command aimed at one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberCommand {
    Enrol {
        profile: Profile,
    },
    Purchase {
        amount: Cents,
        currency: Currency,
    },
    Refund {
        purchase_event_id: EventId,
        amount: Cents,
        /// The purchase being refunded as currently recorded, if it is this member's.
        purchase: Option<PurchaseRecord>,
    },
    Redemption {
        reward_id: RewardId,
    },
    /// Erase the member's personal data (README "Privacy"): phone, name and birthday go, the
    /// balance, counters and ledger (which hold none) stay. Once erased, a member refuses
    /// every other command with [`Rejection::MemberErased`]; erasing again changes nothing.
    Erase,
}

/// Where and when an event happened, and the program version it is judged by.
#[derive(Clone, Copy, Debug)]
pub struct EventContext<'a> {
    pub event_id: &'a EventId,
    pub store_id: &'a StoreId,
    pub at: Timestamp,
    pub program: &'a Program,
}

/// The effect of an applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub entries: Vec<LedgerEntry>,
    pub outcome: Outcome,
    /// Whether the member state changed (an enrolment of an existing member does not).
    pub changed: bool,
    /// The changes of the dashboards' member counts (a purchase's).
    pub visits: Vec<VisitDelta>,
    /// The member's move between tiers, if any (an enrolment enters the first tier).
    pub tier: Option<TierMove>,
}

/// Applies `cmd` to the member `member_id`, whose current state is `state` (`None` if not
/// enrolled). On `Err`, `state` is unchanged.
pub fn apply(
    state: &mut Option<MemberState>,
    member_id: &MemberId,
    franchise_id: &FranchiseId,
    cmd: &MemberCommand,
    ctx: &EventContext<'_>,
) -> Result<Applied, Rejection> {
    match (state.as_mut(), cmd) {
        (None, MemberCommand::Enrol { profile }) => {
            let (s, applied) = MemberState::enrol(
                member_id.clone(),
                franchise_id.clone(),
                profile.clone(),
                ctx,
            )?;
            *state = Some(s);
            Ok(applied)
        }
        (Some(s), MemberCommand::Enrol { .. }) if s.erased_at.is_some() => {
            Err(Rejection::MemberErased)
        }
        (Some(_), MemberCommand::Enrol { .. }) => Ok(Applied {
            entries: Vec::new(),
            outcome: Outcome::Enrolled { created: false },
            changed: false,
            visits: Vec::new(),
            tier: None,
        }),
        (None, _) => Err(Rejection::UnknownMember),
        (Some(s), MemberCommand::Erase) => Ok(s.erase(ctx)),
        (Some(s), _) if s.erased_at.is_some() => Err(Rejection::MemberErased),
        (Some(s), cmd) => {
            // Apply on a copy so a refusal found half-way leaves no trace.
            let mut next = s.clone();
            let applied = next.apply_to_member(cmd, ctx)?;
            *s = next;
            Ok(applied)
        }
    }
}

impl MemberState {
    fn enrol(
        member_id: MemberId,
        franchise_id: FranchiseId,
        profile: Profile,
        ctx: &EventContext<'_>,
    ) -> Result<(MemberState, Applied), Rejection> {
        let mut s = MemberState {
            member_id,
            franchise_id,
            version: 0,
            enrolled_at: ctx.at,
            enrolled_store: ctx.store_id.clone(),
            profile,
            points: 0,
            lots: Vec::new(),
            points_earned: 0,
            points_redeemed: 0,
            points_expired: 0,
            points_reversed: 0,
            tier: ctx.program.tiers[0].name.clone(),
            stamps: 0,
            vouchers: BTreeMap::new(),
            visits: 0,
            spend_cents: 0,
            window: Vec::new(),
            clock: ctx.at,
            last_visit: None,
            last_seq: 0,
            purchase_days: PurchaseDays::new(),
            erased_at: None,
        };
        let mut entries = Vec::new();
        let bonus = ctx.program.signup_bonus;
        if bonus > 0 {
            s.earn(ctx, bonus, "signup_bonus", &mut entries)?;
        }
        s.version = 1;
        let applied = Applied {
            entries,
            outcome: Outcome::Enrolled { created: true },
            changed: true,
            visits: Vec::new(),
            tier: Some(TierMove {
                from: None,
                to: s.tier.clone(),
            }),
        };
        Ok((s, applied))
    }

    fn apply_to_member(
        &mut self,
        cmd: &MemberCommand,
        ctx: &EventContext<'_>,
    ) -> Result<Applied, Rejection> {
        let mut entries = Vec::new();
        let tier_before = self.tier.clone();
        self.advance_clock(ctx, &mut entries)?;
        let mut visits = Vec::new();
        let outcome = match cmd {
            MemberCommand::Enrol { .. } => Outcome::Enrolled { created: false },
            MemberCommand::Purchase { amount, currency } => {
                if currency != &ctx.program.currency {
                    return Err(Rejection::CurrencyMismatch {
                        expected: ctx.program.currency.to_string(),
                    });
                }
                let local_day = ctx.program.local_day(ctx.at);
                visits = record_purchase(&mut self.purchase_days, ctx.store_id, local_day);
                self.purchase(ctx, *amount, &mut entries)?
            }
            MemberCommand::Refund {
                purchase_event_id,
                amount,
                purchase,
            } => {
                let Some(purchase) = purchase else {
                    return Err(Rejection::UnknownPurchase {
                        purchase_event_id: purchase_event_id.clone(),
                    });
                };
                self.refund(ctx, purchase_event_id, purchase, *amount, &mut entries)?
            }
            MemberCommand::Redemption { reward_id } => self.redeem(ctx, reward_id, &mut entries)?,
            // Handled by `apply` before any clock moves.
            MemberCommand::Erase => return Ok(self.erase(ctx)),
        };
        self.version = add_one(self.version, "version")?;
        let tier = (self.tier != tier_before).then(|| TierMove {
            from: Some(tier_before),
            to: self.tier.clone(),
        });
        Ok(Applied {
            entries,
            outcome,
            changed: true,
            visits,
            tier,
        })
    }

    /// Erases the member's personal data: the phone becomes [`Phone::ERASED`], name and
    /// birthday go, `erased_at` is the event's time. Nothing else moves: not the clock (no
    /// points expire, no tier changes on an erasure), not the balance, not the ledger (whose
    /// entries hold no personal data), and no ledger entry is written. A member already erased
    /// is unchanged (the outcome names the first erasure's time).
    fn erase(&mut self, ctx: &EventContext<'_>) -> Applied {
        let changed = self.erased_at.is_none();
        if changed {
            self.profile = Profile {
                phone: Phone::erased(),
                name: None,
                birthday: None,
            };
            self.erased_at = Some(ctx.at);
            // A version past `u64::MAX` cannot be reached by one change per command.
            self.version = self.version.saturating_add(1);
        }
        Applied {
            entries: Vec::new(),
            outcome: Outcome::Erased {
                erased_at: self.erased_at.unwrap_or(ctx.at),
            },
            changed,
            visits: Vec::new(),
            tier: None,
        }
    }

    /// Moves the member's clock to the event's time (never backwards), expiring points that
    /// reached the program's expiry age, dropping activity that left the tier window and
    /// re-evaluating the tier on what is left, so that the command is judged at the tier the
    /// member has at its time (a purchase after the window slid earns at the lower tier, not
    /// at the one qualified for more than a window ago).
    fn advance_clock(
        &mut self,
        ctx: &EventContext<'_>,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        self.clock = self.clock.max(ctx.at);
        let today = self.clock.day();
        if let Some(days) = ctx.program.points_expiry_days {
            let mut expired: Points = 0;
            while let Some(lot) = self.lots.first() {
                if lot.day.0.saturating_add(days) <= today.0 {
                    expired = expired.saturating_add(lot.points);
                    self.lots.remove(0);
                } else {
                    break;
                }
            }
            // The lots sum to the balance; the entry is what the balance lost, so the ledger
            // stays its sum whatever happens.
            let after = self.points.saturating_sub(expired);
            let lost = self.points - after;
            if lost > 0 {
                self.points_expired = add_points(self.points_expired, lost, "points_expired")?;
                self.points = after;
                self.push_entry(
                    ctx,
                    LedgerKind::Expire,
                    signed(lost, true)?,
                    "expired",
                    entries,
                )?;
            }
        }
        let window = ctx.program.tier_qualification.window_days;
        let oldest = today.0.saturating_sub(window.saturating_sub(1));
        self.window.retain(|d| d.day.0 >= oldest);
        self.reevaluate_tier(ctx.program);
        Ok(())
    }

    fn purchase(
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
            self.last_visit = Some(self.clock);
        }
        let day = self.clock.day();
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
        self.reevaluate_tier(program);
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

    fn refund(
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

    fn redeem(
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

    fn earn(
        &mut self,
        ctx: &EventContext<'_>,
        points: Points,
        detail: &str,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let balance = add_points(self.points, points, "points")?;
        let earned = add_points(self.points_earned, points, "points_earned")?;
        let change = signed(points, false)?;
        let day = self.clock.max(ctx.at).day();
        match self.lots.last_mut() {
            // A lot is part of the balance, so it fits where the balance does.
            Some(lot) if lot.day == day => lot.points = add_points(lot.points, points, "points")?,
            _ => self.lots.push(PointLot { day, points }),
        }
        self.points = balance;
        self.points_earned = earned;
        self.push_entry(ctx, LedgerKind::Earn, change, detail, entries)
    }

    fn push_entry(
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
        });
        Ok(())
    }

    /// Spends from the oldest lots, so that what is spent is what would expire first.
    fn take_oldest(&mut self, mut n: Points) {
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
    fn take_newest(&mut self, mut n: Points) {
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

    fn activity(&mut self, day: Day) -> &mut DayActivity {
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
    fn reevaluate_tier(&mut self, program: &Program) {
        let idx = program.tier_for(self.window_metric(program));
        self.tier = program.tiers[idx].name.clone();
    }
}
