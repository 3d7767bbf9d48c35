//! The PostgreSQL schema, created and migrated at start-up: versioned (`clip_schema_migrations`),
//! idempotent, and safe when several replicas start at once (every migration runs under one
//! transaction-scoped advisory lock, so a second replica waits, then finds the work done).
//!
//! Tables:
//! - `clip_collections`: one row per collection: name (key), the incarnation id (a UUID; a
//!   collection deleted and created again gets a new one), dimension, model, item count, whether
//!   it has an HNSW index. Writers lock their collection's row (`FOR UPDATE`), so a write and a
//!   DeleteCollection of the same collection are serialized, and the count stays exact.
//! - `clip_items_<id>`: one table per collection, named by its incarnation id: `id text` key,
//!   `embedding vector(dim)` with an HNSW index (cosine; dimensions up to 2000), `metadata jsonb`
//!   with a GIN index (`jsonb_path_ops`, for `@>` filters).
//! - `clip_label_sets`: client-created label set definitions (name, JSON spec, its prompt count).

use deadpool_postgres::tokio_postgres::Client;

/// `pg_advisory_xact_lock` key of schema migrations ("clipmigr").
const MIGRATION_LOCK: i64 = 0x636c_6970_6d69_6772;
/// `pg_advisory_xact_lock` key that serializes creating and deleting collections ("clipcoll").
pub const ADMIN_LOCK: i64 = 0x636c_6970_636f_6c6c;
/// `pg_advisory_xact_lock` key that serializes creating label sets ("cliplabl").
pub const LABEL_SET_LOCK: i64 = 0x636c_6970_6c61_626c;

/// Each version's statements, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE EXTENSION IF NOT EXISTS vector;
     CREATE TABLE clip_collections (
         name text PRIMARY KEY,
         id text NOT NULL UNIQUE,
         dimension integer NOT NULL,
         model text NOT NULL,
         count bigint NOT NULL DEFAULT 0,
         indexed boolean NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE clip_label_sets (
         name text PRIMARY KEY,
         spec jsonb NOT NULL,
         prompts integer NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now()
     );",
    ),
    (
        2,
        // How a collection's vectors are indexed: 'vector' (HNSW over the stored vectors),
        // 'halfvec' (HNSW over them cast to half precision), 'none' (searched exactly).
        "ALTER TABLE clip_collections ADD COLUMN index_kind text;
         UPDATE clip_collections SET index_kind = CASE WHEN indexed THEN 'vector' ELSE 'none' END;
         ALTER TABLE clip_collections ALTER COLUMN index_kind SET NOT NULL;",
    ),
];

/// The newest schema version this server knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Brings the schema to [`latest`]; returns the version it found. A database migrated by a newer
/// server is refused (this one would not know its tables).
pub async fn migrate(client: &mut Client) -> Result<i32, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS clip_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM clip_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if found > latest() {
        return Err(MigrateError::Newer {
            found,
            known: latest(),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO clip_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database's clip-serve schema is version {found}, newer than this server knows ({known}); run a newer clip-serve"
    )]
    Newer { found: i32, known: i32 },
    #[error("{0}")]
    Pg(#[from] deadpool_postgres::tokio_postgres::Error),
}

/// The item table of the collection incarnation `id` (a UUID: only its hex digits are used).
pub fn items_table(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("clip_items_{hex}")
}

/// How a collection's vectors are indexed (`clip_collections.index_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// Searched exactly (dimensions HNSW cannot index).
    None,
    /// HNSW over the stored `vector`s (up to 2000 dimensions).
    Vector,
    /// HNSW over the vectors cast to `halfvec` (half the index size; up to 4000 dimensions); the
    /// stored vectors, and the scores, stay full precision.
    Halfvec,
}

impl IndexKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::None => "none",
            IndexKind::Vector => "vector",
            IndexKind::Halfvec => "halfvec",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "vector" => IndexKind::Vector,
            "halfvec" => IndexKind::Halfvec,
            _ => IndexKind::None,
        }
    }

    /// What a search orders by so that the index serves it (`$1` is the query `vector`).
    pub fn order_by(self, dimension: usize) -> String {
        match self {
            IndexKind::Halfvec => {
                format!("embedding::halfvec({dimension}) <=> $1::vector::halfvec({dimension})")
            }
            IndexKind::None | IndexKind::Vector => "embedding <=> $1".into(),
        }
    }
}

/// The statements creating a collection's item table and its indexes.
pub fn create_items_table(table: &str, dimension: usize, index: IndexKind) -> String {
    let mut sql = format!(
        "CREATE TABLE {table} (
             id text PRIMARY KEY,
             embedding vector({dimension}) NOT NULL,
             metadata jsonb NOT NULL
         );
         CREATE INDEX {table}_metadata ON {table} USING gin (metadata jsonb_path_ops);"
    );
    match index {
        IndexKind::None => {}
        IndexKind::Vector => sql.push_str(&format!(
            "CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops);"
        )),
        IndexKind::Halfvec => sql.push_str(&format!(
            "CREATE INDEX {table}_hnsw ON {table}
                 USING hnsw ((embedding::halfvec({dimension})) halfvec_cosine_ops);"
        )),
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_the_ids_hex_digits() {
        assert_eq!(
            items_table("6f1c-2a;DROP TABLE x"),
            "clip_items_6f1c2adroptablex"
        );
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(latest(), 2);
    }
}
