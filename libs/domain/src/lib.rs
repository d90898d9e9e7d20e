//! The loyalty domain, pure: program rules, the points ledger, tiers, stamp cards, rewards and
//! idempotency. No async, no IO, no framework types; every other crate depends on this one.
//!
//! Money is integer minor units ([`Cents`]), points are integers ([`Points`]); there are no
//! floats anywhere in the rules.

pub mod audit;
pub mod birthday;
pub mod campaigns;
pub mod dashboard;
mod email;
mod error;
mod idempotency;
mod ids;
pub mod items;
pub mod kpi;
mod ledger;
mod member;
pub mod object;
pub mod privacy;
mod program;
pub mod segments;
mod status;
pub mod tiers;
mod zone;

pub use email::{EmailAddress, MAX_EMAIL};
pub use error::DomainError;
pub use idempotency::{
    classify, Delivery, Fingerprint, IssuedCode, Outcome, ProcessedEvent, PurchaseRecord, Rejection,
};
pub use ids::{
    Cents, Currency, Day, EventId, FranchiseId, ItemCategory, MemberId, Phone, Points, RewardId,
    Sku, StoreId, Timestamp, MAX_MEMBER_CENTS, MAX_POINTS_BALANCE,
};
pub use items::{ItemBonus, ItemBonusSpec, PurchaseItem, PurchaseItemSpec};
pub use ledger::{LedgerEntry, LedgerKind, PointLot};
pub use member::{
    apply, day_start, Applied, CampaignEffects, CampaignRecord, CodeSettled, Consent, DayActivity,
    EventContext, HeldRefund, MemberCommand, MemberState, Profile, RedemptionCode,
    RedemptionRecord, TierChange, TierDowngrade, TierReason, MAX_HELD_REFUNDS,
    MAX_REDEMPTION_CODES,
};
pub use program::{
    AutoVoucher, AutoVoucherSpec, BonusMultiplier, BonusMultiplierSpec, Program, ProgramSpec,
    RedemptionCodes, RedemptionCodesSpec, Reward, RewardSpec, Rounding, StampCard, StampCardSpec,
    Tier, TierSpec, Weekday, DEFAULT_HELD_REFUND_HORIZON_DAYS,
};
pub use status::{
    CodeDue, HeldRefundDue, MemberStatus, NextExpiry, NextTier, TierDowngradeDue, Voucher,
};
pub use tiers::{TierMetric, TierPeriod, TierQualification, TierQualificationSpec};
pub use zone::Zone;
