//! Retrieval: search and upsert sizes, collections, item ids and metadata, reply sizes, and when a
//! local collection is searched approximately.

use std::num::NonZeroUsize;

use clap::Args;

use super::to_usize;
use crate::retrieve::RetrieveConfig;

/// Collections' bounds.
#[derive(Debug, Clone, Args)]
pub struct RetrieveArgs {
    /// Local store: a collection of at least this many items is searched approximately (an HNSW
    /// graph proposes candidates, scored exactly; saved under <data-dir>/ann/), smaller ones
    /// exactly. A collection reaching it through upserts switches while serving. 0: always exact.
    #[arg(
        long,
        env = "CLIP_SERVE_ANN_MIN_VECTORS",
        default_value_t = 50_000,
        display_order = 460
    )]
    pub ann_min_vectors: u64,

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
            max_reply_bytes: to_usize("max-reply-bytes", self.max_reply_bytes)?,
            max_collection_items: to_usize("max-collection-items", self.max_collection_items)?,
            max_model_bytes: to_usize("max-model-bytes", self.max_model_bytes.into())?,
        })
    }
}
