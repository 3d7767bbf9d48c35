//! `--store postgres` against a real PostgreSQL with pgvector (scripts/postgres.sh starts one and
//! scripts/test.sh passes its URL in CLIP_SERVE_TEST_POSTGRES_URL; without it these tests print
//! SKIPPED and pass). Each test gets a database of its own. The multi-process tests (two replicas,
//! kill -9) are in postgres_replicas.rs; PgStore and schema tests in postgres_store.rs.

use std::{collections::HashMap, time::Duration};

use crate::common::*;
use clip_serve::{
    grpc::pb::{self, retrieve_client::RetrieveClient},
    postgres::{PgConfig, StoreConfig},
    retrieve::{
        backend::{CollectionStore, Record},
        postgres::PgStore,
        store::CollectionMeta,
    },
};
use deadpool_postgres::tokio_postgres::{self, NoTls};
use tonic::{Code, transport::Channel};

/// A fresh database on the test PostgreSQL, or `None` (and a SKIPPED line) without one.
pub async fn test_database() -> Option<String> {
    let Ok(admin) = std::env::var("CLIP_SERVE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED: no PostgreSQL (set CLIP_SERVE_TEST_POSTGRES_URL)");
        return None;
    };
    Some(create_database(&admin).await)
}

pub async fn create_database(admin: &str) -> String {
    let (client, connection) = tokio_postgres::connect(admin, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    let name = format!("clip_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

pub fn pg(url: &str) -> PgConfig {
    PgConfig {
        url: url.to_string(),
        password: None,
        pool_size: 8,
        exact_below: 10_000,
        connect_timeout: Duration::from_secs(2),
        ca_file: None,
        halfvec: false,
        ef_search: 200,
        index: clip_serve::postgres::schema::IndexKind::Vector,
        build: clip_serve::postgres::schema::HnswBuild::default(),
        oversample: 20,
        statement_timeout: Duration::from_secs(30),
        lock_timeout: Duration::from_secs(5),
        mirror: clip_serve::postgres::MirrorConfig::default(),
    }
}

pub fn pg_store(config: &PgConfig) -> PgStore {
    PgStore::new(
        clip_serve::postgres::pool(config).unwrap(),
        config.exact_below,
    )
}

fn pg_config(url: &str) -> clip_serve::cli::Config {
    let mut cfg = config(&tiny_model());
    cfg.store = StoreConfig::Postgres(pg(url));
    cfg
}

fn client(server: &TestServer) -> RetrieveClient<Channel> {
    RetrieveClient::new(server.channel.clone()).max_decoding_message_size(64 << 20)
}

pub fn vector_item(id: &str, values: Vec<f32>, kind: &str) -> pb::Item {
    pb::Item {
        id: id.into(),
        content: Some(pb::item::Content::Vector(pb::Vector { values })),
        metadata: HashMap::from([("kind".to_string(), kind.to_string())]),
    }
}

/// A deterministic pseudo-random vector.
pub fn pseudo(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn vq(v: Vec<f32>) -> pb::Query {
    pb::Query {
        query: Some(pb::query::Query::Vector(pb::Vector { values: v })),
    }
}

pub fn search(
    collection: &str,
    v: Vec<f32>,
    top_k: u32,
    filter: &[(&str, &str)],
) -> pb::SearchRequest {
    pb::SearchRequest {
        exact: false,
        collection: collection.into(),
        query: Some(vq(v)),
        top_k,
        filter: filter
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        model: String::new(),
    }
}

#[tokio::test]
async fn postgres_collections_round_trip_like_the_local_store() {
    let Some(url) = test_database().await else {
        return;
    };
    let server = serve(pg_config(&url)).await;
    let mut c = client(&server);
    let created = c
        .create_collection(pb::CreateCollectionRequest {
            name: "photos".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.dimension, created.count), (32, 0));
    let again = c
        .create_collection(pb::CreateCollectionRequest {
            name: "photos".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    // Vectors exactly as sent (not normalized), and a text embedded by the server.
    let raw: Vec<f32> = (0..32).map(|i| i as f32 * 0.25 - 3.0).collect();
    let up = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            items: vec![
                vector_item("raw", raw.clone(), "vector"),
                vector_item("other", pseudo(7, 32), "vector"),
                pb::Item {
                    id: "cat".into(),
                    content: Some(pb::item::Content::Text("a photo of a cat".into())),
                    metadata: HashMap::from([("kind".to_string(), "text".to_string())]),
                },
            ],
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((up.upserted, up.count), (3, 3));
    let got = c
        .get_items(pb::GetItemsRequest {
            collection: "photos".into(),
            ids: vec!["raw".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.items.len(), 1);
    assert_eq!(
        got.items[0].vector.as_ref().unwrap().values,
        raw,
        "bit for bit"
    );
    assert_eq!(got.items[0].metadata["kind"], "vector");
    assert_eq!(got.missing, ["nope"]);
    let hits = c
        .search(search("photos", raw.clone(), 10, &[]))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0].id, "raw");
    assert!((hits[0].score - 1.0).abs() < 1e-5, "{}", hits[0].score);
    assert!(hits.windows(2).all(|p| p[0].score >= p[1].score));
    let text_hits = c
        .search(pb::SearchRequest {
            exact: false,
            collection: "photos".into(),
            query: Some(pb::Query {
                query: Some(pb::query::Query::Text("a photo of a cat".into())),
            }),
            top_k: 1,
            filter: HashMap::new(),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(text_hits[0].id, "cat");
    let filtered = c
        .search(search("photos", raw.clone(), 10, &[("kind", "text")]))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, "cat");
    // Replacing keeps the count; deleting counts what existed.
    let up = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            items: vec![vector_item("raw", pseudo(9, 32), "vector")],
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((up.upserted, up.count), (1, 3));
    let del = c
        .delete(pb::DeleteRequest {
            collection: "photos".into(),
            ids: vec!["raw".into(), "never".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((del.deleted, del.count), (1, 2));
    // The same validation as the local store, and what PostgreSQL cannot hold.
    let bad = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            items: vec![vector_item("x", vec![1.0; 31], "v")],
            model: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("items[0]"), "{}", bad.message());
    let nul = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            items: vec![vector_item("a\0b", vec![1.0; 32], "v")],
            model: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(nul.code(), Code::InvalidArgument, "{nul:?}");
    let list = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .collections;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].count), ("photos", 2));
    c.delete_collection(pb::DeleteCollectionRequest {
        name: "photos".into(),
    })
    .await
    .unwrap();
    for e in [
        c.search(search("photos", raw.clone(), 1, &[]))
            .await
            .unwrap_err(),
        c.get_collection(pb::GetCollectionRequest {
            name: "photos".into(),
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
}

pub fn record(id: &str, v: Vec<f32>) -> Record {
    Record {
        id: id.into(),
        unit: v.clone(),
        stored: v,
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn postgres_a_write_that_lost_a_race_with_delete_and_create_is_aborted() {
    let Some(url) = test_database().await else {
        return;
    };
    let store = pg_store(&pg(&url));
    store.load().await.unwrap();
    let meta = || CollectionMeta::new("c".into(), 2, "m".into());
    store.create(meta(), 10).await.unwrap();
    let old = store.collection("c").await.unwrap();
    store.drop_collection("c").await.unwrap();
    store.create(meta(), 10).await.unwrap();
    let e = store
        .upsert(&old, vec![record("a", vec![1.0, 0.0])])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, clip_serve::common::ServiceError::Aborted(_)),
        "{e}"
    );
    let new = store.collection("c").await.unwrap();
    assert_eq!(
        store
            .upsert(&new, vec![record("a", vec![0.0, 1.0])])
            .await
            .unwrap(),
        1
    );
    let e = store.delete(&old, vec!["a".into()]).await.unwrap_err();
    assert!(
        matches!(&e, clip_serve::common::ServiceError::Aborted(_)),
        "{e}"
    );
    assert_eq!(store.info("c").await.unwrap().count, 1);
    let items = store.get_items(&new, vec!["a".into()]).await.unwrap();
    assert_eq!(items[0].as_ref().unwrap().vector, [0.0, 1.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_label_sets_are_shared_by_replicas() {
    use clip_serve::grpc::pb::classify_client::ClassifyClient;
    let Some(url) = test_database().await else {
        return;
    };
    let (a, b) = (serve(pg_config(&url)).await, serve(pg_config(&url)).await);
    let (mut ca, mut cb) = (
        ClassifyClient::new(a.channel.clone()),
        ClassifyClient::new(b.channel.clone()),
    );
    let create = |name: &str| pb::CreateLabelSetRequest {
        name: name.into(),
        labels: vec!["cat".into(), "dog".into()],
        templates: vec!["a photo of a {}.".into()],
    };
    ca.create_label_set(create("pets")).await.unwrap();
    // Through the other replica at once (it asks PostgreSQL about a name it does not know).
    let got = cb
        .get_label_set(pb::GetLabelSetRequest {
            name: "pets".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.labels, ["cat", "dog"]);
    assert!(!got.builtin);
    let dup = cb.create_label_set(create("pets")).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    // B computes its own classifier and classifies with the set.
    let image = read_fixture("images/chelsea_baseline_420.jpg");
    let started = std::time::Instant::now();
    loop {
        let r = cb
            .classify(pb::ClassifyRequest {
                images: vec![image.clone()],
                label_set: "pets".into(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                assert_eq!(r.into_inner().results[0].scores.len(), 2);
                break;
            }
            Err(e) if e.code() == Code::Unavailable => {
                assert!(started.elapsed() < Duration::from_secs(30), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    // Concurrent creates of one name through both replicas: one wins.
    let (mut ca2, mut cb2) = (ca.clone(), cb.clone());
    let (ra, rb) = tokio::join!(
        ca2.create_label_set(create("race")),
        cb2.create_label_set(create("race"))
    );
    assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "{ra:?} {rb:?}");
    // Deleted through B: gone through A within its refresh round.
    cb.delete_label_set(pb::DeleteLabelSetRequest {
        name: "pets".into(),
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    loop {
        let listed = ca
            .list_label_sets(pb::ListLabelSetsRequest {})
            .await
            .unwrap()
            .into_inner()
            .label_sets;
        if !listed.iter().any(|s| s.name == "pets") {
            assert!(listed.iter().any(|s| s.name == "race"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A still lists it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn postgres_tls_follows_sslmode_and_an_outage_is_unavailable_naming_the_store() {
    let Some(url) = test_database().await else {
        return;
    };
    // The test server has no TLS: `prefer` (the default, every other test) falls back to plain;
    // `require` is refused, and the call answers UNAVAILABLE naming PostgreSQL.
    let store = pg_store(&pg(&format!("{url}?sslmode=require")));
    let e = store.ping().await.unwrap_err();
    assert!(
        matches!(&e, clip_serve::common::ServiceError::Unavailable(m) if m.contains("PostgreSQL")),
        "{e}"
    );
    let e = store.list().await.unwrap_err();
    assert!(
        matches!(e, clip_serve::common::ServiceError::Unavailable(_)),
        "{e}"
    );
    pg_store(&pg(&format!("{url}?sslmode=disable")))
        .ping()
        .await
        .unwrap();
    pg_store(&pg(&url)).ping().await.unwrap();
}

/// PostgreSQL down when a replica starts: it serves Embed (and health "" for the pod) at once,
/// Retrieve is NOT_SERVING and its calls UNAVAILABLE while it keeps trying. Needs no PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_at_start_up_holds_back_retrieve_only() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there
    let mut cfg = pg_config(&format!("postgres://clip@127.0.0.1:{port}/clip"));
    if let StoreConfig::Postgres(pg) = &mut cfg.store {
        pg.connect_timeout = Duration::from_millis(300);
    }
    let server = clip_serve::server::start(cfg, Default::default())
        .await
        .expect("starts without PostgreSQL");
    let channel = connect(&server).await;
    let mut health = HealthClient::new(channel.clone());
    let status = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let started = std::time::Instant::now();
    loop {
        let s = health
            .check(status("clip.v1.Embed"))
            .await
            .unwrap()
            .into_inner();
        if s.status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Embed never SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let whole = health.check(status("")).await.unwrap().into_inner();
    assert_eq!(whole.status, ServingStatus::Serving as i32);
    let retrieve = health
        .check(status("clip.v1.Retrieve"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retrieve.status, ServingStatus::NotServing as i32);
    let e = RetrieveClient::new(channel)
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let (code, _) = http_get(server.http_addr, "/readyz").await;
    assert_eq!(code, 200, "the pod stays ready for Embed and Classify");
}
