//! Labels, prompt templates and label-set names: validation with messages that name the item, and
//! the built-in label sets (`assets/label_sets/*.json`, compiled into the binary).

use crate::common::limit::{MAX_LABELS, MAX_TEMPLATES, MAX_TEXT_BYTES};
use std::collections::HashMap;

use serde::Deserialize;

use crate::common::{Field, List, ServiceError, fill_template};

/// The template used when a request gives none (CLIP's default prompt).
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// A named set of labels and templates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct LabelSetSpec {
    pub name: String,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
}

impl LabelSetSpec {
    /// The prompts to embed, label-major: every template of label 0, then of label 1, ...
    pub fn prompts(&self) -> Vec<String> {
        prompts(&self.labels, &self.templates)
    }

    pub fn text_count(&self) -> usize {
        self.labels.len() * self.templates.len()
    }
}

/// Every template filled with every label, label-major.
pub fn prompts(labels: &[String], templates: &[String]) -> Vec<String> {
    labels
        .iter()
        .flat_map(|label| templates.iter().map(move |t| fill_template(t, label)))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLimits {
    pub max_labels: usize,
    pub max_templates: usize,
    pub max_text_bytes: usize,
}

/// Labels must be present, unique, non-blank and within the limits.
pub fn check_labels(labels: &[String], limits: &PromptLimits) -> Result<(), ServiceError> {
    if labels.is_empty() {
        return Err(ServiceError::invalid(
            Field::List(List::Labels),
            "no labels; give at least one (or name a label_set)",
        ));
    }
    if labels.len() > limits.max_labels {
        return Err(ServiceError::invalid(
            Field::List(List::Labels),
            format!(
                "{} labels, over the limit of {} ({MAX_LABELS})",
                labels.len(),
                limits.max_labels
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(labels.len());
    for (i, label) in labels.iter().enumerate() {
        if label.trim().is_empty() {
            return Err(ServiceError::invalid_item(List::Labels, i, "empty label"));
        }
        if label.len() > limits.max_text_bytes {
            return Err(ServiceError::invalid_item(
                List::Labels,
                i,
                format!(
                    "label is {} bytes, over the limit of {} ({MAX_TEXT_BYTES})",
                    label.len(),
                    limits.max_text_bytes
                ),
            ));
        }
        if let Some(first) = seen.insert(label.as_str(), i) {
            return Err(ServiceError::invalid_item(
                List::Labels,
                i,
                format!("duplicate of labels[{first}] ({label:?})"),
            ));
        }
    }
    Ok(())
}

/// Templates need exactly one `{}` and no other brace (open_clip fills them with `str.format`, where
/// any other brace would mean something else); none given means [`DEFAULT_TEMPLATE`].
pub fn check_templates(
    templates: Vec<String>,
    limits: &PromptLimits,
) -> Result<Vec<String>, ServiceError> {
    if templates.is_empty() {
        return Ok(vec![DEFAULT_TEMPLATE.to_string()]);
    }
    if templates.len() > limits.max_templates {
        return Err(ServiceError::invalid(
            Field::List(List::Templates),
            format!(
                "{} templates, over the limit of {} ({MAX_TEMPLATES})",
                templates.len(),
                limits.max_templates
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(templates.len());
    for (i, template) in templates.iter().enumerate() {
        let slots = template.matches("{}").count();
        let braces = template.chars().filter(|c| matches!(c, '{' | '}')).count();
        if slots != 1 || braces != 2 {
            let found = match slots {
                0 => "none".to_string(),
                1 => "other braces besides it".to_string(),
                n => format!("{n}"),
            };
            return Err(ServiceError::invalid_item(
                List::Templates,
                i,
                format!(
                    "{template:?} must contain exactly one {{}} where the label goes (found {found})"
                ),
            ));
        }
        if template.len() > limits.max_text_bytes {
            return Err(ServiceError::invalid_item(
                List::Templates,
                i,
                format!(
                    "template is {} bytes, over the limit of {} ({MAX_TEXT_BYTES})",
                    template.len(),
                    limits.max_text_bytes
                ),
            ));
        }
        if let Some(first) = seen.insert(template.as_str(), i) {
            return Err(ServiceError::invalid_item(
                List::Templates,
                i,
                format!("duplicate of templates[{first}]"),
            ));
        }
    }
    Ok(templates)
}

/// Every filled prompt (the longest label in the longest template) must fit `max_text_bytes`, the
/// limit any text the model embeds is held to.
pub fn check_prompt_length(
    labels: &[String],
    templates: &[String],
    limits: &PromptLimits,
) -> Result<(), ServiceError> {
    let label = labels.iter().map(String::len).max().unwrap_or(0);
    let template = templates.iter().map(String::len).max().unwrap_or(0);
    let longest = (label + template).saturating_sub(2);
    if longest > limits.max_text_bytes {
        return Err(ServiceError::invalid_request(format!(
            "the longest label in the longest template makes a {longest}-byte prompt, over the limit of {} ({MAX_TEXT_BYTES})",
            limits.max_text_bytes
        )));
    }
    Ok(())
}

/// The label sets every server has.
pub fn builtin_sets() -> Vec<LabelSetSpec> {
    const FILES: [(&str, &str); 3] = [
        (
            "imagenet-1k",
            include_str!("../../assets/label_sets/imagenet-1k.json"),
        ),
        (
            "imagenet-1k-simple",
            include_str!("../../assets/label_sets/imagenet-1k-simple.json"),
        ),
        (
            "cifar-10",
            include_str!("../../assets/label_sets/cifar-10.json"),
        ),
    ];
    FILES
        .iter()
        .map(|(name, json)| {
            let spec: LabelSetSpec = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("built-in label set {name} does not parse: {e}"));
            assert_eq!(spec.name, *name, "built-in label set file names its set");
            spec
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PromptLimits = PromptLimits {
        max_labels: 4,
        max_templates: 3,
        max_text_bytes: 100,
    };

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn message(e: ServiceError) -> String {
        match e {
            ServiceError::InvalidArgument(m) => m.to_string(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn labels_are_checked_with_the_item_named() {
        assert!(check_labels(&strings(&["cat", "dog"]), &LIMITS).is_ok());
        assert!(message(check_labels(&[], &LIMITS).unwrap_err()).contains("no labels"));
        let m = message(check_labels(&strings(&["cat", "dog", "cat"]), &LIMITS).unwrap_err());
        assert_eq!(m, "labels[2]: duplicate of labels[0] (\"cat\")");
        let m = message(check_labels(&strings(&["cat", "  "]), &LIMITS).unwrap_err());
        assert_eq!(m, "labels[1]: empty label");
        let m = message(check_labels(&strings(&["a", "b", "c", "d", "e"]), &LIMITS).unwrap_err());
        assert!(m.contains("--max-labels"), "{m}");
        let long = "x".repeat(101);
        let m = message(check_labels(&[long], &LIMITS).unwrap_err());
        assert!(
            m.starts_with("labels[0]:") && m.contains("--max-text-bytes"),
            "{m}"
        );
    }

    #[test]
    fn templates_need_exactly_one_slot() {
        assert_eq!(
            check_templates(Vec::new(), &LIMITS).unwrap(),
            vec![DEFAULT_TEMPLATE]
        );
        assert!(check_templates(strings(&["itap of a {}."]), &LIMITS).is_ok());
        for (bad, found) in [
            ("a photo", "none"),
            ("a {} and a {}", "2"),
            ("a {} {x}", "other braces"),
            ("a {{}}", "other braces"),
        ] {
            let m = message(check_templates(strings(&["ok {}", bad]), &LIMITS).unwrap_err());
            assert!(
                m.starts_with("templates[1]:") && m.contains(found),
                "{bad}: {m}"
            );
        }
        let m = message(check_templates(strings(&["{}", "{}"]), &LIMITS).unwrap_err());
        assert_eq!(m, "templates[1]: duplicate of templates[0]");
        let m = message(
            check_templates(strings(&["{}", "a {}", "b {}", "c {}"]), &LIMITS).unwrap_err(),
        );
        assert!(m.contains("--max-templates"), "{m}");
    }

    #[test]
    fn prompts_are_label_major_and_filled_like_str_format() {
        let p = prompts(&strings(&["cat", "dog"]), &strings(&["a {}.", "{} art"]));
        assert_eq!(p, ["a cat.", "cat art", "a dog.", "dog art"]);
    }

    #[test]
    fn builtin_sets_are_valid() {
        let limits = PromptLimits {
            max_labels: 1000,
            max_templates: 100,
            max_text_bytes: 1000,
        };
        let sets = builtin_sets();
        let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["imagenet-1k", "imagenet-1k-simple", "cifar-10"]);
        for set in &sets {
            check_labels(&set.labels, &limits).unwrap_or_else(|e| panic!("{}: {e}", set.name));
            check_templates(set.templates.clone(), &limits)
                .unwrap_or_else(|e| panic!("{}: {e}", set.name));
            crate::common::check_name("label set", &set.name).unwrap();
        }
        assert_eq!((sets[0].labels.len(), sets[0].templates.len()), (1000, 80));
        assert_eq!((sets[1].labels.len(), sets[1].templates.len()), (1000, 7));
        assert_eq!((sets[2].labels.len(), sets[2].templates.len()), (10, 18));
    }
}
