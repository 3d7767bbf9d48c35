//! Reduced-precision variants of a model directory's towers, served only behind the accuracy gate
//! that `scripts/quantize.py` writes.
//!
//! ```text
//! <model>/visual/model.int8.onnx   <model>/textual/model.int8.onnx   INT8 for CPUs
//! <model>/visual/model.fp16.onnx   <model>/textual/model.fp16.onnx   FP16 for GPUs
//! <model>/quantization.json        per variant and tower: cosine vs fp32 on a calibration set
//!                                  (min, p1, mean), top-1 agreements, thresholds, pass/fail
//! ```
//!
//! bf16 has no file of its own: it is the fp32 graph run by OpenVINO at bf16 inference precision,
//! gated in the same report under `bf16`.
//!
//! `--precision int8|fp16|bf16` loads `model.<precision>.onnx` for each tower and refuses a variant whose
//! gate is missing or failed, unless `--allow-ungated-precision`. The gate's figures come from the
//! model it was run on: figures of random or tiny test weights say nothing of the real checkpoint.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::ModelError;

/// Which graph of each tower is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// `model.onnx`, the exported graph.
    #[default]
    Fp32,
    /// `model.int8.onnx`: dynamic INT8 quantization (MatMul/Gemm), for CPUs.
    Int8,
    /// `model.fp16.onnx`: FP16 weights and arithmetic, for GPUs.
    Fp16,
    /// `model.onnx` run by OpenVINO (`--provider openvino`) at bf16 inference precision, on CPUs
    /// with AVX512-BF16 or AMX-BF16.
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The file of `tower` (`visual` or `textual`) at this precision.
    pub fn file_name(self) -> &'static str {
        match self {
            Precision::Fp32 | Precision::Bf16 => "model.onnx",
            Precision::Int8 => "model.int8.onnx",
            Precision::Fp16 => "model.fp16.onnx",
        }
    }
}

/// One tower's gate figures.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TowerGate {
    #[serde(default)]
    pub cosine: Cosine,
    #[serde(default)]
    pub pass: bool,
    #[serde(default)]
    pub failures: Vec<String>,
}

/// Cosine of each calibration item's embedding with fp32's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Cosine {
    #[serde(default)]
    pub min: f64,
    #[serde(default)]
    pub p1: f64,
    #[serde(default)]
    pub mean: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct VariantReport {
    #[serde(default)]
    towers: BTreeMap<String, TowerGate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Report {
    #[serde(default)]
    variants: BTreeMap<String, VariantReport>,
}

/// What the gate said of the served variant, per tower (`visual`, `textual`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gate {
    /// Where the figures come from.
    pub report: PathBuf,
    pub towers: BTreeMap<String, TowerGate>,
    /// Served without a passed gate (`--allow-ungated-precision`).
    pub ungated: bool,
}

/// The cosine min of `tower`'s passed gate at `precision` in `<dir>/quantization.json`; `None` when
/// the report, the entry or the pass is missing.
pub fn passed(dir: &Path, precision: Precision, tower: &str) -> Option<f64> {
    let bytes = std::fs::read(dir.join("quantization.json")).ok()?;
    let report: Report = serde_json::from_slice(&bytes).ok()?;
    let gate = report.variants.get(precision.as_str())?.towers.get(tower)?;
    gate.pass.then_some(gate.cosine.min)
}

/// Checks the gate of `precision` for the towers the directory has. `Ok(None)` for fp32 (nothing to
/// gate); an error names the report and what is missing or failed, unless `allow_ungated` (then the
/// gate, such as it is, is returned with `ungated` set).
pub fn check(
    dir: &Path,
    precision: Precision,
    towers: &[&str],
    allow_ungated: bool,
) -> Result<Option<Gate>, ModelError> {
    if precision == Precision::Fp32 {
        return Ok(None);
    }
    let path = dir.join("quantization.json");
    let refuse = |reason: String| {
        let hint = "run scripts/quantize.py on this model directory, or pass --allow-ungated-precision to serve it unchecked";
        Err(ModelError::Invalid {
            path: path.clone(),
            reason: format!("--precision {}: {reason}; {hint}", precision.as_str()),
        })
    };
    let report: Report = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(report) => report,
            Err(e) if !allow_ungated => {
                return refuse(format!("the gate report does not parse: {e}"));
            }
            Err(_) => Report::default(),
        },
        Err(e) if !allow_ungated => return refuse(format!("no accuracy gate report ({e})")),
        Err(_) => Report::default(),
    };
    let variant = report.variants.get(precision.as_str());
    let mut gate = Gate {
        report: path.clone(),
        towers: BTreeMap::new(),
        ungated: false,
    };
    for &tower in towers {
        match variant.and_then(|v| v.towers.get(tower)) {
            Some(t) if t.pass => {
                gate.towers.insert(tower.to_string(), t.clone());
            }
            Some(t) => {
                if !allow_ungated {
                    return refuse(format!(
                        "the {tower} tower failed its accuracy gate ({}; cosine min {:.6})",
                        t.failures.join("; "),
                        t.cosine.min
                    ));
                }
                gate.ungated = true;
                gate.towers.insert(tower.to_string(), t.clone());
            }
            None => {
                if !allow_ungated {
                    return refuse(format!("the {tower} tower was never gated"));
                }
                gate.ungated = true;
            }
        }
    }
    Ok(Some(gate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dir: &Path, visual_pass: bool) {
        let json = serde_json::json!({
            "schema": 1,
            "variants": {"int8": {"pass": visual_pass, "towers": {
                "visual": {"cosine": {"min": 0.9991, "p1": 0.9992, "mean": 0.9998}, "pass": visual_pass,
                           "failures": if visual_pass { vec![] } else { vec!["cosine min 0.95 < 0.99"] }},
                "textual": {"cosine": {"min": 0.9995, "p1": 0.9996, "mean": 0.9999}, "pass": true, "failures": []}
            }}}
        });
        std::fs::write(dir.join("quantization.json"), json.to_string()).unwrap();
    }

    #[test]
    fn a_variant_serves_only_behind_a_passed_gate() {
        let dir = tempfile::tempdir().unwrap();
        let towers = ["visual", "textual"];
        assert_eq!(
            check(dir.path(), Precision::Fp32, &towers, false).unwrap(),
            None
        );
        // No report at all.
        let e = check(dir.path(), Precision::Int8, &towers, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no accuracy gate report") && e.contains("--allow-ungated-precision"),
            "{e}"
        );
        // A passed gate.
        report(dir.path(), true);
        let gate = check(dir.path(), Precision::Int8, &towers, false)
            .unwrap()
            .unwrap();
        assert!(!gate.ungated);
        assert_eq!(gate.towers["visual"].cosine.min, 0.9991);
        // Never gated at that precision.
        let e = check(dir.path(), Precision::Fp16, &towers, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("visual tower was never gated"), "{e}");
        // A failed tower, refused, then served on request and marked ungated.
        report(dir.path(), false);
        let e = check(dir.path(), Precision::Int8, &towers, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("visual tower failed its accuracy gate") && e.contains("0.95 < 0.99"),
            "{e}"
        );
        let gate = check(dir.path(), Precision::Int8, &towers, true)
            .unwrap()
            .unwrap();
        assert!(gate.ungated);
        assert_eq!(Precision::Int8.file_name(), "model.int8.onnx");
    }
}
