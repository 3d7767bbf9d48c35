//! The model and how it runs: the model directory, the ONNX Runtime library, the execution provider
//! and its TensorRT options, the precision variant, threads, aliases, EXIF orientation and warm-up.

use std::{num::NonZeroUsize, path::PathBuf};

use clap::Args;

use crate::model::{PrecisionArg, Provider, ProviderOptions};

/// Default model directory, relative to the working directory (scripts/serve.sh exports it there).
pub const DEFAULT_MODEL_DIR: &str = "models/ViT-B-32__datacomp_xl_s13b_b90k";
/// Where scripts/setup.sh puts the ONNX Runtime library.
pub const DEFAULT_ORT_DYLIB: &str = ".cache/onnxruntime/lib/libonnxruntime.so";

/// The model, its runtime and its execution provider.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory (Immich layout: config.json, visual/, textual/).
    #[arg(long, env = "CLIP_SERVE_MODEL_DIR", default_value = DEFAULT_MODEL_DIR, display_order = 0)]
    pub model_dir: PathBuf,

    /// Path of libonnxruntime.so (scripts/setup.sh fetches it into .cache/onnxruntime/lib/).
    #[arg(long, env = "ORT_DYLIB_PATH", display_order = 40)]
    pub ort_dylib_path: Option<PathBuf>,

    /// Execution provider. GPU providers need a binary built with the matching cargo feature and the
    /// onnxruntime-gpu library; when they cannot start the server refuses to start.
    #[arg(long, env = "CLIP_SERVE_PROVIDER", value_enum, default_value_t = Provider::Cpu, display_order = 50)]
    pub provider: Provider,

    /// Which graph of each tower to serve: fp32 (model.onnx), int8 (model.int8.onnx, for CPUs),
    /// fp16 (model.fp16.onnx, for GPUs) or bf16 (model.onnx at OpenVINO's bf16 inference precision:
    /// --provider openvino on a CPU with AVX512-BF16 or AMX-BF16). A variant is served only when its
    /// accuracy gate in the model directory's quantization.json passed (scripts/quantize.py writes
    /// both).
    ///
    /// auto (the default of scripts/serve.sh and the deploy manifests): per tower, the fastest
    /// variant whose gate passed and which this CPU runs fast (AMX-BF16: bf16; VNNI or AMX-INT8:
    /// int8; otherwise fp32), logged with its reason and reported by Info.
    #[arg(long, env = "CLIP_SERVE_PRECISION", value_enum, default_value_t = PrecisionArg::Fp32, display_order = 60)]
    pub precision: PrecisionArg,

    /// Run every text at the full context length even when the text tower has a dynamic sequence
    /// axis (by default a batch runs only up to its longest text's end-of-text token, which is exact
    /// for CLIP's argmax-pooled text tower): for exports that pool elsewhere, and for comparisons.
    #[arg(
        long,
        env = "CLIP_SERVE_FULL_LENGTH_TEXT",
        default_value_t = false,
        display_order = 70
    )]
    pub full_length_text: bool,

    /// Serve a --precision variant whose accuracy gate is missing or failed (Info reports it as
    /// ungated).
    #[arg(
        long,
        env = "CLIP_SERVE_ALLOW_UNGATED_PRECISION",
        default_value_t = false,
        display_order = 80
    )]
    pub allow_ungated_precision: bool,

    /// --provider openvino: the plugin library of PyPI's onnxruntime-ep-openvino, with the OpenVINO
    /// and TBB libraries beside it (scripts/setup.sh installs them there).
    #[arg(long, env = "CLIP_SERVE_OPENVINO_PLUGIN", default_value = crate::model::openvino::DEFAULT_PLUGIN, display_order = 85)]
    pub openvino_plugin: PathBuf,

    /// GPU device ordinal for the cuda and tensorrt providers.
    #[arg(
        long,
        env = "CLIP_SERVE_DEVICE_ID",
        default_value_t = 0,
        display_order = 90
    )]
    pub device_id: i32,

    /// TensorRT: build fp16 engines (faster; embeddings differ from fp32 in the 3rd-4th decimal).
    #[arg(
        long,
        env = "CLIP_SERVE_TRT_FP16",
        default_value_t = false,
        display_order = 100
    )]
    pub trt_fp16: bool,

    /// TensorRT: directory for built engines and the timing cache, so they are built once (minutes)
    /// and loaded on later starts (seconds). Keep it on a volume that outlives the process.
    #[arg(long, env = "CLIP_SERVE_TRT_ENGINE_CACHE_DIR", display_order = 110)]
    pub trt_engine_cache_dir: Option<PathBuf>,

    /// TensorRT: the engine builder's workspace limit in bytes [default: ONNX Runtime's].
    #[arg(long, env = "CLIP_SERVE_TRT_WORKSPACE_BYTES", display_order = 120)]
    pub trt_workspace_bytes: Option<u64>,

    /// ONNX Runtime intra-op threads per session [default: the cores available].
    #[arg(long, env = "CLIP_SERVE_INTRA_OP_THREADS", display_order = 130)]
    pub intra_op_threads: Option<NonZeroUsize>,

    /// Extra model names the HTTP API accepts besides the served ids (what drop-in clients send:
    /// `jina-clip-v2`, `rerank-v3.5`, ...). Repeat the flag or give a comma-separated list. Immich's
    /// ViT-B-32 names are accepted on `/predict` without it.
    #[arg(
        long = "model-alias",
        env = "CLIP_SERVE_MODEL_ALIAS",
        value_delimiter = ',',
        display_order = 140
    )]
    pub model_aliases: Vec<String>,

    /// Apply EXIF orientation before preprocessing. open_clip does not, so the default does not either.
    #[arg(
        long,
        env = "CLIP_SERVE_APPLY_EXIF_ORIENTATION",
        default_value_t = false,
        display_order = 750
    )]
    pub apply_exif_orientation: bool,

    /// Skip the warm-up inference at start-up (health turns SERVING right after loading).
    #[arg(
        long,
        env = "CLIP_SERVE_SKIP_WARMUP",
        default_value_t = false,
        display_order = 760
    )]
    pub skip_warmup: bool,
}

impl ModelArgs {
    /// The execution provider and its options. The `--trt-*` flags apply to `--provider tensorrt`
    /// only: a rule on another flag's value, which clap's `requires`/`conflicts_with` cannot say.
    pub(super) fn providers(&self, max_batch_size: usize) -> Result<ProviderOptions, String> {
        let trt_set = self.trt_fp16
            || self.trt_engine_cache_dir.is_some()
            || self.trt_workspace_bytes.is_some();
        if trt_set && self.provider != Provider::Tensorrt {
            return Err(format!(
                "--trt-fp16, --trt-engine-cache-dir and --trt-workspace-bytes apply to --provider tensorrt, not {}",
                self.provider.as_str()
            ));
        }
        Ok(ProviderOptions {
            provider: self.provider,
            device_id: self.device_id,
            trt_fp16: self.trt_fp16,
            trt_engine_cache_dir: self.trt_engine_cache_dir.clone(),
            trt_workspace_bytes: self.trt_workspace_bytes,
            max_batch_size,
            openvino_plugin: self.openvino_plugin.clone(),
        })
    }

    /// `--model-alias`, trimmed, empty entries dropped.
    pub(super) fn aliases(&self) -> Vec<String> {
        self.model_aliases
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect()
    }
}
