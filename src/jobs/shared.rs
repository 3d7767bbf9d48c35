//! The Batch API on a store shared by replicas (`--store postgres`): files, batches and finished
//! lines live in the store, not in this replica's memory, so any replica lists, reads, cancels
//! and downloads any key's own files and batches, and any replica works any batch under a
//! **lease**:
//!
//! - a replica claims a runnable batch (unfinished, its lease expired or never taken) for
//!   `--batch-lease`, renews the lease every third of it while it works, and lets it go when it
//!   stops (shutdown): a batch whose replica died is claimed by another once the lease expires;
//! - each finished line is stored keyed by (batch, line index) together with the batch's counts,
//!   only while this replica holds the lease; a line stored already is never stored again, so a
//!   takeover never redoes a finished line nor loses one (a line cut off midway is run again);
//! - the output and error files are assembled from the stored lines in input order.
//!
//! While a replica works a batch it keeps a copy in memory (the runner's view); the store's row
//! is the truth (a cancel on another replica reaches the worker at its next renewal).
//!
//! The store itself (PostgreSQL) is [`super::postgres::PgJobs`]; this is its seam, [`SharedStore`].

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::{Batch, Executor, FileMeta, JobsService, runner};
use crate::common::ServiceError;

/// A check run under the store's per-key lock: the key's uploaded files (count, bytes).
pub type FileCheck<'a> = Box<dyn FnOnce(usize, u64) -> Result<(), ServiceError> + Send + 'a>;
/// A check run under the store's per-key lock: the key's unfinished batches.
pub type BatchCheck<'a> = Box<dyn FnOnce(usize) -> Result<(), ServiceError> + Send + 'a>;
/// A change of a stored batch: `Ok(false)` leaves it as it was.
pub type Change<'a> = Box<dyn FnOnce(&mut Batch) -> Result<bool, ServiceError> + Send + 'a>;

/// Files, batches and line results shared by every replica. Each method is atomic in the store.
/// `seq` of what is returned is the store's creation order.
#[async_trait::async_trait]
pub trait SharedStore: Send + Sync + 'static {
    /// Stores an uploaded file after `check` passed on the owner's uploaded files (under a lock
    /// per owner, so concurrent uploads on any replicas cannot pass a bound together).
    async fn create_file(
        &self,
        meta: &FileMeta,
        content: Bytes,
        check: FileCheck<'_>,
    ) -> Result<FileMeta, ServiceError>;
    /// `owner`'s files (metadata only), any order.
    async fn list_files(&self, owner: &str) -> Result<Vec<FileMeta>, ServiceError>;
    async fn get_file(&self, id: &str) -> Result<Option<FileMeta>, ServiceError>;
    async fn file_content(&self, id: &str) -> Result<Option<Bytes>, ServiceError>;
    /// Deletes `owner`'s file `id`: `Ok(false)` if it does not exist; refused (409) while an
    /// unfinished batch reads it.
    async fn delete_file(&self, owner: &str, id: &str) -> Result<bool, ServiceError>;
    /// Stores a new batch after `check` passed on the owner's unfinished batches, its input
    /// still being one of the owner's files (same lock as uploads and deletes).
    async fn create_batch(
        &self,
        batch: &Batch,
        check: BatchCheck<'_>,
    ) -> Result<Batch, ServiceError>;
    /// `owner`'s batches, any order.
    async fn list_batches(&self, owner: &str) -> Result<Vec<Batch>, ServiceError>;
    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, ServiceError>;
    /// Changes batch `id` with `change` (the row locked meanwhile); with `lease_owner`, only
    /// while that replica holds its lease (else an error). `None`: no such batch.
    async fn update_batch(
        &self,
        id: &str,
        lease_owner: Option<&str>,
        change: Change<'_>,
    ) -> Result<Option<Batch>, ServiceError>;
    /// Takes the lease of at most `n` runnable batches (oldest first) for `replica`.
    async fn claim(
        &self,
        replica: &str,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<Batch>, ServiceError>;
    /// Extends `replica`'s lease of `id`: the batch as stored, or `None` once the lease is lost.
    async fn renew(
        &self,
        replica: &str,
        id: &str,
        lease: Duration,
    ) -> Result<Option<Batch>, ServiceError>;
    /// Lets another replica claim `id` at once.
    async fn release(&self, replica: &str, id: &str) -> Result<(), ServiceError>;
    /// Stores line `index`'s output line with the batch's counts, once, while `replica` holds
    /// the lease (else an error).
    async fn write_line(
        &self,
        replica: &str,
        batch: &str,
        index: usize,
        ok: bool,
        line: &Value,
    ) -> Result<(), ServiceError>;
    /// A batch's stored lines: index -> (succeeded, bytes of its output line).
    async fn line_index(&self, batch: &str) -> Result<BTreeMap<usize, (bool, u64)>, ServiceError>;
    /// Writes the output and error files (ids in the metadata, overwritten if they exist) from
    /// the stored lines in index order, then `extra_errors`, while `replica` holds the lease (else
    /// an error); a file with no line is not written (`0`). Returns the bytes of each.
    async fn assemble(
        &self,
        replica: &str,
        batch: &str,
        output: &mut FileMeta,
        errors: &mut FileMeta,
        extra_errors: &[Value],
    ) -> Result<(u64, u64), ServiceError>;
    async fn remove_lines(&self, batch: &str) -> Result<(), ServiceError>;
}

/// A shared store, this replica's name in its leases, and the lease's length.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn SharedStore>,
    pub replica: String,
    pub lease: Duration,
}

impl Shared {
    pub fn new(store: Arc<dyn SharedStore>, lease: Duration) -> Shared {
        Shared {
            store,
            replica: format!("replica-{}", uuid::Uuid::new_v4().simple()),
            lease,
        }
    }
}

/// Claims runnable batches while this replica has a free slot, works each (the runner's
/// `drive`) while a task renews its lease, and lets it go when done or stopped.
pub(super) async fn schedule(jobs: JobsService, shared: Shared, executor: Arc<dyn Executor>) {
    let slots = Arc::new(Semaphore::new(jobs.shared.config.max_jobs_in_flight.max(1)));
    let shutdown = jobs.shared.embed.clone();
    let shutdown = shutdown.shutdown_started();
    tokio::pin!(shutdown);
    // Whether the last claim failed (logged once until one succeeds again).
    let mut failing = false;
    loop {
        let free = slots.available_permits();
        if free > 0 {
            match shared
                .store
                .claim(&shared.replica, shared.lease, free)
                .await
            {
                Ok(claimed) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("claiming batches works again");
                    }
                    for batch in claimed {
                        // Its lease ran out while this replica still works it (the store was
                        // unreachable for a while): claimed again, and the worker goes on.
                        if jobs.state().running.contains(&batch.id) {
                            continue;
                        }
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            break;
                        };
                        let (jobs, executor, shared) =
                            (jobs.clone(), Arc::clone(&executor), shared.clone());
                        tokio::spawn(async move {
                            work(&jobs, &shared, &executor, batch).await;
                            drop(slot);
                            jobs.shared.wake.notify_one();
                        });
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "claiming batches failed; retrying");
                    }
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => {
                jobs.shared.stopping.store(true, Ordering::Release);
                return;
            }
            () = jobs.shared.wake.notified() => {}
            () = tokio::time::sleep(runner::TICK) => {}
        }
    }
}

/// Works one claimed batch under its lease.
async fn work(jobs: &JobsService, shared: &Shared, executor: &Arc<dyn Executor>, batch: Batch) {
    let id = batch.id.clone();
    {
        let mut state = jobs.state();
        state.batches.insert(id.clone(), batch);
        state.running.insert(id.clone());
        state.lost.remove(&id);
    }
    let renewer = tokio::spawn(renew(jobs.clone(), shared.clone(), id.clone()));
    if let Err(e) = runner::drive(jobs, executor, &id).await {
        tracing::warn!(batch = %id, error = %e, "batch interrupted; it will be resumed");
        tokio::time::sleep(runner::TICK).await;
    }
    renewer.abort();
    if let Err(e) = shared.store.release(&shared.replica, &id).await {
        tracing::warn!(batch = %id, error = %e, "letting a batch's lease go failed; it expires");
    }
    let mut state = jobs.state();
    state.running.remove(&id);
    state.batches.remove(&id);
    state.lost.remove(&id);
}

/// Renews the lease of `id` every third of it, bringing the stored batch's status (a cancel on
/// another replica) into the runner's copy; marks the batch lost once the lease is.
async fn renew(jobs: JobsService, shared: Shared, id: String) {
    let every = (shared.lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        match shared.store.renew(&shared.replica, &id, shared.lease).await {
            Ok(Some(stored)) => {
                if let Some(b) = jobs.state().batches.get_mut(&id)
                    && stored.status == super::Status::Cancelling
                    && b.status == super::Status::InProgress
                {
                    b.status = stored.status;
                    b.cancelling_at = stored.cancelling_at;
                }
            }
            Ok(None) => {
                tracing::warn!(batch = %id, "this replica lost a batch's lease; another works it");
                jobs.state().lost.insert(id);
                return;
            }
            // PostgreSQL unreachable for a moment: the lease may still hold; try again.
            Err(e) => tracing::warn!(batch = %id, error = %e, "renewing a batch's lease failed"),
        }
    }
}

/// The runner's store operations, on whichever store this replica uses.
impl JobsService {
    pub(super) async fn line_index_any(
        &self,
        batch: &str,
    ) -> Result<BTreeMap<usize, (bool, u64)>, ServiceError> {
        if let Some(pg) = &self.shared.pg {
            return pg.store.line_index(batch).await;
        }
        let (store, batch) = (self.shared.store.clone(), batch.to_string());
        super::blocking(move || store.line_index(&batch)).await
    }

    pub(super) async fn write_line_any(
        &self,
        batch: &str,
        index: usize,
        ok: bool,
        line: Value,
    ) -> Result<(), ServiceError> {
        if let Some(pg) = &self.shared.pg {
            return pg
                .store
                .write_line(&pg.replica, batch, index, ok, &line)
                .await;
        }
        let (store, batch) = (self.shared.store.clone(), batch.to_string());
        super::blocking(move || store.write_line(&batch, index, ok, &line)).await
    }

    /// A file's content: `Err` (a message for the batch's errors) if it cannot be read.
    pub(super) async fn read_file_any(
        &self,
        id: &str,
    ) -> Result<Result<Bytes, String>, ServiceError> {
        if let Some(pg) = &self.shared.pg {
            return Ok(pg
                .store
                .file_content(id)
                .await?
                .ok_or_else(|| "the input file was deleted".to_string()));
        }
        let (store, id) = (self.shared.store.clone(), id.to_string());
        match tokio::task::spawn_blocking(move || store.read_file(&id)).await {
            Ok(read) => Ok(read.map_err(|e| e.to_string())),
            Err(e) => Err(ServiceError::Internal(format!(
                "reading a batch input failed: {e}"
            ))),
        }
    }

    /// Writes a batch's output and error files from its lines (see [`SharedStore::assemble`]);
    /// returns those written.
    pub(super) async fn assemble_any(
        &self,
        batch: &str,
        mut output: FileMeta,
        mut errors: FileMeta,
        extra: Vec<Value>,
    ) -> Result<(Option<FileMeta>, Option<FileMeta>), ServiceError> {
        let (out_bytes, err_bytes) = match &self.shared.pg {
            Some(pg) => {
                pg.store
                    .assemble(&pg.replica, batch, &mut output, &mut errors, &extra)
                    .await?
            }
            None => {
                let (store, batch) = (self.shared.store.clone(), batch.to_string());
                let (sizes, o, e) = super::blocking(move || {
                    let sizes = store.assemble(&batch, &mut output, &mut errors, &extra)?;
                    Ok((sizes, output, errors))
                })
                .await?;
                (output, errors) = (o, e);
                sizes
            }
        };
        let written = (
            (out_bytes > 0).then_some(output),
            (err_bytes > 0).then_some(errors),
        );
        if self.shared.pg.is_none() {
            let mut state = self.state();
            for file in written.0.iter().chain(&written.1) {
                state.files.insert(file.id.clone(), file.clone());
            }
        }
        Ok(written)
    }

    pub(super) async fn remove_lines_any(&self, batch: &str) -> Result<(), ServiceError> {
        if let Some(pg) = &self.shared.pg {
            return pg.store.remove_lines(batch).await;
        }
        let (store, batch) = (self.shared.store.clone(), batch.to_string());
        super::blocking(move || store.remove_lines(&batch)).await
    }

    /// Changes the stored batch `id` while this replica holds its lease, and its copy here.
    pub(super) async fn update_shared(
        &self,
        pg: &Shared,
        id: &str,
        change: impl FnOnce(&mut Batch) + Send,
    ) -> Result<Option<Batch>, ServiceError> {
        let change: Change<'_> = Box::new(|b| {
            change(b);
            Ok(true)
        });
        let batch = pg.store.update_batch(id, Some(&pg.replica), change).await?;
        if let Some(batch) = &batch {
            let mut state = self.state();
            let counts = state.batches.get(id).map(|b| b.request_counts);
            let mut kept = batch.clone();
            // This replica counts its lines as they finish; the stored counts follow.
            if let (Some(counts), false) = (counts, kept.status.is_final()) {
                kept.request_counts.completed = kept.request_counts.completed.max(counts.completed);
                kept.request_counts.failed = kept.request_counts.failed.max(counts.failed);
            }
            state.batches.insert(id.to_string(), kept);
        }
        Ok(batch)
    }
}
