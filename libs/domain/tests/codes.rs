//! Single-use redemption codes (README "Redemption codes"): issued by a redemption that takes
//! its points or voucher at once, consumed at most once at the till before its expiry, voided
//! by the redemption's cancellation, and giving back what it took at its expiry if unused.
//!
//! Commands go through [`apply`] as the engine sends them: every outcome is kept by event id,
//! a cancellation is handed its redemption's [`RedemptionRecord`], and a cancellation's outcome
//! marks the redemption's record `cancelled_by`.

use std::collections::HashMap;

use loyalty_domain::{
    apply, Applied, Cents, CodeSettled, EventContext, EventId, FranchiseId, IssuedCode,
    LedgerEntry, LedgerKind, MemberCommand, MemberId, MemberState, MemberStatus, Outcome, Phone,
    Points, ProcessedEvent, Profile, Program, RedemptionCodes, RedemptionRecord, Rejection,
    RewardId, StoreId, Timestamp, MAX_REDEMPTION_CODES,
};
use proptest::prelude::*;
use serde_json::json;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

fn rid(s: &str) -> RewardId {
    RewardId::parse(s).unwrap()
}

/// The demo program (free coffee 100 points, free pastry 150) with codes valid `days` days
/// and redemptions cancellable for `cancel_minutes`.
fn program(days: u32, cancel_minutes: u32) -> Program {
    let mut p = Program::demo();
    p.redemption_codes = Some(RedemptionCodes { valid_days: days });
    p.redemption_cancel_minutes = cancel_minutes;
    p
}

/// One member, with the engine's record of every event's time and outcome.
struct Member {
    program: Program,
    state: Option<MemberState>,
    next: u32,
    records: HashMap<EventId, (Timestamp, Outcome)>,
    ledger: Vec<LedgerEntry>,
    /// Every command sent, with its time and store, to replay the member from scratch.
    log: Vec<(i64, &'static str, MemberCommand)>,
}

impl Member {
    fn new(program: Program) -> Member {
        Member {
            program,
            state: None,
            next: 0,
            records: HashMap::new(),
            ledger: Vec::new(),
            log: Vec::new(),
        }
    }

    fn enrolled(program: Program) -> Member {
        let mut m = Member::new(program);
        let profile = Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: None,
            birthday: None,
            consent: Default::default(),
            email: None,
        };
        m.send(0, MemberCommand::Enrol { profile }).1.unwrap();
        m
    }

    fn state(&self) -> &MemberState {
        self.state.as_ref().expect("enrolled")
    }

    /// Applies `cmd` at `T0 + at_ms` in store `s-1` and keeps its record as the engine does.
    fn send(&mut self, at_ms: i64, cmd: MemberCommand) -> (EventId, Result<Applied, Rejection>) {
        self.send_at("s-1", at_ms, cmd)
    }

    fn send_at(
        &mut self,
        store: &'static str,
        at_ms: i64,
        cmd: MemberCommand,
    ) -> (EventId, Result<Applied, Rejection>) {
        self.log.push((at_ms, store, cmd.clone()));
        self.next += 1;
        let id = EventId::parse(&format!("e-{}", self.next)).unwrap();
        let store = StoreId::parse(store).unwrap();
        let at = Timestamp(T0 + at_ms);
        let ctx = EventContext {
            event_id: &id,
            store_id: &store,
            at,
            program: &self.program,
            program_version: 1,
        };
        let result = apply(
            &mut self.state,
            &MemberId::parse("m-1").unwrap(),
            &FranchiseId::parse("f-1").unwrap(),
            &cmd,
            &ctx,
        );
        if let Ok(applied) = &result {
            self.ledger.extend(applied.entries.iter().cloned());
            if let Outcome::RedemptionCancelled {
                redemption_event_id,
                ..
            } = &applied.outcome
            {
                if let Some((_, Outcome::Redemption { cancelled_by, .. })) =
                    self.records.get_mut(redemption_event_id)
                {
                    *cancelled_by = Some(id.clone());
                }
            }
            self.records
                .insert(id.clone(), (at, applied.outcome.clone()));
        }
        (id, result)
    }

    fn buy(&mut self, at_ms: i64, cents: i64) {
        let currency = self.program.currency.clone();
        let cmd = MemberCommand::Purchase {
            amount: Cents::new(cents).unwrap(),
            currency,
            items: Vec::new(),
        };
        self.send(at_ms, cmd).1.expect("a purchase is accepted");
    }

    /// A redemption of `reward` asking for a code (its text: `code-<event number>`, as the
    /// gateway derives one per event id).
    fn redeem_code(&mut self, at_ms: i64, reward: &str) -> (EventId, Result<Applied, Rejection>) {
        let code = format!("m-1-code{}", self.next + 1);
        let cmd = MemberCommand::RedemptionAsCode {
            reward_id: rid(reward),
            code,
        };
        self.send(at_ms, cmd)
    }

    fn consume(
        &mut self,
        store: &'static str,
        at_ms: i64,
        code: &str,
    ) -> Result<Outcome, Rejection> {
        let cmd = MemberCommand::ConsumeCode { code: code.into() };
        self.send_at(store, at_ms, cmd).1.map(|a| a.outcome)
    }

    fn record(&self, id: &EventId) -> Option<RedemptionRecord> {
        let (at, outcome) = self.records.get(id)?;
        RedemptionRecord::of(&ProcessedEvent {
            franchise_id: FranchiseId::parse("f-1").unwrap(),
            event_id: id.clone(),
            fingerprint: loyalty_domain::Fingerprint([0; 16]),
            member_id: None,
            store_id: StoreId::parse("s-1").unwrap(),
            at: *at,
            outcome: outcome.clone(),
        })
    }

    fn cancel(&mut self, at_ms: i64, redemption: &EventId) -> Result<Applied, Rejection> {
        let cmd = MemberCommand::CancelRedemption {
            redemption_event_id: redemption.clone(),
            redemption: self.record(redemption),
        };
        self.send(at_ms, cmd).1
    }

    /// The scheduler, on time: advances at every due time up to `T0 + until_ms`.
    fn advance_on_time(&mut self, until_ms: i64) {
        let mut runs = 0;
        while let Some(due) = self.state().next_due(&self.program) {
            if due.0 > T0 + until_ms {
                break;
            }
            runs += 1;
            assert!(runs < 1_000, "the due time never moves past {due:?}");
            self.send(due.0 - T0, MemberCommand::Advance).1.unwrap();
        }
        self.send(until_ms, MemberCommand::Advance).1.unwrap();
    }
}

/// The code a redemption's outcome issued.
fn issued(r: &Result<Applied, Rejection>) -> IssuedCode {
    match r {
        Ok(Applied {
            outcome: Outcome::Redemption { code: Some(c), .. },
            ..
        }) => c.clone(),
        other => panic!("a code was issued: {other:?}"),
    }
}

/// The ledger's truths: the balance is the ledger's sum and the lots', the counters add up,
/// and the audit finds nothing.
fn assert_ledger_truth(m: &Member) {
    let s = m.state();
    let sum: i64 = m.ledger.iter().map(|e| e.points).sum();
    assert_eq!(s.points as i64, sum, "balance == sum of the ledger");
    assert_eq!(s.points, s.lots.iter().map(|l| l.points).sum::<Points>());
    assert_eq!(
        s.points_earned as i128
            - s.points_redeemed as i128
            - s.points_expired as i128
            - s.points_reversed as i128,
        s.points as i128
    );
    let findings = loyalty_domain::audit::audit_member(s, &m.ledger, &m.program);
    assert!(findings.is_empty(), "{findings:?}");
}

fn entries_with(m: &Member, detail: &str) -> Vec<LedgerEntry> {
    m.ledger
        .iter()
        .filter(|e| e.detail == detail)
        .cloned()
        .collect()
}

#[test]
fn a_code_takes_the_points_at_issue_and_is_listed_until_used() {
    let mut m = Member::enrolled(program(2, 0));
    m.buy(MINUTE, 20_000);
    let points = m.state().points;
    let (id, r) = m.redeem_code(2 * MINUTE, "free-coffee");
    let code = issued(&r);
    assert_eq!(code.code, "m-1-code3");
    assert_eq!(code.expires_at, Timestamp(T0 + 2 * MINUTE + 2 * DAY));
    assert_eq!(m.state().points, points - 100);
    let e = entries_with(&m, "reward:free-coffee");
    assert_eq!(e.len(), 1, "the redemption's entry is a redemption's");
    assert_eq!(e[0].points, -100);
    let status = MemberStatus::of(m.state(), &m.program);
    assert_eq!(status.redemption_codes.len(), 1);
    assert_eq!(status.redemption_codes[0].code, code.code);
    assert_eq!(status.redemption_codes[0].redemption_event_id, id);
    assert_eq!(
        m.state().next_due(&m.program),
        Some(code.expires_at),
        "due at the code's expiry"
    );

    let used = m.consume("s-2", 3 * MINUTE, &code.code).unwrap();
    assert_eq!(
        used,
        Outcome::CodeConsumed {
            redemption_event_id: id,
            reward_id: rid("free-coffee"),
        }
    );
    assert_eq!(m.state().points, points - 100, "nothing more is taken");
    assert!(MemberStatus::of(m.state(), &m.program)
        .redemption_codes
        .is_empty());
    let before = m.state().clone();
    assert_eq!(
        m.consume("s-1", 4 * MINUTE, &code.code).unwrap_err(),
        Rejection::CodeAlreadyUsed {
            used_at: Timestamp(T0 + 3 * MINUTE),
            store_id: StoreId::parse("s-2").unwrap(),
        }
    );
    assert_eq!(m.state(), &before, "a refusal changes nothing");
    assert_ledger_truth(&m);
}

#[test]
fn without_the_program_setting_a_code_is_refused_and_nothing_moves() {
    let mut m = Member::enrolled(Program::demo());
    m.buy(MINUTE, 20_000);
    let before = m.state().clone();
    let (_, r) = m.redeem_code(2 * MINUTE, "free-coffee");
    assert_eq!(r.unwrap_err(), Rejection::RedemptionCodesNotOffered);
    assert_eq!(m.state(), &before);
}

#[test]
fn an_unused_code_gives_the_points_back_at_its_expiry_on_time() {
    let mut m = Member::enrolled(program(1, 0));
    m.buy(MINUTE, 20_000);
    let points = m.state().points;
    let (id, r) = m.redeem_code(2 * MINUTE, "free-pastry");
    let code = issued(&r);
    m.advance_on_time(2 * MINUTE + DAY - 1);
    assert_eq!(m.state().points, points - 150, "not yet");
    m.advance_on_time(3 * DAY);
    assert_eq!(m.state().points, points, "back at expiry");
    let back = entries_with(&m, &format!("code_expired:{id}"));
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].kind, back[0].points), (LedgerKind::Redeem, 150));
    assert_eq!(back[0].at, code.expires_at, "applied on time");
    assert!(m.state().redemptions.is_empty(), "not counted for a limit");
    assert_eq!(
        m.consume("s-1", 3 * DAY + MINUTE, &code.code).unwrap_err(),
        Rejection::CodeExpired {
            expired_at: code.expires_at
        }
    );
    assert_eq!(
        m.state().next_due(&m.program).map(|t| t > code.expires_at),
        Some(true)
    );
    assert_ledger_truth(&m);
    // A week after its expiry the code is forgotten.
    m.advance_on_time(9 * DAY);
    assert!(m.state().redemption_codes.is_empty());
    assert_eq!(
        m.consume("s-1", 9 * DAY, &code.code).unwrap_err(),
        Rejection::UnknownCode
    );
}

#[test]
fn a_voucher_code_gives_the_voucher_back_at_expiry() {
    let mut m = Member::enrolled(program(1, 0));
    // The 10-stamp card gives a free-coffee voucher.
    for i in 0..10 {
        m.buy(MINUTE * (i + 1), 100);
    }
    assert_eq!(m.state().vouchers.get(&rid("free-coffee")), Some(&1));
    let points = m.state().points;
    let (_, r) = m.redeem_code(HOUR, "free-coffee");
    issued(&r);
    assert!(m.state().vouchers.is_empty());
    assert_eq!(m.state().points, points);
    m.advance_on_time(2 * DAY);
    assert_eq!(m.state().vouchers.get(&rid("free-coffee")), Some(&1));
    assert_ledger_truth(&m);
}

const HOUR: i64 = 60 * MINUTE;

#[test]
fn cancelling_voids_an_unused_code_once_and_a_used_or_expired_one_is_refused() {
    let mut m = Member::enrolled(program(1, 10_080));
    m.buy(MINUTE, 50_000);
    let points = m.state().points;
    // Cancelled while unused: the points come back once, the code is void.
    let (a, r) = m.redeem_code(2 * MINUTE, "free-coffee");
    let code_a = issued(&r);
    let c = m.cancel(3 * MINUTE, &a).unwrap();
    assert!(matches!(
        c.outcome,
        Outcome::RedemptionCancelled {
            points_returned: 100,
            ..
        }
    ));
    assert_eq!(m.state().points, points);
    assert!(matches!(
        m.consume("s-1", 4 * MINUTE, &code_a.code).unwrap_err(),
        Rejection::CodeVoided { .. }
    ));
    assert!(matches!(
        m.cancel(5 * MINUTE, &a).unwrap_err(),
        Rejection::RedemptionAlreadyCancelled { .. }
    ));
    // Used: its redemption cannot be cancelled.
    let (b, r) = m.redeem_code(10 * MINUTE, "free-coffee");
    let code_b = issued(&r);
    m.consume("s-2", 11 * MINUTE, &code_b.code).unwrap();
    let before = m.state().clone();
    assert_eq!(
        m.cancel(12 * MINUTE, &b).unwrap_err(),
        Rejection::CodeAlreadyUsed {
            used_at: Timestamp(T0 + 11 * MINUTE),
            store_id: StoreId::parse("s-2").unwrap(),
        }
    );
    assert_eq!(m.state(), &before);
    // Expired (the points came back then): a cancellation in the window gives nothing again.
    let (c, r) = m.redeem_code(20 * MINUTE, "free-pastry");
    let code_c = issued(&r);
    m.advance_on_time(2 * DAY);
    let balance = m.state().points;
    assert_eq!(
        m.cancel(2 * DAY + MINUTE, &c).unwrap_err(),
        Rejection::CodeExpired {
            expired_at: code_c.expires_at
        }
    );
    assert_eq!(m.state().points, balance);
    assert_eq!(
        m.state().points,
        points - 100,
        "only the used code's points are spent"
    );
    assert_ledger_truth(&m);
}

#[test]
fn a_member_keeps_a_bounded_number_of_codes() {
    let mut m = Member::enrolled(program(30, 0));
    m.buy(MINUTE, 1_000_000);
    for i in 0..MAX_REDEMPTION_CODES as i64 {
        issued(&m.redeem_code(2 * MINUTE + i, "free-coffee").1);
    }
    let before = m.state().clone();
    let (_, r) = m.redeem_code(HOUR, "free-coffee");
    assert_eq!(
        r.unwrap_err(),
        Rejection::LimitExceeded {
            counter: "redemption_codes".into(),
            limit: MAX_REDEMPTION_CODES as u64,
        }
    );
    assert_eq!(m.state(), &before);
    // A plain redemption is still possible.
    let plain = MemberCommand::Redemption {
        reward_id: rid("free-coffee"),
    };
    assert!(m.send(HOUR, plain).1.is_ok());
}

#[test]
fn a_wrong_code_or_a_member_not_enrolled_is_an_unknown_code() {
    let mut m = Member::enrolled(program(1, 0));
    m.buy(MINUTE, 20_000);
    let code = issued(&m.redeem_code(2 * MINUTE, "free-coffee").1);
    let forged = format!("{}x", &code.code[..code.code.len() - 1]);
    assert_eq!(
        m.consume("s-1", 3 * MINUTE, &forged).unwrap_err(),
        Rejection::UnknownCode
    );
    let mut nobody = Member::new(program(1, 0));
    assert_eq!(
        nobody.consume("s-1", 0, &code.code).unwrap_err(),
        Rejection::UnknownCode
    );
    // An erased member's codes are unknown too.
    m.send(4 * MINUTE, MemberCommand::Erase).1.unwrap();
    assert_eq!(
        m.consume("s-1", 5 * MINUTE, &code.code).unwrap_err(),
        Rejection::UnknownCode
    );
}

#[test]
fn states_and_programs_stored_before_codes_read_the_same() {
    let m = Member::enrolled(Program::demo());
    let json = serde_json::to_value(m.state()).unwrap();
    assert!(json.get("redemption_codes").is_none());
    let back: MemberState = serde_json::from_value(json).unwrap();
    assert_eq!(&back, m.state());
    let p = serde_json::to_value(Program::demo()).unwrap();
    assert!(p.get("redemption_codes").is_none());
    let with: Program = serde_json::from_value({
        let mut p = p.clone();
        p["redemption_codes"] = json!({"valid_days": 7});
        p
    })
    .unwrap();
    assert_eq!(
        with.redemption_codes,
        Some(RedemptionCodes { valid_days: 7 })
    );
    let again: Program = serde_json::from_value(serde_json::to_value(&with).unwrap()).unwrap();
    assert_eq!(again, with);
    for bad in [
        json!({"valid_days": 0}),
        json!({"valid_days": 366}),
        json!({"days": 3}),
    ] {
        let mut p = p.clone();
        p["redemption_codes"] = bad.clone();
        let err = serde_json::from_value::<Program>(p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("valid_days") || err.contains("days"),
            "{bad}: {err}"
        );
    }
}

/// One step of a member's life with codes.
#[derive(Clone, Debug)]
enum Op {
    Buy(i64),
    Redeem(usize),
    RedeemCode(usize),
    Consume(usize),
    Cancel(usize),
    Wait(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0i64..30_000).prop_map(Op::Buy),
        1 => (0usize..2).prop_map(Op::Redeem),
        3 => (0usize..2).prop_map(Op::RedeemCode),
        3 => any::<usize>().prop_map(Op::Consume),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => (0i64..3 * DAY).prop_map(Op::Wait),
    ]
}

const REWARDS: [&str; 2] = ["free-coffee", "free-pastry"];

/// Runs `ops` on a member (codes valid `days`, cancellable for `window` minutes), the
/// scheduler on time between steps and the ledger's truths checked after each; returns the
/// member and the codes issued (redemption event id and code).
fn run(days: u32, window: u32, ops: &[(i64, Op)]) -> (Member, Vec<(EventId, String)>) {
    let mut m = Member::enrolled(program(days, window));
    let mut t = 0;
    let mut codes: Vec<(EventId, String)> = Vec::new();
    for (dt, op) in ops {
        t += dt;
        m.advance_on_time(t);
        match op {
            Op::Buy(c) => m.buy(t, *c),
            Op::Redeem(i) => {
                let cmd = MemberCommand::Redemption {
                    reward_id: rid(REWARDS[*i]),
                };
                let _ = m.send(t, cmd);
            }
            Op::RedeemCode(i) => {
                let (id, r) = m.redeem_code(t, REWARDS[*i]);
                if r.is_ok() {
                    codes.push((id, issued(&r).code));
                }
            }
            Op::Consume(n) if !codes.is_empty() => {
                let code = codes[n % codes.len()].1.clone();
                let _ = m.consume("s-2", t, &code);
            }
            Op::Cancel(n) if !codes.is_empty() => {
                let id = codes[n % codes.len()].0.clone();
                let _ = m.cancel(t, &id);
            }
            Op::Consume(_) | Op::Cancel(_) | Op::Wait(_) => {}
        }
        t += match op {
            Op::Wait(w) => *w,
            _ => 0,
        };
        assert_ledger_truth(&m);
    }
    (m, codes)
}

/// One code's history is coherent: consumed at most once; what its redemption took given back
/// at most once (by its cancellation or its expiry), and never after a use; the state's record
/// of it agrees.
fn check_code(m: &Member, id: &EventId, code: &str) -> Result<(), TestCaseError> {
    let consumed = m
        .records
        .values()
        .filter(|(_, o)| {
            matches!(o, Outcome::CodeConsumed { redemption_event_id, .. } if redemption_event_id == id)
        })
        .count();
    let cancelled = entries_with(m, &format!("cancel:{id}")).len();
    let expired = entries_with(m, &format!("code_expired:{id}")).len();
    let back = cancelled + expired;
    prop_assert!(consumed <= 1, "{code} consumed {consumed} times");
    prop_assert!(back <= 1, "{code} given back {back} times");
    prop_assert!(consumed == 0 || back == 0, "{code} consumed and given back");
    let kept = &m.state().redemption_codes;
    if let Some(c) = kept.iter().find(|c| &c.redemption_event_id == id) {
        let used = matches!(c.settled, Some(CodeSettled::Used { .. }));
        prop_assert_eq!(used, consumed == 1);
        let returned = matches!(
            c.settled,
            Some(CodeSettled::Expired | CodeSettled::Voided { .. })
        );
        prop_assert_eq!(returned, back == 1);
    }
    Ok(())
}

/// The member rebuilt from its log of commands, as a replay of the log does (a cancellation
/// handed its redemption's record as it then stands).
fn replay(m: &Member) -> Member {
    let mut again = Member::new(m.program.clone());
    for (at, store, cmd) in m.log.clone() {
        let cmd = match cmd {
            MemberCommand::CancelRedemption {
                redemption_event_id,
                ..
            } => MemberCommand::CancelRedemption {
                redemption: again.record(&redemption_event_id),
                redemption_event_id,
            },
            other => other,
        };
        let _ = again.send_at(store, at, cmd);
    }
    again
}

proptest! {
    /// Whatever the sequence of purchases, redemptions with and without codes, scans of any
    /// code (again, after expiry, after cancellation), cancellations and time passing: a code
    /// is consumed at most once; a consumed code's redemption is never given back, an unused
    /// one's at most once (by its cancellation or its expiry, never both); the balance is the
    /// ledger's sum throughout; and replaying the same commands gives the same outcomes,
    /// codes and state.
    #[test]
    fn codes_are_used_once_and_points_are_conserved(
        days in 1u32..4,
        window in prop::sample::select(vec![0u32, 30, 10_080]),
        ops in prop::collection::vec((0i64..6 * HOUR, op()), 1..60),
    ) {
        let (m, codes) = run(days, window, &ops);
        assert_ledger_truth(&m);
        for (id, code) in &codes {
            check_code(&m, id, code)?;
        }
        prop_assert!(m.state().redemption_codes.len() <= MAX_REDEMPTION_CODES);

        // A replay of the same commands: the same outcomes, codes and state.
        let again = replay(&m);
        prop_assert_eq!(again.state(), m.state());
        prop_assert_eq!(&again.records, &m.records);
        prop_assert_eq!(&again.ledger, &m.ledger);
    }
}
