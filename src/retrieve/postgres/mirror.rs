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
//! not see, that is one at or past its xmax (one past the latest *completed* transaction, so a
//! transaction running then may be there too) or in its in-progress list
//! ([`follow::unseen_items`], both bounded by the log's index). So:
//! - every `--postgres-mirror-poll`, one task reads, in a REPEATABLE READ transaction, the
//!   changes invisible to the mirror's snapshot and the current codes of those items (an item
//!   gone is removed), and moves the mirror to that transaction's snapshot (on the blocking pool:
//!   the write lock waits for scans in flight);
//! - a search rescores, beside its shortlist, every item changed since the mirror's snapshot (up
//!   to `--postgres-mirror-max-recent`), read in the search's own statement. A search therefore
//!   sees every committed write at once, by any replica, as before the mirrors; deleted items are
//!   absent from the table and never come back.
//!
//! A poll that finds more changed items than `--postgres-mirror-max-recent` (a bulk load), a
//! truncated table, or transaction ids gone back (a failover that lost transactions) builds the
//! mirror again; searches use the pgvector index meanwhile, as they do for a mirror whose last
//! poll is older than ten polls (at least a minute). A mirror that grows past what is left of
//! `--postgres-mirror-max-items` is dropped; a build that fails waits a minute before the next.
//! Change-log rows older than `--postgres-change-retention` (of finished transactions) are
//! pruned in batches; a mirror that could not poll for half of that is built again. A
//! transaction that stays open, with writes, for longer than half the retention can have its
//! changes pruned before a mirror reads them: clip-serve's own writes are bounded by
//! `--postgres-statement-timeout`, a bulk load by hand should not run for half an hour in one
//! transaction. The builds run one after another in the poll task, so a long build delays the
//! other mirrors' polls (their searches still see every write through the log).
//!
//! A collection is searched by its pgvector index while its mirror builds (Info says `mirror`,
//! not ready), and filtered searches always use the index paths (the mirror holds no metadata).

mod follow;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use pgvector::{Bit, Vector};

use super::{PgStore, gone_or, search::MAX_SHORTLIST};
use crate::{
    common::ServiceError,
    postgres::{MirrorConfig, col, pg_error, schema},
    retrieve::{ann::codes::BinaryCodes, index::Scored, store::CollectionMeta},
    telemetry::metrics::MirrorMetrics,
};
use follow::{Polled, unseen_items};

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
    /// Set after every round, when the server measures.
    metrics: Option<MirrorMetrics>,
}

/// How long a table whose mirror could not be built waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// One collection's mirror.
pub struct Mirror {
    dim: usize,
    /// `None` while it is first built.
    table: RwLock<Option<Codes>>,
    /// Being built again because it fell behind: searches use the pgvector index meanwhile.
    rebuilding: AtomicBool,
}

impl Mirror {
    fn new(dim: usize) -> Self {
        Mirror {
            dim,
            table: RwLock::new(None),
            rebuilding: AtomicBool::new(false),
        }
    }
}

/// The codes and ids of one collection, as of `snapshot`.
struct Codes {
    codes: BinaryCodes,
    ids: Vec<Option<Arc<str>>>,
    slots: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
    /// The ids' allocations (an `Arc<str>`: two counts and the text), kept as they come and go:
    /// [`Self::bytes`] runs after every poll.
    id_bytes: usize,
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
            id_bytes: 0,
            centre,
            snapshot,
            synced: Instant::now(),
            build,
        }
    }

    /// An estimate of the allocations: the codes, the slot table, the id map (a hashbrown
    /// table: key, value and a control byte per bucket) and each id.
    fn bytes(&self) -> usize {
        self.codes.bytes()
            + self.ids.capacity() * std::mem::size_of::<Option<Arc<str>>>()
            + self.slots.capacity() * (std::mem::size_of::<(Arc<str>, u32)>() + 1)
            + self.free.capacity() * 4
            + self.id_bytes
    }

    fn reserve(&mut self, n: usize) {
        self.codes.reserve(n);
        self.ids.reserve(n);
        self.slots.reserve(n);
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
                self.id_bytes += id_bytes(&id);
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
            self.id_bytes -= id_bytes(id);
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

/// What one id's `Arc<str>` allocates: two counts and the text.
fn id_bytes(id: &str) -> usize {
    16 + id.len()
}

/// The index name Info gives a mirrored collection, and the path its mirror searches count under.
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

    /// Seconds since the least recently synced built mirror caught up (0 without one).
    pub fn lag_seconds(&self) -> f64 {
        self.all()
            .iter()
            .filter_map(|m| {
                let table = m.table.read().unwrap_or_else(PoisonError::into_inner);
                table.as_ref().map(|c| c.synced.elapsed().as_secs_f64())
            })
            .fold(0.0, f64::max)
    }

    /// Sets the gauges from what the mirrors hold now.
    fn report(&self) {
        if let Some(metrics) = &self.metrics {
            metrics
                .items
                .set(i64::try_from(self.items()).unwrap_or(i64::MAX));
            metrics
                .bytes
                .set(i64::try_from(self.bytes()).unwrap_or(i64::MAX));
            metrics.lag_seconds.set(self.lag_seconds());
        }
    }

    /// `of` summed over the built mirrors.
    fn sum(&self, of: impl Fn(&Codes) -> usize) -> usize {
        self.all().iter().map(|m| m_sum(m, &of)).sum()
    }

    /// Every mirror now (taken out of the map's lock).
    fn all(&self) -> Vec<Arc<Mirror>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl PgStore {
    /// The mirror settings (`--postgres-mirror-*`); mirrors follow once [`start`] runs.
    pub fn with_mirror(mut self, config: MirrorConfig) -> Self {
        self.mirrors.config = config;
        self
    }

    /// Reports the mirrors' items, bytes and lag into `metrics` after every round.
    pub fn with_mirror_metrics(mut self, metrics: MirrorMetrics) -> Self {
        self.mirrors.metrics = Some(metrics);
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
    /// next round tries again. Then sets the mirrors' gauges (`clip_postgres_mirror_*`).
    pub async fn sync_mirrors(&self) {
        self.sync_round().await;
        self.mirrors.report();
    }

    async fn sync_round(&self) {
        let config = self.mirrors.config;
        if config.max_items == 0 || !self.quantize.load(Ordering::Relaxed) {
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
                    self.build_into(&table, &m, dim, count, budget).await;
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
                    let m = Arc::new(Mirror::new(dim));
                    self.mirrors
                        .map
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(table.clone(), m.clone());
                    self.build_into(&table, &m, dim, count, budget).await;
                    budget = budget.saturating_sub(m_items(&m));
                    continue;
                }
            };
            match follow::poll(&self.pool, &table, &mirror, config.max_recent).await {
                Ok(Polled::Applied(n)) => {
                    if n > 0 {
                        tracing::debug!(%table, changes = n, "search mirror followed the change log");
                    }
                }
                Ok(Polled::Rebuild(why)) => {
                    tracing::info!(%table, reason = why, "search mirror built again");
                    mirror.rebuilding.store(true, Ordering::Release);
                    self.build_into(&table, &mirror, dim, count, budget).await;
                }
                Err(e) => tracing::warn!(%table, error = %e, "following the change log failed"),
            }
            let items = m_items(&mirror);
            if items > budget {
                // Grew past what is left of the budget: searched by its index from now on.
                tracing::warn!(%table, items, budget, "a search mirror outgrew --postgres-mirror-max-items; dropped");
                self.drop_mirror(&table);
                continue;
            }
            budget -= items;
        }
        self.prune_changes().await;
    }

    /// Forgets the mirror of `table` (its memory is freed on the blocking pool).
    fn drop_mirror(&self, table: &str) {
        let gone = self
            .mirrors
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(table);
        if let Some(gone) = gone {
            tokio::task::spawn_blocking(move || {
                drop(gone);
                crate::common::release_free_memory();
            });
        }
    }

    async fn build_into(
        &self,
        table: &str,
        mirror: &Arc<Mirror>,
        dim: usize,
        count: usize,
        budget: usize,
    ) {
        let started = Instant::now();
        let generation = self.mirror_builds.fetch_add(1, Ordering::Relaxed);
        let built = follow::build(&self.pool, table, dim, count, budget, generation).await;
        match built {
            Ok(codes) => {
                let n = codes.slots.len();
                // Swapped, and the old codes freed, on the blocking pool: the write lock waits
                // for the scans in flight.
                let mirror = mirror.clone();
                let swapped = tokio::task::spawn_blocking(move || {
                    let old = mirror
                        .table
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .replace(codes);
                    mirror.rebuilding.store(false, Ordering::Release);
                    drop(old);
                    crate::common::release_free_memory();
                })
                .await;
                if let Err(e) = swapped {
                    tracing::error!(%table, error = %e, "installing the search mirror failed");
                }
                tracing::info!(%table, items = n, secs = started.elapsed().as_secs_f64(), "search mirror built");
            }
            Err(e) => {
                tracing::warn!(%table, error = %e, retry_secs = RETRY_AFTER.as_secs(), "building the search mirror failed; the collection is searched by its index");
                self.drop_mirror(table);
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
        match follow::prune(&self.pool, self.mirrors.config.retention).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "item change log pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning the item change log failed"),
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
        if mirror.dim != meta.dimension || mirror.rebuilding.load(Ordering::Acquire) {
            return Ok(None);
        }
        // A mirror whose poll has not succeeded for a while (PostgreSQL struggling, a long
        // build of another one) is not trusted: the change log since it may be long.
        let poll = self.mirrors.config.poll;
        let trust = (poll * 10).max(Duration::from_secs(60));
        let oversample = self
            .oversample()
            .max(self.tuner.tuning(&meta.id).oversample);
        let r = k.saturating_mul(oversample).clamp(k, MAX_SHORTLIST.max(k));
        let q = query.to_vec();
        let found = tokio::task::spawn_blocking(move || {
            let guard = mirror.table.read().unwrap_or_else(PoisonError::into_inner);
            guard
                .as_ref()
                .filter(|codes| codes.synced.elapsed() <= trust)
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
                 SELECT item FROM ({}) u WHERE item IS NOT NULL))
             ORDER BY distance LIMIT $6",
            unseen_items(&snapshot, 3, 4, 5)
        );
        // Transactions were running at the snapshot (rare): their ids are in the statement's
        // text, so it is not kept prepared.
        let cached = follow::xip_of(&snapshot).is_empty();
        let recent = i64::try_from(self.mirrors.config.max_recent).unwrap_or(i64::MAX);
        let limit = i64::try_from(k).unwrap_or(i64::MAX);
        let conn = self.client().await?;
        let rows = async {
            let params: [&(dyn deadpool_postgres::tokio_postgres::types::ToSql + Sync); 6] =
                [query, &ids, &table, &snapshot, &recent, &limit];
            if cached {
                let stmt = conn.prepare_cached(&sql).await?;
                conn.query(&stmt, &params).await
            } else {
                conn.query(sql.as_str(), &params).await
            }
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
