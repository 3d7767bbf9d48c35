//! Vector search behind a trait, so an approximate index (HNSW) or an external vector database can
//! take the place of the exact one later. [`FlatIndex`] is exact: every vector, dot products over
//! one contiguous row-major matrix (written so the compiler vectorizes them), split across threads.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BinaryHeap, HashMap},
    sync::Arc,
};

pub type Metadata = BTreeMap<String, String>;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub id: String,
    pub score: f32,
    pub metadata: Arc<Metadata>,
}

pub trait VectorIndex: Send + Sync {
    /// Inserts or replaces `id`. `vector` is L2-normalized and of the index's dimension.
    fn upsert(&mut self, id: String, vector: &[f32], metadata: Arc<Metadata>);
    /// Removes `id`; false when it was absent.
    fn delete(&mut self, id: &str) -> bool;
    fn len(&self) -> usize;
    /// Whether `id` is held.
    fn contains(&self, id: &str) -> bool;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` best items by dot product with `query` (normalized), best first, among those whose
    /// metadata holds every pair of `filter`.
    fn search(&self, query: &[f32], k: usize, filter: &Metadata) -> Vec<Scored>;
    /// [`Self::search`], exact when `exact`, and the name of the path that answered
    /// (`clip_search_path_total`). An exact index always answers exactly.
    fn search_traced(
        &self,
        query: &[f32],
        k: usize,
        filter: &Metadata,
        exact: bool,
    ) -> (Vec<Scored>, &'static str) {
        let _ = exact;
        (self.search(query, k, filter), "exact")
    }
    /// The approximate index behind this one, if it is one (saving, tests).
    fn ann(&self) -> Option<&super::ann::AnnIndex> {
        None
    }
    /// The same, to change its parameters (the recall check).
    fn ann_mut(&mut self) -> Option<&mut super::ann::AnnIndex> {
        None
    }
    /// The exact index behind this one, if it is one (the switch to approximate search).
    fn flat(&self) -> Option<&FlatIndex> {
        None
    }
}

/// Exact search over a contiguous matrix.
pub struct FlatIndex {
    dim: usize,
    threads: usize,
    ids: Vec<String>,
    rows: HashMap<String, usize>,
    vectors: Vec<f32>,
    metadata: Vec<Arc<Metadata>>,
}

/// Rows below this are scanned on the calling thread (spawning costs more than it saves).
const PARALLEL_MIN_ROWS: usize = 16_384;

impl FlatIndex {
    pub fn new(dim: usize, threads: usize) -> Self {
        FlatIndex {
            dim,
            threads: threads.max(1),
            ids: Vec::new(),
            rows: HashMap::new(),
            vectors: Vec::new(),
            metadata: Vec::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Every item: (id, vector, metadata), in row order.
    pub fn items(&self) -> impl Iterator<Item = (&str, &[f32], &Arc<Metadata>)> {
        self.ids
            .iter()
            .zip(self.vectors.chunks_exact(self.dim.max(1)))
            .zip(&self.metadata)
            .map(|((id, v), m)| (id.as_str(), v, m))
    }

    /// Bytes held per item, roughly: the vector, the id, the map entry and the metadata pointer.
    pub fn approx_bytes(&self) -> usize {
        self.vectors.capacity() * 4
            + self.ids.iter().map(|s| s.capacity() + 24).sum::<usize>()
            + self.rows.capacity() * (24 + 8 + 8)
            + self.metadata.capacity() * 8
    }

    fn scan(
        &self,
        rows: std::ops::Range<usize>,
        query: &[f32],
        k: usize,
        filter: &Metadata,
    ) -> Vec<(f32, usize)> {
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
        for row in rows {
            if !filter.is_empty() {
                let m = &self.metadata[row];
                if !filter.iter().all(|(k, v)| m.get(k) == Some(v)) {
                    continue;
                }
            }
            let score = dot(&self.vectors[row * self.dim..(row + 1) * self.dim], query);
            if heap.len() < k {
                heap.push(Worst(score, row));
            } else if heap.peek().is_some_and(|w| score > w.0) {
                heap.pop();
                heap.push(Worst(score, row));
            }
        }
        heap.into_iter().map(|w| (w.0, w.1)).collect()
    }
}

/// Min-heap entry: the heap's top is the worst of the best k.
struct Worst(f32, usize);

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
        // Reversed: lower scores are "greater", so they sit on top and go first; ties by row.
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// Dot product with 8 independent accumulators, which the compiler turns into SIMD.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

impl VectorIndex for FlatIndex {
    fn upsert(&mut self, id: String, vector: &[f32], metadata: Arc<Metadata>) {
        debug_assert_eq!(vector.len(), self.dim);
        match self.rows.get(&id) {
            Some(&row) => {
                self.vectors[row * self.dim..(row + 1) * self.dim].copy_from_slice(vector);
                self.metadata[row] = metadata;
            }
            None => {
                self.rows.insert(id.clone(), self.ids.len());
                self.ids.push(id);
                self.vectors.extend_from_slice(vector);
                self.metadata.push(metadata);
            }
        }
    }

    fn delete(&mut self, id: &str) -> bool {
        let Some(row) = self.rows.remove(id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if row != last {
            // Move the last row into the hole.
            let (dim, moved) = (self.dim, self.ids[last].clone());
            self.vectors
                .copy_within(last * dim..(last + 1) * dim, row * dim);
            self.ids.swap(row, last);
            self.metadata.swap(row, last);
            self.rows.insert(moved, row);
        }
        self.ids.pop();
        self.metadata.pop();
        self.vectors.truncate(last * self.dim);
        true
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn contains(&self, id: &str) -> bool {
        self.rows.contains_key(id)
    }

    fn flat(&self) -> Option<&FlatIndex> {
        Some(self)
    }

    fn search(&self, query: &[f32], k: usize, filter: &Metadata) -> Vec<Scored> {
        let n = self.ids.len();
        if k == 0 || n == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let threads = if n >= PARALLEL_MIN_ROWS {
            self.threads
        } else {
            1
        };
        let mut best: Vec<(f32, usize)> = if threads == 1 {
            self.scan(0..n, query, k, filter)
        } else {
            let per = n.div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let rows = (t * per).min(n)..((t + 1) * per).min(n);
                        s.spawn(move || self.scan(rows, query, k, filter))
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.truncate(k);
        best.into_iter()
            .map(|(score, row)| Scored {
                id: self.ids[row].clone(),
                score,
                metadata: Arc::clone(&self.metadata[row]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    fn brute(items: &[(String, Vec<f32>)], q: &[f32], k: usize) -> Vec<String> {
        let mut s: Vec<(f32, &String)> = items
            .iter()
            .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), id))
            .collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0));
        s.into_iter().take(k).map(|(_, id)| id.clone()).collect()
    }

    #[test]
    fn search_equals_brute_force_in_one_thread_and_many() {
        let dim = 37; // not a multiple of 8: the remainder path runs
        let items: Vec<(String, Vec<f32>)> = (0..20_000u64)
            .map(|i| (format!("id{i}"), unit(i, dim)))
            .collect();
        for threads in [1, 2, 3] {
            let mut index = FlatIndex::new(dim, threads);
            for (id, v) in &items {
                index.upsert(id.clone(), v, Arc::new(Metadata::new()));
            }
            for q in 0..5u64 {
                let query = unit(1_000_000 + q, dim);
                let got: Vec<String> = index
                    .search(&query, 10, &Metadata::new())
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                assert_eq!(got, brute(&items, &query, 10), "threads {threads}");
            }
        }
    }

    #[test]
    fn upsert_replaces_delete_swaps_and_filters_apply() {
        let mut index = FlatIndex::new(2, 1);
        let meta = |k: &str| Arc::new(Metadata::from([("kind".to_string(), k.to_string())]));
        index.upsert("a".into(), &[1.0, 0.0], meta("cat"));
        index.upsert("b".into(), &[0.0, 1.0], meta("dog"));
        index.upsert("c".into(), &[0.6, 0.8], meta("cat"));
        assert_eq!(index.len(), 3);
        index.upsert("a".into(), &[0.0, 1.0], meta("dog"));
        assert_eq!(index.len(), 3, "replaced, not added");
        let top = index.search(&[0.0, 1.0], 3, &Metadata::new());
        assert_eq!(top[0].score, 1.0);
        let cats = index.search(
            &[0.0, 1.0],
            3,
            &Metadata::from([("kind".into(), "cat".into())]),
        );
        assert_eq!(
            cats.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert!(index.delete("a"));
        assert!(!index.delete("a"));
        assert_eq!(index.len(), 2);
        let all: Vec<String> = index
            .search(&[1.0, 0.0], 5, &Metadata::new())
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(all, ["c", "b"]);
        assert!(index.delete("b") && index.delete("c") && index.is_empty());
        assert!(index.search(&[1.0, 0.0], 5, &Metadata::new()).is_empty());
    }

    #[test]
    fn dot_matches_the_naive_sum() {
        let (a, b) = (unit(1, 515), unit(2, 515));
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-5);
    }
}
