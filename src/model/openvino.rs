//! OpenVINO as an ONNX Runtime plugin execution provider (`--provider openvino`), on the CPU.
//!
//! The plugin is PyPI's `onnxruntime-ep-openvino` (pinned in scripts/setup.sh, which copies its
//! plugin library, the OpenVINO core, ONNX frontend, CPU plugin and TBB into
//! `.cache/onnxruntime-ep-openvino/<version>/lib`). It is registered with the process's ONNX
//! Runtime environment at run time (`RegisterExecutionProviderLibrary`), and a session takes it for
//! the CPU `OrtEpDevice` it publishes (`SessionOptionsAppendExecutionProvider_V2`); the pinned `ort`
//! wraps both in safe Rust (`Environment::register_ep_library`, `SessionBuilder::with_devices`), so
//! no raw C call is needed here. The plugin EP takes its OpenVINO settings as one JSON
//! `load_config` option (`{"CPU": {"INFERENCE_PRECISION_HINT": ..., ...}}`); the old provider options
//! (`precision`, `num_of_threads`) are ignored by it.
//!
//! Nodes OpenVINO cannot take are refused, not handed silently to ONNX Runtime's CPU provider
//! (`session.disable_cpu_ep_fallback`): the session is either OpenVINO's or an error.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use ort::{
    device::Device, environment::Environment, memory::DeviceType, session::builder::SessionBuilder,
};

use super::{ModelError, Precision, Provider, cpu::CpuFeatures};

/// The execution provider name the plugin's devices carry.
pub const EP_NAME: &str = "OpenVINOExecutionProvider";
/// The `onnxruntime-ep-openvino` release scripts/setup.sh installs.
pub const PLUGIN_VERSION: &str = "1.8.1";
/// Where scripts/setup.sh puts the plugin, relative to the repository root.
pub const DEFAULT_PLUGIN: &str =
    ".cache/onnxruntime-ep-openvino/1.8.1/lib/libonnxruntime_providers_openvino_plugin.so";

/// The plugin library registered in this process (ONNX Runtime takes one registration per name).
static REGISTERED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// OpenVINO's inference precision for a served precision: the fp32 graph at `f32` or `bf16`.
pub fn inference_precision(precision: Precision) -> Result<&'static str, String> {
    match precision {
        Precision::Fp32 => Ok("f32"),
        Precision::Bf16 => Ok("bf16"),
        other => Err(format!(
            "--provider openvino runs the fp32 graph at --precision fp32 or bf16, not {} \
             (the {} graph is for --provider {})",
            other.as_str(),
            other.as_str(),
            if other == Precision::Fp16 {
                "cuda or tensorrt"
            } else {
                "cpu"
            }
        )),
    }
}

/// Refuses bf16 on a CPU without bf16 arithmetic (OpenVINO would emulate it, slower than f32).
pub fn check_cpu(precision: Precision, cpu: &CpuFeatures) -> Result<(), String> {
    if precision == Precision::Bf16 && !cpu.has_bf16() {
        return Err(format!(
            "--precision bf16 needs a CPU with AVX512-BF16 or AMX-BF16 (this one has: {}); use --precision fp32 or int8",
            cpu.describe()
        ));
    }
    Ok(())
}

/// The `load_config` JSON for the CPU device.
pub fn load_config(precision: Precision, threads: usize) -> Result<String, String> {
    let config = serde_json::json!({
        "CPU": {
            "INFERENCE_PRECISION_HINT": inference_precision(precision)?,
            "INFERENCE_NUM_THREADS": threads.max(1).to_string(),
            // One inference at a time per tower (the batcher forms the batches): all threads on it.
            "PERFORMANCE_HINT": "LATENCY",
        }
    });
    Ok(config.to_string())
}

fn missing(plugin: &Path, what: &str) -> ModelError {
    ModelError::Provider(format!(
        "--provider openvino: {what} {}: run scripts/setup.sh (installs PyPI onnxruntime-ep-openvino {PLUGIN_VERSION} \
         into .cache/onnxruntime-ep-openvino/) or point --openvino-plugin / CLIP_SERVE_OPENVINO_PLUGIN at \
         libonnxruntime_providers_openvino_plugin.so",
        plugin.display()
    ))
}

/// Registers the plugin with `env` (once per process; a second, different path is refused).
/// A relative path (the default, `.cache/...` under the repository root where scripts/serve.sh
/// runs) is taken from the working directory: ONNX Runtime itself would look for it beside its own
/// library. Paths are compared, and loaded, canonical.
pub fn register(env: &Environment, plugin: &Path) -> Result<(), ModelError> {
    if !plugin.is_file() {
        return Err(missing(plugin, "no OpenVINO plugin library at"));
    }
    let canonical = std::fs::canonicalize(plugin)
        .map_err(|e| missing(plugin, &format!("cannot resolve ({e}) the plugin path")))?;
    let plugin = canonical.as_path();
    let mut registered = REGISTERED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(done) = registered.as_ref() {
        return if done == plugin {
            Ok(())
        } else {
            Err(ModelError::Provider(format!(
                "--provider openvino: this process already registered the plugin {}; cannot also load {}",
                done.display(),
                plugin.display()
            )))
        };
    }
    env.register_ep_library(EP_NAME, plugin).map_err(|e| {
        ModelError::Provider(format!(
            "--provider openvino: ONNX Runtime could not load the plugin {} ({e}); the OpenVINO and TBB \
             libraries must sit beside it (scripts/setup.sh installs them together)",
            plugin.display()
        ))
    })?;
    *registered = Some(plugin.to_path_buf());
    Ok(())
}

/// The start-up checks of a provider and precision, before anything is bound: bf16 only through
/// OpenVINO and only on bf16 hardware, OpenVINO only for the fp32 graph, and the plugin registered
/// (a missing plugin is an error naming the fix, never a fall back to the CPU provider).
pub fn prepare(
    env: &Environment,
    provider: Provider,
    precision: Precision,
    plugin: &Path,
    cpu: &CpuFeatures,
) -> Result<(), ModelError> {
    if provider != Provider::Openvino {
        if precision == Precision::Bf16 {
            return Err(ModelError::Provider(format!(
                "--precision bf16 runs the fp32 graph through OpenVINO: add --provider openvino (not {})",
                provider.as_str()
            )));
        }
        return Ok(());
    }
    inference_precision(precision).map_err(ModelError::Provider)?;
    check_cpu(precision, cpu).map_err(ModelError::Provider)?;
    register(env, plugin)?;
    cpu_device(env, plugin).map(drop)
}

/// The plugin's CPU device. The plugin offers devices for Intel hardware only (its factory skips
/// every `OrtHardwareDevice` whose vendor id is not 0x8086), whatever OpenVINO itself could run:
/// elsewhere this is an error naming the CPU's vendor.
fn cpu_device<'e>(env: &'e Environment, plugin: &Path) -> Result<Device<'e>, ModelError> {
    let mut cpu = env
        .devices()
        .filter(|d| d.ep().is_ok_and(|ep| ep == EP_NAME))
        .filter(|d| d.hardware_device().ty() == DeviceType::CPU);
    if let Some(device) = cpu.next() {
        return Ok(device);
    }
    let vendor = env
        .devices()
        .filter(|d| d.hardware_device().ty() == DeviceType::CPU)
        .find_map(|d| d.hardware_device().vendor().ok().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    Err(ModelError::Provider(format!(
        "--provider openvino: the plugin {} offers no OpenVINO CPU device on this machine (CPU vendor: {vendor}): \
         onnxruntime-ep-openvino {PLUGIN_VERSION} publishes devices for Intel CPUs only; use --provider cpu here",
        plugin.display(),
    )))
}

/// Appends the plugin's CPU device to `builder`, with OpenVINO at `precision` on `threads` threads.
pub fn append(
    builder: SessionBuilder,
    env: &Environment,
    plugin: &Path,
    precision: Precision,
    threads: usize,
) -> Result<SessionBuilder, ModelError> {
    register(env, plugin)?;
    let config = load_config(precision, threads).map_err(ModelError::Provider)?;
    let cpu = [cpu_device(env, plugin)?];
    let options = [(format!("{EP_NAME}.load_config"), config)];
    let failed = |e: &dyn std::fmt::Display| {
        ModelError::Provider(format!(
            "--provider openvino: the OpenVINO CPU device could not be added to the session: {e}"
        ))
    };
    let builder = builder
        .with_devices(cpu, Some(&options))
        .map_err(|e| failed(&e))?;
    builder
        .with_config_entry("session.disable_cpu_ep_fallback", "1")
        .map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_config_carries_precision_threads_and_latency_hint() {
        let c: serde_json::Value =
            serde_json::from_str(&load_config(Precision::Bf16, 2).unwrap()).unwrap();
        assert_eq!(c["CPU"]["INFERENCE_PRECISION_HINT"], "bf16");
        assert_eq!(c["CPU"]["INFERENCE_NUM_THREADS"], "2");
        assert_eq!(c["CPU"]["PERFORMANCE_HINT"], "LATENCY");
        let f: serde_json::Value =
            serde_json::from_str(&load_config(Precision::Fp32, 0).unwrap()).unwrap();
        assert_eq!(f["CPU"]["INFERENCE_PRECISION_HINT"], "f32");
        assert_eq!(f["CPU"]["INFERENCE_NUM_THREADS"], "1");
        let e = load_config(Precision::Int8, 2).unwrap_err();
        assert!(
            e.contains("fp32 or bf16") && e.contains("--provider cpu"),
            "{e}"
        );
    }

    #[test]
    fn bf16_is_refused_without_bf16_hardware() {
        let avx512 = CpuFeatures::from_flags("avx2 avx512f avx512_vnni");
        let e = check_cpu(Precision::Bf16, &avx512).unwrap_err();
        assert!(
            e.contains("AVX512-BF16 or AMX-BF16") && e.contains("avx512_vnni"),
            "{e}"
        );
        assert!(check_cpu(Precision::Fp32, &avx512).is_ok());
        assert!(check_cpu(Precision::Bf16, &CpuFeatures::from_flags("avx512_bf16")).is_ok());
        assert!(check_cpu(Precision::Bf16, &CpuFeatures::from_flags("amx_bf16")).is_ok());
    }

    #[test]
    fn a_missing_plugin_names_the_fix() {
        let e = missing(Path::new("/nope/libx.so"), "no OpenVINO plugin library at").to_string();
        assert!(
            e.contains("/nope/libx.so")
                && e.contains("scripts/setup.sh")
                && e.contains("--openvino-plugin"),
            "{e}"
        );
    }
}
