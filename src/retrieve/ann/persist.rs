//! The graph on disk: `<dir>/<hex of the name>.usearch` (usearch's own format) and
//! `<dir>/<hex of the name>.slots`, the sidecar: the collection's incarnation id, the graph's
//! parameters and file length, and per slot the id and a hash of the vector the graph holds for it,
//! then a checksum of all that.
//!
//! A save writes both to temporary files, removes the old sidecar, renames the graph, then renames
//! the sidecar: the sidecar's rename commits, and a crash anywhere before it leaves no sidecar (so
//! a rebuild), never a sidecar describing another graph.
//!
//! At start-up [`AnnIndex::open`] checks the sidecar against what the store loaded: items whose
//! vector hash matches keep their slot and node; changed, new and gone items are re-added or
//! removed (a repair); when more than a tenth of the items differ, or anything does not read, the
//! graph is rebuilt. A stale graph is never served.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context, bail};

use super::{AnnIndex, AnnParams, Metadata};

const MAGIC: &[u8; 8] = b"CLIPANN1";

/// How [`AnnIndex::open`] got its graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The saved graph matched the store exactly.
    Loaded,
    /// The saved graph was brought up to date: nodes re-added and removed.
    Repaired { added: usize, removed: usize },
    /// Built from scratch, and why.
    Rebuilt(String),
}

/// The file stem of a collection: its name in hex (names may hold anything a path may not).
pub fn stem(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let stem = stem(name);
    (
        dir.join(format!("{stem}.usearch")),
        dir.join(format!("{stem}.slots")),
    )
}

/// Removes a collection's files (absent ones are fine).
pub fn remove_files(dir: &Path, name: &str) {
    let (graph, sidecar) = paths(dir, name);
    for p in [sidecar, graph] {
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "could not remove an HNSW file");
        }
    }
}

/// Removes files of collections not in `names`, and leftovers of interrupted saves.
pub fn remove_others(dir: &Path, names: &[&str]) {
    let keep: Vec<String> = names.iter().map(|n| stem(n)).collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let ours = file.rsplit_once('.').is_some_and(|(s, ext)| {
            matches!(ext, "usearch" | "slots") && keep.iter().any(|k| k == s)
        });
        if !ours {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A fast 64-bit hash of a vector's bits (four independent lanes, then mixed).
pub fn vector_hash(v: &[f32]) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lanes = [1u64, 2, 3, 4];
    let chunks = v.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..4 {
            lanes[i] = (lanes[i] ^ u64::from(c[i].to_bits()))
                .wrapping_mul(M)
                .rotate_left(29);
        }
    }
    let mut h = v.len() as u64;
    for x in rest {
        h = (h ^ u64::from(x.to_bits())).wrapping_mul(M);
    }
    for l in lanes {
        h = (h ^ l).wrapping_mul(M).rotate_left(31);
    }
    h ^ (h >> 33)
}

fn bytes_hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in b.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(23);
    }
    h ^ b.len() as u64
}

struct Sidecar {
    incarnation: String,
    dim: usize,
    connectivity: usize,
    graph_len: u64,
    /// Per slot: (id, vector hash), `None` for a free slot.
    slots: Vec<Option<(String, u64)>>,
}

fn encode(s: &Sidecar) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + s.slots.len() * 32);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(s.incarnation.len() as u32).to_le_bytes());
    b.extend_from_slice(s.incarnation.as_bytes());
    b.extend_from_slice(&(s.dim as u32).to_le_bytes());
    b.extend_from_slice(&(s.connectivity as u32).to_le_bytes());
    b.extend_from_slice(&s.graph_len.to_le_bytes());
    b.extend_from_slice(&(s.slots.len() as u64).to_le_bytes());
    for slot in &s.slots {
        match slot {
            Some((id, hash)) => {
                b.extend_from_slice(&(id.len() as u32).to_le_bytes());
                b.extend_from_slice(id.as_bytes());
                b.extend_from_slice(&hash.to_le_bytes());
            }
            None => b.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    let sum = bytes_hash(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> anyhow::Result<Sidecar> {
    if b.len() < MAGIC.len() + 8 || &b[..8] != MAGIC {
        bail!("not a slots file");
    }
    let (body, sum) = b.split_at(b.len() - 8);
    if bytes_hash(body) != u64::from_le_bytes(sum.try_into()?) {
        bail!("checksum mismatch");
    }
    let mut at = 8;
    let mut take = |n: usize| -> anyhow::Result<Vec<u8>> {
        let s = body.get(at..at + n).context("truncated")?.to_vec();
        at += n;
        Ok(s)
    };
    let u32_ = |s: Vec<u8>| u32::from_le_bytes(s.try_into().unwrap_or_default());
    let u64_ = |s: Vec<u8>| u64::from_le_bytes(s.try_into().unwrap_or_default());
    let len = u32_(take(4)?) as usize;
    let incarnation = String::from_utf8(take(len)?)?;
    let dim = u32_(take(4)?) as usize;
    let connectivity = u32_(take(4)?) as usize;
    let graph_len = u64_(take(8)?);
    let count = u64_(take(8)?) as usize;
    let mut slots = Vec::with_capacity(count.min(body.len() / 4));
    for _ in 0..count {
        let len = u32_(take(4)?);
        if len == u32::MAX {
            slots.push(None);
        } else {
            let id = String::from_utf8(take(len as usize)?)?;
            let hash = u64_(take(8)?);
            slots.push(Some((id, hash)));
        }
    }
    Ok(Sidecar {
        incarnation,
        dim,
        connectivity,
        graph_len,
        slots,
    })
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("the data directory's path is not UTF-8")
}

impl AnnIndex {
    /// Saves the graph and its sidecar into `dir` (created), atomically; clears the dirty mark.
    pub fn save(&self, dir: &Path, name: &str, incarnation: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let (graph, sidecar) = paths(dir, name);
        let graph_tmp = graph.with_extension("usearch.tmp");
        let sidecar_tmp = sidecar.with_extension("slots.tmp");
        // Cleared first: a write racing the save marks it dirty again.
        self.dirty.store(false, Ordering::Release);
        let saved = (|| -> anyhow::Result<()> {
            self.graph
                .save(path_str(&graph_tmp)?)
                .map_err(super::graph_error)?;
            std::fs::File::open(&graph_tmp)?.sync_all()?;
            let graph_len = std::fs::metadata(&graph_tmp)?.len();
            let side = Sidecar {
                incarnation: incarnation.to_string(),
                dim: self.dim,
                connectivity: self.params.connectivity,
                graph_len,
                slots: self
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(s, id)| {
                        id.as_ref()
                            .map(|id| (id.clone(), vector_hash(self.row(s as u32))))
                    })
                    .collect(),
            };
            let mut f = std::fs::File::create(&sidecar_tmp)?;
            f.write_all(&encode(&side))?;
            f.sync_all()?;
            match std::fs::remove_file(&sidecar) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            std::fs::rename(&graph_tmp, &graph)?;
            std::fs::rename(&sidecar_tmp, &sidecar)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        })();
        if saved.is_err() {
            self.dirty.store(true, Ordering::Release);
            let _ = std::fs::remove_file(&graph_tmp);
            let _ = std::fs::remove_file(&sidecar_tmp);
        }
        saved.with_context(|| format!("saving the HNSW graph of {name:?}"))
    }

    /// The index over `items` (unit vectors, distinct ids), its graph from `dir` when the saved
    /// one checks out against them (repaired when a few differ), else built.
    pub fn open(
        dim: usize,
        threads: usize,
        params: AnnParams,
        items: &[(String, Vec<f32>, Arc<Metadata>)],
        dir: &Path,
        name: &str,
        incarnation: &str,
    ) -> anyhow::Result<(Self, Opened)> {
        let (graph, sidecar) = paths(dir, name);
        let side = match std::fs::read(&sidecar) {
            Ok(b) => decode(&b).map_err(|e| format!("the slots file does not read: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no saved graph".into()),
            Err(e) => Err(format!("the slots file does not read: {e}")),
        };
        let side = side.and_then(|s| {
            let graph_len = std::fs::metadata(&graph).map(|m| m.len()).ok();
            if s.incarnation != incarnation {
                Err("saved for another collection of that name".to_string())
            } else if s.dim != dim || s.connectivity != params.connectivity {
                Err("saved with other dimensions or connectivity".into())
            } else if graph_len != Some(s.graph_len) {
                Err("the graph file is missing or of the wrong length".into())
            } else {
                Ok(s)
            }
        });
        let side = match side {
            Ok(s) => s,
            Err(why) => {
                return Ok((
                    Self::build(dim, threads, params, items)?,
                    Opened::Rebuilt(why),
                ));
            }
        };
        let mut index = Self::new(dim, threads, params)?;
        if let Err(e) = index.graph.load(path_str(&graph)?) {
            let why = format!("the graph file does not load: {e}");
            return Ok((
                Self::build(dim, threads, params, items)?,
                Opened::Rebuilt(why),
            ));
        }
        index.graph.change_expansion_search(params.expansion_search);
        index.graph.change_expansion_add(params.expansion_add);
        let saved_live = side.slots.iter().flatten().count();
        // Search contexts for concurrent callers (the file's limits are the saving machine's).
        index.reserve(index.graph.capacity().max(saved_live + 1))?;
        if index.graph.size() != saved_live || index.graph.dimensions() != dim {
            let why = "the graph file does not match its slots file".to_string();
            return Ok((
                Self::build(dim, threads, params, items)?,
                Opened::Rebuilt(why),
            ));
        }
        let total = items.len();
        let mut by_id: HashMap<&str, (u32, u64)> = HashMap::with_capacity(saved_live);
        for (slot, entry) in side.slots.iter().enumerate() {
            if let Some((id, hash)) = entry {
                by_id.insert(id.as_str(), (slot as u32, *hash));
            }
        }
        index.reserve_slots(side.slots.len().max(total));
        let (mut changed, mut unplaced) = (Vec::new(), Vec::new());
        for item in items {
            let (id, vector, metadata) = item;
            match by_id.remove(id.as_str()) {
                Some((slot, hash)) => {
                    if vector_hash(vector) != hash {
                        changed.push(slot);
                    }
                    index.place(slot, id.clone(), vector, Arc::clone(metadata));
                }
                None => unplaced.push(item),
            }
        }
        let gone: Vec<u32> = by_id.into_values().map(|(slot, _)| slot).collect();
        let differing = changed.len() + gone.len() + unplaced.len();
        if differing > total / 10 + 16 {
            let why = format!("{differing} of {total} items differ from the saved graph");
            return Ok((
                Self::build(dim, threads, params, items)?,
                Opened::Rebuilt(why),
            ));
        }
        // Free slots: those the store did not fill (popped lowest first).
        if index.ids.len() < side.slots.len() {
            index.ids.resize(side.slots.len(), None);
            index.metadata.resize(side.slots.len(), Arc::default());
            index.vectors.resize(side.slots.len() * dim, 0.0);
        }
        index.free = (0..index.ids.len() as u32)
            .rev()
            .filter(|&s| index.ids[s as usize].is_none())
            .collect();
        for &slot in changed.iter().chain(&gone) {
            index.graph_remove(slot);
        }
        let mut added = changed;
        for (id, vector, metadata) in unplaced {
            let slot = index.free.pop().unwrap_or(index.ids.len() as u32);
            index.place(slot, id.clone(), vector, Arc::clone(metadata));
            added.push(slot);
        }
        index.add_to_graph(&added)?;
        let opened = if added.is_empty() && gone.is_empty() {
            index.dirty.store(false, Ordering::Release);
            Opened::Loaded
        } else {
            Opened::Repaired {
                added: added.len(),
                removed: gone.len(),
            }
        };
        Ok((index, opened))
    }
}
