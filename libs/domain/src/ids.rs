//! Validated identifiers and quantities. Every value that crosses the edge of the system is
//! parsed into one of these types first, so invalid values never reach the rules.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::DomainError;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier: 1 to `MAX_LEN` characters of `[A-Za-z0-9_.:-]`.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                if is_token(s, $max) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(DomainError::invalid(
                        $what,
                        format!("must be 1 to {} characters of [A-Za-z0-9_.:-]", $max),
                    ))
                }
            }

            /// The longest accepted identifier.
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

string_id!(
    /// A franchise (one brand, one program, many stores).
    FranchiseId,
    "franchise_id",
    64
);
string_id!(
    /// A store of a franchise.
    StoreId,
    "store_id",
    64
);
string_id!(
    /// A member of a franchise's program. Derived from the phone number with the franchise's
    /// secret, so the same phone always maps to the same member without a global index.
    MemberId,
    "member_id",
    64
);
string_id!(
    /// The client's idempotency key of a POS event.
    EventId,
    "event_id",
    128
);
string_id!(
    /// A reward of the program's catalogue.
    RewardId,
    "reward_id",
    64
);
string_id!(
    /// A product's stock-keeping unit, as the POS names it in a purchase's line items.
    Sku,
    "sku",
    64
);
string_id!(
    /// A product category, as the POS names it in a purchase's line items.
    ItemCategory,
    "category",
    64
);

/// A phone number in E.164 form: `+` then 8 to 15 digits, the first not zero.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let digits = s.strip_prefix('+').unwrap_or("");
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(DomainError::invalid(
                "phone",
                "must be an E.164 number such as +33612345678",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What an erased member's profile holds in place of the phone (README "Privacy"): a
    /// number of the ITU's reserved country code 999, never a subscriber's. Enrolment refuses
    /// it, so no member is ever enrolled with it.
    pub const ERASED: &'static str = "+999000000000";

    /// The placeholder of an erased member's phone ([`Phone::ERASED`]).
    pub fn erased() -> Phone {
        Phone(Self::ERASED.to_owned())
    }

    /// Whether this is the placeholder of an erased member's phone.
    pub fn is_erased(&self) -> bool {
        self.0 == Self::ERASED
    }
}

/// Phone numbers are personal data: debug output never shows them.
impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Phone(***)")
    }
}

impl TryFrom<String> for Phone {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Phone::parse(&s)
    }
}

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

/// An ISO 4217 currency code (three upper-case letters).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(DomainError::invalid(
                "currency",
                "must be a three-letter ISO 4217 code such as EUR",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Currency::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of money in minor units (cents). Never negative, bounded so that every
/// computation on it fits in 64 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Cents(u64);

impl Cents {
    /// The largest amount one event may carry: 10^12 minor units (ten billion euros).
    pub const MAX: u64 = 1_000_000_000_000;

    pub fn new(v: i64) -> Result<Self, DomainError> {
        if v < 0 {
            Err(DomainError::invalid("amount_cents", "must not be negative"))
        } else if v as u64 > Self::MAX {
            Err(DomainError::invalid(
                "amount_cents",
                format!("must not exceed {}", Self::MAX),
            ))
        } else {
            Ok(Self(v as u64))
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Cents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        Cents::new(v).map_err(serde::de::Error::custom)
    }
}

/// A number of loyalty points. Balances are never negative.
pub type Points = u64;

/// The largest balance a member may hold, and the largest value of each of a member's points
/// counters (`points_earned`, `points_redeemed`, `points_expired`, `points_reversed`): 10^18,
/// within the int64 of the API. One event earns at most 10^18 points (10^12 cents × 10 000
/// points per unit × a 10 000 % tier multiplier × a 10 000 % schedule multiplier / 10^6, the
/// program validator's bounds; without a schedule 10^16, a hundred of the largest purchases);
/// an event that would take a balance or counter past it is refused (`limit-exceeded`) and
/// changes nothing.
pub const MAX_POINTS_BALANCE: Points = 1_000_000_000_000_000_000;

/// The largest net spend of a member, all time, in minor units: 10^18 (within int64). A
/// purchase that would take it further is refused (`limit-exceeded`) and changes nothing.
pub const MAX_MEMBER_CENTS: u64 = 1_000_000_000_000_000_000;

/// A moment in time: milliseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    const MS_PER_DAY: i64 = 86_400_000;

    /// The UTC day this moment falls on, counted from the epoch.
    pub fn day(self) -> Day {
        Day(self
            .0
            .div_euclid(Self::MS_PER_DAY)
            .clamp(0, u32::MAX as i64) as u32)
    }
}

/// A UTC calendar day, counted from the epoch. Windows and expiry work in whole days.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Day(pub u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_must_be_e164() {
        assert!(Phone::parse("+33612345678").is_ok());
        for bad in [
            "33612345678",
            "+0612345678",
            "+33 612345678",
            "+1234567",
            "",
            "+",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            format!("{:?}", Phone::parse("+33612345678").unwrap()),
            "Phone(***)"
        );
    }

    #[test]
    fn ids_reject_odd_characters() {
        assert!(EventId::parse("pos-1:2024.01_x").is_ok());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse("a b").is_err());
        assert!(EventId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn cents_are_bounded_and_non_negative() {
        assert!(Cents::new(-1).is_err());
        assert!(Cents::new(Cents::MAX as i64 + 1).is_err());
        assert_eq!(Cents::new(0).unwrap().get(), 0);
        assert!(serde_json::from_str::<Cents>("-5").is_err());
    }

    #[test]
    fn days_floor_toward_the_past() {
        assert_eq!(Timestamp(0).day(), Day(0));
        assert_eq!(Timestamp(86_399_999).day(), Day(0));
        assert_eq!(Timestamp(86_400_000).day(), Day(1));
    }
}
