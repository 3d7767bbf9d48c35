//! The PostgreSQL store (`--store postgres`): collections, their items and label sets in
//! PostgreSQL with pgvector, so any number of replicas share them. Nothing is cached across calls
//! but a collection's item count and index flag, read with its description, so every replica sees
//! every committed write at once.
//!
//! Each Upsert and Delete is one transaction (with `synchronous_commit = on`), acknowledged after
//! its commit. It locks its collection's row and checks the row's incarnation id is the one the
//! write began with, so a write that lost a race with DeleteCollection (and CreateCollection of the
//! same name) is ABORTED, never acknowledged-but-invisible. Search is exact (a sequential scan)
//! below `--postgres-exact-below` items and for collections without an HNSW index; above, HNSW
//! (cosine) with `hnsw.iterative_scan`, and a filtered search that still finds fewer than `k`
//! falls back to an exact one, so a filter never returns fewer than `k` rows when `k` match.
//! PostgreSQL unreachable: UNAVAILABLE naming the store; the pool reconnects by itself.
//!
//! Cancellation (every method): a call whose future is dropped mid-way (the client hung up) has
//! its running statement cancelled and its connection closed (see [`crate::postgres::Conn`]); a
//! write is one transaction, so it either committed or left nothing. Every session runs under
//! `--postgres-statement-timeout` and `--postgres-lock-timeout`.
mod mirror;
mod search;
mod tune;

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use deadpool_postgres::tokio_postgres::{self, Row};
use pgvector::Vector;

use super::{
    CollectionInfo,
    backend::{CollectionStore, Record, StoreKind, exists, not_found, replaced, too_many},
    index::{Metadata, Scored},
    store::{CollectionMeta, StoredItem},
};
use crate::{
    common::{List, ServiceError},
    postgres::{
        Pool, col, has_nul, pg_error,
        schema::{self, Centre, HnswBuild, IndexKind},
    },
};

pub use mirror::start as start_mirror;
pub use search::{MAX_SHORTLIST, has_iterative_scan, has_quantize};
pub use tune::{Tuning, start as start_recall_check};

/// pgvector's largest `vector`, and largest HNSW-indexed `vector` and `halfvec`.
pub const MAX_DIMENSION: usize = 16_000;
const MAX_HNSW_DIMENSION: usize = 2_000;
const MAX_HALFVEC_HNSW_DIMENSION: usize = 4_000;

pub struct PgStore {
    pool: Pool,
    exact_below: usize,
    /// How new collections are indexed (where their dimension allows).
    index: IndexKind,
    /// New indexes' build parameters.
    build: HnswBuild,
    /// The least `hnsw.ef_search` of a search.
    ef_search: AtomicUsize,
    /// A binary search's shortlist, in multiples of `k`.
    oversample: AtomicUsize,
    /// pgvector has `hnsw.iterative_scan` (0.8 and later; read at load, assumed until then).
    iterative: AtomicBool,
    /// Per incarnation id: (item count, how it is indexed), as last read.
    seen: Mutex<HashMap<String, Seen>>,
    /// The recall check's samples and per-collection settings.
    tuner: tune::Tuner,
    /// This replica's in-memory search mirrors (`mirror`).
    mirrors: mirror::Mirrors,
    /// Mirror builds so far (each build's generation).
    mirror_builds: AtomicU64,
    /// pgvector has `binary_quantize` and `l2_normalize` (0.7 and later), which mirrors need.
    quantize: AtomicBool,
    /// `load` succeeded (connected and migrated).
    loaded: AtomicBool,
}

/// What a search needs to know of its collection, as last read.
#[derive(Clone)]
struct Seen {
    count: usize,
    kind: IndexKind,
    centre: Centre,
}

/// A statement's error on collection `name`'s table: NOT_FOUND when the table went away (`42P01`:
/// the collection was deleted meanwhile), else as [`pg_error`].
fn gone_or(name: &str, e: tokio_postgres::Error) -> ServiceError {
    let gone = e
        .as_db_error()
        .is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::UNDEFINED_TABLE);
    if gone { not_found(name) } else { pg_error(e) }
}

fn metadata_json(md: &Metadata) -> serde_json::Value {
    serde_json::Value::Object(
        md.iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

fn metadata_of(v: serde_json::Value) -> Metadata {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => Metadata::new(),
    }
}

fn meta_of(row: &Row) -> Result<CollectionMeta, ServiceError> {
    let dimension: i32 = col(row, "dimension")?;
    // NULL (created before options, or by an older server): none.
    let options: Option<serde_json::Value> = col(row, "options")?;
    Ok(CollectionMeta {
        name: col(row, "name")?,
        dimension: usize::try_from(dimension).unwrap_or(0),
        model: col(row, "model")?,
        id: col(row, "id")?,
        options: options
            .and_then(|o| serde_json::from_value(o).ok())
            .unwrap_or_default(),
    })
}

fn count_of(row: &Row, column: &str) -> Result<usize, ServiceError> {
    let count: i64 = col(row, column)?;
    Ok(usize::try_from(count).unwrap_or(0))
}

fn info_of(row: &Row) -> Result<CollectionInfo, ServiceError> {
    let meta = meta_of(row)?;
    let kind: String = col(row, "index_kind")?;
    Ok(CollectionInfo {
        name: meta.name,
        count: count_of(row, "count")?,
        dimension: meta.dimension,
        model: meta.model,
        index: index_name(IndexKind::parse(&kind)).into(),
        ready: true,
        options: meta.options,
    })
}

/// The path name of a collection's index (Info, `clip_search_path_total`).
fn index_name(kind: IndexKind) -> &'static str {
    search::path_name(kind)
}

/// `--postgres-ef-search`'s default, and pgvector's ceiling for `hnsw.ef_search`.
const DEFAULT_EF_SEARCH: usize = 200;
const MAX_EF_SEARCH: usize = 1000;
/// `--postgres-oversample`'s default.
pub const DEFAULT_OVERSAMPLE: usize = 40;

/// Most collection incarnations whose count and index kind are remembered.
const MAX_SEEN: usize = 4096;

const COLUMNS: &str = "name, id, dimension, model, count, index_kind, index_centre, options";

impl PgStore {
    /// Collections in PostgreSQL through `pool` (shared with the label sets); collections with
    /// fewer than `exact_below` items are searched exactly.
    pub fn new(pool: Pool, exact_below: usize) -> Self {
        PgStore {
            pool,
            exact_below,
            index: IndexKind::Vector,
            build: HnswBuild::default(),
            ef_search: AtomicUsize::new(DEFAULT_EF_SEARCH),
            oversample: AtomicUsize::new(DEFAULT_OVERSAMPLE),
            iterative: AtomicBool::new(true),
            seen: Mutex::new(HashMap::new()),
            tuner: tune::Tuner::default(),
            mirrors: mirror::Mirrors::default(),
            mirror_builds: AtomicU64::new(0),
            quantize: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
        }
    }

    /// The recall target and its check (`--recall-*`; started by [`start_recall_check`]), and
    /// the gauge its measurements go to.
    pub fn with_recall(
        mut self,
        config: super::recall::RecallConfig,
        gauge: Option<prometheus::GaugeVec>,
    ) -> Self {
        self.tuner.config = config;
        self.tuner.gauge = gauge;
        self
    }

    /// The settings the recall check raised for collection incarnation `id` (zero: none).
    pub fn tuning(&self, id: &str) -> Tuning {
        self.tuner.tuning(id)
    }

    /// Collections created from now on index `halfvec`s (half the index memory, dimensions up to
    /// 4000); stored vectors stay exact.
    pub fn with_halfvec(mut self, halfvec: bool) -> Self {
        if halfvec {
            self.index = IndexKind::Halfvec;
        } else if self.index == IndexKind::Halfvec {
            self.index = IndexKind::Vector;
        }
        self
    }

    /// How collections created from now on are indexed (`Vector`, `Halfvec` or `Binary`; a
    /// dimension pgvector cannot index is searched exactly).
    pub fn with_index(mut self, index: IndexKind, build: HnswBuild) -> Self {
        self.index = index;
        self.build = build;
        self
    }

    /// The least `hnsw.ef_search` a search uses (at least 2 x top_k either way).
    pub fn with_ef_search(self, ef_search: usize) -> Self {
        self.set_ef_search(ef_search);
        self
    }

    /// A binary search re-ranks `k` x `oversample` candidates.
    pub fn with_oversample(self, oversample: usize) -> Self {
        self.set_oversample(oversample);
        self
    }

    pub fn set_ef_search(&self, ef_search: usize) {
        self.ef_search
            .store(ef_search.clamp(1, MAX_EF_SEARCH), Ordering::Relaxed);
    }

    pub fn set_oversample(&self, oversample: usize) {
        self.oversample.store(
            oversample.clamp(1, search::MAX_SHORTLIST),
            Ordering::Relaxed,
        );
    }

    pub fn ef_search(&self) -> usize {
        self.ef_search.load(Ordering::Relaxed)
    }

    pub fn oversample(&self) -> usize {
        self.oversample.load(Ordering::Relaxed)
    }

    /// Whether searches set `hnsw.iterative_scan` (pgvector 0.8 and later).
    pub fn iterative_scan(&self) -> bool {
        self.iterative.load(Ordering::Relaxed)
    }

    /// Whether `load` succeeded.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<crate::postgres::Conn, ServiceError> {
        crate::postgres::client(&self.pool).await
    }

    fn remember(&self, row: &Row) -> Result<(), ServiceError> {
        let id: String = col(row, "id")?;
        let kind: String = col(row, "index_kind")?;
        let centre = Centre::parse(col(row, "index_centre")?);
        let count = count_of(row, "count")?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Collections deleted through other replicas are never removed here one by one: the map
        // starts over past a bound (each entry is read again with its collection).
        if seen.len() >= MAX_SEEN && !seen.contains_key(&id) {
            seen.clear();
        }
        let kind = IndexKind::parse(&kind);
        seen.insert(
            id,
            Seen {
                count,
                kind,
                centre,
            },
        );
        Ok(())
    }

    fn seen(&self, id: &str) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .unwrap_or(Seen {
                count: usize::MAX,
                kind: IndexKind::None,
                centre: Centre::default(),
            })
    }

    /// Locks the collection row of a write and checks it is still the incarnation `meta`.
    async fn lock_current(
        tx: &deadpool_postgres::Transaction<'_>,
        meta: &CollectionMeta,
    ) -> Result<(), ServiceError> {
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(pg_error)?;
        let row = tx
            .query_opt(
                "SELECT id FROM clip_collections WHERE name = $1 FOR UPDATE",
                &[&meta.name],
            )
            .await
            .map_err(pg_error)?;
        match row {
            Some(row) if col::<String>(&row, "id")? == meta.id => Ok(()),
            _ => Err(replaced(&meta.name)),
        }
    }

    /// Sets the collection's count after a write (in its transaction); returns it.
    async fn add_count(
        tx: &deadpool_postgres::Transaction<'_>,
        meta: &CollectionMeta,
        delta: i64,
    ) -> Result<usize, ServiceError> {
        let row = tx
            .query_one(
                "UPDATE clip_collections SET count = count + $2 WHERE name = $1 RETURNING count",
                &[&meta.name, &delta],
            )
            .await
            .map_err(pg_error)?;
        count_of(&row, "count")
    }
}

#[async_trait::async_trait]
impl CollectionStore for PgStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Postgres
    }

    /// Connects and migrates (retrying while PostgreSQL is unreachable).
    async fn load(&self) -> anyhow::Result<()> {
        crate::postgres::connect_and_migrate(&self.pool).await?;
        let conn = self.client().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let version = conn
            .query_opt(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                &[],
            )
            .await;
        let version: Option<String> = conn
            .done(version.map_err(pg_error))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .map(|row| row.get(0));
        let version = version.unwrap_or_default();
        let iterative = has_iterative_scan(&version);
        if !iterative {
            tracing::warn!(
                pgvector = %version,
                "pgvector before 0.8 has no iterative index scans: a filtered search that the \
                 index answers short is answered by an exact scan instead"
            );
        }
        self.iterative.store(iterative, Ordering::Relaxed);
        let quantize = has_quantize(&version);
        if !quantize && self.mirrors.config.max_items > 0 {
            tracing::warn!(pgvector = %version, "pgvector before 0.7 has no binary_quantize: large collections are searched by their index, not mirrored");
        }
        self.quantize.store(quantize, Ordering::Relaxed);
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    async fn ping(&self) -> Result<(), ServiceError> {
        crate::postgres::ping(&self.pool).await
    }

    /// One transaction (the row and the item table). Dropped mid-way: cancelled and rolled
    /// back, or committed whole if its COMMIT had been sent.
    async fn create(
        &self,
        meta: CollectionMeta,
        max_collections: usize,
    ) -> Result<CollectionInfo, ServiceError> {
        if meta.dimension > MAX_DIMENSION {
            return Err(ServiceError::invalid(
                crate::common::Field::Param("dimension"),
                format!(
                    "{} is over {MAX_DIMENSION}, the most the postgres store holds",
                    meta.dimension
                ),
            ));
        }
        // pgvector's HNSW takes `bit` up to 64,000 dimensions; `none` asks for no HNSW at all.
        let index = if matches!(self.index, IndexKind::Binary | IndexKind::None) {
            self.index
        } else if self.index == IndexKind::Halfvec && meta.dimension <= MAX_HALFVEC_HNSW_DIMENSION {
            IndexKind::Halfvec
        } else if meta.dimension <= MAX_HNSW_DIMENSION {
            IndexKind::Vector
        } else {
            IndexKind::None
        };
        let indexed = index != IndexKind::None;
        let build = self.build_of(&meta)?;
        let options = serde_json::to_value(meta.options)
            .map_err(|e| ServiceError::Internal(format!("collection options: {e}")))?;
        let mut conn = self.client().await?;
        let created = async {
            let tx = conn.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::ADMIN_LOCK])
                .await
                .map_err(pg_error)?;
            let (present, total): (bool, i64) = {
                let row = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM clip_collections WHERE name = $1) AS present,
                            count(*) AS total FROM clip_collections",
                        &[&meta.name],
                    )
                    .await
                    .map_err(pg_error)?;
                (col(&row, "present")?, col(&row, "total")?)
            };
            if present {
                return Err(exists(&meta.name));
            }
            let total = usize::try_from(total).unwrap_or(usize::MAX);
            if total >= max_collections {
                return Err(too_many(total));
            }
            let dimension = i32::try_from(meta.dimension).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO clip_collections (name, id, dimension, model, indexed, index_kind, options)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &meta.name,
                    &meta.id,
                    &dimension,
                    &meta.model,
                    &indexed,
                    &index.as_str(),
                    &options,
                ],
            )
            .await
            .map_err(pg_error)?;
            let table = schema::items_table(&meta.id);
            tx.batch_execute(&schema::create_items_table(
                &table,
                meta.dimension,
                index,
                build,
            ))
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
        .await;
        conn.done(created)?;
        Ok(CollectionInfo {
            name: meta.name,
            count: 0,
            dimension: meta.dimension,
            model: meta.model,
            index: index_name(index).into(),
            ready: true,
            options: meta.options,
        })
    }

    async fn collection(&self, name: &str) -> Result<CollectionMeta, ServiceError> {
        let conn = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM clip_collections WHERE name = $1");
        let row = async {
            let stmt = conn.prepare_cached(&sql).await.map_err(pg_error)?;
            conn.query_opt(&stmt, &[&name]).await.map_err(pg_error)
        }
        .await;
        let row = conn.done(row)?.ok_or_else(|| not_found(name))?;
        self.remember(&row)?;
        meta_of(&row)
    }

    async fn info(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        let conn = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM clip_collections WHERE name = $1");
        let row = conn.query_opt(&sql, &[&name]).await.map_err(pg_error);
        let row = conn.done(row)?.ok_or_else(|| not_found(name))?;
        self.info_with_mirror(&row)
    }

    async fn list(&self) -> Result<Vec<CollectionInfo>, ServiceError> {
        let conn = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM clip_collections ORDER BY name");
        let rows = conn.query(&sql, &[]).await.map_err(pg_error);
        let rows = conn.done(rows)?;
        rows.iter().map(|row| self.info_with_mirror(row)).collect()
    }

    /// One transaction (the row and the item table). Dropped mid-way: cancelled and rolled
    /// back, or committed whole if its COMMIT had been sent.
    async fn drop_collection(&self, name: &str) -> Result<(), ServiceError> {
        let mut conn = self.client().await?;
        let dropped = async {
            let tx = conn.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::ADMIN_LOCK])
                .await
                .map_err(pg_error)?;
            // Waits for writes in flight (they hold the row), then deletes it and the items.
            let row = tx
                .query_opt(
                    "DELETE FROM clip_collections WHERE name = $1 RETURNING id",
                    &[&name],
                )
                .await
                .map_err(pg_error)?
                .ok_or_else(|| not_found(name))?;
            let id: String = col(&row, "id")?;
            let table = schema::items_table(&id);
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                .await
                .map_err(pg_error)?;
            tx.execute(
                "DELETE FROM clip_item_changes WHERE collection = $1",
                &[&table],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(id)
        }
        .await;
        let id = conn.done(dropped)?;
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        Ok(())
    }

    /// One transaction (the items and the count). Dropped mid-way: cancelled and rolled back,
    /// or committed whole if its COMMIT had been sent.
    async fn upsert(
        &self,
        meta: &CollectionMeta,
        records: Vec<Record>,
    ) -> Result<usize, ServiceError> {
        for (i, r) in records.iter().enumerate() {
            if has_nul(&r.id) || r.metadata.iter().any(|(k, v)| has_nul(k) || has_nul(v)) {
                return Err(ServiceError::invalid_item(
                    List::Items,
                    i,
                    "holds a NUL character (U+0000), which the postgres store cannot hold",
                ));
            }
        }
        let (ids, (vectors, metadata)): (Vec<String>, (Vec<Vector>, Vec<serde_json::Value>)) =
            records
                .into_iter()
                .map(|r| (r.id, (Vector::from(r.stored), metadata_json(&r.metadata))))
                .unzip();
        let table = schema::items_table(&meta.id);
        let mut conn = self.client().await?;
        let upserted = async {
            let tx = conn.transaction().await.map_err(pg_error)?;
            Self::lock_current(&tx, meta).await?;
            let sql = format!(
                "INSERT INTO {table} (id, embedding, metadata)
                 SELECT * FROM unnest($1::text[], $2::vector[], $3::jsonb[])
                 ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata
                 RETURNING (xmax = 0) AS inserted"
            );
            let stmt = tx.prepare_cached(&sql).await.map_err(pg_error)?;
            let rows = tx
                .query(&stmt, &[&ids, &vectors, &metadata])
                .await
                .map_err(pg_error)?;
            let mut inserted = 0;
            for row in &rows {
                inserted += usize::from(col::<bool>(row, "inserted")?);
            }
            let count = Self::add_count(&tx, meta, inserted as i64).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(count)
        }
        .await;
        conn.done(upserted)
    }

    /// One transaction (the items and the count). Dropped mid-way: cancelled and rolled back,
    /// or committed whole if its COMMIT had been sent.
    async fn delete(
        &self,
        meta: &CollectionMeta,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError> {
        // An id PostgreSQL cannot hold is absent.
        let ids: Vec<String> = ids.into_iter().filter(|id| !has_nul(id)).collect();
        let table = schema::items_table(&meta.id);
        let mut conn = self.client().await?;
        let deleted = async {
            let tx = conn.transaction().await.map_err(pg_error)?;
            Self::lock_current(&tx, meta).await?;
            let sql = format!("DELETE FROM {table} WHERE id = ANY($1)");
            let stmt = tx.prepare_cached(&sql).await.map_err(pg_error)?;
            let deleted = tx.execute(&stmt, &[&ids]).await.map_err(pg_error)?;
            let count = Self::add_count(&tx, meta, -(deleted as i64)).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok((deleted as usize, count))
        }
        .await;
        conn.done(deleted)
    }

    /// Reads only; dropped mid-way, its statement is cancelled.
    async fn search(
        &self,
        meta: &CollectionMeta,
        query: Vec<f32>,
        k: usize,
        filter: Metadata,
    ) -> Result<Vec<Scored>, ServiceError> {
        Ok(self.search_with(meta, query, k, filter, false).await?.0)
    }

    async fn search_with(
        &self,
        meta: &CollectionMeta,
        query: Vec<f32>,
        k: usize,
        filter: Metadata,
        exact: bool,
    ) -> Result<(Vec<Scored>, &'static str), ServiceError> {
        if !exact && filter.is_empty() {
            self.tuner.offer(&meta.name, &query);
        }
        self.search_plain(meta, query, k, filter, exact).await
    }

    async fn get_items(
        &self,
        meta: &CollectionMeta,
        ids: Vec<String>,
    ) -> Result<Vec<Option<StoredItem>>, ServiceError> {
        let wanted: Vec<&String> = ids.iter().filter(|id| !has_nul(id)).collect();
        let table = schema::items_table(&meta.id);
        let conn = self.client().await?;
        let sql = format!("SELECT id, embedding, metadata FROM {table} WHERE id = ANY($1)");
        let rows = match conn.prepare_cached(&sql).await {
            Ok(stmt) => conn.query(&stmt, &[&wanted]).await,
            Err(e) => Err(e),
        }
        .map_err(|e| gone_or(&meta.name, e));
        let rows = conn.done(rows)?;
        let mut found: HashMap<String, StoredItem> = HashMap::new();
        for row in rows {
            let id: String = col(&row, "id")?;
            let vector: Vector = col(&row, "embedding")?;
            let item = StoredItem {
                id: id.clone(),
                vector: vector.to_vec(),
                metadata: metadata_of(col(&row, "metadata")?),
            };
            found.insert(id, item);
        }
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }
}
