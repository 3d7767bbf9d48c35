//! `--data gap`: recall@10 and latency per search path of the PostgreSQL store on the
//! modality-gap model (`clip_serve::retrieve::synth`, issue 23): image queries drawn like the
//! images, text queries from the text cone. The N images go in without an index; then each path's
//! index is built in turn (`PgStore::reindex`) and measured at a few settings:
//!   - `vector`: HNSW over the f32 vectors, `hnsw.ef_search` swept (iterative scan strict);
//!   - `halfvec`: HNSW over half-precision copies, ef_search swept;
//!   - `binary`, `binary_centred`: HNSW over the sign bits (raw, or around the collection's mean
//!     frozen in the index expression), shortlist of 10 x oversample re-ranked by exact cosine;
//!   - `mirror`: no index; this process's in-memory mirror of the codes (`--postgres-mirror-*`),
//!     shortlist of 10 x oversample rescored by PostgreSQL (its build time and memory reported).
//!
//! The truth is computed here (exact cosine over the generated vectors), not by the database.

use std::time::Instant;

use clip_serve::{
    postgres::schema::{self, IndexKind},
    retrieve::{
        backend::{CollectionStore, Record},
        index::Metadata,
        postgres::PgStore,
        store::CollectionMeta,
        synth::{self, Kind},
    },
};
use deadpool_postgres::tokio_postgres::Client;

use super::percentile;

const DIM: usize = 512;
const K: usize = 10;

pub struct Args {
    pub n: usize,
    pub queries: usize,
    pub paths: Vec<String>,
    pub ef: Vec<usize>,
    pub oversample: Vec<usize>,
}

fn truth(items: &[f32], queries: &[f32]) -> Vec<Vec<usize>> {
    queries
        .chunks_exact(DIM)
        .map(|q| {
            let mut scored: Vec<(f32, usize)> = items
                .chunks_exact(DIM)
                .enumerate()
                .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i))
                .collect();
            scored.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(K);
            scored.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

/// recall@10, p50 and p99 (ms) of `store`'s searches, and the paths it answered by.
async fn measure(
    store: &PgStore,
    meta: &CollectionMeta,
    queries: &[f32],
    truth: &[Vec<usize>],
) -> anyhow::Result<(f64, f64, f64, String)> {
    let mut times = Vec::new();
    let mut found = 0usize;
    let mut paths = std::collections::BTreeSet::new();
    for (q, want) in queries.chunks_exact(DIM).zip(truth) {
        let t = Instant::now();
        let (hits, path) = store
            .search_with(meta, q.to_vec(), K, Metadata::new(), false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(t.elapsed());
        paths.insert(path);
        found += hits
            .iter()
            .filter(|h| h.id[5..].parse::<usize>().is_ok_and(|i| want.contains(&i)))
            .count();
    }
    times.sort();
    let recall = found as f64 / (truth.len() * K) as f64;
    let paths: Vec<&str> = paths.into_iter().collect();
    Ok((
        recall,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        paths.join("+"),
    ))
}

/// Runs the gap benchmark in the (empty) collection "bench" of `store`; `db` is a direct
/// connection to the same database. Returns the report.
pub async fn run(
    store: &PgStore,
    db: &Client,
    args: &Args,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut report = serde_json::Map::new();
    let subjects = synth::subjects(args.n);
    let items = synth::vectors(Kind::Images, args.n, DIM, subjects, 1);
    let image_q = synth::vectors(Kind::Images, args.queries, DIM, subjects, 1_000_003);
    let text_q = synth::vectors(Kind::Texts, args.queries, DIM, subjects, 1_000_033);
    let t = Instant::now();
    let image_truth = truth(&items, &image_q);
    let text_truth = truth(&items, &text_q);
    eprintln!("truth: {:.1} s", t.elapsed().as_secs_f64());

    let meta = store
        .collection("bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let table = schema::items_table(&meta.id);
    db.batch_execute(&format!("DROP INDEX IF EXISTS {table}_hnsw"))
        .await?;
    let t = Instant::now();
    for (b, chunk) in items.chunks(1000 * DIM).enumerate() {
        let records: Vec<Record> = chunk
            .chunks_exact(DIM)
            .enumerate()
            .map(|(j, v)| {
                let i = b * 1000 + j;
                Record {
                    id: format!("item-{i}"),
                    stored: v.to_vec(),
                    unit: v.to_vec(),
                    metadata: Metadata::from([(
                        "tag".to_string(),
                        if i % 10 == 0 { "a" } else { "b" }.to_string(),
                    )]),
                }
            })
            .collect();
        store
            .upsert(&meta, records)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report.insert("vectors".into(), args.n.into());
    report.insert(
        "load_without_index_s".into(),
        t.elapsed().as_secs_f64().round().into(),
    );
    db.batch_execute(&format!("VACUUM ANALYZE {table}")).await?;
    let meta = store
        .collection("bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // The exact scan, a few queries (each reads the whole table).
    let few = image_q.len().min(10 * DIM);
    let mut times = Vec::new();
    for q in image_q[..few].chunks_exact(DIM) {
        let t = Instant::now();
        store
            .search_with(&meta, q.to_vec(), K, Metadata::new(), true)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(t.elapsed());
    }
    times.sort();
    report.insert("exact_p50_ms".into(), percentile(&times, 0.5).into());

    for path in &args.paths {
        if path == "mirror" {
            mirror(
                store,
                &meta,
                args,
                &mut report,
                [(&image_q, &image_truth), (&text_q, &text_truth)],
            )
            .await?;
            continue;
        }
        let (kind, centred) = match path.as_str() {
            "vector" => (IndexKind::Vector, false),
            "halfvec" => (IndexKind::Halfvec, false),
            "binary" => (IndexKind::Binary, false),
            "binary_centred" => (IndexKind::Binary, true),
            other => anyhow::bail!("unknown path {other}"),
        };
        let t = Instant::now();
        store
            .reindex("bench", kind, centred, (args.n * 4096 / (1 << 20)).max(256))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let build_s = t.elapsed().as_secs_f64();
        let size: i64 = db
            .query_one(&format!("SELECT pg_relation_size('{table}_hnsw')"), &[])
            .await?
            .get(0);
        eprintln!("{path}: index built in {build_s:.0} s, {size} bytes");
        report.insert(format!("{path}_build_s"), build_s.round().into());
        report.insert(
            format!("{path}_index_bytes_per_vector"),
            (size / args.n as i64).into(),
        );
        let meta = store
            .collection("bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let settings: Vec<(String, usize)> = if kind == IndexKind::Binary {
            store.set_ef_search(40);
            args.oversample
                .iter()
                .map(|&o| (format!("x{o}"), o))
                .collect()
        } else {
            args.ef.iter().map(|&e| (format!("ef{e}"), e)).collect()
        };
        for (label, value) in settings {
            if kind == IndexKind::Binary {
                store.set_oversample(value);
            } else {
                store.set_ef_search(value);
            }
            for (qkind, queries, truth) in [
                ("image", &image_q, &image_truth),
                ("text", &text_q, &text_truth),
            ] {
                let (recall, p50, p99, used) = measure(store, &meta, queries, truth).await?;
                eprintln!(
                    "{path} {label} {qkind}: recall@10 {recall:.4}, p50 {p50:.1} ms, p99 {p99:.1} ms ({used})"
                );
                let key = format!("{path}_{label}_{qkind}");
                report.insert(
                    key,
                    serde_json::json!({"recall_at_10": recall, "p50_ms": p50, "p99_ms": p99, "path": used}),
                );
            }
        }
        // A filter matching 10%: never fewer than k.
        store.set_ef_search(200);
        store.set_oversample(20);
        let filter = Metadata::from([("tag".to_string(), "a".to_string())]);
        let mut times = Vec::new();
        let mut used = std::collections::BTreeSet::new();
        for q in text_q.chunks_exact(DIM).take(50) {
            let t = Instant::now();
            let (hits, p) = store
                .search_with(&meta, q.to_vec(), K, filter.clone(), false)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(t.elapsed());
            used.insert(p);
            anyhow::ensure!(hits.len() == K, "a 10% filter returned {}", hits.len());
        }
        times.sort();
        report.insert(
            format!("{path}_filter_10pct_text"),
            serde_json::json!({"p50_ms": percentile(&times, 0.5), "paths": used.into_iter().collect::<Vec<_>>()}),
        );
    }
    Ok(report)
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The `mirror` path: builds this process's mirror (time, memory), then recall and latency per
/// oversampling.
async fn mirror(
    store: &PgStore,
    meta: &CollectionMeta,
    args: &Args,
    report: &mut serde_json::Map<String, serde_json::Value>,
    sets: [(&Vec<f32>, &Vec<Vec<usize>>); 2],
) -> anyhow::Result<()> {
    let before = rss();
    let t = Instant::now();
    store.sync_mirrors().await;
    let build_s = t.elapsed().as_secs_f64();
    let grown = rss().saturating_sub(before);
    anyhow::ensure!(
        store.mirrored_items() == args.n,
        "mirrored {} of {}",
        store.mirrored_items(),
        args.n
    );
    let held = store.mirrored_bytes() / args.n;
    eprintln!(
        "mirror: built in {build_s:.1} s, holds {held} bytes per vector (RSS +{} bytes per vector)",
        grown / args.n as u64
    );
    report.insert("mirror_bytes_per_vector".into(), held.into());
    report.insert(
        "mirror_build_s".into(),
        ((build_s * 10.0).round() / 10.0).into(),
    );
    report.insert(
        "mirror_rss_bytes_per_vector".into(),
        (grown / args.n as u64).into(),
    );
    for &o in &args.oversample {
        store.set_oversample(o);
        for (qkind, (queries, truth)) in ["image", "text"].into_iter().zip(sets) {
            let (recall, p50, p99, used) = measure(store, meta, queries, truth).await?;
            eprintln!(
                "mirror x{o} {qkind}: recall@10 {recall:.4}, p50 {p50:.1} ms, p99 {p99:.1} ms ({used})"
            );
            report.insert(
                format!("mirror_x{o}_{qkind}"),
                serde_json::json!({"recall_at_10": recall, "p50_ms": p50, "p99_ms": p99, "path": used}),
            );
        }
    }
    Ok(())
}
