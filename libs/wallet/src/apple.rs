//! Apple Wallet passes: a store card (`pass.json`), its images, `manifest.json` and, when
//! configured, `signature`, zipped into a `.pkpass`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use zip::write::SimpleFileOptions;

use crate::images::{self, ACCENT, BACKGROUND, FOREGROUND};
use crate::{CardPass, Language, PassSigner, WalletError};

/// The media type of a `.pkpass`.
pub const PKPASS_CONTENT_TYPE: &str = "application/vnd.apple.pkpass";
/// The archive's file names Wallet reads.
pub const PASS_JSON: &str = "pass.json";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "signature";

/// The Apple side of the configuration: the Pass Type ID and team the passes are issued under,
/// and the signer (none: unsigned passes).
#[derive(Clone, Debug)]
pub struct ApplePasses {
    /// `passTypeIdentifier`: the Pass Type ID registered with Apple (`pass.com.example.card`).
    pub pass_type_id: String,
    /// `teamIdentifier`: the Apple Developer team's ten-character id.
    pub team_id: String,
    /// Signs the manifest; `None` makes unsigned passes.
    pub signer: Option<Arc<PassSigner>>,
}

impl Default for ApplePasses {
    /// Unsigned passes under placeholder identifiers: what a platform without an Apple
    /// certificate serves (previews, tests).
    fn default() -> Self {
        ApplePasses {
            pass_type_id: "pass.org.example.loyalty".into(),
            team_id: "UNSIGNED00".into(),
            signer: None,
        }
    }
}

impl ApplePasses {
    /// Whether the passes are signed (Wallet installs only those).
    pub fn signed(&self) -> bool {
        self.signer.is_some()
    }

    /// The `.pkpass` archive of `card`, signed at `at` if a signer is configured.
    pub fn pkpass(&self, card: &CardPass, at: SystemTime) -> Result<Vec<u8>, WalletError> {
        let pass = serde_json::to_vec_pretty(&self.pass_json(card))
            .map_err(|e| WalletError::Build(format!("pass.json: {e}")))?;
        let mut files: Vec<(&str, Vec<u8>)> = vec![(PASS_JSON, pass)];
        files.extend(images::pass_images()?);
        let manifest = manifest(&files)?;
        let signature = match &self.signer {
            Some(s) => Some(s.sign(&manifest, at)?),
            None => None,
        };
        files.push((MANIFEST, manifest));
        if let Some(sig) = signature {
            files.push((SIGNATURE, sig));
        }
        zip(&files)
    }

    /// `pass.json`: a store card with the balance (primary), the tier (secondary), the stamps
    /// and the next tier (auxiliary) and the member's QR code.
    pub fn pass_json(&self, card: &CardPass) -> Value {
        let l = card.language;
        let mut auxiliary = Vec::new();
        if let Some(s) = card.stamps {
            auxiliary.push(json!({
                "key": "stamps",
                "label": l.pick("Tampons", "Stamps"),
                "value": format!("{} / {}", s.stamps.min(s.size), s.size),
            }));
        }
        if let Some(next) = &card.next_tier {
            auxiliary.push(json!({
                "key": "next_tier",
                "label": l.pick("Niveau suivant", "Next tier"),
                "value": next,
            }));
        }
        json!({
            "formatVersion": 1,
            "passTypeIdentifier": self.pass_type_id,
            "serialNumber": card.member_id,
            "teamIdentifier": self.team_id,
            "organizationName": card.franchise_name,
            "description": description(card),
            "logoText": card.franchise_name,
            "foregroundColor": rgb(FOREGROUND),
            "backgroundColor": rgb(BACKGROUND),
            "labelColor": rgb(ACCENT),
            "sharingProhibited": true,
            "barcodes": [{
                "format": "PKBarcodeFormatQR",
                "message": card.qr_token,
                "messageEncoding": "iso-8859-1",
            }],
            "storeCard": {
                "primaryFields": [{
                    "key": "balance",
                    "label": l.pick("Points", "Points"),
                    "value": card.points,
                    "changeMessage": l.pick("Votre solde\u{a0}: %@ points", "Your balance: %@ points"),
                }],
                "secondaryFields": [{
                    "key": "tier",
                    "label": l.pick("Niveau", "Tier"),
                    "value": card.tier,
                }],
                "auxiliaryFields": auxiliary,
                "backFields": [{
                    "key": "refresh",
                    "label": l.pick("Mise à jour", "Updates"),
                    "value": refresh_note(l),
                }],
            },
        })
    }
}

/// The pass's description (what VoiceOver and the lock screen say).
fn description(card: &CardPass) -> String {
    match card.language {
        Language::Fr => format!("Carte de fidélité {}", card.franchise_name),
        Language::En => format!("{} loyalty card", card.franchise_name),
    }
}

/// What the back of the pass says about its balance.
fn refresh_note(l: Language) -> &'static str {
    l.pick(
        "Le solde est celui du moment du téléchargement. Pour le mettre à jour, \
         téléchargez de nouveau la carte depuis votre lien.",
        "The balance is the one at download time. To update it, download the card again \
         from your link.",
    )
}

fn rgb([r, g, b]: [u8; 3]) -> String {
    format!("rgb({r}, {g}, {b})")
}

/// `manifest.json`: the SHA-1 (hex) of every file, by name.
fn manifest(files: &[(&str, Vec<u8>)]) -> Result<Vec<u8>, WalletError> {
    let hashes: BTreeMap<&str, String> = files
        .iter()
        .map(|(name, bytes)| (*name, data_encoding::HEXLOWER.encode(&Sha1::digest(bytes))))
        .collect();
    serde_json::to_vec_pretty(&hashes).map_err(|e| WalletError::Build(format!("manifest: {e}")))
}

/// The zip archive of `files`, deflated.
fn zip(files: &[(&str, Vec<u8>)]) -> Result<Vec<u8>, WalletError> {
    let failed = |e: zip::result::ZipError| WalletError::Build(format!("zip: {e}"));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        w.start_file(*name, options).map_err(failed)?;
        w.write_all(bytes)
            .map_err(|e| WalletError::Build(format!("zip: {e}")))?;
    }
    Ok(w.finish().map_err(failed)?.into_inner())
}
