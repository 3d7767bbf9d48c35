//! The model directory (the layout Immich publishes; docs/ARCHITECTURE.md) and its ONNX towers.
//!
//! ```text
//! <model>/config.json                 open_clip model config (+ model_name, pretrained, weights, logit_scale)
//! <model>/visual/model.onnx
//! <model>/visual/preprocess_cfg.json  size, mean, std, interpolation, resize_mode, fill_color
//! <model>/textual/model.onnx
//! <model>/textual/tokenizer.json      Hugging Face tokenizers format
//! ```
//! A directory with only one tower serves that tower.
//!
//! Layer: the engine. Depends on `preprocess` (each tower's preprocessing config and tokenizer) and
//! `common`; knows nothing of requests.

pub mod config;
pub mod cpu;
pub mod openvino;
pub mod plan;
pub mod precision;
pub mod runtime;
pub mod tower;

use std::path::{Path, PathBuf};

pub use config::{ModelConfig, WeightsKind};
pub use cpu::CpuFeatures;
pub use plan::{Plan, PrecisionArg, TowerPlan};
pub use precision::{Gate, Precision};
pub use runtime::{Provider, ProviderOptions};
pub use tower::{ImageLayout, InputKind, TokenType, Tower, TowerSpec, trimmed_length};

use crate::preprocess::{
    image::{self as image_pre, PreprocessConfig},
    text::ClipTokenizer,
};
use tower::{BatchInput, Expected, ExpectedKind};

/// Why a model cannot be served. Start-up errors: each names the file and the mismatch.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found at {}: run scripts/setup.sh (downloads it from the onnxruntime wheel on PyPI) \
         or set ORT_DYLIB_PATH / --ort-dylib-path to a libonnxruntime.so of version 1.31 or newer",
        path.display()
    )]
    OrtLibraryMissing { path: PathBuf },
    #[error("could not load ONNX Runtime: {0}")]
    OrtLoad(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: no tower found: expected visual/model.onnx and/or textual/model.onnx", dir.display())]
    NoTowers { dir: PathBuf },
    #[error("{0}")]
    Provider(String),
    #[error("warm-up failed: {0}")]
    WarmUp(String),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The files of a model directory, parsed and checked, before any ONNX session exists.
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub visual: Option<(PathBuf, PreprocessConfig)>,
    pub textual: Option<(PathBuf, ClipTokenizer)>,
    /// Each tower's precision and provider.
    pub plan: Plan,
    /// The accuracy gates of the reduced-precision towers (`None` when both run fp32).
    pub gate: Option<Gate>,
    /// Run texts at the full context length even on a dynamic sequence axis.
    pub full_length_text: bool,
}

/// A tower's graph at `precision`: `None` when the directory has no such tower; an error when it
/// has the tower but not at that precision.
fn tower_file(
    dir: &Path,
    tower: &str,
    precision: Precision,
) -> Result<Option<PathBuf>, ModelError> {
    let file = dir.join(tower).join(precision.file_name());
    let fp32 = dir.join(tower).join(Precision::Fp32.file_name());
    if file.is_file() {
        Ok(Some(file))
    } else if fp32.is_file() {
        Err(ModelError::Invalid {
            path: file,
            reason: format!(
                "--precision {}: not found beside {} (scripts/quantize.py writes it)",
                precision.as_str(),
                fp32.display()
            ),
        })
    } else {
        Ok(None)
    }
}

impl ModelFiles {
    /// Reads config.json, the preprocess config and the tokenizer: cheap checks that fail fast.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        Self::open_at(dir, Plan::fixed(Precision::Fp32, Provider::Cpu), false)
    }

    /// [`Self::open`] for the towers' graphs of `plan`, which must have passed their accuracy
    /// gate (`quantization.json`) unless `allow_ungated`.
    pub fn open_at(dir: &Path, plan: Plan, allow_ungated: bool) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Invalid {
                path: dir.to_path_buf(),
                reason: "model directory not found (scripts/serve.sh exports the default model; \
                         scripts/export_onnx.py exports others)"
                    .into(),
            });
        }
        let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model");
        let config = ModelConfig::from_file(&dir.join("config.json"), dir_name)?;
        let visual = if let Some(visual_model) = tower_file(dir, "visual", plan.visual.precision)? {
            let cfg_path = dir.join("visual").join("preprocess_cfg.json");
            let cfg =
                PreprocessConfig::from_json_file(&cfg_path).map_err(|e| ModelError::Invalid {
                    path: cfg_path.clone(),
                    reason: e.to_string(),
                })?;
            Some((visual_model, cfg))
        } else {
            None
        };
        let textual =
            if let Some(textual_model) = tower_file(dir, "textual", plan.textual.precision)? {
                let tok_path = dir.join("textual").join("tokenizer.json");
                let tokenizer = ClipTokenizer::from_file(&tok_path, config.context_length)
                    .map_err(|e| ModelError::Invalid {
                        path: tok_path.clone(),
                        reason: e.to_string(),
                    })?;
                Some((textual_model, tokenizer))
            } else {
                None
            };
        if visual.is_none() && textual.is_none() {
            return Err(ModelError::NoTowers {
                dir: dir.to_path_buf(),
            });
        }
        let towers: Vec<&str> = [("visual", visual.is_some()), ("textual", textual.is_some())]
            .into_iter()
            .filter_map(|(name, present)| present.then_some(name))
            .collect();
        // Each reduced-precision tower behind its own variant's gate, gathered into one.
        let mut gate: Option<Gate> = None;
        for tower in towers {
            if let Some(g) =
                precision::check(dir, plan.tower(tower).precision, &[tower], allow_ungated)?
            {
                let all = gate.get_or_insert_with(|| Gate {
                    report: g.report.clone(),
                    ..Gate::default()
                });
                all.ungated |= g.ungated;
                all.towers.extend(g.towers);
            }
        }
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            visual,
            textual,
            plan,
            gate,
            full_length_text: false,
        })
    }
}

/// The visual tower and how to prepare its pixels.
pub struct ImageModel {
    pub tower: Tower,
    pub preprocess: PreprocessConfig,
}

/// The textual tower and its tokenizer.
pub struct TextModel {
    pub tower: Tower,
    pub tokenizer: ClipTokenizer,
}

/// A model ready to run.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub image: Option<ImageModel>,
    pub text: Option<TextModel>,
    /// Each tower's precision and provider, and why.
    pub plan: Plan,
    pub gate: Option<Gate>,
    /// Texts run at the full context length whatever the tower allows.
    pub full_length_text: bool,
}

impl LoadedModel {
    /// Creates the ONNX sessions (the slow part: seconds for the full-size model).
    pub fn load(
        files: ModelFiles,
        env: &ort::environment::Environment,
        providers: &ProviderOptions,
        intra_op_threads: usize,
    ) -> Result<Self, ModelError> {
        let embed_dim = files.config.embed_dim;
        let image = match files.visual {
            Some((path, preprocess)) => {
                let (height, width) = (preprocess.size.0 as usize, preprocess.size.1 as usize);
                let expected = Expected {
                    kind: ExpectedKind::Image { height, width },
                    embed_dim,
                };
                let tower = Tower::load(
                    env,
                    &path,
                    &expected,
                    &providers.with_provider(files.plan.visual.provider),
                    intra_op_threads,
                    files.plan.visual.precision,
                )?;
                Some(ImageModel { tower, preprocess })
            }
            None => None,
        };
        let text = match files.textual {
            Some((path, tokenizer)) => {
                let expected = Expected {
                    kind: ExpectedKind::Text {
                        context_length: files.config.context_length,
                    },
                    embed_dim,
                };
                let tower = Tower::load(
                    env,
                    &path,
                    &expected,
                    &providers.with_provider(files.plan.textual.provider),
                    intra_op_threads,
                    files.plan.textual.precision,
                )?;
                Some(TextModel { tower, tokenizer })
            }
            None => None,
        };
        Ok(LoadedModel {
            dir: files.dir,
            config: files.config,
            image,
            text,
            plan: files.plan,
            gate: files.gate,
            full_length_text: files.full_length_text,
        })
    }

    /// The served towers' plans, with their names.
    fn served(&self) -> Vec<(&'static str, &TowerPlan)> {
        let mut towers = Vec::new();
        if self.image.is_some() {
            towers.push(("visual", &self.plan.visual));
        }
        if self.text.is_some() {
            towers.push(("textual", &self.plan.textual));
        }
        towers
    }

    /// One label for both towers (`bf16`), or one per tower when they differ
    /// (`visual=bf16,textual=int8`).
    fn label(&self, of: impl Fn(&TowerPlan) -> &'static str) -> String {
        let towers = self.served();
        match towers.as_slice() {
            [(_, first), rest @ ..] if rest.iter().all(|(_, t)| of(t) == of(first)) => {
                of(first).to_string()
            }
            _ => towers
                .iter()
                .map(|(name, t)| format!("{name}={}", of(t)))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The precision in use (Info, `clip_model_info`).
    pub fn precision_label(&self) -> String {
        self.label(|t| t.precision.as_str())
    }

    /// The execution provider in use (Info, `clip_model_info`).
    pub fn provider_label(&self) -> String {
        self.label(|t| t.provider.as_str())
    }

    /// Why each served tower runs at its precision (`--precision auto` explains its choice).
    pub fn precision_reason(&self) -> String {
        self.served()
            .iter()
            .map(|(name, t)| format!("{name}: {}", t.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Runs one input through each tower and checks the result, so the first request is not the one
    /// that pays for lazy initialization, and a model that produces garbage never reports SERVING.
    /// The first 16 hex digits of the SHA-256 of config.json and every file under textual/ (name
    /// and contents, in name order): identifies the text tower a cached classifier was computed with.
    pub fn text_fingerprint(&self) -> Result<String, String> {
        use sha2::{Digest, Sha256};
        let mut files = vec![self.dir.join("config.json")];
        let textual = self.dir.join("textual");
        if let Ok(entries) = std::fs::read_dir(&textual) {
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            names.sort();
            files.extend(names);
        }
        let mut hasher = Sha256::new();
        // A reduced-precision graph changes the vectors, so it is part of the identity (fp32
        // fingerprints stay what they were before variants existed).
        if self.plan.textual.precision != Precision::Fp32 {
            hasher.update(self.plan.textual.precision.as_str());
        }
        let mut buf = vec![0u8; 1 << 20];
        for path in files {
            let at = |e: std::io::Error| format!("{}: {e}", path.display());
            hasher.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            let mut file = std::fs::File::open(&path).map_err(at)?;
            loop {
                let n = std::io::Read::read(&mut file, &mut buf).map_err(at)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        Ok(crate::common::hex(&hasher.finalize()[..8]))
    }

    pub fn warm_up(&self) -> Result<(), ModelError> {
        // Two rows when the batch axis is dynamic: exports with a symbolic batch axis but batch-1
        // reshapes baked in fail here rather than on the first multi-item request.
        let check = |what: &str, rows: usize, out: Result<Vec<Vec<f32>>, String>| {
            let out = out.map_err(|e| ModelError::WarmUp(format!("{what}: {e}")))?;
            let dim = self.config.embed_dim;
            if out.len() == rows
                && out
                    .iter()
                    .all(|v| v.len() == dim && v.iter().all(|x| x.is_finite()))
            {
                Ok(())
            } else {
                Err(ModelError::WarmUp(format!(
                    "{what}: output is not {rows} finite vectors of {dim} values"
                )))
            }
        };
        if let Some(image) = &self.image {
            let (h, w) = (
                image.preprocess.size.0 as usize,
                image.preprocess.size.1 as usize,
            );
            let rows = if image.tower.spec.dynamic_batch { 2 } else { 1 };
            let crops: Vec<Vec<u8>> = (0..rows)
                .map(|r| vec![96 + 64 * r as u8; h * w * 3])
                .collect();
            check("visual tower", rows, self.embed_pixels(&crops))?;
        }
        if let Some(text) = &self.text {
            let rows = if text.tower.spec.dynamic_batch { 2 } else { 1 };
            let ids: Vec<Vec<i64>> = ["a photo of a cat.", "a diagram"]
                .iter()
                .take(rows)
                .map(|t| text.tokenizer.encode(t).ids)
                .collect();
            check("textual tower", rows, self.embed_token_ids(&ids))?;
        }
        Ok(())
    }

    /// Embeds preprocessed images (HWC RGB levels of the preprocess size), one vector per image.
    pub fn embed_pixels(&self, crops: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, String> {
        let image = self
            .image
            .as_ref()
            .ok_or("this model has no visual tower")?;
        let rows = crops.len();
        let row_len = image.tower.row_len();
        if let Some(bad) = crops.iter().position(|c| c.len() != row_len) {
            return Err(format!(
                "image {bad} has {} values; {row_len} expected",
                crops[bad].len()
            ));
        }
        let input = match image.tower.spec.input {
            InputKind::Image {
                layout: ImageLayout::NchwF32,
                ..
            } => {
                let mut data = vec![0f32; rows * row_len];
                for (crop, out) in crops.iter().zip(data.chunks_exact_mut(row_len)) {
                    image_pre::normalize_into_nchw(crop, &image.preprocess, out);
                }
                BatchInput::F32(data)
            }
            InputKind::Image {
                layout: ImageLayout::NhwcU8,
                ..
            } => BatchInput::U8(crops.concat()),
            InputKind::Text { .. } => return Err("visual tower has a text input".into()),
        };
        image.tower.run(input, rows)
    }

    /// Embeds token id rows (context_length ids each), one vector per row. On a tower with a
    /// dynamic sequence axis the batch runs only as long as its longest text needs
    /// ([`trimmed_length`]): the same vectors, a fraction of the work for short texts.
    pub fn embed_token_ids(&self, rows: &[Vec<i64>]) -> Result<Vec<Vec<f32>>, String> {
        self.embed_token_ids_at(rows).map(|(vectors, _)| vectors)
    }

    /// [`Self::embed_token_ids`], and the number of ids per row the batch ran with.
    pub fn embed_token_ids_at(&self, rows: &[Vec<i64>]) -> Result<(Vec<Vec<f32>>, usize), String> {
        let text = self
            .text
            .as_ref()
            .ok_or("this model has no textual tower")?;
        let InputKind::Text {
            dtype,
            context_length,
        } = text.tower.spec.input
        else {
            return Err("textual tower has an image input".into());
        };
        if let Some(bad) = rows.iter().position(|r| r.len() != context_length) {
            return Err(format!(
                "token row {bad} has {} ids; {context_length} expected",
                rows[bad].len()
            ));
        }
        let len = if text.tower.spec.dynamic_length && !self.full_length_text {
            trimmed_length(rows, context_length)
        } else {
            context_length
        };
        let ids = rows.iter().flat_map(|r| &r[..len]);
        let input = match dtype {
            TokenType::I64 => BatchInput::I64(ids.copied().collect()),
            // Token ids are < vocab size (49408), so they always fit.
            TokenType::I32 => BatchInput::I32(ids.map(|&id| id as i32).collect()),
        };
        Ok((text.tower.run_text(input, rows.len(), len)?, len))
    }
}
