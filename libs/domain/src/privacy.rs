//! Personal data at rest (README "Privacy", "Personal data at rest"): the member's profile
//! ([`crate::Profile`]) and an e-mail address given with a change of consent
//! ([`crate::EmailAddress`]) are written **sealed** wherever they are stored or logged, and in
//! clear wherever they are shown (an export, a segment export, the card page).
//!
//! Which form a value takes is decided where it is encoded, not by its type: the codecs of the
//! command log and of every store encode and decode inside [`sealing`], which puts a
//! [`Sealer`] (the key ring of `loyalty_core::sealing`) in scope for the current thread for
//! the duration of one synchronous call. Inside it, a profile serializes as
//! `{"sealed": "<opaque>"}`, the sealer's authenticated encryption of the value's clear JSON;
//! outside it (an HTTP response, a test), as its clear fields, byte for byte as before this
//! module existed. Decoding takes both forms: clear (data written before sealing existed, or
//! outside a codec) and sealed, which needs a sealer in scope and fails loudly without one.
//!
//! The domain only decides the shape. The cryptography, the keys and their rotation belong to
//! the sealer, which the domain knows as a trait, so that this crate stays pure (no keys, no
//! randomness, no IO).

use std::cell::RefCell;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

/// Seals and opens the clear JSON of personal values. `kind` names what the value is
/// (`profile`, `email`) and must be bound into the sealed form (a profile's seal must not open
/// as an e-mail address). Errors are messages for an operator (which key is missing, that a
/// value does not authenticate), never the data.
pub trait Sealer: Send + Sync {
    fn seal(&self, kind: &'static str, clear: &[u8]) -> Result<String, String>;
    fn open(&self, kind: &'static str, sealed: &str) -> Result<Vec<u8>, String>;
}

thread_local! {
    static SEALER: RefCell<Option<Arc<dyn Sealer>>> = const { RefCell::new(None) };
}

/// Puts the sealer back as it was, even if `f` panics.
struct Restore(Option<Arc<dyn Sealer>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        SEALER.with(|s| *s.borrow_mut() = previous);
    }
}

/// Runs `f` with `sealer` in scope on this thread: personal values serialized by `f` are
/// sealed, sealed ones deserialized by `f` are opened. `f` is synchronous (a scope cannot
/// follow a future across threads); scopes nest, the innermost wins.
pub fn sealing<R>(sealer: &Arc<dyn Sealer>, f: impl FnOnce() -> R) -> R {
    let previous = SEALER.with(|s| s.replace(Some(sealer.clone())));
    let _restore = Restore(previous);
    f()
}

/// The sealer in scope, if any.
fn current() -> Option<Arc<dyn Sealer>> {
    SEALER.with(|s| s.borrow().clone())
}

/// Whether a sealer is in scope on this thread (a codec's test can assert it).
pub fn in_scope() -> bool {
    SEALER.with(|s| s.borrow().is_some())
}

/// The stored form of a sealed value.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SealedForm<S> {
    pub sealed: S,
}

/// Serializes `clear` (a type whose own serialization is the clear form) sealed as `kind`
/// when a sealer is in scope, else as it is.
pub(crate) fn serialize<S: Serializer, T: Serialize + ?Sized>(
    kind: &'static str,
    clear: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    let Some(sealer) = current() else {
        return clear.serialize(s);
    };
    let bytes = serde_json::to_vec(clear).map_err(serde::ser::Error::custom)?;
    let sealed = sealer
        .seal(kind, &bytes)
        .map_err(serde::ser::Error::custom)?;
    SealedForm { sealed: &sealed }.serialize(s)
}

/// Opens the sealed `kind` value `sealed` into its clear type, with the sealer in scope.
pub(crate) fn open<T: DeserializeOwned, E: serde::de::Error>(
    kind: &'static str,
    sealed: &str,
) -> Result<T, E> {
    let sealer = current().ok_or_else(|| {
        E::custom(format!(
            "a sealed {kind} (personal data encrypted at rest) and no key ring to open it"
        ))
    })?;
    let bytes = sealer.open(kind, sealed).map_err(E::custom)?;
    serde_json::from_slice(&bytes).map_err(|e| E::custom(format!("a sealed {kind}: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A reversible stand-in for a sealer, for the domain's own tests of the shapes (the real
    /// one, with its cryptography, is tested in `loyalty_core::sealing`).
    pub(crate) struct Reversed;

    impl Sealer for Reversed {
        fn seal(&self, kind: &'static str, clear: &[u8]) -> Result<String, String> {
            let hex: String = clear.iter().rev().map(|b| format!("{b:02x}")).collect();
            Ok(format!("{kind}:{hex}"))
        }

        fn open(&self, kind: &'static str, sealed: &str) -> Result<Vec<u8>, String> {
            let hex = sealed
                .strip_prefix(kind)
                .and_then(|r| r.strip_prefix(':'))
                .ok_or_else(|| format!("not a sealed {kind}"))?;
            let mut bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
                .collect::<Result<Vec<u8>, String>>()?;
            bytes.reverse();
            Ok(bytes)
        }
    }

    pub(crate) fn reversed() -> Arc<dyn Sealer> {
        Arc::new(Reversed)
    }

    fn profile() -> crate::Profile {
        crate::Profile {
            phone: crate::Phone::parse("+33612345678").unwrap(),
            name: Some("Ana".into()),
            birthday: Some("1990-04-17".into()),
            consent: crate::Consent {
                sms: true,
                email: false,
            },
            email: Some("ana@example.com".into()),
        }
    }

    #[test]
    fn outside_a_scope_a_profile_is_its_clear_fields_as_before_sealing() {
        let json = serde_json::to_string(&profile()).unwrap();
        assert_eq!(
            json,
            r#"{"phone":"+33612345678","name":"Ana","birthday":"1990-04-17","consent":{"sms":true,"email":false},"email":"ana@example.com"}"#
        );
        let bare = crate::Profile {
            consent: crate::Consent::default(),
            email: None,
            ..profile()
        };
        let json = serde_json::to_string(&bare).unwrap();
        assert_eq!(
            json,
            r#"{"phone":"+33612345678","name":"Ana","birthday":"1990-04-17"}"#
        );
        assert_eq!(serde_json::from_str::<crate::Profile>(&json).unwrap(), bare);
    }

    #[test]
    fn inside_a_scope_a_profile_is_sealed_and_opens_back() {
        let s = reversed();
        let json = sealing(&s, || serde_json::to_string(&profile())).unwrap();
        assert!(json.starts_with(r#"{"sealed":"profile:"#), "{json}");
        for clear in [
            "+33612345678",
            "Ana",
            "1990-04-17",
            "ana@example.com",
            "sms",
        ] {
            assert!(!json.contains(clear), "{clear} in {json}");
        }
        let back: crate::Profile = sealing(&s, || serde_json::from_str(&json)).unwrap();
        assert_eq!(back, profile());
        // Clear profiles (stored before sealing) are read inside a scope too.
        let clear = serde_json::to_string(&profile()).unwrap();
        let read: crate::Profile = sealing(&s, || serde_json::from_str(&clear)).unwrap();
        assert_eq!(read, profile());
    }

    #[test]
    fn a_sealed_value_without_a_sealer_or_with_clear_fields_is_refused() {
        let s = reversed();
        let json = sealing(&s, || serde_json::to_string(&profile())).unwrap();
        let e = serde_json::from_str::<crate::Profile>(&json).unwrap_err();
        assert!(e.to_string().contains("no key ring"), "{e}");
        let both = json.replacen('{', r#"{"phone":"+33612345678","#, 1);
        let e = sealing(&s, || serde_json::from_str::<crate::Profile>(&both)).unwrap_err();
        assert!(e.to_string().contains("both sealed and in clear"), "{e}");
        // A profile's seal does not open as an e-mail address (the kind is bound).
        let as_email = json.replace("profile:", "email:");
        assert!(sealing(&s, || serde_json::from_str::<crate::Profile>(&as_email)).is_err());
    }

    #[test]
    fn an_email_address_is_a_string_outside_a_scope_and_sealed_inside() {
        let s = reversed();
        let a = crate::EmailAddress::parse("ana@Example.com").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""ana@example.com""#);
        let json = sealing(&s, || serde_json::to_string(&a)).unwrap();
        assert!(json.starts_with(r#"{"sealed":"email:"#), "{json}");
        assert!(!json.contains("example"));
        let back: crate::EmailAddress = sealing(&s, || serde_json::from_str(&json)).unwrap();
        assert_eq!(back, a);
        assert!(serde_json::from_str::<crate::EmailAddress>(&json).is_err());
        // What is opened is validated again.
        let bad = sealing(&s, || {
            serde_json::to_string(&SealedForm {
                sealed: s.seal("email", br#""not-an-address""#).unwrap(),
            })
        })
        .unwrap();
        assert!(sealing(&s, || serde_json::from_str::<crate::EmailAddress>(&bad)).is_err());
        let e = serde_json::from_str::<crate::EmailAddress>("12").unwrap_err();
        assert!(e.to_string().contains("a string"), "{e}");
    }

    #[test]
    fn scopes_nest_and_end_even_on_a_panic() {
        let s = reversed();
        assert!(!in_scope());
        sealing(&s, || {
            assert!(in_scope());
            sealing(&s, || assert!(in_scope()));
            assert!(in_scope());
        });
        assert!(!in_scope());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sealing(&s, || panic!("inside"))
        }));
        assert!(r.is_err());
        assert!(!in_scope());
    }
}
