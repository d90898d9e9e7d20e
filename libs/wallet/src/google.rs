//! Google Wallet: the "Save to Google Wallet" link, `https://pay.google.com/gp/v/save/<jwt>`,
//! whose JWT (RS256, signed with the issuer's service-account key) carries the member's
//! loyalty object: the QR code, the balance, the tier. Google creates the object on the first
//! save; the loyalty class it names must exist in the issuer's account (Google Pay & Wallet
//! console or REST API).

use std::sync::Arc;
use std::time::SystemTime;

use data_encoding::BASE64URL_NOPAD;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::signature::private_key;
use crate::{CardPass, WalletError};

/// What a save link starts with.
pub const SAVE_URL_PREFIX: &str = "https://pay.google.com/gp/v/save/";

/// The Google side of the configuration: the issuer, its loyalty class and the service
/// account that signs the links. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct GoogleWallet {
    /// The issuer id (digits) of the Google Pay & Wallet console.
    pub issuer_id: String,
    /// The loyalty class: `<issuer_id>.<suffix>`, or the suffix alone.
    pub class_id: String,
    /// The service account's e-mail (`client_email` of its JSON key file): the JWT's `iss`.
    pub service_account: String,
    key: Arc<SigningKey<Sha256>>,
}

impl std::fmt::Debug for GoogleWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleWallet")
            .field("issuer_id", &self.issuer_id)
            .field("class_id", &self.class_id)
            .field("service_account", &self.service_account)
            .field("key", &"(set)")
            .finish()
    }
}

/// Whether `s` is a valid id suffix for Google Wallet: letters, digits, `.`, `_`, `-`.
fn id_chars(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl GoogleWallet {
    /// The configuration of `issuer_id`, `class_id`, the service account's e-mail and its RSA
    /// key (PEM: the `private_key` of the account's JSON key file), each checked.
    pub fn new(
        issuer_id: &str,
        class_id: &str,
        service_account: &str,
        key_pem: &[u8],
    ) -> Result<GoogleWallet, WalletError> {
        let issuer_id = issuer_id.trim();
        if issuer_id.is_empty() || !issuer_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(WalletError::config(
                "the Google Wallet issuer id",
                "it must be the issuer's digits",
            ));
        }
        let class_id = class_id.trim();
        let class_id = match class_id.split_once('.') {
            Some((issuer, _)) if issuer != issuer_id => {
                return Err(WalletError::config(
                    "the Google Wallet class id",
                    "it must be <issuer_id>.<suffix> of the same issuer, or the suffix alone",
                ))
            }
            Some(_) => class_id.to_owned(),
            None => format!("{issuer_id}.{class_id}"),
        };
        if !class_id
            .split_once('.')
            .is_some_and(|(_, suffix)| id_chars(suffix))
        {
            return Err(WalletError::config(
                "the Google Wallet class id",
                "its suffix must be letters, digits, '.', '_' or '-'",
            ));
        }
        let service_account = service_account.trim();
        if !service_account.contains('@') || service_account.contains(char::is_whitespace) {
            return Err(WalletError::config(
                "the Google Wallet service account",
                "it must be the account's e-mail (client_email of its key file)",
            ));
        }
        let key = private_key(key_pem, "the Google Wallet service account's key")?;
        Ok(GoogleWallet {
            issuer_id: issuer_id.to_owned(),
            class_id,
            service_account: service_account.to_owned(),
            key: Arc::new(SigningKey::new(key)),
        })
    }

    /// The loyalty object's id: `<issuer_id>.<franchise>-<member>`, with any character Google
    /// refuses replaced by `_`.
    pub fn object_id(&self, card: &CardPass) -> String {
        let suffix: String = format!("{}-{}", card.franchise_id, card.member_id)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}.{suffix}", self.issuer_id)
    }

    /// The JWT's claims for `card`, issued at `at`.
    pub fn claims(&self, card: &CardPass, at: SystemTime) -> Value {
        let iat = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let l = card.language;
        json!({
            "iss": self.service_account,
            "aud": "google",
            "typ": "savetowallet",
            "iat": iat,
            "origins": [],
            "payload": {
                "loyaltyObjects": [{
                    "id": self.object_id(card),
                    "classId": self.class_id,
                    "state": "ACTIVE",
                    "accountId": card.member_id,
                    "barcode": { "type": "QR_CODE", "value": card.qr_token },
                    "loyaltyPoints": {
                        "label": l.pick("Points", "Points"),
                        "balance": { "int": card.points },
                    },
                    "textModulesData": [{
                        "id": "tier",
                        "header": l.pick("Niveau", "Tier"),
                        "body": card.tier,
                    }],
                }],
            },
        })
    }

    /// The "Save to Google Wallet" link of `card`, signed at `at`.
    pub fn save_link(&self, card: &CardPass, at: SystemTime) -> Result<String, WalletError> {
        let header = BASE64URL_NOPAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::to_vec(&self.claims(card, at))
            .map_err(|e| WalletError::Build(format!("JWT claims: {e}")))?;
        let input = format!("{header}.{}", BASE64URL_NOPAD.encode(&claims));
        let signature = self
            .key
            .try_sign(input.as_bytes())
            .map_err(|e| WalletError::Sign(e.to_string()))?;
        Ok(format!(
            "{SAVE_URL_PREFIX}{input}.{}",
            BASE64URL_NOPAD.encode(&signature.to_bytes())
        ))
    }
}
