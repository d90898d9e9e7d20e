//! One-time codes waiting to be confirmed (the self-enrolment page's phone confirmation), held
//! where every gateway can check them: a code sent by one gateway is confirmed through any
//! other behind the same address.
//!
//! # Semantics (every adapter)
//!
//! - An entry is named by a `key` the caller makes unguessable (the page's random challenge
//!   id: no phone number in a key), bound to a `scope` (the franchise and store it was asked
//!   for), and holds a [`CodeHash`] (never the code itself: a keyed MAC of it, so that a copy of
//!   the stored entries does not give the codes away), the caller's opaque `payload`, and how
//!   many tries it allows.
//! - It lives [`PendingCode::ttl`] from [`PendingCodes::put`]; after that it is
//!   [`Verdict::Gone`], whatever happens.
//! - [`PendingCodes::verify`] is atomic: each call uses one try, counted before the code is
//!   compared (concurrent tries cannot exceed the limit), and the right code removes the entry
//!   in the same step, so that only one caller ever sees [`Verdict::Right`] (single use).
//!   Once every try is used the entry stays [`Verdict::Locked`] (even for the right code) until
//!   it expires, so that a new code must be asked for (under the page's rate limits).
//! - A verify under another scope than the entry's is [`Verdict::Gone`] and uses no try (a code
//!   of one store cannot be confirmed at another).
//! - Memory is bounded: past an adapter's capacity, expired entries are dropped and, if that is
//!   not enough, [`PendingCodes::put`] answers [`Put::Full`] rather than evicting a live code.
//! - Errors: [`Error::Invalid`] for a malformed key or scope, or an entry that cannot exist (no
//!   try allowed, no lifetime); [`Error::Conflict`] for a key already pending;
//!   [`Error::Unavailable`] when the backing service cannot be reached (the caller answers
//!   503: a code that cannot be recorded must not be sent).

use std::time::Duration;

use async_trait::async_trait;

use crate::{Error, Result};

/// Longest key or scope accepted.
pub const MAX_NAME_LEN: usize = 128;

/// The keyed hash of a code (HMAC-SHA256 under a secret of the caller, over the key and the
/// code), compared as bytes.
pub type CodeHash = [u8; 32];

/// A code to hold until it is confirmed or expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCode {
    /// What the code was asked for (e.g. `franchise/store`): a verify must name the same.
    pub scope: String,
    /// The keyed hash of the code.
    pub code_hash: CodeHash,
    /// What the caller needs back once the code is confirmed (opaque here).
    pub payload: Vec<u8>,
    /// How long the code is valid.
    pub ttl: Duration,
    /// Tries allowed (at least 1).
    pub max_attempts: u32,
}

/// The answer of [`PendingCodes::put`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Held; a code can be sent.
    Stored,
    /// No room even after dropping the expired entries: send nothing, ask to retry later.
    Full,
}

/// What a try of a code found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The right code: the entry is gone (single use); its payload.
    Right { payload: Vec<u8> },
    /// A wrong code: `left` tries remain (at least 1); the payload, to show the form again.
    Wrong { left: u32, payload: Vec<u8> },
    /// No try left: a new code is needed once this one expires in `retry_after`.
    Locked { retry_after: Duration },
    /// Unknown, expired, already used, or of another scope.
    Gone,
}

/// Where pending one-time codes live: in the process (`loyalty_embedded`, one gateway) or in
/// Redis (`loyalty_redis`, shared by every gateway). See the module documentation for the
/// semantics every adapter keeps (and `loyalty_testkit::pending_codes_contract`, which checks
/// them).
#[async_trait]
pub trait PendingCodes: Send + Sync + 'static {
    /// Holds `code` under `key` for `code.ttl`.
    async fn put(&self, key: &str, code: PendingCode) -> Result<Put>;

    /// One try of the code whose hash is `code_hash`, under `scope`.
    async fn verify(&self, key: &str, scope: &str, code_hash: &CodeHash) -> Result<Verdict>;

    /// Forgets `key` (a code that could not be sent); nothing if it is not pending.
    async fn remove(&self, key: &str) -> Result<()>;

    /// The adapter's name, for logs and traces (`embedded`, `redis`).
    fn name(&self) -> &'static str;
}

/// Checks a key or a scope: 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9_.:/-]` (no spaces, no
/// personal data by construction of the callers, safe in a Redis key).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "pending code {what}: 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9_.:/-]"
        )))
    }
}

/// Checks what [`PendingCodes::put`] is given (key, scope, a try and a lifetime at least).
pub fn check_put(key: &str, code: &PendingCode) -> Result<()> {
    check_name("key", key)?;
    check_name("scope", &code.scope)?;
    if code.max_attempts == 0 {
        return Err(Error::Invalid(
            "a pending code needs at least one try".into(),
        ));
    }
    if code.ttl < Duration::from_millis(1) {
        return Err(Error::Invalid(
            "a pending code needs a lifetime of 1 ms at least".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_plain() {
        assert!(check_name("key", "abc123").is_ok());
        assert!(check_name("scope", "fr_1/st-2").is_ok());
        for bad in ["", "with space", "é", "a\nb", &"x".repeat(129)] {
            assert!(matches!(check_name("key", bad), Err(Error::Invalid(_))));
        }
    }

    #[test]
    fn a_code_needs_a_try_and_a_lifetime() {
        let code = PendingCode {
            scope: "s".into(),
            code_hash: [0; 32],
            payload: vec![],
            ttl: Duration::from_secs(1),
            max_attempts: 1,
        };
        assert!(check_put("k", &code).is_ok());
        let no_try = PendingCode {
            max_attempts: 0,
            ..code.clone()
        };
        assert!(matches!(check_put("k", &no_try), Err(Error::Invalid(_))));
        let no_life = PendingCode {
            ttl: Duration::ZERO,
            ..code
        };
        assert!(matches!(check_put("k", &no_life), Err(Error::Invalid(_))));
    }
}
