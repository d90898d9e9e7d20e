//! Creating franchises, their programs and stores, and their API keys. Used by the admin and
//! HQ endpoints and by `loyalty dev`'s first-start demo, so both provision the same way.

use loyalty_domain::{FranchiseId, Program, StoreId, Timestamp};

use crate::identity::{api_key_prefix, hash_api_key, new_api_key, new_api_key_id, new_secret};
use crate::model::{ApiKey, Franchise, Role, Store};
use crate::ports::StateStore;
use crate::{Error, Result};

/// The current time as the domain counts it.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}

fn random_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &u[..20])
}

/// A new franchise and the plain text of its HQ key (shown once, stored hashed).
pub async fn create_franchise(
    store: &dyn StateStore,
    name: &str,
    program: &Program,
) -> Result<(Franchise, String)> {
    let (f, _, key) = create_franchise_keyed(store, name, program).await?;
    Ok((f, key))
}

/// A new franchise, the record of its HQ key and the key's plain text.
pub async fn create_franchise_keyed(
    store: &dyn StateStore,
    name: &str,
    program: &Program,
) -> Result<(Franchise, ApiKey, String)> {
    let id = FranchiseId::parse(&random_id("f")).map_err(|e| Error::Invalid(e.to_string()))?;
    let franchise = Franchise {
        id: id.clone(),
        name: name.to_owned(),
        secret: new_secret(),
        program_version: 1,
        created_at: now(),
    };
    store.put_program(&id, 1, program).await?;
    store.put_franchise(&franchise).await?;
    let (record, key) = create_api_key(store, &id, Role::Hq, None).await?;
    Ok((franchise, record, key))
}

/// A new store of `franchise` and the plain text of its key.
pub async fn create_store(
    store: &dyn StateStore,
    franchise: &FranchiseId,
    name: &str,
) -> Result<(Store, String)> {
    let (s, _, key) = create_store_keyed(store, franchise, name).await?;
    Ok((s, key))
}

/// A new store of `franchise`, the record of its key and the key's plain text.
pub async fn create_store_keyed(
    store: &dyn StateStore,
    franchise: &FranchiseId,
    name: &str,
) -> Result<(Store, ApiKey, String)> {
    let id = StoreId::parse(&random_id("s")).map_err(|e| Error::Invalid(e.to_string()))?;
    let s = Store {
        id: id.clone(),
        franchise_id: franchise.clone(),
        name: name.to_owned(),
        created_at: now(),
    };
    store.put_store(&s).await?;
    let (record, key) = create_api_key(store, franchise, Role::Store, Some(id)).await?;
    Ok((s, record, key))
}

/// A new key of `franchise` with `role` (and `store_id` for a store key, which the caller
/// checked is one of the franchise's), and its secret: shown once, stored hashed.
pub async fn create_api_key(
    store: &dyn StateStore,
    franchise: &FranchiseId,
    role: Role,
    store_id: Option<StoreId>,
) -> Result<(ApiKey, String)> {
    if role == Role::Admin || (role == Role::Store) != store_id.is_some() {
        return Err(Error::Invalid(format!(
            "a {} key cannot be created{}",
            role.as_str(),
            if role == Role::Store {
                " without its store"
            } else {
                " for a store"
            }
        )));
    }
    let secret = new_api_key(role.key_label());
    let key = ApiKey {
        id: new_api_key_id(),
        franchise_id: franchise.clone(),
        role,
        store_id,
        key_hash: hash_api_key(&secret),
        prefix: api_key_prefix(&secret),
        created_at: now(),
        rotated_at: None,
        revoked_at: None,
        version: 1,
    };
    store.put_api_key(&key, None).await?;
    count_key_operation("create", role);
    tracing::debug!(key_id = %key.id, franchise = %franchise, role = role.as_str(), "API key created");
    Ok((key, secret))
}

/// Gives key `key` (as read from the store) a new secret, returned (shown once): from the
/// write on, the old secret authenticates nothing. A revoked key is a
/// [`Error::Invalid`]; [`Error::Conflict`] when another gateway changed the key meanwhile.
pub async fn rotate_api_key(store: &dyn StateStore, key: &ApiKey) -> Result<(ApiKey, String)> {
    if key.is_revoked() {
        return Err(Error::Invalid(format!(
            "key {} is revoked: create a new one",
            key.id
        )));
    }
    let secret = new_api_key(key.role.key_label());
    let rotated = ApiKey {
        key_hash: hash_api_key(&secret),
        prefix: api_key_prefix(&secret),
        rotated_at: Some(now()),
        version: key.version + 1,
        ..key.clone()
    };
    store.put_api_key(&rotated, Some(key)).await?;
    count_key_operation("rotate", key.role);
    tracing::debug!(key_id = %key.id, franchise = %key.franchise_id, role = key.role.as_str(), "API key rotated");
    Ok((rotated, secret))
}

/// Revokes key `key` (as read from the store), for ever; a revoked key is returned as it is.
/// [`Error::Conflict`] when another gateway changed the key meanwhile.
pub async fn revoke_api_key(store: &dyn StateStore, key: &ApiKey) -> Result<ApiKey> {
    if key.is_revoked() {
        return Ok(key.clone());
    }
    let revoked = ApiKey {
        revoked_at: Some(now()),
        version: key.version + 1,
        ..key.clone()
    };
    store.put_api_key(&revoked, Some(key)).await?;
    count_key_operation("revoke", key.role);
    tracing::debug!(key_id = %key.id, franchise = %key.franchise_id, role = key.role.as_str(), "API key revoked");
    Ok(revoked)
}

fn count_key_operation(operation: &str, role: Role) {
    crate::metrics::metrics()
        .api_key_operations
        .with_label_values(&[operation, role.as_str()])
        .inc();
}

/// Makes `program` the franchise's current one, as a new immutable version (the one after
/// `franchise.program_version`, which the caller has just read from the store). Events
/// accepted before keep the version they were accepted under.
///
/// Fails with [`Error::Conflict`], having changed nothing, when that version was already
/// written (a concurrent update got there first): read the franchise again and retry, or tell
/// the caller. The franchise is written only after its new program, so a reader never meets
/// a version without its program.
pub async fn replace_program(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
) -> Result<Franchise> {
    let version = franchise.program_version + 1;
    store.put_program(&franchise.id, version, program).await?;
    let updated = Franchise {
        program_version: version,
        ..franchise.clone()
    };
    store.put_franchise(&updated).await?;
    Ok(updated)
}

/// The POS-topic signing secret of store `store_id` (docs/pos-topic.md), for its franchise's HQ
/// to hand to the store's till: `None` if the store is not one of `franchise`'s (answered as
/// unknown, like any other franchise's resource). Derived, never stored, so it can be asked
/// for again at any time.
pub async fn pos_signing_secret(
    store: &dyn StateStore,
    franchise: &FranchiseId,
    store_id: &StoreId,
) -> Result<Option<String>> {
    match store.store(store_id).await? {
        Some(s) if &s.franchise_id == franchise => {}
        _ => return Ok(None),
    }
    Ok(store
        .franchise(franchise)
        .await?
        .map(|f| crate::identity::pos_signing_secret(&f.secret, store_id)))
}
