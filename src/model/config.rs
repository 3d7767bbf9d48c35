//! `config.json` of a model directory: open_clip's model config (`embed_dim`, `vision_cfg`,
//! `text_cfg`) plus the fields our exporter adds (`model_name`, `pretrained`, `weights`,
//! `logit_scale`). Directories exported by others (Immich) carry only open_clip's part; what is
//! missing is derived or reported as unknown, never guessed to be the real model.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// CLIP's initial logit scale (1 / 0.07 ≈ 14.3) is learned; trained checkpoints hit the cap of 100.
pub const DEFAULT_LOGIT_SCALE: f32 = 100.0;

/// What the weights are: decides whether the vectors mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    /// The directory does not say (third-party export).
    Unspecified,
    Pretrained,
    RandomInit,
    Test,
}

impl WeightsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsKind::Unspecified => "unspecified",
            WeightsKind::Pretrained => "pretrained",
            WeightsKind::RandomInit => "random-init",
            WeightsKind::Test => "test",
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    embed_dim: Option<u64>,
    #[serde(default)]
    vision_cfg: Option<RawVision>,
    #[serde(default)]
    text_cfg: Option<RawText>,
    model_name: Option<String>,
    pretrained: Option<String>,
    weights: Option<String>,
    logit_scale: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct RawVision {
    image_size: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct RawText {
    context_length: Option<u64>,
}

/// The parts of `config.json` the server uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_name: String,
    pub pretrained: Option<String>,
    pub weights: WeightsKind,
    pub embed_dim: usize,
    /// From `vision_cfg.image_size` when present (the preprocess config is authoritative for pixels).
    pub image_size: Option<u32>,
    pub context_length: usize,
    pub logit_scale: f32,
    /// True when `logit_scale` was absent and [`DEFAULT_LOGIT_SCALE`] is used.
    pub logit_scale_defaulted: bool,
}

impl ModelConfig {
    /// Reads `<dir>/config.json`. `dir_name` names the model when the file does not.
    pub fn from_file(path: &Path, dir_name: &str) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(&text, dir_name).map_err(|reason| ModelError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(text: &str, dir_name: &str) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let embed_dim = raw.embed_dim.ok_or("missing `embed_dim`")?;
        if embed_dim == 0 || embed_dim > 65_536 {
            return Err(format!("`embed_dim` {embed_dim} is out of range"));
        }
        let context_length = raw
            .text_cfg
            .as_ref()
            .and_then(|t| t.context_length)
            .unwrap_or(77);
        if !(2..=4096).contains(&context_length) {
            return Err(format!(
                "`text_cfg.context_length` {context_length} is out of range"
            ));
        }
        let image_size = match raw.vision_cfg.as_ref().and_then(|v| v.image_size.as_ref()) {
            None => None,
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
            Some(serde_json::Value::Array(a)) => a
                .first()
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok()),
            Some(other) => return Err(format!("`vision_cfg.image_size` {other} is not a size")),
        };
        let weights = match raw.weights.as_deref() {
            None => WeightsKind::Unspecified,
            Some("pretrained") => WeightsKind::Pretrained,
            Some("random-init") => WeightsKind::RandomInit,
            Some("test") => WeightsKind::Test,
            Some(other) => {
                return Err(format!(
                    "`weights` is {other:?}; expected \"pretrained\", \"random-init\" or \"test\""
                ));
            }
        };
        let (logit_scale, logit_scale_defaulted) = match raw.logit_scale {
            Some(s) if s.is_finite() && s > 0.0 => (s as f32, false),
            Some(s) => return Err(format!("`logit_scale` {s} must be a positive number")),
            None => (DEFAULT_LOGIT_SCALE, true),
        };
        let model_name = raw
            .model_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| dir_name.split("__").next().unwrap_or(dir_name).to_string());
        Ok(ModelConfig {
            model_name,
            pretrained: raw.pretrained.filter(|p| !p.is_empty()),
            weights,
            embed_dim: embed_dim as usize,
            image_size,
            context_length: context_length as usize,
            logit_scale,
            logit_scale_defaulted,
        })
    }

    /// `ViT-B-32/datacomp_xl_s13b_b90k`, or the name alone for random or test weights.
    /// The id clients name the model by (collections, `/v1/models`): `model_name:pretrained`,
    /// or `model_name` when there is no pretrained tag.
    pub fn model_id(&self) -> String {
        match &self.pretrained {
            Some(tag) => format!("{}:{tag}", self.model_name),
            None => self.model_name.clone(),
        }
    }

    pub fn display_name(&self) -> String {
        match (&self.pretrained, self.weights) {
            (Some(tag), WeightsKind::Pretrained | WeightsKind::Unspecified) => {
                format!("{}/{tag}", self.model_name)
            }
            _ => format!("{} ({})", self.model_name, self.weights.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_exporter_config() {
        let c = ModelConfig::parse(
            r#"{"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12}, "text_cfg": {"context_length": 77},
                "model_name": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k", "weights": "pretrained", "logit_scale": 100.0}"#,
            "x",
        )
        .unwrap();
        assert_eq!(c.embed_dim, 512);
        assert_eq!(c.context_length, 77);
        assert_eq!(c.image_size, Some(224));
        assert_eq!(c.weights, WeightsKind::Pretrained);
        assert!(!c.logit_scale_defaulted);
        assert_eq!(c.display_name(), "ViT-B-32/datacomp_xl_s13b_b90k");
    }

    #[test]
    fn immich_config_without_our_fields_is_unspecified_with_default_scale() {
        let c = ModelConfig::parse(
            r#"{"embed_dim": 512, "vision_cfg": {"image_size": 224}, "text_cfg": {"context_length": 77}}"#,
            "ViT-B-32__openai",
        )
        .unwrap();
        assert_eq!(c.model_name, "ViT-B-32");
        assert_eq!(c.weights, WeightsKind::Unspecified);
        assert!(c.logit_scale_defaulted);
        assert_eq!(c.logit_scale, DEFAULT_LOGIT_SCALE);
    }

    #[test]
    fn random_weights_are_named_as_such() {
        let c = ModelConfig::parse(
            r#"{"embed_dim": 512, "model_name": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k", "weights": "random-init"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(c.display_name(), "ViT-B-32 (random-init)");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        assert!(ModelConfig::parse("{", "x").unwrap_err().contains("JSON"));
        assert!(
            ModelConfig::parse("{}", "x")
                .unwrap_err()
                .contains("embed_dim")
        );
        assert!(
            ModelConfig::parse(r#"{"embed_dim": 8, "weights": "real"}"#, "x")
                .unwrap_err()
                .contains("weights")
        );
        assert!(
            ModelConfig::parse(r#"{"embed_dim": 8, "logit_scale": -1}"#, "x")
                .unwrap_err()
                .contains("logit_scale")
        );
    }
}
