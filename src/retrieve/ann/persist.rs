//! The graph on disk: `<dir>/<hex of the name>.usearch` (usearch's own format) and
//! `<dir>/<hex of the name>.slots`, the sidecar: the collection's incarnation id, the graph's
//! parameters and file length, and per slot the id and a hash of the vector the graph holds for it,
//! then a checksum of all that.
//!
//! A save writes both to temporary files, removes the old sidecar, renames the graph, then renames
//! the sidecar: the sidecar's rename commits, and a crash anywhere before it leaves no sidecar (so
//! a rebuild), never a sidecar describing another graph.
//!
//! The graph file's checksum is kept in the sidecar, and the file is read and checked before
//! usearch loads it (every neighbour id in range, neighbour counts within capacity): a damaged
//! graph is never handed to usearch, which trusts those ids.
//!
//! At start-up [`AnnIndex::load_current`] takes the saved graph only when the sidecar matches what
//! the store loaded exactly (quick); anything else leaves the collection exact while a background
//! thread runs [`AnnIndex::open`]: items whose vector hash matches keep their slot and node;
//! changed, new and gone items are re-added or removed (a repair); when more than a tenth of the
//! items differ, or anything does not read or check out, the graph is rebuilt. A stale graph is
//! never served.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context, bail};

use super::{AnnIndex, AnnParams, Metadata};

/// Version 2 added the graph file's checksum; a version-1 sidecar does not read (rebuilt).
const MAGIC: &[u8; 8] = b"CLIPANN2";

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
    let mut h = Hasher::new();
    h.update(b);
    h.finish()
}

/// A fast checksum of a byte stream, fed in pieces of any size (8-byte words; a tail shorter
/// than a word is carried to the next piece).
struct Hasher {
    h: u64,
    len: u64,
    tail: Vec<u8>,
}

impl Hasher {
    fn new() -> Self {
        Hasher {
            h: 0xcbf2_9ce4_8422_2325,
            len: 0,
            tail: Vec::with_capacity(8),
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.h = (self.h ^ u64::from_le_bytes(w))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(23);
    }

    fn update(&mut self, mut b: &[u8]) {
        self.len += b.len() as u64;
        if !self.tail.is_empty() {
            let take = (8 - self.tail.len()).min(b.len());
            self.tail.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.tail.len() < 8 {
                return;
            }
            let w: [u8; 8] = self.tail[..].try_into().unwrap_or_default();
            self.tail.clear();
            self.word(w);
        }
        let words = b.chunks_exact(8);
        let rest = words.remainder();
        for c in words {
            self.word(c.try_into().unwrap_or_default());
        }
        self.tail.extend_from_slice(rest);
    }

    fn finish(mut self) -> u64 {
        if !self.tail.is_empty() {
            let mut w = [0u8; 8];
            w[..self.tail.len()].copy_from_slice(&self.tail);
            self.word(w);
        }
        self.h ^ self.len
    }
}

struct Sidecar {
    incarnation: String,
    dim: usize,
    connectivity: usize,
    graph_len: u64,
    /// [`file_hash`] of the graph file.
    graph_hash: u64,
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
    b.extend_from_slice(&s.graph_hash.to_le_bytes());
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
    let graph_hash = u64_(take(8)?);
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
        graph_hash,
        slots,
    })
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("the data directory's path is not UTF-8")
}

impl AnnIndex {
    /// Saves the graph and its sidecar into `dir` (created), atomically; clears the dirty mark.
    /// Without a graph (the binary scan) there is nothing to save: the codes are rebuilt from the
    /// store's vectors at start-up.
    pub fn save(&self, dir: &Path, name: &str, incarnation: &str) -> anyhow::Result<()> {
        if !self.graph_kept {
            self.dirty.store(false, Ordering::Release);
            return Ok(());
        }
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
            let graph_hash = file_hash(&graph_tmp)?;
            let side = Sidecar {
                incarnation: incarnation.to_string(),
                dim: self.dim,
                connectivity: self.params.connectivity,
                graph_len,
                graph_hash,
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
    /// one checks out against them (repaired when a few differ), else built. Blocking, and long
    /// when it builds (minutes per million vectors): start-up calls [`Self::load_current`] instead
    /// and leaves this to a background thread.
    pub fn open(
        dim: usize,
        threads: usize,
        params: AnnParams,
        items: &[(String, Vec<f32>, Arc<Metadata>)],
        dir: &Path,
        name: &str,
        incarnation: &str,
    ) -> anyhow::Result<(Self, Opened)> {
        let saved = Saved {
            dir,
            name,
            incarnation,
        };
        match Self::attempt(dim, threads, params, items, &saved, true)? {
            Attempt::Done(index, opened) => Ok((*index, opened)),
            Attempt::Stale(why) => Ok((
                Self::build(dim, threads, params, items)?,
                Opened::Rebuilt(why),
            )),
        }
    }

    /// The saved graph when it matches `items` exactly and checks out, without repairing or
    /// building anything (quick: reading and hashing the files): `Err(why)` when it is stale,
    /// missing or damaged.
    pub fn load_current(
        dim: usize,
        threads: usize,
        params: AnnParams,
        items: &[(String, Vec<f32>, Arc<Metadata>)],
        dir: &Path,
        name: &str,
        incarnation: &str,
    ) -> anyhow::Result<Result<Self, String>> {
        let saved = Saved {
            dir,
            name,
            incarnation,
        };
        Ok(
            match Self::attempt(dim, threads, params, items, &saved, false)? {
                Attempt::Done(index, _) => Ok(*index),
                Attempt::Stale(why) => Err(why),
            },
        )
    }

    /// Loads the saved graph after checking it: the sidecar (checksum, incarnation, dimension,
    /// connectivity), the graph file's length and checksum (recorded at save: a graph file whose
    /// bytes changed is never handed to usearch) and structure ([`scan_graph_file`]: every
    /// neighbour id in range, no neighbour list over its capacity), then the loaded graph (node
    /// count, dimension, every live slot present as a key). With `repair`, brings it up to date when a tenth of
    /// the items or fewer differ; without, any difference makes it stale.
    fn attempt(
        dim: usize,
        threads: usize,
        params: AnnParams,
        items: &[(String, Vec<f32>, Arc<Metadata>)],
        saved: &Saved<'_>,
        repair: bool,
    ) -> anyhow::Result<Attempt> {
        let (graph, sidecar) = paths(saved.dir, saved.name);
        let side = match std::fs::read(&sidecar) {
            Ok(b) => decode(&b).map_err(|e| format!("the slots file does not read: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no saved graph".into()),
            Err(e) => Err(format!("the slots file does not read: {e}")),
        };
        let side = side.and_then(|s| {
            let graph_len = std::fs::metadata(&graph).map(|m| m.len()).ok();
            if s.incarnation != saved.incarnation {
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
            Err(why) => return Ok(Attempt::Stale(why)),
        };
        let total = items.len();
        let mut by_id: HashMap<&str, (u32, u64)> = HashMap::with_capacity(side.slots.len());
        for (slot, entry) in side.slots.iter().enumerate() {
            if let Some((id, hash)) = entry {
                by_id.insert(id.as_str(), (slot as u32, *hash));
            }
        }
        let saved_live = by_id.len();
        // Which items keep their slot, before touching the graph file: a stale graph is
        // refused without reading it.
        let (mut kept, mut changed, mut unplaced) = (Vec::new(), Vec::new(), Vec::new());
        for item in items {
            match by_id.remove(item.0.as_str()) {
                Some((slot, hash)) => {
                    if vector_hash(&item.1) != hash {
                        changed.push(slot);
                    }
                    kept.push((slot, item));
                }
                None => unplaced.push(item),
            }
        }
        let gone: Vec<u32> = by_id.into_values().map(|(slot, _)| slot).collect();
        let differing = changed.len() + gone.len() + unplaced.len();
        if differing > 0 && !repair {
            return Ok(Attempt::Stale(format!(
                "{differing} of {total} items differ from the saved graph"
            )));
        }
        if differing > total / 10 + 16 {
            return Ok(Attempt::Stale(format!(
                "{differing} of {total} items differ from the saved graph"
            )));
        }
        match scan_graph_file(&graph) {
            Ok(h) if h == side.graph_hash => {}
            Ok(_) => {
                return Ok(Attempt::Stale(
                    "the graph file's checksum does not match".into(),
                ));
            }
            Err(e) => {
                return Ok(Attempt::Stale(format!(
                    "the graph file does not check out: {e}"
                )));
            }
        }
        let mut index = Self::new(dim, threads, params)?;
        if let Err(e) = index.graph.load(path_str(&graph)?) {
            return Ok(Attempt::Stale(format!("the graph file does not load: {e}")));
        }
        index.graph.change_expansion_search(params.expansion_search);
        index.graph.change_expansion_add(params.expansion_add);
        // Search contexts for concurrent callers (the file's limits are the saving machine's).
        index.reserve(index.graph.capacity().max(saved_live + 1))?;
        if index.graph.size() != saved_live || index.graph.dimensions() != dim {
            return Ok(Attempt::Stale(
                "the graph file does not match its slots file".into(),
            ));
        }
        if let Some(why) = check_graph(&index.graph, &side, params) {
            return Ok(Attempt::Stale(why));
        }
        index.center_on(items);
        index.reserve_slots(side.slots.len().max(total));
        for (slot, (id, vector, metadata)) in kept {
            index.place(slot, id.clone(), vector, Arc::clone(metadata));
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
        Ok(Attempt::Done(Box::new(index), opened))
    }
}

/// Where a collection's graph was saved.
struct Saved<'a> {
    dir: &'a Path,
    name: &'a str,
    incarnation: &'a str,
}

enum Attempt {
    Done(Box<AnnIndex>, Opened),
    /// Not usable as saved (or, without repair, not exactly current): why.
    Stale(String),
}

/// A checksum of a file's bytes, read in blocks.
fn file_hash(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut h = Hasher::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// A reader that checksums what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Hasher,
}

impl<R: std::io::Read> Hashing<R> {
    fn exact<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.read(&mut b)?;
        Ok(b)
    }
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(b)?;
        self.hash.update(b);
        Ok(())
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        self.exact::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        self.exact::<8>().map(u64::from_le_bytes)
    }
    fn skip(&mut self, mut n: u64, buf: &mut [u8]) -> std::io::Result<()> {
        while n > 0 {
            let take = n.min(buf.len() as u64) as usize;
            self.read(&mut buf[..take])?;
            n -= take as u64;
        }
        Ok(())
    }
}

/// Reads a saved usearch graph file (the dense index's format: the vector matrix, a 64-byte
/// head, then the graph: a header of node count, connectivities, top level and entry slot, each
/// node's level, then each node: key, level and per level a neighbour count and slots) and checks
/// every node's neighbour count against its level's capacity and every neighbour id, and the
/// entry slot, against the node count; returns the file's checksum (as [`file_hash`]). usearch
/// trusts these ids when it searches, so a graph failing this is never handed to it.
fn scan_graph_file(path: &Path) -> Result<u64, String> {
    use std::io::{BufReader, Read};
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut r = Hashing {
        inner: BufReader::with_capacity(1 << 20, file),
        hash: Hasher::new(),
    };
    let io = |e: std::io::Error| format!("truncated or unreadable: {e}");
    let mut buf = vec![0u8; 1 << 16];
    let (rows, cols) = (r.u32().map_err(io)?, r.u32().map_err(io)?);
    r.skip(u64::from(rows) * u64::from(cols), &mut buf)
        .map_err(io)?;
    r.skip(64, &mut buf).map_err(io)?;
    let size = r.u64().map_err(io)?;
    let connectivity = r.u64().map_err(io)?;
    let connectivity_base = r.u64().map_err(io)?;
    let max_level = r.u64().map_err(io)?;
    let entry = r.u64().map_err(io)?;
    if size > u64::from(u32::MAX) || connectivity > 4096 || connectivity_base > 8192 {
        return Err(format!(
            "implausible header: {size} nodes, connectivity {connectivity}/{connectivity_base}"
        ));
    }
    if size > 0 && entry >= size {
        return Err(format!("entry slot {entry} of {size} nodes"));
    }
    let mut levels = Vec::with_capacity(size as usize);
    for _ in 0..size {
        let level = i16::from_le_bytes(r.exact::<2>().map_err(io)?);
        if level < 0 || level as u64 > max_level {
            return Err(format!("a node of level {level}, the top is {max_level}"));
        }
        levels.push(level);
    }
    let mut tape = vec![0u8; connectivity_base.max(connectivity) as usize * 4];
    for (node, &level) in levels.iter().enumerate() {
        r.skip(8, &mut buf).map_err(io)?;
        let stored = i16::from_le_bytes(r.exact::<2>().map_err(io)?);
        if stored != level {
            return Err(format!("node {node}: level {stored}, listed as {level}"));
        }
        for l in 0..=level {
            let cap = if l == 0 {
                connectivity_base
            } else {
                connectivity
            } as usize;
            let count = r.u32().map_err(io)? as usize;
            if count > cap {
                return Err(format!(
                    "node {node} has {count} neighbours on level {l}, over {cap}"
                ));
            }
            let slots = &mut tape[..cap * 4];
            r.read(slots).map_err(io)?;
            for id in slots[..count * 4].chunks_exact(4) {
                let id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
                if u64::from(id) >= size {
                    return Err(format!(
                        "node {node} links to node {id}, out of range ({size} nodes)"
                    ));
                }
            }
        }
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(io)? != 0 {
        return Err("bytes after the graph".into());
    }
    Ok(r.hash.finish())
}

/// What can be checked of a loaded graph through usearch's API: every live slot of the sidecar
/// is a key of the graph, and no node lists more neighbours on a level than the connectivity
/// allows (2x on the base level). usearch hands out neighbours as keys only, looked up through
/// their internal slot without a bounds check, so an out-of-range neighbour id cannot be asked
/// about safely: the graph file's checksum (checked before loading) is what rules those out.
fn check_graph(graph: &usearch::Index, side: &Sidecar, params: AnnParams) -> Option<String> {
    for (slot, entry) in side.slots.iter().enumerate() {
        if entry.is_none() {
            continue;
        }
        let key = slot as u64;
        if !graph.contains(key) {
            return Some(format!("slot {slot} is not in the graph file"));
        }
        for level in 0..=graph.level_of_key(key) {
            let max = if level == 0 {
                2 * params.connectivity
            } else {
                params.connectivity
            };
            let n = graph.neighbors(key, level).total();
            if n > max {
                return Some(format!(
                    "slot {slot} has {n} neighbours on level {level}, over {max}"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_does_not_depend_on_how_the_bytes_are_fed() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = bytes_hash(&bytes);
        for piece in [1, 3, 7, 8, 9, 64, 999] {
            let mut h = Hasher::new();
            for p in bytes.chunks(piece) {
                h.update(p);
            }
            assert_eq!(h.finish(), whole, "pieces of {piece}");
        }
        let mut changed = bytes.clone();
        changed[500] ^= 1;
        assert_ne!(bytes_hash(&changed), whole);
        assert_ne!(bytes_hash(&bytes[..999]), whole);
    }

    #[test]
    fn a_saved_graph_with_a_neighbour_id_out_of_range_is_stale() {
        let dim = 8;
        let items: Vec<(String, Vec<f32>, Arc<Metadata>)> = (0..200u32)
            .map(|i| {
                let v: Vec<f32> = (0..dim)
                    .map(|d| ((i * 31 + d as u32 * 17) % 97) as f32 + 1.0)
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let v = v.into_iter().map(|x| x / n).collect();
                (format!("id{i}"), v, Arc::new(Metadata::new()))
            })
            .collect();
        let params = AnnParams {
            graph: true,
            ..AnnParams::default()
        };
        let ann = AnnIndex::build(dim, 1, params, &items).unwrap();
        let dir = tempfile::tempdir().unwrap();
        ann.save(dir.path(), "c", "inc").unwrap();
        let (graph, sidecar) = paths(dir.path(), "c");
        let load = || AnnIndex::load_current(dim, 1, params, &items, dir.path(), "c", "inc");
        assert!(load().unwrap().is_ok(), "as saved, it loads");

        // Node 0's first neighbour, pointed past the last node; the checksum in the sidecar made
        // to agree, so only the structural check can tell.
        let mut bytes = std::fs::read(&graph).unwrap();
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let (rows, cols) = (u32_at(&bytes, 0) as usize, u32_at(&bytes, 4) as usize);
        let header = 8 + rows * cols + 64;
        let size = u64::from_le_bytes(bytes[header..header + 8].try_into().unwrap()) as usize;
        let node0 = header + 40 + 2 * size;
        assert!(u32_at(&bytes, node0 + 10) > 0, "node 0 has neighbours");
        bytes[node0 + 14..node0 + 18].copy_from_slice(&(size as u32 + 5).to_le_bytes());
        std::fs::write(&graph, &bytes).unwrap();
        let mut side = decode(&std::fs::read(&sidecar).unwrap()).unwrap();
        side.graph_hash = bytes_hash(&bytes);
        std::fs::write(&sidecar, encode(&side)).unwrap();

        let Err(why) = load().unwrap() else {
            panic!("loaded a graph linking out of range")
        };
        assert!(why.contains("out of range"), "{why}");
        // The repairing open rebuilds it rather than load it.
        let (_, opened) = AnnIndex::open(dim, 1, params, &items, dir.path(), "c", "inc").unwrap();
        assert!(matches!(opened, Opened::Rebuilt(ref why) if why.contains("out of range")));
    }
}
