//! Collection search and storage speed (a program that measures, not a test):
//!   - exact search (FlatIndex, 512 dimensions, both cores) p50/p99 at 10k, 100k and 1M vectors;
//!   - upsert throughput into the redb store with precomputed vectors (batches of 1000, one durable
//!     commit each), disk per vector, and the start-up time to load them back into an index;
//!   - memory per vector in the index.
//!
//! Usage: cargo bench --bench retrieve -- [--sizes 10000,100000,1000000] [--store N] [--json OUT]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program: a panic is a failed run"
)]

mod common;

use common::{percentile, rss_kib};
use std::{sync::Arc, time::Instant};

use clip_serve::retrieve::{
    index::{FlatIndex, Metadata, VectorIndex},
    store::{CollectionMeta, Store},
};

const DIM: usize = 512;

fn unit_vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let start = out.len();
        for _ in 0..DIM {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push((x % 20_001) as f32 / 10_000.0 - 1.0);
        }
        let norm = out[start..].iter().map(|v| v * v).sum::<f32>().sqrt();
        out[start..].iter_mut().for_each(|v| *v /= norm);
    }
    out
}

fn main() {
    let mut sizes = vec![10_000usize, 100_000, 1_000_000];
    let mut store_n = 1_000_000usize;
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
            "--store" => store_n = args.next().and_then(|v| v.parse().ok()).expect("--store N"),
            "--json" => json_out = args.next(),
            _ => {}
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut report = serde_json::Map::new();
    report.insert("threads".into(), threads.into());
    report.insert("dimension".into(), DIM.into());
    let mut search = Vec::new();
    for &n in &sizes {
        let before = rss_kib();
        let vectors = unit_vectors(n, 7);
        let mut index = FlatIndex::new(DIM, threads);
        let empty = Arc::new(Metadata::new());
        for (i, v) in vectors.chunks_exact(DIM).enumerate() {
            index.upsert(format!("item-{i}"), v, Arc::clone(&empty));
        }
        drop(vectors);
        let grown = rss_kib().saturating_sub(before);
        let queries = unit_vectors(if n >= 1_000_000 { 60 } else { 200 }, 99);
        let mut times = Vec::new();
        for q in queries.chunks_exact(DIM) {
            let t = Instant::now();
            let hits = index.search(q, 10, &Metadata::new());
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(hits.len(), 10);
        }
        times.sort_by(f64::total_cmp);
        let row = serde_json::json!({
            "vectors": n,
            "p50_ms": percentile(&times, 50.0),
            "p99_ms": percentile(&times, 99.0),
            "queries": times.len(),
            "index_bytes_per_vector": index.approx_bytes() as f64 / n as f64,
            "rss_growth_bytes_per_vector": grown as f64 * 1024.0 / n as f64,
        });
        println!("search {n} x {DIM}: {row}");
        search.push(row);
    }
    report.insert("search".into(), search.into());

    if store_n > 0 {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("collections.redb");
        let store = Store::open(&path).expect("store");
        let meta = CollectionMeta::new("bench".into(), DIM, "bench".into());
        store.create(&meta).expect("create");
        let batch = 1000;
        let t = Instant::now();
        let mut written = 0;
        while written < store_n {
            let n = batch.min(store_n - written);
            let vectors = unit_vectors(n, written as u64 + 1);
            let items: Vec<(String, Vec<f32>, Metadata)> = vectors
                .chunks_exact(DIM)
                .enumerate()
                .map(|(i, v)| {
                    let md = Metadata::from([("n".to_string(), (written + i).to_string())]);
                    (format!("item-{}", written + i), v.to_vec(), md)
                })
                .collect();
            store.upsert(&meta, &items).expect("upsert");
            written += n;
        }
        let upsert_s = t.elapsed().as_secs_f64();
        drop(store);
        let disk = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        let store = Store::open(&path).expect("reopen");
        let loaded = store
            .load_all(|c, id, why| panic!("{c} {id:?}: {why}"))
            .expect("load");
        let mut index = FlatIndex::new(DIM, threads);
        for (_, items) in loaded {
            for item in items {
                index.upsert(item.id, &item.vector, Arc::new(item.metadata));
            }
        }
        let startup_s = t.elapsed().as_secs_f64();
        assert_eq!(index.len(), store_n);
        let row = serde_json::json!({
            "vectors": store_n,
            "batch": batch,
            "upsert_seconds": upsert_s,
            "upserts_per_s": store_n as f64 / upsert_s,
            "disk_bytes_per_vector": disk as f64 / store_n as f64,
            "startup_seconds": startup_s,
        });
        println!("store: {row}");
        report.insert("store".into(), row);
    }
    if let Some(out) = json_out {
        std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json")).expect("write");
    }
}
