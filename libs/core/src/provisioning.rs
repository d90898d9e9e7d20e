//! Creating franchises, their programs and stores, and their API keys. Used by the admin and
//! HQ endpoints and by `loyalty dev`'s first-start demo, so both provision the same way.

use loyalty_domain::{FranchiseId, Program, StoreId, Timestamp};

use crate::identity::{hash_api_key, new_api_key, new_secret};
use crate::model::{Franchise, Principal, Role, Store};
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
    let key = new_api_key("hq");
    store
        .put_api_key(
            &hash_api_key(&key),
            &Principal {
                role: Role::Hq,
                franchise_id: Some(id),
                store_id: None,
            },
        )
        .await?;
    Ok((franchise, key))
}

/// A new store of `franchise` and the plain text of its key.
pub async fn create_store(
    store: &dyn StateStore,
    franchise: &FranchiseId,
    name: &str,
) -> Result<(Store, String)> {
    let id = StoreId::parse(&random_id("s")).map_err(|e| Error::Invalid(e.to_string()))?;
    let s = Store {
        id: id.clone(),
        franchise_id: franchise.clone(),
        name: name.to_owned(),
        created_at: now(),
    };
    store.put_store(&s).await?;
    let key = new_api_key("store");
    store
        .put_api_key(
            &hash_api_key(&key),
            &Principal {
                role: Role::Store,
                franchise_id: Some(franchise.clone()),
                store_id: Some(id),
            },
        )
        .await?;
    Ok((s, key))
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
