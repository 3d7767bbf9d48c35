//! Approximate search (AnnIndex, HNSW over f16 + exact f32 rescoring) against exact search
//! (FlatIndex), 512 dimensions, both cores (a program that measures, not a test). For each size
//! and data kind:
//!   - build time and rate of the ANN index, memory per vector (RSS growth and usearch's count);
//!   - top-10 search p50/p99 over the queries, exact and ANN, and ANN recall@10 (a sweep of
//!     expansion_search, then the defaults);
//!   - filtered search at 1%, 5% and 10% selectivity: the planner's choice, and each path forced;
//!   - save time and size, and the start-up path (open: verify the saved graph, load it).
//!
//! `uniform` vectors are random on the sphere (the hardest case for a graph: no structure);
//! `clustered` are 1000 random centres plus gaussian noise (cosine ~0.83 to their centre),
//! normalized, closer to CLIP embeddings of a real collection. Queries come from the same
//! distribution; for clustered data, also "far" queries (cosine ~0.3 to their centre, as text
//! queries are to images), where a graph finds the true neighbours least easily.
//!
//! Usage: cargo bench --bench ann -- [--sizes 100000,1000000] [--data uniform,clustered]
//!        [--queries 200] [--json OUT]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program: a panic is a failed run"
)]

mod common;

use common::{percentile, rss_kib};
use std::{sync::Arc, time::Instant};

use clip_serve::retrieve::{
    ann::{AnnIndex, AnnParams, persist},
    index::{FlatIndex, Metadata, Scored, VectorIndex},
};

const DIM: usize = 512;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn gauss(&mut self) -> f32 {
        // Box-Muller.
        let u = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
}

/// `n` unit vectors, row-major.
fn vectors(kind: &str, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::with_capacity(n * DIM);
    match kind {
        "uniform" => {
            for _ in 0..n {
                let start = out.len();
                out.extend((0..DIM).map(|_| rng.uniform()));
                normalize(&mut out[start..]);
            }
        }
        "clustered" | "far" => {
            // `far`: queries around the same centres with much more noise (cosine ~0.3 to the
            // centre), as a CLIP text query is to the images it finds.
            let noise = if kind == "far" { 0.14 } else { 0.03 };
            // The same centres for items and queries.
            let mut crng = Rng(0x5EED);
            let mut centres: Vec<f32> = (0..1000 * DIM).map(|_| crng.gauss()).collect();
            centres.chunks_exact_mut(DIM).for_each(normalize);
            for _ in 0..n {
                let c = (rng.next() % 1000) as usize;
                let start = out.len();
                out.extend(
                    centres[c * DIM..(c + 1) * DIM]
                        .iter()
                        .map(|x| x + noise * rng.gauss()),
                );
                normalize(&mut out[start..]);
            }
        }
        other => panic!("--data uniform|clustered, not {other}"),
    }
    out
}

fn meta(i: usize) -> Arc<Metadata> {
    Arc::new(Metadata::from([
        ("p1".to_string(), (i % 100).to_string()),
        ("p5".to_string(), (i % 20).to_string()),
        ("p10".to_string(), (i % 10).to_string()),
    ]))
}

/// p50, p99 (ms), mean results, and the results, of `search` over `queries`.
fn timed(
    queries: &[f32],
    mut search: impl FnMut(&[f32]) -> Vec<Scored>,
) -> (f64, f64, f64, Vec<Vec<String>>) {
    let (mut times, mut results) = (Vec::new(), Vec::new());
    for q in queries.chunks_exact(DIM) {
        let t = Instant::now();
        let hits = search(q);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        results.push(hits.into_iter().map(|s| s.id).collect::<Vec<_>>());
    }
    times.sort_by(f64::total_cmp);
    let mean = results.iter().map(Vec::len).sum::<usize>() as f64 / results.len() as f64;
    (
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        mean,
        results,
    )
}

fn recall(truth: &[Vec<String>], got: &[Vec<String>]) -> f64 {
    let (mut hit, mut total) = (0, 0);
    for (t, g) in truth.iter().zip(got) {
        total += t.len();
        hit += g.iter().filter(|id| t.contains(id)).count();
    }
    if total == 0 {
        1.0
    } else {
        hit as f64 / total as f64
    }
}

fn run(kind: &str, n: usize, nq: usize, threads: usize) -> serde_json::Value {
    let data = vectors(kind, n, 7);
    let queries = vectors(kind, nq, 99);
    let none = Metadata::new();

    let mut flat = FlatIndex::new(DIM, threads);
    for (i, v) in data.chunks_exact(DIM).enumerate() {
        flat.upsert(format!("item-{i}"), v, meta(i));
    }
    let (exact_p50, exact_p99, _, truth) = timed(&queries, |q| flat.search(q, 10, &none));
    println!("{kind} {n}: exact p50 {exact_p50:.2} ms p99 {exact_p99:.2} ms");

    let items = || {
        data.chunks_exact(DIM)
            .enumerate()
            .map(|(i, v)| (format!("item-{i}"), v.to_vec(), meta(i)))
            .collect::<Vec<_>>()
    };
    let input = items();
    let before = rss_kib();
    let t = Instant::now();
    let mut ann = AnnIndex::build(DIM, threads, AnnParams::default(), &input).expect("build");
    let build_s = t.elapsed().as_secs_f64();
    let rss_growth = rss_kib().saturating_sub(before) as f64 * 1024.0 / n as f64;
    let graph_b = ann.graph_bytes() as f64 / n as f64;
    let other_b = ann.approx_bytes() as f64 / n as f64;
    println!(
        "{kind} {n}: build {build_s:.1} s ({:.0}/s), graph {graph_b:.0} B/vector + {other_b:.0} B/vector outside it, RSS growth {rss_growth:.0} B/vector",
        n as f64 / build_s
    );

    let mut sweep = Vec::new();
    for ef in [32, 64, 128, 256] {
        ann.set_expansion_search(ef);
        let (p50, p99, _, got) = timed(&queries, |q| ann.search(q, 10, &none));
        let r = recall(&truth, &got);
        println!("{kind} {n}: ef {ef}: p50 {p50:.3} ms p99 {p99:.3} ms recall@10 {r:.4}");
        sweep.push(serde_json::json!({"expansion_search": ef, "p50_ms": p50, "p99_ms": p99, "recall_at_10": r}));
    }
    let defaults = AnnParams::default();
    ann.set_expansion_search(defaults.expansion_search);
    let (ann_p50, ann_p99, _, got) = timed(&queries, |q| ann.search(q, 10, &none));
    let ann_recall = recall(&truth, &got);
    // Clustered data, far queries: recall where the graph has it hardest (text-to-image like).
    let far = (kind == "clustered").then(|| {
        let far_queries = vectors("far", nq, 123);
        let (_, _, _, far_truth) = timed(&far_queries, |q| flat.search(q, 10, &none));
        let mut rows = Vec::new();
        for ef in [128, 256, 512] {
            ann.set_expansion_search(ef);
            let (p50, p99, _, got) = timed(&far_queries, |q| ann.search(q, 10, &none));
            let r = recall(&far_truth, &got);
            println!("{kind} {n}: far queries, ef {ef}: p50 {p50:.3} ms p99 {p99:.3} ms recall@10 {r:.4}");
            rows.push(serde_json::json!({"expansion_search": ef, "p50_ms": p50, "p99_ms": p99, "recall_at_10": r}));
        }
        ann.set_expansion_search(defaults.expansion_search);
        rows
    });

    let mut filtered = Vec::new();
    for (key, groups) in [("p1", 100), ("p5", 20), ("p10", 10)] {
        let pct = 100 / groups;
        let filters: Vec<Metadata> = (0..nq)
            .map(|i| Metadata::from([(key.to_string(), (i % groups).to_string())]))
            .collect();
        let mut fi = 0;
        let (fp50, _, _, ftruth) = timed(&queries, |q| {
            fi += 1;
            flat.search(q, 10, &filters[fi - 1])
        });
        let mut row = serde_json::json!({"selectivity_pct": pct, "matching_rows": n * pct / 100, "exact_flat_p50_ms": fp50});
        for (label, bound) in [
            ("planner", defaults.exact_max_rows),
            ("forced_graph", 0),
            ("forced_exact", usize::MAX),
        ] {
            ann.set_exact_max_rows(bound);
            let plan = ann.search_planned(&queries[..DIM], 10, &filters[0]).1;
            let mut fi = 0;
            let (p50, p99, mean, got) = timed(&queries, |q| {
                fi += 1;
                ann.search(q, 10, &filters[fi - 1])
            });
            let r = recall(&ftruth, &got);
            println!(
                "{kind} {n}: filter {pct}% {label} ({plan:?}): p50 {p50:.3} ms p99 {p99:.3} ms, {mean:.1} results, recall@10 {r:.4}"
            );
            row[label] = serde_json::json!({"plan": format!("{plan:?}"), "p50_ms": p50, "p99_ms": p99, "mean_results": mean, "recall_at_10": r});
        }
        ann.set_exact_max_rows(defaults.exact_max_rows);
        filtered.push(row);
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    ann.save(dir.path(), "bench", "inc").expect("save");
    let save_s = t.elapsed().as_secs_f64();
    let (graph, sidecar) = persist::paths(dir.path(), "bench");
    let file_bytes = std::fs::metadata(&graph).map_or(0, |m| m.len())
        + std::fs::metadata(&sidecar).map_or(0, |m| m.len());
    drop(ann);
    let input = items();
    let t = Instant::now();
    let (mut loaded, opened) =
        AnnIndex::open(DIM, threads, defaults, &input, dir.path(), "bench", "inc").expect("open");
    let open_s = t.elapsed().as_secs_f64();
    assert_eq!(opened, persist::Opened::Loaded);
    let (_, _, _, got) = timed(&queries, |q| loaded.search(q, 10, &none));
    let loaded_recall = recall(&truth, &got);
    println!(
        "{kind} {n}: save {save_s:.2} s ({:.0} B/vector on disk), open (verify + load) {open_s:.2} s, recall after load {loaded_recall:.4}",
        file_bytes as f64 / n as f64
    );
    // Live upserts, one at a time on one thread, as the store's writer applies them (after the
    // durable redb commit): new items, into the graph and into the exact index.
    let fresh = vectors(kind, 2000, 4242);
    let t = Instant::now();
    for (i, v) in fresh.chunks_exact(DIM).enumerate() {
        loaded.upsert(format!("new-{i}"), v, meta(i));
    }
    let live_ann = 2000.0 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (i, v) in fresh.chunks_exact(DIM).enumerate() {
        flat.upsert(format!("new-{i}"), v, meta(i));
    }
    let live_flat = 2000.0 / t.elapsed().as_secs_f64();
    println!(
        "{kind} {n}: live upserts (one thread, index only): ANN {live_ann:.0}/s, exact {live_flat:.0}/s"
    );
    serde_json::json!({
        "live_upsert_vectors_per_s": {"ann": live_ann, "exact": live_flat},
        "data": kind,
        "vectors": n,
        "queries": nq,
        "params": {"connectivity": defaults.connectivity, "expansion_add": defaults.expansion_add,
                   "expansion_search": defaults.expansion_search, "exact_max_rows": defaults.exact_max_rows},
        "build_seconds": build_s,
        "build_vectors_per_s": n as f64 / build_s,
        "graph_bytes_per_vector": graph_b,
        "other_bytes_per_vector": other_b,
        "rss_growth_bytes_per_vector": rss_growth,
        "exact": {"p50_ms": exact_p50, "p99_ms": exact_p99},
        "ann": {"p50_ms": ann_p50, "p99_ms": ann_p99, "recall_at_10": ann_recall},
        "expansion_search_sweep": sweep,
        "far_queries": far,
        "filtered": filtered,
        "save_seconds": save_s,
        "file_bytes_per_vector": file_bytes as f64 / n as f64,
        "open_loaded_seconds": open_s,
        "recall_at_10_after_load": loaded_recall,
    })
}

fn main() {
    let mut sizes = vec![100_000usize];
    let mut kinds = vec!["uniform".to_string(), "clustered".to_string()];
    let mut nq = 200;
    let mut json_out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .expect("--sizes a,b")
                    .split(',')
                    .map(|s| s.parse().expect("size"))
                    .collect()
            }
            "--data" => {
                kinds = args
                    .next()
                    .expect("--data uniform,clustered")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--queries" => {
                nq = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--queries N")
            }
            "--json" => json_out = args.next(),
            _ => {}
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = Vec::new();
    for &n in &sizes {
        for kind in &kinds {
            runs.push(run(kind, n, nq, threads));
        }
    }
    let report = serde_json::json!({"threads": threads, "dimension": DIM, "runs": runs});
    if let Some(out) = json_out {
        std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json")).expect("write");
    }
}
