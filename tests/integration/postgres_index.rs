//! `--store postgres`'s index choices (issue 23): the HNSW build parameters reach the index's DDL,
//! searches set their scan explicitly (a selective filter still gets `k` results from the index,
//! by its iterative scan, not from the exact fallback), and the binary path re-ranks its
//! shortlist by the exact cosine. Skipped without CLIP_SERVE_TEST_POSTGRES_URL.

use crate::postgres::{pg, pseudo, record, test_database};
use clip_serve::{
    postgres::schema::{HnswBuild, IndexKind, items_table},
    retrieve::{
        CollectionOptions, backend::CollectionStore, index::Metadata, postgres::PgStore,
        store::CollectionMeta,
    },
};

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

async fn store_with(url: &str, index: IndexKind, build: HnswBuild) -> PgStore {
    let mut cfg = pg(url);
    cfg.exact_below = 0; // the index from the first item
    let store = PgStore::new(clip_serve::postgres::pool(&cfg).unwrap(), 0).with_index(index, build);
    store.load().await.unwrap();
    store
}

/// `n` items of `dim` dimensions, one in `every` tagged "sel", in one collection `name`.
async fn fill(store: &PgStore, name: &str, n: usize, dim: usize, every: usize) -> Vec<Vec<f32>> {
    store
        .create(CollectionMeta::new(name.into(), dim, "m".into()), 10)
        .await
        .unwrap();
    let meta = store.collection(name).await.unwrap();
    let all: Vec<Vec<f32>> = (0..n).map(|i| unit(pseudo(i as u64 + 7, dim))).collect();
    for (c, chunk) in all.chunks(500).enumerate() {
        let records = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = c * 500 + j;
                let mut r = record(&format!("id{i}"), v.clone());
                let tag = if i % every == 0 { "sel" } else { "other" };
                r.metadata.insert("tag".into(), tag.into());
                r
            })
            .collect();
        store.upsert(&meta, records).await.unwrap();
    }
    all
}

#[tokio::test]
async fn postgres_hnsw_build_parameters_reach_the_index_ddl() {
    let Some(url) = test_database().await else {
        return;
    };
    let build = HnswBuild {
        m: 24,
        ef_construction: 100,
    };
    let client = clip_serve::postgres::pool(&pg(&url))
        .unwrap()
        .get()
        .await
        .unwrap();
    for (kind, opclass) in [
        (IndexKind::Vector, "vector_cosine_ops"),
        (IndexKind::Halfvec, "halfvec_cosine_ops"),
        (IndexKind::Binary, "bit_hamming_ops"),
    ] {
        let store = store_with(&url, kind, build).await;
        let name = kind.as_str();
        store
            .create(CollectionMeta::new(name.into(), 8, "m".into()), 10)
            .await
            .unwrap();
        let meta = store.collection(name).await.unwrap();
        let table = items_table(&meta.id);
        let def: String = client
            .query_one(
                "SELECT indexdef FROM pg_indexes WHERE indexname = $1",
                &[&format!("{table}_hnsw")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(def.contains("USING hnsw"), "{def}");
        assert!(def.contains(opclass), "{def}");
        assert!(def.contains("m='24'"), "{def}");
        assert!(def.contains("ef_construction='100'"), "{def}");
        // Info names the path.
        let info = store.info(name).await.unwrap();
        let path = if kind == IndexKind::Binary {
            "binary"
        } else {
            "hnsw"
        };
        assert_eq!(info.index, path);
    }
    // A rebuild (here: centred binary) keeps them too, and freezes the mean in the expression.
    let store = store_with(&url, IndexKind::Vector, build).await;
    fill(&store, "rebuilt", 200, 8, 10).await;
    store
        .reindex("rebuilt", IndexKind::Binary, true, 64)
        .await
        .unwrap();
    let meta = store.collection("rebuilt").await.unwrap();
    let def: String = client
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1",
            &[&format!("{}_hnsw", items_table(&meta.id))],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        def.contains("binary_quantize((embedding - '[") && def.contains("m='24'"),
        "{def}"
    );
    // A collection's own settings (CreateCollection's hnsw_m / hnsw_ef_construction) win over
    // the server's, at creation and at a rebuild; Info carries them.
    let own = CollectionOptions {
        hnsw_m: Some(8),
        hnsw_ef_construction: Some(40),
        ..CollectionOptions::default()
    };
    store
        .create(
            CollectionMeta::new("own".into(), 8, "m".into()).with_options(own),
            10,
        )
        .await
        .unwrap();
    let def_of = |name: &'static str| {
        let (store, client) = (&store, &client);
        async move {
            let meta = store.collection(name).await.unwrap();
            client
                .query_one(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = $1",
                    &[&format!("{}_hnsw", items_table(&meta.id))],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let def = def_of("own").await;
    assert!(
        def.contains("m='8'") && def.contains("ef_construction='40'"),
        "{def}"
    );
    assert_eq!(store.info("own").await.unwrap().options, own);
    store
        .reindex("own", IndexKind::Halfvec, false, 64)
        .await
        .unwrap();
    let def = def_of("own").await;
    assert!(def.contains("m='8'") && def.contains("halfvec"), "{def}");
    // Settings that only fail beside the server's (ef_construction under 2 x its m of 24).
    let e = store
        .create(
            CollectionMeta::new("bad".into(), 8, "m".into()).with_options(CollectionOptions {
                hnsw_ef_construction: Some(30),
                ..CollectionOptions::default()
            }),
            10,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hnsw_ef_construction") && e.contains("2 x m"),
        "{e}"
    );
}

#[tokio::test]
async fn postgres_a_selective_filter_gets_k_results_from_the_index_by_its_iterative_scan() {
    let Some(url) = test_database().await else {
        return;
    };
    for kind in [IndexKind::Vector, IndexKind::Binary] {
        let store = store_with(&url, kind, HnswBuild::default())
            .await
            .with_ef_search(1)
            .with_oversample(1);
        // 2% match: ef_search 20 alone would see about 0.4 of them.
        let all = fill(&store, "filtered", 2000, 16, 50).await;
        let meta = store.collection("filtered").await.unwrap();
        let filter = Metadata::from([("tag".to_string(), "sel".to_string())]);
        for qi in 0..5 {
            let q = unit(pseudo(90_000 + qi, 16));
            let (hits, path) = store
                .search_with(&meta, q.clone(), 10, filter.clone(), false)
                .await
                .unwrap();
            assert_eq!(hits.len(), 10, "{kind:?}");
            assert!(hits.iter().all(|h| h.metadata["tag"] == "sel"));
            assert_eq!(
                path,
                if kind == IndexKind::Binary {
                    "binary"
                } else {
                    "hnsw"
                },
                "answered by the index, not the exact fallback"
            );
            // Scores are the exact cosines.
            for h in &hits {
                let i: usize = h.id[2..].parse().unwrap();
                let cos: f32 = all[i].iter().zip(&q).map(|(a, b)| a * b).sum();
                assert!((cos - h.score).abs() < 1e-4, "{} {cos}", h.score);
            }
        }
        store.drop_collection("filtered").await.unwrap();
    }
}

#[tokio::test]
async fn postgres_binary_search_reranks_its_shortlist_in_the_exact_order() {
    let Some(url) = test_database().await else {
        return;
    };
    let (n, dim) = (400, 32);
    let store = store_with(&url, IndexKind::Binary, HnswBuild::default())
        .await
        .with_ef_search(40);
    let all = fill(&store, "bits", n, dim, 10).await;
    let meta = store.collection("bits").await.unwrap();
    let table = items_table(&meta.id);
    let mut client = clip_serve::postgres::pool(&pg(&url))
        .unwrap()
        .get()
        .await
        .unwrap();
    let exact_order = |q: &[f32], among: &[usize]| {
        let mut s: Vec<(f32, usize)> = among
            .iter()
            .map(|&i| (all[i].iter().zip(q).map(|(a, b)| a * b).sum(), i))
            .collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0));
        s.into_iter()
            .take(10)
            .map(|(_, i)| format!("id{i}"))
            .collect::<Vec<_>>()
    };
    for qi in 0..5 {
        let q = unit(pseudo(70_000 + qi, dim));
        // A shortlist of 3 x 10 from the Hamming index, read here with the settings the store
        // uses, then ordered by the exact cosine: what the store must answer.
        store.set_oversample(3);
        let shortlist: Vec<usize> = {
            let tx = client.transaction().await.unwrap();
            tx.batch_execute(
                "SET LOCAL hnsw.ef_search = 40; SET LOCAL hnsw.iterative_scan = relaxed_order",
            )
            .await
            .unwrap();
            let rows = tx
                .query(
                    &format!(
                        "SELECT id FROM {table} ORDER BY (binary_quantize(embedding)::bit({dim}))
                         <~> binary_quantize($1::vector)::bit({dim}) LIMIT 30"
                    ),
                    &[&pgvector::Vector::from(q.clone())],
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0)[2..].parse().unwrap())
                .collect()
        };
        assert_eq!(shortlist.len(), 30);
        let (hits, path) = store
            .search_with(&meta, q.clone(), 10, Metadata::new(), false)
            .await
            .unwrap();
        assert_eq!(path, "binary");
        let got: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
        assert_eq!(got, exact_order(&q, &shortlist));
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        // A shortlist of the whole collection is the exact answer, and so is `exact: true`.
        let everything: Vec<usize> = (0..n).collect();
        store.set_oversample(n / 10);
        let (hits, _) = store
            .search_with(&meta, q.clone(), 10, Metadata::new(), false)
            .await
            .unwrap();
        let got: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
        assert_eq!(got, exact_order(&q, &everything));
        store.set_oversample(1);
        let (hits, path) = store
            .search_with(&meta, q.clone(), 10, Metadata::new(), true)
            .await
            .unwrap();
        assert_eq!(path, "exact");
        let got: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
        assert_eq!(got, exact_order(&q, &everything));
    }
}

#[tokio::test]
async fn postgres_recall_check_widens_a_starved_collection_until_it_meets_the_target() {
    let Some(url) = test_database().await else {
        return;
    };
    use clip_serve::retrieve::{
        recall::RecallConfig,
        synth::{self, Kind},
    };
    let (n, dim) = (3000, 512);
    let config = RecallConfig {
        samples: 16,
        // Unpaced: the test calls the check itself.
        duty_permille: 1000,
        ..RecallConfig::default()
    };
    // Starved on purpose: a shortlist of 1 x k.
    let store = store_with(&url, IndexKind::Binary, HnswBuild::default())
        .await
        .with_ef_search(1)
        .with_oversample(1)
        .with_recall(config, None);
    store
        .create(CollectionMeta::new("gap".into(), dim, "m".into()), 10)
        .await
        .unwrap();
    // The same collection with its own, lax, target (CreateCollection's recall_target 0.05).
    let lax = CollectionOptions {
        recall_target_permille: Some(50),
        ..CollectionOptions::default()
    };
    store
        .create(
            CollectionMeta::new("lax".into(), dim, "m".into()).with_options(lax),
            10,
        )
        .await
        .unwrap();
    let meta = store.collection("gap").await.unwrap();
    let lax_meta = store.collection("lax").await.unwrap();
    assert_eq!(lax_meta.options, lax, "kept in clip_collections");
    let subjects = synth::subjects(n);
    let images = synth::vectors(Kind::Images, n, dim, subjects, 5);
    let records: Vec<_> = images
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| record(&format!("id{i}"), v.to_vec()))
        .collect();
    for chunk in records.chunks(1000) {
        store.upsert(&meta, chunk.to_vec()).await.unwrap();
        store.upsert(&lax_meta, chunk.to_vec()).await.unwrap();
    }
    let meta = store.collection("gap").await.unwrap();
    // Clients' searches: one in four is kept, the newest 16; a filtered one is not.
    let texts = synth::vectors(Kind::Texts, 64, dim, subjects, 6);
    for q in texts.chunks_exact(dim) {
        for meta in [&meta, &lax_meta] {
            store
                .search_with(meta, q.to_vec(), 10, Metadata::new(), false)
                .await
                .unwrap();
        }
    }
    let mut measured = Vec::new();
    let mut lax_measured = Vec::new();
    for _ in 0..20 {
        let checked = store.check_recall().await;
        assert_eq!(checked.len(), 2, "{checked:?}");
        let of = |name: &str| checked.iter().find(|c| c.0 == name).unwrap().1;
        measured.push(of("gap"));
        lax_measured.push(of("lax"));
        if of("gap") >= 0.95 {
            break;
        }
    }
    // Under 0.95 but over its own 0.05: never widened.
    assert!(lax_measured[0] < 0.95, "{lax_measured:?}");
    assert_eq!(store.tuning(&lax_meta.id).oversample, 0, "{lax_measured:?}");
    let (first, last) = (measured[0], *measured.last().unwrap());
    assert!(first < 0.95, "starved: {first}");
    assert!(last >= 0.95, "kept: {measured:?}");
    assert!(store.tuning(&meta.id).oversample > 1);
}
