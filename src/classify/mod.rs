//! Zero-shot classification in domain terms: label sets (built-in, precomputed by the exporter,
//! created by clients and persisted in `--data-dir`), their classifiers (computed in the background
//! through the text batcher), a bounded text-embedding cache for inline labels, and the scoring of
//! images. Nothing here knows about gRPC.
//!
//! Layer: a feature, below both doors. Depends on `embed` (texts and images through the batchers),
//! `model` (logit scale, fingerprints), `telemetry` and `common`.

pub mod classifier;
pub mod postgres;
pub mod prompts;
mod sets;
mod store;

use crate::common::limit::MAX_INLINE_PROMPTS;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
pub use classifier::{Classifier, LabelScore};
pub use prompts::{LabelSetSpec, PromptLimits};
use store::Store;
use tokio::sync::Semaphore;

use crate::{
    common::{Field, List, ServiceError, check_name, fill_template, run_blocking},
    embed::{EmbedService, Embedded, Permit},
    model::LoadedModel,
    telemetry::metrics::ClassifyMetrics,
};

/// Texts per submission to the text batcher while computing a classifier: small enough that live
/// requests interleave with a long build (the batcher packs jobs round-robin).
const BUILD_CHUNK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyConfig {
    pub prompts: PromptLimits,
    /// Most label x template texts an inline-label request may embed.
    pub max_inline_prompts: usize,
    /// Text-embedding cache size, in bytes (0 disables it).
    pub text_cache_bytes: u64,
    /// Most client-created label sets stored at once.
    pub max_label_sets: usize,
    /// Most prompts (labels x templates) of all client-created label sets together.
    pub max_label_set_prompts: usize,
}

/// Where a ready classifier came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierSource {
    ModelDir,
    DataDir,
    Computed,
}

impl ClassifierSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ClassifierSource::ModelDir => "model-dir",
            ClassifierSource::DataDir => "data-dir",
            ClassifierSource::Computed => "computed",
        }
    }
}

#[derive(Debug, Clone)]
pub enum SetState {
    NotBuilt,
    Building { done: u64, total: u64 },
    Ready(ClassifierSource),
    Failed(String),
}

/// A label set as clients see it.
#[derive(Debug, Clone)]
pub struct LabelSetInfo {
    pub spec: Arc<LabelSetSpec>,
    pub builtin: bool,
    pub state: SetState,
}

/// Classify's input, as the protocol layer hands it over.
#[derive(Debug, Clone, Default)]
pub struct ClassifyInput {
    pub images: Vec<Bytes>,
    pub labels: Vec<String>,
    pub label_set: String,
    pub templates: Vec<String>,
    pub top_k: usize,
}

enum Stage {
    NotBuilt,
    Building(Arc<AtomicU64>),
    Ready(Arc<Classifier>, ClassifierSource),
    Failed(String),
}

struct Entry {
    spec: Arc<LabelSetSpec>,
    builtin: bool,
    stage: Stage,
    /// Changes when a set is deleted and created again, so a stale build does not publish.
    generation: u64,
}

type TextCache = quick_cache::sync::Cache<String, Arc<[f32]>, TextWeight>;

#[derive(Clone)]
struct TextWeight;

impl quick_cache::Weighter<String, Arc<[f32]>> for TextWeight {
    fn weight(&self, key: &String, value: &Arc<[f32]>) -> u64 {
        // Key and value bytes plus the entry's bookkeeping.
        (key.len() + value.len() * 4 + 64) as u64
    }
}

struct Inner {
    embed: EmbedService,
    config: ClassifyConfig,
    store: Store,
    sets: RwLock<BTreeMap<String, Entry>>,
    cache: Option<TextCache>,
    /// One classifier is computed at a time.
    builds: Semaphore,
    /// The builds running or waiting: stopped at shutdown ([`ClassifyService::stop_builds`]).
    build_tasks: crate::common::tasks::Background,
    /// Serializes creating and deleting sets, so a set is visible only once its file is durable and
    /// a delete never races a create's write.
    store_lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// Set once the model is loaded: the text tower's fingerprint keys the data-dir cache.
    fingerprint: OnceLock<String>,
    metrics: ClassifyMetrics,
    /// With `--store postgres`: the definitions live there, shared by every replica.
    shared: Option<postgres::LabelSetStore>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ClassifyService {
    inner: Arc<Inner>,
}

impl ClassifyService {
    /// Opens `data_dir` (creating it) and reads the stored label sets. Their classifiers are found
    /// or computed once the model is loaded ([`Self::load_classifiers`]).
    pub fn open(
        embed: EmbedService,
        data_dir: &std::path::Path,
        config: ClassifyConfig,
        metrics: ClassifyMetrics,
        shared: Option<crate::postgres::Pool>,
    ) -> anyhow::Result<Self> {
        let store = Store::open(data_dir)?;
        let mut sets = BTreeMap::new();
        let generation = AtomicU64::new(1);
        for spec in prompts::builtin_sets() {
            sets.insert(
                spec.name.clone(),
                Entry {
                    spec: Arc::new(spec),
                    builtin: true,
                    stage: Stage::NotBuilt,
                    generation: generation.fetch_add(1, Ordering::Relaxed),
                },
            );
        }
        // Shared definitions arrive with the first [`Self::refresh`].
        let local = if shared.is_some() {
            Vec::new()
        } else {
            store.load_definitions()
        };
        for spec in local {
            if let Err(e) = check_spec(&spec, &config) {
                tracing::error!(name = %spec.name, error = %e, "skipping a stored label set that is not valid");
                continue;
            }
            if sets.contains_key(&spec.name) {
                tracing::warn!(name = %spec.name, "a stored label set has a built-in's name; ignored");
                continue;
            }
            sets.insert(
                spec.name.clone(),
                Entry {
                    spec: Arc::new(spec),
                    builtin: false,
                    stage: Stage::NotBuilt,
                    generation: generation.fetch_add(1, Ordering::Relaxed),
                },
            );
        }
        let cache = (config.text_cache_bytes > 0).then(|| {
            let estimated = (config.text_cache_bytes / 2200).max(16) as usize;
            TextCache::with_weighter(estimated, config.text_cache_bytes, TextWeight)
        });
        Ok(ClassifyService {
            inner: Arc::new(Inner {
                embed,
                config,
                store,
                sets: RwLock::new(sets),
                cache,
                builds: Semaphore::new(1),
                build_tasks: crate::common::tasks::Background::new(),
                store_lock: tokio::sync::Mutex::new(()),
                generation,
                fingerprint: OnceLock::new(),
                metrics,
                shared: shared.map(postgres::LabelSetStore::new),
            }),
        })
    }

    /// Called once the model is loaded, before it is offered to requests: fingerprints the text
    /// tower and loads the classifiers that exist (model directory first, then the data-dir cache).
    /// Returns the client-created sets that have none, for [`Self::start_builds`] once the model
    /// serves. Built-in sets without a classifier are computed on first use.
    pub async fn load_classifiers(&self, model: &Arc<LoadedModel>) -> Vec<(String, u64)> {
        let inner = Arc::clone(&self.inner);
        let started = Instant::now();
        let model_for_hash = Arc::clone(model);
        let fingerprint = tokio::task::spawn_blocking(move || model_for_hash.text_fingerprint())
            .await
            .unwrap_or_else(|e| Err(format!("fingerprinting panicked: {e}")));
        match fingerprint {
            Ok(f) => {
                let _ = inner.fingerprint.set(f);
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot fingerprint the text tower; classifiers computed now will not be cached"
            ),
        }
        let dim = model.config.embed_dim;
        let model_classifiers = model.dir.join("classifiers");
        let cache_dir = inner.fingerprint.get().map(|f| inner.store.cache_dir(f));
        let specs: Vec<(Arc<LabelSetSpec>, bool, u64)> = inner
            .read_sets()
            .values()
            .map(|e| (Arc::clone(&e.spec), e.builtin, e.generation))
            .collect();
        let mut to_build = Vec::new();
        for (spec, builtin, generation) in specs {
            let dirs: Vec<(std::path::PathBuf, ClassifierSource)> =
                std::iter::once((model_classifiers.clone(), ClassifierSource::ModelDir))
                    .chain(cache_dir.clone().map(|d| (d, ClassifierSource::DataDir)))
                    .collect();
            let read_spec = Arc::clone(&spec);
            let (found, errors) = tokio::task::spawn_blocking(move || {
                let mut errors = Vec::new();
                for (dir, source) in dirs {
                    match classifier::read(&dir, &read_spec, dim) {
                        Ok(Some(c)) => return (Some((c, source)), errors),
                        Ok(None) => {}
                        Err(e) => errors.push(e),
                    }
                }
                (None, errors)
            })
            .await
            .unwrap_or((None, vec!["reading classifiers panicked".into()]));
            for e in errors {
                tracing::warn!(label_set = %spec.name, error = %e, "stored classifier not used");
            }
            match found {
                Some((c, source)) => {
                    tracing::info!(label_set = %spec.name, labels = c.labels.len(), source = source.as_str(), "label set ready");
                    inner.set_stage(
                        &spec.name,
                        Some(generation),
                        Stage::Ready(Arc::new(c), source),
                    );
                }
                None if !builtin => to_build.push((spec.name.clone(), generation)),
                None => {}
            }
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "label sets loaded"
        );
        to_build
    }

    /// Starts computing the classifiers [`Self::load_classifiers`] did not find.
    pub fn start_builds(&self, sets: Vec<(String, u64)>) {
        for (name, generation) in sets {
            if self.inner.is_current(&name, generation) {
                self.start_build(&name);
            }
        }
    }

    pub fn config(&self) -> &ClassifyConfig {
        &self.inner.config
    }

    /// Classifies images against inline labels or a stored set. `permit` is the caller's request
    /// permit (from [`EmbedService::admit`]).
    pub async fn classify(
        &self,
        input: ClassifyInput,
        deadline: Option<Instant>,
        permit: Permit,
    ) -> Result<Vec<Vec<LabelScore>>, ServiceError> {
        // Held until both the labels and the images are embedded.
        let _permit = permit;
        let model = self.inner.embed.admitted_model()?;
        let ClassifyInput {
            images,
            labels,
            label_set,
            templates,
            top_k,
        } = input;
        let classifier = if !label_set.is_empty() {
            if !labels.is_empty() {
                return Err(ServiceError::invalid_request(
                    "set either `labels` or `label_set`, not both",
                ));
            }
            if !templates.is_empty() {
                return Err(ServiceError::invalid(
                    Field::List(List::Templates),
                    format!(
                        "label set {label_set:?} has its own templates; templates go with inline labels only"
                    ),
                ));
            }
            None
        } else {
            let limits = &self.config().prompts;
            prompts::check_labels(&labels, limits)?;
            let templates = prompts::check_templates(templates, limits)?;
            prompts::check_prompt_length(&labels, &templates, limits)?;
            let n = labels.len() * templates.len();
            if n > self.config().max_inline_prompts {
                return Err(ServiceError::invalid_request(format!(
                    "{} labels x {} templates = {n} texts to embed, over the limit of {} ({MAX_INLINE_PROMPTS}); store them as a label set instead",
                    labels.len(),
                    templates.len(),
                    self.config().max_inline_prompts
                )));
            }
            Some((labels, templates))
        };
        let classifier = async {
            match classifier {
                None => {
                    self.refresh_if_unknown(&label_set).await?;
                    self.ready_set(&label_set)
                }
                Some((labels, templates)) => {
                    let texts = prompts::prompts(&labels, &templates);
                    // Embedding thousands of prompts is the work of many requests: it is admitted
                    // as such (prompts the cache holds cost nothing).
                    let per_request = self.inner.embed.limits().max_items_per_request.max(1);
                    let uncached = match &self.inner.cache {
                        Some(cache) => texts.iter().filter(|t| cache.get(*t).is_none()).count(),
                        None => texts.len(),
                    };
                    let _extra = self.inner.embed.gate().try_extra(
                        uncached.div_ceil(per_request).saturating_sub(1),
                        &format!("embedding {uncached} label prompts"),
                    )?;
                    let embeddings = self.text_embeddings(texts, deadline, false).await?;
                    Classifier::from_prompt_embeddings(labels, templates.len(), &embeddings)
                        .map(Arc::new)
                        .map_err(|e| {
                            tracing::error!(error = %e, "building an inline classifier failed");
                            ServiceError::Internal(
                                "building the classifier failed; the server logged the details"
                                    .into(),
                            )
                        })
                }
            }
        };
        // The labels' texts and the images are embedded concurrently; both go through the batchers.
        let (classifier, images) =
            tokio::try_join!(classifier, self.inner.embed.encode_images(images, deadline))?;
        let logit_scale = model.config.logit_scale;
        Ok(images
            .embeddings
            .iter()
            .map(|e| classifier.classify(&e.values, logit_scale, top_k))
            .collect())
    }

    /// The classifier of a stored set, or why it cannot be used now.
    fn ready_set(&self, name: &str) -> Result<Arc<Classifier>, ServiceError> {
        let sets = self.inner.read_sets();
        let entry = sets.get(name).ok_or_else(|| not_found(name))?;
        if let Stage::Ready(c, _) = &entry.stage {
            return Ok(Arc::clone(c));
        }
        if self.inner.embed.admitted_model()?.text.is_none() {
            return Err(ServiceError::FailedPrecondition(format!(
                "label set {name:?} has no precomputed classifier in the model directory, and this model has no textual tower to compute one"
            )));
        }
        match &entry.stage {
            Stage::Ready(c, _) => Ok(Arc::clone(c)),
            Stage::Building(done) => Err(building(name, done.load(Ordering::Relaxed), &entry.spec)),
            Stage::NotBuilt | Stage::Failed(_) => {
                let spec = Arc::clone(&entry.spec);
                drop(sets);
                self.start_build(name);
                Err(building(name, 0, &spec))
            }
        }
    }

    /// Embeds texts through the cache; misses go to the text batcher in chunks.
    async fn text_embeddings(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
        background: bool,
    ) -> Result<Vec<Arc<[f32]>>, ServiceError> {
        let metrics = &self.inner.metrics;
        let mut out: Vec<Option<Arc<[f32]>>> = vec![None; texts.len()];
        let mut missing = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            match self.inner.cache.as_ref().and_then(|c| c.get(t)) {
                Some(v) => {
                    metrics.cache_hits.inc();
                    out[i] = Some(v);
                }
                None => missing.push(i),
            }
        }
        metrics.cache_misses.inc_by(missing.len() as u64);
        let chunk_size = BUILD_CHUNK.min(self.inner.embed.limits().max_items_per_request);
        for chunk in missing.chunks(chunk_size) {
            let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
            let vectors = if background {
                self.encode_patiently(batch).await?
            } else {
                self.inner.embed.encode_texts(batch, deadline).await?
            };
            for (&i, v) in chunk.iter().zip(vectors.embeddings) {
                let v: Arc<[f32]> = v.values.into();
                if let Some(cache) = &self.inner.cache {
                    cache.insert(texts[i].clone(), Arc::clone(&v));
                }
                out[i] = Some(v);
            }
        }
        if let Some(cache) = &self.inner.cache {
            metrics.cache_bytes.set(cache.weight() as i64);
        }
        out.into_iter()
            .map(|v| {
                v.ok_or_else(|| ServiceError::Internal("a text embedding went missing".into()))
            })
            .collect()
    }

    /// A background build waits out a full queue instead of failing: live traffic comes first.
    async fn encode_patiently(&self, texts: Vec<String>) -> Result<Embedded, ServiceError> {
        loop {
            match self
                .inner
                .embed
                .encode_texts_background(texts.clone())
                .await
            {
                Err(ServiceError::ResourceExhausted(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Starts computing a set's classifier in the background unless it is ready or underway.
    fn start_build(&self, name: &str) {
        let (spec, generation, done) = {
            let mut sets = self.inner.write_sets();
            let Some(entry) = sets.get_mut(name) else {
                return;
            };
            // Failed builds are retried: their cause (an engine error, a full disk) may have passed.
            if matches!(entry.stage, Stage::Building(_) | Stage::Ready(..)) {
                return;
            }
            let done = Arc::new(AtomicU64::new(0));
            entry.stage = Stage::Building(Arc::clone(&done));
            (Arc::clone(&entry.spec), entry.generation, done)
        };
        let service = self.clone();
        self.inner
            .build_tasks
            .spawn("classifier build", async move {
                let name = spec.name.clone();
                let outcome = service.build(&spec, generation, &done).await;
                let stage = match outcome {
                    Ok(Some(classifier)) => Stage::Ready(classifier, ClassifierSource::Computed),
                    Ok(None) => return, // deleted meanwhile
                    Err(ServiceError::Unavailable(e)) => {
                        tracing::info!(label_set = %name, reason = %e, "classifier build stopped");
                        Stage::NotBuilt
                    }
                    Err(e) => {
                        tracing::error!(label_set = %name, error = %e, "classifier build failed");
                        Stage::Failed(e.to_string())
                    }
                };
                service.inner.set_stage(&name, Some(generation), stage);
            });
    }

    /// Stops the classifier builds (shutdown): each is dropped at its next `.await`, its set left
    /// as it was (a build is retried on the next start). Builds asked for later do not run.
    pub async fn stop_builds(&self) {
        self.inner.build_tasks.stop().await;
    }

    async fn build(
        &self,
        spec: &LabelSetSpec,
        generation: u64,
        done: &AtomicU64,
    ) -> Result<Option<Arc<Classifier>>, ServiceError> {
        let _lane = self
            .inner
            .builds
            .acquire()
            .await
            .map_err(|_| ServiceError::Unavailable("shutting down".into()))?;
        if !self.inner.is_current(&spec.name, generation) {
            return Ok(None);
        }
        let total = spec.text_count();
        let progress = self.inner.metrics.build_progress(&spec.name);
        tracing::info!(label_set = %spec.name, labels = spec.labels.len(), templates = spec.templates.len(), texts = total, "computing classifier");
        let started = Instant::now();
        let mut embeddings = Vec::with_capacity(total);
        let mut next_log = total / 10;
        // Prompts are made a chunk at a time: a large set never holds all its texts at once.
        let templates = spec.templates.len();
        for start in (0..total).step_by(BUILD_CHUNK) {
            let chunk: Vec<String> = (start..(start + BUILD_CHUNK).min(total))
                .map(|k| fill_template(&spec.templates[k % templates], &spec.labels[k / templates]))
                .collect();
            if !self.inner.is_current(&spec.name, generation) {
                return Ok(None);
            }
            embeddings.extend(self.text_embeddings(chunk, None, true).await?);
            let n = embeddings.len();
            done.store(n as u64, Ordering::Relaxed);
            progress.set(n as f64 / total as f64);
            if n >= next_log && n < total {
                let rate = n as f64 / started.elapsed().as_secs_f64();
                tracing::info!(label_set = %spec.name, done = n, total, texts_per_s = rate, eta_s = ((total - n) as f64 / rate) as u64, "computing classifier");
                next_log = n + total / 10;
            }
        }
        let classifier = Classifier::from_prompt_embeddings(
            spec.labels.clone(),
            spec.templates.len(),
            &embeddings,
        )
        .map_err(ServiceError::Internal)?;
        tracing::info!(label_set = %spec.name, texts = total, s = started.elapsed().as_secs_f64(), "classifier ready");
        if let Some(fingerprint) = self.inner.fingerprint.get() {
            let dir = self.inner.store.cache_dir(fingerprint);
            let model_name = self.inner.embed.model_name();
            let (spec, c) = (spec.clone(), classifier.clone());
            let fingerprint = fingerprint.clone();
            let written = tokio::task::spawn_blocking(move || {
                classifier::write(&dir, &spec, &c, &fingerprint, &model_name)
            })
            .await;
            match written {
                Ok(Ok(path)) => tracing::info!(path = %path.display(), "classifier cached"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not cache the classifier"),
                Err(e) => tracing::warn!(error = %e, "caching the classifier panicked"),
            }
        }
        Ok(Some(Arc::new(classifier)))
    }
}

impl Inner {
    fn read_sets(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.sets.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_sets(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.sets.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_current(&self, name: &str, generation: u64) -> bool {
        self.read_sets()
            .get(name)
            .is_some_and(|e| e.generation == generation)
    }

    /// Sets a set's stage, if it still exists (and is still the same generation, when given).
    fn set_stage(&self, name: &str, generation: Option<u64>, stage: Stage) {
        let mut sets = self.write_sets();
        if let Some(entry) = sets.get_mut(name)
            && generation.is_none_or(|g| g == entry.generation)
        {
            entry.stage = stage;
        }
    }
}

/// A label set's definition is valid under this server's limits.
fn check_spec(spec: &LabelSetSpec, config: &ClassifyConfig) -> Result<(), ServiceError> {
    let limits = &config.prompts;
    check_name("label set", &spec.name)?;
    prompts::check_labels(&spec.labels, limits)?;
    if spec.templates.is_empty() {
        return Err(ServiceError::invalid(
            Field::List(List::Templates),
            "a stored set needs at least one",
        ));
    }
    prompts::check_templates(spec.templates.clone(), limits)?;
    prompts::check_prompt_length(&spec.labels, &spec.templates, limits)
}

/// Runs a label-set write to completion in a task of its own: dropping the caller's future (a
/// client that hung up) does not cancel it, so the stored definition and the in-memory sets never
/// disagree.
async fn detached<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T, ServiceError>> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::spawn(write).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "label set write panicked");
        Err(ServiceError::Internal(
            "storing the label set failed; the server logged the details".into(),
        ))
    })
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!(
        "no label set named {name:?} (ListLabelSets shows them)"
    ))
}

fn building(name: &str, done: u64, spec: &LabelSetSpec) -> ServiceError {
    ServiceError::Unavailable(format!(
        "label set {name:?}: its classifier is being computed ({done} of {} texts embedded); retry later",
        spec.text_count()
    ))
}
