//! What the embedding service hands back: embeddings with their timings, stream items, and the
//! description of what is served (the Info RPC's content).

use std::time::Duration;

use bytes::Bytes;

use super::Limits;
use crate::model::{Gate, WeightsKind};

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
    Image(Bytes),
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
    pub dynamic_length: bool,
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
    /// `cpu`, `openvino`, ... or one per tower when they differ (`visual=openvino,textual=cpu`).
    pub execution_provider: String,
    pub onnxruntime_version: String,
    pub server_version: &'static str,
    pub limits: Limits,
    pub logit_scale: f32,
    pub logit_scale_defaulted: bool,
    pub apply_exif_orientation: bool,
    pub model_dir: String,
    /// `fp32`, `bf16`, ... or one per tower when they differ (`visual=bf16,textual=int8`).
    pub precision: String,
    /// Why each tower runs at its precision (`--precision auto` explains its choice).
    pub precision_reason: String,
    /// The accuracy gate of a reduced-precision variant (`None` for fp32).
    pub gate: Option<Gate>,
}
