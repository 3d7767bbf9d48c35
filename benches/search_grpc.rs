//! Search through gRPC against a running server (a program that measures, not a test): the
//! issue-23 acceptance run. `scripts/bench_search_grpc.sh` starts the server, calls `load`,
//! restarts it (start-up time, memory) and calls `query`.
//!
//! * `load`: creates the collection (512 dimensions, model `synthetic:gap`, so only vectors are
//!   accepted) and upserts `--n` image vectors of the modality-gap model
//!   (`clip_serve::retrieve::synth`, the data `benches/ann.rs --data gap` uses) 1000 per call.
//! * `query`: one client, `--queries` image queries and as many text queries (captions from the
//!   text cone), each searched top-10 as the server plans it (timed) and with `exact: true` (the
//!   truth, not timed); prints the collection's index, and p50/p99 and recall@10 per kind.
//!
//! Usage: cargo bench --bench search_grpc -- load|query --addr http://127.0.0.1:50051
//!        --collection gap --n 1000000 [--queries 200] [--json OUT]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::print_stdout
)]

#[allow(dead_code)] // rss_kib: the script reads the server's RSS, not this process's
mod common;

use clip_serve::grpc::pb::{self, retrieve_client::RetrieveClient};
use clip_serve::retrieve::synth::{self, Kind};
use common::percentile;
use std::time::Instant;

const DIM: usize = 512;

struct Args {
    mode: String,
    addr: String,
    collection: String,
    n: usize,
    queries: usize,
    json: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        addr: "http://127.0.0.1:50051".into(),
        collection: "gap".into(),
        n: 1_000_000,
        queries: 200,
        json: None,
    };
    let mut it = std::env::args().skip(1).filter(|s| s != "--bench");
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--addr" => a.addr = value(),
            "--collection" => a.collection = value(),
            "--n" => a.n = value().parse().expect("--n: a count"),
            "--queries" => a.queries = value().parse().expect("--queries: a count"),
            "--json" => a.json = Some(value()),
            m if !m.starts_with('-') && a.mode.is_empty() => a.mode = m.to_string(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn vector(v: &[f32]) -> pb::Vector {
    pb::Vector { values: v.to_vec() }
}

async fn load(c: &mut RetrieveClient<tonic::transport::Channel>, a: &Args) {
    c.create_collection(pb::CreateCollectionRequest {
        name: a.collection.clone(),
        dimension: DIM as u32,
        model: "synthetic:gap".into(),
        ..Default::default()
    })
    .await
    .expect("create the collection");
    let subjects = synth::subjects(a.n);
    let t = Instant::now();
    let step = 100_000;
    for start in (0..a.n).step_by(step) {
        let count = step.min(a.n - start);
        // Seeded per block so a run is reproducible without holding 2 GB at once.
        let data = synth::vectors(Kind::Images, count, DIM, subjects, 7 + start as u64);
        for (chunk_i, chunk) in data.chunks(1000 * DIM).enumerate() {
            let items = chunk
                .chunks_exact(DIM)
                .enumerate()
                .map(|(i, v)| pb::Item {
                    id: format!("i{}", start + chunk_i * 1000 + i),
                    content: Some(pb::item::Content::Vector(vector(v))),
                    metadata: Default::default(),
                })
                .collect();
            c.upsert(pb::UpsertRequest {
                collection: a.collection.clone(),
                items,
                model: String::new(),
            })
            .await
            .expect("upsert");
        }
        println!(
            "loaded {} vectors, {:.0} vectors/s",
            start + count,
            (start + count) as f64 / t.elapsed().as_secs_f64()
        );
    }
}

async fn search(
    c: &mut RetrieveClient<tonic::transport::Channel>,
    collection: &str,
    q: &[f32],
    exact: bool,
) -> Vec<String> {
    c.search(pb::SearchRequest {
        collection: collection.into(),
        query: Some(pb::Query {
            query: Some(pb::query::Query::Vector(vector(q))),
        }),
        top_k: 10,
        exact,
        ..Default::default()
    })
    .await
    .expect("search")
    .into_inner()
    .hits
    .into_iter()
    .map(|h| h.id)
    .collect()
}

async fn query(c: &mut RetrieveClient<tonic::transport::Channel>, a: &Args) {
    let info = c
        .get_collection(pb::GetCollectionRequest {
            name: a.collection.clone(),
        })
        .await
        .expect("the collection")
        .into_inner();
    println!(
        "collection {}: {} vectors, index {} (ready {})",
        info.name, info.count, info.index, info.ready
    );
    let subjects = synth::subjects(a.n);
    let mut report = serde_json::json!({
        "collection_count": info.count, "index": info.index, "ready": info.ready,
        "queries_per_kind": a.queries,
    });
    for (name, kind, seed) in [("image", Kind::Images, 99), ("text", Kind::Texts, 123)] {
        let queries = synth::vectors(kind, a.queries, DIM, subjects, seed);
        // Warm-up: a few searches so the first timed one does not pay for connection set-up.
        for q in queries.chunks_exact(DIM).take(5) {
            search(c, &a.collection, q, false).await;
        }
        // Every timed search first, then the truths: on PostgreSQL an exact search reads the
        // whole table, and between timed searches it would leave them a cold cache.
        let (mut times, mut got) = (Vec::new(), Vec::new());
        for q in queries.chunks_exact(DIM) {
            let t = Instant::now();
            got.push(search(c, &a.collection, q, false).await);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut found = 0usize;
        for (q, got) in queries.chunks_exact(DIM).zip(&got) {
            let truth = search(c, &a.collection, q, true).await;
            found += got.iter().filter(|id| truth.contains(id)).count();
        }
        times.sort_by(f64::total_cmp);
        let recall = found as f64 / (10 * a.queries) as f64;
        let (p50, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
        println!("{name} queries: recall@10 {recall:.4}, p50 {p50:.2} ms, p99 {p99:.2} ms");
        report[name] = serde_json::json!({"recall_at_10": recall, "p50_ms": p50, "p99_ms": p99});
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap()).expect("write the json");
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut c = RetrieveClient::connect(a.addr.clone())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    match a.mode.as_str() {
        "load" => load(&mut c, &a).await,
        "query" => query(&mut c, &a).await,
        m => panic!("mode: load or query, not {m:?}"),
    }
}
