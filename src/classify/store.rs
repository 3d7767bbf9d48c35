//! Label sets on disk, under `--data-dir`:
//!
//! ```text
//! label_sets/NAME.json                  a client-created set: {"name", "labels", "templates"}
//! classifiers/FINGERPRINT/NAME.{json,f32}  classifiers this server computed, per text tower
//! ```
//!
//! Definitions are written atomically and fsynced before Create answers; classifiers are a cache
//! that can always be recomputed.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{classifier::write_atomic, prompts::LabelSetSpec};

pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [store.definitions(), root.join("classifiers")] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!(
                    "--data-dir {}: cannot create {}: {e}",
                    root.display(),
                    dir.display()
                )
            })?;
        }
        // Fail at start-up, not at the first Create, when the directory is read-only.
        let probe = store.definitions().join(".write-test");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| anyhow::anyhow!("--data-dir {} is not writable: {e}", root.display()))?;
        Ok(store)
    }

    fn definitions(&self) -> PathBuf {
        self.root.join("label_sets")
    }

    pub fn cache_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join("classifiers").join(fingerprint)
    }

    /// Every readable definition; unreadable ones are logged and skipped (the server still starts).
    pub fn load_definitions(&self) -> Vec<LabelSetSpec> {
        let entries = match std::fs::read_dir(self.definitions()) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(dir = %self.definitions().display(), error = %e, "cannot list label sets");
                return Vec::new();
            }
        };
        let mut specs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<LabelSetSpec>(&t).map_err(|e| e.to_string()))
                .and_then(|spec| {
                    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                    if spec.name == stem {
                        Ok(spec)
                    } else {
                        Err(format!("names set {:?}, not {stem:?}", spec.name))
                    }
                });
            match parsed {
                Ok(spec) => specs.push(spec),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "skipping an unreadable label set")
                }
            }
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// Writes a definition atomically (blocking). Cancellation: synchronous, so it cannot be cut
    /// short; [`super::ClassifyService::create`] runs it, and the in-memory update after it, in a
    /// task the caller cannot cancel.
    pub fn save_definition(&self, spec: &LabelSetSpec) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(spec).map_err(io::Error::other)?;
        write_atomic(
            &self.definitions().join(format!("{}.json", spec.name)),
            &json,
        )
    }

    /// Removes a definition and its cached classifiers. Missing files are fine (idempotent).
    /// Blocking; run, with the in-memory update after it, in a task the caller cannot cancel
    /// ([`super::ClassifyService::delete`]).
    pub fn delete(&self, name: &str) -> io::Result<()> {
        let ignore_missing = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        ignore_missing(std::fs::remove_file(
            self.definitions().join(format!("{name}.json")),
        ))?;
        std::fs::File::open(self.definitions())?.sync_all()?;
        if let Ok(dirs) = std::fs::read_dir(self.root.join("classifiers")) {
            for dir in dirs.flatten() {
                for ext in ["json", "f32"] {
                    ignore_missing(std::fs::remove_file(
                        dir.path().join(format!("{name}.{ext}")),
                    ))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_round_trip_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = LabelSetSpec {
            name: "pets".into(),
            labels: vec!["cat".into(), "dog".into()],
            templates: vec!["a photo of a {}.".into()],
        };
        store.save_definition(&spec).unwrap();
        std::fs::write(dir.path().join("label_sets/broken.json"), "{not json").unwrap();
        std::fs::write(
            dir.path().join("label_sets/renamed.json"),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        assert_eq!(store.load_definitions(), vec![spec.clone()]);
        store.delete("pets").unwrap();
        store.delete("pets").unwrap();
        assert!(
            Store::open(dir.path())
                .unwrap()
                .load_definitions()
                .is_empty()
        );
    }
}
