//! `--store postgres` through `PgStore` and the schema directly: creation races between replicas,
//! start-up migrations (concurrent, idempotent, a newer schema refused), and HNSW search (recall,
//! filters that never come up short). Skipped without CLIP_SERVE_TEST_POSTGRES_URL.

use crate::postgres::{pg, pg_store, pseudo, record, test_database};
use clip_serve::retrieve::{backend::CollectionStore, store::CollectionMeta};

#[tokio::test]
async fn postgres_a_collection_created_concurrently_by_two_replicas_exists_once() {
    let Some(url) = test_database().await else {
        return;
    };
    let a = pg_store(&pg(&url));
    let b = pg_store(&pg(&url));
    // Both replicas migrate at once (the advisory lock orders them).
    let (ra, rb) = tokio::join!(a.load(), b.load());
    ra.unwrap();
    rb.unwrap();
    let tries = (0..8).map(|i| {
        let store = if i % 2 == 0 { &a } else { &b };
        store.create(CollectionMeta::new("shared".into(), 4, "m".into()), 3)
    });
    let results = futures_join_all(tries).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "{results:?}");
    assert!(results.iter().all(|r| match r {
        Ok(_) => true,
        Err(e) => matches!(e, clip_serve::common::ServiceError::AlreadyExists(_)),
    }));
    assert_eq!(a.list().await.unwrap().len(), 1);
    // --max-collections counts every replica's collections.
    for name in ["two", "three"] {
        let _ = b
            .create(CollectionMeta::new(name.into(), 4, "m".into()), 3)
            .await;
    }
    let e = a
        .create(CollectionMeta::new("four".into(), 4, "m".into()), 3)
        .await
        .unwrap_err();
    assert!(
        matches!(e, clip_serve::common::ServiceError::ResourceExhausted(_)),
        "{e}"
    );
}

/// `join_all` without the futures crate: each future on its own task would need 'static, so
/// these run concurrently on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// 5 rare items in 3000, 10% common ones.
fn tag_of(id: &str) -> &'static str {
    let i: usize = id[2..].parse().unwrap();
    if i.is_multiple_of(600) {
        "rare"
    } else if i.is_multiple_of(10) {
        "common"
    } else {
        "none"
    }
}

#[tokio::test]
async fn postgres_hnsw_search_finds_the_exact_neighbours_and_filters_never_come_up_short() {
    hnsw_case(false).await;
}

#[tokio::test]
async fn postgres_halfvec_hnsw_search_is_as_good_and_uses_its_index() {
    hnsw_case(true).await;
}

async fn hnsw_case(halfvec: bool) {
    let Some(url) = test_database().await else {
        return;
    };
    let mut cfg = pg(&url);
    cfg.exact_below = 0; // HNSW from the first item
    let store = pg_store(&cfg).with_halfvec(halfvec);
    store.load().await.unwrap();
    let dim = 32;
    store
        .create(CollectionMeta::new("big".into(), dim, "m".into()), 10)
        .await
        .unwrap();
    let meta = store.collection("big").await.unwrap();
    let unit = |v: Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let n = 3000;
    let all: Vec<(String, Vec<f32>)> = (0..n)
        .map(|i| (format!("id{i}"), unit(pseudo(i as u64 + 1, dim))))
        .collect();
    for chunk in all.chunks(500) {
        let records = chunk
            .iter()
            .map(|(id, v)| {
                let mut r = record(id, v.clone());
                r.metadata.insert("tag".into(), tag_of(id).into());
                r
            })
            .collect();
        store.upsert(&meta, records).await.unwrap();
    }
    let meta = store.collection("big").await.unwrap();
    let exact = |q: &[f32], k: usize, tag: Option<&str>| {
        let mut scored: Vec<(f32, &String)> = all
            .iter()
            .filter(|(id, _)| tag.is_none_or(|want| want == tag_of(id)))
            .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), id))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .take(k)
            .map(|(_, id)| id.clone())
            .collect::<Vec<_>>()
    };
    let mut hits = 0;
    let queries = 20;
    for qi in 0..queries {
        let q = unit(pseudo(10_000 + qi, dim));
        let got = store
            .search(&meta, q.clone(), 10, Default::default())
            .await
            .unwrap();
        assert_eq!(got.len(), 10);
        let want = exact(&q, 10, None);
        hits += got.iter().filter(|s| want.contains(&s.id)).count();
        // Filters: never fewer than k when k match, and the rare ones all found.
        let rare = store
            .search(
                &meta,
                q.clone(),
                10,
                [("tag".to_string(), "rare".to_string())].into(),
            )
            .await
            .unwrap();
        assert_eq!(rare.len(), 5, "every rare item, though fewer than k");
        let common = store
            .search(
                &meta,
                q.clone(),
                10,
                [("tag".to_string(), "common".to_string())].into(),
            )
            .await
            .unwrap();
        assert_eq!(common.len(), 10);
        assert!(common.iter().all(|s| s.metadata["tag"] == "common"));
    }
    let recall = hits as f64 / (queries as f64 * 10.0);
    assert!(recall >= 0.9, "recall@10 {recall}");
    // The search's ORDER BY is one its index can serve.
    let table = clip_serve::postgres::schema::items_table(&meta.id);
    let order = if halfvec {
        format!("embedding::halfvec({dim}) <=> $1::vector::halfvec({dim})")
    } else {
        "embedding <=> $1".to_string()
    };
    let client = clip_serve::postgres::pool(&cfg)
        .unwrap()
        .get()
        .await
        .unwrap();
    // (A small table may be cheaper to scan; what is checked is that the index can serve it.)
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            &format!("EXPLAIN SELECT id FROM {table} ORDER BY {order} LIMIT 10"),
            &[&pgvector::Vector::from(unit(pseudo(1, dim)))],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains(&format!("{table}_hnsw"))),
        "{plan:#?}"
    );
}

#[tokio::test]
async fn postgres_migrations_are_idempotent_and_a_newer_schema_is_refused() {
    let Some(url) = test_database().await else {
        return;
    };
    let config = pg(&url);
    let pool = clip_serve::postgres::pool(&config).unwrap();
    // Four replicas starting at once, then one more later: one schema, migrated once.
    let (a, b, c, d) = tokio::join!(
        clip_serve::postgres::connect_and_migrate(&pool),
        clip_serve::postgres::connect_and_migrate(&pool),
        clip_serve::postgres::connect_and_migrate(&pool),
        clip_serve::postgres::connect_and_migrate(&pool),
    );
    for r in [a, b, c, d] {
        r.unwrap();
    }
    clip_serve::postgres::connect_and_migrate(&pool)
        .await
        .unwrap();
    let client = pool.get().await.unwrap();
    let versions: i64 = client
        .query_one("SELECT count(*) FROM clip_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, i64::from(clip_serve::postgres::schema::latest()));
    // A database migrated by a newer server is not touched by this one.
    client
        .execute(
            "INSERT INTO clip_schema_migrations (version) VALUES (999)",
            &[],
        )
        .await
        .unwrap();
    let e = clip_serve::postgres::connect_and_migrate(&pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("999") && e.contains("newer"), "{e}");
}
