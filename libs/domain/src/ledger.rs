//! The points ledger: every change of a balance is an entry that names the event causing it.
//! A member's balance is, at all times, the sum of its entries.

use serde::{Deserialize, Serialize};

use crate::{EventId, Points, StoreId, Timestamp};

/// Why a balance moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Points earned by a purchase or a bonus.
    Earn,
    /// Points (or a voucher, with zero points) spent on a reward; positive (or zero, for a
    /// voucher) when a cancellation gives them back (detail `cancel:<redemption event id>`).
    Redeem,
    /// Points that reached the program's expiry age.
    Expire,
    /// A manual correction.
    Adjust,
    /// Points taken back by a refund.
    Reverse,
    /// The member's tier moved (0 points); `tier_change` says from what, to what and why.
    Tier,
}

/// One movement of a member's points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the member's ledger, from 1, without gaps.
    pub seq: u64,
    /// The POS event that caused this entry.
    pub event_id: EventId,
    pub kind: LedgerKind,
    /// Signed change of the balance.
    pub points: i64,
    /// The balance right after this entry.
    pub balance_after: Points,
    pub store_id: StoreId,
    pub at: Timestamp,
    /// A short machine-readable reason (`purchase`, `signup_bonus`, `reward:free-coffee`,
    /// `voucher:free-coffee`, `refund:<event>`, `cancel:<event>`...). Never personal data.
    pub detail: String,
    /// The version of the franchise's program the entry was judged by (the one current when
    /// the gateway accepted its command): a program change applies to later events only, and
    /// the ledger shows which rules gave each entry. 0 in entries stored before the version
    /// was recorded.
    #[serde(default)]
    pub program_version: u32,
    /// On a `tier` entry: the move and its reason (README "Tiers"). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_change: Option<crate::TierChange>,
}

/// Points earned on one day, kept so that the oldest points are spent (and expire) first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointLot {
    pub day: crate::Day,
    pub points: Points,
}
