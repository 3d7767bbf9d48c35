//! `clip-bench`: a closed-loop load generator against a running server. N clients each send a
//! request, wait for the reply and send the next, for a fixed duration; it reports throughput (items
//! per second) and latency percentiles, and writes them as JSON. A program that measures, not a test.
//!
//! Its own binary: it uses only the generated gRPC client (`clip_serve::grpc::pb`) and the wire's
//! code names, none of the server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a load generator run by hand: a panic is a failed run"
)]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use clip_serve::{
    common::parse_duration,
    grpc::{
        pb::{self, classify_client::ClassifyClient, embed_client::EmbedClient},
        status::code_name,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchModality {
    Images,
    Texts,
    /// Classify the --image files against --label-set or the inline --labels.
    Classify,
    /// EmbedStream: each of --concurrency connections keeps --streams streams open, each pushing
    /// --items messages (the --image files, round-robin) as fast as flow control lets it, then
    /// reading every reply; again until --duration is over. Latency is per stream.
    Stream,
}

/// Which door the requests go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    Grpc,
    /// The HTTP API: `POST /v1/embeddings` (texts, images as data URIs) and `POST /v1/classify`.
    Http,
}

/// Closed-loop load generator against a running clip-serve (prints throughput and latency).
#[derive(Debug, Clone, Parser)]
#[command(name = "clip-bench", version)]
pub struct BenchArgs {
    /// Server address.
    #[arg(
        long,
        env = "CLIP_SERVE_BENCH_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// The door: gRPC on --addr, or the HTTP API on --http-addr (texts, images, classify).
    #[arg(long, value_enum, default_value_t = Interface::Grpc)]
    pub interface: Interface,
    /// The HTTP API's address, for --interface http.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http_addr: String,
    /// What to send.
    #[arg(long, value_enum, default_value_t = BenchModality::Texts)]
    pub modality: BenchModality,
    /// Image files to send, round-robin (for --modality images).
    #[arg(long = "image", num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Text to send (for --modality texts); a counter is appended so texts differ.
    #[arg(long, default_value = "a photo of a cat sitting on a wooden table")]
    pub text: String,
    /// For --modality classify: a stored label set to classify against.
    #[arg(long)]
    pub label_set: Option<String>,
    /// For --modality classify: inline labels, comma-separated (the server's text cache makes
    /// repeats free).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,

    /// Sent as the `x-priority` header (`high`, `normal`, `low`; with `--interface http`).
    #[arg(long)]
    pub priority: Option<String>,
    /// Items per request (per stream for --modality stream).
    #[arg(long, default_value_t = 1)]
    pub items: usize,
    /// For --modality stream: streams per connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Measured duration, e.g. 10s, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up requests per client.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How long a client waits after RESOURCE_EXHAUSTED before its next request (a well-behaved
    /// client backs off; 0 retries at once).
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub refusal_backoff: Duration,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub interface: Interface,
    pub modality: BenchModality,
    pub concurrency: usize,
    pub items_per_request: usize,
    pub duration_s: f64,
    pub requests: usize,
    pub errors: usize,
    /// Failed requests by gRPC code (RESOURCE_EXHAUSTED: refused at the door under overload).
    pub errors_by_code: BTreeMap<String, usize>,
    pub items_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_mean: f64,
    pub first_error: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

enum Payload {
    Images(Vec<Bytes>),
    Text(String),
    Classify {
        images: Vec<Bytes>,
        labels: Vec<String>,
        label_set: String,
    },
}

struct Clients {
    embed: EmbedClient<Channel>,
    classify: ClassifyClient<Channel>,
}

/// An HTTP/1.1 client with its own keep-alive connection (one per simulated client, like gRPC's).
struct HttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
    base: String,
    priority: Option<String>,
}

impl HttpClient {
    fn new(base: &str, priority: Option<String>) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http();
        HttpClient {
            client,
            base: base.trim_end_matches('/').to_string(),
            priority,
        }
    }

    /// POSTs `body` to `path`; `Ok(count)` of the `data` entries of a 200 reply.
    async fn post(&self, path: &str, body: Vec<u8>) -> Result<usize, (String, String)> {
        use http_body_util::BodyExt;
        let failed = |e: &dyn std::fmt::Display| ("HTTP_ERROR".to_string(), e.to_string());
        let mut request = tonic::codegen::http::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(p) = &self.priority {
            request = request.header("x-priority", p.as_str());
        }
        let request = request
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| failed(&e))?;
        let response = self.client.request(request).await.map_err(|e| failed(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes();
        if status.as_u16() == 429 {
            return Err(("RESOURCE_EXHAUSTED".into(), "429".into()));
        }
        if !status.is_success() {
            return Err((
                format!("HTTP_{}", status.as_u16()),
                String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            ));
        }
        let reply: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| failed(&e))?;
        Ok(reply["data"].as_array().map_or(0, Vec::len))
    }
}

async fn one_http_request(
    client: &HttpClient,
    payload: &Payload,
    items: usize,
    n: usize,
) -> Result<(), (String, String)> {
    use base64::Engine;
    let data_uris = |files: &[Bytes]| -> Vec<serde_json::Value> {
        (0..items)
            .map(|i| {
                let b64 =
                    base64::engine::general_purpose::STANDARD.encode(&files[(n + i) % files.len()]);
                serde_json::json!({ "image": b64 })
            })
            .collect()
    };
    let (path, body) = match payload {
        Payload::Images(files) => (
            "/v1/embeddings",
            serde_json::json!({ "input": data_uris(files) }),
        ),
        Payload::Text(text) => {
            let texts: Vec<String> = (0..items)
                .map(|i| format!("{text} {}", n * items + i))
                .collect();
            ("/v1/embeddings", serde_json::json!({ "input": texts }))
        }
        Payload::Classify {
            images,
            labels,
            label_set,
        } => {
            let mut body = serde_json::json!({ "input": data_uris(images), "top_k": 5 });
            if label_set.is_empty() {
                body["labels"] = serde_json::json!(labels);
            } else {
                body["label_set"] = serde_json::json!(label_set);
            }
            ("/v1/classify", body)
        }
    };
    let body = serde_json::to_vec(&body).map_err(|e| ("CLIENT".to_string(), e.to_string()))?;
    match client.post(path, body).await? {
        count if count == items => Ok(()),
        count => Err((
            "WRONG_COUNT".into(),
            format!("{count} results for {items} items"),
        )),
    }
}

enum Door {
    Grpc(Clients),
    Http(HttpClient),
}

async fn request(
    door: &mut Door,
    payload: &Payload,
    items: usize,
    n: usize,
) -> Result<(), (String, String)> {
    match door {
        Door::Grpc(clients) => one_request(clients, payload, items, n).await,
        Door::Http(client) => one_http_request(client, payload, items, n).await,
    }
}

async fn one_request(
    client: &mut Clients,
    payload: &Payload,
    items: usize,
    n: usize,
) -> Result<(), (String, String)> {
    let pick = |files: &[Bytes]| -> Vec<Bytes> {
        (0..items)
            .map(|i| files[(n + i) % files.len()].clone())
            .collect()
    };
    let result = match payload {
        Payload::Images(files) => client
            .embed
            .embed_images(pb::EmbedImagesRequest {
                images: pick(files),
            })
            .await
            .map(|r| r.get_ref().embeddings.len()),
        Payload::Text(text) => {
            let texts = (0..items)
                .map(|i| format!("{text} {}", n * items + i))
                .collect();
            client
                .embed
                .embed_texts(pb::EmbedTextsRequest { texts })
                .await
                .map(|r| r.get_ref().embeddings.len())
        }
        Payload::Classify {
            images,
            labels,
            label_set,
        } => client
            .classify
            .classify(pb::ClassifyRequest {
                images: pick(images),
                labels: labels.clone(),
                label_set: label_set.clone(),
                templates: Vec::new(),
                top_k: 5,
            })
            .await
            .map(|r| r.get_ref().results.len()),
    };
    match result {
        Ok(count) if count == items => Ok(()),
        Ok(count) => Err((
            "WRONG_COUNT".into(),
            format!("{count} results for {items} items"),
        )),
        Err(status) => Err((
            code_name(status.code()).to_string(),
            status.message().to_string(),
        )),
    }
}

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clip-bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clip-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--modality stream`: many connections, several streams each, each pushing `--items` messages.
async fn run_streams(args: &BenchArgs, images: Vec<Bytes>) -> anyhow::Result<BenchReport> {
    use tokio_stream::StreamExt;
    anyhow::ensure!(args.streams > 0, "--streams must be positive");
    let images = Arc::new(images);
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let channel = Channel::from_shared(args.addr.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.addr))?;
        for s in 0..args.streams {
            let mut client = EmbedClient::new(channel.clone())
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20);
            let (images, items) = (Arc::clone(&images), args.items);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors: BTreeMap<String, usize> = BTreeMap::new();
                let mut done = 0usize;
                let deadline_at = tokio::time::Instant::from_std(deadline);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    // Made as the stream is read (flow control permitting), not all up front: the
                    // client must not hold every message of every stream at once.
                    let images = Arc::clone(&images);
                    let requests = (0..items).map(move |i| pb::EmbedStreamRequest {
                        id: format!("{c}-{s}-{i}"),
                        item: Some(pb::embed_stream_request::Item::Image(
                            images[(c + s + i) % images.len()].clone(),
                        )),
                    });
                    let mut replies = match client.embed_stream(tokio_stream::iter(requests)).await
                    {
                        Ok(r) => r.into_inner(),
                        Err(status) => {
                            *errors.entry(code_name(status.code()).into()).or_default() += 1;
                            continue;
                        }
                    };
                    let mut ok = 0;
                    let mut finished = true;
                    loop {
                        // The measurement ends at the deadline, in the middle of a stream if need be.
                        let Ok(reply) = tokio::time::timeout_at(deadline_at, replies.next()).await
                        else {
                            finished = false;
                            break;
                        };
                        let Some(reply) = reply else { break };
                        match reply {
                            Ok(pb::EmbedStreamResponse {
                                result: Some(pb::embed_stream_response::Result::Embedding(_)),
                                ..
                            }) => ok += 1,
                            Ok(pb::EmbedStreamResponse {
                                result: Some(pb::embed_stream_response::Result::Error(e)),
                                ..
                            }) => *errors.entry(e.code_name).or_default() += 1,
                            Ok(_) => *errors.entry("EMPTY_REPLY".into()).or_default() += 1,
                            Err(status) => {
                                *errors.entry(code_name(status.code()).into()).or_default() += 1;
                                break;
                            }
                        }
                    }
                    done += ok;
                    if finished {
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                (latencies, errors, done)
            }));
        }
    }
    let mut latencies = Vec::new();
    let mut errors_by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut items_done = 0;
    for task in tasks {
        let (l, e, d) = task.await?;
        latencies.extend(l);
        items_done += d;
        for (code, n) in e {
            *errors_by_code.entry(code).or_default() += n;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let duration_s = started.elapsed().as_secs_f64();
    let report = BenchReport {
        interface: args.interface,
        modality: args.modality,
        concurrency: args.concurrency * args.streams,
        items_per_request: args.items,
        duration_s,
        requests: latencies.len(),
        errors: errors_by_code.values().sum(),
        first_error: errors_by_code.keys().next().cloned(),
        errors_by_code,
        items_per_s: items_done as f64 / duration_s,
        latency_ms_p50: percentile(&latencies, 50.0),
        latency_ms_p90: percentile(&latencies, 90.0),
        latency_ms_p99: percentile(&latencies, 99.0),
        latency_ms_mean: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
    };
    println!(
        "Stream connections={} streams={} items={}: {:.1} items/s, stream p50 {:.0} ms, p99 {:.0} ms, {} streams, errors {:?}",
        args.concurrency,
        args.streams,
        args.items,
        report.items_per_s,
        report.latency_ms_p50,
        report.latency_ms_p99,
        report.requests,
        report.errors_by_code
    );
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

/// Runs the benchmark and prints a one-line summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        args.concurrency > 0 && args.items > 0,
        "--concurrency and --items must be positive"
    );
    let read_images = || -> anyhow::Result<Vec<Bytes>> {
        anyhow::ensure!(
            !args.images.is_empty(),
            "--modality images and classify need at least one --image FILE"
        );
        args.images
            .iter()
            .map(|path| {
                std::fs::read(path)
                    .map(Bytes::from)
                    .with_context(|| format!("reading {}", path.display()))
            })
            .collect()
    };
    if args.modality == BenchModality::Stream {
        return run_streams(&args, read_images()?).await;
    }
    let payload = Arc::new(match args.modality {
        BenchModality::Stream => unreachable!("handled above"),
        BenchModality::Images => Payload::Images(read_images()?),
        BenchModality::Texts => Payload::Text(args.text.clone()),
        BenchModality::Classify => {
            anyhow::ensure!(
                args.label_set.is_some() == args.labels.is_empty(),
                "--modality classify needs --label-set NAME or --labels a,b,c (one of them)"
            );
            Payload::Classify {
                images: read_images()?,
                labels: args.labels.clone(),
                label_set: args.label_set.clone().unwrap_or_default(),
            }
        }
    });
    anyhow::ensure!(
        args.priority.is_none() || args.interface == Interface::Http,
        "--priority is sent as the x-priority header: use it with --interface http"
    );
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        if args.interface == Interface::Http {
            clients.push(Door::Http(HttpClient::new(
                &args.http_addr,
                args.priority.clone(),
            )));
            continue;
        }
        let channel = Channel::from_shared(args.addr.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.addr))?;
        clients.push(Door::Grpc(Clients {
            embed: EmbedClient::new(channel.clone())
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
            classify: ClassifyClient::new(channel)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        }));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(args.concurrency));
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let payload = Arc::clone(&payload);
        let (items, warmup, duration) = (args.items, args.warmup, args.duration);
        let backoff = args.refusal_backoff;
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            let mut first_error = None;
            for w in 0..warmup {
                let _ = request(&mut client, &payload, items, c * 1_000_000 + w).await;
            }
            // Everyone starts measuring together, after every client has warmed up.
            barrier.wait().await;
            let measured_from = Instant::now();
            let deadline = measured_from + duration;
            let mut n = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                match request(&mut client, &payload, items, c * 1_000_000 + 1000 + n).await {
                    Ok(()) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                    Err((code, message)) => {
                        let refused = code == "RESOURCE_EXHAUSTED";
                        *errors.entry(code.clone()).or_default() += 1;
                        first_error.get_or_insert(format!("{code}: {message}"));
                        if refused && !backoff.is_zero() {
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
                n += 1;
            }
            (latencies, errors, first_error, measured_from.elapsed())
        }));
    }
    let mut latencies = Vec::new();
    let mut errors_by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_error = None;
    let mut measured = Duration::ZERO;
    for task in tasks {
        let (l, e, f, d) = task.await?;
        latencies.extend(l);
        for (code, n) in e {
            *errors_by_code.entry(code).or_default() += n;
        }
        if first_error.is_none() {
            first_error = f;
        }
        measured = measured.max(d);
    }
    latencies.sort_by(f64::total_cmp);
    let requests = latencies.len();
    let duration_s = measured.as_secs_f64();
    let report = BenchReport {
        interface: args.interface,
        modality: args.modality,
        concurrency: args.concurrency,
        items_per_request: args.items,
        duration_s,
        requests,
        errors: errors_by_code.values().sum(),
        errors_by_code,
        items_per_s: (requests * args.items) as f64 / duration_s,
        latency_ms_p50: percentile(&latencies, 50.0),
        latency_ms_p90: percentile(&latencies, 90.0),
        latency_ms_p99: percentile(&latencies, 99.0),
        latency_ms_mean: latencies.iter().sum::<f64>() / requests.max(1) as f64,
        first_error,
    };
    println!(
        "{:?} {:?} c={} items={}: {:.1} items/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, {} requests, {} errors {:?}",
        report.interface,
        report.modality,
        report.concurrency,
        report.items_per_request,
        report.items_per_s,
        report.latency_ms_p50,
        report.latency_ms_p90,
        report.latency_ms_p99,
        report.requests,
        report.errors,
        report.errors_by_code
    );
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
