//! A franchise's loyalty program: earn rules, stamp card, tiers, reward catalogue, expiry.
//!
//! A [`Program`] only exists validated: it is deserialized through [`ProgramSpec`], whose
//! numbers are signed so that a negative value gets an error naming its field rather than a
//! generic type error, and whose structs must be written as JSON objects ([`crate::object`]).

use serde::{Deserialize, Serialize};

use crate::birthday::{BirthdayReward, BirthdayRewardSpec};
use crate::campaigns::{Campaign, CampaignSpec};
use crate::items::{ItemBonus, ItemBonusSpec};
use crate::object::{self, Object};
use crate::segments::{Segments, SegmentsSpec};
use crate::tiers::{TierMetric, TierQualification, TierQualificationSpec};
use crate::{Currency, Day, DomainError, Points, RewardId, StoreId, Timestamp, Zone};

/// The program as a client writes it. Converted to [`Program`] by validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    pub currency: String,
    pub points_per_unit: i64,
    #[serde(default)]
    pub signup_bonus: i64,
    #[serde(default, deserialize_with = "object::option")]
    pub stamp_card: Option<StampCardSpec>,
    #[serde(deserialize_with = "object::one")]
    pub tier_qualification: TierQualificationSpec,
    #[serde(deserialize_with = "object::list")]
    pub tiers: Vec<TierSpec>,
    #[serde(default, deserialize_with = "object::list")]
    pub rewards: Vec<RewardSpec>,
    #[serde(default)]
    pub points_expiry_days: Option<i64>,
    /// The franchise's IANA time zone: the dashboards count an event on its local day.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// How many years a member stays, for the dashboards' lifetime value (3 by default).
    #[serde(default)]
    pub expected_lifespan_years: Option<i64>,
    /// What the program costs a month, for the dashboards' return on investment (none: no ROI).
    #[serde(default)]
    pub monthly_fee_cents: Option<i64>,
    /// How earned points are rounded to a whole point (floor by default).
    #[serde(default)]
    pub rounding: Option<Rounding>,
    /// A purchase below this amount earns no points (0 by default: every purchase earns).
    #[serde(default)]
    pub min_basket_cents: Option<i64>,
    /// Multipliers by schedule; the best one matching a purchase applies (see [`Program::earn_pct`]).
    #[serde(default, deserialize_with = "object::list")]
    pub bonus_multipliers: Vec<BonusMultiplierSpec>,
    /// How long a refund of a purchase not seen yet (an offline till's) is held for it, in days
    /// ([`DEFAULT_HELD_REFUND_HORIZON_DAYS`] by default; 0: such a refund is refused).
    #[serde(default)]
    pub held_refund_horizon_days: Option<i64>,
    /// Bonus points for SKUs or categories in a purchase's line items ([`crate::items`]).
    #[serde(default, deserialize_with = "object::list")]
    pub item_bonuses: Vec<ItemBonusSpec>,
    /// Minutes after a redemption during which it can be cancelled (0 by default: never).
    #[serde(default)]
    pub redemption_cancel_minutes: Option<i64>,
    /// Points converted into vouchers at thresholds ("at 500 points a 5 € voucher").
    #[serde(default, deserialize_with = "object::list")]
    pub auto_vouchers: Vec<AutoVoucherSpec>,
    /// Points or a voucher once a year around the member's birthday (README "Birthdays").
    #[serde(default, deserialize_with = "object::option")]
    pub birthday_reward: Option<BirthdayRewardSpec>,
    /// Segments (README "Segments"); none when left out.
    #[serde(default, deserialize_with = "object::option")]
    pub segments: Option<SegmentsSpec>,
    /// Automated campaigns (README "Campaigns").
    #[serde(default, deserialize_with = "object::list")]
    pub campaigns: Vec<CampaignSpec>,
    /// Single-use redemption codes a cashier scans (README "Redemption codes"); none offered
    /// when left out.
    #[serde(default, deserialize_with = "object::option")]
    pub redemption_codes: Option<RedemptionCodesSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedemptionCodesSpec {
    pub valid_days: i64,
}

/// The program's redemption codes: a redemption may ask for a code instead of the reward at
/// once; the code is valid for `valid_days` days (from the member's clock at issue), and what
/// the redemption took comes back if it is not used by then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RedemptionCodes {
    pub valid_days: u32,
}

/// The longest validity of a redemption code: a year.
const MAX_CODE_VALID_DAYS: i64 = 365;

impl RedemptionCodes {
    fn from_spec(s: &RedemptionCodesSpec) -> Result<RedemptionCodes, DomainError> {
        let valid_days = bounded(
            "redemption_codes.valid_days",
            s.valid_days,
            1,
            MAX_CODE_VALID_DAYS,
        )? as u32;
        Ok(RedemptionCodes { valid_days })
    }

    /// How long a code is valid, in milliseconds.
    pub fn valid_ms(&self) -> i64 {
        i64::from(self.valid_days) * 86_400_000
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoVoucherSpec {
    pub at_points: i64,
    pub reward_id: String,
}

/// An automatic voucher: once an earn takes the balance to `at_points` or more, that many
/// points become a voucher for `reward_id`, as often as the balance allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AutoVoucher {
    pub at_points: Points,
    pub reward_id: RewardId,
}

/// At most this many automatic vouchers in a program.
const MAX_AUTO_VOUCHERS: usize = 16;

/// The automatic vouchers, validated: at most [`MAX_AUTO_VOUCHERS`], thresholds from 1 to
/// 10^9 and distinct, each for a reward of the catalogue.
fn auto_vouchers(
    specs: &[AutoVoucherSpec],
    rewards: &[Reward],
) -> Result<Vec<AutoVoucher>, DomainError> {
    if specs.len() > MAX_AUTO_VOUCHERS {
        return Err(DomainError::invalid_program(format!(
            "at most {MAX_AUTO_VOUCHERS} auto_vouchers"
        )));
    }
    let mut out: Vec<AutoVoucher> = Vec::with_capacity(specs.len());
    for (i, a) in specs.iter().enumerate() {
        let at_points = bounded(
            &format!("auto_vouchers[{i}].at_points"),
            a.at_points,
            1,
            MAX_POINTS,
        )?;
        let reward_id = RewardId::parse(&a.reward_id)
            .ok()
            .filter(|id| rewards.iter().any(|r| &r.id == id))
            .ok_or_else(|| {
                DomainError::invalid_program(format!(
                    "auto_vouchers[{i}].reward_id {:?} is not a reward of the catalogue",
                    a.reward_id
                ))
            })?;
        if out.iter().any(|x| x.at_points == at_points) {
            return Err(DomainError::invalid_program(format!(
                "auto_vouchers[{i}].at_points {at_points} appears twice"
            )));
        }
        out.push(AutoVoucher {
            at_points,
            reward_id,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BonusMultiplierSpec {
    pub name: String,
    pub multiplier_pct: i64,
    #[serde(default)]
    pub days_of_week: Option<Vec<Weekday>>,
    #[serde(default)]
    pub from_date: Option<String>,
    #[serde(default)]
    pub to_date: Option<String>,
    #[serde(default)]
    pub from_time: Option<String>,
    #[serde(default)]
    pub to_time: Option<String>,
    #[serde(default)]
    pub stores: Option<Vec<String>>,
}

/// How a purchase's points are rounded to a whole point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Down (today's behaviour, the default).
    #[default]
    Floor,
    /// To the nearest point, a half point up.
    Nearest,
    /// Up: any fraction of a point earns a point.
    Up,
}

impl Rounding {
    /// `n / d` rounded this way (`d > 0`).
    pub fn divide(self, n: u128, d: u128) -> u128 {
        match self {
            Rounding::Floor => n / d,
            Rounding::Nearest => (n + d / 2) / d,
            Rounding::Up => n.div_ceil(d),
        }
    }
}

/// A day of the week, in the program's time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Weekday {
    /// The day of the week of `day` (1970-01-01 was a Thursday).
    pub fn of(day: Day) -> Weekday {
        const ALL: [Weekday; 7] = [
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
            Weekday::Saturday,
            Weekday::Sunday,
        ];
        ALL[((day.0 as u64 + 3) % 7) as usize]
    }
}

/// A multiplier by schedule: it matches a purchase whose local day, date, time of day and store
/// meet every condition it sets (a condition left out matches everything).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BonusMultiplier {
    pub name: String,
    pub multiplier_pct: u64,
    pub days_of_week: Option<Vec<Weekday>>,
    #[serde(serialize_with = "ser_date")]
    pub from_date: Option<Day>,
    #[serde(serialize_with = "ser_date")]
    pub to_date: Option<Day>,
    /// Minutes after local midnight, inclusive.
    #[serde(serialize_with = "ser_time")]
    pub from_time: Option<u32>,
    /// Minutes after local midnight, exclusive (1440 is `24:00`, the end of the day).
    #[serde(serialize_with = "ser_time")]
    pub to_time: Option<u32>,
    pub stores: Option<Vec<StoreId>>,
}

fn ser_date<S: serde::Serializer>(d: &Option<Day>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.iso()),
        None => s.serialize_none(),
    }
}

fn ser_time<S: serde::Serializer>(t: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format!("{:02}:{:02}", t / 60, t % 60)),
        None => s.serialize_none(),
    }
}

/// `HH:MM`, 00:00 to 23:59, or 24:00 when `end` (the end of the day).
fn parse_time(field: &str, v: &str, end: bool) -> Result<u32, DomainError> {
    let b = v.as_bytes();
    let ok = b.len() == 5
        && b[2] == b':'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit());
    let t = ok.then(|| {
        let h: u32 = v[0..2].parse().unwrap_or(99);
        let m: u32 = v[3..5].parse().unwrap_or(99);
        (h, m)
    });
    match t {
        Some((h, m)) if h < 24 && m < 60 => Ok(h * 60 + m),
        Some((24, 0)) if end => Ok(1440),
        _ => Err(DomainError::invalid_program(format!(
            "{field} must be a local time of day HH:MM (00:00 to {}), got {v:?}",
            if end { "24:00" } else { "23:59" }
        ))),
    }
}

impl BonusMultiplier {
    /// Whether this schedule applies to a purchase at local time `local` (see [`Zone::local`])
    /// in `store`.
    pub fn matches(&self, local: Timestamp, store: &StoreId) -> bool {
        let day = local.day();
        let minute = (local.0.rem_euclid(86_400_000) / 60_000) as u32;
        self.days_of_week
            .as_ref()
            .is_none_or(|d| d.contains(&Weekday::of(day)))
            && self.from_date.is_none_or(|f| day >= f)
            && self.to_date.is_none_or(|t| day <= t)
            && self.from_time.is_none_or(|f| minute >= f)
            && self.to_time.is_none_or(|t| minute < t)
            && self.stores.as_ref().is_none_or(|s| s.contains(store))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StampCardSpec {
    pub size: i64,
    pub reward_id: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub name: String,
    pub threshold: i64,
    pub multiplier_pct: i64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub id: String,
    pub name: String,
    pub cost_points: i64,
    /// What one redemption costs the franchise (the goods given), for the dashboards' ROI.
    #[serde(default)]
    pub cost_cents: Option<i64>,
    /// First local day (`YYYY-MM-DD`, program's time zone) it can be redeemed with points.
    #[serde(default)]
    pub valid_from: Option<String>,
    /// Last local day (inclusive) it can be redeemed with points.
    #[serde(default)]
    pub valid_to: Option<String>,
    /// How many times one member may redeem it with points, over the member's lifetime.
    #[serde(default)]
    pub limit_per_member: Option<i64>,
}

/// A validated program. Its invariants: tiers are non-empty, start at threshold 0 and have
/// strictly increasing thresholds and distinct names; reward ids are distinct and the stamp
/// card's reward exists; every number is within bounds that keep arithmetic in 64 bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Object<ProgramSpec>")]
pub struct Program {
    pub currency: Currency,
    pub points_per_unit: u64,
    pub signup_bonus: Points,
    pub stamp_card: Option<StampCard>,
    pub tier_qualification: TierQualification,
    pub tiers: Vec<Tier>,
    pub rewards: Vec<Reward>,
    pub points_expiry_days: Option<u32>,
    pub time_zone: Zone,
    pub expected_lifespan_years: u32,
    pub monthly_fee_cents: Option<u64>,
    pub rounding: Rounding,
    pub min_basket_cents: u64,
    pub bonus_multipliers: Vec<BonusMultiplier>,
    /// Days a refund of a purchase not seen yet is held for it (0: refused instead); see
    /// `MemberState::hold_refund`.
    pub held_refund_horizon_days: u32,
    pub item_bonuses: Vec<ItemBonus>,
    /// Minutes after a redemption (by the member's clock) during which it can be cancelled;
    /// 0: never (see `MemberCommand::CancelRedemption`).
    pub redemption_cancel_minutes: u32,
    /// Points converted into vouchers at thresholds after each earn (README "Rewards").
    pub auto_vouchers: Vec<AutoVoucher>,
    pub birthday_reward: Option<BirthdayReward>,
    /// The segments' thresholds and custom filters ([`crate::segments`]); `None`: the program
    /// computes no segments (left out of its JSON, so programs stored before read the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Segments>,
    /// Automated campaigns ([`crate::campaigns`]); left out of the JSON when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub campaigns: Vec<Campaign>,
    /// Redemption codes (README "Redemption codes"); `None`: not offered (left out of its
    /// JSON, so programs stored before read the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redemption_codes: Option<RedemptionCodes>,
}

/// The default of [`Program::held_refund_horizon_days`]: a till offline for up to a month.
pub const DEFAULT_HELD_REFUND_HORIZON_DAYS: i64 = 30;
/// The largest [`Program::held_refund_horizon_days`].
const MAX_HELD_REFUND_HORIZON_DAYS: i64 = 365;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StampCard {
    pub size: u32,
    pub reward_id: RewardId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub name: String,
    pub threshold: u64,
    pub multiplier_pct: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reward {
    pub id: RewardId,
    pub name: String,
    pub cost_points: Points,
    pub cost_cents: u64,
    /// First local day (in the program's time zone) the reward can be redeemed with points;
    /// `None`: since always. A voucher the member holds is honoured whatever the dates.
    #[serde(serialize_with = "ser_date")]
    pub valid_from: Option<Day>,
    /// Last local day (inclusive) the reward can be redeemed with points; `None`: for ever.
    #[serde(serialize_with = "ser_date")]
    pub valid_to: Option<Day>,
    /// How many times one member may redeem the reward with points over the member's lifetime
    /// (a cancelled redemption does not count); `None`: no limit. Vouchers do not count.
    pub limit_per_member: Option<u32>,
}

impl Reward {
    /// Whether the reward can be redeemed with points on the local day `day`.
    pub fn valid_on(&self, day: Day) -> bool {
        self.valid_from.is_none_or(|f| day >= f) && self.valid_to.is_none_or(|t| day <= t)
    }

    /// Whether a member who redeemed it `redeemed` times (with points) may redeem it again.
    pub fn within_limit(&self, redeemed: u32) -> bool {
        self.limit_per_member.is_none_or(|l| redeemed < l)
    }
}

/// The largest `limit_per_member`.
const MAX_LIMIT_PER_MEMBER: i64 = 1_000_000;
/// The longest `redemption_cancel_minutes`: a week.
const MAX_CANCEL_MINUTES: i64 = 10_080;

/// A range of local dates as a program writes it, each `(field name, value)`: either end may
/// be left out, each is `YYYY-MM-DD` (1970 or later), and the first is not after the last.
pub(crate) fn date_range(
    from: (&str, &Option<String>),
    to: (&str, &Option<String>),
) -> Result<(Option<Day>, Option<Day>), DomainError> {
    let date = |(field, v): (&str, &Option<String>)| match v {
        None => Ok(None),
        Some(v) => Day::parse_iso(v).map(Some).ok_or_else(|| {
            DomainError::invalid_program(format!(
                "{field} must be a local date YYYY-MM-DD (1970 or later), got {v:?}"
            ))
        }),
    };
    let (a, z) = (date(from)?, date(to)?);
    if let (Some(a), Some(z)) = (a, z) {
        if a > z {
            return Err(DomainError::invalid_program(format!(
                "{} ({}) is after {} ({})",
                from.0,
                a.iso(),
                to.0,
                z.iso()
            )));
        }
    }
    Ok((a, z))
}

/// The validity dates and limit of `rewards[i]`, validated: the dates are local dates, the
/// first not after the last; the limit from 1 to [`MAX_LIMIT_PER_MEMBER`].
type RewardTerms = (Option<Day>, Option<Day>, Option<u32>);

fn reward_terms(i: usize, r: &RewardSpec) -> Result<RewardTerms, DomainError> {
    let f = |field: &str| format!("rewards[{i}].{field}");
    let (from, to) = date_range(
        (&f("valid_from"), &r.valid_from),
        (&f("valid_to"), &r.valid_to),
    )?;
    let limit = match r.limit_per_member {
        None => None,
        Some(l) => Some(bounded(&f("limit_per_member"), l, 1, MAX_LIMIT_PER_MEMBER)? as u32),
    };
    Ok((from, to, limit))
}

const MAX_POINTS_PER_UNIT: i64 = 10_000;
const MAX_MULTIPLIER_PCT: i64 = 10_000;
const MAX_POINTS: i64 = 1_000_000_000;
const MAX_DAYS: i64 = 3_650;
const MAX_CARD: i64 = 1_000;
const MAX_TIERS: usize = 32;
const MAX_REWARDS: usize = 256;
const MAX_NAME: usize = 100;
const MAX_BONUS_MULTIPLIERS: usize = 32;
const MAX_BONUS_STORES: usize = 1_000;
/// Money settings up to 10^12 cents (10 billion in the currency's unit).
const MAX_CENTS: i64 = 1_000_000_000_000;

pub(crate) fn bounded(field: &str, v: i64, min: i64, max: i64) -> Result<u64, DomainError> {
    if v < min || v > max {
        Err(DomainError::invalid_program(format!(
            "{field} must be between {min} and {max}, got {v}"
        )))
    } else {
        Ok(v as u64)
    }
}

pub(crate) fn name(field: &str, s: &str) -> Result<String, DomainError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > MAX_NAME {
        Err(DomainError::invalid_program(format!(
            "{field} must be 1 to {MAX_NAME} characters"
        )))
    } else {
        Ok(t.to_owned())
    }
}

impl TryFrom<Object<ProgramSpec>> for Program {
    type Error = DomainError;

    fn try_from(s: Object<ProgramSpec>) -> Result<Self, DomainError> {
        Program::try_from(s.0)
    }
}

impl TryFrom<ProgramSpec> for Program {
    type Error = DomainError;

    fn try_from(s: ProgramSpec) -> Result<Self, DomainError> {
        let currency = Currency::parse(&s.currency)
            .map_err(|_| DomainError::invalid_program("currency must be an ISO 4217 code"))?;
        let points_per_unit =
            bounded("points_per_unit", s.points_per_unit, 0, MAX_POINTS_PER_UNIT)?;
        let signup_bonus = bounded("signup_bonus", s.signup_bonus, 0, MAX_POINTS)?;

        if s.rewards.len() > MAX_REWARDS {
            return Err(DomainError::invalid_program(format!(
                "at most {MAX_REWARDS} rewards"
            )));
        }
        let mut rewards: Vec<Reward> = Vec::with_capacity(s.rewards.len());
        for (i, r) in s.rewards.iter().enumerate() {
            let id = RewardId::parse(&r.id).map_err(|_| {
                DomainError::invalid_program(format!(
                    "rewards[{i}].id must be 1 to 64 characters of [A-Za-z0-9_.:-]"
                ))
            })?;
            let (valid_from, valid_to, limit_per_member) = reward_terms(i, r)?;
            if rewards.iter().any(|x| x.id == id) {
                return Err(DomainError::invalid_program(format!(
                    "reward id {id} appears twice"
                )));
            }
            rewards.push(Reward {
                id,
                name: name(&format!("rewards[{i}].name"), &r.name)?,
                cost_points: bounded(
                    &format!("rewards[{i}].cost_points"),
                    r.cost_points,
                    1,
                    MAX_POINTS,
                )?,
                cost_cents: bounded(
                    &format!("rewards[{i}].cost_cents"),
                    r.cost_cents.unwrap_or(0),
                    0,
                    MAX_CENTS,
                )?,
                valid_from,
                valid_to,
                limit_per_member,
            });
        }

        let stamp_card = match s.stamp_card {
            None => None,
            Some(c) => {
                let size = bounded("stamp_card.size", c.size, 1, MAX_CARD)? as u32;
                let reward_id = RewardId::parse(&c.reward_id)
                    .ok()
                    .filter(|id| rewards.iter().any(|r| &r.id == id));
                let Some(reward_id) = reward_id else {
                    return Err(DomainError::invalid_program(format!(
                        "stamp_card.reward_id {:?} is not a reward of the catalogue",
                        c.reward_id
                    )));
                };
                Some(StampCard { size, reward_id })
            }
        };

        let tier_qualification = TierQualification::from_spec(&s.tier_qualification)?;

        if s.tiers.is_empty() || s.tiers.len() > MAX_TIERS {
            return Err(DomainError::invalid_program(format!(
                "tiers must have 1 to {MAX_TIERS} entries"
            )));
        }
        let mut tiers: Vec<Tier> = Vec::with_capacity(s.tiers.len());
        for (i, t) in s.tiers.iter().enumerate() {
            let tier = Tier {
                name: name(&format!("tiers[{i}].name"), &t.name)?,
                threshold: bounded(
                    &format!("tiers[{i}].threshold"),
                    t.threshold,
                    0,
                    i64::MAX / 4,
                )?,
                multiplier_pct: bounded(
                    &format!("tiers[{i}].multiplier_pct"),
                    t.multiplier_pct,
                    0,
                    MAX_MULTIPLIER_PCT,
                )?,
            };
            if let Some(prev) = tiers.last() {
                if tier.threshold <= prev.threshold {
                    return Err(DomainError::invalid_program(format!(
                        "tiers must be sorted by strictly increasing threshold: tiers[{i}] ({}) is not above tiers[{}] ({})",
                        tier.threshold,
                        i - 1,
                        prev.threshold
                    )));
                }
            } else if tier.threshold != 0 {
                return Err(DomainError::invalid_program(
                    "the first tier must have threshold 0 (every member starts in it)",
                ));
            }
            if tiers.iter().any(|x| x.name == tier.name) {
                return Err(DomainError::invalid_program(format!(
                    "tier name {:?} appears twice",
                    tier.name
                )));
            }
            tiers.push(tier);
        }

        let points_expiry_days = match s.points_expiry_days {
            None => None,
            Some(d) => Some(bounded("points_expiry_days", d, 1, MAX_DAYS)? as u32),
        };

        let time_zone = match &s.time_zone {
            None => Zone::utc(),
            Some(name) => Zone::parse(name)?,
        };
        let expected_lifespan_years = bounded(
            "expected_lifespan_years",
            s.expected_lifespan_years.unwrap_or(3),
            1,
            100,
        )? as u32;
        let monthly_fee_cents = match s.monthly_fee_cents {
            None => None,
            Some(c) => Some(bounded("monthly_fee_cents", c, 0, MAX_CENTS)?),
        };

        let rounding = s.rounding.unwrap_or_default();
        let min_basket_cents = bounded(
            "min_basket_cents",
            s.min_basket_cents.unwrap_or(0),
            0,
            MAX_CENTS,
        )?;
        if s.bonus_multipliers.len() > MAX_BONUS_MULTIPLIERS {
            return Err(DomainError::invalid_program(format!(
                "at most {MAX_BONUS_MULTIPLIERS} bonus_multipliers"
            )));
        }
        let mut bonus_multipliers: Vec<BonusMultiplier> =
            Vec::with_capacity(s.bonus_multipliers.len());
        for (i, b) in s.bonus_multipliers.iter().enumerate() {
            let f = |field: &str| format!("bonus_multipliers[{i}].{field}");
            let days_of_week = match &b.days_of_week {
                Some(d) if d.is_empty() || d.len() > 7 => {
                    return Err(DomainError::invalid_program(format!(
                        "{} must list 1 to 7 days, or be left out (every day)",
                        f("days_of_week")
                    )))
                }
                d => d.clone(),
            };
            let (from_date, to_date) =
                date_range((&f("from_date"), &b.from_date), (&f("to_date"), &b.to_date))?;
            let from_time = match &b.from_time {
                None => None,
                Some(v) => Some(parse_time(&f("from_time"), v, false)?),
            };
            let to_time = match &b.to_time {
                None => None,
                Some(v) => Some(parse_time(&f("to_time"), v, true)?),
            };
            if let (Some(a), Some(z)) = (from_time, to_time) {
                if a >= z {
                    return Err(DomainError::invalid_program(format!(
                        "{} must be before {} (an overnight window is two schedules)",
                        f("from_time"),
                        f("to_time")
                    )));
                }
            }
            let stores = match &b.stores {
                None => None,
                Some(v) if v.is_empty() || v.len() > MAX_BONUS_STORES => {
                    return Err(DomainError::invalid_program(format!(
                        "{} must list 1 to {MAX_BONUS_STORES} store ids, or be left out (every store)",
                        f("stores")
                    )))
                }
                Some(v) => Some(
                    v.iter()
                        .map(|id| {
                            StoreId::parse(id).map_err(|_| {
                                DomainError::invalid_program(format!(
                                    "{} has an invalid store id {id:?}",
                                    f("stores")
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let bonus = BonusMultiplier {
                name: name(&f("name"), &b.name)?,
                multiplier_pct: bounded(
                    &f("multiplier_pct"),
                    b.multiplier_pct,
                    0,
                    MAX_MULTIPLIER_PCT,
                )?,
                days_of_week,
                from_date,
                to_date,
                from_time,
                to_time,
                stores,
            };
            if bonus_multipliers.iter().any(|x| x.name == bonus.name) {
                return Err(DomainError::invalid_program(format!(
                    "bonus multiplier name {:?} appears twice",
                    bonus.name
                )));
            }
            bonus_multipliers.push(bonus);
        }
        let redemption_cancel_minutes = bounded(
            "redemption_cancel_minutes",
            s.redemption_cancel_minutes.unwrap_or(0),
            0,
            MAX_CANCEL_MINUTES,
        )? as u32;
        let auto_vouchers = auto_vouchers(&s.auto_vouchers, &rewards)?;
        let birthday_reward = match &s.birthday_reward {
            Some(b) => Some(BirthdayReward::from_spec(b, &rewards)?),
            None => None,
        };

        let held_refund_horizon_days = bounded(
            "held_refund_horizon_days",
            s.held_refund_horizon_days
                .unwrap_or(DEFAULT_HELD_REFUND_HORIZON_DAYS),
            0,
            MAX_HELD_REFUND_HORIZON_DAYS,
        )? as u32;
        let item_bonuses = crate::items::item_bonuses(&s.item_bonuses)?;
        let segments = s
            .segments
            .as_ref()
            .map(|seg| Segments::validate(seg, &tiers))
            .transpose()?;
        let campaigns =
            crate::campaigns::campaigns(&s.campaigns, &rewards, &tiers, segments.as_ref())?;
        let redemption_codes = s
            .redemption_codes
            .as_ref()
            .map(RedemptionCodes::from_spec)
            .transpose()?;

        Ok(Program {
            currency,
            points_per_unit,
            signup_bonus,
            stamp_card,
            tier_qualification,
            tiers,
            rewards,
            points_expiry_days,
            time_zone,
            expected_lifespan_years,
            monthly_fee_cents,
            rounding,
            min_basket_cents,
            bonus_multipliers,
            held_refund_horizon_days,
            item_bonuses,
            redemption_cancel_minutes,
            auto_vouchers,
            birthday_reward,
            segments,
            campaigns,
            redemption_codes,
        })
    }
}

impl Program {
    pub fn reward(&self, id: &RewardId) -> Option<&Reward> {
        self.rewards.iter().find(|r| &r.id == id)
    }

    /// The index of the highest tier whose threshold `metric` meets.
    pub fn tier_for(&self, metric: u64) -> usize {
        self.tiers
            .iter()
            .rposition(|t| metric >= t.threshold)
            .unwrap_or(0)
    }

    /// The index of the tier called `name`, or the first tier if the program no longer has it.
    pub fn tier_index(&self, name: &str) -> usize {
        self.tiers.iter().position(|t| t.name == name).unwrap_or(0)
    }

    /// Points earned by a purchase of `amount_cents` at the tier `tier` when no bonus
    /// multiplier matches: [`Program::purchase_points`] with a schedule multiplier of 100 %.
    pub fn points_for(&self, amount_cents: u64, tier: usize) -> Points {
        self.points_with(amount_cents, tier, 100)
    }

    /// The best (highest) `multiplier_pct` of the bonus multipliers matching a purchase at `at`
    /// in `store`, in the program's time zone; 100 when none matches.
    pub fn bonus_pct(&self, at: Timestamp, store: &StoreId) -> u64 {
        let local = self.time_zone.local(at);
        self.bonus_multipliers
            .iter()
            .filter(|b| b.matches(local, store))
            .map(|b| b.multiplier_pct)
            .max()
            .unwrap_or(100)
    }

    /// Points earned by a purchase of `amount_cents` at `at` in `store` by a member at the tier
    /// `tier`: nothing below `min_basket_cents`, else
    /// `round(amount × points_per_unit × tier multiplier_pct × bonus_pct / 1 000 000)` with the
    /// program's rounding, where `bonus_pct` is [`Program::bonus_pct`] (the multipliers
    /// multiply). At most 10^18 with the validator's bounds.
    pub fn purchase_points(
        &self,
        amount_cents: u64,
        tier: usize,
        at: Timestamp,
        store: &StoreId,
    ) -> Points {
        self.points_with(amount_cents, tier, self.bonus_pct(at, store))
    }

    /// [`Program::purchase_points`] with the schedule multiplier `bonus_pct` given (the best
    /// of the schedules' and a campaign's).
    pub fn points_with(&self, amount_cents: u64, tier: usize, bonus_pct: u64) -> Points {
        if amount_cents < self.min_basket_cents {
            return 0;
        }
        let pct = self.tiers.get(tier).map_or(100, |t| t.multiplier_pct);
        // The amount is below 2^64 and each percentage or rate at most 10 000 (< 2^14): the
        // product is below 2^106, no overflow in 128 bits.
        let n =
            amount_cents as u128 * self.points_per_unit as u128 * pct as u128 * bonus_pct as u128;
        let p = self.rounding.divide(n, 1_000_000);
        u64::try_from(p).unwrap_or(u64::MAX)
    }

    /// A demonstration program in the shape the documentation uses.
    pub fn demo() -> Program {
        Program {
            currency: Currency::parse("EUR").expect("static currency"),
            points_per_unit: 1,
            signup_bonus: 50,
            stamp_card: Some(StampCard {
                size: 10,
                reward_id: RewardId::parse("free-coffee").expect("static id"),
            }),
            tier_qualification: TierQualification::rolling(TierMetric::SpendCents, 365),
            tiers: vec![
                Tier {
                    name: "Bronze".into(),
                    threshold: 0,
                    multiplier_pct: 100,
                },
                Tier {
                    name: "Silver".into(),
                    threshold: 25_000,
                    multiplier_pct: 150,
                },
                Tier {
                    name: "Gold".into(),
                    threshold: 100_000,
                    multiplier_pct: 200,
                },
            ],
            rewards: vec![
                Reward {
                    id: RewardId::parse("free-coffee").expect("static id"),
                    name: "Free coffee".into(),
                    cost_points: 100,
                    cost_cents: 80,
                    valid_from: None,
                    valid_to: None,
                    limit_per_member: None,
                },
                Reward {
                    id: RewardId::parse("free-pastry").expect("static id"),
                    name: "Free pastry".into(),
                    cost_points: 150,
                    cost_cents: 120,
                    valid_from: None,
                    valid_to: None,
                    limit_per_member: None,
                },
            ],
            points_expiry_days: Some(365),
            time_zone: Zone::utc(),
            expected_lifespan_years: 3,
            monthly_fee_cents: None,
            rounding: Rounding::Floor,
            min_basket_cents: 0,
            bonus_multipliers: Vec::new(),
            held_refund_horizon_days: DEFAULT_HELD_REFUND_HORIZON_DAYS as u32,
            item_bonuses: Vec::new(),
            redemption_cancel_minutes: 0,
            auto_vouchers: Vec::new(),
            birthday_reward: None,
            segments: None,
            campaigns: Vec::new(),
            redemption_codes: None,
        }
    }

    /// The day of `at` where the franchise is (its [`Program::time_zone`]).
    pub fn local_day(&self, at: Timestamp) -> Day {
        self.time_zone.day(at)
    }
}
