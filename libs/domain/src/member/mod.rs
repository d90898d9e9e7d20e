//! A member's state and the rules that move it: enrolment, purchases (points, window, tier,
//! stamps), refunds, redemptions, expiry, and the erasure of the member's personal data.
//!
//! [`apply`] is the single entry point. It either applies a command completely, returning the
//! ledger entries it wrote and its outcome, or refuses it and leaves the state untouched.
//! Time only moves forward for a member: the member's clock is the latest event time seen, so
//! a late-arriving POS event cannot expire points or shrink a window retroactively.

mod birthday;
mod campaigns;
mod clock;
mod codes;
mod lots;
mod purchase;
mod redeem;
mod refund;
mod tiers;

pub use refund::{HeldRefund, MAX_HELD_REFUNDS};

pub use clock::day_start;

pub use redeem::RedemptionRecord;

pub use codes::{CodeSettled, RedemptionCode, MAX_REDEMPTION_CODES};

pub use tiers::{TierChange, TierDowngrade, TierReason};

pub use campaigns::CampaignRecord;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::campaigns::{CampaignTally, Firing};
use crate::dashboard::{record_purchase, PurchaseDays, TierMove, VisitDelta};
use crate::segments::{segment_move, segments_of, SegmentMove};
use crate::{
    Cents, Currency, Day, EventId, FranchiseId, LedgerEntry, MemberId, Outcome, Phone, PointLot,
    Points, Program, PurchaseItem, PurchaseRecord, Rejection, RewardId, StoreId, Timestamp,
    MAX_POINTS_BALANCE,
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

/// Personal data given at enrolment. Kept with the member, never logged; sealed wherever it
/// is stored or logged ([`crate::privacy`]: `{"sealed": …}` inside a codec's scope, the clear
/// fields below outside it).
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    pub phone: Phone,
    pub name: Option<String>,
    /// `YYYY-MM-DD`.
    pub birthday: Option<String>,
    /// The channels the member agreed to receive offers on (README "Privacy"): nothing is
    /// sent on a channel without it. Absent from profiles stored before it existed (none).
    pub consent: Consent,
    /// Where e-mail offers go ([`crate::EmailAddress`]: validated, its domain lowercase).
    /// Absent when none was given, so that profiles without one are stored, logged and
    /// fingerprinted as before it existed.
    pub email: Option<String>,
}

/// The clear form of a [`Profile`], as every profile was stored before sealing existed.
#[derive(Serialize)]
struct ClearProfile<'a> {
    phone: &'a Phone,
    name: &'a Option<String>,
    birthday: &'a Option<String>,
    #[serde(skip_serializing_if = "no_consent")]
    consent: &'a Consent,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: &'a Option<String>,
}

fn no_consent(c: &&Consent) -> bool {
    c.is_none()
}

/// A stored profile: sealed, or clear (written outside a codec, or before sealing existed).
#[derive(Deserialize)]
struct StoredProfile {
    #[serde(default)]
    sealed: Option<String>,
    phone: Option<Phone>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    birthday: Option<String>,
    #[serde(default)]
    consent: Consent,
    #[serde(default)]
    email: Option<String>,
}

impl Serialize for Profile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let clear = ClearProfile {
            phone: &self.phone,
            name: &self.name,
            birthday: &self.birthday,
            consent: &self.consent,
            email: &self.email,
        };
        crate::privacy::serialize("profile", &clear, s)
    }
}

impl<'de> Deserialize<'de> for Profile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut stored = StoredProfile::deserialize(d)?;
        let stored = match (stored.sealed.take(), &stored.phone) {
            (Some(_), Some(_)) => {
                return Err(D::Error::custom("a profile both sealed and in clear"));
            }
            (Some(sealed), None) => {
                let opened: StoredProfile = crate::privacy::open("profile", &sealed)?;
                if opened.sealed.is_some() {
                    return Err(D::Error::custom("a sealed profile sealed twice"));
                }
                opened
            }
            (None, _) => stored,
        };
        Ok(Profile {
            phone: stored
                .phone
                .ok_or_else(|| D::Error::missing_field("phone"))?,
            name: stored.name,
            birthday: stored.birthday,
            consent: stored.consent,
            email: stored.email,
        })
    }
}

/// The member's consent to offers, per channel. Not personal data by itself, but kept with the
/// profile, erased with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    #[serde(default)]
    pub sms: bool,
    #[serde(default)]
    pub email: bool,
}

impl Consent {
    pub fn is_none(&self) -> bool {
        !self.sms && !self.email
    }
}

/// Personal data: debug output (of a state, a command, an envelope) never shows it, only
/// whether a name, a birthday or an e-mail address is there.
impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = |v: &Option<String>| if v.is_some() { "Some(***)" } else { "None" };
        f.debug_struct("Profile")
            .field("phone", &self.phone)
            .field("name", &format_args!("{}", given(&self.name)))
            .field("birthday", &format_args!("{}", given(&self.birthday)))
            .field("consent", &self.consent)
            .field("email", &format_args!("{}", given(&self.email)))
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
    /// Refunds of purchases not seen yet, in arrival order (at most [`MAX_HELD_REFUNDS`]):
    /// applied when their purchase arrives, dropped at their horizon. Absent from states
    /// stored before refunds were held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_refunds: Vec<HeldRefund>,
    /// Redemptions paid with points, by reward, net of cancellations: what a reward's
    /// `limit_per_member` caps. Absent from states stored before limits existed (read as none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redemptions: BTreeMap<RewardId, u32>,
    /// The tier the downgrade rule keeps the member at (README "Tiers"): the tier earned in
    /// the last calendar period, or the one held through a grace period. The member's tier
    /// is never below it. Absent: none (activity alone decides), as in states stored before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_kept: Option<String>,
    /// A downgrade decided by an evaluation and due after the program's grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_downgrade: Option<TierDowngrade>,
    /// The birthday year last rewarded (README "Birthdays"): one reward per year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday_rewarded: Option<i32>,
    /// The segments the member is counted in (README "Segments"): those of the program at
    /// the member's latest change, on the local day of its clock. Absent when none (and from
    /// states stored before segments, which were counted in none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// The campaigns that fired for the member, by campaign id (README "Campaigns"): what
    /// keeps a firing once per trigger occurrence and within its cap, and tracks the use of
    /// its offer. Absent when none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub campaigns: BTreeMap<String, CampaignRecord>,
    /// Redemption codes issued (README "Redemption codes"), oldest first: outstanding ones,
    /// and settled ones for a week after their expiry (at most [`MAX_REDEMPTION_CODES`]).
    /// Absent when none (and from states stored before codes existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redemption_codes: Vec<RedemptionCode>,
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
        /// The purchase's line items, if the POS sent them (validated by
        /// [`crate::items::parse_items`]); they can only add item bonuses.
        items: Vec<PurchaseItem>,
    },
    Refund {
        purchase_event_id: EventId,
        /// `None`: all that is left of the purchase (a void).
        amount: Option<Cents>,
        /// The purchase being refunded as currently recorded, if it is this member's.
        purchase: Option<PurchaseRecord>,
        /// No event `purchase_event_id` is recorded at all (not yet: an offline till's
        /// purchase): the refund is held for it rather than refused. Ignored when `purchase`
        /// is given; when the id names another event (another member's purchase, an
        /// anonymous sale, a refund...) it is false and the refund is refused.
        purchase_unseen: bool,
    },
    Redemption {
        reward_id: RewardId,
    },
    /// Cancel the redemption `redemption_event_id` within the program's
    /// `redemption_cancel_minutes`, giving back what it took, once.
    CancelRedemption {
        redemption_event_id: EventId,
        /// The redemption as currently recorded, if it is this member's.
        redemption: Option<RedemptionRecord>,
    },
    /// A redemption that takes its points (or voucher) now and issues the single-use `code`
    /// (made by the gateway, README "Redemption codes") instead of handing the reward over.
    RedemptionAsCode {
        reward_id: RewardId,
        code: String,
    },
    /// Use the member's redemption code `code` at the till, once, before its expiry.
    ConsumeCode {
        code: String,
    },
    /// Erase the member's personal data (README "Privacy"): phone, name and birthday go, the
    /// balance, counters and ledger (which hold none) stay. Once erased, a member refuses
    /// every other command with [`Rejection::MemberErased`]; erasing again changes nothing.
    Erase,
    /// Time only, sent by the scheduler at the member's due time
    /// ([`MemberState::next_due`]): moves the clock to the event's time, expiring the lots
    /// that reached their age and dropping window days (which may lower the tier), as the
    /// member's next event would. Idempotent: advancing to a time the clock already passed,
    /// with nothing due at the clock, changes nothing (no version, no entry).
    Advance,
    /// Change the member's consent to offers (README "Privacy"), per channel (`None`: as it
    /// is), and optionally the e-mail address: sent by the member (the opt-out link, the card
    /// page) or headquarters and tills through the API. Only the profile changes: no clock
    /// move, no ledger entry; a new version when anything changed, none when it already was
    /// so. E-mail consent needs an address ([`Rejection::EmailRequired`]).
    SetConsent {
        sms: Option<bool>,
        email: Option<bool>,
        email_address: Option<crate::EmailAddress>,
    },
}

/// Where and when an event happened, and the program version it is judged by.
#[derive(Clone, Copy, Debug)]
pub struct EventContext<'a> {
    pub event_id: &'a EventId,
    pub store_id: &'a StoreId,
    pub at: Timestamp,
    pub program: &'a Program,
    /// The version of `program` (stamped on the command by the gateway), recorded in every
    /// ledger entry the event writes.
    pub program_version: u32,
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
    /// The member's change of segments, if any ([`MemberState::segments`]).
    pub segments: Option<SegmentMove>,
    /// The campaigns the command fired and what it changed in their results.
    pub campaigns: CampaignEffects,
}

/// What a command did to campaigns ([`crate::campaigns`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CampaignEffects {
    pub firings: Vec<Firing>,
    pub tallies: Vec<CampaignTally>,
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
    let points_before = state.as_ref().map_or(0, |s| s.points);
    match (state.as_mut(), cmd) {
        (None, MemberCommand::Enrol { profile }) => {
            let (mut s, applied) = MemberState::enrol(
                member_id.clone(),
                franchise_id.clone(),
                profile.clone(),
                ctx,
            )?;
            let mut applied = applied;
            s.settle_segments(ctx.program, &mut applied)?;
            s.settle_campaigns(ctx, &mut applied, points_before)?;
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
            segments: None,
            campaigns: CampaignEffects::default(),
        }),
        // A code names its member: one not enrolled (or erased) tells nothing more than a
        // forged code does.
        (None, MemberCommand::ConsumeCode { .. }) => Err(Rejection::UnknownCode),
        (Some(s), MemberCommand::ConsumeCode { .. }) if s.erased_at.is_some() => {
            Err(Rejection::UnknownCode)
        }
        (None, _) => Err(Rejection::UnknownMember),
        (Some(s), MemberCommand::Erase) => {
            let mut applied = s.erase(ctx);
            s.settle_segments(ctx.program, &mut applied)?;
            Ok(applied)
        }
        (Some(s), _) if s.erased_at.is_some() => Err(Rejection::MemberErased),
        (Some(s), MemberCommand::SetConsent { .. }) => {
            let mut next = s.clone();
            let mut applied = next.set_consent(cmd)?;
            next.settle_segments(ctx.program, &mut applied)?;
            *s = next;
            Ok(applied)
        }
        (Some(s), MemberCommand::Advance) => {
            let mut next = s.clone();
            let mut applied = next.advance(ctx)?;
            next.settle_segments(ctx.program, &mut applied)?;
            next.settle_campaigns(ctx, &mut applied, points_before)?;
            if applied.changed {
                *s = next;
            }
            Ok(applied)
        }
        (Some(s), cmd) => {
            // Apply on a copy so a refusal found half-way leaves no trace.
            let mut next = s.clone();
            let mut applied = next.apply_to_member(cmd, ctx)?;
            next.settle_segments(ctx.program, &mut applied)?;
            next.settle_campaigns(ctx, &mut applied, points_before)?;
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
            held_refunds: Vec::new(),
            redemptions: BTreeMap::new(),
            tier_kept: None,
            tier_downgrade: None,
            birthday_rewarded: None,
            segments: Vec::new(),
            campaigns: BTreeMap::new(),
            redemption_codes: Vec::new(),
        };
        let mut entries = Vec::new();
        let bonus = ctx.program.signup_bonus;
        if bonus > 0 {
            s.earn(ctx, bonus, "signup_bonus", &mut entries)?;
            s.apply_auto_vouchers(ctx, &mut entries)?;
        }
        s.give_birthday_reward(ctx, &mut entries)?;
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
            segments: None,
            campaigns: CampaignEffects::default(),
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
        let mut tallies = Vec::new();
        let outcome = match cmd {
            MemberCommand::Enrol { .. } => Outcome::Enrolled { created: false },
            MemberCommand::Purchase {
                amount,
                currency,
                items,
            } => {
                if currency != &ctx.program.currency {
                    return Err(Rejection::CurrencyMismatch {
                        expected: ctx.program.currency.to_string(),
                    });
                }
                let local_day = ctx.program.local_day(ctx.at);
                visits = record_purchase(&mut self.purchase_days, ctx.store_id, local_day);
                let outcome = self.purchase(ctx, *amount, items, &mut entries)?;
                self.apply_auto_vouchers(ctx, &mut entries)?;
                self.campaign_purchase(ctx.at, amount.get(), &mut tallies);
                outcome
            }
            MemberCommand::Refund {
                purchase_event_id,
                amount,
                purchase,
                purchase_unseen,
            } => match purchase {
                Some(p) => self.refund(ctx, purchase_event_id, p, *amount, &mut entries)?,
                None if *purchase_unseen => self.hold_refund(ctx, purchase_event_id, *amount)?,
                None => {
                    return Err(Rejection::UnknownPurchase {
                        purchase_event_id: purchase_event_id.clone(),
                    })
                }
            },
            MemberCommand::Redemption { reward_id } => {
                let outcome = self.redeem(ctx, reward_id, &mut entries)?;
                if matches!(
                    outcome,
                    Outcome::Redemption {
                        used_voucher: true,
                        ..
                    }
                ) {
                    self.campaign_voucher_used(reward_id, ctx.at, &mut tallies);
                }
                outcome
            }
            MemberCommand::RedemptionAsCode { reward_id, code } => {
                let outcome = self.redeem_as_code(ctx, reward_id, code, &mut entries)?;
                if matches!(
                    outcome,
                    Outcome::Redemption {
                        used_voucher: true,
                        ..
                    }
                ) {
                    self.campaign_voucher_used(reward_id, ctx.at, &mut tallies);
                }
                outcome
            }
            MemberCommand::ConsumeCode { code } => self.consume_code(ctx, code)?,
            MemberCommand::CancelRedemption {
                redemption_event_id,
                redemption,
            } => {
                let Some(redemption) = redemption else {
                    return Err(Rejection::UnknownRedemption {
                        redemption_event_id: redemption_event_id.clone(),
                    });
                };
                self.cancel_redemption(ctx, redemption_event_id, redemption, &mut entries)?
            }
            // Handled by `apply` before any clock moves.
            MemberCommand::Erase => return Ok(self.erase(ctx)),
            MemberCommand::Advance => return self.advance(ctx),
            MemberCommand::SetConsent { .. } => return self.set_consent(cmd),
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
            segments: None,
            campaigns: CampaignEffects {
                firings: Vec::new(),
                tallies,
            },
        })
    }

    /// [`MemberCommand::Advance`]: the clock moves to the event's time; `changed` only when
    /// that moved anything (the clock, a lot, a window day, the tier).
    fn advance(&mut self, ctx: &EventContext<'_>) -> Result<Applied, Rejection> {
        let before = self.clone();
        let mut entries = Vec::new();
        self.advance_clock(ctx, &mut entries)?;
        let changed = *self != before;
        if changed {
            self.version = add_one(self.version, "version")?;
        }
        let points_expired = self.points_expired - before.points_expired;
        let tier = (self.tier != before.tier).then(|| TierMove {
            from: Some(before.tier.clone()),
            to: self.tier.clone(),
        });
        Ok(Applied {
            entries,
            outcome: Outcome::Advanced {
                points_expired,
                tier: self.tier.clone(),
            },
            changed,
            visits: Vec::new(),
            tier,
            segments: None,
            campaigns: CampaignEffects::default(),
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
                consent: Consent::default(),
                email: None,
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
            segments: None,
            campaigns: CampaignEffects::default(),
        }
    }

    /// [`MemberCommand::SetConsent`]: the profile's consent (and address) as asked; a new
    /// version only when the profile changed. The outcome names the consent now held. The
    /// clock does not move.
    fn set_consent(&mut self, cmd: &MemberCommand) -> Result<Applied, Rejection> {
        let MemberCommand::SetConsent {
            sms,
            email,
            email_address,
        } = cmd
        else {
            unreachable!("set_consent is called with a SetConsent only")
        };
        let mut profile = self.profile.clone();
        if let Some(a) = email_address {
            profile.email = Some(a.as_str().to_owned());
        }
        profile.consent.sms = sms.unwrap_or(profile.consent.sms);
        profile.consent.email = email.unwrap_or(profile.consent.email);
        if *email == Some(true) && profile.email.is_none() {
            return Err(Rejection::EmailRequired);
        }
        let changed = profile != self.profile;
        if changed {
            self.version = add_one(self.version, "version")?;
            self.profile = profile;
        }
        Ok(Applied {
            entries: Vec::new(),
            outcome: Outcome::ConsentChanged {
                consent: self.profile.consent,
            },
            changed,
            visits: Vec::new(),
            tier: None,
            segments: None,
            campaigns: CampaignEffects::default(),
        })
    }

    /// Counts the member in the segments of `program` on the local day of its clock
    /// ([`crate::segments::segments_of`]): when they differ from those it is counted in, they
    /// replace them and `applied` tells the move (and is a change, with a new version, even
    /// when nothing else moved: a program change seen by an advance).
    fn settle_segments(
        &mut self,
        program: &Program,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let day = program.local_day(self.clock);
        let now = segments_of(self, program, day);
        let Some(m) = segment_move(&self.segments, &now, day) else {
            return Ok(());
        };
        self.segments = now;
        applied.segments = Some(m);
        if !applied.changed {
            applied.changed = true;
            self.version = add_one(self.version, "version")?;
        }
        Ok(())
    }
}
