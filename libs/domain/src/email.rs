//! A member's e-mail address (README "Privacy"): personal data, given at enrolment or with a
//! change of consent, where e-mail offers are sent once the member consents to them.
//!
//! Validation is deliberately plausible rather than RFC 5321 complete, and exactly the pattern
//! of the OpenAPI document's `EmailAddress`: one `@`; a local part of printable ASCII
//! characters without spaces, quotes or the specials `()<>[]\,;:`, no leading, trailing or
//! doubled dot; a domain of at least two dot-separated labels of 1 to 63 letters, digits and
//! inner hyphens, the last one (the top-level domain) 2 to 63 letters or an `xn--` name
//! (internationalised names in their ASCII form); at most [`MAX_EMAIL`] characters in all, as
//! sent (no blank around it). The domain is kept in lowercase (it is case-insensitive); the
//! local part as given (it may not be).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::DomainError;

/// The longest address kept (RFC 5321's path limit less its angle brackets).
pub const MAX_EMAIL: usize = 254;

/// A validated e-mail address, its domain in lowercase. Debug output never shows it. Serialized
/// as a string, or sealed (`{"sealed": …}`) inside a codec's scope ([`crate::privacy`]); both
/// forms are read back, and validated again.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl Serialize for EmailAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::privacy::serialize("email", self.0.as_str(), s)
    }
}

/// Reads an address stored clear (a string) or sealed (`{"sealed": …}`).
struct StoredEmail;

impl<'de> serde::de::Visitor<'de> for StoredEmail {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<String, A::Error> {
        let form: crate::privacy::SealedForm<String> =
            Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        crate::privacy::open("email", &form.sealed)
    }
}

impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let clear = d.deserialize_any(StoredEmail)?;
        EmailAddress::parse(&clear).map_err(D::Error::custom)
    }
}

fn invalid(reason: &str) -> DomainError {
    DomainError::invalid("email", reason)
}

fn local_part_ok(local: &str) -> bool {
    const SPECIALS: &[u8] = b"()<>[]\\,;:\"@";
    !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !SPECIALS.contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

fn label_ok(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A top-level domain: 2 to 63 letters, or `xn--` and 1 to 59 letters and digits.
fn tld_ok(tld: &str) -> bool {
    let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    match tld.strip_prefix("xn--") {
        Some(rest) => (1..=59).contains(&rest.len()) && alnum(rest),
        None => (2..=63).contains(&tld.len()) && tld.bytes().all(|b| b.is_ascii_alphabetic()),
    }
}

impl EmailAddress {
    /// The address `s`, its domain lowercased, if plausible.
    pub fn parse(s: &str) -> Result<EmailAddress, DomainError> {
        if s.len() > MAX_EMAIL {
            return Err(invalid(&format!("at most {MAX_EMAIL} characters")));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(invalid("must be an address such as ana@example.com"));
        };
        if !local_part_ok(local) {
            return Err(invalid("the part before the @ is not a valid mailbox name"));
        }
        let domain = domain.to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        let tld = labels.last().is_some_and(|t| tld_ok(t));
        if labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) || !tld {
            return Err(invalid("the part after the @ is not a valid domain name"));
        }
        Ok(EmailAddress(format!("{local}@{domain}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = DomainError;

    fn try_from(s: String) -> Result<Self, DomainError> {
        EmailAddress::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

/// Personal data: debug output never shows it.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_addresses_are_kept_with_a_lowercase_domain() {
        let e = EmailAddress::parse("Ana.Lopez+offers@Example.CO.uk").unwrap();
        assert_eq!(e.as_str(), "Ana.Lopez+offers@example.co.uk");
        assert!(EmailAddress::parse("a@xn--bcher-kva.example").is_ok());
        assert!(EmailAddress::parse("a@example.xn--p1ai").is_ok());
        assert!(EmailAddress::parse("o'hara/x=y?{z}@mail-1.example.com").is_ok());
        assert_eq!(format!("{e:?}"), "EmailAddress(***)");
    }

    #[test]
    fn implausible_addresses_are_refused() {
        for bad in [
            "",
            "ana",
            "@example.com",
            "ana@",
            "ana@localhost",
            "ana@example..com",
            "ana@-example.com",
            "ana@example.com-",
            "ana@192.168.0.1",
            "a na@example.com",
            ".ana@example.com",
            "ana.@example.com",
            "an..a@example.com",
            "ana@exa_mple.com",
            "\"ana\"@example.com",
            "ana@b@example.com",
            "anä@example.com",
            "ana@exämple.com",
            "ana\n@example.com",
            " ana@example.com",
            "ana@example.com ",
            "ana@example.c",
            "ana@example.c0m",
            "ana@example.xn--",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@{}.com", "a".repeat(100), "b".repeat(63));
        assert!(EmailAddress::parse(&long).is_ok());
        assert!(EmailAddress::parse(&format!("a@{}.com", "b".repeat(64))).is_err());
        let too_long = format!("a@{}.com", vec!["b".repeat(60); 5].join("."));
        assert!(too_long.len() > MAX_EMAIL);
        assert!(EmailAddress::parse(&too_long).is_err());
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<EmailAddress>("\"ana@example.com\"").is_ok());
        assert!(serde_json::from_str::<EmailAddress>("\"ana\"").is_err());
    }
}
