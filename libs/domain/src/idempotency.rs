//! Idempotency of POS events: every event carries a client-chosen id; the first outcome for an
//! id is recorded with a fingerprint of the event's content, and any later delivery of the same
//! id is either a replay (same content: the recorded outcome, nothing changes) or a conflict
//! (different content: refused, nothing changes).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    Cents, EventId, FranchiseId, MemberId, PointLot, Points, RewardId, StoreId, Timestamp,
};

/// A digest of an event's content, excluding everything the system adds (arrival time,
/// program version), so that a resend of the same request has the same fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// Hashes the given fields; each is length-prefixed so that field boundaries matter.
    pub fn of(fields: &[&[u8]]) -> Fingerprint {
        let mut h = Sha256::new();
        for f in fields {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f);
        }
        let digest = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Fingerprint(out)
    }
}

/// What a purchase did, kept so that refunds can reverse exactly that: its points pro rata,
/// and its visit, stamp and voucher once it is refunded in full. The fields after
/// `reversed_points` read as `false`/`None` in records stored before they existed, so a full
/// refund of such a purchase reverses its points and spend only, as it did then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    pub amount_cents: Cents,
    pub points_earned: Points,
    pub day: crate::Day,
    /// Cumulative refunded amount; never above `amount_cents`.
    pub refunded_cents: u64,
    /// Cumulative points owed back by refunds (taken back or, when already spent, forgiven);
    /// `floor(points_earned × refunded_cents / amount_cents)`.
    pub reversed_points: Points,
    /// The purchase counted a visit (its amount was positive).
    #[serde(default)]
    pub visit: bool,
    /// The purchase gave a stamp of the program's card.
    #[serde(default)]
    pub stamp: bool,
    /// The voucher the purchase's stamp completed the card for, if it did.
    #[serde(default)]
    pub voucher: Option<RewardId>,
    /// The size of the card that stamp completed (0 when it completed none): a reversal of the
    /// voucher gives that card's other stamps back.
    #[serde(default)]
    pub card_size: u32,
    /// A refund in full took the visit, stamp and voucher back already (once only).
    #[serde(default)]
    pub reversed_in_full: bool,
    /// The part of `refunded_cents` that refunds held for the purchase (an offline till's)
    /// refunded when it arrived: the dashboards count it as refunded with the purchase, since
    /// those refunds' own outcomes are `held`. Later refunds leave it as it is.
    #[serde(default)]
    pub held_refunded_cents: u64,
}

/// Why a well-formed event was refused. A rejection changes no balance; it is recorded so
/// that a replay of the event gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum Rejection {
    #[error(
        "the reward needs {needed} points and the member has {available} and no voucher for it"
    )]
    InsufficientPoints { needed: Points, available: Points },
    #[error("no such member in this franchise")]
    UnknownMember,
    #[error("the reward {reward_id} is not in the program's catalogue")]
    UnknownReward { reward_id: RewardId },
    #[error("no applied purchase {purchase_event_id} of this member")]
    UnknownPurchase { purchase_event_id: EventId },
    #[error("the refund exceeds what is left of the purchase ({remaining_cents} cents)")]
    RefundExceedsPurchase { remaining_cents: u64 },
    #[error("the program's currency is {expected}")]
    CurrencyMismatch { expected: String },
    /// The event would take one of the member's balances or totals (`counter`: `points`,
    /// `points_earned`, `spend_cents`...) past the largest the platform keeps (`limit`, see
    /// [`crate::MAX_POINTS_BALANCE`]): refused, nothing changed.
    #[error("the event would take the member's {counter} past {limit}, the largest kept")]
    LimitExceeded { counter: String, limit: u64 },
    /// The member's personal data was erased (README "Privacy"): the member takes no command
    /// any more, a new enrolment of the same phone included.
    #[error("this member's personal data was erased: the member takes no more commands")]
    MemberErased,
    /// The reward cannot be redeemed with points on this local day (its `valid_from` to
    /// `valid_to`, `YYYY-MM-DD`, either open).
    #[error("the reward {reward_id} cannot be redeemed with points today (valid from {} to {})", valid_from.as_deref().unwrap_or("always"), valid_to.as_deref().unwrap_or("for ever"))]
    RewardNotValid {
        reward_id: RewardId,
        valid_from: Option<String>,
        valid_to: Option<String>,
    },
    /// The member already redeemed the reward with points as many times as the program allows.
    #[error("the member already redeemed {reward_id} {limit_per_member} times, the most allowed")]
    RedemptionLimitReached {
        reward_id: RewardId,
        limit_per_member: u32,
    },
    /// A cancellation names no applied redemption of this member.
    #[error("no applied redemption {redemption_event_id} of this member")]
    UnknownRedemption { redemption_event_id: EventId },
    /// The redemption was already cancelled, by the event `cancelled_by`.
    #[error("the redemption {redemption_event_id} was already cancelled by {cancelled_by}")]
    RedemptionAlreadyCancelled {
        redemption_event_id: EventId,
        cancelled_by: EventId,
    },
    /// The redemption is older than the program's cancellation window (0: none allowed).
    #[error("a redemption can be cancelled within {cancel_minutes} minutes; this one no longer")]
    CancellationWindowClosed { cancel_minutes: u32 },
    /// Consent to e-mail offers for a member with no e-mail address (give one with it).
    #[error("the member has no e-mail address: consent to e-mail needs one")]
    EmailRequired,
    /// A redemption asked for a code and the program offers none (no `redemption_codes`).
    #[error("the program offers no redemption codes")]
    RedemptionCodesNotOffered,
    /// The code names no code of a member of this franchise (mistyped, forged, another
    /// franchise's, or forgotten a week after its expiry): nothing about any member is told.
    #[error("no such redemption code")]
    UnknownCode,
    /// The code was already used, at `used_at` in the store `store_id`; a redemption whose code
    /// was used cannot be cancelled either.
    #[error("the code was already used in store {store_id} at {} (ms since the epoch)", used_at.0)]
    CodeAlreadyUsed {
        used_at: Timestamp,
        store_id: StoreId,
    },
    /// The code expired at `expired_at`, unused: what its redemption took was given back then.
    #[error("the code expired at {} (ms since the epoch); what it took was given back", expired_at.0)]
    CodeExpired { expired_at: Timestamp },
    /// The code's redemption was cancelled (by the event `cancelled_by`), voiding the code.
    #[error("the code was voided by the cancellation {cancelled_by} of its redemption")]
    CodeVoided { cancelled_by: EventId },
}

impl Rejection {
    /// A stable, URL-friendly code for problem types and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InsufficientPoints { .. } => "insufficient-points",
            Rejection::UnknownMember => "unknown-member",
            Rejection::UnknownReward { .. } => "unknown-reward",
            Rejection::UnknownPurchase { .. } => "unknown-purchase",
            Rejection::RefundExceedsPurchase { .. } => "refund-exceeds-purchase",
            Rejection::CurrencyMismatch { .. } => "currency-mismatch",
            Rejection::LimitExceeded { .. } => "limit-exceeded",
            Rejection::MemberErased => "member-erased",
            Rejection::RewardNotValid { .. } => "reward-not-valid",
            Rejection::RedemptionLimitReached { .. } => "redemption-limit-reached",
            Rejection::UnknownRedemption { .. } => "unknown-redemption",
            Rejection::RedemptionAlreadyCancelled { .. } => "redemption-already-cancelled",
            Rejection::CancellationWindowClosed { .. } => "cancellation-window-closed",
            Rejection::EmailRequired => "email-required",
            Rejection::RedemptionCodesNotOffered => "redemption-codes-not-offered",
            Rejection::UnknownCode => "unknown-code",
            Rejection::CodeAlreadyUsed { .. } => "code-already-used",
            Rejection::CodeExpired { .. } => "code-expired",
            Rejection::CodeVoided { .. } => "code-voided",
        }
    }
}

/// A single-use code a redemption issued (README "Redemption codes"): shown to the member,
/// scanned at the till before `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCode {
    /// `<member id>-<12 base32 characters>`, lower case (the gateway's HMAC of the franchise's
    /// secret over the member and the redemption's event id).
    pub code: String,
    pub expires_at: Timestamp,
}

/// The recorded result of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    Enrolled {
        created: bool,
    },
    Purchase(PurchaseRecord),
    AnonymousSale {
        amount_cents: Cents,
    },
    Refund {
        purchase_event_id: EventId,
        amount_cents: Cents,
        points_reversed: Points,
        /// Points the refund should have taken back but that were already spent or expired:
        /// forgiven, since no balance goes below zero.
        points_forgiven: Points,
        /// The purchase as it stands after this refund.
        purchase: PurchaseRecord,
        /// The refund completed the purchase's refund and took back the visit it counted.
        #[serde(default)]
        visit_reversed: bool,
        /// ... and the stamp it gave (false if that stamp is spent: see `voucher_kept`).
        #[serde(default)]
        stamp_reversed: bool,
        /// ... and the voucher its stamp completed the card for, still unused.
        #[serde(default)]
        voucher_reversed: Option<RewardId>,
        /// The voucher the purchase's stamp completed the card for, already used: it stays used
        /// (the reward was given) and its stamps stay spent; nothing else is taken for it.
        #[serde(default)]
        voucher_kept: Option<RewardId>,
    },
    /// A refund of a purchase not seen yet (an offline till's, replaying its queue): held in
    /// the member's state and applied within the purchase's own command when it arrives, if it
    /// arrives before `lapses_at`; after that, the hold lapses and the refund does nothing.
    Held {
        purchase_event_id: EventId,
        /// What is held; `None`: everything the purchase has left (a void).
        amount_cents: Option<Cents>,
        lapses_at: Timestamp,
    },
    Redemption {
        reward_id: RewardId,
        used_voucher: bool,
        points_spent: Points,
        /// The points taken from each lot (by the day they were earned), so that a cancellation
        /// gives them back where they were. Empty for a voucher (and in records kept before).
        #[serde(default)]
        lots_taken: Vec<PointLot>,
        /// The event that cancelled this redemption, once one did (a cancellation updates the
        /// redemption's record, as a refund updates its purchase's).
        #[serde(default)]
        cancelled_by: Option<EventId>,
        /// The code the redemption issued instead of the reward at once (README "Redemption
        /// codes"). Absent from every other redemption (and from records kept before), which
        /// read and serialize as they did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<IssuedCode>,
    },
    /// A redemption cancelled within the program's window: what it took is given back.
    RedemptionCancelled {
        redemption_event_id: EventId,
        reward_id: RewardId,
        /// Points given back into the lots they came from (0 for a voucher).
        points_returned: Points,
        /// Whether the voucher the redemption used is the member's again.
        voucher_returned: bool,
    },
    /// A redemption code used at the till: the cashier hands over `reward_id`, which the
    /// redemption `redemption_event_id` paid for when it issued the code.
    CodeConsumed {
        redemption_event_id: EventId,
        reward_id: RewardId,
    },
    /// The member's personal data erased (README "Privacy"), at `erased_at`.
    Erased {
        erased_at: Timestamp,
    },
    /// The member's clock moved by the scheduler ([`crate::MemberCommand::Advance`]): the
    /// points that expired and the tier after it.
    Advanced {
        points_expired: Points,
        tier: String,
    },
    Rejected(Rejection),
    /// The member's consent changed ([`crate::MemberCommand::SetConsent`]), or already was
    /// as asked: the consent now held.
    ConsentChanged {
        consent: crate::Consent,
    },
}

impl Outcome {
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Outcome::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

/// The idempotency record of one event, keyed by franchise and event id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessedEvent {
    pub franchise_id: FranchiseId,
    pub event_id: EventId,
    pub fingerprint: Fingerprint,
    pub member_id: Option<MemberId>,
    pub store_id: StoreId,
    pub at: Timestamp,
    pub outcome: Outcome,
}

/// What to do with an incoming event given what was recorded for its id.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// Never seen: apply it.
    New,
    /// Seen with the same content: answer with the recorded outcome, change nothing.
    Replay(&'a ProcessedEvent),
    /// Seen with different content: refuse, change nothing.
    Conflict(&'a ProcessedEvent),
}

/// Classifies a delivery of an event with fingerprint `fp`.
pub fn classify(recorded: Option<&ProcessedEvent>, fp: Fingerprint) -> Delivery<'_> {
    match recorded {
        None => Delivery::New,
        Some(r) if r.fingerprint == fp => Delivery::Replay(r),
        Some(r) => Delivery::Conflict(r),
    }
}
