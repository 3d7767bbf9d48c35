//! In-memory search mirrors of large PostgreSQL collections (issue 23): what makes a text query
//! among a million images find what the exact scan finds, which no pgvector index did (its best,
//! HNSW at ef_search 1000, reached recall@10 0.82 for text queries at 1M; BENCHMARKS.md).
//!
//! Each replica keeps, per collection of at least `--postgres-exact-below` items (up to
//! `--postgres-mirror-max-items` in all), the 1-bit codes of its vectors (64 bytes at 512-d, taken
//! around the collection's mean, as the local store's binary scan does: [`BinaryCodes`]) and their
//! ids. A search scans every code with the 4-bit query, keeps `k` x `--postgres-oversample`
//! candidates and has PostgreSQL rescore them by the exact cosine of the stored vectors, fetched
//! by primary key. The scan visits every code, so recall does not depend on where the query lies.
//!
//! # Following the writes of every replica
//! Triggers log each written item id, with the writing transaction's id, into
//! `clip_item_changes` (`postgres::schema`). A mirror holds the codes as of one PostgreSQL
//! snapshot (a `pg_snapshot`): every change it lacks was made by a transaction that snapshot does
//! not see. So:
//! - every `--postgres-mirror-poll`, one task reads, in a REPEATABLE READ transaction, the
//!   changes invisible to the mirror's snapshot and the current codes of those items (an item
//!   gone is removed), and moves the mirror to that transaction's snapshot;
//! - a search rescores, beside its shortlist, every item changed since the mirror's snapshot (up
//!   to `--postgres-mirror-max-recent`), read in the search's own statement. A search therefore
//!   sees every committed write at once, by any replica, as before the mirrors; deleted items are
//!   absent from the table and never come back.
//!
//! Change-log rows older than `--postgres-change-retention` (of finished transactions) are
//! pruned; a mirror that could not poll for half of that is built again, as is one whose table
//! was truncated. A transaction that stays open, with writes, for longer than half the retention
//! can have its changes pruned before a mirror reads them: clip-serve's own writes are bounded by
//! `--postgres-statement-timeout`, a bulk load by hand should not run for half an hour in one
//! transaction.
//!
//! A collection is searched by its pgvector index while its mirror builds (Info says `mirror`,
//! not ready), and filtered searches always use the index paths (the mirror holds no metadata).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock, Weak},
    time::{Duration, Instant},
};

use deadpool_postgres::tokio_postgres::{IsolationLevel, types::ToSql};
use pgvector::{Bit, Vector};
use tokio_stream::StreamExt;

use super::{PgStore, gone_or, search::MAX_SHORTLIST};
use crate::{
    common::ServiceError,
    postgres::{MirrorConfig, Pool, col, pg_error, schema},
    retrieve::{ann::codes::BinaryCodes, index::Scored, store::CollectionMeta},
};

/// Every mirror of this replica, by item table.
#[derive(Default)]
pub struct Mirrors {
    pub config: MirrorConfig,
    map: Mutex<HashMap<String, Arc<Mirror>>>,
    /// When the change log was last pruned (by this replica).
    pruned: Mutex<Option<Instant>>,
    /// Tables whose last build failed, and when: tried again only after [`RETRY_AFTER`] (a
    /// build reads the whole table).
    failed: Mutex<HashMap<String, Instant>>,
}

/// How long a table whose mirror could not be built waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// One collection's mirror.
pub struct Mirror {
    dim: usize,
    /// `None` while it is first built.
    table: RwLock<Option<Codes>>,
}

/// The codes and ids of one collection, as of `snapshot`.
struct Codes {
    codes: BinaryCodes,
    ids: Vec<Option<Arc<str>>>,
    slots: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
    /// The centre the codes are taken around, as PostgreSQL computes them.
    centre: Vector,
    /// The `pg_snapshot` the codes hold for.
    snapshot: String,
    synced: Instant,
    /// Bumped by every build: a poll read against an older build is not applied.
    build: u64,
}

impl Codes {
    fn new(dim: usize, centre: Vector, snapshot: String, build: u64) -> Self {
        Codes {
            codes: BinaryCodes::new(dim, vec![0.0; dim]),
            ids: Vec::new(),
            slots: HashMap::new(),
            free: Vec::new(),
            centre,
            snapshot,
            synced: Instant::now(),
            build,
        }
    }

    /// An estimate of the allocations: the codes, the slot table, the id map (a hashbrown
    /// table: key, value and a control byte per bucket) and each id (an `Arc<str>`: two counts
    /// and the text).
    fn bytes(&self) -> usize {
        let ids: usize = self.slots.keys().map(|id| 16 + id.len()).sum();
        self.codes.bytes()
            + self.ids.capacity() * std::mem::size_of::<Option<Arc<str>>>()
            + self.slots.capacity() * (std::mem::size_of::<(Arc<str>, u32)>() + 1)
            + self.free.capacity() * 4
            + ids
    }

    fn put(&mut self, id: &str, bits: &Bit) {
        let slot = match self.slots.get(id) {
            Some(&slot) => slot,
            None => {
                let slot = self.free.pop().unwrap_or(self.ids.len() as u32);
                let id: Arc<str> = Arc::from(id);
                if slot as usize == self.ids.len() {
                    self.ids.push(Some(id.clone()));
                } else {
                    self.ids[slot as usize] = Some(id.clone());
                }
                self.slots.insert(id, slot);
                slot
            }
        };
        if !self.codes.set_msb_bits(slot, bits.as_bytes()) {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(slot) = self.slots.remove(id) {
            self.ids[slot as usize] = None;
            self.free.push(slot);
        }
    }

    /// The ids of the `r` codes nearest the query.
    fn shortlist(&self, query: &[f32], r: usize) -> Vec<String> {
        let planes = self.codes.planes(query);
        let mut dists = Vec::new();
        self.codes
            .distances(0..self.codes.len(), &planes, &mut dists);
        let ids = &self.ids;
        let live = |slot: u32| ids.get(slot as usize).is_some_and(Option::is_some);
        crate::retrieve::ann::codes::smallest(&dists, 0, r, self.codes.max_distance(), live)
            .into_iter()
            .filter_map(|(_, slot)| ids[slot as usize].as_deref().map(String::from))
            .collect()
    }
}

/// A mirror's state for Info: (index name, ready).
pub const PATH: &str = "mirror";

impl Mirrors {
    fn get(&self, table: &str) -> Option<Arc<Mirror>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            .cloned()
    }

    /// Whether collection table `table` has a mirror, and whether it is built.
    pub fn state(&self, table: &str) -> Option<bool> {
        let mirror = self.get(table)?;
        let ready = mirror
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        Some(ready)
    }

    /// Bytes the mirrors hold (codes, ids and their maps; an estimate of the allocations).
    pub fn bytes(&self) -> usize {
        self.sum(Codes::bytes)
    }

    /// Items mirrored now (all collections).
    pub fn items(&self) -> usize {
        self.sum(|c| c.slots.len())
    }

    /// `of` summed over the built mirrors.
    fn sum(&self, of: impl Fn(&Codes) -> usize) -> usize {
        let all: Vec<Arc<Mirror>> = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.iter().map(|m| m_sum(m, &of)).sum()
    }
}

fn params<'a>(
    p: &'a [&'a (dyn ToSql + Sync)],
) -> impl ExactSizeIterator<Item = &'a dyn ToSql> + 'a {
    p.iter().map(|p| *p as &dyn ToSql)
}

/// Codes of `table` as PostgreSQL computes them: sign bits of the unit vector minus `$1`.
fn codes_sql(table: &str, only: &str) -> String {
    format!("SELECT id, binary_quantize(l2_normalize(embedding) - $1) AS code FROM {table} {only}")
}

/// Builds the codes of `table` (`dim`-dimensional) from scratch, at most `limit` items (more:
/// an error, the collection stays unmirrored). Installs the change triggers first when the table
/// lacks them (made by an older server).
async fn build(
    pool: &Pool,
    table: &str,
    dim: usize,
    limit: usize,
    generation: u64,
) -> Result<Codes, ServiceError> {
    let mut conn = crate::postgres::client(pool).await?;
    let built = async {
        let present: i64 = conn
            .query_one(
                "SELECT count(*) AS n FROM pg_trigger
                 WHERE tgrelid = $1::text::regclass AND tgname LIKE 'clip_changed_%'",
                &[&table],
            )
            .await
            .map_err(pg_error)?
            .try_get("n")
            .map_err(pg_error)?;
        if present < schema::CHANGE_TRIGGERS {
            conn.batch_execute(&schema::change_triggers(table))
                .await
                .map_err(pg_error)?;
        }
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(pg_error)?;
        let snapshot: String = col(
            &tx.query_one("SELECT pg_current_snapshot()::text AS s", &[])
                .await
                .map_err(pg_error)?,
            "s",
        )?;
        let centre: Option<Vector> = col(
            &tx.query_one(
                &format!("SELECT avg(l2_normalize(embedding)) AS c FROM {table}"),
                &[],
            )
            .await
            .map_err(pg_error)?,
            "c",
        )?;
        let centre = centre.unwrap_or_else(|| Vector::from(vec![0.0; dim]));
        let mut codes = Codes::new(dim, centre.clone(), snapshot, generation);
        let stmt = tx
            .prepare(&codes_sql(table, ""))
            .await
            .map_err(pg_error)?;
        let rows = tx
            .query_raw(&stmt, params(&[&centre]))
            .await
            .map_err(pg_error)?;
        tokio::pin!(rows);
        while let Some(row) = rows.next().await {
            let row = row.map_err(pg_error)?;
            let id: String = col(&row, "id")?;
            let bits: Bit = col(&row, "code")?;
            codes.put(&id, &bits);
            if codes.slots.len() > limit {
                return Err(ServiceError::ResourceExhausted(format!(
                    "{table} holds more than the {limit} items left under --postgres-mirror-max-items"
                )));
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(codes)
    }
    .await;
    conn.done(built)
}

/// What one poll of a mirror found.
enum Polled {
    /// The changes were applied (how many).
    Applied(usize),
    /// The table was truncated, or the mirror fell behind the change log: build it again.
    Rebuild,
}

/// Applies the changes `mirror` lacks (see the module doc).
async fn poll(pool: &Pool, table: &str, mirror: &Mirror) -> Result<Polled, ServiceError> {
    let (snapshot, centre, generation) = {
        let guard = mirror.table.read().unwrap_or_else(PoisonError::into_inner);
        let Some(codes) = guard.as_ref() else {
            return Ok(Polled::Rebuild);
        };
        (codes.snapshot.clone(), codes.centre.clone(), codes.build)
    };
    let mut conn = crate::postgres::client(pool).await?;
    let read = async {
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let now: String = col(
            &tx.query_one("SELECT pg_current_snapshot()::text AS s", &[])
                .await
                .map_err(pg_error)?,
            "s",
        )?;
        let changed = tx
            .query(
                "SELECT DISTINCT item FROM clip_item_changes
                 WHERE collection = $1 AND xid >= pg_snapshot_xmin($2::text::pg_snapshot)
                   AND NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot)",
                &[&table, &snapshot],
            )
            .await
            .map_err(pg_error)?;
        let mut items = Vec::with_capacity(changed.len());
        for row in &changed {
            match col::<Option<String>>(row, "item")? {
                Some(item) => items.push(item),
                None => return Ok(None),
            }
        }
        let rows = if items.is_empty() {
            Vec::new()
        } else {
            let sql = codes_sql(table, "WHERE id = ANY($2)");
            tx.query(&sql, &[&centre, &items]).await.map_err(pg_error)?
        };
        tx.commit().await.map_err(pg_error)?;
        Ok(Some((now, items, rows)))
    }
    .await;
    let Some((now, items, rows)) = conn.done(read)? else {
        return Ok(Polled::Rebuild);
    };
    let mut current = HashMap::with_capacity(rows.len());
    for row in &rows {
        current.insert(col::<String>(row, "id")?, col::<Bit>(row, "code")?);
    }
    let mut guard = mirror.table.write().unwrap_or_else(PoisonError::into_inner);
    let Some(codes) = guard.as_mut().filter(|c| c.build == generation) else {
        // Built again meanwhile: this read is older than the new build.
        return Ok(Polled::Applied(0));
    };
    for item in &items {
        match current.get(item) {
            Some(bits) => codes.put(item, bits),
            None => codes.remove(item),
        }
    }
    codes.snapshot = now;
    codes.synced = Instant::now();
    Ok(Polled::Applied(items.len()))
}

impl PgStore {
    /// The mirror settings (`--postgres-mirror-*`); mirrors follow once [`start`] runs.
    pub fn with_mirror(mut self, config: MirrorConfig) -> Self {
        self.mirrors.config = config;
        self
    }

    /// Whether collection incarnation `meta` has a mirror, and whether it is built (Info).
    pub(super) fn mirror_state(&self, id: &str) -> Option<bool> {
        self.mirrors.state(&schema::items_table(id))
    }

    /// Bytes this replica's mirrors hold (an estimate).
    pub fn mirrored_bytes(&self) -> usize {
        self.mirrors.bytes()
    }

    /// [`info_of`], saying `mirror` (and whether it is built) for a mirrored collection.
    pub(super) fn info_with_mirror(
        &self,
        row: &deadpool_postgres::tokio_postgres::Row,
    ) -> Result<crate::retrieve::CollectionInfo, ServiceError> {
        let mut info = super::info_of(row)?;
        if let Some(ready) = self.mirror_state(&col::<String>(row, "id")?) {
            info.index = PATH.into();
            info.ready = ready;
        }
        Ok(info)
    }

    /// Items mirrored in this replica's memory now.
    pub fn mirrored_items(&self) -> usize {
        self.mirrors.items()
    }

    /// One round of the mirror task: mirrors every collection of at least
    /// `--postgres-exact-below` items (within `--postgres-mirror-max-items`), drops the mirrors of
    /// collections gone or shrunk, follows the change log, prunes it. Errors are logged; the
    /// next round tries again.
    pub async fn sync_mirrors(&self) {
        let config = self.mirrors.config;
        if config.max_items == 0 || !self.quantize.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let wanted = match self.large_collections().await {
            Ok(wanted) => wanted,
            Err(e) => {
                tracing::warn!(error = %e, "listing collections for the search mirrors failed");
                return;
            }
        };
        // Drop the mirrors of collections gone (or below the threshold).
        {
            let mut map = self
                .mirrors
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.retain(|table, _| wanted.iter().any(|(t, _, _)| t == table));
            let mut failed = self
                .mirrors
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            failed.retain(|table, at| {
                at.elapsed() < RETRY_AFTER && wanted.iter().any(|(t, _, _)| t == table)
            });
        }
        let mut budget = config.max_items;
        for (table, dim, count) in wanted {
            let existing = self.mirrors.get(&table);
            let stale = existing.as_ref().and_then(|m| {
                let guard = m.table.read().unwrap_or_else(PoisonError::into_inner);
                guard
                    .as_ref()
                    .map(|c| c.synced.elapsed() > config.retention / 2)
            });
            let mirror = match existing {
                Some(m) if stale == Some(false) => m,
                Some(m) => {
                    // Never built, or fell behind the change log.
                    self.build_into(&table, &m, dim, budget).await;
                    budget = budget.saturating_sub(m_items(&m));
                    continue;
                }
                None => {
                    let failed = self
                        .mirrors
                        .failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains_key(&table);
                    if count > budget || failed {
                        continue;
                    }
                    let m = Arc::new(Mirror {
                        dim,
                        table: RwLock::new(None),
                    });
                    self.mirrors
                        .map
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(table.clone(), m.clone());
                    self.build_into(&table, &m, dim, budget).await;
                    budget = budget.saturating_sub(m_items(&m));
                    continue;
                }
            };
            match poll(&self.pool, &table, &mirror).await {
                Ok(Polled::Applied(n)) => {
                    if n > 0 {
                        tracing::debug!(%table, changes = n, "search mirror followed the change log");
                    }
                }
                Ok(Polled::Rebuild) => self.build_into(&table, &mirror, dim, budget).await,
                Err(e) => tracing::warn!(%table, error = %e, "following the change log failed"),
            }
            budget = budget.saturating_sub(m_items(&mirror));
        }
        self.prune_changes().await;
    }

    async fn build_into(&self, table: &str, mirror: &Mirror, dim: usize, budget: usize) {
        let started = Instant::now();
        let generation = self
            .mirror_builds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match build(&self.pool, table, dim, budget, generation).await {
            Ok(codes) => {
                let n = codes.slots.len();
                *mirror.table.write().unwrap_or_else(PoisonError::into_inner) = Some(codes);
                crate::common::release_free_memory();
                tracing::info!(%table, items = n, secs = started.elapsed().as_secs_f64(), "search mirror built");
            }
            Err(e) => {
                tracing::warn!(%table, error = %e, retry_secs = RETRY_AFTER.as_secs(), "building the search mirror failed; the collection is searched by its index");
                self.mirrors
                    .map
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(table);
                self.mirrors
                    .failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(table.to_string(), Instant::now());
            }
        }
    }

    /// (table, dimension, count) of every collection with at least `--postgres-exact-below`
    /// items, smallest first (so the budget mirrors as many as it can).
    async fn large_collections(&self) -> Result<Vec<(String, usize, usize)>, ServiceError> {
        let conn = self.client().await?;
        let min = i64::try_from(self.exact_below).unwrap_or(i64::MAX).max(1);
        let rows = conn
            .query(
                "SELECT id, dimension, count FROM clip_collections WHERE count >= $1
                 ORDER BY count, name",
                &[&min],
            )
            .await
            .map_err(pg_error);
        let rows = conn.done(rows)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = col(&row, "id")?;
            let dim: i32 = col(&row, "dimension")?;
            let count: i64 = col(&row, "count")?;
            out.push((
                schema::items_table(&id),
                usize::try_from(dim).unwrap_or(0),
                usize::try_from(count).unwrap_or(usize::MAX),
            ));
        }
        Ok(out)
    }

    /// Deletes change-log rows of finished transactions older than the retention, at most once
    /// a minute per replica.
    async fn prune_changes(&self) {
        {
            let mut pruned = self
                .mirrors
                .pruned
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pruned.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return;
            }
            *pruned = Some(Instant::now());
        }
        let retention = self.mirrors.config.retention.as_secs_f64();
        let Ok(conn) = self.client().await else {
            return;
        };
        let done = conn
            .execute(
                "DELETE FROM clip_item_changes
                 WHERE at < clock_timestamp() - make_interval(secs => $1)
                   AND xid < pg_snapshot_xmin(pg_current_snapshot())",
                &[&retention],
            )
            .await
            .map_err(pg_error);
        if let Err(e) = conn.done(done) {
            tracing::warn!(error = %e, "pruning the item change log failed");
        }
    }

    /// An unfiltered search from the mirror: `None` when the collection has no built mirror.
    /// The shortlist and every item changed since the mirror's snapshot are rescored by
    /// PostgreSQL in one statement.
    pub(super) async fn search_mirror(
        &self,
        meta: &CollectionMeta,
        query: &Vector,
        k: usize,
    ) -> Result<Option<Vec<Scored>>, ServiceError> {
        let table = schema::items_table(&meta.id);
        let Some(mirror) = self.mirrors.get(&table) else {
            return Ok(None);
        };
        if mirror.dim != meta.dimension {
            return Ok(None);
        }
        let oversample = self
            .oversample()
            .max(self.tuner.tuning(&meta.id).oversample);
        let r = k.saturating_mul(oversample).clamp(k, MAX_SHORTLIST.max(k));
        let q = query.to_vec();
        let found = tokio::task::spawn_blocking(move || {
            let guard = mirror.table.read().unwrap_or_else(PoisonError::into_inner);
            guard
                .as_ref()
                .map(|codes| (codes.shortlist(&q, r), codes.snapshot.clone()))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("the mirror scan failed: {e}")))?;
        let Some((ids, snapshot)) = found else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT id, metadata, (embedding <=> $1)::float8 AS distance FROM {table}
             WHERE id = ANY($2::text[] || ARRAY(
                 SELECT item FROM clip_item_changes
                 WHERE collection = $3 AND item IS NOT NULL
                   AND xid >= pg_snapshot_xmin($4::text::pg_snapshot)
                   AND NOT pg_visible_in_snapshot(xid, $4::text::pg_snapshot)
                 LIMIT $5))
             ORDER BY distance LIMIT $6"
        );
        let recent = i64::try_from(self.mirrors.config.max_recent).unwrap_or(i64::MAX);
        let limit = i64::try_from(k).unwrap_or(i64::MAX);
        let conn = self.client().await?;
        let rows = async {
            let stmt = conn.prepare_cached(&sql).await?;
            conn.query(&stmt, &[query, &ids, &table, &snapshot, &recent, &limit])
                .await
        }
        .await
        .map_err(|e| gone_or(&meta.name, e));
        let rows = conn.done(rows)?;
        rows.iter()
            .map(super::search::scored)
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

fn m_sum(m: &Mirror, of: impl Fn(&Codes) -> usize) -> usize {
    m.table
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map_or(0, of)
}

fn m_items(m: &Mirror) -> usize {
    m_sum(m, |c| c.slots.len())
}

/// Runs [`PgStore::sync_mirrors`] every `--postgres-mirror-poll` while the store lives (a task
/// holding it weakly), when called inside a tokio runtime.
pub fn start(store: Weak<PgStore>, config: MirrorConfig) {
    if config.max_items == 0 || config.poll.is_zero() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no runtime: the PostgreSQL search mirrors are not kept");
        return;
    };
    runtime.spawn(async move {
        loop {
            {
                let Some(store) = store.upgrade() else { return };
                if store.loaded() {
                    store.sync_mirrors().await;
                }
            }
            tokio::time::sleep(config.poll).await;
        }
    });
}
