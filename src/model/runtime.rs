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
use crate::config::Provider;

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
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase\0").ok()?;
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
}

/// The execution providers to register on every session. Registration failures are errors
/// (`error_on_failure`): asking for a GPU and silently getting the CPU is the worst outcome.
pub fn execution_providers(
    opts: &ProviderOptions,
) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    match opts.provider {
        Provider::Cpu => Ok(Vec::new()),
        Provider::Cuda => cuda(opts),
        Provider::Tensorrt => tensorrt(opts),
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
fn tensorrt(opts: &ProviderOptions) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    Ok(vec![
        ort::ep::TensorRT::default()
            .with_device_id(opts.device_id)
            .build()
            .error_on_failure(),
        // TensorRT hands the operators it cannot take to CUDA, which must be present as well.
        #[cfg(feature = "cuda")]
        ort::ep::CUDA::default()
            .with_device_id(opts.device_id)
            .build()
            .error_on_failure(),
    ])
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt(_: &ProviderOptions) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
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
        let Err(err) = execution_providers(&ProviderOptions {
            provider: Provider::Cuda,
            device_id: 0,
        }) else {
            panic!("cuda must be refused without the feature");
        };
        assert!(err.to_string().contains("`cuda` feature"), "{err}");
    }

    #[test]
    fn cpu_needs_no_provider() {
        let eps = execution_providers(&ProviderOptions {
            provider: Provider::Cpu,
            device_id: 0,
        });
        assert!(matches!(eps, Ok(v) if v.is_empty()));
    }
}
