//! Configuration records of the platform: franchises, their stores and API keys.

use loyalty_domain::{FranchiseId, StoreId, Timestamp};
use serde::{Deserialize, Serialize};

/// A franchise: one brand, one program (versioned), many stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Franchise {
    pub id: FranchiseId,
    pub name: String,
    /// Secret from which member ids and QR tokens are derived (hex). Never leaves the server.
    pub secret: String,
    /// The current program version; every accepted event is judged by the version current when
    /// it was accepted, so a program change never rewrites history.
    pub program_version: u32,
    pub created_at: Timestamp,
}

/// A store (point of sale location) of a franchise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    pub id: StoreId,
    pub franchise_id: FranchiseId,
    pub name: String,
    pub created_at: Timestamp,
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The platform operator.
    Admin,
    /// Headquarters of one franchise.
    Hq,
    /// Headquarters of one franchise, read-only: reads what [`Role::Hq`] reads (program,
    /// dashboards, members' statuses and ledgers, the franchise's keys), changes nothing.
    HqReadOnly,
    /// One store of one franchise.
    Store,
}

impl Role {
    /// The role's name on the wire (`hq_read_only`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Hq => "hq",
            Role::HqReadOnly => "hq_read_only",
            Role::Store => "store",
        }
    }

    /// The label in a key of this role: `lk_<label>_…`.
    pub fn key_label(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Hq => "hq",
            Role::HqReadOnly => "hqro",
            Role::Store => "store",
        }
    }

    /// Whether the role reads what HQ reads (HQ and read-only HQ).
    pub fn reads_hq(self) -> bool {
        matches!(self, Role::Hq | Role::HqReadOnly)
    }
}

/// The holder of an API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub role: Role,
    pub franchise_id: Option<FranchiseId>,
    pub store_id: Option<StoreId>,
    /// The key's id ([`ApiKey::id`]); `None` for the admin key (configured, not stored). Keys
    /// stored before keys had ids get one when the store is migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// An API key as stored: never its secret, only the secret's hash (SHA-256), and what may be
/// shown of it. Named by a stable id (`k_` and 20 hex digits) that a rotation keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub franchise_id: FranchiseId,
    pub role: Role,
    /// The store of a store key.
    pub store_id: Option<StoreId>,
    /// The hash of the current secret ([`crate::identity::hash_api_key`]).
    pub key_hash: String,
    /// The first characters of the current secret (`lk_store_abcd`), to tell keys apart.
    pub prefix: String,
    pub created_at: Timestamp,
    /// When the secret was last replaced.
    pub rotated_at: Option<Timestamp>,
    /// When the key was revoked: it then authenticates nothing, for ever.
    pub revoked_at: Option<Timestamp>,
    /// Fences writes: 1 when created, one more on each change.
    pub version: u64,
}

impl ApiKey {
    /// The holder of the key, as the gateway authenticates it.
    pub fn principal(&self) -> Principal {
        Principal {
            role: self.role,
            franchise_id: Some(self.franchise_id.clone()),
            store_id: self.store_id.clone(),
            key_id: Some(self.id.clone()),
        }
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// What every adapter checks of a write of `self` over `previous` before the stored
    /// version is compared ([`crate::ports::StateStore::put_api_key`]): the same key, one
    /// version on. `Invalid` otherwise (a caller's bug, not a race).
    pub fn check_replaces(&self, previous: Option<&ApiKey>) -> crate::Result<()> {
        let expected = previous.map_or(0, |p| p.version) + 1;
        let same = previous.is_none_or(|p| p.id == self.id && p.franchise_id == self.franchise_id);
        if self.version != expected || !same {
            return Err(crate::Error::Invalid(format!(
                "key {} v{} cannot replace {:?}",
                self.id,
                self.version,
                previous.map(|p| (&p.id, p.version))
            )));
        }
        Ok(())
    }

    /// The record of a key stored before keys had ids (by its hash, with `principal`), under
    /// its derived id ([`crate::identity::legacy_api_key_id`]), so that every adapter and every
    /// run of a migration gives it the same one. `None` for a principal of no franchise.
    pub fn adopted(key_hash: &str, principal: &Principal, now: Timestamp) -> Option<ApiKey> {
        Some(ApiKey {
            id: crate::identity::legacy_api_key_id(key_hash),
            franchise_id: principal.franchise_id.clone()?,
            role: principal.role,
            store_id: principal.store_id.clone(),
            key_hash: key_hash.to_owned(),
            prefix: format!("lk_{}_", principal.role.key_label()),
            created_at: now,
            rotated_at: None,
            revoked_at: None,
            version: 1,
        })
    }
}
