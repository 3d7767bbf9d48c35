//! `--store postgres`'s in-memory search mirrors (issue 23, `retrieve::postgres::mirror`): a
//! mirrored collection's unfiltered searches find what the exact scan finds, see every write of
//! another replica at once (before the mirror polls), follow the change log, keep within the item
//! budget, and are dropped with their collection. Skipped without CLIP_SERVE_TEST_POSTGRES_URL.

use std::time::Duration;

use crate::common::*;
use crate::postgres::{pg, pseudo, record, test_database};
use clip_serve::{
    grpc::pb::{self, retrieve_client::RetrieveClient},
    postgres::{
        MirrorConfig, StoreConfig,
        schema::{HnswBuild, IndexKind, items_table},
    },
    retrieve::{
        backend::CollectionStore, index::Metadata, postgres::PgStore, store::CollectionMeta,
    },
};
use deadpool_postgres::tokio_postgres::{self, NoTls};

const DIM: usize = 48;
/// The tiny test model's dimension (what a collection created through the server gets).
const TINY: usize = 32;

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// A replica's store: collections of at least `exact_below` items are mirrored (up to
/// `max_items`), the mirror polled only when the test calls `sync_mirrors`.
async fn replica(url: &str, exact_below: usize, max_items: usize) -> PgStore {
    let mut cfg = pg(url);
    cfg.exact_below = exact_below;
    let store = PgStore::new(clip_serve::postgres::pool(&cfg).unwrap(), exact_below).with_mirror(
        MirrorConfig {
            max_items,
            ..MirrorConfig::default()
        },
    );
    store.load().await.unwrap();
    store
}

/// `n` items in a new collection `name`, some with a large shared component (a cone, as CLIP's
/// images are) and the rest spread out.
async fn fill(store: &PgStore, name: &str, n: usize) -> Vec<Vec<f32>> {
    store
        .create(CollectionMeta::new(name.into(), DIM, "m".into()), 10)
        .await
        .unwrap();
    let meta = store.collection(name).await.unwrap();
    let cone = unit(pseudo(99, DIM));
    let all: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let v = pseudo(i as u64 + 11, DIM);
            if i % 3 == 0 {
                unit(v)
            } else {
                unit(
                    v.iter()
                        .zip(&cone)
                        .map(|(x, c)| 0.4 * x + 3.0 * c)
                        .collect(),
                )
            }
        })
        .collect();
    for (c, chunk) in all.chunks(500).enumerate() {
        let records = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| record(&format!("id{}", c * 500 + j), v.clone()))
            .collect();
        store.upsert(&meta, records).await.unwrap();
    }
    all
}

async fn ids(store: &PgStore, name: &str, q: &[f32], exact: bool) -> (Vec<String>, &'static str) {
    let meta = store.collection(name).await.unwrap();
    let (hits, path) = store
        .search_with(&meta, q.to_vec(), 10, Metadata::new(), exact)
        .await
        .unwrap();
    (hits.into_iter().map(|h| h.id).collect(), path)
}

#[tokio::test]
async fn postgres_mirror_finds_what_exact_search_finds_and_sees_other_replicas_writes_at_once() {
    let Some(url) = test_database().await else {
        return;
    };
    let a = replica(&url, 300, 1_000_000).await;
    let b = replica(&url, 300, 0).await; // another replica, without mirrors
    let items = fill(&b, "photos", 2000).await;
    assert_eq!(a.info("photos").await.unwrap().index, "hnsw");
    a.sync_mirrors().await;
    let info = a.info("photos").await.unwrap();
    assert_eq!((info.index.as_str(), info.ready), ("mirror", true));
    assert_eq!(a.mirrored_items(), 2000);
    assert_eq!(b.info("photos").await.unwrap().index, "hnsw");

    // Queries near the cone and far from it (like texts among images): what exact search finds.
    let (mut hit, mut total) = (0, 0);
    for s in 0..20u64 {
        let q = if s % 2 == 0 {
            unit(pseudo(5000 + s, DIM))
        } else {
            let near = &items[s as usize * 7];
            unit(
                near.iter()
                    .zip(pseudo(6000 + s, DIM))
                    .map(|(x, n)| x + 0.2 * n)
                    .collect(),
            )
        };
        let (exact, _) = ids(&a, "photos", &q, true).await;
        let (found, path) = ids(&a, "photos", &q, false).await;
        assert_eq!(path, "mirror");
        total += exact.len();
        hit += found.iter().filter(|f| exact.contains(f)).count();
    }
    assert!(hit as f64 / total as f64 >= 0.95, "recall {hit}/{total}");

    // Replica B writes; A searches before its mirror polls: every committed write is seen.
    let meta = b.collection("photos").await.unwrap();
    let q = unit(pseudo(777, DIM));
    b.upsert(&meta, vec![record("fresh", q.clone())])
        .await
        .unwrap();
    let (found, path) = ids(&a, "photos", &q, false).await;
    assert_eq!((found[0].as_str(), path), ("fresh", "mirror"));
    // An update moves an item next to another query; a delete takes one away.
    let q2 = unit(pseudo(778, DIM));
    b.upsert(&meta, vec![record("id5", q2.clone())])
        .await
        .unwrap();
    let (found, _) = ids(&a, "photos", &q2, false).await;
    assert_eq!(found[0], "id5");
    let (before, _) = ids(&a, "photos", &items[40], false).await;
    assert_eq!(before[0], "id40");
    b.delete(&meta, vec!["id40".into()]).await.unwrap();
    let (after, path) = ids(&a, "photos", &items[40], false).await;
    assert!(!after.contains(&"id40".to_string()), "{after:?}");
    assert_eq!((after.len(), path), (10, "mirror"));

    // The poll brings the codes up to date.
    a.sync_mirrors().await;
    assert_eq!(a.mirrored_items(), 2000);
    let (found, _) = ids(&a, "photos", &q, false).await;
    assert_eq!(found[0], "fresh");

    // Filtered searches keep the index paths (the mirror holds no metadata).
    let meta = a.collection("photos").await.unwrap();
    let filter = Metadata::from([("absent".to_string(), "x".to_string())]);
    let (hits, path) = a
        .search_with(&meta, q.clone(), 10, filter, false)
        .await
        .unwrap();
    assert!(hits.is_empty() && path != "mirror", "{path}");

    // A dropped collection's mirror goes with the next poll.
    b.drop_collection("photos").await.unwrap();
    a.sync_mirrors().await;
    assert_eq!(a.mirrored_items(), 0);
}

async fn triggers(raw: &tokio_postgres::Client, table: &str) -> i64 {
    raw.query_one(
        "SELECT count(*) FROM pg_trigger
         WHERE tgrelid = $1::text::regclass AND tgname LIKE 'clip_changed_%'",
        &[&table],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn postgres_mirror_keeps_its_budget_follows_old_tables_prunes_and_rebuilds_on_truncate() {
    let Some(url) = test_database().await else {
        return;
    };
    let (raw, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let small = replica(&url, 300, 1000).await;
    let writer = replica(&url, 300, 0).await;
    fill(&writer, "big", 1200).await;
    fill(&writer, "fits", 600).await;
    // A table as an older server made it: no change triggers.
    let table = items_table(&writer.collection("fits").await.unwrap().id);
    assert_eq!(triggers(&raw, &table).await, 4);
    for t in ["insert", "update", "delete", "truncate"] {
        raw.batch_execute(&format!("DROP TRIGGER clip_changed_{t} ON {table}"))
            .await
            .unwrap();
    }
    // Change-log rows: one past the retention (an hour; its transaction's id an old one, so
    // that other tests' transactions running meanwhile cannot hold it back), one recent.
    raw.batch_execute(
        "INSERT INTO clip_item_changes (collection, item, at, xid) VALUES
             ('gone', 'old', now() - interval '2 hours', '3'::xid8), ('gone', 'recent', now(), '3'::xid8)",
    )
    .await
    .unwrap();

    small.sync_mirrors().await;
    // 1,200 items do not fit a budget of 1,000; 600 do.
    assert_eq!(small.info("big").await.unwrap().index, "hnsw");
    assert_eq!(small.info("fits").await.unwrap().index, "mirror");
    assert_eq!(small.mirrored_items(), 600);
    // The build gave the old table its triggers; the log lost only the old row.
    assert_eq!(triggers(&raw, &table).await, 4);
    let left: Vec<String> = raw
        .query(
            "SELECT item FROM clip_item_changes WHERE collection = 'gone'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["recent"]);
    // So a write now reaches the mirror through the log.
    let meta = writer.collection("fits").await.unwrap();
    writer
        .upsert(&meta, vec![record("new", unit(pseudo(4242, DIM)))])
        .await
        .unwrap();
    small.sync_mirrors().await;
    assert_eq!(small.mirrored_items(), 601);

    // TRUNCATE by hand (no ids logged): the mirror is built again, empty, and searches fall back
    // to the index path.
    raw.batch_execute(&format!("TRUNCATE {table}"))
        .await
        .unwrap();
    small.sync_mirrors().await;
    assert_eq!(small.mirrored_items(), 0);
    let meta = small.collection("fits").await.unwrap();
    let (hits, path) = small
        .search_with(&meta, unit(pseudo(1, DIM)), 10, Metadata::new(), false)
        .await
        .unwrap();
    assert!(hits.is_empty() && path != "mirror", "{path}");
}

/// Through the server: `--postgres-mirror-*` reach the store, its task mirrors a large
/// collection by itself, GetCollection says so, and searches are answered from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_mirrors_a_large_collection_by_itself() {
    let Some(url) = test_database().await else {
        return;
    };
    let mut cfg = config(&tiny_model());
    let mut pgc = pg(&url);
    pgc.exact_below = 100;
    pgc.mirror = MirrorConfig {
        poll: Duration::from_millis(100),
        ..MirrorConfig::default()
    };
    cfg.store = StoreConfig::Postgres(pgc);
    let server = serve(cfg).await;
    let mut c = RetrieveClient::new(server.channel.clone());
    c.create_collection(pb::CreateCollectionRequest {
        name: "p".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let items: Vec<pb::Item> = (0..150)
        .map(|i| crate::postgres::vector_item(&format!("i{i}"), pseudo(i, TINY), "x"))
        .collect();
    c.upsert(pb::UpsertRequest {
        collection: "p".into(),
        items,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut info = None;
    for _ in 0..100 {
        let got = c
            .get_collection(pb::GetCollectionRequest { name: "p".into() })
            .await
            .unwrap()
            .into_inner();
        if got.index == "mirror" && got.ready {
            info = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(info.is_some(), "the collection was never mirrored");
    let hits = c
        .search(crate::postgres::search("p", pseudo(3, TINY), 5, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hits.hits[0].id, "i3");
    let (_, metrics) = http_get(server.server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("clip_search_path_total{path=\"mirror\"} 1"),
        "{metrics}"
    );
    // The gauges: set after the round that built the mirror, so wait for that round's end.
    let gauge = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(-1.0)
    };
    let mut metrics = metrics;
    for _ in 0..50 {
        if gauge(&metrics, "clip_postgres_mirror_items") == 150.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = http_get(server.server.http_addr, "/metrics").await.1;
    }
    assert_eq!(
        gauge(&metrics, "clip_postgres_mirror_items"),
        150.0,
        "{metrics}"
    );
    let bytes = gauge(&metrics, "clip_postgres_mirror_bytes");
    // Each id alone takes 16 bytes beside its text (an `Arc<str>`).
    assert!(
        bytes >= 150.0 * 18.0,
        "{bytes} bytes for 150 items: {metrics}"
    );
    let lag = gauge(&metrics, "clip_postgres_mirror_lag_seconds");
    assert!((0.0..10.0).contains(&lag), "lag {lag}: {metrics}");
}

/// A mirror whose build fails (here: rows written by plain SQL past the collection's count,
/// beyond the budget) leaves the collection on its index, and is not tried again at every poll
/// (each try reads the whole table; it is after a minute).
#[tokio::test]
async fn postgres_mirror_a_failed_build_waits_before_it_is_tried_again() {
    let Some(url) = test_database().await else {
        return;
    };
    let (raw, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let a = replica(&url, 300, 1000).await;
    fill(&a, "grown", 600).await;
    let table = items_table(&a.collection("grown").await.unwrap().id);
    raw.batch_execute(&format!(
        "INSERT INTO {table} (id, embedding, metadata)
         SELECT 'sql-' || id, embedding, metadata FROM {table}"
    ))
    .await
    .unwrap();
    a.sync_mirrors().await;
    assert_eq!(a.info("grown").await.unwrap().index, "hnsw");
    assert_eq!(a.mirrored_items(), 0);
    // A try installs the change triggers first: take them away to see whether it tries again.
    for t in ["insert", "update", "delete", "truncate"] {
        raw.batch_execute(&format!("DROP TRIGGER clip_changed_{t} ON {table}"))
            .await
            .unwrap();
    }
    a.sync_mirrors().await;
    a.sync_mirrors().await;
    assert_eq!(triggers(&raw, &table).await, 0, "tried again at once");
    assert_eq!(a.mirrored_items(), 0);
}

/// More items written between two polls than `--postgres-mirror-max-recent`: the poll builds the
/// mirror again rather than reading them one by one, and a mirror that grows past the budget is
/// dropped (its collection searched by the index).
#[tokio::test]
async fn postgres_mirror_a_write_flood_rebuilds_it_and_outgrowing_the_budget_drops_it() {
    let Some(url) = test_database().await else {
        return;
    };
    let mut cfg = pg(&url);
    cfg.exact_below = 300;
    let a =
        PgStore::new(clip_serve::postgres::pool(&cfg).unwrap(), 300).with_mirror(MirrorConfig {
            max_items: 1000,
            max_recent: 50,
            ..MirrorConfig::default()
        });
    a.load().await.unwrap();
    let writer = replica(&url, 300, 0).await;
    fill(&writer, "c", 400).await;
    a.sync_mirrors().await;
    assert_eq!(a.mirrored_items(), 400);
    let meta = writer.collection("c").await.unwrap();
    let flood: Vec<_> = (0..200)
        .map(|i| record(&format!("flood{i}"), unit(pseudo(10_000 + i, DIM))))
        .collect();
    writer.upsert(&meta, flood).await.unwrap();
    // Before the poll: the first 50 writes are rescored beside the shortlist, so the mirror
    // still answers; the poll then builds it again with every item.
    let q = unit(pseudo(10_007, DIM));
    let (_, path) = ids(&a, "c", &q, false).await;
    assert_eq!(path, "mirror");
    a.sync_mirrors().await;
    assert_eq!(a.mirrored_items(), 600);
    let (found, path) = ids(&a, "c", &q, false).await;
    assert_eq!((found[0].as_str(), path), ("flood7", "mirror"));
    // Past the budget of 1,000: dropped, searched by the index.
    let more: Vec<_> = (0..500)
        .map(|i| record(&format!("more{i}"), unit(pseudo(20_000 + i, DIM))))
        .collect();
    writer.upsert(&meta, more).await.unwrap();
    a.sync_mirrors().await;
    assert_eq!(a.mirrored_items(), 0);
    assert_eq!(a.info("c").await.unwrap().index, "hnsw");
    let (found, path) = ids(&a, "c", &q, false).await;
    assert_eq!((found[0].as_str(), path), ("flood7", "hnsw"));
}

/// A transaction running while the mirror is built (its id in the snapshot's in-progress list,
/// below the snapshot's xmax) that writes and commits afterwards: its write is still seen by the
/// next search, before any poll.
#[tokio::test]
async fn postgres_mirror_sees_a_write_of_a_transaction_running_when_it_was_built() {
    let Some(url) = test_database().await else {
        return;
    };
    let (mut raw, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let a = replica(&url, 300, 1_000_000).await;
    fill(&a, "c", 400).await;
    let table = items_table(&a.collection("c").await.unwrap().id);
    let (other, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let tx = raw.transaction().await.unwrap();
    // The transaction takes its id before the mirror's snapshot, and a later one completes (so
    // the snapshot's xmax passes it and it is in the in-progress list, not at or past xmax).
    tx.query_one("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    other
        .query_one("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    a.sync_mirrors().await;
    assert_eq!(a.mirrored_items(), 400);
    let q = unit(pseudo(31_337, DIM));
    let literal = format!(
        "[{}]",
        q.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    tx.execute(
        &format!("INSERT INTO {table} (id, embedding, metadata) VALUES ('late', $1::text::vector, '{{}}')"),
        &[&literal],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (found, path) = ids(&a, "c", &q, false).await;
    assert_eq!((found[0].as_str(), path), ("late", "mirror"));
    a.sync_mirrors().await;
    assert_eq!(a.mirrored_items(), 401);
}

/// `--postgres-index none`: a large collection gets no HNSW index (its writes skip the graph's
/// upkeep). Until its mirror is built it is searched exactly; then by the mirror, finding what
/// the exact scan finds; filtered searches stay exact.
#[tokio::test]
async fn postgres_index_none_makes_no_hnsw_and_the_mirror_serves_it() {
    let Some(url) = test_database().await else {
        return;
    };
    let (raw, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let store = replica(&url, 300, 1_000_000)
        .await
        .with_index(IndexKind::None, HnswBuild::default());
    let items = fill(&store, "unindexed", 1200).await;
    let table = items_table(&store.collection("unindexed").await.unwrap().id);
    let indexes: Vec<String> = raw
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !indexes.is_empty() && indexes.iter().all(|i| !i.ends_with("_hnsw")),
        "{indexes:?}"
    );
    assert_eq!(store.info("unindexed").await.unwrap().index, "exact");
    let q = unit(pseudo(4242, DIM));
    let (exact, _) = ids(&store, "unindexed", &q, true).await;
    let (before, path) = ids(&store, "unindexed", &q, false).await;
    assert_eq!((&before, path), (&exact, "exact"));

    store.sync_mirrors().await;
    let info = store.info("unindexed").await.unwrap();
    assert_eq!((info.index.as_str(), info.ready), ("mirror", true));
    let (mut hit, mut total) = (0, 0);
    for s in 0..10u64 {
        let q = unit(
            items[s as usize * 50]
                .iter()
                .zip(pseudo(7000 + s, DIM))
                .map(|(x, n)| x + 0.3 * n)
                .collect(),
        );
        let (exact, _) = ids(&store, "unindexed", &q, true).await;
        let (found, path) = ids(&store, "unindexed", &q, false).await;
        assert_eq!(path, "mirror");
        total += exact.len();
        hit += found.iter().filter(|f| exact.contains(f)).count();
    }
    assert!(hit as f64 / total as f64 >= 0.95, "recall {hit}/{total}");

    let meta = store.collection("unindexed").await.unwrap();
    let filter = Metadata::from([("absent".to_string(), "x".to_string())]);
    let (hits, path) = store
        .search_with(&meta, q, 10, filter, false)
        .await
        .unwrap();
    assert!(hits.is_empty() && path == "exact", "{path}");
    store.drop_collection("unindexed").await.unwrap();
}
