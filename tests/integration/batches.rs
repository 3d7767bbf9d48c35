//! OpenAI's Batch API (`/v1/files`, `/v1/batches`): a JSONL of requests runs to `completed` and
//! each output line equals the synchronous route's answer; keys see only their own files and
//! batches; bounds answer clear 4xx; cancel; a server stopped mid-job and restarted on the same
//! data dir finishes the job with each line exactly once and no finished line redone. (The
//! official `openai` SDK drives the same routes in scripts/openai_sdk_test.py.)

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A raw HTTP/1.1 request: status and body.
pub(crate) async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let content_type = content_type.map_or(String::new(), |t| format!("Content-Type: {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n{content_type}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_http(&raw).expect("an HTTP response")
}

pub(crate) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let content_type = body.map(|_| "application/json");
    let (status, text) = send(addr, method, path, key, content_type, &bytes).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Uploads `content` as the SDK does (multipart: `purpose`, then `file`).
pub(crate) async fn upload(
    addr: SocketAddr,
    key: &str,
    purpose: &str,
    content: &[u8],
) -> (u16, Value) {
    let boundary = "----clipservetestboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"requests.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (status, text) = send(addr, "POST", "/v1/files", key, Some(&content_type), &body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) fn jsonl(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

pub(crate) fn line(custom_id: &str, url: &str, body: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
}

/// Polls a batch until it is in a final state.
pub(crate) async fn wait_final(addr: SocketAddr, key: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, batch) = call(addr, "GET", &format!("/v1/batches/{id}"), key, None).await;
        assert_eq!(status, 200, "{batch}");
        if ["completed", "failed", "cancelled", "expired"]
            .contains(&batch["status"].as_str().unwrap())
        {
            return batch;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "batch never finished: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn content(addr: SocketAddr, key: &str, file_id: &str) -> Vec<Value> {
    let (status, text) = send(
        addr,
        "GET",
        &format!("/v1/files/{file_id}/content"),
        key,
        None,
        b"",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn keys_file(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("keys");
    std::fs::write(&file, "alice:sk-alice\nbob:sk-bob\n").unwrap();
    file
}

pub(crate) fn vectors(body: &Value) -> Vec<Vec<f64>> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// The same answer: equal JSON but for the floats of embeddings, equal to 1e-6.
pub(crate) fn same_answer(batch: &Value, live: &Value) {
    let (a, b) = (vectors(batch), vectors(live));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len());
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-6, "an embedding differs by {diff}");
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        for d in v["data"].as_array_mut().unwrap() {
            d["embedding"] = Value::Null;
        }
        v
    };
    assert_eq!(strip(batch), strip(live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lines_equal_the_synchronous_answers_and_stay_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&tiny_model());
    cfg.api_key_file = Some(keys_file(dir.path()));
    cfg.jobs.max_files_per_key = 4;
    cfg.jobs.max_file_lines = 20;
    cfg.metrics_key_names = true;
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let image = read_fixture("images/astronaut_rgb.png");
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&image)
    );
    let bodies = [
        json!({"input": ["a photo of a cat", "a red car"]}),
        json!({"input": "a diagram of an engine", "encoding_format": "float"}),
        json!({"input": [uri, "an astronaut"]}),
        json!({"input": "a dog", "dimensions": 3}),
    ];
    let lines: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| line(&format!("req-{i}"), "/v1/embeddings", b.clone()))
        .collect();
    let (status, file) = upload(http, "sk-alice", "batch", &jsonl(&lines)).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(
        (file["object"].as_str(), file["purpose"].as_str()),
        (Some("file"), Some("batch"))
    );
    let file_id = file["id"].as_str().unwrap().to_string();

    // Bob sees none of Alice's files, and cannot use them.
    let (status, _) = call(http, "GET", &format!("/v1/files/{file_id}"), "sk-bob", None).await;
    assert_eq!(status, 404);
    let (status, _) = send(
        http,
        "GET",
        &format!("/v1/files/{file_id}/content"),
        "sk-bob",
        None,
        b"",
    )
    .await;
    assert_eq!(status, 404);
    let (_, listed) = call(http, "GET", "/v1/files", "sk-bob", None).await;
    assert_eq!(listed["data"], json!([]), "{listed}");
    let create = json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h", "metadata": {"job": "t"}});
    let (status, e) = call(http, "POST", "/v1/batches", "sk-bob", Some(&create)).await;
    assert_eq!(status, 404, "{e}");

    let (status, batch) = call(http, "POST", "/v1/batches", "sk-alice", Some(&create)).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "validating");
    assert_eq!(batch["metadata"], json!({"job": "t"}));
    let id = batch["id"].as_str().unwrap().to_string();
    let (status, _) = call(http, "GET", &format!("/v1/batches/{id}"), "sk-bob", None).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        http,
        "POST",
        &format!("/v1/batches/{id}/cancel"),
        "sk-bob",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, bobs) = call(http, "GET", "/v1/batches", "sk-bob", None).await;
    assert_eq!(bobs["data"], json!([]));

    let batch = wait_final(http, "sk-alice", &id).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 3, "failed": 1})
    );
    for field in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(batch[field].is_u64(), "{field}: {batch}");
    }
    // The lines' work counts as Alice's usage, as live calls do (none of hers has run yet).
    let metrics = crate::hardening::try_get_metrics(http).await;
    let usage = |key: &str, kind: &str| {
        metric_value(
            &metrics,
            &format!("clip_usage_total{{key=\"{key}\",kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(usage("alice", "images"), 1.0, "{metrics}");
    assert!(usage("alice", "text_tokens") > 0.0, "{metrics}");
    assert_eq!(usage("bob", "images"), 0.0);
    let output = content(http, "sk-alice", batch["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len(), 3);
    for out in &output {
        let i: usize = out["custom_id"].as_str().unwrap()["req-".len()..]
            .parse()
            .unwrap();
        assert!(out["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(out["error"], Value::Null);
        assert_eq!(out["response"]["status_code"], 200);
        let (status, live) =
            call(http, "POST", "/v1/embeddings", "sk-alice", Some(&bodies[i])).await;
        assert_eq!(status, 200);
        same_answer(&out["response"]["body"], &live);
    }
    let errors = content(http, "sk-alice", batch["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "req-3");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    let (_, live) = call(http, "POST", "/v1/embeddings", "sk-alice", Some(&bodies[3])).await;
    assert_eq!(errors[0]["response"]["body"], live);
    // The output files are Alice's too, listed by purpose.
    let (_, outs) = call(
        http,
        "GET",
        "/v1/files?purpose=batch_output",
        "sk-alice",
        None,
    )
    .await;
    assert_eq!(outs["data"].as_array().unwrap().len(), 2, "{outs}");
    let (status, _) = call(
        http,
        "GET",
        &format!("/v1/files/{}", batch["output_file_id"].as_str().unwrap()),
        "sk-bob",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, e) = call(
        http,
        "POST",
        &format!("/v1/batches/{id}/cancel"),
        "sk-alice",
        None,
    )
    .await;
    assert_eq!(status, 409, "a finished batch: {e}");

    // A classify batch: the same answer as /v1/classify.
    let classify = json!({"input": [{"image": base64::engine::general_purpose::STANDARD.encode(&image)}], "labels": ["an astronaut", "a cat"]});
    let (_, file) = upload(
        http,
        "sk-alice",
        "batch",
        &jsonl(&[line("c", "/v1/classify", classify.clone())]),
    )
    .await;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/classify", "completion_window": "24h"});
    let (status, batch) = call(http, "POST", "/v1/batches", "sk-alice", Some(&create)).await;
    assert_eq!(status, 200, "{batch}");
    let batch = wait_final(http, "sk-alice", batch["id"].as_str().unwrap()).await;
    let output = content(http, "sk-alice", batch["output_file_id"].as_str().unwrap()).await;
    let (_, live) = call(http, "POST", "/v1/classify", "sk-alice", Some(&classify)).await;
    let (got, want) = (&output[0]["response"]["body"]["data"][0], &live["data"][0]);
    assert_eq!(got["prediction"], want["prediction"]);
    assert!((got["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs() < 1e-6);

    // A file whose lines are wrong: the batch fails with OpenAI's errors list.
    let dup = jsonl(&[
        line("x", "/v1/embeddings", json!({"input": "a"})),
        line("x", "/v1/embeddings", json!({"input": "b"})),
    ]);
    let (_, file) = upload(http, "sk-alice", "batch", &dup).await;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"});
    let (_, batch) = call(http, "POST", "/v1/batches", "sk-alice", Some(&create)).await;
    let batch = wait_final(http, "sk-alice", batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(
        batch["errors"]["data"][0]["code"], "duplicate_custom_id",
        "{batch}"
    );
    assert_eq!(batch["errors"]["data"][0]["line"], 2);

    // Bounds and bad requests: clear 4xx naming what is wrong.
    let one = jsonl(&[line("a", "/v1/embeddings", json!({"input": "a"}))]);
    let (status, e) = upload(http, "sk-alice", "fine-tune", &one).await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("purpose")),
        "{e}"
    );
    let (status, e) = upload(http, "sk-alice", "batch", b"{\"a\": 1}\nnot json\n").await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("line 2"),
        "{e}"
    );
    let many: Vec<Value> = (0..21)
        .map(|i| line(&i.to_string(), "/v1/embeddings", json!({"input": "a"})))
        .collect();
    let (status, e) = upload(http, "sk-alice", "batch", &jsonl(&many)).await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--batch-max-file-lines"),
        "{e}"
    );
    let (status, e) = upload(http, "sk-alice", "batch", &one).await;
    assert_eq!(status, 200, "{e}");
    let (status, e) = upload(http, "sk-alice", "batch", &one).await;
    assert_eq!(
        status, 429,
        "a fifth file over --batch-max-files-per-key 4: {e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--batch-max-files-per-key"),
        "{e}"
    );
    let (status, e) = upload(http, "sk-bob", "batch", &one).await;
    assert_eq!(status, 200, "the bound is per key: {e}");
    let bad = [
        (
            json!({"input_file_id": e["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            400,
            "endpoint",
        ),
        (
            json!({"input_file_id": e["id"], "endpoint": "/v1/embeddings", "completion_window": "1h"}),
            400,
            "completion_window",
        ),
        (
            json!({"input_file_id": "file-nope", "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            404,
            "",
        ),
    ];
    for (body, want, param) in bad {
        let (status, e) = call(http, "POST", "/v1/batches", "sk-bob", Some(&body)).await;
        assert_eq!(status, want, "{body}: {e}");
        if !param.is_empty() {
            assert_eq!(e["error"]["param"], param, "{e}");
        }
    }
    let (status, e) = call(http, "GET", "/v1/batches?limit=0", "sk-bob", None).await;
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("limit")));
    // Delete: gone for good.
    let bob_file = e_id(&upload(http, "sk-bob", "batch", &one).await.1);
    let (status, deleted) = call(
        http,
        "DELETE",
        &format!("/v1/files/{bob_file}"),
        "sk-bob",
        None,
    )
    .await;
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)));
    let (status, _) = call(
        http,
        "GET",
        &format!("/v1/files/{bob_file}"),
        "sk-bob",
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Lists page with OpenAI's cursor fields.
    let (_, page) = call(http, "GET", "/v1/batches?limit=1", "sk-alice", None).await;
    assert_eq!(page["has_more"], true, "{page}");
    let (_, next) = call(
        http,
        "GET",
        &format!(
            "/v1/batches?limit=5&after={}",
            page["last_id"].as_str().unwrap()
        ),
        "sk-alice",
        None,
    )
    .await;
    assert_eq!(next["data"].as_array().unwrap().len(), 2, "{next}");
    assert_eq!(next["has_more"], false);
}

pub(crate) fn e_id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// A batch of `n` lines of a few texts each.
pub(crate) fn texts_file(n: usize) -> Vec<u8> {
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            let input: Vec<String> = (0..4).map(|j| format!("photo {i} of thing {j}")).collect();
            line(
                &format!("line-{i}"),
                "/v1/embeddings",
                json!({"input": input}),
            )
        })
        .collect();
    jsonl(&lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_keeps_what_finished() {
    let mut cfg = config(&tiny_model());
    cfg.jobs.line_concurrency = 1;
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let (_, file) = upload(http, "", "batch", &texts_file(400)).await;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"});
    let (_, batch) = call(http, "POST", "/v1/batches", "", Some(&create)).await;
    let id = e_id(&batch);
    // Cancel once some lines are done.
    loop {
        let (_, b) = call(http, "GET", &format!("/v1/batches/{id}"), "", None).await;
        if b["request_counts"]["completed"].as_u64().unwrap() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (status, b) = call(http, "POST", &format!("/v1/batches/{id}/cancel"), "", None).await;
    assert_eq!(status, 200, "{b}");
    assert!(
        ["cancelling", "cancelled"].contains(&b["status"].as_str().unwrap()),
        "{b}"
    );
    let (status, e) = call(
        http,
        "DELETE",
        &format!("/v1/files/{}", e_id(&file)),
        "",
        None,
    )
    .await;
    assert!(status == 409 || status == 200, "{e}");
    let b = wait_final(http, "", &id).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    let done = b["request_counts"]["completed"].as_u64().unwrap();
    assert!((3..400).contains(&done), "{b}");
    let output = content(http, "", b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len() as u64, done);
}

/// The finished line records of a batch on disk (index -> the output line's id).
fn recorded(data_dir: &Path, batch: &str) -> HashMap<usize, String> {
    let dir = data_dir.join("jobs").join("lines").join(batch);
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let path = e.ok()?.path();
                    let name = path.file_name()?.to_str()?.to_string();
                    let index = name.split('.').next()?.parse().ok()?;
                    let line: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
                    Some((index, line["id"].as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_job_finishes_each_line_exactly_once() {
    const N: usize = 400;
    let mut cfg = config(&tiny_model());
    cfg.jobs.line_concurrency = 1;
    let data_dir = cfg.data_dir.clone();
    let server = serve(cfg.clone()).await;
    let http = server.server.http_addr;
    let (_, file) = upload(http, "", "batch", &texts_file(N)).await;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"});
    let (_, batch) = call(http, "POST", "/v1/batches", "", Some(&create)).await;
    let id = e_id(&batch);
    loop {
        let (_, b) = call(http, "GET", &format!("/v1/batches/{id}"), "", None).await;
        if b["request_counts"]["completed"].as_u64().unwrap() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.server.shutdown().await.unwrap();
    // Let the stopped server's last line (if any) land, then take the record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = recorded(&data_dir, &id);
    assert!(
        before.len() >= 5 && before.len() < N,
        "{} lines done at the stop",
        before.len()
    );

    let server = serve(cfg).await;
    finishes_each_line_once(server.server.http_addr, &id, N, &before, &data_dir).await;
}

/// After a restart: batch `id` of `n` lines completes with each line once, in input order, and
/// the lines recorded before the stop (`before`) kept (not run again).
async fn finishes_each_line_once(
    http: SocketAddr,
    id: &str,
    n: usize,
    before: &HashMap<usize, String>,
    data_dir: &Path,
) {
    let b = wait_final(http, "", id).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": n, "completed": n, "failed": 0})
    );
    let output = content(http, "", b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len(), n, "each line exactly once");
    let ids: HashSet<&str> = output
        .iter()
        .map(|o| o["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n);
    // In input order, and the lines finished before the stop were not run again (same ids).
    for (i, out) in output.iter().enumerate() {
        assert_eq!(out["custom_id"], format!("line-{i}"));
        if let Some(before) = before.get(&i) {
            assert_eq!(
                out["id"].as_str(),
                Some(before.as_str()),
                "line {i} was redone"
            );
        }
    }
    // The line records go once the output is written (just after the batch reads completed).
    let lines = data_dir.join("jobs").join("lines").join(id);
    let started = Instant::now();
    while lines.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!lines.exists(), "the line records outlived the batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_unfinished_batch_bounds_hold() {
    let mut cfg = config(&tiny_model());
    cfg.jobs.line_concurrency = 1;
    cfg.jobs.max_output_bytes = 1;
    cfg.jobs.max_active_batches_per_key = 1;
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let (_, file) = upload(http, "", "batch", &texts_file(400)).await;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"});
    let (status, first) = call(http, "POST", "/v1/batches", "", Some(&create)).await;
    assert_eq!(status, 200, "{first}");
    let (status, e) = call(http, "POST", "/v1/batches", "", Some(&create)).await;
    assert_eq!(status, 429, "a second unfinished batch: {e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--batch-max-active-per-key"),
        "{e}"
    );
    let b = wait_final(http, "", &e_id(&first)).await;
    assert_eq!(
        b["request_counts"],
        json!({"total": 400, "completed": 0, "failed": 400}),
        "{b}"
    );
    assert_eq!(b["output_file_id"], Value::Null);
    let errors = content(http, "", b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.len(), 400);
    assert_eq!(
        errors[0]["error"]["code"], "output_too_large",
        "{}",
        errors[0]
    );
    assert_eq!(errors[0]["response"], Value::Null);
    // Finished: another batch may start.
    let (status, e) = call(http, "POST", "/v1/batches", "", Some(&create)).await;
    assert_eq!(status, 200, "{e}");
}

pub(crate) async fn wait_ready(http: SocketAddr) {
    let started = Instant::now();
    while http_get(http, "/readyz").await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill -9` mid-job (a real process), then a restart on the same data dir.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_job_loses_no_line_and_redoes_none() {
    const N: usize = 400;
    let data_dir = fresh_data_dir();
    let args = ["--batch-line-concurrency", "1"];
    let mut server = crate::signals::spawn_server_in(&data_dir, &args);
    wait_ready(server.http).await;
    let (_, file) = upload(server.http, "", "batch", &texts_file(N)).await;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"});
    let (_, batch) = call(server.http, "POST", "/v1/batches", "", Some(&create)).await;
    let id = e_id(&batch);
    loop {
        let (_, b) = call(server.http, "GET", &format!("/v1/batches/{id}"), "", None).await;
        if b["request_counts"]["completed"].as_u64().unwrap() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let before = recorded(&data_dir, &id);
    assert!(
        before.len() >= 5 && before.len() < N,
        "{} lines done at the kill",
        before.len()
    );
    let server = crate::signals::spawn_server_in(&data_dir, &args);
    wait_ready(server.http).await;
    finishes_each_line_once(server.http, &id, N, &before, &data_dir).await;
}
