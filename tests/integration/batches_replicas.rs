//! The Batch API with `--store postgres`: two replicas on one database share files and batches
//! (a key sees, cancels and downloads its own through either, another key sees none), both work
//! batches, and a batch whose replica was killed (`kill -9`) is taken over by the other once its
//! lease runs out, finishing with each line exactly once, the lines finished before the kill not
//! redone, and answers equal to the synchronous route's. Skipped (with a SKIPPED line) without
//! CLIP_SERVE_TEST_POSTGRES_URL.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use clip_serve::{
    jobs::{Batch, FileMeta, SharedStore, postgres::PgJobs},
    postgres::StoreConfig,
};
use deadpool_postgres::tokio_postgres::{self, NoTls};
use serde_json::{Value, json};

use crate::{
    batches::{
        call, content, e_id, keys_file, same_answer, texts_file, upload, wait_final, wait_ready,
    },
    common::*,
    postgres::{pg, test_database},
};

async fn db(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The replica holding (or last holding) batch `id`'s lease.
async fn lease_owner(db: &tokio_postgres::Client, id: &str) -> Option<String> {
    db.query_one("SELECT lease_owner FROM clip_batches WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Finished line records of batch `id` in PostgreSQL: index -> the output line's id.
async fn recorded(db: &tokio_postgres::Client, id: &str) -> HashMap<usize, String> {
    db.query(
        "SELECT idx, line FROM clip_batch_lines WHERE batch = $1",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let line: Value = serde_json::from_str(r.get::<_, &str>(1)).unwrap();
        (
            usize::try_from(r.get::<_, i32>(0)).unwrap(),
            line["id"].as_str().unwrap().to_string(),
        )
    })
    .collect()
}

async fn wait_completed_at_least(http: SocketAddr, key: &str, id: &str, n: u64) {
    let started = Instant::now();
    loop {
        let (status, b) = call(http, "GET", &format!("/v1/batches/{id}"), key, None).await;
        assert_eq!(status, 200, "{b}");
        if b["request_counts"]["completed"].as_u64().unwrap() >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress: {b}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn create_body(file: &Value) -> Value {
    json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"})
}

/// A completed batch of `n` lines of `texts_file`: each line once, in input order, answers equal
/// to the synchronous route's (through `live`).
async fn check_output(http: SocketAddr, live: SocketAddr, key: &str, b: &Value, n: usize) {
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": n, "completed": n, "failed": 0})
    );
    let output = content(http, key, b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len(), n, "each line exactly once");
    let ids: HashSet<&str> = output
        .iter()
        .map(|o| o["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n);
    for (i, out) in output.iter().enumerate() {
        assert_eq!(out["custom_id"], format!("line-{i}"));
        assert_eq!(out["response"]["status_code"], 200, "{out}");
    }
    for i in [0, n / 2, n - 1] {
        let input: Vec<String> = (0..4).map(|j| format!("photo {i} of thing {j}")).collect();
        let (status, sync) = call(
            live,
            "POST",
            "/v1/embeddings",
            key,
            Some(&json!({"input": input})),
        )
        .await;
        assert_eq!(status, 200, "{sync}");
        same_answer(&output[i]["response"]["body"], &sync);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_share_batches_per_key_and_both_work_them() {
    let Some(url) = test_database().await else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let replica_config = || {
        let mut cfg = config(&tiny_model());
        cfg.store = StoreConfig::Postgres(pg(&url));
        cfg.api_key_file = Some(keys_file(keys.path()));
        cfg.jobs.max_jobs_in_flight = 1;
        cfg.jobs.line_concurrency = 1;
        cfg.jobs.lease = Duration::from_secs(3);
        cfg.jobs.max_files_per_key = 2;
        cfg
    };
    let db = db(&url).await;
    let a = serve(replica_config()).await;
    let a_http = a.server.http_addr;
    let (status, file_x) = upload(a_http, "sk-alice", "batch", &texts_file(2000)).await;
    assert_eq!(status, 200, "{file_x}");
    let (status, x) = call(
        a_http,
        "POST",
        "/v1/batches",
        "sk-alice",
        Some(&create_body(&file_x)),
    )
    .await;
    assert_eq!(status, 200, "{x}");
    let x = e_id(&x);
    wait_completed_at_least(a_http, "sk-alice", &x, 2).await;

    // Replica B, on the same database: A's file and batch, for alice only.
    let b = serve(replica_config()).await;
    let b_http = b.server.http_addr;
    let (status, got) = call(b_http, "GET", &format!("/v1/batches/{x}"), "sk-alice", None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (got["id"].as_str(), got["status"].as_str()),
        (Some(x.as_str()), Some("in_progress"))
    );
    assert!(
        got["request_counts"]["completed"].as_u64().unwrap() >= 2,
        "{got}"
    );
    let (status, _) = call(b_http, "GET", &format!("/v1/batches/{x}"), "sk-bob", None).await;
    assert_eq!(status, 404, "another key's batch is not found");
    let (_, list) = call(b_http, "GET", "/v1/batches", "sk-alice", None).await;
    assert_eq!(list["data"][0]["id"].as_str(), Some(x.as_str()), "{list}");
    let (_, list) = call(b_http, "GET", "/v1/batches", "sk-bob", None).await;
    assert_eq!(list["data"], json!([]), "{list}");
    let (_, files) = call(b_http, "GET", "/v1/files", "sk-alice", None).await;
    assert_eq!(files["data"][0]["id"], file_x["id"], "{files}");
    let (_, files) = call(b_http, "GET", "/v1/files", "sk-bob", None).await;
    assert_eq!(files["data"], json!([]), "{files}");

    // A second batch, created on B, is worked by B while A works the first.
    let (status, file_y) = upload(b_http, "sk-alice", "batch", &texts_file(40)).await;
    assert_eq!(status, 200, "{file_y}");
    // The per-key file bound holds across replicas.
    let (status, e) = upload(a_http, "sk-alice", "batch", &texts_file(1)).await;
    assert_eq!(status, 429, "{e}");
    let (status, y) = call(
        b_http,
        "POST",
        "/v1/batches",
        "sk-alice",
        Some(&create_body(&file_y)),
    )
    .await;
    assert_eq!(status, 200, "{y}");
    let y = e_id(&y);
    let done_y = wait_final(a_http, "sk-alice", &y).await;
    check_output(a_http, b_http, "sk-alice", &done_y, 40).await;
    let (owner_x, owner_y) = (lease_owner(&db, &x).await, lease_owner(&db, &y).await);
    assert!(owner_x.is_some() && owner_y.is_some());
    assert_ne!(owner_x, owner_y, "both replicas work batches");

    // Cancelled through B (bob cannot), finished by A with what it did.
    let (status, _) = call(
        b_http,
        "POST",
        &format!("/v1/batches/{x}/cancel"),
        "sk-bob",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, c) = call(
        b_http,
        "POST",
        &format!("/v1/batches/{x}/cancel"),
        "sk-alice",
        None,
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["status"], "cancelling", "{c}");
    let done_x = wait_final(b_http, "sk-alice", &x).await;
    assert_eq!(done_x["status"], "cancelled", "{done_x}");
    let n = done_x["request_counts"]["completed"].as_u64().unwrap();
    assert!((2..2000).contains(&n), "{done_x}");
    let out_id = done_x["output_file_id"].as_str().unwrap();
    let output = content(b_http, "sk-alice", out_id).await;
    assert_eq!(output.len() as u64, n);
    let (status, _) = call(
        b_http,
        "GET",
        &format!("/v1/files/{out_id}/content"),
        "sk-bob",
        None,
    )
    .await;
    assert_eq!(status, 404);
    // The input is free again: deleted through A, gone on B.
    let (status, e) = call(
        a_http,
        "DELETE",
        &format!("/v1/files/{}", e_id(&file_x)),
        "sk-alice",
        None,
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let (status, _) = call(
        b_http,
        "GET",
        &format!("/v1/files/{}", e_id(&file_x)),
        "sk-alice",
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Final batches keep no line records.
    let left: i64 = db
        .query_one("SELECT count(*) FROM clip_batch_lines", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// `kill -9` of the replica working a batch: the other takes it over once the lease runs out.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_killed_replicas_batch_is_taken_over_with_each_line_once() {
    const N: usize = 400;
    let Some(url) = test_database().await else {
        return;
    };
    let db = db(&url).await;
    let args = [
        "--store",
        "postgres",
        "--postgres-url",
        url.as_str(),
        "--batch-lease",
        "1s",
        "--batch-line-concurrency",
        "1",
    ];
    let mut a = crate::signals::spawn_server_in(&fresh_data_dir(), &args);
    wait_ready(a.http).await;
    let (_, file) = upload(a.http, "", "batch", &texts_file(N)).await;
    let (status, batch) = call(a.http, "POST", "/v1/batches", "", Some(&create_body(&file))).await;
    assert_eq!(status, 200, "{batch}");
    let id = e_id(&batch);
    wait_completed_at_least(a.http, "", &id, 5).await;
    let owner_a = lease_owner(&db, &id).await;

    let mut cfg = config(&tiny_model());
    cfg.store = StoreConfig::Postgres(pg(&url));
    cfg.jobs.lease = Duration::from_secs(1);
    cfg.jobs.line_concurrency = 1;
    let b = serve(cfg).await;
    let b_http = b.server.http_addr;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let before = recorded(&db, &id).await;
    assert!(
        before.len() >= 5 && before.len() < N,
        "{} lines done at the kill",
        before.len()
    );

    let done = wait_final(b_http, "", &id).await;
    check_output(b_http, b_http, "", &done, N).await;
    let output = content(b_http, "", done["output_file_id"].as_str().unwrap()).await;
    for (i, before) in &before {
        assert_eq!(
            output[*i]["id"].as_str(),
            Some(before.as_str()),
            "line {i} was redone"
        );
    }
    let owner_b = lease_owner(&db, &id).await;
    assert!(owner_b.is_some());
    assert_ne!(owner_a, owner_b, "the other replica took the batch over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_bounds_hold_across_replicas() {
    let Some(url) = test_database().await else {
        return;
    };
    let replica_config = || {
        let mut cfg = config(&tiny_model());
        cfg.store = StoreConfig::Postgres(pg(&url));
        cfg.jobs.line_concurrency = 1;
        cfg.jobs.lease = Duration::from_secs(1);
        cfg.jobs.max_output_bytes = 1;
        cfg.jobs.max_active_batches_per_key = 1;
        cfg.jobs.max_bytes_per_key = 40_000;
        cfg
    };
    let (a, b) = (serve(replica_config()).await, serve(replica_config()).await);
    let (a_http, b_http) = (a.server.http_addr, b.server.http_addr);
    let (status, file) = upload(a_http, "", "batch", &texts_file(200)).await;
    assert_eq!(status, 200, "{file}");
    // The key's bytes are counted across replicas.
    let (status, e) = upload(b_http, "", "batch", &texts_file(200)).await;
    assert_eq!(status, 429, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--batch-max-bytes-per-key"),
        "{e}"
    );
    let (status, first) = call(a_http, "POST", "/v1/batches", "", Some(&create_body(&file))).await;
    assert_eq!(status, 200, "{first}");
    let (status, e) = call(b_http, "POST", "/v1/batches", "", Some(&create_body(&file))).await;
    assert_eq!(
        status, 429,
        "a second unfinished batch, on the other replica: {e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--batch-max-active-per-key"),
        "{e}"
    );
    let done = wait_final(b_http, "", &e_id(&first)).await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 200, "completed": 0, "failed": 200}),
        "{done}"
    );
    assert_eq!(done["output_file_id"], Value::Null);
    let errors = content(a_http, "", done["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.len(), 200);
    assert_eq!(
        errors[0]["error"]["code"], "output_too_large",
        "{}",
        errors[0]
    );
    let (status, e) = call(b_http, "POST", "/v1/batches", "", Some(&create_body(&file))).await;
    assert_eq!(status, 200, "finished: another batch may start: {e}");
}

fn batch_record(id: &str, input: &str) -> Batch {
    serde_json::from_value(json!({
        "id": id, "owner": "k", "seq": 0, "endpoint": "/v1/embeddings", "input_file_id": input,
        "completion_window": "24h", "metadata": null, "status": "in_progress", "created_at": 0,
        "expires_at": u64::MAX / 2, "in_progress_at": null, "finalizing_at": null,
        "completed_at": null, "failed_at": null, "expired_at": null, "cancelling_at": null,
        "cancelled_at": null, "output_file_id": null, "error_file_id": null, "errors": [],
        "request_counts": {"total": 3, "completed": 0, "failed": 0},
    }))
    .unwrap()
}

/// The store's lease rules directly: one holder at a time, a line stored and counted once, a
/// replica that lost the lease can store nothing more, and a lease let go is claimable at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_are_exclusive_and_lines_are_stored_once() {
    let Some(url) = test_database().await else {
        return;
    };
    let store = PgJobs::new(clip_serve::postgres::pool(&pg(&url)).unwrap());
    let file = FileMeta {
        id: "file-in".into(),
        owner: "k".into(),
        bytes: 3,
        created_at: 0,
        filename: "in.jsonl".into(),
        purpose: "batch".into(),
        seq: 0,
    };
    store
        .create_file(
            &file,
            bytes::Bytes::from_static(b"{}\n"),
            Box::new(|_, _| Ok(())),
        )
        .await
        .unwrap();
    let batch = batch_record("batch_lease", "file-in");
    store
        .create_batch(&batch, Box::new(|_| Ok(())))
        .await
        .unwrap();
    let lease = Duration::from_millis(300);
    let claimed = store.claim("r1", lease, 5).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        store.claim("r2", lease, 5).await.unwrap().is_empty(),
        "held by r1"
    );
    let line = json!({"custom_id": "a"});
    store
        .write_line("r1", "batch_lease", 0, true, &line)
        .await
        .unwrap();
    // A redo of a stored line (as after a takeover) is neither stored nor counted again.
    store
        .write_line("r1", "batch_lease", 0, false, &line)
        .await
        .unwrap();
    let index = store.line_index("batch_lease").await.unwrap();
    assert_eq!(index.len(), 1);
    assert!(index[&0].0, "the first outcome stays");
    let got = store.get_batch("batch_lease").await.unwrap().unwrap();
    assert_eq!(
        (got.request_counts.completed, got.request_counts.failed),
        (1, 0)
    );
    // r1 stops renewing: once the lease runs out r2 takes the batch, and r1 can store nothing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store
            .renew("r1", "batch_lease", lease)
            .await
            .unwrap()
            .is_none()
    );
    let long = Duration::from_secs(30);
    assert_eq!(store.claim("r2", long, 5).await.unwrap().len(), 1);
    let e = store
        .write_line("r1", "batch_lease", 1, true, &line)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lease"), "{e}");
    let e = store
        .update_batch("batch_lease", Some("r1"), Box::new(|_| Ok(true)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lease"), "{e}");
    let (mut out, mut err) = (file.clone(), file.clone());
    (out.id, err.id) = ("file-out".into(), "file-err".into());
    let e = store
        .assemble("r1", "batch_lease", &mut out, &mut err, &[])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lease"), "{e}");
    assert!(store.get_file("file-out").await.unwrap().is_none());
    store
        .write_line("r2", "batch_lease", 1, true, &line)
        .await
        .unwrap();
    assert!(
        store
            .renew("r2", "batch_lease", long)
            .await
            .unwrap()
            .is_some()
    );
    // Let go: claimable at once by another.
    store.release("r2", "batch_lease").await.unwrap();
    assert_eq!(
        store
            .claim("r3", Duration::from_secs(30), 5)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.line_index("batch_lease").await.unwrap().len(), 2);
    // The holder assembles the output from the stored lines, in index order.
    let sizes = store
        .assemble("r3", "batch_lease", &mut out, &mut err, &[])
        .await
        .unwrap();
    let text = store.file_content("file-out").await.unwrap().unwrap();
    assert_eq!(text, "{\"custom_id\":\"a\"}\n{\"custom_id\":\"a\"}\n");
    assert_eq!(sizes, (text.len() as u64, 0));
    // The input of an unfinished batch cannot be deleted.
    assert!(store.delete_file("k", "file-in").await.is_err());
}
