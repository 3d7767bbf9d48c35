//! Label-set administration: create, look up, list and delete the sets clients store (the
//! classifiers they are computed into live in the parent module).

use super::*;
use crate::common::limit::{MAX_LABEL_SET_PROMPTS, MAX_LABEL_SETS};

impl ClassifyService {
    /// Stores a new set (durably, before answering) and starts computing its classifier.
    ///
    /// Cancellation: once validated, the write runs in a task of its own that the caller only
    /// awaits: a caller that goes away never leaves a definition stored but not in
    /// memory (or the reverse); the set is stored and visible, or neither.
    pub async fn create(
        &self,
        name: String,
        labels: Vec<String>,
        templates: Vec<String>,
    ) -> Result<LabelSetInfo, ServiceError> {
        let model = self.inner.embed.loaded_model()?;
        let templates = prompts::check_templates(templates, &self.config().prompts)?;
        let spec = Arc::new(LabelSetSpec {
            name: name.clone(),
            labels,
            templates,
        });
        check_spec(&spec, self.config())?;
        if model.text.is_none() {
            return Err(ServiceError::FailedPrecondition(
                "this model has no textual tower, so it cannot compute a label set's classifier"
                    .into(),
            ));
        }
        let service = self.clone();
        detached(async move { service.create_unit(name, spec).await }).await
    }

    /// One Create, whole (see [`detached`]): the definition stored (file or PostgreSQL) and the
    /// set put into memory, under the store lock.
    async fn create_unit(
        &self,
        name: String,
        spec: Arc<LabelSetSpec>,
    ) -> Result<LabelSetInfo, ServiceError> {
        let _store = self.inner.store_lock.lock().await;
        self.refresh_locked().await?;
        {
            let sets = self.inner.read_sets();
            if sets.contains_key(&name) {
                return Err(ServiceError::AlreadyExists(format!(
                    "label set {name:?} already exists"
                )));
            }
            let created = sets.values().filter(|e| !e.builtin).count();
            if created >= self.config().max_label_sets {
                return Err(ServiceError::ResourceExhausted(format!(
                    "{created} label sets stored, the limit ({MAX_LABEL_SETS}); delete one first"
                )));
            }
            let stored: usize = sets
                .values()
                .filter(|e| !e.builtin)
                .map(|e| e.spec.text_count())
                .sum();
            let max = self.config().max_label_set_prompts;
            if stored + spec.text_count() > max {
                return Err(ServiceError::ResourceExhausted(format!(
                    "the stored label sets have {stored} prompts (labels x templates) and this one {}, over the limit of {max} together ({MAX_LABEL_SET_PROMPTS}); delete a set first",
                    spec.text_count()
                )));
            }
        }
        if let Some(shared) = &self.inner.shared {
            let config = self.config();
            shared
                .insert(&spec, config.max_label_sets, config.max_label_set_prompts)
                .await?;
        } else {
            let store_spec = Arc::clone(&spec);
            let inner = Arc::clone(&self.inner);
            run_blocking("storing the label set", move || {
                inner
                    .store
                    .save_definition(&store_spec)
                    .map_err(|e| e.to_string())
            })
            .await?;
        }
        self.inner.write_sets().insert(
            name.clone(),
            Entry {
                spec,
                builtin: false,
                stage: Stage::NotBuilt,
                generation: self.inner.generation.fetch_add(1, Ordering::Relaxed),
            },
        );
        self.start_build(&name);
        self.get(&name)
    }

    /// [`Self::get`], first asking the shared store about a name this replica does not know.
    pub async fn lookup(&self, name: &str) -> Result<LabelSetInfo, ServiceError> {
        self.refresh_if_unknown(name).await?;
        self.get(name)
    }

    pub fn get(&self, name: &str) -> Result<LabelSetInfo, ServiceError> {
        let sets = self.inner.read_sets();
        let entry = sets.get(name).ok_or_else(|| not_found(name))?;
        Ok(info(entry))
    }

    pub fn list(&self) -> Vec<LabelSetInfo> {
        self.inner.read_sets().values().map(info).collect()
    }

    /// Deletes a client-created set (its definition and cached classifiers).
    ///
    /// Cancellation: as [`Self::create`], detached: the stored definition and the set in memory
    /// go together, whatever the caller does.
    pub async fn delete(&self, name: &str) -> Result<(), ServiceError> {
        let service = self.clone();
        let name = name.to_string();
        detached(async move { service.delete_unit(&name).await }).await
    }

    /// One Delete, whole (see [`detached`]).
    async fn delete_unit(&self, name: &str) -> Result<(), ServiceError> {
        let _store = self.inner.store_lock.lock().await;
        self.refresh_locked().await?;
        {
            let sets = self.inner.read_sets();
            let entry = sets.get(name).ok_or_else(|| not_found(name))?;
            if entry.builtin {
                return Err(ServiceError::FailedPrecondition(format!(
                    "label set {name:?} is built in and cannot be deleted"
                )));
            }
        }
        if let Some(shared) = &self.inner.shared
            && !shared.delete(name).await?
        {
            // Deleted through another replica meanwhile.
            self.inner.write_sets().remove(name);
            return Err(not_found(name));
        }
        let inner = Arc::clone(&self.inner);
        let owned = name.to_string();
        run_blocking("deleting the label set", move || {
            inner.store.delete(&owned).map_err(|e| e.to_string())
        })
        .await?;
        self.inner.write_sets().remove(name);
        self.inner.metrics.forget(name);
        Ok(())
    }
}

fn info(entry: &Entry) -> LabelSetInfo {
    let total = entry.spec.text_count() as u64;
    LabelSetInfo {
        spec: Arc::clone(&entry.spec),
        builtin: entry.builtin,
        state: match &entry.stage {
            Stage::NotBuilt => SetState::NotBuilt,
            Stage::Building(done) => SetState::Building {
                done: done.load(Ordering::Relaxed),
                total,
            },
            Stage::Ready(_, source) => SetState::Ready(*source),
            Stage::Failed(e) => SetState::Failed(e.clone()),
        },
    }
}
