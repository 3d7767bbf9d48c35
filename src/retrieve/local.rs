//! The local store (`--store local`): collections durable in one redb file under `--data-dir`,
//! searched exactly in memory by a [`VectorIndex`]. Writes go to disk first, then to the index, one
//! writer per collection; searches read the index under a read lock, so they proceed while other
//! writes are being committed. One replica's own: another process never sees these collections.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use super::{
    CollectionInfo,
    backend::{CollectionStore, Record, exists, not_found, replaced, too_many},
    index::{FlatIndex, Metadata, Scored, VectorIndex},
    store::{CollectionMeta, Store, StoreError, StoredItem},
    validate::check_vector,
};
use crate::common::{Field, ServiceError};

struct Collection {
    meta: CollectionMeta,
    index: RwLock<Box<dyn VectorIndex>>,
    /// One writer at a time, so disk and index see writes in the same order.
    writer: tokio::sync::Mutex<()>,
}

struct Inner {
    store: Store,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Stored records that did not decode at start-up.
    skipped: prometheus::IntCounter,
    /// Serializes creating and deleting collections.
    admin: tokio::sync::Mutex<()>,
    search_threads: usize,
}

pub struct LocalStore {
    inner: Arc<Inner>,
}

fn store_error(e: StoreError) -> ServiceError {
    match e {
        StoreError::NoCollection(n) => not_found(&n),
        StoreError::Exists(n) => exists(&n),
        StoreError::Replaced(n) => replaced(&n),
        StoreError::Db(e) => {
            tracing::error!(error = %e, "collection store failed");
            ServiceError::Internal(
                "the collection store failed; the server logged the details".into(),
            )
        }
    }
}

/// Runs blocking storage work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "storage task panicked");
        Err(ServiceError::Internal(
            "the collection store failed; the server logged the details".into(),
        ))
    })
}

fn info(c: &Collection) -> CollectionInfo {
    CollectionInfo {
        name: c.meta.name.clone(),
        count: c.index.read().unwrap_or_else(PoisonError::into_inner).len(),
        dimension: c.meta.dimension,
        model: c.meta.model.clone(),
    }
}

impl LocalStore {
    /// Opens `<data_dir>/collections.redb`; the collections are read into memory by
    /// [`CollectionStore::load`] (seconds for millions of vectors), so listeners and health can
    /// answer first. `skipped` counts records that do not decode.
    pub fn open(
        data_dir: &std::path::Path,
        search_threads: usize,
        skipped: prometheus::IntCounter,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let store = Store::open(&data_dir.join("collections.redb"))?;
        Ok(LocalStore {
            inner: Arc::new(Inner {
                store,
                collections: RwLock::new(BTreeMap::new()),
                skipped,
                admin: tokio::sync::Mutex::new(()),
                search_threads,
            }),
        })
    }

    /// Reads every collection into memory (blocking). A record that does not decode, or a stored
    /// vector that is unusable, is logged, counted in `clip_store_records_skipped_total` and left
    /// out (it stays on disk).
    fn load_blocking(inner: &Inner) -> anyhow::Result<()> {
        let started = Instant::now();
        let skipped = &inner.skipped;
        let stored = inner.store.load_all(|collection, id, why| {
            skipped.inc();
            tracing::error!(%collection, id, error = %why, "skipping a stored record that does not decode (kept on disk)");
        })?;
        let mut collections = BTreeMap::new();
        let mut total = 0;
        for (meta, items) in stored {
            let mut index = FlatIndex::new(meta.dimension, inner.search_threads);
            for item in items {
                match check_vector(Field::Param("stored"), &item.vector, meta.dimension) {
                    Ok(unit) => index.upsert(item.id, &unit, Arc::new(item.metadata)),
                    Err(e) => {
                        skipped.inc();
                        tracing::error!(collection = %meta.name, id = %item.id, error = %e, "skipping an unusable stored item (kept on disk)")
                    }
                }
            }
            total += index.len();
            collections.insert(meta.name.clone(), Self::collection_of(meta, index));
        }
        tracing::info!(
            collections = collections.len(),
            items = total,
            ms = started.elapsed().as_millis() as u64,
            "collections loaded"
        );
        *inner
            .collections
            .write()
            .unwrap_or_else(PoisonError::into_inner) = collections;
        Ok(())
    }

    fn collection_of(meta: CollectionMeta, index: FlatIndex) -> Arc<Collection> {
        Arc::new(Collection {
            meta,
            index: RwLock::new(Box::new(index)),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self, name: &str) -> Result<Arc<Collection>, ServiceError> {
        self.inner
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// The collection a write began with, under its writer lock: it must still be the one of that
    /// name (in memory here and, within the store's transaction, on disk). A write that lost a race
    /// with DeleteCollection (and CreateCollection of the same name) is ABORTED, whole.
    fn incarnation(&self, meta: &CollectionMeta) -> Result<Arc<Collection>, ServiceError> {
        match self.current(&meta.name) {
            Ok(c) if c.meta.id == meta.id => Ok(c),
            _ => Err(replaced(&meta.name)),
        }
    }
}

#[async_trait::async_trait]
impl CollectionStore for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn load(&self) -> anyhow::Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || Self::load_blocking(&inner))
            .await
            .map_err(|e| anyhow::anyhow!("reading the collections panicked: {e}"))?
    }

    async fn ping(&self) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn create(
        &self,
        meta: CollectionMeta,
        max_collections: usize,
    ) -> Result<CollectionInfo, ServiceError> {
        let name = meta.name.clone();
        let _admin = self.inner.admin.lock().await;
        {
            let collections = self
                .inner
                .collections
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if collections.contains_key(&name) {
                return Err(exists(&name));
            }
            if collections.len() >= max_collections {
                return Err(too_many(collections.len()));
            }
        }
        let inner = Arc::clone(&self.inner);
        let stored = meta.clone();
        blocking(move || inner.store.create(&stored).map_err(store_error)).await?;
        let index = FlatIndex::new(meta.dimension, self.inner.search_threads);
        let collection = Self::collection_of(meta, index);
        let out = info(&collection);
        self.inner
            .collections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, collection);
        Ok(out)
    }

    async fn collection(&self, name: &str) -> Result<CollectionMeta, ServiceError> {
        Ok(self.current(name)?.meta.clone())
    }

    async fn info(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        Ok(info(self.current(name)?.as_ref()))
    }

    async fn list(&self) -> Result<Vec<CollectionInfo>, ServiceError> {
        Ok(self
            .inner
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| info(c))
            .collect())
    }

    async fn drop_collection(&self, name: &str) -> Result<(), ServiceError> {
        let _admin = self.inner.admin.lock().await;
        let collection = self.current(name)?;
        let _writer = collection.writer.lock().await;
        let inner = Arc::clone(&self.inner);
        let owned = name.to_string();
        blocking(move || inner.store.drop_collection(&owned).map_err(store_error)).await?;
        self.inner
            .collections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        Ok(())
    }

    async fn upsert(
        &self,
        meta: &CollectionMeta,
        records: Vec<Record>,
    ) -> Result<usize, ServiceError> {
        let collection = self.current(&meta.name).map_err(|_| replaced(&meta.name))?;
        let _writer = collection.writer.lock().await;
        let collection = self.incarnation(meta)?;
        let (rows, entries): (Vec<_>, Vec<_>) = records
            .into_iter()
            .map(|r| {
                (
                    (r.id.clone(), r.stored, r.metadata.clone()),
                    (r.id, r.unit, r.metadata),
                )
            })
            .unzip();
        let inner = Arc::clone(&self.inner);
        let stored_meta = meta.clone();
        blocking(move || inner.store.upsert(&stored_meta, &rows).map_err(store_error)).await?;
        let mut index = collection
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, unit, md) in entries {
            index.upsert(id, &unit, Arc::new(md));
        }
        Ok(index.len())
    }

    async fn delete(
        &self,
        meta: &CollectionMeta,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError> {
        let collection = self.current(&meta.name).map_err(|_| replaced(&meta.name))?;
        let _writer = collection.writer.lock().await;
        let collection = self.incarnation(meta)?;
        let inner = Arc::clone(&self.inner);
        let stored_meta = meta.clone();
        let to_delete = ids.clone();
        let deleted = blocking(move || {
            inner
                .store
                .delete(&stored_meta, &to_delete)
                .map_err(store_error)
        })
        .await?;
        let mut index = collection
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for id in &ids {
            index.delete(id);
        }
        Ok((deleted, index.len()))
    }

    async fn search(
        &self,
        meta: &CollectionMeta,
        query: Vec<f32>,
        k: usize,
        filter: Metadata,
    ) -> Result<Vec<Scored>, ServiceError> {
        let collection = self.current(&meta.name)?;
        // The scan runs on the blocking pool (it may take both cores for a large collection).
        tokio::task::spawn_blocking(move || {
            collection
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .search(&query, k, &filter)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "search panicked");
            ServiceError::Internal("search failed; the server logged the details".into())
        })
    }

    async fn get_items(
        &self,
        meta: &CollectionMeta,
        ids: Vec<String>,
    ) -> Result<Vec<Option<StoredItem>>, ServiceError> {
        let inner = Arc::clone(&self.inner);
        let owned = meta.name.clone();
        blocking(move || inner.store.get(&owned, &ids).map_err(store_error)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, v: Vec<f32>) -> Record {
        Record {
            id: id.into(),
            unit: v.clone(),
            stored: v,
            metadata: Metadata::new(),
        }
    }

    async fn store(dir: &std::path::Path) -> LocalStore {
        let s = LocalStore::open(dir, 1, prometheus::IntCounter::new("s", "s").unwrap()).unwrap();
        s.load().await.unwrap();
        s
    }

    /// Collection `c` as a write that began against it holds it, after `c` was deleted and
    /// created again meanwhile.
    async fn replaced_collection(s: &LocalStore) -> CollectionMeta {
        let meta = || CollectionMeta::new("c".into(), 2, "m".into());
        s.create(meta(), 4).await.unwrap();
        // A write into `c` embeds its items (slow) holding this collection ...
        let old = s.collection("c").await.unwrap();
        // ... while `c` is deleted and created again.
        s.drop_collection("c").await.unwrap();
        s.create(meta(), 4).await.unwrap();
        old
    }

    #[tokio::test]
    async fn an_upsert_that_lost_a_race_with_delete_and_create_is_aborted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let old = replaced_collection(&s).await;
        let e = s
            .upsert(&old, vec![record("a", vec![1.0, 0.0])])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ServiceError::Aborted(m) if m.contains("deleted")),
            "{e}"
        );
        // Nothing landed anywhere: not on disk, not in the index.
        let new = s.collection("c").await.unwrap();
        let items = s.get_items(&new, vec!["a".into()]).await.unwrap();
        assert!(items[0].is_none());
        assert_eq!(s.info("c").await.unwrap().count, 0);
    }

    #[tokio::test]
    async fn a_delete_that_lost_the_same_race_is_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let old = replaced_collection(&s).await;
        let new = s.collection("c").await.unwrap();
        s.upsert(&new, vec![record("a", vec![0.0, 1.0])])
            .await
            .unwrap();
        let e = s.delete(&old, vec!["a".into()]).await.unwrap_err();
        assert!(matches!(e, ServiceError::Aborted(_)), "{e}");
        assert_eq!(
            s.info("c").await.unwrap().count,
            1,
            "the new collection keeps its item"
        );
        let items = s.get_items(&new, vec!["a".into()]).await.unwrap();
        assert!(items[0].is_some());
    }

    #[tokio::test]
    async fn the_collection_limit_and_names_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        s.create(CollectionMeta::new("a".into(), 2, "m".into()), 1)
            .await
            .unwrap();
        let e = s
            .create(CollectionMeta::new("a".into(), 2, "m".into()), 2)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::AlreadyExists(_)), "{e}");
        let e = s
            .create(CollectionMeta::new("b".into(), 2, "m".into()), 1)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::ResourceExhausted(_)), "{e}");
    }
}
