//! The POS topic, version 1: records that chains stream from their tills straight into Kafka,
//! and how one becomes a [`CommandEnvelope`] (the contract is `docs/pos-topic.md`, the schema
//! `docs/pos-topic/v1.schema.json`).
//!
//! A record is one JSON object (a purchase, refund, redemption or enrolment) naming its
//! franchise, its store, the client's event id and `occurred_at`, with the fields of the HTTP
//! API. Two headers go with it: `loyalty-schema-version: 1` and `loyalty-signature: v1=<hex>`,
//! the HMAC-SHA256 of the exact payload bytes under the store's signing secret
//! ([`crate::identity::pos_signing_secret`], derived from the franchise's secret and the store
//! id, so nothing new is stored and the platform can always verify).
//!
//! [`decode`] checks, in order: the size, the schema version, that the payload is a JSON
//! object, the franchise and store ids, that the store exists and is the franchise's, the
//! signature (constant time), then the record's fields with the same validation as HTTP input
//! ([`crate::input`]). Each refusal is a [`Rejected`] with a machine-readable [`Reason`]; a
//! record that does not verify under its own store's secret never gets further than the
//! signature check, so it changes nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use hmac::{Hmac, KeyInit, Mac};
use loyalty_domain::{
    Cents, Consent, Currency, EventId, FranchiseId, MemberId, Outcome, Program, PurchaseItemSpec,
    RewardId, StoreId, Timestamp,
};
use serde::Deserialize;
use sha2::Sha256;

use crate::command::{CommandEnvelope, PosCommand};
use crate::identity;
use crate::input::{self, InputError};
use crate::model::{Franchise, Store};
use crate::ports::StateStore;
use crate::programs::ProgramCache;
use crate::Result;

/// The schema version this platform reads.
pub const SCHEMA_VERSION: &str = "1";
/// Header carrying the schema version of the payload.
pub const SCHEMA_VERSION_HEADER: &str = "loyalty-schema-version";
/// Header carrying the signature(s): `v1=<64 hex>`, several separated by commas.
pub const SIGNATURE_HEADER: &str = "loyalty-signature";
/// The largest payload accepted by default (the HTTP API's default body limit).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// At most this many `v1=` signatures of one header are tried (each costs an HMAC of the
/// payload): enough for a rotation, too few to make a record expensive.
const MAX_SIGNATURES: usize = 4;

/// Why a record is refused: the `dlq-reason` of its dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The payload is larger than the limit.
    TooLarge,
    /// The schema version header is missing or names a version this platform does not read.
    SchemaVersion,
    /// The payload is not a JSON object.
    Undecodable,
    /// The store does not exist, or is not a store of the franchise the record names.
    UnknownStore,
    /// The signature is missing, malformed, or does not verify under the store's secret.
    BadSignature,
    /// A field is missing, unknown, of the wrong type or out of bounds.
    Invalid,
    /// The QR token was not issued by the franchise.
    UnknownMember,
    /// The purchase is not in the program's currency.
    CurrencyMismatch,
    /// The reward is not in the program's catalogue.
    UnknownReward,
    /// A refund that names no member, of a purchase that is not (yet) applied.
    UnknownPurchase,
    /// A refund of an anonymous sale.
    AnonymousRefund,
    /// The platform could not use the record for a reason of its own (corrupt stored data,
    /// the command topic refusing it); the detail says which.
    Internal,
}

impl Reason {
    /// Every reason, for documentation and tests.
    pub const ALL: [Reason; 12] = [
        Reason::TooLarge,
        Reason::SchemaVersion,
        Reason::Undecodable,
        Reason::UnknownStore,
        Reason::BadSignature,
        Reason::Invalid,
        Reason::UnknownMember,
        Reason::CurrencyMismatch,
        Reason::UnknownReward,
        Reason::UnknownPurchase,
        Reason::AnonymousRefund,
        Reason::Internal,
    ];

    /// The stable code (`dlq-reason` header, metrics label).
    pub fn code(self) -> &'static str {
        match self {
            Reason::TooLarge => "too-large",
            Reason::SchemaVersion => "schema-version",
            Reason::Undecodable => "undecodable",
            Reason::UnknownStore => "unknown-store",
            Reason::BadSignature => "bad-signature",
            Reason::Invalid => "invalid",
            Reason::UnknownMember => "unknown-member",
            Reason::CurrencyMismatch => "currency-mismatch",
            Reason::UnknownReward => "unknown-reward",
            Reason::UnknownPurchase => "unknown-purchase",
            Reason::AnonymousRefund => "anonymous-refund",
            Reason::Internal => "internal",
        }
    }
}

/// A refused record: its reason and a human-readable detail (which names the field, never
/// echoes a phone number it was given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reason,
    pub detail: String,
}

impl Rejected {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejected {
        Rejected {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<InputError> for Rejected {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Invalid(d) => Rejected::new(Reason::Invalid, d),
            InputError::UnknownMember => Rejected::new(
                Reason::UnknownMember,
                "the QR token was not issued by this franchise",
            ),
        }
    }
}

impl From<loyalty_domain::Rejection> for Rejected {
    fn from(r: loyalty_domain::Rejection) -> Self {
        use loyalty_domain::Rejection as R;
        let reason = match &r {
            R::CurrencyMismatch { .. } => Reason::CurrencyMismatch,
            R::UnknownReward { .. } => Reason::UnknownReward,
            R::UnknownPurchase { .. } => Reason::UnknownPurchase,
            R::UnknownMember => Reason::UnknownMember,
            R::InsufficientPoints { .. }
            | R::RefundExceedsPurchase { .. }
            | R::LimitExceeded { .. }
            | R::MemberErased
            | R::RewardNotValid { .. }
            | R::RedemptionLimitReached { .. }
            | R::UnknownRedemption { .. }
            | R::RedemptionAlreadyCancelled { .. }
            | R::CancellationWindowClosed { .. }
            | R::EmailRequired
            | R::RedemptionCodesNotOffered
            | R::UnknownCode
            | R::CodeAlreadyUsed { .. }
            | R::CodeExpired { .. }
            | R::CodeVoided { .. } => Reason::Invalid,
        };
        Rejected::new(reason, r.to_string())
    }
}

/// What a refund's purchase was, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurchaseOwner {
    /// A purchase of this member.
    Member(MemberId),
    /// An anonymous sale (which cannot be refunded through the program).
    Anonymous,
}

/// What decoding needs to know about the platform's configuration and records.
#[async_trait]
pub trait Directory: Send + Sync {
    async fn store(&self, id: &StoreId) -> Result<Option<Store>>;
    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Arc<Franchise>>>;
    async fn program(&self, franchise: &FranchiseId, version: u32) -> Result<Option<Arc<Program>>>;
    /// The purchase `event_id` of `franchise`, if it is applied (or, for a directory that
    /// knows it, on its way to being applied).
    async fn purchase(
        &self,
        franchise: &FranchiseId,
        event_id: &EventId,
    ) -> Result<Option<PurchaseOwner>>;
}

/// Signs `payload` for the store whose signing secret is `signing_secret`: the value of the
/// `loyalty-signature` header, `v1=<hex of HMAC-SHA256(secret, payload)>`. The key is the
/// secret's text as given (its 64 ASCII characters), as `openssl dgst -sha256 -hmac` takes it.
pub fn sign(signing_secret: &str, payload: &[u8]) -> String {
    format!("v1={}", HEXLOWER.encode(&mac(signing_secret, payload)))
}

fn mac(secret: &str, payload: &[u8]) -> [u8; 32] {
    let mut m = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(payload);
    m.finalize().into_bytes().into()
}

/// Whether one of the `v1=` signatures of `header` is the payload's under `signing_secret`.
/// The comparison is constant-time ([`Mac::verify_slice`]).
pub fn verify(signing_secret: &str, payload: &[u8], header: &[u8]) -> Result<(), Rejected> {
    let header = std::str::from_utf8(header)
        .map_err(|_| Rejected::new(Reason::BadSignature, "the signature header is not text"))?;
    // The payload is hashed once; each candidate only finalizes a copy.
    let mut keyed = match HmacSha256::new_from_slice(signing_secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    keyed.update(payload);
    let mut candidates = 0;
    for item in header.split(',') {
        let Some((scheme, hex)) = item.trim().split_once('=') else {
            continue;
        };
        if scheme.trim() != "v1" {
            continue;
        }
        candidates += 1;
        if candidates > MAX_SIGNATURES {
            break;
        }
        let Ok(tag) = HEXLOWER_PERMISSIVE.decode(hex.trim().as_bytes()) else {
            continue;
        };
        if keyed.clone().verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(Rejected::new(
        Reason::BadSignature,
        if candidates == 0 {
            "the loyalty-signature header has no v1=<hex> signature"
        } else {
            "no v1 signature verifies under the store's signing secret"
        },
    ))
}

/// The first header named `name`.
pub fn header<'a>(headers: &'a [(String, Bytes)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
}

/// A record of the POS topic, v1, as JSON.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum PosRecord {
    Purchase {
        // Checked against the store before the signature.
        #[allow(dead_code)]
        franchise_id: FranchiseId,
        store_id: StoreId,
        event_id: EventId,
        occurred_at: String,
        member_id: Option<String>,
        phone: Option<String>,
        qr: Option<String>,
        amount_cents: Cents,
        currency: Currency,
        #[serde(default, deserialize_with = "loyalty_domain::items::item_specs")]
        items: Option<Vec<PurchaseItemSpec>>,
    },
    Refund {
        // Checked against the store before the signature.
        #[allow(dead_code)]
        franchise_id: FranchiseId,
        store_id: StoreId,
        event_id: EventId,
        occurred_at: String,
        purchase_event_id: EventId,
        /// Absent or null: a void (all that is left of the purchase).
        amount_cents: Option<Cents>,
        member_id: Option<String>,
        phone: Option<String>,
        qr: Option<String>,
    },
    Redemption {
        // Checked against the store before the signature.
        #[allow(dead_code)]
        franchise_id: FranchiseId,
        store_id: StoreId,
        event_id: EventId,
        occurred_at: String,
        member_id: MemberId,
        reward_id: RewardId,
    },
    Enrolment {
        // Checked against the store before the signature.
        #[allow(dead_code)]
        franchise_id: FranchiseId,
        store_id: StoreId,
        /// Validated, but an enrolment's event id is the member's (`enrol.<member_id>`).
        #[allow(dead_code)]
        event_id: EventId,
        occurred_at: String,
        phone: String,
        name: Option<String>,
        birthday: Option<String>,
        /// The channels the member agrees to receive offers on (none when left out); an
        /// object only.
        #[serde(default, deserialize_with = "loyalty_domain::object::option")]
        consent: Option<Consent>,
        /// Where e-mail offers go (optional; validated like over HTTP).
        #[serde(default)]
        email: Option<String>,
    },
}

fn sender_id<T>(
    object: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    parse: impl Fn(&str) -> std::result::Result<T, loyalty_domain::DomainError>,
) -> Result<T, Rejected> {
    match object.get(field) {
        Some(serde_json::Value::String(s)) => {
            parse(s).map_err(|e| Rejected::new(Reason::Invalid, e.to_string()))
        }
        Some(_) => Err(Rejected::new(
            Reason::Invalid,
            format!("{field} must be a string"),
        )),
        None => Err(Rejected::new(
            Reason::Invalid,
            format!("missing field `{field}`"),
        )),
    }
}

/// Limits applied to records.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Turns a record of the POS topic into the command it carries, stamped with the franchise's
/// current program version and `now` as its arrival time. The outer `Err` is the directory's
/// failure (the caller retries a transient one); the inner one the record's refusal.
pub async fn decode(
    dir: &dyn Directory,
    payload: &[u8],
    headers: &[(String, Bytes)],
    limits: Limits,
    now: Timestamp,
) -> Result<Result<CommandEnvelope, Rejected>> {
    if payload.len() > limits.max_record_bytes {
        return Ok(Err(Rejected::new(
            Reason::TooLarge,
            format!(
                "the payload has {} bytes, more than {}",
                payload.len(),
                limits.max_record_bytes
            ),
        )));
    }
    match header(headers, SCHEMA_VERSION_HEADER) {
        Some(v) if v == SCHEMA_VERSION.as_bytes() => {}
        Some(v) => {
            let shown: String = String::from_utf8_lossy(v).chars().take(16).collect();
            return Ok(Err(Rejected::new(
                Reason::SchemaVersion,
                format!("schema version {shown:?} is not read here (this platform reads {SCHEMA_VERSION})"),
            )));
        }
        None => {
            return Ok(Err(Rejected::new(
                Reason::SchemaVersion,
                format!("missing header {SCHEMA_VERSION_HEADER}"),
            )))
        }
    }
    // Who the payload says it comes from, read before the signature can be checked.
    let sender: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(payload) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(Rejected::new(
                Reason::Undecodable,
                format!("the payload is not a JSON object: {e}"),
            )))
        }
    };
    let franchise_id = match sender_id(&sender, "franchise_id", FranchiseId::parse) {
        Ok(id) => id,
        Err(r) => return Ok(Err(r)),
    };
    let store_id = match sender_id(&sender, "store_id", StoreId::parse) {
        Ok(id) => id,
        Err(r) => return Ok(Err(r)),
    };
    let unknown_store = || {
        Rejected::new(
            Reason::UnknownStore,
            format!("franchise {franchise_id} has no store {store_id}"),
        )
    };
    // A store of another franchise is answered like an unknown one.
    match dir.store(&store_id).await? {
        Some(s) if s.franchise_id == franchise_id => {}
        _ => return Ok(Err(unknown_store())),
    }
    let Some(franchise) = dir.franchise(&franchise_id).await? else {
        return Ok(Err(unknown_store()));
    };
    let Some(signature) = header(headers, SIGNATURE_HEADER) else {
        return Ok(Err(Rejected::new(
            Reason::BadSignature,
            format!("missing header {SIGNATURE_HEADER}"),
        )));
    };
    let secret = identity::pos_signing_secret(&franchise.secret, &store_id);
    if let Err(r) = verify(&secret, payload, signature) {
        return Ok(Err(r));
    }
    // Authenticated: now the fields, as strictly as HTTP input.
    let record: PosRecord = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return Ok(Err(Rejected::new(Reason::Invalid, e.to_string()))),
    };
    let Some(program) = dir
        .program(&franchise.id, franchise.program_version)
        .await?
    else {
        return Ok(Err(Rejected::new(
            Reason::Internal,
            format!(
                "franchise {} has no program version {}",
                franchise.id, franchise.program_version
            ),
        )));
    };
    validate(dir, record, &franchise, &program, now).await
}

/// The command of an authenticated record of `franchise`.
async fn validate(
    dir: &dyn Directory,
    record: PosRecord,
    franchise: &Franchise,
    program: &Program,
    now: Timestamp,
) -> Result<Result<CommandEnvelope, Rejected>> {
    let secret = franchise.secret.as_str();
    let client_id = match &record {
        PosRecord::Purchase { event_id, .. }
        | PosRecord::Refund { event_id, .. }
        | PosRecord::Redemption { event_id, .. } => Some(event_id),
        PosRecord::Enrolment { .. } => None,
    };
    if let Some(Err(e)) = client_id.map(|id| input::client_event_id("event_id", id)) {
        return Ok(Err(e.into()));
    }
    let envelope = |store_id: StoreId, event_id: EventId, at: Timestamp, command| CommandEnvelope {
        franchise_id: franchise.id.clone(),
        store_id,
        event_id,
        program_version: franchise.program_version,
        occurred_at: Some(at),
        received_at: now,
        request_id: None,
        reply_to: None,
        command,
    };
    // `franchise_id` was checked against the store before the signature.
    let env = match record {
        PosRecord::Purchase {
            store_id,
            event_id,
            occurred_at,
            member_id,
            phone,
            qr,
            amount_cents,
            currency,
            items,
            ..
        } => {
            let checked = (|| -> Result<_, Rejected> {
                input::purchase_currency(program, &currency)?;
                let items = input::purchase_items(items.as_deref(), amount_cents)?;
                let member = input::member_ref(
                    secret,
                    member_id.as_deref(),
                    phone.as_deref(),
                    qr.as_deref(),
                )?;
                let at = input::occurred_at(&occurred_at, now)?;
                Ok((member, at, items))
            })();
            let (member, at, items) = match checked {
                Ok(x) => x,
                Err(r) => return Ok(Err(r)),
            };
            envelope(
                store_id,
                event_id,
                at,
                PosCommand::Purchase {
                    member_id: member,
                    amount_cents,
                    currency,
                    items,
                },
            )
        }
        PosRecord::Refund {
            store_id,
            event_id,
            occurred_at,
            purchase_event_id,
            amount_cents,
            member_id,
            phone,
            qr,
            ..
        } => {
            let checked = (|| -> Result<_, Rejected> {
                if let Some(a) = amount_cents {
                    input::refund_amount(a)?;
                }
                let member = input::member_ref(
                    secret,
                    member_id.as_deref(),
                    phone.as_deref(),
                    qr.as_deref(),
                )?;
                let at = input::occurred_at(&occurred_at, now)?;
                Ok((member, at))
            })();
            let (member, at) = match checked {
                Ok(x) => x,
                Err(r) => return Ok(Err(r)),
            };
            // Named: the member's actor checks that the purchase is the member's. Not named:
            // the purchase's member, as over HTTP.
            let member = match member {
                Some(m) => m,
                None => match dir.purchase(&franchise.id, &purchase_event_id).await? {
                    Some(PurchaseOwner::Member(m)) => m,
                    Some(PurchaseOwner::Anonymous) => {
                        return Ok(Err(Rejected::new(
                            Reason::AnonymousRefund,
                            format!("{purchase_event_id} is an anonymous sale"),
                        )))
                    }
                    None => {
                        return Ok(Err(Rejected::new(
                            Reason::UnknownPurchase,
                            format!(
                                "no applied purchase {purchase_event_id}; a refund sent right \
                                 behind its purchase should name the member"
                            ),
                        )))
                    }
                },
            };
            envelope(
                store_id,
                event_id,
                at,
                PosCommand::Refund {
                    member_id: Some(member),
                    purchase_event_id,
                    amount_cents,
                },
            )
        }
        PosRecord::Redemption {
            store_id,
            event_id,
            occurred_at,
            member_id,
            reward_id,
            ..
        } => {
            let checked = (|| -> Result<_, Rejected> {
                input::reward(program, &reward_id)?;
                Ok(input::occurred_at(&occurred_at, now)?)
            })();
            let at = match checked {
                Ok(x) => x,
                Err(r) => return Ok(Err(r)),
            };
            envelope(
                store_id,
                event_id,
                at,
                PosCommand::Redemption {
                    member_id,
                    reward_id,
                    code: None,
                },
            )
        }
        PosRecord::Enrolment {
            store_id,
            occurred_at,
            phone,
            name,
            birthday,
            consent,
            email,
            ..
        } => {
            let checked = (|| -> Result<_, Rejected> {
                let profile = input::profile(&phone, name, birthday, consent.unwrap_or_default())?;
                let profile = input::with_email(profile, email.as_deref())?;
                let at = input::occurred_at(&occurred_at, now)?;
                Ok((profile, at))
            })();
            let (profile, at) = match checked {
                Ok(x) => x,
                Err(r) => return Ok(Err(r)),
            };
            let member = identity::member_id(secret, &profile.phone);
            // One enrolment event per member, as over HTTP: a second enrolment of the phone,
            // from any store or channel, is its replay.
            let event_id = match EventId::parse(&format!("enrol.{member}")) {
                Ok(id) => id,
                Err(e) => return Ok(Err(Rejected::new(Reason::Internal, e.to_string()))),
            };
            envelope(
                store_id,
                event_id,
                at,
                PosCommand::Enrol {
                    member_id: member,
                    profile,
                },
            )
        }
    };
    Ok(Ok(env))
}

/// Stores are cached for good (a store never changes franchise), franchises for this long (the
/// program version follows a program update within it, as in the gateway).
const FRANCHISE_TTL: Duration = Duration::from_secs(1);
/// Purchases remembered as forwarded, for the refunds right behind them.
const RECENT_PURCHASES: usize = 65_536;

/// A [`Directory`] over the durable store, with caches, that also remembers the purchases it
/// was told were forwarded ([`StoreDirectory::forwarded`]) so that a refund streamed right
/// behind its purchase finds its member before the engine has applied the purchase.
pub struct StoreDirectory {
    store: Arc<dyn StateStore>,
    programs: ProgramCache,
    stores: DashMap<StoreId, Store>,
    franchises: DashMap<FranchiseId, (Arc<Franchise>, Instant)>,
    recent: parking_lot::Mutex<RecentPurchases>,
}

#[derive(Default)]
struct RecentPurchases {
    owners: HashMap<(FranchiseId, EventId), PurchaseOwner>,
    order: VecDeque<(FranchiseId, EventId)>,
}

impl StoreDirectory {
    pub fn new(store: Arc<dyn StateStore>) -> StoreDirectory {
        StoreDirectory {
            programs: ProgramCache::new(Arc::clone(&store)),
            store,
            stores: DashMap::new(),
            franchises: DashMap::new(),
            recent: parking_lot::Mutex::new(RecentPurchases::default()),
        }
    }

    /// Notes a command on its way to the command topic (only purchases are kept, a bounded
    /// number of them).
    pub fn forwarded(&self, env: &CommandEnvelope) {
        let PosCommand::Purchase { member_id, .. } = &env.command else {
            return;
        };
        let owner = match member_id {
            Some(m) => PurchaseOwner::Member(m.clone()),
            None => PurchaseOwner::Anonymous,
        };
        let key = (env.franchise_id.clone(), env.event_id.clone());
        let mut recent = self.recent.lock();
        if recent.owners.insert(key.clone(), owner).is_none() {
            recent.order.push_back(key);
        }
        while recent.order.len() > RECENT_PURCHASES {
            if let Some(old) = recent.order.pop_front() {
                recent.owners.remove(&old);
            }
        }
    }
}

#[async_trait]
impl Directory for StoreDirectory {
    async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
        if let Some(s) = self.stores.get(id) {
            return Ok(Some(s.clone()));
        }
        let found = self.store.store(id).await?;
        if let Some(s) = &found {
            self.stores.insert(id.clone(), s.clone());
        }
        Ok(found)
    }

    async fn franchise(&self, id: &FranchiseId) -> Result<Option<Arc<Franchise>>> {
        if let Some(e) = self.franchises.get(id) {
            if e.1.elapsed() < FRANCHISE_TTL {
                return Ok(Some(Arc::clone(&e.0)));
            }
        }
        let found = self.store.franchise(id).await?.map(Arc::new);
        if let Some(f) = &found {
            self.franchises
                .insert(id.clone(), (Arc::clone(f), Instant::now()));
        }
        Ok(found)
    }

    async fn program(&self, franchise: &FranchiseId, version: u32) -> Result<Option<Arc<Program>>> {
        self.programs.get(franchise, version).await
    }

    async fn purchase(
        &self,
        franchise: &FranchiseId,
        event_id: &EventId,
    ) -> Result<Option<PurchaseOwner>> {
        let rec = self
            .store
            .processed(franchise, std::slice::from_ref(event_id))
            .await?
            .into_iter()
            .next()
            .flatten();
        if let Some(rec) = rec {
            // The store's record is the truth, whatever was forwarded.
            return Ok(match rec.outcome {
                Outcome::Purchase(_) => rec.member_id.map(PurchaseOwner::Member),
                Outcome::AnonymousSale { .. } => Some(PurchaseOwner::Anonymous),
                _ => None,
            });
        }
        let key = (franchise.clone(), event_id.clone());
        Ok(self.recent.lock().owners.get(&key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_domain::Phone;
    use serde_json::{json, Value};

    const NOW: Timestamp = Timestamp(1_764_064_800_000); // 2025-11-25T10:00:00Z

    /// Two franchises, A (stores a1, a2) and B (store b1).
    struct Fixture {
        stores: HashMap<StoreId, Store>,
        franchises: HashMap<FranchiseId, Arc<Franchise>>,
        program: Arc<Program>,
        purchases: HashMap<EventId, PurchaseOwner>,
    }

    fn fid(s: &str) -> FranchiseId {
        FranchiseId::parse(s).unwrap()
    }
    fn sid(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }

    impl Fixture {
        fn new() -> Fixture {
            let mut stores = HashMap::new();
            let mut franchises = HashMap::new();
            for (f, secret, ss) in [
                ("f_a", "secret-a", &["s_a1", "s_a2"][..]),
                ("f_b", "secret-b", &["s_b1"][..]),
            ] {
                franchises.insert(
                    fid(f),
                    Arc::new(Franchise {
                        id: fid(f),
                        name: f.into(),
                        secret: secret.into(),
                        program_version: 3,
                        created_at: Timestamp(0),
                    }),
                );
                for s in ss {
                    stores.insert(
                        sid(s),
                        Store {
                            id: sid(s),
                            franchise_id: fid(f),
                            name: s.to_string(),
                            created_at: Timestamp(0),
                        },
                    );
                }
            }
            Fixture {
                stores,
                franchises,
                program: Arc::new(Program::demo()),
                purchases: HashMap::new(),
            }
        }

        fn secret(&self, store: &str) -> String {
            let s = &self.stores[&sid(store)];
            identity::pos_signing_secret(&self.franchises[&s.franchise_id].secret, &s.id)
        }

        async fn decode_signed_by(
            &self,
            record: &Value,
            signer: &str,
        ) -> Result<CommandEnvelope, Rejected> {
            let payload = serde_json::to_vec(record).unwrap();
            let headers = vec![
                (SCHEMA_VERSION_HEADER.to_string(), Bytes::from_static(b"1")),
                (
                    SIGNATURE_HEADER.to_string(),
                    Bytes::from(sign(&self.secret(signer), &payload)),
                ),
            ];
            self.decode_raw(&payload, &headers).await
        }

        async fn decode(&self, record: &Value) -> Result<CommandEnvelope, Rejected> {
            let store = record["store_id"].as_str().unwrap().to_string();
            self.decode_signed_by(record, &store).await
        }

        async fn decode_raw(
            &self,
            payload: &[u8],
            headers: &[(String, Bytes)],
        ) -> Result<CommandEnvelope, Rejected> {
            decode(self, payload, headers, Limits::default(), NOW)
                .await
                .expect("the fixture never fails")
        }
    }

    #[async_trait]
    impl Directory for Fixture {
        async fn store(&self, id: &StoreId) -> Result<Option<Store>> {
            Ok(self.stores.get(id).cloned())
        }
        async fn franchise(&self, id: &FranchiseId) -> Result<Option<Arc<Franchise>>> {
            Ok(self.franchises.get(id).cloned())
        }
        async fn program(&self, _: &FranchiseId, version: u32) -> Result<Option<Arc<Program>>> {
            Ok((version == 3).then(|| Arc::clone(&self.program)))
        }
        async fn purchase(&self, _: &FranchiseId, e: &EventId) -> Result<Option<PurchaseOwner>> {
            Ok(self.purchases.get(e).cloned())
        }
    }

    fn purchase() -> Value {
        json!({
            "type": "purchase", "franchise_id": "f_a", "store_id": "s_a1",
            "event_id": "till-1:0001", "occurred_at": "2025-11-25T09:58:00Z",
            "phone": "+33698765432", "amount_cents": 1250, "currency": "EUR"
        })
    }

    fn member() -> MemberId {
        identity::member_id("secret-a", &Phone::parse("+33698765432").unwrap())
    }

    fn with(mut v: Value, field: &str, value: Value) -> Value {
        v[field] = value;
        v
    }

    fn without(mut v: Value, field: &str) -> Value {
        v.as_object_mut().unwrap().remove(field);
        v
    }

    #[tokio::test]
    async fn a_signed_purchase_becomes_its_command() {
        let f = Fixture::new();
        let env = f.decode(&purchase()).await.unwrap();
        assert_eq!(env.franchise_id, fid("f_a"));
        assert_eq!(env.store_id, sid("s_a1"));
        assert_eq!(env.event_id.as_str(), "till-1:0001");
        assert_eq!(env.program_version, 3);
        assert_eq!(env.occurred_at, Some(Timestamp(NOW.0 - 120_000)));
        assert_eq!(env.received_at, NOW);
        assert_eq!(
            env.command,
            PosCommand::Purchase {
                member_id: Some(member()),
                amount_cents: Cents::new(1250).unwrap(),
                currency: Currency::parse("EUR").unwrap(),
                items: Vec::new(),
            }
        );
        assert_eq!(env.key(), member().as_str().as_bytes());

        // By member id and by QR token: the same member; by nobody: an anonymous sale.
        let by_id = with(
            without(purchase(), "phone"),
            "member_id",
            json!(member().as_str()),
        );
        assert_eq!(
            f.decode(&by_id).await.unwrap().command.member_id(),
            Some(&member())
        );
        let qr = identity::qr_token("secret-a", &member());
        let by_qr = with(without(purchase(), "phone"), "qr", json!(qr));
        assert_eq!(
            f.decode(&by_qr).await.unwrap().command.member_id(),
            Some(&member())
        );
        let anon = f.decode(&without(purchase(), "phone")).await.unwrap();
        assert_eq!(anon.command.member_id(), None);
        // Explicit nulls are absent fields, as over HTTP.
        let nulls = with(
            with(purchase(), "qr", Value::Null),
            "member_id",
            Value::Null,
        );
        assert!(f.decode(&nulls).await.is_ok());
    }

    #[tokio::test]
    async fn line_items_are_carried_and_validated_like_http_input() {
        let f = Fixture::new();
        let lines = json!([
            { "sku": "CROI-AMANDE", "category": "pastry", "quantity": 2, "amount_cents": 500 },
            { "sku": "LATTE", "quantity": 1, "amount_cents": 450 },
        ]);
        let env = f.decode(&with(purchase(), "items", lines)).await.unwrap();
        let PosCommand::Purchase { items, .. } = &env.command else {
            panic!("a purchase")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].sku.as_str(), "CROI-AMANDE");
        assert_eq!(
            items[0].category.as_ref().map(|c| c.as_str()),
            Some("pastry")
        );
        assert_eq!((items[0].quantity, items[0].amount_cents.get()), (2, 500));
        assert_eq!(items[1].category, None);
        // Null is none, as over HTTP.
        assert!(f
            .decode(&with(purchase(), "items", Value::Null))
            .await
            .is_ok());
        let line =
            |q: i64, cents: i64| json!([{ "sku": "A", "quantity": q, "amount_cents": cents }]);
        for (items, detail) in [
            (
                line(0, 100),
                "items[0].quantity must be between 1 and 10000, got 0",
            ),
            (line(1, -1), "items[0].amount_cents must be between 0 and"),
            (
                line(1, 1251),
                "the items' amounts add up to 1251 cents, more than",
            ),
            (
                json!([{ "sku": "a b", "quantity": 1, "amount_cents": 1 }]),
                "items[0].sku",
            ),
            (json!([["A", null, 1, 100]]), "expected a JSON object"),
            (
                json!([{ "sku": "A", "quantity": 1, "amount_cents": 1, "price": 1 }]),
                "unknown field",
            ),
            (
                json!(vec![
                    json!({ "sku": "A", "quantity": 1, "amount_cents": 0 });
                    201
                ]),
                "at most 200 items",
            ),
        ] {
            let r = f
                .decode(&with(purchase(), "items", items.clone()))
                .await
                .unwrap_err();
            assert_eq!(r.reason, Reason::Invalid, "{items}");
            assert!(r.detail.contains(detail), "{items}: {}", r.detail);
        }
    }

    #[tokio::test]
    async fn the_fingerprint_is_the_records_whenever_it_arrives() {
        let f = Fixture::new();
        let payload = serde_json::to_vec(&purchase()).unwrap();
        let headers = vec![
            (SCHEMA_VERSION_HEADER.to_string(), Bytes::from_static(b"1")),
            (
                SIGNATURE_HEADER.to_string(),
                Bytes::from(sign(&f.secret("s_a1"), &payload)),
            ),
        ];
        let first = decode(&f, &payload, &headers, Limits::default(), NOW)
            .await
            .unwrap()
            .unwrap();
        let later = decode(
            &f,
            &payload,
            &headers,
            Limits::default(),
            Timestamp(NOW.0 + 60_000),
        )
        .await
        .unwrap()
        .unwrap();
        assert_ne!(first.received_at, later.received_at);
        assert_eq!(first.fingerprint(), later.fingerprint());
    }

    #[tokio::test]
    async fn only_the_stores_own_secret_verifies() {
        let f = Fixture::new();
        let reason = |r: Result<CommandEnvelope, Rejected>| r.unwrap_err().reason;
        // Another store of the same franchise, another franchise's store.
        assert_eq!(
            reason(f.decode_signed_by(&purchase(), "s_a2").await),
            Reason::BadSignature
        );
        assert_eq!(
            reason(f.decode_signed_by(&purchase(), "s_b1").await),
            Reason::BadSignature
        );
        // A record for franchise B signed by A's store.
        let for_b = with(
            with(purchase(), "franchise_id", json!("f_b")),
            "store_id",
            json!("s_b1"),
        );
        assert_eq!(
            reason(f.decode_signed_by(&for_b, "s_a1").await),
            Reason::BadSignature
        );
        // Naming B's store as A's, or an unknown store: unknown-store.
        let foreign = with(purchase(), "store_id", json!("s_b1"));
        assert_eq!(
            reason(f.decode_signed_by(&foreign, "s_b1").await),
            Reason::UnknownStore
        );
        let unknown = with(purchase(), "store_id", json!("s_nope"));
        assert_eq!(
            reason(f.decode_signed_by(&unknown, "s_a1").await),
            Reason::UnknownStore
        );
        let unknown_f = with(purchase(), "franchise_id", json!("f_nope"));
        assert_eq!(
            reason(f.decode_signed_by(&unknown_f, "s_a1").await),
            Reason::UnknownStore
        );

        // The signature covers the exact bytes: the same JSON with a space is another payload.
        let payload = serde_json::to_vec(&purchase()).unwrap();
        let sig = sign(&f.secret("s_a1"), &payload);
        let mut spaced = payload.clone();
        spaced.insert(1, b' ');
        let headers = |sig: &str| {
            vec![
                (SCHEMA_VERSION_HEADER.to_string(), Bytes::from_static(b"1")),
                (SIGNATURE_HEADER.to_string(), Bytes::from(sig.to_string())),
            ]
        };
        assert!(f.decode_raw(&payload, &headers(&sig)).await.is_ok());
        assert_eq!(
            reason(f.decode_raw(&spaced, &headers(&sig)).await),
            Reason::BadSignature
        );
        // Upper-case hex, and a list with a future scheme and an old v1: fine.
        let upper = format!("v1={}", sig["v1=".len()..].to_ascii_uppercase());
        assert!(f.decode_raw(&payload, &headers(&upper)).await.is_ok());
        let list = format!("v2=abcd, v1={}, {sig}", "0".repeat(64));
        assert!(f.decode_raw(&payload, &headers(&list)).await.is_ok());
        for bad in ["", "v1=", "v1=zz", "sha256=00", &sig[..sig.len() - 2]] {
            assert_eq!(
                reason(f.decode_raw(&payload, &headers(bad)).await),
                Reason::BadSignature,
                "{bad:?}"
            );
        }
        let unsigned = vec![(SCHEMA_VERSION_HEADER.to_string(), Bytes::from_static(b"1"))];
        assert_eq!(
            reason(f.decode_raw(&payload, &unsigned).await),
            Reason::BadSignature
        );
    }

    #[tokio::test]
    async fn headers_size_and_json_come_first() {
        let f = Fixture::new();
        let payload = serde_json::to_vec(&purchase()).unwrap();
        let sig = Bytes::from(sign(&f.secret("s_a1"), &payload));
        let h = |v: &'static [u8]| {
            vec![
                (SCHEMA_VERSION_HEADER.to_string(), Bytes::from_static(v)),
                (SIGNATURE_HEADER.to_string(), sig.clone()),
            ]
        };
        let reason = |r: Result<CommandEnvelope, Rejected>| r.unwrap_err().reason;
        assert_eq!(
            reason(f.decode_raw(&payload, &h(b"2")).await),
            Reason::SchemaVersion
        );
        assert_eq!(
            reason(f.decode_raw(&payload, &h(b"")).await),
            Reason::SchemaVersion
        );
        let no_version = vec![(SIGNATURE_HEADER.to_string(), sig.clone())];
        assert_eq!(
            reason(f.decode_raw(&payload, &no_version).await),
            Reason::SchemaVersion
        );
        for garbage in [
            &b"{not json"[..],
            b"",
            b"[1,2]",
            b"\"purchase\"",
            b"\xff\xfe",
        ] {
            assert_eq!(
                reason(f.decode_raw(garbage, &h(b"1")).await),
                Reason::Undecodable
            );
        }
        let big = vec![b' '; DEFAULT_MAX_RECORD_BYTES + 1];
        assert_eq!(reason(f.decode_raw(&big, &h(b"1")).await), Reason::TooLarge);
        // Without a sender it cannot be authenticated: invalid, naming the field.
        let r = f
            .decode_raw(br#"{"type":"purchase"}"#, &h(b"1"))
            .await
            .unwrap_err();
        assert_eq!(
            (r.reason, r.detail.as_str()),
            (Reason::Invalid, "missing field `franchise_id`")
        );
    }

    #[tokio::test]
    async fn fields_are_validated_like_http_input() {
        let f = Fixture::new();
        let reason = |r: Result<CommandEnvelope, Rejected>| r.unwrap_err();
        let cases: Vec<(Value, Reason, &str)> = vec![
            (
                with(purchase(), "amount_cents", json!(-1)),
                Reason::Invalid,
                "amount_cents",
            ),
            (
                with(purchase(), "amount_cents", json!(1_000_000_000_001i64)),
                Reason::Invalid,
                "amount_cents",
            ),
            (
                with(purchase(), "amount_cents", json!(12.5)),
                Reason::Invalid,
                "floating point",
            ),
            (
                with(purchase(), "currency", json!("eur")),
                Reason::Invalid,
                "currency",
            ),
            (
                with(purchase(), "currency", json!("USD")),
                Reason::CurrencyMismatch,
                "EUR",
            ),
            (
                with(purchase(), "phone", json!("0612345678")),
                Reason::Invalid,
                "phone",
            ),
            (
                with(purchase(), "member_id", json!("m1")),
                Reason::Invalid,
                "not several",
            ),
            (
                with(without(purchase(), "phone"), "qr", json!("mabc.defg")),
                Reason::UnknownMember,
                "QR",
            ),
            (
                with(purchase(), "event_id", json!("has space")),
                Reason::Invalid,
                "event_id",
            ),
            (
                with(purchase(), "event_id", json!("x".repeat(129))),
                Reason::Invalid,
                "event_id",
            ),
            (
                with(purchase(), "occurred_at", json!("2025-11-25T10:06:00Z")),
                Reason::Invalid,
                "future",
            ),
            (
                with(purchase(), "occurred_at", json!("yesterday")),
                Reason::Invalid,
                "RFC 3339",
            ),
            (
                without(purchase(), "occurred_at"),
                Reason::Invalid,
                "occurred_at",
            ),
            (
                without(purchase(), "amount_cents"),
                Reason::Invalid,
                "amount_cents",
            ),
            (
                with(purchase(), "tip_cents", json!(100)),
                Reason::Invalid,
                "unknown field `tip_cents`",
            ),
            (
                with(purchase(), "type", json!("refundd")),
                Reason::Invalid,
                "unknown variant",
            ),
            (without(purchase(), "type"), Reason::Invalid, "type"),
        ];
        for (record, want, detail) in cases {
            let r = reason(f.decode(&record).await);
            assert_eq!(r.reason, want, "{record}: {}", r.detail);
            assert!(
                r.detail.contains(detail),
                "{record}: {} lacks {detail:?}",
                r.detail
            );
            assert!(
                !r.detail.contains("+33698765432"),
                "a phone number in {}",
                r.detail
            );
        }
    }

    #[tokio::test]
    async fn enrolments_are_one_event_per_member() {
        let f = Fixture::new();
        let rec = json!({
            "type": "enrolment", "franchise_id": "f_a", "store_id": "s_a1",
            "event_id": "till-1:0002", "occurred_at": "2025-11-25T09:59:00Z",
            "phone": "+33698765432", "name": " Ana ", "birthday": "1990-04-17"
        });
        let env = f.decode(&rec).await.unwrap();
        assert_eq!(env.event_id.as_str(), format!("enrol.{}", member()));
        let PosCommand::Enrol { member_id, profile } = &env.command else {
            panic!("{:?}", env.command)
        };
        assert_eq!(member_id, &member());
        assert_eq!(profile.name.as_deref(), Some("Ana"));
        assert_eq!(
            profile.consent,
            Consent::default(),
            "no consent unless given"
        );
        let consenting = with(rec.clone(), "consent", json!({ "email": true }));
        let PosCommand::Enrol { profile, .. } = f.decode(&consenting).await.unwrap().command else {
            panic!("an enrolment")
        };
        assert_eq!(
            profile.consent,
            Consent {
                sms: false,
                email: true
            }
        );
        let listed = with(rec.clone(), "consent", json!([true, true]));
        assert_eq!(f.decode(&listed).await.unwrap_err().reason, Reason::Invalid);
        assert_eq!(profile.email, None, "no address unless given");
        let mailed = with(rec.clone(), "email", json!("Ana@Example.COM"));
        let PosCommand::Enrol { profile, .. } = f.decode(&mailed).await.unwrap().command else {
            panic!("an enrolment")
        };
        assert_eq!(profile.email.as_deref(), Some("Ana@example.com"));
        let bad_mail = with(rec.clone(), "email", json!("ana@localhost"));
        let e = f.decode(&bad_mail).await.unwrap_err();
        assert_eq!(e.reason, Reason::Invalid);
        assert!(!e.detail.contains("ana@"), "no address in {}", e.detail);
        // Another till, another time, another client id: the same event, the same fingerprint,
        // as the HTTP enrolment's (no occurred_at).
        let other = with(
            with(
                with(rec.clone(), "store_id", json!("s_a2")),
                "event_id",
                json!("x"),
            ),
            "occurred_at",
            json!("2025-11-25T08:00:00Z"),
        );
        let env2 = f.decode(&other).await.unwrap();
        assert_eq!(env2.event_id, env.event_id);
        assert_eq!(env2.fingerprint(), env.fingerprint());
        let http = CommandEnvelope {
            occurred_at: None,
            ..env.clone()
        };
        assert_eq!(http.fingerprint(), env.fingerprint());

        let bad = with(rec.clone(), "birthday", json!("17/04/1990"));
        assert_eq!(f.decode(&bad).await.unwrap_err().reason, Reason::Invalid);
        let no_phone = without(rec, "phone");
        assert_eq!(
            f.decode(&no_phone).await.unwrap_err().reason,
            Reason::Invalid
        );
    }

    #[tokio::test]
    async fn the_platforms_own_event_ids_are_refused() {
        let f = Fixture::new();
        let refund = json!({
            "type": "refund", "franchise_id": "f_a", "store_id": "s_a1",
            "event_id": "till-1:0003", "occurred_at": "2025-11-25T09:59:30Z",
            "purchase_event_id": "till-1:0001", "amount_cents": 500
        });
        for id in [
            "sched:m1:1764000000000",
            "enrol.m1",
            "erase.m1",
            "optout.m1.sms.3",
            "consent.m1.3",
        ] {
            let r = f
                .decode(&with(refund.clone(), "event_id", json!(id)))
                .await
                .unwrap_err();
            assert_eq!(r.reason, Reason::Invalid, "{id}");
            assert!(
                r.detail.contains("must not start with"),
                "{id}: {}",
                r.detail
            );
        }
    }

    #[tokio::test]
    async fn refunds_find_their_member_and_redemptions_their_reward() {
        let mut f = Fixture::new();
        let refund = json!({
            "type": "refund", "franchise_id": "f_a", "store_id": "s_a1",
            "event_id": "till-1:0003", "occurred_at": "2025-11-25T09:59:30Z",
            "purchase_event_id": "till-1:0001", "amount_cents": 500
        });
        let r = f.decode(&refund).await.unwrap_err();
        assert_eq!(r.reason, Reason::UnknownPurchase);
        f.purchases.insert(
            EventId::parse("till-1:0001").unwrap(),
            PurchaseOwner::Member(member()),
        );
        let env = f.decode(&refund).await.unwrap();
        assert_eq!(env.command.member_id(), Some(&member()));
        // Named by phone: the same command, whatever the store knows.
        let named = with(refund.clone(), "phone", json!("+33698765432"));
        let env2 = f.decode(&named).await.unwrap();
        assert_eq!(env2.fingerprint(), env.fingerprint());
        // Without an amount, or with a null one: a void (all that is left of the purchase).
        for void in [
            without(named.clone(), "amount_cents"),
            with(named.clone(), "amount_cents", Value::Null),
        ] {
            let env = f.decode(&void).await.unwrap();
            assert!(matches!(
                env.command,
                PosCommand::Refund {
                    amount_cents: None,
                    ..
                }
            ));
            assert_ne!(env.fingerprint(), env2.fingerprint());
        }
        // Named, of a purchase not applied yet (an offline till's): sent to the member's
        // actor, which holds it (README "Refunds and voids").
        let offline = with(named.clone(), "purchase_event_id", json!("till-1:0099"));
        let env = f.decode(&offline).await.unwrap();
        assert_eq!(env.command.member_id(), Some(&member()));
        f.purchases.insert(
            EventId::parse("till-1:0001").unwrap(),
            PurchaseOwner::Anonymous,
        );
        assert_eq!(
            f.decode(&refund).await.unwrap_err().reason,
            Reason::AnonymousRefund
        );

        let redemption = json!({
            "type": "redemption", "franchise_id": "f_a", "store_id": "s_a1",
            "event_id": "till-1:0004", "occurred_at": "2025-11-25T09:59:40Z",
            "member_id": member().as_str(), "reward_id": "free-coffee"
        });
        let env = f.decode(&redemption).await.unwrap();
        assert!(matches!(env.command, PosCommand::Redemption { .. }));
        let unknown = with(redemption.clone(), "reward_id", json!("free-car"));
        assert_eq!(
            f.decode(&unknown).await.unwrap_err().reason,
            Reason::UnknownReward
        );
        let by_phone = with(
            without(redemption, "member_id"),
            "phone",
            json!("+33698765432"),
        );
        assert_eq!(
            f.decode(&by_phone).await.unwrap_err().reason,
            Reason::Invalid
        );
    }

    #[test]
    fn reason_codes_are_distinct() {
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }
}
