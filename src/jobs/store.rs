//! The Batch API's files on disk, under `<data-dir>/jobs/`:
//!
//! - `files/<id>.jsonl` (content) and `files/<id>.json` (its [`FileMeta`], written second: the
//!   commit point; content without metadata is an interrupted upload, removed on open);
//! - `batches/<id>.json`: a [`Batch`]'s state, rewritten on each change of status;
//! - `lines/<batch id>/<index>.json`: one finished line ([`LineRecord`]), written once the line's
//!   answer is in. A batch's progress is the set of these files; they are removed once the
//!   batch's output and error files are written.
//!
//! Every write is atomic (temporary file, fsync, rename, directory fsync), so a crash leaves each
//! file whole or absent. Ids come from the service (never from a client) before they name a path.

use std::{
    collections::{BTreeMap, HashMap},
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Batch, FileMeta};
use crate::classify::classifier::write_atomic;

/// One finished line: whether it succeeded (output file) or not (error file), and its output line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineRecord {
    pub ok: bool,
    pub line: Value,
}

#[derive(Clone)]
pub struct Store {
    root: Arc<PathBuf>,
}

fn json_error(e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, e)
}

impl Store {
    pub fn open(root: &Path) -> std::io::Result<Store> {
        for dir in ["files", "batches", "lines"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Store {
            root: Arc::new(root.to_path_buf()),
        })
    }

    fn file_meta(&self, id: &str) -> PathBuf {
        self.root.join("files").join(format!("{id}.json"))
    }

    fn file_data(&self, id: &str) -> PathBuf {
        self.root.join("files").join(format!("{id}.jsonl"))
    }

    fn batch(&self, id: &str) -> PathBuf {
        self.root.join("batches").join(format!("{id}.json"))
    }

    fn lines(&self, batch: &str) -> PathBuf {
        self.root.join("lines").join(batch)
    }

    /// Everything stored: files and batches by id. Interrupted uploads are removed; an unreadable
    /// record is skipped with a warning.
    #[allow(clippy::type_complexity)]
    pub fn load(&self) -> std::io::Result<(HashMap<String, FileMeta>, HashMap<String, Batch>)> {
        let mut files = HashMap::new();
        let mut data = Vec::new();
        for entry in std::fs::read_dir(self.root.join("files"))? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => match read_json::<FileMeta>(&path) {
                    Ok(meta) => {
                        files.insert(meta.id.clone(), meta);
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable batch file record")
                    }
                },
                Some("jsonl") => data.push(path),
                _ => {}
            }
        }
        for path in data {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if !files.contains_key(id) {
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut batches = HashMap::new();
        for entry in std::fs::read_dir(self.root.join("batches"))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_json::<Batch>(&path) {
                Ok(batch) => {
                    if batch.status.is_final() {
                        // Its lines are in its output files: what a crash left behind goes.
                        let _ = std::fs::remove_dir_all(self.lines(&batch.id));
                    }
                    batches.insert(batch.id.clone(), batch);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable batch record")
                }
            }
        }
        Ok((files, batches))
    }

    /// Writes a file's content, then its metadata (the commit point).
    pub fn write_file(&self, meta: &FileMeta, content: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.file_data(&meta.id), content)?;
        write_atomic(
            &self.file_meta(&meta.id),
            &serde_json::to_vec(meta).map_err(json_error)?,
        )
    }

    pub fn read_file(&self, id: &str) -> std::io::Result<Bytes> {
        std::fs::read(self.file_data(id)).map(Bytes::from)
    }

    /// Removes a file: metadata first, so a crash midway leaves an orphan that `load` removes.
    pub fn delete_file(&self, id: &str) -> std::io::Result<()> {
        remove_if_present(&self.file_meta(id))?;
        remove_if_present(&self.file_data(id))
    }

    pub fn write_batch(&self, batch: &Batch) -> std::io::Result<()> {
        write_atomic(
            &self.batch(&batch.id),
            &serde_json::to_vec(batch).map_err(json_error)?,
        )
    }

    /// Records one finished line (overwriting a record of the same index: a redo is idempotent).
    pub fn write_line(
        &self,
        batch: &str,
        index: usize,
        record: &LineRecord,
    ) -> std::io::Result<()> {
        let dir = self.lines(batch);
        std::fs::create_dir_all(&dir)?;
        write_atomic(
            &dir.join(format!("{index}.json")),
            &serde_json::to_vec(record).map_err(json_error)?,
        )
    }

    /// A batch's finished lines by index.
    pub fn read_lines(&self, batch: &str) -> std::io::Result<BTreeMap<usize, LineRecord>> {
        let mut lines = BTreeMap::new();
        let entries = match std::fs::read_dir(self.lines(batch)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(lines),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let Some(index) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                // A temporary file a crash left behind.
                let _ = std::fs::remove_file(&path);
                continue;
            };
            lines.insert(index, read_json(&path)?);
        }
        Ok(lines)
    }

    pub fn remove_lines(&self, batch: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.lines(batch)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(json_error)
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
