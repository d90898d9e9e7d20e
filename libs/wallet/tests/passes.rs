//! The passes checked structurally: the `.pkpass` archive's manifest against its files, its
//! `pass.json` fields, its signature as CMS SignedData verified over the manifest, and the
//! Google save link's JWT verified with the service account's public key. The keys are the
//! test-only fixtures of tests/fixtures/.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use const_oid::db::rfc5911;
use loyalty_wallet::{
    ApplePasses, CardPass, GoogleWallet, Language, PassSigner, Stamps, WalletError, MANIFEST,
    PASS_JSON, SAVE_URL_PREFIX, SIGNATURE,
};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::Verifier;
use rsa::{PrivateKey, PublicKey};
use serde_json::Value;
use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;

const CERT: &[u8] = include_bytes!("fixtures/pass-cert.pem");
const KEY: &[u8] = include_bytes!("fixtures/pass-key.pem");
const WWDR: &[u8] = include_bytes!("fixtures/wwdr.pem");
const GOOGLE_KEY: &[u8] = include_bytes!("fixtures/google-key.pem");

fn card() -> CardPass {
    CardPass {
        franchise_id: "f_demo".into(),
        franchise_name: "Boulangerie Demo".into(),
        member_id: "m_0123".into(),
        qr_token: "LOYALTY:m_0123:abcdef".into(),
        points: 1234,
        tier: "Silver".into(),
        next_tier: Some("Gold: 66 points".into()),
        stamps: Some(Stamps {
            stamps: 3,
            size: 10,
        }),
        language: Language::En,
    }
}

/// The archive's files by name.
fn unzip(pkpass: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(pkpass)).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        files.insert(f.name().unwrap().into_owned(), bytes);
    }
    files
}

/// Checks that the manifest names every other file (but the signature) with its SHA-1.
fn assert_manifest_matches(files: &BTreeMap<String, Vec<u8>>) {
    let manifest: BTreeMap<String, String> = serde_json::from_slice(&files[MANIFEST]).unwrap();
    let hashed: Vec<_> = files
        .keys()
        .filter(|n| *n != MANIFEST && *n != SIGNATURE)
        .cloned()
        .collect();
    assert_eq!(manifest.keys().cloned().collect::<Vec<_>>(), hashed);
    for (name, hash) in &manifest {
        let actual = data_encoding::HEXLOWER.encode(&Sha1::digest(&files[name]));
        assert_eq!(&actual, hash, "{name}");
    }
}

fn signer() -> Arc<PassSigner> {
    Arc::new(PassSigner::from_pem(CERT, KEY, WWDR).unwrap())
}

#[test]
fn unsigned_pass_has_a_matching_manifest_and_no_signature() {
    let pkpass = ApplePasses::default()
        .pkpass(&card(), SystemTime::now())
        .unwrap();
    let files = unzip(&pkpass);
    for name in [
        "pass.json",
        "manifest.json",
        "icon.png",
        "icon@2x.png",
        "logo.png",
    ] {
        assert!(files.contains_key(name), "{name} missing");
    }
    assert!(!files.contains_key(SIGNATURE));
    assert_manifest_matches(&files);
}

#[test]
fn pass_json_carries_the_card() {
    let apple = ApplePasses {
        pass_type_id: "pass.com.example.card".into(),
        team_id: "ABCDE12345".into(),
        signer: None,
    };
    let files = unzip(&apple.pkpass(&card(), SystemTime::now()).unwrap());
    let pass: Value = serde_json::from_slice(&files[PASS_JSON]).unwrap();
    assert_eq!(pass["formatVersion"], 1);
    assert_eq!(pass["passTypeIdentifier"], "pass.com.example.card");
    assert_eq!(pass["teamIdentifier"], "ABCDE12345");
    assert_eq!(pass["serialNumber"], "m_0123");
    assert_eq!(pass["organizationName"], "Boulangerie Demo");
    assert_eq!(pass["description"], "Boulangerie Demo loyalty card");
    let barcode = &pass["barcodes"][0];
    assert_eq!(barcode["format"], "PKBarcodeFormatQR");
    assert_eq!(barcode["message"], "LOYALTY:m_0123:abcdef");
    assert_eq!(barcode["messageEncoding"], "iso-8859-1");
    let store = &pass["storeCard"];
    assert_eq!(store["primaryFields"][0]["key"], "balance");
    assert_eq!(store["primaryFields"][0]["value"], 1234);
    assert_eq!(store["secondaryFields"][0]["value"], "Silver");
    assert_eq!(store["auxiliaryFields"][0]["value"], "3 / 10");
    assert_eq!(store["auxiliaryFields"][1]["value"], "Gold: 66 points");
    assert!(pass["backgroundColor"]
        .as_str()
        .unwrap()
        .starts_with("rgb("));
}

#[test]
fn french_labels() {
    let card = CardPass {
        language: Language::Fr,
        next_tier: None,
        stamps: None,
        ..card()
    };
    let pass = ApplePasses::default().pass_json(&card);
    assert_eq!(pass["description"], "Carte de fidélité Boulangerie Demo");
    assert_eq!(pass["storeCard"]["secondaryFields"][0]["label"], "Niveau");
    assert_eq!(pass["storeCard"]["auxiliaryFields"], Value::Array(vec![]));
}

#[test]
fn signed_pass_signature_is_cms_signed_data_over_the_manifest() {
    let apple = ApplePasses {
        signer: Some(signer()),
        ..ApplePasses::default()
    };
    let files = unzip(&apple.pkpass(&card(), SystemTime::now()).unwrap());
    assert_manifest_matches(&files);
    let info = ContentInfo::from_der(&files[SIGNATURE]).unwrap();
    assert_eq!(info.content_type, rfc5911::ID_SIGNED_DATA);
    let sd: SignedData = info.content.decode_as().unwrap();
    // Detached, with the signer's certificate and the intermediate.
    assert!(sd.encap_content_info.econtent.is_none());
    assert_eq!(sd.certificates.as_ref().unwrap().0.len(), 2);
    let si = sd.signer_infos.0.get(0).unwrap();
    let attrs = si.signed_attrs.as_ref().unwrap();
    let digest = attrs
        .iter()
        .find(|a| a.oid == rfc5911::ID_MESSAGE_DIGEST)
        .unwrap();
    let digest: x509_cert::der::asn1::OctetString =
        digest.values.get(0).unwrap().decode_as().unwrap();
    assert_eq!(
        digest.as_bytes(),
        Sha256::digest(&files[MANIFEST]).as_slice()
    );
    let cert = Certificate::from_pem(CERT).unwrap();
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap();
    let key = VerifyingKey::<Sha256>::new(PublicKey::from_public_key_der(&spki).unwrap());
    let signature = Signature::try_from(si.signature.as_bytes()).unwrap();
    key.verify(&attrs.to_der().unwrap(), &signature).unwrap();
    // A manifest changed after signing no longer matches the digest.
    assert_ne!(
        digest.as_bytes(),
        Sha256::digest(b"{\"pass.json\":\"0\"}").as_slice()
    );
}

#[test]
fn signer_refuses_a_key_that_is_not_the_certificates() {
    let err = PassSigner::from_pem(CERT, GOOGLE_KEY, WWDR).unwrap_err();
    assert!(matches!(err, WalletError::Config { .. }), "{err}");
    assert!(err.to_string().contains("not the key"), "{err}");
    let err = PassSigner::from_pem(b"not a certificate", KEY, WWDR).unwrap_err();
    assert!(err.to_string().contains("the pass certificate"), "{err}");
    // Its Debug never shows the key.
    assert!(!format!("{:?}", signer()).contains("PRIVATE"));
}

fn google() -> GoogleWallet {
    GoogleWallet::new(
        "3388000000012345678",
        "loyalty_card",
        "wallet@example.iam.gserviceaccount.com",
        GOOGLE_KEY,
    )
    .unwrap()
}

#[test]
fn google_save_link_is_a_verified_jwt_with_the_balance() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let link = google().save_link(&card(), at).unwrap();
    let jwt = link.strip_prefix(SAVE_URL_PREFIX).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let b64 = data_encoding::BASE64URL_NOPAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0].as_bytes()).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let public = PublicKey::from(
        &PrivateKey::from_pkcs8_pem(std::str::from_utf8(GOOGLE_KEY).unwrap()).unwrap(),
    );
    let signature = Signature::try_from(&b64.decode(parts[2].as_bytes()).unwrap()[..]).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    VerifyingKey::<Sha256>::new(public.clone())
        .verify(signed.as_bytes(), &signature)
        .unwrap();
    // Another payload does not verify with that signature.
    assert!(VerifyingKey::<Sha256>::new(public)
        .verify(format!("{signed}x").as_bytes(), &signature)
        .is_err());
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1].as_bytes()).unwrap()).unwrap();
    assert_eq!(claims["iss"], "wallet@example.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], "google");
    assert_eq!(claims["typ"], "savetowallet");
    assert_eq!(claims["iat"], 1_700_000_000u64);
    let object = &claims["payload"]["loyaltyObjects"][0];
    assert_eq!(object["id"], "3388000000012345678.f_demo-m_0123");
    assert_eq!(object["classId"], "3388000000012345678.loyalty_card");
    assert_eq!(object["state"], "ACTIVE");
    assert_eq!(object["accountId"], "m_0123");
    assert_eq!(object["barcode"]["type"], "QR_CODE");
    assert_eq!(object["barcode"]["value"], "LOYALTY:m_0123:abcdef");
    assert_eq!(object["loyaltyPoints"]["balance"]["int"], 1234);
}

#[test]
fn google_configuration_is_checked() {
    let new = |issuer: &str, class: &str, account: &str, key: &[u8]| {
        GoogleWallet::new(issuer, class, account, key).map(|_| ())
    };
    let account = "wallet@example.iam.gserviceaccount.com";
    assert!(new("33880", "33880.card", account, GOOGLE_KEY).is_ok());
    for (issuer, class, account, key, says) in [
        ("abc", "card", account, GOOGLE_KEY, "issuer id"),
        ("33880", "999.card", account, GOOGLE_KEY, "class id"),
        ("33880", "bad class", account, GOOGLE_KEY, "class id"),
        ("33880", "card", "nobody", GOOGLE_KEY, "service account"),
        ("33880", "card", account, b"junk".as_slice(), "key"),
    ] {
        let err = new(issuer, class, account, key).unwrap_err();
        assert!(err.to_string().contains(says), "{err} should name {says}");
    }
    assert!(!format!("{:?}", google()).contains("PRIVATE"));
}
