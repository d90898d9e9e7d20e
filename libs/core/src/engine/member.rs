//! The member actor: the single writer of one member's state while its partition is owned
//! here. Activated on the member's first command with the state read from the store,
//! passivated by its shard when idle.

use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, MessageResult};
use loyalty_domain::{
    apply, Applied, EventContext, EventId, FranchiseId, MemberCommand, MemberId, MemberState,
    Program, Rejection, StoreId, Timestamp,
};

pub struct MemberActor {
    member_id: MemberId,
    state: Option<MemberState>,
}

impl MemberActor {
    pub fn new(member_id: MemberId, state: Option<MemberState>) -> MemberActor {
        MemberActor { member_id, state }
    }
}

impl Actor for MemberActor {
    type Context = Context<Self>;
}

/// Apply one command to the member. The effect is in memory only until the shard has written
/// the batch to the store; if that fails the shard stops this actor, dropping the state.
pub struct Apply {
    pub franchise_id: FranchiseId,
    pub event_id: EventId,
    pub store_id: StoreId,
    pub at: Timestamp,
    pub program: Arc<Program>,
    /// The version of `program`, recorded in the ledger entries.
    pub program_version: u32,
    pub command: MemberCommand,
    /// The parent of the command's `apply` span ([`crate::trace::command_parent`]).
    pub trace: crate::trace::Context,
    /// Whether the reply carries the member's state: the shard asks for it with the member's
    /// last command of a batch only, so a batch copies each member's state once, not once per
    /// command.
    pub want_state: bool,
}

pub struct ApplyReply {
    pub result: Result<Applied, Rejection>,
    /// The member's state after the command, when asked for (`None`: not asked for, or not
    /// enrolled).
    pub state: Option<MemberState>,
}

impl Message for Apply {
    type Result = ApplyReply;
}

impl Handler<Apply> for MemberActor {
    type Result = MessageResult<Apply>;

    fn handle(&mut self, msg: Apply, _ctx: &mut Context<Self>) -> Self::Result {
        let span = crate::trace::apply_span(&msg.trace, kind(&msg.command));
        let _entered = span.enter();
        let reply = self.apply(&msg);
        crate::trace::record_outcome(
            &span,
            match &reply.result {
                Ok(_) => "applied",
                Err(rejection) => rejection.code(),
            },
        );
        MessageResult(reply)
    }
}

/// A command's kind, as in span names (`apply purchase`).
fn kind(command: &MemberCommand) -> &'static str {
    match command {
        MemberCommand::Enrol { .. } => "enrol",
        MemberCommand::Purchase { .. } => "purchase",
        MemberCommand::Refund { .. } => "refund",
        MemberCommand::Redemption { .. } => "redemption",
        MemberCommand::CancelRedemption { .. } => "cancel_redemption",
        MemberCommand::RedemptionAsCode { .. } => "redemption",
        MemberCommand::ConsumeCode { .. } => "consume_code",
        MemberCommand::Erase => "erase",
        MemberCommand::Advance => "advance",
        MemberCommand::SetConsent { .. } => "set_consent",
    }
}

impl MemberActor {
    fn apply(&mut self, msg: &Apply) -> ApplyReply {
        let ctx = EventContext {
            event_id: &msg.event_id,
            store_id: &msg.store_id,
            at: msg.at,
            program: &msg.program,
            program_version: msg.program_version,
        };
        // A member id maps to one franchise; a command naming another is for no known member.
        if self
            .state
            .as_ref()
            .is_some_and(|s| s.franchise_id != msg.franchise_id)
        {
            // A code of another franchise's member is as unknown as a forged one.
            let refusal = match msg.command {
                MemberCommand::ConsumeCode { .. } => Rejection::UnknownCode,
                _ => Rejection::UnknownMember,
            };
            return ApplyReply {
                result: Err(refusal),
                state: None,
            };
        }
        let result = apply(
            &mut self.state,
            &self.member_id,
            &msg.franchise_id,
            &msg.command,
            &ctx,
        );
        ApplyReply {
            result,
            state: if msg.want_state {
                self.state.clone()
            } else {
                None
            },
        }
    }
}

/// Stop the actor (idle, partition revoked, or its in-memory state is no longer trusted).
pub struct Passivate;

impl Message for Passivate {
    type Result = ();
}

impl Handler<Passivate> for MemberActor {
    type Result = ();

    fn handle(&mut self, _msg: Passivate, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

/// The member's current state (for a status to republish after a replay).
pub struct Snapshot;

impl Message for Snapshot {
    type Result = Option<MemberState>;
}

impl Handler<Snapshot> for MemberActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.clone())
    }
}
