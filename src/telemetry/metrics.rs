//! Prometheus metrics (the `prometheus` crate), one registry per server so that servers started by
//! tests in one process do not share counters. Names follow Prometheus conventions: `clip_` prefix,
//! base units in the suffix (`_seconds`, `_rows`, `_total`).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::common::Modality;

/// Latency buckets from 0.5 ms to 60 s: CPU text inference is tens of ms, a large batch of images
/// on CPU takes seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The labels of `clip_model_info`.
pub struct ModelInfoLabels<'a> {
    pub model: &'a str,
    pub weights: &'a str,
    pub provider: &'a str,
    pub precision: &'a str,
    pub onnxruntime: &'a str,
}

/// Everything the server measures.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    requests_in_flight: IntGauge,
    preprocess_duration: HistogramVec,
    model_info: IntGaugeVec,
    image: BatchMetrics,
    text: BatchMetrics,
    classify: ClassifyMetrics,
    store_records_skipped: IntCounter,
    text_batch_length: Histogram,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    inflight_bytes: IntGauge,
    decode_reserved_bytes: IntGauge,
    usage: IntCounterVec,
    image_fetches: IntCounterVec,
    search_paths: IntCounterVec,
    search_recall: GaugeVec,
    mirror: MirrorMetrics,
    /// `--metrics-key-names`: usage series carry each key's name; off, all keys count under
    /// [`REDACTED_KEY`].
    key_names: bool,
}

/// The `key` label of usage series without `--metrics-key-names`.
pub const REDACTED_KEY: &str = "redacted";

/// Classify's instruments: the text-embedding cache and label-set builds.
#[derive(Clone)]
pub struct ClassifyMetrics {
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_bytes: IntGauge,
    build_progress: GaugeVec,
}

impl ClassifyMetrics {
    /// Fraction (0-1) of a label set's texts embedded by its running or last build.
    pub fn build_progress(&self, label_set: &str) -> Gauge {
        self.build_progress.with_label_values(&[label_set])
    }

    /// Drops a deleted label set's series.
    pub fn forget(&self, label_set: &str) {
        let _ = self.build_progress.remove_label_values(&[label_set]);
    }

    fn new() -> Result<Self, prometheus::Error> {
        Ok(ClassifyMetrics {
            cache_hits: IntCounter::new(
                "clip_text_cache_hits_total",
                "Label prompts whose embedding came from the text cache",
            )?,
            cache_misses: IntCounter::new(
                "clip_text_cache_misses_total",
                "Label prompts that had to be embedded",
            )?,
            cache_bytes: IntGauge::new(
                "clip_text_cache_bytes",
                "Bytes held by the text-embedding cache",
            )?,
            build_progress: GaugeVec::new(
                Opts::new(
                    "clip_label_set_build_progress_ratio",
                    "Fraction of a label set's texts embedded while its classifier is computed",
                ),
                &["label_set"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.cache_hits.clone()))?;
        registry.register(Box::new(self.cache_misses.clone()))?;
        registry.register(Box::new(self.cache_bytes.clone()))?;
        registry.register(Box::new(self.build_progress.clone()))
    }

    /// Instruments registered nowhere, for tests.
    #[allow(
        clippy::expect_used,
        reason = "constant, valid metric names (instruments for tests)"
    )]
    pub fn unregistered() -> Self {
        ClassifyMetrics::new().expect("valid metric names")
    }
}

/// The PostgreSQL store's search mirrors (`--postgres-mirror-*`): set after every poll round, so
/// an operator sees the `--postgres-mirror-max-items` budget fill and a mirror fall behind.
#[derive(Clone)]
pub struct MirrorMetrics {
    pub items: IntGauge,
    pub bytes: IntGauge,
    pub lag_seconds: Gauge,
}

impl MirrorMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(MirrorMetrics {
            items: IntGauge::new(
                "clip_postgres_mirror_items",
                "PostgreSQL store: items held in this replica's in-memory search mirrors (bounded by --postgres-mirror-max-items)",
            )?,
            bytes: IntGauge::new(
                "clip_postgres_mirror_bytes",
                "PostgreSQL store: bytes held by this replica's search mirrors (codes, ids and their maps; an estimate)",
            )?,
            lag_seconds: Gauge::new(
                "clip_postgres_mirror_lag_seconds",
                "PostgreSQL store: seconds since the least recently synced built mirror last caught up with the change log (0 without mirrors); a mirror more than ten polls (at least 60 s) behind is not searched",
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.items.clone()))?;
        registry.register(Box::new(self.bytes.clone()))?;
        registry.register(Box::new(self.lag_seconds.clone()))
    }
}

/// The `priority` label of the batcher's per-class instruments, in the batcher's class order.
pub const PRIORITY_LABELS: [&str; 4] = ["high", "normal", "low", "background"];

/// The batcher's instruments for one modality. Prometheus handles are cheap clones of shared atomics.
#[derive(Clone)]
pub struct BatchMetrics {
    pub queue_depth: IntGauge,
    /// By class: high, normal, low, background ([`PRIORITY_LABELS`]).
    pub queue_wait: [Histogram; 4],
    pub batch_size: Histogram,
    pub inference: Histogram,
    pub rows_computed: IntCounter,
    pub dropped_deadline: IntCounter,
    pub dropped_cancelled: IntCounter,
    pub rejected: IntCounter,
    /// Jobs refused for a full queue, by class (as `queue_wait`).
    pub refused_by_class: [IntCounter; 4],
}

impl BatchMetrics {
    /// Instruments registered nowhere, for tests and batchers outside a server.
    #[allow(
        clippy::expect_used,
        reason = "constant, valid metric names (instruments for tests)"
    )]
    pub fn unregistered() -> Self {
        let counter = |name: &str| IntCounter::new(name, name).expect("valid metric name");
        let histogram = |name: &str| {
            Histogram::with_opts(HistogramOpts::new(name, name)).expect("valid metric name")
        };
        BatchMetrics {
            queue_depth: IntGauge::new("queue_depth", "queue depth").expect("valid metric name"),
            queue_wait: PRIORITY_LABELS.map(|p| histogram(&format!("queue_wait_{p}"))),
            batch_size: histogram("batch_size"),
            inference: histogram("inference"),
            rows_computed: counter("rows_computed"),
            dropped_deadline: counter("dropped_deadline"),
            dropped_cancelled: counter("dropped_cancelled"),
            rejected: counter("rejected"),
            refused_by_class: PRIORITY_LABELS.map(|p| counter(&format!("refused_{p}"))),
        }
    }
}

impl Metrics {
    /// Creates and registers every metric. Fails only on a programming error (a bad name or a
    /// duplicate), which the unit test below catches.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "clip_requests_total",
                "Calls finished, by interface (grpc, http), service, method and gRPC status code \
                 (HTTP calls use the code of the same failure on gRPC)",
            ),
            &["interface", "service", "method", "code"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "clip_request_duration_seconds",
                "Time from receiving a call to its reply, by interface, service and method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["interface", "service", "method"],
        )?;
        let requests_in_flight = IntGauge::new(
            "clip_requests_in_flight",
            "Calls (and stream items) holding a request permit",
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "clip_queue_depth_rows",
                "Rows waiting in the batcher's queue",
            ),
            &["modality"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "clip_queue_wait_seconds",
                "Time a row waited in the queue before its batch was formed, by priority class",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["modality", "priority"],
        )?;
        let queue_refusals = IntCounterVec::new(
            Opts::new(
                "clip_queue_refusals_total",
                "Calls refused because their class's share of the queue was full, by priority class",
            ),
            &["modality", "priority"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new("clip_batch_size_rows", "Rows per inference batch")
                .buckets(BATCH_BUCKETS.to_vec()),
            &["modality"],
        )?;
        let inference = HistogramVec::new(
            HistogramOpts::new(
                "clip_inference_duration_seconds",
                "Time the model took per batch",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["modality"],
        )?;
        let preprocess_duration = HistogramVec::new(
            HistogramOpts::new(
                "clip_preprocess_duration_seconds",
                "Time to decode and resize one image, or to tokenize one text",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["modality"],
        )?;
        let rows_computed = IntCounterVec::new(
            Opts::new("clip_rows_computed_total", "Rows run through the model"),
            &["modality"],
        )?;
        let rows_dropped = IntCounterVec::new(
            Opts::new(
                "clip_rows_dropped_total",
                "Rows not computed: deadline (passed while queued), cancelled (caller went away), \
                 rejected (queue full)",
            ),
            &["modality", "reason"],
        )?;
        let model_info = IntGaugeVec::new(
            Opts::new(
                "clip_model_info",
                "The served model (value 1 once loaded); weights=random-init or test means \
                 meaningless vectors",
            ),
            &["model", "weights", "provider", "precision", "onnxruntime"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(requests_in_flight.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(queue_refusals.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(inference.clone()))?;
        registry.register(Box::new(preprocess_duration.clone()))?;
        registry.register(Box::new(rows_computed.clone()))?;
        registry.register(Box::new(rows_dropped.clone()))?;
        registry.register(Box::new(model_info.clone()))?;
        let classify = ClassifyMetrics::new()?;
        classify.register(&registry)?;

        let batch = |modality: Modality| {
            let m = modality.as_str();
            BatchMetrics {
                queue_depth: queue_depth.with_label_values(&[m]),
                queue_wait: PRIORITY_LABELS.map(|p| queue_wait.with_label_values(&[m, p])),
                batch_size: batch_size.with_label_values(&[m]),
                inference: inference.with_label_values(&[m]),
                rows_computed: rows_computed.with_label_values(&[m]),
                dropped_deadline: rows_dropped.with_label_values(&[m, "deadline"]),
                dropped_cancelled: rows_dropped.with_label_values(&[m, "cancelled"]),
                rejected: rows_dropped.with_label_values(&[m, "rejected"]),
                refused_by_class: PRIORITY_LABELS
                    .map(|p| queue_refusals.with_label_values(&[m, p])),
            }
        };
        let store_records_skipped = IntCounter::new(
            "clip_store_records_skipped_total",
            "Stored records (collection items or descriptions) that could not be decoded at start-up: \
             logged, skipped and kept on disk",
        )?;
        registry.register(Box::new(store_records_skipped.clone()))?;
        let text_batch_length = Histogram::with_opts(
            HistogramOpts::new(
                "clip_text_batch_length_tokens",
                "Token ids per row of each text batch run: the context length, or less on a text \
                 tower with a dynamic sequence axis (the batch's longest text, rounded up to 8)",
            )
            .buckets(vec![8.0, 16.0, 24.0, 32.0, 48.0, 64.0, 77.0, 128.0, 256.0]),
        )?;
        registry.register(Box::new(text_batch_length.clone()))?;
        let connections_open = IntGauge::new(
            "clip_connections_open",
            "Client connections open on the gRPC and plain-HTTP listeners (--max-connections)",
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        let connections_refused = IntCounter::new(
            "clip_connections_refused_total",
            "Connections closed on accept because --max-connections were open",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let inflight_bytes = IntGauge::new(
            "clip_inflight_request_bytes",
            "Request payload bytes held against --max-inflight-bytes (gRPC messages, stream items, HTTP bodies)",
        )?;
        registry.register(Box::new(inflight_bytes.clone()))?;
        let decode_reserved_bytes = IntGauge::new(
            "clip_decode_reserved_bytes",
            "Working memory reserved by the image decodes running now, against --max-decode-bytes",
        )?;
        registry.register(Box::new(decode_reserved_bytes.clone()))?;
        let usage = IntCounterVec::new(
            Opts::new(
                "clip_usage_total",
                "Usage per API key (its name with --metrics-key-names, else all keys as key=\"redacted\"): requests, images and text tokens embedded, rerank documents",
            ),
            &["key", "kind"],
        )?;
        registry.register(Box::new(usage.clone()))?;
        let image_fetches = IntCounterVec::new(
            Opts::new(
                "clip_image_fetches_total",
                "Image URL fetches (--fetch-image-urls) by outcome: ok, refused, too_large, timeout, error, busy (the byte budget was full)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(image_fetches.clone()))?;
        let search_paths = IntCounterVec::new(
            Opts::new(
                "clip_search_path_total",
                "Collection searches by the path that answered them: exact (a scan of every item or of a filter's matches), binary (binary codes scanned, shortlist rescored exactly), graph (HNSW candidates rescored), hnsw (PostgreSQL's index), mirror (PostgreSQL: this replica's in-memory codes scanned, shortlist rescored by PostgreSQL), empty (nothing could match)",
            ),
            &["path"],
        )?;
        registry.register(Box::new(search_paths.clone()))?;
        let search_recall = GaugeVec::new(
            Opts::new(
                "clip_search_recall",
                "Local store: recall@10 of the binary scan measured on a sample of the collection's own recent queries against the exact scan (--recall-check-interval; --recall-target raises the oversampling when under it)",
            ),
            &["collection"],
        )?;
        registry.register(Box::new(search_recall.clone()))?;
        let mirror = MirrorMetrics::new()?;
        mirror.register(&registry)?;
        Ok(Metrics {
            mirror,
            search_paths,
            search_recall,
            usage,
            image_fetches,
            key_names: false,
            decode_reserved_bytes,
            store_records_skipped,
            text_batch_length,
            connections_open,
            connections_refused,
            inflight_bytes,
            image: batch(Modality::Image),
            text: batch(Modality::Text),
            classify,
            registry,
            requests,
            request_duration,
            requests_in_flight,
            preprocess_duration,
            model_info,
        })
    }

    pub fn batch(&self, modality: Modality) -> BatchMetrics {
        match modality {
            Modality::Image => self.image.clone(),
            Modality::Text => self.text.clone(),
        }
    }

    pub fn classify(&self) -> ClassifyMetrics {
        self.classify.clone()
    }

    /// `--metrics-key-names`: label usage series with key names (off by default: `/metrics` is
    /// often readable by more people than the key file, and names or hash prefixes tell them which
    /// keys exist and how busy each is).
    pub fn with_key_names(mut self, on: bool) -> Self {
        self.key_names = on;
        self
    }

    /// The usage counter of `kind` for the key named `key` (counted under [`REDACTED_KEY`]
    /// without `--metrics-key-names`).
    pub fn usage_counter(&self, key: &str, kind: &str) -> IntCounter {
        let key = if self.key_names { key } else { REDACTED_KEY };
        self.usage.with_label_values(&[key, kind])
    }

    /// `clip_search_recall{collection}`.
    pub fn search_recall(&self) -> GaugeVec {
        self.search_recall.clone()
    }

    /// The PostgreSQL search mirrors' gauges.
    pub fn mirror(&self) -> MirrorMetrics {
        self.mirror.clone()
    }

    /// `clip_search_path_total{path}`.
    pub fn search_paths(&self) -> IntCounterVec {
        self.search_paths.clone()
    }

    /// `clip_image_fetches_total{outcome}`.
    pub fn image_fetches(&self) -> IntCounterVec {
        self.image_fetches.clone()
    }

    /// Decode working memory reserved now.
    pub fn decode_reserved_bytes(&self) -> IntGauge {
        self.decode_reserved_bytes.clone()
    }

    /// Request payload bytes in flight.
    pub fn inflight_bytes(&self) -> IntGauge {
        self.inflight_bytes.clone()
    }

    /// (open connections, connections refused) for the connection limit.
    pub fn connections(&self) -> (IntGauge, IntCounter) {
        (
            self.connections_open.clone(),
            self.connections_refused.clone(),
        )
    }

    /// Observes the sequence length of each text batch run.
    pub fn text_batch_length(&self) -> Histogram {
        self.text_batch_length.clone()
    }

    /// Counts stored records skipped at start-up.
    pub fn store_records_skipped(&self) -> IntCounter {
        self.store_records_skipped.clone()
    }

    /// Records a finished gRPC call.
    pub fn observe_call(&self, service: &str, method: &str, code: &str, seconds: f64) {
        self.observe_call_on("grpc", service, method, code, seconds);
    }

    /// Records a finished call on `interface` (`grpc` or `http`).
    pub fn observe_call_on(
        &self,
        interface: &str,
        service: &str,
        method: &str,
        code: &str,
        seconds: f64,
    ) {
        self.requests
            .with_label_values(&[interface, service, method, code])
            .inc();
        self.request_duration
            .with_label_values(&[interface, service, method])
            .observe(seconds);
    }

    pub fn requests_in_flight(&self) -> &IntGauge {
        &self.requests_in_flight
    }

    pub fn preprocess(&self, modality: Modality) -> Histogram {
        self.preprocess_duration
            .with_label_values(&[modality.as_str()])
    }

    pub fn set_model_info(&self, info: ModelInfoLabels<'_>) {
        let ModelInfoLabels {
            model,
            weights,
            provider,
            precision,
            onnxruntime,
        } = info;
        self.model_info.reset();
        self.model_info
            .with_label_values(&[model, weights, provider, precision, onnxruntime])
            .set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render_with_their_labels() {
        let metrics = Metrics::new().expect("metrics register");
        metrics.observe_call("Embed", "EmbedTexts", "OK", 0.02);
        metrics.batch(Modality::Text).dropped_deadline.inc_by(3);
        metrics.batch(Modality::Image).batch_size.observe(8.0);
        metrics.set_model_info(ModelInfoLabels {
            model: "ViT-B-32",
            weights: "random-init",
            provider: "cpu",
            precision: "int8",
            onnxruntime: "1.32.0",
        });
        let text = metrics.render();
        for line in [
            r#"clip_requests_total{code="OK",interface="grpc",method="EmbedTexts",service="Embed"} 1"#,
            r#"clip_rows_dropped_total{modality="text",reason="deadline"} 3"#,
            r#"clip_batch_size_rows_count{modality="image"} 1"#,
            r#"clip_model_info{model="ViT-B-32",onnxruntime="1.32.0",precision="int8",provider="cpu",weights="random-init"} 1"#,
            r#"clip_request_duration_seconds_bucket{interface="grpc",method="EmbedTexts",service="Embed",le="0.025"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
