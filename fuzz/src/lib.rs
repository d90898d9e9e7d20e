//! What the fuzz targets check, for any input bytes (issue 14, "Bad input, systematically").
//! Each function is one libFuzzer target (`fuzz_targets/`, `cargo fuzz run <name> --features
//! libfuzzer` on a nightly toolchain) and is also run over the seed corpus and every crash
//! found so far (`corpus/<name>/`, `artifacts/<name>/`) by this crate's tests on stable, so a
//! fixed crash stays fixed in `./scripts/test.sh`.
//!
//! Every target calls the production code itself (no copy of its logic) and panics when an
//! invariant breaks; a panic is what libFuzzer reports.

use loyalty_core::command::CommandEnvelope;
use loyalty_core::input;
use loyalty_core::sealing::KeyRing;
use loyalty_domain::audit::audit_member;
use loyalty_domain::{
    apply, Cents, EventContext, EventId, FranchiseId, LedgerEntry, MemberCommand, MemberId,
    MemberState, Phone, Profile, Program, PurchaseItem, PurchaseItemSpec, StoreId, Timestamp,
};
use loyalty_gateway::json::parse;
use loyalty_gateway::routes::{admin, consent, events, members};
use loyalty_gateway::ApiError;

/// The command envelope, as an engine reads it from the log (a record anyone with produce
/// rights on the topic could have written): decoding never panics, and what decodes encodes
/// back to itself, with the same fingerprint (the idempotency key of the event), its personal
/// values sealed and opened by the key ring.
pub fn command_envelope(data: &[u8]) {
    let keys = KeyRing::dev();
    let Ok(env) = CommandEnvelope::decode(data, &keys) else {
        return;
    };
    let encoded = env.encode(&keys).expect("a decoded envelope encodes");
    let again = CommandEnvelope::decode(&encoded, &keys).expect("an encoded envelope decodes");
    assert_eq!(again, env, "the envelope changed through encode/decode");
    assert_eq!(again.fingerprint(), env.fingerprint());
    assert!(!env.command.kind().is_empty());
}

/// The JSON bodies of the HTTP API, read by the one extractor every handler uses: never a
/// panic; a body that is not JSON at all is 400 `malformed-json`, anything else refused is 422;
/// what is accepted goes through the input checks the handler runs next, without a panic.
pub fn http_bodies(data: &[u8]) {
    // Whether the body is JSON, by another reader than the extractor's (a `Value`; `None` where
    // it cannot tell: past its nesting limit, or a number beyond an f64, which JSON allows).
    let syntax_ok = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(_) => Some(true),
        Err(e) if e.to_string().contains("recursion limit") => None,
        Err(e) if e.to_string().contains("number out of range") => None,
        Err(_) => Some(false),
    };
    let check = |r: Result<(), ApiError>| match r {
        Ok(()) => assert_ne!(
            syntax_ok,
            Some(false),
            "a body that is not JSON was accepted"
        ),
        Err(ApiError::MalformedJson(_)) => {
            assert_ne!(syntax_ok, Some(true), "valid JSON called malformed")
        }
        Err(ApiError::Invalid(_)) => {
            assert_ne!(syntax_ok, Some(false), "a syntax error answered 422")
        }
        Err(other) => panic!("a body answered {other:?}"),
    };
    let now = Timestamp(1_764_547_200_000);
    check(parse::<events::PurchaseBody>(data).map(|b| {
        let _ = input::occurred_at_opt(b.occurred_at.as_deref(), now);
        let _ = input::member_ref(
            "fuzz-secret",
            b.member_id.as_deref(),
            b.phone.as_deref(),
            b.qr.as_deref(),
        );
        let _ = input::purchase_items(b.items.as_deref(), b.amount_cents);
    }));
    check(parse::<events::RefundBody>(data).map(|b| {
        if let Some(a) = b.amount_cents {
            let _ = input::refund_amount(a);
        }
        let _ = input::member_ref(
            "fuzz-secret",
            b.member_id.as_deref(),
            b.phone.as_deref(),
            b.qr.as_deref(),
        );
    }));
    check(parse::<events::RedemptionBody>(data).map(|_| ()));
    check(parse::<members::EnrolBody>(data).map(|b| {
        let _ = members::validate_profile(b);
    }));
    check(parse::<consent::ConsentBody>(data).map(|b| {
        let _ = input::email(b.email_address.as_deref());
    }));
    check(parse::<admin::CreateFranchise>(data).map(|_| ()));
    check(parse::<admin::CreateStore>(data).map(|_| ()));
    check(parse::<admin::ReplaceProgram>(data).map(|_| ()));
}

/// The program validator: any JSON either is refused or is a program that round-trips through
/// its serialization, and with which a member's life (enrolment, the largest purchases,
/// redemptions of every reward, a refund) never panics and leaves a ledger the audit finds
/// nothing wrong with (balance, lots and counters all agree, checked arithmetic throughout).
pub fn program(data: &[u8]) {
    let Ok(program) = serde_json::from_slice::<Program>(data) else {
        return;
    };
    let json = serde_json::to_vec(&program).expect("a program serializes");
    let again: Program = serde_json::from_slice(&json).expect("a serialized program is valid");
    assert_eq!(
        again, program,
        "the program changed through its serialization"
    );
    live_a_member(&program, data);
}

/// Lines of a purchase of `amount` that the program's item bonuses match: for each bonus, its
/// first sku or category, a quantity chosen by `b` (up to the largest), the amount split
/// between the lines (so they add up to at most the purchase's).
fn bonus_lines(program: &Program, b: u8, amount: i64) -> Vec<PurchaseItem> {
    let n = program.item_bonuses.len() as i64;
    let quantity = if b.is_multiple_of(2) {
        10_000
    } else {
        i64::from(b) + 1
    };
    let specs: Vec<PurchaseItemSpec> = program
        .item_bonuses
        .iter()
        .map(|bonus| PurchaseItemSpec {
            sku: bonus
                .skus
                .as_ref()
                .and_then(|s| s.first())
                .map_or("none".into(), |s| s.to_string()),
            category: bonus
                .categories
                .as_ref()
                .and_then(|c| c.first())
                .map(|c| c.to_string()),
            quantity,
            amount_cents: amount / n.max(1),
        })
        .collect();
    let amount = Cents::new(amount).expect("amount");
    loyalty_domain::items::parse_items(&specs, amount).expect("lines within the purchase")
}

/// A member of `program` through a few events chosen by `seed`'s bytes.
fn live_a_member(program: &Program, seed: &[u8]) {
    let member = MemberId::parse("m-fuzz").expect("member id");
    let franchise = FranchiseId::parse("f-fuzz").expect("franchise id");
    let store = StoreId::parse("s-fuzz").expect("store id");
    let mut state: Option<MemberState> = None;
    let mut ledger: Vec<LedgerEntry> = Vec::new();
    let mut last_purchase = None;
    let profile = Profile {
        phone: Phone::parse("+33612345678").expect("phone"),
        name: None,
        birthday: None,
        consent: Default::default(),
        email: None,
    };
    let mut commands = vec![MemberCommand::Enrol { profile }];
    for b in seed.iter().take(24) {
        let amount = match b % 4 {
            0 => Cents::MAX as i64,
            1 => 1,
            _ => i64::from(*b) * 1_000,
        };
        commands.push(match b % 5 {
            0..=2 => MemberCommand::Purchase {
                amount: Cents::new(amount).expect("amount"),
                currency: program.currency.clone(),
                items: bonus_lines(program, *b, amount),
            },
            _ => match program
                .rewards
                .get(usize::from(*b) % program.rewards.len().max(1))
            {
                Some(r) => MemberCommand::Redemption {
                    reward_id: r.id.clone(),
                },
                None => continue,
            },
        });
    }
    for (i, cmd) in commands.iter().enumerate() {
        let event = EventId::parse(&format!("e-{i}")).expect("event id");
        let ctx = EventContext {
            event_id: &event,
            store_id: &store,
            at: Timestamp(1_700_000_000_000 + i as i64 * 86_400_000),
            program,
            program_version: 1,
        };
        if let Ok(applied) = apply(&mut state, &member, &franchise, cmd, &ctx) {
            if let loyalty_domain::Outcome::Purchase(p) = &applied.outcome {
                last_purchase = Some((event.clone(), p.clone()));
            }
            ledger.extend(applied.entries);
        }
    }
    if let Some((purchase_event_id, record)) = last_purchase {
        let event = EventId::parse("e-refund").expect("event id");
        let ctx = EventContext {
            event_id: &event,
            store_id: &store,
            at: Timestamp(1_700_000_000_000 + 40 * 86_400_000),
            program,
            program_version: 1,
        };
        let refund = MemberCommand::Refund {
            purchase_event_id,
            amount: Some(Cents::new(1).expect("amount")),
            purchase: Some(record),
            purchase_unseen: false,
        };
        if let Ok(applied) = apply(&mut state, &member, &franchise, &refund, &ctx) {
            ledger.extend(applied.entries);
        }
    }
    if let Some(state) = &state {
        let findings = audit_member(state, &ledger, program);
        assert!(findings.is_empty(), "the audit found {findings:?}");
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every file of `corpus/<target>/` and `artifacts/<target>/` (crashes found and fixed).
    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_file() {
                    let bytes = std::fs::read(&p).expect("corpus file");
                    out.push((p, bytes));
                }
            }
        }
        out.sort();
        out
    }

    fn replay(target: &str, check: fn(&[u8])) {
        let inputs = inputs(target);
        assert!(
            inputs.len() >= 5,
            "the seed corpus of {target} has {} inputs",
            inputs.len()
        );
        for (path, bytes) in inputs {
            if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                panic!("{} breaks {target}", path.display());
            }
        }
    }

    #[test]
    fn command_envelope_corpus() {
        replay("command_envelope", super::command_envelope);
    }

    #[test]
    fn http_bodies_corpus() {
        replay("http_bodies", super::http_bodies);
    }

    #[test]
    fn program_corpus() {
        replay("program", super::program);
    }
}
