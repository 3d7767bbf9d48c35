//! Cancellation-safe state and bounded replies (issue 20, items 7 and 13): a label-set write whose
//! caller goes away right after it began still lands whole (stored and in memory), and GetItems,
//! the collection `model` string and a collection's items are bounded. The local store's own
//! cancellation tests (upsert, delete, create, delete-collection) are unit tests in
//! src/retrieve/local.rs.

use std::time::{Duration, Instant};

use crate::common::*;
use clip_serve::grpc::pb::{self, retrieve_client::RetrieveClient};
use tonic::Code;

/// Polls a call once, then drops it: a client that hangs up right after its write began.
fn poll_once_and_drop<F: std::future::Future>(f: F) {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(f.as_mut().poll(&mut cx).is_pending(), "done in one poll");
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: never");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_label_set_create_or_delete_dropped_midway_lands_whole() {
    let cfg = config(&tiny_model());
    let data_dir = cfg.data_dir.clone();
    let server = serve(cfg).await;
    let classify = server.server.classify.clone();
    let file = data_dir.join("label_sets/pets.json");

    poll_once_and_drop(classify.create(
        "pets".into(),
        vec!["cat".into(), "dog".into()],
        vec!["a photo of a {}.".into()],
    ));
    until("the created set in memory", || classify.get("pets").is_ok()).await;
    assert!(file.exists(), "stored");
    assert!(classify.list().iter().any(|s| s.spec.name == "pets"));

    poll_once_and_drop(classify.delete("pets"));
    until("the deleted set gone from memory", || {
        classify.get("pets").is_err()
    })
    .await;
    until("the deleted set gone from disk", || !file.exists()).await;
    // Not a zombie: created again.
    classify
        .create(
            "pets".into(),
            vec!["cat".into()],
            vec!["a photo of a {}.".into()],
        )
        .await
        .expect("created again");
    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn replies_models_and_collections_are_bounded() {
    let mut cfg = config(&tiny_model());
    cfg.retrieve.max_reply_bytes = 400;
    cfg.retrieve.max_collection_items = 3;
    cfg.retrieve.max_model_bytes = 16;
    let server = serve(cfg).await;
    let mut c = RetrieveClient::new(server.channel.clone());
    let e = c
        .create_collection(pb::CreateCollectionRequest {
            name: "long-model".into(),
            dimension: 32,
            model: "m".repeat(17),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("model") && e.message().contains("--max-model-bytes"),
        "{e:?}"
    );
    c.create_collection(pb::CreateCollectionRequest {
        name: "c".into(),
        dimension: 32,
        model: "m".repeat(16),
        ..Default::default()
    })
    .await
    .expect("a model of 16 bytes");
    let item = |id: &str| pb::Item {
        id: id.into(),
        content: Some(pb::item::Content::Vector(pb::Vector {
            values: vec![1.0; 32],
        })),
        ..Default::default()
    };
    let upsert = |ids: &[&str]| pb::UpsertRequest {
        collection: "c".into(),
        items: ids.iter().map(|id| item(id)).collect(),
        ..Default::default()
    };
    c.upsert(upsert(&["a", "b", "c"]))
        .await
        .expect("at the cap");
    c.upsert(upsert(&["a"]))
        .await
        .expect("a replacement at the cap");
    let e = c.upsert(upsert(&["a", "d"])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-collection-items"), "{e:?}");
    let get = |ids: &[&str]| pb::GetItemsRequest {
        collection: "c".into(),
        ids: ids.iter().map(|id| id.to_string()).collect(),
    };
    let got = c.get_items(get(&["a", "d"])).await.expect("one item fits");
    assert_eq!(got.into_inner().items.len(), 1, "d was refused whole");
    // Each item is ~150 bytes (32 floats, id, bookkeeping): three pass 400.
    let e = c.get_items(get(&["a", "b", "c"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("--max-reply-bytes"), "{e:?}");
    server.server.shutdown().await.unwrap();
}
