//! The PostgreSQL collection store's speed (a program that measures, not a test), through
//! `PgStore` itself (what a replica does after validation and embedding):
//!   - upsert throughput into a collection with its HNSW index (batches of 1000 512-dimensional
//!     vectors, one synchronous commit each);
//!   - search p50/p99 (top 10) with the HNSW index, unfiltered and with a filter matching 10%, and
//!     with the exact scan, and HNSW's recall@10 against the exact scan.
//!
//! `--bulk` (for 1M vectors, which take about an hour of per-batch HNSW inserts on 2 cores): the
//! HNSW index is dropped, the N vectors are upserted through `PgStore` without it, the index is
//! built again with the schema's own statement (`CREATE INDEX`, pgvector's bulk build), and then
//! `--tail` more vectors are upserted with the index in place, which is the upsert throughput of a
//! collection that size.
//!
//! The vectors are clustered (1000 centres + noise, like embeddings of real photos; uniform random
//! vectors in 512 dimensions have no neighbourhoods to find). Needs a PostgreSQL with pgvector:
//!   scripts/bench_postgres.sh [N]   (starts one with scripts/postgres.sh; N defaults to 100000)
//! or CLIP_SERVE_TEST_POSTGRES_URL=... cargo bench --profile dev --bench postgres -- --n N
//!
//! `--data gap` measures recall@10 and latency per search path on the modality-gap model instead
//! (issue 23; see `postgres/gap.rs`): `--queries Q` (200) of each kind, `--paths
//! mirror,vector,halfvec,binary,binary_centred`, `--ef 40,100,200,400,1000`, `--oversample 10,20,40,80`,
//! `--m 16 --ef-construction 64` (the indexes' build parameters).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program: a panic is a failed run"
)]

#[path = "postgres/gap.rs"]
mod gap;

use std::time::{Duration, Instant};

use clip_serve::{
    postgres::{
        PgConfig, connect_and_migrate, pool,
        schema::{HnswBuild, IndexKind},
    },
    retrieve::{
        backend::{CollectionStore, Record},
        index::Metadata,
        postgres::PgStore,
        store::CollectionMeta,
    },
};
use deadpool_postgres::tokio_postgres::{self, NoTls};

const DIM: usize = 512;
const BATCH: usize = 1000;
const QUERIES: usize = 200;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 20_001) as f32 / 10_000.0 - 1.0
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// A point near centre `c` (noise about a third of the centre's norm).
fn near(centres: &[Vec<f32>], c: usize, rng: &mut Rng) -> Vec<f32> {
    unit(
        centres[c]
            .iter()
            .map(|x| x + 0.35 * rng.next() / (DIM as f32).sqrt() * 1.7)
            .collect(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(100_000), |s| s.parse())?;
    let bulk = args.iter().any(|a| a == "--bulk");
    let tail: usize = args
        .iter()
        .position(|a| a == "--tail")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(10_000), |s| s.parse())?;
    let admin = std::env::var("CLIP_SERVE_TEST_POSTGRES_URL").map_err(|_| {
        anyhow::anyhow!("set CLIP_SERVE_TEST_POSTGRES_URL (scripts/bench_postgres.sh does)")
    })?;
    let (client, connection) = tokio_postgres::connect(&admin, NoTls).await?;
    tokio::spawn(connection);
    let db = format!("clip_bench_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("URL without a database"))?;
    let config = |exact_below| PgConfig {
        url: format!("{base}/{db}"),
        password: None,
        pool_size: 4,
        exact_below,
        connect_timeout: Duration::from_secs(5),
        ca_file: None,
        halfvec: false,
        ef_search: 40,
        index: IndexKind::Vector,
        build: HnswBuild::default(),
        oversample: 20,
        statement_timeout: Duration::from_secs(30),
        lock_timeout: Duration::from_secs(5),
        mirror: clip_serve::postgres::MirrorConfig::default(),
    };
    let shared = pool(&config(0))?;
    connect_and_migrate(&shared).await?;
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |name: &str, default: &str| -> anyhow::Result<Vec<usize>> {
        arg(name)
            .unwrap_or_else(|| default.to_string())
            .split(',')
            .map(|s| Ok(s.parse()?))
            .collect()
    };
    if arg("--data").as_deref() == Some("gap") {
        let build = HnswBuild {
            m: arg("--m").map_or(Ok(16), |s| s.parse())?,
            ef_construction: arg("--ef-construction").map_or(Ok(64), |s| s.parse())?,
        }
        .check()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let store = PgStore::new(shared, 0).with_index(IndexKind::Vector, build);
        store.load().await?;
        store
            .create(CollectionMeta::new("bench".into(), DIM, "m".into()), 10)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (bench_db, connection) =
            tokio_postgres::connect(&format!("{base}/{db}"), NoTls).await?;
        tokio::spawn(connection);
        let gap_args = gap::Args {
            n,
            queries: arg("--queries").map_or(Ok(QUERIES), |s| s.parse())?,
            paths: arg("--paths")
                .unwrap_or_else(|| "mirror,vector,halfvec,binary,binary_centred".into())
                .split(',')
                .map(String::from)
                .collect(),
            ef: list("--ef", "40,100,200,400,1000")?,
            oversample: list("--oversample", "10,20,40,80")?,
        };
        let mut report = gap::run(&store, &bench_db, &gap_args).await?;
        report.insert("m".into(), build.m.into());
        report.insert("ef_construction".into(), build.ef_construction.into());
        println!("{}", serde_json::to_string_pretty(&report)?);
        drop(store);
        drop(bench_db);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await?;
        return Ok(());
    }
    // `hnsw` searches with ef_search = max(2k, 64), what the store did before --postgres-ef-search;
    // the sweep below shows what larger floors buy.
    let hnsw = PgStore::new(shared.clone(), 0).with_ef_search(64);
    let sweep: Vec<(String, PgStore)> = [100, 200, 400]
        .into_iter()
        .map(|ef| {
            (
                format!("hnsw_ef{ef}"),
                PgStore::new(shared.clone(), 0).with_ef_search(ef),
            )
        })
        .collect();
    let exact = PgStore::new(shared, usize::MAX);
    hnsw.create(CollectionMeta::new("bench".into(), DIM, "m".into()), 10)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let meta = hnsw
        .collection("bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let table = clip_serve::postgres::schema::items_table(&meta.id);
    let (bench_db, connection) = tokio_postgres::connect(&format!("{base}/{db}"), NoTls).await?;
    tokio::spawn(connection);
    let mut report = serde_json::Map::new();
    if bulk {
        bench_db
            .batch_execute(&format!("DROP INDEX {table}_hnsw"))
            .await?;
    }

    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let centres: Vec<Vec<f32>> = (0..1000)
        .map(|_| unit((0..DIM).map(|_| rng.next()).collect()))
        .collect();
    let mut started = Instant::now();
    let mut batches = Vec::new();
    let mut upserted = 0;
    for b in 0..(n + if bulk { tail } else { 0 }).div_ceil(BATCH) {
        if bulk && b * BATCH == n {
            let load_s = started.elapsed().as_secs_f64();
            report.insert(
                "bulk_upsert_without_hnsw_vectors_per_s".into(),
                ((n as f64 / load_s).round()).into(),
            );
            let t = Instant::now();
            bench_db
                .batch_execute(&format!(
                    "SET maintenance_work_mem = '6GB'; SET max_parallel_maintenance_workers = 1;
                     CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops);"
                ))
                .await?;
            report.insert(
                "hnsw_build_s".into(),
                t.elapsed().as_secs_f64().round().into(),
            );
            started = Instant::now();
            batches.clear();
            upserted = 0;
        }
        let records: Vec<Record> = (b * BATCH
            ..((b + 1) * BATCH).min(n + if bulk { tail } else { 0 }))
            .map(|i| {
                let v = near(&centres, i % centres.len(), &mut rng);
                let tag = if i % 10 == 0 { "a" } else { "b" };
                Record {
                    id: format!("item-{i}"),
                    stored: v.clone(),
                    unit: v,
                    metadata: Metadata::from([("tag".to_string(), tag.to_string())]),
                }
            })
            .collect();
        upserted += records.len();
        let t = Instant::now();
        hnsw.upsert(&meta, records)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        batches.push(t.elapsed());
    }
    let upsert_s = started.elapsed().as_secs_f64();
    let n = n + if bulk { tail } else { 0 };
    let meta = hnsw
        .collection("bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (_, store) in &sweep {
        store
            .collection("bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    exact
        .collection("bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|q| near(&centres, (q * 7) % centres.len(), &mut rng))
        .collect();
    let filter = Metadata::from([("tag".to_string(), "a".to_string())]);
    report.insert("vectors".into(), n.into());
    report.insert("dimension".into(), DIM.into());
    report.insert(
        "upsert_vectors_per_s".into(),
        ((upserted as f64 / upsert_s).round()).into(),
    );
    batches.sort();
    report.insert(
        "upsert_batch_p50_ms".into(),
        percentile(&batches, 0.5).into(),
    );
    report.insert(
        "upsert_batch_p99_ms".into(),
        percentile(&batches, 0.99).into(),
    );
    let mut truth = Vec::new();
    let mut runs = vec![
        ("exact", &exact, false),
        ("hnsw", &hnsw, false),
        ("hnsw_filter_10pct", &hnsw, true),
    ];
    runs.extend(
        sweep
            .iter()
            .map(|(name, store)| (name.as_str(), store, false)),
    );
    for (name, store, filtered) in runs {
        let mut times = Vec::new();
        let mut found = 0usize;
        for (qi, q) in queries.iter().enumerate() {
            let f = if filtered {
                filter.clone()
            } else {
                Metadata::new()
            };
            let t = Instant::now();
            let hits = store
                .search(&meta, q.clone(), 10, f)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(t.elapsed());
            let ids: Vec<String> = hits.into_iter().map(|h| h.id).collect();
            if name == "exact" {
                truth.push(ids);
            } else if !filtered {
                found += ids.iter().filter(|id| truth[qi].contains(id)).count();
            } else {
                assert_eq!(ids.len(), 10, "a 10% filter returned fewer than 10");
            }
        }
        times.sort();
        report.insert(
            format!("search_{name}_p50_ms"),
            percentile(&times, 0.5).into(),
        );
        report.insert(
            format!("search_{name}_p99_ms"),
            percentile(&times, 0.99).into(),
        );
        if name.starts_with("hnsw") && !filtered {
            report.insert(
                format!("{name}_recall_at_10"),
                (found as f64 / (QUERIES as f64 * 10.0)).into(),
            );
        }
    }
    let bytes: i64 = client
        .query_one("SELECT pg_database_size($1)", &[&db])
        .await?
        .get(0);
    report.insert(
        "database_bytes_per_vector".into(),
        (bytes / n as i64).into(),
    );
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(hnsw);
    drop(sweep);
    drop(exact);
    drop(bench_db);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    Ok(())
}
