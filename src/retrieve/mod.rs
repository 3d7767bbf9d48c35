//! Image-text retrieval in domain terms: stateless ranking, and collections (durable in redb,
//! searched in memory by a [`VectorIndex`]). Writes go to disk first, then to the index, one writer
//! per collection; searches read the index under a read lock, so they proceed while other writes
//! are being committed.
//!
//! Layer: a feature, below both doors; owns the [`VectorIndex`] and the store. Depends on `embed`
//! and `common` only.

pub mod index;
pub mod store;
mod validate;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use bytes::Bytes;
use index::{FlatIndex, Metadata, Scored, VectorIndex};
use store::{CollectionMeta, Store, StoreError, StoredItem};
use validate::check_vector;

use crate::{
    common::{Field, List, ServiceError, check_name},
    embed::{EmbedService, Permit},
    telemetry::usage::UsageKind,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrieveConfig {
    pub max_top_k: usize,
    /// Items per Upsert (and vector candidates per Rank).
    pub max_upsert_items: usize,
    pub max_collections: usize,
    pub max_id_bytes: usize,
    pub max_metadata_bytes: usize,
    pub search_threads: usize,
}

/// A query or candidate or item content.
#[derive(Debug, Clone)]
pub enum Content {
    Text(String),
    Image(Bytes),
    Vector(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct ItemInput {
    pub id: String,
    pub content: Option<Content>,
    pub metadata: Metadata,
}

/// A Search, as the protocol layer hands it over.
#[derive(Debug, Clone)]
pub struct SearchInput {
    pub query: Option<Content>,
    /// 0: the default (10).
    pub top_k: usize,
    pub filter: Metadata,
    /// The model a query vector comes from, if the client says.
    pub model: String,
}

#[derive(Debug, Clone)]
pub struct CollectionInfo {
    pub name: String,
    pub count: usize,
    pub dimension: usize,
    pub model: String,
}

struct Collection {
    meta: CollectionMeta,
    index: RwLock<Box<dyn VectorIndex>>,
    /// One writer at a time, so disk and index see writes in the same order.
    writer: tokio::sync::Mutex<()>,
}

struct Inner {
    embed: EmbedService,
    store: Store,
    /// Empty until [`RetrieveService::load`] has read the store; calls on collections get
    /// UNAVAILABLE meanwhile.
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    loaded: std::sync::atomic::AtomicBool,
    /// Stored records that did not decode at start-up.
    skipped: prometheus::IntCounter,
    /// Serializes creating and deleting collections.
    admin: tokio::sync::Mutex<()>,
    config: RetrieveConfig,
}

#[derive(Clone)]
pub struct RetrieveService {
    inner: Arc<Inner>,
}

fn store_error(e: StoreError) -> ServiceError {
    match e {
        StoreError::NoCollection(n) => not_found(&n),
        StoreError::Exists(n) => {
            ServiceError::AlreadyExists(format!("collection {n:?} already exists"))
        }
        StoreError::Replaced(n) => replaced(&n),
        StoreError::Db(e) => {
            tracing::error!(error = %e, "collection store failed");
            ServiceError::Internal(
                "the collection store failed; the server logged the details".into(),
            )
        }
    }
}

fn replaced(name: &str) -> ServiceError {
    ServiceError::Aborted(format!(
        "collection {name:?} was deleted while this write was in flight; nothing was written"
    ))
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!(
        "no collection named {name:?} (ListCollections shows them)"
    ))
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

impl RetrieveService {
    /// Opens `<data_dir>/collections.redb`; the collections are read into memory by
    /// [`Self::load`] (seconds for millions of vectors), so listeners and health can answer first.
    /// `skipped` counts records that do not decode.
    pub fn open(
        embed: EmbedService,
        data_dir: &std::path::Path,
        config: RetrieveConfig,
        skipped: prometheus::IntCounter,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let store = Store::open(&data_dir.join("collections.redb"))?;
        Ok(RetrieveService {
            inner: Arc::new(Inner {
                embed,
                store,
                collections: RwLock::new(BTreeMap::new()),
                loaded: std::sync::atomic::AtomicBool::new(false),
                skipped,
                admin: tokio::sync::Mutex::new(()),
                config,
            }),
        })
    }

    /// The limits the service enforces (the HTTP layer bounds its parsing by them).
    pub fn config(&self) -> RetrieveConfig {
        self.inner.config
    }

    /// Reads every collection into memory (blocking: run it on a blocking thread). A record that
    /// does not decode, or a stored vector that is unusable, is logged, counted in
    /// `clip_store_records_skipped_total` and left out (it stays on disk).
    pub fn load(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let skipped = &self.inner.skipped;
        let config = self.inner.config;
        let stored = self.inner.store.load_all(|collection, id, why| {
            skipped.inc();
            tracing::error!(%collection, id, error = %why, "skipping a stored record that does not decode (kept on disk)");
        })?;
        let mut collections = BTreeMap::new();
        let mut total = 0;
        for (meta, items) in stored {
            let mut index = FlatIndex::new(meta.dimension, config.search_threads);
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
            collections.insert(
                meta.name.clone(),
                Arc::new(Collection {
                    meta,
                    index: RwLock::new(Box::new(index)),
                    writer: tokio::sync::Mutex::new(()),
                }),
            );
        }
        tracing::info!(
            collections = collections.len(),
            items = total,
            ms = started.elapsed().as_millis() as u64,
            "collections loaded"
        );
        *self
            .inner
            .collections
            .write()
            .unwrap_or_else(PoisonError::into_inner) = collections;
        self.inner
            .loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether the collections have been read into memory.
    pub fn is_loaded(&self) -> bool {
        self.inner.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    fn check_loaded(&self) -> Result<(), ServiceError> {
        if self.is_loaded() {
            Ok(())
        } else {
            Err(ServiceError::Unavailable(
                "collections are still loading; retry when health reports SERVING for clip.v1.Retrieve".into(),
            ))
        }
    }

    /// Candidates of a Rank and ids of a Delete or GetItems are bounded by `--max-upsert-items`.
    fn check_list_len(&self, list: List, n: usize) -> Result<(), ServiceError> {
        let max = self.inner.config.max_upsert_items;
        if n > max {
            return Err(ServiceError::invalid(
                Field::List(list),
                format!(
                    "{n} {}, over the limit of {max} (--max-upsert-items)",
                    list.as_str()
                ),
            ));
        }
        Ok(())
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>, ServiceError> {
        self.check_loaded()?;
        self.inner
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// The served model's id (`model_name:pretrained`) and dimension.
    fn served(&self) -> Result<(String, usize), ServiceError> {
        let model = self.inner.embed.admitted_model()?;
        Ok((model.config.model_id(), model.config.embed_dim))
    }

    /// Ranks candidates against the query, best first.
    pub async fn rank(
        &self,
        query: Option<Content>,
        candidates: Vec<Option<Content>>,
        top_k: usize,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Vec<(usize, f32)>, ServiceError> {
        let _permit = permit;
        let (_, dim) = self.served()?;
        if candidates.is_empty() {
            return Err(ServiceError::invalid(
                Field::List(List::Candidates),
                "none given",
            ));
        }
        self.check_list_len(List::Candidates, candidates.len())?;
        let mut all = vec![query];
        all.extend(candidates);
        // The query travels as element 0, in front of the candidates.
        let field_of = |i: usize| match i {
            0 => Field::Param("query"),
            i => Field::item(List::Candidates, i - 1),
        };
        let mut vectors = self
            .vectors(Field::List(List::Candidates), field_of, all, dim, deadline)
            .await?;
        let query = vectors.remove(0);
        let mut scored: Vec<(usize, f32)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i, index::dot(&query, v)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        crate::telemetry::usage::record(UsageKind::RerankDocuments, scored.len() as u64);
        if top_k > 0 {
            scored.truncate(top_k);
        }
        Ok(scored)
    }

    pub async fn create(
        &self,
        name: String,
        dimension: usize,
        model: String,
    ) -> Result<CollectionInfo, ServiceError> {
        check_name("collection", &name)?;
        let (served_model, served_dim) = {
            let model = self.inner.embed.loaded_model()?;
            (model.config.model_id(), model.config.embed_dim)
        };
        let model = if model.is_empty() {
            served_model.clone()
        } else {
            model
        };
        let dimension = if dimension == 0 {
            served_dim
        } else {
            dimension
        };
        if model == served_model && dimension != served_dim {
            return Err(ServiceError::invalid(
                Field::Param("dimension"),
                format!("{dimension}, but model {model:?} makes {served_dim}-dimensional vectors"),
            ));
        }
        if dimension > 65_536 {
            return Err(ServiceError::invalid(
                Field::Param("dimension"),
                format!("{dimension} is over 65536"),
            ));
        }
        self.insert_collection(CollectionMeta::new(name, dimension, model))
            .await
    }

    /// Creates a validated collection: durable first, then visible.
    async fn insert_collection(
        &self,
        meta: CollectionMeta,
    ) -> Result<CollectionInfo, ServiceError> {
        let name = meta.name.clone();
        self.check_loaded()?;
        let _admin = self.inner.admin.lock().await;
        {
            let collections = self
                .inner
                .collections
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if collections.contains_key(&name) {
                return Err(ServiceError::AlreadyExists(format!(
                    "collection {name:?} already exists"
                )));
            }
            if collections.len() >= self.inner.config.max_collections {
                return Err(ServiceError::ResourceExhausted(format!(
                    "{} collections exist, the limit (--max-collections); delete one first",
                    collections.len()
                )));
            }
        }
        let dimension = meta.dimension;
        let inner = Arc::clone(&self.inner);
        let stored = meta.clone();
        blocking(move || inner.store.create(&stored).map_err(store_error)).await?;
        let index = FlatIndex::new(dimension, self.inner.config.search_threads);
        self.inner
            .collections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                name.clone(),
                Arc::new(Collection {
                    meta,
                    index: RwLock::new(Box::new(index)),
                    writer: tokio::sync::Mutex::new(()),
                }),
            );
        self.get(&name)
    }

    pub fn get(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        Ok(info(self.collection(name)?.as_ref()))
    }

    pub fn list(&self) -> Result<Vec<CollectionInfo>, ServiceError> {
        self.check_loaded()?;
        Ok(self
            .inner
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| info(c))
            .collect())
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), ServiceError> {
        let _admin = self.inner.admin.lock().await;
        let collection = self.collection(name)?;
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

    /// Inserts or replaces items; durable when it returns. Returns (upserted, count).
    pub async fn upsert(
        &self,
        name: &str,
        items: Vec<ItemInput>,
        model: &str,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<(usize, usize), ServiceError> {
        let _permit = permit;
        let collection = self.collection(name)?;
        let config = &self.inner.config;
        if items.is_empty() {
            return Err(ServiceError::invalid(
                Field::List(List::Items),
                "none given",
            ));
        }
        if items.len() > config.max_upsert_items {
            return Err(ServiceError::invalid(
                Field::List(List::Items),
                format!(
                    "{} items, over the limit of {} per Upsert (--max-upsert-items)",
                    items.len(),
                    config.max_upsert_items
                ),
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if item.id.is_empty() {
                return Err(ServiceError::invalid_item(List::Items, i, "empty id"));
            }
            if item.id.len() > config.max_id_bytes {
                return Err(ServiceError::invalid_item(
                    List::Items,
                    i,
                    format!(
                        "id is {} bytes, over the limit of {}",
                        item.id.len(),
                        config.max_id_bytes
                    ),
                ));
            }
            if let Some(first) = seen.insert(item.id.as_str(), i) {
                return Err(ServiceError::invalid_item(
                    List::Items,
                    i,
                    format!("id {:?} repeats items[{first}]", item.id),
                ));
            }
            self.check_metadata(Field::item(List::Items, i).part("metadata"), &item.metadata)?;
        }
        let needs_model = items
            .iter()
            .any(|i| matches!(i.content, Some(Content::Text(_) | Content::Image(_))));
        self.check_model(&collection.meta, model, needs_model)?;
        let (ids, contents, metadata): (Vec<String>, Vec<Option<Content>>, Vec<Metadata>) = items
            .into_iter()
            .fold((Vec::new(), Vec::new(), Vec::new()), |mut acc, i| {
                acc.0.push(i.id);
                acc.1.push(i.content);
                acc.2.push(i.metadata);
                acc
            });
        // What is stored: client vectors exactly as sent; texts and images as embedded.
        let raw: Vec<Option<Vec<f32>>> = contents
            .iter()
            .map(|c| match c {
                Some(Content::Vector(v)) => Some(v.clone()),
                _ => None,
            })
            .collect();
        let units = self
            .vectors(
                Field::List(List::Items),
                |i| Field::item(List::Items, i),
                contents,
                collection.meta.dimension,
                deadline,
            )
            .await?;
        let records: Vec<(String, Vec<f32>, Metadata)> = ids
            .iter()
            .zip(&units)
            .zip(raw)
            .zip(&metadata)
            .map(|(((id, unit), raw), md)| {
                (id.clone(), raw.unwrap_or_else(|| unit.clone()), md.clone())
            })
            .collect();
        let entries: Vec<(String, Vec<f32>, Metadata)> = ids
            .into_iter()
            .zip(units)
            .zip(metadata)
            .map(|((id, unit), md)| (id, unit, md))
            .collect();
        self.commit_upsert(&collection, records, entries).await
    }

    /// The write half of an Upsert: durable in the store, then visible in the index, both for the
    /// collection the write began with. Under its writer lock the collection must still be the one
    /// of that name (in memory and, within the store's transaction, on disk): a write that lost a
    /// race with DeleteCollection (and CreateCollection of the same name) is ABORTED, whole.
    async fn commit_upsert(
        &self,
        collection: &Arc<Collection>,
        records: Vec<(String, Vec<f32>, Metadata)>,
        entries: Vec<(String, Vec<f32>, Metadata)>,
    ) -> Result<(usize, usize), ServiceError> {
        let n = records.len();
        let _writer = collection.writer.lock().await;
        self.check_current(collection)?;
        let inner = Arc::clone(&self.inner);
        let meta = collection.meta.clone();
        blocking(move || inner.store.upsert(&meta, &records).map_err(store_error)).await?;
        let mut index = collection
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, unit, md) in entries {
            index.upsert(id, &unit, Arc::new(md));
        }
        Ok((n, index.len()))
    }

    /// `collection` is still the one its name refers to (called under its writer lock, which a
    /// DeleteCollection of it also takes).
    fn check_current(&self, collection: &Arc<Collection>) -> Result<(), ServiceError> {
        let current = self
            .inner
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&collection.meta.name)
            .cloned();
        match current {
            Some(c) if Arc::ptr_eq(&c, collection) => Ok(()),
            _ => Err(replaced(&collection.meta.name)),
        }
    }

    /// Deletes ids (absent ones are fine); durable when it returns. Returns (deleted, count).
    pub async fn delete(
        &self,
        name: &str,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError> {
        let collection = self.collection(name)?;
        self.check_list_len(List::Ids, ids.len())?;
        self.commit_delete(&collection, ids).await
    }

    /// The write half of a Delete, for the collection it began with (see [`Self::commit_upsert`]).
    async fn commit_delete(
        &self,
        collection: &Arc<Collection>,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError> {
        let _writer = collection.writer.lock().await;
        self.check_current(collection)?;
        let inner = Arc::clone(&self.inner);
        let meta = collection.meta.clone();
        let to_delete = ids.clone();
        let deleted =
            blocking(move || inner.store.delete(&meta, &to_delete).map_err(store_error)).await?;
        let mut index = collection
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for id in &ids {
            index.delete(id);
        }
        Ok((deleted, index.len()))
    }

    pub async fn search(
        &self,
        name: &str,
        search: SearchInput,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Vec<Scored>, ServiceError> {
        let SearchInput {
            query,
            top_k,
            filter,
            model,
        } = search;
        let model = model.as_str();
        let _permit = permit;
        let collection = self.collection(name)?;
        let max = self.inner.config.max_top_k;
        let k = if top_k == 0 { 10 } else { top_k };
        if k > max {
            return Err(ServiceError::invalid(
                Field::Param("top_k"),
                format!("{k} is over the limit of {max} (--max-top-k)"),
            ));
        }
        self.check_metadata(Field::Param("filter"), &filter)?;
        let needs_model = matches!(query, Some(Content::Text(_) | Content::Image(_)));
        self.check_model(&collection.meta, model, needs_model)?;
        let query_field = || Field::Param("query");
        let mut q = self
            .vectors(
                query_field(),
                |_| query_field(),
                vec![query],
                collection.meta.dimension,
                deadline,
            )
            .await?;
        let query = q.pop().unwrap_or_default();
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

    /// Items exactly as stored, and the ids that are absent.
    pub async fn get_items(
        &self,
        name: &str,
        ids: Vec<String>,
    ) -> Result<(Vec<StoredItem>, Vec<String>), ServiceError> {
        self.collection(name)?;
        self.check_list_len(List::Ids, ids.len())?;
        let inner = Arc::clone(&self.inner);
        let owned = name.to_string();
        let wanted = ids.clone();
        let found = blocking(move || inner.store.get(&owned, &wanted).map_err(store_error)).await?;
        let mut items = Vec::new();
        let mut missing = Vec::new();
        for (id, item) in ids.into_iter().zip(found) {
            match item {
                Some(item) => items.push(item),
                None => missing.push(id),
            }
        }
        Ok((items, missing))
    }
}

fn info(c: &Collection) -> CollectionInfo {
    CollectionInfo {
        name: c.meta.name.clone(),
        count: c.index.read().unwrap_or_else(PoisonError::into_inner).len(),
        dimension: c.meta.dimension,
        model: c.meta.model.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        admission::{AdmissionConfig, Gate},
        batch::BatcherConfig,
        embed::{EmbedConfig, Limits},
        telemetry::metrics::Metrics,
    };

    /// A service with no model loaded: vectors only, which is all the write path needs.
    fn service(dir: &std::path::Path) -> RetrieveService {
        let metrics = Metrics::new().unwrap();
        let gate = Gate::new(
            AdmissionConfig {
                max_concurrent_requests: 4,
                max_inflight_bytes: 1 << 20,
                max_stream_readers: 2,
            },
            metrics.requests_in_flight().clone(),
            metrics.inflight_bytes(),
        );
        let embed = EmbedService::new(
            EmbedConfig {
                limits: Limits {
                    max_items_per_request: 8,
                    max_image_bytes: 1 << 20,
                    max_image_pixels: 1 << 20,
                    max_text_bytes: 1024,
                    max_message_bytes: 1 << 20,
                    max_concurrent_requests: 4,
                },
                batch: BatcherConfig {
                    max_batch_size: 4,
                    max_batch_delay: std::time::Duration::ZERO,
                    max_queue_rows: 64,
                },
                max_stream_in_flight: 4,
                apply_exif_orientation: false,
                preprocess_workers: 1,
                max_decode_bytes: 64 << 20,
            },
            gate,
            metrics,
        );
        let config = RetrieveConfig {
            max_top_k: 10,
            max_upsert_items: 10,
            max_collections: 4,
            max_id_bytes: 64,
            max_metadata_bytes: 1024,
            search_threads: 1,
        };
        let s = RetrieveService::open(
            embed,
            dir,
            config,
            prometheus::IntCounter::new("s", "s").unwrap(),
        )
        .unwrap();
        assert!(matches!(s.list(), Err(ServiceError::Unavailable(_))));
        s.load().unwrap();
        s
    }

    /// Collection `c` as a write that began against it holds it, after `c` was deleted and
    /// created again meanwhile.
    async fn replaced_collection(s: &RetrieveService) -> Arc<Collection> {
        let meta = || CollectionMeta::new("c".into(), 2, "m".into());
        s.insert_collection(meta()).await.unwrap();
        // A write into `c` embeds its items (slow) holding this collection ...
        let old = s.collection("c").unwrap();
        // ... while `c` is deleted and created again.
        s.drop_collection("c").await.unwrap();
        s.insert_collection(meta()).await.unwrap();
        old
    }

    #[tokio::test]
    async fn an_upsert_that_lost_a_race_with_delete_and_create_is_aborted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let old = replaced_collection(&s).await;
        let records = vec![("a".to_string(), vec![1.0, 0.0], Metadata::new())];
        let e = s
            .commit_upsert(&old, records.clone(), records)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ServiceError::Aborted(m) if m.contains("deleted")),
            "{e}"
        );
        // Nothing landed anywhere: not on disk, not in either index.
        let (items, missing) = s.get_items("c", vec!["a".into()]).await.unwrap();
        assert!(items.is_empty());
        assert_eq!(missing, ["a"]);
        assert_eq!(s.get("c").unwrap().count, 0);
        assert_eq!(old.index.read().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_delete_that_lost_the_same_race_is_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let old = replaced_collection(&s).await;
        let new = s.collection("c").unwrap();
        let item = vec![("a".to_string(), vec![0.0, 1.0], Metadata::new())];
        s.commit_upsert(&new, item.clone(), item).await.unwrap();
        let e = s.commit_delete(&old, vec!["a".into()]).await.unwrap_err();
        assert!(matches!(e, ServiceError::Aborted(_)), "{e}");
        assert_eq!(
            s.get("c").unwrap().count,
            1,
            "the new collection keeps its item"
        );
        let (items, _) = s.get_items("c", vec!["a".into()]).await.unwrap();
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn client_vectors_are_checked_and_normalized() {
        assert_eq!(
            check_vector(Field::Param("v"), &[3.0, 4.0], 2).unwrap(),
            vec![0.6, 0.8]
        );
        for (bad, needle) in [
            (vec![1.0], "1 values, expected 2"),
            (vec![f32::NAN, 1.0], "value 0 is NaN"),
            (vec![1.0, f32::INFINITY], "value 1 is inf"),
            (vec![0.0, 0.0], "zero vector"),
        ] {
            let e = check_vector(Field::item(List::Items, 4).part("vector"), &bad, 2)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("items[4].vector: ") && e.contains(needle),
                "{e}"
            );
        }
    }
}
