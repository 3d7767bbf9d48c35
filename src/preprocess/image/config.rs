//! Preprocessing configuration: an Immich-style `preprocess_cfg.json` (open_clip's `PreprocessCfg`).

use std::path::{Path, PathBuf};

/// OpenAI CLIP normalization mean (open_clip `OPENAI_DATASET_MEAN`).
#[allow(clippy::excessive_precision)] // open_clip's digits, rounded to f32 like torch does
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP normalization std (open_clip `OPENAI_DATASET_STD`).
#[allow(clippy::excessive_precision)] // open_clip's digits, rounded to f32 like torch does
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Resampling filter used for the resize step (torchvision `InterpolationMode` / PIL filter).
///
/// open_clip itself only produces `Bicubic` (its default, also used for "random") and `Bilinear`.
/// Whatever is chosen, PIL resizes images of mode "P" and "1" with `Nearest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

/// How the image is fitted to `size` (open_clip `resize_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Resize the shortest side to the target, then center crop (open_clip's default).
    Shortest,
    /// Resize the longest side to the target, then center pad with `fill_color` (and crop).
    Longest,
    /// Resize to exactly the target size, ignoring the aspect ratio.
    Squash,
}

/// Image preprocessing parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Output size as (height, width), like open_clip's `size` tuple.
    pub size: (u32, u32),
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub interpolation: Interpolation,
    pub resize_mode: ResizeMode,
    /// Padding value for `ResizeMode::Longest`.
    pub fill_color: u8,
}

impl Default for PreprocessConfig {
    /// ViT-B-32 / datacomp_xl_s13b_b90k: 224x224, OpenAI mean/std, bicubic, shortest, fill 0.
    fn default() -> Self {
        PreprocessConfig {
            size: (224, 224),
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            interpolation: Interpolation::Bicubic,
            resize_mode: ResizeMode::Shortest,
            fill_color: 0,
        }
    }
}

/// Errors reading a `preprocess_cfg.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read preprocess config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("preprocess config {path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("preprocess config {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl PreprocessConfig {
    /// Reads an Immich/open_clip style `preprocess_cfg.json`, e.g.
    /// `{"size": [224, 224], "mode": "RGB", "mean": [...], "std": [...],
    ///   "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}`.
    ///
    /// Missing keys take open_clip's `PreprocessCfg` defaults (224, OpenAI mean/std, bicubic,
    /// shortest, 0). Unknown values are errors naming the file and the key.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the JSON text of a `preprocess_cfg.json`; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ConfigError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("<root>", "expected a JSON object".into()))?;
        let mut cfg = PreprocessConfig::default();

        if let Some(v) = obj.get("size") {
            cfg.size = parse_size(v).map_err(|m| invalid("size", m))?;
        }
        if let Some(v) = obj.get("mode") {
            match v.as_str() {
                Some("RGB") => {}
                _ => {
                    return Err(invalid(
                        "mode",
                        format!("only \"RGB\" is supported, got {v}"),
                    ));
                }
            }
        }
        if let Some(v) = obj.get("mean") {
            cfg.mean = parse_triple(v, false).map_err(|m| invalid("mean", m))?;
        }
        if let Some(v) = obj.get("std") {
            cfg.std = parse_triple(v, true).map_err(|m| invalid("std", m))?;
        }
        if let Some(v) = obj.get("interpolation") {
            cfg.interpolation = match v.as_str() {
                // open_clip maps "random" (a training option) to bicubic at inference.
                Some("bicubic") | Some("random") => Interpolation::Bicubic,
                Some("bilinear") => Interpolation::Bilinear,
                Some("nearest") => Interpolation::Nearest,
                Some("box") => Interpolation::Box,
                Some("hamming") => Interpolation::Hamming,
                Some("lanczos") => Interpolation::Lanczos,
                _ => {
                    return Err(invalid(
                        "interpolation",
                        format!(
                            "unsupported value {v}; expected one of \"bicubic\", \"bilinear\", \
                             \"nearest\", \"box\", \"hamming\", \"lanczos\""
                        ),
                    ));
                }
            };
        }
        if let Some(v) = obj.get("resize_mode") {
            cfg.resize_mode = match v.as_str() {
                Some("shortest") => ResizeMode::Shortest,
                Some("longest") => ResizeMode::Longest,
                Some("squash") => ResizeMode::Squash,
                _ => {
                    return Err(invalid(
                        "resize_mode",
                        format!(
                            "unsupported value {v}; expected \"shortest\", \"longest\" or \"squash\""
                        ),
                    ));
                }
            };
        }
        if let Some(v) = obj.get("fill_color") {
            cfg.fill_color = parse_fill(v).map_err(|m| invalid("fill_color", m))?;
        }
        Ok(cfg)
    }

    /// Number of f32 values `normalize_into_nchw` writes: 3 * height * width.
    pub fn tensor_len(&self) -> usize {
        3 * self.size.0 as usize * self.size.1 as usize
    }
}

fn parse_dim(v: &serde_json::Value) -> Result<u32, String> {
    match v.as_u64() {
        Some(n) if (1..=8192).contains(&n) => Ok(n as u32),
        _ => Err(format!("expected an integer in 1..=8192, got {v}")),
    }
}

fn parse_size(v: &serde_json::Value) -> Result<(u32, u32), String> {
    if let Some(arr) = v.as_array() {
        match arr.as_slice() {
            [n] => {
                let n = parse_dim(n)?;
                Ok((n, n))
            }
            [h, w] => Ok((parse_dim(h)?, parse_dim(w)?)),
            _ => Err(format!("expected an integer or [height, width], got {v}")),
        }
    } else {
        let n = parse_dim(v)?;
        Ok((n, n))
    }
}

fn parse_triple(v: &serde_json::Value, positive: bool) -> Result<[f32; 3], String> {
    let num = |x: &serde_json::Value| -> Result<f32, String> {
        let f = x
            .as_f64()
            .ok_or_else(|| format!("expected a number, got {x}"))?;
        if !f.is_finite() || (positive && f <= 0.0) {
            return Err(format!("invalid value {x}"));
        }
        Ok(f as f32)
    };
    if let Some(arr) = v.as_array() {
        match arr.as_slice() {
            [a] => {
                let a = num(a)?;
                Ok([a; 3])
            }
            [a, b, c] => Ok([num(a)?, num(b)?, num(c)?]),
            _ => Err(format!("expected a number or a list of 3 numbers, got {v}")),
        }
    } else {
        let a = num(v)?;
        Ok([a; 3])
    }
}

fn parse_fill(v: &serde_json::Value) -> Result<u8, String> {
    let one = |x: &serde_json::Value| -> Result<u8, String> {
        match x.as_u64() {
            Some(n) if n <= 255 => Ok(n as u8),
            _ => Err(format!("expected an integer in 0..=255, got {x}")),
        }
    };
    if let Some(arr) = v.as_array() {
        let vals = arr.iter().map(one).collect::<Result<Vec<u8>, String>>()?;
        match vals.as_slice() {
            [] => Err("expected a non-empty list".into()),
            [first, rest @ ..] if rest.iter().all(|x| x == first) => Ok(*first),
            _ => Err(format!(
                "per-channel fill colors are not supported (all values must be equal), got {v}"
            )),
        }
    } else {
        one(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PreprocessConfig, ConfigError> {
        PreprocessConfig::from_json_str(s, Path::new("model/preprocess_cfg.json"))
    }

    #[test]
    fn immich_style_config() {
        let cfg = parse(
            r#"{"size": [224, 224], "mode": "RGB",
                "mean": [0.48145466, 0.4578275, 0.40821073],
                "std": [0.26862954, 0.26130258, 0.27577711],
                "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}"#,
        )
        .unwrap();
        assert_eq!(cfg, PreprocessConfig::default());
    }

    #[test]
    fn int_size_and_lists() {
        let cfg = parse(
            r#"{"size": 256, "interpolation": "bilinear", "resize_mode": "longest",
                "fill_color": [7, 7, 7], "mean": 0.5, "std": [0.5]}"#,
        )
        .unwrap();
        assert_eq!(cfg.size, (256, 256));
        assert_eq!(cfg.interpolation, Interpolation::Bilinear);
        assert_eq!(cfg.resize_mode, ResizeMode::Longest);
        assert_eq!(cfg.fill_color, 7);
        assert_eq!(cfg.mean, [0.5; 3]);
        assert_eq!(cfg.std, [0.5; 3]);
        let cfg = parse(r#"{"size": [240, 320], "resize_mode": "squash"}"#).unwrap();
        assert_eq!(cfg.size, (240, 320));
        assert_eq!(cfg.resize_mode, ResizeMode::Squash);
    }

    #[test]
    fn errors_name_file_and_key() {
        for (json, key) in [
            (r#"{"interpolation": "bicubicc"}"#, "interpolation"),
            (r#"{"resize_mode": "crop"}"#, "resize_mode"),
            (r#"{"size": [1, 2, 3]}"#, "size"),
            (r#"{"size": 0}"#, "size"),
            (r#"{"mean": [1, 2]}"#, "mean"),
            (r#"{"std": [1, 0, 1]}"#, "std"),
            (r#"{"fill_color": [1, 2, 3]}"#, "fill_color"),
            (r#"{"fill_color": 300}"#, "fill_color"),
            (r#"{"mode": "L"}"#, "mode"),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains("model/preprocess_cfg.json"), "{err}");
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
        let err = parse("{").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = PreprocessConfig::from_json_file(Path::new("/nonexistent/preprocess_cfg.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/preprocess_cfg.json"), "{err}");
    }
}
