//! Where collections live, behind one async trait: [`super::local::LocalStore`] (redb on this
//! machine, searched exactly in memory) and [`super::postgres::PgStore`] (PostgreSQL + pgvector,
//! shared by any number of replicas). Another vector database (Qdrant, say) is one more
//! implementation of [`CollectionStore`].
//!
//! The service validates every request (names, ids, limits, vectors, models) before it reaches a
//! store; a store owns durability, identity and search. Contract every store keeps:
//! - a write (upsert, delete) is one transaction, acknowledged only once durable;
//! - a write carries the [`CollectionMeta`] it began with; when the collection of that name is no
//!   longer that incarnation (`meta.id`), the write is refused whole with ABORTED;
//! - `get_items` returns vectors exactly as they were stored;
//! - an unreachable store answers UNAVAILABLE, naming the store;
//! - cancellation: a write (create, drop_collection, upsert, delete) whose caller goes away (its
//!   future dropped: a client hung up) happens whole or not at all, on disk and in any memory the
//!   store keeps, never half. Each method's doc says how.

use crate::common::limit::MAX_COLLECTIONS;
use std::sync::Arc;

use super::{
    CollectionInfo,
    index::{Metadata, Scored},
    store::{CollectionMeta, StoredItem},
};
use crate::common::ServiceError;

/// One item of an Upsert, validated.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    /// What is stored and returned by GetItems: a client's vector exactly as sent, or the
    /// embedding of a text or image.
    pub stored: Vec<f32>,
    /// `stored`, L2-normalized (what is searched).
    pub unit: Vec<f32>,
    pub metadata: Metadata,
}

/// Which store holds the collections (and label sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process, persisted under `--data-dir`: one replica owns it.
    Local,
    /// A PostgreSQL database shared by every replica.
    Postgres,
}

impl StoreKind {
    /// The name in logs and errors (and of the `--store` value).
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::Postgres => "postgres",
        }
    }

    /// Whether other replicas may change the store behind this one's back.
    pub fn is_shared(self) -> bool {
        self != StoreKind::Local
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[async_trait::async_trait]
pub trait CollectionStore: Send + Sync {
    /// Which store this is: decides start-up and write checks, named in errors and logs.
    fn kind(&self) -> StoreKind;

    /// Start-up: read or connect (and migrate). Until it returns, calls get UNAVAILABLE.
    async fn load(&self) -> anyhow::Result<()>;

    /// Whether the store answers now (health): UNAVAILABLE when it does not.
    async fn ping(&self) -> Result<(), ServiceError>;

    /// Graceful shutdown: saves what is worth keeping beyond the store (the local store's HNSW
    /// graphs), so the next start-up loads rather than builds it.
    async fn flush(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Creates `meta` unless its name exists (ALREADY_EXISTS) or `max_collections` do
    /// (RESOURCE_EXHAUSTED); durable when it returns.
    ///
    /// Cancellation: local, runs to its end in a task of its own whatever the caller does (redb
    /// commit and in-memory map updated in one blocking section); PostgreSQL, one transaction,
    /// which commits or not (a dropped caller may leave it either way, never half).
    async fn create(
        &self,
        meta: CollectionMeta,
        max_collections: usize,
    ) -> Result<CollectionInfo, ServiceError>;

    /// The collection of that name (NOT_FOUND when there is none).
    async fn collection(&self, name: &str) -> Result<CollectionMeta, ServiceError>;

    /// The collection's name, count, dimension and model. Never waits behind a search or a
    /// writer (the local store keeps the count beside its index).
    async fn info(&self, name: &str) -> Result<CollectionInfo, ServiceError>;

    /// Every collection, as [`Self::info`].
    async fn list(&self) -> Result<Vec<CollectionInfo>, ServiceError>;

    /// Deletes the collection and its items (NOT_FOUND when there is none).
    ///
    /// Cancellation: local, runs to its end in a task of its own (redb commit, graph files and
    /// in-memory map in one blocking section, under the collection's writer lock); PostgreSQL,
    /// one transaction, which commits or not.
    async fn drop_collection(&self, name: &str) -> Result<(), ServiceError>;

    /// Inserts or replaces `records` (ids distinct) in `meta`; returns the item count after.
    ///
    /// Cancellation: local, runs to its end in a task of its own (the item cap checked, redb
    /// commit and index update in one blocking section, under the collection's writer lock); an
    /// upserted item is then both stored and searchable. PostgreSQL, one transaction, which
    /// commits or not.
    async fn upsert(
        &self,
        meta: &CollectionMeta,
        records: Vec<Record>,
    ) -> Result<usize, ServiceError>;

    /// Deletes ids (absent ones are fine); returns (deleted, count after).
    ///
    /// Cancellation: as [`Self::upsert`]; a deleted id is then neither stored nor searchable.
    async fn delete(
        &self,
        meta: &CollectionMeta,
        ids: Vec<String>,
    ) -> Result<(usize, usize), ServiceError>;

    /// The `k` items nearest (cosine) to `query` (L2-normalized) among those whose metadata holds
    /// every pair of `filter`, best first. Never fewer than `k` when `k` match.
    ///
    /// Reads only: dropping the caller's future changes nothing (a local scan on the blocking
    /// pool finishes there; PostgreSQL's query is left to the pool's connection).
    async fn search(
        &self,
        meta: &CollectionMeta,
        query: Vec<f32>,
        k: usize,
        filter: Metadata,
    ) -> Result<Vec<Scored>, ServiceError>;

    /// [`Self::search`], exact when `exact` whatever the collection's index, and the name of the
    /// path that answered (for `clip_search_path_total`).
    async fn search_with(
        &self,
        meta: &CollectionMeta,
        query: Vec<f32>,
        k: usize,
        filter: Metadata,
        exact: bool,
    ) -> Result<(Vec<Scored>, &'static str), ServiceError> {
        let _ = exact;
        Ok((self.search(meta, query, k, filter).await?, "exact"))
    }

    /// Items by id, exactly as stored; `None` for absent ones.
    async fn get_items(
        &self,
        meta: &CollectionMeta,
        ids: Vec<String>,
    ) -> Result<Vec<Option<StoredItem>>, ServiceError>;
}

pub type SharedStore = Arc<dyn CollectionStore>;

pub fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!(
        "no collection named {name:?} (ListCollections shows them)"
    ))
}

pub fn replaced(name: &str) -> ServiceError {
    ServiceError::Aborted(format!(
        "collection {name:?} was deleted while this write was in flight; nothing was written"
    ))
}

pub fn exists(name: &str) -> ServiceError {
    ServiceError::AlreadyExists(format!("collection {name:?} already exists"))
}

pub fn too_many(n: usize) -> ServiceError {
    ServiceError::ResourceExhausted(format!(
        "{n} collections exist, the limit ({MAX_COLLECTIONS}); delete one first"
    ))
}
