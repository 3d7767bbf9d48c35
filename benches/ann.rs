//! Approximate search (AnnIndex, HNSW over f16 + exact f32 rescoring) against exact search
//! (FlatIndex), 512 dimensions, both cores (a program that measures, not a test). For each size
//! and data kind:
//!   - build time and rate of the ANN index, memory per vector (RSS growth and usearch's count);
//!   - top-10 search p50/p99 over the queries, exact and ANN, and ANN recall@10 (a sweep of
//!     expansion_search, then the defaults);
//!   - filtered search at 1%, 5% and 10% selectivity: the planner's choice, and each path forced;
//!   - save time and size, and the start-up path (open: verify the saved graph, load it).
//!
//! Data (`clip_serve::retrieve::synth`): `uniform` vectors are random on the sphere (the hardest
//! case for a graph: no structure); `clustered` are 1000 random centres plus gaussian noise, with
//! "far" queries at cosine ~0.3 to their centre; `gap` is the modality-gap model of CLIP: images
//! in one cone (photos of a subject ~0.8 to each other), queried by images drawn the same way and by
//! captions from the text cone (~0.3 to their own subject's photos).
//!
//! Paths: the exact scan; the binary scan (sign codes, Hamming, `oversample * k` rescored in f32)
//! at several oversampling factors; an int8 scan (codes computed here, for comparison only:
//! 512 B per vector); the HNSW graph at several ef (skipped with `--no-graph`: a 1M build takes
//! minutes on 2 cores); the graph's candidates merged with the binary shortlist.
//!
//! Usage: cargo bench --bench ann -- [--sizes 100000,1000000] [--data uniform,clustered,gap]
//!        [--queries 200] [--no-graph] [--json OUT]
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
    synth,
};

const DIM: usize = 512;

/// `n` unit vectors of `kind` for a collection of `size` items (the modality gap's subjects).
fn vectors(kind: &str, n: usize, size: usize, seed: u64) -> Vec<f32> {
    let k = synth::Kind::parse(kind)
        .unwrap_or_else(|| panic!("--data uniform|clustered|gap, not {kind}"));
    synth::vectors(k, n, DIM, synth::subjects(size), seed)
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

/// int8 codes (x * 127, rounded) of unit vectors, row-major.
fn int8(v: &[f32]) -> Vec<i8> {
    v.iter().map(|x| (x * 127.0).round() as i8).collect()
}

/// The int8 scan: top `r` by int8 dot product, rescored in f32 by the index (its exact vectors).
fn int8_search(codes: &[i8], flat: &FlatIndex, q: &[f32], k: usize, r: usize) -> Vec<Scored> {
    let qc = int8(q);
    let mut scored: Vec<(i32, usize)> = codes
        .chunks_exact(DIM)
        .enumerate()
        .map(|(i, c)| {
            let mut acc = [0i32; 16];
            for (cc, qq) in c.chunks_exact(16).zip(qc.chunks_exact(16)) {
                for j in 0..16 {
                    acc[j] += i32::from(cc[j]) * i32::from(qq[j]);
                }
            }
            (-acc.iter().sum::<i32>(), i)
        })
        .collect();
    let r = r.min(scored.len());
    scored.select_nth_unstable(r.saturating_sub(1));
    let vectors: Vec<&[f32]> = flat.items().map(|(_, v, _)| v).collect();
    let mut best: Vec<(f32, usize)> = scored[..r]
        .iter()
        .map(|&(_, i)| (clip_serve::retrieve::index::dot(vectors[i], q), i))
        .collect();
    best.sort_by(|a, b| b.0.total_cmp(&a.0));
    best.truncate(k);
    best.into_iter()
        .map(|(score, i)| Scored {
            id: format!("item-{i}"),
            score,
            metadata: Arc::new(Metadata::new()),
        })
        .collect()
}

/// Merges two top-k lists by score (the graph's and the binary scan's candidates, both rescored).
fn merged(a: Vec<Scored>, b: Vec<Scored>, k: usize) -> Vec<Scored> {
    let mut all = a;
    for s in b {
        if !all.iter().any(|x| x.id == s.id) {
            all.push(s);
        }
    }
    all.sort_by(|x, y| y.score.total_cmp(&x.score));
    all.truncate(k);
    all
}

fn row(p50: f64, p99: f64, r: f64) -> serde_json::Value {
    serde_json::json!({"p50_ms": p50, "p99_ms": p99, "recall_at_10": r})
}

fn run(kind: &str, n: usize, nq: usize, threads: usize, graph: bool) -> serde_json::Value {
    let data = vectors(kind, n, n, 7);
    // Query sets: like the data, and (clustered: far; gap: captions) from elsewhere.
    let mut query_sets = vec![("near", vectors(kind, nq, n, 99))];
    match kind {
        "clustered" => query_sets.push(("far", vectors("far", nq, n, 123))),
        "gap" => query_sets.push(("text", vectors("texts", nq, n, 123))),
        _ => {}
    }
    let none = Metadata::new();

    let mut flat = FlatIndex::new(DIM, threads);
    for (i, v) in data.chunks_exact(DIM).enumerate() {
        flat.upsert(format!("item-{i}"), v, meta(i));
    }
    let mut truths = Vec::new();
    let mut exact_rows = serde_json::Map::new();
    for (name, q) in &query_sets {
        let (p50, p99, _, truth) = timed(q, |q| flat.search(q, 10, &none));
        println!("{kind} {n} {name}: exact p50 {p50:.2} ms p99 {p99:.2} ms");
        exact_rows.insert(name.to_string(), row(p50, p99, 1.0));
        truths.push(truth);
    }

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
    drop(input);
    let rss_growth = rss_kib().saturating_sub(before) as f64 * 1024.0 / n as f64;
    let other_b = ann.approx_bytes() as f64 / n as f64;
    let code_b = ann.code_bytes() as f64 / n as f64;
    println!(
        "{kind} {n}: index without graph built in {build_s:.2} s; {other_b:.0} B/vector ({code_b:.0} of binary code), RSS growth {rss_growth:.0} B/vector"
    );

    // The binary scan (the default path) at several oversampling factors, per query set.
    let mut binary = Vec::new();
    for over in [5, 10, 20, 40, 80] {
        ann.set_oversample(over);
        for ((name, q), truth) in query_sets.iter().zip(&truths) {
            let (p50, p99, _, got) = timed(q, |q| ann.search(q, 10, &none));
            let r = recall(truth, &got);
            println!(
                "{kind} {n} {name}: binary x{over}: p50 {p50:.3} ms p99 {p99:.3} ms recall@10 {r:.4}"
            );
            let mut v = row(p50, p99, r);
            v["oversample"] = over.into();
            v["queries"] = (*name).into();
            binary.push(v);
        }
    }
    let defaults = AnnParams::default();
    ann.set_oversample(defaults.oversample);

    // int8 codes, scanned here (no index keeps them: 512 B per vector).
    let codes8 = int8(&data);
    let mut int8_rows = Vec::new();
    // One thread, unvectorized beyond the build's baseline: ~0.3 s a query at 1M, so 100k at most.
    let int8_sizes: &[usize] = if n <= 200_000 { &[2, 10] } else { &[] };
    for &over in int8_sizes {
        for ((name, q), truth) in query_sets.iter().zip(&truths) {
            let (p50, p99, _, got) = timed(q, |q| int8_search(&codes8, &flat, q, 10, 10 * over));
            let r = recall(truth, &got);
            println!(
                "{kind} {n} {name}: int8 x{over} (one thread, this program's scan): p50 {p50:.3} ms p99 {p99:.3} ms recall@10 {r:.4}"
            );
            let mut v = row(p50, p99, r);
            v["oversample"] = over.into();
            v["queries"] = (*name).into();
            int8_rows.push(v);
        }
    }
    drop(codes8);

    let (mut graph_rows, mut graph_build_s, mut graph_b) = (Vec::new(), 0.0, 0.0);
    if graph {
        let t = Instant::now();
        ann.set_graph(true).expect("graph");
        graph_build_s = t.elapsed().as_secs_f64();
        graph_b = ann.graph_bytes() as f64 / n as f64;
        println!(
            "{kind} {n}: graph build {graph_build_s:.1} s ({:.0}/s), {graph_b:.0} B/vector",
            n as f64 / graph_build_s
        );
        for ef in [64, 128, 256, 512] {
            ann.set_expansion_search(ef);
            for ((name, q), truth) in query_sets.iter().zip(&truths) {
                let (p50, p99, _, got) = timed(q, |q| ann.search(q, 10, &none));
                let r = recall(truth, &got);
                println!(
                    "{kind} {n} {name}: graph ef {ef}: p50 {p50:.3} ms p99 {p99:.3} ms recall@10 {r:.4}"
                );
                let mut v = row(p50, p99, r);
                v["expansion_search"] = ef.into();
                v["queries"] = (*name).into();
                graph_rows.push(v);
            }
        }
        ann.set_expansion_search(defaults.expansion_search);
        // Graph + binary: both candidate lists, rescored, merged.
        for ((name, q), truth) in query_sets.iter().zip(&truths) {
            let (p50, p99, _, got) = timed(q, |q| {
                let g = ann.search(q, 10, &none);
                ann.set_graph(false).expect("off");
                let b = ann.search(q, 10, &none);
                ann.set_graph(true).expect("on");
                merged(g, b, 10)
            });
            let r = recall(truth, &got);
            println!(
                "{kind} {n} {name}: graph ef 256 + binary x{}: p50 {p50:.3} ms p99 {p99:.3} ms recall@10 {r:.4}",
                defaults.oversample
            );
            let mut v = row(p50, p99, r);
            v["queries"] = (*name).into();
            v["path"] = "graph+binary".into();
            graph_rows.push(v);
        }
    }

    let queries = &query_sets[0].1;
    let mut filtered = Vec::new();
    for (key, groups) in [("p1", 100), ("p5", 20), ("p10", 10)] {
        let pct = 100 / groups;
        let filters: Vec<Metadata> = (0..nq)
            .map(|i| Metadata::from([(key.to_string(), (i % groups).to_string())]))
            .collect();
        let mut fi = 0;
        let (fp50, _, _, ftruth) = timed(queries, |q| {
            fi += 1;
            flat.search(q, 10, &filters[fi - 1])
        });
        let mut row = serde_json::json!({"selectivity_pct": pct, "matching_rows": n * pct / 100, "exact_flat_p50_ms": fp50});
        let mut cases = vec![
            ("planner", defaults.exact_max_rows, false),
            ("forced_binary", 0, false),
            ("forced_exact", usize::MAX, false),
        ];
        if graph {
            cases.push(("forced_graph", 0, true));
        }
        for (label, bound, on) in cases {
            ann.set_exact_max_rows(bound);
            ann.set_graph(on).expect("graph");
            let plan = ann.search_planned(&queries[..DIM], 10, &filters[0]).1;
            let mut fi = 0;
            let (p50, p99, mean, got) = timed(queries, |q| {
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
        ann.set_graph(false).expect("graph off");
        filtered.push(row);
    }

    // Start-up without a graph: the codes are rebuilt from the vectors (no file, no graph build).
    let mut startup = serde_json::json!({"rebuild_seconds": build_s});
    if graph {
        ann.set_graph(true).expect("graph");
        let dir = tempfile::tempdir().expect("temp dir");
        let t = Instant::now();
        ann.save(dir.path(), "bench", "inc").expect("save");
        let save_s = t.elapsed().as_secs_f64();
        drop(ann);
        let input = items();
        let t = Instant::now();
        let params = AnnParams {
            graph: true,
            ..defaults
        };
        let (_, opened) =
            AnnIndex::open(DIM, threads, params, &input, dir.path(), "bench", "inc").expect("open");
        let open_s = t.elapsed().as_secs_f64();
        assert_eq!(opened, persist::Opened::Loaded);
        println!("{kind} {n}: graph save {save_s:.2} s, open (verify + load) {open_s:.2} s");
        startup["graph_save_seconds"] = save_s.into();
        startup["graph_open_seconds"] = open_s.into();
    }
    serde_json::json!({
        "data": kind,
        "vectors": n,
        "queries": nq,
        "params": {"connectivity": defaults.connectivity, "expansion_add": defaults.expansion_add,
                   "expansion_search": defaults.expansion_search, "exact_max_rows": defaults.exact_max_rows,
                   "oversample": defaults.oversample},
        "index_build_seconds": build_s,
        "other_bytes_per_vector": other_b,
        "code_bytes_per_vector": code_b,
        "rss_growth_bytes_per_vector": rss_growth,
        "graph_build_seconds": graph_build_s,
        "graph_bytes_per_vector": graph_b,
        "exact": exact_rows,
        "binary": binary,
        "int8": int8_rows,
        "graph": graph_rows,
        "filtered": filtered,
        "startup": startup,
    })
}

fn main() {
    let mut sizes = vec![100_000usize];
    let mut kinds = vec![
        "uniform".to_string(),
        "clustered".to_string(),
        "gap".to_string(),
    ];
    let mut graph = true;
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
            "--no-graph" => graph = false,
            _ => {}
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = Vec::new();
    for &n in &sizes {
        for kind in &kinds {
            runs.push(run(kind, n, nq, threads, graph));
        }
    }
    let report = serde_json::json!({"threads": threads, "dimension": DIM, "runs": runs});
    if let Some(out) = json_out {
        std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json")).expect("write");
    }
}
