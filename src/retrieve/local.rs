//! The local store (`--store local`): collections durable in one redb file under `--data-dir`,
//! searched exactly in memory by a [`VectorIndex`]. Writes go to disk first, then to the index, one
//! writer per collection; searches read the index under a read lock, so they proceed while other
//! writes are being committed. One replica's own: another process never sees these collections.
//!
//! Cancellation and the runtime: every write runs in a task of its own (the caller only awaits it),
//! and its redb commit and index update run in one blocking section, so a client that hangs up
//! never leaves disk and memory apart. The index lock is taken on the blocking pool only (searches
//! and writes alike); `info` and `list` read a count kept beside it, so no tokio worker waits
//! behind a long scan.
//!
//! A collection of at least `--ann-min-vectors` items (0: never) is searched approximately by an
//! [`AnnIndex`] instead (HNSW proposals, exact rescoring; see [`super::ann`]), whose graph is saved
//! under `<data_dir>/ann/` on graceful shutdown ([`CollectionStore::flush`]) and after a
//! background build or repair, and verified against the store when loaded. A collection at the
//! threshold at start-up loads straight into it when its saved graph is current; otherwise it
//! starts exact and switches while serving, as one that reaches the threshold through upserts does:
//! a background thread builds the graph from a snapshot (or repairs the saved one) while writes
//! continue into the exact index and a journal, then the journal is replayed and the index swapped
//! under the write lock (held for the replay only). A collection that shrinks below the threshold keeps its graph until the next
//! start-up.

use crate::common::limit::MAX_COLLECTION_ITEMS;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::{
    CollectionInfo,
    ann::{AnnIndex, AnnParams, persist},
    backend::{CollectionStore, Record, StoreKind, exists, not_found, replaced, too_many},
    index::{FlatIndex, Metadata, Scored, VectorIndex},
    recall::{self, RecallConfig},
    store::{CollectionMeta, Store, StoreError, StoredItem},
    validate::check_vector,
};
use crate::common::{Field, ServiceError};

mod build;

struct Collection {
    meta: CollectionMeta,
    /// Searched on the blocking pool only, and written there only (inside a write's unit): no
    /// tokio worker ever waits for this lock.
    index: RwLock<Box<dyn VectorIndex>>,
    /// The index's item count, set under `index`'s write lock: `info` and `list` read it without
    /// the lock, so they never wait behind a writer that waits behind a long search.
    count: AtomicUsize,
    /// One writer at a time, so disk and index see writes in the same order.
    writer: tokio::sync::Mutex<()>,
    /// Recent queries, for the recall check.
    samples: recall::Samples,
    /// The index's path name (`exact`, `binary`, `graph`), set with the index: read by `info`
    /// without the lock.
    kind: std::sync::Mutex<&'static str>,
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
    recall: RecallConfig,
    recall_gauge: Option<prometheus::GaugeVec>,
    recall_started: std::sync::atomic::AtomicBool,
    /// `<data_dir>/ann`: the saved graphs.
    ann_dir: std::path::PathBuf,
    /// Items per collection (`--max-collection-items`).
    max_items: usize,
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
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(panicked)
}

/// A storage task that panicked: logged, and an internal error that says so.
fn panicked<T>(e: tokio::task::JoinError) -> Result<T, ServiceError> {
    tracing::error!(error = %e, "storage task panicked");
    Err(ServiceError::Internal(
        "the collection store failed; the server logged the details".into(),
    ))
}

/// Runs a write to completion in a task of its own: when the caller's future is dropped (a client
/// hung up), the write still finishes, disk and memory together, and releases its locks after.
async fn detached<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T, ServiceError>> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::spawn(write).await.unwrap_or_else(panicked)
}

fn info(c: &Collection) -> CollectionInfo {
    let building = c
        .journal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some();
    CollectionInfo {
        name: c.meta.name.clone(),
        count: c.count.load(Ordering::Acquire),
        dimension: c.meta.dimension,
        model: c.meta.model.clone(),
        index: (*c.kind.lock().unwrap_or_else(PoisonError::into_inner)).to_string(),
        ready: !building,
        options: c.meta.options,
    }
}

/// The path name of an index's searches.
fn kind_of(index: &dyn VectorIndex) -> &'static str {
    match index.ann() {
        Some(ann) if ann.params().graph => "graph",
        Some(_) => "binary",
        None => "exact",
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
        let cache = crate::retrieve::store::DEFAULT_CACHE_BYTES;
        Self::open_with_cache(data_dir, search_threads, ann_min_vectors, skipped, cache)
    }

    /// [`Self::open`] with `cache_bytes` of redb page cache (`--store-cache-bytes`).
    pub fn open_with_cache(
        data_dir: &std::path::Path,
        search_threads: usize,
        ann_min_vectors: usize,
        skipped: prometheus::IntCounter,
        cache_bytes: usize,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let store = Store::open_with_cache(&data_dir.join("collections.redb"), cache_bytes)?;
        Ok(LocalStore {
            inner: Arc::new(Inner {
                store,
                collections: RwLock::new(BTreeMap::new()),
                skipped,
                admin: tokio::sync::Mutex::new(()),
                search_threads,
                ann_min_vectors,
                ann_params: AnnParams::default(),
                recall: RecallConfig::default(),
                recall_gauge: None,
                recall_started: std::sync::atomic::AtomicBool::new(false),
                ann_dir: data_dir.join("ann"),
                max_items: usize::MAX,
            }),
        })
    }

    /// The approximate index parameters of collection `meta`: the server's, with its own HNSW
    /// build settings.
    fn params_of(inner: &Inner, meta: &CollectionMeta) -> AnnParams {
        let mut params = inner.ann_params;
        if let Some(m) = meta.options.hnsw_m {
            params.connectivity = m as usize;
        }
        if let Some(ef) = meta.options.hnsw_ef_construction {
            params.expansion_add = ef as usize;
        }
        params
    }

    fn wants_ann(inner: &Inner, len: usize) -> bool {
        inner.ann_min_vectors > 0 && len >= inner.ann_min_vectors
    }

    /// The start-up index of a collection: approximate at the threshold when its saved graph is
    /// current (matches the store exactly and checks out: [`AnnIndex::load_current`], a read and
    /// a few checksums), else exact. Start-up never waits for a graph to be built or repaired: a
    /// collection at the threshold whose graph is missing, stale or damaged starts exact and gets
    /// its graph in the background once serving ([`Self::after_write`], repaired from the saved
    /// one when only a few items differ, else built), as one that grows past the threshold does.
    fn index_of(inner: &Inner, meta: &CollectionMeta, items: Items) -> Box<dyn VectorIndex> {
        let saved = persist::paths(&inner.ann_dir, &meta.name).1.exists();
        let params = Self::params_of(inner, meta);
        if Self::wants_ann(inner, items.len()) && !params.graph {
            // The binary scan needs no graph: its codes are rebuilt from the vectors (seconds
            // per million), so the collection starts approximate at once.
            let started = Instant::now();
            match AnnIndex::build(meta.dimension, inner.search_threads, params, &items) {
                Ok(index) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(collection = %meta.name, items = index.len(), ms, "binary codes built");
                    return Box::new(index);
                }
                Err(e) => {
                    tracing::error!(collection = %meta.name, error = %e, "could not build the binary codes; searching exactly")
                }
            }
        } else if Self::wants_ann(inner, items.len()) && saved {
            let started = Instant::now();
            let (dir, name) = (&inner.ann_dir, &meta.name);
            let loaded = AnnIndex::load_current(
                meta.dimension,
                inner.search_threads,
                params,
                &items,
                dir,
                name,
                &meta.id,
            );
            match loaded {
                Ok(Ok(index)) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(collection = %name, items = index.len(), ms, "approximate index loaded");
                    return Box::new(index);
                }
                Ok(Err(why)) => {
                    tracing::info!(collection = %name, reason = %why, "the saved HNSW graph is not current; searching exactly until it is repaired or rebuilt in the background")
                }
                Err(e) => {
                    tracing::error!(collection = %name, error = %e, "could not load the approximate index; searching exactly until it is rebuilt in the background")
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
        let (collection, threads, params, dir) = (
            Arc::clone(collection),
            inner.search_threads,
            Self::params_of(inner, &collection.meta),
            inner.ann_dir.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("ann-build".into())
            .spawn(move || {
                Self::build_in_background(&collection, threads, params, &dir, &snapshot);
                drop(snapshot);
                crate::common::release_free_memory();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the approximate index build");
            *journal = None;
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
        // The stored records and their per-item vectors are gone; their pages go back.
        crate::common::release_free_memory();
        Ok(())
    }

    fn collection_of(meta: CollectionMeta, index: Box<dyn VectorIndex>) -> Arc<Collection> {
        Arc::new(Collection {
            meta,
            count: AtomicUsize::new(index.len()),
            kind: std::sync::Mutex::new(kind_of(index.as_ref())),
            samples: recall::Samples::default(),
            index: RwLock::new(index),
            writer: tokio::sync::Mutex::new(()),
            journal: std::sync::Mutex::new(None),
        })
    }

    fn current(&self, name: &str) -> Result<Arc<Collection>, ServiceError> {
        Self::current_in(&self.inner, name)
    }

    fn current_in(inner: &Inner, name: &str) -> Result<Arc<Collection>, ServiceError> {
        inner
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
    fn incarnation(inner: &Inner, meta: &CollectionMeta) -> Result<Arc<Collection>, ServiceError> {
        match Self::current_in(inner, &meta.name) {
            Ok(c) if c.meta.id == meta.id => Ok(c),
            _ => Err(replaced(&meta.name)),
        }
    }

    /// Caps a collection's items (`--max-collection-items`); unlimited by default.
    /// Keeps `config`'s recall target by a background check once loaded, publishing what it
    /// measures into `gauge` (labelled by collection).
    pub fn with_recall(
        mut self,
        config: RecallConfig,
        gauge: Option<prometheus::GaugeVec>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.recall = config;
            inner.recall_gauge = gauge;
        }
        self
    }

    /// The recall check, every `interval` while the store lives (a thread holding it weakly).
    fn start_recall_check(inner: &Arc<Inner>) {
        let config = inner.recall;
        if config.interval.is_zero()
            || config.samples == 0
            || inner.recall_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak = Arc::downgrade(inner);
        recall::every(config.interval, move || {
            weak.upgrade()
                .map(|inner| Self::check_recall(&inner, &config))
                .is_some()
        });
    }

    /// Measures every binary-scanned collection on its sampled queries; raises its oversampling
    /// while under the target.
    fn check_recall(inner: &Inner, config: &RecallConfig) {
        let collections: Vec<Arc<Collection>> = inner
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for c in collections {
            let gauge = inner.recall_gauge.as_ref();
            let config = recall::for_collection(config, &c.meta.options);
            recall::keep(&c.meta.name, &c.index, &c.samples, &config, gauge);
        }
    }

    /// Sets the approximate index's parameters (graph or binary scan, oversampling).
    pub fn with_ann_params(mut self, params: AnnParams) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.ann_params = params;
        }
        self
    }

    pub fn with_max_items(mut self, max: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_items = max;
        }
        self
    }

    /// One Create, whole: runs detached (see [`detached`]); the redb commit and the insertion
    /// into the in-memory map happen in one blocking section.
    async fn create_unit(
        inner: Arc<Inner>,
        meta: CollectionMeta,
        max_collections: usize,
    ) -> Result<CollectionInfo, ServiceError> {
        let _admin = inner.admin.lock().await;
        {
            let collections = inner
                .collections
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if collections.contains_key(&meta.name) {
                return Err(exists(&meta.name));
            }
            if collections.len() >= max_collections {
                return Err(too_many(collections.len()));
            }
        }
        let section = Arc::clone(&inner);
        blocking(move || {
            section.store.create(&meta).map_err(store_error)?;
            let index = FlatIndex::new(meta.dimension, section.search_threads);
            let name = meta.name.clone();
            let collection = Self::collection_of(meta, Box::new(index));
            let out = info(&collection);
            section
                .collections
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, collection);
            Ok(out)
        })
        .await
    }

    /// One DeleteCollection, whole: runs detached; the redb commit, the graph files and the
    /// removal from the in-memory map happen in one blocking section, under the collection's
    /// writer lock (so no write of it is half done).
    async fn drop_unit(inner: Arc<Inner>, name: String) -> Result<(), ServiceError> {
        let _admin = inner.admin.lock().await;
        let collection = Self::current_in(&inner, &name)?;
        let _writer = collection.writer.lock().await;
        let section = Arc::clone(&inner);
        blocking(move || {
            section.store.drop_collection(&name).map_err(store_error)?;
            persist::remove_files(&section.ann_dir, &name);
            section
                .collections
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name);
            Ok(())
        })
        .await
    }

    /// One Upsert, whole: runs detached; under the collection's writer lock, one blocking
    /// section checks the item cap, commits to redb, then updates the index (taking its write
    /// lock on the blocking pool, never on a tokio worker) and the journal of a running build.
    async fn upsert_unit(
        inner: Arc<Inner>,
        meta: CollectionMeta,
        records: Vec<Record>,
    ) -> Result<usize, ServiceError> {
        let collection = Self::current_in(&inner, &meta.name).map_err(|_| replaced(&meta.name))?;
        let _writer = collection.writer.lock().await;
        let collection = Self::incarnation(&inner, &meta)?;
        let section = Arc::clone(&inner);
        blocking(move || {
            let inner = section;
            if inner.max_items < usize::MAX {
                let index = collection
                    .index
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let added = records.iter().filter(|r| !index.contains(&r.id)).count();
                let count = index.len();
                if count + added > inner.max_items {
                    return Err(ServiceError::ResourceExhausted(format!(
                        "collection {:?} holds {count} items and this upsert adds {added}, over the limit of {} items per collection ({MAX_COLLECTION_ITEMS}); nothing was written",
                        meta.name, inner.max_items
                    )));
                }
            }
            // The index holds what a start-up would load: the stored vector normalized by
            // `check_vector` (the same bits, so a saved graph's vector hashes match at start-up;
            // an embedding normalized elsewhere may differ in its last bits).
            let dim = meta.dimension;
            let (rows, entries): (Vec<_>, Vec<_>) = records
                .into_iter()
                .map(|r| {
                    let unit =
                        check_vector(Field::Param("stored"), &r.stored, dim).unwrap_or(r.unit);
                    (
                        (r.id.clone(), r.stored, r.metadata.clone()),
                        (r.id, unit, r.metadata),
                    )
                })
                .unzip();
            inner.store.upsert(&meta, &rows).map_err(store_error)?;
            drop(rows);
            let mut index = collection
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            // Copies for the journal only while a background build runs (it is set and taken
            // under this write lock).
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
            Self::after_write(&inner, &collection, &**index, || ops);
            collection.count.store(index.len(), Ordering::Release);
            Ok(index.len())
        })
        .await
    }

    /// One Delete, whole: as [`Self::upsert_unit`].
    async fn delete_unit(
        inner: Arc<Inner>,
        meta: CollectionMeta,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError> {
        let collection = Self::current_in(&inner, &meta.name).map_err(|_| replaced(&meta.name))?;
        let _writer = collection.writer.lock().await;
        let collection = Self::incarnation(&inner, &meta)?;
        let section = Arc::clone(&inner);
        blocking(move || {
            let inner = section;
            let deleted = inner.store.delete(&meta, &ids).map_err(store_error)?;
            let mut index = collection
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for id in &ids {
                index.delete(id);
            }
            Self::after_write(&inner, &collection, &**index, || {
                ids.into_iter().map(Op::Delete).collect()
            });
            collection.count.store(index.len(), Ordering::Release);
            Ok((deleted, index.len()))
        })
        .await
    }
}

/// Cancellation: every write (create, drop_collection, upsert, delete) runs in a task of its own
/// that the caller's future only awaits. Dropping the caller's future (a client
/// that hangs up) never cancels a write: once called, it runs to its end, and its redb commit and
/// in-memory update happen together in one blocking section, so disk and memory never disagree.
/// A write dropped before it took its locks still happens (it was asked for). Reads (collection,
/// info, list, search, get_items) change nothing and may be dropped at any point.
#[async_trait::async_trait]
impl CollectionStore for LocalStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Local
    }

    async fn load(&self) -> anyhow::Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || Self::load_blocking(&inner))
            .await
            .map_err(|e| anyhow::anyhow!("reading the collections panicked: {e}"))??;
        Self::start_recall_check(&self.inner);
        Ok(())
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

    /// Cancellation-safe: detached; commit and map insertion in one blocking section.
    async fn create(
        &self,
        meta: CollectionMeta,
        max_collections: usize,
    ) -> Result<CollectionInfo, ServiceError> {
        let inner = Arc::clone(&self.inner);
        detached(Self::create_unit(inner, meta, max_collections)).await
    }

    async fn collection(&self, name: &str) -> Result<CollectionMeta, ServiceError> {
        Ok(self.current(name)?.meta.clone())
    }

    /// Never waits for an index lock (the count is kept beside the index).
    async fn info(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        Ok(info(self.current(name)?.as_ref()))
    }

    /// Never waits for an index lock.
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

    /// Cancellation-safe: detached; commit, graph files and map removal in one blocking section.
    async fn drop_collection(&self, name: &str) -> Result<(), ServiceError> {
        let inner = Arc::clone(&self.inner);
        detached(Self::drop_unit(inner, name.to_string())).await
    }

    /// Cancellation-safe: detached; commit and index update in one blocking section.
    async fn upsert(
        &self,
        meta: &CollectionMeta,
        records: Vec<Record>,
    ) -> Result<usize, ServiceError> {
        let inner = Arc::clone(&self.inner);
        detached(Self::upsert_unit(inner, meta.clone(), records)).await
    }

    /// Cancellation-safe: detached; commit and index update in one blocking section.
    async fn delete(
        &self,
        meta: &CollectionMeta,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError> {
        let inner = Arc::clone(&self.inner);
        detached(Self::delete_unit(inner, meta.clone(), ids)).await
    }

    /// Runs on the blocking pool under the index's read lock; dropping the caller's future
    /// leaves the scan to finish there (it changes nothing).
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

    async fn search_with(
        &self,
        meta: &CollectionMeta,
        query: Vec<f32>,
        k: usize,
        filter: Metadata,
        exact: bool,
    ) -> Result<(Vec<Scored>, &'static str), ServiceError> {
        let collection = self.current(&meta.name)?;
        let cap = self.inner.recall.samples;
        tokio::task::spawn_blocking(move || {
            let found = collection
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .search_traced(&query, k, &filter, exact);
            if found.1 == "binary" {
                collection.samples.offer(&query, cap);
            }
            found
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_collection_starts_on_binary_codes_says_so_and_answers_exactly_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            LocalStore::open(
                dir.path(),
                2,
                500,
                prometheus::IntCounter::new("s", "s").unwrap(),
            )
            .unwrap()
            // A shortlist of 20 of the 2000 (the default would scan them all exactly).
            .with_ann_params(AnnParams {
                oversample: 4,
                ..AnnParams::default()
            })
        };
        let s = open();
        s.load().await.unwrap();
        s.create(CollectionMeta::new("c".into(), 16, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        let info = s.info("c").await.unwrap();
        assert_eq!((info.index.as_str(), info.ready), ("exact", true));
        let batch = (0..2000)
            .map(|i| record(&format!("id{i}"), unit(i, 16)))
            .collect();
        s.upsert(&meta, batch).await.unwrap();
        until("the switch", || async {
            s.info("c").await.unwrap().index == "binary"
        })
        .await;
        assert!(s.info("c").await.unwrap().ready);
        // No graph is saved for the binary scan; a restart starts on it at once.
        s.flush().await.unwrap();
        assert!(!persist::paths(&dir.path().join("ann"), "c").1.exists());
        drop(s);
        let s = open();
        s.load().await.unwrap();
        let info = s.info("c").await.unwrap();
        assert_eq!(
            (info.index.as_str(), info.ready, info.count),
            ("binary", true, 2000)
        );
        let q = unit(17, 16);
        let (top, path) = s
            .search_with(&meta, q.clone(), 5, Metadata::new(), true)
            .await
            .unwrap();
        assert_eq!((top[0].id.as_str(), path), ("id17", "exact"));
        let (approx, path) = s
            .search_with(&meta, q, 5, Metadata::new(), false)
            .await
            .unwrap();
        assert_eq!(path, "binary");
        assert_eq!(approx.len(), 5);
        assert_eq!(approx[0], top[0], "the item itself, with its exact score");
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
            .with_ann_params(AnnParams {
                graph: true,
                ..AnnParams::default()
            })
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

    /// Polls a write once, then drops it: a client that hangs up right after its write began
    /// (on the blocking pool, its redb commit under way).
    fn poll_once_and_drop<F: std::future::Future>(f: F) {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(f.as_mut().poll(&mut cx).is_pending(), "done in one poll");
    }

    /// Waits (bounded) until `done` holds.
    async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !done().await {
            assert!(Instant::now() < deadline, "{what}: never");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Waits for the write running in `name`, if any, to end (its writer lock).
    async fn settled(s: &LocalStore, name: &str) {
        let c = s.current(name).unwrap();
        drop(c.writer.lock().await);
    }

    async fn stored(s: &LocalStore, meta: &CollectionMeta, id: &str) -> bool {
        s.get_items(meta, vec![id.into()]).await.unwrap()[0].is_some()
    }

    async fn found(s: &LocalStore, meta: &CollectionMeta, id: &str, v: Vec<f32>) -> bool {
        let top = s.search(meta, v, 10, Metadata::new()).await.unwrap();
        top.iter().any(|t| t.id == id)
    }

    #[tokio::test]
    async fn an_upsert_dropped_after_its_commit_began_is_both_stored_and_searchable() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        s.create(CollectionMeta::new("c".into(), 2, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        s.upsert(&meta, vec![record("keep", vec![1.0, 0.0])])
            .await
            .unwrap();
        poll_once_and_drop(s.upsert(&meta, vec![record("a", vec![0.0, 1.0])]));
        until("the upsert on disk", || stored(&s, &meta, "a")).await;
        settled(&s, "c").await;
        assert!(
            found(&s, &meta, "a", vec![0.0, 1.0]).await,
            "stored, so searchable"
        );
        assert_eq!(s.info("c").await.unwrap().count, 2);
    }

    #[tokio::test]
    async fn a_delete_dropped_after_its_commit_began_leaves_the_ids_neither_stored_nor_searchable()
    {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        s.create(CollectionMeta::new("c".into(), 2, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        s.upsert(
            &meta,
            vec![record("a", vec![0.0, 1.0]), record("b", vec![1.0, 0.0])],
        )
        .await
        .unwrap();
        poll_once_and_drop(s.delete(&meta, vec!["a".into()]));
        until("the delete on disk", || async {
            !stored(&s, &meta, "a").await
        })
        .await;
        settled(&s, "c").await;
        assert!(
            !found(&s, &meta, "a", vec![0.0, 1.0]).await,
            "deleted, yet searchable"
        );
        assert!(found(&s, &meta, "b", vec![1.0, 0.0]).await);
        assert_eq!(s.info("c").await.unwrap().count, 1);
    }

    #[tokio::test]
    async fn a_create_dropped_after_its_commit_began_leaves_a_usable_collection() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        poll_once_and_drop(s.create(CollectionMeta::new("c".into(), 2, "m".into()), 4));
        until("the collection listed", || async {
            s.info("c").await.is_ok()
        })
        .await;
        let meta = s.collection("c").await.unwrap();
        assert_eq!(
            s.upsert(&meta, vec![record("a", vec![0.0, 1.0])])
                .await
                .unwrap(),
            1
        );
        assert!(found(&s, &meta, "a", vec![0.0, 1.0]).await);
        // And it survives a restart (it was on disk).
        drop(s);
        let s = store(dir.path()).await;
        assert_eq!(s.info("c").await.unwrap().count, 1);
    }

    #[tokio::test]
    async fn a_collection_delete_dropped_after_its_commit_began_leaves_no_zombie() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        s.create(CollectionMeta::new("c".into(), 2, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        s.upsert(&meta, vec![record("a", vec![0.0, 1.0])])
            .await
            .unwrap();
        poll_once_and_drop(s.drop_collection("c"));
        until("the collection gone", || async {
            matches!(s.info("c").await, Err(ServiceError::NotFound(_)))
        })
        .await;
        assert!(s.list().await.unwrap().is_empty());
        // Not a zombie: created again, empty.
        s.create(CollectionMeta::new("c".into(), 2, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        assert!(!stored(&s, &meta, "a").await);
        assert_eq!(s.info("c").await.unwrap().count, 0);
    }

    #[tokio::test]
    async fn a_writer_and_info_never_stall_the_runtime_behind_a_long_search() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(store(dir.path()).await);
        s.create(CollectionMeta::new("c".into(), 2, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        s.upsert(&meta, vec![record("a", vec![0.0, 1.0])])
            .await
            .unwrap();
        // A search scanning a huge collection: the index's read lock, held on another thread.
        let c = s.current("c").unwrap();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&released);
        let search = std::thread::spawn(move || {
            let guard = c.index.read().unwrap();
            held_tx.send(()).unwrap();
            let _ = stop_rx.recv_timeout(std::time::Duration::from_secs(10));
            flag.store(true, Ordering::SeqCst);
            drop(guard);
        });
        held_rx.recv().unwrap();
        let writer = {
            let (s, meta) = (Arc::clone(&s), meta.clone());
            tokio::spawn(async move { s.upsert(&meta, vec![record("b", vec![1.0, 0.0])]).await })
        };
        // This runtime has one thread: it keeps ticking, and info keeps answering, until the
        // upsert is on disk (waiting for the index) and 20 ticks after.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
        let (mut after, deadline) = (0, Instant::now() + std::time::Duration::from_secs(30));
        while after < 20 {
            tick.tick().await;
            assert!(
                Instant::now() < deadline,
                "the upsert never reached the disk"
            );
            s.info("c").await.unwrap();
            s.list().await.unwrap();
            if stored(&s, &meta, "b").await {
                after += 1;
            }
        }
        assert!(
            !released.load(Ordering::SeqCst),
            "the runtime stalled until the search ended"
        );
        stop_tx.send(()).unwrap();
        search.join().unwrap();
        assert_eq!(writer.await.unwrap().unwrap(), 2);
        assert_eq!(s.info("c").await.unwrap().count, 2);
        assert!(found(&s, &meta, "b", vec![1.0, 0.0]).await);
    }

    #[tokio::test]
    async fn an_upsert_past_the_item_cap_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(
            dir.path(),
            1,
            0,
            prometheus::IntCounter::new("s", "s").unwrap(),
        )
        .unwrap()
        .with_max_items(3);
        s.load().await.unwrap();
        s.create(CollectionMeta::new("c".into(), 2, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        let v = || vec![1.0, 0.0];
        s.upsert(&meta, vec![record("a", v()), record("b", v())])
            .await
            .unwrap();
        // A replacement and one new item: at the cap, fine.
        s.upsert(&meta, vec![record("a", v()), record("c", v())])
            .await
            .unwrap();
        let e = s
            .upsert(&meta, vec![record("b", v()), record("d", v())])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ServiceError::ResourceExhausted(m) if m.contains("--max-collection-items") && m.contains("limit of 3")),
            "{e}"
        );
        assert!(!stored(&s, &meta, "d").await, "refused whole");
        assert_eq!(s.info("c").await.unwrap().count, 3);
    }

    #[tokio::test]
    async fn a_stale_or_damaged_saved_graph_serves_exactly_at_once_then_switches() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            LocalStore::open(
                dir.path(),
                2,
                500,
                prometheus::IntCounter::new("s", "s").unwrap(),
            )
            .unwrap()
            .with_ann_params(AnnParams {
                graph: true,
                ..AnnParams::default()
            })
        };
        let batch = |r: std::ops::Range<usize>| -> Vec<Record> {
            r.map(|i| record(&format!("id{i}"), unit(i, 16))).collect()
        };
        let wait_ann = |s: &LocalStore| {
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            while !is_ann(s) {
                assert!(Instant::now() < deadline, "never switched");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let s = open();
        s.load().await.unwrap();
        s.create(CollectionMeta::new("c".into(), 16, "m".into()), 4)
            .await
            .unwrap();
        let meta = s.collection("c").await.unwrap();
        s.upsert(&meta, batch(0..600)).await.unwrap();
        wait_ann(&s);
        s.flush().await.unwrap();
        drop(s);
        let (graph, _) = persist::paths(&dir.path().join("ann"), "c");

        // Damaged: bytes changed inside the graph file (its length the same).
        let mut bytes = std::fs::read(&graph).unwrap();
        let at = bytes.len() / 2;
        for b in &mut bytes[at..at + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(&graph, &bytes).unwrap();
        let s = open();
        s.load().await.unwrap();
        assert!(
            !is_ann(&s),
            "a damaged graph is never loaded: exact at once"
        );
        assert_eq!(s.info("c").await.unwrap().count, 600);
        assert!(found(&s, &meta, "id7", unit(7, 16)).await);
        wait_ann(&s);
        assert!(found(&s, &meta, "id7", unit(7, 16)).await);
        s.flush().await.unwrap();
        // Stale: written after the last save (a crash, no flush).
        s.upsert(&meta, batch(600..610)).await.unwrap();
        drop(s);
        let s = open();
        s.load().await.unwrap();
        assert!(!is_ann(&s), "a stale graph is repaired in the background");
        assert!(found(&s, &meta, "id605", unit(605, 16)).await);
        wait_ann(&s);
        assert!(found(&s, &meta, "id605", unit(605, 16)).await);
        drop(s);
        // Repaired and saved by the background build: loaded at once next time.
        let s = open();
        s.load().await.unwrap();
        assert!(is_ann(&s), "a current graph loads at start-up");
        assert_eq!(s.info("c").await.unwrap().count, 610);
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
