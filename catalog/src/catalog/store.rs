//! The catalog as stored in the warehouse itself, with the newest version this process has seen.
//!
//! Each change writes a new, complete file `_catalog/v<version>.json` with a conditional
//! create (`PutMode::Create`): a file is never overwritten, so a crash leaves either the old or
//! the new version, never a torn one, and two servers sharing a root cannot overwrite each other.
//! A writer that loses the race reloads the newer version and re-applies its change to it (or
//! fails if the change no longer makes sense, e.g. the table now exists). This is the same
//! design as Delta's own log, so it needs no server other than the object store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tracing::{debug, info};

use super::state::{CatalogState, DEFAULT_SCHEMA};
use crate::error::{Error, Result};
use crate::storage::Warehouse;

/// Folder under the warehouse root holding the catalog versions.
pub const CATALOG_DIR: &str = "_catalog";
/// How many times a commit is retried against concurrent writers before giving up.
const MAX_COMMIT_ATTEMPTS: usize = 32;

/// The catalog as stored in a warehouse, with the newest version this process has seen.
#[derive(Debug)]
pub struct CatalogStore {
    warehouse: Warehouse,
    current: RwLock<Arc<CatalogState>>,
    conflicts: AtomicU64,
}

impl CatalogStore {
    /// Open the catalog of `warehouse`, creating version 1 (with schema `public`) when new.
    pub async fn open(warehouse: Warehouse) -> Result<Self> {
        let latest = latest_version(&warehouse).await?;
        let store =
            Self { warehouse, current: RwLock::new(Arc::new(CatalogState::default())), conflicts: AtomicU64::new(0) };
        match latest {
            Some(v) => {
                let state = store
                    .read_version(v)
                    .await?
                    .ok_or_else(|| Error::Conflict(format!("catalog version {v} vanished while opening")))?;
                store.set(state);
                store.refresh().await?;
            }
            None => {
                let r = store
                    .commit(|s| {
                        s.schemas.entry(DEFAULT_SCHEMA.to_string()).or_default();
                        Ok(())
                    })
                    .await;
                // Another server may have initialised it at the same moment: that is fine.
                if let Err(e) = r {
                    debug!(error = %e, "initial catalog commit lost a race; reloading");
                    store.refresh().await?;
                }
            }
        }
        info!(root = %store.warehouse.root(), version = store.snapshot().version, "catalog opened");
        Ok(store)
    }

    /// The warehouse this catalog lives in.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Commits that lost a race and were retried, since this process opened the catalog.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The newest state this process knows, without touching storage.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, state: CatalogState) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.version >= g.version {
            *g = Arc::new(state);
        }
    }

    /// Catch up with versions written by other processes (one cheap GET when nothing changed).
    pub async fn refresh(&self) -> Result<Arc<CatalogState>> {
        loop {
            let next = self.snapshot().version + 1;
            match self.read_version(next).await? {
                Some(state) => self.set(state),
                None => return Ok(self.snapshot()),
            }
        }
    }

    /// Apply `change` to the newest state and persist it as the next version.
    ///
    /// On a lost race the change is re-applied to the winner's state, so concurrent changes
    /// to different objects both survive and conflicting ones fail with a clear error.
    pub async fn commit<F>(&self, change: F) -> Result<Arc<CatalogState>>
    where
        F: Fn(&mut CatalogState) -> Result<()>,
    {
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let base = self.refresh().await?;
            let mut next = (*base).clone();
            change(&mut next)?;
            // A change that changes nothing (a rerun's CREATE OR REPLACE of the same
            // definition) makes no new catalog version.
            if next == *base {
                return Ok(base);
            }
            next.version = base.version + 1;
            let body = serde_json::to_vec_pretty(&next)
                .map_err(|e| Error::internal(format!("cannot encode catalog version {}: {e}", next.version)))?;
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            let path = self.version_path(next.version);
            match self.warehouse.store().put_opts(&path, PutPayload::from(body), opts).await {
                Ok(_) => {
                    debug!(version = next.version, "catalog committed");
                    self.set(next);
                    return Ok(self.snapshot());
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    debug!(version = next.version, "catalog commit raced; retrying on newer state");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!(
            "gave up after {MAX_COMMIT_ATTEMPTS} attempts: other writers keep changing the catalog"
        )))
    }

    fn version_path(&self, version: u64) -> object_store::path::Path {
        self.warehouse.path(&format!("{CATALOG_DIR}/v{version:020}.json"))
    }

    async fn read_version(&self, version: u64) -> Result<Option<CatalogState>> {
        let path = self.version_path(version);
        match self.warehouse.store().get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let state: CatalogState = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupt { path: format!("catalog file {path}"), detail: e.to_string() })?;
                Ok(Some(state))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The highest version present in storage, by listing `_catalog/`.
async fn latest_version(warehouse: &Warehouse) -> Result<Option<u64>> {
    let prefix = warehouse.path(CATALOG_DIR);
    let metas: Vec<_> = warehouse.store().list(Some(&prefix)).try_collect().await?;
    Ok(metas
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            name.strip_prefix('v')?.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::state::SchemaEntry;
    use crate::storage::S3Config;

    async fn open(dir: &std::path::Path) -> CatalogStore {
        let w = Warehouse::open(dir.to_str().unwrap(), S3Config::default()).unwrap();
        CatalogStore::open(w).await.unwrap()
    }

    #[tokio::test]
    async fn fresh_warehouse_has_public_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path()).await;
        assert!(c.snapshot().schemas.contains_key(DEFAULT_SCHEMA));
        c.commit(|s| {
            s.schemas.insert("music".into(), SchemaEntry::default());
            Ok(())
        })
        .await
        .unwrap();
        let again = open(dir.path()).await;
        assert_eq!(again.snapshot().version, 2);
        assert!(again.snapshot().schemas.contains_key("music"));
    }

    #[tokio::test]
    async fn two_writers_both_land_and_conflicts_fail() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path()).await;
        let b = open(dir.path()).await;
        a.commit(|s| {
            s.schemas.insert("a".into(), SchemaEntry::default());
            Ok(())
        })
        .await
        .unwrap();
        // b has not seen a's change; its commit must not erase it.
        b.commit(|s| {
            s.schemas.insert("b".into(), SchemaEntry::default());
            Ok(())
        })
        .await
        .unwrap();
        let s = a.refresh().await.unwrap();
        assert!(s.schemas.contains_key("a") && s.schemas.contains_key("b"), "{s:?}");
        // A change that is invalid on the newer state fails instead of overwriting.
        let err = a
            .commit(|s| {
                if s.schemas.contains_key("b") {
                    return Err(Error::AlreadyExists { kind: "schema", name: "b".into() });
                }
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already exists"));
    }
}
