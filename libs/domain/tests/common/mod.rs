//! The member driver the domain's tests share (`mod common;` in each file): one member,
//! driven like the engine drives its actor (event ids `e-1`, `e-2`…, store `s-1`, program
//! version 1), its ledger kept in order.

// Each test file uses its own part of it.
#![allow(dead_code)]

use loyalty_domain::{
    apply, Applied, Cents, Currency, EventContext, EventId, FranchiseId, LedgerEntry,
    MemberCommand, MemberId, MemberState, Outcome, Phone, Profile, Program, Rejection, StoreId,
    Timestamp,
};

#[derive(Clone)]
pub struct Member {
    pub program: Program,
    pub state: Option<MemberState>,
    pub ledger: Vec<LedgerEntry>,
    n: u64,
}

impl Member {
    /// Enrolled at `at` with a phone and nothing else.
    pub fn enrolled(program: Program, at: i64) -> Member {
        Member::enrolled_with(program, None, at)
    }

    /// Enrolled at `at`, with `birthday` (`YYYY-MM-DD`) if given.
    pub fn enrolled_with(program: Program, birthday: Option<&str>, at: i64) -> Member {
        let mut m = Member::new(program);
        m.send(enrolment(birthday), at)
            .expect("the enrolment is applied");
        m
    }

    /// Not enrolled yet: its first command should be an [`enrolment`].
    pub fn new(program: Program) -> Member {
        Member {
            program,
            state: None,
            ledger: Vec::new(),
            n: 0,
        }
    }

    /// Applies `cmd` as the next event, at `at`; its entries join the ledger.
    pub fn apply(&mut self, cmd: MemberCommand, at: i64) -> Result<Applied, Rejection> {
        self.n += 1;
        let event_id = self.last_event();
        let store_id = StoreId::parse("s-1").unwrap();
        let ctx = EventContext {
            event_id: &event_id,
            store_id: &store_id,
            at: Timestamp(at),
            program: &self.program,
            program_version: 1,
        };
        let member = MemberId::parse("m-1").unwrap();
        let franchise = FranchiseId::parse("f-1").unwrap();
        let applied = apply(&mut self.state, &member, &franchise, &cmd, &ctx)?;
        self.ledger.extend(applied.entries.iter().cloned());
        Ok(applied)
    }

    /// [`Member::apply`]'s outcome, `None` when refused.
    pub fn send(&mut self, cmd: MemberCommand, at: i64) -> Option<Outcome> {
        self.apply(cmd, at).ok().map(|a| a.outcome)
    }

    /// The id of the latest event sent.
    pub fn last_event(&self) -> EventId {
        EventId::parse(&format!("e-{}", self.n)).unwrap()
    }

    /// A purchase of `cents` in EUR, without line items.
    pub fn purchase(&mut self, cents: u64, at: i64) -> Option<Outcome> {
        self.send(purchase(cents), at)
    }

    /// The scheduler's time-only command, which nothing refuses.
    pub fn advance(&mut self, at: i64) {
        self.send(MemberCommand::Advance, at)
            .expect("advancing is never refused");
    }

    /// The scheduler, on time: advances at every due time up to `until`, then to `until`.
    pub fn advance_on_time(&mut self, until: i64) {
        let mut runs = 0;
        while let Some(due) = self.state().next_due(&self.program) {
            if due.0 > until {
                break;
            }
            runs += 1;
            assert!(runs < 10_000, "the due time never moves past {due:?}");
            self.advance(due.0);
        }
        self.advance(until);
    }

    pub fn state(&self) -> &MemberState {
        self.state.as_ref().expect("enrolled")
    }
}

/// The enrolment of a phone, with `birthday` (`YYYY-MM-DD`) if given and nothing else.
pub fn enrolment(birthday: Option<&str>) -> MemberCommand {
    let profile = Profile {
        phone: Phone::parse("+33612345678").unwrap(),
        name: None,
        birthday: birthday.map(str::to_owned),
        consent: Default::default(),
        email: None,
    };
    MemberCommand::Enrol { profile }
}

/// A purchase of `cents` in EUR, without line items.
pub fn purchase(cents: u64) -> MemberCommand {
    MemberCommand::Purchase {
        amount: Cents::new(cents as i64).unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        items: Vec::new(),
    }
}
