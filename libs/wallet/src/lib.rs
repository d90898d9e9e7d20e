//! Wallet passes of a member's card, pure Rust (no system library):
//!
//! - Apple Wallet: a `.pkpass` archive ([`ApplePasses::pkpass`]): `pass.json` (a store card with
//!   the balance, the tier, the stamps and the member's QR code), its images (drawn in code),
//!   `manifest.json` (the SHA-1 of every file) and, when a Pass Type ID certificate is
//!   configured ([`PassSigner`]), `signature`: a detached CMS SignedData over the manifest.
//!   Without one the pass is unsigned: Wallet refuses it, but its content is complete, which is
//!   what tests and previews check.
//! - Google Wallet: a "save" link ([`GoogleWallet::save_link`]) whose JWT (RS256, signed with
//!   the service account's key) carries a loyalty object with the same QR code and balance.
//!
//! Both are made from a [`CardPass`], the member's status at the time of the call: a pass is
//! current when it is made, and a new download is how it is refreshed.

mod apple;
mod google;
mod images;
mod signature;

pub use apple::{ApplePasses, MANIFEST, PASS_JSON, PKPASS_CONTENT_TYPE, SIGNATURE};
pub use google::{GoogleWallet, SAVE_URL_PREFIX};
pub use signature::PassSigner;

/// The wallets' settings: Apple's (always there: unsigned passes unless a certificate is
/// configured) and Google's (`None`: no save link).
#[derive(Clone, Debug, Default)]
pub struct WalletConfig {
    pub apple: ApplePasses,
    pub google: Option<GoogleWallet>,
}

/// Why a pass could not be configured or made.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// A certificate, key or identifier that cannot be used; names which.
    #[error("{what}: {reason}")]
    Config { what: &'static str, reason: String },
    /// Encoding the pass (images, archive, JSON) failed.
    #[error("building the pass: {0}")]
    Build(String),
    /// Signing failed.
    #[error("signing the pass: {0}")]
    Sign(String),
}

impl WalletError {
    pub(crate) fn config(what: &'static str, reason: impl std::fmt::Display) -> WalletError {
        WalletError::Config {
            what,
            reason: reason.to_string(),
        }
    }
}

/// The language of a pass's labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    Fr,
    En,
}

impl Language {
    pub(crate) fn pick(self, fr: &'static str, en: &'static str) -> &'static str {
        match self {
            Language::Fr => fr,
            Language::En => en,
        }
    }
}

/// A stamp card's progress: `stamps` of `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamps {
    pub stamps: u32,
    pub size: u32,
}

/// What a pass shows: the member's card as it stands now. No name, e-mail or phone: the pass
/// is identified by the member id and scanned by its QR token, like the card page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardPass {
    /// The franchise's id: part of the Google object's id (member ids are per franchise).
    pub franchise_id: String,
    /// The franchise's name: the pass's organisation and logo text.
    pub franchise_name: String,
    /// The member id: the Apple pass's serial number and the Google object's account id.
    pub member_id: String,
    /// The member's QR token (what the till scans), as on the card page.
    pub qr_token: String,
    /// The points balance.
    pub points: u64,
    /// The current tier's name.
    pub tier: String,
    /// The next tier and what is left to reach it, already phrased (e.g. "Gold: 120 points").
    pub next_tier: Option<String>,
    /// The stamp card, when the program has one.
    pub stamps: Option<Stamps>,
    /// The labels' language.
    pub language: Language,
}
