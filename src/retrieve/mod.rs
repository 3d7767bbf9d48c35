//! Image-text retrieval in domain terms: stateless ranking, and collections in a
//! [`backend::CollectionStore`]: the local one (durable in redb, searched in memory by a
//! [`index::VectorIndex`]) or PostgreSQL + pgvector (shared by replicas). This service validates
//! every request and embeds texts and images; the store owns durability, identity and search.
//!
//! Layer: a feature, below both doors; owns the stores. Depends on `embed` and `common` only.

pub mod ann;
pub mod backend;
pub mod index;
pub mod local;
pub mod postgres;
pub mod recall;
pub mod store;
pub mod synth;
mod validate;

pub use ann::AnnParams;

use crate::common::limit::{
    MAX_COLLECTION_ITEMS, MAX_MODEL_BYTES, MAX_REPLY_BYTES, MAX_TOP_K, MAX_UPSERT_ITEMS,
};
use std::{collections::HashMap, sync::Arc, time::Instant};

pub use backend::StoreKind;
use backend::{Record, SharedStore};
use bytes::Bytes;
use index::{Metadata, Scored};
pub use store::CollectionOptions;
use store::{CollectionMeta, StoredItem};
use tracing::Instrument;
#[cfg(test)]
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
    /// Local store: collections of at least this many items are searched approximately (binary
    /// codes or HNSW, exactly rescored); 0 never.
    pub ann_min_vectors: usize,
    /// Local store: the approximate index's parameters (`--ann-graph`, `--ann-oversample`).
    pub ann: AnnParams,
    /// The recall target and its background check (`--recall-*`; both stores).
    pub recall: recall::RecallConfig,
    /// Bytes of items (ids, vectors, metadata) one GetItems reply may carry, and of collections
    /// one ListCollections reply may carry (`--max-reply-bytes`).
    pub max_reply_bytes: usize,
    /// Items per collection (`--max-collection-items`).
    pub max_collection_items: usize,
    /// Longest collection `model` string (`--max-model-bytes`).
    pub max_model_bytes: usize,
    /// Local store: redb's page cache (`--store-cache-bytes`).
    pub store_cache_bytes: usize,
}

/// Bytes an item takes in a reply, roughly: id, vector, metadata keys and values.
fn item_bytes(item: &StoredItem) -> usize {
    item.id.len()
        + item.vector.len() * 4
        + item
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + 16
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
    /// Asks for the exact answer (a scan of every item or of the filter's matches), whatever the
    /// collection's index.
    pub exact: bool,
}

#[derive(Debug, Clone)]
pub struct CollectionInfo {
    pub name: String,
    pub count: usize,
    pub dimension: usize,
    pub model: String,
    /// The index searches use: `exact`, `binary` (binary codes + exact rescoring), `graph`
    /// (local HNSW), `hnsw` (PostgreSQL's), `mirror` (PostgreSQL, scanned from this replica's
    /// in-memory codes).
    pub index: String,
    /// False while that index is being built (searches are answered exactly meanwhile).
    pub ready: bool,
    /// Its own settings (given at creation).
    pub options: CollectionOptions,
}

struct Inner {
    embed: EmbedService,
    store: SharedStore,
    /// False until [`RetrieveService::load`] has read (or connected to) the store; calls on
    /// collections get UNAVAILABLE meanwhile.
    loaded: std::sync::atomic::AtomicBool,
    config: RetrieveConfig,
    /// Searches per path (`clip_search_path_total{path}`).
    search_paths: Option<prometheus::IntCounterVec>,
}

#[derive(Clone)]
pub struct RetrieveService {
    inner: Arc<Inner>,
}

impl RetrieveService {
    /// A service over `store`; calls on collections wait for [`Self::load`].
    pub fn new(embed: EmbedService, store: SharedStore, config: RetrieveConfig) -> Self {
        RetrieveService {
            inner: Arc::new(Inner {
                embed,
                store,
                loaded: std::sync::atomic::AtomicBool::new(false),
                config,
                search_paths: None,
            }),
        }
    }

    /// Counts searches per path into `counter` (labelled `path`).
    pub fn with_search_paths(mut self, counter: prometheus::IntCounterVec) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.search_paths = Some(counter);
        }
        self
    }

    /// Today's store: `<data_dir>/collections.redb`, searched in memory.
    pub fn open(
        embed: EmbedService,
        data_dir: &std::path::Path,
        config: RetrieveConfig,
        skipped: prometheus::IntCounter,
        measured_recall: Option<prometheus::GaugeVec>,
    ) -> anyhow::Result<Self> {
        let store = local::LocalStore::open_with_cache(
            data_dir,
            config.search_threads,
            config.ann_min_vectors,
            skipped,
            config.store_cache_bytes,
        )?
        .with_max_items(config.max_collection_items)
        .with_ann_params(config.ann)
        .with_recall(config.recall, measured_recall);
        Ok(Self::new(embed, Arc::new(store), config))
    }

    /// The limits the service enforces (the HTTP layer bounds its parsing by them).
    pub fn config(&self) -> RetrieveConfig {
        self.inner.config
    }

    /// Collections in PostgreSQL through `pool` (nothing connects until [`Self::load`]).
    pub fn with_postgres(
        embed: EmbedService,
        pool: crate::postgres::Pool,
        pg: &crate::postgres::PgConfig,
        config: RetrieveConfig,
        measured_recall: Option<prometheus::GaugeVec>,
        mirror_metrics: crate::telemetry::metrics::MirrorMetrics,
    ) -> Self {
        if pg.index == crate::postgres::schema::IndexKind::None && pg.mirror.max_items == 0 {
            tracing::warn!(
                "--postgres-index none with --postgres-mirror-max-items 0: every search of a new \
                 collection is an exact scan of its table"
            );
        }
        let store = postgres::PgStore::new(pool, pg.exact_below)
            .with_index(pg.index, pg.build)
            .with_halfvec(pg.halfvec)
            .with_ef_search(pg.ef_search)
            .with_oversample(pg.oversample)
            .with_mirror(pg.mirror)
            .with_mirror_metrics(mirror_metrics)
            .with_recall(config.recall, measured_recall);
        let store = Arc::new(store);
        postgres::start_recall_check(Arc::downgrade(&store), config.recall);
        postgres::start_mirror(Arc::downgrade(&store), pg.mirror);
        Self::new(embed, store, config)
    }

    /// Reads the collections into memory (local) or connects and migrates (postgres); until then
    /// calls on collections are UNAVAILABLE.
    pub async fn load(&self) -> anyhow::Result<()> {
        self.inner.store.load().await?;
        self.inner
            .loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Graceful shutdown: the store saves what it keeps beside its data (the local store's HNSW
    /// graphs). Failures are logged.
    pub async fn flush(&self) {
        if let Err(e) = self.inner.store.flush().await {
            tracing::error!(error = %e, "saving the collections' search indexes failed");
        }
    }

    /// Which store holds the collections.
    pub fn store_kind(&self) -> StoreKind {
        self.inner.store.kind()
    }

    /// Whether the store answers now (UNAVAILABLE when it does not).
    pub async fn ping(&self) -> Result<(), ServiceError> {
        self.check_loaded()?;
        self.inner.store.ping().await
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
                    "{n} {}, over the limit of {max} ({MAX_UPSERT_ITEMS})",
                    list.as_str()
                ),
            ));
        }
        Ok(())
    }

    async fn collection(&self, name: &str) -> Result<CollectionMeta, ServiceError> {
        self.check_loaded()?;
        self.inner.store.collection(name).await
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
        self.create_with(name, dimension, model, CollectionOptions::default())
            .await
    }

    /// [`Self::create`] with the collection's own settings (HNSW build, recall target).
    pub async fn create_with(
        &self,
        name: String,
        dimension: usize,
        model: String,
        options: CollectionOptions,
    ) -> Result<CollectionInfo, ServiceError> {
        check_name("collection", &name)?;
        options
            .check()
            .map_err(|(field, why)| ServiceError::invalid(Field::Param(field), why))?;
        let (served_model, served_dim) = {
            let model = self.inner.embed.loaded_model()?;
            (model.config.model_id(), model.config.embed_dim)
        };
        let max_model = self.inner.config.max_model_bytes;
        if model.len() > max_model {
            return Err(ServiceError::invalid(
                Field::Param("model"),
                format!(
                    "{} bytes, over the limit of {max_model} ({MAX_MODEL_BYTES})",
                    model.len()
                ),
            ));
        }
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
        self.insert_collection(CollectionMeta::new(name, dimension, model).with_options(options))
            .await
    }

    /// Creates a validated collection: durable first, then visible.
    async fn insert_collection(
        &self,
        meta: CollectionMeta,
    ) -> Result<CollectionInfo, ServiceError> {
        self.check_loaded()?;
        self.inner
            .store
            .create(meta, self.inner.config.max_collections)
            .await
    }

    pub async fn get(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        self.check_loaded()?;
        self.inner.store.info(name).await
    }

    /// Every collection; refused (RESOURCE_EXHAUSTED) when the reply would pass
    /// `--max-reply-bytes` (names and models are bounded, so only a very low limit gets there).
    pub async fn list(&self) -> Result<Vec<CollectionInfo>, ServiceError> {
        self.check_loaded()?;
        let all = self.inner.store.list().await?;
        let bytes: usize = all.iter().map(|c| c.name.len() + c.model.len() + 32).sum();
        let max = self.inner.config.max_reply_bytes;
        if bytes > max {
            return Err(ServiceError::ResourceExhausted(format!(
                "the {} collections take {bytes} bytes, over the reply limit of {max} ({MAX_REPLY_BYTES})",
                all.len()
            )));
        }
        Ok(all)
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), ServiceError> {
        self.check_loaded()?;
        self.inner.store.drop_collection(name).await
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
        let collection = self.collection(name).await?;
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
                    "{} items, over the limit of {} per Upsert ({MAX_UPSERT_ITEMS})",
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
        self.check_model(&collection, model, needs_model)?;
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
                collection.dimension,
                deadline,
            )
            .await?;
        let records: Vec<Record> = ids
            .into_iter()
            .zip(units)
            .zip(raw)
            .zip(metadata)
            .map(|(((id, unit), raw), metadata)| Record {
                id,
                stored: raw.unwrap_or_else(|| unit.clone()),
                unit,
                metadata,
            })
            .collect();
        let n = records.len();
        if self.inner.store.kind().is_shared() {
            // The local store checks the cap exactly, in the write (replacements do not count);
            // elsewhere every item counts as new.
            self.check_collection_items(&collection.name, n).await?;
        }
        let count = self
            .inner
            .store
            .upsert(&collection, records)
            .instrument(tracing::debug_span!("store", op = "upsert"))
            .await?;
        Ok((n, count))
    }

    /// Deletes ids (absent ones are fine); durable when it returns. Returns (deleted, count).
    pub async fn delete(
        &self,
        name: &str,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError> {
        let collection = self.collection(name).await?;
        self.check_list_len(List::Ids, ids.len())?;
        self.inner
            .store
            .delete(&collection, ids)
            .instrument(tracing::debug_span!("store", op = "delete"))
            .await
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
            exact,
        } = search;
        let model = model.as_str();
        let _permit = permit;
        let collection = self.collection(name).await?;
        let max = self.inner.config.max_top_k;
        let k = if top_k == 0 { 10 } else { top_k };
        if k > max {
            return Err(ServiceError::invalid(
                Field::Param("top_k"),
                format!("{k} is over the limit of {max} ({MAX_TOP_K})"),
            ));
        }
        self.check_metadata(Field::Param("filter"), &filter)?;
        let needs_model = matches!(query, Some(Content::Text(_) | Content::Image(_)));
        self.check_model(&collection, model, needs_model)?;
        let query_field = || Field::Param("query");
        let mut q = self
            .vectors(
                query_field(),
                |_| query_field(),
                vec![query],
                collection.dimension,
                deadline,
            )
            .await?;
        let query = q.pop().unwrap_or_default();
        let (found, path) = self
            .inner
            .store
            .search_with(&collection, query, k, filter, exact)
            .instrument(tracing::debug_span!("store", op = "search"))
            .await?;
        if let Some(paths) = &self.inner.search_paths {
            paths.with_label_values(&[path]).inc();
        }
        Ok(found)
    }

    /// Items exactly as stored, and the ids that are absent.
    pub async fn get_items(
        &self,
        name: &str,
        ids: Vec<String>,
    ) -> Result<(Vec<StoredItem>, Vec<String>), ServiceError> {
        let collection = self.collection(name).await?;
        self.check_list_len(List::Ids, ids.len())?;
        let config = &self.inner.config;
        let max = config.max_reply_bytes;
        // Read in chunks that fit the budget even at the largest item this collection can hold,
        // so a refused reply never held much more than the budget in memory.
        let largest =
            collection.dimension * 4 + config.max_id_bytes + config.max_metadata_bytes * 2;
        let chunk = (max / largest.max(1)).clamp(1, ids.len().max(1));
        let (mut items, mut missing, mut bytes) = (Vec::new(), Vec::new(), 0);
        for part in ids.chunks(chunk) {
            let found = self
                .inner
                .store
                .get_items(&collection, part.to_vec())
                .await?;
            for (id, item) in part.iter().zip(found) {
                match item {
                    Some(item) => {
                        bytes += item_bytes(&item);
                        if bytes > max {
                            return Err(ServiceError::invalid(
                                Field::List(List::Ids),
                                format!(
                                    "the items found pass the reply limit of {max} bytes ({MAX_REPLY_BYTES}) at items[{}]; ask for fewer ids at a time",
                                    items.len()
                                ),
                            ));
                        }
                        items.push(item)
                    }
                    None => missing.push(id.clone()),
                }
            }
        }
        Ok((items, missing))
    }

    /// RESOURCE_EXHAUSTED when `adding` more items would pass `--max-collection-items`.
    async fn check_collection_items(&self, name: &str, adding: usize) -> Result<(), ServiceError> {
        let max = self.inner.config.max_collection_items;
        let count = self.inner.store.info(name).await?.count;
        if count.saturating_add(adding) > max {
            return Err(ServiceError::ResourceExhausted(format!(
                "collection {name:?} holds {count} items and this upsert has {adding}, over the limit of {max} items per collection ({MAX_COLLECTION_ITEMS}); nothing was written"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

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
