//! The pass's `signature`: a detached CMS SignedData (RFC 5652) over `manifest.json`, signed
//! with the Pass Type ID certificate's RSA key (RSASSA-PKCS1-v1_5 over SHA-256), carrying the
//! signer's certificate and Apple's WWDR intermediate, and the signed attributes Wallet looks
//! for (content type, signing time, message digest). What `openssl smime -sign -binary
//! -signer cert -certfile wwdr -outform der` makes.

use std::time::SystemTime;

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use const_oid::db::{rfc5911, rfc5912};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use x509_cert::attr::Attribute;
use x509_cert::der::asn1::{Any, OctetString, SetOfVec};
use x509_cert::der::{DecodePem, Encode};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;
use x509_cert::Certificate;

use crate::WalletError;

/// The Pass Type ID certificate, its private key and Apple's WWDR intermediate: what signs
/// passes. Its `Debug` shows the certificate's subject, never the key.
#[derive(Clone)]
pub struct PassSigner {
    cert: Certificate,
    wwdr: Certificate,
    key: SigningKey<Sha256>,
}

impl std::fmt::Debug for PassSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassSigner")
            .field(
                "subject",
                &self.cert.tbs_certificate().subject().to_string(),
            )
            .field("key", &"(set)")
            .finish()
    }
}

impl PassSigner {
    /// The signer of a certificate, its RSA key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE
    /// KEY`, unencrypted) and the WWDR intermediate, each PEM. Refuses a key that is not the
    /// certificate's.
    pub fn from_pem(cert: &[u8], key: &[u8], wwdr: &[u8]) -> Result<PassSigner, WalletError> {
        let cert = Certificate::from_pem(cert)
            .map_err(|e| WalletError::config("the pass certificate", e))?;
        let wwdr = Certificate::from_pem(wwdr)
            .map_err(|e| WalletError::config("the WWDR certificate", e))?;
        let key = private_key(key, "the pass certificate's key")?;
        if PublicKey::from(&key) != certificate_key(&cert)? {
            return Err(WalletError::config(
                "the pass certificate's key",
                "it is not the key of the pass certificate",
            ));
        }
        Ok(PassSigner {
            cert,
            wwdr,
            key: SigningKey::new(key),
        })
    }

    /// The DER of a detached SignedData over `manifest`, signed at `at`.
    pub fn sign(&self, manifest: &[u8], at: SystemTime) -> Result<Vec<u8>, WalletError> {
        let failed = |e: x509_cert::der::Error| WalletError::Sign(e.to_string());
        let signed_attrs = signed_attributes(manifest, at)?;
        let signature = self
            .key
            .try_sign(&signed_attrs.to_der().map_err(failed)?)
            .map_err(|e| WalletError::Sign(e.to_string()))?;
        let tbs = self.cert.tbs_certificate();
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: tbs.issuer().clone(),
                serial_number: tbs.serial_number().clone(),
            }),
            digest_alg: sha256(),
            signed_attrs: Some(signed_attrs),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: rfc5912::RSA_ENCRYPTION,
                parameters: Some(Any::null()),
            },
            signature: OctetString::new(signature.to_vec()).map_err(failed)?,
            unsigned_attrs: None,
        };
        let mut certificates = SetOfVec::new();
        for c in [&self.cert, &self.wwdr] {
            certificates
                .insert(CertificateChoices::Certificate(c.clone()))
                .map_err(failed)?;
        }
        let signed_data = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![sha256()]).map_err(failed)?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: rfc5911::ID_DATA,
                econtent: None,
            },
            certificates: Some(CertificateSet(certificates)),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).map_err(failed)?),
        };
        ContentInfo {
            content_type: rfc5911::ID_SIGNED_DATA,
            content: Any::encode_from(&signed_data).map_err(failed)?,
        }
        .to_der()
        .map_err(failed)
    }
}

/// SHA-256, without parameters (RFC 5754).
fn sha256() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: rfc5912::ID_SHA_256,
        parameters: None,
    }
}

/// The signed attributes: content type `data`, the signing time, the manifest's digest.
fn signed_attributes(manifest: &[u8], at: SystemTime) -> Result<SetOfVec<Attribute>, WalletError> {
    let failed = |e: x509_cert::der::Error| WalletError::Sign(e.to_string());
    let time = Time::try_from(at).map_err(failed)?;
    let digest = OctetString::new(Sha256::digest(manifest).to_vec()).map_err(failed)?;
    let attr = |oid, value: Any| -> Result<Attribute, WalletError> {
        Ok(Attribute {
            oid,
            values: SetOfVec::try_from(vec![value]).map_err(failed)?,
        })
    };
    let attrs = vec![
        attr(
            rfc5911::ID_CONTENT_TYPE,
            Any::encode_from(&rfc5911::ID_DATA).map_err(failed)?,
        )?,
        attr(
            rfc5911::ID_SIGNING_TIME,
            Any::encode_from(&time).map_err(failed)?,
        )?,
        attr(
            rfc5911::ID_MESSAGE_DIGEST,
            Any::encode_from(&digest).map_err(failed)?,
        )?,
    ];
    SetOfVec::try_from(attrs).map_err(failed)
}

/// An RSA private key from PEM: PKCS#8 (`PRIVATE KEY`, what Google's service-account files
/// and `openssl genpkey` hold) or PKCS#1 (`RSA PRIVATE KEY`, older `openssl` output).
pub(crate) fn private_key(pem: &[u8], what: &'static str) -> Result<PrivateKey, WalletError> {
    let text = std::str::from_utf8(pem).map_err(|_| WalletError::config(what, "not PEM text"))?;
    if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        return PrivateKey::from_pkcs1_pem(text).map_err(|e| WalletError::config(what, e));
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(WalletError::config(
            what,
            "the key is encrypted: give it unencrypted (`openssl pkcs8 -topk8 -nocrypt`)",
        ));
    }
    PrivateKey::from_pkcs8_pem(text).map_err(|e| {
        WalletError::config(
            what,
            format!("not an RSA key in PKCS#8 or PKCS#1 PEM ({e})"),
        )
    })
}

/// The RSA public key of `cert`.
pub(crate) fn certificate_key(cert: &Certificate) -> Result<PublicKey, WalletError> {
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| WalletError::config("the pass certificate", e))?;
    PublicKey::from_public_key_der(&spki)
        .map_err(|e| WalletError::config("the pass certificate", format!("not an RSA key ({e})")))
}
