//! The process-wide ONNX Runtime environment and execution providers.
//!
//! ONNX Runtime is loaded at run time from the library in the `onnxruntime` wheel (`load-dynamic`);
//! ort allows one environment per process, so every server started in this process shares it.

use std::{
    path::Path,
    sync::{Mutex, OnceLock},
};

use ort::{environment::Environment, ep::ExecutionProviderDispatch};

use super::ModelError;

/// Execution provider that runs the ONNX sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static VERSION: OnceLock<String> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime from `dylib` (once per process) and returns the shared environment.
pub fn environment(dylib: &Path) -> Result<&'static Environment, ModelError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    if !dylib.is_file() {
        return Err(ModelError::OrtLibraryMissing {
            path: dylib.to_path_buf(),
        });
    }
    let builder = ort::init_from(dylib).map_err(|e| ModelError::OrtLoad(e.to_string()))?;
    let env = builder
        .with_name("clip-serve")
        .with_telemetry(false)
        .build()
        .map_err(|e| ModelError::OrtLoad(e.to_string()))?;
    let _ = VERSION.set(library_version(dylib).unwrap_or_else(|| "unknown".to_string()));
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Asks the library itself (`OrtGetApiBase()->GetVersionString()`); its build info string does not
/// carry the version.
fn library_version(dylib: &Path) -> Option<String> {
    // SAFETY: the same library ort just loaded successfully; dlopen returns the already loaded handle
    // and OrtGetApiBase/GetVersionString are plain C functions without preconditions.
    unsafe {
        let lib = libloading::Library::new(dylib).ok()?;
        let get_base: libloading::Symbol<
            '_,
            unsafe extern "C" fn() -> *const ort::sys::OrtApiBase,
        > = lib.get(b"OrtGetApiBase\0").ok()?;
        let base = get_base();
        if base.is_null() {
            return None;
        }
        let version = ((*base).GetVersionString)();
        if version.is_null() {
            return None;
        }
        let version = std::ffi::CStr::from_ptr(version).to_str().ok()?.to_string();
        // Keep the library loaded for the life of the process, as ort does.
        std::mem::forget(lib);
        Some(version)
    }
}

/// The ONNX Runtime version of the loaded library, e.g. `1.32.0`.
pub fn onnxruntime_version() -> String {
    VERSION
        .get()
        .cloned()
        .unwrap_or_else(|| "not loaded".to_string())
}

/// GPU provider options from the command line.
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    pub provider: Provider,
    pub device_id: i32,
    /// TensorRT: build fp16 engines.
    pub trt_fp16: bool,
    /// TensorRT: where built engines (and the timing cache) are kept, so they are built once.
    pub trt_engine_cache_dir: Option<std::path::PathBuf>,
    /// TensorRT: the builder's workspace limit.
    pub trt_workspace_bytes: Option<u64>,
    /// The largest batch the batcher forms: the TensorRT optimization profile's max (and opt) batch.
    pub max_batch_size: usize,
}

impl ProviderOptions {
    pub fn cpu() -> Self {
        ProviderOptions {
            provider: Provider::Cpu,
            device_id: 0,
            trt_fp16: false,
            trt_engine_cache_dir: None,
            trt_workspace_bytes: None,
            max_batch_size: 1,
        }
    }
}

/// A TensorRT optimization profile for one input, in ONNX Runtime's `name:d0xd1x...` syntax: batch
/// 1 to `max_batch_size` (optimized for the largest), the other dimensions fixed, except a text
/// tower's dynamic sequence axis: 1 to the context length, optimized for 32 ids (captions; prompts
/// are shorter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtProfile {
    pub min: String,
    pub opt: String,
    pub max: String,
}

impl TrtProfile {
    /// `None` unless the batch axis is dynamic and every other axis is known, or is a text
    /// tower's sequence axis (`[N, L]` with `context_length` given).
    pub fn for_input(
        name: &str,
        dims: &[i64],
        max_batch_size: usize,
        context_length: Option<usize>,
    ) -> Option<Self> {
        let (&batch, rest) = dims.split_first()?;
        if batch >= 0 {
            return None;
        }
        // The sequence axis of `[N, L]`: (min, opt, max) lengths.
        let lengths = match (rest, context_length) {
            ([l], Some(context)) if *l < 0 && context > 0 => Some((1, 32.min(context), context)),
            _ if rest.iter().any(|&d| d <= 0) => return None,
            _ => None,
        };
        let shape = |b: usize, len: Option<usize>| {
            let mut parts = vec![b.to_string()];
            match len {
                Some(len) => parts.push(len.to_string()),
                None => parts.extend(rest.iter().map(i64::to_string)),
            }
            format!("{name}:{}", parts.join("x"))
        };
        // At least 2: the warm-up runs a batch of two to catch graphs that only work at batch 1.
        let max = max_batch_size.max(2);
        Some(TrtProfile {
            min: shape(1, lengths.map(|l| l.0)),
            opt: shape(max, lengths.map(|l| l.1)),
            max: shape(max, lengths.map(|l| l.2)),
        })
    }
}

/// The execution providers to register on a session. Registration failures are errors
/// (`error_on_failure`): asking for a GPU and silently getting the CPU is the worst outcome.
pub fn execution_providers(
    opts: &ProviderOptions,
    profile: Option<&TrtProfile>,
) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    match opts.provider {
        Provider::Cpu => Ok(Vec::new()),
        Provider::Cuda => cuda(opts),
        Provider::Tensorrt => tensorrt(opts, profile),
    }
}

#[cfg(feature = "cuda")]
fn cuda(opts: &ProviderOptions) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    Ok(vec![
        ort::ep::CUDA::default()
            .with_device_id(opts.device_id)
            .build()
            .error_on_failure(),
    ])
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &ProviderOptions) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    Err(ModelError::Provider(
        "--provider cuda: this binary was built without the `cuda` feature (cargo build --release --features cuda)".into(),
    ))
}

#[cfg(feature = "tensorrt")]
fn tensorrt(
    opts: &ProviderOptions,
    profile: Option<&TrtProfile>,
) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    let mut trt = ort::ep::TensorRT::default()
        .with_device_id(opts.device_id)
        .with_fp16(opts.trt_fp16);
    if let Some(root) = &opts.trt_engine_cache_dir {
        // One subdirectory per profile and precision, so engines built for other settings are
        // never picked up.
        let dir = root.join(format!(
            "b{}-{}",
            opts.max_batch_size.max(2),
            if opts.trt_fp16 { "fp16" } else { "fp32" }
        ));
        std::fs::create_dir_all(&dir).map_err(|e| {
            ModelError::Provider(format!(
                "--trt-engine-cache-dir {}: cannot create it: {e}",
                dir.display()
            ))
        })?;
        let dir = dir.display().to_string();
        trt = trt
            .with_engine_cache(true)
            .with_engine_cache_path(&dir)
            .with_timing_cache(true)
            .with_timing_cache_path(&dir);
    }
    if let Some(bytes) = opts.trt_workspace_bytes {
        trt = trt.with_max_workspace_size(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    if let Some(p) = profile {
        trt = trt
            .with_profile_min_shapes(&p.min)
            .with_profile_opt_shapes(&p.opt)
            .with_profile_max_shapes(&p.max);
    }
    Ok(vec![
        trt.build().error_on_failure(),
        // TensorRT hands the operators it cannot take to CUDA, which must be present as well.
        #[cfg(feature = "cuda")]
        ort::ep::CUDA::default()
            .with_device_id(opts.device_id)
            .build()
            .error_on_failure(),
    ])
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt(
    _: &ProviderOptions,
    _: Option<&TrtProfile>,
) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    Err(ModelError::Provider(
        "--provider tensorrt: this binary was built without the `tensorrt` feature (cargo build --release --features tensorrt,cuda)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_one_line_saying_how_to_get_it() {
        // Only meaningful before any environment exists in this test process.
        if ENVIRONMENT.get().is_some() {
            return;
        }
        let err = environment(Path::new("/nonexistent/libonnxruntime.so"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
        assert!(err.contains("scripts/setup.sh"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpu_provider_without_feature_is_an_error() {
        let Err(err) = execution_providers(
            &ProviderOptions {
                provider: Provider::Cuda,
                ..ProviderOptions::cpu()
            },
            None,
        ) else {
            panic!("cuda must be refused without the feature");
        };
        assert!(err.to_string().contains("`cuda` feature"), "{err}");
    }

    #[test]
    fn cpu_needs_no_provider() {
        let eps = execution_providers(&ProviderOptions::cpu(), None);
        assert!(matches!(eps, Ok(v) if v.is_empty()));
    }

    #[cfg(not(feature = "tensorrt"))]
    #[test]
    fn tensorrt_without_feature_is_an_error() {
        let Err(err) = execution_providers(
            &ProviderOptions {
                provider: Provider::Tensorrt,
                ..ProviderOptions::cpu()
            },
            None,
        ) else {
            panic!("tensorrt must be refused without the feature");
        };
        assert!(err.to_string().contains("`tensorrt` feature"), "{err}");
    }

    #[test]
    fn tensorrt_profiles_span_batch_one_to_the_batcher_maximum() {
        let p = TrtProfile::for_input("image", &[-1, 3, 224, 224], 32, None).unwrap();
        assert_eq!(p.min, "image:1x3x224x224");
        assert_eq!(p.opt, "image:32x3x224x224");
        assert_eq!(p.max, "image:32x3x224x224");
        let t = TrtProfile::for_input("text", &[-1, 77], 128, Some(77)).unwrap();
        assert_eq!(
            (t.min.as_str(), t.max.as_str()),
            ("text:1x77", "text:128x77")
        );
        assert_eq!(
            TrtProfile::for_input("x", &[1, 77], 8, Some(77)),
            None,
            "static batch"
        );
        let one = TrtProfile::for_input("text", &[-1, 77], 1, Some(77)).unwrap();
        assert_eq!(one.max, "text:2x77", "room for the warm-up's batch of two");
        assert_eq!(
            TrtProfile::for_input("x", &[-1, -1], 8, None),
            None,
            "unknown length"
        );
        assert_eq!(TrtProfile::for_input("x", &[], 8, None), None);
        // A dynamic sequence axis: both axes in the profile.
        let v = TrtProfile::for_input("text", &[-1, -1], 64, Some(77)).unwrap();
        assert_eq!(
            (v.min.as_str(), v.opt.as_str(), v.max.as_str()),
            ("text:1x1", "text:64x32", "text:64x77")
        );
    }
}
