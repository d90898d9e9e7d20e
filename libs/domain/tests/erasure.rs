//! The erasure rule (README "Privacy"): an erased member's personal data is gone, its balance,
//! counters and ledger stay, and it takes no more commands; erasing again changes nothing.

use loyalty_domain::audit::audit_member;
use loyalty_domain::{
    apply, Applied, Cents, EventContext, EventId, FranchiseId, LedgerEntry, MemberCommand,
    MemberId, MemberState, MemberStatus, Outcome, Phone, Profile, Program, Rejection, RewardId,
    StoreId, Timestamp,
};
use proptest::prelude::*;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_700_000_000_000;

struct Member {
    program: Program,
    state: Option<MemberState>,
    ledger: Vec<LedgerEntry>,
    next: u32,
}

impl Member {
    fn new() -> Member {
        Member {
            program: Program::demo(),
            state: None,
            ledger: Vec::new(),
            next: 0,
        }
    }

    fn send(&mut self, at_ms: i64, cmd: MemberCommand) -> Result<Applied, Rejection> {
        self.next += 1;
        let id = EventId::parse(&format!("e-{}", self.next)).unwrap();
        let store = StoreId::parse("store-1").unwrap();
        let ctx = EventContext {
            event_id: &id,
            store_id: &store,
            at: Timestamp(T0 + at_ms),
            program: &self.program,
            program_version: 1,
        };
        let r = apply(
            &mut self.state,
            &MemberId::parse("m-1").unwrap(),
            &FranchiseId::parse("f-1").unwrap(),
            &cmd,
            &ctx,
        );
        if let Ok(a) = &r {
            self.ledger.extend(a.entries.iter().cloned());
        }
        r
    }

    fn state(&self) -> &MemberState {
        self.state.as_ref().expect("enrolled")
    }
}

fn enrol() -> MemberCommand {
    MemberCommand::Enrol {
        profile: Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: Some("Ana".into()),
            birthday: Some("1990-04-17".into()),
            consent: Default::default(),
            email: None,
        },
    }
}

fn purchase(cents: i64) -> MemberCommand {
    MemberCommand::Purchase {
        amount: Cents::new(cents).unwrap(),
        currency: Program::demo().currency,
        items: Vec::new(),
    }
}

#[test]
fn erasure_removes_personal_data_and_keeps_the_books() {
    let mut m = Member::new();
    m.send(0, enrol()).unwrap();
    m.send(DAY, purchase(12_000)).unwrap();
    let before = m.state().clone();
    let a = m.send(2 * DAY, MemberCommand::Erase).unwrap();
    assert!(a.changed);
    assert!(a.entries.is_empty(), "an erasure writes no ledger entry");
    assert_eq!(
        a.outcome,
        Outcome::Erased {
            erased_at: Timestamp(T0 + 2 * DAY)
        }
    );
    let s = m.state();
    assert!(s.profile.phone.is_erased());
    assert_eq!(s.profile.phone.as_str(), Phone::ERASED);
    assert_eq!(s.profile.name, None);
    assert_eq!(s.profile.birthday, None);
    assert_eq!(s.erased_at, Some(Timestamp(T0 + 2 * DAY)));
    assert_eq!(s.version, before.version + 1);
    // The books are as they were.
    assert_eq!(
        (s.points, &s.lots, s.points_earned, s.last_seq, &s.tier),
        (
            before.points,
            &before.lots,
            before.points_earned,
            before.last_seq,
            &before.tier
        )
    );
    assert_eq!(
        (s.stamps, &s.vouchers, s.visits, s.spend_cents, s.clock),
        (
            before.stamps,
            &before.vouchers,
            before.visits,
            before.spend_cents,
            before.clock
        )
    );
    assert!(audit_member(s, &m.ledger, &m.program).is_empty());
    let status = MemberStatus::of(s, &m.program);
    assert!(status.erased);
    assert_eq!(status.points, before.points);
}

#[test]
fn an_erased_member_takes_no_more_commands_and_erasing_again_changes_nothing() {
    let mut m = Member::new();
    m.send(0, enrol()).unwrap();
    m.send(DAY, purchase(20_000)).unwrap();
    m.send(2 * DAY, MemberCommand::Erase).unwrap();
    let erased = m.state().clone();
    for cmd in [
        enrol(),
        purchase(500),
        MemberCommand::Redemption {
            reward_id: RewardId::parse("free-coffee").unwrap(),
        },
        MemberCommand::Refund {
            purchase_event_id: EventId::parse("e-2").unwrap(),
            amount: Some(Cents::new(100).unwrap()),
            purchase: None,
            purchase_unseen: false,
        },
    ] {
        assert_eq!(m.send(3 * DAY, cmd), Err(Rejection::MemberErased));
        assert_eq!(m.state(), &erased, "a refusal changes nothing");
    }
    let again = m.send(4 * DAY, MemberCommand::Erase).unwrap();
    assert!(!again.changed);
    assert_eq!(
        again.outcome,
        Outcome::Erased {
            erased_at: Timestamp(T0 + 2 * DAY)
        },
        "the first erasure's time"
    );
    assert_eq!(m.state(), &erased);
}

#[test]
fn erasing_an_unknown_member_is_refused() {
    let mut m = Member::new();
    assert_eq!(
        m.send(0, MemberCommand::Erase),
        Err(Rejection::UnknownMember)
    );
    assert!(m.state.is_none());
}

#[test]
fn states_stored_before_erasure_existed_still_read() {
    let mut m = Member::new();
    m.send(0, enrol()).unwrap();
    let mut v = serde_json::to_value(m.state()).unwrap();
    assert!(
        v.get("erased_at").is_none(),
        "a state never erased is stored as before"
    );
    v.as_object_mut().unwrap().remove("erased_at");
    let back: MemberState = serde_json::from_value(v).unwrap();
    assert_eq!(&back, m.state());
    m.send(DAY, MemberCommand::Erase).unwrap();
    let stored = serde_json::to_vec(m.state()).unwrap();
    let back: MemberState = serde_json::from_slice(&stored).unwrap();
    assert_eq!(&back, m.state(), "an erased state round-trips");
    let text = String::from_utf8(stored).unwrap();
    assert!(!text.contains("+33612345678") && !text.contains("Ana") && !text.contains("1990"));
    // The erased state renders an erased status.
    let status = serde_json::to_value(MemberStatus::of(
        &serde_json::from_value::<MemberState>(serde_json::to_value(&back).unwrap()).unwrap(),
        &m.program,
    ))
    .unwrap();
    assert_eq!(status["erased"], true);
}

#[derive(Clone, Debug)]
enum Op {
    Buy(i64),
    Redeem,
    Erase,
    Enrol,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1i64..50_000).prop_map(Op::Buy),
        1 => Just(Op::Redeem),
        1 => Just(Op::Erase),
        1 => Just(Op::Enrol),
    ]
}

proptest! {
    /// Whatever came before, an erasure keeps the balance and the ledger audit-clean, and from
    /// then on every command but an erasure is refused and changes nothing.
    #[test]
    fn erasure_is_final_and_keeps_the_books(ops in proptest::collection::vec(op(), 0..40)) {
        let mut m = Member::new();
        m.send(0, enrol()).unwrap();
        let mut erased: Option<MemberState> = None;
        for (i, o) in ops.iter().enumerate() {
            let at = (i as i64 + 1) * DAY / 3;
            let cmd = match o {
                Op::Buy(c) => purchase(*c),
                Op::Redeem => MemberCommand::Redemption {
                    reward_id: RewardId::parse("free-coffee").unwrap(),
                },
                Op::Erase => MemberCommand::Erase,
                Op::Enrol => enrol(),
            };
            let before = m.state().clone();
            let r = m.send(at, cmd);
            match (&erased, o) {
                (Some(e), Op::Erase) => {
                    prop_assert!(!r.unwrap().changed);
                    prop_assert_eq!(m.state(), e);
                }
                (Some(e), _) => {
                    prop_assert_eq!(r, Err(Rejection::MemberErased));
                    prop_assert_eq!(m.state(), e);
                }
                (None, Op::Erase) => {
                    prop_assert!(r.unwrap().changed);
                    let s = m.state();
                    prop_assert!(s.profile.phone.is_erased());
                    prop_assert_eq!(s.points, before.points);
                    prop_assert_eq!(s.last_seq, before.last_seq);
                    erased = Some(s.clone());
                }
                (None, _) => {}
            }
            prop_assert!(audit_member(m.state(), &m.ledger, &m.program).is_empty());
        }
    }
}

#[test]
fn debug_output_shows_no_personal_data() {
    let MemberCommand::Enrol { profile } = enrol() else {
        unreachable!()
    };
    let shown = format!("{profile:?}");
    assert!(!shown.contains("612345678") && !shown.contains("Ana") && !shown.contains("1990"));
    assert!(shown.contains("Some(***)"), "{shown}");
}

#[test]
fn the_audit_finds_an_erased_member_that_kept_personal_data() {
    let mut m = Member::new();
    m.send(0, enrol()).unwrap();
    m.send(DAY, MemberCommand::Erase).unwrap();
    assert!(audit_member(m.state(), &m.ledger, &m.program).is_empty());
    let mut forged = m.state().clone();
    forged.profile.name = Some("Ana".into());
    assert_eq!(
        audit_member(&forged, &m.ledger, &m.program),
        vec![loyalty_domain::audit::Finding::NotErased]
    );
}
