//! Checking a member's stored state against its ledger: what `loyalty audit` recomputes.
//!
//! The ledger is the record of every point movement, so a member's balance and point counters
//! are recomputed from it alone and compared with the stored state:
//! - the entries are numbered 1, 2, … without a gap or a repeat, up to the state's `last_seq`;
//! - each entry's `balance_after` is the previous one plus its points (checked arithmetic: an
//!   overflow is a finding, not a wrap), and no balance is ever negative;
//! - the state's balance is the last `balance_after`, and the sum of its point lots;
//! - earned, redeemed, expired and reversed points are the sums of the entries of each kind
//!   (redeemed net of the points a cancellation gave back).
//!
//! Stamps, vouchers and the tier are not in the ledger: the tier is recomputed from the
//! member's activity window with the program, and stamps are checked against the stamp card
//! (fewer than its size: a full card becomes a voucher at once). A voucher may name a reward
//! the program no longer has: vouchers outlive their reward (see `MemberState::redeem`), so
//! that is not a finding. An erased member (README "Privacy") is audited like any other, and its
//! profile must hold no personal data any more. Nothing here reads a clock or a store.

use std::fmt;

use crate::{LedgerEntry, LedgerKind, MemberState, Program};

/// One difference between a member's stored state and what its ledger says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Entry numbers are not 1, 2, … (`expected` is the number the entry should have had).
    Sequence { expected: u64, found: u64 },
    /// The state's `last_seq` is not the number of the last entry.
    LastSeq { state: u64, ledger: u64 },
    /// An entry's `balance_after` is not the previous balance plus its points.
    BalanceAfter {
        seq: u64,
        recomputed: i128,
        recorded: u64,
    },
    /// The running balance went below zero at an entry.
    Negative { seq: u64, balance: i128 },
    /// The running balance left the range of a balance (`u64`).
    Overflow { seq: u64 },
    /// The state's balance is not the ledger's.
    Balance { state: u64, ledger: i128 },
    /// The state's balance is not the sum of its point lots.
    Lots { state: u64, lots: u128 },
    /// A counter (`earned`, `redeemed`, `expired`, `reversed`) is not the sum of its entries.
    Counter {
        name: &'static str,
        state: u64,
        ledger: u128,
    },
    /// The tier is not the one the member's activity window qualifies for.
    Tier { state: String, recomputed: String },
    /// More stamps than a card holds (a full card becomes a voucher at once).
    Stamps { stamps: u32, card_size: u32 },
    /// A member marked erased whose profile still holds personal data (README "Privacy").
    NotErased,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Sequence { expected, found } => {
                write!(
                    f,
                    "ledger entry {found} where entry {expected} was expected"
                )
            }
            Finding::LastSeq { state, ledger } => {
                write!(f, "state's last entry is {state}, the ledger's is {ledger}")
            }
            Finding::BalanceAfter {
                seq,
                recomputed,
                recorded,
            } => write!(
                f,
                "entry {seq} records a balance of {recorded}, its points make {recomputed}"
            ),
            Finding::Negative { seq, balance } => {
                write!(f, "balance {balance} below zero after entry {seq}")
            }
            Finding::Overflow { seq } => write!(f, "balance out of range after entry {seq}"),
            Finding::Balance { state, ledger } => {
                write!(f, "balance {state} in the state, {ledger} in the ledger")
            }
            Finding::Lots { state, lots } => {
                write!(f, "balance {state} in the state, {lots} in its point lots")
            }
            Finding::Counter {
                name,
                state,
                ledger,
            } => write!(
                f,
                "points {name}: {state} in the state, {ledger} in the ledger"
            ),
            Finding::Tier { state, recomputed } => {
                write!(
                    f,
                    "tier {state:?}, the activity window qualifies for {recomputed:?}"
                )
            }
            Finding::Stamps { stamps, card_size } => {
                write!(f, "{stamps} stamps on a card of {card_size}")
            }
            Finding::NotErased => {
                write!(f, "erased, but its profile still holds personal data")
            }
        }
    }
}

/// Every difference between `state` and `ledger` (the member's entries, oldest first), with
/// `program` the franchise's program (for the tier, the stamp card and the rewards). Empty when
/// the state is what its ledger says.
pub fn audit_member(
    state: &MemberState,
    ledger: &[LedgerEntry],
    program: &Program,
) -> Vec<Finding> {
    let mut findings = audit_ledger(state, ledger);
    let lots: u128 = state.lots.iter().map(|l| u128::from(l.points)).sum();
    if lots != u128::from(state.points) {
        findings.push(Finding::Lots {
            state: state.points,
            lots,
        });
    }
    audit_program(state, program, &mut findings);
    let p = &state.profile;
    if state.erased_at.is_some()
        && (!p.phone.is_erased()
            || p.name.is_some()
            || p.birthday.is_some()
            || !p.consent.is_none()
            || p.email.is_some())
    {
        findings.push(Finding::NotErased);
    }
    findings
}

/// The ledger's own consistency, and the state's balance and counters against it.
fn audit_ledger(state: &MemberState, ledger: &[LedgerEntry]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut balance: i128 = 0;
    let mut sums = [0u128; 4]; // earned, redeemed, expired, reversed
    for (i, e) in ledger.iter().enumerate() {
        let expected = i as u64 + 1;
        if e.seq != expected {
            findings.push(Finding::Sequence {
                expected,
                found: e.seq,
            });
        }
        balance += i128::from(e.points);
        if balance < 0 {
            findings.push(Finding::Negative {
                seq: e.seq,
                balance,
            });
        } else if balance > i128::from(u64::MAX) {
            findings.push(Finding::Overflow { seq: e.seq });
        }
        if balance != i128::from(e.balance_after) {
            findings.push(Finding::BalanceAfter {
                seq: e.seq,
                recomputed: balance,
                recorded: e.balance_after,
            });
        }
        let magnitude = u128::from(e.points.unsigned_abs());
        match e.kind {
            LedgerKind::Earn if e.points > 0 => sums[0] += magnitude,
            // A cancellation gives redeemed points back (a positive entry after its redemption).
            LedgerKind::Redeem if e.points > 0 => sums[1] = sums[1].saturating_sub(magnitude),
            LedgerKind::Redeem => sums[1] += magnitude,
            LedgerKind::Expire => sums[2] += magnitude,
            LedgerKind::Reverse => sums[3] += magnitude,
            LedgerKind::Earn | LedgerKind::Adjust | LedgerKind::Tier => {}
        }
    }
    let last = ledger.last().map_or(0, |e| e.seq);
    if state.last_seq != last {
        findings.push(Finding::LastSeq {
            state: state.last_seq,
            ledger: last,
        });
    }
    if i128::from(state.points) != balance {
        findings.push(Finding::Balance {
            state: state.points,
            ledger: balance,
        });
    }
    let counters = [
        ("earned", state.points_earned),
        ("redeemed", state.points_redeemed),
        ("expired", state.points_expired),
        ("reversed", state.points_reversed),
    ];
    for ((name, value), sum) in counters.into_iter().zip(sums) {
        if u128::from(value) != sum {
            findings.push(Finding::Counter {
                name,
                state: value,
                ledger: sum,
            });
        }
    }
    findings
}

/// The tier and stamps against the program.
fn audit_program(state: &MemberState, program: &Program, findings: &mut Vec<Finding>) {
    let recomputed = program
        .tiers
        .get(program.tier_for(state.window_metric(program)))
        .map(|t| t.name.clone());
    if let Some(recomputed) = recomputed.filter(|t| *t != state.tier) {
        findings.push(Finding::Tier {
            state: state.tier.clone(),
            recomputed,
        });
    }
    if let Some(card) = &program.stamp_card {
        if state.stamps >= card.size {
            findings.push(Finding::Stamps {
                stamps: state.stamps,
                card_size: card.size,
            });
        }
    }
}
