//! Validation of what clients send to Retrieve, and the embedding of contents: texts and images
//! through the batchers, vectors checked and normalized. Errors name the field as data (a Rank's
//! first content is its `query`, the texts of an Upsert are `items[i].text`).

use crate::common::limit::{MAX_ITEMS_PER_REQUEST, MAX_METADATA_BYTES};
use std::time::Instant;

use super::{Content, RetrieveService, index::Metadata, store::CollectionMeta};
use crate::common::{Field, List, ServiceError};

/// A client's vector: the right dimension, finite, not zero. Returns its normalized copy.
pub(super) fn check_vector(field: Field, v: &[f32], dim: usize) -> Result<Vec<f32>, ServiceError> {
    if v.len() != dim {
        return Err(ServiceError::invalid(
            field,
            format!("{} values, expected {dim} (the dimension here)", v.len()),
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ServiceError::invalid(
            field,
            format!("value {i} is {} (NaN and infinities are refused)", v[i]),
        ));
    }
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err(ServiceError::invalid(
            field,
            "the zero vector has no direction to compare",
        ));
    }
    Ok(v.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
}

impl RetrieveService {
    /// Embeds contents, in order: texts and images through the batchers, vectors checked and
    /// normalized. `list` names all of them in errors, `field_of(i)` the i-th (`items[i]`, or
    /// `query` for a Rank's first content).
    pub(super) async fn vectors(
        &self,
        list: Field,
        field_of: impl Fn(usize) -> Field,
        contents: Vec<Option<Content>>,
        dim: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, ServiceError> {
        let n = contents.len();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
        let (mut texts, mut text_at, mut images, mut image_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, c) in contents.into_iter().enumerate() {
            match c {
                None => {
                    return Err(ServiceError::invalid(
                        field_of(i),
                        "set `text`, `image` or `vector`",
                    ));
                }
                Some(Content::Vector(v)) => {
                    out[i] = Some(check_vector(field_of(i).part("vector"), &v, dim)?)
                }
                Some(Content::Text(t)) => {
                    texts.push(t);
                    text_at.push(i);
                }
                Some(Content::Image(b)) => {
                    images.push(b);
                    image_at.push(i);
                }
            }
        }
        let max_items = self.inner.embed.limits().max_items_per_request;
        if texts.len() + images.len() > max_items {
            return Err(ServiceError::invalid(
                list,
                format!(
                    "{} texts and images to embed, over the limit of {max_items} per request ({MAX_ITEMS_PER_REQUEST}); send vectors for more",
                    texts.len() + images.len()
                ),
            ));
        }
        // The embed service names the j-th text `texts[j]`; here it is `items[text_at[j]].text`.
        let place = |field: Field, at: &[usize]| match field {
            Field::Item(List::Texts, j) if j < at.len() => field_of(at[j]).part("text"),
            Field::Item(List::Images, j) if j < at.len() => field_of(at[j]).part("image"),
            other => other,
        };
        if !texts.is_empty() {
            let embedded = self
                .inner
                .embed
                .encode_texts(texts, deadline)
                .await
                .map_err(|e| e.relocate(|f| place(f, &text_at)))?;
            for (&i, e) in text_at.iter().zip(embedded.embeddings) {
                out[i] = Some(e.values);
            }
        }
        if !images.is_empty() {
            let embedded = self
                .inner
                .embed
                .encode_images(images, deadline)
                .await
                .map_err(|e| e.relocate(|f| place(f, &image_at)))?;
            for (&i, e) in image_at.iter().zip(embedded.embeddings) {
                out[i] = Some(e.values);
            }
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| ServiceError::Internal("an embedding went missing".into())))
            .collect()
    }

    /// The collection's model must be served for texts and images, and a stated model must match.
    pub(super) fn check_model(
        &self,
        collection: &CollectionMeta,
        stated: &str,
        needs_model: bool,
    ) -> Result<(), ServiceError> {
        if !stated.is_empty() && stated != collection.model {
            return Err(ServiceError::FailedPrecondition(format!(
                "collection {:?} holds vectors of model {:?}, not {stated:?}",
                collection.name, collection.model
            )));
        }
        if needs_model {
            let (served, _) = self.served()?;
            if served != collection.model {
                return Err(ServiceError::FailedPrecondition(format!(
                    "collection {:?} was built with model {:?}; this server serves {served:?}, so only vectors are accepted",
                    collection.name, collection.model
                )));
            }
        }
        Ok(())
    }

    pub(super) fn check_metadata(
        &self,
        field: Field,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        let max = self.inner.config.max_metadata_bytes;
        if bytes > max {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "{bytes} bytes of keys and values, over the limit of {max} ({MAX_METADATA_BYTES})"
                ),
            ));
        }
        Ok(())
    }
}
