//! The local store (`--store local`): collections durable in one redb file under `--data-dir`,
//! searched exactly in memory by a [`VectorIndex`]. Writes go to disk first, then to the index, one
//! writer per collection; searches read the index under a read lock, so they proceed while other
//! writes are being committed. One replica's own: another process never sees these collections.
//!
//! A collection of at least `--ann-min-vectors` items (0: never) is searched approximately by an
//! [`AnnIndex`] instead (HNSW proposals, exact rescoring; see [`super::ann`]), whose graph is saved
//! under `<data_dir>/ann/` on graceful shutdown ([`CollectionStore::flush`]) and after a start-up
//! build or repair, and verified against the store when loaded. A collection at the threshold at
//! start-up loads straight into it; one that reaches it through upserts switches while serving: a
//! background thread builds the graph from a snapshot while writes continue into the exact index
//! and a journal, then the journal is replayed and the index swapped under the write lock (held for
//! the replay only). A collection that shrinks below the threshold keeps its graph until the next
//! start-up.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use super::{
    CollectionInfo,
    ann::{AnnIndex, AnnParams, persist},
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
    /// While the approximate index is being built in the background: the writes since its snapshot,
    /// to replay before it takes over. Locked inside `index`'s write lock.
    journal: std::sync::Mutex<Option<Vec<Op>>>,
}

/// A write, as the journal of a background build keeps it.
enum Op {
    Upsert(String, Vec<f32>, Arc<Metadata>),
    Delete(String),
}

/// Items as the approximate index takes them.
type Items = Vec<(String, Vec<f32>, Arc<Metadata>)>;

struct Inner {
    store: Store,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Stored records that did not decode at start-up.
    skipped: prometheus::IntCounter,
    /// Serializes creating and deleting collections.
    admin: tokio::sync::Mutex<()>,
    search_threads: usize,
    /// Collections of at least this many items are searched approximately (0: never).
    ann_min_vectors: usize,
    ann_params: AnnParams,
    /// `<data_dir>/ann`: the saved graphs.
    ann_dir: std::path::PathBuf,
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
        ann_min_vectors: usize,
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
                ann_min_vectors,
                ann_params: AnnParams::default(),
                ann_dir: data_dir.join("ann"),
            }),
        })
    }

    fn wants_ann(inner: &Inner, len: usize) -> bool {
        inner.ann_min_vectors > 0 && len >= inner.ann_min_vectors
    }

    /// The start-up index of a collection: approximate at the threshold when a saved graph is
    /// there (loaded or repaired), else exact. A collection at the threshold without a saved
    /// graph starts exact and builds its graph in the background once serving (minutes per
    /// million vectors), as one that grows past the threshold does: start-up is not held up by
    /// it. An approximate index that cannot be made falls back to exact.
    fn index_of(inner: &Inner, meta: &CollectionMeta, items: Items) -> Box<dyn VectorIndex> {
        let saved = persist::paths(&inner.ann_dir, &meta.name).1.exists();
        if Self::wants_ann(inner, items.len()) && saved {
            let started = Instant::now();
            let (dir, name) = (&inner.ann_dir, &meta.name);
            let opened = AnnIndex::open(
                meta.dimension,
                inner.search_threads,
                inner.ann_params,
                &items,
                dir,
                name,
                &meta.id,
            );
            match opened {
                Ok((index, how)) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(collection = %name, items = index.len(), how = ?how, ms, "approximate index ready");
                    if how != persist::Opened::Loaded
                        && let Err(e) = index.save(dir, name, &meta.id)
                    {
                        tracing::warn!(collection = %name, error = %e, "could not save the HNSW graph");
                    }
                    return Box::new(index);
                }
                Err(e) => {
                    tracing::error!(collection = %name, error = %e, "could not build the approximate index; searching exactly")
                }
            }
        } else if !Self::wants_ann(inner, items.len()) {
            persist::remove_files(&inner.ann_dir, &meta.name);
        }
        let mut index = FlatIndex::new(meta.dimension, inner.search_threads);
        for (id, v, m) in items {
            index.upsert(id, &v, m);
        }
        Box::new(index)
    }

    /// After a write under `index`'s write lock: journals it for a running background build, or
    /// starts one when an exact index reached the threshold.
    fn after_write(
        inner: &Inner,
        collection: &Arc<Collection>,
        index: &dyn VectorIndex,
        ops: impl FnOnce() -> Vec<Op>,
    ) {
        let mut journal = collection
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(journal) = journal.as_mut() {
            journal.extend(ops());
            return;
        }
        let Some(flat) = index.flat() else { return };
        if !Self::wants_ann(inner, flat.len()) {
            return;
        }
        let snapshot: Items = flat
            .items()
            .map(|(id, v, m)| (id.to_string(), v.to_vec(), Arc::clone(m)))
            .collect();
        *journal = Some(Vec::new());
        let (collection, threads, params) = (
            Arc::clone(collection),
            inner.search_threads,
            inner.ann_params,
        );
        let spawned = std::thread::Builder::new()
            .name("ann-build".into())
            .spawn(move || Self::build_in_background(&collection, threads, params, &snapshot));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the approximate index build");
            *journal = None;
        }
    }

    fn build_in_background(
        collection: &Collection,
        threads: usize,
        params: AnnParams,
        snapshot: &[(String, Vec<f32>, Arc<Metadata>)],
    ) {
        let started = Instant::now();
        let name = &collection.meta.name;
        let built = AnnIndex::build(collection.meta.dimension, threads, params, snapshot);
        let mut index = collection
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let ops = collection
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        match built {
            Ok(mut ann) => {
                let replayed = ops.len();
                for op in ops {
                    match op {
                        Op::Upsert(id, v, m) => ann.upsert(id, &v, m),
                        Op::Delete(id) => {
                            ann.delete(&id);
                        }
                    }
                }
                tracing::info!(collection = %name, items = ann.len(), replayed, ms = started.elapsed().as_millis() as u64, "switched to the approximate index");
                *index = Box::new(ann);
            }
            // Stays exact; the next write tries again.
            Err(e) => {
                tracing::error!(collection = %name, error = %e, "could not build the approximate index; searching exactly")
            }
        }
    }

    /// Saves every approximate index written since its last save (blocking).
    fn flush_blocking(inner: &Inner) -> anyhow::Result<()> {
        let collections: Vec<Arc<Collection>> = inner
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut failed = None;
        for c in collections {
            let index = c.index.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(ann) = index.ann().filter(|a| a.is_dirty()) {
                let started = Instant::now();
                match ann.save(&inner.ann_dir, &c.meta.name, &c.meta.id) {
                    Ok(()) => {
                        tracing::info!(collection = %c.meta.name, ms = started.elapsed().as_millis() as u64, "saved the HNSW graph")
                    }
                    Err(e) => {
                        tracing::error!(collection = %c.meta.name, error = %e, "could not save the HNSW graph");
                        failed = Some(e);
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
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
            let mut units: Items = Vec::with_capacity(items.len());
            for item in items {
                match check_vector(Field::Param("stored"), &item.vector, meta.dimension) {
                    Ok(unit) => units.push((item.id, unit, Arc::new(item.metadata))),
                    Err(e) => {
                        skipped.inc();
                        tracing::error!(collection = %meta.name, id = %item.id, error = %e, "skipping an unusable stored item (kept on disk)")
                    }
                }
            }
            let index = Self::index_of(inner, &meta, units);
            total += index.len();
            collections.insert(meta.name.clone(), Self::collection_of(meta, index));
        }
        let names: Vec<&str> = collections.keys().map(String::as_str).collect();
        persist::remove_others(&inner.ann_dir, &names);
        // Exact collections at the threshold (no saved graph) build theirs in the background.
        for c in collections.values() {
            let index = c.index.read().unwrap_or_else(PoisonError::into_inner);
            Self::after_write(inner, c, &**index, Vec::new);
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

    fn collection_of(meta: CollectionMeta, index: Box<dyn VectorIndex>) -> Arc<Collection> {
        Arc::new(Collection {
            meta,
            index: RwLock::new(index),
            writer: tokio::sync::Mutex::new(()),
            journal: std::sync::Mutex::new(None),
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

    async fn flush(&self) -> anyhow::Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || Self::flush_blocking(&inner))
            .await
            .map_err(|e| anyhow::anyhow!("saving the HNSW graphs panicked: {e}"))?
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
        let collection = Self::collection_of(meta, Box::new(index));
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
        blocking(move || {
            inner.store.drop_collection(&owned).map_err(store_error)?;
            persist::remove_files(&inner.ann_dir, &owned);
            Ok(())
        })
        .await?;
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
        // Copies for the journal only while a background build runs (it is set and taken under
        // this write lock).
        let journaling = collection
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        let mut ops = Vec::new();
        for (id, unit, md) in entries {
            let md = Arc::new(md);
            if journaling {
                index.upsert(id.clone(), &unit, Arc::clone(&md));
                ops.push(Op::Upsert(id, unit, md));
            } else {
                index.upsert(id, &unit, md);
            }
        }
        Self::after_write(&self.inner, &collection, &**index, || ops);
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
        Self::after_write(&self.inner, &collection, &**index, || {
            ids.into_iter().map(Op::Delete).collect()
        });
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
        let s =
            LocalStore::open(dir, 1, 0, prometheus::IntCounter::new("s", "s").unwrap()).unwrap();
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

    fn unit(i: usize, dim: usize) -> Vec<f32> {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    }

    fn is_ann(s: &LocalStore) -> bool {
        let c = s.current("c").unwrap();
        c.index.read().unwrap().ann().is_some()
    }

    #[tokio::test]
    async fn a_collection_reaching_the_threshold_switches_while_serving_and_its_graph_persists() {
        let dir = tempfile::tempdir().unwrap();
        let open = |min| {
            LocalStore::open(
                dir.path(),
                2,
                min,
                prometheus::IntCounter::new("s", "s").unwrap(),
            )
            .unwrap()
        };
        let s = open(3000);
        s.load().await.unwrap();
        s.create(CollectionMeta::new("c".into(), 16, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        for start in (0..4000).step_by(250) {
            let batch = (start..start + 250)
                .map(|i| record(&format!("id{i}"), unit(i, 16)))
                .collect();
            s.upsert(&meta, batch).await.unwrap();
            if start == 3000 {
                // Writes while (likely) the graph is being built: journaled, then replayed.
                s.delete(&meta, vec!["id5".into(), "id3100".into()])
                    .await
                    .unwrap();
            }
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !is_ann(&s) {
            assert!(Instant::now() < deadline, "never switched");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let check = |s: &LocalStore| {
            let c = s.current("c").unwrap();
            let index = c.index.read().unwrap();
            assert!(index.ann().is_some());
            assert_eq!(index.len(), 3998);
            for i in [0, 5, 17, 2999, 3100, 3500, 3999] {
                let top = index.search(&unit(i, 16), 1, &Metadata::new());
                if i == 5 || i == 3100 {
                    assert_ne!(top[0].id, format!("id{i}"), "deleted");
                } else {
                    assert_eq!(top[0].id, format!("id{i}"));
                    assert!((top[0].score - 1.0).abs() < 1e-5);
                }
            }
        };
        check(&s);
        s.flush().await.unwrap();
        let graph = persist::paths(&dir.path().join("ann"), "c").0;
        assert!(graph.exists());
        drop(s);

        // Start-up over the threshold: the saved graph, verified, clean (nothing to save).
        let s = open(3000);
        s.load().await.unwrap();
        check(&s);
        let c = s.current("c").unwrap();
        assert!(!c.index.read().unwrap().ann().unwrap().is_dirty());
        drop((c, s));

        // ANN off: exact, and the graph files go.
        let s = open(0);
        s.load().await.unwrap();
        let c = s.current("c").unwrap();
        assert!(c.index.read().unwrap().ann().is_none());
        assert_eq!(c.index.read().unwrap().len(), 3998);
        assert!(!graph.exists());
        // Deleting a collection removes its files.
        drop((c, s));
        // Start-up over the threshold without a saved graph: serving at once (exact), the graph
        // built in the background, saved by the flush.
        let s = open(3000);
        s.load().await.unwrap();
        assert_eq!(s.info("c").await.unwrap().count, 3998);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !is_ann(&s) {
            assert!(Instant::now() < deadline, "never built in the background");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        check(&s);
        assert!(!graph.exists());
        s.flush().await.unwrap();
        assert!(graph.exists(), "saved by the flush");
        s.drop_collection("c").await.unwrap();
        assert!(!graph.exists());
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
