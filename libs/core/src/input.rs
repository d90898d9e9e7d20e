//! Validation of POS input, shared by every way a command enters the platform: the HTTP
//! gateway and the POS topic ([`crate::pos_topic`]). One set of rules, so that a record on the
//! topic is refused for exactly the reasons a request would be, with the same words.
//!
//! What is checked here needs no member state: field syntax and bounds (the domain types
//! check ids, phone numbers, currencies and amounts when they are parsed), `occurred_at`,
//! enrolment profiles, how a member is named, and the program's currency and catalogue. Rules
//! that depend on a member (enrolled or not, enough points, what is left of a purchase) are the
//! member actor's, and are recorded as the event's outcome.

use loyalty_domain::{
    Cents, Consent, Currency, DomainError, EmailAddress, EventId, MemberId, Phone, Profile,
    Program, PurchaseItem, PurchaseItemSpec, Rejection, RewardId, Timestamp,
};

use crate::identity;

/// How far in the future a POS clock may be.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// How far in the past an event's `occurred_at` may be, in days: a till offline for up to a
/// year can still send its sales. Older times are refused rather than applied: the rules would
/// judge them at the member's latest time (a member's clock never moves back), and the
/// dashboards would count them on a day long reported.
pub const MAX_EVENT_AGE_DAYS: i64 = 365;

const MS_PER_DAY: i64 = 86_400_000;

/// The longest member name kept.
pub const MAX_NAME: usize = 100;

/// Why input is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A field is missing, malformed or out of bounds; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The member named cannot be one of the franchise's (a forged or foreign QR token).
    #[error("unknown member")]
    UnknownMember,
}

impl From<DomainError> for InputError {
    fn from(e: DomainError) -> Self {
        InputError::Invalid(e.to_string())
    }
}

/// Parses `occurred_at` (RFC 3339): at most [`MAX_EVENT_AGE_DAYS`] before `now` (so never before
/// 1970) and at most [`MAX_CLOCK_SKEW_MS`] after it.
pub fn occurred_at(s: &str, now: Timestamp) -> Result<Timestamp, InputError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            InputError::Invalid(
                "occurred_at must be an RFC 3339 time such as 2026-11-25T10:00:00Z".into(),
            )
        })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    if ms < 0 {
        return Err(InputError::Invalid("occurred_at is before 1970".into()));
    }
    if ms < i128::from(now.0) - i128::from(MAX_EVENT_AGE_DAYS) * i128::from(MS_PER_DAY) {
        return Err(InputError::Invalid(format!(
            "occurred_at is more than {MAX_EVENT_AGE_DAYS} days in the past"
        )));
    }
    if ms > i128::from(now.0) + i128::from(MAX_CLOCK_SKEW_MS) {
        return Err(InputError::Invalid("occurred_at is in the future".into()));
    }
    // Within a year of `now`, so it fits.
    i64::try_from(ms)
        .map(Timestamp)
        .map_err(|_| InputError::Invalid("occurred_at is out of range".into()))
}

/// An optional `occurred_at`.
pub fn occurred_at_opt(s: Option<&str>, now: Timestamp) -> Result<Option<Timestamp>, InputError> {
    s.map(|s| occurred_at(s, now)).transpose()
}

/// The profile of an enrolment: an E.164 phone number, an optional name (at most [`MAX_NAME`]
/// characters as sent, no control character; kept trimmed; blank means none) and an optional
/// `YYYY-MM-DD` birthday, and the member's consent to offers per channel.
pub fn profile(
    phone: &str,
    name: Option<String>,
    birthday: Option<String>,
    consent: Consent,
) -> Result<Profile, InputError> {
    let phone = Phone::parse(phone)?;
    if phone.is_erased() {
        // The placeholder of erased members' phones (README "Privacy") is no one's number.
        return Err(InputError::Invalid(format!(
            "{} is reserved and cannot be enrolled",
            Phone::ERASED
        )));
    }
    // Checked as sent (a control character is refused even at an edge, where trimming would
    // hide it), kept trimmed.
    let name = match name {
        Some(n) if n.chars().count() > MAX_NAME || n.chars().any(char::is_control) => {
            return Err(InputError::Invalid(format!(
                "name must be at most {MAX_NAME} printable characters"
            )))
        }
        Some(n) if n.trim().is_empty() => None,
        other => other.map(|n| n.trim().to_owned()),
    };
    if let Some(b) = &birthday {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(b, &fmt).map_err(|_| {
            InputError::Invalid("birthday must be a date such as 1990-04-17".into())
        })?;
    }
    Ok(Profile {
        phone,
        name,
        birthday,
        consent,
        email: None,
    })
}

/// An optional e-mail address ([`EmailAddress`]: plausible, at most 254 characters, its domain
/// lowercased), exactly as sent (a blank or padded one is refused, as the OpenAPI document's
/// pattern says).
pub fn email(s: Option<&str>) -> Result<Option<EmailAddress>, InputError> {
    Ok(s.map(EmailAddress::parse).transpose()?)
}

/// `profile` with the e-mail address of an enrolment ([`email`]) if one is given.
pub fn with_email(mut profile: Profile, email: Option<&str>) -> Result<Profile, InputError> {
    profile.email = self::email(email)?.map(EmailAddress::into_string);
    Ok(profile)
}

/// The member named by at most one of its id, phone number or QR token, in the franchise whose
/// secret is `secret`; `Ok(None)` when none is named (an anonymous sale). Whether the member is
/// enrolled is not checked here.
pub fn member_ref(
    secret: &str,
    member_id: Option<&str>,
    phone: Option<&str>,
    qr: Option<&str>,
) -> Result<Option<MemberId>, InputError> {
    let given = [member_id, phone, qr]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if given > 1 {
        return Err(InputError::Invalid(
            "name the member by one of member_id, phone or qr, not several".into(),
        ));
    }
    if let Some(m) = member_id {
        Ok(Some(MemberId::parse(m)?))
    } else if let Some(p) = phone {
        Ok(Some(identity::member_id(secret, &Phone::parse(p)?)))
    } else if let Some(q) = qr {
        identity::member_of_qr(secret, q)
            .map(Some)
            .ok_or(InputError::UnknownMember)
    } else {
        Ok(None)
    }
}

/// A refund must give something back: 0 cents is refused (it would change nothing and use up
/// its event id).
pub fn refund_amount(amount: Cents) -> Result<(), InputError> {
    if amount.get() == 0 {
        return Err(InputError::Invalid(
            "amount_cents of a refund must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A purchase's optional line items (README "Item bonuses"): at most
/// [`loyalty_domain::items::MAX_ITEMS`], each with a valid sku (and category), a quantity of at
/// least 1 and an amount of 0 or more, their amounts together not above the purchase's
/// `amount`. Absent is none.
pub fn purchase_items(
    items: Option<&[PurchaseItemSpec]>,
    amount: Cents,
) -> Result<Vec<PurchaseItem>, InputError> {
    Ok(loyalty_domain::items::parse_items(
        items.unwrap_or_default(),
        amount,
    )?)
}

/// A purchase must be in the program's currency.
pub fn purchase_currency(program: &Program, currency: &Currency) -> Result<(), Rejection> {
    if currency != &program.currency {
        return Err(Rejection::CurrencyMismatch {
            expected: program.currency.to_string(),
        });
    }
    Ok(())
}

/// A redemption must name a reward of the program's catalogue.
pub fn reward(program: &Program, reward_id: &RewardId) -> Result<(), Rejection> {
    if program.reward(reward_id).is_none() {
        return Err(Rejection::UnknownReward {
            reward_id: reward_id.clone(),
        });
    }
    Ok(())
}

/// Prefixes of the event ids the platform gives itself: an enrolment's (`enrol.<member>`), an
/// erasure's (`erase.<member>`), the scheduler's advances (`sched:<member>:<ms>`), and the
/// consent changes members make on their own pages: an opt-out link's
/// (`optout.<member>.<channel>.<version>`) and the card page's
/// (`consent.<member>.<version>.<digest>`).
/// A client event id starting with one could take the platform's own event's idempotency
/// record (a scheduler's advance judged a replay would skip an expiry), so it is refused.
pub const RESERVED_EVENT_ID_PREFIXES: [&str; 5] =
    ["enrol.", "erase.", "sched:", "optout.", "consent."];

/// A client's event id: any valid [`EventId`] but the platform's own
/// ([`RESERVED_EVENT_ID_PREFIXES`]).
pub fn client_event_id(field: &str, id: &EventId) -> Result<(), InputError> {
    match RESERVED_EVENT_ID_PREFIXES
        .iter()
        .find(|p| id.as_str().starts_with(**p))
    {
        Some(p) => Err(InputError::Invalid(format!(
            "{field} must not start with {p:?}: the platform names its own events so"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_764_064_800_000); // 2025-11-25T10:00:00Z

    #[test]
    fn occurred_at_is_rfc3339_after_1970_and_not_in_the_future() {
        assert_eq!(
            occurred_at("2025-11-25T10:00:00Z", NOW),
            Ok(Timestamp(1_764_064_800_000))
        );
        assert_eq!(
            occurred_at("2025-11-25T11:00:00+01:00", NOW),
            Ok(Timestamp(1_764_064_800_000))
        );
        assert!(occurred_at("2025-11-25T10:04:59Z", NOW).is_ok());
        let future = occurred_at("2025-11-25T10:05:01Z", NOW).unwrap_err();
        assert_eq!(future.to_string(), "occurred_at is in the future");
        let old = occurred_at("1969-12-31T23:59:59Z", NOW).unwrap_err();
        assert_eq!(old.to_string(), "occurred_at is before 1970");
        // The horizon: a year back, to the millisecond.
        for old in ["1970-01-01T00:00:00Z", "2024-11-25T09:59:59.999Z"] {
            assert_eq!(
                occurred_at(old, NOW).unwrap_err().to_string(),
                "occurred_at is more than 365 days in the past",
                "{old}"
            );
        }
        assert!(occurred_at("2024-11-25T10:00:00Z", NOW).is_ok());
        for bad in ["yesterday", "2025-11-25", "2025-11-25 10:00:00", ""] {
            assert!(
                occurred_at(bad, NOW)
                    .unwrap_err()
                    .to_string()
                    .contains("RFC 3339"),
                "{bad}"
            );
        }
        assert_eq!(occurred_at_opt(None, NOW), Ok(None));
    }

    #[test]
    fn profiles_are_checked_and_trimmed() {
        let p = profile(
            "+33612345678",
            Some("  Ana ".into()),
            Some("1990-04-17".into()),
            Consent::default(),
        )
        .unwrap();
        assert_eq!(p.name.as_deref(), Some("Ana"));
        assert_eq!(
            profile("+33612345678", Some("  ".into()), None, Consent::default())
                .unwrap()
                .name,
            None
        );
        assert!(profile("0612345678", None, None, Consent::default())
            .unwrap_err()
            .to_string()
            .contains("phone"));
        assert!(profile(
            "+33612345678",
            Some("x".repeat(101)),
            None,
            Consent::default()
        )
        .is_err());
        assert!(profile(
            "+33612345678",
            Some("a\u{7}b".into()),
            None,
            Consent::default()
        )
        .is_err());
        // As sent: a control character at an edge, or 101 characters of which one is a space,
        // are refused too (the OpenAPI document's pattern and maxLength).
        assert!(profile(
            "+33612345678",
            Some("Ana\n".into()),
            None,
            Consent::default()
        )
        .is_err());
        assert!(profile(
            "+33612345678",
            Some("\tAna".into()),
            None,
            Consent::default()
        )
        .is_err());
        assert!(profile(
            "+33612345678",
            Some(format!("{} ", "x".repeat(100))),
            None,
            Consent::default()
        )
        .is_err());
        assert_eq!(
            profile(
                "+33612345678",
                Some(format!(" {}", "x".repeat(99))),
                None,
                Consent::default()
            )
            .unwrap()
            .name,
            Some("x".repeat(99))
        );
        assert!(profile(
            "+33612345678",
            None,
            Some("17/04/1990".into()),
            Consent::default()
        )
        .unwrap_err()
        .to_string()
        .contains("birthday"));
    }

    #[test]
    fn a_member_is_named_once_by_id_phone_or_qr() {
        let phone = Phone::parse("+33612345678").unwrap();
        let m = identity::member_id("s1", &phone);
        let qr = identity::qr_token("s1", &m);
        assert_eq!(member_ref("s1", None, None, None), Ok(None));
        assert_eq!(
            member_ref("s1", Some(m.as_str()), None, None),
            Ok(Some(m.clone()))
        );
        assert_eq!(
            member_ref("s1", None, Some("+33612345678"), None),
            Ok(Some(m.clone()))
        );
        assert_eq!(member_ref("s1", None, None, Some(&qr)), Ok(Some(m.clone())));
        assert_eq!(
            member_ref("s2", None, None, Some(&qr)),
            Err(InputError::UnknownMember)
        );
        assert!(matches!(
            member_ref("s1", Some(m.as_str()), Some("+33612345678"), None),
            Err(InputError::Invalid(_))
        ));
        assert!(matches!(
            member_ref("s1", Some("not a member id"), None, None),
            Err(InputError::Invalid(_))
        ));
    }

    #[test]
    fn a_refund_gives_something_back() {
        assert!(refund_amount(Cents::new(1).unwrap()).is_ok());
        assert!(refund_amount(Cents::new(0).unwrap())
            .unwrap_err()
            .to_string()
            .contains("amount_cents"));
    }

    #[test]
    fn currency_and_reward_follow_the_program() {
        let p = Program::demo();
        assert!(purchase_currency(&p, &p.currency).is_ok());
        assert!(matches!(
            purchase_currency(&p, &Currency::parse("USD").unwrap()),
            Err(Rejection::CurrencyMismatch { .. })
        ));
        let r = p.rewards[0].id.clone();
        assert!(reward(&p, &r).is_ok());
        assert!(matches!(
            reward(&p, &RewardId::parse("nope").unwrap()),
            Err(Rejection::UnknownReward { .. })
        ));
    }
}
