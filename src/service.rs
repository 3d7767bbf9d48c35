//! The embedding service in domain terms: validation, limits, preprocessing off the async threads,
//! inference. The gRPC layer (`grpc/`) converts messages to these calls and errors to statuses;
//! nothing here knows about the wire.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::Instrument;

use crate::{
    batch::{BatchError, BatchOutput, Batcher, BatcherConfig, Engine},
    config::{Config, Limits, Provider},
    error::{Modality, ServiceError},
    model::{LoadedModel, TowerSpec, WeightsKind, runtime},
    preprocess::image::{self as image_pre, ImageOptions},
    telemetry::metrics::Metrics,
};

/// One embedding, L2-normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub values: Vec<f32>,
    /// Texts only: the text did not fit the context length.
    pub truncated: bool,
    /// Texts only: tokens including start and end markers, before truncation.
    pub token_count: u32,
}

/// Where a request's time went: preprocessing (wall time, images decode in parallel), waiting in
/// the batch queue, and inference (of the batches that carried its rows).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub preprocess: Duration,
    pub queue: Duration,
    pub inference: Duration,
}

/// A request's embeddings, in order, and its timings.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub embeddings: Vec<Embedding>,
    pub timings: Timings,
}

/// One item of a stream.
#[derive(Debug, Clone)]
pub enum Item {
    Image(Vec<u8>),
    Text(String),
}

/// A tower as Info reports it.
#[derive(Debug, Clone, Default)]
pub struct TowerInfo {
    pub loaded: bool,
    pub path: String,
    pub input: String,
    pub output: String,
    pub dynamic_batch: bool,
}

/// What is being served.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_name: String,
    pub pretrained: Option<String>,
    pub weights: WeightsKind,
    pub display_name: String,
    pub embedding_dim: usize,
    pub image_size: u32,
    pub context_length: usize,
    pub image: TowerInfo,
    pub text: TowerInfo,
    pub execution_provider: Provider,
    pub onnxruntime_version: String,
    pub server_version: &'static str,
    pub limits: Limits,
    pub logit_scale: f32,
    pub logit_scale_defaulted: bool,
    pub apply_exif_orientation: bool,
    pub model_dir: String,
}

struct State {
    /// Set once the model is loaded and warmed up.
    loaded: OnceLock<Loaded>,
    batch_config: BatcherConfig,
    /// Flips to true when shutdown begins; calls and streams read or wait on it.
    shutdown: watch::Sender<bool>,
    limits: Limits,
    /// Requests in flight: unary calls try-acquire, streams wait.
    requests: Arc<Semaphore>,
    /// The share of `requests` that stream items may hold at once (3/4): streams wait for permits
    /// while unary calls are refused at once, so without a cap a few busy streams would take every
    /// permit as it frees and unary callers would only ever see RESOURCE_EXHAUSTED.
    stream_share: Arc<Semaphore>,
    /// Preprocessing jobs (an image decode + resize, or a request's tokenization) running at once:
    /// one per core. Bounds decode memory to cores x max_image_pixels x the decoder's bytes per
    /// pixel (up to ~16 for 16-bit RGBA, plus conversion buffers).
    decoders: Arc<Semaphore>,
    metrics: Metrics,
    image_options: ImageOptions,
    max_stream_in_flight: usize,
}

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct EmbedService {
    state: Arc<State>,
}

/// Whether a call waits for a request permit (streams) or is refused at once (unary calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    TryNow,
    Wait,
}

/// A request permit; counted in `clip_requests_in_flight` while held.
pub struct Permit {
    _request: OwnedSemaphorePermit,
    _stream_share: Option<OwnedSemaphorePermit>,
    in_flight: prometheus::IntGauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl EmbedService {
    pub fn new(config: &Config, metrics: Metrics) -> Self {
        let decoders = std::thread::available_parallelism().map_or(2, |n| n.get());
        let max_requests = config.limits.max_concurrent_requests;
        EmbedService {
            state: Arc::new(State {
                loaded: OnceLock::new(),
                batch_config: config.batch,
                shutdown: watch::Sender::new(false),
                limits: config.limits,
                requests: Arc::new(Semaphore::new(max_requests)),
                stream_share: Arc::new(Semaphore::new((max_requests * 3 / 4).max(1))),
                decoders: Arc::new(Semaphore::new(decoders)),
                metrics,
                image_options: ImageOptions {
                    max_pixels: config.limits.max_image_pixels,
                    apply_exif_orientation: config.apply_exif_orientation,
                },
                max_stream_in_flight: config.max_stream_in_flight,
            }),
        }
    }

    /// Makes the model available to requests (after loading and warm-up), starting one batcher per
    /// tower.
    pub fn set_model(&self, model: Arc<LoadedModel>) {
        let config = self.state.batch_config;
        let metrics = &self.state.metrics;
        let image = model.image.is_some().then(|| {
            Batcher::start(
                ImageEngine(Arc::clone(&model)),
                config,
                metrics.batch(Modality::Image),
            )
        });
        let text = model.text.is_some().then(|| {
            Batcher::start(
                TextEngine(Arc::clone(&model)),
                config,
                metrics.batch(Modality::Text),
            )
        });
        metrics.set_model_info(
            &model.config.display_name(),
            model.config.weights.as_str(),
            model.provider.as_str(),
            &runtime::onnxruntime_version(),
        );
        let _ = self.state.loaded.set(Loaded { model, image, text });
    }

    fn is_shutting_down(&self) -> bool {
        *self.state.shutdown.borrow()
    }

    /// The loaded model, or UNAVAILABLE while it loads or the server shuts down.
    pub fn loaded_model(&self) -> Result<Arc<LoadedModel>, ServiceError> {
        Ok(Arc::clone(&self.loaded()?.model))
    }

    /// The loaded model for work already admitted (it finishes during shutdown).
    pub fn admitted_model(&self) -> Result<Arc<LoadedModel>, ServiceError> {
        Ok(Arc::clone(&self.model_state()?.model))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Ready to serve, or why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.is_shutting_down() {
            Err("shutting down")
        } else if self.state.loaded.get().is_none() {
            Err("the model is loading")
        } else {
            Ok(())
        }
    }

    /// New calls get UNAVAILABLE from now on; calls already admitted finish.
    pub fn begin_shutdown(&self) {
        self.state.shutdown.send_replace(true);
    }

    /// Resolves when no request permit is held (every admitted call and stream item has finished).
    pub async fn drained(&self) {
        let all = u32::try_from(self.state.limits.max_concurrent_requests).unwrap_or(u32::MAX);
        let _ = self.state.requests.acquire_many(all).await;
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_started(&self) {
        let mut rx = self.state.shutdown.subscribe();
        let _ = rx.wait_for(|started| *started).await;
    }

    pub fn limits(&self) -> Limits {
        self.state.limits
    }

    pub fn max_stream_in_flight(&self) -> usize {
        self.state.max_stream_in_flight
    }

    /// The model, for new work: UNAVAILABLE while loading or shutting down.
    fn loaded(&self) -> Result<&Loaded, ServiceError> {
        if self.is_shutting_down() {
            return Err(ServiceError::Unavailable("server is shutting down".into()));
        }
        self.model_state()
    }

    /// The model, for work already admitted: it finishes during shutdown.
    fn model_state(&self) -> Result<&Loaded, ServiceError> {
        self.state.loaded.get().ok_or_else(|| {
            ServiceError::Unavailable("model is loading; retry when health reports SERVING".into())
        })
    }

    /// Takes a request permit: unary calls at once or RESOURCE_EXHAUSTED, stream items wait (for a
    /// place in the streams' share first, so unary calls keep a quarter of the permits).
    pub async fn admit(&self, admission: Admission) -> Result<Permit, ServiceError> {
        let requests = Arc::clone(&self.state.requests);
        let (request, stream_share) = match admission {
            Admission::TryNow => {
                self.loaded()?;
                let permit = requests.try_acquire_owned().map_err(|_| {
                    ServiceError::ResourceExhausted(format!(
                        "server is at its limit of {} concurrent requests (--max-concurrent-requests); retry later",
                        self.state.limits.max_concurrent_requests
                    ))
                })?;
                (permit, None)
            }
            Admission::Wait => {
                let shutting_down = || ServiceError::Unavailable("server is shutting down".into());
                let share = Arc::clone(&self.state.stream_share);
                tokio::select! {
                    permits = async {
                        let share = share.acquire_owned().await.map_err(|_| shutting_down())?;
                        let request = requests.acquire_owned().await.map_err(|_| shutting_down())?;
                        Ok::<_, ServiceError>((request, Some(share)))
                    } => permits?,
                    () = self.shutdown_started() => return Err(shutting_down()),
                }
            }
        };
        let in_flight = self.state.metrics.requests_in_flight().clone();
        in_flight.inc();
        Ok(Permit {
            _request: request,
            _stream_share: stream_share,
            in_flight,
        })
    }

    fn check_count(&self, field: &str, n: usize) -> Result<(), ServiceError> {
        let max = self.state.limits.max_items_per_request;
        if n == 0 {
            return Err(ServiceError::InvalidArgument(format!(
                "{field}: empty request; send at least one item"
            )));
        }
        if n > max {
            return Err(ServiceError::InvalidArgument(format!(
                "{field}: {n} items, over the limit of {max} per request (--max-items-per-request)"
            )));
        }
        Ok(())
    }

    fn check_image(&self, bytes: &[u8]) -> Result<(), String> {
        let max = self.state.limits.max_image_bytes;
        if bytes.is_empty() {
            return Err("empty image (0 bytes)".into());
        }
        if bytes.len() > max {
            return Err(format!(
                "image is {} bytes, over the limit of {max} (--max-image-bytes)",
                bytes.len()
            ));
        }
        Ok(())
    }

    fn check_text(&self, text: &str) -> Result<(), String> {
        let max = self.state.limits.max_text_bytes;
        if text.len() > max {
            return Err(format!(
                "text is {} bytes, over the limit of {max} (--max-text-bytes)",
                text.len()
            ));
        }
        Ok(())
    }

    /// The model and the image batcher, or why images cannot be served.
    fn image_tower(&self) -> Result<(Arc<LoadedModel>, ImageBatcher), ServiceError> {
        let loaded = self.model_state()?;
        let batcher = loaded
            .image
            .clone()
            .ok_or_else(|| not_served(Modality::Image))?;
        Ok((Arc::clone(&loaded.model), batcher))
    }

    /// The model and the text batcher, or why texts cannot be served.
    fn text_tower(&self) -> Result<(Arc<LoadedModel>, TextBatcher), ServiceError> {
        let loaded = self.model_state()?;
        let batcher = loaded
            .text
            .clone()
            .ok_or_else(|| not_served(Modality::Text))?;
        Ok((Arc::clone(&loaded.model), batcher))
    }

    /// Decodes and preprocesses one image on the blocking pool, at most one per core at a time.
    /// The decoder permit moves into the blocking task, so work that outlives a cancelled call
    /// still counts against the bound. `Ok(Err(reason))` is the client's fault.
    async fn preprocess_image(
        &self,
        model: &Arc<LoadedModel>,
        bytes: Vec<u8>,
    ) -> Result<Result<Vec<u8>, String>, ServiceError> {
        let decoder = Arc::clone(&self.state.decoders)
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Unavailable("server is shutting down".into()))?;
        let model = Arc::clone(model);
        let options = self.state.image_options;
        let histogram = self.state.metrics.preprocess(Modality::Image);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _decoder = decoder;
            let _span = span.enter();
            let Some(image) = model.image.as_ref() else {
                return Err("this model has no visual tower".to_string());
            };
            let started = Instant::now();
            let crop = image_pre::preprocess(&bytes, &image.preprocess, &options)
                .map_err(|e| e.to_string());
            histogram.observe(started.elapsed().as_secs_f64());
            crop
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "image preprocessing task panicked");
            ServiceError::Internal(
                "image preprocessing failed; the server logged the details".into(),
            )
        })
    }

    /// Embeds encoded images, in order. `permit` (from [`Self::admit`]) is held until inference
    /// ends, even when the caller goes away first.
    pub async fn embed_images(
        &self,
        images: Vec<Vec<u8>>,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Embedded, ServiceError> {
        let _permit = permit;
        self.encode_images(images, deadline).await
    }

    /// Embeds encoded images for work already admitted (the caller holds its request permit).
    pub async fn encode_images(
        &self,
        images: Vec<Vec<u8>>,
        deadline: Option<Instant>,
    ) -> Result<Embedded, ServiceError> {
        let started = Instant::now();
        let (model, batcher) = self.image_tower()?;
        check_deadline(deadline)?;
        self.check_count("images", images.len())?;
        for (i, bytes) in images.iter().enumerate() {
            self.check_image(bytes)
                .map_err(|reason| ServiceError::invalid_item("images", i, reason))?;
        }
        // One task per image, so a request's images decode in parallel (bounded by `decoders`). The
        // set aborts the remaining tasks if this future is dropped (the caller went away).
        let n = images.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, bytes) in images.into_iter().enumerate() {
            let service = self.clone();
            let model = Arc::clone(&model);
            tasks.spawn(
                async move { (i, service.preprocess_image(&model, bytes).await) }.in_current_span(),
            );
        }
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; n];
        while let Some(joined) = tasks.join_next().await {
            let (i, crop) = joined.map_err(|e| {
                tracing::error!(error = %e, "image preprocessing task failed");
                ServiceError::Internal(
                    "image preprocessing failed; the server logged the details".into(),
                )
            })?;
            slots[i] =
                Some(crop?.map_err(|reason| ServiceError::invalid_item("images", i, reason))?);
        }
        let pixels: Vec<Vec<u8>> = slots.into_iter().flatten().collect();
        if pixels.len() != n {
            return Err(ServiceError::Internal(
                "an image went missing during preprocessing".into(),
            ));
        }
        let preprocess = started.elapsed();
        let BatchOutput {
            outputs,
            queue,
            inference,
        } = batcher
            .submit(pixels, deadline)
            .await
            .map_err(batch_error)?;
        Ok(Embedded {
            embeddings: outputs
                .into_iter()
                .map(|values| Embedding {
                    values,
                    truncated: false,
                    token_count: 0,
                })
                .collect(),
            timings: Timings {
                preprocess,
                queue,
                inference,
            },
        })
    }

    /// Embeds texts, in order. Empty texts are valid (open_clip encodes them). `permit` is held
    /// until inference ends.
    pub async fn embed_texts(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Embedded, ServiceError> {
        let _permit = permit;
        self.text_tower()?;
        check_deadline(deadline)?;
        self.check_count("texts", texts.len())?;
        self.encode_texts(texts, deadline).await
    }

    /// Embeds texts for work already admitted (a Classify call, a label-set build): no request
    /// permit and no per-request item limit, the per-text checks still apply. The caller keeps
    /// the batch small enough for the queue (`max_items_per_request` always fits).
    pub async fn encode_texts(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Embedded, ServiceError> {
        let started = Instant::now();
        let (model, batcher) = self.text_tower()?;
        check_deadline(deadline)?;
        for (i, text) in texts.iter().enumerate() {
            self.check_text(text)
                .map_err(|reason| ServiceError::invalid_item("texts", i, reason))?;
        }
        // Tokenizing is microseconds per text; a whole request goes in one blocking task, counted
        // against the preprocessing bound like an image.
        let worker = Arc::clone(&self.state.decoders)
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Unavailable("server is shutting down".into()))?;
        let histogram = self.state.metrics.preprocess(Modality::Text);
        let (ids, meta) = run_blocking("tokenization", move || {
            let _worker = worker;
            let Some(text_model) = model.text.as_ref() else {
                return Err("this model has no textual tower".to_string());
            };
            let tokenized: Vec<_> = texts
                .iter()
                .map(|t| {
                    let started = Instant::now();
                    let tokens = text_model.tokenizer.encode(t);
                    histogram.observe(started.elapsed().as_secs_f64());
                    tokens
                })
                .collect();
            let meta: Vec<(bool, u32)> = tokenized
                .iter()
                .map(|t| {
                    (
                        t.truncated,
                        u32::try_from(t.token_count).unwrap_or(u32::MAX),
                    )
                })
                .collect();
            Ok((
                tokenized
                    .into_iter()
                    .map(|t| t.ids)
                    .collect::<Vec<Vec<i64>>>(),
                meta,
            ))
        })
        .await?;
        let preprocess = started.elapsed();
        let BatchOutput {
            outputs,
            queue,
            inference,
        } = batcher.submit(ids, deadline).await.map_err(batch_error)?;
        Ok(Embedded {
            embeddings: outputs
                .into_iter()
                .zip(meta)
                .map(|(values, (truncated, token_count))| Embedding {
                    values,
                    truncated,
                    token_count,
                })
                .collect(),
            timings: Timings {
                preprocess,
                queue,
                inference,
            },
        })
    }

    /// Embeds one stream item. Errors name the item as `image` or `text`.
    pub async fn embed_item(
        &self,
        item: Item,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Embedding, ServiceError> {
        let rename = |e: ServiceError, field: &str| match e {
            ServiceError::InvalidArgument(m) => {
                ServiceError::InvalidArgument(m.replacen(&format!("{field}s[0]"), field, 1))
            }
            other => other,
        };
        match item {
            Item::Image(bytes) => self
                .embed_images(vec![bytes], deadline, permit)
                .await
                .map_err(|e| rename(e, "image")),
            Item::Text(text) => self
                .embed_texts(vec![text], deadline, permit)
                .await
                .map_err(|e| rename(e, "text")),
        }
        .and_then(|mut v| {
            v.embeddings
                .pop()
                .ok_or_else(|| ServiceError::Internal("no embedding returned".into()))
        })
    }

    /// What is served, or UNAVAILABLE while loading.
    pub fn info(&self) -> Result<ModelInfo, ServiceError> {
        let model = &self.loaded()?.model;
        let tower = |spec: Option<&TowerSpec>| match spec {
            Some(s) => TowerInfo {
                loaded: true,
                path: s.path.display().to_string(),
                input: s.input_desc.clone(),
                output: s.output_desc.clone(),
                dynamic_batch: s.dynamic_batch,
            },
            None => TowerInfo::default(),
        };
        let config = &model.config;
        Ok(ModelInfo {
            model_name: config.model_name.clone(),
            pretrained: config.pretrained.clone(),
            weights: config.weights,
            display_name: config.display_name(),
            embedding_dim: config.embed_dim,
            image_size: model
                .image
                .as_ref()
                .map_or(config.image_size.unwrap_or(0), |i| i.preprocess.size.0),
            context_length: config.context_length,
            image: tower(model.image.as_ref().map(|i| &i.tower.spec)),
            text: tower(model.text.as_ref().map(|t| &t.tower.spec)),
            execution_provider: model.provider,
            onnxruntime_version: runtime::onnxruntime_version(),
            server_version: env!("CARGO_PKG_VERSION"),
            limits: self.state.limits,
            logit_scale: config.logit_scale,
            logit_scale_defaulted: config.logit_scale_defaulted,
            apply_exif_orientation: self.state.image_options.apply_exif_orientation,
            model_dir: model.dir.display().to_string(),
        })
    }

    /// The served model's display name, for responses.
    pub fn model_name(&self) -> String {
        self.state
            .loaded
            .get()
            .map(|l| l.model.config.display_name())
            .unwrap_or_default()
    }
}

fn not_served(modality: Modality) -> ServiceError {
    let (file, other) = match modality {
        Modality::Image => ("visual/model.onnx", "texts"),
        Modality::Text => ("textual/model.onnx", "images"),
    };
    ServiceError::FailedPrecondition(format!(
        "this model serves no {modality} tower (its directory has no {file}); it embeds {other} only"
    ))
}

/// Preprocessed crops in, embeddings out.
type ImageBatcher = Batcher<Vec<u8>, Vec<f32>>;
/// Padded token ids in, embeddings out.
type TextBatcher = Batcher<Vec<i64>, Vec<f32>>;

/// The loaded model and one batcher per tower it has.
struct Loaded {
    model: Arc<LoadedModel>,
    image: Option<ImageBatcher>,
    text: Option<TextBatcher>,
}

/// The visual tower as the batcher sees it: rows are preprocessed crops.
struct ImageEngine(Arc<LoadedModel>);

impl Engine for ImageEngine {
    type Row = Vec<u8>;
    type Output = Vec<f32>;
    fn run(&mut self, rows: Vec<Vec<u8>>) -> Result<Vec<Vec<f32>>, String> {
        self.0.embed_pixels(&rows)
    }
}

/// The textual tower as the batcher sees it: rows are padded token ids.
struct TextEngine(Arc<LoadedModel>);

impl Engine for TextEngine {
    type Row = Vec<i64>;
    type Output = Vec<f32>;
    fn run(&mut self, rows: Vec<Vec<i64>>) -> Result<Vec<Vec<f32>>, String> {
        self.0.embed_token_ids(&rows)
    }
}

fn check_deadline(deadline: Option<Instant>) -> Result<(), ServiceError> {
    match deadline {
        Some(d) if d <= Instant::now() => Err(ServiceError::DeadlineExceeded(
            "the call's deadline passed before its work started".into(),
        )),
        _ => Ok(()),
    }
}

fn batch_error(error: BatchError) -> ServiceError {
    match error {
        BatchError::QueueFull { .. } => {
            ServiceError::ResourceExhausted(format!("{error} (--max-queue-rows); retry later"))
        }
        BatchError::DeadlineExceeded => ServiceError::DeadlineExceeded(error.to_string()),
        BatchError::Stopped => ServiceError::Unavailable("server is shutting down".into()),
        BatchError::Engine(e) => {
            tracing::error!(error = %e, "inference failed");
            ServiceError::Internal("inference failed; the server logged the details".into())
        }
    }
}

/// Runs `what` on the blocking pool; failures and panics are logged and become INTERNAL.
pub(crate) async fn run_blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ServiceError> {
    let error = match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => e,
        Err(e) => format!("task panicked: {e}"),
    };
    tracing::error!(error = %error, "{what} failed");
    Err(ServiceError::Internal(format!(
        "{what} failed; the server logged the details"
    )))
}
