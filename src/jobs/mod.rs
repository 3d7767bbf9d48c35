//! Bulk jobs: OpenAI's Batch API in domain terms. A key uploads a JSONL file of requests
//! ([`JobsService::create_file`]), starts a batch over it ([`JobsService::create_batch`]), and a
//! runner ([`runner`]) works the batch's lines in the background, each through the SAME code the
//! synchronous route runs (an [`Executor`] the HTTP door provides), at the batchers' lowest
//! priority ([`crate::embed::priority::background`]) so live calls always go first.
//!
//! - Durable: files and batch states live under `<data-dir>/jobs/` ([`store`]), every write
//!   atomic (temporary file, fsync, rename); with `--store postgres` in PostgreSQL
//!   ([`postgres`], behind the [`SharedStore`] seam of [`shared`]), shared by every replica, each
//!   batch worked by one replica at a time under a lease and taken over when that replica dies.
//! - Resumable: each finished line is written to its own file keyed by the line's index before it
//!   counts, so a restart (even `kill -9`) never redoes a finished line, and a line cut off midway
//!   is simply run again; the output file is assembled from those line files in input order, each
//!   line exactly once.
//! - Bounded: file bytes and lines, files and bytes per key, unfinished batches per key, jobs in
//!   flight, lines of one job at once, output bytes per batch ([`JobsConfig`], each a flag).
//! - Owned: a key sees, reads and cancels only its own files and batches (another key's are
//!   "not found"); the lines' usage counts for the key that created the batch.
//!
//! Nothing here knows HTTP: the wire shapes (multipart, OpenAI's JSON objects) are in
//! `http/batches.rs`.

mod checks;
pub mod postgres;
mod runner;
mod shared;
mod store;

pub use checks::Page;
use checks::{check_jsonl, page};
pub use shared::{BatchCheck, Change, FileCheck, SharedStore};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{common::ServiceError, embed::EmbedService};

/// The bounds of the Batch API (`--batch-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsConfig {
    /// Bytes of one uploaded file.
    pub max_file_bytes: u64,
    /// Requests (non-blank lines) of one uploaded file.
    pub max_file_lines: usize,
    /// Uploaded files one key may keep.
    pub max_files_per_key: usize,
    /// Bytes of uploaded files one key may keep.
    pub max_bytes_per_key: u64,
    /// Unfinished batches one key may have.
    pub max_active_batches_per_key: usize,
    /// Batches worked on at once by this replica.
    pub max_jobs_in_flight: usize,
    /// Lines of one batch worked on at once.
    pub line_concurrency: usize,
    /// Bytes of one batch's output (answers and errors together); lines past it fail with
    /// `output_too_large`.
    pub max_output_bytes: u64,
    /// How long `completion_window: "24h"` really lasts (24 h; shorter in tests).
    pub completion_window_secs: u64,
    /// With a shared store: how long a replica's claim on a batch lasts unless renewed (it is
    /// renewed every third of it); a batch whose replica died is taken over after it.
    pub lease: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            max_file_bytes: 64 << 20,
            max_file_lines: 50_000,
            max_files_per_key: 100,
            max_bytes_per_key: 1 << 30,
            max_active_batches_per_key: 16,
            max_jobs_in_flight: 2,
            line_concurrency: 4,
            max_output_bytes: 512 << 20,
            completion_window_secs: 24 * 3600,
            lease: Duration::from_secs(30),
        }
    }
}

/// What a batch's lines call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
    #[serde(rename = "/v1/classify")]
    Classify,
}

impl Endpoint {
    pub const ALL: [Endpoint; 2] = [Endpoint::Embeddings, Endpoint::Classify];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Classify => "/v1/classify",
        }
    }

    pub fn parse(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// A batch's state (OpenAI's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the batch is over (nothing more will happen to it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Completed | Status::Expired | Status::Cancelled
        )
    }
}

/// An uploaded file, or a batch's output or error file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: String,
    /// The key's name (empty without keys).
    pub owner: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    /// `batch` (uploaded) or `batch_output` (written by a batch).
    pub purpose: String,
    /// Creation order, for listing.
    pub seq: u64,
}

/// A batch's line counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Why a batch's input was refused (OpenAI's `errors.data[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    /// 1-based line of the input file.
    pub line: Option<u64>,
}

/// A batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    pub owner: String,
    pub seq: u64,
    pub endpoint: Endpoint,
    pub input_file_id: String,
    pub completion_window: String,
    pub metadata: Option<BTreeMap<String, String>>,
    pub status: Status,
    pub created_at: u64,
    pub expires_at: u64,
    pub in_progress_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Vec<InputError>,
    pub request_counts: Counts,
    /// While finalizing: the state it ends in.
    #[serde(default)]
    pub ending: Option<Status>,
}

/// One line's answer from the synchronous route's code: its HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status_code: u16,
    pub body: Value,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs one line's request body through the synchronous route of `endpoint` (the door provides
/// it, so a line's answer is the route's answer).
pub trait Executor: Send + Sync + 'static {
    fn execute(&self, endpoint: Endpoint, body: Value) -> BoxFuture<Answer>;
}

struct State {
    files: HashMap<String, FileMeta>,
    batches: HashMap<String, Batch>,
    /// Batches a runner task is working on.
    running: HashSet<String>,
    /// Batches whose lease this replica lost (shared store): their lines stop.
    lost: HashSet<String>,
    seq: u64,
}

struct Shared {
    config: JobsConfig,
    store: store::Store,
    /// With `--store postgres`: the shared store, which then holds everything (the fields above
    /// hold only the batches this replica works on).
    pg: Option<shared::Shared>,
    embed: EmbedService,
    state: Mutex<State>,
    /// Serializes every state change (a check, its disk write, then memory), so bounds hold
    /// under concurrent calls.
    writes: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    /// Lines executing now (their request permits are not live calls).
    lines_in_flight: std::sync::atomic::AtomicUsize,
    /// Set when the server begins shutting down: no new lines start.
    stopping: std::sync::atomic::AtomicBool,
}

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct JobsService {
    shared: Arc<Shared>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn not_found(what: &str, id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no {what} with id {id:?}"))
}

fn io_error(e: std::io::Error) -> ServiceError {
    tracing::error!(error = %e, "batch store write failed");
    ServiceError::Unavailable(format!("the batch store under --data-dir failed: {e}"))
}

impl JobsService {
    /// Opens (creating) `<data_dir>/jobs` and reads what it holds. Start-up only.
    pub fn open(
        data_dir: &std::path::Path,
        config: JobsConfig,
        embed: EmbedService,
        shared_store: Option<Arc<dyn SharedStore>>,
    ) -> std::io::Result<JobsService> {
        let store = store::Store::open(&data_dir.join("jobs"))?;
        let (files, batches) = match shared_store {
            Some(_) => Default::default(),
            None => store.load()?,
        };
        let seq = files
            .values()
            .map(|f| f.seq)
            .chain(batches.values().map(|b| b.seq))
            .max()
            .unwrap_or(0);
        Ok(JobsService {
            shared: Arc::new(Shared {
                config,
                store,
                pg: shared_store.map(|s| shared::Shared::new(s, config.lease)),
                embed,
                state: Mutex::new(State {
                    files,
                    batches,
                    running: HashSet::new(),
                    lost: HashSet::new(),
                    seq,
                }),
                writes: tokio::sync::Mutex::new(()),
                wake: tokio::sync::Notify::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                lines_in_flight: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    pub fn config(&self) -> &JobsConfig {
        &self.shared.config
    }

    /// Starts working batches (those left unfinished by an earlier run first) with `executor`,
    /// until the server shuts down.
    pub fn start(&self, executor: Arc<dyn Executor>) {
        match &self.shared.pg {
            Some(pg) => tokio::spawn(shared::schedule(self.clone(), pg.clone(), executor)),
            None => tokio::spawn(runner::schedule(self.clone(), executor)),
        };
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn next_seq(&self) -> u64 {
        let mut state = self.state();
        state.seq += 1;
        state.seq
    }

    /// Stores an uploaded JSONL file of requests for `owner`. Refused: over the file's bytes or
    /// lines, over the key's files or bytes, a line that is not a JSON object (named by number).
    pub async fn create_file(
        &self,
        owner: &str,
        filename: &str,
        content: Bytes,
    ) -> Result<FileMeta, ServiceError> {
        let config = &self.shared.config;
        if content.len() as u64 > config.max_file_bytes {
            return Err(ServiceError::invalid_request(format!(
                "file: {} bytes, over the limit of {} (--batch-max-file-bytes)",
                content.len(),
                config.max_file_bytes
            )));
        }
        let (max_lines, checked) = (config.max_file_lines, content.clone());
        let lines =
            match tokio::task::spawn_blocking(move || check_jsonl(&checked, max_lines)).await {
                Ok(lines) => lines?,
                Err(e) => {
                    return Err(ServiceError::Internal(format!(
                        "checking a batch file failed: {e}"
                    )));
                }
            };
        if lines == 0 {
            return Err(ServiceError::invalid_request(
                "file: no request lines; a batch file has one JSON request per line",
            ));
        }
        let meta = FileMeta {
            id: format!("file-{}", uuid::Uuid::new_v4().simple()),
            owner: owner.to_string(),
            bytes: content.len() as u64,
            created_at: now(),
            filename: filename.to_string(),
            purpose: "batch".into(),
            seq: 0,
        };
        if let Some(pg) = &self.shared.pg {
            let check = Box::new(|count, bytes| self.check_files(count, bytes, meta.bytes));
            return pg.store.create_file(&meta, content, check).await;
        }
        let _write = self.shared.writes.lock().await;
        {
            let state = self.state();
            let (count, bytes) = state
                .files
                .values()
                .filter(|f| f.owner == owner && f.purpose == "batch")
                .fold((0usize, 0u64), |(n, b), f| (n + 1, b + f.bytes));
            self.check_files(count, bytes, meta.bytes)?;
        }
        let meta = FileMeta {
            seq: self.next_seq(),
            ..meta
        };
        self.write_file(meta, content).await
    }

    /// Whether a key holding `count` files of `bytes` may add one of `adding` bytes.
    fn check_files(&self, count: usize, bytes: u64, adding: u64) -> Result<(), ServiceError> {
        let config = &self.shared.config;
        if count >= config.max_files_per_key {
            return Err(ServiceError::ResourceExhausted(format!(
                "this key has {count} files, the most it may keep (--batch-max-files-per-key); delete some first"
            )));
        }
        if bytes + adding > config.max_bytes_per_key {
            return Err(ServiceError::ResourceExhausted(format!(
                "this key's files would hold {} bytes, over --batch-max-bytes-per-key {}; delete some first",
                bytes + adding,
                config.max_bytes_per_key
            )));
        }
        Ok(())
    }

    async fn write_file(&self, meta: FileMeta, content: Bytes) -> Result<FileMeta, ServiceError> {
        let store = self.shared.store.clone();
        let stored = meta.clone();
        blocking(move || store.write_file(&stored, &content)).await?;
        self.state().files.insert(meta.id.clone(), meta.clone());
        Ok(meta)
    }

    /// `owner`'s files, newest first (or oldest with `desc` false), optionally of one purpose.
    pub async fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        desc: bool,
    ) -> Result<Page<FileMeta>, ServiceError> {
        let all: Vec<FileMeta> = match &self.shared.pg {
            Some(pg) => pg.store.list_files(owner).await?,
            None => self.state().files.values().cloned().collect(),
        };
        let all = all
            .into_iter()
            .filter(|f| f.owner == owner && purpose.is_none_or(|p| f.purpose == p))
            .map(|f| (f.seq, f.id.clone(), f))
            .collect();
        Ok(page(all, after, limit, desc))
    }

    pub async fn get_file(&self, owner: &str, id: &str) -> Result<FileMeta, ServiceError> {
        let found = match &self.shared.pg {
            Some(pg) => pg.store.get_file(id).await?,
            None => self.state().files.get(id).cloned(),
        };
        found
            .filter(|f| f.owner == owner)
            .ok_or_else(|| not_found("file", id))
    }

    pub async fn file_content(&self, owner: &str, id: &str) -> Result<Bytes, ServiceError> {
        let meta = self.get_file(owner, id).await?;
        if let Some(pg) = &self.shared.pg {
            return pg
                .store
                .file_content(&meta.id)
                .await?
                .ok_or_else(|| not_found("file", id));
        }
        let store = self.shared.store.clone();
        blocking(move || store.read_file(&meta.id)).await
    }

    /// Deletes one of `owner`'s files; refused (409) while an unfinished batch reads it.
    pub async fn delete_file(&self, owner: &str, id: &str) -> Result<(), ServiceError> {
        if let Some(pg) = &self.shared.pg {
            return match pg.store.delete_file(owner, id).await? {
                true => Ok(()),
                false => Err(not_found("file", id)),
            };
        }
        let _write = self.shared.writes.lock().await;
        let meta = self.get_file(owner, id).await?;
        let used = self
            .state()
            .batches
            .values()
            .any(|b| b.input_file_id == meta.id && !b.status.is_final());
        if used {
            return Err(file_in_use(id));
        }
        let store = self.shared.store.clone();
        let file_id = meta.id.clone();
        blocking(move || store.delete_file(&file_id)).await?;
        self.state().files.remove(&meta.id);
        Ok(())
    }

    /// Creates a batch over one of `owner`'s uploaded files; it starts `validating`.
    pub async fn create_batch(
        &self,
        owner: &str,
        input_file_id: &str,
        endpoint: Endpoint,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<Batch, ServiceError> {
        let _write = self.shared.writes.lock().await;
        let input = self.get_file(owner, input_file_id).await.map_err(|_| {
            ServiceError::NotFound(format!("input_file_id: no file with id {input_file_id:?}"))
        })?;
        if input.purpose != "batch" {
            return Err(ServiceError::invalid_request(format!(
                "input_file_id: file {input_file_id:?} has purpose {:?}; a batch reads a file uploaded with purpose \"batch\"",
                input.purpose
            )));
        }
        let most = self.shared.config.max_active_batches_per_key;
        let check_active = move |active: usize| {
            if active >= most {
                return Err(ServiceError::ResourceExhausted(format!(
                    "this key has {active} unfinished batches, the most it may have (--batch-max-active-per-key {most}); wait for one to finish or cancel one"
                )));
            }
            Ok(())
        };
        let created_at = now();
        let batch = Batch {
            id: format!("batch_{}", uuid::Uuid::new_v4().simple()),
            owner: owner.to_string(),
            seq: 0,
            endpoint,
            input_file_id: input.id,
            completion_window: "24h".into(),
            metadata,
            status: Status::Validating,
            created_at,
            expires_at: created_at + self.shared.config.completion_window_secs,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            output_file_id: None,
            error_file_id: None,
            errors: Vec::new(),
            request_counts: Counts::default(),
            ending: None,
        };
        if let Some(pg) = &self.shared.pg {
            let batch = pg
                .store
                .create_batch(&batch, Box::new(check_active))
                .await?;
            self.shared.wake.notify_one();
            return Ok(batch);
        }
        check_active(
            self.state()
                .batches
                .values()
                .filter(|b| b.owner == owner && !b.status.is_final())
                .count(),
        )?;
        let batch = Batch {
            seq: self.next_seq(),
            ..batch
        };
        self.persist(&batch).await?;
        self.shared.wake.notify_one();
        Ok(batch)
    }

    /// Writes `batch` (durably) and then keeps it in memory.
    async fn persist(&self, batch: &Batch) -> Result<(), ServiceError> {
        let store = self.shared.store.clone();
        let stored = batch.clone();
        blocking(move || store.write_batch(&stored)).await?;
        self.state().batches.insert(batch.id.clone(), batch.clone());
        Ok(())
    }

    /// `owner`'s batches, newest first.
    pub async fn list_batches(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Batch>, ServiceError> {
        let all: Vec<Batch> = match &self.shared.pg {
            Some(pg) => pg.store.list_batches(owner).await?,
            None => self.state().batches.values().cloned().collect(),
        };
        let all = all
            .into_iter()
            .filter(|b| b.owner == owner)
            .map(|b| (b.seq, b.id.clone(), b))
            .collect();
        Ok(page(all, after, limit, true))
    }

    pub async fn get_batch(&self, owner: &str, id: &str) -> Result<Batch, ServiceError> {
        let found = match &self.shared.pg {
            Some(pg) => pg.store.get_batch(id).await?,
            None => self.state().batches.get(id).cloned(),
        };
        found
            .filter(|b| b.owner == owner)
            .ok_or_else(|| not_found("batch", id))
    }

    /// Cancels one of `owner`'s batches: `cancelling` at once, `cancelled` once the lines being
    /// worked on are done (what finished is kept in the output). A batch that completed, failed or
    /// expired: 409.
    pub async fn cancel_batch(&self, owner: &str, id: &str) -> Result<Batch, ServiceError> {
        let cancel = |batch: &mut Batch| {
            if batch.owner != owner {
                return Err(not_found("batch", id));
            }
            match batch.status {
                Status::Validating | Status::InProgress => {}
                // Cancelling again is answered with the batch as it is.
                Status::Cancelling | Status::Cancelled => return Ok(false),
                other => {
                    return Err(ServiceError::Aborted(format!(
                        "batch {id:?} is {}; only a validating or in-progress batch can be cancelled",
                        other.as_str()
                    )));
                }
            }
            batch.status = Status::Cancelling;
            batch.cancelling_at = Some(now());
            Ok(true)
        };
        if let Some(pg) = &self.shared.pg {
            let batch = pg.store.update_batch(id, None, Box::new(cancel)).await?;
            self.shared.wake.notify_one();
            return batch.ok_or_else(|| not_found("batch", id));
        }
        let _write = self.shared.writes.lock().await;
        let mut batch = self.get_batch(owner, id).await?;
        if cancel(&mut batch)? {
            self.persist(&batch).await?;
            self.shared.wake.notify_one();
        }
        Ok(batch)
    }
}

/// Why a file cannot be deleted now.
pub fn file_in_use(id: &str) -> ServiceError {
    ServiceError::Aborted(format!(
        "file {id:?} is the input of a batch still running; cancel the batch first"
    ))
}

/// Runs blocking disk work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ServiceError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(io_error(e)),
        Err(e) => Err(ServiceError::Internal(format!(
            "a batch store task failed: {e}"
        ))),
    }
}
