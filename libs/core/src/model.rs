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
    /// One store of one franchise.
    Store,
}

/// The holder of an API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub role: Role,
    pub franchise_id: Option<FranchiseId>,
    pub store_id: Option<StoreId>,
}
