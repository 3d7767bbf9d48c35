//! `--store postgres` with real server processes: two replicas on one database share collections,
//! `kill -9` of a replica in the middle of an upsert loop loses no acknowledged item, and
//! PostgreSQL stopped and started again under load gives UNAVAILABLE (Retrieve NOT_SERVING, Embed
//! still serving), then recovery without restarting the server. Skipped (with a SKIPPED line)
//! without CLIP_SERVE_TEST_POSTGRES_URL.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    common::*,
    postgres::{create_database, pg, pseudo, search, test_database, vector_item},
    signals::{ChildServer, spawn_server_in},
};
use clip_serve::{
    grpc::pb::{self, retrieve_client::RetrieveClient},
    postgres::StoreConfig,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn replica(url: &str) -> ChildServer {
    let server = spawn_server_in(
        &fresh_data_dir(),
        &["--store", "postgres", "--postgres-url", url],
    );
    server.wait_for_log("every service SERVING");
    server
}

async fn retrieve(addr: SocketAddr) -> RetrieveClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    RetrieveClient::new(channel).max_decoding_message_size(64 << 20)
}

async fn create(c: &mut RetrieveClient<Channel>, name: &str) {
    c.create_collection(pb::CreateCollectionRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .expect("create the collection");
}

fn upsert(name: &str, items: Vec<pb::Item>) -> pb::UpsertRequest {
    pb::UpsertRequest {
        collection: name.into(),
        items,
        model: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_share_collections() {
    let Some(url) = test_database().await else {
        return;
    };
    let (a, b) = (replica(&url), replica(&url));
    let (mut ca, mut cb) = (retrieve(a.grpc).await, retrieve(b.grpc).await);
    create(&mut ca, "shared").await;
    let items: Vec<pb::Item> = (0..50)
        .map(|i| vector_item(&format!("i{i}"), pseudo(i, 32), "v"))
        .collect();
    ca.upsert(upsert("shared", items.clone())).await.unwrap();
    // Through the other replica at once: the collection, its count, search and exact vectors.
    let info = cb
        .get_collection(pb::GetCollectionRequest {
            name: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.count, 50);
    let hits = cb
        .search(search("shared", pseudo(7, 32), 3, &[]))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].id, "i7");
    let got = cb
        .get_items(pb::GetItemsRequest {
            collection: "shared".into(),
            ids: (0..50).map(|i| format!("i{i}")).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.missing.is_empty());
    let sent: HashMap<String, Vec<f32>> = items
        .into_iter()
        .map(|i| match i.content {
            Some(pb::item::Content::Vector(v)) => (i.id, v.values),
            _ => unreachable!(),
        })
        .collect();
    for item in &got.items {
        assert_eq!(item.vector.as_ref().unwrap().values, sent[&item.id]);
    }
    // A write through B, deleted through A: both see it.
    cb.delete(pb::DeleteRequest {
        collection: "shared".into(),
        ids: vec!["i0".into()],
    })
    .await
    .unwrap();
    let info = ca
        .get_collection(pb::GetCollectionRequest {
            name: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.count, 49);
    ca.delete_collection(pb::DeleteCollectionRequest {
        name: "shared".into(),
    })
    .await
    .unwrap();
    let gone = cb
        .search(search("shared", pseudo(7, 32), 3, &[]))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_of_a_replica_mid_upsert_loses_no_acknowledged_item() {
    let Some(url) = test_database().await else {
        return;
    };
    let a = replica(&url);
    let mut ca = retrieve(a.grpc).await;
    create(&mut ca, "crash").await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    // Four writers, so writes are in flight when the process dies.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (mut c, acked) = (ca.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                for batch in 0.. {
                    let ids: Vec<String> = (0..20).map(|i| format!("w{w}-b{batch}-{i}")).collect();
                    let items = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            vector_item(
                                id,
                                pseudo((w * 1_000_000 + batch * 20 + i) as u64, 32),
                                "v",
                            )
                        })
                        .collect();
                    match c.upsert(upsert("crash", items)).await {
                        Ok(_) => acked.lock().unwrap().extend(ids),
                        Err(_) => return batch,
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let started = Instant::now();
    while acked.lock().unwrap().len() < 400 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too few writes acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.signal("-KILL");
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    drop(a);
    // Another replica finds every acknowledged item, exactly.
    let b = replica(&url);
    let mut cb = retrieve(b.grpc).await;
    for chunk in acked.chunks(500) {
        let got = cb
            .get_items(pb::GetItemsRequest {
                collection: "crash".into(),
                ids: chunk.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            got.missing.is_empty(),
            "lost {} acknowledged items: {:?}",
            got.missing.len(),
            &got.missing[..got.missing.len().min(5)]
        );
    }
    let count = cb
        .get_collection(pb::GetCollectionRequest {
            name: "crash".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .count as usize;
    assert!(
        count >= acked.len(),
        "count {count} < {} acknowledged",
        acked.len()
    );
    assert_eq!(
        count % 20,
        0,
        "whole batches only: each Upsert is one transaction"
    );
}

/// A PostgreSQL instance of this test's own (it is stopped under load), from scripts/postgres.sh.
struct OwnPostgres(String);

impl OwnPostgres {
    fn run(&self, command: &str) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .args([command, &self.0])
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "postgres.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .args(["stop", &self.0])
            .output();
    }
}

async fn status(health: &mut HealthClient<Channel>, service: &str) -> i32 {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_under_load_is_unavailable_then_recovers() {
    if test_database().await.is_none() {
        return;
    }
    let own = OwnPostgres(format!("restart-{}", std::process::id()));
    let admin = own.run("start");
    let url = create_database(&admin).await;
    let mut cfg = config(&tiny_model());
    let mut pg_config = pg(&url);
    pg_config.connect_timeout = Duration::from_secs(1);
    cfg.store = StoreConfig::Postgres(pg_config);
    let server = serve(cfg).await;
    let mut c = RetrieveClient::new(server.channel.clone());
    let mut health = HealthClient::new(server.channel.clone());
    create(&mut c, "load").await;
    let outcomes: Arc<Mutex<Vec<Result<(), tonic::Status>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (mut c, outcomes, stop) = (c.clone(), Arc::clone(&outcomes), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let item = vector_item(&format!("x{n}"), pseudo(n, 32), "v");
                let r = c.upsert(upsert("load", vec![item])).await.map(|_| ());
                let s = c
                    .search(search("load", pseudo(n, 32), 5, &[]))
                    .await
                    .map(|_| ());
                outcomes.lock().unwrap().extend([r, s]);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    own.run("halt");
    let halted = Instant::now();
    // Calls fail UNAVAILABLE naming the store; Retrieve turns NOT_SERVING; Embed keeps serving.
    loop {
        assert!(
            halted.elapsed() < Duration::from_secs(30),
            "never UNAVAILABLE"
        );
        let unavailable = outcomes.lock().unwrap().iter().any(|o| {
            matches!(o, Err(s) if s.code() == Code::Unavailable && s.message().contains("PostgreSQL"))
        });
        if unavailable
            && status(&mut health, "clip.v1.Retrieve").await == ServingStatus::NotServing as i32
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server as a whole ("", what Kubernetes' gRPC probes ask) stays SERVING: the pod keeps
    // embedding and classifying.
    for service in ["clip.v1.Embed", "clip.v1.Classify", ""] {
        assert_eq!(
            status(&mut health, service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["still embedding".into()],
        })
        .await
        .expect("Embed serves without PostgreSQL");
    let bad: Vec<String> = outcomes
        .lock()
        .unwrap()
        .iter()
        .filter_map(|o| o.as_ref().err())
        .filter(|s| s.code() != Code::Unavailable)
        .map(|s| format!("{:?}: {}", s.code(), s.message()))
        .collect();
    assert!(
        bad.is_empty(),
        "only UNAVAILABLE while PostgreSQL is down: {bad:?}"
    );
    own.run("resume");
    let resumed = Instant::now();
    loop {
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        let last_ok = outcomes
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(2)
            .all(|o| o.is_ok());
        if last_ok && status(&mut health, "clip.v1.Retrieve").await == ServingStatus::Serving as i32
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
}
