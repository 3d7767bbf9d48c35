//! Retrieval: search and upsert sizes, collections, item ids and metadata, reply sizes, and when a
//! local collection is searched approximately.

use std::num::NonZeroUsize;

use clap::Args;

use super::to_usize;
use crate::retrieve::RetrieveConfig;

/// Collections' bounds.
#[derive(Debug, Clone, Args)]
pub struct RetrieveArgs {
    /// Local store: a collection of at least this many items is searched approximately (binary
    /// codes scanned, or an HNSW graph with --ann-graph; the shortlist is scored exactly), smaller
    /// ones exactly. A collection reaching it through upserts switches while serving. 0: always exact.
    #[arg(
        long,
        env = "CLIP_SERVE_ANN_MIN_VECTORS",
        default_value_t = 50_000,
        display_order = 460
    )]
    pub ann_min_vectors: u64,

    /// Local store: approximate search through an HNSW graph (saved under <data-dir>/ann/, built
    /// in the background) instead of the binary scan. The graph misses far more of the true top k
    /// for text queries among images (BENCHMARKS.md).
    #[arg(
        long,
        env = "CLIP_SERVE_ANN_GRAPH",
        default_value_t = false,
        display_order = 461
    )]
    pub ann_graph: bool,

    /// Local store, binary scan: items rescored exactly per result asked for (top_k 10: the
    /// 400 nearest by the codes' 4-bit asymmetric score at the default 40). 1-1000.
    #[arg(
        long,
        env = "CLIP_SERVE_ANN_OVERSAMPLE",
        default_value_t = 40,
        display_order = 462
    )]
    pub ann_oversample: u32,

    /// The recall@10 to keep (0-1; the local store's binary scan, and PostgreSQL). A background
    /// check answers a sample of each collection's recent queries exactly and raises its
    /// oversampling (PostgreSQL's graph indexes: its `hnsw.ef_search`) while under it.
    #[arg(
        long,
        env = "CLIP_SERVE_RECALL_TARGET",
        default_value_t = 0.95,
        display_order = 463
    )]
    pub recall_target: f64,

    /// Seconds between recall checks (0: never checked).
    #[arg(
        long,
        env = "CLIP_SERVE_RECALL_CHECK_INTERVAL",
        default_value_t = 60,
        display_order = 464
    )]
    pub recall_check_interval: u64,

    /// Queries sampled per collection for the recall check (each costs one exact scan per check;
    /// 0-1000, 0: no check).
    #[arg(
        long,
        env = "CLIP_SERVE_RECALL_SAMPLES",
        default_value_t = 32,
        display_order = 465
    )]
    pub recall_samples: u32,

    /// The most the recall check raises --ann-oversample to (1-1000).
    #[arg(
        long,
        env = "CLIP_SERVE_RECALL_MAX_OVERSAMPLE",
        default_value_t = 200,
        display_order = 466
    )]
    pub recall_max_oversample: u32,

    /// PostgreSQL: the most of the time the recall check's exact scans may take (0.001-1; it
    /// pauses after each sample in proportion). Each is a sequential scan of the collection's
    /// table, about 2 s at 1M 512-d vectors on 2 cores: unpaced, the default 32 samples would
    /// keep the database's cores busy for the whole minute between checks.
    #[arg(
        long,
        env = "CLIP_SERVE_RECALL_CHECK_DUTY",
        default_value_t = 0.1,
        display_order = 467
    )]
    pub recall_check_duty: f64,

    /// Local store: bytes of redb's page cache for <data-dir>/collections.redb. Collections are
    /// searched from memory, so the cache serves writes and the start-up read only; redb's own
    /// default (1 GiB) would stay filled after loading a large collection.
    #[arg(
        long,
        env = "CLIP_SERVE_STORE_CACHE_BYTES",
        default_value_t = 64 * 1024 * 1024,
        display_order = 467
    )]
    pub store_cache_bytes: u64,

    /// Most results a Search may ask for.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_TOP_K",
        default_value_t = 1000,
        display_order = 520
    )]
    pub max_top_k: u32,

    /// Most items in one Upsert (and ids in one Delete or GetItems, candidates in one Rank). Texts
    /// and images among them also count against --max-items-per-request.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_UPSERT_ITEMS",
        default_value_t = 1000,
        display_order = 530
    )]
    pub max_upsert_items: u32,

    /// Most collections.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_COLLECTIONS",
        default_value_t = 100,
        display_order = 540
    )]
    pub max_collections: u32,

    /// Longest item id, in bytes.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_ID_BYTES",
        default_value_t = 256,
        display_order = 670
    )]
    pub max_id_bytes: u32,

    /// Most bytes of metadata keys and values per item (and per search filter).
    #[arg(long, env = "CLIP_SERVE_MAX_METADATA_BYTES", default_value_t = 16 * 1024, display_order = 680)]
    pub max_metadata_bytes: u32,

    /// Most bytes of items (ids, vectors, metadata) in one GetItems reply, and of collections in
    /// one ListCollections reply; a GetItems past it is refused, naming the limit.
    #[arg(long, env = "CLIP_SERVE_MAX_REPLY_BYTES", default_value_t = 16 * 1024 * 1024, display_order = 690)]
    pub max_reply_bytes: u64,

    /// Most items in one collection; an Upsert that would pass it is refused whole.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_COLLECTION_ITEMS",
        default_value_t = 10_000_000,
        display_order = 700
    )]
    pub max_collection_items: u64,

    /// Longest `model` string of a collection, in bytes.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_MODEL_BYTES",
        default_value_t = 256,
        display_order = 710
    )]
    pub max_model_bytes: u32,
}

impl RetrieveArgs {
    /// Retrieval's configuration, checked.
    pub(super) fn config(&self) -> Result<RetrieveConfig, String> {
        Ok(RetrieveConfig {
            max_top_k: to_usize("max-top-k", self.max_top_k.into())?,
            max_upsert_items: to_usize("max-upsert-items", self.max_upsert_items.into())?,
            max_collections: to_usize("max-collections", self.max_collections.into())?,
            max_id_bytes: to_usize("max-id-bytes", self.max_id_bytes.into())?,
            max_metadata_bytes: to_usize("max-metadata-bytes", self.max_metadata_bytes.into())?,
            search_threads: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            ann_min_vectors: usize::try_from(self.ann_min_vectors)
                .map_err(|_| format!("--ann-min-vectors {} is too large", self.ann_min_vectors))?,
            ann: crate::retrieve::AnnParams {
                graph: self.ann_graph,
                oversample: match self.ann_oversample {
                    n @ 1..=1000 => n as usize,
                    n => return Err(format!("--ann-oversample {n} is outside 1-1000")),
                },
                ..crate::retrieve::AnnParams::default()
            },
            recall: crate::retrieve::recall::RecallConfig {
                target_permille: match self.recall_target {
                    t if (0.0..=1.0).contains(&t) => (t * 1000.0).round() as u32,
                    t => return Err(format!("--recall-target {t} is outside 0-1")),
                },
                interval: std::time::Duration::from_secs(self.recall_check_interval),
                samples: match self.recall_samples {
                    n @ 0..=1000 => n as usize,
                    n => return Err(format!("--recall-samples {n} is over 1000")),
                },
                max_oversample: match self.recall_max_oversample {
                    n @ 1..=1000 => n as usize,
                    n => return Err(format!("--recall-max-oversample {n} is outside 1-1000")),
                },
                duty_permille: match self.recall_check_duty {
                    d if (0.001..=1.0).contains(&d) => (d * 1000.0).round() as u32,
                    d => return Err(format!("--recall-check-duty {d} is outside 0.001-1")),
                },
            },
            max_reply_bytes: to_usize("max-reply-bytes", self.max_reply_bytes)?,
            max_collection_items: to_usize("max-collection-items", self.max_collection_items)?,
            max_model_bytes: to_usize("max-model-bytes", self.max_model_bytes.into())?,
            store_cache_bytes: to_usize("store-cache-bytes", self.store_cache_bytes)?,
        })
    }
}
