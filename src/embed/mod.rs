//! The embedding service in domain terms, composed of its seams:
//!
//! - [`Gate`](crate::admission::Gate) (admission and shutdown, `admission/`),
//! - [`slot::ModelSlot`]: the model and one batcher per tower, set once loaded,
//! - [`pool::PreprocessPool`]: decode/resize and tokenization off the async threads, bounded,
//! - [`Limits`]: the request checks, with errors that name the item.
//!
//! Both protocol layers call [`EmbedService`]; nothing here knows either wire.

pub mod fetch;
mod limits;
pub mod pool;
pub mod slot;
mod types;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
pub use limits::Limits;
use pool::PreprocessPool;
/// One request's turn in the preprocessing pool (a stream's items share one).
pub use pool::RequestShare as DecodeShare;
use slot::{Loaded, ModelSlot};
use tokio::task::JoinSet;
use tracing::Instrument;
pub use types::{Embedded, Embedding, Item, ModelInfo, Timings, TowerInfo};

pub use crate::admission::{Admission, Permit};
use crate::{
    admission::Gate,
    batch::{BatchError, BatchOutput, Batcher, BatcherConfig, Engine},
    common::{Field, List, Modality, ServiceError},
    model::{LoadedModel, TowerSpec, runtime, trimmed_length},
    preprocess::image::{self as image_pre, ImageOptions},
    telemetry::{
        metrics::{Metrics, ModelInfoLabels},
        usage::{self, UsageKind},
    },
};

/// The embedding service's own configuration (admission has its own, in `admission/`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbedConfig {
    pub limits: Limits,
    pub batch: BatcherConfig,
    /// Items of one stream processed at once.
    pub max_stream_in_flight: usize,
    pub apply_exif_orientation: bool,
    /// Preprocessing jobs at once (one per core by default).
    pub preprocess_workers: usize,
    /// Working memory of the image decodes running at once (`--max-decode-bytes`).
    pub max_decode_bytes: u64,
}

struct State {
    config: EmbedConfig,
    gate: Gate,
    slot: ModelSlot<LoadedModel>,
    pool: PreprocessPool,
    metrics: Metrics,
}

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct EmbedService {
    state: Arc<State>,
}

impl EmbedService {
    pub fn new(config: EmbedConfig, gate: Gate, metrics: Metrics) -> Self {
        EmbedService {
            state: Arc::new(State {
                pool: PreprocessPool::new(
                    config.preprocess_workers,
                    config.max_decode_bytes,
                    metrics.decode_reserved_bytes(),
                ),
                config,
                gate,
                slot: ModelSlot::default(),
                metrics,
            }),
        }
    }

    /// Makes the model available to requests (after loading and warm-up), starting one batcher per
    /// tower.
    pub fn set_model(&self, model: Arc<LoadedModel>) {
        let config = self.state.config.batch;
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
                TextEngine(Arc::clone(&model), metrics.text_batch_length()),
                config,
                metrics.batch(Modality::Text),
            )
        });
        metrics.set_model_info(ModelInfoLabels {
            model: &model.config.display_name(),
            weights: model.config.weights.as_str(),
            provider: model.provider.as_str(),
            precision: model.precision.as_str(),
            onnxruntime: &runtime::onnxruntime_version(),
        });
        self.state.slot.set(Loaded { model, image, text });
    }

    /// The admission gate (permits and shutdown) this service was built with.
    pub fn gate(&self) -> &Gate {
        &self.state.gate
    }

    /// The loaded model, or UNAVAILABLE while it loads or the server shuts down.
    pub fn loaded_model(&self) -> Result<Arc<LoadedModel>, ServiceError> {
        self.state.gate.check_open()?;
        self.state.slot.model()
    }

    /// The loaded model for work already admitted (it finishes during shutdown).
    pub fn admitted_model(&self) -> Result<Arc<LoadedModel>, ServiceError> {
        self.state.slot.model()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Ready to serve, or why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.state.gate.is_shutting_down() {
            Err("shutting down")
        } else if !self.state.slot.is_loaded() {
            Err("the model is loading")
        } else {
            Ok(())
        }
    }

    /// New calls get UNAVAILABLE from now on; calls already admitted finish.
    pub fn begin_shutdown(&self) {
        self.state.gate.begin_shutdown();
    }

    /// Resolves when no request permit is held (every admitted call and stream item has finished).
    pub async fn drained(&self) {
        self.state.gate.drained().await;
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_started(&self) {
        self.state.gate.shutdown_started().await;
    }

    pub fn limits(&self) -> Limits {
        self.state.config.limits
    }

    pub fn max_stream_in_flight(&self) -> usize {
        self.state.config.max_stream_in_flight
    }

    /// Takes a request permit: unary calls at once (UNAVAILABLE while the model loads) or
    /// RESOURCE_EXHAUSTED; stream items wait.
    pub async fn admit(&self, admission: Admission) -> Result<Permit, ServiceError> {
        if admission == Admission::TryNow {
            self.loaded_model()?;
        }
        self.state
            .gate
            .admit(admission)
            .instrument(tracing::debug_span!("admission"))
            .await
    }

    fn image_options(&self) -> ImageOptions {
        ImageOptions {
            max_pixels: self.state.config.limits.max_image_pixels,
            apply_exif_orientation: self.state.config.apply_exif_orientation,
        }
    }

    /// Decodes and preprocesses one image in the pool. `Ok(Err(reason))` is the client's fault.
    async fn preprocess_image(
        &self,
        model: Arc<LoadedModel>,
        bytes: Bytes,
        share: pool::RequestShare,
    ) -> Result<Result<Vec<u8>, String>, ServiceError> {
        let options = self.image_options();
        // The header says what the decode will need: reserve it (or refuse the image) first.
        let cost = match image_pre::decode_cost(&bytes, options.max_pixels) {
            Ok(cost) => cost,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let histogram = self.state.metrics.preprocess(Modality::Image);
        let preprocessed = share
            .run_decode("image preprocessing", cost.bytes, move || {
                let Some(image) = model.image.as_ref() else {
                    return Err("this model has no visual tower".to_string());
                };
                let started = Instant::now();
                let crop = image_pre::preprocess_within(&bytes, &image.preprocess, &options, &cost)
                    .map_err(|e| e.to_string());
                histogram.observe(started.elapsed().as_secs_f64());
                crop
            })
            .await?;
        Ok(preprocessed.unwrap_or_else(|over| Err(over.to_string())))
    }

    /// Embeds encoded images, in order. `permit` (from [`Self::admit`]) is held until inference
    /// ends, even when the caller goes away first.
    pub async fn embed_images(
        &self,
        images: Vec<Bytes>,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Embedded, ServiceError> {
        let _permit = permit;
        self.encode_images(images, deadline).await
    }

    /// A new turn in the preprocessing pool, for calls whose images arrive one by one (a stream).
    pub fn decode_share(&self) -> DecodeShare {
        self.state.pool.request()
    }

    /// Embeds encoded images for work already admitted (the caller holds its request permit).
    /// Errors name the images as `images[i]`.
    pub async fn encode_images(
        &self,
        images: Vec<Bytes>,
        deadline: Option<Instant>,
    ) -> Result<Embedded, ServiceError> {
        self.encode_images_in(images, deadline, self.decode_share())
            .await
    }

    /// [`Self::encode_images`] taking its turns in the pool as `share`.
    async fn encode_images_in(
        &self,
        images: Vec<Bytes>,
        deadline: Option<Instant>,
        share: DecodeShare,
    ) -> Result<Embedded, ServiceError> {
        let started = Instant::now();
        let (model, batcher) = self.state.slot.image()?;
        check_deadline(deadline)?;
        let limits = self.limits();
        limits.check_count(List::Images, images.len())?;
        limits.check_images(&images)?;
        // One task per image, so a request's images decode in parallel (bounded by the pool). The
        // set aborts the remaining tasks if this future is dropped (the caller went away). The
        // request's images take turns with other requests' in the pool (one share per call).
        let n = images.len();
        let pixels = self
            .decode_all(model, images, share)
            .instrument(tracing::debug_span!("preprocess", images = n))
            .await?;
        let preprocess = started.elapsed();
        let output = batcher
            .submit(pixels, deadline)
            .await
            .map_err(batch_error)?;
        usage::record(UsageKind::Images, n as u64);
        Ok(embedded(output, preprocess, std::iter::repeat((false, 0))))
    }

    /// Decodes and preprocesses `images` in the pool, in parallel, in order; errors name
    /// `images[i]`.
    async fn decode_all(
        &self,
        model: Arc<LoadedModel>,
        images: Vec<Bytes>,
        share: DecodeShare,
    ) -> Result<Vec<Vec<u8>>, ServiceError> {
        let n = images.len();
        let mut tasks = JoinSet::new();
        for (i, bytes) in images.into_iter().enumerate() {
            let service = self.clone();
            let model = Arc::clone(&model);
            let share = share.clone();
            tasks.spawn(
                async move { (i, service.preprocess_image(model, bytes, share).await) }
                    .in_current_span(),
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
                Some(crop?.map_err(|reason| ServiceError::invalid_item(List::Images, i, reason))?);
        }
        let pixels: Vec<Vec<u8>> = slots.into_iter().flatten().collect();
        if pixels.len() != n {
            return Err(ServiceError::Internal(
                "an image went missing during preprocessing".into(),
            ));
        }
        Ok(pixels)
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
        self.state.slot.text()?;
        check_deadline(deadline)?;
        self.limits().check_count(List::Texts, texts.len())?;
        self.encode_texts(texts, deadline).await
    }

    /// Embeds texts for work already admitted (a Classify call, a label-set build): no request
    /// permit and no per-request item limit, the per-text checks still apply. The caller keeps
    /// the batch small enough for the queue (`max_items_per_request` always fits). Errors name
    /// the texts as `texts[i]`.
    pub async fn encode_texts(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Embedded, ServiceError> {
        self.encode_texts_as(texts, deadline, false).await
    }

    /// [`Self::encode_texts`] for background work (label-set builds): its rows run only when no
    /// live row waits, in small batches, so a build never starves live calls.
    pub async fn encode_texts_background(
        &self,
        texts: Vec<String>,
    ) -> Result<Embedded, ServiceError> {
        self.encode_texts_as(texts, None, true).await
    }

    async fn encode_texts_as(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
        background: bool,
    ) -> Result<Embedded, ServiceError> {
        let started = Instant::now();
        let (model, batcher) = self.state.slot.text()?;
        check_deadline(deadline)?;
        self.limits().check_texts(&texts)?;
        // Tokenizing is microseconds per text; a whole request goes in one job.
        let n_texts = texts.len();
        let histogram = self.state.metrics.preprocess(Modality::Text);
        let tokenized = self
            .state
            .pool
            .run("tokenization", move || {
                let text_model = model.text.as_ref()?;
                Some(
                    texts
                        .iter()
                        .map(|t| {
                            let started = Instant::now();
                            let tokens = text_model.tokenizer.encode(t);
                            histogram.observe(started.elapsed().as_secs_f64());
                            tokens
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .instrument(tracing::debug_span!("preprocess", texts = n_texts))
            .await?
            .ok_or_else(|| ServiceError::Internal("this model has no textual tower".into()))?;
        let meta: Vec<(bool, u32)> = tokenized
            .iter()
            .map(|t| {
                (
                    t.truncated,
                    u32::try_from(t.token_count).unwrap_or(u32::MAX),
                )
            })
            .collect();
        let ids: Vec<Vec<i64>> = tokenized.into_iter().map(|t| t.ids).collect();
        let preprocess = started.elapsed();
        let output = if background {
            batcher.submit_background(ids).await
        } else {
            batcher.submit(ids, deadline).await
        }
        .map_err(batch_error)?;
        if !background {
            let tokens: u64 = meta.iter().map(|&(_, count)| u64::from(count)).sum();
            usage::record(UsageKind::TextTokens, tokens);
        }
        Ok(embedded(output, preprocess, meta))
    }

    /// Embeds a request's texts and images together, in `items`' order (an HTTP input list may
    /// mix them): each kind goes through its batcher, both at once. Errors name an item by its
    /// place in `items` (`texts[5]` is `items[5]`, a text). `permit` is held until inference ends.
    pub async fn embed_items(
        &self,
        items: Vec<Item>,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Embedded, ServiceError> {
        let _permit = permit;
        check_deadline(deadline)?;
        self.limits().check_count(List::Texts, items.len())?;
        let n = items.len();
        let (mut text_at, mut image_at) = (Vec::new(), Vec::new());
        let (mut texts, mut images) = (Vec::new(), Vec::new());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Item::Text(t) => {
                    text_at.push(i);
                    texts.push(t);
                }
                Item::Image(b) => {
                    image_at.push(i);
                    images.push(b);
                }
            }
        }
        let place = |at: &[usize], field: Field| match field {
            Field::Item(list, j) => Field::Item(list, at.get(j).copied().unwrap_or(j)),
            other => other,
        };
        let texts = async {
            if texts.is_empty() {
                return Ok(None);
            }
            self.encode_texts(texts, deadline)
                .await
                .map(Some)
                .map_err(|e| e.relocate(|f| place(&text_at, f)))
        };
        let images = async {
            if images.is_empty() {
                return Ok(None);
            }
            self.encode_images(images, deadline)
                .await
                .map(Some)
                .map_err(|e| e.relocate(|f| place(&image_at, f)))
        };
        let (texts, images) = tokio::try_join!(texts, images)?;
        let mut slots: Vec<Option<Embedding>> = vec![None; n];
        let mut timings = Timings::default();
        for (at, embedded) in [(&text_at, texts), (&image_at, images)] {
            let Some(embedded) = embedded else { continue };
            timings.preprocess = timings.preprocess.max(embedded.timings.preprocess);
            timings.queue = timings.queue.max(embedded.timings.queue);
            timings.inference = timings.inference.max(embedded.timings.inference);
            for (&i, e) in at.iter().zip(embedded.embeddings) {
                slots[i] = Some(e);
            }
        }
        let embeddings: Vec<Embedding> = slots.into_iter().flatten().collect();
        if embeddings.len() != n {
            return Err(ServiceError::Internal("an embedding went missing".into()));
        }
        Ok(Embedded {
            embeddings,
            timings,
        })
    }

    /// The (width, height) of an encoded image, decoded in the preprocessing pool (Immich's
    /// replies carry it). Call it after the image was embedded: a bad image fails there first.
    pub async fn image_dimensions(&self, bytes: Bytes) -> Result<(usize, usize), ServiceError> {
        let max_pixels = self.limits().max_image_pixels;
        let invalid = |e: image_pre::ImageError| ServiceError::invalid_item(List::Images, 0, e);
        // The header says, without decoding (PIL's `size` is the header's too).
        let cost = image_pre::decode_cost(&bytes, max_pixels).map_err(invalid)?;
        if let Some(dims) = cost.dimensions {
            return Ok(dims);
        }
        // A header this module cannot read: decode, within the decode budget.
        self.state
            .pool
            .run_decode("image dimensions", cost.bytes, move || {
                image_pre::inspect(&bytes, max_pixels).map(|(w, h, _)| (w, h))
            })
            .await?
            .map_err(|over| ServiceError::invalid_item(List::Images, 0, over))?
            .map_err(invalid)
    }

    /// Embeds one stream item, its image taking the stream's turn in the pool (`share`). Errors
    /// name the item as `image` or `text`.
    pub async fn embed_item(
        &self,
        item: Item,
        deadline: Option<Instant>,
        permit: Permit,
        share: &DecodeShare,
    ) -> Result<Embedding, ServiceError> {
        let (result, name) = match item {
            Item::Image(bytes) => {
                let _permit = permit;
                let embedded = self
                    .encode_images_in(vec![bytes], deadline, share.clone())
                    .await;
                (embedded, "image")
            }
            Item::Text(text) => (self.embed_texts(vec![text], deadline, permit).await, "text"),
        };
        result
            .map_err(|e| e.relocate(|_| Field::Param(name)))
            .and_then(|mut v| {
                v.embeddings
                    .pop()
                    .ok_or_else(|| ServiceError::Internal("no embedding returned".into()))
            })
    }

    /// What is served, or UNAVAILABLE while loading.
    pub fn info(&self) -> Result<ModelInfo, ServiceError> {
        let model = self.loaded_model()?;
        let tower = |spec: Option<&TowerSpec>| match spec {
            Some(s) => TowerInfo {
                loaded: true,
                path: s.path.display().to_string(),
                input: s.input_desc.clone(),
                output: s.output_desc.clone(),
                dynamic_batch: s.dynamic_batch,
                dynamic_length: s.dynamic_length,
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
            limits: self.limits(),
            logit_scale: config.logit_scale,
            logit_scale_defaulted: config.logit_scale_defaulted,
            apply_exif_orientation: self.state.config.apply_exif_orientation,
            model_dir: model.dir.display().to_string(),
            precision: model.precision,
            gate: model.gate.clone(),
        })
    }

    /// The served model's display name, for responses.
    pub fn model_name(&self) -> String {
        self.state
            .slot
            .model()
            .map(|m| m.config.display_name())
            .unwrap_or_default()
    }
}

/// A batch's outputs as embeddings, with the texts' truncation and token counts.
fn embedded(
    output: BatchOutput<Vec<f32>>,
    preprocess: Duration,
    meta: impl IntoIterator<Item = (bool, u32)>,
) -> Embedded {
    let BatchOutput {
        outputs,
        queue,
        inference,
    } = output;
    Embedded {
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
    }
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

/// The textual tower as the batcher sees it: rows are padded token ids; each batch's sequence
/// length is observed.
struct TextEngine(Arc<LoadedModel>, prometheus::Histogram);

impl Engine for TextEngine {
    type Row = Vec<i64>;
    type Output = Vec<f32>;
    fn run(&mut self, rows: Vec<Vec<i64>>) -> Result<Vec<Vec<f32>>, String> {
        let (vectors, len) = self.0.embed_token_ids_at(&rows)?;
        self.1.observe(len as f64);
        Ok(vectors)
    }

    /// A token row costs the length a batch needs for it (the row's end-of-text token, rounded as
    /// the tower rounds), so texts of similar length are batched together.
    fn cost(row: &Vec<i64>) -> usize {
        trimmed_length(std::slice::from_ref(row), row.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_errors_map_to_what_the_client_can_do() {
        let full = batch_error(BatchError::QueueFull {
            queued: 4,
            requested: 2,
            limit: 4,
        });
        assert!(
            matches!(&full, ServiceError::ResourceExhausted(m) if m.contains("--max-queue-rows")),
            "{full}"
        );
        assert!(matches!(
            batch_error(BatchError::DeadlineExceeded),
            ServiceError::DeadlineExceeded(_)
        ));
        assert!(matches!(
            batch_error(BatchError::Stopped),
            ServiceError::Unavailable(_)
        ));
        let e = batch_error(BatchError::Engine("ORT said no".into()));
        assert!(
            matches!(&e, ServiceError::Internal(m) if !m.contains("ORT")),
            "details stay in the logs: {e}"
        );
    }

    #[test]
    fn outputs_become_embeddings_in_order_with_text_metadata() {
        let output = BatchOutput {
            outputs: vec![vec![1.0], vec![2.0]],
            queue: Duration::from_millis(3),
            inference: Duration::from_millis(5),
        };
        let e = embedded(output, Duration::from_millis(1), [(true, 80), (false, 4)]);
        assert_eq!(e.embeddings[1].values, [2.0]);
        assert!(e.embeddings[0].truncated && !e.embeddings[1].truncated);
        assert_eq!(e.embeddings[0].token_count, 80);
        assert_eq!(e.timings.inference, Duration::from_millis(5));
        assert!(check_deadline(Some(Instant::now() - Duration::from_millis(1))).is_err());
        assert!(check_deadline(None).is_ok());
    }
}
