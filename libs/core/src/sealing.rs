//! The key ring that seals personal data at rest (README "Personal data at rest").
//!
//! A member's profile and an e-mail address given with a change of consent are sealed wherever
//! they are written outside the process: the command log (Kafka or the embedded log), every
//! store (embedded, PostgreSQL, ScyllaDB) and the pending one-time codes (Redis or the
//! process). The domain decides the shape ([`loyalty_domain::privacy`]); this module holds the
//! keys and the cryptography: XChaCha20-Poly1305 (an AEAD: a value that was altered, or sealed
//! under another key, does not open), a random 192-bit nonce per value (safe to draw at random
//! at any volume), the value's kind bound as associated data.
//!
//! A sealed value is `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`: it names its key, so
//! that a ring can hold several. The first key of the ring seals; every key of the ring opens.
//! Rotation is therefore: put a new key first and keep the old ones (every process), run
//! `loyalty privacy reseal` (every stored member is written again under the new key), and drop
//! an old key only once no log record sealed with it is still retained
//! (`loyalty_pii_opened_total{key_id}` shows which keys are still read).
//!
//! Lookups never need the clear value: a member is found by its id, a keyed hash of the phone
//! under the franchise's secret ([`crate::identity::member_id`]).

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use data_encoding::{BASE64, BASE64URL, BASE64URL_NOPAD, BASE64_NOPAD};
use loyalty_domain::privacy::{self, Sealer};
use sha2::{Digest, Sha256};

use crate::metrics::metrics;
use crate::{Error, Result};

/// The id of the dev key ring's one key ([`KeyRing::dev`]), which production modes refuse.
pub const DEV_KEY_ID: &str = "dev";

/// The format tag of sealed values.
const FORMAT: &str = "v1";
const NONCE_LEN: usize = 24;
/// Longest key id: letters, digits, `-` and `_`.
pub const MAX_KEY_ID: usize = 32;

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    /// `loyalty_pii_sealed_total{key_id}` of this key, resolved at its first seal (a ring
    /// that never seals, such as the dev ring of a default configuration, adds no series).
    sealed: std::sync::OnceLock<prometheus::IntCounter>,
}

struct Ring {
    /// The first is current: it seals.
    keys: Vec<Key>,
    dev: bool,
    /// The key of [`KeyRing::lookup_hash`], derived from the sealing key.
    lookup: [u8; 32],
}

/// The keys that seal and open personal data: cheap to clone (shared).
#[derive(Clone)]
pub struct KeyRing(Arc<Ring>);

impl std::fmt::Debug for KeyRing {
    /// Key ids only, never a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.ids())
            .finish()
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

fn key_id_ok(id: &str) -> bool {
    (1..=MAX_KEY_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_key(text: &str) -> Option<Vec<u8>> {
    [&BASE64, &BASE64_NOPAD, &BASE64URL, &BASE64URL_NOPAD]
        .iter()
        .find_map(|e| e.decode(text.as_bytes()).ok())
}

/// The associated data of a `kind` of value (the kinds the domain seals are constants).
fn aad(kind: &str) -> std::borrow::Cow<'static, [u8]> {
    match kind {
        "profile" => std::borrow::Cow::Borrowed(b"loyalty-pii:v1:profile"),
        "email" => std::borrow::Cow::Borrowed(b"loyalty-pii:v1:email"),
        other => std::borrow::Cow::Owned(format!("loyalty-pii:{FORMAT}:{other}").into_bytes()),
    }
}

impl KeyRing {
    fn build(keys: Vec<(String, [u8; 32])>, dev: bool) -> Result<KeyRing> {
        if keys.is_empty() {
            return Err(invalid("a key ring needs at least one key"));
        }
        let mut lookup = Sha256::new();
        lookup.update(b"loyalty-lookup:v1:");
        lookup.update(keys[0].1);
        let lookup: [u8; 32] = lookup.finalize().into();
        let mut ring = Vec::with_capacity(keys.len());
        for (id, bytes) in keys {
            if ring.iter().any(|k: &Key| k.id == id) {
                return Err(invalid(format!("the key id `{id}` is given twice")));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| invalid(format!("the key `{id}` is not 32 bytes")))?;
            ring.push(Key {
                id,
                cipher,
                sealed: std::sync::OnceLock::new(),
            });
        }
        Ok(KeyRing(Arc::new(Ring {
            keys: ring,
            dev,
            lookup,
        })))
    }

    /// The ring of `spec`, `LOYALTY_PII_KEYS`'s format: `id:key` pairs separated by commas,
    /// the first sealing, each key 32 bytes in base64 (standard or URL-safe, padded or not),
    /// each id 1 to 32 letters, digits, `-` or `_`, all distinct.
    pub fn parse(spec: &str) -> Result<KeyRing> {
        let mut keys = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, key) = part.split_once(':').ok_or_else(|| {
                invalid("each key is `id:base64-key` (an id, a colon, 32 bytes in base64)")
            })?;
            let id = id.trim();
            if !key_id_ok(id) {
                return Err(invalid(format!(
                    "a key id is 1 to {MAX_KEY_ID} letters, digits, `-` or `_` (got `{id}`)"
                )));
            }
            if id == DEV_KEY_ID {
                return Err(invalid(format!(
                    "the key id `{DEV_KEY_ID}` is the dev key ring's: choose another"
                )));
            }
            let bytes = decode_key(key.trim())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "the key `{id}` must be 32 bytes in base64 (`loyalty privacy new-key` makes one)"
                    ))
                })?;
            keys.push((id.to_owned(), bytes));
        }
        if keys.is_empty() {
            return Err(invalid("no key given"));
        }
        KeyRing::build(keys, false)
    }

    /// The dev mode's ring: one key, `dev`, the same on every machine (like the dev admin
    /// key). It keeps personal data out of the files in clear, not from anyone who has this
    /// source; production modes refuse it.
    pub fn dev() -> KeyRing {
        let key: [u8; 32] = Sha256::digest(b"loyalty dev personal data key (not a secret)").into();
        // One valid key of 32 bytes: `build` cannot refuse it.
        KeyRing::build(vec![(DEV_KEY_ID.to_owned(), key)], true)
            .unwrap_or_else(|e| unreachable!("the dev key ring: {e}"))
    }

    /// A new key for `id`, as `id:base64` (what `loyalty privacy new-key` prints).
    pub fn new_key_spec(id: &str) -> Result<String> {
        if !key_id_ok(id) || id == DEV_KEY_ID {
            return Err(invalid(format!(
                "a key id is 1 to {MAX_KEY_ID} letters, digits, `-` or `_`, not `{DEV_KEY_ID}`"
            )));
        }
        let key = chacha20poly1305::Key::generate();
        Ok(format!("{id}:{}", BASE64.encode(key.as_slice())))
    }

    /// Whether this is the dev ring ([`KeyRing::dev`]).
    pub fn is_dev(&self) -> bool {
        self.0.dev
    }

    /// The id of the key that seals.
    pub fn current(&self) -> &str {
        &self.0.keys[0].id
    }

    /// Every key id, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.0.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// A keyed hash of a personal value for a lookup key that must not reveal it (a rate
    /// limiter's bucket of a phone number): hex, 24 characters, HMAC-SHA256 under a key derived
    /// from the sealing key, over `label` and `value`. Without the ring it cannot be computed
    /// from a guessed value (a plain hash of a phone number can, in minutes); after a rotation
    /// the same value hashes otherwise.
    pub fn lookup_hash(&self, label: &str, value: &str) -> String {
        use hmac::{Hmac, KeyInit as _, Mac};
        let mut m = match Hmac::<Sha256>::new_from_slice(&self.0.lookup) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        let bytes: [u8; 32] = m.finalize().into_bytes().into();
        data_encoding::HEXLOWER.encode(&bytes[..12])
    }

    /// Runs `f` (synchronous: an encoding or a decoding) with this ring in scope: personal
    /// values it serializes are sealed, sealed ones it deserializes opened.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let sealer: Arc<dyn Sealer> = self.0.clone();
        privacy::sealing(&sealer, f)
    }

    /// `serde_json::to_vec(v)` with this ring in scope.
    pub fn to_json<T: serde::Serialize + ?Sized>(&self, v: &T) -> Result<Vec<u8>> {
        self.scope(|| serde_json::to_vec(v))
            .map_err(|e| Error::Corrupt(format!("encoding: {e}")))
    }

    /// `serde_json::from_slice(bytes)` with this ring in scope; `what` names the value in the
    /// error ([`Error::Corrupt`]: a missing key or altered data is not retried).
    pub fn from_json<T: serde::de::DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T> {
        self.scope(|| serde_json::from_slice(bytes))
            .map_err(|e| Error::Corrupt(format!("{what}: {e}")))
    }

    /// The id of the key that sealed `sealed` (a value's `sealed` field), if it is one.
    pub fn key_of(sealed: &str) -> Option<&str> {
        let mut parts = sealed.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(FORMAT), Some(id), Some(_)) if key_id_ok(id) => Some(id),
            _ => None,
        }
    }
}

impl Sealer for Ring {
    fn seal(&self, kind: &'static str, clear: &[u8]) -> std::result::Result<String, String> {
        let key = &self.keys[0];
        let nonce = XNonce::generate();
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: clear,
                    aad: &aad(kind),
                },
            )
            .map_err(|_| format!("sealing a {kind} failed"))?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(nonce.as_slice());
        bytes.extend_from_slice(&sealed);
        key.sealed
            .get_or_init(|| metrics().pii_sealed.with_label_values(&[&key.id]))
            .inc();
        Ok(format!(
            "{FORMAT}.{}.{}",
            key.id,
            BASE64URL_NOPAD.encode(&bytes)
        ))
    }

    fn open(&self, kind: &'static str, sealed: &str) -> std::result::Result<Vec<u8>, String> {
        let id = KeyRing::key_of(sealed)
            .ok_or_else(|| format!("a sealed {kind} of an unknown format"))?;
        let opened = metrics().pii_opened.clone();
        let failed = |msg: String| {
            opened.with_label_values(&[id, "failed"]).inc();
            msg
        };
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            failed(format!(
                "a {kind} sealed with the key `{id}`, which the key ring (LOYALTY_PII_KEYS) does not \
                 hold: put the key back (keep every key until `loyalty privacy reseal` has run \
                 and no log record sealed with it is retained)"
            ))
        })?;
        let body = sealed
            .as_bytes()
            .get(FORMAT.len() + id.len() + 2..)
            .unwrap_or_default();
        let bytes = BASE64URL_NOPAD
            .decode(body)
            .ok()
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or_else(|| failed(format!("a sealed {kind} that is not base64url")))?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce)
            .map_err(|_| failed(format!("a sealed {kind} without its nonce")))?;
        let clear = key
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad(kind),
                },
            )
            .map_err(|_| {
                failed(format!(
                    "a {kind} that does not open with the key `{id}` (another key under the same \
                     id, or altered data)"
                ))
            })?;
        opened.with_label_values(&[id, "ok"]).inc();
        Ok(clear)
    }
}

/// Members read per page by [`reseal_members`].
const RESEAL_PAGE: usize = 500;

/// What [`reseal_members`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Members written again under the store's current key.
    pub members: u64,
    /// Members another writer changed meanwhile (their new state is already sealed by it).
    pub changed_meanwhile: u64,
}

/// Writes every stored member again, so that its profile is sealed under the current key of
/// the store's ring (`loyalty privacy reseal`, after a new key was put first). The state is
/// the same, its version too: each write is conditional on that version, so a member a live
/// engine changed meanwhile is left to the engine's own write (counted in
/// [`ResealReport::changed_meanwhile`]). Members written before sealing existed (in clear) are
/// sealed by it too.
pub async fn reseal_members(store: &dyn crate::ports::StateStore) -> Result<ResealReport> {
    let mut report = ResealReport::default();
    let mut after = None;
    loop {
        let page = store.members_after(after.as_ref(), RESEAL_PAGE).await?;
        // The whole page at once; if any member changed meanwhile, member by member.
        match store.commit(rewrite(&page)).await {
            Ok(()) => report.members += page.len() as u64,
            Err(Error::Conflict(_)) => {
                for state in &page {
                    match store.commit(rewrite(std::slice::from_ref(state))).await {
                        Ok(()) => report.members += 1,
                        Err(Error::Conflict(_)) => report.changed_meanwhile += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        after = page.last().map(|s| s.member_id.clone());
        if page.len() < RESEAL_PAGE {
            break;
        }
    }
    store.sync().await?;
    Ok(report)
}

/// The states as they are, each conditional on its version.
fn rewrite(states: &[loyalty_domain::MemberState]) -> crate::ports::EffectBatch {
    crate::ports::EffectBatch {
        members: states
            .iter()
            .map(|state| crate::ports::MemberWrite {
                expected_version: state.version,
                state: state.clone(),
                due: None,
            })
            .collect(),
        ..crate::ports::EffectBatch::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_domain::{Consent, Phone, Profile};

    fn profile() -> Profile {
        Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: Some("Ana".into()),
            birthday: Some("1990-04-17".into()),
            consent: Consent {
                sms: true,
                email: true,
            },
            email: Some("ana@example.com".into()),
        }
    }

    fn ring(spec: &[&str]) -> KeyRing {
        let specs: Vec<String> = spec
            .iter()
            .map(|id| KeyRing::new_key_spec(id).unwrap())
            .collect();
        KeyRing::parse(&specs.join(",")).unwrap()
    }

    #[test]
    fn a_profile_is_sealed_under_the_first_key_and_opens_back() {
        let r = ring(&["k2", "k1"]);
        let json = r.to_json(&profile()).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.starts_with(r#"{"sealed":"v1.k2."#), "{text}");
        for clear in ["+33612345678", "Ana", "1990", "example"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert_eq!(r.from_json::<Profile>("member", &json).unwrap(), profile());
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(r.to_json(&profile()).unwrap(), json);
        assert_eq!(r.current(), "k2");
        assert_eq!(r.ids(), vec!["k2", "k1"]);
    }

    #[test]
    fn a_rotated_ring_opens_the_old_keys_values_and_a_ring_without_the_key_refuses_them() {
        let specs = [
            KeyRing::new_key_spec("k1").unwrap(),
            KeyRing::new_key_spec("k2").unwrap(),
        ];
        let old = KeyRing::parse(&specs[0]).unwrap();
        let rotated = KeyRing::parse(&format!("{},{}", specs[1], specs[0])).unwrap();
        let only_new = KeyRing::parse(&specs[1]).unwrap();
        let sealed = old.to_json(&profile()).unwrap();
        assert_eq!(
            rotated.from_json::<Profile>("member", &sealed).unwrap(),
            profile()
        );
        let resealed = rotated
            .to_json(&rotated.from_json::<Profile>("m", &sealed).unwrap())
            .unwrap();
        assert!(String::from_utf8_lossy(&resealed).contains("v1.k2."));
        assert_eq!(
            only_new.from_json::<Profile>("m", &resealed).unwrap(),
            profile()
        );
        let e = only_new
            .from_json::<Profile>("member", &sealed)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt(m) if m.contains("key `k1`") && m.contains("LOYALTY_PII_KEYS")),
            "{e:?}"
        );
        // Another key under the same id does not open it either.
        let impostor = ring(&["k1"]);
        let e = impostor
            .from_json::<Profile>("member", &sealed)
            .unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
    }

    #[test]
    fn altered_values_and_values_of_another_kind_do_not_open() {
        let r = ring(&["k1"]);
        let text = String::from_utf8(r.to_json(&profile()).unwrap()).unwrap();
        let sealed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = sealed["sealed"].as_str().unwrap().to_owned();
        let mut altered = s.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let json = serde_json::json!({ "sealed": altered }).to_string();
        assert!(r.from_json::<Profile>("m", json.as_bytes()).is_err());
        // The profile's seal, given as an e-mail address.
        let as_email = serde_json::json!({ "sealed": s }).to_string();
        let e = r
            .from_json::<loyalty_domain::EmailAddress>("m", as_email.as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
    }

    #[test]
    fn bad_specs_are_refused_with_what_to_do() {
        let good = KeyRing::new_key_spec("k1").unwrap();
        for (spec, says) in [
            ("", "no key"),
            ("k1", "id:base64-key"),
            ("k 1:AAAA", "key id"),
            ("dev:AAAA", "dev key ring"),
            ("k1:AAAA", "32 bytes"),
            (&format!("{good},{good}") as &str, "twice"),
        ] {
            let e = KeyRing::parse(spec).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
        assert!(KeyRing::new_key_spec("dev").is_err());
        // Lookup hashes: stable for a ring, another under another key, never the value.
        let (a, b) = (KeyRing::parse(&good).unwrap(), ring(&["k1"]));
        let h = a.lookup_hash("enrol-phone", "+33612345678");
        assert_eq!(h, a.lookup_hash("enrol-phone", "+33612345678"));
        assert_eq!(h.len(), 24);
        assert_ne!(h, b.lookup_hash("enrol-phone", "+33612345678"));
        assert_ne!(h, a.lookup_hash("other", "+33612345678"));
        assert!(!KeyRing::parse(&good).unwrap().is_dev());
        assert!(KeyRing::dev().is_dev());
        assert_eq!(KeyRing::dev().current(), DEV_KEY_ID);
        // A key spec's Debug shows ids only.
        let shown = format!("{:?}", KeyRing::parse(&good).unwrap());
        assert!(!shown.contains(good.split_once(':').unwrap().1), "{shown}");
    }
}
