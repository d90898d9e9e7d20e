//! Identities derived from secrets: member ids, QR tokens, API keys.
//!
//! A member id is an HMAC of the phone number under the franchise's secret: the same phone
//! always maps to the same member (so an enrolment routes to its future member's partition and
//! duplicate enrolments meet in one actor, with no global index), and nobody without the
//! secret can compute or reverse it. A QR token carries the member id and a MAC, so a scan
//! resolves without any lookup and a forged or foreign token is refused.

use data_encoding::{BASE32_NOPAD, HEXLOWER};
use hmac::{Hmac, KeyInit, Mac};
use loyalty_domain::{MemberId, Phone, StoreId};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn b32(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// A fresh random secret (hex, 256 bits from the OS generator).
pub fn new_secret() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    HEXLOWER.encode(&Sha256::digest(&bytes))
}

/// The member id of `phone` in the franchise whose secret is `secret`.
pub fn member_id(secret: &str, phone: &Phone) -> MemberId {
    let d = mac(secret, &[b"member:", phone.as_str().as_bytes()]);
    match MemberId::parse(&format!("m{}", b32(&d[..15]))) {
        Ok(id) => id,
        Err(_) => unreachable!("base32 of a digest is a valid id"),
    }
}

/// The QR token printed on a member's card.
pub fn qr_token(secret: &str, member: &MemberId) -> String {
    let d = mac(secret, &[b"qr:", member.as_str().as_bytes()]);
    format!("{}.{}", member, b32(&d[..10]))
}

/// The member a QR token names, if the token was issued with `secret`.
pub fn member_of_qr(secret: &str, token: &str) -> Option<MemberId> {
    let (id, tag) = token.split_once('.')?;
    let member = MemberId::parse(id).ok()?;
    let expected = qr_token(secret, &member);
    let expected_tag = expected.rsplit_once('.')?.1;
    // Constant-time comparison of the tags.
    let same = expected_tag.len() == tag.len()
        && expected_tag
            .bytes()
            .zip(tag.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then_some(member)
}

/// The secret with which the POS of store `store` signs its records on the POS topic
/// (`docs/pos-topic.md`): an HMAC of the store id under the franchise's secret, as 64 hex
/// characters. Nothing is stored for it: the platform derives it again to verify a record, and
/// one store's secret tells nothing about another's (nor about member ids, derived under another
/// label).
pub fn pos_signing_secret(franchise_secret: &str, store: &StoreId) -> String {
    HEXLOWER.encode(&mac(
        franchise_secret,
        &[b"pos-signing:v1:", store.as_str().as_bytes()],
    ))
}

/// A fresh API key, `lk_<role>_<random>`. Only its hash is stored.
pub fn new_api_key(role: &str) -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("lk_{role}_{}", b32(&Sha256::digest(&bytes)[..20]))
}

/// The stored form of an API key.
pub fn hash_api_key(key: &str) -> String {
    HEXLOWER.encode(&Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_stable_per_secret() {
        let p = Phone::parse("+33612345678").unwrap();
        assert_eq!(member_id("s1", &p), member_id("s1", &p));
        assert_ne!(member_id("s1", &p), member_id("s2", &p));
        let q = Phone::parse("+33612345679").unwrap();
        assert_ne!(member_id("s1", &p), member_id("s1", &q));
    }

    #[test]
    fn qr_tokens_verify_only_with_their_secret() {
        let m = member_id("s1", &Phone::parse("+33612345678").unwrap());
        let t = qr_token("s1", &m);
        assert_eq!(member_of_qr("s1", &t), Some(m.clone()));
        assert_eq!(member_of_qr("s2", &t), None);
        let forged = format!("{}.aaaaaaaaaaaaaaaa", m);
        assert_eq!(member_of_qr("s1", &forged), None);
        assert_eq!(member_of_qr("s1", "garbage"), None);
    }

    #[test]
    fn pos_signing_secrets_are_per_store_and_per_franchise() {
        let a = StoreId::parse("s_a").unwrap();
        let b = StoreId::parse("s_b").unwrap();
        let s = pos_signing_secret("f1", &a);
        assert_eq!(s, pos_signing_secret("f1", &a));
        assert_eq!(s.len(), 64);
        assert_ne!(s, pos_signing_secret("f1", &b));
        assert_ne!(s, pos_signing_secret("f2", &a));
    }

    #[test]
    fn api_keys_are_random_and_hashed() {
        let a = new_api_key("store");
        assert!(a.starts_with("lk_store_"));
        assert_ne!(a, new_api_key("store"));
        assert_eq!(hash_api_key(&a).len(), 64);
        assert_ne!(hash_api_key(&a), a);
    }
}
