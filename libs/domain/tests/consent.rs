//! Consent after enrolment (README "Privacy"): `SetConsent` changes the profile's consent (and
//! the address, when given) and the version, nothing else; it is refused for an erased member,
//! and e-mail consent needs an address. The e-mail address is personal data: never in debug
//! output, gone with the erasure.

mod common;

use common::{enrolment, Member};
use loyalty_domain::audit::audit_member;
use loyalty_domain::{
    Consent, EmailAddress, MemberCommand, MemberState, Outcome, Profile, Program, Rejection,
};

const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 86_400_000;

fn set(sms: Option<bool>, email: Option<bool>) -> MemberCommand {
    MemberCommand::SetConsent {
        sms,
        email,
        email_address: None,
    }
}

fn with_address(email: Option<bool>, address: &str) -> MemberCommand {
    MemberCommand::SetConsent {
        sms: None,
        email,
        email_address: Some(EmailAddress::parse(address).unwrap()),
    }
}

/// A member with points, a visit and a window, so that "nothing else moved" means something.
fn active_member() -> Member {
    let mut m = Member::enrolled(Program::demo(), T0);
    m.purchase(2_500, T0 + DAY).expect("a purchase");
    m
}

/// `before` and `after` are the same but for the profile and the version.
fn assert_only_profile_and_version_moved(before: &MemberState, after: &MemberState) {
    let mut b = before.clone();
    b.profile = after.profile.clone();
    b.version = after.version;
    assert_eq!(&b, after, "only the profile and the version change");
}

#[test]
fn set_consent_changes_only_consent_and_version() {
    let mut m = active_member();
    let before = m.state().clone();
    let ledger = m.ledger.len();
    // Much later: the clock must not move (no expiry, no window day dropped).
    let a = m.apply(set(Some(true), None), T0 + 400 * DAY).unwrap();
    assert!(a.changed);
    assert!(a.entries.is_empty(), "no ledger entry");
    assert_eq!(m.ledger.len(), ledger);
    assert_eq!(
        a.outcome,
        Outcome::ConsentChanged {
            consent: Consent {
                sms: true,
                email: false
            }
        }
    );
    let after = m.state().clone();
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.clock, before.clock, "the clock does not move");
    assert_eq!(
        after.profile.consent,
        Consent {
            sms: true,
            email: false
        }
    );
    assert_only_profile_and_version_moved(&before, &after);
    assert!(audit_member(&after, &m.ledger, &m.program).is_empty());

    // `None` leaves a channel as it is; withdrawing is a change too.
    let a = m.apply(set(None, Some(false)), T0 + 400 * DAY).unwrap();
    assert!(!a.changed, "already so: no change, no version");
    assert_eq!(m.state().version, after.version);
    let a = m.apply(set(Some(false), None), T0 + 401 * DAY).unwrap();
    assert!(a.changed);
    assert_eq!(m.state().profile.consent, Consent::default());
    assert_eq!(m.state().version, after.version + 1);
}

#[test]
fn email_consent_needs_an_address() {
    let mut m = active_member();
    let before = m.state().clone();
    assert_eq!(
        m.apply(set(Some(true), Some(true)), T0 + 2 * DAY)
            .unwrap_err(),
        Rejection::EmailRequired
    );
    assert_eq!(
        m.state(),
        &before,
        "a refusal changes nothing, sms included"
    );
    assert_eq!(Rejection::EmailRequired.code(), "email-required");

    // With the address: both change, the domain kept lowercase.
    let a = m
        .apply(with_address(Some(true), "Ana@Example.COM"), T0 + 2 * DAY)
        .unwrap();
    assert!(a.changed);
    let after = m.state().clone();
    assert_eq!(after.profile.email.as_deref(), Some("Ana@example.com"));
    assert!(after.profile.consent.email);
    assert_only_profile_and_version_moved(&before, &after);
    // Then consent alone, the address kept; and withdrawing needs none.
    m.apply(set(None, Some(false)), T0 + 3 * DAY).unwrap();
    m.apply(set(None, Some(true)), T0 + 3 * DAY).unwrap();
    assert!(m.state().profile.consent.email);
    assert_eq!(m.state().profile.email.as_deref(), Some("Ana@example.com"));
}

#[test]
fn an_erased_member_is_refused_and_its_address_is_gone() {
    let mut m = Member::new(Program::demo());
    let MemberCommand::Enrol { profile } = enrolment(None) else {
        unreachable!()
    };
    let profile = Profile {
        consent: Consent {
            sms: true,
            email: true,
        },
        email: Some("ana@example.com".into()),
        ..profile
    };
    m.send(MemberCommand::Enrol { profile }, T0).unwrap();
    assert!(
        !format!("{:?}", m.state()).contains("ana@"),
        "the address is never in debug output"
    );
    m.send(MemberCommand::Erase, T0 + DAY).unwrap();
    let erased = m.state().clone();
    assert_eq!(erased.profile.email, None);
    assert_eq!(erased.profile.consent, Consent::default());
    assert!(audit_member(&erased, &m.ledger, &m.program).is_empty());
    for cmd in [
        set(Some(true), None),
        set(Some(false), Some(false)),
        with_address(Some(true), "ana@example.com"),
    ] {
        assert_eq!(
            m.apply(cmd, T0 + 2 * DAY).unwrap_err(),
            Rejection::MemberErased
        );
    }
    assert_eq!(m.state(), &erased);
}

#[test]
fn an_erased_profile_holding_an_address_is_an_audit_finding() {
    let mut m = Member::enrolled(Program::demo(), T0);
    m.send(MemberCommand::Erase, T0 + DAY).unwrap();
    let mut s = m.state().clone();
    s.profile.email = Some("ana@example.com".into());
    assert!(!audit_member(&s, &m.ledger, &m.program).is_empty());
}

#[test]
fn an_unknown_member_is_refused() {
    let mut m = Member::new(Program::demo());
    assert_eq!(
        m.apply(set(Some(true), None), T0).unwrap_err(),
        Rejection::UnknownMember
    );
}

#[test]
fn a_profile_without_email_serializes_as_before() {
    let m = Member::enrolled(Program::demo(), T0);
    let json = serde_json::to_string(&m.state().profile).unwrap();
    assert!(!json.contains("email"), "{json}");
    let back: Profile = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m.state().profile);
}
