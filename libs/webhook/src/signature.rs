//! The `Loyalty-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
//!
//! The timestamp is signed with the body, so a captured request cannot be replayed outside the
//! receiver's tolerance window, and the body cannot be altered without the secret. A receiver
//! computes the MAC over the raw bytes it received (before any JSON parsing) and compares in
//! constant time: [`verify_signature`] does both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::HEXLOWER_PERMISSIVE;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Error;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Loyalty-Signature";
/// The header carrying the message's stable id (the same on every attempt).
pub const MESSAGE_ID_HEADER: &str = "Loyalty-Message-Id";
/// The tolerance receivers should use unless they have a reason not to: five minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Longest header accepted by [`verify_signature`] (a few signatures during a secret rotation).
const MAX_HEADER_LEN: usize = 1024;

fn mac(secret: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length: this cannot fail.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The header value for `body` signed at `t` (unix seconds).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", HEXLOWER_PERMISSIVE.encode(&tag))
}

/// Unix seconds of `time` (0 before 1970).
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Checks a `Loyalty-Signature` header against the raw `body` a receiver got: well formed, a
/// `v1` MAC that matches under `secret` (any of several, during a secret rotation), and a
/// timestamp within `tolerance` of `now` (either side, for clocks that disagree).
///
/// Errors: [`Error::SignatureMalformed`], [`Error::SignatureExpired`],
/// [`Error::SignatureMismatch`]. The check of the MAC is constant-time.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), Error> {
    let (t, tags) = parse_header(header)?;
    let now = unix_secs(now);
    let age = now.abs_diff(t);
    if age > tolerance.as_secs() {
        return Err(Error::SignatureExpired { age_secs: age });
    }
    let expected = mac(secret, t, body);
    if tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(Error::SignatureMismatch)
    }
}

/// `t=<digits>` once, and one or more `v1=<64 hex digits>`; other schemes (`v0=`, a future
/// `v2=`) are ignored, as long as a `v1` is there.
fn parse_header(header: &str) -> Result<(u64, Vec<Vec<u8>>), Error> {
    let malformed = |why: &str| Error::SignatureMalformed(why.to_owned());
    if header.len() > MAX_HEADER_LEN {
        return Err(malformed("header too long"));
    }
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("expected key=value pairs"))?;
        match k {
            "t" => {
                if t.is_some() {
                    return Err(malformed("t= given twice"));
                }
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed("t= is not a unix timestamp"));
                }
                t = Some(v.parse::<u64>().map_err(|_| malformed("t= out of range"))?);
            }
            "v1" => {
                let tag = HEXLOWER_PERMISSIVE
                    .decode(v.as_bytes())
                    .map_err(|_| malformed("v1= is not hexadecimal"))?;
                if tag.len() != 32 {
                    return Err(malformed("v1= is not 64 hex digits"));
                }
                tags.push(tag);
            }
            _ => {}
        }
    }
    let t = t.ok_or_else(|| malformed("no t="))?;
    if tags.is_empty() {
        return Err(malformed("no v1="));
    }
    Ok((t, tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const TOL: Duration = DEFAULT_TOLERANCE;

    fn at(t: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(t)
    }

    #[test]
    fn a_signed_body_verifies() {
        let h = sign(SECRET, 1_700_000_000, b"{\"a\":1}");
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        verify_signature(SECRET, &h, b"{\"a\":1}", at(1_700_000_010), TOL).unwrap();
        // Upper-case hex and spaces after commas are accepted.
        let tag = h.split_once("v1=").unwrap().1;
        let upper = format!("t=1700000000, v1={}", tag.to_uppercase());
        verify_signature(SECRET, &upper, b"{\"a\":1}", at(1_700_000_010), TOL).unwrap();
    }

    /// The known answer, for receivers written in another language.
    #[test]
    fn the_mac_is_hmac_sha256_of_t_dot_body() {
        let h = sign(b"key", 1, b"body");
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"1.body",hashlib.sha256).hexdigest())'
        assert_eq!(
            h,
            "t=1,v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }

    #[test]
    fn forged_bodies_secrets_and_timestamps_are_refused() {
        let h = sign(SECRET, 1_700_000_000, b"{\"a\":1}");
        let now = at(1_700_000_000);
        assert_eq!(
            verify_signature(SECRET, &h, b"{\"a\":2}", now, TOL),
            Err(Error::SignatureMismatch)
        );
        assert_eq!(
            verify_signature(
                b"another secret of 32 bytes......",
                &h,
                b"{\"a\":1}",
                now,
                TOL
            ),
            Err(Error::SignatureMismatch)
        );
        // The same MAC under another timestamp (moved into the window) does not verify.
        let moved = h.replace("t=1700000000", "t=1700000100");
        assert_eq!(
            verify_signature(SECRET, &moved, b"{\"a\":1}", now, TOL),
            Err(Error::SignatureMismatch)
        );
    }

    #[test]
    fn old_and_future_timestamps_are_expired() {
        let h = sign(SECRET, 1_700_000_000, b"x");
        assert_eq!(
            verify_signature(SECRET, &h, b"x", at(1_700_000_301), TOL),
            Err(Error::SignatureExpired { age_secs: 301 })
        );
        assert_eq!(
            verify_signature(SECRET, &h, b"x", at(1_699_999_000), TOL),
            Err(Error::SignatureExpired { age_secs: 1000 })
        );
        verify_signature(SECRET, &h, b"x", at(1_700_000_300), TOL).unwrap();
    }

    #[test]
    fn any_v1_of_a_rotation_verifies() {
        let good = sign(SECRET, 5, b"x");
        let tag = good.split_once("v1=").unwrap().1;
        let h = format!("t=5,v1={},v0=zz,v1={tag}", "0".repeat(64));
        verify_signature(SECRET, &h, b"x", at(5), TOL).unwrap();
    }

    #[test]
    fn malformed_headers_are_refused() {
        let tag = "a".repeat(64);
        for h in [
            String::new(),
            "garbage".to_owned(),
            format!("v1={tag}"),
            "t=5".to_owned(),
            format!("t=,v1={tag}"),
            format!("t=-5,v1={tag}"),
            format!("t=5,t=6,v1={tag}"),
            format!("t=99999999999999999999999,v1={tag}"),
            "t=5,v1=abc".to_owned(),
            format!("t=5,v1={}", "g".repeat(64)),
            format!("t=5,v1={tag}{}", ",v1=".repeat(300)),
        ] {
            assert!(
                matches!(
                    verify_signature(SECRET, &h, b"x", at(5), TOL),
                    Err(Error::SignatureMalformed(_))
                ),
                "{h:?}"
            );
        }
    }
}
