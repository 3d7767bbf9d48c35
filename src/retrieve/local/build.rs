//! The background switch of a collection to its approximate index: built (or opened from its
//! saved graph) off the write path, the journal of writes made meanwhile replayed, swapped in
//! under the write lock.

use std::{
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Instant,
};

use super::{Collection, LocalStore, Op, kind_of};
use crate::retrieve::{
    ann::{AnnIndex, AnnParams, persist},
    index::{Metadata, VectorIndex},
};

impl LocalStore {
    /// Builds the approximate index from `snapshot`: from the saved graph when there is one
    /// (repaired when few items differ, saved again then), else from scratch. Then replays the
    /// journal and swaps it in under the write lock.
    pub(super) fn build_in_background(
        collection: &Collection,
        threads: usize,
        params: AnnParams,
        dir: &std::path::Path,
        snapshot: &[(String, Vec<f32>, Arc<Metadata>)],
    ) {
        let started = Instant::now();
        let (name, id, dim) = (
            &collection.meta.name,
            &collection.meta.id,
            collection.meta.dimension,
        );
        let built = if params.graph && persist::paths(dir, name).1.exists() {
            AnnIndex::open(dim, threads, params, snapshot, dir, name, id).map(|(ann, how)| {
                tracing::info!(collection = %name, how = ?how, "approximate index opened from the saved graph");
                if how != persist::Opened::Loaded
                    && let Err(e) = ann.save(dir, name, id)
                {
                    tracing::warn!(collection = %name, error = %e, "could not save the HNSW graph");
                }
                ann
            })
        } else {
            AnnIndex::build(dim, threads, params, snapshot)
        };
        let mut index = collection
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let ops = collection
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        match built {
            Ok(mut ann) => {
                let replayed = ops.len();
                for op in ops {
                    match op {
                        Op::Upsert(id, v, m) => ann.upsert(id, &v, m),
                        Op::Delete(id) => {
                            ann.delete(&id);
                        }
                    }
                }
                tracing::info!(collection = %name, items = ann.len(), replayed, ms = started.elapsed().as_millis() as u64, "switched to the approximate index");
                collection.count.store(ann.len(), Ordering::Release);
                *collection
                    .kind
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = kind_of(&ann);
                *index = Box::new(ann);
            }
            // Stays exact; the next write tries again.
            Err(e) => {
                tracing::error!(collection = %name, error = %e, "could not build the approximate index; searching exactly")
            }
        }
    }
}
