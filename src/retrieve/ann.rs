//! Approximate search for large collections: [`AnnIndex`], binary codes ([`codes`], the default)
//! or an HNSW graph (usearch, `AnnParams::graph`) that propose candidates, and exact f32 vectors
//! that score them.
//!
//! # The binary scan (default)
//!
//! Every item has a 64-byte code (at 512 dimensions: the signs of the vector minus the
//! collection's mean). A search scores every code (or every match of a filter) against the query
//! quantized to 4 bits per component (the query summed over the code's set bits: four AND +
//! popcount per word, AVX-512 VPOPCNTDQ when present; [`codes`] says why not Hamming), keeps the
//! `oversample * k` nearest (40 * k by default) and rescores those with the exact f32 vectors.
//! Its recall does not depend on where the query lies: a text query far from the image cone is scanned like an image query, where a graph
//! built from the images loses it (measured, BENCHMARKS.md "Text-to-image recall"). No graph is
//! built or saved: the codes are rebuilt from the vectors at start-up (about 3.8 s per 100k
//! items with the rest of the index on a loaded 2-core machine), so a collection at the threshold starts
//! approximate at once. Writes keep the codes in step (the mean stays the one of the build).
//!
//! # The graph (`--ann-graph`)
//!
//! * **Exact scores.** The index keeps every item's f32 vector (as [`super::index::FlatIndex`]
//!   does) and its metadata. The HNSW graph holds f16 copies (usearch quantizes them) and only
//!   *proposes* candidates: every returned score is the f32 dot product computed by the same
//!   [`dot`] as the exact index, so a score never differs from what the exact index returns for
//!   that item. What the approximation can cost is recall (an item of the true top-k missing),
//!   never a wrong score.
//! * **Stable keys.** Items live in slots (row numbers reused through a free list); the graph is
//!   keyed by slot. A delete removes the slot's node, a replacement with a different vector
//!   removes and re-adds it, a metadata-only replacement leaves the graph alone.
//! * **Planner.** Per-(key, value) posting bitmaps (roaring, of slots) give each filter's exact
//!   match set cheaply. A filter whose smallest posting list has at most
//!   max([`AnnParams::exact_max_rows`] (20,000), `k`, n/10) rows is answered by an exact scan of
//!   the intersection (both cores past 16k rows): its cost grows with the matches, not the
//!   collection (~0.2-0.35 us per row), and it is exact, while a filtered HNSW search gets slower
//!   and less reliable the more selective the filter. Measured at 1M x 512 (`scripts/bench_ann.sh`,
//!   2 cores), exact scan vs graph p50: clustered 1% 5.3 vs 175 ms, 5% 18.6 vs 38.5 ms, 10% 36 vs
//!   14.6 ms (graph recall 0.99); uniform 1% 3.9 vs 485 ms, 5% 9.3 vs 116 ms, 10% 18.6 vs 56 ms
//!   (graph recall 0.20). The crossover is near 7% of the collection for clustered data and 17%
//!   for uniform; a tenth bounds either side's loss to about 2.5x and keeps every filter at or
//!   under 10% exactly right. Otherwise the graph is
//!   searched with the filter as a predicate, within a visit budget (the estimated matches, at
//!   least `32 * ef`): a walk past it (a filter whose matches lie far from the query, which
//!   would visit most of the graph) stops and the exact scan of the matches answers. Whenever the graph returns fewer than `k` while more
//!   may match, the exact scan of the matches answers instead: a filter never comes up short.
//! * **No filter:** the graph is asked for `max(2k, k + 16)` candidates (at least
//!   `expansion_search` are explored anyway), which are rescored exactly; the best `k` are
//!   returned.
//! * **Defaults** ([`AnnParams::default`]): connectivity 16, expansion_add 128, expansion_search
//!   256. On clustered 100k sets recall@10 is 1.0 from ef 64 for queries drawn like the items, but
//!   0.90-0.91 at ef 128 and 0.975-0.99 at ef 256 (1.0 at 512) for "far" queries (cosine ~0.3 to
//!   their cluster, as a CLIP text query is to images); ef 256 costs ~1.4-2 ms p50 against 13 ms
//!   exact. Uniform random
//!   vectors (no structure, the worst case) get recall@10 of only 0.1-0.2: a graph cannot help
//!   there, and real embeddings are not like that. Build: ~2,100-2,400 vectors/s on two busy cores
//!   (so ~7-8 min per 1M at first start-up; later start-ups load the saved graph: 0.4 s per 100k).
//! * **Memory per item** (measured, dim 512): 1,518 B in usearch (f16 vector 1,024 B + links and
//!   tables) + 2,135 B outside it (f32 vector, id, maps, postings): RSS grows ~3.7 KB per item,
//!   ~3.7 GB per 1M. On disk: 1,194 B per item.
//! * **Persistence** ([`persist`]): the graph is saved beside the store with a sidecar of
//!   slot -> (id, vector hash) and the graph file's checksum; start-up loads it when it matches
//!   what the store loaded exactly and checks out, else serves exactly while it is repaired or
//!   rebuilt in the background.
//!
//! Not done: the graph is never compacted (usearch reuses removed nodes for later adds, so a
//! collection's graph stays at its largest size); memory-mapped `view` is not used, as the index
//! takes writes (a viewed usearch index is read-only); the graph is saved on graceful shutdown and
//! after a start-up build or repair only, so after a crash start-up repairs it (a tenth of the
//! items changed at most) or rebuilds it; posting lists are not saved (rebuilt from the metadata
//! at load, which is cheap).

pub mod codes;
pub mod persist;

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering as AtomicOrdering},
    },
};

use roaring::RoaringBitmap;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::index::{Metadata, Scored, VectorIndex, dot};
use codes::BinaryCodes;

/// Tuning of the graph and the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnParams {
    /// Links per node (HNSW's M).
    pub connectivity: usize,
    /// Candidates explored per insertion (efConstruction).
    pub expansion_add: usize,
    /// Candidates explored per search (ef).
    pub expansion_search: usize,
    /// A filter matching at most this many rows (or `k`, or a tenth of the collection, when
    /// larger) is answered exactly. 0: filters always go to the graph first (measurements).
    pub exact_max_rows: usize,
    /// Whether searches go to the HNSW graph (false: the binary scan; no graph is built or kept).
    pub graph: bool,
    /// Binary scan: the shortlist rescored exactly is `oversample * k` items.
    pub oversample: usize,
}

impl Default for AnnParams {
    fn default() -> Self {
        AnnParams {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 256,
            exact_max_rows: 20_000,
            graph: false,
            oversample: 40,
        }
    }
}

/// Concurrent searches usearch keeps a context for (a few KiB each), beyond the build threads. A
/// search that finds none free fails inside usearch, and is then answered by the exact scan.
const SEARCH_CONTEXTS: usize = 256;

/// How a search was answered (for tests and the benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Graph candidates, rescored.
    Graph,
    /// The graph with the filter as predicate, rescored.
    FilteredGraph,
    /// An exact scan of the filter's matches (selective filter, or the graph came up short).
    ExactMatches,
    /// An exact scan of everything (the graph failed or came up short).
    ExactAll,
    /// Nothing can match.
    Empty,
    /// The binary codes scanned (all, or the filter's matches), the shortlist rescored.
    Binary,
}

impl Plan {
    /// The search path's name (metrics, Info).
    pub fn path(self) -> &'static str {
        match self {
            Plan::Graph | Plan::FilteredGraph => "graph",
            Plan::ExactMatches | Plan::ExactAll => "exact",
            Plan::Empty => "empty",
            Plan::Binary => "binary",
        }
    }
}

pub struct AnnIndex {
    dim: usize,
    threads: usize,
    params: AnnParams,
    /// Slot-major f32 vectors; a free slot's row is stale.
    vectors: Vec<f32>,
    /// Slot -> id; `None` for a free slot.
    ids: Vec<Option<String>>,
    metadata: Vec<Arc<Metadata>>,
    slots: HashMap<String, u32>,
    free: Vec<u32>,
    /// key -> value -> slots whose metadata holds that pair.
    postings: HashMap<String, HashMap<String, RoaringBitmap>>,
    graph: Index,
    /// One sign bit per dimension of every slot (free slots: stale).
    codes: BinaryCodes,
    /// Whether the graph holds the items (kept up to date by writes), used or not.
    graph_kept: bool,
    /// Written since the last save.
    dirty: AtomicBool,
}

fn graph_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("HNSW index: {e}")
}

impl AnnIndex {
    /// An empty index.
    pub fn new(dim: usize, threads: usize, params: AnnParams) -> anyhow::Result<Self> {
        Ok(AnnIndex {
            dim,
            threads: threads.max(1),
            params,
            vectors: Vec::new(),
            ids: Vec::new(),
            metadata: Vec::new(),
            slots: HashMap::new(),
            free: Vec::new(),
            postings: HashMap::new(),
            graph: Self::new_graph(dim, params)?,
            codes: BinaryCodes::new(dim, vec![0.0; dim]),
            graph_kept: params.graph,
            dirty: AtomicBool::new(true),
        })
    }

    fn new_graph(dim: usize, params: AnnParams) -> anyhow::Result<Index> {
        Index::new(&IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: ScalarKind::F16,
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        })
        .map_err(graph_error)
    }

    /// Builds the index over `items` (unit vectors, distinct ids), adding to the graph on
    /// `threads` threads.
    pub fn build(
        dim: usize,
        threads: usize,
        params: AnnParams,
        items: &[(String, Vec<f32>, Arc<Metadata>)],
    ) -> anyhow::Result<Self> {
        let mut index = Self::new(dim, threads, params)?;
        index.center_on(items);
        index.reserve_slots(items.len());
        for (slot, (id, vector, metadata)) in items.iter().enumerate() {
            index.place(slot as u32, id.clone(), vector, Arc::clone(metadata));
        }
        let all: Vec<u32> = (0..index.ids.len() as u32).collect();
        index.add_to_graph(&all)?;
        Ok(index)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Centres the binary codes on the mean of `items` (before any is placed).
    fn center_on(&mut self, items: &[(String, Vec<f32>, Arc<Metadata>)]) {
        let mean = BinaryCodes::mean_of(self.dim, items.iter().map(|i| &i.1[..]));
        self.codes = BinaryCodes::new(self.dim, mean);
    }

    /// Changes the binary scan's oversampling (the benchmark's sweep; the recall target).
    pub fn set_oversample(&mut self, n: usize) {
        self.params.oversample = n.max(1);
    }

    /// Switches searches between the graph and the binary scan (the benchmark). The graph is
    /// built on demand when it has not been.
    pub fn set_graph(&mut self, on: bool) -> anyhow::Result<()> {
        if on && !self.graph_kept {
            self.graph_kept = true;
            let live: Vec<u32> = (0..self.ids.len() as u32)
                .filter(|&s| self.ids[s as usize].is_some())
                .collect();
            self.add_to_graph(&live)?;
        }
        self.params.graph = on;
        Ok(())
    }
    pub fn params(&self) -> AnnParams {
        self.params
    }

    /// Changes the candidates explored per search (the benchmark's sweep).
    pub fn set_expansion_search(&mut self, n: usize) {
        self.params.expansion_search = n;
        self.graph.change_expansion_search(n);
    }

    /// Changes the planner's exact-scan bound (the benchmark forces either path with it).
    pub fn set_exact_max_rows(&mut self, n: usize) {
        self.params.exact_max_rows = n;
    }

    /// Bytes usearch holds (f16 vectors, links, lookup tables).
    pub fn graph_bytes(&self) -> usize {
        self.graph.memory_usage()
    }

    /// Bytes of the binary codes.
    pub fn code_bytes(&self) -> usize {
        self.codes.bytes()
    }

    /// Bytes held outside the graph, roughly: vectors, codes, ids, maps, metadata pointers, postings.
    pub fn approx_bytes(&self) -> usize {
        let postings: usize = self
            .postings
            .values()
            .flat_map(|v| v.values())
            .map(|b| b.serialized_size() + 48)
            .sum();
        self.vectors.capacity() * 4
            + self.codes.bytes()
            + self
                .ids
                .iter()
                .map(|s| 24 + s.as_ref().map_or(0, |s| s.capacity()))
                .sum::<usize>()
            + self.slots.capacity() * (24 + 4 + 8)
            + self.metadata.capacity() * 8
            + postings
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.load(AtomicOrdering::Acquire)
    }

    fn reserve_slots(&mut self, n: usize) {
        self.vectors.reserve(n * self.dim);
        self.codes.reserve(n);
        self.ids.reserve(n);
        self.metadata.reserve(n);
        self.slots.reserve(n);
    }

    /// Graph capacity for `nodes` nodes and the contexts of the build threads and searches.
    fn ensure_capacity(&self, nodes: usize) -> anyhow::Result<()> {
        let capacity = self.graph.capacity();
        if nodes <= capacity && capacity > 0 {
            return Ok(());
        }
        self.reserve(nodes.max(capacity + capacity / 2).max(1024))
    }

    fn reserve(&self, nodes: usize) -> anyhow::Result<()> {
        self.graph
            .reserve_capacity_and_threads(nodes, self.threads + SEARCH_CONTEXTS)
            .map_err(graph_error)
    }

    /// Puts an item into `slot` (growing the tables to it) and its postings; not the graph.
    fn place(&mut self, slot: u32, id: String, vector: &[f32], metadata: Arc<Metadata>) {
        let s = slot as usize;
        if s >= self.ids.len() {
            self.ids.resize(s + 1, None);
            self.metadata.resize(s + 1, Arc::default());
            self.vectors.resize((s + 1) * self.dim, 0.0);
        }
        self.vectors[s * self.dim..(s + 1) * self.dim].copy_from_slice(vector);
        self.codes.set(slot, vector);
        self.post(slot, &metadata, true);
        self.metadata[s] = metadata;
        self.slots.insert(id.clone(), slot);
        self.ids[s] = Some(id);
    }

    fn post(&mut self, slot: u32, metadata: &Metadata, insert: bool) {
        for (k, v) in metadata {
            if insert {
                self.postings
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .insert(slot);
            } else if let Some(values) = self.postings.get_mut(k) {
                if let Some(bits) = values.get_mut(v) {
                    bits.remove(slot);
                    if bits.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(k);
                }
            }
        }
    }

    fn row(&self, slot: u32) -> &[f32] {
        let s = slot as usize;
        &self.vectors[s * self.dim..(s + 1) * self.dim]
    }

    /// Adds `slots` (placed, not yet in the graph) to the graph, on all threads when many.
    fn add_to_graph(&self, slots: &[u32]) -> anyhow::Result<()> {
        if !self.graph_kept {
            return Ok(());
        }
        self.ensure_capacity(self.graph.size() + slots.len())?;
        let threads = if slots.len() >= 4096 { self.threads } else { 1 };
        let per = slots.len().div_ceil(threads).max(1);
        let failed = std::thread::scope(|s| {
            let handles: Vec<_> = slots
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .filter_map(|&slot| self.graph.add(slot as u64, self.row(slot)).err())
                            .map(|e| e.to_string())
                            .next()
                    })
                })
                .collect();
            handles
                .into_iter()
                .find_map(|h| h.join().unwrap_or_else(|_| Some("panicked".into())))
        });
        match failed {
            Some(e) => Err(graph_error(e)),
            None => Ok(()),
        }
    }

    fn graph_add(&self, slot: u32) {
        if !self.graph_kept {
            return;
        }
        let added = self.ensure_capacity(self.graph.size() + 1).and_then(|()| {
            self.graph
                .add(slot as u64, self.row(slot))
                .map_err(graph_error)
        });
        if let Err(e) = added {
            // The item stays findable by the exact paths; the graph misses it until rebuilt.
            tracing::error!(error = %e, slot, "could not add an item to the HNSW graph");
        }
    }

    fn graph_remove(&self, slot: u32) {
        if !self.graph_kept {
            return;
        }
        if let Err(e) = self.graph.remove(slot as u64) {
            tracing::error!(error = %e, slot, "could not remove an item from the HNSW graph");
        }
    }

    /// Every item: (id, vector, metadata), in slot order.
    pub fn items(&self) -> impl Iterator<Item = (&str, &[f32], &Arc<Metadata>)> {
        self.ids.iter().enumerate().filter_map(|(s, id)| {
            id.as_deref()
                .map(|id| (id, self.row(s as u32), &self.metadata[s]))
        })
    }

    /// The filter's match set: `None` when nothing can match, else its posting lists, smallest
    /// first (empty for an empty filter).
    fn postings_of(&self, filter: &Metadata) -> Option<Vec<&RoaringBitmap>> {
        let mut lists = filter
            .iter()
            .map(|(k, v)| self.postings.get(k).and_then(|values| values.get(v)))
            .collect::<Option<Vec<_>>>()?;
        lists.sort_by_key(|b| b.len());
        Some(lists)
    }

    fn matches_all(lists: &[&RoaringBitmap], slot: u32) -> bool {
        lists.iter().all(|b| b.contains(slot))
    }

    /// Top `k` of `slots` by exact score.
    fn exact(&self, slots: impl Iterator<Item = u32>, query: &[f32], k: usize) -> Vec<(f32, u32)> {
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
        for slot in slots {
            let score = dot(self.row(slot), query);
            if heap.len() < k {
                heap.push(Worst(score, slot));
            } else if heap.peek().is_some_and(|w| score > w.0) {
                heap.pop();
                heap.push(Worst(score, slot));
            }
        }
        heap.into_iter().map(|w| (w.0, w.1)).collect()
    }

    /// Top `k` of every item, split across threads when large.
    fn exact_all(&self, query: &[f32], k: usize) -> Vec<(f32, u32)> {
        let n = self.ids.len();
        let live =
            |r: std::ops::Range<usize>| r.filter(|&s| self.ids[s].is_some()).map(|s| s as u32);
        if n < 16_384 || self.threads == 1 {
            return self.exact(live(0..n), query, k);
        }
        let per = n.div_ceil(self.threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.threads)
                .map(|t| {
                    let rows = (t * per).min(n)..((t + 1) * per).min(n);
                    s.spawn(move || self.exact(live(rows), query, k))
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    fn exact_matches(&self, lists: &[&RoaringBitmap], query: &[f32], k: usize) -> Vec<(f32, u32)> {
        let both;
        let matches = match lists {
            [] => return self.exact_all(query, k),
            [only] => *only,
            [first, rest @ ..] => {
                let mut all = (*first).clone();
                for b in rest {
                    all &= *b;
                }
                both = all;
                &both
            }
        };
        if matches.len() < 16_384 || self.threads == 1 {
            return self.exact(matches.iter(), query, k);
        }
        let slots: Vec<u32> = matches.iter().collect();
        let per = slots.len().div_ceil(self.threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = slots
                .chunks(per)
                .map(|chunk| s.spawn(move || self.exact(chunk.iter().copied(), query, k)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Nodes a filtered graph search may visit before it gives up for the exact scan of the
    /// filter's matches: as many as the filter's estimated matches (a visit costs at least what
    /// scoring a row does, so past that the scan is cheaper), but at least enough for an ordinary
    /// walk through a filter of a tenth or more (`32 * max(expansion_search, count)`).
    fn visit_budget(&self, estimate: usize, count: usize) -> usize {
        estimate.max(32 * self.params.expansion_search.max(count))
    }

    /// Graph candidates for `query` (`count` of them), rescored exactly. `None` when the graph
    /// failed, or when a filtered walk passed its visit budget (a filter whose matches lie far
    /// from the query, which would walk most of the graph).
    fn candidates(
        &self,
        query: &[f32],
        count: usize,
        lists: &[&RoaringBitmap],
        estimate: usize,
    ) -> Option<Vec<(f32, u32)>> {
        let budget = self.visit_budget(estimate, count);
        let visits = std::cell::Cell::new(0usize);
        let found = if lists.is_empty() {
            self.graph.search(query, count)
        } else {
            self.graph.filtered_search(query, count, |key| {
                let n = visits.get() + 1;
                visits.set(n);
                // Past the budget every node "matches": usearch's result list fills at once and
                // the walk ends; the caller throws the results away and scans the matches.
                n > budget || Self::matches_all(lists, key as u32)
            })
        };
        if visits.get() > budget {
            tracing::debug!(
                visits = visits.get(),
                budget,
                "filtered HNSW walk over its visit budget; scanning the matches exactly"
            );
            return None;
        }
        match found {
            Ok(m) => Some(
                m.keys
                    .into_iter()
                    .map(|key| key as u32)
                    .filter(|&slot| {
                        (slot as usize) < self.ids.len() && self.ids[slot as usize].is_some()
                    })
                    .map(|slot| (dot(self.row(slot), query), slot))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "HNSW search failed; scanning exactly");
                None
            }
        }
    }

    /// The binary shortlist among every item, or among the filter's matches, rescored exactly:
    /// the `oversample * k` slots nearest by the 4-bit asymmetric distance ([`codes`]).
    fn binary(&self, query: &[f32], k: usize, lists: &[&RoaringBitmap]) -> Vec<(f32, u32)> {
        let r = self.params.oversample.max(1) * k;
        let planes = self.codes.planes(query);
        let max = self.codes.max_distance();
        let live = |s: u32| self.ids.get(s as usize).is_some_and(Option::is_some);
        let mut shortlist: Vec<(u16, u32)> = if lists.is_empty() {
            let n = self.codes.len().min(self.ids.len());
            let threads = if n >= 65_536 { self.threads } else { 1 };
            let per = n.div_ceil(threads).max(1);
            let scan = |rows: std::ops::Range<usize>| {
                let mut d = Vec::new();
                self.codes.distances(rows.clone(), &planes, &mut d);
                codes::smallest(&d, rows.start, r, max, live)
            };
            if threads == 1 {
                scan(0..n)
            } else {
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|t| {
                            let rows = (t * per).min(n)..((t + 1) * per).min(n);
                            s.spawn(move || scan(rows))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().unwrap_or_default())
                        .collect()
                })
            }
        } else {
            let matches = Self::intersect(lists);
            matches
                .iter()
                .map(|slot| (self.codes.distance(slot, &planes), slot))
                .collect()
        };
        if shortlist.len() > r {
            shortlist.select_nth_unstable(r);
            shortlist.truncate(r);
        }
        shortlist
            .into_iter()
            .map(|(_, slot)| (dot(self.row(slot), query), slot))
            .collect()
    }

    /// The slots every list holds.
    fn intersect(lists: &[&RoaringBitmap]) -> std::borrow::Cow<'static, RoaringBitmap> {
        let mut all = lists
            .first()
            .map_or_else(RoaringBitmap::new, |b| (*b).clone());
        for b in lists.iter().skip(1) {
            all &= *b;
        }
        std::borrow::Cow::Owned(all)
    }

    /// Search, and the plan that answered it.
    pub fn search_planned(
        &self,
        query: &[f32],
        k: usize,
        filter: &Metadata,
    ) -> (Vec<Scored>, Plan) {
        self.search_with(query, k, filter, false)
    }

    /// Search, exact when `exact` (a scan of every item or of the filter's matches), and the plan
    /// that answered it. Otherwise the planner chooses:
    /// - a filter of few matches (at most max(`exact_max_rows`, `k`, n/10)): their exact scan;
    /// - a collection of at most `32 * oversample * k` items: the exact scan (as cheap as the scan);
    /// - without the graph (the default): the binary scan, of everything or of the matches;
    /// - with it: the graph (with the filter as predicate), the exact scan when it comes up short.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        filter: &Metadata,
        exact: bool,
    ) -> (Vec<Scored>, Plan) {
        let n = self.slots.len();
        if k == 0 || n == 0 || query.len() != self.dim {
            return (Vec::new(), Plan::Empty);
        }
        let Some(lists) = self.postings_of(filter) else {
            return (Vec::new(), Plan::Empty);
        };
        let estimate = lists.first().map_or(n as u64, |b| b.len()) as usize;
        let exact_bound = match self.params.exact_max_rows {
            0 => 0,
            rows => rows.max(k).max(n / 10),
        };
        let small = !self.params.graph
            && self.params.exact_max_rows > 0
            && n <= 32 * self.params.oversample.max(1) * k;
        let exact_plan = |lists: &[&RoaringBitmap]| {
            if lists.is_empty() {
                (self.exact_all(query, k), Plan::ExactAll)
            } else {
                (self.exact_matches(lists, query, k), Plan::ExactMatches)
            }
        };
        let (mut best, plan) = if exact || small || (!lists.is_empty() && estimate <= exact_bound) {
            exact_plan(&lists)
        } else if !self.params.graph {
            match self.binary(query, k, &lists) {
                c if c.len() >= k.min(estimate) => (c, Plan::Binary),
                // Dead slots took the shortlist's places, or fewer match than it seemed.
                _ => exact_plan(&lists),
            }
        } else {
            let count = (2 * k).max(k + 16).min(n);
            let plan = if lists.is_empty() {
                Plan::Graph
            } else {
                Plan::FilteredGraph
            };
            match self.candidates(query, count, &lists, estimate) {
                // Fewer than k while at least that many may match: ask the exact scan (it knows).
                Some(c) if c.len() >= k.min(estimate) => (c, plan),
                _ if lists.is_empty() => (self.exact_all(query, k), Plan::ExactAll),
                _ => (self.exact_matches(&lists, query, k), Plan::ExactMatches),
            }
        };
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.truncate(k);
        let scored = best
            .into_iter()
            .map(|(score, slot)| Scored {
                id: self.ids[slot as usize].clone().unwrap_or_default(),
                score,
                metadata: Arc::clone(&self.metadata[slot as usize]),
            })
            .collect();
        (scored, plan)
    }
}

impl VectorIndex for AnnIndex {
    fn upsert(&mut self, id: String, vector: &[f32], metadata: Arc<Metadata>) {
        debug_assert_eq!(vector.len(), self.dim);
        self.dirty.store(true, AtomicOrdering::Release);
        if let Some(&slot) = self.slots.get(&id) {
            let old = std::mem::take(&mut self.metadata[slot as usize]);
            self.post(slot, &old, false);
            let moved = self.row(slot) != vector;
            self.place(slot, id, vector, metadata);
            if moved {
                self.graph_remove(slot);
                self.graph_add(slot);
            }
            return;
        }
        let slot = self.free.pop().unwrap_or(self.ids.len() as u32);
        self.place(slot, id, vector, metadata);
        self.graph_add(slot);
    }

    fn delete(&mut self, id: &str) -> bool {
        let Some(slot) = self.slots.remove(id) else {
            return false;
        };
        self.dirty.store(true, AtomicOrdering::Release);
        let old = std::mem::take(&mut self.metadata[slot as usize]);
        self.post(slot, &old, false);
        self.ids[slot as usize] = None;
        self.free.push(slot);
        self.graph_remove(slot);
        true
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn contains(&self, id: &str) -> bool {
        self.slots.contains_key(id)
    }

    fn search(&self, query: &[f32], k: usize, filter: &Metadata) -> Vec<Scored> {
        self.search_planned(query, k, filter).0
    }

    fn ann(&self) -> Option<&AnnIndex> {
        Some(self)
    }

    fn ann_mut(&mut self) -> Option<&mut AnnIndex> {
        Some(self)
    }

    fn search_traced(
        &self,
        query: &[f32],
        k: usize,
        filter: &Metadata,
        exact: bool,
    ) -> (Vec<Scored>, &'static str) {
        let (found, plan) = self.search_with(query, k, filter, exact);
        (found, plan.path())
    }
}

/// Min-heap entry: the heap's top is the worst of the best k.
struct Worst(f32, u32);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

#[cfg(test)]
mod tests;
