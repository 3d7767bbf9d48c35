//! The Batch API's files on disk, under `<data-dir>/jobs/`:
//!
//! - `files/<id>.jsonl` (content) and `files/<id>.json` (its [`FileMeta`], written second: the
//!   commit point; content without metadata is an interrupted upload, removed on open);
//! - `batches/<id>.json`: a [`Batch`]'s state, rewritten on each change of status;
//! - `lines/<batch id>/<index>.ok.json` or `<index>.err.json`: one finished line's output line,
//!   written once the line's answer is in. A batch's progress is the set of these files; they are removed once the
//!   batch's output and error files are written.
//!
//! Every write is atomic (temporary file, fsync, rename, directory fsync), so a crash leaves each
//! file whole or absent. Ids come from the service (never from a client) before they name a path.

use std::{
    collections::{BTreeMap, HashMap},
    io::{ErrorKind, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{Batch, FileMeta};
use crate::classify::classifier::write_atomic;

fn line_name(index: usize, ok: bool) -> String {
    format!("{index}.{}.json", if ok { "ok" } else { "err" })
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

    /// Records one finished line as `<index>.ok.json` or `<index>.err.json` (its output line), so
    /// listing the directory tells what is done without reading it. Overwrites a record of the same
    /// index: a redo is idempotent.
    pub fn write_line(
        &self,
        batch: &str,
        index: usize,
        ok: bool,
        line: &Value,
    ) -> std::io::Result<()> {
        let dir = self.lines(batch);
        std::fs::create_dir_all(&dir)?;
        remove_if_present(&dir.join(line_name(index, !ok)))?;
        write_atomic(
            &dir.join(line_name(index, ok)),
            &serde_json::to_vec(line).map_err(json_error)?,
        )
    }

    /// A batch's finished lines: index -> (succeeded, bytes of its output line).
    pub fn line_index(&self, batch: &str) -> std::io::Result<BTreeMap<usize, (bool, u64)>> {
        let mut lines = BTreeMap::new();
        let entries = match std::fs::read_dir(self.lines(batch)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(lines),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(|n| {
                let (index, kind) = n.strip_suffix(".json")?.split_once('.')?;
                Some((index.parse::<usize>().ok()?, kind == "ok"))
            });
            match parsed {
                Some((index, ok)) => {
                    lines.insert(index, (ok, entry.metadata()?.len()));
                }
                // A temporary file a crash left behind.
                None => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(lines)
    }

    /// Streams a batch's line records, in index order, into two files' contents (answers, errors)
    /// written as `output` and `errors` (metadata last, as for uploads), followed by `extra_errors`
    /// lines. Returns the bytes of each; a file with no line is not written (`0`).
    pub fn assemble(
        &self,
        batch: &str,
        output: &mut FileMeta,
        errors: &mut FileMeta,
        extra_errors: &[Value],
    ) -> std::io::Result<(u64, u64)> {
        let index = self.line_index(batch)?;
        let dir = self.lines(batch);
        let files = self.root.join("files");
        let mut outs = [
            std::io::BufWriter::new(tempfile::NamedTempFile::new_in(&files)?),
            std::io::BufWriter::new(tempfile::NamedTempFile::new_in(&files)?),
        ];
        let mut sizes = [0u64, 0u64];
        for (i, (ok, _)) in &index {
            let line = std::fs::read(dir.join(line_name(*i, *ok)))?;
            let at = usize::from(!*ok);
            outs[at].write_all(&line)?;
            outs[at].write_all(b"\n")?;
            sizes[at] += line.len() as u64 + 1;
        }
        for line in extra_errors {
            let line = serde_json::to_vec(line).map_err(json_error)?;
            outs[1].write_all(&line)?;
            outs[1].write_all(b"\n")?;
            sizes[1] += line.len() as u64 + 1;
        }
        for ((out, meta), size) in outs.into_iter().zip([output, errors]).zip(sizes) {
            if size == 0 {
                continue;
            }
            let tmp = out
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            tmp.as_file().sync_all()?;
            tmp.persist(self.file_data(&meta.id)).map_err(|e| e.error)?;
            meta.bytes = size;
            write_atomic(
                &self.file_meta(&meta.id),
                &serde_json::to_vec(meta).map_err(json_error)?,
            )?;
        }
        Ok((sizes[0], sizes[1]))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(id: &str) -> FileMeta {
        FileMeta {
            id: id.into(),
            owner: "k".into(),
            bytes: 0,
            created_at: 0,
            filename: format!("{id}.jsonl"),
            purpose: "batch_output".into(),
            seq: 1,
        }
    }

    #[test]
    fn line_records_are_keyed_by_index_and_assembled_in_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_line("b", 2, true, &json!({"n": 2})).unwrap();
        store.write_line("b", 0, false, &json!({"n": 0})).unwrap();
        store.write_line("b", 10, true, &json!({"n": 10})).unwrap();
        // A redo overwrites (even with the other outcome): still one record for the index.
        store
            .write_line("b", 2, false, &json!({"n": 2, "again": true}))
            .unwrap();
        store.write_line("b", 2, true, &json!({"n": 2})).unwrap();
        std::fs::write(dir.path().join("lines/b/.tmpXYZ"), b"half").unwrap();
        let index = store.line_index("b").unwrap();
        let shape: Vec<(usize, bool)> = index.iter().map(|(&i, &(ok, _))| (i, ok)).collect();
        assert_eq!(shape, [(0, false), (2, true), (10, true)]);
        let (mut out, mut err) = (meta("file-o"), meta("file-e"));
        let (a, b) = store
            .assemble("b", &mut out, &mut err, &[json!({"n": 99})])
            .unwrap();
        let out_text = String::from_utf8(store.read_file("file-o").unwrap().to_vec()).unwrap();
        let err_text = String::from_utf8(store.read_file("file-e").unwrap().to_vec()).unwrap();
        assert_eq!(out_text, "{\"n\":2}\n{\"n\":10}\n");
        assert_eq!(err_text, "{\"n\":0}\n{\"n\":99}\n");
        assert_eq!((a, b), (out_text.len() as u64, err_text.len() as u64));
        // The metadata is the commit point: both files load back.
        let (files, _) = store.load().unwrap();
        assert_eq!(files["file-o"].bytes, a);
        store.remove_lines("b").unwrap();
        assert!(store.line_index("b").unwrap().is_empty());
    }

    #[test]
    fn an_interrupted_upload_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("files/file-x.jsonl"), b"{}\n").unwrap();
        store.write_file(&meta("file-y"), b"{}\n").unwrap();
        let (files, batches) = store.load().unwrap();
        assert!(files.contains_key("file-y") && !files.contains_key("file-x"));
        assert!(batches.is_empty());
        assert!(!dir.path().join("files/file-x.jsonl").exists());
    }
}
