//! Single-use redemption codes (README "Redemption codes"): a redemption may take its points
//! (or voucher) now and issue a code instead of the reward; a cashier scans the code at any
//! store of the franchise to hand the reward over, once. A code not used by its expiry gives
//! back what its redemption took, on time (the scheduler advances the member then,
//! [`MemberState::next_due`]); cancelling the redemption voids an unused code and gives it back
//! the same way; a used code's redemption cannot be cancelled.
//!
//! The code text comes from the gateway inside the command (an HMAC of the franchise's secret
//! over the member and the redemption's event id), so the domain stays pure and a replay of the
//! log gives the same code.

use serde::{Deserialize, Serialize};

use super::{limit_exceeded, MemberState};
use crate::{
    EventContext, EventId, IssuedCode, LedgerEntry, Outcome, PointLot, Points, RedemptionRecord,
    Rejection, RewardId, StoreId, Timestamp,
};

/// The most codes a member's state keeps: outstanding ones and those remembered after they
/// were settled (used, expired or voided, for [`REMEMBER_MS`] after their expiry). A
/// redemption asking for one more is refused with `limit-exceeded` (`redemption_codes`).
pub const MAX_REDEMPTION_CODES: usize = 32;

/// How long a settled code is remembered after its expiry, so that a second scan is told
/// what became of it: a week, which is also the longest cancellation window, so a
/// cancellation within its window always finds its code.
const REMEMBER_MS: i64 = 7 * 86_400_000;

/// A code the member holds, outstanding or settled, with what its redemption took (given back
/// at expiry or cancellation if unused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedemptionCode {
    /// The code's text, as [`IssuedCode::code`].
    pub code: String,
    pub redemption_event_id: EventId,
    pub reward_id: RewardId,
    /// The member's clock when the code was issued.
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_voucher: bool,
    pub points_spent: Points,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lots_taken: Vec<PointLot>,
    /// `None` while outstanding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<CodeSettled>,
}

/// What became of a code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "as", rename_all = "snake_case")]
pub enum CodeSettled {
    /// Scanned at the till by the event `event_id`: the reward was handed over.
    Used {
        event_id: EventId,
        at: Timestamp,
        store_id: StoreId,
    },
    /// Reached its expiry unused: what the redemption took was given back.
    Expired,
    /// Its redemption was cancelled by `cancelled_by`: what it took was given back.
    Voided { cancelled_by: EventId },
}

impl RedemptionCode {
    pub fn is_outstanding(&self) -> bool {
        self.settled.is_none()
    }

    /// The redemption as a cancellation sees it, for giving back what it took.
    fn as_record(&self) -> RedemptionRecord {
        RedemptionRecord {
            at: self.issued_at,
            reward_id: self.reward_id.clone(),
            used_voucher: self.used_voucher,
            points_spent: self.points_spent,
            lots_taken: self.lots_taken.clone(),
            cancelled_by: None,
            code: None,
        }
    }

    /// Why this settled code cannot be used (or its redemption cancelled) again.
    fn refusal(&self) -> Option<Rejection> {
        Some(match self.settled.as_ref()? {
            CodeSettled::Used { at, store_id, .. } => Rejection::CodeAlreadyUsed {
                used_at: *at,
                store_id: store_id.clone(),
            },
            CodeSettled::Expired => Rejection::CodeExpired {
                expired_at: self.expires_at,
            },
            CodeSettled::Voided { cancelled_by } => Rejection::CodeVoided {
                cancelled_by: cancelled_by.clone(),
            },
        })
    }
}

/// Whether `a` and `b` are the same text, in time that does not depend on where they differ.
fn same_code(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl MemberState {
    /// A redemption that issues `code` instead of the reward: judged and paid exactly like
    /// [`MemberState::redeem`] (voucher first, else points, within dates and limit), then
    /// the code is kept, valid for the program's `redemption_codes.valid_days` from the
    /// member's clock. Refused when the program offers no codes, or when the member's state
    /// already keeps [`MAX_REDEMPTION_CODES`].
    pub(super) fn redeem_as_code(
        &mut self,
        ctx: &EventContext<'_>,
        reward_id: &RewardId,
        code: &str,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Outcome, Rejection> {
        let Some(settings) = ctx.program.redemption_codes else {
            return Err(Rejection::RedemptionCodesNotOffered);
        };
        if self.redemption_codes.len() >= MAX_REDEMPTION_CODES {
            return Err(limit_exceeded(
                "redemption_codes",
                MAX_REDEMPTION_CODES as u64,
            ));
        }
        let mut outcome = self.redeem(ctx, reward_id, entries)?;
        let expires_at = Timestamp(self.clock.0.saturating_add(settings.valid_ms()));
        if let Outcome::Redemption {
            reward_id,
            used_voucher,
            points_spent,
            lots_taken,
            code: issued,
            ..
        } = &mut outcome
        {
            self.redemption_codes.push(RedemptionCode {
                code: code.to_owned(),
                redemption_event_id: ctx.event_id.clone(),
                reward_id: reward_id.clone(),
                issued_at: self.clock,
                expires_at,
                used_voucher: *used_voucher,
                points_spent: *points_spent,
                lots_taken: lots_taken.clone(),
                settled: None,
            });
            *issued = Some(IssuedCode {
                code: code.to_owned(),
                expires_at,
            });
        }
        Ok(outcome)
    }

    /// Uses the member's outstanding code `code` at the till (the event's store and time):
    /// the outcome names the reward to hand over and the redemption that paid for it. No
    /// ledger entry: the points (or voucher) went at issue. A code the member does not hold
    /// is [`Rejection::UnknownCode`]; a settled one says what became of it.
    pub(super) fn consume_code(
        &mut self,
        ctx: &EventContext<'_>,
        code: &str,
    ) -> Result<Outcome, Rejection> {
        let c = self
            .redemption_codes
            .iter_mut()
            .find(|c| same_code(&c.code, code))
            .ok_or(Rejection::UnknownCode)?;
        if let Some(refusal) = c.refusal() {
            return Err(refusal);
        }
        c.settled = Some(CodeSettled::Used {
            event_id: ctx.event_id.clone(),
            at: ctx.at,
            store_id: ctx.store_id.clone(),
        });
        Ok(Outcome::CodeConsumed {
            redemption_event_id: c.redemption_event_id.clone(),
            reward_id: c.reward_id.clone(),
        })
    }

    /// On the cancellation of a redemption that issued `issued`: voids the code if it is
    /// still outstanding (the caller gives back what the redemption took); refuses if it was
    /// used (the reward was handed over), expired (what it took came back then) or is no
    /// longer kept (only a week after its expiry, past any cancellation window).
    pub(super) fn void_code(
        &mut self,
        ctx: &EventContext<'_>,
        redemption_event_id: &EventId,
        issued: &IssuedCode,
    ) -> Result<(), Rejection> {
        let Some(c) = self
            .redemption_codes
            .iter_mut()
            .find(|c| &c.redemption_event_id == redemption_event_id)
        else {
            return Err(Rejection::CodeExpired {
                expired_at: issued.expires_at,
            });
        };
        if let Some(refusal) = c.refusal() {
            return Err(refusal);
        }
        c.settled = Some(CodeSettled::Voided {
            cancelled_by: ctx.event_id.clone(),
        });
        Ok(())
    }

    /// When the clock moves: every outstanding code whose expiry the clock reached expires,
    /// giving back what its redemption took (a `redeem` entry `code_expired:<redemption event
    /// id>`, as a cancellation's), oldest first; settled codes a week past their expiry are
    /// forgotten.
    pub(super) fn expire_codes(
        &mut self,
        ctx: &EventContext<'_>,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(), Rejection> {
        let clock = self.clock;
        for i in 0..self.redemption_codes.len() {
            let c = &self.redemption_codes[i];
            if !c.is_outstanding() || c.expires_at > clock {
                continue;
            }
            let record = c.as_record();
            let detail = format!("code_expired:{}", c.redemption_event_id);
            self.give_back_taken(ctx, &record, &detail, entries)?;
            self.redemption_codes[i].settled = Some(CodeSettled::Expired);
        }
        self.redemption_codes
            .retain(|c| c.is_outstanding() || c.expires_at.0.saturating_add(REMEMBER_MS) > clock.0);
        Ok(())
    }

    /// The earliest expiry of an outstanding code, for [`MemberState::next_due`].
    pub(super) fn next_code_expiry(&self) -> Option<Timestamp> {
        self.redemption_codes
            .iter()
            .filter(|c| c.is_outstanding())
            .map(|c| c.expires_at)
            .min()
    }
}
