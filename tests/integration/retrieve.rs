//! Retrieve: stateless ranking against the embeddings themselves, collections (upsert, search,
//! filter, delete, persistence across restarts) and the bad-input table. The SIGKILL crash test is
//! in tests/signals.rs (it needs a child process).

use std::collections::HashMap;

use crate::common::*;
use crate::http_clients::post_json;
use clip_serve::grpc::pb::{self, retrieve_client::RetrieveClient};
use tonic::{Code, transport::Channel};

fn client(server: &TestServer) -> RetrieveClient<Channel> {
    RetrieveClient::new(server.channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn text(t: &str) -> pb::Query {
    pb::Query {
        query: Some(pb::query::Query::Text(t.into())),
    }
}

fn vector(v: Vec<f32>) -> pb::Query {
    pb::Query {
        query: Some(pb::query::Query::Vector(pb::Vector { values: v })),
    }
}

fn image(b: bytes::Bytes) -> pb::Query {
    pb::Query {
        query: Some(pb::query::Query::Image(b)),
    }
}

async fn embed_text(server: &TestServer, t: &str) -> Vec<f32> {
    server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec![t.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .embeddings
        .remove(0)
        .values
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn rank_scores_are_cosines_best_first() {
    let server = serve(config(&tiny_model())).await;
    let q = embed_text(&server, "a photo of a cat").await;
    let texts = ["a diagram", "a photo of a cat", "coffee"];
    let mut want: Vec<(usize, f32)> = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        want.push((i, dot(&q, &embed_text(&server, t).await)));
    }
    let img = read_fixture("images/chelsea_baseline_420.jpg");
    let img_vec = server
        .embed()
        .embed_images(pb::EmbedImagesRequest {
            images: vec![img.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .embeddings
        .remove(0)
        .values;
    want.push((3, dot(&q, &img_vec)));
    // A client vector: scaled, so it must be normalized before scoring.
    want.push((4, dot(&q, &img_vec)));
    let scaled: Vec<f32> = img_vec.iter().map(|x| x * 7.0).collect();
    let mut candidates: Vec<pb::Query> = texts.iter().map(|t| text(t)).collect();
    candidates.push(image(img));
    candidates.push(vector(scaled));
    let got = client(&server)
        .rank(pb::RankRequest {
            query: Some(text("a photo of a cat")),
            candidates: candidates.clone(),
            top_k: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].index, 1, "the identical text ranks first");
    assert!((got[0].score - 1.0).abs() < 1e-5);
    for r in &got {
        let w = want[r.index as usize].1;
        assert!(
            (r.score - w).abs() < 1e-5,
            "candidate {}: {} vs {w}",
            r.index,
            r.score
        );
    }
    assert!(got.windows(2).all(|p| p[0].score >= p[1].score));
    let top = client(&server)
        .rank(pb::RankRequest {
            query: Some(text("a photo of a cat")),
            candidates,
            top_k: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(top[..], got[..2]);
}

#[tokio::test]
async fn collections_store_search_filter_delete_and_survive_a_restart() {
    let cfg = config(&tiny_model());
    let server = serve(cfg.clone()).await;
    let mut c = client(&server);
    let created = c
        .create_collection(pb::CreateCollectionRequest {
            name: "photos".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.dimension, 32);
    assert_eq!(created.model, "ViT-B-32-tiny-test");
    let dim = created.dimension as usize;
    let exact: Vec<f32> = (0..dim).map(|i| i as f32 * 0.25 - 3.0).collect();
    let md = |kind: &str| HashMap::from([("kind".to_string(), kind.to_string())]);
    let item = |id: &str, content: pb::item::Content, kind: &str| pb::Item {
        id: id.into(),
        content: Some(content),
        metadata: md(kind),
    };
    let img = read_fixture("images/chelsea_baseline_420.jpg");
    let up = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            items: vec![
                item(
                    "cat-text",
                    pb::item::Content::Text("a photo of a cat".into()),
                    "text",
                ),
                item(
                    "diagram",
                    pb::item::Content::Text("a diagram".into()),
                    "text",
                ),
                item("chelsea", pb::item::Content::Image(img), "image"),
                item(
                    "raw",
                    pb::item::Content::Vector(pb::Vector {
                        values: exact.clone(),
                    }),
                    "vector",
                ),
            ],
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((up.upserted, up.count), (4, 4));
    let search = |q: pb::Query, filter: HashMap<String, String>, top_k: u32| pb::SearchRequest {
        exact: false,
        collection: "photos".into(),
        query: Some(q),
        top_k,
        filter,
        model: String::new(),
    };
    let hits = c
        .search(search(text("a photo of a cat"), HashMap::new(), 10))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 4);
    assert_eq!(hits[0].id, "cat-text");
    assert!((hits[0].score - 1.0).abs() < 1e-5);
    assert_eq!(hits[0].metadata["kind"], "text");
    let vectors_only = c
        .search(search(vector(exact.clone()), md("vector"), 10))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(vectors_only.len(), 1);
    assert_eq!(vectors_only[0].id, "raw");
    // Replace an id: the count stays, the content changes.
    let up = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            items: vec![item(
                "diagram",
                pb::item::Content::Text("a photo of a cat".into()),
                "text2",
            )],
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.count, 4);
    let del = c
        .delete(pb::DeleteRequest {
            collection: "photos".into(),
            ids: vec!["cat-text".into(), "never-there".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((del.deleted, del.count), (1, 3));
    server.server.shutdown().await.unwrap();

    let server = serve(cfg).await;
    let mut c = client(&server);
    let info = c
        .get_collection(pb::GetCollectionRequest {
            name: "photos".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.count, 3);
    // Which index answers, and that it is ready (a small collection: the exact scan).
    assert_eq!((info.index.as_str(), info.ready), ("exact", true));
    // `exact: true` is accepted and counted per path.
    let asked = c
        .search(pb::SearchRequest {
            exact: true,
            ..search(text("a photo of a cat"), HashMap::new(), 1)
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(asked[0].id, "diagram");
    let metrics = http_get(server.server.http_addr, "/metrics").await.1;
    assert_eq!(
        metric_value(&metrics, "clip_search_path_total{path=\"exact\"}"),
        Some(1.0),
        "{metrics}"
    );
    let hits = c
        .search(search(text("a photo of a cat"), HashMap::new(), 1))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(
        hits[0].id, "diagram",
        "the replacement survived the restart"
    );
    assert_eq!(hits[0].metadata["kind"], "text2");
    let items = c
        .get_items(pb::GetItemsRequest {
            collection: "photos".into(),
            ids: vec!["raw".into(), "cat-text".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(items.items.len(), 1);
    assert_eq!(
        items.items[0].vector.as_ref().unwrap().values,
        exact,
        "stored exactly as sent"
    );
    assert_eq!(items.missing, vec!["cat-text".to_string()]);
    let listed = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .collections;
    assert_eq!(listed.len(), 1);
    c.delete_collection(pb::DeleteCollectionRequest {
        name: "photos".into(),
    })
    .await
    .unwrap();
    let gone = c
        .get_collection(pb::GetCollectionRequest {
            name: "photos".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_retrieve_requests_get_clear_errors() {
    let mut cfg = config(&tiny_model());
    cfg.retrieve.max_upsert_items = 3;
    cfg.retrieve.max_top_k = 5;
    cfg.retrieve.max_metadata_bytes = 20;
    let server = serve(cfg).await;
    let mut c = client(&server);
    c.create_collection(pb::CreateCollectionRequest {
        name: "c".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.create_collection(pb::CreateCollectionRequest {
        name: "other-model".into(),
        dimension: 4,
        model: "some-other-model".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let v = |n: usize, x: f32| pb::item::Content::Vector(pb::Vector { values: vec![x; n] });
    let item = |id: &str, content: Option<pb::item::Content>| pb::Item {
        id: id.into(),
        content,
        metadata: HashMap::new(),
    };
    let upsert = |collection: &str, items: Vec<pb::Item>| pb::UpsertRequest {
        collection: collection.into(),
        items,
        model: String::new(),
    };
    let cases: Vec<(&str, pb::UpsertRequest, Code, &str)> = vec![
        (
            "wrong dimension",
            upsert("c", vec![item("a", Some(v(31, 1.0)))]),
            Code::InvalidArgument,
            "items[0].vector: 31 values, expected 32",
        ),
        (
            "NaN",
            upsert(
                "c",
                vec![
                    item("a", Some(v(32, 1.0))),
                    item("b", Some(v(32, f32::NAN))),
                ],
            ),
            Code::InvalidArgument,
            "items[1].vector: value 0 is NaN",
        ),
        (
            "infinity",
            upsert("c", vec![item("a", Some(v(32, f32::INFINITY)))]),
            Code::InvalidArgument,
            "inf",
        ),
        (
            "zero vector",
            upsert("c", vec![item("a", Some(v(32, 0.0)))]),
            Code::InvalidArgument,
            "zero vector",
        ),
        (
            "empty id",
            upsert("c", vec![item("", Some(v(32, 1.0)))]),
            Code::InvalidArgument,
            "items[0]: empty id",
        ),
        (
            "long id",
            upsert("c", vec![item(&"x".repeat(257), Some(v(32, 1.0)))]),
            Code::InvalidArgument,
            "over the limit of 256",
        ),
        (
            "duplicate ids",
            upsert(
                "c",
                vec![item("a", Some(v(32, 1.0))), item("a", Some(v(32, 1.0)))],
            ),
            Code::InvalidArgument,
            "items[1]: id \"a\" repeats items[0]",
        ),
        (
            "no content",
            upsert("c", vec![item("a", None)]),
            Code::InvalidArgument,
            "items[0]: set `text`, `image` or `vector`",
        ),
        (
            "metadata too big",
            upsert(
                "c",
                vec![pb::Item {
                    metadata: HashMap::from([("k".into(), "v".repeat(30))]),
                    ..item("a", Some(v(32, 1.0)))
                }],
            ),
            Code::InvalidArgument,
            "items[0].metadata: 31 bytes",
        ),
        (
            "too many items",
            upsert(
                "c",
                (0..4)
                    .map(|i| item(&format!("i{i}"), Some(v(32, 1.0))))
                    .collect(),
            ),
            Code::InvalidArgument,
            "--max-upsert-items",
        ),
        (
            "unknown collection",
            upsert("nope", vec![item("a", Some(v(32, 1.0)))]),
            Code::NotFound,
            "nope",
        ),
        (
            "no items",
            upsert("c", vec![]),
            Code::InvalidArgument,
            "none given",
        ),
        (
            "a text into another model's collection",
            upsert(
                "other-model",
                vec![item("a", Some(pb::item::Content::Text("x".into())))],
            ),
            Code::FailedPrecondition,
            "only vectors",
        ),
        (
            "a bad image names its item",
            upsert(
                "c",
                vec![
                    item("a", Some(v(32, 1.0))),
                    item(
                        "b",
                        Some(pb::item::Content::Image(bytes::Bytes::from_static(
                            b"not an image",
                        ))),
                    ),
                ],
            ),
            Code::InvalidArgument,
            "items[1].image:",
        ),
    ];
    for (what, request, code, needle) in cases {
        let err = c.upsert(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(needle), "{what}: {}", err.message());
    }
    let stated_model = c
        .upsert(pb::UpsertRequest {
            model: "yet-another".into(),
            ..upsert("c", vec![item("a", Some(v(32, 1.0)))])
        })
        .await
        .unwrap_err();
    assert_eq!(stated_model.code(), Code::FailedPrecondition);
    let search = |top_k: u32, q: pb::Query| pb::SearchRequest {
        exact: false,
        collection: "c".into(),
        query: Some(q),
        top_k,
        filter: HashMap::new(),
        model: String::new(),
    };
    let e = c
        .search(search(6, vector(vec![1.0; 32])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("--max-top-k"), "{}", e.message());
    let e = c.search(search(1, vector(vec![1.0; 3]))).await.unwrap_err();
    assert!(
        e.message().starts_with("query.vector: 3 values"),
        "{}",
        e.message()
    );
    let e = c
        .search(pb::SearchRequest {
            exact: false,
            collection: "other-model".into(),
            ..search(1, text("a cat"))
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    for (name, code) in [
        ("c", Code::AlreadyExists),
        ("Bad Name", Code::InvalidArgument),
    ] {
        let e = c
            .create_collection(pb::CreateCollectionRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{name}");
    }
    let e = c
        .delete_collection(pb::DeleteCollectionRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .rank(pb::RankRequest {
            query: Some(text("a")),
            candidates: vec![text("b"), pb::Query { query: None }],
            top_k: 0,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("candidates[1]:"), "{}", e.message());
    // Nothing half-written: the collection is still empty and usable.
    let ok = c
        .upsert(upsert("c", vec![item("fine", Some(v(32, 1.0)))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.count, 1);
}

/// CreateCollection's own settings (HNSW build, recall target): kept with the collection across
/// a restart and reported by Get/List; a bad one is INVALID_ARGUMENT naming its field, over gRPC
/// and HTTP alike.
#[tokio::test]
async fn collection_options_are_kept_and_bad_ones_are_named() {
    let cfg = config(&tiny_model());
    let server = serve(cfg.clone()).await;
    let mut c = client(&server);
    let made = c
        .create_collection(pb::CreateCollectionRequest {
            name: "tuned".into(),
            hnsw_m: 32,
            hnsw_ef_construction: 100,
            recall_target: 0.98,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (made.hnsw_m, made.hnsw_ef_construction, made.recall_target),
        (32, 100, 0.98)
    );
    let plain = c
        .create_collection(pb::CreateCollectionRequest {
            name: "plain".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            plain.hnsw_m,
            plain.hnsw_ef_construction,
            plain.recall_target
        ),
        (0, 0, 0.0)
    );
    let cases: Vec<(pb::CreateCollectionRequest, &str)> = vec![
        (
            pb::CreateCollectionRequest {
                hnsw_m: 1,
                ..Default::default()
            },
            "hnsw_m",
        ),
        (
            pb::CreateCollectionRequest {
                hnsw_m: 16,
                hnsw_ef_construction: 20,
                ..Default::default()
            },
            "hnsw_ef_construction",
        ),
        (
            pb::CreateCollectionRequest {
                recall_target: 1.5,
                ..Default::default()
            },
            "recall_target",
        ),
        (
            pb::CreateCollectionRequest {
                recall_target: f32::NAN,
                ..Default::default()
            },
            "recall_target",
        ),
        (
            pb::CreateCollectionRequest {
                recall_target: -0.5,
                ..Default::default()
            },
            "recall_target",
        ),
    ];
    for (mut request, field) in cases {
        request.name = "bad".into();
        let e = c.create_collection(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    // HTTP: the same settings, the same checks.
    let http = server.server.http_addr;
    let made = post_json(
        http,
        "/v1/collections",
        &serde_json::json!({"name": "h", "hnsw_m": 24, "recall_target": 0.9}),
        None,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let made = made.json();
    assert_eq!(
        (made["hnsw_m"].as_u64(), made["recall_target"].as_f64()),
        (Some(24), Some(0.9))
    );
    assert!(made.get("hnsw_ef_construction").is_none(), "{made}");
    for (body, field) in [
        (
            serde_json::json!({"name": "x", "recall_target": 2}),
            "recall_target",
        ),
        (
            serde_json::json!({"name": "x", "hnsw_m": 5_000_000_000u64}),
            "hnsw_m",
        ),
        (serde_json::json!({"name": "x", "hnsw_m": 200}), "hnsw_m"),
    ] {
        let r = post_json(http, "/v1/collections", &body, None).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(field), "{body}: {}", r.text);
    }
    assert!(
        post_json(
            http,
            "/v1/collections",
            &serde_json::json!({"name": "x"}),
            None
        )
        .await
        .status
            == 201,
        "nothing of the bad ones was created"
    );
    // Kept across a restart.
    server.server.shutdown().await.unwrap();
    let server = serve(cfg).await;
    let mut c = client(&server);
    let got = c
        .get_collection(pb::GetCollectionRequest {
            name: "tuned".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.hnsw_m, got.hnsw_ef_construction, got.recall_target),
        (32, 100, 0.98)
    );
}
