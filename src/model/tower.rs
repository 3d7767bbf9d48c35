//! One ONNX tower (visual or textual): its session, the input/output layout discovered from the
//! session metadata, and batched execution.
//!
//! Exports in the wild differ: float32 NCHW normalized or uint8 NHWC raw pixels,
//! int64 or int32 token ids, dynamic or static batch 1, outputs normalized in the graph or not. The
//! layout is read from the model, checked against the model directory's configuration, and anything
//! that cannot work is a start-up error naming the file and the mismatch.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use ort::{
    environment::Environment,
    session::{Session, builder::GraphOptimizationLevel},
    value::{Outlet, Tensor, TensorElementType, ValueType},
};

use super::{ModelError, runtime::ProviderOptions};

/// How a visual tower takes its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageLayout {
    /// float32 `[N, 3, H, W]`, scaled to 0..1 and normalized with the preprocess mean/std.
    NchwF32,
    /// uint8 `[N, H, W, 3]` raw RGB levels; normalization is part of the graph.
    NhwcU8,
}

/// Element type of a textual tower's token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    I64,
    I32,
}

/// The layout of a tower's single input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Image {
        layout: ImageLayout,
        height: usize,
        width: usize,
    },
    Text {
        dtype: TokenType,
        context_length: usize,
    },
}

/// What the tower expects, for Info and logs.
#[derive(Debug, Clone)]
pub struct TowerSpec {
    pub path: PathBuf,
    pub input_name: String,
    pub input: InputKind,
    pub input_desc: String,
    pub output_name: String,
    pub output_desc: String,
    pub dynamic_batch: bool,
    /// Text towers: the sequence axis is dynamic, so a batch can run with fewer than
    /// `context_length` ids per row (see [`trimmed_length`]).
    pub dynamic_length: bool,
    pub embed_dim: usize,
}

/// Ids per row that a batch of padded token-id rows needs on a tower with a dynamic sequence
/// axis: up to and including the end-of-text token of its longest row, rounded up to a multiple
/// of 8 (so ONNX Runtime's allocations and TensorRT's profiles see few distinct shapes), at most
/// `context_length`.
///
/// Exact for CLIP text towers: attention is causal, so position p sees only positions <= p, and
/// LayerNorm and the MLP work per position; the pooled vector is taken at the end-of-text token,
/// the largest id (open_clip `text_global_pool`, pool type `argmax`). Cutting every row after the
/// batch's last end-of-text token leaves every pooled vector unchanged (up to float rounding).
pub fn trimmed_length(rows: &[Vec<i64>], context_length: usize) -> usize {
    let needed = rows
        .iter()
        .map(|row| {
            // The first occurrence of the largest id, as torch.argmax picks it.
            let mut at = 0;
            for (i, &id) in row.iter().enumerate() {
                if id > row[at] {
                    at = i;
                }
            }
            at + 1
        })
        .max()
        .unwrap_or(1);
    needed
        .div_ceil(8)
        .saturating_mul(8)
        .clamp(1, context_length.max(1))
}

/// A loaded tower. `Session::run` needs `&mut`, so runs are serialized by a mutex; ONNX Runtime
/// parallelizes inside a run with its intra-op threads.
pub struct Tower {
    session: Mutex<Session>,
    pub spec: TowerSpec,
}

/// Input data for one batch, already in the tower's layout and element type.
pub enum BatchInput {
    F32(Vec<f32>),
    U8(Vec<u8>),
    I64(Vec<i64>),
    I32(Vec<i32>),
}

impl BatchInput {
    fn len(&self) -> usize {
        match self {
            BatchInput::F32(v) => v.len(),
            BatchInput::U8(v) => v.len(),
            BatchInput::I64(v) => v.len(),
            BatchInput::I32(v) => v.len(),
        }
    }
}

/// What a tower should look like, from the model directory's configuration.
pub struct Expected {
    pub kind: ExpectedKind,
    pub embed_dim: usize,
}

pub enum ExpectedKind {
    Image { height: usize, width: usize },
    Text { context_length: usize },
}

impl Tower {
    /// Loads `path` and checks its input and output against `expected`, to run at `precision` (bf16:
    /// OpenVINO's inference precision over the fp32 graph). `fp16` graphs on the CPU
    /// provider get ONNX Runtime's extended optimizations only: at `All`, ONNX Runtime 1.32's CPU
    /// session for the fp16 image tower crashes (measured by scripts/quantize.py; fp16 is for GPUs,
    /// the CPU path exists for checks).
    pub fn load(
        env: &Environment,
        path: &Path,
        expected: &Expected,
        providers: &ProviderOptions,
        intra_op_threads: usize,
        precision: super::Precision,
    ) -> Result<Self, ModelError> {
        let fp16 = precision == super::Precision::Fp16;
        let ort_err = |e: &dyn std::fmt::Display| ModelError::Invalid {
            path: path.to_path_buf(),
            reason: format!("ONNX Runtime could not load it: {e}"),
        };
        if !path.is_file() {
            return Err(ModelError::Invalid {
                path: path.to_path_buf(),
                reason: "file not found".into(),
            });
        }
        // TensorRT builds one engine per optimization profile, so it needs the input's name and
        // shape before the real session exists: a quick unoptimized CPU session reads them.
        let profile =
            if cfg!(feature = "tensorrt") && providers.provider == super::Provider::Tensorrt {
                let probe = Session::builder(env)
                    .and_then(|b| {
                        b.with_optimization_level(GraphOptimizationLevel::Disable)
                            .map_err(Into::into)
                    })
                    .and_then(|mut b| b.commit_from_file(path))
                    .map_err(|e| ort_err(&e))?;
                probe.inputs().first().and_then(|input| {
                    let (_, dims) = tensor_parts(input)?;
                    let context = match expected.kind {
                        ExpectedKind::Text { context_length } => Some(context_length),
                        ExpectedKind::Image { .. } => None,
                    };
                    super::runtime::TrtProfile::for_input(
                        input.name(),
                        &dims,
                        providers.max_batch_size,
                        context,
                    )
                })
            } else {
                None
            };
        let eps = super::runtime::execution_providers(providers, profile.as_ref(), path)?;
        let level = if fp16 && providers.provider == super::Provider::Cpu {
            GraphOptimizationLevel::Level2
        } else {
            GraphOptimizationLevel::All
        };
        let mut builder = Session::builder(env)
            .and_then(|b| b.with_optimization_level(level).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(intra_op_threads).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .map_err(|e| ort_err(&e))?;
        if providers.provider == super::Provider::Openvino {
            builder = super::openvino::append(
                builder,
                env,
                &providers.openvino_plugin,
                precision,
                intra_op_threads,
            )?;
        } else if precision == super::Precision::Bf16 {
            return Err(ModelError::Provider(
                "--precision bf16 runs through OpenVINO: add --provider openvino".into(),
            ));
        }
        if !eps.is_empty() {
            builder = builder.with_execution_providers(eps).map_err(|e| {
                ModelError::Provider(format!(
                    "{} provider could not be registered for {}: {e} (GPU providers need the ONNX Runtime \
                     library of the onnxruntime-gpu wheel in ORT_DYLIB_PATH, and a visible GPU)",
                    providers.provider.as_str(),
                    path.display()
                ))
            })?;
        }
        let session = builder.commit_from_file(path).map_err(|e| ort_err(&e))?;
        let spec = discover(path, session.inputs(), session.outputs(), expected)?;
        Ok(Tower {
            session: Mutex::new(session),
            spec,
        })
    }

    /// Runs `rows` rows of `input` (laid out row-major, `row_len` elements each) and returns one
    /// L2-normalized embedding per row. Static-batch models run row by row.
    pub fn run(&self, input: BatchInput, rows: usize) -> Result<Vec<Vec<f32>>, String> {
        self.run_rows(input, rows, self.row_len())
    }

    /// Runs token-id rows of `len` ids each (at most the context length; fewer only on a tower
    /// with a dynamic sequence axis).
    pub fn run_text(
        &self,
        input: BatchInput,
        rows: usize,
        len: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        match self.spec.input {
            InputKind::Text { context_length, .. }
                if len == context_length || (self.spec.dynamic_length && len < context_length) =>
            {
                self.run_rows(input, rows, len)
            }
            _ => Err(format!(
                "{}: cannot run token rows of {len} ids (input {})",
                self.spec.path.display(),
                self.spec.input_desc
            )),
        }
    }

    fn run_rows(
        &self,
        input: BatchInput,
        rows: usize,
        expected_row_len: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let row_len = input.len() / rows;
        if row_len * rows != input.len() || row_len != expected_row_len {
            return Err(format!(
                "batch of {rows} rows has {} elements; {expected_row_len} per row expected",
                input.len(),
            ));
        }
        if self.spec.dynamic_batch {
            return self.run_batch(input, rows, row_len);
        }
        let mut out = Vec::with_capacity(rows);
        for i in 0..rows {
            let row = match &input {
                BatchInput::F32(v) => BatchInput::F32(row_of(v, i, row_len)),
                BatchInput::U8(v) => BatchInput::U8(row_of(v, i, row_len)),
                BatchInput::I64(v) => BatchInput::I64(row_of(v, i, row_len)),
                BatchInput::I32(v) => BatchInput::I32(row_of(v, i, row_len)),
            };
            out.extend(self.run_batch(row, 1, row_len)?);
        }
        Ok(out)
    }

    /// Elements per input row.
    pub fn row_len(&self) -> usize {
        match self.spec.input {
            InputKind::Image { height, width, .. } => 3 * height * width,
            InputKind::Text { context_length, .. } => context_length,
        }
    }

    /// The input shape of a batch; `row_len` sets a text batch's sequence length.
    fn shape(&self, rows: usize, row_len: usize) -> Vec<i64> {
        match self.spec.input {
            InputKind::Image {
                layout: ImageLayout::NchwF32,
                height,
                width,
            } => {
                vec![rows as i64, 3, height as i64, width as i64]
            }
            InputKind::Image {
                layout: ImageLayout::NhwcU8,
                height,
                width,
            } => {
                vec![rows as i64, height as i64, width as i64, 3]
            }
            InputKind::Text { .. } => vec![rows as i64, row_len as i64],
        }
    }

    fn run_batch(
        &self,
        input: BatchInput,
        rows: usize,
        row_len: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        let shape = self.shape(rows, row_len);
        let value: ort::value::DynValue = match input {
            BatchInput::F32(v) => Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
            BatchInput::U8(v) => Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
            BatchInput::I64(v) => Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
            BatchInput::I32(v) => Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
        }
        .map_err(|e| format!("could not create the input tensor: {e}"))?;
        // A panic in an earlier run leaves the session itself intact: keep serving.
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session
            .run(ort::inputs![self.spec.input_name.as_str() => value])
            .map_err(|e| format!("{}: inference failed: {e}", self.spec.path.display()))?;
        let output = outputs.get(&self.spec.output_name).ok_or_else(|| {
            format!(
                "output `{}` missing from the run's results",
                self.spec.output_name
            )
        })?;
        let (out_shape, data) = output.try_extract_tensor::<f32>().map_err(|e| {
            format!(
                "output `{}` is not a float32 tensor: {e}",
                self.spec.output_name
            )
        })?;
        let dim = self.spec.embed_dim;
        if out_shape.len() != 2 || out_shape[0] != rows as i64 || out_shape[1] != dim as i64 {
            return Err(format!(
                "output `{}` has shape {out_shape:?}; expected [{rows}, {dim}]",
                self.spec.output_name
            ));
        }
        let mut rows_out = Vec::with_capacity(rows);
        for (i, row) in data.chunks_exact(dim).enumerate() {
            let norm = l2_norm(row);
            if !norm.is_finite() || norm == 0.0 {
                return Err(format!(
                    "{}: output row {i} has norm {norm}: not a usable embedding (NaN, infinite or zero values)",
                    self.spec.path.display()
                ));
            }
            rows_out.push(scaled(row, norm));
        }
        Ok(rows_out)
    }
}

fn row_of<T: Copy>(v: &[T], i: usize, row_len: usize) -> Vec<T> {
    v[i * row_len..(i + 1) * row_len].to_vec()
}

/// `||v||`, accumulated in f64.
fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

fn scaled(v: &[f32], norm: f64) -> Vec<f32> {
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}

/// `v / ||v||`, computed in f64 for the norm. A zero vector stays zero.
pub fn l2_normalized(v: &[f32]) -> Vec<f32> {
    let norm = l2_norm(v);
    if norm > 0.0 && norm.is_finite() {
        scaled(v, norm)
    } else {
        v.to_vec()
    }
}

/// `image: float32[batch,3,224,224]`: the ONNX view of an input or output, for messages and Info.
fn describe(outlet: &Outlet) -> String {
    match outlet.dtype() {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => {
            let dims: Vec<String> = shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match dimension_symbols.get(i) {
                    _ if d >= 0 => d.to_string(),
                    Some(sym) if !sym.is_empty() => sym.to_string(),
                    _ => "?".to_string(),
                })
                .collect();
            format!(
                "{}: {}[{}]",
                outlet.name(),
                element_name(*ty),
                dims.join(",")
            )
        }
        other => format!("{}: {other}", outlet.name()),
    }
}

fn element_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Int8 => "int8".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Int64 => "int64".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn tensor_parts(outlet: &Outlet) -> Option<(TensorElementType, Vec<i64>)> {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

/// Checks a tower's inputs and outputs against what the model directory says it should be.
fn discover(
    path: &Path,
    inputs: &[Outlet],
    outputs: &[Outlet],
    expected: &Expected,
) -> Result<TowerSpec, ModelError> {
    let invalid = |reason: String| ModelError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let [input] = inputs else {
        let names: Vec<String> = inputs.iter().map(describe).collect();
        return Err(invalid(format!(
            "has {} inputs ({}); exactly one is supported",
            inputs.len(),
            names.join(", ")
        )));
    };
    let Some((ty, shape)) = tensor_parts(input) else {
        return Err(invalid(format!(
            "input {} is not a tensor",
            describe(input)
        )));
    };
    let batch_ok = |b: i64| b == -1 || b == 1;
    let dim_ok = |d: i64, want: usize| d == -1 || d == want as i64;
    let (kind, dynamic_batch, dynamic_length, layout_desc) = match expected.kind {
        ExpectedKind::Image { height, width } => {
            let layout = match (ty, shape.as_slice()) {
                (TensorElementType::Float32, [b, 3, h, w])
                    if batch_ok(*b) && dim_ok(*h, height) && dim_ok(*w, width) =>
                {
                    ImageLayout::NchwF32
                }
                (TensorElementType::Uint8, [b, h, w, 3])
                    if batch_ok(*b) && dim_ok(*h, height) && dim_ok(*w, width) =>
                {
                    ImageLayout::NhwcU8
                }
                _ => {
                    return Err(invalid(format!(
                        "image input {} is not float32[N,3,{height},{width}] (normalized NCHW) or uint8[N,{height},{width},3] \
                         (raw NHWC) with N dynamic or 1; the size comes from visual/preprocess_cfg.json",
                        describe(input)
                    )));
                }
            };
            let desc = match layout {
                ImageLayout::NchwF32 => "normalized NCHW",
                ImageLayout::NhwcU8 => "raw uint8 NHWC, normalized in the graph",
            };
            (
                InputKind::Image {
                    layout,
                    height,
                    width,
                },
                shape[0] == -1,
                false,
                desc,
            )
        }
        ExpectedKind::Text { context_length } => {
            let dtype = match (ty, shape.as_slice()) {
                (TensorElementType::Int64, [b, c])
                    if batch_ok(*b) && dim_ok(*c, context_length) =>
                {
                    TokenType::I64
                }
                (TensorElementType::Int32, [b, c])
                    if batch_ok(*b) && dim_ok(*c, context_length) =>
                {
                    TokenType::I32
                }
                _ => {
                    return Err(invalid(format!(
                        "text input {} is not int64 or int32 [N,{context_length}] with N dynamic or 1; the context length \
                         comes from config.json text_cfg.context_length",
                        describe(input)
                    )));
                }
            };
            let dynamic_length = shape[1] == -1;
            let desc = match (dtype, dynamic_length) {
                (TokenType::I64, false) => "int64 token ids",
                (TokenType::I32, false) => "int32 token ids",
                (TokenType::I64, true) => "int64 token ids, dynamic sequence length",
                (TokenType::I32, true) => "int32 token ids, dynamic sequence length",
            };
            (
                InputKind::Text {
                    dtype,
                    context_length,
                },
                shape[0] == -1,
                dynamic_length,
                desc,
            )
        }
    };

    // The embedding output: float32 [N, D]. Several candidates: prefer a name that says "embed".
    let dim = expected.embed_dim as i64;
    let candidates: Vec<&Outlet> = outputs
        .iter()
        .filter(|o| {
            matches!(tensor_parts(o), Some((TensorElementType::Float32, s)) if s.len() == 2 && (s[1] == dim || s[1] == -1))
        })
        .collect();
    let output = match candidates.as_slice() {
        [one] => *one,
        [] => {
            let names: Vec<String> = outputs.iter().map(describe).collect();
            return Err(invalid(format!(
                "no output is float32[N,{dim}] (embed_dim from config.json); outputs are: {}",
                names.join(", ")
            )));
        }
        many => {
            let named: Vec<&&Outlet> = many
                .iter()
                .filter(|o| o.name().to_ascii_lowercase().contains("embed"))
                .collect();
            match named.as_slice() {
                [one] => **one,
                _ => {
                    let names: Vec<&str> = many.iter().map(|o| o.name()).collect();
                    return Err(invalid(format!(
                        "several outputs could be the embedding ({}); name one of them `*embed*`",
                        names.join(", ")
                    )));
                }
            }
        }
    };
    Ok(TowerSpec {
        path: path.to_path_buf(),
        input_name: input.name().to_string(),
        input: kind,
        input_desc: format!("{} ({layout_desc})", describe(input)),
        output_name: output.name().to_string(),
        output_desc: describe(output),
        dynamic_batch,
        dynamic_length,
        embed_dim: expected.embed_dim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_length_ends_after_the_last_end_of_text_rounded_to_eight() {
        let row = |ids: &[i64]| {
            let mut r = ids.to_vec();
            r.resize(77, 0);
            r
        };
        // "a photo of a cat." is SOT + 6 tokens + EOT: 8 ids.
        let cat = row(&[49406, 320, 1125, 539, 320, 2368, 269, 49407]);
        assert_eq!(trimmed_length(std::slice::from_ref(&cat), 77), 8);
        let longer = row(&[49406, 1, 2, 3, 4, 5, 6, 7, 8, 49407]);
        assert_eq!(trimmed_length(&[cat.clone(), longer], 77), 16);
        // The empty text: SOT, EOT.
        assert_eq!(trimmed_length(&[row(&[49406, 49407])], 77), 8);
        // A text cut at the context length ends with EOT at position 76: the full length.
        let mut full = vec![400; 77];
        full[0] = 49406;
        full[76] = 49407;
        assert_eq!(trimmed_length(&[cat, full], 77), 77);
        // Never over the context length, even when rounding up would be.
        assert_eq!(trimmed_length(&[row(&[49406, 49407])], 5), 5);
    }

    #[test]
    fn l2_normalization() {
        let v = l2_normalized(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        assert_eq!(l2_normalized(&[0.0, 0.0]), vec![0.0, 0.0]);
        let again = l2_normalized(&v);
        assert!(v.iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-7));
    }
}
