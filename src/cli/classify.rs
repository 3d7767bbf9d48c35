//! Zero-shot classification: labels, templates and prompts per request and per label set, and the
//! text-embedding cache.

use clap::Args;

use super::to_usize;
use crate::classify::{ClassifyConfig, PromptLimits};

/// Classify's bounds.
#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    /// Most labels in a Classify request or a label set.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_LABELS",
        default_value_t = 1000,
        display_order = 470
    )]
    pub max_labels: u32,

    /// Most prompt templates in a Classify request or a label set.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_TEMPLATES",
        default_value_t = 100,
        display_order = 480
    )]
    pub max_templates: u32,

    /// Most label x template texts one Classify request with inline labels may embed (larger
    /// ensembles belong in a stored label set, computed once).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_INLINE_PROMPTS",
        default_value_t = 2048,
        display_order = 490
    )]
    pub max_inline_prompts: u32,

    /// Most label sets clients may create (built-in ones do not count).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_LABEL_SETS",
        default_value_t = 100,
        display_order = 500
    )]
    pub max_label_sets: u32,

    /// Most prompts (labels x templates) of all client-created label sets together: each costs a
    /// text-tower pass when its classifier is computed (built-in sets do not count).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_LABEL_SET_PROMPTS",
        default_value_t = 100_000,
        display_order = 510
    )]
    pub max_label_set_prompts: u32,

    /// Size of the text-embedding cache that spares repeated inline labels, in bytes (0: off).
    #[arg(long, env = "CLIP_SERVE_TEXT_CACHE_BYTES", default_value_t = 64 * 1024 * 1024, display_order = 740)]
    pub text_cache_bytes: u64,
}

impl ClassifyArgs {
    /// Classify's configuration (a label's text shares `--max-text-bytes`).
    pub(super) fn config(&self, max_text_bytes: usize) -> Result<ClassifyConfig, String> {
        Ok(ClassifyConfig {
            prompts: PromptLimits {
                max_labels: to_usize("max-labels", self.max_labels.into())?,
                max_templates: to_usize("max-templates", self.max_templates.into())?,
                max_text_bytes,
            },
            max_inline_prompts: to_usize("max-inline-prompts", self.max_inline_prompts.into())?,
            text_cache_bytes: self.text_cache_bytes,
            max_label_sets: to_usize("max-label-sets", self.max_label_sets.into())?,
            max_label_set_prompts: to_usize(
                "max-label-set-prompts",
                self.max_label_set_prompts.into(),
            )?,
        })
    }
}
