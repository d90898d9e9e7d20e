//! Automated campaigns (README "Campaigns"): a trigger, an audience, an offer, messages per
//! channel, a frequency cap and validity dates, all part of the program.

use serde::{Deserialize, Serialize};

/// A channel a campaign message goes out on. Each needs the member's consent
/// ([`crate::Consent`]) and an address in the profile (a phone, an e-mail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Sms, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

use crate::object;
use crate::program::{bounded, name};
use crate::segments::Segments;
use crate::{Day, DomainError, Points, Reward, RewardId, StoreId, Tier};

/// At most this many campaigns in a program.
pub const MAX_CAMPAIGNS: usize = 64;
/// A time trigger (a date, a birthday, days after enrolment) still fires this many days late
/// (the scheduler was down, the campaign was added on the day), never later: a member is not
/// sent a Christmas offer in February.
pub const CATCH_UP_DAYS: u32 = 7;
/// The days after a firing over which the revenue of a member who redeemed the offer is
/// counted in the campaign's results.
pub const REVENUE_DAYS: i64 = 30;
const MAX_SMS: usize = 480;
const MAX_SUBJECT: usize = 200;
const MAX_EMAIL: usize = 10_000;
const MAX_POINTS: i64 = 1_000_000_000;
const MAX_DAYS: i64 = 3_650;
const MAX_STORES: usize = 1_000;
/// The placeholders a template may use ([`render`]).
pub const PLACEHOLDERS: [&str; 6] = [
    "first_name",
    "points",
    "tier",
    "offer",
    "franchise",
    "opt_out_url",
];

/// What makes a campaign fire for a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerSpec {
    /// `after_days` after the member's enrolment (0: at enrolment).
    Enrolled {
        #[serde(default)]
        after_days: i64,
    },
    /// The member enters a segment of the program (built-in or custom).
    SegmentEntered { segment: String },
    /// The member's birthday (local day), once a year.
    Birthday {},
    /// The member reaches a tier (from a lower one).
    TierReached { tier: String },
    /// The member's balance reaches `points` (from below).
    PointsReached { points: i64 },
    /// A local date, for every member enrolled by then.
    Date { on: String },
}

/// The validated trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    Enrolled { after_days: u32 },
    SegmentEntered { segment: String },
    Birthday,
    TierReached { tier: String },
    PointsReached { points: Points },
    Date { on: Day },
}

impl Trigger {
    fn spec(&self) -> TriggerSpec {
        match self {
            Trigger::Enrolled { after_days } => TriggerSpec::Enrolled {
                after_days: i64::from(*after_days),
            },
            Trigger::SegmentEntered { segment } => TriggerSpec::SegmentEntered {
                segment: segment.clone(),
            },
            Trigger::Birthday => TriggerSpec::Birthday {},
            Trigger::TierReached { tier } => TriggerSpec::TierReached { tier: tier.clone() },
            Trigger::PointsReached { points } => TriggerSpec::PointsReached {
                points: *points as i64,
            },
            Trigger::Date { on } => TriggerSpec::Date { on: on.iso() },
        }
    }
}

/// What a firing gives the member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OfferSpec {
    /// Points credited at once.
    BonusPoints { points: i64 },
    /// A voucher for a reward of the catalogue.
    Voucher { reward_id: String },
    /// A multiplier on purchases for `days` days after the firing.
    Multiplier { multiplier_pct: i64, days: i64 },
    /// A message only.
    None {},
}

/// The validated offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    BonusPoints { points: Points },
    Voucher { reward_id: RewardId },
    Multiplier { multiplier_pct: u64, days: u32 },
    None,
}

impl Offer {
    fn spec(&self) -> OfferSpec {
        match self {
            Offer::BonusPoints { points } => OfferSpec::BonusPoints {
                points: *points as i64,
            },
            Offer::Voucher { reward_id } => OfferSpec::Voucher {
                reward_id: reward_id.to_string(),
            },
            Offer::Multiplier {
                multiplier_pct,
                days,
            } => OfferSpec::Multiplier {
                multiplier_pct: *multiplier_pct as i64,
                days: i64::from(*days),
            },
            Offer::None => OfferSpec::None {},
        }
    }
}

/// Who a campaign is for: members in any of `segments` (none: every member) and whose
/// enrolment store or a store they bought at is one of `stores` (none: every store).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceSpec {
    #[serde(default)]
    pub segments: Option<Vec<String>>,
    #[serde(default)]
    pub stores: Option<Vec<String>>,
}

/// The validated audience.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    pub segments: Option<Vec<String>>,
    pub stores: Option<Vec<StoreId>>,
}

/// An e-mail's template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTemplate {
    pub subject: String,
    pub body: String,
}

/// The messages of a campaign, per channel: a member is sent those of the channels they
/// consented to (none: the offer is given silently).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<String>,
    #[serde(
        default,
        deserialize_with = "object::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub email: Option<EmailTemplate>,
}

/// At most `max` firings of the campaign for one member in any `days` days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCapSpec {
    pub max: i64,
    pub days: i64,
}

/// The validated cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrequencyCap {
    pub max: u32,
    pub days: u32,
}

/// The default cap: once in 30 days.
pub const DEFAULT_CAP: FrequencyCap = FrequencyCap { max: 1, days: 30 };

/// A campaign as a client writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    pub id: String,
    pub name: String,
    #[serde(deserialize_with = "object::one")]
    pub trigger: TriggerSpec,
    #[serde(default, deserialize_with = "object::option")]
    pub audience: Option<AudienceSpec>,
    #[serde(deserialize_with = "object::one")]
    pub offer: OfferSpec,
    #[serde(default, deserialize_with = "object::option")]
    pub messages: Option<MessagesSpec>,
    #[serde(default, deserialize_with = "object::option")]
    pub frequency_cap: Option<FrequencyCapSpec>,
    /// Days after a firing within which using the offer counts as a redemption (30 by
    /// default): the voucher redeemed, or a purchase for points and multipliers.
    #[serde(default)]
    pub redeem_within_days: Option<i64>,
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_to: Option<String>,
}

/// A validated campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    /// 1 to 64 characters of `[A-Za-z0-9_.-]`: part of outbox ids and metric-free keys.
    pub id: String,
    pub name: String,
    pub trigger: Trigger,
    pub audience: Audience,
    pub offer: Offer,
    pub messages: MessagesSpec,
    pub frequency_cap: FrequencyCap,
    pub redeem_within_days: u32,
    pub valid_from: Option<Day>,
    pub valid_to: Option<Day>,
}

impl Serialize for Campaign {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Campaign", 10)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("trigger", &self.trigger.spec())?;
        st.serialize_field(
            "audience",
            &AudienceSpec {
                segments: self.audience.segments.clone(),
                stores: self
                    .audience
                    .stores
                    .as_ref()
                    .map(|v| v.iter().map(|s| s.to_string()).collect()),
            },
        )?;
        st.serialize_field("offer", &self.offer.spec())?;
        st.serialize_field("messages", &self.messages)?;
        st.serialize_field(
            "frequency_cap",
            &FrequencyCapSpec {
                max: i64::from(self.frequency_cap.max),
                days: i64::from(self.frequency_cap.days),
            },
        )?;
        st.serialize_field("redeem_within_days", &self.redeem_within_days)?;
        st.serialize_field("valid_from", &self.valid_from.map(|d| d.iso()))?;
        st.serialize_field("valid_to", &self.valid_to.map(|d| d.iso()))?;
        st.end()
    }
}

impl Campaign {
    /// Whether the campaign runs on the local day `day`.
    pub fn runs_on(&self, day: Day) -> bool {
        self.valid_from.is_none_or(|f| day >= f) && self.valid_to.is_none_or(|t| day <= t)
    }

    /// The template of `channel`, if the campaign has one: (subject, body).
    pub fn template(&self, channel: Channel) -> Option<(Option<&str>, &str)> {
        match channel {
            Channel::Sms => self.messages.sms.as_deref().map(|b| (None, b)),
            Channel::Email => self
                .messages
                .email
                .as_ref()
                .map(|e| (Some(e.subject.as_str()), e.body.as_str())),
        }
    }

    /// The trigger's type, as the program writes it.
    pub fn trigger_type(&self) -> &'static str {
        match self.trigger {
            Trigger::Enrolled { .. } => "enrolled",
            Trigger::SegmentEntered { .. } => "segment_entered",
            Trigger::Birthday => "birthday",
            Trigger::TierReached { .. } => "tier_reached",
            Trigger::PointsReached { .. } => "points_reached",
            Trigger::Date { .. } => "date",
        }
    }

    /// The channels the campaign has a message for.
    pub fn channels(&self) -> Vec<Channel> {
        Channel::ALL
            .into_iter()
            .filter(|c| self.template(*c).is_some())
            .collect()
    }
}

/// The campaigns of a program, validated against its catalogue, tiers and segments: ids
/// distinct and well formed, every reward, tier, segment and store named exists or parses,
/// templates use only [`PLACEHOLDERS`] within their length limits.
pub fn campaigns(
    specs: &[CampaignSpec],
    rewards: &[Reward],
    tiers: &[Tier],
    segments: Option<&Segments>,
) -> Result<Vec<Campaign>, DomainError> {
    if specs.len() > MAX_CAMPAIGNS {
        return Err(invalid(format!("at most {MAX_CAMPAIGNS} campaigns")));
    }
    let mut out: Vec<Campaign> = Vec::with_capacity(specs.len());
    for (i, c) in specs.iter().enumerate() {
        let campaign = campaign(i, c, rewards, tiers, segments)?;
        if out.iter().any(|x| x.id == campaign.id) {
            return Err(invalid(format!(
                "campaigns[{i}].id {:?} appears twice",
                campaign.id
            )));
        }
        out.push(campaign);
    }
    Ok(out)
}

fn invalid(msg: String) -> DomainError {
    DomainError::invalid_program(msg)
}

fn campaign(
    i: usize,
    c: &CampaignSpec,
    rewards: &[Reward],
    tiers: &[Tier],
    segments: Option<&Segments>,
) -> Result<Campaign, DomainError> {
    let f = |field: &str| format!("campaigns[{i}].{field}");
    let id_ok = !c.id.is_empty()
        && c.id.len() <= 64
        && c.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !id_ok {
        return Err(invalid(format!(
            "{} must be 1 to 64 characters of [A-Za-z0-9_.-]",
            f("id")
        )));
    }
    let (valid_from, valid_to) = crate::program::date_range(
        (&f("valid_from"), &c.valid_from),
        (&f("valid_to"), &c.valid_to),
    )?;
    let cap = match c.frequency_cap {
        None => DEFAULT_CAP,
        Some(cap) => FrequencyCap {
            max: bounded(&f("frequency_cap.max"), cap.max, 1, 1_000)? as u32,
            days: bounded(&f("frequency_cap.days"), cap.days, 1, MAX_DAYS)? as u32,
        },
    };
    let messages = c.messages.clone().unwrap_or_default();
    if let Some(sms) = &messages.sms {
        template(&f("messages.sms"), sms, MAX_SMS)?;
    }
    if let Some(e) = &messages.email {
        template(&f("messages.email.subject"), &e.subject, MAX_SUBJECT)?;
        template(&f("messages.email.body"), &e.body, MAX_EMAIL)?;
    }
    Ok(Campaign {
        id: c.id.clone(),
        name: name(&f("name"), &c.name)?,
        trigger: trigger(&f("trigger"), &c.trigger, tiers, segments)?,
        audience: audience(&f("audience"), c.audience.as_ref(), segments)?,
        offer: offer(&f("offer"), &c.offer, rewards)?,
        messages,
        frequency_cap: cap,
        redeem_within_days: bounded(
            &f("redeem_within_days"),
            c.redeem_within_days.unwrap_or(30),
            1,
            MAX_DAYS,
        )? as u32,
        valid_from,
        valid_to,
    })
}

fn segment_name(field: &str, s: &str, segments: Option<&Segments>) -> Result<String, DomainError> {
    match segments {
        Some(seg) if seg.names().contains(&s) => Ok(s.to_owned()),
        Some(_) => Err(invalid(format!(
            "{field} {s:?} is not a segment of the program"
        ))),
        None => Err(invalid(format!(
            "{field} names segment {s:?} but the program has no segments section"
        ))),
    }
}

fn trigger(
    field: &str,
    t: &TriggerSpec,
    tiers: &[Tier],
    segments: Option<&Segments>,
) -> Result<Trigger, DomainError> {
    Ok(match t {
        TriggerSpec::Enrolled { after_days } => Trigger::Enrolled {
            after_days: bounded(&format!("{field}.after_days"), *after_days, 0, MAX_DAYS)? as u32,
        },
        TriggerSpec::SegmentEntered { segment } => Trigger::SegmentEntered {
            segment: segment_name(&format!("{field}.segment"), segment, segments)?,
        },
        TriggerSpec::Birthday {} => Trigger::Birthday,
        TriggerSpec::TierReached { tier } => {
            let pos = tiers.iter().position(|x| &x.name == tier);
            match pos {
                Some(p) if p > 0 => Trigger::TierReached { tier: tier.clone() },
                Some(_) => {
                    return Err(invalid(format!(
                        "{field}.tier {tier:?} is the first tier, which every member is in from enrolment (use an enrolled trigger)"
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "{field}.tier {tier:?} is not a tier of the program"
                    )))
                }
            }
        }
        TriggerSpec::PointsReached { points } => Trigger::PointsReached {
            points: bounded(&format!("{field}.points"), *points, 1, MAX_POINTS)?,
        },
        TriggerSpec::Date { on } => Trigger::Date {
            on: Day::parse_iso(on).ok_or_else(|| {
                invalid(format!(
                    "{field}.on must be a local date YYYY-MM-DD (1970 or later), got {on:?}"
                ))
            })?,
        },
    })
}

fn audience(
    field: &str,
    a: Option<&AudienceSpec>,
    segments: Option<&Segments>,
) -> Result<Audience, DomainError> {
    let Some(a) = a else {
        return Ok(Audience::default());
    };
    let segs = match &a.segments {
        None => None,
        Some(v) if v.is_empty() || v.len() > 64 => {
            return Err(invalid(format!(
                "{field}.segments must list 1 to 64 segments, or be left out (every member)"
            )))
        }
        Some(v) => Some(
            v.iter()
                .map(|s| segment_name(&format!("{field}.segments"), s, segments))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let stores = match &a.stores {
        None => None,
        Some(v) if v.is_empty() || v.len() > MAX_STORES => {
            return Err(invalid(format!(
                "{field}.stores must list 1 to {MAX_STORES} store ids, or be left out (every store)"
            )))
        }
        Some(v) => Some(
            v.iter()
                .map(|id| {
                    StoreId::parse(id).map_err(|_| {
                        invalid(format!("{field}.stores has an invalid store id {id:?}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Audience {
        segments: segs,
        stores,
    })
}

fn offer(field: &str, o: &OfferSpec, rewards: &[Reward]) -> Result<Offer, DomainError> {
    Ok(match o {
        OfferSpec::BonusPoints { points } => Offer::BonusPoints {
            points: bounded(&format!("{field}.points"), *points, 1, MAX_POINTS)?,
        },
        OfferSpec::Voucher { reward_id } => Offer::Voucher {
            reward_id: RewardId::parse(reward_id)
                .ok()
                .filter(|id| rewards.iter().any(|r| &r.id == id))
                .ok_or_else(|| {
                    invalid(format!(
                        "{field}.reward_id {reward_id:?} is not a reward of the catalogue"
                    ))
                })?,
        },
        OfferSpec::Multiplier {
            multiplier_pct,
            days,
        } => Offer::Multiplier {
            multiplier_pct: bounded(
                &format!("{field}.multiplier_pct"),
                *multiplier_pct,
                101,
                10_000,
            )?,
            days: bounded(&format!("{field}.days"), *days, 1, 365)? as u32,
        },
        OfferSpec::None {} => Offer::None,
    })
}

/// Checks a template: not blank, at most `max` characters, every `{name}` a placeholder.
fn template(field: &str, t: &str, max: usize) -> Result<(), DomainError> {
    if t.trim().is_empty() || t.chars().count() > max {
        return Err(invalid(format!("{field} must be 1 to {max} characters")));
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(invalid(format!("{field} has a '{{' without its '}}'")));
        };
        let key = &after[..close];
        if !PLACEHOLDERS.contains(&key) {
            return Err(invalid(format!(
                "{field} uses {{{key}}}, which is not one of {}",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            )));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// What a template's placeholders are replaced with.
#[derive(Clone, Debug, Default)]
pub struct TemplateValues<'a> {
    /// The member's first name ("" when not given).
    pub first_name: &'a str,
    pub points: Points,
    pub tier: &'a str,
    /// The offer in words ([`Offer`] described by the caller, in the member's language).
    pub offer: &'a str,
    pub franchise: &'a str,
    pub opt_out_url: &'a str,
}

/// Renders a validated message body. The opt-out link is appended when the template does
/// not place it itself: every message carries one.
pub fn render(template: &str, v: &TemplateValues<'_>) -> String {
    let mut out = fill(template, v);
    if !template.contains("{opt_out_url}") {
        out.push_str("\n\n");
        out.push_str(v.opt_out_url);
    }
    out
}

/// Replaces a validated template's placeholders (a subject line's: no link appended).
pub fn fill(template: &str, v: &TemplateValues<'_>) -> String {
    let points = v.points.to_string();
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        out.push_str(match &after[..close] {
            "first_name" => v.first_name,
            "points" => &points,
            "tier" => v.tier,
            "offer" => v.offer,
            "franchise" => v.franchise,
            "opt_out_url" => v.opt_out_url,
            other => other,
        });
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A campaign that fired for a member: the outbox is asked to send its message on each of
/// `channels` (those the campaign has a message for and the member consented to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    pub campaign_id: String,
    /// The trigger occurrence (`enrolled`, `birthday:2026`, `segment:at_risk:2026-03-01`...):
    /// a campaign fires once per member and key.
    pub key: String,
    pub channels: Vec<Channel>,
}

/// What one event changes in a campaign's results (README "Campaigns").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CampaignTally {
    pub campaign_id: String,
    pub fired: i64,
    /// Messages put in the outbox.
    pub messages: i64,
    pub redeemed: i64,
    /// Revenue of members who redeemed, in the [`REVENUE_DAYS`] after the firing.
    pub revenue_cents: i64,
}

impl CampaignTally {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.fired == 0 && self.messages == 0 && self.redeemed == 0 && self.revenue_cents == 0
    }
}

/// The counters of campaign results, in the order the API lists them. `sent` and the
/// delivery counters come from the outbox's delivery worker.
pub const COUNTERS: [&str; 6] = [
    "fired",
    "messages",
    "delivered",
    "failed",
    "redeemed",
    "revenue_cents",
];

impl Offer {
    /// The offer in a few words for a message's `{offer}` (numbers and the reward's own name,
    /// so that it reads in the franchise's language): `+25 points`, `Free pastry`,
    /// `x2 points, 7 days`, or empty for a message-only campaign.
    pub fn describe(&self, rewards: &[Reward]) -> String {
        match self {
            Offer::BonusPoints { points } => format!("+{points} points"),
            Offer::Voucher { reward_id } => rewards
                .iter()
                .find(|r| &r.id == reward_id)
                .map_or_else(|| reward_id.to_string(), |r| r.name.clone()),
            Offer::Multiplier {
                multiplier_pct,
                days,
            } => {
                let x = *multiplier_pct as f64 / 100.0;
                format!("x{x} points, {days} days")
            }
            Offer::None => String::new(),
        }
    }
}
