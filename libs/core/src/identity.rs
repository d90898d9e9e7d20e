//! Identities derived from secrets: member ids, QR tokens, API keys.
//!
//! A member id is an HMAC of the phone number under the franchise's secret: the same phone
//! always maps to the same member (so an enrolment routes to its future member's partition and
//! duplicate enrolments meet in one actor, with no global index), and nobody without the
//! secret can compute or reverse it. A QR token carries the member id and a MAC, so a scan
//! resolves without any lookup and a forged or foreign token is refused.

use data_encoding::{BASE32_NOPAD, HEXLOWER};
use hmac::{Hmac, KeyInit, Mac};
use loyalty_domain::{EventId, FranchiseId, MemberId, Phone, StoreId};
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

/// The keyed part of a redemption code: 12 base32 characters, 60 bits.
const CODE_TAG_LEN: usize = 12;

/// The single-use code issued by `member`'s redemption `event_id` (README "Redemption codes"):
/// `<member id>-<tag>`, the tag 60 bits of an HMAC of the member and the event id under the
/// franchise's secret. The member id in it resolves the code to its member's partition at
/// the till with no index; the tag cannot be made without the secret, and the same event
/// always gives the same code (a resend of the redemption, a replay of the log).
pub fn redemption_code(franchise_secret: &str, member: &MemberId, event_id: &EventId) -> String {
    let d = mac(
        franchise_secret,
        &[
            b"redemption-code:v1:",
            member.as_str().as_bytes(),
            b":",
            event_id.as_str().as_bytes(),
        ],
    );
    let tag = b32(&d[..10]);
    format!("{member}-{}", &tag[..CODE_TAG_LEN])
}

/// A code as a till sends it, made canonical (surrounding space trimmed, lower case), with
/// the member it names; `None` if it does not have a code's shape. Whether it is a code the
/// member holds is for the member's actor to say.
pub fn parse_redemption_code(code: &str) -> Option<(MemberId, String)> {
    let code = code.trim().to_ascii_lowercase();
    let (member, tag) = code.rsplit_once('-')?;
    let tag_ok = tag.len() == CODE_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    let member = MemberId::parse(member).ok().filter(|_| tag_ok)?;
    Some((member, code))
}

/// Whether `a` and `b` are the same, in time that does not depend on where they differ.
fn same_tag(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token of store `store`'s enrolment URL (the store's printed QR code): a MAC of the store
/// id under the franchise's secret, 16 base32 characters. The same every time, so a printed
/// poster never goes stale; nobody without the secret can make one for another store.
pub fn store_enrolment_token(franchise_secret: &str, store: &StoreId) -> String {
    b32(&mac(
        franchise_secret,
        &[b"enrol-store:v1:", store.as_str().as_bytes()],
    )[..10])
}

/// Whether `token` is the enrolment token of `store` under `franchise_secret`.
pub fn verify_store_enrolment_token(franchise_secret: &str, store: &StoreId, token: &str) -> bool {
    same_tag(&store_enrolment_token(franchise_secret, store), token)
}

/// The keyed hash under which a pending one-time code is held
/// ([`crate::pending_codes::PendingCode::code_hash`]): the MAC of the challenge id and the
/// code under the franchise's secret. Six digits are a million candidates, so a plain hash
/// of a stolen entry would give the code away; without the secret it gives nothing.
pub fn one_time_code_hash(franchise_secret: &str, challenge: &str, code: &str) -> [u8; 32] {
    mac(
        franchise_secret,
        &[
            b"one-time-code:",
            challenge.as_bytes(),
            b":",
            code.as_bytes(),
        ],
    )
}

/// The anti-forgery token of the self-enrolment form of `store` issued at `issued` (Unix
/// seconds): `<issued>.<mac>`, the MAC of both under the franchise's secret. A form post must
/// carry one (a hidden field) that this franchise made for this store, recently
/// ([`verify_enrolment_form_token`]).
pub fn enrolment_form_token(franchise_secret: &str, store: &StoreId, issued: i64) -> String {
    let tag = b32(&mac(
        franchise_secret,
        &[
            b"enrol-form:v1:",
            store.as_str().as_bytes(),
            b":",
            issued.to_string().as_bytes(),
        ],
    )[..16]);
    format!("{issued}.{tag}")
}

/// Whether `token` is a form token of `store` issued no more than `max_age_secs` before `now`
/// (and not in the future).
pub fn verify_enrolment_form_token(
    franchise_secret: &str,
    store: &StoreId,
    token: &str,
    now: i64,
    max_age_secs: i64,
) -> bool {
    let Some(issued) = token
        .split_once('.')
        .and_then(|(i, _)| i.parse::<i64>().ok())
    else {
        return false;
    };
    issued <= now + 60
        && now - issued <= max_age_secs
        && same_tag(
            &enrolment_form_token(franchise_secret, store, issued),
            token,
        )
}

/// The signature of a link to `member`'s card page valid until `expires` (Unix seconds): a MAC
/// of both under the franchise's secret, 26 base32 characters. The link is a bearer
/// credential: whoever holds it sees the card until it expires.
pub fn card_link_signature(franchise_secret: &str, member: &MemberId, expires: i64) -> String {
    b32(&mac(
        franchise_secret,
        &[
            b"card-link:v1:",
            member.as_str().as_bytes(),
            b":",
            expires.to_string().as_bytes(),
        ],
    )[..16])
}

/// Whether `signature` signs the card link of `member` until `expires` (whatever the time now:
/// the caller checks the expiry).
pub fn verify_card_link(
    franchise_secret: &str,
    member: &MemberId,
    expires: i64,
    signature: &str,
) -> bool {
    same_tag(
        &card_link_signature(franchise_secret, member, expires),
        signature,
    )
}

/// The channels a member can opt out of with a link ([`opt_out_signature`]).
pub const OPT_OUT_CHANNELS: [&str; 2] = ["sms", "email"];

/// The signature of the opt-out link of `member` for `channel` (`sms`, `email`): a MAC of both
/// under the franchise's secret and a label of its own (so it is neither a card link nor a QR
/// token), 26 base32 characters. It has no expiry: every message carries its link, and the link
/// of a message read years later must still work (README "Privacy"). It only ever withdraws
/// consent, so whoever holds it can do no more than stop the messages.
pub fn opt_out_signature(franchise_secret: &str, member: &MemberId, channel: &str) -> String {
    b32(&mac(
        franchise_secret,
        &[
            b"opt-out:v1:",
            member.as_str().as_bytes(),
            b":",
            channel.as_bytes(),
        ],
    )[..16])
}

/// Whether `signature` signs the opt-out link of `member` for `channel`.
pub fn verify_opt_out(
    franchise_secret: &str,
    member: &MemberId,
    channel: &str,
    signature: &str,
) -> bool {
    same_tag(
        &opt_out_signature(franchise_secret, member, channel),
        signature,
    )
}

/// The path and query of the opt-out link of `member` of franchise `franchise` for `channel`:
/// `/optout/{franchise}/{member}/{channel}?sig=…`, to be put after the gateway's `public_url`
/// (the page is `loyalty_gateway::pages::optout`).
pub fn opt_out_path(
    franchise: &FranchiseId,
    franchise_secret: &str,
    member: &MemberId,
    channel: &str,
) -> String {
    format!(
        "/optout/{franchise}/{member}/{channel}?sig={}",
        opt_out_signature(franchise_secret, member, channel)
    )
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

/// How many characters of a key are shown ([`api_key_prefix`]) past its `lk_<role>_`.
const SHOWN_KEY_CHARS: usize = 4;

/// What may be shown of a key: `lk_<role>_` and its first 4 random characters (20 of its 160
/// random bits), enough to tell a franchise's keys apart, far too little to guess one.
pub fn api_key_prefix(key: &str) -> String {
    let head = key.rfind('_').map_or(0, |i| i + 1);
    key.chars().take(head + SHOWN_KEY_CHARS).collect()
}

/// A fresh key id, `k_` and 20 hex digits (random): names a key in URLs, listings and logs,
/// and tells nothing about its secret.
pub fn new_api_key_id() -> String {
    format!("k_{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}

/// The id of a key stored before keys had ids: derived from its hash under a label of its own
/// (one-way, like the hash itself), so that every migration of it gives the same id.
/// `libs/postgres/migrations/0004_api_key_ids.sql` computes the same in SQL.
pub fn legacy_api_key_id(key_hash: &str) -> String {
    let d = Sha256::digest(format!("loyalty-key-id:v1:{key_hash}").as_bytes());
    format!("k_{}", &HEXLOWER.encode(&d)[..20])
}

/// Whether `id` has the shape of a key id (`k_` and 20 lowercase hex digits).
pub fn is_api_key_id(id: &str) -> bool {
    id.len() == 22
        && id.starts_with("k_")
        && id[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    fn redemption_codes_are_deterministic_keyed_and_name_their_member() {
        let m = member_id("s1", &Phone::parse("+33612345678").unwrap());
        let e = EventId::parse("till-1:0042").unwrap();
        let code = redemption_code("s1", &m, &e);
        assert_eq!(code, redemption_code("s1", &m, &e), "the same on replay");
        assert_ne!(code, redemption_code("s2", &m, &e), "keyed by the secret");
        let e2 = EventId::parse("till-1:0043").unwrap();
        assert_ne!(code, redemption_code("s1", &m, &e2), "one per event");
        assert_eq!(code.len(), m.as_str().len() + 1 + CODE_TAG_LEN);
        // A till may send it in upper case, with spaces around.
        let typed = format!("  {}  ", code.to_ascii_uppercase());
        assert_eq!(
            parse_redemption_code(&typed),
            Some((m.clone(), code.clone()))
        );
        for bad in [
            "",
            "garbage",
            "m-1-short",
            &format!("{m}-aaaaaaaaaaa1"),
            &format!("{m}"),
        ] {
            assert_eq!(parse_redemption_code(bad), None, "{bad}");
        }
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
    fn store_enrolment_tokens_verify_per_store_and_secret() {
        let a = StoreId::parse("s_a").unwrap();
        let b = StoreId::parse("s_b").unwrap();
        let t = store_enrolment_token("f1", &a);
        assert_eq!(t, store_enrolment_token("f1", &a), "stable");
        assert_eq!(t.len(), 16);
        assert!(verify_store_enrolment_token("f1", &a, &t));
        assert!(!verify_store_enrolment_token("f1", &b, &t));
        assert!(!verify_store_enrolment_token("f2", &a, &t));
        assert!(!verify_store_enrolment_token("f1", &a, "aaaaaaaaaaaaaaaa"));
        assert!(!verify_store_enrolment_token("f1", &a, ""));
    }

    #[test]
    fn enrolment_form_tokens_are_per_store_and_expire() {
        let a = StoreId::parse("s_a").unwrap();
        let b = StoreId::parse("s_b").unwrap();
        let t = enrolment_form_token("f1", &a, 1_000);
        assert!(verify_enrolment_form_token("f1", &a, &t, 1_500, 3600));
        assert!(
            !verify_enrolment_form_token("f1", &a, &t, 5_000, 3600),
            "too old"
        );
        assert!(
            !verify_enrolment_form_token("f1", &a, &t, 500, 3600),
            "from the future"
        );
        assert!(!verify_enrolment_form_token("f1", &b, &t, 1_500, 3600));
        assert!(!verify_enrolment_form_token("f2", &a, &t, 1_500, 3600));
        let forged = t.replacen("1000", "1400", 1);
        assert!(!verify_enrolment_form_token("f1", &a, &forged, 1_500, 3600));
        assert!(!verify_enrolment_form_token("f1", &a, "", 1_500, 3600));
    }

    #[test]
    fn card_links_sign_member_and_expiry() {
        let m = member_id("s1", &Phone::parse("+33612345678").unwrap());
        let n = member_id("s1", &Phone::parse("+33612345679").unwrap());
        let sig = card_link_signature("s1", &m, 1_900_000_000);
        assert_eq!(sig.len(), 26);
        assert!(verify_card_link("s1", &m, 1_900_000_000, &sig));
        assert!(
            !verify_card_link("s1", &m, 1_900_000_001, &sig),
            "expiry moved"
        );
        assert!(
            !verify_card_link("s1", &n, 1_900_000_000, &sig),
            "another member"
        );
        assert!(
            !verify_card_link("s2", &m, 1_900_000_000, &sig),
            "another franchise"
        );
        assert!(!verify_card_link("s1", &m, 1_900_000_000, &sig[..25]));
    }

    #[test]
    fn opt_out_links_sign_member_and_channel_for_ever() {
        let m = member_id("s1", &Phone::parse("+33612345678").unwrap());
        let n = member_id("s1", &Phone::parse("+33612345679").unwrap());
        let sig = opt_out_signature("s1", &m, "sms");
        assert_eq!(sig, opt_out_signature("s1", &m, "sms"), "stable");
        assert_eq!(sig.len(), 26);
        assert!(verify_opt_out("s1", &m, "sms", &sig));
        assert!(!verify_opt_out("s1", &m, "email", &sig), "another channel");
        assert!(!verify_opt_out("s1", &n, "sms", &sig), "another member");
        assert!(!verify_opt_out("s2", &m, "sms", &sig), "another franchise");
        assert!(!verify_opt_out("s1", &m, "sms", &sig[..25]));
        assert!(!verify_opt_out("s1", &m, "sms", ""));
        // Its own label: no card link's signature is an opt-out's.
        assert_ne!(sig, card_link_signature("s1", &m, 0));
        let f = FranchiseId::parse("f_a").unwrap();
        assert_eq!(
            opt_out_path(&f, "s1", &m, "email"),
            format!(
                "/optout/f_a/{m}/email?sig={}",
                opt_out_signature("s1", &m, "email")
            )
        );
    }

    #[test]
    fn api_keys_are_random_and_hashed() {
        let a = new_api_key("store");
        assert!(a.starts_with("lk_store_"));
        assert_ne!(a, new_api_key("store"));
        assert_eq!(hash_api_key(&a).len(), 64);
        assert_ne!(hash_api_key(&a), a);
    }

    #[test]
    fn key_ids_and_prefixes() {
        let id = new_api_key_id();
        assert!(is_api_key_id(&id), "{id}");
        assert_ne!(id, new_api_key_id());
        let legacy = legacy_api_key_id(&hash_api_key("lk_hq_x"));
        assert!(is_api_key_id(&legacy), "{legacy}");
        assert_eq!(legacy, legacy_api_key_id(&hash_api_key("lk_hq_x")));
        assert_ne!(legacy, legacy_api_key_id(&hash_api_key("lk_hq_y")));
        // Also what SQL computes: 'k_' || left(encode(sha256('loyalty-key-id:v1:' || h), 'hex'), 20).
        assert_eq!(legacy_api_key_id("h"), "k_0c85922b31d2f0b1625c");
        for bad in [
            "",
            "k_",
            "k_0123456789abcdef012",
            "k_0123456789ABCDEF0123",
            "x_0123456789abcdef0123",
        ] {
            assert!(!is_api_key_id(bad), "{bad}");
        }
        let key = new_api_key("store");
        let p = api_key_prefix(&key);
        assert_eq!(p.len(), "lk_store_".len() + 4);
        assert!(key.starts_with(&p));
        assert_eq!(
            api_key_prefix(&new_api_key("hqro")).len(),
            "lk_hqro_".len() + 4
        );
    }
}
