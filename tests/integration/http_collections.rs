//! Collections over REST (`/v1/collections`): the same operations over HTTP and gRPC give the same
//! results (search ids and scores, GetItems vectors exactly as sent), and the same failures get the
//! matching statuses (a bad item named, a wrong key refused, an unknown collection 404, a second
//! create 409).

use std::collections::HashMap;

use crate::common::*;
use crate::http_clients::{CAT, b64, image, keyed, post_json, request};
use clip_serve::{
    grpc::pb::{self, retrieve_client::RetrieveClient},
    security::Secret,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

fn client(server: &TestServer) -> RetrieveClient<Channel> {
    RetrieveClient::new(server.channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn content(c: &Value) -> Option<pb::item::Content> {
    if let Some(t) = c.get("text").and_then(Value::as_str) {
        return Some(pb::item::Content::Text(t.into()));
    }
    if c.get("image").is_some() {
        return Some(pb::item::Content::Image(image(CAT).into()));
    }
    c.get("vector")
        .map(|v| pb::item::Content::Vector(pb::Vector { values: floats(v) }))
}

fn query(c: &Value) -> pb::Query {
    pb::Query {
        query: content(c).map(|c| match c {
            pb::item::Content::Text(t) => pb::query::Query::Text(t),
            pb::item::Content::Image(b) => pb::query::Query::Image(b),
            pb::item::Content::Vector(v) => pb::query::Query::Vector(v),
        }),
    }
}

#[tokio::test]
async fn collections_over_http_equal_grpc() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let mut grpc = client(&server);
    let key = Some("k1");

    // Create: 201 over HTTP, the same collection as gRPC's; a second create is 409.
    let made = post_json(http, "/v1/collections", &json!({"name": "h"}), key).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let g = grpc
        .create_collection(keyed(pb::CreateCollectionRequest {
            name: "g".into(),
            dimension: 0,
            model: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let made = made.json();
    assert_eq!(made["dimension"], g.dimension);
    assert_eq!(made["model"], g.model.as_str());
    assert_eq!(made["count"], 0);
    assert_eq!(
        (&made["index"], &made["ready"]),
        (&json!("exact"), &json!(true))
    );
    let dim = g.dimension as usize;
    let again = post_json(http, "/v1/collections", &json!({"name": "h"}), key).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.json()["error"]["code"], "already_exists");

    // The same items into both: texts, an image (base64 and data URI), and client vectors.
    let raw: Vec<f32> = (0..dim)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0)
        .collect();
    let other: Vec<f32> = (0..dim).map(|i| ((i % 5) as f32) - 2.5).collect();
    let cat_b64 = b64(&image(CAT));
    let items = vec![
        json!({"id": "t1", "text": "a photo of a cat", "metadata": {"kind": "text", "n": "1"}}),
        json!({"id": "t2", "text": "an astronaut", "metadata": {"kind": "text"}}),
        json!({"id": "i1", "image": cat_b64, "metadata": {"kind": "image"}}),
        json!({"id": "i2", "image": format!("data:image/jpeg;base64,{cat_b64}"), "metadata": {"kind": "image"}}),
        json!({"id": "v1", "vector": raw, "metadata": {"kind": "vector"}}),
        json!({"id": "v2", "vector": other}),
    ];
    let up = post_json(
        http,
        "/v1/collections/h/items",
        &json!({"items": items}),
        key,
    )
    .await;
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(up.json(), json!({"upserted": 6, "count": 6}));
    let pb_items = items
        .iter()
        .map(|i| pb::Item {
            id: i["id"].as_str().unwrap().into(),
            content: content(i),
            metadata: i
                .get("metadata")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let up = grpc
        .upsert(keyed(pb::UpsertRequest {
            collection: "g".into(),
            items: pb_items,
            model: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((up.upserted, up.count), (6, 6));

    // Searches by text, image and vector, with and without a filter: the same ids and scores.
    let queries = [
        json!({"text": "a photo of a cat"}),
        json!({"image": format!("data:image/jpeg;base64,{cat_b64}")}),
        json!({"vector": raw}),
    ];
    for q in &queries {
        for (filter, exact) in [
            (json!({}), false),
            (json!({"kind": "text"}), true),
            (json!({"kind": "image"}), false),
        ] {
            let got = post_json(
                http,
                "/v1/collections/h/search",
                &json!({"query": q, "top_k": 4, "filter": filter, "exact": exact}),
                key,
            )
            .await;
            assert_eq!(got.status, 200, "{}", got.text);
            let got = got.json();
            let filter_map: HashMap<String, String> = filter
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
                .collect();
            let want = grpc
                .search(keyed(pb::SearchRequest {
                    exact,
                    collection: "g".into(),
                    query: Some(query(q)),
                    top_k: 4,
                    filter: filter_map,
                    model: String::new(),
                }))
                .await
                .unwrap()
                .into_inner()
                .hits;
            let hits = got["hits"].as_array().unwrap();
            assert_eq!(hits.len(), want.len(), "{q} {filter}: {got}");
            assert!(!hits.is_empty(), "{q} {filter}");
            for (h, w) in hits.iter().zip(&want) {
                assert_eq!(h["id"], w.id.as_str(), "{q} {filter}");
                assert_eq!(h["score"].as_f64().unwrap() as f32, w.score, "{q} {filter}");
                let md: HashMap<String, String> =
                    serde_json::from_value(h["metadata"].clone()).unwrap();
                assert_eq!(md, w.metadata);
            }
        }
    }

    // GetItems: vectors exactly as sent, embeddings as gRPC stores them, the missing ids listed.
    let ids = ["v1", "t1", "i1", "nope", "i2"];
    let got = post_json(
        http,
        "/v1/collections/h/items/get",
        &json!({"ids": ids}),
        key,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = got.json();
    let want = grpc
        .get_items(keyed(pb::GetItemsRequest {
            collection: "g".into(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got["missing"], json!(want.missing));
    assert_eq!(got["missing"], json!(["nope"]));
    let got_items = got["items"].as_array().unwrap();
    assert_eq!(got_items.len(), 4);
    assert_eq!(floats(&got_items[0]["vector"]), raw, "exactly as sent");
    for (h, w) in got_items.iter().zip(&want.items) {
        assert_eq!(h["id"], w.id.as_str());
        assert_eq!(floats(&h["vector"]), w.vector.as_ref().unwrap().values);
        let md: HashMap<String, String> = serde_json::from_value(h["metadata"].clone()).unwrap();
        assert_eq!(md, w.metadata);
    }
    assert_eq!(
        got_items[1]["metadata"],
        json!(metadata(&[("kind", "text"), ("n", "1")]))
    );

    // A bad item is refused whole, by name, with the gRPC message.
    let bad = post_json(
        http,
        "/v1/collections/h/items",
        &json!({"items": [{"id": "ok", "text": "fine"}, {"id": "x", "vector": [1.0, 2.0]}]}),
        key,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    let bad = bad.json();
    let message = bad["error"]["message"].as_str().unwrap().to_string();
    assert!(message.starts_with("items[1].vector"), "{message}");
    let status = grpc
        .upsert(keyed(pb::UpsertRequest {
            collection: "g".into(),
            items: vec![
                pb::Item {
                    id: "ok".into(),
                    content: Some(pb::item::Content::Text("fine".into())),
                    metadata: HashMap::new(),
                },
                pb::Item {
                    id: "x".into(),
                    content: Some(pb::item::Content::Vector(pb::Vector {
                        values: vec![1.0, 2.0],
                    })),
                    metadata: HashMap::new(),
                },
            ],
            model: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), message);
    let bad = post_json(
        http,
        "/v1/collections/h/items",
        &json!({"items": [{"id": "a", "text": "t"}, {"id": "b", "text": "t", "vector": [1.0]}]}),
        key,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("items[1]: more than one"), "{}", bad.text);
    let bad = post_json(
        http,
        "/v1/collections/h/items",
        &json!({"items": [{"id": "a", "image": "%%%"}]}),
        key,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("items[0].image"), "{}", bad.text);
    let top = post_json(
        http,
        "/v1/collections/h/search",
        &json!({"query": {"text": "x"}, "top_k": 1_000_000}),
        key,
    )
    .await;
    assert_eq!(top.status, 400, "{}", top.text);
    assert_eq!(top.json()["error"]["param"], "top_k");

    // Keys, unknown collections.
    let wrong = post_json(
        http,
        "/v1/collections/h/search",
        &json!({"query": {"text": "x"}}),
        Some("nope"),
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    let none = request(http, "GET", "/v1/collections", None, None).await;
    assert_eq!(none.status, 401, "{}", none.text);
    for (method, path, body) in [
        ("GET", "/v1/collections/missing", None),
        ("DELETE", "/v1/collections/missing", None),
        (
            "POST",
            "/v1/collections/missing/search",
            Some(json!({"query": {"text": "x"}})),
        ),
        (
            "POST",
            "/v1/collections/missing/items",
            Some(json!({"items": [{"id": "a", "text": "x"}]})),
        ),
        (
            "POST",
            "/v1/collections/missing/items/get",
            Some(json!({"ids": ["a"]})),
        ),
    ] {
        let body = body.map(|b| b.to_string());
        let reply = request(
            http,
            method,
            path,
            body.as_deref().map(|b| ("application/json", b.as_bytes())),
            key,
        )
        .await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text);
        assert_eq!(reply.json()["error"]["code"], "not_found");
    }

    // Get, list, delete items, delete the collection.
    let one = request(http, "GET", "/v1/collections/h", None, key).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json()["count"], 6);
    let all = request(http, "GET", "/v1/collections", None, key).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let names: Vec<String> = all.json()["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["g", "h"]);
    let del = post_json(
        http,
        "/v1/collections/h/items/delete",
        &json!({"ids": ["t1", "nope"]}),
        key,
    )
    .await;
    assert_eq!(
        del.json(),
        json!({"deleted": 1, "count": 5}),
        "{}",
        del.text
    );
    let del = request(http, "DELETE", "/v1/collections/h/items/t2", None, key).await;
    assert_eq!(
        del.json(),
        json!({"deleted": 1, "count": 4}),
        "{}",
        del.text
    );
    let gone = request(http, "DELETE", "/v1/collections/h", None, key).await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    assert_eq!(gone.json(), json!({"name": "h", "deleted": true}));
    let after = request(http, "GET", "/v1/collections/h", None, key).await;
    assert_eq!(after.status, 404, "{}", after.text);
    // The gRPC side sees the HTTP side's deletion.
    let listed = grpc
        .list_collections(keyed(pb::ListCollectionsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = listed.collections.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["g"]);
}

#[tokio::test]
async fn collection_bodies_are_bounded_while_parsing() {
    let mut cfg = config(&tiny_model());
    cfg.retrieve.max_upsert_items = 8;
    cfg.max_json_depth = 4;
    cfg.max_json_bytes = 64 * 1024;
    let max_metadata_bytes = cfg.retrieve.max_metadata_bytes;
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let made = post_json(http, "/v1/collections", &json!({"name": "c"}), None).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let ids: Vec<String> = (0..=8).map(|i| i.to_string()).collect();
    let over = post_json(
        http,
        "/v1/collections/c/items/get",
        &json!({"ids": ids}),
        None,
    )
    .await;
    assert_eq!(over.status, 400, "{}", over.text);
    assert!(over.text.contains("--max-upsert-items"), "{}", over.text);
    let bad = post_json(
        http,
        "/v1/collections/c/items/get",
        &json!({"ids": ["a", 3]}),
        None,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("ids[1]"), "{}", bad.text);
    let empty = post_json(http, "/v1/collections/c/items", &json!({"items": []}), None).await;
    assert_eq!(empty.status, 400, "{}", empty.text);
    assert!(empty.text.contains("items: none given"), "{}", empty.text);
    // Free-form JSON and filters are held to the server's flags while they are parsed.
    let refused = [
        (
            "/v1/collections/c/items",
            json!({"items": [{"id": "a", "vector": [[[[[1.0]]]]]}]}),
            "(--max-json-depth)",
        ),
        (
            "/v1/collections/c/items",
            json!({"items": [{"id": "a", "vector": vec![0.5; 4096]}]}),
            "(--max-json-bytes)",
        ),
        (
            "/v1/collections/c/search",
            json!({"query": {"text": "a"}, "filter": {"k": "x".repeat(max_metadata_bytes)}}),
            "(--max-metadata-bytes)",
        ),
    ];
    for (path, body, flag) in refused {
        let r = post_json(http, path, &body, None).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(r.text.contains(flag), "{path}: {}", r.text);
    }
}
