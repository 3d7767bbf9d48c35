//! Collections on disk: one redb database, `<data-dir>/collections.redb`. A `collections` table
//! holds each collection's description; each collection's items live in their own table, keyed by
//! id, valued `[dim: u32 LE][dim x f32 LE][metadata JSON]`. redb commits are atomic and fsynced
//! (copy-on-write B-trees with a crash-safe commit record), so an acknowledged write survives
//! `kill -9` and power loss, and a torn write is never read back.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::index::Metadata;

const COLLECTIONS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("collections");

fn items_table(name: &str) -> String {
    format!("items/{name}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub name: String,
    pub dimension: usize,
    pub model: String,
    /// This incarnation of the name: a collection deleted and created again under the same name
    /// gets a new one, so a write that began against the old one cannot land in the new one.
    /// (Stores written before ids existed read as "".)
    #[serde(default)]
    pub id: String,
    /// Its own settings, given at CreateCollection (stores written before them: none).
    #[serde(default)]
    pub options: CollectionOptions,
}

/// A collection's own settings, given at CreateCollection; `None`: the server's flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionOptions {
    /// HNSW `m` (links per node) of its graph: pgvector's index on the PostgreSQL store, the
    /// `--ann-graph` graph on the local store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_m: Option<u32>,
    /// HNSW `ef_construction` (candidates per insertion) of that graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_ef_construction: Option<u32>,
    /// The recall check's target for it, in thousandths (950: recall@10 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_target_permille: Option<u32>,
}

impl CollectionOptions {
    /// The largest `m` and `ef_construction` taken (pgvector's bounds).
    pub const MAX_M: u32 = 100;
    pub const MAX_EF_CONSTRUCTION: u32 = 1000;

    /// Checks each setting's range, naming the field of a bad one.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(m) = self.hnsw_m
            && !(2..=Self::MAX_M).contains(&m)
        {
            return Err(("hnsw_m", format!("{m} is outside 2-{}", Self::MAX_M)));
        }
        if let Some(ef) = self.hnsw_ef_construction {
            let least = 2 * self.hnsw_m.unwrap_or(2);
            if !(least.max(4)..=Self::MAX_EF_CONSTRUCTION).contains(&ef) {
                return Err((
                    "hnsw_ef_construction",
                    format!(
                        "{ef} is outside {}-{} (at least 4 and 2 x hnsw_m)",
                        least.max(4),
                        Self::MAX_EF_CONSTRUCTION
                    ),
                ));
            }
        }
        if let Some(t) = self.recall_target_permille
            && !(1..=1000).contains(&t)
        {
            return Err((
                "recall_target",
                format!("{} is outside (0, 1]", f64::from(t) / 1000.0),
            ));
        }
        Ok(())
    }

    /// The recall target as a fraction, when it has one.
    pub fn recall_target(&self) -> Option<f64> {
        self.recall_target_permille.map(|t| f64::from(t) / 1000.0)
    }

    /// A recall target from the wire (a fraction; 0: the server's), in thousandths.
    pub fn recall_permille(target: f64) -> Result<Option<u32>, (&'static str, String)> {
        if target == 0.0 {
            return Ok(None);
        }
        if !target.is_finite() || target <= 0.0 || target > 1.0 {
            return Err(("recall_target", format!("{target} is outside (0, 1]")));
        }
        Ok(Some(((target * 1000.0).round() as u32).max(1)))
    }
}

impl CollectionMeta {
    /// A new collection, with a fresh id.
    pub fn new(name: String, dimension: usize, model: String) -> Self {
        CollectionMeta {
            name,
            dimension,
            model,
            id: uuid::Uuid::new_v4().to_string(),
            options: CollectionOptions::default(),
        }
    }

    /// The same, with its own settings.
    pub fn with_options(mut self, options: CollectionOptions) -> Self {
        self.options = options;
        self
    }
}

/// One stored item.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
}

pub struct Store {
    db: Database,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no collection named {0:?}")]
    NoCollection(String),
    #[error("collection {0:?} already exists")]
    Exists(String),
    /// The collection was deleted (and maybe created again) since the write began.
    #[error("collection {0:?} was deleted while the write was in flight")]
    Replaced(String),
    #[error("storage: {0}")]
    Db(String),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

pub fn encode(vector: &[f32], metadata: &Metadata) -> Vec<u8> {
    let json = serde_json::to_vec(metadata).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(4 + vector.len() * 4 + json.len());
    out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&json);
    out
}

pub fn decode(bytes: &[u8]) -> Result<(Vec<f32>, Metadata), String> {
    let dim = u32::from_le_bytes(
        bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated record")?,
    ) as usize;
    let end = 4 + dim * 4;
    let floats = bytes.get(4..end).ok_or("truncated vector")?;
    let vector = floats
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let metadata = serde_json::from_slice(&bytes[end..]).map_err(|e| e.to_string())?;
    Ok((vector, metadata))
}

/// The collection store's page cache unless `--store-cache-bytes` says otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (creating) the store with `cache_bytes` of page cache.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> anyhow::Result<Self> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| {
                anyhow::anyhow!("{}: cannot open the collection store: {e}", path.display())
            })?;
        let txn = db.begin_write()?;
        txn.open_table(COLLECTIONS)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// Every collection with its items, for start-up. A record that does not decode (a collection
    /// description or an item) is reported to `skipped` with why, left out and left on disk: one
    /// bad record never keeps the others from serving.
    pub fn load_all(
        &self,
        mut skipped: impl FnMut(&str, Option<&str>, &str),
    ) -> anyhow::Result<Vec<(CollectionMeta, Vec<StoredItem>)>> {
        let txn = self.db.begin_read()?;
        let collections = txn.open_table(COLLECTIONS)?;
        let mut out = Vec::new();
        for entry in collections.iter()? {
            let (name, meta) = entry?;
            let meta: CollectionMeta = match serde_json::from_slice(meta.value()) {
                Ok(meta) => meta,
                Err(e) => {
                    skipped(name.value(), None, &e.to_string());
                    continue;
                }
            };
            let table_name = items_table(&meta.name);
            let table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&table_name))?;
            let mut items = Vec::with_capacity(table.len()? as usize);
            for entry in table.iter()? {
                let (id, value) = entry?;
                match decode(value.value()) {
                    Ok((vector, metadata)) => items.push(StoredItem {
                        id: id.value().to_string(),
                        vector,
                        metadata,
                    }),
                    Err(e) => skipped(&meta.name, Some(id.value()), &e),
                }
            }
            out.push((meta, items));
        }
        Ok(out)
    }

    pub fn create(&self, meta: &CollectionMeta) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut collections = txn.open_table(COLLECTIONS).map_err(db)?;
            if collections.get(meta.name.as_str()).map_err(db)?.is_some() {
                return Err(StoreError::Exists(meta.name.clone()));
            }
            let json = serde_json::to_vec(meta).map_err(db)?;
            collections
                .insert(meta.name.as_str(), json.as_slice())
                .map_err(db)?;
            let table_name = items_table(&meta.name);
            txn.open_table(TableDefinition::<&str, &[u8]>::new(&table_name))
                .map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    pub fn drop_collection(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut collections = txn.open_table(COLLECTIONS).map_err(db)?;
            if collections.remove(name).map_err(db)?.is_none() {
                return Err(StoreError::NoCollection(name.to_string()));
            }
            let table_name = items_table(name);
            txn.delete_table(TableDefinition::<&str, &[u8]>::new(&table_name))
                .map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    /// Runs `f` on the collection's item table inside one write transaction, committed (and
    /// fsynced) only when `f` succeeds. The collection must be the incarnation `id` the writer
    /// started with: an unknown collection is refused, never created, and one deleted and created
    /// again meanwhile is refused too ([`StoreError::Replaced`]).
    fn write_items<T>(
        &self,
        name: &str,
        id: &str,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        let out = {
            let collections = txn.open_table(COLLECTIONS).map_err(db)?;
            let Some(stored) = collections.get(name).map_err(db)? else {
                return Err(StoreError::Replaced(name.to_string()));
            };
            let stored: CollectionMeta = serde_json::from_slice(stored.value()).map_err(db)?;
            if stored.id != id {
                return Err(StoreError::Replaced(name.to_string()));
            }
            let table_name = items_table(name);
            let mut table = txn
                .open_table(TableDefinition::<&str, &[u8]>::new(&table_name))
                .map_err(db)?;
            f(&mut table)?
        };
        txn.commit().map_err(db)?;
        Ok(out)
    }

    /// Inserts or replaces items of the collection `meta` in one durable transaction.
    pub fn upsert(
        &self,
        meta: &CollectionMeta,
        items: &[(String, Vec<f32>, Metadata)],
    ) -> Result<(), StoreError> {
        self.write_items(&meta.name, &meta.id, |table| {
            for (id, vector, metadata) in items {
                table
                    .insert(id.as_str(), encode(vector, metadata).as_slice())
                    .map_err(db)?;
            }
            Ok(())
        })
    }

    /// Deletes ids of the collection `meta` in one durable transaction; returns how many existed.
    pub fn delete(&self, meta: &CollectionMeta, ids: &[String]) -> Result<usize, StoreError> {
        self.write_items(&meta.name, &meta.id, |table| {
            let mut deleted = 0;
            for id in ids {
                if table.remove(id.as_str()).map_err(db)?.is_some() {
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
    }

    /// Items by id, `None` for the absent ones.
    pub fn get(&self, name: &str, ids: &[String]) -> Result<Vec<Option<StoredItem>>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table_name = items_table(name);
        let table = txn
            .open_table(TableDefinition::<&str, &[u8]>::new(&table_name))
            .map_err(|_| StoreError::NoCollection(name.to_string()))?;
        ids.iter()
            .map(|id| {
                let Some(value) = table.get(id.as_str()).map_err(db)? else {
                    return Ok(None);
                };
                let (vector, metadata) = decode(value.value()).map_err(StoreError::Db)?;
                Ok(Some(StoredItem {
                    id: id.clone(),
                    vector,
                    metadata,
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_and_items_round_trip_through_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let meta = CollectionMeta::new("photos".into(), 2, "m".into());
        {
            let store = Store::open(&path).unwrap();
            store.create(&meta).unwrap();
            assert!(matches!(store.create(&meta), Err(StoreError::Exists(_))));
            let md = Metadata::from([("k".to_string(), "v".to_string())]);
            store
                .upsert(
                    &meta,
                    &[
                        ("a".into(), vec![0.5, -1.25], md.clone()),
                        ("b".into(), vec![1.0, 0.0], Metadata::new()),
                    ],
                )
                .unwrap();
            assert_eq!(store.delete(&meta, &["b".into(), "zz".into()]).unwrap(), 1);
            let other = CollectionMeta::new("nope".into(), 2, "m".into());
            assert!(matches!(
                store.upsert(&other, &[]),
                Err(StoreError::Replaced(_))
            ));
        }
        let store = Store::open(&path).unwrap();
        let all = store.load_all(|c, i, e| panic!("{c} {i:?}: {e}")).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, meta);
        assert_eq!(all[0].1.len(), 1);
        assert_eq!(all[0].1[0].vector, vec![0.5, -1.25]);
        assert_eq!(all[0].1[0].metadata["k"], "v");
        let got = store.get("photos", &["a".into(), "b".into()]).unwrap();
        assert!(got[0].is_some() && got[1].is_none());
        store.drop_collection("photos").unwrap();
        assert!(store.load_all(|_, _, _| {}).unwrap().is_empty());
    }

    #[test]
    fn a_write_for_a_deleted_and_recreated_collection_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb")).unwrap();
        let old = CollectionMeta::new("c".into(), 2, "m".into());
        store.create(&old).unwrap();
        store.drop_collection("c").unwrap();
        let new = CollectionMeta::new("c".into(), 2, "m".into());
        store.create(&new).unwrap();
        let item = [("a".to_string(), vec![1.0, 0.0], Metadata::new())];
        assert!(matches!(
            store.upsert(&old, &item),
            Err(StoreError::Replaced(_))
        ));
        assert!(matches!(
            store.delete(&old, &["a".into()]),
            Err(StoreError::Replaced(_))
        ));
        assert!(store.get("c", &["a".into()]).unwrap()[0].is_none());
        store.upsert(&new, &item).unwrap();
        assert!(store.get("c", &["a".into()]).unwrap()[0].is_some());
    }

    #[test]
    fn an_undecodable_record_is_skipped_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb")).unwrap();
        let meta = CollectionMeta::new("c".into(), 2, "m".into());
        store.create(&meta).unwrap();
        store
            .upsert(&meta, &[("good".into(), vec![1.0, 0.0], Metadata::new())])
            .unwrap();
        // A torn or foreign record: a vector length with no vector behind it.
        let txn = store.db.begin_write().unwrap();
        {
            let name = items_table("c");
            let mut table = txn
                .open_table(TableDefinition::<&str, &[u8]>::new(&name))
                .unwrap();
            table.insert("bad", [9u8, 0, 0, 0, 1].as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let mut reports = Vec::new();
        let all = store
            .load_all(|c, id, why| {
                reports.push((c.to_string(), id.map(str::to_string), why.to_string()))
            })
            .unwrap();
        assert_eq!(all[0].1.len(), 1);
        assert_eq!(all[0].1[0].id, "good");
        assert_eq!(reports.len(), 1);
        assert_eq!(
            (reports[0].0.as_str(), reports[0].1.as_deref()),
            ("c", Some("bad"))
        );
        assert!(reports[0].2.contains("truncated"), "{:?}", reports[0]);
        // Still on disk, for whoever investigates.
        let txn = store.db.begin_read().unwrap();
        let name = items_table("c");
        let table = txn
            .open_table(TableDefinition::<&str, &[u8]>::new(&name))
            .unwrap();
        assert!(table.get("bad").unwrap().is_some());
    }
}
