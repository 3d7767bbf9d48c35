//! The command line, at the top of the crate: every flag has an environment twin (`CLIP_SERVE_*`,
//! plus `ORT_DYLIB_PATH` as ONNX Runtime users expect). [`ServeArgs::validate`] checks the raw flags
//! and builds each domain's own configuration struct into one [`Config`] for `server.rs`, or says
//! in one line which flag is wrong. Domain modules never import this one.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    admission::DoorConfig,
    batch::BatcherConfig,
    classify::{ClassifyConfig, PromptLimits},
    common::parse_duration,
    embed::{EmbedConfig, Limits, fetch::FetchConfig},
    model::{Precision, Provider, ProviderOptions},
    postgres::{PgConfig, StoreConfig},
    retrieve::RetrieveConfig,
    security::{Secret, TlsPaths},
    telemetry::LogFormat,
};

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    match s.trim() {
        "" | "off" | "none" => Ok(OptionalAddr(None)),
        addr => addr
            .parse()
            .map(|a| OptionalAddr(Some(a)))
            .map_err(|e| format!("{e} (an address like 0.0.0.0:8081, or off)")),
    }
}

/// Default model directory, relative to the working directory (scripts/serve.sh exports it there).
pub const DEFAULT_MODEL_DIR: &str = "models/ViT-B-32__datacomp_xl_s13b_b90k";
/// Where scripts/setup.sh puts the ONNX Runtime library.
pub const DEFAULT_ORT_DYLIB: &str = ".cache/onnxruntime/lib/libonnxruntime.so";

#[derive(Debug, Parser)]
#[command(
    name = "clip-serve",
    version,
    about = "Serve CLIP image and text embeddings over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the load generator is the separate `clip-bench` binary).
    Serve(Box<ServeArgs>),
    /// Upsert a folder of images into a collection of a running server (resumable).
    Index(crate::grpc::client::index::IndexArgs),
    /// Search a collection of a running server by text (or --image).
    Search(crate::grpc::client::search::SearchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model directory (Immich layout: config.json, visual/, textual/).
    #[arg(long, env = "CLIP_SERVE_MODEL_DIR", default_value = DEFAULT_MODEL_DIR)]
    pub model_dir: PathBuf,

    /// gRPC listen address.
    #[arg(long, env = "CLIP_SERVE_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address for /metrics (Prometheus), /healthz and /readyz.
    #[arg(long, env = "CLIP_SERVE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// A plain-HTTP listener for /healthz, /readyz and /metrics only, outside the API's connection
    /// places: never TLS, never an API key, so kubelet probes and Prometheus answer while the API
    /// listeners are full or demand TLS or client certificates (`off`: none).
    #[arg(long, env = "CLIP_SERVE_PROBE_ADDR", default_value = "0.0.0.0:8081", value_parser = parse_optional_addr)]
    pub probe_addr: OptionalAddr,

    /// Path of libonnxruntime.so (scripts/setup.sh fetches it into .cache/onnxruntime/lib/).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,

    /// Execution provider. GPU providers need a binary built with the matching cargo feature and the
    /// onnxruntime-gpu library; when they cannot start the server refuses to start.
    #[arg(long, env = "CLIP_SERVE_PROVIDER", value_enum, default_value_t = Provider::Cpu)]
    pub provider: Provider,

    /// Which graph of each tower to serve: fp32 (model.onnx), int8 (model.int8.onnx, for CPUs) or
    /// fp16 (model.fp16.onnx, for GPUs). A variant is served only when its accuracy gate in the
    /// model directory's quantization.json passed (scripts/quantize.py writes both).
    #[arg(long, env = "CLIP_SERVE_PRECISION", value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,

    /// Run every text at the full context length even when the text tower has a dynamic sequence
    /// axis (by default a batch runs only up to its longest text's end-of-text token, which is exact
    /// for CLIP's argmax-pooled text tower): for exports that pool elsewhere, and for comparisons.
    #[arg(long, env = "CLIP_SERVE_FULL_LENGTH_TEXT", default_value_t = false)]
    pub full_length_text: bool,

    /// Serve a --precision variant whose accuracy gate is missing or failed (Info reports it as
    /// ungated).
    #[arg(
        long,
        env = "CLIP_SERVE_ALLOW_UNGATED_PRECISION",
        default_value_t = false
    )]
    pub allow_ungated_precision: bool,

    /// GPU device ordinal for the cuda and tensorrt providers.
    #[arg(long, env = "CLIP_SERVE_DEVICE_ID", default_value_t = 0)]
    pub device_id: i32,

    /// TensorRT: build fp16 engines (faster; embeddings differ from fp32 in the 3rd-4th decimal).
    #[arg(long, env = "CLIP_SERVE_TRT_FP16", default_value_t = false)]
    pub trt_fp16: bool,

    /// TensorRT: directory for built engines and the timing cache, so they are built once (minutes)
    /// and loaded on later starts (seconds). Keep it on a volume that outlives the process.
    #[arg(long, env = "CLIP_SERVE_TRT_ENGINE_CACHE_DIR")]
    pub trt_engine_cache_dir: Option<PathBuf>,

    /// TensorRT: the engine builder's workspace limit in bytes [default: ONNX Runtime's].
    #[arg(long, env = "CLIP_SERVE_TRT_WORKSPACE_BYTES")]
    pub trt_workspace_bytes: Option<u64>,

    /// ONNX Runtime intra-op threads per session [default: the cores available].
    #[arg(long, env = "CLIP_SERVE_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<NonZeroUsize>,

    /// Extra model names the HTTP API accepts besides the served ids (what drop-in clients send:
    /// `jina-clip-v2`, `rerank-v3.5`, ...). Repeat the flag or give a comma-separated list. Immich's
    /// ViT-B-32 names are accepted on `/predict` without it.
    #[arg(
        long = "model-alias",
        env = "CLIP_SERVE_MODEL_ALIAS",
        value_delimiter = ','
    )]
    pub model_aliases: Vec<String>,

    /// Most items (images or texts) in one request.
    #[arg(long, env = "CLIP_SERVE_MAX_ITEMS_PER_REQUEST", default_value_t = 64)]
    pub max_items_per_request: u32,

    /// Largest encoded image accepted, in bytes.
    #[arg(long, env = "CLIP_SERVE_MAX_IMAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_image_bytes: u64,

    /// Fetch images given as http(s) URLs (off: URLs get a 400). Only https, and only public
    /// addresses (every resolved address and redirect checked), unless --fetch-allow-hosts says so.
    #[arg(long, env = "CLIP_SERVE_FETCH_IMAGE_URLS")]
    pub fetch_image_urls: bool,

    /// Hosts that may be fetched over plain http and may be private or loopback: `host`,
    /// `*.example.com` (any subdomain), an address (`10.0.0.5`, `[fd00::1]`), each with an optional
    /// `:PORT`. Comma-separated.
    #[arg(long, env = "CLIP_SERVE_FETCH_ALLOW_HOSTS", value_delimiter = ',')]
    pub fetch_allow_hosts: Vec<String>,

    /// Largest fetched image, in bytes (default: --max-image-bytes); the body is dropped as soon as
    /// it passes this.
    #[arg(long, env = "CLIP_SERVE_FETCH_MAX_BYTES")]
    pub fetch_max_bytes: Option<u64>,

    /// Longest one image fetch may take (waiting for a slot, redirects and body included).
    #[arg(long, env = "CLIP_SERVE_FETCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub fetch_timeout: Duration,

    /// Most redirects followed per fetch (each hop is checked like the first).
    #[arg(long, env = "CLIP_SERVE_FETCH_MAX_REDIRECTS", default_value_t = 3)]
    pub fetch_max_redirects: u32,

    /// Image fetches at once, over all requests.
    #[arg(long, env = "CLIP_SERVE_FETCH_CONCURRENCY", default_value_t = 16)]
    pub fetch_concurrency: u32,

    /// Image fetches of one request at once, a share of --fetch-concurrency (default: a quarter of
    /// it, at least 1), so one request of many slow URLs cannot hold every fetch slot.
    #[arg(long, env = "CLIP_SERVE_FETCH_CONCURRENCY_PER_REQUEST")]
    pub fetch_concurrency_per_request: Option<u32>,

    /// Largest decoded image accepted, in pixels (width x height), checked from the header before
    /// any pixel is allocated.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_IMAGE_PIXELS",
        default_value_t = 40_000_000
    )]
    pub max_image_pixels: u64,

    /// Working memory of the image decodes running at once, in bytes. Each decode reserves what its
    /// header says it needs (about 12 bytes per pixel for JPEG and PNG) before it starts; an image
    /// needing more than the whole budget is refused (INVALID_ARGUMENT / 400).
    #[arg(long, env = "CLIP_SERVE_MAX_DECODE_BYTES", default_value_t = 768 * 1024 * 1024)]
    pub max_decode_bytes: u64,

    /// Longest text accepted, in UTF-8 bytes. Longer texts would be cut at the context length anyway.
    #[arg(long, env = "CLIP_SERVE_MAX_TEXT_BYTES", default_value_t = 16 * 1024)]
    pub max_text_bytes: u32,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "CLIP_SERVE_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_message_bytes: u64,

    /// Requests processed at once; unary calls beyond it get RESOURCE_EXHAUSTED.
    #[arg(long, env = "CLIP_SERVE_MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: u32,

    /// Most rows (images or texts) in one inference batch, per modality.
    #[arg(long, env = "CLIP_SERVE_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: u32,

    /// How long a batch may wait to fill up before it runs (0: run whatever is queued at once, the
    /// right choice on CPU; a few ms helps GPUs), e.g. 0, 2ms.
    #[arg(long, env = "CLIP_SERVE_MAX_BATCH_DELAY", default_value = "0", value_parser = parse_duration)]
    pub max_batch_delay: Duration,

    /// Rows waiting per modality queue; a request that does not fit gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CLIP_SERVE_MAX_QUEUE_ROWS", default_value_t = 1024)]
    pub max_queue_rows: u32,

    /// A normal- or low-priority call that has waited this long in the queue is served with the
    /// high class (the starvation bound), e.g. 2s.
    #[arg(long, env = "CLIP_SERVE_PRIORITY_AGING", default_value = "2s", value_parser = parse_duration)]
    pub priority_aging: Duration,

    /// Request payload bytes held at once across both doors (gRPC messages, stream items, HTTP
    /// bodies): a unary call or body beyond it gets RESOURCE_EXHAUSTED / 429, a stream waits.
    #[arg(long, env = "CLIP_SERVE_MAX_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_inflight_bytes: u64,

    /// Streams reading a message at once: a message is held from the moment it is read until the
    /// byte budget admits it, so this bounds what streams hold beyond the budget; other streams
    /// wait unread (flow control holds their clients back).
    #[arg(long, env = "CLIP_SERVE_MAX_STREAM_READERS", default_value_t = 16)]
    pub max_stream_readers: u32,

    /// Open client connections across the gRPC and plain-HTTP listeners; a connection beyond it is
    /// closed as soon as it is accepted (clients retry, or a load balancer picks another replica).
    #[arg(long, env = "CLIP_SERVE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: u32,

    /// Open connections of one peer (an IPv4 address, or an IPv6 /64) across both listeners, so
    /// one client cannot take every place (0: no bound; behind a proxy, all clients are one peer).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256
    )]
    pub max_connections_per_peer: u32,

    /// A TLS handshake, an HTTP request's head, the next request on an idle HTTP/1 keep-alive
    /// connection, and a gRPC connection's HTTP/2 preface must each arrive within this; the
    /// connection is closed otherwise.
    #[arg(long, env = "CLIP_SERVE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A gRPC connection on which nothing arrives for this long is closed, and so is a connection
    /// on either port whose reply makes no progress that long (0: never). Live clients answer the
    /// --http2-keepalive pings, so only silent or dead peers are cut; it is raised to the
    /// keepalive interval + 21 s when shorter.
    #[arg(long, env = "CLIP_SERVE_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// An HTTP request body, or a unary gRPC request message, must arrive within this (408 /
    /// DEADLINE_EXCEEDED otherwise, and what it held is freed).
    #[arg(long, env = "CLIP_SERVE_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// The least average rate (bytes/s) at which a body arrives once it has had 5 s (0: none); a
    /// slower one is cut off like a late one.
    #[arg(long, env = "CLIP_SERVE_BODY_MIN_RATE", default_value_t = 4096)]
    pub body_min_rate: u64,

    /// HTTP request bodies being read at once; one more gets 503 at once.
    #[arg(long, env = "CLIP_SERVE_MAX_BODY_READERS", default_value_t = 128)]
    pub max_body_readers: u32,

    /// Without an API key, the `Host` names a browser may reach the HTTP API by (DNS-rebinding
    /// protection), besides IP literals and localhost; `*` allows any. Requests without browser
    /// headers (Origin, Sec-Fetch-*) are not checked.
    #[arg(long, env = "CLIP_SERVE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Close each gRPC connection after this long (GOAWAY; calls in flight get --shutdown-grace to
    /// finish), so long-lived clients spread over replicas added later (0: never), e.g. 30m.
    #[arg(long, env = "CLIP_SERVE_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// HTTP/2 keepalive pings on gRPC connections at this interval; a peer silent for 20 s more is
    /// dropped (0: off).
    #[arg(long, env = "CLIP_SERVE_HTTP2_KEEPALIVE", default_value = "60s", value_parser = parse_duration)]
    pub http2_keepalive: Duration,

    /// Items of one EmbedStream processed at once; the stream stops reading beyond it.
    #[arg(long, env = "CLIP_SERVE_MAX_STREAM_IN_FLIGHT", default_value_t = 16)]
    pub max_stream_in_flight: u32,

    /// Where label sets (and later collections) persist.
    #[arg(long, env = "CLIP_SERVE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Local store: a collection of at least this many items is searched approximately (binary
    /// codes scanned, or an HNSW graph with --ann-graph; the shortlist is scored exactly), smaller
    /// ones exactly. A collection reaching it through upserts switches while serving. 0: always exact.
    #[arg(long, env = "CLIP_SERVE_ANN_MIN_VECTORS", default_value_t = 50_000)]
    pub ann_min_vectors: u64,

    /// Local store: approximate search through an HNSW graph (saved under <data-dir>/ann/, built
    /// in the background) instead of the binary scan. The graph misses far more of the true top k
    /// for text queries among images (BENCHMARKS.md).
    #[arg(long, env = "CLIP_SERVE_ANN_GRAPH", default_value_t = false)]
    pub ann_graph: bool,

    /// Local store, binary scan: items rescored exactly per result asked for (top_k 10: the
    /// 200 nearest by Hamming distance at the default 20; at least top_k + 64). 1-1000.
    #[arg(long, env = "CLIP_SERVE_ANN_OVERSAMPLE", default_value_t = 20)]
    pub ann_oversample: u32,

    /// Local store, binary scan: the recall@10 to keep (0-1). A background check answers a sample
    /// of each collection's recent queries exactly and raises its oversampling while under it.
    #[arg(long, env = "CLIP_SERVE_RECALL_TARGET", default_value_t = 0.95)]
    pub recall_target: f64,

    /// Seconds between recall checks (0: never checked).
    #[arg(long, env = "CLIP_SERVE_RECALL_CHECK_INTERVAL", default_value_t = 60)]
    pub recall_check_interval: u64,

    /// Queries sampled per collection for the recall check (each costs one exact scan per check;
    /// 0-1000, 0: no check).
    #[arg(long, env = "CLIP_SERVE_RECALL_SAMPLES", default_value_t = 32)]
    pub recall_samples: u32,

    /// The most the recall check raises --ann-oversample to (1-1000).
    #[arg(long, env = "CLIP_SERVE_RECALL_MAX_OVERSAMPLE", default_value_t = 200)]
    pub recall_max_oversample: u32,

    /// Most labels in a Classify request or a label set.
    #[arg(long, env = "CLIP_SERVE_MAX_LABELS", default_value_t = 1000)]
    pub max_labels: u32,

    /// Most prompt templates in a Classify request or a label set.
    #[arg(long, env = "CLIP_SERVE_MAX_TEMPLATES", default_value_t = 100)]
    pub max_templates: u32,

    /// Most label x template texts one Classify request with inline labels may embed (larger
    /// ensembles belong in a stored label set, computed once).
    #[arg(long, env = "CLIP_SERVE_MAX_INLINE_PROMPTS", default_value_t = 2048)]
    pub max_inline_prompts: u32,

    /// Most label sets clients may create (built-in ones do not count).
    #[arg(long, env = "CLIP_SERVE_MAX_LABEL_SETS", default_value_t = 100)]
    pub max_label_sets: u32,

    /// Most prompts (labels x templates) of all client-created label sets together: each costs a
    /// text-tower pass when its classifier is computed (built-in sets do not count).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_LABEL_SET_PROMPTS",
        default_value_t = 100_000
    )]
    pub max_label_set_prompts: u32,

    /// Most results a Search may ask for.
    #[arg(long, env = "CLIP_SERVE_MAX_TOP_K", default_value_t = 1000)]
    pub max_top_k: u32,

    /// Most items in one Upsert (and ids in one Delete or GetItems, candidates in one Rank). Texts
    /// and images among them also count against --max-items-per-request.
    #[arg(long, env = "CLIP_SERVE_MAX_UPSERT_ITEMS", default_value_t = 1000)]
    pub max_upsert_items: u32,

    /// Most collections.
    #[arg(long, env = "CLIP_SERVE_MAX_COLLECTIONS", default_value_t = 100)]
    pub max_collections: u32,

    /// Where collections (and, with postgres, label sets) live: `local` (a redb file under
    /// --data-dir, searched in memory; one replica's own) or `postgres` (PostgreSQL with pgvector,
    /// shared by every replica pointed at it; needs --postgres-url).
    #[arg(long, env = "CLIP_SERVE_STORE", value_enum, default_value_t = StoreKind::Local)]
    pub store: StoreKind,

    /// PostgreSQL connection URL for --store postgres, e.g.
    /// `postgres://clip@db.example.com:5432/clip?sslmode=disable`. Give the password apart
    /// (--postgres-password-file or CLIP_SERVE_POSTGRES_PASSWORD); it is never logged.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// A file holding the PostgreSQL password (trailing newline ignored), e.g. a mounted secret.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_PASSWORD_FILE")]
    pub postgres_password_file: Option<PathBuf>,

    /// The PostgreSQL password. Prefer the environment variable or the file: a flag shows in `ps`.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_PASSWORD", hide_env_values = true)]
    pub postgres_password: Option<String>,

    /// PEM CA certificates PostgreSQL's TLS certificate must chain to, besides the system's (a
    /// managed service's CA bundle). TLS itself follows the URL's `sslmode` (prefer by default).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<PathBuf>,

    /// New collections get their HNSW index over half-precision copies of the vectors (`halfvec`):
    /// half the index memory and disk, dimensions up to 4000; stored vectors and scores stay full
    /// precision. Existing collections keep their index.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_HALFVEC", default_value_t = false)]
    pub postgres_halfvec: bool,

    /// The least `hnsw.ef_search` (candidates pgvector's HNSW explores) a search uses; it is at
    /// least 2 x top_k. More finds more of the true neighbours, slower: on 1M clustered vectors
    /// recall@10 was 0.83 at 64 and 0.88 at 200 for 1.2 ms more (BENCHMARKS.md).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_EF_SEARCH", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub postgres_ef_search: u32,

    /// Most connections this replica holds to PostgreSQL (the pool; opened as needed).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_POOL_SIZE", default_value_t = 16)]
    pub postgres_pool_size: u32,

    /// Collections with fewer items are searched exactly (a scan) instead of by the HNSW index.
    #[arg(
        long,
        env = "CLIP_SERVE_POSTGRES_EXACT_BELOW",
        default_value_t = 10_000
    )]
    pub postgres_exact_below: u64,

    /// How long to wait for a PostgreSQL connection (connecting, or a free one in the pool)
    /// before answering UNAVAILABLE.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub postgres_connect_timeout: Duration,

    /// `statement_timeout` of every PostgreSQL session: a statement running longer is cancelled
    /// and the call answered UNAVAILABLE; also its `idle_in_transaction_session_timeout` (a
    /// replica frozen mid-write loses its locks) (0: no limit).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub postgres_statement_timeout: Duration,

    /// `lock_timeout` of every PostgreSQL session: a statement waiting longer for a lock (a write
    /// behind another on the same collection, a search behind a DeleteCollection) gives up,
    /// UNAVAILABLE (0: no limit).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_LOCK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub postgres_lock_timeout: Duration,

    /// Longest item id, in bytes.
    #[arg(long, env = "CLIP_SERVE_MAX_ID_BYTES", default_value_t = 256)]
    pub max_id_bytes: u32,

    /// Most bytes of metadata keys and values per item (and per search filter).
    #[arg(long, env = "CLIP_SERVE_MAX_METADATA_BYTES", default_value_t = 16 * 1024)]
    pub max_metadata_bytes: u32,

    /// Most bytes of items (ids, vectors, metadata) in one GetItems reply, and of collections in
    /// one ListCollections reply; a GetItems past it is refused, naming the limit.
    #[arg(long, env = "CLIP_SERVE_MAX_REPLY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_reply_bytes: u64,

    /// Most items in one collection; an Upsert that would pass it is refused whole.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_COLLECTION_ITEMS",
        default_value_t = 10_000_000
    )]
    pub max_collection_items: u64,

    /// Longest `model` string of a collection, in bytes.
    #[arg(long, env = "CLIP_SERVE_MAX_MODEL_BYTES", default_value_t = 256)]
    pub max_model_bytes: u32,

    /// Deepest nesting of free-form JSON in a request body (an item, a document, a query),
    /// checked while the body is parsed.
    #[arg(long, env = "CLIP_SERVE_MAX_JSON_DEPTH", default_value_t = 32)]
    pub max_json_depth: u32,

    /// Memory the free-form JSON of one request body (items, documents, queries) may take once
    /// parsed besides its strings' bytes, estimated while it is parsed (each value's slot, object
    /// entries, string buffers): a body of tiny values is refused before it grows many times its
    /// size.
    #[arg(long, env = "CLIP_SERVE_MAX_JSON_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_json_bytes: u64,

    /// Size of the text-embedding cache that spares repeated inline labels, in bytes (0: off).
    #[arg(long, env = "CLIP_SERVE_TEXT_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub text_cache_bytes: u64,

    /// Apply EXIF orientation before preprocessing. open_clip does not, so the default does not either.
    #[arg(
        long,
        env = "CLIP_SERVE_APPLY_EXIF_ORIENTATION",
        default_value_t = false
    )]
    pub apply_exif_orientation: bool,

    /// Skip the warm-up inference at start-up (health turns SERVING right after loading).
    #[arg(long, env = "CLIP_SERVE_SKIP_WARMUP", default_value_t = false)]
    pub skip_warmup: bool,

    /// On SIGTERM/SIGINT, how long calls in flight may take to finish before the remaining
    /// connections are closed (e.g. 30s, 500ms).
    #[arg(long, env = "CLIP_SERVE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// An API key every call must present (`authorization: Bearer KEY`), except health checks,
    /// /healthz, /readyz and /metrics. Prefer --api-key-file: a flag shows in `ps`.
    #[arg(long, env = "CLIP_SERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A file of API keys, one per line (`#` comments), re-read on SIGHUP: `name:key` (usage and logs
    /// show the name; a bare key is named by a short hash) and optionally ` rate=REQ_PER_S[:BURST]`.
    #[arg(long, env = "CLIP_SERVE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Items per second (and burst) each API key may spend, unless its key file line sets its own.
    /// A call costs its item count (images and texts embedded, images classified, items upserted,
    /// candidates ranked; at least 1), a stream 1 per item: a call of one item costs what a call
    /// cost before. A call larger than the burst is refused. Over it: 429 with Retry-After /
    /// RESOURCE_EXHAUSTED with RetryInfo. No limit without keys.
    #[arg(long, env = "CLIP_SERVE_RATE_LIMIT", value_name = "REQ_PER_S[:BURST]")]
    pub rate_limit: Option<crate::security::RateLimit>,

    /// Failed API key checks one peer address may make per minute (IPv6: per /64); past them its
    /// calls get 429 / RESOURCE_EXHAUSTED without a key check until the minute is over. 0: no limit.
    /// The address is the TCP peer's: behind a proxy that does not keep client addresses (a
    /// load balancer with SNAT) all clients share one, so raise this or set 0 there.
    #[arg(
        long,
        env = "CLIP_SERVE_AUTH_FAILURES_PER_MINUTE",
        default_value_t = 10
    )]
    pub auth_failures_per_minute: u32,

    /// Label /metrics usage series (`clip_usage_total`) with API key names (or, for bare keys,
    /// hash prefixes). Off: every key counts under key="redacted".
    #[arg(long, env = "CLIP_SERVE_METRICS_KEY_NAMES", default_value_t = false)]
    pub metrics_key_names: bool,

    /// With API keys configured, let gRPC reflection through without a key.
    #[arg(long, env = "CLIP_SERVE_PUBLIC_REFLECTION", default_value_t = false)]
    pub public_reflection: bool,

    /// TLS certificate chain (PEM) for both listeners; needs --tls-key.
    #[arg(long, env = "CLIP_SERVE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "CLIP_SERVE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to; turns on mutual TLS.
    #[arg(long, env = "CLIP_SERVE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "CLIP_SERVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info,clip_serve=debug`.
    #[arg(long, env = "CLIP_SERVE_LOG", default_value = "info,ort=warn")]
    pub log_filter: String,

    #[command(flatten)]
    pub trace: crate::telemetry::TraceArgs,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Local,
    Postgres,
}

/// Validated server configuration: one struct per domain, built here, read by `server.rs`.
#[derive(Debug, Clone)]
pub struct Config {
    pub model_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Plain-HTTP probes and metrics, beside a TLS `http_addr`.
    pub probe_addr: Option<SocketAddr>,
    pub ort_dylib_path: PathBuf,
    /// The execution provider and its options (its `max_batch_size` follows `embed.batch`).
    pub providers: ProviderOptions,
    pub precision: Precision,
    pub allow_ungated_precision: bool,
    pub full_length_text: bool,
    pub intra_op_threads: usize,
    pub skip_warmup: bool,
    /// Request limits, batching, streams and preprocessing (admission takes its permit count from
    /// `embed.limits.max_concurrent_requests`).
    pub embed: EmbedConfig,
    pub data_dir: PathBuf,
    pub classify: ClassifyConfig,
    pub retrieve: RetrieveConfig,
    /// Where collections (and with postgres, label sets) live.
    pub store: StoreConfig,
    pub shutdown_grace: Duration,
    /// Connection and body bounds of both doors.
    pub doors: DoorConfig,
    pub max_inflight_bytes: u64,
    pub max_stream_readers: usize,
    /// `None`: connections live as long as their clients keep them.
    pub max_connection_age: Option<Duration>,
    pub http2_keepalive: Option<Duration>,
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    pub rate_limit: Option<crate::security::RateLimit>,
    /// `--auth-failures-per-minute` (0: no limit).
    pub auth_failures_per_minute: u32,
    /// `--metrics-key-names`.
    pub metrics_key_names: bool,
    pub public_reflection: bool,
    pub tls: TlsPaths,
    /// Model names the HTTP API accepts besides the served ids (`--model-alias`).
    pub model_aliases: Vec<String>,
    /// `--fetch-image-urls` and its settings; `None`: URLs are refused.
    pub fetch: Option<FetchConfig>,
    /// `--max-json-depth`: nesting of free-form JSON in request bodies.
    pub max_json_depth: usize,
    /// `--max-json-bytes`: parsed free-form JSON per request body.
    pub max_json_bytes: usize,
}

impl ServeArgs {
    /// Checks the flags and resolves defaults. Errors are one line naming the flag.
    pub fn validate(self) -> Result<Config, String> {
        fn positive(name: &str, v: u64) -> Result<u64, String> {
            if v == 0 {
                Err(format!("--{name} must be greater than 0"))
            } else {
                Ok(v)
            }
        }
        let to_usize = |name: &str, v: u64| -> Result<usize, String> {
            usize::try_from(positive(name, v)?).map_err(|_| format!("--{name} {v} is too large"))
        };
        let max_message_bytes = to_usize("max-message-bytes", self.max_message_bytes)?;
        if max_message_bytes > u32::MAX as usize {
            return Err(format!(
                "--max-message-bytes {max_message_bytes} is over 4 GiB"
            ));
        }
        let limits = Limits {
            max_items_per_request: to_usize(
                "max-items-per-request",
                self.max_items_per_request.into(),
            )?,
            max_image_bytes: to_usize("max-image-bytes", self.max_image_bytes)?,
            max_image_pixels: positive("max-image-pixels", self.max_image_pixels)?,
            max_text_bytes: to_usize("max-text-bytes", self.max_text_bytes.into())?,
            max_message_bytes,
            max_concurrent_requests: to_usize(
                "max-concurrent-requests",
                self.max_concurrent_requests.into(),
            )?,
        };
        let max_stream_in_flight =
            to_usize("max-stream-in-flight", self.max_stream_in_flight.into())?;
        let batch = BatcherConfig {
            max_batch_size: to_usize("max-batch-size", self.max_batch_size.into())?,
            max_batch_delay: self.max_batch_delay,
            max_queue_rows: to_usize("max-queue-rows", self.max_queue_rows.into())?,
            priority_aging: self.priority_aging,
        };
        if batch.max_queue_rows < limits.max_items_per_request {
            return Err(format!(
                "--max-queue-rows {} is smaller than --max-items-per-request {}: a full request could never be queued",
                batch.max_queue_rows, limits.max_items_per_request
            ));
        }
        let classify = ClassifyConfig {
            prompts: PromptLimits {
                max_labels: to_usize("max-labels", self.max_labels.into())?,
                max_templates: to_usize("max-templates", self.max_templates.into())?,
                max_text_bytes: limits.max_text_bytes,
            },
            max_inline_prompts: to_usize("max-inline-prompts", self.max_inline_prompts.into())?,
            text_cache_bytes: self.text_cache_bytes,
            max_label_sets: to_usize("max-label-sets", self.max_label_sets.into())?,
            max_label_set_prompts: to_usize(
                "max-label-set-prompts",
                self.max_label_set_prompts.into(),
            )?,
        };
        let trt_set = self.trt_fp16
            || self.trt_engine_cache_dir.is_some()
            || self.trt_workspace_bytes.is_some();
        if trt_set && self.provider != Provider::Tensorrt {
            return Err(format!(
                "--trt-fp16, --trt-engine-cache-dir and --trt-workspace-bytes apply to --provider tensorrt, not {}",
                self.provider.as_str()
            ));
        }
        let retrieve = RetrieveConfig {
            max_top_k: to_usize("max-top-k", self.max_top_k.into())?,
            max_upsert_items: to_usize("max-upsert-items", self.max_upsert_items.into())?,
            max_collections: to_usize("max-collections", self.max_collections.into())?,
            max_id_bytes: to_usize("max-id-bytes", self.max_id_bytes.into())?,
            max_metadata_bytes: to_usize("max-metadata-bytes", self.max_metadata_bytes.into())?,
            search_threads: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            ann_min_vectors: usize::try_from(self.ann_min_vectors)
                .map_err(|_| format!("--ann-min-vectors {} is too large", self.ann_min_vectors))?,
            ann: crate::retrieve::AnnParams {
                graph: self.ann_graph,
                oversample: match self.ann_oversample {
                    n @ 1..=1000 => n as usize,
                    n => return Err(format!("--ann-oversample {n} is outside 1-1000")),
                },
                ..crate::retrieve::AnnParams::default()
            },
            recall: crate::retrieve::recall::RecallConfig {
                target_permille: match self.recall_target {
                    t if (0.0..=1.0).contains(&t) => (t * 1000.0).round() as u32,
                    t => return Err(format!("--recall-target {t} is outside 0-1")),
                },
                interval: std::time::Duration::from_secs(self.recall_check_interval),
                samples: match self.recall_samples {
                    n @ 0..=1000 => n as usize,
                    n => return Err(format!("--recall-samples {n} is over 1000")),
                },
                max_oversample: match self.recall_max_oversample {
                    n @ 1..=1000 => n as usize,
                    n => return Err(format!("--recall-max-oversample {n} is outside 1-1000")),
                },
            },
            max_reply_bytes: to_usize("max-reply-bytes", self.max_reply_bytes)?,
            max_collection_items: to_usize("max-collection-items", self.max_collection_items)?,
            max_model_bytes: to_usize("max-model-bytes", self.max_model_bytes.into())?,
        };
        let fetch = self.fetch_config(limits.max_image_bytes)?;
        let store = self.store_config()?;
        let doors = self.door_config()?;
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let intra_op_threads = self.intra_op_threads.map_or(cores, NonZeroUsize::get);
        Ok(Config {
            model_dir: self.model_dir,
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            probe_addr: self.probe_addr.0,
            ort_dylib_path: self
                .ort_dylib_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ORT_DYLIB)),
            providers: ProviderOptions {
                provider: self.provider,
                device_id: self.device_id,
                trt_fp16: self.trt_fp16,
                trt_engine_cache_dir: self.trt_engine_cache_dir,
                trt_workspace_bytes: self.trt_workspace_bytes,
                max_batch_size: batch.max_batch_size,
            },
            precision: self.precision,
            allow_ungated_precision: self.allow_ungated_precision,
            full_length_text: self.full_length_text,
            intra_op_threads,
            skip_warmup: self.skip_warmup,
            embed: EmbedConfig {
                limits,
                batch,
                max_stream_in_flight,
                apply_exif_orientation: self.apply_exif_orientation,
                preprocess_workers: cores,
                max_decode_bytes: positive("max-decode-bytes", self.max_decode_bytes)?,
            },
            data_dir: self.data_dir,
            classify,
            retrieve,
            store,
            shutdown_grace: self.shutdown_grace,
            doors,
            max_inflight_bytes: positive("max-inflight-bytes", self.max_inflight_bytes)?,
            max_stream_readers: to_usize("max-stream-readers", self.max_stream_readers.into())?,
            max_connection_age: Some(self.max_connection_age).filter(|d| !d.is_zero()),
            http2_keepalive: Some(self.http2_keepalive).filter(|d| !d.is_zero()),
            api_key: self.api_key.filter(|k| !k.is_empty()).map(Secret),
            api_key_file: self.api_key_file,
            rate_limit: self.rate_limit,
            auth_failures_per_minute: self.auth_failures_per_minute,
            metrics_key_names: self.metrics_key_names,
            public_reflection: self.public_reflection,
            model_aliases: self
                .model_aliases
                .into_iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            fetch,
            max_json_depth: to_usize("max-json-depth", self.max_json_depth.into())?,
            max_json_bytes: to_usize("max-json-bytes", self.max_json_bytes)?,
            tls: TlsPaths {
                cert: self.tls_cert,
                key: self.tls_key,
                client_ca: self.tls_client_ca,
            },
        })
    }
}

impl ServeArgs {
    /// The connection and body flags, checked.
    fn door_config(&self) -> Result<DoorConfig, String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be greater than 0".into());
        }
        for (name, d) in [
            ("header-read-timeout", self.header_read_timeout),
            ("body-read-timeout", self.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("--{name} must be greater than 0"));
            }
        }
        if self.max_body_readers == 0 {
            return Err("--max-body-readers must be greater than 0".into());
        }
        // A live client's ping answers must come before the idle deadline.
        let keepalive_floor = (!self.http2_keepalive.is_zero())
            .then(|| self.http2_keepalive + Duration::from_secs(21));
        let idle_timeout = Some(self.idle_timeout)
            .filter(|d| !d.is_zero())
            .map(|d| keepalive_floor.map_or(d, |floor| d.max(floor)));
        Ok(DoorConfig {
            max_connections: self.max_connections as usize,
            max_connections_per_peer: self.max_connections_per_peer as usize,
            header_read_timeout: self.header_read_timeout,
            idle_timeout,
            body_read_timeout: self.body_read_timeout,
            body_min_rate: self.body_min_rate,
            max_body_readers: self.max_body_readers as usize,
            allowed_hosts: self
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        })
    }

    /// The `--fetch-*` flags, checked (`None` without `--fetch-image-urls`).
    fn fetch_config(&self, max_image_bytes: usize) -> Result<Option<FetchConfig>, String> {
        if !self.fetch_image_urls {
            if !self.fetch_allow_hosts.is_empty() {
                return Err("--fetch-allow-hosts needs --fetch-image-urls".into());
            }
            return Ok(None);
        }
        let allow_hosts = self
            .fetch_allow_hosts
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.parse().map_err(|e| format!("--fetch-allow-hosts: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_bytes = match self.fetch_max_bytes {
            None => max_image_bytes,
            Some(0) => return Err("--fetch-max-bytes must be greater than 0".into()),
            Some(n) => usize::try_from(n)
                .map_err(|_| format!("--fetch-max-bytes {n} is too large"))?
                .min(max_image_bytes),
        };
        if self.fetch_timeout.is_zero() {
            return Err("--fetch-timeout must be greater than 0".into());
        }
        if self.fetch_concurrency == 0 {
            return Err("--fetch-concurrency must be greater than 0".into());
        }
        let concurrency = self.fetch_concurrency as usize;
        let per_request = match self.fetch_concurrency_per_request {
            None => FetchConfig::default_per_request(concurrency),
            Some(0) => return Err("--fetch-concurrency-per-request must be greater than 0".into()),
            Some(n) => (n as usize).min(concurrency),
        };
        Ok(Some(FetchConfig {
            allow_hosts,
            max_bytes,
            timeout: self.fetch_timeout,
            max_redirects: self.fetch_max_redirects,
            concurrency,
            per_request,
        }))
    }

    /// `--store` and the `--postgres-*` flags; reads the password file.
    fn store_config(&self) -> Result<StoreConfig, String> {
        let postgres_set = self.postgres_url.is_some()
            || self.postgres_password.is_some()
            || self.postgres_password_file.is_some()
            || self.postgres_ca_file.is_some();
        match self.store {
            StoreKind::Local if postgres_set => Err(
                "--postgres-url, --postgres-password(-file) and --postgres-ca-file apply to --store postgres, not local"
                    .into(),
            ),
            StoreKind::Local => Ok(StoreConfig::Local),
            StoreKind::Postgres => {
                let url = self
                    .postgres_url
                    .clone()
                    .filter(|u| !u.is_empty())
                    .ok_or("--store postgres needs --postgres-url (or CLIP_SERVE_POSTGRES_URL)")?;
                let password = match (&self.postgres_password_file, &self.postgres_password) {
                    (Some(_), Some(_)) => {
                        return Err(
                            "give the PostgreSQL password once: --postgres-password-file or --postgres-password".into(),
                        );
                    }
                    (Some(path), None) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|e| {
                                format!("--postgres-password-file {}: {e}", path.display())
                            })?
                            .trim_end_matches(['\n', '\r'])
                            .to_string(),
                    ),
                    (None, password) => password.clone().filter(|p| !p.is_empty()),
                };
                if self.postgres_pool_size == 0 {
                    return Err("--postgres-pool-size must be greater than 0".into());
                }
                if self.postgres_connect_timeout.is_zero() {
                    return Err("--postgres-connect-timeout must be greater than 0".into());
                }
                Ok(StoreConfig::Postgres(PgConfig {
                    url,
                    password,
                    pool_size: self.postgres_pool_size as usize,
                    exact_below: usize::try_from(self.postgres_exact_below).unwrap_or(usize::MAX),
                    connect_timeout: self.postgres_connect_timeout,
                    ca_file: self.postgres_ca_file.clone(),
                    halfvec: self.postgres_halfvec,
                    ef_search: self.postgres_ef_search as usize,
                    statement_timeout: self.postgres_statement_timeout,
                    lock_timeout: self.postgres_lock_timeout,
                }))
            }
        }
    }

    /// Every flag at its default (environment variables apply, as on the command line).
    fn parse_defaults() -> Box<ServeArgs> {
        match Cli::parse_from(["clip-serve", "serve"]).command {
            Command::Serve(args) => args,
            other => unreachable!("`serve` parsed as {other:?}"),
        }
    }
}

impl Config {
    /// A configuration with every default, for tests and embedding the server as a library.
    pub fn for_model(model_dir: impl Into<PathBuf>) -> Self {
        let mut args = ServeArgs::parse_defaults();
        args.model_dir = model_dir.into();
        args.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        args.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        args.probe_addr = OptionalAddr(Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        // The defaults are valid by construction; the unit test below keeps them so.
        match args.validate() {
            Ok(config) => config,
            Err(e) => unreachable!("default configuration is invalid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["clip-serve", "serve"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(args) => args.validate(),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).expect("defaults validate");
        assert_eq!(config.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(config.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(config.model_dir, PathBuf::from(DEFAULT_MODEL_DIR));
        assert_eq!(config.providers.provider, Provider::Cpu);
        assert!(config.intra_op_threads >= 1);
        assert!(!config.embed.apply_exif_orientation);
    }

    #[test]
    fn fetch_flags_validate() {
        assert_eq!(parse(&[]).unwrap().fetch, None);
        let err = parse(&["--fetch-allow-hosts", "a.com"]).unwrap_err();
        assert!(err.contains("--fetch-image-urls"), "{err}");
        let config = parse(&[
            "--fetch-image-urls",
            "--fetch-allow-hosts",
            "a.com,127.0.0.1:9",
        ]);
        let fetch = config.unwrap().fetch.unwrap();
        assert_eq!(fetch.allow_hosts.len(), 2);
        assert_eq!(fetch.max_bytes, 16 * 1024 * 1024);
        assert_eq!(fetch.timeout, Duration::from_secs(10));
        assert_eq!((fetch.concurrency, fetch.per_request), (16, 4));
        let err = parse(&["--fetch-image-urls", "--fetch-allow-hosts", "*"]).unwrap_err();
        assert!(err.contains("--fetch-allow-hosts"), "{err}");
    }

    #[test]
    fn zero_limits_are_refused_with_the_flag_name() {
        let err = parse(&["--max-items-per-request", "0"]).unwrap_err();
        assert!(err.contains("--max-items-per-request"), "{err}");
        let err = parse(&["--max-image-pixels", "0"]).unwrap_err();
        assert!(err.contains("--max-image-pixels"), "{err}");
    }

    #[test]
    fn store_flags_select_and_configure_postgres() {
        assert!(matches!(parse(&[]).unwrap().store, StoreConfig::Local));
        let err = parse(&["--store", "postgres"]).unwrap_err();
        assert!(err.contains("--postgres-url"), "{err}");
        let err = parse(&["--postgres-url", "postgres://h/db"]).unwrap_err();
        assert!(err.contains("--store postgres"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let config = parse(&[
            "--store",
            "postgres",
            "--postgres-url",
            "postgres://clip@db:5432/clip",
            "--postgres-password-file",
            file.to_str().unwrap(),
            "--postgres-pool-size",
            "4",
        ])
        .unwrap();
        let StoreConfig::Postgres(pg) = &config.store else {
            panic!("{:?}", config.store)
        };
        assert_eq!(pg.password.as_deref(), Some("s3cret"));
        assert_eq!((pg.pool_size, pg.exact_below), (4, 10_000));
        assert_eq!(
            (pg.statement_timeout, pg.lock_timeout),
            (Duration::from_secs(30), Duration::from_secs(5))
        );
        // Neither the password nor the URL is ever printed.
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("db:5432"),
            "{shown}"
        );
        let err = parse(&[
            "--store",
            "postgres",
            "--postgres-url",
            "postgres://h/db",
            "--postgres-pool-size",
            "0",
        ])
        .unwrap_err();
        assert!(err.contains("--postgres-pool-size"), "{err}");
    }

    #[test]
    fn flags_parse() {
        let config = parse(&[
            "--model-dir",
            "/m",
            "--grpc-addr",
            "127.0.0.1:9000",
            "--provider",
            "tensorrt",
            "--intra-op-threads",
            "3",
            "--apply-exif-orientation",
        ])
        .unwrap();
        assert_eq!(config.model_dir, PathBuf::from("/m"));
        assert_eq!(config.grpc_addr.port(), 9000);
        assert_eq!(config.providers.provider, Provider::Tensorrt);
        assert_eq!(config.intra_op_threads, 3);
        assert!(config.embed.apply_exif_orientation);
        assert!(parse(&["--provider", "tpu"]).is_err());
        let gpu = parse(&[
            "--provider",
            "tensorrt",
            "--trt-fp16",
            "--trt-engine-cache-dir",
            "/cache",
            "--trt-workspace-bytes",
            "4294967296",
            "--max-batch-size",
            "128",
        ])
        .unwrap();
        assert!(gpu.providers.trt_fp16);
        assert_eq!(
            gpu.providers.trt_engine_cache_dir,
            Some(PathBuf::from("/cache"))
        );
        assert_eq!(gpu.providers.trt_workspace_bytes, Some(1 << 32));
        assert_eq!(gpu.embed.batch.max_batch_size, 128);
        assert_eq!(gpu.providers.max_batch_size, 128);
        let aliases = parse(&[
            "--model-alias",
            "jina-clip-v2,rerank-v3.5",
            "--model-alias",
            "ViT-B-32__openai",
        ])
        .unwrap();
        assert_eq!(
            aliases.model_aliases,
            ["jina-clip-v2", "rerank-v3.5", "ViT-B-32__openai"]
        );
        let err = parse(&["--provider", "cuda", "--trt-fp16"]).unwrap_err();
        assert!(err.contains("--provider tensorrt"), "{err}");
    }

    #[test]
    fn durations_parse_in_human_forms() {
        assert_eq!(
            parse(&["--shutdown-grace", "1500ms"])
                .unwrap()
                .shutdown_grace,
            Duration::from_millis(1500)
        );
    }
}
