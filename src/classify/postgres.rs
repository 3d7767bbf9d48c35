//! Label set definitions in PostgreSQL (`--store postgres`), shared by every replica: a set created
//! through one replica is found through any other. Each replica computes (and caches under its
//! `--data-dir`) its own classifier from the definition; only definitions are shared.
//!
//! Creating a set checks the name and the limits (`--max-label-sets`, `--max-label-set-prompts`)
//! over every replica's sets, under one advisory lock, in the transaction that inserts it.
//!
//! Changes made through other replicas are noticed by reading one number each second
//! (`clip_label_sets_version`, bumped by a trigger on every change): the definitions are read
//! again only when it moved.
//!
//! Cancellation: a call whose future is dropped has its statement cancelled and its connection
//! closed; each change is one statement or one transaction, so it happened whole or not at all.

use crate::common::limit::{MAX_LABEL_SET_PROMPTS, MAX_LABEL_SETS};
use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use super::prompts::LabelSetSpec;
use crate::{
    common::ServiceError,
    postgres::{Pool, client, col, has_nul, pg_error, schema},
};

pub struct LabelSetStore {
    pool: Pool,
    /// `clip_label_sets_version` when the definitions were last read (`None`: never).
    seen_version: Mutex<Option<i64>>,
    /// How many times every definition was read.
    loads: AtomicU64,
}

impl LabelSetStore {
    pub fn new(pool: Pool) -> Self {
        LabelSetStore {
            pool,
            seen_version: Mutex::new(None),
            loads: AtomicU64::new(0),
        }
    }

    /// How many times [`Self::load`] read every definition (a metric for tests).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The label sets' change counter now.
    async fn version(&self) -> Result<i64, ServiceError> {
        let conn = client(&self.pool).await?;
        let row = async {
            let stmt = conn
                .prepare_cached("SELECT version FROM clip_label_sets_version")
                .await
                .map_err(pg_error)?;
            conn.query_one(&stmt, &[]).await.map_err(pg_error)
        }
        .await;
        let row = conn.done(row)?;
        col(&row, "version")
    }

    /// Every stored definition when they changed since the last [`Self::load`] (by any replica),
    /// `None` when they did not: one row read.
    pub async fn load_if_changed(&self) -> Result<Option<Vec<LabelSetSpec>>, ServiceError> {
        let now = self.version().await?;
        let seen = *self
            .seen_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen == Some(now) {
            return Ok(None);
        }
        self.load().await.map(Some)
    }

    /// Every stored definition, by name; one that does not decode is logged and skipped.
    pub async fn load(&self) -> Result<Vec<LabelSetSpec>, ServiceError> {
        // The counter first: a change between the two reads makes the next check read again.
        let version = self.version().await?;
        let conn = client(&self.pool).await?;
        let rows = conn
            .query("SELECT name, spec FROM clip_label_sets ORDER BY name", &[])
            .await
            .map_err(pg_error);
        let rows = conn.done(rows)?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        *self
            .seen_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(version);
        let mut specs = Vec::new();
        for row in rows {
            let name: String = col(&row, "name")?;
            let spec: serde_json::Value = col(&row, "spec")?;
            match serde_json::from_value::<LabelSetSpec>(spec) {
                Ok(spec) if spec.name == name => specs.push(spec),
                Ok(_) => {
                    tracing::error!(%name, "skipping a stored label set whose definition names another")
                }
                Err(e) => {
                    tracing::error!(%name, error = %e, "skipping a stored label set that does not decode")
                }
            }
        }
        Ok(specs)
    }

    /// Stores a new definition, durably, unless its name exists or it would exceed the limits.
    /// One transaction: dropped mid-way, cancelled and rolled back (or committed whole).
    pub async fn insert(
        &self,
        spec: &LabelSetSpec,
        max_sets: usize,
        max_prompts: usize,
    ) -> Result<(), ServiceError> {
        let texts = spec.text_count();
        if has_nul(&spec.name)
            || spec.labels.iter().any(|l| has_nul(l))
            || spec.templates.iter().any(|t| has_nul(t))
        {
            return Err(ServiceError::invalid(
                crate::common::Field::Param("labels"),
                "a label or template holds a NUL character (U+0000), which the postgres store cannot hold",
            ));
        }
        let json = serde_json::to_value(spec).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let prompts = i32::try_from(texts).unwrap_or(i32::MAX);
        let mut conn = client(&self.pool).await?;
        let inserted = async {
            let tx = conn.transaction().await.map_err(pg_error)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&schema::LABEL_SET_LOCK],
            )
            .await
            .map_err(pg_error)?;
            let row = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM clip_label_sets WHERE name = $1) AS present,
                            count(*) AS sets, coalesce(sum(prompts), 0)::bigint AS stored
                     FROM clip_label_sets",
                    &[&spec.name],
                )
                .await
                .map_err(pg_error)?;
            let (present, sets, stored): (bool, i64, i64) = (
                col(&row, "present")?,
                col(&row, "sets")?,
                col(&row, "stored")?,
            );
            if present {
                return Err(ServiceError::AlreadyExists(format!(
                    "label set {:?} already exists",
                    spec.name
                )));
            }
            let sets = usize::try_from(sets).unwrap_or(usize::MAX);
            if sets >= max_sets {
                return Err(ServiceError::ResourceExhausted(format!(
                    "{sets} label sets stored, the limit ({MAX_LABEL_SETS}); delete one first"
                )));
            }
            let stored = usize::try_from(stored).unwrap_or(usize::MAX);
            if stored.saturating_add(texts) > max_prompts {
                return Err(ServiceError::ResourceExhausted(format!(
                    "the stored label sets have {stored} prompts (labels x templates) and this one {texts}, over the limit of {max_prompts} together ({MAX_LABEL_SET_PROMPTS}); delete a set first"
                )));
            }
            tx.execute(
                "INSERT INTO clip_label_sets (name, spec, prompts) VALUES ($1, $2, $3)",
                &[&spec.name, &json, &prompts],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
        .await;
        conn.done(inserted)
    }

    /// Deletes a definition; false when there was none. One statement: dropped mid-way, it
    /// happened or not.
    pub async fn delete(&self, name: &str) -> Result<bool, ServiceError> {
        let conn = client(&self.pool).await?;
        let n = conn
            .execute("DELETE FROM clip_label_sets WHERE name = $1", &[&name])
            .await
            .map_err(pg_error);
        Ok(conn.done(n)? > 0)
    }
}

impl super::ClassifyService {
    /// Makes this replica's client-created sets those of the shared store: new ones are added
    /// (their classifiers computed in the background), deleted ones dropped, changed ones (deleted
    /// and created again elsewhere) replaced, whether they changed or not. Nothing to do with the
    /// local store. The store watcher and calls naming a set this replica does not know use
    /// [`Self::refresh_if_changed`].
    pub async fn refresh(&self) -> Result<(), ServiceError> {
        if self.inner.shared.is_none() {
            return Ok(());
        }
        let _store = self.inner.store_lock.lock().await;
        self.refresh_locked().await
    }

    /// [`Self::refresh`] when another replica changed a label set since this one last read them
    /// (one number read; the definitions only when it moved). What the store watcher runs each
    /// second.
    pub async fn refresh_if_changed(&self) -> Result<(), ServiceError> {
        let Some(shared) = &self.inner.shared else {
            return Ok(());
        };
        let _store = self.inner.store_lock.lock().await;
        match shared.load_if_changed().await? {
            Some(specs) => {
                self.apply_shared(specs);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// [`Self::refresh`], the caller holding the store lock.
    pub(super) async fn refresh_locked(&self) -> Result<(), ServiceError> {
        let Some(shared) = &self.inner.shared else {
            return Ok(());
        };
        let specs = shared.load().await?;
        self.apply_shared(specs);
        Ok(())
    }

    /// Makes this replica's client-created sets `specs` (the shared store's).
    fn apply_shared(&self, specs: Vec<LabelSetSpec>) {
        let mut added = Vec::new();
        {
            let mut sets = self.inner.write_sets();
            let names: std::collections::HashSet<&str> =
                specs.iter().map(|s| s.name.as_str()).collect();
            let gone: Vec<String> = sets
                .iter()
                .filter(|(name, e)| !e.builtin && !names.contains(name.as_str()))
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                sets.remove(&name);
                self.inner.metrics.forget(&name);
            }
            for spec in specs {
                match sets.get(&spec.name) {
                    Some(e) if e.builtin || *e.spec == spec => continue,
                    _ => {}
                }
                if let Err(e) = super::check_spec(&spec, &self.inner.config) {
                    tracing::error!(name = %spec.name, error = %e, "skipping a shared label set that is not valid under this server's limits");
                    continue;
                }
                added.push(spec.name.clone());
                sets.insert(
                    spec.name.clone(),
                    super::Entry {
                        spec: std::sync::Arc::new(spec),
                        builtin: false,
                        stage: super::Stage::NotBuilt,
                        generation: self
                            .inner
                            .generation
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    },
                );
            }
        }
        for name in added {
            self.start_build(&name);
        }
    }

    /// Refreshes when `name` is unknown here (it may have been created through another replica)
    /// and the label sets changed since they were last read: calls naming sets that exist
    /// nowhere cost one number read each, not every definition.
    pub(super) async fn refresh_if_unknown(&self, name: &str) -> Result<(), ServiceError> {
        if self.inner.shared.is_none() || self.inner.read_sets().contains_key(name) {
            return Ok(());
        }
        self.refresh_if_changed().await
    }
}
