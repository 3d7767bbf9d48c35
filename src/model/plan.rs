//! Which precision and provider each tower runs at: fixed by `--precision`, or chosen per tower by
//! `--precision auto`, and why.
//!
//! `auto` takes, per tower, the fastest variant whose accuracy gate passed and which this CPU runs
//! fast: bf16 (OpenVINO) where the CPU has AMX-BF16, int8 (ONNX Runtime's INT8 kernels) where it has
//! VNNI or AMX-INT8, otherwise fp32. AVX512-BF16 without AMX is not enough for bf16 to win: its
//! dot products give about int8's speed at best, and int8 needs no second runtime. The CPU
//! features are an input (not read here), so each case is testable on any machine.

use std::path::Path;

use super::{CpuFeatures, Precision, Provider, precision};

/// `--precision`: one precision for both towers, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PrecisionArg {
    #[default]
    Fp32,
    Int8,
    Fp16,
    Bf16,
    /// Per tower, the fastest variant whose gate passed and which this CPU runs fast.
    Auto,
}

impl From<Precision> for PrecisionArg {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => PrecisionArg::Fp32,
            Precision::Int8 => PrecisionArg::Int8,
            Precision::Fp16 => PrecisionArg::Fp16,
            Precision::Bf16 => PrecisionArg::Bf16,
        }
    }
}

/// What one tower runs at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerPlan {
    pub precision: Precision,
    pub provider: Provider,
    /// Why (for `auto`: what was chosen over what; otherwise the flag).
    pub reason: String,
}

/// What each tower runs at (a tower the directory lacks keeps its entry unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub visual: TowerPlan,
    pub textual: TowerPlan,
}

impl Plan {
    /// Both towers at `precision` on `provider`, as the flags say.
    pub fn fixed(precision: Precision, provider: Provider) -> Self {
        let tower = TowerPlan {
            precision,
            provider,
            reason: format!("--precision {}", precision.as_str()),
        };
        Plan {
            visual: tower.clone(),
            textual: tower,
        }
    }

    /// The plan of `tower` (`visual` or `textual`).
    pub fn tower(&self, tower: &str) -> &TowerPlan {
        if tower == "visual" {
            &self.visual
        } else {
            &self.textual
        }
    }
}

/// Resolves `--precision` for the model in `dir`. `openvino` says whether OpenVINO's CPU device
/// can be used here (asked only when bf16 is otherwise the choice).
pub fn resolve(
    arg: PrecisionArg,
    provider: Provider,
    dir: &Path,
    cpu: &CpuFeatures,
    openvino: &mut dyn FnMut() -> Result<(), String>,
) -> Plan {
    let fixed = match arg {
        PrecisionArg::Fp32 => Precision::Fp32,
        PrecisionArg::Int8 => Precision::Int8,
        PrecisionArg::Fp16 => Precision::Fp16,
        PrecisionArg::Bf16 => Precision::Bf16,
        PrecisionArg::Auto => {
            return Plan {
                visual: auto(dir, "visual", provider, cpu, openvino),
                textual: auto(dir, "textual", provider, cpu, openvino),
            };
        }
    };
    Plan::fixed(fixed, provider)
}

fn auto(
    dir: &Path,
    tower: &str,
    provider: Provider,
    cpu: &CpuFeatures,
    openvino: &mut dyn FnMut() -> Result<(), String>,
) -> TowerPlan {
    let plan = |precision, provider, reason: String| TowerPlan {
        precision,
        provider,
        reason: format!("auto: {reason}"),
    };
    if matches!(provider, Provider::Cuda | Provider::Tensorrt) {
        return plan(
            Precision::Fp32,
            provider,
            format!(
                "fp32 (auto chooses among CPU variants; --provider {} serves fp32 unless --precision fp16)",
                provider.as_str()
            ),
        );
    }
    let passed = |p: Precision| precision::passed(dir, p, tower);
    // bf16 first: the fastest where AMX-BF16 is.
    let why_not_bf16 = if !cpu.amx_bf16 {
        "no AMX-BF16".to_string()
    } else if let Some(min) = passed(Precision::Bf16) {
        match openvino() {
            Ok(()) => {
                return plan(
                    Precision::Bf16,
                    Provider::Openvino,
                    format!(
                        "bf16 through OpenVINO (CPU has AMX-BF16; bf16 gate passed, cosine min {min:.6})"
                    ),
                );
            }
            Err(e) => format!("OpenVINO unavailable ({e})"),
        }
    } else {
        "no passed bf16 gate".to_string()
    };
    if provider == Provider::Openvino {
        return plan(
            Precision::Fp32,
            Provider::Openvino,
            format!("fp32 through OpenVINO (not bf16: {why_not_bf16})"),
        );
    }
    let int8_file = dir.join(tower).join(Precision::Int8.file_name()).is_file();
    let why_not_int8 = if !cpu.has_int8_dot() {
        "no VNNI or AMX-INT8".to_string()
    } else if !int8_file {
        format!("no {tower}/{}", Precision::Int8.file_name())
    } else if let Some(min) = passed(Precision::Int8) {
        let unit = if cpu.amx_int8 { "AMX-INT8" } else { "VNNI" };
        return plan(
            Precision::Int8,
            Provider::Cpu,
            format!(
                "int8 (CPU has {unit}; int8 gate passed, cosine min {min:.6}; not bf16: {why_not_bf16})"
            ),
        );
    } else {
        "no passed int8 gate".to_string()
    };
    plan(
        Precision::Fp32,
        Provider::Cpu,
        format!("fp32 (not bf16: {why_not_bf16}; not int8: {why_not_int8})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory whose report passes (or fails) the given variants per tower.
    fn model(gates: &[(&str, &str, bool)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut variants = serde_json::Map::new();
        for &(variant, tower, pass) in gates {
            let v = variants
                .entry(variant.to_string())
                .or_insert_with(|| serde_json::json!({"towers": {}}));
            v["towers"][tower] = serde_json::json!({
                "cosine": {"min": 0.99991, "p1": 0.99992, "mean": 0.99999}, "pass": pass, "failures": []
            });
        }
        std::fs::write(
            dir.path().join("quantization.json"),
            serde_json::json!({"schema": 1, "variants": variants}).to_string(),
        )
        .unwrap();
        for tower in ["visual", "textual"] {
            std::fs::create_dir_all(dir.path().join(tower)).unwrap();
            std::fs::write(dir.path().join(tower).join("model.onnx"), b"").unwrap();
            std::fs::write(dir.path().join(tower).join("model.int8.onnx"), b"").unwrap();
        }
        dir
    }

    const AMX: &str = "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8";
    const ZEN4: &str = "avx2 avx512f avx512_vnni avx512_bf16";
    const AVX2: &str = "avx2";

    fn run(dir: &Path, flags: &str, openvino: Result<(), String>) -> (Plan, usize) {
        let mut asked = 0;
        let mut ov = || {
            asked += 1;
            openvino.clone()
        };
        let plan = resolve(
            PrecisionArg::Auto,
            Provider::Cpu,
            dir,
            &CpuFeatures::from_flags(flags),
            &mut ov,
        );
        (plan, asked)
    }

    #[test]
    fn bf16_where_its_gate_passed_on_an_amx_machine() {
        let all = [
            ("bf16", "visual", true),
            ("bf16", "textual", true),
            ("int8", "visual", true),
            ("int8", "textual", true),
        ];
        let dir = model(&all);
        let (plan, asked) = run(dir.path(), AMX, Ok(()));
        for t in [&plan.visual, &plan.textual] {
            assert_eq!(
                (t.precision, t.provider),
                (Precision::Bf16, Provider::Openvino)
            );
            assert!(
                t.reason.contains("AMX-BF16") && t.reason.contains("0.99991"),
                "{}",
                t.reason
            );
        }
        assert_eq!(asked, 2);
        // OpenVINO unusable (no plugin, or no device): int8, saying why not bf16.
        let (plan, _) = run(dir.path(), AMX, Err("no plugin".into()));
        assert_eq!(plan.visual.precision, Precision::Int8);
        assert!(
            plan.visual.reason.contains("AMX-INT8") && plan.visual.reason.contains("no plugin")
        );
        // Per tower: the text tower's bf16 gate failed.
        let dir = model(&[
            ("bf16", "visual", true),
            ("bf16", "textual", false),
            ("int8", "textual", true),
        ]);
        let (plan, _) = run(dir.path(), AMX, Ok(()));
        assert_eq!(plan.visual.precision, Precision::Bf16);
        assert_eq!(
            (plan.textual.precision, plan.textual.provider),
            (Precision::Int8, Provider::Cpu)
        );
        assert!(plan.textual.reason.contains("no passed bf16 gate"));
    }

    #[test]
    fn int8_where_only_int8_passed_or_the_cpu_lacks_amx_bf16() {
        let dir = model(&[("int8", "visual", true), ("int8", "textual", true)]);
        let (plan, asked) = run(dir.path(), AMX, Ok(()));
        assert_eq!(plan.visual.precision, Precision::Int8);
        assert_eq!(
            asked, 0,
            "OpenVINO is not loaded when bf16 cannot be chosen"
        );
        // AVX512-BF16 without AMX (this project's Zen 4 machines): int8 even with bf16 passed.
        let dir = model(&[
            ("bf16", "visual", true),
            ("int8", "visual", true),
            ("int8", "textual", true),
        ]);
        let (plan, asked) = run(dir.path(), ZEN4, Ok(()));
        assert_eq!(
            (plan.visual.precision, plan.visual.provider),
            (Precision::Int8, Provider::Cpu)
        );
        assert!(plan.visual.reason.contains("VNNI") && plan.visual.reason.contains("no AMX-BF16"));
        assert_eq!(asked, 0);
    }

    #[test]
    fn fp32_when_nothing_passed_or_nothing_runs_fast() {
        let dir = model(&[
            ("bf16", "visual", false),
            ("int8", "visual", false),
            ("int8", "textual", false),
        ]);
        let (plan, _) = run(dir.path(), AMX, Ok(()));
        for t in [&plan.visual, &plan.textual] {
            assert_eq!((t.precision, t.provider), (Precision::Fp32, Provider::Cpu));
            assert!(t.reason.contains("no passed int8 gate"), "{}", t.reason);
        }
        // Gates passed, but an AVX2-only CPU runs neither variant fast.
        let dir = model(&[("int8", "visual", true), ("int8", "textual", true)]);
        let (plan, _) = run(dir.path(), AVX2, Ok(()));
        assert_eq!(plan.visual.precision, Precision::Fp32);
        assert!(plan.visual.reason.contains("no VNNI or AMX-INT8"));
        // No report at all.
        let empty = tempfile::tempdir().unwrap();
        let (plan, _) = run(empty.path(), AMX, Ok(()));
        assert_eq!(plan.textual.precision, Precision::Fp32);
    }

    #[test]
    fn fixed_precisions_and_gpu_providers_are_taken_as_given() {
        let dir = model(&[("int8", "visual", true)]);
        let cpu = CpuFeatures::from_flags(AMX);
        let mut ov = || Ok(());
        let plan = resolve(PrecisionArg::Int8, Provider::Cpu, dir.path(), &cpu, &mut ov);
        assert_eq!(plan, Plan::fixed(Precision::Int8, Provider::Cpu));
        let plan = resolve(
            PrecisionArg::Auto,
            Provider::Cuda,
            dir.path(),
            &cpu,
            &mut ov,
        );
        assert_eq!(
            (plan.visual.precision, plan.visual.provider),
            (Precision::Fp32, Provider::Cuda)
        );
        assert_eq!(PrecisionArg::from(Precision::Bf16), PrecisionArg::Bf16);
    }
}
