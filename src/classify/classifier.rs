//! A zero-shot classifier: one L2-normalized row per label, and the scoring of an image against it.
//! Also the on-disk format the exporter writes (`scripts/export_classifiers.py`) and this server
//! caches in: `NAME.json` (metadata) + `NAME.f32` (little-endian float32, labels x dim, row-major).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::prompts::LabelSetSpec;
use crate::common::hex;

/// Classifier rows, label-major, each of unit norm.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    pub labels: Vec<String>,
    pub dim: usize,
    rows: Vec<f32>,
}

/// One label's result for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    pub label: String,
    pub probability: f32,
    pub score: f32,
}

fn normalize(v: &mut [f64]) -> Result<(), String> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(format!("cannot normalize a vector of norm {norm}"));
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Ok(())
}

impl Classifier {
    /// CLIP's prompt ensemble: `embeddings` holds, label-major, one embedding per (label, template);
    /// each is normalized, the label's are averaged, and the mean is normalized.
    pub fn from_prompt_embeddings(
        labels: Vec<String>,
        templates: usize,
        embeddings: &[impl AsRef<[f32]>],
    ) -> Result<Self, String> {
        if templates == 0 || embeddings.len() != labels.len() * templates {
            return Err(format!(
                "{} embeddings for {} labels x {templates} templates",
                embeddings.len(),
                labels.len()
            ));
        }
        let dim = embeddings.first().map_or(0, |e| e.as_ref().len());
        if dim == 0 {
            return Err("no embeddings, or embeddings of no dimension".into());
        }
        let mut rows = Vec::with_capacity(labels.len() * dim);
        for per_label in embeddings.chunks(templates) {
            let mut mean = vec![0f64; dim];
            for e in per_label {
                let e = e.as_ref();
                if e.len() != dim {
                    return Err(format!("embedding of {} values, expected {dim}", e.len()));
                }
                let mut v: Vec<f64> = e.iter().map(|&x| f64::from(x)).collect();
                normalize(&mut v)?;
                mean.iter_mut().zip(&v).for_each(|(m, x)| *m += x);
            }
            normalize(&mut mean)?;
            rows.extend(mean.iter().map(|&x| x as f32));
        }
        Ok(Classifier { labels, dim, rows })
    }

    /// Rows given directly (from a file); each must have unit norm within float error.
    pub fn from_rows(labels: Vec<String>, dim: usize, rows: Vec<f32>) -> Result<Self, String> {
        if dim == 0 || rows.len() != labels.len() * dim {
            return Err(format!(
                "{} values for {} labels x {dim} dimensions",
                rows.len(),
                labels.len()
            ));
        }
        for (i, row) in rows.chunks(dim).enumerate() {
            let norm = row
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            if !(norm - 1.0).abs().le(&1e-3) {
                return Err(format!("row {i} ({:?}) has norm {norm}, not 1", labels[i]));
            }
        }
        Ok(Classifier { labels, dim, rows })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// Scores of one L2-normalized image embedding, best first: cosine, and softmax over all labels
    /// of `logit_scale * cosine`. `top_k` 0 means all labels.
    pub fn classify(&self, image: &[f32], logit_scale: f32, top_k: usize) -> Vec<LabelScore> {
        let cosines: Vec<f64> = self
            .rows
            .chunks(self.dim)
            .map(|row| {
                row.iter()
                    .zip(image)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum()
            })
            .collect();
        let scale = f64::from(logit_scale);
        let max = cosines
            .iter()
            .map(|c| c * scale)
            .fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = cosines.iter().map(|c| (c * scale - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        let mut order: Vec<usize> = (0..cosines.len()).collect();
        // Best first; ties keep label order.
        order.sort_by(|&a, &b| cosines[b].total_cmp(&cosines[a]).then(a.cmp(&b)));
        let k = if top_k == 0 {
            order.len()
        } else {
            top_k.min(order.len())
        };
        order
            .into_iter()
            .take(k)
            .map(|i| LabelScore {
                label: self.labels[i].clone(),
                probability: (exps[i] / total) as f32,
                score: cosines[i] as f32,
            })
            .collect()
    }
}

/// `NAME.json` of a stored classifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierMeta {
    pub format: String,
    pub name: String,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
    pub embed_dim: usize,
    pub dtype: String,
    pub byte_order: String,
    pub shape: [usize; 2],
    pub data: String,
    pub sha256: String,
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub pretrained: Option<String>,
    #[serde(default)]
    pub weights: Option<String>,
    #[serde(default)]
    pub normalized: bool,
    /// Written by this server: the fingerprint of the text tower the classifier was computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
}

pub const FORMAT: &str = "clip-serve.classifier.v1";

/// Reads `dir/NAME.json` + its data file and checks them against `spec` and `dim`. `Ok(None)` when
/// there is no such file; `Err` names what is wrong with one that exists.
pub fn read(dir: &Path, spec: &LabelSetSpec, dim: usize) -> Result<Option<Classifier>, String> {
    let meta_path = dir.join(format!("{}.json", spec.name));
    let text = match std::fs::read_to_string(&meta_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", meta_path.display())),
    };
    let at = |m: String| format!("{}: {m}", meta_path.display());
    let meta: ClassifierMeta = serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
    if meta.format != FORMAT {
        return Err(at(format!("format {:?}, expected {FORMAT:?}", meta.format)));
    }
    if meta.dtype != "float32" || meta.byte_order != "little" {
        return Err(at(format!(
            "{} {} data; only little-endian float32 is read",
            meta.byte_order, meta.dtype
        )));
    }
    if meta.labels != spec.labels || meta.templates != spec.templates {
        return Err(at(format!(
            "its labels or templates differ from label set {:?}",
            spec.name
        )));
    }
    if meta.embed_dim != dim || meta.shape != [spec.labels.len(), dim] {
        return Err(at(format!(
            "shape {:?} (embed_dim {}), the model needs [{}, {dim}]",
            meta.shape,
            meta.embed_dim,
            spec.labels.len()
        )));
    }
    let data_name = Path::new(&meta.data);
    if data_name.components().count() != 1 {
        return Err(at(format!(
            "data {:?} must be a file name in the same directory",
            meta.data
        )));
    }
    let data_path = dir.join(data_name);
    let bytes = std::fs::read(&data_path).map_err(|e| format!("{}: {e}", data_path.display()))?;
    let digest = hex(&Sha256::digest(&bytes));
    if digest != meta.sha256.to_ascii_lowercase() {
        return Err(format!(
            "{}: sha256 {digest} does not match {} in {}",
            data_path.display(),
            meta.sha256,
            meta_path.display()
        ));
    }
    if bytes.len() != spec.labels.len() * dim * 4 {
        return Err(format!(
            "{}: {} bytes, expected {}",
            data_path.display(),
            bytes.len(),
            spec.labels.len() * dim * 4
        ));
    }
    let rows = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Classifier::from_rows(spec.labels.clone(), dim, rows)
        .map(Some)
        .map_err(|e| format!("{}: {e}", data_path.display()))
}

/// Writes `dir/NAME.f32` then `dir/NAME.json`, each atomically (temporary file, fsync, rename), so a
/// crash leaves the old pair or a data file without metadata, never metadata without its data.
pub fn write(
    dir: &Path,
    spec: &LabelSetSpec,
    classifier: &Classifier,
    model_fingerprint: &str,
    model_name: &str,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let bytes: Vec<u8> = classifier
        .rows
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let data = format!("{}.f32", spec.name);
    write_atomic(&dir.join(&data), &bytes)?;
    let meta = ClassifierMeta {
        format: FORMAT.into(),
        name: spec.name.clone(),
        labels: spec.labels.clone(),
        templates: spec.templates.clone(),
        embed_dim: classifier.dim,
        dtype: "float32".into(),
        byte_order: "little".into(),
        shape: [classifier.labels.len(), classifier.dim],
        data,
        sha256: hex(&Sha256::digest(&bytes)),
        model_name: Some(model_name.to_string()),
        pretrained: None,
        weights: None,
        normalized: true,
        model_fingerprint: Some(model_fingerprint.to_string()),
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
    let path = dir.join(format!("{}.json", spec.name));
    write_atomic(&path, &json)?;
    Ok(path)
}

/// Writes through a temporary file in the same directory, fsyncs it, renames it over `path` and
/// fsyncs the directory (tempfile's `persist` is the rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &[&str], templates: &[&str]) -> LabelSetSpec {
        LabelSetSpec {
            name: "t".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            templates: templates.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_prompt_ensemble_normalizes_each_then_the_mean() {
        // Two templates for one label: unnormalized inputs of different lengths weigh the same.
        let c = Classifier::from_prompt_embeddings(
            vec!["x".into()],
            2,
            &[vec![10.0f32, 0.0], vec![0.0, 0.5]],
        )
        .unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c.row(0)[0] - h).abs() < 1e-7 && (c.row(0)[1] - h).abs() < 1e-7);
        assert!(Classifier::from_prompt_embeddings(vec!["x".into()], 2, &[vec![1.0f32]]).is_err());
        assert!(
            Classifier::from_prompt_embeddings(vec!["x".into()], 1, &[vec![0.0f32, 0.0]]).is_err(),
            "a zero vector cannot be normalized"
        );
    }

    #[test]
    fn probabilities_are_a_softmax_of_scaled_cosines_best_first() {
        let c = Classifier::from_rows(
            vec!["a".into(), "b".into(), "c".into()],
            2,
            vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0],
        )
        .unwrap();
        let image = [0.8f32, 0.6];
        let scores = c.classify(&image, 10.0, 0);
        let labels: Vec<&str> = scores.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["a", "b", "c"]);
        let (ea, eb, ec) = (8f64.exp(), 6f64.exp(), (-8f64).exp());
        let want = [ea, eb, ec].map(|e| (e / (ea + eb + ec)) as f32);
        for (s, w) in scores.iter().zip(want) {
            assert!((s.probability - w).abs() < 1e-7, "{s:?} vs {w}");
        }
        assert!((scores[0].score - 0.8).abs() < 1e-7);
        let top = c.classify(&image, 10.0, 2);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], scores[0], "top_k keeps the softmax over all labels");
        assert_eq!(c.classify(&image, 10.0, 99).len(), 3);
    }

    #[test]
    fn files_round_trip_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&["cat", "dog"], &["a {}."]);
        let c = Classifier::from_rows(s.labels.clone(), 2, vec![0.6, 0.8, 1.0, 0.0]).unwrap();
        write(dir.path(), &s, &c, "fp", "m").unwrap();
        assert_eq!(read(dir.path(), &s, 2).unwrap(), Some(c.clone()));
        assert!(
            read(dir.path(), &spec(&["x"], &["{}"]), 2)
                .unwrap_err()
                .contains("differ")
        );
        assert!(read(dir.path(), &s, 3).unwrap_err().contains("shape"));
        let mut other = s.clone();
        other.name = "absent".into();
        assert_eq!(read(dir.path(), &other, 2).unwrap(), None);
        std::fs::write(dir.path().join("t.f32"), [0u8; 16]).unwrap();
        assert!(read(dir.path(), &s, 2).unwrap_err().contains("sha256"));
    }
}
