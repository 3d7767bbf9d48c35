//! `clip-serve index` and `clip-serve search` against an in-process server.

use clip_serve::grpc::client::{
    index::{self, IndexArgs},
    search::{self, SearchArgs},
};

use crate::common::*;

fn args(addr: String, dir: &std::path::Path, collection: &str) -> IndexArgs {
    IndexArgs {
        dir: dir.to_path_buf(),
        addr,
        collection: collection.into(),
        create: true,
        recursive: true,
        concurrency: 2,
        batch: 2,
        batch_bytes: 16 << 20,
        metadata_from_path: true,
        api_key: None,
    }
}

/// A folder with photos at two depths (one without an image extension), a text file and a
/// broken JPEG: the photos are indexed with their relative paths as ids, the text file is
/// skipped, the broken file fails alone; a second run skips everything already present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_is_indexed_resumably_and_searchable() {
    let server = serve(config(&tiny_model())).await;
    let addr = format!("http://{}", server.server.grpc_addr);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("trip/day1")).unwrap();
    let copy = |fixture: &str, to: &str| {
        std::fs::write(root.join(to), read_fixture(fixture)).unwrap();
    };
    copy("images/chelsea_baseline_420.jpg", "cat.jpg");
    copy("images/rocket_palette.png", "trip/rocket");
    copy("images/coffee_small.bmp", "trip/day1/coffee.bmp");
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    std::fs::write(root.join("trip/broken.jpg"), b"\xFF\xD8\xFF\xE0 garbage").unwrap();

    let first = index::run(&args(addr.clone(), root, "photos"))
        .await
        .unwrap();
    assert_eq!(first.images, 4, "{first:?}");
    assert_eq!(first.indexed, 3, "{first:?}");
    assert_eq!(first.not_images, 1);
    assert_eq!(first.already_present, 0);
    assert_eq!(first.failed.len(), 1, "{first:?}");
    assert_eq!(first.failed[0].0, "trip/broken.jpg");
    assert!(
        first.failed[0].1.contains("JPEG"),
        "the reason is the server's: {:?}",
        first.failed[0].1
    );

    let second = index::run(&args(addr.clone(), root, "photos"))
        .await
        .unwrap();
    assert_eq!(second.indexed, 0, "{second:?}");
    assert_eq!(second.already_present, 3);
    assert_eq!(
        second.failed.len(),
        1,
        "the broken file is tried again and fails again"
    );

    let hits = search::run(&SearchArgs {
        query: Some("a photo".into()),
        image: None,
        addr: addr.clone(),
        collection: "photos".into(),
        top_k: 10,
        filter: vec![("dir".into(), "trip/day1".into())],
        api_key: None,
    })
    .await
    .unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["trip/day1/coffee.bmp"], "the filter on path metadata");
    let all = search::run(&SearchArgs {
        query: None,
        image: Some(root.join("cat.jpg")),
        addr: addr.clone(),
        collection: "photos".into(),
        top_k: 10,
        filter: vec![],
        api_key: None,
    })
    .await
    .unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].id, "cat.jpg", "an image finds itself first");
    assert!(search::render(&all).contains("name=cat.jpg"));

    // Not recursive: only the top-level photo, into a new collection.
    let mut flat = args(addr.clone(), root, "flat");
    flat.recursive = false;
    let report = index::run(&flat).await.unwrap();
    assert_eq!((report.images, report.indexed), (1, 1), "{report:?}");

    // Without --create, an unknown collection is an error before anything is sent.
    let mut missing = args(addr, root, "nowhere");
    missing.create = false;
    let e = index::run(&missing).await.unwrap_err().to_string();
    assert!(e.contains("nowhere"), "{e}");
}
