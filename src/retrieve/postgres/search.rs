//! The PostgreSQL store's search queries and index (re)builds.
//!
//! Every search is one transaction whose settings are set explicitly (`SET LOCAL`), whatever the
//! server's defaults:
//! - `hnsw.ef_search`: the larger of `--postgres-ef-search` and 2 x `k` (graph paths), or of it
//!   and the shortlist (binary path), at most pgvector's 1000;
//! - `hnsw.iterative_scan` (pgvector 0.8 and later; its default changes in 0.9): `strict_order`
//!   for the graph paths (their order is the answer's), `relaxed_order` for the binary path (its
//!   shortlist is re-ranked anyway). A filtered search thus keeps walking the graph until it has
//!   `k` matches; an older pgvector has no iterative scans, and a filtered search that comes up
//!   short is answered by the exact scan (as it is whenever the index runs dry).
//!
//! The binary path (`IndexKind::Binary`) asks the index for `k` x `--postgres-oversample`
//! candidates by the Hamming distance of their sign bits and re-ranks them by the exact cosine of
//! the stored vectors, in one statement.

use deadpool_postgres::tokio_postgres::{self, Row};
use pgvector::Vector;

use super::{MAX_EF_SEARCH, PgStore, Seen, gone_or, metadata_json, metadata_of};
use crate::{
    common::ServiceError,
    postgres::{
        col, has_nul, pg_error,
        schema::{self, Centre, IndexKind},
    },
    retrieve::{
        backend::CollectionStore,
        index::{Metadata, Scored},
        store::CollectionMeta,
    },
};

/// The most candidates a binary search re-ranks.
pub const MAX_SHORTLIST: usize = 20_000;

/// What pgvector supports, from its version (`pg_extension.extversion`, e.g. "0.8.1").
pub fn has_iterative_scan(version: &str) -> bool {
    at_least(version, (0, 8))
}

/// Whether pgvector has `binary_quantize` and `l2_normalize` (0.7 and later).
pub fn has_quantize(version: &str) -> bool {
    at_least(version, (0, 7))
}

/// Whether `version` ("0.8.1"; unreadable parts count as 0) is at least `(major, minor)`.
fn at_least(version: &str, wanted: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= wanted
}

/// The search path of a collection, as `search_with` names it.
pub fn path_name(kind: IndexKind) -> &'static str {
    match kind {
        IndexKind::None => "exact",
        IndexKind::Binary => "binary",
        IndexKind::Vector | IndexKind::Halfvec => "hnsw",
    }
}

/// How one search runs: (the `SET LOCAL` statements, the shortlist size of a binary search).
pub fn plan(
    kind: IndexKind,
    exact: bool,
    k: usize,
    ef_floor: usize,
    oversample: usize,
    iterative: bool,
) -> (String, usize) {
    if exact || kind == IndexKind::None {
        return ("SET LOCAL enable_indexscan = off".into(), k);
    }
    let (shortlist, mode) = if kind == IndexKind::Binary {
        (
            k.saturating_mul(oversample.max(1)).clamp(k, MAX_SHORTLIST),
            "relaxed_order",
        )
    } else {
        (k, "strict_order")
    };
    let ef = (2 * k).max(shortlist).max(ef_floor).min(MAX_EF_SEARCH);
    let mut set = format!("SET LOCAL hnsw.ef_search = {ef};");
    if iterative {
        set.push_str(&format!(" SET LOCAL hnsw.iterative_scan = {mode};"));
        if shortlist > MAX_EF_SEARCH {
            // pgvector's default (20,000) bounds a scan that has to reach past ef_search.
            set.push_str(&format!(
                " SET LOCAL hnsw.max_scan_tuples = {};",
                shortlist.saturating_mul(2).max(20_000)
            ));
        }
    }
    (set, shortlist)
}

impl PgStore {
    /// A search (`CollectionStore::search_with` without offering its query to the recall check).
    pub(super) async fn search_plain(
        &self,
        meta: &CollectionMeta,
        query: Vec<f32>,
        k: usize,
        filter: Metadata,
        exact: bool,
    ) -> Result<(Vec<Scored>, &'static str), ServiceError> {
        // Nothing stored holds a NUL character.
        if filter.iter().any(|(k, v)| has_nul(k) || has_nul(v)) {
            return Ok((Vec::new(), "empty"));
        }
        let filter = (!filter.is_empty()).then(|| metadata_json(&filter));
        let query = Vector::from(query);
        let Seen {
            count,
            kind,
            centre,
        } = self.seen(&meta.id);
        let large = count >= self.exact_below;
        if !exact
            && large
            && filter.is_none()
            && let Some(found) = self.search_mirror(meta, &query, k).await?
            && found.len() >= k
        {
            return Ok((found, super::mirror::PATH));
        }
        let exact = exact || kind == IndexKind::None || !large;
        let found = self
            .query_nearest(meta, &query, k, filter.as_ref(), exact, kind, &centre)
            .await?;
        if exact {
            return Ok((found, "exact"));
        }
        if found.len() >= k {
            return Ok((found, path_name(kind)));
        }
        // The approximate scan stopped short (a selective filter, or dead index entries): the
        // exact one finds every match.
        let found = self
            .query_nearest(meta, &query, k, filter.as_ref(), true, kind, &centre)
            .await?;
        Ok((found, "exact"))
    }

    /// One search query: an index path (with its settings) or exact. The binary path re-ranks
    /// its shortlist by the exact cosine in the same statement.
    #[allow(clippy::too_many_arguments, reason = "one query's parts")]
    pub(super) async fn query_nearest(
        &self,
        meta: &CollectionMeta,
        query: &Vector,
        k: usize,
        filter: Option<&serde_json::Value>,
        exact: bool,
        kind: IndexKind,
        centre: &Centre,
    ) -> Result<Vec<Scored>, ServiceError> {
        let table = schema::items_table(&meta.id);
        let tuned = self.tuner.tuning(&meta.id);
        let (settings, shortlist) = plan(
            kind,
            exact,
            k,
            self.ef_search().max(tuned.ef_search),
            self.oversample().max(tuned.oversample),
            self.iterative_scan(),
        );
        let order = if exact {
            "embedding <=> $1".to_string()
        } else {
            kind.order_by(meta.dimension, centre)
        };
        // $1 the query, $2 the limit (the shortlist's, for a binary search), then the filter if
        // any, then k (binary).
        let mut next = 3;
        let where_ = if filter.is_some() {
            next += 1;
            "WHERE metadata @> $3"
        } else {
            ""
        };
        let sql = if !exact && kind == IndexKind::Binary {
            format!(
                "SELECT id, metadata, (embedding <=> $1)::float8 AS distance FROM (
                     SELECT id, metadata, embedding FROM {table} {where_} ORDER BY {order} LIMIT $2
                 ) shortlist ORDER BY distance LIMIT ${next}"
            )
        } else {
            format!(
                "SELECT id, metadata, (embedding <=> $1)::float8 AS distance FROM {table}
                 {where_} ORDER BY {order} LIMIT $2"
            )
        };
        let rerank = !exact && kind == IndexKind::Binary;
        let limit = i64::try_from(if exact { k } else { shortlist }).unwrap_or(i64::MAX);
        let k = i64::try_from(k).unwrap_or(i64::MAX);
        let mut conn = self.client().await?;
        let rows = async {
            let tx = conn.transaction().await.map_err(pg_error)?;
            tx.batch_execute(&settings).await.map_err(pg_error)?;
            let stmt = tx.prepare_cached(&sql).await;
            let rows = match stmt {
                Err(e) => Err(e),
                Ok(stmt) => {
                    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        vec![query, &limit];
                    if let Some(filter) = filter {
                        params.push(filter);
                    }
                    if rerank {
                        params.push(&k);
                    }
                    tx.query(&stmt, &params).await
                }
            };
            let rows = rows.map_err(|e| gone_or(&meta.name, e))?;
            tx.commit().await.map_err(pg_error)?;
            Ok(rows)
        }
        .await;
        let rows = conn.done(rows)?;
        rows.iter().map(scored).collect()
    }

    /// The HNSW build of collection `meta`: this store's, with the collection's own settings.
    pub(super) fn build_of(
        &self,
        meta: &CollectionMeta,
    ) -> Result<schema::HnswBuild, ServiceError> {
        schema::HnswBuild {
            m: meta.options.hnsw_m.unwrap_or(self.build.m),
            ef_construction: meta
                .options
                .hnsw_ef_construction
                .unwrap_or(self.build.ef_construction),
        }
        .check()
        .map_err(|e| {
            // Name what the client set: only m, against the server's ef_construction, is m's fault.
            let field = if meta.options.hnsw_ef_construction.is_none() {
                "hnsw_m"
            } else {
                "hnsw_ef_construction"
            };
            ServiceError::invalid(
                crate::common::Field::Param(field),
                format!(
                    "{e} (with the server's --postgres-hnsw-m / --postgres-hnsw-ef-construction)"
                ),
            )
        })
    }

    /// Rebuilds the index of collection `name` as `kind` (with this store's build parameters):
    /// drops the old index and creates the new one, in one transaction (searches meanwhile wait
    /// on the table's lock, or use the old index until the commit). `centred`: a binary index
    /// takes its sign bits around the collection's present mean (`avg(embedding)`), frozen into
    /// the index expression. A bulk load goes in fastest without an index, then this.
    /// `memory_mb`: the build's `maintenance_work_mem` (a graph that does not fit builds much
    /// slower; about 2.7 KB per 512-d vector for `vector`, 0.4 KB for `binary`).
    pub async fn reindex(
        &self,
        name: &str,
        kind: IndexKind,
        centred: bool,
        memory_mb: usize,
    ) -> Result<(), ServiceError> {
        let meta = self.collection(name).await?;
        let build = self.build_of(&meta)?;
        let table = schema::items_table(&meta.id);
        let mut conn = self.client().await?;
        let done = async {
            let tx = conn.transaction().await.map_err(pg_error)?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = 0; SET LOCAL maintenance_work_mem = '{}MB'",
                memory_mb.clamp(64, 1 << 20)
            ))
            .await
            .map_err(pg_error)?;
            Self::lock_current(&tx, &meta).await?;
            let centre = if centred && kind == IndexKind::Binary {
                let row = tx
                    .query_one(&format!("SELECT avg(embedding) AS mean FROM {table}"), &[])
                    .await
                    .map_err(pg_error)?;
                let mean: Option<Vector> = col(&row, "mean")?;
                Centre::of(&mean.map(|m| m.to_vec()).unwrap_or_default())
            } else {
                Centre::default()
            };
            tx.batch_execute(&format!(
                "DROP INDEX IF EXISTS {table}_hnsw; {}",
                schema::create_index(&table, meta.dimension, kind, build, &centre)
            ))
            .await
            .map_err(pg_error)?;
            tx.execute(
                "UPDATE clip_collections SET index_kind = $2, indexed = $3, index_centre = $4
                 WHERE name = $1",
                &[
                    &meta.name,
                    &kind.as_str(),
                    &(kind != IndexKind::None),
                    &centre.literal(),
                ],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
        .await;
        conn.done(done)?;
        // Read again (kind and centre) by the next search's `collection`.
        self.collection(name).await.map(|_| ())
    }
}

pub(super) fn scored(row: &Row) -> Result<Scored, ServiceError> {
    let distance: f64 = col(row, "distance")?;
    Ok(Scored {
        id: col(row, "id")?,
        score: (1.0 - distance) as f32,
        metadata: std::sync::Arc::new(metadata_of(col(row, "metadata")?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterative_scans_come_with_pgvector_0_8() {
        assert!(has_iterative_scan("0.8.0"));
        assert!(has_iterative_scan("0.8.6"));
        assert!(has_iterative_scan("0.10.1"));
        assert!(has_iterative_scan("1.0"));
        assert!(!has_iterative_scan("0.7.4"));
        assert!(!has_iterative_scan("garbage"));
        assert!(has_quantize("0.7.0") && has_quantize("0.8.6") && has_quantize("1.0"));
        assert!(!has_quantize("0.6.2") && !has_quantize(""));
    }

    #[test]
    fn each_search_sets_its_scan_explicitly() {
        let (set, n) = plan(IndexKind::Vector, false, 10, 200, 20, true);
        assert_eq!(n, 10);
        assert!(set.contains("hnsw.ef_search = 200"), "{set}");
        assert!(set.contains("hnsw.iterative_scan = strict_order"), "{set}");
        let (set, _) = plan(IndexKind::Vector, false, 300, 200, 20, true);
        assert!(set.contains("hnsw.ef_search = 600"), "{set}");
        // Older pgvector: no iterative scan setting at all (it would be an error).
        let (set, _) = plan(IndexKind::Halfvec, false, 10, 64, 20, false);
        assert!(!set.contains("iterative"), "{set}");
        // Binary: a shortlist of k x oversample, relaxed order (re-ranked anyway).
        let (set, n) = plan(IndexKind::Binary, false, 10, 40, 30, true);
        assert_eq!(n, 300);
        assert!(set.contains("hnsw.ef_search = 300"), "{set}");
        assert!(set.contains("relaxed_order"), "{set}");
        let (set, n) = plan(IndexKind::Binary, false, 100, 40, 50, true);
        assert_eq!(n, 5000);
        assert!(set.contains("hnsw.ef_search = 1000") && set.contains("max_scan_tuples = 20000"));
        let (set, n) = plan(IndexKind::Binary, true, 10, 40, 50, true);
        assert_eq!((set.as_str(), n), ("SET LOCAL enable_indexscan = off", 10));
    }
}
