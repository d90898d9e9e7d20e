//! Programs by (franchise, version). Versions are immutable, so they are cached forever.

use std::sync::Arc;

use dashmap::DashMap;
use loyalty_domain::{FranchiseId, Program};

use crate::ports::StateStore;
use crate::Result;

pub struct ProgramCache {
    store: Arc<dyn StateStore>,
    programs: DashMap<(FranchiseId, u32), Arc<Program>>,
}

impl ProgramCache {
    pub fn new(store: Arc<dyn StateStore>) -> ProgramCache {
        ProgramCache {
            store,
            programs: DashMap::new(),
        }
    }

    /// The program `version` of `franchise`, `None` if it was never written.
    pub async fn get(&self, franchise: &FranchiseId, version: u32) -> Result<Option<Arc<Program>>> {
        let key = (franchise.clone(), version);
        if let Some(p) = self.programs.get(&key) {
            return Ok(Some(Arc::clone(&p)));
        }
        let Some(p) = self.store.program(franchise, version).await? else {
            return Ok(None);
        };
        let p = Arc::new(p);
        self.programs.insert(key, Arc::clone(&p));
        Ok(Some(p))
    }

    /// The current program of `franchise` (its `program_version`), `None` with a warning
    /// when the franchise or that version is missing from the store.
    pub async fn current(&self, franchise: &FranchiseId) -> Result<Option<Arc<Program>>> {
        Ok(self.current_versioned(franchise).await?.map(|(_, p)| p))
    }

    /// [`ProgramCache::current`] with its version.
    pub async fn current_versioned(
        &self,
        franchise: &FranchiseId,
    ) -> Result<Option<(u32, Arc<Program>)>> {
        let Some(f) = self.store.franchise(franchise).await? else {
            tracing::warn!(franchise = %franchise, "unknown franchise");
            return Ok(None);
        };
        let program = self.get(franchise, f.program_version).await?;
        if program.is_none() {
            tracing::warn!(
                franchise = %franchise,
                version = f.program_version,
                "the franchise's current program is missing"
            );
        }
        Ok(program.map(|p| (f.program_version, p)))
    }

    /// Records a program just written, so that the next read needs no store round trip.
    pub fn insert(&self, franchise: &FranchiseId, version: u32, program: Arc<Program>) {
        self.programs.insert((franchise.clone(), version), program);
    }
}
