//! The recall target on PostgreSQL (`--recall-*`), kept by measurement as on the local store
//! (`retrieve::recall`): a sample of each collection's own recent unfiltered searches is
//! answered both ways every `interval` (the collection's index path, and the exact scan), the
//! measured recall@10 is published, and while it is under the target the collection's own
//! `hnsw.ef_search` floor (graph indexes) or oversampling (binary, and mirrored collections) is raised by half, up to
//! pgvector's 1000 / `--recall-max-oversample`. Each sampled query costs one sequential scan of
//! the collection's table: `--recall-samples` bounds the check's cost, and `--recall-check-duty`
//! its share of the time (it pauses between samples).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use super::{MAX_EF_SEARCH, MAX_SEEN, PgStore};
use crate::{
    postgres::schema::IndexKind,
    retrieve::{
        backend::CollectionStore,
        index::Metadata,
        recall::{self, RecallConfig, Samples},
    },
};

/// One collection's raised settings (never below the store's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    pub ef_search: usize,
    pub oversample: usize,
}

/// The samples and tunings of every collection.
#[derive(Default)]
pub struct Tuner {
    pub config: RecallConfig,
    pub gauge: Option<prometheus::GaugeVec>,
    /// Per collection name.
    samples: Mutex<HashMap<String, Arc<Samples>>>,
    /// Per incarnation id.
    tuned: Mutex<HashMap<String, Tuning>>,
}

impl Tuner {
    /// Offers an unfiltered search's query of collection `name`.
    pub fn offer(&self, name: &str, query: &[f32]) {
        if self.config.samples == 0 || self.config.interval.is_zero() {
            return;
        }
        let samples = {
            let mut all = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
            if all.len() >= MAX_SEEN && !all.contains_key(name) {
                all.clear();
            }
            all.entry(name.to_string()).or_default().clone()
        };
        samples.offer(query, self.config.samples);
    }

    pub fn tuning(&self, id: &str) -> Tuning {
        self.tuned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
            .unwrap_or_default()
    }

    fn set(&self, id: &str, tuning: Tuning) {
        let mut tuned = self.tuned.lock().unwrap_or_else(PoisonError::into_inner);
        if tuned.len() >= MAX_SEEN && !tuned.contains_key(id) {
            tuned.clear();
        }
        tuned.insert(id.to_string(), tuning);
    }
}

impl PgStore {
    /// Checks every sampled collection once: publishes its measured recall@10 and raises its
    /// settings while under the target. Returns (collection, measured recall) per collection.
    pub async fn check_recall(&self) -> Vec<(String, f64)> {
        let sampled: Vec<(String, Arc<Samples>)> = self
            .tuner
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect();
        let mut measured = Vec::new();
        for (name, samples) in sampled {
            let Ok(meta) = self.collection(&name).await else {
                self.tuner
                    .samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                continue;
            };
            let seen = self.seen(&meta.id);
            let kind = seen.kind;
            // Its unfiltered searches come from this replica's mirror (oversampled like `binary`).
            let mirrored = self.mirror_state(&meta.id) == Some(true);
            // Searched exactly anyway: nothing to measure.
            if (kind == IndexKind::None && !mirrored) || seen.count < self.exact_below {
                continue;
            }
            let (mut hit, mut total) = (0usize, 0usize);
            for q in samples.snapshot() {
                let started = std::time::Instant::now();
                let none = Metadata::new();
                let exact = self.search_plain(&meta, q.clone(), 10, none.clone(), true);
                let Ok((exact, _)) = exact.await else { break };
                let Ok((approx, _)) = self.search_plain(&meta, q, 10, none, false).await else {
                    break;
                };
                total += exact.len();
                hit += approx
                    .iter()
                    .filter(|a| exact.iter().any(|e| e.id == a.id))
                    .count();
                // Each exact scan reads the whole table (about 2 s at 1M on 2 cores): the check
                // keeps to its share of the time (`--recall-check-duty`), or it would take the
                // database's cores from the searches it measures.
                let duty = self.tuner.config.duty_permille;
                tokio::time::sleep(recall::pause_after(started.elapsed(), duty)).await;
            }
            if total == 0 {
                continue;
            }
            let recall = hit as f64 / total as f64;
            if let Some(gauge) = &self.tuner.gauge {
                gauge.with_label_values(&[&name]).set(recall);
            }
            let now = self.tuner.tuning(&meta.id);
            let (ef, oversample) = (
                now.ef_search.max(self.ef_search()),
                now.oversample.max(self.oversample()),
            );
            let config = &recall::for_collection(&self.tuner.config, &meta.options);
            let raised = if kind == IndexKind::Binary || mirrored {
                recall::raised(oversample, recall, config).map(|o| Tuning {
                    ef_search: ef,
                    oversample: o,
                })
            } else {
                let bound = RecallConfig {
                    max_oversample: MAX_EF_SEARCH,
                    ..*config
                };
                recall::raised(ef, recall, &bound).map(|e| Tuning {
                    ef_search: e,
                    oversample,
                })
            };
            if let Some(tuning) = raised {
                tracing::info!(collection = %name, measured = recall, ?tuning, "recall under its target: a wider search");
                self.tuner.set(&meta.id, tuning);
            }
            measured.push((name, recall));
        }
        measured
    }
}

/// Runs the recall check of `store` every `--recall-check-interval` while it lives (a task
/// holding it weakly), when called inside a tokio runtime.
pub fn start(store: Weak<PgStore>, config: RecallConfig) {
    if config.interval.is_zero() || config.samples == 0 {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no runtime: the PostgreSQL recall check does not run");
        return;
    };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(config.interval).await;
            let Some(store) = store.upgrade() else { return };
            store.check_recall().await;
        }
    });
}
