//! The wire format of POS commands on the event log, and their fingerprints.
//!
//! The gateway validates a request, resolves the member it targets, stamps the program version
//! current at acceptance, and appends a [`CommandEnvelope`] keyed by the member id, so that one
//! member's commands are ordered on one partition and applied by one actor.

use bytes::Bytes;
use loyalty_domain::{
    Cents, Currency, EmailAddress, EventId, Fingerprint, FranchiseId, MemberId, Profile,
    PurchaseItem, RewardId, StoreId, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::sealing::KeyRing;
use crate::Result;

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
        /// The purchase's line items (validated, [`loyalty_domain::items::parse_items`]).
        /// Absent from envelopes logged before items existed, and left out when empty, so a
        /// purchase without items encodes, and is fingerprinted, as before; with items they
        /// are part of the fingerprint (the same event id with other items is a conflict).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        items: Vec<PurchaseItem>,
    },
    Refund {
        member_id: Option<MemberId>,
        purchase_event_id: EventId,
        /// `None`: a void, all that is left of the purchase. Left out of the record then, so
        /// that a refund with an amount encodes (and fingerprints) as it always did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount_cents: Option<Cents>,
    },
    Redemption {
        member_id: MemberId,
        reward_id: RewardId,
        /// The single-use code the redemption issues instead of the reward at once (README
        /// "Redemption codes"), made by the gateway from the franchise's secret, the member
        /// and the event id ([`crate::identity::redemption_code`]), so a resend carries the
        /// same code. Left out otherwise, so a redemption without a code encodes, and is
        /// fingerprinted, as before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// Use the member's redemption code `code` at the till (README "Redemption codes"): the
    /// member is the one the code names.
    ConsumeCode { member_id: MemberId, code: String },
    /// Cancel the member's redemption `redemption_event_id` within the program's window
    /// (README "Rewards"): what it took is given back, once.
    CancelRedemption {
        member_id: MemberId,
        redemption_event_id: EventId,
    },
    /// Erase the member's personal data (README "Privacy"), sent by the franchise's HQ through
    /// the API with the event id `erase.<member>` and the store id [`HQ_STORE`].
    Erase { member_id: MemberId },
    /// Time only: move the member's clock to the envelope's `occurred_at` (expiring lots,
    /// dropping window days). Built by the engine's scheduler
    /// ([`crate::engine::scheduler`]) for a due member, never by a POS or the gateway, and
    /// applied directly by the member's shard (it does not travel the log), with the event id
    /// [`crate::engine::scheduler::event_id`] and the store id [`HQ_STORE`].
    Advance { member_id: MemberId },
    /// Change the member's consent to offers per channel (absent: as it is), and optionally
    /// the e-mail address ([`loyalty_domain::MemberCommand::SetConsent`]): from the API
    /// (`PUT /v1/members/{member_id}/consent`, the client's event id), the opt-out link and
    /// the card page (the platform's `optout.`/`consent.` event ids, the store id
    /// [`HQ_STORE`]). Fields left out are not encoded, so they are not fingerprinted either.
    SetConsent {
        member_id: MemberId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sms: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email_address: Option<EmailAddress>,
    },
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
            | PosCommand::ConsumeCode { member_id, .. }
            | PosCommand::Erase { member_id }
            | PosCommand::Advance { member_id }
            | PosCommand::SetConsent { member_id, .. } => Some(member_id),
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
            PosCommand::ConsumeCode { .. } => "consume_code",
            PosCommand::Erase { .. } => "erase",
            PosCommand::Advance { .. } => "advance",
            PosCommand::SetConsent { .. } => "set_consent",
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

    /// The record's payload, its personal values (an enrolment's profile, an e-mail address)
    /// sealed by `keys` (README "Personal data at rest").
    pub fn encode(&self, keys: &KeyRing) -> Result<Bytes> {
        keys.to_json(self).map(Bytes::from)
    }

    /// The envelope of a payload, sealed values opened by `keys` (a payload of another ring
    /// or altered is [`Error::Corrupt`], as is one that is not an envelope).
    pub fn decode(bytes: &[u8], keys: &KeyRing) -> Result<CommandEnvelope> {
        keys.from_json("command", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_domain::items::parse_items;
    use loyalty_domain::PurchaseItemSpec;

    /// An envelope of a purchase as logged before line items existed.
    const OLD: &str = r#"{"franchise_id":"f_a","store_id":"s_a1","event_id":"till-1:0001",
        "program_version":3,"occurred_at":1764064680000,"received_at":1764064800000,
        "command":{"type":"purchase","member_id":"m-1","amount_cents":1250,"currency":"EUR"}}"#;

    fn with_items(env: &CommandEnvelope, specs: &[(&str, i64)]) -> CommandEnvelope {
        let specs: Vec<PurchaseItemSpec> = specs
            .iter()
            .map(|(sku, q)| PurchaseItemSpec {
                sku: (*sku).into(),
                category: Some("pastry".into()),
                quantity: *q,
                amount_cents: 100,
            })
            .collect();
        let mut env = env.clone();
        if let PosCommand::Purchase {
            items,
            amount_cents,
            ..
        } = &mut env.command
        {
            *items = parse_items(&specs, *amount_cents).unwrap();
        }
        env
    }

    #[test]
    fn an_envelope_logged_before_items_decodes_and_keeps_its_fingerprint() {
        let env = CommandEnvelope::decode(OLD.as_bytes(), &KeyRing::dev()).unwrap();
        let PosCommand::Purchase { items, .. } = &env.command else {
            panic!("a purchase")
        };
        assert!(items.is_empty());
        // Encoded again without `items`, and fingerprinted over the same body as before.
        let body = br#"{"type":"purchase","member_id":"m-1","amount_cents":1250,"currency":"EUR"}"#;
        assert!(!String::from_utf8_lossy(&env.encode(&KeyRing::dev()).unwrap()).contains("items"));
        let before = Fingerprint::of(&[
            b"f_a",
            b"s_a1",
            b"till-1:0001",
            b"purchase",
            &1_764_064_680_000i64.to_le_bytes(),
            body,
        ]);
        assert_eq!(env.fingerprint(), before);
    }

    #[test]
    fn a_consent_change_encodes_what_it_changes_only_and_masks_the_address() {
        let mut env = CommandEnvelope::decode(OLD.as_bytes(), &KeyRing::dev()).unwrap();
        env.command = PosCommand::SetConsent {
            member_id: MemberId::parse("m-1").unwrap(),
            sms: Some(false),
            email: None,
            email_address: None,
        };
        let text = String::from_utf8(env.encode(&KeyRing::dev()).unwrap().to_vec()).unwrap();
        assert!(
            text.contains(r#""command":{"type":"set_consent","member_id":"m-1","sms":false}"#),
            "{text}"
        );
        assert_eq!(
            CommandEnvelope::decode(text.as_bytes(), &KeyRing::dev()).unwrap(),
            env
        );
        let before = env.fingerprint();
        if let PosCommand::SetConsent { email_address, .. } = &mut env.command {
            *email_address = Some(EmailAddress::parse("ana@example.com").unwrap());
        }
        assert_ne!(
            env.fingerprint(),
            before,
            "the address is part of the fingerprint"
        );
        assert!(
            !format!("{env:?}").contains("ana@"),
            "never in debug output"
        );
        let again = CommandEnvelope::decode(&env.encode(&KeyRing::dev()).unwrap(), &KeyRing::dev())
            .unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn a_redemption_without_a_code_keeps_its_fingerprint_and_a_code_is_part_of_it() {
        const LOGGED: &str = r#"{"franchise_id":"f_a","store_id":"s_a1","event_id":"r-1",
            "program_version":3,"occurred_at":null,"received_at":1764064800000,
            "command":{"type":"redemption","member_id":"m-1","reward_id":"free-coffee"}}"#;
        let env = CommandEnvelope::decode(LOGGED.as_bytes(), &KeyRing::dev()).unwrap();
        let body = br#"{"type":"redemption","member_id":"m-1","reward_id":"free-coffee"}"#;
        // No `occurred_at`: eight zero bytes, as always.
        let before = Fingerprint::of(&[b"f_a", b"s_a1", b"r-1", b"redemption", &[0; 8], body]);
        assert_eq!(env.fingerprint(), before);
        assert!(!String::from_utf8_lossy(&env.encode(&KeyRing::dev()).unwrap()).contains("code"));
        let mut coded = env.clone();
        if let PosCommand::Redemption { code, .. } = &mut coded.command {
            *code = Some("m-1-abc".into());
        }
        assert_ne!(coded.fingerprint(), before);
        let again =
            CommandEnvelope::decode(&coded.encode(&KeyRing::dev()).unwrap(), &KeyRing::dev())
                .unwrap();
        assert_eq!(again.fingerprint(), coded.fingerprint());
    }

    #[test]
    fn an_enrolment_and_an_address_are_logged_sealed_and_fingerprinted_as_before() {
        let keys = KeyRing::parse(&KeyRing::new_key_spec("k1").unwrap()).unwrap();
        let mut env = CommandEnvelope::decode(OLD.as_bytes(), &keys).unwrap();
        let member_id = MemberId::parse("m-1").unwrap();
        env.command = PosCommand::Enrol {
            member_id: member_id.clone(),
            profile: Profile {
                phone: loyalty_domain::Phone::parse("+33612345678").unwrap(),
                name: Some("Ana".into()),
                birthday: Some("1990-04-17".into()),
                consent: loyalty_domain::Consent {
                    sms: true,
                    email: true,
                },
                email: Some("ana@example.com".into()),
            },
        };
        let fp = env.fingerprint();
        let logged = env.encode(&keys).unwrap();
        let text = String::from_utf8(logged.to_vec()).unwrap();
        for clear in ["+33612345678", "Ana", "1990-04-17", "example.com"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert!(text.contains(r#""profile":{"sealed":"v1.k1."#), "{text}");
        let back = CommandEnvelope::decode(&logged, &keys).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.fingerprint(), fp);
        // Another ring cannot read it: the record is corrupt to it, not silently empty.
        assert!(matches!(
            CommandEnvelope::decode(&logged, &KeyRing::dev()),
            Err(crate::Error::Corrupt(_))
        ));
        env.command = PosCommand::SetConsent {
            member_id,
            sms: None,
            email: Some(true),
            email_address: Some(EmailAddress::parse("ana@example.com").unwrap()),
        };
        let fp = env.fingerprint();
        let logged = env.encode(&keys).unwrap();
        assert!(!String::from_utf8_lossy(&logged).contains("example"));
        let back = CommandEnvelope::decode(&logged, &keys).unwrap();
        assert_eq!((back.fingerprint(), back), (fp, env));
    }

    #[test]
    fn items_are_part_of_the_fingerprint() {
        let env = CommandEnvelope::decode(OLD.as_bytes(), &KeyRing::dev()).unwrap();
        let a = with_items(&env, &[("CROI", 1)]);
        let b = with_items(&env, &[("CROI", 2)]);
        let c = with_items(&env, &[("PAIN", 1)]);
        let fps = [
            env.fingerprint(),
            a.fingerprint(),
            b.fingerprint(),
            c.fingerprint(),
        ];
        for i in 0..fps.len() {
            for j in i + 1..fps.len() {
                assert_ne!(fps[i], fps[j], "{i} {j}");
            }
        }
        // Through the log and back: the same command, the same fingerprint.
        let again =
            CommandEnvelope::decode(&a.encode(&KeyRing::dev()).unwrap(), &KeyRing::dev()).unwrap();
        assert_eq!(again, a);
        assert_eq!(again.fingerprint(), a.fingerprint());
    }
}
