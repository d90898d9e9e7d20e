//! What every handler shares: the ports, the program cache, the reply waiters, and the
//! authentication and tenancy checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpMessage, HttpRequest};
use dashmap::DashMap;
use loyalty_core::engine::shard::render_status;
use loyalty_core::identity::hash_api_key;
use loyalty_core::key_changes::{KeyChanges, NoOtherGateway};
use loyalty_core::metrics::metrics;
use loyalty_core::model::{Franchise, Principal, Role};
use loyalty_core::ports::{CachedStatus, EventLog, HotCache, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_core::replies::ReplyWaiters;
use loyalty_domain::{FranchiseId, MemberId, Program};

use crate::problem::ApiError;

/// How long a franchise record (current program version) is reused before re-reading it, so
/// that a program change made through another gateway applies within this delay.
const FRANCHISE_TTL: Duration = Duration::from_secs(1);

/// How long the holder of an API key is reused before the store is asked again: the bound on
/// how long a key rotated or revoked through ANOTHER gateway keeps working on this one (the
/// gateway that rotates or revokes forgets it at once, before it answers). README "API keys".
pub const PRINCIPAL_TTL: Duration = Duration::from_secs(1);

/// Settings of a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The platform operator's key.
    pub admin_key: String,
    /// Topic of POS commands.
    pub topic: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deadline for enrolments and redemptions when the request does not set `wait_ms`.
    pub default_wait: Duration,
    /// The base URL members and posters reach the gateway at (no trailing `/`): the enrolment
    /// QR codes and the card links are made of it.
    pub public_url: String,
    /// This gateway's reply channel when the engine runs in another process (replies then
    /// travel Redis pub/sub); `None` when both share the process.
    pub reply_to: Option<String>,
    /// How long a key's principal is taken from memory before the store is asked again
    /// (`LOYALTY_PRINCIPAL_TTL_MS`): the bound on how long another gateway may take a key
    /// rotated or revoked elsewhere if the announcement of the change is lost.
    pub principal_ttl: Duration,
    /// The card's wallet passes (Apple `.pkpass`, Google save link): README "Members without
    /// an app".
    pub wallet: loyalty_wallet::WalletConfig,
    /// Seals the personal data of the commands it appends and of the one-time codes it holds
    /// (README "Personal data at rest"): the ring the engines open them with.
    pub keys: loyalty_core::sealing::KeyRing,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            admin_key: "dev-admin-key".into(),
            topic: "pos-commands".into(),
            max_body_bytes: 16 * 1024,
            default_wait: Duration::from_millis(2000),
            reply_to: None,
            public_url: "http://127.0.0.1:8080".into(),
            principal_ttl: PRINCIPAL_TTL,
            wallet: loyalty_wallet::WalletConfig::default(),
            keys: loyalty_core::sealing::KeyRing::dev(),
        }
    }
}

/// The shared state of the gateway's handlers.
pub struct Gateway {
    pub store: Arc<dyn StateStore>,
    pub cache: Arc<dyn HotCache>,
    pub log: Arc<dyn EventLog>,
    pub programs: Arc<ProgramCache>,
    pub replies: Arc<ReplyWaiters>,
    pub config: GatewayConfig,
    /// Set once the engine consumes (dev mode) or the log is reachable.
    pub ready: Arc<AtomicBool>,
    /// Holders of the keys seen lately, by key hash, with when they were read from the store.
    principals: DashMap<String, (Principal, Instant)>,
    /// Keys rotated or revoked through this gateway lately, by hash, with when: a lookup that
    /// read the store before that does not put its (old) answer back in `principals`.
    forgotten: DashMap<String, Instant>,
    franchises: DashMap<FranchiseId, (Arc<Franchise>, Instant)>,
    /// Where this gateway announces the keys it rotates or revokes, for the other gateways.
    key_changes: Arc<dyn KeyChanges>,
}

impl Gateway {
    pub fn new(
        store: Arc<dyn StateStore>,
        cache: Arc<dyn HotCache>,
        log: Arc<dyn EventLog>,
        programs: Arc<ProgramCache>,
        replies: Arc<ReplyWaiters>,
        config: GatewayConfig,
        ready: Arc<AtomicBool>,
    ) -> Gateway {
        Gateway {
            store,
            cache,
            log,
            programs,
            replies,
            config,
            ready,
            principals: DashMap::new(),
            forgotten: DashMap::new(),
            franchises: DashMap::new(),
            key_changes: Arc::new(NoOtherGateway),
        }
    }

    /// Announces the keys this gateway rotates or revokes through `key_changes` (Redis
    /// pub/sub when other gateways run), so that they forget them at once.
    pub fn announcing_key_changes(mut self, key_changes: Arc<dyn KeyChanges>) -> Gateway {
        self.key_changes = key_changes;
        self
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The holder of the request's API key: 401 without a valid key. Run by the `/v1`
    /// middleware before any body is read, so a request without a valid key learns nothing.
    pub async fn authenticate(&self, req: &HttpRequest) -> Result<Principal, ApiError> {
        if let Some(p) = req.extensions().get::<Principal>() {
            return Ok(p.clone());
        }
        let key = bearer_key(req.headers())?;
        self.principal_of_key(key).await
    }

    /// The holder of an API key (from a header, or the dashboard page's session cookie): 401
    /// for an empty, oversize or unknown key.
    pub async fn principal_of_key(&self, key: &str) -> Result<Principal, ApiError> {
        if key.is_empty() || key.len() > 200 {
            return Err(ApiError::Unauthorized);
        }
        if is_admin_key(key, &self.config.admin_key) {
            return Ok(Principal {
                role: Role::Admin,
                franchise_id: None,
                store_id: None,
                key_id: None,
            });
        }
        let hash = hash_api_key(key);
        let ttl = self.config.principal_ttl;
        if let Some(e) = self.principals.get(&hash) {
            if e.1.elapsed() < ttl {
                return Ok(e.0.clone());
            }
        }
        let read_at = Instant::now();
        let Some(p) = self.store.api_key(&hash).await? else {
            // Rotated or revoked (through another gateway), or never issued.
            self.principals.remove(&hash);
            return Err(ApiError::Unauthorized);
        };
        // A rotation or revocation through this gateway while the store was read: the answer
        // may predate it, and is not kept.
        if self.forgotten.get(&hash).is_none_or(|at| *at < read_at) {
            self.principals.insert(hash, (p.clone(), read_at));
        }
        // Entries of keys no longer used would stay; drop the expired ones now and then.
        if self.principals.len() > 10_000 {
            self.principals.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        Ok(p)
    }

    /// Forgets the holder of the key whose hash is `key_hash` (a key just rotated or revoked
    /// through this gateway): its next request is authenticated against the store.
    /// The other gateways are told to forget it too.
    pub fn forget_key(&self, key_hash: &str) {
        self.forget_here(key_hash);
        self.key_changes.announce(key_hash);
    }

    /// Forgets what another gateway announced: the key whose hash is `key_hash`, or every key
    /// (`None`: announcements may have been missed).
    pub fn forget_announced(&self, key_hash: Option<&str>) {
        match key_hash {
            Some(hash) => self.forget_here(hash),
            None => self.principals.clear(),
        }
    }

    fn forget_here(&self, key_hash: &str) {
        let keep = self.config.principal_ttl * 10;
        self.forgotten.retain(|_, at| at.elapsed() < keep);
        self.forgotten.insert(key_hash.to_owned(), Instant::now());
        self.principals.remove(key_hash);
    }

    /// The caller's principal if its role is one of `roles`: 401 without a valid key, 403 for
    /// another role.
    pub async fn authorize(
        &self,
        req: &HttpRequest,
        roles: &[Role],
    ) -> Result<Principal, ApiError> {
        let principal = self.authenticate(req).await?;
        if roles.contains(&principal.role) {
            Ok(principal)
        } else if principal.role == Role::HqReadOnly && roles.contains(&Role::Hq) {
            Err(ApiError::Forbidden(READ_ONLY))
        } else {
            let hq = roles.iter().any(|r| r.reads_hq());
            Err(ApiError::Forbidden(match roles {
                [Role::Admin] => "only the platform admin key may do this",
                [Role::Store] => "only a store key may do this",
                _ if roles.contains(&Role::Store) && hq => "only a store or HQ key may do this",
                _ if roles.contains(&Role::Admin) => {
                    "only the platform admin key or an HQ key may do this"
                }
                _ => "only a franchise HQ key may do this",
            }))
        }
    }

    /// The franchise of a principal (HQ or store keys).
    pub async fn franchise_of(&self, p: &Principal) -> Result<Arc<Franchise>, ApiError> {
        let id = p
            .franchise_id
            .as_ref()
            .ok_or(ApiError::Forbidden("this key belongs to no franchise"))?;
        self.franchise(id)
            .await?
            .ok_or_else(|| ApiError::NotFound("franchise not found".into()))
    }

    /// A franchise, from a short-lived cache.
    pub async fn franchise(&self, id: &FranchiseId) -> Result<Option<Arc<Franchise>>, ApiError> {
        if let Some(e) = self.franchises.get(id) {
            if e.1.elapsed() < FRANCHISE_TTL {
                return Ok(Some(Arc::clone(&e.0)));
            }
        }
        let Some(f) = self.store.franchise(id).await? else {
            return Ok(None);
        };
        let f = Arc::new(f);
        self.franchises
            .insert(id.clone(), (Arc::clone(&f), Instant::now()));
        Ok(Some(f))
    }

    /// Records a franchise just changed through this gateway.
    pub fn franchise_changed(&self, f: Franchise) {
        self.franchises
            .insert(f.id.clone(), (Arc::new(f), Instant::now()));
    }

    /// The franchise's current program.
    pub async fn program(&self, f: &Franchise) -> Result<Arc<Program>, ApiError> {
        self.programs
            .get(&f.id, f.program_version)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "franchise {} has no program v{}",
                    f.id, f.program_version
                ))
            })
    }

    /// The status of `member` as served at the till, if the member exists in `franchise`:
    /// from the hot cache, else rebuilt from the store (and put back in the cache).
    ///
    /// A cached status rendered with an older program than the franchise's current one
    /// (`stale`: the program changed since the member's last event) is rendered again with the
    /// current program and put back, so that rewards, stamp card and tiers follow a program
    /// change at once for every member (within [`FRANCHISE_TTL`] on every gateway).
    pub async fn member_status(
        &self,
        franchise: &Franchise,
        member: &MemberId,
    ) -> Result<Option<CachedStatus>, ApiError> {
        match self.cache.status(member).await {
            Ok(Some(s)) if s.franchise_id != franchise.id => {
                metrics().cache_lookups.with_label_values(&["hit"]).inc();
                return Ok(None);
            }
            Ok(Some(s)) if s.program_version >= franchise.program_version => {
                metrics().cache_lookups.with_label_values(&["hit"]).inc();
                return Ok(Some(s));
            }
            Ok(Some(_)) => metrics().cache_lookups.with_label_values(&["stale"]).inc(),
            Ok(None) => metrics().cache_lookups.with_label_values(&["miss"]).inc(),
            Err(e) => {
                metrics().cache_lookups.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "hot cache read failed; reading the store");
            }
        }
        let Some(state) = self.store.member(member).await? else {
            return Ok(None);
        };
        if state.franchise_id != franchise.id {
            return Ok(None);
        }
        let program = self.program(franchise).await?;
        let status = render_status(&state, &program, franchise.program_version);
        if let Err(e) = self
            .cache
            .put_statuses(vec![(member.clone(), status.clone())])
            .await
        {
            tracing::warn!(error = %e, "hot cache fill failed");
        }
        Ok(Some(status))
    }
}

/// The key of the request's `Authorization: Bearer <key>` header (RFC 9110 §11.6.2, RFC 6750
/// §2.1): the scheme in any case, one space, then the key, one run of visible characters (no
/// space or tab inside; surrounding whitespace is not part of a field value and the HTTP parser
/// has removed it). Anything else is 401. Two `Authorization` headers are 400
/// (`ambiguous-authorization`): the field is not a list (RFC 9110 §5.3), and RFC 6750 §3.1
/// answers `invalid_request` to a request that sends its token more than once; which one was
/// meant is not for the server to guess.
pub fn bearer_key(headers: &actix_web::http::header::HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(actix_web::http::header::AUTHORIZATION);
    let value = values.next().ok_or(ApiError::Unauthorized)?;
    let more = values.count();
    if more > 0 {
        return Err(ApiError::AmbiguousAuthorization(more + 1));
    }
    let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
    let (scheme, key) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
    let visible = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic());
    if scheme.eq_ignore_ascii_case("bearer") && visible(key) {
        Ok(key)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Why a read-only HQ key is refused.
pub const READ_ONLY: &str = "this HQ key is read-only: it may read, not change anything";

/// Whether `key` is the admin key, in time that depends on neither key's content nor length:
/// the SHA-256 digests of both (32 bytes each, whatever the lengths) are compared, every byte.
fn is_admin_key(key: &str, admin_key: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (
        Sha256::digest(key.as_bytes()),
        Sha256::digest(admin_key.as_bytes()),
    );
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // An empty admin key (a misconfiguration) admits nobody.
    std::hint::black_box(diff) == 0 && !admin_key.is_empty()
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderValue, AUTHORIZATION};

    use super::*;

    fn key_of(values: &[&str]) -> Result<String, &'static str> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        bearer_key(&h).map(str::to_owned).map_err(|e| e.code())
    }

    #[test]
    fn the_admin_key_is_compared_whole() {
        assert!(is_admin_key("dev-admin-key", "dev-admin-key"));
        for other in ["", "dev-admin-ke", "dev-admin-keyy", "Dev-admin-key", "x"] {
            assert!(!is_admin_key(other, "dev-admin-key"), "{other:?}");
        }
        assert!(!is_admin_key("", ""), "an empty admin key admits nobody");
    }

    #[test]
    fn bearer_keys_are_parsed_by_the_rfc() {
        for v in ["Bearer k-1", "bearer k-1", "BEARER k-1", "bEaReR k-1"] {
            assert_eq!(key_of(&[v]), Ok("k-1".to_owned()), "{v:?}");
        }
        for v in [
            "Bearer  k-1",
            "Bearer\tk-1",
            "Bearer k-1\tx",
            "Bearer k 1",
            "Bearer ",
            "Bearer",
            "Basic k-1",
            "k-1",
            "",
        ] {
            assert_eq!(key_of(&[v]), Err("unauthorized"), "{v:?}");
        }
        assert_eq!(key_of(&[]), Err("unauthorized"));
        assert_eq!(
            key_of(&["Bearer k-1", "Bearer k-1"]),
            Err("ambiguous-authorization")
        );
    }
}
