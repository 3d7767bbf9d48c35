//! The model slot: empty while the model loads, then the loaded model and one batcher per tower it
//! has, set once. Requests read it to find their tower, and get UNAVAILABLE (loading) or
//! FAILED_PRECONDITION (this model has no such tower) from here.

use std::sync::{Arc, OnceLock};

use crate::{
    batch::Batcher,
    common::{Modality, ServiceError},
};

/// Preprocessed crops in, embeddings out.
pub type ImageBatcher = Batcher<Vec<u8>, Vec<f32>>;
/// Padded token ids in, embeddings out.
pub type TextBatcher = Batcher<Vec<i64>, Vec<f32>>;

/// The loaded model and one batcher per tower it has.
pub struct Loaded<M> {
    pub model: Arc<M>,
    pub image: Option<ImageBatcher>,
    pub text: Option<TextBatcher>,
}

/// Generic over the model so its rules can be tested without ONNX Runtime.
pub struct ModelSlot<M> {
    loaded: OnceLock<Loaded<M>>,
}

impl<M> Default for ModelSlot<M> {
    fn default() -> Self {
        ModelSlot {
            loaded: OnceLock::new(),
        }
    }
}

impl<M> ModelSlot<M> {
    /// Fills the slot; a second call is ignored (the model is loaded once per process).
    pub fn set(&self, loaded: Loaded<M>) {
        let _ = self.loaded.set(loaded);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.get().is_some()
    }

    /// The model and its batchers, or UNAVAILABLE while it loads.
    pub fn get(&self) -> Result<&Loaded<M>, ServiceError> {
        self.loaded.get().ok_or_else(|| {
            ServiceError::Unavailable("model is loading; retry when health reports SERVING".into())
        })
    }

    pub fn model(&self) -> Result<Arc<M>, ServiceError> {
        Ok(Arc::clone(&self.get()?.model))
    }

    /// The model and the image batcher, or why images cannot be served.
    pub fn image(&self) -> Result<(Arc<M>, ImageBatcher), ServiceError> {
        let loaded = self.get()?;
        let batcher = loaded
            .image
            .clone()
            .ok_or_else(|| not_served(Modality::Image))?;
        Ok((Arc::clone(&loaded.model), batcher))
    }

    /// The model and the text batcher, or why texts cannot be served.
    pub fn text(&self) -> Result<(Arc<M>, TextBatcher), ServiceError> {
        let loaded = self.get()?;
        let batcher = loaded
            .text
            .clone()
            .ok_or_else(|| not_served(Modality::Text))?;
        Ok((Arc::clone(&loaded.model), batcher))
    }
}

fn not_served(modality: Modality) -> ServiceError {
    let (file, other) = match modality {
        Modality::Image => ("visual/model.onnx", "texts"),
        Modality::Text => ("textual/model.onnx", "images"),
    };
    ServiceError::FailedPrecondition(format!(
        "this model serves no {modality} tower (its directory has no {file}); it embeds {other} only"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchMetrics, BatcherConfig, Engine};

    struct Echo;
    impl Engine for Echo {
        type Row = Vec<u8>;
        type Output = Vec<f32>;
        fn run(&mut self, rows: Vec<Vec<u8>>) -> Result<Vec<Vec<f32>>, crate::batch::EngineError> {
            Ok(rows
                .into_iter()
                .map(|r| r.into_iter().map(f32::from).collect())
                .collect())
        }
    }

    #[tokio::test]
    async fn loading_then_the_towers_the_model_has() {
        let slot: ModelSlot<&'static str> = ModelSlot::default();
        assert!(!slot.is_loaded());
        assert!(matches!(slot.image(), Err(ServiceError::Unavailable(m)) if m.contains("loading")));
        let config = BatcherConfig {
            max_batch_size: 4,
            max_batch_delay: std::time::Duration::ZERO,
            max_queue_rows: 8,
            priority_aging: crate::batch::DEFAULT_PRIORITY_AGING,
            priority_yield_rows: crate::batch::DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let image = Batcher::start(Echo, config, BatchMetrics::unregistered());
        slot.set(Loaded {
            model: Arc::new("image-only"),
            image: Some(image),
            text: None,
        });
        assert!(slot.is_loaded());
        let (model, batcher) = slot.image().unwrap();
        assert_eq!(*model, "image-only");
        let out = batcher.submit(vec![vec![1, 2]], None).await.unwrap();
        assert_eq!(out.outputs, vec![vec![1.0, 2.0]]);
        let e = slot.text().err().unwrap().to_string();
        assert!(
            e.contains("no text tower") && e.contains("textual/model.onnx"),
            "{e}"
        );
    }
}
