//! The wire format of POS commands on the event log, and their fingerprints.
//!
//! The gateway validates a request, resolves the member it targets, stamps the program version
//! current at acceptance, and appends a [`CommandEnvelope`] keyed by the member id, so that one
//! member's commands are ordered on one partition and applied by one actor.

use bytes::Bytes;
use loyalty_domain::{
    Cents, Currency, EventId, Fingerprint, FranchiseId, MemberId, Profile, RewardId, StoreId,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A command of a POS, as carried by the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PosCommand {
    Enrol {
        member_id: MemberId,
        profile: Profile,
    },
    Purchase {
        member_id: Option<MemberId>,
        amount_cents: Cents,
        currency: Currency,
    },
    Refund {
        member_id: Option<MemberId>,
        purchase_event_id: EventId,
        amount_cents: Cents,
    },
    Redemption {
        member_id: MemberId,
        reward_id: RewardId,
    },
    /// Cancel the member's redemption `redemption_event_id` within the program's window
    /// (README "Rewards"): what it took is given back, once.
    CancelRedemption {
        member_id: MemberId,
        redemption_event_id: EventId,
    },
    /// Erase the member's personal data (README "Privacy"), sent by the franchise's HQ through
    /// the API with the event id `erase.<member>` and the store id [`HQ_STORE`].
    Erase { member_id: MemberId },
}

/// The store id of commands headquarters send (an erasure): no store's, since store ids are
/// made `s_…` by provisioning.
pub const HQ_STORE: &str = "hq";

impl PosCommand {
    /// The member this command is for; `None` for an anonymous sale or its refund.
    pub fn member_id(&self) -> Option<&MemberId> {
        match self {
            PosCommand::Enrol { member_id, .. }
            | PosCommand::Redemption { member_id, .. }
            | PosCommand::CancelRedemption { member_id, .. }
            | PosCommand::Erase { member_id } => Some(member_id),
            PosCommand::Purchase { member_id, .. } | PosCommand::Refund { member_id, .. } => {
                member_id.as_ref()
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PosCommand::Enrol { .. } => "enrol",
            PosCommand::Purchase { .. } => "purchase",
            PosCommand::Refund { .. } => "refund",
            PosCommand::Redemption { .. } => "redemption",
            PosCommand::CancelRedemption { .. } => "cancel_redemption",
            PosCommand::Erase { .. } => "erase",
        }
    }
}

/// A command with its envelope: who sent it, its idempotency key, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    pub franchise_id: FranchiseId,
    pub store_id: StoreId,
    pub event_id: EventId,
    /// The program version current when the gateway accepted the command.
    pub program_version: u32,
    /// When it happened according to the POS, if it said.
    pub occurred_at: Option<Timestamp>,
    pub received_at: Timestamp,
    /// Identifies one request of a client (not part of the fingerprint): when several requests
    /// carry the same event, the reply tells which one was applied first.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The gateway instance awaiting the reply, when it runs in another process than the
    /// engine (the reply goes to its channel); `None` in one process.
    #[serde(default)]
    pub reply_to: Option<String>,
    pub command: PosCommand,
}

impl CommandEnvelope {
    /// The time the rules use.
    pub fn at(&self) -> Timestamp {
        self.occurred_at.unwrap_or(self.received_at)
    }

    /// The partition key: the member id, or for an anonymous sale its event id.
    pub fn key(&self) -> Vec<u8> {
        match self.command.member_id() {
            Some(m) => m.as_str().as_bytes().to_vec(),
            None => format!("anon:{}", self.event_id).into_bytes(),
        }
    }

    /// The fingerprint of what the client sent: everything but what the platform added
    /// (arrival time, program version), so that a resend matches the original.
    pub fn fingerprint(&self) -> Fingerprint {
        let occurred = match &self.command {
            // An enrolment is one event per member whenever it is sent (the POS topic carries
            // its time, HTTP does not): a resend at another time is a replay, not a conflict.
            PosCommand::Enrol { .. } => Default::default(),
            _ => self
                .occurred_at
                .map(|t| t.0.to_le_bytes())
                .unwrap_or_default(),
        };
        let body = match &self.command {
            // Enrolment details may be corrected on a resend; its identity is the member.
            PosCommand::Enrol { member_id, .. } => member_id.as_str().as_bytes().to_vec(),
            other => serde_json::to_vec(other).unwrap_or_default(),
        };
        // An enrolment is the same whichever store of the franchise sends it: two tills
        // enrolling one phone at once meet as a replay, not a conflict.
        let store: &[u8] = match &self.command {
            PosCommand::Enrol { .. } => b"",
            _ => self.store_id.as_str().as_bytes(),
        };
        Fingerprint::of(&[
            self.franchise_id.as_str().as_bytes(),
            store,
            self.event_id.as_str().as_bytes(),
            self.command.kind().as_bytes(),
            &occurred,
            &body,
        ])
    }

    pub fn encode(&self) -> Bytes {
        // Serializing plain data structures to JSON cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(bytes: &[u8]) -> Result<CommandEnvelope> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("command: {e}")))
    }
}
