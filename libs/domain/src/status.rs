//! The member status shown at the till: balance, tier and progress, stamps, rewards.

use serde::{Deserialize, Serialize};

use crate::segments::segments_of;
use crate::{
    Cents, EventId, FranchiseId, MemberId, MemberState, Points, Program, RewardId, Timestamp,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextTier {
    pub name: String,
    /// How much of the tier metric is still missing (cents, points or visits).
    pub remaining: u64,
}

/// The member's next expiry: the points of their oldest lot and the day they expire (at the
/// start of that day, UTC, the scheduler takes them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextExpiry {
    pub points: Points,
    /// `YYYY-MM-DD`.
    pub date: String,
}

/// A downgrade the member's tier is due for after a grace period (README "Tiers"): the tier
/// it lowers them to and the day, unless they qualify again before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierDowngradeDue {
    pub tier: String,
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
}

/// A refund held for its purchase, which no event brought yet (an offline till's; README
/// "Refunds and voids"): applied when the purchase arrives, dropped at `lapses_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRefundDue {
    pub event_id: EventId,
    pub purchase_event_id: EventId,
    /// `None`: a void (all the purchase will have).
    pub amount_cents: Option<Cents>,
    pub lapses_at: Timestamp,
}

/// An outstanding redemption code (README "Redemption codes"): the till scans it to hand
/// `reward_id` over, before `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeDue {
    pub code: String,
    pub reward_id: RewardId,
    pub redemption_event_id: EventId,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    pub reward_id: RewardId,
    pub count: u32,
}

/// What a POS shows for a member. Contains no personal data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member_id: MemberId,
    pub franchise_id: FranchiseId,
    pub points: Points,
    pub tier: String,
    pub next_tier: Option<NextTier>,
    pub stamps: u32,
    pub stamp_card_size: Option<u32>,
    /// Rewards redeemable right now: a voucher is held, or the points cover the cost of a
    /// reward valid on the local day of the member's latest event and within its limit for the
    /// member. The catalogue's in its order, then those of vouchers whose reward has left the
    /// catalogue (still redeemable with the voucher).
    pub rewards_available: Vec<RewardId>,
    pub vouchers: Vec<Voucher>,
    pub visits: u64,
    pub spend_cents: u64,
    pub points_earned: Points,
    /// Increases with every change; a cache never replaces a newer status by an older one.
    pub version: u64,
    /// What expires next and when, if the program expires points and the member has any.
    /// Absent otherwise (and from statuses cached before it existed). Before `erased`, which
    /// stays the last field (the gateway checks the status's last bytes for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<NextExpiry>,
    /// The downgrade due, if the member is in a grace period. Absent otherwise (and from
    /// statuses cached before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_downgrade: Option<TierDowngradeDue>,
    /// Refunds held for purchases not seen yet, oldest first. Absent when none (and from
    /// statuses cached before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_refunds: Vec<HeldRefundDue>,
    /// The member's segments (README "Segments") on the local day of its latest event, by the
    /// current program: built-ins first, then custom ones in program order. Absent when none
    /// (and from statuses cached before it existed). Before `erased`, which stays last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// The member's outstanding redemption codes, oldest first. Absent when none (and from
    /// statuses cached before it existed). Before `erased`, which stays last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redemption_codes: Vec<CodeDue>,
    /// The member's personal data was erased (README "Privacy"): the member takes no more
    /// commands. Only present when true, so the status of every other member is unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

impl MemberStatus {
    pub fn of(state: &MemberState, program: &Program) -> MemberStatus {
        let metric = state.window_metric(program);
        let idx = program
            .tiers
            .iter()
            .position(|t| t.name == state.tier)
            .unwrap_or_else(|| program.tier_for(metric));
        let next_tier = program.tiers.get(idx + 1).map(|t| NextTier {
            name: t.name.clone(),
            remaining: t.threshold.saturating_sub(metric),
        });
        let mut rewards_available: Vec<RewardId> = program
            .rewards
            .iter()
            .filter(|r| {
                let redeemed = state.redemptions.get(&r.id).copied().unwrap_or(0);
                let with_points = state.points >= r.cost_points
                    && r.valid_on(program.local_day(state.clock))
                    && r.within_limit(redeemed);
                with_points || state.vouchers.get(&r.id).is_some_and(|n| *n > 0)
            })
            .map(|r| r.id.clone())
            .collect();
        rewards_available.extend(
            state
                .vouchers
                .iter()
                .filter(|(id, n)| **n > 0 && program.reward(id).is_none())
                .map(|(id, _)| id.clone()),
        );
        MemberStatus {
            member_id: state.member_id.clone(),
            franchise_id: state.franchise_id.clone(),
            points: state.points,
            tier: program.tiers[idx].name.clone(),
            next_tier,
            stamps: state.stamps,
            stamp_card_size: program.stamp_card.as_ref().map(|c| c.size),
            rewards_available,
            vouchers: state
                .vouchers
                .iter()
                .map(|(reward_id, count)| Voucher {
                    reward_id: reward_id.clone(),
                    count: *count,
                })
                .collect(),
            visits: state.visits,
            spend_cents: state.spend_cents,
            points_earned: state.points_earned,
            version: state.version,
            segments: segments_of(state, program, program.local_day(state.clock)),
            redemption_codes: state
                .redemption_codes
                .iter()
                .filter(|c| c.is_outstanding())
                .map(|c| CodeDue {
                    code: c.code.clone(),
                    reward_id: c.reward_id.clone(),
                    redemption_event_id: c.redemption_event_id.clone(),
                    expires_at: c.expires_at,
                })
                .collect(),
            erased: state.erased_at.is_some(),
            held_refunds: state
                .held_refunds
                .iter()
                .map(|h| HeldRefundDue {
                    event_id: h.event_id.clone(),
                    purchase_event_id: h.purchase_event_id.clone(),
                    amount_cents: h.amount_cents,
                    lapses_at: h.lapses_at,
                })
                .collect(),
            tier_downgrade: state.tier_downgrade.as_ref().map(|d| TierDowngradeDue {
                tier: d.to.clone(),
                date: d.on.iso(),
            }),
            next_expiry: state.next_expiry(program).map(|(points, day)| NextExpiry {
                points,
                date: day.iso(),
            }),
        }
    }
}
